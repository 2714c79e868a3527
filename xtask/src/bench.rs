//! `cargo xtask bench`: Roomcast against socket.io with its Redis adapter, a FastAPI + redis.asyncio chat and the
//! bare ceiling, in the same topology (two servers and one Redis; the ceiling is one process) and driven by the same
//! load generator (`testkit`'s `loadgen`). Writes `target/bench/results.json` and `target/bench/p99.svg`.
//!
//! Scenarios: (1) one room of 1,000 members, the publish rate ramped until p99 exceeds 100 ms or a delivery is lost;
//! (2) 10,000 members in 1,000 rooms of 10, one message per member every 10 s; (3) idle members on one server:
//! memory per connection; (4) 100 members across both servers at 100 messages/s: latency at light load; and, for
//! Roomcast with its PostgreSQL archive (`archive.rs`), what the archive costs the ramp and what it sustains, and
//! (`people.rs`) what search and read positions cost.
//! Everything runs on loopback, bounded in time. This machine is shared by servers and generator, so every figure
//! is the median of `--runs` runs (default 3) with its min and max, and the ramp measures the systems in turns at
//! each rate. Each point also says what the replicas, Redis and the generator spent per delivery. `--quick` runs
//! a short subset (and is what `cargo xtask test` smoke-tests, so the harness cannot rot).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use localrun::free_port;
use serde_json::{Value, json};

use crate::tools::{self, Need};
use crate::{exec, step};

mod archive;
mod people;

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run of every scenario at small sizes (about a minute per system).
    #[arg(long)]
    pub quick: bool,
    /// Systems to measure (default: all): roomcast, socketio, fastapi, ceiling.
    #[arg(long, value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Exercise the harness at tiny load with debug builds of Roomcast and the ceiling (what `cargo xtask test`
    /// runs); its figures mean nothing.
    #[arg(long)]
    pub smoke: bool,
    /// Scenarios to run (default: all): ramp, light, many, idle, idle-history (Roomcast only: idle members of rooms
    /// that hold 50 messages of 100 characters, so each was sent a full `joined`), wide (Roomcast only: 51,000 idle connections over
    /// three replicas and three generator processes), storm (Roomcast only: 15,000 clients, one replica killed and
    /// one drained; draws storm.svg), archive-cost (Roomcast only: the ramp with and without its PostgreSQL archive;
    /// draws p99-archive.svg), archive (Roomcast only: 1,000,000 messages in 100 rooms stored under relay load while
    /// the archive copies them; archive throughput and lag, scroll-back latency from PostgreSQL, disk per message),
    /// search (Roomcast only: query latency over 1,000,000 archived messages), reads (Roomcast only: what read
    /// positions cost with 10,000 members reading).
    /// A partial run still writes results.json.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Instead of the scenarios: record Roomcast's replica with `perf` at this many messages/s into 1,000 members
    /// and draw target/bench/flamegraph.svg.
    #[arg(long)]
    pub profile: Option<u64>,
    /// The binaries are built already (by `cargo xtask test`'s one build, or by an earlier run while the tree does
    /// not build): do not build them again.
    #[arg(long = "no-build")]
    pub built: bool,
    /// Runs per figure: each figure is the median of this many runs, reported with its min and max (the smoke run
    /// makes one). The ramp measures every rate this many times, the systems interleaved.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

/// A process that dies with its handle.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command) -> anyhow::Result<Self> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// CPU time used so far (user + system), in seconds.
    fn cpu_secs(&self) -> f64 {
        cpu_secs(self.child.id())
    }

    /// A line of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak).
    fn status_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// CPU time process `pid` used so far (user + system), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of /proc/<pid>/stat, i.e. 11 and 12 after the state field.
    (ticks(11) + ticks(12)) / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on {port} within 30 s")
}

/// One system under test: its processes (servers, Redis, Roomcast's archive) and the URLs clients use.
struct Deployment {
    servers: Vec<Proc>,
    redis: Option<Proc>,
    /// Redis's port, when there is one.
    redis_port: Option<u16>,
    urls: Vec<String>,
    /// Roomcast's archive, when it has one; declared last, so it stops after the replicas.
    postgres: Option<archive::Postgres>,
}

impl Deployment {
    fn procs(&self) -> impl Iterator<Item = &Proc> {
        self.servers.iter().chain(self.redis.iter())
    }
}

struct Env {
    root: PathBuf,
    /// Where the binaries are: target/release, or target/debug for the smoke run.
    bins: PathBuf,
    scratch: PathBuf,
    redis_server: PathBuf,
    path: std::ffi::OsString,
}

impl Env {
    fn bin(&self, name: &str) -> PathBuf {
        self.bins.join(name)
    }
}

fn redis(env: &Env) -> anyhow::Result<(Proc, String)> {
    let port = free_port();
    let dir = env.scratch.join(format!("redis-{port}"));
    std::fs::create_dir_all(&dir)?;
    let proc = Proc::spawn(
        "redis-server",
        &mut tools::redis_command(&env.redis_server, port, &dir),
    )?;
    wait_port(port, "redis-server")?;
    Ok((proc, format!("redis://127.0.0.1:{port}")))
}

fn deploy(env: &Env, system: &str, servers: usize) -> anyhow::Result<Deployment> {
    deploy_with(env, system, servers, None, &[])
}

/// [`deploy`], for Roomcast with `postgres` as its archive (`--archive-sweep-secs 1`, so the lag figures are fresh)
/// and `extra` arguments to every replica.
fn deploy_with(
    env: &Env,
    system: &str,
    servers: usize,
    postgres: Option<archive::Postgres>,
    extra: &[String],
) -> anyhow::Result<Deployment> {
    if system == "ceiling" {
        let port = free_port();
        let proc = Proc::spawn(
            "ceiling",
            Command::new(env.bin("ceiling")).args(["--port", &port.to_string()]),
        )?;
        wait_port(port, "ceiling")?;
        return Ok(Deployment {
            servers: vec![proc],
            redis: None,
            redis_port: None,
            urls: vec![format!("ws://127.0.0.1:{port}")],
            postgres: None,
        });
    }
    let (redis, url) = redis(env)?;
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for i in 0..servers {
        let port = free_port();
        let mut cmd = match system {
            "roomcast" => {
                let mut c = Command::new(env.bin("roomcast"));
                c.args([
                    "--port",
                    &port.to_string(),
                    "--redis-url",
                    &url,
                    "--node-id",
                    &format!("bench-{i}"),
                ])
                .args([
                    "--static-dir",
                    "/nonexistent",
                    "--sends-per-sec",
                    "100000",
                    "--send-burst",
                    "100000",
                ])
                .args(["--max-rooms", "64"])
                .args(extra)
                .env("RUST_LOG", "warn");
                if let Some(pg) = &postgres {
                    c.args(["--database-url", &pg.url, "--archive-sweep-secs", "1"]);
                }
                c
            }
            "socketio" => {
                let mut c = Command::new("node");
                c.current_dir(env.scratch.join("socketio"))
                    .args(["server.js", "--port", &port.to_string(), "--redis", &url])
                    .env("PATH", &env.path);
                c
            }
            "fastapi" => {
                let mut c = Command::new(env.scratch.join("venv/bin/uvicorn"));
                c.current_dir(env.root.join("bench/peers/fastapi"))
                    .args([
                        "app:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        &port.to_string(),
                    ])
                    .args([
                        "--log-level",
                        "warning",
                        "--ws-per-message-deflate",
                        "false",
                    ])
                    .env("REDIS_URL", &url);
                c
            }
            other => bail!("unknown system {other}"),
        };
        procs.push(Proc::spawn(&format!("{system}-{i}"), &mut cmd)?);
        wait_port(port, system)?;
        urls.push(format!("ws://127.0.0.1:{port}"));
    }
    Ok(Deployment {
        servers: procs,
        redis: Some(redis),
        redis_port: url.rsplit(':').next().and_then(|p| p.parse().ok()),
        urls,
        postgres,
    })
}

/// Runs the load generator once and returns its report, with the servers' CPU time over the sending phase (between
/// the generator's phase marks) and per delivery, and their peak memory.
fn load(env: &Env, system: &str, dep: &Deployment, args: &[String]) -> anyhow::Result<Value> {
    use std::io::BufRead;
    let mut cmd = Command::new(env.bin("loadgen"));
    cmd.args(["--system", system]);
    for url in &dep.urls {
        cmd.args(["--url", url]);
    }
    let mut child = cmd
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run loadgen")?;
    let stderr = child.stderr.take().context("loadgen's stderr")?;
    let generator = child.id();
    // CPU seconds of (replicas, Redis, the generator, PostgreSQL) at a moment.
    let split = || {
        (
            dep.servers.iter().map(Proc::cpu_secs).sum::<f64>(),
            dep.redis.as_ref().map_or(0.0, Proc::cpu_secs),
            cpu_secs(generator),
            dep.postgres
                .as_ref()
                .map_or(0.0, archive::Postgres::cpu_secs),
        )
    };
    let (mut sending, mut done) = (None, None);
    for line in std::io::BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
    {
        match line.as_str() {
            "phase: sending" => sending = Some(split()),
            "phase: done" => done = Some(split()),
            other => eprintln!("{other}"),
        }
    }
    let out = child.wait_with_output().context("loadgen")?;
    if !out.status.success() {
        bail!("loadgen failed ({}) for {system} {args:?}", out.status);
    }
    let mut report: Value = serde_json::from_slice(&out.stdout).context("loadgen's report")?;
    let (replicas, redis, generator, postgres) =
        done.zip(sending).map_or((0.0, 0.0, 0.0, 0.0), |(d, s)| {
            (d.0 - s.0, d.1 - s.1, d.2 - s.2, d.3 - s.3)
        });
    // The system's CPU: its servers, Redis and, with an archive, PostgreSQL.
    let cpu = replicas + redis + postgres;
    let delivered = report["delivered"].as_f64().unwrap_or(0.0);
    let per_delivery = |secs: f64| {
        if delivered > 0.0 {
            secs * 1e6 / delivered
        } else {
            0.0
        }
    };
    report["server_cpu_secs"] = json!(cpu);
    report["server_cpu_us_per_delivery"] = json!(per_delivery(cpu));
    // Who spends what per delivery: the servers (replicas), Redis, and the generator on the same cores.
    report["replicas_cpu_us_per_delivery"] = json!(per_delivery(replicas));
    report["redis_cpu_us_per_delivery"] = json!(per_delivery(redis));
    report["generator_cpu_us_per_delivery"] = json!(per_delivery(generator));
    if dep.postgres.is_some() {
        report["postgres_cpu_us_per_delivery"] = json!(per_delivery(postgres));
    }
    report["peak_rss_kib"] = json!(
        dep.procs()
            .map(|p| json!({"process": p.name, "kib": p.status_kib("VmHWM:")}))
            .collect::<Vec<_>>()
    );
    Ok(report)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The median of several runs of one measurement: the run whose p99 is the median, with `runs` and the min and max
/// of the figures that matter.
fn median(mut reports: Vec<Value>) -> Value {
    let figure = |r: &Value, key: &str| r[key].as_f64().unwrap_or(f64::MAX);
    reports.sort_by(|a, b| figure(a, "p99_ms").total_cmp(&figure(b, "p99_ms")));
    let mut out = reports[reports.len() / 2].clone();
    for key in [
        "p99_ms",
        "deliveries_per_sec",
        "server_cpu_us_per_delivery",
        "lost",
    ] {
        let mut values: Vec<f64> = reports.iter().map(|r| figure(r, key)).collect();
        values.sort_by(f64::total_cmp);
        out[format!("{key}_min")] = json!(values[0]);
        out[format!("{key}_max")] = json!(values[values.len() - 1]);
        // The median of each figure on its own (the run picked above is the median of p99 only).
        out[format!("{key}_median")] = json!(values[values.len() / 2]);
    }
    out["runs"] = json!(reports.len());
    out
}

/// Whether a ramp point failed: p99 over 100 ms, or a delivery lost.
fn failed(report: &Value) -> bool {
    report["p99_ms"].as_f64().unwrap_or(f64::MAX) > 100.0
        || report["lost"].as_f64().unwrap_or(1.0) > 0.0
}

/// Scenario 1: the publish rate into one room of 1,000 members, ramped until p99 > 100 ms or a loss, for every
/// system at once: each rate is measured `runs` times, the systems taking turns (so a noisy moment of this shared
/// machine hits them alike and their ratio means something), and a system's ramp ends when the median of its runs
/// fails, never on one noisy run.
fn ramp(
    env: &Env,
    systems: &[String],
    quick: bool,
    runs: usize,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut lines = Vec::new();
    for system in systems {
        lines.push(Ramped {
            label: system.clone(),
            system: system.clone(),
            dep: deploy(env, system, 2)?,
        });
    }
    ramp_over(env, &lines, ramp_shape(quick, RATES), runs, 1)
}

/// The publish rates of scenario 1's ramp, in messages per second into the room.
const RATES: &[u64] = &[
    50, 100, 200, 300, 400, 500, 700, 1000, 1500, 2000, 2500, 3000, 3500, 4000, 5000,
];

/// A ramp: members of the room, seconds per point, and the rates (`--quick`: 200 members, two short points).
type RampShape<'a> = (&'a str, &'a str, &'a [u64]);

fn ramp_shape(quick: bool, rates: &[u64]) -> RampShape<'_> {
    if quick {
        ("200", "2", &[50, 200])
    } else {
        ("1000", "5", rates)
    }
}

/// One line of a ramp: its name in the results, the protocol the generator speaks, what it measures.
struct Ramped {
    label: String,
    system: String,
    dep: Deployment,
}

/// The ramp of scenario 1 over `lines`, measured in turns at each rate; each line's points under its label. A line
/// ends after `patience` rates in a row whose median failed.
fn ramp_over(
    env: &Env,
    lines: &[Ramped],
    (members, seconds, rates): RampShape<'_>,
    runs: usize,
    patience: usize,
) -> anyhow::Result<serde_json::Map<String, Value>> {
    let mut points: serde_json::Map<String, Value> =
        lines.iter().map(|l| (l.label.clone(), json!([]))).collect();
    let mut ramping: Vec<bool> = vec![true; lines.len()];
    let mut failures: Vec<usize> = vec![0; lines.len()];
    for (i, rate) in rates.iter().enumerate() {
        let mut reports: Vec<Vec<Value>> = vec![Vec::new(); lines.len()];
        for run in 0..runs {
            for (k, line) in lines.iter().enumerate() {
                if !ramping[k] {
                    continue;
                }
                let args = strs(&[
                    "--members",
                    members,
                    "--rooms",
                    "1",
                    "--size",
                    "100",
                    "--seconds",
                    seconds,
                ])
                .into_iter()
                .chain([
                    "--rate".into(),
                    rate.to_string(),
                    "--prefix".into(),
                    format!("ramp{i}-{run}"),
                ])
                .collect::<Vec<_>>();
                reports[k].push(load(env, &line.system, &line.dep, &args)?);
            }
        }
        for (k, line) in lines.iter().enumerate() {
            if !ramping[k] {
                continue;
            }
            let point = median(std::mem::take(&mut reports[k]));
            let figure = |key: &str| point[key].as_f64().unwrap_or(0.0);
            let postgres = if line.dep.postgres.is_some() {
                format!(", PostgreSQL {:.2}", figure("postgres_cpu_us_per_delivery"))
            } else {
                String::new()
            };
            step(&format!(
                "{}: {rate} msg/s -> {:.0} deliveries/s ({:.0}–{:.0}), p99 {:.1} ms ({:.1}–{:.1}), lost {}, {:.2} µs CPU per delivery (replicas {:.2}, Redis {:.2}{postgres}; generator {:.2}), median of {runs}",
                line.label,
                figure("deliveries_per_sec"),
                figure("deliveries_per_sec_min"),
                figure("deliveries_per_sec_max"),
                figure("p99_ms"),
                figure("p99_ms_min"),
                figure("p99_ms_max"),
                point["lost"],
                figure("server_cpu_us_per_delivery"),
                figure("replicas_cpu_us_per_delivery"),
                figure("redis_cpu_us_per_delivery"),
                figure("generator_cpu_us_per_delivery"),
            ));
            failures[k] = if failed(&point) { failures[k] + 1 } else { 0 };
            ramping[k] = failures[k] < patience;
            if let Some(list) = points[&line.label].as_array_mut() {
                list.push(point);
            }
        }
        if !ramping.iter().any(|r| *r) {
            break;
        }
    }
    Ok(points)
}

/// Scenario 3: memory per idle connection on one server, the median of `runs` fresh servers; with `history`, every
/// room first holds that many messages of 100 characters (Roomcast only), so each member's `joined` is full.
fn idle(
    env: &Env,
    system: &str,
    quick: bool,
    runs: usize,
    history: usize,
) -> anyhow::Result<Value> {
    let mut reports = Vec::new();
    for _ in 0..runs {
        reports.push(idle_once(env, system, quick, history)?);
    }
    let figure = |r: &Value| r["kib_per_connection"].as_f64().unwrap_or(f64::MAX);
    reports.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let (low, high) = (figure(&reports[0]), figure(&reports[reports.len() - 1]));
    let mut out = reports[reports.len() / 2].clone();
    out["kib_per_connection_min"] = json!(low);
    out["kib_per_connection_max"] = json!(high);
    out["runs"] = json!(runs);
    step(&format!(
        "{system}: idle with {history} messages of history per room: {:.1} KiB per connection ({low:.1}–{high:.1}), median of {runs}",
        figure(&out)
    ));
    Ok(out)
}

/// One run of scenario 3.
fn idle_once(env: &Env, system: &str, quick: bool, history: usize) -> anyhow::Result<Value> {
    let dep = deploy(env, system, 1)?;
    let count = if quick { 1000 } else { 19_000 };
    if history > 0 {
        // Stored first, by connections that come and go: the figure is what the members add.
        let seeded = Command::new(env.bin("loadgen"))
            .args(["--system", system, "--url", &dep.urls[0], "--idle"])
            .args(["--seconds", "0", "--members", "0", "--rooms", "100"])
            .args(["--history", &history.to_string(), "--history-chars", "100"])
            .stdout(Stdio::null())
            .status()
            .context("run loadgen --history")?;
        anyhow::ensure!(seeded.success(), "seeding history failed");
    }
    let before = dep.servers[0].status_kib("VmRSS:");
    let mut cmd = Command::new(env.bin("loadgen"));
    cmd.args([
        "--system",
        system,
        "--url",
        &dep.urls[0],
        "--idle",
        "--seconds",
        "4",
    ])
    .args([
        "--members",
        &count.to_string(),
        "--rooms",
        "100",
        "--sources",
        "16",
    ]);
    let mut child = cmd
        .stdout(Stdio::null())
        .spawn()
        .context("run loadgen --idle")?;
    // Measure while the members are connected: the generator holds them for 4 s after the last one joined.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut peak = before;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        peak = peak.max(dep.servers[0].status_kib("VmRSS:"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let per_conn = (peak.saturating_sub(before)) as f64 / count as f64;
    step(&format!(
        "{system}: {count} idle connections, {before} -> {peak} KiB RSS: {per_conn:.1} KiB per connection"
    ));
    Ok(
        json!({"system": system, "connections": count, "history_per_room": history, "rss_before_kib": before, "rss_with_kib": peak, "kib_per_connection": per_conn}),
    )
}

/// Scenario 3b: idle connections beyond one process's 20,000 open files: `servers` replicas, one generator process
/// per replica (each holds its own `per_server` connections), spread over loopback source addresses.
fn idle_wide(env: &Env, system: &str, servers: usize, per_server: usize) -> anyhow::Result<Value> {
    let dep = deploy(env, system, servers)?;
    let before: Vec<u64> = dep.servers.iter().map(|s| s.status_kib("VmRSS:")).collect();
    let mut children = Vec::new();
    for (i, url) in dep.urls.iter().enumerate() {
        let child = Command::new(env.bin("loadgen"))
            .args(["--system", system, "--url", url, "--idle", "--seconds", "4"])
            .args(["--members", &per_server.to_string(), "--rooms", "100"])
            .args(["--sources", "16", "--prefix", &format!("wide{i}")])
            .stdout(Stdio::null())
            .spawn()
            .context("run loadgen --idle")?;
        children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut peak = before.clone();
    while Instant::now() < deadline {
        let mut running = 0;
        for child in &mut children {
            if matches!(child.try_wait(), Ok(None)) {
                running += 1;
            }
        }
        for (p, s) in peak.iter_mut().zip(&dep.servers) {
            *p = (*p).max(s.status_kib("VmRSS:"));
        }
        if running == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut failed = 0;
    for mut child in children {
        let _ = child.kill();
        if !child.wait().is_ok_and(|s| s.success()) {
            failed += 1;
        }
    }
    if failed > 0 {
        bail!("{failed} of the idle generators failed");
    }
    let count = servers * per_server;
    let grown: u64 = peak
        .iter()
        .zip(&before)
        .map(|(p, b)| p.saturating_sub(*b))
        .sum();
    let per_conn = grown as f64 / count as f64;
    step(&format!(
        "{system}: {count} idle connections over {servers} servers and {servers} generators: {per_conn:.1} KiB per connection"
    ));
    Ok(json!({
        "system": system, "servers": servers, "connections": count,
        "rss_before_kib": before, "rss_with_kib": peak, "kib_per_connection": per_conn,
    }))
}

/// Redis's `total_commands_processed`, read with `redis-cli`.
fn redis_commands(port: u16) -> u64 {
    Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "stats"])
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .find_map(|l| l.strip_prefix("total_commands_processed:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// One status line of the storm generator: seconds since it started, clients joined, clients down, `try_again`
/// answers so far, refused connection attempts so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct StormStatus {
    pub t: f64,
    pub joined: u64,
    pub down: u64,
    pub try_again: u64,
    pub refused: u64,
}

/// Scenario 5: a reconnect storm. Redis and three replicas; clients in one big room and many small ones, steady
/// traffic; replica 0 is killed (SIGKILL), later replica 1 is drained (SIGTERM, `--drain-secs`). Measures how long
/// each client takes to be back, what Redis and the replicas spend meanwhile, and checks nothing was lost or
/// received twice. Draws the timeline into `timeline`.
#[allow(clippy::too_many_lines)]
fn storm(env: &Env, quick: bool, timeline: &Path) -> anyhow::Result<Value> {
    use std::io::{BufRead, Write};
    let mut dep = deploy(env, "roomcast", 3)?;
    let redis_port = dep.redis_port.context("the storm needs Redis")?;
    let (big, small_rooms, steady) = if quick {
        ("300", "30", 3)
    } else {
        ("5000", "1000", 10)
    };
    let mut cmd = Command::new(env.bin("stormgen"));
    for url in &dep.urls {
        cmd.args(["--url", url]);
    }
    let mut child = cmd
        .args(["--big", big, "--small-rooms", small_rooms])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run stormgen")?;
    let stderr = child.stderr.take().context("stormgen's stderr")?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<StormStatus, String>>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let fields: Vec<&str> = line.split(' ').collect();
            let sent = match fields.as_slice() {
                ["status", t, joined, down, again, refused] => Ok(StormStatus {
                    t: t.parse().unwrap_or(0.0),
                    joined: joined.parse().unwrap_or(0),
                    down: down.parse().unwrap_or(0),
                    try_again: again.parse().unwrap_or(0),
                    refused: refused.parse().unwrap_or(0),
                }),
                _ => Err(line),
            };
            if tx.send(sent).is_err() {
                break;
            }
        }
    });
    let mut series: Vec<StormStatus> = Vec::new();
    let total: u64 = big.parse::<u64>()? + small_rooms.parse::<u64>()? * 10;
    // Reads status lines until `done` says so or `limit` passes; returns the last status.
    let follow = |series: &mut Vec<StormStatus>,
                  limit: Duration,
                  done: &dyn Fn(&StormStatus) -> bool|
     -> anyhow::Result<StormStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(status)) => {
                    series.push(status);
                    if done(&status) {
                        return Ok(status);
                    }
                }
                Ok(Err(line)) => eprintln!("{line}"),
                Err(_) => {
                    return series
                        .last()
                        .copied()
                        .context("the storm generator said nothing");
                }
            }
        }
    };
    let joined_all = follow(&mut series, Duration::from_secs(300), &|s| {
        s.joined == total
    })?;
    step(&format!(
        "storm: {total} clients joined after {:.1} s ({} try_again answers)",
        joined_all.t, joined_all.try_again
    ));
    follow(&mut series, Duration::from_secs(steady), &|_| false)?;
    let mut events = Vec::new();
    let mut phases = Vec::new();
    for (victim, how) in [(0, "SIGKILL"), (1, "SIGTERM (drain)")] {
        let before = series.last().copied().unwrap_or_default();
        let (redis_cpu, commands) = (
            dep.redis.as_ref().map_or(0.0, Proc::cpu_secs),
            redis_commands(redis_port),
        );
        // The replicas that run through the whole phase (a killed one reads as 0 once gone).
        let survivors: Vec<usize> = (0..dep.servers.len()).filter(|i| *i > victim).collect();
        let replicas_cpu: f64 = survivors.iter().map(|i| dep.servers[*i].cpu_secs()).sum();
        let started = Instant::now();
        let peak_before = dep.servers[victim].status_kib("VmHWM:");
        if victim == 0 {
            dep.servers[0].child.kill()?;
        } else {
            exec(
                Command::new("kill").args(["-TERM", &dep.servers[victim].child.id().to_string()]),
            )?;
        }
        events.push((before.t, how));
        // Back: the replica is gone (a drain takes its window: its clients are served until their moment), nobody
        // is down any more, everyone joined.
        let mut back = before;
        for _ in 0..360 {
            back = follow(&mut series, Duration::from_secs(180), &|s| {
                s.t > before.t + 1.0 && s.down == 0 && s.joined == total
            })?;
            if matches!(dep.servers[victim].child.try_wait(), Ok(Some(_))) {
                break;
            }
            follow(&mut series, Duration::from_millis(500), &|_| false)?;
        }
        let secs = started.elapsed().as_secs_f64();
        let redis_cpu = dep.redis.as_ref().map_or(0.0, Proc::cpu_secs) - redis_cpu;
        let ops = redis_commands(redis_port).saturating_sub(commands);
        let replicas_cpu = survivors
            .iter()
            .map(|i| dep.servers[*i].cpu_secs())
            .sum::<f64>()
            - replicas_cpu;
        #[allow(clippy::cast_precision_loss)]
        let phase = json!({
            "event": how,
            "replica": victim,
            "all_back_after_s": back.t - before.t,
            "try_again": back.try_again - before.try_again,
            "refused_connects": back.refused - before.refused,
            "redis_cpu_percent": 100.0 * redis_cpu / secs,
            "redis_ops_per_sec": ops as f64 / secs,
            "surviving_replicas_cpu_percent": 100.0 * replicas_cpu / secs,
            "victim_peak_rss_kib": peak_before,
        });
        step(&format!(
            "storm: {how} of replica {victim}: everyone back after {:.1} s; Redis {:.0} % CPU, {:.0} ops/s; the surviving replicas {:.0} % CPU; {} try_again",
            back.t - before.t,
            phase["redis_cpu_percent"].as_f64().unwrap_or(0.0),
            phase["redis_ops_per_sec"].as_f64().unwrap_or(0.0),
            phase["surviving_replicas_cpu_percent"]
                .as_f64()
                .unwrap_or(0.0),
            back.try_again - before.try_again,
        ));
        phases.push(phase);
        follow(&mut series, Duration::from_secs(steady), &|_| false)?;
    }
    let stdin = child.stdin.as_mut().context("stormgen's stdin")?;
    writeln!(stdin, "stop")?;
    let out = child.wait_with_output().context("stormgen")?;
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        if let Err(line) = line {
            eprintln!("{line}");
        }
    }
    if !out.status.success() {
        bail!("stormgen failed ({})", out.status);
    }
    let mut report: Value = serde_json::from_slice(&out.stdout).context("stormgen's report")?;
    report["phases"] = json!(phases);
    report["survivor_peak_rss_kib"] = json!(dep.servers[2].status_kib("VmHWM:"));
    report["timeline"] = json!(
        series
            .iter()
            .map(|s| json!([s.t, s.joined, s.down, s.try_again, s.refused]))
            .collect::<Vec<_>>()
    );
    step(&format!(
        "storm: {} clients, {} acked, {} expected deliveries, {} lost, {} duplicated; back after an outage: p50 {} ms, p99 {} ms, max {} ms over {} outages; {} try_again (connect {}, join {})",
        report["clients"],
        report["acked"],
        report["expected"],
        report["lost"],
        report["duplicated"],
        report["recovery_p50_ms"],
        report["recovery_p99_ms"],
        report["recovery_max_ms"],
        report["outages"],
        report["try_again_connect"].as_u64().unwrap_or(0)
            + report["try_again_join"].as_u64().unwrap_or(0),
        report["try_again_connect"],
        report["try_again_join"],
    ));
    crate::plot::storm_timeline(&series, &events, timeline)?;
    if report["lost"].as_u64() != Some(0) || report["duplicated"].as_u64() != Some(0) {
        bail!(
            "the storm lost {} and duplicated {} deliveries",
            report["lost"],
            report["duplicated"]
        );
    }
    Ok(report)
}

/// A flame graph of replica 0 under scenario 1 at `rate` messages/s (`perf record -g`, folded and drawn by
/// `inferno`), written to `out`.
fn profile(env: &Env, rate: u64, out: &Path) -> anyhow::Result<()> {
    let dep = deploy(env, "roomcast", 2)?;
    let data = env.scratch.join("perf.data");
    let pid = dep.servers[0].child.id().to_string();
    let args = strs(&[
        "--members",
        "1000",
        "--rooms",
        "1",
        "--size",
        "100",
        "--seconds",
        "8",
    ])
    .into_iter()
    .chain([
        "--rate".into(),
        rate.to_string(),
        "--prefix".into(),
        "profile".into(),
    ])
    .collect::<Vec<_>>();
    let data_arg = data.display().to_string();
    let recorder = std::thread::spawn(move || {
        // Skip the connecting phase: record 4 s in the middle of the sending phase.
        std::thread::sleep(Duration::from_secs(5));
        Command::new("perf")
            .args([
                "record", "-F", "999", "-g", "-o", &data_arg, "-p", &pid, "--", "sleep", "4",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    });
    let report = load(env, "roomcast", &dep, &args)?;
    let recorded = recorder
        .join()
        .map_err(|_| anyhow::anyhow!("the perf thread panicked"))?;
    if !recorded.is_ok_and(|s| s.success()) {
        bail!("perf record failed: apt-get install linux-perf (and run as root)");
    }
    let script = Command::new("perf")
        .args(["script", "-i"])
        .arg(&data)
        .output()
        .context("perf script")?;
    let mut folded = Vec::new();
    use inferno::collapse::Collapse;
    inferno::collapse::perf::Folder::default()
        .collapse(&script.stdout[..], &mut folded)
        .context("fold the perf samples")?;
    let mut options = inferno::flamegraph::Options::default();
    options.title = format!(
        "roomcast replica under fan-out: {rate} msg/s into 1,000 members ({:.0} deliveries/s)",
        report["deliveries_per_sec"].as_f64().unwrap_or(0.0)
    );
    let file = std::fs::File::create(out)?;
    inferno::flamegraph::from_reader(&mut options, &folded[..], std::io::BufWriter::new(file))
        .context("draw the flame graph")?;
    step(&format!("flame graph: {}", out.display()));
    Ok(())
}

/// Scenarios 2 and 4 at fixed load: the median of `runs` runs.
fn fixed(env: &Env, system: &str, name: &str, args: &[&str], runs: usize) -> anyhow::Result<Value> {
    let dep = deploy(env, system, 2)?;
    let mut reports = Vec::new();
    for run in 0..runs {
        let mut args = strs(args);
        if let Some(prefix) = args.last_mut() {
            prefix.push_str(&format!("-{run}"));
        }
        reports.push(load(env, system, &dep, &args)?);
    }
    let mut report = median(reports);
    report["scenario"] = json!(name);
    step(&format!(
        "{system}: {name}: p50 {} ms, p99 {:.2} ms ({:.2}–{:.2}), lost {}, {:.2} server CPU s, median of {runs}",
        report["p50_ms"],
        report["p99_ms"].as_f64().unwrap_or(0.0),
        report["p99_ms_min"].as_f64().unwrap_or(0.0),
        report["p99_ms_max"].as_f64().unwrap_or(0.0),
        report["lost"],
        report["server_cpu_secs"].as_f64().unwrap_or(0.0)
    ));
    Ok(report)
}

fn prepare_peers(env: &Env, systems: &[String]) -> anyhow::Result<()> {
    if systems.iter().any(|s| s == "socketio") {
        let dir = env.scratch.join("socketio");
        std::fs::create_dir_all(&dir)?;
        for f in ["package.json", "package-lock.json", "server.js"] {
            std::fs::copy(env.root.join("bench/peers/socketio").join(f), dir.join(f))?;
        }
        if !dir.join("node_modules/socket.io").is_dir() {
            step("installing the socket.io peer from npm (once)");
            exec(
                Command::new("npm")
                    .args(["ci", "--omit=dev", "--silent", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .env("PATH", &env.path),
            )
            .context("cannot install the socket.io peer; run: npm ci in target/bench/socketio")?;
        }
    }
    if systems.iter().any(|s| s == "fastapi") {
        let venv = env.scratch.join("venv");
        if !venv.join("bin/uvicorn").is_file() {
            step("installing the FastAPI peer into a venv from PyPI (once)");
            exec(Command::new("python3").args(["-m", "venv"]).arg(&venv))
                .context("cannot make a venv; run: apt-get install python3-venv")?;
            exec(
                Command::new(venv.join("bin/pip"))
                    .args(["install", "--quiet", "-r"])
                    .arg(env.root.join("bench/peers/fastapi/requirements.txt")),
            )?;
        }
    }
    Ok(())
}

/// The archive scenarios (Roomcast only), into `result`: skipped, and said so, where PostgreSQL is not installed.
fn archive_scenarios(
    env: &Env,
    args: &Args,
    run: &dyn Fn(&str) -> bool,
    runs: usize,
    result: &mut Value,
) -> anyhow::Result<()> {
    let wanted = ["archive-cost", "archive", "search", "reads"]
        .iter()
        .any(|s| run(s));
    if !wanted {
        return Ok(());
    }
    if !archive::available() {
        step(
            "NOT RUN: archive-cost, archive, search and reads need PostgreSQL: apt-get install postgresql",
        );
        return Ok(());
    }
    let size = if args.smoke {
        archive::Size::Smoke
    } else if args.quick {
        archive::Size::Quick
    } else {
        archive::Size::Full
    };
    if run("archive-cost") {
        step(&format!(
            "== archive-cost: the ramp with and without the archive, interleaved, {runs} runs per rate =="
        ));
        let (cost, plot) = archive::cost(env, size, runs)?;
        crate::plot::p99_against_rate(&plot, &env.scratch.join("p99-archive.svg"))?;
        result["archive_cost"] = cost;
    }
    if run("archive") {
        step(&format!("== archive: {runs} runs =="));
        result["archive"] = archive::store(env, size, runs)?;
    }
    if run("search") {
        step(&format!("== search: {runs} runs =="));
        result["search"] = people::search(env, size, runs)?;
    }
    if run("reads") {
        step(&format!("== reads: {runs} runs =="));
        result["reads"] = people::reads(env, size, runs)?;
    }
    Ok(())
}

/// Runs the benchmark; returns the path of the results.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<PathBuf> {
    let tools = tools::ensure_all(root, Need::Run)?;
    let systems: Vec<String> = if args.smoke {
        strs(&["roomcast", "ceiling"])
    } else if args.systems.is_empty() {
        strs(&["roomcast", "socketio", "fastapi", "ceiling"])
    } else {
        args.systems.clone()
    };
    let quick = args.quick || args.smoke;
    let mut build = Command::new("cargo");
    build.args([
        "build", "--quiet", "-p", "backend", "--bin", "roomcast", "-p", "testkit", "--bins",
    ]);
    let (bins, scratch) = if args.smoke {
        (root.join("target/debug"), root.join("target/bench-smoke"))
    } else {
        build.arg("--release");
        (root.join("target/release"), root.join("target/bench"))
    };
    if !args.built {
        step(&format!(
            "building the binaries (roomcast, loadgen, stormgen, ceiling) into {}",
            bins.display()
        ));
        exec(&mut build)?;
    }
    let env = Env {
        root: root.to_owned(),
        bins,
        scratch,
        redis_server: tools
            .redis_server()
            .context("redis-server not found: apt-get install redis-server")?,
        path: tools.path(),
    };
    std::fs::create_dir_all(&env.scratch)?;
    if let Some(rate) = args.profile {
        let out = env.scratch.join("flamegraph.svg");
        profile(&env, rate, &out)?;
        return Ok(out);
    }
    prepare_peers(&env, &systems)?;

    let runs = if args.smoke { 1 } else { args.runs.max(1) };
    let run = |name: &str| args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == name);
    let mut ramps = if run("ramp") {
        step(&format!(
            "== ramp: {} interleaved, {runs} runs per rate ==",
            systems.join(", ")
        ));
        ramp(&env, &systems, quick, runs)?
    } else {
        serde_json::Map::new()
    };
    let mut results = serde_json::Map::new();
    for system in &systems {
        step(&format!("== {system} =="));
        let ramp = ramps.remove(system).unwrap_or(Value::Null);
        let light = if !run("light") {
            Value::Null
        } else {
            fixed(
                &env,
                system,
                "light",
                &[
                    "--members",
                    "100",
                    "--rooms",
                    "1",
                    "--rate",
                    "100",
                    "--size",
                    "100",
                    "--seconds",
                    if args.quick { "2" } else { "5" },
                    "--prefix",
                    "light",
                ],
                runs,
            )?
        };
        let many = if !run("many") {
            Value::Null
        } else if args.quick {
            fixed(
                &env,
                system,
                "many-rooms",
                &[
                    "--members",
                    "500",
                    "--rooms",
                    "50",
                    "--rate",
                    "50",
                    "--size",
                    "100",
                    "--seconds",
                    "2",
                    "--prefix",
                    "many",
                ],
                runs,
            )?
        } else {
            fixed(
                &env,
                system,
                "many-rooms",
                &[
                    "--members",
                    "10000",
                    "--rooms",
                    "1000",
                    "--rate",
                    "1000",
                    "--size",
                    "100",
                    "--seconds",
                    "10",
                    "--sources",
                    "32",
                    "--prefix",
                    "many",
                ],
                runs,
            )?
        };
        let idle_empty = if run("idle") {
            idle(&env, system, quick, runs, 0)?
        } else {
            Value::Null
        };
        // Rooms whose history fills a `joined` (the default 50 messages, of 100 characters): what an idle member
        // costs once it was sent one.
        let idle_history = if run("idle-history") && system == "roomcast" {
            idle(&env, system, quick, runs, 50)?
        } else {
            Value::Null
        };
        let storm = if run("storm") && system == "roomcast" {
            storm(&env, quick, &env.scratch.join("storm.svg"))?
        } else {
            Value::Null
        };
        let idle_wide = if run("wide") && system == "roomcast" {
            idle_wide(&env, system, 3, if quick { 300 } else { 17_000 })?
        } else {
            Value::Null
        };
        let mut result = json!({"ramp": ramp, "light": light, "many_rooms": many, "idle": idle_empty, "idle_history": idle_history, "idle_wide": idle_wide, "storm": storm});
        if system == "roomcast" {
            archive_scenarios(&env, args, &run, runs, &mut result)?;
        }
        results.insert(system.clone(), result);
    }
    let machine = json!({
        "cores": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "quick": quick,
    });
    let all = json!({"machine": machine, "systems": results});
    let out = env.scratch.join("results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&all)?)?;
    crate::plot::p99_against_rate(&all, &env.scratch.join("p99.svg"))?;
    step(&format!(
        "results: {} and {}",
        out.display(),
        env.scratch.join("p99.svg").display()
    ));
    Ok(out)
}
