//! The sd_notify socket: services written for systemd `Type=notify` tell us
//! `READY=1`, `WATCHDOG=1`, `STATUS=…`, `STOPPING=1` over a datagram socket
//! named in `NOTIFY_SOCKET`.
//!
//! It is an abstract socket, `@supervise-notify/<dev>:<inode>` of the state
//! dir: it has no file, so a replica reaches it whatever its `user` (the
//! state dir is private to the supervisor's user), and every supervisor of
//! one state dir binds the same name, so replicas adopted after a crash,
//! whose environment still names it, reach the supervisor that resumed them.
//!
//! Anyone (in the same network namespace) can send to it, so a message
//! counts only for the replica whose process group the sender is in: the
//! kernel attaches the sender's pid to each datagram (SO_PASSCRED), and the
//! replica's main process leads its own group (it called setsid). What a
//! message says never decides whom it is about; a datagram from any other
//! process (another replica's counts for that one) is ignored.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::Message;

/// Datagrams larger than this are cut (systemd's own limit is similar).
const MAX_DATAGRAM: usize = 4096;

/// `NOTIFY_SOCKET` for the replicas of the state dir at `root` (`@` is
/// sd_notify's mark of an abstract name).
pub fn socket_name(root: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(root)?;
    Ok(format!("@supervise-notify/{}:{}", meta.dev(), meta.ino()))
}

/// Binds the socket named `name` (see [`socket_name`]) and forwards each
/// datagram, with its sender's pid, to the loop until the process exits.
pub fn listen(name: &str, messages: mpsc::UnboundedSender<Message>) -> std::io::Result<()> {
    let abstract_name = name.strip_prefix('@').unwrap_or(name);
    let address = SocketAddr::from_abstract_name(abstract_name)?;
    let socket = UnixDatagram::bind_addr(&address).map_err(|e| match e.kind() {
        // Only one supervisor runs per state dir (it holds the lock):
        // someone else took the name.
        std::io::ErrorKind::AddrInUse => std::io::Error::new(
            e.kind(),
            format!("{name} is taken by another process (see /proc/net/unix)"),
        ),
        _ => e,
    })?;
    socket.set_nonblocking(true)?;
    setsockopt(&socket.as_fd(), sockopt::PassCred, &true).map_err(std::io::Error::from)?;
    // SAFETY: the AsyncFd owns the socket, which stays open until it is dropped.
    let socket = unsafe { AsyncFd::register(socket) }.map_err(|e| e.into_parts().1)?;
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok(mut ready) = socket.readable().await else {
                return;
            };
            match receive(socket.get_ref(), &mut buf) {
                Ok(Some((pid, text))) => {
                    if messages.send(Message::Notify { pid, text }).is_err() {
                        return;
                    }
                }
                Ok(None) => {}
                Err(nix::errno::Errno::EAGAIN) => ready.clear_ready(),
                Err(e) => {
                    tracing::warn!(error = %e, "notify socket: receive failed");
                    ready.clear_ready();
                }
            }
        }
    });
    Ok(())
}

/// One datagram: the sender's pid and the text; None without credentials.
fn receive(socket: &UnixDatagram, buf: &mut [u8]) -> nix::Result<Option<(u32, String)>> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let msg = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT,
    )?;
    let pid = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::ScmCredentials(cred) => u32::try_from(cred.pid()).ok(),
        _ => None,
    });
    let len = msg.bytes;
    Ok(pid.map(|pid| (pid, String::from_utf8_lossy(&buf[..len]).into_owned())))
}
