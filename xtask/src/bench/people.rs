//! What read state and search cost, Roomcast with its PostgreSQL archive: `search` (`testkit`'s `searchbench`: an
//! archive filled with 1,000,000 messages of generated chat text in 100 rooms, then query after query of each kind
//! over a replica's WebSocket) and `reads` (`testkit`'s `readload`: 10,000 members on two replicas in 100 rooms, each
//! marking what arrives as read the way the browser does, while messages flow; what that costs Redis, PostgreSQL
//! and the replicas). Each figure is the median of the runs with its min and max. Every PostgreSQL is a private one
//! in the scratch directory (`archive::Postgres`).

use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::archive::{Postgres, Size};
use super::{Env, deploy_with};
use crate::step;

/// The median, min and max of `key` over `reports`, into `out` as `<key>_median`, `_min`, `_max`.
fn spread(out: &mut Value, reports: &[Value], key: &str) {
    let mut values: Vec<f64> = reports.iter().filter_map(|r| r[key].as_f64()).collect();
    if values.is_empty() {
        return;
    }
    values.sort_by(f64::total_cmp);
    out[format!("{key}_median")] = json!(values[values.len() / 2]);
    out[format!("{key}_min")] = json!(values[0]);
    out[format!("{key}_max")] = json!(values[values.len() - 1]);
}

fn range(v: &Value, key: &str) -> String {
    let f = |suffix: &str| v[format!("{key}_{suffix}")].as_f64().unwrap_or(0.0);
    format!("{:.1} ({:.1}–{:.1})", f("median"), f("min"), f("max"))
}

/// The report of the run whose `key` is the median, with every figure's spread.
fn median_run(mut reports: Vec<Value>, key: &str, figures: &[&str]) -> Value {
    let figure = |r: &Value| r[key].as_f64().unwrap_or(0.0);
    reports.sort_by(|a, b| figure(a).total_cmp(&figure(b)));
    let mut out = reports[reports.len() / 2].clone();
    for f in figures {
        spread(&mut out, &reports, f);
    }
    out["runs"] = json!(reports.len());
    out
}

/// `search`: one archive filled once, then `runs` rounds of queries against it, each round every kind of query.
pub(super) fn search(env: &Env, size: Size, runs: usize) -> anyhow::Result<Value> {
    let (messages, rooms, queries) = match size {
        Size::Full => (1_000_000, 100, 100),
        Size::Quick => (100_000, 20, 20),
        Size::Smoke => (2_000, 4, 2),
    };
    let pg = Postgres::start(env, "search")?;
    let database_url = pg.url.clone();
    // One replica: its migrations make the schema the archive's `COPY` fills, and it answers the queries.
    let dep = deploy_with(env, "roomcast", 1, Some(pg), &[])?;
    step(&format!(
        "search: {messages} messages in {rooms} rooms, {queries} queries of each kind per run"
    ));
    let mut reports = Vec::new();
    for run in 0..runs {
        let out = Command::new(env.bin("searchbench"))
            .args(["--url", &dep.urls[0], "--database-url", &database_url])
            .args(["--messages", &messages.to_string()])
            .args(["--rooms", &rooms.to_string()])
            .args(["--queries", &queries.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .context("run searchbench")?;
        if !out.status.success() {
            bail!("searchbench failed ({})", out.status);
        }
        let report: Value = serde_json::from_slice(&out.stdout).context("searchbench's report")?;
        let errors: u64 = report["kinds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["errors"].as_u64())
            .sum();
        if errors > 0 {
            bail!("search answered {errors} queries with an error");
        }
        let kinds = report["kinds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| format!("{} {}", k["kind"].as_str().unwrap_or("?"), k["p99_ms"]))
            .collect::<Vec<_>>()
            .join(", ");
        step(&format!(
            "search run {}: p50 {} ms, p99 {} ms, max {} ms over {} messages (filled {} in {:.0} s); p99 by kind: {kinds}",
            run + 1,
            report["p50_ms"],
            report["p99_ms"],
            report["max_ms"],
            report["messages"],
            report["filled"],
            report["fill_secs"].as_f64().unwrap_or(0.0),
        ));
        reports.push(report);
    }
    let mut out = median_run(reports.clone(), "p99_ms", &["p50_ms", "p99_ms", "max_ms"]);
    // Each kind's p99 over the runs, so the worst kind's spread shows too.
    let kinds: Vec<String> = out["kinds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["kind"].as_str().map(str::to_owned))
        .collect();
    let mut by_kind = serde_json::Map::new();
    for kind in kinds {
        let runs_of_kind: Vec<Value> = reports
            .iter()
            .filter_map(|r| {
                r["kinds"]
                    .as_array()?
                    .iter()
                    .find(|k| k["kind"] == kind.as_str())
                    .cloned()
            })
            .collect();
        let mut k = json!({});
        for f in ["p50_ms", "p99_ms", "max_ms"] {
            spread(&mut k, &runs_of_kind, f);
        }
        by_kind.insert(kind, k);
    }
    out["by_kind"] = Value::Object(by_kind);
    step(&format!(
        "search: p50 {} ms, p99 {} ms, max {} ms; median of {runs}",
        range(&out, "p50_ms"),
        range(&out, "p99_ms"),
        range(&out, "max_ms"),
    ));
    Ok(out)
}

/// The figures of `reads` that get a median with min and max.
const READ_FIGURES: [&str; 11] = [
    "reads_per_sec",
    "read_answers_per_sec",
    "read_answer_p50_ms",
    "read_answer_p99_ms",
    "redis_commands_per_sec",
    "redis_scripts_per_sec",
    "redis_publishes_per_sec",
    "redis_cpu_percent",
    "postgres_rows_written_per_sec",
    "replicas_cpu_percent",
    "postgres_cpu_percent",
];

/// `reads`: `runs` measurements, each on a fresh deployment (Redis, PostgreSQL, two replicas).
pub(super) fn reads(env: &Env, size: Size, runs: usize) -> anyhow::Result<Value> {
    let (members, rooms, rate, secs) = match size {
        Size::Full => (10_000, 100, 100, 30),
        Size::Quick => (1_000, 20, 50, 10),
        Size::Smoke => (40, 4, 10, 2),
    };
    step(&format!(
        "reads: {members} members in {rooms} rooms on 2 replicas, {rate} messages/s, every member reading what arrives (one `read` per room per 250 ms at most), {secs} s"
    ));
    let mut reports = Vec::new();
    for run in 0..runs {
        let pg = Postgres::start(env, &format!("reads-{run}"))?;
        let database_url = pg.url.clone();
        let dep = deploy_with(env, "roomcast", 2, Some(pg), &[])?;
        let redis_port = dep.redis_port.context("the deployment's Redis")?;
        let mut cmd = Command::new(env.bin("readload"));
        for (url, server) in dep.urls.iter().zip(&dep.servers) {
            cmd.args(["--url", url, "--pid", &server.child.id().to_string()]);
        }
        let pg_before = dep.postgres.as_ref().map_or(0.0, Postgres::cpu_secs);
        let out = cmd
            .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}")])
            .args(["--database-url", &database_url])
            .args(["--members", &members.to_string()])
            .args(["--rooms", &rooms.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--secs", &secs.to_string()])
            .stderr(Stdio::inherit())
            .output()
            .context("run readload")?;
        if !out.status.success() {
            bail!("readload failed ({})", out.status);
        }
        let mut report: Value = serde_json::from_slice(&out.stdout).context("readload's report")?;
        // PostgreSQL's CPU over the whole run (joins included), as a share of one core over the measured seconds:
        // an upper bound of what the reads cost it.
        let pg_secs = dep.postgres.as_ref().map_or(0.0, Postgres::cpu_secs) - pg_before;
        let measured = report["secs"].as_f64().unwrap_or(1.0).max(0.001);
        report["postgres_cpu_percent"] = json!(100.0 * pg_secs / measured);
        let n = |key: &str| report[key].as_f64().unwrap_or(0.0);
        step(&format!(
            "reads run {}: {:.0} reads/s ({:.0} answered/s, {} refused; answer p50 {:.1} ms, p99 {:.1} ms); Redis {:.0} commands/s ({:.0} scripts, {:.0} publishes), {:.1} % CPU; PostgreSQL {:.0} rows/s, {:.1} % CPU; replicas {:.1} % CPU",
            run + 1,
            n("reads_per_sec"),
            n("read_answers_per_sec"),
            report["reads_refused"],
            n("read_answer_p50_ms"),
            n("read_answer_p99_ms"),
            n("redis_commands_per_sec"),
            n("redis_scripts_per_sec"),
            n("redis_publishes_per_sec"),
            n("redis_cpu_percent"),
            n("postgres_rows_written_per_sec"),
            n("postgres_cpu_percent"),
            n("replicas_cpu_percent"),
        ));
        reports.push(report);
    }
    let out = median_run(reports, "reads_per_sec", &READ_FIGURES);
    step(&format!(
        "reads: {} reads/s; Redis {} scripts/s, {} publishes/s, {} commands/s, {} % CPU; PostgreSQL {} rows written/s, {} % CPU; replicas {} % CPU; answer p99 {} ms; median of {runs}",
        range(&out, "reads_per_sec"),
        range(&out, "redis_scripts_per_sec"),
        range(&out, "redis_publishes_per_sec"),
        range(&out, "redis_commands_per_sec"),
        range(&out, "redis_cpu_percent"),
        range(&out, "postgres_rows_written_per_sec"),
        range(&out, "postgres_cpu_percent"),
        range(&out, "replicas_cpu_percent"),
        range(&out, "read_answer_p99_ms"),
    ));
    Ok(out)
}
