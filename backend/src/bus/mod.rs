//! The bus: where a room's messages are stored, get their ids and offsets, and reach every replica.
//!
//! Two implementations: [`redis::RedisBus`] for any number of replicas sharing one Redis, and [`memory::MemoryBus`],
//! the embedded default for a single replica. Both deliver incoming room events into one channel that the hub's
//! dispatcher drains, and both keep the same promise: every stored event of a subscribed room is delivered to that
//! channel once, in offset order, or a [`BusEvent::Gap`] says it no longer can be.
//!
//! The bus speaks in its own terms — [`Record`]s with their [`MsgState`], [`Body`]s and [`Notice`]s — never in the
//! browser's frames: the hub turns those into frames, in one place (`hub/frames.rs`).

pub mod archive;
pub mod body;
pub mod memory;
mod record;
pub mod redis;
pub mod revocation;
mod roster;
mod rules;

pub use body::{Body, Notice, PresenceNotice, ReadNotice, TypingNotice};
pub use record::{HistoryItem, MsgState, Record};
pub use revocation::Revocations;

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::future::BoxFuture;
use shared::{ErrorCode, MsgId, Nick, RoomName};
use tokio::sync::{mpsc, oneshot};

/// Why the bus could not carry out a request. Never shown verbatim to clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    /// The backing store cannot be reached right now (or did not answer in time).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// The store answered with something this build cannot read.
    #[error("bus protocol error: {0}")]
    Protocol(String),
    /// The room's rules refuse the event: `muted`, `banned`, `slow_mode` (each with until when), `message_gone`,
    /// `forbidden`, or `cid_reused` (the draft's `cid` was stored for another event of the same nick in the room).
    #[error("refused by the room's rules: {code:?}")]
    Refused {
        /// Why.
        code: ErrorCode,
        /// When it may succeed.
        until: Option<u64>,
    },
}

/// An event to store — a message or an action — with the client id that makes retries idempotent.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Who sends it: the nick its cid belongs to.
    pub nick: Nick,
    /// The client's id: with the room and nick, the idempotency key.
    pub cid: String,
    /// What to store (a message, edit, delete, react or moderation body; validated).
    pub body: Body,
    /// For a message: the message it replies to (the bus quotes it).
    pub reply_to: Option<MsgId>,
    /// The sender moderates the room: not muted, banned nor slowed, deletes anyone's messages.
    pub moderator: bool,
}

impl Draft {
    /// What a repeated cid must match to count as the same event: the body and the reply target.
    pub fn fingerprint(&self) -> String {
        let body = serde_json::to_string(&self.body).expect("bus bodies always serialize");
        match self.reply_to {
            Some(id) => format!("{body} {id}"),
            None => body,
        }
    }
}

/// Where a person's read position in a room stands after a `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadMove {
    /// It moved (forward); `false` for an older or repeated id.
    pub moved: bool,
    /// The read position now (`None`: the room has no message yet).
    pub id: Option<MsgId>,
    /// The room's newest message.
    pub last: Option<MsgId>,
    /// Read receipts are on in the room.
    pub receipts: bool,
    /// The reader's nick has other connections in the room (maybe on other replicas), which must hear of the move;
    /// without them, and without receipts, nobody else needs to.
    pub others: bool,
}

/// A room's read positions as a joining member sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads {
    /// This person's read position.
    pub mine: Option<MsgId>,
    /// Read receipts are on in the room.
    pub receipts: bool,
    /// With receipts on: the most recent [`shared::SEEN_SHOWN`] read positions, newest first (nick, id).
    pub seen: Vec<(Nick, MsgId)>,
}

/// What storing a [`Draft`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The stored message's id (the original one when `duplicate`).
    pub id: MsgId,
    /// The message's contiguous position in the room (1, 2, 3, …), or 0 when `duplicate`.
    pub offset: u64,
    /// The cid had been stored already within the dedupe window: nothing was stored this time.
    pub duplicate: bool,
}

/// Which stored messages a history read returns.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// Resume point: messages after this id. `None`: the `recent` newest messages.
    pub since: Option<MsgId>,
    /// The epoch `since` belongs to, when the client knows it; a mismatch voids `since`.
    pub epoch: Option<String>,
    /// How many of the newest messages to return without (or with a void) `since`.
    pub recent: usize,
    /// At most this many records after `since`.
    pub limit: usize,
}

/// A page of a room's messages and moderation events, oldest first, each with its state: what an export reads.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Messages (with their current state) and moderation events.
    pub items: Vec<HistoryItem>,
    /// Read on after this id; `None`: this page reached the newest event.
    pub next: Option<MsgId>,
}

/// The answer to a [`HistoryQuery`].
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The room's history epoch.
    pub epoch: Arc<str>,
    /// Oldest first, each with the current state of its message: after `since`, every record (messages and
    /// actions); without it, only the newest `recent` messages.
    pub items: Vec<HistoryItem>,
    /// `since` belonged to another epoch: the history it referred to is gone; `messages` are the newest instead.
    pub reset: bool,
    /// `since` is older than the oldest message still kept, and messages were trimmed since the room began.
    pub truncated: bool,
}

impl Notice {
    /// The event replicas turn it into.
    pub fn event(self, room: RoomName) -> BusEvent {
        BusEvent::Notice { room, notice: self }
    }
}

/// A change to a room's members online. A member is a nick: its connections (tabs, reconnects, replicas) count
/// once, and it stays a member for a grace period after its last connection closed, so a reconnect announces
/// nothing.
#[derive(Debug, Clone)]
pub enum RosterOp {
    /// A connection enters the room as `nick`; `person` (from the client) says who is behind it.
    Join {
        /// The nick.
        nick: Nick,
        /// The client's person id, if it sent one: a nick another person holds is refused.
        person: Option<String>,
    },
    /// A connection of the room takes another nick; the old one goes at once if no connection uses it any more.
    Rename {
        /// The nick until now.
        from: Nick,
        /// The new nick.
        to: Nick,
        /// The client's person id, if any.
        person: Option<String>,
    },
    /// A connection leaves; when it was the nick's last, the nick's grace period starts.
    Leave {
        /// The nick it had.
        nick: Nick,
    },
    /// Only the upkeep every op does: this replica is alive; replicas that stopped refreshing lose their
    /// connections; members whose grace ran out are removed. Lists no members (the heartbeat's op).
    Refresh,
    /// [`RosterOp::Refresh`], and the members listed: what a re-join with the same nick answers with.
    List,
}

/// How long members last without a sign of life.
#[derive(Debug, Clone, Copy)]
pub struct RosterTiming {
    /// A nick stays a member this long after its last connection closed.
    pub grace_ms: u64,
    /// A replica's connections count until this long after its last refresh (it refreshes well within it).
    pub alive_ms: u64,
}

/// What a [`RosterOp`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RosterChange {
    /// The nick is held by another person in the room: nothing changed.
    pub taken: bool,
    /// The op's nick was not a member before (nor within its grace period): announce it.
    pub arrived: bool,
    /// Nicks that stopped being members with this op, each reported by exactly one op across all replicas.
    pub departed: Vec<Nick>,
    /// The first [`shared::MEMBERS_SHOWN`] members in arrival order (only for `Join`, `Rename` and `List`).
    pub members: Vec<Nick>,
    /// How many members the room has.
    pub online: u32,
    /// `Join`/`Rename`: the nick or its person is banned from the room until then; nothing changed.
    pub banned_until: Option<u64>,
    /// `Join`/`Rename`/`List`: the nick is muted until then.
    pub muted_until: Option<u64>,
    /// `Join`/`Rename`/`List`: the room's slow mode, seconds (0: off).
    pub slow_mode: u64,
}

/// An event about a room, arriving from the bus.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// A stored message or action, delivered once and in order per subscribed room.
    Stored(Record),
    /// A presence or typing notice; not stored.
    Notice {
        /// The room.
        room: RoomName,
        /// Who, where, and what.
        notice: Notice,
    },
    /// Messages of the room were lost before this replica relayed them and are no longer in history.
    Gap {
        /// The room.
        room: RoomName,
        /// The room's epoch from now on.
        epoch: Arc<str>,
        /// The whole history was lost (new epoch): resume points from before are void.
        reset: bool,
    },
}

/// Milliseconds since the Unix epoch on this replica's clock: the in-memory bus's ids and presence timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A fresh random epoch: 16 hex digits. Every call differs (process-random seed, a counter and the clock).
pub fn new_epoch() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", h.finish())
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
    /// Checks a message or action against the room's rules, stores it and publishes it to every replica in one
    /// atomic step, at most once per `(room, nick, cid)` within the dedupe window.
    fn publish(
        &self,
        room: &RoomName,
        draft: Draft,
    ) -> BoxFuture<'static, Result<Published, BusError>>;

    /// Publishes a notice that is not stored (presence or typing) to every replica.
    fn announce(
        &self,
        room: &RoomName,
        notice: &Notice,
    ) -> BoxFuture<'static, Result<(), BusError>>;

    /// Applies a change to the room's members online for this replica's connection `conn`, atomically across
    /// replicas.
    fn roster(
        &self,
        room: &RoomName,
        conn: u64,
        op: RosterOp,
        timing: RosterTiming,
    ) -> BoxFuture<'static, Result<RosterChange, BusError>>;

    /// Up to `limit` stored messages older than `before`, oldest first, with their current state: scrolling back
    /// through a room.
    fn older(
        &self,
        room: &RoomName,
        before: MsgId,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, BusError>>;

    /// Messages and moderation events after `after` (from the room's first without), oldest first, with their
    /// current state, about `limit` at a time: a page of an export. With an archive, from its start.
    fn page(
        &self,
        room: &RoomName,
        after: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, BusError>>;

    /// Moves `person`'s read position in the room forward to `id` (read as `nick`), never past the room's newest
    /// message; an older or repeated `id` changes nothing.
    fn mark_read(
        &self,
        room: &RoomName,
        person: &str,
        nick: &Nick,
        id: MsgId,
    ) -> BoxFuture<'static, Result<ReadMove, BusError>>;

    /// `person`'s read position in the room, and (with read receipts on) the room's.
    fn reads(&self, room: &RoomName, person: &str) -> BoxFuture<'static, Result<Reads, BusError>>;

    /// Up to `limit` messages whose current text has every word of `words` (see [`shared::text::find`]), in `rooms`
    /// (`None`: every room), older than `before`, newest first, each with its state. Refused `no_archive` by a Redis
    /// bus without an archive.
    fn search(
        &self,
        rooms: Option<Vec<RoomName>>,
        words: Vec<shared::text::Word>,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, BusError>>;

    /// How far behind the archive is, when there is one.
    fn archive_status(&self) -> Option<Arc<redis::ArchiveStatus>> {
        None
    }

    /// Reads stored records, oldest first, with the room's epoch.
    fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> BoxFuture<'static, Result<History, BusError>>;

    /// Revokes `person`'s sessions whose tokens were issued before `issued_before` (seconds since the Unix epoch),
    /// on every replica: stored where every replica, present or future, reads it, and relayed to the replicas
    /// running now, which close those connections. Returns the revocation now in force for the person: the later of
    /// this one and any earlier one (a revocation never moves back).
    fn revoke(&self, person: &str, issued_before: u64)
    -> BoxFuture<'static, Result<u64, BusError>>;

    /// The revocations this replica knows, kept current by the bus.
    fn revocations(&self) -> &Revocations;

    /// Starts delivering the room's events to this replica (idempotent).
    fn subscribe(&self, room: &RoomName) -> Subscribed;

    /// Stops delivering the room's events to this replica.
    fn unsubscribe(&self, room: &RoomName);

    /// Whether the store is reachable as far as this replica knows.
    fn is_up(&self) -> bool;

    /// `"redis"` or `"memory"`, for logs and `/healthz`.
    fn kind(&self) -> &'static str;
}

#[cfg(test)]
mod tests {
    /// The bus deals in its own records: no file under `bus/` names the browser's frames.
    #[test]
    fn the_bus_never_names_a_frame() {
        fn visit(dir: &std::path::Path, checked: &mut usize) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    visit(&path, checked);
                    continue;
                }
                let code = std::fs::read_to_string(&path).unwrap();
                // This test names them itself.
                let code = code.split("fn the_bus_never_names_a_frame").next().unwrap();
                for word in ["ServerMsg", "shared::frame"] {
                    assert!(!code.contains(word), "{} names {word}", path.display());
                }
                *checked += 1;
            }
        }
        let mut checked = 0;
        visit(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bus"),
            &mut checked,
        );
        assert!(checked >= 15, "read only {checked} files");
    }

    #[test]
    fn epochs_differ() {
        let (a, b) = (super::new_epoch(), super::new_epoch());
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
