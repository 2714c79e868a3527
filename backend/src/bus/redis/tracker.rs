//! The relay rule, the heart of the delivery guarantee, free of any connection: per subscribed room the position
//! this replica relayed last, and what a live message, a resubscription or an audit makes of it.
//!
//! A message is new when its id is above the last one relayed; offsets are contiguous, so a new live message whose
//! offset is not `last + 1` shows a gap at once: the missing messages are read from the stream (after the last id)
//! and relayed first, in order, before the live one; live copies of backfilled messages are dropped. An offset that
//! goes back while the id goes forward means a failover lost acknowledged writes: the stream is read the same way,
//! and members are told. A hole in the offsets of the stream itself (entries trimmed before they were relayed) is
//! announced with a [`BusEvent::Gap`], never skipped silently. A changed epoch means Redis lost the room's history:
//! members are told with a reset gap, and the new epoch is relayed from its start.
//!
//! Everything the tracker learns from Redis comes through a [`StreamReader`], and everything it decides leaves as a
//! [`BusEvent`], so the rule is tested without Redis.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shared::{MsgId, RoomName};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::codec::StoredEntry;
use crate::bus::{BusError, BusEvent, EventSink, Notice, Record};

/// Messages read per backfill request.
const BACKFILL_PAGE: usize = 500;
/// Rooms whose positions are read per round trip.
const POSITIONS_PER_TRIP: usize = 500;

/// Where a room's stored messages stand: the epoch, the newest offset and the newest id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub epoch: Arc<str>,
    pub offset: u64,
    pub id: MsgId,
}

/// What the tracker reads from Redis: room positions and stream ranges.
pub(crate) trait StreamReader {
    /// The current positions of `rooms`, in the same order. A room without history gets an epoch.
    fn positions(
        &self,
        rooms: &[RoomName],
    ) -> impl Future<Output = Result<Vec<Position>, BusError>> + Send;

    /// The newest stored entry of `room` at or before the id `at`, with its offset; `None` when the stream keeps
    /// none (trimmed, or empty).
    fn at_or_before(
        &self,
        room: &RoomName,
        at: MsgId,
    ) -> impl Future<Output = Result<Option<StoredEntry>, BusError>> + Send;

    /// Up to `limit` stored messages of `room` after the id `after`, oldest first, with their offsets.
    fn range_after(
        &self,
        room: &RoomName,
        after: MsgId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<StoredEntry>, BusError>> + Send;
}

/// One tracked room.
#[derive(Debug)]
struct RoomState {
    /// What this replica relayed last; `None` until known.
    pos: Option<Position>,
    /// When the room last relayed a live message (audits skip busy rooms: their offsets reveal gaps).
    last_event: Instant,
}

impl RoomState {
    fn new(pos: Option<Position>) -> Self {
        Self {
            pos,
            last_event: Instant::now(),
        }
    }
}

/// The rooms that have local members and what was relayed in each; see the module docs.
#[derive(Debug)]
pub(super) struct Tracker<R> {
    reader: R,
    events: EventSink,
    rooms: HashMap<RoomName, RoomState>,
    /// Messages read per backfill request ([`BACKFILL_PAGE`]; smaller in tests).
    page: usize,
}

impl<R: StreamReader> Tracker<R> {
    /// Tracks no room yet; relays to `events`.
    pub(super) fn new(reader: R, events: EventSink) -> Self {
        Self {
            reader,
            events,
            rooms: HashMap::new(),
            page: BACKFILL_PAGE,
        }
    }

    /// The tracked rooms, whether or not Redis currently confirms their subscriptions.
    pub(super) fn rooms(&self) -> impl Iterator<Item = &RoomName> {
        self.rooms.keys()
    }

    /// How many rooms are tracked.
    pub(super) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is tracked.
    pub(super) fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Whether the room is tracked and its position known.
    pub(super) fn is_positioned(&self, room: &RoomName) -> bool {
        self.rooms.get(room).is_some_and(|s| s.pos.is_some())
    }

    /// Tracks a room whose position is not known yet (it got local members while Redis was unreachable): the
    /// resync after reconnecting adopts it.
    pub(super) fn track(&mut self, room: RoomName) {
        self.rooms
            .entry(room)
            .or_insert_with(|| RoomState::new(None));
    }

    /// Stops tracking a room; whether it was tracked.
    pub(super) fn untrack(&mut self, room: &RoomName) -> bool {
        self.rooms.remove(room).is_some()
    }

    /// Reads the room's position and tracks the room from there. Called before subscribing: the position is a lower
    /// bound, and anything stored in between shows up as a gap on the next message (or in the next audit). Returns
    /// whether the room was not tracked at all before, so its channel still needs a subscription.
    pub(super) async fn enter(&mut self, room: &RoomName) -> Result<bool, BusError> {
        let pos = self
            .reader
            .positions(std::slice::from_ref(room))
            .await?
            .pop();
        let fresh = !self.rooms.contains_key(room);
        self.rooms
            .entry(room.clone())
            .or_insert_with(|| RoomState::new(None))
            .pos = pos;
        Ok(fresh)
    }

    /// Relays a notice of a tracked room; notices are not stored, so there is nothing to check or backfill.
    pub(super) fn notice(&self, room: RoomName, notice: Notice) {
        if self.rooms.contains_key(&room) {
            let _ = self.events.send(notice.event(room));
        }
    }

    /// Relays a live message exactly once and in order, backfilling first when its offset shows a gap or `prev` (the
    /// id of the entry before it, when the payload says) is not what this replica relayed last.
    pub(super) async fn on_stored(
        &mut self,
        room: RoomName,
        offset: u64,
        epoch: Arc<str>,
        prev: Option<MsgId>,
        message: Record,
    ) -> Result<(), BusError> {
        let Some(state) = self.rooms.get_mut(&room) else {
            return Ok(());
        };
        state.last_event = Instant::now();
        match state.pos.clone() {
            None => {}
            Some(pos) if pos.epoch != epoch => {
                self.reset(&room, epoch.clone());
                self.backfill(&room, message.id).await?;
            }
            Some(pos)
                if message.id <= pos.id
                    || (offset == pos.offset + 1 && prev.is_none_or(|prev| prev == pos.id)) => {}
            Some(pos) => {
                // A skipped offset (Pub/Sub lost messages); one that went back with a newer id (a failover lost
                // acknowledged writes and the new master reused offsets); or the next offset after another entry
                // than the one relayed last (a split brain: two masters took writes, and the one that lost took as
                // many as this replica relayed from the other): read the stream from the last id.
                debug!(%room, last = pos.offset, offset, "gap in live relay; backfilling");
                self.backfill(&room, message.id).await?;
            }
        }
        let Some(state) = self.rooms.get_mut(&room) else {
            return Ok(());
        };
        if state.pos.as_ref().is_some_and(|p| message.id <= p.id) {
            return Ok(());
        }
        state.pos = Some(Position {
            epoch,
            offset,
            id: message.id,
        });
        let _ = self.events.send(BusEvent::Stored(message));
        Ok(())
    }

    /// Compares the position of every tracked room with Redis (after a resubscription).
    pub(super) async fn resync_all(&mut self) -> Result<(), BusError> {
        let rooms: Vec<RoomName> = self.rooms.keys().cloned().collect();
        self.resync(&rooms).await
    }

    /// Compares each room's position with Redis: adopts it where unknown, backfills where behind, resets where the
    /// epoch changed.
    pub(super) async fn resync(&mut self, rooms: &[RoomName]) -> Result<(), BusError> {
        for chunk in rooms.chunks(POSITIONS_PER_TRIP) {
            let current = self.reader.positions(chunk).await?;
            for (room, now) in chunk.iter().zip(current) {
                let Some(state) = self.rooms.get_mut(room) else {
                    continue;
                };
                match state.pos.clone() {
                    None => state.pos = Some(now),
                    Some(pos) if pos.epoch != now.epoch => {
                        self.reset(room, now.epoch.clone());
                        self.backfill(room, now.id).await?;
                    }
                    // Behind, or somewhere else: an id or offset that went back means Redis lost what was
                    // relayed (the backfill finds where the stream went on from).
                    Some(pos) if now.id != pos.id || now.offset != pos.offset => {
                        self.backfill(room, now.id).await?;
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Resyncs the rooms that relayed no live message for `quiet_for`: a lost last message leaves no later offset
    /// to reveal it.
    pub(super) async fn audit(&mut self, quiet_for: Duration) -> Result<(), BusError> {
        let quiet: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, s)| s.last_event.elapsed() >= quiet_for)
            .map(|(r, _)| r.clone())
            .collect();
        self.resync(&quiet).await
    }

    /// Tells members the room's history was lost, and restarts the room's position in the new epoch.
    fn reset(&mut self, room: &RoomName, epoch: Arc<str>) {
        warn!(%room, %epoch, "room history was reset in Redis (new epoch); members are told");
        metrics::counter!("roomcast_history_resets_total").increment(1);
        if let Some(state) = self.rooms.get_mut(room) {
            state.pos = Some(Position {
                epoch: epoch.clone(),
                offset: 0,
                id: MsgId::default(),
            });
        }
        let _ = self.events.send(BusEvent::Gap {
            room: room.clone(),
            epoch,
            reset: true,
        });
    }

    /// Checks that the entry relayed last is still in the stream at its offset. When it is not, the stream went
    /// another way: a failover lost acknowledged writes — this replica relayed them, the new master never had them —
    /// and took others meanwhile, older than the last relayed id and so never to be relayed here. Members are told
    /// with a gap, and the room goes on from the newest entry at or before the last relayed id: what follows it is
    /// all newer than anything relayed. A stream that keeps nothing that old (trimmed) leaves the offsets to tell.
    async fn find_fork(&mut self, room: &RoomName) -> Result<(), BusError> {
        let Some(pos) = self.rooms.get(room).and_then(|s| s.pos.clone()) else {
            return Ok(());
        };
        if pos.id == MsgId::default() {
            return Ok(());
        }
        let Some(entry) = self.reader.at_or_before(room, pos.id).await? else {
            return Ok(());
        };
        if entry.record.id == pos.id && (entry.offset == pos.offset || entry.offset == 0) {
            return Ok(());
        }
        warn!(%room, last = %pos.id, offset = pos.offset, now = %entry.record.id, now_offset = entry.offset,
            "the room's history went another way in Redis (a failover lost acknowledged writes); members are told");
        metrics::counter!("roomcast_history_forks_total").increment(1);
        metrics::counter!("roomcast_gaps_total").increment(1);
        let _ = self.events.send(BusEvent::Gap {
            room: room.clone(),
            epoch: pos.epoch.clone(),
            reset: false,
        });
        if let Some(state) = self.rooms.get_mut(room) {
            state.pos = Some(Position {
                epoch: pos.epoch,
                offset: entry.offset,
                id: entry.record.id,
            });
        }
        Ok(())
    }

    /// Relays the stored messages after the room's position, oldest first, until `until` or the end of the stream.
    /// Messages are new when their id is above the position's; a hole in the offsets (trimmed before they were
    /// relayed, or lost in a failover) is announced with a gap, never skipped silently.
    async fn backfill(&mut self, room: &RoomName, until: MsgId) -> Result<(), BusError> {
        self.find_fork(room).await?;
        loop {
            let Some(mut pos) = self.rooms.get(room).and_then(|s| s.pos.clone()) else {
                return Ok(());
            };
            if pos.id >= until {
                return Ok(());
            }
            let page = self.reader.range_after(room, pos.id, self.page).await?;
            let full = page.len() == self.page;
            let mut relayed = 0u64;
            for entry in page {
                if entry.record.id <= pos.id {
                    continue;
                }
                if entry.offset != 0 && entry.offset != pos.offset + 1 {
                    warn!(%room, last = pos.offset, next = entry.offset, "messages missing from the stream; members are told");
                    metrics::counter!("roomcast_gaps_total").increment(1);
                    let _ = self.events.send(BusEvent::Gap {
                        room: room.clone(),
                        epoch: pos.epoch.clone(),
                        reset: false,
                    });
                }
                pos.offset = entry.offset;
                pos.id = entry.record.id;
                relayed += 1;
                let _ = self.events.send(BusEvent::Stored(entry.record));
            }
            metrics::counter!("roomcast_backfilled_total").increment(relayed);
            if relayed > 0 {
                debug!(%room, relayed, "backfilled");
            }
            let done = !full || pos.id >= until;
            if let Some(state) = self.rooms.get_mut(room) {
                state.pos = Some(pos);
            }
            if done {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The relay rule against a fake Redis (a stream, an epoch and an offset per room) and a live feed that drops,
    //! reorders and duplicates messages. Every test asserts the exact events relayed.

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use shared::{Nick, PresenceKind};
    use tokio::sync::mpsc;

    use crate::bus::{Body, PresenceNotice};

    use super::*;

    /// How long a room must be quiet before the audit reads it, in these tests.
    const QUIET: Duration = Duration::from_secs(5);

    /// One room as Redis holds it.
    #[derive(Debug)]
    struct FakeRoom {
        epoch: Arc<str>,
        seq: u64,
        last: MsgId,
        stream: Vec<StoredEntry>,
    }

    #[derive(Debug, Default)]
    struct FakeState {
        rooms: HashMap<RoomName, FakeRoom>,
        /// The Redis clock: every new id is newer than every id before it, even across a failover.
        clock: u64,
        epochs: u64,
    }

    impl FakeState {
        fn new_epoch(&mut self) -> Arc<str> {
            self.epochs += 1;
            format!("e{}", self.epochs).into()
        }

        /// The room, created with a fresh epoch like `HSETNX` does.
        fn room(&mut self, room: &RoomName) -> &mut FakeRoom {
            if !self.rooms.contains_key(room) {
                let epoch = self.new_epoch();
                self.rooms.insert(
                    room.clone(),
                    FakeRoom {
                        epoch,
                        seq: 0,
                        last: MsgId::default(),
                        stream: Vec::new(),
                    },
                );
            }
            self.rooms.get_mut(room).expect("just made")
        }
    }

    fn text_of(record: &Record) -> String {
        match &record.body {
            Body::Message { text, .. } => text.clone(),
            other => panic!("a message, not {other:?}"),
        }
    }

    /// A message as Pub/Sub carries it.
    #[derive(Debug, Clone)]
    struct Live {
        room: RoomName,
        offset: u64,
        epoch: Arc<str>,
        prev: Option<MsgId>,
        message: Record,
    }

    /// The Redis side: what the publish script stores, and what a trim, a failover or a restart without data do to
    /// it. Reading counts position reads, so a test can tell whether the audit skipped a room.
    #[derive(Debug, Clone, Default)]
    struct FakeRedis {
        state: Arc<Mutex<FakeState>>,
        position_reads: Arc<AtomicUsize>,
    }

    impl FakeRedis {
        /// Stores a message as the publish script does and returns its live copy.
        fn publish(&self, room: &RoomName, text: &str) -> Live {
            let mut state = self.state.lock().unwrap();
            state.clock += 1;
            let id = MsgId::new(1_000 + state.clock, 0);
            let r = state.room(room);
            let prev = r.last;
            r.seq += 1;
            r.last = id;
            let body = Body::Message {
                nick: Nick::parse("al").unwrap(),
                text: text.into(),
                quote: None,
            };
            let message = Record {
                id,
                room: room.clone(),
                body,
            };
            r.stream.push(StoredEntry {
                offset: r.seq,
                record: message.clone(),
                cid: String::new(),
                digest: String::new(),
                body_len: 0,
            });
            Live {
                room: room.clone(),
                offset: r.seq,
                epoch: r.epoch.clone(),
                prev: Some(prev),
                message,
            }
        }

        /// A split brain healed: the promoted replica never had the newest `lost` writes (the old master acked them)
        /// and took `others` meanwhile, with ids older than the lost ones but the same offsets.
        fn fork(&self, room: &RoomName, lost: usize, others: &[&str]) {
            self.fail_over(room, lost);
            let mut state = self.state.lock().unwrap();
            let r = state.room(room);
            let base = r.last;
            for (k, text) in others.iter().enumerate() {
                let id = MsgId::new(base.ms, base.seq + 1 + k as u64);
                r.seq += 1;
                r.last = id;
                let body = Body::Message {
                    nick: Nick::parse("bo").unwrap(),
                    text: (*text).into(),
                    quote: None,
                };
                r.stream.push(StoredEntry {
                    offset: r.seq,
                    record: Record {
                        id,
                        room: room.clone(),
                        body,
                    },
                    cid: String::new(),
                    digest: String::new(),
                    body_len: 0,
                });
            }
        }

        /// `MAXLEN`: keeps the newest `keep` entries.
        fn trim(&self, room: &RoomName, keep: usize) {
            let mut state = self.state.lock().unwrap();
            let stream = &mut state.room(room).stream;
            let drop = stream.len().saturating_sub(keep);
            stream.drain(..drop);
        }

        /// A failover to a replica that missed the newest `lost` writes: the offsets go back, the clock does not.
        fn fail_over(&self, room: &RoomName, lost: usize) {
            let mut state = self.state.lock().unwrap();
            let r = state.room(room);
            let keep = r.stream.len() - lost;
            r.stream.truncate(keep);
            r.seq -= lost as u64;
            r.last = r.stream.last().map(|e| e.record.id).unwrap_or_default();
        }

        /// Redis restarted without its data: the next write makes a new epoch.
        fn lose_everything(&self) {
            self.state.lock().unwrap().rooms.clear();
        }

        fn epoch(&self, room: &RoomName) -> Arc<str> {
            self.state.lock().unwrap().room(room).epoch.clone()
        }
    }

    impl StreamReader for FakeRedis {
        async fn positions(&self, rooms: &[RoomName]) -> Result<Vec<Position>, BusError> {
            self.position_reads
                .fetch_add(rooms.len(), Ordering::Relaxed);
            let mut state = self.state.lock().unwrap();
            Ok(rooms
                .iter()
                .map(|room| {
                    let r = state.room(room);
                    Position {
                        epoch: r.epoch.clone(),
                        offset: r.seq,
                        id: r.last,
                    }
                })
                .collect())
        }

        async fn at_or_before(
            &self,
            room: &RoomName,
            at: MsgId,
        ) -> Result<Option<StoredEntry>, BusError> {
            let mut state = self.state.lock().unwrap();
            Ok(state
                .room(room)
                .stream
                .iter()
                .rev()
                .find(|e| e.record.id <= at)
                .cloned())
        }

        async fn range_after(
            &self,
            room: &RoomName,
            after: MsgId,
            limit: usize,
        ) -> Result<Vec<StoredEntry>, BusError> {
            let mut state = self.state.lock().unwrap();
            Ok(state
                .room(room)
                .stream
                .iter()
                .filter(|e| e.record.id > after)
                .take(limit)
                .cloned()
                .collect())
        }
    }

    /// What members were sent, in order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Seen {
        Msg(String),
        Gap { epoch: String, reset: bool },
        Notice,
    }

    /// A tracker on a fake Redis, with the receiving end of its events.
    struct Rig {
        redis: FakeRedis,
        tracker: Tracker<FakeRedis>,
        events: mpsc::UnboundedReceiver<BusEvent>,
    }

    impl Rig {
        fn new() -> Self {
            let redis = FakeRedis::default();
            let (tx, events) = mpsc::unbounded_channel();
            Self {
                tracker: Tracker::new(redis.clone(), tx),
                redis,
                events,
            }
        }

        /// A rig tracking one room from its current position, as a subscription starts.
        async fn in_room(name: &str) -> (Self, RoomName) {
            let mut rig = Self::new();
            let r = room(name);
            assert!(rig.tracker.enter(&r).await.unwrap(), "a new room");
            (rig, r)
        }

        /// A message is stored and its live copy arrives.
        async fn say(&mut self, room: &RoomName, text: &str) {
            let live = self.redis.publish(room, text);
            self.deliver(&live).await;
        }

        /// A room's live message reaches the tracker.
        async fn deliver(&mut self, live: &Live) {
            self.tracker
                .on_stored(
                    live.room.clone(),
                    live.offset,
                    live.epoch.clone(),
                    live.prev,
                    live.message.clone(),
                )
                .await
                .unwrap();
        }

        /// Everything relayed since the last call, per room.
        fn seen(&mut self) -> HashMap<RoomName, Vec<Seen>> {
            let mut seen: HashMap<RoomName, Vec<Seen>> = HashMap::new();
            while let Ok(event) = self.events.try_recv() {
                let (room, what) = match event {
                    BusEvent::Stored(m) => {
                        let Body::Message { text, .. } = m.body else {
                            panic!("only messages here")
                        };
                        (m.room, Seen::Msg(text))
                    }
                    BusEvent::Gap { room, epoch, reset } => (
                        room,
                        Seen::Gap {
                            epoch: epoch.to_string(),
                            reset,
                        },
                    ),
                    BusEvent::Notice { room, .. } => (room, Seen::Notice),
                };
                seen.entry(room).or_default().push(what);
            }
            seen
        }

        /// Everything relayed in `room` since the last call (the only room the test uses).
        fn seen_in(&mut self, room: &RoomName) -> Vec<Seen> {
            let mut seen = self.seen();
            let mine = seen.remove(room).unwrap_or_default();
            assert!(seen.is_empty(), "events of other rooms: {seen:?}");
            mine
        }
    }

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn msgs(texts: &[&str]) -> Vec<Seen> {
        texts.iter().map(|t| Seen::Msg((*t).to_owned())).collect()
    }

    /// Messages, then a gap in `epoch`, then more messages.
    fn around_gap(before: &[&str], epoch: &str, reset: bool, after: &[&str]) -> Vec<Seen> {
        let mut seen = msgs(before);
        seen.push(Seen::Gap {
            epoch: epoch.to_owned(),
            reset,
        });
        seen.extend(msgs(after));
        seen
    }

    /// A small deterministic generator (an LCG), so every chaotic feed can be replayed from its seed.
    struct Dice(u64);

    impl Dice {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            usize::try_from((self.0 >> 33) % n as u64).unwrap()
        }
    }

    #[tokio::test]
    async fn live_messages_in_order_are_relayed_as_they_come() {
        let (mut rig, r) = Rig::in_room("calm").await;
        assert!(!rig.tracker.enter(&r).await.unwrap(), "already tracked");
        for text in ["a", "b", "c"] {
            rig.say(&r, text).await;
        }
        assert_eq!(rig.seen_in(&r), msgs(&["a", "b", "c"]));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_reordered_and_duplicated_live_messages_are_relayed_exactly_once_in_order() {
        for seed in 0..200 {
            let mut rig = Rig::new();
            let mut dice = Dice(seed);
            let rooms = [room("one"), room("two")];
            for r in &rooms {
                rig.tracker.enter(r).await.unwrap();
            }
            let mut sent: HashMap<RoomName, Vec<Seen>> = HashMap::new();
            let mut in_flight: Vec<Live> = Vec::new();
            for i in 0..60 {
                let r = &rooms[dice.below(2)];
                let live = rig.redis.publish(r, &format!("{r}-{i}"));
                sent.entry(r.clone())
                    .or_default()
                    .push(Seen::Msg(text_of(&live.message)));
                // One in five is lost, one in eight arrives twice.
                match dice.below(40) {
                    0..8 => {}
                    8..13 => in_flight.extend([live.clone(), live]),
                    _ => in_flight.push(live),
                }
                // Whatever is in flight arrives in any order, some of it later.
                for _ in 0..dice.below(3) {
                    if !in_flight.is_empty() {
                        let live = in_flight.remove(dice.below(in_flight.len()));
                        rig.deliver(&live).await;
                    }
                }
            }
            while !in_flight.is_empty() {
                let live = in_flight.remove(dice.below(in_flight.len()));
                rig.deliver(&live).await;
            }
            // The last message of a room may have been lost: the quiet-room audit finds it.
            tokio::time::advance(QUIET).await;
            rig.tracker.audit(QUIET).await.unwrap();
            assert_eq!(rig.seen(), sent, "seed {seed}");
        }
    }

    #[tokio::test]
    async fn a_new_epoch_is_announced_as_a_reset_and_relayed_from_its_start() {
        let (mut rig, r) = Rig::in_room("reborn").await;
        for text in ["a", "b"] {
            rig.say(&r, text).await;
        }
        let old = rig.redis.epoch(&r);
        rig.redis.lose_everything();
        let x = rig.redis.publish(&r, "x");
        let y = rig.redis.publish(&r, "y");
        let new = rig.redis.epoch(&r);
        assert_ne!(old, new);
        // The new epoch's first message is lost; the second shows the reset.
        rig.deliver(&y).await;
        rig.deliver(&x).await;
        rig.deliver(&y).await;
        rig.say(&r, "z").await;
        assert_eq!(
            rig.seen_in(&r),
            around_gap(&["a", "b"], &new, true, &["x", "y", "z"])
        );
    }

    #[tokio::test]
    async fn entries_trimmed_before_they_were_relayed_are_announced_as_a_gap() {
        let (mut rig, r) = Rig::in_room("trimmed").await;
        rig.say(&r, "1").await;
        // Live copies of 2 to 6 are lost, and the stream keeps only 5 and 6 by the time 7 arrives.
        for text in ["2", "3", "4", "5", "6"] {
            rig.redis.publish(&r, text);
        }
        rig.redis.trim(&r, 2);
        let seventh = rig.redis.publish(&r, "7");
        rig.deliver(&seventh).await;
        rig.deliver(&seventh).await;
        let epoch = rig.redis.epoch(&r);
        assert_eq!(
            rig.seen_in(&r),
            around_gap(&["1"], &epoch, false, &["5", "6", "7"])
        );
    }

    #[tokio::test]
    async fn an_offset_that_goes_back_with_a_newer_id_is_a_failover_gap() {
        let (mut rig, r) = Rig::in_room("failover").await;
        for text in ["1", "2", "3", "4", "5"] {
            rig.say(&r, text).await;
        }
        // The new master never had 4 and 5: its next message takes offset 4 again, with a newer id.
        rig.redis.fail_over(&r, 2);
        let after = rig.redis.publish(&r, "4'");
        assert_eq!(after.offset, 4);
        rig.deliver(&after).await;
        rig.say(&r, "5'").await;
        let epoch = rig.redis.epoch(&r);
        assert_eq!(
            rig.seen_in(&r),
            around_gap(&["1", "2", "3", "4", "5"], &epoch, false, &["4'", "5'"])
        );
    }

    #[tokio::test]
    async fn a_split_brain_with_as_many_writes_on_each_side_is_a_gap() {
        let (mut rig, r) = Rig::in_room("split").await;
        for text in ["1", "2", "3", "4", "5"] {
            rig.say(&r, text).await;
        }
        // The isolated master acked 4 and 5, relayed here; the promoted replica had 1 to 3 and took x and y
        // meanwhile: offsets 4 and 5 again, older ids than 4. Its next message has offset 6, right after the last
        // offset relayed here, but it follows y, not 5.
        rig.redis.fork(&r, 2, &["x", "y"]);
        rig.say(&r, "6").await;
        rig.say(&r, "7").await;
        let epoch = rig.redis.epoch(&r);
        assert_eq!(
            rig.seen_in(&r),
            around_gap(&["1", "2", "3", "4", "5"], &epoch, false, &["6", "7"])
        );
    }

    #[tokio::test]
    async fn a_resync_finds_a_fork_at_the_same_offset() {
        let (mut rig, r) = Rig::in_room("forked").await;
        for text in ["1", "2", "3"] {
            rig.say(&r, text).await;
        }
        // Reconnected to the promoted replica, which lost 3 and took x: the same newest offset, another id.
        rig.redis.fork(&r, 1, &["x"]);
        rig.tracker.resync_all().await.unwrap();
        rig.say(&r, "4").await;
        let epoch = rig.redis.epoch(&r);
        assert_eq!(
            rig.seen_in(&r),
            around_gap(&["1", "2", "3"], &epoch, false, &["4"])
        );
    }

    #[tokio::test]
    async fn a_resync_after_reconnecting_backfills_what_was_missed() {
        let mut rig = Rig::new();
        let (known, joined) = (room("known"), room("joined"));
        rig.tracker.enter(&known).await.unwrap();
        rig.say(&known, "1").await;
        // The connection is down: 2 and 3 are stored but not heard, and `joined` gets local members meanwhile
        // (its history reaches them through the join, not through the bus).
        let second = rig.redis.publish(&known, "2");
        rig.redis.publish(&known, "3");
        rig.redis.publish(&joined, "old");
        rig.tracker.track(joined.clone());
        assert!(!rig.tracker.is_positioned(&joined));
        rig.tracker.resync_all().await.unwrap();
        assert!(rig.tracker.is_positioned(&joined));
        // Late live copies from before the reconnection are duplicates now.
        rig.deliver(&second).await;
        rig.say(&joined, "new").await;
        let mut seen = rig.seen();
        assert_eq!(seen.remove(&known).unwrap(), msgs(&["1", "2", "3"]));
        assert_eq!(seen.remove(&joined).unwrap(), msgs(&["new"]));
        assert!(seen.is_empty(), "{seen:?}");
    }

    #[tokio::test]
    async fn a_resync_finds_a_new_epoch() {
        let (mut rig, r) = Rig::in_room("restarted").await;
        rig.say(&r, "1").await;
        rig.redis.lose_everything();
        rig.redis.publish(&r, "a");
        let new = rig.redis.epoch(&r);
        rig.tracker.resync_all().await.unwrap();
        assert_eq!(rig.seen_in(&r), around_gap(&["1"], &new, true, &["a"]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_audit_finds_a_quiet_room_s_lost_last_message() {
        let (mut rig, r) = Rig::in_room("quiet").await;
        let counter = rig.redis.position_reads.clone();
        let reads = || counter.load(Ordering::Relaxed);
        let first = rig.redis.publish(&r, "1");
        rig.redis.publish(&r, "2");
        rig.deliver(&first).await;
        let before = reads();
        // A room that relayed a moment ago is not read: its next offset reveals any gap.
        rig.tracker.audit(QUIET).await.unwrap();
        assert_eq!(reads(), before);
        assert_eq!(rig.seen_in(&r), msgs(&["1"]));
        tokio::time::advance(QUIET).await;
        rig.tracker.audit(QUIET).await.unwrap();
        assert_eq!(reads(), before + 1);
        assert_eq!(rig.seen_in(&r), msgs(&["2"]));
        // Nothing new: the next audit relays nothing.
        rig.tracker.audit(QUIET).await.unwrap();
        assert_eq!(rig.seen_in(&r), []);
    }

    #[tokio::test]
    async fn backfill_reads_long_gaps_page_by_page() {
        let (mut rig, r) = Rig::in_room("long").await;
        rig.tracker.page = 2;
        let texts: Vec<String> = (1..=7).map(|i| i.to_string()).collect();
        let mut last = None;
        for text in &texts {
            last = Some(rig.redis.publish(&r, text));
        }
        rig.deliver(&last.unwrap()).await;
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert_eq!(rig.seen_in(&r), msgs(&texts));
    }

    #[tokio::test]
    async fn notices_and_messages_of_untracked_rooms_are_ignored() {
        let mut rig = Rig::new();
        let (member, other) = (room("member"), room("other"));
        rig.tracker.enter(&member).await.unwrap();
        let notice = || {
            Notice::Presence(PresenceNotice {
                nick: Nick::parse("bob").unwrap(),
                event: PresenceKind::Joined,
                from: None,
                ts: 1,
                node: "n".into(),
                conn: 1,
            })
        };
        rig.tracker.notice(member.clone(), notice());
        rig.tracker.notice(other.clone(), notice());
        rig.say(&other, "stray").await;
        assert_eq!(rig.seen_in(&member), [Seen::Notice]);
        assert!(rig.tracker.untrack(&member));
        assert!(!rig.tracker.untrack(&member));
        rig.tracker.notice(member.clone(), notice());
        rig.say(&member, "after").await;
        assert!(rig.seen().is_empty());
    }
}
