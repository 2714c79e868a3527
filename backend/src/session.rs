//! One WebSocket connection: reads requests, answers them, and writes the room frames queued for it.
//!
//! A single task per connection owns the socket, so frames leave in the order the session decides: `joined` (with
//! history) always precedes the live messages that follow it, and a per-room high-water mark drops any live message
//! already delivered through history. That is what makes join-with-`since` gapless and duplicate-free.

use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{FutureExt, SinkExt, StreamExt};
use shared::validate::MAX_FRAME_BYTES;
use shared::{ClientMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg, close_code};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use crate::AppState;
use crate::auth::Grant;
use crate::error::{RequestError, RequestRef};
use crate::relay::Participant;
use crate::rooms::{ConnId, Member, Outbound, Outlet, encode};

/// How long one write may block before the peer counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most frames written before one flush.
const MAX_BATCH: usize = 64;
/// How long a closing connection waits for the peer to answer its close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves one upgraded WebSocket until either side closes it or the replica shuts down.
pub async fn serve(socket: WebSocket, state: AppState, conn: ConnId, grant: Option<Grant>) {
    let span = info_span!("conn", node = %state.node, conn);
    async move {
        metrics::gauge!("roomcast_connections").increment(1.0);
        metrics::counter!("roomcast_connections_total").increment(1);
        debug!("connected");
        let mut session = Session::new(state, conn, grant);
        let close = session.run(socket).await;
        metrics::gauge!("roomcast_connections").decrement(1.0);
        debug!(?close, "disconnected");
    }
    .instrument(span)
    .await;
}

/// Why the session ended, and the close frame it sent, if any.
#[derive(Debug)]
enum End {
    Closed(u16, String),
    PeerGone,
}

struct Session {
    state: AppState,
    participant: Participant,
    queued: mpsc::UnboundedReceiver<Arc<Outbound>>,
    outlet: Arc<Outlet>,
}

/// The socket's sending half, telling the connection's [`Outlet`] whether the socket is refusing bytes (a write
/// that has to wait for the peer to read): that, not how soon this task got to run, is what makes a slow consumer.
struct Sink {
    inner: SplitSink<WebSocket, Message>,
    outlet: Arc<Outlet>,
}

impl Sink {
    fn watch(&self, poll: Poll<Result<(), axum::Error>>) -> Poll<Result<(), axum::Error>> {
        self.outlet.set_stalled(poll.is_pending());
        poll
    }
}

impl futures_util::Sink<Message> for Sink {
    type Error = axum::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_ready(cx);
        this.watch(poll)
    }

    fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), Self::Error> {
        Pin::new(&mut self.get_mut().inner).start_send(item)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(poll)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_close(cx);
        this.watch(poll)
    }
}

/// Resolves when the connection's token has expired (plus grace); never without a token.
async fn token_expiry(expired: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match expired {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// A write failed or timed out: the peer is gone.
struct Gone;

async fn write(sink: &mut Sink, msg: Message) -> Result<(), Gone> {
    match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(Gone),
    }
}

async fn write_msg(sink: &mut Sink, msg: &ServerMsg) -> Result<(), Gone> {
    write(sink, Message::Text(encode(msg))).await
}

impl Session {
    fn new(state: AppState, conn: ConnId, grant: Option<Grant>) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let outlet = Arc::new(Outlet::default());
        let member = Member {
            queue,
            outlet: Arc::clone(&outlet),
        };
        Self {
            participant: Participant::new(state.clone(), conn, member, grant),
            state,
            queued,
            outlet,
        }
    }

    async fn run(&mut self, socket: WebSocket) -> End {
        let (sink, mut stream) = socket.split();
        let mut sink = Sink {
            inner: sink,
            outlet: Arc::clone(&self.outlet),
        };
        let welcome = ServerMsg::Welcome {
            version: PROTOCOL_VERSION,
            node: self.state.node.to_string(),
            limits: (*self.state.limits).clone(),
        };
        if write_msg(&mut sink, &welcome).await.is_err() {
            return End::PeerGone;
        }
        let (shutdown, too_slow) = (self.state.shutdown.clone(), self.outlet.too_slow.clone());
        // Made once, not per frame: each `cancelled()` registers with the token, which takes a lock.
        let mut shutdown = pin!(shutdown.cancelled_owned());
        let mut too_slow = pin!(too_slow.cancelled_owned());
        let ping_every = self.state.config.ping_interval();
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        // A token's connection ends when the token does (plus the grace period); without one, never.
        let expires = self.participant.grant().map(|g| {
            Instant::now() + g.remaining(Duration::from_secs(self.state.config.jwt_grace_secs))
        });
        // Boxed, and only with a token: a timer inline would enlarge every connection's task, tokens or not.
        let mut expired = expires.map(|at| Box::pin(tokio::time::sleep_until(at)));

        let end = loop {
            let step = tokio::select! {
                biased;
                () = &mut shutdown => Err(shutting_down()),
                () = &mut too_slow => Err(too_slow_end()),
                () = token_expiry(&mut expired) => Err(End::Closed(
                    close_code::TOKEN_EXPIRED,
                    "token expired: reconnect with a fresh token".into(),
                )),
                // Drain what is queued before reading more requests: a client that pipelines sends keeps its
                // own queue short, and one that stops reading stops being read (TCP backpressure).
                Some(out) = self.queued.recv() => {
                    // A stalled peer blocks these writes; the kick or shutdown must still get through.
                    tokio::select! {
                        r = self.write_batch(&mut sink, out) => r.map_err(|Gone| End::PeerGone),
                        () = &mut too_slow => Err(too_slow_end()),
                        () = &mut shutdown => Err(shutting_down()),
                    }
                }
                frame = stream.next() => match frame {
                    None | Some(Ok(Message::Close(_))) => Err(End::PeerGone),
                    Some(Err(e)) => Err(self.read_error(&e)),
                    Some(Ok(msg)) => {
                        last_heard = Instant::now();
                        // Boxed: requests are rare next to deliveries, and their state machine would otherwise make every
                        // idle connection's task as large as the largest request.
                        Box::pin(self.on_frame(&mut sink, msg)).await
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 3 {
                        Err(End::Closed(close_code::GOING_AWAY, "no answer to pings".into()))
                    } else {
                        write(&mut sink, Message::Ping(Default::default())).await.map_err(|Gone| End::PeerGone)
                    }
                }
            };
            if let Err(end) = step {
                break end;
            }
        };
        // Leave first: the rooms stop queueing for us and the others hear we left, even if the close handshake
        // below has to wait for a stalled peer.
        self.participant.leave_all();
        if let End::Closed(code, reason) = &end {
            let frame = CloseFrame {
                code: *code,
                reason: Utf8Bytes::from(reason.as_str()),
            };
            if write(&mut sink, Message::Close(Some(frame))).await.is_ok() {
                // Finish the closing handshake: read until the peer's Close. Dropping the socket earlier would make
                // the kernel answer the peer's last frames with a reset, which discards what it has not read yet,
                // our Close included.
                let drain = async {
                    while let Some(Ok(msg)) = stream.next().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
            }
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
        end
    }

    /// Writes `first` and every frame already queued behind it (up to [`MAX_BATCH`]), then flushes once: under
    /// fan-out a busy socket gets one write for many frames instead of one per frame. One timer bounds the batch.
    async fn write_batch(&mut self, sink: &mut Sink, first: Arc<Outbound>) -> Result<(), Gone> {
        let batch = async {
            let mut next = Some(first);
            let mut frames = 0;
            let mut yielded = false;
            loop {
                while let Some(out) = next.take() {
                    self.outlet.taken(&out);
                    if self.participant.admit(&out) {
                        sink.feed(Message::Text(out.frame.clone())).await?;
                        frames += 1;
                    }
                    if frames < MAX_BATCH {
                        next = self.queued.try_recv().ok();
                    }
                }
                // Let the runtime run once before flushing: under fan-out the dispatcher queues more frames for
                // this socket meanwhile, and they leave in the same write. Idle, this costs one scheduler turn.
                if yielded || frames >= MAX_BATCH {
                    break;
                }
                yielded = true;
                tokio::task::yield_now().await;
                next = self.queued.try_recv().ok();
                if next.is_none() {
                    break;
                }
            }
            sink.flush().await
        };
        // Most batches complete at once (the socket has room): arm the write timer only for one that has to wait.
        let mut batch = pin!(batch);
        let result = match batch.as_mut().now_or_never() {
            Some(result) => Ok(result),
            None => tokio::time::timeout(WRITE_TIMEOUT, batch).await,
        };
        match result {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    fn read_error(&self, e: &axum::Error) -> End {
        // tungstenite reports frames above the hard cap as a capacity error ("Space limit exceeded: ..."); answer
        // like an oversize text frame. axum does not expose tungstenite's error type, so its message is the signal.
        let text = e.to_string();
        if text.contains("Space limit exceeded") {
            warn!(error = %text, "oversize frame; closing with 1009");
            End::Closed(
                close_code::TOO_BIG,
                format!("frame exceeds the {MAX_FRAME_BYTES} byte limit"),
            )
        } else {
            debug!(error = %text, "read failed");
            End::PeerGone
        }
    }

    async fn on_frame(&mut self, sink: &mut Sink, msg: Message) -> Result<(), End> {
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let err = RequestError::new(
                    ErrorCode::Malformed,
                    "binary frames are not supported; send JSON text frames",
                );
                return reply(sink, Err(err), RequestRef::default()).await;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
        };
        if text.len() > MAX_FRAME_BYTES {
            warn!(bytes = text.len(), "oversize frame; closing with 1009");
            return Err(End::Closed(
                close_code::TOO_BIG,
                format!(
                    "frame of {} bytes exceeds the {MAX_FRAME_BYTES} byte limit",
                    text.len()
                ),
            ));
        }
        let (request, re) = match decode(&text) {
            Ok(parsed) => parsed,
            Err((err, re)) => {
                debug!(code = ?err.code, "undecodable request");
                return reply(sink, Err(err), re).await;
            }
        };
        let result = match request {
            ClientMsg::Hello { version } if version == PROTOCOL_VERSION => return Ok(()),
            ClientMsg::Hello { version } => {
                let message = format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                );
                warn!(version, "client speaks an unsupported protocol version");
                let err = RequestError::new(ErrorCode::UnsupportedVersion, message.clone());
                reply(sink, Err(err), re).await?;
                return Err(End::Closed(close_code::POLICY, message));
            }
            ClientMsg::Join {
                room,
                nick,
                person,
                since,
                epoch,
                req,
            } => {
                return match self
                    .participant
                    .join(&room, &nick, person, since, epoch, req)
                    .await
                {
                    Ok(answer) => self.write_join(sink, answer).await,
                    Err(err) => reply(sink, Err(err), re).await,
                };
            }
            ClientMsg::Leave { room, req } => self
                .participant
                .leave(&room)
                .map(|room| ServerMsg::Left { room, req }),
            ClientMsg::Send { room, text, cid } => self.participant.send(&room, &text, cid).await,
            ClientMsg::Ping { req } => Ok(ServerMsg::Pong { req }),
            ClientMsg::History {
                room,
                before,
                limit,
                req,
            } => self.participant.older(&room, before, limit, req).await,
            ClientMsg::Typing { room } => match self.participant.typing(&room) {
                // Typing is not answered.
                Ok(()) => return Ok(()),
                Err(err) => Err(err),
            },
        };
        reply(sink, result, re).await
    }

    /// Writes `joined`, then the backlog that did not fit in it, page by page, before any live frame.
    async fn write_join(
        &mut self,
        sink: &mut Sink,
        answer: crate::relay::JoinAnswer,
    ) -> Result<(), End> {
        let crate::relay::JoinAnswer {
            joined,
            mut backlog,
        } = answer;
        write_msg(sink, &joined)
            .await
            .map_err(|Gone| End::PeerGone)?;
        loop {
            let page = match self.participant.next_backlog(&mut backlog).await {
                Ok(page) => page,
                Err(_) => {
                    // The member is joined but cannot be brought up to date now: it resumes with `since`.
                    return Err(End::Closed(
                        close_code::TRY_AGAIN_LATER,
                        "history unavailable while catching up; reconnect and resume with since"
                            .into(),
                    ));
                }
            };
            if page.is_empty() {
                return Ok(());
            }
            for message in page {
                write_msg(sink, &ServerMsg::Message(message))
                    .await
                    .map_err(|Gone| End::PeerGone)?;
            }
        }
    }
}

async fn reply(
    sink: &mut Sink,
    result: Result<ServerMsg, RequestError>,
    re: RequestRef,
) -> Result<(), End> {
    let msg = result.unwrap_or_else(|err| err.into_frame(re));
    write_msg(sink, &msg).await.map_err(|Gone| End::PeerGone)
}

fn shutting_down() -> End {
    End::Closed(
        close_code::GOING_AWAY,
        "server shutting down; reconnect".into(),
    )
}

fn too_slow_end() -> End {
    End::Closed(
        close_code::TRY_AGAIN_LATER,
        "too slow: outgoing queue over its bound while not reading; reconnect and resume with since".into(),
    )
}

/// Parses a request, or says exactly what is wrong with it and which request it was.
fn decode(text: &str) -> Result<(ClientMsg, RequestRef), (RequestError, RequestRef)> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        let err = RequestError::new(
            ErrorCode::Malformed,
            format!("frame is not valid JSON: {e}"),
        );
        (err, RequestRef::default())
    })?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let kind = field("type");
    let re = RequestRef {
        request: kind.clone(),
        req: if kind.as_deref() == Some("send") {
            field("cid")
        } else {
            field("req")
        },
        room: field("room"),
    };
    let Some(kind) = kind else {
        let err = RequestError::new(ErrorCode::BadRequest, "frame has no string field \"type\"");
        return Err((err, re));
    };
    if !matches!(
        kind.as_str(),
        "hello" | "join" | "leave" | "send" | "ping" | "history" | "typing"
    ) {
        let err = RequestError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {kind:?}; expected hello, join, leave, send or ping"),
        );
        return Err((err, re));
    }
    match serde_json::from_value::<ClientMsg>(value) {
        Ok(msg) => Ok((msg, re)),
        Err(e) => Err((
            RequestError::new(ErrorCode::BadRequest, format!("invalid {kind}: {e}")),
            re,
        )),
    }
}

#[cfg(test)]
mod fuzz {
    //! The frame decoder against a million random and mutated frames: it never panics, and every frame either
    //! decodes to a request that survives a round trip or is answered with one of the three decoding error codes.

    use proptest::prelude::*;

    use super::*;

    /// Valid frames of every type, the seeds that mutations start from.
    const SEEDS: &[&str] = &[
        r#"{"type":"hello","version":1}"#,
        r#"{"type":"join","room":"general","nick":"alice","since":"1732190000000-0","epoch":"9f86d081884c7d65","req":"j1"}"#,
        r#"{"type":"join","room":"general","nick":"alice"}"#,
        r#"{"type":"leave","room":"general","req":"l1"}"#,
        r#"{"type":"send","room":"general","text":"hello <b>world</b> \u00e9 字","cid":"c-42"}"#,
        r#"{"type":"ping","req":"p7"}"#,
    ];

    fn check(text: &str) -> Result<(), TestCaseError> {
        match decode(text) {
            Ok((msg, _)) => {
                let again = serde_json::to_string(&msg).unwrap();
                let (back, _) = decode(&again).map_err(|(e, _)| {
                    TestCaseError::fail(format!("re-encoded {again} fails: {:?}", e.code))
                })?;
                prop_assert_eq!(back, msg);
            }
            Err((err, _)) => prop_assert!(
                matches!(
                    err.code,
                    ErrorCode::Malformed | ErrorCode::BadRequest | ErrorCode::UnknownType
                ),
                "unexpected code {:?}",
                err.code
            ),
        }
        Ok(())
    }

    /// One edit of a byte string: replace, insert or delete a byte, truncate, or splice in a JSON fragment.
    fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
        const FRAGMENTS: &[&[u8]] = &[
            b"null",
            b"1e999",
            b"-0",
            b"[]",
            b"{}",
            b"\"",
            b"\\u0000",
            b"\\ud800",
            b"true",
            b"\"type\"",
            b"18446744073709551616-0",
            b",",
            b":",
            b"\xff\xfe",
        ];
        for &(kind, at, byte) in edits {
            let at = if bytes.is_empty() {
                0
            } else {
                at % (bytes.len() + 1)
            };
            match kind % 5 {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.insert(at, byte),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                3 => bytes.truncate(at),
                _ => {
                    let fragment = FRAGMENTS[usize::from(byte) % FRAGMENTS.len()];
                    bytes.splice(at..at, fragment.iter().copied());
                }
            }
        }
        bytes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400_000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn mutated_frames(seed in 0..SEEDS.len(), edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..6)) {
            let bytes = mutate(SEEDS[seed].as_bytes().to_vec(), &edits);
            check(&String::from_utf8_lossy(&bytes))?;
        }

        #[test]
        fn random_text(text in ".{0,64}") {
            check(&text)?;
        }

        #[test]
        fn random_objects(
            kind in prop::sample::select(vec!["hello", "join", "leave", "send", "ping", "history", "typing", "dance", ""]),
            fields in prop::collection::vec((
                prop::sample::select(vec!["room", "nick", "text", "cid", "since", "epoch", "req", "version", "type", "before", "limit"]),
                prop_oneof![
                    Just(serde_json::Value::Null),
                    any::<bool>().prop_map(serde_json::Value::from),
                    any::<i64>().prop_map(serde_json::Value::from),
                    any::<f64>().prop_map(serde_json::Value::from),
                    ".{0,20}".prop_map(serde_json::Value::from),
                    Just(serde_json::json!([1, "x"])),
                    Just(serde_json::json!({"a": 1})),
                ],
            ), 0..6),
        ) {
            let mut object = serde_json::Map::new();
            object.insert("type".into(), kind.into());
            for (name, value) in fields {
                object.insert(name.into(), value);
            }
            check(&serde_json::Value::Object(object).to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_classifies_errors() {
        let code = |t: &str| decode(t).err().map(|(e, _)| e.code);
        assert_eq!(code("{"), Some(ErrorCode::Malformed));
        assert_eq!(code("[1]"), Some(ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"dance"}"#), Some(ErrorCode::UnknownType));
        assert_eq!(
            code(r#"{"type":"send","room":"r"}"#),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"join","room":"r","nick":"n","since":"x"}"#),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"send","room":"r","text":"t","cid":"c"}"#),
            None
        );
        let (_, re) = decode(r#"{"type":"send","room":"r","cid":"c9"}"#).unwrap_err();
        assert_eq!(
            (re.request.as_deref(), re.req.as_deref(), re.room.as_deref()),
            (Some("send"), Some("c9"), Some("r"))
        );
    }
}
