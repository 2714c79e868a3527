//! `cargo xtask stack-test`: `docker-compose.yml` run for real under a private Docker engine, with no Docker Hub.
//!
//! Starts `dockerd` on its own socket and directories, makes the base images it needs from Debian's packages
//! (`debootstrap --variant=minbase bookworm`, imported once and cached in `target/stack-test/`; Redis and nginx
//! installed on it with `apt-get`), builds the Roomcast image from the `prebuilt` stage of the Dockerfile (the same
//! runtime stage a source build uses) with this build's `roomcast` and `dist/`, brings the stack up with
//! `docker-compose`, waits for nginx to answer `/readyz`, and runs `backend/tests/it/compose.rs` against it. The
//! stack and the engine are taken down afterwards, on failure too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::tools::Tools;
use crate::{exec, step};

/// The compose project the test brings up (so it never touches a user's own stack).
const PROJECT: &str = "roomcast-stacktest";
const BASE_IMAGE: &str = "roomcast-test/bookworm:base";
const REDIS_IMAGE: &str = "roomcast-test/redis:7";
const NGINX_IMAGE: &str = "roomcast-test/nginx:1.22";
const POSTGRES_IMAGE: &str = "roomcast-test/postgres:15";

/// The stand-in for the official `postgres` image: its entrypoint's contract as far as the compose file uses it
/// (`POSTGRES_USER`, `POSTGRES_PASSWORD` and `POSTGRES_DB` make the cluster on first start, in `PGDATA`; password logins
/// from the network; `pg_isready` on the PATH).
const POSTGRES_ENTRYPOINT: &str = r#"#!/bin/sh
set -e
BIN=$(ls -d /usr/lib/postgresql/*/bin | tail -1)
PGDATA=${PGDATA:-/var/lib/postgresql/data}
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  printf '%s' "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
  as_postgres "$BIN/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pw --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8
  rm /tmp/pw
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "CREATE DATABASE $POSTGRES_DB;" | as_postgres "$BIN/postgres" --single -D "$PGDATA" postgres > /dev/null
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$BIN/postgres" -D "$PGDATA" -c listen_addresses='*'
"#;
const ROOMCAST_IMAGE: &str = "roomcast:stack-test";
/// Stands in for Docker Hub's `rust:1.95-bookworm`: the base image plus this machine's Rust toolchain.
const RUST_IMAGE: &str = "roomcast-test/rust:bookworm-2";
const SOURCE_IMAGE: &str = "roomcast:from-source";

/// Options of `cargo xtask stack-test`.
#[derive(Debug, Default, clap::Args)]
pub struct Args {
    /// Build the Roomcast image from source the way `docker compose up --build` does (docker-compose build: the
    /// Dockerfile's Rust stages), on a Rust image made from this machine's toolchain; build it again after a code
    /// change and check that only our crates were rebuilt (tools and dependency layers reused); then run the same
    /// test against that image. The first build takes about half an hour on 2 cores.
    #[arg(long)]
    pub from_source: bool,
}

/// How the stack test ended.
pub enum Outcome {
    /// The test ran: tests passed and failed.
    Ran { passed: u64, failed: u64 },
    /// No Docker engine could be started here; why.
    NoEngine(String),
}

/// A private Docker engine, stopped (with the stack it runs) on drop.
pub struct Engine {
    daemon: Child,
    socket: String,
    exec_root: PathBuf,
    compose_up: bool,
    env: Vec<(String, String)>,
}

impl Engine {
    fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_HOST", &self.socket);
        cmd
    }

    fn compose(&self, root: &Path) -> Command {
        let mut cmd = Command::new("docker-compose");
        cmd.current_dir(root)
            .args(["-p", PROJECT, "-f", "docker-compose.yml"])
            .env("DOCKER_HOST", &self.socket)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn has_image(&self, tag: &str) -> bool {
        self.docker()
            .args(["image", "inspect", tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Engine {
    /// Takes the stack down, if it is up (`docker-compose down -v`).
    fn down(&mut self, root: &Path) {
        if self.compose_up {
            step("taking the stack down (docker-compose down -v)");
            let _ = self
                .compose(root)
                .args(["down", "-v", "--timeout", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.compose_up = false;
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.down(&std::env::current_dir().unwrap_or_default());
        let _ = Command::new("kill")
            .args(["-TERM", &self.daemon.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // dockerd may leave its network namespace mounted in its exec root.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.exec_root.join("netns/default"))
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.exec_root);
    }
}

/// Starts `dockerd` with its state in `state` (images stay cached there between runs).
fn start_engine(state: &Path) -> Result<Engine, String> {
    let data_root = state.join("data");
    std::fs::create_dir_all(&data_root).map_err(|e| e.to_string())?;
    // Unix socket paths are short-lived and short: keep them under /tmp.
    let exec_root = PathBuf::from(format!("/tmp/roomcast-dockerd-{}", std::process::id()));
    let socket_path = format!("/tmp/roomcast-dockerd-{}.sock", std::process::id());
    let log_path = state.join("dockerd.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let daemon = Command::new("dockerd")
        .arg("--data-root")
        .arg(&data_root)
        .arg("--exec-root")
        .arg(&exec_root)
        .arg("--pidfile")
        .arg(exec_root.with_extension("pid"))
        .arg("-H")
        .arg(format!("unix://{socket_path}"))
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run dockerd ({e}): apt-get install docker.io"))?;
    let mut engine = Engine {
        daemon,
        socket: format!("unix://{socket_path}"),
        exec_root,
        compose_up: false,
        env: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let up = engine
            .docker()
            .args(["version", "--format", "{{.Server.Version}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if up {
            return Ok(engine);
        }
        if let Ok(Some(status)) = engine.daemon.try_wait() {
            return Err(format!(
                "dockerd exited ({status}); the end of {}:\n{}",
                log_path.display(),
                tail(&log_path)
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "dockerd did not answer within 40 s; the end of {}:\n{}",
        log_path.display(),
        tail(&log_path)
    ))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

/// Makes the base images the compose file needs, from Debian's packages (once; they stay in the engine's cache).
fn base_images(engine: &Engine, state: &Path) -> anyhow::Result<()> {
    if !engine.has_image(BASE_IMAGE) {
        let rootfs = state.join("rootfs");
        if !rootfs.join("usr/bin/apt-get").is_file() {
            step(
                "making a Debian bookworm base image (debootstrap --variant=minbase, ~30 s, once)",
            );
            let _ = std::fs::remove_dir_all(&rootfs);
            exec(
                Command::new("debootstrap")
                    .args(["--variant=minbase", "bookworm"])
                    .arg(&rootfs)
                    .stdout(Stdio::null()),
            )
            .context("debootstrap failed: apt-get install debootstrap")?;
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .context("tar the base image")?;
        let imported = engine
            .docker()
            .args(["import", "-", BASE_IMAGE])
            .stdin(tar.stdout.take().context("tar's output")?)
            .stdout(Stdio::null())
            .status()?;
        tar.wait()?;
        if !imported.success() {
            bail!("docker import of the base image failed");
        }
    }
    for (tag, package, cmd) in [
        (REDIS_IMAGE, "redis-server", r#"["redis-server"]"#),
        (
            NGINX_IMAGE,
            "nginx-light",
            r#"["nginx", "-g", "daemon off;"]"#,
        ),
    ] {
        if engine.has_image(tag) {
            continue;
        }
        step(&format!(
            "building {tag} from {BASE_IMAGE} (apt-get install {package})"
        ));
        let dir = state.join(format!("image-{package}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("Dockerfile"),
            format!(
                "FROM {BASE_IMAGE}\n\
                 RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                 --no-install-recommends {package} && rm -rf /var/lib/apt/lists/*\n\
                 WORKDIR /data\n\
                 CMD {cmd}\n"
            ),
        )?;
        exec(
            engine
                .docker()
                .args(["build", "-q", "--network", "host", "-t", tag])
                .arg(&dir)
                .stdout(Stdio::null()),
        )?;
    }
    if !engine.has_image(POSTGRES_IMAGE) {
        step(&format!(
            "building {POSTGRES_IMAGE} from {BASE_IMAGE} (apt-get install postgresql)"
        ));
        let dir = state.join("image-postgresql");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("entrypoint.sh"), POSTGRES_ENTRYPOINT)?;
        std::fs::write(
            dir.join("Dockerfile"),
            format!(
                "FROM {BASE_IMAGE}\n\
                 RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
                 --no-install-recommends postgresql && rm -rf /var/lib/apt/lists/* \
                 && ln -s /usr/lib/postgresql/*/bin/pg_isready /usr/lib/postgresql/*/bin/psql /usr/local/bin/\n\
                 COPY entrypoint.sh /usr/local/bin/entrypoint.sh\n\
                 RUN chmod +x /usr/local/bin/entrypoint.sh\n\
                 ENTRYPOINT [\"/usr/local/bin/entrypoint.sh\"]\n"
            ),
        )?;
        exec(
            engine
                .docker()
                .args(["build", "-q", "--network", "host", "-t", POSTGRES_IMAGE])
                .arg(&dir)
                .stdout(Stdio::null()),
        )?;
    }
    Ok(())
}

/// Builds the Roomcast image from the Dockerfile's `prebuilt` stage with this build's binary and `dist/`.
fn roomcast_image(engine: &Engine, root: &Path, state: &Path) -> anyhow::Result<()> {
    step(
        "building the roomcast image (Dockerfile, --target prebuilt: this build's binary and dist/)",
    );
    // The binary of the one debug build everything shares (a no-op when `cargo xtask test` built it already).
    crate::runner::build_all()?;
    let context = state.join("context");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(context.join("dist"))?;
    std::fs::copy(root.join("Dockerfile"), context.join("Dockerfile"))?;
    std::fs::copy(root.join("target/debug/roomcast"), context.join("roomcast"))?;
    for entry in
        std::fs::read_dir(root.join("dist")).context("dist/ is missing: cargo xtask frontend")?
    {
        let entry = entry?;
        std::fs::copy(entry.path(), context.join("dist").join(entry.file_name()))?;
    }
    exec(
        engine
            .docker()
            .args(["build", "-q", "--target", "prebuilt"])
            .args(["--build-arg", &format!("RUNTIME_IMAGE={BASE_IMAGE}")])
            .args(["-t", ROOMCAST_IMAGE])
            .arg(&context)
            .stdout(Stdio::null()),
    )
}

/// Makes the stand-in for Docker Hub's Rust image: the base image, a C toolchain, and this machine's Rust toolchain
/// where the official image keeps it (`/usr/local/rustup`, `/usr/local/cargo`).
fn rust_image(engine: &Engine, state: &Path) -> anyhow::Result<()> {
    if engine.has_image(RUST_IMAGE) {
        return Ok(());
    }
    step(&format!(
        "making {RUST_IMAGE} from {BASE_IMAGE} and this machine's Rust toolchain (once)"
    ));
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("rustc --print sysroot")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let toolchain = sysroot
        .file_name()
        .context("the sysroot has a toolchain name")?
        .to_string_lossy()
        .into_owned();
    let rustup = Command::new("rustup")
        .args(["which", "rustup"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .or_else(|| std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin/rustup")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo/bin/rustup")
        });
    let dir = state.join("image-rust");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(&rustup, dir.join("rustup"))
        .with_context(|| format!("copy {}", rustup.display()))?;
    exec(
        Command::new("cp")
            .arg("-a")
            .arg(&sysroot)
            .arg(dir.join("toolchain")),
    )?;
    // This machine's extra certificate authorities (an egress proxy's, say), so cargo and npm inside trust what
    // they trust here.
    std::fs::create_dir_all(dir.join("ca"))?;
    if let Ok(entries) = std::fs::read_dir("/usr/local/share/ca-certificates") {
        for entry in entries.flatten() {
            std::fs::copy(entry.path(), dir.join("ca").join(entry.file_name()))?;
        }
    }
    let _ = std::fs::remove_dir_all(dir.join("toolchain/share/doc"));
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {BASE_IMAGE}\n\
             RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
             --no-install-recommends ca-certificates curl gcc libc6-dev pkg-config git \
             && rm -rf /var/lib/apt/lists/*\n\
             COPY ca/ /usr/local/share/ca-certificates/\n\
             RUN update-ca-certificates\n\
             ENV NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
             PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n\
             COPY rustup /usr/local/cargo/bin/rustup\n\
             COPY toolchain /usr/local/rustup/toolchains/{toolchain}\n\
             RUN printf 'version = \"12\"\\ndefault_toolchain = \"{toolchain}\"\\nprofile = \"minimal\"\\n' \
             > /usr/local/rustup/settings.toml \
             && for p in cargo rustc rustdoc rustfmt cargo-clippy clippy-driver; do \
             ln -s rustup /usr/local/cargo/bin/$p; done && cargo --version\n"
        ),
    )?;
    exec(
        engine
            .docker()
            .args(["build", "-q", "--network", "host", "-t", RUST_IMAGE])
            .arg(&dir)
            .stdout(Stdio::null()),
    )?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// One `docker-compose build` of the replica service from `context`'s Dockerfile; returns the builder's output
/// (also kept next to `context`, in `<context>.build.log`) and how long it took.
fn compose_build(engine: &Engine, context: &Path) -> anyhow::Result<(String, Duration)> {
    let started = Instant::now();
    let out = Command::new("docker-compose")
        .current_dir(context)
        .args([
            "-p",
            PROJECT,
            "-f",
            "docker-compose.yml",
            "build",
            "replica",
        ])
        .env("DOCKER_HOST", &engine.socket)
        .env("RUST_IMAGE", RUST_IMAGE)
        .env("RUNTIME_IMAGE", BASE_IMAGE)
        .env("ROOMCAST_IMAGE", SOURCE_IMAGE)
        .env("ROOMCAST_BUILD_NETWORK", "host")
        .stderr(Stdio::inherit())
        .output()
        .context("docker-compose build")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The builder's whole output, for when a step is slower or less cached than expected.
    let log = context.with_extension("build.log");
    std::fs::write(&log, &text).with_context(|| format!("write {}", log.display()))?;
    if !out.status.success() {
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "docker-compose build failed:\n{}",
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
    Ok((text, started.elapsed()))
}

/// The classic builder's steps (`Step 7/25 : RUN …`) and whether each came from the cache.
fn build_steps(output: &str) -> Vec<(String, bool)> {
    let mut steps: Vec<(String, bool)> = Vec::new();
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("Step ") {
            let instruction = rest.split_once(" : ").map_or(rest, |(_, i)| i);
            steps.push((instruction.to_owned(), false));
        } else if line.contains("Using cache")
            && let Some(last) = steps.last_mut()
        {
            last.1 = true;
        }
    }
    steps
}

/// Builds the image from source as `docker compose up --build` does, twice: once as it is, once after a change to
/// the replica's code. The second build must take the tools and the dependencies from the cache and rebuild our
/// own code.
fn source_image(engine: &Engine, root: &Path, state: &Path) -> anyhow::Result<()> {
    let context = state.join("source");
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context)?;
    let files = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("git ls-files")?;
    for file in files.stdout.split(|b| *b == 0).filter(|f| !f.is_empty()) {
        let file = Path::new(std::str::from_utf8(file)?);
        if !root.join(file).is_file() {
            continue;
        }
        let to = context.join(file);
        std::fs::create_dir_all(to.parent().context("a file has a parent")?)?;
        std::fs::copy(root.join(file), &to)?;
    }
    step("docker-compose build replica: the image from source (Rust stages of the Dockerfile)");
    let (_, first) = compose_build(engine, &context)?;
    step(&format!(
        "built from source in {:.0} s; now a code change (backend/src/lib.rs) and the same build again",
        first.as_secs_f64()
    ));
    // A change the binary must show (a comment alone may compile to the very same bytes).
    let lib = context.join("backend/src/lib.rs");
    let code = std::fs::read_to_string(&lib)?;
    let changed = code.replacen("\"listening\"", "\"listening (layer-cache check)\"", 1);
    if changed == code {
        bail!(
            "backend/src/lib.rs no longer logs \"listening\": update the code change of this check"
        );
    }
    std::fs::write(&lib, changed)?;
    let (output, second) = compose_build(engine, &context)?;
    let steps = build_steps(&output);
    let ran: Vec<&str> = steps
        .iter()
        .filter(|(_, cached)| !cached)
        .map(|(i, _)| i.as_str())
        .collect();
    println!(
        "rebuilt after a code change in {:.0} s (first build {:.0} s); steps not from the cache:",
        second.as_secs_f64(),
        first.as_secs_f64()
    );
    for instruction in ran
        .iter()
        .filter(|i| !i.starts_with("ARG ") && !i.starts_with("FROM "))
    {
        println!("    {instruction}");
    }
    for (what, marker) in [
        ("the tools", "cargo install"),
        ("the dependencies", "cargo chef cook"),
    ] {
        if ran.iter().any(|i| i.contains(marker)) {
            bail!(
                "a code change rebuilt {what} ({marker}): the Dockerfile's layer caching is broken"
            );
        }
        if !steps.iter().any(|(i, _)| i.contains(marker)) {
            bail!("no step of the build runs {marker}: the Dockerfile changed; update this check");
        }
    }
    if !ran.iter().any(|i| i.contains("cargo build"))
        || !ran
            .iter()
            .any(|i| i.starts_with("COPY --from=build /src/target/release/roomcast"))
    {
        bail!("the code change did not rebuild the replica: the image would be stale");
    }
    Ok(())
}

/// Whether `GET /readyz` through nginx answers 200.
fn ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Starts the private engine and makes the base images (Debian's packages: network-bound, so `cargo xtask test`
/// does this while it compiles). `Err` with the reason when dockerd cannot start on this machine.
pub fn prepare(root: &Path) -> anyhow::Result<Result<Engine, String>> {
    let state = root.join("target/stack-test");
    std::fs::create_dir_all(&state)?;
    step("starting a private Docker engine (dockerd on its own socket)");
    let engine = match start_engine(&state) {
        Ok(engine) => engine,
        Err(why) => return Ok(Err(why)),
    };
    base_images(&engine, &state)?;
    Ok(Ok(engine))
}

/// Builds the Roomcast image (from this build's binary and `dist/`, or from source), brings the stack up, runs
/// `compose.rs` against it and takes the stack down again (on failure too): tests passed and failed. May run again
/// on the same engine.
pub fn run_on(engine: &mut Engine, root: &Path, args: &Args) -> anyhow::Result<(u64, u64)> {
    let state = root.join("target/stack-test");
    let image = if args.from_source {
        rust_image(engine, &state)?;
        source_image(engine, root, &state)?;
        SOURCE_IMAGE
    } else {
        roomcast_image(engine, root, &state)?;
        ROOMCAST_IMAGE
    };
    let port = localrun::free_port();
    engine.env = vec![
        ("ROOMCAST_IMAGE".into(), image.into()),
        ("REDIS_IMAGE".into(), REDIS_IMAGE.into()),
        ("NGINX_IMAGE".into(), NGINX_IMAGE.into()),
        ("POSTGRES_IMAGE".into(), POSTGRES_IMAGE.into()),
        ("ROOMCAST_HTTP_PORT".into(), port.to_string()),
        // The test's sender is a program, not a person: lift the per-connection send limit.
        ("ROOMCAST_SENDS_PER_SEC".into(), "10000".into()),
        ("ROOMCAST_SEND_BURST".into(), "10000".into()),
    ];
    step(&format!(
        "docker-compose up -d --scale replica=3 (project {PROJECT}, nginx on 127.0.0.1:{port})"
    ));
    engine.compose_up = true;
    let result = stack_up_and_test(engine, root, port);
    if result.is_err() {
        let _ = engine.compose(root).args(["logs", "--tail", "30"]).status();
    }
    engine.down(root);
    result
}

fn stack_up_and_test(engine: &Engine, root: &Path, port: u16) -> anyhow::Result<(u64, u64)> {
    exec(
        engine
            .compose(root)
            .args(["up", "-d", "--no-build", "--scale", "replica=3"]),
    )
    .context("docker-compose up failed")?;
    // Generous: on a busy machine three containers, Redis and nginx take a while to start and pass their checks.
    let deadline = Instant::now() + Duration::from_secs(300);
    while !ready(port) {
        if Instant::now() > deadline {
            let _ = engine.compose(root).args(["ps"]).status();
            bail!(
                "the stack did not become ready through nginx within 300 s (status and logs below)"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    step("the stack is up: running backend/tests/it/compose.rs against it");
    let binaries = crate::runner::build_all()?;
    let binary = binaries
        .iter()
        .find(|t| {
            t.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("it-"))
        })
        .context("cargo built no integration test binary")?;
    let envs = [
        (
            "ROOMCAST_STACK_ADDR".to_owned(),
            format!("127.0.0.1:{port}"),
        ),
        (
            "ROOMCAST_STACK_DOCKER_HOST".to_owned(),
            engine.socket.clone(),
        ),
        ("ROOMCAST_STACK_PROJECT".to_owned(), PROJECT.to_owned()),
    ];
    let run = crate::runner::run_ignored(binary, COMPOSE_TEST, &envs);
    println!("{}", run.output);
    if !run.passed {
        bail!("the compose stack test failed (its output above)");
    }
    Ok((1, 0))
}

/// The test `run_on` runs against the stack.
pub const COMPOSE_TEST: &str =
    "compose::compose_stack_chats_through_nginx_and_survives_stop_and_kill";

/// Runs the whole stack test. `Outcome::NoEngine` when dockerd cannot start on this machine.
pub fn run(root: &Path, _tools: &Tools, args: &Args) -> anyhow::Result<Outcome> {
    let mut engine = match prepare(root)? {
        Ok(engine) => engine,
        Err(why) => return Ok(Outcome::NoEngine(why)),
    };
    let (passed, failed) = run_on(&mut engine, root, args)?;
    drop(engine);
    Ok(Outcome::Ran { passed, failed })
}
