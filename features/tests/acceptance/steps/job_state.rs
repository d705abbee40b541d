//! Then steps about a job's row, its VM context and its recovery metadata, read from the
//! database; and the OMA's recovery state as `/health` reports it.

use std::time::Duration;

use cucumber::{given, then};
use serde_json::{json, Value};

use super::WAIT;
use crate::OmaWorld;

#[given(regex = r"^the job has reached (\d+)% progress$")]
#[then(regex = r"^the job's progress reaches (\d+)%$")]
async fn reached(world: &mut OmaWorld, pct: f64) {
    let id = world.job();
    world
        .lab()
        .wait_until(&format!("job {id} to reach {pct}%"), WAIT, || async {
            let row = world.lab().job(&id).await?;
            Ok(if row.progress_percent >= pct { Ok(()) } else { Err(format!("{}%", row.progress_percent)) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^the job's progress is still at least (\d+)%$")]
async fn progress_kept(world: &mut OmaWorld, pct: f64) {
    let row = world.lab().job(&world.job()).await.expect("row");
    assert!(row.progress_percent >= pct, "progress went back to {}% (was at least {pct}%)", row.progress_percent);
}

#[then(regex = r#"^the job is "(\w+)"$"#)]
async fn job_is(world: &mut OmaWorld, status: String) {
    let id = world.job();
    if let Err(e) = world.lab().wait_for_status(&id, &status, WAIT).await {
        panic!("{e:#}\n{}", world.lab().diagnostics(Some(&id)).await);
    }
}

#[then(regex = r#"^the job is "(\w+)" with classification "(\w+)"$"#)]
async fn job_is_classified(world: &mut OmaWorld, status: String, class: String) {
    job_is(world, status).await;
    let row = world.lab().job(&world.job()).await.expect("row");
    assert_eq!(row.vma_error_classification.as_deref(), Some(class.as_str()));
}

#[then(regex = r#"^the job stays "(\w+)"$"#)]
async fn job_stays(world: &mut OmaWorld, status: String) {
    let id = world.job();
    let interval = world.lab().omas.first().map(|o| o.config.poll_interval).unwrap_or(Duration::from_millis(100));
    // A stability check needs a window: ten poll intervals.
    for _ in 0..10 {
        let row = world.lab().job(&id).await.expect("row");
        assert_eq!(
            row.status.as_str(),
            status,
            "job {id} changed: {:?} {:?}",
            row.vma_error_classification,
            row.error_message
        );
        tokio::time::sleep(interval).await;
    }
}

fn field(row: &oma::db::JobRow, name: &str) -> Value {
    serde_json::to_value(row)
        .expect("row json")
        .get(name)
        .cloned()
        .unwrap_or_else(|| panic!("replication_jobs has no column {name}"))
}

#[then(regex = r#"^the job's (\w+) is "([^"]*)"$"#)]
async fn field_is_text(world: &mut OmaWorld, name: String, expected: String) {
    let row = world.lab().job(&world.job()).await.expect("row");
    let v = field(&row, &name);
    assert_eq!(v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()), world.expand(&expected), "{name}");
}

#[then(regex = r"^the job's (\w+) is (\d+(?:\.\d+)?)$")]
async fn field_is_number(world: &mut OmaWorld, name: String, expected: f64) {
    let row = world.lab().job(&world.job()).await.expect("row");
    let v = field(&row, &name);
    assert_eq!(v.as_f64(), Some(expected), "{name} = {v}");
}

#[then(regex = r"^the job's (\w+) is (set|not set)$")]
async fn field_is_set(world: &mut OmaWorld, name: String, set: String) {
    let row = world.lab().job(&world.job()).await.expect("row");
    let v = field(&row, &name);
    assert_eq!(!v.is_null(), set == "set", "{name} = {v}");
}

#[then(regex = r#"^the job's error message contains "([^"]*)"$"#)]
async fn error_contains(world: &mut OmaWorld, text: String) {
    let row = world.lab().job(&world.job()).await.expect("row");
    let msg = row.error_message.unwrap_or_default();
    assert!(msg.contains(&text), "error_message = {msg:?}");
}

#[then(regex = r#"^the recovery metadata shows method "(\w+)"$"#)]
async fn recovery_metadata(world: &mut OmaWorld, method: String) {
    let row = world.lab().job(&world.job()).await.expect("row");
    assert!(row.recovery_attempted, "recovery_attempted");
    assert!(row.recovery_attempted_at.is_some(), "recovery_attempted_at");
    assert_eq!(row.recovery_method.as_deref(), Some(method.as_str()));
    if method == "vma_validated" {
        assert!(row.vma_validated_at.is_some(), "vma_validated_at");
    }
}

/// A job the poller ended in normal operation was never recovered: task 3.1's columns stay empty.
#[then(regex = r"^the job has no recovery metadata$")]
async fn no_recovery_metadata(world: &mut OmaWorld) {
    let row = world.lab().job(&world.job()).await.expect("row");
    assert!(!row.recovery_attempted, "recovery_attempted is set: {row:?}");
    assert_eq!(row.recovery_attempted_at, None, "recovery_attempted_at");
    assert_eq!(row.recovery_method, None, "recovery_method");
}

#[then(regex = r"^the recovery metadata shows polling restarted$")]
async fn polling_restarted_meta(world: &mut OmaWorld) {
    let row = world.lab().job(&world.job()).await.expect("row");
    assert!(row.polling_restarted_at.is_some(), "polling_restarted_at is NULL");
}

#[then(regex = r#"^the VM context is "(\w+)"$"#)]
async fn context_is(world: &mut OmaWorld, status: String) {
    let ctx = world.lab().context_of(&world.job()).await.expect("context");
    assert_eq!(ctx.current_status, status, "{ctx:?}");
}

#[then(regex = r"^the VM context allows new operations$")]
async fn context_free(world: &mut OmaWorld) {
    let ctx = world.lab().context_of(&world.job()).await.expect("context");
    assert_eq!(ctx.current_job_id, None, "current_job_id still set: {ctx:?}");
    let vm = ctx.vm_name.clone();
    let (status, body) = super::replications::create_replication(world, &vm).await;
    assert_eq!(status, 201, "a new replication of {vm} was refused: {body}");
}

#[then(regex = r"^the VM context counts (\d+) successful and (\d+) failed jobs?$")]
async fn context_counts(world: &mut OmaWorld, ok: i32, failed: i32) {
    let ctx = world.lab().context_of(&world.job()).await.expect("context");
    assert_eq!((ctx.successful_jobs, ctx.failed_jobs), (ok, failed), "{ctx:?}");
    if ok > 0 {
        assert!(ctx.last_replication_at.is_some(), "last_replication_at");
        assert!(ctx.last_successful_job_id.is_some(), "last_successful_job_id");
    }
}

#[then(regex = r#"^the VM's operation summary says the replication "(\w+)"$"#)]
async fn operation_summary(world: &mut OmaWorld, status: String) {
    let ctx = world.lab().context_of(&world.job()).await.expect("context");
    let summary: Value =
        serde_json::from_str(ctx.last_operation_summary.as_deref().expect("last_operation_summary")).expect("json");
    assert_eq!(summary["status"], status.as_str(), "{summary}");
    assert_eq!(summary["operation_type"], "replication");
    if status == "failed" {
        assert!(summary["error_message"].is_string() && summary["actionable_steps"].is_array(), "{summary}");
    }
}

#[then(regex = r"^the job completes successfully$")]
async fn completes(world: &mut OmaWorld) {
    let id = world.job();
    let names = world.export_names.get("").cloned().unwrap_or_default();
    world.lab().vma_job(&id, &names, json!({"mode": "running", "rate_per_poll": 20})).await.expect("sim");
    job_is(world, "completed".into()).await;
    let row = world.lab().job(&id).await.expect("row");
    assert_eq!(row.progress_percent, 100.0);
    assert_eq!(row.current_operation.as_deref(), Some("Completed"));
}

#[then(regex = r#"^the health report shows recovery "(\w+)"$"#)]
async fn health_recovery(world: &mut OmaWorld, state: String) {
    // Waits for the state: the tracker is updated a moment after the scan's last write.
    wait_recovery_state(world, &[state.as_str()]).await;
}

/// Waits until the OMA is healthy and its recovery tracker is in one of `states`.
pub async fn wait_recovery_state(world: &OmaWorld, states: &[&str]) {
    wait_recovery_state_of(world, &world.lab().oma().url(), states).await;
}

/// [`wait_recovery_state`] of the OMA at `oma_url`.
pub async fn wait_recovery_state_of(world: &OmaWorld, oma_url: &str, states: &[&str]) {
    let url = format!("{oma_url}/health");
    world
        .lab()
        .wait_until(&format!("/health to show recovery {}", states.join(" or ")), WAIT, || async {
            let body: Value = world.lab().http.get(&url).send().await?.json().await?;
            let state = body["recovery"]["state"].as_str().unwrap_or_default();
            Ok(if body["status"] == "healthy" && states.contains(&state) { Ok(()) } else { Err(body.to_string()) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}
