//! A private PostgreSQL on this machine: Debian's server binaries, a data directory and a loopback port of our own,
//! never the system cluster nor port 5432. `initdb` and `postgres` refuse to run as root, so when we are root they
//! run as the `postgres` user (the data directory is handed to it first).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The superuser every private cluster is made with, and the database the replicas use.
pub const USER: &str = "roomcast";
/// Its password (the clusters accept password logins only, on loopback).
pub const PASSWORD: &str = "roomcast-local";
/// The database the replicas use.
pub const DATABASE: &str = "roomcast";

/// The directory of PostgreSQL's server binaries: `ROOMCAST_PG_BIN`, else the newest `/usr/lib/postgresql/<v>/bin`
/// that has `postgres` in it.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ROOMCAST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// The user the server runs as when we are root: `postgres`'s uid and gid from `/etc/passwd`. `None` when we are
/// not root (the server runs as us).
pub fn service_user() -> Option<(u32, u32)> {
    if !is_root() {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != "postgres" {
            return None;
        }
        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

/// Makes `path` (a directory) the server user's, and only its (PostgreSQL refuses a data directory others can read).
///
/// # Errors
/// When the ownership or the mode cannot be set.
pub fn hand_over(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((uid, gid)) = service_user() {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "chown {} failed",
                path.display()
            )));
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// Runs `program` from `bin` as the server user.
fn as_server_user(bin: &Path, program: &str) -> Command {
    let mut cmd = Command::new(bin.join(program));
    if let Some((uid, gid)) = service_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// `initdb` of a new cluster in `dir` (an empty directory the server user owns, see [`hand_over`]): UTF-8, the
/// superuser [`USER`] with password [`PASSWORD`] (`pwfile` holds it), password logins only.
pub fn initdb_command(bin: &Path, dir: &Path, pwfile: &Path) -> Command {
    let mut cmd = as_server_user(bin, "initdb");
    cmd.arg("-D")
        .arg(dir)
        .args(["-U", USER, "-E", "UTF8", "--locale=C.UTF-8"])
        .args(["--auth=scram-sha-256", "--no-instructions", "--no-sync"])
        .arg(format!("--pwfile={}", pwfile.display()));
    cmd
}

/// Makes a new cluster in `dir` (created if missing, emptied if not): `initdb` as [`initdb_command`] does, then the
/// database [`DATABASE`] in it (with `postgres --single`, no server needed).
///
/// # Errors
/// When a step fails, with its output.
pub fn create_cluster(bin: &Path, dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    hand_over(dir)?;
    let pwfile = std::env::temp_dir().join(format!("roomcast-pg-pw.{}", std::process::id()));
    std::fs::write(&pwfile, PASSWORD)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644))?;
    }
    let made = initdb_command(bin, dir, &pwfile).output();
    let _ = std::fs::remove_file(&pwfile);
    let made = made?;
    if !made.status.success() {
        return Err(std::io::Error::other(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        )));
    }
    let mut single = as_server_user(bin, "postgres")
        .args(["--single", "-D"])
        .arg(dir)
        .arg("postgres")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    single
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("CREATE DATABASE {DATABASE};\n").as_bytes())?;
    let out = single.wait_with_output()?;
    if !out.status.success() || String::from_utf8_lossy(&out.stderr).contains("ERROR") {
        return Err(std::io::Error::other(format!(
            "creating the database failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// The server for the cluster in `dir` on loopback `port` (its Unix socket in `dir` too). Never 5432.
///
/// # Panics
/// If `port` is 5432: that PostgreSQL belongs to somebody else.
pub fn postgres_command(bin: &Path, dir: &Path, port: u16) -> Command {
    assert_ne!(port, 5432, "never the default PostgreSQL port");
    let mut cmd = as_server_user(bin, "postgres");
    cmd.arg("-D")
        .arg(dir)
        .args(["-p", &port.to_string(), "-h", "127.0.0.1"])
        .arg("-k")
        .arg(dir)
        // Enough for several replicas' pools and a test's own connections; nothing else is tuned.
        .args(["-c", "max_connections=200", "-c", "shared_buffers=64MB"]);
    cmd
}

/// `postgres://roomcast:…@127.0.0.1:<port>/roomcast`.
pub fn url(port: u16) -> String {
    database_url(port, DATABASE)
}

/// The URL of database `database` on the private cluster at `port`.
pub fn database_url(port: u16, database: &str) -> String {
    format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{port}/{database}")
}
