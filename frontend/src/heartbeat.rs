//! The liveness rule for one connection: ping after a quiet spell, give up when even the ping goes unanswered. Time
//! is passed in as milliseconds, so the rule is tested natively and the browser only supplies the clock and timers.
//!
//! Browsers hide WebSocket pings and may keep a socket "open" for minutes after the network path died (a laptop
//! waking from sleep, a NAT dropping the mapping). Only frames that arrive prove the connection alive, so the client
//! asks for one (`ping`, answered by `pong`) when none came for a while.

use std::time::Duration;

/// How long without any incoming frame before the client sends a `ping`.
pub const IDLE: Duration = Duration::from_secs(15);

/// How long after that `ping` a connection that sent nothing at all is declared dead.
pub const GRACE: Duration = Duration::from_secs(10);

/// What the connection should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing yet; look again after this long (unless a frame arrives first, which only makes the wait longer).
    Wait(Duration),
    /// Send a `ping` now. The rule has started the grace period.
    Ping,
    /// No frame arrived within the grace period after the `ping`: close the socket and reconnect.
    Dead,
}

/// The heartbeat state of one connection.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    idle: u64,
    grace: u64,
    last_frame: u64,
    pinged_at: Option<u64>,
}

impl Heartbeat {
    /// The default rule ([`IDLE`], [`GRACE`]) for a connection opened at `now` (milliseconds, any monotonic origin).
    pub fn new(now: u64) -> Self {
        Self::with_timing(IDLE, GRACE, now)
    }

    /// A rule with its own timing, for tests.
    pub fn with_timing(idle: Duration, grace: Duration, now: u64) -> Self {
        Self {
            idle: millis(idle),
            grace: millis(grace),
            last_frame: now,
            pinged_at: None,
        }
    }

    /// A frame of any kind arrived at `now`: the connection is alive, and any outstanding `ping` is answered.
    pub fn received(&mut self, now: u64) {
        self.last_frame = self.last_frame.max(now);
        self.pinged_at = None;
    }

    /// What to do at `now`. Returns [`Beat::Ping`] once per quiet spell; call again afterwards to learn how long the
    /// grace period still runs.
    pub fn poll(&mut self, now: u64) -> Beat {
        if let Some(pinged_at) = self.pinged_at {
            let deadline = pinged_at.saturating_add(self.grace);
            return if now >= deadline {
                Beat::Dead
            } else {
                Beat::Wait(Duration::from_millis(deadline - now))
            };
        }
        let due = self.last_frame.saturating_add(self.idle);
        if now >= due {
            self.pinged_at = Some(now);
            Beat::Ping
        } else {
            Beat::Wait(Duration::from_millis(due - now))
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(ms: u64) -> Beat {
        Beat::Wait(Duration::from_millis(ms))
    }

    #[test]
    fn a_quiet_connection_is_pinged_after_fifteen_seconds() {
        let mut hb = Heartbeat::new(1000);
        assert_eq!(hb.poll(1000), wait(15_000));
        assert_eq!(hb.poll(10_000), wait(6000));
        assert_eq!(hb.poll(16_000), Beat::Ping);
        assert_eq!(hb.poll(16_000), wait(10_000));
    }

    #[test]
    fn every_frame_postpones_the_ping() {
        let mut hb = Heartbeat::new(0);
        hb.received(10_000);
        assert_eq!(hb.poll(15_000), wait(10_000));
        hb.received(20_000);
        assert_eq!(hb.poll(25_000), wait(10_000));
        assert_eq!(hb.poll(35_000), Beat::Ping);
    }

    #[test]
    fn no_frame_within_ten_seconds_of_the_ping_is_dead() {
        let mut hb = Heartbeat::new(0);
        assert_eq!(hb.poll(15_000), Beat::Ping);
        assert_eq!(hb.poll(24_999), wait(1));
        assert_eq!(hb.poll(25_000), Beat::Dead);
        assert_eq!(hb.poll(90_000), Beat::Dead);
    }

    #[test]
    fn any_frame_answers_the_ping() {
        let mut hb = Heartbeat::new(0);
        assert_eq!(hb.poll(15_000), Beat::Ping);
        // Not necessarily the pong: a chat message proves the connection alive just as well.
        hb.received(20_000);
        assert_eq!(hb.poll(25_000), wait(10_000));
        assert_eq!(hb.poll(35_000), Beat::Ping);
        assert_eq!(hb.poll(45_000), Beat::Dead);
    }

    #[test]
    fn a_late_timer_after_a_long_silence_pings_before_declaring_dead() {
        // A browser throttles timers in background tabs; a timer that fires a minute late must not count the
        // silence it slept through against the connection without having asked.
        let mut hb = Heartbeat::new(0);
        assert_eq!(hb.poll(60_000), Beat::Ping);
        assert_eq!(hb.poll(65_000), wait(5000));
        assert_eq!(hb.poll(70_000), Beat::Dead);
    }

    #[test]
    fn a_clock_going_backwards_does_not_panic_or_kill() {
        let mut hb = Heartbeat::new(50_000);
        hb.received(40_000);
        assert_eq!(hb.poll(45_000), wait(20_000));
        let mut hb = Heartbeat::with_timing(Duration::from_secs(1), Duration::from_secs(1), 0);
        assert_eq!(hb.poll(1000), Beat::Ping);
        assert_eq!(hb.poll(500), wait(1500));
    }
}
