//! How the API fails: every error is `{"error","details","timestamp"}` ([`ApiError`]), including
//! the ones axum raises itself ([`json_errors`]); reads give up on the database after
//! `OMA_API_DB_TIMEOUT` ([`within_db_budget`]) and a 503 for the database says why
//! ([`explain_unavailable_database`]); writing work runs detached from the request ([`detached`]).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;
use tracing::{error, warn};

use crate::db;
use crate::services::Services;

/// The errors axum answers by itself (a query or path that does not parse, a body over the
/// limit, a method the route does not have) come as plain text or no body at all; they get the
/// API's JSON error shape too, the text as details, so a client parses every error one way.
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
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
pub(super) const DIAGNOSIS_BUDGET: Duration = Duration::from_secs(1);

/// A read gives up on the database after `OMA_API_DB_TIMEOUT` (the pool alone would wait 10 s
/// for a connection to a database that refuses them). Reads only: nothing is left half-written.
pub(super) async fn within_db_budget(State(services): State<Arc<Services>>, req: Request, next: Next) -> Response {
    let budget = services.settings.api_db_timeout;
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
pub(super) async fn explain_unavailable_database(
    State(services): State<Arc<Services>>,
    req: Request,
    next: Next,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    let Some(DatabaseUnavailable(details)) = response.extensions().get::<DatabaseUnavailable>().cloned() else {
        return response;
    };
    let why = db::why_out_of_reach(&services.pool, DIAGNOSIS_BUDGET).await;
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

    pub(super) fn database_unavailable(details: String) -> ApiError {
        ApiError {
            database_unavailable: true,
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "Database unavailable", details)
        }
    }

    pub(super) fn internal(context: &str, e: impl std::fmt::Display) -> ApiError {
        error!("{context}: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error", "see the OMA log")
    }
}

impl ApiError {
    /// The JSON of an error, for answers written outside axum.
    pub(super) fn body_text(error: &str, details: &str) -> String {
        json!({"error": error, "details": details, "timestamp": Utc::now().to_rfc3339()}).to_string()
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
pub(super) async fn detached<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(work).await.map_err(|e| ApiError::internal("request task", e))
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolTimedOut) {
            // The pool waits OMA_API_DB_TIMEOUT for a connection: name the setting.
            ApiError::database_unavailable("no database connection within OMA_API_DB_TIMEOUT".to_string())
        } else if db::out_of_reach(&e) {
            ApiError::database_unavailable(e.to_string())
        } else {
            ApiError::internal("database error", e)
        }
    }
}
