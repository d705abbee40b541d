//! Step definitions, one module per domain concept.

mod api;
mod jobs;
mod logs;
mod oma;
mod vma;

use std::time::Duration;

/// How long a step waits for a condition before failing with what it saw.
pub const WAIT: Duration = Duration::from_secs(10);
