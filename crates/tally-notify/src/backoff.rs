//! When to try a failed delivery again, and when to give up.
//!
//! Exponential with jitter: the n-th wait (from 0) is drawn uniformly
//! from `[base/2, base]` with `base = min(retry_min * 2^n, retry_max)`
//! ("equal jitter": never less than half the exponential step, so a
//! receiver that is down is not hammered, and spread so that the alerts
//! of many accounts failing together do not retry in lockstep). An alert
//! is given up (dead-lettered) when the next try would start later than
//! `retry_for` after its first attempt: the total time spent retrying is
//! bounded by `retry_for` (default one day), whatever the per-try bounds.
//!
//! Pure: the caller passes the random draw, so the bounds are unit-tested.

use std::time::Duration;

/// The retry schedule of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First wait (before jitter).
    pub retry_min: Duration,
    /// Longest wait (before jitter).
    pub retry_max: Duration,
    /// Longest time from the first attempt to the start of the last.
    pub retry_for: Duration,
}

impl Backoff {
    /// The exponential step before jitter for the wait after `failures`
    /// failed attempts (1 after the first).
    pub fn base(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.retry_min.saturating_mul(1u32 << doublings).min(self.retry_max)
    }

    /// The wait after `failures` failed attempts, for a uniform draw
    /// `unit` in `[0, 1)`: within `[base/2, base]`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        let base = self.base(failures);
        let half = base / 2;
        half + (base - half).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The next wait, or `None` when the try after it would start beyond
    /// `retry_for` since the first attempt (`elapsed` ago): give up.
    pub fn next(&self, failures: u32, elapsed: Duration, unit: f64) -> Option<Duration> {
        let delay = self.delay(failures, unit);
        (elapsed + delay <= self.retry_for).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(3_600),
            retry_for: Duration::from_secs(86_400),
        }
    }

    #[test]
    fn waits_double_within_their_jitter_and_stop_at_the_cap() {
        let b = backoff();
        for failures in 1..=30 {
            let base = b.base(failures);
            let low = b.delay(failures, 0.0);
            let high = b.delay(failures, 0.999_999);
            assert!(low >= base / 2 && high <= base && low <= high, "{failures}: {low:?}..{high:?} of {base:?}");
        }
        assert_eq!(b.base(1), Duration::from_secs(1));
        assert_eq!(b.base(2), Duration::from_secs(2));
        assert_eq!(b.base(5), Duration::from_secs(16));
        assert_eq!(b.base(13), Duration::from_secs(3_600), "capped at retry_max");
        assert_eq!(b.base(u32::MAX), Duration::from_secs(3_600), "no overflow");
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(500));
    }

    #[test]
    fn retrying_stops_once_the_window_is_spent() {
        let b = backoff();
        // Worst case (the longest draw every time): the sum of waits given
        // never exceeds retry_for, and it does give up.
        let (mut elapsed, mut failures) = (Duration::ZERO, 0);
        loop {
            failures += 1;
            match b.next(failures, elapsed, 1.0) {
                Some(delay) => elapsed += delay,
                None => break,
            }
            assert!(elapsed <= b.retry_for);
        }
        assert!(failures > 20, "a day of retries at most an hour apart: {failures}");
        assert!(elapsed > b.retry_for - b.retry_max, "it used the window: {elapsed:?}");
        // A short window (what the tests configure) gives up quickly.
        let short = Backoff { retry_for: Duration::from_secs(2), ..b };
        assert_eq!(short.next(1, Duration::ZERO, 1.0), Some(Duration::from_secs(1)));
        assert_eq!(short.next(2, Duration::from_secs(1), 1.0), None, "1 s + 2 s is past 2 s");
    }
}
