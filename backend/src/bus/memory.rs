//! The in-memory bus: the embedded default for a single replica, with the same ids and history rules as Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, FutureExt};
use shared::{ChatMessage, MsgId, Nick, RoomName};
use tokio::sync::oneshot;

use super::roster::Roster;
use super::{
    Bus, BusError, BusEvent, Draft, EventSink, History, HistoryQuery, Notice, Published,
    RosterChange, RosterOp, RosterTiming, Subscribed, new_epoch, now_ms,
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
}

#[derive(Debug, Default)]
struct Log {
    /// Offset of the newest message (the room's message count).
    offset: u64,
    messages: VecDeque<(u64, ChatMessage)>,
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
        let key = (room.clone(), draft.nick.clone(), draft.cid);
        let hash = text_hash(&draft.text);
        if let Some(&(id, stored)) = inner.cids.get(&key) {
            let result = if stored == hash {
                Ok(Published {
                    id,
                    offset: 0,
                    duplicate: true,
                })
            } else {
                Err(BusError::CidReused)
            };
            return async move { result }.boxed();
        }
        // Same rule as XADD: the clock's millisecond, or the last id's with the sequence bumped.
        let ms = now_ms();
        let id = if ms > inner.last_id.ms {
            MsgId::new(ms, 0)
        } else {
            inner.last_id.successor()
        };
        inner.last_id = id;
        inner.cids.insert(key.clone(), (id, hash));
        inner.expiries.push_back((now + self.dedupe_window, key));
        let message = ChatMessage {
            id,
            room: room.clone(),
            nick: draft.nick,
            text: draft.text,
            ts: id.ms,
        };
        let log = inner.history.entry(room.clone()).or_default();
        log.offset += 1;
        let offset = log.offset;
        log.messages.push_back((offset, message.clone()));
        while log.messages.len() > self.history_limit {
            log.messages.pop_front();
        }
        // Sent under the lock, so events leave in id order.
        if inner.subscribed.contains(room) {
            let _ = self.events.send(BusEvent::Stored(message));
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
        let roster = inner.rosters.entry(room.clone()).or_default();
        let change = roster.apply(conn, op, now_ms(), timing);
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
    ) -> BoxFuture<'static, Result<Vec<ChatMessage>, BusError>> {
        let inner = self.lock();
        let mut out: Vec<ChatMessage> = inner
            .history
            .get(room)
            .map(|log| {
                log.messages
                    .iter()
                    .rev()
                    .filter(|(_, m)| m.id < before)
                    .take(limit)
                    .map(|(_, m)| m.clone())
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
                        .messages
                        .front()
                        .is_some_and(|(offset, m)| *offset > 1 && m.id > since);
                    out.messages = log
                        .messages
                        .iter()
                        .filter(|(_, m)| m.id > since)
                        .take(query.limit)
                        .map(|(_, m)| m.clone())
                        .collect();
                }
                None => {
                    let skip = log.messages.len().saturating_sub(query.recent);
                    out.messages = log
                        .messages
                        .iter()
                        .skip(skip)
                        .map(|(_, m)| m.clone())
                        .collect();
                }
            }
        }
        async move { Ok(out) }.boxed()
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
        Draft {
            nick: Nick::parse("a").unwrap(),
            text: text.into(),
            cid: cid.into(),
        }
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
        assert_eq!(
            all.messages
                .iter()
                .map(|m| m.text.as_str())
                .collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
        let after = bus.history(&room("r"), since(ids[2])).await.unwrap();
        assert!(!after.truncated && !after.reset);
        assert_eq!(
            after.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
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
                .messages
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
            Err(BusError::CidReused)
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
