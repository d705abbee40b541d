//! The simulator's state and every control verb: jobs (modes, export-name aliases), global faults,
//! restarts, the seeded RNG and the journal, behind one lock ([`Store`]); a poll begins under the
//! lock ([`Store::begin_poll`]) and completes outside it ([`SimState::complete_poll`]), for both
//! the hyper path and the hot path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::journal::{JobStats, Journal};
use crate::model::{Job, Mode};
use crate::replies::{FixedResponse, ResponseHeaders};
use crate::spec::{FaultSpec, Faults, JobSpec, SpecError, UnreachableMode};
use crate::wire::{answer_poll, Reply};

pub(crate) struct Store {
    pub jobs: HashMap<String, Job>,
    /// Export name → job id.
    pub aliases: HashMap<String, String>,
    pub faults: Faults,
    pub fault_epoch: u64,
    pub rng: StdRng,
    pub journal: Journal,
    pub replicate_defaults: JobSpec,
}

impl Store {
    pub fn resolve(&self, id: &str) -> Option<String> {
        if self.jobs.contains_key(id) {
            Some(id.to_string())
        } else {
            self.aliases.get(id).filter(|j| self.jobs.contains_key(*j)).cloned()
        }
    }

    pub fn insert_job(&mut self, job: Job) {
        for name in &job.export_names {
            self.aliases.insert(name.clone(), job.job_id.clone());
        }
        self.jobs.insert(job.job_id.clone(), job);
    }

    /// Begin a poll of `id`: its reply is decided and the journal sees the poll start. `None` for
    /// an id that is neither a job nor an export name.
    pub(crate) fn begin_poll(&mut self, id: &str, now: DateTime<Utc>) -> Option<BegunPoll> {
        let job_id = self.resolve(id)?;
        let job = self.jobs.get_mut(&job_id).expect("resolved");
        let (reply, delay) = answer_poll(job, now);
        self.journal.poll_started(&job_id, now);
        Some(BegunPoll { job_id, reply, delay, now })
    }

    pub fn remove_job(&mut self, id: &str) -> bool {
        match self.jobs.remove(id) {
            Some(job) => {
                for name in job.export_names {
                    self.aliases.remove(&name);
                }
                self.journal.forget_job(id);
                true
            }
            None => false,
        }
    }
}

/// A poll of a known job, begun under the state's lock; [`SimState::complete_poll`] waits out
/// its delay, journals it and gives the answer.
pub(crate) struct BegunPoll {
    job_id: String,
    reply: Reply,
    delay: Option<Duration>,
    now: DateTime<Utc>,
}

/// Shared state of one simulator.
pub struct SimState {
    pub seed: u64,
    pub(crate) inner: Mutex<Store>,
    listener_up: watch::Sender<bool>,
    /// Cancelled to drop every open VMA connection at once; replaced afterwards.
    connections: Mutex<CancellationToken>,
    restart_epoch: Mutex<u64>,
    started: Instant,
    pub vma_addr: SocketAddr,
    /// Plain progress polls are answered by [`crate::hot`] (see [`SimConfig::hot_path`]).
    pub(crate) hot_path: bool,
    /// Polls the hot path has answered (shown on the control API's health).
    pub(crate) hot_answers: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct JobView {
    pub job_id: String,
    pub export_names: Vec<String>,
    pub mode: &'static str,
    pub mode_detail: Mode,
    pub status: String,
    pub phase: String,
    pub percentage: f64,
    pub bytes_transferred: i64,
    pub total_bytes: i64,
    pub polls: u64,
    pub pending_transitions: usize,
    /// `multi_disk`: the disk being copied, or the last one done (1 for the first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<usize>,
}

impl JobView {
    pub fn of(job: &Job) -> JobView {
        JobView {
            job_id: job.job_id.clone(),
            export_names: job.export_names.clone(),
            mode: job.mode.name(),
            mode_detail: job.mode.clone(),
            status: job.status.clone(),
            phase: job.phase.clone(),
            percentage: job.percent,
            bytes_transferred: job.bytes_transferred,
            total_bytes: job.total_bytes,
            polls: job.polls,
            pending_transitions: job.transitions.len(),
            disk: matches!(job.mode, Mode::MultiDisk(_)).then_some(job.disk_index + 1),
        }
    }
}

impl SimState {
    pub(crate) fn new(
        seed: u64,
        vma_addr: SocketAddr,
        journal_capacity: usize,
        hot_path: bool,
    ) -> (Arc<SimState>, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(true);
        let state = SimState {
            seed,
            inner: Mutex::new(Store {
                jobs: HashMap::new(),
                aliases: HashMap::new(),
                faults: Faults::default(),
                fault_epoch: 0,
                rng: StdRng::seed_from_u64(seed),
                journal: Journal::new(journal_capacity),
                replicate_defaults: JobSpec { mode: "running".into(), start_percent: Some(0.0), ..JobSpec::default() },
            }),
            listener_up: tx,
            connections: Mutex::new(CancellationToken::new()),
            restart_epoch: Mutex::new(0),
            started: Instant::now(),
            vma_addr,
            hot_path,
            hot_answers: Default::default(),
        };
        (Arc::new(state), rx)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Polls answered without hyper so far.
    pub fn hot_path_answers(&self) -> u64 {
        self.hot_answers.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn listener_up(&self) -> bool {
        *self.listener_up.borrow()
    }

    pub(crate) fn connection_token(&self) -> CancellationToken {
        self.connections.lock().unwrap_or_else(|p| p.into_inner()).child_token()
    }

    /// Drop every open VMA connection (clients see them closed).
    pub fn drop_connections(&self) {
        let mut guard = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        guard.cancel();
        *guard = CancellationToken::new();
    }

    fn set_listener(&self, up: bool) {
        if !up {
            self.drop_connections();
        }
        self.listener_up.send_replace(up);
    }

    /// Create or change a job. An existing job keeps its progress and (unless given) its names.
    pub fn put_job(&self, id: &str, spec: &JobSpec) -> Result<JobView, SpecError> {
        let crate::spec::CompiledJob { mode, transitions, export_names: names } = spec.compile()?;
        let now = Utc::now();
        let mut inner = self.lock();
        let job = match inner.jobs.get_mut(id) {
            Some(existing) => {
                if let Some(names) = names {
                    let old = std::mem::replace(&mut existing.export_names, names);
                    let new_names = existing.export_names.clone();
                    for n in old {
                        inner.aliases.remove(&n);
                    }
                    for n in new_names {
                        inner.aliases.insert(n, id.to_string());
                    }
                }
                let existing = inner.jobs.get_mut(id).expect("present");
                existing.set_mode(mode, transitions, now);
                JobView::of(existing)
            }
            None => {
                let job = Job::new(id, names.unwrap_or_default(), mode, transitions, now);
                let view = JobView::of(&job);
                inner.insert_job(job);
                view
            }
        };
        Ok(job)
    }

    pub fn get_job(&self, id: &str) -> Option<JobView> {
        let inner = self.lock();
        inner.resolve(id).and_then(|j| inner.jobs.get(&j).map(JobView::of))
    }

    pub fn list_jobs(&self) -> Vec<JobView> {
        let inner = self.lock();
        let mut jobs: Vec<JobView> = inner.jobs.values().map(JobView::of).collect();
        jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
        jobs
    }

    pub fn forget_job(&self, id: &str) -> bool {
        let mut inner = self.lock();
        match inner.resolve(id) {
            Some(job_id) => inner.remove_job(&job_id),
            None => false,
        }
    }

    /// The newest `limit` journal entries (of one job, by id or export name), oldest first.
    pub fn journal_entries(&self, job: Option<&str>, limit: usize) -> Vec<crate::journal::Entry> {
        let inner = self.lock();
        let job = job.map(|j| inner.resolve(j).unwrap_or_else(|| j.to_string()));
        inner.journal.entries(job.as_deref(), limit)
    }

    pub fn job_stats(&self, id: &str) -> JobStats {
        let inner = self.lock();
        let key = inner.resolve(id).unwrap_or_else(|| id.to_string());
        inner.journal.stats(&key).unwrap_or_default()
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replace the global faults. "refused" closes the VMA listener until cleared.
    pub fn set_faults(self: &Arc<Self>, spec: &FaultSpec) -> Result<Faults, SpecError> {
        let faults = spec.compile()?;
        let epoch = {
            let mut inner = self.lock();
            inner.faults = faults.clone();
            inner.fault_epoch += 1;
            inner.fault_epoch
        };
        let refused = matches!(faults.unreachable, Some((UnreachableMode::Refused, _)));
        self.set_listener(!refused);
        if faults.unreachable.is_some() {
            // Pooled keep-alive connections must see the fault too.
            self.drop_connections();
        }
        info!(?faults, "faults set");
        if let Some(after) = faults.clear_after {
            let state = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                if state.lock().fault_epoch == epoch {
                    state.clear_faults();
                }
            });
        }
        Ok(faults)
    }

    pub fn clear_faults(&self) {
        {
            let mut inner = self.lock();
            inner.faults = Faults::default();
            inner.fault_epoch += 1;
        }
        info!("faults cleared");
        self.set_listener(true);
    }

    /// Like a real VMA restart: every job is forgotten; optionally down (refusing) for a while.
    pub fn restart(self: &Arc<Self>, down_for: Option<Duration>) {
        {
            let mut inner = self.lock();
            inner.jobs.clear();
            inner.aliases.clear();
        }
        self.drop_connections();
        info!(?down_for, "VMA restarted: all jobs forgotten");
        if let Some(d) = down_for {
            self.set_listener(false);
            let epoch = {
                let mut e = self.restart_epoch.lock().unwrap_or_else(|p| p.into_inner());
                *e += 1;
                *e
            };
            let state = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                let current = *state.restart_epoch.lock().unwrap_or_else(|p| p.into_inner());
                let refused = matches!(state.lock().faults.unreachable, Some((UnreachableMode::Refused, _)));
                if current == epoch && !refused {
                    state.set_listener(true);
                    info!("VMA back up after restart");
                }
            });
        }
    }

    /// Forget jobs, faults, journal and defaults.
    pub fn reset(&self) {
        {
            let mut inner = self.lock();
            inner.jobs.clear();
            inner.aliases.clear();
            inner.faults = Faults::default();
            inner.fault_epoch += 1;
            inner.journal.clear();
            inner.rng = StdRng::seed_from_u64(self.seed);
        }
        self.set_listener(true);
    }

    pub fn set_replicate_defaults(&self, spec: JobSpec) -> Result<(), SpecError> {
        spec.compile()?;
        self.lock().replicate_defaults = spec;
        Ok(())
    }

    /// The answer to a poll of `path` that [`Store::begin_poll`] began (`None`: an id nobody
    /// knows), after the poll's delay, journalled. Both the hyper path and the hot path answer
    /// polls through it.
    pub(crate) async fn complete_poll(
        &self,
        begun: Option<BegunPoll>,
        path: &str,
        client: Option<Arc<str>>,
        started: Instant,
    ) -> FixedResponse {
        let Some(poll) = begun else {
            let entry = journal_entry("GET".into(), path, None, "unknown_job", 404, Utc::now(), started);
            self.lock().journal.record(crate::journal::Entry { client, ..entry });
            return FixedResponse::text(StatusCode::NOT_FOUND, "job not found\n");
        };
        if let Some(d) = poll.delay {
            tokio::time::sleep(d).await;
        }
        let error = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (outcome, plain) = match poll.reply {
            Reply::Progress(body) => {
                ("progress", FixedResponse::new(StatusCode::OK, ResponseHeaders::JsonNoCache, body))
            }
            Reply::NotFound => ("not_found", FixedResponse::text(StatusCode::NOT_FOUND, "job not found\n")),
            Reply::Http200NotFound => ("http200_not_found", FixedResponse::text(StatusCode::OK, "job not found\n")),
            Reply::Status(code) => ("error_status", FixedResponse::text(error(code), "internal server error\n")),
            Reply::Malformed(_, body) => ("malformed", FixedResponse::new(StatusCode::OK, ResponseHeaders::Json, body)),
        };
        let mut inner = self.lock();
        inner.journal.poll_finished(&poll.job_id, outcome);
        // The poll's entry carries its start time: the suite measures poll cadence from it.
        let status = plain.status.as_u16();
        let entry = journal_entry("GET".into(), path, Some(poll.job_id), outcome, status, poll.now, started);
        inner.journal.record(crate::journal::Entry { client, ..entry });
        plain
    }

    pub(crate) fn record(
        &self,
        method: impl Into<Cow<'static, str>>,
        path: &str,
        job: Option<&str>,
        outcome: &'static str,
        status: u16,
        started: Instant,
    ) {
        let entry = journal_entry(method.into(), path, job.map(str::to_string), outcome, status, Utc::now(), started);
        self.lock().journal.record(entry);
    }
}

/// One journal entry (and its debug log line) for a request that started at `at` / `started`.
fn journal_entry(
    method: Cow<'static, str>,
    path: &str,
    job: Option<String>,
    outcome: &'static str,
    status: u16,
    at: chrono::DateTime<Utc>,
    started: Instant,
) -> crate::journal::Entry {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    debug!(%method, path, job, outcome, status, latency_ms, "VMA request");
    crate::journal::Entry { seq: 0, at, method, path: path.to_string(), job, outcome, status, latency_ms, client: None }
}
