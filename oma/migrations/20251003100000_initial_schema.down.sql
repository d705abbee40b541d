-- Revert the initial schema: every table it made, children before parents. The tables of later
-- migrations are gone by then (their down scripts run first).
DROP TABLE IF EXISTS vm_disks;
DROP TABLE IF EXISTS ossea_volumes;
DROP TABLE IF EXISTS replication_jobs;
DROP TABLE IF EXISTS vm_replication_contexts;
