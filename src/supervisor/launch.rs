//! Starting a replica: its shim (see `crate::shim` for why there is one),
//! forked by the zygote with the configuration and environment the spec
//! asks for, and the tasks that listen to the shim: its status lines, and
//! its pidfd, which says when it is gone.

use std::os::fd::OwnedFd;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::io::unix::AsyncFd;

use super::replica::{Phase, ReplicaId};
use super::restart::Outcome;
use super::{Message, Report, Supervisor};
use crate::procfs;
use crate::shim::protocol::{LogConfig, ShimConfig};
use crate::shim::zygote::{StartError, Started, Zygote};
use crate::spec::Probe;

impl Supervisor {
    pub(super) fn spawn(&mut self, id: &ReplicaId, position: usize, now: Instant) {
        let service = &self.spec.services[position];
        let plan = service.replica(&self.spec.dir, id.index);
        let name = id.to_string();
        let replica = self
            .replicas
            .get_mut(id)
            .expect("replica ids come from the map");
        replica.generation += 1;
        let generation = replica.generation;
        let restarts = replica.restarts;
        let mut env = plan.env;
        env.push((
            procfs::MARKER_VAR.into(),
            procfs::marker(&name, self.dir.root()),
        ));
        if service.failover.is_some() {
            // Every incarnation starts as a standby; promotion is announced
            // through the promote hook or signal.
            env.push(("SUPERVISE_ROLE".into(), "standby".into()));
        }
        let mut ready_pattern = None;
        match service.health.as_ref().map(|h| (&h.probe, h.watchdog)) {
            Some((Probe::Notify, watchdog)) => {
                env.push((
                    "NOTIFY_SOCKET".into(),
                    self.dir.notify_socket().display().to_string(),
                ));
                if let Some(w) = watchdog {
                    env.push(("WATCHDOG_USEC".into(), w.as_micros().to_string()));
                }
            }
            Some((Probe::Log(pattern), _)) => ready_pattern = Some(pattern.clone()),
            _ => {}
        }
        let config = ShimConfig {
            replica: name.clone(),
            generation,
            argv: plan.argv,
            env,
            cwd: plan.cwd,
            uid: service.user.as_ref().map(|u| u.uid),
            gid: service
                .group
                .as_ref()
                .map(|g| g.gid)
                .or(service.user.as_ref().map(|u| u.gid)),
            stop_signal: service.stop_signal as i32,
            stop_timeout_ms: service.stop_timeout.as_millis() as u64,
            log: LogConfig {
                path: self.dir.log_file(&name),
                max_size: self.spec.supervisor.log_max_size,
                keep: self.spec.supervisor.log_keep,
            },
            exit_record: self.dir.exit_record(&name),
            running_record: self.dir.running_record(&name),
            lock: self.dir.instance_lock(&name),
            ready_pattern,
            tee_prefix: self.display.prefix(&name, position),
        };
        let _ = std::fs::remove_file(&config.exit_record);
        match self.start_shim(&config) {
            Ok(Started { pid, pidfd, status }) => {
                self.watch(id, pid, pidfd);
                self.set_phase(
                    id,
                    Phase::Starting {
                        shim: pid,
                        since: now,
                    },
                );
                if restarts > 0 {
                    let detail = format!("restarting {id} (restart {restarts})");
                    self.emit("restarted", Some(id), None, detail);
                }
                self.watch_status(id.clone(), generation, status);
            }
            Err(e) => {
                // Could not even fork the shim (EAGAIN, ENOMEM): the same as a
                // command that did not start, so the restart policy decides.
                let detail = format!("{id} could not be started: {e}");
                self.emit("spawn_failed", Some(id), None, detail);
                self.on_exit(id, Outcome::SpawnFailed, now);
            }
        }
    }

    /// Has the zygote fork a shim, starting a zygote first if there is none
    /// (the first start) or the last one is gone.
    fn start_shim(&mut self, config: &ShimConfig) -> Result<Started, StartError> {
        let mut retried = false;
        loop {
            let zygote = match self.zygote.take() {
                Some(zygote) => zygote,
                None => Zygote::spawn(self.display.tee_fd()).map_err(StartError::Broken)?,
            };
            match zygote.start(config) {
                Err(StartError::Gone) if !retried => {
                    tracing::warn!("the zygote is gone; starting another");
                    retried = true;
                }
                // A broken zygote is dropped here, which closes its socket
                // and so tells it to go; the next start has a new one.
                Err(e @ (StartError::Gone | StartError::Broken(_))) => return Err(e),
                result => {
                    self.zygote = Some(zygote);
                    return result;
                }
            }
        }
    }

    /// Takes a shim on: it is watched through its pidfd (it is not our
    /// child, but the zygote's, or an old supervisor's if adopted) and
    /// signalled through it.
    pub(super) fn watch(&mut self, id: &ReplicaId, shim: Pid, pidfd: OwnedFd) {
        self.shims.insert(shim, id.clone());
        match pidfd.try_clone() {
            Ok(watch) => self.watch_pidfd(shim, watch),
            Err(e) => tracing::warn!(error = %e, "cannot duplicate a pidfd"),
        }
        self.pidfds.insert(shim, pidfd);
    }

    /// Tells the loop when a shim is gone.
    fn watch_pidfd(&self, shim: Pid, pidfd: OwnedFd) {
        let messages = self.reports.clone();
        tokio::spawn(async move {
            // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
            // same descriptor until the AsyncFd is dropped.
            if let Ok(fd) = unsafe { AsyncFd::register(pidfd) } {
                // Readable means the process has exited.
                let _ = fd.readable().await;
            }
            let _ = messages.send(Message::ShimGone(shim));
        });
    }

    /// Reads the shim's status lines (the start, then maybe readiness) in a
    /// task and hands each to the loop; ends when the shim closes the pipe.
    pub(super) fn watch_status(&self, id: ReplicaId, generation: u64, pipe: OwnedFd) {
        let reports = self.reports.clone();
        tokio::spawn(async move {
            let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) else {
                return;
            };
            let mut lines = tokio::io::BufReader::new(rx).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let report = Report {
                    id: id.clone(),
                    generation,
                    status: serde_json::from_str(&line).ok(),
                };
                if reports.send(Message::Status(report)).is_err() {
                    return;
                }
            }
        });
    }

    /// Signals a shim through its pidfd: its pid could be reused the moment
    /// it exits, as it is not our child.
    pub(super) fn signal_shim(&self, shim: Pid, signal: Signal) {
        if let Some(pidfd) = self.pidfds.get(&shim) {
            let _ = procfs::pidfd_signal(pidfd, signal);
        }
    }
}
