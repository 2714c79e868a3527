//! Local room membership and fan-out: which connections on this replica are in which room, and the queueing of
//! encoded frames to them (the [`super::dispatch`] task decides what and when).
//!
//! Each event is encoded to JSON once per replica and the same bytes are queued for every local member. Queues are
//! bounded in bytes and judged by the socket: a member with more than `--queue-max-bytes` waiting whose socket is
//! refusing bytes is a slow consumer and is closed with 1013; it reconnects and resumes with `since`, so it loses
//! nothing that is still in history, and nobody else waits for it. A member whose socket keeps taking bytes is not
//! slow, however far a starved CPU let its queue run ahead (up to a memory guard of 8 times the bound).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use shared::{MsgId, Nick, RoomName, ServerMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::bus::{Bus, BusError};

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
    pub frame: Bytes,
    /// A moderator kicked or banned this nick: its connections leave the room after this frame, told why.
    pub evict: Option<(Nick, &'static str)>,
    /// Only for the connections of this person (their read state); `None`: for every member of the room.
    pub to: Option<Arc<str>>,
    /// A read position this frame announces: a connection drops it unless it is ahead of the one it knows (moves
    /// relayed from two replicas may cross on the way).
    pub read: Option<MsgId>,
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
    /// Who is behind the connection in the room (the token's subject, else the nick): frames meant for one person,
    /// their read state, reach only their connections. Set per room when it joins.
    pub person: Option<Arc<str>>,
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
    pub(super) node: Arc<str>,
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

    /// Records who is behind a connection in a room (after a rename, without a token, another person).
    pub fn set_person(&self, room: &RoomName, conn: ConnId, person: Arc<str>) {
        if let Some(member) = self.lock().get_mut(room).and_then(|m| m.get_mut(&conn)) {
            member.person = Some(person);
        }
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
    pub(super) fn fan_out(
        &self,
        batch: &[(Arc<Outbound>, Option<ConnId>)],
    ) -> Vec<(RoomName, usize)> {
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
                    if *skip == Some(conn)
                        || out
                            .to
                            .as_ref()
                            .is_some_and(|to| member.person.as_ref() != Some(to))
                    {
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
}

/// Encodes a server message as the JSON text of one frame.
pub fn encode(msg: &ServerMsg) -> Bytes {
    Bytes::from(serde_json::to_string(msg).expect("server messages always serialize"))
}
