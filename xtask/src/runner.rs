//! Runs the tests of one test binary each in its own process, a few at a time: every test gets its own runtime,
//! ports and servers, a hung or crashed test cannot take others with it, and each test's time is measured. Used by
//! `cargo xtask test` for the integration tests and, over and over under a CPU hog, by `--stress`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// One run of one test.
#[derive(Debug, Clone)]
pub struct Run {
    pub name: String,
    pub passed: bool,
    pub took: Duration,
    /// What the test printed (kept for failures).
    pub output: String,
}

/// Builds and lints every target of the workspace in one debug build — test executables, the `roomcast` binary
/// the integration tests, the compose image and the bench smoke run use, the bench binaries — and returns the test
/// executables. One build, one feature resolution: a second `cargo build` with another selection of packages or
/// targets would resolve other features and compile much of it again. Our crates are compiled by clippy
/// ([`lint_with_clippy`]), so this build is also `cargo clippy --workspace --all-targets -- -D warnings`, without
/// checking every dependency a second time.
pub fn build_all() -> anyhow::Result<Vec<PathBuf>> {
    let mut cargo = Command::new("cargo");
    cargo
        .args(["build", "--workspace", "--all-targets", "--locked"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let out = lint_with_clippy(&mut cargo)?
        .output()
        .context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("building or linting failed (cargo's and clippy's output above)");
    }
    let mut executables = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // Benchmarks (`harness = false`) are built as tests too; they are run by `cargo bench`, not here.
        let bench = msg["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "bench"));
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && !bench
            && let Some(exe) = msg["executable"].as_str()
        {
            executables.push(PathBuf::from(exe));
        }
    }
    Ok(executables)
}

/// Makes a cargo build compile the workspace's own crates with clippy and deny warnings: what `cargo clippy --
/// -D warnings` does for a check (cargo's `RUSTC_WORKSPACE_WRAPPER`, clippy's `CLIPPY_ARGS`), done by a real build,
/// so the dependencies are compiled once, for the build, instead of once more in check mode. Cargo tracks both
/// variables, so builds with and without them keep apart.
pub fn lint_with_clippy(cargo: &mut Command) -> anyhow::Result<&mut Command> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc --print sysroot")?;
    let driver =
        PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("bin/clippy-driver");
    if !driver.is_file() {
        bail!(
            "clippy is not installed for this toolchain ({} is missing); run: rustup component add clippy",
            driver.display()
        );
    }
    Ok(cargo.env("RUSTC_WORKSPACE_WRAPPER", driver).env(
        "CLIPPY_ARGS",
        "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__",
    ))
}

/// The names of the tests in `binary` that a plain run would run (ignored ones left out), in the binary's order.
pub fn list(binary: &Path, filter: Option<&str>) -> anyhow::Result<Vec<String>> {
    let mut cmd = Command::new(binary);
    cmd.args(["--list", "--format", "terse"]);
    if let Some(filter) = filter {
        cmd.arg(filter);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot list the tests of {}", binary.display()))?;
    let ignored = Command::new(binary)
        .args(["--list", "--format", "terse", "--ignored"])
        .output()?;
    let ignored: Vec<String> = String::from_utf8_lossy(&ignored.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test").map(str::to_owned))
        .collect();
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .filter(|name| !ignored.iter().any(|i| i == name))
        .map(str::to_owned)
        .collect())
}

/// Runs each of `tests` (in `binary`) in its own process, `parallel` at a time, slowest-known first; calls
/// `done` after each. Environment: `envs`.
pub fn run_all(
    binary: &Path,
    tests: &[String],
    parallel: usize,
    envs: &[(String, String)],
    order_hint: &BTreeMap<String, Duration>,
    done: &(dyn Fn(&Run) + Sync),
) -> Vec<Run> {
    let mut queue: Vec<String> = tests.to_vec();
    // Longest first, so the slow ones do not all end up last; tests never timed go first (they may be slow).
    queue.sort_by_key(|name| {
        std::cmp::Reverse(order_hint.get(name).copied().unwrap_or(Duration::MAX))
    });
    let queue = Arc::new(Mutex::new(queue.into_iter()));
    let results = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for _ in 0..parallel.max(1) {
            let (queue, results) = (Arc::clone(&queue), Arc::clone(&results));
            scope.spawn(move || {
                loop {
                    let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                    let Some(name) = next else { break };
                    let run = run_one(binary, &name, false, envs);
                    done(&run);
                    results
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(run);
                }
            });
        }
    });
    let mut results = std::mem::take(&mut *results.lock().unwrap_or_else(PoisonError::into_inner));
    results.sort_by(|a, b| a.name.cmp(&b.name));
    results
}

/// Runs the ignored test `name` of `binary` (one that needs something set up first) in its own process.
pub fn run_ignored(binary: &Path, name: &str, envs: &[(String, String)]) -> Run {
    run_one(binary, name, true, envs)
}

/// The longest one test may run before it is stopped and counted as failed: a test that hangs fails instead of
/// holding up the run. Far above any test's time on a busy machine (the slowest take well under a minute).
const TEST_TIME_LIMIT: Duration = Duration::from_secs(600);

fn run_one(binary: &Path, name: &str, ignored: bool, envs: &[(String, String)]) -> Run {
    use std::io::Read;
    use std::os::unix::process::CommandExt;

    let started = Instant::now();
    let mut cmd = Command::new(binary);
    if ignored {
        cmd.arg("--ignored");
    }
    // Its own process group: whatever the test starts (redis-server, replicas, nginx, chromedriver) goes with it.
    let child = cmd
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return Run {
                name: name.to_owned(),
                passed: false,
                took: started.elapsed(),
                output: format!("cannot start {}: {e}", binary.display()),
            };
        }
    };
    let group = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let (status, timed_out, text) = std::thread::scope(|scope| {
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            scope.spawn(move || {
                let mut text = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut text);
                }
                text
            })
        };
        let out = read(stdout.map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err = read(stderr.map(|p| Box::new(p) as Box<dyn Read + Send>));
        let mut timed_out = false;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if started.elapsed() > TEST_TIME_LIMIT => {
                    timed_out = true;
                    kill_group(group);
                    break child.wait().ok();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break None,
            }
        };
        // Anything the test left running (it should have stopped it itself) goes now, so the pipes close too.
        kill_group(group);
        let text = [
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        ]
        .concat();
        (status, timed_out, text)
    });
    let mut output = String::from_utf8_lossy(&text).into_owned();
    if timed_out {
        output.push_str(&format!(
            "\nstopped after {} s: the test did not finish",
            TEST_TIME_LIMIT.as_secs()
        ));
    }
    // A filter that matched nothing passes with "0 passed": count it as a failure, not a pass.
    let ran = output.contains("1 passed");
    Run {
        name: name.to_owned(),
        passed: status.is_some_and(|s| s.success()) && ran && !timed_out,
        took: started.elapsed(),
        output,
    }
}

/// Kills every process in the process group `group` (SIGKILL).
fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Per-test times from earlier runs, kept in `file` to order the next run (longest first).
pub fn load_times(file: &Path) -> BTreeMap<String, Duration> {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|text| serde_json::from_str::<BTreeMap<String, f64>>(&text).ok())
        .map(|map| {
            map.into_iter()
                .map(|(k, secs)| (k, Duration::from_secs_f64(secs)))
                .collect()
        })
        .unwrap_or_default()
}

/// Saves the slowest time of each test in `runs` to `file`.
pub fn save_times(file: &Path, runs: &[Run]) {
    let mut map: BTreeMap<String, f64> = BTreeMap::new();
    for run in runs {
        let secs = map.entry(run.name.clone()).or_default();
        *secs = secs.max(run.took.as_secs_f64());
    }
    if let Ok(text) = serde_json::to_string_pretty(&map) {
        let _ = std::fs::write(file, text);
    }
}
