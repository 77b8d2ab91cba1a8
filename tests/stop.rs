//! Stopping, end to end: stop signals and timeouts, Ctrl-C, dependency
//! order, `--exit-with` and `down`; nothing of a replica may outlive it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

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
    let (stopped, _) = sup.expect_said(r"^stopped web\.0 \(was killed by SIGKILL\)$", SOON);
    let took = stopped.at - t0;
    assert!(
        took >= Duration::from_millis(450),
        "killed after {took:?}, before stop_timeout (500ms)"
    );
    assert!(took < Duration::from_secs(5), "killed only after {took:?}");
    assert_eq!(sup.expect_exit(SOON), 0);
    sup.assert_nothing_left();
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
    let (stopped, _) = sup.expect_said(r"^stopped web\.0 \(was killed by SIGTERM\)$", SOON);
    let took = stopped.at - t0;
    assert!(took < Duration::from_secs(5), "stopped only after {took:?}");
    assert_eq!(sup.expect_exit(SOON), 0);
    sup.assert_nothing_left();
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
    let (stopped, _) = sup.expect_said(r"^stopped web\.0 \(exited with code 0\)$", SOON);
    assert!(
        stopped.at - t0 < Duration::from_secs(8),
        "the replica was not stopped by its stop signal"
    );
    assert_eq!(sup.expect_exit(SOON), 0);
    sup.assert_nothing_left();
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
    sup.assert_nothing_left();
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
    let events = sup.said();
    let job_exit = position(&events, r"^job\.0 exited with code 7");
    let stopping = position(&events, r"^stopping srv\.0");
    let stopped = position(&events, r"^stopped srv\.0 \(was killed by SIGTERM\)$");
    assert!(job_exit < stopping && stopping < stopped, "{events:#?}");
    position(&events, r"^exiting with code 7$");
    assert!(!is_alive(srv));
    sup.assert_nothing_left();
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
    let events = sup.said();
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
    sup.assert_nothing_left();
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
    sup.expect("stopping", "web.0");
    let t0 = Instant::now();
    sup.signal(Signal::SIGINT);
    assert_eq!(sup.expect_exit(Duration::from_secs(15)), 130);
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "the second Ctrl-C took {:?}",
        t0.elapsed()
    );
    assert!(!is_alive(replica));
    sup.assert_nothing_left();
}

#[test]
fn down_with_a_timeout_kills_what_does_not_stop_and_exits_124() {
    let p = Project::new(
        r#"
[services.stubborn]
command = ["sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"]
stop_timeout = "30s"
"#,
    );
    p.up(&[]);
    let started = Instant::now();
    let ran = p.run(&["down", "--timeout", "1s"]);
    ran.expect(124);
    assert!(
        ran.stderr.contains("not every replica stopped within 1s"),
        "{ran:#?}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        wait_until(SOON, || p.marked().is_empty()),
        "left behind: {:?}",
        p.marked()
    );
}

/// The stop signal reaches each process of the replica once: the process
/// group's signal, and a direct one only to those that left the group. A
/// program that takes a second SIGTERM as "stop now" (as the cluster tests'
/// slow stopper does) must not get one from a single stop.
#[test]
fn each_process_of_the_replica_gets_the_stop_signal_once() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["python3", "-c", '''
import os, signal, sys, time
if os.fork() == 0:
    who = "child"
else:
    who = "main"
got = []
signal.signal(signal.SIGTERM, lambda *_: got.append(time.monotonic()))
# One write per line: print's pieces from two processes can interleave.
os.write(1, (who + " ready\n").encode())
while not got:
    pass
until = got[0] + 0.5
while time.monotonic() < until:
    pass
os.write(1, ("%s got %d\n" % (who, len(got))).encode())
sys.exit(0)
''']
stop_timeout = "10s"
"#,
    );
    sup.expect_output("web.0", "^main ready$", SOON);
    sup.expect_output("web.0", "^child ready$", SOON);
    sup.signal(Signal::SIGINT);
    sup.expect_output("web.0", "^main got 1$", SOON);
    sup.expect_output("web.0", "^child got 1$", SOON);
    assert_eq!(sup.expect_exit(SOON), 0);
    sup.assert_nothing_left();
}
