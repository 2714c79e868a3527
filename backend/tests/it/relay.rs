//! Behavioural tests of relaying, run twice: on three replicas sharing a real Redis, and on one replica with the
//! in-memory bus. Both must give clients exactly the same guarantees.

use std::collections::BTreeSet;

use shared::{ChatMessage, MsgId, PresenceKind, ServerMsg, close_code, frame};

use crate::harness::{Client, PATIENCE, Redis, Replica, config};

/// Replicas sharing one bus. With the in-memory bus there is a single replica and every "replica i" is it.
struct Cluster {
    _redis: Option<Redis>,
    replicas: Vec<Replica>,
}

impl Cluster {
    async fn redis(n: usize, tune: impl Fn(&mut backend::Config)) -> Self {
        let redis = Redis::start().await;
        let mut replicas = Vec::new();
        for _ in 0..n {
            let mut c = config(Some(&redis.url()));
            tune(&mut c);
            replicas.push(Replica::start_with(c).await);
        }
        Self {
            _redis: Some(redis),
            replicas,
        }
    }

    async fn memory(tune: impl Fn(&mut backend::Config)) -> Self {
        let mut c = config(None);
        tune(&mut c);
        Self {
            _redis: None,
            replicas: vec![Replica::start_with(c).await],
        }
    }

    async fn client(&self, i: usize) -> Client {
        self.replicas[i % self.replicas.len()].client().await
    }
}

/// Defines each test once per bus.
macro_rules! on_both_buses {
    ($($name:ident $(with $tune:expr)?),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Cluster::redis(3, on_both_buses!(@tune $($tune)?)).await).await;
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Cluster::memory(on_both_buses!(@tune $($tune)?)).await).await;
            })*
        }
    };
    (@tune) => { |_: &mut backend::Config| {} };
    (@tune $tune:expr) => { $tune };
}

on_both_buses! {
    delivers_in_every_direction,
    rooms_are_isolated,
    ids_strictly_increase_and_match_acks,
    join_since_returns_exactly_the_missed_messages,
    join_during_traffic_has_no_gap_and_no_duplicate,
    presence_notices_reach_the_others with super::quick_grace,
    members_are_people_not_connections with super::long_grace,
    a_member_who_does_not_come_back_leaves_once with super::quick_grace,
    leave_stops_delivery,
    slow_consumer_is_closed_and_resumes_without_loss with |c: &mut backend::Config| {
        c.queue_max_bytes = 16_384;
        c.history_limit = 1_000_000;
        // Its leave is announced at once, so the test reads it right after the close, not a grace period later
        // (the replica gives up writing the close frame to a socket nobody reads after 10 s).
        c.presence_grace_ms = 0;
    },
    shutdown_sends_going_away,
    history_pages_reach_back_to_the_first_message,
    typing_reaches_the_others_once_per_interval,
}

/// `typing` is relayed to the room's other members (on any replica), not to the typist, at most once per
/// interval; typing in a room not joined is refused.
async fn typing_reaches_the_others_once_per_interval(cluster: Cluster) {
    let mut a = cluster.client(0).await;
    let mut b = cluster.client(1).await;
    a.join("keys", "alice", None).await;
    b.join("keys", "bob", None).await;
    let typing = shared::ClientMsg::Typing {
        room: "keys".into(),
    };
    let first_sent = std::time::Instant::now();
    a.send(&typing).await;
    let who = b
        .take(|m| match m {
            ServerMsg::Typing(frame::Typing { room, nick }) if room.as_str() == "keys" => {
                Some(nick.to_string())
            }
            _ => None,
        })
        .await;
    assert_eq!(who, "alice");
    // Again at once: dropped. The message that follows arrives with no typing frame before it.
    a.send(&typing).await;
    let id = a.say("keys", "done typing").await;
    // The replica took both typing frames between `first_sent` and this ack (a connection's requests are handled
    // in order), so this bounds the time between them however slowly the machine ran.
    let apart_at_most = first_sent.elapsed();
    assert_eq!(b.message_in("keys").await.id, id);
    let relayed = |c: &Client| {
        c.pending()
            .iter()
            .filter(|m| matches!(m, ServerMsg::Typing(_)))
            .count()
    };
    assert_eq!(relayed(&a), 0, "alice hears her own typing");
    if apart_at_most < std::time::Duration::from_millis(shared::TYPING_EVERY_MS) {
        assert_eq!(
            relayed(&b),
            0,
            "the second typing frame came within the interval, yet bob got it"
        );
    } else {
        println!(
            "the machine took {apart_at_most:?} for two frames: the interval cannot be checked in this run"
        );
    }
    a.send(&shared::ClientMsg::Typing {
        room: "elsewhere".into(),
    })
    .await;
    let (code, _, _) = a.error().await;
    assert_eq!(code, shared::ErrorCode::NotJoined);
}

/// The answer to one `history` request: its messages and `complete`, or the error code.
async fn page(
    c: &mut Client,
    room: &str,
    before: MsgId,
    limit: usize,
) -> Result<(Vec<ChatMessage>, bool), shared::ErrorCode> {
    let req = format!("page-{before}-{limit}");
    c.send(&shared::ClientMsg::History {
        room: room.into(),
        before,
        limit,
        req: Some(req.clone()),
    })
    .await;
    c.take(|m| match m {
        ServerMsg::HistoryPage(frame::HistoryPage {
            messages,
            complete,
            req: Some(r),
            ..
        }) if *r == req => Some(Ok((messages.clone(), *complete))),
        ServerMsg::Error(frame::Error {
            code, req: Some(r), ..
        }) if *r == req => Some(Err(*code)),
        _ => None,
    })
    .await
}

/// Scrolling back: 120 messages, a join that shows the newest 50, then pages of 30 before the oldest shown, until
/// the server says `complete`: every message exactly once, in order. Bad requests get typed errors.
async fn history_pages_reach_back_to_the_first_message(cluster: Cluster) {
    let mut writer = cluster.client(0).await;
    writer.join("scroll", "writer", None).await;
    let mut sent = Vec::new();
    for i in 0..120 {
        sent.push(writer.say("scroll", &format!("m{i}")).await);
    }
    let mut reader = cluster.client(1).await;
    let mut seen = reader.join("scroll", "reader", None).await;
    assert_eq!(seen.len(), 50, "history on join");
    let mut pages = 0;
    loop {
        let before = seen[0].id;
        let (older, complete) = page(&mut reader, "scroll", before, 30).await.unwrap();
        pages += 1;
        assert!(older.iter().all(|m| m.id < before), "only older messages");
        seen.splice(0..0, older);
        if complete {
            break;
        }
        assert!(pages < 10, "paging ends");
    }
    assert_eq!(ids(&seen), sent, "every message once, in order");
    assert_eq!(pages, 3, "50 + 30 + 30 + 10");
    let first = sent[0];
    assert_eq!(
        page(&mut reader, "scroll", first, 30).await.unwrap(),
        (vec![], true)
    );
    assert_eq!(
        page(&mut reader, "elsewhere", first, 30).await.unwrap_err(),
        shared::ErrorCode::NotJoined
    );
    assert_eq!(
        page(&mut reader, "scroll", first, 0).await.unwrap_err(),
        shared::ErrorCode::BadRequest
    );
}

fn ids(messages: &[ChatMessage]) -> Vec<MsgId> {
    messages.iter().map(|m| m.id).collect()
}

async fn delivers_in_every_direction(cluster: Cluster) {
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        c.join("lobby", &format!("user{i}"), None).await;
        clients.push(c);
    }
    if cluster.replicas.len() == 3 {
        let nodes: BTreeSet<_> = clients.iter().map(|c| c.node.clone()).collect();
        assert_eq!(nodes.len(), 3, "each client is on its own replica");
    }
    let mut acked = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        acked.push(c.say("lobby", &format!("hello from {i}")).await);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(c.message_in("lobby").await);
        }
        assert_eq!(
            ids(&got),
            acked,
            "client {i} got every message, in id order, with the acked ids"
        );
        for (j, m) in got.iter().enumerate() {
            assert_eq!(m.nick.as_str(), format!("user{j}"));
            assert_eq!(m.text, format!("hello from {j}"));
            assert_eq!(m.ts, m.id.ms);
        }
    }
}

async fn rooms_are_isolated(cluster: Cluster) {
    let mut alpha = cluster.client(0).await;
    alpha.join("alpha", "a", None).await;
    let mut beta = cluster.client(1).await;
    beta.join("beta", "b", None).await;
    let mut other = cluster.client(2).await;
    other.join("alpha", "o", None).await;
    other.join("beta", "o", None).await;
    for i in 0..5 {
        beta.say("beta", &format!("beta {i}")).await;
    }
    // Events of one replica arrive in publish order, so once the marker is in, any beta leak would be too.
    let marker = other.say("alpha", "marker").await;
    let first = alpha.any_message().await;
    assert_eq!((first.room.as_str(), first.id), ("alpha", marker));
    let leaked: Vec<_> = alpha
        .pending()
        .iter()
        .filter(|m| {
            matches!(m, ServerMsg::Message(x) if x.room.as_str() == "beta")
                || matches!(m, ServerMsg::Presence(p) if p.room.as_str() == "beta")
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "room alpha's member received beta frames: {leaked:?}"
    );
}

async fn ids_strictly_increase_and_match_acks(cluster: Cluster) {
    const PER_CLIENT: usize = 30;
    let mut clients = Vec::new();
    for i in 0..3 {
        let mut c = cluster.client(i).await;
        c.join("race", &format!("r{i}"), None).await;
        clients.push(c);
    }
    // Three senders on three replicas at once.
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for n in 0..PER_CLIENT {
                acks.push(c.say("race", &format!("{i}:{n}")).await);
            }
            let mut got = Vec::new();
            for _ in 0..PER_CLIENT * 3 {
                got.push(c.message_in("race").await.id);
            }
            (acks, got)
        }));
    }
    let mut all_acks = BTreeSet::new();
    let mut sequences = Vec::new();
    for task in tasks {
        let (acks, got) = task.await.unwrap();
        assert!(
            acks.windows(2).all(|w| w[0] < w[1]),
            "one sender's acks increase: {acks:?}"
        );
        all_acks.extend(acks);
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "delivered ids strictly increase: {got:?}"
        );
        sequences.push(got);
    }
    assert_eq!(all_acks.len(), PER_CLIENT * 3, "every ack id is unique");
    for got in &sequences {
        assert_eq!(
            got.iter().copied().collect::<BTreeSet<_>>(),
            all_acks,
            "delivered ids are exactly the acked ids"
        );
        assert_eq!(got, &sequences[0], "every member sees the same order");
    }
}

async fn join_since_returns_exactly_the_missed_messages(cluster: Cluster) {
    let mut writer = cluster.client(0).await;
    writer.join("since", "w", None).await;
    let mut sent = Vec::new();
    for i in 0..8 {
        sent.push(writer.say("since", &format!("m{i}")).await);
    }
    let mut reader = cluster.client(1).await;
    let history = reader.join("since", "r", Some(sent[2])).await;
    assert_eq!(
        ids(&history),
        &sent[3..],
        "exactly the messages after since"
    );
    assert_eq!(history[0].text, "m3");

    let mut caught_up = cluster.client(2).await;
    assert!(
        caught_up.join("since", "c", Some(sent[7])).await.is_empty(),
        "nothing after the newest id"
    );

    let mut from_start = cluster.client(2).await;
    assert_eq!(
        ids(&from_start.join("since", "s", Some(MsgId::new(0, 0))).await),
        sent
    );

    let mut fresh = cluster.client(1).await;
    assert_eq!(
        ids(&fresh.join("since", "f", None).await),
        sent,
        "recent history without since"
    );

    // And live delivery continues right after the history.
    let next = writer.say("since", "live").await;
    assert_eq!(reader.message_in("since").await.id, next);
    assert!(
        !reader
            .pending()
            .iter()
            .any(|m| matches!(m, ServerMsg::Message(_))),
        "no duplicate of history arrives live"
    );
}

async fn join_during_traffic_has_no_gap_and_no_duplicate(cluster: Cluster) {
    const TOTAL: usize = 300;
    let mut writer = cluster.client(0).await;
    writer.join("busy", "w", None).await;
    let first = writer.say("busy", "first").await;
    let writing = tokio::spawn(async move {
        let mut acks = vec![first];
        for i in 1..TOTAL {
            acks.push(writer.say("busy", &format!("n{i}")).await);
        }
        acks
    });
    // Join mid-stream, resuming from the first message.
    tokio::task::yield_now().await;
    let mut reader = cluster.client(1).await;
    let mut seen = ids(&reader.join("busy", "r", Some(first)).await);
    let acks = writing.await.unwrap();
    let last = *acks.last().unwrap();
    while seen.last() != Some(&last) {
        seen.push(reader.message_in("busy").await.id);
    }
    assert_eq!(
        seen,
        &acks[1..],
        "history then live: every message after since exactly once, in order"
    );
}

/// A short grace period, so the tests see it end (300 ms). The heartbeat stays at its default: a replica that
/// misses three heartbeats loses its members, and a busy machine can delay a replica by far more than 300 ms.
fn quick_grace(c: &mut backend::Config) {
    c.presence_grace_ms = 300;
}

/// A grace period no busy machine outlasts (60 s): what happens within it is certain to happen within it.
fn long_grace(c: &mut backend::Config) {
    c.presence_grace_ms = 60_000;
}

/// A member is a nick held by one person: tabs and reconnects within the grace period count once and announce
/// nothing, another person cannot take the nick, a rename is one event that frees the old nick at once, and the
/// member list in `joined` is the same from every replica.
async fn members_are_people_not_connections(cluster: Cluster) {
    let mut alice = cluster.client(0).await;
    assert_eq!(
        alice
            .join_as("hall", "alice", "person-alice")
            .await
            .unwrap(),
        (vec!["alice".to_string()], 1)
    );
    let mut bob = cluster.client(1).await;
    let both = (vec!["alice".to_string(), "bob".to_string()], 2);
    assert_eq!(
        bob.join_as("hall", "bob", "person-bob").await.unwrap(),
        both
    );
    // A second tab of bob, on another replica: the same member.
    let mut bob_tab = cluster.client(2).await;
    assert_eq!(
        bob_tab.join_as("hall", "bob", "person-bob").await.unwrap(),
        both
    );
    // Someone else cannot be bob while bob is here, on any replica.
    let mut mallory = cluster.client(0).await;
    let (code, message) = mallory
        .join_as("hall", "bob", "person-mallory")
        .await
        .unwrap_err();
    assert_eq!(code, shared::ErrorCode::NickTaken, "{message}");
    // bob closes both tabs and comes back within the grace period: nothing to announce. (The replicas learn of the
    // closes whenever they do; before or after the return, bob stays one member.)
    drop(bob);
    drop(bob_tab);
    let mut bob = cluster.client(1).await;
    assert_eq!(
        bob.join_as("hall", "bob", "person-bob").await.unwrap(),
        both
    );
    // A rename is one event, and the old nick is free for someone else at once. (carol has one connection
    // throughout, so nothing of hers is still closing when she renames.)
    let mut carol = cluster.client(2).await;
    carol
        .join_as("hall", "carol", "person-carol")
        .await
        .unwrap();
    let (members, online) = carol
        .join_as("hall", "caroline", "person-carol")
        .await
        .unwrap();
    assert_eq!(
        (members, online),
        (vec!["alice".into(), "bob".into(), "caroline".into()], 3)
    );
    let mut someone = cluster.client(0).await;
    let (members, online) = someone
        .join_as("hall", "carol", "person-someone")
        .await
        .unwrap();
    assert_eq!(
        (members, online),
        (
            vec![
                "alice".into(),
                "bob".into(),
                "caroline".into(),
                "carol".into()
            ],
            4
        ),
        "the old nick is free for someone else"
    );
    // Everything alice heard, up to a marker sent after the last change.
    let last = alice.say("hall", "marker").await;
    while alice.message_in("hall").await.id != last {}
    assert_eq!(
        heard(&alice),
        sorted(vec![
            ("bob".into(), "joined", None),
            ("carol".into(), "joined", None),
            ("caroline".into(), "renamed", Some("carol".into())),
            ("carol".into(), "joined", None),
        ]),
        "tabs, a reconnect within the grace period and a refused nick announce nothing"
    );
    drop(mallory);
}

fn event(kind: PresenceKind) -> &'static str {
    match kind {
        PresenceKind::Joined => "joined",
        PresenceKind::Left => "left",
        PresenceKind::Renamed => "renamed",
    }
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

/// The presence events a client has received but not taken, as (nick, event, renamed from), sorted: notices from
/// different replicas (or from one replica's concurrent tasks) have no order among themselves.
fn heard(c: &Client) -> Vec<(String, &'static str, Option<String>)> {
    sorted(
        c.pending()
            .iter()
            .filter_map(|m| match m {
                ServerMsg::Presence(p) => Some((
                    p.nick.to_string(),
                    event(p.event),
                    p.from.as_ref().map(ToString::to_string),
                )),
                _ => None,
            })
            .collect(),
    )
}

/// A member whose last connection closes and who does not come back within the grace period leaves the list, and
/// the others hear it exactly once.
async fn a_member_who_does_not_come_back_leaves_once(cluster: Cluster) {
    let mut alice = cluster.client(0).await;
    alice
        .join_as("hall", "alice", "person-alice")
        .await
        .unwrap();
    let mut bob = cluster.client(1).await;
    bob.join_as("hall", "bob", "person-bob").await.unwrap();
    let mut bob_tab = cluster.client(2).await;
    bob_tab.join_as("hall", "bob", "person-bob").await.unwrap();
    drop(bob);
    drop(bob_tab);
    let left = alice
        .take(|m| match m {
            ServerMsg::Presence(p) if p.event == PresenceKind::Left => Some(p.nick.to_string()),
            _ => None,
        })
        .await;
    assert_eq!(left, "bob");
    // A few more grace periods later, nothing else has arrived; a newcomer sees alice alone.
    tokio::time::sleep(std::time::Duration::from_millis(1_000)).await;
    let mut carol = cluster.client(1).await;
    assert_eq!(
        carol
            .join_as("hall", "carol", "person-carol")
            .await
            .unwrap(),
        (vec!["alice".to_string(), "carol".to_string()], 2)
    );
    let last = alice.say("hall", "marker").await;
    while alice.message_in("hall").await.id != last {}
    assert_eq!(
        heard(&alice),
        sorted(vec![
            ("bob".into(), "joined", None),
            ("carol".into(), "joined", None),
        ]),
        "one join of bob (two tabs), his leave (taken above), carol's join; nothing else"
    );
}

async fn presence(c: &mut Client) -> (String, PresenceKind) {
    c.take(|m| match m {
        ServerMsg::Presence(p) => Some((p.nick.to_string(), p.event)),
        _ => None,
    })
    .await
}

async fn presence_notices_reach_the_others(cluster: Cluster) {
    let mut alice = cluster.client(0).await;
    alice.join("hall", "alice", None).await;
    let mut bob = cluster.client(1).await;
    bob.join("hall", "bob", None).await;
    assert_eq!(
        presence(&mut alice).await,
        ("bob".into(), PresenceKind::Joined)
    );
    let mut carol = cluster.client(2).await;
    carol.join("hall", "carol", None).await;
    assert_eq!(
        presence(&mut alice).await,
        ("carol".into(), PresenceKind::Joined)
    );
    assert_eq!(
        presence(&mut bob).await,
        ("carol".into(), PresenceKind::Joined)
    );
    bob.send(&shared::ClientMsg::Leave {
        room: "hall".into(),
        req: None,
    })
    .await;
    assert_eq!(
        presence(&mut alice).await,
        ("bob".into(), PresenceKind::Left)
    );
    drop(carol);
    assert_eq!(
        presence(&mut alice).await,
        ("carol".into(), PresenceKind::Left),
        "a disconnect is a leave"
    );
    // Nobody hears their own notices.
    let marker = alice.say("hall", "marker").await;
    assert_eq!(alice.message_in("hall").await.id, marker);
    assert!(
        !alice
            .pending()
            .iter()
            .any(|m| matches!(m, ServerMsg::Presence(p) if p.nick.as_str() == "alice")),
        "alice heard her own join"
    );
}

async fn leave_stops_delivery(cluster: Cluster) {
    let mut stayer = cluster.client(0).await;
    stayer.join("exit", "s", None).await;
    stayer.join("side", "s", None).await;
    let mut leaver = cluster.client(1).await;
    leaver.join("exit", "l", None).await;
    leaver.join("side", "l", None).await;
    leaver
        .send(&shared::ClientMsg::Leave {
            room: "exit".into(),
            req: Some("bye".into()),
        })
        .await;
    let left = leaver
        .take(|m| match m {
            ServerMsg::Left(frame::Left { room, req, .. }) => Some((room.to_string(), req.clone())),
            _ => None,
        })
        .await;
    assert_eq!(left, ("exit".into(), Some("bye".into())));
    stayer.say("exit", "after").await;
    let marker = stayer.say("side", "marker").await;
    let got = leaver.any_message().await;
    assert_eq!(
        (got.room.as_str(), got.id),
        ("side", marker),
        "nothing from the room left"
    );
    let refused = leaver.try_say("exit", "still here?").await;
    assert_eq!(
        refused.map_err(|(code, _)| code),
        Err(shared::ErrorCode::NotJoined)
    );
}

async fn slow_consumer_is_closed_and_resumes_without_loss(cluster: Cluster) {
    let replica = &cluster.replicas[1 % cluster.replicas.len()];
    let mut slow = Client::connect_small_buffer(replica.addr).await;
    slow.join("flood", "slow", None).await;
    let mut writer = cluster.client(0).await;
    writer.join("flood", "writer", None).await;
    // The slow client now stops reading. Write until its replica gives up on it (its leave notice arrives).
    let text = "x".repeat(1500);
    let mut acks = Vec::new();
    let slow_left = |m: &ServerMsg| matches!(m, ServerMsg::Presence(p) if p.nick.as_str() == "slow" && p.event == PresenceKind::Left);
    while !writer.pending().iter().any(slow_left) {
        assert!(acks.len() < 100_000, "the stalled client was never closed");
        // Batches below the queue capacity: the writer must not become a slow consumer of its own echoes.
        acks.extend(writer.say_batch("flood", &text, 10).await);
    }
    // Everything the slow client did get is a gap-free prefix, followed by close code 1013.
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, slow.next_or_close())
            .await
            .expect("slow client read")
        {
            Some(ServerMsg::Message(m)) => got.push(m.id),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(
        slow.closed.clone().flatten().map(|f| u16::from(f.code)),
        Some(close_code::TRY_AGAIN_LATER)
    );
    assert!(
        got.len() < acks.len(),
        "the slow client cannot have received everything"
    );
    assert_eq!(got, acks[..got.len()], "what arrived is an exact prefix");
    // Resuming from the last id received delivers exactly the rest.
    let mut resumed = cluster.client(1).await;
    let since = got.last().copied().unwrap_or(MsgId::new(0, 0));
    let rest = resumed
        .join_expecting("flood", "slow", Some(since), acks.len() - got.len())
        .await;
    let rest = ids(&rest);
    assert_eq!(rest, acks[got.len()..], "nothing lost, nothing twice");
    // The writer was never slowed down or closed.
    writer.say("flood", "still fine").await;
}

async fn shutdown_sends_going_away(mut cluster: Cluster) {
    let mut c = cluster.client(0).await;
    c.join("bye", "c", None).await;
    cluster.replicas[0].stop().await;
    assert_eq!(c.close_code().await, Some(close_code::GOING_AWAY));
}
