//! The control socket against misbehaving clients, over the raw protocol:
//! whatever a client sends, or fails to send, the supervisor answers or
//! drops it and keeps supervising.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const SPEC: &str = r#"
[services.web]
command = ["sleep", "1000"]
"#;

fn socket(sup: &Supervise) -> PathBuf {
    sup.state_dir().join("control.sock")
}

fn connect(sup: &Supervise) -> UnixStream {
    let stream = UnixStream::connect(socket(sup)).expect("connect to the control socket");
    stream.set_read_timeout(Some(SOON)).unwrap();
    stream
}

/// Sends raw bytes, returns the first reply line as JSON (None on EOF).
fn exchange(sup: &Supervise, raw: &[u8]) -> Option<serde_json::Value> {
    let mut stream = connect(sup);
    // The server may answer (and close) before reading all of an oversized line.
    let _ = stream.write_all(raw);
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    (!line.is_empty()).then(|| serde_json::from_str(&line).expect("a JSON reply line"))
}

fn status_ok(sup: &Supervise) -> bool {
    exchange(sup, b"{\"version\":1,\"request\":{\"type\":\"status\"}}\n")
        .is_some_and(|r| r["ok"] == true && r["result"]["schema"] == 1)
}

fn started(spec: &str) -> Supervise {
    let sup = Supervise::start(spec);
    sup.expect_spawned("web.0");
    sup
}

#[test]
fn socket_is_private_to_its_owner() {
    let sup = started(SPEC);
    let mode = std::fs::metadata(socket(&sup))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(sup.state_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn bad_requests_get_an_error_reply_and_the_supervisor_keeps_working() {
    let sup = started(SPEC);
    let oversized = {
        let mut v = b"{\"version\":1,\"request\":{\"type\":\"status\",\"pad\":\"".to_vec();
        v.extend(std::iter::repeat_n(b'x', 2 << 20));
        v.extend(b"\"}}\n");
        v
    };
    let cases: Vec<(&[u8], &str)> = vec![
        (b"{\n", "malformed request"),
        (b"hello\n", "malformed request"),
        (b"\n", "empty request"),
        (
            b"{\"request\":{\"type\":\"status\"}}\n",
            "without a protocol version",
        ),
        (
            b"{\"version\":7,\"request\":{\"type\":\"status\"}}\n",
            "version 7 is not supported",
        ),
        (
            b"{\"version\":1,\"request\":{\"type\":\"reboot\"}}\n",
            "unknown variant",
        ),
        (
            b"{\"version\":1,\"request\":{\"type\":\"stop\",\"targets\":[\"nope\"]}}\n",
            "no service named",
        ),
        (&oversized, "longer than"),
    ];
    for (raw, expected) in cases {
        let reply = exchange(&sup, raw).unwrap_or_else(|| {
            panic!(
                "no reply to {:?}",
                String::from_utf8_lossy(&raw[..raw.len().min(60)])
            )
        });
        assert_eq!(reply["ok"], false, "{reply}");
        assert_eq!(reply["exit_code"], 2, "{reply}");
        let error = reply["error"].as_str().unwrap_or_default();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
    // A request cut off mid-line (client gone) is dropped quietly.
    {
        let mut stream = connect(&sup);
        stream.write_all(b"{\"version\":1,\"requ").unwrap();
    }
    assert!(status_ok(&sup), "the supervisor stopped answering");
    assert_eq!(
        sup.events().count("exited", ""),
        0,
        "{}",
        sup.events().dump()
    );
}

#[test]
fn a_silent_client_does_not_hold_up_others() {
    let sup = started(SPEC);
    let _silent = connect(&sup);
    let _half = {
        let mut s = connect(&sup);
        s.write_all(b"{\"version\":1,").unwrap();
        s
    };
    assert!(status_ok(&sup));
}

#[test]
fn a_follower_that_goes_away_costs_nothing() {
    let sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
restart = { delay = "50ms" }
"#,
    );
    let first = sup.expect_spawned("web.0");
    for _ in 0..20 {
        let mut s = connect(&sup);
        s.write_all(b"{\"version\":1,\"request\":{\"type\":\"events\",\"follow\":true}}\n")
            .unwrap();
        let mut reader = BufReader::new(s);
        let mut accepted = String::new();
        reader.read_line(&mut accepted).unwrap();
        assert!(accepted.contains("\"accepted\""), "{accepted}");
        // Dropped mid-stream.
    }
    kill9(first);
    sup.expect_restart("web.0", first);
    assert!(status_ok(&sup));
}

#[test]
fn events_follow_streams_what_happens() {
    let sup = started(SPEC);
    let mut s = connect(&sup);
    s.write_all(b"{\"version\":1,\"request\":{\"type\":\"events\",\"follow\":true}}\n")
        .unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"accepted\""), "{line}");
    // History first: the spawn that already happened.
    line.clear();
    reader.read_line(&mut line).unwrap();
    let spawned: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(spawned["event"], "spawned");
    assert_eq!(spawned["service"], "web");
    assert_eq!(spawned["replica"], 0);
    assert!(spawned["pid"].as_u64().is_some());
    assert!(spawned["at"].as_str().unwrap().ends_with('Z'));
    // Then live: a scale shows up on the open stream.
    assert!(
        exchange(
            &sup,
            b"{\"version\":1,\"request\":{\"type\":\"scale\",\"counts\":{\"web\":2}}}\n"
        )
        .is_some_and(|r| r["ok"] == true)
    );
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|e: &serde_json::Value| e["event"] == "spawned" && e["replica"] == 1)
    {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stream ended: {seen:?}"
        );
        seen.push(serde_json::from_str(&line).unwrap());
    }
    assert!(
        seen.iter()
            .any(|e| e["event"] == "scaled" && e["service"] == "web"),
        "{seen:?}"
    );
}

#[test]
fn another_user_is_refused_even_when_the_socket_is_reachable() {
    // The system python: one under /root (pyenv) is out of the other user's reach.
    let python = "/usr/bin/python3";
    let setpriv = std::process::Command::new("setpriv").arg("--help").output();
    if !nix::unistd::geteuid().is_root() || setpriv.is_err() || !Path::new(python).exists() {
        eprintln!("skipped: needs root, setpriv and {python} to connect as another user");
        return;
    }
    let sup = started(SPEC);
    // Open the way on purpose: only the credential check is left to refuse.
    std::fs::set_permissions(sup.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(sup.state_dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(socket(&sup), std::fs::Permissions::from_mode(0o666)).unwrap();
    let client = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.settimeout(10)
try:
    s.sendall(b'{"version":1,"request":{"type":"stop","targets":[]}}\n')
    print("reply:", s.recv(1000))
except (BrokenPipeError, ConnectionResetError):
    print("reply: b''")
"#;
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            python,
            "-c",
            client,
        ])
        .arg(socket(&sup))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(said.trim(), "reply: b''", "another uid got an answer");
    assert!(
        sup.err
            .wait_for(SOON, |l| l.contains("refused a connection: uid 65534"))
            .is_some(),
        "the refusal was not logged:\n{}",
        sup.transcript()
    );
    assert!(
        status_ok(&sup),
        "the refused request was applied or broke the supervisor"
    );
    let reply = exchange(&sup, b"{\"version\":1,\"request\":{\"type\":\"status\"}}\n").unwrap();
    assert_eq!(
        reply["result"]["services"][0]["replicas"][0]["state"],
        "running"
    );
}

#[test]
fn down_holds_the_connection_until_the_supervisor_has_exited() {
    let mut sup = started(SPEC);
    let mut s = connect(&sup);
    s.write_all(b"{\"version\":1,\"request\":{\"type\":\"down\"}}\n")
        .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.contains("\"accepted\""), "{all}");
    // EOF came: the supervisor is gone or going, with everything stopped.
    assert_eq!(sup.expect_exit(SOON), 0);
    assert!(sup.said().iter().any(|e| e.starts_with("stopped web.0")));
    assert!(!socket(&sup).exists(), "the socket file was left behind");
}

/// A guard: the stops of the last turns of the loop reach a follower before
/// the process is gone (seen to hold; no flush of its own is needed today).
#[test]
fn a_follower_gets_every_event_up_to_the_supervisors_exit() {
    let mut sup = Supervise::start(
        r#"
[services.web]
command = ["sleep", "1000"]
replicas = 20
"#,
    );
    for i in 0..20 {
        sup.expect_spawned(&format!("web.{i}"));
    }
    let mut follower = connect(&sup);
    follower
        .write_all(b"{\"version\":1,\"request\":{\"type\":\"events\",\"follow\":true}}\n")
        .unwrap();
    let mut reader = BufReader::new(follower);
    let mut accepted = String::new();
    reader.read_line(&mut accepted).unwrap();
    assert!(accepted.contains("\"accepted\""), "{accepted}");
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    // The stream ends when the supervisor exits; by then it has said all.
    let mut stopped = 0;
    for line in reader.lines() {
        let event: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if event["event"] == "stopped" {
            stopped += 1;
        }
    }
    assert_eq!(sup.expect_exit(SOON), 0);
    assert_eq!(stopped, 20);
}

#[test]
fn a_follower_that_falls_behind_is_told_how_many_events_it_lost() {
    // A crash loop makes events far faster than this reader takes them.
    let sup = Supervise::start(
        r#"
[services.web]
command = ["true"]
restart = { delay = "0s", limit = 0 }
"#,
    );
    sup.expect_spawned("web.0");
    let mut s = connect(&sup);
    s.write_all(b"{\"version\":1,\"request\":{\"type\":\"events\",\"follow\":true}}\n")
        .unwrap();
    // Not read meanwhile: the socket buffer fills, then the stream's backlog.
    let restarts = || {
        socket_status(&sup.state_dir())
            .map(|r| replica_in(&r, "web", 0)["restarts"].as_u64().unwrap_or(0))
            .unwrap_or(0)
    };
    assert!(
        wait_until(Duration::from_secs(60), || restarts() >= 4000),
        "the crash loop is too slow: {} restarts",
        restarts()
    );
    // The loop goes on making events: read for a bounded time.
    let deadline = std::time::Instant::now() + SOON;
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    let mut lost = None;
    while lost.is_none() && std::time::Instant::now() < deadline {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["event"] == "lost" {
            lost = Some(event);
        }
    }
    // Before, the gap was silent.
    let lost = lost.expect("no `lost` record in the stream");
    let detail = lost["detail"].as_str().unwrap().to_string();
    assert!(
        regex::Regex::new(r"^\d+ events lost: this reader fell behind the stream$")
            .unwrap()
            .is_match(&detail),
        "{detail}"
    );
    assert!(status_ok(&sup));
}

/// `status` asks the supervisor to render the report; a supervisor from
/// before that (the binary upgraded under a running one) ignores the ask
/// and sends the report as data, which the command then renders itself.
#[test]
fn status_prints_the_report_a_supervisor_from_before_rendering_sends() {
    use std::os::unix::net::UnixListener;
    let dir = tempfile::tempdir().unwrap();
    let listener = UnixListener::bind(dir.path().join("control.sock")).unwrap();
    let report = r#"{"version":1,"ok":true,"result":{"type":"status","schema":1,
        "supervisor":{"pid":7,"started_at":"2026-12-06T08:00:00Z","spec":"s.toml","state_dir":"d"},
        "services":[{"name":"api","state":"running","desired":1,"replicas":[{"index":0,"pid":4242,
        "state":"running","health":"healthy","role":null,"restarts":3,"started_at":null,"last_exit":null}]},
        {"name":"db","state":"stopped","desired":0,"replicas":[]}]}}"#
        .replace('\n', "");
    let old_server = std::thread::spawn(move || {
        let mut asked = Vec::new();
        for _ in 0..3 {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            asked.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
            writeln!(&stream, "{report}").unwrap();
        }
        asked
    });
    let status = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_supervise"))
            .arg("--state-dir")
            .arg(dir.path())
            .arg("status")
            .args(args)
            .env("NO_COLOR", "1")
            .output()
            .unwrap()
    };

    let table = status(&[]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{table:?}");
    assert!(text.starts_with("SERVICE  REPLICA  PID"), "{text}");
    assert!(text.contains("api.0    4242"), "{text}");

    let json = status(&["--json", "api"]);
    assert!(json.status.success(), "{json:?}");
    let shown: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(shown["services"].as_array().unwrap().len(), 1, "{shown}");
    assert_eq!(shown["services"][0]["replicas"][0]["pid"], 4242);

    let unknown = status(&["nope"]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no service named nope (it has api, db)"),
        "{unknown:?}"
    );

    let asked = old_server.join().unwrap();
    assert_eq!(asked[0]["request"]["render"]["as"], "table", "{asked:?}");
    assert_eq!(asked[1]["request"]["render"]["as"], "json", "{asked:?}");
    assert_eq!(asked[1]["request"]["services"][0], "api", "{asked:?}");
}
