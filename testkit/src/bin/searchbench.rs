//! Search latency over a large archive, for `cargo xtask bench --scenarios search`: fills a Roomcast archive
//! (PostgreSQL, its schema migrated by a replica) with `--messages` messages of generated chat text — words drawn from
//! a 5,000-word vocabulary with Zipf frequencies, 5 % of the messages in Japanese/Chinese — then asks a replica, over
//! its WebSocket, query after query of each kind (a common word, a rare one, part of a word, two words, a short
//! whole word, CJK, one room only, a word that is nowhere) and measures each answer, send of `search` to receipt of
//! `search_results`. Prints one JSON object.
//!
//! The messages are written straight into the archive's `events` table with `COPY`, as the archiver writes them
//! (the same columns; PostgreSQL derives the searchable text itself): search reads that table and nothing else, and
//! storing a million messages through the WebSocket path is what `--scenarios archive` measures.
//!
//! `searchbench --url ws://127.0.0.1:3000 --database-url postgres://… --messages 1000000 --rooms 100 --queries 200`

use std::io::Cursor;
use std::time::Instant;

use clap::Parser;
use futures_util::SinkExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use testkit::client::next_text as until;

#[derive(Debug, Parser)]
#[command(about = "Search latency over a large Roomcast archive")]
struct Args {
    /// A replica's base URL (ws://host:port), its archive at --database-url.
    #[arg(long)]
    url: String,
    /// The archive the replica uses (its schema already migrated).
    #[arg(long)]
    database_url: String,
    /// Messages the archive holds for the measurement (filled up to this many).
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Rooms they are spread over, named `search-<i>`.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Queries of each kind.
    #[arg(long, default_value_t = 200)]
    queries: usize,
}

/// A cheap reproducible random sequence (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() >> 33) as usize % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Words of one or two letters people type, ranked among the common ones.
const SHORT: [&str; 8] = ["ok", "go", "db", "hi", "up", "ci", "pr", "qa"];
/// CJK words; a CJK message strings several together with particles, without spaces.
const CJK: [&str; 16] = [
    "東京", "大阪", "会議", "明日", "資料", "確認", "今日", "予定", "問題", "報告", "部署", "服务",
    "数据", "测试", "発表", "設計",
];
const PARTICLES: [&str; 5] = ["は", "に", "を", "で", "の"];

/// The vocabulary, most frequent first: 5,000 made-up words of 3 to 11 letters (syllables, so parts of words recur
/// across words as in a real language), with the short words at ranks 10–17.
fn vocabulary() -> Vec<String> {
    const SYLLABLES: [&str; 32] = [
        "ka", "ri", "to", "me", "lo", "su", "na", "vi", "de", "po", "la", "ne", "sa", "mo", "ti",
        "ru", "ga", "be", "fi", "zo", "str", "an", "el", "or", "is", "un", "ber", "con", "pre",
        "ment", "ing", "tion",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut words: Vec<String> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    while words.len() < 5000 {
        let parts = 1 + rng.below(4);
        let word: String = (0..parts)
            .map(|_| SYLLABLES[rng.below(SYLLABLES.len())])
            .collect();
        if word.len() >= 3 && word.len() <= 11 && seen.insert(word.clone()) {
            words.push(word);
        }
    }
    for (i, short) in SHORT.iter().enumerate() {
        words.insert(10 + i, (*short).to_owned());
    }
    words
}

/// Zipf sampling over ranks (s = 1.07, as word frequencies in text).
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: usize) -> Self {
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 1..=n {
            total += 1.0 / (rank as f64).powf(1.07);
            cdf.push(total);
        }
        Self(cdf.into_iter().map(|c| c / total).collect())
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.0.partition_point(|c| *c < u).min(self.0.len() - 1)
    }
}

/// The text of message `i`: 5–24 words, or (one in twenty) a CJK sentence.
fn text(i: usize, words: &[String], zipf: &Zipf, rng: &mut Rng) -> String {
    if i % 20 == 7 {
        let n = 3 + rng.below(4);
        return (0..n)
            .map(|k| {
                let word = CJK[rng.below(CJK.len())];
                if k + 1 < n {
                    format!("{word}{}", PARTICLES[rng.below(PARTICLES.len())])
                } else {
                    format!("{word}です")
                }
            })
            .collect();
    }
    let n = 5 + rng.below(20);
    (0..n)
        .map(|_| words[zipf.sample(rng)].as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fills the archive up to `messages` messages in `rooms` rooms with `COPY`; returns how many it wrote.
async fn fill(pg: &tokio_postgres::Client, args: &Args) -> Result<usize, tokio_postgres::Error> {
    let have: i64 = pg
        .query_one(
            "SELECT count(*) FROM events WHERE room LIKE 'search-%' AND kind = 'message'",
            &[],
        )
        .await?
        .get(0);
    let have = usize::try_from(have).unwrap_or(0);
    if have >= args.messages {
        return Ok(0);
    }
    for r in 0..args.rooms {
        pg.execute(
            "INSERT INTO rooms (room, epoch) VALUES ($1, 'bench') ON CONFLICT DO NOTHING",
            &[&format!("search-{r}")],
        )
        .await?;
    }
    let words = vocabulary();
    let zipf = Zipf::new(words.len());
    let mut rng = Rng(0x51ab_cdef_0123_4567 ^ have as u64);
    // A message a millisecond, ending a minute ago.
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - 60_000
        - args.messages as i64;
    let sink = pg
        .copy_in("COPY events (room, ms, seq, epoch, pos, kind, body, cid, digest) FROM STDIN")
        .await?;
    let mut sink = std::pin::pin!(sink);
    let mut chunk = String::new();
    for i in have..args.messages {
        let room = i % args.rooms;
        let body = serde_json::json!({
            "kind": "message",
            "nick": format!("user{}", i % 500),
            "text": text(i, &words, &zipf, &mut rng),
        })
        .to_string()
        .replace('\\', "\\\\");
        chunk.push_str(&format!(
            "search-{room}\t{}\t0\tbench\t{}\tmessage\t{body}\tc{i}\tbench\n",
            start_ms + i as i64,
            i / args.rooms + 1
        ));
        if chunk.len() > 1 << 20 {
            sink.send(Cursor::new(std::mem::take(&mut chunk).into_bytes()))
                .await?;
        }
    }
    sink.send(Cursor::new(chunk.into_bytes())).await?;
    sink.as_mut().finish().await?;
    pg.execute("ANALYZE events", &[]).await?;
    Ok(args.messages - have)
}

/// One kind of query and the queries of that kind.
struct Kind {
    name: &'static str,
    queries: Vec<(String, Option<String>)>,
}

/// `n` queries of each kind, drawn from the vocabulary the messages were written with.
fn kinds(n: usize, rooms: usize) -> Vec<Kind> {
    let words = vocabulary();
    let mut rng = Rng(0x0bad_5eed);
    let mut kind = |name, make: &mut dyn FnMut(&mut Rng) -> (String, Option<String>)| Kind {
        name,
        queries: (0..n).map(|_| make(&mut rng)).collect(),
    };
    let long = |w: &String| w.len() >= 6;
    let mid: Vec<&String> = words[100..1000].iter().filter(|w| long(w)).collect();
    let rare: Vec<&String> = words[3000..].iter().collect();
    vec![
        kind("common word", &mut |r| {
            (words[18 + r.below(20)].clone(), None)
        }),
        kind("rare word", &mut |r| {
            (rare[r.below(rare.len())].clone(), None)
        }),
        kind("part of a word", &mut |r| {
            let w = mid[r.below(mid.len())];
            let at = r.below(w.len() - 4);
            (w[at..at + 4].to_owned(), None)
        }),
        kind("two words", &mut |r| {
            (
                format!("{} {}", mid[r.below(mid.len())], words[18 + r.below(20)]),
                None,
            )
        }),
        kind("short whole word", &mut |r| {
            (SHORT[r.below(SHORT.len())].to_owned(), None)
        }),
        kind("CJK word", &mut |r| {
            (CJK[r.below(CJK.len())].to_owned(), None)
        }),
        kind("one room", &mut |r| {
            (
                mid[r.below(mid.len())].clone(),
                Some(format!("search-{}", r.below(rooms))),
            )
        }),
        kind("no match", &mut |r| {
            (format!("zqxj{}", r.below(1000)), None)
        }),
    ]
}

#[derive(Debug, Serialize)]
struct KindReport {
    kind: &'static str,
    queries: u64,
    errors: u64,
    /// Mean results per answer (a page is 20).
    mean_results: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    messages: i64,
    rooms: usize,
    filled: usize,
    fill_secs: f64,
    events_total_bytes: i64,
    events_index_bytes: i64,
    kinds: Vec<KindReport>,
    /// Over every query of every kind.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let pg = testkit::connect_postgres(&args.database_url).await;
    // The replica migrates the schema as it starts, possibly after it listens: wait for the table to exist.
    let deadline = Instant::now() + testkit::PATIENCE;
    loop {
        let exists: bool = pg
            .query_one("SELECT to_regclass('events') IS NOT NULL", &[])
            .await
            .expect("ask for the events table")
            .get(0);
        if exists {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never made the archive's schema"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let started = Instant::now();
    let filled = fill(&pg, &args).await.expect("fill the archive");
    let fill_secs = started.elapsed().as_secs_f64();
    let row = pg
        .query_one(
            "SELECT count(*), pg_total_relation_size('events'), pg_indexes_size('events') FROM events \
             WHERE kind = 'message'",
            &[],
        )
        .await
        .expect("the archive's size");

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{}/ws", args.url))
        .await
        .expect("connect to the replica");
    until(&mut ws, |t| t.contains("\"type\":\"welcome\"")).await;
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let mut reports = Vec::new();
    let mut n = 0u64;
    for kind in kinds(args.queries, args.rooms) {
        let mut h = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
        let (mut errors, mut results) = (0u64, 0u64);
        for (query, room) in &kind.queries {
            n += 1;
            let req = format!("s{n}");
            let ask =
                serde_json::json!({"type": "search", "query": query, "room": room, "req": req});
            let sent = Instant::now();
            ws.send(Message::text(ask.to_string())).await.expect("send");
            let needle = format!("\"req\":\"{req}\"");
            let answer = until(&mut ws, |t| t.contains(&needle)).await;
            let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = h.record(us.max(1));
            let _ = all.record(us.max(1));
            let value: serde_json::Value = serde_json::from_str(&answer).expect("JSON");
            if value["type"] == "search_results" {
                results += value["results"].as_array().map_or(0, Vec::len) as u64;
            } else {
                errors += 1;
                eprintln!("search {query:?}: {answer}");
            }
        }
        reports.push(KindReport {
            kind: kind.name,
            queries: h.len(),
            errors,
            mean_results: results as f64 / h.len().max(1) as f64,
            p50_ms: ms(&h, 0.5),
            p90_ms: ms(&h, 0.9),
            p99_ms: ms(&h, 0.99),
            max_ms: h.max() as f64 / 1000.0,
        });
    }
    let report = Report {
        messages: row.get(0),
        rooms: args.rooms,
        filled,
        fill_secs,
        events_total_bytes: row.get(1),
        events_index_bytes: row.get(2),
        kinds: reports,
        p50_ms: ms(&all, 0.5),
        p99_ms: ms(&all, 0.99),
        max_ms: all.max() as f64 / 1000.0,
    };
    println!(
        "{}",
        serde_json::to_string(&report).expect("the report serializes")
    );
}
