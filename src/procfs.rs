//! Finding processes through `/proc`: the descendants of a process, and the
//! processes that carry a replica's marker in their environment.
//!
//! A shim is a child subreaper, so a descendant that double-forks or calls
//! `setsid` to leave the replica's process group is re-parented to the shim
//! instead of init: it stays among the shim's descendants and is found here.
//! Each query is one pass over `/proc`: cheap next to a stop, and never done
//! while idle.

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
    let needle = format!("{MARKER_VAR}={marker}");
    all_pids()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .map(Pid::from_raw)
        .collect()
}

/// Every live descendant of `root`, parents before children.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for pid in all_pids() {
        if let Some(ppid) = parent_of(pid) {
            children.entry(ppid).or_default().push(pid);
        }
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

/// The parent of `pid` from `/proc/<pid>/stat`. Fields are read after the
/// last `)` because the command name may itself contain spaces and parentheses.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
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
        assert_eq!(signal_descendants(sh, Signal::SIGKILL), 1);
        child.wait().unwrap();
    }
}
