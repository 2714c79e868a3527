//! The reconnect-storm generator of `cargo xtask bench --scenarios storm`: thousands of clients in rooms of mixed
//! sizes with steady traffic, each behaving like the browser client — when its connection ends it reconnects to
//! another replica (honouring `try_again` with jitter), rejoins with `since` + `epoch`, and resends an unacked
//! message with the same cid. While the harness kills and drains replicas, it prints a status line twice a second;
//! on `stop` (a line on stdin) it stops sending, lets deliveries settle, and prints one JSON report: how long each
//! client took to be back after losing its connection, and, per client, what it lost or received twice (exact: the
//! acked ids of its room against the ids it received).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use shared::{ClientMsg, MsgId, ServerMsg, frame};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

#[derive(Debug, Parser)]
#[command(about = "Reconnect-storm generator for Roomcast")]
struct Args {
    /// A replica's base URL (ws://host:port); repeat for each. Clients start spread over them.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// Members of the big room.
    #[arg(long, default_value_t = 5_000)]
    big: usize,
    /// Small rooms.
    #[arg(long, default_value_t = 1_000)]
    small_rooms: usize,
    /// Members of each small room.
    #[arg(long, default_value_t = 10)]
    small_size: usize,
    /// Messages per second into the big room (from 5 of its members).
    #[arg(long, default_value_t = 5)]
    big_rate: u64,
    /// Seconds between two messages of one small room (its first member sends).
    #[arg(long, default_value_t = 10)]
    small_every: u64,
    /// Spread connections over this many loopback source addresses.
    #[arg(long, default_value_t = 32)]
    sources: u8,
    /// How long deliveries may settle after `stop`.
    #[arg(long, default_value_t = 5)]
    settle_seconds: u64,
    /// Room name prefix.
    #[arg(long, default_value = "storm")]
    prefix: String,
}

/// Counters the status line prints.
#[derive(Debug, Default)]
struct Counters {
    joined: AtomicUsize,
    down: AtomicUsize,
    try_again_connect: AtomicU64,
    try_again_join: AtomicU64,
    refused_connects: AtomicU64,
}

/// What all clients share.
struct Shared {
    urls: Vec<String>,
    counters: Counters,
    /// Per room: the ids its senders got acked.
    acked: Vec<Mutex<Vec<MsgId>>>,
    /// Per outage of any client: milliseconds from losing the connection to the `joined` of its rejoin.
    recoveries: Mutex<Vec<u64>>,
    sending: AtomicBool,
    started: Instant,
    sources: u8,
}

/// What one client ends with.
#[derive(Debug, Default)]
struct Outcome {
    room: usize,
    ids: Vec<MsgId>,
    reconnects: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    clients: usize,
    rooms: usize,
    acked: usize,
    delivered: u64,
    expected: u64,
    lost: u64,
    duplicated: u64,
    clients_with_loss: usize,
    outages: usize,
    recovery_p50_ms: u64,
    recovery_p99_ms: u64,
    recovery_max_ms: u64,
    try_again_connect: u64,
    try_again_join: u64,
    refused_connects: u64,
    reconnects: u64,
}

fn jitter(up_to: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) % (up_to + 1)
}

async fn open(url: &str, source: IpAddr) -> Option<Ws> {
    let host = url.strip_prefix("ws://")?.split('/').next()?;
    let addr: SocketAddr = host.parse().ok()?;
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), socket.connect(addr))
        .await
        .ok()?
        .ok()?;
    tcp.set_nodelay(true).ok()?;
    let ws_url = format!("{url}{}", shared::WS_PATH);
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(ws_url, MaybeTlsStream::Plain(tcp)),
    )
    .await
    .ok()?
    .ok()?;
    Some(ws)
}

async fn next_frame(ws: &mut Ws) -> Option<ServerMsg> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

async fn put(ws: &mut Ws, msg: &ClientMsg) -> bool {
    ws.send(Message::text(
        serde_json::to_string(msg).expect("serializes"),
    ))
    .await
    .is_ok()
}

/// Connects to some replica (starting at `start`, then the others), honouring `try_again`; returns the socket
/// after its welcome.
async fn connect(shared: &Shared, start: usize, source: IpAddr) -> Ws {
    let mut i = start;
    let mut failures = 0_u64;
    loop {
        let url = &shared.urls[i % shared.urls.len()];
        i += 1;
        if let Some(mut ws) = open(url, source).await {
            match next_frame(&mut ws).await {
                Some(ServerMsg::Welcome(_)) => return ws,
                Some(ServerMsg::TryAgain(frame::TryAgain { after_ms, .. })) => {
                    shared
                        .counters
                        .try_again_connect
                        .fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(after_ms + jitter(after_ms))).await;
                    continue;
                }
                _ => {}
            }
        }
        shared
            .counters
            .refused_connects
            .fetch_add(1, Ordering::Relaxed);
        failures += 1;
        // A replica that refuses (dead or draining): the next one at once, then back off a little.
        if failures.is_multiple_of(shared.urls.len() as u64) {
            let wait = 100 * failures.min(20);
            tokio::time::sleep(Duration::from_millis(wait + jitter(wait))).await;
        }
    }
}

/// One client: joins `room`, reads everything, and (as a sender) sends every `every`, until stopped.
#[allow(clippy::too_many_lines)]
async fn client(
    shared: Arc<Shared>,
    index: usize,
    room: usize,
    room_name: String,
    every: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Outcome {
    let source = IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        0,
        2 + u8::try_from(index % usize::from(shared.sources.max(1))).unwrap_or(0),
    ));
    let nick = format!("c{index}");
    let mut out = Outcome {
        room,
        ..Outcome::default()
    };
    let (mut since, mut epoch): (Option<MsgId>, Option<String>) = (None, None);
    let mut pending: Option<(String, String)> = None;
    let mut sent = 0_u64;
    let mut dropped_at: Option<Instant> = None;
    let mut start = index;
    'connection: loop {
        let mut ws = connect(&shared, start, source).await;
        start += 1;
        // Join (again), honouring try_again.
        loop {
            let join = ClientMsg::Join {
                room: room_name.clone(),
                nick: nick.clone(),
                since,
                epoch: epoch.clone(),
                person: None,
                req: Some("j".into()),
            };
            if !put(&mut ws, &join).await {
                continue 'connection;
            }
            let answer = loop {
                match next_frame(&mut ws).await {
                    None => continue 'connection,
                    Some(ServerMsg::Joined(frame::Joined {
                        history, epoch: e, ..
                    })) => break Some((history, e)),
                    Some(ServerMsg::TryAgain(frame::TryAgain { after_ms, .. })) => {
                        shared
                            .counters
                            .try_again_join
                            .fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(after_ms + jitter(after_ms)))
                            .await;
                        break None;
                    }
                    Some(ServerMsg::Error(_)) => {
                        tokio::time::sleep(Duration::from_millis(200 + jitter(200))).await;
                        break None;
                    }
                    Some(_) => {}
                }
            };
            if let Some((history, e)) = answer {
                epoch = Some(e);
                for m in history {
                    out.ids.push(m.id);
                    since = since.max(Some(m.id));
                }
                break;
            }
        }
        shared.counters.joined.fetch_add(1, Ordering::Relaxed);
        if let Some(at) = dropped_at.take() {
            shared.counters.down.fetch_sub(1, Ordering::Relaxed);
            let ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
            shared.recoveries.lock().expect("lock").push(ms);
        }
        // A message sent before the connection went and never acked: the same cid again.
        if let Some((cid, text)) = &pending {
            let resend = ClientMsg::Send {
                room: room_name.clone(),
                text: text.clone(),
                cid: cid.clone(),
                reply_to: None,
            };
            if !put(&mut ws, &resend).await {
                lost_connection(&shared, &mut dropped_at, &mut out);
                continue 'connection;
            }
        }
        let mut tick = every.map(|e| {
            let phase = Duration::from_millis(jitter(u64::try_from(e.as_millis()).unwrap_or(1000)));
            tokio::time::interval_at(tokio::time::Instant::now() + phase, e)
        });
        loop {
            let next_tick = async {
                match tick.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                frame = next_frame(&mut ws) => match frame {
                    Some(ServerMsg::Message(m)) => {
                        out.ids.push(m.id);
                        since = since.max(Some(m.id));
                    }
                    Some(ServerMsg::Ack(frame::Ack { cid, id, .. })) => {
                        if pending.as_ref().is_some_and(|(c, _)| *c == cid) {
                            pending = None;
                            shared.acked[room].lock().expect("lock").push(id);
                        }
                    }
                    Some(ServerMsg::Gap(frame::Gap { epoch: e, .. })) => epoch = Some(e),
                    Some(_) => {}
                    None => {
                        lost_connection(&shared, &mut dropped_at, &mut out);
                        continue 'connection;
                    }
                },
                () = next_tick => {
                    if pending.is_none() && shared.sending.load(Ordering::Relaxed) {
                        sent += 1;
                        let cid = format!("{nick}-{sent}");
                        let text = format!("{nick} says {sent}");
                        let send = ClientMsg::Send {
                            room: room_name.clone(),
                            text: text.clone(),
                            cid: cid.clone(),
                            reply_to: None,
                        };
                        pending = Some((cid, text));
                        if !put(&mut ws, &send).await {
                            lost_connection(&shared, &mut dropped_at, &mut out);
                            continue 'connection;
                        }
                    }
                }
                _ = stop.changed() => {}
            }
            // Stopped: once nothing of ours waits for an ack, this client is done.
            if *stop.borrow() && pending.is_none() {
                let _ = ws.close(None).await;
                return out;
            }
        }
    }
}

fn lost_connection(shared: &Shared, dropped_at: &mut Option<Instant>, out: &mut Outcome) {
    shared.counters.joined.fetch_sub(1, Ordering::Relaxed);
    shared.counters.down.fetch_add(1, Ordering::Relaxed);
    *dropped_at = Some(Instant::now());
    out.reconnects += 1;
}

/// The recovery times (ms) as a histogram: quantiles read the same way as every other latency the benches report.
fn histogram(values: &[u64]) -> hdrhistogram::Histogram<u64> {
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits");
    for value in values {
        histogram
            .record(*value)
            .expect("an auto-resizing histogram records any value");
    }
    histogram
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let rooms = 1 + args.small_rooms;
    let shared = Arc::new(Shared {
        urls: args.urls.clone(),
        counters: Counters::default(),
        acked: (0..rooms).map(|_| Mutex::new(Vec::new())).collect(),
        recoveries: Mutex::new(Vec::new()),
        sending: AtomicBool::new(false),
        started: Instant::now(),
        sources: args.sources,
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut index = 0;
    // The big room: 5 of its members send, together `big_rate` messages per second.
    for k in 0..args.big {
        let every = (k < 5).then(|| Duration::from_millis(5_000 / args.big_rate.max(1)));
        tasks.push(tokio::spawn(client(
            shared.clone(),
            index,
            0,
            format!("{}-big", args.prefix),
            every,
            stop_rx.clone(),
        )));
        index += 1;
    }
    for r in 0..args.small_rooms {
        for k in 0..args.small_size {
            let every = (k == 0).then(|| Duration::from_secs(args.small_every));
            tasks.push(tokio::spawn(client(
                shared.clone(),
                index,
                1 + r,
                format!("{}-{r}", args.prefix),
                every,
                stop_rx.clone(),
            )));
            index += 1;
        }
    }
    let total = tasks.len();
    // Status twice a second until the report: `status <secs> <joined> <down> <try_again> <refused>`.
    let status = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            let mut steady = false;
            loop {
                tick.tick().await;
                let c = &shared.counters;
                let joined = c.joined.load(Ordering::Relaxed);
                eprintln!(
                    "status {:.1} {joined} {} {} {}",
                    shared.started.elapsed().as_secs_f64(),
                    c.down.load(Ordering::Relaxed),
                    c.try_again_connect.load(Ordering::Relaxed)
                        + c.try_again_join.load(Ordering::Relaxed),
                    c.refused_connects.load(Ordering::Relaxed),
                );
                if !steady && joined == total {
                    steady = true;
                    shared.sending.store(true, Ordering::Relaxed);
                    eprintln!("phase: steady");
                }
            }
        })
    };
    // Wait for `stop` on stdin (or its end).
    let (stdin_tx, stdin_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if line.map_or(true, |l| l.trim() == "stop") {
                break;
            }
        }
        let _ = stdin_tx.send(());
    });
    let _ = stdin_rx.await;
    shared.sending.store(false, Ordering::Relaxed);
    eprintln!("phase: stopping");
    // Senders finish their pending message; then everything settles and every client returns.
    tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
    let _ = stop_tx.send(true);
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("client task"));
    }
    status.abort();
    let acked: Vec<HashSet<MsgId>> = shared
        .acked
        .iter()
        .map(|a| a.lock().expect("lock").iter().copied().collect())
        .collect();
    let (mut delivered, mut expected, mut lost, mut duplicated, mut with_loss, mut reconnects) =
        (0, 0, 0, 0, 0, 0);
    for o in &outcomes {
        let unique: HashSet<MsgId> = o.ids.iter().copied().collect();
        delivered += o.ids.len() as u64;
        duplicated += (o.ids.len() - unique.len()) as u64;
        let want = &acked[o.room];
        expected += want.len() as u64;
        let missing = want.difference(&unique).count() as u64;
        if missing > 0 && with_loss < 5 {
            let mut gone: Vec<_> = want.difference(&unique).map(ToString::to_string).collect();
            gone.sort();
            eprintln!(
                "loss: room {} client got {} ids (first {:?}, last {:?}), {} reconnects, missing {gone:?}",
                o.room,
                o.ids.len(),
                o.ids.first().map(ToString::to_string),
                o.ids.last().map(ToString::to_string),
                o.reconnects
            );
        }
        lost += missing;
        with_loss += usize::from(missing > 0);
        reconnects += o.reconnects;
    }
    let recoveries = histogram(&shared.recoveries.lock().expect("lock"));
    let report = Report {
        clients: total,
        rooms,
        acked: acked.iter().map(HashSet::len).sum(),
        delivered,
        expected,
        lost,
        duplicated,
        clients_with_loss: with_loss,
        outages: usize::try_from(recoveries.len()).unwrap_or(usize::MAX),
        recovery_p50_ms: recoveries.value_at_quantile(0.50),
        recovery_p99_ms: recoveries.value_at_quantile(0.99),
        recovery_max_ms: recoveries.max(),
        try_again_connect: shared.counters.try_again_connect.load(Ordering::Relaxed),
        try_again_join: shared.counters.try_again_join.load(Ordering::Relaxed),
        refused_connects: shared.counters.refused_connects.load(Ordering::Relaxed),
        reconnects,
    };
    println!("{}", serde_json::to_string(&report).expect("serializes"));
}
