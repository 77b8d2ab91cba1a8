//! What the supervisor and a replica's shim tell each other.
//!
//! The supervisor hands a [`ShimConfig`] (as JSON, through the zygote). Once
//! the replica runs, the shim writes a [`RunningRecord`] file and then
//! answers one [`Status`] line on its status pipe (or only the line, when
//! the replica could not be started); when the replica's whole process tree
//! is gone it writes an [`ExitRecord`] file and exits (or, under a
//! [`Respawn`] leave, starts it again, rewrites the running record and says
//! so on the status pipe). Records are files, not messages, so that they
//! outlive a supervisor that died in the meantime: a new one finds the
//! running replicas and the exits it missed there. A record is never older
//! than what the supervisor was told, so a supervisor killed the moment it
//! heard of a replica still finds it when it resumes.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// File descriptor on which a shim finds the foreground output pipe, if any.
pub const TEE_FD: i32 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    /// `service.N`, for messages.
    pub replica: String,
    pub generation: u64,
    pub argv: Vec<String>,
    /// Added to the inherited environment.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub stop_signal: i32,
    pub stop_timeout_ms: u64,
    pub log: LogConfig,
    pub exit_record: PathBuf,
    pub running_record: PathBuf,
    /// The replica's instance lock, held by its shim (see `shim::claim`).
    pub lock: PathBuf,
    /// `health.log`: the replica is ready once an output line matches.
    pub ready_pattern: Option<String>,
    /// When set, each output line is also written, behind this prefix, to
    /// [`TEE_FD`] (the foreground supervisor's display pipe).
    pub tee_prefix: Option<String>,
    /// Leave to start the command again, at once, when it ends.
    pub respawn: Option<Respawn>,
    /// [`crate::spec::Service::fingerprint`] of what it runs.
    pub definition: String,
    /// The replica's cgroup leaf (see [`crate::cgroup`]); None: no cgroup.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// Written into the leaf's controllers; `nofile` and `core` are set as
    /// the replica's rlimits whether or not it has a leaf.
    #[serde(default)]
    pub limits: crate::spec::Limits,
    /// Cluster-scope failover: the deadline the shim demotes the replica
    /// at by itself (see `shim::fence`).
    #[serde(default)]
    pub fence: Option<FenceConfig>,
}

/// Where a shim finds its fencing deadline, and what it does at it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FenceConfig {
    /// A [`FenceOrder`], rewritten by the supervisor, which then sends
    /// [`FENCE_SIGNAL`] to the shim.
    pub path: PathBuf,
    pub demote: Demote,
}

/// How a shim demotes its replica.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Demote {
    /// Sent to the main process.
    Signal(i32),
    /// Run (expanded already) in `cwd`.
    Command { argv: Vec<String>, cwd: PathBuf },
    /// The replica is stopped: the stop signal, SIGKILL after `kill_after_ms`.
    Stop { kill_after_ms: u64 },
}

/// The supervisor's word to a shim of a cluster-scope replica: it is active
/// under `token` until `deadline_ns`, on `CLOCK_BOOTTIME` (which, unlike
/// the monotonic clock, counts a suspended machine's sleep, as etcd's lease
/// timer on another machine does). A deadline in the past fences at once.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FenceOrder {
    pub token: u64,
    pub deadline_ns: u64,
}

/// Tells a shim to read its [`FenceOrder`] again.
pub const FENCE_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGWINCH;

/// `CLOCK_BOOTTIME` now, in nanoseconds.
pub fn boot_now() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| Duration::from(t).as_nanos() as u64)
        .unwrap_or_default()
}

/// The supervisor's leave for a shim to start its command again, at once,
/// when it ends, and report it afterwards ([`Status::Respawned`]) instead of
/// exiting and waiting for a new shim: the fast path of `delay = "0s"`.
/// The supervisor grants only what its restart policy would decide anyway,
/// so the policy stays the supervisor's (see `supervisor::launch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Respawn {
    /// `on-failure`: exit codes that count as success and end the replica.
    /// None (`always`): every end is restarted.
    pub unless_codes: Option<Vec<i32>>,
    /// How many times, at most; None: no limit (`limit = 0`).
    pub budget: Option<u32>,
}

impl Respawn {
    /// Takes one restart of the leave, if it covers an end with this exit
    /// code (None: killed by a signal).
    pub fn take(&mut self, code: Option<i32>) -> bool {
        let covered = match (code, &self.unless_codes) {
            (Some(code), Some(success)) => !success.contains(&code),
            _ => true,
        };
        match &mut self.budget {
            _ if !covered => false,
            None => true,
            Some(0) => false,
            Some(left) => {
                *left -= 1;
                true
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogConfig {
    pub path: PathBuf,
    pub max_size: u64,
    pub keep: u32,
}

/// A line a shim writes on its stdout: `Started` or `SpawnFailed`, then
/// `Ready` if it watches for a ready pattern.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Started {
        pid: u32,
    },
    SpawnFailed {
        error: String,
    },
    /// An output line matched `ready_pattern` (sent at most once, after `Started`).
    Ready,
    /// Cluster scope: the deadline of `token` passed, and the shim demoted
    /// the replica (ran the demote hook, sent the signal, or began the stop).
    Fenced {
        token: u64,
    },
    /// Under a [`Respawn`] leave: the command ended as said and was started
    /// again as `generation`, with `pid`.
    Respawned {
        generation: u64,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
        /// The kernel's OOM killer ended it.
        #[serde(default)]
        oom: bool,
    },
}

/// How a replica ended, written by its shim once no process of it is left.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub generation: u64,
    pub pid: Option<u32>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when the command could not be started at all.
    pub spawn_error: Option<String>,
    /// The kernel's OOM killer ended it (its leaf's `memory.events`
    /// counted an `oom_kill` during the run).
    #[serde(default)]
    pub oom: bool,
    #[serde(with = "humantime_serde_compat")]
    pub at: SystemTime,
}

/// Who is running for a replica, written by its shim once the command runs:
/// what a resuming supervisor needs to recognise (never guess) the processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningRecord {
    pub generation: u64,
    pub shim_pid: u32,
    /// `/proc/<pid>/stat` start times: a pid plus its start time is one process.
    pub shim_start: u64,
    pub pid: u32,
    pub pid_start: u64,
    pub boot_id: String,
    #[serde(with = "humantime_serde_compat")]
    pub started_at: SystemTime,
    /// The shim holds a [`Respawn`] leave. A supervisor that adopts it
    /// revokes it with SIGUSR2, as it cannot hear of respawns (the status
    /// pipe went with the supervisor that started the shim).
    #[serde(default)]
    pub respawns: bool,
    /// The replica's [`ShimConfig::definition`]; absent in records of
    /// older versions.
    #[serde(default)]
    pub definition: Option<String>,
    /// The replica's cgroup leaf, if it has one: a resuming supervisor
    /// verifies the command by it, and kills what is in it if the replica
    /// is not adopted.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

/// Writes `value` as JSON so that a reader sees all of it or none of it.
/// No fsync: records describe live processes, which a power loss ends anyway.
pub fn write_record<T: Serialize>(value: &T, path: &Path) -> std::io::Result<()> {
    crate::state_dir::replace(path, &serde_json::to_vec(value)?, false)
}

pub fn read_record<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<T> {
    let bytes = crate::state_dir::read(path)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// RFC 3339 timestamps in JSON, via humantime.
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::Respawn;

    #[test]
    fn a_respawn_leave_covers_failures_only_under_on_failure_and_runs_out() {
        let mut on_failure = Respawn {
            unless_codes: Some(vec![0, 3]),
            budget: Some(2),
        };
        assert!(!on_failure.take(Some(0)), "a success is not restarted");
        assert!(!on_failure.take(Some(3)), "exit_codes are successes");
        assert!(on_failure.take(Some(1)));
        assert!(on_failure.take(None), "a signal is a failure");
        assert!(!on_failure.take(Some(1)), "the budget is spent");

        let mut always = Respawn {
            unless_codes: None,
            budget: None,
        };
        assert!((0..1000).all(|_| always.take(Some(0))));
    }
}
