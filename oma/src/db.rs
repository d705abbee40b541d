//! MariaDB access: pool, embedded migrations, and every statement the service runs. State
//! changes are conditional (`… AND status IN (active)`); sqlx counts matched rows on MySQL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlPool, MySqlPoolOptions};
use sqlx::{Connection, Executor, MySql, QueryBuilder, Row, Transaction};
use tracing::warn;

use crate::config::redact_url;
use crate::domain::{active_status_sql_list, nbd_export_name, FailureClass, JobStatus, RecoveryMethod};
use crate::reconcile::JobFacts;
use crate::vma_client::VmaProgress;

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
/// `wait_setting` names where `wait` comes from, for the message when it runs out.
pub async fn connect(
    url: &str,
    max_connections: u32,
    wait: Duration,
    wait_setting: &'static str,
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
        .acquire_timeout(Duration::from_secs(10))
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
pub async fn migrate(pool: &MySqlPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

pub async fn db_now(pool: &MySqlPool) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT NOW(3)").fetch_one(pool).await
}

/// A replication job row as the API returns it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: String,
    pub vm_context_id: Option<String>,
    pub source_vm_id: String,
    pub source_vm_name: String,
    pub source_vm_path: String,
    pub vcenter_host: String,
    pub datacenter: String,
    pub replication_type: String,
    pub status: String,
    pub progress_percent: f64,
    pub current_operation: Option<String>,
    pub bytes_transferred: i64,
    pub total_bytes: i64,
    pub transfer_speed_bps: i64,
    pub error_message: Option<String>,
    pub nbd_export_name: Option<String>,
    pub vma_sync_type: Option<String>,
    pub vma_current_phase: Option<String>,
    pub vma_throughput_mbps: f64,
    pub vma_eta_seconds: Option<i32>,
    pub vma_last_poll_at: Option<DateTime<Utc>>,
    pub vma_error_classification: Option<String>,
    pub vma_error_details: Option<String>,
    pub setup_progress_percent: f64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub recovery_attempted: bool,
    pub recovery_attempted_at: Option<DateTime<Utc>>,
    pub recovery_method: Option<String>,
    pub vma_validated_at: Option<DateTime<Utc>>,
    pub polling_restarted_at: Option<DateTime<Utc>>,
}

const JOB_COLUMNS: &str = "id, vm_context_id, source_vm_id, source_vm_name, source_vm_path, vcenter_host, \
    datacenter, replication_type, status, progress_percent, current_operation, bytes_transferred, total_bytes, \
    transfer_speed_bps, error_message, nbd_export_name, vma_sync_type, vma_current_phase, vma_throughput_mbps, \
    vma_eta_seconds, vma_last_poll_at, vma_error_classification, vma_error_details, setup_progress_percent, \
    created_at, updated_at, started_at, completed_at, recovery_attempted, recovery_attempted_at, recovery_method, \
    vma_validated_at, polling_restarted_at";

pub async fn get_job(pool: &MySqlPool, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM replication_jobs WHERE id = ?"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn recent_jobs_for_context(
    pool: &MySqlPool,
    context_id: &str,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM replication_jobs WHERE vm_context_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
    ))
    .bind(context_id)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// An unfinished job with its polling state, as recovery and the health monitor see it.
#[derive(Debug, Clone, Serialize)]
pub struct UnfinishedJob {
    pub id: String,
    pub vm_context_id: Option<String>,
    pub source_vm_name: String,
    pub status: JobStatus,
    pub progress_percent: f64,
    pub bytes_transferred: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub vma_last_poll_at: Option<DateTime<Utc>>,
    pub progress_changed_at: Option<DateTime<Utc>>,
    pub started_polling_at: Option<DateTime<Utc>>,
    pub poll_owner: Option<String>,
    /// The owner's claim is active and its lease has not expired.
    pub poll_lease_live: bool,
    pub export_names: Vec<String>,
}

impl UnfinishedJob {
    pub fn facts(&self) -> JobFacts {
        JobFacts {
            status: self.status,
            progress_percent: self.progress_percent,
            bytes_transferred: self.bytes_transferred,
            updated_at: self.updated_at,
            vma_last_poll_at: self.vma_last_poll_at,
            progress_changed_at: self.progress_changed_at,
            polling_started_at: self.started_polling_at,
        }
    }

    /// Owned by a live poller of another process.
    pub fn owned_elsewhere(&self, me: &str) -> bool {
        self.poll_lease_live && self.poll_owner.as_deref() != Some(me)
    }
}

/// Every unfinished job (no age filter), optionally one, with its polling state. Export names
/// are attached separately ([`attach_export_names`]) for the jobs that will ask the VMA.
pub async fn load_unfinished(pool: &MySqlPool, only_job: Option<&str>) -> Result<Vec<UnfinishedJob>, sqlx::Error> {
    let sql = format!(
        "SELECT j.id, j.vm_context_id, j.source_vm_name, j.status, j.progress_percent, j.bytes_transferred, \
         j.created_at, j.updated_at, j.vma_last_poll_at, j.progress_changed_at, p.started_polling_at, \
         p.owner_instance, CAST(COALESCE(p.is_active = 1 AND p.lease_expires_at > NOW(3), 0) AS SIGNED) AS lease_live \
         FROM replication_jobs j LEFT JOIN vma_polling_state p ON p.job_id = j.id \
         WHERE j.status IN ({}) {} ORDER BY j.updated_at ASC, j.id ASC",
        active_status_sql_list(),
        if only_job.is_some() { "AND j.id = ?" } else { "" }
    );
    let mut query = sqlx::query(&sql);
    if let Some(id) = only_job {
        query = query.bind(id);
    }
    let rows = query.fetch_all(pool).await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        let status: String = row.try_get("status")?;
        let Some(status) = JobStatus::parse(&status) else {
            continue;
        };
        jobs.push(UnfinishedJob {
            id: row.try_get("id")?,
            vm_context_id: row.try_get("vm_context_id")?,
            source_vm_name: row.try_get("source_vm_name")?,
            status,
            progress_percent: row.try_get("progress_percent")?,
            bytes_transferred: row.try_get("bytes_transferred")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            vma_last_poll_at: row.try_get("vma_last_poll_at")?,
            progress_changed_at: row.try_get("progress_changed_at")?,
            started_polling_at: row.try_get("started_polling_at")?,
            poll_owner: row.try_get("owner_instance")?,
            poll_lease_live: row.try_get::<i64, _>("lease_live")? == 1,
            export_names: Vec::new(),
        });
    }
    Ok(jobs)
}

/// Fill `export_names` of these jobs, in one query per 500 jobs.
pub async fn attach_export_names(pool: &MySqlPool, jobs: &mut [UnfinishedJob]) -> Result<(), sqlx::Error> {
    let mut names = export_names_for(pool, jobs.iter().map(|j| j.id.as_str())).await?;
    for job in jobs.iter_mut() {
        if let Some(n) = names.remove(&job.id) {
            job.export_names = n;
        }
    }
    Ok(())
}

/// NBD export names per job, ordered by disk unit number, without duplicates.
pub async fn export_names_for<'a>(
    pool: &MySqlPool,
    job_ids: impl Iterator<Item = &'a str>,
) -> Result<HashMap<String, Vec<String>>, sqlx::Error> {
    let ids: Vec<&str> = job_ids.collect();
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for chunk in ids.chunks(BATCH_ROWS) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
            "SELECT vd.job_id, ov.volume_id FROM vm_disks vd JOIN ossea_volumes ov ON vd.ossea_volume_id = ov.id WHERE vd.job_id IN (",
        );
        push_id_list(&mut qb, chunk.iter().copied());
        qb.push(") ORDER BY vd.job_id, vd.unit_number ASC, vd.id ASC");
        for row in qb.build().fetch_all(pool).await? {
            let job_id: String = row.try_get(0)?;
            let volume_id: String = row.try_get(1)?;
            let names = out.entry(job_id).or_default();
            let name = nbd_export_name(&volume_id);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    Ok(out)
}

/// Who asked for a recovery decision, for the recovery metadata columns.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryMark {
    pub method: RecoveryMethod,
    pub vma_validated: bool,
    pub polling_restarted: bool,
}

/// One successful poll, for the batched writer.
#[derive(Debug, Clone)]
pub struct ProgressWrite {
    pub job_id: String,
    pub progress: VmaProgress,
    pub progress_changed: bool,
}

/// Write many polls in multi-row statements; rows of jobs that are no longer active are skipped.
pub async fn write_progress_batch(conn: &mut MySqlConnection, writes: &[ProgressWrite]) -> Result<u64, sqlx::Error> {
    let mut matched = 0;
    for chunk in writes.chunks(BATCH_ROWS) {
        let mut qb: QueryBuilder<MySql> = QueryBuilder::new("UPDATE replication_jobs j JOIN (");
        for (i, w) in chunk.iter().enumerate() {
            let p = &w.progress;
            qb.push(if i == 0 { "SELECT " } else { " UNION ALL SELECT " });
            qb.push_bind(w.job_id.clone()).push(" AS id, ");
            qb.push_bind(p.phase.eq_ignore_ascii_case("transfer")).push(" AS transfer, ");
            qb.push_bind(p.percentage.clamp(0.0, 100.0)).push(" AS pct, ");
            qb.push_bind(p.current_operation.clone()).push(" AS op, ");
            qb.push_bind(p.bytes_transferred.max(0)).push(" AS bytes, ");
            qb.push_bind(p.total_bytes.max(0)).push(" AS total, ");
            qb.push_bind(p.transfer_speed_bps().max(0)).push(" AS bps, ");
            qb.push_bind(p.sync_type.clone()).push(" AS sync_type, ");
            qb.push_bind(p.phase.clone()).push(" AS phase, ");
            qb.push_bind(p.throughput.current_mbps.max(0.0)).push(" AS mbps, ");
            qb.push_bind(p.timing.eta_seconds.clamp(0, i32::MAX as i64)).push(" AS eta, ");
            qb.push_bind(w.progress_changed).push(" AS changed");
        }
        qb.push(format!(
            ") v ON j.id = v.id SET j.status = 'replicating', \
             j.progress_percent = IF(v.transfer, GREATEST(j.progress_percent, v.pct), j.progress_percent), \
             j.current_operation = v.op, j.bytes_transferred = v.bytes, j.total_bytes = v.total, \
             j.transfer_speed_bps = v.bps, j.vma_sync_type = v.sync_type, j.vma_current_phase = v.phase, \
             j.vma_throughput_mbps = v.mbps, j.vma_eta_seconds = v.eta, j.vma_last_poll_at = NOW(3), \
             j.updated_at = NOW(3), \
             j.progress_changed_at = IF(v.changed OR j.progress_changed_at IS NULL, NOW(3), j.progress_changed_at), \
             j.replication_type = CASE v.sync_type WHEN 'incremental' THEN 'incremental' \
                 WHEN '' THEN j.replication_type ELSE 'initial' END \
             WHERE j.status IN ({})",
            active_status_sql_list()
        ));
        matched += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(matched)
}

/// Polls of one job since its statistics were last written (`vma_polling_state`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollStats {
    pub job_id: String,
    pub polls: u32,
    pub failed: u32,
    /// Failed polls after the last successful one (all of them when none succeeded).
    pub trailing_failures: u32,
    pub any_ok: bool,
    /// The newest failed poll's error.
    pub last_error: Option<String>,
}

impl PollStats {
    /// One poll; `error` is `None` when it succeeded.
    pub fn one(job_id: String, error: Option<String>) -> PollStats {
        let mut stats =
            PollStats { job_id, polls: 0, failed: 0, trailing_failures: 0, any_ok: false, last_error: None };
        stats.record(error);
        stats
    }

    /// One more poll after these.
    pub fn record(&mut self, error: Option<String>) {
        self.polls += 1;
        match error {
            None => {
                self.any_ok = true;
                self.trailing_failures = 0;
            }
            Some(e) => {
                self.failed += 1;
                self.trailing_failures += 1;
                self.last_error = Some(e);
            }
        }
    }

    /// These polls followed by `newer` ones of the same job.
    pub fn then(self, newer: PollStats) -> PollStats {
        PollStats {
            job_id: self.job_id,
            polls: self.polls + newer.polls,
            failed: self.failed + newer.failed,
            trailing_failures: if newer.any_ok {
                newer.trailing_failures
            } else {
                self.trailing_failures + newer.trailing_failures
            },
            any_ok: self.any_ok || newer.any_ok,
            last_error: newer.last_error.or(self.last_error),
        }
    }
}

/// Add polls to the statistics of jobs `owner` polls, in one statement (at most `BATCH_ROWS` rows,
/// one per job): either all of them are counted or none.
pub async fn write_poll_stats(conn: &mut MySqlConnection, owner: &str, stats: &[PollStats]) -> Result<(), sqlx::Error> {
    if stats.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new("UPDATE vma_polling_state p JOIN (");
    for (i, s) in stats.iter().enumerate() {
        qb.push(if i == 0 { "SELECT " } else { " UNION ALL SELECT " });
        qb.push_bind(s.job_id.clone()).push(" AS id, ");
        qb.push_bind(s.polls).push(" AS polls, ");
        qb.push_bind(s.failed).push(" AS failed, ");
        qb.push_bind(s.trailing_failures).push(" AS trail, ");
        qb.push_bind(s.any_ok).push(" AS any_ok, ");
        qb.push_bind(s.last_error.clone()).push(" AS err");
    }
    qb.push(
        ") v ON p.job_id = v.id SET p.last_poll_at = NOW(3), p.polls_total = p.polls_total + v.polls, \
         p.polls_failed = p.polls_failed + v.failed, \
         p.consecutive_errors = IF(v.any_ok, v.trail, p.consecutive_errors + v.trail), \
         p.last_success_at = IF(v.any_ok, NOW(3), p.last_success_at), \
         p.last_error_message = COALESCE(v.err, p.last_error_message) \
         WHERE p.owner_instance = ",
    );
    qb.push_bind(owner.to_string());
    qb.build().execute(conn).await?;
    Ok(())
}

/// Give up polling one job (released rows are free for any poller to claim).
pub async fn release_polling(pool: &MySqlPool, job_id: &str, owner: Option<&str>) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE vma_polling_state SET is_active = 0, lease_expires_at = NOW(3) \
         WHERE job_id = ? AND (? IS NULL OR owner_instance = ?)",
    )
    .bind(job_id)
    .bind(owner)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Extend every lease of `owner` in one statement.
pub async fn renew_leases(pool: &MySqlPool, owner: &str, lease: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE vma_polling_state SET lease_expires_at = NOW(3) + INTERVAL ? MICROSECOND \
         WHERE owner_instance = ? AND is_active = 1",
    )
    .bind(lease.as_micros() as i64)
    .bind(owner)
    .execute(pool)
    .await?
    .rows_affected())
}

/// End `owner`'s leases now, keeping its claims: the next start takes them back, any other OMA may
/// take them at once (shutdown).
pub async fn hand_over_leases(pool: &MySqlPool, owner: &str) -> Result<u64, sqlx::Error> {
    renew_leases(pool, owner, Duration::ZERO).await
}

/// Unfinished jobs `owner` holds an active claim on.
pub async fn owned_active_jobs(pool: &MySqlPool, owner: &str) -> Result<HashSet<String>, sqlx::Error> {
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT p.job_id FROM vma_polling_state p JOIN replication_jobs j ON j.id = p.job_id \
         WHERE p.owner_instance = ? AND p.is_active = 1 AND j.status IN ({})",
        active_status_sql_list()
    ))
    .bind(owner)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PollingStateRow {
    pub job_id: String,
    pub owner_instance: String,
    pub lease_expires_at: DateTime<Utc>,
    pub started_polling_at: DateTime<Utc>,
    pub last_poll_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub consecutive_errors: i32,
    pub last_error_message: Option<String>,
    pub polls_total: i64,
    pub polls_failed: i64,
    pub is_active: bool,
}

pub async fn polling_state(pool: &MySqlPool, job_id: &str) -> Result<Option<PollingStateRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT job_id, owner_instance, lease_expires_at, started_polling_at, last_poll_at, last_success_at, \
         consecutive_errors, last_error_message, polls_total, polls_failed, is_active \
         FROM vma_polling_state WHERE job_id = ?",
    )
    .bind(job_id)
    .fetch_optional(pool)
    .await
}

/// How a job ends.
#[derive(Debug, Clone)]
pub struct Finalization {
    pub status: JobStatus,
    /// Final numbers from the VMA, if it gave any.
    pub progress: Option<VmaProgress>,
    pub error_message: Option<String>,
    pub class: Option<FailureClass>,
    pub details: Option<String>,
    pub recovery: Option<RecoveryMark>,
}

impl Finalization {
    pub fn completed(progress: Option<VmaProgress>, recovery: Option<RecoveryMark>) -> Finalization {
        Finalization {
            status: JobStatus::Completed,
            progress,
            error_message: None,
            class: None,
            details: None,
            recovery,
        }
    }

    pub fn failed(
        status: JobStatus,
        class: FailureClass,
        message: String,
        details: Option<String>,
        recovery: Option<RecoveryMark>,
    ) -> Finalization {
        Finalization { status, progress: None, error_message: Some(message), class: Some(class), details, recovery }
    }
}

/// What finalization did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finalized {
    Done {
        context_id: Option<String>,
    },
    /// The job was no longer unfinished: another writer finalized it first.
    AlreadyFinal,
}

/// Finalize a job exactly once, in one transaction with the recomputation of its VM context, so
/// the VM accepts a new replication at once.
pub async fn finalize_job(pool: &MySqlPool, job_id: &str, fin: &Finalization) -> Result<Finalized, sqlx::Error> {
    let mut results = finalize_chunk_retrying(pool, &[(job_id.to_string(), fin.clone())]).await?;
    Ok(results.pop().unwrap_or(Finalized::AlreadyFinal))
}

/// Rows finalized per transaction.
const FINALIZE_CHUNK: usize = 200;
const FINALIZE_CHUNKS_IN_FLIGHT: usize = 2;

/// Finalize many jobs: per chunk one transaction that locks the contexts (in key order, so
/// concurrent batches cannot deadlock) and the still-unfinished jobs, updates the jobs in one
/// multi-row statement, releases their polling and recomputes their contexts. A job that is no
/// longer unfinished is reported `AlreadyFinal` and left untouched. One result per item, in input
/// order: a failed chunk fails its own jobs only (the others' transactions committed).
pub async fn finalize_jobs(
    pool: &MySqlPool,
    items: &[(String, Finalization)],
) -> Vec<Result<Finalized, Arc<sqlx::Error>>> {
    debug_assert!(items.iter().all(|(_, f)| f.status.is_terminal()));
    // Two chunks in flight (MariaDB runs each transaction on its own thread), results kept in
    // order. Chunks cannot deadlock on the contexts (each locks its contexts first, in context
    // order); a deadlock elsewhere is retried.
    // The futures are built first: a closure in the stream would make the caller's future not Send.
    let chunks: Vec<_> = items.chunks(FINALIZE_CHUNK).map(|chunk| finalize_chunk_retrying(pool, chunk)).collect();
    let done: Vec<_> = futures::stream::iter(chunks).buffered(FINALIZE_CHUNKS_IN_FLIGHT).collect().await;
    let mut out = Vec::with_capacity(items.len());
    for (chunk, result) in items.chunks(FINALIZE_CHUNK).zip(done) {
        match result {
            Ok(finalized) => out.extend(finalized.into_iter().map(Ok)),
            Err(e) => out.extend(std::iter::repeat_n(Err(Arc::new(e)), chunk.len())),
        }
    }
    out
}

async fn finalize_chunk_retrying(
    pool: &MySqlPool,
    chunk: &[(String, Finalization)],
) -> Result<Vec<Finalized>, sqlx::Error> {
    retrying_lock_races(|| try_finalize_chunk(pool, chunk)).await
}

/// Run `attempt` (work that is safe to run again) up to five times while it loses a lock race,
/// a little later each time.
async fn retrying_lock_races<T, Fut>(mut attempt: impl FnMut() -> Fut) -> Result<T, sqlx::Error>
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

fn push_id_list<'a>(qb: &mut QueryBuilder<'a, MySql>, ids: impl Iterator<Item = &'a str>) {
    let mut sep = qb.separated(", ");
    for id in ids {
        sep.push_bind(id);
    }
}

async fn try_finalize_chunk(pool: &MySqlPool, chunk: &[(String, Finalization)]) -> Result<Vec<Finalized>, sqlx::Error> {
    let active = active_status_sql_list();
    let mut tx = pool.begin().await?;
    // Lock the contexts first: sibling finalizations serialize here instead of deadlocking.
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT context_id FROM vm_replication_contexts WHERE context_id IN \
         (SELECT vm_context_id FROM replication_jobs WHERE id IN (",
    );
    push_id_list(&mut qb, chunk.iter().map(|(id, _)| id.as_str()));
    qb.push(")) ORDER BY context_id FOR UPDATE");
    qb.build().execute(&mut *tx).await?;
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new("SELECT id, vm_context_id FROM replication_jobs WHERE id IN (");
    push_id_list(&mut qb, chunk.iter().map(|(id, _)| id.as_str()));
    qb.push(format!(") AND status IN ({active}) FOR UPDATE"));
    let mut owned: HashMap<String, Option<String>> = HashMap::new();
    for row in qb.build().fetch_all(&mut *tx).await? {
        owned.insert(row.try_get(0)?, row.try_get(1)?);
    }
    if owned.is_empty() {
        tx.rollback().await?;
        return Ok(vec![Finalized::AlreadyFinal; chunk.len()]);
    }
    let mine: Vec<&(String, Finalization)> = chunk.iter().filter(|(id, _)| owned.contains_key(id)).collect();
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new("UPDATE replication_jobs j JOIN (");
    for (i, (id, fin)) in mine.iter().enumerate() {
        let completed = fin.status == JobStatus::Completed;
        let p = fin.progress.as_ref();
        qb.push(if i == 0 { "SELECT " } else { " UNION ALL SELECT " });
        qb.push_bind(id.as_str()).push(" AS id, ");
        qb.push_bind(fin.status.as_str()).push(" AS status, ");
        qb.push_bind(completed).push(" AS completed, ");
        qb.push_bind(fin.error_message.clone()).push(" AS msg, ");
        qb.push_bind(fin.class.map(|c| c.as_str())).push(" AS class, ");
        qb.push_bind(fin.details.clone()).push(" AS details, ");
        qb.push_bind(p.is_some()).push(" AS has_progress, ");
        qb.push_bind(p.map(|p| p.bytes_transferred.max(0)).unwrap_or(0)).push(" AS bytes, ");
        qb.push_bind(p.map(|p| p.total_bytes.max(0)).unwrap_or(0)).push(" AS total, ");
        qb.push_bind(p.map(|p| p.phase.clone()).unwrap_or_default()).push(" AS phase, ");
        qb.push_bind(p.map(|p| p.sync_type.clone()).unwrap_or_default()).push(" AS sync_type, ");
        qb.push_bind(fin.recovery.is_some()).push(" AS mark, ");
        qb.push_bind(fin.recovery.map(|m| m.method.as_str())).push(" AS method, ");
        qb.push_bind(fin.recovery.is_some_and(|m| m.vma_validated)).push(" AS validated");
    }
    // Every assignment reads only its own column or v, so the (unspecified) order of a
    // multi-table UPDATE does not matter.
    qb.push(format!(
        ") v ON j.id = v.id SET j.status = v.status, j.completed_at = NOW(3), j.updated_at = NOW(3), \
         j.progress_percent = IF(v.completed, 100, j.progress_percent), \
         j.current_operation = IF(v.completed, 'Completed', 'Failed'), \
         j.error_message = IF(v.completed, j.error_message, v.msg), \
         j.vma_error_classification = IF(v.completed, j.vma_error_classification, v.class), \
         j.vma_error_details = IF(v.completed, j.vma_error_details, v.details), \
         j.bytes_transferred = IF(v.has_progress, GREATEST(j.bytes_transferred, v.bytes), j.bytes_transferred), \
         j.total_bytes = IF(v.has_progress, GREATEST(j.total_bytes, v.total), j.total_bytes), \
         j.vma_current_phase = IF(v.has_progress AND v.phase <> '', v.phase, j.vma_current_phase), \
         j.vma_sync_type = IF(v.has_progress AND v.sync_type <> '', v.sync_type, j.vma_sync_type), \
         j.vma_last_poll_at = IF(v.has_progress, NOW(3), j.vma_last_poll_at), \
         j.vma_eta_seconds = IF(v.has_progress, 0, j.vma_eta_seconds), \
         j.recovery_attempted = IF(v.mark, 1, j.recovery_attempted), \
         j.recovery_attempted_at = IF(v.mark, NOW(3), j.recovery_attempted_at), \
         j.recovery_method = IF(v.mark, v.method, j.recovery_method), \
         j.vma_validated_at = IF(v.validated, NOW(3), j.vma_validated_at) \
         WHERE j.status IN ({active})"
    ));
    qb.build().execute(&mut *tx).await?;
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("UPDATE vma_polling_state SET is_active = 0, lease_expires_at = NOW(3) WHERE job_id IN (");
    push_id_list(&mut qb, mine.iter().map(|(id, _)| id.as_str()));
    qb.push(")");
    qb.build().execute(&mut *tx).await?;
    // One summary per context (the last job of the chunk wins).
    let mut summaries: Vec<(String, String)> = Vec::new();
    for (id, fin) in &mine {
        if let Some(Some(ctx)) = owned.get(id.as_str()) {
            summaries.retain(|(c, _)| c != ctx);
            summaries.push((ctx.clone(), operation_summary(id, fin)));
        }
    }
    if !summaries.is_empty() {
        recompute_contexts(&mut tx, &summaries).await?;
    }
    tx.commit().await?;
    Ok(chunk
        .iter()
        .map(|(id, _)| match owned.get(id) {
            Some(ctx) => Finalized::Done { context_id: ctx.clone() },
            None => Finalized::AlreadyFinal,
        })
        .collect())
}

/// Recompute VM contexts from their jobs (never incremented blindly). Rule for `current_status`:
/// an unfinished job → `replicating`; a failover/cleanup state is kept; otherwise
/// `ready_for_failover` when any job of the VM succeeded (the one just finalized included),
/// else `failed`.
async fn recompute_contexts(
    tx: &mut Transaction<'_, MySql>,
    summaries: &[(String, String)],
) -> Result<(), sqlx::Error> {
    let active = active_status_sql_list();
    // Row estimates lag behind thousands of jobs turning `completed` within seconds; without the
    // hint MariaDB picks idx_replication_jobs_status and scans every completed job per context.
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new("UPDATE vm_replication_contexts c JOIN (");
    for (i, (ctx, summary)) in summaries.iter().enumerate() {
        qb.push(if i == 0 { "SELECT " } else { " UNION ALL SELECT " });
        qb.push_bind(ctx.as_str()).push(" AS ctx, ");
        qb.push_bind(summary.as_str()).push(" AS summary");
    }
    let jobs = "FROM replication_jobs j FORCE INDEX (idx_replication_jobs_context_status) \
                WHERE j.vm_context_id = c.context_id";
    qb.push(format!(
        ") v ON c.context_id = v.ctx SET \
         c.current_status = CASE \
            WHEN EXISTS (SELECT 1 {jobs} AND j.status IN ({active})) THEN 'replicating' \
            WHEN c.current_status IN ('failed_over_test','failed_over_live','cleanup_required','completed') THEN c.current_status \
            WHEN EXISTS (SELECT 1 {jobs} AND j.status = 'completed') THEN 'ready_for_failover' \
            ELSE 'failed' END, \
         c.current_job_id = (SELECT j.id {jobs} AND j.status IN ({active}) ORDER BY j.created_at DESC, j.id DESC LIMIT 1), \
         c.total_jobs_run = (SELECT COUNT(*) {jobs}), \
         c.successful_jobs = (SELECT COUNT(*) {jobs} AND j.status = 'completed'), \
         c.failed_jobs = (SELECT COUNT(*) {jobs} AND j.status IN ('failed','replication_failed')), \
         c.last_successful_job_id = (SELECT j.id {jobs} AND j.status = 'completed' ORDER BY j.completed_at DESC, j.created_at DESC LIMIT 1), \
         c.last_replication_at = (SELECT MAX(j.completed_at) {jobs} AND j.status = 'completed'), \
         c.last_operation_summary = v.summary, \
         c.last_status_change = NOW(3), c.updated_at = NOW(3)"
    ));
    qb.build().execute(&mut **tx).await?;
    Ok(())
}

/// Claim polling of many jobs for `owner`; returns the ids now owned by `owner`.
pub async fn claim_polling_many(
    pool: &MySqlPool,
    job_ids: &[String],
    owner: &str,
    lease: Duration,
) -> Result<HashSet<String>, sqlx::Error> {
    let lease_us = lease.as_micros() as i64;
    let mut claimed = HashSet::new();
    for chunk in job_ids.chunks(BATCH_ROWS) {
        // The claim runs beside finalizations that release neighbouring rows, and may lose a lock
        // race to one (seen as a deadlock in the suite); its statements are safe to run again.
        claimed.extend(retrying_lock_races(|| claim_chunk(pool, chunk, owner, lease_us)).await?);
    }
    Ok(claimed)
}

/// One chunk of [`claim_polling_many`]: the ids of `chunk` now owned by `owner`.
async fn claim_chunk(
    pool: &MySqlPool,
    chunk: &[String],
    owner: &str,
    lease_us: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new(
        "INSERT IGNORE INTO vma_polling_state (job_id, owner_instance, lease_expires_at, started_polling_at, is_active) ",
    );
    qb.push_values(chunk, |mut b, id| {
        b.push_bind(id.as_str())
            .push_bind(owner)
            .push("NOW(3) + INTERVAL ")
            .push_bind_unseparated(lease_us)
            .push_unseparated(" MICROSECOND")
            .push("NOW(3)")
            .push("1");
    });
    qb.build().execute(pool).await?;
    let mut qb: QueryBuilder<MySql> = QueryBuilder::new("UPDATE vma_polling_state SET owner_instance = ");
    qb.push_bind(owner);
    qb.push(", is_active = 1, lease_expires_at = NOW(3) + INTERVAL ");
    qb.push_bind(lease_us);
    qb.push(" MICROSECOND WHERE (owner_instance = ");
    qb.push_bind(owner);
    qb.push(" OR is_active = 0 OR lease_expires_at < NOW(3)) AND job_id IN (");
    push_id_list(&mut qb, chunk.iter().map(String::as_str));
    qb.push(")");
    qb.build().execute(pool).await?;
    let mut qb: QueryBuilder<MySql> =
        QueryBuilder::new("SELECT job_id FROM vma_polling_state WHERE is_active = 1 AND owner_instance = ");
    qb.push_bind(owner);
    qb.push(" AND job_id IN (");
    push_id_list(&mut qb, chunk.iter().map(String::as_str));
    qb.push(")");
    qb.build().fetch_all(pool).await?.iter().map(|row| row.try_get(0)).collect()
}

/// Fill the recovery metadata of many kept jobs (one statement per kind of mark).
pub async fn record_marks(pool: &MySqlPool, marks: &[(String, RecoveryMark)]) -> Result<(), sqlx::Error> {
    let mut groups: HashMap<(&'static str, bool, bool), Vec<&str>> = HashMap::new();
    for (id, m) in marks {
        groups.entry((m.method.as_str(), m.vma_validated, m.polling_restarted)).or_default().push(id.as_str());
    }
    for ((method, validated, restarted), ids) in groups {
        for chunk in ids.chunks(BATCH_ROWS) {
            let mut qb: QueryBuilder<MySql> =
                QueryBuilder::new("UPDATE replication_jobs SET recovery_attempted = 1, recovery_attempted_at = NOW(3), recovery_method = ");
            qb.push_bind(method);
            if validated {
                qb.push(", vma_validated_at = NOW(3)");
            }
            if restarted {
                qb.push(", polling_restarted_at = NOW(3)");
            }
            qb.push(" WHERE id IN (");
            push_id_list(&mut qb, chunk.iter().copied());
            qb.push(format!(") AND status IN ({})", active_status_sql_list()));
            qb.build().execute(pool).await?;
        }
    }
    Ok(())
}

/// The `last_operation_summary` JSON of a finished replication (manifest v2.31), sanitized.
fn operation_summary(job_id: &str, fin: &Finalization) -> String {
    let mut summary = serde_json::json!({
        "job_id": job_id,
        "operation_type": "replication",
        "status": if fin.status == JobStatus::Completed { "completed" } else { "failed" },
        "progress": if fin.status == JobStatus::Completed { 100.0 } else { 0.0 },
        "timestamp": Utc::now().to_rfc3339(),
    });
    if let Some(message) = &fin.error_message {
        let clean = crate::sanitize::sanitize_replication_error(message, fin.class);
        summary["error_message"] = clean.user_message.into();
        summary["error_category"] = clean.category.into();
        summary["error_severity"] = clean.severity.into();
        summary["actionable_steps"] = clean.actionable_steps.into();
    }
    summary.to_string()
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ContextRow {
    pub context_id: String,
    pub vm_name: String,
    pub vmware_vm_id: String,
    pub vm_path: String,
    pub vcenter_host: String,
    pub datacenter: String,
    pub current_status: String,
    pub current_job_id: Option<String>,
    pub total_jobs_run: i32,
    pub successful_jobs: i32,
    pub failed_jobs: i32,
    pub last_successful_job_id: Option<String>,
    pub last_replication_at: Option<DateTime<Utc>>,
    pub last_operation_summary: Option<String>,
}

const CONTEXT_COLUMNS: &str = "context_id, vm_name, vmware_vm_id, vm_path, vcenter_host, datacenter, \
    CAST(current_status AS CHAR) AS current_status, current_job_id, total_jobs_run, successful_jobs, failed_jobs, \
    last_successful_job_id, last_replication_at, CAST(last_operation_summary AS CHAR) AS last_operation_summary";

pub async fn get_context(pool: &MySqlPool, context_id: &str) -> Result<Option<ContextRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {CONTEXT_COLUMNS} FROM vm_replication_contexts WHERE context_id = ?"))
        .bind(context_id)
        .fetch_optional(pool)
        .await
}

/// Counts for status endpoints and the CLI, in one query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobCounts {
    pub unfinished: i64,
    pub polled_by_live_owner: i64,
    pub never_polled: i64,
}

pub async fn job_counts(pool: &MySqlPool) -> Result<JobCounts, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT COUNT(*) AS unfinished, \
         CAST(COALESCE(SUM(p.is_active = 1 AND p.lease_expires_at > NOW(3)), 0) AS SIGNED) AS live, \
         CAST(COALESCE(SUM(j.vma_last_poll_at IS NULL), 0) AS SIGNED) AS never \
         FROM replication_jobs j LEFT JOIN vma_polling_state p ON p.job_id = j.id WHERE j.status IN ({})",
        active_status_sql_list()
    ))
    .fetch_one(pool)
    .await?;
    Ok(JobCounts {
        unfinished: row.try_get("unfinished")?,
        polled_by_live_owner: row.try_get("live")?,
        never_polled: row.try_get("never")?,
    })
}
