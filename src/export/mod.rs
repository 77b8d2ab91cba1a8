//! `supervise export`: the spec translated for an engine made for many
//! machines (docs/export.md), as Kubernetes manifests ([`kubernetes`]) or systemd
//! units ([`systemd`]).
//!
//! Nothing is dropped silently: each target walks every key of the spec by
//! destructuring the spec types completely (`let Service { name, command, … }`),
//! so a key added to the spec fails to compile here until it is either mapped
//! or reported. What a target cannot express becomes a [`Warning`] naming the
//! service and the key. A key left at its default value is not reported: the
//! target's own default behaviour then applies (docs/export.md §4 and §5 list each case).
//! Keys that only mean something to supervise itself (`state_dir`) or only to
//! another target (`image` for systemd) have nothing to map and no warning.

pub mod kubernetes;
pub mod systemd;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::spec::{Alert, Spec, SupervisorSettings};

/// One key the target cannot express, or can only approximate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The service, or `supervisor` / `alerts[N]` for keys outside services.
    pub place: String,
    /// Starts with the key, e.g. `health.http cannot be expressed in systemd; dropped`.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// The warnings of one export, in the order the keys were met.
#[derive(Debug, Default)]
pub struct Warnings(Vec<Warning>);

impl Warnings {
    pub fn add(&mut self, place: &str, message: impl Into<String>) {
        self.0.push(Warning {
            place: place.to_string(),
            message: message.into(),
        });
    }

    pub fn into_vec(self) -> Vec<Warning> {
        self.0
    }
}

/// One file of an export; `path` is relative to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub content: String,
}

/// What an export produced.
#[derive(Debug)]
pub struct Export {
    pub files: Vec<File>,
    pub warnings: Vec<Warning>,
}

/// Why a spec cannot be exported at all: one line per problem, each naming
/// the service.
#[derive(Debug)]
pub struct ExportError(pub Vec<String>);

/// The project name: the spec file's name without `.toml`, or, for the
/// default `supervise.toml`, its directory's name (as docker compose names
/// a project after its directory); lowercase letters, digits and `-` only.
pub fn project_name(spec: &Spec) -> String {
    let stem = spec
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let raw = if stem == "supervise" {
        spec.dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or(stem)
    } else {
        stem
    };
    let mut name: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-');
    if name.is_empty() {
        "supervise".to_string()
    } else {
        name.to_string()
    }
}

/// How a target explains the keys outside services, none of which it can
/// express: each is `(what to do instead)`.
pub(crate) struct Elsewhere {
    pub target: &'static str,
    pub shutdown_timeout: &'static str,
    pub logs: &'static str,
    pub metrics: &'static str,
    pub alerts: &'static str,
}

/// Reports `[supervisor]` keys changed from their defaults, and every alert.
pub(crate) fn report_outside_services(
    settings: &SupervisorSettings,
    alerts: &[Alert],
    elsewhere: &Elsewhere,
    warnings: &mut Warnings,
) {
    let SupervisorSettings {
        state_dir: _, // supervise's own files; the target keeps its state itself
        shutdown_timeout,
        log_max_size,
        log_keep,
        metrics,
        cluster,
    } = settings;
    let Elsewhere { target, .. } = elsewhere;
    // A key at its default means "the usual behaviour", which the target has
    // its own version of; only a changed one is worth a warning.
    let default = SupervisorSettings::with_defaults(Path::new(""));
    let changed = [
        (
            "shutdown_timeout",
            *shutdown_timeout != default.shutdown_timeout,
            elsewhere.shutdown_timeout,
        ),
        (
            "log_max_size",
            *log_max_size != default.log_max_size,
            elsewhere.logs,
        ),
        ("log_keep", *log_keep != default.log_keep, elsewhere.logs),
        ("metrics", metrics.is_some(), elsewhere.metrics),
        (
            "cluster",
            cluster.is_some(),
            "there is no etcd election there; see the warnings of cluster-scope services",
        ),
    ];
    for (key, _, instead) in changed.into_iter().filter(|(_, changed, _)| *changed) {
        warnings.add(
            "supervisor",
            format!("{key} cannot be expressed in {target}; dropped ({instead})"),
        );
    }
    for (i, alert) in alerts.iter().enumerate() {
        let Alert { events, target: _ } = alert;
        warnings.add(
            &format!("alerts[{i}]"),
            format!(
                "alert on {} cannot be expressed in {target}; dropped ({})",
                events.join(", "),
                elsewhere.alerts
            ),
        );
    }
}

/// A piece of a spec template, as the targets see it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Part<'t> {
    /// Literal text, with `{{` and `}}` already turned into single braces.
    Text(String),
    /// `{service}`, `{replica}`, `{port}` or `{pid}`, without the braces.
    Placeholder(&'t str),
}

/// Splits a validated template. Each target spells placeholders its own way
/// (`%i` for systemd, `$(SUPERVISE_REPLICA)` for Kubernetes) and escapes
/// literal text its own way, so it needs the pieces rather than an
/// expansion.
pub(crate) fn parts(template: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(at) = rest.find(['{', '}']) {
        text.push_str(&rest[..at]);
        let tail = &rest[at..];
        let doubled = tail.starts_with("{{") || tail.starts_with("}}");
        match tail.strip_prefix('{').and_then(|t| t.split_once('}')) {
            Some((name, after)) if !doubled => {
                if !text.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut text)));
                }
                parts.push(Part::Placeholder(name));
                rest = after;
            }
            // `{{`, `}}`, or a stray brace (validation rejects those): one literal brace.
            _ => {
                text.push_str(&tail[..1]);
                rest = &tail[if doubled { 2 } else { 1 }..];
            }
        }
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    parts
}

/// Whether a template refers to `{name}`.
pub(crate) fn uses(template: &str, name: &str) -> bool {
    parts(template).contains(&Part::Placeholder(name))
}

/// Whole seconds, rounded up (at least `min`), for targets that count in
/// seconds; a warning when that changed the value.
pub(crate) fn whole_seconds(
    d: Duration,
    min: u64,
    place: &str,
    key: &str,
    target: &str,
    warnings: &mut Warnings,
) -> u64 {
    let secs = (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(min);
    if Duration::from_secs(secs) != d {
        warnings.add(
            place,
            format!(
                "{key} {} is rounded up to {secs}s ({target} counts whole seconds)",
                duration(d)
            ),
        );
    }
    secs
}

/// A duration as both targets read it: `15s`, `100ms`, `250us`.
pub(crate) fn duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros().max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_text_and_placeholders() {
        assert_eq!(
            parts("a{replica}-{{x}}{port}"),
            [
                Part::Text("a".into()),
                Part::Placeholder("replica"),
                Part::Text("-{x}".into()),
                Part::Placeholder("port"),
            ]
        );
        assert_eq!(parts("{{{service}}}").len(), 3);
        assert!(uses("--port={port}", "port"));
        assert!(!uses("--port={{port}}", "port"));
        assert_eq!(parts(""), []);
    }

    #[test]
    fn durations_are_written_in_the_coarsest_exact_unit() {
        assert_eq!(duration(Duration::from_secs(15)), "15s");
        assert_eq!(duration(Duration::from_millis(100)), "100ms");
        assert_eq!(duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(duration(Duration::ZERO), "0s");
    }

    #[test]
    fn seconds_round_up_and_say_so() {
        let mut w = Warnings::default();
        assert_eq!(
            whole_seconds(Duration::from_secs(5), 1, "a", "k", "T", &mut w),
            5
        );
        assert!(w.0.is_empty());
        assert_eq!(
            whole_seconds(Duration::from_millis(200), 1, "a", "k", "T", &mut w),
            1
        );
        assert_eq!(whole_seconds(Duration::ZERO, 1, "a", "k", "T", &mut w), 1);
        assert_eq!(w.0.len(), 2);
        assert_eq!(
            w.0[0].to_string(),
            "a: k 200ms is rounded up to 1s (T counts whole seconds)"
        );
    }
}
