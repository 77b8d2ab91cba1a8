//! Waiting for the supervisor's own short-lived children (exec probes,
//! alert commands).
//!
//! The event loop reaps every child with `waitpid(-1)`: it must, to reap
//! orphans re-parented to it as a subreaper or PID 1. That would steal the
//! exit status from any other waiter (tokio::process included), so children
//! other than shims are spawned through [`Reaper::spawn`], which registers
//! them; the loop hands their status over with [`Reaper::deliver`].

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use tokio::sync::oneshot;

#[derive(Clone, Default)]
pub struct Reaper {
    waiting: Arc<Mutex<HashMap<Pid, oneshot::Sender<WaitStatus>>>>,
}

impl Reaper {
    /// Spawns `cmd`; the receiver yields its wait status once it has exited
    /// and been reaped. Kill it through a pidfd (`procfs::pidfd_open` right
    /// after spawning), as its pid is free for reuse once reaped.
    pub fn spawn(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Child, oneshot::Receiver<WaitStatus>)> {
        let (tx, rx) = oneshot::channel();
        // Held across spawn and insert: a child that exits at once cannot be
        // delivered before it is registered.
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let child = cmd.spawn()?;
        waiting.insert(Pid::from_raw(child.id() as i32), tx);
        Ok((child, rx))
    }

    /// Called by the loop for a reaped child that is not a shim; false when
    /// nobody waits for it (an orphan).
    pub fn deliver(&self, pid: Pid, status: WaitStatus) -> bool {
        let waiter = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid);
        match waiter {
            Some(tx) => {
                let _ = tx.send(status);
                true
            }
            None => false,
        }
    }

    /// The children still waited for (for tests that play the loop's part).
    #[cfg(test)]
    pub fn waiting_pids(&self) -> Vec<Pid> {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        waiting.keys().copied().collect()
    }
}
