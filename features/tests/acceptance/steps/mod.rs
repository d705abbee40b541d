//! Step definitions, one module per domain concept.

mod api;
mod database_faults;
mod disks;
mod job_state;
mod logs;
mod oma;
mod polling;
mod replications;
mod seeding;
mod vma;

use std::time::Duration;

/// How long a step waits for a condition before failing with what it saw.
pub const WAIT: Duration = Duration::from_secs(10);
