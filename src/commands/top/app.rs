//! What `supervise top` knows and what its keys do. No terminal here:
//! view.rs draws an [`App`], mod.rs feeds it keys, events and reports and
//! carries out the [`Action`]s it asks for.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::commands::logs::merge;
use crate::commands::select::Target;
use crate::control::protocol::{Request, StatusReport};
use crate::logfiles::{self, Entry, Tail};

/// Log lines kept for the selection: the pane shows the last of them.
const LOG_LINES: usize = 2_000;
/// How much of the selection's log files is read when it is selected,
/// shared among its replicas (16 KiB each at least).
const HISTORY_BYTES: u64 = 1 << 20;

/// One row of the table: a service (its replicas follow) or a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub service: String,
    pub index: Option<u32>,
}

impl Row {
    /// `api` or `api.1`: the target of the control requests.
    pub fn name(&self) -> String {
        match self.index {
            Some(i) => format!("{}.{i}", self.service),
            None => self.service.clone(),
        }
    }
}

/// A control request to send on the user's behalf.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Answered at once with the affected replicas.
    Send(Request),
    /// `restart --rolling` of these targets: one replica at a time.
    Rolling(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    Help,
    /// A question (`stop api.1?`) and what `y` does.
    Confirm(String, Action),
    /// Typing the log filter.
    Filter,
}

/// What a key asks of the loop.
#[derive(Debug, PartialEq)]
pub enum Step {
    Stay,
    Quit,
    /// Carry out the action; the label says what it is (`restart api.1`).
    Run(String, Action),
}

pub struct App {
    pub report: StatusReport,
    pub rows: Vec<Row>,
    pub selected: usize,
    /// First row shown: only the rows that fit are drawn (1000 replicas
    /// cost as much as a screenful).
    pub offset: usize,
    pub logs: Logs,
    pub mode: Mode,
    /// The result of the last action (`false`: an error), or a hint.
    pub message: Option<(String, bool)>,
    /// The last event's line, shown under the header.
    pub last_event: Option<String>,
    /// The supervisor has exited: a banner, and the next key quits.
    pub gone: bool,
    pub colour: bool,
}

impl App {
    pub fn new(report: StatusReport, logs_dir: PathBuf, colour: bool) -> App {
        let mut app = App {
            report,
            rows: Vec::new(),
            selected: 0,
            offset: 0,
            logs: Logs::new(logs_dir),
            mode: Mode::Normal,
            message: None,
            last_event: None,
            gone: false,
            colour,
        };
        app.rows = rows(&app.report);
        // The first replica rather than its service: its log is one stream.
        app.selected = app.rows.iter().position(|r| r.index.is_some()).unwrap_or(0);
        app.logs.show(app.rows.get(app.selected));
        app
    }

    pub fn selection(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }

    /// A new report; the selection stays on the same service or replica
    /// (or the nearest row when it went away).
    pub fn update(&mut self, report: StatusReport) {
        let before = self.selection().cloned();
        self.rows = rows(&report);
        self.report = report;
        let found = before
            .as_ref()
            .and_then(|b| self.rows.iter().position(|r| r == b));
        self.selected =
            found.unwrap_or_else(|| self.selected.min(self.rows.len().saturating_sub(1)));
        if found.is_none() {
            self.logs.show(self.rows.get(self.selected));
        } else {
            // Replicas added to a selected service (scale) are followed too.
            self.logs.follow_new();
        }
    }

    pub fn key(&mut self, key: KeyEvent) -> Step {
        if key.kind == KeyEventKind::Release {
            return Step::Stay;
        }
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        if self.gone || ctrl_c {
            return Step::Quit;
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Help => Step::Stay,
            Mode::Confirm(question, action) => {
                if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                    Step::Run(question.trim_end_matches('?').to_string(), action)
                } else {
                    self.message = Some(("cancelled".into(), true));
                    Step::Stay
                }
            }
            Mode::Filter => {
                match key.code {
                    KeyCode::Enter => {}
                    KeyCode::Esc => self.logs.filter.clear(),
                    KeyCode::Backspace => {
                        self.logs.filter.pop();
                        self.mode = Mode::Filter;
                    }
                    KeyCode::Char(c) => {
                        self.logs.filter.push(c);
                        self.mode = Mode::Filter;
                    }
                    _ => self.mode = Mode::Filter,
                }
                Step::Stay
            }
            Mode::Normal => self.normal_key(key.code),
        }
    }

    fn normal_key(&mut self, code: KeyCode) -> Step {
        let Some(row) = self.selection().cloned() else {
            return match code {
                KeyCode::Char('q') => Step::Quit,
                _ => Step::Stay,
            };
        };
        let name = row.name();
        let targets = vec![name.clone()];
        match code {
            KeyCode::Char('q') => return Step::Quit,
            KeyCode::Char('j') | KeyCode::Down => self.move_to(self.selected.saturating_add(1)),
            KeyCode::Char('k') | KeyCode::Up => self.move_to(self.selected.saturating_sub(1)),
            KeyCode::PageUp => self.logs.scroll_by(10),
            KeyCode::PageDown => self.logs.scroll_by(-10),
            KeyCode::Home => self.logs.scroll = usize::MAX,
            KeyCode::End => self.logs.scroll = 0,
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('/') => self.mode = Mode::Filter,
            KeyCode::Esc => {
                self.logs.filter.clear();
                self.message = None;
            }
            KeyCode::Char('r') => {
                return Step::Run(
                    format!("restart {name}"),
                    Action::Send(Request::Restart { targets }),
                );
            }
            KeyCode::Char('S') => {
                return Step::Run(
                    format!("start {name}"),
                    Action::Send(Request::Start { targets }),
                );
            }
            KeyCode::Char('R') => {
                return Step::Run(
                    format!("rolling restart of {name}"),
                    Action::Rolling(targets),
                );
            }
            KeyCode::Char('s') => {
                self.mode = Mode::Confirm(
                    format!("stop {name}?"),
                    Action::Send(Request::Stop { targets }),
                );
            }
            KeyCode::Char(c @ ('+' | '-')) => {
                let desired = self.desired(&row.service);
                let count = if c == '+' {
                    desired.saturating_add(1)
                } else {
                    desired.saturating_sub(1)
                };
                let label = format!("scale {}={count}", row.service);
                let action = Action::Send(Request::Scale {
                    counts: BTreeMap::from([(row.service.clone(), count)]),
                });
                if count == 0 {
                    self.mode = Mode::Confirm(format!("{label}?"), action);
                } else {
                    return Step::Run(label, action);
                }
            }
            _ => {}
        }
        Step::Stay
    }

    fn desired(&self, service: &str) -> u32 {
        self.report
            .services
            .iter()
            .find(|s| s.name == service)
            .map_or(0, |s| s.desired)
    }

    fn move_to(&mut self, index: usize) {
        let index = index.min(self.rows.len().saturating_sub(1));
        if index != self.selected {
            self.selected = index;
            self.logs.show(self.rows.get(self.selected));
        }
    }

    /// Keeps the selection inside the `height` rows drawn.
    pub fn scroll_table(&mut self, height: usize) {
        if self.selected < self.offset {
            self.offset = self.selected;
        } else if height > 0 && self.selected >= self.offset + height {
            self.offset = self.selected + 1 - height;
        }
        self.offset = self
            .offset
            .min(self.rows.len().saturating_sub(height.max(1)));
    }
}

/// The table's rows: each service, then its replicas.
fn rows(report: &StatusReport) -> Vec<Row> {
    report
        .services
        .iter()
        .flat_map(|s| {
            std::iter::once(Row {
                service: s.name.clone(),
                index: None,
            })
            .chain(s.replicas.iter().map(|r| Row {
                service: s.name.clone(),
                index: Some(r.index),
            }))
        })
        .collect()
}

/// The log pane: the selected replica's lines (a service's: its replicas'
/// merged in time order), read from the log files as `logs -f` reads them.
pub struct Logs {
    dir: PathBuf,
    target: Option<Target>,
    pub title: String,
    pub lines: VecDeque<Entry>,
    tails: BTreeMap<String, Tail>,
    /// Lines up from the newest; 0 follows new lines.
    pub scroll: usize,
    /// Only lines containing this are shown.
    pub filter: String,
}

impl Logs {
    pub fn new(dir: PathBuf) -> Logs {
        Logs {
            dir,
            target: None,
            title: String::new(),
            lines: VecDeque::new(),
            tails: BTreeMap::new(),
            scroll: 0,
            filter: String::new(),
        }
    }

    /// Shows `row`'s log from its last lines on.
    pub fn show(&mut self, row: Option<&Row>) {
        self.tails.clear();
        self.lines.clear();
        self.scroll = 0;
        self.title = row.map(Row::name).unwrap_or_default();
        self.target = row.map(|r| Target {
            service: r.service.clone(),
            index: r.index,
        });
        let matching = self.matching();
        // The recent output only, whatever the size of the files: moving
        // the selection reads at most this much.
        let bytes = (HISTORY_BYTES / matching.len().max(1) as u64).max(16 << 10);
        let mut history = Vec::new();
        for logs in matching {
            let (lines, tail) = Tail::from_last(logs.name.clone(), logs.live, bytes);
            history.extend(lines);
            self.tails.insert(logs.name, tail);
        }
        merge(&mut history);
        self.push(history);
    }

    /// Starts following replicas of the target that have log files now.
    fn follow_new(&mut self) {
        for logs in self.matching() {
            self.tails
                .entry(logs.name.clone())
                .or_insert_with(|| Tail::new(logs.name, logs.live));
        }
    }

    fn matching(&self) -> Vec<logfiles::ReplicaLogs> {
        let Some(target) = &self.target else {
            return Vec::new();
        };
        logfiles::discover(&self.dir)
            .into_values()
            .filter(|l| target.matches(&l.service, l.index))
            .collect()
    }

    /// Reads what was written since; true when there was something.
    pub fn poll(&mut self) -> bool {
        let mut batch: Vec<Entry> = self.tails.values_mut().flat_map(Tail::poll).collect();
        merge(&mut batch);
        let new = !batch.is_empty();
        self.push(batch);
        new
    }

    pub fn push(&mut self, entries: Vec<Entry>) {
        if self.scroll > 0 {
            // Scrolled back: the lines on screen stay where they are.
            self.scroll = self.scroll.saturating_add(entries.len());
        }
        self.lines.extend(entries);
        let extra = self.lines.len().saturating_sub(LOG_LINES);
        self.lines.drain(..extra);
    }

    fn scroll_by(&mut self, lines: isize) {
        self.scroll = self.scroll.saturating_add_signed(lines);
    }

    /// The lines that pass the filter.
    pub fn shown(&self) -> Vec<&Entry> {
        self.lines
            .iter()
            .filter(|e| self.filter.is_empty() || e.text.contains(&self.filter))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::select::tests::report;

    fn key(c: char) -> KeyEvent {
        KeyEvent::from(KeyCode::Char(c))
    }

    fn app() -> App {
        let dir = tempfile::tempdir().unwrap();
        App::new(
            report(&[("db", &["running"]), ("api", &["running", "backoff"])]),
            dir.path().to_path_buf(),
            false,
        )
    }

    #[test]
    fn keys_move_the_selection_and_ask_for_the_cli_requests() {
        let mut a = app();
        assert_eq!(a.selection().unwrap().name(), "db.0");
        a.key(key('j'));
        a.key(key('j'));
        assert_eq!(a.selection().unwrap().name(), "api.0");
        assert_eq!(
            a.key(key('r')),
            Step::Run(
                "restart api.0".into(),
                Action::Send(Request::Restart {
                    targets: vec!["api.0".into()]
                })
            )
        );
        // Stop asks first; anything but y cancels.
        assert_eq!(a.key(key('s')), Step::Stay);
        assert!(matches!(a.mode, Mode::Confirm(..)));
        assert_eq!(a.key(key('n')), Step::Stay);
        assert_eq!(a.mode, Mode::Normal);
        a.key(key('s'));
        assert!(matches!(a.key(key('y')), Step::Run(label, _) if label == "stop api.0"));
        // One up is the service row: + scales it from its desired count.
        a.key(key('k'));
        assert_eq!(
            a.key(key('+')),
            Step::Run(
                "scale api=3".into(),
                Action::Send(Request::Scale {
                    counts: BTreeMap::from([("api".into(), 3)])
                })
            )
        );
        assert_eq!(a.key(key('q')), Step::Quit);
    }

    #[test]
    fn scaling_to_zero_asks_first() {
        let mut a = app();
        assert_eq!(a.key(key('-')), Step::Stay);
        assert_eq!(
            a.mode,
            Mode::Confirm(
                "scale db=0?".into(),
                Action::Send(Request::Scale {
                    counts: BTreeMap::from([("db".into(), 0)])
                })
            )
        );
    }

    #[test]
    fn the_log_scrolls_back_stays_put_as_lines_come_and_end_follows_again() {
        let mut a = app();
        let line = |n: usize| Entry {
            at: format!("2026-11-23T12:00:{:02}.000000Z", n % 60),
            replica: "db.0".into(),
            stream: "out".into(),
            text: format!("line {n}"),
        };
        a.logs.push((0..50).map(line).collect());
        assert_eq!(a.logs.scroll, 0);
        a.key(KeyEvent::from(KeyCode::PageUp));
        assert_eq!(a.logs.scroll, 10);
        a.logs.push((50..55).map(line).collect());
        assert_eq!(a.logs.scroll, 15, "the lines on screen stay where they are");
        a.key(KeyEvent::from(KeyCode::End));
        assert_eq!(a.logs.scroll, 0);
        a.key(key('/'));
        for c in "line 5".chars() {
            a.key(key(c));
        }
        a.key(KeyEvent::from(KeyCode::Enter));
        assert_eq!(a.mode, Mode::Normal);
        let shown: Vec<&str> = a.logs.shown().iter().map(|e| e.text.as_str()).collect();
        assert_eq!(
            shown,
            [
                "line 5", "line 50", "line 51", "line 52", "line 53", "line 54"
            ]
        );
        a.key(KeyEvent::from(KeyCode::Esc));
        assert_eq!(a.logs.shown().len(), 55);
    }

    #[test]
    fn the_selection_follows_its_replica_across_reports() {
        let mut a = app();
        a.move_to(4); // api.1
        a.update(report(&[("api", &["running", "running"])]));
        assert_eq!(a.selection().unwrap().name(), "api.1");
    }
}
