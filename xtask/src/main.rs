//! Project tasks, run as `cargo xtask <task>`: `dev` runs the product, `test` checks everything CI checks.

mod bench;
mod dev;
mod plot;
mod test;
mod tools;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "Roomcast project tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what is missing, build the frontend, start a private Redis and two replicas; Ctrl-C stops all.
    Dev(dev::Args),
    /// Install what is missing, build the frontend, then fmt, clippy (native and wasm32) and every test.
    Test,
    /// Install the toolchain pieces and packages the project needs, and nothing else.
    Setup,
    /// Build the frontend into dist/ (release, with wasm-opt).
    Frontend,
    /// Fan-out benchmark: Roomcast against socket.io, a FastAPI chat and the bare ceiling (results in target/bench/).
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Dev(args) => dev::run(&root, &args),
        Task::Test => test::run(&root),
        Task::Bench(args) => bench::run(&root, &args).map(drop),
        Task::Setup => tools::ensure_all(&root, tools::Need::Everything).map(drop),
        Task::Frontend => {
            let tools = tools::ensure_all(&root, tools::Need::Frontend)?;
            build_frontend(&tools)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Prints a progress line in the same style everywhere.
pub fn step(msg: &str) {
    println!("==> {msg}");
}

/// Runs a command to completion, failing with the command line when it fails.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let line = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {line}"))?;
    if !status.success() {
        bail!("command failed ({status}): {line}");
    }
    Ok(())
}

/// Builds the browser client with trunk into `dist/`.
pub fn build_frontend(tools: &tools::Tools) -> anyhow::Result<()> {
    step("building the frontend (trunk build --release --offline)");
    exec(
        tools
            .command("trunk")
            .args(["build", "--release", "--offline"]),
    )
    .context("frontend build failed; see trunk's output above")?;
    if let Some(size) = wasm_gzip_size(Path::new("dist")) {
        step(&format!(
            "frontend built into dist/ ({} KB of wasm, gzipped)",
            size / 1024
        ));
    }
    Ok(())
}

fn wasm_gzip_size(dist: &Path) -> Option<u64> {
    let wasm = std::fs::read_dir(dist)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "wasm"))?;
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9c '{}' | wc -c", wasm.display()))
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
