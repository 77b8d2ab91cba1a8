//! Starting a replica: its shim (see `crate::shim` for why there is one),
//! forked by the zygote with the configuration and environment the spec
//! asks for, and the tasks that listen to the shim: its status lines, and
//! its pidfd, which says when it is gone.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::io::unix::AsyncFd;

use super::cluster;
use super::replica::{ReplicaId, Role};
use super::restart::{Ending, History};
use super::{Message, Report, Supervisor};
use crate::procfs;
use crate::shim::protocol::{Demote, FenceConfig, LogConfig, Respawn, ShimConfig};
use crate::shim::zygote::{StartError, Started, Zygote};
use crate::spec::{self, Policy, Probe, Promote, Service};

/// A live shim: whose it is, and the pidfd that signals it and says when it
/// is gone (shared with the task that watches it).
pub(super) struct Shim {
    pub id: ReplicaId,
    pidfd: Arc<OwnedFd>,
}

/// Read buffer of a shim's status pipe.
const STATUS_BUFFER: usize = 256;

impl Supervisor {
    /// Starts an incarnation of `id`, in the `role` the plan gave it.
    pub(super) fn spawn(
        &mut self,
        id: &ReplicaId,
        position: usize,
        role: Option<Role>,
        now: Instant,
    ) {
        let service = &self.spec.services[position];
        let plan = service.replica(&self.spec.dir, id.index);
        let name = id.to_string();
        let replica = self
            .replicas
            .get_mut(id)
            .expect("replica ids come from the map");
        replica.generation += 1;
        let generation = replica.generation;
        let history = replica.history.clone();
        let mut env = plan.env;
        env.push((
            procfs::MARKER_VAR.into(),
            procfs::marker(&name, self.dir.root()),
        ));
        if let Some(role) = role {
            env.push(("SUPERVISE_ROLE".into(), role.as_str().into()));
        }
        let mut ready_pattern = None;
        match service.health.as_ref().map(|h| (&h.probe, h.watchdog)) {
            Some((Probe::Notify, watchdog)) => {
                env.push(("NOTIFY_SOCKET".into(), self.notify_socket.clone()));
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
            respawn: respawn_leave(service, &history),
            definition: service.fingerprint(&self.spec.dir, id.index),
            cgroup: self.leaf(&name),
            limits: service.limits.clone(),
            fence: self.fence_config(service, id),
        };
        // The previous incarnation's record, if still there: its end was
        // judged to restart, which this start carries out.
        self.judged_records.remove(&name);
        let _ = std::fs::remove_file(&config.exit_record);
        if let Some(fence) = &config.fence {
            // A new incarnation is a standby until elected.
            let _ = std::fs::remove_file(&fence.path);
        }
        if role == Some(Role::Active) {
            // Checkpointed before it is told (see `failover`).
            self.save_checkpoint_telling(id, Role::Active);
        }
        match self.start_shim(&config) {
            Ok(Started { pid, pidfd, status }) => {
                self.watch(id, pid, pidfd, Some((generation, status)));
                self.begin(id, pid, now, role);
            }
            Err(e) => {
                // Could not even fork the shim (EAGAIN, ENOMEM): the same as a
                // command that did not start, so the restart policy decides.
                let detail = format!("{id} could not be started: {e}");
                self.emit("spawn_failed", Some(id), None, detail);
                self.on_exit(id, Ending::SpawnFailed, now);
            }
        }
    }

    /// Cluster scope: where the shim finds its fencing order, and how it
    /// demotes the replica (the hook's `{pid}` and `{token}` are filled in by
    /// the shim when it runs it).
    fn fence_config(&self, service: &Service, id: &ReplicaId) -> Option<FenceConfig> {
        let failover = service.failover.as_ref().filter(|f| f.is_cluster())?;
        let demote = match &failover.demote {
            Some(Promote::Signal(signal)) => Demote::Signal(*signal as i32),
            Some(Promote::Command(argv)) => {
                let vars = spec::Vars {
                    service: &service.name,
                    replica: id.index,
                    port: service.port_of(id.index),
                    pid: None,
                    token: None,
                };
                Demote::Command {
                    argv: argv.iter().map(|a| spec::expand(a, &vars)).collect(),
                    cwd: self.spec.dir.clone(),
                }
            }
            None => Demote::Stop {
                kill_after_ms: (cluster::MARGIN / 2).as_millis() as u64,
            },
        };
        Some(FenceConfig {
            path: self.dir.fence_order(&id.to_string()),
            demote,
        })
    }

    /// Has the zygote fork a shim, starting a zygote first if there is none
    /// (the first start) or the last one is gone.
    fn start_shim(&mut self, config: &ShimConfig) -> Result<Started, StartError> {
        let mut retried = false;
        loop {
            let zygote = match self.zygote.take() {
                Some(zygote) => zygote,
                None => Zygote::spawn(self.display.tee_fd(), self.open_files)
                    .map_err(StartError::Broken)?,
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

    /// Takes a shim on: it is signalled through its pidfd (it is not our
    /// child, but the zygote's, or an old supervisor's if adopted), and a
    /// task hands the loop its status lines, if we have its status pipe, and
    /// then its end. The lines come first: the shim writes them before it
    /// exits, so the loop never hears of an end before what preceded it.
    pub(super) fn watch(
        &mut self,
        id: &ReplicaId,
        shim: Pid,
        pidfd: OwnedFd,
        status: Option<(u64, OwnedFd)>,
    ) {
        let pidfd = Arc::new(pidfd);
        let shim_entry = Shim {
            id: id.clone(),
            pidfd: Arc::clone(&pidfd),
        };
        self.shims.insert(shim, shim_entry);
        let messages = self.reports.clone();
        let id = id.clone();
        tokio::spawn(async move {
            if let Some((generation, pipe)) = status
                && let Ok(rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(pipe)
            {
                // Status lines are short, and a hundred shims' readers must
                // not cost a hundred default 8 KiB buffers.
                let mut lines = tokio::io::BufReader::with_capacity(STATUS_BUFFER, rx).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let report = Report {
                        id: id.clone(),
                        generation,
                        status: serde_json::from_str(&line).ok(),
                    };
                    if messages.send(Message::Status(report)).is_err() {
                        return;
                    }
                }
            }
            // SAFETY: the AsyncFd holds a reference to the OwnedFd, which
            // stays open and the same descriptor until the AsyncFd is dropped.
            if let Ok(fd) = unsafe { AsyncFd::register(pidfd) } {
                // Readable means the process has exited.
                let _ = fd.readable().await;
            }
            let _ = messages.send(Message::ShimGone(shim));
        });
    }

    /// Signals a shim through its pidfd: its pid could be reused the moment
    /// it exits, as it is not our child.
    pub(super) fn signal_shim(&self, shim: Pid, signal: Signal) {
        if let Some(entry) = self.shims.get(&shim) {
            let _ = procfs::pidfd_signal(&entry.pidfd, signal);
        }
    }
}

/// What a shim may restart by itself (see [`Respawn`]): only where the
/// restart policy would restart at once whatever the history, i.e. with
/// `delay = "0s"` (the backoff of a zero delay is zero), and no more often
/// than the limit allows now. The budget is never larger than what the
/// policy allows when the report arrives: entries only leave the window, and
/// a long uptime only clears the history. Services with health checks or
/// failover are left to the supervisor: a new incarnation changes their
/// health and role, which only the loop may decide.
fn respawn_leave(service: &Service, history: &History) -> Option<Respawn> {
    let policy = &service.restart;
    if !policy.delay.is_zero() || service.health.is_some() || service.failover.is_some() {
        return None;
    }
    let unless_codes = match policy.policy {
        Policy::Never => return None,
        Policy::OnFailure => Some(policy.exit_codes.clone()),
        Policy::Always => None,
    };
    let budget = match policy.limit {
        0 => None,
        limit => {
            Some(limit.saturating_sub(u32::try_from(history.recent.len()).unwrap_or(u32::MAX)))
        }
    };
    (budget != Some(0)).then_some(Respawn {
        unless_codes,
        budget,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn service(restart: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            format!("[services.s]\ncommand = \"true\"\nrestart = {restart}\n"),
        )
        .unwrap();
        let spec = crate::spec::load(&path).unwrap();
        spec.services.into_iter().next().unwrap()
    }

    #[test]
    fn the_respawn_leave_is_no_wider_than_the_policy() {
        let empty = History::default();
        assert_eq!(
            respawn_leave(&service(r#"{ delay = "100ms" }"#), &empty),
            None
        );
        assert_eq!(
            respawn_leave(&service(r#"{ delay = "0s", policy = "never" }"#), &empty),
            None
        );
        assert_eq!(
            respawn_leave(&service(r#"{ delay = "0s", limit = 0 }"#), &empty),
            Some(Respawn {
                unless_codes: None,
                budget: None
            })
        );
        let on_failure =
            service(r#"{ delay = "0s", policy = "on-failure", exit_codes = [0, 2], limit = 3 }"#);
        let mut history = History::default();
        history
            .recent
            .push_back(Instant::now() - Duration::from_secs(1));
        assert_eq!(
            respawn_leave(&on_failure, &history),
            Some(Respawn {
                unless_codes: Some(vec![0, 2]),
                budget: Some(2)
            })
        );
        history.recent.extend([Instant::now(), Instant::now()]);
        assert_eq!(respawn_leave(&on_failure, &history), None, "limit reached");
    }
}
