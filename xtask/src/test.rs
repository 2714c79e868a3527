//! `cargo xtask test`: everything CI checks, in the order that fails fastest. `.ci/run` calls exactly this.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::tools::{self, Need};
use crate::{build_frontend, exec, step};

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

pub fn run(root: &Path) -> anyhow::Result<()> {
    let tools = tools::ensure_all(root, Need::Everything)?;
    let total = 9;
    let mut n = 0;
    let mut next = |what: &str| {
        n += 1;
        step(&format!("[{n}/{total}] {what}"));
    };

    next("frontend build");
    build_frontend(&tools)?;

    next("cargo fmt --check");
    exec(Command::new("cargo").args(["fmt", "--all", "--check"]))
        .context("code is not formatted; run: cargo fmt")?;

    next("cargo clippy (native, all targets)");
    exec(Command::new("cargo").args([
        "clippy",
        "--quiet",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;

    next("cargo clippy (wasm32, frontend)");
    exec(Command::new("cargo").args([
        "clippy",
        "--quiet",
        "-p",
        "frontend",
        "--target",
        "wasm32-unknown-unknown",
        "--",
        "-D",
        "warnings",
    ]))?;

    next("shared has no async or web dependencies");
    check_shared_deps()?;

    next("docker-compose.yml is valid, the Dockerfile pins xtask's tool versions");
    check_compose(&tools)?;
    check_dockerfile_pins(root)?;

    next("cargo test (workspace: unit, protocol, relay over real Redis, browser)");
    let mut test = Command::new("cargo");
    test.args(["test", "--workspace"])
        .env("ROOMCAST_DIST", root.join("dist"))
        .env("ROOMCAST_TEST_OUTPUT", root.join("test-output"));
    if let Some(redis) = &tools.redis_server {
        test.env("ROOMCAST_REDIS_SERVER", redis);
    }
    let (mut passed, mut failed) = run_counting(&mut test)?;

    next("docker-compose.yml under a private Docker engine (cargo xtask stack-test)");
    match crate::stack_test::run(root, &tools, &Default::default())? {
        crate::stack_test::Outcome::Ran {
            passed: p,
            failed: f,
        } => {
            passed += p;
            failed += f;
        }
        crate::stack_test::Outcome::NoEngine(why) => {
            println!(
                "NOT RUN: the compose stack test needs a Docker engine, and dockerd cannot start here:\n{why}"
            );
        }
    }

    next("benchmark harness smoke run (debug builds, tiny load; figures mean nothing)");
    crate::bench::run(
        root,
        &crate::bench::Args {
            quick: true,
            systems: Vec::new(),
            smoke: true,
            scenarios: Vec::new(),
            profile: None,
        },
    )
    .context("the benchmark harness is broken: cargo xtask bench --smoke")?;
    step("all checks passed");
    // The plain closing line CI reads.
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

/// Runs `cargo test`, echoing its output, and sums the `test result:` lines of every test binary.
pub(crate) fn run_counting(cmd: &mut Command) -> anyhow::Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let (mut passed, mut failed) = (0, 0);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
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
    }
    let status = child.wait()?;
    if !status.success() {
        println!("tests: {passed} passed, {failed} failed");
        bail!("tests failed ({status})");
    }
    if passed == 0 {
        bail!("cargo test ran no test at all");
    }
    Ok((passed, failed))
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

/// The Dockerfile installs the frontend's tools in their own layer, before any of our files are copied, so it names
/// their versions itself; they must stay the ones xtask installs.
fn check_dockerfile_pins(root: &Path) -> anyhow::Result<()> {
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).context("read Dockerfile")?;
    for (arg, want) in [
        ("TRUNK_VERSION", tools::TRUNK_VERSION),
        ("WASM_BINDGEN_VERSION", tools::WASM_BINDGEN_VERSION),
        ("BINARYEN_VERSION", tools::BINARYEN_VERSION),
    ] {
        let line = format!("ARG {arg}=");
        let found = dockerfile
            .lines()
            .find_map(|l| l.trim().strip_prefix(&line))
            .map(str::trim);
        if found != Some(want) {
            bail!(
                "the Dockerfile's {line}{found:?} differs from xtask's {want} (xtask/src/tools.rs)"
            );
        }
    }
    println!("Dockerfile: trunk, wasm-bindgen-cli and binaryen pinned as in xtask");
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
