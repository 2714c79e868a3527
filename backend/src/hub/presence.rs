//! Members online: runs the roster changes the room rules ask for, announces what they changed (joined, left,
//! renamed) to every replica, ends grace periods on time, and keeps this replica's members alive with a heartbeat.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use shared::{Nick, PresenceKind, RoomName};
use tracing::debug;

use super::Hub;
use super::registry::ConnId;
use crate::bus::{BusError, Notice, PresenceNotice, RosterChange, RosterOp, RosterTiming, now_ms};
use crate::config::Config;

/// The connection a notice comes from when no connection caused it (a grace period ended, a replica vanished):
/// every member hears it.
const NOBODY: ConnId = u64::MAX;

/// Rooms refreshed together by the heartbeat.
const HEARTBEAT_BATCH: usize = 32;

/// A replica's connections count in rosters until this many heartbeats went missing.
const HEARTBEATS_MISSED: u64 = 3;

/// Rooms with a grace-period check pending on this replica, so a crowd leaving at once schedules one check per room.
#[derive(Debug, Clone, Default)]
pub struct Sweeps(Arc<Mutex<HashSet<RoomName>>>);

impl Sweeps {
    fn claim(&self, room: &RoomName) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(room.clone())
    }

    fn release(&self, room: &RoomName) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(room);
    }
}

/// The roster timing the configuration asks for.
pub fn timing(config: &Config) -> RosterTiming {
    RosterTiming {
        grace_ms: config.presence_grace_ms,
        alive_ms: config.presence_heartbeat_ms * HEARTBEATS_MISSED,
    }
}

/// Applies `op` for connection `conn` and tells the room what changed. A refused nick (`taken`) changes nothing.
pub async fn apply(
    hub: &Hub,
    room: &RoomName,
    conn: ConnId,
    op: RosterOp,
) -> Result<RosterChange, BusError> {
    let (nick, from) = match &op {
        RosterOp::Join { nick, .. } => (Some(nick.clone()), None),
        RosterOp::Rename { from, to, .. } => (Some(to.clone()), Some(from.clone())),
        RosterOp::Leave { .. } | RosterOp::Refresh | RosterOp::List => (None, None),
    };
    let leaving = matches!(op, RosterOp::Leave { .. });
    let timing = timing(&hub.config);
    let change = hub.bus.roster(room, conn, op, timing).await?;
    if change.taken {
        return Ok(change);
    }
    let mut departed = change.departed.clone();
    if let (true, Some(nick)) = (change.arrived, nick) {
        // The old nick went with this very change: the others see one rename, not a join and a leave.
        let renamed = from.filter(|f| departed.contains(f));
        departed.retain(|d| Some(d) != renamed.as_ref());
        let event = if renamed.is_some() {
            PresenceKind::Renamed
        } else {
            PresenceKind::Joined
        };
        announce(hub, room, nick, event, renamed, conn);
    }
    for nick in departed {
        announce(hub, room, nick, PresenceKind::Left, None, NOBODY);
    }
    if leaving && timing.grace_ms > 0 {
        sweep_later(hub, room, timing.grace_ms);
    }
    Ok(change)
}

/// After a leave: once the grace period is over, checks the room again so a member who did not come back is
/// announced as gone on time (any replica's check does it, exactly once).
fn sweep_later(hub: &Hub, room: &RoomName, grace_ms: u64) {
    if !hub.sweeps.claim(room) {
        return;
    }
    let (hub, room) = (hub.clone(), room.clone());
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(grace_ms + 50)).await;
        hub.sweeps.release(&room);
        if let Err(e) = apply(&hub, &room, NOBODY, RosterOp::Refresh).await {
            debug!(%room, error = %e, "grace check failed; the next heartbeat retries");
        }
    });
}

/// Tells the room's members on every replica about a change. Best effort: not stored.
fn announce(
    hub: &Hub,
    room: &RoomName,
    nick: Nick,
    event: PresenceKind,
    from: Option<Nick>,
    conn: ConnId,
) {
    let notice = PresenceNotice {
        nick,
        event,
        from,
        ts: now_ms(),
        node: hub.node.to_string(),
        conn,
    };
    let fut = hub.bus.announce(room, &Notice::Presence(notice));
    let room = room.clone();
    tokio::spawn(async move {
        if let Err(e) = fut.await {
            debug!(%room, error = %e, "presence notice not delivered");
        }
    });
}

/// Every heartbeat, for each room with local members: this replica is alive, and members whose grace ended or
/// whose replica vanished are announced as gone. Runs until `stop` (after a drain: its connections are members
/// until they close).
pub async fn heartbeat(hub: Hub, stop: tokio_util::sync::CancellationToken) {
    let every = Duration::from_millis(hub.config.presence_heartbeat_ms);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        // Spread over half the interval in small batches: a burst of one script per room would queue every
        // message published meanwhile behind it.
        let rooms = hub.rooms.names();
        let batches = rooms.len().div_ceil(HEARTBEAT_BATCH).max(1);
        let pause = every / 2 / u32::try_from(batches).unwrap_or(u32::MAX);
        for batch in rooms.chunks(HEARTBEAT_BATCH) {
            let refreshes = batch
                .iter()
                .map(|room| apply(&hub, room, NOBODY, RosterOp::Refresh));
            for (room, result) in batch
                .iter()
                .zip(futures_util::future::join_all(refreshes).await)
            {
                if let Err(e) = result {
                    debug!(%room, error = %e, "presence heartbeat failed");
                }
            }
            tokio::time::sleep(pause).await;
        }
    }
}
