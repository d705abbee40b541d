-- Core OMA schema: VM contexts, replication jobs, disks and volumes.
-- Column names follow the original system so the QC testing guide's SQL runs unchanged.
-- All timestamps are TIMESTAMP(3): stored in UTC, read in the session time zone, so
-- TIMESTAMPDIFF(..., col, NOW()) is right from any client.

CREATE TABLE IF NOT EXISTS vm_replication_contexts (
    context_id             VARCHAR(64)  NOT NULL PRIMARY KEY,
    vm_name                VARCHAR(255) NOT NULL,
    vmware_vm_id           VARCHAR(255) NOT NULL,
    vm_path                VARCHAR(500) NOT NULL,
    vcenter_host           VARCHAR(255) NOT NULL,
    datacenter             VARCHAR(255) NOT NULL,
    current_status         ENUM('discovered','replicating','ready_for_failover','failed_over_test',
                                'failed_over_live','completed','failed','cleanup_required')
                           NOT NULL DEFAULT 'discovered',
    current_job_id         VARCHAR(191) NULL,
    total_jobs_run         INT NOT NULL DEFAULT 0,
    successful_jobs        INT NOT NULL DEFAULT 0,
    failed_jobs            INT NOT NULL DEFAULT 0,
    last_successful_job_id VARCHAR(191) NULL,
    first_job_at           TIMESTAMP(3) NULL DEFAULT NULL,
    last_job_at            TIMESTAMP(3) NULL DEFAULT NULL,
    last_status_change     TIMESTAMP(3) NULL DEFAULT NULL,
    last_replication_at    TIMESTAMP(3) NULL DEFAULT NULL,
    last_operation_summary JSON NULL,
    created_at             TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at             TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY unique_vm_name_per_vcenter (vm_name, vcenter_host),
    KEY idx_current_status (current_status),
    KEY idx_current_job (current_job_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS replication_jobs (
    id                       VARCHAR(191) NOT NULL PRIMARY KEY,
    vm_context_id            VARCHAR(64)  NULL,
    source_vm_id             VARCHAR(255) NOT NULL,
    source_vm_name           VARCHAR(255) NOT NULL,
    source_vm_path           VARCHAR(500) NOT NULL,
    vcenter_host             VARCHAR(255) NOT NULL DEFAULT '',
    datacenter               VARCHAR(255) NOT NULL DEFAULT '',
    replication_type         VARCHAR(50)  NOT NULL DEFAULT 'initial',
    target_network           VARCHAR(255) NULL,
    ossea_config_id          INT NULL,
    status                   VARCHAR(50)  NOT NULL DEFAULT 'pending',
    progress_percent         DOUBLE NOT NULL DEFAULT 0,
    current_operation        VARCHAR(255) NULL,
    bytes_transferred        BIGINT NOT NULL DEFAULT 0,
    total_bytes              BIGINT NOT NULL DEFAULT 0,
    transfer_speed_bps       BIGINT NOT NULL DEFAULT 0,
    error_message            TEXT NULL,
    change_id                VARCHAR(255) NULL,
    previous_change_id       VARCHAR(255) NULL,
    snapshot_id              VARCHAR(255) NULL,
    nbd_export_name          VARCHAR(255) NULL,
    vma_sync_type            VARCHAR(50)  NULL,
    vma_current_phase        VARCHAR(100) NULL,
    vma_throughput_mbps      DOUBLE NOT NULL DEFAULT 0,
    vma_eta_seconds          INT NULL,
    vma_last_poll_at         TIMESTAMP(3) NULL DEFAULT NULL,
    vma_error_classification VARCHAR(50)  NULL,
    vma_error_details        TEXT NULL,
    setup_progress_percent   DOUBLE NOT NULL DEFAULT 0,
    progress_changed_at      TIMESTAMP(3) NULL DEFAULT NULL,
    created_at               TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at               TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    started_at               TIMESTAMP(3) NULL DEFAULT NULL,
    completed_at             TIMESTAMP(3) NULL DEFAULT NULL,
    KEY idx_replication_jobs_status (status),
    KEY idx_replication_jobs_context (vm_context_id, created_at),
    KEY idx_replication_jobs_vma_polling (status, vma_last_poll_at),
    KEY idx_replication_jobs_progress_timeout (status, updated_at),
    CONSTRAINT fk_replication_job_context FOREIGN KEY (vm_context_id)
        REFERENCES vm_replication_contexts (context_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

CREATE TABLE IF NOT EXISTS ossea_volumes (
    id           BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    vm_context_id VARCHAR(64) NULL,
    volume_id    VARCHAR(191) NOT NULL,
    volume_name  VARCHAR(255) NOT NULL,
    size_gb      BIGINT NOT NULL DEFAULT 0,
    device_path  VARCHAR(255) NULL,
    status       VARCHAR(50) NOT NULL DEFAULT 'creating',
    created_at   TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at   TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY idx_ossea_volumes_volume_id (volume_id),
    KEY idx_ossea_volumes_context (vm_context_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- One row per (job, disk): disks are not re-pointed to newer jobs, so every job keeps its
-- own export names (original defect: only a context's latest job resolved any).
CREATE TABLE IF NOT EXISTS vm_disks (
    id                BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    vm_context_id     VARCHAR(64) NULL,
    job_id            VARCHAR(191) NOT NULL,
    disk_id           VARCHAR(191) NOT NULL,
    vmdk_path         VARCHAR(500) NOT NULL DEFAULT '',
    size_gb           BIGINT NOT NULL DEFAULT 0,
    datastore         VARCHAR(255) NULL,
    unit_number       INT NOT NULL DEFAULT 0,
    label             VARCHAR(255) NULL,
    capacity_bytes    BIGINT NOT NULL DEFAULT 0,
    provisioning_type VARCHAR(50) NULL,
    ossea_volume_id   BIGINT NULL,
    created_at        TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at        TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    UNIQUE KEY uk_job_disk (job_id, disk_id),
    KEY idx_vm_disks_ossea_volume (ossea_volume_id),
    CONSTRAINT fk_vm_disks_job FOREIGN KEY (job_id) REFERENCES replication_jobs (id) ON DELETE CASCADE,
    CONSTRAINT fk_vm_disks_volume FOREIGN KEY (ossea_volume_id) REFERENCES ossea_volumes (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
