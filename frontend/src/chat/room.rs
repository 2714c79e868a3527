//! One room as this client sees it: its timeline and outbox, where a rejoin resumes and in which history epoch,
//! the person's read position and the unread counts after it, read receipts, who is typing and who is in it.

use shared::{ChatMessage, MsgId, Nick, PresenceKind, RoomName};

use super::Rejoin;
use super::outbox::{Act, Outbox, Outgoing};
use super::timeline::{Item, Older, Posted, Timeline};

/// How often this client says it is typing, while the message box changes.
pub const TYPING_SEND_EVERY_MS: u64 = 3_000;

/// Whether to tell the room that this client is typing: see [`Chat::typing_due`](super::Chat::typing_due).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypingDue {
    /// Send `typing` now.
    Send,
    /// Nothing to send.
    Skip,
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
    /// A moderator took this client out of the room (kicked or banned), in words. Not joined again by itself.
    Removed(String),
}

/// One room this client is in. [`Chat`](super::Chat) changes it; the components only read it.
#[derive(Debug, Clone)]
pub struct Room {
    pub(super) name: RoomName,
    pub(super) nick: Nick,
    pub(super) phase: Phase,
    pub(super) timeline: Timeline,
    pub(super) outbox: Outbox,
    /// This person's read position as the server last said (read on any device), if it has one.
    pub(super) read: Option<MsgId>,
    /// The server's counts after `read`: unread, mentions, and whether there were more than it counts.
    pub(super) counted: Unread,
    /// The newest event the server's counts looked at; without a server position, where this client started
    /// counting (the newest message of the first history: the room's past is not news).
    pub(super) upto: Option<MsgId>,
    /// The newest message this person has on screen at the bottom of the room while looking at it: read, whether
    /// or not the server has confirmed it yet.
    pub(super) read_wanted: Option<MsgId>,
    /// The last `read` sent on this connection, and when (page clock, ms).
    pub(super) read_sent: Option<(MsgId, u64)>,
    /// Read receipts are on in the room.
    pub(super) receipts: bool,
    /// With receipts on: how far each member has read, the most recent to move first.
    pub(super) seen: Vec<(Nick, MsgId)>,
    pub(super) resume: Option<MsgId>,
    pub(super) epoch: Option<String>,
    pub(super) ever_joined: bool,
    /// Who else is typing, and when their last `typing` arrived (page clock, ms).
    pub(super) typing: Vec<(Nick, u64)>,
    /// When this client last told the room it is typing (page clock, ms).
    pub(super) typed_at: Option<u64>,
    /// A message was sent since: the next `typing` goes as soon as the server takes it, not after the usual wait.
    pub(super) sent_since_typed: bool,
    /// Who is in the room (the first ones the server listed, then kept current by presence), in arrival order.
    pub(super) members: Vec<Nick>,
    /// How many members the room has, also beyond those listed.
    pub(super) online: u32,
    /// This client moderates the room.
    pub(super) moderator: bool,
    /// This nick is muted here until then (wall clock, ms).
    pub(super) muted_until: Option<u64>,
    /// A moderator banned this nick from the room until then (wall clock, ms), as the ban's event or the refused
    /// join said. Only means something while the room is [`Phase::Removed`].
    pub(super) banned_until: Option<u64>,
    /// Slow mode: seconds between one member's messages; 0 when off.
    pub(super) slow_mode: u64,
    /// In slow mode, when this client may send again (wall clock, ms), as the server last said.
    pub(super) slow_until: Option<u64>,
    /// The last few new messages from others that arrived live, as "nick: text", for the screen reader's live region.
    pub(super) live: Vec<(MsgId, String)>,
}

/// A room's badge: messages of others after the read position, those among them that mention this nick, and
/// whether the server stopped counting ([`shared::UNREAD_COUNTED`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unread {
    /// Unread messages.
    pub count: u32,
    /// Of them, the ones that mention this nick.
    pub mentions: u32,
    /// There are more than counted: show "2,000+".
    pub more: bool,
}

/// At most one `read` per room this often (ms): scrolling through a burst moves the position once, not per message.
pub const READ_EVERY_MS: u64 = 250;

/// How many readers "Seen by" names before it counts the rest.
pub const SEEN_NAMED: usize = 3;

/// How many lines the live region keeps: enough to announce a quick exchange, never the whole timeline.
pub const LIVE_LINES: usize = 3;

impl Room {
    /// A room being joined, with nothing on its timeline yet.
    pub(super) fn new(name: RoomName, nick: Nick) -> Self {
        Self {
            name,
            nick,
            phase: Phase::Joining,
            timeline: Timeline::new(),
            outbox: Outbox::default(),
            read: None,
            counted: Unread::default(),
            upto: None,
            read_wanted: None,
            read_sent: None,
            receipts: false,
            seen: Vec::new(),
            resume: None,
            epoch: None,
            ever_joined: false,
            typing: Vec::new(),
            typed_at: None,
            sent_since_typed: false,
            members: Vec::new(),
            online: 0,
            moderator: false,
            muted_until: None,
            banned_until: None,
            slow_mode: 0,
            slow_until: None,
            live: Vec::new(),
        }
    }

    /// Whether this client moderates the room (its token's `roles`).
    pub fn moderator(&self) -> bool {
        self.moderator
    }

    /// Until when this nick is muted here (wall clock, ms), if it is or was.
    pub fn muted_until(&self) -> Option<u64> {
        self.muted_until
    }

    /// Until when (wall clock, ms) a ban keeps this client out of the room, if one does at `wall`. While it does,
    /// joining would be refused, so no join is offered; once it is over, "Join again" is.
    pub fn banned(&self, wall: u64) -> Option<u64> {
        self.banned_until.filter(|u| self.barred() && *u > wall)
    }

    /// A ban took this client out of the room (and said until when): what is written here is refused at once, not
    /// held for a join the server would refuse. The person joins again ("Join again") once the ban is over.
    pub(super) fn barred(&self) -> bool {
        matches!(self.phase, Phase::Removed(_)) && self.banned_until.is_some()
    }

    /// A moderator banned this client from the room (live, or a join refused as `banned`), until `until` if known.
    pub(super) fn ban(&mut self, until: Option<u64>) {
        self.phase = Phase::Removed(format!("You were banned from #{}", self.name));
        self.banned_until = until.or(self.banned_until);
        self.outbox.bar(super::BANNED);
    }

    /// Slow mode: seconds between one member's messages; 0 when off. Moderators are not slowed.
    pub fn slow_mode(&self) -> u64 {
        if self.moderator { 0 } else { self.slow_mode }
    }

    /// The room's slow mode as set (seconds, 0 = off), whoever is looking: what its control shows.
    pub fn slow_mode_set(&self) -> u64 {
        self.slow_mode
    }

    /// In slow mode, when the next message may go (wall clock, ms), if known.
    pub fn slow_until(&self) -> Option<u64> {
        self.slow_until
    }

    /// What the live region says: the last few new messages from others, as "nick: text".
    pub fn live(&self) -> &[(MsgId, String)] {
        &self.live
    }

    /// The last own message that can still be edited (Up arrow in an empty message box).
    pub fn last_own(&self) -> Option<&Posted> {
        self.timeline
            .items()
            .iter()
            .rev()
            .find_map(|item| match item {
                Item::Message(m) if m.nick == self.nick && !m.deleted => Some(m),
                _ => None,
            })
    }

    /// A message on the timeline, by id.
    pub fn message(&self, id: MsgId) -> Option<&Posted> {
        self.timeline.items().iter().find_map(|item| match item {
            Item::Message(m) if m.id == id => Some(m),
            _ => None,
        })
    }

    /// Who is in the room, in the order they arrived (the server lists the first [`shared::MEMBERS_SHOWN`]).
    pub fn members(&self) -> &[Nick] {
        &self.members
    }

    /// How many people are in the room, each nick once, this client included.
    pub fn online(&self) -> u32 {
        self.online
    }

    /// Keeps the member list and count current as people join, leave or change their nick.
    pub(super) fn presence(&mut self, nick: &Nick, event: PresenceKind, from: Option<&Nick>) {
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
        self.timeline.first_unread()
    }

    /// Who wrote here, most recent first, without repeats and without this client: the nicks Tab completes.
    pub fn recent_authors(&self) -> Vec<&str> {
        let mut seen = Vec::new();
        for item in self.timeline.items().iter().rev() {
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
        self.timeline.older()
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
        self.timeline.items()
    }

    /// Own messages not stored yet, in the order they go on the wire (a retried one goes to the end).
    pub fn outbox(&self) -> &[Outgoing] {
        self.outbox.as_slice()
    }

    /// The room's badge. The server counted up to `upto`; every message of others after it that this client has
    /// (and that is not deleted) adds to it, mentions likewise. Once this person reads further here than the
    /// server has confirmed, nothing before that counts any more.
    pub fn unread(&self) -> Unread {
        let (mut unread, from) = match self.read_wanted {
            Some(w) if self.upto.max(self.read).is_none_or(|u| w > u) => {
                (Unread::default(), Some(w))
            }
            _ => (self.counted, self.upto.max(self.read)),
        };
        for item in self.timeline.items().iter().rev() {
            let m = match item {
                Item::Message(m) => m,
                // Nothing to count from (the history was lost and a new one began): only what follows the notice.
                Item::Notice { .. } if from.is_none() => break,
                _ => continue,
            };
            if from.is_some_and(|f| m.id <= f) {
                break;
            }
            if m.nick != self.nick && !m.deleted {
                unread.count += 1;
                if m.text.contains('@') && crate::text::mentions(&m.text, self.nick.as_str()) {
                    unread.mentions += 1;
                }
            }
        }
        unread
    }

    /// Where this person has read to, as far as this client knows: the server's position, or further where this
    /// page has read since; without either, where this client started counting.
    pub fn read_mark(&self) -> Option<MsgId> {
        match self.read.max(self.read_wanted) {
            None => self.upto,
            mark => mark,
        }
    }

    /// Puts the "New messages" divider before the first message of others after the read position (or removes it).
    pub(super) fn place_divider(&mut self) {
        let mark = self.read_mark();
        let first = self.timeline.items().iter().find_map(|item| match item {
            Item::Message(m)
                if m.nick != self.nick && !m.deleted && mark.is_none_or(|r| m.id > r) =>
            {
                Some(m.id)
            }
            _ => None,
        });
        self.timeline.set_unread(first);
    }

    /// The room's history was lost (a new epoch): what was read in it says nothing about the new history's ids.
    pub(super) fn forget_reading(&mut self) {
        self.read = None;
        self.counted = Unread::default();
        self.upto = None;
        self.read_wanted = None;
        self.read_sent = None;
    }

    /// Whether read receipts are on in the room.
    pub fn receipts(&self) -> bool {
        self.receipts
    }

    /// "Seen by …" lines: for each message that is the newest loaded one some member has read up to, who (never this
    /// client's nick), most recent readers first. In no particular order of messages.
    pub fn seen_by(&self) -> Vec<(MsgId, Vec<&Nick>)> {
        if !self.receipts {
            return Vec::new();
        }
        let ids: Vec<MsgId> = self
            .timeline
            .items()
            .iter()
            .filter_map(|item| match item {
                Item::Message(m) => Some(m.id),
                _ => None,
            })
            .collect();
        let mut lines: Vec<(MsgId, Vec<&Nick>)> = Vec::new();
        for (nick, pos) in &self.seen {
            if *nick == self.nick {
                continue;
            }
            // The newest loaded message at or before the position; none when it is older than what is loaded.
            let at = ids.partition_point(|id| id <= pos);
            let Some(id) = at.checked_sub(1).map(|i| ids[i]) else {
                continue;
            };
            match lines.iter_mut().find(|(i, _)| *i == id) {
                Some((_, who)) => who.push(nick),
                None => lines.push((id, vec![nick])),
            }
        }
        lines
    }

    /// A member read up to `id` (receipts): keep each nick's newest, the latest mover first.
    pub(super) fn saw(&mut self, nick: Nick, id: MsgId) {
        if let Some(at) = self.seen.iter().position(|(n, _)| *n == nick) {
            if self.seen[at].1 >= id {
                return;
            }
            self.seen.remove(at);
        }
        self.seen.insert(0, (nick, id));
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

    /// The join that restores this room, without the person: [`Chat`](super::Chat) knows who that is.
    pub(super) fn rejoin(&self) -> Rejoin {
        Rejoin {
            room: self.name.clone(),
            nick: self.nick.clone(),
            person: None,
            since: self.resume,
            // The epoch only qualifies a resume point; without one there is nothing it could say was lost.
            epoch: self.resume.and(self.epoch.clone()),
        }
    }

    /// Adds a delivered message; returns whether it was new to this timeline.
    pub(super) fn deliver(&mut self, msg: ChatMessage, viewing: bool, count_unread: bool) -> bool {
        // Their message is what they were typing.
        self.typing.retain(|(nick, _)| *nick != msg.nick);
        let own = msg.nick == self.nick;
        let id = msg.id;
        let quote = msg.reply_to.clone();
        let new = self.timeline.insert(Posted::from_message(msg, own));
        if !new
            && let Some(m) = self.timeline.message_mut(id)
            && m.reply_to.is_none()
            && quote.is_some()
        {
            // Shown from its ack before it arrived: the server's quote completes it.
            m.reply_to = quote;
            m.rev += 1;
        }
        self.resume = self.resume.max(Some(id));
        if new && !own && !viewing && count_unread && self.read_mark().is_none_or(|r| id > r) {
            self.timeline.mark_unread(id);
        }
        new
    }

    /// The server stored the message sent with `cid` (now, or earlier for a `duplicate` ack) under `id`.
    pub(super) fn ack(&mut self, cid: &str, id: MsgId, ts: u64) {
        let Some(out) = self.outbox.acked(cid) else {
            return;
        };
        let Act::Send { reply_to } = out.act else {
            // An edit, delete or reaction: its event shows the change, to every member alike.
            return;
        };
        if self.slow_mode() > 0 {
            self.slow_until = Some(ts + self.slow_mode * 1000);
        }
        // The message may have overtaken its ack (or come back in the rejoin history before the ack of its
        // resend): then it is already in the timeline, now known to be ours.
        if self.timeline.mark_acked(id) {
            return;
        }
        // The ack came first: show the message now; its delivery will be dropped as a duplicate.
        // The quote as the server makes it, from the message answered as it is now.
        let reply_to = reply_to.and_then(|to| {
            self.message(to).map(|m| shared::Quote {
                id: to,
                nick: m.nick.clone(),
                text: shared::validate::quote(&m.text),
            })
        });
        let nick = self.nick.clone();
        self.timeline.insert(Posted {
            id,
            nick,
            text: out.text,
            ts,
            own: true,
            acked: true,
            reply_to,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            rev: 0,
        });
    }
}

#[cfg(test)]
mod tests {
    use shared::{MsgId, ServerMsg, frame};

    use super::*;
    use crate::chat::fixtures::*;
    use crate::chat::{Chat, GAP_NOTICE, Rejoin};

    fn gap(epoch: &str, reset: bool) -> ServerMsg {
        ServerMsg::Gap(frame::Gap {
            room: room("general"),
            epoch: epoch.into(),
            reset,
        })
    }

    fn notices(chat: &Chat) -> usize {
        general(chat)
            .items()
            .iter()
            .filter(|item| matches!(item, Item::Notice { text, .. } if text == GAP_NOTICE))
            .count()
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
    fn typing_shows_for_a_while_and_ends_with_the_message() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let typing = |who: &str| {
            ServerMsg::Typing(frame::Typing {
                room: room("general"),
                nick: nick(who),
            })
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

        let due = |chat: &mut Chat, name: &str, at| chat.typing_due(&room(name), at);
        assert_eq!(due(&mut chat, "general", 10_000), TypingDue::Send);
        assert_eq!(
            due(&mut chat, "general", 12_000),
            TypingDue::Skip,
            "at most every 3 s"
        );
        assert_eq!(due(&mut chat, "general", 13_000), TypingDue::Send);
        assert_eq!(due(&mut chat, "elsewhere", 20_000), TypingDue::Skip);
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
        chat.apply(ServerMsg::Gap(frame::Gap {
            room: room("elsewhere"),
            epoch: "x".into(),
            reset: true,
        }));
        assert_eq!(notices(&chat), before);
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
    fn the_member_list_follows_joined_and_presence() {
        let mut chat = chat();
        chat.apply(ServerMsg::Joined(frame::Joined {
            room: room("general"),
            nick: nick("me"),
            history: vec![],
            epoch: "e".into(),
            reset: false,
            truncated: false,
            members: vec![nick("ann"), nick("me")],
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
        assert_eq!(chat.room(&room("side")).unwrap().unread().count, 0);

        chat.apply(ServerMsg::Message(msg("side", 3, "ann", "x")));
        chat.apply(ServerMsg::Message(msg("side", 3, "ann", "x")));
        chat.apply(ServerMsg::Message(msg(
            "side",
            4,
            "me",
            "from my other tab",
        )));
        chat.apply(ServerMsg::Message(msg("general", 5, "bob", "seen live")));
        // The page reads what is on screen at the bottom of the room it shows.
        chat.want_read(&room("general"), MsgId::new(5, 0));
        assert_eq!(chat.room(&room("side")).unwrap().unread().count, 1);
        assert_eq!(general(&chat).unread().count, 0);

        // Missed while disconnected: the rejoin history counts.
        chat.disconnected();
        chat.apply(joined("side", vec![msg("side", 6, "bob", "y")]));
        assert_eq!(chat.room(&room("side")).unwrap().unread().count, 2);
        assert_eq!(chat.unread_total(), 2);

        chat.view(Some(room("side")));
        chat.want_read(&room("side"), MsgId::new(6, 0));
        assert_eq!(chat.room(&room("side")).unwrap().unread().count, 0);
        chat.apply(ServerMsg::Message(msg("general", 7, "bob", "z")));
        assert_eq!(general(&chat).unread().count, 1);
        assert_eq!(chat.unread_total(), 1);
    }
}
