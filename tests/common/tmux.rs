//! [`Tmux`]: a terminal for tests of full-screen commands (`supervise
//! top`): a tmux server of the test's own, bash in its one pane, keys
//! sent and the screen read back as text. Dropping it ends the server and
//! with it whatever runs in the pane.

use super::*;

/// The prompt of the pane's shell, to tell when a command has ended.
pub const PROMPT: &str = "test-prompt$ ";

pub struct Tmux {
    /// Holds the server's socket.
    dir: tempfile::TempDir,
}

impl Tmux {
    /// A `width` × `height` terminal running bash in `cwd`, with `env` set.
    /// tmux is a test dependency (.ci/run installs it): without it the test
    /// fails, saying so.
    pub fn start(cwd: &Path, env: &[(&str, &str)], width: u16, height: u16) -> Tmux {
        assert!(have("tmux"), "tmux is not installed (.ci/run installs it)");
        let tmux = Tmux {
            dir: tempfile::tempdir().expect("a temp dir"),
        };
        let (w, h) = (width.to_string(), height.to_string());
        let mut args = vec!["new-session", "-d", "-x", &w, "-y", &h, "-c"];
        let cwd = cwd.display().to_string();
        args.push(&cwd);
        let settings: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain([format!("PS1={PROMPT}"), "TERM=xterm-256color".into()])
            .collect();
        for s in &settings {
            args.extend(["-e", s]);
        }
        // bash keeps a PS1 from the environment (dash sets its own for root).
        args.extend(["bash", "--norc", "--noprofile"]);
        tmux.run(&args);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S").arg(self.dir.path().join("socket")).args(args);
        let ran = run_bounded(cmd, Duration::from_secs(10));
        assert_eq!(ran.code, Some(0), "tmux {args:?}: {ran:#?}");
        ran.stdout
    }

    /// Types `keys` (tmux key names: `Enter`, `C-c`, or text).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Types a command line and Enter.
    pub fn type_line(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    /// Makes the terminal `width` × `height`.
    pub fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        self.run(&["resize-window", "-t", "0", "-x", &w, "-y", &h]);
    }

    /// The pid of the pane's shell.
    pub fn shell_pid(&self) -> i32 {
        let out = self.run(&["display-message", "-p", "-t", "0", "#{pane_pid}"]);
        out.trim().parse().expect("a pid")
    }

    /// The screen as text, one line per row.
    pub fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "0"])
    }

    /// The screen once `pred` holds for it; `Err` with the last screen when
    /// that does not happen within `timeout`.
    pub fn wait_screen(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let mut screen = String::new();
        if wait_until(timeout, || {
            screen = self.screen();
            pred(&screen)
        }) {
            Ok(screen)
        } else {
            Err(screen)
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S")
            .arg(self.dir.path().join("socket"))
            .arg("kill-server");
        let _ = run_bounded(cmd, Duration::from_secs(10));
    }
}
