//! Requests from the control socket, applied by the event loop: each one
//! changes desired state (or reads state) and is answered once applied. The
//! loop's next `reconcile` turns the change into spawns and stops.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::control::protocol::{
    LastExit, Outcome as Reply_, ReloadPlan, Render, ReplicaStatus, Reply, Request, ServiceStatus,
    StatusReport, SupervisorInfo,
};
use crate::control::server::{Answer, Call};
use crate::exit;
use crate::spec::{self, Spec};

use super::Supervisor;
use super::desired::Scaled;
use super::journal::rfc3339;
use super::replica::{AfterStop, Phase, Replica, ReplicaId, Verdict};
use super::restart::Ending;

impl Supervisor {
    pub(super) fn on_call(&mut self, call: Call) {
        // A supervisor resumed from a stop past its fencing deadline must
        // not answer as the leader it no longer is.
        self.check_lease();
        let answer = match call.request {
            Request::Status { services, render } => self.status_answer(&services, render),
            Request::Events { follow } => Answer::Events {
                history: self.journal.history(),
                live: follow.then(|| self.journal.subscribe()),
            },
            Request::Start { targets } => Answer::Reply(self.on_targets(&targets, Self::start)),
            Request::Stop { targets } => Answer::Reply(self.on_targets(&targets, Self::stop)),
            Request::Restart { targets } => Answer::Reply(self.on_targets(&targets, Self::restart)),
            Request::Scale { counts } => Answer::Reply(self.scale(counts.into_iter().collect())),
            Request::Reload { spec, dry_run } => Answer::Reply(self.reload(spec, dry_run)),
            Request::Down { timeout_ms } => {
                let timeout = timeout_ms.map(Duration::from_millis);
                self.begin_shutdown("asked to go down", exit::OK, timeout);
                let (written, sent) = tokio::sync::oneshot::channel();
                self.farewells.push(sent);
                Answer::HoldUntilExit {
                    reply: Reply::ok(Reply_::Accepted),
                    written,
                }
            }
        };
        // A client that went away does not need its answer.
        let _ = call.answer.send(answer);
    }

    /// The replicas named by `targets` (`svc` or `svc.N`; none = all), or
    /// an error naming what does not exist.
    fn resolve(&self, targets: &[String]) -> Result<Vec<ReplicaId>, String> {
        if targets.is_empty() {
            return Ok(self.replicas.keys().cloned().collect());
        }
        let mut found = BTreeSet::new();
        for target in targets {
            let (service, index) = match target.rsplit_once('.') {
                Some((s, i)) => match i.parse::<u32>() {
                    Ok(i) => (s, Some(i)),
                    Err(_) => (target.as_str(), None),
                },
                None => (target.as_str(), None),
            };
            if self.spec.service(service).is_none() {
                return Err(format!("no service named {service:?}"));
            }
            let before = found.len();
            found.extend(
                self.replicas_of(service)
                    .filter(|r| index.is_none_or(|i| r.id.index == i))
                    .map(|r| r.id.clone()),
            );
            if index.is_some() && found.len() == before {
                return Err(format!("no replica {target} (scale the service up first)"));
            }
        }
        Ok(found.into_iter().collect())
    }

    /// Applies `change` to the replicas `targets` name, answering with them
    /// (and with the warning `change` returns, if any).
    fn on_targets(
        &mut self,
        targets: &[String],
        change: fn(&mut Self, &[ReplicaId]) -> Option<String>,
    ) -> Reply {
        match self.resolve(targets) {
            Ok(ids) => {
                let warning = change(self, &ids);
                Self::affected(&ids).warned(warning)
            }
            Err(e) => Reply::error(exit::USAGE, e),
        }
    }

    fn affected(ids: &[ReplicaId]) -> Reply {
        Reply::ok(Reply_::Affected {
            replicas: ids.iter().map(ToString::to_string).collect(),
        })
    }

    /// Marks (or unmarks) `ids` as stopped by request, recorded before the
    /// answer (see `record_desired`).
    fn mark_stopped(&mut self, ids: &[ReplicaId], stopped: bool) -> Option<String> {
        for id in ids {
            if let Some(r) = self.replicas.get_mut(id) {
                r.stop_requested = stopped;
            }
            if stopped {
                self.desired.stopped.insert(id.to_string());
            } else {
                self.desired.stopped.remove(&id.to_string());
            }
        }
        self.record_desired()
    }

    fn start(&mut self, ids: &[ReplicaId]) -> Option<String> {
        let warning = self.mark_stopped(ids, false);
        for id in ids {
            if matches!(
                self.replicas[id].phase,
                Phase::Stopped | Phase::Exited | Phase::Failed
            ) {
                self.after_stop(id, AfterStop::Start);
            }
        }
        warning
    }

    /// The stop itself is done by reconcile, like any other difference from
    /// desired state.
    fn stop(&mut self, ids: &[ReplicaId]) -> Option<String> {
        self.mark_stopped(ids, true)
    }

    fn restart(&mut self, ids: &[ReplicaId]) -> Option<String> {
        let warning = self.mark_stopped(ids, false);
        for id in ids {
            self.stop_replica(id, AfterStop::Start);
        }
        warning
    }

    fn scale(&mut self, counts: Vec<(String, u32)>) -> Reply {
        for (name, _) in &counts {
            if self.spec.service(name).is_none() {
                return Reply::error(exit::USAGE, format!("no service named {name:?}"));
            }
        }
        let mut changed = Vec::new();
        for (name, replicas) in counts {
            let service = self.spec.service(&name).expect("checked above");
            let before = self.desired.replicas(service);
            let spec_replicas = service.replicas;
            self.desired.scaled.insert(
                name.clone(),
                Scaled {
                    replicas,
                    spec_replicas,
                },
            );
            if before != replicas {
                let detail = format!("scaled {name} from {before} to {replicas} replicas");
                self.emit_for_service("scaled", &name, detail);
            }
            changed.extend(
                (replicas.min(before)..replicas.max(before)).map(|index| ReplicaId {
                    service: name.clone(),
                    index,
                }),
            );
        }
        // Stop marks of replicas scaled away do not come back with a later scale-up.
        self.desired.prune(&self.spec.services);
        let warning = self.record_desired();
        Self::affected(&changed).warned(warning)
    }

    pub(super) fn reload(&mut self, path: Option<PathBuf>, dry_run: bool) -> Reply {
        let path = path.unwrap_or_else(|| self.spec.path.clone());
        let mut new = match spec::load(&path) {
            Ok(new) => new,
            Err(diagnostics) => {
                return Reply::error(
                    exit::FAILED,
                    format!("reload rejected, the running state is untouched:\n{diagnostics}"),
                );
            }
        };
        // The state dir holds our lock and socket: it cannot move under us.
        new.supervisor.state_dir = self.spec.supervisor.state_dir.clone();
        // Nor can the cluster this supervisor campaigns in (docs/cluster.md §5).
        let joined = self.cluster.as_ref().map(|c| c.settings.clone());
        let cluster_kept = joined.is_some() && joined != new.supervisor.cluster;
        if let Some(settings) = joined {
            new.supervisor.cluster = Some(settings);
        }
        let plan = reload_plan(&self.spec, &new, !dry_run);
        if dry_run {
            return Reply::ok(Reply_::Reload(plan));
        }
        if super::wants_notify(&new)
            && let Err(e) = self.listen_for_notify()
        {
            return Reply::error(
                exit::FAILED,
                format!(
                    "reload rejected, the running state is untouched: cannot open the notify socket: {e}"
                ),
            );
        }
        for name in &plan.changed {
            // The new definition's replica count wins over an earlier `scale`.
            self.desired.scaled.remove(name);
            let ids: Vec<ReplicaId> = self.replicas_of(name).map(|r| r.id.clone()).collect();
            for id in ids {
                self.stop_replica(&id, AfterStop::Start);
            }
        }
        self.spec = new;
        if cluster_kept {
            self.display
                .event("[supervisor.cluster] changed: it takes effect at the next `up`");
        }
        if let Err(e) = self.join_cluster() {
            self.display.event(&e);
        }
        self.desired.prune(&self.spec.services);
        let warning = self.record_desired();
        let detail = format!(
            "reloaded {}: {} added, {} removed, {} changed, {} unchanged",
            path.display(),
            plan.added.len(),
            plan.removed.len(),
            plan.changed.len(),
            plan.unchanged.len()
        );
        self.emit("reloaded", None, None, detail);
        Reply::ok(Reply_::Reload(plan)).warned(warning)
    }

    /// The report, or with `render` the report as `status` prints it.
    /// Only the services asked for are sampled.
    fn status_answer(&mut self, services: &[String], render: Option<Render>) -> Answer {
        // Only counts on checkpoint are shown (while it cannot be written,
        // the last it holds): a count once shown never goes backwards.
        self.checkpoint_restarts();
        let mut report = self.status_report(|r| r.checkpointed_restarts);
        if let Err(failure) = crate::commands::status::keep_only(&mut report, services) {
            return Answer::Reply(Reply::error(
                failure.code,
                failure.message.unwrap_or_default(),
            ));
        }
        self.add_usage(&mut report);
        let Some(render) = render else {
            return Answer::Reply(Reply::ok(Reply_::Status(report)));
        };
        Answer::Text(crate::commands::status::render(
            &report,
            render,
            SystemTime::now(),
        ))
    }

    /// Fills in what each replica with processes uses, sampled now: only a
    /// request pays for it (docs/commands.md §8).
    fn add_usage(&mut self, report: &mut StatusReport) {
        let now = Instant::now();
        for service in &mut report.services {
            for shown in &mut service.replicas {
                let id = ReplicaId {
                    service: service.name.clone(),
                    index: shown.index,
                };
                let Some(replica) = self.replicas.get(&id) else {
                    continue;
                };
                let Some(source) = self.usage_source(replica) else {
                    continue;
                };
                let usage = self.sampler.sample(&id, &source);
                shown.cpu_seconds = usage.cpu.map(|cpu| cpu.as_secs_f64());
                shown.memory_bytes = usage.memory;
                shown.processes = usage.processes;
                let started = replica
                    .phase
                    .run()
                    .and_then(|run| run.started_at)
                    .and_then(|at| SystemTime::now().duration_since(at).ok())
                    .and_then(|age| now.checked_sub(age))
                    .unwrap_or(now);
                shown.cpu_percent = usage
                    .cpu
                    .and_then(|cpu| self.cpu_percent.percent(&id, cpu, now, started));
            }
        }
        let replicas = &self.replicas;
        self.cpu_percent.retain(|id| replicas.contains_key(id));
        self.sampler
            .retain(|id| replicas.get(id).is_some_and(|r| r.phase.shim().is_some()));
    }

    /// What `status` reports, with each replica's restart count as
    /// `restarts` reads it.
    pub(super) fn status_report(&self, restarts: fn(&Replica) -> u32) -> StatusReport {
        let services = self
            .spec
            .services
            .iter()
            .map(|service| {
                let replicas: Vec<&Replica> = self.replicas_of(&service.name).collect();
                ServiceStatus {
                    name: service.name.clone(),
                    state: service_state(
                        &replicas.iter().map(|r| shown_state(r)).collect::<Vec<_>>(),
                    )
                    .into(),
                    desired: self.desired.replicas(service),
                    replicas: replicas
                        .iter()
                        .map(|r| replica_status(r, restarts))
                        .collect(),
                    cluster: self.cluster_status(service),
                }
            })
            .collect();
        StatusReport {
            schema: 1,
            supervisor: SupervisorInfo {
                pid: std::process::id(),
                started_at: rfc3339(self.started_at),
                spec: self.spec.path.display().to_string(),
                state_dir: self.dir.root().display().to_string(),
            },
            services,
            cluster: self.cluster_node(),
        }
    }
}

fn reload_plan(old: &Spec, new: &Spec, applied: bool) -> ReloadPlan {
    let mut plan = ReloadPlan {
        added: Vec::new(),
        removed: Vec::new(),
        changed: Vec::new(),
        unchanged: Vec::new(),
        applied,
    };
    for service in &new.services {
        match old.service(&service.name) {
            None => plan.added.push(service.name.clone()),
            Some(before) if before == service => plan.unchanged.push(service.name.clone()),
            Some(_) => plan.changed.push(service.name.clone()),
        }
    }
    plan.removed = old
        .services
        .iter()
        .filter(|s| new.service(&s.name).is_none())
        .map(|s| s.name.clone())
        .collect();
    plan
}

/// The service states of docs/commands.md §3.2, from its replicas' shown states.
fn service_state(states: &[&str]) -> &'static str {
    let all = |f: fn(&str) -> bool| states.iter().all(|s| f(s));
    let any = |f: fn(&str) -> bool| states.iter().any(|s| f(s));
    if any(|s| s == "failed") {
        "failed"
    } else if all(|s| s == "stopped") {
        "stopped"
    } else if all(|s| s == "exited") {
        "completed"
    } else if all(|s| s == "running" || s == "exited") {
        "running"
    } else if any(|s| s == "running") {
        "degraded"
    } else {
        "starting"
    }
}

/// The state `status` shows: a running command is `starting` until its
/// health probe first succeeds, and `unhealthy` after it fails for good.
fn shown_state(r: &Replica) -> &'static str {
    match (&r.phase, r.health()) {
        (Phase::Running { .. }, Verdict::Unknown) => "starting",
        (Phase::Running { .. }, Verdict::Unhealthy) => "unhealthy",
        (phase, _) => phase.name(),
    }
}

fn replica_status(r: &Replica, restarts: fn(&Replica) -> u32) -> ReplicaStatus {
    ReplicaStatus {
        index: r.id.index,
        pid: r.phase.pid(),
        state: shown_state(r).into(),
        health: match r.health() {
            Verdict::Healthy => "healthy",
            Verdict::Unhealthy => "unhealthy",
            Verdict::Unknown => "unknown",
        }
        .into(),
        role: r.role().map(|role| role.as_str().into()),
        restarts: restarts(r),
        started_at: r.phase.run().and_then(|run| run.started_at).map(rfc3339),
        last_exit: r.last_exit.as_ref().map(|(outcome, at)| LastExit {
            code: match outcome {
                Ending::Code(c) => Some(*c),
                Ending::SpawnFailed => Some(127),
                _ => None,
            },
            signal: match outcome {
                Ending::Oom => Some("SIGKILL".to_string()),
                Ending::Signal(s) => Some(
                    nix::sys::signal::Signal::try_from(*s)
                        .map_or_else(|_| format!("signal {s}"), |sig| sig.as_str().to_string()),
                ),
                _ => None,
            },
            at: rfc3339(*at),
            reason: outcome.reason().map(str::to_string),
        }),
        restart_at: match r.phase {
            Phase::Backoff { until } => Some(rfc3339(
                SystemTime::now() + until.saturating_duration_since(Instant::now()),
            )),
            _ => None,
        },
        cpu_seconds: None,
        cpu_percent: None,
        memory_bytes: None,
        processes: None,
    }
}
