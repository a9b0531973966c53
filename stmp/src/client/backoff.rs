//! Delays between reconnect attempts: exponential, with full jitter, reset only once a
//! connection has proved stable.

use std::time::Duration;

/// The reconnect policy a client is configured with.
#[derive(Clone, Debug)]
pub(crate) struct ReconnectPolicy {
    /// The ceiling of the first delay; each failure doubles it.
    pub(crate) base: Duration,
    /// The largest ceiling.
    pub(crate) cap: Duration,
    /// How long a connection must stay up before the next disconnect starts over from `base`.
    pub(crate) reset_after: Duration,
}

/// A client's backoff: the policy and the failures so far.
///
/// The delay before the next attempt is drawn uniformly from `0 ..= min(cap, base · 2^n)`,
/// `n` the failures so far ("full jitter"): clients of a restarted server spread over the
/// whole window instead of arriving together at the end of each doubling, as they do with a
/// small jitter around the doubled delay. A connection that drops soon after it was made
/// counts as a failure, so a server that accepts and falls over again is not hammered.
#[derive(Debug)]
pub(crate) struct Backoff {
    policy: ReconnectPolicy,
    failures: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    pub(crate) fn new(policy: ReconnectPolicy) -> Backoff {
        Backoff::with_rng(policy, fastrand::Rng::new())
    }

    /// With a seeded generator, for reproducible tests.
    pub(crate) fn with_rng(policy: ReconnectPolicy, rng: fastrand::Rng) -> Backoff {
        Backoff {
            policy,
            failures: 0,
            rng,
        }
    }

    /// The delay before the next attempt; counts one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let doublings = self.failures.min(31);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self
            .policy
            .base
            .saturating_mul(1 << doublings)
            .min(self.policy.cap);
        ceiling.mul_f64(self.rng.f64())
    }

    /// A connection stayed up for `uptime` before it dropped.
    pub(crate) fn connection_lasted(&mut self, uptime: Duration) {
        if uptime >= self.policy.reset_after {
            self.failures = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(10),
        }
    }

    /// When each of `clients` is back after a server that was down for `down`: every attempt
    /// before then fails at once (connection refused), the first after it succeeds.
    fn back_after_restart(clients: u64, down: Duration) -> Vec<Duration> {
        (0..clients)
            .map(|seed| {
                let mut backoff = Backoff::with_rng(policy(), fastrand::Rng::with_seed(seed));
                backoff.connection_lasted(Duration::from_secs(3600));
                let mut at = Duration::ZERO;
                while at < down {
                    at += backoff.next_delay();
                }
                at
            })
            .collect()
    }

    #[test]
    fn a_restart_does_not_bring_the_clients_back_in_a_herd() {
        let down = Duration::from_secs(3);
        let back = back_after_restart(200, down);
        let herd = back
            .iter()
            .filter(|at| **at < down + Duration::from_millis(500))
            .count();
        // With ±25 % jitter around the doubled delay, 57 % came back in this first half
        // second; spread evenly over the following 3 s it would be 17 %.
        assert!(herd <= 50, "{herd} of 200 back within 0.5 s");
        // Every half second of the following three gets some of them, none a herd.
        for window in 1..6 {
            let from = down + Duration::from_millis(500 * window);
            let to = from + Duration::from_millis(500);
            let count = back.iter().filter(|at| **at >= from && **at < to).count();
            assert!(
                (5..=50).contains(&count),
                "{count} back {from:?}..{to:?} after the restart"
            );
        }
        let last = back.iter().max().unwrap();
        assert!(*last < down + policy().cap, "the last is back at {last:?}");
    }

    #[test]
    fn delays_stay_under_a_doubling_ceiling_and_the_cap() {
        let mut backoff = Backoff::with_rng(policy(), fastrand::Rng::with_seed(7));
        for failures in 0..12u32 {
            let ceiling = Duration::from_millis(100 << failures).min(Duration::from_secs(10));
            let delay = backoff.next_delay();
            assert!(delay <= ceiling, "{delay:?} > {ceiling:?} after {failures}");
        }
        // Full jitter: over many draws the delays cover the whole window, down to near zero.
        let mut low = Backoff::with_rng(policy(), fastrand::Rng::with_seed(8));
        let draws: Vec<Duration> = (0..200)
            .map(|_| {
                low.failures = 0;
                low.next_delay()
            })
            .collect();
        assert!(draws.iter().any(|d| *d < Duration::from_millis(10)));
        assert!(draws.iter().any(|d| *d > Duration::from_millis(90)));
    }

    #[test]
    fn only_a_connection_that_stayed_up_resets_the_backoff() {
        let mut backoff = Backoff::with_rng(policy(), fastrand::Rng::with_seed(1));
        for _ in 0..5 {
            backoff.next_delay();
        }
        // Up for a moment, then gone: the next delay is drawn from the 3.2 s window.
        backoff.connection_lasted(Duration::from_secs(1));
        assert_eq!(backoff.failures, 5);
        backoff.connection_lasted(Duration::from_secs(10));
        assert_eq!(backoff.failures, 0);
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
