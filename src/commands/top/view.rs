//! Draws an [`App`]: header, replicas table, log pane, status line, and the
//! help or "supervisor gone" overlays.

use std::collections::BTreeMap;
use std::time::SystemTime;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Table, Wrap};

use super::app::{App, Mode};
use crate::commands::format::{Cells, age, compact, millis};

const HEADER: [&str; 10] = crate::commands::format::CELL_HEADINGS;

/// Every key, as the help overlay lists them.
pub const KEYS: [(&str, &str); 14] = [
    ("j k ↓ ↑", "select a service or replica"),
    ("r", "restart the selection"),
    ("s", "stop it (asks first)"),
    ("S", "start it"),
    ("R", "rolling restart, one replica at a time"),
    ("+ -", "scale the service up or down (0 asks first)"),
    ("PgUp PgDn", "scroll the log"),
    ("Home End", "oldest kept line; follow new lines"),
    ("/", "filter the log (Enter keeps, Esc clears)"),
    ("Esc", "clear the filter and the message"),
    ("?", "this help (any key closes it)"),
    ("q Ctrl-C", "quit"),
    ("", ""),
    ("", "colours: failed red, backoff yellow, starting cyan"),
];

pub fn draw(frame: &mut Frame, app: &mut App, now: SystemTime) {
    // A long message (an error naming a path) gets a second line.
    let long = app
        .message
        .as_ref()
        .is_some_and(|(text, _)| text.chars().count() > usize::from(frame.area().width));
    let [header, table, logs, status] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(4),
        Constraint::Percentage(40),
        Constraint::Length(if long { 2 } else { 1 }),
    ])
    .areas(frame.area());
    draw_header(frame, app, header, now);
    draw_table(frame, app, table, now);
    draw_logs(frame, app, logs);
    draw_status(frame, app, status);
    if app.mode == Mode::Help {
        draw_help(frame, app);
    }
    if app.gone {
        draw_gone(frame, app);
    }
}

fn fg(app: &App, colour: Color) -> Style {
    if app.colour {
        Style::new().fg(colour)
    } else {
        Style::new()
    }
}

/// The colour of a state or health: red broken, yellow waiting or sick,
/// cyan on its way, green well, dim at rest.
fn state_style(app: &App, state: &str) -> Style {
    match state {
        "failed" => fg(app, Color::Red),
        "backoff" | "unhealthy" | "degraded" | "stopping" => fg(app, Color::Yellow),
        "starting" | "pending" => fg(app, Color::Cyan),
        "running" | "healthy" | "completed" => fg(app, Color::Green),
        "stopped" | "exited" => Style::new().add_modifier(Modifier::DIM),
        _ => Style::new(),
    }
}

fn draw_header(frame: &mut Frame, app: &App, area: Rect, now: SystemTime) {
    let sup = &app.report.supervisor;
    let uptime = age(&sup.started_at, now).map_or_else(|| "-".into(), |d| compact(d, 2));
    let bold = Style::new().add_modifier(Modifier::BOLD);
    let first = Line::from(vec![
        Span::styled("supervise top", bold),
        Span::raw(format!(
            "  {}  supervisor pid {}, up {uptime}  state dir {}",
            sup.spec, sup.pid, sup.state_dir
        )),
    ]);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut total = 0;
    for r in app.report.services.iter().flat_map(|s| &s.replicas) {
        *counts.entry(r.state.as_str()).or_default() += 1;
        total += 1;
    }
    let mut second = vec![Span::raw(format!(
        "{} services, {total} replicas:",
        app.report.services.len()
    ))];
    for (state, n) in counts {
        second.push(Span::raw(" "));
        second.push(Span::styled(
            format!("{n} {state}"),
            state_style(app, state),
        ));
    }
    if let Some(event) = &app.last_event {
        second.push(Span::styled(
            format!("   last: {}", printable(event)),
            Style::new().add_modifier(Modifier::DIM),
        ));
    }
    frame.render_widget(Paragraph::new(vec![first, Line::from(second)]), area);
}

fn draw_table(frame: &mut Frame, app: &mut App, area: Rect, now: SystemTime) {
    // One line is the header row; only the rows that fit are built.
    let height = usize::from(area.height.saturating_sub(1));
    app.scroll_table(height);
    let mut rows = Vec::new();
    for (i, row) in app.rows.iter().enumerate().skip(app.offset).take(height) {
        let Some(service) = app.report.services.iter().find(|s| s.name == row.service) else {
            continue;
        };
        let mut line = match row.index {
            None => {
                let running = service
                    .replicas
                    .iter()
                    .filter(|r| r.state == "running")
                    .count();
                Row::new(vec![
                    Cell::from(format!("{} {running}/{}", service.name, service.desired)),
                    Cell::from(""),
                    Cell::from(service.state.as_str()).style(state_style(app, &service.state)),
                ])
                .style(Style::new().add_modifier(Modifier::BOLD))
            }
            Some(index) => {
                let Some(r) = service.replicas.iter().find(|r| r.index == index) else {
                    continue;
                };
                let c = Cells::of(&service.name, r, now);
                let state = state_style(app, &c.state);
                let health = state_style(app, &c.health);
                Row::new(vec![
                    Cell::from(format!("  {}", c.replica)),
                    Cell::from(c.pid),
                    Cell::from(c.state).style(state),
                    Cell::from(c.health).style(health),
                    Cell::from(c.role),
                    Cell::from(c.restarts),
                    Cell::from(c.uptime),
                    Cell::from(c.cpu),
                    Cell::from(c.memory),
                    Cell::from(c.last_exit),
                ])
            }
        };
        if i == app.selected {
            // Without colour, reverse video; with it, a grey bar that
            // keeps the states' colours readable.
            line = line.style(if app.colour {
                Style::new().bg(Color::Indexed(237))
            } else {
                Style::new().add_modifier(Modifier::REVERSED)
            });
        }
        rows.push(line);
    }
    let name_width = app
        .rows
        .iter()
        .map(|r| r.name().len() + 6)
        .max()
        .unwrap_or(8)
        .max(HEADER[0].len()) as u16;
    let widths = [
        Constraint::Length(name_width),
        Constraint::Length(8),
        Constraint::Length(10),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Min(10),
    ];
    let header =
        Row::new(HEADER).style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    frame.render_widget(Table::new(rows, widths).header(header), area);
}

fn draw_logs(frame: &mut Frame, app: &App, area: Rect) {
    let logs = &app.logs;
    let shown = logs.shown();
    let height = usize::from(area.height.saturating_sub(2));
    let scroll = logs.scroll.min(shown.len().saturating_sub(height));
    let end = shown.len() - scroll;
    let start = end.saturating_sub(height);
    let lines: Vec<Line> = shown[start..end]
        .iter()
        .map(|e| {
            let time = millis(&e.at);
            let time = time.get(11..23).unwrap_or(&time);
            Line::from(vec![
                Span::styled(format!("{} ", e.replica), fg(app, Color::Cyan)),
                Span::styled(format!("{time} "), Style::new().add_modifier(Modifier::DIM)),
                Span::raw(printable(&e.text)),
            ])
        })
        .collect();
    let mut title = format!(" log of {} ", logs.title);
    title.push_str(if scroll == 0 {
        "(following) "
    } else {
        "(scrolled back: End follows) "
    });
    if !logs.filter.is_empty() || app.mode == Mode::Filter {
        title.push_str(&format!("/{} ", logs.filter));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(title)),
        area,
    );
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let line = match (&app.mode, &app.message) {
        (Mode::Confirm(question, _), _) => Line::styled(
            format!("{question} y/N"),
            fg(app, Color::Yellow).add_modifier(Modifier::BOLD),
        ),
        (Mode::Filter, _) => Line::raw(format!("/{}▏ Enter keep, Esc clear", app.logs.filter)),
        (_, Some((text, ok))) => Line::styled(
            printable(text),
            fg(app, if *ok { Color::Green } else { Color::Red }),
        ),
        _ => Line::styled(
            "q quit  ? help  r restart  s stop  S start  +/- scale  R rolling  / filter",
            Style::new().add_modifier(Modifier::DIM),
        ),
    };
    frame.render_widget(Paragraph::new(line).wrap(Wrap { trim: true }), area);
}

/// A box of `width` × `height` in the middle of the screen.
fn centred(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}

fn draw_help(frame: &mut Frame, app: &App) {
    let lines: Vec<Line> = KEYS
        .iter()
        .map(|(key, what)| {
            Line::from(vec![
                Span::styled(
                    format!("{key:>10}  "),
                    fg(app, Color::Cyan).add_modifier(Modifier::BOLD),
                ),
                Span::raw(*what),
            ])
        })
        .collect();
    let area = centred(frame.area(), 64, KEYS.len() as u16 + 2);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" keys ")),
        area,
    );
}

fn draw_gone(frame: &mut Frame, app: &App) {
    let area = centred(frame.area(), 60, 3);
    frame.render_widget(Clear, area);
    let text = Line::styled(
        "The supervisor has exited. Press any key to quit.",
        fg(app, Color::Red).add_modifier(Modifier::BOLD),
    );
    frame.render_widget(Paragraph::new(text).block(Block::bordered()), area);
}

/// A replica's output never reaches the terminal as control sequences.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '�' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::format::parse_time;
    use crate::commands::select::tests::report;
    use crate::control::protocol::LastExit;
    use crate::logfiles::Entry;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn screen(app: &mut App, width: u16, height: u16) -> Vec<String> {
        let now = parse_time("2026-11-23T12:03:12Z").unwrap();
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app, now)).unwrap();
        let buffer = terminal.backend().buffer();
        (0..height)
            .map(|y| {
                (0..width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    fn known_state() -> App {
        let mut r = report(&[("db", &["running"]), ("api", &["running", "backoff"])]);
        r.supervisor.pid = 4242;
        r.supervisor.spec = "/srv/app/supervise.toml".into();
        r.supervisor.state_dir = "/srv/app/.supervise".into();
        r.supervisor.started_at = "2026-11-23T12:00:00Z".into();
        r.services[1].state = "degraded".into();
        let api0 = &mut r.services[1].replicas[0];
        api0.started_at = Some("2026-11-23T12:02:00Z".into());
        api0.restarts = 2;
        api0.cpu_percent = Some(12.5);
        api0.memory_bytes = Some(12_900_000);
        r.services[1].replicas[1].last_exit = Some(LastExit {
            code: None,
            signal: Some("SIGKILL".into()),
            at: "2026-11-23T12:03:07Z".into(),
            reason: None,
        });
        let dir = tempfile::tempdir().unwrap();
        let mut app = App::new(r, dir.path().to_path_buf(), false);
        app.logs.push(vec![Entry {
            at: "2026-11-23T12:03:10.123456Z".into(),
            replica: "db.0".into(),
            stream: "out".into(),
            text: "ready\x1b[2J to serve".into(),
        }]);
        app.last_event = Some("api.1 exited (SIGKILL); restart 1 in 1s".into());
        app
    }

    #[test]
    fn a_known_state_draws_as_this_snapshot() {
        let mut app = known_state();
        let lines = screen(&mut app, 100, 16);
        let expected = [
            "supervise top  /srv/app/supervise.toml  supervisor pid 4242, up 3m12s  state dir /srv/app/.supervise",
            "2 services, 3 replicas: 1 backoff 2 running   last: api.1 exited (SIGKILL); restart 1 in 1s",
            "REPLICA     PID      STATE      HEALTH    ROLE    RESTARTS UPTIME  CPU    MEM     LAST EXIT",
            "db 1/1               running",
            "  db.0      1000     running    healthy   -       0        -       -      -       -",
            "api 1/2              degraded",
            "  api.0     1000     running    healthy   -       2        1m12s   12.5%  12.3MiB -",
            "  api.1     -        backoff    unknown   -       0        -       -      -       SIGKILL (5s ago)",
            "",
            "┌ log of db.0 (following) ─────────────────────────────────────────────────────────────────────────┐",
            "│db.0 12:03:10.123 ready�[2J to serve                                                              │",
            "│                                                                                                  │",
            "│                                                                                                  │",
            "│                                                                                                  │",
            "└──────────────────────────────────────────────────────────────────────────────────────────────────┘",
            "q quit  ? help  r restart  s stop  S start  +/- scale  R rolling  / filter",
        ];
        assert_eq!(lines, expected, "\n{}", lines.join("\n"));
    }

    #[test]
    fn states_are_coloured_unless_colour_is_off_and_the_filter_hides_lines() {
        let now = parse_time("2026-11-23T12:03:12Z").unwrap();
        for colour in [true, false] {
            let mut app = known_state();
            app.colour = colour;
            let mut terminal = Terminal::new(TestBackend::new(100, 16)).unwrap();
            terminal.draw(|f| draw(f, &mut app, now)).unwrap();
            let buffer = terminal.backend().buffer();
            // Row 7 is api.1, in backoff; STATE starts at column 21.
            assert_eq!(buffer[(21, 7)].symbol(), "b");
            let expected = if colour { Color::Yellow } else { Color::Reset };
            assert_eq!(buffer[(21, 7)].fg, expected);
        }
        let mut app = known_state();
        app.logs.filter = "nothing like it".into();
        let lines = screen(&mut app, 100, 16).join("\n");
        assert!(!lines.contains("ready"), "{lines}");
        assert!(
            lines.contains("log of db.0 (following) /nothing like it"),
            "{lines}"
        );
    }

    #[test]
    fn overlays_and_a_long_table_scrolled_to_the_selection() {
        let mut app = known_state();
        app.mode = Mode::Help;
        let lines = screen(&mut app, 100, 24).join("\n");
        assert!(
            lines.contains("rolling restart, one replica at a time"),
            "{lines}"
        );
        app.mode = Mode::Normal;
        app.gone = true;
        let lines = screen(&mut app, 100, 24).join("\n");
        assert!(
            lines.contains("The supervisor has exited. Press any key to quit."),
            "{lines}"
        );

        let many: Vec<&str> = vec!["running"; 1000];
        let dir = tempfile::tempdir().unwrap();
        let mut app = App::new(report(&[("web", &many)]), dir.path().to_path_buf(), false);
        app.selected = 900;
        let lines = screen(&mut app, 100, 30);
        assert!(
            lines.iter().any(|l| l.starts_with("  web.899")),
            "{lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("  web.0 ")),
            "{lines:#?}"
        );
    }
}
