//! The system of record behind the bus, in the bus's terms: what the Redis bus archives into, reads history older than
//! its hot window from, and rebuilds an emptied Redis from. `crate::archive` implements it on PostgreSQL.
//!
//! The archive is the truth for every event it holds; Redis is the truth for the events after the archive's
//! [`Cursor`] (stored, acked, not archived yet), and trims its stream only up to that cursor.

use futures_util::future::BoxFuture;
use shared::{MsgId, RoomName};

use super::{HistoryItem, MsgState, Record};

/// Where a room's archive stands: every event of the room up to `id` (offset `offset` of epoch `epoch`) is archived.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The epoch of the Redis history the archive follows.
    pub epoch: String,
    /// The newest archived event's offset in that epoch (0: none yet).
    pub offset: u64,
    /// The newest archived event's id.
    pub id: MsgId,
}

/// One stored event as the archive takes it: the record, its offset, and the idempotency key it was stored under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Its offset in the room's epoch.
    pub offset: u64,
    /// The event.
    pub record: Record,
    /// The client id it was stored under (its author's).
    pub cid: String,
    /// The digest of what it stored, which a repeated cid must match.
    pub digest: String,
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// The archive now holds everything up to this cursor (`events` of the entries were new; `gaps` events before
    /// them were found missing).
    Done {
        /// The room's cursor after the append.
        cursor: Cursor,
        /// How many entries were archived now.
        events: u64,
        /// How many events the offsets show missing (never expected).
        gaps: u64,
    },
    /// Another replica is archiving the room right now: nothing was done.
    Busy,
}

/// What a room's Redis keys are rebuilt from, after Redis lost them.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    /// The room's cursor: its epoch goes on, and new offsets and ids follow it.
    pub cursor: Cursor,
    /// The newest archived events, oldest first, each with its message's state (messages only).
    pub entries: Vec<(LogEntry, Option<MsgState>)>,
    /// The moderation in force: `mute:<nick>`, `ban:<nick>`, `ban:person:<person>` → until (ms).
    pub moderation: Vec<(String, u64)>,
    /// Slow mode's seconds (0: off).
    pub slow_secs: u64,
    /// Idempotency keys still within the dedupe window: (nick, cid, id, digest).
    pub cids: Vec<(String, String, MsgId, String)>,
    /// Read receipts are on.
    pub receipts: bool,
    /// The room's read positions.
    pub reads: Vec<ReadPosition>,
}

/// A person's read position in a room, as the archive keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadPosition {
    /// The room.
    pub room: RoomName,
    /// Who (the token's subject, or the nick).
    pub person: String,
    /// The nick they read as.
    pub nick: String,
    /// The newest message read.
    pub id: MsgId,
}

/// What the retention job did to one room: every event older than `before` is gone from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    /// The room.
    pub room: RoomName,
    /// Events with an id below this are expired.
    pub before: MsgId,
    /// How many events the archive deleted.
    pub events: u64,
}

/// Why the archive could not do something, in words that name the cause (`connection refused`, `password
/// authentication failed`, `No space left on device`, …).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ArchiveError(pub String);

/// The system of record.
pub trait Archive: Send + Sync + 'static {
    /// Whether the archive answers (and its schema is migrated).
    fn ping(&self) -> BoxFuture<'static, Result<(), ArchiveError>>;

    /// Where the room's archive stands; `None` for a room it has never seen.
    fn cursor(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<Cursor>, ArchiveError>>;

    /// Archives `entries` (oldest first, contiguous, of epoch `epoch`) in one transaction: those at or before the
    /// room's cursor are skipped, the rest inserted once each, their actions applied to their messages' states, and
    /// the cursor moved to the last of them. [`Appended::Busy`] when another replica holds the room.
    fn append(
        &self,
        room: &RoomName,
        epoch: &str,
        entries: Vec<LogEntry>,
    ) -> BoxFuture<'static, Result<Appended, ArchiveError>>;

    /// Up to `limit` messages older than `before`, oldest first, with their state: scrolling back past Redis.
    fn older(
        &self,
        room: &RoomName,
        before: MsgId,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, ArchiveError>>;

    /// Up to `limit` events (every kind) after `since` and before `before`, oldest first, each with the state of its
    /// message (an action's target's): what a member resuming from further back than Redis's window missed. The flag
    /// says whether the archive reaches back to `since` (a retention may have deleted it).
    fn after(
        &self,
        room: &RoomName,
        since: MsgId,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<(bool, Vec<HistoryItem>), ArchiveError>>;

    /// Up to `limit` messages and moderation events after `after` and before `before`, oldest first, with their
    /// state: a page of an export.
    fn page(
        &self,
        room: &RoomName,
        after: Option<MsgId>,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, ArchiveError>>;

    /// What to rebuild the room's Redis keys from: its cursor, its newest `window` events, the moderation in force
    /// at `now` (ms), the idempotency keys of events since `cids_since` (ms). `None` for a room it has never seen.
    fn seed(
        &self,
        room: &RoomName,
        window: usize,
        now: u64,
        cids_since: u64,
    ) -> BoxFuture<'static, Result<Option<Seed>, ArchiveError>>;

    /// Keeps read positions, each only if it is ahead of the one kept (forward only, whatever order they come in).
    fn save_reads(&self, reads: Vec<ReadPosition>) -> BoxFuture<'static, Result<(), ArchiveError>>;

    /// Up to `limit` messages whose current text has every word of `words`, in `rooms` (`None`: every room), older
    /// than `before`, newest first, each with its state.
    fn search(
        &self,
        rooms: Option<Vec<RoomName>>,
        words: Vec<shared::text::Word>,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, ArchiveError>>;

    /// Records that `person`'s tokens issued before `before` (seconds) are revoked; an earlier revocation of theirs
    /// only moves forward.
    fn revoke(&self, person: &str, before: u64) -> BoxFuture<'static, Result<(), ArchiveError>>;

    /// Every revocation: person → their tokens issued before this no longer count.
    fn revocations(&self) -> BoxFuture<'static, Result<Vec<(String, u64)>, ArchiveError>>;

    /// The retention job, when it is due (`every_secs` since its last run, on any replica) and this replica gets
    /// it: deletes every event older than its room's retention (the room's own, else `default_days`; `None`: keep
    /// forever) as of `now` (ms). Empty when the job was not due or ran elsewhere.
    fn expire(
        &self,
        default_days: Option<f64>,
        every_secs: u64,
        now: u64,
    ) -> BoxFuture<'static, Result<Vec<Expired>, ArchiveError>>;
}
