//! Steps about the VMA (sim-vma): what it says about the scenario's job, faults, restarts.

use cucumber::{given, then, when};
use serde_json::json;

use crate::OmaWorld;

async fn set_job(world: &OmaWorld, spec: serde_json::Value) {
    let id = world.job();
    let names = world.export_names.get("").cloned().unwrap_or_default();
    world.lab().vma_job(&id, &names, spec).await.unwrap_or_else(|e| panic!("{e:#}"));
}

#[given(regex = r"^the VMA is running$")]
#[when(regex = r"^the VMA is running$")]
async fn vma_running(world: &mut OmaWorld) {
    let health = world.lab().control.health().await.expect("sim-vma control API");
    assert_eq!(health["listener_up"], true);
}

#[given(regex = r"^the VMA is running the job at (\d+(?:\.\d+)?)%$")]
#[when(regex = r"^the VMA runs the job at (\d+(?:\.\d+)?)%$")]
async fn vma_runs_at(world: &mut OmaWorld, pct: f64) {
    set_job(world, json!({"mode": "running", "start_percent": pct})).await;
}

#[given(regex = r"^the VMA is running the job at (\d+(?:\.\d+)?)% and advancing$")]
#[when(regex = r"^the VMA is running the job at (\d+(?:\.\d+)?)% and advancing$")]
async fn vma_runs_advancing(world: &mut OmaWorld, pct: f64) {
    set_job(world, json!({"mode": "running", "start_percent": pct, "rate_per_poll": 0.5})).await;
}

#[given(regex = r#"^the VMA is running the job in phase "([^"]*)" at (\d+)%$"#)]
#[when(regex = r#"^the VMA is running the job in phase "([^"]*)" at (\d+)%$"#)]
async fn vma_runs_phase(world: &mut OmaWorld, phase: String, pct: f64) {
    set_job(world, json!({"mode": "running", "start_percent": pct, "phases": [phase]})).await;
}

#[given(regex = r"^the VMA reports the job completed$")]
#[when(regex = r"^the job completes on the VMA$")]
#[when(regex = r"^the VMA reports the job completed$")]
async fn vma_completed(world: &mut OmaWorld) {
    set_job(world, json!({"mode": "completed"})).await;
}

#[given(regex = r#"^the VMA reports the job failed with "([^"]*)"$"#)]
#[when(regex = r#"^the job fails on the VMA with "([^"]*)"$"#)]
async fn vma_failed(world: &mut OmaWorld, message: String) {
    set_job(world, json!({"mode": "failed", "message": message})).await;
}

#[given(regex = r"^the VMA does not know the job$")]
#[when(regex = r"^the VMA forgets the job$")]
async fn vma_unknown(world: &mut OmaWorld) {
    let _ = world.lab().control.forget_job(&world.job()).await;
}

#[given(regex = r#"^the VMA answers HTTP 200 "job not found" for the job$"#)]
#[when(regex = r#"^the VMA (?:starts answering|answers) HTTP 200 "job not found" for the job$"#)]
async fn vma_http200(world: &mut OmaWorld) {
    set_job(world, json!({"mode": "http200_not_found"})).await;
}

#[given(regex = r"^the VMA does not know the job for (\d+) polls, then runs it at (\d+)%$")]
#[when(regex = r"^the VMA loses the job for (\d+) polls, then runs it at (\d+)%$")]
async fn vma_late(world: &mut OmaWorld, polls: u64, pct: f64) {
    set_job(
        world,
        json!({"mode": "not_found", "transitions": [{"after_polls": polls, "mode": "running", "start_percent": pct}]}),
    )
    .await;
}

#[when(regex = r"^the VMA's copy process for the job dies$")]
async fn vma_copy_dies(world: &mut OmaWorld) {
    set_job(world, json!({"mode": "stale"})).await;
}

#[given(regex = r"^the VMA's copy process for the job died at (\d+)%$")]
#[when(regex = r"^the VMA's copy process for the job died at (\d+)%$")]
async fn vma_stale(world: &mut OmaWorld, pct: f64) {
    set_job(
        world,
        json!({"mode": "running", "start_percent": pct, "transitions": [{"after_polls": 0, "mode": "stale"}]}),
    )
    .await;
}

#[given(regex = r"^the VMA answers the job slowly, taking (\d+) ms$")]
#[when(regex = r"^the VMA answers the job slowly, taking (\d+) ms$")]
async fn vma_slow(world: &mut OmaWorld, ms: u64) {
    set_job(world, json!({"mode": "slow", "delay": format!("{ms}ms"), "start_percent": 30})).await;
}

#[given(regex = r"^the VMA answers the job with a (not_json|truncated|wrong_types|oversized) body$")]
#[when(regex = r"^the VMA answers the job with a (not_json|truncated|wrong_types|oversized) body$")]
async fn vma_malformed(world: &mut OmaWorld, kind: String) {
    set_job(world, json!({"mode": "malformed", "kind": kind})).await;
}

#[given(regex = r"^the VMA is stopped$")]
#[when(regex = r"^the VMA (?:is stopped|goes down)$")]
async fn vma_stopped(world: &mut OmaWorld) {
    world.lab().control.set_faults_json(&json!({"unreachable": {"mode": "refused"}})).await.expect("faults");
}

#[given(regex = r"^the VMA is unreachable by (refused|blackhole|reset|hang_after_headers)$")]
#[when(regex = r"^the VMA is unreachable by (refused|blackhole|reset|hang_after_headers)$")]
async fn vma_unreachable_by(world: &mut OmaWorld, mode: String) {
    world.lab().control.set_faults_json(&json!({"unreachable": {"mode": mode}})).await.expect("faults");
}

/// Global latency: every VMA endpoint (progress and `/replicate` alike) answers late.
#[given(regex = r"^the VMA answers every request after (\d+) ms$")]
#[when(regex = r"^the VMA answers every request after (\d+) ms$")]
async fn vma_latency(world: &mut OmaWorld, ms: u64) {
    let faults = json!({"latency": {"base": format!("{ms}ms"), "probability": 1.0}});
    world.lab().control.set_faults_json(&faults).await.expect("faults");
}

#[given(regex = r"^the VMA answers every request with status (\d+)$")]
#[when(regex = r"^the VMA answers every request with status (\d+)$")]
async fn vma_errors(world: &mut OmaWorld, status: u16) {
    world
        .lab()
        .control
        .set_faults_json(&json!({"error_rate": {"status": status, "probability": 1.0}}))
        .await
        .expect("faults");
}

#[when(regex = r"^the VMA is started again$")]
async fn vma_back(world: &mut OmaWorld) {
    world.lab().control.clear_faults().await.expect("faults");
}

#[when(regex = r"^the VMA restarts and forgets every job$")]
async fn vma_restart(world: &mut OmaWorld) {
    world.lab().control.restart(None).await.expect("restart");
}

#[then(regex = r"^the job is still running on the VMA$")]
async fn still_running_on_vma(world: &mut OmaWorld) {
    let url = format!("{}/api/v1/progress/{}", world.lab().sim().vma_url(), world.job());
    let body: serde_json::Value = reqwest::get(url).await.expect("VMA").json().await.expect("json");
    assert_eq!(body["status"], "in_progress", "{body}");
    assert!(body["percentage"].as_f64().unwrap_or(0.0) > 0.0, "{body}");
}

#[then(regex = r"^the job is polled by exactly one poller$")]
async fn one_poller(world: &mut OmaWorld) {
    let id = world.job();
    let since =
        world.oma_started_at.expect("the OMA was started").max(chrono::Utc::now() - chrono::Duration::seconds(3));
    world
        .lab()
        .wait_until("six polls since the OMA started", super::WAIT, || async {
            let n = crate::steps::polling::poll_times(world, since).await.len();
            Ok(if n >= 6 { Ok(()) } else { Err(format!("{n} polls")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let stats = world.lab().control.stats(&id).await.expect("stats");
    assert_eq!(stats.max_in_flight, 1, "more than one request in flight for {id}: {stats:?}");
    let interval = world.lab().omas[0].config.poll_interval.as_secs_f64() * 1000.0;
    // Since the OMA (re)started, every request for the job - recovery's check included - is
    // about one interval after the previous one: never two pollers, never a burst.
    let since =
        world.oma_started_at.expect("the OMA was started").max(chrono::Utc::now() - chrono::Duration::seconds(3));
    let recent = crate::steps::polling::poll_times(world, since).await;
    assert!(recent.len() >= 5, "only {} polls since {since}", recent.len());
    check_cadence(&recent, interval);
}

#[given(regex = r"^the VMA knows the job only by its id, running at (\d+)%$")]
#[when(regex = r"^the VMA knows the job only by its id, running at (\d+)%$")]
async fn vma_only_by_id(world: &mut OmaWorld, pct: f64) {
    let id = world.job();
    world.lab().vma_job(&id, &[], json!({"mode": "running", "start_percent": pct})).await.expect("sim");
}

#[given(regex = r"^the VMA reports an older job completed under the job's export names$")]
#[when(regex = r"^the VMA reports an older job completed under the job's export names$")]
async fn vma_older_job_on_names(world: &mut OmaWorld) {
    let names = world.export_names.get("").cloned().unwrap_or_default();
    world.lab().vma_job("job-older-same-volumes", &names, json!({"mode": "completed"})).await.expect("sim");
}

#[then(regex = r"^no two polls of the job overlap$")]
async fn no_overlap(world: &mut OmaWorld) {
    let id = world.job();
    let stats = world
        .lab()
        .wait_until("four polls of the job", super::WAIT, || async {
            let stats = world.lab().control.stats(&id).await?;
            Ok(if stats.polls >= 4 { Ok(stats) } else { Err(format!("{stats:?}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stats.max_in_flight, 1, "overlapping requests for {id}: {stats:?}");
}

#[then(regex = r"^the job is polled every interval$")]
async fn polled_every_interval(world: &mut OmaWorld) {
    let interval = world.lab().omas[0].config.poll_interval.as_secs_f64() * 1000.0;
    let since = chrono::Utc::now();
    let recent = world
        .lab()
        .wait_until("eight polls from now on", super::WAIT, || async {
            let polls = crate::steps::polling::poll_times(world, since).await;
            Ok(if polls.len() >= 8 { Ok(polls) } else { Err(format!("{} polls", polls.len())) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    check_cadence(&recent, interval);
}

/// A job whose polls keep failing is polled less often: after three failures in a row the gap is
/// six intervals (2, 4, then 6: the VMA is not hammered while it answers badly).
#[then(regex = r"^the failing job's polls are (\d+) intervals apart$")]
async fn polled_with_backoff(world: &mut OmaWorld, factor: f64) {
    let interval = world.lab().omas[0].config.poll_interval.as_secs_f64() * 1000.0;
    let since = chrono::Utc::now();
    let recent = world
        .lab()
        .wait_until("four polls from now on", super::WAIT, || async {
            // One poll may be two requests a moment apart (by export name, then by job id).
            let mut polls = crate::steps::polling::poll_times(world, since).await;
            polls.dedup_by(|later, first| (*later - *first).num_milliseconds() < (interval / 2.0) as i64);
            Ok(if polls.len() >= 4 { Ok(polls) } else { Err(format!("{} polls", polls.len())) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gaps = gaps_ms(&recent);
    let want = interval * factor;
    assert!(
        gaps.iter().all(|g| (want * 0.9..=want * 1.4).contains(g)),
        "gaps {gaps:?} ms, not {factor} intervals of {interval} ms"
    );
}

/// Milliseconds between consecutive polls.
fn gaps_ms(polls: &[chrono::DateTime<chrono::Utc>]) -> Vec<f64> {
    polls.windows(2).map(|w| (w[1] - w[0]).num_microseconds().unwrap_or(0) as f64 / 1000.0).collect()
}

/// Polls of one job are never closer than half an interval (one poller, no burst) nor further
/// apart than 1.6 intervals (no stall: dispatch never waits on the database), and the typical gap
/// is one interval (median within 0.8-1.3).
fn check_cadence(polls: &[chrono::DateTime<chrono::Utc>], interval_ms: f64) {
    let mut gaps = gaps_ms(polls);
    assert!(
        gaps.iter().all(|g| (interval_ms * 0.5..=interval_ms * 1.6).contains(g)),
        "a gap outside 0.5-1.6 intervals ({interval_ms} ms): {gaps:?}"
    );
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    assert!(
        (interval_ms * 0.8..=interval_ms * 1.3).contains(&median),
        "median gap {median} ms, interval {interval_ms} ms: {gaps:?}"
    );
}
