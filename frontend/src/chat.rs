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

use std::collections::BTreeSet;
use std::time::Duration;

use shared::{ChatMessage, ClientMsg, ErrorCode, MsgId, Nick, PresenceKind, RoomName, ServerMsg};

/// Most items kept per room; older ones scroll off so a long-open tab does not grow without bound.
pub const TIMELINE_CAP: usize = 1000;

/// The notice shown where a room's history has a hole this client cannot fill.
pub const GAP_NOTICE: &str = "Some earlier messages are no longer available.";

/// How long a room's outbox waits after a `rate_limited` refusal before sending again.
pub const RATE_LIMITED_HOLD: Duration = Duration::from_secs(1);

/// How long a room's outbox waits after an `unavailable` refusal (the store did not answer) before sending again.
pub const UNAVAILABLE_HOLD: Duration = Duration::from_secs(2);

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
        /// Joined, left or renamed.
        event: PresenceKind,
        /// For a rename: the nick before.
        from: Option<Nick>,
        /// Server time, milliseconds since the Unix epoch.
        ts: u64,
    },
    /// A note from the client itself, such as [`GAP_NOTICE`] where history was lost. It has no server time; it
    /// sits where the client learned of it.
    Notice {
        /// Stable key for the view, unique within this [`Chat`].
        key: u64,
        /// What to tell the person.
        text: String,
    },
}

/// Where an own message stands before the server has stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// Waiting for its turn on the wire: typed while offline or while the room was being joined, cut off by a
    /// disconnect before its `ack`, or refused for a moment (rate limit, store unavailable). [`Chat::flush`] sends it
    /// by itself, with its own `cid`, once the room is joined.
    Queued,
    /// On the wire, waiting for the `ack`.
    Pending,
    /// Refused for good (for example invalid text); the person may retry or discard it.
    Failed {
        /// Why, in words for people.
        reason: String,
    },
}

/// An own message not yet in the timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The client message id: fixed for the message's whole life, so every resend and retry is one idempotent
    /// `send` to the server. It changes only after a `cid_reused` refusal, which proves nothing was stored under it.
    pub cid: String,
    /// The text as typed.
    pub text: String,
    /// Queued, pending or failed.
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
    /// A transient refusal holds the outbox back until [`Chat::release_holds`].
    held: bool,
    unread: u32,
    seen: BTreeSet<MsgId>,
    resume: Option<MsgId>,
    epoch: Option<String>,
    ever_joined: bool,
    older: Older,
    /// Who else is typing, and when their last `typing` arrived (page clock, ms).
    typing: Vec<(Nick, u64)>,
    /// When this client last told the room it is typing (page clock, ms).
    typed_at: Option<u64>,
    /// Who is in the room (the first ones the server listed, then kept current by presence), in arrival order.
    members: Vec<Nick>,
    /// How many members the room has, also beyond those listed.
    online: u32,
    /// The first message that arrived while another room was on screen, for the "New messages" divider.
    first_unread: Option<MsgId>,
}

/// How often this client says it is typing, while the message box changes.
pub const TYPING_SEND_EVERY_MS: u64 = 3_000;

/// Scrolling back: whether older messages can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Older {
    /// There may be older messages; none asked for right now.
    Idle,
    /// A `history` request is out.
    Loading,
    /// The server said nothing older is kept: the timeline starts at the room's first kept message.
    Complete,
}

/// Messages asked for per `history` request.
pub const OLDER_PAGE: usize = 50;

impl Room {
    fn new(name: RoomName, nick: Nick) -> Self {
        Self {
            name,
            nick,
            phase: Phase::Joining,
            items: Vec::new(),
            outbox: Vec::new(),
            held: false,
            unread: 0,
            seen: BTreeSet::new(),
            resume: None,
            epoch: None,
            ever_joined: false,
            older: Older::Idle,
            typing: Vec::new(),
            typed_at: None,
            members: Vec::new(),
            online: 0,
            first_unread: None,
        }
    }

    /// Who is in the room, in the order they arrived (the server lists the first [`shared::MEMBERS_SHOWN`]).
    pub fn members(&self) -> &[Nick] {
        &self.members
    }

    /// How many people are in the room, each nick once, this client included.
    pub fn online(&self) -> u32 {
        self.online
    }

    fn presence(&mut self, nick: &Nick, event: PresenceKind, from: Option<&Nick>) {
        match event {
            PresenceKind::Joined => {
                if !self.members.contains(nick) {
                    self.members.push(nick.clone());
                    self.online += 1;
                }
            }
            PresenceKind::Left => {
                if let Some(at) = self.members.iter().position(|m| m == nick) {
                    self.members.remove(at);
                }
                self.online = self.online.saturating_sub(1);
            }
            PresenceKind::Renamed => {
                match from.and_then(|f| self.members.iter().position(|m| m == f)) {
                    Some(at) => self.members[at] = nick.clone(),
                    None if !self.members.contains(nick) => {
                        self.members.push(nick.clone());
                        self.online += 1;
                    }
                    None => {}
                }
                self.typing.retain(|(n, _)| Some(n) != from);
            }
        }
    }

    /// Where the "New messages" divider goes: before this message, the first that arrived while the person was
    /// in another room. It stays while they read the room and goes when they leave it for another, or write.
    pub fn first_unread(&self) -> Option<MsgId> {
        self.first_unread
    }

    /// Who wrote here, most recent first, without repeats and without this client: the nicks Tab completes.
    pub fn recent_authors(&self) -> Vec<&str> {
        let mut seen = Vec::new();
        for item in self.items.iter().rev() {
            if let Item::Message(m) = item
                && m.nick != self.nick
                && !seen.contains(&m.nick.as_str())
            {
                seen.push(m.nick.as_str());
            }
        }
        seen
    }

    /// Who else is typing at `now` (page clock, ms), in the order they started.
    pub fn typists(&self, now: u64) -> Vec<&Nick> {
        self.typing
            .iter()
            .filter(|(nick, at)| *nick != self.nick && now < at + shared::TYPING_SHOWN_MS)
            .map(|(nick, _)| nick)
            .collect()
    }

    /// Whether older messages can be, are being, or cannot be loaded.
    pub fn older(&self) -> Older {
        self.older
    }

    /// The oldest message on the timeline.
    fn oldest_message(&self) -> Option<MsgId> {
        self.items.iter().find_map(|item| match item {
            Item::Message(m) => Some(m.id),
            Item::Presence { .. } | Item::Notice { .. } => None,
        })
    }

    /// Puts older messages (oldest first) before everything on the timeline, skipping any already there.
    fn prepend(&mut self, messages: Vec<ChatMessage>, complete: bool) {
        let oldest = self.oldest_message();
        let older: Vec<Item> = messages
            .into_iter()
            .filter(|m| oldest.is_none_or(|o| m.id < o) && self.seen.insert(m.id))
            .map(|m| {
                Item::Message(Posted {
                    id: m.id,
                    own: m.nick == self.nick,
                    acked: false,
                    nick: m.nick,
                    text: m.text,
                    ts: m.ts,
                })
            })
            .collect();
        self.items.splice(0..0, older);
        self.older = if complete {
            Older::Complete
        } else {
            Older::Idle
        };
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

    /// Stored messages, presence notices and client notices, oldest first, messages in id order.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// Own messages not stored yet, in the order they go on the wire (a retried one goes to the end).
    pub fn outbox(&self) -> &[Outgoing] {
        &self.outbox
    }

    /// Messages from others that arrived while another room was being viewed.
    pub fn unread(&self) -> u32 {
        self.unread
    }

    /// The last message id delivered in this room: the `since` of the next join, so a rejoin fetches exactly what
    /// was missed. Acks do not move it: a message stored before ours may still be on its way. Cleared when the
    /// server says the history it belonged to was lost, so no stale `since` is sent.
    pub fn resume_point(&self) -> Option<MsgId> {
        self.resume
    }

    /// The room's history epoch as the server last named it (in `joined` or `gap`): the history the resume point
    /// belongs to, sent back with it so the server can tell when that history was lost.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    fn rejoin(&self) -> Rejoin {
        Rejoin {
            room: self.name.clone(),
            nick: self.nick.clone(),
            person: None,
            since: self.resume,
            // The epoch only qualifies a resume point; without one there is nothing it could say was lost.
            epoch: self.resume.and(self.epoch.clone()),
        }
    }

    /// Adds a stored message unless its id is already in the timeline. Returns whether it was new.
    fn insert(&mut self, posted: Posted) -> bool {
        if !self.seen.insert(posted.id) {
            return false;
        }
        // Messages arrive in id order almost always, so this is nearly always a push. The exception is an `ack`
        // overtaking a message stored just before ours; that one then slots in by id, looking back from the end.
        // A client notice is a barrier: what arrives after the client learned of a gap (or of a new history, whose
        // ids need not be above the old ones) stays after it.
        let mut at = self.items.len();
        for (i, item) in self.items.iter().enumerate().rev() {
            match item {
                Item::Message(m) if m.id > posted.id => at = i,
                Item::Message(_) | Item::Notice { .. } => break,
                Item::Presence { .. } => {}
            }
        }
        self.items.insert(at, Item::Message(posted));
        self.trim();
        true
    }

    /// Adds a client notice at the end of the timeline, unless the last item already says the same.
    fn notice(&mut self, key: u64, text: &str) {
        if matches!(self.items.last(), Some(Item::Notice { text: last, .. }) if last == text) {
            return;
        }
        self.items.push(Item::Notice {
            key,
            text: text.to_owned(),
        });
        self.trim();
    }

    fn trim(&mut self) {
        let excess = self.items.len().saturating_sub(TIMELINE_CAP);
        if excess == 0 {
            return;
        }
        self.items.drain(..excess);
        let oldest = self.items.iter().find_map(|item| match item {
            Item::Message(m) => Some(m.id),
            Item::Presence { .. } | Item::Notice { .. } => None,
        });
        if let Some(oldest) = oldest {
            self.seen = self.seen.split_off(&oldest);
        }
    }

    /// Adds a delivered message; returns whether it was new to this timeline.
    fn deliver(&mut self, msg: ChatMessage, viewing: bool, count_unread: bool) -> bool {
        // Their message is what they were typing.
        self.typing.retain(|(nick, _)| *nick != msg.nick);
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
            if self.first_unread.is_none() {
                self.first_unread = Some(id);
            }
        }
        new
    }

    /// The server stored the message sent with `cid` (now, or earlier for a `duplicate` ack) under `id`.
    fn ack(&mut self, cid: &str, id: MsgId, ts: u64) {
        let Some(at) = self.outbox.iter().position(|out| out.cid == cid) else {
            return;
        };
        let out = self.outbox.remove(at);
        if self.seen.contains(&id) {
            // The message overtook its ack (or came back in the rejoin history before the ack of its resend): it is
            // already in the timeline, now known to be ours.
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
}

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
            room.first_unread = None;
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
        if room.older != Older::Idle || room.phase != Phase::Joined {
            return None;
        }
        let before = room.oldest_message()?;
        room.older = Older::Loading;
        Some(before)
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
        room.first_unread = None;
        room.outbox.push(Outgoing {
            cid: cid.clone(),
            text,
            status: SendStatus::Queued,
        });
        Some(cid)
    }

    /// Queues a failed message again, under the same client message id, at the end of the outbox; the next
    /// [`Chat::flush`] sends it. Returns whether there was such a failed message.
    pub fn retry(&mut self, room: &RoomName, cid: &str) -> bool {
        let Some(room) = self.room_mut(room) else {
            return false;
        };
        let Some(at) = room
            .outbox
            .iter()
            .position(|out| out.cid == cid && matches!(out.status, SendStatus::Failed { .. }))
        else {
            return false;
        };
        let mut out = room.outbox.remove(at);
        out.status = SendStatus::Queued;
        room.outbox.push(out);
        true
    }

    /// Queues every failed message of the room again, in the order they were written, each under its own client
    /// message id. Returns how many.
    pub fn retry_all(&mut self, room: &RoomName) -> usize {
        let Some(room) = self.room_mut(room) else {
            return 0;
        };
        let (mut failed, rest): (Vec<Outgoing>, Vec<Outgoing>) = std::mem::take(&mut room.outbox)
            .into_iter()
            .partition(|out| matches!(out.status, SendStatus::Failed { .. }));
        room.outbox = rest;
        let count = failed.len();
        for out in &mut failed {
            out.status = SendStatus::Queued;
        }
        room.outbox.extend(failed);
        count
    }

    /// Drops every failed message of the room (the ones still on their way stay).
    pub fn discard_failed(&mut self, room: &RoomName) {
        if let Some(room) = self.room_mut(room) {
            room.outbox
                .retain(|out| !matches!(out.status, SendStatus::Failed { .. }));
        }
    }

    /// Drops a message the person no longer wants to send.
    pub fn discard(&mut self, room: &RoomName, cid: &str) {
        if let Some(room) = self.room_mut(room) {
            room.outbox.retain(|out| out.cid != cid);
        }
    }

    /// The sends that are due: every queued message of every joined room whose outbox is not on hold, in outbox
    /// order, each with its own `cid`. They are marked pending, so each is returned once per attempt.
    pub fn flush(&mut self) -> Vec<ClientMsg> {
        let mut sends = Vec::new();
        for room in &mut self.rooms {
            if room.phase != Phase::Joined || room.held {
                continue;
            }
            for out in &mut room.outbox {
                if out.status == SendStatus::Queued {
                    out.status = SendStatus::Pending;
                    sends.push(ClientMsg::Send {
                        room: room.name.to_string(),
                        text: out.text.clone(),
                        cid: out.cid.clone(),
                    });
                }
            }
        }
        sends
    }

    /// Ends every hold a transient refusal started, so the next [`Chat::flush`] sends those messages again.
    pub fn release_holds(&mut self) {
        for room in &mut self.rooms {
            room.held = false;
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
            room.held = false;
            for out in &mut room.outbox {
                if out.status == SendStatus::Pending {
                    out.status = SendStatus::Queued;
                }
            }
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
            } => self.room_mut(&room)?.prepend(messages, complete),
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
                if room.older == Older::Loading {
                    // Asked on a connection that is gone: the answer will not come.
                    room.older = Older::Idle;
                }
                if reset {
                    // The resume point names a history that is gone; the new one starts from this history.
                    room.resume = None;
                }
                if reset || truncated {
                    room.notice(key, GAP_NOTICE);
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
                room.items.push(Item::Presence {
                    key,
                    nick: p.nick,
                    event: p.event,
                    from: p.from,
                    ts: p.ts,
                });
                room.trim();
            }
            ServerMsg::Gap { room, epoch, reset } => {
                let key = self.next_key();
                let room = self.room_mut(&room)?;
                room.epoch = Some(epoch);
                if reset {
                    // The next messages come from the new history; an old resume point would hide them.
                    room.resume = None;
                }
                room.notice(key, GAP_NOTICE);
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
        let hold = match code {
            ErrorCode::RateLimited => Some(RATE_LIMITED_HOLD),
            ErrorCode::Unavailable => Some(UNAVAILABLE_HOLD),
            _ => None,
        };
        // Nothing was stored under a reused cid, so a fresh one is safe, and the only way a retry can succeed.
        let fresh = (code == ErrorCode::CidReused).then(|| self.fresh_cid());
        let room = self
            .rooms
            .iter_mut()
            .find(|room| room.outbox.iter().any(|out| out.cid == cid))?;
        let out = room.outbox.iter_mut().find(|out| out.cid == cid)?;
        if let Some(hold) = hold {
            out.status = SendStatus::Queued;
            let started = !room.held;
            room.held = true;
            return Some(started.then_some(hold));
        }
        out.status = SendStatus::Failed {
            reason: reason.to_owned(),
        };
        if let Some(fresh) = fresh {
            out.cid = fresh;
        }
        Some(None)
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
    use super::*;
    use shared::PresenceEvent;

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
        joined_in("e1", false, false, room_name, history)
    }

    fn joined_in(
        epoch: &str,
        reset: bool,
        truncated: bool,
        room_name: &str,
        history: Vec<ChatMessage>,
    ) -> ServerMsg {
        ServerMsg::Joined {
            room: room(room_name),
            nick: nick("me"),
            history,
            epoch: epoch.into(),
            reset,
            truncated,
            members: vec![nick("me")],
            online: 1,
            req: None,
        }
    }

    fn ack(room_name: &str, cid: &str, ms: u64) -> ServerMsg {
        ServerMsg::Ack {
            room: room(room_name),
            cid: cid.into(),
            id: MsgId::new(ms, 0),
            ts: ms,
            duplicate: false,
        }
    }

    fn duplicate_ack(room_name: &str, cid: &str, ms: u64) -> ServerMsg {
        ServerMsg::Ack {
            room: room(room_name),
            cid: cid.into(),
            id: MsgId::new(ms, 0),
            ts: ms,
            duplicate: true,
        }
    }

    fn send_error(cid: &str, code: ErrorCode, message: &str) -> ServerMsg {
        ServerMsg::Error {
            code,
            message: message.into(),
            request: Some("send".into()),
            req: Some(cid.into()),
            room: Some("general".into()),
        }
    }

    fn gap(epoch: &str, reset: bool) -> ServerMsg {
        ServerMsg::Gap {
            room: room("general"),
            epoch: epoch.into(),
            reset,
        }
    }

    /// A chat in room `general` as `me`, looking at it.
    fn chat() -> Chat {
        let mut chat = Chat::new("t");
        chat.open(room("general"), nick("me"));
        chat.view(Some(room("general")));
        chat
    }

    fn general(chat: &Chat) -> &Room {
        chat.room(&room("general")).unwrap()
    }

    fn messages(chat: &Chat, name: &str) -> Vec<(u64, String, bool, bool)> {
        chat.room(&room(name))
            .unwrap()
            .items()
            .iter()
            .filter_map(|item| match item {
                Item::Message(m) => Some((m.id.ms, m.text.clone(), m.own, m.acked)),
                Item::Presence { .. } | Item::Notice { .. } => None,
            })
            .collect()
    }

    fn ids(chat: &Chat, name: &str) -> Vec<u64> {
        messages(chat, name).into_iter().map(|m| m.0).collect()
    }

    fn page(messages: Vec<ChatMessage>, complete: bool) -> ServerMsg {
        ServerMsg::HistoryPage {
            room: room("general"),
            messages,
            complete,
            req: None,
        }
    }

    #[test]
    fn scrolling_back_prepends_older_pages_once_until_the_start() {
        let mut chat = chat();
        assert_eq!(
            chat.start_loading_older(&room("general")),
            None,
            "not joined yet"
        );
        chat.apply(joined(
            "general",
            vec![
                msg("general", 30, "bob", "c"),
                msg("general", 40, "me", "d"),
            ],
        ));
        assert_eq!(
            chat.start_loading_older(&room("general")),
            Some(MsgId::new(30, 0))
        );
        assert_eq!(
            chat.start_loading_older(&room("general")),
            None,
            "one request at a time"
        );
        assert_eq!(general(&chat).older(), Older::Loading);
        // A page may overlap what is shown (a message that arrived twice): it shows once.
        chat.apply(page(
            vec![
                msg("general", 20, "bob", "b"),
                msg("general", 30, "bob", "c"),
            ],
            false,
        ));
        assert_eq!(ids(&chat, "general"), [20, 30, 40]);
        assert_eq!(general(&chat).older(), Older::Idle);
        assert_eq!(
            chat.start_loading_older(&room("general")),
            Some(MsgId::new(20, 0))
        );
        chat.apply(page(vec![msg("general", 10, "me", "a")], true));
        assert_eq!(ids(&chat, "general"), [10, 20, 30, 40]);
        assert!(messages(&chat, "general")[0].2, "own messages stay own");
        assert_eq!(general(&chat).older(), Older::Complete);
        assert_eq!(
            chat.start_loading_older(&room("general")),
            None,
            "the start was reached"
        );
        assert_eq!(general(&chat).unread(), 0, "older messages are not news");
    }

    #[test]
    fn a_lost_history_request_is_asked_again_after_a_rejoin() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 30, "bob", "c")]));
        assert!(chat.start_loading_older(&room("general")).is_some());
        chat.apply(joined("general", vec![]));
        assert_eq!(
            chat.start_loading_older(&room("general")),
            Some(MsgId::new(30, 0))
        );
    }

    #[test]
    fn typing_shows_for_a_while_and_ends_with_the_message() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let typing = |who: &str| ServerMsg::Typing {
            room: room("general"),
            nick: nick(who),
        };
        chat.set_now(1_000);
        chat.apply(typing("bob"));
        chat.set_now(2_000);
        chat.apply(typing("carol"));
        chat.apply(typing("me"));
        let names = |chat: &Chat, now: u64| -> Vec<String> {
            general(chat)
                .typists(now)
                .iter()
                .map(|n| n.to_string())
                .collect()
        };
        assert_eq!(names(&chat, 2_000), ["bob", "carol"], "never myself");
        assert_eq!(names(&chat, 6_500), ["carol"], "bob's expired");
        chat.apply(ServerMsg::Message(msg("general", 10, "carol", "hi")));
        assert!(
            names(&chat, 6_500).is_empty(),
            "carol's message ends her typing"
        );

        assert!(chat.typing_due(&room("general"), 10_000));
        assert!(
            !chat.typing_due(&room("general"), 12_000),
            "at most every 3 s"
        );
        assert!(chat.typing_due(&room("general"), 13_000));
        assert!(!chat.typing_due(&room("elsewhere"), 20_000));
    }

    #[test]
    fn recent_authors_come_latest_first_without_me() {
        let mut chat = chat();
        chat.apply(joined(
            "general",
            vec![
                msg("general", 1, "alice", "a"),
                msg("general", 2, "bob", "b"),
                msg("general", 3, "me", "c"),
                msg("general", 4, "alice", "d"),
            ],
        ));
        assert_eq!(general(&chat).recent_authors(), ["alice", "bob"]);
    }

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
    fn the_new_messages_divider_marks_where_reading_stopped() {
        let mut chat = chat();
        chat.open(room("other"), nick("me"));
        chat.apply(joined("general", vec![msg("general", 1, "bob", "old")]));
        chat.view(Some(room("other")));
        chat.apply(ServerMsg::Message(msg("general", 2, "me", "mine")));
        assert_eq!(
            general(&chat).first_unread(),
            None,
            "own messages are not unread"
        );
        chat.apply(ServerMsg::Message(msg("general", 3, "bob", "new 1")));
        chat.apply(ServerMsg::Message(msg("general", 4, "bob", "new 2")));
        assert_eq!(general(&chat).first_unread(), Some(MsgId::new(3, 0)));
        chat.view(Some(room("general")));
        assert_eq!(general(&chat).unread(), 0);
        assert_eq!(
            general(&chat).first_unread(),
            Some(MsgId::new(3, 0)),
            "stays while reading"
        );
        chat.view(Some(room("other")));
        assert_eq!(
            general(&chat).first_unread(),
            None,
            "gone once the person moved on"
        );
        chat.apply(ServerMsg::Message(msg("general", 5, "bob", "new 3")));
        chat.view(Some(room("general")));
        chat.queue_send(&room("general"), "reply".into());
        assert_eq!(
            general(&chat).first_unread(),
            None,
            "writing means it was read"
        );
    }

    fn notices(chat: &Chat) -> usize {
        general(chat)
            .items()
            .iter()
            .filter(|item| matches!(item, Item::Notice { text, .. } if text == GAP_NOTICE))
            .count()
    }

    /// The (cid, text) of each send the flush put on the wire.
    fn sent(sends: &[ClientMsg]) -> Vec<(String, String)> {
        sends
            .iter()
            .map(|send| match send {
                ClientMsg::Send { room, text, cid } => {
                    assert_eq!(room, "general");
                    (cid.clone(), text.clone())
                }
                other => panic!("not a send: {other:?}"),
            })
            .collect()
    }

    fn statuses(chat: &Chat) -> Vec<SendStatus> {
        general(chat)
            .outbox()
            .iter()
            .map(|o| o.status.clone())
            .collect()
    }

    /// Joins `general` and sends one message, returning its cid.
    fn sent_one(chat: &mut Chat, text: &str) -> String {
        let cid = chat.queue_send(&room("general"), text.into()).unwrap();
        assert_eq!(sent(&chat.flush()), [(cid.clone(), text.to_owned())]);
        cid
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
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(4, 0)));
    }

    #[test]
    fn history_too_large_for_joined_continues_as_messages() {
        let mut chat = chat();
        chat.apply(joined(
            "general",
            vec![msg("general", 1, "ann", "a"), msg("general", 2, "bob", "b")],
        ));
        // The rest of the history follows as ordinary frames, possibly overlapping a live one.
        for ms in [3, 4, 4, 5] {
            chat.apply(ServerMsg::Message(msg("general", ms, "ann", "x")));
        }
        assert_eq!(ids(&chat, "general"), [1, 2, 3, 4, 5]);
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(5, 0)));
        assert_eq!(
            chat.apply(ServerMsg::Pong { req: None }),
            Applied::default()
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
        assert_eq!(general(&chat).phase(), &Phase::Joining);
        // A server that resent the boundary message would still not duplicate it.
        chat.apply(joined(
            "general",
            vec![msg("general", 2, "bob", "b"), msg("general", 3, "ann", "c")],
        ));
        assert_eq!(ids(&chat, "general"), [1, 2, 3]);
        assert_eq!(general(&chat).phase(), &Phase::Joined);
        assert_eq!(notices(&chat), 0);
    }

    #[test]
    fn epoch_is_recorded_and_sent_back_with_since() {
        let mut chat = chat();
        chat.open(room("quiet"), nick("me"));
        // Before any `joined` there is nothing to resume from.
        assert!(
            chat.rejoins()
                .iter()
                .all(|r| r.since.is_none() && r.epoch.is_none())
        );
        chat.apply(joined_in(
            "e7",
            false,
            false,
            "general",
            vec![msg("general", 1, "ann", "a")],
        ));
        chat.apply(joined_in("e8", false, false, "quiet", vec![]));
        assert_eq!(general(&chat).epoch(), Some("e7"));
        assert_eq!(chat.room(&room("quiet")).unwrap().epoch(), Some("e8"));
        chat.disconnected();
        let rejoins = chat.rejoins();
        assert_eq!(
            rejoins[0],
            Rejoin {
                room: room("general"),
                nick: nick("me"),
                person: None,
                since: Some(MsgId::new(1, 0)),
                epoch: Some("e7".into()),
            }
        );
        // An epoch without a resume point qualifies nothing, so it is not sent.
        assert_eq!(
            (rejoins[1].since, rejoins[1].epoch.as_deref()),
            (None, None)
        );
        // The retry of a refused join carries them too, and so does a rename.
        assert_eq!(
            chat.rejoining(&room("general")).unwrap().epoch.as_deref(),
            Some("e7")
        );
        assert_eq!(chat.rename(&nick("new"))[0].epoch.as_deref(), Some("e7"));
    }

    #[test]
    fn reset_on_rejoin_drops_the_stale_resume_point_and_says_so() {
        let mut chat = chat();
        chat.apply(joined_in(
            "e1",
            false,
            false,
            "general",
            vec![
                msg("general", 50, "ann", "a"),
                msg("general", 60, "bob", "b"),
            ],
        ));
        chat.disconnected();
        assert_eq!(chat.rejoins()[0].epoch.as_deref(), Some("e1"));
        // The store lost the room; its new history has ids below the old resume point.
        chat.apply(joined_in(
            "e2",
            true,
            false,
            "general",
            vec![msg("general", 10, "ann", "new")],
        ));
        let room = general(&chat);
        assert_eq!(room.epoch(), Some("e2"));
        assert_eq!(room.resume_point(), Some(MsgId::new(10, 0)));
        assert_eq!(notices(&chat), 1);
        // The new history shows after the notice, below the old timeline, whatever its ids.
        assert_eq!(ids(&chat, "general"), [50, 60, 10]);
        assert!(matches!(room.items()[2], Item::Notice { .. }));
        let rejoin = &chat.rejoins()[0];
        assert_eq!(
            (rejoin.since, rejoin.epoch.as_deref()),
            (Some(MsgId::new(10, 0)), Some("e2"))
        );

        // A reset with nothing in the new history leaves no resume point at all.
        chat.disconnected();
        chat.apply(joined_in("e3", true, false, "general", vec![]));
        assert_eq!(general(&chat).resume_point(), None);
        assert_eq!(chat.rejoins()[0].since, None);
        assert_eq!(chat.rejoins()[0].epoch, None);
        assert_eq!(notices(&chat), 2);
        assert!(matches!(
            general(&chat).items().last(),
            Some(Item::Notice { .. })
        ));
    }

    #[test]
    fn truncated_history_adds_the_notice_before_what_is_left() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "ann", "a")]));
        chat.disconnected();
        chat.apply(joined_in(
            "e1",
            false,
            true,
            "general",
            vec![msg("general", 8, "bob", "b"), msg("general", 9, "bob", "c")],
        ));
        let items = general(&chat).items();
        assert!(matches!(items[0], Item::Message(_)));
        assert!(matches!(&items[1], Item::Notice { text, .. } if text == GAP_NOTICE));
        assert_eq!(ids(&chat, "general"), [1, 8, 9]);
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(9, 0)));
        assert_eq!(general(&chat).epoch(), Some("e1"));
    }

    #[test]
    fn gap_updates_the_epoch_and_says_messages_were_lost() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 50, "ann", "a")]));
        // Lost on the way, still the same history: the resume point stays.
        chat.apply(gap("e1", false));
        // The same notice twice in a row is shown once.
        chat.apply(gap("e1", false));
        assert_eq!(notices(&chat), 1);
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(50, 0)));
        chat.apply(ServerMsg::Message(msg("general", 60, "bob", "b")));

        // The whole history was lost: the old resume point is void, the next message sets a new one.
        chat.apply(gap("e2", true));
        assert_eq!(notices(&chat), 2);
        assert_eq!(general(&chat).epoch(), Some("e2"));
        assert_eq!(general(&chat).resume_point(), None);
        assert_eq!(chat.rejoins()[0].since, None);
        chat.apply(ServerMsg::Message(msg("general", 20, "ann", "new")));
        assert_eq!(general(&chat).resume_point(), Some(MsgId::new(20, 0)));
        let rejoin = &chat.rejoins()[0];
        assert_eq!(
            (rejoin.since, rejoin.epoch.as_deref()),
            (Some(MsgId::new(20, 0)), Some("e2"))
        );
        // A gap in a room this client is not in changes nothing.
        let before = notices(&chat);
        chat.apply(ServerMsg::Gap {
            room: room("elsewhere"),
            epoch: "x".into(),
            reset: true,
        });
        assert_eq!(notices(&chat), before);
    }

    #[test]
    fn message_before_ack_is_one_sent_message() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cid = sent_one(&mut chat, "hello");
        assert_eq!(statuses(&chat), [SendStatus::Pending]);
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
        assert!(general(&chat).outbox().is_empty());
    }

    #[test]
    fn ack_before_message_is_one_sent_message() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cid = sent_one(&mut chat, "hello");
        chat.apply(ack("general", &cid, 5));
        assert_eq!(
            messages(&chat, "general"),
            [(5, "hello".into(), true, true)]
        );
        assert!(general(&chat).outbox().is_empty());
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
        let cid = sent_one(&mut chat, "mine");
        // Bob's message 4 was stored before ours (5) but is still queued on the server when our ack arrives.
        chat.apply(ack("general", &cid, 5));
        assert_eq!(chat.rejoins()[0].since, Some(MsgId::new(1, 0)));
        chat.apply(ServerMsg::Message(msg("general", 4, "bob", "b")));
        chat.apply(ServerMsg::Message(msg("general", 5, "me", "mine")));
        assert_eq!(ids(&chat, "general"), [1, 4, 5]);
        assert_eq!(chat.rejoins()[0].since, Some(MsgId::new(5, 0)));
    }

    #[test]
    fn messages_typed_offline_are_queued_then_sent_once_joined() {
        let mut chat = chat();
        let first = chat.queue_send(&room("general"), "one".into()).unwrap();
        let second = chat.queue_send(&room("general"), "two".into()).unwrap();
        assert_eq!(statuses(&chat), [SendStatus::Queued, SendStatus::Queued]);
        // Not joined yet: nothing may go on the wire, or the server would refuse it as not joined.
        assert!(chat.flush().is_empty());
        chat.apply(joined("general", vec![]));
        assert_eq!(
            sent(&chat.flush()),
            [(first.clone(), "one".into()), (second, "two".into())]
        );
        assert_eq!(statuses(&chat), [SendStatus::Pending, SendStatus::Pending]);
        // Each attempt goes out once.
        assert!(chat.flush().is_empty());
        chat.apply(ack("general", &first, 3));
        assert_eq!(messages(&chat, "general"), [(3, "one".into(), true, true)]);
    }

    #[test]
    fn unacked_messages_are_sent_again_after_reconnect_with_the_same_cids_in_order() {
        let mut chat = chat();
        chat.apply(joined("general", vec![msg("general", 1, "ann", "a")]));
        let a = sent_one(&mut chat, "a");
        let b = sent_one(&mut chat, "b");
        let c = sent_one(&mut chat, "c");
        chat.apply(ack("general", &a, 2));
        chat.disconnected();
        assert_eq!(statuses(&chat), [SendStatus::Queued, SendStatus::Queued]);
        let d = chat.queue_send(&room("general"), "d".into()).unwrap();
        assert!(chat.flush().is_empty());

        // `b` was stored before the drop; its ack was lost. The rejoin history brings it back as ours.
        chat.apply(joined("general", vec![msg("general", 4, "me", "b")]));
        assert_eq!(
            sent(&chat.flush()),
            [
                (b.clone(), "b".into()),
                (c.clone(), "c".into()),
                (d.clone(), "d".into())
            ]
        );
        // The server recognises `b` by its cid and answers with the original id; `c` and `d` are stored now.
        chat.apply(duplicate_ack("general", &b, 4));
        chat.apply(ack("general", &c, 6));
        chat.apply(ack("general", &d, 7));
        chat.apply(ServerMsg::Message(msg("general", 6, "me", "c")));
        assert_eq!(
            messages(&chat, "general"),
            [
                (1, "a".into(), false, false),
                (2, "a".into(), true, true),
                (4, "b".into(), true, true),
                (6, "c".into(), true, true),
                (7, "d".into(), true, true),
            ]
        );
        assert!(general(&chat).outbox().is_empty());
    }

    #[test]
    fn a_duplicate_ack_for_a_message_not_in_the_timeline_shows_it_once() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cid = sent_one(&mut chat, "hi");
        chat.disconnected();
        chat.apply(joined("general", vec![]));
        assert_eq!(sent(&chat.flush()), [(cid.clone(), "hi".into())]);
        chat.apply(duplicate_ack("general", &cid, 3));
        chat.apply(duplicate_ack("general", &cid, 3));
        chat.apply(ServerMsg::Message(msg("general", 3, "me", "hi")));
        assert_eq!(messages(&chat, "general"), [(3, "hi".into(), true, true)]);
        assert!(general(&chat).outbox().is_empty());
    }

    #[test]
    fn pending_messages_are_settled_by_cid_never_by_text() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let mine = sent_one(&mut chat, "same words");
        chat.disconnected();
        // The history holds an identical text from this nick in another tab: it is not this tab's message.
        chat.apply(joined(
            "general",
            vec![msg("general", 5, "me", "same words")],
        ));
        assert_eq!(
            messages(&chat, "general"),
            [(5, "same words".into(), true, false)]
        );
        assert_eq!(general(&chat).outbox().len(), 1);
        assert_eq!(sent(&chat.flush()), [(mine.clone(), "same words".into())]);
        // Only its cid settles it; here it was a separate message.
        chat.apply(ack("general", &mine, 6));
        assert_eq!(
            messages(&chat, "general"),
            [
                (5, "same words".into(), true, false),
                (6, "same words".into(), true, true)
            ]
        );
    }

    #[test]
    fn a_definitive_refusal_fails_the_send_and_retry_keeps_its_cid() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let first = sent_one(&mut chat, "one");
        let second = sent_one(&mut chat, "two");
        let applied = chat.apply(send_error(
            &first,
            ErrorCode::InvalidText,
            "text is too long",
        ));
        assert_eq!(applied, Applied::default());
        assert_eq!(
            statuses(&chat),
            [
                SendStatus::Failed {
                    reason: "text is too long".into()
                },
                SendStatus::Pending
            ]
        );
        // A failed message is never sent by itself.
        assert!(chat.flush().is_empty());

        assert!(chat.retry(&room("general"), &first));
        assert!(
            !chat.retry(&room("general"), &first),
            "only failed messages are retried"
        );
        let outbox = general(&chat).outbox().to_vec();
        assert_eq!(
            outbox.iter().map(|o| o.cid.as_str()).collect::<Vec<_>>(),
            [second.as_str(), first.as_str()]
        );
        assert_eq!(sent(&chat.flush()), [(first.clone(), "one".into())]);
        chat.apply(ack("general", &first, 8));
        assert_eq!(messages(&chat, "general"), [(8, "one".into(), true, true)]);

        // Discarding a failed message forgets it.
        let third = sent_one(&mut chat, "three");
        chat.apply(send_error(&third, ErrorCode::NotJoined, "not in that room"));
        chat.discard(&room("general"), &third);
        assert_eq!(general(&chat).outbox().len(), 1);
    }

    #[test]
    fn a_reused_cid_fails_and_its_retry_uses_a_fresh_one() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cid = sent_one(&mut chat, "hi");
        chat.apply(send_error(&cid, ErrorCode::CidReused, "cid already used"));
        let out = general(&chat).outbox()[0].clone();
        assert_eq!(
            out.status,
            SendStatus::Failed {
                reason: "cid already used".into()
            }
        );
        assert_ne!(out.cid, cid);
        assert!(chat.retry(&room("general"), &out.cid));
        assert_eq!(sent(&chat.flush()), [(out.cid, "hi".into())]);
    }

    #[test]
    fn transient_refusals_hold_the_outbox_then_send_again_with_the_same_cids() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let a = sent_one(&mut chat, "a");
        let b = sent_one(&mut chat, "b");
        let applied = chat.apply(send_error(&a, ErrorCode::RateLimited, "slow down"));
        assert_eq!(applied.retry_after, Some(RATE_LIMITED_HOLD));
        assert_eq!(applied.notice, None);
        // A second refusal during the same hold needs no second timer.
        let applied = chat.apply(send_error(&b, ErrorCode::Unavailable, "try again"));
        assert_eq!(applied.retry_after, None);
        assert_eq!(statuses(&chat), [SendStatus::Queued, SendStatus::Queued]);
        // Typed during the hold: waits behind them.
        let c = chat.queue_send(&room("general"), "c".into()).unwrap();
        assert!(chat.flush().is_empty());
        chat.release_holds();
        assert_eq!(
            sent(&chat.flush()),
            [(a.clone(), "a".into()), (b, "b".into()), (c, "c".into())]
        );

        let applied = chat.apply(send_error(&a, ErrorCode::Unavailable, "try again"));
        assert_eq!(applied.retry_after, Some(UNAVAILABLE_HOLD));
        // A reconnect ends the hold: the rejoin is the wait.
        chat.disconnected();
        chat.apply(joined("general", vec![]));
        assert_eq!(sent(&chat.flush()).len(), 3);
    }

    fn presence(nick_: &str, event: PresenceKind, from: Option<&str>) -> ServerMsg {
        ServerMsg::Presence(shared::PresenceEvent {
            room: room("general"),
            nick: nick(nick_),
            event,
            from: from.map(nick),
            ts: 1,
        })
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
    fn retry_all_and_discard_all_act_on_the_failed_messages_only() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cids: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|t| chat.queue_send(&room("general"), (*t).to_string()).unwrap())
            .collect();
        let sent = chat.flush();
        assert_eq!(sent.len(), 3);
        chat.apply(send_error(&cids[0], ErrorCode::InvalidText, "no"));
        chat.apply(send_error(&cids[2], ErrorCode::InvalidText, "no"));
        let statuses = |chat: &Chat| {
            general(chat)
                .outbox()
                .iter()
                .map(|o| {
                    (
                        o.text.clone(),
                        matches!(o.status, SendStatus::Failed { .. }),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            statuses(&chat),
            [("a".into(), true), ("b".into(), false), ("c".into(), true)]
        );
        assert_eq!(chat.retry_all(&room("general")), 2);
        // In the order they were written, same cids: nothing doubles.
        let again: Vec<String> = chat
            .flush()
            .into_iter()
            .map(|m| match m {
                ClientMsg::Send { cid, .. } => cid,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(again, [cids[0].clone(), cids[2].clone()]);
        chat.apply(send_error(&cids[0], ErrorCode::InvalidText, "no"));
        chat.discard_failed(&room("general"));
        assert_eq!(statuses(&chat), [("b".into(), false), ("c".into(), false)]);
    }

    #[test]
    fn the_member_list_follows_joined_and_presence() {
        let mut chat = chat();
        chat.apply(ServerMsg::Joined {
            room: room("general"),
            nick: nick("me"),
            history: vec![],
            epoch: "e".into(),
            reset: false,
            truncated: false,
            members: vec![nick("ann"), nick("me")],
            online: 150,
            req: None,
        });
        let members = |chat: &Chat| {
            let r = general(chat);
            (
                r.members()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
                r.online(),
            )
        };
        assert_eq!(members(&chat), (vec!["ann".into(), "me".into()], 150));
        chat.apply(presence("bob", PresenceKind::Joined, None));
        chat.apply(presence("bob", PresenceKind::Joined, None));
        assert_eq!(
            members(&chat),
            (vec!["ann".into(), "me".into(), "bob".into()], 151)
        );
        chat.apply(presence("robert", PresenceKind::Renamed, Some("bob")));
        assert_eq!(
            members(&chat),
            (vec!["ann".into(), "me".into(), "robert".into()], 151)
        );
        chat.apply(presence("ann", PresenceKind::Left, None));
        // Someone beyond the listed ones left: the count still drops.
        chat.apply(presence("zed", PresenceKind::Left, None));
        assert_eq!(members(&chat), (vec!["me".into(), "robert".into()], 149));
        // A fresh joined replaces whatever was kept.
        chat.apply(joined("general", vec![]));
        assert_eq!(members(&chat), (vec!["me".into()], 1));
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
        assert_eq!(general(&chat).unread(), 0);

        // Missed while disconnected: the rejoin history counts.
        chat.disconnected();
        chat.apply(joined("side", vec![msg("side", 6, "bob", "y")]));
        assert_eq!(chat.room(&room("side")).unwrap().unread(), 2);
        assert_eq!(chat.unread_total(), 2);

        chat.view(Some(room("side")));
        assert_eq!(chat.room(&room("side")).unwrap().unread(), 0);
        chat.apply(ServerMsg::Message(msg("general", 7, "bob", "z")));
        assert_eq!(general(&chat).unread(), 1);
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
            from: None,
            ts: 2,
        }));
        chat.apply(ServerMsg::Message(msg("general", 3, "bob", "hi")));
        let items = general(&chat).items();
        assert!(matches!(
            items[1],
            Item::Presence {
                event: PresenceKind::Joined,
                ..
            }
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
