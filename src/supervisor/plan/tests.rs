//! The planner's rules, one table each: no process, no clock (instants
//! are offsets from one `Instant::now()`).

use nix::unistd::Pid;

use super::*;
use crate::spec::{Dependency, Failover, Scope};
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
    s.failover = Some(Failover {
        promote,
        scope: Scope::Local,
        demote: None,
    });
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
            standing: &|_| crate::supervisor::cluster::Standing::Local,
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
