//! The shell commands of the control plane, end to end: a real supervisor
//! started with `supervise up -d` in a temporary directory, steered with
//! the real binary, each command's output and exit code checked.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Two long-running replicas and a one-shot job.
const SPEC: &str = r#"
[services.job]
command = ["sh", "-c", "echo migrated; exit 0"]
restart = { policy = "never" }

[services.web]
command = ["sh", "-c", "echo hello from $SUPERVISE_REPLICA; exec sleep 1000"]
replicas = 2
depends_on = { job = "completed" }
"#;

fn pid_of(replicas: &[(u64, Option<i64>, String)], index: u64) -> i64 {
    replicas
        .iter()
        .find(|r| r.0 == index)
        .and_then(|r| r.1)
        .unwrap_or_else(|| panic!("no pid for replica {index} in {replicas:?}"))
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort();
    k
}

fn is_rfc3339_utc(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && humantime::parse_rfc3339(s).is_ok())
}

// ---------------------------------------------------------------- no supervisor

#[test]
fn every_command_exits_3_with_a_hint_when_no_supervisor_runs() {
    let p = Project::new(SPEC);
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
    let p = Project::new(SPEC);
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
    // An invalid spec is an error of its own.
    std::fs::write(p.dir().join("supervise.toml"), "bogus = 1\n").unwrap();
    let ran = p.run(&["status"]);
    ran.expect(2);
    assert!(ran.stderr.contains("supervise.toml:1:1"), "{ran:#?}");
    // An explicit -f that does not exist is an error, not a fallback.
    p.run(&["-f", "missing.toml", "status"]).expect(2);
}

// ---------------------------------------------------------------- up -d, down

#[test]
fn up_detached_runs_in_the_background_and_a_second_up_exits_4() {
    let p = Project::new(SPEC);
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
    let p = Project::new(SPEC);
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

fn restarts_of(p: &Project, replica: &str) -> u64 {
    socket_status(&p.state_dir())
        .and_then(|r| replica_in(&r, replica, 0)["restarts"].as_u64())
        .unwrap_or(0)
}

#[test]
fn supervise_log_is_rotated_without_losing_a_line() {
    let p = Project::new(&crash_loop_spec(50));
    p.up(&[]);
    assert!(
        wait_until(Duration::from_secs(60), || restarts_of(&p, "c") >= 300),
        "{} restarts in a minute",
        restarts_of(&p, "c")
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
        wait_until(Duration::from_secs(60), || restarts_of(&p, "c") >= 300),
        "{} restarts in a minute",
        restarts_of(&p, "c")
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
    let p = Project::new(SPEC);
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

// ---------------------------------------------------------------- status

#[test]
fn status_json_is_schema_1_field_by_field() {
    let p = Project::new(SPEC);
    let sup_pid = p.up(&[]);
    let s = p.status();
    assert_eq!(keys(&s), ["schema", "services", "supervisor"]);
    assert_eq!(s["schema"], 1);

    let sup = &s["supervisor"];
    assert_eq!(keys(sup), ["pid", "spec", "started_at", "state_dir"]);
    assert_eq!(sup["pid"], sup_pid);
    assert!(is_rfc3339_utc(&sup["started_at"]), "{sup}");
    assert_eq!(
        sup["spec"],
        p.dir().join("supervise.toml").display().to_string()
    );
    assert_eq!(sup["state_dir"], p.state_dir().display().to_string());

    let services = s["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["job", "web"], "start order");
    for svc in services {
        assert_eq!(keys(svc), ["desired", "name", "replicas", "state"]);
    }
    let (job, web) = (&services[0], &services[1]);
    assert_eq!(
        (&job["state"], &job["desired"]),
        (&Value::from("completed"), &Value::from(1))
    );
    assert_eq!(
        (&web["state"], &web["desired"]),
        (&Value::from("running"), &Value::from(2))
    );

    let replica_keys = [
        "health",
        "index",
        "last_exit",
        "pid",
        "restart_at",
        "restarts",
        "role",
        "started_at",
        "state",
    ];
    for (i, r) in web["replicas"].as_array().unwrap().iter().enumerate() {
        assert_eq!(keys(r), replica_keys);
        assert_eq!(r["index"], i);
        let pid = r["pid"].as_i64().expect("a running replica has a pid") as i32;
        assert!(
            is_alive(pid) && marked_processes(p.marker()).contains(&pid),
            "pid {pid} is a live process of ours"
        );
        assert_eq!(r["state"], "running");
        assert_eq!(r["health"], "healthy");
        assert_eq!(r["role"], Value::Null);
        assert_eq!(r["restarts"], 0);
        assert!(is_rfc3339_utc(&r["started_at"]), "{r}");
        assert_eq!(r["last_exit"], Value::Null);
    }
    let j = &job["replicas"][0];
    assert_eq!(keys(j), replica_keys);
    assert_eq!(
        (&j["state"], &j["pid"]),
        (&Value::from("exited"), &Value::Null)
    );
    assert_eq!(j["health"], "unknown");
    let last = &j["last_exit"];
    assert_eq!(keys(last), ["at", "code", "signal"]);
    assert_eq!(
        (&last["code"], &last["signal"]),
        (&Value::from(0), &Value::Null)
    );
    assert!(is_rfc3339_utc(&last["at"]), "{last}");

    // Filtering keeps the schema, with the named services only.
    let ran = p.run(&["status", "--json", "web"]);
    let only: Value = serde_json::from_str(&ran.expect(0).stdout).unwrap();
    assert_eq!(only["services"].as_array().unwrap().len(), 1);
    assert_eq!(only["services"][0]["name"], "web");
    assert_eq!(only["supervisor"], s["supervisor"]);
}

#[test]
fn status_table_shows_the_contract_columns() {
    let p = Project::new(SPEC);
    p.up(&[]);
    p.run(&["stop", "web.1"]).expect(0);
    let ran = p.run(&["status"]);
    let lines: Vec<&str> = ran.expect(0).stdout.lines().collect();
    let header: Vec<&str> = lines[0]
        .split("  ")
        .filter(|c| !c.is_empty())
        .map(str::trim)
        .collect();
    assert_eq!(
        header,
        [
            "SERVICE",
            "REPLICA",
            "PID",
            "STATE",
            "HEALTH",
            "ROLE",
            "RESTARTS",
            "UPTIME",
            "LAST EXIT"
        ]
    );
    let row = |replica: &str| -> Vec<String> {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(replica))
            .unwrap_or_else(|| panic!("no row for {replica}: {lines:?}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    let web0 = row("web.0");
    assert_eq!(web0[0], "web");
    assert!(web0[2].parse::<u32>().is_ok(), "{web0:?}");
    assert_eq!(&web0[3..7], ["running", "healthy", "-", "0"]);
    assert!(
        web0[7].ends_with('s') || web0[7].ends_with("ms"),
        "uptime like 3s: {web0:?}"
    );
    assert_eq!(web0[8], "-");
    let web1 = row("web.1");
    assert_eq!(&web1[2..4], ["-", "stopped"]);
    assert_eq!(web1[8], "SIGTERM", "{web1:?}");
    assert!(web1[9].starts_with('(') && web1[10] == "ago)", "{web1:?}");
    let job = row("job.0");
    assert_eq!(&job[3..4], ["exited"]);
    assert_eq!(&job[8..10], ["code", "0"]);
    assert!(job[10].starts_with('(') && job[11] == "ago)", "{job:?}");
    assert!(!ran.stdout.contains('\x1b'), "no colour when piped");

    let ran = p.run(&["status", "nope"]);
    ran.expect(2);
    assert!(
        ran.stderr
            .contains("no service named nope (it has job, web)"),
        "{ran:#?}"
    );
}

// ---------------------------------------------------------------- logs

/// Writes a replica log file the way a shim does.
fn write_log(p: &Project, file: &str, lines: &[(&str, &str, &str)]) {
    let dir = p.state_dir().join("logs");
    std::fs::create_dir_all(&dir).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(file))
        .unwrap();
    for (at, stream, text) in lines {
        writeln!(f, "{at} {stream} {text}").unwrap();
    }
}

fn texts(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| l.rsplit_once(' ').map_or(l, |(_, t)| t).to_string())
        .collect()
}

const AT: [&str; 6] = [
    "2026-11-23T12:00:00.000001Z",
    "2026-11-23T12:00:01.000001Z",
    "2026-11-23T12:00:02.000001Z",
    "2026-11-23T12:00:03.000001Z",
    "2026-11-23T12:00:04.000001Z",
    "2026-11-23T12:00:05.000001Z",
];

/// web.0 and web.1 interleaved in time, web.0 partly in a rotated file;
/// job.0 alone.
fn sample_logs(p: &Project) {
    write_log(p, "web.0.log.1", &[(AT[0], "out", "w0-a")]);
    write_log(
        p,
        "web.0.log",
        &[(AT[2], "out", "w0-c"), (AT[4], "err", "w0-e")],
    );
    write_log(
        p,
        "web.1.log",
        &[(AT[1], "out", "w1-b"), (AT[3], "out", "w1-d")],
    );
    write_log(p, "job.0.log", &[(AT[5], "out", "job-f")]);
}

#[test]
fn logs_merge_replicas_in_time_order_with_labels_and_times() {
    let p = Project::new(SPEC);
    sample_logs(&p);
    let ran = p.run(&["logs", "web"]);
    let out = &ran.expect(0).stdout;
    assert_eq!(texts(out), ["w0-a", "w1-b", "w0-c", "w1-d", "w0-e"]);
    assert_eq!(
        out.lines().next().unwrap(),
        "web.0 │ 2026-11-23T12:00:00.000Z w0-a"
    );
    let all = p.run(&["logs"]);
    assert_eq!(texts(&all.expect(0).stdout).len(), 6);
    let one = p.run(&["logs", "web.1", "job"]);
    assert_eq!(texts(&one.expect(0).stdout), ["w1-b", "w1-d", "job-f"]);
}

#[test]
fn logs_last_n_and_since_select_lines_over_all_replicas() {
    let p = Project::new(SPEC);
    sample_logs(&p);
    let ran = p.run(&["logs", "-n", "3"]);
    assert_eq!(texts(&ran.expect(0).stdout), ["w1-d", "w0-e", "job-f"]);
    let ran = p.run(&["logs", "web", "--since", AT[3]]);
    assert_eq!(texts(&ran.expect(0).stdout), ["w1-d", "w0-e"]);
    // A duration: the sample is older than a minute, so nothing.
    let ran = p.run(&["logs", "--since", "1m"]);
    assert_eq!(ran.expect(0).stdout, "");
    p.run(&["logs", "--since", "whenever"]).expect(2);
}

#[test]
fn logs_json_prints_one_object_per_line() {
    let p = Project::new(SPEC);
    sample_logs(&p);
    let ran = p.run(&["logs", "--json", "-n", "2"]);
    let lines: Vec<Value> = ran
        .expect(0)
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({"at": AT[4], "replica": "web.0", "stream": "err", "text": "w0-e"})
    );
    assert_eq!(lines[1]["replica"], "job.0");
}

#[test]
fn logs_of_an_unknown_service_exit_2() {
    let p = Project::new(SPEC);
    sample_logs(&p);
    let ran = p.run(&["logs", "nope"]);
    ran.expect(2);
    assert!(
        ran.stderr
            .contains("no service named nope (it has job, web)"),
        "{ran:#?}"
    );
    // Known from the spec even before it has written anything.
    std::fs::remove_file(p.state_dir().join("logs/job.0.log")).unwrap();
    p.run(&["logs", "job"]).expect(0);
}

#[test]
fn logs_follow_picks_up_new_lines_rotation_and_new_replicas() {
    let p = Project::new(SPEC);
    sample_logs(&p);
    let mut child = p
        .command(&["logs", "-f", "-n", "1", "web"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::reading(child.stdout.take().unwrap());
    let expect = |text: &str| {
        let found = lines.wait_for(SOON, |l| l.ends_with(&format!(" {text}")));
        assert!(found.is_some(), "no {text:?} in {:?}", lines.texts());
    };
    expect("w0-e");
    write_log(
        &p,
        "web.1.log",
        &[("2026-11-23T12:00:06.000001Z", "out", "w1-new")],
    );
    expect("w1-new");
    // Rotation: the live file moves to .log.1 and a new one starts.
    let logs = p.state_dir().join("logs");
    std::fs::rename(logs.join("web.0.log"), logs.join("web.0.log.2")).unwrap();
    write_log(
        &p,
        "web.0.log",
        &[("2026-11-23T12:00:07.000001Z", "out", "w0-rotated")],
    );
    expect("w0-rotated");
    // A replica that appears (after a scale-up).
    write_log(
        &p,
        "web.2.log",
        &[("2026-11-23T12:00:08.000001Z", "out", "w2-new")],
    );
    expect("w2-new");
    // Other services are not followed.
    write_log(
        &p,
        "job.0.log",
        &[("2026-11-23T12:00:09.000001Z", "out", "job-new")],
    );
    write_log(
        &p,
        "web.1.log",
        &[("2026-11-23T12:00:10.000001Z", "out", "w1-last")],
    );
    expect("w1-last");
    assert!(!lines.texts().iter().any(|l| l.contains("job-new")));
    assert_eq!(lines.texts().len(), 5, "{:?}", lines.texts());
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn logs_show_what_real_replicas_wrote() {
    let p = Project::new(SPEC);
    p.up(&[]);
    let wanted = ["job.0 │ ", "migrated", "hello from 0", "hello from 1"];
    let logs = p.logs_holding(&[], &wanted);
    assert!(logs.is_ok(), "{wanted:?} in {logs:?}");
}

// ---------------------------------------------------------------- start, stop, restart

#[test]
fn stop_start_and_restart_wait_for_the_state_they_ask_for() {
    let p = Project::new(SPEC);
    p.up(&[]);
    let before = p.replicas("web");

    let ran = p.run(&["stop", "web.1"]);
    assert_eq!(ran.expect(0).stdout, "web.1 stopped\n");
    let now = p.replicas("web");
    assert_eq!(
        (now[0].2.as_str(), now[1].2.as_str()),
        ("running", "stopped")
    );
    assert!(!is_alive(pid_of(&before, 1) as i32));

    let ran = p.run(&["start", "web"]);
    let out = &ran.expect(0).stdout;
    let after_start = p.replicas("web");
    assert_eq!(
        out,
        &format!(
            "web.0 running (pid {})\nweb.1 running (pid {})\n",
            pid_of(&after_start, 0),
            pid_of(&after_start, 1)
        )
    );
    assert_eq!(
        pid_of(&after_start, 0),
        pid_of(&before, 0),
        "web.0 untouched"
    );

    p.run(&["restart", "web"]).expect(0);
    let after_restart = p.replicas("web");
    for i in 0..2 {
        assert_ne!(pid_of(&after_restart, i), pid_of(&after_start, i));
        assert_eq!(after_restart[i as usize].2, "running");
    }

    for args in [
        &["stop", "nope"][..],
        &["start", "web.7"],
        &["restart", "nope.1"],
    ] {
        let ran = p.run(args);
        ran.expect(2);
        assert!(ran.stderr.starts_with("error: no "), "{args:?}: {ran:#?}");
    }
    p.run(&["stop"]).expect(2);
}

#[test]
fn start_no_wait_returns_the_affected_replicas_at_once() {
    let p = Project::new(SPEC);
    p.up(&[]);
    p.run(&["stop", "web"]).expect(0);
    let ran = p.run(&["start", "--no-wait", "web.0"]);
    assert_eq!(ran.expect(0).stdout, "web.0\n");
    p.run(&["wait", "web.0", "--timeout", "10s"]).expect(0);
}

/// Runs `events -f --json` in the background; the events seen so far.
struct EventTap {
    child: std::process::Child,
    lines: std::sync::Arc<Lines>,
}

impl EventTap {
    fn start(p: &Project) -> EventTap {
        let mut child = p
            .command(&["events", "-f", "--json"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = Lines::reading(child.stdout.take().unwrap());
        EventTap { child, lines }
    }

    /// (event, detail) of every event so far.
    fn events(&self) -> Vec<(String, String)> {
        self.lines
            .texts()
            .iter()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["event"].as_str().unwrap().to_string(),
                    v["detail"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn rolling_restart_replaces_one_replica_at_a_time() {
    let p = Project::new(
        r#"
[services.web]
command = ["sleep", "1000"]
replicas = 3
"#,
    );
    p.up(&[]);
    let before = p.replicas("web");
    let tap = EventTap::start(&p);
    // The history ends with the three first spawns, in whatever order.
    assert!(wait_until(SOON, || {
        let texts = tap.lines.texts();
        (0..3).all(|i| {
            texts
                .iter()
                .any(|l| l.contains(&format!("spawned web.{i}")))
        })
    }));
    let from = tap.lines.texts().len();

    let ran = p.run(&["restart", "--rolling", "web"]);
    ran.expect(0);
    for i in 1..=3 {
        assert!(
            ran.stderr
                .contains(&format!("restarted web.{} ({i}/3)", i - 1)),
            "{ran:#?}"
        );
    }
    let after = p.replicas("web");
    assert!((0..3).all(|i| pid_of(&after, i) != pid_of(&before, i)));
    // Each replica is back before the next one is stopped.
    let order = || -> Vec<String> {
        tap.events()[from..]
            .iter()
            .filter(|(e, _)| e == "stopping" || e == "spawned")
            .map(|(_, d)| d.split(" (pid").next().unwrap().to_string())
            .collect()
    };
    wait_until(SOON, || order().len() >= 6);
    assert_eq!(
        order(),
        [
            "stopping web.0",
            "spawned web.0",
            "stopping web.1",
            "spawned web.1",
            "stopping web.2",
            "spawned web.2"
        ]
    );
}

#[test]
fn rolling_restart_stops_at_a_replica_that_fails() {
    let p = Project::new(
        r#"
[services.web]
command = ["sleep", "1000"]
cwd = "home{replica}"
replicas = 3
restart = { policy = "never" }
"#,
    );
    for i in 0..3 {
        std::fs::create_dir(p.dir().join(format!("home{i}"))).unwrap();
    }
    p.up(&[]);
    let before = p.replicas("web");
    // web.1 cannot start again: it fails without ever running (a command
    // that exits at once might be seen running first: a race).
    std::fs::remove_dir(p.dir().join("home1")).unwrap();
    let ran = p.run(&["restart", "--rolling", "web"]);
    ran.expect(1);
    assert!(
        ran.stderr.contains(
            "rolling restart stopped at web.1, the rest untouched: web.1 failed (code 127"
        ),
        "{ran:#?}"
    );
    let after = p.replicas("web");
    assert_ne!(pid_of(&after, 0), pid_of(&before, 0), "web.0 was restarted");
    assert_eq!(after[1].2, "failed");
    assert_eq!(pid_of(&after, 2), pid_of(&before, 2), "web.2 untouched");
}

// ---------------------------------------------------------------- scale

#[test]
fn scale_starts_and_stops_replicas() {
    let p = Project::new(SPEC);
    p.up(&[]);
    let ran = p.run(&["scale", "web=4"]);
    assert_eq!(
        ran.expect(0).stdout,
        "web: 4 replicas\naffected: web.2, web.3\n"
    );
    p.run(&["wait", "web", "--timeout", "10s"]).expect(0);
    assert_eq!(p.replicas("web").len(), 4);

    let ran = p.run(&["scale", "web=3", "--json"]);
    let affected: Value = serde_json::from_str(&ran.expect(0).stdout).unwrap();
    assert_eq!(affected, serde_json::json!({"replicas": ["web.3"]}));
    assert!(wait_until(SOON, || p.replicas("web").len() == 3));
    assert_eq!(p.status()["services"][1]["desired"], 3);

    for args in [
        &["scale", "web"][..],
        &["scale", "web=-1"],
        &["scale", "nope=2"],
        &["scale"],
    ] {
        p.run(args).expect(2);
    }
}

#[test]
fn scale_and_stop_are_kept_across_a_supervisor_restart() {
    let p = Project::new(SPEC);
    p.up(&[]);
    p.run(&["scale", "web=3"]).expect(0);
    p.run(&["wait", "web", "--timeout", "10s"]).expect(0);
    p.run(&["stop", "web.0"]).expect(0);

    p.run(&["down"]).expect(0);
    // The connection closes as the supervisor exits, a moment before it is gone.
    assert!(
        wait_until(SOON, || p.marked().is_empty()),
        "{:?}",
        p.marked()
    );
    p.up(&[]);
    let web = p.replicas("web");
    let states: Vec<&str> = web.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(states, ["stopped", "running", "running"], "{web:?}");
}

// ---------------------------------------------------------------- reload

const TWO: &str = r#"
[services.a]
command = ["sh", "-c", "echo a v1; exec sleep 1000"]

[services.b]
command = ["sleep", "1000"]
"#;

#[test]
fn reload_restarts_only_the_changed_service() {
    let p = Project::new(TWO);
    p.up(&[]);
    let (a0, b0) = (pid_of(&p.replicas("a"), 0), pid_of(&p.replicas("b"), 0));
    std::fs::write(p.dir().join("supervise.toml"), TWO.replace("a v1", "a v2")).unwrap();

    let ran = p.run(&["reload", "--dry-run"]);
    assert_eq!(
        ran.expect(0).stdout,
        "added      -\nremoved    -\nchanged    a\nunchanged  b\ndry run: nothing was changed\n"
    );
    assert_eq!(pid_of(&p.replicas("a"), 0), a0, "a dry run changes nothing");

    let ran = p.run(&["reload"]);
    assert!(
        ran.expect(0)
            .stdout
            .starts_with("added      -\nremoved    -\nchanged    a\nunchanged  b\napplied")
    );
    p.run(&["wait", "--timeout", "10s"]).expect(0);
    assert!(wait_until(SOON, || p.replicas("a")[0]
        .1
        .is_some_and(|pid| pid != a0)));
    assert_eq!(
        pid_of(&p.replicas("b"), 0),
        b0,
        "the unchanged service keeps its process"
    );
    let logs = p.logs_holding(&["a"], &["a v2"]);
    assert!(logs.is_ok(), "{logs:?}");
}

#[test]
fn reload_of_an_invalid_spec_is_rejected_with_diagnostics_and_exit_1() {
    let p = Project::new(TWO);
    p.up(&[]);
    let a0 = pid_of(&p.replicas("a"), 0);
    std::fs::write(
        p.dir().join("broken.toml"),
        "[services.a]\ncommand = \"x\"\nbogus = 1\n",
    )
    .unwrap();
    let ran = p.run(&["reload", "broken.toml"]);
    ran.expect(1);
    assert!(ran.stderr.contains("broken.toml:3:1"), "{ran:#?}");
    assert!(ran.stderr.contains("reload rejected"), "{ran:#?}");
    let ran = p.run(&["reload", "--json", "supervise.toml"]);
    let plan: Value = serde_json::from_str(&ran.expect(0).stdout).unwrap();
    assert_eq!(
        plan,
        serde_json::json!({"added": [], "removed": [], "changed": [], "unchanged": ["a", "b"], "applied": true})
    );
    assert_eq!(pid_of(&p.replicas("a"), 0), a0);
}

#[test]
fn reload_without_a_spec_here_reloads_the_supervisors_own_file() {
    let p = Project::new(TWO);
    p.up(&[]);
    std::fs::write(p.dir().join("supervise.toml"), TWO.replace("a v1", "a v2")).unwrap();
    let elsewhere = p.dir().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let state_dir = p.state_dir();
    let mut cmd = p.command(&["--state-dir", state_dir.to_str().unwrap(), "reload"]);
    cmd.current_dir(&elsewhere);
    let ran = run_bounded(cmd, COMMAND_TIMEOUT);
    assert!(
        ran.expect(0)
            .stdout
            .contains("changed    a\nunchanged  b\n"),
        "{ran:#?}"
    );
}

// ---------------------------------------------------------------- wait

#[test]
fn wait_times_out_with_124_and_says_what_is_missing() {
    let p = Project::new(
        r#"
[services.ok]
command = ["sleep", "1000"]
[services.flaky]
command = ["./no-such-program"]
restart = { delay = "2s", limit = 0 }
"#,
    );
    // `up -d` does not wait out flaky's restart delays; `wait` does.
    p.up(&[]);
    p.run(&["wait", "ok", "--timeout", "5s"]).expect(0);
    let started = Instant::now();
    let ran = p.run(&["wait", "--timeout", "1s"]);
    ran.expect(124);
    assert!(started.elapsed() < Duration::from_secs(10));
    let last = ran.stderr.lines().last().unwrap();
    assert!(
        last.starts_with("error: timed out after 1s; still waiting for: flaky.0 ("),
        "{ran:#?}"
    );
    assert!(!last.contains("ok.0"), "{ran:#?}");
    // Quiet: only the error.
    let ran = p.run(&["-q", "wait", "flaky", "--timeout", "300ms"]);
    ran.expect(124);
    assert_eq!(ran.stderr.lines().count(), 1, "{ran:#?}");
    p.run(&["wait", "nope"]).expect(2);
}

#[test]
fn wait_exits_1_as_soon_as_a_replica_fails() {
    let p = Project::new(
        r#"
[services.broken]
command = ["sh", "-c", "sleep 1; exit 3"]
restart = { policy = "never" }
"#,
    );
    p.up(&[]);
    let started = Instant::now();
    let ran = p.run(&["wait", "broken", "--for", "completed", "--timeout", "30s"]);
    ran.expect(1);
    assert!(
        ran.stderr.contains("error: broken.0 failed (code 3"),
        "{ran:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "at once, not at the timeout"
    );
    // Waiting for a stop is satisfied by a failed replica.
    p.run(&["wait", "--for", "stopped", "--timeout", "5s"])
        .expect(0);
}

#[test]
fn wait_for_each_condition() {
    let p = Project::new(SPEC);
    p.up(&[]);
    for args in [
        &["wait"][..],
        &["wait", "--for", "running"],
        &["wait", "web", "--for", "healthy"],
        &["wait", "job", "--for", "completed"],
        &["wait", "web.1", "--for", "running"],
    ] {
        let ran = p.run(args);
        ran.expect(0);
        assert_eq!(ran.stdout, "", "{args:?}");
    }
    // Wait for a stop that another command brings about: the stop is sent
    // once the waiter says what it waits for (it follows events by then).
    let mut waiter = p
        .command(&["wait", "web", "--for", "stopped", "--timeout", "20s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = Lines::reading(waiter.stderr.take().unwrap());
    let waiting = said.wait_for(SOON, |l| l.contains("waiting for: web.0 (running)"));
    if waiting.is_none() {
        let _ = waiter.kill();
        let _ = waiter.wait();
        panic!(
            "the waiter did not say what it waits for: {:?}",
            said.texts()
        );
    }
    p.run(&["stop", "web", "--no-wait"]).expect(0);
    let status = wait_bounded(&mut waiter, COMMAND_TIMEOUT);
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{:?}", said.texts());
}

// ---------------------------------------------------------------- events

#[test]
fn events_show_the_history_and_follow_new_ones() {
    let p = Project::new(SPEC);
    p.up(&[]);
    let ran = p.run(&["events"]);
    let plain = &ran.expect(0).stdout;
    let spawned = plain
        .lines()
        .find(|l| l.contains("spawned web.0 (pid "))
        .unwrap_or_else(|| panic!("{plain}"));
    let (at, _) = spawned.split_once(' ').unwrap();
    assert!(humantime::parse_rfc3339(at).is_ok(), "{spawned}");

    let ran = p.run(&["events", "--json"]);
    let records: Vec<Value> = ran
        .expect(0)
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for r in &records {
        assert_eq!(
            keys(r),
            ["at", "detail", "event", "pid", "replica", "service"]
        );
        assert!(is_rfc3339_utc(&r["at"]), "{r}");
    }
    let web0 = records
        .iter()
        .find(|r| r["event"] == "spawned" && r["service"] == "web" && r["replica"] == 0)
        .expect("a spawned event for web.0");
    assert_eq!(web0["pid"], pid_of(&p.replicas("web"), 0));
    assert_eq!(
        web0["detail"],
        format!("spawned web.0 (pid {})", pid_of(&p.replicas("web"), 0))
    );

    let tap = EventTap::start(&p);
    assert!(
        tap.lines
            .wait_for(SOON, |l| l.contains("spawned web.1"))
            .is_some()
    );
    p.run(&["restart", "web.1"]).expect(0);
    let pid = pid_of(&p.replicas("web"), 1);
    assert!(
        tap.lines
            .wait_for(SOON, |l| l.contains(&format!("spawned web.1 (pid {pid})")))
            .is_some(),
        "{:?}",
        tap.events()
    );
    // The stream ends when the supervisor does.
    p.run(&["down"]).expect(0);
    let mut tap = tap;
    assert!(wait_until(SOON, || tap
        .child
        .try_wait()
        .ok()
        .flatten()
        .is_some()));
    assert_eq!(tap.child.wait().unwrap().code(), Some(0));
}

// ---------------------------------------------------------------- help

#[test]
fn every_subcommand_has_examples_and_exit_statuses_in_its_help() {
    let p = Project::new(SPEC);
    for cmd in [
        "up",
        "check",
        "status",
        "logs",
        "start",
        "stop",
        "restart",
        "scale",
        "reload",
        "wait",
        "events",
        "down",
        "completions",
    ] {
        let ran = p.run(&[cmd, "--help"]);
        let help = &ran.expect(0).stdout;
        assert!(help.contains("Examples:\n  supervise "), "{cmd}: {help}");
        if cmd != "completions" {
            assert!(help.contains("Exit status:"), "{cmd}: {help}");
        }
    }
    let top = p.run(&["--help"]);
    assert!(top.expect(0).stdout.contains("State directory:"));
}
