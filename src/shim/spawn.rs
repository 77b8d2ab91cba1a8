//! Starting the replica under the shim: its own session, an empty signal
//! mask, default signal dispositions, PDEATHSIG, stdout/stderr into pipes.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use super::protocol::ShimConfig;

/// Pipe buffer asked for each output stream, so a replica that writes in
/// bursts is not blocked while the shim is busy with the other stream.
const PIPE_SIZE: i32 = 1 << 20;

pub type Spawned = (std::process::Child, Option<OwnedFd>, Option<OwnedFd>);

pub fn spawn(config: &ShimConfig) -> Result<Spawned, String> {
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
    // The replica has just exec'd and our bookkeeping (records, the report
    // that wakes the supervisor) can wait: let it have the CPU first. On a
    // busy core this is a third of a restart (BENCHMARKS.md).
    let _ = nix::sched::sched_yield();
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
