//! The subscriber's source of room messages: a Pub/Sub connection to one server (the master, or a Redis replica with
//! `--redis-subscribe-url`), or a Cluster connection with sharded subscriptions delivered as RESP3 pushes.

use futures_util::StreamExt;
use redis::aio::{PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, RedisResult, Value};
use tokio::sync::mpsc;

use super::REQUEST_TIMEOUT;
use super::topology::Topology;

/// What the feed delivered.
#[derive(Debug)]
pub(super) enum FeedEvent {
    /// A message on one of our channels.
    Message { channel: String, payload: Vec<u8> },
    /// The Cluster (re)subscribed a channel on some shard, for example after a failover or a slot move: whatever
    /// was published meanwhile must be read from the stream.
    Resubscribed(String),
    /// The feed is gone; reconnect.
    Closed,
}

/// A live subscription source.
pub(super) enum Feed {
    Node {
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: mpsc::UnboundedReceiver<PushInfo>,
    },
}

impl Feed {
    /// Connects: on a Cluster, one Cluster connection; otherwise the first subscribe endpoint that answers, starting
    /// with the one `node` prefers. Returns the feed and a description of where it is connected.
    pub(super) async fn connect(topology: &Topology, node: &str) -> Result<(Self, String), String> {
        if topology.is_cluster() {
            let (tx, pushes) = mpsc::unbounded_channel();
            let client = topology
                .cluster_client(Some(tx))
                .map_err(|e| e.to_string())?;
            let conn = client
                .get_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            return Ok((Self::Cluster { conn, pushes }, "cluster".into()));
        }
        let endpoints = topology
            .subscribe_endpoints(node)
            .await
            .map_err(|e| format!("cannot resolve a subscribe endpoint: {e}"))?;
        let mut last_error = String::from("no endpoint");
        for client in endpoints {
            let addr = client.get_connection_info().addr().to_string();
            match tokio::time::timeout(REQUEST_TIMEOUT, client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => {
                    let (sink, stream) = pubsub.split();
                    return Ok((Self::Node { sink, stream }, addr));
                }
                Ok(Err(e)) => last_error = format!("{addr}: {e}"),
                Err(_) => last_error = format!("{addr}: connect timed out"),
            }
        }
        Err(last_error)
    }

    /// Subscribes to channels (`SSUBSCRIBE` on a Cluster, routed to each channel's shard).
    pub(super) async fn subscribe(&mut self, channels: &[String]) -> RedisResult<()> {
        match self {
            Self::Node { sink, .. } => sink.subscribe(channels).await,
            Self::Cluster { conn, .. } => {
                for channel in channels {
                    conn.ssubscribe(channel).await?;
                }
                Ok(())
            }
        }
    }

    /// Unsubscribes from one channel.
    pub(super) async fn unsubscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Self::Node { sink, .. } => sink.unsubscribe(channel).await,
            Self::Cluster { conn, .. } => conn.sunsubscribe(channel).await,
        }
    }

    /// Checks that the feed is alive.
    pub(super) async fn ping(&mut self) -> RedisResult<()> {
        match self {
            // In subscribe mode Redis answers PING with ["pong", ""], so accept any reply.
            Self::Node { sink, .. } => sink.ping::<Value>().await.map(drop),
            Self::Cluster { conn, .. } => redis::cmd("PING")
                .query_async::<Value>(conn)
                .await
                .map(drop),
        }
    }

    /// The next event.
    pub(super) async fn next(&mut self) -> FeedEvent {
        match self {
            Self::Node { stream, .. } => match stream.next().await {
                Some(msg) => FeedEvent::Message {
                    channel: msg.get_channel_name().to_owned(),
                    payload: msg.get_payload_bytes().to_vec(),
                },
                None => FeedEvent::Closed,
            },
            Self::Cluster { pushes, .. } => loop {
                let Some(push) = pushes.recv().await else {
                    return FeedEvent::Closed;
                };
                let mut data = push.data.into_iter();
                let channel = match data.next() {
                    Some(Value::BulkString(c)) => String::from_utf8_lossy(&c).into_owned(),
                    _ => continue,
                };
                match push.kind {
                    PushKind::SMessage | PushKind::Message => {
                        if let Some(Value::BulkString(payload)) = data.next() {
                            return FeedEvent::Message { channel, payload };
                        }
                    }
                    PushKind::SSubscribe => return FeedEvent::Resubscribed(channel),
                    _ => {}
                }
            },
        }
    }
}
