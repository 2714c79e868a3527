//! Redis-specific behaviour: channel subscriptions follow local membership, history lives in a capped stream,
//! and replicas survive Redis going away, at start or later, and recover when it returns.

use shared::ErrorCode;

use crate::harness::{Redis, Replica, config, eventually, free_port, http_get};

const CHANNEL: &str = "roomcast:{subs}:live";
/// The revocations' channel, which every replica subscribes to for its whole life.
const REVOCATIONS: &str = "roomcast:{_sessions}:live";

/// The rooms' channels subscribed now, sorted.
async fn room_channels(redis: &Redis) -> Vec<String> {
    let mut channels = redis.channels().await;
    channels.retain(|c| c != REVOCATIONS);
    channels
}

async fn subscribers(redis: &Redis, channel: &str) -> i64 {
    let mut conn = redis.conn().await;
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut conn)
        .await
        .unwrap();
    counts[0].1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_local_membership() {
    let redis = Redis::start().await;
    let r0 = Replica::start(Some(&redis.url())).await;
    let r1 = Replica::start(Some(&redis.url())).await;
    assert!(room_channels(&redis).await.is_empty());
    eventually("both replicas follow the revocations", || async {
        (subscribers(&redis, REVOCATIONS).await == 2).then_some(())
    })
    .await;

    let mut a = r0.client().await;
    a.join("subs", "a", None).await;
    // join answers only once the subscription is live, so no waiting is needed here.
    assert_eq!(room_channels(&redis).await, [CHANNEL]);
    assert_eq!(subscribers(&redis, CHANNEL).await, 1);

    let mut b = r0.client().await;
    b.join("subs", "b", None).await;
    assert_eq!(
        subscribers(&redis, CHANNEL).await,
        1,
        "one subscription per replica, not per member"
    );

    let mut c = r1.client().await;
    c.join("subs", "c", None).await;
    assert_eq!(subscribers(&redis, CHANNEL).await, 2);

    a.send(&shared::ClientMsg::Leave {
        room: "subs".into(),
        req: None,
    })
    .await;
    drop(c);
    eventually(
        "r1 unsubscribes when its last member disconnects",
        || async { (subscribers(&redis, CHANNEL).await == 1).then_some(()) },
    )
    .await;
    // r0 still has b.
    b.say("subs", "still subscribed").await;
    assert_eq!(b.message_in("subs").await.text, "still subscribed");
    drop(b);
    eventually("no channel is left once nobody is in the room", || async {
        room_channels(&redis).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn history_is_a_capped_stream_whose_ids_are_the_message_ids() {
    let redis = Redis::start().await;
    let mut c = config(Some(&redis.url()));
    c.history_limit = 10;
    let replica = Replica::start_with(c).await;
    let mut client = replica.client().await;
    client.join("log", "l", None).await;
    let mut acks = Vec::new();
    for i in 0..250 {
        acks.push(client.say("log", &format!("{i}")).await.to_string());
    }
    let mut conn = redis.conn().await;
    let len: usize = redis::cmd("XLEN")
        .arg("roomcast:{log}:log")
        .query_async(&mut conn)
        .await
        .unwrap();
    // MAXLEN ~ trims whole stream nodes (100 entries by default), so the length stays near the cap, not at it.
    assert!((10..=110).contains(&len), "stream length {len}");
    let newest: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XREVRANGE")
        .arg("roomcast:{log}:log")
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let newest: Vec<String> = newest.into_iter().rev().map(|(id, _)| id).collect();
    assert_eq!(
        newest,
        acks[acks.len() - 3..],
        "stream entry ids are the acked message ids"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_survive_redis_restart_and_relay_again() {
    let mut redis = Redis::start().await;
    let r0 = Replica::start(Some(&redis.url())).await;
    let r1 = Replica::start(Some(&redis.url())).await;
    let mut a = r0.client().await;
    a.join("phoenix", "a", None).await;
    let mut b = r1.client().await;
    b.join("phoenix", "b", None).await;
    a.say("phoenix", "before").await;
    assert_eq!(b.message_in("phoenix").await.text, "before");

    redis.kill();
    // Sends are answered with a typed error; nothing crashes or hangs.
    let refused = a.try_say("phoenix", "during").await;
    assert_eq!(
        refused.map_err(|(code, _)| code),
        Err(ErrorCode::Unavailable)
    );
    // The replica keeps serving HTTP and new WebSockets, and says the bus is down.
    let health = eventually("r0 notices redis is down", || async {
        let (_, body) = http_get(r0.addr, "/healthz").await;
        body.contains("\"bus_up\":false").then_some(body)
    })
    .await;
    assert!(health.contains("\"status\":\"ok\""));
    let mut late = r1.client().await;
    late.send(&shared::ClientMsg::Join {
        person: None,
        room: "late".into(),
        nick: "l".into(),
        since: None,
        epoch: None,
        req: None,
    })
    .await;
    assert_eq!(late.error().await.0, ErrorCode::Unavailable);

    redis.restart().await;
    for replica in [&r0, &r1] {
        eventually("the replica resubscribes after redis returns", || async {
            let (_, body) = http_get(replica.addr, "/healthz").await;
            body.contains("\"bus_up\":true").then_some(())
        })
        .await;
    }
    let give_up = testkit::GiveUp::after_recovery();
    let id = loop {
        if let Ok(id) = a.try_say("phoenix", "after").await {
            break id;
        }
        give_up.check("sends never succeeded again");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // Relay works again across replicas, on the subscription restored without any client action.
    let got = b.message_in("phoenix").await;
    assert_eq!((got.id, got.text.as_str()), (id, "after"));
    late.join_when_available("late", "l").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_without_redis_serves_and_recovers() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let replica = Replica::start(Some(&url)).await;
    let mut client = replica.client().await;
    client
        .send(&shared::ClientMsg::Join {
            person: None,
            room: "early".into(),
            nick: "e".into(),
            since: None,
            epoch: None,
            req: None,
        })
        .await;
    assert_eq!(client.error().await.0, ErrorCode::Unavailable);
    let (status, body) = http_get(replica.addr, "/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"bus_up\":false"), "{body}");

    let _redis = Redis::start_on(port).await;
    client.join_when_available("early", "e").await;
    let id = client.say("early", "hello").await;
    assert_eq!(client.message_in("early").await.id, id);
}
