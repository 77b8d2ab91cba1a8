//! `supervise`: a process supervisor for Linux.
//!
//! Layout:
//! - [`spec`]: the spec file, parsed and validated into typed form;
//! - [`supervisor`]: the event loop that owns all state and reconciles it;
//! - [`shim`]: the per-replica process that holds a replica's pipes, log,
//!   exit status and process tree, so they survive the supervisor;
//! - [`state_dir`]: the files a supervisor keeps (lock, logs, exit records);
//! - [`control`]: the control socket: protocol, server, client;
//! - [`export`]: the spec translated to Kubernetes manifests or systemd units;
//! - [`cli`], [`commands`], [`exit`], [`progress`]: the command line.

/// `eprintln!` for the long-running processes (supervisor, zygote, shims),
/// whose stderr may be `supervise.log` on a full disk: a line that cannot be
/// written is dropped, where `eprintln!` panics, which would take the
/// process (and a shim's replica) down with it.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod alerts;
pub mod cgroup;
pub mod cli;
pub mod commands;
pub mod control;
pub mod etcd;
pub mod exit;
pub mod export;
pub mod http;
pub mod logfiles;
pub mod metrics;
pub mod pages;
pub mod procfs;
pub mod progress;
pub mod reaper;
pub mod shim;
pub mod spec;
pub mod state_dir;
pub mod status_page;
pub mod supervisor;
pub mod usage;
