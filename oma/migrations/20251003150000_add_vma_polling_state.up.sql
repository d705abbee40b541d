-- Job sheet task 3.2, made real: polling state survives restarts, and a lease with an owner
-- makes sure two OMA processes never poll the same job.
CREATE TABLE IF NOT EXISTS vma_polling_state (
    job_id             VARCHAR(191) NOT NULL PRIMARY KEY,
    owner_instance     VARCHAR(128) NOT NULL,
    lease_expires_at   TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    started_polling_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    last_poll_at       TIMESTAMP(3) NULL DEFAULT NULL,
    last_success_at    TIMESTAMP(3) NULL DEFAULT NULL,
    consecutive_errors INT NOT NULL DEFAULT 0,
    last_error_message TEXT NULL,
    polls_total        BIGINT NOT NULL DEFAULT 0,
    polls_failed       BIGINT NOT NULL DEFAULT 0,
    is_active          BOOLEAN NOT NULL DEFAULT TRUE,
    created_at         TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    updated_at         TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3) ON UPDATE CURRENT_TIMESTAMP(3),
    KEY idx_active_polling (is_active, lease_expires_at),
    KEY idx_polling_owner (owner_instance, is_active),
    CONSTRAINT fk_polling_state_job FOREIGN KEY (job_id) REFERENCES replication_jobs (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
