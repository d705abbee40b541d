//! Given steps: jobs as a previous OMA left them in the database (ages made by past timestamps),
//! many at once, earlier replications of a VM.

use cucumber::{given, when};
use oma_acceptance::SeedJob;
use serde_json::json;

use crate::OmaWorld;

pub(super) fn next_job_id(world: &mut OmaWorld) -> String {
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

#[when(regex = r"^a job the OMA never polled appears as (\w+) at (\d+)%$")]
async fn never_polled_appears(world: &mut OmaWorld, status: String, pct: f64) {
    // A job that appears while the startup scan still runs may be recovered by it; this one
    // appears after, as the name says.
    if world.lab.as_mut().is_some_and(|lab| lab.omas.first_mut().is_some_and(|o| o.is_running())) {
        super::job_state::wait_recovery_state(world, &["completed", "failed"]).await;
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
