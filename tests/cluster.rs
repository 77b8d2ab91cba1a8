//! Cluster-scope failover (docs/spec-file.md §14) against a real etcd:
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
    assert!(old.to - killed_at < LEASE.as_secs_f64(), "fenced before the lease ends");
    assert!(t - killed_at < max_gap() + 1.0);
}
