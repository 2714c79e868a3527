//! What replicas tell each other about a room, in the bus's own terms: the [`Body`] of a stored event (a message, or
//! an action on one or on the room) and the [`Notice`]s that are relayed but never stored. Both travel as JSON with a
//! `kind` member (`redis/LAYOUT.md` shows each with an example, and a test parses those). None of this is what a
//! browser sees: `hub/frames.rs` is the one place that turns a body or a notice into a frame.

use serde::{Deserialize, Serialize};
use shared::{ModerationAction, MsgId, Nick, PresenceKind, Quote};

/// The body of a stored event. The store gives it its id and offset; the body says what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A chat message.
    Message {
        /// The sender's nickname.
        nick: Nick,
        /// The text.
        text: String,
        /// The message replied to, quoted as it was when the reply was stored (the store fills it in).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quote: Option<Quote>,
    },
    /// An edit of `target` by its author.
    Edit {
        /// The author.
        nick: Nick,
        /// The message edited.
        target: MsgId,
        /// The new text.
        text: String,
    },
    /// A deletion of `target`.
    Delete {
        /// Who deleted it: the author, or a moderator.
        nick: Nick,
        /// The message deleted.
        target: MsgId,
    },
    /// A reaction added or taken back. The store fills in `count`.
    React {
        /// Who.
        nick: Nick,
        /// The message reacted to.
        target: MsgId,
        /// The emoji.
        emoji: String,
        /// Added or taken back.
        on: bool,
        /// The emoji's count on the message after this event.
        #[serde(default)]
        count: u32,
    },
    /// A moderator's action. The store records its effect (mute, ban, slow mode) in the same step.
    Moderation {
        /// The moderator.
        by: Nick,
        /// What.
        action: ModerationAction,
        /// To whom (absent for slow mode).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nick: Option<Nick>,
        /// For how long, in seconds (0: a kick, or lifted); for retention, the days kept × 86,400 (0: the server's).
        #[serde(default)]
        secs: u64,
        /// For a ban: the person who held the nick (the store fills it in), banned with it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        person: Option<String>,
    },
}

impl Body {
    /// The `kind` it is stored as (the publish script dispatches on it without decoding the body).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Message { .. } => "message",
            Self::Edit { .. } => "edit",
            Self::Delete { .. } => "delete",
            Self::React { .. } => "react",
            Self::Moderation { .. } => "moderation",
        }
    }

    /// Who stored it: the nick its cid belongs to (a moderation's moderator).
    pub fn author(&self) -> &Nick {
        match self {
            Self::Message { nick, .. }
            | Self::Edit { nick, .. }
            | Self::Delete { nick, .. }
            | Self::React { nick, .. } => nick,
            Self::Moderation { by, .. } => by,
        }
    }

    /// Whether this is a chat message (not an action).
    pub fn is_message(&self) -> bool {
        matches!(self, Self::Message { .. })
    }

    /// The message an action is aimed at.
    pub fn target(&self) -> Option<MsgId> {
        match self {
            Self::Edit { target, .. }
            | Self::Delete { target, .. }
            | Self::React { target, .. } => Some(*target),
            Self::Message { .. } | Self::Moderation { .. } => None,
        }
    }

    /// The nick a kick or ban takes out of the room, and why.
    pub fn evicts(&self) -> Option<(&Nick, &'static str)> {
        match self {
            Self::Moderation {
                action: ModerationAction::Kick,
                nick: Some(nick),
                ..
            } => Some((nick, "kicked")),
            Self::Moderation {
                action: ModerationAction::Ban,
                nick: Some(nick),
                secs,
                ..
            } if *secs > 0 => Some((nick, "banned")),
            _ => None,
        }
    }
}

/// A notice relayed to every replica and never stored: presence and typing are hints, not history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Notice {
    /// A member joined, left or was renamed.
    Presence(PresenceNotice),
    /// Someone is typing.
    Typing(TypingNotice),
    /// Someone's read position moved.
    Read(ReadNotice),
}

/// A person's read position moved: every connection of theirs learns it with the room's counts (computed where it
/// moved), and, with read receipts on, every member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadNotice {
    /// Who read: the token's subject, or the nick in anonymous rooms.
    pub person: String,
    /// The nick they read as.
    pub nick: Nick,
    /// The newest message read.
    pub id: MsgId,
    /// Messages of others after it.
    pub unread: u32,
    /// Of those, the ones that mention `nick`.
    pub mentions: u32,
    /// More unread messages than were counted.
    #[serde(default)]
    pub more: bool,
    /// The newest message the counts looked at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upto: Option<MsgId>,
    /// Read receipts are on in the room.
    #[serde(default)]
    pub receipts: bool,
    /// The replica the read came through.
    pub node: String,
    /// The connection on that replica, which was answered directly.
    pub conn: u64,
}

/// A presence notice (join, leave, rename) as replicas relay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceNotice {
    /// Who.
    pub nick: Nick,
    /// Joined, left or renamed.
    pub event: PresenceKind,
    /// For `renamed`: the old nick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Nick>,
    /// When, milliseconds since the Unix epoch.
    pub ts: u64,
    /// The replica the member is connected to.
    pub node: String,
    /// The connection on that replica, which does not receive its own notice.
    pub conn: u64,
}

/// A typing notice as replicas relay it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingNotice {
    /// Who.
    pub nick: Nick,
    /// The replica the member is connected to.
    pub node: String,
    /// The connection on that replica, which does not receive its own notice.
    pub conn: u64,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The kinds serde knows for a `kind`-tagged enum, read from its unknown-variant error.
    fn kinds<T: for<'de> Deserialize<'de> + std::fmt::Debug>() -> BTreeSet<String> {
        let error = serde_json::from_value::<T>(serde_json::json!({"kind": "\u{1}"}))
            .unwrap_err()
            .to_string();
        // "expected `a` or `b`", or "expected one of `a`, `b`, `c`": the names are the quoted words after it.
        let expected = error
            .split("expected ")
            .nth(1)
            .unwrap_or_else(|| panic!("{error}"));
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_layout_doc_shows_every_body_and_notice_and_they_parse() {
        let doc = include_str!("redis/LAYOUT.md");
        let (mut bodies, mut notices) = (BTreeSet::new(), BTreeSet::new());
        for block in doc.split("```json").skip(1) {
            let json = block.split("```").next().unwrap().trim();
            let value: serde_json::Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            let kind = value["kind"].as_str().unwrap().to_owned();
            match serde_json::from_value::<Body>(value.clone()) {
                Ok(body) => {
                    assert_eq!(body.kind(), kind);
                    // What Rust writes reads back the same.
                    let again = serde_json::to_value(&body).unwrap();
                    assert_eq!(serde_json::from_value::<Body>(again).unwrap(), body);
                    bodies.insert(kind);
                }
                Err(_) => {
                    let notice: Notice =
                        serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}: {json}"));
                    let again = serde_json::to_value(&notice).unwrap();
                    assert_eq!(serde_json::from_value::<Notice>(again).unwrap(), notice);
                    notices.insert(kind);
                }
            }
        }
        assert_eq!(bodies, kinds::<Body>(), "every body has its example");
        assert_eq!(notices, kinds::<Notice>(), "every notice has its example");
    }

    #[test]
    fn bans_of_no_time_take_nobody_out() {
        let nick = Nick::parse("troll").unwrap();
        let moderation = |action, secs| Body::Moderation {
            by: Nick::parse("mod").unwrap(),
            action,
            nick: Some(nick.clone()),
            secs,
            person: None,
        };
        assert_eq!(
            moderation(ModerationAction::Kick, 0).evicts(),
            Some((&nick, "kicked"))
        );
        assert_eq!(
            moderation(ModerationAction::Ban, 60).evicts(),
            Some((&nick, "banned"))
        );
        assert_eq!(moderation(ModerationAction::Ban, 0).evicts(), None);
        assert_eq!(moderation(ModerationAction::Mute, 60).evicts(), None);
    }
}
