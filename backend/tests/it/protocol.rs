//! Protocol conformance and bad input: every malformed or invalid request gets its typed error and the connection
//! stays usable; oversize frames close with 1009; wrong origins are refused; HTTP routes answer.

use shared::validate::{MAX_FRAME_BYTES, TEXT_MAX_CHARS};
use shared::{ClientMsg, ErrorCode, ServerMsg, close_code, frame};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::harness::{Client, Replica, config, http_get};

async fn replica() -> Replica {
    Replica::start(None).await
}

/// Sends a raw frame and returns the error it provokes; then proves the connection still works.
async fn refused(client: &mut Client, frame: Message) -> (ErrorCode, String, Option<String>) {
    client.send_raw(frame).await;
    let err = client.error().await;
    client.join("still-open", "probe", None).await;
    err
}

fn json(v: serde_json::Value) -> Message {
    Message::text(v.to_string())
}

#[tokio::test]
async fn welcome_names_the_protocol_and_the_replica() {
    let mut c = config(None);
    c.node_id = Some("replica-one".into());
    let replica = Replica::start_with(c).await;
    let client = replica.client().await;
    assert_eq!(client.node, "replica-one");
    let default = Replica::start(None).await;
    let client = default.client().await;
    assert!(
        client.node.ends_with(&format!(":{}", default.addr.port())),
        "default node id is host:port: {}",
        client.node
    );
}

#[tokio::test]
async fn matching_hello_is_accepted_silently() {
    let replica = replica().await;
    let mut client = replica.client().await;
    client
        .send(&ClientMsg::Hello {
            version: shared::PROTOCOL_VERSION,
        })
        .await;
    client
        .send(&ClientMsg::Join {
            person: None,
            room: "r".into(),
            nick: "n".into(),
            since: None,
            epoch: None,
            req: None,
        })
        .await;
    assert!(
        matches!(client.next().await, ServerMsg::Joined(_)),
        "the hello got no answer"
    );
}

#[tokio::test]
async fn incompatible_version_gets_an_error_then_a_close() {
    let replica = replica().await;
    let mut client = replica.client().await;
    client.send(&ClientMsg::Hello { version: 99 }).await;
    match client.next().await {
        ServerMsg::Error(frame::Error {
            code,
            message,
            request,
            ..
        }) => {
            assert_eq!(code, ErrorCode::UnsupportedVersion);
            assert_eq!(request.as_deref(), Some("hello"));
            assert!(
                message.contains("99") && message.contains(&shared::PROTOCOL_VERSION.to_string()),
                "{message}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert_eq!(client.close_code().await, Some(close_code::POLICY));
}

#[tokio::test]
async fn malformed_and_unknown_frames_get_typed_errors() {
    let replica = replica().await;
    let mut c = replica.client().await;
    assert_eq!(
        refused(&mut c, Message::text("{not json")).await.0,
        ErrorCode::Malformed
    );
    assert_eq!(
        refused(&mut c, Message::binary(vec![1, 2, 3])).await.0,
        ErrorCode::Malformed
    );
    assert_eq!(
        refused(&mut c, json(serde_json::json!([1, 2]))).await.0,
        ErrorCode::BadRequest
    );
    let (code, message, _) = refused(
        &mut c,
        json(serde_json::json!({"type": "dance", "req": "r1"})),
    )
    .await;
    assert_eq!(code, ErrorCode::UnknownType);
    assert!(message.contains("dance"), "{message}");
    let (code, _, req) = refused(
        &mut c,
        json(serde_json::json!({"type": "join", "room": "r", "req": "r2"})),
    )
    .await;
    assert_eq!((code, req.as_deref()), (ErrorCode::BadRequest, Some("r2")));
    let bad_since =
        serde_json::json!({"type": "join", "room": "r", "nick": "n", "since": "yesterday"});
    assert_eq!(
        refused(&mut c, json(bad_since)).await.0,
        ErrorCode::BadRequest
    );
}

#[tokio::test]
async fn invalid_names_and_texts_get_the_shared_validation_message() {
    let replica = replica().await;
    let mut c = replica.client().await;
    let join = |room: &str, nick: &str| {
        json(serde_json::json!({"type": "join", "room": room, "nick": nick, "req": "j"}))
    };
    let (code, message, req) = refused(&mut c, join("Bad Room", "n")).await;
    assert_eq!((code, req.as_deref()), (ErrorCode::InvalidRoom, Some("j")));
    assert_eq!(
        message,
        shared::validate::room_name("Bad Room")
            .unwrap_err()
            .to_string()
    );
    let (code, message, _) = refused(&mut c, join("ok", " spaced")).await;
    assert_eq!(code, ErrorCode::InvalidNick);
    assert_eq!(
        message,
        shared::validate::nickname(" spaced")
            .unwrap_err()
            .to_string()
    );

    c.join("talk", "t", None).await;
    let send = |text: &str, cid: &str| {
        json(serde_json::json!({"type": "send", "room": "talk", "text": text, "cid": cid}))
    };
    let (code, _, req) = refused(&mut c, send("   ", "c1")).await;
    assert_eq!((code, req.as_deref()), (ErrorCode::InvalidText, Some("c1")));
    let long = "y".repeat(TEXT_MAX_CHARS + 1);
    assert_eq!(
        refused(&mut c, send(&long, "c2")).await.0,
        ErrorCode::InvalidText
    );
    assert_eq!(
        refused(&mut c, send("hi", "has space")).await.0,
        ErrorCode::InvalidClientId
    );
    // The longest valid text goes through.
    c.say("talk", &"z".repeat(TEXT_MAX_CHARS)).await;
}

#[tokio::test]
async fn sending_or_leaving_a_room_not_joined_is_refused() {
    let replica = replica().await;
    let mut c = replica.client().await;
    let send = json(serde_json::json!({"type": "send", "room": "nope", "text": "hi", "cid": "c7"}));
    let (code, message, req) = refused(&mut c, send).await;
    assert_eq!((code, req.as_deref()), (ErrorCode::NotJoined, Some("c7")));
    assert!(message.contains("nope"), "{message}");
    let leave = json(serde_json::json!({"type": "leave", "room": "nope", "req": "l1"}));
    assert_eq!(refused(&mut c, leave).await.0, ErrorCode::NotJoined);
}

#[tokio::test]
async fn room_count_per_connection_is_limited() {
    let mut c = config(None);
    c.max_rooms = 2;
    let replica = Replica::start_with(c).await;
    let mut client = replica.client().await;
    client.join("one", "n", None).await;
    client.join("two", "n", None).await;
    client.join("two", "renamed", None).await; // Re-joining is not a new room.
    client
        .send(&ClientMsg::Join {
            person: None,
            room: "three".into(),
            nick: "n".into(),
            since: None,
            epoch: None,
            req: None,
        })
        .await;
    assert_eq!(client.error().await.0, ErrorCode::TooManyRooms);
    // Leaving one makes room for another, on the same connection.
    client
        .send(&ClientMsg::Leave {
            room: "one".into(),
            req: None,
        })
        .await;
    client.join("three", "n", None).await;
}

#[tokio::test]
async fn floods_are_rate_limited_without_closing() {
    let mut c = config(None);
    c.sends_per_sec = 1;
    c.send_burst = 3;
    let replica = Replica::start_with(c).await;
    let mut client = replica.client().await;
    client.join("fast", "f", None).await;
    let mut outcomes = Vec::new();
    for i in 0..6 {
        outcomes.push(
            client
                .try_say("fast", &format!("m{i}"))
                .await
                .map_err(|(code, _)| code),
        );
    }
    assert!(
        outcomes[..3].iter().all(Result::is_ok),
        "the burst passes: {outcomes:?}"
    );
    assert!(
        outcomes[3..]
            .iter()
            .all(|o| *o == Err(ErrorCode::RateLimited)),
        "then sends are refused: {outcomes:?}"
    );
    // Refused sends were not stored: history holds exactly the accepted ones.
    let mut other = replica.client().await;
    assert_eq!(other.join("fast", "o", None).await.len(), 3);
}

#[tokio::test]
async fn frames_over_the_limit_close_with_1009() {
    let replica = replica().await;
    for size in [MAX_FRAME_BYTES + 1, 1024 * 1024] {
        let mut c = replica.client().await;
        c.send_raw(Message::text("x".repeat(size))).await;
        assert_eq!(
            c.close_code().await,
            Some(close_code::TOO_BIG),
            "frame of {size} bytes"
        );
    }
    // The replica keeps serving.
    replica.client().await.join("after", "a", None).await;
}

#[tokio::test]
async fn foreign_origins_are_refused_and_own_or_allowed_ones_accepted() {
    let mut c = config(None);
    c.allowed_origins = vec!["http://localhost:8080".into()];
    let replica = Replica::start_with(c).await;
    let with_origin = |origin: &str| {
        let mut request = replica.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        request
    };
    let refused = tokio_tungstenite::connect_async(with_origin("http://evil.example")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 403)
        }
        other => panic!("foreign origin was not refused: {other:?}"),
    }
    let own = format!("http://{}", replica.addr);
    assert!(
        tokio_tungstenite::connect_async(with_origin(&own))
            .await
            .is_ok()
    );
    assert!(
        tokio_tungstenite::connect_async(with_origin("http://localhost:8080"))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn health_metrics_and_static_routes_answer() {
    let dir = std::env::temp_dir().join(format!("roomcast-static-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.html"), "<html>roomcast test index</html>").unwrap();
    let mut c = config(None);
    c.static_dir = dir.clone();
    let replica = Replica::start_with(c).await;
    let (status, body) = http_get(replica.addr, "/healthz").await;
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["bus"].as_str()),
        (Some("ok"), Some("memory"))
    );
    let (status, body) = http_get(replica.addr, "/r/general").await;
    assert_eq!(
        (status, body.contains("roomcast test index")),
        (200, true),
        "SPA paths serve index.html"
    );
    let _client = replica.client().await;
    let (status, body) = http_get(replica.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("roomcast_connections"), "{body}");
    std::fs::remove_dir_all(dir).unwrap();

    let unbuilt = Replica::start(None).await;
    let (status, body) = http_get(unbuilt.addr, "/").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("cargo xtask dev"),
        "a missing frontend says how to build it: {body}"
    );
}
