//! `cargo xtask dev`: the whole product on this machine: a private redis-server, a private PostgreSQL (the archive,
//! its data kept in `target/xtask-postgres` between runs) and two replicas sharing them.
//! `cargo xtask stack`: the same plus nginx in front, run from the very `deploy/nginx.conf` docker-compose uses —
//! the compose topology for machines without Docker.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::tools::{self, Need};

use crate::{build_frontend, exec, step};

/// Options of `cargo xtask dev`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Port of the first replica; the others take the next ports.
    #[arg(long, default_value_t = 3000)]
    base_port: u16,
    /// How many replicas to start (with Redis; without it, always one).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    replicas: u16,
    /// Skip the frontend build (use the dist/ already there).
    #[arg(long)]
    no_frontend: bool,
}

/// Options of `cargo xtask stack`.
#[derive(Debug, clap::Args)]
pub struct StackArgs {
    #[command(flatten)]
    dev: Args,
    /// Port nginx listens on (127.0.0.1).
    #[arg(long, default_value_t = 8000)]
    nginx_port: u16,
}

/// `cargo xtask stack`: Redis, the replicas and nginx with `deploy/nginx.conf`.
pub fn stack(root: &Path, args: &StackArgs) -> anyhow::Result<()> {
    run_with(root, &args.dev, Some(args.nginx_port))
}

/// The processes started, stopped together.
struct Fleet(Vec<(String, Child)>);

impl Fleet {
    fn stop(&mut self) {
        for (name, child) in &mut self.0 {
            // SIGTERM first: replicas send close frames to their clients before exiting. PostgreSQL's fast shutdown
            // is SIGINT (on SIGTERM it would wait for the replicas to hang up).
            let signal = if name == "postgres" { "-INT" } else { "-TERM" };
            let _ = Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(8);
        for (name, child) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(None) = child.try_wait() {
                println!("{name} did not stop in time; killing it");
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.0.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn wait_for_port(name: &str, port: u16, child: &mut Child) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            bail!("{name} exited during start ({status}); see its output above");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{name} did not start listening on port {port} within 30 s")
}

pub fn run(root: &Path, args: &Args) -> anyhow::Result<()> {
    run_with(root, args, None)
}

fn run_with(root: &Path, args: &Args, nginx_port: Option<u16>) -> anyhow::Result<()> {
    let tools = tools::ensure_all(root, Need::Run)?;
    if !args.no_frontend {
        build_frontend(&tools)?;
    }
    step("building the backend (cargo build -p backend)");
    exec(Command::new("cargo").args(["build", "--quiet", "-p", "backend", "--bin", "roomcast"]))?;
    let binary = root.join("target/debug/roomcast");

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;

    let mut fleet = Fleet(Vec::new());
    let redis_url = match &tools.redis_server() {
        Some(redis_server) => {
            let port = (6390..6490)
                .find(|&p| port_is_free(p))
                .context("no free port for redis-server in 6390-6489")?;
            let dir = root.join("target/xtask-redis");
            std::fs::create_dir_all(&dir)?;
            step(&format!("starting a private redis-server on port {port}"));
            let mut child = tools::redis_command(redis_server, port, &dir)
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start redis-server")?;
            wait_for_port("redis-server", port, &mut child)?;
            fleet.0.push(("redis-server".into(), child));
            Some(format!("redis://127.0.0.1:{port}"))
        }
        None => {
            println!(
                "warning: redis-server not found: apt-get install redis-server. \
                 Running ONE replica on the in-memory bus (no relay between replicas)."
            );
            None
        }
    };
    let database_url = match (&redis_url, localrun::postgres::bin_dir()) {
        (Some(_), Some(bin)) => {
            let port = (5440..5540)
                .find(|&p| port_is_free(p))
                .context("no free port for PostgreSQL in 5440-5539")?;
            let dir = root.join("target/xtask-postgres");
            if !dir.join("PG_VERSION").is_file() {
                step(
                    "making a private PostgreSQL cluster in target/xtask-postgres (kept between runs)",
                );
                localrun::postgres::create_cluster(&bin, &dir)
                    .context("cannot make the PostgreSQL cluster")?;
            }
            step(&format!("starting a private PostgreSQL on port {port}"));
            let mut child = localrun::postgres::postgres_command(&bin, &dir, port)
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start postgres")?;
            wait_for_port("postgres", port, &mut child)?;
            fleet.0.push(("postgres".into(), child));
            Some(localrun::postgres::url(port))
        }
        (Some(_), None) => {
            println!(
                "warning: PostgreSQL not found: apt-get install postgresql postgresql-contrib. \
                 History is kept in Redis only (the newest --history-limit per room)."
            );
            None
        }
        (None, _) => None,
    };
    let count = if redis_url.is_some() {
        args.replicas
    } else {
        1
    };
    let mut urls = Vec::new();
    for i in 0..count {
        let port = args.base_port + i;
        if !port_is_free(port) {
            bail!("port {port} is in use: stop whatever listens there, or pass --base-port");
        }
        let name = format!("replica {}", i + 1);
        step(&format!("starting {name} on port {port}"));
        let mut cmd = Command::new(&binary);
        cmd.args(["--port", &port.to_string(), "--static-dir"])
            .arg(root.join("dist"))
            // `trunk serve` on :8080 proxies /ws here; let its pages in.
            .args([
                "--allowed-origins",
                "http://127.0.0.1:8080,http://localhost:8080",
            ]);
        if let Some(url) = &redis_url {
            cmd.args(["--redis-url", url]);
        }
        if let Some(url) = &database_url {
            cmd.args(["--database-url", url]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        wait_for_port(&name, port, &mut child)?;
        fleet.0.push((name, child));
        urls.push(format!("http://127.0.0.1:{port}/r/general"));
    }
    if let Some(port) = nginx_port {
        if !port_is_free(port) {
            bail!("port {port} is in use: pass --nginx-port");
        }
        let replicas: Vec<u16> = (0..count).map(|i| args.base_port + i).collect();
        let dir = root.join("target/xtask-nginx");
        step(&format!(
            "starting nginx on port {port} with deploy/nginx.conf"
        ));
        let upstreams: Vec<std::net::SocketAddr> = replicas
            .iter()
            .map(|p| ([127, 0, 0, 1], *p).into())
            .collect();
        let listen = ([127, 0, 0, 1], port).into();
        let mut child =
            localrun::nginx::command(&root.join("deploy/nginx.conf"), &dir, listen, &upstreams)
                .context("prepare nginx's directory")?
                .spawn()
                .context("cannot start nginx: apt-get install nginx-light")?;
        wait_for_port("nginx", port, &mut child)?;
        fleet.0.push(("nginx".into(), child));
        println!();
        println!("Through nginx (round robin over every replica, no sticky sessions):");
        println!("  http://127.0.0.1:{port}/r/general");
    }
    println!();
    println!("Roomcast is running. Open each URL in its own tab and chat across replicas:");
    for (i, url) in urls.iter().enumerate() {
        println!("  replica {}: {url}", i + 1);
    }
    if let Some(url) = &redis_url {
        println!("  redis:     {url}   (redis-cli -u {url} MONITOR shows the relay)");
    }
    if let Some(url) = &database_url {
        println!("  archive:   {url}   (psql {url})");
    }
    println!("Press Ctrl-C to stop everything.");
    println!();

    loop {
        std::thread::sleep(Duration::from_millis(200));
        if stop.load(Ordering::SeqCst) {
            step("stopping");
            break;
        }
        if let Some((name, status)) = fleet
            .0
            .iter_mut()
            .find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (n.clone(), s)))
        {
            println!("{name} exited ({status}); stopping the rest");
            fleet.stop();
            bail!("{name} exited unexpectedly");
        }
    }
    fleet.stop();
    step("stopped");
    Ok(())
}
