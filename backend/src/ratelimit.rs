//! The token bucket every rate in the replica is: a connection's sends, an API key's requests, and the admission
//! gates for new connections and joins (`hub/admission.rs`).

use tokio::time::Instant;

/// Allows `rate` events per second on average and bursts of up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self) -> bool {
        self.refill(Instant::now());
        self.take_refilled()
    }

    /// Adds what accrued since the last refill, up to the burst; returns the seconds since then.
    pub fn refill(&mut self, now: Instant) -> f64 {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        elapsed
    }

    /// Takes one token if there is one, without refilling first.
    pub fn take_refilled(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The tokens there are now (a fraction while one refills).
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn allows_the_burst_then_the_rate() {
        let mut bucket = TokenBucket::new(2, 3);
        assert_eq!((0..5).filter(|_| bucket.take()).count(), 3);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(bucket.take());
        assert!(!bucket.take());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            (0..10).filter(|_| bucket.take()).count(),
            3,
            "refill stops at the burst"
        );
    }
}
