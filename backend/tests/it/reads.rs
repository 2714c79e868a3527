//! Read state on the server, read receipts and search — on the in-memory bus (one replica), on two replicas sharing
//! a real Redis, and (for search and the read positions' durability) with a real PostgreSQL behind them. A person's
//! read position moves forward only and reaches every connection of theirs; the counts are exact whatever was
//! missed; search answers from the messages' current text within the rooms a token allows.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shared::{ClientMsg, ErrorCode, MsgId, ServerMsg, frame};

use crate::harness::{Client, PATIENCE, Postgres, Redis, Replica, config, eventually};
use testkit::http_request;

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const KEY: &str = "search-test-key";

/// One replica on the in-memory bus, or two on a Redis (with a PostgreSQL behind it when `archive`): "replica i" is
/// `i % len`.
struct Rooms {
    _redis: Option<Redis>,
    pg: Option<Postgres>,
    replicas: Vec<Replica>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bus {
    Memory,
    Redis,
    Archive,
}

impl Rooms {
    async fn start(bus: Bus, tune: impl Fn(&mut backend::Config)) -> Self {
        let redis = if bus == Bus::Memory {
            None
        } else {
            Some(Redis::start().await)
        };
        let pg = if bus == Bus::Archive {
            Some(Postgres::start().await)
        } else {
            None
        };
        let mut replicas = Vec::new();
        for _ in 0..if redis.is_some() { 2 } else { 1 } {
            let mut c = config(redis.as_ref().map(Redis::url).as_deref());
            c.jwt_secret = Some(SECRET.to_owned());
            c.api_keys = vec![KEY.to_owned()];
            c.database_url = pg.as_ref().map(Postgres::url);
            c.archive_sweep_secs = 1;
            tune(&mut c);
            replicas.push(Replica::start_with(c).await);
        }
        Self {
            _redis: redis,
            pg,
            replicas,
        }
    }

    fn replica(&self, i: usize) -> &Replica {
        &self.replicas[i % self.replicas.len()]
    }

    /// A connection on replica `i` whose token is for `person` as `nick`, allowed `rooms` (all without).
    async fn person(&self, i: usize, nick: &str, person: &str, rooms: Option<&[&str]>) -> Client {
        let token = token(nick, person, rooms, false);
        Client::connect(&format!("{}?token={token}", self.replica(i).ws_url())).await
    }

    /// A moderator of every room.
    async fn moderator(&self, i: usize, nick: &str) -> Client {
        let token = token(nick, nick, None, true);
        Client::connect(&format!("{}?token={token}", self.replica(i).ws_url())).await
    }
}

fn token(nick: &str, person: &str, rooms: Option<&[&str]>, moderator: bool) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut claims = json!({"nick": nick, "sub": person, "exp": exp});
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    if moderator {
        claims["roles"] = json!({"*": "moderator"});
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Defines each test once per bus.
macro_rules! on_both_buses {
    ($($name:ident $(with $tune:expr)?),* $(,)?) => {
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Rooms::start(super::Bus::Redis, on_both_buses!(@tune $($tune)?)).await).await;
            })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name(super::Rooms::start(super::Bus::Memory, on_both_buses!(@tune $($tune)?)).await).await;
            })*
        }
    };
    (@tune) => { |_: &mut backend::Config| {} };
    (@tune $tune:expr) => { $tune };
}

on_both_buses!(
    read_state_follows_the_person_to_every_connection,
    without_tokens_the_nick_is_the_person with super::no_tokens,
    the_read_position_never_moves_back,
    a_device_that_was_away_gets_exact_counts with super::long_history,
    receipts_show_who_read_up_to_where,
);

fn no_tokens(c: &mut backend::Config) {
    c.jwt_secret = None;
}

fn long_history(c: &mut backend::Config) {
    c.history_limit = 3000;
}

/// Repeats `$body` (an `Option`) until it is `Some`, for at most [`PATIENCE`]; for checks that borrow a client.
macro_rules! until {
    ($what:expr, $body:expr) => {{
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(found) = $body {
                break found;
            }
            assert!(tokio::time::Instant::now() < deadline, "never: {}", $what);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }};
}

/// Waits until every frame the server sent `c` before now has arrived: a ping's answer comes after them.
async fn settle(c: &mut Client) {
    let req = format!("settle-{}", c.pending().len());
    c.send(&ClientMsg::Ping {
        req: Some(req.clone()),
    })
    .await;
    c.take(|m| match m {
        ServerMsg::Pong(frame::Pong { req: Some(r) }) if *r == req => Some(()),
        _ => None,
    })
    .await;
}

/// The `read_state` frames `c` has received and not taken, for `room`.
fn read_states(c: &Client, room: &str) -> Vec<frame::ReadState> {
    c.pending()
        .iter()
        .filter_map(|m| match m {
            ServerMsg::ReadState(s) if s.room.as_str() == room => Some(s.clone()),
            _ => None,
        })
        .collect()
}

/// The next `read_state` of `room` `c` receives.
async fn next_read_state(c: &mut Client, room: &str) -> frame::ReadState {
    c.take(|m| match m {
        ServerMsg::ReadState(s) if s.room.as_str() == room => Some(s.clone()),
        _ => None,
    })
    .await
}

/// Receives `n` messages of `room`.
async fn receive(c: &mut Client, room: &str, n: usize) {
    for _ in 0..n {
        c.message_in(room).await;
    }
}

async fn read_state_follows_the_person_to_every_connection(rooms: Rooms) {
    let mut phone = rooms.person(0, "alice", "u-alice", None).await;
    let mut laptop = rooms.person(1, "alice", "u-alice", None).await;
    let mut bob = rooms.person(1, "bob", "u-bob", None).await;
    for (c, nick) in [
        (&mut phone, "alice"),
        (&mut laptop, "alice"),
        (&mut bob, "bob"),
    ] {
        let joined = c.join_frame("lobby", nick, None).await;
        assert_eq!(
            (joined.read, joined.unread),
            (Some(MsgId::default()), 0),
            "a first join of an empty room: before its first event"
        );
    }
    let texts = ["one", "hi @alice", "three", "@Alice again", "five", "six"];
    let mut ids = Vec::new();
    for text in texts {
        ids.push(bob.say("lobby", text).await);
    }
    receive(&mut phone, "lobby", 6).await;
    receive(&mut laptop, "lobby", 6).await;

    // Read on the phone: the laptop, on the other replica, learns it with the same counts; bob learns nothing.
    let read = phone.read("lobby", ids[2]).await.unwrap();
    let expected = frame::ReadState {
        room: read.room.clone(),
        id: ids[2],
        unread: 3,
        mentions: 1,
        more: false,
        upto: Some(ids[5]),
    };
    assert_eq!(read, expected);
    assert_eq!(next_read_state(&mut laptop, "lobby").await, expected);
    settle(&mut bob).await;
    assert!(
        read_states(&bob, "lobby").is_empty(),
        "bob's read state is his own"
    );

    // Older and repeated positions change nothing, and nobody else hears of them.
    assert_eq!(phone.read("lobby", ids[0]).await.unwrap(), expected);
    assert_eq!(phone.read("lobby", ids[2]).await.unwrap(), expected);
    settle(&mut laptop).await;
    assert!(read_states(&laptop, "lobby").is_empty());

    // A position past the newest message stops at it.
    let all = laptop
        .read("lobby", MsgId::new(u64::MAX / 2, 0))
        .await
        .unwrap();
    assert_eq!((all.id, all.unread, all.mentions), (ids[5], 0, 0));
    let seen = next_read_state(&mut phone, "lobby").await;
    assert_eq!((seen.id, seen.unread), (ids[5], 0));

    // A third device gets the position and the counts with `joined`, including what arrived since.
    let newer = [
        bob.say("lobby", "seven").await,
        bob.say("lobby", "@alice eight").await,
    ];
    let mut tablet = rooms.person(0, "alice", "u-alice", None).await;
    let joined = tablet.join_frame("lobby", "alice", None).await;
    assert_eq!(
        (joined.read, joined.unread, joined.mentions, joined.upto),
        (Some(ids[5]), 2, 1, Some(newer[1]))
    );
    // Bob's own messages never count for bob.
    let own = bob.read("lobby", ids[0]).await.unwrap();
    assert_eq!((own.unread, own.mentions), (0, 0));
    // Someone who joined a room and left before anything was said finds what came since unread.
    let mut passer = rooms.person(1, "pat", "u-pat", None).await;
    passer.join("later", "pat", None).await;
    drop(passer);
    bob.join("later", "bob", None).await;
    bob.say("later", "first").await;
    bob.say("later", "@pat second").await;
    let mut back = rooms.person(0, "pat", "u-pat", None).await;
    let joined = back.join_frame("later", "pat", None).await;
    assert_eq!((joined.unread, joined.mentions), (2, 1));
    // Reading needs the room joined.
    let (code, _) = tablet.read("elsewhere", ids[0]).await.unwrap_err();
    assert_eq!(code, ErrorCode::NotJoined);
}

async fn without_tokens_the_nick_is_the_person(rooms: Rooms) {
    let url = |i| rooms.replica(i).ws_url();
    let mut first = Client::connect(&url(0)).await;
    let mut second = Client::connect(&url(1)).await;
    let mut other = Client::connect(&url(1)).await;
    first.join("den", "carol", None).await;
    second.join("den", "carol", None).await;
    other.join("den", "dave", None).await;
    let ids = [other.say("den", "a").await, other.say("den", "b").await];
    receive(&mut first, "den", 2).await;
    let read = first.read("den", ids[0]).await.unwrap();
    assert_eq!((read.id, read.unread), (ids[0], 1));
    assert_eq!(next_read_state(&mut second, "den").await, read);
    settle(&mut other).await;
    assert!(read_states(&other, "den").is_empty());
}

async fn the_read_position_never_moves_back(rooms: Rooms) {
    let mut a = rooms.person(0, "erin", "u-erin", None).await;
    let mut b = rooms.person(1, "erin", "u-erin", None).await;
    let mut watcher = rooms.person(1, "erin", "u-erin", None).await;
    let mut author = rooms.person(0, "frank", "u-frank", None).await;
    for c in [&mut a, &mut b, &mut watcher] {
        c.join("room", "erin", None).await;
    }
    author.join("room", "frank", None).await;
    let ids = author.say_batch("room", "x", 40).await;
    // Two devices send reads in shuffled order, repeating some, without waiting for the answers.
    let mut order: Vec<usize> = (0..40).chain(0..40).collect();
    let mut seed = 0x2545_f491_u64;
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, usize::try_from(seed % (i as u64 + 1)).unwrap());
    }
    for (n, i) in order.iter().enumerate() {
        let c = if n % 2 == 0 { &mut a } else { &mut b };
        c.send(&ClientMsg::Read {
            room: "room".into(),
            id: ids[*i],
        })
        .await;
    }
    // Whatever order they arrived in, the position ends at the newest id read, and every connection of the person
    // only ever saw it move forward.
    let seen: Vec<MsgId> = until!("the watcher learns the newest position", {
        settle(&mut watcher).await;
        let seen: Vec<MsgId> = read_states(&watcher, "room").iter().map(|s| s.id).collect();
        seen.contains(&ids[39]).then_some(seen)
    });
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "moves reach a connection only forward: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&ids[39]));
    let state = b.read("room", ids[0]).await.unwrap();
    assert!(state.id <= ids[39]);
    let joined = watcher.join_frame("room", "erin", None).await;
    assert_eq!((joined.read, joined.unread), (Some(ids[39]), 0));
}

async fn a_device_that_was_away_gets_exact_counts(rooms: Rooms) {
    let mut away = rooms.person(0, "gina", "u-gina", None).await;
    let mut other_device = rooms.person(1, "gina", "u-gina", None).await;
    let mut bob = rooms.person(1, "bob", "u-bob", None).await;
    away.join("busy", "gina", None).await;
    other_device.join("busy", "gina", None).await;
    bob.join("busy", "bob", None).await;
    let start = bob.say("busy", "before").await;
    away.message_in("busy").await;
    away.read("busy", start).await.unwrap();
    let left_at = start;
    drop(away);

    // 1,000 messages of others, 100 mentioning gina; 20 of them deleted (10 mentions); gina's own from her other
    // device never count.
    let mut ids = Vec::new();
    for round in 0..10 {
        ids.extend(bob.say_batch("busy", "plain words", 90).await);
        ids.extend(
            bob.say_batch("busy", &format!("@gina look {round}"), 10)
                .await,
        );
        other_device.say("busy", "my own @gina").await;
    }
    // Of each hundred, the first plain message and the sixth mention are deleted.
    let deleted: Vec<usize> = (0..10).flat_map(|r| [r * 100, r * 100 + 95]).collect();
    for n in &deleted {
        let cid = format!("del-{n}");
        bob.send(&ClientMsg::Delete {
            room: "busy".into(),
            id: ids[*n],
            cid: cid.clone(),
        })
        .await;
        bob.take(|m| match m {
            ServerMsg::Ack(frame::Ack { cid: c, .. }) if *c == cid => Some(()),
            _ => None,
        })
        .await;
    }

    // Back with a fresh connection (no resume point), and with a resume from where it left: the same exact counts.
    let mut back = rooms.person(0, "gina", "u-gina", None).await;
    let joined = back.join_frame("busy", "gina", None).await;
    assert_eq!(
        (joined.read, joined.unread, joined.mentions, joined.more),
        (Some(start), 980, 90, false)
    );
    let mut resumed = rooms.person(1, "gina", "u-gina", None).await;
    let joined = resumed.join_frame("busy", "gina", Some(left_at)).await;
    assert_eq!((joined.unread, joined.mentions), (980, 90));
    // Reading on one device clears every device.
    let newest = *ids.last().unwrap();
    let cleared = back.read("busy", newest).await.unwrap();
    assert_eq!((cleared.unread, cleared.mentions), (0, 0));
    let elsewhere = until!("the other device is cleared", {
        settle(&mut resumed).await;
        read_states(&resumed, "busy")
            .into_iter()
            .find(|s| s.id >= newest)
    });
    assert_eq!((elsewhere.unread, elsewhere.mentions), (0, 0));
}

async fn receipts_show_who_read_up_to_where(rooms: Rooms) {
    let mut moderator = rooms.moderator(0, "mod").await;
    let mut author = rooms.person(1, "hank", "u-hank", None).await;
    let mut reader = rooms.person(0, "ivy", "u-ivy", None).await;
    moderator.join("team", "mod", None).await;
    author.join("team", "hank", None).await;
    reader.join("team", "ivy", None).await;
    let first = author.say("team", "first").await;
    reader.message_in("team").await;
    // Off by default: a read tells the room nothing.
    reader.read("team", first).await.unwrap();
    settle(&mut author).await;
    assert!(
        !author
            .pending()
            .iter()
            .any(|m| matches!(m, ServerMsg::Seen(_)))
    );

    // Only a moderator turns them on.
    let receipts = |on, req: &str| ClientMsg::Receipts {
        room: "team".into(),
        on,
        req: Some(req.into()),
        cid: Some(req.into()),
    };
    author.send(&receipts(true, "r0")).await;
    let (code, _, _) = author.error().await;
    assert_eq!(code, ErrorCode::Forbidden);
    moderator.send(&receipts(true, "r1")).await;
    moderator
        .take(|m| {
            matches!(m, ServerMsg::Done(frame::Done { req: Some(r), .. }) if r == "r1")
                .then_some(())
        })
        .await;

    let second = author.say("team", "second").await;
    reader.message_in("team").await;
    reader.read("team", second).await.unwrap();
    let seen = author
        .take(|m| match m {
            ServerMsg::Seen(s) => Some(s.clone()),
            _ => None,
        })
        .await;
    assert_eq!((seen.nick.as_str(), seen.id), ("ivy", second));
    // A member joining later sees who read up to where.
    let mut late = rooms.person(1, "jay", "u-jay", None).await;
    let joined = late.join_frame("team", "jay", None).await;
    assert!(joined.receipts);
    assert!(
        joined
            .seen
            .iter()
            .any(|s| s.nick.as_str() == "ivy" && s.id == second),
        "{:?}",
        joined.seen
    );

    // Off again: reads stay private.
    moderator.send(&receipts(false, "r2")).await;
    moderator
        .take(|m| {
            matches!(m, ServerMsg::Done(frame::Done { req: Some(r), .. }) if r == "r2")
                .then_some(())
        })
        .await;
    let third = author.say("team", "third").await;
    reader.message_in("team").await;
    reader.read("team", third).await.unwrap();
    settle(&mut author).await;
    assert!(
        !author
            .pending()
            .iter()
            .any(|m| matches!(m, ServerMsg::Seen(s) if s.id == third))
    );
    let joined = late.join_frame("team", "jay", None).await;
    assert!(!joined.receipts && joined.seen.is_empty());
}

/// Search: the current text only, words and parts of words, CJK, within the token's rooms, paged; the same over the
/// HTTP API. On the in-memory bus it searches what that replica keeps; with Redis, the archive.
async fn search_finds_the_current_text_in_the_rooms_allowed(rooms: &Rooms) {
    let mut writer = rooms.person(0, "kim", "u-kim", None).await;
    writer.join("general", "kim", None).await;
    writer.join("hr", "kim", None).await;
    let released = writer.say("general", "deploy the release").await;
    let edited = writer.say("general", "we deploy tomorrow").await;
    let gone = writer.say("general", "the secret deploy plan").await;
    let cjk = writer.say("general", "私は東京に住んでいます").await;
    let short = writer.say("general", "let's go now").await;
    writer.say("general", "good morning").await;
    writer.say("hr", "deploy salaries").await;
    for (cid, msg) in [
        (
            "e1",
            ClientMsg::Edit {
                room: "general".into(),
                id: edited,
                text: "we ship tomorrow".into(),
                cid: "e1".into(),
            },
        ),
        (
            "d1",
            ClientMsg::Delete {
                room: "general".into(),
                id: gone,
                cid: "d1".into(),
            },
        ),
    ] {
        writer.send(&msg).await;
        writer
            .take(|m| {
                matches!(m, ServerMsg::Ack(frame::Ack { cid: c, .. }) if c == cid).then_some(())
            })
            .await;
    }
    let mut pages = Vec::new();
    for n in 0..25 {
        pages.push(writer.say("general", &format!("paging item {n}")).await);
    }
    let sentinel = writer.say("general", "zzsentinel").await;

    let mut reader = rooms
        .person(1, "lee", "u-lee", Some(&["general", "ops"]))
        .await;
    // With an archive, search finds what it holds: wait for the last message written.
    until!("search finds the newest message", {
        let found = reader.search("zzsentinel", None, None, None).await.ok();
        found.filter(|f| f.results.first().is_some_and(|r| r.message.id == sentinel))
    });
    let ids = |found: &frame::SearchResults| -> Vec<MsgId> {
        found.results.iter().map(|f| f.message.id).collect()
    };

    // A word finds every message whose current text has it, in the rooms the token allows only, newest first.
    let found = reader.search("DEPLOY", None, None, None).await.unwrap();
    assert_eq!(
        ids(&found),
        [released],
        "not the edited-away, the deleted nor the other room's"
    );
    assert_eq!(found.results[0].marks, [(0, 6)]);
    assert!(found.complete);
    let found = reader.search("ship", None, None, None).await.unwrap();
    assert_eq!(ids(&found), [edited]);
    assert_eq!(found.results[0].message.text, "we ship tomorrow");
    assert_eq!(
        ids(&reader.search("secret", None, None, None).await.unwrap()),
        []
    );
    // Parts of words, CJK inside a sentence, short words as whole words, several words.
    assert_eq!(
        ids(&reader.search("releas", None, None, None).await.unwrap()),
        [released]
    );
    let found = reader.search("東京", None, None, None).await.unwrap();
    assert_eq!(ids(&found), [cjk]);
    assert_eq!(found.results[0].marks, [(2, 4)]);
    assert_eq!(
        ids(&reader.search("go", None, None, None).await.unwrap()),
        [short]
    );
    assert_eq!(
        ids(&reader
            .search("release deploy", Some("general"), None, None)
            .await
            .unwrap()),
        [released]
    );
    // Pages: newest first, `before` the last one, every match once.
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = reader
            .search("paging", None, before, Some(10))
            .await
            .unwrap();
        all.extend(ids(&page));
        before = all.last().copied();
        if page.complete {
            break;
        }
        assert_eq!(page.results.len(), 10);
    }
    let mut expected = pages.clone();
    expected.reverse();
    assert_eq!(all, expected);
    // Outside the token's rooms, and bad queries, are refused with typed errors.
    let (code, _) = reader
        .search("deploy", Some("hr"), None, None)
        .await
        .unwrap_err();
    assert_eq!(code, ErrorCode::Forbidden);
    for query in ["", "   ", &"x".repeat(201)] {
        let (code, _) = reader.search(query, None, None, None).await.unwrap_err();
        assert_eq!(code, ErrorCode::BadRequest, "{query:?}");
    }
    let (code, _) = reader.search("x", None, None, Some(51)).await.unwrap_err();
    assert_eq!(code, ErrorCode::BadRequest);

    // The HTTP API: the API key reads every room, a person's token its own.
    let addr = rooms.replica(0).addr;
    let api = |auth: String| async move {
        let (status, _, body): (u16, String, String) = http_request(
            addr,
            "GET",
            "/api/search?q=deploy",
            &[("Authorization", &format!("Bearer {auth}"))],
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let found: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut rooms: Vec<String> = found["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["message"]["room"].as_str().unwrap().to_owned())
            .collect();
        rooms.sort();
        rooms
    };
    assert_eq!(api(KEY.to_owned()).await, ["general", "hr"]);
    assert_eq!(
        api(token("lee", "u-lee", Some(&["general"]), false)).await,
        ["general"]
    );
    let (status, _, body) = http_request(
        addr,
        "GET",
        "/api/search?q=",
        &[("Authorization", &format!("Bearer {KEY}"))],
        None,
    )
    .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_on_the_memory_bus() {
    let rooms = Rooms::start(Bus::Memory, |_| {}).await;
    search_finds_the_current_text_in_the_rooms_allowed(&rooms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_in_the_archive() {
    let rooms = Rooms::start(Bus::Archive, |_| {}).await;
    search_finds_the_current_text_in_the_rooms_allowed(&rooms).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_without_an_archive_says_so() {
    let rooms = Rooms::start(Bus::Redis, |_| {}).await;
    let mut c = rooms.person(0, "max", "u-max", None).await;
    let (code, message) = c.search("anything", None, None, None).await.unwrap_err();
    assert_eq!(code, ErrorCode::NoArchive, "{message}");
}

/// Read positions reach PostgreSQL within about a second, coalesced, and come back when Redis lost everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_positions_are_kept_in_the_archive() {
    let rooms = Rooms::start(Bus::Archive, |_| {}).await;
    let mut reader = rooms.person(0, "nina", "u-nina", None).await;
    let mut author = rooms.person(1, "omar", "u-omar", None).await;
    reader.join("kept", "nina", None).await;
    author.join("kept", "omar", None).await;
    let ids = author.say_batch("kept", "x", 30).await;
    for id in &ids[..20] {
        reader.read("kept", *id).await.unwrap();
    }
    let pg = rooms.pg.as_ref().unwrap().client().await;
    let row = eventually("the read position reaches PostgreSQL", || {
        let (pg, want) = (&pg, ids[19]);
        async move {
            let row = pg
                .query_opt(
                    "SELECT ms, seq, nick FROM reads WHERE room = 'kept' AND person = 'u-nina'",
                    &[],
                )
                .await
                .ok()??;
            let id = MsgId::new(
                u64::try_from(row.get::<_, i64>(0)).unwrap(),
                u64::try_from(row.get::<_, i64>(1)).unwrap(),
            );
            (id == want).then_some(row.get::<_, String>(2))
        }
    })
    .await;
    assert_eq!(row, "nina");
    // An older position never overwrites it there either.
    pg.execute(
        "INSERT INTO reads (room, person, ms, seq, nick) VALUES ('kept', 'u-nina', 1, 0, 'nina') \
         ON CONFLICT (room, person) DO UPDATE SET ms = excluded.ms, seq = excluded.seq \
         WHERE (reads.ms, reads.seq) < (excluded.ms, excluded.seq)",
        &[],
    )
    .await
    .unwrap();
    // Redis loses everything; the room comes back from the archive with the position (and exact counts).
    eventually("the archive holds the room", || {
        let (pg, last) = (&pg, ids[29]);
        async move {
            let row = pg
                .query_opt(
                    "SELECT archived_ms, archived_seq FROM rooms WHERE room = 'kept'",
                    &[],
                )
                .await
                .ok()??;
            (MsgId::new(
                u64::try_from(row.get::<_, i64>(0)).ok()?,
                u64::try_from(row.get::<_, i64>(1)).ok()?,
            ) >= last)
                .then_some(())
        }
    })
    .await;
    let mut conn = rooms._redis.as_ref().unwrap().conn().await;
    let _: () = ::redis::cmd("FLUSHALL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut back = rooms.person(1, "nina", "u-nina", None).await;
    let joined = back.join_frame("kept", "nina", None).await;
    assert_eq!((joined.read, joined.unread), (Some(ids[19]), 10));
}
