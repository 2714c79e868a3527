//! The dispatcher: one task per replica that turns bus events into frames — encoded once, shared by every local
//! member — and fans them out room by room in waves, so a busy big room's members get several frames per write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::{RoomName, ServerMsg, frame};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::frames;
use super::registry::{ConnId, Outbound, Rooms, encode};
use crate::bus::{BusEvent, Notice};

/// The most bus events fanned out as one batch.
const DISPATCH_BATCH: usize = 256;
/// How long a room waits between waves per local member: 500 members on a replica get a wave at most every 20 ms.
/// Measured with `cargo xtask bench` (README, Performance).
const WAVE_GAP_PER_MEMBER: Duration = Duration::from_micros(40);
/// Below this gap (rooms under 100 local members) a room is not tracked at all: small rooms never wait, so
/// light-load latency stays that of a direct fan-out.
const MIN_WAVE_GAP: Duration = Duration::from_millis(4);

impl Rooms {
    /// Drains bus events into local fan-out until the bus is dropped.
    ///
    /// Fan-out goes in waves, per room. After a wave, a room waits `WAVE_GAP_PER_MEMBER` × its local members
    /// (at most `max_delay`) before the next; events arriving meanwhile join that next wave. A quiet room's message
    /// goes out at once, and so does every message of a small room; a big busy room delivers several frames per
    /// member per wave, so each member's session wakes once and writes them in one syscall instead of one each —
    /// on loopback the kernel's per-write cost is most of the fan-out cost. A zero `max_delay` turns waves off.
    ///
    /// At most [`DISPATCH_BATCH`] events are taken per round, and the dispatcher yields between rounds, so a
    /// backlog (after the CPU was starved) reaches members in slices their sessions can write in between. Whether a
    /// member is too slow is not decided by how fast its session got to run, but by its socket (see [`Outlet`]).
    pub async fn dispatch(
        self,
        mut events: mpsc::UnboundedReceiver<BusEvent>,
        max_delay: Duration,
    ) {
        let per_round = DISPATCH_BATCH;
        let mut incoming = Vec::with_capacity(per_round);
        let mut waves = Waves::new(max_delay);
        let mut due = Vec::new();
        loop {
            let next_wave = waves.next_deadline();
            tokio::select! {
                received = events.recv_many(&mut incoming, per_round) => {
                    if received == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for event in incoming.drain(..) {
                        for (out, skip) in self.outbound(event) {
                            waves.push(out, skip, now, &mut due);
                        }
                    }
                }
                () = sleep_until_some(next_wave) => waves.take_due(Instant::now(), &mut due),
            }
            if !due.is_empty() {
                record_delays(&due);
                let now = Instant::now();
                for (room, members) in self.fan_out(&due) {
                    waves.fanned_out(room, members, now);
                }
                due.clear();
                // Let the sessions just woken write before the next slice.
                tokio::task::yield_now().await;
            }
        }
    }

    /// The connection a notice came from, when it is one of this replica's: it does not hear its own notice.
    fn own_conn(&self, node: &str, conn: ConnId) -> Option<ConnId> {
        (*node == *self.node).then_some(conn)
    }

    /// The frames one bus event becomes, each with the connection that must not receive it (its own notice).
    fn outbound(&self, event: BusEvent) -> Vec<(Arc<Outbound>, Option<ConnId>)> {
        let out = match event {
            BusEvent::Stored(record) => {
                let out = Outbound {
                    room: record.room.clone(),
                    id: Some(record.id),
                    reset: false,
                    frame: encode(&frames::live(&record)),
                    evict: record.body.evicts().map(|(nick, why)| (nick.clone(), why)),
                    to: None,
                    read: None,
                };
                vec![(out, None)]
            }
            BusEvent::Notice {
                room,
                notice: Notice::Read(read),
            } => {
                // The person's other connections learn their read state; with receipts on, the room learns who read.
                let skip = self.own_conn(&read.node, read.conn);
                let mut out = vec![(
                    Outbound {
                        to: Some(read.person.as_str().into()),
                        read: Some(read.id),
                        ..notice_frame(room.clone(), &frames::read_state(room.clone(), &read))
                    },
                    skip,
                )];
                if read.receipts {
                    out.push((notice_frame(room.clone(), &frames::seen(room, &read)), None));
                }
                out
            }
            BusEvent::Notice { room, notice } => {
                let skip = match &notice {
                    Notice::Presence(n) => self.own_conn(&n.node, n.conn),
                    Notice::Typing(n) => self.own_conn(&n.node, n.conn),
                    Notice::Read(n) => self.own_conn(&n.node, n.conn),
                };
                let msg = frames::notice(room.clone(), notice);
                vec![(notice_frame(room, &msg), skip)]
            }
            BusEvent::Gap { room, epoch, reset } => {
                let msg = ServerMsg::Gap(frame::Gap {
                    room: room.clone(),
                    epoch: epoch.to_string(),
                    reset,
                });
                let out = Outbound {
                    room,
                    id: None,
                    reset,
                    frame: encode(&msg),
                    evict: None,
                    to: None,
                    read: None,
                };
                vec![(out, None)]
            }
        };
        out.into_iter()
            .map(|(out, skip)| (Arc::new(out), skip))
            .collect()
    }
}

/// Records, per stored message, how long after it was stored it is being fanned out here (Redis's clock against
/// this replica's: meaningful where they agree, as on one host or with NTP).
fn record_delays(due: &[Pending]) {
    let now = crate::bus::now_ms();
    for (out, _) in due {
        if let Some(id) = out.id {
            #[allow(clippy::cast_precision_loss)]
            let seconds = now.saturating_sub(id.ms) as f64 / 1000.0;
            metrics::histogram!("roomcast_fanout_delay_seconds").record(seconds);
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A frame waiting for its room's wave, and the connection that must not receive it.
type Pending = (Arc<Outbound>, Option<ConnId>);

/// The dispatcher's per-room waves: when each busy room may fan out next, and what waits for that wave.
struct Waves {
    max_delay: Duration,
    /// When each room may next fan out (rooms whose time has passed are dropped now and then).
    next: HashMap<RoomName, Instant>,
    /// Frames waiting for their room's next wave, in arrival order, with the wave's time.
    waiting: HashMap<RoomName, (Instant, Vec<Pending>)>,
}

impl Waves {
    fn new(max_delay: Duration) -> Self {
        Self {
            max_delay,
            next: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// Takes one frame: into `due` when its room may fan out now, else into the room's next wave.
    fn push(
        &mut self,
        out: Arc<Outbound>,
        skip: Option<ConnId>,
        now: Instant,
        due: &mut Vec<Pending>,
    ) {
        if let Some((_, frames)) = self.waiting.get_mut(&out.room) {
            frames.push((out, skip));
            return;
        }
        match self.next.get(&out.room) {
            Some(&at) if now < at => {
                self.waiting
                    .insert(out.room.clone(), (at, vec![(out, skip)]));
            }
            _ => due.push((out, skip)),
        }
    }

    /// Records a wave of `room` to `members` local members at `now`: sets when the room may fan out again.
    fn fanned_out(&mut self, room: RoomName, members: usize, now: Instant) {
        let gap = WAVE_GAP_PER_MEMBER
            .saturating_mul(u32::try_from(members).unwrap_or(u32::MAX))
            .min(self.max_delay);
        if gap < MIN_WAVE_GAP {
            self.next.remove(&room);
            return;
        }
        if self.next.len() >= 1024 {
            self.next.retain(|_, at| now < *at);
        }
        self.next.insert(room, now + gap);
    }

    /// The earliest time a waiting wave is due.
    fn next_deadline(&self) -> Option<Instant> {
        self.waiting.values().map(|(at, _)| *at).min()
    }

    /// Moves every wave that is due into `due`.
    fn take_due(&mut self, now: Instant, due: &mut Vec<Pending>) {
        let ready: Vec<RoomName> = self
            .waiting
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(room, _)| room.clone())
            .collect();
        for room in ready {
            if let Some((_, frames)) = self.waiting.remove(&room) {
                due.extend(frames);
            }
        }
    }
}

/// A frame that carries no stored message (presence, typing).
fn notice_frame(room: RoomName, msg: &ServerMsg) -> Outbound {
    Outbound {
        room,
        id: None,
        reset: false,
        frame: encode(msg),
        evict: None,
        to: None,
        read: None,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shared::MsgId;

    use super::*;

    fn frame(room: &RoomName, n: u64) -> Arc<Outbound> {
        Arc::new(Outbound {
            room: room.clone(),
            id: Some(MsgId::new(n, 0)),
            reset: false,
            frame: Bytes::from(n.to_string()),
            evict: None,
            to: None,
            read: None,
        })
    }

    fn ids(due: &[Pending]) -> Vec<u64> {
        due.iter().map(|(out, _)| out.id.unwrap().ms).collect()
    }

    #[test]
    fn a_busy_big_room_fans_out_in_waves_and_keeps_order() {
        let big = RoomName::parse("big").unwrap();
        let mut waves = Waves::new(Duration::from_millis(20));
        let t0 = Instant::now();
        let mut due = Vec::new();
        waves.push(frame(&big, 1), None, t0, &mut due);
        assert_eq!(ids(&due), [1], "a quiet room's message goes out at once");
        waves.fanned_out(big.clone(), 500, t0);
        due.clear();

        let ms = Duration::from_millis;
        waves.push(frame(&big, 2), None, t0 + ms(1), &mut due);
        waves.push(frame(&big, 3), Some(7), t0 + ms(2), &mut due);
        assert!(due.is_empty(), "they wait for the next wave");
        assert_eq!(
            waves.next_deadline(),
            Some(t0 + ms(20)),
            "500 members × 40 µs"
        );
        waves.take_due(t0 + ms(19), &mut due);
        assert!(due.is_empty());
        waves.take_due(t0 + ms(20), &mut due);
        assert_eq!(ids(&due), [2, 3], "one wave, in arrival order");
        assert_eq!(due[1].1, Some(7), "the skip travels with its frame");
        assert_eq!(waves.next_deadline(), None);
    }

    #[test]
    fn small_rooms_and_a_zero_delay_never_wait() {
        let small = RoomName::parse("small").unwrap();
        let t0 = Instant::now();
        for (members, max_delay) in [(10, 20), (99, 20), (500, 0)] {
            let mut waves = Waves::new(Duration::from_millis(max_delay));
            let mut due = Vec::new();
            for n in 1..=3 {
                waves.push(frame(&small, n), None, t0, &mut due);
                waves.fanned_out(small.clone(), members, t0);
            }
            assert_eq!(ids(&due), [1, 2, 3]);
        }
    }

    #[test]
    fn the_delay_is_capped() {
        let huge = RoomName::parse("huge").unwrap();
        let mut waves = Waves::new(Duration::from_millis(20));
        let t0 = Instant::now();
        let mut due = Vec::new();
        waves.fanned_out(huge.clone(), 100_000, t0);
        waves.push(frame(&huge, 1), None, t0, &mut due);
        assert_eq!(waves.next_deadline(), Some(t0 + Duration::from_millis(20)));
    }
}
