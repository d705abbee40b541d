-- Multi-disk jobs (reference §10, defect 13): the VMA reports "completed" after each disk, so the
-- OMA counts the disks it has seen copied and finalizes only when every disk is done. Additive:
-- an older OMA runs on this schema and ignores the columns.
ALTER TABLE replication_jobs
    ADD COLUMN IF NOT EXISTS disks_completed INT NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS disk_copy_seen TINYINT(1) NOT NULL DEFAULT 0;
