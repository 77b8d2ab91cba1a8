//! Failover (`mode = "active-standby"`): exactly one replica of the service
//! is active, the others are warm standbys (docs/spec-file.md §9).
//!
//! A replica's role is given when it is spawned and is in its environment
//! (`SUPERVISE_ROLE`): one spawned while its service has no other live
//! replica (the first start, or all of them gone) is spawned active, with no
//! promote hook or signal: nothing takes over. Any other is spawned a
//! standby. From then on roles are state of the event loop, planned like
//! everything else (see `plan`): whenever a failover service has no active
//! replica, the first standby fit for it (lowest index) is promoted, in the
//! same pass that noticed the loss, before anything is respawned. Fit means running
//! and healthy, for at least [`SETTLE`], and, with `promote_signal`,
//! catching (or ignoring) that signal: a promotion never kills. An active
//! that stops, exits or turns unhealthy loses its role first, so there is
//! never a moment with two actives; a replacement comes back as a standby.
//!
//! Whoever is told it is active (spawned active, or promoted) is in the
//! checkpoint before it is told, so a supervisor resumed after a crash
//! adopts it as the active and never promotes a second one.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Supervisor;
use super::plan::RECHECK;
use super::replica::{Phase, ReplicaId, Role};
use crate::procfs;
use crate::spec::{self, Promote};

/// A promote hook still running after this is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a standby's command must have run before it is promoted: a
/// process in its first moments has not yet set up what a promotion asks of
/// it (its signal handler, its connections). Programs get that far in
/// milliseconds; a second is well past it, and small beside the time a
/// failover takes anyway. After a resume it counts from the adoption.
pub(super) const SETTLE: Duration = Duration::from_secs(1);

impl Supervisor {
    /// The command of a failover replica runs: it keeps the role it was
    /// spawned with (an adopted one is a standby unless the checkpoint says
    /// otherwise) and may be promoted once it has run for [`SETTLE`].
    pub(super) fn role_on_running(&mut self, id: &ReplicaId) {
        let failover = self
            .spec
            .service(&id.service)
            .is_some_and(|s| s.failover.is_some());
        let Some(run) = self.replica_mut(id).run_mut() else {
            return;
        };
        run.role = failover.then(|| run.role.unwrap_or(Role::Standby));
        run.promotable_from = failover.then(|| Instant::now() + SETTLE);
    }

    /// A settled standby that the promote signal would kill is not promoted
    /// (yet): it is said once, and it is looked at again shortly.
    pub(super) fn pass_over(&mut self, id: &ReplicaId, signal: Signal, now: Instant) {
        let Some(run) = self.replica_mut(id).run_mut() else {
            return;
        };
        run.promotable_from = Some(now + RECHECK);
        if !std::mem::replace(&mut run.passed_over, true) {
            self.display.event(&format!(
                "not promoting {id}: it does not catch {} (yet), which would kill it",
                signal.as_str()
            ));
        }
    }

    /// Takes the active role away from a replica that can no longer hold it.
    /// In cluster scope its shim demotes it now (unless it is being
    /// stopped: the stop is its demotion, with its own stop timeout), and
    /// the key is given up (if this supervisor holds it) for another node.
    pub(super) fn demote(&mut self, id: &ReplicaId) {
        let Some(run) = self.replicas.get_mut(id).and_then(|r| r.run_mut()) else {
            return;
        };
        if run.role != Some(Role::Active) {
            return;
        }
        run.role = Some(Role::Standby);
        let cluster = self
            .spec
            .service(&id.service)
            .and_then(|s| s.failover.as_ref())
            .is_some_and(|f| f.is_cluster());
        if !cluster {
            return;
        }
        let token = self.cluster.as_ref().and_then(|c| c.token(&id.service));
        if !matches!(self.replicas[id].phase, Phase::Stopping { .. }) {
            self.fence_now(id, token);
        }
        if token.is_some() {
            self.resign(&id.service, &format!("{id} is no longer active"));
        } else {
            let detail = format!("{id} fenced: this supervisor does not hold the election key");
            self.emit("fenced", Some(id), None, detail);
        }
    }

    pub(super) fn promote(&mut self, id: &ReplicaId) {
        let Some(pid) = self.replicas[id].phase.pid() else {
            return;
        };
        if let Some(run) = self.replica_mut(id).run_mut() {
            run.role = Some(Role::Active);
        }
        self.save_checkpoint();
        // Cluster scope: the shim holds the deadline before the replica is told.
        let token = self.arm_fence(id);
        let service = self
            .spec
            .service(&id.service)
            .expect("failover services are in the spec");
        let hook = match service.failover.as_ref().and_then(|f| f.promote.clone()) {
            Some(Promote::Signal(signal)) => {
                // The replica is running: its pid is its own.
                let _ = kill(Pid::from_raw(pid as i32), signal);
                format!(" (sent {})", signal.as_str())
            }
            Some(Promote::Command(argv)) => {
                let vars = spec::Vars {
                    service: &service.name,
                    replica: id.index,
                    port: service.port_of(id.index),
                    pid: Some(pid),
                    token,
                };
                let argv: Vec<String> = argv.iter().map(|a| spec::expand(a, &vars)).collect();
                self.run_hook(id, argv, token)
            }
            None => String::new(),
        };
        let term = token.map(|t| format!(" (token {t})")).unwrap_or_default();
        let detail = format!("promoted {id} to active (pid {pid}){term}{hook}");
        self.emit("promoted", Some(id), Some(pid), detail);
    }

    /// Starts the promote hook without waiting for it: a slow hook must not
    /// delay supervision. Its failure is reported when it ends.
    fn run_hook(&mut self, id: &ReplicaId, argv: Vec<String>, token: Option<u64>) -> String {
        let Some((program, args)) = argv.split_first() else {
            return String::new();
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(token) = token {
            cmd.env("SUPERVISE_FENCING_TOKEN", token.to_string());
        }
        match self.reaper.spawn(&mut cmd) {
            Ok((child, exited)) => {
                let pidfd = procfs::pidfd_open(child.id());
                let what = format!("promote hook of {id} ({program})");
                tokio::spawn(async move {
                    match tokio::time::timeout(HOOK_TIMEOUT, exited).await {
                        Ok(Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) => {}
                        Ok(status) => crate::say!("supervise: {what} failed: {status:?}"),
                        Err(_) => {
                            if let Ok(fd) = &pidfd {
                                let _ = procfs::pidfd_signal(fd, nix::sys::signal::Signal::SIGKILL);
                            }
                            crate::say!(
                                "supervise: {what} killed after {}s",
                                HOOK_TIMEOUT.as_secs()
                            );
                        }
                    }
                });
                format!(" (ran {program})")
            }
            Err(e) => format!(" (promote hook {program} could not run: {e})"),
        }
    }
}
