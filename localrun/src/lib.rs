//! What `xtask`, the test kit and the benchmarks all need to run real servers on this machine, with nothing but std:
//! loopback ports that no two runs hand out at once, the `redis-server` command line, and nginx from the
//! repository's own `deploy/nginx.conf`.

pub mod nginx;
mod ports;
pub mod postgres;

use std::path::{Path, PathBuf};
use std::process::Command;

pub use ports::free_port;

/// The first file called `program` in a directory of `PATH`, then in `extra` directories (Debian keeps daemons in
/// `/usr/sbin`, which is not on every user's `PATH`).
pub fn find_program(program: &str, extra: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// The redis-server to run: `ROOMCAST_REDIS_SERVER`, else the first on `PATH`.
pub fn redis_server() -> Option<PathBuf> {
    std::env::var_os("ROOMCAST_REDIS_SERVER")
        .map(PathBuf::from)
        .or_else(|| find_program("redis-server", &["/usr/bin"]))
}

/// A private redis-server on loopback `port`, working in `dir` (never the caller's directory: a server loads any
/// `dump.rdb` it finds there), with `args` after the address. Never the default port 6379.
///
/// # Panics
/// If `port` is 6379: that Redis belongs to somebody else.
pub fn redis_command(redis_server: &Path, port: u16, dir: &Path, args: &[String]) -> Command {
    assert_ne!(port, 6379, "never the default Redis port");
    let mut cmd = Command::new(redis_server);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(args)
        .arg("--dir")
        .arg(dir)
        .args(["--protected-mode", "yes"]);
    cmd
}

/// The flags of a Redis that keeps nothing on disk.
pub const REDIS_NO_PERSISTENCE: [&str; 4] = ["--save", "", "--appendonly", "no"];
