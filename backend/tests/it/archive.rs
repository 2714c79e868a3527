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
