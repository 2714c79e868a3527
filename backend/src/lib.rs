//! A Roomcast backend replica as a library: `main.rs` parses the config and calls [`run`]; tests call it directly.
//!
//! Map: [`config`] (flags), [`hub`] (the room core: rules, membership, fan-out, presence — no transport),
//! [`session`] (one WebSocket), [`http`] (routes), [`serve`] (the HTTP server loop and its time limits), [`api`] (the
//! HTTP API), [`auth`] (tokens), [`bus`] (Redis or in-memory relay and history), [`error`] (request errors and their
//! frames), [`metrics`], and `fuzzing` (the checks the fuzz targets of `fuzz/` run on arbitrary input).

pub mod api;
pub mod archive;
pub mod auth;
pub mod bus;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod ratelimit;
pub mod serve;
pub mod session;

use shared::{ServerMsg, frame};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

pub use config::Config;
pub use http::app;

use bus::Bus;
use hub::{ConnId, Hub, Participant};

/// How long shutdown waits for connections to close after the drain window (`--drain-secs`) has passed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything a request handler needs: the room core and the HTTP layer's own parts, cheap handles cloned per
/// request.
#[derive(Clone)]
pub struct AppState {
    /// The room core every WebSocket, API request and CLI run goes through.
    pub hub: Hub,
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Tracks session tasks so shutdown can wait for their close frames.
    pub tracker: TaskTracker,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Rate limits of the HTTP API, per key.
    pub api_buckets: api::KeyBuckets,
    /// Verifies WebSocket tokens; `None` when authentication is off.
    pub auth: Option<auth::Verifier>,
    next_conn: Arc<AtomicU64>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("node", &self.hub.node)
            .finish_non_exhaustive()
    }
}

impl AppState {
    fn next_conn(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// Errors that stop a replica from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener's address could not be read.
    #[error("cannot read the listening address: {0}")]
    Listener(#[source] std::io::Error),
    /// The Redis URL could not be used.
    #[error("cannot use the Redis URL: {0}")]
    Bus(#[source] bus::BusError),
    /// The archive (PostgreSQL) cannot be used.
    #[error(transparent)]
    Archive(#[from] archive::StartError),
    /// The authentication settings cannot be used.
    #[error("{0}")]
    Auth(String),
}

/// Serves a replica on `listener` until `shutdown` is cancelled, then closes every WebSocket with 1001 and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), StartError> {
    let addr = listener.local_addr().map_err(StartError::Listener)?;
    let node: Arc<str> = match &config.node_id {
        Some(id) => id.as_str().into(),
        None => format!(
            "{}:{}",
            gethostname::gethostname().to_string_lossy(),
            addr.port()
        )
        .into(),
    };
    let span = info_span!("replica", node = %node);
    async move {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        // The bus outlives the drain: connections waiting for their moment to close keep receiving their rooms.
        let bus_stop = CancellationToken::new();
        let _stop_bus = bus_stop.clone().drop_guard();
        let bus = start_bus(&config, node.clone(), events_tx, &bus_stop, true).await?;
        let auth = auth::Verifier::from_config(&config).map_err(StartError::Auth)?;
        if auth.is_some() {
            info!("WebSocket connections need a token (JWT)");
        }
        let config = Arc::new(config);
        let drain = DRAIN_TIMEOUT + Duration::from_secs(config.drain_secs);
        let hub = Hub::new(Arc::clone(&config), node.clone(), bus, shutdown.clone());
        tokio::spawn(
            hub.rooms
                .clone()
                .dispatch(
                    events_rx,
                    Duration::from_millis(config.fanout_max_delay_ms.into()),
                )
                .in_current_span(),
        );
        tokio::spawn(hub::presence::heartbeat(hub.clone(), bus_stop.clone()).in_current_span());
        tokio::spawn(hub.clone().watch_bus(bus_stop.clone()).in_current_span());
        let state = AppState {
            hub,
            config,
            tracker: TaskTracker::new(),
            metrics: metrics::handle(),
            next_conn: Arc::new(AtomicU64::new(1)),
            api_buckets: api::KeyBuckets::default(),
            auth,
        };
        let tracker = state.tracker.clone();
        info!(%addr, "listening");
        // Chat frames are small and latency-bound: never let Nagle hold one back waiting for an ACK.
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                warn!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        // A drain keeps the port open until its connections are gone: `/readyz` answers 503 and new WebSockets are
        // turned away with 503 meanwhile, so a load balancer sees the replica leave instead of a refused connection.
        let drained = {
            let (shutdown, tracker) = (shutdown.clone(), tracker.clone());
            async move {
                shutdown.cancelled().await;
                tracker.close();
                let _ = tokio::time::timeout(drain, tracker.wait()).await;
            }
        };
        let header_timeout = state.config.header_timeout();
        serve::serve(listener, app(state), header_timeout, drained).await;
        tracker.close();
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            warn!(
                open = tracker.len(),
                "connections still open after {drain:?}; exiting anyway"
            );
        }
        info!("stopped");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Starts the bus the configuration names: Redis (any topology) or, without `--redis-url`, the in-memory bus; with
/// `--database-url`, the archive behind it (archiving on this replica when `archiver`: a one-shot command only reads
/// and writes through it).
async fn start_bus(
    config: &Config,
    node: Arc<str>,
    events_tx: mpsc::UnboundedSender<bus::BusEvent>,
    shutdown: &CancellationToken,
    archiver: bool,
) -> Result<Arc<dyn Bus>, StartError> {
    let archive = match &config.database_url {
        Some(url) => {
            let archive = archive::Postgres::start(url).await?;
            Some(bus::redis::ArchiveOptions {
                archive: Arc::new(archive),
                backlog_bytes: config.archive_backlog_bytes,
                sweep: Duration::from_secs(config.archive_sweep_secs),
                retention_days: config.retention_days,
                retention_every: Duration::from_secs(config.retention_sweep_secs),
                archiver,
            })
        }
        None => {
            if config.redis_url.is_some() {
                info!(
                    "no --database-url: history is kept only in Redis (the newest --history-limit per room)"
                );
            }
            None
        }
    };
    let bus: Arc<dyn Bus> = match &config.redis_url {
        Some(url) => {
            let options = bus::redis::RedisOptions {
                target: url.target().clone(),
                subscribe: bus::redis::topology::SubscribeTo::from_values(
                    &config.redis_subscribe_url,
                )
                .map_err(|e| StartError::Bus(bus::BusError::Unavailable(e)))?,
                prefix: config.redis_prefix.clone(),
                history_limit: config.history_limit as usize,
                dedupe_window: config.dedupe_window(),
                wait_replicas: config.redis_wait_replicas,
                wait_timeout: config.redis_wait_timeout(),
                node: node.clone(),
                archive,
            };
            let bus = bus::redis::RedisBus::start(options, events_tx, shutdown.clone())
                .map_err(StartError::Bus)?;
            info!(
                redis = %redact(url.as_str()),
                kind = bus.kind(),
                prefix = %config.redis_prefix,
                wait_replicas = config.redis_wait_replicas,
                "using the Redis bus"
            );
            Arc::new(bus)
        }
        None => {
            warn!("no --redis-url: using the in-memory bus; this replica cannot relay to others");
            Arc::new(bus::memory::MemoryBus::new(
                events_tx,
                config.history_limit as usize,
                config.dedupe_window(),
            ))
        }
    };
    Ok(bus)
}

/// Errors of [`publish_once`].
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The bus could not be started.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The room rules or the bus refused the message.
    #[error("{}", .0.message)]
    Refused(#[from] error::RequestError),
    /// The nick is invalid.
    #[error("{0}")]
    Invalid(#[from] shared::ValidationError),
    /// The output could not be written.
    #[error("cannot write the output: {0}")]
    Output(String),
}

/// What [`publish_once`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    /// The message id.
    pub id: shared::MsgId,
    /// The cid was stored already: this is the original message.
    pub duplicate: bool,
}

/// What a request from the command line runs on: a hub on the configured bus, the token that stops it, and the
/// bus's event channel, kept open (and unread) while the request runs.
type OneShot = (
    Hub,
    CancellationToken,
    mpsc::UnboundedReceiver<bus::BusEvent>,
);

/// A hub on the configured bus for one request from the command line.
async fn one_shot_hub(config: &Config) -> Result<OneShot, StartError> {
    let shutdown = CancellationToken::new();
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let node: Arc<str> = format!("cli:{}", std::process::id()).into();
    let bus = start_bus(config, node.clone(), events_tx, &shutdown, false).await?;
    let hub = Hub::new(Arc::new(config.clone()), node, bus, shutdown.clone());
    Ok((hub, shutdown, events_rx))
}

/// Publishes one message through the configured bus and the same room rules as a WebSocket `send`, without serving:
/// what `roomcast publish` runs (a cron job needs no HTTP).
pub async fn publish_once(
    config: &Config,
    room: &str,
    nick: &str,
    text: &str,
    cid: Option<String>,
) -> Result<Stored, PublishError> {
    let nick = shared::Nick::parse(nick)?;
    let (hub, shutdown, _events) = one_shot_hub(config).await?;
    let request = shared::ClientMsg::Send {
        room: room.into(),
        text: text.into(),
        cid: cid.unwrap_or_else(|| format!("cli-{}", bus::new_epoch())),
        reply_to: None,
    };
    let answer = Participant::publisher(hub, nick)
        .handle(request)
        .await
        .written();
    shutdown.cancel();
    match answer? {
        ServerMsg::Ack(frame::Ack { id, duplicate, .. }) => Ok(Stored { id, duplicate }),
        other => unreachable!("a send is acked or refused, not answered with {other:?}"),
    }
}

/// Carries out one moderator's action through the configured bus and the same rules as the HTTP API's moderation
/// endpoint: what `roomcast moderate` runs. Returns the id of the `moderation` event stored in the room (the
/// original one when `cid` was used already).
pub async fn moderate_once(
    config: &Config,
    room: &str,
    action: shared::ModerationAction,
    nick: Option<&str>,
    secs: u64,
    by: &str,
    cid: Option<String>,
) -> Result<shared::MsgId, PublishError> {
    let by = shared::Nick::parse(by)?;
    let request = api::moderation_request(room.into(), action, nick.map(Into::into), secs, cid)?;
    let (hub, shutdown, _events) = one_shot_hub(config).await?;
    let answer = Participant::publisher(hub, by)
        .handle(request)
        .await
        .written();
    shutdown.cancel();
    match answer? {
        ServerMsg::Done(frame::Done { id, .. }) => Ok(id),
        other => unreachable!("a moderation is done or refused, not answered with {other:?}"),
    }
}

/// Revokes a person's sessions on every replica through the configured bus, as `POST /api/sessions/revoke` does:
/// what `roomcast revoke` runs. `issued_before` defaults to now. Returns the revocation in force (seconds).
pub async fn revoke_once(
    config: &Config,
    person: &str,
    issued_before: Option<u64>,
) -> Result<u64, PublishError> {
    let (hub, shutdown, _events) = one_shot_hub(config).await?;
    let request = hub::Request::Revoke {
        person: person.to_owned(),
        issued_before: issued_before.unwrap_or_else(|| bus::now_ms() / 1000),
    };
    let mut revoker = Participant::publisher(hub, shared::Nick::parse("cli")?);
    let answer = match revoker.handle(request).await {
        hub::Reply::Revoked(before) => Ok(before),
        hub::Reply::Refused { error, .. } => Err(error.into()),
        other => unreachable!("a revocation is answered revoked or refused, not {other:?}"),
    };
    shutdown.cancel();
    answer
}

/// Writes a room's export as JSON Lines to `out`, page by page, through the same rules as the HTTP API's export: what
/// `roomcast export` runs. Returns how many lines it wrote.
pub async fn export_once(
    config: &Config,
    room: &str,
    since: Option<shared::MsgId>,
    out: &mut impl std::io::Write,
) -> Result<u64, PublishError> {
    let (hub, shutdown, _events) = one_shot_hub(config).await?;
    let reader = shared::Nick::parse("cli")?;
    let mut exporter = Participant::publisher(hub, reader);
    let mut after = since;
    let mut written = 0;
    let result = loop {
        let request = hub::Request::Export {
            room: room.to_owned(),
            after,
            limit: api::EXPORT_PAGE,
        };
        match exporter.handle(request).await {
            hub::Reply::Export(lines, next) => {
                if let Err(e) = out.write_all(&api::json_lines(&lines)) {
                    break Err(PublishError::Output(e.to_string()));
                }
                written += lines.len() as u64;
                match next {
                    Some(next) => after = Some(next),
                    None => break Ok(written),
                }
            }
            hub::Reply::Refused { error, .. } => break Err(error.into()),
            other => unreachable!("an export is answered with a page or refused, not {other:?}"),
        }
    };
    shutdown.cancel();
    result
}

/// Hides a password in a Redis URL before it is logged.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    /// The HTTP API and the CLI reach the room core only through `Participant::handle`: never the bus, never a
    /// participant's own steps (which would skip the request rules).
    #[test]
    fn the_api_and_the_cli_go_through_handle() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for file in ["api.rs", "lib.rs"] {
            let code = std::fs::read_to_string(dir.join(file)).unwrap();
            let code = code.split("mod tests {").next().unwrap();
            for word in [".bus.", ".moderate(", ".send(", ".older(", ".join("] {
                assert!(!code.contains(word), "{file} calls {word}");
            }
            assert!(code.contains(".handle("), "{file} goes through handle");
        }
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(super::redact("redis://:pw@h:1/0"), "redis://***@h:1/0");
        assert_eq!(super::redact("redis://h:1"), "redis://h:1");
    }
}
