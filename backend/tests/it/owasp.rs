//! The OWASP WebSocket checklist, each point pinned against real replicas at the boundary (README's Security table
//! lists the points and the test of each): raw upgrades and frames where the point is in the bytes, typed clients
//! elsewhere. The token checks themselves live in `auth.rs`.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use shared::validate::{MAX_FRAME_BYTES, TEXT_MAX_CHARS};
use shared::{ClientMsg, ErrorCode, ModerationAction, MsgId, ServerMsg, close_code, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::harness::{
    Client, PATIENCE, Redis, Replica, config, eventually, http_get, replica_process,
};
use testkit::client::Received;

const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

fn token(claims: &Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = claims.clone();
    claims["exp"] = json!(exp);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A WebSocket upgrade written by hand, so the test sees exactly what the replica answers: the status line and
/// headers, then the raw frames.
struct Raw {
    stream: TcpStream,
    /// Bytes read past what was consumed.
    buf: Vec<u8>,
}

impl Raw {
    /// Sends an upgrade of `path` with `extra` header lines and reads the response head.
    async fn upgrade(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> (Self, String) {
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in extra {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Self {
            stream,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(at) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            assert!(raw.fill().await, "the connection closed before a response");
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        raw.buf.drain(..end);
        (raw, head)
    }

    /// Reads more bytes; false once the connection is closed.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0; 4096];
        match tokio::time::timeout(PATIENCE, self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Ok(_) => false,
            Err(_) => panic!("nothing from the replica in {PATIENCE:?}"),
        }
    }

    /// Reads until at least `n` bytes are buffered; false if the connection closed first.
    async fn want(&mut self, n: usize) -> bool {
        while self.buf.len() < n {
            if !self.fill().await {
                return false;
            }
        }
        true
    }

    /// The next frame from the server (its first byte and payload; servers never mask), `None` once the connection
    /// is closed.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        if !self.want(2).await {
            return None;
        }
        // The payload length: in the second byte, or in the 2 or 8 bytes after it.
        let head = match self.buf[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        if !self.want(head).await {
            return None;
        }
        let size = if head == 2 {
            usize::from(self.buf[1] & 0x7f)
        } else {
            self.buf[2..head]
                .iter()
                .fold(0, |n, b| (n << 8) | usize::from(*b))
        };
        if !self.want(head + size).await {
            return None;
        }
        let first = self.buf[0];
        let payload = self.buf[head..head + size].to_vec();
        self.buf.drain(..head + size);
        Some((first, payload))
    }
}

/// The status code of a response head.
fn status(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap()
}

/// Point 1: a page on another site cannot open a WebSocket to the replica (cross-site WebSocket hijacking), nor ride
/// a credential the browser would add by itself: there is no cookie authentication, a token travels only in the URL
/// or the Authorization header, and the Origin check comes first.
#[tokio::test]
async fn cross_site_pages_cannot_open_or_ride_a_websocket() {
    let mut c = config(None);
    c.allowed_origins = vec!["http://localhost:8080".into()];
    let open = Replica::start_with(c).await;
    let own = format!("http://{}", open.addr);
    let lookalike = format!("http://{}.evil.example", open.addr);
    for (origin, expected) in [
        (Some("http://evil.example"), 403),
        (Some("null"), 403),
        (Some(lookalike.as_str()), 403),
        (Some(own.as_str()), 101),
        (Some("http://localhost:8080"), 101),
        // Not a browser: nothing a cross-site page could make it do.
        (None, 101),
    ] {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("Origin", *o)).collect();
        let (_, head) = Raw::upgrade(open.addr, shared::WS_PATH, &headers).await;
        assert_eq!(status(&head), expected, "Origin {origin:?}: {head}");
    }

    let mut c = config(None);
    c.jwt_secret = Some(SECRET.to_owned());
    let guarded = Replica::start_with(c).await;
    let own = format!("http://{}", guarded.addr);
    let valid = token(&json!({"nick": "alice"}));
    let with_token = format!("{}?token={valid}", shared::WS_PATH);
    // A valid token does not make a foreign origin acceptable.
    let (_, head) = Raw::upgrade(
        guarded.addr,
        &with_token,
        &[("Origin", "http://evil.example")],
    )
    .await;
    assert_eq!(status(&head), 403, "{head}");
    // A cookie is what a browser adds to a cross-site request by itself: it is never a credential here.
    for cookie in [format!("token={valid}"), format!("roomcast_token={valid}")] {
        let (_, head) = Raw::upgrade(
            guarded.addr,
            shared::WS_PATH,
            &[("Origin", own.as_str()), ("Cookie", cookie.as_str())],
        )
        .await;
        assert_eq!(status(&head), 401, "a token in a cookie: {head}");
    }
    let (_, head) = Raw::upgrade(guarded.addr, &with_token, &[("Origin", own.as_str())]).await;
    assert_eq!(status(&head), 101, "{head}");
}

/// A fragment of a text message: the first one (opcode text) or a continuation, final or not.
fn fragment(payload: impl Into<Vec<u8>>, first: bool, last: bool) -> Message {
    let opcode = if first {
        OpCode::Data(Data::Text)
    } else {
        OpCode::Data(Data::Continue)
    };
    Message::Frame(Frame::message(payload.into(), opcode, last))
}

/// Point 2: a text over the protocol's limit is refused with its typed error and the connection goes on; a binary
/// frame is `malformed` and the connection goes on; a message in fragments is read like one frame, and one whose
/// fragments add up past the frame limit is closed with 1009 — also when it never ends, long before it could fill
/// the replica's memory.
#[tokio::test]
async fn size_caps_hold_for_texts_frames_and_fragmented_messages() {
    let replica = Replica::start(None).await;
    let mut client = replica.client().await;
    client.join("caps", "carol", None).await;

    let (code, _) = client
        .try_say("caps", &"x".repeat(TEXT_MAX_CHARS + 1))
        .await
        .unwrap_err();
    assert_eq!(code, ErrorCode::InvalidText);
    client
        .send_raw(Message::binary(b"{\"type\":\"ping\"}".to_vec()))
        .await;
    assert_eq!(client.error().await.0, ErrorCode::Malformed);

    // A `send` in three fragments is one request.
    let request =
        json!({"type": "send", "room": "caps", "text": "in pieces", "cid": "frag-1"}).to_string();
    let (a, rest) = request.split_at(10);
    let (b, c) = rest.split_at(10);
    client.send_raw(fragment(a, true, false)).await;
    client.send_raw(fragment(b, false, false)).await;
    client.send_raw(fragment(c, false, true)).await;
    let id = client
        .take(|m| match m {
            ServerMsg::Ack(frame::Ack { cid, id, .. }) if cid == "frag-1" => Some(*id),
            _ => None,
        })
        .await;
    assert_eq!(client.message_in("caps").await.id, id);
    let again = client.say("caps", "still open").await;
    assert!(again > id);

    // Fragments of a size each allowed, adding up past the frame limit (below the hard cap, so the whole message
    // arrives before the session measures it).
    let mut client = replica.client().await;
    let piece = "x".repeat(MAX_FRAME_BYTES / 2);
    client.send_raw(fragment(piece.clone(), true, false)).await;
    client.send_raw(fragment(piece.clone(), false, false)).await;
    client.send_raw(fragment("x", false, true)).await;
    assert_eq!(client.close_code().await, Some(close_code::TOO_BIG));

    // A message that never ends: its fragments keep coming until the replica closes. It must close at its hard cap,
    // not keep buffering; 64 MiB of fragments without a close is a replica buffering without bound.
    let mut client = replica.client().await;
    let piece = vec![b'x'; 8 * 1024];
    let mut sent = 0_usize;
    let code = loop {
        assert!(
            sent < 64 << 20,
            "the replica took {sent} bytes of one message without closing"
        );
        if !client
            .try_send_raw(fragment(piece.clone(), sent == 0, false))
            .await
        {
            break client.close_code().await;
        }
        sent += piece.len();
        if let Received::Closed(code) = client.next_within(Duration::ZERO).await {
            break code;
        }
    };
    assert_eq!(code, Some(close_code::TOO_BIG));
    // The replica goes on serving.
    replica.client().await.join("caps", "dave", None).await;
}

/// A request of type `kind` naming `room` (and the message `id` where it needs one), `None` for the types that name
/// no room. A request type this does not know fails the test: add it here, so its authorization is tested.
fn example(kind: &str, room: &str, id: MsgId) -> Option<Value> {
    let request = match kind {
        "hello" | "ping" => return None,
        "join" => json!({"type": "join", "room": room, "nick": "alice", "req": "r"}),
        "leave" => json!({"type": "leave", "room": room, "req": "r"}),
        "send" => json!({"type": "send", "room": room, "text": "hi", "cid": "c-send"}),
        "edit" => json!({"type": "edit", "room": room, "id": id, "text": "hi", "cid": "c-edit"}),
        "delete" => json!({"type": "delete", "room": room, "id": id, "cid": "c-delete"}),
        "react" => {
            json!({"type": "react", "room": room, "id": id, "emoji": "👍", "on": true, "cid": "c-react"})
        }
        "mute" => json!({"type": "mute", "room": room, "nick": "bob", "secs": 60, "req": "r"}),
        "kick" => json!({"type": "kick", "room": room, "nick": "bob", "req": "r"}),
        "ban" => json!({"type": "ban", "room": room, "nick": "bob", "secs": 60, "req": "r"}),
        "slow_mode" => json!({"type": "slow_mode", "room": room, "secs": 30, "req": "r"}),
        "retention" => json!({"type": "retention", "room": room, "days": 7, "req": "r"}),
        "receipts" => json!({"type": "receipts", "room": room, "on": true, "req": "r"}),
        "read" => json!({"type": "read", "room": room, "id": id}),
        "search" => json!({"type": "search", "query": "hello", "room": room, "req": "r"}),
        "typing" => json!({"type": "typing", "room": room}),
        "history" => {
            json!({"type": "history", "room": room, "before": id, "limit": 10, "req": "r"})
        }
        other => panic!(
            "the request type {other:?} is new: add an example of it to this walk, so its authorization is tested"
        ),
    };
    // The example is the request it claims to be, and names the room the server checks.
    let parsed: ClientMsg = serde_json::from_value(request.clone())
        .unwrap_or_else(|e| panic!("the example of {kind} does not parse: {e}"));
    assert_eq!(parsed.room(), Some(room), "{kind}");
    Some(request)
}

/// Sends `request` and returns the error that answers it (its code and the request type it names); then checks the
/// connection still answers a `ping`.
async fn refusal(client: &mut Client, request: &Value) -> (ErrorCode, Option<String>) {
    client.send_raw(Message::text(request.to_string())).await;
    let refused = client
        .take(|m| match m {
            ServerMsg::Error(frame::Error { code, request, .. }) => Some((*code, request.clone())),
            _ => None,
        })
        .await;
    client
        .send(&ClientMsg::Ping {
            req: Some("alive".into()),
        })
        .await;
    client
        .take(|m| {
            matches!(m, ServerMsg::Pong(frame::Pong { req }) if req.as_deref() == Some("alive"))
                .then_some(())
        })
        .await;
    (refused.0, refused.1)
}

/// Point 3: every request is checked against the connection's grant, not only `join`. A person who was in `ops`
/// under an earlier token reconnects with a token whose `rooms` no longer has it: every request type of the
/// protocol that names `ops` — the list comes from the server's own `unknown_type` answer, so a new request type
/// is walked too — is refused `forbidden` and the connection stays open; every moderation request in a room the
/// token allows, without the moderator role, is refused `forbidden` too.
#[tokio::test]
async fn every_request_type_is_checked_against_the_token() {
    let mut c = config(None);
    c.jwt_secret = Some(SECRET.to_owned());
    let replica = Replica::start_with(c).await;
    let url = |claims: Value| format!("{}?token={}", replica.ws_url(), token(&claims));

    let mut before =
        Client::connect(&url(json!({"nick": "alice", "rooms": ["team", "ops"]}))).await;
    before.join("ops", "alice", None).await;
    let id = before.say("ops", "hello from ops").await;
    drop(before);

    let mut alice = Client::connect(&url(json!({"nick": "alice", "rooms": ["team"]}))).await;
    alice.join("team", "alice", None).await;
    alice
        .send_raw(Message::text(r#"{"type":"?"}"#.to_owned()))
        .await;
    let (code, message, _) = alice.error().await;
    assert_eq!(code, ErrorCode::UnknownType);
    let kinds: Vec<&str> = message
        .split_once("expected one of ")
        .map(|(_, list)| list.split(", ").map(str::trim).collect())
        .unwrap_or_else(|| panic!("no list of request types in {message:?}"));
    for kind in [
        "join", "send", "history", "read", "search", "typing", "mute",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }

    let mut walked = Vec::new();
    for kind in &kinds {
        let Some(request) = example(kind, "ops", id) else {
            continue;
        };
        let (code, request_type) = refusal(&mut alice, &request).await;
        assert_eq!(
            (code, request_type.as_deref()),
            (ErrorCode::Forbidden, Some(*kind)),
            "{request}"
        );
        walked.push(*kind);
    }
    eprintln!("forbidden outside the token's rooms: {walked:?}");

    for action in ModerationAction::ALL {
        let kind = serde_json::to_value(action).unwrap();
        let kind = kind.as_str().unwrap();
        assert!(kinds.contains(&kind), "{kind} is a request type");
        let request = example(kind, "team", id).unwrap();
        assert_eq!(
            refusal(&mut alice, &request).await,
            (ErrorCode::Forbidden, Some(kind.to_owned())),
            "a moderation request without the role: {request}"
        );
    }
    // The connection kept serving the room its token allows, and nothing reached `ops`.
    alice.say("team", "still here").await;
    let mut other = Client::connect(&url(json!({"nick": "bob"}))).await;
    let history = other.join("ops", "bob", None).await;
    assert_eq!(
        history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
        ["hello from ops"]
    );
}

/// Point 4, idle: a WebSocket peer that stops answering is pinged and then closed with 1001, while one that answers
/// the pings stays open as long.
#[tokio::test]
async fn an_idle_websocket_is_pinged_then_closed_when_it_stops_answering() {
    let mut c = config(None);
    c.ping_secs = 2;
    let replica = Replica::start_with(c).await;
    let mut answering = replica.client().await;
    let (mut silent, head) = Raw::upgrade(replica.addr, shared::WS_PATH, &[]).await;
    assert_eq!(status(&head), 101, "{head}");
    let mut pings = 0;
    let close = loop {
        let (first, payload) = silent.frame().await.expect("a close frame before the end");
        match first & 0x0f {
            0x9 => pings += 1,
            0x8 => break u16::from_be_bytes([payload[0], payload[1]]),
            _ => {}
        }
    };
    assert!(pings >= 1, "pinged before being closed");
    assert_eq!(close, close_code::GOING_AWAY);
    // The client that answered every ping lived as long and is still served.
    answering.join("idle", "erin", None).await;
}

/// Point 4, handshakes: a connection that never sends its request head (silent, or a header byte now and then: a
/// slow loris) is closed at `--header-timeout-secs`, and a head larger than the cap is refused with 431.
#[tokio::test]
async fn slow_and_silent_handshakes_are_cut_off() {
    let mut c = config(None);
    c.header_timeout_secs = 1;
    let replica = Replica::start_with(c).await;
    let mut silent = TcpStream::connect(replica.addr).await.unwrap();
    let mut slow = TcpStream::connect(replica.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: roomcast\r\nX-Slow: ")
        .await
        .unwrap();
    // The slow one sends a byte every 200 ms, well within any idle timeout, and is still cut off.
    let dribbled = tokio::time::timeout(PATIENCE, async {
        let mut sent = 0;
        let mut buf = [0; 1024];
        loop {
            tokio::select! {
                read = slow.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { break sent },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if slow.write_all(b"x").await.is_err() {
                        break sent;
                    }
                    sent += 1;
                }
            }
        }
    })
    .await
    .expect("a slow-loris handshake was not cut off");
    eprintln!("the slow handshake dribbled {dribbled} header bytes before it was closed");
    let mut buf = [0; 64];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("a silent connection was not closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "nothing but the close: {read:?}"
    );

    // A request head over the cap is answered 431 (read tolerantly: the replica closes with our bytes unread).
    let mut big = TcpStream::connect(replica.addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: roomcast\r\nX-Big: {}\r\n\r\n",
        "x".repeat(backend::serve::MAX_HEAD_BYTES)
    );
    let _ = big.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let mut chunk = [0; 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(PATIENCE, big.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(http_get(replica.addr, "/healthz").await.0, 200);
}

/// Point 4, request bodies: an HTTP API request whose body dribbles in (a slow POST) is answered 408
/// `request_timeout` once `--header-timeout-secs` have passed since its head, and its connection is closed; a whole
/// body sent at once is served as ever, and the replica goes on serving.
#[tokio::test]
async fn a_slow_api_body_is_cut_off() {
    const KEY: &str = "a-key-of-sixteen-chars";
    let mut c = config(None);
    c.header_timeout_secs = 1;
    c.api_keys = vec![KEY.to_owned()];
    let replica = Replica::start_with(c).await;
    let body = r#"{"nick": "slowpoke", "text": "at last", "cid": "s1"}"#;
    let head = format!(
        "POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: roomcast\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut slow = TcpStream::connect(replica.addr).await.unwrap();
    slow.write_all(head.as_bytes()).await.unwrap();
    // A byte of the body every 200 ms: the whole would take 10 s, ten times the bound.
    let mut answer = Vec::new();
    let dribbled = tokio::time::timeout(PATIENCE, async {
        let mut chunk = [0; 1024];
        for (sent, byte) in body.bytes().enumerate() {
            tokio::select! {
                read = slow.read(&mut chunk) => match read {
                    Ok(n) if n > 0 => {
                        answer.extend_from_slice(&chunk[..n]);
                        return sent;
                    }
                    _ => return sent,
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if slow.write_all(&[byte]).await.is_err() {
                        return sent;
                    }
                }
            }
        }
        body.len()
    })
    .await
    .expect("a slow body was not cut off");
    // The rest of the answer, then the close.
    let mut chunk = [0; 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(PATIENCE, slow.read(&mut chunk)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("the slow body dribbled {dribbled} of {} bytes", body.len());
    assert!(dribbled < body.len(), "cut off before the body was whole");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"request_timeout""#), "{answer}");
    // Whole bodies are served as ever.
    let mut fast = TcpStream::connect(replica.addr).await.unwrap();
    fast.write_all(format!("{head}{body}").as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(PATIENCE, fast.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}

/// Open file descriptors of a process.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// How many of a flood's connections have opened so far, and how many are open now.
#[derive(Debug, Default)]
struct Counts {
    opened: AtomicUsize,
    open: AtomicUsize,
}

/// One slow-loris connection from `from`: a request line and a header started, then a byte every `every` until the
/// replica closes the connection. Returns how long it stayed open.
async fn dribble(to: SocketAddr, from: Ipv4Addr, every: Duration, counts: Arc<Counts>) -> Duration {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut stream = socket.connect(to).await.unwrap();
    let opened = Instant::now();
    counts.open.fetch_add(1, Ordering::Relaxed);
    counts.opened.fetch_add(1, Ordering::Relaxed);
    let mut buf = [0; 1024];
    if stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: roomcast\r\nUpgrade: websocket\r\nX-Slow: ")
        .await
        .is_ok()
    {
        loop {
            tokio::select! {
                read = stream.read(&mut buf) => if matches!(read, Ok(0) | Err(_)) { break },
                () = tokio::time::sleep(every) => if stream.write_all(b"x").await.is_err() { break },
            }
        }
    }
    counts.open.fetch_sub(1, Ordering::Relaxed);
    opened.elapsed()
}

/// Point 4, a flood: 2,000 half-open handshakes, each dribbling a header byte every second from one of 200 loopback
/// addresses. Meanwhile the replica (its own process) serves a normal client, its memory grows by a bounded amount
/// per half-open connection, and every one of them is closed at the header timeout; its file descriptors come back.
#[tokio::test]
async fn a_flood_of_half_open_handshakes_is_bounded() {
    const FLOOD: usize = 2_000;
    const TIMEOUT_SECS: u64 = 10;
    let redis = Redis::start().await;
    let replica = replica_process(
        &redis.url(),
        "flooded",
        &["--header-timeout-secs", &TIMEOUT_SECS.to_string()],
    )
    .await;
    let pid = replica.pid();
    let (rss_before, fds_before) = (replica.rss_kib(), open_fds(pid));

    let counts = Arc::new(Counts::default());
    let flood: Vec<_> = (0..FLOOD)
        .map(|i| {
            let from = Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i % 200).unwrap());
            tokio::spawn(dribble(
                replica.addr,
                from,
                Duration::from_secs(1),
                counts.clone(),
            ))
        })
        .collect();
    eventually("every half-open handshake to have connected", || async {
        (counts.opened.load(Ordering::Relaxed) == FLOOD).then_some(())
    })
    .await;
    // The flood at its height (all of it, unless this machine took longer to open them than the timeout).
    let open = counts.open.load(Ordering::Relaxed);
    let rss_flood = replica.rss_kib();
    let mut client = Client::connect(&replica.ws_url()).await;
    client.join("calm", "frank", None).await;
    client.say("calm", "served through the flood").await;
    let still_open = counts.open.load(Ordering::Relaxed);

    let mut longest = Duration::ZERO;
    for task in flood {
        let lived = tokio::time::timeout(PATIENCE * 3, task)
            .await
            .expect("a half-open handshake outlived every bound")
            .unwrap();
        longest = longest.max(lived);
    }
    let grown = rss_flood.saturating_sub(rss_before);
    eprintln!(
        "flood: {FLOOD} half-open handshakes, {open} open at once ({still_open} still open once a normal client had \
         joined and sent); replica RSS {rss_before} KiB -> {rss_flood} KiB (+{} KiB per open one); the longest lived \
         {longest:?} (header timeout {TIMEOUT_SECS} s)",
        grown / u64::try_from(open.max(1)).unwrap()
    );
    // Each half-open connection costs at most its read buffer (twice the head cap) and a small task.
    assert!(
        grown <= u64::try_from(open).unwrap() * 80 + 1024,
        "RSS grew {grown} KiB for {open} half-open connections"
    );
    assert!(
        longest < Duration::from_secs(TIMEOUT_SECS) + PATIENCE,
        "a half-open handshake lived {longest:?}"
    );
    eventually("the replica's file descriptors to come back", || async {
        (open_fds(pid) <= fds_before + 10).then_some(())
    })
    .await;
    assert_eq!(http_get(replica.addr, "/healthz").await.0, 200);
}

/// Point 5: `permessage-deflate` is never agreed — an upgrade offering it is answered 101 without the extension and
/// frames come uncompressed — and a client that compresses anyway (RSV1 set) is closed with 1002, its frame unread.
#[tokio::test]
async fn permessage_deflate_is_never_agreed() {
    let replica = Replica::start(None).await;
    let (mut raw, head) = Raw::upgrade(
        replica.addr,
        shared::WS_PATH,
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    assert_eq!(status(&head), 101, "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "an extension was agreed: {head}"
    );
    let (first, payload) = raw.frame().await.expect("the welcome");
    assert_eq!(first, 0x81, "a final, uncompressed (RSV1 clear) text frame");
    let welcome: ServerMsg = serde_json::from_slice(&payload).unwrap();
    assert!(matches!(welcome, ServerMsg::Welcome(_)), "{welcome:?}");

    let mut client = replica.client().await;
    let ping = serde_json::to_vec(&ClientMsg::Ping { req: None }).unwrap();
    let mut compressed = Frame::message(ping, OpCode::Data(Data::Text), true);
    compressed.header_mut().rsv1 = true;
    client.send_raw(Message::Frame(compressed)).await;
    assert_eq!(client.close_code().await, Some(close_code::PROTOCOL_ERROR));
    replica.client().await.join("plain", "gina", None).await;
}
