//! A cgroup v2 leaf per replica (docs/design.md §13): the replica starts
//! inside it and its shim stays outside, a stop takes the whole leaf and
//! removes it, and a daemon that left the replica's session and cleared its
//! environment still dies with its replica, across a `kill -9` of its shim
//! and of the supervisor.
//!
//! These run against the real cgroup v2 hierarchy of the machine (on a
//! hybrid host, its `unified` mount); where there is none, or with
//! `SUPERVISE_CGROUP=off`, each test says it was skipped and why.

mod common;

use std::path::{Path, PathBuf};

use common::*;

fn cgroup_of(pid: i32) -> Option<PathBuf> {
    supervise::cgroup::of(&pid.to_string())
}

/// Why replicas get no cgroup here, if they do not.
fn no_cgroups() -> Option<String> {
    if supervise::cgroup::switched_off() {
        return Some(format!("{} is off", supervise::cgroup::SWITCH));
    }
    let Some(own) = supervise::cgroup::own_cgroup() else {
        return Some("no cgroup v2 hierarchy is mounted".into());
    };
    let probe = own.join(format!("supervise-test-probe-{}", std::process::id()));
    match std::fs::create_dir(&probe) {
        Ok(()) => {
            let _ = std::fs::remove_dir(&probe);
            None
        }
        Err(e) => Some(format!("cannot create a cgroup in {}: {e}", own.display())),
    }
}

macro_rules! needs_cgroups {
    () => {
        if let Some(why) = no_cgroups() {
            eprintln!("SKIPPED: replicas get no cgroup here: {why}");
            return;
        }
    };
}

/// A daemon as badly behaved as they come: it forks twice, leaves the
/// session, clears its environment (no marker left to find it by) and
/// ignores SIGTERM.
const DAEMON: &str = r#"
import os, sys, signal
if os.fork(): sys.exit(0)
os.setsid()
if os.fork(): os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("daemon", os.getpid(), flush=True)
os.execve("/bin/sleep", ["sleep", "1000"], dict())
"#;

fn spec_with_daemon(stop_timeout: &str) -> String {
    format!(
        r#"
[services.web]
command = ["sh", "-c", '''
python3 -c '{DAEMON}'
echo ready
exec sleep 1000
''']
stop_timeout = "{stop_timeout}"
"#
    )
}

fn daemon_of(sup: &Supervise) -> i32 {
    let (_, caps) = sup.expect_output("web.0", r"^daemon (\d+)$", SOON);
    sup.expect_output("web.0", "^ready$", SOON);
    let daemon: i32 = caps[1].parse().unwrap();
    // Its environment is empty: the marker sweep could not find it.
    assert!(
        wait_until(SOON, || std::fs::read(format!("/proc/{daemon}/environ"))
            .is_ok_and(|env| env.is_empty())),
        "the daemon {daemon} did not clear its environment"
    );
    daemon
}

fn is_leaf_of(path: &Path, replica: &str) -> bool {
    path.file_name().is_some_and(|n| n == replica)
        && path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n.to_string_lossy().starts_with("supervise."))
}

#[test]
fn each_replica_starts_in_a_leaf_of_its_own_with_its_shim_outside() {
    needs_cgroups!();
    let mut sup = Supervise::start(
        &spec_with_daemon("1s").replace("stop_timeout", "replicas = 2\nstop_timeout"),
    );
    let replica = sup.expect_spawned("web.0");
    let other = sup.expect_spawned("web.1");
    let daemon = daemon_of(&sup);
    let leaf = cgroup_of(replica).expect("the replica's cgroup");
    assert!(
        is_leaf_of(&leaf, "web.0"),
        "web.0 runs in {}",
        leaf.display()
    );
    assert_eq!(
        cgroup_of(daemon),
        Some(leaf.clone()),
        "the daemon left the leaf"
    );
    let other_leaf = cgroup_of(other).unwrap();
    assert!(is_leaf_of(&other_leaf, "web.1"), "{}", other_leaf.display());
    let (_, shim) = proc_stat(replica).unwrap();
    assert_ne!(
        cgroup_of(shim),
        Some(leaf.clone()),
        "the shim is in the leaf"
    );
    assert_eq!(
        std::fs::read_to_string(leaf.join("cgroup.procs"))
            .unwrap()
            .lines()
            .count(),
        2,
        "the leaf holds the replica and its daemon only"
    );

    sup.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(sup.expect_exit(SOON), 0, "{}", sup.transcript());
    assert!(!is_alive(daemon), "the daemon outlived its replica");
    assert!(!leaf.exists(), "{} was not removed", leaf.display());
    assert!(
        !leaf.parent().unwrap().exists(),
        "the state dir's cgroup was not removed"
    );
}

#[test]
fn a_stop_kills_a_daemon_that_ignores_it_through_cgroup_kill_at_stop_timeout() {
    needs_cgroups!();
    let p = Project::new(&spec_with_daemon("300ms"));
    p.up(&[]);
    let replica = p.replicas("web")[0].1.expect("web.0 runs") as i32;
    let leaf = cgroup_of(replica).unwrap();
    let daemon: i32 = p
        .logs_holding(&["web"], &["daemon ", "ready"])
        .unwrap()
        .lines()
        .find_map(|l| l.split("daemon ").nth(1)?.trim().parse().ok())
        .expect("the daemon's pid");
    assert!(is_alive(daemon));
    p.run(&["stop", "web"]).expect(0);
    // `stop` answers once the replica is stopped, which it is only once its
    // leaf is empty: nothing of it is left, and the leaf is gone.
    let dead = !is_alive(daemon);
    if !dead {
        kill9(daemon);
    }
    assert!(dead, "the daemon outlived the stop");
    assert!(!is_alive(replica));
    assert!(!leaf.exists(), "{} was not removed", leaf.display());
    p.run(&["down"]).expect(0);
}

#[test]
fn a_daemon_that_outlived_its_shim_and_the_supervisor_dies_at_the_next_up() {
    needs_cgroups!();
    let mut first = Supervise::start(&spec_with_daemon("1s"));
    let replica = first.expect_spawned("web.0");
    let daemon = daemon_of(&first);
    let (_, shim) = proc_stat(replica).unwrap();
    // The supervisor first, so that no one is left to notice the shim go.
    first.kill9();
    kill9(shim);
    assert!(wait_until(SOON, || !is_alive(replica)) || is_alive(daemon));
    assert!(is_alive(daemon), "the daemon did not outlive its shim");

    let mut second = first.another().start();
    second.expect_said(r"^resumed: 0 adopted, 0 exited while down, 1 unknown", SOON);
    let dead = wait_until(SOON, || !is_alive(daemon));
    if !dead {
        // Not ours to leave behind: it carries no marker the guards know.
        kill9(daemon);
    }
    assert!(dead, "the daemon {daemon} survived the next up");
    let again = second.expect_spawned("web.0");
    assert_ne!(again, replica);
    let stray = daemon_of(&second);
    second.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(second.expect_exit(SOON), 0, "{}", second.transcript());
    assert!(!is_alive(stray));
}

/// With or without a cgroup: CPU time counts what ended processes used too
/// (the leaf's `cpu.stat`; else what their parents reaped), memory is what
/// the replica holds.
#[test]
fn status_shows_the_cpu_and_memory_a_replica_uses_with_its_ended_children() {
    if let Some(why) = no_cgroups() {
        eprintln!("(without a cgroup: {why}; usage read from /proc)");
    }
    let p = Project::new(
        r#"
[services.work]
command = ["sh", "-c", '''
python3 -c "
import time
while time.process_time() < 0.5:
    pass
"
echo burnt
exec python3 -c "
import sys, time
held = b'x' * (64 << 20)
print('holding', flush=True)
time.sleep(1000)
"
''']
"#,
    );
    p.up(&[]);
    p.logs_holding(&["work"], &["burnt", "holding"]).unwrap();
    let status = p.status();
    let r = &status["services"][0]["replicas"][0];
    let cpu = r["cpu_seconds"].as_f64().unwrap_or_default();
    assert!(cpu >= 0.5, "the CPU of an ended child is counted: {r}");
    let memory = r["memory_bytes"].as_u64().unwrap_or_default();
    assert!(memory >= 64 << 20, "64 MiB held: {r}");
    assert_eq!(r["processes"], 1, "{r}");
    assert!(r["cpu_percent"].as_f64().is_some(), "{r}");
    p.run(&["down"]).expect(0);
}

/// The supervisor keeps each replica's usage files open from one `status`
/// to the next (its leaf's, or without cgroups each process's under its
/// shim): the figures must follow the replica when its processes are
/// replaced under the same shim (a kill: the shim restarts it), when a new
/// shim makes a new leaf under the same name (a restart), and when one of
/// its processes ends.
fn status_follows_a_replica_whose_processes_are_replaced(cgroups: bool) {
    let p = Project::new(
        r#"
[services.work]
command = ["sh", "-c", "sleep 1000 & exec sleep 1001"]
restart = { delay = "0s" }
"#,
    );
    let mut up = p.command(&["up", "-d"]);
    if !cgroups {
        up.env(supervise::cgroup::SWITCH, "off");
    }
    assert!(up.status().unwrap().success());
    let replica = |status: &serde_json::Value| status["services"][0]["replicas"][0].clone();
    // The replica running with `processes` of its own, its usage read, and
    // a pid other than `other`.
    let running = |other: Option<i64>, processes: u64| {
        let mut last = serde_json::Value::Null;
        let found = wait_until(SOON, || {
            last = replica(&p.status());
            last["state"] == "running"
                && last["pid"].as_i64() != other
                && last["processes"] == processes
                && last["memory_bytes"].as_u64().is_some_and(|m| m > 0)
                && last["cpu_seconds"].as_f64().is_some()
        });
        assert!(found, "not running with {processes} processes: {last}");
        last["pid"].as_i64().unwrap()
    };
    let first = running(None, 2);
    kill9(first as i32);
    let second = running(Some(first), 2);
    p.run(&["restart", "work"]).expect(0);
    let third = running(Some(second), 2);
    let [background] = descendants(third as i32)[..] else {
        panic!("not one child: {:?}", descendants(third as i32));
    };
    kill9(background);
    running(None, 1);
    p.run(&["down"]).expect(0);
}

#[test]
fn status_follows_a_replica_whose_processes_and_leaf_are_replaced() {
    needs_cgroups!();
    status_follows_a_replica_whose_processes_are_replaced(true);
}

#[test]
fn without_cgroups_status_follows_a_replica_whose_processes_are_replaced() {
    status_follows_a_replica_whose_processes_are_replaced(false);
}

/// Whether the leaves get a memory controller here (the supervisor then
/// leaves `limits.memory` to the kernel).
fn memory_controller() -> bool {
    supervise::cgroup::available()
        .is_ok_and(|(_, controllers)| controllers.iter().any(|c| c == "memory"))
}

const HOG: &str = r#"
[services.hog]
command = ["python3", "-c", '''
import time
held = []
print("allocating", flush=True)
while True:
    held.append(b"x" * (8 << 20))
    time.sleep(0.02)
''']
restart = { delay = "100ms" }
[services.hog.limits]
memory = "64MiB"
"#;

/// Where the kernel cannot enforce `limits.memory` (this hybrid host: no
/// memory controller), the supervisor samples it: a replica allocating past
/// it is stopped and restarted with reason `memory limit` within 2 s.
#[test]
fn a_replica_over_its_memory_limit_is_restarted_with_reason_memory_limit() {
    if memory_controller() {
        eprintln!(
            "SKIPPED: a memory controller is delegated here, so the kernel enforces limits.memory (see the oom test)"
        );
        return;
    }
    let sup = Supervise::start(HOG);
    let first = sup.expect_spawned("hog.0");
    let (allocating, _) = sup.expect_output("hog.0", "^allocating$", SOON);
    let over = sup.expect("memory_limit", "hog.0");
    assert!(
        over.detail.contains("over its memory limit of 64MiB"),
        "{}",
        over.detail
    );
    // 64 MiB at 8 MiB per 20 ms is reached in about 0.2 s; sampled each second.
    let took = over.arrived.saturating_duration_since(allocating.at);
    assert!(
        took < std::time::Duration::from_secs(2),
        "stopped {took:?} after it began allocating"
    );
    let exited = sup.expect_after(&over, "exited", "hog.0");
    assert!(
        exited
            .detail
            .contains("was stopped for going over its memory limit (limit 64MiB); restart 1 in"),
        "{}",
        exited.detail
    );
    let (_, again) = sup.expect_restart("hog.0", first);
    assert_ne!(again, first);
    let status = socket_status(&sup.state_dir()).expect("a status");
    let last = &status["services"][0]["replicas"][0]["last_exit"];
    assert_eq!(last["reason"], "memory limit", "{last}");
}

/// Where a memory controller is delegated, the kernel enforces
/// `limits.memory` (`memory.max`) and the OOM kill is named.
#[test]
fn a_replica_killed_by_the_oom_killer_ends_with_reason_oom() {
    needs_cgroups!();
    if !memory_controller() {
        eprintln!(
            "SKIPPED: no memory controller is delegated to {} (a hybrid host's cgroup2 has none), \
             so the kernel cannot OOM-kill a replica for its limit here",
            supervise::cgroup::own_cgroup().unwrap().display()
        );
        return;
    }
    let sup = Supervise::start(HOG);
    sup.expect_spawned("hog.0");
    let oom = sup.expect("oom", "hog.0");
    assert!(
        oom.detail
            .contains("was killed by the OOM killer (limit 64MiB)"),
        "{}",
        oom.detail
    );
    let exited = sup.expect_after(&oom, "exited", "hog.0");
    assert!(exited.detail.contains("restart 1 in"), "{}", exited.detail);
    let status = socket_status(&sup.state_dir()).expect("a status");
    let last = &status["services"][0]["replicas"][0]["last_exit"];
    assert_eq!(
        (&last["reason"], &last["signal"]),
        (&"oom".into(), &"SIGKILL".into()),
        "{last}"
    );
}

#[test]
fn nofile_and_core_limits_are_the_replicas_rlimits() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
[services.web.limits]
nofile = 4321
core = "0"
"#,
    );
    let pid = sup.expect_spawned("web.0");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let row = |name: &str| -> Vec<String> {
        let line = limits.lines().find(|l| l.starts_with(name)).unwrap();
        line[name.len()..]
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("Max open files")[..2], ["4321", "4321"], "{limits}");
    assert_eq!(row("Max core file size")[..2], ["0", "0"], "{limits}");
}

/// `cpu`, `memory_high` and `pids` need their controller: `check` and `up`
/// say so once, one line each, and `--strict` makes it an error.
#[test]
fn limits_that_cannot_be_enforced_are_warned_of_and_strict_refuses_them() {
    let available = supervise::cgroup::available();
    if let Ok((_, controllers)) = &available
        && controllers.iter().any(|c| c == "pids")
    {
        eprintln!("SKIPPED: the pids controller is delegated here, so limits.pids is enforced");
        return;
    }
    let p = Project::new(
        r#"
[services.api]
command = ["sleep", "1000"]
[services.api.limits]
pids = 64
memory = "1GiB"
"#,
    );
    let where_ = match &available {
        Ok((dir, _)) => format!("no pids controller in {}", dir.display()),
        Err(why) => format!("no cgroup ({why})"),
    };
    let line = format!("api: limits.pids not enforced: {where_}");
    let ran = p.run(&["check", "-q"]);
    ran.expect(0);
    assert_eq!(
        ran.stderr,
        format!("warning: {line}\n"),
        "memory is sampled, not warned of"
    );

    let ran = p.run(&["check", "-q", "--strict"]);
    ran.expect(2);
    assert_eq!(ran.stderr, format!("error: {line} (--strict)\n"));

    let ran = p.run(&["up", "-d", "--strict"]);
    ran.expect(1);
    assert!(ran.stderr.contains(&line), "{ran:#?}");
    assert!(p.marked().is_empty(), "up --strict started something");
}

/// Context switches of `pid` so far (voluntary and not).
fn switches(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// With nothing happening, neither the supervisor nor a shim wakes up:
/// the shim's watch on its leaf's `cgroup.events` is re-armed by reading it,
/// and nothing is sampled while nobody asks.
#[test]
fn an_idle_supervisor_and_shim_do_not_wake_up() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let replica = sup.expect_spawned("web.0");
    let (_, shim) = proc_stat(replica).unwrap();
    let counts = || (switches(shim), switches(sup.pid));
    // Measuring windows, not waits for something: the start settles (the
    // checkpoint is written within 20 ms), then a second with nothing to do.
    let window = |d| {
        let before = counts();
        std::thread::sleep(std::time::Duration::from_millis(d));
        (before, counts())
    };
    assert!(
        wait_until(SOON, || {
            let (before, after) = window(300);
            before == after
        }),
        "still busy after its start"
    );
    let (before, after) = window(1000);
    assert_eq!(
        after, before,
        "(shim, supervisor) context switches while idle"
    );
}

/// An adopted replica is verified by its leaf too: a running record whose
/// leaf does not hold the command it names is not taken at its word (the
/// replica is then recognised by its instance lock, its marker and its
/// own leaf, and adopted as such).
#[test]
fn a_record_whose_leaf_does_not_hold_its_command_is_not_taken_at_its_word() {
    needs_cgroups!();
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let pid = first.expect_spawned("web.0");
    let record_path = first.state_dir().join("run/web.0.running");
    let mut record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    let leaf = cgroup_of(pid).unwrap();
    assert_eq!(record["cgroup"], leaf.display().to_string(), "{record}");
    first.kill9();
    // A leaf that exists but holds nothing of the replica: its parent.
    record["cgroup"] = leaf.parent().unwrap().display().to_string().into();
    std::fs::write(&record_path, record.to_string()).unwrap();

    let mut second = first.another().start();
    second.expect_said(r"^resumed: 1 adopted", SOON);
    let adopted = second.expect("adopted", "web.0");
    assert!(
        adopted
            .detail
            .ends_with("without its running record: recognised by its instance lock and /proc)"),
        "{}",
        adopted.detail
    );
    assert!(is_alive(pid));
    second.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(second.expect_exit(SOON), 0, "{}", second.transcript());
}

/// A leaf removed from under its shim (emptied and `rmdir`ed by someone
/// else): the replica has ended, and is restarted as any other end. Before,
/// the shim read the removed leaf's `cgroup.events` as populated and waited
/// on it forever, spinning, as poll wakes at once on a removed file.
#[test]
fn a_replica_whose_leaf_is_removed_from_under_its_shim_is_restarted() {
    needs_cgroups!();
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "50ms" }
"#,
    );
    let replica = sup.expect_spawned("web.0");
    let (_, shim) = proc_stat(replica).unwrap();
    let leaf = cgroup_of(replica).expect("the replica's cgroup");
    // The shim held still, so that the leaf is gone before it looks.
    let held = nix::unistd::Pid::from_raw(shim);
    nix::sys::signal::kill(held, nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::fs::write(leaf.join("cgroup.kill"), "1").unwrap();
    let removed = wait_until(SOON, || std::fs::remove_dir(&leaf).is_ok());
    nix::sys::signal::kill(held, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(removed, "{} could not be removed", leaf.display());
    sup.expect_restart("web.0", replica);
    assert!(
        wait_until(SOON, || !is_alive(shim)),
        "the shim {shim} of the removed leaf lives on"
    );
    sup.signal(nix::sys::signal::Signal::SIGINT);
    assert_eq!(sup.expect_exit(SOON), 0, "{}", sup.transcript());
}
