//! The command line (docs/commands.md), as clap definitions. Man pages in `man/`
//! and shell completions are generated from these.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "Supervise processes: replicas, restarts with backoff, clean stops, logs";

const LONG_ABOUT: &str = "\
supervise runs the services of a TOML spec file as child processes: it starts \
each service's replicas in dependency order, restarts them under their restart \
policy with exponential backoff, stops them (and every process they started) \
cleanly, and writes each replica's output to a rotated log file. A running \
supervisor is steered through a control socket in its state directory.";

const EXAMPLES: &str = "\
Examples:
  supervise check                  validate ./supervise.toml and print the plan
  supervise up examples/web.toml   run a spec in the foreground (Ctrl-C stops it)
  supervise up -d --wait           run it in the background; return once all is healthy
  supervise status                 what runs, per replica
  supervise top                    watch it live, full-screen, and steer it with keys
  supervise logs -f api            follow the output of every replica of `api`
  supervise down                   stop everything and the supervisor
  supervise up --exit-with tests   CI: exit with the `tests` service's exit code
  supervise -f prod.toml status    the spec can also be given before the command

State directory: every command that talks to a supervisor finds it through its \
state directory: --state-dir (or SUPERVISE_STATE_DIR) if given; else the \
`[supervisor] state_dir` of the spec (-f, else ./supervise.toml; an invalid spec \
is an error, exit 2); else, when there is no spec file, ./.supervise.

Exit status: 0 done (the condition holds); 1 the operation failed (a replica \
failed, a reload was rejected); 2 usage error or invalid spec; 3 no supervisor \
runs for the state dir; 4 a supervisor already runs for it; 124 a wait timed \
out; with `up --exit-with SVC`, SVC's exit code.";

#[derive(Debug, Parser)]
#[command(name = "supervise", version, about = ABOUT, long_about = LONG_ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    /// Spec file [default: supervise.toml]
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// State directory (lock, socket, logs); overrides `[supervisor] state_dir`
    #[arg(long, env = "SUPERVISE_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,

    /// Print only errors, warnings and asked-for output: nothing on success
    /// (check, start/stop/restart, reload, up -d, down, scale), no event
    /// lines, no progress; status, logs, events, --json and --dry-run still
    /// print
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
    /// Run the supervisor, in the foreground or in the background (-d)
    #[command(
        long_about = "Run the supervisor in the foreground: start every service's replicas in \
dependency order, print their output prefixed `svc.N │ ` and the supervisor's own events \
(on stderr), restart replicas under their restart policy. Ctrl-C or SIGTERM stops all \
replicas in reverse dependency order and exits 0; a second Ctrl-C kills them at once. \
SIGHUP reloads the spec file, as `supervise reload` does (a rejected spec changes nothing). \
SIGUSR1, SIGUSR2 and the other signals that would end it but ask nothing of it (timers, \
SIGPWR, SIGXCPU, SIGXFSZ, real-time signals) are logged and ignored; SIGPIPE is ignored.

With -d the supervisor runs in the background (its own session, stdin from /dev/null, \
its output appended to <state_dir>/supervise.log, rotated at log_max_size) and `up` returns \
once every replica has been spawned at least once (never waiting out a restart delay: \
replicas in backoff are named on stderr), or is healthy with --wait.

The state dir, its logs/ and run/ must belong to the user running `up` and be writable \
by nobody else (else: exit 1, naming the fix).",
        after_help = "\
Examples:
  supervise up                          run ./supervise.toml in the foreground
  supervise up examples/web.toml        run another spec
  supervise up -d                       start in the background; return once all is started
  supervise up -d --wait --timeout 2m   ... once all is healthy, giving up after 2 minutes
  supervise up ci.toml --exit-with tests  stop everything when `tests` is done; exit with its code

Exit status: 0 after a clean stop (with -d: once everything is started); 1 when a \
replica is failed (with -d; the supervisor keeps running) or the state dir is refused; \
2 for an invalid spec; \
4 when a supervisor already runs for the state dir (its pid is named); 124 when -d timed \
out (what is still missing is printed); 130 after a forced stop; or SVC's code with \
--exit-with."
    )]
    Up(Lazy<UpArgs>),

    /// Validate the spec and print what would run
    #[command(after_help = "\
Examples:
  supervise check                  check ./supervise.toml
  supervise check examples/ci.toml

Exit status: 0 when the spec is valid, 2 with diagnostics (file:line:column, hint) when not \
(with --strict, also when a limit cannot be enforced here).")]
    Check {
        /// Spec file [default: -f, else supervise.toml]
        spec: Option<PathBuf>,

        /// A limit this machine cannot enforce (no cgroup controller for
        /// it) is an error, not a warning
        #[arg(long)]
        strict: bool,
    },

    /// Show every replica's state
    #[command(
        long_about = "Show every replica's state as a table: SERVICE, REPLICA, PID, STATE, \
HEALTH, ROLE, RESTARTS, UPTIME, CPU (% of one core since the last status), MEM, LAST EXIT. States are coloured on a terminal (never \
with NO_COLOR). --json prints the status report, schema 1 (see docs/commands.md).",
        after_help = "\
Examples:
  supervise status                 every service
  supervise status api db          only these services
  supervise status --json | jq '.services[].replicas[].state'

Exit status: 0; 2 for an unknown service; 3 when no supervisor runs for the state dir."
    )]
    Status(Lazy<StatusArgs>),

    /// Show replica output from the log files, merged in time order
    #[command(
        long_about = "Show replica output, read from the log files in <state_dir>/logs \
(rotated files included), merged in time order across replicas. Each line is \
`svc.N │ <time> <text>`, the time in UTC with milliseconds. Works without a running \
supervisor: the logs are files.",
        after_help = "\
Examples:
  supervise logs                   everything, all replicas
  supervise logs api db.0 -n 50    the last 50 lines of api's replicas and db.0
  supervise logs --since 10m       the last ten minutes
  supervise logs -f api            follow: keep printing new lines (Ctrl-C to stop)
  supervise logs --json | jq -r 'select(.stream == \"err\") | .text'

Exit status: 0; 2 for an unknown service or a bad argument."
    )]
    Logs(Lazy<LogsArgs>),

    /// Start services or replicas (clears `stopped` and `failed`)
    #[command(after_help = "\
Examples:
  supervise start api              every replica of api
  supervise start api.1 worker     one replica of api, every replica of worker
  supervise start api --no-wait    do not wait for them to run

Waits until the targets are running (or exited, for one-shot jobs).

Exit status: 0; 1 when a target failed; 2 for an unknown target; 3 when no supervisor \
runs; 124 when --timeout passed first.")]
    Start(Lazy<ActArgs>),

    /// Stop services or replicas (they stay stopped, across supervisor restarts too)
    #[command(after_help = "\
Examples:
  supervise stop api               every replica of api
  supervise stop api.2             one replica

Waits until the targets have no process left. A stopped replica stays stopped until \
`start` or `restart`, even across a supervisor restart.

Exit status: 0; 2 for an unknown target; 3 when no supervisor runs; 124 when --timeout \
passed first.")]
    Stop(Lazy<ActArgs>),

    /// Restart services or replicas (clears `failed`)
    #[command(after_help = "\
Examples:
  supervise restart api            stop every replica of api, then start them
  supervise restart api --rolling  one replica at a time, each healthy before the next
  supervise restart api.0 db

Waits until the targets run again with a new process.

Exit status: 0; 1 when a target failed (a rolling restart stops there, leaving the \
rest untouched); 2 for an unknown target; 3 when no supervisor runs; 124 when \
--timeout passed first.")]
    Restart(Lazy<RestartArgs>),

    /// Change replica counts (kept across supervisor restarts)
    #[command(after_help = "\
Examples:
  supervise scale api=5            start api.3 and api.4 (if api had 3)
  supervise scale api=1 worker=0   surplus replicas stop, highest index first

Prints the replicas that were started or stopped. The new counts are desired state: \
they survive a supervisor restart; `reload` of a spec that changes the service resets \
them.

Exit status: 0; 2 for bad syntax or an unknown service; 3 when no supervisor runs.")]
    Scale(Lazy<ScaleArgs>),

    /// Apply an edited spec: only changed services restart
    #[command(
        long_about = "Apply an edited spec to the running supervisor: services that were \
added start, removed ones stop, changed ones restart, unchanged ones are left alone. \
The new spec is validated here first; an invalid one is rejected with its diagnostics \
and nothing changes. Prints the plan.",
        after_help = "\
Examples:
  supervise reload                 apply ./supervise.toml (or -f)
  supervise reload new.toml --dry-run   print the plan only

Exit status: 0; 1 when the reload is rejected (an invalid spec: diagnostics are \
printed); 3 when no supervisor runs."
    )]
    Reload(Lazy<ReloadArgs>),

    /// Wait until replicas are running, healthy, stopped or completed
    #[command(
        long_about = "Wait until the condition holds for every replica of the given services \
(all services when none is given). running: state `running`; healthy: health `healthy`; \
stopped: no process (state stopped, exited or failed); completed: state `exited` (a \
one-shot job finished successfully). A failed replica ends the wait with exit 1, except \
with --for stopped. On a terminal a spinner shows what is still awaited.",
        after_help = "\
Examples:
  supervise wait                          every replica running
  supervise wait db --for healthy --timeout 30s
  supervise wait migrate --for completed && echo migrated

Exit status: 0 when the condition holds; 1 as soon as a replica is failed; 2 for an \
unknown service; 3 when no supervisor runs; 124 on timeout (what is still missing is \
printed: `still waiting for: api.1 (backoff), …`)."
    )]
    Wait(Lazy<WaitArgs>),

    /// Show the supervisor's events (spawned, exited, restarted, …)
    #[command(
        long_about = "Show the supervisor's events: the history it keeps, then, with -f, \
new ones as they happen. Each is `<time> <what happened>`; --json prints one object \
per line: {\"at\", \"event\", \"service\", \"replica\", \"pid\", \"detail\"}.",
        after_help = "\
Examples:
  supervise events                 what happened so far
  supervise events -f --json       follow, as JSON lines

Exit status: 0 (with -f: when the supervisor exits); 3 when no supervisor runs."
    )]
    Events(Lazy<EventsArgs>),

    /// Watch and steer the running supervisor in a full-screen view
    #[command(
        long_about = "A full-screen view of the running supervisor: every replica grouped by \
service (pid, state, health, role, restarts, uptime, CPU, memory, last exit), counts by \
state, and the log of the selected replica or service, all updated live from the \
supervisor's events. Keys act on the selection with the control requests the CLI sends: \
r restart, s stop, S start, + and - scale, R rolling restart; ? lists every key, q or \
Ctrl-C quits. Colours follow the state (never with NO_COLOR).",
        after_help = "\
Examples:
  supervise top                    the supervisor of ./supervise.toml
  supervise --state-dir /srv/app/.supervise top

Exit status: 0 after q; 2 when stdin or stdout is not a terminal (use status or \
events -f); 3 when no supervisor runs for the state dir, or it exited while watched."
    )]
    Top,

    /// Stop every replica in reverse dependency order, then the supervisor
    #[command(after_help = "\
Examples:
  supervise down                   graceful stop, bounded by shutdown_timeout
  supervise down --timeout 5s      kill whatever is still running after 5s

Returns once the supervisor has exited.

Exit status: 0; 3 when no supervisor runs; 124 when the timeout passed before every \
replica had stopped (the rest was killed).")]
    Down(Lazy<DownArgs>),

    /// Translate the spec into Kubernetes manifests or systemd units
    #[command(
        long_about = "Translate the spec for an engine made for many machines. \
--format kubernetes writes one YAML stream: per service a Deployment (a StatefulSet when \
the service uses {replica}, a Job for restart.policy = \"never\"), probes from `health`, \
and a Service when `port` is set; every service needs an `image`. --format systemd writes \
one template unit per service (<service>@.service, the instance is the replica \
index), a drop-in per replica for its {port}, and <project>.target, which wants every \
replica: to stdout, each file after a `# <file name>` line, or as files into -o DIR.

Whatever the target cannot express is reported on stderr, one `warning:` line per key, \
naming the service; nothing is dropped silently. Keys left at their default are not \
reported: the target's own default applies. The project name (label \
app.kubernetes.io/part-of, the systemd target) is --project, else the spec file's name \
without .toml, or its directory's name for supervise.toml.",
        after_help = "\
Examples:
  supervise export --format kubernetes > app.yaml   ./supervise.toml as manifests
  kubectl apply -f app.yaml
  supervise export --format kubernetes prod.toml -o k8s/   writes k8s/prod.yaml
  supervise export --format systemd -o units/       a unit per service, a target
  sudo cp -r units/. /etc/systemd/system/ && sudo systemctl daemon-reload
  sudo systemctl start app.target                   every replica, in order
  supervise export --format systemd -o units/ --strict   exit 1 if anything is left out

Exit status: 0 when written (warnings may have been printed); 1 with --strict when \
there were warnings (nothing is written then); 2 for an invalid spec, a usage error, \
or a service Kubernetes cannot run (no `image`)."
    )]
    Export(Lazy<ExportArgs>),

    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  supervise completions bash > /etc/bash_completion.d/supervise
  supervise completions zsh > \"${fpath[1]}/_supervise\"
  supervise completions fish > ~/.config/fish/completions/supervise.fish")]
    Completions { shell: clap_complete::Shell },
}

/// A subcommand's arguments, defined only once that subcommand is parsed
/// (or help, a man page or completions ask for them): clap otherwise builds
/// every subcommand's arguments at each start, a measurable part of a short
/// command such as `status` (BENCHMARKS.md).
#[derive(Debug)]
pub struct Lazy<T>(pub T);

impl<T> std::ops::Deref for Lazy<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: FromArgMatches> FromArgMatches for Lazy<T> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches(matches).map(Lazy)
    }

    fn from_arg_matches_mut(matches: &mut ArgMatches) -> Result<Self, clap::Error> {
        T::from_arg_matches_mut(matches).map(Lazy)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches(matches)
    }

    fn update_from_arg_matches_mut(&mut self, matches: &mut ArgMatches) -> Result<(), clap::Error> {
        self.0.update_from_arg_matches_mut(matches)
    }
}

impl<T: Args> Args for Lazy<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        cmd.defer(T::augment_args_for_update)
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Spec file [default: -f, else supervise.toml]
    pub spec: Option<PathBuf>,

    /// When every replica of SVC has exited, stop the rest and exit with SVC's exit code
    #[arg(long, value_name = "SVC")]
    pub exit_with: Option<String>,

    /// Run in the background; return once every replica has been spawned at
    /// least once (never waiting out a restart delay: replicas in backoff are
    /// named on stderr; exit 1 if one is failed)
    #[arg(short = 'd', long)]
    pub detach: bool,

    /// With -d: return once every replica is healthy (exit 1 as soon as one
    /// is failed)
    #[arg(long, requires = "detach")]
    pub wait: bool,

    /// With -d: give up waiting after this long (exit 124; the supervisor keeps running)
    #[arg(long, value_name = "D", value_parser = duration, default_value = "60s", requires = "detach")]
    pub timeout: Duration,

    /// A limit this machine cannot enforce (no cgroup controller for it)
    /// stops `up` (exit 1) instead of being a warning
    #[arg(long)]
    pub strict: bool,

    /// Set by `up -d` for the supervisor it starts: replica output goes only
    /// to the log files, not to supervise.log as well.
    #[arg(long, hide = true)]
    pub background: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Services to show [default: all]
    #[arg(value_name = "SVC")]
    pub services: Vec<String>,

    /// Print the status report as JSON (schema 1)
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub answer: AnswerTimeout,
}

/// How long a command that asks the supervisor once waits for its answer.
#[derive(Debug, Args)]
pub struct AnswerTimeout {
    /// Give up (exit 1) when the supervisor does not answer within this long
    /// (it is stopped or wedged)
    #[arg(long = "timeout", value_name = "D", value_parser = duration, default_value = "10s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Services (`api`) or replicas (`api.1`) [default: all]
    #[arg(value_name = "SVC[.N]")]
    pub targets: Vec<String>,

    /// Follow: keep printing new lines as they are written
    #[arg(short = 'f', long)]
    pub follow: bool,

    /// Only the last N lines (over all selected replicas) [default: all]
    #[arg(short = 'n', long = "lines", value_name = "N")]
    pub lines: Option<usize>,

    /// Only lines written since then: a duration ago (`10m`) or an RFC 3339 time
    #[arg(long, value_name = "D", value_parser = since)]
    pub since: Option<SystemTime>,

    /// One JSON object per line: {"at", "replica", "stream", "text"}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ActArgs {
    /// Services (`api`: all its replicas) or replicas (`api.1`)
    #[arg(value_name = "SVC[.N]", required = true)]
    pub targets: Vec<String>,

    /// Give up waiting after this long (exit 124)
    #[arg(long, value_name = "D", value_parser = duration, default_value = "60s")]
    pub timeout: Duration,

    /// Return once the supervisor has taken the request, without waiting
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub act: ActArgs,

    /// One replica at a time, each running and healthy before the next
    /// (--timeout then applies to each replica)
    #[arg(long)]
    pub rolling: bool,
}

#[derive(Debug, Args)]
pub struct ScaleArgs {
    /// New replica counts
    #[arg(value_name = "SVC=N", required = true, value_parser = scale_count)]
    pub counts: Vec<(String, u32)>,

    /// Print the affected replicas as JSON: {"replicas": [...]}
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub answer: AnswerTimeout,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Spec file [default: -f, else supervise.toml; without any, the file the
    /// supervisor was started with]
    pub spec: Option<PathBuf>,

    /// Print the plan, change nothing
    #[arg(long)]
    pub dry_run: bool,

    /// Print the plan as JSON: {"added", "removed", "changed", "unchanged", "applied"}
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub answer: AnswerTimeout,
}

/// What `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Condition {
    /// State `running`
    Running,
    /// Health `healthy`
    Healthy,
    /// No process: stopped, exited or failed
    Stopped,
    /// State `exited` (a one-shot job that finished successfully)
    Completed,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Services (`api`) or replicas (`api.1`) [default: all]
    #[arg(value_name = "SVC")]
    pub targets: Vec<String>,

    /// The condition every selected replica must meet
    #[arg(long = "for", value_name = "CONDITION", value_enum, default_value_t = Condition::Running)]
    pub condition: Condition,

    /// Give up after this long (exit 124) [default: wait as long as it takes]
    #[arg(long, value_name = "D", value_parser = duration)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,

    /// Follow: keep printing new events until the supervisor exits
    #[arg(short = 'f', long)]
    pub follow: bool,

    #[command(flatten)]
    pub answer: AnswerTimeout,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Kubernetes manifests: one YAML stream
    Kubernetes,
    /// systemd unit files: to stdout, or into a directory (-o DIR)
    Systemd,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Spec file [default: -f, else supervise.toml]
    pub spec: Option<PathBuf>,

    /// The target engine
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: ExportFormat,

    /// Where to write: kubernetes, a file (or DIR/<project>.yaml for an existing
    /// directory); systemd, a directory [default: stdout; systemd units each
    /// after a `# <file name>` line]
    #[arg(short = 'o', long = "output", value_name = "FILE|DIR")]
    pub output: Option<PathBuf>,

    /// Fail (exit 1, write nothing) when anything cannot be expressed
    #[arg(long)]
    pub strict: bool,

    /// Project name: the part-of label, the systemd target [default: from the spec file name]
    #[arg(long, value_name = "NAME", value_parser = project_name)]
    pub project: Option<String>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Replaces shutdown_timeout: kill whatever still runs after this long
    #[arg(long, value_name = "D", value_parser = duration)]
    pub timeout: Option<Duration>,
}

impl Cli {
    /// The spec file: the command's own argument, else `-f`, else `supervise.toml`.
    pub fn spec_path(&self, own: Option<&PathBuf>) -> PathBuf {
        own.or(self.file.as_ref())
            .cloned()
            .unwrap_or_else(|| PathBuf::from("supervise.toml"))
    }
}

/// A humantime duration: `150ms`, `2s`, `5m`, `1h 30m`.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 5m)"))
}

/// `--since`: a duration before now, or an RFC 3339 time.
fn since(s: &str) -> Result<SystemTime, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(SystemTime::now()
            .checked_sub(d)
            .unwrap_or(SystemTime::UNIX_EPOCH));
    }
    humantime::parse_rfc3339_weak(s)
        .map_err(|_| "expected a duration (10m, 1h) or an RFC 3339 time".to_string())
}

/// `SVC=N`.
fn scale_count(s: &str) -> Result<(String, u32), String> {
    let (service, count) = s
        .split_once('=')
        .ok_or_else(|| format!("expected SVC=N, e.g. api=3; got `{s}`"))?;
    if service.is_empty() {
        return Err(format!("no service name before `=` in `{s}`"));
    }
    let count = count
        .parse()
        .map_err(|_| format!("`{count}` is not a replica count (0 or more)"))?;
    Ok((service.to_string(), count))
}

/// `--project`: a name that is valid as a Kubernetes label value and a
/// systemd unit name.
fn project_name(s: &str) -> Result<String, String> {
    let valid = s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        Ok(s.to_string())
    } else {
        Err("use lowercase letters, digits and `-` (at most 63, e.g. shop-api)".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_counts_parse_or_explain() {
        assert_eq!(scale_count("api=3"), Ok(("api".into(), 3)));
        assert_eq!(scale_count("api=0"), Ok(("api".into(), 0)));
        assert!(scale_count("api").unwrap_err().contains("SVC=N"));
        assert!(scale_count("=3").unwrap_err().contains("no service"));
        assert!(scale_count("api=-1").unwrap_err().contains("replica count"));
        assert!(scale_count("api=x").unwrap_err().contains("replica count"));
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        let ten_min_ago = since("10m").unwrap();
        let age = SystemTime::now().duration_since(ten_min_ago).unwrap();
        assert!(age >= Duration::from_secs(600) && age < Duration::from_secs(660));
        let at = since("2026-11-23T12:00:00Z").unwrap();
        assert_eq!(
            humantime::format_rfc3339(at).to_string(),
            "2026-11-23T12:00:00Z"
        );
        assert!(since("yesterday-ish").is_err());
    }

    #[test]
    fn a_subcommand_defined_late_takes_its_own_and_the_global_options_in_any_order() {
        let cli = Cli::try_parse_from([
            "supervise",
            "status",
            "--state-dir",
            "d",
            "web",
            "-q",
            "--json",
            "-vv",
        ])
        .unwrap();
        assert_eq!(cli.state_dir, Some(PathBuf::from("d")));
        assert!(cli.quiet);
        assert_eq!(cli.verbose, 2);
        let Command::Status(args) = cli.command else {
            panic!("not status: {:?}", cli.command)
        };
        assert!(args.json);
        assert_eq!(args.services, ["web"]);

        let err = Cli::try_parse_from(["supervise", "scale", "web=x"]).unwrap_err();
        assert!(err.to_string().contains("replica count"), "{err}");
        let err = Cli::try_parse_from(["supervise", "status", "--jsn"]).unwrap_err();
        assert!(err.to_string().contains("--json"), "{err}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
