//! The simulator's state and its VMA listener. The listener really closes for "refused",
//! really holds connections for "blackhole" and really resets them for "reset"; everything
//! else is decided per request from the seeded RNG and the per-job mode.

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::journal::{JobStats, Journal};
use crate::model::{answer_poll, Job, Mode, ProgressUpdate, Ramp, Reply};
use crate::spec::{FaultSpec, Faults, JobSpec, SpecError, UnreachableMode};

/// What the fault plan decided for one request or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    pub unreachable: Option<UnreachableMode>,
    pub error_status: Option<u16>,
    pub latency: Option<Duration>,
}

/// Blackhole and reset act on whole connections: decided once per accepted connection.
fn is_connection_fault(mode: UnreachableMode) -> bool {
    matches!(mode, UnreachableMode::Blackhole | UnreachableMode::Reset)
}

/// Draw the connection-level decision for a newly accepted connection.
pub fn decide_connection_fault(faults: &Faults, rng: &mut StdRng) -> Option<UnreachableMode> {
    match faults.unreachable {
        Some((mode, p)) if is_connection_fault(mode) && rng.gen::<f64>() < p => Some(mode),
        _ => None,
    }
}

/// Draw one request's decision. Each configured fault draws from the RNG in a fixed order, so
/// the same seed and the same faults give the same sequence of decisions.
pub fn decide_faults(faults: &Faults, rng: &mut StdRng) -> FaultDecision {
    let mut d = FaultDecision::default();
    if let Some((mode, p)) = faults.unreachable {
        if mode == UnreachableMode::HangAfterHeaders && rng.gen::<f64>() < p {
            d.unreachable = Some(mode);
        }
    }
    if let Some((status, p)) = faults.error_rate {
        if rng.gen::<f64>() < p {
            d.error_status = Some(status);
        }
    }
    if let Some((base, jitter, p)) = faults.latency {
        if rng.gen::<f64>() < p {
            let extra = if jitter.is_zero() { 0 } else { rng.gen_range(0..=jitter.as_micros() as u64) };
            d.latency = Some(base + Duration::from_micros(extra));
        }
    }
    d
}

pub(crate) struct Inner {
    pub jobs: HashMap<String, Job>,
    /// Export name → job id.
    pub aliases: HashMap<String, String>,
    pub faults: Faults,
    pub fault_epoch: u64,
    pub rng: StdRng,
    pub journal: Journal,
    pub replicate_defaults: JobSpec,
}

impl Inner {
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

/// The headers of a fixed-body answer, as the real VMA's handlers set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Json,
    /// Progress: JSON that must not be cached.
    JsonNoCache,
    /// Go's `http.Error`.
    Text,
}

impl Kind {
    pub fn headers(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Json => &[("content-type", "application/json")],
            Kind::JsonNoCache => &[("content-type", "application/json"), ("cache-control", "no-cache")],
            Kind::Text => &[("content-type", "text/plain; charset=utf-8"), ("x-content-type-options", "nosniff")],
        }
    }
}

/// An answer with a fixed body. hyper sends it ([`Plain::into_response`]) or the hot path writes
/// it ([`crate::hot`]); `tests/wire.rs` proves both give the same bytes.
#[derive(Debug)]
pub(crate) struct Plain {
    pub status: StatusCode,
    pub kind: Kind,
    pub body: Bytes,
}

impl Plain {
    fn new(status: StatusCode, kind: Kind, body: impl Into<Bytes>) -> Plain {
        Plain { status, kind, body: body.into() }
    }

    /// Go's `http.Error`.
    fn text(status: StatusCode, body: impl Into<Bytes>) -> Plain {
        Plain::new(status, Kind::Text, body)
    }

    pub fn into_response(self) -> Response<Body> {
        let mut r = Response::new(Body::from(self.body));
        *r.status_mut() = self.status;
        for (name, value) in self.kind.headers() {
            r.headers_mut().insert(*name, HeaderValue::from_static(value));
        }
        r
    }
}

/// Shared state of one simulator.
pub struct SimState {
    pub seed: u64,
    pub(crate) inner: Mutex<Inner>,
    listener_up: watch::Sender<bool>,
    /// Cancelled to drop every open VMA connection at once; replaced afterwards.
    connections: Mutex<CancellationToken>,
    restart_epoch: Mutex<u64>,
    started: Instant,
    pub vma_addr: SocketAddr,
    /// Plain progress polls are answered by [`crate::hot`] (see [`SimConfig::hot_path`]).
    hot_path: bool,
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
        }
    }
}

impl SimState {
    fn new(config: &SimConfig, seed: u64, vma_addr: SocketAddr) -> (Arc<SimState>, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(true);
        let state = SimState {
            seed,
            inner: Mutex::new(Inner {
                jobs: HashMap::new(),
                aliases: HashMap::new(),
                faults: Faults::default(),
                fault_epoch: 0,
                rng: StdRng::seed_from_u64(seed),
                journal: Journal::new(config.journal_capacity),
                replicate_defaults: JobSpec { mode: "running".into(), start_percent: Some(0.0), ..JobSpec::default() },
            }),
            listener_up: tx,
            connections: Mutex::new(CancellationToken::new()),
            restart_epoch: Mutex::new(0),
            started: Instant::now(),
            vma_addr,
            hot_path: config.hot_path,
            hot_answers: Default::default(),
        };
        (Arc::new(state), rx)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
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

    fn connection_token(&self) -> CancellationToken {
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

    /// The answer to a poll of `path` that [`Inner::begin_poll`] began (`None`: an id nobody
    /// knows), after the poll's delay, journalled. Both the hyper path and the hot path answer
    /// polls through it.
    pub(crate) async fn complete_poll(&self, begun: Option<BegunPoll>, path: &str, started: Instant) -> Plain {
        let Some(poll) = begun else {
            self.record("GET", path, None, "unknown_job", 404, started);
            return Plain::text(StatusCode::NOT_FOUND, "job not found\n");
        };
        if let Some(d) = poll.delay {
            tokio::time::sleep(d).await;
        }
        let error = |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (outcome, plain) = match poll.reply {
            Reply::Progress(body) => ("progress", Plain::new(StatusCode::OK, Kind::JsonNoCache, body)),
            Reply::NotFound => ("not_found", Plain::text(StatusCode::NOT_FOUND, "job not found\n")),
            Reply::Http200NotFound => ("http200_not_found", Plain::text(StatusCode::OK, "job not found\n")),
            Reply::Status(code) => ("error_status", Plain::text(error(code), "internal server error\n")),
            Reply::Malformed(_, body) => ("malformed", Plain::new(StatusCode::OK, Kind::Json, body)),
        };
        let mut inner = self.lock();
        inner.journal.poll_finished(&poll.job_id, outcome);
        // The poll's entry carries its start time: the suite measures poll cadence from it.
        let status = plain.status.as_u16();
        inner.journal.record(journal_entry("GET".into(), path, Some(poll.job_id), outcome, status, poll.now, started));
        plain
    }

    fn record(
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
    crate::journal::Entry { seq: 0, at, method, path: path.to_string(), job, outcome, status, latency_ms }
}

/// The running simulator: both listeners and their tasks.
pub struct SimVma {
    pub state: Arc<SimState>,
    vma_addr: SocketAddr,
    control_addr: SocketAddr,
    cancel: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub listen: SocketAddr,
    pub control: SocketAddr,
    pub seed: Option<u64>,
    pub journal_capacity: usize,
    /// Answer plain progress polls without hyper while no fault is set (the default; the answers
    /// are the same bytes, at about half the CPU). Off: hyper serves every request.
    pub hot_path: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: "127.0.0.1:0".parse().expect("static"),
            control: "127.0.0.1:0".parse().expect("static"),
            seed: None,
            journal_capacity: crate::journal::DEFAULT_CAPACITY,
            hot_path: true,
        }
    }
}

impl SimVma {
    /// Bind both listeners (port 0 allowed) and start serving.
    pub async fn start(config: SimConfig) -> std::io::Result<SimVma> {
        let seed = config.seed.unwrap_or_else(rand::random);
        let vma_listener = TcpListener::bind(config.listen).await?;
        let vma_addr = vma_listener.local_addr()?;
        let control_listener = TcpListener::bind(config.control).await?;
        let control_addr = control_listener.local_addr()?;
        let (state, up_rx) = SimState::new(&config, seed, vma_addr);
        let cancel = CancellationToken::new();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(accept_loop(state.clone(), vma_listener, up_rx, cancel.clone()));
        let control = crate::control::router(state.clone());
        let control_cancel = cancel.clone();
        tasks.spawn(async move {
            let _ = axum::serve(control_listener, control)
                .with_graceful_shutdown(async move { control_cancel.cancelled().await })
                .await;
        });
        info!(seed, vma = %vma_addr, control = %control_addr, "sim-vma started (seed {seed})");
        Ok(SimVma { state, vma_addr, control_addr, cancel, tasks })
    }

    pub fn vma_addr(&self) -> SocketAddr {
        self.vma_addr
    }

    pub fn control_addr(&self) -> SocketAddr {
        self.control_addr
    }

    pub fn vma_url(&self) -> String {
        format!("http://{}", self.vma_addr)
    }

    pub fn control_url(&self) -> String {
        format!("http://{}", self.control_addr)
    }

    pub fn seed(&self) -> u64 {
        self.state.seed
    }

    /// Stop both listeners and drop every connection.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        self.state.drop_connections();
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn bind_again(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let mut last = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last.expect("at least one attempt"))
}

async fn accept_loop(
    state: Arc<SimState>,
    first: TcpListener,
    mut up: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let mut listener = Some(first);
    loop {
        if !*up.borrow_and_update() {
            listener = None;
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = up.changed() => if r.is_err() { return },
            }
            continue;
        }
        let l = match listener.take() {
            Some(l) => l,
            None => match bind_again(state.vma_addr).await {
                Ok(l) => l,
                Err(e) => {
                    warn!("sim-vma could not re-open its VMA listener on {}: {e}", state.vma_addr);
                    return;
                }
            },
        };
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = up.changed() => {
                    if r.is_err() { return }
                    if !*up.borrow() { break }
                }
                accepted = l.accept() => {
                    if let Ok((sock, _)) = accepted {
                        tokio::spawn(serve_connection(state.clone(), sock));
                    }
                }
            }
        }
        drop(l);
        listener = None;
    }
}

async fn serve_connection(state: Arc<SimState>, sock: TcpStream) {
    let kill = state.connection_token();
    let fault = {
        let mut inner = state.lock();
        let faults = inner.faults.clone();
        decide_connection_fault(&faults, &mut inner.rng)
    };
    match fault {
        Some(UnreachableMode::Blackhole) => {
            state.record("-", "(connection)", None, "fault_blackhole", 0, Instant::now());
            let mut sock = sock;
            let mut sink = [0u8; 4096];
            // Read and discard, never answer, until the fault is cleared or the client gives up.
            loop {
                tokio::select! {
                    _ = kill.cancelled() => return,
                    n = tokio::io::AsyncReadExt::read(&mut sock, &mut sink) => if matches!(n, Ok(0) | Err(_)) { return },
                }
            }
        }
        Some(UnreachableMode::Reset) => {
            state.record("-", "(connection)", None, "fault_reset", 0, Instant::now());
            // Linger 0: close sends RST instead of FIN.
            #[allow(deprecated)]
            let _ = sock.set_linger(Some(Duration::ZERO));
            drop(sock);
            return;
        }
        _ => {}
    }
    let _ = sock.set_nodelay(true);
    let io = if state.hot_path {
        let hot = crate::hot::serve(&state, sock);
        tokio::select! {
            handed_over = hot => match handed_over {
                Some(rest) => rest,
                None => return,
            },
            _ = kill.cancelled() => return,
        }
    } else {
        crate::hot::Rewind::whole(sock)
    };
    let io = hyper_util::rt::TokioIo::new(io);
    // Shared by reference count: cloning a CancellationToken per request would take its lock.
    let conn_kill = Arc::new(kill.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        let kill = conn_kill.clone();
        async move { Ok::<_, Infallible>(handle(&state, &kill, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::select! {
        _ = conn => {}
        _ = kill.cancelled() => {}
    }
}

/// One VMA request: the global faults first, then the route.
async fn handle(state: &SimState, kill: &CancellationToken, req: Request<Incoming>) -> Response<Body> {
    let started = Instant::now();
    // While a connection-level fault is probabilistic, close every connection after one answer so
    // each request is a new connection with its own draw.
    let (decision, close_after) = {
        let mut inner = state.lock();
        let inner = &mut *inner;
        let close_after = matches!(inner.faults.unreachable, Some((mode, _)) if is_connection_fault(mode));
        (decide_faults(&inner.faults, &mut inner.rng), close_after)
    };
    if decision.unreachable == Some(UnreachableMode::HangAfterHeaders) {
        state.record(req.method().to_string(), req.uri().path(), None, "fault_hang_after_headers", 200, started);
        let stream = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"{\"job_id\":")) })
            .chain(futures::stream::once(
                kill.clone().cancelled_owned().map(|()| Err(std::io::Error::other("connection dropped"))),
            ));
        return respond(StatusCode::OK, "application/json", Body::from_stream(stream));
    }
    if let Some(latency) = decision.latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(status) = decision.error_status {
        state.record(req.method().to_string(), req.uri().path(), None, "fault_error_status", status, started);
        return text(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "internal server error\n",
        );
    }
    let mut response = dispatch(state, req, started).await;
    if close_after {
        response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The VMA's routes (gorilla mux in the real VMA). Path parameters are percent-decoded, as Go
/// decodes `URL.Path` before matching.
#[derive(Debug, PartialEq)]
pub(crate) enum Route<'a> {
    Health,
    Progress(Cow<'a, str>),
    Update(Cow<'a, str>),
    Replicate,
    Status(Cow<'a, str>),
}

impl<'a> Route<'a> {
    pub(crate) fn of(path: &'a str) -> Option<Route<'a>> {
        let rest = path.strip_prefix("/api/v1/")?;
        let param = |segment: &'a str| {
            (!segment.is_empty() && !segment.contains('/')).then(|| percent_decode_str(segment).decode_utf8_lossy())
        };
        match rest {
            "health" => Some(Route::Health),
            "replicate" => Some(Route::Replicate),
            _ => {
                if let Some(tail) = rest.strip_prefix("progress/") {
                    match tail.strip_suffix("/update") {
                        Some(id) => param(id).map(Route::Update),
                        None => param(tail).map(Route::Progress),
                    }
                } else {
                    rest.strip_prefix("status/").and_then(param).map(Route::Status)
                }
            }
        }
    }

    fn method(&self) -> Method {
        match self {
            Route::Health | Route::Progress(_) | Route::Status(_) => Method::GET,
            Route::Update(_) | Route::Replicate => Method::POST,
        }
    }
}

/// Request bodies above this are refused (the VMA's bodies are small JSON documents).
const MAX_BODY: usize = 2 * 1024 * 1024;

async fn dispatch(state: &SimState, req: Request<Incoming>, started: Instant) -> Response<Body> {
    let Some(route) = Route::of(req.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    if req.method() != route.method() {
        // gorilla's answer to a known path with another method: 405, empty body.
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", Body::empty());
    }
    match route {
        Route::Health => health(state, started),
        Route::Progress(id) => progress(state, &id, req.uri().path(), started).await,
        Route::Status(id) => status(state, &id, started),
        Route::Update(id) => {
            let (id, path) = (id.into_owned(), req.uri().path().to_owned());
            match read_body(req).await {
                Ok(body) => update(state, &id, &path, &body, started),
                Err(r) => r,
            }
        }
        Route::Replicate => match read_body(req).await {
            Ok(body) => replicate(state, &body, started),
            Err(r) => r,
        },
    }
}

/// The whole request body, at most [`MAX_BODY`] bytes.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            Err(text(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {MAX_BODY} bytes\n")))
        }
        Err(e) => Err(text(StatusCode::BAD_REQUEST, format!("could not read the request body: {e}\n"))),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: impl Into<Body>) -> Response<Body> {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A plain-text answer as Go's `http.Error` writes it.
fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Plain::text(status, body).into_response()
}

fn json_response(status: StatusCode, body: String) -> Response<Body> {
    Plain::new(status, Kind::Json, body).into_response()
}

/// Go's `time.Duration` text (e.g. `1m2.5s`), as the real VMA prints `uptime`.
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs_f64();
    let h = (secs / 3600.0).floor();
    let m = ((secs - h * 3600.0) / 60.0).floor();
    let s = secs - h * 3600.0 - m * 60.0;
    match (h as u64, m as u64) {
        (0, 0) => format!("{s}s"),
        (0, m) => format!("{m}m{s}s"),
        (h, m) => format!("{h}h{m}m{s}s"),
    }
}

fn health(state: &SimState, started: Instant) -> Response<Body> {
    let body = serde_json::json!({
        "status": "healthy",
        "timestamp": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "uptime": go_duration(state.uptime()),
    });
    state.record("GET", "/api/v1/health", None, "healthy", 200, started);
    json_response(StatusCode::OK, body.to_string())
}

async fn progress(state: &SimState, id: &str, path: &str, started: Instant) -> Response<Body> {
    let begun = state.lock().begin_poll(id, Utc::now());
    state.complete_poll(begun, path, started).await.into_response()
}

fn update(state: &SimState, id: &str, path: &str, body: &[u8], started: Instant) -> Response<Body> {
    let update: ProgressUpdate = match serde_json::from_slice(body) {
        Ok(u) => u,
        Err(e) => {
            state.record("POST", path, None, "bad_request", 400, started);
            return text(StatusCode::BAD_REQUEST, format!("invalid request body: {e}\n"));
        }
    };
    let now = Utc::now();
    let (job_id, auto) = {
        let mut inner = state.lock();
        let (job_id, auto) = match inner.resolve(id) {
            Some(j) => (j, false),
            None => {
                let mut job = Job::new(id, vec![id.to_string()], Mode::Running(Ramp::default()), vec![], now);
                job.status = "Queued".into();
                job.phase = "Discover".into();
                job.sync_type = String::new();
                job.total_bytes = 0;
                job.bytes_transferred = 0;
                job.throughput_bps = 0.0;
                inner.insert_job(job);
                (id.to_string(), true)
            }
        };
        inner.jobs.get_mut(&job_id).expect("present").apply_update(&update);
        (job_id, auto)
    };
    state.record("POST", path, Some(&job_id), if auto { "auto_initialized" } else { "updated" }, 200, started);
    let body = if auto {
        serde_json::json!({"status": "success", "auto_initialized": true, "job_id": id})
    } else {
        serde_json::json!({"status": "success", "job_id": id})
    };
    json_response(StatusCode::OK, body.to_string())
}

#[derive(serde::Deserialize)]
struct ReplicationRequest {
    job_id: String,
    #[serde(default)]
    vm_paths: Vec<String>,
    #[serde(default)]
    nbd_targets: Vec<NbdTarget>,
}

#[derive(serde::Deserialize)]
struct NbdTarget {
    device_path: String,
}

fn replicate(state: &SimState, body: &[u8], started: Instant) -> Response<Body> {
    let request: ReplicationRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            state.record("POST", "/api/v1/replicate", None, "bad_request", 400, started);
            return text(StatusCode::BAD_REQUEST, format!("Invalid request: {e}\n"));
        }
    };
    let names: Vec<String> = request
        .nbd_targets
        .iter()
        .filter_map(|t| t.device_path.rsplit('/').next().map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect();
    let now = Utc::now();
    {
        let mut inner = state.lock();
        let spec = inner.replicate_defaults.clone();
        let (mode, transitions) = spec
            .compile()
            .map(|c| (c.mode, c.transitions))
            .unwrap_or_else(|_| (Mode::Running(Ramp::default()), vec![]));
        if let Some(old) = inner.resolve(&request.job_id) {
            inner.remove_job(&old);
        }
        let mut job = Job::new(&request.job_id, names, mode, transitions, now);
        job.vm_path = request.vm_paths.first().cloned();
        inner.insert_job(job);
    }
    state.record("POST", "/api/v1/replicate", Some(&request.job_id), "started", 200, started);
    let body = serde_json::json!({
        "job_id": request.job_id,
        "status": "started",
        "vm_count": request.vm_paths.len().max(1),
        "started_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    json_response(StatusCode::OK, body.to_string())
}

fn status(state: &SimState, id: &str, started: Instant) -> Response<Body> {
    let inner = state.lock();
    let found = inner.jobs.get(id).filter(|j| j.vm_path.is_some()).map(|j| {
        serde_json::json!({
            "job_id": j.job_id, "status": "running", "progress_percent": 0, "current_operation": "initializing",
            "start_time": j.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "last_update": j.started_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "vm_path": j.vm_path,
        })
    });
    drop(inner);
    match found {
        Some(body) => {
            state.record("GET", "/api/v1/status", Some(id), "status", 200, started);
            json_response(StatusCode::OK, body.to_string())
        }
        None => {
            state.record("GET", "/api/v1/status", None, "unknown_job", 404, started);
            text(StatusCode::NOT_FOUND, format!("Job not found: {id}\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_fault_decisions() {
        let faults = FaultSpec {
            unreachable: Some(crate::spec::UnreachableSpec {
                mode: UnreachableMode::HangAfterHeaders,
                probability: Some(0.3),
            }),
            latency: Some(crate::spec::LatencySpec {
                base: "10ms".into(),
                jitter: Some("20ms".into()),
                probability: Some(0.5),
            }),
            error_rate: Some(crate::spec::ErrorRateSpec { status: Some(503), probability: 0.2 }),
            for_duration: None,
        }
        .compile()
        .unwrap();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..500).map(|_| decide_faults(&faults, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let decisions = run(42);
        let resets = decisions.iter().filter(|d| d.unreachable.is_some()).count();
        assert!((100..200).contains(&resets), "about 30% of 500: {resets}");
    }

    #[test]
    fn routes_match_the_vma_paths_and_decode_their_parameters() {
        assert_eq!(Route::of("/api/v1/health"), Some(Route::Health));
        assert_eq!(Route::of("/api/v1/replicate"), Some(Route::Replicate));
        assert_eq!(Route::of("/api/v1/progress/job-1"), Some(Route::Progress("job-1".into())));
        assert_eq!(Route::of("/api/v1/progress/job-1/update"), Some(Route::Update("job-1".into())));
        assert_eq!(Route::of("/api/v1/status/job-1"), Some(Route::Status("job-1".into())));
        assert_eq!(Route::of("/api/v1/progress/a%20b"), Some(Route::Progress("a b".into())));
        // An export name that ends in "update" is still a progress id.
        assert_eq!(Route::of("/api/v1/progress/update"), Some(Route::Progress("update".into())));
        for unknown in [
            "/",
            "/api/v1/progress/",
            "/api/v1/progress//update",
            "/api/v1/progress/a/b",
            "/api/v1/progress/a/update/x",
            "/api/v1/status/",
            "/api/v1/healthz",
            "/api/v2/health",
        ] {
            assert_eq!(Route::of(unknown), None, "{unknown}");
        }
        assert_eq!(Route::Progress("x".into()).method(), Method::GET);
        assert_eq!(Route::Update("x".into()).method(), Method::POST);
    }

    #[test]
    fn go_duration_text() {
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(62)), "1m2s");
    }
}
