//! Publishing from outside: the HTTP API (`POST`/`GET /api/rooms/{room}/messages`) and `roomcast publish`, both
//! through the same room rules as a WebSocket `send` — typed errors for bad input and auth, idempotency by cid,
//! members see each stored message exactly once. Also `/readyz`.

use std::net::SocketAddr;
use std::process::Command;

use backend::api::{HistoryPage, Posted};
use serde_json::Value;
use shared::MsgId;

use crate::harness::{Redis, Replica, config, eventually, http_get};

const KEY: &str = "test-key-0123456789abcdef";
const OTHER_KEY: &str = "other-key-0123456789abcdef";

async fn post(addr: SocketAddr, room: &str, auth: Option<&str>, body: &str) -> (u16, Value) {
    let bearer = auth.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = bearer
        .as_deref()
        .map(|b| vec![("Authorization", b)])
        .unwrap_or_default();
    let (status, _, body) = testkit::http_request(
        addr,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        &headers,
        Some(body),
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let bearer = format!("Bearer {KEY}");
    let (status, _, body) =
        testkit::http_request(addr, "GET", path, &[("Authorization", &bearer)], None).await;
    (status, body)
}

async fn api_replica(redis: Option<&Redis>, per_sec: u32) -> Replica {
    let mut c = config(redis.map(Redis::url).as_deref());
    c.api_keys = vec![KEY.to_owned(), OTHER_KEY.to_owned()];
    c.api_sends_per_sec = per_sec;
    Replica::start_with(c).await
}

#[tokio::test]
async fn the_api_is_off_without_keys_and_says_so() {
    let replica = Replica::start(None).await;
    let (status, body) = post(
        replica.addr,
        "general",
        Some(KEY),
        r#"{"nick":"a","text":"b"}"#,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "api_disabled");
    assert!(body["message"].as_str().unwrap().contains("--api-keys"));
}

#[tokio::test]
async fn posted_messages_reach_members_once_and_bad_requests_get_typed_errors() {
    let redis = Redis::start().await;
    let replica = api_replica(Some(&redis), 1000).await;
    let mut member = replica.client().await;
    member.join("news", "reader", None).await;
    let addr = replica.addr;

    // Auth failures.
    let good = r#"{"nick":"deploy-bot","text":"v2 is live","cid":"d-1"}"#;
    let (status, body) = post(addr, "news", None, good).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = post(addr, "news", Some("wrong-key-0123456789abc"), good).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );

    // Bad input, each with its own code; nothing is stored.
    let cases = [
        ("news", "not json", "bad_request"),
        ("news", r#"{"text":"no nick"}"#, "bad_request"),
        (
            "news",
            r#"{"nick":"a","text":"t","extra":1}"#,
            "bad_request",
        ),
        ("Bad Room!", good, "invalid_room"),
        ("news", r#"{"nick":"","text":"t"}"#, "invalid_nick"),
        ("news", r#"{"nick":"a","text":""}"#, "invalid_text"),
        (
            "news",
            r#"{"nick":"a","text":"t","cid":"has space"}"#,
            "invalid_client_id",
        ),
    ];
    for (room, body, code) in cases {
        let room = room.replace(' ', "%20");
        let (status, answer) = post(addr, &room, Some(KEY), body).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(code)),
            "{body}"
        );
    }
    let huge = format!(r#"{{"nick":"a","text":"{}"}}"#, "x".repeat(70_000));
    let (status, answer) = post(addr, "news", Some(KEY), &huge).await;
    assert_eq!((status, answer["error"].as_str()), (413, Some("too_large")));

    // Stored once, however often it is retried with the same cid.
    let (status, first) = post(addr, "news", Some(KEY), good).await;
    assert_eq!(status, 201, "{first}");
    let posted: Posted = serde_json::from_value(first).unwrap();
    assert!(!posted.duplicate);
    let (status, again) = post(addr, "news", Some(KEY), good).await;
    assert_eq!(status, 200, "a retry is answered with the original");
    let again: Posted = serde_json::from_value(again).unwrap();
    assert_eq!((again.id, again.duplicate), (posted.id, true));
    let (status, reused) = post(
        addr,
        "news",
        Some(KEY),
        r#"{"nick":"deploy-bot","text":"other","cid":"d-1"}"#,
    )
    .await;
    assert_eq!(
        (status, reused["error"].as_str()),
        (409, Some("cid_reused"))
    );
    let (status, second) = post(
        addr,
        "news",
        Some(KEY),
        r#"{"nick":"deploy-bot","text":"no cid"}"#,
    )
    .await;
    assert_eq!(status, 201);
    let second: Posted = serde_json::from_value(second).unwrap();

    let got = member.message_in("news").await;
    assert_eq!(
        (got.id, got.nick.as_str(), got.text.as_str()),
        (posted.id, "deploy-bot", "v2 is live")
    );
    let got = member.message_in("news").await;
    assert_eq!(
        got.id, second.id,
        "the retry and the refused reuse delivered nothing"
    );

    // History over HTTP: newest, after `since`, and a bad `since`.
    let (status, body) = get(addr, "/api/rooms/news/messages?limit=10").await;
    assert_eq!(status, 200, "{body}");
    let page: HistoryPage = serde_json::from_str(&body).unwrap();
    let ids: Vec<MsgId> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [posted.id, second.id]);
    assert!(!page.truncated);
    let (_, body) = get(
        addr,
        &format!("/api/rooms/news/messages?since={}", posted.id),
    )
    .await;
    let page: HistoryPage = serde_json::from_str(&body).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].id, second.id);
    let (status, body) = get(addr, "/api/rooms/news/messages?since=yesterday").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn each_key_is_rate_limited_and_a_redis_outage_is_503() {
    let mut redis = Redis::start().await;
    let replica = api_replica(Some(&redis), 3).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let body = format!(r#"{{"nick":"bot","text":"m{i}","cid":"r-{i}"}}"#);
        statuses.push(post(replica.addr, "busy", Some(KEY), &body).await.0);
    }
    assert_eq!(statuses, [201, 201, 201, 429], "a burst of 3, then limited");
    let other = post(
        replica.addr,
        "busy",
        Some(OTHER_KEY),
        r#"{"nick":"bot","text":"mine"}"#,
    )
    .await;
    assert_eq!(other.0, 201, "another key has its own budget");

    let (status, body) = http_get(replica.addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    redis.kill();
    eventually("readyz reports the bus down", || async {
        let (status, body) = http_get(replica.addr, "/readyz").await;
        (status == 503 && body.contains("bus down")).then_some(())
    })
    .await;
    let (status, body) = post(
        replica.addr,
        "busy",
        Some(OTHER_KEY),
        r#"{"nick":"bot","text":"down"}"#,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("unavailable")),
        "{body}"
    );
    let (status, _) = http_get(replica.addr, "/healthz").await;
    assert_eq!(status, 200, "liveness is not readiness");
}

fn cli(redis: &Redis, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["--redis-url", &redis.url()])
        .arg("publish")
        .args(args)
        .output()
        .expect("run roomcast publish");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_publishes_through_the_same_rules() {
    let redis = Redis::start().await;
    let replica = Replica::start(Some(&redis.url())).await;
    let mut member = replica.client().await;
    member.join("ops", "reader", None).await;

    let backup = [
        "--room",
        "ops",
        "--nick",
        "cron",
        "--cid",
        "backup-1",
        "backup done",
    ];
    let (code, out, err) = cli(&redis, &backup);
    assert_eq!(code, Some(0), "{err}");
    let id: MsgId = out.parse().expect("prints the id");
    let (code, out, err) = cli(&redis, &backup);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("{id} (already stored: duplicate cid)"));
    let (code, _, err) = cli(&redis, &["--room", "ops", "--nick", "", "x"]);
    assert_eq!(code, Some(1));
    assert!(err.starts_with("error: ") && err.contains("nick"), "{err}");

    let got = member.message_in("ops").await;
    assert_eq!(
        (got.id, got.nick.as_str(), got.text.as_str()),
        (id, "cron", "backup done")
    );
    let (code, out, _) = cli(&redis, &["--room", "ops", "--nick", "cron", "second"]);
    assert_eq!(code, Some(0));
    let next = member.message_in("ops").await;
    assert_eq!(next.id.to_string(), out, "the repeat was not delivered");
}

/// Moderates `room` through the API's moderation endpoint; answers the event's id and whether it was a repeat.
async fn moderate(addr: SocketAddr, room: &str, body: &str) -> (MsgId, bool) {
    let bearer = format!("Bearer {KEY}");
    let (status, _, answer) = testkit::http_request(
        addr,
        "POST",
        &format!("/api/rooms/{room}/moderation"),
        &[("Authorization", &bearer)],
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{body}: {answer}");
    let answer: backend::api::Moderated = serde_json::from_str(&answer).unwrap();
    (answer.id, answer.duplicate)
}

/// Publishing *as a nick* applies that nick's room rules, whatever the way in: a muted, banned or slowed nick is
/// refused over the HTTP API (403 `muted`/`banned`, 429 `slow_mode`) and by `roomcast publish` (exit 1, an `error:`
/// line), exactly as over the WebSocket, and members receive nothing of what was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_cli_obey_mute_ban_and_slow_mode() {
    let redis = Redis::start().await;
    let replica = api_replica(Some(&redis), 1000).await;
    obey_the_rules(&replica, Some(&redis)).await;
}

/// The same rules on the in-memory bus (`Rules::apply`, where Redis runs `publish.lua`), through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_obeys_mute_ban_and_slow_mode_on_the_memory_bus() {
    let replica = api_replica(None, 1000).await;
    obey_the_rules(&replica, None).await;
}

/// Mutes, bans and slows nicks through the API's moderation endpoint, then publishes as them through the API and
/// (with Redis) the CLI.
async fn obey_the_rules(replica: &Replica, redis: Option<&Redis>) {
    let addr = replica.addr;
    let r = "rules";
    let mut member = replica.client().await;
    member.join(r, "reader", None).await;
    let mute = r#"{"action":"mute","nick":"mutebot","secs":600,"cid":"mute-1"}"#;
    let (muted, repeat) = moderate(addr, r, mute).await;
    assert!(!repeat);
    // A retry (a lost answer) moderates once.
    assert_eq!(moderate(addr, r, mute).await, (muted, true));
    moderate(addr, r, r#"{"action":"ban","nick":"banbot","secs":600}"#).await;

    let (status, body) = post(addr, r, Some(KEY), r#"{"nick":"mutebot","text":"hi"}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("muted")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("muted"),
        "{body}"
    );
    let (status, body) = post(addr, r, Some(KEY), r#"{"nick":"banbot","text":"hi"}"#).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("banned")),
        "{body}"
    );
    if let Some(redis) = redis {
        let (code, out, err) = cli(redis, &["--room", r, "--nick", "mutebot", "from cron"]);
        assert_eq!(code, Some(1), "{out}");
        assert!(err.starts_with("error: ") && err.contains("muted"), "{err}");
        let (code, _, err) = cli(redis, &["--room", r, "--nick", "banbot", "from cron"]);
        assert_eq!(code, Some(1));
        assert!(
            err.starts_with("error: ") && err.contains("banned"),
            "{err}"
        );
    }

    // Slow mode: two posts at once as one nick, one of them is stored; another nick is not slowed by it.
    moderate(addr, r, r#"{"action":"slow_mode","secs":30}"#).await;
    let first = r#"{"nick":"slowbot","text":"one","cid":"s-1"}"#;
    let second = r#"{"nick":"slowbot","text":"two","cid":"s-2"}"#;
    let (a, b) = tokio::join!(
        post(addr, r, Some(KEY), first),
        post(addr, r, Some(KEY), second)
    );
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 429], "{a:?} {b:?}");
    let refused = if a.0 == 429 { &a.1 } else { &b.1 };
    assert_eq!(refused["error"], "slow_mode", "{refused}");
    if let Some(redis) = redis {
        let (code, _, err) = cli(redis, &["--room", r, "--nick", "slowbot", "three"]);
        assert_eq!(code, Some(1));
        assert!(
            err.starts_with("error: ") && err.contains("slow mode"),
            "{err}"
        );
    }
    let (status, other) = post(addr, r, Some(KEY), r#"{"nick":"otherbot","text":"free"}"#).await;
    assert_eq!(status, 201, "{other}");

    // The member got the three moderation events (the retried mute once), the one slow post and otherbot's:
    // nothing refused.
    let mut texts = Vec::new();
    while texts.len() < 2 {
        texts.push(member.message_in(r).await.text);
    }
    assert!(texts[0] == "one" || texts[0] == "two", "{texts:?}");
    assert_eq!(texts[1], "free");
    let pending = member.pending();
    assert!(
        pending
            .iter()
            .all(|m| !matches!(m, shared::ServerMsg::Message(_))),
        "{pending:?}"
    );
    let events = pending
        .iter()
        .filter(|m| matches!(m, shared::ServerMsg::Moderation(_)))
        .count();
    assert_eq!(events, 3, "{pending:?}");
}
