//! One replica's observed state, as the event loop sees it.

use std::fmt;
use std::time::{Instant, SystemTime};

use nix::unistd::Pid;

use super::restart::{Ending, History};

/// `service.N`, e.g. `api.1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId {
    pub service: String,
    pub index: u32,
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.service, self.index)
    }
}

/// The replica states of docs/commands.md §3.1, each with what only it knows.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Waiting for its dependencies.
    Pending,
    /// The shim is spawned; the command's own pid is not known yet.
    Starting {
        shim: Pid,
        since: Instant,
    },
    Running {
        shim: Pid,
        pid: u32,
        since: Instant,
    },
    /// Asked to stop; the shim is taking the tree down.
    Stopping {
        shim: Pid,
        pid: Option<u32>,
        then: AfterStop,
    },
    /// Waiting to be restarted.
    Backoff {
        until: Instant,
    },
    Stopped,
    /// Finished as a success under its restart policy.
    Exited,
    /// Not restarted again until asked to.
    Failed,
}

impl Phase {
    /// The shim of a replica that has processes, if it has any.
    pub fn shim(&self) -> Option<Pid> {
        match self {
            Phase::Starting { shim, .. }
            | Phase::Running { shim, .. }
            | Phase::Stopping { shim, .. } => Some(*shim),
            _ => None,
        }
    }

    /// The command's own pid, while it has one.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Phase::Running { pid, .. } => Some(*pid),
            Phase::Stopping { pid, .. } => *pid,
            _ => None,
        }
    }

    /// The state's name in `status` (docs/commands.md §3.1).
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting { .. } => "starting",
            Phase::Running { .. } => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Backoff { .. } => "backoff",
            Phase::Stopped => "stopped",
            Phase::Exited => "exited",
            Phase::Failed => "failed",
        }
    }

    /// Nothing more will happen to it without a request.
    pub fn is_settled(&self) -> bool {
        matches!(self, Phase::Stopped | Phase::Exited | Phase::Failed)
    }
}

/// What happens once a stopping replica's processes are all gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// `stopped` (shutdown, `stop`).
    Stay,
    /// Spawned again (`restart`, a reloaded definition).
    Start,
    /// Forgotten (scaled down, service removed by a reload).
    Remove,
    /// Judged by the restart policy as a failure (it was unhealthy).
    Judge,
}

/// What the health probe says of the current incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verdict {
    /// No verdict yet (or no process).
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

/// Failover role (`mode = "active-standby"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Active,
    Standby,
}

impl Role {
    /// As `status` and `SUPERVISE_ROLE` say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

#[derive(Debug)]
pub struct Replica {
    pub id: ReplicaId,
    pub phase: Phase,
    /// Counts incarnations; stale reports from an earlier one are ignored.
    pub generation: u64,
    pub restarts: u32,
    pub history: History,
    pub last_exit: Option<(Ending, SystemTime)>,
    /// When the current incarnation's command started.
    pub started_at: Option<SystemTime>,
    /// Marked with `stop`: stays down until `start`/`restart`.
    pub stop_requested: bool,
    /// Of the current incarnation; see `supervisor::health`.
    pub health: Verdict,
    /// Probe failures in a row (after `start_period`).
    pub probe_failures: u32,
    /// The current incarnation's probe task, aborted when it ends.
    pub probe: Option<tokio::task::AbortHandle>,
    /// notify services: unhealthy if not ready (or, with `watchdog`, silent)
    /// past this.
    pub watchdog_until: Option<Instant>,
    /// Failover services only; given at spawn (see `supervisor::failover`).
    pub role: Option<Role>,
    /// Failover: not promoted before this, set when its command starts
    /// (see `failover::SETTLE`).
    pub promotable_from: Option<Instant>,
    /// Failover with `promote_signal`: it was said once that it does not
    /// catch the signal yet, so is passed over.
    pub passed_over: bool,
}

impl Replica {
    pub fn new(id: ReplicaId) -> Replica {
        Replica {
            id,
            phase: Phase::Pending,
            generation: 0,
            restarts: 0,
            history: History::default(),
            last_exit: None,
            started_at: None,
            stop_requested: false,
            health: Verdict::Unknown,
            probe_failures: 0,
            probe: None,
            watchdog_until: None,
            role: None,
            promotable_from: None,
            passed_over: false,
        }
    }
}
