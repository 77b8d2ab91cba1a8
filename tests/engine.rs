//! End-to-end tests of the engine: the real binary, real processes, real
//! signals. Each test runs its own `supervise up` in its own temporary
//! directory (state dir, logs, ports), so they can run in parallel. Every
//! wait has a deadline; bounds are generous for a noisy 2-core machine.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn kill9(pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGKILL).expect("kill -9");
}

/// Asserts that nothing of this supervisor is left once it has exited.
fn assert_nothing_left(sup: &Supervise) {
    let left_ok = wait_until(Duration::from_secs(5), || sup.marked().is_empty());
    assert!(
        left_ok,
        "processes left after the supervisor exited: {:?}\n{}",
        sup.marked(),
        sup.transcript()
    );
}

/// Position of the first event matching `re`, or a panic naming it.
fn position(events: &[String], re: &str) -> usize {
    let re = regex::Regex::new(re).unwrap();
    events
        .iter()
        .position(|e| re.is_match(e))
        .unwrap_or_else(|| panic!("no event matching /{re}/ in {events:#?}"))
}

fn last_position(events: &[String], re: &str) -> usize {
    let re = regex::Regex::new(re).unwrap();
    events
        .iter()
        .rposition(|e| re.is_match(e))
        .unwrap_or_else(|| panic!("no event matching /{re}/ in {events:#?}"))
}

// ---------------------------------------------------------------- harness

#[test]
fn harness_guard_kills_everything_even_after_the_supervisor_was_killed() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "sleep 1000 & setsid sleep 1000 & echo ready; wait"]
"#,
    );
    sup.expect_output("web.0", "^ready$", SOON);
    let marker = sup.marker().to_string();
    // supervisor, shim, sh, two sleeps
    assert!(
        wait_until(SOON, || marked_processes(&marker).len() >= 5),
        "expected at least 5 marked processes, found {:?}",
        marked_processes(&marker)
    );
    kill9(sup.pid);
    assert!(
        sup.wait_exit(SOON).is_some(),
        "kill -9 did not end supervise"
    );
    // The shims outlive a killed supervisor by design: the guard has work to do.
    assert!(
        !marked_processes(&marker).is_empty(),
        "nothing survived the supervisor: the guard test proves nothing"
    );
    drop(sup);
    assert_eq!(marked_processes(&marker), Vec::<i32>::new());
}

// ---------------------------------------------------------------- restarts

#[test]
fn killed_replica_is_restarted_with_a_new_pid_and_no_zombie_is_left() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "100ms" }
"#,
    );
    let (first_line, first) = sup.expect_spawned_from(0, "web.0");
    let (_, old_shim) = proc_stat(first).expect("the replica is running");
    kill9(first);
    let (restart, _) =
        sup.expect_event(r"^web\.0 was killed by SIGKILL; restart 1 in \d+ms$", SOON);
    assert!(restart.index > first_line.index);
    sup.expect_event_from(restart.index, r"^restarting web\.0 \(restart 1\)$", SOON);
    let (_, second) = sup.expect_spawned_from(restart.index, "web.0");
    assert_ne!(second, first, "the restarted replica has the old pid");
    assert!(is_alive(second));
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
    sup.expect_event(r"^web\.0 exited with code 0; restart 1 in \d+ms$", SOON);
    sup.expect_event(r"^restarting web\.0 \(restart 1\)$", SOON);
    sup.expect_event(r"^web\.0 exited with code 0; restart 2 in \d+ms$", SOON);
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
    sup.expect_event(r"^good\.0 exited with code 0; done$", SOON);
    sup.expect_event(r"^bad\.0 exited with code 3; restart 1 in \d+ms$", SOON);
    sup.expect_event(r"^bad\.0 exited with code 3; restart 2 in \d+ms$", SOON);
    assert!(
        !sup.events().iter().any(|e| e.contains("restarting good.0")),
        "good.0 was restarted after a clean exit\n{}",
        sup.transcript()
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
    sup.expect_event(r"^good\.0 exited with code 0; done$", SOON);
    sup.expect_event(r"^bad\.0 exited with code 1; failed", SOON);
    // Well past the 50ms delay: nothing is started again.
    assert!(
        sup.event_from(
            0,
            r"^restarting |restart \d+ in",
            Duration::from_millis(700)
        )
        .is_none(),
        "a replica under `never` was restarted\n{}",
        sup.transcript()
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
    sup.expect_event(r"^job\.0 exited with code 3; done$", SOON);
    assert!(
        sup.event_from(0, r"^restarting ", Duration::from_millis(500))
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
    for (n, _) in expected_ms.iter().enumerate() {
        let re = format!(r"^web\.0 exited with code 1; restart {} in ", n + 1);
        let (line, _) = sup.expect_event_from(from, &re, SOON);
        let (_, count, delay) = parse_restart(event_text(&line.text).unwrap()).unwrap();
        assert_eq!(count as usize, n + 1);
        announced.push(delay);
        from = line.index + 1;
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
    let (failed, _) = sup.expect_event(
        r"^web\.0 exited with code 1; failed \(3 restarts within 10s\)$",
        SOON,
    );
    let events = sup.events();
    for n in 1..=3 {
        position(
            &events,
            &format!(r"^web\.0 exited with code 1; restart {n} in "),
        );
    }
    assert_eq!(
        events.iter().filter(|e| e.contains("; restart ")).count(),
        3,
        "{events:#?}"
    );
    assert!(
        wait_until(SOON, || sup.output().len() >= 4),
        "four starts expected\n{}",
        sup.transcript()
    );
    // Well past the last delay (≤ 110ms): no further start.
    assert!(
        sup.event_from(
            failed.index + 1,
            r"^(restarting|spawned) web\.0",
            Duration::from_secs(1)
        )
        .is_none(),
        "the failed replica was started again\n{}",
        sup.transcript()
    );
    assert_eq!(sup.output().len(), 4, "{}", sup.transcript());
    assert!(
        sup.is_running(),
        "a failed replica must not end the supervisor"
    );
}

// With `delay = "0s"` the shim restarts the replica itself, under a leave
// no wider than the policy, and the supervisor hears of it afterwards.

#[test]
fn zero_delay_restarts_come_from_the_same_shim_and_the_limit_still_holds() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "0s", limit = 3, window = "1h" }
"#,
    );
    let mut pid = sup.expect_spawned("web.0");
    let (_, shim) = proc_stat(pid).unwrap();
    for n in 1..=3 {
        kill9(pid);
        let (restart, _) = sup.expect_event(
            &format!(r"^web\.0 was killed by SIGKILL; restart {n} in 0s$"),
            SOON,
        );
        sup.expect_event_from(
            restart.index,
            &format!(r"^restarting web\.0 \(restart {n}\)$"),
            SOON,
        );
        let (_, next) = sup.expect_spawned_from(restart.index, "web.0");
        assert_eq!(
            proc_stat(next).map(|s| s.1),
            Some(shim),
            "restart {n} did not come from the same shim"
        );
        let report = socket_status(&sup.state_dir()).unwrap();
        let replica = replica_in(&report, "web", 0);
        assert_eq!(replica["pid"], next, "{report:#}");
        assert_eq!(replica["restarts"], n, "{report:#}");
        pid = next;
    }
    // The leave is spent: the fourth end is the supervisor's to judge.
    kill9(pid);
    sup.expect_event(
        r"^web\.0 was killed by SIGKILL; failed \(3 restarts within 1h\)$",
        SOON,
    );
    assert!(
        wait_until(SOON, || proc_stat(shim).is_none()),
        "the shim of a failed replica is still there"
    );
    let report = socket_status(&sup.state_dir()).unwrap();
    assert_eq!(
        replica_in(&report, "web", 0)["state"],
        "failed",
        "{report:#}"
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
    let (failure, _) = sup.expect_event(r"^job\.0 exited with code 3; restart 1 in 0s$", SOON);
    sup.expect_event_from(failure.index, r"^job\.0 exited with code 0; done$", SOON);
    assert!(
        sup.event_from(failure.index, r"restart 2", Duration::from_millis(300))
            .is_none(),
        "{}",
        sup.transcript()
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
        sup.expect_event(&format!(r"^web\.{i} exited with code 0; failed "), SOON);
    }
    let events = sup.events();
    for i in 0..4 {
        let exits = events
            .iter()
            .filter(|e| e.starts_with(&format!("web.{i} exited with code 0;")))
            .count();
        let spawns = events
            .iter()
            .filter(|e| e.starts_with(&format!("spawned web.{i} (pid ")))
            .count();
        assert_eq!(exits, 6, "web.{i}: 1 start + 5 restarts\n{events:#?}");
        assert_eq!(
            spawns, exits,
            "web.{i}: a spawn was not announced\n{events:#?}"
        );
        // …and each is announced before its exit.
        let order: Vec<bool> = events
            .iter()
            .filter_map(|e| {
                if e.starts_with(&format!("spawned web.{i} ")) {
                    Some(true)
                } else if e.starts_with(&format!("web.{i} exited")) {
                    Some(false)
                } else {
                    None
                }
            })
            .collect();
        assert!(
            order.chunks(2).all(|c| c == [true, false]),
            "web.{i}: spawned/exited out of order\n{events:#?}"
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
    sup.expect_event(
        r"^ghost\.0 could not be started: .*No such file or directory",
        SOON,
    );
    sup.expect_event(r"^ghost\.0 could not start; restart 1 in \d+ms$", SOON);
    sup.expect_event(r"^ghost\.0 could not start; restart 2 in \d+ms$", SOON);
    sup.expect_event(r"^ghost\.0 could not start; failed", SOON);
    assert!(sup.is_running());
    assert!(is_alive(ok), "the healthy service was disturbed");
    sup.signal(Signal::SIGINT);
    sup.expect_exit(SOON);
    assert_nothing_left(&sup);
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
    assert_nothing_left(&sup);
}

/// Every restart counted is told by its `restarted` event, also one a shim
/// made by itself (`delay = "0s"`) just before `down` reached it: after
/// `down`, the restart numbers of the events are exactly 1..=the count the
/// checkpoint keeps.
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
    let events = sup.events();
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
    assert_nothing_left(&sup);
}

// ---------------------------------------------------------------- stopping

#[test]
fn child_ignoring_sigterm_is_killed_after_stop_timeout() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"]
stop_timeout = "500ms"
"#,
    );
    sup.expect_output("web.0", "^ready$", SOON);
    let t0 = Instant::now();
    sup.signal(Signal::SIGINT);
    let (stopped, _) = sup.expect_event(r"^stopped web\.0 \(was killed by SIGKILL\)$", SOON);
    let took = stopped.at - t0;
    assert!(
        took >= Duration::from_millis(450),
        "killed after {took:?}, before stop_timeout (500ms)"
    );
    assert!(took < Duration::from_secs(5), "killed only after {took:?}");
    assert_eq!(sup.expect_exit(SOON), 0);
    assert_nothing_left(&sup);
}

#[test]
fn a_process_forked_while_the_stop_signal_goes_out_gets_it_too() {
    // The replica forks without pause, so the stop meets forks in flight: a
    // child whose fork raced a scan of the tree would only be killed at
    // stop_timeout.
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "echo ready; i=0; while [ $i -lt 3000 ]; do sleep 1000 & i=$((i+1)); done; wait"]
stop_timeout = "60s"
"#,
    );
    sup.expect_output("web.0", "^ready$", SOON);
    // Many processes make a scan of the tree long, and the forks go on.
    assert!(wait_until(SOON, || sup.marked().len() > 300));
    let t0 = Instant::now();
    sup.signal(Signal::SIGINT);
    let (stopped, _) = sup.expect_event(r"^stopped web\.0 \(was killed by SIGTERM\)$", SOON);
    let took = stopped.at - t0;
    assert!(took < Duration::from_secs(5), "stopped only after {took:?}");
    assert_eq!(sup.expect_exit(SOON), 0);
    assert_nothing_left(&sup);
}

#[test]
fn the_replica_starts_with_no_blocked_and_no_ignored_signals() {
    // As under nohup (and a shell's background job), the supervisor starts
    // with SIGHUP and SIGQUIT ignored, which exec passes on.
    let sup = Supervise::builder(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "0s" }
"#,
    )
    .wrapped(&["sh", "-c", "trap '' HUP QUIT; \"$@\"; exit $?", "sh"])
    .start();
    let check = |incarnation: &str, pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let mask = |key: &str| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .trim();
            u64::from_str_radix(hex, 16).unwrap()
        };
        assert_eq!(
            mask("SigBlk:"),
            0,
            "{incarnation}: blocked signals\n{status}"
        );
        // Signals 1-31; glibc's own 32 and 33 are its business.
        assert_eq!(
            mask("SigIgn:") & 0x7fff_ffff,
            0,
            "{incarnation}: ignored signals\n{status}"
        );
    };
    let first = sup.expect_spawned("web.0");
    check("the first start", first);
    kill9(first);
    let (restart, _) = sup.expect_event(r"^web\.0 was killed by SIGKILL; restart 1 in 0s$", SOON);
    check(
        "a restart by the shim",
        sup.expect_spawned_from(restart.index, "web.0").1,
    );
}

#[test]
fn forty_replicas_start_under_a_soft_limit_of_64_open_files_which_they_get_back() {
    // Two descriptors per replica in the supervisor do not fit in 64: it
    // lifts its own soft limit to the hard one, and restores it for replicas.
    let sup = Supervise::builder(
        r#"
[services.web]
command = ["sleep", "1000"]
replicas = 40
"#,
    )
    .wrapped(&["sh", "-c", "ulimit -S -n 64; \"$@\"; exit $?", "sh"])
    .start();
    let pids: Vec<i32> = (0..40)
        .map(|i| sup.expect_spawned(&format!("web.{i}")))
        .collect();
    assert!(
        sup.event_from(0, r"could not be started", Duration::from_millis(200))
            .is_none(),
        "{}",
        sup.transcript()
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pids[39])).unwrap();
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_eq!(soft, "64", "{limits}");
}

#[test]
fn stop_signal_is_what_the_child_receives() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "trap 'echo got INT; exit 0' INT; echo ready; while :; do sleep 0.1; done"]
stop_signal = "SIGINT"
stop_timeout = "20s"
"#,
    );
    sup.expect_output("web.0", "^ready$", SOON);
    let t0 = Instant::now();
    sup.signal(Signal::SIGINT);
    sup.expect_output("web.0", "^got INT$", SOON);
    let (stopped, _) = sup.expect_event(r"^stopped web\.0 \(exited with code 0\)$", SOON);
    assert!(
        stopped.at - t0 < Duration::from_secs(8),
        "the replica was not stopped by its stop signal"
    );
    assert_eq!(sup.expect_exit(SOON), 0);
    assert_nothing_left(&sup);
}

#[test]
fn grandchildren_that_left_the_group_die_with_the_replica() {
    let setsid = if have("setsid") {
        "setsid sleep 1000 &".to_string()
    } else {
        "python3 -c 'import os; os.setsid(); os.execvp(\"sleep\", [\"sleep\", \"1000\"])' &"
            .to_string()
    };
    let spec = format!(
        r#"
[services.web]
command = ["sh", "-c", '''
sleep 1000 & echo "child $!"
{setsid} echo "setsid $!"
python3 -c '
import os, sys, time
if os.fork(): sys.exit(0)
os.setsid()
if os.fork(): os._exit(0)
print("daemon", os.getpid(), flush=True)
time.sleep(1000)
'
echo ready
wait
''']
"#
    );
    let mut sup = Supervise::start(&spec);
    let replica = sup.expect_spawned("web.0");
    let pid_of = |what: &str| -> i32 {
        let (_, caps) = sup.expect_output("web.0", &format!(r"^{what} (\d+)$"), SOON);
        caps[1].parse().unwrap()
    };
    let (child, setsid_child, daemon) = (pid_of("child"), pid_of("setsid"), pid_of("daemon"));
    sup.expect_output("web.0", "^ready$", SOON);
    let (_, shim) = proc_stat(replica).unwrap();
    let replica_session = session_of(replica).unwrap();
    for pid in [child, setsid_child, daemon] {
        assert!(is_alive(pid), "{pid} is not running");
    }
    // The test is about what it claims: two of them left the replica's session,
    // and the double-forked one was re-parented (to the shim, a subreaper).
    assert!(
        wait_until(SOON, || session_of(setsid_child) != Some(replica_session)),
        "setsid grandchild is still in the replica's session"
    );
    assert_ne!(session_of(daemon), Some(replica_session));
    // Its intermediate parent may not have exited yet.
    assert!(
        wait_until(SOON, || proc_stat(daemon).map(|s| s.1) == Some(shim)),
        "the double-forked grandchild was not re-parented to the shim: {:?}",
        proc_stat(daemon)
    );

    sup.signal(Signal::SIGINT);
    assert_eq!(sup.expect_exit(SOON), 0);
    for pid in [replica, child, setsid_child, daemon] {
        assert!(!is_alive(pid), "{pid} survived the shutdown");
    }
    assert_nothing_left(&sup);
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
    sup.expect_event(r"^web\.0 was killed by SIGKILL; restart 1 in ", SOON);
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

#[test]
fn exit_with_returns_the_job_exit_code_and_stops_the_rest() {
    let mut sup = Supervise::builder(
        r#"
[services.srv]
command = ["sleep", "1000"]

[services.job]
command = ["sh", "-c", "echo working; exit 7"]
restart = { policy = "never" }
depends_on = { srv = "started" }
"#,
    )
    .arg("--exit-with")
    .arg("job")
    .start();
    let srv = sup.expect_spawned("srv.0");
    assert_eq!(sup.expect_exit(SOON), 7, "{}", sup.transcript());
    sup.drain(SOON);
    let events = sup.events();
    let job_exit = position(&events, r"^job\.0 exited with code 7");
    let stopping = position(&events, r"^stopping srv\.0");
    let stopped = position(&events, r"^stopped srv\.0 \(was killed by SIGTERM\)$");
    assert!(job_exit < stopping && stopping < stopped, "{events:#?}");
    position(&events, r"^exiting with code 7$");
    assert!(!is_alive(srv));
    assert_nothing_left(&sup);
}

#[test]
fn ctrl_c_stops_in_reverse_dependency_order_and_exits_0() {
    let mut sup = Supervise::start(
        r#"
[services.db]
command = ["sleep", "1000"]

[services.api]
command = ["sleep", "1000"]
depends_on = { db = "started" }

[services.web]
command = ["sleep", "1000"]
replicas = 2
depends_on = { api = "started" }
"#,
    );
    sup.expect_spawned("web.0");
    sup.expect_spawned("web.1");
    sup.signal(Signal::SIGINT);
    assert_eq!(sup.expect_exit(SOON), 0, "{}", sup.transcript());
    sup.drain(SOON);
    let events = sup.events();
    // Started in dependency order…
    assert!(position(&events, r"^spawned db\.0") < position(&events, r"^spawned api\.0"));
    assert!(position(&events, r"^spawned api\.0") < position(&events, r"^spawned web\.0"));
    // …stopped in reverse: a service is asked to stop only once its dependants are down.
    let web_down = last_position(&events, r"^stopped web\.");
    let api_stopping = position(&events, r"^stopping api\.0");
    let api_down = position(&events, r"^stopped api\.0");
    let db_stopping = position(&events, r"^stopping db\.0");
    let db_down = position(&events, r"^stopped db\.0");
    assert!(
        web_down < api_stopping,
        "api stopped before web was down: {events:#?}"
    );
    assert!(
        api_down < db_stopping,
        "db stopped before api was down: {events:#?}"
    );
    assert!(db_down < position(&events, r"^exiting with code 0$"));
    assert_nothing_left(&sup);
}

#[test]
fn second_ctrl_c_kills_at_once() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "trap '' TERM; echo ready; while :; do sleep 0.1; done"]
stop_timeout = "30s"
"#,
    );
    let replica = sup.expect_spawned("web.0");
    sup.expect_output("web.0", "^ready$", SOON);
    sup.signal(Signal::SIGINT);
    sup.expect_event(r"^stopping web\.0", SOON);
    let t0 = Instant::now();
    sup.signal(Signal::SIGINT);
    assert_eq!(sup.expect_exit(Duration::from_secs(15)), 130);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the second Ctrl-C took {:?}",
        t0.elapsed()
    );
    assert!(!is_alive(replica));
    assert_nothing_left(&sup);
}

// ---------------------------------------------------------------- state dir, logs

#[test]
fn killed_shim_takes_every_process_of_its_replica_with_it() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "setsid sleep 1000 & echo \"setsid $!\"; exec sleep 1000"]
restart = { delay = "100ms" }
"#,
    );
    let replica = sup.expect_spawned("web.0");
    let (_, caps) = sup.expect_output("web.0", r"^setsid (\d+)$", SOON);
    let escaped: i32 = caps[1].parse().unwrap();
    let (_, shim) = proc_stat(replica).unwrap();
    assert!(is_alive(escaped));
    kill9(shim);
    // What the shim leaves (the main process, re-parented to the supervisor,
    // and the one that left the session) is found by the replica's
    // environment marker and killed.
    sup.expect_event(r"^killed \d+ leftover process\(es\) of web\.0$", SOON);
    let (restart, _) =
        sup.expect_event(r"^web\.0 ended \(exit status unknown\); restart 1 in", SOON);
    assert!(
        wait_until(SOON, || !is_alive(replica) && !is_alive(escaped)),
        "replica {replica} or escaped grandchild {escaped} survived its shim"
    );
    sup.expect_spawned_from(restart.index, "web.0");
}

#[test]
fn a_killed_zygote_leaves_running_replicas_alone_and_is_replaced_at_the_next_start() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
replicas = 2
restart = { delay = "10ms" }
"#,
    );
    let first = sup.expect_spawned("web.0");
    let other = sup.expect_spawned("web.1");
    let (_, shim) = proc_stat(first).unwrap();
    let (_, zygote) = proc_stat(shim).unwrap();
    assert_eq!(proc_stat(zygote).map(|s| s.1), Some(sup.pid));
    kill9(zygote);
    assert!(
        wait_until(SOON, || proc_stat(zygote).is_none()),
        "the killed zygote {zygote} was not reaped"
    );
    // Its shims were re-parented to the supervisor (a subreaper) and run on.
    assert_eq!(proc_stat(shim).map(|s| s.1), Some(sup.pid));
    assert!(is_alive(first) && is_alive(other));

    kill9(first);
    let (restart, _) =
        sup.expect_event(r"^web\.0 was killed by SIGKILL; restart 1 in \d+ms$", SOON);
    let (_, second) = sup.expect_spawned_from(restart.index, "web.0");
    let (_, new_shim) = proc_stat(second).unwrap();
    let (_, new_zygote) = proc_stat(new_shim).unwrap();
    assert_ne!(new_zygote, zygote);
    assert_eq!(proc_stat(new_zygote).map(|s| s.1), Some(sup.pid));
    assert!(is_alive(other), "web.1 was disturbed");
    // A re-parented shim's end is seen and judged like any other.
    kill9(other);
    let (restart, _) =
        sup.expect_event(r"^web\.1 was killed by SIGKILL; restart 1 in \d+ms$", SOON);
    sup.expect_spawned_from(restart.index, "web.1");
    assert!(
        wait_until(SOON, || zombies_under(sup.pid).is_empty()),
        "zombies under the supervisor: {:?}",
        zombies_under(sup.pid)
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
    sup.expect_event(r"^probed\.3 is healthy$", SOON);
    // Hundreds of starts, each under thousands of probe ends a second.
    sup.expect_event(r"^crash\.0 exited with code 1; restart 100 in ", SOON * 3);
    let failed: Vec<String> = sup
        .events()
        .into_iter()
        .filter(|e| e.contains("could not") || e.contains("still running"))
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
}

#[test]
fn an_adopted_shim_leaves_its_zero_delay_restarts_to_the_new_supervisor() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "0s" }
"#,
    );
    let pid = first.expect_spawned("web.0");
    let (_, shim) = proc_stat(pid).unwrap();
    kill9(first.pid);
    assert!(first.wait_exit(SOON).is_some());

    // The revoke and the replica's death reach the shim at the same wake-up
    // (it is stopped meanwhile): the revoke must win all the same.
    kill(Pid::from_raw(shim), Signal::SIGSTOP).unwrap();
    assert!(wait_until(SOON, || proc_stat(shim).is_some_and(|s| s.0 == 'T')));
    let second = first.another().start();
    second.expect_event(r"^adopted web\.0 ", SOON);
    kill9(pid);
    assert!(wait_until(SOON, || proc_stat(pid).is_some_and(|s| s.0 == 'Z')));
    kill(Pid::from_raw(shim), Signal::SIGCONT).unwrap();
    let (restart, _) =
        second.expect_event(r"^web\.0 was killed by SIGKILL; restart 1 in 0s$", SOON);
    let (_, again) = second.expect_spawned_from(restart.index, "web.0");
    // The adopted shim could not have told this supervisor of a restart of
    // its own: it ended, and the restart came through the zygote.
    let (_, new_shim) = proc_stat(again).unwrap();
    assert_ne!(new_shim, shim);
    assert!(wait_until(SOON, || proc_stat(shim).is_none()));
    let report = socket_status(&second.state_dir()).unwrap();
    assert_eq!(replica_in(&report, "web", 0)["pid"], again, "{report:#}");
    assert_eq!(replica_in(&report, "web", 0)["restarts"], 1, "{report:#}");
}

#[test]
fn up_after_a_killed_supervisor_adopts_running_replicas_without_duplicates() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
replicas = 2
restart = { delay = "50ms" }
"#,
    );
    let replicas = [first.expect_spawned("web.0"), first.expect_spawned("web.1")];
    // A shim writes its record before it reports the start, so a supervisor
    // killed the moment it hears of a replica finds the record on resume.
    // (A check of the promise, not of the order: by the time the event has
    // reached the test, a shim that wrote after reporting has written too.)
    for (i, pid) in replicas.iter().enumerate() {
        let path = first.state_dir().join(format!("run/web.{i}.running"));
        let record = std::fs::read(&path).unwrap_or_default();
        let record: serde_json::Value = serde_json::from_slice(&record).unwrap_or_default();
        assert_eq!(record["pid"], *pid, "{}", path.display());
    }
    kill9(first.pid);
    assert!(first.wait_exit(SOON).is_some());

    let mut second = first.another().start();
    second.expect_event(
        r"^resumed: 2 adopted, 0 exited while down, 0 unknown$",
        SOON,
    );
    for pid in replicas {
        assert!(is_alive(pid), "adoption disturbed replica {pid}");
    }
    let state_dir = second.state_dir();
    let count_commands = || {
        supervise::procfs::marked_by_state_dir(&state_dir)
            .into_iter()
            .filter(|(pid, _)| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep")
            })
            .count()
    };
    assert_eq!(count_commands(), 2, "a duplicate was started");

    // An adopted replica is still supervised: its death is noticed (through
    // its shim's pidfd) and it is restarted.
    kill9(replicas[0]);
    let (restart, _) = second.expect_event(r"^web\.0 was killed by SIGKILL; restart 1 in", SOON);
    let (_, again) = second.expect_spawned_from(restart.index, "web.0");
    assert_ne!(again, replicas[0]);
    assert_eq!(count_commands(), 2);

    second.signal(Signal::SIGINT);
    assert_eq!(second.expect_exit(SOON), 0, "{}", second.transcript());
    for pid in [replicas[1], again] {
        assert!(!is_alive(pid), "{pid} survived the shutdown");
    }
    assert_eq!(count_commands(), 0);
}

#[test]
fn second_up_on_the_same_state_dir_exits_4_naming_the_running_pid() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let replica = first.expect_spawned("web.0");
    let mut second = first.another().start();
    assert_eq!(second.expect_exit(SOON), 4, "{}", second.transcript());
    second.drain(SOON);
    let said = second.err.texts().join("\n");
    assert!(
        said.contains(&format!("pid {}", first.pid)),
        "the message does not name pid {}: {said}",
        first.pid
    );
    assert!(first.is_running());
    assert!(
        is_alive(replica),
        "the second up disturbed the first one's replica"
    );
    assert!(second.marked().is_empty());
}

#[test]
fn replica_output_goes_to_its_log_file_and_to_stdout_with_prefix() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "echo hello-out; echo hello-err >&2; echo ready; exec sleep 1000"]
"#,
    );
    // stdout and stderr are separate pipes: their lines may arrive in either order.
    for text in ["hello-out", "hello-err", "ready"] {
        sup.expect_output("web.0", &format!("^{text}$"), SOON);
    }
    let prefixed = regex::Regex::new(r"^web\.0 *│ (hello-out|hello-err|ready)$").unwrap();
    let out = sup.out.texts();
    assert_eq!(
        out.iter().filter(|l| prefixed.is_match(l)).count(),
        3,
        "stdout: {out:#?}"
    );

    let log = sup.state_dir().join("logs").join("web.0.log");
    let line_re = regex::Regex::new(r"^(\S+) (out|err) (.*)$").unwrap();
    let wanted = [("out", "hello-out"), ("err", "hello-err"), ("out", "ready")];
    let mut text = String::new();
    let mut seen = BTreeSet::new();
    let complete = wait_until(SOON, || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        seen.clear();
        // Only complete lines: the shim may be writing the next one.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        for line in complete.lines() {
            let c = line_re
                .captures(line)
                .unwrap_or_else(|| panic!("malformed log line {line:?}"));
            let at = humantime::parse_rfc3339(&c[1])
                .unwrap_or_else(|e| panic!("bad timestamp in {line:?}: {e}"));
            let age = SystemTime::now().duration_since(at).unwrap_or_default();
            assert!(
                age < Duration::from_secs(120),
                "timestamp {at:?} is not now"
            );
            seen.insert((c[2].to_string(), c[3].to_string()));
        }
        wanted
            .iter()
            .all(|(tag, t)| seen.contains(&(tag.to_string(), t.to_string())))
    });
    assert!(
        complete,
        "log {} lacks some of {wanted:?}: {text:?}",
        log.display()
    );
}

#[test]
fn replica_inherits_no_descriptor_beyond_stdio() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let replica = sup.expect_spawned("web.0");
    // While the dynamic loader runs, the new program briefly has files of its
    // own open; an inherited descriptor stays.
    let only_stdio = wait_until(SOON, || open_fds(replica) == BTreeSet::from([0, 1, 2]));
    let fds: Vec<String> = open_fds(replica)
        .iter()
        .map(|fd| {
            format!(
                "{fd} -> {:?}",
                std::fs::read_link(format!("/proc/{replica}/fd/{fd}"))
            )
        })
        .collect();
    assert!(
        only_stdio,
        "the replica holds descriptors beyond stdio: {fds:#?}"
    );
}

// ---------------------------------------------------------------- PID 1

fn unshare_works() -> Result<(), String> {
    match Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "unshare --pid --fork --mount-proc failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run unshare: {e}")),
    }
}

#[test]
fn as_pid_1_it_reaps_orphans_and_sigterm_stops_it() {
    if let Err(reason) = unshare_works() {
        eprintln!("SKIPPED as_pid_1_it_reaps_orphans_and_sigterm_stops_it: {reason}");
        return;
    }
    let mut sup = Supervise::builder(
        r#"
[services.web]
command = ["sh", "-c", "sleep 1000 & echo \"gc $!\"; wait"]
restart = { delay = "100ms" }
"#,
    )
    .wrapped(&["unshare", "--pid", "--fork", "--mount-proc"])
    .start();
    sup.expect_event(r"^supervising .*\(pid 1, ", SOON);
    let (spawned, ns_replica) = sup.expect_spawned_from(0, "web.0");
    let (_, caps) = sup.expect_output("web.0", r"^gc (\d+)$", SOON);
    let ns_grandchild: i32 = caps[1].parse().unwrap();
    let replica = host_pid_of(sup.marker(), ns_replica).expect("the replica in this namespace");
    let grandchild =
        host_pid_of(sup.marker(), ns_grandchild).expect("the grandchild in this namespace");
    let (_, shim) = proc_stat(replica).unwrap();
    let (_, zygote) = proc_stat(shim).unwrap();
    assert_eq!(
        proc_stat(zygote).map(|s| s.1),
        Some(sup.pid),
        "the shim's parent (the zygote) is not the supervisor's child"
    );
    assert_eq!(proc_stat(grandchild).map(|s| s.1), Some(replica));

    // With its shim gone, the replica is re-parented to PID 1, which kills
    // it and its child (found by their marker) and must reap both.
    kill9(shim);
    assert!(
        wait_until(SOON, || proc_stat(grandchild).is_none()
            && proc_stat(replica).is_none()),
        "orphan {grandchild} {:?} / replica {replica} {:?} not reaped",
        proc_stat(grandchild),
        proc_stat(replica)
    );
    assert!(
        wait_until(SOON, || zombies_under(sup.pid).is_empty()),
        "zombies under PID 1: {:?}",
        zombies_under(sup.pid)
    );
    // The replica is restarted after losing its shim.
    sup.expect_spawned_from(spawned.index + 1, "web.0");

    kill(Pid::from_raw(sup.pid), Signal::SIGTERM).unwrap();
    sup.expect_event(r"^received SIGTERM; stopping all replicas$", SOON);
    sup.expect_event(r"^stopped web\.0", SOON);
    assert_eq!(sup.expect_exit(SOON), 0, "{}", sup.transcript());
    assert_nothing_left(&sup);
}
