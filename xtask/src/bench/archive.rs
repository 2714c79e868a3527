//! Roomcast with its PostgreSQL archive under load: what the archive costs the fan-out ramp (`archive-cost`: the ramp
//! with and without `--database-url`, measured in turns), and what it sustains (`archive`: 1,000,000 messages in 100
//! rooms stored through the WebSocket path with members reading, while every replica's archiver copies them; the
//! archive's throughput and lag from the replicas' metrics, then scroll-back pages from deep in the archive with
//! `testkit`'s `scrollback`, and PostgreSQL's disk per message). On this machine the WebSocket path takes fewer
//! messages per second than the archive copies, so the archive would only ever show the ingest's pace: PostgreSQL is
//! paused (SIGSTOP) for a minute mid-run, events wait in Redis as they do when it is down, and the archive's own pace
//! is how fast it drains them once resumed, the relay load still running. Each measurement gets a fresh private
//! PostgreSQL (`localrun::postgres`) in the scratch directory, never the system's nor port 5432, stopped with SIGINT.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{
    Deployment, Env, Proc, Ramped, cpu_secs, deploy, deploy_with, failed, load, ramp_over,
    ramp_shape, strs,
};
use crate::step;

/// How big a measurement is: the full one, `--quick`'s, or the smoke run's (which only proves the harness works).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Size {
    Full,
    Quick,
    Smoke,
}

/// A private PostgreSQL: a fresh cluster in the scratch directory on a free port, stopped with SIGINT (its fast
/// shutdown) and its data directory removed when dropped.
pub(super) struct Postgres {
    child: Child,
    dir: PathBuf,
    /// The connection string the replicas are given.
    pub(super) url: String,
}

impl Postgres {
    /// Makes a new cluster named `name` and starts it; returns once it accepts connections.
    pub(super) fn start(env: &Env, name: &str) -> anyhow::Result<Self> {
        let bin = localrun::postgres::bin_dir()
            .context("PostgreSQL not found: apt-get install postgresql")?;
        let port = loop {
            let port = localrun::free_port();
            if port != 5432 {
                break port;
            }
        };
        let dir = env.scratch.join(format!("postgres-{name}"));
        localrun::postgres::create_cluster(&bin, &dir)
            .with_context(|| format!("cannot make a PostgreSQL cluster in {}", dir.display()))?;
        let log = std::fs::File::create(env.scratch.join(format!("postgres-{name}.log")))?;
        let child = localrun::postgres::postgres_command(&bin, &dir, port)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start postgres")?;
        let mut pg = Self {
            child,
            dir,
            url: localrun::postgres::url(port),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(pg);
            }
            if let Ok(Some(status)) = pg.child.try_wait() {
                bail!("postgres exited ({status}); see its log in the scratch directory");
            }
            if Instant::now() > deadline {
                bail!("postgres did not accept connections on {port} within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// CPU time the server used so far: the postmaster, its live backends and those that exited.
    pub(super) fn cpu_secs(&self) -> f64 {
        let pid = self.child.id();
        let own = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = own
            .rsplit_once(") ")
            .map_or("", |(_, r)| r)
            .split(' ')
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        // cutime and cstime (fields 16 and 17): the children it has waited for.
        let exited = (ticks(13) + ticks(14)) / super::clock_ticks();
        exited + process_tree(pid).into_iter().map(cpu_secs).sum::<f64>()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Resumed first, in case a measurement stopped while it was paused.
        signal("-CONT", &process_tree(self.child.id()));
        signal("-INT", &[self.child.id()]);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether the archive scenarios can run here.
pub(super) fn available() -> bool {
    localrun::postgres::bin_dir().is_some()
}

/// The rates of `archive-cost`'s ramp: coarse steps up to where Roomcast sustains it on this machine, then steps of
/// about 10 %, so a 10 % difference between the two lines shows.
const COST_RATES: &[u64] = &[500, 1000, 1500, 2000, 2250, 2500, 2750, 3000, 3500, 4000];

/// `archive-cost`: the ramp of scenario 1 against two Roomcast deployments measured in turns, one without an archive
/// and one with a private PostgreSQL behind it. A line ends after two failed rates in a row, not one, so a burst of
/// other work on this shared machine does not end one line early and decide the comparison. Reports the most
/// deliveries/s each sustained at p99 < 100 ms, p99 at the highest rate both sustained, and at every rate both were
/// measured at, the difference in p99 and in CPU per delivery. Returns the result and a document the ramp plot draws.
pub(super) fn cost(env: &Env, size: Size, runs: usize) -> anyhow::Result<(Value, Value)> {
    let pg = Postgres::start(env, "archive-cost")?;
    let lines = vec![
        Ramped {
            label: "without".into(),
            system: "roomcast".into(),
            dep: deploy(env, "roomcast", 2)?,
        },
        Ramped {
            label: "with".into(),
            system: "roomcast".into(),
            dep: deploy_with(env, "roomcast", 2, Some(pg), &[])?,
        },
    ];
    let shape = match size {
        Size::Full => ramp_shape(false, COST_RATES),
        Size::Quick => ramp_shape(true, COST_RATES),
        // One short point: the smoke run only proves the harness works.
        Size::Smoke => ("100", "1", &[50][..]),
    };
    let mut points = ramp_over(env, &lines, shape, runs, 2)?;
    let without = points.remove("without").unwrap_or(Value::Null);
    let with = points.remove("with").unwrap_or(Value::Null);
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let (without_points, with_points) = (list(&without), list(&with));
    let figure = |p: &Value, key: &str| p[key].as_f64().unwrap_or(0.0);
    let percent = |with: f64, without: f64| {
        if without > 0.0 {
            100.0 * (with - without) / without
        } else {
            0.0
        }
    };
    // The highest rate a line passed: what it sustains.
    let top = |points: &[Value]| {
        points
            .iter()
            .filter(|p| !failed(p))
            .max_by(|a, b| figure(a, "rate").total_cmp(&figure(b, "rate")))
            .cloned()
    };
    let summary_of = |p: &Value| {
        json!({
            "rate": p["rate"],
            "deliveries_per_sec": figure(p, "deliveries_per_sec_median"),
            "deliveries_per_sec_min": figure(p, "deliveries_per_sec_min"),
            "deliveries_per_sec_max": figure(p, "deliveries_per_sec_max"),
            "p99_ms": figure(p, "p99_ms"),
            "p99_ms_min": figure(p, "p99_ms_min"),
            "p99_ms_max": figure(p, "p99_ms_max"),
            "server_cpu_us_per_delivery": figure(p, "server_cpu_us_per_delivery"),
            "postgres_cpu_us_per_delivery": p.get("postgres_cpu_us_per_delivery"),
        })
    };
    let (top_without, top_with) = (top(&without_points), top(&with_points));
    let deliveries_difference = match (&top_without, &top_with) {
        (Some(a), Some(b)) => json!(percent(
            figure(b, "deliveries_per_sec_median"),
            figure(a, "deliveries_per_sec_median")
        )),
        _ => Value::Null,
    };
    // Every rate both lines were measured at, and the highest both passed.
    let pairs: Vec<(&Value, &Value)> = without_points
        .iter()
        .filter_map(|a| {
            with_points
                .iter()
                .find(|b| b["rate"] == a["rate"])
                .map(|b| (a, b))
        })
        .collect();
    let compare = |(a, b): (&Value, &Value)| {
        json!({
            "rate": a["rate"],
            "without": summary_of(a),
            "with": summary_of(b),
            "p99_difference_percent": percent(figure(b, "p99_ms"), figure(a, "p99_ms")),
            "server_cpu_difference_percent": percent(
                figure(b, "server_cpu_us_per_delivery"),
                figure(a, "server_cpu_us_per_delivery"),
            ),
        })
    };
    let common = pairs
        .iter()
        .rev()
        .find(|(a, b)| !failed(a) && !failed(b))
        .map_or(Value::Null, |pair| compare(*pair));
    let report = json!({
        "top_without": top_without.as_ref().map_or(Value::Null, summary_of),
        "top_with": top_with.as_ref().map_or(Value::Null, summary_of),
        "deliveries_difference_percent": deliveries_difference,
        "at_highest_common_rate": common,
        "at_each_rate": pairs.iter().map(|pair| compare(*pair)).collect::<Vec<_>>(),
        "without": without,
        "with": with,
        "runs": runs,
    });
    let n = |v: &Value| v.as_f64().unwrap_or(0.0);
    step(&format!(
        "archive-cost: sustained at p99 < 100 ms: without {:.0} deliveries/s, with {:.0} ({:+.1} %); at {} msg/s p99 {:.1} ms without, {:.1} ms with ({:+.1} %)",
        n(&report["top_without"]["deliveries_per_sec"]),
        n(&report["top_with"]["deliveries_per_sec"]),
        n(&report["deliveries_difference_percent"]),
        report["at_highest_common_rate"]["rate"],
        n(&report["at_highest_common_rate"]["without"]["p99_ms"]),
        n(&report["at_highest_common_rate"]["with"]["p99_ms"]),
        n(&report["at_highest_common_rate"]["p99_difference_percent"]),
    ));
    let plot = json!({"systems": {
        "roomcast": {"ramp": report["without"]},
        "roomcast + archive": {"ramp": report["with"]},
    }});
    Ok((report, plot))
}

/// The shape of one `archive` measurement.
struct Shape {
    rooms: usize,
    per_room: usize,
    /// Messages per second offered, over all rooms: what this machine's replicas take through the WebSocket path
    /// with the relay load beside them.
    rate: usize,
    /// Members reading (spread over the rooms): the relay load.
    members: usize,
    /// The replicas' `--history-limit`: Redis's hot window.
    hot: usize,
    pages: usize,
    /// PostgreSQL is paused (SIGSTOP) once this many events are archived, for `pause_secs`, so a backlog builds up
    /// in Redis and the archive's own pace shows when it drains it (the ingest alone is slower than the archive);
    /// 0 s: no pause.
    pause_after: usize,
    pause_secs: u64,
}

impl Shape {
    fn of(size: Size) -> Self {
        match size {
            Size::Full => Self {
                rooms: 100,
                per_room: 10_000,
                rate: 5_000,
                members: 500,
                hot: 1_000,
                pages: 2_000,
                pause_after: 100_000,
                pause_secs: 60,
            },
            Size::Quick => Self {
                rooms: 20,
                per_room: 1_000,
                rate: 2_000,
                members: 100,
                hot: 100,
                pages: 200,
                pause_after: 2_000,
                pause_secs: 4,
            },
            Size::Smoke => Self {
                rooms: 4,
                per_room: 100,
                rate: 200,
                members: 8,
                hot: 20,
                pages: 20,
                pause_after: 0,
                pause_secs: 0,
            },
        }
    }
}

/// One moment of the archive as the replicas' `/metrics` tell it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Seconds since the measurement started.
    t: f64,
    /// `roomcast_messages_published_total` and `roomcast_archived_events_total`, summed over the replicas.
    published: f64,
    archived: f64,
    /// `roomcast_archive_lag_events` and `roomcast_archive_lag_seconds`, the most any replica reported.
    lag_events: f64,
    lag_seconds: f64,
}

/// `GET path` on a replica, the body.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// A metric without labels from Prometheus text; 0 when absent (a counter not incremented yet).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(key, _)| *key == name)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn sample(ports: &[u16], started: Instant) -> Sample {
    let mut s = Sample {
        t: started.elapsed().as_secs_f64(),
        published: 0.0,
        archived: 0.0,
        lag_events: 0.0,
        lag_seconds: 0.0,
    };
    for port in ports {
        let text = http_get(*port, "/metrics").unwrap_or_default();
        s.published += metric(&text, "roomcast_messages_published_total");
        s.archived += metric(&text, "roomcast_archived_events_total");
        s.lag_events = s
            .lag_events
            .max(metric(&text, "roomcast_archive_lag_events"));
        s.lag_seconds = s
            .lag_seconds
            .max(metric(&text, "roomcast_archive_lag_seconds"));
    }
    s
}

fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.parse().ok()
}

/// What the replicas, Redis and PostgreSQL used so far, in CPU seconds.
fn cpu_split(dep: &Deployment) -> (f64, f64, f64) {
    (
        dep.servers.iter().map(Proc::cpu_secs).sum(),
        dep.redis.as_ref().map_or(0.0, Proc::cpu_secs),
        dep.postgres.as_ref().map_or(0.0, Postgres::cpu_secs),
    )
}

/// When PostgreSQL was paused and resumed, in seconds since the measurement started.
#[derive(Debug, Clone, Copy, Default)]
struct Pause {
    stopped: f64,
    resumed: f64,
}

/// The archive's figures from the samples of one measurement.
#[derive(Debug)]
struct Figures {
    /// Events archived per second, and over which seconds: draining the backlog after the pause (from the moment
    /// the archive moved again to the first at which the lag was back under a second of ingest), or, without a
    /// pause, the whole run.
    archived_per_sec: f64,
    archiving_secs: f64,
    /// The best rate over any 5 s or more.
    best_5s: f64,
    /// Messages published per second while the load generator sent.
    ingest_per_sec: f64,
    /// The most the lag reached while the archive was not paused nor draining the pause's backlog.
    lag_events_max: f64,
    lag_seconds_max: f64,
    /// Events waiting when PostgreSQL was resumed.
    backlog: f64,
}

fn figures(samples: &[Sample], pause: Option<Pause>, rate: f64) -> Figures {
    let last = samples.last().copied().unwrap_or(Sample {
        t: 0.0,
        published: 0.0,
        archived: 0.0,
        lag_events: 0.0,
        lag_seconds: 0.0,
    });
    let first_where = |f: &dyn Fn(&Sample) -> bool| samples.iter().find(|s| f(s)).copied();
    let mut best_5s = 0.0f64;
    for (i, a) in samples.iter().enumerate() {
        if let Some(b) = samples[i..].iter().find(|b| b.t - a.t >= 5.0) {
            best_5s = best_5s.max((b.archived - a.archived) / (b.t - a.t));
        }
    }
    let (ingest_from, ingest_to) = (
        first_where(&|s| s.published > 0.0),
        first_where(&|s| s.published >= last.published),
    );
    let ingest_per_sec = match (ingest_from, ingest_to) {
        (Some(a), Some(b)) if b.t > a.t => (b.published - a.published) / (b.t - a.t),
        _ => 0.0,
    };
    let (window, archived_per_sec, archiving_secs, backlog) = match pause {
        Some(p) => {
            // From the moment the archive moved again: requests PostgreSQL received just before the pause time out
            // first (and the archiver waits a second before it retries), which is the pause's doing, not the pace.
            let from = samples.iter().rposition(|s| s.t <= p.resumed).unwrap_or(0);
            let resumed = samples[from..]
                .windows(2)
                .find(|w| w[1].archived > w[0].archived)
                .map_or(last, |w| w[0]);
            // Caught up: a lag figure computed after the resume (the gauges refresh every second) under one second
            // of ingest.
            let caught_up =
                first_where(&|s| s.t > p.resumed + 1.5 && s.lag_events <= rate).unwrap_or(last);
            let secs = (caught_up.t - resumed.t).max(1e-3);
            (
                (p.stopped, caught_up.t + 1.5),
                (caught_up.archived - resumed.archived) / secs,
                secs,
                samples[from].published - samples[from].archived,
            )
        }
        None => {
            // From the last moment nothing was archived to the first at which everything was.
            let begin = samples
                .iter()
                .take_while(|s| s.archived == 0.0)
                .last()
                .map_or(0.0, |s| s.t);
            let end = first_where(&|s| s.archived >= last.archived).map_or(last.t, |s| s.t);
            let secs = (end - begin).max(1e-3);
            ((f64::MAX, f64::MAX), last.archived / secs, secs, 0.0)
        }
    };
    let following = samples.iter().filter(|s| s.t < window.0 || s.t > window.1);
    let (lag_events_max, lag_seconds_max) = following.fold((0.0f64, 0.0f64), |(e, s), x| {
        (e.max(x.lag_events), s.max(x.lag_seconds))
    });
    Figures {
        archived_per_sec,
        archiving_secs,
        best_5s,
        ingest_per_sec,
        lag_events_max,
        lag_seconds_max,
        backlog,
    }
}

/// One `archive` measurement on a fresh PostgreSQL and fresh replicas.
#[allow(clippy::too_many_lines)]
fn store_once(env: &Env, shape: &Shape, run: usize) -> anyhow::Result<Value> {
    let pg = Postgres::start(env, &format!("archive-{run}"))?;
    let database_url = pg.url.clone();
    let postmaster = pg.child.id();
    let dep = deploy_with(
        env,
        "roomcast",
        2,
        Some(pg),
        &strs(&["--history-limit", &shape.hot.to_string()]),
    )?;
    let ports: Vec<u16> = dep.urls.iter().filter_map(|u| port_of(u)).collect();
    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let latest = {
        let samples = samples.clone();
        move || {
            samples
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .last()
                .copied()
        }
    };
    let sampler = {
        let (samples, stop, ports) = (samples.clone(), stop.clone(), ports.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let s = sample(&ports, started);
                samples
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(s);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    // Pauses PostgreSQL once enough is archived (the rooms exist in it by then: a join never waits for it).
    let pauser = (shape.pause_secs > 0).then(|| {
        let (latest, stop) = (latest.clone(), stop.clone());
        let (after, secs) = (shape.pause_after as f64, shape.pause_secs);
        std::thread::spawn(move || -> Option<Pause> {
            while latest().is_none_or(|s| s.archived < after) {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let tree = process_tree(postmaster);
            signal("-STOP", &tree);
            let stopped = started.elapsed().as_secs_f64();
            step(&format!("archive: PostgreSQL paused for {secs} s"));
            std::thread::sleep(Duration::from_secs(secs));
            signal("-CONT", &tree);
            let resumed = started.elapsed().as_secs_f64();
            step("archive: PostgreSQL resumed");
            Some(Pause { stopped, resumed })
        })
    });
    let cpu_before = cpu_split(&dep);
    let total = shape.rooms * shape.per_room;
    let seconds = total.div_ceil(shape.rate);
    step(&format!(
        "archive: storing {total} messages of 100 bytes in {} rooms at {} msg/s ({seconds} s) with {} members reading",
        shape.rooms, shape.rate, shape.members
    ));
    let relay = load(
        env,
        "roomcast",
        &dep,
        &strs(&[
            "--members",
            &shape.members.to_string(),
            "--rooms",
            &shape.rooms.to_string(),
            "--rate",
            &shape.rate.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--size",
            "100",
            "--drain-seconds",
            "10",
            "--sources",
            "16",
            "--prefix",
            "archive",
        ]),
    );
    let pause = pauser.and_then(|p| p.join().ok().flatten());
    let relay = relay?;
    let loaded = started.elapsed().as_secs_f64();
    // Wait until no replica sees a lag (the gauges refresh every second) and every published message is archived.
    let deadline = Instant::now() + Duration::from_secs(600);
    let caught_up = loop {
        if let Some(last) = latest()
            && last.t > loaded + 1.5
            && last.lag_events == 0.0
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let cpu_after = cpu_split(&dep);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(PoisonError::into_inner));
    let readyz: Value = http_get(ports[0], "/readyz")
        .and_then(|b| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null);
    if !caught_up {
        bail!("the archive did not catch up within 10 minutes; /readyz: {readyz}");
    }
    let last = samples.last().copied().context("no samples")?;
    let f = figures(&samples, pause, shape.rate as f64);
    let events = last.archived.max(1.0);
    let cpu_us = |after: f64, before: f64| (after - before) * 1e6 / events;
    let how = if pause.is_some() {
        format!(
            "draining the {:.0} events that waited while PostgreSQL was paused",
            f.backlog
        )
    } else {
        "following the ingest".to_owned()
    };
    step(&format!(
        "archive: {:.0} events/s archived {how} ({:.1} s; best 5 s {:.0}); ingest {:.0} msg/s; lag otherwise at most {:.0} events, {:.1} s; the relay delivered {} ({} lost), p99 {} ms",
        f.archived_per_sec,
        f.archiving_secs,
        f.best_5s,
        f.ingest_per_sec,
        f.lag_events_max,
        f.lag_seconds_max,
        relay["delivered"],
        relay["lost"],
        relay["p99_ms"],
    ));

    // Scroll-back from deep in the archive.
    let mut prober = Command::new(env.bin("scrollback"));
    for url in &dep.urls {
        prober.args(["--url", url]);
    }
    let out = prober
        .args(["--database-url", &database_url])
        .args(["--rooms", &shape.rooms.to_string(), "--prefix", "archive"])
        .args(["--pages", &shape.pages.to_string(), "--limit", "50"])
        .args(["--hot", &shape.hot.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("run scrollback")?;
    if !out.status.success() {
        bail!("scrollback failed ({})", out.status);
    }
    let scrollback: Value = serde_json::from_slice(&out.stdout).context("scrollback's report")?;
    let disk = &scrollback["disk"];
    step(&format!(
        "archive: {} pages of 50 from PostgreSQL: p50 {} ms, p99 {} ms, max {} ms ({} wrong, {} errors); {} events in the archive, {} bytes each in the events table, {} in the database",
        scrollback["pages"],
        scrollback["p50_ms"],
        scrollback["p99_ms"],
        scrollback["max_ms"],
        scrollback["wrong_pages"],
        scrollback["errors"],
        disk["events"],
        disk["events_total_bytes_per_event"]
            .as_f64()
            .unwrap_or(0.0)
            .round(),
        disk["database_bytes_per_event"]
            .as_f64()
            .unwrap_or(0.0)
            .round(),
    ));
    if scrollback["wrong_pages"].as_u64() != Some(0) || scrollback["errors"].as_u64() != Some(0) {
        bail!(
            "scroll-back answered {} wrong pages and {} errors",
            scrollback["wrong_pages"],
            scrollback["errors"]
        );
    }
    if disk["messages"].as_f64() != Some(relay["sent"].as_f64().unwrap_or(-1.0)) {
        bail!(
            "the archive holds {} messages, the generator sent {}",
            disk["messages"],
            relay["sent"]
        );
    }
    Ok(json!({
        "rooms": shape.rooms,
        "messages": total,
        "offered_per_sec": shape.rate,
        "members": shape.members,
        "hot_window": shape.hot,
        "paused": pause.map(|p| json!({"at_s": p.stopped, "resumed_at_s": p.resumed, "backlog_events": f.backlog})),
        "archived_per_sec": f.archived_per_sec,
        "archived_per_sec_best_5s": f.best_5s,
        "archiving_secs": f.archiving_secs,
        "ingest_per_sec": f.ingest_per_sec,
        "lag_events_max": f.lag_events_max,
        "lag_seconds_max": f.lag_seconds_max,
        "caught_up_after_load_s": (last.t - loaded).max(0.0),
        "cpu_us_per_event": {
            "replicas": cpu_us(cpu_after.0, cpu_before.0),
            "redis": cpu_us(cpu_after.1, cpu_before.1),
            "postgres": cpu_us(cpu_after.2, cpu_before.2),
        },
        "scrollback_p50_ms": scrollback["p50_ms"],
        "scrollback_p99_ms": scrollback["p99_ms"],
        "scrollback_max_ms": scrollback["max_ms"],
        "events_total_bytes_per_event": disk["events_total_bytes_per_event"],
        "database_bytes_per_event": disk["database_bytes_per_event"],
        "relay_deliveries_per_sec": relay["deliveries_per_sec"],
        "relay_p99_ms": relay["p99_ms"],
        "relay_lost": relay["lost"],
        "relay": relay,
        "scrollback": scrollback,
        "readyz": readyz,
        "timeline": samples
            .iter()
            .map(|s| json!([s.t, s.published, s.archived, s.lag_events, s.lag_seconds]))
            .collect::<Vec<_>>(),
    }))
}

/// `pid` and its children.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = vec![pid];
    tree.extend(
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|child| {
                std::fs::read_to_string(format!("/proc/{child}/stat")).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .and_then(|(_, r)| r.split(' ').nth(1))
                        .and_then(|p| p.parse::<u32>().ok())
                        == Some(pid)
                })
            }),
    );
    tree
}

/// Sends `signal` (`-STOP`, `-CONT`, …) to `pids`.
fn signal(signal: &str, pids: &[u32]) {
    // A child that exited meanwhile is no error.
    let _ = Command::new("kill")
        .arg(signal)
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

/// The figures of `archive` that get a median with min and max over the runs.
const FIGURES: [&str; 12] = [
    "archived_per_sec",
    "archived_per_sec_best_5s",
    "ingest_per_sec",
    "lag_events_max",
    "lag_seconds_max",
    "scrollback_p50_ms",
    "scrollback_p99_ms",
    "scrollback_max_ms",
    "events_total_bytes_per_event",
    "database_bytes_per_event",
    "relay_deliveries_per_sec",
    "relay_p99_ms",
];

/// `archive`: `runs` measurements, each on a fresh PostgreSQL; the run with the median archive rate, and every
/// figure's median, min and max.
pub(super) fn store(env: &Env, size: Size, runs: usize) -> anyhow::Result<Value> {
    let shape = Shape::of(size);
    let mut reports = Vec::new();
    for run in 0..runs {
        reports.push(store_once(env, &shape, run)?);
    }
    let figure = |r: &Value, key: &str| r[key].as_f64().unwrap_or(0.0);
    reports.sort_by(|a, b| figure(a, FIGURES[0]).total_cmp(&figure(b, FIGURES[0])));
    let mut out = reports[reports.len() / 2].clone();
    for key in FIGURES {
        let mut values: Vec<f64> = reports.iter().map(|r| figure(r, key)).collect();
        values.sort_by(f64::total_cmp);
        out[format!("{key}_median")] = json!(values[values.len() / 2]);
        out[format!("{key}_min")] = json!(values[0]);
        out[format!("{key}_max")] = json!(values[values.len() - 1]);
    }
    out["runs"] = json!(runs);
    let range = |key: &str| {
        format!(
            "{:.1} ({:.1}–{:.1})",
            figure(&out, &format!("{key}_median")),
            figure(&out, &format!("{key}_min")),
            figure(&out, &format!("{key}_max"))
        )
    };
    step(&format!(
        "archive: {} events/s archived (best 5 s {}; ingest {} msg/s); lag otherwise at most {} events, {} s; scroll-back p50 {} ms, p99 {} ms, max {} ms; {} bytes per event in the events table, {} in the database; median of {runs}",
        range("archived_per_sec"),
        range("archived_per_sec_best_5s"),
        range("ingest_per_sec"),
        range("lag_events_max"),
        range("lag_seconds_max"),
        range("scrollback_p50_ms"),
        range("scrollback_p99_ms"),
        range("scrollback_max_ms"),
        range("events_total_bytes_per_event"),
        range("database_bytes_per_event"),
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn reads_metrics_without_labels_and_zero_when_absent() {
        let text = "# TYPE roomcast_archived_events_total counter\nroomcast_archived_events_total 1234\n\
                    roomcast_archive_lag_seconds 0.25\nroomcast_request_errors_total{code=\"x\"} 3\n";
        assert_eq!(metric(text, "roomcast_archived_events_total"), 1234.0);
        assert_eq!(metric(text, "roomcast_archive_lag_seconds"), 0.25);
        assert_eq!(metric(text, "roomcast_archive_lag_events"), 0.0);
    }
}
