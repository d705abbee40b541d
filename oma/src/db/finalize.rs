//! Ending a job exactly once: one transaction per chunk locks the jobs' VM contexts (in key
//! order) and the still-unfinished jobs, writes the final status, releases polling and recomputes
//! the contexts from their jobs, so the VM accepts a new replication at once.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row, Transaction};

use super::jobs::RecoveryMark;
use super::{push_id_list, retrying_lock_races};
use crate::domain::{active_status_sql_list, failed_status_sql_list, FailureClass, JobStatus};
use crate::vma_client::VmaProgress;

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
    let completed = format!("'{}'", JobStatus::Completed.as_str());
    let failed = failed_status_sql_list();
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
            WHEN EXISTS (SELECT 1 {jobs} AND j.status = {completed}) THEN 'ready_for_failover' \
            ELSE 'failed' END, \
         c.current_job_id = (SELECT j.id {jobs} AND j.status IN ({active}) ORDER BY j.created_at DESC, j.id DESC LIMIT 1), \
         c.total_jobs_run = (SELECT COUNT(*) {jobs}), \
         c.successful_jobs = (SELECT COUNT(*) {jobs} AND j.status = {completed}), \
         c.failed_jobs = (SELECT COUNT(*) {jobs} AND j.status IN ({failed})), \
         c.last_successful_job_id = (SELECT j.id {jobs} AND j.status = {completed} ORDER BY j.completed_at DESC, j.created_at DESC LIMIT 1), \
         c.last_replication_at = (SELECT MAX(j.completed_at) {jobs} AND j.status = {completed}), \
         c.last_operation_summary = v.summary, \
         c.last_status_change = NOW(3), c.updated_at = NOW(3)"
    ));
    qb.build().execute(&mut **tx).await?;
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
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {CONTEXT_COLUMNS} FROM vm_replication_contexts WHERE context_id = ?"
    )))
    .bind(context_id)
    .fetch_optional(pool)
    .await
}
