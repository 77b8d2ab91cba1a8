//! A full disk (a real 1 MiB tmpfs as the state dir, root only): records
//! that could not be written are written once space returns, and replicas
//! without one are still adopted, not killed.

use super::*;

/// The `*.tmp` files in a state dir's `run/`.
fn temp_files(state_dir: &Path) -> Vec<String> {
    std::fs::read_dir(state_dir.join("run"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

/// Issue 13, point 9: replicas started again while the disk was full could
/// not write their running records (nor, for a replica's first start, the
/// pid in its instance lock); a supervisor killed then must, once space
/// returns, adopt them (same pids), not kill them as strays, and the shims
/// write their records once they can.
#[test]
fn replicas_started_on_a_full_disk_are_adopted_after_a_crash_and_recorded_once_space_returns() {
    let p = Project::new(
        r#"
[services.web]
command = ["sleep", "1000"]
replicas = 2
restart = { delay = "2s" }
"#,
    );
    let state_dir = p.state_dir();
    let Some(disk) = Tmpfs::mount(&state_dir, "1m") else {
        return;
    };
    let run = state_dir.join("run");
    let supervisor = p.up(&[]);
    let running = |state: &str| {
        let mut replicas = Vec::new();
        wait_until(SOON, || {
            replicas = p.replicas("web");
            replicas.iter().all(|(_, _, s)| s == state)
        });
        replicas
    };
    let before: Vec<i32> = running("running")
        .iter()
        .map(|(_, pid, _)| pid.unwrap() as i32)
        .collect();
    for &pid in &before {
        kill9(pid);
    }
    // While they wait to restart, the disk fills up; web.0 starts as if for
    // the first time (no lock file yet).
    running("backoff");
    // Their exit records go once the checkpoint has the ends: space that
    // would be freed after the disk is full.
    assert!(wait_until(SOON, || (0..2)
        .all(|i| !run.join(format!("web.{i}.exit")).exists())));
    std::fs::remove_file(run.join("web.0.lock")).unwrap();
    let filler = disk.fill();
    let mut now = Vec::new();
    assert!(
        wait_until(SOON, || {
            now = p.replicas("web");
            now.iter().all(|(i, pid, state)| {
                state == "running" && pid.is_some_and(|pid| pid as i32 != before[*i as usize])
            })
        }),
        "not started again: {now:?}\n{}",
        std::fs::read_to_string(state_dir.join("supervise.log")).unwrap_or_default()
    );
    let pids: Vec<i32> = now.iter().map(|(_, pid, _)| pid.unwrap() as i32).collect();
    for i in 0..2 {
        assert!(
            !run.join(format!("web.{i}.running")).exists(),
            "web.{i}'s running record was written on a full disk: the test tests nothing"
        );
    }
    assert_eq!(
        std::fs::metadata(run.join("web.0.lock")).unwrap().len(),
        0,
        "web.0's shim could write its pid into its new lock on a full disk"
    );

    kill9(supervisor);
    assert!(wait_until(SOON, || !is_alive(supervisor)));
    std::fs::remove_file(filler).unwrap();
    // What a writer killed mid-write leaves behind.
    std::fs::write(run.join("gone.0.exit.tmp"), "").unwrap();
    p.up(&[]);

    let resumed = p.replicas("web");
    assert_eq!(
        resumed
            .iter()
            .map(|(_, pid, _)| pid.map(|p| p as i32))
            .collect::<Vec<_>>(),
        pids.iter().copied().map(Some).collect::<Vec<_>>(),
        "not adopted as they were: {resumed:?}"
    );
    for &pid in &pids {
        assert!(is_alive(pid), "replica {pid} was killed");
    }
    let log = std::fs::read_to_string(state_dir.join("supervise.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.ends_with("resumed: 2 adopted, 0 exited while down, 0 unknown")),
        "{log}"
    );
    // Space is back: each shim writes the record it owes.
    for (i, &pid) in pids.iter().enumerate() {
        let path = run.join(format!("web.{i}.running"));
        assert!(
            wait_until(SOON, || {
                std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .is_some_and(|r| r["pid"] == pid)
            }),
            "{} not written after space returned",
            path.display()
        );
    }
    assert_eq!(temp_files(&state_dir), Vec::<String>::new());
    p.run(&["down"]).expect(0);
}

/// A replica that ends while the disk is full: its shim cannot write the
/// exit record, keeps it, and writes it once space returns, so the end is
/// judged by its real exit code, not as an end of unknown status.
#[test]
fn an_exit_on_a_full_disk_is_recorded_once_space_returns() {
    let p = Project::new(
        r#"
[services.job]
command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done; exit 3"]
restart = { policy = "never" }
"#,
    );
    let state_dir = p.state_dir();
    let Some(disk) = Tmpfs::mount(&state_dir, "1m") else {
        return;
    };
    p.up(&[]);
    let mut pid = None;
    assert!(wait_until(SOON, || {
        pid = p.replicas("job")[0].1;
        pid.is_some()
    }));
    let pid = pid.unwrap() as i32;
    let filler = disk.fill();
    std::fs::write(p.dir().join("go"), "").unwrap();
    assert!(wait_until(SOON, || !is_alive(pid)));
    std::fs::remove_file(filler).unwrap();
    let mut events = String::new();
    assert!(
        wait_until(SOON, || {
            events = p.run(&["events"]).expect(0).stdout.clone();
            events
                .lines()
                .any(|l| l.contains("job.0") && l.contains("; failed"))
        }),
        "{events}"
    );
    assert!(
        events.contains("job.0 exited with code 3; failed (restart policy is never)"),
        "{events}"
    );
    assert_eq!(temp_files(&state_dir), Vec::<String>::new());
    p.run(&["down"]).expect(0);
}

/// On a full disk, `scale`, `stop` and `reload` are carried out (a `stop`
/// is what one reaches for when a replica's logs filled the disk), each
/// saying on stderr that the change is not recorded yet; it is written once
/// space returns.
#[test]
fn desired_state_changes_on_a_full_disk_are_carried_out_and_said_to_be_unrecorded() {
    let p = Project::new(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let state_dir = p.state_dir();
    let Some(disk) = Tmpfs::mount(&state_dir, "1m") else {
        return;
    };
    p.up(&[]);
    let states = |wanted: &[&str]| {
        let mut now = Vec::new();
        let reached = wait_until(SOON, || {
            now = p.replicas("web");
            now.iter()
                .map(|(_, _, s)| s.as_str())
                .eq(wanted.iter().copied())
        });
        assert!(reached, "wanted {wanted:?}, have {now:?}");
    };
    states(&["running"]);
    let filler = disk.fill();
    let unrecorded = |ran: &Ran| {
        assert!(
            ran.stderr.contains("warning: not recorded in ")
                && ran.stderr.contains("No space left on device"),
            "{ran:#?}"
        );
    };

    let ran = p.run(&["scale", "web=2"]);
    ran.expect(0);
    unrecorded(&ran);
    states(&["running", "running"]);
    let ran = p.run(&["stop", "--no-wait", "web.1"]);
    ran.expect(0);
    unrecorded(&ran);
    states(&["running", "stopped"]);
    let ran = p.run(&["reload"]);
    ran.expect(0);
    unrecorded(&ran);

    std::fs::remove_file(filler).unwrap();
    let mut desired = serde_json::Value::Null;
    assert!(
        wait_until(SOON, || {
            desired = checkpoint_in(&state_dir)["desired"].clone();
            desired["scaled"]["web"]["replicas"] == 2
                && desired["stopped"] == serde_json::json!(["web.1"])
        }),
        "not written once space returned: {desired:#}"
    );
    let ran = p.run(&["scale", "web=1"]);
    ran.expect(0);
    assert!(!ran.stderr.contains("warning"), "{ran:#?}");
    p.run(&["down"]).expect(0);
}
