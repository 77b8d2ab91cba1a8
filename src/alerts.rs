//! `[[alerts]]`: delivering events to commands and webhooks (docs/spec-file.md §10).
//!
//! Each alert gets a task of its own fed by a bounded queue. The event loop
//! only filters and `try_send`s ([`Alerts::on_event`]): it never waits for
//! a target, so a slow or failing one delays neither supervision nor the
//! other alerts. A full queue drops the event, counts it and says so on
//! stderr, at most once per [`WARN_EVERY`] (and once more when the queue has
//! drained). A target delivers one event at a time, in order.
//!
//! - `command`: the argv (placeholders `{service}`, `{replica}`, `{port}`
//!   from the event, empty when it has none) runs in the spec's directory,
//!   never through a shell, in a process group of its own, with the event
//!   as one JSON line on stdin and stdout/stderr discarded. It is spawned
//!   through the [`Reaper`] (the loop reaps every child) and its group is
//!   killed after [`COMMAND_TIMEOUT`].
//! - `webhook`: the event JSON is POSTed (`Content-Type: application/json`)
//!   with a [`WEBHOOK_TIMEOUT`]; redirects are not followed.
//!
//! A failure is one line on stderr:
//! `supervise: alert ./notify.sh failed for event failed api.1: exit code 3`.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::control::protocol::EventRecord;
use crate::procfs;
use crate::reaper::Reaper;
use crate::spec::{AlertTarget, Spec, expand_with};

/// Events waiting for one target; more are dropped (and counted).
pub const QUEUE: usize = 256;
/// An alert command still running after this is killed (its whole group).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// A webhook that has not answered by then (connect included) has failed.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one "queue full" warning per target this often.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

pub struct Alerts {
    targets: Vec<Target>,
}

/// The loop's side of one alert.
struct Target {
    events: Vec<String>,
    queue: mpsc::Sender<EventRecord>,
    drops: Arc<Drops>,
    task: Option<JoinHandle<()>>,
}

/// Events dropped because a queue was full, and when that was last said.
struct Drops {
    label: String,
    /// Dropped since the last warning.
    unreported: AtomicU64,
    total: AtomicU64,
    last_warning: Mutex<Option<Instant>>,
}

impl Drops {
    fn new(label: String) -> Drops {
        Drops {
            label,
            unreported: AtomicU64::new(0),
            total: AtomicU64::new(0),
            last_warning: Mutex::new(None),
        }
    }

    /// One more event dropped; warns unless a warning was given lately.
    fn dropped(&self) {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return;
        }
        *last = Some(now);
        let n = self.unreported.swap(0, Ordering::Relaxed);
        crate::say!(
            "supervise: alert {}: queue full ({QUEUE} events waiting), dropped {n} event{} ({total} in all)",
            self.label,
            plural(n)
        );
    }

    /// The queue is empty again: drops not yet reported are, now.
    fn caught_up(&self) {
        let n = self.unreported.swap(0, Ordering::Relaxed);
        if n > 0 {
            let total = self.total.load(Ordering::Relaxed);
            crate::say!(
                "supervise: alert {}: caught up; dropped {n} more event{} while the queue was full ({total} in all)",
                self.label,
                plural(n)
            );
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

impl Alerts {
    /// Starts delivery for the spec's `[[alerts]]` (nothing when there are
    /// none): one task per alert, on the current runtime.
    pub fn start(spec: &Spec, reaper: Reaper) -> Alerts {
        let mut targets = Vec::new();
        if spec.alerts.is_empty() {
            return Alerts { targets };
        }
        let ports: HashMap<String, u16> = spec
            .services
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.port?)))
            .collect();
        for alert in &spec.alerts {
            let delivery = match &alert.target {
                AlertTarget::Command(argv) => Delivery::Command(CommandTarget {
                    argv: argv.clone(),
                    cwd: spec.dir.clone(),
                    ports: ports.clone(),
                    reaper: reaper.clone(),
                    timeout: COMMAND_TIMEOUT,
                }),
                AlertTarget::Webhook(url) => match WebhookTarget::new(url, WEBHOOK_TIMEOUT) {
                    Ok(webhook) => Delivery::Webhook(webhook),
                    Err(e) => {
                        crate::say!(
                            "supervise: alert {}: cannot set up an HTTP client ({e}); its events are not delivered",
                            redact(url)
                        );
                        continue;
                    }
                },
            };
            targets.push(Target::start(alert.events.clone(), delivery, QUEUE));
        }
        Alerts { targets }
    }

    /// Hands an event over for delivery; never blocks, never fails.
    pub fn on_event(&self, event: &EventRecord) {
        for target in &self.targets {
            if !target.events.contains(&event.event) {
                continue;
            }
            match target.queue.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => target.drops.dropped(),
                // The task is gone (the runtime is shutting down).
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    /// Closes the queues; completes once every event already queued has
    /// been delivered (or has failed). Command alerts need the loop to reap
    /// them meanwhile, so a caller at shutdown should bound this and keep
    /// reaping while it waits.
    pub fn finish(&mut self) -> impl Future<Output = ()> + use<> {
        let tasks: Vec<_> = self
            .targets
            .drain(..)
            .filter_map(|mut t| t.task.take())
            .collect();
        async move {
            for task in tasks {
                let _ = task.await;
            }
        }
    }
}

impl Target {
    fn start(events: Vec<String>, delivery: Delivery, capacity: usize) -> Target {
        let (queue, mut rx) = mpsc::channel::<EventRecord>(capacity);
        let drops = Arc::new(Drops::new(delivery.label()));
        let task_drops = Arc::clone(&drops);
        let task = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Err(why) = delivery.deliver(&event).await {
                    crate::say!(
                        "supervise: alert {} failed for event {}: {why}",
                        delivery.label(),
                        describe(&event)
                    );
                }
                if rx.is_empty() {
                    task_drops.caught_up();
                }
            }
        });
        Target {
            events,
            queue,
            drops,
            task: Some(task),
        }
    }
}

/// `failed api.1`, `scaled api`, `reloaded`: the event and what it is about.
fn describe(event: &EventRecord) -> String {
    match (&event.service, event.replica) {
        (Some(s), Some(r)) => format!("{} {s}.{r}", event.event),
        (Some(s), None) => format!("{} {s}", event.event),
        _ => event.event.clone(),
    }
}

enum Delivery {
    Command(CommandTarget),
    Webhook(WebhookTarget),
}

impl Delivery {
    fn label(&self) -> String {
        match self {
            Delivery::Command(c) => shell_words::join(&c.argv),
            Delivery::Webhook(w) => format!("webhook {}", redact(&w.url)),
        }
    }

    async fn deliver(&self, event: &EventRecord) -> Result<(), String> {
        match self {
            Delivery::Command(c) => c.run(event).await,
            Delivery::Webhook(w) => w.post(event).await,
        }
    }
}

/// The event as one JSON object (docs/commands.md §15.1, as `events --json` prints it).
fn json(event: &EventRecord) -> String {
    // An EventRecord has only strings and numbers: it always serialises.
    serde_json::to_string(event).unwrap_or_default()
}

struct CommandTarget {
    /// Templates, as in the spec.
    argv: Vec<String>,
    cwd: PathBuf,
    /// Base ports by service, for `{port}`.
    ports: HashMap<String, u16>,
    reaper: Reaper,
    timeout: Duration,
}

impl CommandTarget {
    async fn run(&self, event: &EventRecord) -> Result<(), String> {
        let port = event
            .service
            .as_ref()
            .and_then(|s| self.ports.get(s))
            .and_then(|&base| base.checked_add(u16::try_from(event.replica?).ok()?));
        let argv: Vec<String> = self.argv.iter().map(|a| expand(a, event, port)).collect();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env("SUPERVISE_EVENT", &event.event)
            // Its own group: a Ctrl-C at the terminal is the supervisor's
            // to handle, and a timeout kills whatever the command started.
            .process_group(0);
        if let Some(service) = &event.service {
            cmd.env("SUPERVISE_SERVICE", service);
        }
        if let Some(replica) = event.replica {
            cmd.env("SUPERVISE_REPLICA", replica.to_string());
        }
        let (mut child, mut exited) = self
            .reaper
            .spawn(&mut cmd)
            .map_err(|e| format!("cannot run it: {e}"))?;
        let pid = child.id();
        // Cannot fail for lack of the process: it is not reaped before this
        // task yields (the loop reaps, on this same thread).
        let pidfd = procfs::pidfd_open(pid).ok();
        let stdin = child.stdin.take();
        drop(child);
        let line = json(event) + "\n";
        let work = async {
            if let Some(stdin) = stdin {
                // Non-blocking, like everything on the loop's thread. A
                // command that exits without reading gets EPIPE: not an error.
                if let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(stdin.into()) {
                    let _ = pipe.write_all(line.as_bytes()).await;
                }
            }
            (&mut exited).await
        };
        let status = match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(status)) => status,
            Ok(Err(_)) => return Err("its exit status was lost".into()),
            Err(_) => {
                kill(pid, pidfd.as_ref(), &mut exited);
                let _ = exited.await;
                return Err(format!(
                    "timed out after {}; killed",
                    humantime::format_duration(self.timeout)
                ));
            }
        };
        match status {
            WaitStatus::Exited(_, 0) => Ok(()),
            WaitStatus::Exited(_, code) => Err(format!("exit code {code}")),
            WaitStatus::Signaled(_, signal, _) => Err(format!("killed by {}", signal.as_str())),
            other => Err(format!("ended with {other:?}")),
        }
    }
}

/// SIGKILLs a timed-out command and its process group.
fn kill(pid: u32, pidfd: Option<&OwnedFd>, exited: &mut oneshot::Receiver<WaitStatus>) {
    // While the leader is not reaped, its pid is still its group's id and
    // cannot name another group; reaping happens on this thread, so it
    // cannot happen between this check and killpg.
    if matches!(exited.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    if let Some(pidfd) = pidfd {
        let _ = procfs::pidfd_signal(pidfd, Signal::SIGKILL);
    }
}

/// Expands `{service}`, `{replica}` and `{port}` from the event; one the
/// event has no value for becomes empty (`reloaded` is about no service).
fn expand(template: &str, event: &EventRecord, port: Option<u16>) -> String {
    expand_with(template, |name| match name {
        "service" => Some(event.service.clone().unwrap_or_default()),
        "replica" => Some(event.replica.map(|r| r.to_string()).unwrap_or_default()),
        "port" => Some(port.map(|p| p.to_string()).unwrap_or_default()),
        _ => None,
    })
}

struct WebhookTarget {
    url: String,
    client: reqwest::Client,
}

impl WebhookTarget {
    fn new(url: &str, timeout: Duration) -> Result<WebhookTarget, String> {
        let client = crate::http::client(timeout).map_err(|e| chain(&e))?;
        Ok(WebhookTarget {
            url: url.to_string(),
            client,
        })
    }

    async fn post(&self, event: &EventRecord) -> Result<(), String> {
        let sent = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json(event))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            // Without the URL: it may carry a secret token.
            Err(e) if e.is_timeout() => return Err("timed out".into()),
            Err(e) => return Err(chain(&e.without_url())),
        };
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

/// An error with its causes: `error sending request: connection refused`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// A webhook URL fit for a log line: scheme, host and port only, as the
/// path and query of a webhook (Slack's, say) are often its secret.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path() == "/" && u.query().is_none() {
                "/"
            } else {
                "/…"
            };
            format!("{}://{host}{port}{rest}", u.scheme())
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, service: Option<&str>, replica: Option<u32>) -> EventRecord {
        EventRecord {
            at: "2026-01-01T00:00:00.000Z".into(),
            event: name.into(),
            service: service.map(str::to_string),
            replica,
            pid: Some(42),
            detail: "api.1 exited with code 3; failed".into(),
        }
    }

    #[test]
    fn placeholders_come_from_the_event() {
        let e = event("failed", Some("api"), Some(1));
        assert_eq!(
            expand("{service}.{replica}:{port}", &e, Some(8001)),
            "api.1:8001"
        );
        assert_eq!(expand("{{literal}}", &e, None), "{literal}");
        let reloaded = event("reloaded", None, None);
        assert_eq!(
            expand("x{service}y{replica}z{port}", &reloaded, None),
            "xyz"
        );
    }

    #[test]
    fn events_are_described_by_what_they_are_about() {
        assert_eq!(
            describe(&event("failed", Some("api"), Some(1))),
            "failed api.1"
        );
        assert_eq!(describe(&event("scaled", Some("api"), None)), "scaled api");
        assert_eq!(describe(&event("reloaded", None, None)), "reloaded");
    }

    #[test]
    fn webhook_urls_lose_their_secrets_in_logs() {
        assert_eq!(
            redact("https://hooks.example.com/services/T0/B0/secret"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            redact("http://user:pw@127.0.0.1:9000/"),
            "http://127.0.0.1:9000/"
        );
        assert_eq!(redact("http://h:1/x?token=1"), "http://h:1/…");
    }

    #[test]
    fn the_json_is_the_events_line() {
        let v: serde_json::Value =
            serde_json::from_str(&json(&event("failed", Some("api"), Some(1)))).unwrap();
        assert_eq!(v["event"], "failed");
        assert_eq!(v["service"], "api");
        assert_eq!(v["replica"], 1);
        assert_eq!(v["pid"], 42);
        assert!(v["detail"].as_str().unwrap().contains("failed"));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Plays the event loop's part for the reaper: reaps exactly the pids
    /// it waits for (never `-1`: other tests run children of their own).
    async fn reap_forever(reaper: Reaper) {
        loop {
            for pid in reaper.waiting_pids() {
                use nix::sys::wait::{WaitPidFlag, waitpid};
                if let Ok(status) = waitpid(pid, Some(WaitPidFlag::WNOHANG))
                    && status != WaitStatus::StillAlive
                {
                    reaper.deliver(pid, status);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn command(argv: &[&str], cwd: &std::path::Path, reaper: &Reaper) -> CommandTarget {
        CommandTarget {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            cwd: cwd.to_path_buf(),
            ports: HashMap::from([("api".to_string(), 8000)]),
            reaper: reaper.clone(),
            timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_command_gets_the_event_on_stdin_and_its_exit_code_counts() {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::default();
        runtime().block_on(async {
            tokio::spawn(reap_forever(reaper.clone()));
            let ok = command(
                &[
                    "sh",
                    "-c",
                    "cat > got-$0-$1; echo \"$SUPERVISE_EVENT\" > env",
                    "{service}",
                    "{port}",
                ],
                dir.path(),
                &reaper,
            );
            ok.run(&event("failed", Some("api"), Some(1)))
                .await
                .unwrap();
            let got = std::fs::read_to_string(dir.path().join("got-api-8001")).unwrap();
            assert!(got.ends_with('\n'), "{got:?}");
            let v: serde_json::Value = serde_json::from_str(got.trim_end()).unwrap();
            assert_eq!(v["event"], "failed");
            let env = std::fs::read_to_string(dir.path().join("env")).unwrap();
            assert_eq!(env, "failed\n");

            let failing = command(&["sh", "-c", "exit 3"], dir.path(), &reaper);
            let e = event("failed", Some("api"), Some(1));
            assert_eq!(failing.run(&e).await, Err("exit code 3".into()));

            let missing = command(&["./no-such-notifier"], dir.path(), &reaper);
            let err = missing.run(&e).await.unwrap_err();
            assert!(err.starts_with("cannot run it: "), "{err}");
        });
    }

    #[test]
    fn a_command_past_its_timeout_is_killed_with_its_group() {
        let dir = tempfile::tempdir().unwrap();
        let reaper = Reaper::default();
        runtime().block_on(async {
            tokio::spawn(reap_forever(reaper.clone()));
            let mut hanging = command(
                &["sh", "-c", "sleep 30 & echo $! > bg; wait"],
                dir.path(),
                &reaper,
            );
            hanging.timeout = Duration::from_millis(300);
            let started = Instant::now();
            let err = hanging
                .run(&event("failed", Some("api"), Some(0)))
                .await
                .unwrap_err();
            assert_eq!(err, "timed out after 300ms; killed");
            assert!(started.elapsed() < Duration::from_secs(5));
            let bg: i32 = std::fs::read_to_string(dir.path().join("bg"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            // The background sleep was in the group: killed too. It is an
            // orphan now (init reaps it), so it is gone or a zombie.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let state = std::fs::read_to_string(format!("/proc/{bg}/stat"))
                    .ok()
                    .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().to_string()));
                match state {
                    None => break,
                    Some(s) if s.starts_with('Z') => break,
                    Some(_) if Instant::now() > deadline => panic!("sleep {bg} survived"),
                    Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        runtime().block_on(async {
            let (queue, _rx) = mpsc::channel(4);
            let target = Target {
                events: vec!["exited".into()],
                queue,
                drops: Arc::new(Drops::new("test".into())),
                task: None,
            };
            let alerts = Alerts {
                targets: vec![target],
            };
            for _ in 0..10 {
                alerts.on_event(&event("exited", Some("api"), Some(0)));
                // Not listed: neither queued nor dropped.
                alerts.on_event(&event("spawned", Some("api"), Some(0)));
            }
            let drops = &alerts.targets[0].drops;
            assert_eq!(drops.total.load(Ordering::Relaxed), 6);
            // The first drop was reported at once; the rest wait for the
            // next report (rate limit) or for the queue to drain.
            assert_eq!(drops.unreported.load(Ordering::Relaxed), 5);
            drops.caught_up();
            assert_eq!(drops.unreported.load(Ordering::Relaxed), 0);
        });
    }

    #[test]
    fn a_webhook_answering_non_2xx_fails_with_the_status() {
        runtime().block_on(async {
            // A real HTTP server at hand: the metrics endpoint, which
            // answers a POST with 405.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            drop(listener);
            let (calls, _) = tokio::sync::mpsc::unbounded_channel();
            crate::metrics::serve(addr, Default::default(), calls).unwrap();
            let hook =
                WebhookTarget::new(&format!("http://{addr}/metrics"), Duration::from_secs(5))
                    .unwrap();
            let err = hook
                .post(&event("failed", Some("api"), Some(0)))
                .await
                .unwrap_err();
            assert_eq!(err, "HTTP 405 Method Not Allowed");
        });
    }

    #[test]
    fn a_webhook_nobody_listens_to_fails_with_the_cause() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        runtime().block_on(async {
            let hook = WebhookTarget::new(
                &format!("http://127.0.0.1:{port}/hook?token=secret"),
                Duration::from_secs(2),
            )
            .unwrap();
            let err = hook
                .post(&event("failed", Some("api"), Some(0)))
                .await
                .unwrap_err();
            assert!(err.to_lowercase().contains("refused"), "{err}");
            assert!(!err.contains("secret"), "{err}");
        });
    }
}
