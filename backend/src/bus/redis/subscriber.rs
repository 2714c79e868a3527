//! The subscriber task: owns the Pub/Sub connection, keeps its subscriptions equal to the rooms that have local
//! members, and makes Pub/Sub's at-most-once delivery exactly-once by backfilling from the streams.
//!
//! Per subscribed room it remembers the [`Position`] it relayed last (epoch, offset, id). A message is new when its
//! id is above the last one; offsets are contiguous, so a new live message whose offset is not `last + 1` shows a
//! gap at once: the missing messages are read from the stream (`XRANGE (last_id`) and relayed first, in order,
//! before the live one; live copies of backfilled messages are dropped. An offset that goes back while the id goes
//! forward means a failover lost acknowledged writes: the stream is read the same way, and members are told.
//! After every reconnection it resubscribes, then compares each room's position with Redis and backfills. Rooms that
//! were quiet for a while are audited the same way on every health ping, so even a lost last message is found. A
//! changed epoch means Redis lost the room's history: members are told with a reset [`BusEvent::Gap`].
//!
//! The reconnect loop is ours rather than redis-rs's automatic resubscription because backfill must run at the
//! moment the subscription is live again, before live traffic for the room is relayed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shared::{BusBody, ChatMessage, MsgId, RoomName};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::feed::{Feed, FeedEvent};
use super::topology::Topology;
use super::{BACKOFF_MAX, BACKOFF_MIN, Position, REQUEST_TIMEOUT, Store, timed, unavailable};
use crate::bus::{BusError, BusEvent, EventSink};

/// Health check interval on the Pub/Sub connection, which otherwise only notices a clean close; also how often quiet
/// rooms are audited against their streams.
const PING_EVERY: Duration = Duration::from_secs(5);
/// Messages read per backfill request.
const BACKFILL_PAGE: usize = 500;
/// Rooms whose positions are read per round trip.
const POSITIONS_PER_TRIP: usize = 500;

/// A change of subscriptions, sent by [`super::RedisBus`].
pub(super) enum Command {
    Subscribe(RoomName, oneshot::Sender<Result<(), BusError>>),
    Unsubscribe(RoomName),
}

struct RoomState {
    /// What this replica relayed last; `None` until known.
    pos: Option<Position>,
    /// When the room last relayed a message (audits skip busy rooms: their offsets reveal gaps).
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

/// A decoded channel payload.
#[derive(Debug)]
enum Incoming {
    Stored {
        offset: u64,
        epoch: Arc<str>,
        message: ChatMessage,
    },
    Notice(crate::bus::Notice),
}

/// Owns the Pub/Sub connection; see the module docs.
pub(super) struct Subscriber {
    topology: Arc<Topology>,
    node: Arc<str>,
    store: Store,
    events: EventSink,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Rooms that have local members, whether or not Redis currently confirms the subscription.
    rooms: HashMap<RoomName, RoomState>,
    up: Arc<AtomicBool>,
}

enum Disconnect {
    Lost(String),
    Shutdown,
}

impl Subscriber {
    pub(super) fn new(
        topology: Arc<Topology>,
        node: Arc<str>,
        store: Store,
        events: EventSink,
        commands: mpsc::UnboundedReceiver<Command>,
        up: Arc<AtomicBool>,
    ) -> Self {
        Self {
            topology,
            node,
            store,
            events,
            commands,
            rooms: HashMap::new(),
            up,
        }
    }

    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        let mut connected_before = false;
        loop {
            let connect = tokio::time::timeout(
                REQUEST_TIMEOUT * 2,
                Feed::connect(&self.topology, &self.node),
            );
            let result = tokio::select! {
                () = shutdown.cancelled() => return,
                r = connect => r,
            };
            let reason = match result {
                Ok(Ok((feed, endpoint))) => {
                    failures = 0;
                    backoff = BACKOFF_MIN;
                    let reconnect = std::mem::replace(&mut connected_before, true);
                    match self.serve(feed, &endpoint, &shutdown, reconnect).await {
                        Disconnect::Shutdown => return,
                        Disconnect::Lost(reason) => reason,
                    }
                }
                Ok(Err(e)) => e,
                Err(_) => format!("connect timed out after {:?}", REQUEST_TIMEOUT * 2),
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
                            self.rooms.entry(room).or_insert_with(|| RoomState::new(None));
                            let _ = reply.send(Err(unavailable(&reason)));
                        }
                        Some(Command::Unsubscribe(room)) => { self.rooms.remove(&room); }
                    },
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Runs one connection until it fails or the replica shuts down.
    async fn serve(
        &mut self,
        mut feed: Feed,
        endpoint: &str,
        shutdown: &CancellationToken,
        reconnect: bool,
    ) -> Disconnect {
        if !self.rooms.is_empty() {
            let channels: Vec<String> = self
                .rooms
                .keys()
                .map(|r| self.store.keys.channel(r))
                .collect();
            if let Err(e) = timed(feed.subscribe(&channels)).await {
                return Disconnect::Lost(e.to_string());
            }
            // Subscribed again: whatever was published meanwhile is in the streams.
            let rooms: Vec<RoomName> = self.rooms.keys().cloned().collect();
            if let Err(e) = self.resync(&rooms).await {
                return Disconnect::Lost(format!("backfill after resubscribing failed: {e}"));
            }
        }
        self.up.store(true, Ordering::Relaxed);
        metrics::gauge!("roomcast_bus_up").set(1.0);
        if reconnect {
            metrics::counter!("roomcast_bus_reconnects_total").increment(1);
            info!(
                rooms = self.rooms.len(),
                endpoint, "redis subscriber reconnected, resubscribed and backfilled"
            );
        } else {
            info!(
                rooms = self.rooms.len(),
                endpoint, "redis subscriber connected"
            );
        }
        let mut failovers = self.topology.watch_failovers().await;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                () = shutdown.cancelled() => return Disconnect::Shutdown,
                event = feed.next() => match event {
                    FeedEvent::Message { channel, payload } => self.on_payload(&channel, &payload).await,
                    FeedEvent::Resubscribed(channel) => match self.store.keys.room_of_channel(&channel) {
                        Some(room) if self.rooms.get(&room).is_some_and(|s| s.pos.is_some()) => {
                            self.resync(std::slice::from_ref(&room)).await
                        }
                        _ => Ok(()),
                    },
                    FeedEvent::Closed => return Disconnect::Lost("connection closed".into()),
                },
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return Disconnect::Shutdown };
                    self.apply(&mut feed, cmd).await
                }
                switched = next_failover(&mut failovers) => {
                    if switched {
                        // The Sentinels promoted another master: both connections must follow now, not when the old
                        // master finally fails.
                        info!("Sentinel switched the master; reconnecting");
                        self.store.link.reset().await;
                        return Disconnect::Lost("Sentinel switched the master".into());
                    }
                    failovers = None;
                    Ok(())
                }
                _ = ping.tick() => {
                    match timed(feed.ping()).await {
                        Err(e) => Err(unavailable(format!("ping failed: {e}"))),
                        Ok(_) => self.audit().await,
                    }
                }
            };
            if let Err(e) = step {
                return Disconnect::Lost(e.to_string());
            }
        }
    }

    async fn apply(&mut self, feed: &mut Feed, cmd: Command) -> Result<(), BusError> {
        match cmd {
            Command::Subscribe(room, reply) => {
                if self.rooms.get(&room).is_some_and(|s| s.pos.is_some()) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                // Position first, then SUBSCRIBE: the position is a lower bound, and anything stored between the
                // two shows up as a gap on the next message (or in the next audit) and is backfilled.
                let pos = match self.store.positions(std::slice::from_ref(&room)).await {
                    Ok(mut p) => p.pop(),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                };
                let fresh = !self.rooms.contains_key(&room);
                self.rooms
                    .entry(room.clone())
                    .or_insert_with(|| RoomState::new(None))
                    .pos = pos;
                if fresh {
                    let channel = self.store.keys.channel(&room);
                    let result = timed(feed.subscribe(std::slice::from_ref(&channel))).await;
                    debug!(%room, ok = result.is_ok(), "subscribe");
                    let _ = reply.send(result.clone());
                    return result;
                }
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Command::Unsubscribe(room) => {
                if self.rooms.remove(&room).is_some() {
                    debug!(%room, "unsubscribe");
                    timed(feed.unsubscribe(&self.store.keys.channel(&room))).await?;
                }
                Ok(())
            }
        }
    }

    async fn on_payload(&mut self, channel: &str, payload: &[u8]) -> Result<(), BusError> {
        let Some(room) = self.store.keys.room_of_channel(channel) else {
            warn!(channel, "message on an unexpected channel ignored");
            return Ok(());
        };
        match decode_payload(&room, payload) {
            Ok(Incoming::Notice(notice)) => {
                if self.rooms.contains_key(&room) {
                    let _ = self.events.send(notice.event(room));
                }
                Ok(())
            }
            Ok(Incoming::Stored {
                offset,
                epoch,
                message,
            }) => self.on_stored(room, offset, epoch, message).await,
            Err(e) => {
                warn!(channel, error = %e, "undecodable bus payload ignored");
                Ok(())
            }
        }
    }

    /// Relays a live message exactly once and in order, backfilling first when its offset shows a gap.
    async fn on_stored(
        &mut self,
        room: RoomName,
        offset: u64,
        epoch: Arc<str>,
        message: ChatMessage,
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
            Some(pos) if message.id <= pos.id || offset == pos.offset + 1 => {}
            Some(pos) => {
                // A skipped offset (Pub/Sub lost messages), or one that went back with a newer id (a failover lost
                // acknowledged writes and the new master reused offsets): read the stream from the last id.
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

    /// Relays the stored messages after the room's position, oldest first, until `until` or the end of the stream.
    /// Messages are new when their id is above the position's; a hole in the offsets (trimmed before they were
    /// relayed, or lost in a failover) is announced with a gap, never skipped silently.
    async fn backfill(&mut self, room: &RoomName, until: MsgId) -> Result<(), BusError> {
        loop {
            let Some(mut pos) = self.rooms.get(room).and_then(|s| s.pos.clone()) else {
                return Ok(());
            };
            if pos.id >= until {
                return Ok(());
            }
            let page = self.store.range_after(room, pos.id, BACKFILL_PAGE).await?;
            let full = page.len() == BACKFILL_PAGE;
            let mut relayed = 0u64;
            for entry in page {
                if entry.message.id <= pos.id {
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
                pos.id = entry.message.id;
                relayed += 1;
                let _ = self.events.send(BusEvent::Stored(entry.message));
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

    /// Compares each room's position with Redis: adopts it where unknown, backfills where behind, resets where the
    /// epoch changed.
    async fn resync(&mut self, rooms: &[RoomName]) -> Result<(), BusError> {
        for chunk in rooms.chunks(POSITIONS_PER_TRIP) {
            let current = self.store.positions(chunk).await?;
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
                    Some(pos) if now.id > pos.id => self.backfill(room, now.id).await?,
                    Some(_) => {}
                }
            }
        }
        Ok(())
    }

    /// Resyncs the rooms that relayed nothing for a ping interval: a lost last message leaves no later offset to
    /// reveal it.
    async fn audit(&mut self) -> Result<(), BusError> {
        let quiet: Vec<RoomName> = self
            .rooms
            .iter()
            .filter(|(_, s)| s.last_event.elapsed() >= PING_EVERY)
            .map(|(r, _)| r.clone())
            .collect();
        self.resync(&quiet).await
    }
}

/// Waits for the next `+switch-master` event: true for one, false when the watch ended; never resolves without a
/// watch.
async fn next_failover(watch: &mut Option<redis::aio::PubSubStream>) -> bool {
    use futures_util::StreamExt;
    match watch {
        Some(stream) => stream.next().await.is_some(),
        None => std::future::pending().await,
    }
}

/// Decodes a channel payload: `<id> <offset> <epoch> <body>` for stored messages, `- <body>` for presence.
fn decode_payload(room: &RoomName, payload: &[u8]) -> Result<Incoming, String> {
    let text = std::str::from_utf8(payload).map_err(|e| e.to_string())?;
    if let Some(json) = text.strip_prefix("- ") {
        return match serde_json::from_str(json).map_err(|e| e.to_string())? {
            BusBody::Presence(notice) => Ok(Incoming::Notice(crate::bus::Notice::Presence(notice))),
            BusBody::Typing(notice) => Ok(Incoming::Notice(crate::bus::Notice::Typing(notice))),
            BusBody::Message { .. } => Err("a stored message without an id".into()),
        };
    }
    let mut parts = text.splitn(4, ' ');
    let (Some(id), Some(offset), Some(epoch), Some(json)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("expected `<id> <offset> <epoch> <body>`".into());
    };
    let id: MsgId = id
        .parse()
        .map_err(|e: shared::ParseMsgIdError| e.to_string())?;
    let offset: u64 = offset
        .parse()
        .map_err(|_| format!("bad offset {offset:?}"))?;
    match serde_json::from_str(json).map_err(|e| e.to_string())? {
        BusBody::Message { nick, text } => Ok(Incoming::Stored {
            offset,
            epoch: epoch.into(),
            message: ChatMessage {
                id,
                room: room.clone(),
                nick,
                text,
                ts: id.ms,
            },
        }),
        BusBody::Presence(_) | BusBody::Typing(_) => Err("a notice with an id".into()),
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
    fn payloads_decode() {
        let room = RoomName::parse("r").unwrap();
        let Ok(Incoming::Stored {
            offset,
            epoch,
            message,
        }) = decode_payload(
            &room,
            br#"5-1 7 ab12 {"kind":"message","nick":"a","text":"x y"}"#,
        )
        else {
            panic!("a stored message")
        };
        assert_eq!((offset, &*epoch), (7, "ab12"));
        assert_eq!(
            (message.id, message.text.as_str()),
            (MsgId::new(5, 1), "x y")
        );
        assert!(matches!(
            decode_payload(
                &room,
                br#"- {"kind":"presence","nick":"a","event":"joined","ts":1,"node":"n","conn":2}"#,
            ),
            Ok(Incoming::Notice(crate::bus::Notice::Presence(_)))
        ));
        assert!(decode_payload(&room, b"garbage").is_err());
        assert!(decode_payload(&room, b"x-1 1 e {}").is_err());
        assert!(decode_payload(&room, br#"5-1 {"kind":"message","nick":"a","text":"x"}"#).is_err());
    }
}
