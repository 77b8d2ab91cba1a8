//! Finding processes through `/proc`: the descendants of a process, and the
//! processes that carry a replica's marker in their environment.
//!
//! A shim is a child subreaper, so a descendant that double-forks or calls
//! `setsid` to leave the replica's process group is re-parented to the shim
//! instead of init: it stays among the shim's descendants and is found here.
//! Descendants are found by walking down from the root through
//! `/proc/<pid>/task/<tid>/children`, so a stop costs O(its own tree): with
//! thousands of replicas stopping at once, a pass over all of `/proc` per
//! shim made `down` quadratic. Only a kernel without those files
//! (CONFIG_PROC_CHILDREN) gets the pass over `/proc`.

use std::collections::HashMap;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The name of the environment variable that marks every process of a
/// replica (inherited by all its descendants, whatever session they move to).
pub const MARKER_VAR: &str = "SUPERVISE_INSTANCE";

/// The marker value of one replica of one state directory.
pub fn marker(replica: &str, state_dir: &std::path::Path) -> String {
    format!("{replica}@{}", state_dir.display())
}

fn all_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
}

/// Live processes whose environment has `SUPERVISE_INSTANCE=<marker>`.
/// (Only processes of the same user, or all as root, can be read.)
pub fn with_marker(marker: &str) -> Vec<Pid> {
    all_pids()
        .filter(|&pid| has_marker(pid, marker))
        .map(Pid::from_raw)
        .collect()
}

fn has_marker(pid: i32, marker: &str) -> bool {
    let needle = format!("{MARKER_VAR}={marker}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
}

/// The command a shim runs for the replica of `marker`: its child that
/// leads its own process group (the shim starts it so) and carries the
/// marker; of several (a descendant that called `setsid` and was
/// re-parented to the shim), the oldest.
pub fn command_of(shim: Pid, marker: &str) -> Option<u32> {
    descendants(shim)
        .into_iter()
        .filter_map(|pid| Some((pid.as_raw(), stat(pid.as_raw())?)))
        .filter(|(pid, s)| s.ppid == shim.as_raw() && s.pgrp == *pid && has_marker(*pid, marker))
        .min_by_key(|(_, s)| s.start)
        .and_then(|(pid, _)| u32::try_from(pid).ok())
}

/// Every live descendant of `root`, parents before children.
pub fn descendants(root: Pid) -> Vec<Pid> {
    if !children_files() {
        return Parents::scan().descendants(root);
    }
    let mut out = Vec::new();
    let mut queue = vec![root.as_raw()];
    while let Some(p) = queue.pop() {
        for c in children_of(p) {
            out.push(Pid::from_raw(c));
            queue.push(c);
        }
    }
    out
}

/// Does this kernel have `/proc/<pid>/task/<tid>/children`?
fn children_files() -> bool {
    static PRESENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PRESENT.get_or_init(|| std::path::Path::new("/proc/thread-self/children").exists())
}

/// The children of `pid`, whichever of its threads forked them. A process
/// that is gone has none: its children, re-parented to their subreaper, are
/// found from there by the next sweep.
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let mut path = task.path();
            path.push("children");
            std::fs::read_to_string(path).ok()
        })
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

/// Every process's parent, read from `/proc` in one pass: ask it many
/// questions rather than scanning once per question.
pub struct Parents(HashMap<i32, i32>);

impl Parents {
    pub fn scan() -> Parents {
        Parents(
            all_pids()
                .filter_map(|pid| Some((pid, parent_of(pid)?)))
                .collect(),
        )
    }

    /// Every descendant of `root`, parents before children.
    pub fn descendants(&self, root: Pid) -> Vec<Pid> {
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        for (&pid, &ppid) in &self.0 {
            children.entry(ppid).or_default().push(pid);
        }
        let mut out = Vec::new();
        let mut queue = vec![root.as_raw()];
        while let Some(p) = queue.pop() {
            for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
                out.push(Pid::from_raw(c));
                queue.push(c);
            }
        }
        out
    }

    /// Is `pid` `root` itself or one of its descendants?
    pub fn is_within(&self, pid: Pid, root: Pid) -> bool {
        let mut at = pid.as_raw();
        // Bounded: a pid read mid-change could make the map cyclic.
        for _ in 0..self.0.len() + 1 {
            if at == root.as_raw() {
                return true;
            }
            match self.0.get(&at) {
                Some(&parent) if parent > 0 => at = parent,
                _ => return false,
            }
        }
        false
    }
}

/// What `/proc/<pid>/stat` says of a process.
struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    /// Clock ticks after boot at which it started: with the pid, its identity.
    start: u64,
    /// CPU time, in clock ticks: its own (user + system), and that of its
    /// children it has reaped.
    cpu: u64,
    children_cpu: u64,
    threads: u64,
    /// Resident pages.
    rss: u64,
}

/// A small file of /proc or a cgroup, opened and read (see [`reread`]).
pub fn read_small(path: impl AsRef<std::path::Path>) -> Option<String> {
    reread(&std::fs::File::open(path).ok()?)
}

fn stat(pid: i32) -> Option<Stat> {
    stat_in(&read_small(format!("/proc/{pid}/stat"))?)
}

/// The whole of an open cgroup or /proc file, read again from its start.
/// These files fill the buffer given up to their end: a read short of it
/// was the last (no second read to see the end, as for a regular file, and
/// no `statx` as `read_to_string` makes). A `status` reads several for each
/// replica: the first page is read on the stack.
pub fn reread(file: &std::fs::File) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let mut page = [0u8; 4096];
    let n = file.read_at(&mut page, 0).ok()?;
    let mut bytes = page[..n].to_vec();
    while bytes.len() % page.len() == 0 && !bytes.is_empty() {
        let n = file.read_at(&mut page, bytes.len() as u64).ok()?;
        bytes.extend_from_slice(&page[..n]);
        if n < page.len() {
            break;
        }
    }
    String::from_utf8(bytes).ok()
}

/// Fields are read after the last `)`, because the command name may itself
/// contain spaces and parentheses.
fn stat_in(text: &str) -> Option<Stat> {
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    // After the command: state is field 3 of proc_pid_stat(5), ppid 4,
    // num_threads 20, starttime 22, rss 24.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
        cpu: ticks(&fields, 11) + ticks(&fields, 12),
        children_cpu: ticks(&fields, 13) + ticks(&fields, 14),
        threads: ticks(&fields, 17),
        rss: ticks(&fields, 21),
    })
}

fn ticks(fields: &[&str], at: usize) -> u64 {
    fields.get(at).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// What the processes under a shim use, without a cgroup: the CPU time of
/// those alive and of the children they reaped, plus what the shim's
/// reaped descendants used (as their subreaper it reaps every orphan), and
/// their summed resident memory. Each ended process is counted once, by the
/// one parent that reaped it. The files are kept open between readings, as
/// a leaf's are (`cgroup::UsageFiles`): each process's `stat` and, while
/// it has one thread, that thread's `children`.
pub struct TreeFiles {
    shim: Pid,
    stat: ProcFiles,
    /// While a process has one thread, that thread's `children`.
    children: ProcFiles,
}

impl TreeFiles {
    pub fn new(shim: Pid) -> TreeFiles {
        TreeFiles {
            shim,
            stat: ProcFiles::new(|pid| format!("/proc/{pid}/stat")),
            children: ProcFiles::new(|pid| format!("/proc/{pid}/task/{pid}/children")),
        }
    }

    /// The shim whose tree this is.
    pub fn shim(&self) -> Pid {
        self.shim
    }

    pub fn descriptors(&self) -> usize {
        self.stat.descriptors() + self.children.descriptors()
    }

    /// The usage now; None if the shim is gone. Without children files
    /// (a kernel without CONFIG_PROC_CHILDREN), the tree is found by a scan
    /// of every process's parent.
    pub fn read(&mut self) -> Option<crate::usage::Usage> {
        let (shim, mut queue) = self.process(self.shim.as_raw())?;
        let scanned = (!children_files()).then(|| Parents::scan().descendants(self.shim));
        if let Some(all) = &scanned {
            queue = all.iter().map(|p| p.as_raw()).collect();
        }
        let mut seen = vec![self.shim.as_raw()];
        let (mut ticks, mut pages, mut live) = (shim.children_cpu, 0, 0);
        while let Some(pid) = queue.pop() {
            let Some((stat, children)) = self.process(pid) else {
                continue;
            };
            seen.push(pid);
            ticks += stat.cpu + stat.children_cpu;
            // Like a leaf's `cgroup.procs`, the count leaves zombies out.
            if !matches!(stat.state, 'Z' | 'X') {
                live += 1;
                pages += stat.rss;
            }
            if scanned.is_none() {
                queue.extend(children);
            }
        }
        self.stat.retain(|pid| seen.contains(pid));
        self.children.retain(|pid| seen.contains(pid));
        Some(crate::usage::Usage {
            cpu: Some(std::time::Duration::from_micros(
                ticks * 1_000_000 / clock_ticks(),
            )),
            memory: Some(pages * crate::usage::page_size()),
            processes: Some(live),
        })
    }

    /// What `/proc/<pid>/stat` says of `pid`, and its children.
    fn process(&mut self, pid: i32) -> Option<(Stat, Vec<i32>)> {
        let (text, anew) = self.stat.read(pid)?;
        if anew {
            // Another process than the one whose `children` is kept (the
            // file of a process that is gone reads empty, not as an error).
            self.children.forget(pid);
        }
        let stat = stat_in(&text)?;
        if stat.threads != 1 || !children_files() {
            return Some((stat, children_of(pid)));
        }
        let list = self.children.read(pid).map(|(list, _)| list);
        let children = list.unwrap_or_default();
        let children = children.split_whitespace().filter_map(|c| c.parse().ok());
        Some((stat, children.collect()))
    }
}

/// One /proc file of each of a set of processes, kept open between
/// readings (see `cgroup::UsageFiles`). The file of a process that is gone
/// fails to read (the pid may now be another's) and is opened anew.
pub struct ProcFiles {
    path: fn(i32) -> String,
    files: HashMap<i32, std::fs::File>,
}

impl ProcFiles {
    pub fn new(path: fn(i32) -> String) -> ProcFiles {
        ProcFiles {
            path,
            files: HashMap::new(),
        }
    }

    /// The file's text, and whether it was opened anew to read it.
    pub fn read(&mut self, pid: i32) -> Option<(String, bool)> {
        if let Some(text) = self.files.get(&pid).and_then(reread) {
            return Some((text, false));
        }
        self.files.remove(&pid);
        let file = std::fs::File::open((self.path)(pid)).ok()?;
        let text = reread(&file)?;
        self.files.insert(pid, file);
        Some((text, true))
    }

    pub fn forget(&mut self, pid: i32) {
        self.files.remove(&pid);
    }

    /// Closes the files of the processes not to `keep`.
    pub fn retain(&mut self, keep: impl Fn(&i32) -> bool) {
        self.files.retain(|pid, _| keep(pid));
    }

    pub fn descriptors(&self) -> usize {
        self.files.len()
    }
}

/// Clock ticks per second, the unit of `stat`'s CPU times.
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t as u64)
}

fn parent_of(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.ppid)
}

/// The process group of `pid`.
pub fn process_group(pid: u32) -> Option<u32> {
    stat(i32::try_from(pid).ok()?).and_then(|s| u32::try_from(s.pgrp).ok())
}

/// Is `pid` stopped (SIGSTOP, SIGTSTP: state `T`)?
pub fn is_stopped(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(stat)
        .is_some_and(|s| s.state == 'T')
}

/// When a live (not zombie) process started, in clock ticks after boot.
/// A pid is only ever the same process if this is the same too.
pub fn start_time(pid: u32) -> Option<u64> {
    let s = stat(i32::try_from(pid).ok()?)?;
    (s.state != 'Z' && s.state != 'X').then_some(s.start)
}

/// When a live process started, on the wall clock: its start time after
/// boot, against the time since boot (`/proc/uptime`).
pub fn started_at(pid: u32) -> Option<std::time::SystemTime> {
    let ticks = start_time(pid)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let uptime: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let age = uptime - ticks as f64 / per_second as f64;
    std::time::SystemTime::now().checked_sub(std::time::Duration::from_secs_f64(age.max(0.0)))
}

/// The pid of the process holding an exclusive `flock` on `file`, as the
/// kernel tells in `/proc/locks` (lines such as
/// `1: FLOCK  ADVISORY  WRITE 4242 00:2a:17 0 EOF`; a waiter's line has `->`).
pub fn flock_holder(file: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let wanted = format!(
        "{:02x}:{:02x}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev),
        meta.ino()
    );
    std::fs::read_to_string("/proc/locks")
        .ok()?
        .lines()
        .find_map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                [_, "FLOCK", _, "WRITE", pid, at, ..] if at == wanted => pid.parse().ok(),
                _ => None,
            },
        )
}

/// Would `signal` leave `pid` alive: it catches or ignores it, or its
/// default action is harmless? Read from `/proc/<pid>/status` (SigCgt,
/// SigIgn: hex masks, bit N-1 for signal N); false if the process is gone.
pub fn survives(pid: u32, signal: Signal) -> bool {
    if matches!(
        signal,
        Signal::SIGCHLD | Signal::SIGCONT | Signal::SIGURG | Signal::SIGWINCH
    ) {
        return true;
    }
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (signal as i32 - 1);
    text.lines()
        .filter_map(|l| {
            l.strip_prefix("SigCgt:")
                .or_else(|| l.strip_prefix("SigIgn:"))
        })
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & bit != 0)
}

/// This boot's id: process identities from another boot mean nothing.
/// Read once per process (the checkpoint, built after every event, has it).
pub fn boot_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        read_small("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    })
    .clone()
}

/// A pidfd for `pid`: it stays bound to that very process (never to a
/// later one with the same pid), signals it without a reuse race, and polls
/// readable when it exits, whether or not it is our child.
pub fn pidfd_open(pid: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; nothing is borrowed.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid as nix::libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends a signal through a pidfd (see [`pidfd_open`]).
pub fn pidfd_signal(pidfd: &std::os::fd::OwnedFd, signal: Signal) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
    let rc = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as i32,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Live processes whose marker ends in `@<state_dir>`: every process of
/// every replica of one state directory, with the replica's name.
pub fn marked_by_state_dir(state_dir: &std::path::Path) -> Vec<(Pid, String)> {
    let prefix = format!("{MARKER_VAR}=");
    let suffix = format!("@{}", state_dir.display());
    all_pids()
        .filter_map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let value = env
                .split(|&b| b == 0)
                .find_map(|v| std::str::from_utf8(v).ok()?.strip_prefix(prefix.as_str()))?
                .strip_suffix(suffix.as_str())?
                .to_string();
            Some((Pid::from_raw(pid), value))
        })
        .collect()
}

/// Sends `signal` to every descendant of `root`; returns how many there were.
pub fn signal_descendants(root: Pid, signal: Signal) -> usize {
    let procs = descendants(root);
    for &p in &procs {
        let _ = kill(p, signal);
    }
    procs.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_whole_across_pages_and_read_again_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 10, 4096, 8192, 10_000] {
            let text: String = (0..len)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, &text).unwrap();
            let file = std::fs::File::open(&path).unwrap();
            assert_eq!(reread(&file).as_deref(), Some(text.as_str()), "{len} bytes");
            assert_eq!(
                reread(&file).as_deref(),
                Some(text.as_str()),
                "{len} bytes again"
            );
        }
    }

    #[test]
    fn finds_grandchildren() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let sh = Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found = descendants(sh);
            if !found.is_empty() || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(found.len(), 1, "the sleep under sh: {found:?}");
        let parents = Parents::scan();
        assert!(parents.is_within(found[0], sh));
        assert!(parents.is_within(sh, sh));
        assert!(!parents.is_within(sh, found[0]));
        assert!(!parents.is_within(Pid::this(), sh));
        assert_eq!(parents.descendants(sh), found, "the pass over /proc agrees");
        assert_eq!(signal_descendants(sh, Signal::SIGKILL), 1);
        child.wait().unwrap();
    }

    #[test]
    fn the_kernel_names_the_holder_of_a_flock() {
        use nix::fcntl::{Flock, FlockArg};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let file = std::fs::File::create(&path).unwrap();
        assert_eq!(flock_holder(&file), None);
        let _held = Flock::lock(file, FlockArg::LockExclusiveNonblock).unwrap();
        let other = std::fs::File::open(&path).unwrap();
        assert_eq!(flock_holder(&other), Some(std::process::id()));
    }

    /// Read syscalls made so far by this thread (not the other tests').
    fn reads_so_far() -> u64 {
        std::fs::read_to_string("/proc/thread-self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("syscr: "))
            .unwrap()
            .parse()
            .unwrap()
    }

    #[test]
    fn finding_a_tree_reads_only_that_tree_not_every_process() {
        // 300 processes that are not the tree: a pass over /proc would read
        // each one's stat.
        let mut others: Vec<_> = (0..300)
            .map(|_| {
                std::process::Command::new("sleep")
                    .arg("30")
                    .spawn()
                    .unwrap()
            })
            .collect();
        let mut tree = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let sh = Pid::from_raw(tree.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while descendants(sh).len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let before = reads_so_far();
        let found = descendants(sh);
        let reads = reads_so_far() - before;
        signal_descendants(sh, Signal::SIGKILL);
        let _ = tree.kill();
        tree.wait().unwrap();
        for other in &mut others {
            let _ = other.kill();
            other.wait().unwrap();
        }
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(reads < 50, "{reads} reads to find a tree of 3 processes");
    }
}
