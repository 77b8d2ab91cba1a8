//! `[[alerts]]`: delivering events to commands and webhooks (SPEC.md §1).
//! STUB: the interface the event loop uses; the implementation is in progress.

use crate::control::protocol::EventRecord;
use crate::reaper::Reaper;
use crate::spec::Spec;

pub struct Alerts {}

impl Alerts {
    /// Starts delivery for the spec's `[[alerts]]` (nothing when there are none).
    pub fn start(_spec: &Spec, _reaper: Reaper) -> Alerts {
        Alerts {}
    }

    /// Hands an event over for delivery; never blocks, never fails.
    pub fn on_event(&self, _event: &EventRecord) {}
}
