//! `supervise up -d`: start the supervisor in the background and return
//! once its replicas are started (or healthy, with `--wait`).
//!
//! The spec is validated here first, and the state-dir lock is tried, so
//! the usual mistakes (an invalid spec: 2; a supervisor already running: 4)
//! are reported by this process with their own exit codes. The supervisor
//! is then this same binary, `up SPEC --background`, in a session of its
//! own (no terminal to lose, no SIGHUP), stdin from /dev/null, stdout and
//! stderr appended to `<state_dir>/supervise.log`. If it exits before it is
//! ready, the end of that log says why, and its exit code is ours.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use crate::cli::{Cli, UpArgs};
use crate::control::client::{self, ClientError, Next};
use crate::control::protocol::{EventRecord, Request, StatusReport};
use crate::exit;
use crate::logfiles;
use crate::progress::Progress;
use crate::spec::Spec;
use crate::state_dir::{self, LockError, StateDir};
use crate::supervisor::{CHECKPOINT_SET_ASIDE, SHUTDOWN};

use super::format::{compact, exit_cause, parse_time};
use super::wait::{self, Deadline, Goal, Wanted};
use super::{Exit, Failure, absolute, emit};

/// How often the socket is tried while the supervisor starts.
const POLL: Duration = Duration::from_millis(20);
/// Lines of supervise.log shown when the supervisor exits early.
const TAIL_LINES: usize = 20;

pub fn run(cli: &Cli, args: &UpArgs, spec: &Spec) -> Exit {
    let dir = StateDir::new(spec.supervisor.state_dir.clone());
    // A held lock means a supervisor runs. Ours is released at once: the
    // supervisor takes it for good (a racing `up` then loses there, and we
    // report its exit 4 below).
    match dir.lock() {
        Ok(lock) => drop(lock),
        Err(e @ LockError::Held { .. }) => {
            return Err(Failure::new(exit::ALREADY_RUNNING, e.to_string()));
        }
        Err(e) => return Err(Failure::new(exit::FAILED, e.to_string())),
    }
    let log_path = dir.supervisor_log();
    let log = state_dir::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&log_path)
        .map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!("cannot open {}: {e}", log_path.display()),
            )
        })?;
    let log_start = log.metadata().map_or(0, |m| m.len());
    // To read back what it wrote even once it rotated this file away.
    let first_log = state_dir::options()
        .read(true)
        .open(&log_path)
        .map_err(|e| {
            Failure::new(
                exit::FAILED,
                format!("cannot read {}: {e}", log_path.display()),
            )
        })?;
    let mut child = spawn(cli, args, spec, &log)
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot start the supervisor: {e}")))?;
    let started = Started {
        pid: child.id(),
        log: &log_path,
        first_log,
        log_start,
    };
    let deadline = Deadline::from_now(args.timeout);
    let mut progress = Progress::new(cli.quiet);
    progress.set("starting the supervisor");
    answering(&mut child, &started, dir.root(), deadline.at)?;
    let wanted = Wanted {
        targets: &[],
        goal: if args.wait {
            Goal::Healthy
        } else {
            Goal::Started
        },
        replaced: &Default::default(),
    };
    let label = if args.wait {
        "waiting until healthy"
    } else {
        "starting"
    };
    let settled = history(dir.root()).and_then(|events| {
        for record in events.iter().filter(|r| r.event == CHECKPOINT_SET_ASIDE) {
            eprintln!("warning: {}", record.detail);
        }
        wait::settle(dir.root(), &wanted, Some(deadline), &mut progress, label)
    });
    progress.finish();
    // Told to stop while it started (SIGTERM, `down`), or dead, it is not
    // running in the background, whatever the wait saw (replicas that are
    // stopping look started, a connection it closes is an error).
    let stopping = match history(dir.root()) {
        Ok(events) => events
            .into_iter()
            .find(|r| r.event == SHUTDOWN)
            .map(|r| r.detail),
        Err(e) => Some(e.message.unwrap_or_default()),
    };
    if let Some(why) = stopping {
        return Err(match exited(&mut child, Duration::from_secs(1)) {
            Some(status) => started.died(status),
            None => Failure::new(
                exit::FAILED,
                format!(
                    "the supervisor (pid {}) is stopping before it was ready: {why} (see {})",
                    started.pid,
                    log_path.display()
                ),
            ),
        });
    }
    let report = settled.map_err(|failure| {
        failure.reworded(|m| {
            format!(
                "{m}\nthe supervisor keeps running (pid {}): see `supervise status`, \
                 stop it with `supervise down`",
                started.pid
            )
        })
    })?;
    // A warning, not chatter: shown with -q too.
    warn_of_backoffs(&report);
    if !cli.quiet {
        let line = format!(
            "supervise running in the background (pid {}, state dir {})",
            started.pid,
            dir.root().display()
        );
        emit(&mut std::io::stdout().lock(), &line)?;
    }
    Ok(exit::OK)
}

/// The supervisor's events so far: what it found wrong at its start (a
/// damaged checkpoint it moved aside), which would otherwise be only in its
/// log, and whether it was told to stop.
fn history(state_dir: &Path) -> Result<Vec<EventRecord>, Failure> {
    let mut conn = client::connect(state_dir)?;
    conn.request_accepted(Request::Events { follow: false })?;
    let mut records = Vec::new();
    while let Next::Item((record, _)) = conn.next_event(None)? {
        records.push(record);
    }
    Ok(records)
}

/// Replicas that exited at once and wait out a restart delay: named, as
/// `up -d` returns without waiting for them.
fn warn_of_backoffs(report: &StatusReport) {
    let now = SystemTime::now();
    for service in &report.services {
        for r in service.replicas.iter().filter(|r| r.state == "backoff") {
            let how = match &r.last_exit {
                Some(e) if e.code.is_none() => format!("was killed by {}", exit_cause(e)),
                Some(e) => format!("exited with {}", exit_cause(e)),
                None => "exited".to_string(),
            };
            let when = r
                .restart_at
                .as_deref()
                .and_then(parse_time)
                .map(|at| at.duration_since(now).unwrap_or_default())
                .map_or_else(String::new, |d| format!(" in {}", compact(d, 2)));
            eprintln!(
                "warning: {}.{} {how}; restarting{when}",
                service.name, r.index
            );
        }
    }
}

/// `up SPEC --background` with our global flags, as a new session.
fn spawn(cli: &Cli, args: &UpArgs, spec: &Spec, log: &File) -> std::io::Result<Child> {
    let mut cmd = Command::new("/proc/self/exe");
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    if let Some(dir) = &cli.state_dir {
        cmd.arg("--state-dir").arg(absolute(dir));
    }
    // Not -q: the supervisor's log is where its events are kept.
    for _ in 0..cli.verbose {
        cmd.arg("-v");
    }
    cmd.arg("up").arg(absolute(&spec.path)).arg("--background");
    if let Some(svc) = &args.exit_with {
        cmd.arg("--exit-with").arg(svc);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log.try_clone()?);
    // SAFETY: setsid and close_range are async-signal-safe. The supervisor
    // gets no descriptor of ours beyond stdio: one it kept (a caller's pipe)
    // would hold that caller's read end open for as long as it runs.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            nix::libc::close_range(3, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC as i32);
            Ok(())
        });
    }
    cmd.spawn()
}

/// The supervisor we started.
struct Started<'a> {
    pid: u32,
    log: &'a Path,
    /// The log file it started with (a rotation may move it).
    first_log: File,
    /// Where its part of that (appended) file begins.
    log_start: u64,
}

impl Started<'_> {
    /// It exited before it was ready: show the end of its log; its exit
    /// code is ours.
    fn died(&self, status: ExitStatus) -> Failure {
        let code = status.code().unwrap_or(exit::FAILED);
        eprintln!(
            "error: the supervisor exited with code {code} before it was ready; {} ends with:",
            self.log.display()
        );
        for line in tail(&self.first_log, self.log_start, self.log, TAIL_LINES) {
            eprintln!("  {line}");
        }
        // Even a clean stop (told to, code 0) is not what `up -d` was for.
        Failure::quiet(if code == exit::OK { exit::FAILED } else { code })
    }
}

/// Waits until the socket answers for our supervisor.
fn answering(
    child: &mut Child,
    started: &Started,
    state_dir: &Path,
    deadline: Instant,
) -> Result<(), Failure> {
    loop {
        if let Some(status) = exited(child, Duration::ZERO) {
            return Err(started.died(status));
        }
        match client::status(state_dir) {
            Ok(report) if report.supervisor.pid == started.pid => return Ok(()),
            // Not up yet, or another one that won a race for the lock (ours
            // will exit 4 shortly), or ours going away at once (told to
            // stop: its exit is seen above).
            Ok(_) | Err(ClientError::NoSupervisor(_) | ClientError::Closed) => {}
            Err(e) => return Err(e.into()),
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                exit::TIMEOUT,
                format!(
                    "the supervisor (pid {}) did not answer on its socket in time; see {}",
                    started.pid,
                    started.log.display()
                ),
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// The child's exit status if it exits within `within`.
fn exited(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// The last `n` lines the supervisor wrote: in `first` (its log file when
/// it started) from byte `from` on, then in the files that took its place
/// at `path` if it rotated its log meanwhile (`path.1`, `path`, the newest
/// last).
fn tail(first: &File, from: u64, path: &Path, n: usize) -> Vec<String> {
    let first_id = first.metadata().ok().map(|m| (m.dev(), m.ino()));
    let mut later = Vec::new();
    let mut lines = 0;
    let newest_first =
        std::iter::once(path.to_path_buf()).chain((1..).map(|k| logfiles::rotated(path, k)));
    for file in newest_first {
        match std::fs::metadata(&file) {
            Ok(m) if Some((m.dev(), m.ino())) != first_id && lines < n => {
                let bytes = state_dir::read(&file).unwrap_or_default();
                lines += bytes.iter().filter(|&&b| b == b'\n').count();
                later.push(bytes);
            }
            _ => break,
        }
    }
    let mut bytes = Vec::new();
    if lines < n {
        let mut first = first;
        if first.seek(SeekFrom::Start(from)).is_ok() {
            let _ = first.read_to_end(&mut bytes);
        }
    }
    later.iter().rev().for_each(|b| bytes.extend_from_slice(b));
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_shows_only_this_runs_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervise.log");
        std::fs::write(&path, "old run\n").unwrap();
        let start = std::fs::metadata(&path).unwrap().len();
        let first = File::open(&path).unwrap();
        let mut text = String::from("old run\n");
        for i in 0..30 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let t = tail(&first, start, &path, 3);
        assert_eq!(t, ["line 27", "line 28", "line 29"]);
        assert_eq!(tail(&first, start, &path, 100).len(), 30);
    }

    #[test]
    fn tail_follows_the_log_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervise.log");
        std::fs::write(&path, "old run\nline 0\n").unwrap();
        let first = File::open(&path).unwrap();
        // Rotated twice: the first file is now .2, then .1, then the log.
        logfiles::rotate(&path, 5);
        std::fs::write(&path, "line 1\n").unwrap();
        logfiles::rotate(&path, 5);
        std::fs::write(&path, "line 2\nline 3\n").unwrap();
        let all = tail(&first, "old run\n".len() as u64, &path, 100);
        assert_eq!(all, ["line 0", "line 1", "line 2", "line 3"]);
        assert_eq!(tail(&first, 0, &path, 3), ["line 1", "line 2", "line 3"]);

        // Rotated out of existence (log_keep = 0): still read through `first`.
        let path = dir.path().join("keep-0.log");
        std::fs::write(&path, "old run\nline 0\n").unwrap();
        let first = File::open(&path).unwrap();
        logfiles::rotate(&path, 0);
        std::fs::write(&path, "line 1\n").unwrap();
        let t = tail(&first, "old run\n".len() as u64, &path, 3);
        assert_eq!(t, ["line 0", "line 1"]);
    }
}
