-- Revert the (context, status) index; idx_replication_jobs_context still serves the foreign key.
DROP INDEX IF EXISTS idx_replication_jobs_context_status ON replication_jobs;
