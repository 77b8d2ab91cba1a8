//! `supervise down`: ask the supervisor to stop everything and exit, and
//! return once it has (the supervisor holds the connection open until it
//! exits, so the end of the connection is the signal).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::{Cli, DownArgs};
use crate::control::client::{self, ClientError};
use crate::control::protocol::Request;
use crate::exit;

use super::{Exit, Failure, context, emit};

/// Time allowed beyond the shutdown timeout for killing what is left and exiting.
const MARGIN: Duration = Duration::from_secs(10);

pub fn run(cli: &Cli, args: &DownArgs) -> Exit {
    let ctx = context(cli)?;
    let mut conn = client::connect(&ctx.state_dir)?;
    let asked = Instant::now();
    match conn.request_accepted(Request::Down {
        timeout_ms: args.timeout.map(|t| t.as_millis() as u64),
    }) {
        Ok(()) => {}
        // A supervisor with nothing left to stop may exit before its reply
        // is written: gone is what was asked for.
        Err(ClientError::Closed) if gone(&ctx.state_dir) => {}
        Err(e) => return Err(e.into()),
    }
    // The supervisor's own bound: --timeout, else the spec's shutdown_timeout
    // (unknown with --state-dir: the supervisor still applies its own).
    let limit = args.timeout.or(ctx.shutdown_timeout);
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if !conn.wait_closed(limit.map(|l| asked + l + MARGIN))? {
        return Err(Failure::new(
            exit::TIMEOUT,
            format!(
                "the supervisor of {} is still shutting down after {}",
                ctx.state_dir.display(),
                show(asked.elapsed())
            ),
        ));
    }
    // At the limit the supervisor kills what is left, then exits: a down
    // that took that long did not complete gracefully.
    if let Some(limit) = limit.filter(|&l| asked.elapsed() >= l) {
        return Err(Failure::new(
            exit::TIMEOUT,
            format!(
                "not every replica stopped within {}; the supervisor killed the rest and exited",
                show(limit)
            ),
        ));
    }
    if !cli.quiet {
        let line = format!(
            "supervisor of {} stopped in {}",
            ctx.state_dir.display(),
            show(Duration::from_millis(asked.elapsed().as_millis() as u64))
        );
        emit(&mut std::io::stdout().lock(), &line)?;
    }
    Ok(exit::OK)
}

/// Whether the supervisor of `state_dir` has exited (its socket stops
/// answering within a moment).
fn gone(state_dir: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if matches!(
            client::connect(state_dir),
            Err(ClientError::NoSupervisor(_))
        ) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
