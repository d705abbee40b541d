//! The control API (`/sim/v1`, its own listener): jobs, faults, restart, reset, journal, stats,
//! scenarios. Bad input is a 400 `{"error", "field"}` naming what was wrong.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::scenario::{Action, Scenario};
use crate::spec::{parse_duration, FaultSpec, JobSpec, SpecError};
use crate::state::SimState;

pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/sim/v1/health", get(health))
        .route("/sim/v1/jobs", get(list_jobs))
        .route("/sim/v1/jobs/{id}", put(put_job).get(get_job).delete(delete_job))
        .route("/sim/v1/jobs/{id}/stats", get(job_stats))
        .route("/sim/v1/faults", put(put_faults).get(get_faults).delete(delete_faults))
        .route("/sim/v1/restart", post(restart))
        .route("/sim/v1/reset", post(reset))
        .route("/sim/v1/journal", get(journal))
        .route("/sim/v1/scenario", post(load_scenario))
        .route("/sim/v1/replicate-defaults", put(put_replicate_defaults))
        .fallback(|| async { bad(StatusCode::NOT_FOUND, "no such control endpoint; see sim-vma/README.md", None) })
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(state)
}

/// Errors axum answers itself (a query that does not parse, a method the endpoint lacks) get the
/// control API's `{"error", "field"}` shape too, so a script reads every refusal the same way.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = match (text.is_empty(), status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => format!("{method} is not allowed on {path}"),
        (true, _) => format!("{method} {path}: {status}"),
    };
    let mut rebuilt = bad(status, message, None);
    if let Some(allow) = parts.headers.get(axum::http::header::ALLOW) {
        rebuilt.headers_mut().insert(axum::http::header::ALLOW, allow.clone());
    }
    rebuilt
}

fn bad(status: StatusCode, message: impl Into<String>, field: Option<String>) -> Response {
    (status, Json(json!({"error": message.into(), "field": field}))).into_response()
}

fn spec_error(e: SpecError) -> Response {
    bad(StatusCode::BAD_REQUEST, e.to_string(), Some(e.field))
}

/// Parse a JSON body; serde's message names unknown fields and wrong types.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))
}

async fn health(State(state): State<Arc<SimState>>) -> Response {
    let inner = state.lock();
    Json(json!({
        "status": "ok",
        "seed": state.seed,
        "vma_addr": state.vma_addr.to_string(),
        "listener_up": state.listener_up(),
        "jobs": inner.jobs.len(),
        "journal_total": inner.journal.total_recorded(),
        "hot_path_answers": state.hot_path_answers(),
        "uptime_ms": state.uptime().as_millis() as u64,
    }))
    .into_response()
}

async fn list_jobs(State(state): State<Arc<SimState>>) -> Response {
    Json(state.list_jobs()).into_response()
}

async fn put_job(State(state): State<Arc<SimState>>, Path(id): Path<String>, body: axum::body::Bytes) -> Response {
    let spec: JobSpec = match parse_json(&body) {
        Ok(s) => s,
        Err(msg) => return bad(StatusCode::BAD_REQUEST, msg, None),
    };
    match state.put_job(&id, &spec) {
        Ok(view) => Json(view).into_response(),
        Err(e) => spec_error(e),
    }
}

async fn get_job(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    match state.get_job(&id) {
        Some(v) => Json(v).into_response(),
        None => bad(StatusCode::NOT_FOUND, format!("no job {id}"), None),
    }
}

async fn delete_job(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    if state.forget_job(&id) {
        Json(json!({"job_id": id, "forgotten": true})).into_response()
    } else {
        bad(StatusCode::NOT_FOUND, format!("no job {id}"), None)
    }
}

async fn job_stats(State(state): State<Arc<SimState>>, Path(id): Path<String>) -> Response {
    Json(state.job_stats(&id)).into_response()
}

async fn put_faults(State(state): State<Arc<SimState>>, body: axum::body::Bytes) -> Response {
    let spec: FaultSpec = match parse_json(&body) {
        Ok(s) => s,
        Err(msg) => return bad(StatusCode::BAD_REQUEST, msg, None),
    };
    match state.set_faults(&spec) {
        Ok(f) => Json(f).into_response(),
        Err(e) => spec_error(e),
    }
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Response {
    Json(state.faults()).into_response()
}

async fn delete_faults(State(state): State<Arc<SimState>>) -> Response {
    state.clear_faults();
    Json(json!({"cleared": true})).into_response()
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    down_for: Option<String>,
}

async fn restart(State(state): State<Arc<SimState>>, body: axum::body::Bytes) -> Response {
    let body: RestartBody = if body.iter().all(|b| b.is_ascii_whitespace()) {
        RestartBody::default()
    } else {
        match parse_json(&body) {
            Ok(b) => b,
            Err(msg) => return bad(StatusCode::BAD_REQUEST, msg, None),
        }
    };
    let down_for = match body.down_for.as_deref().map(|d| parse_duration("down_for", d)).transpose() {
        Ok(d) => d,
        Err(e) => return spec_error(e),
    };
    state.restart(down_for);
    Json(json!({"restarted": true, "down_for_ms": down_for.map(|d| d.as_millis() as u64)})).into_response()
}

async fn reset(State(state): State<Arc<SimState>>) -> Response {
    state.reset();
    Json(json!({"reset": true})).into_response()
}

#[derive(Deserialize)]
struct JournalQuery {
    job: Option<String>,
    limit: Option<usize>,
}

async fn journal(State(state): State<Arc<SimState>>, Query(q): Query<JournalQuery>) -> Response {
    let inner = state.lock();
    let job = q.job.as_deref().map(|j| inner.resolve(j).unwrap_or_else(|| j.to_string()));
    let entries = inner.journal.entries(job.as_deref(), q.limit.unwrap_or(200).min(10_000));
    Json(json!({"total_recorded": inner.journal.total_recorded(), "entries": entries})).into_response()
}

async fn put_replicate_defaults(State(state): State<Arc<SimState>>, body: axum::body::Bytes) -> Response {
    let spec: JobSpec = match parse_json(&body) {
        Ok(s) => s,
        Err(msg) => return bad(StatusCode::BAD_REQUEST, msg, None),
    };
    match state.set_replicate_defaults(spec) {
        Ok(()) => Json(json!({"ok": true})).into_response(),
        Err(e) => spec_error(e),
    }
}

async fn load_scenario(State(state): State<Arc<SimState>>, body: String) -> Response {
    match Scenario::parse(&body) {
        Ok(scenario) => {
            let n = apply_scenario(&state, &scenario);
            Json(json!({"name": scenario.name, "jobs": n, "timeline_steps": scenario.timeline.len()})).into_response()
        }
        Err(e) => bad(StatusCode::BAD_REQUEST, e.to_string(), None),
    }
}

/// Create the scenario's jobs, set its faults and play its timeline in the background.
pub fn apply_scenario(state: &Arc<SimState>, scenario: &Scenario) -> usize {
    let mut n = 0;
    for spec in scenario.job_specs() {
        if let Some(id) = &spec.id {
            if state.put_job(id, spec).is_ok() {
                n += 1;
            }
        }
    }
    if let Some(f) = &scenario.faults {
        let _ = state.set_faults(f);
    }
    let steps = scenario.steps();
    if !steps.is_empty() {
        let state = state.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (at, action) in steps {
                tokio::time::sleep_until(start + at).await;
                tracing::info!(?action, "scenario timeline step");
                match action {
                    Action::SetJob(id, spec) => {
                        let _ = state.put_job(&id, &spec);
                    }
                    Action::Faults(f) => {
                        let _ = state.set_faults(&f);
                    }
                    Action::ClearFaults => state.clear_faults(),
                    Action::Restart(down) => state.restart(down),
                    Action::ForgetJob(id) => {
                        state.forget_job(&id);
                    }
                    Action::Oma(_) => {}
                }
            }
        });
    }
    n
}
