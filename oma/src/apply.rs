//! One idempotent per-job reconcile: ask the VMA, decide (pure), apply. Called by the startup
//! recovery, the health monitor, the manual trigger and the CLI; the poller shares the final half.

use serde::Serialize;
use tracing::{info, warn};

use crate::db::{self, Finalization, Finalized, RecoveryMark, UnfinishedJob};
use crate::domain::{FailureClass, JobStatus, RecoveryMethod};
use crate::poller::Poller;
use crate::reconcile::{decide, minutes_since, Decision, KeepReason};
use crate::shared::Shared;
use crate::vma_client::{LookupKey, Observation};

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

fn recovery_mark(caller: Caller, observation: &Observation, polling_restarted: bool) -> Option<RecoveryMark> {
    let vma_validated = !matches!(observation, Observation::Unavailable { .. });
    let method = match caller {
        Caller::Poller => return None,
        Caller::Manual => RecoveryMethod::Manual,
        _ if vma_validated => RecoveryMethod::VmaValidated,
        _ => RecoveryMethod::Timeout,
    };
    Some(RecoveryMark { method, vma_validated, polling_restarted })
}

/// Reconcile one unfinished job with the VMA's answer. Never panics; DB errors become `Error`.
#[tracing::instrument(skip_all, fields(job_id = %job.id))]
pub async fn reconcile_job(
    shared: &Shared,
    poller: Option<&Poller>,
    job: &UnfinishedJob,
    caller: Caller,
    dry_run: bool,
) -> JobReport {
    let now = shared.clock.now();
    let stagnant = minutes_since(now, job.updated_at);
    info!(
        "🔄 Processing job: {} ({}) - stagnant: {:.1} min, total age: {:.1} min",
        job.id,
        job.source_vm_name,
        stagnant,
        minutes_since(now, job.created_at)
    );
    info!("🔍 Checking VMA status for job {} ({})", job.id, job.source_vm_name);
    if !job.export_names.is_empty() {
        info!("🔗 Found {} NBD export names for job {}, trying progress API", job.export_names.len(), job.id);
    }
    let lookup = shared.vma.lookup(&job.id, &job.export_names, None).await;
    let observation = lookup.observation;
    match (&lookup.via, &observation) {
        (Some(LookupKey::ExportName(name)), _) => info!("✅ Got VMA response via NBD export name {name}"),
        (Some(LookupKey::JobId), _) => info!("✅ Got VMA response via job ID for {}", job.id),
        (None, Observation::Unavailable { kind, detail }) => {
            warn!("❌ VMA unreachable for job {}: {} ({})", job.id, detail, kind.as_str())
        }
        (None, Observation::NotFound { http200: false }) => {
            info!("📋 Job {} not found on VMA (404) - likely completed or lost", job.id)
        }
        (None, Observation::NotFound { http200: true }) => {
            info!("📋 Job {} not found on VMA (HTTP 200 'not found') - likely completed or lost", job.id)
        }
        _ => {}
    }
    if let Observation::Failed { message, .. } = &observation {
        warn!("❌ VMA reports job failed: {message}");
    }
    let decision = decide(&job.facts(), &observation, shared.clock.now(), &shared.reconcile);
    info!(
        "🎯 Recovery decision for job {}: VMA status={}, stagnant={:.1} min",
        job.id,
        observation.status_word(),
        stagnant
    );
    let outcome = if dry_run {
        info!("🧪 DRY RUN: job {} would be: {}", job.id, describe(&decision));
        Outcome::Planned
    } else {
        apply_decision(shared, poller, job, &observation, &decision, lookup.via, caller).await
    };
    if caller != Caller::Poller && !dry_run {
        shared.metrics.recovery(outcome.as_str());
    }
    JobReport {
        job_id: job.id.clone(),
        vm_name: job.source_vm_name.clone(),
        status: job.status.as_str().to_string(),
        progress_percent: job.progress_percent,
        vma_status: observation.status_word(),
        decision: describe(&decision),
        outcome,
    }
}

async fn apply_decision(
    shared: &Shared,
    poller: Option<&Poller>,
    job: &UnfinishedJob,
    observation: &Observation,
    decision: &Decision,
    via: Option<LookupKey>,
    caller: Caller,
) -> Outcome {
    let Decision::Keep { reason, progress, progress_changed } = decision else {
        return finalize(shared, poller, &job.id, job.progress_percent, observation, decision, caller).await;
    };
    let minutes = minutes_since(shared.clock.now(), job.facts().last_contact());
    match reason {
        KeepReason::Running => info!(
            "✅ Job {} still running on VMA ({:.1}%) - restarting polling",
            job.id,
            progress.as_ref().map(|p| p.percentage).unwrap_or(job.progress_percent)
        ),
        KeepReason::NotFoundWithinGrace => {
            info!("⏳ Job {} not found on VMA yet - within grace period, polling continues", job.id)
        }
        KeepReason::UnreachableRecent => {
            warn!("⏳ Job {} - VMA unreachable but job is recent ({:.1} min) - leaving for retry", job.id, minutes)
        }
    }
    let mut claimed = false;
    if let Some(poller) = poller {
        match db::claim_polling(&shared.pool, &job.id, &shared.instance_id, shared.settings.lease_ttl()).await {
            Ok(true) => claimed = true,
            Ok(false) => {
                info!("Job {} is polled by another live OMA instance - leaving it to that poller", job.id);
                return Outcome::OwnedElsewhere;
            }
            Err(e) => {
                warn!("⚠️ Failed to restart polling for job {}: {}", job.id, e);
                return Outcome::Error;
            }
        }
        let mut tracked = job.clone();
        if let Some(p) = progress {
            tracked.progress_percent = tracked.progress_percent.max(p.percentage);
            tracked.bytes_transferred = p.bytes_transferred;
            tracked.vma_last_poll_at = Some(shared.clock.now());
            if *progress_changed {
                tracked.progress_changed_at = Some(shared.clock.now());
            }
        }
        if tracked.started_polling_at.is_none() {
            tracked.started_polling_at = Some(shared.clock.now());
        }
        poller.track(&tracked, via, true);
    }
    let mark = recovery_mark(caller, observation, claimed);
    if let Err(e) = db::record_keep(&shared.pool, &job.id, progress.as_ref(), *progress_changed, mark).await {
        warn!("❌ Failed to recover job {}: {}", job.id, e);
        return Outcome::Error;
    }
    match (reason, claimed) {
        (KeepReason::Running, true) => {
            info!("🚀 Successfully restarted VMA progress polling for job {}", job.id);
            Outcome::PollingRestarted
        }
        (KeepReason::Running, false) => Outcome::StillRunning,
        (KeepReason::NotFoundWithinGrace, _) => Outcome::NotFoundWithinGrace,
        (KeepReason::UnreachableRecent, _) => Outcome::UnreachableLeftForRetry,
    }
}

/// Apply a final decision (complete or fail) and log it in the guide's words.
pub async fn finalize(
    shared: &Shared,
    poller: Option<&Poller>,
    job_id: &str,
    progress_percent: f64,
    observation: &Observation,
    decision: &Decision,
    caller: Caller,
) -> Outcome {
    let mark = recovery_mark(caller, observation, false);
    let threshold = shared.reconcile.not_found_complete_above;
    let (fin, outcome) = match decision {
        Decision::Complete { assumed: false, progress } => {
            info!(
                "✅ Job {} completed on VMA ({:.1}%) - finalizing",
                job_id,
                progress.as_ref().map(|p| p.percentage).unwrap_or(100.0)
            );
            (Finalization::completed(progress.clone(), mark), Outcome::Completed)
        }
        Decision::Complete { assumed: true, .. } => {
            info!("✅ Job {job_id} not found on VMA but was >{threshold:.0}% complete - assuming completed");
            (Finalization::completed(None, mark), Outcome::CompletedAssumed)
        }
        Decision::Fail { class, message, details } => {
            let outcome = match class {
                FailureClass::VmaReportedFailure => {
                    warn!("❌ Job {job_id} failed on VMA - marking as failed with VMA error");
                    Outcome::FailedOnVma
                }
                FailureClass::JobLost => {
                    warn!(
                        "❌ Job {job_id} not found on VMA and was <{threshold:.0}% complete - marking as lost (at {progress_percent:.1}%)"
                    );
                    Outcome::Lost
                }
                FailureClass::VmaUnreachableTimeout => {
                    warn!("❌ Job {job_id} - VMA unreachable and job is old - marking as failed: {message}");
                    Outcome::UnreachableTimedOut
                }
                FailureClass::VmaStalled => {
                    warn!("❌ Job {job_id} stalled on VMA - marking as failed: {message}");
                    Outcome::Stalled
                }
                FailureClass::ReplicateRejected => Outcome::FailedOnVma,
            };
            let fin = Finalization::failed(JobStatus::Failed, *class, message.clone(), details.clone(), mark);
            (fin, outcome)
        }
        Decision::Keep { .. } => unreachable!("finalize is only called with final decisions"),
    };
    let result = db::finalize_job(&shared.pool, job_id, &fin).await;
    if let Some(poller) = poller {
        poller.untrack(job_id);
    }
    match result {
        Ok(Finalized::Done { context_id }) => {
            shared.metrics.finalized(fin.status.as_str());
            if fin.status == JobStatus::Completed {
                info!("✅ Job {job_id} marked as completed");
            } else {
                warn!("❌ Job {} marked as failed: {}", job_id, fin.error_message.as_deref().unwrap_or(""));
            }
            if let Some(ctx) = context_id {
                info!("✅ Cleared current_job_id for VM context {ctx} - new operations now allowed");
            }
            outcome
        }
        Ok(Finalized::AlreadyFinal) => {
            info!("Job {job_id} was already finalized by another writer - nothing to do");
            Outcome::AlreadyFinal
        }
        Err(e) => {
            warn!("❌ Failed to recover job {job_id}: {e}");
            Outcome::Error
        }
    }
}
