//! One scenario's world: a fresh database, its own sim-vma and its own `oma-api` processes on
//! free ports. Jobs are seeded as a previous OMA would have left them, with ages made by past
//! timestamps. `teardown` stops and removes everything, also after a failure.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{json, Value};
use sim_vma::{ControlClient, SimConfig, SimVma};

use crate::mariadb::TestDatabase;
use crate::oma_process::{OmaConfig, OmaProcess};

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
    pub n_disks: usize,
}

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
            n_disks: 1,
        }
    }
}

pub struct Lab {
    pub name: String,
    pub db: Option<TestDatabase>,
    pub sim: Option<SimVma>,
    pub control: ControlClient,
    pub omas: Vec<OmaProcess>,
    pub http: reqwest::Client,
}

impl Lab {
    pub async fn new(name: &str) -> anyhow::Result<Lab> {
        let db = TestDatabase::create().await?;
        let sim = SimVma::start(SimConfig::default()).await?;
        let control = ControlClient::new(&sim.control_url());
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Lab { name: name.to_string(), db: Some(db), sim: Some(sim), control, omas: Vec::new(), http })
    }

    pub fn db(&self) -> &TestDatabase {
        self.db.as_ref().expect("database present until teardown")
    }

    pub fn pool(&self) -> &sqlx::MySqlPool {
        &self.db().pool
    }

    pub fn sim(&self) -> &SimVma {
        self.sim.as_ref().expect("sim-vma present until teardown")
    }

    pub fn oma_config(&self) -> OmaConfig {
        OmaConfig::fast(&self.db().url, &self.sim().vma_url())
    }

    /// Start one more OMA process with `config` (see [`Lab::oma_config`]); returns its index.
    pub async fn start_oma_with(&mut self, config: OmaConfig) -> anyhow::Result<usize> {
        let name = format!("{}-oma{}", self.name, self.omas.len() + 1);
        let oma = OmaProcess::start(&name, config).await?;
        self.omas.push(oma);
        Ok(self.omas.len() - 1)
    }

    /// Like [`Lab::start_oma_with`], without waiting for the OMA to be ready.
    pub async fn launch_oma_with(&mut self, config: OmaConfig) -> anyhow::Result<usize> {
        let name = format!("{}-oma{}", self.name, self.omas.len() + 1);
        let oma = OmaProcess::launch(&name, config).await?;
        self.omas.push(oma);
        Ok(self.omas.len() - 1)
    }

    pub async fn start_oma(&mut self) -> anyhow::Result<usize> {
        let config = self.oma_config();
        self.start_oma_with(config).await
    }

    pub fn oma(&self) -> &OmaProcess {
        self.omas.first().expect("an OMA was started")
    }

    pub fn oma_mut(&mut self) -> &mut OmaProcess {
        self.omas.first_mut().expect("an OMA was started")
    }

    /// Insert a context, job, volumes and disks as a previous OMA left them. Returns export names.
    pub async fn seed_job(&self, job: &SeedJob) -> anyhow::Result<Vec<String>> {
        let pool = self.pool();
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
        for i in 0..job.n_disks {
            let volume_id = uuid::Uuid::new_v4().to_string();
            let vol = sqlx::query("INSERT INTO ossea_volumes (vm_context_id, volume_id, volume_name, size_gb, status) VALUES (?, ?, ?, 10, 'attached')")
                .bind(&ctx)
                .bind(&volume_id)
                .bind(format!("{}-disk-{i}", job.vm_name))
                .execute(pool)
                .await?
                .last_insert_id();
            sqlx::query("INSERT INTO vm_disks (vm_context_id, job_id, disk_id, unit_number, capacity_bytes, size_gb, ossea_volume_id) VALUES (?, ?, ?, ?, 10737418240, 10, ?)")
                .bind(&ctx)
                .bind(&job.id)
                .bind(format!("disk-{}", 2000 + i))
                .bind(i as i32)
                .bind(vol as i64)
                .execute(pool)
                .await?;
            names.push(oma::domain::nbd_export_name(&volume_id));
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

    /// Tell sim-vma about a job (by its id and export names).
    pub async fn vma_job(&self, id: &str, export_names: &[String], spec: Value) -> anyhow::Result<()> {
        let mut spec = spec;
        spec["export_names"] = json!(export_names);
        self.control.put_job_json(id, &spec).await?;
        Ok(())
    }

    pub async fn job(&self, id: &str) -> anyhow::Result<oma::db::JobRow> {
        oma::db::get_job(self.pool(), id).await?.ok_or_else(|| anyhow::anyhow!("job {id} is not in the database"))
    }

    pub async fn context_of(&self, job_id: &str) -> anyhow::Result<oma::db::ContextRow> {
        let job = self.job(job_id).await?;
        let ctx = job.vm_context_id.ok_or_else(|| anyhow::anyhow!("job {job_id} has no context"))?;
        oma::db::get_context(self.pool(), &ctx).await?.ok_or_else(|| anyhow::anyhow!("context {ctx} missing"))
    }

    /// Everything useful when an expectation fails: job rows, sim-vma journal, OMA log tails.
    pub async fn diagnostics(&self, job: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(id) = job {
            match self.job(id).await {
                Ok(row) => out.push_str(&format!(
                    "--- job row {id}:\n{}\n",
                    serde_json::to_string_pretty(&row).unwrap_or_default()
                )),
                Err(e) => out.push_str(&format!("--- job row {id}: {e}\n")),
            }
            if let Ok(Some(p)) = oma::db::polling_state(self.pool(), id).await {
                out.push_str(&format!(
                    "--- vma_polling_state {id}:\n{}\n",
                    serde_json::to_string(&p).unwrap_or_default()
                ));
            }
            if let Ok(stats) = self.control.stats(id).await {
                out.push_str(&format!(
                    "--- sim-vma stats {id}: {}\n",
                    serde_json::to_string(&stats).unwrap_or_default()
                ));
            }
        }
        if let Ok(j) = self.control.journal(job, 15).await {
            out.push_str("--- sim-vma journal (last 15):\n");
            for e in j["entries"].as_array().cloned().unwrap_or_default() {
                out.push_str(&format!(
                    "  {} {} {} → {} {}\n",
                    e["at"],
                    e["method"].as_str().unwrap_or(""),
                    e["path"].as_str().unwrap_or(""),
                    e["status"],
                    e["outcome"].as_str().unwrap_or("")
                ));
            }
        }
        for oma in &self.omas {
            out.push_str(&format!("--- {} log tail:\n{}\n", oma.name, oma.log.tail(100)));
        }
        out
    }

    /// Poll `check` until it returns `Ok(Some(_))`; on timeout, fail with what it last saw.
    pub async fn wait_until<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Result<T, String>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_seen;
        loop {
            match check().await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(seen)) => last_seen = seen,
                Err(e) => last_seen = format!("error: {e:#}"),
            }
            if Instant::now() >= deadline {
                bail!("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Wait until a job's status is `status`.
    pub async fn wait_for_status(
        &self,
        job_id: &str,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<oma::db::JobRow> {
        self.wait_until(&format!("job {job_id} to be {status}"), timeout, || async {
            let row = self.job(job_id).await?;
            Ok(if row.status.as_str() == status {
                Ok(row)
            } else {
                Err(format!(
                    "status={} progress={} class={:?}",
                    row.status, row.progress_percent, row.vma_error_classification
                ))
            })
        })
        .await
    }

    /// Stop every process, the simulator, and drop the database.
    pub async fn teardown(mut self) {
        for oma in &mut self.omas {
            if oma.is_running() {
                let _ = oma.kill().await;
            }
        }
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
        if let Some(db) = self.db.take() {
            db.drop_database().await;
        }
    }
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
        names.extend(volume_ids.iter().map(|v| oma::domain::nbd_export_name(v)));
    }
    Ok(names)
}
