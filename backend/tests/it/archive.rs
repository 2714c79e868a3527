//! PostgreSQL as the system of record: a real PostgreSQL, a real Redis, two replicas. Every stored event reaches the
//! archive exactly once and in order, scrolling back reaches a room's first message through it with the state a
//! connected member sees, and faults — PostgreSQL killed, a replica killed while archiving, Redis restarted empty —
//! lose nothing acked (and archived), counted exactly.

use std::collections::BTreeMap;

use shared::{ChatMessage, ClientMsg, MsgId, ServerMsg, frame};

use crate::harness::{Client, Postgres, Redis, Replica, config, eventually};

/// Redis, PostgreSQL and two in-process replicas archiving into it.
struct Stack {
    redis: Redis,
    pg: Postgres,
    replicas: Vec<Replica>,
}

impl Stack {
    async fn start(tune: impl Fn(&mut backend::Config)) -> Self {
        let redis = Redis::start().await;
        let pg = Postgres::start().await;
        let mut replicas = Vec::new();
        for _ in 0..2 {
            replicas.push(Replica::start_with(archived(&redis, &pg, &tune)).await);
        }
        // The replicas migrate the archive's schema as they start.
        let client = pg.client().await;
        eventually("the archive's schema is migrated", || async {
            let row = client
                .query_one("SELECT to_regclass('events') IS NOT NULL", &[])
                .await
                .ok()?;
            row.get::<_, bool>(0).then_some(())
        })
        .await;
        Self {
            redis,
            pg,
            replicas,
        }
    }

    async fn client(&self, i: usize) -> Client {
        self.replicas[i % self.replicas.len()].client().await
    }
}

/// A replica's configuration on `redis`, archiving into `pg`, checking every room each second.
fn archived(redis: &Redis, pg: &Postgres, tune: &impl Fn(&mut backend::Config)) -> backend::Config {
    let mut c = config(Some(&redis.url()));
    c.database_url = Some(pg.url());
    c.archive_sweep_secs = 1;
    tune(&mut c);
    c
}

/// Waits until the archive holds every event Redis stored in `room` (its cursor is Redis's newest offset), and
/// returns how many events the archive has for the room.
async fn archived_all(redis: &Redis, pg: &Postgres, room: &str) -> i64 {
    let client = pg.client().await;
    let conn = redis.conn().await;
    let meta = format!("roomcast:{{{room}}}:meta");
    eventually(&format!("the archive holds every event of {room}"), || {
        let (client, mut conn, meta) = (&client, conn.clone(), &meta);
        async move {
            let seq: Option<i64> = redis::cmd("HGET")
                .arg(meta)
                .arg("seq")
                .query_async(&mut conn)
                .await
                .ok()?;
            let row = client
                .query_opt(
                    "SELECT archived_offset FROM rooms WHERE room = $1",
                    &[&room],
                )
                .await
                .ok()??;
            (Some(row.get::<_, i64>(0)) == seq).then_some(())
        }
    })
    .await;
    let row = client
        .query_one(
            "SELECT count(*), (SELECT gaps FROM rooms WHERE room = $1) FROM events WHERE room = $1",
            &[&room],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, i64>(1),
        0,
        "no event was missing when archived"
    );
    row.get(0)
}

/// Scrolls back from the newest message to the room's first, `limit` at a time; every message once, in order.
async fn scroll_to_the_beginning(c: &mut Client, room: &str, limit: usize) -> Vec<ChatMessage> {
    let mut seen = c.join(room, "reader", None).await;
    loop {
        let before = seen.first().map_or(MsgId::new(u64::MAX, 0), |m| m.id);
        let req = format!("page-{before}");
        c.send(&ClientMsg::History {
            room: room.into(),
            before,
            limit,
            req: Some(req.clone()),
        })
        .await;
        let (older, complete) = c
            .take(|m| match m {
                ServerMsg::HistoryPage(frame::HistoryPage {
                    messages,
                    complete,
                    req: Some(r),
                    ..
                }) if *r == req => Some((messages.clone(), *complete)),
                ServerMsg::Error(frame::Error {
                    req: Some(r),
                    code,
                    message,
                    ..
                }) if *r == req => panic!("history refused: {code:?} {message}"),
                _ => None,
            })
            .await;
        assert!(older.iter().all(|m| m.id < before), "only older messages");
        seen.splice(0..0, older);
        if complete {
            return seen;
        }
    }
}

/// What a message should look like: its text now, deleted, reactions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Expected {
    text: String,
    deleted: bool,
    reactions: BTreeMap<String, u32>,
}

fn shown(m: &ChatMessage) -> Expected {
    Expected {
        text: m.text.clone(),
        deleted: m.deleted,
        reactions: m
            .reactions
            .iter()
            .map(|r| (r.emoji.clone(), r.count))
            .collect(),
    }
}

async fn act(c: &mut Client, msg: ClientMsg, cid: &str) -> MsgId {
    c.send(&msg).await;
    c.take(|m| match m {
        ServerMsg::Ack(frame::Ack { cid: k, id, .. }) if k == cid => Some(*id),
        ServerMsg::Error(frame::Error {
            req: Some(k),
            code,
            message,
            ..
        }) if k == cid => panic!("{cid} refused: {code:?} {message}"),
        _ => None,
    })
    .await
}

/// 5,000 messages (and their edits, reactions and deletions) in a room whose Redis keeps 100: the archive holds
/// every event once, Redis only its window, and a reader scrolls back to the first message, seeing each in the same
/// state a member who stayed sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_is_archived_whole_and_scrolls_back_to_its_first_message() {
    let stack = Stack::start(|c| c.history_limit = 100).await;
    let r = "longroom";
    let (mut alice, mut bob) = (stack.client(0).await, stack.client(1).await);
    alice.join(r, "alice", None).await;
    bob.join(r, "bob", None).await;
    let mut expected: BTreeMap<MsgId, Expected> = BTreeMap::new();
    let mut events = 0;
    for round in 0..100 {
        let ids = alice.say_batch(r, &format!("round {round}"), 50).await;
        events += ids.len();
        for id in &ids {
            expected.insert(
                *id,
                Expected {
                    text: format!("round {round}"),
                    ..Expected::default()
                },
            );
        }
        // Acted on while in Redis's window: an edit, a reaction, a deletion per round.
        let cid = format!("e{round}");
        let edit = ClientMsg::Edit {
            room: r.into(),
            id: ids[1],
            text: format!("edited {round}"),
            cid: cid.clone(),
        };
        act(&mut alice, edit, &cid).await;
        expected.get_mut(&ids[1]).unwrap().text = format!("edited {round}");
        let cid = format!("r{round}");
        let react = ClientMsg::React {
            room: r.into(),
            id: ids[2],
            emoji: "👍".into(),
            on: true,
            cid: cid.clone(),
        };
        act(&mut bob, react, &cid).await;
        expected
            .get_mut(&ids[2])
            .unwrap()
            .reactions
            .insert("👍".into(), 1);
        let cid = format!("d{round}");
        let delete = ClientMsg::Delete {
            room: r.into(),
            id: ids[3],
            cid: cid.clone(),
        };
        act(&mut alice, delete, &cid).await;
        *expected.get_mut(&ids[3]).unwrap() = Expected {
            deleted: true,
            ..Expected::default()
        };
        events += 3;
    }
    let archived = archived_all(&stack.redis, &stack.pg, r).await;
    assert_eq!(archived, i64::try_from(events).unwrap(), "every event once");
    let mut conn = stack.redis.conn().await;
    let kept: usize = redis::cmd("XLEN")
        .arg(format!("roomcast:{{{r}}}:log"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        kept < 500,
        "Redis keeps its window, not the room: {kept} entries"
    );
    // A deleted message's text is gone from the archive too.
    let leftover: i64 = stack
        .pg
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE room = $1 AND kind = 'message' AND state->>'d' = '1' \
             AND body->>'text' <> ''",
            &[&r],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(leftover, 0, "deleted texts erased");

    let mut carol = stack.client(1).await;
    let seen = scroll_to_the_beginning(&mut carol, r, 200).await;
    let ids: Vec<MsgId> = seen.iter().map(|m| m.id).collect();
    assert_eq!(
        ids,
        expected.keys().copied().collect::<Vec<_>>(),
        "every message once, in order, back to the first"
    );
    for m in &seen {
        assert_eq!(shown(m), expected[&m.id], "message {}", m.id);
    }
}

/// The archive's ids for `room`, oldest first.
async fn archived_ids(pg: &Postgres, room: &str) -> Vec<MsgId> {
    pg.client()
        .await
        .query(
            "SELECT ms, seq FROM events WHERE room = $1 ORDER BY ms, seq",
            &[&room],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            MsgId::new(
                u64::try_from(row.get::<_, i64>(0)).unwrap(),
                u64::try_from(row.get::<_, i64>(1)).unwrap(),
            )
        })
        .collect()
}

/// The archive holds exactly the acked events of `room`: each once, none more, none missing (printed as counts).
async fn archive_equals(name: &str, redis: &Redis, pg: &Postgres, room: &str, acked: &[MsgId]) {
    archived_all(redis, pg, room).await;
    let archived = archived_ids(pg, room).await;
    let mut expected = acked.to_vec();
    expected.sort_unstable();
    expected.dedup();
    let missing = expected.iter().filter(|id| !archived.contains(id)).count();
    let strangers = archived.iter().filter(|id| !expected.contains(id)).count();
    println!(
        "archive fault={name} acked={} archived={} missing={missing} never_acked={strangers}",
        expected.len(),
        archived.len()
    );
    assert_eq!(
        (missing, strangers),
        (0, 0),
        "{name}: the archive equals what was acked"
    );
    assert_eq!(archived, expected, "{name}: each once, in id order");
}

/// The archive's state as `/readyz` shows it.
async fn readyz_archive(addr: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = crate::harness::http_get(addr, "/readyz").await;
    assert_eq!(
        status, 200,
        "the archive's state never makes a replica unready: {body}"
    );
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["archive"].clone()
}

/// PostgreSQL killed mid-traffic: sends go on (acked, waiting in Redis), `/readyz` shows the archive down and
/// behind; once it is back the archive catches up, and holds exactly what was acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_mid_traffic_the_archive_ends_equal_to_what_was_acked() {
    let mut stack = Stack::start(|c| c.history_limit = 50).await;
    let urls: Vec<String> = stack.replicas.iter().map(Replica::ws_url).collect();
    let pg = std::sync::Arc::new(tokio::sync::Mutex::new(std::mem::replace(
        &mut stack.pg,
        Postgres::start().await,
    )));
    let killed = pg.clone();
    let outcome = testkit::traffic::run_traffic(
        "postgres killed",
        "pgkill",
        urls.clone(),
        vec![urls.clone(), urls.iter().rev().cloned().collect()],
        300,
        100,
        async move { killed.lock().await.kill() },
    )
    .await;
    outcome.assert_exact();
    // Down: the lag is visible, and nothing is lost meanwhile.
    let addr = stack.replicas[0].addr;
    eventually("readyz shows the archive down and behind", || async {
        let archive = readyz_archive(addr).await;
        (archive["up"] == false && archive["lag_events"].as_u64() > Some(100)).then_some(())
    })
    .await;
    let mut pg = std::sync::Arc::into_inner(pg).unwrap().into_inner();
    pg.start_again().await;
    archive_equals(
        "postgres killed",
        &stack.redis,
        &pg,
        "pgkill",
        &outcome.sent.acked,
    )
    .await;
    eventually("readyz shows the archive caught up", || async {
        let archive = readyz_archive(addr).await;
        (archive["up"] == true && archive["lag_events"] == 0).then_some(())
    })
    .await;
}

/// A replica SIGKILLed while it archives (the sender writes through it, so it archives all the time): the other
/// replica takes the room over (its sweep finds the events the dead one left, and the dead one's lock went with its
/// connection); the archive holds exactly what was acked, and every member got every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_while_archiving_loses_nothing() {
    let redis = Redis::start().await;
    let pg = Postgres::start().await;
    let flags = [
        "--database-url",
        &pg.url(),
        "--archive-sweep-secs",
        "1",
        "--history-limit",
        "50",
    ];
    let mut doomed = crate::harness::replica_process(&redis.url(), "arch-a", &flags).await;
    let survivor = crate::harness::replica_process(&redis.url(), "arch-b", &flags).await;
    let urls = vec![doomed.ws_url(), survivor.ws_url()];
    let kill = async { doomed.kill9() };
    let outcome = testkit::traffic::run_traffic(
        "replica killed while archiving",
        "archkill",
        urls.clone(),
        vec![urls.clone(), vec![survivor.ws_url()]],
        300,
        150,
        kill,
    )
    .await;
    outcome.assert_exact();
    archive_equals(
        "replica killed while archiving",
        &redis,
        &pg,
        "archkill",
        &outcome.sent.acked,
    )
    .await;
}

/// Redis restarted empty is rebuilt from the archive: a member resumes with `since` + `epoch` and no `reset`, history
/// scrolls back as before, new ids follow the archived ones and the archive goes on without a gap. What can be lost
/// is exactly what was acked and not archived yet when Redis lost its data (here: sent while PostgreSQL was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_rebuilt_from_the_archive() {
    let mut stack = Stack::start(|c| c.history_limit = 20).await;
    let r = "rebuilt";
    let mut writer = stack.client(0).await;
    writer.join(r, "writer", None).await;
    let archived_ids_sent = writer.say_batch(r, "archived", 60).await;
    archived_all(&stack.redis, &stack.pg, r).await;
    let epoch = {
        let mut probe = stack.client(1).await;
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
    // Acked while the archive is down: these live only in Redis.
    stack.pg.kill();
    let unarchived = writer.say_batch(r, "unarchived", 7).await;
    drop(writer);
    stack.redis.restart().await;
    stack.pg.start_again().await;

    // A member that saw up to message 40 resumes: no reset, exactly 41..60, and the lost ones (never archived) are the
    // only gap in the room.
    let since = archived_ids_sent[39];
    let mut back = stack.client(1).await;
    // Retried while the replicas reconnect to the new Redis (`unavailable`), as the browser client does.
    let joined = back
        .join_resuming(r, "back", Some(since), Some(epoch.clone()))
        .await
        .expect("joined");
    assert!(!joined.reset, "the epoch went on: no reset");
    assert_eq!(joined.epoch, epoch);
    let got: Vec<MsgId> = joined.history.iter().map(|m| m.id).collect();
    assert_eq!(
        got,
        archived_ids_sent[40..],
        "exactly what it missed, from the rebuilt window"
    );
    // New messages follow the archived ones, and are archived without a gap.
    let mut writer = stack.client(0).await;
    writer.join(r, "writer", None).await;
    let after = writer.say_batch(r, "after the rebuild", 5).await;
    assert!(after[0] > *archived_ids_sent.last().unwrap());
    let acked: Vec<MsgId> = archived_ids_sent
        .iter()
        .chain(&unarchived)
        .chain(&after)
        .copied()
        .collect();
    let archived = archived_ids(&stack.pg, r).await;
    archived_all(&stack.redis, &stack.pg, r).await;
    let archived_after = archived_ids(&stack.pg, r).await;
    let lost: Vec<&MsgId> = acked
        .iter()
        .filter(|id| !archived_after.contains(id))
        .collect();
    println!(
        "archive fault=redis restarted empty acked={} archived={} lost={} (acked while the archive was down: {})",
        acked.len(),
        archived_after.len(),
        lost.len(),
        unarchived.len()
    );
    assert!(archived.len() <= archived_after.len());
    assert_eq!(
        lost,
        unarchived.iter().collect::<Vec<_>>(),
        "only what was acked and not archived is lost"
    );
    // Scrolling back still reaches the room's first message.
    let mut reader = stack.client(1).await;
    let seen = scroll_to_the_beginning(&mut reader, r, 30).await;
    let ids: Vec<MsgId> = seen.iter().map(|m| m.id).collect();
    let kept: Vec<MsgId> = archived_ids_sent.iter().chain(&after).copied().collect();
    assert_eq!(ids, kept);
}

/// The ids of `room`'s entries in Redis.
async fn redis_ids(redis: &Redis, room: &str) -> Vec<MsgId> {
    let mut conn = redis.conn().await;
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("roomcast:{{{room}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    entries.iter().map(|(id, _)| id.parse().unwrap()).collect()
}

/// Retention: the server keeps events 20 s (`--retention-days` is fractional), a room set to keep them a day keeps
/// them: the job deletes exactly the expired events, from the archive and from Redis, and nothing newer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_exactly_the_expired_in_both_stores() {
    let stack = Stack::start(|c| {
        c.retention_days = Some(20.0 / 86_400.0);
        c.retention_sweep_secs = 1;
        // Redis keeps everything it may: what leaves it is the retention's doing.
        c.history_limit = 1000;
    })
    .await;
    let (short, long) = ("shortlived", "kept");
    let mut moderator = stack.client(0).await;
    moderator.join(short, "writer", None).await;
    moderator.join(long, "writer", None).await;
    // The day-long room is set through the API's moderation endpoint, as an operator would.
    let key = "retention-key-0123456789abcdef";
    let mut c = archived(&stack.redis, &stack.pg, &|c: &mut backend::Config| {
        c.retention_days = Some(20.0 / 86_400.0);
        c.retention_sweep_secs = 1;
    });
    c.api_keys = vec![key.to_owned()];
    let api = Replica::start_with(c).await;
    let (status, _, body) = testkit::http_request(
        api.addr,
        "POST",
        &format!("/api/rooms/{long}/moderation"),
        &[("Authorization", &format!("Bearer {key}"))],
        Some(r#"{"action":"retention","days":1}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let old_short = moderator.say_batch(short, "old", 30).await;
    let old_long = moderator.say_batch(long, "old", 30).await;
    archived_all(&stack.redis, &stack.pg, short).await;
    archived_all(&stack.redis, &stack.pg, long).await;
    // Once the short room's old events are gone from both stores, the same-aged ones of the day-long room stay.
    eventually(
        "the expired events are gone from the archive and from Redis",
        || async {
            let archived = archived_ids(&stack.pg, short).await;
            let kept = redis_ids(&stack.redis, short).await;
            (archived
                .iter()
                .chain(&kept)
                .all(|id| !old_short.contains(id)))
            .then_some(())
        },
    )
    .await;
    let fresh = moderator.say_batch(short, "fresh", 10).await;
    archived_all(&stack.redis, &stack.pg, short).await;
    assert_eq!(
        archived_ids(&stack.pg, short).await,
        fresh,
        "the archive keeps exactly the unexpired"
    );
    assert_eq!(
        redis_ids(&stack.redis, short).await,
        fresh,
        "and so does Redis"
    );
    let long_archived = archived_ids(&stack.pg, long).await;
    assert!(
        old_long.iter().all(|id| long_archived.contains(id)),
        "the room's own retention (a day) keeps its events"
    );
    let deleted: i64 = stack
        .pg
        .client()
        .await
        .query_one("SELECT count(*) FROM events WHERE room = $1", &[&short])
        .await
        .unwrap()
        .get(0);
    println!(
        "retention: short room {} old events expired, {deleted} fresh kept; day-long room {} kept",
        old_short.len(),
        old_long.len()
    );
}

/// An export streams the room's history as JSON Lines, from its first message (through the archive) to its newest
/// (in Redis): each message once, in its current state, each moderation event; resumable with `since`; and the CLI
/// writes the same lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_round_trips_every_message_once_in_its_current_state() {
    let stack = Stack::start(|c| c.history_limit = 30).await;
    let key = "export-key-0123456789abcdef01";
    let mut c = archived(&stack.redis, &stack.pg, &|_: &mut backend::Config| {});
    c.api_keys = vec![key.to_owned()];
    let api = Replica::start_with(c).await;
    let r = "exported";
    let mut alice = stack.client(0).await;
    alice.join(r, "alice", None).await;
    let mut expected: BTreeMap<MsgId, Expected> = BTreeMap::new();
    for round in 0..12 {
        let ids = alice.say_batch(r, &format!("batch {round}"), 20).await;
        for id in &ids {
            expected.insert(
                *id,
                Expected {
                    text: format!("batch {round}"),
                    ..Expected::default()
                },
            );
        }
        let cid = format!("e{round}");
        let edit = ClientMsg::Edit {
            room: r.into(),
            id: ids[0],
            text: format!("batch {round}, edited"),
            cid: cid.clone(),
        };
        act(&mut alice, edit, &cid).await;
        expected.get_mut(&ids[0]).unwrap().text = format!("batch {round}, edited");
        let cid = format!("d{round}");
        act(
            &mut alice,
            ClientMsg::Delete {
                room: r.into(),
                id: ids[1],
                cid: cid.clone(),
            },
            &cid,
        )
        .await;
        *expected.get_mut(&ids[1]).unwrap() = Expected {
            deleted: true,
            ..Expected::default()
        };
        let cid = format!("r{round}");
        act(
            &mut alice,
            ClientMsg::React {
                room: r.into(),
                id: ids[2],
                emoji: "🎉".into(),
                on: true,
                cid: cid.clone(),
            },
            &cid,
        )
        .await;
        expected
            .get_mut(&ids[2])
            .unwrap()
            .reactions
            .insert("🎉".into(), 1);
    }
    let (status, _, body) = testkit::http_request(
        api.addr,
        "POST",
        &format!("/api/rooms/{r}/moderation"),
        &[("Authorization", &format!("Bearer {key}"))],
        Some(r#"{"action":"mute","nick":"troll","secs":60}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let slow: backend::api::Moderated = serde_json::from_str(&body).unwrap();
    // Part of the room is archived and gone from Redis, the newest is only in Redis.
    archived_all(&stack.redis, &stack.pg, r).await;
    let tail = alice.say_batch(r, "tail", 5).await;
    for id in &tail {
        expected.insert(
            *id,
            Expected {
                text: "tail".into(),
                ..Expected::default()
            },
        );
    }
    let export = |since: Option<MsgId>| {
        let path = match since {
            Some(id) => format!("/api/rooms/{r}/export?since={id}"),
            None => format!("/api/rooms/{r}/export"),
        };
        async move {
            let (status, _, body) = testkit::http_request(
                api.addr,
                "GET",
                &path,
                &[("Authorization", &format!("Bearer {key}"))],
                None,
            )
            .await;
            assert_eq!(status, 200, "{body}");
            body
        }
    };
    let lines = export(None).await;
    let frames: Vec<ServerMsg> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let mut messages = BTreeMap::new();
    let mut moderation = Vec::new();
    for frame in &frames {
        match frame {
            ServerMsg::Message(m) => {
                assert!(messages.insert(m.id, shown(m)).is_none(), "{} twice", m.id);
            }
            ServerMsg::Moderation(e) => moderation.push(e.id),
            other => panic!("an export has messages and moderation only: {other:?}"),
        }
    }
    assert_eq!(
        messages, expected,
        "every message once, in its current state"
    );
    assert_eq!(moderation, [slow.id]);
    let ids: Vec<MsgId> = frames
        .iter()
        .map(|f| match f {
            ServerMsg::Message(m) => m.id,
            ServerMsg::Moderation(e) => e.id,
            _ => unreachable!(),
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first");
    // Resumed from the middle: exactly the rest.
    let middle = ids[ids.len() / 2];
    let rest = export(Some(middle)).await;
    assert_eq!(
        rest.lines().collect::<Vec<_>>(),
        lines.lines().skip(ids.len() / 2 + 1).collect::<Vec<_>>()
    );
    // The CLI writes the same lines.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args([
            "--redis-url",
            &stack.redis.url(),
            "--database-url",
            &stack.pg.url(),
        ])
        .args(["export", "--room", r])
        .output()
        .expect("run roomcast export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), lines);
    println!(
        "export: {} lines ({} messages, {} moderation), resumed from the middle: {} lines",
        frames.len(),
        messages.len(),
        moderation.len(),
        rest.lines().count()
    );
}

/// A small filesystem of the test's own (tmpfs, mounted as root), unmounted on drop.
struct SmallDisk {
    dir: std::path::PathBuf,
}

impl SmallDisk {
    fn mount(kib: u32) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "roomcast-small-disk-{}-{}",
            std::process::id(),
            crate::harness::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            mounted.success(),
            "mounting a tmpfs needs root (as `cargo xtask test` and CI run): a full disk is made with one"
        );
        localrun::postgres::hand_over(&dir).unwrap();
        Self { dir }
    }

    /// Fills the disk with a file, all but `spare` bytes.
    fn fill(&self, spare: u64) {
        let free = {
            let out = std::process::Command::new("df")
                .args(["--output=avail", "-B1"])
                .arg(&self.dir)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .nth(1)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        };
        let filler = vec![0u8; usize::try_from(free.saturating_sub(spare)).unwrap()];
        let _ = std::fs::write(self.dir.join("filler"), filler);
    }

    fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The archive's disk full: PostgreSQL refuses the inserts (`No space left on device`), sends go on and wait in Redis,
/// `/healthz` names the cause; once space is freed the archive catches up and holds exactly what was acked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_named_and_loses_nothing() {
    let stack = Stack::start(|c| c.history_limit = 20).await;
    let disk = SmallDisk::mount(2048);
    let admin = stack.pg.client().await;
    admin
        .batch_execute(&format!(
            "CREATE TABLESPACE small LOCATION '{}'",
            disk.dir.display()
        ))
        .await
        .unwrap();
    admin
        .batch_execute("ALTER TABLE events SET TABLESPACE small")
        .await
        .unwrap();
    disk.fill(16 * 1024);
    let r = "fulldisk";
    let mut writer = stack.client(0).await;
    writer.join(r, "writer", None).await;
    let mut acked = Vec::new();
    for round in 0..10 {
        acked.extend(
            writer
                .say_batch(r, &format!("{round} {}", "x".repeat(900)), 30)
                .await,
        );
    }
    let addr = stack.replicas[0].addr;
    eventually("healthz names the full disk", || async {
        let (_, body) = crate::harness::http_get(addr, "/healthz").await;
        let health: serde_json::Value = serde_json::from_str(&body).ok()?;
        let error = health["archive"]["error"].as_str()?.to_owned();
        error.contains("No space left on device").then_some(error)
    })
    .await;
    disk.free();
    archive_equals("full disk", &stack.redis, &stack.pg, r, &acked).await;
}

/// While the archive is down the backlog waits in Redis up to `--archive-backlog-bytes` per room: beyond it new
/// events are refused `unavailable` (nothing is dropped to make room), and accepted again once the archive caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backlog_is_bounded_in_bytes_and_nothing_is_dropped() {
    let mut stack = Stack::start(|c| c.archive_backlog_bytes = 20_000).await;
    let r = "bounded";
    let mut writer = stack.client(0).await;
    writer.join(r, "writer", None).await;
    stack.pg.kill();
    let text = "y".repeat(1000);
    let mut acked = Vec::new();
    let refused = loop {
        match writer.try_say(r, &text).await {
            Ok(id) => acked.push(id),
            Err((code, message)) => break (code, message),
        }
        assert!(acked.len() < 100, "the backlog is bounded");
    };
    assert_eq!(refused.0, shared::ErrorCode::Unavailable, "{}", refused.1);
    // The bound holds in bytes: 20,000 bytes of bodies of a little over 1,000 bytes each.
    assert!(
        (19..=21).contains(&acked.len()),
        "{} acked before the bound",
        acked.len()
    );
    stack.pg.start_again().await;
    archived_all(&stack.redis, &stack.pg, r).await;
    acked.push(writer.say_when_available(r, "after").await);
    archive_equals("backlog bound", &stack.redis, &stack.pg, r, &acked).await;
}

/// A member away for longer than Redis's window resumes from the archive: every event it missed, once, in order, and
/// no `truncated` (the archive reaches back to its `since`), however far behind Redis's window that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_further_back_than_redis_keeps_reads_the_archive() {
    let stack = Stack::start(|c| c.history_limit = 20).await;
    let r = "longaway";
    let mut writer = stack.client(0).await;
    writer.join(r, "writer", None).await;
    let seen = writer.say_batch(r, "seen", 10).await;
    let missed = writer.say_batch(r, "missed", 450).await;
    archived_all(&stack.redis, &stack.pg, r).await;
    let epoch = {
        let mut probe = stack.client(1).await;
        probe
            .join_resuming(r, "probe", None, None)
            .await
            .expect("joined")
            .epoch
    };
    let mut back = stack.client(1).await;
    let joined = back
        .join_resuming(r, "back", Some(*seen.last().unwrap()), Some(epoch))
        .await
        .expect("joined");
    assert!(
        !joined.truncated && !joined.reset,
        "the archive reaches back"
    );
    let mut got: Vec<MsgId> = joined.history.iter().map(|m| m.id).collect();
    while got.len() < missed.len() {
        got.push(back.message_in(r).await.id);
    }
    assert_eq!(got, missed, "every missed message once, in order");
}

/// Waits until the archive holds exactly `acked` for `room` (whatever the Redis topology in front of it), then prints
/// the counts.
pub async fn archive_holds_exactly(name: &str, pg: &Postgres, room: &str, acked: &[MsgId]) {
    let mut expected = acked.to_vec();
    expected.sort_unstable();
    expected.dedup();
    let expected = &expected;
    eventually(
        &format!("{name}: the archive holds exactly what was acked in {room}"),
        || async move { (archived_ids(pg, room).await == *expected).then_some(()) },
    )
    .await;
    println!(
        "archive fault={name} room={room} acked={} archived={} missing=0 never_acked=0",
        expected.len(),
        expected.len()
    );
}
