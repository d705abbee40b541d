//! The VMA progress poller (SPEC §4.3): every tracked job is polled every interval, at most one
//! request in flight per job, no cap on the number of jobs, missed ticks are not burst. Ownership
//! lives in `vma_polling_state` (owner + lease) so a second OMA never polls the same job.
//! One file (about 550 lines) on purpose: the tracked-job table, dispatch and lease upkeep share
//! one lock and one invariant (a job is polled only within its lease as this process last knew
//! it); the parts that stand alone are `writes` (batched poll results) and `streak_log`.

mod streak_log;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::clock::every;
use crate::db::{self, ProgressWrite, UnfinishedJob};
use crate::decision::{decide, Decision, JobFacts, KeepReason};
use crate::reconcile::{finalize, log_disks_copied, Caller, Outcome, Reconciled};
use crate::services::Services;
use crate::vma_client::{LookupKey, Observation};
use streak_log::{Streak, StreakLog};
use writes::{write_loop, WriteMsg};

/// At shutdown, how long each last database write may take before it is given up: a stalled
/// database must not hold up the exit (what is not written is polled again after the restart).
pub const SHUTDOWN_DB_WAIT: Duration = Duration::from_secs(2);

/// Polls kept per job for `GET /api/v1/vma-polling/jobs/{id}` (job sheet 4.2.2): bounded, so
/// 10,000 tracked jobs hold a few MiB of it at most.
pub const HISTORY: usize = 10;

/// One poll of a job, as its history shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PollRecord {
    pub at: DateTime<Utc>,
    pub result: &'static str,
    pub latency_ms: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Tracked {
    facts: JobFacts,
    export_names: Vec<String>,
    preferred: Option<LookupKey>,
    in_flight: bool,
    /// When the current or last poll was started; the next one is due an interval later.
    dispatched_at: Instant,
    /// Until when this process may poll the job: the start of its last claim or renewal plus
    /// `lease_use`, so it stops a margin before the lease can expire as others see it.
    lease_until: Instant,
    next_due: Instant,
    consecutive_errors: u32,
    /// Polls in a row the VMA gave no usable answer to (logged when it starts and when it ends).
    unavailable_streak: u32,
    generation: u64,
    last_poll_at: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    polls: u64,
    polls_failed: u64,
    last_result: &'static str,
    last_error: Option<String>,
    /// The last [`HISTORY`] polls, oldest first.
    history: std::collections::VecDeque<PollRecord>,
}

impl Tracked {
    /// Add the poll just recorded in `last_result` / `last_error` to the history (the error only
    /// when the poll gave no progress).
    fn remember(&mut self, at: DateTime<Utc>, latency_ms: u32, progress_percent: Option<f64>) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        let error = progress_percent.is_none().then(|| self.last_error.clone()).flatten();
        self.history.push_back(PollRecord { at, result: self.last_result, latency_ms, progress_percent, error });
    }
}

struct PollerState {
    services: Arc<Services>,
    jobs: Mutex<HashMap<String, Tracked>>,
    wake: Notify,
    generation: AtomicU64,
    writes: mpsc::UnboundedSender<WriteMsg>,
    writes_rx: Mutex<Option<mpsc::UnboundedReceiver<WriteMsg>>>,
    requests: Semaphore,
    tasks: TaskTracker,
    polls_total: AtomicU64,
    polls_ok: AtomicU64,
    /// Limits the "polling error" / "works again" lines when many jobs flap at once.
    streak_log: Mutex<StreakLog>,
    /// Jobs not dispatched at the last tick because their lease could not be renewed in time.
    paused: AtomicU64,
    /// Jobs this process is creating (`POST /api/v1/replications`): in the database already,
    /// tracked a moment later. No scan may take them for orphans meanwhile.
    starting: Mutex<HashSet<String>>,
}

/// A job being created by this process, until the guard drops (tracked by then, or failed).
pub struct Starting {
    poller: Poller,
    job_id: String,
}

impl Drop for Starting {
    fn drop(&mut self) {
        self.poller.inner.starting.lock().expect("poller lock").remove(&self.job_id);
    }
}

/// Cheap to clone; all clones share one set of tracked jobs.
#[derive(Clone)]
pub struct Poller {
    inner: Arc<PollerState>,
}

/// What one dispatch round did (for tests driving `tick()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickOutcome {
    Polled(usize),
    Idle,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolledJobStatus {
    pub job_id: String,
    pub started_polling_at: Option<DateTime<Utc>>,
    pub last_poll_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub consecutive_errors: u32,
    pub polls_total: u64,
    pub polls_failed: u64,
    pub in_flight: bool,
    pub last_result: &'static str,
    pub last_error: Option<String>,
    pub lookup_key: Option<String>,
    pub job_age_seconds: Option<i64>,
    /// The last polls, oldest first (one job's status only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<PollRecord>,
}

impl Poller {
    pub fn new(services: Arc<Services>) -> Poller {
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = services.settings.poll_concurrency;
        let interval = services.settings.poll_interval;
        Poller {
            inner: Arc::new(PollerState {
                services,
                jobs: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                generation: AtomicU64::new(1),
                writes: tx,
                writes_rx: Mutex::new(Some(rx)),
                requests: Semaphore::new(permits),
                tasks: TaskTracker::new(),
                polls_total: AtomicU64::new(0),
                polls_ok: AtomicU64::new(0),
                streak_log: Mutex::new(StreakLog::new(interval, Instant::now())),
                paused: AtomicU64::new(0),
                starting: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Start tracking a job this process has claimed (the claim began at `claimed_at`).
    /// Idempotent. `just_observed`: the caller asked the VMA a moment ago, so the first poll is one
    /// interval away; otherwise it is now.
    pub fn track(&self, job: &UnfinishedJob, preferred: Option<LookupKey>, just_observed: bool, claimed_at: Instant) {
        let lease_until = claimed_at + self.inner.services.settings.lease_use();
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        // Jobs recovered together get their own phase within the interval, so thousands of them
        // do not fire on the same tick.
        let first_due = if just_observed {
            now + self.inner.services.settings.poll_interval.mul_f64(phase_of(&job.id))
        } else {
            now
        };
        let mut jobs = self.inner.jobs.lock().expect("poller lock");
        let entry = jobs.entry(job.id.clone()).or_insert_with(|| Tracked {
            facts: job.facts(),
            export_names: job.export_names.clone(),
            preferred: None,
            in_flight: false,
            dispatched_at: now,
            lease_until,
            next_due: first_due,
            consecutive_errors: 0,
            unavailable_streak: 0,
            generation,
            last_poll_at: None,
            last_success_at: None,
            polls: 0,
            polls_failed: 0,
            last_result: "none",
            last_error: None,
            history: std::collections::VecDeque::with_capacity(HISTORY),
        });
        if preferred.is_some() {
            entry.preferred = preferred;
        }
        entry.lease_until = entry.lease_until.max(lease_until);
        entry.generation = generation;
        self.inner.services.metrics.pollers_active.set(jobs.len() as i64);
        drop(jobs);
        self.inner.wake.notify_one();
    }

    /// Take on what a reconcile decided: track the jobs it claimed for this process (the VMA was
    /// asked a moment ago, so each is next polled within an interval), forget the ones it ended.
    pub fn adopt(&self, reconciled: &Reconciled) {
        for claimed in &reconciled.claimed {
            self.track(&claimed.job, claimed.via.clone(), true, claimed.claimed_at);
        }
        for report in reconciled.reports.iter().filter(|r| r.outcome.ends_job()) {
            self.untrack(&report.job_id);
        }
    }

    /// Stop tracking a job in memory. Returns whether it was tracked.
    pub fn untrack(&self, job_id: &str) -> bool {
        let mut jobs = self.inner.jobs.lock().expect("poller lock");
        let removed = jobs.remove(job_id).is_some();
        self.inner.services.metrics.pollers_active.set(jobs.len() as i64);
        removed
    }

    pub fn is_polling(&self, job_id: &str) -> bool {
        self.inner.jobs.lock().expect("poller lock").contains_key(job_id)
    }

    /// Announce a job this process is about to create and poll; call before its row is visible.
    pub fn starting(&self, job_id: &str) -> Starting {
        self.inner.starting.lock().expect("poller lock").insert(job_id.to_string());
        Starting { poller: self.clone(), job_id: job_id.to_string() }
    }

    /// Polled here, or being created here and polled a moment later: not an orphan.
    pub fn is_spoken_for(&self, job_id: &str) -> bool {
        self.is_polling(job_id) || self.inner.starting.lock().expect("poller lock").contains(job_id)
    }

    pub fn active_job_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.jobs.lock().expect("poller lock").keys().cloned().collect();
        ids.sort();
        ids
    }

    pub fn job_status(&self, job_id: &str) -> Option<PolledJobStatus> {
        let now = self.inner.services.clock.now();
        let jobs = self.inner.jobs.lock().expect("poller lock");
        jobs.get(job_id)
            .map(|t| PolledJobStatus { history: t.history.iter().cloned().collect(), ..status_of(job_id, t, now) })
    }

    pub fn status(&self) -> Vec<PolledJobStatus> {
        let now = self.inner.services.clock.now();
        let jobs = self.inner.jobs.lock().expect("poller lock");
        let mut out: Vec<PolledJobStatus> = jobs.iter().map(|(id, t)| status_of(id, t, now)).collect();
        out.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        out
    }

    pub fn totals(&self) -> (u64, u64) {
        (self.inner.polls_total.load(Ordering::Relaxed), self.inner.polls_ok.load(Ordering::Relaxed))
    }

    /// Start a poll for every due job that has no request in flight.
    pub fn tick(&self) -> TickOutcome {
        let now = Instant::now();
        let horizon = dispatch_horizon(now, self.inner.services.settings.poll_interval);
        let mut paused = 0u64;
        let due: Vec<(String, JobFacts, Vec<String>, Option<LookupKey>)> = {
            let mut jobs = self.inner.jobs.lock().expect("poller lock");
            jobs.iter_mut()
                .filter(|(_, t)| !t.in_flight && t.next_due <= horizon)
                .filter(|(_, t)| {
                    // No poll without a lease this process can prove it still holds.
                    let held = t.lease_until > now;
                    paused += u64::from(!held);
                    held
                })
                .map(|(id, t)| {
                    t.in_flight = true;
                    t.dispatched_at = now;
                    (id.clone(), t.facts.clone(), t.export_names.clone(), t.preferred.clone())
                })
                .collect()
        };
        let paused_before = self.inner.paused.swap(paused, Ordering::Relaxed);
        self.inner.services.metrics.polling_paused.set(paused as i64);
        if paused > 0 && paused_before == 0 {
            warn!(
                "⏸️ Polling of {paused} jobs paused: their leases could not be renewed in time (the database is out \
                 of reach?), and another OMA may take them over; it resumes as soon as a renewal succeeds"
            );
        } else if paused == 0 && paused_before > 0 {
            info!("▶️ Polling resumed: leases renewed");
        }
        if due.is_empty() {
            return TickOutcome::Idle;
        }
        let n = due.len();
        for (job_id, facts, names, preferred) in due {
            let poller = self.clone();
            self.inner.tasks.spawn(async move {
                poller.poll_one(job_id, facts, names, preferred).await;
            });
        }
        TickOutcome::Polled(n)
    }

    async fn poll_one(&self, job_id: String, facts: JobFacts, names: Vec<String>, preferred: Option<LookupKey>) {
        if crate::failpoint::active("poll-panic") {
            panic!("failpoint poll-panic (job {job_id})");
        }
        let services = &self.inner.services;
        let observation;
        let via;
        let latency_ms;
        {
            let _permit = self.inner.requests.acquire().await.expect("semaphore never closed");
            let asked = Instant::now();
            let lookup = services.vma.lookup(&job_id, &names, preferred.as_ref()).await;
            latency_ms = asked.elapsed().as_millis().min(u32::MAX as u128) as u32;
            observation = lookup.observation;
            via = lookup.via;
        }
        let now = services.clock.now();
        let decision = decide(&facts, &observation, now, &services.decision_config);
        self.inner.polls_total.fetch_add(1, Ordering::Relaxed);
        services.metrics.poll(match &observation {
            Observation::Running(_) => "running",
            Observation::Completed(_) => "completed",
            Observation::Failed { .. } => "failed",
            Observation::NotFound { .. } => "not_found",
            Observation::Unavailable { .. } => "unavailable",
        });
        match &decision {
            Decision::Keep {
                reason: KeepReason::Running | KeepReason::DisksPending { .. },
                progress: Some(progress),
                progress_changed,
                disks,
            } => {
                self.inner.polls_ok.fetch_add(1, Ordering::Relaxed);
                debug!(job_id = %job_id, percent = progress.percentage, "VMA poll: running");
                let mut failed_before = 0;
                let mut copied = 0..0;
                let still_tracked = self.update_tracked(&job_id, |t| {
                    failed_before = std::mem::take(&mut t.unavailable_streak);
                    copied = t.facts.disks.copied_by(&decision);
                    t.facts.observe_keep(&decision, now);
                    if via.is_some() {
                        t.preferred = via.clone();
                    }
                    t.consecutive_errors = 0;
                    t.last_success_at = Some(now);
                    t.last_result = "running";
                    t.remember(now, latency_ms, Some(progress.percentage));
                });
                if failed_before > 0 && self.admit_streak_line(Streak::Recovered) {
                    info!("✅ VMA polling works again for job {job_id} after {failed_before} failed polls");
                }
                if still_tracked {
                    log_disks_copied(&job_id, copied, facts.disks.count());
                    let _ = self.inner.writes.send(WriteMsg::Progress(Box::new(ProgressWrite {
                        job_id: job_id.clone(),
                        progress: progress.clone(),
                        progress_changed: *progress_changed,
                        disks: *disks,
                    })));
                    let _ = self.inner.writes.send(WriteMsg::Polled { job_id: job_id.clone(), error: None });
                }
                self.finish(&job_id, true);
            }
            Decision::Keep { .. } => {
                let error = match &observation {
                    Observation::Unavailable { kind, detail } => format!("{}: {}", kind.as_str(), detail),
                    Observation::NotFound { .. } => "job not found on VMA (within grace)".to_string(),
                    _ => "no progress".to_string(),
                };
                debug!(job_id = %job_id, error = %error, "VMA poll: no answer");
                let result = observation.status_word();
                let unavailable = matches!(observation, Observation::Unavailable { .. });
                let mut first_failure = false;
                self.update_tracked(&job_id, |t| {
                    if unavailable {
                        t.unavailable_streak += 1;
                        first_failure = t.unavailable_streak == 1;
                    }
                    t.consecutive_errors += 1;
                    t.polls_failed += 1;
                    t.last_result = result;
                    t.last_error = Some(error.clone());
                    t.remember(now, latency_ms, None);
                });
                // Once per streak, where the original warned at every poll: the line says what the
                // VMA answered, and that the job is not failed for it.
                if first_failure && self.admit_streak_line(Streak::Failing) {
                    warn!("⚠️ VMA polling error for job {job_id}: {error} - the job keeps its state; polling goes on with backoff");
                }
                let _ = self.inner.writes.send(WriteMsg::Polled { job_id: job_id.clone(), error: Some(error) });
                self.finish(&job_id, false);
            }
            final_decision => {
                let outcome =
                    finalize(services, &job_id, facts.progress_percent, &observation, final_decision, Caller::Poller)
                        .await;
                if outcome != Outcome::Error {
                    self.untrack(&job_id);
                } else {
                    // Still tracked: the next poll (backing off) decides and writes again.
                    self.update_tracked(&job_id, |t| {
                        t.consecutive_errors += 1;
                        t.polls_failed += 1;
                        t.last_result = "finalize_failed";
                        t.last_error = Some("the final status could not be written; retrying".into());
                        t.remember(now, latency_ms, None);
                    });
                    self.finish(&job_id, false);
                }
            }
        }
    }

    fn admit_streak_line(&self, streak: Streak) -> bool {
        self.inner.streak_log.lock().expect("poller lock").admit(streak, Instant::now())
    }

    /// Write the summary of streak lines held back in the window that just ended, if any.
    fn close_streak_window(&self) {
        let summary = self.inner.streak_log.lock().expect("poller lock").close_window(Instant::now());
        if let Some(summary) = summary {
            warn!("{summary}");
        }
    }

    /// Apply `f` to a tracked job; false when the job is no longer tracked.
    fn update_tracked(&self, job_id: &str, f: impl FnOnce(&mut Tracked)) -> bool {
        let mut jobs = self.inner.jobs.lock().expect("poller lock");
        match jobs.get_mut(job_id) {
            Some(t) => {
                f(t);
                true
            }
            None => false,
        }
    }

    /// End a poll: clear in-flight and schedule the next one (backing off after failures).
    fn finish(&self, job_id: &str, ok: bool) {
        let interval = self.inner.services.settings.poll_interval;
        let now_wall = self.inner.services.clock.now();
        self.update_tracked(job_id, |t| {
            t.in_flight = false;
            t.polls += 1;
            t.last_poll_at = Some(now_wall);
            let factor = if ok { 1 } else { 1u32 << t.consecutive_errors.min(3) }.min(6);
            t.next_due = t.dispatched_at + interval * factor;
        });
    }

    /// Renew our leases, claim back the ones of ours that expired (unless another OMA holds them
    /// now), and drop jobs we no longer own (finished, released, or taken over). A job's lease is
    /// good for `lease_use` from the start of the renewal or claim that covered it.
    pub async fn maintain(&self) -> Result<(), sqlx::Error> {
        let services = &self.inner.services;
        let (me, ttl) = (&services.instance_id, services.settings.lease_ttl());
        let generation_before = self.inner.generation.load(Ordering::Relaxed);
        let renewal_began = Instant::now();
        db::renew_leases(&services.pool, me, ttl).await?;
        let leases = db::my_leases(&services.pool, me).await?;
        let live: HashSet<&str> = leases.iter().filter(|(_, live)| *live).map(|(id, _)| id.as_str()).collect();
        let lapsed: Vec<String> = {
            let jobs = self.inner.jobs.lock().expect("poller lock");
            leases.iter().filter(|(id, live)| !live && jobs.contains_key(id)).map(|(id, _)| id.clone()).collect()
        };
        let (reclaimed, reclaim_began) = if lapsed.is_empty() {
            (HashSet::new(), renewal_began)
        } else {
            let began = Instant::now();
            (db::claim_polling_many(&services.pool, &lapsed, me, ttl).await?, began)
        };
        let lease_use = services.settings.lease_use();
        let mut jobs = self.inner.jobs.lock().expect("poller lock");
        let mut lost = Vec::new();
        for (id, t) in jobs.iter_mut() {
            if t.generation >= generation_before {
                continue; // tracked during this round: its own claim's time stands
            }
            if live.contains(id.as_str()) {
                t.lease_until = t.lease_until.max(renewal_began + lease_use);
            } else if reclaimed.contains(id) {
                t.lease_until = t.lease_until.max(reclaim_began + lease_use);
            } else if !t.in_flight {
                lost.push(id.clone());
            }
        }
        if !reclaimed.is_empty() {
            info!("Leases of {} jobs had lapsed and were claimed back (no other OMA had taken them)", reclaimed.len());
        }
        for id in lost {
            jobs.remove(&id);
            info!("Stopped polling job {id}: it is finished or no longer owned by this instance");
        }
        services.metrics.pollers_active.set(jobs.len() as i64);
        Ok(())
    }

    /// Poll until cancelled, then let in-flight polls finish and flush their writes.
    pub async fn run(self, cancel: CancellationToken) {
        let interval = self.inner.services.settings.poll_interval;
        let rx = self.inner.writes_rx.lock().expect("poller lock").take();
        let writer = rx.map(|rx| tokio::spawn(write_loop(self.inner.services.clone(), rx)));
        info!("🚀 VMA progress poller started successfully (interval {})", humantime::format_duration(interval));
        // Leases are renewed once per interval in a task of their own: dispatch never waits on the
        // database, so a stalled database delays writes, not polls.
        let maintenance = {
            let (poller, cancel) = (self.clone(), cancel.clone());
            tokio::spawn(async move {
                // A renewal that has not answered within a lease is of no use any more: given up
                // (its connection dropped), so a database that went silent mid-statement does
                // not keep polling paused once it answers again.
                let give_up = poller.inner.services.settings.lease_ttl();
                every(Instant::now(), interval, &cancel, || async {
                    match tokio::time::timeout(give_up, poller.maintain()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => warn!("⚠️ VMA poller could not renew its leases: {e}"),
                        Err(_) => warn!(
                            "⚠️ VMA poller could not renew its leases: the database did not answer within {}",
                            humantime::format_duration(give_up)
                        ),
                    }
                })
                .await
            })
        };
        // Dispatch ten times per interval (each job keeps its own phase).
        let mut ticker = tokio::time::interval(tick_period(interval));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = ticker.tick() => {
                    self.close_streak_window();
                    self.tick();
                }
                _ = self.inner.wake.notified() => {
                    // A newly tracked job may be due at once.
                    self.tick();
                }
            }
        }
        let _ = maintenance.await;
        self.inner.tasks.close();
        if tokio::time::timeout(
            self.inner.services.settings.vma_timeout + Duration::from_secs(1),
            self.inner.tasks.wait(),
        )
        .await
        .is_err()
        {
            warn!("VMA poller stopped with polls still in flight");
        }
        let _ = self.inner.writes.send(WriteMsg::Close);
        if let Some(mut writer) = writer {
            if tokio::time::timeout(SHUTDOWN_DB_WAIT, &mut writer).await.is_err() {
                writer.abort();
                warn!(
                    "⚠️ VMA poller could not flush its last progress writes: the database did not answer within {}",
                    humantime::format_duration(SHUTDOWN_DB_WAIT)
                );
            }
        }
        info!("VMA progress poller stopped");
    }
}

/// How often due jobs are dispatched: a tenth of the interval, at least 10 ms.
fn tick_period(interval: Duration) -> Duration {
    (interval / 10).max(Duration::from_millis(10))
}

/// Jobs due before this instant are dispatched at a tick at `now`: ticks jitter by a few
/// milliseconds, so a job due within half a tick is due now (not a whole tick late).
fn dispatch_horizon(now: Instant, interval: Duration) -> Instant {
    now + tick_period(interval) / 2
}

/// A job's phase in [0.6, 1.0) of an interval, stable for its id.
fn phase_of(job_id: &str) -> f64 {
    let hash = job_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    0.6 + (hash % 1000) as f64 / 2500.0
}

fn status_of(job_id: &str, t: &Tracked, now: DateTime<Utc>) -> PolledJobStatus {
    PolledJobStatus {
        job_id: job_id.to_string(),
        started_polling_at: t.facts.polling_started_at,
        last_poll_at: t.last_poll_at,
        last_success_at: t.last_success_at,
        consecutive_errors: t.consecutive_errors,
        polls_total: t.polls,
        polls_failed: t.polls_failed,
        in_flight: t.in_flight,
        last_result: t.last_result,
        last_error: t.last_error.clone(),
        lookup_key: t.preferred.as_ref().map(|k| match k {
            LookupKey::ExportName(n) => n.clone(),
            LookupKey::JobId => job_id.to_string(),
        }),
        job_age_seconds: t.facts.polling_started_at.map(|s| (now - s).num_seconds()),
        history: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_spread_within_the_interval() {
        let phases: Vec<f64> = (0..1000).map(|i| phase_of(&format!("job-{i}"))).collect();
        assert!(phases.iter().all(|p| (0.6..1.0).contains(p)));
        let low = phases.iter().filter(|p| **p < 0.8).count();
        assert!((350..650).contains(&low), "{low} of 1000 in the first half");
        assert_eq!(phase_of("job-1"), phase_of("job-1"));
        assert_eq!(tick_period(Duration::from_secs(5)), Duration::from_millis(500));
        assert_eq!(tick_period(Duration::from_millis(50)), Duration::from_millis(10));
    }

    #[test]
    fn a_job_due_within_half_a_tick_is_due_now() {
        let now = Instant::now();
        assert_eq!(dispatch_horizon(now, Duration::from_millis(100)), now + Duration::from_millis(5));
        assert_eq!(dispatch_horizon(now, Duration::from_secs(5)), now + Duration::from_millis(250));
    }
}
