//! What high availability costs, measured on loopback with release replicas as separate processes:
//!
//! 1. `--redis-wait-replicas 1` (WAIT behind every publish) against no wait: send → ack latency of one client
//!    sending one message at a time, on a master with one replica.
//! 2. One Redis against a 3-master Cluster (+ 3 replicas) under the same fan-out load: rooms spread over the shards,
//!    members on two replicas, senders keeping a window of messages in flight; deliveries/s and latency.
//!
//! `cargo bench -p backend --bench topologies` (env: ACKS=2000 ROOMS=30 MEMBERS=10 SECONDS=5 WINDOW=16).
//! Everything shares this machine's cores with the load generator: figures, not limits.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use shared::{ClientMsg, ServerMsg, frame};
use testkit::{ClusterSet, Redis, ReplicaProcess};
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_roomcast"))
}

fn send_frame(room: &str, text: String, cid: String) -> Message {
    Message::text(
        serde_json::to_string(&ClientMsg::Send {
            room: room.into(),
            text,
            cid,
            reply_to: None,
        })
        .unwrap(),
    )
}

/// (p50, p99, max) in milliseconds of a set of microsecond samples.
fn summary(samples: &mut [u64]) -> (f64, f64, f64) {
    samples.sort_unstable();
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0;
    (at(0.5), at(0.99), at(1.0))
}

/// Send → ack latency of one client sending `n` messages one after another.
async fn ack_latency(url: &str, room: &str, n: usize) -> Vec<u64> {
    let mut ws = testkit::join_ws(url, room, "acker").await;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        ws.send(send_frame(room, "x".into(), format!("a{i}")))
            .await
            .unwrap();
        loop {
            let frame = match ws.next().await {
                Some(Ok(Message::Text(frame))) => frame,
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            };
            match serde_json::from_str(&frame).unwrap() {
                ServerMsg::Ack(_) => break,
                ServerMsg::Error(frame::Error { message, .. }) => panic!("send refused: {message}"),
                _ => {}
            }
        }
        out.push(t.elapsed().as_micros() as u64);
    }
    out
}

/// Fan-out load: `rooms` rooms, `members` members each (alternating over `urls`), one sender per room on the first
/// replica keeping `window` messages in flight, for `seconds`. Returns (deliveries, elapsed, latencies in µs).
async fn fan_out(
    urls: &[String],
    rooms: usize,
    members: usize,
    seconds: u64,
    window: usize,
) -> (u64, f64, Vec<u64>) {
    let clock = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::new();
    for r in 0..rooms {
        let room = format!("load-{r}");
        for m in 0..members {
            let mut ws = testkit::join_ws(&urls[m % urls.len()], &room, &format!("m{m}")).await;
            let delivered = delivered.clone();
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    tokio::select! {
                        () = stop.notified() => return latencies,
                        frame = ws.next() => {
                            let Some(Ok(Message::Text(t))) = frame else { return latencies };
                            if let ServerMsg::Message(msg) = serde_json::from_str(&t).unwrap() {
                                let sent: u64 = msg.text.parse().unwrap_or(0);
                                latencies.push((clock.elapsed().as_micros() as u64).saturating_sub(sent));
                                delivered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            }));
        }
    }
    let start_count = delivered.load(Ordering::Relaxed);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut senders = Vec::new();
    for r in 0..rooms {
        let room = format!("load-{r}");
        let ws = testkit::join_ws(&urls[0], &room, "sender").await;
        senders.push(tokio::spawn(async move {
            let (mut sink, mut stream) = ws.split();
            let mut in_flight = 0usize;
            let mut i = 0u64;
            while Instant::now() < deadline {
                while in_flight < window {
                    let text = clock.elapsed().as_micros().to_string();
                    sink.send(send_frame(&room, text, format!("s{i}")))
                        .await
                        .unwrap();
                    i += 1;
                    in_flight += 1;
                }
                match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        if let ServerMsg::Ack(_) = serde_json::from_str(&t).unwrap() {
                            in_flight -= 1;
                        }
                    }
                    _ => return,
                }
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let count = delivered.load(Ordering::Relaxed) - start_count;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.notify_waiters();
    let mut latencies = Vec::new();
    for r in readers {
        latencies.extend(r.await.unwrap());
    }
    (count, elapsed, latencies)
}

#[tokio::main]
async fn main() {
    let acks = env_or("ACKS", 2000);
    let rooms = env_or("ROOMS", 30);
    let members = env_or("MEMBERS", 10);
    let seconds = env_or("SECONDS", 5) as u64;
    let window = env_or("WINDOW", 16);
    let flags = ["--max-rooms", "64", "--queue-max-bytes", "16777216"];
    println!(
        "bench: release replicas + redis-server on loopback, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. The cost of WAIT.
    let master = Redis::start().await;
    let _replica = Redis::start_replica_of(&master).await;
    master.wait_in_sync(1).await;
    for wait in ["0", "1"] {
        let mut f = flags.to_vec();
        f.extend(["--redis-wait-replicas", wait]);
        let replica = ReplicaProcess::start(binary(), &master.url(), &format!("w{wait}"), &f).await;
        let mut lat = ack_latency(&replica.ws_url(), &format!("wait-{wait}"), acks).await;
        let (p50, p99, max) = summary(&mut lat);
        println!(
            "send->ack, --redis-wait-replicas {wait}: {acks} sequential sends, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
        );
    }
    drop(master);

    // 2. One Redis against a Cluster, same load.
    let single = Redis::start().await;
    let cluster = ClusterSet::start().await;
    for (name, url) in [
        ("1 Redis", single.url()),
        ("Cluster 3 masters + 3 replicas", cluster.url()),
    ] {
        let a = ReplicaProcess::start(binary(), &url, "fa", &flags).await;
        let b = ReplicaProcess::start(binary(), &url, "fb", &flags).await;
        let urls = [a.ws_url(), b.ws_url()];
        let (count, secs, mut lat) = fan_out(&urls, rooms, members, seconds, window).await;
        let (p50, p99, max) = summary(&mut lat);
        println!(
            "fan-out through {name}: {rooms} rooms x {members} members on 2 replicas, {window} sends in flight per room: \
             {:.0} deliveries/s, p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms",
            count as f64 / secs
        );
    }
}
