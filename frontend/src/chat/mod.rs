//! The client's chat state, free of any browser API: rooms, their timelines deduplicated by message id, each room's
//! outbox of own messages (queued, pending, failed), resume points with their history epochs, notices about lost
//! history, and unread counts. Its tests run natively.
//!
//! The WebSocket client feeds every [`ServerMsg`] into [`Chat::apply`] and puts on the wire whatever [`Chat::flush`]
//! says is due; the components only read. Keeping the rules here, away from the socket and the DOM, is what lets
//! `cargo test -p frontend` check the subtle cases: history overlapping live messages, a message arriving before or
//! after its own ack, and a reconnect in between.
//!
//! Delivery is loss-free within the server's dedupe window: every own message keeps one client message id (`cid`)
//! for its whole life, and is sent again with it until the server acknowledges it. The server stores a `send` at
//! most once per `cid`, so a message cut off by a disconnect (stored or not) is simply sent again after the rejoin,
//! and its `ack` (a `duplicate` one if it had been stored) settles it. Nothing is ever matched by its text.
//!
//! This module holds every room together and how frames and the person's actions change them; `room` is one room's
//! state, `timeline` its lines and `outbox` its own messages on their way.

mod outbox;
mod room;
mod timeline;

#[cfg(test)]
mod fixtures;

use std::time::Duration;

use shared::{ChatMessage, ClientMsg, ErrorCode, MsgId, Nick, RoomName, ServerMsg};

pub use outbox::{Outgoing, RATE_LIMITED_HOLD, SendStatus, UNAVAILABLE_HOLD};
pub use room::{Phase, Room, TYPING_SEND_EVERY_MS};
pub use timeline::{GAP_NOTICE, Item, OLDER_PAGE, Older, Posted, PresenceLine, TIMELINE_CAP};

/// Every room this client is in, which one the person is looking at, and the counters that name own messages.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The page clock (ms) as of the frame being applied; set by [`Chat::set_now`].
    now: u64,
    /// The tab is hidden (another tab or window is in front).
    hidden: bool,
    rooms: Vec<Room>,
    active: Option<RoomName>,
    next_key: u64,
    cid_prefix: String,
    next_cid: u64,
    person: Option<String>,
}

/// A join to (re)send: the room, the nickname, and where to resume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejoin {
    /// The room.
    pub room: RoomName,
    /// The nickname to use.
    pub nick: Nick,
    /// Who this browser is (see [`Chat::with_person`]).
    pub person: Option<String>,
    /// The last id seen there, if any.
    pub since: Option<MsgId>,
    /// The history epoch `since` belongs to; present only with `since`.
    pub epoch: Option<String>,
}

/// What applying a frame asks of the caller besides the state change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// A message for the person when the frame concerns no room or send this state knows (for example a refused
    /// `hello`), so the caller can show it somewhere.
    pub notice: Option<String>,
    /// A transient refusal put a room's outbox on hold: call [`Chat::release_holds`] and [`Chat::flush`] after this
    /// long. Set only by the refusal that started the hold, so one timer serves a burst of refusals.
    pub retry_after: Option<Duration>,
    /// Messages that mention this client's nick, arrived live while the tab was hidden: worth a notification.
    pub mentions: Vec<ChatMessage>,
}

impl Chat {
    /// An empty state. `cid_prefix` makes this tab's client message ids distinct from other tabs' (the server
    /// dedupes sends by nick and `cid`, so two tabs of one person must never share one).
    pub fn new(cid_prefix: impl Into<String>) -> Self {
        Self {
            now: 0,
            hidden: false,
            rooms: Vec::new(),
            active: None,
            next_key: 0,
            cid_prefix: cid_prefix.into(),
            next_cid: 0,
            person: None,
        }
    }

    /// Joins as `person` from now on: the server counts every connection of one person and nick as one member.
    #[must_use]
    pub fn with_person(mut self, person: String) -> Self {
        self.person = Some(person);
        self
    }

    /// Who this browser is, if known.
    pub fn person(&self) -> Option<&str> {
        self.person.as_deref()
    }

    /// The tab was hidden or shown again. Shown again, the room on screen counts as read.
    pub fn set_hidden(&mut self, hidden: bool) {
        self.hidden = hidden;
        if !hidden
            && let Some(name) = self.active.clone()
            && let Some(room) = self.room_mut(&name)
        {
            room.unread = 0;
        }
    }

    /// Sets the page clock (ms) that typing notices are timed by.
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// Whether to tell `name` that this client is typing, at `now`: at most once per [`TYPING_SEND_EVERY_MS`],
    /// only in a joined room. Records the send when it says yes.
    pub fn typing_due(&mut self, name: &RoomName, now: u64) -> bool {
        let Some(room) = self.room_mut(name) else {
            return false;
        };
        if room.phase != Phase::Joined
            || room
                .typed_at
                .is_some_and(|at| now < at + TYPING_SEND_EVERY_MS)
        {
            return false;
        }
        room.typed_at = Some(now);
        true
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
        if name != self.active
            && let Some(left) = self.active.clone()
            && let Some(room) = self.room_mut(&left)
        {
            // Read: the divider goes when the person moves on.
            room.timeline.mark_read();
        }
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

    /// The joins that restore every room on a fresh connection, each resuming after the last id seen, in its epoch.
    pub fn rejoins(&self) -> Vec<Rejoin> {
        self.rooms
            .iter()
            .map(|room| Rejoin {
                person: self.person.clone(),
                ..room.rejoin()
            })
            .collect()
    }

    /// Marks a room as loading older messages and returns the id to ask before, unless a request is already out,
    /// the start was reached, the room is not joined, or it has no message to page back from.
    pub fn start_loading_older(&mut self, name: &RoomName) -> Option<MsgId> {
        let room = self.room_mut(name)?;
        if room.phase != Phase::Joined {
            return None;
        }
        room.timeline.start_loading_older()
    }

    /// Marks a room as being joined again after the person asked to retry a refused join.
    pub fn rejoining(&mut self, name: &RoomName) -> Option<Rejoin> {
        let room = self.room_mut(name)?;
        room.phase = Phase::Joining;
        let rejoin = room.rejoin();
        Some(Rejoin {
            person: self.person.clone(),
            ..rejoin
        })
    }

    /// Queues an own message at the end of its room's outbox and returns its client message id. It goes on the
    /// wire with the next [`Chat::flush`] once the room is joined, which may be at once or after a reconnect.
    pub fn queue_send(&mut self, room: &RoomName, text: String) -> Option<String> {
        let cid = self.fresh_cid();
        let room = self.room_mut(room)?;
        // Writing in the room means what came before was read.
        room.timeline.mark_read();
        room.outbox.push(cid.clone(), text);
        Some(cid)
    }

    /// Queues a failed message again, under the same client message id, at the end of the outbox; the next
    /// [`Chat::flush`] sends it. Returns whether there was such a failed message.
    pub fn retry(&mut self, room: &RoomName, cid: &str) -> bool {
        self.room_mut(room)
            .is_some_and(|room| room.outbox.retry(cid))
    }

    /// Queues every failed message of the room again, in the order they were written, each under its own client
    /// message id. Returns how many.
    pub fn retry_all(&mut self, room: &RoomName) -> usize {
        self.room_mut(room)
            .map_or(0, |room| room.outbox.retry_all())
    }

    /// Drops every failed message of the room (the ones still on their way stay).
    pub fn discard_failed(&mut self, room: &RoomName) {
        if let Some(room) = self.room_mut(room) {
            room.outbox.discard_failed();
        }
    }

    /// Drops a message the person no longer wants to send.
    pub fn discard(&mut self, room: &RoomName, cid: &str) {
        if let Some(room) = self.room_mut(room) {
            room.outbox.discard(cid);
        }
    }

    /// The sends that are due: every queued message of every joined room whose outbox is not on hold, in outbox
    /// order, each with its own `cid`. They are marked pending, so each is returned once per attempt.
    pub fn flush(&mut self) -> Vec<ClientMsg> {
        let mut sends = Vec::new();
        for room in &mut self.rooms {
            if room.phase == Phase::Joined {
                sends.extend(room.outbox.flush(&room.name));
            }
        }
        sends
    }

    /// Ends every hold a transient refusal started, so the next [`Chat::flush`] sends those messages again.
    pub fn release_holds(&mut self) {
        for room in &mut self.rooms {
            room.outbox.release_hold();
        }
    }

    /// The connection dropped: every room must be joined again, and every pending message goes back to the queue,
    /// in place, to be sent again with the same `cid` after the rejoin (the server stores it at most once, whether
    /// or not the first attempt made it). Holds end: the reconnect itself is the wait.
    pub fn disconnected(&mut self) {
        for room in &mut self.rooms {
            if room.phase == Phase::Joined {
                room.phase = Phase::Joining;
            }
            room.outbox.connection_lost();
        }
    }

    /// Applies one frame from the server. What becomes sendable (after a `joined`, say) is fetched with
    /// [`Chat::flush`] afterwards.
    pub fn apply(&mut self, msg: ServerMsg) -> Applied {
        let mut applied = Applied::default();
        self.update(msg, &mut applied);
        applied
    }

    /// [`Chat::apply`], returning early (with `None`) when the frame names a room this client is not in.
    fn update(&mut self, msg: ServerMsg, applied: &mut Applied) -> Option<()> {
        // A room on screen in a hidden tab is not being read: what arrives there counts as unread too.
        let active = if self.hidden {
            None
        } else {
            self.active.clone()
        };
        match msg {
            ServerMsg::Welcome { .. } | ServerMsg::Left { .. } | ServerMsg::Pong { .. } => {}
            ServerMsg::HistoryPage {
                room,
                messages,
                complete,
                ..
            } => {
                let room = self.room_mut(&room)?;
                room.timeline.prepend(messages, complete, &room.nick);
            }
            ServerMsg::Typing { room, nick } => {
                let now = self.now;
                let room = self.room_mut(&room)?;
                room.typing.retain(|(n, _)| *n != nick);
                room.typing.push((nick, now));
            }
            ServerMsg::Joined {
                room,
                nick,
                history,
                epoch,
                reset,
                truncated,
                members,
                online,
                ..
            } => {
                let viewing = active.as_ref() == Some(&room);
                let key = self.next_key();
                let room = self.room_mut(&room)?;
                room.nick = nick;
                room.phase = Phase::Joined;
                room.epoch = Some(epoch);
                room.members = members;
                room.online = online;
                // A history request asked on a connection that is gone will not be answered.
                room.timeline.drop_older_request();
                if reset {
                    // The resume point names a history that is gone; the new one starts from this history.
                    room.resume = None;
                }
                if reset || truncated {
                    room.timeline.notice(key, GAP_NOTICE);
                }
                // The first history is the room's past, not news; after a reconnect it is what was missed.
                let count_unread = room.ever_joined;
                room.ever_joined = true;
                for msg in history {
                    room.deliver(msg, viewing, count_unread);
                }
            }
            ServerMsg::Message(msg) => {
                // Also the rest of a `joined` history too large for one frame: it follows as ordinary messages.
                let viewing = active.as_ref() == Some(&msg.room);
                let hidden = self.hidden;
                let room = self.room_mut(&msg.room)?;
                let mention = (hidden
                    && msg.nick != room.nick
                    && crate::text::mentions(&msg.text, room.nick.as_str()))
                .then(|| msg.clone());
                if room.deliver(msg, viewing, true)
                    && let Some(mention) = mention
                {
                    applied.mentions.push(mention);
                }
            }
            // A `duplicate` ack means an earlier attempt was stored: it settles the message just the same.
            ServerMsg::Ack {
                room, cid, id, ts, ..
            } => self.room_mut(&room)?.ack(&cid, id, ts),
            ServerMsg::Presence(p) => {
                let key = self.next_key();
                let room = self.room_mut(&p.room)?;
                room.presence(&p.nick, p.event, p.from.as_ref());
                room.timeline.push(Item::Presence(PresenceLine {
                    key,
                    nick: p.nick,
                    event: p.event,
                    from: p.from,
                    ts: p.ts,
                }));
            }
            ServerMsg::Gap { room, epoch, reset } => {
                let key = self.next_key();
                let room = self.room_mut(&room)?;
                room.epoch = Some(epoch);
                if reset {
                    // The next messages come from the new history; an old resume point would hide them.
                    room.resume = None;
                }
                room.timeline.notice(key, GAP_NOTICE);
            }
            ServerMsg::Error {
                code,
                message,
                request,
                req,
                room,
            } => {
                let room = room.and_then(|r| RoomName::parse(&r).ok());
                match (request.as_deref(), req, room) {
                    (Some("send"), Some(cid), _) => match self.refuse(&cid, code, &message) {
                        Some(hold) => applied.retry_after = hold,
                        None => applied.notice = Some(message),
                    },
                    (Some("join"), _, Some(name)) => match self.room_mut(&name) {
                        Some(room) => room.phase = Phase::Failed(message),
                        None => applied.notice = Some(message),
                    },
                    _ => applied.notice = Some(message),
                }
            }
        }
        Some(())
    }

    /// The server refused the `send` with `cid`. A transient refusal (`rate_limited`, `unavailable`) queues the
    /// message again and holds its room's outbox; any other fails it. Returns `None` when no own message has that
    /// `cid`, else the hold the caller must time, if this refusal started one.
    fn refuse(&mut self, cid: &str, code: ErrorCode, reason: &str) -> Option<Option<Duration>> {
        // Nothing was stored under a reused cid, so a fresh one is safe, and the only way a retry can succeed.
        let fresh = (code == ErrorCode::CidReused).then(|| self.fresh_cid());
        let room = self
            .rooms
            .iter_mut()
            .find(|room| room.outbox.contains(cid))?;
        room.outbox.refuse(cid, code, reason, fresh)
    }

    fn next_key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }

    fn fresh_cid(&mut self) -> String {
        self.next_cid += 1;
        format!("{}-{}", self.cid_prefix, self.next_cid)
    }
}

#[cfg(test)]
mod tests {
    use shared::{PresenceEvent, PresenceKind};

    use super::fixtures::*;
    use super::*;

    #[test]
    fn a_hidden_tab_counts_what_arrives_in_the_room_on_screen() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        chat.set_hidden(true);
        chat.apply(ServerMsg::Message(msg("general", 1, "bob", "while hidden")));
        assert_eq!(chat.unread_total(), 1, "the title shows (1)");
        assert_eq!(general(&chat).first_unread(), Some(MsgId::new(1, 0)));
        chat.set_hidden(false);
        assert_eq!(chat.unread_total(), 0);
        assert_eq!(
            general(&chat).first_unread(),
            Some(MsgId::new(1, 0)),
            "the divider shows where it began"
        );
    }

    #[test]
    fn a_mention_in_a_hidden_tab_asks_for_a_notification_once() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let mention = |id| ServerMsg::Message(msg("general", id, "ann", "hey @me, look"));
        assert!(
            chat.apply(mention(1)).mentions.is_empty(),
            "the tab is on screen"
        );
        chat.set_hidden(true);
        assert_eq!(chat.apply(mention(2)).mentions.len(), 1);
        assert!(chat.apply(mention(2)).mentions.is_empty(), "a duplicate");
        let plain = ServerMsg::Message(msg("general", 3, "ann", "nothing for you"));
        assert!(chat.apply(plain).mentions.is_empty());
        let own = ServerMsg::Message(msg("general", 4, "me", "talking to @me"));
        assert!(chat.apply(own).mentions.is_empty(), "my own message");
    }

    #[test]
    fn presence_and_join_errors_land_in_their_room() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "ann", "a")]));
        chat.apply(ServerMsg::Presence(PresenceEvent {
            room: room("general"),
            nick: nick("bob"),
            event: PresenceKind::Joined,
            from: None,
            ts: 2,
        }));
        chat.apply(ServerMsg::Message(msg("general", 3, "bob", "hi")));
        let items = general(&chat).items();
        assert!(matches!(
            items[1],
            Item::Presence(PresenceLine {
                event: PresenceKind::Joined,
                ..
            })
        ));
        assert_eq!(ids(&chat, "general"), [1, 3]);
        assert_eq!(general(&chat).unread(), 0);

        chat.open(room("full"), nick("me"));
        let applied = chat.apply(ServerMsg::Error {
            code: ErrorCode::TooManyRooms,
            message: "too many rooms".into(),
            request: Some("join".into()),
            req: None,
            room: Some("full".into()),
        });
        assert_eq!(applied.notice, None);
        assert_eq!(
            chat.room(&room("full")).unwrap().phase(),
            &Phase::Failed("too many rooms".into())
        );
        let applied = chat.apply(ServerMsg::Error {
            code: ErrorCode::Malformed,
            message: "frame is not valid JSON".into(),
            request: None,
            req: None,
            room: None,
        });
        assert_eq!(applied.notice.as_deref(), Some("frame is not valid JSON"));
        // A refusal for a send this tab does not know is shown as a notice too.
        let applied = chat.apply(send_error("nope", ErrorCode::RateLimited, "slow down"));
        assert_eq!(applied.notice.as_deref(), Some("slow down"));
        assert_eq!(applied.retry_after, None);
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
