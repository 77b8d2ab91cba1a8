//! The Prometheus endpoint (`[supervisor] metrics`).
//! STUB: the interface the event loop uses; the implementation is in progress.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::control::protocol::{EventRecord, StatusReport};

#[derive(Default)]
pub struct Metrics {}

impl Metrics {
    /// The current state of every service and replica.
    pub fn update(&self, _report: &StatusReport) {}

    /// Counts what the status cannot show (failovers).
    pub fn on_event(&self, _event: &EventRecord) {}

    /// One health probe took this long.
    pub fn probe_duration(&self, _service: &str, _seconds: f64) {}
}

/// Serves `GET /metrics` on `addr` until the process exits.
pub fn serve(_addr: SocketAddr, _metrics: Arc<Metrics>) -> std::io::Result<()> {
    Ok(())
}
