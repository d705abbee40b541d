//! One idempotent per-job reconcile: observe (ask the VMA), decide ([`crate::decision::decide`]),
//! apply (claims, progress, recovery metadata, finalization), and return what it decided. Called by
//! the startup recovery, the health monitor, the manual trigger and the CLI; the poller uses the
//! final half ([`finalize`]). It never tracks jobs itself: the jobs it claimed for this process come
//! back in [`Reconciled::claimed`] and the caller hands them to the poller, which owns tracking.

use tokio::time::Instant;

use futures::StreamExt;
use tracing::{info, warn};

mod finalize;
mod outcome;

pub use finalize::finalize;
pub use outcome::{describe, Caller, JobReport, Outcome};

use crate::db::{self, Finalization, UnfinishedJob};
use crate::decision::{decide, minutes_since, Decision, KeepReason};
use crate::services::Services;
use crate::vma_client::{LookupKey, Observation};
use finalize::{plan_final, report_final};
use outcome::recovery_mark;

/// What the VMA said about one job, and the decision.
struct Observed {
    job: UnfinishedJob,
    observation: Observation,
    via: Option<LookupKey>,
    decision: Decision,
}

/// What to do with the jobs that go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// Change nothing; report what would be done.
    DryRun,
    /// Write the decisions; leave polling to a running OMA (the CLI).
    Record,
    /// Write the decisions and claim polling of the running jobs for this process.
    RecordAndClaim,
}

/// A job this process now holds the polling lease of: the poller must track it.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job as just observed (progress and poll time from the VMA's answer).
    pub job: UnfinishedJob,
    /// The name the VMA answered under, asked first next time.
    pub via: Option<LookupKey>,
    /// When the claim statement was sent: the lease is good for `lease_use` from then.
    pub claimed_at: Instant,
}

/// What a reconcile of many jobs decided and did.
#[derive(Debug, Default)]
pub struct Reconciled {
    pub reports: Vec<JobReport>,
    pub claimed: Vec<Claimed>,
}

/// Reconcile unfinished jobs: ask the VMA about each (concurrently, bounded), decide (pure), then
/// apply the decisions in batches — claims, progress and recovery metadata for the jobs that go
/// on, one transaction per chunk for the jobs that end. Never panics; DB errors become `Error`.
pub async fn reconcile_many(services: &Services, jobs: Vec<UnfinishedJob>, caller: Caller, apply: Apply) -> Reconciled {
    let dry_run = apply == Apply::DryRun;
    let started = Instant::now();
    // Claim before asking: the VMA is only asked about a job by the process that holds its lease,
    // so a job another OMA's live poller holds is left to it, not polled by two OMAs at once.
    let (jobs, unasked, claimed_at) =
        if apply == Apply::RecordAndClaim { claim_first(services, jobs).await } else { (jobs, Vec::new(), started) };
    let observed: Vec<Observed> = futures::stream::iter(jobs)
        .map(|job| async move { observe(services, job).await })
        .buffer_unordered(services.settings.recovery_concurrency.max(1))
        .collect()
        .await;
    let asked = started.elapsed();
    let mut outcomes: Vec<Outcome> = vec![Outcome::Planned; observed.len()];
    let mut claimed_jobs = Vec::new();
    if !dry_run {
        let (finals, keeps): (Vec<usize>, Vec<usize>) =
            (0..observed.len()).partition(|i| observed[*i].decision.is_final());
        // Disjoint jobs: the two kinds of writes run side by side on their own connections.
        let claimed = (apply == Apply::RecordAndClaim).then_some(claimed_at);
        let (((kept, to_track), keep_time), (ended, final_time)) = tokio::join!(
            timed(apply_keeps(services, claimed, &observed, &keeps, caller)),
            timed(apply_finals(services, &observed, &finals, caller)),
        );
        claimed_jobs = to_track;
        for (i, outcome) in kept.into_iter().chain(ended) {
            outcomes[i] = outcome;
            // A claimed job that did not end (its finalization failed) stays ours: the poller
            // asks again within an interval and decides again.
            if outcome == Outcome::Error && finals.contains(&i) {
                if let Some(claimed_at) = claimed {
                    let o = &observed[i];
                    claimed_jobs.push(Claimed { job: o.job.clone(), via: o.via.clone(), claimed_at });
                }
            }
        }
        if observed.len() > 1 {
            info!(
                "⏱️ Reconciled {} jobs: asked the VMA in {} ms, then applied {} keeps in {} ms alongside {} finals in {} ms",
                observed.len(),
                asked.as_millis(),
                keeps.len(),
                keep_time.as_millis(),
                finals.len(),
                final_time.as_millis()
            );
        }
    }
    let mut reports: Vec<JobReport> = observed
        .iter()
        .zip(outcomes)
        .map(|(o, outcome)| {
            if dry_run {
                info!("🧪 DRY RUN: job {} would be: {}", o.job.id, describe(&o.decision));
            }
            JobReport {
                job_id: o.job.id.clone(),
                vm_name: o.job.source_vm_name.clone(),
                status: o.job.status.as_str().to_string(),
                progress_percent: o.job.progress_percent,
                vma_status: o.observation.status_word(),
                decision: describe(&o.decision),
                outcome,
            }
        })
        .collect();
    reports.extend(unasked);
    if !dry_run && caller != Caller::Poller {
        for r in &reports {
            services.metrics.recovery(r.outcome.as_str());
        }
    }
    Reconciled { reports, claimed: claimed_jobs }
}

/// Claim polling of `jobs` for this process before anyone asks the VMA about them. Returns the
/// jobs now ours, the reports of the others (held by another OMA's live poller, or all of them
/// when the claim failed), and when the claim was sent.
async fn claim_first(services: &Services, jobs: Vec<UnfinishedJob>) -> (Vec<UnfinishedJob>, Vec<JobReport>, Instant) {
    let began = Instant::now();
    if jobs.is_empty() {
        return (jobs, Vec::new(), began);
    }
    let ids: Vec<String> = jobs.iter().map(|j| j.id.clone()).collect();
    let claimed =
        db::claim_polling_many(&services.pool, &ids, &services.instance_id, services.settings.lease_ttl()).await;
    let (claimed, failure) = match claimed {
        Ok(c) => (c, None),
        Err(e) => {
            warn!("⚠️ Failed to restart polling for {} jobs: {e} - the next health check tries again", ids.len());
            (Default::default(), Some(e.to_string()))
        }
    };
    let (mine, others): (Vec<UnfinishedJob>, Vec<UnfinishedJob>) =
        jobs.into_iter().partition(|j| claimed.contains(&j.id));
    let unasked = others
        .into_iter()
        .map(|job| {
            let (decision, outcome) = match &failure {
                None => {
                    info!("Job {} is polled by another live OMA instance - leaving it to that poller", job.id);
                    ("left to the OMA that polls it".to_string(), Outcome::OwnedElsewhere)
                }
                Some(e) => (format!("not asked: polling could not be claimed ({e})"), Outcome::Error),
            };
            JobReport {
                job_id: job.id.clone(),
                vm_name: job.source_vm_name.clone(),
                status: job.status.as_str().to_string(),
                progress_percent: job.progress_percent,
                vma_status: "not_asked",
                decision,
                outcome,
            }
        })
        .collect();
    (mine, unasked, began)
}

#[tracing::instrument(skip_all, fields(job_id = %job.id))]
async fn observe(services: &Services, job: UnfinishedJob) -> Observed {
    let now = services.clock.now();
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
    let lookup = services.vma.lookup(&job.id, &job.export_names, None).await;
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
    let decision = decide(&job.facts(), &observation, services.clock.now(), &services.decision_config);
    info!(
        "🎯 Recovery decision for job {}: VMA status={}, stagnant={:.1} min",
        job.id,
        observation.status_word(),
        stagnant
    );
    Observed { job, observation, via: lookup.via, decision }
}

/// One line a disk a multi-disk job finished (the VMA reports each one `completed`): why the job
/// is not finalized although the VMA says so.
/// `copied`: from [`crate::decision::DiskFacts::copied_by`]; `of`: the job's count of disks.
pub fn log_disks_copied(job_id: &str, copied: std::ops::Range<u32>, of: u32) {
    for disk in copied {
        info!(
            "💽 Job {job_id}: disk {disk} of {of} copied - the VMA reports \"completed\" after each disk; \
             polling continues until all {of} disks are done"
        );
    }
}

/// A future's output and how long it took.
async fn timed<F: std::future::Future>(phase: F) -> (F::Output, std::time::Duration) {
    let t = Instant::now();
    let done = phase.await;
    (done, t.elapsed())
}

/// Jobs that go on: write progress and recovery metadata. `claimed`: they were all claimed for
/// this process at that instant (the poller tracks them). Returns each job's outcome and the jobs
/// to track.
async fn apply_keeps(
    services: &Services,
    claimed: Option<Instant>,
    observed: &[Observed],
    keeps: &[usize],
    caller: Caller,
) -> (Vec<(usize, Outcome)>, Vec<Claimed>) {
    if keeps.is_empty() {
        return (Vec::new(), Vec::new());
    }
    for &i in keeps {
        let o = &observed[i];
        let Decision::Keep { reason, progress, .. } = &o.decision else { continue };
        log_disks_copied(&o.job.id, o.job.disks.copied_by(&o.decision), o.job.disks.count());
        match reason {
            KeepReason::Running => info!(
                "✅ Job {} still running on VMA ({:.1}%) - restarting polling",
                o.job.id,
                progress.as_ref().map(|p| p.percentage).unwrap_or(o.job.progress_percent)
            ),
            KeepReason::NotFoundWithinGrace => {
                info!("⏳ Job {} not found on VMA yet - within grace period, polling continues", o.job.id)
            }
            KeepReason::UnreachableRecent => warn!(
                "⏳ Job {} - VMA unreachable but job is recent - leaving for retry (last contact {:.1} min ago)",
                o.job.id,
                minutes_since(services.clock.now(), o.job.facts().last_contact())
            ),
            KeepReason::DisksPending { completed, of } => {
                info!(
                    "⏳ Job {} completed on VMA for {completed} of {of} disks only - not finalized; polling continues",
                    o.job.id
                )
            }
        }
    }
    let mut to_track = Vec::new();
    let mut writes = Vec::new();
    let mut marks = Vec::new();
    let mut results = Vec::with_capacity(keeps.len());
    for &i in keeps {
        let o = &observed[i];
        let Decision::Keep { reason, progress, progress_changed, disks } = &o.decision else { continue };
        let owned = claimed.is_some();
        if let Some(claimed_at) = claimed {
            let mut tracked = o.job.clone();
            let now = services.clock.now();
            let mut facts = tracked.facts();
            facts.observe_keep(&o.decision, now);
            tracked.set_facts(facts);
            if tracked.started_polling_at.is_none() {
                tracked.started_polling_at = Some(now);
            }
            to_track.push(Claimed { job: tracked, via: o.via.clone(), claimed_at });
        }
        if let Some(p) = progress {
            writes.push(db::ProgressWrite {
                job_id: o.job.id.clone(),
                progress: p.clone(),
                progress_changed: *progress_changed,
                disks: *disks,
            });
        }
        if let Some(mark) = recovery_mark(caller, &o.observation, owned) {
            marks.push((o.job.id.clone(), mark));
        }
        results.push((
            i,
            match (reason, owned) {
                (KeepReason::Running | KeepReason::DisksPending { .. }, true) => Outcome::PollingRestarted,
                (KeepReason::Running | KeepReason::DisksPending { .. }, _) => Outcome::StillRunning,
                (KeepReason::NotFoundWithinGrace, _) => Outcome::NotFoundWithinGrace,
                (KeepReason::UnreachableRecent, _) => Outcome::UnreachableLeftForRetry,
            },
        ));
    }
    let written = async {
        db::write_progress_batch(&mut *services.pool.acquire().await?, &writes).await?;
        db::record_marks(&services.pool, &marks).await
    }
    .await;
    if let Err(e) = written {
        // The leases are ours all the same: the jobs are tracked, and their polls write again.
        warn!("❌ Failed to record recovery of {} jobs: {e}", results.len());
        return (results.into_iter().map(|(i, _)| (i, Outcome::Error)).collect(), to_track);
    }
    for (i, outcome) in &results {
        if *outcome == Outcome::PollingRestarted {
            info!("🚀 Successfully restarted VMA progress polling for job {}", observed[*i].job.id);
            // The job sheet's words for the same event (task 1.3.3, testing scenario 1).
            info!(job_id = %observed[*i].job.id, "✅ Restarted VMA progress polling (Job still active on VMA)");
        }
    }
    (results, to_track)
}

/// Jobs that end: finalize them in chunks, each chunk one transaction.
async fn apply_finals(
    services: &Services,
    observed: &[Observed],
    finals: &[usize],
    caller: Caller,
) -> Vec<(usize, Outcome)> {
    let mut items: Vec<(String, Finalization)> = Vec::with_capacity(finals.len());
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(finals.len());
    for &i in finals {
        let o = &observed[i];
        let (fin, outcome) =
            plan_final(services, &o.job.id, o.job.progress_percent, &o.observation, &o.decision, caller);
        items.push((o.job.id.clone(), fin));
        outcomes.push(outcome);
    }
    let results = db::finalize_jobs(&services.pool, &items).await;
    finals
        .iter()
        .zip(items.iter().zip(outcomes))
        .zip(results)
        .map(|((&i, ((job_id, fin), outcome)), result)| {
            (i, report_final(services, caller, job_id, fin, outcome, result.map_err(|e| e.to_string())))
        })
        .collect()
}
