//! The bus: where a room's messages are stored, get their ids, and reach every replica.
//!
//! Two implementations: [`redis::RedisBus`] for any number of replicas sharing one Redis, and [`memory::MemoryBus`],
//! the embedded default for a single replica. Both deliver incoming room events into one channel that the
//! [`crate::rooms`] dispatcher drains.

pub mod memory;
pub mod redis;

use futures_util::future::BoxFuture;
use shared::{BusBody, ChatMessage, MsgId, Nick, RoomName};
use tokio::sync::{mpsc, oneshot};

/// Why the bus could not carry out a request. Never shown verbatim to clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The backing store cannot be reached right now.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something this build cannot read.
    #[error("bus protocol error: {0}")]
    Protocol(String),
}

/// An event about a room, arriving from the bus.
#[derive(Debug, Clone)]
pub struct BusEvent {
    /// The room it concerns.
    pub room: RoomName,
    /// The stored message id; `None` for events that are not stored (presence).
    pub id: Option<MsgId>,
    /// What happened.
    pub body: BusBody,
}

/// Milliseconds since the Unix epoch on this replica's clock: the in-memory bus's ids and presence timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where a bus delivers the events of the rooms this replica is subscribed to.
pub type EventSink = mpsc::UnboundedSender<BusEvent>;

/// Resolves once a subscription is live: every message published after that reaches this replica.
pub type Subscribed = oneshot::Receiver<Result<(), BusError>>;

/// The operations a replica needs from its bus.
///
/// `subscribe` and `unsubscribe` are synchronous on purpose: they enqueue the change at call time, so calls made
/// under the rooms lock reach the store in the same order as the membership changes that caused them.
pub trait Bus: Send + Sync + 'static {
    /// Stores a chat message and publishes it to every replica in one atomic step; returns its id.
    fn publish(
        &self,
        room: &RoomName,
        nick: &Nick,
        text: &str,
    ) -> BoxFuture<'static, Result<MsgId, BusError>>;

    /// Publishes an event that is not stored (a presence notice).
    fn announce(&self, room: &RoomName, body: &BusBody)
    -> BoxFuture<'static, Result<(), BusError>>;

    /// Stored messages, oldest first: all after `since` (up to the history limit), or the `recent` latest ones.
    fn history(
        &self,
        room: &RoomName,
        since: Option<MsgId>,
        recent: usize,
    ) -> BoxFuture<'static, Result<Vec<ChatMessage>, BusError>>;

    /// Starts delivering the room's events to this replica (idempotent).
    fn subscribe(&self, room: &RoomName) -> Subscribed;

    /// Stops delivering the room's events to this replica.
    fn unsubscribe(&self, room: &RoomName);

    /// Whether the store is reachable as far as this replica knows.
    fn is_up(&self) -> bool;

    /// `"redis"` or `"memory"`, for logs and `/healthz`.
    fn kind(&self) -> &'static str;
}
