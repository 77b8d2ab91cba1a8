//! What the supervisor's unit tests share.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::spec::{RestartPolicy, Service};

/// A service of `replicas` replicas with every setting at its default.
pub fn service(name: &str, replicas: u32) -> Service {
    Service {
        name: name.into(),
        command: vec!["true".into()],
        replicas,
        cwd: None,
        env: vec![],
        port: None,
        user: None,
        group: None,
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(1),
        health: None,
        restart: RestartPolicy::default(),
        depends_on: vec![],
        failover: None,
        image: None,
        limits: Default::default(),
    }
}
