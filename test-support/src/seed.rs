//! Jobs as a previous OMA left them in the database: a VM context, the job with ages made by past
//! timestamps (never by waiting), its volumes and disks, and the polling row of an OMA that died.
//! Plain SQL against the OMA's schema, so oma's own tests and the acceptance harness seed alike.

use sqlx::MySqlPool;

/// The VMA's NBD export name of a volume (`oma::domain::nbd_export_name`; oma's tests check the
/// two agree).
pub fn export_name(volume_id: &str) -> String {
    format!("migration-vol-{volume_id}")
}

/// A job as a previous OMA run left it in the database.
#[derive(Debug, Clone)]
pub struct SeedJob {
    pub id: String,
    pub vm_name: String,
    pub status: String,
    pub progress_percent: f64,
    pub bytes_transferred: i64,
    pub created_minutes_ago: f64,
    pub updated_minutes_ago: f64,
    pub last_poll_minutes_ago: Option<f64>,
    pub progress_changed_minutes_ago: Option<f64>,
    /// A `vma_polling_state` row of a dead OMA, polling since this long ago.
    pub polling_started_minutes_ago: Option<f64>,
    /// Each disk's capacity in bytes, in unit order (one 10 GiB disk unless set).
    pub disk_bytes: Vec<i64>,
}

/// The capacity of a seeded disk unless the job says otherwise.
pub const DISK_BYTES: i64 = 10 * 1024 * 1024 * 1024;

impl SeedJob {
    pub fn replicating(id: &str, progress: f64, updated_minutes_ago: f64) -> SeedJob {
        SeedJob {
            id: id.to_string(),
            vm_name: format!("vm-{id}"),
            status: "replicating".into(),
            progress_percent: progress,
            bytes_transferred: (progress * 1e8) as i64,
            created_minutes_ago: updated_minutes_ago + 5.0,
            updated_minutes_ago,
            last_poll_minutes_ago: Some(updated_minutes_ago),
            progress_changed_minutes_ago: Some(updated_minutes_ago),
            polling_started_minutes_ago: Some(updated_minutes_ago + 4.0),
            disk_bytes: vec![DISK_BYTES],
        }
    }
}

/// Insert a context, job, volumes and disks as a previous OMA left them. Returns export names.
pub async fn seed_job(pool: &MySqlPool, job: &SeedJob) -> anyhow::Result<Vec<String>> {
    let ctx = format!("ctx-{}", job.vm_name);
    let us = |m: f64| (m * 60_000_000.0) as i64;
    sqlx::query(
        "INSERT INTO vm_replication_contexts (context_id, vm_name, vmware_vm_id, vm_path, vcenter_host, datacenter, \
         current_status, current_job_id, total_jobs_run) VALUES (?, ?, ?, ?, 'vcenter.local', 'DC1', 'replicating', NULL, 0) \
         ON DUPLICATE KEY UPDATE context_id = context_id",
    )
    .bind(&ctx)
    .bind(&job.vm_name)
    .bind(format!("vmware-{}", job.vm_name))
    .bind(format!("/DC1/vm/{}", job.vm_name))
    .execute(pool)
    .await?;
    sqlx::query(
        "INSERT INTO replication_jobs (id, vm_context_id, source_vm_id, source_vm_name, source_vm_path, vcenter_host, datacenter, \
         replication_type, status, progress_percent, bytes_transferred, total_bytes, current_operation, vma_current_phase, \
         created_at, updated_at, started_at, vma_last_poll_at, progress_changed_at, setup_progress_percent, ossea_config_id) \
         VALUES (?, ?, ?, ?, ?, 'vcenter.local', 'DC1', 'initial', ?, ?, ?, 10000000000, 'Transferring Data', 'Transfer', \
         NOW(3) - INTERVAL ? MICROSECOND, NOW(3) - INTERVAL ? MICROSECOND, NOW(3) - INTERVAL ? MICROSECOND, \
         IF(? IS NULL, NULL, NOW(3) - INTERVAL ? MICROSECOND), IF(? IS NULL, NULL, NOW(3) - INTERVAL ? MICROSECOND), 85, 1)",
    )
    .bind(&job.id)
    .bind(&ctx)
    .bind(format!("vmware-{}", job.vm_name))
    .bind(&job.vm_name)
    .bind(format!("/DC1/vm/{}", job.vm_name))
    .bind(&job.status)
    .bind(job.progress_percent)
    .bind(job.bytes_transferred)
    .bind(us(job.created_minutes_ago))
    .bind(us(job.updated_minutes_ago))
    .bind(us(job.created_minutes_ago))
    .bind(job.last_poll_minutes_ago.map(us))
    .bind(job.last_poll_minutes_ago.map(us))
    .bind(job.progress_changed_minutes_ago.map(us))
    .bind(job.progress_changed_minutes_ago.map(us))
    .execute(pool)
    .await?;
    let mut names = Vec::new();
    for (i, &bytes) in job.disk_bytes.iter().enumerate() {
        let volume_id = uuid::Uuid::new_v4().to_string();
        let gib = (bytes + (1 << 30) - 1) >> 30;
        let vol = sqlx::query("INSERT INTO ossea_volumes (vm_context_id, volume_id, volume_name, size_gb, status) VALUES (?, ?, ?, ?, 'attached')")
            .bind(&ctx)
            .bind(&volume_id)
            .bind(format!("{}-disk-{i}", job.vm_name))
            .bind(gib)
            .execute(pool)
            .await?
            .last_insert_id();
        sqlx::query("INSERT INTO vm_disks (vm_context_id, job_id, disk_id, unit_number, capacity_bytes, size_gb, ossea_volume_id) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&ctx)
            .bind(&job.id)
            .bind(format!("disk-{}", 2000 + i))
            .bind(i as i32)
            .bind(bytes)
            .bind(gib)
            .bind(vol as i64)
            .execute(pool)
            .await?;
        names.push(export_name(&volume_id));
    }
    sqlx::query("UPDATE vm_replication_contexts SET current_job_id = ?, total_jobs_run = total_jobs_run + 1 WHERE context_id = ?")
        .bind(&job.id)
        .bind(&ctx)
        .execute(pool)
        .await?;
    if let Some(m) = job.polling_started_minutes_ago {
        sqlx::query(
            "INSERT INTO vma_polling_state (job_id, owner_instance, lease_expires_at, started_polling_at, last_poll_at, is_active) \
             VALUES (?, 'oma-that-died', NOW(3) - INTERVAL 1 MINUTE, NOW(3) - INTERVAL ? MICROSECOND, ?, 1)",
        )
        .bind(&job.id)
        .bind(us(m))
        .bind(None::<chrono::DateTime<chrono::Utc>>)
        .execute(pool)
        .await?;
    }
    Ok(names)
}

/// Insert many replicating jobs (one context, volume and disk each) with multi-row statements.
/// Returns each job's export name. Used by the benchmarks.
pub async fn seed_jobs_bulk(
    pool: &sqlx::MySqlPool,
    ids: &[String],
    progress: f64,
    updated_minutes_ago: f64,
) -> anyhow::Result<Vec<String>> {
    use sqlx::QueryBuilder;
    let us = (updated_minutes_ago * 60_000_000.0) as i64;
    let mut names = Vec::with_capacity(ids.len());
    for (chunk_no, chunk) in ids.chunks(1000).enumerate() {
        let mut q: QueryBuilder<sqlx::MySql> = QueryBuilder::new(
            "INSERT INTO vm_replication_contexts (context_id, vm_name, vmware_vm_id, vm_path, vcenter_host, datacenter, current_status, current_job_id, total_jobs_run) ",
        );
        q.push_values(chunk, |mut b, id| {
            b.push_bind(format!("ctx-{id}"))
                .push_bind(format!("vm-{id}"))
                .push_bind(format!("vmware-{id}"))
                .push_bind(format!("/DC1/vm/{id}"))
                .push_bind("vcenter.local")
                .push_bind("DC1")
                .push_bind("replicating")
                .push_bind(id.clone())
                .push_bind(1);
        });
        q.build().execute(pool).await?;
        let mut q: QueryBuilder<sqlx::MySql> = QueryBuilder::new(
            "INSERT INTO replication_jobs (id, vm_context_id, source_vm_id, source_vm_name, source_vm_path, status, progress_percent, \
             bytes_transferred, total_bytes, vma_current_phase, created_at, updated_at, started_at, vma_last_poll_at, progress_changed_at) ",
        );
        q.push_values(chunk, |mut b, id| {
            b.push_bind(id.clone())
                .push_bind(format!("ctx-{id}"))
                .push_bind(format!("vmware-{id}"))
                .push_bind(format!("vm-{id}"))
                .push_bind(format!("/DC1/vm/{id}"))
                .push_bind("replicating")
                .push_bind(progress)
                .push_bind((progress * 1e8) as i64)
                .push_bind(10_000_000_000i64)
                .push_bind("Transfer");
            // created_at, updated_at, started_at, vma_last_poll_at, progress_changed_at
            for ago in [us + 300_000_000, us, us + 300_000_000, us, us] {
                b.push("NOW(3) - INTERVAL ").push_bind_unseparated(ago).push_unseparated(" MICROSECOND");
            }
        });
        q.build().execute(pool).await?;
        let base = 1_000_000 + (chunk_no * 1000) as i64;
        let volume_ids: Vec<String> = chunk.iter().map(|_| uuid::Uuid::new_v4().to_string()).collect();
        let mut q: QueryBuilder<sqlx::MySql> = QueryBuilder::new(
            "INSERT INTO ossea_volumes (id, vm_context_id, volume_id, volume_name, size_gb, status) ",
        );
        q.push_values(chunk.iter().zip(&volume_ids).enumerate(), |mut b, (i, (id, vol))| {
            b.push_bind(base + i as i64)
                .push_bind(format!("ctx-{id}"))
                .push_bind(vol.clone())
                .push_bind(format!("vol-{id}"))
                .push_bind(10)
                .push_bind("attached");
        });
        q.build().execute(pool).await?;
        let mut q: QueryBuilder<sqlx::MySql> = QueryBuilder::new("INSERT INTO vm_disks (vm_context_id, job_id, disk_id, unit_number, capacity_bytes, size_gb, ossea_volume_id) ");
        q.push_values(chunk.iter().enumerate(), |mut b, (i, id)| {
            b.push_bind(format!("ctx-{id}"))
                .push_bind(id.clone())
                .push_bind("disk-2000")
                .push_bind(0)
                .push_bind(10_737_418_240i64)
                .push_bind(10)
                .push_bind(base + i as i64);
        });
        q.build().execute(pool).await?;
        names.extend(volume_ids.iter().map(|v| export_name(v)));
    }
    Ok(names)
}
