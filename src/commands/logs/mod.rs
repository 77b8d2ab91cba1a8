//! `supervise logs`: replica output read straight from the log files (so
//! it works with no supervisor running), merged across replicas in time
//! order; `-f` then polls the files for new lines, following rotation,
//! truncation and replicas that appear (after `scale`, say).

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::cli::{Cli, LogsArgs};
use crate::exit;
use crate::state_dir::StateDir;

use super::format::{colour_allowed, millis, paint};
use super::select::{self, Target};
use super::{Exit, Failure, context, emit, valid_spec};
use crate::logfiles::{self as files, Entry, ReplicaLogs, Tail, Window};

/// How often `-f` looks at the files.
const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Replica label colours, one per service (as the foreground `up` shows them).
const PALETTE: [&str; 6] = ["36", "33", "32", "35", "34", "91"];

pub fn run(cli: &Cli, args: &LogsArgs) -> Exit {
    let ctx = context(cli)?;
    let dir = StateDir::new(ctx.state_dir.clone()).logs();
    // No logs yet is no error; logs that are there but not ours to read
    // must not look like no logs at all.
    if let Err(e) = std::fs::read_dir(&dir)
        && e.kind() == std::io::ErrorKind::PermissionDenied
    {
        return Err(Failure::new(
            exit::FAILED,
            format!(
                "cannot read the logs in {}: permission denied; run as the user the \
                 supervisor runs as (or root)",
                dir.display()
            ),
        ));
    }
    let found = files::discover(&dir);
    // Known services: the spec's, in start order (a valid spec's: colours
    // as the foreground `up` gives them), then any with log files.
    let mut services: Vec<String> = valid_spec(cli)
        .iter()
        .flat_map(|s| s.services.iter().map(|s| s.name.clone()))
        .collect();
    for logs in found.values() {
        if !services.contains(&logs.service) {
            services.push(logs.service.clone());
        }
    }
    let targets: Vec<Target> = args.targets.iter().map(|t| Target::parse(t)).collect();
    if let Some(t) = targets.iter().find(|t| !services.contains(&t.service)) {
        return Err(select::unknown_service(
            &t.service,
            services.iter().map(String::as_str),
        ));
    }
    let wanted = |l: &ReplicaLogs| {
        targets.is_empty() || targets.iter().any(|t| t.matches(&l.service, l.index))
    };

    let since = args
        .since
        .map(|t| humantime::format_rfc3339_micros(t).to_string());
    let window = Window {
        since: since.as_deref(),
        last: args.lines,
    };
    let mut tails = BTreeMap::new();
    let mut history = Vec::new();
    for logs in found.values().filter(|l| wanted(l)) {
        let (lines, tail) = logs.history(window);
        history.extend(lines);
        tails.insert(logs.name.clone(), tail);
    }
    merge(&mut history);
    if let Some(n) = args.lines {
        history.drain(..history.len().saturating_sub(n));
    }

    let printer = Printer {
        json: args.json,
        colour: colour_allowed(std::io::stdout().is_terminal()),
        width: found
            .values()
            .filter(|l| wanted(l))
            .map(|l| l.name.len())
            .max()
            .unwrap_or_default(),
        slots: services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    printer.print(&mut out, &history)?;
    if !args.follow {
        return Ok(exit::OK);
    }
    loop {
        out.flush().map_err(|_| Failure::quiet(exit::OK))?;
        std::thread::sleep(FOLLOW_POLL);
        for logs in files::discover(&dir).into_values().filter(|l| wanted(l)) {
            tails
                .entry(logs.name.clone())
                .or_insert_with(|| Tail::new(logs.name, logs.live));
        }
        let mut batch: Vec<Entry> = tails.values_mut().flat_map(Tail::poll).collect();
        merge(&mut batch);
        printer.print(&mut out, &batch)?;
    }
}

/// Time order across replicas; a replica's own lines keep their order.
pub(crate) fn merge(entries: &mut [Entry]) {
    entries.sort_by(|a, b| a.at.cmp(&b.at));
}

struct Printer {
    json: bool,
    colour: bool,
    /// Of the longest replica name, to align the `│`.
    width: usize,
    /// Colour slot per service.
    slots: HashMap<String, usize>,
}

impl Printer {
    fn print(&self, out: &mut impl Write, entries: &[Entry]) -> Result<(), Failure> {
        for e in entries {
            emit(out, &self.line(e))?;
        }
        Ok(())
    }

    /// `api.1 │ 2026-11-23T12:00:00.123Z text`, or the entry as JSON.
    fn line(&self, e: &Entry) -> String {
        if self.json {
            return serde_json::to_string(e).expect("an entry always serialises");
        }
        let label = format!("{:<w$} │", e.replica, w = self.width);
        let service = Target::parse(&e.replica).service;
        let slot = self.slots.get(&service).copied().unwrap_or_default();
        let label = paint(self.colour, PALETTE[slot % PALETTE.len()], &label);
        format!("{label} {} {}", millis(&e.at), e.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: &str, replica: &str, text: &str) -> Entry {
        Entry {
            at: at.into(),
            replica: replica.into(),
            stream: "out".into(),
            text: text.into(),
        }
    }

    #[test]
    fn merge_orders_by_time_and_keeps_each_replicas_order() {
        let mut e = vec![
            entry("2026-11-23T12:00:01.000000Z", "a.0", "a1"),
            entry("2026-11-23T12:00:02.000000Z", "a.0", "a2"),
            entry("2026-11-23T12:00:02.000000Z", "a.0", "a3"),
            entry("2026-11-23T12:00:00.500000Z", "b.0", "b1"),
            entry("2026-11-23T12:00:01.500000Z", "b.0", "b2"),
        ];
        merge(&mut e);
        let order: Vec<&str> = e.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(order, ["b1", "a1", "b2", "a2", "a3"]);
    }

    #[test]
    fn lines_are_labelled_aligned_and_timed_to_the_millisecond() {
        let printer = Printer {
            json: false,
            colour: false,
            width: 6,
            slots: HashMap::new(),
        };
        assert_eq!(
            printer.line(&entry("2026-11-23T12:00:01.123456Z", "db.0", "ready")),
            "db.0   │ 2026-11-23T12:00:01.123Z ready"
        );
        let json = Printer {
            json: true,
            ..printer
        };
        assert_eq!(
            json.line(&entry("2026-11-23T12:00:01.123456Z", "db.0", "ready")),
            r#"{"at":"2026-11-23T12:00:01.123456Z","replica":"db.0","stream":"out","text":"ready"}"#
        );
    }
}
