//! The client's chat state, free of any browser API: rooms, their timelines deduplicated by message id, each room's
//! outbox of own messages (queued, pending, failed), resume points with their history epochs, notices about lost
//! history, the person's read position and the unread counts after it (the server's, plus what arrived since), read
//! receipts, and the search on screen. Its tests run natively.
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
mod search;
mod timeline;

#[cfg(test)]
mod fixtures;

use std::time::Duration;

use shared::{
    ChatMessage, ClientMsg, ErrorCode, ModerationAction, ModerationEvent, MsgId, Nick, RoomName,
    ServerMsg, frame,
};

pub use outbox::{Act, BANNED, Outgoing, RATE_LIMITED_HOLD, SendStatus, UNAVAILABLE_HOLD};
pub use room::{
    LIVE_LINES, Phase, READ_EVERY_MS, Room, SEEN_NAMED, TYPING_SEND_EVERY_MS, TypingDue, Unread,
};
pub use search::{SEARCH_PAGE, Search};
pub use timeline::{
    GAP_NOTICE, Item, ModLine, OLDER_PAGE, Older, Posted, PresenceLine, TIMELINE_CAP,
};

use timeline::Change;

/// Every room this client is in, which one the person is looking at, and the counters that name own messages.
#[derive(Debug, Clone)]
pub struct Chat {
    /// The page clock (ms) as of the frame being applied; set by [`Chat::set_now`].
    now: u64,
    /// The wall clock (ms since the Unix epoch) as of the frame being applied, for the server's `until` times.
    wall: u64,
    /// The tab is hidden (another tab or window is in front).
    hidden: bool,
    rooms: Vec<Room>,
    active: Option<RoomName>,
    next_key: u64,
    cid_prefix: String,
    next_cid: u64,
    person: Option<String>,
    search: Option<Search>,
    next_req: u64,
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
    /// Messages that mention this client's nick, arrived live while the tab was hidden and not read elsewhere:
    /// worth a notification.
    pub mentions: Vec<ChatMessage>,
    /// This person's read position moved in a room (here or on another device): notifications of messages up to it
    /// are stale.
    pub read: Option<(RoomName, MsgId)>,
}

impl Chat {
    /// An empty state. `cid_prefix` makes this tab's client message ids distinct from other tabs' (the server
    /// dedupes sends by nick and `cid`, so two tabs of one person must never share one).
    pub fn new(cid_prefix: impl Into<String>) -> Self {
        Self {
            now: 0,
            wall: 0,
            hidden: false,
            rooms: Vec::new(),
            active: None,
            next_key: 0,
            cid_prefix: cid_prefix.into(),
            next_cid: 0,
            person: None,
            search: None,
            next_req: 0,
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

    /// The tab was hidden or shown again. Shown again, the room on screen is read once its newest message is on
    /// screen (the page then calls [`Chat::want_read`]).
    pub fn set_hidden(&mut self, hidden: bool) {
        self.hidden = hidden;
    }

    /// Whether the tab is hidden.
    pub fn hidden(&self) -> bool {
        self.hidden
    }

    /// The person read `name` up to `id` (its newest message is on screen, in a visible tab): the badge clears at
    /// once, and [`Chat::reads`] sends `read` when it may.
    pub fn want_read(&mut self, name: &RoomName, id: MsgId) {
        if let Some(room) = self.room_mut(name)
            && room.read_wanted.is_none_or(|w| id > w)
        {
            room.read_wanted = Some(id);
        }
    }

    /// The `read` requests due at `now` (page clock, ms): one per joined room whose wanted position is ahead of what
    /// the server has and of what was sent on this connection, at most one per room every [`READ_EVERY_MS`]. Also
    /// how long until the next one falls due, if one waits.
    pub fn reads(&mut self, now: u64) -> (Vec<ClientMsg>, Option<u64>) {
        let mut due = Vec::new();
        let mut wait: Option<u64> = None;
        for room in &mut self.rooms {
            let Some(want) = room.read_wanted else {
                continue;
            };
            let sent = room.read_sent.map(|(id, _)| id);
            if room.phase != Phase::Joined || room.read.max(sent).is_some_and(|r| r >= want) {
                continue;
            }
            match room.read_sent {
                Some((_, at)) if now < at + READ_EVERY_MS => {
                    let left = at + READ_EVERY_MS - now;
                    wait = Some(wait.map_or(left, |w| w.min(left)));
                }
                _ => {
                    room.read_sent = Some((want, now));
                    due.push(ClientMsg::Read {
                        room: room.name.to_string(),
                        id: want,
                    });
                }
            }
        }
        (due, wait)
    }

    /// The search on screen, if any.
    pub fn search(&self) -> Option<&Search> {
        self.search.as_ref()
    }

    /// Starts a search for `query` (the previous one is forgotten): the request to send, if the query can be
    /// searched (else the search says why).
    pub fn start_search(&mut self, query: &str) -> Option<ClientMsg> {
        self.next_req += 1;
        let (search, msg) = Search::start(query, self.next_req);
        self.search = Some(search);
        msg
    }

    /// The next page of the search's results, unless one is being fetched or there is none.
    pub fn more_results(&mut self) -> Option<ClientMsg> {
        self.next_req += 1;
        let n = self.next_req;
        self.search.as_mut()?.more(n)
    }

    /// The search could not be sent: the page is not connected.
    pub fn search_offline(&mut self) {
        if let Some(search) = &mut self.search {
            search.loading = false;
            search.error = Some("Not connected: search again once back online.".into());
        }
    }

    /// Closes the search.
    pub fn end_search(&mut self) {
        self.search = None;
    }

    /// Sets the page clock (ms) that typing notices are timed by.
    pub fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    /// Sets the wall clock (ms since the Unix epoch) that the server's `until` times are compared with.
    pub fn set_wall(&mut self, wall: u64) {
        self.wall = wall;
    }

    /// Whether to tell `name` that this client is typing, at `now`: at most once per [`TYPING_SEND_EVERY_MS`],
    /// only in a joined room, except right after a message was sent: the message cleared the typing line on the
    /// other pages, so the next keystroke says so again at once (the server relays the first `typing` after a
    /// `send` whatever its own throttle). Records the send when it says [`TypingDue::Send`].
    pub fn typing_due(&mut self, name: &RoomName, now: u64) -> TypingDue {
        let Some(room) = self.room_mut(name) else {
            return TypingDue::Skip;
        };
        if room.phase != Phase::Joined {
            return TypingDue::Skip;
        }
        let due = match room.typed_at {
            None => TypingDue::Send,
            Some(_) if room.sent_since_typed => TypingDue::Send,
            Some(at) if now >= at + TYPING_SEND_EVERY_MS => TypingDue::Send,
            Some(_) => TypingDue::Skip,
        };
        if due == TypingDue::Send {
            room.typed_at = Some(now);
            room.sent_since_typed = false;
        }
        due
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
        self.rooms.iter().map(|room| room.unread().count).sum()
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

    /// Puts a room on screen (or none). The "New messages" divider of the room left goes where the person's reading
    /// stopped (nowhere once they read to its end); the one of the room opened is where unread messages begin, and
    /// stays there while the person reads.
    pub fn view(&mut self, name: Option<RoomName>) {
        if name == self.active {
            return;
        }
        for room in &mut self.rooms {
            if Some(&room.name) == self.active.as_ref() || Some(&room.name) == name.as_ref() {
                room.place_divider();
            }
        }
        self.active = name;
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
            // A room a moderator took this client out of is joined again only when the person asks.
            .filter(|room| !matches!(room.phase, Phase::Removed(_)))
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

    /// Queues an own message (a reply to `reply_to`, if given) at the end of its room's outbox and returns its
    /// client message id. It goes on the wire with the next [`Chat::flush`] once the room is joined, which may be
    /// at once or after a reconnect.
    pub fn queue_send(
        &mut self,
        room: &RoomName,
        text: String,
        reply_to: Option<MsgId>,
    ) -> Option<String> {
        let name = room.clone();
        let cid = self.queue(room, text, Act::Send { reply_to })?;
        let room = self.room_mut(&name)?;
        // Writing in the room means what came before was read.
        room.timeline.mark_read();
        // The message ends the typing line on the other pages: the next keystroke must be able to start it again.
        room.sent_since_typed = true;
        Some(cid)
    }

    /// Queues an action on a message (edit, delete, react) in its room's outbox, under a fresh client message id
    /// that it keeps for every resend, exactly like a message. `text` is an edit's new text.
    pub fn queue(&mut self, room: &RoomName, text: String, act: Act) -> Option<String> {
        self.room(room)?;
        let cid = self.fresh_cid();
        let room = self.room_mut(room)?;
        room.outbox.push(cid.clone(), text, act);
        if room.barred() {
            // Banned: refused at once, kept to retry once back in the room, never "Sending…" in vain.
            room.outbox.bar(BANNED);
        }
        Some(cid)
    }

    /// Queues a failed message again, under the same client message id, at the end of the outbox; the next
    /// [`Chat::flush`] sends it. Returns whether there was such a failed message. In a room a ban took this client
    /// out of, it stays failed: it could only wait.
    pub fn retry(&mut self, room: &RoomName, cid: &str) -> bool {
        self.room_mut(room)
            .is_some_and(|room| !room.barred() && room.outbox.retry(cid))
    }

    /// Queues every failed message of the room again, in the order they were written, each under its own client
    /// message id (not while banned, as [`Chat::retry`]). Returns how many.
    pub fn retry_all(&mut self, room: &RoomName) -> usize {
        self.room_mut(room)
            .filter(|room| !room.barred())
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
            // A `read` on a connection that is gone may not have arrived: the rejoin's position says.
            room.read_sent = None;
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
            // `try_again` is the connection's business (it waits and asks again), not the chat's.
            ServerMsg::Welcome(_)
            | ServerMsg::Pong(_)
            | ServerMsg::TryAgain(_)
            | ServerMsg::Done(_)
            | ServerMsg::Left(frame::Left { reason: None, .. }) => {}
            ServerMsg::SearchResults(page) => self.search.as_mut()?.results(page),
            // Kept even if the event that turned receipts on has not arrived yet (the two travel apart); shown only
            // while they are on.
            ServerMsg::Seen(frame::Seen { room, nick, id }) => self.room_mut(&room)?.saw(nick, id),
            ServerMsg::ReadState(frame::ReadState {
                room: name,
                id,
                unread,
                mentions,
                more,
                upto,
            }) => {
                let viewing = active.as_ref() == Some(&name);
                let room = self.room_mut(&name)?;
                // Moves arrive in order; one behind what is known is stale, counts and all.
                if room.read.is_some_and(|r| id < r) {
                    return None;
                }
                room.read = Some(id);
                room.counted = Unread {
                    count: unread,
                    mentions,
                    more,
                };
                room.upto = upto.or(Some(id));
                if !viewing {
                    room.place_divider();
                }
                applied.read = Some((name, id));
            }
            ServerMsg::Left(frame::Left {
                room,
                reason: Some(reason),
                ..
            }) => {
                let room = self.room_mut(&room)?;
                if reason == "banned" {
                    // Until when, the ban's own event (just before) said; a ban of this person under another nick
                    // did not, and then this reads like a kick: "Join again" asks the server, which says.
                    room.ban(None);
                } else {
                    room.phase = Phase::Removed(format!("You were kicked from #{}", room.name));
                    room.banned_until = None;
                }
            }
            ServerMsg::Edited(frame::Edited {
                room,
                id,
                target,
                text,
                ts,
                ..
            }) => self.change(&room, id, target, &Change::Edited(&text, ts))?,
            ServerMsg::Deleted(frame::Deleted {
                room, id, target, ..
            }) => self.change(&room, id, target, &Change::Deleted)?,
            ServerMsg::Reacted(frame::Reacted {
                room,
                id,
                target,
                nick,
                emoji,
                on,
                count,
                ..
            }) => {
                let mine = (self.room(&room)?.nick == nick).then_some(on);
                let change = Change::Reacted {
                    emoji: &emoji,
                    count,
                    mine,
                };
                self.change(&room, id, target, &change)?;
            }
            ServerMsg::Moderation(event) => {
                let room = self.room_mut(&event.room)?;
                room.resume = room.resume.max(Some(event.id));
                let secs = event.secs;
                match event.action {
                    ModerationAction::Mute if event.nick.as_ref() == Some(&room.nick) => {
                        room.muted_until = (secs > 0).then(|| event.ts + secs * 1000);
                    }
                    ModerationAction::Ban if event.nick.as_ref() == Some(&room.nick) => {
                        room.banned_until = (secs > 0).then(|| event.ts + secs * 1000);
                    }
                    ModerationAction::SlowMode => {
                        room.slow_mode = secs;
                        room.slow_until = None;
                    }
                    ModerationAction::Receipts => {
                        room.receipts = secs > 0;
                        if secs == 0 {
                            room.seen.clear();
                        }
                    }
                    _ => {}
                }
                room.timeline.moderation(ModLine {
                    id: event.id,
                    text: moderation_text(&event),
                    ts: event.ts,
                });
            }
            ServerMsg::HistoryPage(frame::HistoryPage {
                room,
                messages,
                complete,
                ..
            }) => {
                let room = self.room_mut(&room)?;
                room.timeline.prepend(messages, complete, &room.nick);
            }
            ServerMsg::Typing(frame::Typing { room, nick }) => {
                let now = self.now;
                let room = self.room_mut(&room)?;
                room.typing.retain(|(n, _)| *n != nick);
                room.typing.push((nick, now));
            }
            ServerMsg::Joined(frame::Joined {
                room,
                nick,
                history,
                epoch,
                reset,
                truncated,
                members,
                online,
                moderator,
                muted_until,
                slow_mode,
                read,
                unread,
                mentions,
                more,
                upto,
                receipts,
                seen,
                ..
            }) => {
                let viewing = active.as_ref() == Some(&room);
                let key = self.next_key();
                let room = self.room_mut(&room)?;
                room.nick = nick;
                room.phase = Phase::Joined;
                room.epoch = Some(epoch);
                room.members = members;
                room.online = online;
                room.moderator = moderator;
                room.muted_until = muted_until;
                room.banned_until = None;
                room.slow_mode = slow_mode;
                // A history request asked on a connection that is gone will not be answered.
                room.timeline.drop_older_request();
                if reset {
                    // The resume point names a history that is gone; the new one starts from this history, and so
                    // does reading: positions in the old one say nothing about the new ids.
                    room.resume = None;
                    room.forget_reading();
                }
                room.receipts = receipts;
                room.seen = seen.into_iter().map(|s| (s.nick, s.id)).collect();
                if let Some(read) = read {
                    room.read = Some(read);
                    room.counted = Unread {
                        count: unread,
                        mentions,
                        more,
                    };
                    room.upto = upto.or(Some(read));
                } else if !room.ever_joined || reset {
                    // No position yet (never read here): count from the newest message of this first history on.
                    room.upto = history.last().map(|m| m.id);
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
                // A room on screen keeps its divider while read, except on its first join (a reload): then it opens
                // where this person's reading stopped, on whichever device.
                if !viewing || !count_unread {
                    room.place_divider();
                }
            }
            ServerMsg::Message(msg) => {
                // Also the rest of a `joined` history too large for one frame: it follows as ordinary messages.
                let viewing = active.as_ref() == Some(&msg.room);
                let hidden = self.hidden;
                let room = self.room_mut(&msg.room)?;
                // Not for a message this person already read (on another device, say).
                let mention = (hidden
                    && msg.nick != room.nick
                    && room.read_mark().is_none_or(|r| msg.id > r)
                    && crate::text::mentions(&msg.text, room.nick.as_str()))
                .then(|| msg.clone());
                let line = (msg.id, format!("{}: {}", msg.nick, msg.text));
                let own = msg.nick == room.nick;
                if room.deliver(msg, viewing, true) {
                    if !own {
                        if room.live.len() == LIVE_LINES {
                            room.live.remove(0);
                        }
                        room.live.push(line);
                    }
                    if let Some(mention) = mention {
                        applied.mentions.push(mention);
                    }
                }
            }
            // A `duplicate` ack means an earlier attempt was stored: it settles the message just the same.
            ServerMsg::Ack(frame::Ack {
                room, cid, id, ts, ..
            }) => self.room_mut(&room)?.ack(&cid, id, ts),
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
            ServerMsg::Gap(frame::Gap { room, epoch, reset }) => {
                let key = self.next_key();
                let room = self.room_mut(&room)?;
                room.epoch = Some(epoch);
                if reset {
                    // The next messages come from the new history; an old resume point (or read position) would
                    // hide them.
                    room.resume = None;
                    room.forget_reading();
                }
                room.timeline.notice(key, GAP_NOTICE);
            }
            ServerMsg::Error(frame::Error {
                code,
                message,
                request,
                req,
                room,
                until,
            }) => {
                let room = room.and_then(|r| RoomName::parse(&r).ok());
                if let Some(room) = room.as_ref().and_then(|r| self.room_mut(r)) {
                    match code {
                        ErrorCode::Muted => room.muted_until = until,
                        ErrorCode::SlowMode => room.slow_until = until,
                        _ => {}
                    }
                }
                if request.as_deref() == Some("search") {
                    self.search.as_mut()?.refused(req.as_deref(), code, message);
                    return None;
                }
                match (request.as_deref(), req, room) {
                    (Some("send" | "edit" | "delete" | "react"), Some(cid), _) => {
                        match self.refuse(&cid, code, until, &message) {
                            Some((hold, tell)) => {
                                applied.retry_after = hold;
                                if tell {
                                    applied.notice = Some(message);
                                }
                            }
                            None => applied.notice = Some(message),
                        }
                    }
                    (Some("join"), _, Some(name)) => match self.room_mut(&name) {
                        Some(room) if code == ErrorCode::Banned => room.ban(until),
                        Some(room) => room.phase = Phase::Failed(message),
                        None => applied.notice = Some(message),
                    },
                    _ => applied.notice = Some(message),
                }
            }
        }
        Some(())
    }

    /// Applies an action event to its target message in `name`, and moves the resume point past it.
    fn change(
        &mut self,
        name: &RoomName,
        id: MsgId,
        target: MsgId,
        change: &Change<'_>,
    ) -> Option<()> {
        let room = self.room_mut(name)?;
        room.resume = room.resume.max(Some(id));
        room.timeline.change(target, change);
        Some(())
    }

    /// The server refused the request with `cid` (a message or an action). A transient refusal (`rate_limited`,
    /// `unavailable`, `slow_mode` until `until`) queues it again and holds its room's outbox; any other fails a
    /// message and drops an action. Returns `None` when no own request has that `cid`, else the hold the caller
    /// must time (if this refusal started one) and whether the reason needs a notice.
    fn refuse(
        &mut self,
        cid: &str,
        code: ErrorCode,
        until: Option<u64>,
        reason: &str,
    ) -> Option<(Option<Duration>, bool)> {
        let hold = match code {
            ErrorCode::RateLimited => Some(RATE_LIMITED_HOLD),
            ErrorCode::Unavailable => Some(UNAVAILABLE_HOLD),
            ErrorCode::SlowMode => Some(Duration::from_millis(
                until.map_or(1000, |u| u.saturating_sub(self.wall).max(100)),
            )),
            _ => None,
        };
        // Nothing was stored under a reused cid, so a fresh one is safe, and the only way a retry can succeed.
        let fresh = (code == ErrorCode::CidReused).then(|| self.fresh_cid());
        let room = self
            .rooms
            .iter_mut()
            .find(|room| room.outbox.contains(cid))?;
        room.outbox.refuse(cid, hold, reason, fresh)
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

/// A moderator's action in words: "mod muted troll for 10 min", "mod turned on slow mode: 30 s".
pub fn moderation_text(e: &ModerationEvent) -> String {
    let who = e.nick.as_ref().map_or("", Nick::as_str);
    let (by, secs) = (&e.by, e.secs);
    let span = duration(secs);
    match (e.action, secs) {
        (ModerationAction::Mute, 0) => format!("{by} unmuted {who}"),
        (ModerationAction::Mute, _) => format!("{by} muted {who} for {span}"),
        (ModerationAction::Kick, _) => format!("{by} kicked {who}"),
        (ModerationAction::Ban, 0) => format!("{by} lifted the ban on {who}"),
        (ModerationAction::Ban, _) => format!("{by} banned {who} for {span}"),
        (ModerationAction::SlowMode, 0) => format!("{by} turned off slow mode"),
        (ModerationAction::SlowMode, _) => format!("{by} turned on slow mode: {span}"),
        (ModerationAction::Retention, 0) => {
            format!("{by} set the room to keep messages as the server does")
        }
        (ModerationAction::Retention, _) => {
            format!("{by} set the room to keep messages for {span}")
        }
        (ModerationAction::Receipts, 0) => format!("{by} turned off read receipts"),
        (ModerationAction::Receipts, _) => format!("{by} turned on read receipts"),
    }
}

/// A duration in the largest unit that says it exactly: "30 s", "10 min", "2 h", "1 day", "7 days".
pub fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86_400 && s % 86_400 == 0 => match s / 86_400 {
            1 => "1 day".into(),
            d => format!("{d} days"),
        },
        s if s >= 3600 && s % 3600 == 0 => format!("{} h", s / 3600),
        s if s >= 60 && s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
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
        assert_eq!(
            chat.unread_total(),
            1,
            "until its newest message is on screen"
        );
        chat.want_read(&room("general"), MsgId::new(1, 0));
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
        assert_eq!(general(&chat).unread().count, 1, "not read yet");

        chat.open(room("full"), nick("me"));
        let applied = chat.apply(ServerMsg::Error(frame::Error {
            code: ErrorCode::TooManyRooms,
            message: "too many rooms".into(),
            request: Some("join".into()),
            req: None,
            room: Some("full".into()),
            until: None,
        }));
        assert_eq!(applied.notice, None);
        assert_eq!(
            chat.room(&room("full")).unwrap().phase(),
            &Phase::Failed("too many rooms".into())
        );
        let applied = chat.apply(ServerMsg::Error(frame::Error {
            code: ErrorCode::Malformed,
            message: "frame is not valid JSON".into(),
            request: None,
            req: None,
            room: None,
            until: None,
        }));
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

    fn edited(id: u64, target: u64, text: &str) -> ServerMsg {
        ServerMsg::Edited(frame::Edited {
            room: room("general"),
            id: MsgId::new(id, 0),
            target: MsgId::new(target, 0),
            nick: nick("me"),
            text: text.into(),
            ts: id,
        })
    }

    fn deleted(id: u64, target: u64) -> ServerMsg {
        ServerMsg::Deleted(frame::Deleted {
            room: room("general"),
            id: MsgId::new(id, 0),
            target: MsgId::new(target, 0),
            nick: nick("mod"),
            ts: id,
        })
    }

    fn moderation(id: u64, action: ModerationAction, who: Option<&str>, secs: u64) -> ServerMsg {
        ServerMsg::Moderation(ModerationEvent {
            room: room("general"),
            id: MsgId::new(id, 0),
            by: nick("mod"),
            action,
            nick: who.map(nick),
            secs,
            ts: id,
        })
    }

    fn error(code: ErrorCode, request: &str, req: &str, until: Option<u64>) -> ServerMsg {
        ServerMsg::Error(frame::Error {
            code,
            message: format!("refused: {code:?}"),
            request: Some(request.into()),
            req: Some(req.into()),
            room: Some("general".into()),
            until,
        })
    }

    fn lines(chat: &Chat) -> Vec<String> {
        general(chat)
            .items()
            .iter()
            .filter_map(|item| match item {
                Item::Moderation(m) => Some(m.text.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn edits_and_deletes_apply_once_and_replays_change_nothing() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "me", "helo")]));
        chat.apply(edited(2, 1, "hello"));
        let m = posted(&chat, 1);
        assert_eq!((m.text.as_str(), m.edited_at), ("hello", Some(2)));
        let rev = m.rev;
        // The same event again (a resume overlapping what was seen) leaves the message as it is.
        chat.apply(edited(2, 1, "hello"));
        assert_eq!(posted(&chat, 1).rev, rev, "a replay changes nothing");
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(2, 0)));

        chat.apply(deleted(3, 1));
        let m = posted(&chat, 1);
        assert!(m.deleted && m.text.is_empty(), "a tombstone without text");
        // An edit replayed after the delete does not bring the text back.
        chat.apply(edited(2, 1, "hello"));
        chat.apply(deleted(3, 1));
        assert_eq!(posted(&chat, 1), m);
        assert_eq!(
            general(&chat).last_own(),
            None,
            "a tombstone cannot be edited"
        );

        // A target not loaded is left to history, which brings its current state.
        chat.apply(edited(5, 4, "not here"));
        chat.apply(deleted(6, 4));
        assert_eq!(ids(&chat, "general"), [1]);
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(6, 0)));
    }

    #[test]
    fn history_brings_messages_with_their_state() {
        let mut chat = chat();
        let mut m = msg("general", 9, "bob", "agreed");
        m.reply_to = Some(shared::Quote {
            id: MsgId::new(1, 0),
            nick: nick("ann"),
            text: "lunch?".into(),
        });
        m.edited_at = Some(12);
        m.reactions = vec![shared::Reaction {
            emoji: "🎉".into(),
            count: 2,
            mine: true,
        }];
        chat.apply(joined("general", vec![m]));
        let p = posted(&chat, 9);
        assert_eq!(p.reply_to.unwrap().text, "lunch?");
        assert_eq!(p.edited_at, Some(12));
        assert!(p.reactions[0].mine);
    }

    #[test]
    fn reactions_take_the_count_and_mine_only_from_my_nick() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "bob", "hi")]));
        let chips = |chat: &Chat| {
            posted(chat, 1)
                .reactions
                .iter()
                .map(|r| (r.emoji.clone(), r.count, r.mine))
                .collect::<Vec<_>>()
        };
        chat.apply(reacted(2, 1, "bob", "👍", true, 1));
        assert_eq!(chips(&chat), [("👍".into(), 1, false)]);
        chat.apply(reacted(3, 1, "me", "👍", true, 2));
        chat.apply(reacted(4, 1, "me", "🎉", true, 1));
        assert_eq!(
            chips(&chat),
            [("👍".into(), 2, true), ("🎉".into(), 1, true)]
        );
        // Replays set the same count: nothing doubles.
        chat.apply(reacted(3, 1, "me", "👍", true, 2));
        assert_eq!(chips(&chat)[0], ("👍".into(), 2, true));
        // Someone else taking theirs back leaves mine.
        chat.apply(reacted(5, 1, "bob", "👍", false, 1));
        assert_eq!(chips(&chat)[0], ("👍".into(), 1, true));
        chat.apply(reacted(6, 1, "me", "👍", false, 0));
        assert_eq!(chips(&chat), [("🎉".into(), 1, true)], "a count of 0 goes");
        chat.apply(reacted(7, 1, "me", "🎉", false, 0));
        chat.apply(reacted(7, 1, "me", "🎉", false, 0));
        assert!(chips(&chat).is_empty());
        chat.apply(reacted(8, 99, "me", "🎉", true, 1));
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(8, 0)));
    }

    #[test]
    fn moderation_lines_and_my_own_mute() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        chat.apply(moderation(1000, ModerationAction::Mute, Some("troll"), 600));
        chat.apply(moderation(1001, ModerationAction::Kick, Some("troll"), 0));
        chat.apply(moderation(
            1002,
            ModerationAction::Ban,
            Some("troll"),
            86_400,
        ));
        chat.apply(moderation(1003, ModerationAction::SlowMode, None, 30));
        chat.apply(moderation(1003, ModerationAction::SlowMode, None, 30));
        assert_eq!(
            lines(&chat),
            [
                "mod muted troll for 10 min",
                "mod kicked troll",
                "mod banned troll for 1 day",
                "mod turned on slow mode: 30 s",
            ],
            "a replayed line shows once"
        );
        assert_eq!(general(&chat).slow_mode(), 30);
        assert_eq!(
            general(&chat).muted_until(),
            None,
            "troll was muted, not me"
        );
        chat.apply(moderation(2000, ModerationAction::Mute, Some("me"), 60));
        assert_eq!(general(&chat).muted_until(), Some(2000 + 60_000));
        chat.apply(moderation(3000, ModerationAction::Mute, Some("me"), 0));
        chat.apply(moderation(3001, ModerationAction::SlowMode, None, 0));
        chat.apply(moderation(3002, ModerationAction::Ban, Some("x"), 0));
        assert_eq!(general(&chat).muted_until(), None);
        assert_eq!(general(&chat).slow_mode(), 0);
        assert_eq!(
            lines(&chat)[4..],
            [
                "mod muted me for 1 min",
                "mod unmuted me",
                "mod turned off slow mode",
                "mod lifted the ban on x"
            ]
        );
        chat.apply(moderation(
            4000,
            ModerationAction::Retention,
            None,
            30 * 86_400,
        ));
        chat.apply(moderation(4001, ModerationAction::Retention, None, 0));
        assert_eq!(
            lines(&chat)[8..],
            [
                "mod set the room to keep messages for 30 days",
                "mod set the room to keep messages as the server does"
            ]
        );
        assert_eq!(duration(90), "90 s");
        assert_eq!(duration(7200), "2 h");
        assert_eq!(duration(604_800), "7 days");
    }

    #[test]
    fn joined_says_moderator_mute_and_slow_mode() {
        let mut chat = chat();
        let ServerMsg::Joined(frame::Joined {
            room,
            nick,
            history,
            epoch,
            members,
            online,
            ..
        }) = joined("general", vec![])
        else {
            unreachable!()
        };
        chat.apply(ServerMsg::Joined(frame::Joined {
            room,
            nick,
            history,
            epoch,
            reset: false,
            truncated: false,
            members,
            online,
            moderator: false,
            muted_until: Some(5000),
            slow_mode: 30,
            read: None,
            unread: 0,
            mentions: 0,
            more: false,
            upto: None,
            receipts: false,
            seen: vec![],
            req: None,
        }));
        let r = general(&chat);
        assert_eq!(
            (r.moderator(), r.muted_until(), r.slow_mode()),
            (false, Some(5000), 30)
        );
    }

    #[test]
    fn kicked_or_banned_the_room_says_so_and_is_not_rejoined_by_itself() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        chat.apply(ServerMsg::Left(frame::Left {
            room: room("general"),
            reason: Some("kicked".into()),
            req: None,
        }));
        assert_eq!(
            general(&chat).phase(),
            &Phase::Removed("You were kicked from #general".into())
        );
        chat.disconnected();
        assert!(chat.rejoins().is_empty());
        assert!(
            chat.rejoining(&room("general")).is_some(),
            "the person may join again"
        );
        chat.apply(joined("general", vec![]));
        chat.apply(ServerMsg::Left(frame::Left {
            room: room("general"),
            reason: Some("banned".into()),
            req: None,
        }));
        assert_eq!(
            general(&chat).phase(),
            &Phase::Removed("You were banned from #general".into())
        );
    }

    /// The statuses of the room's outbox, failed ones as their reason.
    fn outbox_states(chat: &Chat) -> Vec<Result<(), String>> {
        general(chat)
            .outbox()
            .iter()
            .map(|o| match &o.status {
                SendStatus::Failed { reason } => Err(reason.clone()),
                _ => Ok(()),
            })
            .collect()
    }

    #[test]
    fn a_ban_arriving_live_says_until_when_and_refuses_what_is_written_meanwhile() {
        let mut chat = chat();
        let general_ = room("general");
        chat.apply(joined("general", vec![]));
        let on_its_way = chat
            .queue_send(&general_, "on its way".into(), None)
            .unwrap();
        chat.flush();
        let react = Act::React {
            id: MsgId::new(1, 0),
            emoji: "👍".into(),
            on: true,
        };
        chat.queue(&general_, String::new(), react.clone());
        // As the server tells it: the moderation event (until its ts + secs), then this connection leaves the room.
        chat.apply(moderation(10_000, ModerationAction::Ban, Some("me"), 600));
        chat.apply(ServerMsg::Left(frame::Left {
            room: general_.clone(),
            reason: Some("banned".into()),
            req: None,
        }));
        let until = 10_000 + 600_000;
        assert_eq!(
            general(&chat).banned(20_000),
            Some(until),
            "banned until then"
        );
        assert_eq!(general(&chat).banned(until), None, "over then: Join again");
        // What was on its way shows refused (Retry/Discard), not "Sending…" forever; the action is dropped.
        assert_eq!(outbox_states(&chat), [Err(BANNED.into())]);
        // What is written while banned is refused at once, and never goes on the wire, nor does its retry.
        let typed = chat
            .queue_send(&general_, "let me in".into(), None)
            .unwrap();
        chat.queue(&general_, String::new(), react);
        assert_eq!(
            outbox_states(&chat),
            [Err(BANNED.into()), Err(BANNED.into())]
        );
        assert!(
            !chat.retry(&general_, &typed),
            "a retry while banned stays refused"
        );
        assert_eq!(chat.retry_all(&general_), 0);
        assert!(chat.flush().is_empty());
        // A reconnect does not join a room the person was banned from.
        chat.disconnected();
        assert!(chat.rejoins().is_empty());
        assert_eq!(
            outbox_states(&chat),
            [Err(BANNED.into()), Err(BANNED.into())]
        );

        // Once the ban is over the person joins again; then both messages can be sent, with their own cids.
        assert!(chat.rejoining(&general_).is_some());
        chat.apply(joined("general", vec![]));
        assert_eq!(general(&chat).banned(20_000), None);
        assert_eq!(chat.retry_all(&general_), 2);
        let cids: Vec<String> = chat
            .flush()
            .into_iter()
            .filter_map(|m| match m {
                ClientMsg::Send { cid, .. } => Some(cid),
                _ => None,
            })
            .collect();
        assert_eq!(cids, [on_its_way, typed]);

        // A resume replays the old ban while joined; a kick after it is a kick: nothing written is refused.
        chat.apply(moderation(10_000, ModerationAction::Ban, Some("me"), 600));
        chat.apply(ServerMsg::Left(frame::Left {
            room: general_.clone(),
            reason: Some("kicked".into()),
            req: None,
        }));
        assert_eq!(general(&chat).banned(20_000), None);
        chat.queue_send(&general_, "after the kick".into(), None);
        assert_eq!(outbox_states(&chat), [Ok(()), Ok(()), Ok(())]);
    }

    #[test]
    fn a_join_refused_as_banned_after_a_reload_says_until_when_and_refuses_what_is_written() {
        // A fresh page: the room is being joined; a message typed meanwhile waits for the join.
        let mut chat = chat();
        let general_ = room("general");
        let early = chat.queue_send(&general_, "hello?".into(), None).unwrap();
        assert!(chat.flush().is_empty());
        let applied = chat.apply(error(ErrorCode::Banned, "join", "j", Some(700_000)));
        assert_eq!(applied.notice, None, "the room says it");
        let r = general(&chat);
        assert_eq!(
            r.phase(),
            &Phase::Removed("You were banned from #general".into())
        );
        assert_eq!(r.banned(100_000), Some(700_000));
        assert_eq!(outbox_states(&chat), [Err(BANNED.into())]);
        let typed = chat.queue_send(&general_, "still me".into(), None).unwrap();
        assert_eq!(
            outbox_states(&chat),
            [Err(BANNED.into()), Err(BANNED.into())]
        );
        assert!(!chat.retry(&general_, &early) && !chat.retry(&general_, &typed));
        assert!(chat.flush().is_empty());
        chat.disconnected();
        assert!(chat.rejoins().is_empty(), "not joined again by itself");
        // Refused again when joining too early (say, a clock ahead): the server's `until` stands.
        chat.rejoining(&general_);
        chat.apply(error(ErrorCode::Banned, "join", "j", Some(800_000)));
        assert_eq!(general(&chat).banned(700_000), Some(800_000));
    }

    #[test]
    fn actions_go_through_the_outbox_with_their_cids_and_are_resent_after_a_reconnect() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "me", "hi")]));
        let id = MsgId::new(1, 0);
        let react = Act::React {
            id,
            emoji: "👍".into(),
            on: true,
        };
        let edit = chat
            .queue(&room("general"), "hi!".into(), Act::Edit { id })
            .unwrap();
        let cid = chat.queue(&room("general"), String::new(), react).unwrap();
        let reply = chat
            .queue_send(&room("general"), "re".into(), Some(id))
            .unwrap();
        let first = chat.flush();
        assert!(
            matches!(&first[0], ClientMsg::Edit { text, cid, .. } if text == "hi!" && *cid == edit)
        );
        assert!(matches!(&first[1], ClientMsg::React { on: true, .. }));
        assert!(matches!(&first[2], ClientMsg::Send { reply_to: Some(to), .. } if *to == id));
        chat.disconnected();
        chat.apply(joined("general", vec![]));
        assert_eq!(chat.flush(), first, "the same frames, the same cids");
        // Actions never show as messages on their way; their events show the change.
        assert_eq!(
            general(&chat)
                .outbox()
                .iter()
                .filter(|o| o.is_message())
                .count(),
            1
        );
        chat.apply(ack("general", &edit, 2));
        chat.apply(ack("general", &cid, 3));
        assert_eq!(ids(&chat, "general"), [1]);
        // The reply's ack came first: it shows with the quote made from the message it answers.
        chat.apply(ack("general", &reply, 4));
        assert_eq!(posted(&chat, 4).reply_to.unwrap().text, "hi");
        assert!(general(&chat).outbox().is_empty());
    }

    #[test]
    fn refused_actions_are_dropped_and_told_while_transient_ones_wait() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "bob", "hi")]));
        let id = MsgId::new(1, 0);
        let del = chat
            .queue(&room("general"), String::new(), Act::Delete { id })
            .unwrap();
        chat.flush();
        let applied = chat.apply(error(ErrorCode::Forbidden, "delete", &del, None));
        assert_eq!(applied.notice.as_deref(), Some("refused: Forbidden"));
        assert!(general(&chat).outbox().is_empty());

        let react = Act::React {
            id,
            emoji: "👍".into(),
            on: true,
        };
        let r = chat.queue(&room("general"), String::new(), react).unwrap();
        chat.flush();
        let applied = chat.apply(error(ErrorCode::RateLimited, "react", &r, None));
        assert_eq!(
            (applied.retry_after, applied.notice),
            (Some(RATE_LIMITED_HOLD), None)
        );
        chat.release_holds();
        assert_eq!(chat.flush().len(), 1, "sent again");
        chat.apply(error(ErrorCode::MessageGone, "react", &r, None));
        assert!(general(&chat).outbox().is_empty());
    }

    #[test]
    fn muted_and_slow_mode_refusals_say_until_when() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        chat.set_wall(10_000);
        let a = chat.queue_send(&room("general"), "a".into(), None).unwrap();
        chat.flush();
        let applied = chat.apply(error(ErrorCode::SlowMode, "send", &a, Some(40_000)));
        assert_eq!(
            applied.retry_after,
            Some(Duration::from_secs(30)),
            "held until then"
        );
        assert_eq!(general(&chat).slow_until(), Some(40_000));
        assert_eq!(general(&chat).outbox()[0].status, SendStatus::Queued);
        chat.release_holds();
        chat.flush();
        let applied = chat.apply(error(ErrorCode::Muted, "send", &a, Some(99_000)));
        assert_eq!(applied.notice, None, "the failed message says why");
        assert_eq!(general(&chat).muted_until(), Some(99_000));
        assert!(matches!(
            general(&chat).outbox()[0].status,
            SendStatus::Failed { .. }
        ));
    }

    #[test]
    fn sending_resets_the_typing_throttle() {
        let mut chat = chat();
        let general = room("general");
        chat.apply(joined("general", vec![]));
        assert_eq!(chat.typing_due(&general, 10_000), TypingDue::Send);
        assert_eq!(chat.typing_due(&general, 10_300), TypingDue::Skip);
        chat.queue_send(&general, "hi".into(), None);
        // Typing on at once: announced at once (the server relays the first `typing` after a send).
        assert_eq!(chat.typing_due(&general, 10_500), TypingDue::Send);
        // Then the usual pace again.
        assert_eq!(chat.typing_due(&general, 10_600), TypingDue::Skip);
        assert_eq!(chat.typing_due(&general, 13_500), TypingDue::Send);
        // Long after the last one, a message changes nothing: the next keystroke goes at once.
        chat.queue_send(&general, "later".into(), None);
        assert_eq!(chat.typing_due(&general, 30_000), TypingDue::Send);
    }

    #[test]
    fn the_live_region_keeps_the_last_few_new_messages_from_others() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "ann", "history")]));
        assert!(general(&chat).live().is_empty(), "history is not announced");
        for (ms, who) in [(2, "bob"), (3, "me"), (4, "bob"), (5, "ann"), (6, "bob")] {
            chat.apply(ServerMsg::Message(msg(
                "general",
                ms,
                who,
                &format!("m{ms}"),
            )));
        }
        chat.apply(ServerMsg::Message(msg("general", 6, "bob", "m6")));
        let live: Vec<&str> = general(&chat)
            .live()
            .iter()
            .map(|(_, l)| l.as_str())
            .collect();
        assert_eq!(live, ["bob: m4", "ann: m5", "bob: m6"]);
    }

    /// `joined` of `general` with a read position and the server's counts.
    fn joined_read(
        history: Vec<ChatMessage>,
        read: u64,
        unread: u32,
        mentions: u32,
        upto: u64,
    ) -> ServerMsg {
        let ServerMsg::Joined(mut j) = joined("general", history) else {
            unreachable!()
        };
        j.read = Some(MsgId::new(read, 0));
        (j.unread, j.mentions, j.upto) = (unread, mentions, Some(MsgId::new(upto, 0)));
        ServerMsg::Joined(j)
    }

    fn read_state(id: u64, unread: u32, mentions: u32, upto: u64) -> ServerMsg {
        ServerMsg::ReadState(frame::ReadState {
            room: room("general"),
            id: MsgId::new(id, 0),
            unread,
            mentions,
            more: false,
            upto: Some(MsgId::new(upto, 0)),
        })
    }

    fn badge(chat: &Chat) -> (u32, u32) {
        let u = general(chat).unread();
        (u.count, u.mentions)
    }

    #[test]
    fn the_badge_is_the_servers_counts_plus_what_arrives_after_upto() {
        let mut chat = chat();
        chat.view(None);
        // The server counted 3 (1 mention) up to 20; the history it sent is at or before 20: not counted twice.
        chat.apply(joined_read(
            vec![
                msg("general", 10, "ann", "a"),
                msg("general", 20, "ann", "@me b"),
            ],
            5,
            3,
            1,
            20,
        ));
        assert_eq!(badge(&chat), (3, 1));
        chat.apply(ServerMsg::Message(msg("general", 21, "ann", "hey @me")));
        chat.apply(ServerMsg::Message(msg(
            "general",
            22,
            "me",
            "mine, from my phone",
        )));
        chat.apply(ServerMsg::Message(msg("general", 23, "bob", "plain")));
        assert_eq!(badge(&chat), (5, 2));
        assert_eq!(chat.unread_total(), 5);
        // A deleted message after upto no longer counts.
        chat.apply(ServerMsg::Deleted(frame::Deleted {
            room: room("general"),
            id: MsgId::new(24, 0),
            target: MsgId::new(23, 0),
            nick: nick("bob"),
            ts: 24,
        }));
        assert_eq!(badge(&chat), (4, 2));
        // Read on another device up to 21: the server's new counts, and only what follows 21's upto adds.
        let applied = chat.apply(read_state(21, 0, 0, 24));
        assert_eq!(applied.read, Some((room("general"), MsgId::new(21, 0))));
        assert_eq!(badge(&chat), (0, 0));
        // A move behind the one known is stale and changes nothing.
        chat.apply(read_state(20, 9, 9, 20));
        assert_eq!(badge(&chat), (0, 0));
        chat.apply(ServerMsg::Message(msg("general", 30, "ann", "new")));
        assert_eq!(badge(&chat), (1, 0));
        assert_eq!(general(&chat).first_unread(), Some(MsgId::new(30, 0)));
        // Read further here than the server has confirmed: nothing counts up to there at once.
        chat.want_read(&room("general"), MsgId::new(30, 0));
        assert_eq!(badge(&chat), (0, 0));
    }

    #[test]
    fn a_lost_history_forgets_the_read_position_of_the_old_one() {
        let mut chat = chat();
        chat.view(None);
        chat.apply(joined_read(
            vec![msg("general", 50, "ann", "old")],
            50,
            0,
            0,
            50,
        ));
        // Redis lost the room: the new epoch's ids start low again.
        chat.apply(ServerMsg::Gap(frame::Gap {
            room: room("general"),
            epoch: "e2".into(),
            reset: true,
        }));
        chat.apply(ServerMsg::Message(msg("general", 3, "ann", "new")));
        assert_eq!(badge(&chat), (1, 0));
        chat.disconnected();
        chat.apply(joined_in(
            "e3",
            true,
            false,
            "general",
            vec![msg("general", 2, "ann", "newer")],
        ));
        assert_eq!(badge(&chat), (0, 0), "the new history's past is not news");
        chat.apply(ServerMsg::Message(msg("general", 4, "ann", "after")));
        assert_eq!(badge(&chat), (1, 0));
    }

    #[test]
    fn a_reload_opens_the_room_on_screen_at_the_read_position() {
        let mut chat = chat();
        chat.apply(joined_read(
            vec![
                msg("general", 10, "ann", "read"),
                msg("general", 20, "ann", "not yet"),
            ],
            10,
            1,
            0,
            20,
        ));
        assert_eq!(general(&chat).first_unread(), Some(MsgId::new(20, 0)));
        // Read there; a reconnect while on screen leaves the divider alone.
        chat.want_read(&room("general"), MsgId::new(20, 0));
        chat.disconnected();
        chat.apply(joined_read(
            vec![msg("general", 30, "ann", "new")],
            20,
            0,
            0,
            20,
        ));
        assert_eq!(general(&chat).first_unread(), Some(MsgId::new(20, 0)));
    }

    #[test]
    fn without_a_read_position_only_what_arrives_after_the_first_history_counts() {
        let mut chat = chat();
        chat.view(None);
        chat.apply(joined("general", vec![msg("general", 1, "ann", "old")]));
        assert_eq!(badge(&chat), (0, 0), "the past is not news");
        chat.apply(ServerMsg::Message(msg("general", 2, "ann", "new")));
        assert_eq!(badge(&chat), (1, 0));
        // A rejoin that still has no position keeps counting from there.
        chat.disconnected();
        chat.apply(joined("general", vec![msg("general", 3, "ann", "missed")]));
        assert_eq!(badge(&chat), (2, 0));
    }

    #[test]
    fn reads_are_coalesced_sent_only_ahead_and_again_after_a_reconnect() {
        let mut chat = chat();
        let g = room("general");
        chat.apply(joined_read(
            vec![msg("general", 10, "ann", "a")],
            10,
            0,
            0,
            10,
        ));
        chat.want_read(&g, MsgId::new(10, 0));
        assert_eq!(
            chat.reads(1_000),
            (vec![], None),
            "not ahead of the server's position"
        );
        chat.want_read(&g, MsgId::new(11, 0));
        let read = |id| ClientMsg::Read {
            room: "general".into(),
            id: MsgId::new(id, 0),
        };
        assert_eq!(chat.reads(1_000), (vec![read(11)], None));
        chat.want_read(&g, MsgId::new(12, 0));
        chat.want_read(&g, MsgId::new(13, 0));
        chat.want_read(&g, MsgId::new(12, 0));
        assert_eq!(
            chat.reads(1_100),
            (vec![], Some(150)),
            "at most one per 250 ms"
        );
        assert_eq!(
            chat.reads(1_250),
            (vec![read(13)], None),
            "the newest, once"
        );
        assert_eq!(chat.reads(2_000), (vec![], None));
        // The connection dropped before the server answered: the rejoin's position is behind, so it goes again.
        chat.disconnected();
        assert_eq!(chat.reads(3_000), (vec![], None), "not while joining");
        chat.apply(joined_read(vec![], 11, 0, 0, 13));
        assert_eq!(chat.reads(3_000), (vec![read(13)], None));
        chat.apply(read_state(13, 0, 0, 13));
        chat.disconnected();
        chat.apply(joined_read(vec![], 13, 0, 0, 13));
        assert_eq!(chat.reads(4_000), (vec![], None), "the server has it");
    }

    #[test]
    fn a_mention_already_read_elsewhere_raises_no_notification() {
        let mut chat = chat();
        chat.apply(joined_read(vec![], 1, 0, 0, 1));
        chat.set_hidden(true);
        // Read up to 3 on the phone before this page got message 3.
        chat.apply(read_state(3, 0, 0, 3));
        let mention = |id| ServerMsg::Message(msg("general", id, "ann", "@me look"));
        assert!(chat.apply(mention(3)).mentions.is_empty());
        assert_eq!(chat.apply(mention(4)).mentions.len(), 1);
    }

    fn seen(nick_: &str, id: u64) -> ServerMsg {
        ServerMsg::Seen(frame::Seen {
            room: room("general"),
            nick: nick(nick_),
            id: MsgId::new(id, 0),
        })
    }

    fn seen_lines(chat: &Chat) -> Vec<(u64, Vec<String>)> {
        let mut lines: Vec<(u64, Vec<String>)> = general(chat)
            .seen_by()
            .into_iter()
            .map(|(id, who)| (id.ms, who.iter().map(ToString::to_string).collect()))
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn receipts_go_under_the_newest_loaded_message_each_member_read() {
        let mut chat = chat();
        let ServerMsg::Joined(mut j) = joined(
            "general",
            vec![
                msg("general", 10, "me", "a"),
                msg("general", 20, "ann", "b"),
                msg("general", 30, "me", "c"),
            ],
        ) else {
            unreachable!()
        };
        j.receipts = true;
        j.seen = vec![
            frame::SeenAt {
                nick: nick("bob"),
                id: MsgId::new(25, 0),
            },
            frame::SeenAt {
                nick: nick("me"),
                id: MsgId::new(30, 0),
            },
            frame::SeenAt {
                nick: nick("old"),
                id: MsgId::new(5, 0),
            },
        ];
        chat.apply(ServerMsg::Joined(j));
        // bob read up to 25, an event after message 20: under 20. Never myself; nothing older than what is loaded.
        assert_eq!(seen_lines(&chat), [(20, vec!["bob".to_owned()])]);
        chat.apply(seen("ann", 30));
        chat.apply(seen("bob", 30));
        chat.apply(seen("bob", 20)); // crossed on the way: the newest stays
        assert_eq!(
            seen_lines(&chat),
            [(30, vec!["bob".to_owned(), "ann".to_owned()])]
        );
        // Turned off: gone, and later moves are not shown.
        chat.apply(ServerMsg::Moderation(ModerationEvent {
            room: room("general"),
            id: MsgId::new(40, 0),
            by: nick("mod"),
            action: ModerationAction::Receipts,
            nick: None,
            secs: 0,
            ts: 40,
        }));
        chat.apply(seen("carl", 30));
        assert!(!general(&chat).receipts());
        assert!(seen_lines(&chat).is_empty());
    }

    #[test]
    fn a_search_pages_back_and_drops_late_answers() {
        let mut chat = chat();
        let first = chat.start_search("  deploy ").unwrap();
        let ClientMsg::Search {
            query,
            before: None,
            req: Some(req1),
            ..
        } = first
        else {
            panic!("{first:?}")
        };
        assert_eq!(query, "deploy");
        let found = |id| frame::Found {
            message: msg("general", id, "ann", "deploy"),
            marks: vec![(0, 6)],
        };
        let page = |req: &str, ids: &[u64], complete| {
            ServerMsg::SearchResults(frame::SearchResults {
                query: "deploy".into(),
                results: ids.iter().map(|&id| found(id)).collect(),
                complete,
                req: Some(req.into()),
            })
        };
        assert!(chat.more_results().is_none(), "one request at a time");
        chat.apply(page(&req1, &[9, 8], false));
        let more = chat.more_results().unwrap();
        let ClientMsg::Search {
            before: Some(before),
            req: Some(req2),
            ..
        } = more
        else {
            panic!("{more:?}")
        };
        assert_eq!(before, MsgId::new(8, 0));
        chat.apply(page(&req1, &[1], true)); // a late duplicate of the first answer
        chat.apply(page(&req2, &[7], true));
        let s = chat.search().unwrap();
        assert_eq!(
            s.results
                .iter()
                .map(|f| f.message.id.ms)
                .collect::<Vec<_>>(),
            [9, 8, 7]
        );
        assert!(s.complete && !s.loading);
        assert!(chat.more_results().is_none());

        // Refused: the archive is missing, said in words.
        let ClientMsg::Search {
            req: Some(req3), ..
        } = chat.start_search("x y").unwrap()
        else {
            unreachable!()
        };
        chat.apply(ServerMsg::Error(frame::Error {
            code: ErrorCode::NoArchive,
            message: "no archive".into(),
            request: Some("search".into()),
            req: Some(req3),
            room: None,
            until: None,
        }));
        assert!(
            chat.search()
                .unwrap()
                .error
                .as_deref()
                .unwrap()
                .contains("archive")
        );
        assert!(chat.start_search("   ").is_none(), "nothing to search");
        assert!(chat.search().unwrap().error.is_some());
    }
}
