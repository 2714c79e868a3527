//! Optional authentication: with `--jwt-secret` (or `--jwt-public-key`) a WebSocket needs a valid token; the token
//! fixes the nick and may limit the rooms; an expired token is refused, and a connection outliving its token is
//! closed with 4001. Real tokens signed with `jsonwebtoken`, real replicas.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shared::{ErrorCode, ServerMsg, close_code};
use tokio_tungstenite::tungstenite;

use crate::harness::{Client, Replica, config, refused_upgrade};

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

async fn replica(grace_secs: u64) -> Replica {
    let mut c = config(None);
    c.jwt_secret = Some(SECRET.to_owned());
    c.jwt_grace_secs = grace_secs;
    Replica::start_with(c).await
}

async fn connect(url: &str) -> Client {
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("upgrade accepted");
    Client::welcomed(ws).await
}

#[tokio::test]
async fn tokens_are_required_checked_and_their_claims_enforced() {
    let replica = replica(30).await;
    let base = replica.ws_url();
    let good = json!({"sub": "u-1", "nick": "alice", "rooms": ["team"], "exp": now() + 600});

    let (status, body) = refused_upgrade(&base).await;
    assert_eq!(status, 401);
    assert!(body.contains("token is required"), "{body}");
    let forged = token(&good, "another-secret-that-is-32-bytes-long");
    let (status, body) = refused_upgrade(&format!("{base}?token={forged}")).await;
    assert_eq!(status, 401);
    assert!(body.contains("not valid"), "{body}");
    let expired = token(&json!({"nick": "alice", "exp": now() - 10}), SECRET);
    let (status, body) = refused_upgrade(&format!("{base}?token={expired}")).await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    let (status, _) = refused_upgrade(&format!("{base}?token=not.a.jwt")).await;
    assert_eq!(status, 401);

    let mut alice = connect(&format!("{base}?token={}", token(&good, SECRET))).await;
    let (code, message) = alice.try_join("team", "mallory", None).await.unwrap_err();
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("alice"), "{message}");
    let (code, message) = alice.try_join("general", "alice", None).await.unwrap_err();
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(message.contains("general"), "{message}");
    alice.join("team", "alice", None).await;
    let id = alice.say("team", "hello").await;
    assert_eq!(
        alice.message_in("team").await.id,
        id,
        "the connection keeps serving"
    );

    // A token without `rooms` allows any room, and `Authorization: Bearer` works for non-browser clients.
    let any_room = token(&json!({"sub": "bob", "exp": now() + 600}), SECRET);
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(base.as_str()).unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {any_room}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("bearer accepted");
    let mut bob = Client::welcomed(ws).await;
    bob.join("anywhere", "bob", None).await;

    // One user on two devices (two browsers, so two person ids) is one member: the token proves the nick.
    let laptop_token = token(&good, SECRET);
    let mut laptop = connect(&format!("{base}?token={laptop_token}")).await;
    laptop
        .join_as("team", "alice", "device-laptop")
        .await
        .unwrap();
    let mut phone = connect(&format!("{base}?token={laptop_token}")).await;
    assert_eq!(
        phone
            .join_as("team", "alice", "device-phone")
            .await
            .unwrap(),
        (vec!["alice".to_string()], 1)
    );
}

#[tokio::test]
async fn a_connection_outliving_its_token_is_closed_with_4001() {
    let replica = replica(0).await;
    // A token that expires soon, with time to connect and join first. On a machine too busy to do that before it
    // expires, the same again with twice the time: the test waits for events, not for a clock.
    for lifetime in [2, 4, 8, 16, 32] {
        let soon = token(&json!({"nick": "carol", "exp": now() + lifetime}), SECRET);
        let url = format!("{}?token={soon}", replica.ws_url());
        let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await else {
            continue;
        };
        let mut carol = Client::welcomed(ws).await;
        carol
            .send(&shared::ClientMsg::Join {
                room: "general".into(),
                nick: "carol".into(),
                person: None,
                since: None,
                epoch: None,
                req: Some("j".into()),
            })
            .await;
        let joined = carol
            .take_unless_closed(|m| matches!(m, ServerMsg::Joined(_)).then_some(()))
            .await;
        if joined.is_none() {
            continue;
        }
        assert_eq!(carol.close_code().await, Some(close_code::TOKEN_EXPIRED));
        return;
    }
    panic!("no token lived long enough to connect and join");
}

#[tokio::test]
async fn an_ec_public_key_verifies_es256_tokens() {
    let dir = std::env::temp_dir().join(format!("roomcast-jwt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .status()
            .expect("openssl")
            .success();
        assert!(ok, "openssl {args:?}");
    };
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        private.to_str().unwrap(),
    ]);
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        private.to_str().unwrap(),
        "-out",
        dir.join("pk8.pem").to_str().unwrap(),
    ]);
    openssl(&[
        "ec",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let mut c = config(None);
    c.jwt_public_key = Some(public.clone());
    let replica = Replica::start_with(c).await;

    let key = EncodingKey::from_ec_pem(&std::fs::read(dir.join("pk8.pem")).unwrap()).unwrap();
    let signed = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &json!({"nick": "dave", "exp": now() + 600}),
        &key,
    )
    .unwrap();
    let mut dave = connect(&format!("{}?token={signed}", replica.ws_url())).await;
    dave.join("general", "dave", None).await;
    // An HS256 token made with the public key's bytes as the secret (the classic algorithm confusion) is refused.
    let confused = token(
        &json!({"nick": "eve", "exp": now() + 600}),
        &std::fs::read_to_string(&public).unwrap(),
    );
    assert_eq!(
        refused_upgrade(&format!("{}?token={confused}", replica.ws_url()))
            .await
            .0,
        401
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `base64url` without padding, as JWTs spell their parts.
fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// An unsigned token (`alg: none`) with these claims.
fn unsigned(claims: &serde_json::Value) -> String {
    format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT"}"#),
        b64url(claims.to_string().as_bytes())
    )
}

/// Runs openssl with `args` in `dir`, quietly unless it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn base64url_is_the_rfcs() {
    // RFC 4648, section 10, without padding and with the URL alphabet.
    for (raw, encoded) in [
        ("", ""),
        ("f", "Zg"),
        ("fo", "Zm8"),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg"),
    ] {
        assert_eq!(b64url(raw.as_bytes()), encoded);
    }
    assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
}

/// OWASP's JWT algorithm confusion: a replica accepts only the algorithm its key is for. `alg: none` is refused
/// everywhere; with an RSA public key, an HS256 token signed with that key's PEM bytes is refused; with an HS secret,
/// RS256 and ES256 tokens are refused.
#[tokio::test]
async fn algorithm_confusion_is_refused() {
    let dir = std::env::temp_dir().join(format!("roomcast-jwt-rsa-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "rsa.pem",
        ],
    );
    openssl(
        &dir,
        &["pkey", "-in", "rsa.pem", "-pubout", "-out", "rsa-pub.pem"],
    );
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-in",
            "ec.pem",
            "-out",
            "ec-pk8.pem",
        ],
    );
    let claims = json!({"sub": "u-eve", "nick": "eve", "exp": now() + 600, "iat": now()});
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let rs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&read("rsa.pem")).unwrap(),
    )
    .unwrap();
    let es256 = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(&read("ec-pk8.pem")).unwrap(),
    )
    .unwrap();
    let public_pem = String::from_utf8(read("rsa-pub.pem")).unwrap();
    let none = unsigned(&claims);

    // With the RSA public key: RS256 works; none and an HS256 token keyed with the public PEM are refused.
    let mut c = config(None);
    c.jwt_public_key = Some(dir.join("rsa-pub.pem"));
    let rsa = Replica::start_with(c).await;
    connect(&format!("{}?token={rs256}", rsa.ws_url()))
        .await
        .join("general", "eve", None)
        .await;
    for forged in [token(&claims, &public_pem), none.clone(), es256.clone()] {
        let (status, body) = refused_upgrade(&format!("{}?token={forged}", rsa.ws_url())).await;
        assert_eq!(status, 401, "{forged}: {body}");
        assert!(body.contains("not valid"), "{body}");
    }

    // With an HS secret: HS256 works; none, RS256 and ES256 are refused.
    let hs = replica(30).await;
    connect(&format!("{}?token={}", hs.ws_url(), token(&claims, SECRET)))
        .await
        .join("general", "eve", None)
        .await;
    for forged in [none, rs256, es256] {
        let (status, body) = refused_upgrade(&format!("{}?token={forged}", hs.ws_url())).await;
        assert_eq!(status, 401, "{forged}: {body}");
        assert!(body.contains("not valid"), "{body}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// OWASP: tokens are never written to logs. A replica logging at `trace` (stdout and stderr captured) is connected to
/// with tokens in the query and in `Authorization: Bearer`, refused a forged, an expired and a revoked one, and
/// searched through the API with one; no token, nor any token's signature, appears in what it wrote.
#[tokio::test]
async fn tokens_never_reach_the_logs() {
    const KEY: &str = "logs-key-0123456789abcdef";
    let dir = std::env::temp_dir().join(format!("roomcast-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = testkit::free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["--port", &port.to_string(), "--node-id", "logs"])
        .args(["--static-dir", "/nonexistent-roomcast-static"])
        .args(["--jwt-secret", SECRET, "--api-keys", KEY])
        .env_remove("ROOMCAST_REDIS_URL")
        .env("RUST_LOG", "trace")
        .stdout(std::fs::File::create(dir.join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
        .spawn()
        .expect("start roomcast");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    crate::harness::eventually("the replica answers /healthz", || async {
        let up = tokio::net::TcpStream::connect(addr).await.is_ok()
            && crate::harness::http_get(addr, "/healthz").await.0 == 200;
        up.then_some(())
    })
    .await;
    let base = format!("ws://{addr}{}", shared::WS_PATH);
    let claims = |sub: &str| json!({"sub": sub, "nick": sub, "exp": now() + 600, "iat": now() - 5});
    let in_query = token(&claims("alice"), SECRET);
    let in_header = token(&claims("bob"), SECRET);
    let forged = token(&claims("mallory"), "another-secret-that-is-32-bytes-long");
    let expired = token(
        &json!({"sub": "carol", "nick": "carol", "exp": now() - 100}),
        SECRET,
    );

    let mut alice = connect(&format!("{base}?token={in_query}")).await;
    alice.join("general", "alice", None).await;
    alice.say("general", "hello").await;
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(base.as_str()).unwrap();
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {in_header}").parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("bearer accepted");
    let mut bob = Client::welcomed(ws).await;
    bob.join("general", "bob", None).await;
    for bad in [&forged, &expired] {
        assert_eq!(refused_upgrade(&format!("{base}?token={bad}")).await.0, 401);
    }
    let bearer = format!("Bearer {in_query}");
    let (status, _, _) = testkit::http_request(
        addr,
        "GET",
        &format!("/api/search?q=hello&token={in_query}"),
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert!(status < 500, "search answered {status}");
    let key = format!("Bearer {KEY}");
    let (status, _, body) = testkit::http_request(
        addr,
        "POST",
        "/api/sessions/revoke",
        &[("Authorization", &key)],
        Some(r#"{"sub": "bob"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(bob.close_code().await, Some(close_code::SESSION_REVOKED));
    assert_eq!(
        refused_upgrade(&format!("{base}?token={in_header}"))
            .await
            .0,
        401
    );
    let _ = child.kill();
    let _ = child.wait();

    let logs = std::fs::read_to_string(dir.join("stdout")).unwrap()
        + &std::fs::read_to_string(dir.join("stderr")).unwrap();
    assert!(
        logs.contains("WebSocket refused") && logs.contains("sessions revoked"),
        "the replica logged what it did: {logs}"
    );
    for secret in [&in_query, &in_header, &forged, &expired] {
        let signature = secret.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(secret.as_str()) && !logs.contains(signature),
            "a token reached the logs"
        );
    }
    eprintln!("{} bytes of trace logs, no token in them", logs.len());
    let _ = std::fs::remove_dir_all(&dir);
}
