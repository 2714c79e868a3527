//! The Redis bus: per room a capped Stream (history, ids), a position hash (epoch and contiguous offset) and a
//! Pub/Sub channel (live relay).
//!
//! One Lua script stores a message: it checks the cid (idempotency), bumps the room's offset, appends to the stream
//! and publishes on the channel, atomically. So the stream entry id is the message id, offsets have no holes, and
//! no replica can see a message that history does not have. Publishing and history reads share one command
//! connection ([`Store`] over [`link::Link`]); the [`subscriber`] task owns the Pub/Sub feed and feeds the
//! [`tracker`], which uses the store to backfill. [`codec`] owns what goes into Redis; [`topology`], [`link`] and
//! [`feed`] hide whether that is one server, a Sentinel-managed master or a Cluster.

mod archiving;
mod codec;
mod feed;
mod keys;
mod link;
mod reading;
mod subscriber;
pub mod topology;
mod tracker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use shared::{ErrorCode, MsgId, Nick, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, warn};

use super::{
    Body, Bus, BusError, Draft, EventSink, History, HistoryItem, HistoryQuery, MsgState, Notice,
    Page, Published, ReadMove, Reads, Revocations, RosterChange, RosterOp, RosterTiming,
    Subscribed, new_epoch,
};
pub(crate) use codec::check_decoders;
use codec::{Entry, StoredEntry};
pub use keys::Keys;
use link::{Conn, Link};
use subscriber::{Command, Subscriber};
use topology::{SubscribeTo, Target, Topology};
use tracker::{Position, StreamReader};

/// How long a single Redis request may take before the replica answers `unavailable`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect delays of the subscriber (exponential, with jitter).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Stores a message at most once per cid, then relays it (see the file for its keys, arguments and answer).
const PUBLISH_SCRIPT: &str = include_str!("publish.lua");
/// A room's position, creating its epoch if it has none.
const POSITION_SCRIPT: &str = include_str!("position.lua");
/// A history read that sees the epoch and the entries at one instant.
const HISTORY_SCRIPT: &str = include_str!("history.lua");
/// Members online: join, rename, leave and the upkeep that expires crashed replicas and ended grace periods.
const ROSTER_SCRIPT: &str = include_str!("roster.lua");
/// Rebuilds a room from the archive.
const RESTORE_SCRIPT: &str = include_str!("restore.lua");
/// Records what the archive holds and trims behind it.
const ARCHIVED_SCRIPT: &str = include_str!("archived.lua");
/// Drops what the retention job expired.
const EXPIRE_SCRIPT: &str = include_str!("expire.lua");
/// Moves a read position forward.
const READ_SCRIPT: &str = include_str!("read.lua");
/// A read position and the most recent readers'.
const READS_SCRIPT: &str = include_str!("reads.lua");
/// Records a revocation (never moving one back) and relays it.
const REVOKE_SCRIPT: &str = include_str!("revoke.lua");

pub use archiving::{ArchiveOptions, ArchiveStatus};

/// The request side of Redis: scripts over one command connection, shared by publishers, history reads and the
/// subscriber's backfill. Every request clones it into its future, so the scripts are shared, not copied: a
/// `redis::Script` owns its source (13.5 KB for the four), and 19,000 members leaving at once each held a copy.
#[derive(Clone)]
pub(crate) struct Store {
    link: Arc<Link>,
    keys: Keys,
    publish: Arc<redis::Script>,
    position: Arc<redis::Script>,
    history: Arc<redis::Script>,
    roster: Arc<redis::Script>,
    restore: Arc<redis::Script>,
    archived: Arc<redis::Script>,
    expire: Arc<redis::Script>,
    mark_read: Arc<redis::Script>,
    read_positions: Arc<redis::Script>,
    revoke: Arc<redis::Script>,
    /// `--history-limit`: the hot window a rebuilt room gets, and the archiver's trim.
    history_limit: usize,
    /// `--dedupe-secs`: how recent an archived event's idempotency key a rebuild restores.
    dedupe_secs: u64,
    /// With `--database-url`: the archive, and this replica's archiver's inputs.
    archiving: Option<Arc<archiving::Archiving>>,
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

    /// Up to `limit` decoded entries of the room's stream, read with `command` (`XRANGE` or `XREVRANGE`) from
    /// `start` to `end`, in the order Redis returns them.
    async fn entries(
        &self,
        room: &RoomName,
        command: &'static str,
        start: String,
        end: &'static str,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, BusError> {
        let stream = self.keys.stream(room);
        let entries: Vec<Entry> = self
            .run(|mut conn| async move {
                redis::cmd(command)
                    .arg(stream)
                    .arg(start)
                    .arg(end)
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        entries
            .into_iter()
            .map(|entry| codec::decode_entry(room, entry))
            .collect()
    }

    /// `position.lua` for each of `rooms`: epoch (`None` with an archive when Redis does not have the room), offset
    /// and last id.
    async fn raw_positions(&self, rooms: &[RoomName]) -> Result<Vec<RawPosition>, BusError> {
        let metas: Vec<String> = rooms.iter().map(|r| self.keys.meta(r)).collect();
        let script = self.position.clone();
        let archived = if self.archiving.is_some() { "1" } else { "" };
        self.run(|conn| async move {
            let calls = metas.iter().map(|meta| {
                let mut conn = conn.clone();
                let script = &script;
                async move {
                    let mut inv = script.key(meta);
                    inv.arg(new_epoch()).arg(archived);
                    inv.invoke_async(&mut conn).await
                }
            });
            futures_util::future::try_join_all(calls).await
        })
        .await
    }
}

impl Store {
    /// `revoke.lua`: records that `person`'s tokens issued before `before` are revoked and, with `relay`, tells
    /// every replica on the revocations' channel. Returns the revocation in force for the person.
    async fn revoke(&self, person: &str, before: u64, relay: bool) -> Result<u64, BusError> {
        let ks = [self.keys.revoked(), self.keys.revoked_seq()];
        let channel = self.keys.revoked_channel();
        let (script, person) = (self.revoke.clone(), person.to_owned());
        let now: String = self
            .run(|mut conn| async move {
                let publish = if relay { conn.publish_command() } else { "" };
                let mut invocation = script.key(&ks[..]);
                invocation.arg(person).arg(before).arg(publish).arg(channel);
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        now.parse().map_err(protocol)
    }

    /// The revocations' change counter (0 when Redis has none).
    async fn revocations_seq(&self) -> Result<u64, BusError> {
        let key = self.keys.revoked_seq();
        let seq: Option<u64> = self
            .run(|mut conn| async move { redis::cmd("GET").arg(key).query_async(&mut conn).await })
            .await?;
        Ok(seq.unwrap_or(0))
    }

    /// Every revocation Redis holds, with the change counter read just before (so a change made meanwhile shows
    /// as a counter that moved, and is read again).
    async fn revocations(&self) -> Result<(u64, HashMap<String, u64>), BusError> {
        let seq = self.revocations_seq().await?;
        let key = self.keys.revoked();
        let list: HashMap<String, u64> =
            self.run(|mut conn| async move {
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await
            })
            .await?;
        Ok((seq, list))
    }
}

/// `position.lua`'s answer: epoch, offset, last id.
type RawPosition = (Option<String>, Option<u64>, Option<String>);

impl StreamReader for Store {
    /// The current positions of `rooms`. Creates an epoch for rooms that have none (with an archive: rebuilds them
    /// from it first). The requests are sent together (the connection pipelines them), and each is routed to its
    /// room's shard on a Cluster.
    async fn positions(&self, rooms: &[RoomName]) -> Result<Vec<Position>, BusError> {
        let mut rows = self.raw_positions(rooms).await?;
        if let Some(archiving) = &self.archiving {
            let mut rebuilt = false;
            for (room, row) in rooms.iter().zip(&rows) {
                if row.0.is_none() {
                    self.restore(archiving, room).await?;
                    rebuilt = true;
                }
            }
            if rebuilt {
                rows = self.raw_positions(rooms).await?;
            }
        }
        rows.into_iter()
            .map(|(epoch, seq, last)| {
                let epoch = epoch.ok_or_else(|| unavailable("the room is being rebuilt"))?;
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

    /// `XREVRANGE` from `at`, one entry.
    async fn at_or_before(
        &self,
        room: &RoomName,
        at: MsgId,
    ) -> Result<Option<StoredEntry>, BusError> {
        Ok(self
            .entries(room, "XREVRANGE", at.to_string(), "-", 1)
            .await?
            .pop())
    }

    /// `XRANGE` from just after `after`.
    async fn range_after(
        &self,
        room: &RoomName,
        after: MsgId,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, BusError> {
        self.entries(room, "XRANGE", format!("({after}"), "+", limit)
            .await
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
    /// `--database-url` and its settings: the archive behind Redis.
    pub archive: Option<ArchiveOptions>,
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
    /// History reads about to be sent, by what they read: identical reads made meanwhile (thousands of members
    /// rejoining one room with the same `since` after a replica died) share one.
    reads: Arc<Mutex<HashMap<String, (u64, SharedRead)>>>,
    /// Roster changes about to run, per room: those made together run as one script.
    rosters: Arc<Mutex<RosterQueue>>,
    /// Revoked sessions, kept current by the subscriber.
    revocations: Revocations,
}

/// The most roster changes one script run carries.
const ROSTER_BATCH: usize = 256;

/// Roster changes waiting to run, per room: the connection, the change, and where its answer goes.
type RosterQueue = HashMap<
    RoomName,
    Vec<(
        u64,
        RosterOp,
        oneshot::Sender<Result<RosterChange, BusError>>,
    )>,
>;

/// `roster.lua`'s reply for one change: taken, arrived, departed, banned until, muted until.
type ChangeReply = (i64, i64, Vec<String>, u64, u64);

/// Runs one batch of roster changes of `room` as one `roster.lua` call; the answers are in the batch's order.
async fn roster_batch(
    store: &Store,
    room: &RoomName,
    instance: &str,
    ops: Vec<(u64, RosterOp)>,
    timing: RosterTiming,
) -> Result<Vec<RosterChange>, BusError> {
    let [a, b, c, d, e, f] = store.keys.roster(room);
    let ks = [a, b, c, d, e, f, store.keys.moderation(room)];
    let mut lists = Vec::with_capacity(ops.len());
    let mut args: Vec<String> = vec![
        instance.to_owned(),
        timing.grace_ms.to_string(),
        timing.alive_ms.to_string(),
        shared::MEMBERS_SHOWN.to_string(),
    ];
    for (conn, op) in ops {
        let (name, nick, person, from) = match op {
            RosterOp::Join { nick, person } => ("join", Some(nick), person, None),
            RosterOp::Rename { from, to, person } => ("rename", Some(to), person, Some(from)),
            RosterOp::Leave { nick } => ("leave", Some(nick), None, None),
            RosterOp::Refresh => ("refresh", None, None, None),
            RosterOp::List => ("list", None, None, None),
        };
        lists.push(!matches!(name, "leave" | "refresh"));
        args.extend([
            name.to_owned(),
            conn.to_string(),
            nick.as_ref().map_or("", Nick::as_str).to_owned(),
            person.unwrap_or_default(),
            from.as_ref().map_or("", Nick::as_str).to_owned(),
        ]);
    }
    let script = store.roster.clone();
    let (online, members, slow, changes): (u32, Vec<String>, u64, Vec<ChangeReply>) = store
        .run(|mut conn| async move {
            let mut invocation = script.key(&ks[..]);
            invocation.arg(args);
            invocation.invoke_async(&mut conn).await
        })
        .await?;
    let nicks = |names: Vec<String>| -> Result<Vec<Nick>, BusError> {
        names
            .into_iter()
            .map(|n| Nick::parse(&n).map_err(protocol))
            .collect()
    };
    let members = nicks(members)?;
    if changes.len() != lists.len() {
        return Err(protocol(format!(
            "roster.lua answered {} changes for {}",
            changes.len(),
            lists.len()
        )));
    }
    changes
        .into_iter()
        .zip(lists)
        .map(|((taken, arrived, departed, banned, muted), lists)| {
            Ok(RosterChange {
                taken: taken == 1,
                arrived: arrived == 1,
                departed: nicks(departed)?,
                members: if lists && banned == 0 {
                    members.clone()
                } else {
                    Vec::new()
                },
                online,
                banned_until: (banned > 0).then_some(banned),
                muted_until: (muted > 0).then_some(muted),
                slow_mode: slow,
            })
        })
        .collect()
}

/// `history.lua`'s reply, as documented there.
type RawHistory = (String, i64, Vec<Entry>, Vec<Entry>, Vec<String>);

/// One history read that several requests wait for.
type SharedRead = futures_util::future::Shared<BoxFuture<'static, Result<RawHistory, BusError>>>;

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
        let topology = Arc::new(
            Topology::new(options.target, options.subscribe, REQUEST_TIMEOUT)
                .map_err(unavailable)?,
        );
        let (archiving, hints) = match options.archive {
            Some(archive) => {
                let (archiving, hints) = archiving::Archiving::new(archive);
                (Some(Arc::new(archiving)), Some(hints))
            }
            None => (None, None),
        };
        let store = Store {
            link: Arc::new(Link::new(topology.clone())),
            keys: Keys::new(&options.prefix),
            publish: Arc::new(redis::Script::new(PUBLISH_SCRIPT)),
            position: Arc::new(redis::Script::new(POSITION_SCRIPT)),
            history: Arc::new(redis::Script::new(HISTORY_SCRIPT)),
            roster: Arc::new(redis::Script::new(ROSTER_SCRIPT)),
            restore: Arc::new(redis::Script::new(RESTORE_SCRIPT)),
            archived: Arc::new(redis::Script::new(ARCHIVED_SCRIPT)),
            expire: Arc::new(redis::Script::new(EXPIRE_SCRIPT)),
            mark_read: Arc::new(redis::Script::new(READ_SCRIPT)),
            read_positions: Arc::new(redis::Script::new(READS_SCRIPT)),
            revoke: Arc::new(redis::Script::new(REVOKE_SCRIPT)),
            history_limit: options.history_limit,
            dedupe_secs: options.dedupe_window.as_secs().max(1),
            archiving,
        };
        if let (Some(archiving), Some(hints)) = (&store.archiving, hints)
            && archiving.options.archiver
        {
            let archiver = archiving::Archiver::new(store.clone(), archiving.clone(), hints);
            tokio::spawn(archiver.run(shutdown.clone()).in_current_span());
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let up = Arc::new(AtomicBool::new(false));
        let instance: Arc<str> = format!("{}#{}", options.node, new_epoch()).into();
        let revocations = Revocations::default();
        let subscriber = Subscriber::new(
            topology,
            options.node,
            store.clone(),
            events,
            rx,
            up.clone(),
            revocations.clone(),
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
            reads: Arc::default(),
            rosters: Arc::default(),
            revocations,
        })
    }
}

impl RedisBus {
    /// [`RedisBus::read_once`], after rebuilding the room from the archive if Redis does not have it.
    fn read(
        &self,
        room: &RoomName,
        query: HistoryQuery,
        before: Option<MsgId>,
    ) -> BoxFuture<'static, Result<(History, Option<MsgId>), BusError>> {
        let first = self.read_once(room, query.clone(), before);
        let Some(archiving) = self.store.archiving.clone() else {
            return first;
        };
        let (store, room, reads) = (self.store.clone(), room.clone(), self.reads.clone());
        async move {
            let read = first.await?;
            if !read.0.epoch.is_empty() {
                return Ok(read);
            }
            store.restore(&archiving, &room).await?;
            let again = read_once(&store, &reads, &room, query, before).await?;
            if again.0.epoch.is_empty() {
                return Err(unavailable("the room is being rebuilt"));
            }
            Ok(again)
        }
        .boxed()
    }

    /// Runs `history.lua`: entries after `since`, the newest messages, or (with `before`) messages before it, each
    /// with the current state of its message; and the id of the oldest entry in the stream (with `since` or
    /// `before`). An empty epoch: with an archive, Redis does not have the room.
    fn read_once(
        &self,
        room: &RoomName,
        query: HistoryQuery,
        before: Option<MsgId>,
    ) -> BoxFuture<'static, Result<(History, Option<MsgId>), BusError>> {
        read_once(&self.store, &self.reads, room, query, before)
    }
}

/// [`RedisBus::read_once`]: identical reads made while the runtime goes round once share one script run.
fn read_once(
    store: &Store,
    reads: &Arc<Mutex<HashMap<String, (u64, SharedRead)>>>,
    room: &RoomName,
    query: HistoryQuery,
    before: Option<MsgId>,
) -> BoxFuture<'static, Result<(History, Option<MsgId>), BusError>> {
    let (epoch_arg, since_arg) = (
        query.epoch.clone().unwrap_or_default(),
        query.since.map(|s| s.to_string()).unwrap_or_default(),
    );
    let before_arg = before.map(|b| b.to_string()).unwrap_or_default();
    let (recent, limit) = (query.recent, query.limit.max(1));
    let what = format!("{room} {epoch_arg} {since_arg} {before_arg} {recent} {limit}");
    let archived = if store.archiving.is_some() { "1" } else { "" };
    let read = {
        let mut reads_ = reads.lock().unwrap_or_else(PoisonError::into_inner);
        match reads_.get(&what) {
            Some((_, read)) => read.clone(),
            None => {
                static GENERATION: AtomicU64 = AtomicU64::new(0);
                let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
                let keys = &store.keys;
                let ks = [keys.stream(room), keys.meta(room), keys.state(room)];
                let (store, pending, what_) = (store.clone(), reads.clone(), what.clone());
                let read = async move {
                    // Requests that arrive while the runtime goes round once join this read. Every one of them
                    // asked before it is sent, so none reads older state than it would alone (a join subscribes
                    // first, then asks).
                    tokio::task::yield_now().await;
                    {
                        let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
                        if pending.get(&what_).is_some_and(|(g, _)| *g == generation) {
                            pending.remove(&what_);
                        }
                    }
                    let script = store.history.clone();
                    store
                        .run(|mut conn| async move {
                            let mut invocation = script.key(&ks[..]);
                            invocation
                                .arg(new_epoch())
                                .arg(epoch_arg)
                                .arg(since_arg)
                                .arg(recent)
                                .arg(limit)
                                .arg(codec::ACTION_FIELD)
                                .arg(before_arg)
                                .arg(codec::BODY_FIELD)
                                .arg(archived);
                            invocation.invoke_async(&mut conn).await
                        })
                        .await
                }
                .boxed()
                .shared();
                reads_.insert(what, (generation, read.clone()));
                read
            }
        }
    };
    let room = room.clone();
    async move {
        let (epoch, reset, entries, oldest, states) = read.await?;
        let reset = reset == 1;
        let oldest = oldest
            .into_iter()
            .next()
            .map(|e| codec::decode_entry(&room, e))
            .transpose()?;
        let truncated = match (query.since, &oldest, reset) {
            (Some(since), Some(oldest), false) => oldest.offset > 1 && oldest.record.id > since,
            _ => false,
        };
        let oldest = oldest.map(|e| e.record.id);
        let mut items = entries
            .into_iter()
            .zip(states)
            .map(|(e, state)| {
                let record = codec::decode_entry(&room, e)?.record;
                let state: Option<MsgState> = if state.is_empty() {
                    None
                } else {
                    Some(serde_json::from_str(&state).map_err(protocol)?)
                };
                Ok(HistoryItem { record, state })
            })
            .collect::<Result<Vec<_>, BusError>>()?;
        if query.since.is_none() || reset {
            items.reverse();
        }
        Ok((
            History {
                epoch: epoch.into(),
                items,
                reset,
                truncated,
            },
            oldest,
        ))
    }
    .boxed()
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

/// The publish script's answer: id, status (`stored`, `duplicate`, or the error code that refused it), offset, epoch,
/// the body stored, until (for `banned`, `muted` and `slow_mode`).
type PublishReply = (String, String, u64, String, String, u64);

/// What a publish did in Redis: stored (id, status, offset, until) and relayed, or stored without the replicas `WAIT`
/// asked for (and so not relayed).
enum Written {
    Stored(String, String, u64, u64),
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
            keys.state(room),
            keys.moderation(room),
            keys.slow(room),
            keys.roster(room)[5].clone(),
        ];
        let json = codec::body_json(&draft.body);
        let fingerprint = draft.fingerprint();
        let reply_to = draft.reply_to.map(|id| id.to_string()).unwrap_or_default();
        let moderator = if draft.moderator { "1" } else { "" };
        let kind = draft.body.kind();
        let sender = draft.nick.to_string();
        let (channel, limit, dedupe) = (keys.channel(room), self.history_limit, self.dedupe_secs);
        let (wait, wait_ms) = (self.wait_replicas, self.wait_timeout_ms);
        let store = self.store.clone();
        let room = room.clone();
        let (archived, backlog) = match &store.archiving {
            Some(a) => ("1", a.options.backlog_bytes),
            None => ("", 0),
        };
        let cid = draft.cid.clone();
        async move {
            if let Some(archiving) = &store.archiving {
                store.register(archiving, &room).await?;
            }
            let mut rebuilt = false;
            let written = loop {
              let (ks, channel, json, fingerprint, reply_to, sender, cid) =
                  (ks.clone(), &channel, &json, &fingerprint, &reply_to, &sender, &cid);
              let script = store.publish.clone();
              let written = store
                .run(|mut conn| async move {
                    let mut invocation = script.key(&ks[..]);
                    invocation
                        .arg(channel)
                        .arg(limit)
                        .arg(json)
                        .arg(new_epoch())
                        .arg(dedupe)
                        // With WAIT the script only stores: the message is relayed once replicas confirmed it, so
                        // no member ever sees a message that a failover can still take back.
                        .arg(if wait == 0 { conn.publish_command() } else { "" })
                        .arg(codec::STORED_PAYLOAD)
                        .arg(codec::OFFSET_FIELD)
                        .arg(codec::BODY_FIELD)
                        .arg(fingerprint)
                        .arg(moderator)
                        .arg(reply_to)
                        .arg(shared::validate::QUOTE_MAX_CHARS)
                        .arg(codec::ACTION_FIELD)
                        .arg(kind)
                        .arg(sender)
                        .arg(archived)
                        .arg(backlog)
                        .arg(cid)
                        .arg(codec::CID_FIELD)
                        .arg(codec::DIGEST_FIELD);
                    if wait == 0 {
                        let (id, status, offset, _, _, until): PublishReply =
                            invocation.invoke_async(&mut conn).await?;
                        return Ok(Written::Stored(id, status, offset, until));
                    }
                    // For a repeated cid, WAIT counts the replicas that have the original.
                    let ((id, status, offset, _, payload, until), acked): (PublishReply, i64) = conn
                        .invoke_and_wait(&invocation, &ks[0], wait, wait_ms)
                        .await?;
                    if acked < i64::from(wait) {
                        return Ok(Written::NotReplicated(acked));
                    }
                    if status == "stored" {
                        // Confirmed: relay it now. Publishes of concurrent senders may arrive out of offset order;
                        // the subscriber's gap rule backfills from the stream, which holds both.
                        conn.publish(channel, &payload).await?;
                    }
                    Ok(Written::Stored(id, status, offset, until))
                })
                .await?;
              match (&written, &store.archiving) {
                  // Redis does not have the room: rebuild it from the archive, once, and store again.
                  (Written::Stored(_, status, ..), Some(archiving)) if status == "missing" && !rebuilt => {
                      store.restore(archiving, &room).await?;
                      rebuilt = true;
                  }
                  _ => break written,
              }
            };
            let (id, status, offset, until) = match written {
                Written::Stored(id, status, offset, until) => (id, status, offset, until),
                Written::NotReplicated(acked) => {
                    metrics::counter!("roomcast_publish_not_replicated_total").increment(1);
                return Err(BusError::Unavailable(format!(
                    "stored, but only {acked} of {wait} Redis replicas confirmed it within {wait_ms} ms"
                    )));
                }
            };
            match status.as_str() {
                "stored" | "duplicate" => {
                    if let (Some(archiving), "stored") = (&store.archiving, status.as_str()) {
                        let _ = archiving.hints.send(room);
                    }
                    Ok(Published {
                        id: id.parse().map_err(protocol)?,
                        offset,
                        duplicate: status == "duplicate",
                    })
                }
                "missing" => Err(unavailable("the room is being rebuilt")),
                code => {
                    // The script names the error code that refuses the event, as the protocol spells it.
                    let code: ErrorCode = serde_json::from_value(code.into())
                        .map_err(|_| protocol(format!("publish status {code:?}")))?;
                    Err(BusError::Refused {
                        code,
                        until: (until > 0).then_some(until),
                    })
                }
            }
        }
        .boxed()
    }

    fn announce(
        &self,
        room: &RoomName,
        notice: &Notice,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        let payload = codec::notice_payload(notice);
        let channel = self.store.keys.channel(room);
        let store = self.store.clone();
        async move {
            store
                .run(|mut conn| async move { conn.publish(&channel, &payload).await })
                .await
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
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut pending = self.rosters.lock().unwrap_or_else(PoisonError::into_inner);
            let batch = pending.entry(room.clone()).or_default();
            batch.push((conn, op, tx));
            batch.len() == 1
        };
        if first {
            // Changes to this room made while the runtime goes round once (a storm of joins) run as one script.
            let (store, pending, room) = (self.store.clone(), self.rosters.clone(), room.clone());
            let instance = self.instance.clone();
            tokio::spawn(async move {
                tokio::task::yield_now().await;
                let mut batch = pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&room)
                    .unwrap_or_default();
                while !batch.is_empty() {
                    let rest = batch.split_off(batch.len().min(ROSTER_BATCH));
                    let chunk = std::mem::replace(&mut batch, rest);
                    let (ops, answers): (Vec<_>, Vec<_>) =
                        chunk.into_iter().map(|(c, op, tx)| ((c, op), tx)).unzip();
                    let result = roster_batch(&store, &room, &instance, ops, timing).await;
                    for (i, answer) in answers.into_iter().enumerate() {
                        let _ = answer.send(match &result {
                            Ok(changes) => Ok(changes[i].clone()),
                            Err(e) => Err(e.clone()),
                        });
                    }
                }
            });
        }
        async move {
            rx.await
                .unwrap_or_else(|_| Err(BusError::Unavailable("roster batch dropped".into())))
        }
        .boxed()
    }

    fn older(
        &self,
        room: &RoomName,
        before: MsgId,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, BusError>> {
        let query = HistoryQuery {
            limit,
            ..HistoryQuery::default()
        };
        let read = self.read(room, query, Some(before));
        let archiving = self.store.archiving.clone();
        let room = room.clone();
        async move {
            let (history, oldest) = read.await?;
            let mut items = history.items;
            let Some(archiving) = archiving.filter(|_| items.len() < limit) else {
                return Ok(items);
            };
            // Older than Redis's window: from the archive, which holds everything before it.
            let bound = items
                .first()
                .map(|i| i.record.id)
                .into_iter()
                .chain(oldest)
                .chain([before])
                .min()
                .unwrap_or(before);
            let mut older = archiving
                .options
                .archive
                .older(&room, bound, limit - items.len())
                .await
                .map_err(|e| {
                    archiving.status_failed(&e);
                    unavailable(format!("history older than Redis keeps: {e}"))
                })?;
            older.append(&mut items);
            Ok(older)
        }
        .boxed()
    }

    fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> BoxFuture<'static, Result<History, BusError>> {
        let (since, limit) = (query.since, query.limit.max(1));
        let read = self.read(room, query, None);
        let archiving = self.store.archiving.clone();
        let room = room.clone();
        async move {
            let (mut history, oldest) = read.await?;
            // Resuming from further back than Redis's window: the archive holds what it no longer has.
            let (Some(archiving), Some(since), true) = (archiving, since, history.truncated) else {
                return Ok(history);
            };
            match archiving
                .options
                .archive
                .after(&room, since, oldest, limit)
                .await
            {
                Ok((reaches, mut items)) => {
                    items.extend(history.items);
                    items.truncate(limit);
                    history.items = items;
                    history.truncated = !reaches;
                }
                Err(e) => {
                    // Told `truncated` as without an archive: scrolling back fetches the rest later.
                    archiving.status_failed(&e);
                    debug!(%room, cause = %e, "resume from the archive failed");
                }
            }
            Ok(history)
        }
        .boxed()
    }

    fn page(
        &self,
        room: &RoomName,
        after: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, BusError>> {
        let (store, room) = (self.store.clone(), room.clone());
        let archiving = self.store.archiving.clone();
        let read = self.read(
            &room,
            HistoryQuery {
                since: Some(after.unwrap_or_default()),
                limit,
                ..HistoryQuery::default()
            },
            None,
        );
        async move {
            if let Some(archiving) = archiving {
                // What Redis no longer has comes from the archive.
                let oldest = store.oldest(&room).await?;
                if oldest.is_none_or(|oldest| after.is_none_or(|a| a < oldest)) {
                    let items = archiving
                        .options
                        .archive
                        .page(&room, after, oldest, limit)
                        .await
                        .map_err(|e| {
                            archiving.status_failed(&e);
                            unavailable(format!("the archive: {e}"))
                        })?;
                    if let Some(last) = items.last() {
                        let next = Some(last.record.id);
                        return Ok(Page { items, next });
                    }
                }
            }
            let (history, _) = read.await?;
            let next = (history.items.len() >= limit)
                .then(|| history.items.last().map(|i| i.record.id))
                .flatten();
            let items = history
                .items
                .into_iter()
                .filter(|i| {
                    matches!(
                        i.record.body,
                        Body::Message { .. } | Body::Moderation { .. }
                    )
                })
                .collect();
            Ok(Page { items, next })
        }
        .boxed()
    }

    fn mark_read(
        &self,
        room: &RoomName,
        person: &str,
        nick: &Nick,
        id: MsgId,
    ) -> BoxFuture<'static, Result<ReadMove, BusError>> {
        let (store, room, person, nick) = (
            self.store.clone(),
            room.clone(),
            person.to_owned(),
            nick.clone(),
        );
        async move { store.mark_read(&room, &person, &nick, id).await }.boxed()
    }

    fn reads(&self, room: &RoomName, person: &str) -> BoxFuture<'static, Result<Reads, BusError>> {
        let (store, room, person) = (self.store.clone(), room.clone(), person.to_owned());
        async move { store.read_positions(&room, &person).await }.boxed()
    }

    fn search(
        &self,
        rooms: Option<Vec<RoomName>>,
        words: Vec<shared::text::Word>,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, BusError>> {
        let archiving = self.store.archiving.clone();
        async move {
            let Some(archiving) = archiving else {
                return Err(BusError::Refused {
                    code: ErrorCode::NoArchive,
                    until: None,
                });
            };
            archiving
                .options
                .archive
                .search(rooms, words, before, limit)
                .await
                .map_err(|e| {
                    archiving.status_failed(&e);
                    unavailable(format!("search: {e}"))
                })
        }
        .boxed()
    }

    fn archive_status(&self) -> Option<Arc<ArchiveStatus>> {
        self.store.archiving.as_ref().map(|a| a.status.clone())
    }

    fn revoke(
        &self,
        person: &str,
        issued_before: u64,
    ) -> BoxFuture<'static, Result<u64, BusError>> {
        let (store, revocations, person) = (
            self.store.clone(),
            self.revocations.clone(),
            person.to_owned(),
        );
        async move {
            // Redis first: that is what the replicas read, so the revocation takes effect at once. The archive, the
            // record a Redis that lost its keys is refilled from, follows; if it cannot be written now, the
            // subscribers' next load of the list (the counter moved) writes it there.
            let now = store.revoke(&person, issued_before, true).await?;
            // This replica's connections need not wait for the relay.
            revocations.learn(&person, now);
            if let Some(archiving) = &store.archiving
                && let Err(e) = archiving.options.archive.revoke(&person, now).await
            {
                archiving.status_failed(&e);
                warn!(error = %e, "revocation not archived yet; it will be on the next load");
            }
            Ok(now)
        }
        .boxed()
    }

    fn revocations(&self) -> &Revocations {
        &self.revocations
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
