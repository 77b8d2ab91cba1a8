//! `up -d` and the supervisor it leaves running: what it waits for, how it
//! fails, what it says (and, with `-q`, does not), the state dir it picks,
//! its own log and its rotation; and what every command says when no
//! supervisor runs.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn every_command_exits_3_with_a_hint_when_no_supervisor_runs() {
    let p = Project::new(JOB_THEN_WEB);
    let hint = format!(
        "no supervisor for state dir {}; start one with supervise up -d",
        p.state_dir().display()
    );
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["start", "web"],
        &["stop", "web.1"],
        &["restart", "web"],
        &["restart", "--rolling", "web"],
        &["scale", "web=3"],
        &["reload"],
        &["wait"],
        &["events"],
        &["down"],
    ] {
        let ran = p.run(args);
        ran.expect(3);
        assert_eq!(ran.stderr.trim(), format!("error: {hint}"), "{args:?}");
    }
    // Logs are files: no supervisor needed.
    p.run(&["logs"]).expect(0);
}

#[test]
fn the_state_dir_comes_from_the_flag_the_spec_or_the_default() {
    let p = Project::new(JOB_THEN_WEB);
    let other = p.dir().join("other.toml");
    std::fs::write(
        &other,
        "[supervisor]\nstate_dir = \"elsewhere\"\n[services.x]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let hint = |dir: &Path| format!("no supervisor for state dir {}", dir.display());
    // The spec's state_dir, relative to the spec file.
    let ran = p.run(&["-f", "other.toml", "status"]);
    assert!(
        ran.stderr.contains(&hint(&p.dir().join("elsewhere"))),
        "{ran:#?}"
    );
    // --state-dir wins, and then no spec is read.
    let ran = p.run(&["--state-dir", "/tmp/no-such-state", "status"]);
    assert!(
        ran.stderr.contains(&hint(Path::new("/tmp/no-such-state"))),
        "{ran:#?}"
    );
    // No spec file at all: ./.supervise.
    std::fs::remove_file(p.dir().join("supervise.toml")).unwrap();
    let ran = p.run(&["status"]);
    assert!(ran.stderr.contains(&hint(&p.state_dir())), "{ran:#?}");
    // A spec invalid as a spec is read for its state dir all the same
    // (`check`, `up` and `reload` are the ones that validate).
    std::fs::write(p.dir().join("supervise.toml"), "bogus = 1\n").unwrap();
    let ran = p.run(&["status"]);
    ran.expect(3);
    assert!(ran.stderr.contains(&hint(&p.state_dir())), "{ran:#?}");
    // An explicit -f that does not exist is an error, not a fallback.
    p.run(&["-f", "missing.toml", "status"]).expect(2);
}

#[test]
fn up_detached_runs_in_the_background_and_a_second_up_exits_4() {
    let p = Project::new(JOB_THEN_WEB);
    let pid = p.up(&[]);
    assert!(is_alive(pid), "the supervisor runs after `up -d` returned");
    assert_eq!(session_of(pid), Some(pid), "in a session of its own");
    // Every replica is started by the time `up -d` returns.
    let web = p.replicas("web");
    assert_eq!(web.len(), 2);
    assert!(web.iter().all(|r| r.2 == "running"), "{web:?}");
    assert_eq!(p.replicas("job")[0].2, "exited");
    // Its own log has its events, not the replicas' output.
    let log = std::fs::read_to_string(p.state_dir().join("supervise.log")).unwrap();
    assert!(log.contains("spawned web.0"), "{log}");
    assert!(!log.contains("hello from"), "{log}");

    for args in [&["up", "-d"][..], &["up"]] {
        let ran = p.run(args);
        ran.expect(4);
        assert!(
            ran.stderr.contains(&format!(
                "a supervisor is already running for state dir {}",
                p.state_dir().display()
            )) && ran.stderr.contains(&format!("(pid {pid})")),
            "{ran:#?}"
        );
    }

    let ran = p.run(&["down"]);
    ran.expect(0);
    assert!(ran.stdout.contains("stopped"), "{ran:#?}");
    assert!(
        wait_until(SOON, || p.marked().is_empty()),
        "left behind: {:?}",
        p.marked()
    );
    p.run(&["status"]).expect(3);
}

#[test]
fn up_detached_with_an_invalid_spec_exits_2_and_starts_nothing() {
    let p = Project::new("[services.web]\ncommand = []\n");
    let ran = p.run(&["up", "-d"]);
    ran.expect(2);
    assert!(ran.stderr.contains("supervise.toml:2"), "{ran:#?}");
    assert!(p.marked().is_empty());
}

#[test]
fn up_detached_exits_1_when_a_replica_fails_and_the_supervisor_stays() {
    let p = Project::new(
        r#"
[services.ok]
command = ["sleep", "1000"]
[services.broken]
command = ["./no-such-program"]
restart = { policy = "never" }
"#,
    );
    // A command that never runs is failed before it could ever look started
    // (one that exits at once might be seen running first: a race).
    let ran = p.run(&["up", "-d"]);
    ran.expect(1);
    assert!(ran.stderr.contains("broken.0 failed (code 127"), "{ran:#?}");
    assert!(
        ran.stderr.contains("the supervisor keeps running"),
        "{ran:#?}"
    );
    assert_eq!(p.replicas("ok")[0].2, "running");
}

#[test]
fn up_detached_returns_without_waiting_out_a_backoff() {
    let p = Project::new(
        r#"
[services.ok]
command = ["sleep", "1000"]
[services.crashy]
command = ["./no-such-program"]
restart = { delay = "30s", limit = 0 }
"#,
    );
    // Before, `up -d` waited for crashy to run: 30 s, then for ever.
    let ran = run_bounded(p.command(&["up", "-d"]), Duration::from_secs(20));
    ran.expect(0);
    let warning = regex::Regex::new(
        r"(?m)^warning: crashy\.0 exited with code 127; restarting in (2\d|3[0-3])s$",
    )
    .unwrap();
    assert!(warning.is_match(&ran.stderr), "{ran:#?}");
    assert_eq!(p.replicas("ok")[0].2, "running");
    assert_eq!(p.replicas("crashy")[0].2, "backoff");
    // Quiet is for chatter, not for warnings.
    p.run(&["down"]).expect(0);
    let ran = run_bounded(p.command(&["-q", "up", "-d"]), Duration::from_secs(20));
    ran.expect(0);
    assert!(ran.stdout.is_empty(), "{ran:#?}");
    assert!(warning.is_match(&ran.stderr), "{ran:#?}");
}

#[test]
fn up_detached_wait_exits_1_as_soon_as_a_replica_fails() {
    let p = Project::new(
        r#"
[services.ok]
command = ["sleep", "1000"]
[services.broken]
command = ["./no-such-program"]
restart = { policy = "never" }
"#,
    );
    let ran = run_bounded(
        p.command(&["up", "-d", "--wait", "--timeout", "50s"]),
        Duration::from_secs(20),
    );
    ran.expect(1);
    assert!(ran.stderr.contains("broken.0 failed (code 127"), "{ran:#?}");
}

#[test]
fn quiet_commands_print_nothing_on_success_but_errors_and_asked_for_output() {
    let p = Project::new(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let silent = |args: &[&str]| {
        let ran = p.run(args);
        ran.expect(0);
        assert_eq!(ran.stdout, "", "{args:?}: {ran:#?}");
        assert_eq!(ran.stderr, "", "{args:?}: {ran:#?}");
    };
    // Before, check printed its whole plan with -q.
    silent(&["-q", "check"]);
    silent(&["-q", "up", "-d"]);
    silent(&["-q", "restart", "web"]);
    silent(&["-q", "stop", "web"]);
    silent(&["-q", "start", "web", "--no-wait"]);
    silent(&["-q", "reload"]);
    // What the command exists to print still comes.
    assert!(
        p.run(&["-q", "reload", "--dry-run"])
            .expect(0)
            .stdout
            .contains("unchanged  web")
    );
    assert!(p.run(&["-q", "status"]).expect(0).stdout.contains("web"));
    silent(&["-q", "down"]);
    std::fs::write(
        p.dir().join("supervise.toml"),
        "[services.web]\ncommand = []\n",
    )
    .unwrap();
    let ran = p.run(&["-q", "check"]);
    ran.expect(2);
    assert!(ran.stderr.contains("supervise.toml:2"), "{ran:#?}");
}

#[test]
fn a_stopped_supervisor_is_named_within_the_answer_timeout() {
    let p = Project::new(JOB_THEN_WEB);
    let supervisor = p.up(&[]);
    let pid = Pid::from_raw(supervisor);
    kill(pid, Signal::SIGSTOP).unwrap();
    // Resumed whatever the assertions say, so that cleanup can stop it.
    struct Resume(Pid);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = kill(self.0, Signal::SIGCONT);
        }
    }
    let _resume = Resume(pid);
    let why = format!(
        "did not answer within 500ms: it (pid {supervisor}) is stopped (SIGSTOP or Ctrl-Z); \
         resume it with `kill -CONT {supervisor}`"
    );
    for args in [
        &["status", "--timeout", "500ms"][..],
        &["scale", "web=2", "--timeout", "500ms"],
        &["reload", "--timeout", "500ms"],
        &["events", "--timeout", "500ms"],
    ] {
        let started = Instant::now();
        let ran = p.run(args);
        ran.expect(1);
        assert!(ran.stderr.contains(&why), "{args:?}: {ran:#?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?}");
    }
    kill(pid, Signal::SIGCONT).unwrap();
    p.run(&["status"]).expect(0);
}

#[test]
fn up_detached_fails_when_the_supervisor_is_told_to_stop_before_it_is_ready() {
    let p = Project::new(
        r#"
[services.slow]
command = ["sleep", "1000"]
[services.slow.health]
exec = ["false"]
interval = "100ms"
[services.dep]
command = ["sleep", "1000"]
depends_on = { slow = "healthy" }
"#,
    );
    // `up -d` waits for dep, pending on a dependency that never gets healthy.
    let mut up = p.command(&["up", "-d"]);
    up.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = up.spawn().unwrap();
    let mut supervisor = None;
    assert!(wait_until(SOON, || {
        supervisor = std::fs::read_to_string(p.state_dir().join("supervise.lock"))
            .ok()
            .and_then(|pid| pid.trim().parse::<i32>().ok());
        supervisor.is_some() && socket_status(&p.state_dir()).is_some()
    }));
    kill(Pid::from_raw(supervisor.unwrap()), Signal::SIGTERM).unwrap();
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT).expect("up -d returned");
    let mut stdout = String::new();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut stdout).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    // Before: "supervise running in the background", exit 0.
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("before it was ready"), "{stderr}");
    assert!(!stdout.contains("running in the background"), "{stdout}");
}

#[test]
fn up_detached_wait_times_out_with_124_naming_what_is_missing() {
    let p = Project::new(
        r#"
[services.flaky]
command = ["./no-such-program"]
restart = { delay = "2s", limit = 0 }
"#,
    );
    let ran = p.run(&["up", "-d", "--wait", "--timeout", "1s"]);
    ran.expect(124);
    assert!(
        ran.stderr
            .contains("timed out after 1s; still waiting for: flaky.0 ("),
        "{ran:#?}"
    );
    // Not a terminal: progress comes as plain lines.
    assert!(
        ran.stderr.contains("waiting until healthy: flaky.0 ("),
        "{ran:#?}"
    );
}

#[test]
fn up_detached_shows_the_end_of_a_log_the_supervisor_rotated_before_it_died() {
    let port = free_port();
    let p = Project::new(&format!(
        r#"
[supervisor]
log_max_size = "4KiB"
metrics = "127.0.0.1:{port}"

[services.web]
command = ["sleep", "1000"]
"#
    ));
    // Its metrics address is taken: it exits 1 once it has set up its log.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::fs::create_dir_all(p.state_dir()).unwrap();
    let old = "a line of an earlier run\n".repeat(400);
    std::fs::write(p.state_dir().join("supervise.log"), &old).unwrap();
    let ran = p.run(&["up", "-d"]);
    ran.expect(1);
    assert!(
        ran.stderr.contains("before it was ready")
            && ran
                .stderr
                .contains(&format!("cannot serve metrics on 127.0.0.1:{port}")),
        "{ran:#?}"
    );
    assert!(!ran.stderr.contains("earlier run"), "{ran:#?}");
    // The full log of the earlier runs was moved aside, whole.
    let rotated = std::fs::read_to_string(p.state_dir().join("supervise.log.1")).unwrap();
    assert_eq!(rotated, old);
    let log = std::fs::read_to_string(p.state_dir().join("supervise.log")).unwrap();
    assert!(log.contains("cannot serve metrics"), "{log}");
}

#[test]
fn up_detached_reports_a_supervisor_that_dies_before_it_is_ready() {
    let p = Project::new(JOB_THEN_WEB);
    // A directory where the socket goes: the supervisor takes the lock,
    // cannot listen, and exits 1. `up -d` shows the end of its log.
    std::fs::create_dir_all(p.state_dir().join("control.sock/x")).unwrap();
    let ran = p.run(&["up", "-d"]);
    ran.expect(1);
    assert!(
        ran.stderr.contains(&format!(
            "error: the supervisor exited with code 1 before it was ready; {} ends with:\n  ",
            p.state_dir().join("supervise.log").display()
        )),
        "{ran:#?}"
    );
    assert!(ran.stderr.contains("control socket"), "{ran:#?}");
    assert!(
        wait_until(SOON, || p.marked().is_empty()),
        "left behind: {:?}",
        p.marked()
    );

    // A state dir that cannot be used at all is seen before anything starts.
    let state = p.dir().join("state-file");
    std::fs::write(&state, "").unwrap();
    let ran = p.run(&["--state-dir", state.to_str().unwrap(), "up", "-d"]);
    ran.expect(1);
    assert!(ran.stderr.contains("cannot use state dir"), "{ran:#?}");
}

#[test]
fn supervise_log_has_no_colour_codes() {
    let p = Project::new(
        r#"
[services.n]
command = ["sleep", "1000"]
health = { notify = true }
"#,
    );
    // Not told NO_COLOR: a file must get no colour whatever the environment.
    let mut up = p.command(&["-v", "up", "-d"]);
    up.env_remove("NO_COLOR");
    run_bounded(up, COMMAND_TIMEOUT).expect(0);
    // A datagram from no replica: the supervisor logs it (-v) through tracing.
    let pid = p.replicas("n")[0].1.expect("n.0 runs") as i32;
    send_notify(&notify_socket_of(pid), b"STATUS=x");
    let path = p.state_dir().join("supervise.log");
    let mut log = String::new();
    let logged = wait_until(SOON, || {
        log = std::fs::read_to_string(&path).unwrap_or_default();
        log.contains("ignored a message from a process of no replica")
    });
    assert!(logged, "{log}");
    assert!(!log.contains('\x1b'), "{log:?}");
}

/// A replica that fails at once, restarted at once for ever, and a small
/// supervise.log: rotated every few dozen restarts.
fn crash_loop_spec(log_keep: u32) -> String {
    format!(
        r#"
[supervisor]
log_max_size = "4KiB"
log_keep = {log_keep}

[services.c]
command = ["false"]
restart = {{ delay = "0s", limit = 0 }}
"#
    )
}

/// supervise.log and its rotated files, oldest first, that exist.
fn supervisor_logs(p: &Project) -> Vec<(std::path::PathBuf, String)> {
    let log = p.state_dir().join("supervise.log");
    let mut files: Vec<_> = (1..100)
        .map(|n| p.state_dir().join(format!("supervise.log.{n}")))
        .take_while(|f| f.exists())
        .collect();
    files.reverse();
    files.push(log);
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            (f, text)
        })
        .collect()
}

#[test]
fn supervise_log_is_rotated_without_losing_a_line() {
    let p = Project::new(&crash_loop_spec(50));
    p.up(&[]);
    assert!(
        wait_until(Duration::from_secs(60), || p.restarts("c", 0) >= 300),
        "{} restarts in a minute",
        p.restarts("c", 0)
    );
    p.run(&["down"]).expect(0);
    let files = supervisor_logs(&p);
    assert!(files.len() > 3, "not rotated: {files:#?}");
    for (file, text) in &files {
        assert!(
            text.len() <= 4096,
            "{} has {} bytes",
            file.display(),
            text.len()
        );
    }
    // Every restart's line, once, in order, across the files.
    let all: String = files.iter().map(|(_, text)| text.as_str()).collect();
    let re = regex::Regex::new(r"(?m)^supervise │ c\.0 exited with code 1; restart (\d+) in 0s$")
        .unwrap();
    let numbers: Vec<u64> = re
        .captures_iter(&all)
        .map(|c| c[1].parse().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=numbers.len() as u64).collect();
    assert!(numbers.len() >= 300, "{} restart lines", numbers.len());
    assert_eq!(numbers, expected);
    assert!(all.ends_with("exiting with code 0\n"), "{all}");
}

#[test]
fn supervise_log_takes_at_most_log_keep_plus_one_files() {
    let p = Project::new(&crash_loop_spec(1));
    p.up(&[]);
    assert!(
        wait_until(Duration::from_secs(60), || p.restarts("c", 0) >= 300),
        "{} restarts in a minute",
        p.restarts("c", 0)
    );
    let names: Vec<String> = std::fs::read_dir(p.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("supervise.log"))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    let files = supervisor_logs(&p);
    for (file, text) in &files {
        assert!(
            text.len() <= 4096,
            "{} has {} bytes",
            file.display(),
            text.len()
        );
    }
}
