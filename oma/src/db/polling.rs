//! Polling ownership and the poller's writes: a `vma_polling_state` row per job holds its owner
//! and lease (claims, renewals, hand-over, release), its poll statistics; progress of many jobs is
//! written in multi-row statements.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::mysql::{MySqlConnection, MySqlPool};
use sqlx::{MySql, QueryBuilder, Row};

use super::{push_id_list, retrying_lock_races, BATCH_ROWS};
use crate::decision::DiskState;
use crate::domain::{active_status_sql_list, JobStatus, ReplicationType};
use crate::vma_client::VmaProgress;

/// One successful poll, for the batched writer.
#[derive(Debug, Clone)]
pub struct ProgressWrite {
    pub job_id: String,
    pub progress: VmaProgress,
    pub progress_changed: bool,
    /// A multi-disk job's count of copied disks after this poll.
    pub disks: Option<DiskState>,
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
            qb.push_bind(w.progress_changed).push(" AS changed, ");
            qb.push_bind(w.disks.map(|d| d.completed as i64)).push(" AS disks_done, ");
            qb.push_bind(w.disks.map(|d| d.in_copy)).push(" AS disk_copy_seen");
        }
        qb.push(format!(
            ") v ON j.id = v.id SET j.status = '{replicating}', \
             j.progress_percent = IF(v.transfer, GREATEST(j.progress_percent, v.pct), j.progress_percent), \
             j.current_operation = v.op, j.bytes_transferred = v.bytes, j.total_bytes = v.total, \
             j.transfer_speed_bps = v.bps, j.vma_sync_type = v.sync_type, j.vma_current_phase = v.phase, \
             j.vma_throughput_mbps = v.mbps, j.vma_eta_seconds = v.eta, j.vma_last_poll_at = NOW(3), \
             j.updated_at = NOW(3), \
             j.progress_changed_at = IF(v.changed OR j.progress_changed_at IS NULL, NOW(3), j.progress_changed_at), \
             j.disks_completed = GREATEST(j.disks_completed, COALESCE(v.disks_done, 0)), \
             j.disk_copy_seen = COALESCE(v.disk_copy_seen, j.disk_copy_seen), \
             j.replication_type = CASE v.sync_type WHEN 'incremental' THEN '{incremental}' \
                 WHEN '' THEN j.replication_type ELSE '{initial}' END \
             WHERE j.status IN ({active})",
            replicating = JobStatus::Replicating.as_str(),
            incremental = ReplicationType::Incremental.as_str(),
            initial = ReplicationType::Initial.as_str(),
            active = active_status_sql_list()
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

/// Extend every lease `owner` still holds, in one statement. A lease that has expired is not
/// extended: another OMA may have claimed it meanwhile, or may be about to; the owner claims it
/// back like anyone else ([`claim_polling_many`]).
pub async fn renew_leases(pool: &MySqlPool, owner: &str, lease: Duration) -> Result<u64, sqlx::Error> {
    // The renewal touches every row this OMA owns while finalizations release some of them: it
    // can lose a lock race (a deadlock, seen in the suite's sign-off log), and is safe to run
    // again. The caller's lease clock started before the first attempt, so a retry only makes
    // its view of the lease more careful.
    retrying_lock_races(|| async {
        Ok(sqlx::query(
            "UPDATE vma_polling_state SET lease_expires_at = NOW(3) + INTERVAL ? MICROSECOND \
             WHERE owner_instance = ? AND is_active = 1 AND lease_expires_at > NOW(3)",
        )
        .bind(lease.as_micros() as i64)
        .bind(owner)
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await
}

/// End `owner`'s leases `after` from now, keeping its claims: the next start takes them back,
/// another OMA may take them then (shutdown; `after` keeps its first poll apart from ours).
pub async fn hand_over_leases(pool: &MySqlPool, owner: &str, after: Duration) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE vma_polling_state SET lease_expires_at = NOW(3) + INTERVAL ? MICROSECOND \
         WHERE owner_instance = ? AND is_active = 1",
    )
    .bind(after.as_micros() as i64)
    .bind(owner)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The unfinished jobs `owner` holds an active claim on, and whether each lease is still live.
pub async fn my_leases(pool: &MySqlPool, owner: &str) -> Result<Vec<(String, bool)>, sqlx::Error> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT p.job_id, CAST(p.lease_expires_at > NOW(3) AS SIGNED) FROM vma_polling_state p \
         JOIN replication_jobs j ON j.id = p.job_id \
         WHERE p.owner_instance = ? AND p.is_active = 1 AND j.status IN ({})",
        active_status_sql_list()
    )))
    .bind(owner)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? == 1))).collect()
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
