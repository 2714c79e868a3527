//! One WebSocket connection: the socket loop. It reads requests and hands them to the room core
//! ([`Participant::handle`]), writes what that answers, and writes the room frames queued for the connection; it
//! knows framing, pings, time limits and close codes, and nothing of the room rules.
//!
//! A single task per connection owns the socket, so frames leave in the order the session decides: `joined` (with
//! history) always precedes the live messages that follow it, and the participant's per-room high-water mark drops
//! any live message already delivered through history. That is what makes join-with-`since` gapless and
//! duplicate-free.

pub mod codec;
mod socket;
mod upgrade;
mod writer;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use shared::validate::MAX_FRAME_BYTES;
use shared::{ErrorCode, PROTOCOL_VERSION, ServerMsg, close_code, frame};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{Instrument, debug, info_span, warn};

use crate::error::{RequestError, RequestRef};
use crate::hub::{Close, ConnId, Grant, Hub, Member, Outbound, Outlet, Participant, Reply};
pub use socket::Socket;
pub use upgrade::{NotWebSocket, Upgrade};
use writer::{Gone, WRITE_TIMEOUT, write_control, write_msg};

/// How the replica's WebSockets read: tungstenite's defaults reserve 128 KiB per socket for reading alone, while
/// client frames are small and rare, so a 1 KiB read chunk costs nothing (a long message takes a few reads) and
/// keeps idle sockets lean. The hard caps are well above the protocol's limit: frames between the two are answered
/// with a clean 1009 by the session; larger ones are cut off by tungstenite before they are buffered whole. Frames
/// out are written by [`Socket`]'s `Io` as they are queued, so tungstenite buffers none of them.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_FRAME_BYTES * 4))
        .max_frame_size(Some(MAX_FRAME_BYTES * 4))
}

/// How long a closing connection waits for the peer to answer its close frame.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves one upgraded WebSocket until either side closes it or the replica shuts down.
///
/// Not an `async fn`: the socket is split and the session built before the future exists, so the future holds only
/// what a connection keeps for its life. (An `async fn` keeps room for its arguments after they have been moved out,
/// and this future is every idle connection's task.)
/// `outlet` is the one the socket's `Io` reports to.
pub fn serve(
    mut socket: Socket,
    outlet: Arc<Outlet>,
    hub: Hub,
    conn: ConnId,
    grant: Option<Box<Grant>>,
) -> impl Future<Output = ()> + Send {
    let span = info_span!("conn", node = %hub.node, conn);
    let mut session = Session::new(hub, conn, grant, outlet);
    async move {
        metrics::gauge!("roomcast_connections").increment(1.0);
        metrics::counter!("roomcast_connections_total").increment(1);
        debug!("connected");
        let close = session.run(&mut socket).await;
        session.close(&mut socket, close).await;
        metrics::gauge!("roomcast_connections").decrement(1.0);
    }
    .instrument(span)
}

/// Tells a connection the replica cannot take it now (admission control): `try_again`, then close 1013.
pub async fn turn_away(mut socket: Socket, after: Duration) {
    let msg = ServerMsg::TryAgain(frame::TryAgain {
        after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        request: frame::TryAgainRequest::Connect,
        room: None,
        req: None,
    });
    let said = write_msg(&mut socket, &msg).await.is_ok()
        && write_control(
            &mut socket,
            close_message(
                close_code::TRY_AGAIN_LATER,
                "busy: reconnect after try_again's after_ms",
            ),
        )
        .await
        .is_ok();
    if said {
        finish_close(&mut socket).await;
    }
}

/// A close frame with `code` and `reason`.
fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }))
}

/// Finishes the closing handshake after our close frame: reads until the peer's Close. Dropping the socket earlier
/// would make the kernel answer the peer's last frames with a reset, which discards what it has not read yet, our
/// Close included.
async fn finish_close(socket: &mut Socket) {
    let drain = async {
        while let Some(Ok(msg)) = socket.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain).await;
}

/// When, in a drain of `window`, connection `conn` closes: spread evenly over the window by a hash of its id, so
/// neighbours (connections made at the same moment, often by one client machine) close apart.
fn drain_slot(conn: ConnId, window: Duration) -> Duration {
    let spread = conn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    #[allow(clippy::cast_precision_loss)]
    window.mul_f64(spread as f64 / (1_u64 << 53) as f64)
}

/// Why the session ended, and the close frame it sent, if any.
#[derive(Debug)]
enum End {
    Closed(u16, String),
    PeerGone,
}

impl From<Close> for End {
    fn from(close: Close) -> Self {
        Self::Closed(close.code, close.reason)
    }
}

struct Session {
    participant: Participant,
    queued: mpsc::UnboundedReceiver<Arc<Outbound>>,
    outlet: Arc<Outlet>,
}

/// How a token's connection ends by itself: when the token expires, or when it is revoked.
type TokenEnd = std::pin::Pin<Box<dyn Future<Output = End> + Send>>;

/// Resolves when the connection's token has expired (plus grace) or was revoked; never without a token.
async fn token_end(end: &mut Option<TokenEnd>) -> End {
    match end {
        Some(end) => end.await,
        None => std::future::pending().await,
    }
}

/// The end of a connection whose token is `grant`: at `expires`, or when a revocation of the person reaches this
/// replica (at once if one had, between the upgrade and now).
fn token_ends(hub: &Hub, grant: &Grant, expires: Instant) -> TokenEnd {
    let watch = hub.revocations().watch(&grant.person, grant.issued);
    Box::pin(async move {
        let watch = match watch {
            Ok(watch) => watch,
            Err(_) => return revoked(),
        };
        tokio::select! {
            () = tokio::time::sleep_until(expires) => End::Closed(
                close_code::TOKEN_EXPIRED,
                "token expired: reconnect with a fresh token".into(),
            ),
            () = watch.revoked() => revoked(),
        }
    })
}

fn revoked() -> End {
    End::Closed(
        close_code::SESSION_REVOKED,
        "session revoked: sign in again for a new token".into(),
    )
}

impl Session {
    fn new(hub: Hub, conn: ConnId, grant: Option<Box<Grant>>, outlet: Arc<Outlet>) -> Self {
        let (queue, queued) = mpsc::unbounded_channel();
        let member = Member {
            queue,
            outlet: Arc::clone(&outlet),
            person: None,
        };
        Self {
            participant: Participant::new(hub, conn, member, grant),
            queued,
            outlet,
        }
    }

    /// Serves the connection until it ends; says why.
    async fn run(&mut self, socket: &mut Socket) -> End {
        let hub = self.participant.hub().clone();
        let welcome = ServerMsg::Welcome(frame::Welcome {
            version: PROTOCOL_VERSION,
            node: hub.node.to_string(),
            limits: (*hub.limits).clone(),
        });
        if write_msg(socket, &welcome).await.is_err() {
            return End::PeerGone;
        }
        let (shutdown, too_slow) = (hub.shutdown.clone(), self.outlet.too_slow.clone());
        // A drain closes each connection at its own moment of the window; until then it is served as usual.
        let slot = drain_slot(
            self.participant.conn(),
            Duration::from_secs(hub.config.drain_secs),
        );
        // Made once, not per frame: each `cancelled()` registers with the token, which takes a lock. The timer is
        // boxed, made only once the drain starts: inline, it would enlarge every idle connection's task.
        let mut shutdown = pin!(async move {
            shutdown.cancelled_owned().await;
            if !slot.is_zero() {
                Box::pin(tokio::time::sleep(slot)).await;
            }
        });
        let mut too_slow = pin!(too_slow.cancelled_owned());
        let ping_every = hub.config.ping_interval();
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        let mut last_heard = Instant::now();
        // A token's connection ends when the token does (plus the grace period), or when it is revoked; without
        // one, never. Boxed, and only with a token: a timer inline would enlarge every connection's task, tokens or
        // not.
        let mut ends = self.participant.grant().map(|g| {
            let expires =
                Instant::now() + g.remaining(Duration::from_secs(hub.config.jwt_grace_secs));
            token_ends(&hub, g, expires)
        });

        drop(hub);
        loop {
            let step = tokio::select! {
                biased;
                () = &mut shutdown => Err(shutting_down()),
                () = &mut too_slow => Err(too_slow_end()),
                end = token_end(&mut ends) => Err(end),
                // Drain what is queued before reading more requests: a client that pipelines sends keeps its
                // own queue short, and one that stops reading stops being read (TCP backpressure).
                Some(out) = self.queued.recv() => {
                    // A stalled peer blocks these writes; the kick, revocation or shutdown must still get through.
                    tokio::select! {
                        r = writer::write_batch(socket, &mut self.queued, &self.outlet, &mut self.participant, out) => {
                            r.map_err(|Gone| End::PeerGone)
                        }
                        () = &mut too_slow => Err(too_slow_end()),
                        () = &mut shutdown => Err(shutting_down()),
                        end = token_end(&mut ends) => Err(end),
                    }
                }
                frame = socket.next() => match frame {
                    None | Some(Ok(Message::Close(_))) => Err(End::PeerGone),
                    Some(Err(e)) => Err(read_error(&e)),
                    Some(Ok(msg)) => {
                        last_heard = Instant::now();
                        // Boxed: requests are rare next to deliveries, and their state machine would otherwise make every
                        // idle connection's task as large as the largest request.
                        Box::pin(self.on_frame(socket, msg)).await
                    }
                },
                _ = ping.tick() => {
                    if last_heard.elapsed() > ping_every * 3 {
                        Err(End::Closed(close_code::GOING_AWAY, "no answer to pings".into()))
                    } else if self.participant.hub().cut_off() {
                        // Checked at each connection's own ping, so a cut-off replica's clients leave spread out.
                        Err(End::Closed(close_code::GOING_AWAY, "this replica is cut off from Redis; reconnect to another".into()))
                    } else {
                        write_control(socket, Message::Ping(Default::default())).await.map_err(|Gone| End::PeerGone)
                    }
                }
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Ends the connection: leaves its rooms, then sends the close frame `end` calls for and waits for the peer's.
    async fn close(&mut self, socket: &mut Socket, end: End) {
        // Leave first: the rooms stop queueing for us and the others hear we left, even if the close handshake
        // below has to wait for a stalled peer.
        self.participant.leave_all();
        debug!(?end, "disconnected");
        if let End::Closed(code, reason) = end
            && write_control(socket, close_message(code, &reason))
                .await
                .is_ok()
        {
            finish_close(socket).await;
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, socket.close(None)).await;
    }

    /// One frame from the client: decoded, handed to the room core, and its reply written.
    async fn on_frame(&mut self, socket: &mut Socket, msg: Message) -> Result<(), End> {
        let text = match msg {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let err = RequestError::new(
                    ErrorCode::Malformed,
                    "binary frames are not supported; send JSON text frames",
                );
                return refuse(socket, err, RequestRef::default()).await;
            }
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return Ok(());
            }
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
        let (request, re) = match codec::decode(&text) {
            Ok(parsed) => parsed,
            Err((err, re)) => {
                debug!(code = ?err.code, "undecodable request");
                return refuse(socket, err, re).await;
            }
        };
        match self.participant.handle(request).await {
            Reply::Silent => Ok(()),
            Reply::Frame(msg) => write_msg(socket, &msg).await.map_err(|Gone| End::PeerGone),
            Reply::Frames(mut frames) => {
                while let Some(frame) = frames.next().await {
                    let msg = frame.map_err(End::from)?;
                    write_msg(socket, &msg)
                        .await
                        .map_err(|Gone| End::PeerGone)?;
                }
                Ok(())
            }
            Reply::Messages(_) | Reply::Export(..) | Reply::Revoked(_) => {
                unreachable!("a connection's requests are the protocol's")
            }
            Reply::Refused { error, close } => {
                refuse(socket, error, re).await?;
                match close {
                    Some(close) => Err(close.into()),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Answers a refused request with its `error` frame.
async fn refuse(socket: &mut Socket, err: RequestError, re: RequestRef) -> Result<(), End> {
    write_msg(socket, &err.into_frame(re))
        .await
        .map_err(|Gone| End::PeerGone)
}

/// Why reading failed: a frame or a fragmented message above the hard cap is answered like an oversize text frame
/// (1009); broken framing (reserved bits set, as a compressed frame has them with no extension agreed; an unmasked
/// frame; a bad opcode) with 1002, as RFC 6455 asks; a vanished peer with nothing.
fn read_error(e: &WsError) -> End {
    match e {
        WsError::Capacity(e) => {
            warn!(error = %e, "oversize frame; closing with 1009");
            End::Closed(
                close_code::TOO_BIG,
                format!("frame exceeds the {MAX_FRAME_BYTES} byte limit"),
            )
        }
        WsError::Protocol(e) if !matches!(e, ProtocolError::ResetWithoutClosingHandshake) => {
            debug!(error = %e, "WebSocket protocol error; closing with 1002");
            End::Closed(close_code::PROTOCOL_ERROR, format!("protocol error: {e}"))
        }
        _ => {
            debug!(error = %e, "read failed");
            End::PeerGone
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
        "too slow: outgoing queue over its bound while not reading; reconnect and resume with since".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `start` returns, without calling it.
    fn future_size<A, B, C, D, E, F: Future>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_connection_task_stays_small() {
        // Every connection is one task this size, idle or not: an `async fn` serve kept its arguments (the socket,
        // the hub, the grant) beside the moved copies, and a `ServerMsg` held across an await in the loop; the
        // task was 4.1 KB of an idle connection's 8.9 KiB. A new local held across the loop's awaits shows here.
        // The socket itself (tungstenite's state and our writer's) lives in the task too.
        let size = future_size(serve);
        let socket = std::mem::size_of::<Socket>();
        eprintln!("connection future: {size} bytes, of which the socket {socket}");
        assert!(
            size <= 1_200 + socket,
            "a connection's future grew to {size} bytes"
        );
    }

    #[test]
    fn drain_slots_spread_over_the_window() {
        let window = Duration::from_secs(10);
        let mut per_second = [0_u32; 10];
        for conn in 1..=10_000 {
            let slot = drain_slot(conn, window);
            assert!(slot < window);
            per_second[usize::try_from(slot.as_secs()).unwrap()] += 1;
        }
        // Consecutive ids land all over the window: every second gets its tenth, give or take 10 %.
        assert!(
            per_second.iter().all(|n| (900..=1100).contains(n)),
            "{per_second:?}"
        );
        assert_eq!(drain_slot(7, Duration::ZERO), Duration::ZERO);
    }
}
