//! The in-memory bus: the embedded default for a single replica, with the same ids and history rules as Redis.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, PoisonError};

use futures_util::future::{BoxFuture, FutureExt};
use shared::{BusBody, ChatMessage, MsgId, Nick, RoomName};
use tokio::sync::oneshot;

use super::{Bus, BusError, BusEvent, EventSink, Subscribed, now_ms};

/// A bus that lives inside one replica. Ids follow the Redis Stream rule (`<ms>-<seq>`, strictly increasing) so
/// clients cannot tell the two apart. Histories are capped per room; the number of rooms is not.
#[derive(Debug)]
pub struct MemoryBus {
    inner: Mutex<Inner>,
    events: EventSink,
    history_limit: usize,
}

#[derive(Debug, Default)]
struct Inner {
    last_id: MsgId,
    history: HashMap<RoomName, VecDeque<ChatMessage>>,
    subscribed: HashSet<RoomName>,
}

impl MemoryBus {
    /// A bus that keeps `history_limit` messages per room and delivers events to `events`.
    pub fn new(events: EventSink, history_limit: usize) -> Self {
        Self {
            inner: Mutex::default(),
            events,
            history_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Bus for MemoryBus {
    fn publish(
        &self,
        room: &RoomName,
        nick: &Nick,
        text: &str,
    ) -> BoxFuture<'static, Result<MsgId, BusError>> {
        let mut inner = self.lock();
        // Same rule as XADD: the clock's millisecond, or the last id's with the sequence bumped.
        let now = now_ms();
        let id = if now > inner.last_id.ms {
            MsgId::new(now, 0)
        } else {
            inner.last_id.successor()
        };
        inner.last_id = id;
        let message = ChatMessage {
            id,
            room: room.clone(),
            nick: nick.clone(),
            text: text.to_owned(),
            ts: id.ms,
        };
        let log = inner.history.entry(room.clone()).or_default();
        log.push_back(message);
        while log.len() > self.history_limit {
            log.pop_front();
        }
        // Sent under the lock, so events leave in id order.
        if inner.subscribed.contains(room) {
            let _ = self.events.send(BusEvent {
                room: room.clone(),
                id: Some(id),
                body: BusBody::Message {
                    nick: nick.clone(),
                    text: text.to_owned(),
                },
            });
        }
        async move { Ok(id) }.boxed()
    }

    fn announce(
        &self,
        room: &RoomName,
        body: &BusBody,
    ) -> BoxFuture<'static, Result<(), BusError>> {
        if self.lock().subscribed.contains(room) {
            let _ = self.events.send(BusEvent {
                room: room.clone(),
                id: None,
                body: body.clone(),
            });
        }
        async { Ok(()) }.boxed()
    }

    fn history(
        &self,
        room: &RoomName,
        since: Option<MsgId>,
        recent: usize,
    ) -> BoxFuture<'static, Result<Vec<ChatMessage>, BusError>> {
        let inner = self.lock();
        let out = match inner.history.get(room) {
            None => Vec::new(),
            Some(log) => match since {
                Some(since) => log.iter().filter(|m| m.id > since).cloned().collect(),
                None => log
                    .iter()
                    .skip(log.len().saturating_sub(recent))
                    .cloned()
                    .collect(),
            },
        };
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

    #[tokio::test]
    async fn ids_increase_and_history_is_capped() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let bus = MemoryBus::new(tx, 3);
        let nick = Nick::parse("a").unwrap();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(
                bus.publish(&room("r"), &nick, &i.to_string())
                    .await
                    .unwrap(),
            );
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let all = bus.history(&room("r"), None, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(),
            ["2", "3", "4"]
        );
        let after = bus.history(&room("r"), Some(ids[2]), 10).await.unwrap();
        assert_eq!(after.iter().map(|m| m.id).collect::<Vec<_>>(), &ids[3..]);
        assert!(
            bus.history(&room("other"), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn only_subscribed_rooms_produce_events() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let bus = MemoryBus::new(tx, 10);
        let nick = Nick::parse("a").unwrap();
        bus.publish(&room("quiet"), &nick, "x").await.unwrap();
        bus.subscribe(&room("loud")).await.unwrap().unwrap();
        let id = bus.publish(&room("loud"), &nick, "y").await.unwrap();
        let ev = rx.try_recv().unwrap();
        assert_eq!((ev.room, ev.id), (room("loud"), Some(id)));
        assert!(rx.try_recv().is_err());
        bus.unsubscribe(&room("loud"));
        bus.publish(&room("loud"), &nick, "z").await.unwrap();
        assert!(rx.try_recv().is_err());
    }
}
