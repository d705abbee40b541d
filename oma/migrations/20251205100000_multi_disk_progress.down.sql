-- Revert the multi-disk counters; an OMA of the previous version never read them.
ALTER TABLE replication_jobs
    DROP COLUMN IF EXISTS disks_completed,
    DROP COLUMN IF EXISTS disk_copy_seen;
