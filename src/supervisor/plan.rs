//! What the supervisor should do next, as a pure function of what it knows:
//! [`plan`] reads a [`View`] of the state and the time and returns the
//! [`Action`]s that close the gap between the replicas wanted and the
//! replicas observed, and when to look again. It forks nothing and sends no
//! signal: `Supervisor::reconcile` carries the actions out. So every rule
//! here (dependencies, scale, stop marks, backoff expiry, failover roles,
//! shutdown order) is table-tested below with no process and no clock, as
//! the restart policy is in `restart.rs`.
//!
//! Actions are planned in the order they are carried out, and each one's
//! effect is kept in a scratch copy of the phases, so that later decisions
//! of the same plan see it (a dependency failed just now blocks its
//! dependants; a replica spawned just now makes the next one a standby).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::Shutdown;
use super::cluster::Standing;
use super::desired::Desired;
use super::replica::{self, AfterStop, Phase, Replica, ReplicaId, Role, Verdict};
use crate::exit;
use crate::spec::{Condition, Promote, RestartPolicy, Service};

/// A settled standby that does not catch `promote_signal` yet is looked at
/// again after this.
pub(super) const RECHECK: Duration = Duration::from_millis(100);

/// A read-only borrow of what the decisions depend on.
pub(super) struct View<'a> {
    /// In start order (dependencies first).
    pub services: &'a [Service],
    pub desired: &'a Desired,
    pub replicas: &'a BTreeMap<ReplicaId, Replica>,
    pub shutdown: Option<&'a Shutdown>,
    /// Does process `pid` catch (or ignore) `signal`? Asked only of a
    /// standby about to be promoted with `promote_signal` (it reads /proc).
    pub catches: &'a dyn Fn(u32, Signal) -> bool,
    /// Where this supervisor stands in a service's cluster election.
    pub standing: &'a dyn Fn(&str) -> Standing,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Action {
    /// Take it down (if it has processes), then `then`.
    Stop {
        id: ReplicaId,
        then: AfterStop,
    },
    /// Shutdown: one without processes has nothing to stop: `stopped`.
    Settle(ReplicaId),
    /// Start it: its first incarnation, or one asked for (`restart`, reload).
    Spawn {
        id: ReplicaId,
        position: usize,
        role: Option<Role>,
    },
    /// Its backoff is over: start it again, a counted restart.
    Restart {
        id: ReplicaId,
        position: usize,
        role: Option<Role>,
    },
    /// It cannot start: a dependency failed.
    Fail {
        id: ReplicaId,
        reason: String,
    },
    /// A second active (say, both adopted) loses the role.
    Demote(ReplicaId),
    Promote(ReplicaId),
    /// A settled standby that `signal` would kill: not promoted yet.
    PassOver {
        id: ReplicaId,
        signal: Signal,
    },
    /// Cluster scope: a standby is fit; run for the service's key.
    Campaign(String),
    /// Cluster scope: elected, but no standby is fit any more (or the
    /// active is gone): give the key up.
    Resign(String),
    /// A notify replica missed its READY=1 or watchdog deadline.
    Overdue(ReplicaId),
    /// The shutdown timeout is reached: kill whatever is left.
    Kill,
}

#[derive(Debug, Default, PartialEq)]
pub(super) struct Plan {
    pub actions: Vec<Action>,
    /// When to plan again if nothing happens before (a backoff ends, a
    /// standby settles, a deadline passes).
    pub wake: Option<Instant>,
}

/// A replica's phase as the plan so far leaves it, without what only the
/// phase itself knows.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Pending,
    Starting,
    Running,
    Stopping(AfterStop),
    Backoff(Instant),
    Stopped,
    Exited,
    Failed,
    /// Forgotten (a surplus replica without processes).
    Gone,
}

impl Step {
    fn of(phase: &Phase) -> Step {
        match phase {
            Phase::Pending => Step::Pending,
            Phase::Starting { .. } => Step::Starting,
            Phase::Running { .. } => Step::Running,
            Phase::Stopping { then, .. } => Step::Stopping(*then),
            Phase::Backoff { until } => Step::Backoff(*until),
            Phase::Stopped => Step::Stopped,
            Phase::Exited => Step::Exited,
            Phase::Failed => Step::Failed,
        }
    }

    fn live(self) -> bool {
        matches!(self, Step::Starting | Step::Running)
    }

    fn has_processes(self) -> bool {
        matches!(self, Step::Starting | Step::Running | Step::Stopping(_))
    }
}

/// Can a service start, given the state of what it depends on?
#[derive(Debug, PartialEq)]
enum Readiness {
    Ready,
    Waiting,
    Blocked(String),
}

/// The plan for the state `view` shows at `now`.
pub(super) fn plan(view: &View, now: Instant) -> Plan {
    let mut planner = Planner {
        view,
        now,
        steps: BTreeMap::new(),
        demoted: Vec::new(),
        plan: Plan::default(),
    };
    match view.shutdown {
        Some(shutdown) => planner.shutdown(shutdown),
        None => {
            planner.retire_surplus();
            planner.roles();
            planner.watchdogs();
            for position in 0..view.services.len() {
                planner.service(position);
            }
        }
    }
    planner.plan
}

struct Planner<'v, 'a> {
    view: &'v View<'a>,
    now: Instant,
    /// Phases this plan changes.
    steps: BTreeMap<ReplicaId, Step>,
    /// Actives this plan takes the role from.
    demoted: Vec<ReplicaId>,
    plan: Plan,
}

impl<'a> Planner<'_, 'a> {
    fn step(&self, r: &Replica) -> Step {
        self.steps
            .get(&r.id)
            .copied()
            .unwrap_or_else(|| Step::of(&r.phase))
    }

    fn wake_at(&mut self, at: Instant) {
        self.plan.wake = Some(self.plan.wake.map_or(at, |w| w.min(at)));
    }

    /// The replicas of `service`, borrowed from the view, not the planner.
    fn replicas_of(&self, service: &'a str) -> impl Iterator<Item = &'a Replica> + use<'a> {
        replica::of_service(self.view.replicas, service)
    }

    /// Takes it down, as `Supervisor::stop_replica` will: an active on its
    /// way down is active no more; one without processes goes straight to
    /// what follows.
    fn stop(&mut self, r: &Replica, then: AfterStop) {
        let step = match (self.step(r), then) {
            (s, _) if s.has_processes() => Step::Stopping(then),
            (_, AfterStop::Remove) => Step::Gone,
            (s @ (Step::Exited | Step::Failed), AfterStop::Stay) => s,
            (_, AfterStop::Stay) => Step::Stopped,
            (_, AfterStop::Start | AfterStop::Judge(_)) => Step::Pending,
        };
        if r.role() == Some(Role::Active) {
            self.demoted.push(r.id.clone());
        }
        self.steps.insert(r.id.clone(), step);
        self.plan.actions.push(Action::Stop {
            id: r.id.clone(),
            then,
        });
    }

    /// Replicas beyond their service's desired count, or of services the
    /// spec no longer has, go: highest index first.
    fn retire_surplus(&mut self) {
        let view = self.view;
        let counts: BTreeMap<&str, u32> = view
            .services
            .iter()
            .map(|s| (s.name.as_str(), view.desired.replicas(s)))
            .collect();
        for r in view.replicas.values().rev() {
            let surplus = counts
                .get(r.id.service.as_str())
                .is_none_or(|&count| r.id.index >= count);
            if surplus && self.step(r) != Step::Stopping(AfterStop::Remove) {
                self.stop(r, AfterStop::Remove);
            }
        }
    }

    /// Every failover service without an active gets one, if a standby is
    /// fit: running and healthy, settled (`promotable_from`), and with
    /// `promote_signal`, catching it: a promotion never kills. Only one
    /// may be active: should two ever be, the lowest index keeps the role.
    /// In cluster scope, only the elected supervisor promotes: one with a
    /// fit standby campaigns, and an active where this supervisor does not
    /// lead (adopted after a resume) is demoted.
    fn roles(&mut self) {
        let view = self.view;
        for service in view.services {
            let Some(failover) = &service.failover else {
                continue;
            };
            let standing = (view.standing)(&service.name);
            let holders: Vec<&Replica> = self
                .replicas_of(&service.name)
                .filter(|r| r.role() == Some(Role::Active) && !self.demoted.contains(&r.id))
                .filter(|r| self.step(r) != Step::Gone)
                .collect();
            let keep = match standing {
                Standing::Local | Standing::Leads | Standing::Elected => 1,
                Standing::MayCampaign | Standing::Wait => 0,
            };
            for extra in holders.iter().skip(keep) {
                self.plan.actions.push(Action::Demote(extra.id.clone()));
            }
            if !holders.is_empty() {
                continue;
            }
            match standing {
                Standing::Wait => continue,
                Standing::Leads => {
                    // Its active is gone: a new term, with a new token.
                    self.plan.actions.push(Action::Resign(service.name.clone()));
                    continue;
                }
                _ => {}
            }
            let signal = match failover.promote {
                Some(Promote::Signal(signal)) => Some(signal),
                _ => None,
            };
            let mut wake = None::<Instant>;
            let mut promoted = false;
            for r in self.replicas_of(&service.name) {
                let (Phase::Running { pid, run, .. }, Step::Running) = (&r.phase, self.step(r))
                else {
                    continue;
                };
                let (Verdict::Healthy, Some(from)) = (run.health, run.promotable_from) else {
                    continue;
                };
                let action = if from > self.now {
                    wake = Some(wake.map_or(from, |w| w.min(from)));
                    continue;
                } else if let Some(signal) = signal.filter(|&s| !(view.catches)(*pid, s)) {
                    let recheck = self.now + RECHECK;
                    wake = Some(wake.map_or(recheck, |w| w.min(recheck)));
                    Action::PassOver {
                        id: r.id.clone(),
                        signal,
                    }
                } else if standing == Standing::MayCampaign {
                    promoted = true;
                    Action::Campaign(service.name.clone())
                } else {
                    promoted = true;
                    Action::Promote(r.id.clone())
                };
                self.plan.actions.push(action);
                if promoted {
                    break;
                }
            }
            match (wake, promoted) {
                (Some(at), false) => self.wake_at(at),
                (None, false) if standing == Standing::Elected => {
                    self.plan.actions.push(Action::Resign(service.name.clone()));
                }
                _ => {}
            }
        }
    }

    /// notify services: a replica not ready by the end of its start
    /// period, or silent past its watchdog deadline, is judged.
    fn watchdogs(&mut self) {
        for r in self.view.replicas.values() {
            if self.step(r) == Step::Gone {
                continue;
            }
            match r.phase.run().and_then(|run| run.watchdog_until) {
                Some(until) if until <= self.now => {
                    self.plan.actions.push(Action::Overdue(r.id.clone()))
                }
                Some(until) => self.wake_at(until),
                None => {}
            }
        }
    }

    fn service(&mut self, position: usize) {
        let service = &self.view.services[position];
        let count = self.view.desired.replicas(service);
        // Replicas beyond the count are being retired.
        let ids: Vec<&Replica> = self
            .replicas_of(&service.name)
            .filter(|r| r.id.index < count)
            .collect();
        let readiness = self.readiness(service);
        for r in ids {
            let step = self.step(r);
            if r.stop_requested {
                if !matches!(step, Step::Stopping(_)) {
                    self.stop(r, AfterStop::Stay);
                }
                continue;
            }
            let id = r.id.clone();
            match (step, &readiness) {
                (Step::Pending, Readiness::Ready) => {
                    let role = self.role_at_spawn(service, &id);
                    self.steps.insert(id.clone(), Step::Starting);
                    self.plan.actions.push(Action::Spawn { id, position, role });
                }
                (Step::Pending, Readiness::Blocked(reason)) => {
                    self.steps.insert(id.clone(), Step::Failed);
                    let reason = reason.clone();
                    self.plan.actions.push(Action::Fail { id, reason });
                }
                (Step::Backoff(until), _) if until <= self.now => {
                    let role = self.role_at_spawn(service, &id);
                    self.steps.insert(id.clone(), Step::Starting);
                    self.plan
                        .actions
                        .push(Action::Restart { id, position, role });
                }
                (Step::Backoff(until), _) => self.wake_at(until),
                _ => {}
            }
        }
    }

    fn readiness(&self, service: &Service) -> Readiness {
        for dep in &service.depends_on {
            for r in self.replicas_of(&dep.service) {
                match (self.step(r), dep.condition) {
                    (Step::Failed, _) => {
                        return Readiness::Blocked(format!("dependency {} failed", r.id));
                    }
                    (Step::Gone, _) => {}
                    (Step::Exited, Condition::Completed) => {}
                    (Step::Running, Condition::Started) => {}
                    (Step::Running, Condition::Healthy) if r.health() == Verdict::Healthy => {}
                    _ => return Readiness::Waiting,
                }
            }
        }
        Readiness::Ready
    }

    /// The role a failover replica is spawned with: active if no other
    /// replica of its service is live (none is active, and no standby
    /// could take over), else standby. None for other services.
    fn role_at_spawn(&self, service: &Service, id: &ReplicaId) -> Option<Role> {
        if service.failover.as_ref()?.is_cluster() {
            // Only an election makes an active.
            return Some(Role::Standby);
        }
        let others_live = self
            .replicas_of(&service.name)
            .any(|r| r.id != *id && self.step(r).live());
        Some(if others_live {
            Role::Standby
        } else {
            Role::Active
        })
    }

    /// Replicas without processes have nothing to stop; the others stop in
    /// reverse dependency order: a service once nothing that depends on it
    /// has processes left. Past the deadline, what is left is killed.
    fn shutdown(&mut self, shutdown: &Shutdown) {
        let view = self.view;
        for r in view.replicas.values() {
            if matches!(r.phase, Phase::Pending | Phase::Backoff { .. }) {
                self.steps.insert(r.id.clone(), Step::Stopped);
                self.plan.actions.push(Action::Settle(r.id.clone()));
            }
        }
        for service in view.services.iter().rev() {
            let dependants_down = view
                .services
                .iter()
                .filter(|s| s.depends_on.iter().any(|d| d.service == service.name))
                .all(|s| {
                    self.replicas_of(&s.name)
                        .all(|r| !self.step(r).has_processes())
                });
            if !dependants_down {
                continue;
            }
            let live: Vec<&Replica> = self
                .replicas_of(&service.name)
                .filter(|r| self.step(r).live())
                .collect();
            for r in live {
                self.stop(r, AfterStop::Stay);
            }
        }
        if shutdown.forced {
            return;
        }
        if self.now >= shutdown.deadline {
            self.plan.actions.push(Action::Kill);
        } else {
            self.wake_at(shutdown.deadline);
        }
    }
}

/// `--exit-with`: once all of a service's replicas are settled, the code to
/// exit with: the first failure's, else 0. None while one is not settled.
pub(super) fn exit_with_code(replicas: &[&Replica], policy: &RestartPolicy) -> Option<i32> {
    if !replicas.iter().all(|r| r.phase.is_settled()) {
        return None;
    }
    // A replica that failed without ever running (its dependency failed)
    // has no exit of its own, and must not read as a success.
    let code = replicas
        .iter()
        .find_map(|r| {
            let code = match (&r.phase, &r.last_exit) {
                (_, Some((ending, _))) if !ending.is_success(policy) => ending.shell_code(),
                (Phase::Failed, None) => exit::FAILED,
                _ => exit::OK,
            };
            (code != exit::OK).then_some(code)
        })
        .unwrap_or(exit::OK);
    Some(code)
}

#[cfg(test)]
mod tests;
