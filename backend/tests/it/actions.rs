//! Acting on messages — replies, edits, deletions, reactions — and moderating rooms, on both buses: the in-memory
//! bus on one replica, and two replicas sharing a real Redis. Every action is a stored event: each member receives
//! it exactly once, history answers with every message's current state, a member that was away ends in the same
//! state as one that stayed, and the rules answer with typed errors on every replica.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shared::{ChatMessage, ClientMsg, ErrorCode, MsgId, ServerMsg, frame};

use crate::harness::{Client, Redis, Replica, config};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

/// One replica on the in-memory bus, or two sharing a Redis: "replica i" is `i % len`.
struct Rooms {
    _redis: Option<Redis>,
    replicas: Vec<Replica>,
}

impl Rooms {
    async fn start(redis: bool, tune: impl Fn(&mut backend::Config)) -> Self {
        let redis = if redis {
            Some(Redis::start().await)
        } else {
            None
        };
        let mut replicas = Vec::new();
        for _ in 0..if redis.is_some() { 2 } else { 1 } {
            let mut c = config(redis.as_ref().map(Redis::url).as_deref());
            tune(&mut c);
            replicas.push(Replica::start_with(c).await);
        }
        Self {
            _redis: redis,
            replicas,
        }
    }

    fn url(&self, i: usize) -> String {
        self.replicas[i % self.replicas.len()].ws_url()
    }

    async fn client(&self, i: usize) -> Client {
        Client::connect(&self.url(i)).await
    }

    /// A connection whose token names `nick` and, when `moderator`, makes it a moderator of every room.
    async fn signed_in(&self, i: usize, nick: &str, moderator: bool) -> Client {
        let exp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let roles = if moderator {
            json!({"*": "moderator"})
        } else {
            json!({})
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &json!({"nick": nick, "exp": exp, "roles": roles}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        Client::connect(&format!("{}?token={token}", self.url(i))).await
    }
}

fn with_tokens(c: &mut backend::Config) {
    c.jwt_secret = Some(SECRET.to_owned());
}

/// Defines each test once per bus.
macro_rules! on_both_buses {
    ($($name:ident $(with $tune:expr)?),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Rooms::start(true, on_both_buses!(@tune $($tune)?)).await).await;
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Rooms::start(false, on_both_buses!(@tune $($tune)?)).await).await;
            })*
        }
    };
    (@tune) => { |_: &mut backend::Config| {} };
    (@tune $tune:expr) => { $tune };
}

on_both_buses!(
    every_action_reaches_every_member_once_and_history_shows_the_state,
    a_member_away_across_actions_ends_in_the_same_state,
    rules_refuse_with_typed_errors,
    moderation_is_enforced_on_every_replica with super::with_tokens,
);

/// What a member knows of one message, folded from every frame it received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Seen {
    text: String,
    edited_at: Option<u64>,
    deleted: bool,
    quote: Option<String>,
    /// Emoji → count; and whether mine.
    reactions: BTreeMap<String, (u32, bool)>,
}

/// A member's view of a room: messages by id, how often each stored event id arrived, and the actions received
/// (`edited`, `deleted`, `reacted`) with their targets, in order.
#[derive(Debug, Default)]
struct View {
    me: String,
    messages: BTreeMap<MsgId, Seen>,
    arrivals: HashMap<MsgId, u32>,
    actions: Vec<(&'static str, MsgId)>,
}

impl View {
    fn new(me: &str) -> Self {
        Self {
            me: me.into(),
            ..Self::default()
        }
    }

    fn message(&mut self, m: &ChatMessage) {
        self.messages.insert(
            m.id,
            Seen {
                text: m.text.clone(),
                edited_at: m.edited_at,
                deleted: m.deleted,
                quote: m.reply_to.as_ref().map(|q| q.text.clone()),
                reactions: m
                    .reactions
                    .iter()
                    .map(|r| (r.emoji.clone(), (r.count, r.mine)))
                    .collect(),
            },
        );
    }

    /// Applies one frame as a client would; returns the stored event id it carried.
    fn apply(&mut self, frame: &ServerMsg) -> Option<MsgId> {
        let id = match frame {
            ServerMsg::Message(m) => {
                self.message(m);
                m.id
            }
            ServerMsg::Edited(frame::Edited {
                id,
                target,
                text,
                ts,
                ..
            }) => {
                self.actions.push(("edited", *target));
                if let Some(m) = self.messages.get_mut(target) {
                    m.text.clone_from(text);
                    m.edited_at = Some(*ts);
                }
                *id
            }
            ServerMsg::Deleted(frame::Deleted { id, target, .. }) => {
                self.actions.push(("deleted", *target));
                if let Some(m) = self.messages.get_mut(target) {
                    *m = Seen {
                        deleted: true,
                        ..Seen::default()
                    };
                }
                *id
            }
            ServerMsg::Reacted(frame::Reacted {
                id,
                target,
                nick,
                emoji,
                on,
                count,
                ..
            }) => {
                let mine = nick.as_str() == self.me;
                self.actions.push(("reacted", *target));
                if let Some(m) = self.messages.get_mut(target) {
                    let entry = m.reactions.entry(emoji.clone()).or_insert((0, false));
                    entry.0 = *count;
                    if mine {
                        entry.1 = *on;
                    }
                    if *count == 0 {
                        m.reactions.remove(emoji);
                    }
                }
                *id
            }
            ServerMsg::Moderation(m) => m.id,
            _ => return None,
        };
        *self.arrivals.entry(id).or_default() += 1;
        Some(id)
    }
}

/// Reads frames until the event `id` arrived, folding all of them into `view`.
async fn until_event(client: &mut Client, view: &mut View, id: MsgId) {
    while !view.arrivals.contains_key(&id) {
        let frame = client.next().await;
        view.apply(&frame);
    }
}

/// Sends a request answered by `ack`; returns the event id.
async fn act(client: &mut Client, msg: ClientMsg) -> MsgId {
    let cid = match &msg {
        ClientMsg::Send { cid, .. }
        | ClientMsg::Edit { cid, .. }
        | ClientMsg::Delete { cid, .. }
        | ClientMsg::React { cid, .. } => cid.clone(),
        other => panic!("not an action: {other:?}"),
    };
    client.send(&msg).await;
    client
        .take(|m| match m {
            ServerMsg::Ack(frame::Ack { cid: c, id, .. }) if *c == cid => Some(*id),
            ServerMsg::Error(frame::Error {
                req: Some(c),
                code,
                message,
                ..
            }) if *c == cid => {
                panic!("{cid} refused: {code:?} {message}")
            }
            _ => None,
        })
        .await
}

/// Waits for the `done` answering the moderation request `req`; returns the event's id and whether it was a repeat.
async fn done(client: &mut Client, req: &str) -> (MsgId, bool) {
    client
        .take(|m| match m {
            ServerMsg::Done(frame::Done {
                req: Some(r),
                id,
                duplicate,
                ..
            }) if r == req => Some((*id, *duplicate)),
            ServerMsg::Error(frame::Error {
                req: Some(r),
                code,
                message,
                ..
            }) if r == req => {
                panic!("{req} refused: {code:?} {message}")
            }
            _ => None,
        })
        .await
}

/// Sends a request that must be refused; returns the code and `until`.
async fn refused(client: &mut Client, msg: ClientMsg, req: &str) -> (ErrorCode, Option<u64>) {
    client.send(&msg).await;
    client
        .take(|m| match m {
            ServerMsg::Error(frame::Error {
                req: Some(r),
                code,
                until,
                ..
            }) if r == req => Some((*code, *until)),
            ServerMsg::Ack(frame::Ack { cid, .. }) if cid == req => panic!("{req} was accepted"),
            ServerMsg::Done(frame::Done { req: Some(r), .. }) if r == req => {
                panic!("{req} was done")
            }
            _ => None,
        })
        .await
}

fn send(room: &str, text: &str, cid: &str, reply_to: Option<MsgId>) -> ClientMsg {
    ClientMsg::Send {
        room: room.into(),
        text: text.into(),
        cid: cid.into(),
        reply_to,
    }
}

fn edit(room: &str, id: MsgId, text: &str, cid: &str) -> ClientMsg {
    ClientMsg::Edit {
        room: room.into(),
        id,
        text: text.into(),
        cid: cid.into(),
    }
}

fn delete(room: &str, id: MsgId, cid: &str) -> ClientMsg {
    ClientMsg::Delete {
        room: room.into(),
        id,
        cid: cid.into(),
    }
}

fn react(room: &str, id: MsgId, emoji: &str, on: bool, cid: &str) -> ClientMsg {
    ClientMsg::React {
        room: room.into(),
        id,
        emoji: emoji.into(),
        on,
        cid: cid.into(),
    }
}

async fn every_action_reaches_every_member_once_and_history_shows_the_state(rooms: Rooms) {
    let r = "acts";
    let (mut alice, mut bob, mut carol) = (
        rooms.client(0).await,
        rooms.client(1).await,
        rooms.client(1).await,
    );
    alice.join(r, "alice", None).await;
    bob.join(r, "bob", None).await;
    carol.join(r, "carol", None).await;
    let long = "é".repeat(200);
    let first = act(&mut alice, send(r, &long, "a1", None)).await;
    let reply = act(&mut bob, send(r, "agreed", "b1", Some(first))).await;
    let kept = act(&mut carol, send(r, "me too", "c0", Some(first))).await;
    let events = vec![
        first,
        reply,
        kept,
        act(&mut alice, edit(r, first, "hello, edited", "a2")).await,
        act(&mut bob, react(r, first, "🎉", true, "b2")).await,
        act(&mut carol, react(r, first, "🎉", true, "c1")).await,
        act(&mut carol, react(r, first, "👍", true, "c2")).await,
        act(&mut bob, react(r, first, "🎉", false, "b3")).await,
        act(&mut carol, react(r, reply, "👀", true, "c3")).await,
        act(&mut bob, delete(r, reply, "b4")).await,
    ];
    let last = *events.last().unwrap();
    let mut views = Vec::new();
    for (client, me) in [
        (&mut alice, "alice"),
        (&mut bob, "bob"),
        (&mut carol, "carol"),
    ] {
        let mut view = View::new(me);
        until_event(client, &mut view, last).await;
        for id in &events {
            assert_eq!(view.arrivals.get(id), Some(&1), "{me} got event {id} once");
        }
        assert_eq!(view.arrivals.len(), events.len(), "{me}: no other event");
        views.push(view);
    }
    // What the members folded from the events is what history says.
    let carol_sees = &views[2].messages;
    let m = &carol_sees[&first];
    assert_eq!(m.text, "hello, edited");
    assert!(m.edited_at.is_some());
    assert_eq!(
        m.reactions,
        BTreeMap::from([("🎉".into(), (1, true)), ("👍".into(), (1, true))])
    );
    let quoted = carol_sees[&kept].quote.clone();
    assert_eq!(
        quoted,
        Some(format!("{}…", "é".repeat(140))),
        "the quote is the original's first 140 characters"
    );
    assert_eq!(
        carol_sees[&reply],
        Seen {
            deleted: true,
            ..Seen::default()
        },
        "a tombstone keeps nothing of the message"
    );

    let mut dave = rooms.client(0).await;
    let history = dave.join(r, "dave", None).await;
    let mut fresh = View::new("dave");
    for m in &history {
        fresh.message(m);
    }
    let mut carol_fresh = rooms.client(1).await;
    let history = carol_fresh.join(r, "carol", None).await;
    let mut carol_history = View::new("carol");
    for m in &history {
        carol_history.message(m);
    }
    assert_eq!(
        carol_history.messages, views[2].messages,
        "carol's history is what carol folded"
    );
    // Dave reacted to nothing: the same counts, none his.
    let mine_off = |v: &BTreeMap<MsgId, Seen>| {
        let mut v = v.clone();
        for m in v.values_mut() {
            for r in m.reactions.values_mut() {
                r.1 = false;
            }
        }
        v
    };
    assert_eq!(fresh.messages, mine_off(&views[2].messages));
    // Scrolling back gives the same state.
    dave.send(&ClientMsg::History {
        room: r.into(),
        before: MsgId::new(u64::MAX / 2, 0),
        limit: 10,
        req: Some("h".into()),
    })
    .await;
    let page = dave
        .take(|m| match m {
            ServerMsg::HistoryPage(frame::HistoryPage { messages, .. }) => Some(messages.clone()),
            _ => None,
        })
        .await;
    let mut paged = View::new("dave");
    for m in &page {
        paged.message(m);
    }
    assert_eq!(paged.messages, fresh.messages);
}

async fn a_member_away_across_actions_ends_in_the_same_state(rooms: Rooms) {
    let r = "away";
    let mut stayer = rooms.client(0).await;
    let mut leaver = rooms.client(1).await;
    stayer.join(r, "sam", None).await;
    leaver.join(r, "lee", None).await;
    let mut stay = View::new("sam");
    let mut away = View::new("lee");
    let a = act(&mut stayer, send(r, "one", "s1", None)).await;
    let b = act(&mut leaver, send(r, "two", "l1", Some(a))).await;
    until_event(&mut leaver, &mut away, b).await;
    let epoch = {
        let mut probe = rooms.client(1).await;
        probe
            .send(&ClientMsg::Join {
                room: r.into(),
                nick: "probe".into(),
                since: None,
                epoch: None,
                person: None,
                req: Some("p".into()),
            })
            .await;
        probe
            .take(|m| match m {
                ServerMsg::Joined(frame::Joined { epoch, .. }) => Some(epoch.clone()),
                _ => None,
            })
            .await
    };
    let since = *away.arrivals.keys().max().unwrap();
    drop(leaver);
    // While lee is away: edits, reactions (mine and others'), a deletion, a new message and actions on it.
    act(&mut stayer, edit(r, a, "one (edited)", "s2")).await;
    act(&mut stayer, react(r, b, "❤️", true, "s3")).await;
    act(&mut stayer, react(r, a, "🚀", true, "s4")).await;
    act(&mut stayer, delete(r, a, "s5")).await;
    let c = act(&mut stayer, send(r, "three", "s6", None)).await;
    act(&mut stayer, react(r, c, "😂", true, "s7")).await;
    // A message lee never saw, edited, reacted to and deleted meanwhile: `joined` shows it deleted.
    let d = act(&mut stayer, send(r, "four", "s9", None)).await;
    act(&mut stayer, edit(r, d, "four (edited)", "s10")).await;
    act(&mut stayer, react(r, d, "👀", true, "s11")).await;
    act(&mut stayer, delete(r, d, "s12")).await;
    let last = act(&mut stayer, edit(r, c, "three (edited)", "s8")).await;
    until_event(&mut stayer, &mut stay, last).await;

    let mut back = rooms.client(1).await;
    back.send(&ClientMsg::Join {
        room: r.into(),
        nick: "lee".into(),
        since: Some(since),
        epoch: Some(epoch),
        person: None,
        req: Some("back".into()),
    })
    .await;
    let history = back
        .take(|m| match m {
            ServerMsg::Joined(frame::Joined { history, .. }) => Some(history.clone()),
            _ => None,
        })
        .await;
    for m in &history {
        away.apply(&ServerMsg::Message(m.clone()));
    }
    until_event(&mut back, &mut away, last).await;
    // The stayer folded everything live since the start; compare the messages both know.
    let mut stayer_all = View::new("sam");
    let history = rooms.client(0).await.join(r, "sam", None).await;
    for m in &history {
        stayer_all.message(m);
    }
    let mine_off = |v: &BTreeMap<MsgId, Seen>| {
        let mut v = v.clone();
        for m in v.values_mut() {
            for r in m.reactions.values_mut() {
                r.1 = false;
            }
        }
        v
    };
    assert_eq!(
        mine_off(&away.messages),
        mine_off(&stayer_all.messages),
        "the member who was away sees what the one who stayed sees"
    );
    assert!(away.messages[&a].deleted);
    assert!(away.messages[&d].deleted);
    assert_eq!(away.messages[&c].text, "three (edited)");
    // Messages deleted by now get their deletion, never the edits and reactions before it: a resuming client does
    // not show, even for a moment, what a message it shows deleted said.
    let on = |target| -> Vec<&str> {
        away.actions
            .iter()
            .filter(|(_, t)| *t == target)
            .map(|(kind, _)| *kind)
            .collect()
    };
    assert_eq!(on(a), ["deleted"], "{:?}", away.actions);
    assert_eq!(on(d), ["deleted"], "{:?}", away.actions);
    assert_eq!(on(c), ["reacted", "edited"], "{:?}", away.actions);
    for (id, n) in &away.arrivals {
        assert_eq!(*n, 1, "event {id} reached lee once");
    }
}

async fn rules_refuse_with_typed_errors(rooms: Rooms) {
    let r = "rules";
    let (mut alice, mut bob) = (rooms.client(0).await, rooms.client(1).await);
    alice.join(r, "alice", None).await;
    bob.join(r, "bob", None).await;
    let mine = act(&mut alice, send(r, "mine", "a1", None)).await;
    // Only the author edits; only the author (or a moderator) deletes.
    assert_eq!(
        refused(&mut bob, edit(r, mine, "yours now", "b1"), "b1")
            .await
            .0,
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(&mut bob, delete(r, mine, "b2"), "b2").await.0,
        ErrorCode::Forbidden
    );
    // A reaction outside the set, an unknown message, a message deleted.
    assert_eq!(
        refused(&mut bob, react(r, mine, "🦀", true, "b3"), "b3")
            .await
            .0,
        ErrorCode::InvalidEmoji
    );
    let unknown = MsgId::new(1, 0);
    assert_eq!(
        refused(&mut bob, react(r, unknown, "👍", true, "b4"), "b4")
            .await
            .0,
        ErrorCode::MessageGone
    );
    assert_eq!(
        refused(&mut bob, send(r, "re", "b5", Some(unknown)), "b5")
            .await
            .0,
        ErrorCode::MessageGone
    );
    act(&mut alice, delete(r, mine, "a2")).await;
    assert_eq!(
        refused(&mut alice, edit(r, mine, "again", "a3"), "a3")
            .await
            .0,
        ErrorCode::MessageGone
    );
    assert_eq!(
        refused(&mut bob, react(r, mine, "👍", true, "b6"), "b6")
            .await
            .0,
        ErrorCode::MessageGone
    );
    assert_eq!(
        refused(&mut bob, send(r, "re", "b7", Some(mine)), "b7")
            .await
            .0,
        ErrorCode::MessageGone
    );
    assert_eq!(
        refused(&mut alice, edit(r, mine, " ", "a4"), "a4").await.0,
        ErrorCode::InvalidText
    );
    // Not a moderator.
    let mute = ClientMsg::Mute {
        room: r.into(),
        nick: "alice".into(),
        secs: 60,
        req: Some("m1".into()),
        cid: None,
    };
    assert_eq!(refused(&mut bob, mute, "m1").await.0, ErrorCode::Forbidden);
    // A retried action is stored once: the same ack, one event.
    let target = act(&mut alice, send(r, "target", "a5", None)).await;
    let first = act(&mut bob, react(r, target, "👍", true, "b8")).await;
    bob.send(&react(r, target, "👍", true, "b8")).await;
    let again = bob
        .take(|m| match m {
            ServerMsg::Ack(frame::Ack {
                cid, id, duplicate, ..
            }) if cid == "b8" => Some((*id, *duplicate)),
            _ => None,
        })
        .await;
    assert_eq!(again, (first, true));
    assert_eq!(
        refused(&mut bob, react(r, target, "👍", false, "b8"), "b8")
            .await
            .0,
        ErrorCode::CidReused,
        "another action under a used cid"
    );
    // A reaction that changes nothing stores nothing: acked as a repeat, with the message's id.
    for (emoji, on, cid) in [("👍", true, "b9"), ("🎉", false, "b10")] {
        bob.send(&react(r, target, emoji, on, cid)).await;
        let ack = bob
            .take(|m| match m {
                ServerMsg::Ack(frame::Ack {
                    cid: c,
                    id,
                    duplicate,
                    ..
                }) if c == cid => Some((*id, *duplicate)),
                _ => None,
            })
            .await;
        assert_eq!(ack, (target, true), "{emoji} {on}");
    }
    let marker = act(&mut alice, send(r, "marker", "a6", None)).await;
    let mut view = View::new("alice");
    until_event(&mut alice, &mut view, marker).await;
    assert_eq!(
        view.arrivals.get(&first),
        Some(&1),
        "the retried reaction arrived once"
    );
    let on_target: Vec<_> = view.actions.iter().filter(|(_, t)| *t == target).collect();
    assert_eq!(
        on_target,
        [&("reacted", target)],
        "no event for the reactions that changed nothing"
    );
}

async fn moderation_is_enforced_on_every_replica(rooms: Rooms) {
    let r = "modded";
    let mut moderator = rooms.signed_in(0, "mod", true).await;
    let mut bob = rooms.signed_in(1, "bob", false).await;
    let mut carol = rooms.signed_in(1, "carol", false).await;
    moderator
        .send(&ClientMsg::Join {
            room: r.into(),
            nick: "mod".into(),
            since: None,
            epoch: None,
            person: None,
            req: Some("jm".into()),
        })
        .await;
    let is_moderator = moderator
        .take(|m| match m {
            ServerMsg::Joined(frame::Joined { moderator, .. }) => Some(*moderator),
            _ => None,
        })
        .await;
    assert!(is_moderator, "joined says the token's role");
    bob.join(r, "bob", None).await;
    carol.join(r, "carol", None).await;
    let said = act(&mut bob, send(r, "before", "b1", None)).await;

    // Mute: bob's sends and reactions are refused with until; deleting his own message still works.
    moderator
        .send(&ClientMsg::Mute {
            room: r.into(),
            nick: "bob".into(),
            secs: 600,
            req: Some("mute".into()),
            cid: None,
        })
        .await;
    done(&mut moderator, "mute").await;
    let announced = carol
        .take(|m| match m {
            ServerMsg::Moderation(e) => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (
            announced.by.as_str(),
            announced.nick.as_ref().map(|n| n.as_str()),
            announced.secs
        ),
        ("mod", Some("bob"), 600)
    );
    let (code, until) = refused(&mut bob, send(r, "muted?", "b2", None), "b2").await;
    assert_eq!(code, ErrorCode::Muted);
    assert!(until.is_some_and(|u| u > announced.ts), "{until:?}");
    assert_eq!(
        refused(&mut bob, react(r, said, "👍", true, "b3"), "b3")
            .await
            .0,
        ErrorCode::Muted
    );
    act(&mut bob, delete(r, said, "b4")).await;
    // A moderator deletes anyone's message; 0 lifts the mute.
    let carols = act(&mut carol, send(r, "hi", "c1", None)).await;
    act(&mut moderator, delete(r, carols, "m-del")).await;
    // A moderation retried with its cid (a lost `done`) moderates once: the same id, one event.
    let unmute = |req: &str| ClientMsg::Mute {
        room: r.into(),
        nick: "bob".into(),
        secs: 0,
        req: Some(req.into()),
        cid: Some("unmute-bob-1".into()),
    };
    moderator.send(&unmute("unmute")).await;
    let (lifted, repeat) = done(&mut moderator, "unmute").await;
    assert!(!repeat);
    moderator.send(&unmute("unmute-again")).await;
    assert_eq!(done(&mut moderator, "unmute-again").await, (lifted, true));
    act(&mut bob, send(r, "free again", "b5", None)).await;

    // Slow mode: one message per 600 s for members, not for moderators.
    moderator
        .send(&ClientMsg::SlowMode {
            room: r.into(),
            secs: 600,
            req: Some("slow".into()),
            cid: None,
        })
        .await;
    let (slow, _) = done(&mut moderator, "slow").await;
    // carol heard the mute, one lift (secs 0), then slow mode: the retried lift announced nothing.
    let mut heard = Vec::new();
    while heard.last() != Some(&(slow, 600)) {
        let event = carol
            .take(|m| match m {
                ServerMsg::Moderation(e) => Some((e.id, e.secs)),
                _ => None,
            })
            .await;
        heard.push(event);
    }
    assert_eq!(heard, [(lifted, 0), (slow, 600)]);
    act(&mut carol, send(r, "first", "c2", None)).await;
    let (code, until) = refused(&mut carol, send(r, "second", "c3", None), "c3").await;
    assert_eq!(code, ErrorCode::SlowMode);
    assert!(until.is_some());
    act(&mut moderator, send(r, "mods are not slowed", "m1", None)).await;
    act(&mut moderator, send(r, "at all", "m2", None)).await;
    moderator
        .send(&ClientMsg::SlowMode {
            room: r.into(),
            secs: 0,
            req: Some("fast".into()),
            cid: None,
        })
        .await;
    done(&mut moderator, "fast").await;
    act(&mut carol, send(r, "second, now", "c4", None)).await;

    // Retention: a moderator sets how long the room keeps its messages; everyone sees it; a member may not.
    moderator
        .send(&ClientMsg::Retention {
            room: r.into(),
            days: 30,
            req: Some("keep".into()),
            cid: Some("keep-30".into()),
        })
        .await;
    let (kept, _) = done(&mut moderator, "keep").await;
    let event = carol
        .take(|m| match m {
            ServerMsg::Moderation(e) if e.id == kept => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        (event.action, event.secs),
        (shared::ModerationAction::Retention, 30 * 86_400)
    );
    let keep = ClientMsg::Retention {
        room: r.into(),
        days: 1,
        req: Some("c-keep".into()),
        cid: None,
    };
    assert_eq!(
        refused(&mut carol, keep, "c-keep").await.0,
        ErrorCode::Forbidden
    );
    let too_long = ClientMsg::Retention {
        room: r.into(),
        days: 36_501,
        req: Some("too-long".into()),
        cid: None,
    };
    assert_eq!(
        refused(&mut moderator, too_long, "too-long").await.0,
        ErrorCode::BadRequest
    );

    // Kick: bob leaves the room on his replica, told why; he may join again.
    moderator
        .send(&ClientMsg::Kick {
            room: r.into(),
            nick: "bob".into(),
            req: Some("kick".into()),
            cid: None,
        })
        .await;
    done(&mut moderator, "kick").await;
    let reason = bob
        .take(|m| match m {
            ServerMsg::Left(frame::Left { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reason.as_deref(), Some("kicked"));
    let (code, _) = refused(&mut bob, send(r, "still here?", "b6", None), "b6").await;
    assert_eq!(code, ErrorCode::NotJoined);
    bob.join(r, "bob", None).await;

    // Ban: out, and refused at the door until it is lifted.
    moderator
        .send(&ClientMsg::Ban {
            room: r.into(),
            nick: "bob".into(),
            secs: 600,
            req: Some("ban".into()),
            cid: None,
        })
        .await;
    done(&mut moderator, "ban").await;
    let reason = bob
        .take(|m| match m {
            ServerMsg::Left(frame::Left { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reason.as_deref(), Some("banned"));
    let mut again = rooms.signed_in(0, "bob", false).await;
    let (code, until) = {
        again
            .send(&ClientMsg::Join {
                room: r.into(),
                nick: "bob".into(),
                since: None,
                epoch: None,
                person: None,
                req: Some("rejoin".into()),
            })
            .await;
        again
            .take(|m| match m {
                ServerMsg::Error(frame::Error {
                    req: Some(q),
                    code,
                    until,
                    ..
                }) if q == "rejoin" => Some((*code, *until)),
                ServerMsg::Joined(_) => panic!("a banned nick joined"),
                _ => None,
            })
            .await
    };
    assert_eq!(code, ErrorCode::Banned);
    assert!(until.is_some());
    moderator
        .send(&ClientMsg::Ban {
            room: r.into(),
            nick: "bob".into(),
            secs: 0,
            req: Some("unban".into()),
            cid: None,
        })
        .await;
    done(&mut moderator, "unban").await;
    again.join(r, "bob", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_follows_the_person_behind_the_nick() {
    let rooms = Rooms::start(true, |_| {}).await;
    let r = "people";
    let mut troll = rooms.client(1).await;
    troll.join_as(r, "troll", "person-troll-1").await.unwrap();
    let key = "moderation-key-0123456789";
    let mut c = config(Some(&rooms._redis.as_ref().unwrap().url()));
    c.api_keys = vec![key.to_owned()];
    let api = Replica::start_with(c).await;
    let (status, _, body) = testkit::http_request(
        api.addr,
        "POST",
        &format!("/api/rooms/{r}/moderation"),
        &[("Authorization", &format!("Bearer {key}"))],
        Some(r#"{"action":"ban","nick":"troll","secs":600,"by":"ops"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let reason = troll
        .take(|m| match m {
            ServerMsg::Left(frame::Left { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .await;
    assert_eq!(reason.as_deref(), Some("banned"));
    // Another nick, the same person: still banned; another person with that other nick: welcome.
    let refused = troll
        .join_as(r, "not-a-troll", "person-troll-1")
        .await
        .unwrap_err();
    assert_eq!(refused.0, ErrorCode::Banned, "{}", refused.1);
    let mut other = rooms.client(0).await;
    other
        .join_as(r, "not-a-troll", "person-other-2")
        .await
        .unwrap();
    // The API answers bad requests with typed errors.
    for (body, code) in [
        (r#"{"action":"mute","secs":60}"#, "bad_request"),
        (
            r#"{"action":"mute","nick":"x","secs":999999999}"#,
            "bad_request",
        ),
        (r#"{"action":"dance","nick":"x"}"#, "bad_request"),
    ] {
        let (status, _, answer) = testkit::http_request(
            api.addr,
            "POST",
            &format!("/api/rooms/{r}/moderation"),
            &[("Authorization", &format!("Bearer {key}"))],
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(code), "{answer}");
    }
    // The CLI mutes through Redis: the room hears it, the muted member is refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["--redis-url", &rooms._redis.as_ref().unwrap().url()])
        .args([
            "moderate",
            "--room",
            r,
            "--nick",
            "not-a-troll",
            "--secs",
            "600",
            "mute",
        ])
        .output()
        .expect("run roomcast moderate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: MsgId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let event = other
        .take(|m| match m {
            ServerMsg::Moderation(e) if e.id == id => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(event.by.as_str(), "moderator");
    other.send(&send(r, "hello?", "o1", None)).await;
    let code = other
        .take(|m| match m {
            ServerMsg::Error(frame::Error {
                req: Some(q), code, ..
            }) if q == "o1" => Some(*code),
            _ => None,
        })
        .await;
    assert_eq!(code, ErrorCode::Muted);
    // And sets the room's retention.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["--redis-url", &rooms._redis.as_ref().unwrap().url()])
        .args(["moderate", "--room", r, "--days", "90", "retention"])
        .output()
        .expect("run roomcast moderate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id: MsgId = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let event = other
        .take(|m| match m {
            ServerMsg::Moderation(e) if e.id == id => Some(e.clone()),
            _ => None,
        })
        .await;
    assert_eq!(event.secs, 90 * 86_400);
}
