//! The VMA's routes as the real VMA (gorilla mux) serves them: health, progress, progress update,
//! replicate, status; unknown paths get gorilla's `404 page not found`, a known path with another
//! method a 405. Path parameters are percent-decoded, as Go decodes `URL.Path` before matching.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::USER_AGENT;
use axum::http::{Method, Request, Response, StatusCode};
use bytes::Bytes;
use chrono::Utc;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;

use crate::model::{Job, Mode, ProgressUpdate, Ramp};
use crate::replies::{json_response, respond, text};
use crate::state::SimState;

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

pub(crate) async fn dispatch(state: &SimState, req: Request<Incoming>, started: Instant) -> Response<Body> {
    let Some(route) = Route::of(req.uri().path()) else {
        return text(StatusCode::NOT_FOUND, "404 page not found\n");
    };
    if req.method() != route.method() {
        // gorilla's answer to a known path with another method: 405, empty body.
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", Body::empty());
    }
    match route {
        Route::Health => health(state, started),
        Route::Progress(id) => {
            let client = req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok()).map(Arc::from);
            progress(state, &id, req.uri().path(), client, started).await
        }
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

async fn progress(
    state: &SimState,
    id: &str,
    path: &str,
    client: Option<Arc<str>>,
    started: Instant,
) -> Response<Body> {
    let begun = state.lock().begin_poll(id, Utc::now());
    state.complete_poll(begun, path, client, started).await.into_response()
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
