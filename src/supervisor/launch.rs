//! Starting a replica: its shim (see `crate::shim` for why there is one),
//! with the configuration and environment the spec asks for, and the task
//! that listens to what the shim reports.

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use nix::unistd::Pid;

use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use tokio::io::AsyncBufReadExt;

use super::replica::{Phase, ReplicaId};
use super::restart::Outcome;
use super::{Message, Report, Supervisor};
use crate::procfs;
use crate::shim::protocol::{LogConfig, ShimConfig, TEE_FD};
use crate::spec::Probe;

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
        match spawn_shim(&config, self.display.tee_fd()) {
            Ok((shim, status_pipe)) => {
                self.shims.insert(shim, id.clone());
                self.set_phase(id, Phase::Starting { shim, since: now });
                if restarts > 0 {
                    let detail = format!("restarting {id} (restart {restarts})");
                    self.emit("restarted", Some(id), None, detail);
                }
                self.watch_status(id.clone(), generation, status_pipe);
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

    /// Signals a shim: through its pidfd when it was adopted (a pid that is
    /// not our child could be reused the moment it exits), else by pid (our
    /// own child's pid stays reserved until we reap it).
    pub(super) fn signal_shim(&self, shim: Pid, signal: Signal) {
        match self.pidfds.get(&shim) {
            Some(pidfd) => {
                let _ = procfs::pidfd_signal(pidfd, signal);
            }
            None => {
                let _ = kill(shim, signal);
            }
        }
    }
}
