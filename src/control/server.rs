//! The control socket: accepts connections, checks who is calling, reads one
//! request line (capped in size and time), hands it to the event loop with a
//! reply channel, and writes the answer. A bad request gets an error reply;
//! nothing a client sends or fails to send can stop the supervisor.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot};

use super::protocol::{Envelope, EventRecord, MAX_REQUEST, Reply, Request, VERSION};
use crate::exit;

/// A client gets this long to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections served at once (`events -f` followers included); more wait
/// in the listen backlog until one ends. Each costs a descriptor, and a
/// flood of them (20 000 held connections were tried) must not take the
/// ones the supervisor needs to start shims and write its checkpoint.
pub const MAX_CONNECTIONS: usize = 128;

/// A request on its way to the event loop, with where to send the answer.
pub struct Call {
    pub request: Request,
    pub answer: oneshot::Sender<Answer>,
}

/// What the event loop answers.
pub enum Answer {
    Reply(Reply),
    /// A rendered status: the reply saying how long it is, then the text.
    Text(String),
    /// `events`: the history, then (when following) the live stream.
    Events {
        history: Vec<Arc<EventRecord>>,
        live: Option<broadcast::Receiver<Arc<EventRecord>>>,
    },
    /// `down`: the reply, after which the connection is held open until
    /// the supervisor exits, so the client learns when shutdown is complete.
    /// `written` is told once the reply is out, so that a supervisor with
    /// nothing left to stop does not exit before its answer is sent.
    HoldUntilExit {
        reply: Reply,
        written: oneshot::Sender<()>,
    },
}

/// Binds the socket (owner-only) and serves it until the process exits.
/// The caller holds the state-dir lock, so a leftover socket file can only
/// be from a supervisor that is gone and is removed.
pub fn listen(path: &Path, calls: mpsc::UnboundedSender<Call>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let calls = calls.clone();
                    tokio::spawn(async move {
                        serve(stream, calls).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: refuse this one, keep serving.
                    tracing::warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(())
}

/// Only our own user (or root) may steer us: same rule as the socket's mode,
/// checked again in case the socket was made reachable by someone else.
fn allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!(
            "uid {} (pid {:?}) is neither uid {me} nor root",
            cred.uid(),
            cred.pid()
        ))
    }
}

async fn serve(stream: UnixStream, calls: mpsc::UnboundedSender<Call>) {
    if let Err(why) = allowed(&stream) {
        tracing::warn!("control socket: refused a connection: {why}");
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64 + 1));
    let mut line = String::new();
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Err(_) => Err("no complete request line within 10s".to_string()),
        Ok(Err(e)) => Err(format!("unreadable request: {e}")),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => {
            Err(format!("request longer than {MAX_REQUEST} bytes"))
        }
        Ok(Ok(_)) => parse(&line),
    };
    let request = match request {
        Ok(request) => request,
        Err(why) => {
            let _ = send(&mut write, &Reply::error(exit::USAGE, why)).await;
            return;
        }
    };
    let (answer_tx, answer_rx) = oneshot::channel();
    if calls
        .send(Call {
            request,
            answer: answer_tx,
        })
        .is_err()
    {
        return;
    }
    let Ok(answer) = answer_rx.await else { return };
    match answer {
        Answer::Reply(reply) => {
            let _ = send(&mut write, &reply).await;
        }
        Answer::Text(text) => {
            let reply = Reply::ok(super::protocol::Outcome::Text { bytes: text.len() });
            if send(&mut write, &reply).await.is_ok() {
                let _ = write.write_all(text.as_bytes()).await;
            }
        }
        Answer::HoldUntilExit { reply, written } => {
            let sent = send(&mut write, &reply).await;
            let _ = written.send(());
            if sent.is_ok() {
                // The process exit closes this connection.
                std::future::pending::<()>().await;
            }
        }
        Answer::Events { history, live } => {
            let accepted = Reply::ok(super::protocol::Outcome::Accepted);
            if send(&mut write, &accepted).await.is_err() {
                return;
            }
            for event in &history {
                if send(&mut write, event.as_ref()).await.is_err() {
                    return;
                }
            }
            let Some(mut live) = live else { return };
            loop {
                match live.recv().await {
                    Ok(event) => {
                        if send(&mut write, event.as_ref()).await.is_err() {
                            return;
                        }
                    }
                    // A reader too slow for the stream skips what it missed,
                    // and is told so.
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        if send(&mut write, &EventRecord::lost(missed)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }
}

fn parse(line: &str) -> Result<Request, String> {
    if line.trim().is_empty() {
        return Err("empty request".into());
    }
    // Look at the version first, so a newer client gets a clear answer
    // rather than a parse error about a request type we do not know.
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v} is not supported by this supervisor (it speaks {VERSION})"
            ));
        }
        None => return Err("request without a protocol version".into()),
    }
    let envelope: Envelope =
        serde_json::from_value(value).map_err(|e| format!("malformed request: {e}"))?;
    Ok(envelope.request)
}

async fn send<T: serde::Serialize>(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    message: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_a_versioned_request() {
        let r = parse(r#"{"version":1,"request":{"type":"scale","counts":{"api":3}}}"#);
        assert!(matches!(r, Ok(Request::Scale { .. })), "{r:?}");
    }

    #[test]
    fn parse_explains_what_is_wrong() {
        for (line, expected) in [
            ("", "empty request"),
            ("{", "malformed request"),
            (
                r#"{"request":{"type":"status"}}"#,
                "without a protocol version",
            ),
            (
                r#"{"version":9,"request":{"type":"status"}}"#,
                "version 9 is not supported",
            ),
            (
                r#"{"version":1,"request":{"type":"explode"}}"#,
                "malformed request",
            ),
        ] {
            let err = parse(line).expect_err(line);
            assert!(err.contains(expected), "{line}: {err}");
        }
    }
}
