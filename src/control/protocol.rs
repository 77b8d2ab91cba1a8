//! The control protocol between the CLI and a running supervisor, over the
//! Unix socket `<state_dir>/control.sock` (mode 0600, peer uid checked).
//!
//! Framing: JSON lines. The client sends one [`Envelope`] line; the server
//! answers one [`Reply`] line. For `events`, the reply is followed by one
//! [`EventRecord`] line per event (history first, then live ones with
//! `follow`), until either side closes. For `down`, the server keeps the
//! connection open after the reply until the supervisor has exited, so EOF
//! tells the client that shutdown is complete.
//!
//! Versioning: `version` is [`VERSION`]; a server answers a request of
//! another version with an error naming both. Fields may be added to
//! replies; none are removed or renamed without a new version. A request
//! line is capped at [`MAX_REQUEST`] bytes.
//!
//! A rendered status (`status` with `render`) is the reply
//! `{"type":"text","bytes":N}` followed by N bytes of text, as they are to
//! be printed: not JSON-escaped, so the client copies them out unparsed.
//!
//! A reply's `result` names its kind in a `type` key, which the server
//! writes first: the client then reads the rest without buffering it (any
//! order is accepted, more slowly).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const VERSION: u32 = 1;
/// Requests longer than this are refused (and the connection closed).
pub const MAX_REQUEST: usize = 1 << 20;
/// The socket's file name inside the state directory.
pub const SOCKET_NAME: &str = "control.sock";

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub version: u32,
    pub request: Request,
}

/// `targets` are service names (`api`: all its replicas) or replica names
/// (`api.1`); an empty list means every service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Request {
    /// The status report; with `render`, the report as the CLI prints it,
    /// made where the data is (one string to copy out instead of a report
    /// to parse and print again). A supervisor from before `render` ignores
    /// both fields and sends the report.
    Status {
        /// Only these services (all when empty); an unknown one is an error.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        render: Option<Render>,
    },
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// Desired state: run. Clears `stopped` and `failed` marks; the replicas
    /// are spawned (after their dependencies, like at `up`).
    Start { targets: Vec<String> },
    /// Desired state: stopped (kept across supervisor restarts).
    Stop { targets: Vec<String> },
    /// Stop (if running), then start again; clears `failed`.
    Restart { targets: Vec<String> },
    /// New replica counts; surplus replicas stop highest index first.
    Scale { counts: BTreeMap<String, u32> },
    /// Apply an edited spec; `spec` = None reloads the file the supervisor
    /// was started with. Only services whose definition changed restart.
    Reload {
        spec: Option<PathBuf>,
        #[serde(default)]
        dry_run: bool,
    },
    /// Stop every replica in reverse dependency order, then exit.
    /// `timeout_ms` replaces `shutdown_timeout` for this shutdown.
    Down { timeout_ms: Option<u64> },
}

/// How `status` prints: the table (with colour or without) or the JSON
/// report of docs/commands.md §8.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "as", rename_all = "snake_case")]
pub enum Render {
    Table { colour: bool },
    Json,
}

impl Request {
    /// The whole report, as data.
    pub fn status() -> Request {
        Request::Status {
            services: Vec::new(),
            render: None,
        }
    }
}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub version: u32,
    pub ok: bool,
    /// Set when `ok` is false: one line for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Set when `ok` is false: the exit code the CLI should use (docs/commands.md §5:
    /// 2 for an unknown service or a bad request, 1 for a rejected operation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Outcome>,
    /// With `ok`: what the person who asked should know, though it was
    /// done (a change that could not be recorded yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// On the wire, the variant's fields with a `"type"` key first (serde's
/// internally tagged form); read by [`Outcome`]'s own `Deserialize`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    Status(StatusReport),
    /// For start/stop/restart/scale: the replicas whose desired state changed.
    Affected {
        replicas: Vec<String>,
    },
    Reload(ReloadPlan),
    /// Acknowledges `events` and `down`.
    Accepted,
    /// A rendered status report: `bytes` bytes of text follow the reply line.
    Text {
        bytes: usize,
    },
}

/// serde's derived reader of an internally tagged enum buffers the whole
/// value before it looks at the tag, a large part of a `supervise status`
/// (BENCHMARKS.md has the figures). The server writes the tag
/// first, as serde's writer does, so the variant is read straight from the
/// line after it; a result whose tag comes later is still read, buffered.
impl<'de> Deserialize<'de> for Outcome {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OutcomeVisitor)
    }
}

struct OutcomeVisitor;

impl<'de> serde::de::Visitor<'de> for OutcomeVisitor {
    type Value = Outcome;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a result object with a \"type\"")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Outcome, A::Error> {
        use serde::de::{Error, value::MapAccessDeserializer};
        let first = map.next_key::<String>()?;
        if first.as_deref() == Some("type") {
            let kind: String = map.next_value()?;
            return variant(&kind, MapAccessDeserializer::new(map));
        }
        let mut fields = serde_json::Map::new();
        if let Some(key) = first {
            fields.insert(key, map.next_value()?);
            while let Some((key, value)) = map.next_entry()? {
                fields.insert(key, value);
            }
        }
        match fields.remove("type") {
            Some(serde_json::Value::String(kind)) => {
                variant(&kind, serde_json::Value::Object(fields)).map_err(Error::custom)
            }
            _ => Err(Error::custom("a result needs a \"type\" string")),
        }
    }
}

/// Reads the fields of the outcome named `kind`, its "type" key already taken.
fn variant<'de, D: serde::Deserializer<'de>>(kind: &str, fields: D) -> Result<Outcome, D::Error> {
    use serde::de::{Error, IgnoredAny};
    const TYPES: &[&str] = &["status", "affected", "reload", "accepted", "text"];
    #[derive(Deserialize)]
    struct Affected {
        replicas: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Text {
        bytes: usize,
    }
    match kind {
        "status" => StatusReport::deserialize(fields).map(Outcome::Status),
        "affected" => Affected::deserialize(fields).map(|a| Outcome::Affected {
            replicas: a.replicas,
        }),
        "reload" => ReloadPlan::deserialize(fields).map(Outcome::Reload),
        "accepted" => IgnoredAny::deserialize(fields).map(|_| Outcome::Accepted),
        "text" => Text::deserialize(fields).map(|t| Outcome::Text { bytes: t.bytes }),
        other => Err(Error::unknown_variant(other, TYPES)),
    }
}

impl Reply {
    pub fn ok(result: Outcome) -> Reply {
        Reply {
            version: VERSION,
            ok: true,
            error: None,
            exit_code: None,
            result: Some(result),
            warning: None,
        }
    }

    pub fn warned(self, warning: Option<String>) -> Reply {
        Reply { warning, ..self }
    }

    pub fn error(exit_code: i32, error: impl Into<String>) -> Reply {
        Reply {
            version: VERSION,
            ok: false,
            error: Some(error.into()),
            exit_code: Some(exit_code),
            result: None,
            warning: None,
        }
    }
}

/// `status --json`, schema 1 (docs/commands.md §8.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub schema: u32,
    pub supervisor: SupervisorInfo,
    /// In start order.
    pub services: Vec<ServiceStatus>,
    /// With cluster-scope services: this node's lease. Absent otherwise,
    /// so a spec without them has the report it always had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterNode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorInfo {
    pub pid: u32,
    /// RFC 3339 UTC.
    pub started_at: String,
    /// The spec file as given to `up`.
    pub spec: String,
    pub state_dir: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    /// running | degraded | starting | failed | stopped | completed
    pub state: String,
    /// Desired replica count (after `scale`).
    pub desired: u32,
    pub replicas: Vec<ReplicaStatus>,
    /// Cluster-scope failover services only (absent for the others).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// This supervisor's lease in the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub node: String,
    /// The lease's id while it holds one.
    pub lease: Option<i64>,
    /// Keep-alives that renewed the lease, since the supervisor started.
    pub lease_renewals: u64,
    /// Keep-alives (and grants) that found no etcd member answering.
    pub lease_renewal_failures: u64,
    /// Round trip of the last renewal, in seconds.
    pub last_renewal_seconds: Option<f64>,
    /// RFC 3339 UTC: etcd has not answered since then; null while it does.
    pub no_quorum_since: Option<String>,
}

/// Where this supervisor stands in a service's cluster election.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This supervisor's node name.
    pub node: String,
    /// leader | follower | campaigning
    pub role: String,
    /// The leader's node, as last seen; null when unknown.
    pub leader: Option<String>,
    /// The leader's fencing token, as last seen.
    pub token: Option<u64>,
    /// RFC 3339 UTC: etcd has not answered since then; null while it does.
    pub no_quorum_since: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub index: u32,
    /// The command's own pid while it has one.
    pub pid: Option<u32>,
    /// pending | starting | running | unhealthy | backoff | stopping |
    /// stopped | exited | failed
    pub state: String,
    /// healthy | unhealthy | unknown
    pub health: String,
    /// active | standby, for failover services; null otherwise.
    pub role: Option<String>,
    pub restarts: u32,
    /// When the current incarnation started (RFC 3339 UTC), while it runs.
    pub started_at: Option<String>,
    pub last_exit: Option<LastExit>,
    /// When a replica in `backoff` is due to be spawned again (RFC 3339
    /// UTC); null in every other state.
    #[serde(default)]
    pub restart_at: Option<String>,
    /// CPU time its processes used (seconds), while it runs; sampled for
    /// `status`, null in other reports (docs/commands.md §8).
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// Percent of one core used over the interval since the previous sample.
    #[serde(default)]
    pub cpu_percent: Option<f64>,
    /// Memory in use, bytes (the cgroup's `memory.current`, else summed RSS).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Live processes of the replica.
    #[serde(default)]
    pub processes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastExit {
    pub code: Option<i32>,
    /// Signal name, e.g. "SIGKILL".
    pub signal: Option<String>,
    /// RFC 3339 UTC.
    pub at: String,
    /// Why, beyond the code or signal: "oom" (the kernel's OOM killer, for
    /// its memory limit), "memory limit" (over its limit by sampling, and
    /// stopped for it), "unhealthy"; null otherwise.
    #[serde(default)]
    pub reason: Option<String>,
}

/// What a reload does (or would do, with `dry_run`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadPlan {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// False for a dry run.
    pub applied: bool,
}

/// One event (docs/commands.md §15.1, `events --json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// RFC 3339 UTC.
    pub at: String,
    /// docs/commands.md §4: spawned | exited | restarted | unhealthy | healthy |
    /// promoted | failed | scaled | reloaded, and also: stopping | stopped |
    /// adopted (after a resume) | spawn_failed | shim_lost (a shim vanished
    /// without a record) | leftovers_killed | shutdown (begun) | killed
    /// (a shutdown turned forced: second signal or shutdown_timeout) |
    /// checkpoint_set_aside (a damaged checkpoint, at start) | lost (only in
    /// a live stream: this reader fell behind and missed events)
    pub event: String,
    pub service: Option<String>,
    pub replica: Option<u32>,
    pub pid: Option<u32>,
    /// The human line, e.g. "api.1 exited with code 3; restart 4 in 800ms".
    pub detail: String,
}

impl EventRecord {
    /// Stands in a live stream for the `missed` events a slow reader lost:
    /// a gap is always said, never silent.
    pub fn lost(missed: u64) -> EventRecord {
        EventRecord {
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            event: "lost".into(),
            service: None,
            replica: None,
            pid: None,
            detail: format!("{missed} events lost: this reader fell behind the stream"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::select::tests::report;

    #[test]
    fn every_outcome_reads_back_as_it_was_written() {
        let outcomes = [
            Outcome::Status(report(&[("api", &["running", "failed"]), ("db", &[])])),
            Outcome::Affected {
                replicas: vec!["api.0".into(), "api.1".into()],
            },
            Outcome::Reload(ReloadPlan {
                added: vec!["new".into()],
                removed: vec![],
                changed: vec!["api".into()],
                unchanged: vec!["db".into()],
                applied: true,
            }),
            Outcome::Accepted,
            Outcome::Text { bytes: 1234 },
        ];
        for outcome in outcomes {
            let reply = serde_json::to_string(&Reply::ok(outcome.clone())).unwrap();
            assert!(reply.contains(r#""result":{"type":"#), "{reply}");
            let back: Reply = serde_json::from_str(&reply).unwrap();
            assert_eq!(back.result, Some(outcome));
        }
    }

    #[test]
    fn a_result_is_read_whatever_the_order_of_its_keys_and_extra_keys_are_ignored() {
        let read = |result: &str| {
            serde_json::from_str::<Reply>(&format!(
                r#"{{"version":1,"ok":true,"result":{result}}}"#
            ))
            .map(|r| r.result)
            .map_err(|e| e.to_string())
        };
        let affected = Some(Outcome::Affected {
            replicas: vec!["a.0".into()],
        });
        assert_eq!(
            read(r#"{"type":"affected","replicas":["a.0"]}"#),
            Ok(affected.clone())
        );
        assert_eq!(
            read(r#"{"replicas":["a.0"],"type":"affected"}"#),
            Ok(affected.clone())
        );
        assert_eq!(
            read(r#"{"type":"affected","since":2,"replicas":["a.0"]}"#),
            Ok(affected.clone())
        );
        assert_eq!(
            read(r#"{"since":2,"replicas":["a.0"],"type":"affected"}"#),
            Ok(affected)
        );
        assert_eq!(
            read(r#"{"type":"accepted","note":"x"}"#),
            Ok(Some(Outcome::Accepted))
        );
        assert_eq!(read("null"), Ok(None));

        let unknown = read(r#"{"type":"teleported"}"#).unwrap_err();
        assert!(
            unknown.contains("unknown variant `teleported`"),
            "{unknown}"
        );
        let untyped = read(r#"{"replicas":["a.0"]}"#).unwrap_err();
        assert!(untyped.contains(r#"needs a "type" string"#), "{untyped}");
        let not_an_object = read("[]").unwrap_err();
        assert!(
            not_an_object.contains(r#"with a "type""#),
            "{not_an_object}"
        );
        let incomplete = read(r#"{"type":"affected"}"#).unwrap_err();
        assert!(
            incomplete.contains("missing field `replicas`"),
            "{incomplete}"
        );
    }

    #[test]
    fn a_supervisor_from_before_render_reads_a_rendered_status_request_as_a_plain_one() {
        // `Request` as it was before `Status` had fields.
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Before {
            Status,
        }
        let asked = Request::Status {
            services: vec!["api".into()],
            render: Some(Render::Table { colour: true }),
        };
        let line = serde_json::to_string(&asked).unwrap();
        assert_eq!(
            line,
            r#"{"type":"status","services":["api"],"render":{"as":"table","colour":true}}"#
        );
        assert_eq!(
            serde_json::from_str::<Before>(&line).unwrap(),
            Before::Status
        );
        // And a plain request is still the line it always was.
        assert_eq!(
            serde_json::to_string(&Request::status()).unwrap(),
            r#"{"type":"status"}"#
        );
    }
}
