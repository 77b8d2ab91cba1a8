//! The command line (SPEC.md §3), as clap definitions. Man pages in `man/`
//! and shell completions are generated from these.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

const ABOUT: &str = "Supervise processes: replicas, restarts with backoff, clean stops, logs";

const LONG_ABOUT: &str = "\
supervise runs the services of a TOML spec file as child processes: it starts \
each service's replicas in dependency order, restarts them under their restart \
policy with exponential backoff, stops them (and every process they started) \
cleanly, and writes each replica's output to a rotated log file.";

const EXAMPLES: &str = "\
Examples:
  supervise check                  validate ./supervise.toml and print the plan
  supervise up examples/web.toml   run a spec in the foreground (Ctrl-C stops it)
  supervise up --exit-with tests   CI: exit with the `tests` service's exit code
  supervise -f prod.toml check     the spec can also be given before the command";

#[derive(Debug, Parser)]
#[command(name = "supervise", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Spec file [default: supervise.toml]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// State directory (lock, logs, exit records); overrides `[supervisor] state_dir`
    #[arg(long, env = "SUPERVISE_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,

    /// Print only errors (no supervisor event lines)
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// More diagnostics on stderr (-v, -vv)
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the supervisor in the foreground
    #[command(
        long_about = "Run the supervisor in the foreground: start every service's replicas in \
dependency order, print their output prefixed `svc.N │ ` and the supervisor's own events \
(on stderr), restart replicas under their restart policy. Ctrl-C or SIGTERM stops all \
replicas in reverse dependency order and exits 0; a second Ctrl-C kills them at once.",
        after_help = "\
Examples:
  supervise up                          run ./supervise.toml
  supervise up examples/web.toml        run another spec
  supervise up ci.toml --exit-with tests  stop everything when `tests` is done; exit with its code

Exit status: 0 after a clean stop, 2 for an invalid spec, 4 when a supervisor already \
runs for the state dir, 130 after a forced stop, or SVC's code with --exit-with."
    )]
    Up(UpArgs),

    /// Validate the spec and print what would run
    #[command(after_help = "\
Examples:
  supervise check                  check ./supervise.toml
  supervise check examples/ci.toml

Exit status: 0 when the spec is valid, 2 with diagnostics (file:line:column, hint) when not.")]
    Check {
        /// Spec file [default: -f, else supervise.toml]
        spec: Option<PathBuf>,
    },

    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  supervise completions bash > /etc/bash_completion.d/supervise
  supervise completions zsh > \"${fpath[1]}/_supervise\"
  supervise completions fish > ~/.config/fish/completions/supervise.fish")]
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Spec file [default: -f, else supervise.toml]
    pub spec: Option<PathBuf>,

    /// When every replica of SVC has exited, stop the rest and exit with SVC's exit code
    #[arg(long, value_name = "SVC")]
    pub exit_with: Option<String>,
}

impl Cli {
    /// The spec file: the command's own argument, else `-f`, else `supervise.toml`.
    pub fn spec_path(&self, own: Option<&PathBuf>) -> PathBuf {
        own.or(self.file.as_ref())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("supervise.toml"))
    }
}
