//! Steps about jobs in the database: seeding them as a previous OMA left them, and checking
//! rows, VM contexts, recovery metadata and polling.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cucumber::{given, then, when};
use oma_acceptance::SeedJob;
use serde_json::{json, Value};

use super::logs::lines_with;
use super::WAIT;
use crate::OmaWorld;

fn next_job_id(world: &mut OmaWorld) -> String {
    world.vm_counter += 1;
    format!("job-20251003-140000.{:03}-{}", world.vm_counter, &uuid::Uuid::new_v4().simple().to_string()[..6])
}

async fn seed(world: &mut OmaWorld, alias: &str, seed: SeedJob) {
    let names = world.lab().seed_job(&seed).await.unwrap_or_else(|e| panic!("{e:#}"));
    world.jobs.insert(alias.to_string(), seed.id.clone());
    world.export_names.insert(alias.to_string(), names);
}

#[given(regex = r"^there are no active jobs in the database$")]
#[when(regex = r"^there are no active jobs in the database$")]
async fn no_active_jobs(world: &mut OmaWorld) {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) as active_jobs FROM replication_jobs WHERE status = 'replicating';")
            .fetch_one(world.lab().pool())
            .await
            .expect("query");
    assert_eq!(n, 0);
}

#[given(regex = r"^an? (\w+) job at (\d+(?:\.\d+)?)% last updated (\d+(?:\.\d+)?) minutes? ago$")]
#[when(regex = r"^an? (\w+) job at (\d+(?:\.\d+)?)% last updated (\d+(?:\.\d+)?) minutes? ago$")]
async fn seeded_job(world: &mut OmaWorld, status: String, pct: f64, minutes: f64) {
    seed_new_job(world, &status, pct, minutes, false).await;
}

/// Seed the scenario's job as a previous OMA left it (never polled: no poll time, no polling state).
async fn seed_new_job(world: &mut OmaWorld, status: &str, pct: f64, minutes: f64, never_polled: bool) -> String {
    let id = next_job_id(world);
    let mut job = SeedJob::replicating(&id, pct, minutes);
    job.status = status.to_string();
    if never_polled {
        job.last_poll_minutes_ago = None;
        job.polling_started_minutes_ago = None;
    }
    seed(world, "", job).await;
    id
}

/// `replication_type` of the scenario's seeded job (seeded as `initial`).
#[given(regex = r"^the job is an (initial|incremental) replication$")]
async fn replication_type(world: &mut OmaWorld, kind: String) {
    let job = world.job();
    let updated = sqlx::query("UPDATE replication_jobs SET replication_type = ? WHERE id = ?")
        .bind(&kind)
        .bind(&job)
        .execute(world.lab().pool())
        .await
        .expect("UPDATE replication_jobs");
    // sqlx connects with CLIENT_FOUND_ROWS: the row counts even when its value does not change.
    assert_eq!(updated.rows_affected(), 1, "job {job}");
}

#[given(regex = r"^an? (\w+) job at (\d+(?:\.\d+)?)% last updated (\d+(?:\.\d+)?) minutes? ago that was never polled$")]
#[when(regex = r"^an? (\w+) job at (\d+(?:\.\d+)?)% last updated (\d+(?:\.\d+)?) minutes? ago that was never polled$")]
async fn seeded_never_polled(world: &mut OmaWorld, status: String, pct: f64, minutes: f64) {
    seed_new_job(world, &status, pct, minutes, true).await;
}

#[given(regex = r"^the job's progress last changed (\d+) minutes ago$")]
#[when(regex = r"^the job's progress last changed (\d+) minutes ago$")]
async fn progress_changed_ago(world: &mut OmaWorld, minutes: i64) {
    sqlx::query("UPDATE replication_jobs SET progress_changed_at = NOW(3) - INTERVAL ? MINUTE WHERE id = ?")
        .bind(minutes)
        .bind(world.job())
        .execute(world.lab().pool())
        .await
        .expect("update");
}

#[given(regex = r"^the job's bytes match what the VMA reports$")]
#[when(regex = r"^the job's bytes match what the VMA reports$")]
async fn bytes_match(world: &mut OmaWorld) {
    let view = world.lab().control.get_job(&world.job()).await.expect("sim job");
    sqlx::query("UPDATE replication_jobs SET bytes_transferred = ?, progress_percent = ? WHERE id = ?")
        .bind(view["bytes_transferred"].as_i64().unwrap_or(0))
        .bind(view["percentage"].as_f64().unwrap_or(0.0))
        .bind(world.job())
        .execute(world.lab().pool())
        .await
        .expect("update");
}

#[given(regex = r#"^a failed job whose error was "([^"]*)"$"#)]
#[when(regex = r#"^a failed job whose error was "([^"]*)"$"#)]
async fn failed_job_with_error(world: &mut OmaWorld, error: String) {
    let id = next_job_id(world);
    seed(world, "", SeedJob::replicating(&id, 50.0, 1.0)).await;
    let fin = oma::db::Finalization::failed(
        oma::domain::JobStatus::Failed,
        oma::domain::FailureClass::VmaReportedFailure,
        error,
        None,
        None,
    );
    oma::db::finalize_job(world.lab().pool(), &id, &fin).await.expect("finalize");
}

/// Create a job through `POST /api/v1/replications`, as an operator would.
fn create_request(world: &OmaWorld, vm: &str) -> reqwest::RequestBuilder {
    let url = format!("{}/api/v1/replications", world.lab().oma().url());
    let body = json!({"source_vm": {"id": format!("vmware-{vm}"), "name": vm, "path": format!("/DC1/vm/{vm}"),
                      "disks": [{"id": "disk-2000", "size_gb": 10, "capacity_bytes": 10737418240u64}]},
                      "ossea_config_id": 1, "vcenter_host": "vcenter.local", "start_replication": true});
    world.lab().http.post(url).json(&body)
}

pub async fn create_replication(world: &mut OmaWorld, vm: &str) -> (u16, Value) {
    let resp = create_request(world, vm).send().await.expect("POST /api/v1/replications");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[given(regex = r"^a replication job was started through the API$")]
#[when(regex = r"^a replication job was started through the API$")]
async fn started_through_api(world: &mut OmaWorld) {
    world.vm_counter += 1;
    let vm = format!("QUAD-APP-{:02}", world.vm_counter);
    let (status, body) = create_replication(world, &vm).await;
    assert_eq!(status, 201, "{body}");
    let id = body["job_id"].as_str().expect("job_id").to_string();
    let names: Vec<String> = body["created_volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["nbd_export_name"].as_str().unwrap().to_string())
        .collect();
    world.jobs.insert(String::new(), id.clone());
    world.export_names.insert(String::new(), names.clone());
    // The copy process starts: progress moves 1 % per poll from 15 %.
    world
        .lab()
        .vma_job(&id, &names, json!({"mode": "running", "start_percent": 15, "rate_per_poll": 1}))
        .await
        .expect("sim job");
}

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

/// The OMA's view of the scenario's job's polling: `/api/v1/vma-polling/jobs/{id}`.
async fn polling_view(world: &OmaWorld) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1/vma-polling/jobs/{}", world.lab().oma().url(), world.job());
    Ok(world.lab().http.get(url).send().await?.json().await?)
}

/// Waits for the OMA's own count: the original failed a job after 5 polling errors in a row.
#[then(regex = r"^the OMA has failed to poll the job (\d+) times in a row$")]
async fn failed_polls_in_a_row(world: &mut OmaWorld, n: u64) {
    world
        .lab()
        .wait_until(&format!("{n} failed polls in a row"), WAIT, || async {
            let body = polling_view(world).await?;
            let errors = body["polled_by_this_instance"]["consecutive_errors"].as_u64().unwrap_or(0);
            Ok(if errors >= n { Ok(()) } else { Err(format!("{errors} so far: {body}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Waits for `vma_polling_state` itself: the poll writer must write a job's failures even when no
/// poll of any job succeeds.
#[then(regex = r"^the database records (\d+) failed polls in a row for the job$")]
async fn failed_polls_written(world: &mut OmaWorld, n: i32) {
    let id = world.job();
    world
        .lab()
        .wait_until(&format!("{n} failed polls in a row in vma_polling_state"), WAIT, || async {
            let row = oma::db::polling_state(world.lab().pool(), &id).await?;
            Ok(match row {
                Some(r) if r.consecutive_errors >= n && r.last_error_message.is_some() => Ok(()),
                other => Err(format!("{other:?}")),
            })
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
    let (status, body) = create_replication(world, &vm).await;
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

/// Start times of GET polls of the scenario's job that sim-vma saw after `since`.
pub async fn poll_times(world: &OmaWorld, since: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let journal = world.lab().control.journal(Some(&world.job()), 10_000).await.expect("journal");
    journal["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["method"] == "GET")
        .filter_map(|e| {
            e["at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
        })
        .filter(|t| *t > since)
        .collect()
}

#[then(regex = r"^no polling was started for the job$")]
async fn no_polling(world: &mut OmaWorld) {
    let since = world.oma_started_at.expect("OMA started");
    let interval = world.lab().oma().config.poll_interval;
    let first = poll_times(world, since).await.len();
    tokio::time::sleep(interval * 5).await;
    let later = poll_times(world, since).await.len();
    assert_eq!(first, later, "the finished job was polled again");
    let names = world.export_names.get("").map(|n| n.len()).unwrap_or(0);
    assert!(later <= names + 1, "more requests than one recovery check: {later}");
    let state = oma::db::polling_state(world.lab().pool(), &world.job()).await.expect("query");
    assert!(state.is_none_or(|s| !s.is_active), "polling state still active");
}

#[then(regex = r"^the job is polled again within (\d+) seconds?$")]
#[when(regex = r"^the job is polled again within (\d+) seconds?$")]
async fn polled_again(world: &mut OmaWorld, secs: u64) {
    let since = Utc::now();
    let label = format!("a poll of {} after {since}", world.job());
    world
        .lab()
        .wait_until(&label, Duration::from_secs(secs), || async {
            Ok(if poll_times(world, since).await.is_empty() { Err("no poll".to_string()) } else { Ok(()) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^the job's progress is written again within (\d+) seconds?$")]
async fn written_again(world: &mut OmaWorld, secs: u64) {
    let id = world.job();
    let since = Utc::now();
    world
        .lab()
        .wait_until("vma_last_poll_at to move", Duration::from_secs(secs), || async {
            let row = world.lab().job(&id).await?;
            Ok(match row.vma_last_poll_at {
                Some(t) if t > since - chrono::Duration::milliseconds(50) => Ok(()),
                other => Err(format!("vma_last_poll_at={other:?}")),
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `vma_polling_state.polls_total` catches up with the polls the OMA made (its API's in-memory
/// count, taken a moment apart from the row: one poll may be written but not yet counted in
/// memory, or the other way round), those made while the database was away included: a write
/// that failed is kept, not dropped, and polls are summed, not counted once per statement.
#[then(regex = r"^the database counts every poll of the job within (\d+) seconds?$")]
async fn every_poll_counted(world: &mut OmaWorld, secs: u64) {
    world
        .lab()
        .wait_until("the stored poll count to match the OMA's", Duration::from_secs(secs), || async {
            let body = polling_view(world).await?;
            let made = body["polled_by_this_instance"]["polls_total"].as_i64();
            let stored = body["persisted_state"]["polls_total"].as_i64();
            Ok(match (made, stored) {
                (Some(m), Some(s)) if m >= 8 && (m - 1..=m + 1).contains(&s) => Ok(()),
                _ => Err(format!("made {made:?}, stored {stored:?}")),
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^vma_last_poll_at updates every poll interval$")]
async fn last_poll_updates(world: &mut OmaWorld) {
    let id = world.job();
    let interval = world.lab().oma().config.poll_interval;
    let mut seen = Vec::new();
    for _ in 0..12 {
        if let Some(t) = world.lab().job(&id).await.expect("row").vma_last_poll_at {
            if seen.last() != Some(&t) {
                seen.push(t);
            }
        }
        tokio::time::sleep(interval).await;
    }
    assert!(seen.len() >= 5, "vma_last_poll_at changed only {} times in 12 intervals: {seen:?}", seen.len());
    let age = (Utc::now() - *seen.last().expect("one value")).to_std().unwrap_or_default();
    assert!(age < interval * 3 + Duration::from_millis(300), "last poll {age:?} ago");
}

#[then(regex = r"^progress continues from where it left off$")]
async fn progress_continues(world: &mut OmaWorld) {
    let id = world.job();
    let before = world.before_restart.clone().expect("a snapshot taken when the OMA stopped");
    world
        .lab()
        .wait_until("progress to move past the value before the restart", WAIT, || async {
            let row = world.lab().job(&id).await?;
            Ok(if row.progress_percent > before.progress_percent {
                Ok(())
            } else {
                Err(format!("{}% (before: {}%)", row.progress_percent, before.progress_percent))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
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

#[then(regex = r"^polling restarted within (\d+) seconds of the OMA start$")]
async fn restarted_within(world: &mut OmaWorld, secs: i64) {
    let started = world.oma_started_at.expect("OMA started");
    let row = world.lab().job(&world.job()).await.expect("row");
    let restarted = row.polling_restarted_at.expect("polling_restarted_at");
    let took = restarted - started;
    assert!(took < chrono::Duration::seconds(secs), "polling restarted {took} after the start");
}

#[when(regex = r"^polling of the job is stopped through the API$")]
async fn stop_polling(world: &mut OmaWorld) {
    let url = format!("{}/api/v1/vma-polling/jobs/{}", world.lab().oma().url(), world.job());
    let resp = world.lab().http.delete(url).send().await.expect("DELETE");
    assert_eq!(resp.status(), 200);
}

#[when(regex = r"^a job the OMA never polled appears as (\w+) at (\d+)%$")]
async fn never_polled_appears(world: &mut OmaWorld, status: String, pct: f64) {
    // A job that appears while the startup scan still runs may be recovered by it; this one
    // appears after, as the name says.
    if world.lab.as_mut().is_some_and(|lab| lab.omas.first_mut().is_some_and(|o| o.is_running())) {
        wait_recovery_state(world, &["completed", "failed"]).await;
    }
    let id = seed_new_job(world, &status, pct, 0.1, true).await;
    let names = world.export_names.get("").cloned().unwrap_or_default();
    world.lab().vma_job(&id, &names, json!({"mode": "running", "start_percent": pct})).await.expect("sim");
}

#[given(regex = r"^(\d+) running jobs? and (\d+) jobs? completed on the VMA$")]
#[when(regex = r"^(\d+) running jobs? and (\d+) jobs? completed on the VMA$")]
async fn many_jobs(world: &mut OmaWorld, running: usize, completed: usize) {
    for i in 0..running + completed {
        let id = next_job_id(world);
        let alias = if i < running { format!("running-{i}") } else { format!("completed-{i}") };
        seed(world, &alias, SeedJob::replicating(&id, 30.0, 1.0)).await;
        let names = world.export_names[&alias].clone();
        let spec =
            if i < running { json!({"mode": "running", "start_percent": 30}) } else { json!({"mode": "completed"}) };
        world.lab().vma_job(&id, &names, spec).await.expect("sim");
        if i == 0 {
            world.jobs.insert(String::new(), id.clone());
            world.export_names.insert(String::new(), names);
        }
    }
}

/// N unfinished jobs no poller owns, running on the VMA, inserted in one statement so that one
/// health-monitor round finds them all (aliases `orphan-0`…).
#[when(regex = r"^(\d+) jobs no poller owns appear at once$")]
async fn orphans_at_once(world: &mut OmaWorld, n: usize) {
    orphans_appear(world, n, 0).await;
}

/// As above; the last `completed` of them have completed on the VMA.
#[when(regex = r"^(\d+) jobs no poller owns appear at once, (\d+) of them completed on the VMA$")]
async fn orphans_some_completed(world: &mut OmaWorld, n: usize, completed: usize) {
    assert!(completed <= n, "{completed} of {n} jobs");
    orphans_appear(world, n, completed).await;
}

async fn orphans_appear(world: &mut OmaWorld, n: usize, completed: usize) {
    let ids: Vec<String> = (0..n).map(|_| next_job_id(world)).collect();
    // The VMA knows them (by job id) before the database does.
    for (i, id) in ids.iter().enumerate() {
        let spec = if i + completed >= n {
            json!({"mode": "completed"})
        } else {
            json!({"mode": "running", "start_percent": 30})
        };
        world.lab().vma_job(id, &[], spec).await.expect("sim");
        world.jobs.insert(format!("orphan-{i}"), id.clone());
    }
    oma_test_support::seed_jobs_bulk(world.lab().pool(), &ids, 30.0, 0.2).await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^every one of them is polled again within (\d+) seconds$")]
async fn orphans_polled(world: &mut OmaWorld, secs: u64) {
    let ids: Vec<String> =
        world.jobs.iter().filter(|(a, _)| a.starts_with("orphan-")).map(|(_, id)| id.clone()).collect();
    let since = Utc::now() - chrono::Duration::seconds(5);
    world
        .lab()
        .wait_until("every orphan to be polled", Duration::from_secs(secs), || async {
            let mut waiting = Vec::new();
            for id in &ids {
                if world.lab().job(id).await?.vma_last_poll_at.is_none_or(|t| t < since) {
                    waiting.push(id.clone());
                }
            }
            Ok(if waiting.is_empty() { Ok(()) } else { Err(format!("not yet polled: {waiting:?}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^every completed job is finalized exactly once$")]
async fn finalized_once(world: &mut OmaWorld) {
    let completed: Vec<String> =
        world.jobs.iter().filter(|(a, _)| a.starts_with("completed-")).map(|(_, id)| id.clone()).collect();
    for id in &completed {
        world.lab().wait_for_status(id, "completed", WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));
        let n: usize = world.lab().omas.iter().map(|o| o.log.count(&format!("Job {id} marked as completed"))).sum();
        assert_eq!(n, 1, "{id} finalized {n} times");
    }
}

#[then(regex = r"^every running job is polled by exactly one process$")]
async fn running_polled_once(world: &mut OmaWorld) {
    let running: Vec<String> =
        world.jobs.iter().filter(|(a, _)| a.starts_with("running-")).map(|(_, id)| id.clone()).collect();
    for id in &running {
        let stats = world
            .lab()
            .wait_until(&format!("four polls of {id}"), WAIT, || async {
                let stats = world.lab().control.stats(id).await?;
                Ok(if stats.polls > 3 { Ok(stats) } else { Err(format!("{stats:?}")) })
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(stats.max_in_flight, 1, "{id}: {stats:?}");
        let state = oma::db::polling_state(world.lab().pool(), id).await.expect("q").expect("polling state");
        assert!(state.is_active);
    }
}

#[given(regex = r"^the VM had an earlier successful replication$")]
#[when(regex = r"^the VM had an earlier successful replication$")]
async fn earlier_success(world: &mut OmaWorld) {
    let job = world.lab().job(&world.job()).await.expect("row");
    let ctx = job.vm_context_id.expect("context");
    let id = format!("{}-earlier", job.id);
    sqlx::query(
        "INSERT INTO replication_jobs (id, vm_context_id, source_vm_id, source_vm_name, source_vm_path, status, progress_percent, \
         current_operation, created_at, updated_at, completed_at) VALUES (?, ?, ?, ?, ?, 'completed', 100, 'Completed', \
         NOW(3) - INTERVAL 2 DAY, NOW(3) - INTERVAL 2 DAY, NOW(3) - INTERVAL 2 DAY)",
    )
    .bind(&id)
    .bind(&ctx)
    .bind(&job.source_vm_id)
    .bind(&job.source_vm_name)
    .bind(&job.source_vm_path)
    .execute(world.lab().pool())
    .await
    .expect("insert");
    sqlx::query("UPDATE vm_replication_contexts SET successful_jobs = 1, total_jobs_run = 2, last_successful_job_id = ? WHERE context_id = ?")
        .bind(&id)
        .bind(&ctx)
        .execute(world.lab().pool())
        .await
        .expect("update");
}

#[then(regex = r#"^the health report shows recovery "(\w+)"$"#)]
async fn health_recovery(world: &mut OmaWorld, state: String) {
    // Waits for the state: the tracker is updated a moment after the scan's last write.
    wait_recovery_state(world, &[state.as_str()]).await;
}

/// Waits until the OMA is healthy and its recovery tracker is in one of `states`.
async fn wait_recovery_state(world: &OmaWorld, states: &[&str]) {
    let url = format!("{}/health", world.lab().oma().url());
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

#[when(regex = r"^I try to start a replication of the job's VM$")]
async fn try_replication(world: &mut OmaWorld) {
    let ctx = world.lab().context_of(&world.job()).await.expect("context");
    let vm = ctx.vm_name.clone();
    world.response = Some(create_replication(world, &vm).await);
}

#[when(regex = r"^I start a replication of a new VM and hang up after (\d+) ms$")]
async fn start_and_hang_up(world: &mut OmaWorld, ms: u64) {
    world.vm_counter += 1;
    let vm = format!("QUAD-GONE-{:02}", world.vm_counter);
    crate::steps::api::send_and_hang_up(create_request(world, &vm), ms).await;
    // The job row is committed before the VMA is asked, so it is there once the caller gave up.
    let id = world
        .lab()
        .wait_until(&format!("a job row for {vm}"), WAIT, || async {
            let id: Option<String> = sqlx::query_scalar("SELECT id FROM replication_jobs WHERE source_vm_name = ?")
                .bind(&vm)
                .fetch_optional(world.lab().pool())
                .await?;
            Ok(id.ok_or_else(|| "no row yet".to_string()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    world.jobs.insert(String::new(), id);
}

#[when(regex = r"^I try to start a replication of a new VM$")]
async fn try_new_replication(world: &mut OmaWorld) {
    world.vm_counter += 1;
    let vm = format!("QUAD-NEW-{:02}", world.vm_counter);
    let (status, body) = create_replication(world, &vm).await;
    if let Some(id) = body["job_id"].as_str() {
        world.jobs.insert(String::new(), id.to_string());
    } else if let Ok(id) = sqlx::query_scalar::<_, String>("SELECT id FROM replication_jobs WHERE source_vm_name = ?")
        .bind(&vm)
        .fetch_one(world.lab().pool())
        .await
    {
        world.jobs.insert(String::new(), id);
    }
    world.response = Some((status, body));
}

/// A write error the OMA cannot prevent (a deadlock victim, a full disk): a trigger makes MariaDB
/// refuse any status change of the job, with SQLSTATE 40001.
#[when(regex = r"^the database rejects every write that finalizes the job$")]
async fn database_rejects_final(world: &mut OmaWorld) {
    let refusal = "OLD.id = '{job}' AND NEW.status <> OLD.status";
    refuse_updates(world, "oma_test_reject_final", "replication_jobs", refusal, "40001", "status change refused").await;
}

#[when(regex = r"^the database accepts the job's writes again$")]
async fn database_accepts_again(world: &mut OmaWorld) {
    drop_trigger(world, "oma_test_reject_final").await;
}

/// A trigger named `name` makes MariaDB refuse, with `sqlstate`, every update of `table` for which
/// `condition` holds (`{job}` in it is the scenario's job id).
async fn refuse_updates(world: &OmaWorld, name: &str, table: &str, condition: &str, sqlstate: &str, what: &str) {
    let id = world.job();
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)), "unexpected job id {id}");
    let condition = condition.replace("{job}", &id);
    let sql = format!(
        "CREATE TRIGGER {name} BEFORE UPDATE ON {table} FOR EACH ROW IF {condition} THEN \
         SIGNAL SQLSTATE '{sqlstate}' SET MESSAGE_TEXT = 'injected by the test: {what}'; END IF"
    );
    sqlx::raw_sql(&sql).execute(world.lab().pool()).await.expect("create the trigger");
}

async fn drop_trigger(world: &OmaWorld, name: &str) {
    let sql = format!("DROP TRIGGER IF EXISTS {name}");
    sqlx::raw_sql(&sql).execute(world.lab().pool()).await.expect("drop the trigger");
}

/// A refusal no retry can cure (SQLSTATE 45000, as a constraint or a full disk would give): a
/// trigger makes MariaDB refuse every change of the job's poll count in `vma_polling_state`.
#[when(regex = r"^the database refuses every write of the job's poll statistics$")]
async fn database_refuses_stats(world: &mut OmaWorld) {
    refuse_stats(world, "45000", "poll statistics refused").await;
}

/// Every change of the job's poll count in `vma_polling_state` fails with `sqlstate`.
async fn refuse_stats(world: &OmaWorld, sqlstate: &str, what: &str) {
    let refusal = "OLD.job_id = '{job}' AND NEW.polls_total <> OLD.polls_total";
    refuse_updates(world, STATS_TRIGGER, "vma_polling_state", refusal, sqlstate, what).await;
}

const STATS_TRIGGER: &str = "oma_test_refuse_stats";

/// A write the database refuses as a lost lock race (SQLSTATE 40001) is one worth retrying: the
/// OMA keeps the statistics and tries again.
#[when(regex = r"^every write of the job's poll statistics loses a lock race$")]
async fn stats_lose_lock_race(world: &mut OmaWorld) {
    refuse_stats(world, "40001", "lock race lost").await;
    world.refused_since = Some(std::time::Instant::now());
}

#[when(regex = r"^the database takes the job's poll statistics again$")]
async fn database_takes_stats_again(world: &mut OmaWorld) {
    drop_trigger(world, STATS_TRIGGER).await;
    world.refused_for = world.refused_since.map(|t| t.elapsed());
}

/// The writer pauses between failed writes (100 ms): it does not hammer a database that fails
/// at once. Reads the count from "Polling results are written again after N failed writes".
#[then(regex = r"^the failed writes were retried no more than (\d+) times a second$")]
async fn retry_pace(world: &mut OmaWorld, per_second: f64) {
    let refused_for = world.refused_for.expect("the database refused the statistics for a while first");
    let line = lines_with(world, "Polling results are written again after").pop().expect("the recovery line");
    let failed: f64 = line
        .split("after ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of failed writes in {line:?}"));
    // The first failure comes without a pause, and a write under way when the refusal ended may
    // still fail: two more than the pace allows.
    let most = per_second * refused_for.as_secs_f64() + 2.0;
    assert!(failed >= 1.0 && failed <= most, "{failed} failed writes in {refused_for:?}, more than {most:.0}: {line}");
}

/// `vma_polling_state.polls_total` grows: statistics are written again.
#[then(regex = r"^the database counts the job's polls again within (\d+) seconds?$")]
async fn polls_counted_again(world: &mut OmaWorld, secs: u64) {
    let id = world.job();
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT polls_total FROM vma_polling_state WHERE job_id = ?")
            .bind(&id)
            .fetch_one(world.lab().pool())
            .await
    };
    let before = stored().await.expect("the job's polling state");
    world
        .lab()
        .wait_until("polls_total to grow", Duration::from_secs(secs), || async {
            let now = stored().await?;
            Ok(if now > before { Ok(()) } else { Err(format!("polls_total still {now}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Another component (an operator, the GUI's cancel) ends the job behind the OMA's back.
#[when(regex = r"^another component marks the job (cancelled|completed) in the database$")]
async fn marked_elsewhere(world: &mut OmaWorld, status: String) {
    let done = sqlx::query("UPDATE replication_jobs SET status = ?, completed_at = NOW(3) WHERE id = ?")
        .bind(&status)
        .bind(world.job())
        .execute(world.lab().pool())
        .await
        .expect("update the job");
    assert_eq!(done.rows_affected(), 1, "no row for {}", world.job());
}

/// No request for the job reaches the VMA over five poll intervals (from one interval after the
/// step starts: a poll already in flight may still land).
#[then(regex = r"^the VMA is no longer asked about the job$")]
async fn no_longer_polled(world: &mut OmaWorld) {
    let interval = world.lab().omas.first().map(|o| o.config.poll_interval).unwrap_or(Duration::from_millis(100));
    let from = Utc::now() + chrono::Duration::from_std(interval).expect("interval");
    tokio::time::sleep(interval * 6).await;
    let polls = poll_times(world, from).await;
    assert!(polls.is_empty(), "the VMA was still asked about {} at {polls:?}", world.job());
}

#[when(regex = r"^another database session holds the job's polling state locked$")]
async fn hold_polling_state_lock(world: &mut OmaWorld) {
    let id = world.job();
    let mut tx = world.lab().pool().begin().await.expect("begin");
    let locked: Option<String> = sqlx::query_scalar("SELECT job_id FROM vma_polling_state WHERE job_id = ? FOR UPDATE")
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await
        .expect("lock the polling state");
    assert!(locked.is_some(), "no polling state row for {id} to lock");
    world.held_lock = Some(tx);
}

#[when(regex = r"^the other database session releases the lock$")]
async fn release_polling_state_lock(world: &mut OmaWorld) {
    let tx = world.held_lock.take().expect("a step took the lock first");
    tx.commit().await.expect("release the lock");
}

/// An OMA statement on the polling state has been held up for over half a second (a statement on
/// a table of a few rows takes milliseconds: it is waiting for the lock).
#[then(regex = r"^the OMA waits on that lock$")]
async fn oma_waits_on_lock(world: &mut OmaWorld) {
    world
        .lab()
        .wait_until("an OMA statement waiting on the lock", WAIT, || async {
            let waiting: Vec<String> = sqlx::query_scalar(
                "SELECT INFO FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID() \
                 AND COMMAND IN ('Query', 'Execute') AND TIME_MS > 500 AND INFO LIKE '%vma_polling_state%'",
            )
            .fetch_all(world.lab().pool())
            .await?;
            Ok(if waiting.is_empty() { Err("no statement held up".to_string()) } else { Ok(waiting) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Every other connection to the scenario's database is killed (the OMA's among them), as a
/// database failover or `wait_timeout` would.
#[when(regex = r"^the database drops every connection of the OMA$")]
async fn drop_oma_connections(world: &mut OmaWorld) {
    let mut conn = world.lab().pool().acquire().await.expect("connection");
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("processlist");
    // The harness's own other connections are among them; the OMA's must be too.
    let harness_others = world.lab().pool().size() as usize - 1;
    assert!(
        ids.len() > harness_others,
        "no OMA connection to drop: {} connections, {harness_others} the harness's",
        ids.len()
    );
    for id in ids {
        // A connection may end on its own meanwhile.
        let _ = sqlx::query(&format!("KILL CONNECTION {id}")).execute(&mut *conn).await;
    }
}
