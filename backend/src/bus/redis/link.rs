//! The command connection: one multiplexed connection to the master (re-resolved after any failure, so a Sentinel
//! failover or a restarted server is picked up by the next request), or one Cluster connection that routes by slot.

use std::sync::Arc;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisFuture, Value};

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
