//! The command connection: one multiplexed connection to the master (re-resolved after any failure, so a Sentinel
//! failover or a restarted server is picked up by the next request), or one Cluster connection that routes by slot.
//! It also knows what differs between the two when a message is relayed: `PUBLISH` or `SPUBLISH`, and how `WAIT`
//! reaches the master that holds a room's keys.

use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{
    AsyncConnectionConfig, Cmd, FromRedisValue, Pipeline, RedisFuture, RedisResult,
    ScriptInvocation, Value,
};

use super::topology::Topology;
use super::{REQUEST_TIMEOUT, unavailable};
use crate::bus::BusError;

/// A connection for commands, whatever the topology.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single server or the Sentinel-elected master.
    Node(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Node(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Node(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Node(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// The command that relays on a room's channel: `SPUBLISH` (sharded Pub/Sub, on the room's shard) on a Cluster,
    /// `PUBLISH` otherwise.
    pub(crate) fn publish_command(&self) -> &'static str {
        match self {
            Self::Node(_) => "PUBLISH",
            Self::Cluster(_) => "SPUBLISH",
        }
    }

    /// Relays `payload` on `channel` with [`Self::publish_command`].
    pub(crate) async fn publish(&mut self, channel: &str, payload: &str) -> RedisResult<()> {
        let _receivers: i64 = redis::cmd(self.publish_command())
            .arg(channel)
            .arg(payload)
            .query_async(self)
            .await?;
        Ok(())
    }

    /// Runs a script that writes `key`, then waits (`WAIT`, at most `timeout_ms`) until `replicas` Redis replicas of
    /// the master holding `key` have the write. Returns the script's answer and how many replicas confirmed it.
    pub(crate) async fn invoke_and_wait<T: FromRedisValue>(
        &mut self,
        invocation: &ScriptInvocation<'_>,
        key: &str,
        replicas: u32,
        timeout_ms: u64,
    ) -> RedisResult<(T, i64)> {
        match self {
            Self::Cluster(cluster) => {
                // The Cluster keeps one connection per node: WAIT on the key's master counts this write.
                let answer: T = invocation.invoke_async(cluster).await?;
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let mut wait = redis::cmd("WAIT");
                wait.arg(replicas).arg(timeout_ms);
                let acked = cluster.route_command(wait, routing).await?;
                Ok((answer, redis::from_redis_value(acked)?))
            }
            conn => {
                // WAIT right behind the script on the same connection: it counts the replicas that have every write
                // this connection made so far, this one included.
                let mut pipe = redis::pipe();
                pipe.invoke_script(invocation)
                    .cmd("WAIT")
                    .arg(replicas)
                    .arg(timeout_ms);
                match pipe.query_async(conn).await {
                    Err(e)
                        if e.kind()
                            == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                    {
                        invocation.load_async(conn).await?;
                        pipe.query_async(conn).await
                    }
                    other => other,
                }
            }
        }
    }
}

/// Hands out the current command connection and forgets it when a request on it fails.
pub(crate) struct Link {
    topology: Arc<Topology>,
    /// The connection and its generation, so a late failure report does not drop a newer connection.
    current: tokio::sync::Mutex<(u64, Option<Conn>)>,
}

impl Link {
    pub(crate) fn new(topology: Arc<Topology>) -> Self {
        Self {
            topology,
            current: tokio::sync::Mutex::new((0, None)),
        }
    }

    /// The current connection, connecting (and resolving the master) if there is none.
    pub(crate) async fn get(&self) -> Result<(u64, Conn), BusError> {
        let mut current = self.current.lock().await;
        if let (generation, Some(conn)) = &*current {
            return Ok((*generation, conn.clone()));
        }
        let conn = match tokio::time::timeout(REQUEST_TIMEOUT, self.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => {
                return Err(unavailable(format!(
                    "connect timed out after {REQUEST_TIMEOUT:?}"
                )));
            }
        };
        current.0 += 1;
        current.1 = Some(conn.clone());
        Ok((current.0, conn))
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        if self.topology.is_cluster() {
            let client = self.topology.cluster_client(None)?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let client = self.topology.master().await?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(REQUEST_TIMEOUT))
            .set_response_timeout(Some(REQUEST_TIMEOUT));
        Ok(Conn::Node(
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await?,
        ))
    }

    /// A request on connection `generation` failed: the next request reconnects (to whichever server is master by
    /// then).
    pub(crate) async fn failed(&self, generation: u64) {
        let mut current = self.current.lock().await;
        if current.0 == generation {
            current.1 = None;
        }
    }

    /// Forgets the current connection whatever its generation (the master changed).
    pub(crate) async fn reset(&self) {
        self.current.lock().await.1 = None;
    }
}

#[cfg(test)]
mod tests {
    use redis::cluster_routing::{Route, SlotAddr};

    #[test]
    fn wait_goes_to_the_slot_of_the_rooms_hash_tag() {
        // Reference values from `CLUSTER KEYSLOT`: a room's keys route by their `{room}` tag.
        let slot = |key: &str| Route::with_key(key, SlotAddr::Master);
        assert_eq!(
            slot("roomcast:{foo}:log"),
            Route::new(12182, SlotAddr::Master)
        );
        assert_eq!(slot("roomcast:{foo}:meta"), slot("other:{foo}:live"));
        assert_eq!(slot("123456789"), Route::new(12739, SlotAddr::Master));
    }
}
