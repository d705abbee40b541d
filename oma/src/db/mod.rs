//! MariaDB access: connecting (waiting for a database that comes up late), the embedded
//! migrations, how errors are classified (out of reach, lost a lock race), and every statement
//! the service runs, by concern: [`jobs`] (reading jobs and their export names, recovery
//! metadata), [`polling`] (leases, claims, progress and poll-statistics writes) and [`finalize`]
//! (ending a job exactly once with its VM context). State changes are conditional
//! (`… AND status IN (active)`); sqlx counts matched rows on MySQL.

mod finalize;
mod jobs;
mod polling;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySql, QueryBuilder};
use tracing::warn;

use crate::config::redact_url;

pub use finalize::{finalize_job, finalize_jobs, get_context, ContextRow, Finalization, Finalized};
pub use jobs::{
    attach_export_names, export_names_for, get_job, job_counts, load_unfinished, recent_jobs_for_context, record_marks,
    JobCounts, JobRow, RecoveryMark, UnfinishedJob,
};
pub use polling::{
    claim_polling_many, hand_over_leases, my_leases, polling_state, release_polling, renew_leases, write_poll_stats,
    write_progress_batch, PollStats, PollingStateRow, ProgressWrite,
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Most rows in one multi-row statement.
pub const BATCH_ROWS: usize = 500;

/// Why a start gave up on the database.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A reason waiting cannot fix: access denied, unknown database, not a MariaDB server.
    #[error("{0}")]
    Refused(String),
    #[error("no connection after waiting {} ({setting}); last attempt: {last}", humantime::format_duration(*.waited))]
    GaveUp { waited: Duration, setting: &'static str, last: String },
}

/// The database is out of reach (refusing, reset, no answer, full, shutting down) rather than
/// refusing a statement or a login: a start waits for it, and the API answers 503. Anything else
/// is a mistake to report at once.
pub fn out_of_reach(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => {
            db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|m| matches!(m.number(), 1040 | 1053))
        }
        _ => false,
    }
}

/// Connect, waiting up to `wait` for a database that does not accept connections yet (it may
/// start after the OMA, e.g. after a reboot). Each failed attempt is logged with its reason;
/// `wait_setting` names where `wait` comes from, for the message when it runs out. Later, a
/// statement waits at most `acquire_timeout` for a connection (then fails as out of reach).
pub async fn connect(
    url: &str,
    max_connections: u32,
    wait: Duration,
    wait_setting: &'static str,
    acquire_timeout: Duration,
) -> Result<MySqlPool, ConnectError> {
    let refused = |e: sqlx::Error| ConnectError::Refused(e.to_string());
    let options: MySqlConnectOptions = url.parse().map_err(refused)?;
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let left = wait.saturating_sub(started.elapsed());
        let attempt =
            tokio::time::timeout(left.max(Duration::from_millis(100)), MySqlConnection::connect_with(&options));
        let reason = match attempt.await {
            Ok(Ok(probe)) => {
                let _ = probe.close().await;
                break;
            }
            Ok(Err(e)) if !out_of_reach(&e) => return Err(refused(e)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {:.1}s", left.as_secs_f64()),
        };
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            return Err(ConnectError::GaveUp { waited: wait, setting: wait_setting, last: reason });
        }
        warn!("⏳ Waiting for the database at {}: {reason} (giving up in {:.1}s)", redact_url(url), left.as_secs_f64());
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    MySqlPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(1)
        .acquire_timeout(acquire_timeout)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // Read committed: finalization reads sibling jobs without gap locks.
                conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .map_err(refused)
}

/// Why the pool's database cannot be reached now, from a connection attempt of its own: the
/// pool's error says only that it timed out, the attempt says "Connection refused" or the like.
pub async fn why_out_of_reach(pool: &MySqlPool, budget: Duration) -> String {
    let options = pool.connect_options();
    match tokio::time::timeout(budget, MySqlConnection::connect_with(&options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            "a new connection succeeds, so the database is up but slow to answer".into()
        }
        Ok(Err(e)) => format!("a new connection fails: {e}"),
        Err(_) => format!("a new connection gets no answer within {}", humantime::format_duration(budget)),
    }
}

/// Apply the embedded migrations. Idempotent; sqlx serializes concurrent runners with a lock.
/// Migrations are additive, so a database a newer build migrated further (this build was rolled
/// back to) is used as it is: the versions this build does not know are named, not refused.
pub async fn migrate(pool: &MySqlPool) -> Result<(), sqlx::migrate::MigrateError> {
    let known = migration_versions();
    let newer: Vec<i64> = applied_migrations(pool).await?.into_iter().filter(|v| !known.contains(v)).collect();
    if !newer.is_empty() {
        tracing::warn!(
            "⚠️ The database has migrations this build does not know ({}): a newer build migrated it (rolled back?) - \
             running on the newer schema, whose changes are additive",
            newer.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    let migrator = sqlx::migrate::Migrator {
        migrations: MIGRATOR.migrations.clone(),
        ignore_missing: true,
        locking: MIGRATOR.locking,
        no_tx: MIGRATOR.no_tx,
        table_name: MIGRATOR.table_name.clone(),
        create_schemas: MIGRATOR.create_schemas.clone(),
    };
    migrator.run(pool).await
}

/// Versions of the embedded migrations, oldest first (each has an up and a down script).
pub fn migration_versions() -> Vec<i64> {
    MIGRATOR.iter().filter(|m| m.migration_type.is_up_migration()).map(|m| m.version).collect()
}

/// Versions applied to the database, oldest first (none when it was never migrated).
pub async fn applied_migrations(pool: &MySqlPool) -> Result<Vec<i64>, sqlx::Error> {
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = 1 ORDER BY version").fetch_all(pool).await
}

/// Run the down scripts of every applied migration newer than `to` (newest first). `to` must be
/// 0 (revert everything) or an embedded migration's version. Returns the versions reverted.
pub async fn revert(pool: &MySqlPool, to: i64) -> anyhow::Result<Vec<i64>> {
    let known = migration_versions();
    if to != 0 && !known.contains(&to) {
        anyhow::bail!(
            "--to {to}: not a migration of this build (known: 0 for none, or {})",
            known.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
        );
    }
    let applied = applied_migrations(pool).await?;
    if let Some(unknown) = applied.iter().find(|v| !known.contains(v)) {
        anyhow::bail!("the database has migration {unknown}, which this build does not know: revert it with the build that applied it");
    }
    MIGRATOR.undo(pool, to).await?;
    Ok(applied.into_iter().filter(|v| *v > to).rev().collect())
}

pub async fn db_now(pool: &MySqlPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT NOW(3)").fetch_one(pool).await
}

/// Run `attempt` (work that is safe to run again) up to five times while it loses a lock race,
/// a little later each time.
pub(crate) async fn retrying_lock_races<T, Fut>(mut attempt: impl FnMut() -> Fut) -> Result<T, sqlx::Error>
where
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Err(e) if tries < 5 && lost_a_lock_race(&e) => {
                tokio::time::sleep(Duration::from_millis(5 * tries)).await;
            }
            result => return result,
        }
    }
}

/// A statement that lost a lock race (deadlock 1213, lock wait timeout 1205, or SQLSTATE 40001
/// from elsewhere) and may succeed when run again. The SQLSTATE of a lock wait timeout is the
/// generic HY000, so the MySQL error number is what tells it.
pub fn lost_a_lock_race(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else { return false };
    db.code().as_deref() == Some("40001")
        || db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().is_some_and(|m| matches!(m.number(), 1205 | 1213))
}

pub(crate) fn push_id_list<'a>(qb: &mut QueryBuilder<MySql>, ids: impl Iterator<Item = &'a str>) {
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
}
