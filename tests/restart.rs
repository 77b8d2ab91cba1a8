//! Restarts, end to end: the restart policies, backoff, crash loops and
//! the `delay = "0s"` fast path, with real processes and signals. Facts are
//! read from the supervisor's event records and status, not its wording.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn killed_replica_is_restarted_with_a_new_pid_and_no_zombie_is_left() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "100ms" }
"#,
    );
    let first = sup.expect_spawned("web.0");
    let (_, old_shim) = proc_stat(first).expect("the replica is running");
    kill9(first);
    let (_, second) = sup.expect_restart("web.0", first);
    assert_ne!(second, first, "the restarted replica has the old pid");
    assert!(is_alive(second));
    let replica = sup.replica("web", 0);
    assert_eq!(replica["restarts"], 1, "{replica:#}");
    assert_eq!(replica["last_exit"]["signal"], "SIGKILL", "{replica:#}");
    // The old replica was reaped by its shim, the old shim by the zygote.
    assert!(
        wait_until(SOON, || proc_stat(first).is_none()
            && proc_stat(old_shim).is_none()),
        "old replica {first} or old shim {old_shim} still exists: {:?} {:?}",
        proc_stat(first),
        proc_stat(old_shim)
    );
    assert!(
        wait_until(SOON, || zombies_under(sup.pid).is_empty()),
        "zombies under the supervisor: {:?}",
        zombies_under(sup.pid)
    );
}

#[test]
fn policy_always_restarts_after_a_clean_exit() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "exit 0"]
restart = { policy = "always", delay = "50ms" }
"#,
    );
    let exited = sup.expect("exited", "web.0");
    let restarted = sup.expect_after(&exited, "restarted", "web.0");
    let again = sup.expect_after(&restarted, "exited", "web.0");
    sup.expect_after(&again, "restarted", "web.0");
    let replica = sup.replica("web", 0);
    assert_eq!(replica["last_exit"]["code"], 0, "{replica:#}");
    assert!(replica["restarts"].as_u64() >= Some(2), "{replica:#}");
}

#[test]
fn policy_on_failure_finishes_after_exit_0_and_restarts_after_exit_3() {
    let mut sup = Supervise::start(
        r#"
[services.good]
command = ["sh", "-c", "exit 0"]
restart = { policy = "on-failure", delay = "50ms" }

[services.bad]
command = ["sh", "-c", "exit 3"]
restart = { policy = "on-failure", delay = "50ms" }
"#,
    );
    sup.expect("exited", "good.0");
    let first = sup.expect("restarted", "bad.0");
    sup.expect_after(&first, "restarted", "bad.0");
    let bad = sup.replica("bad", 0);
    assert_eq!(bad["last_exit"]["code"], 3, "{bad:#}");
    let good = sup.replica("good", 0);
    assert_eq!(good["state"], "exited", "{good:#}");
    assert_eq!(good["last_exit"]["code"], 0, "{good:#}");
    assert_eq!(
        sup.events().count("restarted", "good.0"),
        0,
        "good.0 was restarted after a clean exit\n{}",
        sup.events().dump()
    );
    assert!(sup.is_running());
}

#[test]
fn policy_never_fails_after_exit_1_and_finishes_after_exit_0() {
    let mut sup = Supervise::start(
        r#"
[services.good]
command = ["sh", "-c", "exit 0"]
restart = { policy = "never", delay = "50ms" }

[services.bad]
command = ["sh", "-c", "exit 1"]
restart = { policy = "never", delay = "50ms" }
"#,
    );
    sup.expect("exited", "good.0");
    sup.expect("failed", "bad.0");
    let (good, bad) = (sup.replica("good", 0), sup.replica("bad", 0));
    assert_eq!(
        (&good["state"], &good["last_exit"]["code"]),
        (&"exited".into(), &0.into()),
        "{good:#}"
    );
    assert_eq!(
        (&bad["state"], &bad["last_exit"]["code"]),
        (&"failed".into(), &1.into()),
        "{bad:#}"
    );
    // Well past the 50ms delay: nothing is started again.
    assert!(
        sup.events()
            .wait_from(0, Duration::from_millis(700), |e| e.event == "restarted")
            .is_none(),
        "a replica under `never` was restarted\n{}",
        sup.events().dump()
    );
    assert!(sup.is_running());
}

#[test]
fn exit_codes_make_exit_3_a_success_under_on_failure() {
    let sup = Supervise::start(
        r#"
[services.job]
command = ["sh", "-c", "exit 3"]
restart = { policy = "on-failure", exit_codes = [0, 3], delay = "50ms" }
"#,
    );
    sup.expect("exited", "job.0");
    let job = sup.replica("job", 0);
    assert_eq!(
        (&job["state"], &job["last_exit"]["code"]),
        (&"exited".into(), &3.into()),
        "{job:#}"
    );
    assert!(
        sup.events()
            .wait_from(0, Duration::from_millis(500), |e| e.event == "restarted")
            .is_none()
    );
}

#[test]
fn backoff_doubles_from_delay_and_is_capped_at_max_delay() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "echo start $(date +%s%N); exit 1"]
restart = { delay = "100ms", max_delay = "400ms", limit = 50, window = "60s" }
"#,
    );
    let expected_ms = [100u64, 200, 400, 400, 400];
    let mut announced = Vec::new();
    let mut from = 0;
    for n in 1..=expected_ms.len() {
        let exited = sup
            .events()
            .expect_from(from, SOON, "exited web.0", |e| e.is("exited", "web.0"));
        // The delay the policy chose is told only in the event's detail.
        let (count, delay) = parse_restart(&exited.detail)
            .unwrap_or_else(|| panic!("no restart announced: {exited:?}"));
        assert_eq!(count as usize, n);
        announced.push(delay);
        from = exited.index + 1;
    }
    for (n, (delay, base)) in announced.iter().zip(expected_ms).enumerate() {
        let base = Duration::from_millis(base);
        let (low, high) = (base.mul_f64(0.9), base.mul_f64(1.1));
        assert!(
            *delay >= low - Duration::from_millis(1) && *delay <= high + Duration::from_millis(1),
            "restart {}: announced {delay:?}, expected {base:?} ±10%; all: {announced:?}",
            n + 1
        );
    }
    // The replica stamps each start with its own clock: incarnation n starts
    // at least restart n's delay after incarnation n-1 printed (and then exited).
    assert!(
        wait_until(SOON, || sup.output().len() > expected_ms.len()),
        "expected {} starts\n{}",
        expected_ms.len() + 1,
        sup.transcript()
    );
    let starts: Vec<u128> = sup
        .output()
        .iter()
        .filter(|(r, _)| r == "web.0")
        .map(|(_, t)| {
            t.strip_prefix("start ")
                .and_then(|ns| ns.parse().ok())
                .unwrap_or_else(|| panic!("unexpected output {t:?}"))
        })
        .collect();
    for (n, delay) in announced.iter().enumerate() {
        let gap = Duration::from_nanos((starts[n + 1] - starts[n]) as u64);
        assert!(
            gap >= delay.mul_f64(0.9),
            "restart {} came {gap:?} after the previous start, announced {delay:?}",
            n + 1
        );
    }
}

#[test]
fn crash_loop_fails_after_limit_restarts_within_window_and_stays_down() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "echo start; exit 1"]
restart = { delay = "50ms", max_delay = "100ms", limit = 3, window = "10s" }
"#,
    );
    let failed = sup.expect("failed", "web.0");
    let events = sup.events();
    assert_eq!(events.count("exited", "web.0"), 3, "{}", events.dump());
    assert_eq!(events.count("restarted", "web.0"), 3, "{}", events.dump());
    let web = sup.replica("web", 0);
    assert_eq!(
        (&web["state"], &web["restarts"], &web["last_exit"]["code"]),
        (&"failed".into(), &3.into(), &1.into()),
        "{web:#}"
    );
    assert!(
        wait_until(SOON, || sup.output().len() >= 4),
        "four starts expected\n{}",
        sup.transcript()
    );
    // Well past the last delay (≤ 110ms): no further start.
    assert!(
        events
            .wait_from(failed.index + 1, Duration::from_secs(1), |e| e
                .concerns("web.0"))
            .is_none(),
        "the failed replica was started again\n{}",
        events.dump()
    );
    assert_eq!(sup.output().len(), 4, "{}", sup.transcript());
    assert!(
        sup.is_running(),
        "a failed replica must not end the supervisor"
    );
}

/// With `delay = "0s"` the shim restarts the replica itself, under a leave
/// no wider than the policy, and the supervisor hears of it afterwards.
#[test]
fn zero_delay_restarts_come_from_the_same_shim_and_the_limit_still_holds() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "0s", limit = 3, window = "1h" }
"#,
    );
    let mut spawned = sup.expect("spawned", "web.0");
    let mut pid = spawned.pid.unwrap();
    let (_, shim) = proc_stat(pid).unwrap();
    for n in 1..=3 {
        kill9(pid);
        let next;
        (spawned, next) = sup.expect_restart("web.0", pid);
        assert_eq!(
            proc_stat(next).map(|s| s.1),
            Some(shim),
            "restart {n} did not come from the same shim"
        );
        let replica = sup.replica("web", 0);
        assert_eq!(replica["pid"], next, "{replica:#}");
        assert_eq!(replica["restarts"], n, "{replica:#}");
        pid = next;
    }
    // The leave is spent: the fourth end is the supervisor's to judge.
    kill9(pid);
    let failed = sup.expect_after(&spawned, "failed", "web.0");
    assert_eq!(failed.pid, Some(pid));
    assert!(
        wait_until(SOON, || proc_stat(shim).is_none()),
        "the shim of a failed replica is still there"
    );
    let replica = sup.replica("web", 0);
    assert_eq!(
        (&replica["state"], &replica["restarts"]),
        (&"failed".into(), &3.into()),
        "{replica:#}"
    );
}

#[test]
fn zero_delay_on_failure_is_not_restarted_after_a_success() {
    let sup = Supervise::start(
        r#"
[services.job]
command = ["sh", "-c", "if [ -e ran ]; then exit 0; fi; touch ran; exit 3"]
restart = { policy = "on-failure", delay = "0s" }
"#,
    );
    let failure = sup.expect("exited", "job.0");
    let restarted = sup.expect_after(&failure, "restarted", "job.0");
    let success = sup.expect_after(&restarted, "exited", "job.0");
    assert!(
        sup.events()
            .wait_from(success.index + 1, Duration::from_millis(300), |e| {
                e.is("restarted", "job.0")
            })
            .is_none(),
        "{}",
        sup.events().dump()
    );
    let job = sup.replica("job", 0);
    assert_eq!(
        (&job["state"], &job["restarts"], &job["last_exit"]["code"]),
        (&"exited".into(), &1.into(), &0.into()),
        "{job:#}"
    );
}

#[test]
fn every_incarnation_is_announced_even_when_it_exits_at_once() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["true"]
replicas = 4
restart = { delay = "10ms", max_delay = "10ms", limit = 5, window = "60s" }
"#,
    );
    for i in 0..4 {
        sup.expect("failed", &format!("web.{i}"));
    }
    let events = sup.events();
    for i in 0..4 {
        let who = format!("web.{i}");
        // Each incarnation: spawned, then its end (exited, the last failed).
        let order: Vec<String> = events
            .matching(|e| {
                e.concerns(&who) && ["spawned", "exited", "failed"].contains(&e.event.as_str())
            })
            .into_iter()
            .map(|e| e.event)
            .collect();
        let mut wanted: Vec<&str> = ["spawned", "exited"].repeat(6);
        wanted[11] = "failed";
        assert_eq!(
            order,
            wanted,
            "{who}: 1 start + 5 restarts, each announced before its end\n{}",
            events.dump()
        );
    }
    assert!(sup.is_running());
}

#[test]
fn missing_binary_is_reported_and_retried_while_the_supervisor_keeps_running() {
    let mut sup = Supervise::start(
        r#"
[services.ghost]
command = ["/nonexistent/supervise-test-no-such-binary"]
restart = { delay = "50ms", max_delay = "100ms", limit = 2, window = "30s" }

[services.ok]
command = ["sleep", "1000"]
"#,
    );
    let ok = sup.expect_spawned("ok.0");
    let not_started = sup.expect("spawn_failed", "ghost.0");
    assert!(
        not_started.detail.contains("No such file or directory"),
        "{not_started:?}"
    );
    let failed = sup.expect("failed", "ghost.0");
    let events = sup.events();
    assert_eq!(events.count("restarted", "ghost.0"), 2, "{}", events.dump());
    assert_eq!(events.count("spawned", "ghost.0"), 0, "{}", events.dump());
    assert_eq!(sup.replica("ghost", 0)["state"], "failed");
    assert!(failed.index > not_started.index);
    assert!(sup.is_running());
    assert!(is_alive(ok), "the healthy service was disturbed");
    sup.signal(Signal::SIGINT);
    sup.expect_exit(SOON);
    sup.assert_nothing_left();
}

#[test]
fn a_tight_crash_loop_keeps_the_checkpoint_small() {
    let mut sup = Supervise::start(
        r#"
[services.crash]
command = ["false"]
restart = { delay = "0s", limit = 0 }
"#,
    );
    let state_dir = sup.state_dir();
    let restarts = || {
        socket_status(&state_dir)
            .and_then(|r| replica_in(&r, "crash", 0)["restarts"].as_u64())
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || restarts() >= 2000),
        "{} restarts in a minute",
        restarts()
    );
    // Written at most 20 ms after the last change: the loop goes on meanwhile.
    let mut size = 0;
    let settled = wait_until(SOON, || {
        let memo = std::fs::read(state_dir.join("checkpoint.json")).unwrap_or_default();
        size = memo.len();
        serde_json::from_slice::<serde_json::Value>(&memo)
            .is_ok_and(|cp| cp["replicas"]["crash.0"]["restarts"].as_u64() >= Some(2000))
    });
    assert!(settled, "no checkpoint of 2000 restarts");
    assert!(size < 4096, "a checkpoint of {size} bytes for one replica");
    sup.signal(Signal::SIGTERM);
    sup.expect_exit(SOON);
    sup.assert_nothing_left();
}

/// Every restart counted is told by its `restarted` event, also one a shim
/// made by itself (`delay = "0s"`) just before `down` reached it: after
/// `down`, the restart numbers of the events are exactly 1..=the count the
/// checkpoint keeps. Read from the display: events recorded as the
/// supervisor exits may not reach a follower.
#[test]
fn every_counted_restart_has_its_event_also_while_stopping() {
    let mut sup = Supervise::start(
        r#"
[services.crash]
command = ["false"]
replicas = 8
restart = { delay = "0s", limit = 0 }
"#,
    );
    let state_dir = sup.state_dir();
    let looping = wait_until(SOON, || {
        socket_status(&state_dir).is_some_and(|r| {
            (0..8).all(|i| replica_in(&r, "crash", i)["restarts"].as_u64() >= Some(50))
        })
    });
    assert!(looping, "the crash loop did not get going");
    let mut down = Command::new(env!("CARGO_BIN_EXE_supervise"));
    down.arg("down").current_dir(sup.dir());
    run_bounded(down, SOON).expect(0);
    assert_eq!(sup.expect_exit(SOON), 0);
    sup.drain(SOON);

    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("checkpoint.json")).unwrap()).unwrap();
    let events = sup.said();
    let told = regex::Regex::new(r"^restarting (crash\.\d) \(restart (\d+)\)$").unwrap();
    for i in 0..8 {
        let name = format!("crash.{i}");
        let counted = checkpoint["replicas"][&name]["restarts"].as_u64().unwrap();
        let numbers: Vec<u64> = events
            .iter()
            .filter_map(|e| told.captures(e))
            .filter(|c| c[1] == name)
            .map(|c| c[2].parse().unwrap())
            .collect();
        assert_eq!(
            numbers,
            (1..=counted).collect::<Vec<u64>>(),
            "{name}: {counted} restarts counted, these told"
        );
    }
    sup.assert_nothing_left();
}

#[test]
fn server_killed_while_holding_its_port_is_restarted_on_the_same_port() {
    let port = free_port();
    let script = r#"
import os, socket, sys, time
port = int(os.environ["PORT"])
s = socket.socket()
try:
    s.bind(("127.0.0.1", port))
except OSError as e:
    print("bind failed:", e, flush=True)
    sys.exit(1)
s.listen()
if os.fork() == 0:
    time.sleep(1000)
    os._exit(0)
print("listening", os.getpid(), flush=True)
time.sleep(1000)
"#;
    let spec = format!(
        r#"
[services.web]
command = ["python3", "-c", '''{script}''']
port = {port}
restart = {{ delay = "100ms" }}
"#
    );
    let sup = Supervise::start(&spec);
    let (first_line, caps) = sup.expect_output("web.0", r"^listening (\d+)$", SOON);
    let first: i32 = caps[1].parse().unwrap();
    let holders = descendants(first);
    assert_eq!(holders.len(), 1, "the forked listener: {holders:?}");
    kill9(first);
    sup.expect_restart("web.0", first);
    let second = sup.out.wait_from(first_line.index + 1, SOON, |l| {
        output_text(l)
            .is_some_and(|(_, t)| t.starts_with("listening ") || t.starts_with("bind failed"))
    });
    let second = second.unwrap_or_else(|| panic!("no second incarnation\n{}", sup.transcript()));
    assert!(
        output_text(&second.text)
            .unwrap()
            .1
            .starts_with("listening "),
        "the restart met its ghost: {}\n{}",
        second.text,
        sup.transcript()
    );
    assert!(!is_alive(holders[0]), "the old listener is still alive");
    assert!(
        !sup.out
            .texts()
            .iter()
            .any(|l| l.contains("Address already in use")),
        "{}",
        sup.transcript()
    );
}

/// Starts go on while the supervisor's children end all the time (every
/// end is a SIGCHLD, which interrupts its wait for the zygote's reply): a
/// start is never given up on as "the zygote failed", which would leave
/// the shim it forked running unsupervised.
#[test]
fn starts_survive_a_storm_of_sigchld() {
    let sup = Supervise::start(
        r#"
[services.probed]
command = ["sleep", "1000"]
replicas = 4
health = { exec = ["true"], interval = "5ms" }

[services.crash]
command = ["sh", "-c", "exit 1"]
replicas = 4
restart = { delay = "10ms", max_delay = "10ms", limit = 0 }
"#,
    );
    sup.expect("healthy", "probed.3");
    // Hundreds of starts, each under thousands of probe ends a second.
    assert!(
        wait_until(SOON * 3, || sup.restarts("crash", 0) >= 100),
        "{} restarts",
        sup.restarts("crash", 0)
    );
    let failed = sup.events().matching(|e| e.event == "spawn_failed");
    assert!(failed.is_empty(), "{failed:#?}");
    let status = sup.status();
    for i in 0..4 {
        let replica = replica_in(&status, "crash", i);
        assert_ne!(replica["state"], "failed", "{replica:#}");
    }
}
