//! Optional authentication: with `--jwt-secret` (or `--jwt-public-key`) a WebSocket needs a valid token; the token
//! fixes the nick and may limit the rooms; an expired token is refused, and a connection outliving its token is
//! closed with 4001. Real tokens signed with `jsonwebtoken`, real replicas.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use shared::{ErrorCode, ServerMsg, close_code};
use tokio_tungstenite::tungstenite;

use crate::harness::{Client, Replica, config};

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

/// The HTTP status and body of a refused upgrade.
async fn refused(url: &str) -> (u16, String) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
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

    let (status, body) = refused(&base).await;
    assert_eq!(status, 401);
    assert!(body.contains("token is required"), "{body}");
    let forged = token(&good, "another-secret-that-is-32-bytes-long");
    let (status, body) = refused(&format!("{base}?token={forged}")).await;
    assert_eq!(status, 401);
    assert!(body.contains("not valid"), "{body}");
    let expired = token(&json!({"nick": "alice", "exp": now() - 10}), SECRET);
    let (status, body) = refused(&format!("{base}?token={expired}")).await;
    assert_eq!(status, 401);
    assert!(body.contains("expired"), "{body}");
    let (status, _) = refused(&format!("{base}?token=not.a.jwt")).await;
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
        refused(&format!("{}?token={confused}", replica.ws_url()))
            .await
            .0,
        401
    );
    let _ = std::fs::remove_dir_all(&dir);
}
