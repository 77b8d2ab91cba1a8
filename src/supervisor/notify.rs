//! The sd_notify socket: services written for systemd `Type=notify` tell us
//! `READY=1`, `WATCHDOG=1`, `STATUS=…`, `STOPPING=1` over a datagram socket
//! named in `NOTIFY_SOCKET` (`<state_dir>/notify.sock`).
//!
//! Anyone who can reach the socket can send to it, so a message counts only
//! for the replica whose process group the sender is in: the kernel attaches
//! the sender's pid to each datagram (SO_PASSCRED), and the replica's main
//! process leads its own group (it called setsid). A datagram from any other
//! process is ignored.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

use super::Message;

/// Datagrams larger than this are cut (systemd's own limit is similar).
const MAX_DATAGRAM: usize = 4096;

/// Binds the socket and forwards each datagram, with its sender's pid, to
/// the loop until the process exits.
pub fn listen(path: &Path, messages: mpsc::UnboundedSender<Message>) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let socket = UnixDatagram::bind(path)?;
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
