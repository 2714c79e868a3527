//! Frames as the server would send them and readers of the chat state, shared by the tests of every chat module.

use shared::{ChatMessage, ClientMsg, ErrorCode, MsgId, Nick, RoomName, ServerMsg, frame};

use super::{Chat, Item, Room};

pub(super) fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

pub(super) fn nick(name: &str) -> Nick {
    Nick::parse(name).unwrap()
}

pub(super) fn msg(room_name: &str, ms: u64, from: &str, text: &str) -> ChatMessage {
    ChatMessage {
        id: MsgId::new(ms, 0),
        room: room(room_name),
        nick: nick(from),
        text: text.into(),
        ts: ms,
        reply_to: None,
        edited_at: None,
        deleted: false,
        reactions: Vec::new(),
    }
}

pub(super) fn joined(room_name: &str, history: Vec<ChatMessage>) -> ServerMsg {
    joined_in("e1", false, false, room_name, history)
}

pub(super) fn joined_in(
    epoch: &str,
    reset: bool,
    truncated: bool,
    room_name: &str,
    history: Vec<ChatMessage>,
) -> ServerMsg {
    ServerMsg::Joined(frame::Joined {
        room: room(room_name),
        nick: nick("me"),
        history,
        epoch: epoch.into(),
        reset,
        truncated,
        members: vec![nick("me")],
        online: 1,
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
    })
}

pub(super) fn ack(room_name: &str, cid: &str, ms: u64) -> ServerMsg {
    ServerMsg::Ack(frame::Ack {
        room: room(room_name),
        cid: cid.into(),
        id: MsgId::new(ms, 0),
        ts: ms,
        duplicate: false,
    })
}

pub(super) fn send_error(cid: &str, code: ErrorCode, message: &str) -> ServerMsg {
    ServerMsg::Error(frame::Error {
        code,
        message: message.into(),
        request: Some("send".into()),
        req: Some(cid.into()),
        room: Some("general".into()),
        until: None,
    })
}

/// A chat in room `general` as `me`, looking at it.
pub(super) fn chat() -> Chat {
    let mut chat = Chat::new("t");
    chat.open(room("general"), nick("me"));
    chat.view(Some(room("general")));
    chat
}

pub(super) fn general(chat: &Chat) -> &Room {
    chat.room(&room("general")).unwrap()
}

pub(super) fn messages(chat: &Chat, name: &str) -> Vec<(u64, String, bool, bool)> {
    chat.room(&room(name))
        .unwrap()
        .items()
        .iter()
        .filter_map(|item| match item {
            Item::Message(m) => Some((m.id.ms, m.text.clone(), m.own, m.acked)),
            Item::Presence(_) | Item::Moderation(_) | Item::Notice { .. } => None,
        })
        .collect()
}

pub(super) fn ids(chat: &Chat, name: &str) -> Vec<u64> {
    messages(chat, name).into_iter().map(|m| m.0).collect()
}

/// The (cid, text) of each send the flush put on the wire.
pub(super) fn sent(sends: &[ClientMsg]) -> Vec<(String, String)> {
    sends
        .iter()
        .map(|send| match send {
            ClientMsg::Send {
                room, text, cid, ..
            } => {
                assert_eq!(room, "general");
                (cid.clone(), text.clone())
            }
            other => panic!("not a send: {other:?}"),
        })
        .collect()
}

/// Joins `general` and sends one message, returning its cid.
pub(super) fn sent_one(chat: &mut Chat, text: &str) -> String {
    let cid = chat
        .queue_send(&room("general"), text.into(), None)
        .unwrap();
    assert_eq!(sent(&chat.flush()), [(cid.clone(), text.to_owned())]);
    cid
}

/// `reacted` on message `target` in `general`: `who` turned `emoji` on or off, leaving `count`.
pub(super) fn reacted(
    id: u64,
    target: u64,
    who: &str,
    emoji: &str,
    on: bool,
    count: u32,
) -> ServerMsg {
    ServerMsg::Reacted(frame::Reacted {
        room: room("general"),
        id: MsgId::new(id, 0),
        target: MsgId::new(target, 0),
        nick: nick(who),
        emoji: emoji.into(),
        on,
        count,
        ts: id,
    })
}

/// The one message with id `ms` in `general`.
pub(super) fn posted(chat: &Chat, ms: u64) -> super::Posted {
    general(chat).message(MsgId::new(ms, 0)).unwrap().clone()
}
