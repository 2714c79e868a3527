//! Local room membership and fan-out: which connections on this replica are in which room, and delivery of bus
//! events to them.
//!
//! Each event is encoded to JSON once per replica and the same bytes are queued for every local member. Queues are
//! bounded in bytes and judged by the socket: a member with more than `--queue-max-bytes` waiting whose socket is
//! refusing bytes is a slow consumer and is closed with 1013; it reconnects and resumes with `since`, so it loses
//! nothing that is still in history, and nobody else waits for it. A member whose socket keeps taking bytes is not
//! slow, however far a starved CPU let its queue run ahead (up to a memory guard of 8 times the bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use shared::{MsgId, PresenceEvent, RoomName, ServerMsg};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::bus::{Bus, BusError, BusEvent};

/// The most bus events fanned out as one batch.
const DISPATCH_BATCH: usize = 256;
/// How long a room waits between waves per local member: 500 members on a replica get a wave at most every 20 ms.
/// Measured with `cargo xtask bench`: at 700 messages/s into 1,000 members this cuts server CPU per delivery about
/// threefold and p99 from over 100 ms to about 30 ms (the replicas no longer saturate).
const WAVE_GAP_PER_MEMBER: Duration = Duration::from_micros(40);
/// Below this gap (rooms under 100 local members) a room is not tracked at all: small rooms never wait, so
/// light-load latency stays that of a direct fan-out.
const MIN_WAVE_GAP: Duration = Duration::from_millis(4);

/// Identifies one WebSocket connection within a replica.
pub type ConnId = u64;

/// One encoded frame on its way to a connection.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The room it belongs to; the session drops frames of rooms it has left.
    pub room: RoomName,
    /// The message id, for frames that carry a stored message; the session drops ids it has already delivered.
    pub id: Option<MsgId>,
    /// The room's history was reset: the session forgets what it delivered in the room before this frame.
    pub reset: bool,
    /// The JSON text, shared by every recipient.
    pub frame: Utf8Bytes,
}

/// A queue holding more than this many times `--queue-max-bytes` is closed even though its socket still takes
/// bytes: the memory guard for a session that cannot keep up however its socket behaves.
const HARD_LIMIT_FACTOR: usize = 8;

/// How the registry reaches one connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// The connection's outgoing queue, bounded in bytes by the dispatcher (see [`Outlet`]). It carries shared
    /// handles: one frame is allocated once per replica, and a queue slot is a pointer, which keeps idle queues
    /// small.
    pub queue: mpsc::UnboundedSender<Arc<Outbound>>,
    /// What the dispatcher and the connection's session know of each other.
    pub outlet: Arc<Outlet>,
}

/// The state a connection's session shares with the dispatcher, which decides from it whether the connection is
/// too slow: the bytes waiting in its queue and whether its socket is refusing bytes right now.
#[derive(Debug, Default)]
pub struct Outlet {
    queued: AtomicUsize,
    stalled: AtomicBool,
    /// Cancelled when the connection must be closed for being too slow.
    pub too_slow: CancellationToken,
}

impl Outlet {
    /// The session took `frame` off its queue.
    pub fn taken(&self, frame: &Outbound) {
        self.queued.fetch_sub(frame.frame.len(), Ordering::Relaxed);
    }

    /// The socket refused bytes (`true`: a write is waiting for the peer to read) or took them again (`false`).
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Relaxed);
    }

    /// Counts `frame` as queued and says whether the connection is now too slow: more than `max_bytes` waiting
    /// while its socket refuses bytes, or more than [`HARD_LIMIT_FACTOR`] times that in any case.
    fn admit(&self, frame: &Outbound, max_bytes: usize) -> bool {
        let queued =
            self.queued.fetch_add(frame.frame.len(), Ordering::Relaxed) + frame.frame.len();
        queued <= max_bytes
            || (!self.stalled.load(Ordering::Relaxed)
                && queued <= max_bytes.saturating_mul(HARD_LIMIT_FACTOR))
    }
}

/// The rooms of this replica and their local members.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Mutex<HashMap<RoomName, HashMap<ConnId, Member>>>>,
    bus: Arc<dyn Bus>,
    node: Arc<str>,
    /// `--queue-max-bytes`.
    queue_max_bytes: usize,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Rooms {
    /// An empty registry whose subscriptions go to `bus` and whose members' queues hold `queue_max_bytes`.
    pub fn new(bus: Arc<dyn Bus>, node: Arc<str>, queue_max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            bus,
            node,
            queue_max_bytes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RoomName, HashMap<ConnId, Member>>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a member and waits until this replica's subscription to the room is live, so that history read after
    /// this returns cannot miss a message. On error the caller must [`Rooms::leave`].
    pub async fn join(
        &self,
        room: &RoomName,
        conn: ConnId,
        member: Member,
    ) -> Result<(), BusError> {
        let subscribed = {
            let mut rooms = self.lock();
            let members = rooms.entry(room.clone()).or_default();
            members.insert(conn, member);
            metrics::gauge!("roomcast_rooms").set(rooms.len() as f64);
            // Enqueued under the lock: subscription changes reach the bus in membership order.
            self.bus.subscribe(room)
        };
        subscribed
            .await
            .unwrap_or_else(|_| Err(BusError::Unavailable("bus stopped".into())))
    }

    /// The rooms with local members now.
    pub fn names(&self) -> Vec<RoomName> {
        self.lock().keys().cloned().collect()
    }

    /// Removes a member; the replica unsubscribes when the room's last local member leaves.
    pub fn leave(&self, room: &RoomName, conn: ConnId) {
        let mut rooms = self.lock();
        if let Some(members) = rooms.get_mut(room) {
            members.remove(&conn);
            if members.is_empty() {
                rooms.remove(room);
                self.bus.unsubscribe(room);
                debug!(%room, "last local member left");
            }
        }
        metrics::gauge!("roomcast_rooms").set(rooms.len() as f64);
    }

    /// Queues a batch of frames for the local members of their rooms, each frame skipping its `skip` connection.
    /// Frames of one room are queued member by member, all of them for one member before the next: a member's
    /// session then wakes once and writes them together (one syscall), instead of once per frame. Order within a
    /// room is kept; the batch's rooms are independent.
    ///
    /// Returns each room of the batch with its number of local members.
    fn fan_out(&self, batch: &[(Arc<Outbound>, Option<ConnId>)]) -> Vec<(RoomName, usize)> {
        let mut delivered = 0u64;
        // Indexes of each room's frames, rooms in order of first appearance.
        let mut groups: Vec<(&RoomName, Vec<usize>)> = Vec::new();
        let mut group_of: HashMap<&RoomName, usize> = HashMap::new();
        for (i, (out, _)) in batch.iter().enumerate() {
            let g = *group_of.entry(&out.room).or_insert_with(|| {
                groups.push((&out.room, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let mut sizes = Vec::with_capacity(groups.len());
        let rooms = self.lock();
        for (room, same_room) in groups {
            let Some(members) = rooms.get(room) else {
                continue;
            };
            sizes.push((room.clone(), members.len()));
            for (&conn, member) in members {
                for &i in &same_room {
                    let (out, skip) = &batch[i];
                    if *skip == Some(conn) {
                        continue;
                    }
                    if !member.outlet.admit(out, self.queue_max_bytes) {
                        if !member.outlet.too_slow.is_cancelled() {
                            warn!(conn, %room, "outgoing queue over its bound while the socket refuses bytes; closing slow consumer with 1013");
                            metrics::counter!("roomcast_slow_consumers_total").increment(1);
                            member.outlet.too_slow.cancel();
                        }
                        break;
                    }
                    if member.queue.send(Arc::clone(out)).is_err() {
                        // The session is ending and will leave the room itself.
                        break;
                    }
                    delivered += 1;
                }
            }
        }
        metrics::counter!("roomcast_frames_fanned_out_total").increment(delivered);
        sizes
    }

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
                        let (out, skip) = self.outbound(event);
                        waves.push(out, skip, now, &mut due);
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

    /// The frame one bus event becomes, and the connection that must not receive it (its own presence notice).
    fn outbound(&self, event: BusEvent) -> (Arc<Outbound>, Option<ConnId>) {
        let (out, skip) = match event {
            BusEvent::Stored(message) => {
                let out = Outbound {
                    room: message.room.clone(),
                    id: Some(message.id),
                    reset: false,
                    frame: encode(&ServerMsg::Message(message)),
                };
                (out, None)
            }
            BusEvent::Presence { room, notice } => {
                let skip = self.own_conn(&notice.node, notice.conn);
                let msg = ServerMsg::Presence(PresenceEvent {
                    room: room.clone(),
                    nick: notice.nick,
                    event: notice.event,
                    from: notice.from,
                    ts: notice.ts,
                });
                (notice_frame(room, &msg), skip)
            }
            BusEvent::Typing { room, notice } => {
                let skip = self.own_conn(&notice.node, notice.conn);
                let msg = ServerMsg::Typing {
                    room: room.clone(),
                    nick: notice.nick,
                };
                (notice_frame(room, &msg), skip)
            }
            BusEvent::Gap { room, epoch, reset } => {
                let msg = ServerMsg::Gap {
                    room: room.clone(),
                    epoch: epoch.to_string(),
                    reset,
                };
                let out = Outbound {
                    room,
                    id: None,
                    reset,
                    frame: encode(&msg),
                };
                (out, None)
            }
        };
        (Arc::new(out), skip)
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
    }
}

/// Encodes a server message as a text frame.
pub fn encode(msg: &ServerMsg) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(msg).expect("server messages always serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(room: &RoomName, n: u64) -> Arc<Outbound> {
        Arc::new(Outbound {
            room: room.clone(),
            id: Some(MsgId::new(n, 0)),
            reset: false,
            frame: Utf8Bytes::from(n.to_string()),
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
