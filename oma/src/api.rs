//! HTTP API (SPEC §4.6). Handlers are thin: they parse, call a service, and map errors to
//! `{"error","details","timestamp"}` responses. 500s stay opaque; causes are logged here once.
//! Work that writes runs detached from the request, so a caller hanging up cannot cut it short.
//! With the database out of reach, requests answer 503 "Database unavailable" naming why; reads
//! give up after `OMA_API_DB_TIMEOUT` instead of waiting out the pool.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{error, info, warn};

use crate::db;
use crate::domain::FailureClass;
use crate::health_monitor::HealthMonitor;
use crate::poller::Poller;
use crate::recovery::{run_recovery, RecoveryTracker};
use crate::replications::{create_replication, CreateError, CreateMigrationRequest};
use crate::sanitize::sanitize_replication_error;
use crate::shared::Shared;

#[derive(Clone)]
pub struct AppState {
    pub shared: Arc<Shared>,
    pub poller: Poller,
    pub recovery: RecoveryTracker,
    pub health_monitor: HealthMonitor,
}

pub fn router(state: AppState) -> Router {
    let budget = || from_fn_with_state(state.clone(), within_db_budget);
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/v1/replications", post(create))
        .route("/api/v1/replications/{id}", get(get_replication.layer(budget())))
        .route("/api/v1/progress/{job_id}", get(progress_proxy))
        .route("/api/v1/vm-contexts/{context_id}", get(get_context.layer(budget())))
        .route("/api/v1/vm-contexts/{context_id}/recent-jobs", get(recent_jobs.layer(budget())))
        .route("/api/v1/job-recovery/status", get(recovery_status.layer(budget())))
        .route("/api/v1/job-recovery/trigger", post(recovery_trigger))
        .route("/api/v1/vma-polling/status", get(polling_status))
        .route("/api/v1/vma-polling/jobs/{job_id}", get(polling_job.layer(budget())).delete(stop_polling_job))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "Not found", "no such endpoint") })
        .layer(from_fn_with_state(state.clone(), explain_unavailable_database))
        .layer(from_fn(json_errors))
        .with_state(state)
}

/// The errors axum answers by itself (a query or path that does not parse, a body over the
/// limit, a method the route does not have) come as plain text or no body at all; they get the
/// API's JSON error shape too, the text as details, so a client parses every error one way.
async fn json_errors(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let allow = parts.headers.get(header::ALLOW).cloned();
    let details = match (text.is_empty(), status) {
        (false, _) => text,
        (true, StatusCode::METHOD_NOT_ALLOWED) => format!("{method} is not allowed on {path}"),
        (true, _) => format!("{method} {path}"),
    };
    let error = match status {
        StatusCode::BAD_REQUEST => "Invalid request",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::METHOD_NOT_ALLOWED => "Method not allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "Request body too large",
        other => other.canonical_reason().unwrap_or("Error"),
    };
    let mut rebuilt = ApiError::new(status, error, details).into_response();
    if let Some(allow) = allow {
        rebuilt.headers_mut().insert(header::ALLOW, allow);
    }
    rebuilt
}

/// How long a fresh connection attempt may take to say why the database is out of reach.
const DIAGNOSIS_BUDGET: Duration = Duration::from_secs(1);

/// A read gives up on the database after `OMA_API_DB_TIMEOUT` (the pool alone would wait 10 s
/// for a connection to a database that refuses them). Reads only: nothing is left half-written.
async fn within_db_budget(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let budget = state.shared.settings.api_db_timeout;
    match tokio::time::timeout(budget, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::database_unavailable(format!(
            "no answer from the database within {} (OMA_API_DB_TIMEOUT)",
            humantime::format_duration(budget)
        ))
        .into_response(),
    }
}

/// A 503 for the database gets the reason a fresh connection attempt gives, and one log line.
async fn explain_unavailable_database(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let Some(DatabaseUnavailable(details)) = response.extensions().get::<DatabaseUnavailable>().cloned() else {
        return response;
    };
    let why = db::why_out_of_reach(&state.shared.pool, DIAGNOSIS_BUDGET).await;
    warn!("⚠️ {method} {path}: database unavailable: {details}; {why}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Database unavailable", format!("{details}; {why}")).into_response()
}

/// Marks a response as a 503 for the database, for `explain_unavailable_database`.
#[derive(Clone)]
struct DatabaseUnavailable(String);

/// An error response: `{"error","details","timestamp"}`.
pub struct ApiError {
    status: StatusCode,
    error: String,
    details: String,
    database_unavailable: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, details: impl Into<String>) -> ApiError {
        ApiError { status, error: error.to_string(), details: details.into(), database_unavailable: false }
    }

    fn database_unavailable(details: String) -> ApiError {
        ApiError {
            database_unavailable: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Database unavailable", details)
        }
    }

    fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
        error!("{context}: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error", "see the OMA log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "details": self.details, "timestamp": Utc::now().to_rfc3339()});
        let mut response = (self.status, Json(body)).into_response();
        if self.database_unavailable {
            response.extensions_mut().insert(DatabaseUnavailable(self.details));
        }
        response
    }
}

/// Run a handler's work as a task of its own. hyper drops a handler when its caller hangs up;
/// work that writes must not stop half-way for that (a replication left `initializing` while
/// the VMA runs it, a recovery scan that never records its end and refuses every later one).
async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(|e| ApiError::internal("request task", e))
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if db::out_of_reach(&e) {
            ApiError::database_unavailable(e.to_string())
        } else {
            ApiError::internal("database error", e)
        }
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let recovery = state.recovery.read().await;
    let recovery_json = json!({"state": recovery.state, "last_run": recovery.last_run});
    drop(recovery);
    let ping = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.shared.pool)).await;
    let failure = match ping {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("database ping timed out after 2s".to_string()),
    };
    let (code, status, database, reason) = match failure {
        None => (StatusCode::OK, "healthy", "connected", None),
        Some(failure) => {
            let why = db::why_out_of_reach(&state.shared.pool, DIAGNOSIS_BUDGET).await;
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "unreachable", Some(format!("{failure}; {why}")))
        }
    };
    let mut body = json!({
        "service": "OMA API",
        "status": status,
        "timestamp": Utc::now().to_rfc3339(),
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "instance_id": state.shared.instance_id,
        "recovery": recovery_json,
        "polling": {"active_jobs": state.poller.active_job_ids().len()},
    });
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.shared.metrics.render())
        .into_response()
}

async fn create(State(state): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let request: CreateMigrationRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "Invalid request body", e.to_string()))?;
    let created = detached(async move { create_replication(&state.shared, &state.poller, request).await }).await?;
    match created {
        Ok(result) => Ok((StatusCode::CREATED, Json(result)).into_response()),
        Err(CreateError::Invalid(msg)) => Err(ApiError::new(StatusCode::BAD_REQUEST, "Invalid request", msg)),
        Err(CreateError::ActiveJob { job_id }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "VM has active replication job",
            format!("job {job_id} is still active for this VM"),
        )),
        Err(CreateError::VmaRefused(msg)) => {
            Err(ApiError::new(StatusCode::BAD_GATEWAY, "VMA refused replication", msg))
        }
        Err(CreateError::Database(e)) => Err(e.into()),
    }
}

async fn get_replication(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let Some(job) = db::get_job(&state.shared.pool, &id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "Job not found", format!("no replication job {id}")));
    };
    let names = db::export_names_for(&state.shared.pool, std::iter::once(id.as_str())).await?;
    let mut body = serde_json::to_value(&job).map_err(|e| ApiError::internal("serialize job", e))?;
    body["job_id"] = json!(job.id);
    body["nbd_export_names"] = json!(names.get(&id).cloned().unwrap_or_default());
    body["being_polled_here"] = json!(state.poller.is_polling(&id));
    Ok(Json(body).into_response())
}

async fn progress_proxy(State(state): State<AppState>, Path(job_id): Path<String>) -> Result<Response, ApiError> {
    match state.shared.vma.proxy_progress(&job_id).await {
        Err(e) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "VMA API unavailable", e)),
        Ok((404, _)) => Err(ApiError::new(StatusCode::NOT_FOUND, "Job not found", "Migration job not found in VMA")),
        Ok((200, body)) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        Ok((status, _)) => Err(ApiError::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            "VMA API error",
            format!("VMA returned status {status}"),
        )),
    }
}

async fn get_context(State(state): State<AppState>, Path(context_id): Path<String>) -> Result<Response, ApiError> {
    match db::get_context(&state.shared.pool, &context_id).await? {
        Some(ctx) => Ok(Json(ctx).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "VM context not found", context_id)),
    }
}

/// The unified jobs list with sanitized errors (reference §8.3, with replication errors sanitized too).
async fn recent_jobs(State(state): State<AppState>, Path(context_id): Path<String>) -> Result<Response, ApiError> {
    if db::get_context(&state.shared.pool, &context_id).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "VM context not found", context_id));
    }
    let jobs = db::recent_jobs_for_context(&state.shared.pool, &context_id, 20).await?;
    let items: Vec<Value> = jobs
        .iter()
        .map(|j| {
            let display = if j.status == "completed" {
                "Replication Completed"
            } else if j.replication_type == "incremental" {
                "Incremental Replication"
            } else {
                "Initial Replication"
            };
            let mut item = json!({
                "job_id": j.id,
                "job_type": "replication",
                "status": j.status,
                "progress": j.progress_percent,
                "started_at": j.created_at,
                "display_name": display,
                "data_source": "replication_jobs",
            });
            if let Some(done) = j.completed_at {
                item["completed_at"] = json!(done);
                item["duration_seconds"] = json!((done - j.created_at).num_seconds());
            }
            if let Some(step) = &j.current_operation {
                item["current_step"] = json!(step);
            }
            if let Some(raw) = &j.error_message {
                let class = j.vma_error_classification.as_deref().and_then(FailureClass::parse);
                let clean = sanitize_replication_error(raw, class);
                item["error_message"] = json!(clean.user_message);
                item["error_category"] = json!(clean.category);
                item["actionable_steps"] = json!(clean.actionable_steps);
            }
            item
        })
        .collect();
    Ok(Json(json!({"context_id": context_id, "count": items.len(), "jobs": items})).into_response())
}

async fn recovery_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let counts = db::job_counts(&state.shared.pool).await?;
    let health = state.health_monitor.last.read().await.clone();
    let recovery = state.recovery.read().await;
    Ok(Json(json!({
        "enabled": true,
        "instance_id": state.shared.instance_id,
        "state": recovery.state,
        "last_run": recovery.last_run,
        "runs": recovery.runs,
        "totals": recovery.totals,
        "unfinished_jobs": counts.unfinished,
        "polled_by_live_poller": counts.polled_by_live_owner,
        "not_polled": counts.unfinished - counts.polled_by_live_owner,
        "never_polled": counts.never_polled,
        "max_job_age_seconds": state.shared.settings.recovery_max_age.as_secs(),
        "health_monitor": {
            "interval_seconds": state.shared.settings.health_interval.as_secs_f64(),
            "stale_after_seconds": state.shared.settings.health_stale_after.as_secs_f64(),
            "last_check": health,
        },
    }))
    .into_response())
}

#[derive(Deserialize)]
struct TriggerQuery {
    dry_run: Option<bool>,
}

async fn recovery_trigger(State(state): State<AppState>, Query(q): Query<TriggerQuery>) -> Result<Response, ApiError> {
    let dry_run = q.dry_run.unwrap_or(false);
    info!(dry_run, "Manual job recovery triggered via API");
    let run = detached(async move {
        run_recovery(&state.shared, &state.poller, &state.recovery, "manual", dry_run, Duration::from_secs(5)).await
    });
    match run.await?? {
        Some(report) => {
            info!("{}", report.summary.log_text());
            Ok(Json(report).into_response())
        }
        None => {
            Err(ApiError::new(StatusCode::CONFLICT, "Recovery already running", "another recovery scan is in progress"))
        }
    }
}

async fn polling_status(State(state): State<AppState>) -> Result<Response, ApiError> {
    let jobs = state.poller.status();
    let (total, ok) = state.poller.totals();
    let vma_healthy =
        tokio::time::timeout(Duration::from_secs(2), state.shared.vma.is_healthy()).await.unwrap_or(false);
    Ok(Json(json!({
        "is_running": true,
        "instance_id": state.shared.instance_id,
        "poll_interval_seconds": state.shared.settings.poll_interval.as_secs_f64(),
        "max_concurrent_requests": state.shared.settings.poll_concurrency,
        "active_jobs_count": jobs.len(),
        "active_jobs": jobs,
        "polls_total": total,
        "polls_successful": ok,
        "success_rate": if total == 0 { 1.0 } else { ok as f64 / total as f64 },
        "vma_api_healthy": vma_healthy,
    }))
    .into_response())
}

async fn polling_job(State(state): State<AppState>, Path(job_id): Path<String>) -> Result<Response, ApiError> {
    let memory = state.poller.job_status(&job_id);
    let row = db::polling_state(&state.shared.pool, &job_id).await?;
    if memory.is_none() && row.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Job not polled",
            format!("no polling state for job {job_id}"),
        ));
    }
    Ok(Json(json!({
        "job_id": job_id,
        "is_polling": memory.is_some(),
        "polled_by_this_instance": memory,
        "persisted_state": row,
    }))
    .into_response())
}

/// Stop polling one job (the "orphaned job" scenario): the job stays unfinished and unpolled
/// until the health monitor re-attaches it.
async fn stop_polling_job(State(state): State<AppState>, Path(job_id): Path<String>) -> Result<Response, ApiError> {
    let id = job_id.clone();
    let (was_tracked, released) = detached(async move {
        let was_tracked = state.poller.untrack(&id);
        db::release_polling(&state.shared.pool, &id, None).await.map(|released| (was_tracked, released))
    })
    .await??;
    if !was_tracked && !released {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "Job not polled",
            format!("job {job_id} is not being polled"),
        ));
    }
    info!(job_id = %job_id, "Polling stopped for job by API request");
    Ok(Json(json!({"job_id": job_id, "stopped": true})).into_response())
}
