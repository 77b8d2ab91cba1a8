//! The CLI's side of the control protocol: a blocking client over
//! `<state_dir>/control.sock`, one connection per request.
//!
//! It is deliberately synchronous (std sockets, no async runtime): a
//! `supervise status` is one connect, one line out, one line in, and its
//! whole cost is process start-up.
//!
//! "No supervisor" is told apart from other failures: a missing socket or a
//! refused connection (a socket file left by a supervisor that is gone)
//! means nobody is listening, which the commands report with exit 3.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::protocol::{
    Envelope, EventRecord, Outcome, ReloadPlan, Render, Reply, Request, SOCKET_NAME, StatusReport,
    VERSION,
};
use crate::exit;

/// Bound on the wait for each reply, in milliseconds: 10 s unless a
/// command's `--timeout` says otherwise. The supervisor answers from its
/// event loop at once; this only keeps a stopped or wedged supervisor from
/// hanging a script.
static REPLY_TIMEOUT_MS: AtomicU64 = AtomicU64::new(10_000);

/// Sets the bound on the wait for each reply, for this process.
pub fn set_reply_timeout(timeout: Duration) {
    REPLY_TIMEOUT_MS.store(timeout.as_millis() as u64, Ordering::Relaxed);
}

fn reply_timeout() -> Duration {
    Duration::from_millis(REPLY_TIMEOUT_MS.load(Ordering::Relaxed))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor for state dir {}; start one with supervise up -d", .0.display())]
    NoSupervisor(PathBuf),
    /// The supervisor refused the request (`ok: false`).
    #[error("{message}")]
    Rejected { code: i32, message: String },
    #[error("control socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the supervisor of state dir {} did not answer within {}{}", dir.display(), humantime::format_duration(*after), stopped_hint(dir))]
    NoAnswer { dir: PathBuf, after: Duration },
    #[error("the supervisor closed the connection without replying")]
    Closed,
    #[error("unexpected answer from the supervisor: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The exit code a command ends with when this is why it failed.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::NoSupervisor(_) => exit::NO_SUPERVISOR,
            ClientError::Rejected { code, .. } => *code,
            _ => exit::FAILED,
        }
    }
}

/// What came next on a streaming connection.
#[derive(Debug)]
pub enum Next<T> {
    Item(T),
    /// The supervisor closed the connection.
    Closed,
    /// Nothing arrived before the deadline.
    TimedOut,
}

/// One connection to a supervisor.
pub struct Connection {
    reader: BufReader<UnixStream>,
    dir: PathBuf,
    path: PathBuf,
    /// Bytes of a line not complete yet (a read may time out mid-line).
    partial: Vec<u8>,
}

/// Connects to the supervisor of `state_dir`.
pub fn connect(state_dir: &Path) -> Result<Connection, ClientError> {
    let path = state_dir.join(SOCKET_NAME);
    match UnixStream::connect(&path) {
        Ok(stream) => Ok(Connection {
            reader: BufReader::new(stream),
            dir: state_dir.to_path_buf(),
            path,
            partial: Vec::new(),
        }),
        // ENOENT (also when the state dir does not exist), ENOTDIR, or
        // ECONNREFUSED: a socket file nobody listens on any more.
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::NotFound | ErrorKind::ConnectionRefused | ErrorKind::NotADirectory
            ) =>
        {
            Err(ClientError::NoSupervisor(state_dir.to_path_buf()))
        }
        Err(source) => Err(ClientError::Io { path, source }),
    }
}

/// Sends one request on a fresh connection and returns the outcome.
pub fn call(state_dir: &Path, request: Request) -> Result<Outcome, ClientError> {
    connect(state_dir)?.request(request)
}

/// The supervisor's status report.
pub fn status(state_dir: &Path) -> Result<StatusReport, ClientError> {
    match call(state_dir, Request::status())? {
        Outcome::Status(report) => Ok(report),
        other => Err(unexpected("a status report", &other)),
    }
}

/// What `status` prints: the text the supervisor rendered, or the report
/// from a supervisor that does not render, to be rendered here.
pub enum Rendered {
    Text(String),
    Report(StatusReport),
}

/// The status of `services` (all when empty) rendered as `render` says.
pub fn rendered_status(
    state_dir: &Path,
    services: &[String],
    render: Render,
) -> Result<Rendered, ClientError> {
    let mut connection = connect(state_dir)?;
    let request = Request::Status {
        services: services.to_vec(),
        render: Some(render),
    };
    match connection.request(request)? {
        Outcome::Text { bytes } => connection.text(bytes).map(Rendered::Text),
        Outcome::Status(report) => Ok(Rendered::Report(report)),
        other => Err(unexpected("a status report", &other)),
    }
}

/// The answer to a start/stop/restart/scale.
pub struct Affected {
    /// The replicas whose desired state changed.
    pub replicas: Vec<String>,
    /// Done, but with something to tell (the change is not recorded yet).
    pub warning: Option<String>,
}

/// Sends a start/stop/restart/scale.
pub fn affected(state_dir: &Path, request: Request) -> Result<Affected, ClientError> {
    match connect(state_dir)?.request_warned(request)? {
        (Outcome::Affected { replicas }, warning) => Ok(Affected { replicas, warning }),
        (other, _) => Err(unexpected("the affected replicas", &other)),
    }
}

/// Sends a reload; the plan (applied unless `dry_run`), and a warning if
/// it was applied with something to tell.
pub fn reload(
    state_dir: &Path,
    spec: Option<PathBuf>,
    dry_run: bool,
) -> Result<(ReloadPlan, Option<String>), ClientError> {
    match connect(state_dir)?.request_warned(Request::Reload { spec, dry_run })? {
        (Outcome::Reload(plan), warning) => Ok((plan, warning)),
        (other, _) => Err(unexpected("a reload plan", &other)),
    }
}

/// Why a supervisor may not answer, when it can be told: it is stopped
/// (its pid is in the lock file).
fn stopped_hint(state_dir: &Path) -> String {
    let pid = std::fs::read_to_string(state_dir.join("supervise.lock"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    match pid {
        Some(pid) if crate::procfs::is_stopped(pid) => format!(
            ": it (pid {pid}) is stopped (SIGSTOP or Ctrl-Z); resume it with `kill -CONT {pid}`"
        ),
        _ => String::new(),
    }
}

fn unexpected(wanted: &str, got: &Outcome) -> ClientError {
    ClientError::Protocol(format!("wanted {wanted}, got {got:?}"))
}

impl Connection {
    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends `request` and reads its reply; `ok: false` becomes
    /// [`ClientError::Rejected`]. The connection stays open for what follows
    /// (events, or the end of a `down`).
    pub fn request(&mut self, request: Request) -> Result<Outcome, ClientError> {
        self.request_warned(request).map(|(outcome, _)| outcome)
    }

    /// [`Self::request`], with the reply's warning.
    fn request_warned(
        &mut self,
        request: Request,
    ) -> Result<(Outcome, Option<String>), ClientError> {
        let mut line = serde_json::to_vec(&Envelope {
            version: VERSION,
            request,
        })
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.reader
            .get_mut()
            .write_all(&line)
            .map_err(|e| self.io(e))?;
        let timeout = reply_timeout();
        let line = match self.next_line(Some(Instant::now() + timeout))? {
            Next::Item(line) => line,
            Next::Closed => return Err(ClientError::Closed),
            Next::TimedOut => {
                return Err(ClientError::NoAnswer {
                    dir: self.dir.clone(),
                    after: timeout,
                });
            }
        };
        parse_reply(&line)
    }

    /// The `bytes` bytes of text that follow a `text` reply.
    fn text(&mut self, bytes: usize) -> Result<String, ClientError> {
        let timeout = reply_timeout();
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout).filter(|t| !t.is_zero()))
            .map_err(|e| self.io(e))?;
        let mut text = vec![0; bytes];
        match self.reader.read_exact(&mut text) {
            Ok(()) => Ok(String::from_utf8(text)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ClientError::NoAnswer {
                    dir: self.dir.clone(),
                    after: timeout,
                })
            }
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(ClientError::Closed),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Sends `request`, which must be acknowledged with `accepted`.
    pub fn request_accepted(&mut self, request: Request) -> Result<(), ClientError> {
        match self.request(request)? {
            Outcome::Accepted => Ok(()),
            other => Err(unexpected("an acknowledgement", &other)),
        }
    }

    /// The next event of an `events` stream, as the record and the line it
    /// came in (printed as is by `events --json`, so fields a newer
    /// supervisor adds are kept).
    pub fn next_event(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Next<(EventRecord, String)>, ClientError> {
        Ok(match self.next_line(deadline)? {
            Next::Item(line) => {
                let record = serde_json::from_str(&line).map_err(|e| {
                    ClientError::Protocol(format!("an event that does not parse ({e}): {line}"))
                })?;
                Next::Item((record, line))
            }
            Next::Closed => Next::Closed,
            Next::TimedOut => Next::TimedOut,
        })
    }

    /// Waits until the supervisor closes the connection; false if the
    /// deadline came first. Anything it sends meanwhile is ignored.
    pub fn wait_closed(&mut self, deadline: Option<Instant>) -> Result<bool, ClientError> {
        loop {
            match self.next_line(deadline)? {
                Next::Item(_) => {}
                Next::Closed => return Ok(true),
                Next::TimedOut => return Ok(false),
            }
        }
    }

    /// One line without its newline. `deadline` None waits as long as it takes.
    fn next_line(&mut self, deadline: Option<Instant>) -> Result<Next<String>, ClientError> {
        loop {
            let timeout = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    // A zero timeout means "block forever" to the kernel.
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(Next::TimedOut),
                },
            };
            self.reader
                .get_ref()
                .set_read_timeout(timeout)
                .map_err(|e| self.io(e))?;
            match self.reader.read_until(b'\n', &mut self.partial) {
                Ok(0) => return Ok(Next::Closed),
                Ok(_) if self.partial.ends_with(b"\n") => {
                    let bytes = std::mem::take(&mut self.partial);
                    // Checked without a copy; only a line that is not UTF-8 is repaired.
                    let mut line = String::from_utf8(bytes)
                        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                    line.truncate(line.trim_end().len());
                    return Ok(Next::Item(line));
                }
                // EOF after a partial line: the line is lost with the connection.
                Ok(_) => return Ok(Next::Closed),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(Next::Closed),
                Err(e) => return Err(self.io(e)),
            }
        }
    }
}

fn parse_reply(line: &str) -> Result<(Outcome, Option<String>), ClientError> {
    let reply: Reply = serde_json::from_str(line)
        .map_err(|e| ClientError::Protocol(format!("a reply that does not parse ({e}): {line}")))?;
    if !reply.ok {
        return Err(ClientError::Rejected {
            code: reply.exit_code.unwrap_or(exit::FAILED),
            message: reply
                .error
                .unwrap_or_else(|| "the supervisor refused the request".into()),
        });
    }
    let outcome = reply
        .result
        .ok_or_else(|| ClientError::Protocol("a successful reply without a result".into()))?;
    Ok((outcome, reply.warning))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A one-connection server: reads one request line, hands it to `answer`,
    /// writes back whatever it returns, then closes.
    fn serve_once(
        dir: &Path,
        answer: impl FnOnce(String) -> Vec<u8> + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        let listener = UnixListener::bind(dir.join(SOCKET_NAME)).unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let out = answer(line);
            reader.get_mut().write_all(&out).unwrap();
        })
    }

    fn line<T: serde::Serialize>(value: &T) -> Vec<u8> {
        let mut v = serde_json::to_vec(value).unwrap();
        v.push(b'\n');
        v
    }

    #[test]
    fn a_rendered_status_is_the_text_after_the_reply_and_a_short_one_is_an_error() {
        let text = "SERVICE  REPLICA\n{\"quoted\": \"\u{1b}[32m\"}\n".repeat(500);
        for (sent, wanted) in [(text.len(), Some(text.clone())), (text.len() + 1, None)] {
            let dir = tempfile::tempdir().unwrap();
            let body = text.clone();
            let server = serve_once(dir.path(), move |request| {
                assert!(request.contains(r#""render":{"as":"json"}"#), "{request}");
                let mut out = line(&Reply::ok(Outcome::Text { bytes: sent }));
                out.extend_from_slice(body.as_bytes());
                out
            });
            let got = rendered_status(dir.path(), &[], Render::Json);
            server.join().unwrap();
            match (got, wanted) {
                (Ok(Rendered::Text(got)), Some(wanted)) => assert_eq!(got, wanted),
                (Err(ClientError::Closed), None) => {}
                (Ok(Rendered::Report(_)), _) => panic!("a report instead of the text"),
                (got, _) => panic!("{:?}", got.err()),
            }
        }
    }

    #[test]
    fn no_socket_means_no_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        let err = call(dir.path(), Request::status()).unwrap_err();
        assert!(matches!(err, ClientError::NoSupervisor(_)), "{err:?}");
        assert_eq!(err.exit_code(), 3);
        assert_eq!(
            err.to_string(),
            format!(
                "no supervisor for state dir {}; start one with supervise up -d",
                dir.path().display()
            )
        );
        let missing = dir.path().join("not/there");
        assert_eq!(
            call(&missing, Request::status()).unwrap_err().exit_code(),
            3
        );
    }

    #[test]
    fn a_socket_nobody_listens_on_means_no_supervisor() {
        let dir = tempfile::tempdir().unwrap();
        drop(UnixListener::bind(dir.path().join(SOCKET_NAME)).unwrap());
        let err = call(dir.path(), Request::status()).unwrap_err();
        assert!(matches!(err, ClientError::NoSupervisor(_)), "{err:?}");
    }

    #[test]
    fn sends_a_versioned_line_and_reads_the_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let server = serve_once(dir.path(), |request| {
            let envelope: Envelope = serde_json::from_str(&request).unwrap();
            assert_eq!(envelope.version, VERSION);
            assert_eq!(
                envelope.request,
                Request::Stop {
                    targets: vec!["api.1".into()]
                }
            );
            line(&Reply::ok(Outcome::Affected {
                replicas: vec!["api.1".into()],
            }))
        });
        let outcome = call(
            dir.path(),
            Request::Stop {
                targets: vec!["api.1".into()],
            },
        )
        .unwrap();
        assert_eq!(
            outcome,
            Outcome::Affected {
                replicas: vec!["api.1".into()]
            }
        );
        server.join().unwrap();
    }

    #[test]
    fn a_refusal_carries_its_exit_code_and_message() {
        let dir = tempfile::tempdir().unwrap();
        let server = serve_once(dir.path(), |_| {
            line(&Reply::error(2, "no service named nope"))
        });
        let err = call(dir.path(), Request::status()).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(err.to_string(), "no service named nope");
        server.join().unwrap();
    }

    #[test]
    fn garbage_and_silence_are_errors_not_hangs() {
        let dir = tempfile::tempdir().unwrap();
        let server = serve_once(dir.path(), |_| b"not json\n".to_vec());
        let err = call(dir.path(), Request::status()).unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        server.join().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let server = serve_once(dir.path(), |_| Vec::new());
        let err = call(dir.path(), Request::status()).unwrap_err();
        assert!(matches!(err, ClientError::Closed), "{err:?}");
        server.join().unwrap();
    }

    #[test]
    fn events_stream_then_close() {
        let dir = tempfile::tempdir().unwrap();
        let event = EventRecord {
            at: "2026-11-23T12:00:00.000001Z".into(),
            event: "spawned".into(),
            service: Some("api".into()),
            replica: Some(0),
            pid: Some(42),
            detail: "spawned api.0 (pid 42)".into(),
        };
        let sent = event.clone();
        let server = serve_once(dir.path(), move |_| {
            let mut out = line(&Reply::ok(Outcome::Accepted));
            out.extend(line(&sent));
            out
        });
        let mut conn = connect(dir.path()).unwrap();
        conn.request_accepted(Request::Events { follow: false })
            .unwrap();
        match conn.next_event(None).unwrap() {
            Next::Item((record, raw)) => {
                assert_eq!(record, event);
                assert!(raw.starts_with('{') && !raw.ends_with('\n'));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(conn.next_event(None).unwrap(), Next::Closed));
        server.join().unwrap();
    }

    #[test]
    fn a_deadline_bounds_the_wait_and_keeps_a_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let listener = UnixListener::bind(dir.path().join(SOCKET_NAME)).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.write_all(b"{\"at\":\"x\",").unwrap();
            release_rx.recv().unwrap();
            stream
                .write_all(
                    b"\"event\":\"e\",\"service\":null,\"replica\":null,\"pid\":null,\"detail\":\"d\"}\n",
                )
                .unwrap();
        });
        let mut conn = connect(dir.path()).unwrap();
        let started = Instant::now();
        let next = conn
            .next_event(Some(Instant::now() + Duration::from_millis(100)))
            .unwrap();
        assert!(matches!(next, Next::TimedOut), "{next:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        release_tx.send(()).unwrap();
        match conn.next_event(None).unwrap() {
            Next::Item((record, _)) => assert_eq!(record.detail, "d"),
            other => panic!("{other:?}"),
        }
        server.join().unwrap();
    }
}
