//! OMA job-recovery / VMA progress poller service on MariaDB (SPEC §2, §4).
//!
//! One pure decision ([`reconcile::decide`]) is applied by three callers: the [`poller`], the
//! startup [`recovery`] and the [`health_monitor`]; [`apply`] holds the shared per-job step.

pub mod api;
pub mod apply;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod health_monitor;
pub mod metrics;
mod poll_writes;
pub mod poller;
pub mod reconcile;
pub mod recovery;
pub mod replications;
pub mod sanitize;
pub mod shared;
pub mod startup;
pub mod telemetry;
pub mod vma_client;
