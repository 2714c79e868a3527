//! The messages: what a client sends (`ClientMsg`) and what a replica sends (`ServerMsg`). docs/PROTOCOL.md
//! documents each with a JSON example, and a test parses those.

use serde::{Deserialize, Deserializer, Serialize};

use crate::{MsgId, Nick, RoomName, frame};

/// A frame from a client. Every frame is a JSON object with a `type` field.
///
/// Room names, nicknames and text arrive as plain strings on purpose: the server validates them after parsing so it
/// can answer an invalid one with an error that names the request, instead of a generic parse failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Announces the protocol version the client speaks. Optional; a mismatch is refused.
    Hello {
        /// The client's [`crate::PROTOCOL_VERSION`].
        version: u32,
    },
    /// Joins a room (or re-joins it, changing the nickname and fetching history again).
    Join {
        /// The room to join.
        room: String,
        /// The nickname to use in that room.
        nick: String,
        /// Resume point: the last message id the client saw. History then holds exactly the messages after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<MsgId>,
        /// The room's history epoch the `since` belongs to (from an earlier `joined` or `gap`). When it no longer
        /// matches, the history the client knew was lost and `joined` says `reset`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
        /// Who is behind the nick: a random id the client keeps (the browser: in localStorage), 8 to 64 letters,
        /// digits, `-` or `_`. Several connections with one nick and one `person` (tabs, reconnects) are one member;
        /// a nick another `person` holds in the room is refused with `nick_taken`. Without it, no such check.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        person: Option<String>,
        /// Correlation id echoed in the answer, chosen by the client.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
    },
    /// Leaves a room.
    Leave {
        /// The room to leave.
        room: String,
        /// Correlation id echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
    },
    /// Sends a message to a joined room.
    Send {
        /// The room, which the connection must have joined.
        room: String,
        /// The message text.
        text: String,
        /// Client message id, echoed in the `ack` (or `error`) so the client can match it to its pending message.
        /// Also the idempotency key: a `send` repeating a `cid` already stored for this nick in this room (within the
        /// dedupe window) is not stored again and gets the original `ack`.
        cid: String,
        /// The message this one replies to: the stored message carries a short quote of it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<MsgId>,
    },
    /// Replaces the text of one of my messages. Answered with `ack` (its `id` is the edit's own id); every member
    /// gets `edited`. Only the author edits; a message deleted or no longer in history is `message_gone`.
    Edit {
        /// The room.
        room: String,
        /// The message to edit.
        id: MsgId,
        /// The new text.
        text: String,
        /// Client id: the idempotency key, as for `send`.
        cid: String,
    },
    /// Deletes a message: every member gets `deleted` and shows a tombstone. The author deletes their own
    /// messages; a moderator deletes any. Answered with `ack`.
    Delete {
        /// The room.
        room: String,
        /// The message to delete.
        id: MsgId,
        /// Client id: the idempotency key.
        cid: String,
    },
    /// Adds (`on: true`) or takes back (`on: false`) my reaction to a message: one per person per emoji. Answered
    /// with `ack`; every member gets `reacted` with the new count.
    React {
        /// The room.
        room: String,
        /// The message reacted to.
        id: MsgId,
        /// One of [`crate::validate::EMOJI`].
        emoji: String,
        /// Add or take back.
        on: bool,
        /// Client id: the idempotency key.
        cid: String,
    },
    /// Moderators only: `nick` may not send, edit or react in the room for `secs` seconds (0 lifts it).
    Mute {
        /// The room.
        room: String,
        /// Who.
        nick: String,
        /// How long, in seconds, at most [`crate::validate::MODERATION_MAX_SECS`]; 0 lifts the mute.
        secs: u64,
        /// Correlation id echoed in `done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// Client id: the idempotency key, as for `send` (a retry with the same `cid` moderates once and is
        /// answered with the original `done`). Without it, every request is a new moderation event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// Moderators only: takes `nick` out of the room on every replica (they may join again).
    Kick {
        /// The room.
        room: String,
        /// Who.
        nick: String,
        /// Correlation id echoed in `done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// Client id: the idempotency key, as for `send` (a retry with the same `cid` moderates once and is
        /// answered with the original `done`). Without it, every request is a new moderation event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// Moderators only: takes `nick` out of the room and refuses the nick, and the person behind it, for `secs`
    /// seconds (0 lifts the ban).
    Ban {
        /// The room.
        room: String,
        /// Who.
        nick: String,
        /// How long, in seconds, at most [`crate::validate::MODERATION_MAX_SECS`]; 0 lifts the ban.
        secs: u64,
        /// Correlation id echoed in `done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// Client id: the idempotency key, as for `send` (a retry with the same `cid` moderates once and is
        /// answered with the original `done`). Without it, every request is a new moderation event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// Moderators only: every other member sends at most one message per `secs` seconds (0 turns it off).
    SlowMode {
        /// The room.
        room: String,
        /// Seconds between one member's messages, at most [`crate::validate::MODERATION_MAX_SECS`].
        secs: u64,
        /// Correlation id echoed in `done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// Client id: the idempotency key, as for `send` (a retry with the same `cid` moderates once and is
        /// answered with the original `done`). Without it, every request is a new moderation event.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// Moderators only: the room keeps its messages `days` days (0: as long as the server keeps them,
    /// `--retention-days`); older ones are deleted from every store by the retention job. Needs the archive.
    Retention {
        /// The room.
        room: String,
        /// Days, at most [`crate::validate::RETENTION_MAX_DAYS`]; 0 goes back to the server's retention.
        days: u32,
        /// Correlation id echoed in `done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// Client id: the idempotency key, as for the other moderation requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// Moderators only: read receipts on (`on: true`) or off in the room: with them on, every member sees up to which
    /// message each member has read (`seen`).
    Receipts {
        /// The room.
        room: String,
        /// On or off.
        on: bool,
        /// Correlation id echoed in `done`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
        /// Client id: the idempotency key, as for the other moderation requests.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
    },
    /// This person has read the joined room up to the message `id`: their read position there moves forward (never
    /// back), and every connection of theirs — every tab, every device, on any replica — gets `read_state`.
    Read {
        /// The room.
        room: String,
        /// The newest message read.
        id: MsgId,
    },
    /// Searches the current text of the messages of the rooms this connection may read (a token's `rooms`, else
    /// every room), or of `room` only: newest first, `limit` (1–50) at a time, older than `before` for the next page.
    /// Answered with `search_results`. Needs the archive.
    Search {
        /// Words or parts of words (1–200 characters).
        query: String,
        /// Only this room.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        /// Only messages older than this id (the last result of the previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<MsgId>,
        /// At most this many results (default 20).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// Correlation id echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
    },
    /// Application-level heartbeat: the server answers `pong`. Browsers cannot see WebSocket pings, so this is
    /// how a client notices a silently dead connection.
    Ping {
        /// Correlation id echoed in the `pong`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
    },
    /// The person is typing in a joined room. Not answered; relayed to the room's other members as `typing`, at
    /// most one per room every [`TYPING_EVERY_MS`] per connection (more are dropped), the first after a `send`
    /// at once. Send it again while typing
    /// goes on: the indicator expires by itself after [`TYPING_SHOWN_MS`].
    Typing {
        /// The room.
        room: String,
    },
    /// Asks for older messages of a joined room: scrolling back. Answered with `history_page`.
    History {
        /// The room, which the connection must have joined.
        room: String,
        /// Messages older than this id (normally the oldest the client has).
        before: MsgId,
        /// At most this many (1 to [`HISTORY_PAGE_MAX`]).
        limit: usize,
        /// Correlation id echoed in the answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<String>,
    },
}

impl ClientMsg {
    /// The room the request names, if any: what the server checks against the connection's grant (a token's
    /// `rooms`) before the request's own rules run. Exhaustive on purpose: a new request type must say here
    /// whether it names a room, or the crate does not compile.
    pub fn room(&self) -> Option<&str> {
        match self {
            Self::Join { room, .. }
            | Self::Leave { room, .. }
            | Self::Send { room, .. }
            | Self::Edit { room, .. }
            | Self::Delete { room, .. }
            | Self::React { room, .. }
            | Self::Mute { room, .. }
            | Self::Kick { room, .. }
            | Self::Ban { room, .. }
            | Self::SlowMode { room, .. }
            | Self::Retention { room, .. }
            | Self::Receipts { room, .. }
            | Self::Read { room, .. }
            | Self::Typing { room }
            | Self::History { room, .. } => Some(room),
            Self::Search { room, .. } => room.as_deref(),
            Self::Hello { .. } | Self::Ping { .. } => None,
        }
    }
}

/// The most messages one `history` request returns.
pub const HISTORY_PAGE_MAX: usize = 200;
/// A connection's `typing` is relayed at most this often per room.
pub const TYPING_EVERY_MS: u64 = 2_000;
/// How long a client shows "… is typing" after the last `typing` it received for that person.
pub const TYPING_SHOWN_MS: u64 = 5_000;
/// How many nicks `joined` lists at most; `online` counts them all.
pub const MEMBERS_SHOWN: usize = 100;
/// How many read positions `joined.seen` lists at most: read receipts name people in rooms up to this size.
pub const SEEN_SHOWN: usize = 50;
/// How many unread messages the counts look at; beyond, `read_state.more`.
pub const UNREAD_COUNTED: u32 = 2_000;
/// The most results one `search` answers with.
pub const SEARCH_PAGE_MAX: usize = 50;

/// Defines [`ServerMsg`] and [`ServerKind`] from one list of the server's frames, so the list is written once: the
/// enum of frames, the enum of their `type`s, [`ServerMsg::kind`] and [`ServerMsg::decode`] cannot disagree.
macro_rules! server_frames {
    ($($(#[$doc:meta])* $kind:ident($payload:ty),)*) => {
        /// A frame from a replica.
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        pub enum ServerMsg {
            $($(#[$doc])* $kind($payload),)*
        }

        /// The `type` of a [`ServerMsg`], without its payload.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[allow(missing_docs)]
        pub enum ServerKind {
            $($kind,)*
        }

        impl ServerMsg {
            /// Decodes a frame whose `type` was read first (with [`Tagged`]): `frame` deserializes the whole frame,
            /// and only the payload of `kind` is decoded from it (its `type` member is ignored like any unknown
            /// member).
            ///
            /// The derived `Deserialize` accepts `type` anywhere in the object, so it first buffers every member of
            /// every frame in a generic tree and decodes from that; the browser reads frames with this instead,
            /// which keeps that machinery (about 5 KB of the compressed wasm) out of the page and decodes each
            /// frame straight from its text.
            pub fn decode<'de, D: Deserializer<'de>>(kind: ServerKind, frame: D) -> Result<Self, D::Error> {
                Ok(match kind {
                    $(ServerKind::$kind => Self::$kind(Deserialize::deserialize(frame)?),)*
                })
            }

            /// This frame's `type`.
            pub fn kind(&self) -> ServerKind {
                match self {
                    $(Self::$kind(_) => ServerKind::$kind,)*
                }
            }
        }
    };
}

server_frames! {
    /// The first frame on every connection: which protocol and which replica this is.
    Welcome(frame::Welcome),
    /// Answers `join`: the room's recent history (or everything after `since`), oldest first. Live messages follow.
    Joined(frame::Joined),
    /// Answers `leave`; also sent unasked when a moderator kicked or banned this member (`reason`).
    Left(frame::Left),
    /// Answers `send`: the message was stored with this id and is on its way to every member.
    Ack(frame::Ack),
    /// A chat message in a joined room, delivered to every member on every replica, the sender included.
    Message(ChatMessage),
    /// A message was edited. Stored and delivered like a message (its own `id`, after the message it edits).
    Edited(frame::Edited),
    /// A message was deleted: show a tombstone instead.
    Deleted(frame::Deleted),
    /// Someone added or took back a reaction.
    Reacted(frame::Reacted),
    /// A moderator acted in the room: shown to everyone. Stored and delivered like a message.
    Moderation(ModerationEvent),
    /// Answers a moderation request (`mute`, `kick`, `ban`, `slow_mode`): done, stored with `id`, and announced to
    /// the room.
    Done(frame::Done),
    /// Someone else joined or left a joined room.
    Presence(PresenceEvent),
    /// Messages of a joined room were lost before they reached this connection and are no longer in history.
    /// Unsolicited; the room stays joined and later messages follow as usual.
    Gap(frame::Gap),
    /// Someone else in the room is typing (not stored; shown until [`TYPING_SHOWN_MS`] pass without another, or
    /// their message arrives).
    Typing(frame::Typing),
    /// Answers `history`: older messages, oldest first.
    HistoryPage(frame::HistoryPage),
    /// This person's read position in a room moved (on any of their connections), with the room's unread and
    /// mention counts after it; also answers `read`.
    ReadState(frame::ReadState),
    /// With read receipts on: a member has read the room up to `id`.
    Seen(frame::Seen),
    /// Answers `search`.
    SearchResults(frame::SearchResults),
    /// The replica is busy (a reconnect storm): it did not take this connection or this `join`. Wait `after_ms`
    /// plus a random part of it (jitter, so thousands of clients do not come back in the same instant), then
    /// reconnect (the connection closes with 1013 after this frame) or send the `join` again.
    TryAgain(frame::TryAgain),
    /// Answers `ping`.
    Pong(frame::Pong),
    /// A request failed. The connection stays open unless a close frame follows.
    Error(frame::Error),
}

/// Only the `type` of a server frame: decoding a frame into this skips every other member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Tagged {
    /// The frame's `type`.
    #[serde(rename = "type")]
    pub kind: ServerKind,
}

/// One stored chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Assigned once by the bus; strictly increasing within the room.
    pub id: MsgId,
    /// The room it was sent to.
    pub room: RoomName,
    /// The sender's nickname in that room.
    pub nick: Nick,
    /// The text, to be rendered as text (never as HTML).
    pub text: String,
    /// Server timestamp, milliseconds since the Unix epoch (the millisecond part of `id`).
    pub ts: u64,
    /// The message this one replies to, quoted as it was then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Quote>,
    /// When the text was last edited (in history; live members apply `edited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// The message was deleted: `text` is empty, show a tombstone.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// Reactions with their counts (in history; live members apply `reacted`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
}

impl ChatMessage {
    /// A new message as sent: no reply, never edited, no reactions.
    pub fn new(id: MsgId, room: RoomName, nick: Nick, text: String) -> Self {
        Self {
            ts: id.ms,
            id,
            room,
            nick,
            text,
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
        }
    }
}

/// What a reply shows of the message it answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// The message replied to (jump to it).
    pub id: MsgId,
    /// Its author.
    pub nick: Nick,
    /// The start of its text, at most [`crate::validate::QUOTE_MAX_CHARS`] characters.
    pub text: String,
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many people reacted with it.
    pub count: u32,
    /// Whether the member this history is for is one of them.
    #[serde(default, skip_serializing_if = "is_false")]
    pub mine: bool,
}

/// A moderator's action, as the room sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModerationEvent {
    /// The room.
    pub room: RoomName,
    /// This event's id.
    pub id: MsgId,
    /// The moderator (for the HTTP API and the CLI: the name they gave, default `moderator`).
    pub by: Nick,
    /// What was done.
    pub action: ModerationAction,
    /// To whom (absent for `slow_mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nick: Option<Nick>,
    /// The duration in seconds: how long a mute or ban lasts, or slow mode's interval. Always present: 0 for a
    /// kick, and for a mute, ban or slow mode that was lifted.
    #[serde(default)]
    pub secs: u64,
    /// When.
    pub ts: u64,
}

/// What a moderator can do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModerationAction {
    /// The nick may not send, edit or react for a while.
    Mute,
    /// The nick was taken out of the room.
    Kick,
    /// The nick (and the person behind it) was taken out and may not join for a while.
    Ban,
    /// Members may send one message per `secs`.
    SlowMode,
    /// The room keeps its messages `secs` / 86,400 days (0: as long as the server does).
    Retention,
    /// Read receipts on (`secs` 1) or off (0).
    Receipts,
}

impl ModerationAction {
    /// Every action, in the order the protocol lists them.
    pub const ALL: [Self; 6] = [
        Self::Mute,
        Self::Kick,
        Self::Ban,
        Self::SlowMode,
        Self::Retention,
        Self::Receipts,
    ];
}

/// Someone joined or left a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    /// The room.
    pub room: RoomName,
    /// Who.
    pub nick: Nick,
    /// Joined, left or renamed.
    pub event: PresenceKind,
    /// For `renamed`: the nick the member had before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Nick>,
    /// Server timestamp, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// What a presence event says. A member is a nick, not a connection: several tabs count once, and a reconnect within
/// the grace period announces nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceKind {
    /// A member joined.
    Joined,
    /// A member left: their last connection closed more than the grace period ago (or their replica stopped).
    Left,
    /// A member changed nick (`from` is the old one) and nobody else uses the old one in the room.
    Renamed,
}

/// The limits a replica enforces, announced in `welcome` so clients can check before sending.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest accepted frame in bytes; larger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// Longest message text in characters.
    pub max_text_chars: usize,
    /// How many rooms one connection may be in at once.
    pub max_rooms: usize,
    /// How many recent messages `joined` carries when `since` is absent.
    pub history_on_join: usize,
    /// Sustained `send` rate allowed per connection, per second.
    pub sends_per_sec: u32,
    /// Burst of `send`s allowed above the sustained rate.
    pub send_burst: u32,
}

/// Machine-readable error causes. Stable: clients switch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `hello` announced a protocol version this server does not speak. The connection closes (1008).
    UnsupportedVersion,
    /// The frame is not JSON (or is a binary frame).
    Malformed,
    /// The JSON has a `type` this server does not know.
    UnknownType,
    /// The JSON has a known `type` but missing or mistyped fields.
    BadRequest,
    /// The room name is invalid.
    InvalidRoom,
    /// The nickname is invalid.
    InvalidNick,
    /// The message text is invalid.
    InvalidText,
    /// The client message id is invalid.
    InvalidClientId,
    /// `send` or `leave` named a room this connection has not joined.
    NotJoined,
    /// Joining would exceed [`Limits::max_rooms`].
    TooManyRooms,
    /// Sends arrive faster than [`Limits::sends_per_sec`]; the send was dropped, retry later.
    RateLimited,
    /// The bus (Redis) did not answer in time. A `send` may or may not have been stored: retry it with the same
    /// `cid`, which stores it at most once.
    Unavailable,
    /// The `cid` was already used for a different text by this nick in this room within the dedupe window; the
    /// message was not stored. Use a fresh `cid` per message.
    CidReused,
    /// The connection's token does not allow this: another nick than the token's, or a room outside its `rooms`.
    Forbidden,
    /// `join` asked for a nick another person is using in the room (see `person`). Choose another nick.
    NickTaken,
    /// A moderator muted this nick in the room; `until` says until when. Nothing was stored.
    Muted,
    /// A moderator banned this nick (or the person behind it) from the room; `until` says until when.
    Banned,
    /// The room is in slow mode and this nick sent too recently; `until` says when the next message may go.
    SlowMode,
    /// `edit`, `delete`, `react` or a `reply_to` named a message that is deleted or no longer in history.
    MessageGone,
    /// `react` named an emoji outside [`crate::validate::EMOJI`].
    InvalidEmoji,
    /// `search` needs the archive, and this deployment keeps history in Redis only (no `--database-url`).
    NoArchive,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
pub(crate) fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server frame survives JSON both ways: with the derived decoder, and with the browser's (`type` first, then
    /// only that payload).
    fn server_round_trip(msg: &ServerMsg) {
        round_trip(msg);
        assert_eq!(&decode_tagged(&serde_json::to_string(msg).unwrap()), msg);
    }

    /// What the browser does with a frame's text.
    fn decode_tagged(json: &str) -> ServerMsg {
        let Tagged { kind } = serde_json::from_str(json).unwrap();
        let mut de = serde_json::Deserializer::from_str(json);
        let msg = ServerMsg::decode(kind, &mut de).unwrap();
        de.end().unwrap();
        assert_eq!(msg.kind(), kind, "{json}");
        msg
    }

    fn round_trip<T>(value: &T)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_string(value).unwrap();
        let back: T = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, value, "{json}");
    }

    fn room() -> RoomName {
        RoomName::parse("general").unwrap()
    }

    fn nick() -> Nick {
        Nick::parse("alice").unwrap()
    }

    #[test]
    fn client_messages_round_trip() {
        round_trip(&ClientMsg::Hello { version: 1 });
        round_trip(&ClientMsg::Join {
            person: None,
            room: "general".into(),
            nick: "alice".into(),
            since: Some(MsgId::new(1, 2)),
            epoch: Some("e1".into()),
            req: Some("r1".into()),
        });
        round_trip(&ClientMsg::Join {
            person: None,
            room: "general".into(),
            nick: "alice".into(),
            since: None,
            epoch: None,
            req: None,
        });
        round_trip(&ClientMsg::Leave {
            room: "general".into(),
            req: None,
        });
        round_trip(&ClientMsg::Send {
            room: "general".into(),
            text: "hi".into(),
            cid: "c1".into(),
            reply_to: Some(MsgId::new(3, 0)),
        });
        round_trip(&ClientMsg::Edit {
            room: "general".into(),
            id: MsgId::new(3, 0),
            text: "fixed".into(),
            cid: "c2".into(),
        });
        round_trip(&ClientMsg::Delete {
            room: "general".into(),
            id: MsgId::new(3, 0),
            cid: "c3".into(),
        });
        round_trip(&ClientMsg::React {
            room: "general".into(),
            id: MsgId::new(3, 0),
            emoji: "👍".into(),
            on: false,
            cid: "c4".into(),
        });
        round_trip(&ClientMsg::Ban {
            room: "general".into(),
            nick: "troll".into(),
            secs: 60,
            req: Some("b".into()),
            cid: Some("c-b".into()),
        });
        round_trip(&ClientMsg::SlowMode {
            room: "general".into(),
            secs: 0,
            req: None,
            cid: None,
        });
        round_trip(&ClientMsg::Ping {
            req: Some("p".into()),
        });
        round_trip(&ClientMsg::Ping { req: None });
        round_trip(&ClientMsg::Typing {
            room: "general".into(),
        });
        round_trip(&ClientMsg::History {
            room: "general".into(),
            before: MsgId::new(5, 1),
            limit: 50,
            req: Some("h".into()),
        });
        server_round_trip(&ServerMsg::Typing(frame::Typing {
            room: RoomName::parse("general").unwrap(),
            nick: Nick::parse("bob").unwrap(),
        }));
        server_round_trip(&ServerMsg::HistoryPage(frame::HistoryPage {
            room: RoomName::parse("general").unwrap(),
            messages: vec![],
            complete: true,
            req: None,
        }));
    }

    #[test]
    fn server_messages_round_trip() {
        let mut msg = ChatMessage::new(MsgId::new(10, 0), room(), nick(), "<b>hi</b>".into());
        server_round_trip(&ServerMsg::Message(msg.clone()));
        msg.reply_to = Some(Quote {
            id: MsgId::new(9, 0),
            nick: nick(),
            text: "earlier".into(),
        });
        msg.edited_at = Some(11);
        msg.reactions = vec![Reaction {
            emoji: "🎉".into(),
            count: 2,
            mine: true,
        }];
        server_round_trip(&ServerMsg::Reacted(frame::Reacted {
            room: room(),
            id: MsgId::new(12, 0),
            target: MsgId::new(10, 0),
            nick: nick(),
            emoji: "🎉".into(),
            on: true,
            count: 2,
            ts: 12,
        }));
        server_round_trip(&ServerMsg::Moderation(ModerationEvent {
            room: room(),
            id: MsgId::new(13, 0),
            by: nick(),
            action: ModerationAction::Mute,
            nick: Some(Nick::parse("bob").unwrap()),
            secs: 60,
            ts: 13,
        }));
        server_round_trip(&ServerMsg::Welcome(frame::Welcome {
            version: 1,
            node: "host:3000".into(),
            limits: Limits {
                max_frame_bytes: 1,
                max_text_chars: 2,
                max_rooms: 3,
                history_on_join: 4,
                sends_per_sec: 5,
                send_burst: 6,
            },
        }));
        server_round_trip(&ServerMsg::Joined(frame::Joined {
            room: room(),
            nick: nick(),
            history: vec![msg.clone()],
            epoch: "e".into(),
            reset: false,
            truncated: false,
            members: vec![nick()],
            online: 1,
            moderator: true,
            muted_until: Some(5),
            slow_mode: 10,
            read: Some(MsgId::new(9, 0)),
            unread: 3,
            mentions: 1,
            more: false,
            upto: Some(MsgId::new(12, 0)),
            receipts: true,
            seen: vec![frame::SeenAt {
                nick: nick(),
                id: MsgId::new(9, 0),
            }],
            req: Some("r".into()),
        }));
        server_round_trip(&ServerMsg::Joined(frame::Joined {
            room: room(),
            nick: nick(),
            history: vec![],
            epoch: "e".into(),
            reset: true,
            truncated: true,
            members: vec![],
            online: 150,
            moderator: false,
            muted_until: None,
            slow_mode: 0,
            read: None,
            unread: 0,
            mentions: 0,
            more: false,
            upto: None,
            receipts: false,
            seen: vec![],
            req: None,
        }));
        server_round_trip(&ServerMsg::ReadState(frame::ReadState {
            room: room(),
            id: MsgId::new(9, 0),
            unread: 2000,
            mentions: 7,
            more: true,
            upto: Some(MsgId::new(20, 1)),
        }));
        server_round_trip(&ServerMsg::Seen(frame::Seen {
            room: room(),
            nick: nick(),
            id: MsgId::new(9, 0),
        }));
        server_round_trip(&ServerMsg::SearchResults(frame::SearchResults {
            query: "hel".into(),
            results: vec![frame::Found {
                message: ChatMessage::new(MsgId::new(9, 0), room(), nick(), "hello".into()),
                marks: vec![(0, 3)],
            }],
            complete: false,
            req: Some("s".into()),
        }));
        server_round_trip(&ServerMsg::Left(frame::Left {
            room: room(),
            reason: Some("kicked".into()),
            req: None,
        }));
        server_round_trip(&ServerMsg::Ack(frame::Ack {
            room: room(),
            cid: "c".into(),
            id: MsgId::new(10, 0),
            ts: 10,
            duplicate: true,
        }));
        server_round_trip(&ServerMsg::Message(msg));
        server_round_trip(&ServerMsg::Gap(frame::Gap {
            room: room(),
            epoch: "e2".into(),
            reset: true,
        }));
        server_round_trip(&ServerMsg::Pong(frame::Pong { req: None }));
        server_round_trip(&ServerMsg::Done(frame::Done {
            room: room(),
            id: MsgId::new(14, 0),
            duplicate: true,
            req: Some("m".into()),
        }));
        server_round_trip(&ServerMsg::TryAgain(frame::TryAgain {
            after_ms: 250,
            request: frame::TryAgainRequest::Join,
            room: Some("general".into()),
            req: Some("j".into()),
        }));
        server_round_trip(&ServerMsg::Presence(PresenceEvent {
            room: room(),
            nick: nick(),
            event: PresenceKind::Left,
            from: None,
            ts: 3,
        }));
        server_round_trip(&ServerMsg::Presence(PresenceEvent {
            room: room(),
            nick: nick(),
            event: PresenceKind::Renamed,
            from: Some(Nick::parse("old").unwrap()),
            ts: 4,
        }));
        server_round_trip(&ServerMsg::Error(frame::Error {
            code: ErrorCode::NotJoined,
            message: "m".into(),
            request: Some("send".into()),
            req: Some("c".into()),
            room: Some("x".into()),
            until: Some(7),
        }));
    }

    #[test]
    fn message_frames_are_flat() {
        let json = serde_json::to_value(ServerMsg::Message(ChatMessage::new(
            MsgId::new(10, 0),
            room(),
            nick(),
            "hi".into(),
        )))
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"message","id":"10-0","room":"general","nick":"alice","text":"hi","ts":10})
        );
    }

    #[test]
    fn moderation_events_always_say_secs() {
        // A kick, and a lifted mute, ban or slow mode, carry `secs: 0` rather than leaving it out.
        let kick = ServerMsg::Moderation(ModerationEvent {
            room: room(),
            id: MsgId::new(13, 0),
            by: nick(),
            action: ModerationAction::Kick,
            nick: Some(nick()),
            secs: 0,
            ts: 13,
        });
        assert_eq!(serde_json::to_value(&kick).unwrap()["secs"], 0);
    }

    /// The variant names serde knows for a `type`-tagged enum, read from its unknown-variant error.
    fn variants<T: for<'de> Deserialize<'de> + std::fmt::Debug>(tag: &str) -> Vec<String> {
        let probe = serde_json::json!({ tag: "\u{1}" });
        let error = serde_json::from_value::<T>(probe).unwrap_err().to_string();
        let list = error.split("expected one of ").nth(1).unwrap();
        list.split(", ")
            .map(|v| {
                v.trim_matches(|c: char| c == '`' || c.is_whitespace() || c == ',')
                    .to_owned()
            })
            .map(|v| v.split('`').next().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn protocol_doc_examples_parse() {
        // Wire messages are in the protocol doc; what replicas put in Redis is the backend's (its bus tests it).
        let doc = include_str!("../../docs/PROTOCOL.md");
        let client_kinds = variants::<ClientMsg>("type");
        let (mut client, mut server) = (
            std::collections::BTreeSet::new(),
            std::collections::BTreeSet::new(),
        );
        for block in doc.split("```json").skip(1) {
            let json = block.split("```").next().unwrap().trim();
            let value: serde_json::Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            let kind = value
                .get("type")
                .and_then(|t| t.as_str())
                .unwrap()
                .to_owned();
            // `typing` is both: the client's has no nick.
            let from_client =
                client_kinds.contains(&kind) && !(kind == "typing" && value.get("nick").is_some());
            if from_client {
                serde_json::from_value::<ClientMsg>(value)
                    .unwrap_or_else(|e| panic!("{e}: {json}"));
                client.insert(kind);
            } else {
                let msg = serde_json::from_value::<ServerMsg>(value)
                    .unwrap_or_else(|e| panic!("{e}: {json}"));
                // The browser reads the same text its own way: `type` first, then the payload.
                assert_eq!(decode_tagged(json), msg, "{json}");
                server.insert(kind);
            }
        }
        let all = |kinds: Vec<String>| kinds.into_iter().collect::<std::collections::BTreeSet<_>>();
        assert_eq!(
            client,
            all(client_kinds),
            "every client message has its example"
        );
        assert_eq!(
            server,
            all(variants::<ServerMsg>("type")),
            "every server message has its example"
        );
    }
}
