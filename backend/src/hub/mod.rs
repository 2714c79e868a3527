//! The room core, free of any transport: everything a replica knows about rooms and the rules every way into a
//! room goes through. The WebSocket session, the HTTP API and the `roomcast publish` CLI all drive it through one
//! entry point, [`Participant::handle`]; nothing here knows about axum, HTTP, tokens or sockets (a test checks).
//!
//! - [`Hub`]: the shared handles — the bus, the local membership registry, presence, the limits announced to
//!   clients, this replica's node id.
//! - [`participant`]: one connection's (or one publisher's) rooms and the rules of each request.
//! - [`registry`]: local membership and fan-out of encoded frames to members' queues.
//! - [`dispatch`]: the task that fans bus events out to local members in per-room waves.
//! - [`frames`]: the one place a bus record or notice becomes a frame.
//! - [`presence`]: members online across replicas (roster changes, announcements, grace periods, heartbeat).

pub mod admission;
pub mod dispatch;
pub mod frames;
pub mod participant;
pub mod presence;
pub mod reads;
pub mod registry;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shared::Limits;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, now_ms};
use crate::config::Config;

pub use participant::{Close, Messages, Participant, Reply, Request};
pub use registry::{ConnId, Member, Outbound, Outlet, Rooms};

/// The room core's shared state, cloned into every participant: one pointer, so each connection pays 8 bytes
/// for it, not a copy of every handle.
#[derive(Clone, Debug)]
pub struct Hub(Arc<HubState>);

/// What a [`Hub`] points to (its fields read through the hub).
pub struct HubState {
    /// The validated configuration (the room rules read their limits from it).
    pub config: Arc<Config>,
    /// This replica's node id.
    pub node: Arc<str>,
    /// The bus shared with the other replicas.
    pub bus: Arc<dyn Bus>,
    /// Local room membership.
    pub rooms: Rooms,
    /// The limits announced to clients in `welcome`.
    pub limits: Arc<Limits>,
    /// Grace-period checks pending on this replica.
    pub sweeps: presence::Sweeps,
    /// Cancelled when the replica shuts down.
    pub shutdown: CancellationToken,
    /// How many new connections and joins the replica takes per second.
    pub admission: Arc<admission::Admission>,
    /// Since when the bus has been down, in ms since the epoch (0: up), as [`Hub::watch_bus`] last saw it.
    pub bus_down_since: std::sync::atomic::AtomicU64,
}

impl std::ops::Deref for Hub {
    type Target = HubState;

    fn deref(&self) -> &HubState {
        &self.0
    }
}

impl std::fmt::Debug for HubState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// The hub of a replica (or of a one-off publisher) on `bus`.
    pub fn new(
        config: Arc<Config>,
        node: Arc<str>,
        bus: Arc<dyn Bus>,
        shutdown: CancellationToken,
    ) -> Self {
        let rooms = Rooms::new(
            bus.clone(),
            node.clone(),
            usize::try_from(config.queue_max_bytes).unwrap_or(usize::MAX),
        );
        let limits = Limits {
            max_frame_bytes: shared::validate::MAX_FRAME_BYTES,
            max_text_chars: shared::validate::TEXT_MAX_CHARS,
            max_rooms: config.max_rooms as usize,
            history_on_join: config.history_on_join as usize,
            sends_per_sec: config.sends_per_sec,
            send_burst: config.send_burst,
        };
        Self(Arc::new(HubState {
            node,
            bus,
            rooms,
            limits: Arc::new(limits),
            sweeps: presence::Sweeps::default(),
            shutdown,
            admission: Arc::new(admission::Admission {
                connections: admission::Gate::new(config.admit_connections_per_sec),
                joins: admission::Gate::new(config.admit_joins_per_sec),
            }),
            config,
            bus_down_since: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Watches the bus until `stop`: when it went down, for [`Hub::cut_off`].
    pub async fn watch_bus(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => self.saw_bus(self.bus.is_up(), now_ms()),
            }
        }
    }

    fn saw_bus(&self, up: bool, now: u64) {
        use std::sync::atomic::Ordering;
        if up {
            self.bus_down_since.store(0, Ordering::Relaxed);
        } else {
            let _ = self.bus_down_since.compare_exchange(
                0,
                now.max(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Whether this replica has been cut off from the bus for longer than `--cutoff-close-secs`: then its
    /// connections close and new ones are refused, so its clients resume where the bus is reachable.
    pub fn cut_off(&self) -> bool {
        let since = self
            .bus_down_since
            .load(std::sync::atomic::Ordering::Relaxed);
        self.config.cutoff_close_secs > 0
            && since > 0
            && !self.bus.is_up()
            && now_ms().saturating_sub(since) >= self.config.cutoff_close_secs * 1000
    }

    /// The revoked sessions this replica knows (kept current by the bus): what an upgrade and a token's API request
    /// are checked against, and what a token's connection watches.
    pub fn revocations(&self) -> &crate::bus::Revocations {
        self.bus.revocations()
    }
}

/// What a verified sign-in token grants one connection: the room rules refuse other nicks and rooms, and the
/// connection ends when it expires. How the token is verified is the transport's business.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who the token is for (its `sub`, else its nick): read positions follow this person across devices.
    pub person: String,
    /// The only nick the connection may use.
    pub nick: String,
    /// The rooms it may join; `None`: any room.
    pub rooms: Option<HashSet<String>>,
    /// When the token expires (seconds since the Unix epoch).
    pub expires: u64,
    /// When the token was issued (its `iat`, seconds since the Unix epoch), if it says: a revocation of the person
    /// closes the connection unless the token is newer (without `iat`, it cannot be).
    pub issued: Option<u64>,
    /// The rooms it moderates (`*`: every room).
    pub moderates: HashSet<String>,
}

impl Grant {
    /// Whether the connection moderates `room`.
    pub fn moderates(&self, room: &str) -> bool {
        self.moderates.contains(room) || self.moderates.contains("*")
    }

    /// How long from now until the connection must close: the token's expiry plus `grace`.
    pub fn remaining(&self, grace: Duration) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(self.expires.saturating_sub(now)) + grace
    }
}

#[cfg(test)]
mod tests {
    /// The room core stays free of any transport: no file under `hub/` names axum, the HTTP layer, the token
    /// verifier, the WebSocket session or the replica's `AppState`.
    #[test]
    fn the_hub_imports_no_transport() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hub");
        let forbidden = [
            "axum::",
            "crate::http",
            "crate::api",
            "crate::auth",
            "crate::session",
            "AppState",
            "tungstenite::",
        ];
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let code = std::fs::read_to_string(&path).unwrap();
            // This test names them itself.
            let code = code.split("mod tests {").next().unwrap_or(&code);
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{} mentions {word}: the room core must not depend on a transport",
                    path.display()
                );
            }
            checked += 1;
        }
        assert!(
            checked >= 5,
            "read only {checked} files of {}",
            dir.display()
        );
    }
}
