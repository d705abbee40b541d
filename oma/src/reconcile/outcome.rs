//! What reconciling a job did ([`Outcome`]), who asked ([`Caller`]), the per-job report line,
//! and the recovery metadata a caller's decision leaves on the job. Plain data: no I/O.

use serde::Serialize;

use crate::db::RecoveryMark;
use crate::decision::{Decision, KeepReason};
use crate::domain::RecoveryMethod;
use crate::vma_client::Observation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Poller,
    StartupRecovery,
    HealthMonitor,
    Manual,
}

/// What reconciling one job did. Every outcome is counted in the recovery summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    PollingRestarted,
    /// Running on the VMA, recorded, but no poller here (CLI): the OMA's health monitor attaches it.
    StillRunning,
    NotFoundWithinGrace,
    UnreachableLeftForRetry,
    Completed,
    CompletedAssumed,
    FailedOnVma,
    Lost,
    UnreachableTimedOut,
    Stalled,
    /// Another writer finalized the job first.
    AlreadyFinal,
    /// A live poller of another OMA process owns the job.
    OwnedElsewhere,
    /// Dry run: nothing written.
    Planned,
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 14] = [
        Outcome::PollingRestarted,
        Outcome::StillRunning,
        Outcome::NotFoundWithinGrace,
        Outcome::UnreachableLeftForRetry,
        Outcome::Completed,
        Outcome::CompletedAssumed,
        Outcome::FailedOnVma,
        Outcome::Lost,
        Outcome::UnreachableTimedOut,
        Outcome::Stalled,
        Outcome::AlreadyFinal,
        Outcome::OwnedElsewhere,
        Outcome::Planned,
        Outcome::Error,
    ];

    /// The job is finished (here or by another writer): nobody polls it any more.
    pub fn ends_job(self) -> bool {
        matches!(
            self,
            Outcome::Completed
                | Outcome::CompletedAssumed
                | Outcome::FailedOnVma
                | Outcome::Lost
                | Outcome::UnreachableTimedOut
                | Outcome::Stalled
                | Outcome::AlreadyFinal
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::PollingRestarted => "polling_restarted",
            Outcome::StillRunning => "still_running",
            Outcome::NotFoundWithinGrace => "not_found_within_grace",
            Outcome::UnreachableLeftForRetry => "unreachable_left_for_retry",
            Outcome::Completed => "completed",
            Outcome::CompletedAssumed => "completed_assumed",
            Outcome::FailedOnVma => "failed_on_vma",
            Outcome::Lost => "lost",
            Outcome::UnreachableTimedOut => "unreachable_timed_out",
            Outcome::Stalled => "stalled",
            Outcome::AlreadyFinal => "already_final",
            Outcome::OwnedElsewhere => "owned_elsewhere",
            Outcome::Planned => "planned",
            Outcome::Error => "error",
        }
    }
}

/// A short description of a decision, for reports and dry runs.
pub fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Keep { reason: KeepReason::Running, .. } => "keep polling (running on VMA)".into(),
        Decision::Keep { reason: KeepReason::NotFoundWithinGrace, .. } => {
            "keep polling (not found, within grace)".into()
        }
        Decision::Keep { reason: KeepReason::UnreachableRecent, .. } => {
            "leave for retry (VMA unreachable, job recent)".into()
        }
        Decision::Keep { reason: KeepReason::DisksPending { completed, of }, .. } => {
            format!("keep polling ({completed} of {of} disks copied)")
        }
        Decision::Complete { assumed: false, .. } => "mark completed".into(),
        Decision::Complete { assumed: true, .. } => "mark completed (assumed: not found above threshold)".into(),
        Decision::Fail { class, .. } => format!("mark failed ({})", class.as_str()),
    }
}

/// The per-job line of a recovery report.
#[derive(Debug, Clone, Serialize)]
pub struct JobReport {
    pub job_id: String,
    pub vm_name: String,
    pub status: String,
    pub progress_percent: f64,
    pub vma_status: &'static str,
    pub decision: String,
    pub outcome: Outcome,
}

pub(crate) fn recovery_mark(
    caller: Caller,
    observation: &Observation,
    polling_restarted: bool,
) -> Option<RecoveryMark> {
    let vma_validated = !matches!(observation, Observation::Unavailable { .. });
    let method = match caller {
        Caller::Poller => return None,
        Caller::Manual => RecoveryMethod::Manual,
        _ if vma_validated => RecoveryMethod::VmaValidated,
        _ => RecoveryMethod::Timeout,
    };
    Some(RecoveryMark { method, vma_validated, polling_restarted })
}
