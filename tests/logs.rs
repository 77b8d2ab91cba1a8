//! `logs`, end to end: merged in time order, selected, as JSON, followed
//! through rotation; from files written the way a shim writes them, and
//! from real replicas.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::*;
use serde_json::Value;

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
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
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
    let p = Project::new(JOB_THEN_WEB);
    p.up(&[]);
    let wanted = ["job.0 │ ", "migrated", "hello from 0", "hello from 1"];
    let logs = p.logs_holding(&[], &wanted);
    assert!(logs.is_ok(), "{wanted:?} in {logs:?}");
}
