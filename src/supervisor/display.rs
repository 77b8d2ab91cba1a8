//! What a foreground `supervise up` shows: the replicas' output, each line
//! behind `svc.N │ `, and the supervisor's own event lines on stderr.
//!
//! Replica output does not pass through the event loop: shims write
//! prefixed lines straight into one shared pipe (writes up to PIPE_BUF are
//! atomic, so lines never interleave) and a task copies the pipe to stdout.
//! Shims adopted after a supervisor crash still write into the pipe of the
//! supervisor that started them, which died with it: their lines are read
//! back from their log files instead, for as long as that shim lives.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::commands::colour_allowed;
use crate::logfiles::Tail;

/// How often the log files of adopted replicas are read.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "91"];

pub struct Display {
    colour_out: bool,
    colour_err: bool,
    quiet: bool,
    /// Width of the longest replica name, to align the `│`.
    width: usize,
    tee: Option<Tee>,
}

struct Tee {
    writer: OwnedFd,
    copier: JoinHandle<()>,
    /// Adopted replicas' log tails by replica name, each with its prefix.
    followed: Arc<Mutex<HashMap<String, (Tail, String)>>>,
    /// Polls `followed`; started with the first adopted replica.
    follower: Option<JoinHandle<()>>,
}

impl Display {
    /// `show_output`: copy replica output to stdout (the foreground `up`).
    pub fn new(width: usize, quiet: bool, show_output: bool) -> std::io::Result<Display> {
        let tee = if show_output {
            let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            let mut reader = tokio::net::unix::pipe::Receiver::from_owned_fd(reader)?;
            let copier = tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = reader.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]).and_then(|_| out.flush());
                }
            });
            Some(Tee {
                writer,
                copier,
                followed: Arc::default(),
                follower: None,
            })
        } else {
            None
        };
        Ok(Display {
            colour_out: colour_allowed(std::io::stdout().is_terminal()),
            colour_err: colour_allowed(std::io::stderr().is_terminal()),
            quiet,
            width,
            tee,
        })
    }

    /// The write end of the output pipe, to hand to a shim.
    pub fn tee_fd(&self) -> Option<BorrowedFd<'_>> {
        self.tee.as_ref().map(|t| t.writer.as_fd())
    }

    /// The prefix of replica `name`'s lines; `colour_slot` picks its colour
    /// (the service's position, so all replicas of a service share one).
    pub fn prefix(&self, name: &str, colour_slot: usize) -> Option<String> {
        self.tee.as_ref()?;
        let padded = format!("{name:<width$} │ ", width = self.width);
        Some(if self.colour_out {
            format!(
                "\x1b[{}m{padded}\x1b[0m",
                PALETTE[colour_slot % PALETTE.len()]
            )
        } else {
            padded
        })
    }

    /// Shows what replica `name` (adopted: its shim writes into a pipe that
    /// is gone) appends to its log file `path` from now on.
    pub fn follow(&mut self, name: &str, path: PathBuf, colour_slot: usize) {
        let Some(prefix) = self.prefix(name, colour_slot) else {
            return;
        };
        let Some(tee) = self.tee.as_mut() else { return };
        let tail = Tail::from_end(name.to_string(), path);
        lock(&tee.followed).insert(name.to_string(), (tail, prefix));
        if tee.follower.is_none() {
            let followed = Arc::clone(&tee.followed);
            tee.follower = Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    lock(&followed).values_mut().for_each(show);
                }
            }));
        }
    }

    /// Stops following replica `name` once its last lines are shown. Done
    /// before its next shim starts, whose lines come through the pipe.
    pub fn unfollow(&self, name: &str) {
        if let Some(tee) = &self.tee
            && let Some(mut followed) = lock(&tee.followed).remove(name)
        {
            show(&mut followed);
        }
    }

    /// One supervisor event line ("api.1 exited with code 3; restart 4 in 800ms").
    pub fn event(&self, message: &str) {
        if self.quiet {
            return;
        }
        let label = format!("{:<width$}", "supervise", width = self.width);
        let mut err = std::io::stderr().lock();
        let _ = if self.colour_err {
            writeln!(err, "\x1b[1m{label} │\x1b[0m {message}")
        } else {
            writeln!(err, "{label} │ {message}")
        };
    }

    /// Closes our end of the output pipe and waits until everything the
    /// shims wrote has been shown. Call once no shim is left.
    pub async fn finish(self) {
        if let Some(Tee {
            writer,
            copier,
            followed,
            follower,
        }) = self.tee
        {
            if let Some(follower) = follower {
                follower.abort();
            }
            lock(&followed).values_mut().for_each(show);
            drop(writer);
            let _ = copier.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the lines a followed replica appended, behind its prefix.
fn show((tail, prefix): &mut (Tail, String)) {
    let entries = tail.poll();
    if entries.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    for entry in entries {
        let _ = writeln!(out, "{prefix}{}", entry.text);
    }
    let _ = out.flush();
}
