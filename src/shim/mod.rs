//! The shim: one small process per replica, between the supervisor and the
//! replica (the same binary, started as `supervise __shim`).
//!
//! Why it exists (see README, "Design: the shim"): a supervisor that is
//! killed must not take its children's output or exit status with it. The
//! shim owns exactly what would otherwise die with the supervisor:
//! - the read ends of the replica's stdout/stderr pipes (so the replica never
//!   gets SIGPIPE and no line is lost), and the log file they go to;
//! - the replica's exit status, written as an [`protocol::ExitRecord`] file;
//! - the replica's whole process tree: it is a child subreaper, so
//!   descendants that leave the process group are still its descendants, and
//!   it exits only once every one of them is gone. A restart can therefore
//!   never meet its predecessor's ghost on a port.
//!
//! It is single-threaded and blocking (poll over a signalfd and two pipes):
//! no tokio, no threads, so `PR_SET_PDEATHSIG` on the replica is reliable
//! (it fires on the death of the parent *thread*) and the shim stays small.
//!
//! Requests come as signals: SIGTERM (or SIGINT/SIGHUP) = stop gracefully
//! (stop signal to the whole tree, SIGKILL after the stop timeout), SIGUSR1 =
//! kill the tree now.

mod logfile;
pub mod protocol;
mod tree;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use logfile::{LogWriter, Stream};
use protocol::{ExitRecord, ShimConfig, Status, TEE_FD};

/// Pipe buffer asked for each output stream, so a replica that writes in
/// bursts is not blocked while the shim is busy with the other stream.
const PIPE_SIZE: i32 = 1 << 20;
/// While killing, the tree is swept again this often (new forks, slow exits).
const KILL_SWEEP: Duration = Duration::from_millis(50);

/// Entry point of `supervise __shim`; returns the process exit code.
pub fn main() -> i32 {
    let mut input = Vec::new();
    let config = std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<ShimConfig>(&input).map_err(|e| e.to_string()));
    match config {
        Ok(config) => run(config),
        Err(e) => {
            eprintln!("supervise: shim started without a valid configuration: {e}");
            2
        }
    }
}

enum Phase {
    Running,
    /// Stop signal sent; SIGKILL at the deadline.
    Stopping {
        deadline: Instant,
    },
    Killing,
}

fn run(config: ShimConfig) -> i32 {
    let signals = match watch_signals() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!(
                "supervise: {}: cannot set up signal handling: {e}",
                config.replica
            );
            return 1;
        }
    };
    // Without this, descendants that double-fork would be re-parented to init
    // and escape the stop.
    let _ = nix::sys::prctl::set_child_subreaper(true);

    let tee = config.tee_prefix.clone().and_then(|prefix| {
        // SAFETY: the supervisor passes the display pipe as fd 3 when it sets a tee prefix.
        let fd = unsafe { BorrowedFd::borrow_raw(TEE_FD) };
        // dup2 cleared close-on-exec; the display pipe is the shim's, not the replica's.
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).ok()?;
        Some((fd, prefix))
    });
    let mut log = LogWriter::open(config.log.clone(), tee);

    let (mut child, mut out, mut err) = match spawn(&config) {
        Ok(spawned) => spawned,
        Err(error) => {
            log.note(&error);
            report(&Status::SpawnFailed {
                error: error.clone(),
            });
            let record = ExitRecord {
                generation: config.generation,
                pid: None,
                code: None,
                signal: None,
                spawn_error: Some(error),
                at: SystemTime::now(),
            };
            return finish(&config, &record);
        }
    };
    let child_pid = Pid::from_raw(child.id() as i32);
    report(&Status::Started { pid: child.id() });
    // The pipe fds now belong to the loop below; the Child handle is only kept
    // for its pid (the shim reaps with waitpid(-1) so it sees every descendant).
    let _ = child.stdout.take();
    let _ = child.stderr.take();

    let me = Pid::this();
    let stop_signal = Signal::try_from(config.stop_signal).unwrap_or(Signal::SIGTERM);
    let stop_timeout = Duration::from_millis(config.stop_timeout_ms);
    let mut phase = Phase::Running;
    let mut main_status: Option<WaitStatus> = None;
    let mut buf = vec![0u8; 64 * 1024];

    loop {
        let timeout = match phase {
            Phase::Running => PollTimeout::NONE,
            Phase::Stopping { deadline } => {
                poll_timeout(deadline.saturating_duration_since(Instant::now()))
            }
            Phase::Killing => poll_timeout(KILL_SWEEP),
        };
        let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        for pipe in [&out, &err].into_iter().flatten() {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("supervise: {}: poll failed: {e}", config.replica);
                return 1;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| f.any().unwrap_or(false)).collect();
        drop(fds);

        let mut no_children = false;
        if ready[0] {
            while let Ok(Some(info)) = signals.read_signal() {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {}
                    Ok(Signal::SIGUSR1) => {
                        tree::signal_all(me, Signal::SIGKILL);
                        phase = Phase::Killing;
                    }
                    Ok(_) => {
                        if let Phase::Running = phase {
                            tree::signal_all(me, stop_signal);
                            phase = Phase::Stopping {
                                deadline: Instant::now() + stop_timeout,
                            };
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        // Reap on every wake-up, not only on SIGCHLD: signalfd coalesces.
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => break,
                Ok(status) if status.pid() == Some(child_pid) => {
                    main_status = Some(status);
                    // What the main process leaves behind is part of the replica
                    // and goes with it (systemd's KillMode=control-group).
                    if let Phase::Running = phase
                        && tree::signal_all(me, stop_signal) > 0
                    {
                        phase = Phase::Stopping {
                            deadline: Instant::now() + stop_timeout,
                        };
                    }
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(_) => {
                    no_children = true;
                    break;
                }
            }
        }

        let mut slot = 1;
        for (pipe, stream) in [(&mut out, Stream::Out), (&mut err, Stream::Err)] {
            if pipe.is_some() {
                if ready.get(slot).copied().unwrap_or(false) {
                    drain(pipe, stream, &mut log, &mut buf, false);
                }
                slot += 1;
            }
        }

        if let Phase::Stopping { deadline } = phase
            && Instant::now() >= deadline
        {
            phase = Phase::Killing;
        }
        if let Phase::Killing = phase {
            tree::signal_all(me, Signal::SIGKILL);
        }
        if no_children && main_status.is_some() {
            break;
        }
    }

    // Every writer is gone; whatever is still in the pipes is the last output.
    drain(&mut out, Stream::Out, &mut log, &mut buf, true);
    drain(&mut err, Stream::Err, &mut log, &mut buf, true);
    log.flush_partial();
    if log.dropped_lines > 0 {
        eprintln!(
            "supervise: {}: {} log lines could not be written to {}",
            config.replica,
            log.dropped_lines,
            config.log.path.display()
        );
    }
    let (code, signal) = match main_status {
        Some(WaitStatus::Exited(_, code)) => (Some(code), None),
        Some(WaitStatus::Signaled(_, sig, _)) => (None, Some(sig as i32)),
        _ => (None, None),
    };
    let record = ExitRecord {
        generation: config.generation,
        pid: Some(child_pid.as_raw() as u32),
        code,
        signal,
        spawn_error: None,
        at: SystemTime::now(),
    };
    finish(&config, &record)
}

fn poll_timeout(d: Duration) -> PollTimeout {
    PollTimeout::try_from(d.as_millis().min(i32::MAX as u128) as i32 + 1)
        .unwrap_or(PollTimeout::MAX)
}

/// Blocks the signals the shim handles and returns a signalfd for them.
/// The replica starts with an empty mask (std resets it in the child).
fn watch_signals() -> nix::Result<SignalFd> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        set.add(s);
    }
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
}

type Spawned = (std::process::Child, Option<OwnedFd>, Option<OwnedFd>);

fn spawn(config: &ShimConfig) -> Result<Spawned, String> {
    let program = config.argv.first().ok_or("empty command")?;
    if !config.cwd.is_dir() {
        return Err(format!(
            "cannot start {program}: working directory {} does not exist",
            config.cwd.display()
        ));
    }
    let (out_r, out_w) = output_pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_r, err_w) = output_pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let mut cmd = Command::new(program);
    cmd.args(&config.argv[1..])
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&config.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w));
    if let Some(gid) = config.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = config.uid {
        cmd.uid(uid);
    }
    let shim = Pid::this();
    // SAFETY: only async-signal-safe calls (setsid, prctl, getppid, _exit)
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            reset_signals();
            nix::unistd::setsid()?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The shim may have died between fork and prctl.
            if nix::unistd::getppid() != shim {
                nix::libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {}", plain_io_error(&e)))?;
    Ok((child, Some(out_r), Some(err_r)))
}

/// The replica starts as if from a fresh login: no blocked signals (the
/// shim blocks the ones it reads from its signalfd) and default dispositions
/// (ignored ones would otherwise be inherited across exec).
/// Async-signal-safe: only sigprocmask and sigaction.
fn reset_signals() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    for signal in Signal::iterator() {
        if !matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            // SAFETY: installing SIG_DFL cannot break any invariant of this process image.
            let _ =
                unsafe { nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigDfl) };
        }
    }
}

/// "No such file or directory", without Rust's "(os error 2)" suffix.
fn plain_io_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code).desc().to_string(),
        None => e.to_string(),
    }
}

fn output_pipe() -> nix::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // Best effort: the size is capped by /proc/sys/fs/pipe-max-size.
    let _ = fcntl(&r, FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    Ok((r, w))
}

/// Reads what is available from a pipe into the log; closes it at end of
/// stream. With `to_end`, keeps reading until the pipe is empty.
fn drain(
    pipe: &mut Option<OwnedFd>,
    stream: Stream,
    log: &mut LogWriter,
    buf: &mut [u8],
    to_end: bool,
) {
    let Some(fd) = pipe.as_ref() else { return };
    if to_end {
        let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    }
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Ok(0) => {
                *pipe = None;
                return;
            }
            Ok(n) => log.feed(stream, &buf[..n]),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return,
            Err(_) => {
                *pipe = None;
                return;
            }
        }
        if !to_end {
            return;
        }
    }
}

/// Tells the supervisor how the start went, on the shim's stdout, then lets
/// go of that pipe: nothing else is ever written to it, so a supervisor that
/// dies later cannot make the shim fail on a write.
fn report(status: &Status) {
    let mut line = serde_json::to_vec(status).unwrap_or_default();
    line.push(b'\n');
    let _ = std::io::stdout().write_all(&line);
    let _ = std::io::stdout().flush();
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(null.as_fd());
    }
    debug_assert!(std::io::stdout().as_raw_fd() == 1);
}

fn finish(config: &ShimConfig, record: &ExitRecord) -> i32 {
    match record.write(&config.exit_record) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!(
                "supervise: {}: cannot write exit record {}: {e}",
                config.replica,
                config.exit_record.display()
            );
            1
        }
    }
}
