-- Release manifest v2.31: operation summary for GUI visibility. The initial schema already
-- creates it; this keeps the manifest's migration in the history and is a no-op there.
ALTER TABLE vm_replication_contexts ADD COLUMN IF NOT EXISTS last_operation_summary JSON NULL;
