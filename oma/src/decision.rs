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
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Leave the job unfinished; make sure exactly one poller tracks it. With `progress`, write it.
    Keep {
        reason: KeepReason,
        progress: Option<VmaProgress>,
        /// Bytes or percent differ from the row (resets the stall clock).
        progress_changed: bool,
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
            Decision::Keep { reason: KeepReason::Running, progress: Some(progress.clone()), progress_changed: changed }
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
                Decision::Keep { reason: KeepReason::NotFoundWithinGrace, progress: None, progress_changed: false }
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
                Decision::Keep { reason: KeepReason::UnreachableRecent, progress: None, progress_changed: false }
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
            Decision::Complete { assumed: false, .. } => "complete".to_string(),
            Decision::Complete { assumed: true, .. } => "complete:assumed".to_string(),
            Decision::Fail { class, .. } => format!("fail:{}", class.as_str()),
        };
        assert_eq!(word, expected, "job={job:?} observation={observation:?} decision={decision:?}");
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
        let keep = Decision::Keep { reason: KeepReason::Running, progress: None, progress_changed: false };
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
