//! The process tree, end to end: shims, the zygote, what a replica
//! inherits (signals, limits, descriptors), its output, PID 1, and the
//! harness's own guard.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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
    let restart = sup.expect("restarted", "web.0");
    check(
        "a restart by the shim",
        sup.expect_spawned_after(&restart, "web.0").1,
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
    let failed = sup.events().matching(|e| e.event == "spawn_failed");
    assert!(failed.is_empty(), "{failed:#?}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pids[39])).unwrap();
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_eq!(soft, "64", "{limits}");
}

/// Of the address ranges where `pid` maps its own executable: how many
/// KiB are resident in its page tables, and how many KiB they span.
fn executable_mapped_kib(pid: i32) -> (u64, u64) {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut ours, mut resident, mut span) = (false, 0, 0);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                ours = fields.nth(4).is_some_and(|path| Path::new(path) == exe);
                if ours {
                    let (start, end) = range.split_once('-').unwrap();
                    let size = |hex| u64::from_str_radix(hex, 16).unwrap();
                    span += (size(end) - size(start)) / 1024;
                }
            }
            Some("Rss:") if ours => resident += fields.next().unwrap().parse::<u64>().unwrap(),
            _ => {}
        }
    }
    (resident, span)
}

/// Once its replica runs, a shim unmaps the code that set it up (it stays
/// in the page cache); what it runs again comes back, as its replica's
/// restart shows.
#[test]
fn an_idle_shim_keeps_little_of_the_binary_mapped_and_still_does_its_job() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "0s" }
"#,
    );
    let replica = sup.expect_spawned("web.0");
    let (_, shim) = proc_stat(replica).unwrap();
    // Set up, it had run and mapped a third to a half of the binary's
    // code (fault-around maps 64 KiB at a time); idle, it needs a fraction.
    let (mut resident, mut span) = (0, 0);
    assert!(
        wait_until(SOON, || {
            (resident, span) = executable_mapped_kib(shim);
            resident * 4 < span
        }),
        "shim {shim} still maps {resident} KiB of the binary's {span} KiB"
    );
    kill9(replica);
    let (_, again) = sup.expect_restart("web.0", replica);
    assert_eq!(
        proc_stat(again).unwrap().1,
        shim,
        "restarted by the same shim"
    );
}

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
    let lost = sup.expect("shim_lost", "web.0");
    sup.expect_after(&lost, "leftovers_killed", "web.0");
    let restart = sup.expect_after(&lost, "restarted", "web.0");
    assert!(
        wait_until(SOON, || !is_alive(replica) && !is_alive(escaped)),
        "replica {replica} or escaped grandchild {escaped} survived its shim"
    );
    sup.expect_spawned_after(&restart, "web.0");
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
    let (_, second) = sup.expect_restart("web.0", first);
    let (_, new_shim) = proc_stat(second).unwrap();
    let (_, new_zygote) = proc_stat(new_shim).unwrap();
    assert_ne!(new_zygote, zygote);
    assert_eq!(proc_stat(new_zygote).map(|s| s.1), Some(sup.pid));
    assert!(is_alive(other), "web.1 was disturbed");
    // A re-parented shim's end is seen and judged like any other.
    kill9(other);
    sup.expect_restart("web.1", other);
    assert!(
        wait_until(SOON, || zombies_under(sup.pid).is_empty()),
        "zombies under the supervisor: {:?}",
        zombies_under(sup.pid)
    );
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
    assert_eq!(sup.status()["supervisor"]["pid"], 1);
    let spawned = sup.expect("spawned", "web.0");
    let ns_replica = spawned.pid.unwrap();
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
    sup.expect_spawned_after(&spawned, "web.0");

    kill(Pid::from_raw(sup.pid), Signal::SIGTERM).unwrap();
    sup.expect_said(r"^received SIGTERM; stopping all replicas$", SOON);
    sup.expect_said(r"^stopped web\.0", SOON);
    assert_eq!(sup.expect_exit(SOON), 0, "{}", sup.transcript());
    sup.assert_nothing_left();
}
