//! cgroup v2: one leaf per replica (docs/design.md §13).
//!
//! The kernel, not a walk of `/proc`, then knows every process of a
//! replica: a descendant that double-forks, calls `setsid` and clears its
//! environment is still in its leaf, `cgroup.kill` takes all of them at
//! once (forks in flight included), and `cgroup.events` says when the last
//! one is gone. Layout, under the supervisor's own cgroup:
//! `<own>/supervise.<dev>-<inode of the state dir>/<service>.<N>`.
//!
//! The hierarchy is found from `/proc/self/mountinfo` (the `cgroup2` mount:
//! `/sys/fs/cgroup` on a unified host, `/sys/fs/cgroup/unified` on a hybrid
//! one) and `/proc/self/cgroup` (the `0::` line), never assumed.
//! `SUPERVISE_CGROUP=off` turns it all off: replicas are then tracked as
//! without a cgroup (their shim is their subreaper; markers in `/proc`).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::Pid;

use crate::usage::{Usage, rss_in};

/// The environment switch: `SUPERVISE_CGROUP=off` uses no cgroup at all.
pub const SWITCH: &str = "SUPERVISE_CGROUP";

/// The controllers a leaf's limits need (docs/spec-file.md §5.2).
const CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// Is the use of cgroups switched off (`SUPERVISE_CGROUP=off`)?
pub fn switched_off() -> bool {
    std::env::var(SWITCH).is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "no" | "false"))
}

/// Where this process sits in the cgroup v2 hierarchy: the absolute path of
/// its own cgroup's directory.
pub fn own_cgroup() -> Option<PathBuf> {
    of("self")
}

/// The cgroup v2 directory of process `pid` ("self": this one), as the
/// mount this process sees shows it.
pub fn of(pid: &str) -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    own_cgroup_from(&mountinfo, &cgroup)
}

/// [`own_cgroup`] from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`.
fn own_cgroup_from(mountinfo: &str, cgroup: &str) -> Option<PathBuf> {
    let own = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    // mountinfo: id parent major:minor root mountpoint options … - fstype source options
    let (root, mountpoint) = mountinfo.lines().find_map(|line| {
        let (fields, rest) = line.split_once(" - ")?;
        if rest.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = fields.split_whitespace().collect();
        Some((unescape(fields.get(3)?), unescape(fields.get(4)?)))
    })?;
    // A mount of a sub-tree (a container's) shows the part below its root.
    let below = Path::new(own).strip_prefix(&root).ok()?;
    let mut path = PathBuf::from(mountpoint);
    if !below.as_os_str().is_empty() {
        path.push(below);
    }
    Some(path)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        match u8::from_str_radix(rest.get(i + 1..i + 4).unwrap_or(""), 8) {
            Ok(byte) => {
                out.push(byte as char);
                rest = &rest[i + 4..];
            }
            Err(_) => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The cgroup of one state directory's replicas, made ready for leaves:
/// `<own>/supervise.<dev>-<inode>`. Controllers the supervisor's cgroup
/// offers are enabled for the leaves where the kernel allows it; on a
/// unified host that asks that no process stays in an inner node, so the
/// supervisor moves itself into a leaf of its own (`<own>/supervise.main`)
/// if its cgroup refuses them otherwise. Err: no writable cgroup v2 here.
pub fn instance(state_dir: &Path) -> Result<PathBuf, String> {
    let own = own_cgroup().ok_or("no cgroup v2 hierarchy mounted")?;
    let dir = instance_path(state_dir).map_err(|e| e.to_string())?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    if !dir.join("cgroup.kill").exists() {
        // Before Linux 5.14: a stop could not take every process at once.
        let _ = std::fs::remove_dir(&dir);
        return Err(format!("{} has no cgroup.kill", dir.display()));
    }
    let wanted = offered(&own);
    if !wanted.is_empty() && enable(&own, &wanted).is_err() {
        // EBUSY: processes in what would become an inner node. Moving only
        // ourselves can be enough (a unit with Delegate=yes); if not, the
        // leaves go without controllers and the limits say so.
        let main = own.join("supervise.main");
        let _ = std::fs::create_dir(&main);
        if std::fs::write(main.join("cgroup.procs"), "0").is_ok() {
            let _ = enable(&own, &wanted);
        }
    }
    let _ = enable(&dir, &offered(&dir));
    Ok(dir)
}

/// Where [`instance`] puts the cgroup of `state_dir`, under this process's
/// own cgroup (made or not).
pub fn instance_path(state_dir: &Path) -> std::io::Result<PathBuf> {
    let own = own_cgroup().ok_or(std::io::ErrorKind::NotFound)?;
    let meta = std::fs::metadata(state_dir)?;
    Ok(own.join(format!("supervise.{}-{}", meta.dev(), meta.ino())))
}

/// The controllers of [`CONTROLLERS`] that `dir`'s parent lets it have.
fn offered(dir: &Path) -> Vec<&'static str> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    CONTROLLERS
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect()
}

fn enable(dir: &Path, controllers: &[&str]) -> std::io::Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let line: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    std::fs::write(dir.join("cgroup.subtree_control"), line.join(" "))
}

/// The controllers a leaf under `instance` gets (what `instance` passes on).
pub fn leaf_controllers(instance: &Path) -> Vec<String> {
    std::fs::read_to_string(instance.join("cgroup.subtree_control"))
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The controllers a leaf would get under this process's cgroup, with
/// where that is; Err: why replicas would get no cgroup at all.
pub fn available() -> Result<(PathBuf, Vec<String>), String> {
    if switched_off() {
        return Err(format!("{SWITCH}=off"));
    }
    let own = own_cgroup().ok_or("no cgroup v2 hierarchy is mounted")?;
    if nix::unistd::access(&own, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(format!("{} is not writable", own.display()));
    }
    let controllers = offered(&own).into_iter().map(str::to_string).collect();
    Ok((own, controllers))
}

/// One line per limit of `services` that the kernel cannot enforce here
/// (docs/spec-file.md §5.2): `cpu`, `memory_high` and `pids` without their
/// controller. (`memory` is then enforced by sampling; rlimits always apply.)
pub fn unenforced(services: &[crate::spec::Service]) -> Vec<String> {
    let available = available();
    let mut lines = Vec::new();
    for service in services {
        let limits = &service.limits;
        let wanted = [
            ("cpu", "cpu", limits.cpu.is_some()),
            ("memory_high", "memory", limits.memory_high.is_some()),
            ("pids", "pids", limits.pids.is_some()),
        ];
        for (key, controller, _) in wanted.into_iter().filter(|w| w.2) {
            let why = match &available {
                Ok((_, there)) if there.iter().any(|c| c == controller) => continue,
                Ok((dir, _)) => format!("no {controller} controller in {}", dir.display()),
                Err(why) => format!("no cgroup ({why})"),
            };
            lines.push(format!(
                "{}: limits.{key} not enforced: {why}",
                service.name
            ));
        }
    }
    lines
}

/// A replica's leaf, as its shim holds it: created (or found) before the
/// replica starts, watched while it runs, removed once it is empty.
pub struct Leaf {
    path: PathBuf,
    /// The leaf's directory, which the replica is cloned into
    /// (`CLONE_INTO_CGROUP`, see `shim::clone`).
    dir: File,
    events: Events,
}

/// A cgroup's `cgroup.events`: polled for POLLPRI, which the kernel raises
/// when a value in it changes (`populated 0` once the last process is gone).
struct Events(File);

impl Events {
    fn open(cgroup: &Path) -> std::io::Result<Events> {
        File::open(cgroup.join("cgroup.events")).map(Events)
    }

    /// Reading also re-arms the POLLPRI notification.
    fn populated(&self) -> bool {
        let mut text = String::new();
        let mut file = &self.0;
        let _ = file.rewind();
        match file.read_to_string(&mut text) {
            Ok(_) => populated_in(&text),
            // The cgroup was removed, which the kernel allows only once it
            // is empty (a supervisor sweeping a replica it no longer has).
            // Reading as populated, a shim would wait (and poll, woken at
            // once) forever.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENODEV) => false,
            // Otherwise assume the worst, so a stop is never judged done early.
            Err(_) => true,
        }
    }

    fn poll_fd(&self) -> PollFd<'_> {
        PollFd::new(self.0.as_fd(), PollFlags::POLLPRI)
    }

    /// Waits (in poll, woken by the kernel) up to `limit` for the cgroup to
    /// be empty; true if it is.
    fn wait_empty(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.populated() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [self.poll_fd()];
            let ms = i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX);
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return !self.populated(),
            }
        }
        true
    }
}

impl Leaf {
    /// Creates the leaf at `path`; one left over by a killed shim is
    /// emptied first (a replica starts only into an empty leaf).
    pub fn create(path: &Path) -> Result<Leaf, String> {
        let why = |what: &str, e: std::io::Error| format!("cannot {what} {}: {e}", path.display());
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(why("create cgroup", e)),
        }
        let leaf = Leaf {
            path: path.to_path_buf(),
            dir: File::open(path).map_err(|e| why("open cgroup", e))?,
            events: Events::open(path).map_err(|e| why("open the cgroup.events of", e))?,
        };
        if leaf.populated() {
            let _ = leaf.kill();
            if !leaf.events.wait_empty(LEFTOVER_WAIT) {
                return Err(format!(
                    "processes of an earlier run are still in cgroup {} after {}s",
                    path.display(),
                    LEFTOVER_WAIT.as_secs()
                ));
            }
        }
        Ok(leaf)
    }

    /// Writes the limits the leaf's controllers can enforce; a controller
    /// that is not there is skipped (`check` and `up` said so).
    pub fn limit(&self, limits: &crate::spec::Limits) -> Result<(), String> {
        let cpu = limits.cpu.map(|cores| {
            format!(
                "{} {CPU_PERIOD}",
                (cores * CPU_PERIOD as f64).round() as u64
            )
        });
        let settings = [
            ("memory.max", limits.memory.map(|b| b.to_string())),
            ("memory.high", limits.memory_high.map(|b| b.to_string())),
            // The OOM killer takes the whole replica, not one of its processes.
            ("memory.oom.group", limits.memory.map(|_| "1".to_string())),
            ("cpu.max", cpu),
            ("pids.max", limits.pids.map(|n| n.to_string())),
        ];
        for (file, value) in settings {
            let (Some(value), path) = (value, self.path.join(file)) else {
                continue;
            };
            if path.exists() {
                std::fs::write(&path, value)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
        Ok(())
    }

    /// The leaf's `memory.events`, where the memory controller is enabled.
    pub fn memory_events(&self) -> Option<MemoryEvents> {
        std::fs::read_to_string(self.path.join("memory.events"))
            .ok()
            .map(|t| memory_events_in(&t))
    }

    pub fn dir(&self) -> &File {
        &self.dir
    }

    /// Does any process remain in the leaf (`populated 1`)?
    pub fn populated(&self) -> bool {
        self.events.populated()
    }

    /// What poll watches for a change of [`Self::populated`].
    pub fn poll_fd(&self) -> PollFd<'_> {
        self.events.poll_fd()
    }

    /// SIGKILL to every process in the leaf, forks in flight included.
    pub fn kill(&self) -> std::io::Result<()> {
        kill(&self.path)
    }

    /// The processes in the leaf.
    pub fn processes(&self) -> Vec<Pid> {
        processes(&self.path)
    }

    /// Removes the (empty) leaf.
    pub fn remove(self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The period of `cpu.max`, in microseconds (the kernel's default).
const CPU_PERIOD: u64 = 100_000;

/// How long a new shim, or a supervisor, waits for the leftovers of a
/// killed shim to die.
pub const LEFTOVER_WAIT: Duration = Duration::from_secs(5);

fn populated_in(events: &str) -> bool {
    events
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["populated", "1"])
}

/// SIGKILL to every process in the cgroup at `path` (`cgroup.kill`).
pub fn kill(path: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path.join("cgroup.kill"))?
        .write_all(b"1")
}

/// The processes in the cgroup at `path` (none if it does not exist).
pub fn processes(path: &Path) -> Vec<Pid> {
    crate::procfs::read_small(path.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Kills what is left in the leaf at `path`, waits up to `limit` for it to
/// be empty and removes it; returns how many processes it held.
pub fn kill_and_remove(path: &Path, limit: Duration) -> usize {
    let found = processes(path).len();
    if found > 0 {
        let _ = kill(path);
        if let Ok(events) = Events::open(path) {
            events.wait_empty(limit);
        }
    }
    let _ = std::fs::remove_dir(path);
    found
}

/// The leaves (sub-directories) of the instance cgroup `dir`, by name.
pub fn leaves(dir: &Path) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect()
}

/// Is `pid` in the cgroup at `path`?
pub fn contains(path: &Path, pid: u32) -> bool {
    processes(path).contains(&Pid::from_raw(pid as i32))
}

/// The files a leaf's usage is read from, kept open between readings:
/// re-reading an open cgroup or /proc file costs a fifth of opening it
/// again (BENCHMARKS.md), which a `status` pays for every replica. CPU from
/// `cpu.stat` (present on any cgroup v2, controller or not), memory from
/// `memory.current` or else the summed resident memory of its processes.
pub struct UsageFiles {
    cpu: File,
    procs: File,
    /// `memory.current`, with the memory controller.
    memory: Option<File>,
    /// `/proc/<pid>/statm` of each process, without it.
    statm: crate::procfs::ProcFiles,
}

impl UsageFiles {
    pub fn open(path: &Path, memory_controller: bool) -> std::io::Result<UsageFiles> {
        Ok(UsageFiles {
            cpu: File::open(path.join("cpu.stat"))?,
            procs: File::open(path.join("cgroup.procs"))?,
            memory: if memory_controller {
                Some(File::open(path.join("memory.current"))?)
            } else {
                None
            },
            statm: crate::procfs::ProcFiles::new(|pid| format!("/proc/{pid}/statm")),
        })
    }

    /// How many descriptors these files hold.
    pub fn descriptors(&self) -> usize {
        2 + usize::from(self.memory.is_some()) + self.statm.descriptors()
    }

    /// The usage now; None if the leaf was removed since the files were
    /// opened (it may have been made again: open it anew).
    pub fn read(&mut self) -> Option<Usage> {
        let procs: Vec<Pid> = crate::procfs::reread(&self.procs)?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(Pid::from_raw)
            .collect();
        let cpu = crate::procfs::reread(&self.cpu).and_then(|t| cpu_usage_in(&t));
        let memory = match &self.memory {
            Some(current) => crate::procfs::reread(current).and_then(|t| t.trim().parse().ok()),
            None => {
                self.statm
                    .retain(|pid| procs.contains(&Pid::from_raw(*pid)));
                let statm = procs.iter().filter_map(|pid| self.statm.read(pid.as_raw()));
                Some(statm.filter_map(|(text, _)| rss_in(&text)).sum())
            }
        };
        Some(Usage {
            cpu,
            memory,
            processes: Some(procs.len() as u64),
        })
    }
}

/// `usage_usec` of a `cpu.stat` file.
pub fn cpu_usage_in(text: &str) -> Option<Duration> {
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_micros)
}

/// The counters of a `memory.events` file.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemoryEvents {
    /// Times the memory limit (`memory.max`) was hit.
    pub max: u64,
    /// Times the OOM killer ran in the cgroup.
    pub oom: u64,
    /// Processes the OOM killer killed in the cgroup.
    pub oom_kill: u64,
}

pub fn memory_events_in(text: &str) -> MemoryEvents {
    let mut events = MemoryEvents::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let value = value.trim().parse().unwrap_or(0);
        match key {
            "max" => events.max = value,
            "oom" => events.oom = value,
            "oom_kill" => events.oom_kill = value,
            _ => {}
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_is_found_on_a_hybrid_and_on_a_unified_host() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let cgroup = "4:memory:/process_api/c9\n1:cpu:/\n0::/user.slice/session-3.scope\n";
        assert_eq!(
            own_cgroup_from(hybrid, cgroup),
            Some(PathBuf::from(
                "/sys/fs/cgroup/unified/user.slice/session-3.scope"
            ))
        );
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            own_cgroup_from(unified, "0::/\n"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A container's mount of its own sub-tree.
        let container = "29 23 0:26 /docker/ab /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            own_cgroup_from(container, "0::/docker/ab/app\n"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(
            own_cgroup_from(hybrid.lines().next().unwrap(), cgroup),
            None
        );
        assert_eq!(own_cgroup_from(unified, "1:cpu:/\n"), None);
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape(r"/plain"), "/plain");
    }

    // Captured from a 6.18 kernel (cgroup2, no controllers).
    const CPU_STAT: &str = "usage_usec 1834261\nuser_usec 1203551\nsystem_usec 630710\n\
                            nice_usec 0\ncore_sched.force_idle_usec 0\nnr_periods 0\n\
                            nr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n";
    // Captured from a 6.8 kernel, a leaf with memory.max = 64M after an OOM kill.
    const MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 112\noom 1\noom_kill 1\noom_group_kill 0\n";

    #[test]
    fn cpu_stat_and_memory_events_are_parsed() {
        assert_eq!(
            cpu_usage_in(CPU_STAT),
            Some(Duration::from_micros(1_834_261))
        );
        assert_eq!(cpu_usage_in("user_usec 3\n"), None);
        assert_eq!(
            memory_events_in(MEMORY_EVENTS),
            MemoryEvents {
                max: 112,
                oom: 1,
                oom_kill: 1
            }
        );
        assert_eq!(memory_events_in(""), MemoryEvents::default());
    }

    #[test]
    fn populated_is_read_from_cgroup_events() {
        assert!(populated_in("populated 1\nfrozen 0\n"));
        assert!(!populated_in("populated 0\nfrozen 0\n"));
    }
}
