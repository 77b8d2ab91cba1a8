//! The commands that steer a running supervisor, end to end: a real
//! supervisor started with `supervise up -d` in a temporary directory,
//! steered with the real binary (status, start/stop/restart, scale, reload,
//! wait, events), each command's output and exit code checked.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

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

#[test]
fn status_json_is_schema_1_field_by_field() {
    let p = Project::new(JOB_THEN_WEB);
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
        "cpu_percent",
        "cpu_seconds",
        "health",
        "index",
        "last_exit",
        "memory_bytes",
        "pid",
        "processes",
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
        // What it uses, sampled for this request (a `sleep`: one process).
        assert!(r["cpu_seconds"].as_f64().is_some(), "{r}");
        assert!(r["cpu_percent"].as_f64().is_some(), "{r}");
        assert!(r["memory_bytes"].as_u64().is_some_and(|m| m > 0), "{r}");
        assert!(r["processes"].as_u64().is_some_and(|n| n >= 1), "{r}");
    }
    let j = &job["replicas"][0];
    assert_eq!(keys(j), replica_keys);
    assert_eq!(
        (&j["state"], &j["pid"]),
        (&Value::from("exited"), &Value::Null)
    );
    assert_eq!(j["health"], "unknown");
    for usage in ["cpu_seconds", "cpu_percent", "memory_bytes", "processes"] {
        assert_eq!(j[usage], Value::Null, "{usage} of an exited replica");
    }
    let last = &j["last_exit"];
    assert_eq!(keys(last), ["at", "code", "reason", "signal"]);
    assert_eq!(last["reason"], Value::Null);
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
    let p = Project::new(JOB_THEN_WEB);
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
            "CPU",
            "MEM",
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
    assert!(web0[8].ends_with('%'), "CPU like 0.1%: {web0:?}");
    assert!(
        web0[9].ends_with("iB"),
        "memory like 1.2MiB (a sleep): {web0:?}"
    );
    assert_eq!(web0[10], "-");
    let web1 = row("web.1");
    assert_eq!(&web1[2..4], ["-", "stopped"]);
    assert_eq!(&web1[8..10], ["-", "-"], "no usage without processes");
    assert_eq!(web1[10], "SIGTERM", "{web1:?}");
    assert!(web1[11].starts_with('(') && web1[12] == "ago)", "{web1:?}");
    let job = row("job.0");
    assert_eq!(&job[3..4], ["exited"]);
    assert_eq!(&job[10..12], ["code", "0"]);
    assert!(job[12].starts_with('(') && job[13] == "ago)", "{job:?}");
    assert!(!ran.stdout.contains('\x1b'), "no colour when piped");

    let ran = p.run(&["status", "nope"]);
    ran.expect(2);
    assert!(
        ran.stderr
            .contains("no service named nope (it has job, web)"),
        "{ran:#?}"
    );
}

#[test]
fn stop_start_and_restart_wait_for_the_state_they_ask_for() {
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
    p.up(&[]);
    p.run(&["stop", "web"]).expect(0);
    let ran = p.run(&["start", "--no-wait", "web.0"]);
    assert_eq!(ran.expect(0).stdout, "web.0\n");
    p.run(&["wait", "web.0", "--timeout", "10s"]).expect(0);
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
    let events = p.events();
    // The history ends with the three first spawns, in whatever order.
    let first = (0..3)
        .map(|i| events.expect("spawned", &format!("web.{i}")).index)
        .max()
        .unwrap();

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
    let order = || -> Vec<(String, String)> {
        events
            .matching(|e| e.index > first && (e.event == "stopping" || e.event == "spawned"))
            .into_iter()
            .map(|e| (e.event.clone(), e.name()))
            .collect()
    };
    wait_until(SOON, || order().len() >= 6);
    let wanted: Vec<(String, String)> = (0..3)
        .flat_map(|i| ["stopping", "spawned"].map(|e| (e.to_string(), format!("web.{i}"))))
        .collect();
    assert_eq!(order(), wanted, "{}", events.dump());
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

#[test]
fn scale_starts_and_stops_replicas() {
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
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

#[test]
fn events_show_the_history_and_follow_new_ones() {
    let p = Project::new(JOB_THEN_WEB);
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

    // `events -f`: the history, then live, until the supervisor ends.
    let mut follower = p
        .command(&["events", "-f", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = Lines::reading(follower.stdout.take().unwrap());
    let record = |l: &str| serde_json::from_str::<Value>(l).unwrap();
    let spawned_web1 = |l: &str, pid: Option<i64>| {
        let r = record(l);
        r["event"] == "spawned"
            && r["service"] == "web"
            && r["replica"] == 1
            && pid.is_none_or(|pid| r["pid"] == pid)
    };
    let first = lines.wait_for(SOON, |l| spawned_web1(l, None));
    assert!(first.is_some(), "{:?}", lines.texts());
    p.run(&["restart", "web.1"]).expect(0);
    let pid = pid_of(&p.replicas("web"), 1);
    let again = lines.wait_from(first.unwrap().index + 1, SOON, |l| {
        spawned_web1(l, Some(pid))
    });
    assert!(again.is_some(), "{:?}", lines.texts());
    p.run(&["down"]).expect(0);
    let ended = wait_bounded(&mut follower, SOON);
    assert_eq!(ended.and_then(|s| s.code()), Some(0));
}

#[test]
fn every_subcommand_has_examples_and_exit_statuses_in_its_help() {
    let p = Project::new(JOB_THEN_WEB);
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

#[test]
fn commands_find_their_supervisor_while_the_spec_is_being_edited() {
    let p = Project::new(
        r#"
[supervisor]
state_dir = "state"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    p.up(&[]);
    let spec = p.dir().join("supervise.toml");
    // Invalid as a spec (before: exit 2 for every command), and then not even
    // TOML any more (a warning; the state dir is still read).
    std::fs::write(
        &spec,
        "[supervisor]\nstate_dir = \"state\"\n[services.web]\nreplicas = \"x\"\n",
    )
    .unwrap();
    let ran = p.run(&["status"]);
    ran.expect(0);
    assert!(ran.stdout.contains("web.0"), "{ran:#?}");
    assert_eq!(ran.stderr, "", "{ran:#?}");
    std::fs::write(
        &spec,
        "[supervisor]\nstate_dir = \"state\"\n[services.web]\ncommand = [\"sleep\",\n",
    )
    .unwrap();
    let ran = p.run(&["status", "--json"]);
    ran.expect(0);
    assert!(ran.stdout.contains("\"web\""), "{ran:#?}");
    assert!(ran.stderr.starts_with("warning: "), "{ran:#?}");
    assert!(
        ran.stderr.contains("is not valid TOML right now"),
        "{ran:#?}"
    );
    // What validates still validates.
    p.run(&["check"]).expect(2);
    p.run(&["reload"]).expect(1);
    std::fs::write(
        &spec,
        "[supervisor]\nstate_dir = \"state\"\n[services.web]\ncommand = [\"sleep\", \"1000\"]\n",
    )
    .unwrap();
    p.run(&["down"]).expect(0);
}
