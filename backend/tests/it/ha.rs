//! High availability, proven by killing things under load: a Sentinel failover (with and without
//! `--redis-wait-replicas`), Pub/Sub through Redis replicas when one of them dies, and a Redis Cluster relaying with
//! sharded Pub/Sub across its shards and through a master's failover. Real `redis-server` processes, replicas as
//! `roomcast` processes, exact counts.

use std::collections::HashSet;

use shared::MsgId;

use testkit::traffic::{Outcome, run_traffic};
use testkit::{ClusterSet, SentinelSet};

use crate::harness::{Client, Postgres, Redis, ReplicaProcess, eventually, replica_process};

/// Sentinel: the master is killed with SIGKILL under steady traffic from clients on two replicas. With
/// `--redis-wait-replicas 2` — every replica Sentinel could promote — every acked message survives the failover,
/// whichever replica is promoted; the killed node comes back (empty) and the Sentinels make it a replica of the new
/// master, so two replicas can confirm again. (With fewer than all, Sentinel may promote a replica that lacks the
/// newest acked writes: it picks by the replication offsets it last read, up to a second old.) Then, without
/// waiting, the new master is killed too and the window asynchronous replication leaves is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_loses_nothing_acked_with_wait() {
    let mut set = SentinelSet::start(2).await;
    let url = set.url();
    // Archiving into PostgreSQL meanwhile: the archive, behind the failover, holds every acked event too.
    let pg = Postgres::start().await;
    let pg_url = pg.url();
    let flags = [
        "--redis-wait-replicas",
        "2",
        "--database-url",
        &pg_url,
        "--archive-sweep-secs",
        "1",
    ];
    let a = replica_process(&url, "sa", &flags).await;
    let b = replica_process(&url, "sb", &flags).await;
    let first_master = set.master_port().await;
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let kill = async move {
        let _ = killed_tx.send(());
    };
    let traffic = run_traffic(
        "sentinel-failover-wait-all",
        "ha",
        vec![a.ws_url(), b.ws_url()],
        vec![vec![a.ws_url()], vec![b.ws_url()], vec![b.ws_url()]],
        300,
        100,
        kill,
    );
    let failover = async {
        killed_rx.await.unwrap();
        let killed = set.kill_master().await;
        set.revive_after_failover(killed).await;
    };
    let (outcome, ()) = tokio::join!(traffic, failover);
    outcome.assert_exact();
    crate::archive::archive_holds_exactly("sentinel failover", &pg, "ha", &outcome.sent.acked)
        .await;
    let second_master = set.master_port().await;
    assert_ne!(second_master, first_master, "Sentinel promoted a replica");
    println!(
        "sentinel failover (wait for both replicas): sends stalled for {} ms at most",
        outcome.sent.longest_wait.as_millis()
    );

    // The same again without waiting for replicas, on fresh replicas of Roomcast and the remaining Redis replica.
    drop((a, b));
    let a = replica_process(&url, "sc", &[]).await;
    let b = replica_process(&url, "sd", &[]).await;
    let kill = async {
        set.kill_master().await;
    };
    let outcome = across_two("sentinel-failover-nowait", "ha2", &a, &b, kill).await;
    let (lost, duplicated) = outcome.report();
    // An edit or reaction whose message was acked by the killed master but never replicated is refused as
    // `message_gone`: the only answer besides an ack, and only here, where acked writes can be lost.
    assert_eq!(
        outcome.sent.acked.len() + outcome.sent.gone.len(),
        outcome.sent.sent,
        "sending resumed"
    );
    // And such a message really is gone: the room's history, read from just before it, does not have it.
    for &lost_message in &outcome.sent.gone {
        let mut reader = Client::connect(&a.ws_url()).await;
        let just_before = MsgId {
            ms: lost_message.ms - 1,
            seq: u64::MAX,
        };
        let history = reader.join("ha2", "reader", Some(just_before)).await;
        assert!(
            history.iter().all(|m| m.id != lost_message),
            "{lost_message} was refused as gone but is in the history"
        );
    }
    assert_eq!(duplicated, 0, "never shown twice");
    assert_ne!(set.master_port().await, second_master, "failed over again");
    println!(
        "sentinel failover (no wait): {lost} acked deliveries lost in the asynchronous-replication window, {} \
         actions on messages lost there",
        outcome.sent.gone.len()
    );
}

/// Pub/Sub through Redis replicas: two Roomcast replicas subscribe through two different Redis replicas and relay
/// everything published on the master; when one Redis replica dies, its Roomcast replica moves to the other,
/// resubscribes and backfills: nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_through_redis_replicas_fail_over() {
    let master = Redis::start().await;
    let r1 = Redis::start_replica_of(&master).await;
    let r2 = Redis::start_replica_of(&master).await;
    // The subscribe endpoints sorted as the replica sorts them; pick node names that start on different ones.
    let mut ports = [r1.port(), r2.port()];
    ports.sort_by_key(|p| format!("127.0.0.1:{p}"));
    let name_for = |want: usize| {
        (0..100)
            .map(|i| format!("rr{i}"))
            .find(|n| backend::bus::redis::topology::pick(n, 2) == want)
            .unwrap()
    };
    let subscribe = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        r1.port(),
        r2.port()
    );
    // a names the Redis replicas; b discovers them with ROLE on the master (once both are attached to it).
    master.wait_in_sync(2).await;
    let listed = ["--redis-subscribe-url", subscribe.as_str()];
    let discovered = ["--redis-subscribe-url", "replicas"];
    let a = replica_process(&master.url(), &name_for(0), &listed).await;
    let b = replica_process(&master.url(), &name_for(1), &discovered).await;
    let channel = "roomcast:{hr}:live";
    let numsub = |r: &Redis| {
        let url = r.url();
        async move {
            let mut conn = redis::Client::open(url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .ok()?;
            let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut conn)
                .await
                .ok()?;
            Some(counts[0].1)
        }
    };
    let mut ca = Client::connect(&a.ws_url()).await;
    ca.join("hr", "x", None).await;
    let mut cb = Client::connect(&b.ws_url()).await;
    cb.join("hr", "y", None).await;
    assert_eq!(
        (numsub(&r1).await, numsub(&r2).await, numsub(&master).await),
        (Some(1), Some(1), Some(0)),
        "one subscription on each Redis replica, none on the master"
    );
    drop((ca, cb));
    // Roomcast replica b subscribes through the second endpoint: that Redis replica dies mid-traffic.
    let (mut victim, survivor) = if r1.port() == ports[1] {
        (r1, r2)
    } else {
        (r2, r1)
    };
    let kill = async {
        victim.kill();
    };
    let outcome = run_traffic(
        "subscribe-through-replicas",
        "hr",
        vec![a.ws_url()],
        vec![vec![a.ws_url()], vec![b.ws_url()]],
        300,
        100,
        kill,
    )
    .await;
    outcome.assert_exact();
    assert!(
        b.metric("roomcast_bus_reconnects_total").await >= 1.0,
        "b lost its Redis replica and subscribed again elsewhere"
    );
    // Members again on both: both subscriptions now live on the surviving Redis replica.
    let mut ca = Client::connect(&a.ws_url()).await;
    ca.join("hr", "x", None).await;
    let mut cb = Client::connect(&b.ws_url()).await;
    cb.join("hr", "y", None).await;
    eventually(
        "both Roomcast replicas subscribe through the surviving Redis replica",
        || async { (numsub(&survivor).await == Some(2)).then_some(()) },
    )
    .await;
}

/// Cluster: 50 rooms spread over the three shards reach members on two Roomcast replicas exactly once, relayed with
/// sharded Pub/Sub; then the master owning a busy room is killed and its replica takes over: with
/// `--redis-wait-replicas 1`, nothing acked is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_relays_every_room_exactly_once_and_survives_a_master() {
    let mut cluster = ClusterSet::start().await;
    let url = cluster.url();
    // Archiving into PostgreSQL meanwhile, from rooms on every shard.
    let pg = Postgres::start().await;
    let pg_url = pg.url();
    let flags = [
        "--redis-wait-replicas",
        "1",
        "--max-rooms",
        "64",
        "--database-url",
        &pg_url,
        "--archive-sweep-secs",
        "1",
    ];
    let a = replica_process(&url, "ca", &flags).await;
    let b = replica_process(&url, "cb", &flags).await;
    let rooms: Vec<String> = (0..50).map(|i| format!("shard-{i}")).collect();
    let mut shards = HashSet::new();
    for room in &rooms {
        shards.insert(
            cluster
                .master_of(&format!("roomcast:{{{room}}}:log"))
                .await
                .unwrap(),
        );
    }
    assert_eq!(shards.len(), 3, "the rooms spread over all three shards");
    let mut writer = Client::connect(&a.ws_url()).await;
    let mut on_a = Client::connect(&a.ws_url()).await;
    let mut on_b = Client::connect(&b.ws_url()).await;
    for room in &rooms {
        writer.join(room, "writer", None).await;
        on_a.join(room, "ma", None).await;
        on_b.join(room, "mb", None).await;
    }
    let mut sent = Vec::new();
    for round in 0..3 {
        for room in &rooms {
            let id = writer.say(room, &format!("{room} #{round}")).await;
            sent.push((room.clone(), id));
        }
    }
    let marker_room = rooms[0].clone();
    let marker = writer.say(&marker_room, "marker").await;
    let mut counts = Vec::new();
    for member in [&mut on_a, &mut on_b] {
        let mut got = HashSet::new();
        let mut total = 0;
        loop {
            let m = member.any_message().await;
            total += 1;
            got.insert((m.room.to_string(), m.id));
            if m.id == marker {
                break;
            }
        }
        // The marker was sent last into a room whose earlier messages came before it in that room's order; other
        // rooms may still be in flight, so collect until every sent message arrived.
        while got.len() < sent.len() + 1 {
            let m = member.any_message().await;
            total += 1;
            got.insert((m.room.to_string(), m.id));
        }
        assert_eq!(total, sent.len() + 1, "nothing twice");
        assert!(sent.iter().all(|s| got.contains(s)), "nothing lost");
        counts.push(total);
    }
    println!(
        "fault=cluster-50-rooms shards=3 rooms=50 sent={} delivered_per_member={counts:?} lost=0 duplicated=0",
        sent.len() + 1
    );
    drop((writer, on_a, on_b));
    for room in &rooms {
        let mut acked: Vec<MsgId> = sent
            .iter()
            .filter(|(r, _)| r == room)
            .map(|(_, id)| *id)
            .collect();
        if *room == marker_room {
            acked.push(marker);
        }
        crate::archive::archive_holds_exactly("cluster", &pg, room, &acked).await;
    }

    // Kill the master that owns the busy room, under traffic; once its replica has taken over, the killed node
    // comes back as that replica's replica (so WAIT 1 can be satisfied again) while the sender keeps resending.
    let victim = cluster.master_of("roomcast:{busy}:log").await.unwrap();
    let (killed_tx, killed_rx) = tokio::sync::oneshot::channel::<()>();
    let kill = async move {
        let _ = killed_tx.send(());
    };
    let traffic = across_two("cluster-master-killed-wait1", "busy", &a, &b, kill);
    let failover = async {
        killed_rx.await.unwrap();
        cluster.kill(victim);
        eventually("the replica takes over the slot", || async {
            let now = cluster.master_of("roomcast:{busy}:log").await;
            (now.is_some() && now != Some(victim)).then_some(())
        })
        .await;
        cluster.restart(victim).await;
        cluster.wait_ok().await;
    };
    let (outcome, ()) = tokio::join!(traffic, failover);
    outcome.assert_exact();
    crate::archive::archive_holds_exactly(
        "cluster master killed",
        &pg,
        "busy",
        &outcome.sent.acked,
    )
    .await;
    cluster.wait_ok().await;
    assert_ne!(
        cluster.master_of("roomcast:{busy}:log").await,
        Some(victim),
        "the replica took over the slot"
    );
}

/// 300 messages into `room` from a sender that may use either replica, one member on each, `fault` after the 100th.
async fn across_two(
    name: &'static str,
    room: &'static str,
    a: &ReplicaProcess,
    b: &ReplicaProcess,
    fault: impl Future<Output = ()>,
) -> Outcome {
    run_traffic(
        name,
        room,
        vec![a.ws_url(), b.ws_url()],
        vec![vec![a.ws_url()], vec![b.ws_url()]],
        300,
        100,
        fault,
    )
    .await
}
