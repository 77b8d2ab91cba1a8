//! `supervise up`: the supervisor in the foreground, or (`-d`) started in
//! the background by [`super::detach`].

use crate::cli::{Cli, UpArgs};
use crate::exit;
use crate::spec::Spec;
use crate::state_dir::LockError;
use crate::supervisor::{self, Options, RunError};

use super::{Exit, Failure, detach, limits_enforced, load};

pub fn run(cli: &Cli, args: &UpArgs) -> Exit {
    let spec = load(cli, args.spec.as_ref())?;
    check_exit_with(&spec, args.exit_with.as_deref())?;
    if !args.background {
        // The supervisor `up -d` starts has been told by its parent.
        limits_enforced(&spec, args.strict, exit::FAILED)?;
    }
    if args.detach {
        detach::run(cli, args, &spec)
    } else {
        foreground(cli, args, spec)
    }
}

fn check_exit_with(spec: &Spec, exit_with: Option<&str>) -> Result<(), Failure> {
    let Some(svc) = exit_with else { return Ok(()) };
    match spec.service(svc) {
        None => Err(Failure::new(
            exit::USAGE,
            format!(
                "--exit-with {svc}: no such service in {}",
                spec.path.display()
            ),
        )),
        Some(s) if s.replicas == 0 => Err(Failure::new(
            exit::USAGE,
            format!("--exit-with {svc}: the service has 0 replicas, so it would never exit"),
        )),
        Some(_) => Ok(()),
    }
}

fn foreground(cli: &Cli, args: &UpArgs, spec: Spec) -> Exit {
    let options = Options {
        exit_with: args.exit_with.clone(),
        // In the background, replica output is in the logs already; the
        // supervisor's own log keeps only its events.
        show_output: !args.background,
        quiet: cli.quiet,
        own_log: args.background,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(exit::FAILED, format!("cannot start the event loop: {e}")))?;
    match runtime.block_on(supervisor::run(spec, options)) {
        Ok(code) => Ok(code),
        Err(e @ RunError::Locked(LockError::Held { .. })) => {
            Err(Failure::new(exit::ALREADY_RUNNING, e.to_string()))
        }
        Err(e) => Err(Failure::new(exit::FAILED, e.to_string())),
    }
}
