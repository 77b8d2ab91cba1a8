//! What a waiting command shows while it waits (`up -d`, `wait`,
//! `restart --rolling`), on stderr so stdout stays for results.
//!
//! On a terminal: one spinner line saying what is still awaited, redrawn in
//! place. Otherwise (CI logs, pipes): a plain line each time the awaited
//! set changes, so a log shows the progression without a line per poll.
//! With `-q`: nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Progress {
    mode: Mode,
    /// The last status shown, so plain mode prints only changes.
    last: String,
}

enum Mode {
    Quiet,
    Plain,
    Spinner(ProgressBar),
}

impl Progress {
    /// A spinner on a terminal, plain lines otherwise, nothing when `quiet`.
    pub fn new(quiet: bool) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>3} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            Mode::Spinner(bar)
        } else {
            Mode::Plain
        };
        Progress {
            mode,
            last: String::new(),
        }
    }

    /// The current status, e.g. `waiting for: api.1 (starting)`.
    pub fn set(&mut self, status: &str) {
        if status == self.last {
            return;
        }
        self.last = status.to_string();
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("{status}"),
            Mode::Spinner(bar) => bar.set_message(status.to_string()),
        }
    }

    /// A line that stays (e.g. `restarted api.0`), shown above the spinner.
    pub fn note(&self, line: &str) {
        match &self.mode {
            Mode::Quiet => {}
            Mode::Plain => eprintln!("{line}"),
            Mode::Spinner(bar) => bar.println(line),
        }
    }

    /// Removes the spinner line; plain output stays as it is.
    pub fn finish(&self) {
        if let Mode::Spinner(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}
