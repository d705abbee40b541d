//! The one reconcile decision (SPEC §4.2): a pure function of (job facts, VMA observation, now,
//! config) used by the poller, the startup recovery, the health monitor and the CLI.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::domain::{FailureClass, JobStatus};
use crate::vma_client::{Observation, VmaProgress};

/// What the decision needs to know about a job row.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFacts {
    pub status: JobStatus,
    pub progress_percent: f64,
    pub bytes_transferred: i64,
    pub updated_at: DateTime<Utc>,
    pub vma_last_poll_at: Option<DateTime<Utc>>,
    /// Last time bytes or percent changed (for the stall rule).
    pub progress_changed_at: Option<DateTime<Utc>>,
    /// When polling of this job first began (kept across restarts), if it ever did.
    pub polling_started_at: Option<DateTime<Utc>>,
    /// The job's disks; a job with more than one is copied disk after disk ([`DiskFacts`]).
    pub disks: DiskFacts,
}

/// What the OMA knows of a job's disks. migratekit copies a VM's disks one after another under
/// one job id and reports `completed` at 100 % at the end of each (reference §10, defect 13), so
/// for a job with more than one disk a `completed` is counted against the disks, never taken as
/// the job's end until every disk is done.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DiskFacts {
    /// Each disk's capacity in bytes, in copy (unit number) order; 0 where unknown.
    pub capacities: Vec<i64>,
    /// Where the count of copied disks stands.
    pub state: DiskState,
}

/// How far a multi-disk copy got, as the OMA saw it; kept in `replication_jobs` across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskState {
    /// The first `completed` disks are copied.
    pub completed: u32,
    /// The disk after them was seen copying, so a `completed` now ends it rather than repeating
    /// the previous disk's (the VMA answers `completed` for a while between two disks).
    pub in_copy: bool,
}

impl DiskFacts {
    /// Copied one disk after another: completions are counted, not believed.
    pub fn multi(&self) -> bool {
        self.capacities.len() > 1
    }

    /// How many disks the job has.
    pub fn count(&self) -> u32 {
        self.capacities.len() as u32
    }

    /// The disks (numbered from 1) a decision taken on these facts counts newly copied.
    pub fn copied_by(&self, decision: &Decision) -> std::ops::Range<u32> {
        match decision {
            Decision::Keep { disks: Some(after), .. } => self.state.completed + 1..after.completed + 1,
            _ => 0..0,
        }
    }

    /// Every capacity is known.
    fn sized(&self) -> bool {
        self.capacities.iter().all(|c| *c > 0)
    }

    fn total(&self) -> i64 {
        self.capacities.iter().map(|c| (*c).max(0)).sum()
    }

    fn bytes_of_first(&self, n: u32) -> i64 {
        self.capacities.iter().take(n as usize).map(|c| (*c).max(0)).sum()
    }

    /// The first disk at or after `from` whose capacity is `bytes`.
    fn disk_of_size(&self, from: u32, bytes: i64) -> Option<u32> {
        (from..self.count()).find(|&j| self.capacities[j as usize] > 0 && self.capacities[j as usize] == bytes)
    }

    /// The VMA reports the whole job, not one disk (its total covers every disk).
    fn covers_all(&self, progress: &VmaProgress) -> bool {
        self.sized() && progress.total_bytes >= self.total()
    }

    /// Which disk a `completed` answer of one disk (`total_bytes` its size) ends, or `None` when it
    /// repeats the last counted disk's or cannot be told from it.
    fn completed_disk(&self, total_bytes: i64) -> Option<u32> {
        let k = self.state.completed;
        if k >= self.count() {
            return None;
        }
        let later = self.disk_of_size(k, total_bytes);
        if self.state.in_copy || k == 0 {
            // Disk k was copying (or none is counted yet): it is done, or a later one whose size
            // this is (the OMA missed the ends between).
            return Some(later.unwrap_or(k));
        }
        let repeat = self.capacities[k as usize - 1] == total_bytes && total_bytes > 0;
        if repeat {
            None
        } else {
            later
        }
    }

    /// The disk a running answer is copying: the one after the counted ones, or a later one whose
    /// size it reports.
    fn running_disk(&self, total_bytes: i64) -> u32 {
        let k = self.state.completed.min(self.count() - 1);
        self.disk_of_size(k, total_bytes).unwrap_or(k)
    }

    /// The state `disk_progresses` proves: its leading done entries are copied disks.
    fn state_in_entries(&self, entries: &[crate::vma_client::DiskProgress]) -> DiskState {
        let done = entries.iter().take_while(|d| d.done()).count().min(self.count() as usize) as u32;
        let in_copy = entries.len() as u32 > done;
        if done > self.state.completed {
            DiskState { completed: done, in_copy }
        } else {
            DiskState { completed: self.state.completed, in_copy: self.state.in_copy || in_copy }
        }
    }

    /// One disk's answer as the job's: bytes and percent over all disks, the `completed` first
    /// ones copied, plus the answer's own figures when `copying` (a disk after them is under way).
    fn job_wide(&self, progress: &VmaProgress, completed: u32, copying: bool) -> VmaProgress {
        let mut p = progress.clone();
        if self.covers_all(progress) {
            return p;
        }
        let copying = copying && completed < self.count();
        let current = if copying { progress.bytes_transferred.max(0) } else { 0 };
        p.bytes_transferred = self.bytes_of_first(completed) + current;
        if self.sized() {
            p.total_bytes = self.total();
            p.percentage = p.bytes_transferred as f64 * 100.0 / self.total() as f64;
        } else {
            let current = if copying { progress.percentage.clamp(0.0, 100.0) } else { 0.0 };
            p.percentage = (completed as f64 * 100.0 + current) / self.count() as f64;
        }
        p.percentage = p.percentage.clamp(0.0, 100.0);
        p
    }
}

impl JobFacts {
    /// Latest contact with the job: the last successful poll or the last row update.
    pub fn last_contact(&self) -> DateTime<Utc> {
        match self.vma_last_poll_at {
            Some(p) if p > self.updated_at => p,
            _ => self.updated_at,
        }
    }

    /// What a successful poll teaches about the job: progress never goes back, bytes and the last
    /// contact are the VMA's, and a change (or the first figure ever seen) restarts the stall clock.
    pub fn observe_running(&mut self, progress: &VmaProgress, changed: bool, now: DateTime<Utc>) {
        self.progress_percent = self.progress_percent.max(progress.percentage);
        self.bytes_transferred = progress.bytes_transferred;
        self.vma_last_poll_at = Some(now);
        self.updated_at = now;
        if changed || self.progress_changed_at.is_none() {
            self.progress_changed_at = Some(now);
        }
    }

    /// What a `Keep` decision teaches about the job: its progress ([`JobFacts::observe_running`])
    /// and the count of copied disks it leaves.
    pub fn observe_keep(&mut self, decision: &Decision, now: DateTime<Utc>) {
        if let Decision::Keep { progress, progress_changed, disks, .. } = decision {
            if let Some(progress) = progress {
                self.observe_running(progress, *progress_changed, now);
            }
            if let Some(state) = disks {
                self.disks.state = *state;
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecisionConfig {
    pub poll_grace: Duration,
    pub recovery_max_age: Duration,
    pub not_found_complete_above: f64,
    pub stall_after: Duration,
}

impl DecisionConfig {
    pub fn from_settings(settings: &Settings) -> DecisionConfig {
        DecisionConfig {
            poll_grace: settings.poll_grace,
            recovery_max_age: settings.recovery_max_age,
            not_found_complete_above: settings.not_found_complete_above,
            stall_after: settings.stall_after,
        }
    }
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig {
            poll_grace: Duration::from_secs(30),
            recovery_max_age: Duration::from_secs(30 * 60),
            not_found_complete_above: 90.0,
            stall_after: Duration::from_secs(30 * 60),
        }
    }
}

/// Why a job stays unfinished and keeps being polled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepReason {
    Running,
    NotFoundWithinGrace,
    UnreachableRecent,
    /// The VMA says `completed`, but not every disk of a multi-disk job is known copied.
    DisksPending {
        completed: u32,
        of: u32,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Leave the job unfinished; make sure exactly one poller tracks it. With `progress`, write it.
    Keep {
        reason: KeepReason,
        progress: Option<VmaProgress>,
        /// Bytes or percent differ from the row (resets the stall clock).
        progress_changed: bool,
        /// A multi-disk job's count of copied disks, as this answer leaves it (written with the
        /// progress).
        disks: Option<DiskState>,
    },
    /// Finalize as completed. `assumed` when the VMA no longer knows the job.
    Complete { assumed: bool, progress: Option<VmaProgress> },
    /// Finalize as failed.
    Fail { class: FailureClass, message: String, details: Option<String> },
}

impl Decision {
    pub fn is_final(&self) -> bool {
        !matches!(self, Decision::Keep { .. })
    }
}

fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or(Duration::ZERO)
}

/// Minutes as the guide prints them (`stagnant: 12.3 min`).
pub fn minutes_since(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    age(now, then).as_secs_f64() / 60.0
}

pub fn decide(job: &JobFacts, observation: &Observation, now: DateTime<Utc>, cfg: &DecisionConfig) -> Decision {
    if job.disks.multi() {
        match observation {
            Observation::Running(progress) => return decide_running_disk(job, progress, now, cfg),
            Observation::Completed(progress) => return decide_completed_disk(job, progress, now, cfg),
            _ => {}
        }
    }
    match observation {
        Observation::Running(progress) => {
            let changed = progress.bytes_transferred != job.bytes_transferred
                || (progress.percentage - job.progress_percent).abs() > f64::EPSILON;
            let unchanged_since = job.progress_changed_at.or(job.vma_last_poll_at).unwrap_or(job.updated_at);
            if !changed
                && progress.phase.eq_ignore_ascii_case("transfer")
                && age(now, unchanged_since) >= cfg.stall_after
            {
                return Decision::Fail {
                    class: FailureClass::VmaStalled,
                    message: format!(
                        "Replication stalled: no progress on VMA for {} (stuck at {:.1}%)",
                        humantime::format_duration(Duration::from_secs(age(now, unchanged_since).as_secs())),
                        progress.percentage
                    ),
                    details: Some(format!(
                        "VMA keeps reporting status={} phase={} bytes={} since {}",
                        progress.status, progress.phase, progress.bytes_transferred, unchanged_since
                    )),
                };
            }
            Decision::Keep {
                reason: KeepReason::Running,
                progress: Some(progress.clone()),
                progress_changed: changed,
                disks: None,
            }
        }
        Observation::Completed(progress) => Decision::Complete { assumed: false, progress: Some(progress.clone()) },
        Observation::Failed { message, progress } => Decision::Fail {
            class: FailureClass::VmaReportedFailure,
            message: message.clone(),
            details: Some(
                serde_json::json!({
                    "status": progress.status,
                    "phase": progress.phase,
                    "percentage": progress.percentage,
                    "errors": progress.errors,
                    "last_error": progress.last_error,
                })
                .to_string(),
            ),
        },
        Observation::NotFound { http200 } => {
            let polling_young = job.polling_started_at.is_some_and(|started| age(now, started) < cfg.poll_grace);
            let setup_young = job.status.setup_grace().is_some_and(|grace| age(now, job.updated_at) < grace);
            if polling_young || setup_young {
                Decision::Keep {
                    reason: KeepReason::NotFoundWithinGrace,
                    progress: None,
                    progress_changed: false,
                    disks: None,
                }
            } else if job.progress_percent > cfg.not_found_complete_above {
                Decision::Complete { assumed: true, progress: None }
            } else {
                Decision::Fail {
                    class: FailureClass::JobLost,
                    message: format!(
                        "Job lost on VMA (not found after restart at {:.1}% progress)",
                        job.progress_percent
                    ),
                    details: Some(if *http200 {
                        "VMA answered HTTP 200 'job not found'".to_string()
                    } else {
                        "VMA answered 404 job not found".to_string()
                    }),
                }
            }
        }
        Observation::Unavailable { kind, detail } => {
            let last_contact = job.last_contact();
            if age(now, last_contact) <= cfg.recovery_max_age {
                Decision::Keep {
                    reason: KeepReason::UnreachableRecent,
                    progress: None,
                    progress_changed: false,
                    disks: None,
                }
            } else {
                Decision::Fail {
                    class: FailureClass::VmaUnreachableTimeout,
                    message: format!(
                        "VMA unreachable after restart: no contact for {:.1} min",
                        minutes_since(now, last_contact)
                    ),
                    details: Some(format!("{}: {}", kind.as_str(), detail)),
                }
            }
        }
    }
}

/// A running answer of a multi-disk job: the disk it copies becomes the current one, and the
/// progress written is the job's over all disks. The stall rule is the single-disk one.
fn decide_running_disk(job: &JobFacts, progress: &VmaProgress, now: DateTime<Utc>, cfg: &DecisionConfig) -> Decision {
    let disks = &job.disks;
    let state = match &progress.disk_progresses {
        Some(entries) => disks.state_in_entries(entries),
        None => DiskState { completed: disks.running_disk(progress.total_bytes), in_copy: true },
    };
    let state = DiskState { completed: state.completed.max(disks.state.completed), in_copy: true };
    let wide = disks.job_wide(progress, state.completed, true);
    let single = JobFacts { disks: DiskFacts::default(), ..job.clone() };
    match decide(&single, &Observation::Running(wide), now, cfg) {
        Decision::Keep { reason, progress, progress_changed, .. } => Decision::Keep {
            reason,
            progress,
            progress_changed: progress_changed || state != disks.state,
            disks: Some(state),
        },
        other => other,
    }
}

/// A `completed` answer of a multi-disk job: the end of the job only when every disk is known
/// copied (from `disk_progresses`, a total covering every disk, or the disks counted so far);
/// otherwise the job goes on being polled. A `completed` that never turns into the next disk
/// (the count cannot be told from it) fails as stalled after the stall window, never completes.
fn decide_completed_disk(job: &JobFacts, progress: &VmaProgress, now: DateTime<Utc>, cfg: &DecisionConfig) -> Decision {
    let disks = &job.disks;
    let of = disks.count();
    let state = match &progress.disk_progresses {
        Some(entries) => disks.state_in_entries(entries),
        None if disks.covers_all(progress) => DiskState { completed: of, in_copy: false },
        None => match disks.completed_disk(progress.total_bytes) {
            Some(j) => DiskState { completed: (j + 1).max(disks.state.completed), in_copy: false },
            None => DiskState { in_copy: false, ..disks.state },
        },
    };
    if state.completed >= of {
        return Decision::Complete { assumed: false, progress: Some(disks.job_wide(progress, of, false)) };
    }
    let wide = disks.job_wide(progress, state.completed, false);
    let changed = state.completed != disks.state.completed
        || wide.bytes_transferred != job.bytes_transferred
        || (wide.percentage - job.progress_percent).abs() > f64::EPSILON;
    let unchanged_since = job.progress_changed_at.or(job.vma_last_poll_at).unwrap_or(job.updated_at);
    if !changed && age(now, unchanged_since) >= cfg.stall_after {
        return Decision::Fail {
            class: FailureClass::VmaStalled,
            message: format!(
                "Replication stalled: VMA reports completed, but only {} of {} disks were seen copied and nothing \
                 moved for {}",
                state.completed,
                of,
                humantime::format_duration(Duration::from_secs(age(now, unchanged_since).as_secs()))
            ),
            details: Some(format!(
                "VMA keeps reporting status={} total_bytes={} since {}; disk capacities {:?}",
                progress.status, progress.total_bytes, unchanged_since, disks.capacities
            )),
        };
    }
    Decision::Keep {
        reason: KeepReason::DisksPending { completed: state.completed, of },
        progress: Some(wide),
        progress_changed: changed,
        disks: Some(state),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vma_client::UnavailableKind;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2025, 10, 3, 14, 0, 0).unwrap()
    }

    fn mins(m: i64) -> chrono::Duration {
        chrono::Duration::minutes(m)
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    fn job(status: JobStatus, pct: f64) -> JobFacts {
        JobFacts {
            status,
            progress_percent: pct,
            bytes_transferred: 1000,
            updated_at: now() - mins(10),
            vma_last_poll_at: Some(now() - mins(10)),
            progress_changed_at: Some(now() - mins(10)),
            polling_started_at: Some(now() - mins(60)),
            disks: DiskFacts::default(),
        }
    }

    fn progress(status: &str, phase: &str, pct: f64, bytes: i64) -> VmaProgress {
        VmaProgress {
            job_id: "job-1".into(),
            status: status.into(),
            phase: phase.into(),
            percentage: pct,
            bytes_transferred: bytes,
            ..VmaProgress::default()
        }
    }

    fn unavailable() -> Observation {
        Observation::Unavailable { kind: UnavailableKind::ConnectionRefused, detail: "refused".into() }
    }

    /// Table helper: the decision's shape as a short word.
    fn check(job: JobFacts, observation: Observation, expected: &str) {
        let decision = decide(&job, &observation, now(), &DecisionConfig::default());
        let word = match &decision {
            Decision::Keep { reason: KeepReason::Running, .. } => "keep:running".to_string(),
            Decision::Keep { reason: KeepReason::NotFoundWithinGrace, .. } => "keep:grace".to_string(),
            Decision::Keep { reason: KeepReason::UnreachableRecent, .. } => "keep:unreachable".to_string(),
            Decision::Keep { reason: KeepReason::DisksPending { completed, of }, .. } => {
                format!("keep:disks {completed}/{of}")
            }
            Decision::Complete { assumed: false, .. } => "complete".to_string(),
            Decision::Complete { assumed: true, .. } => "complete:assumed".to_string(),
            Decision::Fail { class, .. } => format!("fail:{}", class.as_str()),
        };
        assert_eq!(word, expected, "job={job:?} observation={observation:?} decision={decision:?}");
    }

    fn disks(capacities: &[i64], completed: u32, in_copy: bool) -> JobFacts {
        let mut j = job(JobStatus::Replicating, 0.0);
        j.disks = DiskFacts { capacities: capacities.to_vec(), state: DiskState { completed, in_copy } };
        // The row holds what the OMA last wrote: the copied disks' bytes (job-wide figures).
        j.bytes_transferred = j.disks.bytes_of_first(completed);
        j.progress_percent = if j.disks.sized() {
            j.bytes_transferred as f64 * 100.0 / j.disks.total() as f64
        } else {
            completed as f64 * 100.0 / capacities.len() as f64
        };
        j
    }

    fn disk_done(total: i64) -> Observation {
        Observation::Completed(progress("completed", "Transfer", 100.0, total).with_total(total))
    }

    fn disk_running(pct: f64, total: i64) -> Observation {
        Observation::Running(
            progress("in_progress", "Transfer", pct, (total as f64 * pct / 100.0) as i64).with_total(total),
        )
    }

    impl VmaProgress {
        fn with_total(mut self, total: i64) -> VmaProgress {
            self.total_bytes = total;
            self
        }

        fn with_entries(mut self, done: usize, started: usize) -> VmaProgress {
            self.disk_progresses = Some(
                (0..started)
                    .map(|i| crate::vma_client::DiskProgress {
                        status: if i < done { "completed" } else { "in_progress" }.into(),
                        ..Default::default()
                    })
                    .collect(),
            );
            self
        }
    }

    /// The disk state a keep leaves.
    fn state_after(job: &JobFacts, observation: &Observation) -> DiskState {
        match decide(job, observation, now(), &DecisionConfig::default()) {
            Decision::Keep { disks: Some(state), .. } => state,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_disk_completed_is_not_the_job_completed() {
        let sizes = [100, 200, 300];
        // Disk 1 of 3 done: the original's premature completion (defect 13).
        check(disks(&sizes, 0, true), disk_done(100), "keep:disks 1/3");
        check(disks(&sizes, 0, false), disk_done(100), "keep:disks 1/3");
        // The same completion again while the VMA waits to start disk 2: not counted twice.
        check(disks(&sizes, 1, false), disk_done(100), "keep:disks 1/3");
        assert_eq!(state_after(&disks(&sizes, 1, false), &disk_done(100)), DiskState { completed: 1, in_copy: false });
        // Disk 2 copying, then done; disk 3 done ends the job.
        assert_eq!(
            state_after(&disks(&sizes, 1, false), &disk_running(0.0, 200)),
            DiskState { completed: 1, in_copy: true }
        );
        check(disks(&sizes, 1, true), disk_done(200), "keep:disks 2/3");
        check(disks(&sizes, 2, false), disk_done(200), "keep:disks 2/3");
        check(disks(&sizes, 2, true), disk_done(300), "complete");
        // A disk whose end the OMA missed (it was down): the size tells which disk is done.
        check(disks(&sizes, 1, false), disk_done(300), "complete");
        check(disks(&sizes, 0, false), disk_done(200), "keep:disks 2/3");
        assert_eq!(
            state_after(&disks(&sizes, 1, true), &disk_running(10.0, 300)),
            DiskState { completed: 2, in_copy: true }
        );
        // One disk: a completion is the job's, as before.
        check(disks(&[100], 0, false), disk_done(100), "complete");
    }

    #[test]
    fn equal_disks_count_a_completion_only_after_the_disk_was_seen_copying() {
        let sizes = [100, 100, 100];
        check(disks(&sizes, 0, false), disk_done(100), "keep:disks 1/3");
        check(disks(&sizes, 1, false), disk_done(100), "keep:disks 1/3");
        check(disks(&sizes, 1, true), disk_done(100), "keep:disks 2/3");
        check(disks(&sizes, 2, true), disk_done(100), "complete");
        // Unknown capacities: counted the same way.
        check(disks(&[0, 0], 1, false), disk_done(5), "keep:disks 1/2");
        check(disks(&[0, 0], 1, true), disk_done(5), "complete");
    }

    #[test]
    fn a_total_or_disk_entries_covering_every_disk_complete_the_job() {
        let sizes = [100, 200, 300];
        check(disks(&sizes, 0, false), disk_done(600), "complete");
        let entries = |done, started| {
            Observation::Completed(
                progress("completed", "Transfer", 100.0, 100).with_total(100).with_entries(done, started),
            )
        };
        check(disks(&sizes, 0, true), entries(1, 1), "keep:disks 1/3");
        check(disks(&sizes, 0, true), entries(2, 2), "keep:disks 2/3");
        check(disks(&sizes, 2, false), entries(2, 3), "keep:disks 2/3");
        check(disks(&sizes, 0, false), entries(3, 3), "complete");
        // Entries never lower the count already made.
        check(disks(&sizes, 2, true), entries(1, 1), "keep:disks 2/3");
        // The sizes unknown, one disk's total can't pass for the job's.
        check(disks(&[0, 0], 0, true), disk_done(1 << 40), "keep:disks 1/2");
    }

    #[test]
    fn a_multi_disk_job_reports_progress_over_all_disks() {
        let sizes = [100, 200, 300];
        let decision = decide(&disks(&sizes, 1, false), &disk_running(50.0, 200), now(), &DecisionConfig::default());
        match decision {
            Decision::Keep { reason: KeepReason::Running, progress: Some(p), progress_changed: true, .. } => {
                assert_eq!((p.bytes_transferred, p.total_bytes), (200, 600));
                assert!((p.percentage - 100.0 / 3.0).abs() < 1e-9, "{}", p.percentage);
            }
            other => panic!("{other:?}"),
        }
        // Sizes unknown: each disk counts the same.
        match decide(&disks(&[0, 0, 0], 1, true), &disk_running(50.0, 9), now(), &DecisionConfig::default()) {
            Decision::Keep { progress: Some(p), .. } => assert!((p.percentage - 50.0).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
        // Not found after one disk of three: a third done is lost, not "assumed completed".
        check(disks(&sizes, 1, false), Observation::NotFound { http200: false }, "fail:job_lost");
        check(disks(&sizes, 2, false), Observation::NotFound { http200: false }, "fail:job_lost");
    }

    #[test]
    fn a_completion_that_never_turns_into_the_next_disk_fails_as_stalled() {
        let sizes = [100, 100];
        let mut j = disks(&sizes, 1, false);
        j.progress_changed_at = Some(now() - mins(30) + secs(1));
        check(j.clone(), disk_done(100), "keep:disks 1/2");
        j.progress_changed_at = Some(now() - mins(30));
        check(j.clone(), disk_done(100), "fail:vma_stalled");
        match decide(&j, &disk_done(100), now(), &DecisionConfig::default()) {
            Decision::Fail { message, .. } => assert!(message.contains("only 1 of 2 disks"), "{message}"),
            other => panic!("{other:?}"),
        }
        // A newly counted disk is a change: no stall.
        j.disks.state.in_copy = true;
        check(j, disk_done(100), "complete");
    }

    #[test]
    fn running_keeps_polling_and_writes_progress() {
        check(
            job(JobStatus::Replicating, 30.0),
            Observation::Running(progress("in_progress", "Transfer", 31.0, 2000)),
            "keep:running",
        );
        check(
            job(JobStatus::Initializing, 0.0),
            Observation::Running(progress("Queued", "Discover", 0.0, 0)),
            "keep:running",
        );
    }

    #[test]
    fn completed_finalizes_whatever_the_row_says() {
        check(
            job(JobStatus::Replicating, 12.0),
            Observation::Completed(progress("completed", "Transfer", 100.0, 5000)),
            "complete",
        );
        check(
            job(JobStatus::Replicating, 12.0),
            Observation::Completed(progress("Succeeded", "Finalize", 100.0, 5000)),
            "complete",
        );
    }

    #[test]
    fn failed_on_vma_keeps_the_vma_message() {
        let obs = Observation::Failed {
            message: "NBD connection refused".into(),
            progress: progress("failed", "Transfer", 40.0, 10),
        };
        check(job(JobStatus::Replicating, 40.0), obs.clone(), "fail:vma_reported_failure");
        match decide(&job(JobStatus::Replicating, 40.0), &obs, now(), &DecisionConfig::default()) {
            Decision::Fail { message, .. } => assert_eq!(message, "NBD connection refused"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn not_found_uses_the_90_percent_rule_at_its_boundary() {
        let nf = Observation::NotFound { http200: false };
        check(job(JobStatus::Replicating, 95.0), nf.clone(), "complete:assumed");
        check(job(JobStatus::Replicating, 90.01), nf.clone(), "complete:assumed");
        check(job(JobStatus::Replicating, 90.0), nf.clone(), "fail:job_lost");
        check(job(JobStatus::Replicating, 45.0), nf.clone(), "fail:job_lost");
        check(job(JobStatus::Replicating, 45.0), Observation::NotFound { http200: true }, "fail:job_lost");
        check(job(JobStatus::Replicating, 95.0), Observation::NotFound { http200: true }, "complete:assumed");
    }

    #[test]
    fn not_found_within_the_polling_grace_is_left_alone() {
        let nf = Observation::NotFound { http200: false };
        let mut young = job(JobStatus::Replicating, 10.0);
        young.polling_started_at = Some(now() - secs(29));
        check(young.clone(), nf.clone(), "keep:grace");
        young.polling_started_at = Some(now() - secs(30));
        check(young.clone(), nf.clone(), "fail:job_lost");
        young.polling_started_at = None;
        check(young, nf, "fail:job_lost");
    }

    #[test]
    fn not_found_respects_each_setup_status_grace() {
        let nf = Observation::NotFound { http200: false };
        for (status, grace_minutes) in
            [(JobStatus::Initializing, 5), (JobStatus::Attaching, 5), (JobStatus::ReadyForSync, 2)]
        {
            let mut j = job(status, 0.0);
            j.polling_started_at = None;
            j.updated_at = now() - mins(grace_minutes) + secs(1);
            check(j.clone(), nf.clone(), "keep:grace");
            j.updated_at = now() - mins(grace_minutes);
            check(j, nf.clone(), "fail:job_lost");
        }
        for status in [JobStatus::Analyzing, JobStatus::Provisioning, JobStatus::Configuring] {
            let mut j = job(status, 0.0);
            j.polling_started_at = None;
            j.updated_at = now() - secs(5);
            check(j, nf.clone(), "fail:job_lost");
        }
    }

    #[test]
    fn unreachable_uses_last_contact_against_the_30_minute_boundary() {
        let mut j = job(JobStatus::Replicating, 50.0);
        j.updated_at = now() - mins(30);
        j.vma_last_poll_at = Some(now() - mins(45));
        check(j.clone(), unavailable(), "keep:unreachable");
        j.updated_at = now() - mins(30) - secs(1);
        check(j.clone(), unavailable(), "fail:vma_unreachable_timeout");
        // A recent successful poll counts as contact even when the row is older.
        j.vma_last_poll_at = Some(now() - mins(5));
        check(j.clone(), unavailable(), "keep:unreachable");
        j.vma_last_poll_at = None;
        j.updated_at = now() - mins(120);
        check(j, unavailable(), "fail:vma_unreachable_timeout");
    }

    #[test]
    fn every_unavailable_kind_is_treated_alike() {
        for kind in [
            UnavailableKind::ConnectionRefused,
            UnavailableKind::ConnectionReset,
            UnavailableKind::Timeout,
            UnavailableKind::UnexpectedEof,
            UnavailableKind::ServerError,
            UnavailableKind::MalformedBody,
            UnavailableKind::BodyTooLarge,
        ] {
            let obs = Observation::Unavailable { kind, detail: String::new() };
            check(job(JobStatus::Replicating, 50.0), obs.clone(), "keep:unreachable");
            let mut old = job(JobStatus::Replicating, 50.0);
            old.updated_at = now() - mins(31);
            old.vma_last_poll_at = None;
            check(old, obs, "fail:vma_unreachable_timeout");
        }
    }

    #[test]
    fn stalled_transfer_fails_only_after_the_stall_window() {
        let mut j = job(JobStatus::Replicating, 40.0);
        j.progress_changed_at = Some(now() - mins(30));
        let same = Observation::Running(progress("in_progress", "Transfer", 40.0, 1000));
        check(j.clone(), same.clone(), "fail:vma_stalled");
        j.progress_changed_at = Some(now() - mins(30) + secs(1));
        check(j.clone(), same.clone(), "keep:running");
        // Progress moved: never a stall.
        j.progress_changed_at = Some(now() - mins(60));
        check(j.clone(), Observation::Running(progress("in_progress", "Transfer", 40.5, 1001)), "keep:running");
        // Not in the Transfer phase (e.g. snapshotting): never a stall.
        check(j, Observation::Running(progress("in_progress", "Creating Snapshot", 40.0, 1000)), "keep:running");
    }

    #[test]
    fn running_reports_whether_progress_changed() {
        let j = job(JobStatus::Replicating, 40.0);
        // Either figure moving alone is a change (it resets the stall clock).
        for (pct, bytes, changed) in [(40.0, 1000, false), (41.0, 2000, true), (40.5, 1000, true), (40.0, 1001, true)] {
            match decide(
                &j,
                &Observation::Running(progress("in_progress", "Transfer", pct, bytes)),
                now(),
                &DecisionConfig::default(),
            ) {
                Decision::Keep { progress_changed, .. } => {
                    assert_eq!(progress_changed, changed, "{pct}% {bytes} bytes")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn only_keeps_are_not_final() {
        let keep = Decision::Keep { reason: KeepReason::Running, progress: None, progress_changed: false, disks: None };
        assert!(!keep.is_final());
        assert!(Decision::Complete { assumed: true, progress: None }.is_final());
        let fail = Decision::Fail { class: FailureClass::JobLost, message: String::new(), details: None };
        assert!(fail.is_final());
    }

    #[test]
    fn an_unreachable_timeout_says_how_long_there_was_no_contact() {
        let mut j = job(JobStatus::Replicating, 50.0);
        j.updated_at = now() - mins(45) - secs(30);
        j.vma_last_poll_at = None;
        match decide(&j, &unavailable(), now(), &DecisionConfig::default()) {
            Decision::Fail { message, details, .. } => {
                assert_eq!(message, "VMA unreachable after restart: no contact for 45.5 min");
                assert_eq!(details.as_deref(), Some("connection_refused: refused"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_keep_teaches_progress_and_the_disks_it_counts_copied() {
        // A completion naming disk 3 of 4 while disk 1 was copying: disks 1 to 3 are newly copied.
        let mut facts = disks(&[100, 200, 300, 400], 0, true);
        let decision = decide(&facts, &disk_done(300), now(), &DecisionConfig::default());
        assert_eq!(facts.disks.copied_by(&decision), 1..4, "{decision:?}");
        facts.observe_keep(&decision, now());
        assert_eq!(facts.disks.state.completed, 3);
        assert_eq!((facts.bytes_transferred, facts.vma_last_poll_at), (600, Some(now())));
        // Nothing more is counted by the same answer again.
        let again = decide(&disks(&[100, 200, 300, 400], 3, false), &disk_done(300), now(), &Default::default());
        assert!(disks(&[100, 200, 300, 400], 3, false).disks.copied_by(&again).is_empty(), "{again:?}");
        // A keep without an answer (not found within the grace) changes nothing.
        let mut quiet = job(JobStatus::Replicating, 40.0);
        let before = quiet.clone();
        let grace = Decision::Keep {
            reason: KeepReason::NotFoundWithinGrace,
            progress: None,
            progress_changed: false,
            disks: None,
        };
        quiet.observe_keep(&grace, now() + secs(5));
        assert_eq!(quiet, before);
        assert!(quiet.disks.copied_by(&grace).is_empty());
    }

    #[test]
    fn a_poll_restarts_the_stall_clock_only_when_progress_moved() {
        let cfg = DecisionConfig { stall_after: Duration::from_secs(60), ..DecisionConfig::default() };
        let mut facts = job(JobStatus::Replicating, 40.0);
        let t1 = now();
        facts.observe_running(&progress("running", "Transfer", 45.0, 2000), true, t1);
        assert_eq!((facts.progress_percent, facts.bytes_transferred), (45.0, 2000));
        assert_eq!((facts.vma_last_poll_at, facts.updated_at, facts.progress_changed_at), (Some(t1), t1, Some(t1)));
        // Frozen since t1: not a stall before the window ends, a stall once it has.
        let same = Observation::Running(progress("running", "Transfer", 45.0, 2000));
        assert!(matches!(decide(&facts, &same, t1 + secs(59), &cfg), Decision::Keep { .. }));
        // A poll without a change keeps the clock where it was; a lower percentage is not taken.
        facts.observe_running(&progress("running", "Transfer", 44.0, 2000), false, t1 + secs(30));
        assert_eq!((facts.progress_percent, facts.progress_changed_at), (45.0, Some(t1)));
        assert!(matches!(decide(&facts, &same, t1 + secs(61), &cfg), Decision::Fail { .. }));
        // The first figure ever seen starts the clock even when the caller saw no change.
        facts.progress_changed_at = None;
        facts.observe_running(&progress("running", "Transfer", 45.0, 2000), false, t1 + secs(62));
        assert_eq!(facts.progress_changed_at, Some(t1 + secs(62)));
    }
}
