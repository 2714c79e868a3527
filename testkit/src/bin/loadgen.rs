//! The fan-out load generator: `members` connections spread over the servers and over loopback source addresses, in
//! `rooms` rooms; one sender per room publishes so that `rate` messages per second leave in all; every message
//! carries its send time, and every member records send → delivery latency in an HDR histogram. Speaks Roomcast's
//! protocol and the peers' (socket.io over engine.io v4, the FastAPI chat, the bare ceiling), so every system is
//! measured by the same code. Prints one JSON object.
//!
//! `loadgen --system roomcast --url ws://127.0.0.1:3000 --url ws://127.0.0.1:3001 --members 1000 --rooms 1 \
//!          --rate 500 --size 100 --seconds 5`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum System {
    Roomcast,
    Socketio,
    Fastapi,
    Ceiling,
}

#[derive(Debug, Parser)]
#[command(about = "Fan-out load generator for Roomcast and its peers")]
struct Args {
    /// Which protocol to speak.
    #[arg(long, value_enum)]
    system: System,
    /// Base URL of a server (ws://host:port); repeat for several. Members and senders are spread over them.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Receiving connections.
    #[arg(long, default_value_t = 100)]
    members: usize,
    /// Rooms; member i joins room i % rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Messages per second, over all rooms.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Message size in bytes (the timestamp included).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// How long to send.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// How long to wait for the last deliveries after sending stops.
    #[arg(long, default_value_t = 3)]
    drain_seconds: u64,
    /// Spread connections over this many loopback source addresses (127.0.0.2, 127.0.0.3, …).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Connect members only, hold them for `seconds`, send nothing (memory per idle connection).
    #[arg(long)]
    idle: bool,
    /// Roomcast only: before the members join, store this many messages in every room, so each join carries a
    /// full `joined` (the default `--history-on-join` is 50).
    #[arg(long, default_value_t = 0)]
    history: usize,
    /// The length in characters of each of those messages.
    #[arg(long, default_value_t = 100)]
    history_chars: usize,
    /// Name of the room prefix (lets several generators share servers without sharing rooms).
    #[arg(long, default_value = "load")]
    prefix: String,
}

#[derive(Debug, Serialize)]
struct Report {
    system: System,
    members: usize,
    rooms: usize,
    rate: u64,
    size: usize,
    seconds: u64,
    sent: u64,
    expected: u64,
    delivered: u64,
    lost: u64,
    deliveries_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    closed: u64,
    /// `try_again` answers honoured while connecting and joining.
    try_again: u64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A message body: `<send time µs>|` padded with `x` to `size` bytes.
fn body(size: usize) -> String {
    let mut s = format!("{}|", now_micros());
    while s.len() < size {
        s.push('x');
    }
    s
}

/// The send time in a frame: the digits right before its `|`.
fn sent_at(frame: &str) -> Option<u64> {
    let bar = frame.find('|')?;
    let head = &frame[..bar];
    let start = head
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    head[start..].parse().ok()
}

/// One connection, speaking one system's protocol.
struct Conn {
    system: System,
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    room: String,
    seq: u64,
}

async fn open(url: &str, source: IpAddr) -> Ws {
    let req = url.strip_prefix("ws://").expect("ws:// URLs");
    let host = req.split('/').next().expect("a host");
    let addr: SocketAddr = tokio::net::lookup_host(host)
        .await
        .expect("resolve")
        .next()
        .expect("an address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source address");
    let tcp = socket.connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .expect("WebSocket handshake");
    ws
}

/// How many `try_again` answers the generator honoured (Roomcast's admission control).
static TRY_AGAIN: AtomicU64 = AtomicU64::new(0);

/// Waits what a `try_again` frame asks, plus up to as much again (jitter), as a client must.
async fn honour_try_again(frame: &str) {
    let value: serde_json::Value = serde_json::from_str(frame).expect("JSON");
    let after = value["after_ms"].as_u64().unwrap_or(1000);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let jitter = nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (after + 1);
    TRY_AGAIN.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(after + jitter)).await;
}

impl Conn {
    async fn connect(system: System, base: &str, room: &str, nick: &str, source: IpAddr) -> Self {
        let url = match system {
            System::Roomcast => format!("{base}/ws"),
            System::Socketio => format!("{base}/socket.io/?EIO=4&transport=websocket"),
            System::Fastapi | System::Ceiling => format!("{base}/ws/{room}"),
        };
        loop {
            let (sink, stream) = open(&url, source).await.split();
            let mut conn = Self {
                system,
                sink,
                stream,
                room: room.to_owned(),
                seq: 0,
            };
            if conn.setup(nick).await {
                return conn;
            }
        }
    }

    /// Joins the room; `false` when the server turned the connection away (after waiting as it asked).
    async fn setup(&mut self, nick: &str) -> bool {
        let room = self.room.clone();
        match self.system {
            System::Roomcast => {
                let first = self.next_text().await;
                if first.contains("\"type\":\"try_again\"") {
                    honour_try_again(&first).await;
                    return false;
                }
                let join = serde_json::json!({"type": "join", "room": room, "nick": nick});
                loop {
                    self.raw(join.to_string()).await;
                    let answer = self
                        .until_text(|t| {
                            t.contains("\"type\":\"joined\"")
                                || t.contains("\"type\":\"try_again\"")
                        })
                        .await;
                    if answer.contains("\"type\":\"joined\"") {
                        break;
                    }
                    honour_try_again(&answer).await;
                }
            }
            System::Socketio => {
                self.until(|t| t.starts_with('0')).await;
                self.raw("40".into()).await;
                self.until(|t| t.starts_with("40")).await;
                // With an ack id (1), so the join is known to have taken effect before any message is sent.
                self.raw(format!("421{}", serde_json::json!(["join", room])))
                    .await;
                self.until(|t| t.starts_with("431")).await;
            }
            System::Fastapi | System::Ceiling => {}
        }
        true
    }

    async fn next_text(&mut self) -> String {
        self.until_text(|_| true).await
    }

    async fn until_text(&mut self, done: impl Fn(&str) -> bool) -> String {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(t))) if done(&t) => return t.to_string(),
                Some(Ok(_)) => {}
                other => panic!("connection ended during setup: {other:?}"),
            }
        }
    }

    async fn raw(&mut self, text: String) {
        self.sink.send(Message::text(text)).await.expect("send");
    }

    async fn until(&mut self, done: impl Fn(&str) -> bool) {
        self.until_text(done).await;
    }

    /// Stores `count` messages of `chars` characters in the room (Roomcast), each acked: those the rate limit refuses
    /// are sent again, with their cid, after a pause.
    async fn seed(&mut self, count: usize, chars: usize) {
        let text = |i: usize| {
            let mut t = format!("history message {i} ");
            while t.chars().count() < chars {
                t.push('h');
            }
            t
        };
        let mut next = 0;
        let mut acked = 0;
        while acked < count {
            // At most a burst in flight: the connection's bucket holds 20 by default.
            while next < count && next < acked + 16 {
                let frame = serde_json::json!({"type": "send", "room": self.room, "text": text(next), "cid": format!("seed-{next}")});
                self.raw(frame.to_string()).await;
                next += 1;
            }
            let answer = self
                .until_text(|t| t.contains("\"type\":\"ack\"") || t.contains("\"type\":\"error\""))
                .await;
            if answer.contains("\"type\":\"ack\"") {
                acked += 1;
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
            let cid = value["req"].as_str().unwrap_or_default().to_owned();
            assert_eq!(value["code"], "rate_limited", "seeding refused: {answer}");
            tokio::time::sleep(Duration::from_millis(250)).await;
            let i: usize = cid.trim_start_matches("seed-").parse().expect("a seed cid");
            let frame =
                serde_json::json!({"type": "send", "room": self.room, "text": text(i), "cid": cid});
            self.raw(frame.to_string()).await;
        }
    }

    /// Publishes one message to the room.
    async fn publish(&mut self, text: String) -> bool {
        self.seq += 1;
        let frame = match self.system {
            System::Roomcast => {
                serde_json::json!({"type": "send", "room": self.room, "text": text, "cid": format!("l{}", self.seq)})
                    .to_string()
            }
            System::Socketio => format!(
                "42{}",
                serde_json::json!(["msg", {"room": self.room, "text": text}])
            ),
            System::Fastapi | System::Ceiling => text,
        };
        self.sink.send(Message::text(frame)).await.is_ok()
    }

    /// The send time of the next delivered chat message, answering protocol pings on the way; `None` once the
    /// connection ended. Reads the timestamp in place (the only `|` in any frame is the one in a message body)
    /// rather than parsing JSON, so the generator spends its time on the network, not on decoding.
    async fn next_sent_at(&mut self) -> Option<u64> {
        loop {
            let Some(Ok(frame)) = self.stream.next().await else {
                return None;
            };
            let Message::Text(t) = frame else { continue };
            if self.system == System::Socketio && &*t == "2" {
                let _ = self.sink.send(Message::text("3")).await;
                continue;
            }
            if let Some(at) = sent_at(&t) {
                return Some(at);
            }
        }
    }
}

fn source(i: usize, sources: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + (i % usize::from(sources.max(1))) as u8,
    ))
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let room = |r: usize| format!("{}-{r}", args.prefix);
    let delivered = Arc::new(AtomicU64::new(0));
    let closed = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut members_per_room = vec![0u64; args.rooms];
    if args.history > 0 {
        let seeders = (0..args.rooms).map(|r| {
            let (url, name) = (args.urls[r % args.urls.len()].clone(), room(r));
            let (count, chars) = (args.history, args.history_chars);
            let source = source(r, args.sources);
            async move {
                let mut conn = Conn::connect(System::Roomcast, &url, &name, "seeder", source).await;
                conn.seed(count, chars).await;
            }
        });
        futures_util::future::join_all(seeders).await;
        eprintln!(
            "{} messages of {} characters stored in each of {} rooms",
            args.history, args.history_chars, args.rooms
        );
    }
    let mut readers = Vec::new();
    for i in 0..args.members {
        let r = i % args.rooms;
        members_per_room[r] += 1;
        let mut conn = Conn::connect(
            args.system,
            &args.urls[i % args.urls.len()],
            &room(r),
            &format!("m{i}"),
            source(i, args.sources),
        )
        .await;
        let delivered = delivered.clone();
        let closed = closed.clone();
        let mut stop = stop_rx.clone();
        readers.push(tokio::spawn(async move {
            let mut histogram =
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            loop {
                tokio::select! {
                    _ = stop.changed() => return histogram,
                    at = conn.next_sent_at() => {
                        let Some(at) = at else {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return histogram;
                        };
                        let _ = histogram.record(now_micros().saturating_sub(at).max(1));
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    if args.idle {
        eprintln!(
            "{} idle members connected ({} try_again honoured)",
            args.members,
            TRY_AGAIN.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_secs(args.seconds)).await;
        let _ = stop_tx.send(true);
        return;
    }

    // One sender per room, fed by one clock so the total rate is exact.
    let mut senders = Vec::new();
    let sent = Arc::new(AtomicU64::new(0));
    let mut sent_per_room = Vec::new();
    for r in 0..args.rooms {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let mut conn = Conn::connect(
            args.system,
            &args.urls[r % args.urls.len()],
            &room(r),
            &format!("sender{r}"),
            source(args.members + r, args.sources),
        )
        .await;
        let count = Arc::new(AtomicU64::new(0));
        sent_per_room.push(count.clone());
        senders.push(tx);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    text = rx.recv() => {
                        let Some(text) = text else { return };
                        if conn.publish(text).await {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Read and drop what the sender receives (its own echoes, acks), so it never stalls.
                    at = conn.next_sent_at() => if at.is_none() { return },
                }
            }
        });
    }
    // Phase marks on stderr let a harness measure server CPU over the sending phase only.
    eprintln!("phase: sending");
    let start = Instant::now();
    let total = args.rate * args.seconds;
    let mut issued = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while issued < total {
        tick.tick().await;
        let due = ((start.elapsed().as_secs_f64() * args.rate as f64) as u64).min(total);
        while issued < due {
            let r = (issued % args.rooms as u64) as usize;
            let _ = senders[r].send(body(args.size));
            issued += 1;
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    // Let the senders put everything on the wire, then wait for deliveries to settle.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let expected: u64 = sent_per_room
        .iter()
        .zip(&members_per_room)
        .map(|(s, m)| s.load(Ordering::Relaxed) * m)
        .sum();
    let deadline = Instant::now() + Duration::from_secs(args.drain_seconds);
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    eprintln!("phase: done");
    let _ = stop_tx.send(true);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    for r in readers {
        if let Ok(h) = r.await {
            let _ = histogram.add(h);
        }
    }
    let delivered = delivered.load(Ordering::Relaxed);
    sent.store(
        sent_per_room
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum(),
        Ordering::Relaxed,
    );
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        system: args.system,
        members: args.members,
        rooms: args.rooms,
        rate: args.rate,
        size: args.size,
        seconds: args.seconds,
        sent: sent.load(Ordering::Relaxed),
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        deliveries_per_sec: delivered as f64 / elapsed.max(send_secs),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
        closed: closed.load(Ordering::Relaxed),
        try_again: TRY_AGAIN.load(Ordering::Relaxed),
    };
    println!("{}", serde_json::to_string(&report).expect("serializes"));
}
