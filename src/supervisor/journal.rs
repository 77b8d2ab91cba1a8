//! The supervisor's event journal: recent events for `events`, and a live
//! stream for `events -f` and `wait`. Bounded: old events fall off the end,
//! and a reader that cannot keep up skips ahead instead of holding memory.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::control::protocol::EventRecord;

/// Events kept for `events` without `-f`.
const HISTORY: usize = 1000;

/// Events are shared, not copied, between the history and the stream. The
/// stream's buffer is allocated whole when it is made: slots of a pointer
/// each, not of a record, keep it at a fifth of the size (it was the
/// largest single allocation of an idle supervisor, 148 KiB).
pub struct Journal {
    history: VecDeque<Arc<EventRecord>>,
    live: broadcast::Sender<Arc<EventRecord>>,
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
        let record = Arc::new(record);
        self.history.push_back(record.clone());
        // No subscriber is not an error.
        let _ = self.live.send(record);
    }

    pub fn history(&self) -> Vec<Arc<EventRecord>> {
        self.history.iter().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.live.subscribe()
    }
}

/// RFC 3339 UTC with milliseconds, as in `status --json` and events.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
