//! Starting a replica's shim (see `crate::shim` for why there is one).

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use crate::shim::protocol::{ShimConfig, TEE_FD};

/// Spawns `supervise __shim` for one replica and hands it its configuration.
/// Returns the shim's pid and the pipe on which it reports the start.
pub fn spawn_shim(config: &ShimConfig, tee: Option<BorrowedFd>) -> std::io::Result<(Pid, OwnedFd)> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("supervise")
        .args(["__shim", &config.replica])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let tee = tee.map(|fd| fd.as_raw_fd());
    // SAFETY: setsid and dup2 are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: Ctrl-C and terminal hangups aimed at the
            // supervisor must not reach the replicas.
            nix::unistd::setsid()?;
            if let Some(fd) = tee
                && nix::libc::dup2(fd, TEE_FD) < 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let pid = Pid::from_raw(child.id() as i32);
    let config_json = serde_json::to_vec(config)?;
    let written = child
        .stdin
        .take()
        .expect("stdin was piped")
        .write_all(&config_json);
    let status = child.stdout.take().expect("stdout was piped");
    // The shim is reaped by the supervisor's waitpid(-1) loop, not through
    // this handle; dropping a std Child neither waits nor kills.
    written?;
    Ok((pid, status.into()))
}
