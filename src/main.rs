use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use supervise::cli::{Cli, Command};

fn main() -> ExitCode {
    // The zygote, which forks the shims, is this binary in a hidden mode; it
    // must not pay for clap or tokio.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__zygote") {
        return code(supervise::shim::zygote::main());
    }
    let cli = Cli::parse();
    // Only the supervisor logs through tracing; the other commands print
    // what they have to say, and start faster without a subscriber.
    if matches!(cli.command, Command::Up(_)) {
        init_tracing(cli.verbose);
    }
    code(supervise::commands::run(&cli))
}

fn code(c: i32) -> ExitCode {
    ExitCode::from(u8::try_from(c).unwrap_or(1))
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SUPERVISE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // A detached supervisor's stderr is its log file: colour codes there are noise.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(supervise::commands::colour_allowed(
            std::io::stderr().is_terminal(),
        ))
        .with_writer(std::io::stderr)
        .init();
}
