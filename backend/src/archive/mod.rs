//! The archive on PostgreSQL: Roomcast's system of record (`--database-url`). Every stored event of every room is
//! kept here for good (or for its retention), with each message's current state, so history reaches back to a room's
//! first message, an emptied Redis is rebuilt, and a room can be exported. The Redis bus archives into it, reads
//! from it and trims behind it through [`crate::bus::archive::Archive`]; nothing else touches it.
//!
//! Driver: `tokio-postgres` (the rust-postgres project's async client) with `deadpool-postgres` for the pool and
//! `refinery` for the schema migrations in `backend/migrations/`, run at start under an advisory lock so replicas
//! starting together migrate once. Chosen over `sqlx`: no database needed at build time (sqlx checks its queries
//! against one, or against metadata kept in the repository), a smaller build, and the same driver's arrays for the
//! batched inserts the archiver makes.

mod append;
mod read;
mod search;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::{BoxFuture, FutureExt};
use shared::{MsgId, RoomName};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;
use tracing::{info, warn};

use crate::bus::HistoryItem;
use crate::bus::archive::{
    Appended, Archive, ArchiveError, Cursor, Expired, LogEntry, ReadPosition, Seed,
};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// How long one archive request may take (a connection from the pool, a query) before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections each replica keeps to the archive.
const POOL_SIZE: usize = 8;
/// The advisory lock key under which replicas migrate the schema one at a time.
const MIGRATION_LOCK: i64 = 0x726f_6f6d_6361_7374; // "roomcast"
/// Settings of every session the replicas open (`-c name=value`), before the URL's own `options`.
const SESSION_OPTIONS: &str = "-c random_page_cost=1.1";
/// The advisory lock key of the retention job.
const RETENTION_LOCK: i64 = MIGRATION_LOCK + 1;

/// PostgreSQL as the archive.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    /// Whether this replica has run the migrations yet (it does before its first request).
    migrated: Arc<Mutex<bool>>,
    /// Where, for logs (no password).
    place: Arc<str>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("place", &self.place)
            .finish_non_exhaustive()
    }
}

/// Why a replica cannot use the archive at all: stop and say so.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The URL is not a PostgreSQL connection string.
    #[error("--database-url is not a PostgreSQL URL: {0}")]
    Url(String),
    /// PostgreSQL answered, and refused: a wrong password, an unknown user or database.
    #[error("PostgreSQL at {place} refused the connection: {cause}")]
    Refused {
        /// Host, port and database.
        place: String,
        /// PostgreSQL's own words.
        cause: String,
    },
    /// The schema could not be brought up to date.
    #[error("cannot migrate the archive's schema at {place}: {cause}")]
    Migration {
        /// Host, port and database.
        place: String,
        /// Why.
        cause: String,
    },
}

/// `host:port/database` of a connection string, without credentials.
fn place_of(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("postgres");
    format!("{host}:{port}/{db}")
}

/// The cause of a driver error in PostgreSQL's own words (its message and SQLSTATE), or the network's.
pub fn cause(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether an error is PostgreSQL refusing us for good (credentials, an unknown database), not a passing outage.
fn refused(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
        ]
        .contains(c)
    })
}

impl Postgres {
    /// Checks `url`, and connects and migrates once if PostgreSQL answers: a refusal (password, user, database) or
    /// a failed migration stops the replica; an outage does not (archiving waits, history stays in Redis).
    pub async fn start(url: &str) -> Result<Self, StartError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| StartError::Url(cause(&e)))?;
        // Index reads cost little more than sequential ones on SSDs and in memory: said so, the planner reads a
        // rare search word through the indexes instead of scanning newest first (the URL's own options win).
        let options = config.get_options().unwrap_or_default().to_owned();
        config.options(format!("{SESSION_OPTIONS} {options}").trim());
        let place: Arc<str> = place_of(&config).into();
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(REQUEST_TIMEOUT))
            .create_timeout(Some(REQUEST_TIMEOUT))
            .recycle_timeout(Some(REQUEST_TIMEOUT))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StartError::Url(e.to_string()))?;
        let archive = Self {
            pool,
            migrated: Arc::new(Mutex::new(false)),
            place,
        };
        match archive.migrate().await {
            Ok(()) => info!(place = %archive.place, "archive: PostgreSQL is the system of record"),
            Err(Failure::Refused(cause)) => {
                return Err(StartError::Refused {
                    place: archive.place.to_string(),
                    cause,
                });
            }
            Err(Failure::Migration(cause)) => {
                return Err(StartError::Migration {
                    place: archive.place.to_string(),
                    cause,
                });
            }
            Err(Failure::Down(cause)) => warn!(
                place = %archive.place,
                %cause,
                "archive: PostgreSQL is not reachable; events wait in Redis until it is"
            ),
        }
        Ok(archive)
    }

    /// Where it is (`host:port/database`).
    pub fn place(&self) -> &str {
        &self.place
    }

    /// A connection from the pool, with the schema migrated.
    async fn client(&self) -> Result<deadpool_postgres::Object, ArchiveError> {
        match self.migrate().await {
            Ok(()) => {}
            Err(Failure::Down(cause) | Failure::Refused(cause) | Failure::Migration(cause)) => {
                return Err(ArchiveError(cause));
            }
        }
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs the migrations once per replica (under an advisory lock, so replicas starting together take turns).
    async fn migrate(&self) -> Result<(), Failure> {
        let mut done = self.migrated.lock().await;
        if *done {
            return Ok(());
        }
        let mut client = self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) if refused(&e) => Failure::Refused(cause(&e)),
            other => Failure::Down(pool_error(other).0),
        })?;
        let locked = client
            .query_one("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| Failure::Down(cause(&e)));
        locked?;
        let report = embedded::migrations::runner()
            .set_grouped(true)
            .run_async(&mut **client)
            .await;
        let _ = client
            .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        let report = report.map_err(|e| Failure::Migration(e.to_string()))?;
        for applied in report.applied_migrations() {
            info!(migration = %applied, "archive: schema migrated");
        }
        *done = true;
        Ok(())
    }
}

/// Why connecting or migrating failed.
enum Failure {
    Down(String),
    Refused(String),
    Migration(String),
}

/// A pool error in words that name the cause.
fn pool_error(e: deadpool_postgres::PoolError) -> ArchiveError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => ArchiveError(cause(&e)),
        deadpool_postgres::PoolError::Timeout(_) => ArchiveError(format!(
            "no connection to PostgreSQL within {REQUEST_TIMEOUT:?}"
        )),
        other => ArchiveError(other.to_string()),
    }
}

/// A query's error, with its cause.
pub(crate) fn query_error(e: &tokio_postgres::Error) -> ArchiveError {
    ArchiveError(cause(e))
}

/// An id as the archive's two columns.
pub(crate) fn id_columns(id: MsgId) -> (i64, i64) {
    (
        i64::try_from(id.ms).unwrap_or(i64::MAX),
        i64::try_from(id.seq).unwrap_or(i64::MAX),
    )
}

/// The id in the archive's two columns.
pub(crate) fn id_of(ms: i64, seq: i64) -> MsgId {
    MsgId::new(
        u64::try_from(ms).unwrap_or_default(),
        u64::try_from(seq).unwrap_or_default(),
    )
}

/// Runs `f` within [`REQUEST_TIMEOUT`].
async fn timed<T>(
    what: &str,
    f: impl Future<Output = Result<T, ArchiveError>>,
) -> Result<T, ArchiveError> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(ArchiveError(format!(
                "PostgreSQL did not answer {what} within {REQUEST_TIMEOUT:?}"
            )))
        })
}

impl Archive for Postgres {
    fn ping(&self) -> BoxFuture<'static, Result<(), ArchiveError>> {
        let this = self.clone();
        async move {
            timed("a ping", async {
                let client = this.client().await?;
                client
                    .query_one("SELECT 1", &[])
                    .await
                    .map_err(|e| query_error(&e))?;
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn cursor(&self, room: &RoomName) -> BoxFuture<'static, Result<Option<Cursor>, ArchiveError>> {
        let (this, room) = (self.clone(), room.clone());
        async move { timed("a cursor read", read::cursor(&this, &room)).await }.boxed()
    }

    fn append(
        &self,
        room: &RoomName,
        epoch: &str,
        entries: Vec<LogEntry>,
    ) -> BoxFuture<'static, Result<Appended, ArchiveError>> {
        let (this, room, epoch) = (self.clone(), room.clone(), epoch.to_owned());
        async move { timed("an append", append::append(&this, &room, &epoch, entries)).await }
            .boxed()
    }

    fn older(
        &self,
        room: &RoomName,
        before: MsgId,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, ArchiveError>> {
        let (this, room) = (self.clone(), room.clone());
        async move { timed("a history read", read::older(&this, &room, before, limit)).await }
            .boxed()
    }

    fn after(
        &self,
        room: &RoomName,
        since: MsgId,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<(bool, Vec<HistoryItem>), ArchiveError>> {
        let (this, room) = (self.clone(), room.clone());
        async move {
            timed(
                "a resume read",
                read::after(&this, &room, since, before, limit),
            )
            .await
        }
        .boxed()
    }

    fn page(
        &self,
        room: &RoomName,
        after: Option<MsgId>,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, ArchiveError>> {
        let (this, room) = (self.clone(), room.clone());
        async move {
            timed(
                "an export page",
                read::page(&this, &room, after, before, limit),
            )
            .await
        }
        .boxed()
    }

    fn seed(
        &self,
        room: &RoomName,
        window: usize,
        now: u64,
        cids_since: u64,
    ) -> BoxFuture<'static, Result<Option<Seed>, ArchiveError>> {
        let (this, room) = (self.clone(), room.clone());
        async move {
            timed(
                "a rebuild read",
                read::seed(&this, &room, window, now, cids_since),
            )
            .await
        }
        .boxed()
    }

    fn save_reads(&self, reads: Vec<ReadPosition>) -> BoxFuture<'static, Result<(), ArchiveError>> {
        let this = self.clone();
        async move { timed("a read positions write", search::save_reads(&this, reads)).await }
            .boxed()
    }

    fn search(
        &self,
        rooms: Option<Vec<RoomName>>,
        words: Vec<shared::text::Word>,
        before: Option<MsgId>,
        limit: usize,
    ) -> BoxFuture<'static, Result<Vec<HistoryItem>, ArchiveError>> {
        let this = self.clone();
        async move {
            timed(
                "a search",
                search::search(&this, rooms, words, before, limit),
            )
            .await
        }
        .boxed()
    }

    fn revoke(&self, person: &str, before: u64) -> BoxFuture<'static, Result<(), ArchiveError>> {
        let (this, person) = (self.clone(), person.to_owned());
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        async move {
            timed("a revocation", async {
                let client = this.client().await?;
                client
                    .execute(
                        "INSERT INTO revocations (person, issued_before) VALUES ($1, $2) \
                         ON CONFLICT (person) DO UPDATE \
                         SET issued_before = GREATEST(revocations.issued_before, EXCLUDED.issued_before)",
                        &[&person, &before],
                    )
                    .await
                    .map_err(|e| query_error(&e))?;
                Ok(())
            })
            .await
        }
        .boxed()
    }

    fn revocations(&self) -> BoxFuture<'static, Result<Vec<(String, u64)>, ArchiveError>> {
        let this = self.clone();
        async move {
            timed("a revocations read", async {
                let client = this.client().await?;
                let rows = client
                    .query("SELECT person, issued_before FROM revocations", &[])
                    .await
                    .map_err(|e| query_error(&e))?;
                Ok(rows
                    .iter()
                    .map(|row| {
                        let before: i64 = row.get(1);
                        (row.get(0), u64::try_from(before).unwrap_or_default())
                    })
                    .collect())
            })
            .await
        }
        .boxed()
    }

    fn expire(
        &self,
        default_days: Option<f64>,
        every_secs: u64,
        now: u64,
    ) -> BoxFuture<'static, Result<Vec<Expired>, ArchiveError>> {
        let this = self.clone();
        async move {
            // Deleting a long history may take longer than a request: bounded by the pool's own timeouts only.
            append::expire(&this, default_days, every_secs, now).await
        }
        .boxed()
    }
}
