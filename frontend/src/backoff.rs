//! The reconnect schedule: exponential backoff with jitter, capped, with the randomness passed in so tests can pin it.

use std::time::Duration;

/// How long to wait before each reconnect attempt.
///
/// Delays double from `base` up to `cap`; each is then drawn from the upper half of its slot ("equal jitter"), so
/// the wait still grows but the clients a dying replica dropped do not all come back in the same millisecond.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    /// Half a second at first, about ten seconds at most: quick enough for a replica restart, gentle enough for an
    /// outage.
    fn default() -> Self {
        Self::new(Duration::from_millis(500), Duration::from_secs(10))
    }
}

impl Backoff {
    /// A schedule starting at `base` and never exceeding `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The slot the next delay is drawn from, before jitter: `base * 2^attempt`, at most `cap`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt. `unit` is a random number in `[0, 1]` (`Math.random()` in the browser);
    /// values outside are clamped so a bad source cannot produce a zero or unbounded wait.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let half = ceiling / 2;
        half + (ceiling - half).mul_f64(unit)
    }

    /// Starts over after a connection succeeded, so the next outage begins with a short wait again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn grows_exponentially_then_caps_at_ten_seconds() {
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (0..8).map(|_| ms(backoff.next_delay(1.0))).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]
        );
    }

    #[test]
    fn never_exceeds_the_cap_even_after_many_attempts() {
        let mut backoff = Backoff::default();
        for _ in 0..200 {
            assert!(backoff.next_delay(1.0) <= Duration::from_secs(10));
        }
    }

    #[test]
    fn jitter_stays_in_the_upper_half_of_each_slot() {
        for unit in [0.0, 0.1, 0.5, 0.9, 0.999, 1.0] {
            let mut backoff = Backoff::default();
            for _ in 0..10 {
                let ceiling = backoff.ceiling();
                let delay = backoff.next_delay(unit);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{delay:?} outside [{:?}, {ceiling:?}] for {unit}",
                    ceiling / 2
                );
            }
        }
        let mut low = Backoff::default();
        let mut high = Backoff::default();
        assert!(low.next_delay(0.0) < high.next_delay(1.0));
    }

    #[test]
    fn bad_randomness_is_clamped() {
        let mut backoff = Backoff::default();
        assert_eq!(ms(backoff.next_delay(-3.0)), 250);
        assert_eq!(ms(backoff.next_delay(f64::NAN)), 500);
        assert_eq!(ms(backoff.next_delay(7.0)), 2000);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.next_delay(1.0);
        }
        backoff.reset();
        assert_eq!(ms(backoff.next_delay(1.0)), 500);
    }
}
