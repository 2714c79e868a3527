//! One WebSocket connection: reads requests, answers them, and writes the room frames queued for it.
//!
//! A single task per connection owns the socket, so frames leave in the order the session decides: `joined` (with
//! history) always precedes the live messages that follow it, and a per-room high-water mark drops any live message
//! already delivered through history. That is what makes join-with-`since` gapless and duplicate-free.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use shared::validate::{self, MAX_FRAME_BYTES};
use shared::{
    BusBody, ClientMsg, ErrorCode, MsgId, Nick, PROTOCOL_VERSION, PresenceKind, RoomName,
    ServerMsg, close_code,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::AppState;
use crate::bus::now_ms;
use crate::error::{RequestError, RequestRef};
use crate::ratelimit::TokenBucket;
use crate::rooms::{ConnId, Member, Outbound, encode};

/// How long one write may block before the peer counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection waits for the peer to answer its close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves one upgraded WebSocket until either side closes it or the replica shuts down.
pub async fn serve(socket: WebSocket, state: AppState, conn: ConnId) {
    let span = info_span!("conn", node = %state.node, conn);
    async move {
        metrics::gauge!("roomcast_connections").increment(1.0);
        metrics::counter!("roomcast_connections_total").increment(1);
        debug!("connected");
        let mut session = Session::new(state, conn);
        let close = session.run(socket).await;
        metrics::gauge!("roomcast_connections").decrement(1.0);
        debug!(?close, "disconnected");
    }
    .instrument(span)
    .await;
}

struct Joined {
    nick: Nick,
    /// Highest message id delivered in this room; later frames at or below it are duplicates.
    last: Option<MsgId>,
}

/// Why the session ended, and the close frame it sent, if any.
#[derive(Debug)]
enum End {
    Closed(u16, String),
    PeerGone,
}

struct Session {
    state: AppState,
    conn: ConnId,
    joined: HashMap<RoomName, Joined>,
    queue: mpsc::Sender<Outbound>,
    queued: mpsc::Receiver<Outbound>,
    too_slow: CancellationToken,
    sends: TokenBucket,
}

type Sink = SplitSink<WebSocket, Message>;

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
    fn new(state: AppState, conn: ConnId) -> Self {
        let (queue, queued) = mpsc::channel(state.config.queue_capacity as usize);
        let sends = TokenBucket::new(state.config.sends_per_sec, state.config.send_burst);
        Self {
            state,
            conn,
            joined: HashMap::new(),
            queue,
            queued,
            too_slow: CancellationToken::new(),
            sends,
        }
    }

    async fn run(&mut self, socket: WebSocket) -> End {
        let (mut sink, mut stream) = socket.split();
        let welcome = ServerMsg::Welcome {
            version: PROTOCOL_VERSION,
            node: self.state.node.to_string(),
            limits: (*self.state.limits).clone(),
        };
        if write_msg(&mut sink, &welcome).await.is_err() {
            return End::PeerGone;
        }
        let shutdown = self.state.shutdown.clone();
        let too_slow = self.too_slow.clone();
        let ping_every = self.state.config.ping_interval();
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();

        let end = loop {
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled() => Err(shutting_down()),
                () = too_slow.cancelled() => Err(too_slow_end()),
                // Drain what is queued before reading more requests: a client that pipelines sends keeps its
                // own queue short, and one that stops reading stops being read (TCP backpressure).
                Some(out) = self.queued.recv() => {
                    if self.admit(&out) {
                        // A stalled peer blocks this write; the kick or shutdown must still get through.
                        tokio::select! {
                            r = write(&mut sink, Message::Text(out.frame)) => r.map_err(|Gone| End::PeerGone),
                            () = too_slow.cancelled() => Err(too_slow_end()),
                            () = shutdown.cancelled() => Err(shutting_down()),
                        }
                    } else {
                        Ok(())
                    }
                }
                frame = stream.next() => match frame {
                    None | Some(Ok(Message::Close(_))) => Err(End::PeerGone),
                    Some(Err(e)) => Err(self.read_error(&e)),
                    Some(Ok(msg)) => {
                        last_heard = Instant::now();
                        self.on_frame(&mut sink, msg).await
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
        self.leave_all();
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

    /// Whether a queued frame should reach the client: it belongs to a joined room and is not a duplicate.
    fn admit(&mut self, out: &Outbound) -> bool {
        let Some(joined) = self.joined.get_mut(&out.room) else {
            return false;
        };
        if let Some(id) = out.id {
            if joined.last.is_some_and(|last| id <= last) {
                return false;
            }
            joined.last = Some(id);
        }
        true
    }

    async fn on_frame(&mut self, sink: &mut Sink, msg: Message) -> Result<(), End> {
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let err = RequestError::new(
                    ErrorCode::Malformed,
                    "binary frames are not supported; send JSON text frames",
                );
                return self.reply(sink, Err(err), RequestRef::default()).await;
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
                return self.reply(sink, Err(err), re).await;
            }
        };
        let result = match request {
            ClientMsg::Hello { version } if version == PROTOCOL_VERSION => return Ok(()),
            ClientMsg::Hello { version } => {
                let message = format!(
                    "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
                );
                warn!(version, "client speaks an unsupported protocol version");
                self.reply(
                    sink,
                    Err(RequestError::new(
                        ErrorCode::UnsupportedVersion,
                        message.clone(),
                    )),
                    re,
                )
                .await?;
                return Err(End::Closed(close_code::POLICY, message));
            }
            ClientMsg::Join {
                room,
                nick,
                since,
                req,
            } => self.join(&room, &nick, since, req).await,
            ClientMsg::Leave { room, req } => self.leave(&room, req),
            ClientMsg::Send { room, text, cid } => self.send(&room, &text, cid).await,
        };
        self.reply(sink, result, re).await
    }

    async fn reply(
        &self,
        sink: &mut Sink,
        result: Result<ServerMsg, RequestError>,
        re: RequestRef,
    ) -> Result<(), End> {
        let msg = result.unwrap_or_else(|err| err.into_frame(re));
        write_msg(sink, &msg).await.map_err(|Gone| End::PeerGone)
    }

    async fn join(
        &mut self,
        room: &str,
        nick: &str,
        since: Option<MsgId>,
        req: Option<String>,
    ) -> Result<ServerMsg, RequestError> {
        let room = RoomName::parse(room)?;
        let nick = Nick::parse(nick)?;
        let rejoin = self.joined.contains_key(&room);
        let max_rooms = self.state.config.max_rooms as usize;
        if !rejoin && self.joined.len() >= max_rooms {
            return Err(RequestError::new(
                ErrorCode::TooManyRooms,
                format!("a connection may be in at most {max_rooms} rooms; leave one first"),
            ));
        }
        if !rejoin {
            let member = Member {
                queue: self.queue.clone(),
                too_slow: self.too_slow.clone(),
            };
            // Subscribe before reading history: a message stored in between arrives through both, never neither.
            if let Err(e) = self.state.rooms.join(&room, self.conn, member).await {
                self.state.rooms.leave(&room, self.conn);
                return Err(e.into());
            }
        }
        let recent = self.state.config.history_on_join as usize;
        let history = match self.state.bus.history(&room, since, recent).await {
            Ok(history) => history,
            Err(e) => {
                if !rejoin {
                    self.state.rooms.leave(&room, self.conn);
                }
                return Err(e.into());
            }
        };
        let seen = history.last().map(|m| m.id).or(since);
        let entry = self.joined.entry(room.clone()).or_insert(Joined {
            nick: nick.clone(),
            last: None,
        });
        entry.nick = nick.clone();
        entry.last = entry.last.max(seen);
        if !rejoin {
            info!(%room, %nick, history = history.len(), ?since, "joined");
            self.announce(&room, &nick, PresenceKind::Joined);
        }
        Ok(ServerMsg::Joined {
            room,
            nick,
            history,
            req,
        })
    }

    fn leave(&mut self, room: &str, req: Option<String>) -> Result<ServerMsg, RequestError> {
        let room = RoomName::parse(room)?;
        let joined = self.joined.remove(&room).ok_or_else(|| not_joined(&room))?;
        self.state.rooms.leave(&room, self.conn);
        info!(%room, nick = %joined.nick, "left");
        self.announce(&room, &joined.nick, PresenceKind::Left);
        Ok(ServerMsg::Left { room, req })
    }

    async fn send(
        &mut self,
        room: &str,
        text: &str,
        cid: String,
    ) -> Result<ServerMsg, RequestError> {
        let room = RoomName::parse(room)?;
        let nick = self
            .joined
            .get(&room)
            .ok_or_else(|| not_joined(&room))?
            .nick
            .clone();
        validate::client_id(&cid)?;
        validate::text(text)?;
        if !self.sends.take() {
            let (rate, burst) = (
                self.state.config.sends_per_sec,
                self.state.config.send_burst,
            );
            warn!(%room, "send rate exceeded");
            return Err(RequestError::new(
                ErrorCode::RateLimited,
                format!(
                    "sending too fast: at most {rate} messages per second (bursts of {burst}); this message was not sent"
                ),
            ));
        }
        let id = self.state.bus.publish(&room, &nick, text).await?;
        metrics::counter!("roomcast_messages_published_total").increment(1);
        debug!(%room, %id, "published");
        Ok(ServerMsg::Ack {
            room,
            cid,
            id,
            ts: id.ms,
        })
    }

    /// Tells the room's other members, on every replica, that `nick` joined or left. Best effort: not stored.
    fn announce(&self, room: &RoomName, nick: &Nick, event: PresenceKind) {
        let body = BusBody::Presence {
            nick: nick.clone(),
            event,
            ts: now_ms(),
            node: self.state.node.to_string(),
            conn: self.conn,
        };
        let fut = self.state.bus.announce(room, &body);
        let room = room.clone();
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                debug!(%room, error = %e, "presence notice not delivered");
            }
        });
    }

    fn leave_all(&mut self) {
        for (room, joined) in std::mem::take(&mut self.joined) {
            self.state.rooms.leave(&room, self.conn);
            self.announce(&room, &joined.nick, PresenceKind::Left);
        }
    }
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
        "too slow: outgoing queue full; reconnect and resume with since".into(),
    )
}

fn not_joined(room: &RoomName) -> RequestError {
    RequestError::new(
        ErrorCode::NotJoined,
        format!("you have not joined room {room}; join it first"),
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
    if !matches!(kind.as_str(), "hello" | "join" | "leave" | "send") {
        let err = RequestError::new(
            ErrorCode::UnknownType,
            format!("unknown message type {kind:?}; expected hello, join, leave or send"),
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
