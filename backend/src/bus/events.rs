//! Stored room events — a message, or an action on one (edit, delete, react) or on the room (moderation) — and the
//! rules that decide whether one may be stored. The in-memory bus runs [`Rules::apply`]; `redis/publish.lua` is the
//! same rules for Redis, and the integration tests run both buses through the same cases.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use shared::{
    BusBody, ChatMessage, ErrorCode, ModerationAction, ModerationEvent, MsgId, Nick, Quote,
    Reaction, RoomName, ServerMsg, frame, validate,
};

use super::{BusError, Draft};

/// One entry of a room's history: what was stored, with the id the bus gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The entry's id, strictly increasing in the room.
    pub id: MsgId,
    /// The room.
    pub room: RoomName,
    /// What was stored: a message, an edit, a deletion, a reaction or a moderation event (never a notice).
    pub body: BusBody,
}

impl Stored {
    /// An entry, or `None` for a body that is never stored (presence, typing).
    pub fn new(id: MsgId, room: RoomName, body: BusBody) -> Option<Self> {
        match body {
            BusBody::Presence(_) | BusBody::Typing(_) => None,
            body => Some(Self { id, room, body }),
        }
    }

    /// Whether this entry is a chat message (not an action).
    pub fn is_message(&self) -> bool {
        matches!(self.body, BusBody::Message { .. })
    }

    /// The frame live members get.
    pub fn frame(&self) -> ServerMsg {
        let (room, id, ts) = (self.room.clone(), self.id, self.id.ms);
        match &self.body {
            BusBody::Message { nick, text, quote } => {
                let mut message = ChatMessage::new(id, room, nick.clone(), text.clone());
                message.reply_to.clone_from(quote);
                ServerMsg::Message(message)
            }
            BusBody::Edit { nick, target, text } => ServerMsg::Edited(frame::Edited {
                room,
                id,
                target: *target,
                nick: nick.clone(),
                text: text.clone(),
                ts,
            }),
            BusBody::Delete { nick, target } => ServerMsg::Deleted(frame::Deleted {
                room,
                id,
                target: *target,
                nick: nick.clone(),
                ts,
            }),
            BusBody::React {
                nick,
                target,
                emoji,
                on,
                count,
            } => ServerMsg::Reacted(frame::Reacted {
                room,
                id,
                target: *target,
                nick: nick.clone(),
                emoji: emoji.clone(),
                on: *on,
                count: *count,
                ts,
            }),
            BusBody::Moderation {
                by,
                action,
                nick,
                secs,
            } => ServerMsg::Moderation(ModerationEvent {
                room,
                id,
                by: by.clone(),
                action: *action,
                nick: nick.clone(),
                secs: *secs,
                ts,
            }),
            BusBody::Presence(_) | BusBody::Typing(_) => {
                unreachable!("Stored::new refuses notices")
            }
        }
    }

    /// The frame a history read gives: a message with its current `state` as `viewer` sees it; an action as is.
    pub fn in_history(&self, state: Option<&MsgState>, viewer: Option<&Nick>) -> ServerMsg {
        let mut frame = self.frame();
        if let (ServerMsg::Message(message), Some(state)) = (&mut frame, state) {
            state.fold(message, viewer);
        }
        frame
    }

    /// The nick a kick or ban takes out of the room, and why.
    pub fn evicts(&self) -> Option<(&Nick, &'static str)> {
        match &self.body {
            BusBody::Moderation {
                action: ModerationAction::Kick,
                nick: Some(nick),
                ..
            } => Some((nick, "kicked")),
            BusBody::Moderation {
                action: ModerationAction::Ban,
                nick: Some(nick),
                secs,
                ..
            } if *secs > 0 => Some((nick, "banned")),
            _ => None,
        }
    }

    /// A rough size in bytes, for frame budgets.
    pub fn size(&self) -> usize {
        let text = match &self.body {
            BusBody::Message { text, quote, .. } => {
                text.len() + quote.as_ref().map_or(0, |q| q.text.len() + 64)
            }
            BusBody::Edit { text, .. } => text.len(),
            _ => 32,
        };
        text + 64
    }
}

/// The id of a stored event's frame (a message or an action), `None` for any other frame.
pub fn event_id(frame: &ServerMsg) -> Option<MsgId> {
    match frame {
        ServerMsg::Message(m) => Some(m.id),
        ServerMsg::Edited(frame::Edited { id, .. })
        | ServerMsg::Deleted(frame::Deleted { id, .. })
        | ServerMsg::Reacted(frame::Reacted { id, .. }) => Some(*id),
        ServerMsg::Moderation(m) => Some(m.id),
        _ => None,
    }
}

/// What actions left on a message: its edited text, whether it is deleted, who reacted with what. Stored as JSON
/// in the room's `state` hash (field names kept short: there is one per message acted on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgState {
    /// The text after the last edit.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When it was last edited.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// 1 when deleted.
    #[serde(rename = "d", default, skip_serializing_if = "is_zero")]
    pub deleted: u8,
    /// Emoji → the nicks that reacted with it (the value is always 1; Lua has no sets).
    #[serde(rename = "r", default, deserialize_with = "lua_map")]
    pub reactions: BTreeMap<String, BTreeMap<String, u8>>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference.
fn is_zero(n: &u8) -> bool {
    *n == 0
}

/// Lua's JSON encoder writes an empty table as `{}` or, sometimes, `[]`: both are an empty map.
fn lua_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, BTreeMap<String, u8>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Table {
        Map(BTreeMap<String, serde_json::Value>),
        List(serde::de::IgnoredAny),
    }
    let mut out = BTreeMap::new();
    if let Table::Map(map) = Table::deserialize(d)? {
        for (emoji, nicks) in map {
            if let serde_json::Value::Object(nicks) = nicks {
                let nicks: BTreeMap<String, u8> = nicks.into_iter().map(|(n, _)| (n, 1)).collect();
                if !nicks.is_empty() {
                    out.insert(emoji, nicks);
                }
            }
        }
    }
    Ok(out)
}

impl MsgState {
    /// Applies this state to a message as `viewer` sees it.
    pub fn fold(&self, message: &mut ChatMessage, viewer: Option<&Nick>) {
        if self.deleted != 0 {
            message.deleted = true;
            message.text.clear();
            message.reactions.clear();
            message.reply_to = None;
            message.edited_at = None;
            return;
        }
        if let Some(text) = &self.text {
            message.text.clone_from(text);
        }
        message.edited_at = self.edited_at;
        message.reactions = self
            .reactions
            .iter()
            .filter(|(_, nicks)| !nicks.is_empty())
            .map(|(emoji, nicks)| Reaction {
                emoji: emoji.clone(),
                count: u32::try_from(nicks.len()).unwrap_or(u32::MAX),
                mine: viewer.is_some_and(|v| nicks.contains_key(v.as_str())),
            })
            .collect();
    }
}

/// A room's moderation state: who is muted or banned until when, slow mode, and when each nick last sent.
#[derive(Debug, Clone, Default)]
pub struct Moderation {
    /// Nick → muted until (ms).
    pub mutes: HashMap<Nick, u64>,
    /// `nick` or `person:<id>` → banned until (ms).
    pub bans: HashMap<String, u64>,
    /// Seconds between one nick's messages; 0: off.
    pub slow_secs: u64,
    /// Nick → when it last sent a message (ms), for slow mode.
    pub last_sent: HashMap<Nick, u64>,
}

impl Moderation {
    /// Until when `nick` (or `person`) may not join; `None` when free to.
    pub fn banned_until(&self, nick: &Nick, person: Option<&str>, now: u64) -> Option<u64> {
        let by_nick = self.bans.get(nick.as_str()).copied();
        let by_person = person.and_then(|p| self.bans.get(&format!("person:{p}")).copied());
        by_nick.max(by_person).filter(|until| *until > now)
    }

    /// Until when `nick` is muted.
    pub fn muted_until(&self, nick: &Nick, now: u64) -> Option<u64> {
        self.mutes.get(nick).copied().filter(|until| *until > now)
    }
}

/// The room rules every stored event passes, over the state the in-memory bus keeps. `publish.lua` is the same
/// rules over Redis keys.
pub struct Rules<'a> {
    /// The room's entries still in history.
    pub log: &'a dyn Fn(MsgId) -> Option<&'a Stored>,
    /// Message states.
    pub states: &'a mut HashMap<MsgId, MsgState>,
    /// Moderation state.
    pub moderation: &'a mut Moderation,
    /// The person holding a nick in the room, for bans.
    pub holder: &'a dyn Fn(&Nick) -> Option<String>,
}

impl Rules<'_> {
    /// Checks `draft` at `now` (ms) and, when it may be stored, records its effect and returns the body to store
    /// (a reply's quote and a reaction's count filled in).
    pub fn apply(&mut self, draft: &Draft, now: u64) -> Result<BusBody, BusError> {
        let refused = |code, until| Err(BusError::Refused { code, until });
        let mut body = draft.body.clone();
        let author = match &body {
            BusBody::Message { nick, .. }
            | BusBody::Edit { nick, .. }
            | BusBody::Delete { nick, .. }
            | BusBody::React { nick, .. } => Some(nick.clone()),
            _ => None,
        };
        if let Some(author) = &author
            && !draft.moderator
            && !matches!(body, BusBody::Delete { .. })
            && let Some(until) = self.moderation.muted_until(author, now)
        {
            return refused(ErrorCode::Muted, Some(until));
        }
        match &mut body {
            BusBody::Message { nick, quote, .. } => {
                if !draft.moderator && self.moderation.slow_secs > 0 {
                    let next = self
                        .moderation
                        .last_sent
                        .get(nick)
                        .map(|at| at + self.moderation.slow_secs * 1000);
                    if let Some(next) = next.filter(|next| *next > now) {
                        return refused(ErrorCode::SlowMode, Some(next));
                    }
                }
                if let Some(target) = draft.reply_to {
                    let (original, text) = self.live_message(target)?;
                    *quote = Some(Quote {
                        id: target,
                        nick: original,
                        text: validate::quote(&text),
                    });
                }
                if self.moderation.slow_secs > 0 {
                    self.moderation.last_sent.insert(nick.clone(), now);
                }
            }
            BusBody::Edit { nick, target, text } => {
                let (original, _) = self.live_message(*target)?;
                if original != *nick {
                    return refused(ErrorCode::Forbidden, None);
                }
                let state = self.states.entry(*target).or_default();
                state.text = Some(text.clone());
                state.edited_at = Some(now);
            }
            BusBody::Delete { nick, target } => {
                let (original, _) = self.live_message(*target)?;
                if original != *nick && !draft.moderator {
                    return refused(ErrorCode::Forbidden, None);
                }
                *self.states.entry(*target).or_default() = MsgState {
                    deleted: 1,
                    ..MsgState::default()
                };
            }
            BusBody::React {
                nick,
                target,
                emoji,
                on,
                count,
            } => {
                self.live_message(*target)?;
                let state = self.states.entry(*target).or_default();
                let nicks = state.reactions.entry(emoji.clone()).or_default();
                if *on {
                    nicks.insert(nick.to_string(), 1);
                } else {
                    nicks.remove(nick.as_str());
                }
                *count = u32::try_from(nicks.len()).unwrap_or(u32::MAX);
                if nicks.is_empty() {
                    state.reactions.remove(emoji);
                }
            }
            BusBody::Moderation {
                action, nick, secs, ..
            } => {
                let until = now + *secs * 1000;
                match (action, nick) {
                    (ModerationAction::Mute, Some(nick)) => {
                        self.moderation.mutes.insert(nick.clone(), until);
                    }
                    (ModerationAction::Ban, Some(nick)) => {
                        self.moderation.bans.insert(nick.to_string(), until);
                        if let Some(person) = (self.holder)(nick) {
                            self.moderation
                                .bans
                                .insert(format!("person:{person}"), until);
                        }
                    }
                    (ModerationAction::SlowMode, _) => self.moderation.slow_secs = *secs,
                    _ => {}
                }
            }
            BusBody::Presence(_) | BusBody::Typing(_) => {
                return Err(BusError::Protocol("notices are not stored".into()));
            }
        }
        Ok(body)
    }

    /// The author and current text of a message still in history and not deleted; `message_gone` otherwise.
    fn live_message(&self, id: MsgId) -> Result<(Nick, String), BusError> {
        let gone = BusError::Refused {
            code: ErrorCode::MessageGone,
            until: None,
        };
        let Some(Stored {
            body: BusBody::Message { nick, text, .. },
            ..
        }) = (self.log)(id)
        else {
            return Err(gone);
        };
        let state = self.states.get(&id);
        if state.is_some_and(|s| s.deleted != 0) {
            return Err(gone);
        }
        let text = state
            .and_then(|s| s.text.clone())
            .unwrap_or_else(|| text.clone());
        Ok((nick.clone(), text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_what_lua_writes() {
        // cjson writes an emptied table as {} and floats for integers it did not produce.
        let state: MsgState = serde_json::from_str(
            r#"{"t":"x","e":1732190000999,"r":{"👍":{"bob":1,"al":1},"🎉":{}}}"#,
        )
        .unwrap();
        assert_eq!(state.reactions.len(), 1);
        let empty: MsgState = serde_json::from_str(r#"{"d":1,"r":[]}"#).unwrap();
        assert_eq!(empty.deleted, 1);
        let nick = Nick::parse("bob").unwrap();
        let mut m = ChatMessage::new(
            MsgId::new(1, 0),
            RoomName::parse("r").unwrap(),
            nick.clone(),
            "old".into(),
        );
        state.fold(&mut m, Some(&nick));
        assert_eq!(m.text, "x");
        assert_eq!(m.edited_at, Some(1_732_190_000_999));
        assert_eq!(
            m.reactions,
            vec![Reaction {
                emoji: "👍".into(),
                count: 2,
                mine: true
            }]
        );
        empty.fold(&mut m, Some(&nick));
        assert!(m.deleted && m.text.is_empty() && m.reactions.is_empty());
    }
}
