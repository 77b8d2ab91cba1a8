//! Starting the replica under the shim: its own process group, an empty
//! signal mask, default signal dispositions, stdout/stderr into pipes.
//!
//! Nothing runs between fork and exec, so std starts the replica with
//! `posix_spawn` (a vfork: no copy of the shim's page tables), which is
//! about a third of a restart faster than fork plus a pre-exec hook
//! (BENCHMARKS.md). What such a hook did is done otherwise: the shim's own
//! dispositions are made the defaults once ([`default_dispositions`]; std
//! resets the mask and SIGPIPE in the child), and `PR_SET_PDEATHSIG` is not
//! set — a replica whose shim is killed is found by its marker and killed
//! by the supervisor, or by the next one if the supervisor is gone too.
//!
//! The exceptions: a replica with a cgroup leaf is started straight into it
//! with `clone3` (see `clone`), and one with rlimits (`limits.nofile`,
//! `limits.core`) and no leaf is forked by std, which sets them before exec.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, Signal};

use super::protocol::ShimConfig;
use crate::cgroup::Leaf;

/// Pipe buffer asked for each output stream, so a replica that writes in
/// bursts is not blocked while the shim is busy with the other stream.
const PIPE_SIZE: i32 = 1 << 20;

pub type Spawned = (u32, Option<OwnedFd>, Option<OwnedFd>);

pub fn spawn(config: &ShimConfig, leaf: Option<&Leaf>) -> Result<Spawned, String> {
    let program = config.argv.first().ok_or("empty command")?;
    if !config.cwd.is_dir() {
        return Err(format!(
            "cannot start {program}: working directory {} does not exist",
            config.cwd.display()
        ));
    }
    let (out_r, out_w) = output_pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let (err_r, err_w) = output_pipe().map_err(|e| format!("cannot create a pipe: {e}"))?;
    let rlimits: Vec<(Resource, u64)> = [
        (Resource::RLIMIT_NOFILE, config.limits.nofile),
        (Resource::RLIMIT_CORE, config.limits.core),
    ]
    .into_iter()
    .filter_map(|(resource, value)| Some((resource, value?)))
    .collect();
    let started = match leaf {
        Some(leaf) => super::clone::spawn(config, leaf.dir(), out_w, err_w, &rlimits),
        None => with_std(config, out_w, err_w, rlimits),
    };
    let pid = started.map_err(|e| format!("cannot start {program}: {}", plain_io_error(&e)))?;
    // The replica has just exec'd and our bookkeeping (records, the report
    // that wakes the supervisor) can wait: let it have the CPU first. On a
    // busy core this is a third of a restart (BENCHMARKS.md).
    let _ = nix::sched::sched_yield();
    Ok((pid, Some(out_r), Some(err_r)))
}

/// Starts the replica with std (`posix_spawn`, or fork and exec when
/// rlimits are to be set in between); returns its pid.
fn with_std(
    config: &ShimConfig,
    out: OwnedFd,
    err: OwnedFd,
    rlimits: Vec<(Resource, u64)>,
) -> std::io::Result<u32> {
    let mut cmd = Command::new(&config.argv[0]);
    cmd.args(&config.argv[1..])
        .envs(config.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&config.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    if let Some(gid) = config.gid {
        cmd.gid(gid);
    }
    if let Some(uid) = config.uid {
        cmd.uid(uid);
    }
    // Its own process group (what notify messages are matched by).
    cmd.process_group(0);
    if !rlimits.is_empty() {
        // SAFETY: setrlimit(2) is async-signal-safe and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                for &(resource, value) in &rlimits {
                    let value = if value == u64::MAX {
                        nix::libc::RLIM_INFINITY
                    } else {
                        value
                    };
                    setrlimit(resource, value, value)?;
                }
                Ok(())
            });
        }
    }
    // The Child handle is dropped: the shim reaps with waitpid(-1), which
    // sees every descendant, not only the main process.
    Ok(cmd.spawn()?.id())
}

/// Makes every signal's disposition the default in the shim (which then
/// installs handlers for its own, and exec resets handlers): the replica
/// starts with default dispositions whatever the supervisor was started with
/// (`nohup` ignores SIGHUP, say), as ignored ones are inherited across exec.
/// SIGPIPE stays ignored in the shim; std restores its default in the replica.
pub fn default_dispositions() {
    for signal in Signal::iterator() {
        if !matches!(signal, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGPIPE) {
            // SAFETY: installing SIG_DFL cannot break any invariant: the shim
            // has no handlers of its own yet.
            let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
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
