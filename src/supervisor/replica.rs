//! One replica's observed state, as the event loop sees it.

use std::collections::BTreeMap;
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

/// The replicas of `service`: a range of the map, which orders them by
/// service then index, so a lookup per service costs no scan of them all
/// (status, and every turn of the loop, asks it for each service).
pub fn of_service<'a>(
    replicas: &'a BTreeMap<ReplicaId, Replica>,
    service: &'a str,
) -> impl Iterator<Item = &'a Replica> + 'a {
    let first = ReplicaId {
        service: service.to_owned(),
        index: 0,
    };
    replicas
        .range(first..)
        .map_while(move |(id, r)| (id.service == service).then_some(r))
}

/// The replica states of docs/commands.md §3.1, each with what only it
/// knows. The phases with processes hold their run's [`Incarnation`], so
/// the run's data goes with the run.
#[derive(Debug)]
pub enum Phase {
    /// Waiting for its dependencies.
    Pending,
    /// The shim is spawned; the command's own pid is not known yet.
    Starting {
        shim: Pid,
        since: Instant,
        run: Incarnation,
    },
    Running {
        shim: Pid,
        pid: u32,
        since: Instant,
        run: Incarnation,
    },
    /// Asked to stop; the shim is taking the tree down.
    Stopping {
        shim: Pid,
        pid: Option<u32>,
        then: AfterStop,
        run: Incarnation,
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

    /// The current run's data, while it has processes.
    pub fn run(&self) -> Option<&Incarnation> {
        match self {
            Phase::Starting { run, .. }
            | Phase::Running { run, .. }
            | Phase::Stopping { run, .. } => Some(run),
            _ => None,
        }
    }

    pub fn run_mut(&mut self) -> Option<&mut Incarnation> {
        match self {
            Phase::Starting { run, .. }
            | Phase::Running { run, .. }
            | Phase::Stopping { run, .. } => Some(run),
            _ => None,
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
    /// Judged by the restart policy as a failure, for this reason.
    Judge(Judged),
}

/// Why a replica we stopped ended in failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    Unhealthy,
    /// Over `limits.memory` by sampling.
    OverMemory,
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

/// What one run of a replica has, from its spawn to its end. It is held
/// by the phases that have processes, so ending the run (any other phase)
/// drops it, its probe task with it: nothing is reset by hand.
#[derive(Debug, Default)]
pub struct Incarnation {
    /// When its command started (not yet known while starting).
    pub started_at: Option<SystemTime>,
    /// See `supervisor::health`.
    pub health: Verdict,
    /// Probe failures in a row (after `start_period`).
    pub probe_failures: u32,
    pub probe: Option<ProbeTask>,
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

/// A run's probe task, aborted when the run ends.
#[derive(Debug)]
pub struct ProbeTask(pub tokio::task::AbortHandle);

impl Drop for ProbeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug)]
pub struct Replica {
    pub id: ReplicaId,
    pub phase: Phase,
    /// Counts incarnations; stale reports from an earlier one are ignored.
    pub generation: u64,
    pub restarts: u32,
    /// `restarts` as the last checkpoint written holds it: what `status`
    /// shows, so that a count once shown survives a crash of the supervisor
    /// (see `Supervisor::checkpoint_restarts`).
    pub checkpointed_restarts: u32,
    pub history: History,
    pub last_exit: Option<(Ending, SystemTime)>,
    /// The incarnation whose end was judged last (0: none yet). Its exit
    /// record, while still on disk, is not to be judged again.
    pub ended: u64,
    /// Marked with `stop`: stays down until `start`/`restart`.
    pub stop_requested: bool,
}

impl Replica {
    pub fn new(id: ReplicaId) -> Replica {
        Replica {
            id,
            phase: Phase::Pending,
            generation: 0,
            restarts: 0,
            checkpointed_restarts: 0,
            history: History::default(),
            last_exit: None,
            ended: 0,
            stop_requested: false,
        }
    }

    /// The current run's, Unknown without one.
    pub fn health(&self) -> Verdict {
        self.phase.run().map_or(Verdict::Unknown, |run| run.health)
    }

    /// The current run's (failover services only).
    pub fn role(&self) -> Option<Role> {
        self.phase.run().and_then(|run| run.role)
    }

    pub fn run_mut(&mut self) -> Option<&mut Incarnation> {
        self.phase.run_mut()
    }
}
