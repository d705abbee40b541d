//! OMA job-recovery / VMA progress poller service on MariaDB (SPEC §2, §4).
//!
//! One pure decision ([`decision::decide`]) is reached the same way by every caller: the
//! [`poller`] for each poll, and [`reconcile`] (observe → decide → apply) for the startup
//! [`recovery`], the [`health_monitor`], the manual trigger and the `job-recovery` [`cli`].
//! [`startup`] builds the process and supervises its tasks; [`api`] serves HTTP.

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod decision;
pub mod domain;
pub mod failpoint;
pub mod health_monitor;
pub mod metrics;
pub mod poller;
pub mod reconcile;
pub mod recovery;
pub mod replications;
pub mod sanitize;
pub mod services;
pub mod startup;
pub mod telemetry;
pub mod vma_client;
