//! Waiting for replicas to reach a condition: `wait`, and the waits inside
//! `up -d`, `start`, `stop` and `restart`.
//!
//! The condition is evaluated here, on status reports: one at the start and
//! one after every event the supervisor streams (`events -f` on a second
//! connection), so a change is seen as it happens. A re-check every
//! [`RECHECK`] covers changes that come without an event.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::{Cli, Condition, WaitArgs};
use crate::control::client::{self, Connection, Next};
use crate::control::protocol::{ReplicaStatus, Request, StatusReport};
use crate::exit;
use crate::progress::Progress;

use super::format::last_exit;
use super::select::{self, Selected};
use super::{Exit, Failure, context};

/// Bound on the time between two looks at the status.
const RECHECK: Duration = Duration::from_secs(1);
/// After an event, others already on their way are read before looking, so
/// a burst (the history, a service starting) costs one status request.
const BURST: Duration = Duration::from_millis(20);

/// What every selected replica must reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Has been spawned at least once: has a process (or is `running`),
    /// waits out a restart delay (`backoff`), is done (`exited`) or
    /// deliberately `stopped`. What `up -d` waits for: never a backoff.
    Started,
    /// `running`; a one-shot job that has `exited` successfully counts, as
    /// it will never run again.
    Running,
    /// `running` and health `healthy` (or `exited`, as for `Running`).
    Healthy,
    /// No process: `stopped`, `exited` or `failed`.
    Stopped,
    /// `exited`: finished successfully under its restart policy.
    Completed,
}

impl From<Condition> for Goal {
    fn from(c: Condition) -> Goal {
        match c {
            Condition::Running => Goal::Running,
            Condition::Healthy => Goal::Healthy,
            Condition::Stopped => Goal::Stopped,
            Condition::Completed => Goal::Completed,
        }
    }
}

impl Goal {
    fn holds(self, r: &ReplicaStatus) -> bool {
        let state = r.state.as_str();
        match self {
            Goal::Started => {
                (r.pid.is_some() && state != "stopping")
                    || matches!(state, "running" | "backoff" | "exited" | "stopped")
            }
            Goal::Running => matches!(state, "running" | "exited"),
            Goal::Healthy => (state == "running" && r.health == "healthy") || state == "exited",
            Goal::Stopped => matches!(state, "stopped" | "exited" | "failed"),
            Goal::Completed => state == "exited",
        }
    }
}

/// What identifies one run of a replica: a restart changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incarnation {
    pid: Option<u32>,
    started_at: Option<String>,
}

impl Incarnation {
    pub fn of(r: &ReplicaStatus) -> Incarnation {
        Incarnation {
            pid: r.pid,
            started_at: r.started_at.clone(),
        }
    }

    /// The incarnations of the replicas `targets` name, before a restart.
    pub fn snapshot(
        report: &StatusReport,
        targets: &[String],
    ) -> Result<HashMap<String, Incarnation>, Failure> {
        Ok(select::replicas(report, targets)?
            .iter()
            .filter(|s| s.replica.pid.is_some())
            .map(|s| (s.name(), Incarnation::of(s.replica)))
            .collect())
    }
}

/// What a wait is for.
pub struct Wanted<'a> {
    /// Services or replicas; empty = all.
    pub targets: &'a [String],
    pub goal: Goal,
    /// Replicas that must also show a new incarnation (after a restart).
    pub replaced: &'a HashMap<String, Incarnation>,
}

/// Where a wait stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Holds,
    /// Replicas that are `failed`, each described (`api.1 failed (code 3 (2s ago))`).
    Failed(Vec<String>),
    /// Replicas not there yet, each with why (`api.1 (backoff)`).
    Waiting(Vec<String>),
}

impl Wanted<'_> {
    pub fn judge(&self, selected: &[Selected]) -> Verdict {
        let now = std::time::SystemTime::now();
        let mut failed = Vec::new();
        let mut waiting = Vec::new();
        for s in selected {
            let r = s.replica;
            let name = s.name();
            if r.state == "failed" && self.goal != Goal::Stopped {
                let why = r
                    .last_exit
                    .as_ref()
                    .map_or_else(String::new, |e| format!(" ({})", last_exit(e, now)));
                failed.push(format!("{name} failed{why}"));
            } else if self.replaced.get(&name) == Some(&Incarnation::of(r)) {
                // Still the old process: "running" would mislead.
                let state = match r.state.as_str() {
                    "running" => "not replaced yet",
                    other => other,
                };
                waiting.push(format!("{name} ({state})"));
            } else if !self.goal.holds(r) {
                waiting.push(format!("{name} ({})", r.state));
            }
        }
        if !failed.is_empty() {
            Verdict::Failed(failed)
        } else if !waiting.is_empty() {
            Verdict::Waiting(waiting)
        } else {
            Verdict::Holds
        }
    }
}

/// How a wait ended.
pub enum Ended {
    Holds(StatusReport),
    Failed(Vec<String>),
    TimedOut(Vec<String>),
}

impl Ended {
    /// The exit code and message of a wait that did not succeed; `None` when it holds.
    pub fn failure(&self, timeout: Option<Duration>) -> Option<Failure> {
        match self {
            Ended::Holds(_) => None,
            Ended::Failed(which) => Some(Failure::new(exit::FAILED, which.join("; "))),
            Ended::TimedOut(missing) => Some(Failure::new(
                exit::TIMEOUT,
                format!(
                    "timed out{}; still waiting for: {}",
                    timeout.map_or_else(String::new, |t| format!(
                        " after {}",
                        humantime::format_duration(t)
                    )),
                    missing.join(", ")
                ),
            )),
        }
    }
}

/// Waits until `wanted` holds, a selected replica fails, or `deadline`
/// passes, showing `<label>: <what is still awaited>` on `progress`.
pub fn until(
    state_dir: &Path,
    wanted: &Wanted,
    deadline: Option<Instant>,
    progress: &mut Progress,
    label: &str,
) -> Result<Ended, Failure> {
    let mut events = Some(subscribe(state_dir)?);
    loop {
        let report = client::status(state_dir)?;
        let selected = select::replicas(&report, wanted.targets)?;
        let waiting = match wanted.judge(&selected) {
            Verdict::Holds => return Ok(Ended::Holds(report)),
            Verdict::Failed(which) => return Ok(Ended::Failed(which)),
            Verdict::Waiting(which) => which,
        };
        progress.set(&format!("{label}: {}", waiting.join(", ")));
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            return Ok(Ended::TimedOut(waiting));
        }
        let look_again = deadline.map_or(now + RECHECK, |d| d.min(now + RECHECK));
        match events.as_mut() {
            Some(conn) => {
                if !next_burst(conn, look_again)? {
                    // The supervisor is going away; the next status says so.
                    events = None;
                }
            }
            None => std::thread::sleep(look_again.saturating_duration_since(Instant::now())),
        }
    }
}

/// A deadline, with the timeout it came from (to name it in messages).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub after: Duration,
}

impl Deadline {
    pub fn from_now(after: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + after,
            after,
        }
    }
}

/// [`until`] as a command's result: the final report, or the failure (a
/// failed replica: 1; the deadline: 124, naming what is missing).
pub fn settle(
    dir: &Path,
    wanted: &Wanted,
    deadline: Option<Deadline>,
    progress: &mut Progress,
    label: &str,
) -> Result<StatusReport, Failure> {
    match until(dir, wanted, deadline.map(|d| d.at), progress, label)? {
        Ended::Holds(report) => Ok(report),
        other => Err(other
            .failure(deadline.map(|d| d.after))
            .expect("only Holds is not a failure")),
    }
}

fn subscribe(state_dir: &Path) -> Result<Connection, Failure> {
    let mut conn = client::connect(state_dir)?;
    conn.request_accepted(Request::Events { follow: true })?;
    Ok(conn)
}

/// Waits for an event until `until`, then reads the rest of its burst.
/// False when the stream has ended.
fn next_burst(conn: &mut Connection, until: Instant) -> Result<bool, Failure> {
    match conn.next_event(Some(until))? {
        Next::Closed => return Ok(false),
        Next::TimedOut => return Ok(true),
        Next::Item(_) => {}
    }
    let burst_end = Instant::now() + BURST;
    loop {
        match conn.next_event(Some(burst_end))? {
            Next::Item(_) => {}
            Next::TimedOut => return Ok(true),
            Next::Closed => return Ok(false),
        }
    }
}

/// `supervise wait`.
pub fn run(cli: &Cli, args: &WaitArgs) -> Exit {
    let ctx = context(cli)?;
    let mut progress = Progress::new(cli.quiet);
    let wanted = Wanted {
        targets: &args.targets,
        goal: args.condition.into(),
        replaced: &HashMap::new(),
    };
    settle(
        &ctx.state_dir,
        &wanted,
        args.timeout.map(Deadline::from_now),
        &mut progress,
        "waiting for",
    )?;
    progress.finish();
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::select::tests::report;

    fn judge(goal: Goal, states: &[&str]) -> Verdict {
        let r = report(&[("api", states)]);
        let selected = select::replicas(&r, &[]).unwrap();
        Wanted {
            targets: &[],
            goal,
            replaced: &HashMap::new(),
        }
        .judge(&selected)
    }

    #[test]
    fn each_goal_accepts_its_states() {
        use Verdict::Holds;
        assert_eq!(judge(Goal::Running, &["running", "exited"]), Holds);
        assert_eq!(judge(Goal::Healthy, &["running"]), Holds);
        assert_eq!(
            judge(Goal::Stopped, &["stopped", "exited", "failed"]),
            Holds
        );
        assert_eq!(judge(Goal::Completed, &["exited"]), Holds);
        assert_eq!(
            judge(Goal::Started, &["running", "backoff", "exited", "stopped"]),
            Holds
        );
        assert_eq!(
            judge(Goal::Running, &["running", "backoff", "pending"]),
            Verdict::Waiting(vec!["api.1 (backoff)".into(), "api.2 (pending)".into()])
        );
        assert_eq!(
            judge(Goal::Completed, &["running"]),
            Verdict::Waiting(vec!["api.0 (running)".into()])
        );
    }

    #[test]
    fn started_means_a_process_exists() {
        let mut r = report(&[("api", &["starting"])]);
        let wanted = Wanted {
            targets: &[],
            goal: Goal::Started,
            replaced: &HashMap::new(),
        };
        let verdict = |r: &StatusReport| wanted.judge(&select::replicas(r, &[]).unwrap());
        assert!(matches!(verdict(&r), Verdict::Waiting(_)));
        r.services[0].replicas[0].pid = Some(7);
        assert_eq!(verdict(&r), Verdict::Holds);
    }

    #[test]
    fn healthy_needs_the_health_too() {
        let mut r = report(&[("api", &["running"])]);
        r.services[0].replicas[0].health = "unhealthy".into();
        let selected = select::replicas(&r, &[]).unwrap();
        let wanted = Wanted {
            targets: &[],
            goal: Goal::Healthy,
            replaced: &HashMap::new(),
        };
        assert!(matches!(wanted.judge(&selected), Verdict::Waiting(_)));
    }

    #[test]
    fn a_failed_replica_fails_the_wait_unless_waiting_for_a_stop() {
        assert_eq!(
            judge(Goal::Running, &["running", "failed"]),
            Verdict::Failed(vec!["api.1 failed".into()])
        );
        assert_eq!(judge(Goal::Stopped, &["failed"]), Verdict::Holds);
    }

    #[test]
    fn a_restart_is_done_only_with_a_new_incarnation() {
        let mut r = report(&[("api", &["running"])]);
        r.services[0].replicas[0].started_at = Some("2026-11-23T12:00:00Z".into());
        let before = Incarnation::snapshot(&r, &[]).unwrap();
        let wanted = Wanted {
            targets: &[],
            goal: Goal::Running,
            replaced: &before,
        };
        let verdict = |r: &StatusReport| wanted.judge(&select::replicas(r, &[]).unwrap());
        assert_eq!(
            verdict(&r),
            Verdict::Waiting(vec!["api.0 (not replaced yet)".into()])
        );
        r.services[0].replicas[0].pid = Some(4242);
        r.services[0].replicas[0].started_at = Some("2026-11-23T12:00:05Z".into());
        assert_eq!(verdict(&r), Verdict::Holds);
    }

    #[test]
    fn a_timeout_says_what_is_missing() {
        let ended = Ended::TimedOut(vec!["api.1 (backoff)".into(), "db.0 (starting)".into()]);
        let f = ended.failure(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(f.code, 124);
        assert_eq!(
            f.message.unwrap(),
            "timed out after 5s; still waiting for: api.1 (backoff), db.0 (starting)"
        );
    }
}
