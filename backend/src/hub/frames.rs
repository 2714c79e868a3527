//! The one place where the bus's records and notices become the browser's frames: a stored event as live members
//! get it, a message with its current state as a reader of history sees it, a resumed action, a presence or typing
//! notice, a gap. The bus knows nothing of frames; the rest of the hub asks here.

use shared::{ChatMessage, Nick, PresenceEvent, Reaction, RoomName, ServerMsg, frame};

use crate::bus::{Body, HistoryItem, MsgState, Notice, ReadNotice, Record};

/// The frame live members get for a stored event.
pub fn live(record: &Record) -> ServerMsg {
    let (room, id, ts) = (record.room.clone(), record.id, record.id.ms);
    match &record.body {
        Body::Message { nick, text, quote } => {
            let mut message = ChatMessage::new(id, room, nick.clone(), text.clone());
            message.reply_to.clone_from(quote);
            ServerMsg::Message(message)
        }
        Body::Edit { nick, target, text } => ServerMsg::Edited(frame::Edited {
            room,
            id,
            target: *target,
            nick: nick.clone(),
            text: text.clone(),
            ts,
        }),
        Body::Delete { nick, target } => ServerMsg::Deleted(frame::Deleted {
            room,
            id,
            target: *target,
            nick: nick.clone(),
            ts,
        }),
        Body::React {
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
        Body::Moderation {
            by,
            action,
            nick,
            secs,
            ..
        } => ServerMsg::Moderation(shared::ModerationEvent {
            room,
            id,
            by: by.clone(),
            action: *action,
            nick: nick.clone(),
            secs: *secs,
            ts,
        }),
    }
}

/// A message of history with its current state, as `viewer` sees it (reactions say `mine`); `None` for an action.
pub fn message(item: &HistoryItem, viewer: Option<&Nick>) -> Option<ChatMessage> {
    let ServerMsg::Message(mut message) = live(&item.record) else {
        return None;
    };
    if let Some(state) = &item.state {
        fold(state, &mut message, viewer);
    }
    Some(message)
}

/// A record a resuming member missed: a message with its current state, or an action as it happened — except an
/// edit or a reaction aimed at a message deleted by now (its deletion follows, and the member must never show, even
/// for a moment, what a message it already shows deleted said).
pub fn resumed(item: &HistoryItem, viewer: Option<&Nick>) -> Option<ServerMsg> {
    match &item.record.body {
        Body::Message { .. } => message(item, viewer).map(ServerMsg::Message),
        Body::Edit { .. } | Body::React { .. } if item.deleted() => None,
        _ => Some(live(&item.record)),
    }
}

/// A presence or typing notice as the room's members get it.
pub fn notice(room: RoomName, notice: Notice) -> ServerMsg {
    match notice {
        Notice::Presence(notice) => ServerMsg::Presence(PresenceEvent {
            room,
            nick: notice.nick,
            event: notice.event,
            from: notice.from,
            ts: notice.ts,
        }),
        Notice::Typing(notice) => ServerMsg::Typing(frame::Typing {
            room,
            nick: notice.nick,
        }),
        Notice::Read(notice) => read_state(room, &notice),
    }
}

/// A person's read state in a room, as their connections get it.
pub fn read_state(room: RoomName, read: &ReadNotice) -> ServerMsg {
    ServerMsg::ReadState(frame::ReadState {
        room,
        id: read.id,
        unread: read.unread,
        mentions: read.mentions,
        more: read.more,
        upto: read.upto,
    })
}

/// With read receipts on: who read the room up to where, as every member gets it.
pub fn seen(room: RoomName, read: &ReadNotice) -> ServerMsg {
    ServerMsg::Seen(frame::Seen {
        room,
        nick: read.nick.clone(),
        id: read.id,
    })
}

/// Applies what actions left on a message to it, as `viewer` sees it.
fn fold(state: &MsgState, message: &mut ChatMessage, viewer: Option<&Nick>) {
    if state.deleted != 0 {
        message.deleted = true;
        message.text.clear();
        message.reactions.clear();
        message.reply_to = None;
        message.edited_at = None;
        return;
    }
    if let Some(text) = &state.text {
        message.text.clone_from(text);
    }
    message.edited_at = state.edited_at;
    message.reactions = state
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

#[cfg(test)]
mod tests {
    use shared::MsgId;

    use super::*;

    fn item(body: Body, state: Option<&str>) -> HistoryItem {
        HistoryItem {
            record: Record {
                id: MsgId::new(2, 0),
                room: RoomName::parse("r").unwrap(),
                body,
            },
            state: state.map(|s| serde_json::from_str(s).unwrap()),
        }
    }

    fn bob() -> Nick {
        Nick::parse("bob").unwrap()
    }

    #[test]
    fn history_shows_each_message_in_its_current_state() {
        let body = Body::Message {
            nick: bob(),
            text: "old".into(),
            quote: None,
        };
        let state = r#"{"t":"x","e":1732190000999,"r":{"👍":{"bob":1,"al":1},"🎉":{}}}"#;
        let m = message(&item(body.clone(), Some(state)), Some(&bob())).unwrap();
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
        let deleted = message(&item(body, Some(r#"{"d":1,"r":[]}"#)), Some(&bob())).unwrap();
        assert!(deleted.deleted && deleted.text.is_empty() && deleted.reactions.is_empty());
    }

    #[test]
    fn a_resume_skips_edits_and_reactions_of_messages_deleted_since() {
        let target = MsgId::new(1, 0);
        let edit = Body::Edit {
            nick: bob(),
            target,
            text: "changed".into(),
        };
        let react = Body::React {
            nick: bob(),
            target,
            emoji: "👍".into(),
            on: true,
            count: 1,
        };
        let delete = Body::Delete {
            nick: bob(),
            target,
        };
        let gone = Some(r#"{"d":1}"#);
        assert!(resumed(&item(edit.clone(), gone), None).is_none());
        assert!(resumed(&item(react.clone(), gone), None).is_none());
        assert!(matches!(
            resumed(&item(delete, gone), None),
            Some(ServerMsg::Deleted(_))
        ));
        assert!(matches!(
            resumed(&item(edit, Some(r#"{"t":"changed"}"#)), None),
            Some(ServerMsg::Edited(_))
        ));
        assert!(matches!(
            resumed(&item(react, None), None),
            Some(ServerMsg::Reacted(_))
        ));
    }
}
