-- Context recomputation looks up a VM's jobs by (context, status). Without this index MariaDB
-- answers "this context's completed jobs" from idx_replication_jobs_status, scanning every
-- completed job in the table: finalizing thousands of jobs became quadratic.
CREATE INDEX IF NOT EXISTS idx_replication_jobs_context_status ON replication_jobs (vm_context_id, status, created_at);
