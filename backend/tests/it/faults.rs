//! Fault tests: real redis-server, replicas as separate `roomcast` processes, and clients that behave like the
//! browser client (resend unacked messages with the same cid, resume with `since` + `epoch`). Each test breaks
//! something under steady traffic, prints one line of counts, and asserts exact counts: every acked message is
//! delivered to every member exactly once, in order. No timing thresholds: waits are bounded only so a broken build
//! fails instead of hanging.

use std::time::Duration;

use shared::{ClientMsg, ErrorCode, MsgId, ServerMsg, close_code, frame};
use testkit::traffic::{run_traffic, run_traffic_reading};
use tokio::net::TcpStream;

use crate::harness::{Client, PATIENCE, Redis, ReplicaProcess, replica_process};

async fn three_replicas(redis: &Redis) -> Vec<ReplicaProcess> {
    let mut out = Vec::new();
    for node in ["fa", "fb", "fc"] {
        out.push(replica_process(&redis.url(), node, &[]).await);
    }
    out
}

async fn total(replicas: &[ReplicaProcess], metric: &str) -> f64 {
    let mut sum = 0.0;
    for r in replicas {
        sum += r.metric(metric).await;
    }
    sum
}

/// Fault 1: Redis drops every Pub/Sub connection mid-traffic (as when a subscriber hits its output-buffer limit).
/// Members stay connected; the replicas resubscribe and backfill what the channel lost. With read traffic: read
/// positions relayed meanwhile may be lost (notices are not stored), and converge on the next move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_connections_killed_lose_nothing() {
    let redis = Redis::start().await;
    let replicas = three_replicas(&redis).await;
    let kill = async {
        let mut conn = redis.conn().await;
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 3, "one Pub/Sub connection per replica was killed");
    };
    let outcome = run_traffic_reading(
        "pubsub-kill",
        "faults",
        vec![replicas[0].ws_url()],
        vec![
            vec![replicas[1].ws_url()],
            vec![replicas[1].ws_url()],
            vec![replicas[2].ws_url()],
        ],
        400,
        150,
        kill,
    )
    .await;
    outcome.assert_exact();
    outcome.assert_reads(&replicas[2].ws_url()).await;
    assert!(
        outcome.members.iter().all(|m| m.reconnects == 0),
        "members stayed connected"
    );
    let backfilled = total(&replicas, "roomcast_backfilled_total").await;
    println!("pubsub-kill: {backfilled} messages backfilled from the streams");
    assert!(
        backfilled > 0.0,
        "the kill made Pub/Sub lose messages, which backfill recovered"
    );
}

/// Fault 2: Redis is shut down and restarted with its append-only file. Sends meanwhile are answered
/// `unavailable` and resent; afterwards nothing acked is missing and nothing is doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_with_aof_loses_nothing() {
    let mut redis = Redis::start_persistent().await;
    let replicas = three_replicas(&redis).await;
    let port = redis.port();
    let restart = async {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _ = redis::cmd("SHUTDOWN")
            .query_async::<redis::Value>(&mut conn)
            .await;
    };
    let urls = |i: usize| vec![replicas[i].ws_url()];
    let traffic = run_traffic(
        "redis-restart-aof",
        "faults",
        urls(0),
        vec![urls(1), urls(1), urls(2)],
        400,
        100,
        restart,
    );
    // Bring Redis back a moment after it went down, while the sender keeps trying.
    let revive = async {
        eventually_down(port).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.start_again().await;
    };
    let (outcome, ()) = tokio::join!(traffic, revive);
    outcome.assert_exact();
    assert!(
        outcome.sent.unavailable > 0,
        "sends during the outage were answered `unavailable`"
    );
}

/// Waits until nothing answers on `port`.
async fn eventually_down(port: u16) {
    let give_up = testkit::GiveUp::after_recovery();
    while TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
        give_up.check(&format!("redis on {port} never went down"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fault 4: one of two replicas is killed with SIGKILL mid-traffic. Its clients (the sender among them) reconnect to
/// the other, resend what was unacked with the same cid and resume with `since`; read positions and counts stay
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_killed_loses_nothing() {
    let redis = Redis::start().await;
    let mut a = replica_process(&redis.url(), "ka", &[]).await;
    let b = replica_process(&redis.url(), "kb", &[]).await;
    let both = vec![a.ws_url(), b.ws_url()];
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill = async move {
        let _ = kill_tx.send(());
    };
    let traffic = run_traffic_reading(
        "replica-kill9",
        "faults",
        both.clone(),
        vec![both.clone(), both.clone(), vec![b.ws_url(), a.ws_url()]],
        400,
        150,
        kill,
    );
    let killer = async {
        kill_rx.await.unwrap();
        a.kill9();
    };
    let (outcome, ()) = tokio::join!(traffic, killer);
    outcome.assert_exact();
    outcome.assert_reads(&b.ws_url()).await;
    assert!(outcome.sent.reconnects > 0, "the sender lost its replica");
    assert!(
        outcome.members[..2].iter().all(|m| m.reconnects > 0),
        "members on the killed replica reconnected"
    );
}

/// Fault 7: Redis stops answering (`CLIENT PAUSE`) for longer than the request timeout. Requests get `unavailable`;
/// a send that Redis runs once it resumes is stored once, however often it was resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_loses_nothing() {
    let redis = Redis::start().await;
    let replicas = three_replicas(&redis).await;
    let pause = async {
        let mut conn = redis.conn().await;
        let _: String = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(3500)
            .arg("ALL")
            .query_async(&mut conn)
            .await
            .unwrap();
    };
    let urls = |i: usize| vec![replicas[i].ws_url()];
    let outcome = run_traffic(
        "redis-pause",
        "faults",
        urls(0),
        vec![urls(1), urls(2)],
        300,
        100,
        pause,
    )
    .await;
    outcome.assert_exact();
    assert!(
        outcome.sent.unavailable > 0,
        "sends during the pause were answered `unavailable`"
    );
}

/// Fault 3: Redis restarts empty (no persistence). Members holding a position are told `reset` (those connected by
/// a `gap` frame, one resuming with its old `since` + `epoch` by `joined.reset`); nothing is shown twice, and
/// messages after the restart arrive exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_tells_every_member() {
    let mut redis = Redis::start().await;
    let a = replica_process(&redis.url(), "ea", &[]).await;
    let b = replica_process(&redis.url(), "eb", &[]).await;
    let mut writer = Client::connect(&a.ws_url()).await;
    writer.join("lost", "writer", None).await;
    let mut on_a = Client::connect(&a.ws_url()).await;
    let mut on_b = Client::connect(&b.ws_url()).await;
    let epoch_before = joined_epoch(&mut on_a, "lost").await;
    assert_eq!(joined_epoch(&mut on_b, "lost").await, epoch_before);
    let mut before = Vec::new();
    for i in 0..20 {
        before.push(writer.say("lost", &format!("before {i}")).await);
    }
    for c in [&mut on_a, &mut on_b] {
        for id in &before {
            assert_eq!(c.message_in("lost").await.id, *id);
        }
    }
    let resume_from = *before.last().unwrap();

    redis.restart().await; // SIGKILL, then an empty server on the same port.

    // Connected members are told their history is gone, once each.
    let mut new_epoch = String::new();
    for c in [&mut on_a, &mut on_b] {
        let (epoch, reset) = c
            .take(|m| match m {
                ServerMsg::Gap(frame::Gap { epoch, reset, .. }) => Some((epoch.clone(), *reset)),
                _ => None,
            })
            .await;
        assert!(reset, "the gap says the whole history was reset");
        assert_ne!(epoch, epoch_before);
        new_epoch = epoch;
    }
    // A client that was away resumes with its old position and is told the same.
    let mut returning = Client::connect(&b.ws_url()).await;
    returning
        .send(&ClientMsg::Join {
            person: None,
            room: "lost".into(),
            nick: "returning".into(),
            since: Some(resume_from),
            epoch: Some(epoch_before.clone()),
            req: Some("back".into()),
        })
        .await;
    let (reset, epoch) = returning
        .take(|m| match m {
            ServerMsg::Joined(frame::Joined { reset, epoch, .. }) => Some((*reset, epoch.clone())),
            ServerMsg::Error(frame::Error { code, message, .. }) => {
                panic!("join refused: {code:?} {message}")
            }
            _ => None,
        })
        .await;
    assert!(reset, "joined says reset");
    assert_eq!(epoch, new_epoch);
    // Life goes on in the new epoch: each later message arrives exactly once everywhere.
    let mut after = Vec::new();
    for i in 0..20 {
        after.push(
            writer
                .say_when_available("lost", &format!("after {i}"))
                .await,
        );
    }
    let mut counts = Vec::new();
    for c in [&mut on_a, &mut on_b, &mut returning] {
        let mut got = Vec::new();
        for _ in 0..after.len() {
            got.push(c.message_in("lost").await.id);
        }
        assert_eq!(got, after, "exactly the new messages, in order");
        counts.push(got.len());
    }
    // Nothing else (no old message again, no second gap) is pending.
    let marker = writer.say("lost", "marker").await;
    for c in [&mut on_a, &mut on_b, &mut returning] {
        let next = c.message_in("lost").await;
        assert_eq!(next.id, marker);
        assert!(
            !c.pending().iter().any(|m| matches!(m, ServerMsg::Gap(_))),
            "told once"
        );
    }
    println!(
        "fault=redis-restart-empty before={} after={} delivered_after_per_member={counts:?} lost=0 duplicated=0 \
         told_reset=3/3",
        before.len(),
        after.len()
    );
}

async fn joined_epoch(c: &mut Client, room: &str) -> String {
    c.send(&ClientMsg::Join {
        person: None,
        room: room.into(),
        nick: "m".into(),
        since: None,
        epoch: None,
        req: Some("e".into()),
    })
    .await;
    c.take(|m| match m {
        ServerMsg::Joined(frame::Joined { epoch, .. }) => Some(epoch.clone()),
        _ => None,
    })
    .await
}

/// Fault 5: the same cid resent — after a lost ack, on the same connection, and across a reconnect to another
/// replica — is stored once and always answered with the same id; reusing it for another text is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_cid_is_stored_once() {
    let redis = Redis::start().await;
    let a = replica_process(&redis.url(), "ia", &[]).await;
    let b = replica_process(&redis.url(), "ib", &[]).await;
    let mut watcher = Client::connect(&b.ws_url()).await;
    watcher.join("idem", "watcher", None).await;

    // A send whose ack is lost: the connection drops right after the frame leaves.
    let mut lost = Client::connect(&a.ws_url()).await;
    lost.join("idem", "alice", None).await;
    let send = |text: &str, cid: &str| ClientMsg::Send {
        room: "idem".into(),
        text: text.into(),
        cid: cid.into(),
        reply_to: None,
    };
    lost.send(&send("typed once", "tab1-1")).await;
    drop(lost);

    // The client reconnects to the other replica and resends it, twice.
    let mut again = Client::connect(&b.ws_url()).await;
    again.join("idem", "alice", None).await;
    let mut ids = Vec::new();
    let mut duplicates = 0;
    for _ in 0..2 {
        again.send(&send("typed once", "tab1-1")).await;
        let (id, duplicate) = again
            .take(|m| match m {
                ServerMsg::Ack(frame::Ack { id, duplicate, .. }) => Some((*id, *duplicate)),
                ServerMsg::Error(frame::Error { code, message, .. }) => {
                    panic!("{code:?} {message}")
                }
                _ => None,
            })
            .await;
        ids.push(id);
        duplicates += usize::from(duplicate);
    }
    assert_eq!(ids[0], ids[1], "the same id every time");
    assert!(duplicates >= 1, "the second resend is a duplicate");
    // Reusing the cid for a different text is refused and stores nothing.
    again.send(&send("something else", "tab1-1")).await;
    let (code, _, _) = again.error().await;
    assert_eq!(code, ErrorCode::CidReused);
    // The same cid from another nick is another message.
    let mut bob = Client::connect(&a.ws_url()).await;
    bob.join("idem", "bob", None).await;
    bob.send(&send("typed once", "tab1-1")).await;
    let bobs = bob
        .take(|m| match m {
            ServerMsg::Ack(frame::Ack { id, .. }) => Some(*id),
            _ => None,
        })
        .await;
    assert_ne!(bobs, ids[0]);
    // The watcher saw alice's message once and bob's once, nothing else.
    let marker = bob.say("idem", "marker").await;
    let mut seen = Vec::new();
    loop {
        let m = watcher.message_in("idem").await;
        seen.push(m.id);
        if m.id == marker {
            break;
        }
    }
    assert_eq!(seen, [ids[0], bobs, marker]);
    let mut fresh = Client::connect(&a.ws_url()).await;
    let history = fresh.join("idem", "reader", None).await;
    let alice: Vec<_> = history
        .iter()
        .filter(|m| m.text == "typed once" && m.nick.as_str() == "alice")
        .collect();
    assert_eq!(alice.len(), 1, "stored once");
    println!(
        "fault=resent-cid sends=4 stored=1 same_id=true duplicate_acks={duplicates} cid_reused_refused=1 lost=0 duplicated=0"
    );
}

/// Fault 6: a client that never reads while its room is busy is closed with 1013; the replica's memory stays bounded
/// by the queue, not by the traffic; the others are not slowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_and_memory_stays_bounded() {
    let redis = Redis::start().await;
    let replica = replica_process(&redis.url(), "sa", &[]).await;
    let mut stalled = Vec::new();
    for i in 0..4 {
        let mut c = Client::connect_small_buffer(replica.addr).await;
        c.join("busy", &format!("stalled{i}"), None).await;
        stalled.push(c);
    }
    let mut writer = Client::connect(&replica.ws_url()).await;
    writer.join("busy", "writer", None).await;
    let rss_before = replica.rss_kib();
    let text = "字".repeat(2000);
    let batches = 300;
    let mut stalled = Some(stalled);
    let mut readers = Vec::new();
    for _ in 0..batches {
        writer.say_batch("busy", &text, 10).await;
        // Once the replica has closed all four, they read what reached them, at once and side by side: a close
        // frame waits behind everything the stalled socket holds, and the replica gives up writing it after 10 s.
        if stalled.is_some() && replica.metric("roomcast_slow_consumers_total").await >= 4.0 {
            readers = read_to_the_close(stalled.take().unwrap_or_default());
        }
    }
    let volume_kib = (batches * 10 * text.len() * 4 / 1024) as u64;
    let rss_after = replica.rss_kib();
    let closed = replica.metric("roomcast_slow_consumers_total").await;
    if let Some(stalled) = stalled.take() {
        readers = read_to_the_close(stalled);
    }
    let mut codes = Vec::new();
    for reader in readers {
        codes.push(reader.await.expect("reader task").1);
    }
    println!(
        "fault=never-reading-client stalled=4 closed_1013={closed} rss_before_kib={rss_before} rss_after_kib={rss_after} \
         would_have_buffered_kib={volume_kib}"
    );
    assert_eq!(codes, [Some(close_code::TRY_AGAIN_LATER); 4]);
    assert_eq!(closed, 4.0);
    assert!(
        rss_after.saturating_sub(rss_before) < volume_kib / 4,
        "memory grows with the bounded queues, not with the traffic"
    );
    writer.say("busy", "still fine").await;
}

/// Reads each client until the server closes it, each in a task of its own; every task answers with the message ids
/// it got and the close code.
fn read_to_the_close(
    clients: Vec<Client>,
) -> Vec<tokio::task::JoinHandle<(Vec<MsgId>, Option<u16>)>> {
    clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while let Some(msg) = c.next_or_close().await {
                    if let ServerMsg::Message(m) = msg {
                        got.push(m.id);
                    }
                }
                let code = c.closed.clone().flatten().map(|f| u16::from(f.code));
                (got, code)
            })
        })
        .collect()
}

/// Fault 8: long messages. A room whose history is several MiB of maximum-length multi-byte messages can be joined,
/// resumed from far back, and resumed after a 1013 close: every message exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_mib_of_long_messages_are_joined_and_resumed_exactly() {
    let redis = Redis::start().await;
    let replica = replica_process(&redis.url(), "la", &["--history-on-join", "1000"]).await;
    let mut stalled = Client::connect_small_buffer(replica.addr).await;
    stalled.join("long", "stalled", None).await;
    let mut stalled = Some(stalled);
    let mut reader = Vec::new();
    let mut writer = Client::connect(&replica.ws_url()).await;
    writer.join("long", "writer", None).await;
    let text = "字".repeat(shared::validate::TEXT_MAX_CHARS);
    let mut ids = Vec::new();
    for _ in 0..100 {
        ids.extend(writer.say_batch("long", &text, 10).await);
        // Closed for not reading: it now reads what reached it (before the replica gives up on its close frame).
        if stalled.is_some() && replica.metric("roomcast_slow_consumers_total").await >= 1.0 {
            reader = read_to_the_close(stalled.take().into_iter().collect());
        }
    }
    if let Some(stalled) = stalled.take() {
        reader = read_to_the_close(vec![stalled]);
    }
    let mib = ids.len() * text.len() / (1024 * 1024);
    // A newcomer gets all of it: `joined` plus the backlog frames.
    let mut newcomer = Client::connect(&replica.ws_url()).await;
    let all: Vec<MsgId> = newcomer
        .join_expecting("long", "newcomer", None, ids.len())
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(all, ids, "joined from scratch");
    // Resuming from far back gets exactly the rest.
    let mut far = Client::connect(&replica.ws_url()).await;
    let rest: Vec<MsgId> = far
        .join_expecting("long", "far", Some(ids[9]), ids.len() - 10)
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(rest, ids[10..], "resumed from far back");
    // The client that never read was closed with 1013; it resumes from what it got.
    let (got, code) = reader
        .pop()
        .expect("one reader")
        .await
        .expect("reader task");
    assert_eq!(code, Some(close_code::TRY_AGAIN_LATER));
    assert_eq!(got, ids[..got.len()]);
    let mut resumed = Client::connect(&replica.ws_url()).await;
    let since = got.last().copied();
    let tail: Vec<MsgId> = resumed
        .join_expecting("long", "stalled", since, ids.len() - got.len())
        .await
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(tail, ids[got.len()..], "resumed after 1013");
    println!(
        "fault=long-messages messages={} history_mib={mib} joined_exactly=1 resumed_far_back_exactly=1 \
         before_1013={} resumed_after_1013={} lost=0 duplicated=0",
        ids.len(),
        got.len(),
        tail.len()
    );
}

/// A member whose replica is killed leaves the member lists once that replica has missed three heartbeats: a
/// surviving replica announces the leave, once, and later joiners no longer see the member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_members_leave_the_lists() {
    let redis = Redis::start().await;
    // Heartbeats of 1 s: bob's replica counts as gone 3 s after its last one. Shorter would be quicker and wrong: a
    // busy machine can hold a live replica up for longer than three short heartbeats, and its members would leave.
    let flags = [
        "--presence-heartbeat-ms",
        "1000",
        "--presence-grace-ms",
        "300",
    ];
    let a = replica_process(&redis.url(), "pa", &flags).await;
    let mut b = replica_process(&redis.url(), "pb", &flags).await;
    let mut alice = Client::connect(&a.ws_url()).await;
    alice
        .join_as("hall", "alice", "person-alice")
        .await
        .unwrap();
    let mut bob = Client::connect(&b.ws_url()).await;
    let (members, online) = bob.join_as("hall", "bob", "person-bob").await.unwrap();
    assert_eq!((members, online), (vec!["alice".into(), "bob".into()], 2));
    let presence = |m: &ServerMsg| match m {
        ServerMsg::Presence(p) => Some((p.nick.to_string(), p.event)),
        _ => None,
    };
    assert_eq!(
        alice.take(presence).await,
        ("bob".into(), shared::PresenceKind::Joined)
    );
    b.kill9();
    let killed = std::time::Instant::now();
    assert_eq!(
        tokio::time::timeout(PATIENCE, alice.take(presence))
            .await
            .expect("bob's leave was never announced"),
        ("bob".into(), shared::PresenceKind::Left)
    );
    println!(
        "bob's leave announced {} ms after his replica was killed (bound: 3 heartbeats of 1 s + one more)",
        killed.elapsed().as_millis()
    );
    let mut carol = Client::connect(&a.ws_url()).await;
    let (members, online) = carol
        .join_as("hall", "carol", "person-carol")
        .await
        .unwrap();
    assert_eq!((members, online), (vec!["alice".into(), "carol".into()], 2));
    // Once only: a marker after a few more heartbeats finds no second leave.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let marker = alice.say("hall", "marker").await;
    while alice.message_in("hall").await.id != marker {}
    let lefts = alice
        .pending()
        .iter()
        .filter(|m| matches!(m, ServerMsg::Presence(p) if p.event == shared::PresenceKind::Left))
        .count();
    assert_eq!(lefts, 0, "bob's leave was announced more than once");
}

/// Fault 9: a replica cut off from Redis — the link between them goes silent (no RST, no FIN: `testkit::Link`
/// stops forwarding) — while its clients stay connected to it. The policy: its sends are answered `unavailable`
/// (the client resends with the same `cid`), `/readyz` fails, and once it has been cut off for
/// `--cutoff-close-secs` it closes its connections (each at its next ping) and refuses new ones, so its clients
/// resume on a replica that reaches Redis. Exact counts: nothing acked is lost, nothing is shown twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_sends_its_clients_elsewhere() {
    let redis = Redis::start().await;
    let link = testkit::Link::start(([127, 0, 0, 1], redis.port()).into()).await;
    let a = replica_process(
        &link.redis_url(),
        "cut-a",
        &["--cutoff-close-secs", "2", "--ping-secs", "1"],
    )
    .await;
    let b = replica_process(&redis.url(), "cut-b", &[]).await;
    let (a_url, b_url) = (a.ws_url(), b.ws_url());
    let cut = async {
        link.cut();
    };
    let outcome = run_traffic(
        "replica-cut-off",
        "faults",
        vec![a_url.clone(), b_url.clone()],
        vec![
            vec![a_url.clone(), b_url.clone()],
            vec![a_url.clone(), b_url.clone()],
            vec![b_url.clone(), a_url.clone()],
        ],
        400,
        150,
        cut,
    )
    .await;
    outcome.assert_exact();
    assert!(
        outcome.sent.reconnects > 0,
        "the sender left the cut-off replica"
    );
    assert!(
        outcome.members[..2].iter().all(|m| m.reconnects > 0),
        "the members on the cut-off replica resumed elsewhere"
    );
    // Still cut off: not ready, and new WebSockets are turned away.
    let (status, body) = testkit::http_get(a.addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        Client::try_connect(&a_url).await.is_none(),
        "a new WebSocket to the cut-off replica is refused"
    );
    // Healed, it serves again.
    link.heal();
    testkit::eventually("the healed replica is ready again", || async {
        (testkit::http_get(a.addr, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    let mut back = Client::connect(&a_url).await;
    let history = back.join("faults", "back", None).await;
    assert!(!history.is_empty(), "the healed replica serves the room");
}

/// Fault 10: a slow, lossy link between a replica and Redis — every byte 100 ms late each way (a 200 ms round trip,
/// `testkit::Link`; 200 ms each way and more messages with `--chaos`), and 5 % of the link's packets dropped in the
/// kernel (`testkit::Loss`, an `nft` rule), which TCP retransmits, out of order — with the sender and a member on
/// that replica. Nothing is lost or shown twice; how slow it got is printed (the longest wait between two acks), not
/// asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lossy_link_to_redis_loses_nothing() {
    let (delay, count) = if crate::harness::chaos() {
        (Duration::from_millis(200), 200)
    } else {
        (Duration::from_millis(100), 80)
    };
    let redis = Redis::start().await;
    let link = testkit::Link::start_slow(([127, 0, 0, 1], redis.port()).into(), delay).await;
    let a = replica_process(&link.redis_url(), "slow-a", &[]).await;
    let b = replica_process(&redis.url(), "slow-b", &[]).await;
    let (a_url, b_url) = (a.ws_url(), b.ws_url());
    let _loss = testkit::Loss::start(link.port(), 5);
    let started = std::time::Instant::now();
    let outcome = run_traffic(
        "slow-lossy-link",
        "faults",
        vec![a_url.clone()],
        vec![vec![a_url.clone()], vec![b_url.clone()]],
        count,
        0,
        async {},
    )
    .await;
    println!(
        "slow-lossy-link: {} messages in {:.1} s over a {} ms round trip with 5 % packet loss",
        outcome.sent.acked.len(),
        started.elapsed().as_secs_f64(),
        2 * delay.as_millis()
    );
    outcome.assert_exact();
}
