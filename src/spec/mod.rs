//! The spec file: validated, typed form of `supervise.toml` (docs/spec-file.md).
//!
//! `load` reads and validates a file; every problem becomes a [`Diagnostic`]
//! with file, line, column and hint, and all of them are returned at once.
//! The types here are what the rest of the program sees: durations are
//! `Duration`s, signals are `Signal`s, paths are absolute, services are in
//! start order. Templates (`{service}`, `{replica}`, `{port}`) stay
//! unexpanded here and are expanded per replica by [`Service::replica`].

mod diagnostic;
mod locate;
mod plan;
mod template;
mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use diagnostic::{Diagnostic, Diagnostics};
pub use locate::{Located, locate};
pub use plan::render_plan;
pub use template::{Vars, expand, expand_with};

use nix::sys::signal::Signal;

/// A whole, valid spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    /// The spec file as given (for messages).
    pub path: PathBuf,
    /// Absolute directory of the spec file; relative paths in the spec are resolved from here.
    pub dir: PathBuf,
    pub supervisor: SupervisorSettings,
    /// Services in start order: every service comes after all its dependencies
    /// (ties broken by name, so the order is stable).
    pub services: Vec<Service>,
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorSettings {
    /// Absolute path (relative ones are resolved against the spec's directory).
    pub state_dir: PathBuf,
    pub shutdown_timeout: Duration,
    /// Bytes.
    pub log_max_size: u64,
    pub log_keep: u32,
    pub metrics: Option<std::net::SocketAddr>,
    /// `[supervisor.cluster]`: failover across supervisors (docs/cluster.md §2).
    pub cluster: Option<ClusterSettings>,
}

/// Where the supervisors of a cluster meet: an etcd cluster, and this
/// supervisor's name among them.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// `http://` URLs of etcd members, tried in order.
    pub etcd: Vec<String>,
    /// A DNS label; default: the host name.
    pub node: String,
    /// Keys live under it; no trailing `/`.
    pub prefix: String,
    /// TTL of this node's lease; at least 3 s.
    pub lease: Duration,
}

impl SupervisorSettings {
    /// The settings of a spec in `spec_dir` without a `[supervisor]` table:
    /// the one place their defaults (docs/spec-file.md §4) are written.
    pub fn with_defaults(spec_dir: &Path) -> SupervisorSettings {
        SupervisorSettings {
            state_dir: spec_dir.join(".supervise"),
            shutdown_timeout: Duration::from_secs(30),
            log_max_size: 10 << 20,
            log_keep: 5,
            metrics: None,
            cluster: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// argv template, non-empty; a string `command` is split with shell-words rules.
    pub command: Vec<String>,
    /// 0 = defined, not started.
    pub replicas: u32,
    /// Working directory template; `None` = the spec's directory.
    pub cwd: Option<String>,
    /// Environment additions (templates), `env_file` entries first, then `env`
    /// (so `env` wins), in file/key order, without duplicate keys.
    pub env: Vec<(String, String)>,
    /// Base port: replica i gets `port + i`.
    pub port: Option<u16>,
    /// Resolved numeric ids (names resolved at validation time).
    pub user: Option<UserSpec>,
    pub group: Option<GroupSpec>,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub health: Option<Health>,
    pub restart: RestartPolicy,
    /// In the order written.
    pub depends_on: Vec<Dependency>,
    pub failover: Option<Failover>,
    pub image: Option<String>,
    pub limits: Limits,
}

/// `[services.NAME.limits]` (docs/spec-file.md §5.2), per replica; None: no limit.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Bytes: `memory.max`, else enforced by sampling.
    pub memory: Option<u64>,
    /// Bytes: `memory.high`.
    pub memory_high: Option<u64>,
    /// Cores: `cpu.max`.
    pub cpu: Option<f64>,
    /// `pids.max`.
    pub pids: Option<u32>,
    /// RLIMIT_NOFILE, soft and hard.
    pub nofile: Option<u64>,
    /// RLIMIT_CORE, bytes; `u64::MAX` is unlimited.
    pub core: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserSpec {
    pub name: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    pub name: String,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Started,
    Healthy,
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub policy: Policy,
    /// Exit codes that count as success.
    pub exit_codes: Vec<i32>,
    pub delay: Duration,
    /// Always >= delay.
    pub max_delay: Duration,
    pub reset_after: Duration,
    /// Restarts allowed within `window`; 0 = never give up.
    pub limit: u32,
    pub window: Duration,
}

/// The policy of a service without a `restart` table: the one place the
/// defaults of docs/spec-file.md §6 are written.
impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            policy: Policy::Always,
            exit_codes: vec![0],
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
            limit: 10,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// argv template.
    Exec(Vec<String>),
    /// URL template.
    Http(String),
    /// `HOST:PORT` template.
    Tcp(String),
    Notify,
    /// A valid regular expression (checked with the `regex` crate).
    Log(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthAction {
    Restart,
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// At least 1.
    pub retries: u32,
    /// A slow starter is not judged before then (until its first success).
    pub start_period: Duration,
    pub action: HealthAction,
    /// Only allowed with `notify = true`.
    pub watchdog: Option<Duration>,
}

impl Health {
    /// `probe` with every other key at its default: the one place the
    /// defaults of docs/spec-file.md §7 are written.
    pub fn with_defaults(probe: Probe) -> Health {
        Health {
            probe,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            retries: 3,
            start_period: Duration::from_secs(60),
            action: HealthAction::Restart,
            watchdog: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Promote {
    /// argv template; may use `{pid}`.
    Command(Vec<String>),
    Signal(Signal),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    /// `None` = no hook: the role is only announced through `SUPERVISE_ROLE` and events.
    pub promote: Option<Promote>,
    pub scope: Scope,
    /// Cluster scope: how the active is told it lost the role. `None`: it
    /// is stopped (and restarts as a standby).
    pub demote: Option<Promote>,
}

/// Among whose replicas there is one active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// This supervisor's.
    Local,
    /// Every supervisor's of the `[supervisor.cluster]` prefix.
    Cluster,
}

impl Failover {
    pub fn is_cluster(&self) -> bool {
        self.scope == Scope::Cluster
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlertTarget {
    Command(Vec<String>),
    Webhook(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Event names from docs/commands.md §4 (`spawned`, `exited`, `restarted`, `unhealthy`,
    /// `healthy`, `promoted`, `failed`, `scaled`, `reloaded`); non-empty.
    pub events: Vec<String>,
    pub target: AlertTarget,
}

/// One replica of a service with its templates expanded.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaPlan {
    pub argv: Vec<String>,
    /// Everything added to the inherited environment: the service's `env`
    /// plus `SUPERVISE_SERVICE`, `SUPERVISE_REPLICA`, `PORT` (when `port` is set).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub port: Option<u16>,
}

impl Service {
    /// A service that runs `command`, with every other key at its default:
    /// the one place the defaults of docs/spec-file.md §5 are written.
    pub fn with_defaults(name: impl Into<String>, command: Vec<String>) -> Service {
        Service {
            name: name.into(),
            command,
            replicas: 1,
            cwd: None,
            env: Vec::new(),
            port: None,
            user: None,
            group: None,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            health: None,
            restart: RestartPolicy::default(),
            depends_on: Vec::new(),
            failover: None,
            image: None,
            limits: Limits::default(),
        }
    }

    pub fn port_of(&self, index: u32) -> Option<u16> {
        // Validation guarantees port + replicas - 1 fits in u16.
        self.port.map(|p| p + index as u16)
    }

    /// The concrete argv, environment and directory of replica `index`.
    pub fn replica(&self, spec_dir: &Path, index: u32) -> ReplicaPlan {
        let port = self.port_of(index);
        let vars = template::Vars {
            service: &self.name,
            replica: index,
            port,
            pid: None,
            token: None,
        };
        let argv = self.command.iter().map(|a| expand(a, &vars)).collect();
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), expand(v, &vars)))
            .collect();
        env.push(("SUPERVISE_SERVICE".into(), self.name.clone()));
        env.push(("SUPERVISE_REPLICA".into(), index.to_string()));
        if let Some(p) = port {
            env.push(("PORT".into(), p.to_string()));
        }
        let cwd = match &self.cwd {
            Some(c) => spec_dir.join(expand(c, &vars)),
            None => spec_dir.to_path_buf(),
        };
        ReplicaPlan {
            argv,
            env,
            cwd,
            port,
        }
    }

    /// A fingerprint of what replica `index` is started from: its argv,
    /// environment, directory, user, group and stop settings (not health or
    /// restart policy, which the supervisor applies as they are now). Kept
    /// with each incarnation, so that a supervisor resuming after a crash
    /// can tell a replica started from a definition since edited. Cluster
    /// scope is part of it, as its shim holds the fencing deadline and the
    /// demotion (a replica started without them must not be adopted into
    /// an election); it is added only then, so other services keep the
    /// fingerprints of earlier versions.
    pub fn fingerprint(&self, spec_dir: &Path, index: u32) -> String {
        let plan = self.replica(spec_dir, index);
        let mut definition = serde_json::json!([
            plan.argv,
            plan.env,
            plan.cwd,
            self.user.as_ref().map(|u| u.uid),
            self.group.as_ref().map(|g| g.gid),
            self.stop_signal as i32,
            self.stop_timeout.as_millis() as u64,
        ]);
        // Only when set, so a definition without limits keeps the
        // fingerprint it had before limits existed.
        if self.limits != Limits::default() {
            let l = &self.limits;
            definition
                .as_array_mut()
                .expect("an array")
                .push(serde_json::json!([
                    l.memory,
                    l.memory_high,
                    l.cpu,
                    l.pids,
                    l.nofile,
                    l.core
                ]));
        }
        if let Some(failover) = self.failover.as_ref().filter(|f| f.is_cluster())
            && let Some(parts) = definition.as_array_mut()
        {
            let demote = match &failover.demote {
                Some(Promote::Command(argv)) => serde_json::json!(argv),
                Some(Promote::Signal(signal)) => serde_json::json!(*signal as i32),
                None => serde_json::Value::Null,
            };
            parts.push(serde_json::json!(["cluster", demote]));
        }
        // FNV-1a: the same value from every build (std's hasher may change
        // between Rust releases, and a resume may run a newer binary).
        let hash = definition
            .to_string()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            });
        format!("{hash:016x}")
    }
}

impl Spec {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The services whose active is elected across the cluster.
    pub fn cluster_services(&self) -> impl Iterator<Item = &Service> {
        self.services
            .iter()
            .filter(|s| s.failover.as_ref().is_some_and(Failover::is_cluster))
    }
}

/// Reads and validates a spec file, reporting every problem at once.
pub fn load(path: &Path) -> Result<Spec, Diagnostics> {
    validate::load(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_scope_and_its_demotion_are_part_of_the_fingerprint_and_nothing_else_changed() {
        let dir = Path::new("/srv");
        let mut s = Service::with_defaults("db", vec!["db".into()]);
        let plain = s.fingerprint(dir, 0);
        let mut failover = Failover {
            promote: None,
            scope: Scope::Local,
            demote: None,
        };
        s.failover = Some(failover.clone());
        assert_eq!(s.fingerprint(dir, 0), plain, "local scope adds nothing");
        failover.scope = Scope::Cluster;
        s.failover = Some(failover.clone());
        let cluster = s.fingerprint(dir, 0);
        assert_ne!(cluster, plain);
        failover.demote = Some(Promote::Signal(Signal::SIGUSR2));
        s.failover = Some(failover);
        assert_ne!(s.fingerprint(dir, 0), cluster);
    }
}
