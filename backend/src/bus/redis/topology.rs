//! Where Redis is, and how to reach it: one server, a Sentinel-managed master with replicas, or a Cluster. Everything
//! topology-specific lives here; the rest of the bus asks for "a connection for commands" and "a feed of room
//! messages" and does not care which of the three it talks to.
//!
//! - **Single**: `redis://host:port[/db]`. Commands and Pub/Sub go to that server.
//! - **Sentinel**: `redis+sentinel://[:password@]host1:port1,host2:port2/master-name`. The master is asked of the
//!   Sentinels whenever a connection is (re)made, so after a failover the next reconnect lands on the new master.
//! - **Cluster**: `redis+cluster://host1:port1,host2:port2`. Commands are routed by slot (every key of a room shares
//!   the `{room}` hash tag, so a room lives on one shard); rooms are relayed with sharded Pub/Sub (`SPUBLISH`,
//!   `SSUBSCRIBE` on the shard that owns the slot), which follows slot moves and failovers.
//!
//! With `--redis-subscribe-url`, Pub/Sub (single or Sentinel) goes to Redis replicas instead of the master: Redis
//! propagates every `PUBLISH` to its replicas, so subscribers spread over them while writes stay on the master.

use std::str::FromStr;
use std::sync::PoisonError;
use std::time::Duration;

use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, RedisConnectionInfo,
};

/// `--redis-url` as given and as parsed. It is parsed once, when the configuration is read: the bus takes the
/// [`Target`] that was validated, and logs take the text (redacted).
#[derive(Debug, Clone)]
pub struct RedisUrl {
    url: String,
    target: Target,
}

impl RedisUrl {
    /// The URL as given. It may carry a password: redact it before logging.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// Where it points.
    pub fn target(&self) -> &Target {
        &self.target
    }
}

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        Ok(Self {
            target: Target::parse(url)?,
            url: url.to_owned(),
        })
    }
}

/// A parsed `--redis-url`.
#[derive(Debug, Clone)]
pub enum Target {
    /// One server.
    Single(ConnectionInfo),
    /// A master found through Sentinels.
    Sentinel {
        /// The Sentinels' addresses.
        sentinels: Vec<ConnectionInfo>,
        /// The monitored master's name.
        master: String,
        /// Credentials and database for the master and its replicas.
        redis: RedisConnectionInfo,
    },
    /// A Redis Cluster, by any of its nodes.
    Cluster(Vec<ConnectionInfo>),
}

const SENTINEL_SCHEME: &str = "redis+sentinel://";
const CLUSTER_SCHEME: &str = "redis+cluster://";

impl Target {
    /// Parses `redis://…`, `redis+sentinel://…` or `redis+cluster://…`, saying what is wrong with a bad one.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) {
            let (auth, rest) = match rest.rsplit_once('@') {
                Some((auth, rest)) => (Some(auth), rest),
                None => (None, rest),
            };
            let (hosts, master) = rest
                .split_once('/')
                .ok_or("a Sentinel URL names the master: redis+sentinel://host1:26379,host2:26379/mymaster")?;
            if master.is_empty() || master.contains('/') {
                return Err(
                    "the master name after the hosts must be one path segment, e.g. /mymaster"
                        .into(),
                );
            }
            let sentinels = hosts_of(hosts, 26379)?;
            let mut redis = RedisConnectionInfo::default();
            if let Some(auth) = auth {
                let (user, password) = auth.split_once(':').unwrap_or(("", auth));
                if !user.is_empty() {
                    redis = redis.set_username(user);
                }
                if !password.is_empty() {
                    redis = redis.set_password(password);
                }
            }
            return Ok(Self::Sentinel {
                sentinels,
                master: master.to_owned(),
                redis,
            });
        }
        if let Some(rest) = url.strip_prefix(CLUSTER_SCHEME) {
            return Ok(Self::Cluster(hosts_of(rest.trim_end_matches('/'), 6379)?));
        }
        url.into_connection_info()
            .map(Self::Single)
            .map_err(|e| format!("not a Redis URL ({e}); expected e.g. redis://127.0.0.1:6379, {SENTINEL_SCHEME}h1:26379,h2:26379/mymaster or {CLUSTER_SCHEME}h1:7000,h2:7001"))
    }

    /// `"redis"`, `"redis-sentinel"` or `"redis-cluster"`, for logs and `/healthz`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Single(_) => "redis",
            Self::Sentinel { .. } => "redis-sentinel",
            Self::Cluster(_) => "redis-cluster",
        }
    }
}

fn hosts_of(hosts: &str, default_port: u16) -> Result<Vec<ConnectionInfo>, String> {
    let infos = hosts
        .split(',')
        .map(|host| {
            let host = host.trim();
            if host.is_empty() {
                return Err("empty host in the list".to_owned());
            }
            let url = if host.contains(':') {
                format!("redis://{host}")
            } else {
                format!("redis://{host}:{default_port}")
            };
            url.into_connection_info()
                .map_err(|e| format!("bad host {host:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if infos.is_empty() {
        return Err("no hosts".into());
    }
    Ok(infos)
}

/// Where Pub/Sub subscriptions go (`--redis-subscribe-url`).
#[derive(Debug, Clone, Default)]
pub enum SubscribeTo {
    /// The master (the default).
    #[default]
    Master,
    /// These servers, normally replicas of the master.
    Urls(Vec<ConnectionInfo>),
    /// The master's replicas, discovered through Sentinel or `ROLE`.
    Replicas,
}

impl SubscribeTo {
    /// Combines the flag's values, each parsed when the configuration was read: URLs, or `replicas` alone.
    pub fn from_values(values: &[SubscribeUrl]) -> Result<Self, String> {
        match values {
            [] => Ok(Self::Master),
            [SubscribeUrl::Replicas] => Ok(Self::Replicas),
            urls => urls
                .iter()
                .map(|value| match value {
                    SubscribeUrl::Url(info) => Ok(info.clone()),
                    SubscribeUrl::Replicas => Err(
                        "`replicas` stands alone: give Redis URLs or `replicas`, not both"
                            .to_owned(),
                    ),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Urls),
        }
    }
}

/// One value of `--redis-subscribe-url`: a Redis URL, or the word `replicas`.
#[derive(Debug, Clone)]
pub enum SubscribeUrl {
    /// Discover the master's replicas.
    Replicas,
    /// This server.
    Url(ConnectionInfo),
}

impl FromStr for SubscribeUrl {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if value == "replicas" {
            return Ok(Self::Replicas);
        }
        value
            .into_connection_info()
            .map(Self::Url)
            .map_err(|e| format!("{value:?} is not a Redis URL ({e})"))
    }
}

/// Which of `n` subscribe endpoints the replica named `node` starts with: spread by node id, stable across restarts.
pub fn pick(node: &str, n: usize) -> usize {
    // FNV-1a: the same on every build and platform, unlike std's randomly keyed hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(h % n.max(1) as u64).unwrap_or(0)
}

/// The runtime side of a [`Target`]: resolves the master and the subscribe endpoints when asked.
pub struct Topology {
    target: Target,
    subscribe: SubscribeTo,
    sentinel: Option<Sentinels>,
    timeout: Duration,
}

/// The Sentinels of a Sentinel target, with what they are asked about.
struct Sentinels {
    sentinel: tokio::sync::Mutex<Sentinel>,
    master: String,
    node: SentinelNodeConnectionInfo,
    /// The master's address as the Sentinels last named it to this replica.
    reached: std::sync::Mutex<Option<(String, u16)>>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("kind", &self.target.kind())
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// Prepares to reach `target`; connects nothing yet.
    pub fn new(
        target: Target,
        subscribe: SubscribeTo,
        timeout: Duration,
    ) -> redis::RedisResult<Self> {
        let sentinel = match &target {
            Target::Sentinel {
                sentinels,
                master,
                redis,
            } => Some(Sentinels {
                sentinel: tokio::sync::Mutex::new(Sentinel::build(sentinels.clone())?),
                master: master.clone(),
                node: SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(redis.clone()),
                reached: std::sync::Mutex::new(None),
            }),
            _ => None,
        };
        Ok(Self {
            target,
            subscribe,
            sentinel,
            timeout,
        })
    }

    fn sentinels(&self) -> &Sentinels {
        self.sentinel
            .as_ref()
            .expect("a Sentinel target has its Sentinels")
    }

    /// The target this topology reaches.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Whether rooms are relayed with sharded Pub/Sub.
    pub fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// A client for the current master (single or Sentinel; a Cluster routes by itself).
    pub async fn master(&self) -> redis::RedisResult<redis::Client> {
        match &self.target {
            Target::Single(info) => redis::Client::open(info.clone()),
            Target::Sentinel { .. } => {
                let s = self.sentinels();
                let mut sentinel = s.sentinel.lock().await;
                let client = within(
                    self.timeout,
                    sentinel.async_master_for(&s.master, Some(&s.node)),
                )
                .await?;
                if let ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr() {
                    *s.reached.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some((host.clone(), *port));
                }
                Ok(client)
            }
            Target::Cluster(nodes) => redis::Client::open(nodes[0].clone()),
        }
    }

    /// On a Sentinel target: resolves once the Sentinels name another master than the one this replica had reached
    /// when the watch began, asking one of them every `every`; never on other targets. The `+switch-master` event
    /// ([`Topology::watch_failovers`]) says the same at once, but a replica that was cut off from the Sentinels when
    /// they published it hears it only when TCP retransmits it, seconds after the partition healed, and meanwhile
    /// writes to the old master, which throws those writes away when it rejoins as a replica. This bounds that to
    /// `every`.
    pub async fn master_moved(&self, every: Duration) {
        let Target::Sentinel { sentinels, .. } = &self.target else {
            return std::future::pending().await;
        };
        let s = self.sentinels();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asking: Option<redis::aio::MultiplexedConnection> = None;
        let mut next = 0;
        // The master as it was when this watch began (the caller's connection was just made): a later reconnect of
        // another connection must not hide that this one is on the old master.
        let mut reached = None;
        loop {
            tick.tick().await;
            if reached.is_none() {
                reached = s
                    .reached
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
            }
            let Some(reached) = &reached else { continue };
            if asking.is_none() {
                let sentinel = &sentinels[next % sentinels.len()];
                next += 1;
                if let Ok(client) = redis::Client::open(sentinel.clone()) {
                    asking = within(self.timeout, client.get_multiplexed_async_connection())
                        .await
                        .ok();
                }
            }
            let Some(conn) = asking.as_mut() else {
                continue;
            };
            let named = within(
                self.timeout,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&s.master)
                    .query_async::<(String, u16)>(conn),
            )
            .await;
            match named {
                Ok(named) if named != *reached => return,
                Ok(_) => {}
                // This Sentinel does not answer: ask the next one next time.
                Err(_) => asking = None,
            }
        }
    }

    /// The endpoints Pub/Sub may use, in the order to try them, starting with the one this node prefers.
    pub async fn subscribe_endpoints(&self, node: &str) -> redis::RedisResult<Vec<redis::Client>> {
        let mut endpoints = match &self.subscribe {
            SubscribeTo::Master => return Ok(vec![self.master().await?]),
            SubscribeTo::Urls(urls) => urls
                .iter()
                .map(|u| redis::Client::open(u.clone()))
                .collect::<Result<Vec<_>, _>>()?,
            SubscribeTo::Replicas => self.replicas().await?,
        };
        if endpoints.is_empty() {
            // No replica to be had right now: the master relays too.
            return Ok(vec![self.master().await?]);
        }
        endpoints.sort_by_key(|c| c.get_connection_info().addr().to_string());
        let start = pick(node, endpoints.len());
        endpoints.rotate_left(start);
        Ok(endpoints)
    }

    /// On a Sentinel target: a Pub/Sub stream of `+switch-master` events from the first Sentinel that answers, so a
    /// failover is followed at once, even while the old master is still reachable (a network partition).
    pub async fn watch_failovers(&self) -> Option<redis::aio::PubSubStream> {
        let Target::Sentinel { sentinels, .. } = &self.target else {
            return None;
        };
        for sentinel in sentinels {
            let Ok(client) = redis::Client::open(sentinel.clone()) else {
                continue;
            };
            if let Ok(Ok(mut pubsub)) =
                tokio::time::timeout(self.timeout, client.get_async_pubsub()).await
                && within(self.timeout, pubsub.subscribe("+switch-master"))
                    .await
                    .is_ok()
            {
                return Some(pubsub.into_on_message());
            }
        }
        None
    }

    /// The master's replicas: from Sentinel, or from the master's `ROLE`.
    async fn replicas(&self) -> redis::RedisResult<Vec<redis::Client>> {
        match &self.target {
            Target::Sentinel { .. } => {
                let s = self.sentinels();
                let mut sentinel = s.sentinel.lock().await;
                within(
                    self.timeout,
                    sentinel.async_get_replica_clients(&s.master, Some(&s.node)),
                )
                .await
            }
            _ => {
                let master = self.master().await?;
                let master_info = master.get_connection_info().clone();
                let mut conn =
                    within(self.timeout, master.get_multiplexed_async_connection()).await?;
                let role: redis::Value =
                    within(self.timeout, redis::cmd("ROLE").query_async(&mut conn)).await?;
                Ok(replicas_of_role(&role)
                    .into_iter()
                    .filter_map(|(host, port)| {
                        let info = master_info
                            .clone()
                            .set_addr(ConnectionAddr::Tcp(host, port));
                        redis::Client::open(info).ok()
                    })
                    .collect())
            }
        }
    }

    /// A client for a Cluster, sending room pushes (sharded messages, resubscriptions) to `pushes`.
    pub fn cluster_client(
        &self,
        pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
    ) -> redis::RedisResult<redis::cluster::ClusterClient> {
        let Target::Cluster(nodes) = &self.target else {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "not a cluster",
            )));
        };
        let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout)
            .retries(2);
        if let Some(pushes) = pushes {
            builder = builder
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(pushes);
        }
        builder.build()
    }
}

/// `ROLE` on a master: `["master", offset, [[host, port, offset], …]]`.
fn replicas_of_role(role: &redis::Value) -> Vec<(String, u16)> {
    let redis::Value::Array(parts) = role else {
        return Vec::new();
    };
    let Some(redis::Value::Array(replicas)) = parts.get(2) else {
        return Vec::new();
    };
    replicas
        .iter()
        .filter_map(|r| {
            let redis::Value::Array(fields) = r else {
                return None;
            };
            let host: String = redis::from_redis_value(fields.first()?.clone()).ok()?;
            let port: String = redis::from_redis_value(fields.get(1)?.clone()).ok()?;
            Some((host, port.parse().ok()?))
        })
        .collect()
}

async fn within<T>(
    timeout: Duration,
    fut: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert!(matches!(
            Target::parse("redis://127.0.0.1:6390"),
            Ok(Target::Single(_))
        ));
        let Ok(Target::Sentinel {
            sentinels,
            master,
            redis,
        }) = Target::parse("redis+sentinel://:pw@a:26379,b:26380,c/mymaster")
        else {
            panic!("a sentinel URL")
        };
        assert_eq!((sentinels.len(), master.as_str()), (3, "mymaster"));
        assert_eq!(redis.password(), Some("pw"));
        assert_eq!(sentinels[2].addr().to_string(), "c:26379");
        assert!(matches!(
            Target::parse("redis+cluster://127.0.0.1:7000,127.0.0.1:7001"),
            Ok(Target::Cluster(nodes)) if nodes.len() == 2
        ));
        for bad in [
            "http://x",
            "redis+sentinel://a:1",
            "redis+sentinel://a:1/",
            "redis+cluster://",
            "redis+cluster://a,,b",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redis_urls_keep_their_text_and_target() {
        let url: RedisUrl = "redis+cluster://a:7000,b:7001".parse().unwrap();
        assert_eq!(url.as_str(), "redis+cluster://a:7000,b:7001");
        assert!(matches!(url.target(), Target::Cluster(nodes) if nodes.len() == 2));
        assert!("http://x".parse::<RedisUrl>().is_err());
    }

    #[test]
    fn subscribe_targets_parse() {
        let values =
            |vs: &[&str]| -> Vec<SubscribeUrl> { vs.iter().map(|v| v.parse().unwrap()).collect() };
        assert!(matches!(
            SubscribeTo::from_values(&[]),
            Ok(SubscribeTo::Master)
        ));
        assert!(matches!(
            SubscribeTo::from_values(&values(&[" replicas"])),
            Ok(SubscribeTo::Replicas)
        ));
        assert!(matches!(
            SubscribeTo::from_values(&values(&["redis://a:1", "redis://b:2"])),
            Ok(SubscribeTo::Urls(u)) if u.len() == 2
        ));
        assert!(SubscribeTo::from_values(&values(&["redis://a:1", "replicas"])).is_err());
        assert!("nope://".parse::<SubscribeUrl>().is_err());
    }

    #[test]
    fn pick_spreads_and_is_stable() {
        assert_eq!(pick("a", 1), 0);
        assert_eq!(pick("web-1", 3), pick("web-1", 3));
        let spread: std::collections::HashSet<usize> =
            (0..20).map(|i| pick(&format!("node-{i}"), 2)).collect();
        assert_eq!(spread.len(), 2);
    }

    #[test]
    fn role_lists_replicas() {
        use redis::Value::{Array, BulkString, Int};
        let role = Array(vec![
            BulkString(b"master".to_vec()),
            Int(10),
            Array(vec![Array(vec![
                BulkString(b"127.0.0.1".to_vec()),
                BulkString(b"7001".to_vec()),
                BulkString(b"10".to_vec()),
            ])]),
        ]);
        assert_eq!(replicas_of_role(&role), [("127.0.0.1".to_owned(), 7001)]);
    }
}
