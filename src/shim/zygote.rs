//! The zygote: a small fork server that starts shims.
//!
//! Exec'ing this binary for every replica start cost about a millisecond of
//! dynamic linking and relocation per shim, and left each shim with some
//! 600 KiB of private, relocated pages. The supervisor instead execs the
//! zygote (`supervise __zygote`) once; the zygote forks one shim per replica
//! start. A forked shim shares the zygote's already relocated pages copy on
//! write: it is running within a fraction of a millisecond and owns only the
//! pages it writes itself (BENCHMARKS.md has the figures).
//!
//! Like the shim it is single-threaded and blocking, as fork requires.
//!
//! The protocol, over a `SOCK_SEQPACKET` socket pair (one message each way
//! per start, in order):
//! - supervisor → zygote: a [`ShimConfig`] as JSON;
//! - zygote → supervisor: [`Reply::Started`] with two descriptors, the
//!   shim's pidfd and the read end of its status pipe, or [`Reply::Failed`].
//!
//! The zygote exits when the supervisor's end of the socket closes (it is
//! done, or it died); the shims live on, as they must across a crash. Shims
//! are the zygote's children and it reaps them; the supervisor learns of
//! their exit through the pidfd, as it does for shims it adopted.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recv,
    recvmsg, sendmsg, setsockopt, socketpair, sockopt,
};
use nix::sys::time::TimeVal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use super::protocol::{ShimConfig, TEE_FD};
use crate::procfs;

/// A zygote that takes longer than this to answer is stuck, not slow.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The zygote's answer to one start.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Reply {
    Started { pid: u32 },
    Failed { error: String },
}

/// A shim the zygote has just forked.
pub struct Started {
    pub pid: Pid,
    /// Signals the shim without a pid-reuse race; readable once it exited.
    pub pidfd: OwnedFd,
    /// The shim's status lines (see [`super::protocol::Status`]).
    pub status: OwnedFd,
}

/// The supervisor's handle on its zygote.
pub struct Zygote {
    socket: OwnedFd,
}

impl Zygote {
    /// Execs the zygote. `tee` (the foreground display's pipe) is passed on
    /// to every shim as [`TEE_FD`]; `open_files` (soft, hard) is the limit
    /// the zygote, the shims and the replicas get back (the supervisor
    /// raised its own, see `supervisor::raise_open_files_limit`).
    pub fn spawn(
        tee: Option<BorrowedFd>,
        open_files: Option<(u64, u64)>,
    ) -> std::io::Result<Zygote> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        setsockopt(
            &ours,
            sockopt::ReceiveTimeout,
            &TimeVal::new(REPLY_TIMEOUT.as_secs() as _, 0),
        )?;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0("supervise")
            .arg("__zygote")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let tee = tee.map(|fd| fd.as_raw_fd());
        // SAFETY: setsid, dup2 and setrlimit are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session, which its shims inherit: Ctrl-C and
                // terminal hangups aimed at the supervisor must not reach
                // the replicas.
                nix::unistd::setsid()?;
                if let Some(fd) = tee
                    && nix::libc::dup2(fd, TEE_FD) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((soft, hard)) = open_files {
                    setrlimit(Resource::RLIMIT_NOFILE, soft, hard)?;
                }
                Ok(())
            });
        }
        // The zygote is reaped by the supervisor's waitpid(-1) loop, not
        // through this handle; dropping a std Child neither waits nor kills.
        cmd.spawn()?;
        Ok(Zygote { socket: ours })
    }

    /// Has the zygote fork a shim for `config`.
    pub fn start(&self, config: &ShimConfig) -> Result<Started, StartError> {
        let request = serde_json::to_vec(config).map_err(|e| StartError::Broken(e.into()))?;
        // A signal the supervisor handles (the SIGCHLD of a probe or hook)
        // interrupts these calls with EINTR, SA_RESTART or not, as the
        // socket has a timeout (signal(7)); the zygote is fine, so ask again.
        // Giving up would drop a zygote that may have forked the shim.
        loop {
            match sendmsg::<()>(
                self.socket.as_raw_fd(),
                &[IoSlice::new(&request)],
                &[],
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(Errno::EINTR) => {}
                sent => {
                    sent.map_err(StartError::from)?;
                    break;
                }
            }
        }
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!([RawFd; 2]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = loop {
            match recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(Errno::EINTR) => {}
                received => break received.map_err(StartError::from)?,
            }
        };
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(StartError::from)? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: descriptors received with SCM_RIGHTS are new and ours.
                fds.extend(
                    received
                        .into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        let len = msg.bytes;
        if len == 0 {
            return Err(StartError::Gone);
        }
        let reply =
            serde_json::from_slice(&buf[..len]).map_err(|e| StartError::Broken(e.into()))?;
        match (reply, <[OwnedFd; 2]>::try_from(fds)) {
            (Reply::Started { pid }, Ok([pidfd, status])) => Ok(Started {
                pid: Pid::from_raw(pid as i32),
                pidfd,
                status,
            }),
            (Reply::Started { .. }, Err(_)) => Err(StartError::Broken(std::io::Error::other(
                "its reply came without the shim's descriptors",
            ))),
            (Reply::Failed { error }, _) => Err(StartError::Refused(error)),
        }
    }
}

/// Why a start through the zygote failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The zygote is gone (it died): start another and try again.
    #[error("the zygote is gone")]
    Gone,
    /// The zygote could not fork the shim (EAGAIN, ENOMEM...).
    #[error("{0}")]
    Refused(String),
    /// The zygote is not usable: it is stuck or garbled its reply.
    #[error("the zygote failed: {0}")]
    Broken(std::io::Error),
}

impl From<Errno> for StartError {
    fn from(e: Errno) -> StartError {
        match e {
            Errno::EPIPE | Errno::ECONNRESET | Errno::ENOTCONN => StartError::Gone,
            Errno::EAGAIN => StartError::Broken(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 10 s",
            )),
            e => StartError::Broken(e.into()),
        }
    }
}

/// Entry point of `supervise __zygote`: serves starts on stdin (the socket)
/// until the supervisor closes it; returns the process exit code.
pub fn main() -> i32 {
    // SAFETY: the supervisor made fd 0 our end of the socket pair.
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let children = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .and_then(|_| SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC));
    let children = match children {
        Ok(fd) => fd,
        Err(e) => {
            crate::say!("supervise: zygote: cannot watch its children: {e}");
            return 1;
        }
    };
    crate::pages::release_startup_pages();
    loop {
        let mut fds = [
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
            PollFd::new(children.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                crate::say!("supervise: zygote: poll failed: {e}");
                return 1;
            }
        }
        let (request_ready, child_ready) = (fds[0].any(), fds[1].any());
        if child_ready.unwrap_or(false) {
            while let Ok(Some(_)) = children.read_signal() {}
            reap();
        }
        if request_ready.unwrap_or(false) {
            let Some(request) = receive(&socket) else {
                return 0;
            };
            let (reply, fds) = match fork_shim(&request, &children) {
                Ok((pid, pidfd, status)) => (Reply::Started { pid }, vec![pidfd, status]),
                Err(error) => (Reply::Failed { error }, Vec::new()),
            };
            let bytes = serde_json::to_vec(&reply).unwrap_or_default();
            let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
            let rights = [ControlMessage::ScmRights(&raw)];
            let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
            if sendmsg::<()>(
                socket.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .is_err()
            {
                return 0;
            }
        }
    }
}

/// One whole request, or None once the supervisor has closed its end.
fn receive(socket: &OwnedFd) -> Option<Vec<u8>> {
    loop {
        // MSG_TRUNC with MSG_PEEK gives the message's real length.
        let len = match recv(
            socket.as_raw_fd(),
            &mut [],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC,
        ) {
            Ok(0) => return None,
            Ok(len) => len,
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        };
        let mut buf = vec![0u8; len];
        match recv(socket.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(n) if n == len => return Some(buf),
            Err(Errno::EINTR) => continue,
            _ => return None,
        }
    }
}

fn reap() {
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            return;
        }
    }
}

/// Forks a shim for `request`; returns its pid, its pidfd (opened before
/// the zygote can reap it, so it is bound to this very process) and the read
/// end of its status pipe.
fn fork_shim(request: &[u8], children: &SignalFd) -> Result<(u32, OwnedFd, OwnedFd), String> {
    let (status_r, status_w) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("cannot create a pipe: {e}"))?;
    // SAFETY: the zygote is single-threaded, so the child may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("cannot fork a shim: {e}"))? {
        ForkResult::Child => {
            // SAFETY: closing the child's copy of the zygote's signalfd,
            // which the child never uses.
            unsafe { nix::libc::close(children.as_raw_fd()) };
            std::process::exit(become_shim(request, status_w))
        }
        ForkResult::Parent { child } => {
            drop(status_w);
            let pidfd = procfs::pidfd_open(child.as_raw() as u32)
                .map_err(|e| format!("cannot open a pidfd for shim {child}: {e}"))?;
            Ok((child.as_raw() as u32, pidfd, status_r))
        }
    }
}

/// In the forked child: its own session (as each replica then has its
/// own), stdin from /dev/null (which also closes the zygote's socket),
/// stdout into the status pipe, then the shim.
fn become_shim(request: &[u8], status: OwnedFd) -> i32 {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
    let redirected = nix::unistd::setsid()
        .and_then(|_| nix::fcntl::open("/dev/null", OFlag::O_RDONLY, nix::sys::stat::Mode::empty()))
        .and_then(|null| nix::unistd::dup2_stdin(null.as_fd()))
        .and_then(|_| nix::unistd::dup2_stdout(status.as_fd()));
    drop(status);
    if let Err(e) = redirected {
        crate::say!("supervise: shim: cannot set up its session and standard streams: {e}");
        return 1;
    }
    match serde_json::from_slice::<ShimConfig>(request) {
        Ok(config) => {
            // `ps` shows which replica a shim is for (the name is cut at 15 bytes).
            if let Ok(name) = std::ffi::CString::new(format!("shim {}", config.replica)) {
                let _ = nix::sys::prctl::set_name(&name);
            }
            super::run(config)
        }
        Err(e) => {
            crate::say!("supervise: shim started without a valid configuration: {e}");
            2
        }
    }
}
