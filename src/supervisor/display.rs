//! What a foreground `supervise up` shows: the replicas' output, each line
//! behind `svc.N │ `, and the supervisor's own event lines on stderr.
//!
//! Replica output does not pass through the event loop: shims write
//! prefixed lines straight into one shared pipe (writes up to PIPE_BUF are
//! atomic, so lines never interleave) and a task copies the pipe to stdout.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

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
}

/// Colour only on a terminal, and never when `NO_COLOR` is set (no-color.org).
fn colour_allowed(is_tty: bool) -> bool {
    is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
            Some(Tee { writer, copier })
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
        if let Some(Tee { writer, copier }) = self.tee {
            drop(writer);
            let _ = copier.await;
        }
    }
}
