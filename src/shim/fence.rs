//! The fencing deadline of a cluster-scope active (docs/cluster.md §4.2),
//! held here, in the replica's shim, because the shim outlives what can
//! stall or die: the supervisor (`kill -9`, SIGSTOP, cut off from etcd).
//!
//! The supervisor writes a [`FenceOrder`] (token and deadline) to a file and
//! sends [`super::protocol::FENCE_SIGNAL`]; each renewal of its lease moves
//! the deadline on. Should the deadline pass, the shim demotes the replica
//! by itself, once per token: an order for a token already fenced (a
//! renewal that raced the deadline) is ignored, so only a new election can
//! make the replica active again.

use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};

use super::Tree;
use super::protocol::{Demote, FenceConfig, FenceOrder, boot_now, read_record};

pub(super) struct Fence<'c> {
    config: &'c FenceConfig,
    order: Option<FenceOrder>,
    /// The token fenced last.
    fenced: Option<u64>,
}

impl<'c> Fence<'c> {
    pub(super) fn new(config: &'c FenceConfig) -> Fence<'c> {
        let mut fence = Fence {
            config,
            order: None,
            fenced: None,
        };
        fence.reload();
        fence
    }

    /// Reads the order again (the file is replaced whole, never half
    /// written). No file: the replica is not active.
    pub(super) fn reload(&mut self) {
        self.order = read_record::<FenceOrder>(&self.config.path)
            .ok()
            .filter(|order| Some(order.token) != self.fenced);
    }

    /// How long until the deadline, if one is armed.
    pub(super) fn wait(&self) -> Option<Duration> {
        self.order
            .map(|o| Duration::from_nanos(o.deadline_ns.saturating_sub(boot_now())))
    }

    /// At the deadline: demotes the replica of `tree` and returns the token.
    pub(super) fn act_if_due(&mut self, tree: &mut Tree) -> Option<u64> {
        let order = self.order.filter(|o| o.deadline_ns <= boot_now())?;
        self.order = None;
        self.fenced = Some(order.token);
        match &self.config.demote {
            Demote::Signal(number) => {
                if let (Ok(signal), None) = (Signal::try_from(*number), tree.main_status) {
                    let _ = kill(tree.main, signal);
                }
            }
            Demote::Command { argv, cwd } => {
                let pid = tree.main.as_raw().to_string();
                let token = order.token.to_string();
                let argv: Vec<String> = argv
                    .iter()
                    .map(|a| {
                        crate::spec::expand_with(a, |name| match name {
                            "pid" => Some(pid.clone()),
                            "token" => Some(token.clone()),
                            _ => None,
                        })
                    })
                    .collect();
                if let Some((program, args)) = argv.split_first() {
                    // Reaped with the rest of the tree (waitpid(-1)).
                    let spawned = Command::new(program)
                        .args(args)
                        .current_dir(cwd)
                        .env("SUPERVISE_FENCING_TOKEN", &token)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .spawn();
                    if let Err(e) = spawned {
                        crate::say!("supervise: demote hook {program} could not run: {e}");
                    }
                }
            }
            Demote::Stop { kill_after_ms } => {
                tree.stop_within(Duration::from_millis(*kill_after_ms))
            }
        }
        Some(order.token)
    }
}
