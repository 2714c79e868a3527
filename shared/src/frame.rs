//! The payloads of the server's frames: one struct per [`crate::ServerMsg`] variant, so code can hold, pass and
//! decode one kind of frame on its own (the browser decodes a frame's `type` first and then only that payload).

use serde::{Deserialize, Serialize};

use crate::protocol::{is_false, is_zero, is_zero_u32};
use crate::{ChatMessage, ErrorCode, Limits, MsgId, Nick, RoomName};

/// The first frame on every connection: which protocol and which replica this is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The server's [`crate::PROTOCOL_VERSION`].
    pub version: u32,
    /// The replica's node id, so a person can see which replica they are on.
    pub node: String,
    /// The limits this replica enforces.
    pub limits: Limits,
}

/// Answers `join`: the room's recent history (or everything after `since`), oldest first. Live messages follow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The joined room.
    pub room: RoomName,
    /// The nickname in use in that room.
    pub nick: Nick,
    /// Stored messages, oldest first, all with ids above the request's `since`. Bounded in bytes: when more
    /// messages are due, they follow at once as `message` frames, before any live message.
    pub history: Vec<ChatMessage>,
    /// The room's history epoch. It changes only when the store lost the room's history; send it back with
    /// `since` when resuming.
    pub epoch: String,
    /// The `since`/`epoch` the client resumed from belong to a history that was lost (the store was reset):
    /// `history` is the newest messages instead, and some messages the client never saw may be gone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
    /// History no longer reaches back to `since` (older messages were trimmed): some messages after it may be
    /// missing; `history` starts at the oldest one still kept.
    #[serde(default, skip_serializing_if = "is_false")]
    pub truncated: bool,
    /// Who is in the room now, across all replicas, this connection included: the first
    /// [`crate::MEMBERS_SHOWN`] nicks in the order they arrived. `presence` events keep it current.
    #[serde(default)]
    pub members: Vec<Nick>,
    /// How many members the room has (each nick once), also when `members` lists only the first ones.
    #[serde(default)]
    pub online: u32,
    /// This connection moderates the room (from its token's `roles`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub moderator: bool,
    /// This nick is muted in the room until then (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<u64>,
    /// Slow mode: seconds between one member's messages; 0 when off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slow_mode: u64,
    /// This person's read position in the room (the newest message they read, on any device), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<MsgId>,
    /// Messages of others after `read`.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub unread: u32,
    /// Of those, the ones that mention this nick.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mentions: u32,
    /// More than [`crate::UNREAD_COUNTED`] unread messages: the counts cover those only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
    /// The newest message the counts looked at: messages after it that reach the client add to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<MsgId>,
    /// Read receipts are on in the room.
    #[serde(default, skip_serializing_if = "is_false")]
    pub receipts: bool,
    /// With read receipts on: who has read up to where (the most recent [`crate::SEEN_SHOWN`] members to read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<SeenAt>,
    /// The request's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

/// A member's read position, for read receipts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenAt {
    /// Who.
    pub nick: Nick,
    /// The newest message they have read.
    pub id: MsgId,
}

/// This person's read position in a room, and the counts after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    /// The room.
    pub room: RoomName,
    /// The newest message read.
    pub id: MsgId,
    /// Messages of others after it.
    pub unread: u32,
    /// Of those, the ones that mention this nick.
    pub mentions: u32,
    /// There are more than [`crate::UNREAD_COUNTED`] unread messages: `unread` and `mentions` count those only.
    #[serde(default, skip_serializing_if = "is_false")]
    pub more: bool,
    /// The newest message the counts looked at (the room's newest then): messages after it that reach the client
    /// add to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<MsgId>,
}

/// With read receipts on: a member has read the room up to `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The room.
    pub room: RoomName,
    /// Who.
    pub nick: Nick,
    /// The newest message they have read.
    pub id: MsgId,
}

/// Answers `search`: the matching messages, newest first, in their current state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResults {
    /// The query answered.
    pub query: String,
    /// The messages found, newest first.
    pub results: Vec<Found>,
    /// Nothing older matches: no next page.
    pub complete: bool,
    /// The request's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

/// One message a search found, and where in its text the query matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Found {
    /// The message, in its current state (edited text; never a deleted one).
    pub message: ChatMessage,
    /// The matches in `message.text`, as `[start, end)` character offsets, in order.
    pub marks: Vec<(u32, u32)>,
}

/// Answers `leave`; also sent unasked when a moderator kicked or banned this member (`reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// The room left.
    pub room: RoomName,
    /// Why the server took the member out: `kicked` or `banned`. Absent when the client asked to leave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

/// Answers `send`: the message was stored with this id and is on its way to every member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The room the message went to.
    pub room: RoomName,
    /// The `cid` of the `send` this answers.
    pub cid: String,
    /// The id the bus assigned; the delivered `message` carries the same id.
    pub id: MsgId,
    /// Server timestamp, milliseconds since the Unix epoch.
    pub ts: u64,
    /// This `cid` had already been stored: nothing was stored again, and `id` is the original message's id.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
}

/// A message was edited. Stored and delivered like a message (its own `id`, after the message it edits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edited {
    /// The room.
    pub room: RoomName,
    /// This event's id.
    pub id: MsgId,
    /// The message edited.
    pub target: MsgId,
    /// Its author.
    pub nick: Nick,
    /// The new text.
    pub text: String,
    /// When (the `edited_at` the message now has).
    pub ts: u64,
}

/// A message was deleted: show a tombstone instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    /// The room.
    pub room: RoomName,
    /// This event's id.
    pub id: MsgId,
    /// The message deleted.
    pub target: MsgId,
    /// Who deleted it (the author, or a moderator).
    pub nick: Nick,
    /// When.
    pub ts: u64,
}

/// Someone added or took back a reaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reacted {
    /// The room.
    pub room: RoomName,
    /// This event's id.
    pub id: MsgId,
    /// The message reacted to.
    pub target: MsgId,
    /// Who.
    pub nick: Nick,
    /// Which emoji.
    pub emoji: String,
    /// Added or taken back.
    pub on: bool,
    /// How many people have this reaction on the message now.
    pub count: u32,
    /// When.
    pub ts: u64,
}

/// Answers a moderation request (`mute`, `kick`, `ban`, `slow_mode`): done, stored as the `moderation` event `id`, and
/// announced to the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// The room.
    pub room: RoomName,
    /// The id of the `moderation` event stored in the room (the original one when `duplicate`).
    pub id: MsgId,
    /// The request's `cid` had been used already: nothing was done again, `id` is the original event's.
    #[serde(default, skip_serializing_if = "is_false")]
    pub duplicate: bool,
    /// The request's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

/// Messages of a joined room were lost before they reached this connection and are no longer in history.
/// Unsolicited; the room stays joined and later messages follow as usual.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The room.
    pub room: RoomName,
    /// The room's history epoch from now on.
    pub epoch: String,
    /// The store lost the room's whole history (for example Redis restarted without persistence): resume
    /// points from before are void.
    #[serde(default, skip_serializing_if = "is_false")]
    pub reset: bool,
}

/// Someone else in the room is typing (not stored; shown until [`crate::TYPING_SHOWN_MS`] pass without another, or
/// their message arrives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing {
    /// The room.
    pub room: RoomName,
    /// Who.
    pub nick: Nick,
}

/// Answers `history`: older messages, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage {
    /// The room.
    pub room: RoomName,
    /// Up to `limit` messages older than `before`, oldest first.
    pub messages: Vec<ChatMessage>,
    /// Nothing older is kept: the first message here (if any) is the oldest the room still has.
    pub complete: bool,
    /// The request's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

/// The replica is busy (a reconnect storm): it did not take this connection or this `join`. Wait `after_ms`
/// plus a random part of it (jitter, so thousands of clients do not come back in the same instant), then
/// reconnect (the connection closes with 1013 after this frame) or send the `join` again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TryAgain {
    /// How long to wait at least, in milliseconds.
    pub after_ms: u64,
    /// What was not taken: the connection itself, or a `join`.
    pub request: TryAgainRequest,
    /// The room of a refused `join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The request's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

/// What a [`TryAgain`] turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TryAgainRequest {
    /// The connection itself: it closes with 1013 after the frame; reconnect after the wait.
    Connect,
    /// A `join` (its `room` and `req` are in the frame); the connection stays open: send it again after the wait.
    Join,
}

/// Answers `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's correlation id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

/// A request failed. The connection stays open unless a close frame follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// Machine-readable cause.
    pub code: ErrorCode,
    /// Human-readable explanation, safe to show to a person.
    pub message: String,
    /// The `type` of the request this answers, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The request's correlation id: its `req`, or its `cid` for `send`, `edit`, `delete` and `react`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
    /// The room the request named, when it named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// For `muted`, `banned` and `slow_mode`: when the request may succeed again (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}
