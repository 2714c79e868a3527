//! The Redis bus: a capped Stream per room for history and ids, a Pub/Sub channel per room for live relay.
//!
//! Publishing and subscribing use separate connections. A message is appended to the room's stream and published
//! on its channel by one Lua script, so the stream entry id is the message id and no replica can see a message
//! that history does not have. The subscriber task owns the Pub/Sub connection: it applies subscribe/unsubscribe
//! requests in order, reconnects with backoff when Redis goes away, and resubscribes every room that still has
//! local members.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use shared::{BusBody, ChatMessage, MsgId, Nick, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use super::{Bus, BusError, BusEvent, EventSink, Subscribed};

/// How long a single Redis request may take before the replica answers `unavailable`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Health check interval on the Pub/Sub connection, which otherwise only notices a clean close.
const PING_EVERY: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Appends to the stream and publishes on the channel atomically; the channel payload is `<id> <json>`.
const PUBLISH_SCRIPT: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'm', ARGV[3])
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[3])
return id
";

/// A bus backed by one Redis server shared by all replicas.
pub struct RedisBus {
    conn: ConnectionManager,
    script: redis::Script,
    keys: Keys,
    history_limit: usize,
    commands: mpsc::UnboundedSender<Command>,
    up: Arc<AtomicBool>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

/// Names of a room's Redis stream and channel. The `{room}` hash tag keeps both in one cluster slot.
#[derive(Debug, Clone)]
struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    fn stream(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:log", self.prefix)
    }

    fn channel(&self, room: &RoomName) -> String {
        format!("{}:{{{room}}}:live", self.prefix)
    }

    fn room_of_channel(&self, channel: &str) -> Option<RoomName> {
        let inner = channel
            .strip_prefix(&*self.prefix)?
            .strip_prefix(":{")?
            .strip_suffix("}:live")?;
        RoomName::parse(inner).ok()
    }
}

enum Command {
    Subscribe(RoomName, oneshot::Sender<Result<(), BusError>>),
    Unsubscribe(RoomName),
}

impl RedisBus {
    /// Connects lazily: the replica starts and serves even while Redis is down, answering sends with `unavailable`.
    pub fn start(
        url: &str,
        prefix: &str,
        history_limit: usize,
        events: EventSink,
        shutdown: CancellationToken,
    ) -> Result<Self, BusError> {
        let client = redis::Client::open(url).map_err(|e| BusError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REQUEST_TIMEOUT))
            .set_response_timeout(Some(REQUEST_TIMEOUT))
            .set_number_of_retries(1)
            .set_min_delay(BACKOFF_MIN)
            .set_max_delay(BACKOFF_MAX);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| BusError::Unavailable(e.to_string()))?;
        let keys = Keys {
            prefix: Arc::from(prefix),
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let subscriber = Subscriber {
            client,
            keys: keys.clone(),
            events,
            commands: rx,
            wanted: HashSet::new(),
            up: up.clone(),
        };
        tokio::spawn(subscriber.run(shutdown).in_current_span());
        Ok(Self {
            conn,
            script: redis::Script::new(PUBLISH_SCRIPT),
            keys,
            history_limit,
            commands,
            up,
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BusError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(format!("no answer within {REQUEST_TIMEOUT:?}"))),
    }
}

impl Bus for RedisBus {
    fn publish(
        &self,
        room: &RoomName,
        nick: &Nick,
        text: &str,
    ) -> BoxFuture<'static, Result<MsgId, BusError>> {
        let body = BusBody::Message {
            nick: nick.clone(),
            text: text.to_owned(),
        };
        let json = serde_json::to_string(&body).expect("bus bodies always serialize");
        let (script, stream, channel) = (
            self.script.clone(),
            self.keys.stream(room),
            self.keys.channel(room),
        );
        let (mut conn, limit) = (self.conn.clone(), self.history_limit);
        async move {
            let mut invocation = script.key(stream);
            invocation.arg(channel).arg(limit).arg(json);
            let id: String = timed(invocation.invoke_async(&mut conn)).await?;
            id.parse::<MsgId>()
                .map_err(|e| BusError::Protocol(e.to_string()))
        }
        .boxed()
    }

    fn announce(
        &self,
        room: &RoomName,
        body: &BusBody,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let payload = format!(
            "- {}",
            serde_json::to_string(body).expect("bus bodies always serialize")
        );
        let channel = self.keys.channel(room);
        let mut conn = self.conn.clone();
        async move {
            let _receivers: i64 = timed(
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async(&mut conn),
            )
            .await?;
            Ok(())
        }
        .boxed()
    }

    fn history(
        &self,
        room: &RoomName,
        since: Option<MsgId>,
        recent: usize,
    ) -> BoxFuture<'static, Result<Vec<ChatMessage>, BusError>> {
        let stream = self.keys.stream(room);
        let room = room.clone();
        let mut conn = self.conn.clone();
        let limit = self.history_limit;
        async move {
            let entries: Vec<(String, HashMap<String, String>)> = match since {
                Some(since) => {
                    timed(
                        redis::cmd("XRANGE")
                            .arg(&stream)
                            .arg(format!("({since}"))
                            .arg("+")
                            .arg("COUNT")
                            .arg(limit)
                            .query_async(&mut conn),
                    )
                    .await?
                }
                None if recent == 0 => Vec::new(),
                None => {
                    let mut newest_first: Vec<(String, HashMap<String, String>)> = timed(
                        redis::cmd("XREVRANGE")
                            .arg(&stream)
                            .arg("+")
                            .arg("-")
                            .arg("COUNT")
                            .arg(recent)
                            .query_async(&mut conn),
                    )
                    .await?;
                    newest_first.reverse();
                    newest_first
                }
            };
            entries
                .into_iter()
                .map(|(id, fields)| decode_entry(&room, &id, fields.get("m").map(String::as_str)))
                .collect()
        }
        .boxed()
    }

    fn subscribe(&self, room: &RoomName) -> Subscribed {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Subscribe(_, tx))) =
            self.commands.send(Command::Subscribe(room.clone(), tx))
        {
            let _ = tx.send(Err(BusError::Unavailable("bus stopped".into())));
        }
        rx
    }

    fn unsubscribe(&self, room: &RoomName) {
        let _ = self.commands.send(Command::Unsubscribe(room.clone()));
    }

    fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn decode_entry(room: &RoomName, id: &str, json: Option<&str>) -> Result<ChatMessage, BusError> {
    let bad = |why: String| BusError::Protocol(format!("stream entry {id} of room {room}: {why}"));
    let id: MsgId = id
        .parse()
        .map_err(|e: shared::ParseMsgIdError| bad(e.to_string()))?;
    let json = json.ok_or_else(|| bad("no field m".into()))?;
    match serde_json::from_str(json).map_err(|e| bad(e.to_string()))? {
        BusBody::Message { nick, text } => Ok(ChatMessage {
            id,
            room: room.clone(),
            nick,
            text,
            ts: id.ms,
        }),
        BusBody::Presence { .. } => Err(bad("presence events are never stored".into())),
    }
}

/// Decodes a channel payload, `<id> <json>` or `- <json>`.
fn decode_payload(room: RoomName, payload: &[u8]) -> Result<BusEvent, String> {
    let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
    let (id, json) = text.split_once(' ').ok_or("no id separator")?;
    let id = match id {
        "-" => None,
        id => Some(id.parse::<MsgId>().map_err(|e| e.to_string())?),
    };
    let body = serde_json::from_str(json).map_err(|e| e.to_string())?;
    Ok(BusEvent { room, id, body })
}

/// Owns the Pub/Sub connection and keeps its subscriptions equal to the rooms that have local members.
struct Subscriber {
    client: redis::Client,
    keys: Keys,
    events: EventSink,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Rooms that have local members, whether or not Redis currently confirms the subscription.
    wanted: HashSet<RoomName>,
    up: Arc<AtomicBool>,
}

enum Disconnect {
    Lost(String),
    Shutdown,
}

impl Subscriber {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            let connect = tokio::time::timeout(REQUEST_TIMEOUT, self.client.get_async_pubsub());
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = connect => r,
            };
            let reason = match result {
                Ok(Ok(pubsub)) => {
                    let was_down = failures > 0;
                    failures = 0;
                    backoff = BACKOFF_MIN;
                    match self.serve(pubsub, &shutdown, was_down).await {
                        Disconnect::Shutdown => return,
                        Disconnect::Lost(reason) => reason,
                    }
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("connect timed out after {REQUEST_TIMEOUT:?}"),
            };
            self.up.store(false, Ordering::Relaxed);
            metrics::gauge!("roomcast_bus_up").set(0.0);
            failures += 1;
            if failures == 1 || failures.is_power_of_two() {
                warn!(%reason, attempt = failures, retry_in = ?backoff, "redis subscriber connection down; sends answer `unavailable` until it is back");
            }
            // While down, keep applying membership changes so the resubscription is exact.
            let sleep = tokio::time::sleep(jitter(backoff));
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = &mut sleep => break,
                    cmd = self.commands.recv() => match cmd {
                        None => return,
                        Some(Command::Subscribe(room, reply)) => {
                            self.wanted.insert(room);
                            let _ = reply.send(Err(unavailable(&reason)));
                        }
                        Some(Command::Unsubscribe(room)) => { self.wanted.remove(&room); }
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Runs one connection until it fails or the replica shuts down.
    async fn serve(
        &mut self,
        pubsub: redis::aio::PubSub,
        shutdown: &CancellationToken,
        was_down: bool,
    ) -> Disconnect {
        let (mut sink, mut stream) = pubsub.split();
        if !self.wanted.is_empty() {
            let channels: Vec<String> = self.wanted.iter().map(|r| self.keys.channel(r)).collect();
            if let Err(e) = timed(sink.subscribe(&channels)).await {
                return Disconnect::Lost(e.to_string());
            }
        }
        self.up.store(true, Ordering::Relaxed);
        metrics::gauge!("roomcast_bus_up").set(1.0);
        if was_down {
            info!(
                rooms = self.wanted.len(),
                "redis subscriber reconnected and resubscribed"
            );
        } else {
            info!(rooms = self.wanted.len(), "redis subscriber connected");
        }
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Disconnect::Shutdown,
                msg = stream.next() => {
                    let Some(msg) = msg else { return Disconnect::Lost("connection closed".into()) };
                    self.forward(msg.get_channel_name(), msg.get_payload_bytes());
                }
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Disconnect::Shutdown };
                    if let Err(e) = self.apply(&mut sink, cmd).await {
                        return Disconnect::Lost(e.to_string());
                    }
                }
                _ = ping.tick() => {
                    // In subscribe mode Redis answers PING with ["pong", ""], so accept any reply.
                    if let Err(e) = timed(sink.ping::<redis::Value>()).await {
                        return Disconnect::Lost(format!("ping failed: {e}"));
                    }
                }
            }
        }
    }

    async fn apply(&mut self, sink: &mut PubSubSink, cmd: Command) -> Result<(), BusError> {
        match cmd {
            Command::Subscribe(room, reply) => {
                if self.wanted.contains(&room) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                self.wanted.insert(room.clone());
                let result = timed(sink.subscribe(self.keys.channel(&room))).await;
                debug!(%room, ok = result.is_ok(), "subscribe");
                let _ = reply.send(result.clone());
                result
            }
            Command::Unsubscribe(room) => {
                if self.wanted.remove(&room) {
                    debug!(%room, "unsubscribe");
                    timed(sink.unsubscribe(self.keys.channel(&room))).await?;
                }
                Ok(())
            }
        }
    }

    fn forward(&self, channel: &str, payload: &[u8]) {
        let Some(room) = self.keys.room_of_channel(channel) else {
            warn!(channel, "message on an unexpected channel ignored");
            return;
        };
        match decode_payload(room, payload) {
            Ok(event) => {
                let _ = self.events.send(event);
            }
            Err(e) => warn!(channel, error = %e, "undecodable bus payload ignored"),
        }
    }
}

/// Spreads reconnect attempts of many replicas so they do not hit a restarted Redis in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let keys = Keys {
            prefix: Arc::from("rc"),
        };
        let room = RoomName::parse("general").unwrap();
        assert_eq!(keys.channel(&room), "rc:{general}:live");
        assert_eq!(keys.stream(&room), "rc:{general}:log");
        assert_eq!(keys.room_of_channel("rc:{general}:live"), Some(room));
        assert_eq!(keys.room_of_channel("other:{general}:live"), None);
        assert_eq!(keys.room_of_channel("rc:{Bad Room}:live"), None);
    }

    #[test]
    fn payloads_decode() {
        let room = RoomName::parse("r").unwrap();
        let ev = decode_payload(
            room.clone(),
            br#"5-1 {"kind":"message","nick":"a","text":"x y"}"#,
        )
        .unwrap();
        assert_eq!(ev.id, Some(MsgId::new(5, 1)));
        assert!(matches!(ev.body, BusBody::Message { ref text, .. } if text == "x y"));
        let ev = decode_payload(
            room.clone(),
            br#"- {"kind":"presence","nick":"a","event":"joined","ts":1,"node":"n","conn":2}"#,
        )
        .unwrap();
        assert_eq!(ev.id, None);
        assert!(decode_payload(room.clone(), b"garbage").is_err());
        assert!(decode_payload(room, b"x-1 {}").is_err());
    }
}
