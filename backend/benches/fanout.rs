//! Load benchmark on loopback: memory per idle connection, and fan-out latency and throughput across two replicas
//! sharing one Redis. Replicas run as separate release processes; this process is the clients.
//!
//! `cargo bench -p backend --bench fanout` (env: IDLE=2000 RECEIVERS=200 MESSAGES=2000 to change the load).

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use shared::{ClientMsg, ServerMsg};
use tokio_tungstenite::tungstenite::Message;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let idle = env_or("IDLE", 2000);
    let receivers = env_or("RECEIVERS", 200);
    let messages = env_or("MESSAGES", 2000);

    let redis = testkit::Redis::start().await;
    let url = redis.url();
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_roomcast"));
    let mut replicas = Vec::new();
    let mut ports = Vec::new();
    for node in ["bench-1", "bench-2"] {
        let replica =
            testkit::ReplicaProcess::start(binary, &url, node, &["--queue-max-bytes", "67108864"])
                .await;
        ports.push(replica.addr.port());
        replicas.push(replica);
    }
    println!(
        "bench: 2 replicas (release) + redis-server on loopback, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // 1. Memory per idle connection (each joined to one room).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<u64> = replicas.iter().map(|p| p.rss_kib()).collect();
    let mut idle_conns = Vec::new();
    for i in 0..idle {
        idle_conns.push(
            testkit::join_ws(
                &format!("ws://127.0.0.1:{}/ws", ports[i % 2]),
                &format!("idle-{}", i % 50),
                &format!("u{i}"),
            )
            .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after: Vec<u64> = replicas.iter().map(|p| p.rss_kib()).collect();
    let grown: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    println!(
        "idle: {idle} connections, replica RSS {before:?} KiB -> {after:?} KiB: {:.1} KiB per connection",
        grown as f64 / idle as f64
    );
    drop(idle_conns);

    // 2. Fan-out: receivers split over both replicas, one sender on replica 1.
    let start = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..receivers {
        let mut ws = testkit::join_ws(
            &format!("ws://127.0.0.1:{}/ws", ports[i % 2]),
            "fan",
            &format!("r{i}"),
        )
        .await;
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(messages);
            while latencies.len() < messages {
                let Some(Ok(Message::Text(t))) = ws.next().await else {
                    panic!("receiver closed")
                };
                if let ServerMsg::Message(m) = serde_json::from_str(&t).unwrap() {
                    let sent: u64 = m.text.parse().unwrap();
                    latencies.push(start.elapsed().as_micros() as u64 - sent);
                }
            }
            (latencies, Instant::now())
        }));
    }
    let sender =
        testkit::join_ws(&format!("ws://127.0.0.1:{}/ws", ports[0]), "fan", "sender").await;
    let (mut sink, mut stream) = sender.split();
    let reader = tokio::spawn(async move {
        let mut acks = 0;
        while acks < messages {
            let Some(Ok(Message::Text(t))) = stream.next().await else {
                panic!("sender closed")
            };
            if matches!(serde_json::from_str(&t).unwrap(), ServerMsg::Ack(_)) {
                acks += 1;
            }
        }
    });
    let t0 = Instant::now();
    for i in 0..messages {
        let text = start.elapsed().as_micros().to_string();
        let send = ClientMsg::Send {
            room: "fan".into(),
            text,
            cid: format!("c{i}"),
            reply_to: None,
        };
        sink.send(Message::text(serde_json::to_string(&send).unwrap()))
            .await
            .unwrap();
        // Pace at roughly 2000 msg/s so latency reflects delivery, not a queue built by the bench itself.
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    reader.await.unwrap();
    let mut all = Vec::new();
    let mut last = t0;
    for t in tasks {
        let (lat, done) = t.await.unwrap();
        all.extend(lat);
        last = last.max(done);
    }
    let mut latency = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits");
    for micros in &all {
        latency
            .record(*micros)
            .expect("an auto-resizing histogram records any value");
    }
    let secs = (last - t0).as_secs_f64();
    println!(
        "fan-out: {messages} messages x {receivers} receivers on 2 replicas = {} deliveries in {secs:.2} s ({:.0} deliveries/s)",
        all.len(),
        all.len() as f64 / secs
    );
    println!(
        "latency send->deliver: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latency.value_at_quantile(0.50) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0
    );
}
