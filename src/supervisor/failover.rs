//! Failover (`mode = "active-standby"`): exactly one replica of the service
//! is active, the others are warm standbys (docs/spec-file.md §9).
//!
//! Roles are state of the event loop, reconciled like everything else:
//! whenever a failover service has no active replica, the healthiest standby
//! (running and healthy, lowest index first) is promoted at once — in the
//! same pass that noticed the loss, before anything is respawned. An active
//! that stops, exits or turns unhealthy loses its role first, so there is
//! never a moment with two actives; a replacement always comes back as a
//! standby (`SUPERVISE_ROLE=standby`).

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::kill;
use nix::unistd::Pid;

use super::Supervisor;
use super::replica::{Health, Phase, ReplicaId, Role};
use crate::procfs;
use crate::spec::{self, Promote};

/// A promote hook still running after this is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Gives every failover service without an active replica one, if a
    /// standby is fit for it.
    pub(super) fn reconcile_roles(&mut self) {
        let services: Vec<String> = self
            .spec
            .services
            .iter()
            .filter(|s| s.failover.is_some())
            .map(|s| s.name.clone())
            .collect();
        for service in services {
            let actives: Vec<ReplicaId> = self
                .replicas_of(&service)
                .filter(|r| r.role == Some(Role::Active))
                .map(|r| r.id.clone())
                .collect();
            // Only one may be active: should two ever be (say, both adopted
            // from a confused checkpoint), the lowest index keeps the role.
            for extra in actives.iter().skip(1) {
                self.demote(extra);
            }
            if !actives.is_empty() {
                continue;
            }
            let candidate = self
                .replicas_of(&service)
                .filter(|r| matches!(r.phase, Phase::Running { .. }) && r.health == Health::Healthy)
                .map(|r| r.id.clone())
                .next();
            if let Some(id) = candidate {
                self.promote(&id);
            }
        }
    }

    /// Takes the active role away from a replica that can no longer hold it.
    pub(super) fn demote(&mut self, id: &ReplicaId) {
        if let Some(replica) = self.replicas.get_mut(id)
            && replica.role == Some(Role::Active)
        {
            replica.role = Some(Role::Standby);
        }
    }

    fn promote(&mut self, id: &ReplicaId) {
        let Some(pid) = self.replicas[id].phase.pid() else {
            return;
        };
        self.replica_mut(id).role = Some(Role::Active);
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
                };
                let argv: Vec<String> = argv.iter().map(|a| spec::expand(a, &vars)).collect();
                self.run_hook(id, argv)
            }
            None => String::new(),
        };
        let detail = format!("promoted {id} to active (pid {pid}){hook}");
        self.emit("promoted", Some(id), Some(pid), detail);
    }

    /// Starts the promote hook without waiting for it: a slow hook must not
    /// delay supervision. Its failure is reported when it ends.
    fn run_hook(&mut self, id: &ReplicaId, argv: Vec<String>) -> String {
        let Some((program, args)) = argv.split_first() else {
            return String::new();
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&self.spec.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        match self.reaper.spawn(&mut cmd) {
            Ok((child, exited)) => {
                let pidfd = procfs::pidfd_open(child.id());
                let what = format!("promote hook of {id} ({program})");
                tokio::spawn(async move {
                    match tokio::time::timeout(HOOK_TIMEOUT, exited).await {
                        Ok(Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) => {}
                        Ok(status) => eprintln!("supervise: {what} failed: {status:?}"),
                        Err(_) => {
                            if let Ok(fd) = &pidfd {
                                let _ = procfs::pidfd_signal(fd, nix::sys::signal::Signal::SIGKILL);
                            }
                            eprintln!("supervise: {what} killed after {}s", HOOK_TIMEOUT.as_secs());
                        }
                    }
                });
                format!(" (ran {program})")
            }
            Err(e) => format!(" (promote hook {program} could not run: {e})"),
        }
    }
}
