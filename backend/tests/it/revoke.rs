//! Session revocation (`POST /api/sessions/revoke`, `roomcast revoke`): a person's connections whose tokens were
//! issued before the revocation close with 4003 on every replica, their older tokens are refused with a 401 naming
//! the revocation (by replicas running then and replicas started later, WebSocket and API alike), newer tokens work,
//! and other people are untouched. On the Redis bus across replicas, and on the in-memory bus.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use shared::close_code;

use crate::harness::{Client, Redis, Replica, config, refused_upgrade};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";
const KEY: &str = "revoke-key-0123456789abcdef";
/// The liveness bound of a revocation reaching a connection: generous, for a loaded machine. The README's "within
/// a second" is measured and printed, not asserted here.
const LIVENESS: Duration = Duration::from_secs(10);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub` (nick `nick`) issued at `iat` (none: no `iat` claim).
fn token(sub: &str, nick: &str, iat: Option<u64>) -> String {
    let mut claims = json!({"sub": sub, "nick": nick, "exp": now() + 600});
    if let Some(iat) = iat {
        claims["iat"] = json!(iat);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

async fn replica(redis: Option<&Redis>) -> Replica {
    let mut c = config(redis.map(Redis::url).as_deref());
    c.jwt_secret = Some(SECRET.to_owned());
    c.api_keys = vec![KEY.to_owned()];
    Replica::start_with(c).await
}

fn url(replica: &Replica, token: &str) -> String {
    format!("{}?token={token}", replica.ws_url())
}

async fn connect(url: &str) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade accepted");
    Client::welcomed(ws).await
}

/// `POST /api/sessions/revoke` with the API key.
async fn revoke(addr: SocketAddr, body: &str) -> (u16, Value) {
    let bearer = format!("Bearer {KEY}");
    let (status, _, body) = testkit::http_request(
        addr,
        "POST",
        "/api/sessions/revoke",
        &[("Authorization", &bearer)],
        Some(body),
    )
    .await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Waits (at most [`LIVENESS`]) for the server to close `client`; returns the close code and when it came.
async fn closed(client: &mut Client) -> (Option<u16>, Instant) {
    let code = tokio::time::timeout(LIVENESS, client.close_code())
        .await
        .expect("the connection was not closed");
    (code, Instant::now())
}

#[tokio::test]
async fn revoking_closes_a_persons_connections_on_every_replica_and_refuses_their_old_tokens() {
    let redis = Redis::start().await;
    let (a, b) = (replica(Some(&redis)).await, replica(Some(&redis)).await);
    let old = token("u-alice", "alice", Some(now() - 60));
    let mut alice_a = connect(&url(&a, &old)).await;
    let mut alice_b = connect(&url(&b, &old)).await;
    alice_a.join("general", "alice", None).await;
    alice_b.join("general", "alice", None).await;
    let mut bob = connect(&url(&b, &token("u-bob", "bob", Some(now() - 60)))).await;
    bob.join("general", "bob", None).await;

    // Revoked through replica A: alice's connections on both replicas close with 4003.
    let asked = Instant::now();
    let (status, body) = revoke(a.addr, r#"{"sub": "u-alice"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sub"], "u-alice");
    let before = body["issued_before"].as_u64().unwrap();
    assert!(before >= now() - 5, "{body}");
    let ((code_a, at_a), (code_b, at_b)) = tokio::join!(closed(&mut alice_a), closed(&mut alice_b));
    assert_eq!(code_a, Some(close_code::SESSION_REVOKED));
    assert_eq!(code_b, Some(close_code::SESSION_REVOKED));
    eprintln!(
        "revoke → close: {:?} on the replica asked, {:?} on the other one",
        at_a - asked,
        at_b - asked
    );

    // Bob is untouched: still connected, still sending and receiving.
    let id = bob.say("general", "still here").await;
    assert_eq!(bob.message_in("general").await.id, id);

    // The old token is refused on both replicas with a 401 naming the revocation; so is one without `iat`.
    for replica in [&a, &b] {
        let (status, body) = refused_upgrade(&url(replica, &old)).await;
        assert_eq!(status, 401);
        assert!(body.contains("revoked"), "{body}");
        let (status, body) = refused_upgrade(&url(replica, &token("u-alice", "alice", None))).await;
        assert_eq!(status, 401);
        assert!(body.contains("revoked"), "{body}");
    }
    // So is the API with it.
    let bearer = format!("Bearer {old}");
    let (status, _, body) = testkit::http_request(
        a.addr,
        "GET",
        "/api/search?q=here",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("revoked"), "{body}");

    // A token issued at or after the revocation works.
    let fresh = token("u-alice", "alice", Some(before));
    let mut again = connect(&url(&b, &fresh)).await;
    again.join("general", "alice", None).await;

    // A replica started after the revocation refuses the old token too, and takes the new one.
    let c = replica(Some(&redis)).await;
    let (status, body) = refused_upgrade(&url(&c, &old)).await;
    assert_eq!(status, 401);
    assert!(body.contains("revoked"), "{body}");
    connect(&url(&c, &fresh))
        .await
        .join("general", "alice", None)
        .await;

    // The CLI revokes as the API does: bob's connection closes.
    let redis_url = redis.url();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
            .args(["--redis-url", &redis_url, "revoke", "--sub", "u-bob"])
            .output()
            .expect("run roomcast revoke")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("u-bob"));
    assert_eq!(closed(&mut bob).await.0, Some(close_code::SESSION_REVOKED));
    // Alice's new connection was issued after her revocation and stays.
    let id = again.say("general", "new session").await;
    assert_eq!(again.message_in("general").await.id, id);
}

#[tokio::test]
async fn revocation_works_on_the_in_memory_bus_and_only_reaches_older_tokens() {
    let replica = replica(None).await;
    let issued = now() - 100;
    let mut carol = connect(&url(&replica, &token("u-carol", "carol", Some(issued)))).await;
    carol.join("general", "carol", None).await;

    // A revocation older than the token changes nothing for it.
    let (status, body) = revoke(
        replica.addr,
        &json!({"sub": "u-carol", "issued_before": issued - 10}).to_string(),
    )
    .await;
    assert_eq!(
        (status, body["issued_before"].as_u64()),
        (200, Some(issued - 10))
    );
    let id = carol.say("general", "still here").await;
    assert_eq!(carol.message_in("general").await.id, id);

    // A later one closes the connection; an earlier one asked afterwards does not move it back.
    let (status, _) = revoke(
        replica.addr,
        &json!({"sub": "u-carol", "issued_before": issued + 1}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        closed(&mut carol).await.0,
        Some(close_code::SESSION_REVOKED)
    );
    let (status, body) = revoke(
        replica.addr,
        &json!({"sub": "u-carol", "issued_before": issued - 50}).to_string(),
    )
    .await;
    assert_eq!(
        (status, body["issued_before"].as_u64()),
        (200, Some(issued + 1))
    );
    let (status, body) =
        refused_upgrade(&url(&replica, &token("u-carol", "carol", Some(issued)))).await;
    assert_eq!(status, 401);
    assert!(body.contains("revoked"), "{body}");
    connect(&url(&replica, &token("u-carol", "carol", Some(issued + 1))))
        .await
        .join("general", "carol", None)
        .await;

    // Bad requests and a missing key are refused, and revoke nothing.
    let (status, body) = revoke(replica.addr, r#"{"sub": ""}"#).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, body) = revoke(replica.addr, r#"{"who": "u-carol"}"#).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, _, _) = testkit::http_request(
        replica.addr,
        "POST",
        "/api/sessions/revoke",
        &[],
        Some(r#"{"sub": "u-dave"}"#),
    )
    .await;
    assert_eq!(status, 401);
    connect(&url(&replica, &token("u-dave", "dave", Some(issued))))
        .await
        .join("general", "dave", None)
        .await;
}

#[tokio::test]
async fn a_redis_restarted_empty_gets_the_revocations_back_from_the_replicas() {
    let mut redis = Redis::start().await;
    let a = replica(Some(&redis)).await;
    let old = token("u-erin", "erin", Some(now() - 60));
    let (status, _) = revoke(a.addr, r#"{"sub": "u-erin"}"#).await;
    assert_eq!(status, 200);
    // Redis comes back empty; replica A, which knows the revocation, writes it back when it reconnects, so a
    // replica started afterwards refuses the old token too.
    redis.restart().await;
    crate::harness::eventually("the revocation is back in Redis", || async {
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let stored: Option<u64> = redis::cmd("HGET")
            .arg("roomcast:{_sessions}:revoked")
            .arg("u-erin")
            .query_async(&mut conn)
            .await
            .ok()?;
        stored.map(drop)
    })
    .await;
    let b = replica(Some(&redis)).await;
    let (status, body) = refused_upgrade(&url(&b, &old)).await;
    assert_eq!(status, 401);
    assert!(body.contains("revoked"), "{body}");
}

#[tokio::test]
async fn with_an_archive_a_revocation_outlives_redis_and_every_replica() {
    let mut redis = Redis::start().await;
    let pg = crate::harness::Postgres::start().await;
    let archived = |redis: &Redis| {
        let mut c = config(Some(&redis.url()));
        c.jwt_secret = Some(SECRET.to_owned());
        c.api_keys = vec![KEY.to_owned()];
        c.database_url = Some(pg.url());
        c
    };
    let mut a = Replica::start_with(archived(&redis)).await;
    let old = token("u-frank", "frank", Some(now() - 60));
    let (status, body) = revoke(a.addr, r#"{"sub": "u-frank"}"#).await;
    assert_eq!(status, 200, "{body}");
    let client = pg.client().await;
    crate::harness::eventually("the revocation is archived", || async {
        let row = client
            .query_opt(
                "SELECT issued_before FROM revocations WHERE person = 'u-frank'",
                &[],
            )
            .await
            .ok()??;
        (row.get::<_, i64>(0) > 0).then_some(())
    })
    .await;
    // Every replica gone, and Redis restarted empty: a new replica learns the revocation from PostgreSQL.
    a.stop().await;
    redis.restart().await;
    let b = Replica::start_with(archived(&redis)).await;
    let (status, body) = refused_upgrade(&url(&b, &old)).await;
    assert_eq!(status, 401);
    assert!(body.contains("revoked"), "{body}");
    connect(&url(&b, &token("u-frank", "frank", Some(now()))))
        .await
        .join("general", "frank", None)
        .await;
}
