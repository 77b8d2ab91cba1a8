//! `supervise`: a process supervisor for Linux.
pub mod spec;
