//! Targets on the command line (`api`, `api.1`) matched against what a
//! supervisor reports.

use crate::control::protocol::{ReplicaStatus, ServiceStatus, StatusReport};
use crate::exit;

use super::Failure;

/// `api` (every replica of a service) or `api.1` (one replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub service: String,
    pub index: Option<u32>,
}

impl Target {
    /// Service names cannot contain dots, so a trailing `.N` is a replica index.
    pub fn parse(s: &str) -> Target {
        match s.rsplit_once('.') {
            Some((service, index)) if !service.is_empty() => match index.parse() {
                Ok(i) => Target {
                    service: service.to_string(),
                    index: Some(i),
                },
                Err(_) => Target {
                    service: s.to_string(),
                    index: None,
                },
            },
            _ => Target {
                service: s.to_string(),
                index: None,
            },
        }
    }

    pub fn matches(&self, service: &str, index: u32) -> bool {
        self.service == service && self.index.is_none_or(|i| i == index)
    }
}

/// One replica of a report, with its service.
#[derive(Debug, Clone, Copy)]
pub struct Selected<'r> {
    pub service: &'r ServiceStatus,
    pub replica: &'r ReplicaStatus,
}

impl Selected<'_> {
    /// `api.1`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.service.name, self.replica.index)
    }
}

/// An error for a service the supervisor does not know, listing those it does.
pub fn unknown_service<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> Failure {
    let known: Vec<&str> = known.collect();
    let hint = if known.is_empty() {
        "it has none".to_string()
    } else {
        format!("it has {}", known.join(", "))
    };
    Failure::new(exit::USAGE, format!("no service named {name} ({hint})"))
}

/// The services of `report` named by `names` (all when empty); an unknown
/// name is a usage error.
pub fn services<'r>(
    report: &'r StatusReport,
    names: &[String],
) -> Result<Vec<&'r ServiceStatus>, Failure> {
    for name in names {
        if !report.services.iter().any(|s| &s.name == name) {
            return Err(unknown_service(
                name,
                report.services.iter().map(|s| s.name.as_str()),
            ));
        }
    }
    Ok(report
        .services
        .iter()
        .filter(|s| names.is_empty() || names.contains(&s.name))
        .collect())
}

/// The replicas of `report` named by `targets` (all when empty), in the
/// report's order. An unknown service or replica is a usage error.
pub fn replicas<'r>(
    report: &'r StatusReport,
    targets: &[String],
) -> Result<Vec<Selected<'r>>, Failure> {
    let parsed: Vec<Target> = targets.iter().map(|t| Target::parse(t)).collect();
    for (target, text) in parsed.iter().zip(targets) {
        let Some(service) = report.services.iter().find(|s| s.name == target.service) else {
            return Err(unknown_service(
                &target.service,
                report.services.iter().map(|s| s.name.as_str()),
            ));
        };
        if let Some(i) = target.index
            && !service.replicas.iter().any(|r| r.index == i)
        {
            return Err(Failure::new(
                exit::USAGE,
                format!(
                    "no replica {text} ({} has {} replicas)",
                    service.name,
                    service.replicas.len()
                ),
            ));
        }
    }
    Ok(report
        .services
        .iter()
        .flat_map(|service| {
            service
                .replicas
                .iter()
                .map(move |replica| (service, replica))
        })
        .filter(|(s, r)| parsed.is_empty() || parsed.iter().any(|t| t.matches(&s.name, r.index)))
        .map(|(service, replica)| Selected { service, replica })
        .collect())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::protocol::SupervisorInfo;

    pub fn replica(index: u32, state: &str) -> ReplicaStatus {
        ReplicaStatus {
            index,
            pid: (state == "running").then_some(1000 + index),
            state: state.into(),
            health: if state == "running" {
                "healthy"
            } else {
                "unknown"
            }
            .into(),
            role: None,
            restarts: 0,
            started_at: None,
            last_exit: None,
            restart_at: None,
            cpu_seconds: None,
            cpu_percent: None,
            memory_bytes: None,
            processes: None,
        }
    }

    /// A report with services given as (name, replica states).
    pub fn report(services: &[(&str, &[&str])]) -> StatusReport {
        StatusReport {
            schema: 1,
            supervisor: SupervisorInfo {
                pid: 1,
                started_at: "2026-11-23T12:00:00Z".into(),
                spec: "supervise.toml".into(),
                state_dir: ".supervise".into(),
            },
            services: services
                .iter()
                .map(|(name, states)| ServiceStatus {
                    name: name.to_string(),
                    state: "running".into(),
                    desired: states.len() as u32,
                    replicas: states
                        .iter()
                        .enumerate()
                        .map(|(i, s)| replica(i as u32, s))
                        .collect(),
                    cluster: None,
                })
                .collect(),
            cluster: None,
        }
    }

    fn names(selected: &[Selected]) -> Vec<String> {
        selected.iter().map(Selected::name).collect()
    }

    #[test]
    fn targets_parse_into_service_and_index() {
        assert_eq!(
            Target::parse("api.1"),
            Target {
                service: "api".into(),
                index: Some(1)
            }
        );
        assert_eq!(Target::parse("api").index, None);
        assert_eq!(Target::parse("api.x").service, "api.x");
        assert_eq!(Target::parse(".1").service, ".1");
    }

    #[test]
    fn replicas_select_services_and_single_replicas_in_report_order() {
        let r = report(&[
            ("db", &["running"]),
            ("api", &["running", "running", "pending"]),
        ]);
        assert_eq!(
            names(&replicas(&r, &[]).unwrap()),
            ["db.0", "api.0", "api.1", "api.2"]
        );
        let picked = replicas(&r, &["api.2".into(), "db".into()]).unwrap();
        assert_eq!(names(&picked), ["db.0", "api.2"]);
    }

    #[test]
    fn unknown_targets_are_usage_errors_that_say_what_exists() {
        let r = report(&[("db", &["running"]), ("api", &["running"])]);
        let e = replicas(&r, &["web".into()]).unwrap_err();
        assert_eq!(e.code, 2);
        assert_eq!(e.message.unwrap(), "no service named web (it has db, api)");
        let e = replicas(&r, &["api.3".into()]).unwrap_err();
        assert_eq!(e.message.unwrap(), "no replica api.3 (api has 1 replicas)");
        let e = services(&r, &["nope".into()]).unwrap_err();
        assert_eq!(e.code, 2);
    }
}
