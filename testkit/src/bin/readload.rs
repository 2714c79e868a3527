//! What read positions cost, for `cargo xtask bench --scenarios reads`: `--members` members in `--rooms` rooms, spread
//! over the replicas, each marking what it receives as read the way the browser does (the newest message on screen,
//! at most one `read` per `--read-every-ms`), while senders post `--rate` messages a second over all rooms. Counts the
//! reads sent and answered and how long answers took, and reads what they cost: Redis commands and Pub/Sub messages
//! (`INFO commandstats`), rows written to PostgreSQL's `reads` table (`pg_stat_user_tables`), the replicas' CPU
//! (`/proc/<pid>/stat`). Prints one JSON object.
//!
//! `readload --url ws://127.0.0.1:3000 --url ws://127.0.0.1:3001 --pid 123 --pid 124 --redis-url redis://… \
//!           --database-url postgres://… --members 10000 --rooms 100 --rate 100 --secs 30`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

#[derive(Debug, Parser)]
#[command(about = "The cost of read positions under load")]
struct Args {
    /// A replica's base URL (ws://host:port); repeat for each. Members are spread over them in turn.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The replicas' process ids, for their CPU time.
    #[arg(long = "pid")]
    pids: Vec<u32>,
    /// The Redis the replicas share.
    #[arg(long)]
    redis_url: String,
    /// Their archive, for the rows written to `reads` (optional).
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Messages per second over all rooms.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// How long to measure, after every member joined.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// A member sends at most one `read` this often (the browser's coalescing).
    #[arg(long, default_value_t = 250)]
    read_every_ms: u64,
    /// Source addresses for the connections: 127.0.0.<2..> in turn (more than one keeps ports plentiful).
    #[arg(long, default_value_t = 8)]
    sources: u8,
}

#[derive(Debug, Default)]
struct Counts {
    reads: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    messages: AtomicU64,
}

#[derive(Debug, Serialize)]
struct Report {
    members: usize,
    rooms: usize,
    messages_per_sec: f64,
    secs: f64,
    /// Messages members received, per second (each message reaches its room's members).
    deliveries_per_sec: f64,
    reads_per_sec: f64,
    read_answers_per_sec: f64,
    reads_refused: u64,
    read_answer_p50_ms: f64,
    read_answer_p99_ms: f64,
    redis_commands_per_sec: f64,
    redis_scripts_per_sec: f64,
    redis_publishes_per_sec: f64,
    redis_cpu_percent: f64,
    postgres_rows_written_per_sec: Option<f64>,
    replicas_cpu_percent: f64,
}

/// A WebSocket from one of the loopback source addresses.
async fn connect(
    url: &str,
    source: u8,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let host = url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .expect("host:port");
    let addr: std::net::SocketAddr = host.parse().expect("an IP address and port");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, source], 0)))
        .expect("bind a loopback source address");
    let stream = socket.connect(addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(format!("{url}/ws"), stream)
        .await
        .expect("WebSocket handshake");
    ws
}

/// The newest id in a frame that carries a stored message, as text.
fn message_id(frame: &serde_json::Value) -> Option<String> {
    match frame["type"].as_str()? {
        "message" => frame["id"].as_str().map(str::to_owned),
        "joined" => frame["history"]
            .as_array()?
            .last()
            .and_then(|m| m["id"].as_str())
            .map(str::to_owned),
        _ => None,
    }
}

/// Where a member connects and what it shares with the others.
struct Member {
    url: String,
    source: u8,
    room: String,
    nick: String,
    every: Duration,
    counts: Arc<Counts>,
    latency: Arc<Mutex<Histogram<u64>>>,
    joined: tokio::sync::mpsc::Sender<()>,
    stop: tokio_util_stop::Stop,
}

/// One member: joins, then reads what it receives, at most once per `every`, until `stop`.
async fn member(m: Member) {
    let Member {
        url,
        source,
        room,
        nick,
        every,
        counts,
        latency,
        joined,
        stop,
    } = m;
    // Connect and join, honouring `try_again` (the replicas' admission gates pace a crowd arriving at once).
    let (mut tx, mut rx) = 'admitted: loop {
        let ws = connect(&url, source).await;
        let (mut tx, mut rx) = ws.split();
        let join = serde_json::json!({"type": "join", "room": room, "nick": nick});
        tx.send(Message::text(join.to_string()))
            .await
            .expect("join");
        while let Some(Ok(frame)) = rx.next().await {
            let Message::Text(text) = frame else { continue };
            let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            match value["type"].as_str() {
                Some("joined") => break 'admitted (tx, rx),
                Some("try_again") => {
                    let wait = value["after_ms"].as_u64().unwrap_or(100);
                    tokio::time::sleep(Duration::from_millis(wait + wait / 2)).await;
                    if value["request"] == "join" {
                        tx.send(Message::text(join.to_string()))
                            .await
                            .expect("join");
                    } else {
                        continue 'admitted;
                    }
                }
                Some("error") if value["code"] == "unavailable" => {
                    // Overloaded for a moment: ask again, as the browser does.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    tx.send(Message::text(join.to_string()))
                        .await
                        .expect("join");
                }
                Some("error") => panic!("{nick} cannot join {room}: {text}"),
                _ => {}
            }
        }
    };
    let _ = joined.send(()).await;
    let mut newest: Option<String> = None;
    let mut read: Option<String> = None;
    let mut asked: Option<Instant> = None;
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            frame = rx.next() => {
                let Some(Ok(Message::Text(text))) = frame else {
                    if stop.is_stopped() { return; }
                    continue;
                };
                let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                match value["type"].as_str() {
                    Some("message") => {
                        counts.messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("read_state") => {
                        counts.answered.fetch_add(1, Ordering::Relaxed);
                        if let Some(at) = asked.take() {
                            let us = u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX);
                            let _ = latency.lock().await.record(us.max(1));
                        }
                    }
                    Some("error") if value["request"] == "read" => {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                if let Some(id) = message_id(&value) {
                    newest = Some(id);
                }
            }
            _ = tick.tick() => {
                if stop.is_stopped() {
                    return;
                }
                if newest.is_some() && newest != read {
                    read.clone_from(&newest);
                    let ask = serde_json::json!({"type": "read", "room": room, "id": read});
                    if tx.send(Message::text(ask.to_string())).await.is_err() {
                        return;
                    }
                    asked.get_or_insert_with(Instant::now);
                    counts.reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A flag the senders and members poll.
mod tokio_util_stop {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Debug, Clone, Default)]
    pub struct Stop(Arc<AtomicBool>);

    impl Stop {
        pub fn stop(&self) {
            self.0.store(true, Ordering::Relaxed);
        }

        pub fn is_stopped(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }
}

/// Rooms per sending connection: a connection's requests are answered one after another, so more connections
/// keep the rate whatever Redis's round trip is.
const ROOMS_PER_SENDER: usize = 5;

/// Posts `rate` messages a second over `rooms` rooms until `stop`: one connection per [`ROOMS_PER_SENDER`] rooms, on
/// the replicas in turn, each posting to its rooms in turn.
async fn send(
    urls: Vec<String>,
    rooms: usize,
    rate: u64,
    stop: tokio_util_stop::Stop,
    errors: Arc<AtomicU64>,
) {
    let connections = rooms.div_ceil(ROOMS_PER_SENDER);
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws", urls[c % urls.len()]))
            .await
            .expect("connect a sender");
        let mine: Vec<String> = (c * ROOMS_PER_SENDER..((c + 1) * ROOMS_PER_SENDER).min(rooms))
            .map(|r| format!("reads-{r}"))
            .collect();
        for room in &mine {
            let join =
                serde_json::json!({"type": "join", "room": room, "nick": format!("sender{c}")});
            ws.send(Message::text(join.to_string()))
                .await
                .expect("join");
        }
        let (mut tx, mut rx) = ws.split();
        let errors = errors.clone();
        tokio::spawn(async move {
            while let Some(Ok(Message::Text(t))) = rx.next().await {
                if t.contains("\"type\":\"error\"") && errors.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("sender: {t}");
                }
            }
        });
        let stop = stop.clone();
        let per_connection = (rate as f64 / connections as f64).max(0.1);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_connection));
            let mut n = 0usize;
            while !stop.is_stopped() {
                tick.tick().await;
                let room = &mine[n % mine.len()];
                let msg = serde_json::json!({"type": "send", "room": room, "text": format!("message {n}"), "cid": format!("s{c}-{n}")});
                if tx.send(Message::text(msg.to_string())).await.is_err() {
                    return;
                }
                n += 1;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// The counters a measurement is the difference of, read at one moment.
struct Snapshot {
    /// Redis's commands, scripts and publishes run, and its CPU seconds (`redis_stats`).
    redis: (f64, f64, f64, f64),
    /// Rows written to the archive's `reads` table, when there is one.
    pg_rows: Option<f64>,
    /// The replicas' CPU seconds.
    cpu_secs: f64,
    reads: f64,
    answered: f64,
    messages: f64,
}

async fn snapshot(
    conn: &mut redis::aio::MultiplexedConnection,
    pg: Option<&tokio_postgres::Client>,
    pids: &[u32],
    counts: &Counts,
) -> Snapshot {
    Snapshot {
        redis: redis_stats(conn).await,
        pg_rows: match pg {
            Some(pg) => Some(pg_rows(pg).await),
            None => None,
        },
        cpu_secs: cpu_secs(pids),
        reads: counts.reads.load(Ordering::Relaxed) as f64,
        answered: counts.answered.load(Ordering::Relaxed) as f64,
        messages: counts.messages.load(Ordering::Relaxed) as f64,
    }
}

/// `INFO commandstats` and `INFO cpu`: (all commands, `EVALSHA`/`EVAL` calls, `PUBLISH` calls, CPU seconds).
async fn redis_stats(conn: &mut redis::aio::MultiplexedConnection) -> (f64, f64, f64, f64) {
    let info: String = redis::cmd("INFO")
        .arg("ALL")
        .query_async(conn)
        .await
        .expect("INFO");
    let (mut all, mut scripts, mut publishes, mut cpu) = (0.0, 0.0, 0.0, 0.0);
    for line in info.lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let (name, stats) = rest.split_once(':').unwrap_or_default();
            let calls: f64 = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0.0);
            all += calls;
            if name == "evalsha" || name == "eval" {
                scripts += calls;
            }
            if name == "publish" || name == "spublish" {
                publishes += calls;
            }
        }
        for key in ["used_cpu_sys:", "used_cpu_user:"] {
            if let Some(v) = line.strip_prefix(key) {
                cpu += v.trim().parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    (all, scripts, publishes, cpu)
}

/// Rows written to `reads` so far (inserts and updates).
async fn pg_rows(pg: &tokio_postgres::Client) -> f64 {
    let row = pg
        .query_one(
            "SELECT COALESCE(sum(n_tup_ins + n_tup_upd), 0)::float8 FROM pg_stat_user_tables WHERE relname = 'reads'",
            &[],
        )
        .await
        .expect("pg_stat_user_tables");
    row.get(0)
}

/// CPU seconds of the processes `pids` (user + system).
fn cpu_secs(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let ticks: f64 =
                fields[11].parse::<f64>().unwrap_or(0.0) + fields[12].parse::<f64>().unwrap_or(0.0);
            ticks / 100.0
        })
        .sum()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let counts = Arc::new(Counts::default());
    let latency = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
    ));
    let stop = tokio_util_stop::Stop::default();
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(args.members);
    let every = Duration::from_millis(args.read_every_ms);
    let mut tasks = Vec::new();
    for i in 0..args.members {
        let url = args.urls[i % args.urls.len()].clone();
        let source = 2 + u8::try_from(i % usize::from(args.sources.max(1))).unwrap_or(0);
        tasks.push(tokio::spawn(member(Member {
            url,
            source,
            room: format!("reads-{}", i % args.rooms),
            nick: format!("m{i}"),
            every,
            counts: counts.clone(),
            latency: latency.clone(),
            joined: joined_tx.clone(),
            stop: stop.clone(),
        })));
        if i % 250 == 249 {
            // Joins in waves, as users arrive: the replicas' admission gates are not what is measured.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    for _ in 0..args.members {
        joined_rx.recv().await.expect("a member joined");
    }
    let redis = redis::Client::open(args.redis_url.as_str()).expect("Redis URL");
    // A generous timeout: with thousands of members this process is busy, and the answer waits its turn.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(30)));
    let mut conn = redis
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to Redis");
    let pg = match &args.database_url {
        Some(url) => {
            let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .expect("connect to PostgreSQL");
            tokio::spawn(connection);
            Some(client)
        }
        None => None,
    };
    let send_errors = Arc::new(AtomicU64::new(0));
    let sender = tokio::spawn(send(
        args.urls.clone(),
        args.rooms,
        args.rate,
        stop.clone(),
        send_errors.clone(),
    ));
    // Let the traffic settle before measuring.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = snapshot(&mut conn, pg.as_ref(), &args.pids, &counts).await;
    latency.lock().await.reset();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    let secs = started.elapsed().as_secs_f64();
    let after = snapshot(&mut conn, pg.as_ref(), &args.pids, &counts).await;
    stop.stop();
    let _ = sender.await;
    let per = |a: f64, b: f64| (a - b) / secs;
    let h = latency.lock().await;
    let report = Report {
        members: args.members,
        rooms: args.rooms,
        messages_per_sec: args.rate as f64,
        secs,
        deliveries_per_sec: per(after.messages, before.messages),
        reads_per_sec: per(after.reads, before.reads),
        read_answers_per_sec: per(after.answered, before.answered),
        reads_refused: counts.refused.load(Ordering::Relaxed),
        read_answer_p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
        read_answer_p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
        redis_commands_per_sec: per(after.redis.0, before.redis.0),
        redis_scripts_per_sec: per(after.redis.1, before.redis.1),
        redis_publishes_per_sec: per(after.redis.2, before.redis.2),
        redis_cpu_percent: per(after.redis.3, before.redis.3) * 100.0,
        postgres_rows_written_per_sec: after.pg_rows.zip(before.pg_rows).map(|(a, b)| per(a, b)),
        replicas_cpu_percent: per(after.cpu_secs, before.cpu_secs) * 100.0,
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("the report serializes")
    );
    std::process::exit(0);
}
