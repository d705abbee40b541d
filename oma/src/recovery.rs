//! Startup recovery (SPEC §4.4) and manual recovery scans: reconcile every unfinished job once,
//! with no age filter, concurrently (bounded), under a MariaDB named lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::sync::RwLock;
use tracing::{info, warn};

use crate::db;
use crate::poller::Poller;
use crate::reconcile::{reconcile_many, Apply, Caller, Outcome};
use crate::services::Services;

/// Prefix of the MariaDB lock that serializes recovery scans across OMA processes. Named locks
/// are server-wide, so the database name is appended: OMAs of different databases on one server
/// must not wait for each other.
pub const RECOVERY_LOCK: &str = "oma_job_recovery";

/// Counts of every outcome of one scan.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RecoverySummary {
    pub total_processed: usize,
    pub still_running: usize,
    pub polling_restarted: usize,
    pub completed: usize,
    pub completed_assumed: usize,
    pub failed_on_vma: usize,
    pub lost: usize,
    pub unreachable_left_for_retry: usize,
    pub unreachable_timed_out: usize,
    pub not_found_within_grace: usize,
    pub stalled: usize,
    pub already_final: usize,
    pub owned_elsewhere: usize,
    pub planned: usize,
    pub errors: usize,
}

impl RecoverySummary {
    /// Of the jobs a recovery decided about (dry runs aside), the share it could decide and
    /// write without an error (job sheet 4.1); `None` before any.
    pub fn success_rate(&self) -> Option<f64> {
        let decided = self.total_processed - self.planned;
        (decided > 0).then(|| (decided - self.errors) as f64 / decided as f64)
    }

    /// Of the jobs found running on the VMA, the share whose polling was restarted (job sheet
    /// 5.3.3: 100 % for an OMA); `None` when none was running.
    pub fn polling_restart_rate(&self) -> Option<f64> {
        (self.still_running > 0).then(|| self.polling_restarted as f64 / self.still_running as f64)
    }

    pub fn count(&mut self, outcome: Outcome) {
        self.total_processed += 1;
        match outcome {
            Outcome::PollingRestarted => {
                self.still_running += 1;
                self.polling_restarted += 1;
            }
            Outcome::StillRunning => self.still_running += 1,
            Outcome::NotFoundWithinGrace => self.not_found_within_grace += 1,
            Outcome::UnreachableLeftForRetry => self.unreachable_left_for_retry += 1,
            Outcome::Completed => self.completed += 1,
            Outcome::CompletedAssumed => self.completed_assumed += 1,
            Outcome::FailedOnVma => self.failed_on_vma += 1,
            Outcome::Lost => self.lost += 1,
            Outcome::UnreachableTimedOut => self.unreachable_timed_out += 1,
            Outcome::Stalled => self.stalled += 1,
            Outcome::AlreadyFinal => self.already_final += 1,
            Outcome::OwnedElsewhere => self.owned_elsewhere += 1,
            Outcome::Planned => self.planned += 1,
            Outcome::Error => self.errors += 1,
        }
    }

    pub fn add(&mut self, other: &RecoverySummary) {
        self.total_processed += other.total_processed;
        self.still_running += other.still_running;
        self.polling_restarted += other.polling_restarted;
        self.completed += other.completed;
        self.completed_assumed += other.completed_assumed;
        self.failed_on_vma += other.failed_on_vma;
        self.lost += other.lost;
        self.unreachable_left_for_retry += other.unreachable_left_for_retry;
        self.unreachable_timed_out += other.unreachable_timed_out;
        self.not_found_within_grace += other.not_found_within_grace;
        self.stalled += other.stalled;
        self.already_final += other.already_final;
        self.owned_elsewhere += other.owned_elsewhere;
        self.planned += other.planned;
        self.errors += other.errors;
    }

    /// The guide's multi-line summary, extended with every outcome.
    pub fn log_text(&self) -> String {
        format!(
            "✅ Job recovery completed:\n\tTotal processed: {}\n\tStill running (polling restarted): {}\n\t\
             Completed: {}\n\tFailed: {}\n\tVMA unreachable: {}\n\t\
             Not found (assumed completed): {}\n\tNot found (marked lost): {}\n\tNot found (within grace): {}\n\t\
             VMA unreachable (timed out, failed): {}\n\tStalled: {}\n\tOwned by another OMA: {}\n\t\
             Already finalized: {}\n\tErrors: {}",
            self.total_processed,
            self.still_running,
            self.completed + self.completed_assumed,
            self.failed_on_vma + self.lost + self.unreachable_timed_out + self.stalled,
            self.unreachable_left_for_retry + self.unreachable_timed_out,
            self.completed_assumed,
            self.lost,
            self.not_found_within_grace,
            self.unreachable_timed_out,
            self.stalled,
            self.owned_elsewhere,
            self.already_final,
            self.errors,
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ScanReport {
    pub dry_run: bool,
    pub summary: RecoverySummary,
    pub jobs: Vec<crate::reconcile::JobReport>,
    /// Unfinished jobs left alone because a live poller (here or elsewhere) is tracking them.
    pub skipped_being_polled: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryState {
    Pending,
    Running,
    Completed,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecoveryRun {
    pub trigger: &'static str,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub duration_ms: Option<u128>,
    pub summary: Option<RecoverySummary>,
    pub error: Option<String>,
}

/// Services record of recovery runs, for `/health` and `/api/v1/job-recovery/status`.
#[derive(Debug, Serialize)]
pub struct RecoveryStatus {
    pub state: RecoveryState,
    pub last_run: Option<RecoveryRun>,
    pub runs: u64,
    pub totals: RecoverySummary,
}

pub type RecoveryTracker = Arc<RwLock<RecoveryStatus>>;

pub fn new_tracker() -> RecoveryTracker {
    Arc::new(RwLock::new(RecoveryStatus {
        state: RecoveryState::Pending,
        last_run: None,
        runs: 0,
        totals: RecoverySummary::default(),
    }))
}

/// Reconcile every unfinished job not being polled by a live poller. With a poller, running
/// jobs are claimed and tracked; without (CLI), they are recorded for the OMA to pick up.
pub async fn scan(
    services: &Services,
    poller: Option<&Poller>,
    caller: Caller,
    dry_run: bool,
) -> Result<ScanReport, sqlx::Error> {
    let jobs = db::load_unfinished(&services.pool, None).await?;
    let (mut todo, skipped): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|j| !(j.owned_elsewhere(&services.instance_id) || poller.is_some_and(|p| p.is_spoken_for(&j.id))));
    let skipped_being_polled: Vec<String> = skipped.into_iter().map(|j| j.id).collect();
    db::attach_export_names(&services.pool, &mut todo).await?;
    if todo.is_empty() {
        info!("✅ No active jobs found - system is clean");
    } else {
        info!("🔍 Found {} active jobs requiring recovery validation", todo.len());
    }
    if !skipped_being_polled.is_empty() {
        info!("{} unfinished jobs are being polled by a live poller - left to it", skipped_being_polled.len());
    }
    let apply = match (dry_run, poller) {
        (true, _) => Apply::DryRun,
        (false, Some(_)) => Apply::RecordAndClaim,
        (false, None) => Apply::Record,
    };
    let reconciled = reconcile_many(services, todo, caller, apply).await;
    let unreachable = |o: Outcome| matches!(o, Outcome::UnreachableLeftForRetry | Outcome::UnreachableTimedOut);
    if !reconciled.reports.is_empty() && reconciled.reports.iter().all(|r| unreachable(r.outcome)) {
        // The guide's troubleshooting line: the VMA could validate none of the jobs.
        warn!("⚠️ VMA services not available - job recovery will be limited");
    }
    if let Some(poller) = poller {
        poller.adopt(&reconciled);
    }
    let mut summary = RecoverySummary::default();
    for r in &reconciled.reports {
        summary.count(r.outcome);
    }
    Ok(ScanReport { dry_run, summary, jobs: reconciled.reports, skipped_being_polled })
}

/// Hold the named lock on one connection for the duration of `f`.
///
/// Named locks belong to the session, so the connection is closed afterwards instead of going
/// back to the pool: if this future is dropped mid-way (even while `GET_LOCK` still waits), a
/// pooled connection would keep the lock and every later recovery of the database would wait
/// for it in vain. Closing the session frees the lock whatever happened.
pub async fn with_recovery_lock<T>(
    pool: &MySqlPool,
    wait: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<Option<T>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    conn.close_on_drop();
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(CONCAT(?, ':', DATABASE()), ?)")
        .bind(RECOVERY_LOCK)
        .bind(wait.as_secs_f64())
        .fetch_one(&mut *conn)
        .await?;
    if got != Some(1) {
        return Ok(None);
    }
    let out = f.await;
    let _: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(CONCAT(?, ':', DATABASE()))")
        .bind(RECOVERY_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Some(out))
}

/// Run one recovery scan under the lock and record it in the tracker.
pub async fn run_recovery(
    services: &Services,
    poller: &Poller,
    tracker: &RecoveryTracker,
    trigger: &'static str,
    dry_run: bool,
    lock_wait: Duration,
) -> Result<Option<ScanReport>, sqlx::Error> {
    let started = std::time::Instant::now();
    {
        let mut t = tracker.write().await;
        if t.state == RecoveryState::Running {
            return Ok(None);
        }
        t.state = RecoveryState::Running;
        t.last_run = Some(RecoveryRun {
            trigger,
            dry_run,
            started_at: Utc::now(),
            finished_at: None,
            duration_ms: None,
            summary: None,
            error: None,
        });
    }
    let caller = if trigger == "startup" { Caller::StartupRecovery } else { Caller::Manual };
    let result = with_recovery_lock(&services.pool, lock_wait, scan(services, Some(poller), caller, dry_run)).await;
    let mut t = tracker.write().await;
    let run = t.last_run.as_mut().expect("set above");
    run.finished_at = Some(Utc::now());
    run.duration_ms = Some(started.elapsed().as_millis());
    let outcome = match result {
        Ok(Some(Ok(report))) => {
            run.summary = Some(report.summary.clone());
            if !dry_run {
                t.totals.add(&report.summary);
            }
            t.state = RecoveryState::Completed;
            Ok(Some(report))
        }
        Ok(None) => {
            run.error = Some("another recovery scan holds the recovery lock".into());
            t.state = RecoveryState::Completed;
            Ok(None)
        }
        Ok(Some(Err(e))) | Err(e) => {
            run.error = Some(e.to_string());
            t.state = RecoveryState::Failed;
            Err(e)
        }
    };
    t.runs += 1;
    outcome
}

/// The startup recovery task: logs the guide's messages and the summary.
pub async fn startup_recovery(services: Arc<Services>, poller: Poller, tracker: RecoveryTracker) {
    info!("🔍 Initializing intelligent job recovery system with VMA validation");
    info!("🚀 Running intelligent job recovery scan with VMA validation...");
    info!("🔍 Starting intelligent job recovery with VMA validation on OMA startup");
    // Another OMA starting at the same moment recovers first; we then skip what it polls.
    let lock_wait = Duration::from_secs(120);
    match run_recovery(&services, &poller, &tracker, "startup", false, lock_wait).await {
        Ok(Some(report)) => {
            info!("{}", report.summary.log_text());
            let by_outcome: BTreeMap<&str, usize> = report.jobs.iter().fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.outcome.as_str()).or_default() += 1;
                m
            });
            info!(outcomes = ?by_outcome, "Job recovery summary by outcome");
            info!("✅ Job recovery completed successfully");
        }
        Ok(None) => warn!("⚠️ Job recovery skipped: another recovery scan held the lock for {lock_wait:?}"),
        Err(e) => warn!("⚠️ Job recovery failed during startup - continuing with normal operation: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_every_outcome_once() {
        let mut s = RecoverySummary::default();
        for o in Outcome::ALL {
            s.count(o);
        }
        let v = serde_json::to_value(&s).unwrap();
        let per_field: u64 = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "total_processed" && *k != "polling_restarted")
            .map(|(_, v)| v.as_u64().unwrap())
            .sum();
        assert_eq!(s.total_processed, Outcome::ALL.len());
        assert_eq!(per_field as usize, Outcome::ALL.len(), "{v}");
        let text = s.log_text();
        assert!(text.starts_with("✅ Job recovery completed:"));
        assert!(text.contains("Still running (polling restarted): 2"));
        assert_eq!(s.polling_restarted, 1);
    }

    #[test]
    fn success_rates_count_errors_and_leave_dry_runs_out() {
        let mut s = RecoverySummary::default();
        assert_eq!((s.success_rate(), s.polling_restart_rate()), (None, None));
        for o in [Outcome::PollingRestarted, Outcome::Completed, Outcome::Lost, Outcome::Error, Outcome::Planned] {
            s.count(o);
        }
        assert_eq!(s.success_rate(), Some(0.75), "3 of 4 decided without an error; the dry run is not counted");
        assert_eq!(s.polling_restart_rate(), Some(1.0));
        s.count(Outcome::StillRunning);
        assert_eq!(s.polling_restart_rate(), Some(0.5), "running on the VMA, recorded, not polled here");
    }

    #[test]
    fn totals_add_every_field() {
        // Distinct counts per outcome, so a field added to the wrong place or not at all shows.
        let mut run = RecoverySummary::default();
        for (n, o) in Outcome::ALL.into_iter().enumerate() {
            for _ in 0..=n {
                run.count(o);
            }
        }
        let mut totals = RecoverySummary::default();
        totals.add(&run);
        totals.add(&run);
        let run = serde_json::to_value(&run).unwrap();
        let totals = serde_json::to_value(&totals).unwrap();
        for (field, n) in run.as_object().unwrap() {
            assert!(n.as_u64().unwrap() > 0, "{field} is never counted");
            assert_eq!(totals[field].as_u64(), Some(2 * n.as_u64().unwrap()), "{field}");
        }
    }
}
