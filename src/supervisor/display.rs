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
use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
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
    own_log: Option<OwnLog>,
}

/// The log a detached supervisor writes its stdout and stderr to (`up -d`
/// opens it for them), rotated at `log_max_size` like the replicas' logs:
/// the files move on, then a new file takes the place of stdout and stderr.
/// A line written meanwhile goes to the file just moved, so none is lost.
/// The zygote and the shims keep the file they were started with, for the
/// few lines of their own they may write.
struct OwnLog {
    path: PathBuf,
    max_size: u64,
    keep: u32,
}

impl OwnLog {
    /// Rotates the log if `coming` more bytes would overfill it. Checked
    /// before every event line, which is nearly all a supervisor writes: a
    /// crash loop's line per restart then takes at most
    /// `log_max_size × (log_keep + 1)` of disk.
    fn rotate_if_full(&self, coming: usize) {
        let stderr = std::io::stderr();
        let Ok(ours) = nix::sys::stat::fstat(stderr.as_fd()) else {
            return;
        };
        let size = ours.st_size as u64;
        if size == 0 || size + coming as u64 <= self.max_size {
            return;
        }
        // Not ours at `path` (ours moved but no new file could be opened, or
        // someone else moved it): nothing to rotate, only a file to open.
        let at_path = std::fs::symlink_metadata(&self.path);
        if at_path.is_ok_and(|m| m.dev() == ours.st_dev && m.ino() == ours.st_ino) {
            crate::logfiles::rotate(&self.path, self.keep);
        }
        // No file: the old one goes on growing until one can be opened.
        if let Ok(file) = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&self.path)
        {
            let _ = nix::unistd::dup2_stdout(&file);
            let _ = nix::unistd::dup2_stderr(&file);
        }
    }
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
                // Not zeroed first: only what a burst of output fills is
                // ever touched, instead of 64 KiB for every supervisor.
                let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
                while let Ok(n) = reader.read_buf(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf).and_then(|_| out.flush());
                    buf.clear();
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
            own_log: None,
        })
    }

    /// Stdout and stderr are the detached supervisor's log `path`: rotate
    /// it when it is full, now (a log left full by earlier runs) and as
    /// event lines are written.
    pub fn rotate_own_log(&mut self, path: PathBuf, max_size: u64, keep: u32) {
        let log = OwnLog {
            path,
            max_size,
            keep,
        };
        log.rotate_if_full(0);
        self.own_log = Some(log);
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

    /// What a person must see even with -q (which hides event lines): said
    /// as a `warning:` line then; otherwise its event line says it.
    pub fn warning_if_quiet(&self, message: &str) {
        if self.quiet {
            let _ = writeln!(std::io::stderr().lock(), "warning: {message}");
        }
    }

    /// One supervisor event line ("api.1 exited with code 3; restart 4 in 800ms").
    pub fn event(&self, message: &str) {
        if self.quiet {
            return;
        }
        let label = format!("{:<width$}", "supervise", width = self.width);
        let line = if self.colour_err {
            format!("\x1b[1m{label} │\x1b[0m {message}\n")
        } else {
            format!("{label} │ {message}\n")
        };
        if let Some(log) = &self.own_log {
            log.rotate_if_full(line.len());
        }
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
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
