//! Starting a replication: context, job, disks and volumes in one transaction, then the VMA's
//! `/api/v1/replicate` (no lock held across it), then `replicating` and polling.

use chrono::Utc;
use rand::RngExt;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use tracing::{info, warn};

use crate::db::{self, Finalization};
use crate::domain::{nbd_export_name, FailureClass, JobStatus, ReplicationType};
use crate::poller::Poller;
use crate::services::Services;
use crate::vma_client::{NbdTarget, ReplicateRequest};

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default)]
pub struct CreateMigrationRequest {
    pub source_vm: SourceVm,
    pub ossea_config_id: i64,
    pub replication_type: Option<ReplicationType>,
    pub target_network: Option<String>,
    pub vcenter_host: Option<String>,
    pub datacenter: Option<String>,
    pub start_replication: Option<bool>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct SourceVm {
    pub id: String,
    pub name: String,
    pub path: String,
    pub datacenter: String,
    pub disks: Vec<SourceDisk>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct SourceDisk {
    pub id: String,
    pub path: String,
    pub vmdk_path: String,
    pub size_gb: i64,
    pub capacity_bytes: i64,
    pub unit_number: Option<i32>,
    pub label: String,
    pub datastore: String,
    pub provisioning_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("{0}")]
    Invalid(String),
    #[error("VM has active replication job")]
    ActiveJob { job_id: String },
    #[error("VMA refused the replication: {0}")]
    VmaRefused(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

#[derive(Debug, Serialize)]
pub struct CreatedVolume {
    pub volume_id: String,
    pub volume_name: String,
    pub size_gb: i64,
    pub status: &'static str,
    pub nbd_export_name: String,
}

#[derive(Debug, Serialize)]
pub struct MigrationStartResult {
    pub job_id: String,
    pub context_id: String,
    pub status: &'static str,
    pub progress_percent: f64,
    pub source_vm: SourceVm,
    pub created_volumes: Vec<CreatedVolume>,
    pub started_at: chrono::DateTime<Utc>,
    pub message: &'static str,
}

/// Most disks of one VM a request may name.
pub const MAX_DISKS: usize = 64;

/// Longest text each request field may hold, in characters: the column it is stored in (or, for
/// the VM name, the volume name `<vm>-disk-<n>` built from it).
pub const FIELD_LIMITS: [(&str, usize); 12] = [
    ("source_vm.id", 255),
    ("source_vm.name", 240),
    ("source_vm.path", 500),
    ("source_vm.datacenter", 255),
    ("vcenter_host", 255),
    ("datacenter", 255),
    ("target_network", 255),
    ("disks[].id", 191),
    ("disks[].vmdk_path", 500),
    ("disks[].label", 255),
    ("disks[].datastore", 255),
    ("disks[].provisioning_type", 50),
];

fn limit_of(field: &str) -> usize {
    FIELD_LIMITS.iter().find(|(f, _)| *f == field).map(|(_, n)| *n).expect("a field with a limit")
}

impl CreateMigrationRequest {
    /// Every field checked against what its column can hold before anything is written: a bad
    /// request is a 400 naming the field and its limit, never a half-written job or a 500.
    pub fn validate(&self) -> Result<(), CreateError> {
        let missing: Vec<&str> = [
            ("source_vm.id", &self.source_vm.id),
            ("source_vm.name", &self.source_vm.name),
            ("source_vm.path", &self.source_vm.path),
        ]
        .into_iter()
        .filter(|(_, v)| v.trim().is_empty())
        .map(|(k, _)| k)
        .collect();
        if !missing.is_empty() {
            return Err(CreateError::Invalid(format!("required fields missing: {}", missing.join(", "))));
        }
        if self.ossea_config_id <= 0 || self.ossea_config_id > i32::MAX as i64 {
            return Err(CreateError::Invalid(format!(
                "ossea_config_id is required and must be a positive id up to {}",
                i32::MAX
            )));
        }
        let vm = &self.source_vm;
        let mut texts: Vec<(String, &str, usize)> = vec![
            ("source_vm.id".into(), &vm.id, limit_of("source_vm.id")),
            ("source_vm.name".into(), &vm.name, limit_of("source_vm.name")),
            ("source_vm.path".into(), &vm.path, limit_of("source_vm.path")),
            ("source_vm.datacenter".into(), &vm.datacenter, limit_of("source_vm.datacenter")),
        ];
        for (field, value) in [
            ("vcenter_host", &self.vcenter_host),
            ("datacenter", &self.datacenter),
            ("target_network", &self.target_network),
        ] {
            if let Some(v) = value {
                texts.push((field.into(), v, limit_of(field)));
            }
        }
        if vm.disks.len() > MAX_DISKS {
            return Err(CreateError::Invalid(format!(
                "source_vm.disks: {} disks; at most {MAX_DISKS}",
                vm.disks.len()
            )));
        }
        let mut disk_ids = std::collections::HashSet::new();
        for (i, d) in vm.disks.iter().enumerate() {
            if d.size_gb < 0 || d.capacity_bytes < 0 {
                return Err(CreateError::Invalid(format!("source_vm.disks[{i}]: sizes must not be negative")));
            }
            if !d.id.is_empty() && !disk_ids.insert(d.id.as_str()) {
                return Err(CreateError::Invalid(format!("source_vm.disks[{i}].id {:?} is given twice", d.id)));
            }
            for (name, value) in [
                ("id", &d.id),
                ("vmdk_path", &d.vmdk_path),
                ("path", &d.path),
                ("label", &d.label),
                ("datastore", &d.datastore),
                ("provisioning_type", &d.provisioning_type),
            ] {
                let limit = limit_of(&format!("disks[].{}", if name == "path" { "vmdk_path" } else { name }));
                texts.push((format!("source_vm.disks[{i}].{name}"), value, limit));
            }
        }
        for (field, value, limit) in texts {
            let chars = value.chars().count();
            if chars > limit {
                return Err(CreateError::Invalid(format!("{field} is {chars} characters long; at most {limit}")));
            }
            if value.contains('\0') {
                return Err(CreateError::Invalid(format!("{field} contains a NUL character")));
            }
        }
        Ok(())
    }
}

fn new_job_id() -> String {
    let suffix: u32 = rand::rng().random_range(0..0x100_0000);
    format!("job-{}-{suffix:06x}", Utc::now().format("%Y%m%d-%H%M%S%.3f"))
}

pub async fn create_replication(
    services: &Services,
    poller: &Poller,
    request: CreateMigrationRequest,
) -> Result<MigrationStartResult, CreateError> {
    request.validate()?;
    let vm = &request.source_vm;
    let vcenter = request.vcenter_host.clone().unwrap_or_else(|| "vcenter.local".to_string());
    let datacenter = request
        .datacenter
        .clone()
        .or_else(|| Some(vm.datacenter.clone()).filter(|d| !d.is_empty()))
        .unwrap_or_else(|| "datacenter".to_string());
    let job_id = new_job_id();
    // Before the row is visible: a recovery scan or health check running meanwhile must not take
    // the job for one a previous OMA left.
    let _starting = poller.starting(&job_id);
    let disks: Vec<SourceDisk> = if vm.disks.is_empty() {
        vec![SourceDisk { id: "disk-2000".into(), ..SourceDisk::default() }]
    } else {
        vm.disks.clone()
    };

    let mut tx = services.pool.begin().await?;
    // Readable and unique: names that differ only in characters left out here ("app_1",
    // "app.1", "日本語-VM", "中文-VM") must not map to one id.
    let candidate_ctx = format!(
        "ctx-{}-{}-{:06x}",
        vm.name.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').take(30).collect::<String>(),
        Utc::now().format("%Y%m%d-%H%M%S"),
        rand::rng().random_range(0..0x100_0000)
    );
    sqlx::query(
        "INSERT INTO vm_replication_contexts (context_id, vm_name, vmware_vm_id, vm_path, vcenter_host, datacenter) \
         VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE context_id = context_id",
    )
    .bind(&candidate_ctx)
    .bind(&vm.name)
    .bind(&vm.id)
    .bind(&vm.path)
    .bind(&vcenter)
    .bind(&datacenter)
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query(
        "SELECT context_id, current_job_id FROM vm_replication_contexts WHERE vm_name = ? AND vcenter_host = ? FOR UPDATE",
    )
    .bind(&vm.name)
    .bind(&vcenter)
    .fetch_one(&mut *tx)
    .await?;
    let context_id: String = row.try_get("context_id")?;
    let current: Option<String> = row.try_get("current_job_id")?;
    if let Some(job_id) = current {
        tx.rollback().await?;
        return Err(CreateError::ActiveJob { job_id });
    }
    sqlx::query(
        "INSERT INTO replication_jobs (id, vm_context_id, source_vm_id, source_vm_name, source_vm_path, vcenter_host, \
         datacenter, replication_type, target_network, ossea_config_id, status, setup_progress_percent, current_operation) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 10, 'Initializing')",
    )
    .bind(&job_id)
    .bind(&context_id)
    .bind(&vm.id)
    .bind(&vm.name)
    .bind(&vm.path)
    .bind(&vcenter)
    .bind(&datacenter)
    .bind(request.replication_type.unwrap_or(ReplicationType::Initial).as_str())
    .bind(&request.target_network)
    .bind(request.ossea_config_id)
    .bind(JobStatus::Initializing.as_str())
    .execute(&mut *tx)
    .await?;
    let mut volumes = Vec::new();
    for (i, disk) in disks.iter().enumerate() {
        let volume_id = uuid::Uuid::new_v4().to_string();
        let size_gb = if disk.size_gb > 0 { disk.size_gb } else { disk.capacity_bytes / (1 << 30) };
        let volume_name = format!("{}-disk-{}", vm.name, i);
        let volume_pk = sqlx::query(
            "INSERT INTO ossea_volumes (vm_context_id, volume_id, volume_name, size_gb, status) VALUES (?, ?, ?, ?, 'attached')",
        )
        .bind(&context_id)
        .bind(&volume_id)
        .bind(&volume_name)
        .bind(size_gb)
        .execute(&mut *tx)
        .await?
        .last_insert_id();
        let disk_id = if disk.id.is_empty() { format!("disk-{}", 2000 + i) } else { disk.id.clone() };
        sqlx::query(
            "INSERT INTO vm_disks (vm_context_id, job_id, disk_id, vmdk_path, size_gb, datastore, unit_number, label, \
             capacity_bytes, provisioning_type, ossea_volume_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&context_id)
        .bind(&job_id)
        .bind(&disk_id)
        .bind(if disk.vmdk_path.is_empty() { &disk.path } else { &disk.vmdk_path })
        .bind(size_gb)
        .bind(&disk.datastore)
        .bind(disk.unit_number.unwrap_or(i as i32))
        .bind(&disk.label)
        .bind(disk.capacity_bytes)
        .bind(&disk.provisioning_type)
        .bind(volume_pk as i64)
        .execute(&mut *tx)
        .await?;
        volumes.push(CreatedVolume {
            nbd_export_name: nbd_export_name(&volume_id),
            volume_id,
            volume_name,
            size_gb,
            status: "attached",
        });
    }
    sqlx::query(
        "UPDATE vm_replication_contexts SET current_job_id = ?, current_status = 'replicating', \
         total_jobs_run = (SELECT COUNT(*) FROM replication_jobs WHERE vm_context_id = ?), \
         first_job_at = COALESCE(first_job_at, NOW(3)), last_job_at = NOW(3), last_status_change = NOW(3) \
         WHERE context_id = ?",
    )
    .bind(&job_id)
    .bind(&context_id)
    .bind(&context_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    info!(job_id = %job_id, context_id = %context_id, vm = %vm.name, "Replication job created");
    if crate::failpoint::active("create-pause") {
        // Tests widen the window between the row's commit and its tracking.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }

    let request_body = ReplicateRequest {
        job_id: job_id.clone(),
        vcenter: vcenter.clone(),
        username: String::new(),
        password: String::new(),
        vm_paths: vec![vm.path.clone()],
        oma_url: format!("http://{}", services.settings.listen),
        nbd_targets: volumes
            .iter()
            .enumerate()
            .map(|(i, v)| NbdTarget {
                device_path: format!("nbd://127.0.0.1:10808/{}", v.nbd_export_name),
                vmware_disk_key: format!("200{i}"),
            })
            .collect(),
    };
    if let Err(e) = services.vma.replicate(&request_body).await {
        warn!(job_id = %job_id, "VMA /replicate failed: {e}");
        let fin = Finalization::failed(
            JobStatus::ReplicationFailed,
            FailureClass::ReplicateRejected,
            e.to_string(),
            None,
            None,
        );
        if let Err(db_err) = db::finalize_job(&services.pool, &job_id, &fin).await {
            warn!(job_id = %job_id, "could not mark the job replication_failed: {db_err}");
        }
        return Err(CreateError::VmaRefused(e.to_string()));
    }
    sqlx::query(
        "UPDATE replication_jobs SET status = ?, started_at = NOW(3), updated_at = NOW(3), \
         setup_progress_percent = 85, current_operation = 'Starting replication', nbd_export_name = ? \
         WHERE id = ? AND status = ?",
    )
    .bind(JobStatus::Replicating.as_str())
    .bind(volumes.first().map(|v| v.nbd_export_name.clone()))
    .bind(&job_id)
    .bind(JobStatus::Initializing.as_str())
    .execute(&services.pool)
    .await?;
    let claimed_at = tokio::time::Instant::now();
    let claimed = db::claim_polling_many(
        &services.pool,
        std::slice::from_ref(&job_id),
        &services.instance_id,
        services.settings.lease_ttl(),
    )
    .await?;
    if claimed.contains(&job_id) {
        let mut jobs = db::load_unfinished(&services.pool, Some(&job_id)).await?;
        db::attach_export_names(&services.pool, &mut jobs).await?;
        if let Some(job) = jobs.first() {
            // Nobody asked the VMA about it yet: poll at once.
            poller.track(job, None, false, claimed_at);
        }
    }
    info!(job_id = %job_id, "🚀 Replication started on VMA - polling started");
    Ok(MigrationStartResult {
        job_id,
        context_id,
        status: "replicating",
        progress_percent: 0.0,
        source_vm: request.source_vm,
        created_volumes: volumes,
        started_at: Utc::now(),
        message: "Replication job started successfully",
    })
}
