//! The final half of a reconcile: a complete or fail decision becomes a [`Finalization`], is
//! written, and is logged in the guide's words. The poller calls [`finalize`] for one job; the
//! reconcile plans a batch with [`plan_final`] and reports each result with [`report_final`].

use tracing::{info, warn};

use crate::db::{self, Finalization, Finalized};
use crate::decision::Decision;
use crate::domain::{FailureClass, JobStatus};
use crate::reconcile::outcome::{recovery_mark, Caller, Outcome};
use crate::services::Services;
use crate::vma_client::Observation;

/// Apply a final decision (complete or fail) for one job and log it in the guide's words.
/// `Outcome::Error` when the database did not take it (the caller decides again later).
pub async fn finalize(
    services: &Services,
    job_id: &str,
    progress_percent: f64,
    observation: &Observation,
    decision: &Decision,
    caller: Caller,
) -> Outcome {
    let (fin, outcome) = plan_final(services, job_id, progress_percent, observation, decision, caller);
    let result = db::finalize_job(&services.pool, job_id, &fin).await.map_err(|e| e.to_string());
    report_final(services, caller, job_id, &fin, outcome, result)
}

/// The finalization a final decision asks for, logged as the decision.
pub(super) fn plan_final(
    services: &Services,
    job_id: &str,
    progress_percent: f64,
    observation: &Observation,
    decision: &Decision,
    caller: Caller,
) -> (Finalization, Outcome) {
    let mark = recovery_mark(caller, observation, false);
    let threshold = services.decision_config.not_found_complete_above;
    match decision {
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
            (Finalization::failed(JobStatus::Failed, *class, message.clone(), details.clone(), mark), outcome)
        }
        Decision::Keep { .. } => unreachable!("plan_final is only called with final decisions"),
    }
}

/// Log and count what finalization did.
pub(super) fn report_final(
    services: &Services,
    caller: Caller,
    job_id: &str,
    fin: &Finalization,
    outcome: Outcome,
    result: Result<Finalized, String>,
) -> Outcome {
    match result {
        Ok(Finalized::Done { context_id }) => {
            services.metrics.finalized(fin.status.as_str());
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
        // The poller keeps the job tracked: its next poll decides and writes again. Untracked, it
        // would wait for the health monitor's next round (2 min by default) while the VMA has
        // long finished it.
        Err(e) if caller == Caller::Poller => {
            warn!("❌ Failed to finalize job {job_id} as {}: {e} - polling continues and retries", fin.status.as_str());
            Outcome::Error
        }
        Err(e) => {
            warn!("❌ Failed to recover job {job_id}: {e}");
            Outcome::Error
        }
    }
}
