//! The control plane: how the shell talks to a running supervisor.
pub mod client;
pub mod protocol;
pub mod server;
