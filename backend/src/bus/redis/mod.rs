//! The Redis bus: per room a capped Stream (history, ids), a position hash (epoch and contiguous offset) and a
//! Pub/Sub channel (live relay).
//!
//! One Lua script stores a message: it checks the cid (idempotency), bumps the room's offset, appends to the stream
//! and publishes on the channel, atomically. So the stream entry id is the message id, offsets have no holes, and
//! no replica can see a message that history does not have. Publishing and history reads share one command
//! connection ([`Store`] over [`link::Link`]); the [`subscriber`] task owns the Pub/Sub feed and uses the store to
//! backfill. [`topology`] hides whether that is one server, a Sentinel-managed master or a Cluster.

mod feed;
mod keys;
mod link;
mod subscriber;
pub mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use shared::{BusBody, ChatMessage, MsgId, Nick, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{
    Bus, BusError, Draft, EventSink, History, HistoryQuery, Notice, Published, RosterChange,
    RosterOp, RosterTiming, Subscribed, new_epoch,
};
pub use keys::Keys;
use link::{Conn, Link};
use subscriber::{Command, Subscriber};
use topology::{SubscribeTo, Target, Topology};

/// How long a single Redis request may take before the replica answers `unavailable`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect delays of the subscriber (exponential, with jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Members online: join, rename, leave and the upkeep that expires crashed replicas and ended grace periods.
const ROSTER_SCRIPT: &str = include_str!("roster.lua");

/// Stores a message at most once per cid, then relays it. Channel payload: `<id> <offset> <epoch> <body>`.
///
/// KEYS: stream, meta, cid key. ARGV: channel, maxlen, body, candidate epoch, dedupe seconds, publish command
/// (`PUBLISH`, or `SPUBLISH` on a Cluster, or empty: the caller publishes once Redis replicas confirmed the write).
/// Returns `{id, 0, offset, epoch}` when stored, `{id, 1, 0, ''}` for a repeated cid with the same body,
/// `{'', 2, 0, ''}` for a reused cid.
const PUBLISH_SCRIPT: &str = r"
local digest = redis.sha1hex(ARGV[3])
local prev = redis.call('GET', KEYS[3])
if prev then
  local sep = string.find(prev, ' ', 1, true)
  if sep and string.sub(prev, sep + 1) == digest then
    return {string.sub(prev, 1, sep - 1), 1, 0, ''}
  end
  return {'', 2, 0, ''}
end
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[4])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local off = redis.call('HINCRBY', KEYS[2], 'seq', 1)
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'o', off, 'm', ARGV[3])
redis.call('HSET', KEYS[2], 'last', id)
redis.call('SET', KEYS[3], id .. ' ' .. digest, 'EX', ARGV[5])
if ARGV[6] ~= '' then
  redis.call(ARGV[6], ARGV[1], id .. ' ' .. off .. ' ' .. epoch .. ' ' .. ARGV[3])
end
return {id, 0, off, epoch}
";

/// The room's position: creates the epoch if the room has none, returns `{epoch, seq|nil, last|nil}`.
///
/// KEYS: meta. ARGV: candidate epoch.
const POSITION_SCRIPT: &str = r"
redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1])
return redis.call('HMGET', KEYS[1], 'epoch', 'seq', 'last')
";

/// A history read that sees the epoch and the entries at one instant.
///
/// KEYS: stream, meta. ARGV: candidate epoch, client epoch or '', since or '', recent, limit.
/// Returns `{epoch, reset, entries, oldest}` where `oldest` is the oldest kept entry (only with `since`).
const HISTORY_SCRIPT: &str = r"
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local since = ARGV[3]
local reset = 0
if since ~= '' and ARGV[2] ~= '' and ARGV[2] ~= epoch then
  reset = 1
  since = ''
end
if since ~= '' then
  local entries = redis.call('XRANGE', KEYS[1], '(' .. since, '+', 'COUNT', ARGV[5])
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  return {epoch, reset, entries, oldest}
end
if tonumber(ARGV[4]) == 0 then
  return {epoch, reset, {}, {}}
end
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[4])
return {epoch, reset, entries, {}}
";

/// A raw stream entry: its id and its field/value pairs.
type Entry = (String, HashMap<String, String>);

/// The request side of Redis: scripts over one command connection, shared by publishers, history reads and the
/// subscriber's backfill.
#[derive(Clone)]
pub(crate) struct Store {
    link: Arc<Link>,
    keys: Keys,
    publish: redis::Script,
    position: redis::Script,
    history: redis::Script,
    roster: redis::Script,
    /// `PUBLISH`, or `SPUBLISH` (sharded Pub/Sub) on a Cluster.
    publish_cmd: &'static str,
}

/// Where a room's stored messages stand: the epoch, the newest offset and the newest id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub id: MsgId,
}

/// One stored message as read from a stream, with its offset.
#[derive(Debug, Clone)]
pub(crate) struct StoredEntry {
    pub offset: u64,
    pub message: ChatMessage,
}

impl Store {
    /// Runs one request on the current connection within [`REQUEST_TIMEOUT`]. A failure makes the next request
    /// reconnect, re-resolving the master: that is how a Sentinel failover or a `-READONLY` is followed.
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, BusError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.link.get().await?;
        match tokio::time::timeout(REQUEST_TIMEOUT, f(conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.link.failed(generation).await;
                Err(unavailable(e))
            }
            Err(_) => {
                self.link.failed(generation).await;
                Err(unavailable(format!("no answer within {REQUEST_TIMEOUT:?}")))
            }
        }
    }

    /// The current positions of `rooms`. Creates an epoch for rooms that have none. The requests are sent together
    /// (the connection pipelines them), and each is routed to its room's shard on a Cluster.
    pub(crate) async fn positions(&self, rooms: &[RoomName]) -> Result<Vec<Position>, BusError> {
        let metas: Vec<String> = rooms.iter().map(|r| self.keys.meta(r)).collect();
        let script = self.position.clone();
        let rows: Vec<(String, Option<u64>, Option<String>)> = self
            .run(|conn| async move {
                let calls = metas.iter().map(|meta| {
                    let mut conn = conn.clone();
                    let script = &script;
                    async move {
                        let mut inv = script.key(meta);
                        inv.arg(new_epoch());
                        inv.invoke_async(&mut conn).await
                    }
                });
                futures_util::future::try_join_all(calls).await
            })
            .await?;
        rows.into_iter()
            .map(|(epoch, seq, last)| {
                let id = match last {
                    Some(last) => last.parse().map_err(protocol)?,
                    None => MsgId::default(),
                };
                Ok(Position {
                    epoch: epoch.into(),
                    offset: seq.unwrap_or(0),
                    id,
                })
            })
            .collect()
    }

    /// Up to `count` stored messages after `after`, oldest first, with their offsets.
    pub(crate) async fn range_after(
        &self,
        room: &RoomName,
        after: MsgId,
        count: usize,
    ) -> Result<Vec<StoredEntry>, BusError> {
        let stream = self.keys.stream(room);
        let entries: Vec<Entry> = self
            .run(|mut conn| async move {
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(count)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        entries
            .into_iter()
            .map(|entry| decode_entry(room, entry))
            .collect()
    }
}

/// How a replica reaches Redis, from its configuration.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `--redis-url`, parsed.
    pub target: Target,
    /// `--redis-subscribe-url`, parsed.
    pub subscribe: SubscribeTo,
    /// `--redis-prefix`.
    pub prefix: String,
    /// `--history-limit`.
    pub history_limit: usize,
    /// `--dedupe-secs`.
    pub dedupe_window: Duration,
    /// `--redis-wait-replicas`: acknowledge a message only once this many Redis replicas have it (0: do not wait).
    pub wait_replicas: u32,
    /// `--redis-wait-timeout-ms`: how long to wait for them.
    pub wait_timeout: Duration,
    /// This replica's node id (spreads subscriptions over Redis replicas).
    pub node: Arc<str>,
}

/// A bus backed by Redis, shared by all replicas.
pub struct RedisBus {
    store: Store,
    history_limit: usize,
    dedupe_secs: u64,
    wait_replicas: u32,
    wait_timeout_ms: u64,
    kind: &'static str,
    commands: mpsc::UnboundedSender<Command>,
    up: Arc<AtomicBool>,
    /// This process among the replicas: the node id plus a random part, so a replica restarted under the same name
    /// never refreshes the connections its previous run left in a roster.
    instance: Arc<str>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("kind", &self.kind)
            .field("prefix", &self.store.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects lazily: the replica starts and serves even while Redis is down, answering sends with `unavailable`.
    pub fn start(
        options: RedisOptions,
        events: EventSink,
        shutdown: CancellationToken,
    ) -> Result<Self, BusError> {
        let kind = options.target.kind();
        let cluster = matches!(options.target, Target::Cluster(_));
        let topology = Arc::new(
            Topology::new(options.target, options.subscribe, REQUEST_TIMEOUT)
                .map_err(unavailable)?,
        );
        let store = Store {
            link: Arc::new(Link::new(topology.clone())),
            keys: Keys::new(&options.prefix),
            publish: redis::Script::new(PUBLISH_SCRIPT),
            position: redis::Script::new(POSITION_SCRIPT),
            history: redis::Script::new(HISTORY_SCRIPT),
            roster: redis::Script::new(ROSTER_SCRIPT),
            publish_cmd: if cluster { "SPUBLISH" } else { "PUBLISH" },
        };
        let (commands, rx) = mpsc::unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let instance: Arc<str> = format!("{}#{}", options.node, new_epoch()).into();
        let subscriber = Subscriber::new(
            topology,
            options.node,
            store.clone(),
            events,
            rx,
            up.clone(),
        );
        tokio::spawn(subscriber.run(shutdown).in_current_span());
        Ok(Self {
            store,
            history_limit: options.history_limit,
            dedupe_secs: options.dedupe_window.as_secs().max(1),
            wait_replicas: options.wait_replicas,
            wait_timeout_ms: u64::try_from(options.wait_timeout.as_millis()).unwrap_or(u64::MAX),
            kind,
            commands,
            up,
            instance,
        })
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

fn protocol(e: impl std::fmt::Display) -> BusError {
    BusError::Protocol(e.to_string())
}

async fn timed<T>(fut: impl Future<Output = redis::RedisResult<T>>) -> Result<T, BusError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(e)),
        Err(_) => Err(unavailable(format!("no answer within {REQUEST_TIMEOUT:?}"))),
    }
}

/// What the publish script answers: id, flag (0 stored, 1 duplicate, 2 cid reused), offset.
/// The publish script's answer: id, flag (0 stored, 1 repeated cid, 2 reused cid), offset, epoch.
type PublishReply = (String, i64, u64, String);

/// What a publish did in Redis: stored (id, flag, offset) and relayed, or stored without the replicas `WAIT` asked
/// for (and so not relayed).
enum Written {
    Stored(String, i64, u64),
    NotReplicated(i64),
}

impl Bus for RedisBus {
    fn publish(
        &self,
        room: &RoomName,
        draft: Draft,
    ) -> BoxFuture<'static, Result<Published, BusError>> {
        let keys = &self.store.keys;
        let ks = [
            keys.stream(room),
            keys.meta(room),
            keys.cid(room, &draft.nick, &draft.cid),
        ];
        let body = BusBody::Message {
            nick: draft.nick,
            text: draft.text,
        };
        let json = serde_json::to_string(&body).expect("bus bodies always serialize");
        let (channel, limit, dedupe) = (keys.channel(room), self.history_limit, self.dedupe_secs);
        let (wait, wait_ms) = (self.wait_replicas, self.wait_timeout_ms);
        let store = self.store.clone();
        async move {
            let script = store.publish.clone();
            let publish_cmd = store.publish_cmd;
            let written = store
                .run(|mut conn| async move {
                    let mut invocation = script.key(&ks[..]);
                    invocation
                        .arg(&channel)
                        .arg(limit)
                        .arg(&json)
                        .arg(new_epoch())
                        .arg(dedupe)
                        // With WAIT the script only stores: the message is relayed once replicas confirmed it, so
                        // no member ever sees a message that a failover can still take back.
                        .arg(if wait == 0 { publish_cmd } else { "" });
                    if wait == 0 {
                        let (id, flag, offset, _): PublishReply = invocation.invoke_async(&mut conn).await?;
                        return Ok(Written::Stored(id, flag, offset));
                    }
                    let ((id, flag, offset, epoch), acked): (PublishReply, i64) = match &mut conn {
                        Conn::Cluster(cluster) => {
                            // The Cluster keeps one connection per node: WAIT on the room's master counts this write.
                            let published: PublishReply = invocation.invoke_async(cluster).await?;
                            let route = redis::cluster_routing::Route::new(
                                slot_of(&ks[0]),
                                redis::cluster_routing::SlotAddr::Master,
                            );
                            let routing = redis::cluster_routing::RoutingInfo::SingleNode(
                                redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(route),
                            );
                            let mut wait_cmd = redis::cmd("WAIT");
                            wait_cmd.arg(wait).arg(wait_ms);
                            let acked = cluster.route_command(wait_cmd, routing).await?;
                            (published, redis::from_redis_value(acked)?)
                        }
                        conn => {
                            // WAIT right behind the script on the same connection: it counts the replicas that have
                            // every write this connection made so far, this message included (or, for a duplicate,
                            // the original).
                            let mut pipe = redis::pipe();
                            pipe.invoke_script(&invocation).cmd("WAIT").arg(wait).arg(wait_ms);
                            let reply: redis::RedisResult<(PublishReply, i64)> = pipe.query_async(conn).await;
                            match reply {
                                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                                    script.load_async(conn).await?;
                                    pipe.query_async(conn).await?
                                }
                                other => other?,
                            }
                        }
                    };
                    if acked < i64::from(wait) {
                        return Ok(Written::NotReplicated(acked));
                    }
                    if flag == 0 {
                        // Confirmed: relay it now. Publishes of concurrent senders may arrive out of offset order;
                        // the subscriber's gap rule backfills from the stream, which holds both.
                        let payload = format!("{id} {offset} {epoch} {json}");
                        let _receivers: i64 = redis::cmd(publish_cmd)
                            .arg(&channel)
                            .arg(payload)
                            .query_async(&mut conn)
                            .await?;
                    }
                    Ok(Written::Stored(id, flag, offset))
                })
                .await?;
            let (id, flag, offset) = match written {
                Written::Stored(id, flag, offset) => (id, flag, offset),
                Written::NotReplicated(acked) => {
                    metrics::counter!("roomcast_publish_not_replicated_total").increment(1);
                return Err(BusError::Unavailable(format!(
                    "stored, but only {acked} of {wait} Redis replicas confirmed it within {wait_ms} ms"
                    )));
                }
            };
            match flag {
                0 | 1 => Ok(Published {
                    id: id.parse().map_err(protocol)?,
                    offset,
                    duplicate: flag == 1,
                }),
                _ => Err(BusError::CidReused),
            }
        }
        .boxed()
    }

    fn announce(
        &self,
        room: &RoomName,
        notice: &Notice,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let body = notice.body();
        let payload = format!(
            "- {}",
            serde_json::to_string(&body).expect("bus bodies always serialize")
        );
        let channel = self.store.keys.channel(room);
        let store = self.store.clone();
        async move {
            let publish_cmd = store.publish_cmd;
            let _receivers: i64 = store
                .run(|mut conn| async move {
                    redis::cmd(publish_cmd)
                        .arg(channel)
                        .arg(payload)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn roster(
        &self,
        room: &RoomName,
        conn: u64,
        op: RosterOp,
        timing: RosterTiming,
    ) -> BoxFuture<'static, Result<RosterChange, BusError>> {
        let ks = self.store.keys.roster(room);
        let (name, nick, person, from) = match op {
            RosterOp::Join { nick, person } => ("join", Some(nick), person, None),
            RosterOp::Rename { from, to, person } => ("rename", Some(to), person, Some(from)),
            RosterOp::Leave { nick } => ("leave", Some(nick), None, None),
            RosterOp::Refresh => ("refresh", None, None, None),
            RosterOp::List => ("list", None, None, None),
        };
        let instance = self.instance.clone();
        let store = self.store.clone();
        async move {
            let script = store.roster.clone();
            let (taken, arrived, departed, online, members): (
                i64,
                i64,
                Vec<String>,
                u32,
                Vec<String>,
            ) = store
                .run(|mut conn_| async move {
                    let mut invocation = script.key(&ks[..]);
                    invocation
                        .arg(name)
                        .arg(&*instance)
                        .arg(conn)
                        .arg(nick.as_ref().map_or("", Nick::as_str))
                        .arg(person.as_deref().unwrap_or(""))
                        .arg(timing.grace_ms)
                        .arg(timing.alive_ms)
                        .arg(shared::MEMBERS_SHOWN)
                        .arg(from.as_ref().map_or("", Nick::as_str));
                    invocation.invoke_async(&mut conn_).await
                })
                .await?;
            let nicks = |names: Vec<String>| -> Result<Vec<Nick>, BusError> {
                names
                    .into_iter()
                    .map(|n| Nick::parse(&n).map_err(protocol))
                    .collect()
            };
            Ok(RosterChange {
                taken: taken == 1,
                arrived: arrived == 1,
                departed: nicks(departed)?,
                members: nicks(members)?,
                online,
            })
        }
        .boxed()
    }

    fn older(
        &self,
        room: &RoomName,
        before: MsgId,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<ChatMessage>, BusError>> {
        let stream = self.store.keys.stream(room);
        let store = self.store.clone();
        let room = room.clone();
        async move {
            let entries: Vec<Entry> = store
                .run(|mut conn| async move {
                    redis::cmd("XREVRANGE")
                        .arg(stream)
                        .arg(format!("({before}"))
                        .arg("-")
                        .arg("COUNT")
                        .arg(limit)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            entries
                .into_iter()
                .rev()
                .map(|e| decode_entry(&room, e).map(|s| s.message))
                .collect()
        }
        .boxed()
    }

    fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> BoxFuture<'static, Result<History, BusError>> {
        let keys = &self.store.keys;
        let ks = [keys.stream(room), keys.meta(room)];
        let store = self.store.clone();
        let room = room.clone();
        async move {
            let script = store.history.clone();
            let (epoch_arg, since_arg) = (
                query.epoch.clone().unwrap_or_default(),
                query.since.map(|s| s.to_string()).unwrap_or_default(),
            );
            let (recent, limit) = (query.recent, query.limit.max(1));
            let (epoch, reset, mut entries, oldest): (String, i64, Vec<Entry>, Vec<Entry>) = store
                .run(|mut conn| async move {
                    let mut invocation = script.key(&ks[..]);
                    invocation
                        .arg(new_epoch())
                        .arg(epoch_arg)
                        .arg(since_arg)
                        .arg(recent)
                        .arg(limit);
                    invocation.invoke_async(&mut conn).await
                })
                .await?;
            let reset = reset == 1;
            if query.since.is_none() || reset {
                entries.reverse();
            }
            let oldest = oldest
                .into_iter()
                .next()
                .map(|e| decode_entry(&room, e))
                .transpose()?;
            let truncated = match (query.since, oldest, reset) {
                (Some(since), Some(oldest), false) => {
                    oldest.offset > 1 && oldest.message.id > since
                }
                _ => false,
            };
            let messages = entries
                .into_iter()
                .map(|e| decode_entry(&room, e).map(|s| s.message))
                .collect::<Result<_, _>>()?;
            Ok(History {
                epoch: epoch.into(),
                messages,
                reset,
                truncated,
            })
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
        self.kind
    }
}

/// The Cluster slot of a key: CRC16 (XMODEM) of its hash tag, modulo 16384.
fn slot_of(key: &str) -> u16 {
    let key = key.as_bytes();
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let close = key[open + 1..].iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &key[open + 1..open + 1 + close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % 16384
}

/// Reads one stream entry: fields `o` (offset) and `m` (the message body).
fn decode_entry(room: &RoomName, (id, fields): Entry) -> Result<StoredEntry, BusError> {
    let bad = |why: String| BusError::Protocol(format!("stream entry {id} of room {room}: {why}"));
    let msg_id: MsgId = id
        .parse()
        .map_err(|e: shared::ParseMsgIdError| bad(e.to_string()))?;
    // Entries written before offsets existed have none; they sort before every offset.
    let offset = match fields.get("o") {
        Some(o) => o.parse().map_err(|_| bad(format!("offset {o:?}")))?,
        None => 0,
    };
    let json = fields.get("m").ok_or_else(|| bad("no field m".into()))?;
    match serde_json::from_str(json).map_err(|e| bad(e.to_string()))? {
        BusBody::Message { nick, text } => Ok(StoredEntry {
            offset,
            message: ChatMessage {
                id: msg_id,
                room: room.clone(),
                nick,
                text,
                ts: msg_id.ms,
            },
        }),
        BusBody::Presence(_) | BusBody::Typing(_) => {
            Err(bad("presence and typing notices are never stored".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn slots_follow_the_hash_tag() {
        // Reference values from `CLUSTER KEYSLOT`.
        assert_eq!(super::slot_of("foo"), 12182);
        assert_eq!(super::slot_of("roomcast:{foo}:log"), 12182);
        assert_eq!(super::slot_of("{}x"), super::slot_of("{}x"));
        assert_eq!(super::slot_of("123456789"), 12739);
    }
}
