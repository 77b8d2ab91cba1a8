//! `supervise status`: the table, or the report as JSON (schema 1).

use std::io::IsTerminal;
use std::time::SystemTime;

use crate::cli::{Cli, StatusArgs};
use crate::control::client;
use crate::control::client::Rendered;
use crate::control::protocol::{Render, StatusReport};
use crate::exit;

use super::format::{CELL_HEADINGS, Cells, colour_allowed, paint, state_colour};
use super::{Exit, Failure, context, emit, select};

/// Columns of the table.
const COLUMNS: usize = 11;

/// SERVICE, then the replica's cells.
const HEADER: [&str; COLUMNS] = {
    let mut header = ["SERVICE"; COLUMNS];
    let mut i = 0;
    while i < CELL_HEADINGS.len() {
        header[i + 1] = CELL_HEADINGS[i];
        i += 1;
    }
    header
};
/// Columns shown in colour (their text is a state).
const STATE: usize = 3;
const HEALTH: usize = 4;

/// The supervisor renders the report (`Request::Status` with `render`):
/// the command then only copies a string out, the cheapest `status` there
/// is. A supervisor from before rendering sends the report; it is rendered
/// here the same way.
pub fn run(cli: &Cli, args: &StatusArgs) -> Exit {
    client::set_reply_timeout(args.answer.timeout);
    let ctx = context(cli)?;
    let render = if args.json {
        Render::Json
    } else {
        Render::Table {
            colour: colour_allowed(std::io::stdout().is_terminal()),
        }
    };
    let text = match client::rendered_status(&ctx.state_dir, &args.services, render)? {
        Rendered::Text(text) => text,
        Rendered::Report(mut report) => {
            keep_only(&mut report, &args.services)?;
            self::render(&report, render, SystemTime::now())
        }
    };
    emit(&mut std::io::stdout().lock(), text.trim_end())?;
    Ok(exit::OK)
}

/// Leaves in `report` only the services named by `names` (all when empty;
/// an unknown one is a usage error).
pub fn keep_only(report: &mut StatusReport, names: &[String]) -> Result<(), Failure> {
    select::services(report, names)?;
    if !names.is_empty() {
        report.services.retain(|s| names.contains(&s.name));
    }
    Ok(())
}

/// `report` as `status` prints it.
pub fn render(report: &StatusReport, render: Render, now: SystemTime) -> String {
    match render {
        Render::Json => serde_json::to_string_pretty(report).expect("a report always serialises"),
        Render::Table { colour } => table(report, now, colour) + &cluster_lines(report),
    }
}

/// One row per replica; a service without replicas gets one row showing
/// its own state.
fn rows(report: &StatusReport, now: SystemTime) -> Vec<[String; COLUMNS]> {
    let dash = || "-".to_string();
    let mut rows = Vec::new();
    for service in &report.services {
        if service.replicas.is_empty() {
            rows.push([
                service.name.clone(),
                dash(),
                dash(),
                service.state.clone(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
                dash(),
            ]);
        }
        for r in &service.replicas {
            let c = Cells::of(&service.name, r, now);
            rows.push([
                service.name.clone(),
                c.replica,
                c.pid,
                c.state,
                c.health,
                c.role,
                c.restarts,
                c.uptime,
                c.cpu,
                c.memory,
                c.last_exit,
            ]);
        }
    }
    rows
}

/// Below the table, for cluster-scope services: who leads, with which
/// token, and whether etcd answers.
fn cluster_lines(report: &StatusReport) -> String {
    let mut out = String::new();
    let mut no_quorum = None;
    for service in &report.services {
        let Some(c) = &service.cluster else { continue };
        let leader = match (&c.leader, c.token) {
            (Some(node), Some(token)) if *node == c.node && c.role == "leader" => {
                format!("this node ({node}) leads, token {token}")
            }
            (Some(node), Some(token)) => {
                format!(
                    "leader {node}, token {token}; this node ({}) is a {}",
                    c.node, c.role
                )
            }
            _ => format!("no leader known; this node ({}) is a {}", c.node, c.role),
        };
        out.push_str(&format!("{}: cluster {leader}\n", service.name));
        no_quorum = no_quorum.or(c.no_quorum_since.clone());
    }
    if let Some(since) = no_quorum {
        out.push_str(&format!("cluster: no quorum since {since}\n"));
    }
    out
}

fn table(report: &StatusReport, now: SystemTime, colour: bool) -> String {
    let rows = rows(report, now);
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String; COLUMNS], header: bool| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let last = i == cells.len() - 1;
            // Pad first, then colour, so escape codes do not skew the columns.
            let padded = if last {
                cell.clone()
            } else {
                format!("{cell:<w$}  ", w = widths[i])
            };
            let sgr = match i {
                _ if header => "1",
                STATE | HEALTH => state_colour(cell),
                _ => "",
            };
            text.push_str(&paint(colour, sgr, &padded));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&HEADER.map(String::from), true);
    for row in &rows {
        line(row, false);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::select::tests::report;
    use crate::control::protocol::LastExit;

    #[test]
    fn the_table_has_the_contract_columns_aligned() {
        let mut r = report(&[
            ("db", &["running"]),
            ("api", &["running", "backoff"]),
            ("idle", &[]),
        ]);
        let now = super::super::format::parse_time("2026-11-23T12:03:12Z").unwrap();
        r.services[1].replicas[0].started_at = Some("2026-11-23T12:00:00Z".into());
        r.services[1].replicas[0].restarts = 2;
        r.services[1].replicas[0].cpu_percent = Some(12.5);
        r.services[1].replicas[0].memory_bytes = Some(50_541_363);
        r.services[1].replicas[1].last_exit = Some(LastExit {
            code: None,
            signal: Some("SIGKILL".into()),
            at: "2026-11-23T12:03:07Z".into(),
            reason: None,
        });
        r.services[2].state = "stopped".into();
        let text = table(&r, now, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "SERVICE  REPLICA  PID   STATE    HEALTH   ROLE  RESTARTS  UPTIME  CPU    MEM      LAST EXIT"
        );
        assert_eq!(
            lines[1],
            "db       db.0     1000  running  healthy  -     0         -       -      -        -"
        );
        assert_eq!(
            lines[2],
            "api      api.0    1000  running  healthy  -     2         3m12s   12.5%  48.2MiB  -"
        );
        assert_eq!(
            lines[3],
            "api      api.1    -     backoff  unknown  -     0         -       -      -        SIGKILL (5s ago)"
        );
        assert_eq!(
            lines[4],
            "idle     -        -     stopped  -        -     -         -       -      -        -"
        );
    }

    #[test]
    fn colour_marks_states_without_breaking_alignment() {
        let r = report(&[("db", &["running"])]);
        let text = table(&r, SystemTime::now(), true);
        assert!(text.contains("\x1b[32mrunning  \x1b[0m"), "{text:?}");
        let plain = table(&r, SystemTime::now(), false);
        assert!(!plain.contains('\x1b'));
    }
}
