//! Admission control: how many new connections and joins a replica takes per second, and what it tells the rest.
//!
//! When a replica dies or is drained, all its clients reconnect to the others at once and rejoin every room with
//! `since`; each join reads history and changes the roster. Taken all at once, that storm is what melts a deployment
//! down (socket.io users call it the self-DDoS of rolling deploys). Each replica therefore admits at a bounded rate —
//! a token bucket — and answers the excess with `try_again {after_ms}` instead of queueing it in memory or in the
//! TCP backlog. `after_ms` grows with the clients already told to come back (a leaky count of them), so the storm
//! spreads itself over the time the replica needs for it rather than coming back in one piece.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::ratelimit::TokenBucket;

/// The longest a client is told to wait.
pub const MAX_WAIT: Duration = Duration::from_secs(30);
/// The shortest: below this a retry costs more than it saves.
pub const MIN_WAIT: Duration = Duration::from_millis(100);

/// A rate with a burst, and the count of refused clients still expected back.
#[derive(Debug)]
pub struct Gate {
    /// Tokens per second; 0 admits everything.
    rate: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    bucket: TokenBucket,
    /// Refused clients told to come back, leaking at `rate` per second: the queue in front of the next one.
    waiting: f64,
}

impl Gate {
    /// A gate admitting `per_sec` after a burst of as many; `per_sec == 0` admits everything.
    pub fn new(per_sec: u32) -> Self {
        Self {
            rate: f64::from(per_sec),
            state: Mutex::new(State {
                bucket: TokenBucket::new(per_sec, per_sec),
                waiting: 0.0,
            }),
        }
    }

    /// Admits one, or says how long to wait.
    pub fn admit(&self) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = s.bucket.refill(Instant::now());
        s.waiting = (s.waiting - elapsed * self.rate).max(0.0);
        if s.bucket.take_refilled() {
            return Ok(());
        }
        s.waiting += 1.0;
        let wait = Duration::from_secs_f64((s.waiting + 1.0 - s.bucket.tokens()) / self.rate);
        Err(wait.clamp(MIN_WAIT, MAX_WAIT))
    }
}

/// A replica's gates.
#[derive(Debug)]
pub struct Admission {
    /// New WebSocket connections.
    pub connections: Gate,
    /// `join` requests.
    pub joins: Gate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_admitted_then_the_rest_is_spread_out() {
        let gate = Gate::new(10);
        let admitted = (0..10).filter(|_| gate.admit().is_ok()).count();
        assert_eq!(admitted, 10);
        // The next 20 are refused, each told to wait longer than the one before: 1/10 s more per client queued.
        let waits: Vec<Duration> = (0..20).map(|_| gate.admit().unwrap_err()).collect();
        assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
        assert_eq!(waits[0], Duration::from_millis(200));
        assert_eq!(waits[19], Duration::from_millis(2100));
        // One second later ten tokens are back, and the queue in front has shrunk by ten.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..10).filter(|_| gate.admit().is_ok()).count(), 10);
        assert_eq!(gate.admit().unwrap_err(), Duration::from_millis(1200));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_bounded_and_zero_admits_everything() {
        let gate = Gate::new(1);
        assert!(gate.admit().is_ok());
        let last = (0..100).map(|_| gate.admit().unwrap_err()).last().unwrap();
        assert_eq!(last, MAX_WAIT);
        let open = Gate::new(0);
        assert!((0..10_000).all(|_| open.admit().is_ok()));
    }
}
