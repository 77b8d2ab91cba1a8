//! The health probe of a service as Kubernetes probes (docs/export.md §4):
//! which probes a pod gets, and how a supervise probe target (a URL, a
//! `HOST:PORT`) reads from inside the pod.

use std::time::Duration;

use super::{Map, Names, Node, TARGET, int, seq, string};
use crate::export::{Warnings, whole_seconds};
use crate::spec::{Health, HealthAction, Probe};

/// readinessProbe always (supervise's "healthy" is what dependants and
/// traffic wait for); livenessProbe when `action = "restart"`, with a
/// startupProbe covering `start_period`.
pub(super) fn probes(
    health: &Health,
    names: &Names,
    place: &str,
    comments: &mut Vec<String>,
    warnings: &mut Warnings,
) -> Vec<(&'static str, Node)> {
    let Health {
        probe,
        interval,
        timeout,
        retries,
        start_period,
        action,
        watchdog,
    } = health;
    let replica_dropped = |key: &str, warnings: &mut Warnings| {
        warnings.add(
            place,
            format!(
                "health.{key} uses {{replica}}, which Kubernetes cannot expand in a probe; dropped"
            ),
        );
    };
    let handler = match probe {
        Probe::Exec(argv) => {
            let Some(argv) = argv
                .iter()
                .map(|a| names.literal(a))
                .collect::<Option<Vec<_>>>()
            else {
                replica_dropped("exec", warnings);
                return Vec::new();
            };
            (
                "exec",
                Map::default()
                    .with("command", seq(argv.into_iter().map(string)))
                    .node(),
            )
        }
        Probe::Http(url) => {
            let Some(url) = names.literal(url) else {
                replica_dropped("http", warnings);
                return Vec::new();
            };
            let Some(target) = parse_url(&url) else {
                warnings.add(
                    place,
                    format!("health.http {url} has no port Kubernetes can use; dropped"),
                );
                return Vec::new();
            };
            let mut get = Map::default()
                .with("path", string(target.path))
                .with("port", int(target.port));
            if target.https {
                get = get.with("scheme", string("HTTPS"));
            }
            (
                "httpGet",
                target_host(get, &target.host, "http", comments).node(),
            )
        }
        Probe::Tcp(addr) => {
            let Some(addr) = names.literal(addr) else {
                replica_dropped("tcp", warnings);
                return Vec::new();
            };
            let Some((host, port)) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            else {
                warnings.add(
                    place,
                    format!("health.tcp {addr} has no port Kubernetes can use; dropped"),
                );
                return Vec::new();
            };
            let socket = Map::default().with("port", int(port));
            (
                "tcpSocket",
                target_host(socket, host, "tcp", comments).node(),
            )
        }
        Probe::Notify => {
            warnings.add(
                place,
                "health.notify cannot be expressed in Kubernetes (no sd_notify socket); dropped",
            );
            if watchdog.is_some() {
                warnings.add(
                    place,
                    "health.watchdog cannot be expressed in Kubernetes; dropped",
                );
            }
            return Vec::new();
        }
        Probe::Log(_) => {
            warnings.add(
                place,
                "health.log cannot be expressed in Kubernetes (probes cannot read a container's \
                 output); dropped",
            );
            return Vec::new();
        }
    };
    let period = whole_seconds(*interval, 1, place, "health.interval", TARGET, warnings);
    let timeout = whole_seconds(*timeout, 1, place, "health.timeout", TARGET, warnings);
    let probe = |failures: u64| {
        Map::default()
            .with(handler.0, handler.1.clone())
            .with("periodSeconds", int(period as i64))
            .with("timeoutSeconds", int(timeout as i64))
            .with("failureThreshold", int(failures as i64))
            .node()
    };
    let mut out = vec![("readinessProbe", probe(u64::from(*retries)))];
    if *action == HealthAction::Restart {
        out.push(("livenessProbe", probe(u64::from(*retries))));
        if !start_period.is_zero() {
            // Failures within start_period do not count, then `retries` do.
            let grace = start_period.as_secs_f64() / Duration::from_secs(period).as_secs_f64();
            out.push((
                "startupProbe",
                probe(grace.ceil() as u64 + u64::from(*retries)),
            ));
        }
    }
    // With action = "none" an unhealthy replica only stops being ready, which
    // is what a readiness probe does from its first failure: start_period
    // changes nothing there.
    out
}

/// The kubelet probes the pod's own IP when no host is given, which is
/// where a loopback target of supervise (`127.0.0.1`) now lives; other
/// hosts are kept.
fn target_host(map: Map, host: &str, key: &str, comments: &mut Vec<String>) -> Map {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host == "0.0.0.0"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    if loopback {
        comments.push(format!(
            "health.{key} targets {host}: the kubelet probes the pod's IP instead, so the \
             program must listen on all interfaces (0.0.0.0), not on loopback only."
        ));
        map
    } else {
        map.with("host", string(host))
    }
}

struct Url {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

/// `http[s]://[user@]host[:port][/path][?query]`, as validation accepts it.
fn parse_url(url: &str) -> Option<Url> {
    let (https, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (scheme.eq_ignore_ascii_case("https"), rest),
        None => return None,
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()?),
        _ => (authority, if https { 443 } else { 80 }),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Some(Url {
        https,
        host: host.to_string(),
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_scheme_host_port_and_path() {
        let u = parse_url("http://127.0.0.1:8080/health?full=1").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8080, "/health?full=1")
        );
        let u = parse_url("https://user@example.com").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "example.com", 443, "/")
        );
        let u = parse_url("http://[::1]:9000?x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("[::1]", 9000, "/?x")
        );
        let u = parse_url("http://[::1]/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("[::1]", 80));
    }
}
