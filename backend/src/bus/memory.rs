//! The in-memory bus: the embedded default for a single replica, with the same ids and history rules as Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use shared::{ErrorCode, MsgId, Nick, RoomName};
use tokio::sync::oneshot;

use super::roster::Roster;
use super::rules::{Moderation, Outcome, Rules};
use super::{
    Body, Bus, BusError, BusEvent, Draft, EventSink, History, HistoryItem, HistoryQuery, MsgState,
    Notice, Page, Published, ReadMove, Reads, Record, Revocations, RosterChange, RosterOp,
    RosterTiming, Subscribed, new_epoch, now_ms,
};

/// A bus that lives inside one replica. Ids follow the Redis Stream rule (`<ms>-<seq>`, strictly increasing) so
/// clients cannot tell the two apart. Histories are capped per room; the number of rooms is not. The epoch is made
/// at start, so a client resuming across a restart of this replica is told its history was reset.
#[derive(Debug)]
pub struct MemoryBus {
    inner: Mutex<Inner>,
    events: EventSink,
    history_limit: usize,
    dedupe_window: Duration,
    epoch: Arc<str>,
    /// Revoked sessions: this replica is the only one, so the list is complete from the start (and, like the
    /// history, lost when the replica stops).
    revocations: Revocations,
}

#[derive(Debug, Default)]
struct Log {
    /// Offset of the newest entry (the room's entry count).
    offset: u64,
    /// Messages and actions, oldest first, with their offsets.
    entries: VecDeque<(u64, Record)>,
    /// What actions left on messages still in `entries`.
    states: HashMap<MsgId, MsgState>,
    /// Mutes, bans and slow mode.
    moderation: Moderation,
}

impl Log {
    /// A record as a history read returns it: with the state of its message (its own, or its target's).
    fn item(&self, record: &Record) -> HistoryItem {
        let message = record.body.target().unwrap_or(record.id);
        HistoryItem {
            record: record.clone(),
            state: self.states.get(&message).cloned(),
        }
    }
}

type CidKey = (RoomName, Nick, String);

#[derive(Debug, Default)]
struct Inner {
    last_id: MsgId,
    history: HashMap<RoomName, Log>,
    subscribed: HashSet<RoomName>,
    /// Stored cids: the message id and a hash of its text.
    cids: HashMap<CidKey, (MsgId, u64)>,
    /// Cids in the order they expire.
    expiries: VecDeque<(Instant, CidKey)>,
    /// Members online, per room.
    rosters: HashMap<RoomName, Roster>,
    /// Read positions, per room: person → (the newest message read, the nick read as).
    reads: HashMap<RoomName, HashMap<String, (MsgId, Nick)>>,
}

impl MemoryBus {
    /// A bus that keeps `history_limit` messages per room, remembers cids for `dedupe_window`, and delivers events
    /// to `events`.
    pub fn new(events: EventSink, history_limit: usize, dedupe_window: Duration) -> Self {
        Self {
            inner: Mutex::default(),
            events,
            history_limit,
            dedupe_window,
            epoch: new_epoch().into(),
            revocations: {
                let list = Revocations::default();
                list.set_loaded();
                list
            },
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn text_hash(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl Bus for MemoryBus {
    fn publish(
        &self,
        room: &RoomName,
        draft: Draft,
    ) -> BoxFuture<'static, Result<Published, BusError>> {
        let mut inner = self.lock();
        let now = Instant::now();
        while inner.expiries.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, key)) = inner.expiries.pop_front() {
                inner.cids.remove(&key);
            }
        }
        let key = (room.clone(), draft.nick.clone(), draft.cid.clone());
        let hash = text_hash(&draft.fingerprint());
        if let Some(&(id, stored)) = inner.cids.get(&key) {
            let result = if stored == hash {
                Ok(Published {
                    id,
                    offset: 0,
                    duplicate: true,
                })
            } else {
                Err(BusError::Refused {
                    code: ErrorCode::CidReused,
                    until: None,
                })
            };
            return async move { result }.boxed();
        }
        let ms = now_ms();
        // Same rule as XADD: the clock's millisecond, or the last id's with the sequence bumped. The rules run at
        // the id's time, so an edit's `edited_at` is the `ts` of the `edited` frame live members get.
        let id = if ms > inner.last_id.ms {
            MsgId::new(ms, 0)
        } else {
            inner.last_id.successor()
        };
        let Inner {
            history, rosters, ..
        } = &mut *inner;
        let log = history.entry(room.clone()).or_default();
        let Log {
            entries,
            states,
            moderation,
            ..
        } = log;
        let lookup = |id: MsgId| -> Option<&Record> {
            let at = entries.binary_search_by_key(&id, |(_, e)| e.id).ok()?;
            Some(&entries[at].1)
        };
        let roster = rosters.get(room);
        let holder = |nick: &Nick| roster.and_then(|r| r.holder(nick));
        let body = Rules {
            log: &lookup,
            states,
            moderation,
            holder: &holder,
        }
        .apply(&draft, id.ms);
        let body = match body {
            Ok(Outcome::Store(body)) => body,
            Ok(Outcome::Unchanged(same)) => {
                // Nothing to store; a retry of this cid gets the same answer.
                inner.cids.insert(key.clone(), (same, hash));
                inner.expiries.push_back((now + self.dedupe_window, key));
                let published = Published {
                    id: same,
                    offset: 0,
                    duplicate: true,
                };
                return async move { Ok(published) }.boxed();
            }
            Err(e) => return async move { Err(e) }.boxed(),
        };
        inner.last_id = id;
        inner.cids.insert(key.clone(), (id, hash));
        inner.expiries.push_back((now + self.dedupe_window, key));
        let entry = Record {
            id,
            room: room.clone(),
            body,
        };
        let log = inner.history.entry(room.clone()).or_default();
        log.offset += 1;
        let offset = log.offset;
        log.entries.push_back((offset, entry.clone()));
        while log.entries.len() > self.history_limit {
            if let Some((_, old)) = log.entries.pop_front() {
                log.states.remove(&old.id);
            }
        }
        // Sent under the lock, so events leave in id order.
        if inner.subscribed.contains(room) {
            let _ = self.events.send(BusEvent::Stored(entry));
        }
        async move {
            Ok(Published {
                id,
                offset,
                duplicate: false,
            })
        }
        .boxed()
    }

    fn announce(
        &self,
        room: &RoomName,
        notice: &Notice,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        if self.lock().subscribed.contains(room) {
            let _ = self.events.send(notice.clone().event(room.clone()));
        }
        async { Ok(()) }.boxed()
    }

    fn roster(
        &self,
        room: &RoomName,
        conn: u64,
        op: RosterOp,
        timing: RosterTiming,
    ) -> BoxFuture<'static, Result<RosterChange, BusError>> {
        let mut inner = self.lock();
        let now = now_ms();
        let (moderation, slow_mode) = inner.history.get(room).map_or((None, 0), |log| {
            (Some(&log.moderation), log.moderation.slow_secs)
        });
        let entering = match &op {
            RosterOp::Join { nick, person }
            | RosterOp::Rename {
                to: nick, person, ..
            } => Some((nick, person.as_deref())),
            _ => None,
        };
        let banned_until = entering
            .zip(moderation)
            .and_then(|((nick, person), m)| m.banned_until(nick, person, now));
        let op_nick = match &op {
            RosterOp::Join { nick, .. } | RosterOp::Rename { to: nick, .. } => Some(nick.clone()),
            _ => None,
        };
        let muted_until = op_nick
            .as_ref()
            .zip(moderation)
            .and_then(|(nick, m)| m.muted_until(nick, now));
        if banned_until.is_some() {
            return async move {
                Ok(RosterChange {
                    banned_until,
                    ..RosterChange::default()
                })
            }
            .boxed();
        }
        let roster = inner.rosters.entry(room.clone()).or_default();
        let mut change = roster.apply(conn, op, now, timing);
        change.muted_until = muted_until;
        change.slow_mode = slow_mode;
        if roster.is_empty() {
            inner.rosters.remove(room);
        }
        async move { Ok(change) }.boxed()
    }

    fn older(
        &self,
        room: &RoomName,
        before: MsgId,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, BusError>> {
        let inner = self.lock();
        let mut out: Vec<HistoryItem> = inner
            .history
            .get(room)
            .map(|log| {
                log.entries
                    .iter()
                    .rev()
                    .filter(|(_, e)| e.id < before && e.body.is_message())
                    .take(limit)
                    .map(|(_, e)| log.item(e))
                    .collect()
            })
            .unwrap_or_default();
        out.reverse();
        async move { Ok(out) }.boxed()
    }

    fn history(
        &self,
        room: &RoomName,
        query: HistoryQuery,
    ) -> BoxFuture<'static, Result<History, BusError>> {
        let inner = self.lock();
        let reset =
            query.since.is_some() && query.epoch.as_deref().is_some_and(|e| e != &*self.epoch);
        let since = if reset { None } else { query.since };
        let mut out = History {
            epoch: self.epoch.clone(),
            reset,
            ..History::default()
        };
        if let Some(log) = inner.history.get(room) {
            match since {
                Some(since) => {
                    out.truncated = log
                        .entries
                        .front()
                        .is_some_and(|(offset, e)| *offset > 1 && e.id > since);
                    out.items = log
                        .entries
                        .iter()
                        .filter(|(_, e)| e.id > since)
                        .take(query.limit)
                        .map(|(_, e)| log.item(e))
                        .collect();
                }
                None => {
                    let mut recent: Vec<HistoryItem> = log
                        .entries
                        .iter()
                        .rev()
                        .filter(|(_, e)| e.body.is_message())
                        .take(query.recent)
                        .map(|(_, e)| log.item(e))
                        .collect();
                    recent.reverse();
                    out.items = recent;
                }
            }
        }
        async move { Ok(out) }.boxed()
    }

    fn page(
        &self,
        room: &RoomName,
        after: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Page, BusError>> {
        let inner = self.lock();
        let mut page = Page::default();
        if let Some(log) = inner.history.get(room) {
            let after = after.unwrap_or_default();
            let read: Vec<&Record> = log
                .entries
                .iter()
                .map(|(_, e)| e)
                .filter(|e| e.id > after)
                .take(limit)
                .collect();
            if read.len() >= limit {
                page.next = read.last().map(|e| e.id);
            }
            page.items = read
                .into_iter()
                .filter(|e| matches!(e.body, Body::Message { .. } | Body::Moderation { .. }))
                .map(|e| log.item(e))
                .collect();
        }
        async move { Ok(page) }.boxed()
    }

    fn mark_read(
        &self,
        room: &RoomName,
        person: &str,
        nick: &Nick,
        id: MsgId,
    ) -> BoxFuture<'static, Result<ReadMove, BusError>> {
        let mut inner = self.lock();
        let log = inner.history.get(room);
        // An empty room: a position before its first event, so everything that comes counts.
        let last = log
            .and_then(|log| log.entries.back())
            .map(|(_, e)| e.id)
            .unwrap_or_default();
        let receipts = log.is_some_and(|log| log.moderation.receipts);
        let target = id.min(last);
        let positions = inner.reads.entry(room.clone()).or_default();
        let moved = match positions.get(person) {
            Some((at, _)) if *at >= target => false,
            _ => {
                positions.insert(person.to_owned(), (target, nick.clone()));
                true
            }
        };
        // Telling this replica's other connections costs nothing here: always.
        let answer = ReadMove {
            moved,
            id: positions.get(person).map(|(at, _)| *at),
            last: Some(last),
            receipts,
            others: true,
        };
        async move { Ok(answer) }.boxed()
    }

    fn reads(&self, room: &RoomName, person: &str) -> BoxFuture<'static, Result<Reads, BusError>> {
        let inner = self.lock();
        let positions = inner.reads.get(room);
        let receipts = inner
            .history
            .get(room)
            .is_some_and(|log| log.moderation.receipts);
        let mut reads = Reads {
            mine: positions.and_then(|p| p.get(person)).map(|(id, _)| *id),
            receipts,
            seen: Vec::new(),
        };
        if receipts && let Some(positions) = positions {
            reads.seen = positions
                .values()
                .map(|(id, nick)| (nick.clone(), *id))
                .collect();
            reads.seen.sort_by_key(|(_, id)| std::cmp::Reverse(*id));
            reads.seen.truncate(shared::SEEN_SHOWN);
        }
        async move { Ok(reads) }.boxed()
    }

    fn search(
        &self,
        rooms: Option<Vec<RoomName>>,
        words: Vec<shared::text::Word>,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, BusError>> {
        let inner = self.lock();
        let before = before.unwrap_or(MsgId::new(u64::MAX, u64::MAX));
        let mut found: Vec<HistoryItem> = Vec::new();
        for (room, log) in &inner.history {
            if rooms.as_ref().is_some_and(|rooms| !rooms.contains(room)) {
                continue;
            }
            let matching = log.entries.iter().rev().filter_map(|(_, e)| {
                let Body::Message { text, .. } = &e.body else {
                    return None;
                };
                if e.id >= before {
                    return None;
                }
                let item = log.item(e);
                let current = item.state.as_ref().and_then(|s| s.text.as_deref());
                let text = current.unwrap_or(text);
                (!item.deleted() && shared::text::find(text, &words).is_some()).then_some(item)
            });
            found.extend(matching.take(limit));
        }
        found.sort_by_key(|item| std::cmp::Reverse(item.record.id));
        found.truncate(limit);
        async move { Ok(found) }.boxed()
    }

    fn revoke(
        &self,
        person: &str,
        issued_before: u64,
    ) -> BoxFuture<'static, Result<u64, BusError>> {
        self.revocations.learn(person, issued_before);
        let now = self.revocations.before(person).unwrap_or(issued_before);
        async move { Ok(now) }.boxed()
    }

    fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    fn subscribe(&self, room: &RoomName) -> Subscribed {
        self.lock().subscribed.insert(room.clone());
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        rx
    }

    fn unsubscribe(&self, room: &RoomName) {
        self.lock().subscribed.remove(room);
    }

    fn is_up(&self) -> bool {
        true
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    fn room(name: &str) -> RoomName {
        RoomName::parse(name).unwrap()
    }

    fn draft(text: &str, cid: &str) -> Draft {
        let nick = Nick::parse("a").unwrap();
        Draft {
            body: super::super::Body::Message {
                nick: nick.clone(),
                text: text.into(),
                quote: None,
            },
            nick,
            cid: cid.into(),
            reply_to: None,
            moderator: false,
        }
    }

    fn texts(history: &History) -> Vec<&str> {
        history
            .items
            .iter()
            .map(|i| match &i.record.body {
                super::super::Body::Message { text, .. } => text.as_str(),
                other => panic!("a message, not {other:?}"),
            })
            .collect()
    }

    fn since(id: MsgId) -> HistoryQuery {
        HistoryQuery {
            since: Some(id),
            limit: 10,
            ..HistoryQuery::default()
        }
    }

    #[tokio::test]
    async fn ids_increase_and_history_is_capped() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let bus = MemoryBus::new(tx, 3, Duration::from_secs(60));
        let mut ids = Vec::new();
        for i in 0..5 {
            let p = bus
                .publish(&room("r"), draft(&i.to_string(), &format!("c{i}")))
                .await
                .unwrap();
            assert_eq!(p.offset, i + 1);
            ids.push(p.id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let recent = HistoryQuery {
            recent: 10,
            ..HistoryQuery::default()
        };
        let all = bus.history(&room("r"), recent.clone()).await.unwrap();
        assert_eq!(texts(&all), ["2", "3", "4"]);
        let after = bus.history(&room("r"), since(ids[2])).await.unwrap();
        assert!(!after.truncated && !after.reset);
        assert_eq!(
            after.items.iter().map(|i| i.record.id).collect::<Vec<_>>(),
            &ids[3..]
        );
        let old = bus.history(&room("r"), since(ids[0])).await.unwrap();
        assert!(old.truncated, "ids[1] was trimmed");
        let mut other_epoch = since(ids[3]);
        other_epoch.epoch = Some("elsewhere".into());
        let reset = bus.history(&room("r"), other_epoch).await.unwrap();
        assert!(reset.reset);
        assert!(
            bus.history(&room("other"), recent)
                .await
                .unwrap()
                .items
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_repeated_cid_is_stored_once() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let bus = MemoryBus::new(tx, 10, Duration::from_secs(60));
        let first = bus.publish(&room("r"), draft("hi", "c1")).await.unwrap();
        let again = bus.publish(&room("r"), draft("hi", "c1")).await.unwrap();
        assert_eq!((again.id, again.duplicate), (first.id, true));
        assert!(matches!(
            bus.publish(&room("r"), draft("other", "c1")).await,
            Err(BusError::Refused {
                code: ErrorCode::CidReused,
                ..
            })
        ));
        let elsewhere = bus.publish(&room("s"), draft("hi", "c1")).await.unwrap();
        assert!(!elsewhere.duplicate, "the key includes the room");
    }

    #[tokio::test]
    async fn only_subscribed_rooms_produce_events() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let bus = MemoryBus::new(tx, 10, Duration::from_secs(60));
        bus.publish(&room("quiet"), draft("x", "1")).await.unwrap();
        bus.subscribe(&room("loud")).await.unwrap().unwrap();
        let id = bus
            .publish(&room("loud"), draft("y", "2"))
            .await
            .unwrap()
            .id;
        let Ok(BusEvent::Stored(m)) = rx.try_recv() else {
            panic!("expected a stored message")
        };
        assert_eq!((m.room, m.id), (room("loud"), id));
        assert!(rx.try_recv().is_err());
        bus.unsubscribe(&room("loud"));
        bus.publish(&room("loud"), draft("z", "3")).await.unwrap();
        assert!(rx.try_recv().is_err());
    }
}
