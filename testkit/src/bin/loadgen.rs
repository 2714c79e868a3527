//! The fan-out load generator: `members` connections spread over the servers and over loopback source addresses, in
//! `rooms` rooms; one sender per room publishes so that `rate` messages per second leave in all; every message
//! carries its send time, and every member records send → delivery latency in an HDR histogram. Speaks Roomcast's
//! protocol and the peers' (socket.io over engine.io v4, the FastAPI chat, the bare ceiling), so every system is
//! measured by the same code. Prints one JSON object.
//!
//! The generator shares the machine with the servers it measures, so what it spends per delivery is spent on them:
//! it speaks WebSocket itself (the [`ws`] module: a handshake, masked client frames, server frames parsed in place
//! in one reusable buffer) rather than through a general-purpose library, finds each message's send time in the
//! frame without decoding or copying it, counts deliveries locally, publishing them once per read, and records
//! latencies through a small buffer into each member's histogram. It runs on one thread: a message reaches every
//! member at once, and one thread reading the sockets in turn costs less than two waking each other.
//!
//! `loadgen --system roomcast --url ws://127.0.0.1:3000 --url ws://127.0.0.1:3001 --members 1000 --rooms 1 \
//!          --rate 500 --size 100 --seconds 5`

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::net::TcpSocket;
use tokio::sync::{mpsc, watch};

use ws::{Next, Ws};

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

/// The send time in a frame: the digits right before its first `|`.
fn sent_at(frame: &[u8]) -> Option<u64> {
    let bar = find_bar(frame)?;
    let digits = frame[..bar]
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    frame[bar - digits..bar].iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The index of the first `|` in `s`, eight bytes at a time: a frame is a few hundred bytes, and this runs once per
/// delivery.
fn find_bar(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const BARS: u64 = ONES * b'|' as u64;
    let mut chunks = s.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // A byte equal to `|` becomes zero; the lowest zero byte sets the lowest high bit (bytes above a zero may
        // read as zero too, which does not matter: only the first is used).
        let v = u64::from_le_bytes(word) ^ BARS;
        let zero = v.wrapping_sub(ONES) & !v & HIGH;
        if zero != 0 {
            return Some(base + (zero.trailing_zeros() / 8) as usize);
        }
        base += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|b| *b == b'|')
        .map(|i| base + i)
}

/// One member's send → delivery latencies: an HDR histogram, fed through a small buffer. A histogram precise to
/// 0.1 % is tens of KiB where latencies fall, and a thousand members' together miss the cache on nearly every
/// delivery if each is recorded at once; a buffer of raw values is written in order, and emptied into the histogram
/// a few thousand at a time, while its counts stay in the cache.
struct Latencies {
    histogram: Histogram<u64>,
    pending: Vec<u32>,
}

impl Latencies {
    const BATCH: usize = 2048;

    fn new() -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
            pending: Vec::new(),
        }
    }

    fn record(&mut self, us: u64) {
        if self.pending.len() == Self::BATCH {
            self.drain();
        }
        self.pending.push(u32::try_from(us).unwrap_or(u32::MAX));
    }

    fn drain(&mut self) {
        for us in self.pending.drain(..) {
            let _ = self.histogram.record(u64::from(us));
        }
    }

    fn into_histogram(mut self) -> Histogram<u64> {
        self.drain();
        self.histogram
    }
}

/// One connection, speaking one system's protocol.
struct Conn {
    system: System,
    ws: Ws,
    room: String,
    seq: u64,
}

/// Opens a TCP connection from `source` to the `ws://` URL's server and upgrades it.
async fn open(url: &str, source: IpAddr) -> Ws {
    let rest = url.strip_prefix("ws://").expect("ws:// URLs");
    let (host, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
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
    Ws::handshake(tcp, host, path)
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"))
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
            let mut conn = Self {
                system,
                ws: open(&url, source).await,
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

    /// The next text message for which `done` holds (those before it are dropped), answering pings on the way.
    async fn until_text(&mut self, done: impl Fn(&str) -> bool) -> String {
        loop {
            let text = match self.ws.next() {
                Next::Message(range) => {
                    String::from_utf8_lossy(self.ws.message(range)).into_owned()
                }
                Next::Incomplete => {
                    let read = self.ws.fill().await;
                    assert!(
                        matches!(read, Ok(n) if n > 0),
                        "connection ended during setup: {read:?}"
                    );
                    continue;
                }
                Next::Closed => panic!("connection closed during setup"),
            };
            if self.system == System::Socketio && text == "2" {
                self.ws.queue_text(b"3");
            }
            self.ws.flush().await.expect("send");
            if done(&text) {
                return text;
            }
        }
    }

    async fn raw(&mut self, text: String) {
        self.ws.queue_text(text.as_bytes());
        self.ws.flush().await.expect("send");
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
    async fn publish(&mut self, text: &str) -> bool {
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
            System::Fastapi | System::Ceiling => text.to_owned(),
        };
        self.ws.queue_text(frame.as_bytes());
        self.ws.flush().await.is_ok()
    }

    /// Waits for bytes, then hands `on_delivery` the latency in µs of every chat message they completed (send time
    /// to now, one clock reading per read: they arrived together), answering protocol pings on the way. Returns how
    /// many, or `None` once the connection ended. Reads each timestamp in place (the only `|` in any frame is the one
    /// in a message body) rather than parsing JSON, so the generator spends its time on the network, not on
    /// decoding. Cancel-safe: everything it learned is in `self` or handed out before it returns.
    async fn deliveries(&mut self, mut on_delivery: impl FnMut(u64)) -> Option<u64> {
        if self.ws.closed() {
            return None;
        }
        self.ws.flush().await.ok()?;
        match self.ws.fill().await {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        let mut now = None;
        let mut count = 0;
        loop {
            let range = match self.ws.next() {
                Next::Message(range) => range,
                Next::Incomplete => break,
                Next::Closed => return (count > 0).then_some(count),
            };
            let frame = self.ws.message(range);
            if self.system == System::Socketio && frame == b"2" {
                self.ws.queue_text(b"3");
                continue;
            }
            if let Some(at) = sent_at(frame) {
                let now = *now.get_or_insert_with(now_micros);
                on_delivery(now.saturating_sub(at).max(1));
                count += 1;
            }
        }
        // Pongs go out now, without waiting (a reader that waits for nothing else must still answer).
        self.ws.try_flush();
        Some(count)
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

// One thread: see the module's documentation.
#[tokio::main(flavor = "current_thread")]
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
            let mut latencies = Latencies::new();
            // One wait for the stop, registered once, not once per read.
            let stopped = stop.changed();
            tokio::pin!(stopped);
            loop {
                tokio::select! {
                    _ = &mut stopped => return latencies.into_histogram(),
                    count = conn.deliveries(|us| latencies.record(us)) => match count {
                        // Counted here per read, published to the shared counter once per read.
                        Some(0) => {}
                        Some(count) => { delivered.fetch_add(count, Ordering::Relaxed); }
                        None => {
                            closed.fetch_add(1, Ordering::Relaxed);
                            return latencies.into_histogram();
                        }
                    },
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
                        if conn.publish(&text).await {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    // Read and drop what the sender receives (its own echoes, acks), so it never stalls.
                    read = conn.deliveries(|_| {}) => if read.is_none() { return },
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

/// A minimal WebSocket client (RFC 6455) over a plain `TcpStream`, for the generator only: no TLS, no extensions,
/// no validation beyond what reading frames needs. Client frames are masked; server frames are read from one
/// buffer that is reused (never zeroed, compacted only when a partial frame is left at its end) and handed out in
/// place; fragmented messages are put together in a second buffer; pings are answered with pongs and a close
/// frame with a close frame.
mod ws {
    use std::io;
    use std::ops::Range;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// Bytes a read may fill at least: smaller free space is made room for first.
    const MIN_READ: usize = 4096;
    /// The read buffer's first capacity: a wave of a few dozen frames of a few hundred bytes.
    const START_CAPACITY: usize = 16 * 1024;
    /// The largest message accepted (a `joined` with a long history is tens of KiB).
    const MAX_MESSAGE: usize = 64 << 20;

    const FIN: u8 = 0x80;
    const CONTINUATION: u8 = 0x0;
    const TEXT: u8 = 0x1;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;

    /// Where the next complete message is.
    #[derive(Debug, PartialEq, Eq)]
    pub enum Next {
        /// A text or binary message: pass it to [`Ws::message`] before calling [`Ws::next`] again.
        Message(Span),
        /// No complete message in the buffer: [`Ws::fill`] it.
        Incomplete,
        /// The server closed the connection (a close frame; the reply is queued).
        Closed,
    }

    /// A message's bytes: a range of the read buffer, or the fragments put together.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Span(Option<Range<usize>>);

    /// A frame's header.
    struct Header {
        fin: bool,
        opcode: u8,
        mask: Option<[u8; 4]>,
        /// Header bytes, payload bytes.
        len: usize,
        payload: usize,
    }

    /// Reads a frame header from the start of `b`; `None` while it is incomplete.
    fn header(b: &[u8]) -> Option<Header> {
        let (&b0, &b1) = (b.first()?, b.get(1)?);
        let (mut len, payload) = match b1 & 0x7F {
            126 => (4, usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]))),
            127 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(b.get(2..10)?);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX),
                )
            }
            n => (2, usize::from(n)),
        };
        let mask = if b1 & 0x80 == 0 {
            None
        } else {
            let mut key = [0u8; 4];
            key.copy_from_slice(b.get(len..len + 4)?);
            len += 4;
            Some(key)
        };
        Some(Header {
            fin: b0 & FIN != 0,
            opcode: b0 & 0x0F,
            mask,
            len,
            payload,
        })
    }

    /// XORs `data` with `key` as RFC 6455 masks (and unmasks) payloads.
    fn apply_mask(data: &mut [u8], key: [u8; 4]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= key[i & 3];
        }
    }

    /// One client connection.
    #[derive(Debug)]
    pub struct Ws {
        tcp: TcpStream,
        /// Bytes read; those before `pos` are consumed.
        buf: Vec<u8>,
        pos: usize,
        /// A fragmented message being put together (or the last one put together).
        frag: Vec<u8>,
        /// Frames to write; those before `written` are written.
        out: Vec<u8>,
        written: usize,
        /// The state of the mask keys' generator (xorshift).
        mask: u32,
        closed: bool,
    }

    impl Ws {
        /// Upgrades `tcp` to a WebSocket at `path` on `host`: writes the request, reads the answer up to its blank
        /// line and keeps what follows it (the server's first frames may come in the same segment).
        pub async fn handshake(mut tcp: TcpStream, host: &str, path: &str) -> io::Result<Self> {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            tcp.write_all(request.as_bytes()).await?;
            let mut buf = Vec::with_capacity(START_CAPACITY);
            let end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if buf.len() > 64 * 1024 {
                    return Err(io::Error::other("the handshake answer never ended"));
                }
                if tcp.read_buf(&mut buf).await? == 0 {
                    return Err(io::Error::other("closed during the handshake"));
                }
            };
            let status = String::from_utf8_lossy(&buf[..end]);
            if !status.starts_with("HTTP/1.1 101") {
                let line = status.lines().next().unwrap_or_default().to_owned();
                return Err(io::Error::other(format!("not upgraded: {line}")));
            }
            // Seeded by where the socket is, so connections mask differently; any key will do.
            let seed = tcp.local_addr().map_or(1, |a| u32::from(a.port()));
            Ok(Self {
                tcp,
                buf,
                pos: end,
                frag: Vec::new(),
                out: Vec::new(),
                written: 0,
                mask: seed | 1,
                closed: false,
            })
        }

        /// Whether the server closed the connection.
        pub fn closed(&self) -> bool {
            self.closed
        }

        /// Reads what the socket has into the buffer; the number of bytes, 0 at the end of the stream. Cancel-safe.
        pub async fn fill(&mut self) -> io::Result<usize> {
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
            } else if self.buf.capacity() - self.buf.len() < MIN_READ && self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            if self.buf.capacity() - self.buf.len() < MIN_READ {
                self.buf.reserve(MIN_READ);
            }
            self.tcp.read_buf(&mut self.buf).await
        }

        /// The next complete message in the buffer, answering control frames on the way.
        pub fn next(&mut self) -> Next {
            loop {
                let Some(h) = header(&self.buf[self.pos..]) else {
                    return Next::Incomplete;
                };
                if h.payload > MAX_MESSAGE {
                    self.closed = true;
                    return Next::Closed;
                }
                if self.buf.len() - self.pos < h.len + h.payload {
                    // Room for the whole frame, so the next reads complete it.
                    self.buf.reserve(h.len + h.payload);
                    return Next::Incomplete;
                }
                let start = self.pos + h.len;
                let end = start + h.payload;
                self.pos = end;
                if let Some(key) = h.mask {
                    apply_mask(&mut self.buf[start..end], key);
                }
                match h.opcode {
                    CLOSE => {
                        if !self.closed {
                            let code = self.buf.get(start..(start + 2).min(end)).unwrap_or(&[]);
                            let code = code.to_vec();
                            self.queue(CLOSE, &code);
                        }
                        self.closed = true;
                        return Next::Closed;
                    }
                    PING => {
                        let payload = self.buf[start..end].to_vec();
                        self.queue(PONG, &payload);
                    }
                    PONG => {}
                    CONTINUATION => {
                        self.frag.extend_from_slice(&self.buf[start..end]);
                        if h.fin {
                            return Next::Message(Span(None));
                        }
                    }
                    _ if h.fin => return Next::Message(Span(Some(start..end))),
                    _ => {
                        self.frag.clear();
                        self.frag.extend_from_slice(&self.buf[start..end]);
                    }
                }
            }
        }

        /// A message's payload, from [`Ws::next`].
        pub fn message(&self, span: Span) -> &[u8] {
            match span.0 {
                Some(range) => &self.buf[range],
                None => &self.frag,
            }
        }

        /// Queues a text message (one frame, masked).
        pub fn queue_text(&mut self, payload: &[u8]) {
            self.queue(TEXT, payload);
        }

        fn queue(&mut self, opcode: u8, payload: &[u8]) {
            self.out.push(FIN | opcode);
            let len = payload.len();
            if len < 126 {
                self.out.push(0x80 | len as u8);
            } else if let Ok(short) = u16::try_from(len) {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&short.to_be_bytes());
            } else {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(len as u64).to_be_bytes());
            }
            self.mask ^= self.mask << 13;
            self.mask ^= self.mask >> 17;
            self.mask ^= self.mask << 5;
            let key = self.mask.to_le_bytes();
            self.out.extend_from_slice(&key);
            let start = self.out.len();
            self.out.extend_from_slice(payload);
            apply_mask(&mut self.out[start..], key);
        }

        /// Writes every queued frame. Cancel-safe: what is written is recorded as it goes.
        pub async fn flush(&mut self) -> io::Result<()> {
            while self.written < self.out.len() {
                let n = self.tcp.write(&self.out[self.written..]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                self.written += n;
            }
            self.out.clear();
            self.written = 0;
            Ok(())
        }

        /// Writes what the socket takes of the queued frames now, without waiting; the rest goes with the next
        /// [`Ws::flush`].
        pub fn try_flush(&mut self) {
            while self.written < self.out.len() {
                match self.tcp.try_write(&self.out[self.written..]) {
                    Ok(n) if n > 0 => self.written += n,
                    _ => return,
                }
            }
            self.out.clear();
            self.written = 0;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A server frame: unmasked, or masked with `key`.
        fn frame(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
            let mut f = vec![if fin { FIN | opcode } else { opcode }];
            let bit = if key.is_some() { 0x80 } else { 0 };
            match payload.len() {
                n if n < 126 => f.push(bit | n as u8),
                n if n <= 0xFFFF => {
                    f.push(bit | 126);
                    f.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    f.push(bit | 127);
                    f.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            if let Some(key) = key {
                f.extend_from_slice(&key);
            }
            let body = f.len();
            f.extend_from_slice(payload);
            if let Some(key) = key {
                apply_mask(&mut f[body..], key);
            }
            f
        }

        /// A connected client whose read buffer holds `bytes`, and the server's end of its socket.
        async fn client_with(bytes: &[u8]) -> (Ws, TcpStream) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let mut ws = Ws {
                tcp: client.unwrap(),
                buf: Vec::new(),
                pos: 0,
                frag: Vec::new(),
                out: Vec::new(),
                written: 0,
                mask: 1,
                closed: false,
            };
            ws.buf.extend_from_slice(bytes);
            (ws, server.unwrap().0)
        }

        fn text(ws: &mut Ws) -> Option<String> {
            match ws.next() {
                Next::Message(span) => Some(String::from_utf8_lossy(ws.message(span)).into_owned()),
                _ => None,
            }
        }

        #[tokio::test]
        async fn reads_every_header_length_fragments_and_masked_frames() {
            let long = "y".repeat(300);
            let huge = "z".repeat(70_000);
            let mut bytes = frame(true, TEXT, b"short", None);
            bytes.extend(frame(true, TEXT, long.as_bytes(), None));
            bytes.extend(frame(true, TEXT, huge.as_bytes(), None));
            bytes.extend(frame(false, TEXT, b"frag", None));
            bytes.extend(frame(true, PING, b"p", None));
            bytes.extend(frame(false, CONTINUATION, b"men", None));
            bytes.extend(frame(true, CONTINUATION, b"ted", None));
            bytes.extend(frame(true, TEXT, b"masked", Some([1, 2, 3, 4])));
            let (mut ws, _server) = client_with(&bytes).await;
            assert_eq!(text(&mut ws).as_deref(), Some("short"));
            assert_eq!(text(&mut ws), Some(long));
            assert_eq!(text(&mut ws), Some(huge));
            assert_eq!(text(&mut ws).as_deref(), Some("fragmented"));
            assert_eq!(text(&mut ws).as_deref(), Some("masked"));
            assert_eq!(ws.next(), Next::Incomplete);
            // The ping was answered: one masked pong frame carrying "p".
            assert_eq!(ws.out.len(), 2 + 4 + 1);
            assert_eq!(ws.out[0], FIN | PONG);
            assert_eq!(ws.out[1], 0x80 | 1);
            let key = [ws.out[2], ws.out[3], ws.out[4], ws.out[5]];
            assert_eq!(ws.out[6] ^ key[0], b'p');
        }

        #[tokio::test]
        async fn a_frame_split_over_reads_is_completed_and_a_close_is_answered() {
            let whole = frame(true, TEXT, "w".repeat(5000).as_bytes(), None);
            let (mut ws, mut server) = client_with(&whole[..3]).await;
            assert_eq!(ws.next(), Next::Incomplete);
            server.write_all(&whole[3..]).await.unwrap();
            server
                .write_all(&frame(true, CLOSE, &[0x03, 0xE8], None))
                .await
                .unwrap();
            let mut got = None;
            while got.is_none() {
                assert!(ws.fill().await.unwrap() > 0);
                got = text(&mut ws);
            }
            assert_eq!(got.map(|t| t.len()), Some(5000));
            while ws.next() != Next::Closed {
                assert!(ws.fill().await.unwrap() > 0);
            }
            assert!(ws.closed());
            assert_eq!(ws.out[0], FIN | CLOSE);
            ws.flush().await.unwrap();
            let mut reply = [0u8; 8];
            server.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply[0], FIN | CLOSE);
            assert_eq!(reply[1], 0x80 | 2);
            let key = [reply[2], reply[3], reply[4], reply[5]];
            assert_eq!([reply[6] ^ key[0], reply[7] ^ key[1]], [0x03, 0xE8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{find_bar, sent_at};

    #[test]
    fn the_send_time_is_the_digits_right_before_the_first_bar() {
        assert_eq!(sent_at(b"1733|xxx"), Some(1733));
        let frame = br#"{"type":"message","nick":"sender0","text":"1733000000000123|xx|9","ts":1}"#;
        assert_eq!(sent_at(frame), Some(1_733_000_000_000_123));
        assert_eq!(sent_at(br#"42["msg",{"text":"x12|y"}]"#), Some(12));
        assert_eq!(
            sent_at(b"a frame without any bar in it, long enough for words"),
            None
        );
        assert_eq!(sent_at(b"abc|1"), None);
        assert_eq!(sent_at(b"99999999999999999999999|"), None);
    }

    #[test]
    fn the_first_bar_is_found_wherever_it_is() {
        for at in 0..40 {
            let mut frame = vec![b'a'; 40];
            frame[at] = b'|';
            assert_eq!(find_bar(&frame), Some(at));
            frame[39] = b'|';
            assert_eq!(find_bar(&frame), Some(at));
        }
        assert_eq!(find_bar(&[b'{'; 23]), None);
    }
}
