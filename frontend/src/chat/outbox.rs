//! A room's outbox: own messages and actions (edit, delete, react) the server has not stored yet (queued → pending →
//! acked, or failed), each matched by its client message id (`cid`), never by its text. Actions are stored room
//! events with a `cid` just like messages, so they are resent and deduplicated the same way.

use std::time::Duration;

use shared::{ClientMsg, MsgId, RoomName};

/// How long a room's outbox waits after a `rate_limited` refusal before sending again.
pub const RATE_LIMITED_HOLD: Duration = Duration::from_secs(1);

/// How long a room's outbox waits after an `unavailable` refusal (the store did not answer) before sending again.
pub const UNAVAILABLE_HOLD: Duration = Duration::from_secs(2);

/// Why an own message was not sent: the person is banned from its room.
pub const BANNED: &str = "you are banned from this room";

/// Where an own message stands before the server has stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendStatus {
    /// Waiting for its turn on the wire: typed while offline or while the room was being joined, cut off by a
    /// disconnect before its `ack`, or refused for a moment (rate limit, store unavailable).
    /// [`Chat::flush`](super::Chat::flush) sends it by itself, with its own `cid`, once the room is joined.
    Queued,
    /// On the wire, waiting for the `ack`.
    Pending,
    /// Refused for good (for example invalid text); the person may retry or discard it.
    Failed {
        /// Why, in words for people.
        reason: String,
    },
}

/// What an outbox entry asks the server to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// A new message (the entry's text), perhaps a reply.
    Send {
        /// The message it answers.
        reply_to: Option<MsgId>,
    },
    /// New text (the entry's) for an own message.
    Edit {
        /// The message.
        id: MsgId,
    },
    /// Delete a message.
    Delete {
        /// The message.
        id: MsgId,
    },
    /// Add or take back a reaction.
    React {
        /// The message.
        id: MsgId,
        /// Which one.
        emoji: String,
        /// Add or take back.
        on: bool,
    },
}

/// An own message not yet in the timeline, or an action not yet stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The client message id: fixed for the message's whole life, so every resend and retry is one idempotent
    /// `send` to the server. It changes only after a `cid_reused` refusal, which proves nothing was stored under it.
    pub cid: String,
    /// The text as typed (of a message or an edit; empty for other actions).
    pub text: String,
    /// Queued, pending or failed.
    pub status: SendStatus,
    /// What it asks for.
    pub act: Act,
}

impl Outgoing {
    /// Whether this is a message (shown in the timeline until stored), not an action.
    pub fn is_message(&self) -> bool {
        matches!(self.act, Act::Send { .. })
    }
}

/// One room's own messages not stored yet, in the order they go on the wire.
#[derive(Debug, Clone, Default)]
pub(super) struct Outbox {
    queue: Vec<Outgoing>,
    /// A transient refusal holds the outbox back until [`Chat::release_holds`](super::Chat::release_holds).
    held: bool,
}

impl Outbox {
    /// The messages, in wire order; see [`Room::outbox`](super::Room::outbox).
    pub(super) fn as_slice(&self) -> &[Outgoing] {
        &self.queue
    }

    /// Whether a message here has this client message id.
    pub(super) fn contains(&self, cid: &str) -> bool {
        self.queue.iter().any(|out| out.cid == cid)
    }

    /// Queues a new message or action at the end, under its client message id for life.
    pub(super) fn push(&mut self, cid: String, text: String, act: Act) {
        self.queue.push(Outgoing {
            cid,
            text,
            status: SendStatus::Queued,
            act,
        });
    }

    /// Queues the failed message with `cid` again, at the end. Returns whether there was one.
    pub(super) fn retry(&mut self, cid: &str) -> bool {
        let Some(at) = self
            .queue
            .iter()
            .position(|out| out.cid == cid && matches!(out.status, SendStatus::Failed { .. }))
        else {
            return false;
        };
        let mut out = self.queue.remove(at);
        out.status = SendStatus::Queued;
        self.queue.push(out);
        true
    }

    /// Queues every failed message again, at the end, in the order they were written. Returns how many.
    pub(super) fn retry_all(&mut self) -> usize {
        let (mut failed, rest): (Vec<Outgoing>, Vec<Outgoing>) = std::mem::take(&mut self.queue)
            .into_iter()
            .partition(|out| matches!(out.status, SendStatus::Failed { .. }));
        self.queue = rest;
        let count = failed.len();
        for out in &mut failed {
            out.status = SendStatus::Queued;
        }
        self.queue.extend(failed);
        count
    }

    /// Drops every failed message; the ones still on their way stay.
    pub(super) fn discard_failed(&mut self) {
        self.queue
            .retain(|out| !matches!(out.status, SendStatus::Failed { .. }));
    }

    /// Drops the message with `cid`, whatever its state.
    pub(super) fn discard(&mut self, cid: &str) {
        self.queue.retain(|out| out.cid != cid);
    }

    /// The sends for `room` that are due, unless the outbox is on hold: every queued message, in order, now
    /// marked pending.
    pub(super) fn flush(&mut self, room: &RoomName) -> Vec<ClientMsg> {
        let mut sends = Vec::new();
        if self.held {
            return sends;
        }
        for out in &mut self.queue {
            if out.status == SendStatus::Queued {
                out.status = SendStatus::Pending;
                let (room, cid) = (room.to_string(), out.cid.clone());
                sends.push(match &out.act {
                    Act::Send { reply_to } => ClientMsg::Send {
                        room,
                        text: out.text.clone(),
                        cid,
                        reply_to: *reply_to,
                    },
                    Act::Edit { id } => ClientMsg::Edit {
                        room,
                        id: *id,
                        text: out.text.clone(),
                        cid,
                    },
                    Act::Delete { id } => ClientMsg::Delete { room, id: *id, cid },
                    Act::React { id, emoji, on } => ClientMsg::React {
                        room,
                        id: *id,
                        emoji: emoji.clone(),
                        on: *on,
                        cid,
                    },
                });
            }
        }
        sends
    }

    /// Ends the hold a transient refusal started.
    pub(super) fn release_hold(&mut self) {
        self.held = false;
    }

    /// The connection dropped: every pending message goes back to the queue, in place, to be sent again with the
    /// same `cid`, and the hold ends.
    pub(super) fn connection_lost(&mut self) {
        self.held = false;
        for out in &mut self.queue {
            if out.status == SendStatus::Pending {
                out.status = SendStatus::Queued;
            }
        }
    }

    /// Nothing here can be sent, for `reason` (a ban): every message fails (the person may retry it once back in the
    /// room, or discard it) and every action is dropped, so nothing waits for a room the person cannot be in.
    pub(super) fn bar(&mut self, reason: &str) {
        self.queue.retain(Outgoing::is_message);
        for out in &mut self.queue {
            out.status = SendStatus::Failed {
                reason: reason.to_owned(),
            };
        }
    }

    /// The server stored the message sent with `cid`: it leaves the outbox, and is returned, if it was here.
    pub(super) fn acked(&mut self, cid: &str) -> Option<Outgoing> {
        let at = self.queue.iter().position(|out| out.cid == cid)?;
        Some(self.queue.remove(at))
    }

    /// The server refused the request with `cid`. With a `hold` (a transient refusal: rate limit, store
    /// unavailable, slow mode) it is queued again and the outbox held; otherwise a message fails (the person may
    /// retry it; a `cid_reused` one moves to `fresh`) and an action is dropped. Returns `None` when nothing here has
    /// that `cid`, else the hold the caller must time if this refusal started one, and whether the person must be
    /// told in a notice (a dropped action: no row shows it).
    pub(super) fn refuse(
        &mut self,
        cid: &str,
        hold: Option<Duration>,
        reason: &str,
        fresh: Option<String>,
    ) -> Option<(Option<Duration>, bool)> {
        let at = self.queue.iter().position(|out| out.cid == cid)?;
        let out = &mut self.queue[at];
        if let Some(hold) = hold {
            out.status = SendStatus::Queued;
            let started = !self.held;
            self.held = true;
            return Some((started.then_some(hold), false));
        }
        if !out.is_message() {
            self.queue.remove(at);
            return Some((None, true));
        }
        out.status = SendStatus::Failed {
            reason: reason.to_owned(),
        };
        if let Some(fresh) = fresh {
            out.cid = fresh;
        }
        Some((None, false))
    }
}

#[cfg(test)]
mod tests {
    use shared::{ClientMsg, ErrorCode, MsgId, ServerMsg, frame};

    use super::*;
    use crate::chat::fixtures::*;
    use crate::chat::{Applied, Chat};

    fn duplicate_ack(room_name: &str, cid: &str, ms: u64) -> ServerMsg {
        ServerMsg::Ack(frame::Ack {
            room: room(room_name),
            cid: cid.into(),
            id: MsgId::new(ms, 0),
            ts: ms,
            duplicate: true,
        })
    }

    fn statuses(chat: &Chat) -> Vec<SendStatus> {
        general(chat)
            .outbox()
            .iter()
            .map(|o| o.status.clone())
            .collect()
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
    fn messages_typed_offline_are_queued_then_sent_once_joined() {
        let mut chat = chat();
        let first = chat
            .queue_send(&room("general"), "one".into(), None)
            .unwrap();
        let second = chat
            .queue_send(&room("general"), "two".into(), None)
            .unwrap();
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
        let d = chat.queue_send(&room("general"), "d".into(), None).unwrap();
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
        let c = chat.queue_send(&room("general"), "c".into(), None).unwrap();
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

    #[test]
    fn retry_all_and_discard_all_act_on_the_failed_messages_only() {
        let mut chat = chat();
        chat.apply(joined("general", vec![]));
        let cids: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|t| {
                chat.queue_send(&room("general"), (*t).to_string(), None)
                    .unwrap()
            })
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
}
