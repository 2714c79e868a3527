//! Replica configuration: every flag has an environment variable, is validated at start, and is listed in README.md.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::bus::redis::topology::{RedisUrl, SubscribeUrl};

/// Configuration of one replica.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "roomcast",
    version,
    about = "Roomcast backend replica: chat rooms over WebSocket, relayed across replicas through Redis."
)]
pub struct Config {
    /// Instead of serving, run one command and exit.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on. Use 0.0.0.0 in containers.
    #[arg(long, env = "ROOMCAST_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// TCP port to listen on (0 picks a free one).
    #[arg(long, env = "ROOMCAST_PORT", default_value_t = 3000)]
    pub port: u16,

    /// Redis shared by all replicas: redis://host:6379, redis+sentinel://host1:26379,host2:26379/mymaster or
    /// redis+cluster://host1:7000,host2:7001. Absent: an in-memory bus for a single replica.
    #[arg(long, env = "ROOMCAST_REDIS_URL", value_parser = parse_redis_url)]
    pub redis_url: Option<RedisUrl>,

    /// Where Pub/Sub subscriptions go instead of the master: Redis URLs (comma-separated, normally the master's
    /// replicas), or `replicas` to discover them through Sentinel or ROLE. Writes always go to the master.
    #[arg(long, env = "ROOMCAST_REDIS_SUBSCRIBE_URL", value_delimiter = ',', value_parser = str::parse::<SubscribeUrl>)]
    pub redis_subscribe_url: Vec<SubscribeUrl>,

    /// Acknowledge a message only once this many Redis replicas have it (WAIT). 0: acknowledge when the master has
    /// it; a failover may then lose the newest acknowledged messages.
    #[arg(long, env = "ROOMCAST_REDIS_WAIT_REPLICAS", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub redis_wait_replicas: u32,

    /// How long a send waits for those replicas before it is answered `unavailable` (and resent by the client).
    #[arg(long, env = "ROOMCAST_REDIS_WAIT_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1900))]
    pub redis_wait_timeout_ms: u64,

    /// Prefix of every Redis key and channel, so several deployments can share one Redis.
    #[arg(long, env = "ROOMCAST_REDIS_PREFIX", default_value = "roomcast", value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// This replica's name, shown to users. Default: <hostname>:<port>.
    #[arg(long, env = "ROOMCAST_NODE_ID", value_parser = parse_node_id)]
    pub node_id: Option<String>,

    /// Directory holding the compiled frontend (trunk's dist/); index.html is served for unknown paths.
    #[arg(long, env = "ROOMCAST_STATIC_DIR", default_value = "dist")]
    pub static_dir: PathBuf,

    /// Extra origins allowed to open WebSockets (comma-separated, e.g. http://localhost:8080). The page's own
    /// origin is always allowed, and so are clients that send no Origin (non-browser clients).
    #[arg(long, env = "ROOMCAST_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = parse_origin)]
    pub allowed_origins: Vec<String>,

    /// Keys that may use the HTTP API (`POST`/`GET /api/rooms/{room}/messages` with `Authorization: Bearer <key>`),
    /// comma-separated, each at least 16 characters. None: the API is off.
    #[arg(long, env = "ROOMCAST_API_KEYS", value_delimiter = ',', value_parser = parse_api_key, hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// Messages per second one API key may publish (after a burst of as many).
    #[arg(long, env = "ROOMCAST_API_SENDS_PER_SEC", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub api_sends_per_sec: u32,

    /// Require a JSON Web Token signed with this shared secret (HS256) on every WebSocket; its `nick` (or `sub`)
    /// claim is the connection's nick and an optional `rooms` claim limits the rooms. Off when unset.
    #[arg(long, env = "ROOMCAST_JWT_SECRET", hide_env_values = true, value_parser = parse_jwt_secret)]
    pub jwt_secret: Option<String>,

    /// Like --jwt-secret, with tokens signed by the private half of this public key (PEM file; RS256 for RSA,
    /// ES256 for EC P-256).
    #[arg(long, env = "ROOMCAST_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// How long a connection may stay open after its token expired before it is closed with 4001.
    #[arg(long, env = "ROOMCAST_JWT_GRACE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub jwt_grace_secs: u64,

    /// Log lines as text (for people) or json (one object per line, for log collectors).
    #[arg(long, env = "ROOMCAST_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// Messages kept per room in Redis (the Redis Stream is trimmed to about this many). With an archive
    /// (--database-url): the hot window in front of it; history reaches back further from the archive.
    #[arg(long, env = "ROOMCAST_HISTORY_LIMIT", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub history_limit: u32,

    /// PostgreSQL as the system of record: postgres://user:password@host:5432/database. Every stored event is archived
    /// there for good (or --retention-days), history reaches back to a room's first message, and an emptied Redis is
    /// rebuilt from it. Needs --redis-url. Absent: history lives in Redis only (the newest --history-limit per room).
    #[arg(long, env = "ROOMCAST_DATABASE_URL", value_parser = parse_database_url, requires = "redis_url")]
    pub database_url: Option<String>,

    /// Days the archive keeps a room's events (a moderator may set a room's own); fractions allowed. Absent: forever.
    #[arg(long, env = "ROOMCAST_RETENTION_DAYS", value_parser = parse_days, requires = "database_url")]
    pub retention_days: Option<f64>,

    /// How often the retention job runs, on one replica at a time.
    #[arg(long, env = "ROOMCAST_RETENTION_SWEEP_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retention_sweep_secs: u64,

    /// Bytes of events a room keeps in Redis while the archive is behind (PostgreSQL down): beyond it the room's new
    /// events are refused `unavailable` until the archive catches up, so nothing acknowledged is ever dropped.
    #[arg(long, env = "ROOMCAST_ARCHIVE_BACKLOG_BYTES", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub archive_backlog_bytes: u64,

    /// How often each replica checks every room for events not archived yet (what a killed replica or the CLI stored).
    #[arg(long, env = "ROOMCAST_ARCHIVE_SWEEP_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub archive_sweep_secs: u64,

    /// Recent messages sent on join when the client gives no `since`.
    #[arg(long, env = "ROOMCAST_HISTORY_ON_JOIN", default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub history_on_join: u32,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_rooms: u32,

    /// Bytes of frames waiting for one connection before, if its socket is refusing more, it counts as too slow and
    /// is closed with 1013 (it then resumes with `since`). A reader whose socket keeps taking bytes is never closed
    /// for lagging behind, up to 8 times this (a memory guard).
    #[arg(long, env = "ROOMCAST_QUEUE_MAX_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(16_384..=1 << 30))]
    pub queue_max_bytes: u64,

    /// The longest a message waits for its room's next fan-out wave. A busy room fans out at most once per
    /// 40 µs × its local members (capped by this), so big rooms write several frames per syscall; quiet and small
    /// rooms never wait. 0 fans out every message as it arrives.
    #[arg(long, env = "ROOMCAST_FANOUT_MAX_DELAY_MS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub fanout_max_delay_ms: u32,

    /// New WebSocket connections this replica takes per second (after a burst of as many); the excess is answered
    /// `try_again {after_ms}` and closed with 1013, so a reconnect storm queues at the clients, not here. 0: no limit.
    #[arg(
        long,
        env = "ROOMCAST_ADMIT_CONNECTIONS_PER_SEC",
        default_value_t = 2_000
    )]
    pub admit_connections_per_sec: u32,

    /// `join`s this replica takes per second (after a burst of as many); the excess is answered
    /// `try_again {after_ms}` and the connection stays open. 0: no limit.
    #[arg(long, env = "ROOMCAST_ADMIT_JOINS_PER_SEC", default_value_t = 4_000)]
    pub admit_joins_per_sec: u32,

    /// A replica cut off from Redis (its bus down) for this long closes its connections (1001, each at its next
    /// ping, so they spread over `--ping-secs`) and refuses new ones (503), so its clients resume on replicas that
    /// still reach Redis; until then sends are answered `unavailable` and `/readyz` fails. 0: never.
    #[arg(long, env = "ROOMCAST_CUTOFF_CLOSE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub cutoff_close_secs: u64,

    /// On SIGTERM, the time over which the replica closes its connections (1001), each at its own moment, so its
    /// clients reconnect to the others spread out instead of all at once. Connections keep being served until
    /// their moment; new ones are refused at once.
    #[arg(long, env = "ROOMCAST_DRAIN_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub drain_secs: u64,

    /// How long a member stays in a room's member list after their last connection closed: a reload or a
    /// reconnect within it announces nothing. 0 announces every leave at once.
    #[arg(long, env = "ROOMCAST_PRESENCE_GRACE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub presence_grace_ms: u64,

    /// How often the replica tells Redis its members are still online. A replica silent for 3 of these (it
    /// crashed) loses its members from the member lists.
    #[arg(long, env = "ROOMCAST_PRESENCE_HEARTBEAT_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub presence_heartbeat_ms: u64,

    /// Sustained sends per second allowed per connection.
    #[arg(long, env = "ROOMCAST_SENDS_PER_SEC", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sends_per_sec: u32,

    /// Sends allowed in a burst above the sustained rate.
    #[arg(long, env = "ROOMCAST_SEND_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub send_burst: u32,

    /// Seconds a `send`'s cid is remembered: a repeated cid within this window is not stored again.
    #[arg(long, env = "ROOMCAST_DEDUPE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub dedupe_secs: u64,

    /// Seconds between WebSocket pings; a connection silent for three intervals is closed.
    #[arg(long, env = "ROOMCAST_PING_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub ping_secs: u64,

    /// Seconds a client has, from opening its connection (or from its previous response), to send a whole request
    /// head, a WebSocket upgrade included; then the connection is closed. Bounds slow-loris and half-open handshakes
    /// (and idle HTTP keep-alive connections); an upgraded WebSocket is bound by --ping-secs instead. An HTTP API
    /// request's body must follow within as long again (408 otherwise).
    #[arg(long, env = "ROOMCAST_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub header_timeout_secs: u64,
}

/// One-shot commands of the `roomcast` binary.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Publish one message through Redis with the same rules as a WebSocket `send` (no HTTP needed), print its id
    /// and exit: `roomcast --redis-url redis://host:6379 publish --room general --nick cron "backup done"`.
    Publish {
        /// The room.
        #[arg(long)]
        room: String,
        /// Shown as the author.
        #[arg(long)]
        nick: String,
        /// Idempotency key: running the command again with the same cid stores the message once.
        #[arg(long)]
        cid: Option<String>,
        /// The message text.
        text: String,
    },
    /// Export a room as JSON Lines on stdout, as `GET /api/rooms/{room}/export` does: each message once, in its current
    /// state, and each moderation event, from the room's first (through the archive, with --database-url):
    /// `roomcast --redis-url redis://host:6379 --database-url postgres://… export --room general > general.jsonl`.
    Export {
        /// The room.
        #[arg(long)]
        room: String,
        /// Only events after this id (the last line of an interrupted export).
        #[arg(long)]
        since: Option<shared::MsgId>,
    },
    /// Revoke a person's sessions on every replica as `POST /api/sessions/revoke` does: their connections whose
    /// tokens were issued before the time close with 4003, and those tokens are refused from then on. Prints the
    /// revocation in force and exits: `roomcast --redis-url redis://host:6379 revoke --sub u-42`.
    Revoke {
        /// The person: the tokens' `sub` (for tokens without one, their nick).
        #[arg(long)]
        sub: String,
        /// Tokens issued before this (`iat`, Unix seconds) no longer count; default: now.
        #[arg(long)]
        issued_before: Option<u64>,
    },
    /// Moderate a room through Redis as the HTTP API's moderation endpoint does, print the moderation event's id and
    /// exit: `roomcast --redis-url redis://host:6379 moderate --room general --nick troll --secs 600 mute`.
    Moderate {
        /// The room.
        #[arg(long)]
        room: String,
        /// To whom (mute, kick, ban).
        #[arg(long)]
        nick: Option<String>,
        /// How long, in seconds (mute, ban, slow_mode); 0 lifts it.
        #[arg(long, default_value_t = 0)]
        secs: u64,
        /// For retention: the days the room keeps its messages (0: the server's).
        #[arg(long)]
        days: Option<u32>,
        /// For receipts: on (`--on true`) or off (`--on false`).
        #[arg(long)]
        on: Option<bool>,
        /// The name the room sees as the moderator.
        #[arg(long, default_value = "moderator")]
        by: String,
        /// Idempotency key: running the command again with the same cid (and `--by`) moderates once.
        #[arg(long)]
        cid: Option<String>,
        /// mute, kick, ban, slow_mode, retention or receipts (the protocol's moderation actions).
        #[arg(value_parser = moderation_action)]
        action: shared::ModerationAction,
    },
}

/// A moderation action as the protocol spells it.
fn moderation_action(name: &str) -> Result<shared::ModerationAction, String> {
    serde_json::from_value(serde_json::Value::String(name.to_owned())).map_err(|_| {
        let names: Vec<String> = shared::ModerationAction::ALL
            .iter()
            .filter_map(|a| serde_json::to_value(a).ok())
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        format!("expected one of {}", names.join(", "))
    })
}

impl Config {
    /// A configuration with every default, for tests and embedding.
    pub fn defaults() -> Self {
        Self::parse_from(["roomcast"])
    }

    /// How long a send waits for `--redis-wait-replicas`.
    pub fn redis_wait_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_wait_timeout_ms)
    }

    /// How long a `send`'s cid is remembered.
    pub fn dedupe_window(&self) -> Duration {
        Duration::from_secs(self.dedupe_secs)
    }

    /// Interval between keep-alive pings.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_secs)
    }

    /// How long a connection may take to send a request head.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }
}

/// The one parse of `--redis-url`: the configuration keeps the parsed target for the bus.
fn parse_database_url(s: &str) -> Result<String, String> {
    if !(s.starts_with("postgres://") || s.starts_with("postgresql://")) {
        return Err("expected postgres://user:password@host:port/database".into());
    }
    s.parse::<tokio_postgres::Config>()
        .map_err(|e| crate::archive::cause(&e))?;
    Ok(s.to_owned())
}

fn parse_days(s: &str) -> Result<f64, String> {
    let days: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of days"))?;
    if days.is_finite() && days > 0.0 {
        Ok(days)
    } else {
        Err("must be more than 0 (omit the flag to keep everything)".into())
    }
}

fn parse_redis_url(s: &str) -> Result<RedisUrl, String> {
    if s.is_empty() {
        return Err("empty; omit the flag to use the in-memory bus".into());
    }
    s.parse()
}

fn parse_jwt_secret(s: &str) -> Result<String, String> {
    if s.len() < 32 {
        return Err("an HS256 secret must be at least 32 bytes (e.g. openssl rand -hex 32)".into());
    }
    Ok(s.to_owned())
}

fn parse_api_key(s: &str) -> Result<String, String> {
    let s = s.trim();
    if s.len() < 16 || s.len() > 256 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "an API key must be 16 to 256 printable ASCII characters (e.g. openssl rand -hex 24)"
                .into(),
        );
    }
    Ok(s.to_owned())
}

fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("must be 1 to 64 ASCII letters, digits, '-' or '_'".into());
    }
    Ok(s.to_owned())
}

fn parse_node_id(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be 1 to 64 printable ASCII characters without spaces".into());
    }
    Ok(s.to_owned())
}

fn parse_origin(s: &str) -> Result<String, String> {
    let s = s.trim().trim_end_matches('/');
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("{s:?} must start with http:// or https://"))?;
    if rest.is_empty() || rest.contains('/') {
        return Err(format!("{s:?} must be scheme://host[:port] with no path"));
    }
    Ok(s.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::defaults();
        assert_eq!(c.port, 3000);
        assert!(c.redis_url.is_none());
        assert_eq!(c.history_limit, 1000);
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let err = Config::try_parse_from(["roomcast", "--redis-url", "http://x"]).unwrap_err();
        assert!(err.to_string().contains("not a Redis URL"), "{err}");
        assert!(Config::try_parse_from(["roomcast", "--port", "99999"]).is_err());
        assert!(Config::try_parse_from(["roomcast", "--max-rooms", "0"]).is_err());
        assert!(
            Config::try_parse_from(["roomcast", "--allowed-origins", "localhost:8080"]).is_err()
        );
        let ok = Config::try_parse_from(["roomcast", "--allowed-origins", "http://A:1/,https://b"])
            .unwrap();
        assert_eq!(ok.allowed_origins, ["http://a:1", "https://b"]);
    }
}
