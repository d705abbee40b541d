-- Revert job sheet task 3.1.2: the recovery metadata columns and their index.
DROP INDEX IF EXISTS idx_replication_jobs_recovery ON replication_jobs;
ALTER TABLE replication_jobs
    DROP COLUMN IF EXISTS polling_restarted_at,
    DROP COLUMN IF EXISTS vma_validated_at,
    DROP COLUMN IF EXISTS recovery_method,
    DROP COLUMN IF EXISTS recovery_attempted_at,
    DROP COLUMN IF EXISTS recovery_attempted;
