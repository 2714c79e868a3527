//! `cargo xtask test`: everything CI checks, in the order that fails fastest. `.ci/run` calls exactly this.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::tools::{self, Need};
use crate::{exec, runner, step, web};

/// Crates that must never appear among `shared`'s normal dependencies: it is the wire contract, serde only.
const FORBIDDEN_IN_SHARED: &[&str] = &[
    "tokio",
    "axum",
    "redis",
    "leptos",
    "hyper",
    "mio",
    "wasm-bindgen",
    "web-sys",
];

/// Seconds each fuzz target runs in `cargo xtask test`: enough to replay the corpus and try a few hundred thousand
/// mutations, little next to the integration tests it runs beside.
const FUZZ_SECS: u64 = 10;

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run the integration tests (and the compose stack test) N times while a CPU hog keeps every core busy, and
    /// report each test's runs, failures and slowest time. Nothing else is checked in this mode.
    #[arg(long, value_name = "N")]
    pub stress: Option<u32>,
    /// Only the integration tests whose name contains this (as libtest filters); the compose stack test runs only
    /// when it matches too.
    #[arg(long)]
    pub filter: Option<String>,
    /// Run the network fault tests the long way instead — every partition held 8 s after the failover and made
    /// three times per run, the slow link 200 ms each way — one at a time, and print a table of their counts.
    /// `cargo xtask test` runs the same tests in their short form. Nothing else is checked in this mode.
    #[arg(long, conflicts_with = "stress")]
    pub chaos: bool,
    /// Integration tests run at once, each in its own process.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,
}

/// Wall-clock times of the stages of one `cargo xtask test`, printed at the end (some stages run at once).
#[derive(Debug)]
struct Stages {
    started: Instant,
    done: Mutex<Vec<(String, Duration, Duration)>>,
}

impl Stages {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            done: Mutex::new(Vec::new()),
        }
    }

    /// Runs one stage and records when it started and how long it took.
    fn run<T>(&self, name: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let began = Instant::now();
        step(&format!(
            "{name} (at {:.0} s)",
            self.started.elapsed().as_secs_f64()
        ));
        let result = f();
        let took = began.elapsed();
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((name.to_owned(), began - self.started, took));
        result.with_context(|| format!("stage failed: {name}"))
    }

    fn report(&self) {
        let mut done = self
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        done.sort_by_key(|(_, at, _)| *at);
        println!("\nstage times (wall clock; stages that overlap ran at once):");
        println!("  {:>7}  {:>7}  stage", "start", "took");
        for (name, at, took) in done {
            println!(
                "  {:>6.0}s  {:>6.0}s  {name}",
                at.as_secs_f64(),
                took.as_secs_f64()
            );
        }
        println!(
            "  total: {:.1} min",
            self.started.elapsed().as_secs_f64() / 60.0
        );
    }
}

/// Where each integration test's time from the last run is kept (the next run starts the slowest first).
fn times_file(root: &Path) -> PathBuf {
    root.join("target/test-times.json")
}

/// The environment every test process gets.
fn test_env(root: &Path, tools: &tools::Tools) -> Vec<(String, String)> {
    let mut envs = vec![
        (
            "ROOMCAST_DIST".to_owned(),
            root.join("dist").display().to_string(),
        ),
        (
            "ROOMCAST_TEST_OUTPUT".to_owned(),
            root.join("test-output").display().to_string(),
        ),
        (
            "PATH".to_owned(),
            tools.path().to_string_lossy().into_owned(),
        ),
    ];
    if let Some(redis) = tools.redis_server() {
        envs.push((
            "ROOMCAST_REDIS_SERVER".to_owned(),
            redis.display().to_string(),
        ));
    }
    envs
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    if let Some(times) = args.stress {
        return stress(root, args, times);
    }
    if args.chaos {
        return chaos(root, args);
    }
    let stages = Stages::new();
    let result = run_everything(root, args, &stages);
    stages.report();
    let (passed, failed) = result?;
    step("all checks passed");
    // The plain closing line CI reads.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

fn run_everything(root: &Path, args: &Args, stages: &Stages) -> anyhow::Result<(u64, u64)> {
    let tools = stages.run("tools: the wasm32 target and wasm-opt", || {
        tools::ensure_toolchain(root, Need::Everything)
    })?;
    stages.run("cargo fmt --check", || {
        exec(Command::new("cargo").args(["fmt", "--all", "--check"]))
            .context("code is not formatted; run: cargo fmt")
    })?;
    stages.run(
        "checks: shared's dependencies, pinned tool versions",
        || {
            check_shared_deps()?;
            check_pins(root)
        },
    )?;
    // Three things at once: the wasm release build (its own target directory; its link-time optimisation runs on
    // one core), the Debian packages then the Docker engine and its base images (mostly downloads), and the native
    // builds. Nothing is built with a Debian package.
    let (web, engine, tests) = std::thread::scope(|scope| {
        let web = scope.spawn(|| {
            stages.run(
                "browser client: release build into dist/, linted by clippy for wasm32",
                || web::build(&tools, root, true)?.within_budget(),
            )
        });
        let engine = scope.spawn(|| {
            stages.run(
                "Debian packages (Redis, PostgreSQL, nginx, Chromium, Docker, nftables, iproute2) and docker-compose.yml's validity",
                || {
                    tools::ensure_packages(root, Need::Everything)?;
                    tools::check_packages(&tools, Need::Everything)?;
                    check_compose(&tools)
                },
            )?;
            stages.run(
                "Docker engine and base images (for the compose stack)",
                || crate::stack_test::prepare(root),
            )
        });
        let tests = native_builds(stages);
        (joined(web), joined(engine), tests)
    });
    let (web, tests) = (web?, tests?);
    let mut engine = engine?;
    let envs = test_env(root, &tools);
    let it = integration_binary(&tests)?;
    let others: Vec<&PathBuf> = tests.iter().filter(|t| *t != it).collect();
    // The unit tests, the integration tests, the compose stack and the benchmark harness's smoke run at once: each
    // waits on timers and networks most of the time, and none of them may depend on having the machine to itself.
    let (unit, integration, compose, bench) = std::thread::scope(|scope| {
        let unit = scope.spawn(|| {
            let unit = stages.run(
                "unit tests (shared, backend, frontend, xtask, testkit, localrun)",
                || run_whole_binaries(&others, &envs),
            )?;
            // After the unit tests, beside the integration tests (which mostly wait): a short coverage-guided run of
            // every decoder, from the corpus in the repository.
            stages.run(
                &format!("fuzz targets, {FUZZ_SECS} s each (cargo xtask fuzz --secs N for longer)"),
                || crate::fuzz::short_run(root, FUZZ_SECS),
            )?;
            Ok(unit)
        });
        let compose = scope.spawn(|| {
            stages.run("compose stack under a private Docker engine", || match &mut engine {
                Ok(engine) => crate::stack_test::run_on(engine, root, &Default::default()).map(Some),
                Err(why) => {
                    println!(
                        "NOT RUN: the compose stack test needs a Docker engine, and dockerd cannot start here:\n{why}"
                    );
                    Ok(None)
                }
            })
        });
        let bench = scope.spawn(|| {
            stages.run(
                "benchmark harness smoke run (debug builds, tiny load; figures mean nothing)",
                || {
                    crate::bench::run(
                        root,
                        &crate::bench::Args {
                            quick: true,
                            systems: Vec::new(),
                            smoke: true,
                            scenarios: Vec::new(),
                            profile: None,
                            built: true,
                            runs: 1,
                        },
                    )
                    .context("the benchmark harness is broken: cargo xtask bench --smoke")
                },
            )
        });
        let integration = stages.run(
            "integration tests (backend/tests/it, each in its own process)",
            || integration_tests(root, it, args, &envs),
        );
        (joined(unit), integration, joined(compose), joined(bench))
    });
    drop(engine);
    let (mut passed, mut failed) = unit?;
    let (p, f) = integration?;
    passed += p;
    failed += f;
    if let Some((p, f)) = compose? {
        passed += p;
        failed += f;
    }
    bench?;
    println!(
        "browser client: wasm {} KB, {} KB gzip, {} KB brotli; a first visit {} KB of the {} KB budget",
        web.wasm_bytes / 1024,
        web.wasm_gzip / 1024,
        web.wasm_brotli / 1024,
        web.first_load / 1024,
        web::FIRST_LOAD_BUDGET / 1024
    );
    Ok((passed, failed))
}

/// A scoped thread's result, its panic turned into an error.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>) -> anyhow::Result<T> {
    handle
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("a stage panicked")))
}

/// Every test executable and binary in one debug build, linted by clippy; returns the test executables.
fn native_builds(stages: &Stages) -> anyhow::Result<Vec<PathBuf>> {
    stages.run(
        "build every target (debug), linted by clippy: the tests, the compose image and the bench smoke share it",
        runner::build_all,
    )
}

/// The backend's integration test binary among `tests`.
fn integration_binary(tests: &[PathBuf]) -> anyhow::Result<&PathBuf> {
    tests
        .iter()
        .find(|t| {
            t.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("it-"))
        })
        .context("cargo built no backend integration test binary (tests/it)")
}

/// Runs test executables whole (their tests in threads, as `cargo test` does), printing one line per executable
/// (and everything it printed if it failed); sums their results.
fn run_whole_binaries(
    binaries: &[&PathBuf],
    envs: &[(String, String)],
) -> anyhow::Result<(u64, u64)> {
    let (mut passed, mut failed) = (0, 0);
    for binary in binaries {
        let out = Command::new(binary)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .output()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let (p, f) = count_results(&text);
        let name = binary.file_name().unwrap_or_default().to_string_lossy();
        println!("unit tests: {name}: {p} passed, {f} failed");
        if !out.status.success() {
            println!("{text}");
            bail!("{name} failed ({})", out.status);
        }
        passed += p;
        failed += f;
    }
    if passed == 0 {
        bail!("the unit test binaries ran no test at all");
    }
    Ok((passed, failed))
}

/// One line per finished integration test: ok or FAIL, its time, its name.
fn print_run(run: &runner::Run) {
    println!(
        "{} {:>6.1}s {}",
        if run.passed { "ok  " } else { "FAIL" },
        run.took.as_secs_f64(),
        run.name
    );
}

/// The integration tests, each in its own process, `--jobs` at a time, slowest first.
fn integration_tests(
    root: &Path,
    binary: &Path,
    args: &Args,
    envs: &[(String, String)],
) -> anyhow::Result<(u64, u64)> {
    let tests = runner::list(binary, args.filter.as_deref())?;
    if tests.is_empty() {
        bail!("no integration test matches");
    }
    let hint = runner::load_times(&times_file(root));
    let runs = runner::run_all(binary, &tests, args.jobs.into(), envs, &hint, &print_run);
    runner::save_times(&times_file(root), &runs);
    let failed: Vec<&runner::Run> = runs.iter().filter(|r| !r.passed).collect();
    for run in &failed {
        println!("\n---- {} ----\n{}", run.name, run.output);
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} integration tests failed: {}",
            failed.len(),
            runs.len(),
            failed
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((runs.len() as u64, 0))
}

/// `--stress N`: the integration tests and the compose stack test N times under a CPU hog, then a table.
fn stress(root: &Path, args: &Args, times: u32) -> anyhow::Result<()> {
    let tools = tools::ensure_all(root, Need::Everything)?;
    web::build(&tools, root, false)?;
    let tests = runner::build_all()?;
    let it = integration_binary(&tests)?;
    let envs = test_env(root, &tools);
    let names = runner::list(it, args.filter.as_deref())?;
    let with_compose = args
        .filter
        .as_deref()
        .is_none_or(|f| crate::stack_test::COMPOSE_TEST.contains(f));
    let mut engine = if with_compose {
        match crate::stack_test::prepare(root)? {
            Ok(engine) => Some(engine),
            Err(why) => {
                println!("the compose stack test is left out: dockerd cannot start here:\n{why}");
                None
            }
        }
    } else {
        None
    };
    let hint = runner::load_times(&times_file(root));
    let hog = crate::hog::Hog::start();
    step(&format!(
        "stress: {} integration tests{} × {times}, {} at a time, while {} threads spin, one per core",
        names.len(),
        if engine.is_some() {
            " and the compose stack"
        } else {
            ""
        },
        args.jobs,
        hog.threads()
    ));
    let logs = root.join("target/stress");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    let started = Instant::now();
    let mut all = Vec::new();
    for round in 1..=times {
        let print = |run: &runner::Run| {
            println!(
                "[{round}/{times}] {} {:>6.1}s {}",
                if run.passed { "ok  " } else { "FAIL" },
                run.took.as_secs_f64(),
                run.name
            );
        };
        let mut runs = runner::run_all(it, &names, args.jobs.into(), &envs, &hint, &print);
        if let Some(engine) = &mut engine {
            let began = Instant::now();
            let result = crate::stack_test::run_on(engine, root, &Default::default());
            let run = runner::Run {
                name: crate::stack_test::COMPOSE_TEST.to_owned(),
                passed: result.is_ok(),
                took: began.elapsed(),
                output: result.err().map(|e| format!("{e:#}")).unwrap_or_default(),
            };
            print(&run);
            runs.push(run);
        }
        for run in runs.iter().filter(|r| !r.passed) {
            let file = logs.join(format!("{}-{round}.log", run.name.replace("::", "-")));
            let _ = std::fs::write(&file, &run.output);
            println!("    output: {}", file.display());
        }
        all.extend(runs);
    }
    drop(hog);
    drop(engine);
    let failures = stress_table(&all, times, started.elapsed());
    if failures > 0 {
        bail!(
            "{failures} failed runs under stress (outputs in {})",
            logs.display()
        );
    }
    Ok(())
}

/// The integration tests `--chaos` runs: the partitions and the network faults of the fault suite.
const CHAOS_TESTS: &[&str] = &[
    "partition::",
    "faults::a_replica_cut_off_from_redis",
    "faults::a_slow_lossy_link_to_redis",
];

/// `--chaos`: the network fault tests the long way (`ROOMCAST_CHAOS=1`), one at a time so their windows are not
/// stretched by each other, then the table of their counts.
fn chaos(root: &Path, args: &Args) -> anyhow::Result<()> {
    let tools = tools::ensure_all(root, Need::Everything)?;
    let tests = runner::build_all()?;
    let it = integration_binary(&tests)?;
    let mut envs = test_env(root, &tools);
    envs.push(("ROOMCAST_CHAOS".to_owned(), "1".to_owned()));
    let names: Vec<String> = runner::list(it, args.filter.as_deref())?
        .into_iter()
        .filter(|name| CHAOS_TESTS.iter().any(|t| name.starts_with(t)))
        .collect();
    if names.is_empty() {
        bail!("no network fault test matches");
    }
    step(&format!(
        "chaos: {} network fault tests, one at a time",
        names.len()
    ));
    let started = Instant::now();
    let runs = runner::run_all(it, &names, 1, &envs, &Default::default(), &print_run);
    println!(
        "
| run | counts |
|---|---|"
    );
    for run in &runs {
        for line in run.output.lines() {
            // libtest's `test <name> ... ` may start the line a test's first print continues.
            if let Some((_, counts)) = line
                .split_once("partition=")
                .or_else(|| line.split_once("fault="))
            {
                let (name, counts) = counts.split_once(' ').unwrap_or((counts, ""));
                println!("| {name} | {counts} |");
            }
        }
    }
    let failed: Vec<&runner::Run> = runs.iter().filter(|r| !r.passed).collect();
    for run in &failed {
        println!("\n---- {} ----\n{}", run.name, run.output);
    }
    println!(
        "\nchaos: {} tests in {:.1} min: {} failed",
        runs.len(),
        started.elapsed().as_secs_f64() / 60.0,
        failed.len()
    );
    if !failed.is_empty() {
        bail!("{} network fault tests failed", failed.len());
    }
    Ok(())
}

/// Prints runs, failures and the slowest time per test; returns the failed runs.
fn stress_table(runs: &[runner::Run], times: u32, took: Duration) -> usize {
    let mut per_test: std::collections::BTreeMap<&str, (u32, u32, Duration)> = Default::default();
    for run in runs {
        let entry = per_test.entry(&run.name).or_default();
        entry.0 += 1;
        entry.1 += u32::from(!run.passed);
        entry.2 = entry.2.max(run.took);
    }
    println!("\n| test | runs | failures | slowest |\n|---|---|---|---|");
    for (name, (count, failed, slowest)) in &per_test {
        println!(
            "| {name} | {count} | {failed} | {:.1} s |",
            slowest.as_secs_f64()
        );
    }
    let failed = runs.iter().filter(|r| !r.passed).count();
    println!(
        "\nstress: {} tests × {times} = {} runs under a CPU hog in {:.1} min: {failed} failed",
        per_test.len(),
        runs.len(),
        took.as_secs_f64() / 60.0
    );
    failed
}

/// The passed and failed counts of libtest's `test result:` lines in `output`.
fn count_results(output: &str) -> (u64, u64) {
    let (mut passed, mut failed) = (0, 0);
    for rest in output
        .lines()
        .filter_map(|l| l.strip_prefix("test result: "))
    {
        let count = |word: &str| {
            rest.split(';')
                .find_map(|part| {
                    part.trim()
                        .strip_suffix(word)?
                        .trim()
                        .rsplit(' ')
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        passed += count(" passed");
        failed += count(" failed");
    }
    (passed, failed)
}

/// There is no Docker engine on every machine; `docker-compose config` still proves the file is well-formed.
fn check_compose(tools: &tools::Tools) -> anyhow::Result<()> {
    for profile in ["default", "ha"] {
        let out = tools
            .command("docker-compose")
            .args([
                "-f",
                "docker-compose.yml",
                "--profile",
                profile,
                "config",
                "--quiet",
            ])
            .output();
        check_compose_output(profile, out)?;
    }
    Ok(())
}

/// The tool versions written in more than one place agree: the Dockerfile installs binaryen (for `wasm-opt`) in
/// its own layer, before any of our files are copied, so it names the version itself; and `trunk serve` needs the
/// wasm-bindgen CLI of exactly the `wasm-bindgen` version in `Cargo.lock`.
fn check_pins(root: &Path) -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).context("read Dockerfile")?;
    let line = "ARG BINARYEN_VERSION=";
    let found = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix(line))
        .map(str::trim);
    if found != Some(tools::BINARYEN_VERSION) {
        bail!(
            "the Dockerfile's {line}{found:?} differs from xtask's {} (xtask/src/tools.rs)",
            tools::BINARYEN_VERSION
        );
    }
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).context("read Cargo.lock")?;
    for krate in ["wasm-bindgen", "wasm-bindgen-cli-support"] {
        let entry = format!(
            "name = \"{krate}\"\nversion = \"{}\"",
            tools::WASM_BINDGEN_VERSION
        );
        if !lock.contains(&entry) {
            bail!(
                "Cargo.lock's {krate} is not {} (xtask/src/tools.rs WASM_BINDGEN_VERSION): keep the frontend's \
                 wasm-bindgen, xtask's wasm-bindgen-cli-support and the CLI trunk serve uses at one version",
                tools::WASM_BINDGEN_VERSION
            );
        }
    }
    println!(
        "pins: binaryen {} in the Dockerfile as in xtask; wasm-bindgen {} in Cargo.lock as in xtask",
        tools::BINARYEN_VERSION,
        tools::WASM_BINDGEN_VERSION
    );
    Ok(())
}

fn check_compose_output(
    profile: &str,
    out: std::io::Result<std::process::Output>,
) -> anyhow::Result<()> {
    match out {
        Ok(out) if out.status.success() => {
            println!("docker-compose.yml (profile {profile}): valid");
            Ok(())
        }
        Ok(out) => bail!(
            "docker-compose.yml is invalid:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => bail!(
            "docker-compose not found: apt-get install docker-compose (used to validate docker-compose.yml)"
        ),
    }
}

fn check_shared_deps() -> anyhow::Result<()> {
    let out = Command::new("cargo")
        .args([
            "tree", "-p", "shared", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .output()
        .context("cannot run cargo tree")?;
    let tree = String::from_utf8_lossy(&out.stdout);
    let found: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| FORBIDDEN_IN_SHARED.contains(name))
        .collect();
    if !found.is_empty() {
        bail!(
            "shared depends on {found:?}; it must stay serde-only (move that code to backend or frontend)"
        );
    }
    println!(
        "shared's dependencies: {}",
        tree.lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
