//! The client's chat state, free of any browser API: rooms, their timelines deduplicated by message id, own
//! messages going from pending to sent or failed, resume points and unread counts. Its tests run natively.
//!
//! The WebSocket client feeds every [`ServerMsg`] into [`Chat::apply`]; the components only read. Keeping the rules
//! here, away from the socket and the DOM, is what lets `cargo test -p frontend` check the subtle cases: history
//! overlapping live messages, a message arriving before or after its own ack, and a reconnect in between.

use std::collections::BTreeSet;

use shared::{ChatMessage, MsgId, Nick, PresenceKind, RoomName, ServerMsg};

/// Most items kept per room; older ones scroll off so a long-open tab does not grow without bound.
pub const TIMELINE_CAP: usize = 1000;

/// What the failure of a send that was cut off by a disconnect says. The server may have stored it anyway.
pub const LOST_REASON: &str = "connection lost before the server confirmed it";

/// A stored chat message as the timeline shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The bus-assigned id, unique and increasing within the room.
    pub id: MsgId,
    /// Who sent it.
    pub nick: Nick,
    /// The text, rendered as text.
    pub text: String,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Sent under this client's nickname in the room (from this tab or another).
    pub own: bool,
    /// Sent from this tab and acknowledged by the server, so the person can see it made it.
    pub acked: bool,
}

/// One line of a room's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A chat message.
    Message(Posted),
    /// Someone joined or left. Not stored by the server, so it carries a local key instead of an id.
    Presence {
        /// Stable key for the view, unique within this [`Chat`].
        key: u64,
        /// Who.
        nick: Nick,
        /// Joined or left.
        event: PresenceKind,
        /// Server time, milliseconds since the Unix epoch.
        ts: u64,
    },
}

/// Where an own message stands before the server has stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// Sent, waiting for the `ack`.
    Pending,
    /// Refused or cut off; the person may retry or discard it.
    Failed {
        /// Why, in words for people.
        reason: String,
        /// The connection dropped after the frame left, so the server may have stored it. If it shows up in the
        /// history fetched on rejoin, the failure is withdrawn instead of inviting a duplicate retry.
        maybe_sent: bool,
    },
}

/// An own message not yet in the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The client message id of the latest attempt; every retry gets a fresh one.
    pub cid: String,
    /// The text as typed.
    pub text: String,
    /// Pending or failed.
    pub status: SendStatus,
}

/// Where a room's membership stands on the current connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// `join` sent (or about to be, once connected); waiting for `joined`.
    Joining,
    /// History received; live messages flow.
    Joined,
    /// The server refused the join, with its reason.
    Failed(String),
}

/// One room this client is in.
#[derive(Debug, Clone)]
pub struct Room {
    name: RoomName,
    nick: Nick,
    phase: Phase,
    items: Vec<Item>,
    outbox: Vec<Outgoing>,
    unread: u32,
    seen: BTreeSet<MsgId>,
    resume: Option<MsgId>,
    ever_joined: bool,
}

impl Room {
    fn new(name: RoomName, nick: Nick) -> Self {
        Self {
            name,
            nick,
            phase: Phase::Joining,
            items: Vec::new(),
            outbox: Vec::new(),
            unread: 0,
            seen: BTreeSet::new(),
            resume: None,
            ever_joined: false,
        }
    }

    /// The room's name.
    pub fn name(&self) -> &RoomName {
        &self.name
    }

    /// The nickname this client uses here.
    pub fn nick(&self) -> &Nick {
        &self.nick
    }

    /// Whether the room is joined, being joined, or refused.
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// Stored messages and presence notices, oldest first, messages in id order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Own messages awaiting an ack or a retry, in the order they were (re)sent.
    pub fn outbox(&self) -> &[Outgoing] {
        &self.outbox
    }

    /// Messages from others that arrived while another room was being viewed.
    pub fn unread(&self) -> u32 {
        self.unread
    }

    /// The last message id delivered in this room: the `since` of the next join, so a rejoin fetches exactly what
    /// was missed. Acks do not move it: a message stored before ours may still be on its way.
    pub fn resume_point(&self) -> Option<MsgId> {
        self.resume
    }

    /// Adds a stored message unless its id is already in the timeline. Returns whether it was new.
    fn insert(&mut self, posted: Posted) -> bool {
        if !self.seen.insert(posted.id) {
            return false;
        }
        // Messages arrive in id order almost always, so this is nearly always a push. The exception is an `ack`
        // overtaking a message stored just before ours; that one then slots in by id.
        let first_later = self
            .items
            .iter()
            .position(|item| matches!(item, Item::Message(m) if m.id > posted.id));
        match first_later {
            Some(at) => self.items.insert(at, Item::Message(posted)),
            None => self.items.push(Item::Message(posted)),
        }
        self.trim();
        true
    }

    fn trim(&mut self) {
        let excess = self.items.len().saturating_sub(TIMELINE_CAP);
        if excess == 0 {
            return;
        }
        self.items.drain(..excess);
        let oldest = self.items.iter().find_map(|item| match item {
            Item::Message(m) => Some(m.id),
            Item::Presence { .. } => None,
        });
        if let Some(oldest) = oldest {
            self.seen = self.seen.split_off(&oldest);
        }
    }

    fn deliver(&mut self, msg: ChatMessage, viewing: bool, count_unread: bool) {
        let own = msg.nick == self.nick;
        let id = msg.id;
        let new = self.insert(Posted {
            id,
            own,
            acked: false,
            nick: msg.nick,
            text: msg.text,
            ts: msg.ts,
        });
        self.resume = self.resume.max(Some(id));
        if new && !own && !viewing && count_unread {
            self.unread += 1;
        }
    }

    /// Withdraws a "maybe sent" failure when the message turns out to be stored after all.
    fn reconcile(&mut self, id: MsgId) {
        let Some(Item::Message(posted)) = self
            .items
            .iter_mut()
            .find(|item| matches!(item, Item::Message(m) if m.id == id))
        else {
            return;
        };
        if !posted.own {
            return;
        }
        let found = self.outbox.iter().position(|out| {
            matches!(
                out.status,
                SendStatus::Failed {
                    maybe_sent: true,
                    ..
                }
            ) && out.text == posted.text
        });
        if let Some(at) = found {
            self.outbox.remove(at);
            posted.acked = true;
        }
    }

    fn ack(&mut self, cid: &str, id: MsgId, ts: u64) {
        let Some(at) = self.outbox.iter().position(|out| out.cid == cid) else {
            return;
        };
        let out = self.outbox.remove(at);
        if self.seen.contains(&id) {
            // The message overtook its ack: it is already in the timeline, now known to be ours.
            for item in &mut self.items {
                if let Item::Message(m) = item
                    && m.id == id
                {
                    m.own = true;
                    m.acked = true;
                }
            }
        } else {
            // The ack came first: show the message now; its delivery will be dropped as a duplicate.
            let nick = self.nick.clone();
            self.insert(Posted {
                id,
                nick,
                text: out.text,
                ts,
                own: true,
                acked: true,
            });
        }
    }

    fn fail(&mut self, cid: &str, reason: &str) -> bool {
        let Some(out) = self.outbox.iter_mut().find(|out| out.cid == cid) else {
            return false;
        };
        out.status = SendStatus::Failed {
            reason: reason.to_owned(),
            maybe_sent: false,
        };
        true
    }
}

/// Every room this client is in, which one the person is looking at, and the counters that name own messages.
#[derive(Debug, Clone)]
pub struct Chat {
    rooms: Vec<Room>,
    active: Option<RoomName>,
    next_key: u64,
    cid_prefix: String,
    next_cid: u64,
}

/// A join to (re)send: the room, the nickname, and where to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejoin {
    /// The room.
    pub room: RoomName,
    /// The nickname to use.
    pub nick: Nick,
    /// The last id seen there, if any.
    pub since: Option<MsgId>,
}

impl Chat {
    /// An empty state. `cid_prefix` makes this tab's client message ids distinct from other tabs' (the server only
    /// echoes them, but a random prefix keeps logs and retries unambiguous).
    pub fn new(cid_prefix: impl Into<String>) -> Self {
        Self {
            rooms: Vec::new(),
            active: None,
            next_key: 0,
            cid_prefix: cid_prefix.into(),
            next_cid: 0,
        }
    }

    /// The rooms, in the order they were opened.
    pub fn rooms(&self) -> &[Room] {
        &self.rooms
    }

    /// The names of the rooms this client is in, in list order.
    pub fn room_names(&self) -> Vec<RoomName> {
        self.rooms.iter().map(|r| r.name().clone()).collect()
    }

    /// One room, if this client is in it.
    pub fn room(&self, name: &RoomName) -> Option<&Room> {
        self.rooms.iter().find(|room| &room.name == name)
    }

    fn room_mut(&mut self, name: &RoomName) -> Option<&mut Room> {
        self.rooms.iter_mut().find(|room| &room.name == name)
    }

    /// The room on screen.
    pub fn active(&self) -> Option<&RoomName> {
        self.active.as_ref()
    }

    /// Unread messages over all rooms, for the tab title.
    pub fn unread_total(&self) -> u32 {
        self.rooms.iter().map(|room| room.unread).sum()
    }

    /// Adds a room (joining state) unless present. Returns whether it was added.
    pub fn open(&mut self, name: RoomName, nick: Nick) -> bool {
        if self.room(&name).is_some() {
            return false;
        }
        self.rooms.push(Room::new(name, nick));
        true
    }

    /// Forgets a room. Returns whether it was there.
    pub fn close(&mut self, name: &RoomName) -> bool {
        let before = self.rooms.len();
        self.rooms.retain(|room| &room.name != name);
        if self.active.as_ref() == Some(name) {
            self.active = None;
        }
        self.rooms.len() != before
    }

    /// Puts a room on screen (or none) and clears its unread count: the person is reading it now.
    pub fn view(&mut self, name: Option<RoomName>) {
        self.active = name;
        if let Some(name) = self.active.clone()
            && let Some(room) = self.room_mut(&name)
        {
            room.unread = 0;
        }
    }

    /// Uses a new nickname everywhere; the caller re-sends the joins this returns.
    pub fn rename(&mut self, nick: &Nick) -> Vec<Rejoin> {
        for room in &mut self.rooms {
            room.nick = nick.clone();
        }
        self.rejoins()
    }

    /// The joins that restore every room on a fresh connection, each resuming after the last id seen.
    pub fn rejoins(&self) -> Vec<Rejoin> {
        self.rooms
            .iter()
            .map(|room| Rejoin {
                room: room.name.clone(),
                nick: room.nick.clone(),
                since: room.resume,
            })
            .collect()
    }

    /// Marks a room as being joined again after the person asked to retry a refused join.
    pub fn rejoining(&mut self, name: &RoomName) -> Option<Rejoin> {
        let room = self.room_mut(name)?;
        room.phase = Phase::Joining;
        Some(Rejoin {
            room: room.name.clone(),
            nick: room.nick.clone(),
            since: room.resume,
        })
    }

    /// Records an own message as pending and returns the client message id to send it with.
    pub fn queue_send(&mut self, room: &RoomName, text: String) -> Option<String> {
        let cid = self.fresh_cid();
        let room = self.room_mut(room)?;
        room.outbox.push(Outgoing {
            cid: cid.clone(),
            text,
            status: SendStatus::Pending,
        });
        Some(cid)
    }

    /// Marks an own message failed (for example: there is no connection to send it on). Returns whether a message
    /// with that client id was waiting.
    pub fn fail_send(&mut self, cid: &str, reason: &str) -> bool {
        self.rooms.iter_mut().any(|room| room.fail(cid, reason))
    }

    /// Moves a failed message back to pending under a fresh client message id, at the end of the outbox. Returns
    /// the new id and the text to send.
    pub fn retry(&mut self, room: &RoomName, cid: &str) -> Option<(String, String)> {
        let fresh = self.fresh_cid();
        let room = self.room_mut(room)?;
        let at = room.outbox.iter().position(|out| out.cid == cid)?;
        let mut out = room.outbox.remove(at);
        out.cid = fresh.clone();
        out.status = SendStatus::Pending;
        let text = out.text.clone();
        room.outbox.push(out);
        Some((fresh, text))
    }

    /// Drops a failed message the person no longer wants to send.
    pub fn discard(&mut self, room: &RoomName, cid: &str) {
        if let Some(room) = self.room_mut(room) {
            room.outbox.retain(|out| out.cid != cid);
        }
    }

    /// The connection dropped: every pending message is now failed (it may have been stored; the rejoin will tell),
    /// and every room must be joined again.
    pub fn disconnected(&mut self) {
        for room in &mut self.rooms {
            if room.phase == Phase::Joined {
                room.phase = Phase::Joining;
            }
            for out in &mut room.outbox {
                if out.status == SendStatus::Pending {
                    out.status = SendStatus::Failed {
                        reason: LOST_REASON.to_owned(),
                        maybe_sent: true,
                    };
                }
            }
        }
    }

    /// Applies one frame from the server. Returns a message for the person when the frame concerns no room or send
    /// this state knows (for example a refused `hello`), so the caller can show it somewhere.
    pub fn apply(&mut self, msg: ServerMsg) -> Option<String> {
        let active = self.active.clone();
        match msg {
            ServerMsg::Welcome { .. } | ServerMsg::Left { .. } => {}
            ServerMsg::Joined {
                room,
                nick,
                history,
                ..
            } => {
                let viewing = active.as_ref() == Some(&room);
                let room = self.room_mut(&room)?;
                room.nick = nick;
                room.phase = Phase::Joined;
                // The first history is the room's past, not news; after a reconnect it is what was missed.
                let count_unread = room.ever_joined;
                room.ever_joined = true;
                for msg in history {
                    let id = msg.id;
                    room.deliver(msg, viewing, count_unread);
                    room.reconcile(id);
                }
            }
            ServerMsg::Message(msg) => {
                let viewing = active.as_ref() == Some(&msg.room);
                let room = self.room_mut(&msg.room)?;
                room.deliver(msg, viewing, true);
            }
            ServerMsg::Ack { room, cid, id, ts } => self.room_mut(&room)?.ack(&cid, id, ts),
            ServerMsg::Presence(p) => {
                let key = self.next_key;
                self.next_key += 1;
                let room = self.room_mut(&p.room)?;
                room.items.push(Item::Presence {
                    key,
                    nick: p.nick,
                    event: p.event,
                    ts: p.ts,
                });
                room.trim();
            }
            ServerMsg::Error {
                message,
                request,
                req,
                room,
                ..
            } => {
                let room = room.and_then(|r| RoomName::parse(&r).ok());
                match (request.as_deref(), req, room) {
                    (Some("send"), Some(cid), _) => {
                        if !self.fail_send(&cid, &message) {
                            return Some(message);
                        }
                    }
                    (Some("join"), _, Some(name)) => match self.room_mut(&name) {
                        Some(room) => room.phase = Phase::Failed(message),
                        None => return Some(message),
                    },
                    _ => return Some(message),
                }
            }
        }
        None
    }

    fn fresh_cid(&mut self) -> String {
        self.next_cid += 1;
        format!("{}-{}", self.cid_prefix, self.next_cid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::{ErrorCode, PresenceEvent};

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn nick(name: &str) -> Nick {
        Nick::parse(name).unwrap()
    }

    fn msg(room_name: &str, ms: u64, from: &str, text: &str) -> ChatMessage {
        ChatMessage {
            id: MsgId::new(ms, 0),
            room: room(room_name),
            nick: nick(from),
            text: text.into(),
            ts: ms,
        }
    }

    fn joined(room_name: &str, history: Vec<ChatMessage>) -> ServerMsg {
        ServerMsg::Joined {
            room: room(room_name),
            nick: nick("me"),
            history,
            req: None,
        }
    }

    fn ack(room_name: &str, cid: &str, ms: u64) -> ServerMsg {
        ServerMsg::Ack {
            room: room(room_name),
            cid: cid.into(),
            id: MsgId::new(ms, 0),
            ts: ms,
        }
    }

    /// A chat in room `general` as `me`, looking at it.
    fn chat() -> Chat {
        let mut chat = Chat::new("t");
        chat.open(room("general"), nick("me"));
        chat.view(Some(room("general")));
        chat
    }

    fn messages(chat: &Chat, name: &str) -> Vec<(u64, String, bool, bool)> {
        chat.room(&room(name))
            .unwrap()
            .items()
            .iter()
            .filter_map(|item| match item {
                Item::Message(m) => Some((m.id.ms, m.text.clone(), m.own, m.acked)),
                Item::Presence { .. } => None,
            })
            .collect()
    }

    fn ids(chat: &Chat, name: &str) -> Vec<u64> {
        messages(chat, name).into_iter().map(|m| m.0).collect()
    }

    #[test]
    fn history_and_live_overlap_is_shown_once() {
        let mut chat = chat();
        chat.apply(ServerMsg::Message(msg("general", 2, "bob", "b")));
        chat.apply(joined(
            "general",
            vec![
                msg("general", 1, "ann", "a"),
                msg("general", 2, "bob", "b"),
                msg("general", 3, "ann", "c"),
            ],
        ));
        chat.apply(ServerMsg::Message(msg("general", 3, "ann", "c")));
        chat.apply(ServerMsg::Message(msg("general", 4, "bob", "d")));
        assert_eq!(ids(&chat, "general"), [1, 2, 3, 4]);
        assert_eq!(
            chat.room(&room("general")).unwrap().resume_point(),
            Some(MsgId::new(4, 0))
        );
    }

    #[test]
    fn rejoin_after_disconnect_resumes_without_duplicates_or_gaps() {
        let mut chat = chat();
        chat.apply(joined(
            "general",
            vec![msg("general", 1, "ann", "a"), msg("general", 2, "bob", "b")],
        ));
        chat.disconnected();
        let rejoins = chat.rejoins();
        assert_eq!(rejoins[0].since, Some(MsgId::new(2, 0)));
        assert_eq!(
            chat.room(&room("general")).unwrap().phase(),
            &Phase::Joining
        );
        // A server that resent the boundary message would still not duplicate it.
        chat.apply(joined(
            "general",
            vec![msg("general", 2, "bob", "b"), msg("general", 3, "ann", "c")],
        ));
        assert_eq!(ids(&chat, "general"), [1, 2, 3]);
        assert_eq!(chat.room(&room("general")).unwrap().phase(), &Phase::Joined);
    }

    #[test]
    fn message_before_ack_is_one_sent_message() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cid = chat.queue_send(&room("general"), "hello".into()).unwrap();
        assert_eq!(
            chat.room(&room("general")).unwrap().outbox()[0].status,
            SendStatus::Pending
        );
        chat.apply(ServerMsg::Message(msg("general", 5, "me", "hello")));
        assert_eq!(
            messages(&chat, "general"),
            [(5, "hello".into(), true, false)]
        );
        chat.apply(ack("general", &cid, 5));
        assert_eq!(
            messages(&chat, "general"),
            [(5, "hello".into(), true, true)]
        );
        assert!(chat.room(&room("general")).unwrap().outbox().is_empty());
    }

    #[test]
    fn ack_before_message_is_one_sent_message() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cid = chat.queue_send(&room("general"), "hello".into()).unwrap();
        chat.apply(ack("general", &cid, 5));
        assert_eq!(
            messages(&chat, "general"),
            [(5, "hello".into(), true, true)]
        );
        assert!(chat.room(&room("general")).unwrap().outbox().is_empty());
        chat.apply(ServerMsg::Message(msg("general", 5, "me", "hello")));
        assert_eq!(
            messages(&chat, "general"),
            [(5, "hello".into(), true, true)]
        );
    }

    #[test]
    fn ack_does_not_move_the_resume_point_past_an_undelivered_message() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "ann", "a")]));
        let cid = chat.queue_send(&room("general"), "mine".into()).unwrap();
        // Bob's message 4 was stored before ours (5) but is still queued on the server when our ack arrives.
        chat.apply(ack("general", &cid, 5));
        assert_eq!(chat.rejoins()[0].since, Some(MsgId::new(1, 0)));
        chat.apply(ServerMsg::Message(msg("general", 4, "bob", "b")));
        chat.apply(ServerMsg::Message(msg("general", 5, "me", "mine")));
        assert_eq!(ids(&chat, "general"), [1, 4, 5]);
        assert_eq!(chat.rejoins()[0].since, Some(MsgId::new(5, 0)));
    }

    #[test]
    fn error_for_a_cid_fails_that_send_and_retry_uses_a_fresh_cid() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let first = chat.queue_send(&room("general"), "one".into()).unwrap();
        let second = chat.queue_send(&room("general"), "two".into()).unwrap();
        let notice = chat.apply(ServerMsg::Error {
            code: ErrorCode::RateLimited,
            message: "sending too fast".into(),
            request: Some("send".into()),
            req: Some(first.clone()),
            room: Some("general".into()),
        });
        assert_eq!(notice, None);
        let outbox = chat.room(&room("general")).unwrap().outbox().to_vec();
        assert_eq!(
            outbox[0].status,
            SendStatus::Failed {
                reason: "sending too fast".into(),
                maybe_sent: false
            }
        );
        assert_eq!(outbox[1].status, SendStatus::Pending);

        let (fresh, text) = chat.retry(&room("general"), &first).unwrap();
        assert_ne!(fresh, first);
        assert_ne!(fresh, second);
        assert_eq!(text, "one");
        let outbox = chat.room(&room("general")).unwrap().outbox().to_vec();
        assert_eq!(
            outbox.iter().map(|o| o.cid.as_str()).collect::<Vec<_>>(),
            [second.as_str(), fresh.as_str()]
        );
        assert!(outbox.iter().all(|o| o.status == SendStatus::Pending));
        // An ack for the abandoned cid changes nothing; the fresh one lands.
        chat.apply(ack("general", &first, 7));
        assert!(ids(&chat, "general").is_empty());
        chat.apply(ack("general", &fresh, 8));
        assert_eq!(messages(&chat, "general"), [(8, "one".into(), true, true)]);
    }

    #[test]
    fn disconnect_fails_pending_sends_and_history_withdraws_those_that_were_stored() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let stored = chat.queue_send(&room("general"), "made it".into()).unwrap();
        chat.queue_send(&room("general"), "lost".into()).unwrap();
        chat.disconnected();
        let outbox = chat.room(&room("general")).unwrap().outbox().to_vec();
        assert!(outbox.iter().all(|o| o.status
            == SendStatus::Failed {
                reason: LOST_REASON.into(),
                maybe_sent: true
            }));
        assert_eq!(outbox[0].cid, stored);
        chat.apply(joined("general", vec![msg("general", 9, "me", "made it")]));
        assert_eq!(
            messages(&chat, "general"),
            [(9, "made it".into(), true, true)]
        );
        let outbox = chat.room(&room("general")).unwrap().outbox().to_vec();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].text, "lost");
    }

    #[test]
    fn unread_counts_only_others_messages_in_rooms_not_on_screen() {
        let mut chat = chat();
        chat.open(room("side"), nick("me"));
        chat.apply(joined("general", vec![]));
        // The first history of a room is its past, not unread news.
        chat.apply(joined(
            "side",
            vec![msg("side", 1, "ann", "old"), msg("side", 2, "bob", "old")],
        ));
        assert_eq!(chat.room(&room("side")).unwrap().unread(), 0);

        chat.apply(ServerMsg::Message(msg("side", 3, "ann", "x")));
        chat.apply(ServerMsg::Message(msg("side", 3, "ann", "x")));
        chat.apply(ServerMsg::Message(msg(
            "side",
            4,
            "me",
            "from my other tab",
        )));
        chat.apply(ServerMsg::Message(msg("general", 5, "bob", "seen live")));
        assert_eq!(chat.room(&room("side")).unwrap().unread(), 1);
        assert_eq!(chat.room(&room("general")).unwrap().unread(), 0);

        // Missed while disconnected: the rejoin history counts.
        chat.disconnected();
        chat.apply(joined("side", vec![msg("side", 6, "bob", "y")]));
        assert_eq!(chat.room(&room("side")).unwrap().unread(), 2);
        assert_eq!(chat.unread_total(), 2);

        chat.view(Some(room("side")));
        assert_eq!(chat.room(&room("side")).unwrap().unread(), 0);
        chat.apply(ServerMsg::Message(msg("general", 7, "bob", "z")));
        assert_eq!(chat.room(&room("general")).unwrap().unread(), 1);
        assert_eq!(chat.unread_total(), 1);
    }

    #[test]
    fn presence_and_join_errors_land_in_their_room() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "ann", "a")]));
        chat.apply(ServerMsg::Presence(PresenceEvent {
            room: room("general"),
            nick: nick("bob"),
            event: PresenceKind::Joined,
            ts: 2,
        }));
        chat.apply(ServerMsg::Message(msg("general", 3, "bob", "hi")));
        let items = chat.room(&room("general")).unwrap().items();
        assert!(matches!(
            items[1],
            Item::Presence {
                event: PresenceKind::Joined,
                ..
            }
        ));
        assert_eq!(ids(&chat, "general"), [1, 3]);
        assert_eq!(chat.room(&room("general")).unwrap().unread(), 0);

        chat.open(room("full"), nick("me"));
        let notice = chat.apply(ServerMsg::Error {
            code: ErrorCode::TooManyRooms,
            message: "too many rooms".into(),
            request: Some("join".into()),
            req: None,
            room: Some("full".into()),
        });
        assert_eq!(notice, None);
        assert_eq!(
            chat.room(&room("full")).unwrap().phase(),
            &Phase::Failed("too many rooms".into())
        );
        let notice = chat.apply(ServerMsg::Error {
            code: ErrorCode::Malformed,
            message: "frame is not valid JSON".into(),
            request: None,
            req: None,
            room: None,
        });
        assert_eq!(notice.as_deref(), Some("frame is not valid JSON"));
    }

    #[test]
    fn timeline_is_capped() {
        let mut chat = chat();
        let history = (1..=TIMELINE_CAP as u64 + 10)
            .map(|ms| msg("general", ms, "ann", "x"))
            .collect();
        chat.apply(joined("general", history));
        let ids = ids(&chat, "general");
        assert_eq!(ids.len(), TIMELINE_CAP);
        assert_eq!(ids[0], 11);
    }

    #[test]
    fn rename_and_close() {
        let mut chat = chat();
        chat.open(room("side"), nick("me"));
        let rejoins = chat.rename(&nick("new name"));
        assert_eq!(rejoins.len(), 2);
        assert!(rejoins.iter().all(|r| r.nick == nick("new name")));
        assert!(chat.close(&room("general")));
        assert_eq!(chat.active(), None);
        assert!(!chat.close(&room("general")));
        assert_eq!(chat.rooms().len(), 1);
    }
}
