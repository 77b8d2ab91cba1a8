//! `[[alerts]]` and `[supervisor] metrics` end to end: the real binary,
//! real alert commands, a real HTTP receiver (python3 `http.server`), and
//! scrapes over TCP.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{Lines, SOON, Supervise, free_port, http_get, run_bounded, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A file the alert command writes, parsed once it is complete JSON.
fn read_json_file(path: &Path) -> serde_json::Value {
    let mut value = None;
    let found = wait_until(SOON, || {
        value = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(text.trim_end()).ok());
        value.is_some()
    });
    assert!(found, "no JSON in {} within {SOON:?}", path.display());
    value.unwrap()
}

/// Waits for a stderr line containing `needle`; panics with the transcript.
fn expect_stderr(sup: &Supervise, needle: &str, timeout: Duration) -> String {
    match sup.err.wait_for(timeout, |l| l.contains(needle)) {
        Some(line) => line.text,
        None => panic!(
            "no stderr line with {needle:?} within {timeout:?}\n{}",
            sup.transcript()
        ),
    }
}

#[test]
fn a_command_alert_gets_the_failed_event_as_json_on_stdin() {
    let sup = Supervise::start(
        r#"
[services.api]
command = ["sh", "-c", "exit 3"]
restart = { policy = "never" }

[[alerts]]
events = ["failed"]
command = ["sh", "-c", "cat > alert-$0-$1.json", "{service}", "{replica}"]
"#,
    );
    let pid = sup.expect_spawned("api.0");
    let event = read_json_file(&sup.dir().join("alert-api-0.json"));
    assert_eq!(event["event"], "failed", "{event}");
    assert_eq!(event["service"], "api");
    assert_eq!(event["replica"], 0);
    assert!(event["pid"].is_null() || event["pid"] == pid, "{event}");
    let detail = event["detail"].as_str().unwrap();
    assert!(detail.starts_with("api.0 exited with code 3"), "{event}");
    assert!(event["at"].as_str().unwrap().ends_with('Z'), "{event}");
    // Only `failed` was asked for: no file for the other events.
    let files: Vec<_> = std::fs::read_dir(sup.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("alert-"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

#[test]
fn a_failing_alert_command_is_logged() {
    let sup = Supervise::start(
        r#"
[services.api]
command = ["sleep", "30"]

[[alerts]]
events = ["spawned"]
command = ["sh", "-c", "exit 3"]

[[alerts]]
events = ["spawned"]
command = ["./no-such-notifier"]
"#,
    );
    sup.expect_spawned("api.0");
    expect_stderr(
        &sup,
        "supervise: alert sh -c 'exit 3' failed for event spawned api.0: exit code 3",
        SOON,
    );
    let line = expect_stderr(&sup, "supervise: alert ./no-such-notifier failed", SOON);
    assert!(line.contains("cannot run it: No such file"), "{line}");
}

/// A python3 `http.server` that prints one JSON line per POST (path,
/// content type, body) and answers 204. Killed by pid when dropped.
struct Receiver {
    child: Child,
    lines: Arc<Lines>,
    port: u16,
}

const RECEIVER: &str = r#"
import http.server, json, sys
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        print(json.dumps({"path": self.path, "type": self.headers.get("Content-Type"),
                          "body": body.decode()}), flush=True)
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook)
print("ready", flush=True)
server.serve_forever()
"#;

impl Receiver {
    fn start() -> Receiver {
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let lines = Lines::reading(child.stdout.take().unwrap());
        let mut receiver = Receiver { child, lines, port };
        if receiver.lines.wait_for(SOON, |l| l == "ready").is_none() {
            let _ = receiver.child.kill();
            panic!("the python receiver did not start");
        }
        receiver
    }

    /// The first POST whose body is the event `event`.
    fn expect_post(&self, event: &str) -> (serde_json::Value, serde_json::Value) {
        let mut found = None;
        self.lines.wait_for(SOON, |l| {
            let Ok(post) = serde_json::from_str::<serde_json::Value>(l) else {
                return false;
            };
            let Ok(body) =
                serde_json::from_str::<serde_json::Value>(post["body"].as_str().unwrap())
            else {
                return false;
            };
            let hit = body["event"] == event;
            if hit {
                found = Some((post, body));
            }
            hit
        });
        found.unwrap_or_else(|| panic!("no POST of {event}: {:?}", self.lines.texts()))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn a_webhook_gets_the_failed_event_posted_as_json() {
    let receiver = Receiver::start();
    let sup = Supervise::start(&format!(
        r#"
[services.api]
command = ["sh", "-c", "exit 3"]
restart = {{ policy = "never" }}

[[alerts]]
events = ["failed"]
webhook = "http://127.0.0.1:{}/hook"
"#,
        receiver.port
    ));
    sup.expect("failed", "api.0");
    let (post, event) = receiver.expect_post("failed");
    assert_eq!(post["path"], "/hook");
    assert_eq!(post["type"], "application/json");
    assert_eq!(event["service"], "api");
    assert_eq!(event["replica"], 0);
    assert!(
        event["detail"].as_str().unwrap().contains("failed"),
        "{event}"
    );
    // Only what was asked for.
    assert!(
        !receiver.lines.texts().iter().any(|l| l.contains("spawned")),
        "{:?}",
        receiver.lines.texts()
    );
}

#[test]
fn a_silent_webhook_and_a_hanging_command_do_not_slow_restarts() {
    // Accepts connections (the kernel does, into the backlog) and never
    // answers a request.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let sup = Supervise::start(&format!(
        r#"
[services.flap]
command = ["sh", "-c", "sleep 0.1; exit 1"]
restart = {{ delay = "100ms", max_delay = "100ms", limit = 0 }}

[[alerts]]
events = ["spawned", "exited", "restarted"]
webhook = "http://127.0.0.1:{port}/slow"

[[alerts]]
events = ["exited"]
command = ["sleep", "30"]

[[alerts]]
events = ["spawned"]
command = ["sh", "-c", "cat >> spawned.jsonl"]
"#
    ));
    // Each cycle is 100ms of run and 100ms (±10%) of backoff; each alert
    // would take 5s (webhook) and 10s (command) if it held the loop up.
    let mut from = 0;
    let mut spawned = Vec::new();
    for _ in 0..8 {
        let (line, _) = sup.expect_said_from(from, r"^spawned flap\.0 ", SOON);
        from = line.index + 1;
        spawned.push(line.at);
    }
    for pair in spawned.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap < Duration::from_secs(3),
            "a restart took {gap:?}\n{}",
            sup.transcript()
        );
    }
    // A quick alert beside the stuck ones keeps up.
    let quick = wait_until(SOON, || {
        std::fs::read_to_string(sup.dir().join("spawned.jsonl"))
            .is_ok_and(|text| text.lines().count() >= spawned.len())
    });
    assert!(quick, "the quick alert fell behind\n{}", sup.transcript());
    let line = expect_stderr(
        &sup,
        "failed for event spawned flap.0: timed out",
        Duration::from_secs(15),
    );
    assert!(
        line.starts_with(&format!(
            "supervise: alert webhook http://127.0.0.1:{port}/… "
        )),
        "{line}"
    );
    drop(silent);
}

/// The samples of a scrape: `name{labels}` → value.
fn scrape(port: u16) -> HashMap<String, f64> {
    let (status, headers, body) = http_get(port, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(
        headers["content-type"].starts_with("application/openmetrics-text; version=1.0.0"),
        "{headers:?}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_follow_restarts_and_scale() {
    let port = free_port();
    let sup = Supervise::start(&format!(
        r#"
[supervisor]
metrics = "127.0.0.1:{port}"

[services.web]
command = ["sleep", "30"]
replicas = 2

[services.once]
command = ["sh", "-c", "if test -e once; then exec sleep 30; fi; touch once; exit 1"]
restart = {{ delay = "50ms" }}
"#
    ));
    sup.expect("restarted", "once.0");
    let wanted = [
        (
            r#"supervise_restarts_total{service="once",replica="0"}"#,
            1.0,
        ),
        (r#"supervise_replicas_desired{service="web"}"#, 2.0),
        (r#"supervise_replicas_running{service="web"}"#, 2.0),
        (r#"supervise_replicas_running{service="once"}"#, 1.0),
        (r#"supervise_replica_up{service="web",replica="1"}"#, 1.0),
        (
            r#"supervise_replica_healthy{service="web",replica="1"}"#,
            1.0,
        ),
        (
            r#"supervise_restarts_total{service="web",replica="1"}"#,
            0.0,
        ),
    ];
    let mut samples = HashMap::new();
    let all_there = wait_until(SOON, || {
        samples = scrape(port);
        wanted.iter().all(|(k, v)| samples.get(*k) == Some(v))
    });
    assert!(all_there, "wanted {wanted:?}, got {samples:#?}");
    assert!(samples["supervise_uptime_seconds"] > 0.0, "{samples:#?}");
    assert!(samples.contains_key("supervise_start_time_seconds"));
    // What a replica uses, read at the scrape (a `sleep` uses little CPU,
    // but some memory).
    assert!(
        samples[r#"supervise_replica_memory_bytes{service="web",replica="1"}"#] > 0.0,
        "{samples:#?}"
    );
    assert!(
        samples[r#"supervise_replica_cpu_seconds_total{service="web",replica="1"}"#] >= 0.0,
        "{samples:#?}"
    );
    assert_eq!(
        samples.get(r#"supervise_replica_oom_kills_total{service="web",replica="1"}"#),
        Some(&0.0),
        "{samples:#?}"
    );

    let scaled = run_bounded(
        {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_supervise"));
            cmd.args(["scale", "web=1"]).current_dir(sup.dir());
            cmd
        },
        SOON,
    );
    scaled.expect(0);
    let scaled_down = wait_until(SOON, || {
        samples = scrape(port);
        samples.get(r#"supervise_replicas_desired{service="web"}"#) == Some(&1.0)
            && samples.get(r#"supervise_replicas_running{service="web"}"#) == Some(&1.0)
            && !samples
                .keys()
                .any(|k| k.contains(r#"service="web",replica="1""#))
    });
    assert!(scaled_down, "{samples:#?}");
    assert_eq!(
        samples.get(r#"supervise_replica_up{service="web",replica="0"}"#),
        Some(&1.0)
    );
    assert_eq!(
        samples.get(r#"supervise_restarts_total{service="once",replica="0"}"#),
        Some(&1.0)
    );

    let (status, _, body) = http_get(port, "/nope");
    assert_eq!(status, 404);
    assert_eq!(body, "not found: try /, /status.json or /metrics\n");
}

#[test]
fn a_metrics_address_in_use_stops_up_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut sup = Supervise::start(&format!(
        r#"
[supervisor]
metrics = "{addr}"

[services.web]
command = ["sleep", "30"]
"#
    ));
    assert_eq!(sup.expect_exit(SOON), 1, "{}", sup.transcript());
    sup.drain(SOON);
    let line = expect_stderr(&sup, &format!("cannot serve metrics on {addr}"), SOON);
    assert!(line.contains("in use"), "{line}");
    assert!(
        sup.said().iter().all(|e| !e.starts_with("spawned")),
        "{}",
        sup.transcript()
    );
    drop(taken);
}

#[test]
fn the_last_events_are_delivered_before_the_supervisor_exits() {
    let receiver = Receiver::start();
    let mut sup = Supervise::builder(&format!(
        r#"
[services.job]
command = ["sh", "-c", "exit 3"]
restart = {{ policy = "never" }}

[[alerts]]
events = ["failed"]
webhook = "http://127.0.0.1:{}/hook"

[[alerts]]
events = ["failed"]
command = ["sh", "-c", "sleep 0.3; cat > last.json"]
"#,
        receiver.port
    ))
    .arg("--exit-with")
    .arg("job")
    .start();
    assert_eq!(sup.expect_exit(SOON), 3, "{}", sup.transcript());
    let (_, event) = receiver.expect_post("failed");
    assert_eq!(event["service"], "job");
    let written = std::fs::read_to_string(sup.dir().join("last.json")).unwrap_or_default();
    assert!(
        written.contains(r#""event":"failed""#),
        "{written:?}\n{}",
        sup.transcript()
    );
}
