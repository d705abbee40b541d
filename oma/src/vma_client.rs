//! HTTP client of the VMA progress API. Every answer or fault becomes a typed [`Observation`],
//! classified from the error's kind and the status/body, never from message text.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Largest progress body accepted; the real VMA sends about 1 KiB.
pub const MAX_PROGRESS_BODY_BYTES: usize = 256 * 1024;

/// The VMA's progress body (reference §1.3). Fields the OMA does not need are ignored; the ones
/// it stores must have the right JSON type, or the body counts as malformed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
pub struct VmaProgress {
    pub job_id: String,
    pub status: String,
    #[serde(default)]
    pub sync_type: String,
    #[serde(default)]
    pub phase: String,
    #[serde(default)]
    pub percentage: f64,
    #[serde(default)]
    pub current_operation: String,
    #[serde(default)]
    pub bytes_transferred: i64,
    #[serde(default)]
    pub total_bytes: i64,
    #[serde(default)]
    pub throughput: Throughput,
    #[serde(default)]
    pub timing: Timing,
    #[serde(default)]
    pub errors: Vec<serde_json::Value>,
    #[serde(default)]
    pub last_error: Option<serde_json::Value>,
    /// Per-disk entries, when the VMA sends them (omitted by migratekit's VMA when it has none;
    /// never a `disk_id`). What a multi-disk job's completion is checked against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_progresses: Option<Vec<DiskProgress>>,
}

/// One entry of `disk_progresses` (reference §1.3).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
pub struct DiskProgress {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub percent: f64,
    #[serde(default)]
    pub bytes_transferred: i64,
    #[serde(default)]
    pub total_bytes: i64,
}

impl DiskProgress {
    /// The VMA says this disk is copied.
    pub fn done(&self) -> bool {
        let status = self.status.to_ascii_lowercase();
        status == "completed" || status == "succeeded"
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
pub struct Throughput {
    #[serde(default)]
    pub current_mbps: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
pub struct Timing {
    #[serde(default)]
    pub eta_seconds: i64,
}

impl VmaProgress {
    /// `throughput.current_mbps` in bytes per second, as the original stored it.
    pub fn transfer_speed_bps(&self) -> i64 {
        (self.throughput.current_mbps * 1_048_576.0) as i64
    }

    /// The VMA's message for a failed job: `last_error`, else `errors`, else a fixed text.
    pub fn failure_message(&self) -> String {
        match &self.last_error {
            Some(serde_json::Value::String(s)) if !s.is_empty() => return s.clone(),
            Some(v) if !v.is_null() => return v.to_string(),
            _ => {}
        }
        if !self.errors.is_empty() {
            let parts: Vec<String> = self
                .errors
                .iter()
                .map(|e| match e {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            return parts.join("; ");
        }
        "VMA reported failure status".to_string()
    }
}

/// Why the VMA could not give an answer about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailableKind {
    ConnectionRefused,
    ConnectionReset,
    ConnectFailed,
    Timeout,
    UnexpectedEof,
    ServerError,
    UnexpectedStatus,
    MalformedBody,
    BodyTooLarge,
    Other,
}

impl UnavailableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnavailableKind::ConnectionRefused => "connection_refused",
            UnavailableKind::ConnectionReset => "connection_reset",
            UnavailableKind::ConnectFailed => "connect_failed",
            UnavailableKind::Timeout => "timeout",
            UnavailableKind::UnexpectedEof => "unexpected_eof",
            UnavailableKind::ServerError => "server_error",
            UnavailableKind::UnexpectedStatus => "unexpected_status",
            UnavailableKind::MalformedBody => "malformed_body",
            UnavailableKind::BodyTooLarge => "body_too_large",
            UnavailableKind::Other => "other",
        }
    }

    /// Transport-level faults: the VMA itself is out of reach, so trying more names is pointless.
    pub fn is_transport(self) -> bool {
        matches!(
            self,
            UnavailableKind::ConnectionRefused
                | UnavailableKind::ConnectionReset
                | UnavailableKind::ConnectFailed
                | UnavailableKind::Timeout
                | UnavailableKind::UnexpectedEof
        )
    }
}

/// What the VMA said about one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Running(VmaProgress),
    Completed(VmaProgress),
    Failed {
        message: String,
        progress: VmaProgress,
    },
    /// 404, or a 200 whose body says the job is not found.
    NotFound {
        http200: bool,
    },
    Unavailable {
        kind: UnavailableKind,
        detail: String,
    },
}

impl Observation {
    /// The guide's word for it: `running`, `completed`, `failed`, `not_found`, `unreachable`.
    pub fn status_word(&self) -> &'static str {
        match self {
            Observation::Running(_) => "running",
            Observation::Completed(_) => "completed",
            Observation::Failed { .. } => "failed",
            Observation::NotFound { .. } => "not_found",
            Observation::Unavailable { .. } => "unreachable",
        }
    }

    pub fn progress(&self) -> Option<&VmaProgress> {
        match self {
            Observation::Running(p) | Observation::Completed(p) => Some(p),
            Observation::Failed { progress, .. } => Some(progress),
            _ => None,
        }
    }
}

/// Classify a 200 progress body. Status/phase strings are the VMA's data vocabulary.
pub fn classify_progress(progress: VmaProgress) -> Observation {
    let status = progress.status.to_ascii_lowercase();
    let phase = progress.phase.to_ascii_lowercase();
    if status == "completed" || status == "succeeded" || phase == "completed" {
        Observation::Completed(progress)
    } else if status == "failed" || phase == "error" {
        let message = progress.failure_message();
        Observation::Failed { message, progress }
    } else {
        Observation::Running(progress)
    }
}

/// Classify a complete HTTP answer (status + body) for a progress request.
pub fn classify_response(status: u16, body: &[u8]) -> Observation {
    match status {
        200 => match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(value) if body_says_not_found(&value) => Observation::NotFound { http200: true },
            Ok(value) => match serde_json::from_value::<VmaProgress>(value) {
                Ok(progress) => classify_progress(progress),
                Err(e) => Observation::Unavailable {
                    kind: UnavailableKind::MalformedBody,
                    detail: format!("progress body has wrong fields: {e}"),
                },
            },
            Err(_) if text_says_not_found(body) => Observation::NotFound { http200: true },
            Err(e) => Observation::Unavailable {
                kind: UnavailableKind::MalformedBody,
                detail: format!("progress body is not JSON: {e}"),
            },
        },
        404 => Observation::NotFound { http200: false },
        500..=599 => Observation::Unavailable {
            kind: UnavailableKind::ServerError,
            detail: format!("VMA returned status {status}"),
        },
        _ => Observation::Unavailable {
            kind: UnavailableKind::UnexpectedStatus,
            detail: format!("VMA returned status {status}"),
        },
    }
}

/// A 200 JSON body that is an error object rather than progress, e.g. `{"error":"job not found"}`.
fn body_says_not_found(value: &serde_json::Value) -> bool {
    let Some(obj) = value.as_object() else {
        return false;
    };
    if obj.contains_key("job_id") && obj.contains_key("status") {
        return false;
    }
    ["error", "message"]
        .iter()
        .any(|k| obj.get(*k).and_then(|v| v.as_str()).is_some_and(|s| s.to_ascii_lowercase().contains("not found")))
}

/// A 200 plain-text body such as `job not found` (the seeds' "HTTP 200 bug").
fn text_says_not_found(body: &[u8]) -> bool {
    body.len() < 1024 && std::str::from_utf8(body).is_ok_and(|s| s.to_ascii_lowercase().contains("not found"))
}

/// Classify a transport error by walking its cause chain for I/O error kinds.
pub fn classify_transport_error(err: &reqwest::Error) -> UnavailableKind {
    if err.is_timeout() {
        return UnavailableKind::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return UnavailableKind::ConnectionRefused,
                std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => return UnavailableKind::ConnectionReset,
                std::io::ErrorKind::UnexpectedEof => return UnavailableKind::UnexpectedEof,
                std::io::ErrorKind::TimedOut => return UnavailableKind::Timeout,
                _ => {}
            }
        }
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            if h.is_incomplete_message() {
                return UnavailableKind::UnexpectedEof;
            }
            if h.is_timeout() {
                return UnavailableKind::Timeout;
            }
        }
        source = e.source();
    }
    if err.is_connect() {
        UnavailableKind::ConnectFailed
    } else if err.is_body() || err.is_request() {
        UnavailableKind::ConnectionReset
    } else {
        UnavailableKind::Other
    }
}

/// Which name a progress answer was found under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupKey {
    ExportName(String),
    JobId,
}

/// The result of asking the VMA about one job through all of its names.
#[derive(Debug, Clone)]
pub struct Lookup {
    pub observation: Observation,
    pub via: Option<LookupKey>,
    /// The names asked, in order, and what each said (tests count the requests with it).
    pub attempts: Vec<(String, &'static str)>,
}

#[derive(Clone)]
pub struct VmaClient {
    base_url: String,
    http: reqwest::Client,
}

impl VmaClient {
    pub fn new(base_url: &str, timeout: Duration) -> VmaClient {
        VmaClient::for_instance(base_url, timeout, None)
    }

    /// A client that names itself `oma/<version> (<instance id>)` in `User-Agent`, so the VMA's
    /// logs (and sim-vma's journal) tell which OMA asked.
    pub fn for_instance(base_url: &str, timeout: Duration, instance_id: Option<&str>) -> VmaClient {
        let agent = match instance_id {
            Some(id) => format!("oma/{} ({id})", env!("CARGO_PKG_VERSION")),
            None => format!("oma/{}", env!("CARGO_PKG_VERSION")),
        };
        let http = reqwest::Client::builder()
            .user_agent(agent)
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client with static settings");
        VmaClient { base_url: base_url.trim_end_matches('/').to_string(), http }
    }

    /// One `GET /api/v1/progress/{id}`, classified.
    pub async fn get_progress(&self, id: &str) -> Observation {
        let url = format!("{}/api/v1/progress/{}", self.base_url, encode_path_segment(id));
        let response = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => return Observation::Unavailable { kind: classify_transport_error(&e), detail: error_chain(&e) },
        };
        let status = response.status().as_u16();
        match read_limited(response, MAX_PROGRESS_BODY_BYTES).await {
            Ok(body) => classify_response(status, &body),
            Err(BodyError::TooLarge) => Observation::Unavailable {
                kind: UnavailableKind::BodyTooLarge,
                detail: format!("progress body larger than {MAX_PROGRESS_BODY_BYTES} bytes"),
            },
            Err(BodyError::Transport(e)) => {
                Observation::Unavailable { kind: classify_transport_error(&e), detail: error_chain(&e) }
            }
        }
    }

    /// Ask about a job: the preferred name first (the one that answered last time), then the NBD
    /// export names, then the job id. An answer is accepted only if it is about this job (its
    /// `job_id` is the job id or the name asked for): volumes are reused across a VM's jobs, so an
    /// export name can carry another job's progress.
    pub async fn lookup(&self, job_id: &str, export_names: &[String], preferred: Option<&LookupKey>) -> Lookup {
        let mut order: Vec<LookupKey> = Vec::with_capacity(export_names.len() + 1);
        if let Some(p) = preferred {
            order.push(p.clone());
        }
        for name in export_names {
            let key = LookupKey::ExportName(name.clone());
            if !order.contains(&key) {
                order.push(key);
            }
        }
        if !order.contains(&LookupKey::JobId) {
            order.push(LookupKey::JobId);
        }

        let mut attempts = Vec::new();
        let mut last_not_found = Observation::NotFound { http200: false };
        for key in order {
            let asked = match &key {
                LookupKey::ExportName(n) => n.as_str(),
                LookupKey::JobId => job_id,
            };
            let observation = self.get_progress(asked).await;
            match &observation {
                Observation::NotFound { .. } => {
                    attempts.push((asked.to_string(), "not_found"));
                    last_not_found = observation;
                }
                Observation::Unavailable { kind, .. } if kind.is_transport() => {
                    attempts.push((asked.to_string(), "unreachable"));
                    return Lookup { observation, via: None, attempts };
                }
                Observation::Unavailable { .. } => {
                    attempts.push((asked.to_string(), "error"));
                    if key == LookupKey::JobId {
                        return Lookup { observation, via: None, attempts };
                    }
                }
                _ => {
                    let about = observation.progress().map(|p| p.job_id.as_str()).unwrap_or("");
                    if about == job_id || about == asked || about.is_empty() {
                        attempts.push((asked.to_string(), observation.status_word()));
                        return Lookup { observation, via: Some(key), attempts };
                    }
                    attempts.push((asked.to_string(), "other_job"));
                }
            }
        }
        Lookup { observation: last_not_found, via: None, attempts }
    }

    /// `GET /api/v1/health` → true iff 200.
    pub async fn is_healthy(&self) -> bool {
        let url = format!("{}/api/v1/health", self.base_url);
        matches!(self.http.get(&url).send().await, Ok(r) if r.status().is_success())
    }

    /// `POST /api/v1/replicate`. Any non-200 is a refusal.
    pub async fn replicate(&self, request: &ReplicateRequest) -> Result<ReplicateResponse, ReplicateError> {
        let url = format!("{}/api/v1/replicate", self.base_url);
        let response = self
            .http
            .post(&url)
            .json(request)
            .send()
            .await
            .map_err(|e| ReplicateError::Unreachable(error_chain(&e)))?;
        let status = response.status().as_u16();
        let body = read_limited(response, MAX_PROGRESS_BODY_BYTES)
            .await
            .map_err(|_| ReplicateError::Unreachable("reading the /replicate answer failed".into()))?;
        if status != 200 {
            let text = String::from_utf8_lossy(&body).trim().to_string();
            return Err(ReplicateError::Refused { status, body: text });
        }
        serde_json::from_slice(&body).map_err(|e| ReplicateError::Malformed(e.to_string()))
    }

    /// Raw progress proxy: status and body as the VMA sent them.
    pub async fn proxy_progress(&self, job_id: &str) -> Result<(u16, Vec<u8>), String> {
        let url = format!("{}/api/v1/progress/{}", self.base_url, encode_path_segment(job_id));
        let response = self.http.get(&url).send().await.map_err(|e| error_chain(&e))?;
        let status = response.status().as_u16();
        let body = read_limited(response, MAX_PROGRESS_BODY_BYTES)
            .await
            .map_err(|_| "VMA progress body unreadable or too large".to_string())?;
        Ok((status, body))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplicateRequest {
    pub job_id: String,
    pub vcenter: String,
    pub username: String,
    pub password: String,
    pub vm_paths: Vec<String>,
    pub oma_url: String,
    pub nbd_targets: Vec<NbdTarget>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NbdTarget {
    pub device_path: String,
    pub vmware_disk_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReplicateResponse {
    pub job_id: String,
    pub status: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("VMA unreachable: {0}")]
    Unreachable(String),
    #[error("VMA refused the replication (status {status}): {body}")]
    Refused { status: u16, body: String },
    #[error("VMA answered /replicate with a malformed body: {0}")]
    Malformed(String),
}

enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n as usize > limit) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `err` and its causes on one line, for logs and `vma_error_details`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// Percent-encode a path segment (job ids are ours, but never trust them in a URL).
fn encode_path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}
