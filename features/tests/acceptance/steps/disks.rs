//! Steps about multi-disk jobs (reference §10, defect 13): the VMA copies a VM's disks one after
//! another under one job id and answers "completed" at 100 % after each disk.

use cucumber::{given, then, when};
use oma_acceptance::SeedJob;
use serde_json::{json, Value};

use super::WAIT;
use crate::OmaWorld;

const GIB: i64 = 1 << 30;

/// "10, 20 and 5" -> sizes in bytes.
fn gib_list(text: &str) -> Vec<i64> {
    text.replace(" and ", ", ")
        .split(',')
        .map(|n| {
            n.trim().parse::<i64>().unwrap_or_else(|_| panic!("disk size {n:?} is not a whole number of GiB")) * GIB
        })
        .collect()
}

async fn seed_multi_disk(world: &mut OmaWorld, id: &str, sizes: &str, never_polled: bool) {
    let mut job = SeedJob::replicating(id, 0.0, 0.1);
    job.bytes_transferred = 0;
    job.disk_bytes = gib_list(sizes);
    if never_polled {
        job.last_poll_minutes_ago = None;
        job.polling_started_minutes_ago = None;
    }
    let names = world.lab().seed_job(&job).await.unwrap_or_else(|e| panic!("{e:#}"));
    world.jobs.insert(String::new(), id.to_string());
    world.export_names.insert(String::new(), names);
}

#[given(regex = r"^a replicating job at 0% with disks of ([0-9, and]+) GiB$")]
async fn multi_disk_job(world: &mut OmaWorld, sizes: String) {
    let id = super::seeding::next_job_id(world);
    seed_multi_disk(world, &id, &sizes, false).await;
}

/// A job created while the OMA runs, which no poller owns: the health monitor's to find. The VMA
/// knows it (by its id) before it appears, its first disk copied at the first poll.
#[when(
    regex = r"^a replicating job with disks of ([0-9, and]+) GiB appears that no poller owns, its first disk copied at the VMA's first answer$"
)]
async fn orphan_multi_disk_job(world: &mut OmaWorld, sizes: String) {
    super::job_state::wait_recovery_state(world, &["completed", "failed"]).await;
    let id = super::seeding::next_job_id(world);
    let spec = json!({"mode": "multi_disk", "disks": gib_list(&sizes), "rate_per_poll": 100, "pause_polls": 3});
    world.lab().vma_job(&id, &[], spec).await.unwrap_or_else(|e| panic!("{e:#}"));
    seed_multi_disk(world, &id, &sizes, true).await;
}

/// The job's disk sizes as the OMA's database has them, in unit order.
async fn disk_sizes(world: &OmaWorld) -> Vec<i64> {
    sqlx::query_scalar("SELECT capacity_bytes FROM vm_disks WHERE job_id = ? ORDER BY unit_number, id")
        .bind(world.job())
        .fetch_all(world.lab().pool())
        .await
        .expect("vm_disks")
}

async fn copy_disk_by_disk(world: &mut OmaWorld, rate: f64, pause: u64, listing: bool) {
    let id = world.job();
    let names = world.export_names.get("").cloned().unwrap_or_default();
    let spec = json!({"mode": "multi_disk", "disks": disk_sizes(world).await, "rate_per_poll": rate,
                      "pause_polls": pause, "disk_progresses": listing});
    world.lab().vma_job(&id, &names, spec).await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[given(
    regex = r"^the VMA copies the job's disks one after another, (\d+)% a poll, pausing (\d+) polls between disks$"
)]
#[when(regex = r"^the VMA copies the job's disks one after another, (\d+)% a poll, pausing (\d+) polls between disks$")]
async fn vma_copies_disks(world: &mut OmaWorld, rate: f64, pause: u64) {
    copy_disk_by_disk(world, rate, pause, false).await;
}

#[given(
    regex = r"^the VMA copies the job's disks one after another, (\d+)% a poll, pausing (\d+) polls between disks, listing each disk$"
)]
#[when(
    regex = r"^the VMA copies the job's disks one after another, (\d+)% a poll, pausing (\d+) polls between disks, listing each disk$"
)]
async fn vma_copies_disks_listing(world: &mut OmaWorld, rate: f64, pause: u64) {
    copy_disk_by_disk(world, rate, pause, true).await;
}

async fn vma_view(world: &OmaWorld) -> Value {
    world.lab().control.get_job(&world.job()).await.expect("sim-vma job")
}

/// Waits until the VMA answers "completed" for disk `disk`, then for two more of its polls while
/// it still does: a poller that took that answer for the job's end would not ask again.
#[then(regex = r#"^the job is still "replicating" while the VMA answers "completed" for disk (\d+)$"#)]
async fn still_replicating_during_pause(world: &mut OmaWorld, disk: u64) {
    let in_pause = |v: &Value| v["disk"].as_u64() == Some(disk) && v["status"] == "completed";
    let id = world.job();
    let lab = world.lab();
    let first = lab
        .wait_until(&format!("the VMA to answer completed for disk {disk}"), WAIT, || async {
            let v = vma_view(world).await;
            Ok(if in_pause(&v) { Ok(v) } else { Err(v.to_string()) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let polls = first["polls"].as_u64().unwrap_or(0);
    let waited = lab
        .wait_until(
            &format!("two more polls of job {id} while the VMA answers completed for disk {disk}"),
            WAIT,
            || async {
                let v = vma_view(world).await;
                if v["polls"].as_u64() >= Some(polls + 2) {
                    return Ok(Ok(()));
                }
                // The scenario's pause must outlast two polls, or this proves nothing.
                assert!(in_pause(&v), "the VMA moved on before two more polls: {v}");
                Ok(Err(v.to_string()))
            },
        )
        .await;
    if let Err(e) = waited {
        panic!("{e:#}\n{}", lab.diagnostics(Some(&id)).await);
    }
    let row = lab.job(&id).await.expect("row");
    assert_eq!(row.status.as_str(), "replicating", "job {id} ended on disk {disk}'s completion: {row:?}");
}

/// Waits for the written count of copied disks (the poller writes in batches).
#[when(regex = r"^the OMA has recorded (\d+) of the job's disks as copied$")]
#[then(regex = r"^the OMA has recorded (\d+) of the job's disks as copied$")]
async fn disks_recorded(world: &mut OmaWorld, n: i32) {
    let id = world.job();
    let lab = world.lab();
    lab.wait_until(&format!("job {id} to have {n} disks recorded as copied"), WAIT, || async {
        let row = lab.job(&id).await?;
        Ok(if row.disks_completed == n { Ok(()) } else { Err(format!("disks_completed={}", row.disks_completed)) })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The job is completed, and the VMA had copied every disk by then: the OMA stops asking once it
/// finalizes, so the VMA's state is where the copy stood at that moment.
#[then(regex = r"^the VMA had finished all (\d+) disks when the job was completed$")]
async fn all_disks_done_at_completion(world: &mut OmaWorld, n: u64) {
    let id = world.job();
    let row = match world.lab().wait_for_status(&id, "completed", WAIT * 2).await {
        Ok(row) => row,
        Err(e) => panic!("{e:#}\n{}", world.lab().diagnostics(Some(&id)).await),
    };
    let v = vma_view(world).await;
    assert!(
        v["disk"].as_u64() == Some(n) && v["status"] == "completed",
        "job {id} was completed while the VMA was at disk {} ({}) of {n}: {v}",
        v["disk"],
        v["status"]
    );
    let total: i64 = disk_sizes(world).await.iter().sum();
    assert_eq!((row.bytes_transferred, row.progress_percent), (total, 100.0), "job-wide figures at the end: {row:?}");
}

/// A job-wide progress: the copied disks' bytes plus the current one's, over all disks.
#[then(regex = r"^the job's progress covers all its disks$")]
async fn progress_is_job_wide(world: &mut OmaWorld) {
    let id = world.job();
    let total: i64 = disk_sizes(world).await.iter().sum();
    let lab = world.lab();
    lab.wait_until(&format!("job {id} to show progress over all its disks"), WAIT, || async {
        let row = lab.job(&id).await?;
        Ok(if row.total_bytes == total && row.bytes_transferred > 0 && row.progress_percent < 100.0 {
            Ok(())
        } else {
            Err(format!("bytes={} total={} progress={}", row.bytes_transferred, row.total_bytes, row.progress_percent))
        })
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}
