//! A private PostgreSQL for one test: a copy of a cluster made once per machine (initdb takes seconds; a copy takes a
//! fraction of one), on a free loopback port, killed and removed on drop. Never the system's cluster nor 5432.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use localrun::postgres;

use crate::{PATIENCE, free_port};

/// A PostgreSQL server of its own for a test, with the database the replicas use already made.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The server binaries, or a panic saying how to get them.
fn bin() -> PathBuf {
    postgres::bin_dir().unwrap_or_else(|| {
        panic!(
            "PostgreSQL not found: apt-get install postgresql postgresql-contrib (or run `cargo xtask test`, which installs it)"
        )
    })
}

/// Runs a command to completion, panicking with its output if it fails.
fn run(cmd: &mut std::process::Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The cluster every test copies: made once per machine and PostgreSQL version (by whichever test gets there first;
/// the others wait for its rename), with the database [`postgres::DATABASE`] in it.
fn template() -> PathBuf {
    let bin = bin();
    let version = bin
        .parent()
        .and_then(Path::file_name)
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("roomcast-pg-template-{version}"));
    if dir.join("PG_VERSION").is_file() {
        return dir;
    }
    let making = std::env::temp_dir().join(format!(
        "roomcast-pg-template-{version}.{}",
        std::process::id()
    ));
    postgres::create_cluster(&bin, &making).unwrap_or_else(|e| panic!("{e}"));
    if std::fs::rename(&making, &dir).is_err() {
        // Another test made it first.
        let _ = std::fs::remove_dir_all(&making);
    }
    dir
}

/// Stops a server cleanly (SIGINT: fast shutdown) and waits for it.
fn stop(server: &mut Child) {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status();
    let _ = server.wait();
}

/// A client once the server answers, within [`PATIENCE`] (its connection driven by a task of its own).
pub async fn connect_when_up(url: &str) -> tokio_postgres::Client {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(connection);
                return client;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "PostgreSQL at {url} did not answer within {PATIENCE:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Postgres {
    /// A fresh server with an empty [`postgres::DATABASE`], answering.
    pub async fn start() -> Self {
        let template = tokio::task::spawn_blocking(template).await.unwrap();
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("roomcast-pg-{port}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        run(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(&template)
                .arg(&dir),
            "copy the template cluster",
        );
        let mut pg = Self {
            port,
            dir,
            child: None,
        };
        pg.start_again().await;
        pg
    }

    /// Starts the server again (after [`Postgres::kill`]) on the same port and data, and waits until it answers.
    /// A killed server's processes may take a moment to go: it is started again until it stays up.
    pub async fn start_again(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut child = postgres::postgres_command(&bin(), &self.dir, self.port)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start postgres");
            tokio::time::sleep(Duration::from_millis(100)).await;
            if matches!(child.try_wait(), Ok(None)) {
                self.child = Some(child);
                connect_when_up(&self.url()).await;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres on port {} kept exiting at start",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `postgres://roomcast:…@127.0.0.1:<port>/roomcast`.
    pub fn url(&self) -> String {
        postgres::url(self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server abruptly (SIGKILL of the postmaster; its processes follow): what is committed stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A client for inspecting the database from a test.
    pub async fn client(&self) -> tokio_postgres::Client {
        connect_when_up(&self.url()).await
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_private_server_starts_answers_and_comes_back_after_a_kill() {
        let mut pg = Postgres::start().await;
        assert_ne!(pg.port(), 5432);
        let client = pg.client().await;
        client
            .batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
            .await
            .unwrap();
        drop(client);
        pg.kill();
        pg.start_again().await;
        let row = pg
            .client()
            .await
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            1,
            "what was committed survives a kill"
        );
        let wrong = postgres::url(pg.port()).replace(postgres::PASSWORD, "wrong");
        let refused = tokio_postgres::connect(&wrong, tokio_postgres::NoTls).await;
        assert!(refused.is_err(), "passwords are checked");
    }
}
