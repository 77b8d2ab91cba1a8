//! Exit codes of the contract (SPEC.md §3).

pub const OK: i32 = 0;
pub const FAILED: i32 = 1;
pub const USAGE: i32 = 2;
pub const ALREADY_RUNNING: i32 = 4;
