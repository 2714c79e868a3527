//! `cargo xtask fuzz [--secs N]`: the coverage-guided fuzz targets of `fuzz/` (cargo-fuzz, libFuzzer), each for a
//! bounded time, from the corpus kept in the repository. `cargo xtask test` runs the same for a few seconds a target.
//!
//! cargo-fuzz needs nightly compiler flags; `RUSTC_BOOTSTRAP=1` lets the stable toolchain take them. The targets are
//! built without a sanitizer (the code under test forbids `unsafe`, so AddressSanitizer would find nothing and halve
//! the executions) and with debug assertions, so an arithmetic overflow is a crash too; optimised for `cargo xtask
//! fuzz`, unoptimised (three times quicker to build) for `cargo xtask test`'s short run. New inputs the fuzzer
//! finds go to `fuzz/target/corpus/` (not the repository); a crash is written to `fuzz/artifacts/<target>/` and fails
//! the run, and belongs in `fuzz/regressions/<target>/`, which the backend's unit tests replay.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::{exec, step, tools};

/// The targets, as `fuzz/Cargo.toml` names them (a unit test checks they agree).
pub const TARGETS: [&str; 4] = ["client_frame", "bus_payload", "jwt", "api_body"];

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds each target runs.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub secs: u64,
    /// Build unoptimised, as `cargo xtask test` does: quicker to build, slower to run
    /// (`cargo xtask fuzz --dev --secs 10` is its stage).
    #[arg(long)]
    pub dev: bool,
    /// Only these targets (default: all).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

/// What one target's run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub target: String,
    /// Inputs executed, and in how many seconds (libFuzzer's `Done N runs in S second(s)`).
    pub runs: u64,
    pub secs: u64,
}

impl Outcome {
    /// Executions per second.
    pub fn rate(&self) -> u64 {
        self.runs / self.secs.max(1)
    }
}

/// `cargo xtask fuzz`: installs cargo-fuzz if it is missing, then runs the targets.
pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    tools::ensure_cargo_fuzz(root)?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        args.targets.iter().map(String::as_str).collect()
    };
    let build = if args.dev { Build::Dev } else { Build::Release };
    let outcomes = run_targets(root, &targets, args.secs, build)?;
    report(&outcomes);
    Ok(())
}

/// `cargo xtask test`'s stage: every target for `secs` seconds. When cargo-fuzz cannot be installed, it says so and
/// how to install it, and passes: the corpus and the crashes found before still run in the backend's unit tests.
pub fn short_run(root: &Path, secs: u64) -> anyhow::Result<()> {
    if let Err(e) = tools::ensure_cargo_fuzz(root) {
        println!(
            "NOT RUN: the fuzz targets need cargo-fuzz ({e:#}); install with: {}",
            tools::CARGO_FUZZ_INSTALL
        );
        return Ok(());
    }
    let outcomes = run_targets(root, &TARGETS, secs, Build::Dev)?;
    report(&outcomes);
    Ok(())
}

/// How the targets are compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    /// Optimised: about 15 times the executions a second of `Dev`, for long runs.
    Release,
    /// Unoptimised: builds in about a third of the time, for `cargo xtask test`'s few seconds a target.
    Dev,
}

fn report(outcomes: &[Outcome]) {
    for o in outcomes {
        println!(
            "fuzz {}: {} runs in {} s, {} execs/s, no crash",
            o.target,
            o.runs,
            o.secs,
            o.rate()
        );
    }
}

/// `cargo fuzz` with the flags every call needs.
fn cargo_fuzz(root: &Path, verb: &str, build: Build) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).env("RUSTC_BOOTSTRAP", "1").args([
        "fuzz",
        verb,
        "--sanitizer",
        "none",
        "--debug-assertions",
    ]);
    if build == Build::Dev {
        cmd.arg("--dev");
    }
    cmd
}

/// Builds the targets once, then runs each for `secs` seconds from its corpus.
fn run_targets(
    root: &Path,
    targets: &[&str],
    secs: u64,
    build: Build,
) -> anyhow::Result<Vec<Outcome>> {
    step(&format!(
        "building the fuzz targets (cargo fuzz build, instrumented, {build:?}, in fuzz/target)"
    ));
    exec(&mut cargo_fuzz(root, "build", build)).context(
        "the fuzz targets do not build (libfuzzer-sys compiles libFuzzer: it needs a C++ compiler, apt-get install g++)",
    )?;
    let mut outcomes = Vec::new();
    for target in targets {
        step(&format!("fuzzing {target} for {secs} s"));
        let scratch = root.join("fuzz/target/corpus").join(target);
        let artifacts = root.join("fuzz/artifacts").join(target);
        std::fs::create_dir_all(&scratch)?;
        std::fs::create_dir_all(&artifacts)?;
        let out = cargo_fuzz(root, "run", build)
            .arg(target)
            .arg(&scratch)
            .arg(root.join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={secs}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .output()
            .with_context(|| format!("cannot run cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            println!("{log}");
            bail!(
                "fuzz target {target} found a crash ({}): the input is in {}; copy it into fuzz/regressions/{target}/ \
                 (the backend's unit tests replay it), fix the code, and run again",
                out.status,
                artifacts.display()
            );
        }
        let (runs, took) = done_line(&log).with_context(|| {
            format!("cargo fuzz run {target} printed no `Done N runs in S second(s)`:\n{log}")
        })?;
        outcomes.push(Outcome {
            target: (*target).to_owned(),
            runs,
            secs: took,
        });
    }
    Ok(outcomes)
}

/// libFuzzer's closing `Done 1234 runs in 10 second(s)`: the runs and the seconds.
fn done_line(log: &str) -> Option<(u64, u64)> {
    let line = log.lines().rev().find(|l| l.starts_with("Done "))?;
    let mut words = line.split_whitespace();
    let runs = words.nth(1)?.parse().ok()?;
    let secs = words.nth(2)?.parse().ok()?;
    Some((runs, secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_closing_line() {
        let log = "#2097152\tpulse  cov: 10\nDone 2310451 runs in 11 second(s)\nstat::number_of_executed_units: 2310451\n";
        assert_eq!(done_line(log), Some((2_310_451, 11)));
        assert_eq!(done_line("INFO: nothing"), None);
    }

    #[test]
    fn the_targets_are_fuzz_cargo_tomls() {
        let manifest =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/Cargo.toml"))
                .unwrap();
        let declared: Vec<&str> = manifest
            .lines()
            .filter_map(|l| l.strip_prefix("name = \""))
            .filter_map(|l| l.strip_suffix('"'))
            .filter(|name| *name != "roomcast-fuzz")
            .collect();
        assert_eq!(declared, TARGETS);
    }
}
