//! Redis topologies the HA tests start from real `redis-server` processes on private ports: a master with replicas
//! watched by Sentinels, and a Cluster of masters with one replica each.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::{Redis, eventually, free_port, redis_server_binary, run_ok};

/// The name Sentinels monitor the master under.
pub const MASTER_NAME: &str = "roomcast";

/// A master, its replicas and three Sentinels. Every process is killed on drop.
#[derive(Debug)]
pub struct SentinelSet {
    /// Data nodes; which one is master changes with failovers.
    pub nodes: Vec<Redis>,
    sentinels: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl SentinelSet {
    /// Starts a master, `replicas` replicas and three Sentinels (quorum 2, master down after 1 s), and waits until
    /// every Sentinel sees the master with all its replicas and the other Sentinels.
    pub async fn start(replicas: usize) -> Self {
        let master = Redis::start().await;
        let mut nodes = vec![];
        for _ in 0..replicas {
            nodes.push(Redis::start_replica_of(&master).await);
        }
        nodes.insert(0, master);
        let dir = std::env::temp_dir().join(format!(
            "roomcast-sentinels-{}-{}",
            nodes[0].port(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 4000\n\
                     sentinel parallel-syncs {MASTER_NAME} 1\n",
                    dir = dir.display(),
                    master = nodes[0].port(),
                ),
            )
            .unwrap();
            let child = Command::new(redis_server_binary())
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start redis-server --sentinel");
            sentinels.push((port, child));
        }
        let set = Self {
            nodes,
            sentinels,
            dir,
        };
        eventually(
            "every Sentinel sees the master, its replicas and the other Sentinels",
            || async {
                for (port, _) in &set.sentinels {
                    let info = sentinel_info(*port).await?;
                    let want = format!("slaves={replicas},sentinels=3");
                    if !info.contains(&want) {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        set
    }

    /// `redis+sentinel://…/roomcast` naming all three Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the master the Sentinels currently name.
    pub async fn master_port(&self) -> u16 {
        for (port, _) in &self.sentinels {
            if let Ok(mut conn) = connect(*port).await
                && let Ok((_, p)) = redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(MASTER_NAME)
                    .query_async::<(String, u16)>(&mut conn)
                    .await
            {
                return p;
            }
        }
        panic!("no Sentinel names a master");
    }

    /// Kills the current master with SIGKILL, once a failover can follow it: every Sentinel knows a replica of it
    /// that is up and linked to it. (Sentinels learn a new master's replicas from its `INFO`, every 10 s: killing a
    /// freshly promoted master earlier leaves them with no replica to promote.) Returns its port.
    pub async fn kill_master(&mut self) -> u16 {
        eventually(
            "every Sentinel knows a healthy replica of the master",
            || async {
                for (port, _) in &self.sentinels {
                    if !knows_a_healthy_replica(*port).await {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await;
        let port = self.master_port().await;
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("the master is one of ours")
            .kill();
        port
    }

    /// Once the Sentinels have promoted another master, starts the killed node on `port` again, empty, as a
    /// replica of the new master: a crashed node rebooted and put back.
    pub async fn revive_after_failover(&mut self, port: u16) {
        let master = eventually("the Sentinels name a new master", || async {
            let now = self.master_port().await;
            (now != port).then_some(now)
        })
        .await;
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("the killed node is one of ours")
            .restart_as_replica_of(master)
            .await;
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn connect(port: u16) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await
}

/// Whether the Sentinel on `port` lists a replica of the master that it sees up and linked to the master.
async fn knows_a_healthy_replica(port: u16) -> bool {
    let Ok(mut conn) = connect(port).await else {
        return false;
    };
    let Ok(replicas) = redis::cmd("SENTINEL")
        .arg("REPLICAS")
        .arg(MASTER_NAME)
        .query_async::<Vec<Vec<String>>>(&mut conn)
        .await
    else {
        return false;
    };
    replicas.iter().any(|fields| {
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|kv| kv[0] == name)
                .and_then(|kv| kv.get(1))
                .map(String::as_str)
        };
        field("flags") == Some("slave") && field("master-link-status") == Some("ok")
    })
}

/// The `master0:` line of a Sentinel's `INFO sentinel`.
async fn sentinel_info(port: u16) -> Option<String> {
    let mut conn = connect(port).await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("sentinel")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find(|l| l.starts_with("master0:"))
        .map(str::to_owned)
}

/// A Redis Cluster: three masters with one replica each, made by `redis-cli --cluster create`.
#[derive(Debug)]
pub struct ClusterSet {
    pub nodes: Vec<Redis>,
}

impl ClusterSet {
    /// Starts six nodes, joins them into a cluster and waits until every node reports `cluster_state:ok`.
    pub async fn start() -> Self {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            nodes.push(Redis::start_cluster_node().await);
        }
        let mut create = Command::new(redis_server_binary().with_file_name("redis-cli"));
        create.args(["--cluster", "create"]);
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        run_ok(
            create.args(["--cluster-replicas", "1", "--cluster-yes"]),
            "redis-cli --cluster create (apt-get install redis-tools)",
        );
        let set = Self { nodes };
        set.wait_ok().await;
        set
    }

    /// Waits until every live node says the cluster is ok and every replication link is up.
    pub async fn wait_ok(&self) {
        eventually("the cluster is ok on every live node", || async {
            for n in &self.nodes {
                let Ok(mut conn) = connect(n.port()).await else {
                    continue; // a killed node
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                if !info.contains("cluster_state:ok") {
                    return None;
                }
                // Masters have their replica attached and in sync, so WAIT can be satisfied.
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                let is_master = replication.contains("role:master");
                if is_master && !replication.contains("state=online") {
                    return None;
                }
                if !is_master && !replication.contains("master_link_status:up") {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }

    /// `redis+cluster://` naming every node.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The port of the master that serves `key`'s slot, asked of any live node (none while a failover is under way).
    pub async fn master_of(&self, key: &str) -> Option<u16> {
        for n in &self.nodes {
            let Ok(mut conn) = connect(n.port()).await else {
                continue;
            };
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            let nodes: String = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
                .unwrap();
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split(' ').collect();
                if !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                let serves = fields[8..].iter().any(|range| {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    match (lo.parse::<u16>(), hi.parse::<u16>()) {
                        (Ok(lo), Ok(hi)) => (lo..=hi).contains(&slot),
                        _ => false,
                    }
                });
                if serves {
                    return Some(port);
                }
            }
            return None;
        }
        None
    }

    /// Starts the killed node on `port` again with its cluster state: it rejoins as a replica.
    pub async fn restart(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("one of ours")
            .start_again()
            .await;
    }

    /// Kills the node on `port` with SIGKILL.
    pub fn kill(&mut self, port: u16) {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("one of ours")
            .kill();
    }
}
