//! The scroll-back prober of `cargo xtask bench --scenarios archive`: asks Roomcast for pages of history deep in
//! rooms' archives (older than Redis's hot window, so PostgreSQL answers them) and measures each page's latency, send
//! of `history` to receipt of its `history_page`. Reads the rooms' message ids from the archive itself to aim at
//! random points that exist and checks every page is exactly the `limit` messages before its point. Also reports
//! what the archive holds and what it takes on disk. Prints one JSON object.
//!
//! `scrollback --url ws://127.0.0.1:3000 --url ws://127.0.0.1:3001 --database-url postgres://… --rooms 100 \
//!             --prefix archive --pages 2000`

use std::time::Instant;

use clap::Parser;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use testkit::client::next_text as until;

#[derive(Debug, Parser)]
#[command(about = "Scroll-back latency from Roomcast's archive")]
struct Args {
    /// A replica's base URL (ws://host:port); repeat for each. One connection per URL, each asking in turn.
    #[arg(long = "url", required = true)]
    urls: Vec<String>,
    /// The archive the replicas use: where the rooms' ids and sizes are read.
    #[arg(long)]
    database_url: String,
    /// Rooms, named `<prefix>-<i>` as the load generator names them.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    #[arg(long, default_value = "archive")]
    prefix: String,
    /// Pages to ask for, over all connections.
    #[arg(long, default_value_t = 2000)]
    pages: usize,
    /// Messages per page.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Redis's hot window (the replicas' `--history-limit`): pages are asked from points at least twice this far
    /// back from a room's newest message, so none comes from Redis.
    #[arg(long, default_value_t = 1000)]
    hot: usize,
}

/// What the archive holds and its size on disk.
#[derive(Debug, Serialize)]
struct Disk {
    events: i64,
    messages: i64,
    rooms: i64,
    /// `pg_total_relation_size('events')`: the table, its indexes and TOAST.
    events_total_bytes: i64,
    events_table_bytes: i64,
    events_index_bytes: i64,
    /// `pg_database_size`: everything in the database, catalogs included.
    database_bytes: i64,
    events_total_bytes_per_event: f64,
    database_bytes_per_event: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    pages: u64,
    limit: usize,
    connections: usize,
    /// Pages that were not exactly the `limit` messages before their point.
    wrong_pages: u64,
    /// Requests answered with an error frame.
    errors: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    /// The window pages were asked from: message positions from the oldest, per room.
    deepest: usize,
    shallowest: usize,
    disk: Disk,
}

/// A cheap reproducible random sequence (xorshift64*): which room, which point.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
        (r % n as u64) as usize
    }
}

async fn archive_ids(
    pg: &tokio_postgres::Client,
    room: &str,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = pg
        .query(
            "SELECT ms, seq FROM events WHERE room = $1 AND kind = 'message' ORDER BY ms, seq",
            &[&room],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| format!("{}-{}", r.get::<_, i64>(0), r.get::<_, i64>(1)))
        .collect())
}

async fn disk(pg: &tokio_postgres::Client) -> Result<Disk, tokio_postgres::Error> {
    let row = pg
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE kind = 'message'), count(DISTINCT room), \
             pg_total_relation_size('events'), pg_relation_size('events'), pg_indexes_size('events'), \
             pg_database_size(current_database()) FROM events",
            &[],
        )
        .await?;
    let events: i64 = row.get(0);
    let per = |bytes: i64| bytes as f64 / events.max(1) as f64;
    Ok(Disk {
        events,
        messages: row.get(1),
        rooms: row.get(2),
        events_total_bytes: row.get(3),
        events_table_bytes: row.get(4),
        events_index_bytes: row.get(5),
        database_bytes: row.get(6),
        events_total_bytes_per_event: per(row.get(3)),
        database_bytes_per_event: per(row.get(6)),
    })
}

/// What one connection measured.
struct Probed {
    histogram: Histogram<u64>,
    wrong: u64,
    errors: u64,
}

/// Joins `rooms` on one connection, then asks `pages` pages from random points of them, one at a time.
async fn probe(
    url: String,
    rooms: Vec<(String, Vec<String>)>,
    pages: usize,
    args_limit: usize,
    window: (usize, usize),
    seed: u64,
) -> Probed {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{url}/ws"))
        .await
        .expect("connect");
    until(&mut ws, |t| t.contains("\"type\":\"welcome\"")).await;
    for (room, _) in &rooms {
        let join = serde_json::json!({"type": "join", "room": room, "nick": "prober"});
        ws.send(Message::text(join.to_string()))
            .await
            .expect("send");
        let answer = until(&mut ws, |t| {
            t.contains("\"type\":\"joined\"") || t.contains("\"type\":\"error\"")
        })
        .await;
        assert!(
            answer.contains("\"type\":\"joined\""),
            "cannot join {room}: {answer}"
        );
    }
    let mut rng = Rng(seed | 1);
    let mut probed = Probed {
        histogram: Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
        wrong: 0,
        errors: 0,
    };
    for page in 0..pages {
        let (room, ids) = &rooms[rng.below(rooms.len())];
        let at = window.0 + rng.below(window.1 - window.0);
        let req = format!("h{page}");
        let ask = serde_json::json!({"type": "history", "room": room, "before": ids[at], "limit": args_limit, "req": req});
        let started = Instant::now();
        ws.send(Message::text(ask.to_string())).await.expect("send");
        let needle = format!("\"req\":\"{req}\"");
        let answer = until(&mut ws, |t| {
            t.contains(&needle)
                && (t.contains("\"type\":\"history_page\"") || t.contains("\"type\":\"error\""))
        })
        .await;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = probed.histogram.record(us.max(1));
        let value: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
        if value["type"] == "error" {
            probed.errors += 1;
            continue;
        }
        let got: Vec<&str> = value["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        let want: Vec<&str> = ids[at - args_limit..at]
            .iter()
            .map(String::as_str)
            .collect();
        if got != want {
            probed.wrong += 1;
        }
    }
    let _ = ws.close(None).await;
    probed
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let pg = testkit::connect_postgres(&args.database_url).await;
    let disk = disk(&pg).await.expect("the archive's size");
    let mut rooms = Vec::new();
    for r in 0..args.rooms {
        let room = format!("{}-{r}", args.prefix);
        let ids = archive_ids(&pg, &room).await.expect("the room's ids");
        rooms.push((room, ids));
    }
    let fewest = rooms.iter().map(|(_, ids)| ids.len()).min().unwrap_or(0);
    // Points from `limit` (a full page before each) to twice the hot window before the newest.
    let window = (args.limit, fewest.saturating_sub(2 * args.hot));
    assert!(
        window.1 > window.0,
        "rooms hold {fewest} messages: too few for pages of {} older than twice the hot window of {}",
        args.limit,
        args.hot
    );
    let connections = args.urls.len();
    let mut groups: Vec<Vec<(String, Vec<String>)>> = vec![Vec::new(); connections];
    for (i, room) in rooms.into_iter().enumerate() {
        groups[i % connections].push(room);
    }
    let tasks: Vec<_> = groups
        .into_iter()
        .zip(&args.urls)
        .enumerate()
        .map(|(c, (group, url))| {
            let pages = args.pages / connections + usize::from(c < args.pages % connections);
            tokio::spawn(probe(
                url.clone(),
                group,
                pages,
                args.limit,
                window,
                0x9E37_79B9_7F4A_7C15 ^ c as u64,
            ))
        })
        .collect();
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let (mut wrong, mut errors) = (0, 0);
    for task in tasks {
        let probed = task.await.expect("a prober");
        let _ = histogram.add(&probed.histogram);
        wrong += probed.wrong;
        errors += probed.errors;
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let report = Report {
        pages: histogram.len(),
        limit: args.limit,
        connections,
        wrong_pages: wrong,
        errors,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        max_ms: histogram.max() as f64 / 1000.0,
        mean_ms: histogram.mean() / 1000.0,
        deepest: window.0,
        shallowest: window.1,
        disk,
    };
    println!("{}", serde_json::to_string(&report).expect("serializes"));
}
