//! What a replica uses: CPU time, memory, processes (docs/commands.md
//! §8). Read from its cgroup leaf where it has one, else from `/proc`
//! under its shim; sampled only when asked (a `status`, a metrics scrape,
//! a memory limit), so an idle supervisor does not wake up for it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

/// A replica's use of the machine at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU time used, user and system, by the replica's processes so far.
    pub cpu: Option<Duration>,
    /// Bytes: the leaf's `memory.current`, else the summed resident memory.
    pub memory: Option<u64>,
    pub processes: Option<u64>,
}

/// Where a running replica's usage is read.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Its cgroup leaf; `memory.current` only with the memory controller.
    Leaf {
        path: PathBuf,
        memory_controller: bool,
    },
    /// No cgroup: the descendants of its shim.
    Shim(Pid),
}

impl Source {
    /// The usage now, read once; nothing but a process count of 0 if the
    /// leaf or the shim is gone.
    pub fn sample(&self) -> Usage {
        Kept::open(self)
            .and_then(|mut kept| kept.read())
            .unwrap_or(GONE)
    }
}

/// The usage of a replica whose leaf or shim is gone.
const GONE: Usage = Usage {
    cpu: None,
    memory: None,
    processes: Some(0),
};

/// The open files a replica's usage is read from.
enum Kept {
    Leaf(crate::cgroup::UsageFiles),
    Tree(crate::procfs::TreeFiles),
}

impl Kept {
    fn open(source: &Source) -> Option<Kept> {
        match source {
            Source::Leaf {
                path,
                memory_controller,
            } => crate::cgroup::UsageFiles::open(path, *memory_controller)
                .ok()
                .map(Kept::Leaf),
            Source::Shim(shim) => Some(Kept::Tree(crate::procfs::TreeFiles::new(*shim))),
        }
    }

    /// Are these the files of `source` (a new shim has a tree of its own)?
    fn of(&self, source: &Source) -> bool {
        match (self, source) {
            (Kept::Leaf(_), Source::Leaf { .. }) => true,
            (Kept::Tree(tree), Source::Shim(shim)) => tree.shim() == *shim,
            _ => false,
        }
    }

    /// None: what they were read from is gone.
    fn read(&mut self) -> Option<Usage> {
        match self {
            Kept::Leaf(files) => files.read(),
            Kept::Tree(files) => files.read(),
        }
    }

    fn descriptors(&self) -> usize {
        match self {
            Kept::Leaf(files) => files.descriptors(),
            Kept::Tree(files) => files.descriptors(),
        }
    }
}

/// Resident memory, in bytes, from the text of a `statm` file (in pages).
pub fn rss_in(statm: &str) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The usage files of each running replica, kept open from one `status`
/// to the next, within a budget of descriptors (a quarter of the
/// open-files limit: the supervisor needs the rest for its shims and
/// clients). A replica past the budget is read as by [`Source::sample`].
pub struct Sampler<K> {
    files: HashMap<K, Kept>,
    budget: usize,
}

impl<K> Default for Sampler<K> {
    fn default() -> Self {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        Sampler {
            files: HashMap::new(),
            budget: usize::try_from(soft / 4).unwrap_or(usize::MAX),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone> Sampler<K> {
    pub fn sample(&mut self, replica: &K, source: &Source) -> Usage {
        let kept = self.files.get_mut(replica).filter(|kept| kept.of(source));
        if let Some(usage) = kept.and_then(Kept::read) {
            return usage;
        }
        self.files.remove(replica);
        let Some(mut kept) = Kept::open(source) else {
            return GONE;
        };
        let Some(usage) = kept.read() else {
            return GONE;
        };
        let held: usize = self.files.values().map(Kept::descriptors).sum();
        if held + kept.descriptors() <= self.budget {
            self.files.insert(replica.clone(), kept);
        }
        usage
    }

    /// Closes the files of the replicas not in `live`.
    pub fn retain(&mut self, live: impl Fn(&K) -> bool) {
        self.files.retain(|key, _| live(key));
    }
}

pub(crate) fn page_size() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |s| s as u64)
    })
}

/// `512KiB`, `48.2MiB`, `3.0GiB`: a size as `status` and messages show it.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

/// The previous CPU reading of each replica (by its key `K`), for the
/// percentage over the interval since.
pub struct CpuPercent<K> {
    last: HashMap<K, (Instant, Duration)>,
}

impl<K> Default for CpuPercent<K> {
    fn default() -> Self {
        CpuPercent {
            last: HashMap::new(),
        }
    }
}

impl<K: Eq + std::hash::Hash + Clone> CpuPercent<K> {
    /// Percent of one core that `replica` used since its previous reading,
    /// or, the first time, since `started` (with nothing used before it).
    /// None if its CPU time went back (a new cgroup): the next one says.
    pub fn percent(
        &mut self,
        replica: &K,
        cpu: Duration,
        now: Instant,
        started: Instant,
    ) -> Option<f64> {
        let (then, before) = self
            .last
            .insert(replica.clone(), (now, cpu))
            .unwrap_or((started, Duration::ZERO));
        let used = cpu.checked_sub(before)?;
        let interval = now.checked_duration_since(then)?.as_secs_f64();
        (interval > 0.0).then(|| (used.as_secs_f64() / interval * 1000.0).round() / 10.0)
    }

    /// Forgets the replicas not in `live`.
    pub fn retain(&mut self, live: impl Fn(&K) -> bool) {
        self.last.retain(|key, _| live(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_shown_in_binary_units() {
        assert_eq!(size(0), "0B");
        assert_eq!(size(512 << 10), "512KiB");
        assert_eq!(size(512 << 20), "512MiB");
        assert_eq!(size(50_541_363), "48.2MiB");
        assert_eq!(size(3 << 30), "3GiB");
        assert_eq!(size(1536 << 20), "1.5GiB");
    }

    #[test]
    fn cpu_percent_is_over_the_interval_since_the_previous_reading() {
        let mut cpu = CpuPercent::default();
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        // First reading: since the replica started.
        assert_eq!(
            cpu.percent(&"a.0", Duration::from_millis(500), at(1000), start),
            Some(50.0)
        );
        assert_eq!(
            cpu.percent(&"a.0", Duration::from_millis(2500), at(2000), start),
            Some(200.0)
        );
        // A new leaf counts from 0 again: no figure this once.
        assert_eq!(
            cpu.percent(&"a.0", Duration::from_millis(10), at(3000), start),
            None
        );
        assert_eq!(
            cpu.percent(&"a.0", Duration::from_millis(10), at(4000), start),
            Some(0.0)
        );
    }

    #[test]
    fn the_usage_of_a_process_tree_is_read_from_proc() {
        // A tree of its own (other tests start processes of their own under
        // this one): a shell standing for the shim, with one child.
        let mut shim = std::process::Command::new("sh")
            .args(["-c", "sleep 100 & wait"])
            .spawn()
            .unwrap();
        let root = Pid::from_raw(shim.id() as i32);
        let until = Instant::now() + Duration::from_secs(10);
        let mut usage = Source::Shim(root).sample();
        // (A process in the middle of its exec has no resident memory yet.)
        let settled = |u: &Usage| u.processes == Some(1) && u.memory.is_some_and(|m| m > 0);
        while !settled(&usage) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
            usage = Source::Shim(root).sample();
        }
        for pid in crate::procfs::descendants(root) {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = shim.kill();
        let _ = shim.wait();
        assert!(settled(&usage) && usage.cpu.is_some(), "{usage:?}");
    }
}
