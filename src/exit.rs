//! Exit codes (docs/commands.md §5).

/// Done; the condition holds.
pub const OK: i32 = 0;
/// The operation failed: a service failed to start, a replica is failed,
/// a reload was rejected.
pub const FAILED: i32 = 1;
/// A usage error or an invalid spec.
pub const USAGE: i32 = 2;
/// No supervisor is running for the state dir.
pub const NO_SUPERVISOR: i32 = 3;
/// A supervisor is already running for the state dir (`up`).
pub const ALREADY_RUNNING: i32 = 4;
/// `wait`, `up -d` or `down` (and the waits of `start`/`stop`/`restart`)
/// timed out, as `timeout(1)` reports it.
pub const TIMEOUT: i32 = 124;
