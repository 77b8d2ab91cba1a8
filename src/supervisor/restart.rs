//! The restart policy as a pure function of a replica's history: what to do
//! when it exits. No clock reads and no randomness of its own (the caller
//! passes `now` and the jitter), so every rule is unit-tested here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::spec::{Policy, RestartPolicy};

/// How one incarnation ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Code(i32),
    Signal(i32),
    /// The command never ran (missing binary, bad directory, …).
    SpawnFailed,
    /// Its shim vanished without a record (it was killed).
    Unknown,
    /// Stopped by us because its health checks failed.
    Unhealthy,
    /// Killed by the kernel's OOM killer (its cgroup's `memory.events`
    /// counted an `oom_kill` during the run).
    Oom,
    /// Stopped by us for going over `limits.memory` (by sampling, where the
    /// kernel cannot enforce it).
    MemoryLimit,
}

impl Ending {
    /// The end of a command that ran: by its exit code, else its signal.
    pub fn ended(code: Option<i32>, signal: Option<i32>) -> Ending {
        match (code, signal) {
            (Some(code), _) => Ending::Code(code),
            (None, Some(signal)) => Ending::Signal(signal),
            (None, None) => Ending::Unknown,
        }
    }

    /// What a shim's exit record says.
    pub fn of_record(record: &crate::shim::protocol::ExitRecord) -> Ending {
        match record.spawn_error {
            Some(_) => Ending::SpawnFailed,
            None if record.oom => Ending::Oom,
            None => Ending::ended(record.code, record.signal),
        }
    }

    /// Why it ended, beyond a code or signal (`last_exit.reason`).
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Ending::Unhealthy => Some("unhealthy"),
            Ending::Oom => Some("oom"),
            Ending::MemoryLimit => Some("memory limit"),
            _ => None,
        }
    }

    pub fn is_success(&self, policy: &RestartPolicy) -> bool {
        matches!(self, Ending::Code(c) if policy.exit_codes.contains(c))
    }

    /// The shell's convention, for `--exit-with`: the code, 128+signal, 127
    /// for a command that could not run, 1 when nothing is known.
    pub fn shell_code(&self) -> i32 {
        match self {
            Ending::Code(c) => *c,
            Ending::Signal(s) => 128 + s,
            Ending::SpawnFailed => 127,
            Ending::Oom => 128 + nix::libc::SIGKILL,
            Ending::Unknown | Ending::Unhealthy | Ending::MemoryLimit => 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Start it again after `delay`.
    Restart { delay: Duration },
    /// It finished as a success under its policy: `exited`.
    Done,
    /// `failed`: not restarted until asked to.
    GiveUp { reason: String },
}

/// The part of a replica's past that the policy looks at.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// Failures in a row, for the exponential backoff.
    pub consecutive: u32,
    /// When the last restarts within the current window were decided: at
    /// most `limit` of them, the only ones a give-up can depend on (none
    /// without a limit), so a tight crash loop cannot grow it, nor the
    /// checkpoint that keeps it.
    pub recent: VecDeque<Instant>,
}

impl History {
    /// `jitter` is in [-1, 1] and scales the delay by ±10%.
    pub fn on_exit(
        &mut self,
        policy: &RestartPolicy,
        outcome: &Ending,
        uptime: Duration,
        now: Instant,
        jitter: f64,
    ) -> Decision {
        let success = outcome.is_success(policy);
        match policy.policy {
            Policy::Never if success => return Decision::Done,
            Policy::Never => {
                return Decision::GiveUp {
                    reason: "restart policy is never".into(),
                };
            }
            Policy::OnFailure if success => return Decision::Done,
            _ => {}
        }
        if uptime >= policy.reset_after {
            self.consecutive = 0;
            self.recent.clear();
        }
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= policy.window)
        {
            self.recent.pop_front();
        }
        if policy.limit > 0 && self.recent.len() >= policy.limit as usize {
            return Decision::GiveUp {
                reason: format!(
                    "{} restarts within {}",
                    policy.limit,
                    humantime::format_duration(policy.window)
                ),
            };
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.recent.push_back(now);
        let older = self.recent.len().saturating_sub(policy.limit as usize);
        self.recent.drain(..older);
        Decision::Restart {
            delay: backoff(policy, self.consecutive, jitter),
        }
    }
}

/// `delay × 2^(n−1)`, capped at `max_delay`, then ±10% jitter so replicas
/// that failed together do not come back in lockstep.
pub fn backoff(policy: &RestartPolicy, consecutive: u32, jitter: f64) -> Duration {
    let exponent = consecutive.saturating_sub(1).min(32);
    let raw = policy
        .delay
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(policy.max_delay);
    let capped = raw.min(policy.max_delay);
    capped.mul_f64(1.0 + 0.1 * jitter.clamp(-1.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: Policy, limit: u32) -> RestartPolicy {
        RestartPolicy {
            policy: kind,
            limit,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            reset_after: Duration::from_secs(30),
            window: Duration::from_secs(60),
            ..RestartPolicy::default()
        }
    }

    fn delay_of(d: Decision) -> Duration {
        match d {
            Decision::Restart { delay } => delay,
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = policy(Policy::Always, 0);
        let delays: Vec<_> = (1..=6).map(|n| backoff(&p, n, 0.0).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff(&p, u32::MAX, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let p = policy(Policy::Always, 0);
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_millis(110));
        assert_eq!(backoff(&p, 1, -1.0), Duration::from_millis(90));
    }

    #[test]
    fn on_failure_does_not_restart_a_success() {
        let p = policy(Policy::OnFailure, 10);
        let mut h = History::default();
        let now = Instant::now();
        assert_eq!(
            h.on_exit(&p, &Ending::Code(0), Duration::ZERO, now, 0.0),
            Decision::Done
        );
        assert!(matches!(
            h.on_exit(&p, &Ending::Code(3), Duration::ZERO, now, 0.0),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            h.on_exit(&p, &Ending::Signal(9), Duration::ZERO, now, 0.0),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn exit_codes_widen_success() {
        let p = RestartPolicy {
            exit_codes: vec![0, 3],
            ..policy(Policy::OnFailure, 10)
        };
        let mut h = History::default();
        assert_eq!(
            h.on_exit(&p, &Ending::Code(3), Duration::ZERO, Instant::now(), 0.0),
            Decision::Done
        );
    }

    #[test]
    fn never_fails_on_failure_and_finishes_on_success() {
        let p = policy(Policy::Never, 10);
        let mut h = History::default();
        let now = Instant::now();
        assert_eq!(
            h.on_exit(&p, &Ending::Code(0), Duration::ZERO, now, 0.0),
            Decision::Done
        );
        assert!(matches!(
            h.on_exit(&p, &Ending::Code(1), Duration::ZERO, now, 0.0),
            Decision::GiveUp { .. }
        ));
    }

    #[test]
    fn limit_within_window_gives_up_and_window_slides() {
        let p = policy(Policy::Always, 3);
        let mut h = History::default();
        let t0 = Instant::now();
        for i in 0..3 {
            let at = t0 + Duration::from_secs(i);
            delay_of(h.on_exit(&p, &Ending::Code(1), Duration::ZERO, at, 0.0));
        }
        let fourth = h.on_exit(
            &p,
            &Ending::Code(1),
            Duration::ZERO,
            t0 + Duration::from_secs(3),
            0.0,
        );
        assert!(matches!(fourth, Decision::GiveUp { .. }), "{fourth:?}");
        // Once the first restarts leave the window, restarting is allowed again.
        let later = t0 + Duration::from_secs(61);
        delay_of(h.on_exit(&p, &Ending::Code(1), Duration::ZERO, later, 0.0));
    }

    #[test]
    fn limit_zero_never_gives_up_and_stays_at_max_delay() {
        let p = policy(Policy::Always, 0);
        let mut h = History::default();
        let now = Instant::now();
        let last = (0..100)
            .map(|_| delay_of(h.on_exit(&p, &Ending::Code(1), Duration::ZERO, now, 0.0)))
            .last();
        assert_eq!(last, Some(Duration::from_secs(1)));
    }

    #[test]
    fn only_the_restarts_a_give_up_depends_on_are_kept() {
        let t0 = Instant::now();
        let mut unlimited = History::default();
        let p = policy(Policy::Always, 0);
        for i in 0..1000 {
            let at = t0 + Duration::from_millis(i);
            delay_of(unlimited.on_exit(&p, &Ending::Code(1), Duration::ZERO, at, 0.0));
        }
        assert!(unlimited.recent.is_empty(), "{}", unlimited.recent.len());

        // Limit 3 in a minute, one restart every 30 s: never given up, and
        // never more than 3 kept.
        let p = policy(Policy::Always, 3);
        let mut limited = History::default();
        for i in 0..100 {
            let at = t0 + Duration::from_secs(30 * i);
            delay_of(limited.on_exit(&p, &Ending::Code(1), Duration::ZERO, at, 0.0));
            assert!(limited.recent.len() <= 3, "{}", limited.recent.len());
        }
    }

    #[test]
    fn long_uptime_resets_backoff() {
        let p = policy(Policy::Always, 0);
        let mut h = History::default();
        let now = Instant::now();
        for _ in 0..5 {
            h.on_exit(&p, &Ending::Code(1), Duration::ZERO, now, 0.0);
        }
        let after_long_run = h.on_exit(&p, &Ending::Code(1), Duration::from_secs(31), now, 0.0);
        assert_eq!(delay_of(after_long_run), Duration::from_millis(100));
    }
}
