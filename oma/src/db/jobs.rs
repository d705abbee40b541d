//! Reading jobs: one job as the API shows it, every unfinished job with its polling state (what
//! recovery and the health monitor start from), NBD export names, counts; and the recovery
//! metadata written for jobs that go on.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};

use super::{push_id_list, BATCH_ROWS};
use crate::decision::{DiskFacts, DiskState, JobFacts};
use crate::domain::{active_status_sql_list, nbd_export_name, JobStatus, RecoveryMethod, ReplicationType};

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
    pub replication_type: ReplicationType,
    pub status: JobStatus,
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
    /// A multi-disk job: the disks the OMA has seen copied (the VMA reports each one completed).
    pub disks_completed: i32,
}

const JOB_COLUMNS: &str = "id, vm_context_id, source_vm_id, source_vm_name, source_vm_path, vcenter_host, \
    datacenter, replication_type, status, progress_percent, current_operation, bytes_transferred, total_bytes, \
    transfer_speed_bps, error_message, nbd_export_name, vma_sync_type, vma_current_phase, vma_throughput_mbps, \
    vma_eta_seconds, vma_last_poll_at, vma_error_classification, vma_error_details, setup_progress_percent, \
    created_at, updated_at, started_at, completed_at, recovery_attempted, recovery_attempted_at, recovery_method, \
    vma_validated_at, polling_restarted_at, disks_completed";

pub async fn get_job(pool: &MySqlPool, id: &str) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {JOB_COLUMNS} FROM replication_jobs WHERE id = ?")))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub async fn recent_jobs_for_context(
    pool: &MySqlPool,
    context_id: &str,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS} FROM replication_jobs WHERE vm_context_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
    )))
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
    /// Its disks' capacities in unit order and how far a multi-disk copy got.
    pub disks: DiskFacts,
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
            disks: self.disks.clone(),
        }
    }

    /// Take on what was learned about the job ([`JobFacts::observe_keep`]).
    pub fn set_facts(&mut self, facts: JobFacts) {
        self.status = facts.status;
        self.progress_percent = facts.progress_percent;
        self.bytes_transferred = facts.bytes_transferred;
        self.updated_at = facts.updated_at;
        self.vma_last_poll_at = facts.vma_last_poll_at;
        self.progress_changed_at = facts.progress_changed_at;
        self.started_polling_at = facts.polling_started_at;
        self.disks = facts.disks;
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
         p.owner_instance, CAST(COALESCE(p.is_active = 1 AND p.lease_expires_at > NOW(3), 0) AS SIGNED) AS lease_live, \
         j.disks_completed, j.disk_copy_seen, \
         CAST((SELECT GROUP_CONCAT(d.capacity_bytes ORDER BY d.unit_number, d.id) FROM vm_disks d \
             WHERE d.job_id = j.id) AS CHAR) AS disk_capacities \
         FROM replication_jobs j LEFT JOIN vma_polling_state p ON p.job_id = j.id \
         WHERE j.status IN ({}) {} ORDER BY j.updated_at ASC, j.id ASC",
        active_status_sql_list(),
        if only_job.is_some() { "AND j.id = ?" } else { "" }
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
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
            disks: DiskFacts {
                capacities: parse_capacities(row.try_get::<Option<String>, _>("disk_capacities")?.as_deref()),
                state: DiskState {
                    completed: row.try_get::<i32, _>("disks_completed")?.max(0) as u32,
                    in_copy: row.try_get::<bool, _>("disk_copy_seen")?,
                },
            },
        });
    }
    Ok(jobs)
}

/// `GROUP_CONCAT` of a job's disk capacities; a value that is not a number counts as unknown (0).
fn parse_capacities(list: Option<&str>) -> Vec<i64> {
    list.filter(|l| !l.is_empty())
        .map(|l| l.split(',').map(|c| c.trim().parse().unwrap_or(0)).collect())
        .unwrap_or_default()
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

/// Counts for status endpoints and the CLI, in one query.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobCounts {
    pub unfinished: i64,
    pub polled_by_live_owner: i64,
    pub never_polled: i64,
}

pub async fn job_counts(pool: &MySqlPool) -> Result<JobCounts, sqlx::Error> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) AS unfinished, \
         CAST(COALESCE(SUM(p.is_active = 1 AND p.lease_expires_at > NOW(3)), 0) AS SIGNED) AS live, \
         CAST(COALESCE(SUM(j.vma_last_poll_at IS NULL), 0) AS SIGNED) AS never \
         FROM replication_jobs j LEFT JOIN vma_polling_state p ON p.job_id = j.id WHERE j.status IN ({})",
        active_status_sql_list()
    )))
    .fetch_one(pool)
    .await?;
    Ok(JobCounts {
        unfinished: row.try_get("unfinished")?,
        polled_by_live_owner: row.try_get("live")?,
        never_polled: row.try_get("never")?,
    })
}
