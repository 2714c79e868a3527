//! The subscriber task: owns the Pub/Sub connection, keeps its subscriptions equal to the rooms that have local
//! members, and makes Pub/Sub's at-most-once delivery exactly-once by feeding every live message, resubscription and
//! quiet-room audit to the [`Tracker`], which relays, drops duplicates and backfills from the streams.
//!
//! After every reconnection it resubscribes, then has the tracker compare each room's position with Redis and
//! backfill. Rooms that were quiet for a while are audited the same way on every health ping, so even a lost last
//! message is found.
//!
//! It also keeps this replica's list of revoked sessions current: the revocations' channel is subscribed with the
//! rooms' on every connection, the whole list is loaded once the subscription is live (what a replica that started
//! later, or was cut off, missed), and reloaded whenever the counter Redis keeps of its changes moved (checked on
//! every health ping: a relayed revocation that Pub/Sub lost is found within one). What this replica knows and
//! Redis does not, after Redis restarted empty, is written back.
//!
//! The reconnect loop is ours rather than redis-rs's automatic resubscription because backfill must run at the
//! moment the subscription is live again, before live traffic for the room is relayed.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shared::RoomName;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::codec::{self, Incoming};
use super::feed::{Feed, FeedEvent};
use super::link::Link;
use super::topology::Topology;
use super::tracker::Tracker;
use super::{BACKOFF_MAX, BACKOFF_MIN, Keys, REQUEST_TIMEOUT, Store, timed, unavailable};
use crate::bus::{BusError, EventSink, Revocations};

/// Health check interval on the Pub/Sub connection, which otherwise only notices a clean close; also how often quiet
/// rooms are audited against their streams.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How often a replica on a Sentinel target asks which master the Sentinels name ([`Topology::master_moved`]).
const MASTER_POLL: Duration = Duration::from_secs(1);

/// A change of subscriptions, sent by [`super::RedisBus`].
pub(super) enum Command {
    Subscribe(RoomName, oneshot::Sender<Result<(), BusError>>),
    Unsubscribe(RoomName),
}

/// Owns the Pub/Sub connection; see the module docs.
pub(super) struct Subscriber {
    topology: Arc<Topology>,
    node: Arc<str>,
    /// The command connection, dropped when Sentinel switches the master.
    link: Arc<Link>,
    keys: Keys,
    commands: mpsc::UnboundedReceiver<Command>,
    /// Rooms that have local members, whether or not Redis currently confirms the subscription, and what each
    /// relayed last.
    tracker: Tracker<Store>,
    up: Arc<AtomicBool>,
    /// The store, for the revocations.
    store: Store,
    /// Revoked sessions, as this replica knows them.
    revocations: Revocations,
    /// The revocations' change counter when the list was last loaded.
    revoked_seq: Option<u64>,
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
        revocations: Revocations,
    ) -> Self {
        Self {
            topology,
            node,
            link: store.link.clone(),
            keys: store.keys.clone(),
            tracker: Tracker::new(store.clone(), events),
            commands,
            up,
            store,
            revocations,
            revoked_seq: None,
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
                            self.tracker.track(room);
                            let _ = reply.send(Err(unavailable(&reason)));
                        }
                        Some(Command::Unsubscribe(room)) => { self.tracker.untrack(&room); }
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
        let channels: Vec<String> = std::iter::once(self.keys.revoked_channel())
            .chain(self.tracker.rooms().map(|r| self.keys.channel(r)))
            .collect();
        if let Err(e) = timed(feed.subscribe(&channels)).await {
            return Disconnect::Lost(e.to_string());
        }
        if !self.tracker.is_empty() {
            // Subscribed again: whatever was published meanwhile is in the streams.
            if let Err(e) = self.tracker.resync_all().await {
                return Disconnect::Lost(format!("backfill after resubscribing failed: {e}"));
            }
        }
        // Subscribed: revocations made from now on arrive on the channel, those made before are in the list. The
        // rooms come first, and a failure here never drops the feed: the next health check loads it again.
        self.try_load_revocations().await;
        self.up.store(true, Ordering::Relaxed);
        metrics::gauge!("roomcast_bus_up").set(1.0);
        if reconnect {
            metrics::counter!("roomcast_bus_reconnects_total").increment(1);
            info!(
                rooms = self.tracker.len(),
                endpoint, "redis subscriber reconnected, resubscribed and backfilled"
            );
        } else {
            info!(
                rooms = self.tracker.len(),
                endpoint, "redis subscriber connected"
            );
        }
        let mut failovers = self.topology.watch_failovers().await;
        let topology = self.topology.clone();
        let master_moved = topology.master_moved(MASTER_POLL);
        tokio::pin!(master_moved);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                () = shutdown.cancelled() => return Disconnect::Shutdown,
                event = feed.next() => match event {
                    FeedEvent::Message { channel, payload } => self.on_payload(&channel, &payload).await,
                    FeedEvent::Resubscribed(channel) if channel == self.keys.revoked_channel() => {
                        self.try_load_revocations().await;
                        Ok(())
                    }
                    FeedEvent::Resubscribed(channel) => match self.keys.room_of_channel(&channel) {
                        Some(room) if self.tracker.is_positioned(&room) => {
                            self.tracker.resync(std::slice::from_ref(&room)).await
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
                        self.link.reset().await;
                        return Disconnect::Lost("Sentinel switched the master".into());
                    }
                    failovers = None;
                    Ok(())
                }
                () = &mut master_moved => {
                    // The Sentinels name another master, and no `+switch-master` reached this replica (it was cut
                    // off from them when it was published): follow now.
                    info!("the Sentinels name another master; reconnecting");
                    self.link.reset().await;
                    return Disconnect::Lost("the Sentinels name another master".into());
                }
                _ = ping.tick() => {
                    match timed(feed.ping()).await {
                        Err(e) => Err(unavailable(format!("ping failed: {e}"))),
                        Ok(_) => {
                            self.audit_revocations().await;
                            self.tracker.audit(PING_EVERY).await
                        }
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
                if self.tracker.is_positioned(&room) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                // Position first, then SUBSCRIBE: the position is a lower bound, and anything stored between the
                // two shows up as a gap on the next message (or in the next audit) and is backfilled.
                let fresh = match self.tracker.enter(&room).await {
                    Ok(fresh) => fresh,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                };
                if fresh {
                    let channel = self.keys.channel(&room);
                    let result = timed(feed.subscribe(std::slice::from_ref(&channel))).await;
                    debug!(%room, ok = result.is_ok(), "subscribe");
                    let _ = reply.send(result.clone());
                    return result;
                }
                let _ = reply.send(Ok(()));
                Ok(())
            }
            Command::Unsubscribe(room) => {
                if self.tracker.untrack(&room) {
                    debug!(%room, "unsubscribe");
                    timed(feed.unsubscribe(&self.keys.channel(&room))).await?;
                }
                Ok(())
            }
        }
    }

    /// Loads every revocation Redis holds (and, with an archive, every one it holds), and writes back what either
    /// store lacks of what this replica knows: a Redis restarted empty gets the list back from the archive, or
    /// from any replica that knew it, and a revocation the archive missed while it was down reaches it.
    async fn load_revocations(&mut self) -> Result<(), BusError> {
        let (seq, list) = self.store.revocations().await?;
        let mut closed = self.revocations.learn_all(
            list.iter()
                .map(|(person, before)| (person.clone(), *before)),
        );
        let archive = self
            .store
            .archiving
            .as_ref()
            .map(|a| (a.clone(), a.options.archive.clone()));
        let mut archived = None;
        if let Some((archiving, archive)) = &archive {
            match archive.revocations().await {
                Ok(rows) => {
                    closed += self.revocations.learn_all(rows.iter().cloned());
                    archived = Some(rows.into_iter().collect::<HashMap<_, _>>());
                }
                Err(e) => {
                    archiving.status_failed(&e);
                    warn!(error = %e, "cannot read the revoked sessions from the archive; retrying on the next audit");
                }
            }
        }
        // Whether or not the archive answered: Redis's list is the one every replica relays by.
        self.revocations.set_loaded();
        if closed > 0 {
            info!(closed, "closed connections whose sessions were revoked");
        }
        let mut written_back = 0;
        for (person, before) in self.revocations.all() {
            if list.get(&person).is_none_or(|stored| *stored < before) {
                self.store.revoke(&person, before, false).await?;
                written_back += 1;
            }
            let unarchived = archived
                .as_ref()
                .is_some_and(|rows| rows.get(&person).is_none_or(|stored| *stored < before));
            if unarchived
                && let Some((archiving, archive)) = &archive
                && let Err(e) = archive.revoke(&person, before).await
            {
                archiving.status_failed(&e);
                archived = None;
                warn!(error = %e, "cannot archive a revocation; retrying on the next audit");
                break;
            }
        }
        if written_back > 0 {
            warn!(
                written_back,
                "Redis lacked revoked sessions this replica knows; wrote them back"
            );
        }
        // After a write-back the counter moved: the next audit reads the list once more, which changes nothing.
        // Without the archive's list, that audit tries the archive again.
        self.revoked_seq = (archive.is_none() || archived.is_some()).then_some(seq);
        debug!(revoked = list.len(), seq, "revoked sessions loaded");
        Ok(())
    }

    /// [`Subscriber::load_revocations`], logging a failure and leaving the reload to the next health check.
    async fn try_load_revocations(&mut self) {
        if let Err(e) = self.load_revocations().await {
            self.revoked_seq = None;
            warn!(error = %e, "cannot load the revoked sessions now; retrying at the next health check");
        }
    }

    /// Reloads the revocations if their counter moved since they were loaded (a relay lost, Redis restarted), or
    /// if the last load failed.
    async fn audit_revocations(&mut self) {
        match self.store.revocations_seq().await {
            Ok(seq) if self.revoked_seq == Some(seq) => {}
            Ok(_) => self.try_load_revocations().await,
            Err(e) => debug!(error = %e, "cannot read the revocations' counter now"),
        }
    }

    /// A revocation relayed by another replica (or this one): `<issued_before> <person>`.
    fn on_revocation(&self, payload: &[u8]) {
        let text = String::from_utf8_lossy(payload);
        let Some((before, person)) = text
            .split_once(' ')
            .and_then(|(before, person)| Some((before.parse::<u64>().ok()?, person)))
        else {
            warn!(payload = %text, "undecodable revocation ignored");
            return;
        };
        let closed = self.revocations.learn(person, before);
        info!(closed, before, person, "sessions revoked");
    }

    async fn on_payload(&mut self, channel: &str, payload: &[u8]) -> Result<(), BusError> {
        if channel == self.keys.revoked_channel() {
            self.on_revocation(payload);
            return Ok(());
        }
        let Some(room) = self.keys.room_of_channel(channel) else {
            warn!(channel, "message on an unexpected channel ignored");
            return Ok(());
        };
        match codec::decode_payload(&room, payload) {
            Ok(Incoming::Notice(notice)) => {
                self.tracker.notice(room, notice);
                Ok(())
            }
            Ok(Incoming::Stored {
                offset,
                epoch,
                prev,
                record,
            }) => {
                self.tracker
                    .on_stored(room, offset, epoch, prev, record)
                    .await
            }
            Err(e) => {
                warn!(channel, error = %e, "undecodable bus payload ignored");
                Ok(())
            }
        }
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

/// Spreads reconnect attempts of many replicas so they do not hit a restarted Redis in lockstep.
fn jitter(d: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 2000.0)
}
