//! The Redis side of the archive (`--database-url`): rooms registered before their first write, rebuilt from the archive
//! when Redis lost them, and the archiver — the task on every replica that copies each room's new stream entries into
//! the archive, in order and once, then trims the stream behind it.
//!
//! Who holds what: the archive (PostgreSQL) is the truth for every event up to its cursor; Redis is the truth for the
//! events after it, which it keeps (never trimmed, bounded by `--archive-backlog-bytes` per room) until they are
//! archived. Work is shared without coordination: any replica may archive any room, the archive's row lock on the
//! room (`FOR UPDATE SKIP LOCKED`) lets one do it at a time, and inserts are idempotent by (room, id). Each replica
//! archives the rooms it writes to at once (a busy room in batches: a quarter second between them), and sweeps every room now and then, so what a killed replica (or the
//! CLI) stored is archived by the others.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::json;
use shared::{MsgId, Nick, RoomName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{self, Entry};
use super::{REQUEST_TIMEOUT, Store, new_epoch, protocol};
use crate::bus::BusError;
use crate::bus::archive::{Appended, Archive, ArchiveError, Cursor, ReadPosition, Seed};

/// Entries archived per transaction.
const BATCH: usize = 500;
/// Rooms archived at once by one replica.
const WORKERS: usize = 4;
/// How long a room another replica is archiving waits before this one looks again.
const BUSY_RETRY: Duration = Duration::from_millis(200);
/// How long the archiver waits after the archive failed before it tries again.
const DOWN_RETRY: Duration = Duration::from_secs(1);
/// How long a room the archiver just caught up with rests before its next batch: writes meanwhile gather into one
/// batch, so a busy room costs the archive one transaction per this period rather than one per few writes (a
/// transaction is several statements and a commit whatever its size). Events wait in Redis meanwhile, as always.
const GATHER: Duration = Duration::from_millis(250);
/// Rooms read per sweep request.
const SWEEP_CHUNK: usize = 500;
/// How often the read positions moved meanwhile are written to the archive.
pub(crate) const READS_EVERY: Duration = Duration::from_secs(1);

/// How the archive is used, from the configuration.
#[derive(Clone)]
pub struct ArchiveOptions {
    /// The archive itself.
    pub archive: Arc<dyn Archive>,
    /// The most bytes of not-yet-archived events a room keeps in Redis before it refuses new ones.
    pub backlog_bytes: u64,
    /// How often every room is checked for events not archived yet.
    pub sweep: Duration,
    /// The server's retention in days; `None`: keep forever.
    pub retention_days: Option<f64>,
    /// How often the retention job runs (on one replica).
    pub retention_every: Duration,
    /// Whether this process archives (a replica) or only reads and writes through the archive (a CLI command).
    pub archiver: bool,
}

impl std::fmt::Debug for ArchiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveOptions")
            .field("backlog_bytes", &self.backlog_bytes)
            .field("sweep", &self.sweep)
            .field("retention_days", &self.retention_days)
            .finish_non_exhaustive()
    }
}

/// How far behind the archive is, as the last sweep saw it: for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct ArchiveStatus {
    /// The archive answered the last request.
    pub up: AtomicBool,
    /// Events stored in Redis and not archived yet, over every room.
    pub lag_events: AtomicU64,
    /// How old the oldest of them is, in milliseconds.
    pub lag_ms: AtomicU64,
    /// Why the last request failed, when it did.
    pub last_error: Mutex<Option<String>>,
}

impl ArchiveStatus {
    fn failed(&self, e: &ArchiveError) {
        self.up.store(false, Ordering::Relaxed);
        metrics::gauge!("roomcast_archive_up").set(0.0);
        metrics::counter!("roomcast_archive_errors_total").increment(1);
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(e.0.clone());
    }

    fn answered(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            metrics::gauge!("roomcast_archive_up").set(1.0);
            *self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = None;
        }
    }
}

/// The archive as the Redis bus uses it.
pub(crate) struct Archiving {
    pub(crate) options: ArchiveOptions,
    /// Rooms this process registered already.
    registered: Mutex<HashSet<RoomName>>,
    /// Rooms to archive soon: those this replica wrote to.
    pub(crate) hints: mpsc::UnboundedSender<RoomName>,
    pub(crate) status: Arc<ArchiveStatus>,
    /// Rebuilds under way, per room: the thousands of members rejoining an emptied Redis's room wait for one.
    rebuilding: Mutex<std::collections::HashMap<RoomName, Arc<tokio::sync::Mutex<()>>>>,
    /// Read positions moved since the archiver last wrote them, per (room, person): the newest only, so a person
    /// reading message after message costs PostgreSQL one row a second.
    reads: Mutex<HashMap<(RoomName, String), (Nick, MsgId)>>,
}

impl Archiving {
    /// Counts a failed archive request.
    pub(crate) fn status_failed(&self, e: &ArchiveError) {
        self.status.failed(e);
    }

    pub(crate) fn new(options: ArchiveOptions) -> (Self, mpsc::UnboundedReceiver<RoomName>) {
        let (hints, rx) = mpsc::unbounded_channel();
        let archiving = Self {
            options,
            registered: Mutex::default(),
            hints,
            status: Arc::default(),
            rebuilding: Mutex::default(),
            reads: Mutex::default(),
        };
        (archiving, rx)
    }

    /// A read position moved in Redis: the archiver writes it to the archive within [`READS_EVERY`].
    pub(crate) fn read_moved(&self, room: &RoomName, person: &str, nick: &Nick, id: MsgId) {
        let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = reads
            .entry((room.clone(), person.to_owned()))
            .or_insert_with(|| (nick.clone(), id));
        if id >= entry.1 {
            *entry = (nick.clone(), id);
        }
    }

    /// Writes the read positions moved since the last call to the archive; on failure they wait for the next.
    async fn save_reads(&self) {
        let moved = std::mem::take(&mut *self.reads.lock().unwrap_or_else(PoisonError::into_inner));
        if moved.is_empty() {
            return;
        }
        let count = moved.len();
        let positions = moved
            .iter()
            .map(|((room, person), (nick, id))| ReadPosition {
                room: room.clone(),
                person: person.clone(),
                nick: nick.to_string(),
                id: *id,
            })
            .collect();
        match self.options.archive.save_reads(positions).await {
            Ok(()) => {
                metrics::counter!("roomcast_archive_read_positions_total").increment(count as u64);
            }
            Err(e) => {
                self.status.failed(&e);
                debug!(cause = %e, "read positions not archived yet");
                let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
                for (key, (nick, id)) in moved {
                    let entry = reads.entry(key).or_insert_with(|| (nick.clone(), id));
                    if id > entry.1 {
                        *entry = (nick, id);
                    }
                }
            }
        }
    }
}

/// A room's position in Redis as the archiver reads it.
#[derive(Debug, Clone)]
struct Meta {
    epoch: String,
    seq: u64,
    archived_offset: u64,
}

impl Store {
    /// Adds the room to the registry the sweep reads, once per process, before its first write: whatever a replica
    /// stores, another finds.
    pub(super) async fn register(
        &self,
        archiving: &Archiving,
        room: &RoomName,
    ) -> Result<(), BusError> {
        let known = archiving
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(room);
        if known {
            return Ok(());
        }
        let (key, name) = (self.keys.rooms(), room.to_string());
        self.run(|mut conn| async move {
            redis::cmd("SADD")
                .arg(key)
                .arg(name)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await?;
        archiving
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(room.clone());
        Ok(())
    }

    /// Rebuilds a room Redis does not have from the archive (its epoch, its newest events with their states, the
    /// moderation in force, recent idempotency keys); a room the archive never saw is created. When the archive
    /// cannot answer, the room is created afresh all the same, with a new epoch (clients are told `reset`, and the
    /// archive starts a new run of offsets when it catches up): availability over a rebuild.
    pub(super) async fn restore(
        &self,
        archiving: &Archiving,
        room: &RoomName,
    ) -> Result<(), BusError> {
        let turn = archiving
            .rebuilding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(room.clone())
            .or_default()
            .clone();
        let result = {
            let _turn = turn.lock().await;
            // Another request rebuilt it while this one waited: nothing to read from the archive.
            let meta = self.keys.meta(room);
            let exists: bool = self
                .run(|mut conn| async move {
                    redis::cmd("EXISTS").arg(meta).query_async(&mut conn).await
                })
                .await?;
            if exists {
                Ok(())
            } else {
                self.rebuild(archiving, room).await
            }
        };
        let mut rebuilding = archiving
            .rebuilding
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if rebuilding
            .get(room)
            .is_some_and(|t| Arc::ptr_eq(t, &turn) && Arc::strong_count(t) <= 2)
        {
            rebuilding.remove(room);
        }
        result
    }

    /// [`Store::restore`]'s work, one request at a time per room.
    async fn rebuild(&self, archiving: &Archiving, room: &RoomName) -> Result<(), BusError> {
        let now = crate::bus::now_ms();
        let dedupe_ms = self.dedupe_secs * 1000;
        let seed = archiving
            .options
            .archive
            .seed(room, self.history_limit, now, now.saturating_sub(dedupe_ms))
            .await;
        let seed = match seed {
            Ok(seed) => {
                archiving.status.answered();
                seed
            }
            Err(e) => {
                archiving.status.failed(&e);
                warn!(%room, cause = %e, "the room is not in Redis and the archive cannot say whether it holds it: the room starts a new epoch");
                metrics::counter!("roomcast_archive_rebuilds_skipped_total").increment(1);
                None
            }
        };
        let rebuilt = seed.is_some();
        let seed = seed.unwrap_or_else(|| Seed {
            cursor: Cursor {
                epoch: new_epoch(),
                ..Cursor::default()
            },
            ..Seed::default()
        });
        let mut keys = vec![
            self.keys.stream(room),
            self.keys.meta(room),
            self.keys.state(room),
            self.keys.moderation(room),
            self.keys.reads(room),
            self.keys.seen(room),
        ];
        let mut cids = Vec::new();
        for (nick, cid, id, digest) in &seed.cids {
            let Ok(nick) = shared::Nick::parse(nick) else {
                continue;
            };
            let ttl = (id.ms + dedupe_ms).saturating_sub(now) / 1000;
            if ttl > 0 {
                keys.push(self.keys.cid(room, &nick, cid));
                cids.push(json!([format!("{id} {digest}"), ttl]));
            }
        }
        let entries: Vec<_> = seed
            .entries
            .iter()
            .map(|(e, _)| {
                json!([
                    e.record.id.to_string(),
                    e.offset,
                    codec::body_json(&e.record.body),
                    e.record.body.kind(),
                    e.cid,
                    e.digest
                ])
            })
            .collect();
        let states: Vec<_> = seed
            .entries
            .iter()
            .filter_map(|(e, state)| {
                let state = state.as_ref()?;
                Some(json!([
                    e.record.id.to_string(),
                    serde_json::to_string(state).ok()?
                ]))
            })
            .collect();
        let blob = json!({
            "entries": entries,
            "states": states,
            "moderation": seed.moderation,
            "slow": seed.slow_secs,
            "cids": cids,
            "receipts": seed.receipts,
            "reads": seed
                .reads
                .iter()
                .map(|r| json!([r.person, format!("{} {}", r.id, r.nick), r.id.ms]))
                .collect::<Vec<_>>(),
        })
        .to_string();
        let cursor = seed.cursor;
        let last = if cursor.offset > 0 {
            cursor.id.to_string()
        } else {
            String::new()
        };
        let script = self.restore.clone();
        let made: i64 = self
            .run(|mut conn| async move {
                let mut invocation = script.key(&keys[..]);
                invocation
                    .arg(&cursor.epoch)
                    .arg(cursor.offset)
                    .arg(last)
                    .arg(codec::OFFSET_FIELD)
                    .arg(codec::BODY_FIELD)
                    .arg(codec::ACTION_FIELD)
                    .arg(codec::CID_FIELD)
                    .arg(codec::DIGEST_FIELD)
                    .arg(blob);
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if made == 1 && rebuilt {
            info!(%room, events = seed.entries.len(), offset = cursor.offset, "room rebuilt from the archive");
            metrics::counter!("roomcast_archive_rebuilt_rooms_total").increment(1);
        }
        Ok(())
    }

    /// The positions of `rooms` as the archiver reads them (`None`: Redis does not have the room).
    async fn metas(&self, rooms: &[RoomName]) -> Result<Vec<Option<Meta>>, BusError> {
        let keys: Vec<String> = rooms.iter().map(|r| self.keys.meta(r)).collect();
        type Row = (Option<String>, Option<u64>, Option<u64>);
        let rows: Vec<Row> = self
            .run(|conn| async move {
                let calls = keys.iter().map(|key| {
                    let mut conn = conn.clone();
                    async move {
                        redis::cmd("HMGET")
                            .arg(key)
                            .arg("epoch")
                            .arg("seq")
                            .arg("archived_offset")
                            .query_async::<Row>(&mut conn)
                            .await
                    }
                });
                futures_util::future::try_join_all(calls).await
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(epoch, seq, archived)| {
                Some(Meta {
                    epoch: epoch?,
                    seq: seq.unwrap_or(0),
                    archived_offset: archived.unwrap_or(0),
                })
            })
            .collect())
    }

    /// Records in Redis that the archive holds the room up to `cursor`, and trims the stream behind it.
    async fn mark_archived(
        &self,
        room: &RoomName,
        cursor: &Cursor,
        from: Option<MsgId>,
        bytes: usize,
    ) -> Result<(), BusError> {
        let keys = [self.keys.stream(room), self.keys.meta(room)];
        let script = self.archived.clone();
        let (epoch, id, offset) = (cursor.epoch.clone(), cursor.id.to_string(), cursor.offset);
        let from = from.map(|id| id.to_string()).unwrap_or_default();
        let limit = self.history_limit;
        let trimmed: i64 = self
            .run(|mut conn| async move {
                let mut invocation = script.key(&keys[..]);
                invocation
                    .arg(epoch)
                    .arg(id)
                    .arg(offset)
                    .arg(limit)
                    .arg(codec::BODY_FIELD)
                    .arg(from)
                    .arg(bytes);
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if trimmed > 0 {
            debug!(%room, trimmed, "stream trimmed behind the archive");
        }
        Ok(())
    }

    /// Drops a room's entries before `before` (expired by the retention job) from Redis, never past the archive.
    async fn expire(&self, room: &RoomName, before: MsgId) -> Result<u64, BusError> {
        let keys = [
            self.keys.stream(room),
            self.keys.meta(room),
            self.keys.state(room),
        ];
        let script = self.expire.clone();
        self.run(|mut conn| async move {
            let mut invocation = script.key(&keys[..]);
            invocation.arg(before.to_string());
            invocation.invoke_async(&mut conn).await
        })
        .await
    }

    /// Up to `limit` raw entries of the room's stream after `after` (from its start without).
    async fn raw_after(
        &self,
        room: &RoomName,
        after: Option<MsgId>,
        limit: usize,
    ) -> Result<Vec<codec::StoredEntry>, BusError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let stream = self.keys.stream(room);
        let entries: Vec<Entry> = self
            .run(|mut conn| async move {
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg(start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(limit)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        entries
            .into_iter()
            .map(|e| codec::decode_entry(room, e))
            .collect()
    }

    /// The id of the oldest entry in the room's stream.
    pub(super) async fn oldest(&self, room: &RoomName) -> Result<Option<MsgId>, BusError> {
        let stream = self.keys.stream(room);
        let first: Vec<Entry> = self
            .run(|mut conn| async move {
                redis::cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        first
            .into_iter()
            .next()
            .map(|(id, _)| id.parse().map_err(protocol))
            .transpose()
    }

    /// One page of the registry of rooms: `SSCAN` from `cursor`; the next cursor is 0 at the end.
    async fn registry(&self, cursor: u64) -> Result<(u64, Vec<RoomName>), BusError> {
        let key = self.keys.rooms();
        let (next, names): (u64, Vec<String>) = self
            .run(|mut conn| async move {
                redis::cmd("SSCAN")
                    .arg(key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SWEEP_CHUNK)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        Ok((
            next,
            names
                .iter()
                .filter_map(|n| RoomName::parse(n).ok())
                .collect(),
        ))
    }
}

/// The archiver: one task per replica.
pub(crate) struct Archiver {
    store: Store,
    archiving: Arc<Archiving>,
    hints: mpsc::UnboundedReceiver<RoomName>,
    queue: VecDeque<RoomName>,
    queued: HashSet<RoomName>,
    /// Rooms resting after a batch ([`GATHER`]), each with whether it was written to meanwhile.
    resting: HashMap<RoomName, bool>,
}

/// What archiving a room came to.
enum Outcome {
    /// Nothing to do.
    Done,
    /// Caught up after copying a batch: let the next writes gather.
    Copied,
    /// More entries wait (a full batch was archived): look again at once.
    More,
    /// Another replica holds the room, or the archive failed: look again later.
    Later(Duration),
}

impl Archiver {
    pub(crate) fn new(
        store: Store,
        archiving: Arc<Archiving>,
        hints: mpsc::UnboundedReceiver<RoomName>,
    ) -> Self {
        Self {
            store,
            archiving,
            hints,
            queue: VecDeque::new(),
            queued: HashSet::new(),
            resting: HashMap::new(),
        }
    }

    /// The room has events to archive: queued now, or when its rest ends.
    fn hint(&mut self, room: RoomName) {
        match self.resting.get_mut(&room) {
            Some(written) => *written = true,
            None => self.enqueue(room),
        }
    }

    fn enqueue(&mut self, room: RoomName) {
        if self.queued.insert(room.clone()) {
            self.queue.push_back(room);
        }
    }

    /// Runs until `shutdown`.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut sweep = tokio::time::interval(self.archiving.options.sweep);
        let mut expire = tokio::time::interval(self.archiving.options.retention_every.min(
            // The job itself decides whether it is due (once per period over all replicas): look often enough.
            Duration::from_secs(60),
        ));
        let mut reads = tokio::time::interval(READS_EVERY);
        reads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let saving = Arc::new(AtomicBool::new(false));
        let (later_tx, mut later_rx) = mpsc::unbounded_channel::<RoomName>();
        let (rested_tx, mut rested_rx) = mpsc::unbounded_channel::<RoomName>();
        let mut working = FuturesUnordered::new();
        let mut busy: HashSet<RoomName> = HashSet::new();
        loop {
            while working.len() < WORKERS
                && let Some(room) = self.queue.iter().position(|r| !busy.contains(r))
            {
                let room = self.queue.remove(room).expect("just found");
                self.queued.remove(&room);
                busy.insert(room.clone());
                let (store, archiving) = (self.store.clone(), self.archiving.clone());
                working.push(async move {
                    let outcome = archive_room(&store, &archiving, &room).await;
                    (room, outcome)
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    // The last second's read positions, before the replica goes.
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.archiving.save_reads()).await;
                    return;
                }
                _ = reads.tick() => {
                    if !saving.swap(true, Ordering::Relaxed) {
                        let (archiving, saving) = (self.archiving.clone(), saving.clone());
                        tokio::spawn(async move {
                            archiving.save_reads().await;
                            saving.store(false, Ordering::Relaxed);
                        });
                    }
                }
                Some(room) = self.hints.recv() => self.hint(room),
                Some(room) = later_rx.recv() => self.enqueue(room),
                Some(room) = rested_rx.recv() => {
                    if self.resting.remove(&room) == Some(true) {
                        self.enqueue(room);
                    }
                }
                Some((room, outcome)) = working.next(), if !working.is_empty() => {
                    busy.remove(&room);
                    match outcome {
                        Outcome::Done => {}
                        Outcome::Copied => {
                            self.resting.insert(room.clone(), false);
                            let rested = rested_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(GATHER).await;
                                let _ = rested.send(room);
                            });
                        }
                        Outcome::More => self.enqueue(room),
                        Outcome::Later(wait) => {
                            let later = later_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(wait).await;
                                let _ = later.send(room);
                            });
                        }
                    }
                }
                _ = sweep.tick() => {
                    match sweep_rooms(&self.store, &self.archiving).await {
                        Ok(behind) => behind.into_iter().for_each(|room| self.hint(room)),
                        Err(e) => debug!(error = %e, "archive sweep failed"),
                    }
                }
                _ = expire.tick() => expire_rooms(&self.store, &self.archiving).await,
            }
        }
    }
}

/// Copies the room's entries after the archive's cursor into the archive (one batch), then records it in Redis and
/// trims the stream behind it.
async fn archive_room(store: &Store, archiving: &Archiving, room: &RoomName) -> Outcome {
    let archive = &archiving.options.archive;
    let cursor = match archive.cursor(room).await {
        Ok(cursor) => {
            archiving.status.answered();
            cursor
        }
        Err(e) => {
            archiving.status.failed(&e);
            warn!(%room, cause = %e, "cannot archive: the archive does not answer; events wait in Redis");
            return Outcome::Later(DOWN_RETRY);
        }
    };
    let meta = match store.metas(std::slice::from_ref(room)).await {
        Ok(mut metas) => metas.pop().flatten(),
        Err(e) => {
            debug!(%room, error = %e, "cannot read the room's position for archiving");
            return Outcome::Later(DOWN_RETRY);
        }
    };
    let Some(meta) = meta else {
        // Redis does not have the room (any more): nothing to copy until it is rebuilt.
        return Outcome::Done;
    };
    let from = match &cursor {
        Some(c) if c.epoch == meta.epoch => {
            if c.offset >= meta.seq {
                return Outcome::Done;
            }
            Some(c.id)
        }
        // A room new to the archive, or a new epoch (Redis lost the room and could not rebuild it): from its start.
        _ => None,
    };
    let entries = match store.raw_after(room, from, BATCH).await {
        Ok(entries) => entries,
        Err(e) => {
            debug!(%room, error = %e, "cannot read entries to archive");
            return Outcome::Later(DOWN_RETRY);
        }
    };
    if entries.is_empty() {
        return Outcome::Done;
    }
    let full = entries.len() >= BATCH;
    let bytes: usize = entries.iter().map(|e| e.body_len).sum();
    let entries = entries
        .into_iter()
        .map(codec::StoredEntry::into_log)
        .collect();
    match archive.append(room, &meta.epoch, entries).await {
        Ok(Appended::Done {
            cursor,
            events,
            gaps,
        }) => {
            archiving.status.answered();
            metrics::counter!("roomcast_archived_events_total").increment(events);
            if gaps > 0 {
                warn!(%room, gaps, "events missing from Redis when archiving them; the archive records the gap");
                metrics::counter!("roomcast_archive_gaps_total").increment(gaps);
            }
            if let Err(e) = store.mark_archived(room, &cursor, from, bytes).await {
                // The archive has them; the next pass records it.
                debug!(%room, error = %e, "archived, but Redis not told yet");
                return Outcome::Later(DOWN_RETRY);
            }
            if full { Outcome::More } else { Outcome::Copied }
        }
        Ok(Appended::Busy) => Outcome::Later(BUSY_RETRY),
        Err(e) => {
            archiving.status.failed(&e);
            warn!(%room, cause = %e, "cannot archive; events wait in Redis");
            Outcome::Later(DOWN_RETRY)
        }
    }
}

/// Reads every room's position: returns the rooms with events not archived yet, and updates the lag figures (and
/// whether the archive answers, even when nothing waits).
async fn sweep_rooms(store: &Store, archiving: &Archiving) -> Result<Vec<RoomName>, BusError> {
    match archiving.options.archive.ping().await {
        Ok(()) => archiving.status.answered(),
        Err(e) => archiving.status.failed(&e),
    }
    let mut behind = Vec::new();
    let (mut lag, mut oldest_ms) = (0u64, None::<u64>);
    let mut cursor = 0;
    loop {
        let (next, rooms) = store.registry(cursor).await?;
        let metas = store.metas(&rooms).await?;
        for (room, meta) in rooms.into_iter().zip(metas) {
            let Some(meta) = meta else { continue };
            if meta.seq > meta.archived_offset {
                lag += meta.seq - meta.archived_offset;
                // The oldest entry not archived: the first after the archived one.
                if let Ok(entries) = store
                    .raw_after(&room, archived_id(store, &room).await, 1)
                    .await
                    && let Some(first) = entries.first()
                {
                    oldest_ms =
                        Some(oldest_ms.map_or(first.record.id.ms, |o| o.min(first.record.id.ms)));
                }
                behind.push(room);
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let age = oldest_ms.map_or(0, |ms| crate::bus::now_ms().saturating_sub(ms));
    archiving.status.lag_events.store(lag, Ordering::Relaxed);
    archiving.status.lag_ms.store(age, Ordering::Relaxed);
    #[allow(clippy::cast_precision_loss)]
    {
        metrics::gauge!("roomcast_archive_lag_events").set(lag as f64);
        metrics::gauge!("roomcast_archive_lag_seconds").set(age as f64 / 1000.0);
    }
    Ok(behind)
}

/// The archived id Redis records for the room.
async fn archived_id(store: &Store, room: &RoomName) -> Option<MsgId> {
    let meta = store.keys.meta(room);
    let id: Option<String> = store
        .run(|mut conn| async move {
            redis::cmd("HGET")
                .arg(meta)
                .arg("archived")
                .query_async(&mut conn)
                .await
        })
        .await
        .ok()?;
    id?.parse().ok()
}

/// Runs the retention job when it is due and this replica gets it, then drops the expired entries from Redis too.
async fn expire_rooms(store: &Store, archiving: &Archiving) {
    let options = &archiving.options;
    let every = options.retention_every.as_secs().max(1);
    let expired = match tokio::time::timeout(
        REQUEST_TIMEOUT * 30,
        options
            .archive
            .expire(options.retention_days, every, crate::bus::now_ms()),
    )
    .await
    {
        Ok(Ok(expired)) => expired,
        Ok(Err(e)) => {
            archiving.status.failed(&e);
            warn!(cause = %e, "retention job failed; it runs again later");
            return;
        }
        Err(_) => {
            warn!("retention job did not finish in time; it runs again later");
            return;
        }
    };
    for room in expired {
        metrics::counter!("roomcast_retention_deleted_events_total").increment(room.events);
        match store.expire(&room.room, room.before).await {
            Ok(trimmed) if trimmed > 0 => {
                info!(room = %room.room, trimmed, "retention: expired entries dropped from Redis");
            }
            Ok(_) => {}
            Err(e) => {
                warn!(room = %room.room, error = %e, "retention: Redis not trimmed; next run")
            }
        }
    }
}
