//! The Prometheus endpoint (`[supervisor] metrics`): `GET /metrics` in the
//! OpenMetrics text format, built with `prometheus-client` and served by
//! hyper.
//!
//! The event loop feeds it: [`Metrics::update`] after every event with a
//! fresh status report (gauges and restart counters follow it),
//! [`Metrics::on_event`] for what a report cannot show (promotions), and
//! [`Metrics::probe_duration`] for each health probe. Scrapes only read. The
//! server runs in a task of the loop's runtime; with no scrape it costs
//! nothing (no timer, no polling).
//!
//! Series (docs/spec-file.md §11):
//!
//! - `supervise_replicas_desired{service}`, `supervise_replicas_running{service}`
//! - `supervise_replica_up{service,replica}`, `supervise_replica_healthy{service,replica}`
//! - `supervise_restarts_total{service,replica}`
//! - `supervise_failovers_total{service}`
//! - `supervise_probe_duration_seconds{service}` (histogram)
//! - `supervise_uptime_seconds`, `supervise_start_time_seconds`
//! - `supervise_replica_cpu_seconds_total{service,replica}`,
//!   `supervise_replica_memory_bytes{service,replica}`: sampled at the
//!   scrape (from the replica's cgroup, else `/proc`), not before
//! - `supervise_replica_oom_kills_total{service,replica}`
//! - cluster scope: `supervise_cluster_leader{service}`,
//!   `supervise_cluster_token{service}`, `supervise_cluster_elections_total{service}`,
//!   `supervise_cluster_fenced_total{service}`, `supervise_cluster_quorum`,
//!   `supervise_cluster_lease_renewals_total`,
//!   `supervise_cluster_lease_renewal_failures_total`,
//!   `supervise_cluster_lease_renewal_seconds`
//!
//! The same listener serves the read-only status page (`GET /`, see
//! status_page.rs) and `GET /status.json`: a report asked of the loop at
//! each request, and the last events it handed over.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::control;
use crate::control::protocol::{EventRecord, Outcome, StatusReport};
use crate::control::server::{Answer, Call};
use crate::status_page;
use crate::usage::Source;

/// What a scrape is answered with: the format `prometheus-client` writes.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Scrapes served at once; more connections are closed at once. A scraper
/// needs one; the cap keeps a misbehaving client from piling up tasks.
const MAX_CONNECTIONS: usize = 16;

/// A connection that has not sent its request headers by then is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Events the status page lists.
const PAGE_EVENTS: usize = 20;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    service: String,
    /// The replica's index (`1` for `api.1`).
    replica: String,
}

impl ReplicaLabels {
    fn new(service: &str, index: u32) -> ReplicaLabels {
        ReplicaLabels {
            service: service.to_string(),
            replica: index.to_string(),
        }
    }
}

type HistogramFamily = Family<ServiceLabels, Histogram, fn() -> Histogram>;

/// Probe durations from 1 ms to 10 s: probes are timed out in seconds, and
/// a local probe answers in well under a millisecond to a few.
fn probe_histogram() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    started: Instant,
    uptime: Gauge<f64, AtomicU64>,
    desired: Family<ServiceLabels, Gauge>,
    running: Family<ServiceLabels, Gauge>,
    up: Family<ReplicaLabels, Gauge>,
    healthy: Family<ReplicaLabels, Gauge>,
    restarts: Family<ReplicaLabels, Counter>,
    failovers: Family<ServiceLabels, Counter>,
    probe_duration: HistogramFamily,
    cpu: Family<ReplicaLabels, Counter<f64, AtomicU64>>,
    memory: Family<ReplicaLabels, Gauge>,
    oom_kills: Family<ReplicaLabels, Counter>,
    cluster: ClusterSeries,
    /// Handles on the series of the last report, so that an update is a
    /// walk over the report with no label allocation for known replicas.
    seen: Mutex<Seen>,
    /// What the status page and /status.json show.
    page: Mutex<Page>,
}

#[derive(Default)]
struct Page {
    /// The last [`PAGE_EVENTS`], oldest first.
    events: VecDeque<EventRecord>,
}

/// Cluster-scope failover (docs/cluster.md §6).
#[derive(Default)]
struct ClusterSeries {
    leader: Family<ServiceLabels, Gauge>,
    token: Family<ServiceLabels, Gauge>,
    elections: Family<ServiceLabels, Counter>,
    fenced: Family<ServiceLabels, Counter>,
    quorum: Gauge,
    renewals: Counter,
    failures: Counter,
    renewal_seconds: Gauge<f64, AtomicU64>,
}

#[derive(Default)]
struct Seen {
    /// The report's lease counts at the last update, to add only the delta.
    renewals: u64,
    failures: u64,
    /// Bumped by each update; a series not marked with the current one is
    /// gone from the report and is removed.
    epoch: u64,
    services: HashMap<String, ServiceSeries>,
}

struct ServiceSeries {
    epoch: u64,
    desired: Gauge,
    running: Gauge,
    /// Created (at 0) once the service shows roles, so a failover service
    /// has the series before its first promotion.
    failovers: Option<Counter>,
    replicas: HashMap<u32, ReplicaSeries>,
}

struct ReplicaSeries {
    epoch: u64,
    up: Gauge,
    healthy: Gauge,
    restarts: Counter,
    /// The report's `restarts` at the last update, to add only the delta.
    last_restarts: u32,
    /// Where its usage is read at a scrape, while it has processes.
    source: Option<Source>,
    cpu: Counter<f64, AtomicU64>,
    /// The CPU reading the counter is at, to add only the delta.
    last_cpu: f64,
    memory: Gauge,
    /// Made at 0 with the replica, so the series exists before an OOM kill.
    _oom_kills: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        let metrics = Metrics {
            registry: Registry::with_prefix("supervise"),
            started: Instant::now(),
            uptime: Gauge::default(),
            desired: Family::default(),
            running: Family::default(),
            up: Family::default(),
            healthy: Family::default(),
            restarts: Family::default(),
            failovers: Family::default(),
            probe_duration: Family::new_with_constructor(probe_histogram as fn() -> Histogram),
            cpu: Family::default(),
            memory: Family::default(),
            oom_kills: Family::default(),
            cluster: ClusterSeries::default(),
            seen: Mutex::new(Seen::default()),
            page: Mutex::new(Page::default()),
        };
        metrics.registered()
    }
}

impl Metrics {
    /// Registers every series; families share their values with the
    /// handles kept in `self`.
    fn registered(mut self) -> Metrics {
        let start_time = Gauge::<f64, AtomicU64>::default();
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        start_time.set(since_epoch.as_secs_f64());
        let r = &mut self.registry;
        r.register(
            "replicas_desired",
            "Replicas the service should have (after scale)",
            self.desired.clone(),
        );
        r.register(
            "replicas_running",
            "Replicas in state running (spawned and healthy)",
            self.running.clone(),
        );
        r.register(
            "replica_up",
            "1 while the replica has a live process",
            self.up.clone(),
        );
        r.register(
            "replica_healthy",
            "1 while the replica's health is healthy",
            self.healthy.clone(),
        );
        r.register("restarts", "Restarts of the replica", self.restarts.clone());
        r.register(
            "failovers",
            "Promotions of a standby to active (the first one included)",
            self.failovers.clone(),
        );
        r.register(
            "probe_duration_seconds",
            "How long health probes took",
            self.probe_duration.clone(),
        );
        let c = &self.cluster;
        r.register(
            "cluster_leader",
            "1 while this supervisor holds the service's election key",
            c.leader.clone(),
        );
        r.register(
            "cluster_token",
            "The fencing token of the service's leader, as last seen",
            c.token.clone(),
        );
        r.register(
            "cluster_elections",
            "Elections this supervisor won",
            c.elections.clone(),
        );
        r.register(
            "cluster_fenced",
            "Actives of this supervisor fenced (lease lost or past its deadline)",
            c.fenced.clone(),
        );
        r.register(
            "cluster_quorum",
            "1 while etcd answers this supervisor",
            c.quorum.clone(),
        );
        r.register(
            "cluster_lease_renewals",
            "Keep-alives that renewed this supervisor's lease",
            c.renewals.clone(),
        );
        r.register(
            "cluster_lease_renewal_failures",
            "Lease grants and keep-alives no etcd member answered",
            c.failures.clone(),
        );
        r.register(
            "cluster_lease_renewal_seconds",
            "Round trip of the last lease renewal",
            c.renewal_seconds.clone(),
        );
        r.register(
            "replica_cpu_seconds",
            "CPU time the replica's processes used, user and system",
            self.cpu.clone(),
        );
        r.register(
            "replica_memory_bytes",
            "Memory the replica uses (its cgroup's memory.current, else summed RSS)",
            self.memory.clone(),
        );
        r.register(
            "replica_oom_kills",
            "Ends of the replica by the kernel's OOM killer",
            self.oom_kills.clone(),
        );
        r.register(
            "uptime_seconds",
            "Seconds since the supervisor started",
            self.uptime.clone(),
        );
        r.register(
            "start_time_seconds",
            "When the supervisor started, in seconds since the Unix epoch",
            start_time,
        );
        self
    }

    /// The current state of every service and replica, and where each
    /// one's usage is read (`source`). Called after every event of the
    /// loop: known replicas cost a map look-up and a few atomic stores
    /// each; only new and vanished ones touch the families.
    pub fn update(&self, report: &StatusReport, source: impl Fn(&str, u32) -> Option<Source>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.epoch += 1;
        let epoch = seen.epoch;
        if let Some(node) = &report.cluster {
            let c = &self.cluster;
            c.quorum.set(i64::from(node.no_quorum_since.is_none()));
            c.renewals
                .inc_by(node.lease_renewals.saturating_sub(seen.renewals));
            c.failures
                .inc_by(node.lease_renewal_failures.saturating_sub(seen.failures));
            (seen.renewals, seen.failures) = (node.lease_renewals, node.lease_renewal_failures);
            if let Some(s) = node.last_renewal_seconds {
                c.renewal_seconds.set(s);
            }
        }
        for svc in &report.services {
            if let Some(status) = &svc.cluster {
                let labels = ServiceLabels {
                    service: svc.name.clone(),
                };
                let leads = status.role == "leader";
                self.cluster
                    .leader
                    .get_or_create(&labels)
                    .set(i64::from(leads));
                let token = status.token.map_or(0, |t| t as i64);
                self.cluster.token.get_or_create(&labels).set(token);
            }
        }
        for svc in &report.services {
            let series = seen
                .services
                .entry(svc.name.clone())
                .or_insert_with(|| self.service_series(&svc.name));
            series.epoch = epoch;
            series.desired.set(i64::from(svc.desired));
            let running = svc.replicas.iter().filter(|r| r.state == "running");
            series.running.set(running.count() as i64);
            if series.failovers.is_none() && svc.replicas.iter().any(|r| r.role.is_some()) {
                let labels = ServiceLabels {
                    service: svc.name.clone(),
                };
                series.failovers = Some(self.failovers.get_or_create_owned(&labels));
            }
            for r in &svc.replicas {
                let rs = series
                    .replicas
                    .entry(r.index)
                    .or_insert_with(|| self.replica_series(&svc.name, r.index));
                rs.epoch = epoch;
                rs.source = source(&svc.name, r.index);
                rs.up.set(i64::from(r.pid.is_some()));
                rs.healthy.set(i64::from(r.health == "healthy"));
                if r.restarts < rs.last_restarts {
                    // Not the same replica any more (removed and added
                    // again between two updates): a fresh counter.
                    let labels = ReplicaLabels::new(&svc.name, r.index);
                    self.restarts.remove(&labels);
                    rs.restarts = self.restarts.get_or_create_owned(&labels);
                    rs.last_restarts = 0;
                }
                rs.restarts.inc_by(u64::from(r.restarts - rs.last_restarts));
                rs.last_restarts = r.restarts;
            }
            series.replicas.retain(|&index, rs| {
                let keep = rs.epoch == epoch;
                if !keep {
                    self.remove_replica(&svc.name, index);
                }
                keep
            });
        }
        seen.services.retain(|name, series| {
            let keep = series.epoch == epoch;
            if !keep {
                for &index in series.replicas.keys() {
                    self.remove_replica(name, index);
                }
                let labels = ServiceLabels {
                    service: name.clone(),
                };
                self.desired.remove(&labels);
                self.running.remove(&labels);
                self.failovers.remove(&labels);
                self.probe_duration.remove(&labels);
                self.cluster.leader.remove(&labels);
                self.cluster.token.remove(&labels);
            }
            keep
        });
    }

    /// Counts what the status cannot show (failovers, OOM kills,
    /// elections, fencing); keeps the last events for the status page.
    pub fn on_event(&self, event: &EventRecord) {
        let mut page = self.page();
        if page.events.len() == PAGE_EVENTS {
            page.events.pop_front();
        }
        page.events.push_back(event.clone());
        drop(page);
        let per_service = match event.event.as_str() {
            "promoted" => &self.failovers,
            "elected" => &self.cluster.elections,
            "fenced" => &self.cluster.fenced,
            "oom" => {
                if let (Some(service), Some(index)) = (&event.service, event.replica) {
                    let labels = ReplicaLabels::new(service, index);
                    self.oom_kills.get_or_create(&labels).inc();
                }
                return;
            }
            _ => return,
        };
        if let Some(service) = &event.service {
            per_service
                .get_or_create(&ServiceLabels {
                    service: service.clone(),
                })
                .inc();
        }
    }

    /// One health probe took this long.
    pub fn probe_duration(&self, service: &str, seconds: f64) {
        self.probe_duration
            .get_or_create(&ServiceLabels {
                service: service.to_string(),
            })
            .observe(seconds);
    }

    /// The whole exposition, as a scrape returns it.
    pub fn render(&self) -> String {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        self.sample_usage();
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    fn page(&self) -> std::sync::MutexGuard<'_, Page> {
        self.page.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The status page of `report`, with the last events.
    pub fn status_page(&self, report: Option<&StatusReport>) -> String {
        let mut page = self.page();
        status_page::html(report, page.events.make_contiguous(), SystemTime::now())
    }

    /// Reads what each replica with processes uses: at a scrape only.
    fn sample_usage(&self) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for rs in seen
            .services
            .values_mut()
            .flat_map(|s| s.replicas.values_mut())
        {
            let usage = rs.source.as_ref().map(Source::sample).unwrap_or_default();
            rs.memory.set(
                usage
                    .memory
                    .map_or(0, |m| i64::try_from(m).unwrap_or(i64::MAX)),
            );
            if let Some(cpu) = usage.cpu.map(|c| c.as_secs_f64()) {
                // A new incarnation's cgroup counts from 0: its whole reading
                // is new time.
                let delta = if cpu >= rs.last_cpu {
                    cpu - rs.last_cpu
                } else {
                    cpu
                };
                rs.cpu.inc_by(delta);
                rs.last_cpu = cpu;
            }
        }
    }

    fn service_series(&self, service: &str) -> ServiceSeries {
        let labels = ServiceLabels {
            service: service.to_string(),
        };
        ServiceSeries {
            epoch: 0,
            desired: self.desired.get_or_create_owned(&labels),
            running: self.running.get_or_create_owned(&labels),
            failovers: None,
            replicas: HashMap::new(),
        }
    }

    fn replica_series(&self, service: &str, index: u32) -> ReplicaSeries {
        let labels = ReplicaLabels::new(service, index);
        ReplicaSeries {
            epoch: 0,
            up: self.up.get_or_create_owned(&labels),
            healthy: self.healthy.get_or_create_owned(&labels),
            restarts: self.restarts.get_or_create_owned(&labels),
            last_restarts: 0,
            source: None,
            cpu: self.cpu.get_or_create_owned(&labels),
            last_cpu: 0.0,
            memory: self.memory.get_or_create_owned(&labels),
            _oom_kills: self.oom_kills.get_or_create_owned(&labels),
        }
    }

    /// A replica removed by scale or reload: its series go with it.
    fn remove_replica(&self, service: &str, index: u32) {
        let labels = ReplicaLabels::new(service, index);
        self.up.remove(&labels);
        self.healthy.remove(&labels);
        self.restarts.remove(&labels);
        self.cpu.remove(&labels);
        self.memory.remove(&labels);
        self.oom_kills.remove(&labels);
    }
}

/// Binds `addr` (and only it) now, so that a bad or busy address is the
/// caller's error, then serves `GET /metrics` in a task of the current
/// runtime until the process exits. The status page and `/status.json` ask
/// the event loop for a report through `calls`, as `supervise status` does
/// over the control socket: the same document, usage sampled at the request.
pub fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    calls: mpsc::UnboundedSender<Call>,
) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tokio::spawn(accept(listener, metrics, calls));
    Ok(())
}

/// The loop's status report, or None while it cannot answer (it is going
/// down).
async fn current_report(calls: &mpsc::UnboundedSender<Call>) -> Option<StatusReport> {
    let (answer, answered) = oneshot::channel();
    let request = control::protocol::Request::status();
    calls.send(Call { request, answer }).ok()?;
    match answered.await.ok()? {
        Answer::Reply(control::protocol::Reply {
            result: Some(Outcome::Status(report)),
            ..
        }) => Some(report),
        _ => None,
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    calls: mpsc::UnboundedSender<Call>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: back off rather than spin.
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let metrics = Arc::clone(&metrics);
        let calls = calls.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = Arc::clone(&metrics);
                let calls = calls.clone();
                async move {
                    let report = match req.uri().path() {
                        "/" | "/status.json" => current_report(&calls).await,
                        _ => None,
                    };
                    Ok::<_, Infallible>(respond(&req, &metrics, report.as_ref()))
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
            drop(slot);
        });
    }
}

fn respond(
    req: &Request<Incoming>,
    metrics: &Metrics,
    report: Option<&StatusReport>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        // What is shown changes from one request to the next.
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        response
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    let path = req.uri().path();
    if !matches!(
        path,
        "/" | "/status.json" | "/metrics" | "/page.js" | "/page.css"
    ) {
        return reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /, /status.json or /metrics\n".into(),
        );
    }
    // Read-only: nothing is changed over HTTP.
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n".into());
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/" => {
            let mut page = reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                metrics.status_page(report),
            );
            page.headers_mut().insert(
                CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(status_page::POLICY),
            );
            page
        }
        "/page.js" => reply(
            StatusCode::OK,
            "text/javascript",
            status_page::SCRIPT.into(),
        ),
        "/page.css" => reply(StatusCode::OK, "text/css", status_page::STYLE.into()),
        "/status.json" => match report {
            Some(report) => reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(report).expect("a report always serialises") + "\n",
            ),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                "no status yet: the supervisor is starting\n".into(),
            ),
        },
        _ => reply(StatusCode::OK, CONTENT_TYPE_OPENMETRICS, metrics.render()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{ReplicaStatus, ServiceStatus, SupervisorInfo};

    fn replica(index: u32, state: &str, restarts: u32) -> ReplicaStatus {
        ReplicaStatus {
            restarts,
            ..crate::commands::select::tests::replica(index, state)
        }
    }

    fn report(services: Vec<(&str, u32, Vec<ReplicaStatus>)>) -> StatusReport {
        StatusReport {
            schema: 1,
            supervisor: SupervisorInfo {
                pid: 1,
                started_at: String::new(),
                spec: String::new(),
                state_dir: String::new(),
            },
            services: services
                .into_iter()
                .map(|(name, desired, replicas)| ServiceStatus {
                    name: name.into(),
                    state: "running".into(),
                    desired,
                    replicas,
                    cluster: None,
                })
                .collect(),
            cluster: None,
        }
    }

    /// The value of the sample line `series` (name and labels as written).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
    }

    #[test]
    fn gauges_follow_the_report() {
        let m = Metrics::default();
        m.update(
            &report(vec![(
                "api",
                2,
                vec![replica(0, "running", 0), replica(1, "backoff", 1)],
            )]),
            |_, _| None,
        );
        let text = m.render();
        assert_eq!(
            sample(&text, r#"supervise_replicas_desired{service="api"}"#),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, r#"supervise_replicas_running{service="api"}"#),
            Some(1.0)
        );
        let up = r#"supervise_replica_up{service="api",replica="0"}"#;
        assert_eq!(sample(&text, up), Some(1.0));
        let up1 = r#"supervise_replica_up{service="api",replica="1"}"#;
        assert_eq!(sample(&text, up1), Some(0.0));
        let healthy = r#"supervise_replica_healthy{service="api",replica="0"}"#;
        assert_eq!(sample(&text, healthy), Some(1.0));
        assert!(
            text.contains("# TYPE supervise_uptime_seconds gauge"),
            "{text}"
        );
        assert!(sample(&text, "supervise_start_time_seconds").unwrap() > 1.0e9);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn restarts_add_deltas_and_removed_replicas_vanish() {
        let m = Metrics::default();
        let series = r#"supervise_restarts_total{service="api",replica="1"}"#;
        m.update(
            &report(vec![(
                "api",
                2,
                vec![replica(0, "running", 0), replica(1, "running", 3)],
            )]),
            |_, _| None,
        );
        assert_eq!(sample(&m.render(), series), Some(3.0));
        m.update(
            &report(vec![(
                "api",
                2,
                vec![replica(0, "running", 0), replica(1, "running", 5)],
            )]),
            |_, _| None,
        );
        assert_eq!(sample(&m.render(), series), Some(5.0));
        // Scaled down: replica 1 is gone, and so are its series.
        m.update(
            &report(vec![("api", 1, vec![replica(0, "running", 0)])]),
            |_, _| None,
        );
        let text = m.render();
        assert_eq!(sample(&text, series), None, "{text}");
        assert!(!text.contains(r#"replica="1""#), "{text}");
        // Scaled up again: a new replica 1 counts from its own restarts.
        m.update(
            &report(vec![(
                "api",
                2,
                vec![replica(0, "running", 0), replica(1, "running", 0)],
            )]),
            |_, _| None,
        );
        assert_eq!(sample(&m.render(), series), Some(0.0));
        // A count that went back without an update in between is a new
        // replica under the same name: a fresh counter, not a negative step.
        m.update(
            &report(vec![(
                "api",
                2,
                vec![replica(0, "running", 0), replica(1, "running", 4)],
            )]),
            |_, _| None,
        );
        m.update(
            &report(vec![(
                "api",
                2,
                vec![replica(0, "running", 0), replica(1, "running", 1)],
            )]),
            |_, _| None,
        );
        assert_eq!(sample(&m.render(), series), Some(1.0));
    }

    #[test]
    fn a_removed_service_takes_its_series_along() {
        let m = Metrics::default();
        m.update(
            &report(vec![
                ("api", 1, vec![replica(0, "running", 0)]),
                ("db", 1, vec![replica(0, "running", 0)]),
            ]),
            |_, _| None,
        );
        m.probe_duration("db", 0.002);
        m.on_event(&promoted("db"));
        m.update(
            &report(vec![("api", 1, vec![replica(0, "running", 0)])]),
            |_, _| None,
        );
        let text = m.render();
        assert!(!text.contains(r#"service="db""#), "{text}");
        assert!(text.contains(r#"service="api""#), "{text}");
    }

    fn promoted(service: &str) -> EventRecord {
        EventRecord {
            at: String::new(),
            event: "promoted".into(),
            service: Some(service.into()),
            replica: Some(1),
            pid: Some(7),
            detail: String::new(),
        }
    }

    #[test]
    fn promotions_count_as_failovers_and_probes_fill_the_histogram() {
        let m = Metrics::default();
        let failovers = r#"supervise_failovers_total{service="kv"}"#;
        let mut standby = replica(0, "running", 0);
        standby.role = Some("standby".into());
        m.update(&report(vec![("kv", 1, vec![standby])]), |_, _| None);
        assert_eq!(sample(&m.render(), failovers), Some(0.0));
        m.on_event(&promoted("kv"));
        m.on_event(&promoted("kv"));
        m.on_event(&EventRecord {
            event: "spawned".into(),
            ..promoted("kv")
        });
        m.probe_duration("kv", 0.003);
        m.probe_duration("kv", 0.2);
        let text = m.render();
        assert_eq!(
            sample(&text, r#"supervise_failovers_total{service="kv"}"#),
            Some(2.0)
        );
        let count = r#"supervise_probe_duration_seconds_count{service="kv"}"#;
        assert_eq!(sample(&text, count), Some(2.0));
        let le = r#"supervise_probe_duration_seconds_bucket{le="0.005",service="kv"}"#;
        assert_eq!(sample(&text, le), Some(1.0), "{text}");
    }

    #[test]
    fn oom_kills_are_counted_per_replica_from_zero() {
        let m = Metrics::default();
        m.update(
            &report(vec![(
                "api",
                2,
                vec![replica(0, "running", 0), replica(1, "running", 0)],
            )]),
            |_, _| None,
        );
        let series = r#"supervise_replica_oom_kills_total{service="api",replica="1"}"#;
        assert_eq!(sample(&m.render(), series), Some(0.0));
        let oom = EventRecord {
            event: "oom".into(),
            ..promoted("api")
        };
        m.on_event(&oom);
        m.on_event(&oom);
        let text = m.render();
        assert_eq!(sample(&text, series), Some(2.0), "{text}");
        let other = r#"supervise_replica_oom_kills_total{service="api",replica="0"}"#;
        assert_eq!(sample(&text, other), Some(0.0));
    }
}
