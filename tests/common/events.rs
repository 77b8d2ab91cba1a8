//! A supervisor's events as records (`events --json -f` over the control
//! socket), for tests that assert on facts (which event, which replica,
//! which pid, how many) rather than on the wording of the display.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Lines, SOON, wait_until};

/// The request that follows the events: the history (the last 1000), then live.
const FOLLOW: &[u8] = b"{\"version\":1,\"request\":{\"type\":\"events\",\"follow\":true}}\n";

/// One event record, with the moment it reached the test.
#[derive(Debug, Clone)]
pub struct Event {
    /// Its position in the stream.
    pub index: usize,
    pub arrived: Instant,
    pub event: String,
    pub service: Option<String>,
    pub replica: Option<u32>,
    pub pid: Option<i32>,
    pub detail: String,
    /// The record as sent.
    pub json: serde_json::Value,
}

impl Event {
    fn parse(index: usize, arrived: Instant, line: &str) -> Event {
        let json: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: event record {line:?}"));
        Event {
            index,
            arrived,
            event: json["event"].as_str().unwrap_or_default().to_string(),
            service: json["service"].as_str().map(str::to_string),
            replica: json["replica"].as_u64().map(|r| r as u32),
            pid: json["pid"].as_i64().map(|p| p as i32),
            detail: json["detail"].as_str().unwrap_or_default().to_string(),
            json,
        }
    }

    /// Whether it is about `who`: a replica (`web.0`), any replica of a
    /// service (`web`), or nothing in particular (`""`).
    pub fn concerns(&self, who: &str) -> bool {
        if who.is_empty() {
            return true;
        }
        match who.rsplit_once('.') {
            Some((service, index)) if index.parse::<u32>().is_ok() => {
                self.service.as_deref() == Some(service) && self.replica == index.parse().ok()
            }
            _ => self.service.as_deref() == Some(who),
        }
    }

    /// Whether it is a `kind` event about `who` (see [`Event::concerns`]).
    pub fn is(&self, kind: &str, who: &str) -> bool {
        self.event == kind && self.concerns(who)
    }

    /// The replica it is about, as `web.0`.
    pub fn name(&self) -> String {
        match (&self.service, self.replica) {
            (Some(s), Some(r)) => format!("{s}.{r}"),
            (Some(s), None) => s.clone(),
            _ => String::new(),
        }
    }
}

/// A follower of one supervisor's events, read by a thread of its own.
pub struct EventStream {
    lines: Arc<Lines>,
    connection: UnixStream,
}

impl EventStream {
    /// Follows the supervisor of `state_dir`, waiting (bounded) for its
    /// control socket to answer.
    pub fn follow(state_dir: &Path) -> Result<EventStream, String> {
        let socket = state_dir.join("control.sock");
        let mut connection = None;
        wait_until(SOON, || {
            connection = UnixStream::connect(&socket).ok();
            connection.is_some()
        });
        let mut connection =
            connection.ok_or_else(|| format!("no control socket at {}", socket.display()))?;
        connection.write_all(FOLLOW).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(connection.try_clone().map_err(|e| e.to_string())?);
        let mut accepted = String::new();
        connection
            .set_read_timeout(Some(SOON))
            .map_err(|e| e.to_string())?;
        reader.read_line(&mut accepted).map_err(|e| e.to_string())?;
        connection
            .set_read_timeout(None)
            .map_err(|e| e.to_string())?;
        if !accepted.contains("\"accepted\"") {
            return Err(format!("the events request was answered {accepted:?}"));
        }
        Ok(EventStream {
            lines: Lines::reading(reader),
            connection,
        })
    }

    /// Every record so far.
    pub fn records(&self) -> Vec<Event> {
        self.lines
            .snapshot()
            .iter()
            .map(|l| Event::parse(l.index, l.at, &l.text))
            .collect()
    }

    /// The records so far that satisfy `pred`.
    pub fn matching(&self, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        self.records().into_iter().filter(|e| pred(e)).collect()
    }

    /// How many `kind` events of `who` there were so far.
    pub fn count(&self, kind: &str, who: &str) -> usize {
        self.matching(|e| e.is(kind, who)).len()
    }

    /// The first record at or after position `from` that satisfies `pred`,
    /// waiting for it until `timeout` has passed (or the stream has ended).
    pub fn wait_from(
        &self,
        from: usize,
        timeout: Duration,
        pred: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        let line = self.lines.wait_from(from, timeout, |text| {
            pred(&Event::parse(0, Instant::now(), text))
        })?;
        Some(Event::parse(line.index, line.at, &line.text))
    }

    /// As [`EventStream::wait_from`], panicking with every record on timeout.
    #[track_caller]
    pub fn expect_from(
        &self,
        from: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        self.wait_from(from, timeout, pred).unwrap_or_else(|| {
            panic!(
                "no event {what} within {timeout:?}; the events:\n{}",
                self.dump()
            )
        })
    }

    /// Waits for a `kind` event of `who`.
    #[track_caller]
    pub fn expect(&self, kind: &str, who: &str) -> Event {
        self.expect_from(0, SOON, &format!("{kind} {who}"), |e| e.is(kind, who))
    }

    /// Waits for a `kind` event of `who` after `after`.
    #[track_caller]
    pub fn expect_after(&self, after: &Event, kind: &str, who: &str) -> Event {
        self.expect_from(after.index + 1, SOON, &format!("{kind} {who}"), |e| {
            e.is(kind, who)
        })
    }

    /// Waits for `replica` to be spawned; returns its pid.
    #[track_caller]
    pub fn spawned(&self, replica: &str) -> i32 {
        self.expect("spawned", replica)
            .pid
            .expect("a spawned event has a pid")
    }

    /// The records, one a line, for failure messages.
    pub fn dump(&self) -> String {
        self.lines.texts().join("\n")
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        // Ends the reader thread.
        let _ = self.connection.shutdown(std::net::Shutdown::Both);
    }
}
