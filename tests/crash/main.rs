//! Crash safety (docs/design.md §10): the real supervisor is killed with SIGKILL and
//! started again on the same state dir, and must resume with exactly the
//! desired replicas — none lost, none duplicated, no stray left — with its
//! counters and the replicas' logs intact.
//!
//! A `Supervise` guard kills, on drop, every process carrying its test
//! marker; replicas adopted by a later supervisor still carry the marker of
//! the one that spawned them, so every guard of a test is kept until the
//! test's final shutdown.

#[path = "../common/mod.rs"]
mod common;
mod full_disk;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Live processes of this state dir running `comm`, by replica name.
fn commands(state_dir: &Path, comm: &str) -> BTreeMap<String, Vec<i32>> {
    let mut by_replica: BTreeMap<String, Vec<(i32, i32)>> = BTreeMap::new();
    for (pid, replica) in supervise::procfs::marked_by_state_dir(state_dir) {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if name.trim() != comm {
            continue;
        }
        if let Some((state, parent)) = proc_stat(pid.as_raw())
            && state != 'Z'
        {
            by_replica
                .entry(replica)
                .or_default()
                .push((pid.as_raw(), parent));
        }
    }
    // A child the command has forked but not yet exec'd (`sh` running
    // `sleep`) still bears the command's name: it is part of the same
    // incarnation, not a second one.
    by_replica
        .into_iter()
        .map(|(replica, procs)| {
            let pids: Vec<i32> = procs
                .iter()
                .filter(|(_, parent)| !procs.iter().any(|(pid, _)| pid == parent))
                .map(|(pid, _)| *pid)
                .collect();
            (replica, pids)
        })
        .collect()
}

/// Restarts again on the same state dir, after the previous one was killed.
fn resume(previous: &Supervise) -> Supervise {
    let next = previous.another().start();
    next.expect_said(r"^resumed: ", SOON);
    next
}

const CHAOS_SPEC: &str = r#"
[services.steady]
command = ["sleep", "1000"]
replicas = 3
[services.steady.failover]
mode = "active-standby"

[services.flappy]
command = ["sh", "-c", "sleep 0.2; exit 1"]
replicas = 2
[services.flappy.restart]
delay = "10ms"
max_delay = "50ms"
limit = 0

# Restarted by its shim (delay 0s), whose leave a resuming supervisor revokes.
[services.quick]
command = ["sh", "-c", "sleep 0.1; exit 1"]
replicas = 2
[services.quick.restart]
delay = "0s"
limit = 0
"#;

/// Kills the supervisor at random moments and checks, after every resume,
/// the invariants of docs/design.md §10. `SUPERVISE_CHAOS_KILLS` (default 30) and
/// `SUPERVISE_CHAOS_SEED` (default: random, printed) set the run;
/// `scripts/chaos` runs it long.
#[test]
fn kill_9_chaos_resumes_with_exactly_the_desired_replicas() {
    let kills: usize = std::env::var("SUPERVISE_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("SUPERVISE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("chaos: seed {seed}, {kills} kills (SUPERVISE_CHAOS_SEED={seed} repeats this run)");
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut guards = vec![Supervise::start(CHAOS_SPEC)];
    guards[0].expect_spawned("steady.2");
    let state_dir = guards[0].state_dir();
    let mut restarts_seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut check_restarts = |round: usize, report: &serde_json::Value| {
        for service in report["services"].as_array().unwrap() {
            for r in service["replicas"].as_array().unwrap() {
                let name = format!("{}.{}", service["name"].as_str().unwrap(), r["index"]);
                let now = r["restarts"].as_u64().unwrap();
                let before = restarts_seen.get(&name).copied().unwrap_or(0);
                assert!(
                    now >= before,
                    "round {round} (seed {seed}): {name} restarts went from {before} to {now}"
                );
                restarts_seen.insert(name, now);
            }
        }
    };
    for round in 0..kills {
        // The chaos: SIGKILL at a random moment of the supervisor's life,
        // right after reading its restart counts (the newest it has shown).
        std::thread::sleep(Duration::from_millis(rng.u64(20..400)));
        if let Some(report) = socket_status(&state_dir) {
            check_restarts(round, &report);
        }
        let victim = guards.last_mut().unwrap();
        victim.kill9();
        let next = resume(guards.last().unwrap());

        // I1/I2: within a bounded time each steady replica has exactly one
        // process, and at no point two.
        let deadline = Instant::now() + SOON;
        loop {
            let steady = commands(&state_dir, "sleep");
            for (replica, pids) in &steady {
                assert!(
                    pids.len() <= 1,
                    "round {round} (seed {seed}): {replica} runs twice: {pids:?}"
                );
            }
            let flappy = commands(&state_dir, "sh");
            for (replica, pids) in &flappy {
                assert!(
                    pids.len() <= 1,
                    "round {round} (seed {seed}): {replica} runs twice: {pids:?}"
                );
            }
            if (0..3).all(|i| steady.contains_key(&format!("steady.{i}"))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round} (seed {seed}): steady replicas missing: {steady:?}\n{}",
                next.transcript()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // I3: no marked process outside a known replica.
        for (pid, replica) in supervise::procfs::marked_by_state_dir(&state_dir) {
            assert!(
                [
                    "steady.0", "steady.1", "steady.2", "flappy.0", "flappy.1", "quick.0",
                    "quick.1"
                ]
                .contains(&replica.as_str()),
                "round {round} (seed {seed}): stray process {pid} of {replica:?}"
            );
        }
        // I4: the checkpoint parses, no temp file lingers past a write.
        let text = std::fs::read_to_string(state_dir.join("checkpoint.json"))
            .unwrap_or_else(|e| panic!("round {round}: no checkpoint: {e}"));
        let checkpoint: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("round {round}: torn checkpoint: {e}\n{text}"));
        assert_eq!(checkpoint["version"], 1);
        // I6: restart counts never go backwards.
        let report = socket_status(&state_dir).expect("status after resume");
        check_restarts(round, &report);
        // The failover service keeps exactly one active: never two (an
        // adopted active stays the only one), and one again at once.
        let actives = |r: &serde_json::Value| {
            (0..3)
                .filter(|&i| replica_in(r, "steady", i)["role"] == "active")
                .count()
        };
        assert!(
            actives(&report) <= 1,
            "round {round} (seed {seed}): two actives: {report:#}"
        );
        assert!(
            wait_until(SOON, || socket_status(&state_dir)
                .is_some_and(|r| actives(&r) == 1)),
            "round {round} (seed {seed}): no active after resume"
        );
        guards.push(next);
    }
    let report = socket_status(&state_dir).unwrap();
    for service in ["flappy", "quick"] {
        assert!(
            replica_in(&report, service, 0)["restarts"]
                .as_u64()
                .unwrap()
                > 0,
            "{service} never restarted: the test exercised nothing"
        );
    }
    let last = guards.last_mut().unwrap();
    last.signal(Signal::SIGINT);
    assert_eq!(last.expect_exit(SOON), 0, "{}", last.transcript());
    assert!(
        wait_until(SOON, || supervise::procfs::marked_by_state_dir(&state_dir)
            .is_empty()),
        "left after the final shutdown: {:?}",
        supervise::procfs::marked_by_state_dir(&state_dir)
    );
}

#[test]
fn log_of_a_replica_has_every_line_once_across_three_supervisor_crashes() {
    let spec = r#"
[services.counter]
command = ["python3", "-u", "-c", "import itertools, time\nfor i in itertools.count():\n    print(i)\n    time.sleep(0.01)"]
"#;
    let mut guards = vec![Supervise::start(spec)];
    guards[0].expect_spawned("counter.0");
    let log = guards[0].state_dir().join("logs/counter.0.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.splitn(3, ' ').nth(2)?.parse::<u64>().ok())
            .collect::<Vec<u64>>()
    };
    for crash in 0..3 {
        let before = lines().len();
        assert!(
            wait_until(SOON, || lines().len() >= before + 20),
            "the counter stalled"
        );
        let victim = guards.last_mut().unwrap();
        victim.kill9();
        // While no supervisor runs, the replica goes on and so does its log.
        let during = lines().len();
        assert!(
            wait_until(SOON, || lines().len() >= during + 10),
            "crash {crash}: the log stopped while the supervisor was down"
        );
        let next = resume(guards.last().unwrap());
        next.expect_said(
            r"^resumed: 1 adopted, 0 exited while down, 0 unknown$",
            SOON,
        );
        guards.push(next);
    }
    let before = lines().len();
    assert!(wait_until(SOON, || lines().len() >= before + 20));
    let last = guards.last_mut().unwrap();
    last.signal(Signal::SIGINT);
    assert_eq!(last.expect_exit(SOON), 0);
    let seen = lines();
    let expected: Vec<u64> = (0..seen.len() as u64).collect();
    assert!(
        seen.len() > 100,
        "too few lines to prove anything: {}",
        seen.len()
    );
    assert_eq!(seen, expected, "lines lost or duplicated");
}

#[test]
fn a_quiet_foreground_up_still_warns_of_a_checkpoint_set_aside() {
    let mut first = Supervise::start("[services.web]\ncommand = [\"sleep\", \"1000\"]\n");
    first.expect_spawned("web.0");
    let checkpoint = first.state_dir().join("checkpoint.json");
    assert!(wait_until(SOON, || checkpoint.exists()));
    first.kill9();
    std::fs::write(&checkpoint, "{ torn").unwrap();
    // -q hides event lines, and before this the warning with them.
    let next = first.another().arg("-q").start();
    next.err
        .wait_for(SOON, |l| {
            l.starts_with("warning: ") && l.contains("checkpoint.json is damaged")
        })
        .expect("no warning of the damaged checkpoint");
    next.expect("adopted", "web.0");
    assert!(next.said().is_empty(), "{:?}", next.said());
}

#[test]
fn damaged_checkpoint_is_set_aside_with_one_clear_line_and_nothing_is_duplicated() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
replicas = 2
"#,
    );
    let pids = [first.expect_spawned("web.0"), first.expect_spawned("web.1")];
    let state_dir = first.state_dir();
    let checkpoint = state_dir.join("checkpoint.json");
    assert!(wait_until(SOON, || checkpoint.exists()));
    first.kill9();
    let text = std::fs::read(&checkpoint).unwrap();
    std::fs::write(&checkpoint, &text[..text.len() / 2]).unwrap();

    let next = first.another().start();
    let line = next
        .err
        .wait_for(SOON, |l| l.contains("checkpoint.json is damaged"))
        .expect("no report of the damaged checkpoint");
    assert!(line.text.contains("moved to "), "{}", line.text);
    next.expect_said(
        r"^resumed: 2 adopted, 0 exited while down, 0 unknown$",
        SOON,
    );
    let aside: Vec<_> = std::fs::read_dir(&state_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("checkpoint.bad-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file was not kept aside");
    for pid in pids {
        assert!(is_alive(pid));
    }
    let sleeps = commands(&state_dir, "sleep");
    assert_eq!(
        sleeps.values().map(Vec::len).sum::<usize>(),
        2,
        "{sleeps:?}"
    );
}

#[test]
fn a_resumed_foreground_up_shows_the_output_of_adopted_replicas_once() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "i=0; while :; do echo tick $$ $i; i=$((i+1)); sleep 0.05; done"]
restart = { delay = "0s" }
"#,
    );
    let adopted = first.expect_spawned("web.0");
    first.expect_output("web.0", &format!("^tick {adopted} 1$"), SOON);
    first.kill9();

    let next = first.another().start();
    assert_eq!(next.expect("adopted", "web.0").pid, Some(adopted));
    // Before, an adopted replica's lines were only in its log file.
    next.expect_output("web.0", &format!(r"^tick {adopted} \d+$"), SOON);

    // Its successor writes through the new supervisor's pipe: no line is
    // shown twice (the old tail is closed before it starts).
    kill9(adopted);
    let successor = next.expect_spawned("web.0");
    next.expect_output("web.0", &format!("^tick {successor} 10$"), SOON);
    let output = next.output();
    for i in 0..=10 {
        let line = format!("tick {successor} {i}");
        let shown = output.iter().filter(|(_, text)| *text == line).count();
        assert_eq!(
            shown,
            1,
            "{line:?} shown {shown} times\n{}",
            next.transcript()
        );
    }
}

#[test]
fn a_replica_started_from_a_since_edited_definition_is_restarted_on_resume() {
    let spec = |greeting: &str| {
        format!(
            r#"
[services.web]
command = ["sh", "-c", "echo greeting=$GREETING; exec sleep 1000"]
env = {{ GREETING = "{greeting}" }}
[services.db]
command = ["sleep", "1000"]
"#
        )
    };
    let mut first = Supervise::start(&spec("hello"));
    let old = first.expect_spawned("web.0");
    let db = first.expect_spawned("db.0");
    first.expect_output("web.0", "^greeting=hello$", SOON);
    first.kill9();
    std::fs::write(first.spec_path(), spec("bonjour")).unwrap();

    let next = first.another().start();
    // Before, web.0 was adopted with its old environment and kept.
    let outdated = next.expect("outdated", "web.0");
    assert_eq!(outdated.pid, Some(old));
    let (_, new) = next.expect_spawned_after(&outdated, "web.0");
    assert_ne!(new, old);
    next.expect_output("web.0", "^greeting=bonjour$", SOON);
    assert!(wait_until(SOON, || !is_alive(old)));
    // What did not change is adopted and kept.
    assert_eq!(next.expect("adopted", "db.0").pid, Some(db));
    assert!(is_alive(db));
    assert!(next.events().count("outdated", "db.0") == 0);
}

#[test]
fn a_checkpoint_set_aside_at_up_detached_is_told_by_up_and_by_events() {
    let p = Project::new(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let supervisor = p.up(&[]);
    let checkpoint = p.state_dir().join("checkpoint.json");
    assert!(wait_until(SOON, || checkpoint.exists()));
    kill9(supervisor);
    assert!(wait_until(SOON, || !is_alive(supervisor)));
    std::fs::write(&checkpoint, "{ torn").unwrap();

    let ran = p.run(&["up", "-d"]);
    ran.expect(0);
    let said = regex::Regex::new(r"(?m)^warning: .*checkpoint\.json is damaged.*; moved to .*checkpoint\.bad-.*; resuming from the running replicas alone$").unwrap();
    assert!(said.is_match(&ran.stderr), "{ran:#?}");
    let events = p.run(&["events", "--json"]).expect(0).stdout.clone();
    assert!(
        events.contains(r#""event":"checkpoint_set_aside""#),
        "{events}"
    );
}

#[test]
fn replica_that_exits_while_no_supervisor_runs_is_handled_by_its_policy_on_resume() {
    let mut first = Supervise::start(
        r#"
[services.job]
command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done; exit 3"]
restart = { delay = "50ms" }
"#,
    );
    let pid = first.expect_spawned("job.0");
    let (_, shim) = proc_stat(pid).unwrap();
    first.kill9();
    std::fs::write(first.dir().join("go"), "").unwrap();
    // Gone means its shim too, with the exit on record.
    assert!(
        wait_until(SOON, || !is_alive(pid) && !is_alive(shim)),
        "the job did not exit"
    );
    std::fs::remove_file(first.dir().join("go")).unwrap();

    let next = first.another().start();
    next.expect_said(
        r"^resumed: 0 adopted, 1 exited while down, 0 unknown$",
        SOON,
    );
    let restart = next.expect("restarted", "job.0");
    let (_, again) = next.expect_spawned_after(&restart, "job.0");
    assert_ne!(again, pid);
    let report = socket_status(&next.state_dir()).unwrap();
    let replica = &report["services"][0]["replicas"][0];
    assert_eq!(replica["last_exit"]["code"], 3, "{report}");
    assert_eq!(replica["restarts"], 1);
}

/// Makes every checkpoint write of `state_dir` fail until the returned
/// directory is removed: the temp file's name is taken by it.
fn block_checkpoint(state_dir: &Path) -> std::path::PathBuf {
    let blocker = state_dir.join("checkpoint.json.tmp");
    // (A save may hold the name for a moment as a file of its own.)
    assert!(
        wait_until(SOON, || std::fs::create_dir(&blocker).is_ok()),
        "cannot make {} a directory",
        blocker.display()
    );
    blocker
}

#[test]
fn a_checkpoint_that_cannot_be_written_is_reported_and_supervision_goes_on() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "50ms" }
"#,
    );
    let first = sup.expect_spawned("web.0");
    let state_dir = sup.state_dir();
    let blocker = block_checkpoint(&state_dir);
    kill9(first);
    sup.expect_said(r"^checkpoint: cannot write .*; retrying$", SOON);
    sup.expect_restart("web.0", first);
    // Once writing works again, the state reaches the disk.
    std::fs::remove_dir(&blocker).unwrap();
    assert!(
        wait_until(SOON, || std::fs::read_to_string(
            state_dir.join("checkpoint.json")
        )
        .is_ok_and(|t| t.contains("\"restarts\": 1"))),
        "the checkpoint was not written after the fault cleared"
    );
}

/// A restart count `status` has shown survives a `kill -9`, however far the
/// checkpoint lags behind: here it cannot be written at all (the batch window
/// made endless), and nothing of the restarted incarnation is left on record
/// (its exit record was read and removed).
#[test]
fn a_restart_count_once_shown_survives_a_kill_9_before_the_checkpoint_has_it() {
    let mut first = Supervise::start(
        r#"
[services.job]
command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done; exit 1"]
restart = { delay = "10ms", limit = 1 }
"#,
    );
    first.expect_spawned("job.0");
    let state_dir = first.state_dir();
    let blocker = block_checkpoint(&state_dir);
    let go = first.dir().join("go");
    std::fs::write(&go, "").unwrap();
    // Restarted once, and failed at its second end (limit 1): settled.
    first.expect("failed", "job.0");
    let shown = first.replica("job", 0);
    assert_eq!(shown["state"], "failed", "{shown:#}");
    let shown = shown["restarts"].as_u64().unwrap();
    first.kill9();
    // The resumed run waits: whatever it shows is what it resumed with.
    std::fs::remove_file(&go).unwrap();
    std::fs::remove_dir(&blocker).unwrap();

    let mut next = resume(&first);
    let resumed = next.replica("job", 0)["restarts"].as_u64().unwrap();
    assert!(
        resumed >= shown,
        "restarts went from {shown} to {resumed} across the kill -9\n{}",
        next.transcript()
    );
    // With a checkpoint that can be written, a restart is shown as soon as
    // it is told (within the batch window too), and is on disk by then.
    std::fs::write(&go, "").unwrap();
    let exited = next.expect("exited", "job.0");
    next.expect_after(&exited, "restarted", "job.0");
    let shown = next.restarts("job", 0);
    assert_eq!(shown, resumed + 1, "{}", next.transcript());
    let checkpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("checkpoint.json")).unwrap()).unwrap();
    let on_disk = checkpoint["replicas"]["job.0"]["restarts"]
        .as_u64()
        .unwrap();
    assert!(on_disk >= shown, "shown {shown}, on disk {on_disk}");
    next.expect("failed", "job.0");
    next.signal(Signal::SIGINT);
    assert_eq!(next.expect_exit(SOON), 0, "{}", next.transcript());
}

#[test]
fn a_stale_record_naming_a_recycled_pid_is_never_adopted_or_signalled() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let replica = first.expect_spawned("web.0");
    let (_, shim) = proc_stat(replica).unwrap();
    first.kill9();
    kill9(shim);
    kill9(replica);
    assert!(wait_until(SOON, || !is_alive(replica) && !is_alive(shim)));

    // A stranger now holds what looks like the replica's identity: its pid
    // and start time are in the record (as if the pid had been recycled).
    let dir = first.dir().to_path_buf();
    let mut decoy = std::process::Command::new("python3")
        .args([
            "-c",
            "import signal, sys, time\n\
             def note(n, _):\n    open(sys.argv[1], 'a').write(f'{n}\\n')\n\
             for s in signal.valid_signals():\n\
             \x20   try: signal.signal(s, note)\n\
             \x20   except (OSError, ValueError): pass\n\
             print('ready', flush=True)\n\
             time.sleep(1000)",
        ])
        .arg(dir.join("decoy-signals"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(decoy.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let decoy_pid = decoy.id();
    let start = supervise::procfs::start_time(decoy_pid).unwrap();
    let run = first.state_dir().join("run");
    let mut record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("web.0.running")).unwrap()).unwrap();
    record["shim_pid"] = decoy_pid.into();
    record["shim_start"] = start.into();
    record["pid"] = decoy_pid.into();
    record["pid_start"] = start.into();
    std::fs::write(run.join("web.0.running"), record.to_string()).unwrap();
    std::fs::write(run.join("web.0.lock"), decoy_pid.to_string()).unwrap();

    let next = first.another().start();
    next.expect_said(
        r"^resumed: 0 adopted, 0 exited while down, 1 unknown$",
        SOON,
    );
    let fresh = next.expect_spawned("web.0");
    assert_ne!(fresh as u32, decoy_pid);
    assert!(is_alive(decoy_pid as i32), "the decoy was killed");
    let signals = std::fs::read_to_string(dir.join("decoy-signals")).unwrap_or_default();
    assert_eq!(signals, "", "the decoy was signalled");
    let _ = decoy.kill();
    let _ = decoy.wait();
}

/// A notify replica adopted after a crash still reaches the supervisor
/// that resumed it: the `NOTIFY_SOCKET` in its environment names the
/// socket every supervisor of this state dir binds.
#[test]
fn an_adopted_notify_replica_still_reaches_the_resumed_supervisor() {
    let mut guards = vec![Supervise::start(&ready_on_go("daemon"))];
    let pid = guards[0].expect_spawned("daemon.0");
    guards[0].kill9();
    let next = resume(&guards[0]);
    assert_eq!(next.expect("adopted", "daemon.0").pid, Some(pid));
    std::fs::write(next.dir().join("go"), "").unwrap();
    next.expect("healthy", "daemon.0");
    guards.push(next);
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
    first.kill9();

    // The revoke and the replica's death reach the shim at the same wake-up
    // (it is stopped meanwhile): the revoke must win all the same.
    kill(Pid::from_raw(shim), Signal::SIGSTOP).unwrap();
    assert!(wait_until(SOON, || proc_stat(shim).is_some_and(|s| s.0 == 'T')));
    let second = first.another().start();
    second.expect("adopted", "web.0");
    kill9(pid);
    assert!(wait_until(SOON, || proc_stat(pid).is_some_and(|s| s.0 == 'Z')));
    kill(Pid::from_raw(shim), Signal::SIGCONT).unwrap();
    let (_, again) = second.expect_restart("web.0", pid);
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
    first.kill9();

    let mut second = first.another().start();
    second.expect_said(
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
    let (_, again) = second.expect_restart("web.0", replicas[0]);
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

/// Starts `spec`, whose `job.0` ends once `go` exists, and makes it end
/// while the checkpoint cannot be written (see `block_checkpoint`, whose
/// blocker is returned): its end is then only in its exit record.
fn end_job_with_the_checkpoint_blocked(spec: &str) -> (Supervise, std::path::PathBuf) {
    let first = Supervise::start(spec);
    first.expect_spawned("job.0");
    let blocker = block_checkpoint(&first.state_dir());
    std::fs::write(first.dir().join("go"), "").unwrap();
    first.expect("exited", "job.0");
    (first, blocker)
}

/// Resumes after `first` and checks that `job.0` ended while no supervisor
/// ran, judged by the record its shim left, and that it ran as `runs` (one
/// line per run) says: a run more would have added a line before its exit.
fn resume_finds_the_job_exited_after(first: &Supervise, runs: &str) {
    let mut next = resume(first);
    next.expect_said(
        r"^resumed: 0 adopted, 1 exited while down, 0 unknown$",
        SOON,
    );
    assert_eq!(
        next.replica("job", 0)["state"],
        "exited",
        "{}",
        next.transcript()
    );
    let ran = std::fs::read_to_string(first.dir().join("runs")).unwrap();
    assert_eq!(ran, runs, "the job ran again\n{}", next.transcript());
    next.signal(Signal::SIGINT);
    assert_eq!(next.expect_exit(SOON), 0, "{}", next.transcript());
}

/// A replica that ended is not run again by the supervisor that resumes
/// after a `kill -9`, however far the checkpoint lagged behind the end: its
/// shim's exit record stays until a checkpoint that has the end is on disk.
/// (Here the checkpoint cannot be written at all, so the end is only in the
/// exit record.)
#[test]
fn a_job_that_ended_is_not_run_again_after_a_kill_9_before_the_checkpoint_has_it() {
    let (mut first, blocker) = end_job_with_the_checkpoint_blocked(
        r#"
[services.job]
command = ["sh", "-c", "echo run >> runs; while [ ! -e go ]; do sleep 0.02; done; exit 0"]
restart = { policy = "on-failure" }
"#,
    );
    first.kill9();
    std::fs::remove_dir(&blocker).unwrap();

    resume_finds_the_job_exited_after(&first, "run\n");
}

/// The other side of the same window: a crash after the checkpoint with the
/// end was written, but before the exit record was removed. The record is
/// not judged again (another failure, which would move the backoff).
#[test]
fn an_exit_record_the_checkpoint_has_judged_is_not_judged_again_after_a_kill_9() {
    let (mut first, blocker) = end_job_with_the_checkpoint_blocked(
        r#"
[services.job]
command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done; exit 3"]
restart = { delay = "1h" }
"#,
    );
    let state_dir = first.state_dir();
    // Kept until a checkpoint has the end...
    let record = state_dir.join("run/job.0.exit");
    let kept = std::fs::read(&record).expect("the exit record is kept");
    std::fs::remove_dir(&blocker).unwrap();
    // ...and removed once one has.
    assert!(
        wait_until(SOON, || !record.exists()),
        "the exit record stayed after the checkpoint was written\n{}",
        first.transcript()
    );
    let before = first.replica("job", 0);
    first.kill9();
    std::fs::write(&record, kept).unwrap();

    let next = resume(&first);
    // Judged again, it would be another failure: a new backoff deadline.
    let after = next.replica("job", 0);
    assert_eq!(after["state"], "backoff", "{}", next.transcript());
    let due = |replica: &serde_json::Value| {
        humantime::parse_rfc3339(replica["restart_at"].as_str().expect("restart_at"))
            .expect("an RFC 3339 time")
    };
    let moved = due(&after)
        .duration_since(due(&before))
        .unwrap_or_else(|earlier| earlier.duration());
    assert!(
        moved < Duration::from_secs(1),
        "the backoff deadline moved from {} to {}\n{}",
        before["restart_at"],
        after["restart_at"],
        next.transcript()
    );
    assert_eq!(after["restarts"], before["restarts"]);
    next.expect_said(
        r"^resumed: 0 adopted, 0 exited while down, 0 unknown$",
        SOON,
    );
    assert!(!record.exists(), "the judged record was left behind");
}

/// An incarnation its shim started again by itself (a restart with no
/// delay) is running, not ended: when it ends while no supervisor runs, the
/// next one judges its exit record instead of starting it once more.
#[test]
fn a_job_its_shim_restarted_that_ends_while_down_is_judged_by_its_record() {
    let mut first = Supervise::start(
        r#"
[services.job]
command = ["sh", "-c", "echo run >> runs; if [ ! -e failed ]; then touch failed; exit 1; fi; while [ ! -e go ]; do sleep 0.02; done; exit 0"]
restart = { policy = "on-failure", delay = "0s" }
"#,
    );
    let restarted = first.expect("restarted", "job.0");
    let (_, second) = first.expect_spawned_after(&restarted, "job.0");
    let (_, shim) = proc_stat(second).unwrap();
    let state_dir = first.state_dir();
    // The checkpoint has the second incarnation.
    assert!(
        wait_until(
            SOON,
            || checkpoint_in(&state_dir)["replicas"]["job.0"]["generation"] == 2
        ),
        "{}",
        first.transcript()
    );
    first.kill9();
    std::fs::write(first.dir().join("go"), "").unwrap();
    // Gone means its shim too, with the exit on record.
    assert!(wait_until(SOON, || !is_alive(second) && !is_alive(shim)));
    assert!(state_dir.join("run/job.0.exit").exists(), "no exit record");

    resume_finds_the_job_exited_after(&first, "run\nrun\n");
}

/// A replica stopped by request whose end is not on the checkpoint yet when
/// the supervisor is killed stays stopped after the resume: the end of a
/// stop is not judged by the restart policy (`never` would make it failed).
#[test]
fn a_replica_stopped_by_request_stays_stopped_after_a_kill_9_before_the_checkpoint_has_it() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sh", "-c", "trap 'while [ ! -e go ]; do sleep 0.02; done; exit 0' TERM; while :; do sleep 0.05; done"]
restart = { policy = "never" }
"#,
    );
    first.expect_spawned("web.0");
    let state_dir = first.state_dir();
    let stop = std::process::Command::new(env!("CARGO_BIN_EXE_supervise"))
        .arg("--state-dir")
        .arg(&state_dir)
        .args(["stop", "--no-wait", "web.0"])
        .output()
        .unwrap();
    assert!(stop.status.success(), "{stop:?}");
    // The stop mark is on disk; what follows the stop is not.
    let blocker = block_checkpoint(&state_dir);
    std::fs::write(first.dir().join("go"), "").unwrap();
    first.expect("stopped", "web.0");
    first.kill9();
    std::fs::remove_dir(&blocker).unwrap();

    let mut next = resume(&first);
    let stopped = |next: &Supervise| next.replica("web", 0)["state"] == "stopped";
    assert!(wait_until(SOON, || stopped(&next)), "{}", next.transcript());
    assert!(
        !next.said().iter().any(|l| l.contains("failed")),
        "{}",
        next.transcript()
    );
    next.signal(Signal::SIGINT);
    assert_eq!(next.expect_exit(SOON), 0, "{}", next.transcript());
}

/// The exit record of a replica the spec no longer has (here the spec was
/// edited while the supervisor was down) is removed on resume, not left for
/// a new replica of the same name to be judged by one day.
#[test]
fn the_exit_record_of_a_replica_no_longer_in_the_spec_is_removed_on_resume() {
    let (mut first, blocker) = end_job_with_the_checkpoint_blocked(
        r#"
[services.job]
command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.02; done; exit 0"]
restart = { policy = "on-failure" }
[services.web]
command = ["sleep", "1000"]
"#,
    );
    let record = first.state_dir().join("run/job.0.exit");
    assert!(record.exists(), "the exit record is kept");
    first.kill9();
    std::fs::remove_dir(&blocker).unwrap();
    std::fs::write(
        first.spec_path(),
        "[services.web]\ncommand = [\"sleep\", \"1000\"]\n",
    )
    .unwrap();

    let mut next = resume(&first);
    assert!(!record.exists(), "{}", next.transcript());
    next.signal(Signal::SIGINT);
    assert_eq!(next.expect_exit(SOON), 0, "{}", next.transcript());
}

/// A shim killed outside the supervisor leaves its running record behind;
/// once its end (here: failed, under `never`) is on the checkpoint, the
/// record goes, and a later `up` starts the replica instead of judging that
/// record as another end of unknown status.
#[test]
fn a_killed_shims_running_record_does_not_fail_the_replica_at_the_next_up() {
    let mut first = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { policy = "never" }
"#,
    );
    let pid = first.expect_spawned("web.0");
    let (_, shim) = proc_stat(pid).unwrap();
    kill9(shim);
    first.expect("failed", "web.0");
    let running = first.state_dir().join("run/web.0.running");
    assert!(
        wait_until(SOON, || !running.exists()),
        "the killed shim's running record stayed\n{}",
        first.transcript()
    );
    first.signal(Signal::SIGINT);
    first.expect_exit(SOON);

    let mut next = first.another().start();
    next.expect_spawned("web.0");
    next.signal(Signal::SIGINT);
    assert_eq!(next.expect_exit(SOON), 0, "{}", next.transcript());
}

/// A service removed from the spec while no supervisor ran: the next one
/// kills its shim with its processes (before, the shim lived on, holding
/// the replica's lock and, without cgroups, starting its command again
/// unsupervised), so the service can be added back and start. With and
/// without cgroups.
#[test]
fn the_shim_of_a_service_removed_while_down_is_killed_and_the_service_can_come_back() {
    service_removed_while_down(&[]);
    service_removed_while_down(&[(supervise::cgroup::SWITCH, "off")]);
}

fn service_removed_while_down(env: &[(&str, &str)]) {
    let both = r#"
[services.web]
command = ["sleep", "1000"]
[services.job]
command = ["sleep", "1001"]
restart = { delay = "0s" }
"#;
    let with_env = |mut builder: Builder| {
        for (key, value) in env {
            builder = builder.env(key, value);
        }
        builder
    };
    let mut first = with_env(Supervise::builder(both)).start();
    let job = first.expect_spawned("job.0");
    first.expect_spawned("web.0");
    let (_, shim) = proc_stat(job).unwrap();
    first.kill9();
    std::fs::write(
        first.spec_path(),
        "[services.web]\ncommand = [\"sleep\", \"1000\"]\n",
    )
    .unwrap();

    let mut next = with_env(first.another()).start();
    next.expect_said(r"^resumed: ", SOON);
    assert!(
        wait_until(SOON, || !is_alive(shim) && !is_alive(job)),
        "{env:?}: the removed service's shim {shim} or command {job} lives on\n{}",
        next.transcript()
    );
    std::fs::write(first.spec_path(), both).unwrap();
    next.signal(Signal::SIGHUP);
    next.expect_spawned("job.0");
    next.signal(Signal::SIGINT);
    assert_eq!(next.expect_exit(SOON), 0, "{}", next.transcript());
}
