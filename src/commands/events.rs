//! `supervise events [--json] [-f]`: the supervisor's event history, then
//! (following) live events until it exits.

use crate::cli::{Cli, EventsArgs};
use crate::control::client::{self, Next};
use crate::control::protocol::Request;
use crate::exit;

use super::format::millis;
use super::{Exit, context, emit};

pub fn run(cli: &Cli, args: &EventsArgs) -> Exit {
    client::set_reply_timeout(args.answer.timeout);
    let ctx = context(cli)?;
    let mut conn = client::connect(&ctx.state_dir)?;
    conn.request_accepted(Request::Events {
        follow: args.follow,
    })?;
    // Stdout is line-buffered: each event shows as it comes.
    let mut out = std::io::stdout().lock();
    loop {
        match conn.next_event(None)? {
            Next::Item((record, line)) => {
                let text = if args.json {
                    line
                } else {
                    format!("{} {}", millis(&record.at), record.detail)
                };
                emit(&mut out, &text)?;
            }
            Next::Closed => return Ok(exit::OK),
            Next::TimedOut => {}
        }
    }
}
