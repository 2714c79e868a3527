//! The room's rules for storing an event — mute, ban, slow mode, authorship, `message_gone`, reaction counts, and a
//! moderation event's effect — over the state the in-memory bus keeps. `redis/publish.lua` is the same rules over
//! Redis keys; the integration tests run both buses through the same cases, so the two stay one rule set.

use std::collections::HashMap;

use shared::{ErrorCode, ModerationAction, MsgId, Nick, Quote, validate};

use super::body::Body;
use super::record::{MsgState, Record};
use super::{BusError, Draft};

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
    /// Read receipts are on.
    pub receipts: bool,
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

/// What the rules decided for a draft that may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Store this body (a reply's quote and a reaction's count filled in).
    Store(Body),
    /// The draft changes nothing (a reaction the nick already has, or takes back one it has not): store nothing and
    /// answer as for a repeated cid, with this id (the message's).
    Unchanged(MsgId),
}

/// The room rules every stored event passes, over the state the in-memory bus keeps.
pub struct Rules<'a> {
    /// The room's records still in history.
    pub log: &'a dyn Fn(MsgId) -> Option<&'a Record>,
    /// Message states.
    pub states: &'a mut HashMap<MsgId, MsgState>,
    /// Moderation state.
    pub moderation: &'a mut Moderation,
    /// The person holding a nick in the room, for bans.
    pub holder: &'a dyn Fn(&Nick) -> Option<String>,
}

impl Rules<'_> {
    /// Checks `draft` at `now` (ms) and, when it may be stored, records its effect and says what to store.
    pub fn apply(&mut self, draft: &Draft, now: u64) -> Result<Outcome, BusError> {
        let refused = |code, until| Err(BusError::Refused { code, until });
        let mut body = draft.body.clone();
        let author = match &body {
            Body::Message { nick, .. }
            | Body::Edit { nick, .. }
            | Body::Delete { nick, .. }
            | Body::React { nick, .. } => Some(nick.clone()),
            Body::Moderation { .. } => None,
        };
        if let Some(author) = &author
            && !draft.moderator
        {
            if let Some(until) = self.moderation.banned_until(author, None, now) {
                return refused(ErrorCode::Banned, Some(until));
            }
            if !matches!(body, Body::Delete { .. })
                && let Some(until) = self.moderation.muted_until(author, now)
            {
                return refused(ErrorCode::Muted, Some(until));
            }
        }
        match &mut body {
            Body::Message { nick, quote, .. } => {
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
            Body::Edit { nick, target, text } => {
                let (original, _) = self.live_message(*target)?;
                if original != *nick {
                    return refused(ErrorCode::Forbidden, None);
                }
                let state = self.states.entry(*target).or_default();
                state.text = Some(text.clone());
                state.edited_at = Some(now);
            }
            Body::Delete { nick, target } => {
                let (original, _) = self.live_message(*target)?;
                if original != *nick && !draft.moderator {
                    return refused(ErrorCode::Forbidden, None);
                }
                *self.states.entry(*target).or_default() = MsgState {
                    deleted: 1,
                    ..MsgState::default()
                };
            }
            Body::React {
                nick,
                target,
                emoji,
                on,
                count,
            } => {
                self.live_message(*target)?;
                let has = self
                    .states
                    .get(target)
                    .and_then(|s| s.reactions.get(emoji.as_str()))
                    .is_some_and(|nicks| nicks.contains_key(nick.as_str()));
                if *on == has {
                    return Ok(Outcome::Unchanged(*target));
                }
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
            Body::Moderation {
                action,
                nick,
                secs,
                person,
                ..
            } => {
                let until = now + *secs * 1000;
                match (action, nick) {
                    (ModerationAction::Mute, Some(nick)) => {
                        self.moderation.mutes.insert(nick.clone(), until);
                    }
                    (ModerationAction::Ban, Some(nick)) => {
                        self.moderation.bans.insert(nick.to_string(), until);
                        if let Some(holder) = (self.holder)(nick) {
                            self.moderation
                                .bans
                                .insert(format!("person:{holder}"), until);
                            *person = Some(holder);
                        }
                    }
                    (ModerationAction::SlowMode, _) => self.moderation.slow_secs = *secs,
                    (ModerationAction::Receipts, _) => self.moderation.receipts = *secs > 0,
                    _ => {}
                }
            }
        }
        Ok(Outcome::Store(body))
    }

    /// The author and current text of a message still in history and not deleted; `message_gone` otherwise.
    fn live_message(&self, id: MsgId) -> Result<(Nick, String), BusError> {
        let gone = BusError::Refused {
            code: ErrorCode::MessageGone,
            until: None,
        };
        let Some(Record {
            body: Body::Message { nick, text, .. },
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
