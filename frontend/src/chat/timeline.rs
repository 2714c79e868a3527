//! A room's timeline: stored messages deduplicated by message id, older pages put on top, presence lines and client
//! notices, and where the "New messages" divider goes.

use shared::{ChatMessage, MsgId, Nick, PresenceKind, Quote, Reaction};

/// Most items kept per room; older ones scroll off so a long-open tab does not grow without bound.
pub const TIMELINE_CAP: usize = 1000;

/// The notice shown where a room's history has a hole this client cannot fill.
pub const GAP_NOTICE: &str = "Some earlier messages are no longer available.";

/// Messages asked for per `history` request.
pub const OLDER_PAGE: usize = 50;

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
    /// The message this one answers, quoted as it was then.
    pub reply_to: Option<Quote>,
    /// When the text was last edited.
    pub edited_at: Option<u64>,
    /// Deleted: a tombstone, its text gone.
    pub deleted: bool,
    /// Reactions with their counts, in the order they first appeared; none with a count of 0.
    pub reactions: Vec<Reaction>,
    /// Counts the changes applied since it arrived, so the view can tell a changed message from an unchanged one.
    pub rev: u32,
}

impl Posted {
    /// A stored message as it arrived, with its current state (history carries edits, deletion and reactions).
    pub(super) fn from_message(m: ChatMessage, own: bool) -> Self {
        Self {
            id: m.id,
            own,
            acked: false,
            nick: m.nick,
            text: m.text,
            ts: m.ts,
            reply_to: m.reply_to,
            edited_at: m.edited_at,
            deleted: m.deleted,
            reactions: m.reactions,
            rev: 0,
        }
    }
}

/// A moderator's action as a line in the timeline ("mod muted troll for 10 min"). Stored by the server, so it
/// has an id, which keeps a replayed one from showing twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModLine {
    /// The event's id.
    pub id: MsgId,
    /// What happened, in words.
    pub text: String,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// An action on a message already on the timeline, as the server announced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change<'a> {
    /// New text, edited at this time.
    Edited(&'a str, u64),
    /// Deleted.
    Deleted,
    /// This emoji's count is now `count`; `mine` is `Some(on)` when the reacting nick is this client's.
    Reacted {
        emoji: &'a str,
        count: u32,
        mine: Option<bool>,
    },
}

/// One line of a room's timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A chat message.
    Message(Posted),
    /// Someone joined, left or took another nick.
    Presence(PresenceLine),
    /// A moderator acted.
    Moderation(ModLine),
    /// A note from the client itself, such as [`GAP_NOTICE`] where history was lost. It has no server time; it
    /// sits where the client learned of it.
    Notice {
        /// Stable key for the view, unique within this [`Chat`](super::Chat).
        key: u64,
        /// What to tell the person.
        text: String,
    },
}

/// A join, leave or rename in the timeline. Not stored by the server, so it carries a local key instead of an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceLine {
    /// Stable key for the view, unique within this [`Chat`](super::Chat).
    pub key: u64,
    /// Who.
    pub nick: Nick,
    /// Joined, left or renamed.
    pub event: PresenceKind,
    /// For a rename: the nick before.
    pub from: Option<Nick>,
    /// Server time, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// A set of message ids, kept sorted in a vector: a timeline holds at most [`TIMELINE_CAP`], and a B-tree's code
/// costs the page more than the shifting ever costs a person.
#[derive(Debug, Clone, Default)]
struct Ids(Vec<MsgId>);

impl Ids {
    /// Adds `id`; false when it was there.
    fn insert(&mut self, id: MsgId) -> bool {
        match self.0.binary_search(&id) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, id);
                true
            }
        }
    }

    fn contains(&self, id: &MsgId) -> bool {
        self.0.binary_search(id).is_ok()
    }

    /// Forgets every id below `oldest`.
    fn drop_below(&mut self, oldest: MsgId) {
        let below = self.0.partition_point(|id| *id < oldest);
        self.0.drain(..below);
    }
}

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

/// The lines of one room, with what keeps them in order, free of duplicates and bounded.
#[derive(Debug, Clone)]
pub(super) struct Timeline {
    items: Vec<Item>,
    /// The ids of the messages on the timeline (from its oldest message on), so a message arriving twice shows once.
    seen: Ids,
    older: Older,
    /// The first message that arrived while another room was on screen, for the "New messages" divider.
    first_unread: Option<MsgId>,
}

impl Timeline {
    /// An empty timeline that may still have older messages to load.
    pub(super) fn new() -> Self {
        Self {
            items: Vec::new(),
            seen: Ids::default(),
            older: Older::Idle,
            first_unread: None,
        }
    }

    /// Everything on the timeline, oldest first; see [`Room::items`](super::Room::items).
    pub(super) fn items(&self) -> &[Item] {
        &self.items
    }

    /// Scrolling back: whether older messages can be, are being, or cannot be loaded.
    pub(super) fn older(&self) -> Older {
        self.older
    }

    /// The message the "New messages" divider goes before, if any.
    pub(super) fn first_unread(&self) -> Option<MsgId> {
        self.first_unread
    }

    /// An unread message arrived: the divider goes before it, unless it is already above an earlier one.
    pub(super) fn mark_unread(&mut self, id: MsgId) {
        if self.first_unread.is_none() {
            self.first_unread = Some(id);
        }
    }

    /// Everything was read: the divider goes.
    pub(super) fn mark_read(&mut self) {
        self.first_unread = None;
    }

    /// The divider goes before this message (or nowhere).
    pub(super) fn set_unread(&mut self, id: Option<MsgId>) {
        self.first_unread = id;
    }

    /// The oldest message on the timeline.
    fn oldest_message(&self) -> Option<MsgId> {
        self.items.iter().find_map(|item| match item {
            Item::Message(m) => Some(m.id),
            Item::Presence(_) | Item::Moderation(_) | Item::Notice { .. } => None,
        })
    }

    /// Marks older messages as loading and returns the id to ask before, unless a request is already out, the
    /// start was reached, or there is no message to page back from.
    pub(super) fn start_loading_older(&mut self) -> Option<MsgId> {
        if self.older != Older::Idle {
            return None;
        }
        let before = self.oldest_message()?;
        self.older = Older::Loading;
        Some(before)
    }

    /// The connection that carried the `history` request is gone, so its answer will not come: scrolling back may
    /// ask again.
    pub(super) fn drop_older_request(&mut self) {
        if self.older == Older::Loading {
            self.older = Older::Idle;
        }
    }

    /// Puts older messages (oldest first) before everything on the timeline, skipping any already there. Those
    /// sent under `nick` are own.
    pub(super) fn prepend(&mut self, messages: Vec<ChatMessage>, complete: bool, nick: &Nick) {
        let oldest = self.oldest_message();
        let older: Vec<Item> = messages
            .into_iter()
            .filter(|m| oldest.is_none_or(|o| m.id < o) && self.seen.insert(m.id))
            .map(|m| {
                let own = &m.nick == nick;
                Item::Message(Posted::from_message(m, own))
            })
            .collect();
        self.items.splice(0..0, older);
        self.older = if complete {
            Older::Complete
        } else {
            Older::Idle
        };
    }

    /// Adds a stored message unless its id is already in the timeline. Returns whether it was new.
    pub(super) fn insert(&mut self, posted: Posted) -> bool {
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
                Item::Presence(_) | Item::Moderation(_) => {}
            }
        }
        self.items.insert(at, Item::Message(posted));
        self.trim();
        true
    }

    /// Marks the message with `id` as sent from this tab and acknowledged. Returns whether it is on the timeline.
    pub(super) fn mark_acked(&mut self, id: MsgId) -> bool {
        if !self.seen.contains(&id) {
            return false;
        }
        for item in &mut self.items {
            if let Item::Message(m) = item
                && m.id == id
            {
                m.own = true;
                m.acked = true;
            }
        }
        true
    }

    /// The message with `id`, if it is on the timeline.
    pub(super) fn message_mut(&mut self, id: MsgId) -> Option<&mut Posted> {
        if !self.seen.contains(&id) {
            return None;
        }
        self.items.iter_mut().rev().find_map(|item| match item {
            Item::Message(m) if m.id == id => Some(m),
            _ => None,
        })
    }

    /// Applies an action to the message `target`. A message not on the timeline is left to history, which answers
    /// with its current state once it is loaded; one that already shows the change stays as it is. Returns whether
    /// anything changed.
    pub(super) fn change(&mut self, target: MsgId, change: &Change<'_>) -> bool {
        let Some(m) = self.message_mut(target) else {
            return false;
        };
        let before = (m.text.clone(), m.edited_at, m.deleted, m.reactions.clone());
        match *change {
            // A tombstone stays one: its text is gone for good, and it takes no reactions.
            _ if m.deleted => {}
            Change::Edited(text, at) => {
                text.clone_into(&mut m.text);
                m.edited_at = Some(at);
            }
            Change::Deleted => {
                m.deleted = true;
                m.text.clear();
                m.reactions.clear();
            }
            Change::Reacted { emoji, count, mine } => {
                match m.reactions.iter().position(|r| r.emoji == emoji) {
                    Some(at) if count == 0 => {
                        m.reactions.remove(at);
                    }
                    Some(at) => {
                        let r = &mut m.reactions[at];
                        r.count = count;
                        if let Some(mine) = mine {
                            r.mine = mine;
                        }
                    }
                    None if count > 0 => m.reactions.push(Reaction {
                        emoji: emoji.to_owned(),
                        count,
                        mine: mine.unwrap_or(false),
                    }),
                    None => {}
                }
            }
        }
        let changed = before != (m.text.clone(), m.edited_at, m.deleted, m.reactions.clone());
        if changed {
            m.rev += 1;
        }
        changed
    }

    /// Adds a moderation line, unless one with its id is already here (a replay).
    pub(super) fn moderation(&mut self, line: ModLine) {
        let known = self
            .items
            .iter()
            .any(|item| matches!(item, Item::Moderation(m) if m.id == line.id));
        if !known {
            self.push(Item::Moderation(line));
        }
    }

    /// Adds a client notice at the end of the timeline, unless the last item already says the same.
    pub(super) fn notice(&mut self, key: u64, text: &str) {
        if matches!(self.items.last(), Some(Item::Notice { text: last, .. }) if last == text) {
            return;
        }
        self.push(Item::Notice {
            key,
            text: text.to_owned(),
        });
    }

    /// Adds an item at the end of the timeline, as it comes (a presence line, a notice).
    pub(super) fn push(&mut self, item: Item) {
        self.items.push(item);
        self.trim();
    }

    /// Drops the oldest items beyond [`TIMELINE_CAP`], and the ids of the messages among them.
    fn trim(&mut self) {
        let excess = self.items.len().saturating_sub(TIMELINE_CAP);
        if excess == 0 {
            return;
        }
        self.items.drain(..excess);
        if let Some(oldest) = self.oldest_message() {
            self.seen.drop_below(oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use shared::{ChatMessage, MsgId, ServerMsg, frame};

    use super::*;
    use crate::chat::Applied;
    use crate::chat::fixtures::*;

    fn page(messages: Vec<ChatMessage>, complete: bool) -> ServerMsg {
        ServerMsg::HistoryPage(frame::HistoryPage {
            room: room("general"),
            messages,
            complete,
            req: None,
        })
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
        assert_eq!(
            general(&chat).unread().count,
            0,
            "older messages are not news"
        );
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
        assert_eq!(general(&chat).unread().count, 2);
        chat.want_read(&room("general"), MsgId::new(4, 0));
        assert_eq!(general(&chat).unread().count, 0);
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
        chat.queue_send(&room("general"), "reply".into(), None);
        assert_eq!(
            general(&chat).first_unread(),
            None,
            "writing means it was read"
        );
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
            chat.apply(ServerMsg::Pong(frame::Pong { req: None })),
            Applied::default()
        );
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
}
