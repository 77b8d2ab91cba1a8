//! Health: probes, readiness and the `unhealthy` verdict (docs/spec-file.md
//! §7; states: docs/commands.md §3).
//!
//! Each running incarnation of a replica with `health` gets one probe task
//! (exec, http, tcp) that only does I/O: it runs the probe every `interval`,
//! bounded by `timeout`, and reports the result to the loop with the
//! incarnation it is about; stale results are dropped. `notify` services
//! report themselves over the notify socket (see `notify.rs`), `log` ones
//! through their shim (a matching output line). The loop turns results into
//! state: `starting` until the first success, `running` while healthy,
//! `unhealthy` after `retries` failures in a row. A replica that has never
//! passed a check is not judged within `start_period` of its spawn (default
//! 60s, so a slow starter is not killed before it could be healthy); after
//! its first success failures count at once, as in Docker. With
//! `action = "restart"` an unhealthy replica is stopped and its restart
//! policy decides what follows, backoff included.

use std::net::ToSocketAddrs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

use super::replica::{AfterStop, Judged, Phase, ProbeTask, ReplicaId, Verdict};
use super::{Message, Supervisor};
use crate::procfs;
use crate::reaper::Reaper;
use crate::spec::{self, HealthAction, Probe, Service};

/// One probe's verdict on one incarnation.
pub struct ProbeResult {
    pub id: ReplicaId,
    pub generation: u64,
    pub ok: bool,
    /// Why it failed, for the event line.
    pub detail: String,
    pub duration: Duration,
}

/// A probe with its templates expanded for one replica.
enum Target {
    Exec {
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: std::path::PathBuf,
    },
    /// The client is made once per incarnation and reused by every check.
    Http(String, reqwest::Client),
    Tcp(String),
}

impl Supervisor {
    /// Starts watching the health of `id`'s new incarnation (its command runs).
    pub(super) fn start_health(&mut self, id: &ReplicaId) {
        let Some(service) = self.spec.service(&id.service) else {
            return;
        };
        let Some(health) = service.health.clone() else {
            return;
        };
        let target = match &health.probe {
            Probe::Notify => {
                // READY=1 is due within the start period (systemd's
                // TimeoutStartSec); a watchdog's first deadline comes after it.
                if let Some(run) = self.replica_mut(id).run_mut() {
                    run.watchdog_until = Some(
                        Instant::now() + health.start_period + health.watchdog.unwrap_or_default(),
                    );
                }
                return;
            }
            Probe::Log(_) => return,
            probe => target_for(probe, service, &self.spec.dir, id.index, health.timeout),
        };
        let Some(target) = target else { return };
        let generation = self.replicas[id].generation;
        let messages = self.reports.clone();
        let reaper = self.reaper.clone();
        let id_for_task = id.clone();
        let task = tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let (ok, detail) = match run(&target, &reaper, health.timeout).await {
                    Ok(()) => (true, String::new()),
                    Err(why) => (false, why),
                };
                let result = ProbeResult {
                    id: id_for_task.clone(),
                    generation,
                    ok,
                    detail,
                    duration: started.elapsed(),
                };
                if messages.send(Message::Probe(result)).is_err() {
                    return;
                }
                tokio::time::sleep(health.interval).await;
            }
        });
        let probe = ProbeTask(task.abort_handle());
        if let Some(run) = self.replica_mut(id).run_mut() {
            run.probe = Some(probe);
        }
    }

    /// The command of `id` runs: without `health` it counts as healthy at
    /// once; with it, it is `starting` until its probe says otherwise.
    pub(super) fn on_running(&mut self, id: &ReplicaId) {
        let has_health = self
            .spec
            .service(&id.service)
            .is_some_and(|s| s.health.is_some());
        self.role_on_running(id);
        if has_health {
            self.start_health(id);
        } else if let Some(run) = self.replica_mut(id).run_mut() {
            run.health = Verdict::Healthy;
        }
    }

    /// A datagram on the notify socket: it counts for the replica whose
    /// process group the sender is in, if that replica is a notify service.
    pub(super) fn on_notify(&mut self, sender: u32, text: &str) {
        let group = procfs::process_group(sender);
        let found = self
            .replicas
            .values()
            .find(|r| matches!(r.phase, Phase::Running { pid, .. } if Some(pid) == group));
        let Some(id) = found.map(|r| r.id.clone()) else {
            tracing::info!(
                sender,
                "notify: ignored a message from a process of no replica"
            );
            return;
        };
        let Some(health) = self
            .spec
            .service(&id.service)
            .and_then(|s| s.health.clone())
        else {
            return;
        };
        if health.probe != Probe::Notify {
            return;
        }
        for line in text.lines() {
            let Some(run) = self.replica_mut(&id).run_mut() else {
                return;
            };
            match line.split_once('=') {
                Some(("READY", "1")) => {
                    if health.watchdog.is_none() {
                        run.watchdog_until = None;
                    }
                    self.mark_healthy(&id);
                }
                Some(("WATCHDOG", "1")) => {
                    if let Some(w) = health.watchdog {
                        let next = Instant::now() + w;
                        // Before READY=1 the start period's deadline stands
                        // (an earlier one would pass unjudged, and none follow).
                        run.watchdog_until = match run.watchdog_until {
                            Some(start) if run.health == Verdict::Unknown => Some(start.max(next)),
                            _ => Some(next),
                        };
                    }
                }
                Some(("WATCHDOG", "trigger")) => {
                    run.probe_failures = health.retries.saturating_sub(1);
                    self.probe_failed(&id, "it sent WATCHDOG=trigger");
                }
                Some(("STATUS", status)) => {
                    tracing::info!(replica = %id, status, "notify status");
                }
                _ => {}
            }
        }
    }

    pub(super) fn on_probe(&mut self, result: ProbeResult) {
        if let Some(metrics) = &self.metrics {
            metrics.probe_duration(&result.id.service, result.duration.as_secs_f64());
        }
        let Some(replica) = self.replicas.get(&result.id) else {
            return;
        };
        if replica.generation != result.generation
            || !matches!(replica.phase, Phase::Running { .. })
        {
            return;
        }
        if result.ok {
            self.mark_healthy(&result.id);
        } else {
            self.probe_failed(&result.id, &result.detail);
        }
    }

    pub(super) fn mark_healthy(&mut self, id: &ReplicaId) {
        let replica = self.replica_mut(id);
        let pid = replica.phase.pid();
        let Some(run) = replica.run_mut() else {
            return;
        };
        run.probe_failures = 0;
        if run.health != Verdict::Healthy {
            run.health = Verdict::Healthy;
            self.emit("healthy", Some(id), pid, format!("{id} is healthy"));
        }
    }

    /// One failed check: counts unless within `start_period`; `retries` in
    /// a row make the replica unhealthy.
    pub(super) fn probe_failed(&mut self, id: &ReplicaId, why: &str) {
        let Some(health) = self
            .spec
            .service(&id.service)
            .and_then(|s| s.health.clone())
        else {
            return;
        };
        let Phase::Running {
            since, pid, run, ..
        } = &mut self.replica_mut(id).phase
        else {
            return;
        };
        // As with Docker: the start period shields a replica until its first
        // success, not after.
        if run.health == Verdict::Unknown && since.elapsed() < health.start_period {
            return;
        }
        run.probe_failures += 1;
        if run.probe_failures < health.retries || run.health == Verdict::Unhealthy {
            return;
        }
        let never_healthy = run.health == Verdict::Unknown;
        run.health = Verdict::Unhealthy;
        let pid = Some(*pid);
        let failures = run.probe_failures;
        self.demote(id);
        let then = match health.action {
            HealthAction::Restart => "; restarting it",
            HealthAction::None => "",
        };
        let detail = if never_healthy {
            format!(
                "{id} did not become healthy within {} (last check: {why}){then}",
                humantime::format_duration(health.start_period)
            )
        } else {
            format!("{id} is unhealthy after {failures} failed checks ({why}){then}")
        };
        self.emit("unhealthy", Some(id), pid, detail);
        if health.action == HealthAction::Restart {
            self.stop_replica(id, AfterStop::Judge(Judged::Unhealthy));
        }
    }

    /// notify services: a replica not ready by the end of its start period,
    /// or silent past its watchdog deadline, is unhealthy.
    pub(super) fn watchdog_overdue(&mut self, id: &ReplicaId) {
        // A missed deadline is a verdict on its own, like `retries` failures.
        let (retries, watchdog) = self
            .spec
            .service(&id.service)
            .and_then(|s| s.health.as_ref())
            .map_or((1, None), |h| (h.retries, h.watchdog));
        if let Some(run) = self.replica_mut(id).run_mut() {
            run.watchdog_until = None;
            run.probe_failures = retries.saturating_sub(1);
        }
        let why = if watchdog.is_some() {
            "watchdog expired: no WATCHDOG=1 in time"
        } else {
            "no READY=1 received"
        };
        self.probe_failed(id, why);
    }
}

/// Expands a probe's templates for replica `index`.
fn target_for(
    probe: &Probe,
    service: &Service,
    dir: &Path,
    index: u32,
    timeout: Duration,
) -> Option<Target> {
    let plan = service.replica(dir, index);
    let vars = spec::Vars {
        service: &service.name,
        replica: index,
        port: plan.port,
        pid: None,
        token: None,
    };
    Some(match probe {
        Probe::Exec(argv) => Target::Exec {
            argv: argv.iter().map(|a| spec::expand(a, &vars)).collect(),
            env: plan.env,
            cwd: plan.cwd,
        },
        Probe::Http(url) => {
            Target::Http(spec::expand(url, &vars), crate::http::client(timeout).ok()?)
        }
        Probe::Tcp(addr) => Target::Tcp(spec::expand(addr, &vars)),
        Probe::Notify | Probe::Log(_) => return None,
    })
}

fn too_slow(timeout: Duration) -> String {
    format!("no answer within {}", humantime::format_duration(timeout))
}

/// Runs one check, bounded by `timeout`; Err says why it failed.
async fn run(target: &Target, reaper: &Reaper, timeout: Duration) -> Result<(), String> {
    match target {
        Target::Tcp(addr) => {
            let addrs: Vec<_> = addr
                .to_socket_addrs()
                .map_err(|e| format!("cannot resolve {addr}: {e}"))?
                .collect();
            let first = addrs
                .first()
                .ok_or_else(|| format!("{addr} resolves to nothing"))?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(first)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("connect {addr}: {e}")),
                Err(_) => Err(too_slow(timeout)),
            }
        }
        Target::Http(url, client) => {
            let response = client
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = response.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("GET {url}: {status}"))
            }
        }
        Target::Exec { argv, env, cwd } => run_exec(argv, env, cwd, reaper, timeout).await,
    }
}

/// An exec probe: exit 0 is healthy; killed at the timeout.
async fn run_exec(
    argv: &[String],
    env: &[(String, String)],
    cwd: &Path,
    reaper: &Reaper,
    timeout: Duration,
) -> Result<(), String> {
    let (program, args) = argv.split_first().ok_or("empty probe command")?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (child, exited) = reaper
        .spawn(&mut cmd)
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    // Our unreaped child: its pid cannot have been reused yet.
    let pidfd = procfs::pidfd_open(child.id());
    match tokio::time::timeout(timeout, exited).await {
        Ok(Ok(WaitStatus::Exited(_, 0))) => Ok(()),
        Ok(Ok(WaitStatus::Exited(_, code))) => Err(format!("{program} exited with code {code}")),
        Ok(Ok(other)) => Err(format!("{program} ended: {other:?}")),
        Ok(Err(_)) => Err(format!("{program}: exit status lost")),
        Err(_) => {
            if let Ok(fd) = &pidfd {
                let _ = procfs::pidfd_signal(fd, Signal::SIGKILL);
            }
            Err(format!("{program}: {}", too_slow(timeout)))
        }
    }
}
