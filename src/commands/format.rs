//! How the commands show times, durations and colours to a person.

use std::time::{Duration, SystemTime};

use crate::control::protocol::{LastExit, ReplicaStatus};

/// Colour only on a terminal, and never when `NO_COLOR` is set (no-color.org).
pub fn colour_allowed(is_tty: bool) -> bool {
    is_tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Wraps `text` in an SGR colour when `on`.
pub fn paint(on: bool, sgr: &str, text: &str) -> String {
    if on && !sgr.is_empty() {
        format!("\x1b[{sgr}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The colour of a replica or service state: green when all is well, yellow
/// on the way, red when broken, dim when at rest.
pub fn state_colour(state: &str) -> &'static str {
    match state {
        "running" | "healthy" | "completed" => "32",
        "pending" | "starting" | "stopping" | "backoff" | "degraded" => "33",
        "unhealthy" | "failed" => "31",
        "stopped" | "exited" => "2",
        _ => "",
    }
}

/// A duration the way `ps` and `kubectl` show ages: the largest `parts`
/// units, e.g. `45s`, `3m12s`, `2h5m`, `4d3h`.
pub fn compact(d: Duration, parts: usize) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    let mut shown = 0;
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        let n = secs / size;
        secs %= size;
        if (n > 0 || shown > 0) && shown < parts {
            if n > 0 {
                out.push_str(&format!("{n}{unit}"));
            }
            shown += 1;
        }
    }
    out
}

pub fn parse_time(rfc3339: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(rfc3339).ok()
}

/// How long ago `rfc3339` was; zero for a time in the future (clock skew).
pub fn age(rfc3339: &str, now: SystemTime) -> Option<Duration> {
    let at = parse_time(rfc3339)?;
    Some(now.duration_since(at).unwrap_or_default())
}

/// `code 3`, `SIGKILL`.
pub fn exit_cause(exit: &LastExit) -> String {
    if let Some(reason) = &exit.reason {
        return reason.clone();
    }
    match (&exit.code, &exit.signal) {
        (Some(code), _) => format!("code {code}"),
        (None, Some(signal)) => signal.clone(),
        (None, None) => "unknown".to_string(),
    }
}

/// `code 3 (2m ago)`, `SIGKILL (5s ago)`.
pub fn last_exit(exit: &LastExit, now: SystemTime) -> String {
    let how = exit_cause(exit);
    match age(&exit.at, now) {
        Some(ago) => format!("{how} ({} ago)", compact(ago, 1)),
        None => how,
    }
}

/// An RFC 3339 UTC time shown to the millisecond:
/// `2026-11-23T12:00:00.123456Z` → `2026-11-23T12:00:00.123Z`.
pub fn millis(rfc3339: &str) -> String {
    // The common shape (log files), by slicing: `logs` shows many lines.
    if rfc3339.len() == 27 && rfc3339.ends_with('Z') && rfc3339.as_bytes()[19] == b'.' {
        return format!("{}Z", &rfc3339[..23]);
    }
    match parse_time(rfc3339) {
        Some(t) => humantime::format_rfc3339_millis(t).to_string(),
        None => rfc3339.to_string(),
    }
}

/// The headings of [`Cells`]' columns, in their order.
pub const CELL_HEADINGS: [&str; 10] = [
    "REPLICA",
    "PID",
    "STATE",
    "HEALTH",
    "ROLE",
    "RESTARTS",
    "UPTIME",
    "CPU",
    "MEM",
    "LAST EXIT",
];

/// One replica's values as every table shows them (`status`, `top`, the
/// status page): `-` for what is unknown or not measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cells {
    pub replica: String,
    pub pid: String,
    pub state: String,
    pub health: String,
    pub role: String,
    pub restarts: String,
    pub uptime: String,
    pub cpu: String,
    pub memory: String,
    pub last_exit: String,
}

impl Cells {
    pub fn of(service: &str, r: &ReplicaStatus, now: SystemTime) -> Cells {
        let dash = || "-".to_string();
        Cells {
            replica: format!("{service}.{}", r.index),
            pid: r.pid.map_or_else(dash, |p| p.to_string()),
            state: r.state.clone(),
            health: r.health.clone(),
            role: r.role.clone().unwrap_or_else(dash),
            restarts: r.restarts.to_string(),
            uptime: r
                .started_at
                .as_deref()
                .and_then(|at| age(at, now))
                .map_or_else(dash, |d| compact(d, 2)),
            cpu: r.cpu_percent.map_or_else(dash, |p| format!("{p:.1}%")),
            memory: r.memory_bytes.map_or_else(dash, crate::usage::size),
            last_exit: r
                .last_exit
                .as_ref()
                .map_or_else(dash, |e| last_exit(e, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_durations_read_like_ps() {
        let s = Duration::from_secs;
        assert_eq!(compact(Duration::from_millis(250), 2), "250ms");
        assert_eq!(compact(s(45), 2), "45s");
        assert_eq!(compact(s(192), 2), "3m12s");
        assert_eq!(compact(s(192), 1), "3m");
        assert_eq!(compact(s(7_500), 2), "2h5m");
        assert_eq!(compact(s(7_205), 2), "2h");
        assert_eq!(compact(s(3 * 86_400 + 4 * 3_600 + 59), 2), "3d4h");
    }

    #[test]
    fn last_exit_names_the_code_or_the_signal_and_the_age() {
        let now = parse_time("2026-11-23T12:02:00Z").unwrap();
        let exit = |code, signal: Option<&str>| LastExit {
            code,
            signal: signal.map(str::to_string),
            at: "2026-11-23T12:00:00.5Z".into(),
            reason: None,
        };
        assert_eq!(last_exit(&exit(Some(3), None), now), "code 3 (1m ago)");
        assert_eq!(
            last_exit(&exit(None, Some("SIGKILL")), now),
            "SIGKILL (1m ago)"
        );
        let oom = LastExit {
            reason: Some("oom".into()),
            ..exit(None, Some("SIGKILL"))
        };
        assert_eq!(last_exit(&oom, now), "oom (1m ago)");
    }

    #[test]
    fn times_are_shown_to_the_millisecond() {
        assert_eq!(
            millis("2026-11-23T12:00:00.123456Z"),
            "2026-11-23T12:00:00.123Z"
        );
        assert_eq!(millis("garbage"), "garbage");
    }

    #[test]
    fn colour_is_plain_text_when_off() {
        assert_eq!(paint(false, "32", "running"), "running");
        assert_eq!(paint(true, "32", "running"), "\x1b[32mrunning\x1b[0m");
        assert_eq!(paint(true, "", "x"), "x");
    }
}
