//! Project tasks, run as `cargo xtask <task>`: `dev` runs the product, `test` checks everything CI checks.

mod bench;
mod dev;
mod fuzz;
mod hog;
mod plot;
mod runner;
mod stack_test;
mod test;
mod tools;
mod web;

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
    /// `dev` plus nginx in front (deploy/nginx.conf, as in docker-compose): the compose topology without Docker.
    Stack(dev::StackArgs),
    /// Run docker-compose.yml for real under a private Docker engine and test chat, stop and kill through nginx.
    StackTest(stack_test::Args),
    /// Install what is missing, build the frontend, then fmt, clippy (native and wasm32) and every test; or, with
    /// `--stress N`, the integration tests N times under a CPU hog.
    Test(test::Args),
    /// Install the toolchain pieces and packages the project needs, and trunk and wasm-bindgen-cli for
    /// `trunk serve` (frontend work), and nothing else.
    Setup,
    /// Build the frontend into dist/ (release, with wasm-opt).
    Frontend,
    /// Coverage-guided fuzzing of the decoders of hostile input (cargo-fuzz, libFuzzer): each target of `fuzz/` for
    /// `--secs` seconds (default 60) from the corpus in the repository; installs cargo-fuzz if it is missing.
    Fuzz(fuzz::Args),
    /// Fan-out benchmark: Roomcast against socket.io, a FastAPI chat and the bare ceiling (results in target/bench/).
    Bench(bench::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match cli.task {
        Task::Dev(args) => dev::run(&root, &args),
        Task::Stack(args) => dev::stack(&root, &args),
        Task::StackTest(args) => {
            let tools = tools::ensure_all(&root, tools::Need::Everything)?;
            if !Path::new("dist/index.html").is_file() {
                build_frontend(&tools)?;
            }
            match stack_test::run(&root, &tools, &args)? {
                stack_test::Outcome::Ran { passed, failed } => {
                    println!("tests: {passed} passed, {failed} failed");
                    Ok(())
                }
                stack_test::Outcome::NoEngine(why) => {
                    bail!("dockerd cannot start here, so the stack test cannot run:\n{why}")
                }
            }
        }
        Task::Test(args) => test::run(&root, &args),
        Task::Fuzz(args) => fuzz::run(&root, &args),
        Task::Bench(args) => bench::run(&root, &args).map(drop),
        Task::Setup => tools::ensure_all(&root, tools::Need::TrunkServe).map(drop),
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

/// Builds the browser client into `dist/` (see `web.rs`).
pub fn build_frontend(tools: &tools::Tools) -> anyhow::Result<()> {
    web::build(tools, &workspace_root(), false).map(drop)
}
