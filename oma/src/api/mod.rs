//! HTTP API (SPEC §4.6): the router and its thin handlers, which parse, call a service and map
//! its errors to [`ApiError`]s. 500s stay opaque; causes are logged once, in [`errors`].

mod errors;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::info;

use crate::db;
use crate::domain::{FailureClass, JobStatus, ReplicationType};
use crate::health_monitor::HealthMonitor;
use crate::poller::Poller;
use crate::recovery::{run_recovery, RecoveryTracker};
use crate::replications::{create_replication, CreateError, CreateMigrationRequest};
use crate::sanitize::sanitize_replication_error;
use crate::services::Services;
pub use errors::ApiError;
use errors::{detached, explain_unavailable_database, json_errors, within_db_budget, DIAGNOSIS_BUDGET};

#[derive(Clone)]
pub struct AppState {
    pub services: Arc<Services>,
    pub poller: Poller,
    pub recovery: RecoveryTracker,
    pub health_monitor: HealthMonitor,
}

pub fn router(state: AppState) -> Router {
    let budget = || from_fn_with_state(state.services.clone(), within_db_budget);
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
        .layer(from_fn_with_state(limits(&state.services.settings), serve::bounded_body))
        .layer(from_fn_with_state(state.services.clone(), explain_unavailable_database))
        .layer(from_fn(json_errors))
        .with_state(state)
}

/// The HTTP limits of the settings.
pub fn limits(settings: &crate::config::Settings) -> serve::Limits {
    serve::Limits {
        max_connections: settings.http_max_connections,
        header_timeout: settings.http_header_timeout,
        body_timeout: settings.http_body_timeout,
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let recovery = state.recovery.read().await;
    let recovery_json = json!({"state": recovery.state, "last_run": recovery.last_run});
    drop(recovery);
    let ping =
        tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&state.services.pool)).await;
    let failure = match ping {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some("database ping timed out after 2s".to_string()),
    };
    let (code, status, database, reason) = match failure {
        None => (StatusCode::OK, "healthy", "connected", None),
        Some(failure) => {
            let why = db::why_out_of_reach(&state.services.pool, DIAGNOSIS_BUDGET).await;
            (StatusCode::SERVICE_UNAVAILABLE, "unhealthy", "unreachable", Some(format!("{failure}; {why}")))
        }
    };
    let mut body = json!({
        "service": "OMA API",
        "status": status,
        "timestamp": Utc::now().to_rfc3339(),
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "instance_id": state.services.instance_id,
        "recovery": recovery_json,
        "polling": {"active_jobs": state.poller.active_job_ids().len()},
    });
    if let Some(r) = reason {
        body["reason"] = r.into();
    }
    (code, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.services.metrics.render())
        .into_response()
}

async fn create(State(state): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let request: CreateMigrationRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "Invalid request body", e.to_string()))?;
    let created = detached(async move { create_replication(&state.services, &state.poller, request).await }).await?;
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
    let Some(job) = db::get_job(&state.services.pool, &id).await? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "Job not found", format!("no replication job {id}")));
    };
    let names = db::export_names_for(&state.services.pool, std::iter::once(id.as_str())).await?;
    let mut body = serde_json::to_value(&job).map_err(|e| ApiError::internal("serialize job", e))?;
    body["job_id"] = json!(job.id);
    body["nbd_export_names"] = json!(names.get(&id).cloned().unwrap_or_default());
    body["being_polled_here"] = json!(state.poller.is_polling(&id));
    Ok(Json(body).into_response())
}

async fn progress_proxy(State(state): State<AppState>, Path(job_id): Path<String>) -> Result<Response, ApiError> {
    match state.services.vma.proxy_progress(&job_id).await {
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
    match db::get_context(&state.services.pool, &context_id).await? {
        Some(ctx) => Ok(Json(ctx).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "VM context not found", context_id)),
    }
}

/// The unified jobs list with sanitized errors (reference §8.3, with replication errors sanitized too).
async fn recent_jobs(State(state): State<AppState>, Path(context_id): Path<String>) -> Result<Response, ApiError> {
    if db::get_context(&state.services.pool, &context_id).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "VM context not found", context_id));
    }
    let jobs = db::recent_jobs_for_context(&state.services.pool, &context_id, 20).await?;
    let items: Vec<Value> = jobs
        .iter()
        .map(|j| {
            let display = if j.status == JobStatus::Completed {
                "Replication Completed"
            } else if j.replication_type == ReplicationType::Incremental {
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
    let counts = db::job_counts(&state.services.pool).await?;
    let health = state.health_monitor.last.read().await.clone();
    let recovery = state.recovery.read().await;
    Ok(Json(json!({
        "enabled": true,
        "instance_id": state.services.instance_id,
        "state": recovery.state,
        "last_run": recovery.last_run,
        "runs": recovery.runs,
        "totals": recovery.totals,
        "success_rate": recovery.totals.success_rate(),
        "polling_restart_rate": recovery.totals.polling_restart_rate(),
        "unfinished_jobs": counts.unfinished,
        "polled_by_live_poller": counts.polled_by_live_owner,
        "not_polled": counts.unfinished - counts.polled_by_live_owner,
        "never_polled": counts.never_polled,
        "max_job_age_seconds": state.services.settings.recovery_max_age.as_secs(),
        "health_monitor": {
            "interval_seconds": state.services.settings.health_interval.as_secs_f64(),
            "stale_after_seconds": state.services.settings.health_stale_after.as_secs_f64(),
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
        run_recovery(&state.services, &state.poller, &state.recovery, "manual", dry_run, Duration::from_secs(5)).await
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
        tokio::time::timeout(Duration::from_secs(2), state.services.vma.is_healthy()).await.unwrap_or(false);
    Ok(Json(json!({
        "is_running": true,
        "instance_id": state.services.instance_id,
        "poll_interval_seconds": state.services.settings.poll_interval.as_secs_f64(),
        "max_concurrent_requests": state.services.settings.poll_concurrency,
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
    let row = db::polling_state(&state.services.pool, &job_id).await?;
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
        db::release_polling(&state.services.pool, &id, None).await.map(|released| (was_tracked, released))
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
