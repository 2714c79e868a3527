//! Finds, and where possible installs, what the project needs: the wasm32 target, binaryen's wasm-opt, esbuild,
//! redis-server, nginx, Chromium, Docker and cargo-fuzz; and, for `trunk serve` only (`cargo xtask setup`), trunk and
//! wasm-bindgen-cli.
//! Anything it cannot install, it names with the exact command.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::{exec, step};

pub const TRUNK_VERSION: &str = "0.21.14";
/// Must equal the `wasm-bindgen` crate version pinned in Cargo.toml.
pub const WASM_BINDGEN_VERSION: &str = "0.2.130";
/// Debian's binaryen (108) miscompiles Rust 1.95 wasm; npm's 132 works.
pub const BINARYEN_VERSION: &str = "132";
/// Minifies the JS glue and the CSS of the release build; from npm (the package ships the binary), like binaryen.
/// The Dockerfile's `ARG ESBUILD_VERSION` names the same version (a unit test below checks it).
pub const ESBUILD_VERSION: &str = "0.28.2";

/// What a task needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Only the frontend toolchain.
    Frontend,
    /// The frontend toolchain plus Redis (to run the product).
    Run,
    /// Everything the tests need, including the browser for UI tests and Docker for the compose stack.
    Everything,
    /// Everything, plus trunk and wasm-bindgen-cli for `trunk serve` (frontend work). Compiled from source: no
    /// registry this project reaches has them prebuilt.
    TrunkServe,
}

/// Where the tools are: a PATH with the project's own tool dirs first.
#[derive(Debug, Clone)]
pub struct Tools {
    path: OsString,
}

impl Tools {
    /// redis-server, if it is installed.
    pub fn redis_server(&self) -> Option<PathBuf> {
        find(&self.path, "redis-server")
    }

    /// The PATH with the project's tool dirs first.
    pub fn path(&self) -> OsString {
        self.path.clone()
    }

    /// A command that finds the project's tools first.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PATH", &self.path);
        cmd
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn output_of(path: &OsString, program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program)
        .args(args)
        .env("PATH", path)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn find(path: &OsString, program: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The PATH with the project's own tool directories (npm's `.tools/`, `$CARGO_HOME/bin`) first.
fn tool_path(root: &Path) -> anyhow::Result<OsString> {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    // Where `cargo install` puts binaries: $CARGO_HOME/bin, by default ~/.cargo/bin.
    let cargo_home =
        std::env::var_os("CARGO_HOME").map_or_else(|| home.join(".cargo"), PathBuf::from);
    let mut dirs = vec![
        root.join(".tools/node_modules/.bin"),
        cargo_home.join("bin"),
    ];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    Ok(std::env::join_paths(dirs)?)
}

/// Makes sure the tools for `need` are present, installing what it can.
pub fn ensure_all(root: &Path, need: Need) -> anyhow::Result<Tools> {
    ensure_packages(root, need)?;
    let tools = ensure_toolchain(root, need)?;
    check_packages(&tools, need)?;
    Ok(tools)
}

/// Installs the Debian packages `need` calls for that are missing (as root; otherwise prints the command). Slow on a
/// fresh machine (downloads) but needed only to run things, not to build them: `cargo xtask test` runs it while it
/// compiles.
pub fn ensure_packages(root: &Path, need: Need) -> anyhow::Result<()> {
    let path = tool_path(root)?;
    let everything = matches!(need, Need::Everything | Need::TrunkServe);
    let mut apt = Vec::new();
    if need != Need::Frontend && find(&path, "redis-server").is_none() {
        apt.extend(["redis-server", "redis-tools"]);
    }
    if everything && (find(&path, "chromium").is_none() || find(&path, "chromedriver").is_none()) {
        apt.extend(["chromium", "chromium-driver"]);
    }
    if everything && find(&path, "docker-compose").is_none() {
        apt.push("docker-compose");
    }
    if everything && find(&path, "dockerd").is_none() && !Path::new("/usr/sbin/dockerd").is_file() {
        apt.push("docker.io");
    }
    if everything
        && find(&path, "debootstrap").is_none()
        && !Path::new("/usr/sbin/debootstrap").is_file()
    {
        apt.push("debootstrap");
    }
    if need != Need::Frontend && localrun::postgres::bin_dir().is_none() {
        // The archive's tests and `cargo xtask dev` run their own clusters; the package's own stays stopped.
        apt.extend(["postgresql", "postgresql-contrib"]);
    }
    if need != Need::Frontend
        && find(&path, "nft").is_none()
        && !Path::new("/usr/sbin/nft").is_file()
    {
        // The slow, lossy link's fault test drops packets with an nft rule; partitions cut links with them.
        apt.push("nftables");
    }
    if need != Need::Frontend
        && find(&path, "ip").is_none()
        && !Path::new("/usr/sbin/ip").is_file()
        && !Path::new("/usr/bin/ip").is_file()
    {
        // The partition tests put every server in a network namespace of its own (`ip netns`, veth, a bridge).
        apt.push("iproute2");
    }
    if need != Need::Frontend
        && find(&path, "nginx").is_none()
        && !Path::new("/usr/sbin/nginx").is_file()
    {
        apt.push("nginx-light");
    }
    if apt.is_empty() {
        return Ok(());
    }
    install_debian(&apt)
}

/// Fails with the install command when a package the tests cannot do without is still missing.
pub fn check_packages(tools: &Tools, need: Need) -> anyhow::Result<()> {
    let everything = matches!(need, Need::Everything | Need::TrunkServe);
    if everything && tools.redis_server().is_none() {
        bail!(
            "redis-server not found: apt-get install redis-server (the tests start their own on a private port)"
        );
    }
    if everything && localrun::postgres::bin_dir().is_none() {
        bail!(
            "PostgreSQL not found: apt-get install postgresql postgresql-contrib (the tests start their own on a private port)"
        );
    }
    if everything && find(&tools.path, "chromedriver").is_none() {
        bail!(
            "chromium not found: apt-get install chromium chromium-driver (the UI tests drive it headless)"
        );
    }
    Ok(())
}

/// The Rust target, binaryen's `wasm-opt` and esbuild (npm) and, for `trunk serve`, trunk and wasm-bindgen-cli: what
/// building needs.
pub fn ensure_toolchain(root: &Path, need: Need) -> anyhow::Result<Tools> {
    let path = tool_path(root)?;
    let node_bin = root.join(".tools/node_modules/.bin");
    if find(&path, "npm").is_none() {
        install_debian(&["npm"])?;
    }

    let targets =
        output_of(&path, "rustup", &["target", "list", "--installed"]).unwrap_or_default();
    if !targets
        .lines()
        .any(|t| t.trim() == "wasm32-unknown-unknown")
    {
        step("installing the wasm32-unknown-unknown Rust target");
        exec(
            Command::new("rustup")
                .args(["target", "add", "wasm32-unknown-unknown"])
                .env("PATH", &path),
        )
        .context("cannot add the wasm32 target; run: rustup target add wasm32-unknown-unknown")?;
    }

    let trunk = output_of(&path, "trunk", &["--version"]).unwrap_or_default();
    if need == Need::TrunkServe && !trunk.contains(TRUNK_VERSION) {
        step(&format!(
            "installing trunk {TRUNK_VERSION} (takes about 6 minutes, once)"
        ));
        exec(
            Command::new("cargo")
                .args(["install", "trunk", "--version", TRUNK_VERSION, "--locked"])
                .env("PATH", &path),
        )
        .with_context(|| {
            format!(
                "cannot install trunk; run: cargo install trunk --version {TRUNK_VERSION} --locked"
            )
        })?;
    }

    let bindgen = output_of(&path, "wasm-bindgen", &["--version"]).unwrap_or_default();
    if need == Need::TrunkServe && !bindgen.contains(WASM_BINDGEN_VERSION) {
        step(&format!(
            "installing wasm-bindgen-cli {WASM_BINDGEN_VERSION} (takes about 3 minutes, once)"
        ));
        // Not --locked: its lockfile names a crate version the registry no longer has.
        exec(Command::new("cargo")
            .args(["install", "wasm-bindgen-cli", "--version", WASM_BINDGEN_VERSION])
            .env("PATH", &path))
        .with_context(|| {
            format!("cannot install wasm-bindgen-cli; run: cargo install wasm-bindgen-cli --version {WASM_BINDGEN_VERSION}")
        })?;
    }

    let version = |tool: &str| {
        output_of(
            &path,
            &node_bin.join(tool).to_string_lossy(),
            &["--version"],
        )
        .unwrap_or_default()
    };
    let wasm_opt = version("wasm-opt");
    let esbuild = version("esbuild");
    if !wasm_opt.contains(&format!("version {BINARYEN_VERSION}"))
        || esbuild.trim() != ESBUILD_VERSION
    {
        // Both at once, at their exact versions, so neither install moves the other.
        let packages = [
            format!("binaryen@{BINARYEN_VERSION}"),
            format!("esbuild@{ESBUILD_VERSION}"),
        ];
        step(&format!(
            "installing {} (wasm-opt, esbuild) from npm into .tools/",
            packages.join(" ")
        ));
        std::fs::create_dir_all(root.join(".tools"))?;
        exec(
            Command::new("npm")
                .args([
                    "install",
                    "--silent",
                    "--no-audit",
                    "--no-fund",
                    "--save-exact",
                    "--prefix",
                ])
                .arg(root.join(".tools"))
                .args(&packages)
                .env("PATH", &path),
        )
        .with_context(|| {
            format!(
                "cannot install wasm-opt and esbuild; run: npm install --prefix .tools {}",
                packages.join(" ")
            )
        })?;
    }

    Ok(Tools { path })
}

/// How to install cargo-fuzz by hand.
pub const CARGO_FUZZ_INSTALL: &str = "cargo install cargo-fuzz --locked";

/// cargo-fuzz, which builds and runs the fuzz targets (`fuzz/`): from crates.io, compiled once (about a minute on 2
/// cores). It needs nightly compiler flags, which `RUSTC_BOOTSTRAP=1` unlocks on the stable toolchain.
pub fn ensure_cargo_fuzz(root: &Path) -> anyhow::Result<()> {
    let path = tool_path(root)?;
    if output_of(&path, "cargo", &["fuzz", "--version"]).is_some() {
        return Ok(());
    }
    step(&format!(
        "installing cargo-fuzz ({CARGO_FUZZ_INSTALL}; about a minute, once)"
    ));
    exec(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env("PATH", &path),
    )
    .with_context(|| format!("cannot install cargo-fuzz; run: {CARGO_FUZZ_INSTALL}"))
}

fn install_debian(packages: &[&str]) -> anyhow::Result<()> {
    let line = format!("apt-get install -y {}", packages.join(" "));
    if !is_root()
        || Command::new("apt-get")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
    {
        println!("warning: missing Debian packages; install them with: sudo {line}");
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        packages.join(" ")
    ));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            // Install, do not start: the tests and `cargo xtask stack` run their own nginx on private ports.
            .env("RUNLEVEL", "1"),
    )
    .with_context(|| format!("cannot install Debian packages; run: {line}"))
}

/// A private, non-persistent redis-server on loopback `port`, working in `dir`.
pub fn redis_command(redis_server: &Path, port: u16, dir: &Path) -> Command {
    localrun::redis_command(
        redis_server,
        port,
        dir,
        &localrun::REDIS_NO_PERSISTENCE.map(String::from),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Dockerfile installs esbuild in its tool layer, before any of our files are copied, so it names the
    /// version itself: the same as xtask's, or the image's `dist/` would not be the one the tests check.
    #[test]
    fn the_dockerfile_installs_the_esbuild_xtask_uses() {
        let dockerfile =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile")).unwrap();
        let found = dockerfile
            .lines()
            .find_map(|l| l.trim().strip_prefix("ARG ESBUILD_VERSION="))
            .map(str::trim);
        assert_eq!(
            found,
            Some(ESBUILD_VERSION),
            "Dockerfile's ARG ESBUILD_VERSION"
        );
    }
}
