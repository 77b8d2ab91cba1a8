//! Health checks, readiness and failover against real children (docs/spec-file.md
//! §7 and §9; states: docs/commands.md §3): every probe kind, `start_period`,
//! unhealthy → restart, notify with its sender check and watchdog,
//! dependency gating on `healthy`, and active-standby under repeated loss.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a standby must have run before it is promoted (the
/// supervisor's `failover::SETTLE`).
const SETTLE: Duration = Duration::from_secs(1);

fn state_of(sup: &Supervise, service: &str, index: u64) -> (String, String) {
    let report = socket_status(&sup.state_dir()).unwrap_or_default();
    let r = replica_in(&report, service, index);
    (
        r["state"].as_str().unwrap_or_default().to_string(),
        r["health"].as_str().unwrap_or_default().to_string(),
    )
}

fn wait_state(sup: &Supervise, service: &str, index: u64, state: &str, health: &str) {
    let ok = wait_until(SOON, || {
        state_of(sup, service, index) == (state.into(), health.into())
    });
    assert!(
        ok,
        "{service}.{index} never became {state}/{health}; it is {:?}\n{}",
        state_of(sup, service, index),
        sup.transcript()
    );
}

#[test]
fn http_probe_against_a_real_web_server() {
    let port = free_port();
    let sup = Supervise::start(&format!(
        r#"
[services.web]
command = ["python3", "-m", "http.server", "{{port}}", "--bind", "127.0.0.1"]
port = {port}
[services.web.health]
http = "http://127.0.0.1:{{port}}/"
interval = "100ms"
start_period = "10s"
"#
    ));
    sup.expect_spawned("web.0");
    wait_state(&sup, "web", 0, "running", "healthy");
    sup.expect_said(r"^web\.0 is healthy$", SOON);
}

#[test]
fn tcp_probe_sees_the_listener_and_its_loss_restarts_the_replica() {
    let port = free_port();
    // Listens, then stops listening (but keeps running) once `close` exists.
    let sup = Supervise::start(&format!(
        r#"
[services.db]
command = ["python3", "-c", '''
import os, socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen()
while not os.path.exists("close"): time.sleep(0.02)
s.close(); time.sleep(1000)
''']
port = {port}
[services.db.health]
tcp = "127.0.0.1:{{port}}"
interval = "100ms"
retries = 2
start_period = "3s"
[services.db.restart]
delay = "50ms"
"#
    ));
    let first = sup.expect_spawned("db.0");
    wait_state(&sup, "db", 0, "running", "healthy");
    std::fs::write(sup.dir().join("close"), "").unwrap();
    sup.expect_said(
        r"^db\.0 is unhealthy after 2 failed checks \(connect .*\); restarting it$",
        SOON,
    );
    std::fs::remove_file(sup.dir().join("close")).unwrap();
    let unhealthy = sup.expect("unhealthy", "db.0");
    assert_eq!(unhealthy.pid, Some(first));
    let restart = sup.expect_after(&unhealthy, "restarted", "db.0");
    let (_, second) = sup.expect_spawned_after(&restart, "db.0");
    assert_eq!(sup.replica("db", 0)["restarts"], 1);
    assert_ne!(second, first);
    assert!(wait_until(SOON, || !is_alive(first)));
    wait_state(&sup, "db", 0, "running", "healthy");
}

#[test]
fn exec_probe_turns_unhealthy_on_a_signal_and_start_period_is_honoured() {
    let sup = Supervise::start(
        r#"
[services.app]
command = ["sh", "-c", "trap 'touch broken' USR1; echo ready; while :; do sleep 0.05; done"]
[services.app.health]
exec = ["sh", "-c", "echo >> probed; test -e started-long-ago && ! test -e broken"]
interval = "50ms"
retries = 1
# Far longer than the check below takes on a loaded machine; the first
# success ends it all the same.
start_period = "5s"
action = "none"
"#,
    );
    let pid = sup.expect_spawned("app.0");
    // Failing from the start, but within start_period: still only `starting`
    // after several failed checks.
    let probed = sup.dir().join("probed");
    assert!(wait_until(SOON, || std::fs::read_to_string(&probed)
        .is_ok_and(|runs| runs.lines().count() >= 3)));
    assert_eq!(
        state_of(&sup, "app", 0),
        ("starting".into(), "unknown".into())
    );
    assert!(sup.said().iter().all(|e| !e.contains("unhealthy")));
    std::fs::write(sup.dir().join("started-long-ago"), "").unwrap();
    wait_state(&sup, "app", 0, "running", "healthy");
    kill(Pid::from_raw(pid), Signal::SIGUSR1).unwrap();
    sup.expect_said(
        r"^app\.0 is unhealthy after 1 failed checks \(sh exited with code 1\)$",
        SOON,
    );
    wait_state(&sup, "app", 0, "unhealthy", "unhealthy");
    // action = "none": reported, not restarted.
    assert!(is_alive(pid));
}

/// A server that opens its port only after a pause, like a database
/// replaying its journal.
fn slow_listener(delay: &str) -> String {
    format!(
        r#"["python3", "-c", '''
import os, socket, time
time.sleep({delay})
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"]))); s.listen()
time.sleep(1000)
''']"#
    )
}

#[test]
fn a_slow_starter_is_not_judged_before_the_default_start_period() {
    // Checked every 200ms, open after 2s: without a start period it would
    // be unhealthy after 3 checks and restarted before it could ever listen.
    let port = free_port();
    let sup = Supervise::start(&format!(
        r#"
[services.db]
command = {command}
port = {port}
[services.db.health]
tcp = "127.0.0.1:{{port}}"
interval = "200ms"
[services.db.restart]
delay = "50ms"
"#,
        command = slow_listener("2")
    ));
    let pid = sup.expect_spawned("db.0");
    wait_state(&sup, "db", 0, "running", "healthy");
    let events = sup.said();
    assert!(
        events.iter().all(|e| !e.contains("unhealthy")),
        "{events:?}"
    );
    assert!(is_alive(pid), "the first incarnation was replaced");
}

#[test]
fn a_replica_never_healthy_is_judged_once_the_start_period_is_over() {
    let port = free_port();
    let sup = Supervise::start(&format!(
        r#"
[services.db]
command = {command}
port = {port}
[services.db.health]
tcp = "127.0.0.1:{{port}}"
interval = "100ms"
retries = 2
start_period = "1s"
[services.db.restart]
delay = "50ms"
"#,
        command = slow_listener("1000")
    ));
    let first = sup.expect_spawned("db.0");
    assert_eq!(
        state_of(&sup, "db", 0),
        ("starting".into(), "unknown".into())
    );
    sup.expect_said(
        r"^db\.0 did not become healthy within 1s \(last check: connect 127\.0\.0\.1:\d+: .*\); restarting it$",
        SOON,
    );
    let unhealthy = sup.expect("unhealthy", "db.0");
    let (_, second) = sup.expect_spawned_after(&unhealthy, "db.0");
    assert_ne!(second, first);
}

const NOTIFY_CHILD: &str = r#"
import sys, time
time.sleep(float(sys.argv[1]))
notify("READY=1\nSTATUS=serving")
for i in range(int(sys.argv[2])):
    notify("WATCHDOG=1"); time.sleep(0.1)
time.sleep(1000)
"#;

#[test]
fn notify_service_is_starting_until_ready_and_unhealthy_when_its_watchdog_lapses() {
    let sup = Supervise::start(&format!(
        r#"
[services.daemon]
command = ["python3", "-c", '''{SD_NOTIFY}{NOTIFY_CHILD}''', "0.8", "5"]
[services.daemon.health]
notify = true
watchdog = "400ms"
action = "none"
"#
    ));
    let spawned_at = Instant::now();
    sup.expect_spawned("daemon.0");
    assert_eq!(
        state_of(&sup, "daemon", 0),
        ("starting".into(), "unknown".into())
    );
    let (ready, _) = sup.expect_said(r"^daemon\.0 is healthy$", SOON);
    assert!(
        ready.at.duration_since(spawned_at) >= Duration::from_millis(700),
        "ready before the child said READY=1"
    );
    // Five watchdog pings, then silence: unhealthy once 400ms pass without one.
    sup.expect_said(r"^daemon\.0 is unhealthy .*watchdog expired", SOON);
    wait_state(&sup, "daemon", 0, "unhealthy", "unhealthy");
}

#[test]
fn a_watchdog_ping_before_ready_does_not_shield_a_replica_for_ever() {
    // One WATCHDOG=1 at once, then silence, never READY=1.
    let sup = Supervise::start(&format!(
        r#"
[services.daemon]
command = ["python3", "-c", '''{SD_NOTIFY}
import time
notify("WATCHDOG=1")
time.sleep(1000)
''']
[services.daemon.health]
notify = true
watchdog = "300ms"
start_period = "1s"
action = "none"
"#
    ));
    sup.expect_spawned("daemon.0");
    // Before, the ping's deadline passed inside the start period, unjudged,
    // and no other came: `starting` for ever.
    sup.expect_said(
        r"^daemon\.0 did not become healthy within 1s \(last check: watchdog expired: no WATCHDOG=1 in time\)$",
        SOON,
    );
}

#[test]
fn a_notify_service_added_by_reload_is_heard() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    sup.expect_spawned("web.0");
    std::fs::write(
        sup.spec_path(),
        format!(
            r#"
[services.web]
command = ["sleep", "1000"]
[services.daemon]
command = ["python3", "-c", '''{SD_NOTIFY}{NOTIFY_CHILD}''', "0", "0"]
[services.daemon.health]
notify = true
"#
        ),
    )
    .unwrap();
    let mut reload = std::process::Command::new(env!("CARGO_BIN_EXE_supervise"));
    reload
        .arg("--state-dir")
        .arg(sup.state_dir())
        .arg("reload")
        .arg(sup.spec_path());
    run_bounded(reload, COMMAND_TIMEOUT).expect(0);
    // Before, no socket was bound for it: `starting` for ever.
    sup.expect_said(r"^daemon\.0 is healthy$", SOON);
}

#[test]
fn a_notify_service_not_ready_within_its_start_period_is_restarted() {
    let sup = Supervise::start(&format!(
        r#"
[services.daemon]
command = ["python3", "-c", '''{SD_NOTIFY}{NOTIFY_CHILD}''', "1000", "0"]
[services.daemon.health]
notify = true
start_period = "1s"
[services.daemon.restart]
delay = "50ms"
"#
    ));
    let first = sup.expect_spawned("daemon.0");
    sup.expect_said(
        r"^daemon\.0 did not become healthy within 1s \(last check: no READY=1 received\); restarting it$",
        SOON,
    );
    let unhealthy = sup.expect("unhealthy", "daemon.0");
    let (_, second) = sup.expect_spawned_after(&unhealthy, "daemon.0");
    assert_ne!(second, first);
}

/// Only a replica's own processes speak for it: READY=1 sent to its
/// `$NOTIFY_SOCKET` by the test (root, in no replica), by a process of
/// another user, and by another replica (for which it counts) leaves it
/// `starting`. The socket is reachable by every user, so those sends do
/// arrive, and are ignored by the kernel's word on who sent them.
#[test]
fn notify_counts_only_from_the_replicas_own_processes() {
    let sup = Supervise::start(&format!(
        r#"
[services.daemon]
command = ["python3", "-c", '''{SD_NOTIFY}{NOTIFY_CHILD}''', "1000", "0"]
[services.daemon.health]
notify = true
{}"#,
        ready_on_go("other")
    ));
    let pid = sup.expect_spawned("daemon.0");
    sup.expect_spawned("other.0");
    let socket = notify_socket_of(pid);
    let send = format!("{SD_NOTIFY}\nimport sys\nnotify('READY=1', sys.argv[1])");
    let mut as_root = Command::new("python3");
    as_root.args(["-c", &send, &socket]);
    let mut as_nobody = Command::new("setpriv");
    as_nobody
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups"])
        // The system python: one under /root (pyenv) is out of nobody's reach.
        .args(["/usr/bin/python3", "-c", &send, &socket]);
    let senders = if nix::unistd::geteuid().is_root() {
        vec![as_root, as_nobody]
    } else {
        eprintln!("not root: no sender of another user");
        vec![as_root]
    };
    for mut sender in senders {
        let out = sender.output().unwrap();
        assert!(out.status.success(), "{sender:?}: {out:?}");
    }
    // The datagrams above are queued before the one other.0 now sends,
    // so once other.0 is healthy they have all been read.
    std::fs::write(sup.dir().join("go"), "").unwrap();
    sup.expect_said(r"^other\.0 is healthy$", SOON);
    assert_eq!(
        state_of(&sup, "daemon", 0),
        ("starting".into(), "unknown".into()),
        "{}",
        sup.transcript()
    );
}

/// A real sd_notify server, Redis with `--supervised systemd` (libsystemd's
/// sd_notify), running as another user becomes healthy.
#[test]
fn redis_running_as_another_user_becomes_healthy_through_sd_notify() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to run redis-server as user nobody");
        return;
    }
    assert!(
        have("redis-server"),
        "redis-server is not installed (.ci/run installs Debian's redis-server)"
    );
    let port = free_port();
    let sup = Supervise::start(&format!(
        r#"
[services.cache]
command = ["redis-server", "--port", "{port}", "--bind", "127.0.0.1", "--supervised", "systemd", "--save", "", "--appendonly", "no", "--dir", "/tmp"]
user = "nobody"
cwd = "/"
[services.cache.health]
notify = true
"#
    ));
    sup.expect_said(r"^cache\.0 is healthy$", SOON);
    wait_state(&sup, "cache", 0, "running", "healthy");
}

#[test]
fn log_pattern_makes_a_replica_ready() {
    let sup = Supervise::start(
        r#"
[services.app]
command = ["sh", "-c", "echo booting; sleep 0.5; echo 'listening on :8080'; exec sleep 1000"]
[services.app.health]
log = "listening on :\\d+"
"#,
    );
    sup.expect_spawned("app.0");
    assert_eq!(state_of(&sup, "app", 0).0, "starting");
    sup.expect_said(r"^app\.0 is healthy$", SOON);
    wait_state(&sup, "app", 0, "running", "healthy");
}

#[test]
fn a_dependant_waits_for_its_dependency_to_be_healthy() {
    let sup = Supervise::start(
        r#"
[services.db]
command = ["sh", "-c", "sleep 0.6; touch db-ready; exec sleep 1000"]
[services.db.health]
exec = ["test", "-e", "db-ready"]
interval = "50ms"
start_period = "5s"

[services.api]
command = ["sleep", "1000"]
depends_on = { db = "healthy" }
"#,
    );
    let (healthy, _) = sup.expect_said(r"^db\.0 is healthy$", SOON);
    let (api, _) = sup.expect_said(r"^spawned api\.0 ", SOON);
    assert!(
        api.index > healthy.index,
        "api spawned before db was healthy"
    );
    let (db, _) = sup.expect_said(r"^spawned db\.0 ", SOON);
    assert!(
        api.at.duration_since(db.at) >= Duration::from_millis(500),
        "api started {:?} after db",
        api.at.duration_since(db.at)
    );
}

/// The active replicas of `kv` (of 3) in a status report: (index, pid).
fn actives(report: &serde_json::Value) -> Vec<(u64, i64)> {
    (0..3)
        .filter_map(|i| {
            let r = replica_in(report, "kv", i);
            (r["role"] == "active").then(|| (i, r["pid"].as_i64().unwrap_or(-1)))
        })
        .collect()
}

/// The `role …` lines the replicas printed: (replica, role).
fn roles_told(sup: &Supervise) -> Vec<(String, String)> {
    sup.output()
        .into_iter()
        .filter_map(|(r, text)| Some((r, text.strip_prefix("role ")?.to_string())))
        .collect()
}

#[test]
fn failover_promotes_a_standby_within_a_second_each_time_the_active_dies() {
    let sup = Supervise::start(
        r#"
[services.kv]
command = ["sh", "-c", "echo role $SUPERVISE_ROLE; exec sleep 1000"]
replicas = 3
[services.kv.restart]
delay = "50ms"
max_delay = "200ms"
limit = 0
[services.kv.failover]
mode = "active-standby"
promote = ["sh", "-c", "echo {replica} {pid} >> promoted.log"]
"#,
    );
    for i in 0..3 {
        sup.expect_spawned(&format!("kv.{i}"));
    }
    let state_dir = sup.state_dir();
    let active_now = || {
        let mut found = None;
        wait_until(SOON, || {
            found = socket_status(&state_dir).and_then(|r| actives(&r).first().copied());
            found.is_some()
        });
        found.expect("no active replica")
    };
    // A sampler watches status every 10 ms for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, state_dir) = (stop.clone(), state_dir.clone());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(report) = socket_status(&state_dir) {
                    let n = (0..3)
                        .filter(|&i| replica_in(&report, "kv", i)["role"] == "active")
                        .count();
                    assert!(n <= 1, "two actives at once: {report:#}");
                    samples += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        })
    };
    let mut promoted = BTreeSet::new();
    let (mut index, mut pid) = active_now();
    for round in 0..20 {
        // A standby fit to take over must be there (the others may be
        // restarting): one that has run for the settle time, 1 s.
        let settled = |r: &serde_json::Value| {
            let started = r["started_at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok());
            r["role"] == "standby"
                && r["state"] == "running"
                && started.is_some_and(|t| t.elapsed().unwrap_or_default() > SETTLE)
        };
        assert!(wait_until(SOON, || socket_status(&state_dir).is_some_and(
            |r| (0..3).any(|i| settled(replica_in(&r, "kv", i)))
        )));
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        let mut next = None;
        let took_over = wait_until(Duration::from_secs(1), || {
            next = socket_status(&state_dir)
                .and_then(|r| actives(&r).first().copied())
                .filter(|&(_, p)| p != pid);
            next.is_some()
        });
        assert!(
            took_over,
            "round {round}: no standby took over within 1s of killing kv.{index}\n{}",
            sup.transcript()
        );
        (index, pid) = next.unwrap();
        promoted.insert(index);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = sampler.join().expect("the sampler saw two actives");
    assert!(samples > 20, "too few samples: {samples}");
    // The hook ran with each promoted replica's index and pid (it runs on
    // its own: the last one may still be writing), and only for the 20
    // standbys that took over: kv.0 was spawned active.
    let hook_log = sup.dir().join("promoted.log");
    let expected = format!("{index} {pid}");
    let mut log = String::new();
    let complete = wait_until(SOON, || {
        log = std::fs::read_to_string(&hook_log).unwrap_or_default();
        log.lines().last() == Some(expected.as_str()) && log.lines().count() >= 20
    });
    assert!(
        complete,
        "promote hook log, expected last {expected:?}:\n{log}"
    );
    assert_eq!(log.lines().count(), 20, "{log}");
    // kv.0 started active; replacements come back as standbys.
    let roles = roles_told(&sup);
    let active: Vec<&(String, String)> =
        roles.iter().filter(|(_, role)| role == "active").collect();
    assert_eq!(
        active,
        [&("kv.0".to_string(), "active".to_string())],
        "{roles:?}"
    );
}

/// A failover service with `promote_signal = "SIGUSR1"` whose replicas
/// say their role, install their handler only `after` seconds, and then
/// print `promoted` on each SIGUSR1.
fn late_catchers(replicas: u32, after: f64) -> String {
    format!(
        r#"
[services.kv]
command = ["python3", "-u", "-c", "import os, signal, time\nprint('role', os.environ['SUPERVISE_ROLE'])\ntime.sleep({after})\nsignal.signal(signal.SIGUSR1, lambda *_: print('promoted'))\nwhile True: signal.pause()"]
replicas = {replicas}
[services.kv.restart]
delay = "50ms"
limit = 0
[services.kv.failover]
mode = "active-standby"
promote_signal = "SIGUSR1"
"#
    )
}

fn assert_none_killed_by_sigusr1(sup: &Supervise) {
    let deaths: Vec<String> = sup
        .said()
        .into_iter()
        .filter(|e| e.contains("killed by SIGUSR1"))
        .collect();
    assert!(deaths.is_empty(), "{deaths:?}\n{}", sup.transcript());
}

/// The replica that is active from the start is spawned active (no promote
/// signal for it), and a standby is signalled only once it has settled: a
/// replica that installs its SIGUSR1 handler 0.5 s after it starts never
/// dies of the signal, however soon the active is killed.
#[test]
fn a_promote_signal_never_kills_a_replica_that_catches_it_late() {
    let sup = Supervise::start(&late_catchers(3, 0.5));
    sup.expect_output("kv.0", "^role active$", SOON);
    let state_dir = sup.state_dir();
    let mut killed = Vec::new();
    for round in 0..2 {
        // The active is killed as soon as it is seen: the standbys may be
        // in their first moments, before their handler is installed.
        let mut found = None;
        let took_over = wait_until(SOON, || {
            found = socket_status(&state_dir)
                .map(|r| actives(&r))
                .and_then(|a| a.first().copied())
                .filter(|&(_, pid)| pid > 0 && !killed.contains(&pid));
            found.is_some()
        });
        assert!(
            took_over,
            "round {round}: no new active\n{}",
            sup.transcript()
        );
        let (index, pid) = found.unwrap();
        if round == 1 {
            // It was promoted: the signal reached its handler.
            sup.expect_output(&format!("kv.{index}"), "^promoted$", SOON);
        }
        kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
        killed.push(pid);
    }
    // It settles: three running, exactly one active (the third one).
    let settled = wait_until(SOON, || {
        socket_status(&state_dir).is_some_and(|r| {
            let a = actives(&r);
            a.len() == 1
                && !killed.contains(&a[0].1)
                && (0..3).all(|i| replica_in(&r, "kv", i)["state"] == "running")
        })
    });
    assert!(settled, "no single active\n{}", sup.transcript());
    let report = socket_status(&state_dir).unwrap();
    let (index, _) = actives(&report)[0];
    sup.expect_output(&format!("kv.{index}"), "^promoted$", SOON);
    assert_none_killed_by_sigusr1(&sup);
    for i in 0..3 {
        assert_ne!(
            replica_in(&report, "kv", i)["last_exit"]["signal"],
            "SIGUSR1",
            "{report:#}"
        );
    }
    // Only kv.0's first incarnation was told at its start that it is active.
    let roles = roles_told(&sup);
    let told_active: Vec<usize> = (0..roles.len())
        .filter(|&i| roles[i].1 == "active")
        .collect();
    let first_of_kv0 = roles.iter().position(|(r, _)| r == "kv.0");
    assert_eq!(told_active.first(), first_of_kv0.as_ref(), "{roles:?}");
    assert_eq!(told_active.len(), 1, "{roles:?}");
}

/// A standby past the settle time that does not catch the promote signal
/// yet is passed over until it does: the signal never kills it.
#[test]
fn a_standby_is_promoted_only_once_it_catches_the_promote_signal() {
    let sup = Supervise::start(&late_catchers(2, 2.0));
    let first = sup.expect_spawned("kv.0");
    sup.expect_spawned("kv.1");
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    // Promoted once it catches the signal, which it then gets.
    let (_, promoted) = sup.expect_said(r"^promoted (kv\.\d) to active", SOON);
    sup.expect_output(&promoted[1], "^promoted$", SOON);
    sup.expect_said(
        r"^not promoting kv\.1: it does not catch SIGUSR1 \(yet\)",
        SOON,
    );
    assert_none_killed_by_sigusr1(&sup);
}
