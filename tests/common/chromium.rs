//! [`Chromium`]: a real headless Chromium driven over the DevTools
//! protocol on a pipe (`--remote-debugging-pipe`: it reads commands on fd 3
//! and answers on fd 4, one JSON message per NUL-terminated frame), for
//! tests of the status page: load it, run a script in it, take a
//! screenshot. The browser runs in its own process group, killed on drop.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;
use serde_json::{Value, json};

use super::*;

pub struct Chromium {
    child: Child,
    commands: File,
    replies: Receiver<Value>,
    next_id: u64,
    /// The page's session (flattened: named in each message).
    session: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    /// A browser showing `url`, carrying `marker` (so that a project's
    /// cleanup finds it too). Chromium is a test dependency (.ci/run
    /// installs it): without it the test fails, saying so.
    pub fn open(url: &str, marker: &str) -> Chromium {
        assert!(
            have("chromium"),
            "chromium is not installed (.ci/run installs it)"
        );
        let profile = tempfile::tempdir().expect("a temp dir");
        let (theirs_in, ours_out) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let (ours_in, theirs_out) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-pipe",
            "--window-size=1200,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .env(MARKER_VAR, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
        let (r, w) = (theirs_in.as_raw_fd(), theirs_out.as_raw_fd());
        // SAFETY: only async-signal-safe calls between fork and exec. The
        // ends are first copied above 10, so that putting them on 3 and 4
        // cannot overwrite one with the other; dup2 clears close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                use nix::libc::{F_DUPFD, dup2, fcntl};
                let (r, w) = (fcntl(r, F_DUPFD, 10), fcntl(w, F_DUPFD, 10));
                if r < 0 || w < 0 || dup2(r, 3) < 0 || dup2(w, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((theirs_in, theirs_out));
        let mut browser = Chromium {
            child,
            commands: File::from(ours_out),
            replies: read_frames(ours_in),
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({ "url": url }));
        let attached = browser.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        browser
    }

    /// Sends a command (to the page's session once there is one) and
    /// returns its result; panics on an error or no answer within [`SOON`].
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut frame = message.to_string().into_bytes();
        frame.push(0);
        self.commands.write_all(&frame).expect("write to chromium");
        let deadline = Instant::now() + SOON;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let reply = self
                .replies
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// The value of `expression`, evaluated in the page.
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        result["result"]["value"].clone()
    }

    /// A PNG of the page, base64-encoded as the protocol sends it.
    pub fn screenshot(&mut self) -> String {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        shot["data"].as_str().expect("image data").to_string()
    }
}

/// The messages Chromium writes on `from`, one per NUL-terminated frame.
fn read_frames(from: OwnedFd) -> Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(File::from(from));
        let mut frame = Vec::new();
        while reader.read_until(0, &mut frame).is_ok_and(|n| n > 0) {
            frame.pop();
            if let Ok(value) = serde_json::from_slice(&frame)
                && tx.send(value).is_err()
            {
                return;
            }
            frame.clear();
        }
    });
    rx
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The browser and its helpers (renderer, zygote) share its group.
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
