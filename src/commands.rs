//! The subcommands: glue between the command line and the library.

use std::path::PathBuf;

use crate::cli::{Cli, UpArgs};
use crate::exit;
use crate::spec::{self, Spec};
use crate::supervisor::{self, Options, RunError};

/// Loads the spec, applying `--state-dir`; prints diagnostics on failure.
fn load(cli: &Cli, own: Option<&PathBuf>) -> Result<Spec, i32> {
    let path = cli.spec_path(own);
    let mut spec = spec::load(&path).map_err(|diagnostics| {
        eprint!("{diagnostics}");
        exit::USAGE
    })?;
    if let Some(dir) = &cli.state_dir {
        spec.supervisor.state_dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
    }
    Ok(spec)
}

pub fn check(cli: &Cli, own: Option<&PathBuf>) -> i32 {
    match load(cli, own) {
        Ok(spec) => {
            print!("{}", spec::render_plan(&spec));
            exit::OK
        }
        Err(code) => code,
    }
}

pub fn up(cli: &Cli, args: &UpArgs) -> i32 {
    let spec = match load(cli, args.spec.as_ref()) {
        Ok(spec) => spec,
        Err(code) => return code,
    };
    if let Some(svc) = &args.exit_with {
        match spec.service(svc) {
            None => {
                eprintln!(
                    "error: --exit-with {svc}: no such service in {}",
                    spec.path.display()
                );
                return exit::USAGE;
            }
            Some(s) if s.replicas == 0 => {
                eprintln!(
                    "error: --exit-with {svc}: the service has 0 replicas, so it would never exit"
                );
                return exit::USAGE;
            }
            Some(_) => {}
        }
    }
    let options = Options {
        exit_with: args.exit_with.clone(),
        show_output: true,
        quiet: cli.quiet,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the event loop: {e}");
            return exit::FAILED;
        }
    };
    match runtime.block_on(supervisor::run(spec, options)) {
        Ok(code) => code,
        Err(e @ RunError::Locked(crate::state_dir::LockError::Held { .. })) => {
            eprintln!("error: {e}");
            exit::ALREADY_RUNNING
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}
