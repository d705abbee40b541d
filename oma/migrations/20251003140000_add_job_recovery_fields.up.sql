-- Job sheet task 3.1: recovery metadata on every job a recovery decision touched.
ALTER TABLE replication_jobs
    ADD COLUMN IF NOT EXISTS recovery_attempted    BOOLEAN NOT NULL DEFAULT FALSE,
    ADD COLUMN IF NOT EXISTS recovery_attempted_at TIMESTAMP(3) NULL DEFAULT NULL,
    ADD COLUMN IF NOT EXISTS recovery_method       VARCHAR(50) NULL,
    ADD COLUMN IF NOT EXISTS vma_validated_at      TIMESTAMP(3) NULL DEFAULT NULL,
    ADD COLUMN IF NOT EXISTS polling_restarted_at  TIMESTAMP(3) NULL DEFAULT NULL;

CREATE INDEX IF NOT EXISTS idx_replication_jobs_recovery ON replication_jobs (recovery_attempted, status);
