//! `supervise top`: a full-screen view of a running supervisor (docs/commands.md
//! §19). It follows the event stream and asks for a status report after
//! each burst of events and at most once a second besides (for uptimes and
//! CPU/memory); the screen is drawn only when something changed, and
//! ratatui writes only the cells that differ. Actions are the control
//! requests the CLI sends, each in its own thread so the screen stays live.

mod app;
mod view;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event};

use crate::cli::Cli;
use crate::control::client::{self, ClientError, Connection, Next};
use crate::control::protocol::{EventRecord, Request, StatusReport};
use crate::exit;
use crate::progress::Progress;
use crate::state_dir::StateDir;

use super::format::colour_allowed;
use super::{Exit, Failure, act, context};
use app::{Action, App, Step};

/// Bound on the time between two status reports (ages, CPU, memory).
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// How often the log files of the selection are looked at (as `logs -f`).
const LOGS_EVERY: Duration = Duration::from_millis(200);
/// Bound on the wait for each answer of the supervisor.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on a rolling restart from `top`, per replica (as `restart --rolling`).
const ROLLING_TIMEOUT: Duration = Duration::from_secs(60);

/// What wakes the loop.
enum Msg {
    Input(Event),
    Event(EventRecord),
    /// The event stream ended: the supervisor is gone.
    StreamEnded,
    /// An action's outcome, for the status line.
    Done(Result<String, String>),
    /// SIGTERM or SIGHUP: quit, restoring the terminal.
    Signal,
    /// A status report asked for, or why there is none.
    Report(Result<StatusReport, ClientError>),
}

pub fn run(cli: &Cli) -> Exit {
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(Failure::new(
            exit::USAGE,
            "top needs a terminal; in scripts and pipes use `supervise status` or \
             `supervise events -f`",
        ));
    }
    // Everything that can fail for want of a supervisor fails here, before
    // the screen is taken over.
    // A supervisor that does not answer is named on the status line soon.
    client::set_reply_timeout(REPLY_TIMEOUT);
    let ctx = context(cli)?;
    let dir = ctx.state_dir;
    let report = client::status(&dir)?;
    let mut events = client::connect(&dir)?;
    events.request_accepted(Request::Events { follow: true })?;

    let (tx, rx) = mpsc::channel();
    spawn_events(events, tx.clone());
    spawn_input(tx.clone());
    spawn_signals(tx.clone())?;
    let logs = StateDir::new(dir.clone()).logs();
    let mut app = App::new(report, logs, colour_allowed(true));
    // Restores the terminal on a panic too (its hook).
    let mut terminal = ratatui::try_init()
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot set up the terminal: {e}")))?;
    let reports = spawn_reports(dir.clone(), tx.clone());
    let result = watch(&mut terminal, &mut app, &dir, &rx, &tx, &reports);
    ratatui::restore();
    result
}

fn watch(
    terminal: &mut DefaultTerminal,
    app: &mut App,
    dir: &Path,
    rx: &Receiver<Msg>,
    tx: &Sender<Msg>,
    reports: &Sender<()>,
) -> Exit {
    let draw_failed = |e: std::io::Error| Failure::new(exit::FAILED, format!("cannot draw: {e}"));
    let mut dirty = true;
    let mut next_status = Instant::now() + STATUS_EVERY;
    let mut next_logs = Instant::now() + LOGS_EVERY;
    loop {
        if dirty {
            terminal
                .draw(|f| view::draw(f, app, SystemTime::now()))
                .map_err(draw_failed)?;
            dirty = false;
        }
        let wake = next_status.min(next_logs);
        let first = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(msg) => Some(msg),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return Ok(exit::OK),
        };
        // A burst (the history, a service starting) costs one report.
        let mut refresh = false;
        for msg in first.into_iter().chain(rx.try_iter()) {
            dirty = true;
            match msg {
                Msg::Input(Event::Key(key)) => match app.key(key) {
                    Step::Stay => {}
                    Step::Quit if app.gone => return Ok(exit::NO_SUPERVISOR),
                    Step::Quit => return Ok(exit::OK),
                    Step::Run(label, action) => {
                        app.message = Some((format!("{label}…"), true));
                        spawn_action(dir.to_path_buf(), label, action, tx.clone());
                    }
                },
                Msg::Input(_) => {} // a resize: drawn again at its new size
                Msg::Event(record) => {
                    app.last_event = Some(record.detail);
                    refresh = true;
                }
                Msg::StreamEnded => app.gone = true,
                Msg::Signal => return Ok(exit::OK),
                Msg::Done(result) => {
                    app.message = Some(match result {
                        Ok(text) => (text, true),
                        Err(text) => (text, false),
                    });
                    refresh = true;
                }
                Msg::Report(Ok(report)) => app.update(report),
                Msg::Report(Err(ClientError::NoSupervisor(_))) => app.gone = true,
                Msg::Report(Err(e)) => app.message = Some((e.to_string(), false)),
            }
        }
        let now = Instant::now();
        if (refresh || now >= next_status) && !app.gone {
            let _ = reports.send(());
            next_status = now + STATUS_EVERY;
            dirty = true;
        }
        if now >= next_logs {
            dirty |= app.logs.poll();
            next_logs = now + LOGS_EVERY;
        }
    }
}

/// Asks for a status report each time it is told to, in a thread of its
/// own: a supervisor that is slow to answer (stopped with SIGSTOP, say)
/// never holds up the keys or the screen. Requests that pile up meanwhile
/// make one report.
fn spawn_reports(dir: PathBuf, tx: Sender<Msg>) -> Sender<()> {
    let (ask, asked) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        while asked.recv().is_ok() {
            while asked.try_recv().is_ok() {}
            if tx.send(Msg::Report(client::status(&dir))).is_err() {
                return;
            }
        }
    });
    ask
}

fn spawn_events(mut conn: Connection, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        loop {
            let msg = match conn.next_event(None) {
                Ok(Next::Item((record, _))) => Msg::Event(record),
                Ok(Next::TimedOut) => continue,
                Ok(Next::Closed) | Err(_) => Msg::StreamEnded,
            };
            let ended = matches!(msg, Msg::StreamEnded);
            if tx.send(msg).is_err() || ended {
                return;
            }
        }
    });
}

fn spawn_input(tx: Sender<Msg>) {
    std::thread::spawn(move || {
        while let Ok(input) = event::read() {
            if tx.send(Msg::Input(input)).is_err() {
                return;
            }
        }
    });
}

/// SIGINT comes as Ctrl-C on the keyboard (raw mode); these would end the
/// process with the terminal still raw.
fn spawn_signals(tx: Sender<Msg>) -> Result<(), Failure> {
    use signal_hook::consts::{SIGHUP, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP])
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot handle signals: {e}")))?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = tx.send(Msg::Signal);
        }
    });
    Ok(())
}

/// What an action did, with the supervisor's warning about it if any.
fn warned(done: String, warning: Option<String>) -> String {
    match warning {
        Some(warning) => format!("{done}; warning: {warning}"),
        None => done,
    }
}

fn spawn_action(dir: PathBuf, label: String, action: Action, tx: Sender<Msg>) {
    std::thread::spawn(move || {
        let result = match action {
            Action::Send(request) => client::affected(&dir, request)
                .map(|affected| {
                    let done = match affected.replicas.as_slice() {
                        [] => format!("{label}: nothing to change"),
                        names => format!("{label}: {}", names.join(", ")),
                    };
                    warned(done, affected.warning)
                })
                .map_err(|e| format!("{label}: {e}")),
            Action::Rolling(targets) => {
                act::rolling_restart(&dir, &targets, ROLLING_TIMEOUT, &mut Progress::new(true))
                    .map(|(_, warning)| warned(format!("{label}: done"), warning))
                    .map_err(|f| format!("{label}: {}", f.message.unwrap_or_default()))
            }
        };
        let _ = tx.send(Msg::Done(result));
    });
}
