//! Model-based fuzzing of the room rules: random sequences of sends (with repeated cids and replies), edits,
//! deletions, reactions (on, off, repeated), moderation (mute, kick, ban, slow mode, receipts, and their lifts), joins,
//! leaves and resumes (`since`) from a few members, run against one replica on the in-memory bus (`Rules::apply`)
//! and against two replicas sharing a real Redis (`publish.lua`, `roster.lua`, `history.lua`). Every answer, every
//! member's delivered events and the room's final history (the export: every message's current state and every
//! moderation event) must be the same on both, ids and times compared by position. This is what keeps the two
//! implementations of the room rules one rule set.
//!
//! Each step waits until every member still in the room has received the event it stored, so both runs are
//! quiescent between steps and any difference is the rules', not timing's. Durations are 0 (a lift) or an hour, so
//! no rule depends on the clock during a run. `PROPTEST_CASES` (default 32) sets how many sequences run,
//! `ROOMCAST_MODEL_STEPS` (default 40) their longest; a failure prints the shortest sequence proptest shrank it to,
//! which becomes a named regression test below. `ROOMCAST_MODEL_TRACE=1` prints what each sequence did (with
//! `--nocapture`).

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use shared::{ClientMsg, MsgId, ServerMsg};
use testkit::client::Received;

use crate::harness::{Client, Redis, Replica, config};

const SECRET: &str = "a-model-secret-of-at-least-32-bytes!";
const API_KEY: &str = "model-api-key-0123456789";

/// The members: nick and person (the token's `sub`, or the `join`'s `person` without tokens). `mod` moderates the
/// room; `bob` and `bobby` are one person.
const MEMBERS: [(&str, &str); 5] = [
    ("mod", "person-mod"),
    ("alice", "person-alice"),
    ("bob", "person-bob"),
    ("bobby", "person-bob"),
    ("carol", "person-carol"),
];

/// Texts to send and edit to: short, multi-line, longer than a quote in two scripts and in four-byte characters,
/// exactly a quote long, one mentioning a member, and one of the characters JSON encoders escape differently (Lua's
/// cjson writes `/` as `\/`) and of `string.format`'s own.
const TEXTS: [&str; 9] = [
    "hi",
    "hello <b>world</b>",
    "two\nlines\tand a tab",
    "éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé",
    "字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字字",
    "@alice look 👀",
    "🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉🎉",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "100% %s %d \\ \"quoted\" </script> a/b ~ ok",
];

/// Emoji to react with (one with a variation selector).
const EMOJI: [&str; 3] = ["👍", "🎉", "❤️"];

/// The id no stored message has.
const UNKNOWN: MsgId = MsgId::new(1, 0);

/// Which stored event an action names, by position, so the same op names the same event in both runs.
#[derive(Debug, Clone)]
pub enum Target {
    /// The n-th message stored (modulo how many there are).
    Message(u8),
    /// The n-th message the acting member stored (else as `Message`).
    Mine(u8),
    /// The n-th event stored, message or not.
    Event(u8),
    /// An id nothing has.
    Unknown,
}

/// What a moderator does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Mute,
    Kick,
    Ban,
    SlowMode,
    Receipts,
}

/// One step of a sequence. Members are indexes into [`MEMBERS`]; cids are small numbers, so they repeat.
#[derive(Debug, Clone)]
pub enum Op {
    /// `join` without `since`, with the member's current nick.
    Join(usize),
    /// `join` with another member's nick: a rename when joined (refused `forbidden` with a token for another nick,
    /// `nick_taken` when another person holds it).
    Rename {
        who: usize,
        nick: usize,
    },
    /// Reconnect (to the other replica, on Redis) and `join` with `since` and `epoch`.
    Resume(usize),
    /// `leave`.
    Leave(usize),
    Send {
        who: usize,
        text: usize,
        cid: u8,
        reply: Option<Target>,
    },
    Edit {
        who: usize,
        target: Target,
        text: usize,
        cid: u8,
    },
    Delete {
        who: usize,
        target: Target,
        cid: u8,
    },
    React {
        who: usize,
        target: Target,
        emoji: usize,
        on: bool,
        cid: u8,
    },
    /// `POST /api/rooms/{room}/messages` as the member's nick (the same `cid`s as its WebSocket sends).
    Publish {
        who: usize,
        text: usize,
        cid: u8,
        reply: Option<Target>,
    },
    /// `by` moderates `nick` (ignored for slow mode and receipts); `long`: an hour (on), else 0 (lifted, off).
    /// Without tokens nobody moderates over a WebSocket: `mod`'s moderation goes through the HTTP API instead.
    Moderate {
        by: usize,
        what: Power,
        nick: usize,
        long: bool,
        cid: Option<u8>,
    },
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        5 => any::<u8>().prop_map(Target::Message),
        4 => any::<u8>().prop_map(Target::Mine),
        1 => any::<u8>().prop_map(Target::Event),
        1 => Just(Target::Unknown),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..MEMBERS.len();
    let text = 0..TEXTS.len();
    let cid = 0..8u8;
    prop_oneof![
        3 => who.clone().prop_map(Op::Join),
        1 => who.clone().prop_map(Op::Resume),
        1 => who.clone().prop_map(Op::Leave),
        1 => (who.clone(), who.clone()).prop_map(|(who, nick)| Op::Rename { who, nick }),
        6 => (who.clone(), text.clone(), cid.clone(), prop::option::weighted(0.3, target()))
            .prop_map(|(who, text, cid, reply)| Op::Send { who, text, cid, reply }),
        2 => (who.clone(), text.clone(), cid.clone(), prop::option::weighted(0.3, target()))
            .prop_map(|(who, text, cid, reply)| Op::Publish { who, text, cid, reply }),
        2 => (who.clone(), target(), text, cid.clone())
            .prop_map(|(who, target, text, cid)| Op::Edit { who, target, text, cid }),
        2 => (who.clone(), target(), cid.clone())
            .prop_map(|(who, target, cid)| Op::Delete { who, target, cid }),
        4 => (who.clone(), target(), 0..EMOJI.len(), any::<bool>(), cid)
            .prop_map(|(who, target, emoji, on, cid)| Op::React { who, target, emoji, on, cid }),
        4 => (
            prop_oneof![4 => Just(0usize), 1 => 1..MEMBERS.len()],
            prop::sample::select(vec![
                Power::Mute,
                Power::Kick,
                Power::Ban,
                Power::SlowMode,
                Power::Receipts,
            ]),
            who,
            any::<bool>(),
            prop::option::of(0..3u8),
        )
            .prop_map(|(by, what, nick, long, cid)| Op::Moderate { by, what, nick, long, cid }),
    ]
}

/// A token for member `i`: its nick and person, and for `mod` the moderator role in every room.
fn token(i: usize) -> String {
    let (nick, person) = MEMBERS[i];
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 6 * 3600;
    let roles = if i == 0 {
        json!({"*": "moderator"})
    } else {
        json!({})
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"nick": nick, "sub": person, "exp": exp, "roles": roles}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// How long one frame may take to arrive: a bound so a divergence that loses an event fails instead of hanging.
const FRAME_WAIT: Duration = Duration::from_secs(10);

/// One member's connection and what it received.
struct Member {
    client: Client,
    /// The nick it joins with (its own until a rename).
    nick: String,
    /// How many times it reconnected (which replica it is on).
    connections: usize,
    /// In the room, as far as the frames it received say.
    joined: bool,
    /// The newest stored event it received, and the epoch of its last `joined`: its resume point.
    last: Option<MsgId>,
    epoch: Option<String>,
    /// Stored event ids received.
    seen: HashSet<MsgId>,
    /// Every stored event frame (and `left` from a kick or ban, and `gap`) received, in order.
    events: Vec<ServerMsg>,
}

impl Member {
    async fn connect(url: &str, i: usize, tokens: bool) -> Client {
        if tokens {
            Client::connect(&format!("{url}?token={}", token(i))).await
        } else {
            Client::connect(url).await
        }
    }

    /// Folds a frame that answers nothing into what the member received.
    fn absorb(&mut self, frame: ServerMsg) {
        let id = match &frame {
            ServerMsg::Message(m) => Some(m.id),
            ServerMsg::Edited(e) => Some(e.id),
            ServerMsg::Deleted(d) => Some(d.id),
            ServerMsg::Reacted(r) => Some(r.id),
            ServerMsg::Moderation(m) => Some(m.id),
            ServerMsg::Left(_) => {
                self.joined = false;
                None
            }
            ServerMsg::Gap(_) => None,
            // Presence, typing, read state and pongs are not the rules' business.
            _ => return,
        };
        if let Some(id) = id {
            self.seen.insert(id);
            self.last = self.last.max(Some(id));
        }
        self.events.push(frame);
    }

    async fn next(&mut self) -> ServerMsg {
        match self.client.next_within(FRAME_WAIT).await {
            Received::Frame(frame) => frame,
            other => panic!("no frame: {other:?}"),
        }
    }

    /// Reads frames until the one `pick` accepts (returned), folding the others.
    async fn answer(&mut self, pick: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
        loop {
            let frame = self.next().await;
            if pick(&frame) {
                return frame;
            }
            self.absorb(frame);
        }
    }

    /// Reads frames until `done` holds.
    async fn until(&mut self, done: impl Fn(&Self) -> bool) {
        while !done(self) {
            let frame = self.next().await;
            self.absorb(frame);
        }
    }

    /// Sends a request and waits for its answer: a frame `answers` accepts, or an error naming `req`.
    async fn request(
        &mut self,
        msg: ClientMsg,
        req: &str,
        answers: impl Fn(&ServerMsg) -> bool,
    ) -> ServerMsg {
        self.client.send(&msg).await;
        self.answer(|f| {
            answers(f) || matches!(f, ServerMsg::Error(e) if e.req.as_deref() == Some(req))
        })
        .await
    }

    /// Waits until every frame the server wrote before now has arrived (a `ping` is answered in order).
    async fn barrier(&mut self, req: &str) {
        self.client
            .send(&ClientMsg::Ping {
                req: Some(req.into()),
            })
            .await;
        self.answer(|f| matches!(f, ServerMsg::Pong(p) if p.req.as_deref() == Some(req)))
            .await;
    }
}

/// One run of a sequence: the replicas of one bus, its members, and everything they were answered and received.
struct Run {
    /// Connections carry tokens (`mod` moderates over its WebSocket); without, members name their person.
    tokens: bool,
    urls: Vec<String>,
    api: std::net::SocketAddr,
    room: String,
    members: Vec<Member>,
    /// Every stored event's id, in order (from the answers that stored one).
    stored: Vec<MsgId>,
    /// The stored messages' ids and their senders, in order.
    messages: Vec<(MsgId, usize)>,
    /// Each step's answer (a frame, or an HTTP status and body).
    answers: Vec<Value>,
}

impl Run {
    async fn start(tokens: bool, urls: Vec<String>, api: std::net::SocketAddr, room: &str) -> Self {
        let mut members = Vec::new();
        for i in 0..MEMBERS.len() {
            members.push(Member {
                client: Member::connect(&urls[i % urls.len()], i, tokens).await,
                nick: MEMBERS[i].0.to_owned(),
                connections: 0,
                joined: false,
                last: None,
                epoch: None,
                seen: HashSet::new(),
                events: Vec::new(),
            });
        }
        Self {
            tokens,
            urls,
            api,
            room: room.to_owned(),
            members,
            stored: Vec::new(),
            messages: Vec::new(),
            answers: Vec::new(),
        }
    }

    /// The id `target` names for member `who`.
    fn resolve(&self, who: usize, target: &Target) -> MsgId {
        let pick = |ids: &[MsgId], n: u8| ids[usize::from(n) % ids.len()];
        let all: Vec<MsgId> = self.messages.iter().map(|(id, _)| *id).collect();
        let mine: Vec<MsgId> = self
            .messages
            .iter()
            .filter(|(_, by)| *by == who)
            .map(|(id, _)| *id)
            .collect();
        match target {
            Target::Mine(n) if !mine.is_empty() => pick(&mine, *n),
            Target::Message(n) | Target::Mine(n) if !all.is_empty() => pick(&all, *n),
            Target::Event(n) if !self.stored.is_empty() => pick(&self.stored, *n),
            _ => UNKNOWN,
        }
    }

    async fn join(
        &mut self,
        who: usize,
        nick: String,
        since: Option<MsgId>,
        epoch: Option<String>,
        k: usize,
    ) {
        let req = format!("j{k}");
        let msg = ClientMsg::Join {
            room: self.room.clone(),
            nick,
            since,
            epoch,
            person: (!self.tokens).then(|| MEMBERS[who].1.to_owned()),
            req: Some(req.clone()),
        };
        let m = &mut self.members[who];
        let answer = m
            .request(
                msg,
                &req,
                |f| matches!(f, ServerMsg::Joined(j) if j.req.as_deref() == Some(req.as_str())),
            )
            .await;
        if let ServerMsg::Joined(joined) = &answer {
            m.joined = true;
            m.nick = joined.nick.to_string();
            m.epoch = Some(joined.epoch.clone());
            for message in &joined.history {
                m.seen.insert(message.id);
                m.last = m.last.max(Some(message.id));
            }
            // The backlog after `joined`, if any, arrives before the pong.
            m.barrier(&format!("b{k}")).await;
            // Redis orders members by their arrival millisecond (ties by nick), the in-memory bus by arrival: the
            // next join starts in a later millisecond, so both orders are the arrival order.
            let joined_at = backend::bus::now_ms();
            while backend::bus::now_ms() == joined_at {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
        self.answers.push(frame(&answer));
    }

    async fn step(&mut self, op: &Op, k: usize) {
        let room = self.room.clone();
        let cid_of = |n: u8| format!("c{n}");
        let acked =
            |cid: String| move |f: &ServerMsg| matches!(f, ServerMsg::Ack(a) if a.cid == cid);
        let (who, msg, req, is_send) = match op {
            Op::Join(who) => {
                let nick = self.members[*who].nick.clone();
                return self.join(*who, nick, None, None, k).await;
            }
            Op::Rename { who, nick } => {
                return self
                    .join(*who, MEMBERS[*nick].0.to_owned(), None, None, k)
                    .await;
            }
            Op::Resume(who) => {
                let m = &mut self.members[*who];
                if m.joined {
                    // Leaving first makes the old connection's departure reach the roster before the new join, as
                    // it would not on its own when the connection just closes (a race the rules have no part in).
                    let req = format!("r{k}");
                    let leave = ClientMsg::Leave {
                        room: room.clone(),
                        req: Some(req.clone()),
                    };
                    m.request(leave, &req, |f| {
                        matches!(f, ServerMsg::Left(l) if l.req.as_deref() == Some(req.as_str()))
                    })
                    .await;
                    m.joined = false;
                }
                m.connections += 1;
                let url = &self.urls[(*who + m.connections) % self.urls.len()];
                m.client = Member::connect(url, *who, self.tokens).await;
                m.joined = false;
                let (since, epoch) = match &m.epoch {
                    Some(epoch) => (m.last, Some(epoch.clone())),
                    None => (None, None),
                };
                let nick = m.nick.clone();
                return self.join(*who, nick, since, epoch, k).await;
            }
            Op::Leave(who) => {
                let req = format!("l{k}");
                let msg = ClientMsg::Leave {
                    room,
                    req: Some(req.clone()),
                };
                let m = &mut self.members[*who];
                let answer = m
                    .request(msg, &req, |f| {
                        matches!(f, ServerMsg::Left(l) if l.req.as_deref() == Some(req.as_str()))
                    })
                    .await;
                if matches!(answer, ServerMsg::Left(_)) {
                    m.joined = false;
                }
                self.answers.push(frame(&answer));
                return;
            }
            Op::Publish {
                who,
                text,
                cid,
                reply,
            } => {
                let reply = reply.as_ref().map(|t| self.resolve(*who, t));
                return self.publish(*who, TEXTS[*text], cid_of(*cid), reply).await;
            }
            Op::Send {
                who,
                text,
                cid,
                reply,
            } => {
                let msg = ClientMsg::Send {
                    room,
                    text: TEXTS[*text].into(),
                    cid: cid_of(*cid),
                    reply_to: reply.as_ref().map(|t| self.resolve(*who, t)),
                };
                (*who, msg, cid_of(*cid), true)
            }
            Op::Edit {
                who,
                target,
                text,
                cid,
            } => {
                let msg = ClientMsg::Edit {
                    room,
                    id: self.resolve(*who, target),
                    text: TEXTS[*text].into(),
                    cid: cid_of(*cid),
                };
                (*who, msg, cid_of(*cid), false)
            }
            Op::Delete { who, target, cid } => {
                let msg = ClientMsg::Delete {
                    room,
                    id: self.resolve(*who, target),
                    cid: cid_of(*cid),
                };
                (*who, msg, cid_of(*cid), false)
            }
            Op::React {
                who,
                target,
                emoji,
                on,
                cid,
            } => {
                let msg = ClientMsg::React {
                    room,
                    id: self.resolve(*who, target),
                    emoji: EMOJI[*emoji].into(),
                    on: *on,
                    cid: cid_of(*cid),
                };
                (*who, msg, cid_of(*cid), false)
            }
            Op::Moderate {
                by,
                what,
                nick,
                long,
                cid,
            } => {
                let req = format!("m{k}");
                let whom = MEMBERS[*nick].0;
                let nick = whom.to_owned();
                let secs = if *long { 3600 } else { 0 };
                let cid = cid.map(|n| format!("m{n}"));
                let evicted = match what {
                    Power::Kick => Some(whom),
                    Power::Ban if *long => Some(whom),
                    _ => None,
                };
                if !self.tokens && *by == 0 {
                    return self.moderate_by_api(*what, nick, secs, cid, evicted).await;
                }
                let req_ = Some(req.clone());
                let msg = match what {
                    Power::Mute => ClientMsg::Mute {
                        room,
                        nick,
                        secs,
                        req: req_,
                        cid,
                    },
                    Power::Kick => ClientMsg::Kick {
                        room,
                        nick,
                        req: req_,
                        cid,
                    },
                    Power::Ban => ClientMsg::Ban {
                        room,
                        nick,
                        secs,
                        req: req_,
                        cid,
                    },
                    Power::SlowMode => ClientMsg::SlowMode {
                        room,
                        secs,
                        req: req_,
                        cid,
                    },
                    Power::Receipts => ClientMsg::Receipts {
                        room,
                        on: *long,
                        req: req_,
                        cid,
                    },
                };
                let answer = self.members[*by]
                    .request(msg, &req, |f| {
                        matches!(f, ServerMsg::Done(d) if d.req.as_deref() == Some(req.as_str()))
                    })
                    .await;
                if let ServerMsg::Done(done) = &answer
                    && !done.duplicate
                {
                    self.stored.push(done.id);
                    self.settle(done.id, evicted).await;
                }
                self.answers.push(frame(&answer));
                return;
            }
        };
        let answer = self.members[who]
            .request(msg, &req, acked(req.clone()))
            .await;
        if let ServerMsg::Ack(ack) = &answer
            && !ack.duplicate
        {
            self.stored.push(ack.id);
            if is_send {
                self.messages.push((ack.id, who));
            }
            self.settle(ack.id, None).await;
        }
        self.answers.push(frame(&answer));
    }

    /// Publishes through the HTTP API as member `who`'s nick.
    async fn publish(&mut self, who: usize, text: &str, cid: String, reply: Option<MsgId>) {
        let mut body = json!({"nick": self.members[who].nick, "text": text, "cid": cid});
        if let Some(reply) = reply {
            body["reply_to"] = json!(reply);
        }
        let (status, answer) = self.api_post("messages", &body).await;
        if status == 201 {
            let id: MsgId = answer["id"].as_str().unwrap().parse().unwrap();
            self.stored.push(id);
            self.messages.push((id, who));
            self.settle(id, None).await;
        }
        self.answers.push(json!({"status": status, "body": answer}));
    }

    /// A POST to the room's `what` in the HTTP API with the API key: the status and the JSON answered.
    async fn api_post(&self, what: &str, body: &Value) -> (u16, Value) {
        let (status, _, answer) = testkit::http_request(
            self.api,
            "POST",
            &format!("/api/rooms/{}/{what}", self.room),
            &[
                ("Authorization", &format!("Bearer {API_KEY}")),
                ("Content-Type", "application/json"),
            ],
            Some(&body.to_string()),
        )
        .await;
        let answer = serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"));
        (status, answer)
    }

    /// Moderates as the holder of an API key (`by: mod`): how a room without tokens is moderated.
    async fn moderate_by_api(
        &mut self,
        what: Power,
        nick: String,
        secs: u64,
        cid: Option<String>,
        evicted: Option<&str>,
    ) {
        let mut body = match what {
            Power::Mute => json!({"action": "mute", "nick": nick, "secs": secs}),
            Power::Ban => json!({"action": "ban", "nick": nick, "secs": secs}),
            Power::Kick => json!({"action": "kick", "nick": nick}),
            Power::SlowMode => json!({"action": "slow_mode", "secs": secs}),
            Power::Receipts => json!({"action": "receipts", "on": secs > 0}),
        };
        body["by"] = json!("mod");
        if let Some(cid) = cid {
            body["cid"] = json!(cid);
        }
        let (status, answer) = self.api_post("moderation", &body).await;
        if status == 200 && answer["duplicate"] == json!(false) {
            let id: MsgId = answer["id"].as_str().unwrap().parse().unwrap();
            self.stored.push(id);
            self.settle(id, evicted).await;
        }
        self.answers.push(json!({"status": status, "body": answer}));
    }

    /// Waits until every member in the room has received the stored event `id`, and a nick a kick or ban takes out
    /// has left: the run is quiescent again.
    async fn settle(&mut self, id: MsgId, evicted: Option<&str>) {
        for m in &mut self.members {
            if !m.joined {
                continue;
            }
            if evicted == Some(m.nick.as_str()) {
                m.until(|m| !m.joined).await;
            } else {
                m.until(|m| m.seen.contains(&id) || !m.joined).await;
            }
        }
    }

    /// The room's history as the export reads it: every message's current state and every moderation event.
    async fn export(&self) -> Vec<ServerMsg> {
        let (status, _, body) = testkit::http_request(
            self.api,
            "GET",
            &format!("/api/rooms/{}/export", self.room),
            &[("Authorization", &format!("Bearer {API_KEY}"))],
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// What a run observed, with ids named by their position among the stored events and times reduced to whether
/// there is one: what must be equal between the buses.
#[derive(Debug, PartialEq)]
struct Trace {
    answers: Vec<Value>,
    events: Vec<Vec<Value>>,
    export: Vec<Value>,
}

impl Trace {
    async fn of(run: Run) -> Self {
        let export = run.export().await;
        let names: BTreeSet<MsgId> = run.stored.iter().copied().collect();
        let names: Vec<MsgId> = names.into_iter().collect();
        let norm = |value: &Value| {
            let mut value = value.clone();
            normalize(&mut value, &names);
            value
        };
        Self {
            answers: run.answers.iter().map(norm).collect(),
            events: run
                .members
                .iter()
                .map(|m| m.events.iter().map(|f| norm(&frame(f))).collect())
                .collect(),
            export: export.iter().map(|f| norm(&frame(f))).collect(),
        }
    }
}

/// A frame as JSON.
fn frame(frame: &ServerMsg) -> Value {
    serde_json::to_value(frame).unwrap()
}

/// Replaces what legitimately differs between two runs: ids by their position among the stored ids (`#3`), times
/// by whether there is one, epochs and error texts (which name times) by a constant; lists whose order is a tie
/// (read receipts at one id) are sorted.
fn normalize(value: &mut Value, names: &[MsgId]) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match key.as_str() {
                    "ts" | "edited_at" | "until" | "muted_until" => *v = json!(!v.is_null()),
                    "epoch" | "node" => *v = json!("-"),
                    "message" if v.is_string() => *v = json!("-"),
                    _ => normalize(v, names),
                }
                if key.as_str() == "seen"
                    && let Value::Array(list) = v
                {
                    list.sort_by_key(Value::to_string);
                }
            }
        }
        Value::Array(list) => list.iter_mut().for_each(|v| normalize(v, names)),
        Value::String(s) => {
            if let Ok(id) = s.parse::<MsgId>() {
                *s = match names.binary_search(&id) {
                    Ok(at) => format!("#{at}"),
                    Err(_) if id == UNKNOWN => "#unknown".into(),
                    Err(_) => "#unstored".into(),
                };
            }
        }
        _ => {}
    }
}

/// The replicas of both buses, started once and shared by every sequence (each in a room of its own).
struct Buses {
    tokens: bool,
    _redis: Redis,
    memory: Vec<Replica>,
    redis: Vec<Replica>,
    rooms: AtomicU64,
}

impl Buses {
    /// With `tokens`, every connection carries one (and `mod` moderates the room); without, members name their
    /// person and `mod` moderates through the HTTP API.
    async fn start(tokens: bool) -> Self {
        let redis = Redis::start().await;
        let tune = |url: Option<&str>| {
            let mut c = config(url);
            c.jwt_secret = tokens.then(|| SECRET.to_owned());
            c.api_keys = vec![API_KEY.to_owned()];
            // Nobody's grace runs out during a run: member lists do not depend on timing.
            c.presence_grace_ms = 600_000;
            c.admit_joins_per_sec = 0;
            c.admit_connections_per_sec = 0;
            c
        };
        let memory = vec![Replica::start_with(tune(None)).await];
        let mut replicas = Vec::new();
        for _ in 0..2 {
            replicas.push(Replica::start_with(tune(Some(&redis.url()))).await);
        }
        Self {
            tokens,
            _redis: redis,
            memory,
            redis: replicas,
            rooms: AtomicU64::new(0),
        }
    }

    /// Runs `ops` (after every member joined) on both buses and compares what they did.
    async fn check(&self, ops: &[Op]) -> Result<(), TestCaseError> {
        let room = format!("model-{}", self.rooms.fetch_add(1, Ordering::Relaxed));
        let ops: Vec<Op> = (0..MEMBERS.len())
            .map(Op::Join)
            .chain(ops.iter().cloned())
            .collect();
        let run = |replicas: &[Replica]| {
            let urls: Vec<String> = replicas.iter().map(Replica::ws_url).collect();
            let api = replicas[0].addr;
            let room = room.clone();
            let ops = ops.clone();
            async move {
                let mut run = Run::start(self.tokens, urls, api, &room).await;
                for (k, op) in ops.iter().enumerate() {
                    run.step(op, k).await;
                }
                Trace::of(run).await
            }
        };
        let (memory, redis) = tokio::join!(run(&self.memory), run(&self.redis));
        if std::env::var_os("ROOMCAST_MODEL_TRACE").is_some() {
            // What the memory run did, normalized: to see what the sequences exercise.
            let trace = json!({
                "ops": format!("{ops:?}"),
                "answers": memory.answers,
                "events": memory.events,
                "export": memory.export,
            });
            eprintln!("{}", serde_json::to_string_pretty(&trace).unwrap());
        }
        for (k, (m, r)) in memory.answers.iter().zip(&redis.answers).enumerate() {
            prop_assert_eq!(
                m,
                r,
                "step {} ({:?}) was answered differently (left: memory, right: redis)",
                k,
                ops[k]
            );
        }
        for (i, (m, r)) in memory.events.iter().zip(&redis.events).enumerate() {
            prop_assert_eq!(
                m,
                r,
                "{} received different events (left: memory, right: redis)",
                MEMBERS[i].0
            );
        }
        prop_assert_eq!(
            &memory.export,
            &redis.export,
            "the room's history differs (left: memory, right: redis)"
        );
        Ok(())
    }
}

fn env_number(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A runtime of its own (proptest's runner is synchronous) holding the replicas across cases.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Runs `PROPTEST_CASES` random sequences on both buses.
fn fuzz(tokens: bool) {
    let rt = runtime();
    let buses = rt.block_on(Buses::start(tokens));
    let cases = env_number("PROPTEST_CASES", 32);
    let steps = env_number("ROOMCAST_MODEL_STEPS", 40) as usize;
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 1024,
        ..RunnerConfig::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..=steps), |ops| {
        rt.block_on(buses.check(&ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Members with tokens: `mod` moderates over its WebSocket (and deletes others' messages), nicks are the tokens'.
#[test]
fn buses_agree_on_random_sequences_with_tokens() {
    fuzz(true);
}

/// Members without tokens: each names its person (so bans follow people, and nicks are taken), renames happen, and
/// `mod` moderates through the HTTP API.
#[test]
fn buses_agree_on_random_sequences_without_tokens() {
    fuzz(false);
}

/// Runs one sequence on both buses: a regression test of a sequence the model found.
fn replay(tokens: bool, ops: &[Op]) {
    let rt = runtime();
    let buses = rt.block_on(Buses::start(tokens));
    if let Err(e) = rt.block_on(buses.check(ops)) {
        panic!("{e}");
    }
}

/// The plain case, so a failure of the harness itself shows without randomness: every kind of step once.
#[test]
fn every_kind_of_step_agrees() {
    for tokens in [true, false] {
        every_kind_of_step(tokens);
    }
}

fn every_kind_of_step(tokens: bool) {
    use Op::*;
    replay(
        tokens,
        &[
            Send {
                who: 1,
                text: 3,
                cid: 0,
                reply: None,
            },
            Send {
                who: 2,
                text: 0,
                cid: 0,
                reply: Some(Target::Message(0)),
            },
            Send {
                who: 2,
                text: 0,
                cid: 0,
                reply: Some(Target::Message(0)),
            },
            Edit {
                who: 1,
                target: Target::Message(0),
                text: 4,
                cid: 1,
            },
            React {
                who: 2,
                target: Target::Message(0),
                emoji: 2,
                on: true,
                cid: 1,
            },
            React {
                who: 2,
                target: Target::Message(0),
                emoji: 2,
                on: true,
                cid: 2,
            },
            Moderate {
                by: 0,
                what: Power::Mute,
                nick: 2,
                long: true,
                cid: Some(0),
            },
            React {
                who: 2,
                target: Target::Message(0),
                emoji: 2,
                on: false,
                cid: 3,
            },
            Moderate {
                by: 0,
                what: Power::SlowMode,
                nick: 0,
                long: true,
                cid: None,
            },
            Send {
                who: 1,
                text: 1,
                cid: 2,
                reply: None,
            },
            Send {
                who: 1,
                text: 2,
                cid: 3,
                reply: None,
            },
            Join(4),
            Moderate {
                by: 0,
                what: Power::Kick,
                nick: 4,
                long: false,
                cid: None,
            },
            Moderate {
                by: 0,
                what: Power::Ban,
                nick: 2,
                long: true,
                cid: None,
            },
            Join(2),
            Join(3),
            Resume(1),
            Delete {
                who: 0,
                target: Target::Message(1),
                cid: 0,
            },
            Moderate {
                by: 1,
                what: Power::Receipts,
                nick: 0,
                long: true,
                cid: None,
            },
            Leave(1),
            Resume(1),
            Rename { who: 4, nick: 1 },
            Rename { who: 3, nick: 2 },
            Rename { who: 1, nick: 3 },
            Send {
                who: 1,
                text: 5,
                cid: 7,
                reply: Some(Target::Mine(0)),
            },
        ],
    );
}
