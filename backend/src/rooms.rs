//! Local room membership and fan-out: which connections on this replica are in which room, and delivery of bus
//! events to them.
//!
//! Each event is encoded to JSON once per replica and the same bytes are queued for every local member. Queues are
//! bounded: a member whose queue is full is a slow consumer and is closed with 1013; it reconnects and resumes
//! with `since`, so it loses nothing that is still in history, and nobody else waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::ws::Utf8Bytes;
use shared::{MsgId, PresenceEvent, RoomName, ServerMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::bus::{Bus, BusError, BusEvent};

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

/// How the registry reaches one connection.
#[derive(Debug, Clone)]
pub struct Member {
    /// The connection's bounded outgoing queue. It carries shared handles: one frame is allocated once per
    /// replica, and a queue slot is a pointer, which keeps idle queues small.
    pub queue: mpsc::Sender<Arc<Outbound>>,
    /// Cancelled when the connection must be closed for being too slow.
    pub too_slow: CancellationToken,
}

/// The rooms of this replica and their local members.
#[derive(Clone)]
pub struct Rooms {
    inner: Arc<Mutex<HashMap<RoomName, HashMap<ConnId, Member>>>>,
    bus: Arc<dyn Bus>,
    node: Arc<str>,
}

impl std::fmt::Debug for Rooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rooms")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Rooms {
    /// An empty registry whose subscriptions go to `bus`.
    pub fn new(bus: Arc<dyn Bus>, node: Arc<str>) -> Self {
        Self {
            inner: Arc::default(),
            bus,
            node,
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

    /// Queues one frame for every local member of `event.room` except `skip`.
    fn fan_out(&self, out: &Arc<Outbound>, skip: Option<ConnId>) {
        let rooms = self.lock();
        let Some(members) = rooms.get(&out.room) else {
            return;
        };
        let mut delivered = 0u64;
        for (&conn, member) in members {
            if Some(conn) == skip {
                continue;
            }
            match member.queue.try_send(Arc::clone(out)) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !member.too_slow.is_cancelled() {
                        warn!(conn, room = %out.room, "outgoing queue full; closing slow consumer with 1013");
                        metrics::counter!("roomcast_slow_consumers_total").increment(1);
                        member.too_slow.cancel();
                    }
                }
                // The session is ending and will leave the room itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        metrics::counter!("roomcast_frames_fanned_out_total").increment(delivered);
    }

    /// Drains bus events into local fan-out until the bus is dropped.
    pub async fn dispatch(self, mut events: mpsc::UnboundedReceiver<BusEvent>) {
        while let Some(event) = events.recv().await {
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
                    let skip = (*notice.node == *self.node).then_some(notice.conn);
                    let msg = ServerMsg::Presence(PresenceEvent {
                        room: room.clone(),
                        nick: notice.nick,
                        event: notice.event,
                        ts: notice.ts,
                    });
                    let out = Outbound {
                        room,
                        id: None,
                        reset: false,
                        frame: encode(&msg),
                    };
                    (out, skip)
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
            self.fan_out(&Arc::new(out), skip);
        }
    }
}

/// Encodes a server message as a text frame.
pub fn encode(msg: &ServerMsg) -> Utf8Bytes {
    Utf8Bytes::from(serde_json::to_string(msg).expect("server messages always serialize"))
}
