//! The real `oma-api` process end to end (issue 2): polling survives SIGTERM and SIGKILL
//! restarts (first poll within one interval plus one second), a job completed during downtime
//! is finalized without polling, and two processes on one database never double-poll.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use oma_acceptance::{Lab, SeedJob};
use serde_json::{json, Value};

/// Start times of polls of `job` recorded by sim-vma after `since`.
async fn polls_after(lab: &Lab, job: &str, since: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let journal = lab.control.journal(Some(job), 10_000).await.unwrap();
    journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"].as_str().unwrap_or("").starts_with("/api/v1/progress/") && e["method"] == "GET")
        .filter_map(|e| {
            e["at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
        })
        .filter(|t| *t > since)
        .collect()
}

async fn first_poll_after(lab: &Lab, job: &str, since: DateTime<Utc>, timeout: Duration) -> DateTime<Utc> {
    let label = format!("a poll of {job} after {since}");
    lab.wait_until(&label, timeout, || async {
        let polls = polls_after(lab, job, since).await;
        Ok(polls.first().copied().ok_or_else(|| "no poll yet".to_string()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test]
async fn polling_survives_sigterm_and_sigkill_restarts() {
    let mut lab = Lab::new("restarts").await.unwrap();
    let names = lab.seed_job(&SeedJob::replicating("job-run", 30.0, 0.2)).await.unwrap();
    lab.vma_job("job-run", &names, json!({"mode": "running", "start_percent": 30, "rate_per_poll": 0.05}))
        .await
        .unwrap();
    lab.start_oma().await.unwrap();
    let interval = lab.oma().config.poll_interval;
    first_poll_after(&lab, "job-run", Utc::now() - chrono::Duration::seconds(60), Duration::from_secs(10)).await;

    for how in ["SIGTERM", "SIGKILL"] {
        if how == "SIGTERM" {
            let code = lab.oma_mut().stop().await.unwrap();
            assert_eq!(code, Some(0), "clean exit on SIGTERM");
        } else {
            lab.oma_mut().kill().await.unwrap();
        }
        let before = lab.job("job-run").await.unwrap();
        let spawned_at = Utc::now();
        lab.oma_mut().spawn().await.unwrap();
        let first = first_poll_after(&lab, "job-run", spawned_at, Duration::from_secs(15)).await;
        let delay = (first - spawned_at).to_std().unwrap();
        assert!(
            delay <= interval + Duration::from_secs(1),
            "after {how}: first poll {delay:?} after the process started (limit: one interval + 1 s)\n{}",
            lab.diagnostics(Some("job-run")).await
        );
        lab.oma_mut().wait_ready(Duration::from_secs(10)).await.unwrap();
        // Polling goes on: the row's vma_last_poll_at moves and progress does not go back.
        let later = lab
            .wait_until("vma_last_poll_at to advance", Duration::from_secs(5), || async {
                let row = lab.job("job-run").await?;
                Ok(if row.vma_last_poll_at > before.vma_last_poll_at {
                    Ok(row)
                } else {
                    Err(format!("{:?}", row.vma_last_poll_at))
                })
            })
            .await
            .unwrap();
        assert!(later.progress_percent >= before.progress_percent);
        assert_eq!(later.status, oma::domain::JobStatus::Replicating);
    }
    let stats = lab.control.stats("job-run").await.unwrap();
    assert_eq!(stats.max_in_flight, 1, "one request in flight per job: {stats:?}");
    lab.teardown().await;
}

#[tokio::test]
async fn a_job_completed_during_downtime_is_finalized_without_polling() {
    let mut lab = Lab::new("completed-downtime").await.unwrap();
    let names = lab.seed_job(&SeedJob::replicating("job-c", 70.0, 0.2)).await.unwrap();
    lab.vma_job("job-c", &names, json!({"mode": "running", "start_percent": 70})).await.unwrap();
    lab.start_oma().await.unwrap();
    first_poll_after(&lab, "job-c", Utc::now() - chrono::Duration::seconds(60), Duration::from_secs(10)).await;
    lab.oma_mut().stop().await.unwrap();
    lab.vma_job("job-c", &names, json!({"mode": "completed"})).await.unwrap();
    let restarted = Utc::now();
    lab.oma_mut().start_again().await.unwrap();
    let row = lab.wait_for_status("job-c", "completed", Duration::from_secs(10)).await.unwrap();
    assert_eq!(row.progress_percent, 100.0);
    assert_eq!(row.current_operation.as_deref(), Some("Completed"));
    assert!(row.completed_at.is_some());
    assert_eq!(lab.context_of("job-c").await.unwrap().current_status, "ready_for_failover");
    // Wait several intervals: no further polls of the finished job.
    let polls_then = polls_after(&lab, "job-c", restarted).await.len();
    tokio::time::sleep(lab.oma().config.poll_interval * 5).await;
    let polls_now = polls_after(&lab, "job-c", restarted).await.len();
    assert_eq!(polls_then, polls_now, "a finished job is not polled");
    assert!(polls_now <= names.len() + 1, "only the recovery check asked the VMA: {polls_now} requests");
    let state = oma::db::polling_state(lab.pool(), "job-c").await.unwrap().unwrap();
    assert!(!state.is_active);
    lab.teardown().await;
}

#[tokio::test]
async fn two_oma_processes_on_one_database_never_double_poll_or_double_finalize() {
    let mut lab = Lab::new("two-omas").await.unwrap();
    let mut running = Vec::new();
    let mut completed = Vec::new();
    for i in 0..8 {
        let id = format!("job-r{i}");
        let names = lab.seed_job(&SeedJob::replicating(&id, 20.0, 0.5)).await.unwrap();
        lab.vma_job(&id, &names, json!({"mode": "running", "start_percent": 20})).await.unwrap();
        running.push(id);
    }
    for i in 0..4 {
        let id = format!("job-c{i}");
        let names = lab.seed_job(&SeedJob::replicating(&id, 50.0, 0.5)).await.unwrap();
        lab.vma_job(&id, &names, json!({"mode": "completed"})).await.unwrap();
        completed.push(id);
    }
    // Start both at once.
    let a = oma_acceptance::OmaProcess::start("two-omas-a", lab.oma_config());
    let b = oma_acceptance::OmaProcess::start("two-omas-b", lab.oma_config());
    let (ra, rb) = tokio::join!(a, b);
    lab.omas.push(ra.unwrap());
    lab.omas.push(rb.unwrap());
    for id in &completed {
        lab.wait_for_status(id, "completed", Duration::from_secs(15)).await.unwrap();
    }
    // Every running job is polled, each by exactly one process.
    let start = Utc::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let interval = lab.oma().config.poll_interval;
    for id in &running {
        let stats = lab.control.stats(id).await.unwrap();
        assert_eq!(stats.max_in_flight, 1, "{id}: {stats:?}\n{}", lab.diagnostics(Some(id)).await);
        let polls = polls_after(&lab, id, start).await.len();
        let expected = (Duration::from_secs(2).as_secs_f64() / interval.as_secs_f64()) as usize;
        assert!(
            polls >= expected / 2 && polls <= expected * 3 / 2 + 2,
            "{id}: {polls} polls in 2 s, expected about {expected} (one poller)"
        );
        let owner = oma::db::polling_state(lab.pool(), id).await.unwrap().unwrap();
        assert!(owner.is_active);
    }
    let owners: std::collections::HashSet<String> = {
        let mut set = std::collections::HashSet::new();
        for id in &running {
            set.insert(oma::db::polling_state(lab.pool(), id).await.unwrap().unwrap().owner_instance);
        }
        set
    };
    assert!(!owners.is_empty() && owners.len() <= 2);
    for id in &completed {
        let finalized: usize = lab.omas.iter().map(|o| o.log.count(&format!("Job {id} marked as completed"))).sum();
        assert_eq!(finalized, 1, "{id} finalized {finalized} times");
    }
    lab.teardown().await;
}

#[tokio::test]
async fn oma_api_migrate_twice_and_config_errors_name_the_variable() {
    let lab = Lab::new("migrate-cli").await.unwrap();
    let bin = oma_acceptance::oma_process::oma_api_binary().await.unwrap();
    for _ in 0..2 {
        let out = tokio::process::Command::new(&bin)
            .arg("migrate")
            .env("OMA_DATABASE_URL", &lab.db().url)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = tokio::process::Command::new(&bin)
        .env("OMA_DATABASE_URL", &lab.db().url)
        .env("OMA_POLL_INTERVAL", "fast")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("OMA_POLL_INTERVAL") && err.contains("fast"), "{err}");
    let out = tokio::process::Command::new(&bin)
        .env("OMA_DATABASE_URL", "mysql://oma:s3cret-pw@127.0.0.1:1/none")
        .env("OMA_LISTEN", "127.0.0.1:0")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!all.contains("s3cret-pw"), "the password leaked: {all}");
    assert!(all.contains("cannot connect to the database"), "{all}");
    lab.teardown().await;
}

#[tokio::test]
async fn health_answers_while_recovery_is_running() {
    let mut lab = Lab::new("health-during-recovery").await.unwrap();
    let names = lab.seed_job(&SeedJob::replicating("job-slow", 30.0, 1.0)).await.unwrap();
    lab.vma_job("job-slow", &names, json!({"mode": "slow", "delay": "8s"})).await.unwrap();
    let mut config = lab.oma_config();
    config.vma_timeout = Duration::from_secs(10);
    oma_acceptance::oma_process::oma_api_binary().await.unwrap();
    let started = Instant::now();
    lab.start_oma_with(config).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(8), "ready before the 8 s VMA answer: {:?}", started.elapsed());
    let health: Value = reqwest::get(format!("{}/health", lab.oma().url())).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "OMA API");
    assert_eq!(health["database"], "connected");
    assert_eq!(health["recovery"]["state"], "running");
    lab.teardown().await;
}
