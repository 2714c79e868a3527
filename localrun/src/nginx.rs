//! nginx run from the repository's own `deploy/nginx.conf` on this machine, in the foreground: the file copied byte
//! for byte into a scratch directory, next to the two files it includes, written here for fixed local replicas.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Prepares `dir` and returns the command that runs nginx with `conf` on `listen`, balancing over `upstreams`.
pub fn command(
    conf: &Path,
    dir: &Path,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
) -> std::io::Result<Command> {
    std::fs::create_dir_all(dir.join("logs"))?;
    std::fs::copy(conf, dir.join("nginx.conf"))?;
    std::fs::write(
        dir.join("roomcast-server.conf"),
        format!("listen {listen};\nset $roomcast roomcast_replicas;\n"),
    )?;
    let servers: String = upstreams
        .iter()
        .map(|a| format!("    server {a};\n"))
        .collect();
    std::fs::write(
        dir.join("roomcast-http.conf"),
        format!("upstream roomcast_replicas {{\n{servers}}}\n"),
    )?;
    let mut cmd = Command::new(binary());
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-g")
        .arg(format!(
            "daemon off; master_process off; pid {0}/nginx.pid; error_log {0}/logs/error.log warn;",
            dir.display()
        ));
    Ok(cmd)
}

/// The nginx binary: on `PATH`, else Debian's `/usr/sbin/nginx`.
pub fn binary() -> PathBuf {
    crate::find_program("nginx", &["/usr/sbin"]).unwrap_or_else(|| PathBuf::from("nginx"))
}
