//! `start`, `stop`, `restart` (and `restart --rolling`): change the desired
//! state of services or replicas, then wait until it is reached.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::cli::{ActArgs, Cli, RestartArgs};
use crate::control::client;
use crate::control::protocol::{Request, StatusReport};
use crate::exit;
use crate::progress::Progress;

use super::select::{self, Selected};
use super::wait::{self, Deadline, Goal, Incarnation, Wanted};
use super::{Exit, Failure, context, emit, warn};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Start,
    Stop,
    Restart,
}

impl Verb {
    fn request(self, targets: Vec<String>) -> Request {
        match self {
            Verb::Start => Request::Start { targets },
            Verb::Stop => Request::Stop { targets },
            Verb::Restart => Request::Restart { targets },
        }
    }

    fn goal(self) -> Goal {
        match self {
            Verb::Stop => Goal::Stopped,
            Verb::Start | Verb::Restart => Goal::Running,
        }
    }
}

pub fn start(cli: &Cli, args: &ActArgs) -> Exit {
    act(cli, args, Verb::Start)
}

pub fn stop(cli: &Cli, args: &ActArgs) -> Exit {
    act(cli, args, Verb::Stop)
}

pub fn restart(cli: &Cli, args: &RestartArgs) -> Exit {
    if args.rolling {
        rolling(cli, &args.act)
    } else {
        act(cli, &args.act, Verb::Restart)
    }
}

fn act(cli: &Cli, args: &ActArgs, verb: Verb) -> Exit {
    let ctx = context(cli)?;
    let dir = &ctx.state_dir;
    // A restart is done when each replica runs with a new process, so the
    // old ones are noted first.
    let replaced = match verb {
        Verb::Restart => Incarnation::snapshot(&client::status(dir)?, &args.targets)?,
        _ => HashMap::new(),
    };
    let affected = client::affected(dir, verb.request(args.targets.clone()))?;
    warn(affected.warning.as_deref());
    if args.no_wait {
        if !cli.quiet {
            let mut out = std::io::stdout().lock();
            for name in affected.replicas {
                emit(&mut out, &name)?;
            }
        }
        return Ok(exit::OK);
    }
    let wanted = Wanted {
        targets: &args.targets,
        goal: verb.goal(),
        replaced: &replaced,
    };
    let mut progress = Progress::new(cli.quiet);
    let report = wait::settle(
        dir,
        &wanted,
        Some(Deadline::from_now(args.timeout)),
        &mut progress,
        "waiting for",
    )?;
    progress.finish();
    print_states(cli, &select::replicas(&report, &args.targets)?)
}

/// `api.0 running (pid 123)`, one line per replica; nothing with -q (the
/// exit code says it).
fn print_states(cli: &Cli, selected: &[Selected]) -> Exit {
    if cli.quiet {
        return Ok(exit::OK);
    }
    let mut out = std::io::stdout().lock();
    for s in selected {
        let pid = s
            .replica
            .pid
            .map_or_else(String::new, |p| format!(" (pid {p})"));
        emit(&mut out, &format!("{} {}{pid}", s.name(), s.replica.state))?;
    }
    Ok(exit::OK)
}

/// One replica at a time, each running and healthy before the next; the
/// first that fails or times out stops the rollout, leaving the rest as
/// they were.
fn rolling(cli: &Cli, args: &ActArgs) -> Exit {
    let ctx = context(cli)?;
    let mut progress = Progress::new(cli.quiet);
    let (last, warning) =
        rolling_restart(&ctx.state_dir, &args.targets, args.timeout, &mut progress)?;
    progress.finish();
    warn(warning.as_deref());
    print_states(cli, &select::replicas(&last, &args.targets)?)
}

/// Restarts the replicas `targets` names one at a time, each running and
/// healthy (within `timeout`) before the next; the last status report, and
/// the last warning the supervisor answered a restart with (for the
/// caller to show: `top` owns the terminal).
pub fn rolling_restart(
    dir: &Path,
    targets: &[String],
    timeout: Duration,
    progress: &mut Progress,
) -> Result<(StatusReport, Option<String>), Failure> {
    let report = client::status(dir)?;
    let names: Vec<String> = select::replicas(&report, targets)?
        .iter()
        .map(Selected::name)
        .collect();
    let mut last = report;
    let mut warning = None;
    for (i, name) in names.iter().enumerate() {
        let one = std::slice::from_ref(name);
        let replaced = Incarnation::snapshot(&last, one)?;
        let affected = client::affected(
            dir,
            Request::Restart {
                targets: one.to_vec(),
            },
        )?;
        warning = affected.warning.or(warning);
        let wanted = Wanted {
            targets: one,
            goal: Goal::Healthy,
            replaced: &replaced,
        };
        let label = format!("restarting {name} ({}/{})", i + 1, names.len());
        last = wait::settle(
            dir,
            &wanted,
            Some(Deadline::from_now(timeout)),
            progress,
            &label,
        )
        .map_err(|f| {
            f.reworded(|m| format!("rolling restart stopped at {name}, the rest untouched: {m}"))
        })?;
        progress.note(&format!("restarted {name} ({}/{})", i + 1, names.len()));
    }
    Ok((last, warning))
}
