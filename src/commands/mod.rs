//! The subcommands: glue between the command line and the library.
//!
//! Every command returns [`Exit`]: the exit code, or a [`Failure`] whose
//! one-line message [`run`] prints as `error: …`. Commands that talk to a
//! supervisor find it through [`context`] (the state-dir resolution rule,
//! documented in `--help` and docs/commands.md §1).

mod act;
mod detach;
mod down;
mod events;
mod export;
pub(crate) mod format;
mod logs;
mod reload;
mod scale;
pub(crate) mod select;
pub mod status;
mod top;
mod up;
mod wait;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;

use crate::cli::{Cli, Command};
use crate::control::client::ClientError;
use crate::exit;
use crate::spec::{self, Located, Spec};

pub use format::colour_allowed;

/// Why a command did not succeed.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    /// One line for a person; `None` when the command already said why
    /// (e.g. printed diagnostics).
    pub message: Option<String>,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: Some(message.into()),
        }
    }

    /// A failure that has been reported already.
    pub fn quiet(code: i32) -> Failure {
        Failure {
            code,
            message: None,
        }
    }

    /// The same failure, its message rewritten by `f` (to say where it happened).
    pub fn reworded(self, f: impl FnOnce(String) -> String) -> Failure {
        Failure {
            code: self.code,
            message: self.message.map(f),
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::new(e.exit_code(), e.to_string())
    }
}

/// The exit code of a finished command, or why it failed.
pub type Exit = Result<i32, Failure>;

/// Runs the command line; returns the process exit code.
pub fn run(cli: &Cli) -> i32 {
    let result = match &cli.command {
        Command::Check { spec, strict } => check(cli, spec.as_ref(), *strict),
        Command::Up(args) => up::run(cli, args),
        Command::Status(args) => status::run(cli, args),
        Command::Logs(args) => logs::run(cli, args),
        Command::Start(args) => act::start(cli, args),
        Command::Stop(args) => act::stop(cli, args),
        Command::Restart(args) => act::restart(cli, args),
        Command::Scale(args) => scale::run(cli, args),
        Command::Reload(args) => reload::run(cli, args),
        Command::Wait(args) => wait::run(cli, args),
        Command::Events(args) => events::run(cli, args),
        Command::Top => top::run(cli),
        Command::Down(args) => down::run(cli, args),
        Command::Export(args) => export::run(cli, args),
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "supervise",
                &mut std::io::stdout(),
            );
            Ok(exit::OK)
        }
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            if let Some(message) = failure.message {
                eprintln!("error: {message}");
            }
            failure.code
        }
    }
}

/// Reads and validates a spec file; diagnostics are printed, exit 2.
fn read_spec(path: &Path) -> Result<Spec, Failure> {
    spec::load(path).map_err(|diagnostics| {
        eprint!("{diagnostics}");
        Failure::quiet(exit::USAGE)
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Loads the spec of `up`/`check`, applying `--state-dir`.
fn load(cli: &Cli, own: Option<&PathBuf>) -> Result<Spec, Failure> {
    let mut spec = read_spec(&cli.spec_path(own))?;
    if let Some(dir) = &cli.state_dir {
        spec.supervisor.state_dir = absolute(dir);
    }
    Ok(spec)
}

fn check(cli: &Cli, own: Option<&PathBuf>, strict: bool) -> Exit {
    let spec = load(cli, own)?;
    limits_enforced(&spec, strict, exit::USAGE)?;
    // -q: the exit code says it; diagnostics of an invalid spec still show.
    if !cli.quiet {
        print!("{}", spec::render_plan(&spec));
    }
    if let Some(cluster) = &spec.supervisor.cluster {
        for endpoint in &cluster.etcd {
            if let Err(e) = reachable(endpoint) {
                // etcd may well be down while the spec is written: `up`
                // keeps trying, so this is no reason to refuse the spec.
                eprintln!("warning: etcd endpoint {endpoint} does not answer: {e}");
            }
        }
    }
    Ok(exit::OK)
}

/// Says once, one line each, which limits this machine cannot enforce
/// (docs/spec-file.md §5.2); with `strict` that is an error (exit `code`).
fn limits_enforced(spec: &Spec, strict: bool, code: i32) -> Result<(), Failure> {
    let lines = crate::cgroup::unenforced(&spec.services);
    for line in &lines {
        if strict {
            eprintln!("error: {line} (--strict)");
        } else {
            eprintln!("warning: {line}");
        }
    }
    if strict && !lines.is_empty() {
        return Err(Failure::quiet(code));
    }
    Ok(())
}

/// Whether a TCP connection to an `http://HOST:PORT` endpoint opens within a second.
fn reachable(endpoint: &str) -> std::io::Result<()> {
    use std::net::ToSocketAddrs;
    let authority = endpoint.trim_start_matches("http://");
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut last = std::io::Error::other("no address");
    for addr in with_port.to_socket_addrs()? {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Where the supervisor a command talks to keeps its state, and the one
/// other setting of its spec a command uses.
pub struct Context {
    pub state_dir: PathBuf,
    /// The spec's `shutdown_timeout`, when a spec was read and has one.
    pub shutdown_timeout: Option<Duration>,
}

impl Context {
    /// `--state-dir` (or `SUPERVISE_STATE_DIR`) if given, else the spec's
    /// `[supervisor] state_dir`, else `./.supervise`.
    fn new(cli: &Cli, located: Option<Located>) -> Context {
        let state_dir = match (&cli.state_dir, &located) {
            (Some(dir), _) => absolute(dir),
            (None, Some(found)) => found.state_dir.clone(),
            (None, None) => absolute(Path::new(".supervise")),
        };
        Context {
            state_dir,
            shutdown_timeout: located.and_then(|found| found.shutdown_timeout),
        }
    }
}

/// The spec file a command reads: its own argument, else `-f`, else
/// `./supervise.toml` if there is one.
fn spec_file(cli: &Cli, own: Option<&PathBuf>) -> Option<PathBuf> {
    let path = cli.spec_path(own);
    (own.is_some() || cli.file.is_some() || path.exists()).then_some(path)
}

/// The state-dir resolution rule of every command that talks to a
/// supervisor: with `--state-dir` no spec is read; else the spec (from
/// `-f`, else `./supervise.toml`) is read for its `[supervisor]` settings
/// only, not validated: a file being edited is a warning, not an error (a
/// file that cannot be read at all is exit 2).
pub fn context(cli: &Cli) -> Result<Context, Failure> {
    let located = match (&cli.state_dir, spec_file(cli, None)) {
        (None, Some(path)) => {
            let found = spec::locate(&path).map_err(|e| Failure::new(exit::USAGE, e))?;
            if let Some(problem) = &found.problem {
                eprintln!(
                    "warning: {} is not valid TOML right now ({problem}); its supervisor is \
                     looked for in {}",
                    path.display(),
                    found.state_dir.display()
                );
            }
            Some(found)
        }
        _ => None,
    };
    Ok(Context::new(cli, located))
}

/// The spec of the commands that talk to a supervisor, when one is read
/// (no `--state-dir`) and valid: for what only validation knows, such as
/// the start order.
pub fn valid_spec(cli: &Cli) -> Option<Spec> {
    match (&cli.state_dir, spec_file(cli, None)) {
        (None, Some(path)) => spec::load(&path).ok(),
        _ => None,
    }
}

/// A supervisor's warning about a request it carried out, on stderr.
fn warn(warning: Option<&str>) {
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
}

/// Writes one line to stdout. A closed stdout (`supervise logs | head`) is
/// not an error worth a message: the command just ends, successfully.
fn emit(out: &mut impl Write, line: &str) -> Result<(), Failure> {
    writeln!(out, "{line}").map_err(|_| Failure::quiet(exit::OK))
}
