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
use super::desired::Desired;
use super::replica::{AfterStop, Phase, Replica, ReplicaId, Role, Verdict};
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

fn replicas_of<'a>(
    replicas: &'a BTreeMap<ReplicaId, Replica>,
    service: &'a str,
) -> impl Iterator<Item = &'a Replica> + 'a {
    replicas.values().filter(move |r| r.id.service == service)
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
        replicas_of(self.view.replicas, service)
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
            (_, AfterStop::Start | AfterStop::Judge) => Step::Pending,
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
        for r in view.replicas.values().rev() {
            let surplus = match view.services.iter().find(|s| s.name == r.id.service) {
                Some(service) => r.id.index >= view.desired.replicas(service),
                None => true,
            };
            if surplus && self.step(r) != Step::Stopping(AfterStop::Remove) {
                self.stop(r, AfterStop::Remove);
            }
        }
    }

    /// Every failover service without an active gets one, if a standby is
    /// fit: running and healthy, settled (`promotable_from`), and with
    /// `promote_signal`, catching it: a promotion never kills. Only one
    /// may be active: should two ever be, the lowest index keeps the role.
    fn roles(&mut self) {
        let view = self.view;
        for service in view.services {
            let Some(failover) = &service.failover else {
                continue;
            };
            let holders: Vec<&Replica> = self
                .replicas_of(&service.name)
                .filter(|r| r.role() == Some(Role::Active) && !self.demoted.contains(&r.id))
                .filter(|r| self.step(r) != Step::Gone)
                .collect();
            for extra in holders.iter().skip(1) {
                self.plan.actions.push(Action::Demote(extra.id.clone()));
            }
            if !holders.is_empty() {
                continue;
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
                } else {
                    promoted = true;
                    Action::Promote(r.id.clone())
                };
                self.plan.actions.push(action);
                if promoted {
                    break;
                }
            }
            if let (Some(at), false) = (wake, promoted) {
                self.wake_at(at);
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
        service.failover.as_ref()?;
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
mod tests {
    use nix::unistd::Pid;

    use super::*;
    use crate::spec::{Dependency, Failover};
    use crate::supervisor::replica::Incarnation;
    use crate::supervisor::restart::Ending;
    use crate::supervisor::testing::service;

    fn ended(code: i32) -> Option<(Ending, std::time::SystemTime)> {
        Some((Ending::Code(code), std::time::SystemTime::UNIX_EPOCH))
    }

    fn id(name: &str) -> ReplicaId {
        let (service, index) = name.split_once('.').unwrap();
        ReplicaId {
            service: service.into(),
            index: index.parse().unwrap(),
        }
    }

    fn replica(name: &str, phase: Phase) -> Replica {
        let mut r = Replica::new(id(name));
        r.phase = phase;
        r
    }

    fn running(pid: u32, since: Instant) -> Phase {
        Phase::Running {
            shim: Pid::from_raw(pid as i32 + 1),
            pid,
            since,
            run: Incarnation::default(),
        }
    }

    fn starting(since: Instant) -> Phase {
        Phase::Starting {
            shim: Pid::from_raw(9),
            since,
            run: Incarnation::default(),
        }
    }

    fn depends(mut s: Service, on: &str, condition: Condition) -> Service {
        s.depends_on.push(Dependency {
            service: on.into(),
            condition,
        });
        s
    }

    fn failover(mut s: Service, promote: Option<Promote>) -> Service {
        s.failover = Some(Failover { promote });
        s
    }

    struct Case {
        services: Vec<Service>,
        desired: Desired,
        replicas: BTreeMap<ReplicaId, Replica>,
        shutdown: Option<Shutdown>,
        /// Pids that do not catch the promote signal.
        deaf: Vec<u32>,
    }

    impl Case {
        fn new(services: Vec<Service>, replicas: Vec<Replica>) -> Case {
            Case {
                services,
                desired: Desired::default(),
                replicas: replicas.into_iter().map(|r| (r.id.clone(), r)).collect(),
                shutdown: None,
                deaf: Vec::new(),
            }
        }

        fn plan(&self, now: Instant) -> Plan {
            let catches = |pid: u32, _: Signal| !self.deaf.contains(&pid);
            let view = View {
                services: &self.services,
                desired: &self.desired,
                replicas: &self.replicas,
                shutdown: self.shutdown.as_ref(),
                catches: &catches,
            };
            plan(&view, now)
        }

        fn case_plan(&self, now: Instant) -> Vec<Action> {
            self.plan(now).actions
        }
    }

    fn spawn(name: &str, position: usize, role: Option<Role>) -> Action {
        Action::Spawn {
            id: id(name),
            position,
            role,
        }
    }

    #[test]
    fn a_dependency_releases_its_dependants_by_its_condition() {
        let t = Instant::now();
        let healthy = |phase| {
            let mut r = replica("db.0", phase);
            if let Some(run) = r.run_mut() {
                run.health = Verdict::Healthy;
            }
            r
        };
        let table: Vec<(Condition, Replica, bool)> = vec![
            (Condition::Started, replica("db.0", Phase::Pending), false),
            (Condition::Started, replica("db.0", starting(t)), false),
            (Condition::Started, replica("db.0", running(10, t)), true),
            (Condition::Healthy, replica("db.0", running(10, t)), false),
            (Condition::Healthy, healthy(running(10, t)), true),
            (Condition::Completed, healthy(running(10, t)), false),
            (Condition::Completed, replica("db.0", Phase::Exited), true),
            (Condition::Started, replica("db.0", Phase::Stopped), false),
        ];
        for (condition, db, released) in table {
            let phase = db.phase.name();
            let case = Case::new(
                vec![
                    service("db", 1),
                    depends(service("web", 1), "db", condition),
                ],
                vec![db, replica("web.0", Phase::Pending)],
            );
            let plan = case.plan(t);
            let spawned = plan.actions.contains(&spawn("web.0", 1, None));
            assert_eq!(spawned, released, "{condition:?} with db {phase}: {plan:?}");
        }
    }

    #[test]
    fn a_failed_dependency_fails_its_dependants_down_the_chain_in_one_plan() {
        let case = Case::new(
            vec![
                service("db", 1),
                depends(service("api", 1), "db", Condition::Started),
                depends(service("web", 1), "api", Condition::Healthy),
            ],
            vec![
                replica("db.0", Phase::Failed),
                replica("api.0", Phase::Pending),
                replica("web.0", Phase::Pending),
            ],
        );
        let plan = case.plan(Instant::now());
        assert_eq!(
            plan.actions,
            [
                Action::Fail {
                    id: id("api.0"),
                    reason: "dependency db.0 failed".into()
                },
                Action::Fail {
                    id: id("web.0"),
                    reason: "dependency api.0 failed".into()
                },
            ]
        );
    }

    #[test]
    fn scaling_spawns_the_missing_and_retires_the_surplus_highest_first() {
        let t = Instant::now();
        let mut case = Case::new(
            vec![service("api", 2)],
            vec![
                replica("api.0", running(10, t)),
                replica("api.1", Phase::Pending),
                replica("api.2", running(12, t)),
                replica("api.3", Phase::Backoff { until: t }),
                replica("gone.0", running(14, t)),
            ],
        );
        let remove = |name: &str| Action::Stop {
            id: id(name),
            then: AfterStop::Remove,
        };
        assert_eq!(
            case.case_plan(t),
            [
                remove("gone.0"),
                remove("api.3"),
                remove("api.2"),
                spawn("api.1", 0, None)
            ]
        );
        // One already on its way out is not asked again.
        case.replicas.get_mut(&id("api.2")).unwrap().phase = Phase::Stopping {
            shim: Pid::from_raw(1),
            pid: None,
            then: AfterStop::Remove,
            run: Incarnation::default(),
        };
        assert!(!case.case_plan(t).contains(&remove("api.2")));
    }

    #[test]
    fn a_stop_mark_stops_the_replica_once_and_keeps_it_down() {
        let t = Instant::now();
        let marked = |phase| {
            let mut r = replica("api.0", phase);
            r.stop_requested = true;
            r
        };
        let stop = vec![Action::Stop {
            id: id("api.0"),
            then: AfterStop::Stay,
        }];
        let table: Vec<(Phase, Vec<Action>)> = vec![
            (running(10, t), stop.clone()),
            (Phase::Pending, stop.clone()),
            (Phase::Backoff { until: t }, stop),
            (
                Phase::Stopping {
                    shim: Pid::from_raw(1),
                    pid: Some(10),
                    then: AfterStop::Stay,
                    run: Incarnation::default(),
                },
                vec![],
            ),
        ];
        for (phase, actions) in table {
            let name = phase.name();
            let case = Case::new(vec![service("api", 1)], vec![marked(phase)]);
            assert_eq!(case.case_plan(t), actions, "{name}");
        }
    }

    #[test]
    fn a_backoff_restarts_when_it_ends_and_wakes_the_loop_until_then() {
        let t = Instant::now();
        let later = t + Duration::from_secs(3);
        let case = Case::new(
            vec![service("api", 2)],
            vec![
                replica("api.0", Phase::Backoff { until: t }),
                replica("api.1", Phase::Backoff { until: later }),
            ],
        );
        let plan = case.plan(t);
        assert_eq!(
            plan.actions,
            [Action::Restart {
                id: id("api.0"),
                position: 0,
                role: None
            }]
        );
        assert_eq!(plan.wake, Some(later));
        assert_eq!(case.plan(later).actions.len(), 2, "both are due by then");
    }

    #[test]
    fn failover_spawns_one_active_and_standbys_for_the_rest() {
        let t = Instant::now();
        let api = failover(service("api", 3), None);
        let fresh = Case::new(
            vec![api.clone()],
            vec![
                replica("api.0", Phase::Pending),
                replica("api.1", Phase::Pending),
                replica("api.2", Phase::Backoff { until: t }),
            ],
        );
        assert_eq!(
            fresh.case_plan(t),
            [
                spawn("api.0", 0, Some(Role::Active)),
                spawn("api.1", 0, Some(Role::Standby)),
                Action::Restart {
                    id: id("api.2"),
                    position: 0,
                    role: Some(Role::Standby)
                },
            ]
        );
        // A replacement beside a live replica is a standby, whatever roles
        // are held: the live one is promoted if need be, never a second.
        let beside = Case::new(
            vec![api],
            vec![
                replica("api.0", Phase::Pending),
                replica("api.1", starting(t)),
            ],
        );
        assert_eq!(
            beside.case_plan(t),
            [spawn("api.0", 0, Some(Role::Standby))]
        );
    }

    fn standby(name: &str, pid: u32, promotable_from: Instant) -> Replica {
        let mut r = replica(name, running(pid, promotable_from));
        let run = r.run_mut().unwrap();
        run.health = Verdict::Healthy;
        run.role = Some(Role::Standby);
        run.promotable_from = Some(promotable_from);
        r
    }

    #[test]
    fn failover_promotes_the_first_fit_standby_and_never_two_actives() {
        let t = Instant::now();
        let soon = t + Duration::from_millis(700);
        let signal = Some(Promote::Signal(Signal::SIGUSR1));
        let mut unhealthy = standby("api.0", 10, t);
        unhealthy.run_mut().unwrap().health = Verdict::Unhealthy;
        let mut case = Case::new(
            vec![failover(service("api", 4), signal)],
            vec![
                unhealthy,
                standby("api.1", 11, soon),
                standby("api.2", 12, t),
                standby("api.3", 13, t),
            ],
        );
        // Not healthy, not settled, deaf to the signal: the fourth it is.
        case.deaf.push(12);
        let plan = case.plan(t);
        assert_eq!(
            plan.actions,
            [
                Action::PassOver {
                    id: id("api.2"),
                    signal: Signal::SIGUSR1
                },
                Action::Promote(id("api.3")),
            ]
        );
        assert_eq!(plan.wake, None, "nothing to wait for once one is active");
        // Without a fit one: looked at again when one may be.
        case.deaf.push(13);
        assert_eq!(case.plan(t).wake, Some(t + RECHECK));
        case.deaf.clear();
        assert_eq!(case.case_plan(t)[0], Action::Promote(id("api.2")));
        // An active holds the role; a second one loses it.
        for name in ["api.2", "api.3"] {
            case.replicas
                .get_mut(&id(name))
                .unwrap()
                .run_mut()
                .unwrap()
                .role = Some(Role::Active);
        }
        assert_eq!(case.plan(t).actions, [Action::Demote(id("api.3"))]);
    }

    #[test]
    fn a_retired_active_is_replaced_in_the_same_plan() {
        let t = Instant::now();
        let mut active = standby("api.1", 11, t);
        active.run_mut().unwrap().role = Some(Role::Active);
        let mut case = Case::new(
            vec![failover(service("api", 2), None)],
            vec![standby("api.0", 10, t), active],
        );
        case.desired.scaled.insert(
            "api".into(),
            crate::supervisor::desired::Scaled {
                replicas: 1,
                spec_replicas: 2,
            },
        );
        assert_eq!(
            case.case_plan(t),
            [
                Action::Stop {
                    id: id("api.1"),
                    then: AfterStop::Remove
                },
                Action::Promote(id("api.0")),
            ]
        );
    }

    #[test]
    fn an_overdue_watchdog_is_judged_and_a_pending_one_wakes_the_loop() {
        let t = Instant::now();
        let mut late = replica("d.0", running(10, t));
        late.run_mut().unwrap().watchdog_until = Some(t);
        let mut fine = replica("d.1", running(11, t));
        fine.run_mut().unwrap().watchdog_until = Some(t + Duration::from_secs(5));
        let plan = Case::new(vec![service("d", 2)], vec![late, fine]).plan(t);
        assert_eq!(plan.actions, [Action::Overdue(id("d.0"))]);
        assert_eq!(plan.wake, Some(t + Duration::from_secs(5)));
    }

    #[test]
    fn shutdown_stops_dependants_first_then_kills_at_the_deadline() {
        let t = Instant::now();
        let deadline = t + Duration::from_secs(10);
        let mut case = Case::new(
            vec![
                service("db", 1),
                depends(service("web", 1), "db", Condition::Started),
                service("batch", 1),
            ],
            vec![
                replica("db.0", running(10, t)),
                replica("web.0", running(11, t)),
                replica("batch.0", Phase::Backoff { until: t }),
            ],
        );
        case.shutdown = Some(Shutdown {
            deadline,
            forced: false,
            exit_code: 0,
        });
        let stay = |name: &str| Action::Stop {
            id: id(name),
            then: AfterStop::Stay,
        };
        let plan = case.plan(t);
        assert_eq!(
            plan.actions,
            [Action::Settle(id("batch.0")), stay("web.0")],
            "db waits for web"
        );
        assert_eq!(plan.wake, Some(deadline));
        for name in ["web.0", "batch.0"] {
            case.replicas.get_mut(&id(name)).unwrap().phase = Phase::Stopped;
        }
        assert_eq!(case.case_plan(t), [stay("db.0")]);
        assert_eq!(case.case_plan(deadline), [stay("db.0"), Action::Kill]);
        case.shutdown.as_mut().unwrap().forced = true;
        assert_eq!(
            case.plan(deadline).wake,
            None,
            "forced: nothing to wait for"
        );
    }

    #[test]
    fn exit_with_waits_for_every_replica_and_takes_the_first_failure() {
        let policy = RestartPolicy::default();
        let settled = |phase, last_exit| {
            let mut r = replica("job.0", phase);
            r.last_exit = last_exit;
            r
        };
        let table: Vec<(Vec<Replica>, Option<i32>)> = vec![
            (vec![settled(Phase::Exited, ended(0))], Some(0)),
            (
                vec![
                    settled(Phase::Exited, ended(0)),
                    settled(Phase::Failed, ended(3)),
                    settled(Phase::Failed, ended(4)),
                ],
                Some(3),
            ),
            (vec![settled(Phase::Failed, None)], Some(exit::FAILED)),
            (
                vec![
                    settled(Phase::Exited, ended(0)),
                    settled(
                        Phase::Backoff {
                            until: Instant::now(),
                        },
                        ended(1),
                    ),
                ],
                None,
            ),
        ];
        for (replicas, code) in table {
            let replicas: Vec<&Replica> = replicas.iter().collect();
            assert_eq!(exit_with_code(&replicas, &policy), code, "{replicas:?}");
        }
    }
}
