//! A private network for partition tests: every server (a Redis node, a Sentinel, a `roomcast` replica) runs in a
//! network namespace of its own with its own address, all joined by a bridge that lives in one more namespace (so
//! the host's firewall, Docker's included, never sees the traffic), and the test itself reaches every address from
//! the host through a veth of its own. [`Net::partition`] cuts the links between two groups of hosts by dropping,
//! in each host's own `nft` table, what arrives from the other group: no RST, no FIN, no ICMP — bytes simply stop
//! arriving, as in a real partition — until [`Net::heal`]. Needs root, `ip` (iproute2) and `nft`.
//!
//! Namespaces and links are named after the test process, removed on drop, and removed by the next [`Net::new`]
//! when a killed test process left them behind.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};

use crate::run_ok;

/// Nets made by this process so far: each names its namespaces and links with its number.
static NETS: AtomicU8 = AtomicU8::new(0);

/// Where test processes claim their /24s: one file per subnet, holding the claimer's pid.
fn claims_dir() -> PathBuf {
    std::env::temp_dir().join("roomcast-netns-claims")
}

/// The networks the host already routes (its own LAN, Docker's bridges, a cloud's 10/8), as (address, prefix
/// length): a test's /24 must not shadow any of them.
fn routed() -> Vec<(u32, u32)> {
    let Ok(out) = Command::new("ip").args(["-4", "route", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let net = line.split_whitespace().next()?;
            let (addr, len) = net.split_once('/').unwrap_or((net, "32"));
            Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len.parse().ok()?))
        })
        .collect()
}

/// Whether the /24 starting at `net` overlaps the network `(addr, len)`.
fn overlaps(net: u32, (addr, len): (u32, u32)) -> bool {
    let shorter = len.min(24);
    let mask = if shorter == 0 {
        0
    } else {
        u32::MAX << (32 - shorter)
    };
    net & mask == addr & mask
}

/// The /24s a test network may take, in order: 198.18.0.0/15, the range set aside for network tests (RFC 2544),
/// then 10.100.0.0–10.199.255.0.
fn candidates() -> impl Iterator<Item = [u8; 3]> {
    let tests = (18..=19u8).flat_map(|b| (0..=255u8).map(move |c| [198, b, c]));
    let private = (100..=199u8).flat_map(|b| (0..=255u8).map(move |c| [10, b, c]));
    tests.chain(private)
}

/// Claims a /24 (see [`candidates`]) that the host does not route already and no running test process holds (test
/// processes run side by side, and two links with one subnet would break both): the first whose claim file this
/// process creates, after clearing the claims of processes that are gone. Returns its first three octets and the
/// claim file.
fn claim_subnet() -> ([u8; 3], PathBuf) {
    let dir = claims_dir();
    std::fs::create_dir_all(&dir).expect("make the subnet claims directory");
    let pid = std::process::id();
    let routed = routed();
    for [a, b, c] in candidates() {
        let net = u32::from(Ipv4Addr::new(a, b, c, 0));
        if routed.iter().any(|r| overlaps(net, *r)) {
            continue;
        }
        let file = dir.join(format!("{a}.{b}.{c}"));
        let claimed = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&file);
        match claimed {
            Ok(mut f) => {
                use std::io::Write;
                let _ = write!(f, "{pid}");
                return ([a, b, c], file);
            }
            Err(_) => {
                // Held: by a running test, or by one that is gone, whose claim goes for the next to take.
                let holder = std::fs::read_to_string(&file).unwrap_or_default();
                let gone = holder
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists());
                if gone {
                    let _ = std::fs::remove_file(&file);
                }
            }
        }
    }
    panic!(
        "no free /24 left in 198.18.0.0/15 or 10.100.0.0–10.199.255.0 (claims in {})",
        dir.display()
    );
}

/// One private network: a bridge and the hosts on it. Everything is removed on drop, processes first.
#[derive(Debug)]
pub struct Net {
    /// The namespace that holds the bridge.
    world: String,
    /// The host's end of its veth to the bridge.
    uplink: String,
    /// The first three octets of the /24.
    prefix: [u8; 3],
    /// This process's claim on the /24, removed on drop.
    claim: PathBuf,
    hosts: Vec<String>,
}

/// One host of a [`Net`]: a network namespace with one address.
#[derive(Debug, Clone)]
pub struct Host {
    ns: String,
    ip: Ipv4Addr,
}

fn ip(args: &[&str]) {
    run_ok(
        Command::new("ip").args(args),
        &format!(
            "ip {} (apt-get install iproute2; root needed)",
            args.join(" ")
        ),
    );
}

fn nft_in(ns: &str, script: &str) {
    crate::link::nft(Some(ns), script);
}

/// The name prefix of everything this process makes.
fn own_prefix(pid: u32) -> String {
    format!("rcn{pid}-")
}

/// The host-side link names of a process (interface names are at most 15 bytes: 3 + 7 digits + 1 + 3).
fn uplink_prefix(pid: u32) -> String {
    format!("rcu{pid}x")
}

/// Removes the namespaces and links of test processes that no longer run.
fn sweep_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(pid) = name
            .strip_prefix("rcn")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_all_in(name);
            quietly(&["netns", "del", name]);
        }
    }
    let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix("rcu")
            .and_then(|rest| rest.split('x').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            quietly(&["link", "del", name]);
        }
    }
}

/// Runs `ip` where it may fail harmlessly (removing what may not exist), saying nothing.
fn quietly(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILLs every process in the namespace `ns`.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
}

impl Net {
    /// A new, empty network with a /24 of its own (see [`claim_subnet`]), reachable from the host at `.1`.
    pub fn new() -> Self {
        sweep_leftovers();
        let pid = std::process::id();
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        let (prefix, claim) = claim_subnet();
        let world = format!("{}{n}-w", own_prefix(pid));
        let uplink = format!("{}{n}", uplink_prefix(pid));
        quietly(&["netns", "del", &world]);
        quietly(&["link", "del", &uplink]);
        ip(&["netns", "add", &world]);
        let net = Self {
            world,
            uplink,
            prefix,
            claim,
            hosts: Vec::new(),
        };
        let w = net.world.as_str();
        ip(&["-n", w, "link", "set", "dev", "lo", "up"]);
        ip(&["-n", w, "link", "add", "name", "br0", "type", "bridge"]);
        ip(&["-n", w, "link", "set", "dev", "br0", "up"]);
        ip(&[
            "link",
            "add",
            "name",
            &net.uplink,
            "type",
            "veth",
            "peer",
            "name",
            "uplink",
            "netns",
            w,
        ]);
        ip(&[
            "-n", w, "link", "set", "dev", "uplink", "master", "br0", "up",
        ]);
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.address(1)),
            "dev",
            &net.uplink,
        ]);
        ip(&["link", "set", "dev", &net.uplink, "up"]);
        net
    }

    fn address(&self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.prefix;
        Ipv4Addr::new(a, b, c, last)
    }

    /// A new host on the network, with the next free address.
    pub fn host(&mut self) -> Host {
        let i = self.hosts.len();
        let last = u8::try_from(i + 2).expect("at most 250 hosts");
        let ns = format!("{}-{i}", self.world.trim_end_matches("-w"));
        quietly(&["netns", "del", &ns]);
        ip(&["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let port = format!("h{i}");
        ip(&[
            "-n",
            &self.world,
            "link",
            "add",
            "name",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        ip(&[
            "-n",
            &self.world,
            "link",
            "set",
            "dev",
            &port,
            "master",
            "br0",
            "up",
        ]);
        let host = Host {
            ns,
            ip: self.address(last),
        };
        ip(&[
            "-n",
            &host.ns,
            "addr",
            "add",
            &format!("{}/24", host.ip),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &host.ns, "link", "set", "dev", "eth0", "up"]);
        ip(&["-n", &host.ns, "link", "set", "dev", "lo", "up"]);
        nft_in(
            &host.ns,
            "add table inet roomcast\n\
             add chain inet roomcast input { type filter hook input priority 0 ; }\n",
        );
        host
    }

    /// Cuts every link between a host of `a` and a host of `b`, both ways: each host drops what arrives from the
    /// other side. Links within a side, and with the test itself, stay up.
    pub fn partition(&self, a: &[&Host], b: &[&Host]) {
        for (side, other) in [(a, b), (b, a)] {
            let from: Vec<String> = other.iter().map(|h| h.ip.to_string()).collect();
            for h in side {
                nft_in(
                    &h.ns,
                    &format!(
                        "add rule inet roomcast input ip saddr {{ {} }} drop\n",
                        from.join(", ")
                    ),
                );
            }
        }
    }

    /// Heals every partition: every host takes everything again.
    pub fn heal(&self) {
        for ns in &self.hosts {
            nft_in(ns, "flush chain inet roomcast input\n");
        }
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain([&self.world]) {
            kill_all_in(ns);
            quietly(&["netns", "del", ns]);
        }
        quietly(&["link", "del", &self.uplink]);
        let _ = std::fs::remove_file(&self.claim);
    }
}

impl Host {
    /// The host's address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// A command that runs `program` in this host's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]).arg(program);
        cmd
    }

    /// Starts a `redis-server` on `port` of this host, non-persistent, with `args` after the defaults; returns once
    /// it answers. Killed on drop.
    pub async fn redis(&self, port: u16, args: &[String]) -> Process {
        let dir = scratch(&format!("redis-{}-{port}", self.ip));
        let mut cmd = self.command(crate::redis_server_binary());
        cmd.args(["--port", &port.to_string(), "--bind", &self.ip.to_string()])
            .args(localrun::REDIS_NO_PERSISTENCE)
            .arg("--dir")
            .arg(&dir)
            .args(["--protected-mode", "no"])
            .args(args);
        self.serve(cmd, dir, port).await
    }

    /// Starts a Sentinel on `port` of this host monitoring `master` (quorum 2, down after 1 s). Killed on drop.
    pub async fn sentinel(&self, port: u16, master: (Ipv4Addr, u16)) -> Process {
        let dir = scratch(&format!("sentinel-{}-{port}", self.ip));
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind {ip}\ndir {dir}\nprotected-mode no\n\
                 sentinel monitor {name} {mip} {mport} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 4000\n\
                 sentinel parallel-syncs {name} 1\n",
                ip = self.ip,
                dir = dir.display(),
                name = crate::MASTER_NAME,
                mip = master.0,
                mport = master.1,
            ),
        )
        .expect("write sentinel.conf");
        let mut cmd = self.command(crate::redis_server_binary());
        cmd.arg(&conf).arg("--sentinel");
        self.serve(cmd, dir, port).await
    }

    /// Starts a Redis server or Sentinel with `cmd` (its scratch directory `dir`) and returns once it answers on
    /// `port`.
    async fn serve(&self, mut cmd: Command, dir: PathBuf, port: u16) -> Process {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server in a namespace");
        let process = Process {
            child: Some(child),
            dir: Some(dir),
        };
        self.wait_for_redis(port).await;
        process
    }

    async fn wait_for_redis(&self, port: u16) {
        let url = format!("redis://{}:{port}", self.ip);
        crate::eventually(&format!("{url} answers"), || async {
            let mut conn = redis::Client::open(url.as_str())
                .ok()?
                .get_multiplexed_async_connection()
                .await
                .ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        })
        .await;
    }
}

/// A scratch directory under the system's temporary directory, empty.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("roomcast-net-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("make a scratch directory");
    dir
}

/// A process started in a host, killed (SIGKILL) on drop, its scratch directory removed.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Process {
    /// Wraps a started child (e.g. a `roomcast` replica started with [`Host::command`]).
    pub fn new(child: Child) -> Self {
        Self {
            child: Some(child),
            dir: None,
        }
    }

    /// Kills it now.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(a: [u8; 4]) -> u32 {
        u32::from(Ipv4Addr::from(a))
    }

    #[test]
    fn a_subnet_overlaps_the_networks_that_contain_it_or_that_it_contains() {
        let mine = net([10, 150, 7, 0]);
        assert!(overlaps(mine, (net([10, 0, 0, 0]), 8)));
        assert!(overlaps(mine, (net([10, 150, 7, 0]), 24)));
        assert!(overlaps(mine, (net([10, 150, 7, 128]), 25)));
        assert!(
            overlaps(mine, (net([0, 0, 0, 0]), 0)),
            "a default route covers everything"
        );
        assert!(!overlaps(mine, (net([10, 150, 8, 0]), 24)));
        assert!(!overlaps(mine, (net([172, 17, 0, 0]), 16)));
        assert!(!overlaps(mine, (net([192, 0, 2, 0]), 24)));
    }
}
