//! Network partitions: every Redis node, Sentinel and replica of Roomcast runs on a host of its own in a private
//! network (`testkit::netns`: network namespaces on a bridge), and a partition drops, on each host, what arrives
//! from the other side — no RST, no FIN, bytes stop arriving — until it heals. Senders on both sides of the split
//! keep sending (resending unacked messages with the same cid, as the browser client does) and members on both
//! sides keep reading; afterwards every count is exact:
//!
//! - **lost**: acked, and not in the room's history once the partition healed (the new master's); events are told
//!   apart by id and author, since two masters may give two events one id;
//! - **duplicated**: delivered twice to one member;
//! - **missed**: in the history, never delivered to a member;
//! - **told**: a member that missed something, or saw something the history lost, received a `gap`.
//!
//! Where the Redis settings allow no loss (`--redis-wait-replicas`, `min-replicas-to-write`), lost, missed and
//! duplicated are 0. Where they allow it, the loss is counted, every lost message was acked while the partition
//! lasted, and every member it touched was told: never silently left behind. `cargo xtask test --chaos` runs each
//! split for longer and more often.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use shared::MsgId;
use testkit::netns::{Host, Net, Process};
use testkit::traffic::{Crowd, run_during};
use testkit::{MASTER_NAME, ReplicaProcess, eventually};
use tokio::time::Instant;

/// The port of every Redis node and Sentinel, each on its own host.
const REDIS: u16 = 7000;
const SENTINEL: u16 = 7100;
/// The room the senders use.
const ROOM: &str = "split";
/// How often each sender sends.
const SEND_EVERY: Duration = Duration::from_millis(20);

/// How long a split lasts after the new master is elected, and how many splits a run makes: short in `cargo xtask
/// test`, longer and repeated with `--chaos` (`ROOMCAST_CHAOS=1`).
fn schedule() -> (Duration, usize) {
    if crate::harness::chaos() {
        (Duration::from_secs(8), 3)
    } else {
        (Duration::from_secs(2), 1)
    }
}

async fn conn(ip: Ipv4Addr, port: u16) -> Option<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{ip}:{port}")).ok()?;
    tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()
}

async fn info(ip: Ipv4Addr, port: u16, section: &str) -> Option<String> {
    let mut c = conn(ip, port).await?;
    redis::cmd("INFO")
        .arg(section)
        .query_async(&mut c)
        .await
        .ok()
}

/// An event as the counts know it: its id and its author. After a split brain two masters may give two events the
/// same id (their clocks agree to the millisecond), so the id alone does not tell them apart; the two sides' senders
/// have different nicks.
type Event = (MsgId, String);

/// Every event in the room's stream, read from the server at `ip`.
async fn history(ip: Ipv4Addr) -> Vec<Event> {
    let mut c = conn(ip, REDIS).await.expect("reach the master");
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(format!("roomcast:{{{ROOM}}}:log"))
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE the room");
    entries
        .into_iter()
        .map(|(id, fields)| {
            let body: serde_json::Value =
                serde_json::from_str(&fields["m"]).expect("an entry's body is JSON");
            let nick = body["nick"].as_str().expect("every event here has a nick");
            (
                id.parse().expect("a stream id is a message id"),
                nick.to_owned(),
            )
        })
        .collect()
}

/// Which side of the split our first replica is on.
#[derive(Debug, Clone, Copy)]
enum Ours {
    /// It reaches both sides: the isolated master and the majority.
    Between,
    /// It is cut off with the master, from everything else (our second replica included).
    WithMaster,
}

/// How the Redis servers are arranged.
#[derive(Debug, Clone, Copy)]
enum Topology {
    /// A master, one replica and three Sentinels.
    Sentinel,
    /// Three masters with one replica each.
    Cluster,
}

/// Redis servers (and Sentinels) and two replicas of Roomcast, each on its own host of a private network.
struct World {
    topology: Topology,
    net: Net,
    /// The Redis servers.
    redis: Vec<Host>,
    sentinels: Vec<Host>,
    ours: Vec<Host>,
    _servers: Vec<Process>,
}

impl World {
    /// Starts the Redis servers with `redis_flags` (and, for Sentinel, the Sentinels), and waits until the topology
    /// is whole: every replica in sync, every Sentinel seeing the master, its replica and the other Sentinels, or
    /// the Cluster ok on every node.
    async fn start(topology: Topology, redis_flags: &[&str]) -> Self {
        let mut net = Net::new();
        let nodes = match topology {
            Topology::Sentinel => 2,
            Topology::Cluster => 6,
        };
        let redis: Vec<Host> = (0..nodes).map(|_| net.host()).collect();
        let sentinels: Vec<Host> = match topology {
            Topology::Sentinel => (0..3).map(|_| net.host()).collect(),
            Topology::Cluster => Vec::new(),
        };
        let ours: Vec<Host> = (0..2).map(|_| net.host()).collect();
        // A replica starts its first sync at once (Redis 7 waits 5 s for more replicas to share it by default).
        let mut flags: Vec<String> = vec!["--repl-diskless-sync-delay".into(), "0".into()];
        if matches!(topology, Topology::Cluster) {
            flags.extend(
                ["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"].map(String::from),
            );
        }
        flags.extend(redis_flags.iter().map(|f| (*f).to_owned()));
        let mut servers = Vec::new();
        match topology {
            Topology::Sentinel => {
                let master = redis[0].ip();
                servers.push(redis[0].redis(REDIS, &flags).await);
                let mut replica_flags = flags.clone();
                replica_flags.extend(["--replicaof".into(), master.to_string(), REDIS.to_string()]);
                servers.push(redis[1].redis(REDIS, &replica_flags).await);
                for s in &sentinels {
                    servers.push(s.sentinel(SENTINEL, (master, REDIS)).await);
                }
            }
            Topology::Cluster => {
                for node in &redis {
                    servers.push(node.redis(REDIS, &flags).await);
                }
                let mut create = std::process::Command::new(
                    testkit::redis_server_binary().with_file_name("redis-cli"),
                );
                create.args(["--cluster", "create"]);
                create.args(redis.iter().map(|h| format!("{}:{REDIS}", h.ip())));
                testkit::run_ok(
                    create.args(["--cluster-replicas", "1", "--cluster-yes"]),
                    "redis-cli --cluster create (apt-get install redis-tools)",
                );
            }
        }
        let world = Self {
            topology,
            net,
            redis,
            sentinels,
            ours,
            _servers: servers,
        };
        eventually("the topology is whole", || world.whole()).await;
        world
    }

    /// `Some` once every Redis master has its replica in sync and the topology agrees on it.
    async fn whole(&self) -> Option<()> {
        for node in &self.redis {
            let replication = info(node.ip(), REDIS, "replication").await?;
            let synced = if replication.contains("role:master") {
                replication.contains("state=online")
            } else {
                replication.contains("master_link_status:up")
            };
            synced.then_some(())?;
            if matches!(self.topology, Topology::Cluster) {
                info_cluster(node.ip())
                    .await?
                    .contains("cluster_state:ok")
                    .then_some(())?;
            }
        }
        for s in &self.sentinels {
            let info = info(s.ip(), SENTINEL, "sentinel").await?;
            info.contains("slaves=1,sentinels=3").then_some(())?;
        }
        Some(())
    }

    fn url(&self) -> String {
        match self.topology {
            Topology::Sentinel => {
                let hosts: Vec<String> = self
                    .sentinels
                    .iter()
                    .map(|s| format!("{}:{SENTINEL}", s.ip()))
                    .collect();
                format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
            }
            Topology::Cluster => {
                let hosts: Vec<String> = self
                    .redis
                    .iter()
                    .map(|s| format!("{}:{REDIS}", s.ip()))
                    .collect();
                format!("redis+cluster://{}", hosts.join(","))
            }
        }
    }

    /// The room's master and a replica of it, as the topology names them now (asked of the Sentinels, or of the
    /// Cluster nodes that answer `CLUSTER SLOTS`).
    async fn masters(&self) -> Option<(&Host, Option<&Host>)> {
        let host = |ip: Ipv4Addr| self.redis.iter().find(|h| h.ip() == ip);
        match self.topology {
            Topology::Sentinel => {
                for s in &self.sentinels {
                    if let Some(mut c) = conn(s.ip(), SENTINEL).await
                        && let Ok((ip, _)) = redis::cmd("SENTINEL")
                            .arg("get-master-addr-by-name")
                            .arg(MASTER_NAME)
                            .query_async::<(String, u16)>(&mut c)
                            .await
                    {
                        let master = host(ip.parse().ok()?)?;
                        let replica = self.redis.iter().find(|h| h.ip() != master.ip());
                        return Some((master, replica));
                    }
                }
                None
            }
            Topology::Cluster => {
                // Each node's view of the slot; the isolated master's may lag, so the most common view wins.
                let mut views: Vec<(Ipv4Addr, Option<Ipv4Addr>)> = Vec::new();
                for node in &self.redis {
                    if let Some(view) = slot_owner(node.ip()).await {
                        views.push(view);
                    }
                }
                let (master, replica) = views
                    .iter()
                    .max_by_key(|v| views.iter().filter(|w| w == v).count())
                    .copied()?;
                Some((host(master)?, replica.and_then(host)))
            }
        }
    }

    /// Starts our two replicas with `flags`.
    async fn replicas(&self, flags: &[&str]) -> Vec<ReplicaProcess> {
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_roomcast"));
        let mut all = vec!["--history-limit", "100000"];
        all.extend(flags);
        let mut out = Vec::new();
        for (i, host) in self.ours.iter().enumerate() {
            out.push(
                ReplicaProcess::start_in(host, binary, &self.url(), &format!("p{i}"), &all).await,
            );
        }
        out
    }

    /// One split: the room's master is cut off from everything else — the Sentinels or the other Cluster nodes,
    /// its replica, our second replica — and our first replica is with it or reaches both sides. Once its replica
    /// has been promoted, the split lasts `hold` more, then heals, and the run waits until the old master follows
    /// the new one.
    async fn split(&self, ours: Ours, hold: Duration) -> Split {
        let (master, replica) = self
            .masters()
            .await
            .expect("the topology names the room's master");
        let replica = replica.expect("the room's master has a replica");
        let mut isolated = vec![master];
        if matches!(ours, Ours::WithMaster) {
            isolated.push(&self.ours[0]);
        }
        let majority: Vec<&Host> = self
            .redis
            .iter()
            .chain(&self.sentinels)
            .chain(&self.ours)
            .filter(|h| !isolated.iter().any(|i| i.ip() == h.ip()))
            .filter(|h| matches!(ours, Ours::WithMaster) || h.ip() != self.ours[0].ip())
            .collect();
        let began = Instant::now();
        self.net.partition(&isolated, &majority);
        eventually("the room's replica is promoted", || async {
            let (now, _) = self.masters().await?;
            (now.ip() == replica.ip()).then_some(())
        })
        .await;
        tokio::time::sleep(hold).await;
        self.net.heal();
        let healed = Instant::now();
        eventually("the old master follows the new one", || async {
            let info = info(master.ip(), REDIS, "replication").await?;
            (info.contains("role:slave") && info.contains("master_link_status:up")).then_some(())
        })
        .await;
        (began, healed, Instant::now())
    }
}

/// The master of the room's slot and its first replica, as the Cluster node at `ip` sees them (`CLUSTER SLOTS`).
async fn slot_owner(ip: Ipv4Addr) -> Option<(Ipv4Addr, Option<Ipv4Addr>)> {
    let mut c = conn(ip, REDIS).await?;
    let slot: i64 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(ROOM)
        .query_async(&mut c)
        .await
        .ok()?;
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut c)
        .await
        .ok()?;
    let number = |v: &redis::Value| match v {
        redis::Value::Int(n) => Some(*n),
        _ => None,
    };
    let ip_of = |v: &redis::Value| match v {
        redis::Value::Array(node) => match node.first() {
            Some(redis::Value::BulkString(ip)) => String::from_utf8_lossy(ip).parse().ok(),
            _ => None,
        },
        _ => None,
    };
    ranges.iter().find_map(|range| {
        let redis::Value::Array(fields) = range else {
            return None;
        };
        let (lo, hi) = (number(fields.first()?)?, number(fields.get(1)?)?);
        (lo..=hi)
            .contains(&slot)
            .then(|| Some((ip_of(fields.get(2)?)?, fields.get(3).and_then(ip_of))))?
    })
}

async fn info_cluster(ip: Ipv4Addr) -> Option<String> {
    let mut c = conn(ip, REDIS).await?;
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut c)
        .await
        .ok()
}

/// When a split began, when it healed, and when the old master was seen following the new one: until then, it may
/// still take writes.
type Split = (Instant, Instant, Instant);

/// The counts of one run, over all senders and members.
#[derive(Debug, Default)]
struct Counts {
    sent: usize,
    acked: usize,
    lost: usize,
    duplicated: usize,
    missed: usize,
    /// Members that missed something or saw something lost, and how many of them were told (a `gap`).
    touched: usize,
    told: usize,
    /// From the split's start to the last ack that was lost.
    window: Duration,
    /// Lost acks that came after the split healed, before the old master was demoted.
    after_heal: usize,
    /// Edits and reactions refused `message_gone`: their message was acked, then lost.
    gone: usize,
}

/// Counts a run against the room's history after it (see the module docs) and prints the counts; then fails on what
/// no setting allows — a member told nothing though it missed something or saw something lost, a message shown
/// twice or out of order, a lost message acked outside a split, an event in the history that nobody acked.
fn count(name: &str, crowd: &Crowd, history: &[Event], splits: &[Split]) -> Counts {
    let kept: HashSet<&Event> = history
        .iter()
        .filter(|(id, _)| *id != crowd.marker)
        .collect();
    let mut acked = HashSet::new();
    let mut counts = Counts::default();
    let mut faults = Vec::new();
    for sender in &crowd.senders {
        counts.sent += sender.sent;
        counts.gone += sender.gone.len();
        for (id, at) in sender.acked.iter().zip(&sender.acked_at) {
            let event = (*id, sender.nick.clone());
            if !kept.contains(&event) {
                match splits
                    .iter()
                    .find(|(began, _, settled)| began <= at && at <= settled)
                {
                    Some((began, healed, _)) => {
                        counts.window = counts.window.max(*at - *began);
                        counts.after_heal += usize::from(at > healed);
                    }
                    None => faults.push(format!("{id} was lost, though acked outside a split")),
                }
            }
            acked.insert(event);
        }
    }
    let acked: HashSet<&Event> = acked.iter().collect();
    counts.acked = acked.len();
    counts.lost = acked.difference(&kept).count();
    let strangers: Vec<&&Event> = kept.difference(&acked).collect();
    if !strangers.is_empty() {
        faults.push(format!("stored but never acked: {strangers:?}"));
    }
    for (i, seen) in crowd.members.iter().enumerate() {
        let events: Vec<Event> = seen
            .ids
            .iter()
            .copied()
            .zip(seen.authors.iter().cloned())
            .collect();
        let got: HashSet<&Event> = events.iter().collect();
        counts.duplicated += events.len() - got.len();
        if !seen.ids.windows(2).all(|w| w[0] < w[1]) {
            faults.push(format!("member {i} received events out of order or twice"));
        }
        let strangers: Vec<&&Event> = got.difference(&acked).collect();
        if !strangers.is_empty() {
            faults.push(format!(
                "member {i} received ids never acked: {strangers:?}"
            ));
        }
        let missed = kept.difference(&got).count();
        let saw_lost = got.difference(&kept).count();
        counts.missed += missed;
        if missed + saw_lost > 0 {
            counts.touched += 1;
            counts.told += usize::from(seen.gaps > 0);
            if seen.gaps == 0 {
                faults.push(format!(
                    "member {i} missed {missed} and saw {saw_lost} lost, and was never told"
                ));
            }
        }
    }
    println!(
        "partition={name} sent={} acked={} refused_message_gone={} delivered_per_member={:?} lost={} duplicated={} \
         missed={} members_touched={} told={} gaps={:?} unavailable_answers={:?} loss_window_ms={} \
         lost_after_heal={}",
        counts.sent,
        counts.acked,
        counts.gone,
        crowd
            .members
            .iter()
            .map(|m| m.ids.len())
            .collect::<Vec<_>>(),
        counts.lost,
        counts.duplicated,
        counts.missed,
        counts.touched,
        counts.told,
        crowd.members.iter().map(|m| m.gaps).collect::<Vec<_>>(),
        crowd
            .senders
            .iter()
            .map(|s| s.unavailable)
            .collect::<Vec<_>>(),
        counts.window.as_millis(),
        counts.after_heal,
    );
    assert!(faults.is_empty(), "{name}: {}", faults.join("; "));
    counts
}

/// Runs senders and members on both of our replicas through the splits of [`schedule`] and counts.
async fn split_brain(
    name: &str,
    topology: Topology,
    ours: Ours,
    redis_flags: &[&str],
    flags: &[&str],
) -> Counts {
    let world = World::start(topology, redis_flags).await;
    let replicas = world.replicas(flags).await;
    let (a, b) = (replicas[0].ws_url(), replicas[1].ws_url());
    let (hold, rounds) = schedule();
    let splits = async {
        let mut splits = Vec::new();
        for _ in 0..rounds {
            // Traffic before, between and after the splits.
            tokio::time::sleep(Duration::from_secs(1)).await;
            splits.push(world.split(ours, hold).await);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        splits
    };
    let (crowd, splits) = run_during(
        ROOM,
        vec![vec![a.clone()], vec![b.clone()]],
        vec![vec![a.clone()], vec![b.clone()]],
        SEND_EVERY,
        &b,
        splits,
    )
    .await;
    let (master, _) = world
        .masters()
        .await
        .expect("the topology names the room's master");
    let history = history(master.ip()).await;
    count(name, &crowd, &history, &splits)
}

/// A split with a setting that allows loss: [`count`] checks that every lost message was acked within the split and
/// every member it touched was told, and nothing was shown twice or out of order.
async fn loss_is_told(name: &str, topology: Topology, ours: Ours, redis_flags: &[&str]) {
    split_brain(name, topology, ours, redis_flags, &[]).await;
}

/// A split with a setting that allows no loss: nothing acked is lost, nothing in the history is missed.
async fn nothing_is_lost(
    name: &str,
    topology: Topology,
    ours: Ours,
    redis_flags: &[&str],
    flags: &[&str],
) {
    let counts = split_brain(name, topology, ours, redis_flags, flags).await;
    assert_eq!((counts.lost, counts.missed), (0, 0), "{name}: lost, missed");
}

const WAIT_1: [&str; 2] = ["--redis-wait-replicas", "1"];
const MIN_REPLICAS: [&str; 4] = [
    "--min-replicas-to-write",
    "1",
    "--min-replicas-max-lag",
    "1",
];

/// Split brain with our first replica between the sides, and no setting that trades availability for safety: the
/// isolated master acks our first replica's sends until that replica hears from the Sentinels that another master
/// was promoted (it follows `+switch-master` at once). What it acked meanwhile is lost when the old master rejoins
/// as a replica: counted, all of it acked within the split, and every member it touched is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_split_brain_without_waiting_tells_every_member() {
    let (topology, ours) = (Topology::Sentinel, Ours::Between);
    loss_is_told("sentinel-between-no-wait", topology, ours, &[]).await;
}

/// The same split with `--redis-wait-replicas 1`: a send is acked only once the Redis replica has it, which the
/// isolated master cannot have, so nothing acked is lost, nothing is missed, nothing is shown twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_split_brain_with_wait_loses_nothing() {
    let (topology, ours) = (Topology::Sentinel, Ours::Between);
    nothing_is_lost("sentinel-between-wait", topology, ours, &[], &WAIT_1).await;
}

/// Our first replica cut off together with the master, from the Sentinels and our second replica: two masters take
/// writes at once, the isolated one for as long as the split lasts (the classic split brain). Everything it acked
/// is lost when it rejoins; the members on our first replica miss what the other side wrote meanwhile, and are told.
/// `min-replicas-to-write 1` with `min-replicas-max-lag 1` makes the isolated master refuse writes once its replica
/// has been silent for a second or two, which bounds the loss to that window; with `--redis-wait-replicas 1` too,
/// nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_split_brain_with_our_replica_on_the_masters_side() {
    let (topology, ours) = (Topology::Sentinel, Ours::WithMaster);
    loss_is_told("sentinel-with-master-no-setting", topology, ours, &[]).await;
    loss_is_told(
        "sentinel-with-master-min-replicas",
        topology,
        ours,
        &MIN_REPLICAS,
    )
    .await;
    let name = "sentinel-with-master-min-replicas-wait";
    nothing_is_lost(name, topology, ours, &MIN_REPLICAS, &WAIT_1).await;
}

/// Cluster: the shard that owns the room loses its master to a split — cut off from the other five nodes, its
/// replica and our second replica, while our first replica still reaches it or is cut off with it. The majority
/// promotes the replica after the node timeout (1 s here); the isolated master stops taking writes by itself after
/// the same timeout, so without waiting only what it acked before then is lost (and every member it touched is
/// told), wherever our replica is; with `--redis-wait-replicas 1`, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shard_master_split_off() {
    let topology = Topology::Cluster;
    loss_is_told("cluster-between-no-wait", topology, Ours::Between, &[]).await;
    loss_is_told(
        "cluster-with-master-no-wait",
        topology,
        Ours::WithMaster,
        &[],
    )
    .await;
    let name = "cluster-between-wait";
    nothing_is_lost(name, topology, Ours::Between, &[], &WAIT_1).await;
}
