//! Cluster-scope failover (docs/cluster.md §10) against a real etcd:
//! supervisors with their own state dirs and node names stand for
//! machines; the replicas write to a shared log while they believe they
//! are active, and `check_active_log` judges it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const LEASE: Duration = Duration::from_secs(3);

/// Longest acceptable time without an active: TTL + 1 s.
fn max_gap() -> f64 {
    LEASE.as_secs_f64() + 1.0
}

/// etcd and `count` machines, once one of them writes as active.
fn cluster(members: usize, count: usize) -> (Etcd, Machines, (f64, String, u64)) {
    let etcd = Etcd::start(members);
    let machines = Machines::start(&etcd, count, 1, LEASE);
    let first = machines
        .active_after(0.0, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no active within 30s\n{}", machines.node(0).transcript()));
    (etcd, machines, first)
}

fn index_of(machines: &Machines, node: &str) -> usize {
    machines.names.iter().position(|n| n == node).unwrap()
}

#[test]
fn kill9_of_the_active_nodes_supervisor_fences_its_active_before_another_takes_over() {
    let (_etcd, mut machines, (_, leader, token)) = cluster(1, 3);
    let i = index_of(&machines, &leader);
    let killed_at = monotonic();
    machines.nodes[i].as_mut().unwrap().kill9();
    // Its shim lives on and demotes the replica at the deadline, alone.
    let next = machines
        .active_after(killed_at, Duration::from_secs(15))
        .expect("another node's standby becomes active");
    // The first write after the kill may still be the old active's, until
    // its deadline: wait for the new leader.
    let ok = wait_until(Duration::from_secs(15), || {
        machines.last_write().is_some_and(|(_, n, _)| n != leader)
    });
    assert!(ok, "no other node took over: last {next:?}");
    let (t, new_leader, new_token) = machines.last_write().unwrap();
    assert!(new_token > token, "token {new_token} after {token}");
    let verdict = check_active_log(&machines.log(), max_gap(), &[]).expect("the checker");
    let old = verdict
        .terms
        .iter()
        .find(|term| term.token == token)
        .unwrap();
    let taken = verdict
        .terms
        .iter()
        .find(|term| term.token == new_token)
        .unwrap();
    eprintln!(
        "kill -9 of {leader}: last write of the old active {:.3}s after the kill, {new_leader} active {:.3}s after it; {} terms, longest gap {:.3}s",
        old.to - killed_at,
        taken.from - killed_at,
        verdict.terms.len(),
        verdict.longest_gap
    );
    assert!(
        old.to - killed_at < LEASE.as_secs_f64(),
        "fenced before the lease ends"
    );
    assert!(t - killed_at < max_gap() + 1.0);
    // A new supervisor there adopts the old active, and demotes it: it does
    // not hold the key, whatever the checkpoint says.
    machines.restart(i);
    let fenced = machines.node(i).expect("fenced", "db.0");
    assert!(
        fenced.detail.contains("does not hold the election key"),
        "{fenced:?}"
    );
    let status = machines.node(i).status();
    assert_eq!(
        status["services"][0]["replicas"][0]["role"], "standby",
        "{status:#}"
    );
    check_active_log(&machines.log(), max_gap(), &[]).expect("the checker after the restart");
}

#[test]
fn a_supervisor_frozen_past_its_lease_is_fenced_and_not_active_again_without_an_election() {
    let (_etcd, machines, (_, leader, token)) = cluster(1, 2);
    let i = index_of(&machines, &leader);
    let frozen_at = monotonic();
    machines.node(i).signal(Signal::SIGSTOP);
    let other = wait_until(Duration::from_secs(15), || {
        machines.last_write().is_some_and(|(_, n, _)| n != leader)
    });
    // Frozen for twice the lease in all.
    let thaw = Instant::now() + 2 * LEASE;
    while Instant::now() < thaw && other {
        std::thread::sleep(Duration::from_millis(50));
    }
    machines.node(i).signal(Signal::SIGCONT);
    assert!(other, "no other node took over while {leader} was frozen");
    let thawed_at = monotonic();
    // It finds itself fenced and campaigns again, as a follower.
    machines.node(i).expect("fenced", "db");
    let settled = Instant::now() + LEASE;
    while Instant::now() < settled {
        std::thread::sleep(Duration::from_millis(50));
    }
    let verdict = check_active_log(&machines.log(), max_gap(), &[]).expect("the checker");
    let old = verdict.terms.iter().find(|t| t.token == token).unwrap();
    eprintln!(
        "SIGSTOP of {leader}: its active's last write {:.3}s after the freeze; terms {:?}",
        old.to - frozen_at,
        verdict
            .terms
            .iter()
            .map(|t| (&t.node, t.token))
            .collect::<Vec<_>>()
    );
    assert!(old.to - frozen_at < LEASE.as_secs_f64());
    assert!(
        !verdict
            .terms
            .iter()
            .any(|t| t.node == leader && t.token == token && t.to > thawed_at),
        "the thawed node wrote again under its old token"
    );
    assert_eq!(machines.actives().len(), 1, "{:?}", machines.actives());
}

#[test]
fn stop_of_the_active_and_down_of_its_node_hand_over_in_under_a_second() {
    let (_etcd, mut machines, (_, leader, _)) = cluster(1, 3);
    let i = index_of(&machines, &leader);
    let asked = monotonic();
    machines.run(i, &["stop", "db.0"]).expect(0);
    let (t, next, _) = machines
        .active_after(asked, Duration::from_secs(10))
        .filter(|(_, n, _)| *n != leader)
        .or_else(|| {
            wait_until(Duration::from_secs(10), || {
                machines.last_write().is_some_and(|(_, n, _)| n != leader)
            });
            machines.last_write()
        })
        .unwrap();
    let stop_handover = t - asked;
    let j = index_of(&machines, &next);
    let asked = monotonic();
    machines.run(j, &["down"]).expect(0);
    let ok = wait_until(Duration::from_secs(10), || {
        machines
            .last_write()
            .is_some_and(|(t, n, _)| n != next && t > asked)
    });
    assert!(ok, "no node took over after down of {next}");
    let (t, third, _) = machines.last_write().unwrap();
    let down_handover = t - asked;
    eprintln!(
        "stop of {leader}'s active: {next} writes {stop_handover:.3}s later; down of {next}: {third} writes {down_handover:.3}s later"
    );
    assert!(stop_handover < 1.0, "{stop_handover}");
    assert!(down_handover < 1.0, "{down_handover}");
    check_active_log(&machines.log(), max_gap(), &[]).expect("the checker");
    machines.nodes[j] = None;
}

#[test]
fn without_etcd_no_node_is_active_after_the_deadline_and_election_resumes_when_it_returns() {
    let (mut etcd, machines, (_, leader, token)) = cluster(1, 2);
    let down_at = monotonic();
    etcd.kill(0);
    // Twice the lease without etcd.
    let back = Instant::now() + 2 * LEASE;
    while Instant::now() < back {
        std::thread::sleep(Duration::from_millis(50));
    }
    let before_return = machines.last_write().unwrap();
    assert!(
        before_return.0 - down_at < LEASE.as_secs_f64(),
        "{leader} (token {token}) still writes {:.3}s after etcd went",
        before_return.0 - down_at
    );
    machines
        .node(0)
        .expect_said("cluster: no quorum", Duration::from_secs(5));
    assert!(machines.actives().is_empty(), "{:?}", machines.actives());
    let status = machines.run(0, &["status"]);
    assert!(
        status.stdout.contains("cluster: no quorum since "),
        "{status:#?}"
    );
    etcd.restart(0);
    let back_at = monotonic();
    let again = machines
        .active_after(back_at, Duration::from_secs(20))
        .expect("an active once etcd is back");
    eprintln!(
        "etcd down: last write {:.3}s after it went; active again {:.3}s after it returned ({} token {})",
        before_return.0 - down_at,
        again.0 - back_at,
        again.1,
        again.2
    );
    assert!(again.2 > token);
    let excused = [(down_at, back_at + max_gap())];
    check_active_log(&machines.log(), max_gap(), &excused).expect("the checker");
}

#[test]
fn check_warns_of_an_unreachable_etcd_but_accepts_the_spec() {
    let p = Project::new(&format!(
        "[supervisor.cluster]\netcd = [\"http://127.0.0.1:{}\"]\nnode = \"a\"\n\
         [services.db]\ncommand = \"sleep 1\"\nreplicas = 2\n\
         [services.db.failover]\nmode = \"active-standby\"\nscope = \"cluster\"\n",
        free_port()
    ));
    let ran = p.run(&["check"]);
    ran.expect(0);
    assert!(
        ran.stderr
            .contains("warning: etcd endpoint http://127.0.0.1:")
            && ran.stderr.contains("does not answer"),
        "{ran:#?}"
    );
    assert!(
        ran.stdout
            .contains("one active across the cluster (node a of /supervise"),
        "{ran:#?}"
    );
}

#[test]
fn status_events_and_metrics_say_who_leads_with_which_token() {
    let (_etcd, machines, (_, leader, token)) = cluster(1, 2);
    let i = index_of(&machines, &leader);
    let other = 1 - i;
    let elected = machines.node(i).expect("elected", "db");
    assert!(
        elected
            .detail
            .contains(&format!("elected on {leader} (token {token})")),
        "{elected:?}"
    );
    let promoted = machines.node(i).expect("promoted", "db.0");
    assert!(
        promoted.detail.contains(&format!("(token {token})")),
        "{promoted:?}"
    );
    let status = machines.node(i).status();
    let c = &status["services"][0]["cluster"];
    assert_eq!(
        (
            c["role"].as_str(),
            c["leader"].as_str(),
            c["token"].as_u64()
        ),
        (Some("leader"), Some(leader.as_str()), Some(token)),
        "{status:#}"
    );
    assert_eq!(status["cluster"]["node"], leader.as_str());
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(c),
        ["leader", "no_quorum_since", "node", "role", "token"],
        "docs/commands.md §8.1"
    );
    assert_eq!(
        keys(&status["cluster"]),
        [
            "last_renewal_seconds",
            "lease",
            "lease_renewal_failures",
            "lease_renewals",
            "no_quorum_since",
            "node"
        ]
    );
    // The follower learns the leader from its lost campaign.
    let ok = wait_until(SOON, || {
        let s = machines.node(other).status();
        s["services"][0]["cluster"]["leader"] == leader.as_str()
    });
    assert!(ok, "{:#}", machines.node(other).status());
    let table = machines.run(other, &["status"]);
    table.expect(0);
    assert!(
        table.stdout.contains(&format!(
            "db: cluster leader {leader}, token {token}; this node ({}) is a follower",
            machines.names[other]
        )),
        "{}",
        table.stdout
    );
    let renewed = wait_until(SOON, || {
        machines.node(i).status()["cluster"]["lease_renewals"].as_u64() > Some(1)
    });
    assert!(renewed);
    let scrape = http(&machines.metrics[i], "GET", "/metrics", "").expect("a scrape");
    for series in [
        "supervise_cluster_leader{service=\"db\"} 1".to_string(),
        format!("supervise_cluster_token{{service=\"db\"}} {token}"),
        "supervise_cluster_elections_total{service=\"db\"} 1".to_string(),
        "supervise_cluster_quorum 1".to_string(),
    ] {
        assert!(scrape.contains(&series), "no {series} in\n{scrape}");
    }
    assert!(
        scrape.contains("supervise_cluster_lease_renewals_total "),
        "{scrape}"
    );
    assert!(
        scrape.contains("supervise_cluster_lease_renewal_seconds "),
        "{scrape}"
    );
    // A stop resigns; the other node is elected with a greater token.
    machines.run(i, &["stop", "db.0"]).expect(0);
    let resigned = machines.node(i).expect("resigned", "db");
    assert!(
        resigned.detail.contains(&format!("token {token}")),
        "{resigned:?}"
    );
    let next = machines.node(other).expect("elected", "db");
    eprintln!("{} / {} / {}", elected.detail, resigned.detail, next.detail);
}

/// What the chaos run does to the cluster, one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Chaos {
    /// `kill -9` of the active node's supervisor (its shims live on),
    /// then a new supervisor there, which adopts them.
    KillSupervisor,
    /// SIGSTOP of the active node's supervisor for 2x the lease.
    FreezeSupervisor,
    /// `supervise stop db.0` on the active node, then `start`.
    StopActive,
    /// `down` of the active node, then `up` again.
    DownNode,
    /// `kill -9` of the active replica itself.
    KillActiveReplica,
    /// SIGSTOP of one etcd member for half a lease (quorum holds).
    FreezeEtcdMember,
    /// `kill -9` of the etcd leader, started again after half a lease.
    KillEtcdLeader,
    /// Every etcd member gone for 2x the lease (no quorum).
    EtcdDown,
}

impl Chaos {
    /// Does the event take the role from the active (so a new term must follow)?
    fn fails_over(self) -> bool {
        !matches!(
            self,
            Chaos::FreezeEtcdMember | Chaos::KillEtcdLeader | Chaos::EtcdDown
        )
    }
}

/// A deck with each event kind as often as its weight: the quick ones
/// more often, so that 30 events stay within a minute and a half.
const DECK: &[(Chaos, usize)] = &[
    (Chaos::KillSupervisor, 2),
    (Chaos::FreezeSupervisor, 1),
    (Chaos::StopActive, 3),
    (Chaos::DownNode, 2),
    (Chaos::KillActiveReplica, 3),
    (Chaos::FreezeEtcdMember, 2),
    (Chaos::KillEtcdLeader, 2),
    (Chaos::EtcdDown, 1),
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The first write of the term after `token`, waiting for it.
fn next_term(machines: &Machines, token: u64, timeout: Duration) -> Option<(f64, String, u64)> {
    let ok = wait_until(timeout, || {
        machines.last_write().is_some_and(|(_, _, t)| t > token)
    });
    if !ok {
        return None;
    }
    let text = std::fs::read_to_string(machines.log()).ok()?;
    text.lines()
        .filter_map(|l| {
            let mut p = l.split_whitespace();
            Some((
                p.next()?.parse::<f64>().ok()?,
                p.next()?.to_string(),
                p.next()?.parse::<u64>().ok()?,
            ))
        })
        .filter(|(_, _, t)| *t > token)
        .min_by(|a, b| a.0.total_cmp(&b.0))
}

/// The current active, once one writes (its last write is fresh).
#[track_caller]
fn current(machines: &Machines) -> (f64, String, u64) {
    let mut found = None;
    let ok = wait_until(Duration::from_secs(30), || {
        found = machines
            .last_write()
            .filter(|(t, _, _)| monotonic() - t < 0.1);
        found.is_some()
    });
    assert!(ok, "no active writes: last {:?}", machines.last_write());
    found.unwrap()
}

fn pause(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `events` chaos events in a seeded random order against a
/// three-member etcd and three supervisors; the checker and the sampler
/// judge the whole run. Prints the seed, the counts and the failover times.
fn chaos(seed: u64, events: usize) {
    eprintln!("cluster chaos: seed {seed}, {events} events (CLUSTER_CHAOS_SEED={seed} to repeat)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut etcd = Etcd::start(3);
    let mut machines = Machines::start(&etcd, 3, 1, LEASE);
    let sampler = Sampler::start(&machines);
    let mut excused = Vec::new();
    let mut times: std::collections::BTreeMap<Chaos, Vec<f64>> = Default::default();
    let mut deck = Vec::new();
    let mut moved = 0;
    for n in 0..events {
        if deck.is_empty() {
            deck = DECK
                .iter()
                .flat_map(|&(kind, weight)| std::iter::repeat_n(kind, weight))
                .collect();
            rng.shuffle(&mut deck);
        }
        let kind = deck.pop().unwrap();
        let (_, leader, token) = current(&machines);
        let i = index_of(&machines, &leader);
        let at = monotonic();
        eprintln!("event {n} at {at:.3}: {kind:?} (active: {leader}, token {token})");
        match kind {
            Chaos::KillSupervisor => {
                sampler.set(i, None);
                machines.nodes[i].as_mut().unwrap().kill9();
            }
            Chaos::FreezeSupervisor => {
                sampler.set(i, None);
                machines.node(i).signal(Signal::SIGSTOP);
            }
            Chaos::StopActive => {
                machines.run(i, &["stop", "db.0"]).expect(0);
            }
            Chaos::DownNode => {
                sampler.set(i, None);
                machines.run(i, &["down"]).expect(0);
            }
            Chaos::KillActiveReplica => {
                let pid = machines.node(i).replica("db", 0)["pid"].as_i64().unwrap();
                kill9(pid as i32);
            }
            Chaos::FreezeEtcdMember => {
                let m = rng.usize(0..3);
                etcd.freeze(m, true);
                pause(LEASE / 2);
                etcd.freeze(m, false);
            }
            Chaos::KillEtcdLeader => {
                let m = etcd.leader().unwrap_or(0);
                etcd.kill(m);
                pause(LEASE / 2);
                etcd.restart(m);
            }
            Chaos::EtcdDown => {
                for m in 0..3 {
                    etcd.kill(m);
                }
                pause(2 * LEASE);
                let quiet = machines.last_write().unwrap();
                assert!(
                    quiet.0 - at < LEASE.as_secs_f64(),
                    "seed {seed}: an active wrote {:.3}s after etcd went",
                    quiet.0 - at
                );
                etcd.restart_all();
                excused.push((at, monotonic() + max_gap()));
            }
        }
        if kind.fails_over() {
            let (t, node, new) = next_term(&machines, token, Duration::from_secs(20))
                .unwrap_or_else(|| panic!("seed {seed}: no new active after {kind:?}"));
            eprintln!("  {node} active with token {new} after {:.3}s", t - at);
            times.entry(kind).or_default().push(t - at);
        } else if kind != Chaos::EtcdDown && current(&machines).2 != token {
            // Quorum held: the active should have stayed (asserted by
            // a_three_member_etcd_keeps_the_active_…; counted here).
            eprintln!("  the active changed although etcd kept its quorum");
            moved += 1;
        }
        match kind {
            Chaos::KillSupervisor | Chaos::DownNode => {
                machines.nodes[i].as_mut().unwrap().wait_exit(SOON);
                machines.restart(i);
                sampler.set(i, Some(machines.node(i).state_dir()));
            }
            Chaos::FreezeSupervisor => {
                pause((2 * LEASE).saturating_sub(Duration::from_secs_f64(monotonic() - at)));
                machines.node(i).signal(Signal::SIGCONT);
                sampler.set(i, Some(machines.node(i).state_dir()));
            }
            Chaos::StopActive => {
                machines.run(i, &["start", "db.0"]).expect(0);
            }
            _ => {}
        }
    }
    let (sweeps, violations) = sampler.finish();
    let verdict = check_active_log(&machines.log(), max_gap(), &excused)
        .unwrap_or_else(|e| panic!("seed {seed}: checker: {e}"));
    let mut all: Vec<f64> = times.values().flatten().copied().collect();
    all.sort_by(f64::total_cmp);
    for (kind, t) in &mut times {
        t.sort_by(f64::total_cmp);
        eprintln!(
            "  {kind:?}: {} failovers, p50 {:.3}s, max {:.3}s",
            t.len(),
            percentile(t, 0.5),
            t[t.len() - 1]
        );
    }
    eprintln!(
        "cluster chaos: seed {seed}: {events} events, {} terms, {} log lines, longest gap outside no-quorum {:.3}s; {moved} actives moved with quorum held; failover p50 {:.3}s p99 {:.3}s over {}; sampler: {sweeps} sweeps, {} violations; checker OK",
        verdict.terms.len(),
        verdict.lines,
        verdict.longest_gap,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.len(),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "seed {seed}: sampler: {violations:#?}"
    );
}

/// CI's run: 30 events, a fresh seed each time (printed);
/// `scripts/cluster-chaos N` runs more.
#[test]
fn chaos_a_seeded_random_run_never_has_two_actives_or_a_long_gap() {
    let seed = std::env::var("CLUSTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let events = std::env::var("CLUSTER_CHAOS_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    chaos(seed, events);
}

/// Above the time a loaded etcd takes to elect a leader (a 3 s lease leaves
/// 2 s, which an election on a busy 2-core machine can take: the active is
/// then fenced, safely, and elected again).
const ROOMY_LEASE: Duration = Duration::from_secs(6);

#[test]
fn a_three_member_etcd_keeps_the_active_through_a_frozen_member_and_a_killed_leader() {
    let mut etcd = Etcd::start(3);
    let machines = Machines::start(&etcd, 3, 1, ROOMY_LEASE);
    let (_, leader, token) = machines
        .active_after(0.0, Duration::from_secs(30))
        .expect("an active");
    let start = monotonic();
    for round in 0..2 {
        let m = (round + 1) % 3;
        etcd.freeze(m, true);
        pause(LEASE);
        etcd.freeze(m, false);
        let l = etcd.leader().expect("an etcd leader");
        etcd.kill(l);
        pause(LEASE);
        etcd.restart(l);
        eprintln!("round {round}: froze member {m}, killed the etcd leader {l}");
    }
    let (_, node, now) = current(&machines);
    let verdict = check_active_log(&machines.log(), ROOMY_LEASE.as_secs_f64() + 1.0, &[])
        .expect("the checker");
    let after: Vec<&Term> = verdict.terms.iter().filter(|t| t.to > start).collect();
    assert_eq!(
        (node.as_str(), now, after.len()),
        (leader.as_str(), token, 1),
        "the active changed while etcd kept its quorum: {:?}",
        verdict.terms
    );
    assert_eq!(machines.actives(), [index_of(&machines, &leader)]);
}

/// Like `cluster`, with the spec's own way to demote.
fn cluster_demoted_by(demote: &str) -> (Etcd, Machines, (f64, String, u64)) {
    let etcd = Etcd::start(1);
    let machines = Machines::demoted_by(&etcd, 2, 1, LEASE, demote);
    let first = machines
        .active_after(0.0, Duration::from_secs(30))
        .expect("an active");
    (etcd, machines, first)
}

#[test]
fn without_a_demote_hook_the_shim_stops_the_active_at_its_deadline() {
    let (_etcd, mut machines, (_, leader, _)) = cluster_demoted_by("");
    let i = index_of(&machines, &leader);
    let pid = machines.node(i).replica("db", 0)["pid"].as_i64().unwrap() as i32;
    let killed_at = Instant::now();
    machines.nodes[i].as_mut().unwrap().kill9();
    let gone = wait_until(2 * LEASE, || !is_alive(pid));
    let after = killed_at.elapsed();
    assert!(
        gone,
        "the active {pid} still runs {after:?} after its supervisor died"
    );
    eprintln!("the orphaned active was stopped by its shim {after:?} after the kill");
    assert!(after < LEASE, "{after:?}");
    let other = wait_until(Duration::from_secs(10), || {
        machines.last_write().is_some_and(|(_, n, _)| n != leader)
    });
    assert!(other);
    check_active_log(&machines.log(), max_gap(), &[]).expect("the checker");
}

#[test]
fn a_demote_hook_runs_with_the_pid_and_token_when_the_deadline_passes() {
    let hook = r#"demote = ["sh", "-c", "echo {token} > demoted.{pid} && kill -USR2 {pid}"]"#;
    let (_etcd, mut machines, (_, leader, token)) = cluster_demoted_by(hook);
    let i = index_of(&machines, &leader);
    let pid = machines.node(i).replica("db", 0)["pid"].as_i64().unwrap();
    let dir = machines.node(i).dir().to_path_buf();
    machines.nodes[i].as_mut().unwrap().kill9();
    let file = dir.join(format!("demoted.{pid}"));
    let ran = wait_until(2 * LEASE, || file.exists());
    assert!(ran, "no {}", file.display());
    let written = wait_until(SOON, || {
        std::fs::read_to_string(&file).is_ok_and(|t| t.trim() == token.to_string())
    });
    assert!(written, "{:?}", std::fs::read_to_string(&file));
    assert!(
        is_alive(pid as i32),
        "a demote hook demotes; it does not stop"
    );
    check_active_log(&machines.log(), max_gap(), &[]).expect("the checker");
}

#[test]
fn a_planned_stop_of_the_active_takes_its_stop_timeout_not_the_fencing_kill() {
    let (_etcd, machines, (_, leader, _)) = cluster_demoted_by("");
    let i = index_of(&machines, &leader);
    std::fs::write(machines.node(i).dir().join("linger"), "1.0").unwrap();
    let pid = machines.node(i).replica("db", 0)["pid"].as_i64().unwrap() as i32;
    let asked = Instant::now();
    machines.run(i, &["stop", "db.0"]).expect(0);
    let took = asked.elapsed();
    assert!(!is_alive(pid));
    let status = machines.node(i).status();
    let exit = &status["services"][0]["replicas"][0]["last_exit"];
    eprintln!("stop took {took:?}; last exit {exit}");
    // The fencing stop kills after half a second; a planned one waits
    // for the replica (stop_timeout is 2s), which exits after 1s.
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert_eq!(exit["code"], 0, "{status:#}");
}

#[test]
fn a_reload_that_brings_the_first_cluster_scope_service_joins_the_election() {
    let etcd = Etcd::start(1);
    let spec = |scope: &str| {
        format!(
            "[supervisor.cluster]\netcd = [\"{}\"]\nnode = \"solo\"\nprefix = \"/reload-{:x}\"\n\
             lease = \"3s\"\n[services.db]\ncommand = \"sleep 600\"\nreplicas = 2\n\
             [services.db.failover]\nmode = \"active-standby\"\nscope = \"{scope}\"\n",
            etcd.endpoints()[0],
            std::process::id()
        )
    };
    let sup = Supervise::start(&spec("local"));
    let active = |sup: &Supervise| {
        socket_status(&sup.state_dir()).is_some_and(|s| {
            s["services"][0]["replicas"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|r| r["role"] == "active"))
        })
    };
    assert!(wait_until(SOON, || active(&sup)), "a local active first");
    assert!(sup.status().get("cluster").is_none(), "no etcd client yet");
    std::fs::write(sup.spec_path(), spec("cluster")).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_supervise"));
    cmd.arg("--state-dir").arg(sup.state_dir()).arg("reload");
    run_bounded(cmd, COMMAND_TIMEOUT).expect(0);
    // Changed definition: the replicas restart as standbys, and only an
    // election makes one active again.
    let elected = sup.expect("elected", "db");
    assert!(elected.detail.contains("elected on solo"), "{elected:?}");
    let promoted = sup.expect_after(&elected, "promoted", "db");
    assert!(promoted.detail.contains("(token "), "{promoted:?}");
}

#[test]
fn a_key_found_under_its_own_lease_is_never_taken_up_again_with_its_old_token() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let (etcd, machines, (_, _, token)) = cluster(1, 1);
    machines.run(0, &["stop", "db.0"]).expect(0);
    let resigned = machines.node(0).expect("resigned", "db");
    // What a campaign whose answer was lost, run late by a stalled member,
    // or a resignation not through yet, leaves: the key under our lease.
    let lease = machines.node(0).status()["cluster"]["lease"]
        .as_i64()
        .unwrap();
    let key = format!("{}/services/db/leader", machines.prefix);
    let put = format!(
        r#"{{"key":"{}","value":"{}","lease":"{lease}"}}"#,
        b64(&key),
        b64("n0")
    );
    let answer = http_post(&etcd.endpoints()[0], "/v3/kv/put", &put).expect("a put");
    let stale: u64 =
        serde_json::from_str::<serde_json::Value>(&answer).unwrap()["header"]["revision"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    machines.run(0, &["start", "db.0"]).expect(0);
    let elected = machines.node(0).expect_after(&resigned, "elected", "db");
    eprintln!("first term {token}, stale key {stale}: {}", elected.detail);
    assert!(
        !elected.detail.contains(&format!("(token {stale})")),
        "the stale key's token was taken up again: {elected:?}"
    );
    let new: u64 = elected
        .detail
        .rsplit("token ")
        .next()
        .unwrap()
        .trim_end_matches(')')
        .parse()
        .unwrap();
    assert!(new > stale, "{new} after {stale}");
}
