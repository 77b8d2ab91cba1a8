//! The supervisor's event journal: recent events for `events`, and a live
//! stream for `events -f` and `wait`. Bounded: old events fall off the end,
//! and a reader that cannot keep up skips ahead instead of holding memory.

use std::collections::VecDeque;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::control::protocol::EventRecord;

/// Events kept for `events` without `-f`.
const HISTORY: usize = 1000;

pub struct Journal {
    history: VecDeque<EventRecord>,
    live: broadcast::Sender<EventRecord>,
}

impl Journal {
    pub fn new() -> Journal {
        Journal {
            history: VecDeque::with_capacity(64),
            live: broadcast::channel(1024).0,
        }
    }

    pub fn push(&mut self, record: EventRecord) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(record.clone());
        // No subscriber is not an error.
        let _ = self.live.send(record);
    }

    pub fn history(&self) -> Vec<EventRecord> {
        self.history.iter().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.live.subscribe()
    }
}

/// RFC 3339 UTC with milliseconds, as in `status --json` and events.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
