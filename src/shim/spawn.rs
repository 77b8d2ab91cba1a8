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
//! The exceptions are a replica with a cgroup leaf, which writes itself into
//! the leaf's `cgroup.procs` between fork and exec (so not one of its forks
//! runs outside it), and one with rlimits (`limits.nofile`, `limits.core`):
//! std then forks instead of using `posix_spawn` (BENCHMARKS.md has what
//! that costs a restart).

use std::os::fd::{AsRawFd, OwnedFd};
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

pub type Spawned = (std::process::Child, Option<OwnedFd>, Option<OwnedFd>);

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
    // Its own process group (what notify messages are matched by).
    cmd.process_group(0);
    let procs = leaf.map(|leaf| leaf.procs.as_raw_fd());
    let rlimits: Vec<(Resource, u64)> = [
        (Resource::RLIMIT_NOFILE, config.limits.nofile),
        (Resource::RLIMIT_CORE, config.limits.core),
    ]
    .into_iter()
    .filter_map(|(resource, value)| Some((resource, value?)))
    .collect();
    if procs.is_some() || !rlimits.is_empty() {
        // SAFETY: write(2) and setrlimit(2) are async-signal-safe, the
        // descriptor stays open in the shim for as long as the Command
        // lives, and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                // "0": the writer itself. The descriptor was opened by the
                // shim, whose credentials the kernel checks (not those of a
                // `user` the replica has already become).
                if let Some(procs) = procs
                    && nix::libc::write(procs, b"0".as_ptr().cast(), 1) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
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
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {}", plain_io_error(&e)))?;
    // The replica has just exec'd and our bookkeeping (records, the report
    // that wakes the supervisor) can wait: let it have the CPU first. On a
    // busy core this is a third of a restart (BENCHMARKS.md).
    let _ = nix::sched::sched_yield();
    Ok((child, Some(out_r), Some(err_r)))
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
