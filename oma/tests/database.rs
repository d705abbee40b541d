//! The OMA's statements against a real MariaDB: migrations twice, the testing guide's SQL
//! unchanged, every finalization path frees the VM, finalization exactly once and in parallel
//! chunks, recovery locks, poll statistics, and lock races run again.

mod common;

use std::time::Duration;

use common::Fixture;
use oma::config::Settings;
use oma::startup::Application;
use oma_test_support::SeedJob;
use serde_json::{json, Value};

#[tokio::test]
async fn migrations_run_twice_in_a_row() {
    let lab = Fixture::new().await;
    oma::db::migrate(lab.pool()).await.unwrap();
    oma::db::migrate(lab.pool()).await.unwrap();
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = 'replication_jobs'",
    )
    .fetch_all(lab.pool())
    .await
    .unwrap();
    for c in [
        "recovery_attempted",
        "recovery_attempted_at",
        "recovery_method",
        "vma_validated_at",
        "polling_restarted_at",
        "vma_last_poll_at",
        "vm_context_id",
    ] {
        assert!(columns.iter().any(|x| x == c), "missing column {c}: {columns:?}");
    }
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()")
            .fetch_all(lab.pool())
            .await
            .unwrap();
    for t in ["replication_jobs", "vm_replication_contexts", "vm_disks", "ossea_volumes", "vma_polling_state"] {
        assert!(tables.iter().any(|x| x == t), "missing table {t}");
    }
    lab.teardown().await;
}

/// Every query of the testing guide, verbatim.
const GUIDE_SQL: &[&str] = &[
    // Pre-deployment checklist: check running jobs
    "SELECT id, source_vm_name, status, progress_percent, updated_at 
     FROM replication_jobs 
     WHERE status IN ('replicating', 'initializing') 
     ORDER BY updated_at DESC LIMIT 10;",
    // Verify database connection
    "SELECT 1",
    // Scenario 1 step 2
    "SELECT COUNT(*) as active_jobs FROM replication_jobs WHERE status = 'replicating';",
    // Scenario 2 step 2 and step 8
    "SELECT id, progress_percent, status FROM replication_jobs ORDER BY created_at DESC LIMIT 1;",
    "SELECT id, progress_percent, vma_last_poll_at, updated_at FROM replication_jobs WHERE id='JOB_ID';",
    // Scenario 3 step 6
    "SELECT id, status, progress_percent, current_operation, completed_at 
      FROM replication_jobs WHERE id='{JOB_ID}';",
    // Database Verification Queries
    "SELECT 
    id, 
    source_vm_name, 
    status, 
    progress_percent,
    vma_last_poll_at,
    TIMESTAMPDIFF(SECOND, vma_last_poll_at, NOW()) as seconds_since_poll,
    updated_at
FROM replication_jobs 
WHERE status IN ('replicating', 'initializing')
ORDER BY updated_at DESC;",
    "SELECT 
    context_id,
    vm_name,
    current_status,
    successful_jobs,
    failed_jobs,
    last_replication_at
FROM vm_replication_contexts
WHERE current_status IN ('ready_for_failover', 'replicating')
ORDER BY updated_at DESC;",
    // Troubleshooting and performance baseline
    "SELECT id, status, progress_percent, vma_last_poll_at FROM replication_jobs WHERE status='replicating';",
    "SELECT COUNT(*) FROM replication_jobs WHERE status='replicating';",
];

#[tokio::test]
async fn the_testing_guides_sql_runs_unchanged() {
    let lab = Fixture::new().await;
    lab.seed_job(&SeedJob::replicating("job-guide-1", 42.0, 1.0)).await;
    for sql in GUIDE_SQL {
        let rows = sqlx::raw_sql(*sql).fetch_all(lab.pool()).await;
        assert!(rows.is_ok(), "guide query failed: {sql}\n{:?}", rows.err());
    }
    let seconds: Option<i64> = sqlx::query_scalar(
        "SELECT TIMESTAMPDIFF(SECOND, vma_last_poll_at, NOW()) as seconds_since_poll FROM replication_jobs WHERE id = 'job-guide-1'",
    )
    .fetch_one(lab.pool())
    .await
    .unwrap();
    assert!((55..=65).contains(&seconds.unwrap()), "a poll 1 minute ago is about 60 s old: {seconds:?}");
    lab.teardown().await;
}

async fn start_in_process(lab: &Fixture) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let mut settings = Settings::with_defaults(&lab.db.url, &lab.sim.vma_url()).unwrap();
    settings.listen = "127.0.0.1:0".parse().unwrap();
    settings.poll_interval = Duration::from_millis(100);
    settings.vma_timeout = Duration::from_millis(500);
    settings.health_interval = Duration::from_secs(60);
    let app = Application::build(settings).await.unwrap();
    let url = format!("http://{}", app.local_addr());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (url, tx, handle)
}

fn replication_request(vm: &str) -> Value {
    json!({"source_vm": {"id": format!("vmware-{vm}"), "name": vm, "path": format!("/DC1/vm/{vm}"),
           "disks": [{"id": "disk-2000", "size_gb": 10, "capacity_bytes": 10737418240u64}]},
           "ossea_config_id": 1, "vcenter_host": "vcenter.local", "start_replication": true})
}

#[tokio::test]
async fn every_finalization_path_frees_the_vm_for_a_new_replication() {
    let lab = Fixture::new().await;
    struct Case {
        id: &'static str,
        progress: f64,
        minutes_since_contact: f64,
        vma: Value,
        status: &'static str,
        class: Option<&'static str>,
        context_status: &'static str,
    }
    let case = |id, progress, minutes_since_contact, vma, status, class, context_status| Case {
        id,
        progress,
        minutes_since_contact,
        vma,
        status,
        class,
        context_status,
    };
    let stalled = json!({"mode": "running", "start_percent": 40, "transitions": [{"after_polls": 0, "mode": "stale"}]});
    let cases = vec![
        case("job-done", 60.0, 2.0, json!({"mode": "completed"}), "completed", None, "ready_for_failover"),
        case("job-assumed", 95.0, 2.0, json!({"mode": "not_found"}), "completed", None, "ready_for_failover"),
        case(
            "job-vma-failed",
            40.0,
            2.0,
            json!({"mode": "failed", "message": "NBD export went away"}),
            "failed",
            Some("vma_reported_failure"),
            "failed",
        ),
        case("job-lost", 40.0, 2.0, json!({"mode": "not_found"}), "failed", Some("job_lost"), "failed"),
        case("job-lost-200", 40.0, 2.0, json!({"mode": "http200_not_found"}), "failed", Some("job_lost"), "failed"),
        case(
            "job-unreachable",
            40.0,
            45.0,
            json!({"mode": "error", "status": 503}),
            "failed",
            Some("vma_unreachable_timeout"),
            "failed",
        ),
        case("job-stalled", 40.0, 45.0, stalled, "failed", Some("vma_stalled"), "failed"),
    ];
    for c in &cases {
        let mut seed = SeedJob::replicating(c.id, c.progress, c.minutes_since_contact);
        seed.bytes_transferred = 4_000_000_000;
        let names = lab.seed_job(&seed).await;
        lab.vma_job(c.id, &names, c.vma.clone()).await;
        if c.id == "job-stalled" {
            // Stale at exactly the row's numbers: the copy process died at 40 %.
            let job = lab.control.get_job(c.id).await.unwrap();
            assert_eq!(job["percentage"], 40.0);
            sqlx::query("UPDATE replication_jobs SET bytes_transferred = ? WHERE id = ?")
                .bind(job["bytes_transferred"].as_i64().unwrap())
                .bind(c.id)
                .execute(lab.pool())
                .await
                .unwrap();
        }
    }
    let (url, stop, handle) = start_in_process(&lab).await;
    let http = reqwest::Client::new();
    for Case { id, status, class, context_status: ctx_status, .. } in &cases {
        let row = lab.wait_for_status(id, status, Duration::from_secs(10)).await;
        assert_eq!(row.vma_error_classification.as_deref(), *class, "{id}");
        assert!(row.completed_at.is_some(), "{id}");
        assert!(row.recovery_attempted, "{id}");
        assert!(row.recovery_method.is_some(), "{id}");
        let ctx = lab.context_of(id).await;
        assert_eq!(ctx.current_job_id, None, "{id}: current_job_id must be cleared");
        assert_eq!(ctx.current_status, *ctx_status, "{id}");
        assert_eq!(ctx.total_jobs_run, 1, "{id}");
        if *status == "completed" {
            assert_eq!(ctx.successful_jobs, 1);
            assert_eq!(ctx.last_successful_job_id.as_deref(), Some(*id));
            assert!(ctx.last_replication_at.is_some());
        } else {
            assert_eq!(ctx.failed_jobs, 1);
        }
        let resp = http
            .post(format!("{url}/api/v1/replications"))
            .json(&replication_request(&format!("vm-{id}")))
            .send()
            .await
            .unwrap();
        let code = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code, 201, "{id}: a new replication of the VM must be accepted: {body}");
        // And while that one runs, a second is refused.
        let again = http
            .post(format!("{url}/api/v1/replications"))
            .json(&replication_request(&format!("vm-{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(again.status().as_u16(), 409, "{id}");
    }
    // A replication the VMA refuses is finalized as replication_failed and frees the VM too.
    lab.control.set_faults_json(&json!({"error_rate": {"status": 500, "probability": 1.0}})).await.unwrap();
    let resp =
        http.post(format!("{url}/api/v1/replications")).json(&replication_request("vm-refused")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 502);
    lab.control.clear_faults().await.unwrap();
    let ctx: Option<String> =
        sqlx::query_scalar("SELECT current_job_id FROM vm_replication_contexts WHERE vm_name = 'vm-refused'")
            .fetch_one(lab.pool())
            .await
            .unwrap();
    assert_eq!(ctx, None);
    let status: String = sqlx::query_scalar("SELECT status FROM replication_jobs WHERE source_vm_name = 'vm-refused'")
        .fetch_one(lab.pool())
        .await
        .unwrap();
    assert_eq!(status, "replication_failed");
    let resp =
        http.post(format!("{url}/api/v1/replications")).json(&replication_request("vm-refused")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let _ = stop.send(());
    handle.await.unwrap();
    lab.teardown().await;
}

#[tokio::test]
async fn a_job_is_finalized_exactly_once_with_two_writers() {
    let lab = Fixture::new().await;
    lab.seed_job(&SeedJob::replicating("job-race", 50.0, 1.0)).await;
    let fin = oma::db::Finalization::completed(None, None);
    let pool = lab.pool().clone();
    let attempts = (0..8).map(|_| {
        let pool = pool.clone();
        let fin = fin.clone();
        tokio::spawn(async move { oma::db::finalize_job(&pool, "job-race", &fin).await.unwrap() })
    });
    let results: Vec<_> = futures::future::join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    let done = results.iter().filter(|r| matches!(r, oma::db::Finalized::Done { .. })).count();
    assert_eq!(done, 1, "{results:?}");
    // Terminal is absorbing: a failure after completion changes nothing.
    let fail = oma::db::Finalization::failed(
        oma::domain::JobStatus::Failed,
        oma::domain::FailureClass::JobLost,
        "late".into(),
        None,
        None,
    );
    assert_eq!(oma::db::finalize_job(&pool, "job-race", &fail).await.unwrap(), oma::db::Finalized::AlreadyFinal);
    assert_eq!(lab.job("job-race").await.status, oma::domain::JobStatus::Completed);
    lab.teardown().await;
}

#[tokio::test]
async fn recovery_locks_of_different_databases_do_not_block_each_other() {
    let a = Fixture::new().await;
    let b = Fixture::new().await;
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let pool_a = a.pool().clone();
    let holder = tokio::spawn(async move {
        oma::recovery::with_recovery_lock(&pool_a, Duration::ZERO, async move {
            held_tx.send(()).unwrap();
            release_rx.await.unwrap();
        })
        .await
        .unwrap()
    });
    held_rx.await.unwrap();
    let other_db = oma::recovery::with_recovery_lock(b.pool(), Duration::ZERO, async {}).await.unwrap();
    assert!(other_db.is_some(), "database b waited for database a's recovery lock");
    let same_db = oma::recovery::with_recovery_lock(a.pool(), Duration::ZERO, async {}).await.unwrap();
    assert!(same_db.is_none(), "a second recovery of database a must wait for the first");
    release_tx.send(()).unwrap();
    assert!(holder.await.unwrap().is_some());
    a.teardown().await;
    b.teardown().await;
}

/// MariaDB's named locks belong to the session: a recovery dropped mid-way (its caller gave up)
/// must not put a connection that still holds the lock back in the pool, or every later
/// recovery of this database (other OMAs, `job-recovery recover`) waits for it in vain.
#[tokio::test]
async fn a_recovery_cut_short_does_not_leave_its_lock_held() {
    let lab = Fixture::new().await;
    let cut_short = tokio::time::timeout(
        Duration::from_millis(200),
        oma::recovery::with_recovery_lock(lab.pool(), Duration::ZERO, std::future::pending::<()>()),
    )
    .await;
    assert!(cut_short.is_err(), "the recovery was meant to be cut short");
    // The server frees the lock when the session ends, a moment after the drop.
    let freed = oma_test_support::wait_until("the recovery lock to be free", Duration::from_secs(5), || async {
        let free: Option<i64> = sqlx::query_scalar("SELECT IS_FREE_LOCK(CONCAT(?, ':', DATABASE()))")
            .bind(oma::recovery::RECOVERY_LOCK)
            .fetch_one(lab.pool())
            .await?;
        Ok(if free == Some(1) { Ok(()) } else { Err("still held".to_string()) })
    })
    .await;
    assert!(freed.is_ok(), "{freed:?}");
    let next = oma::recovery::with_recovery_lock(lab.pool(), Duration::ZERO, async {}).await.unwrap();
    assert!(next.is_some(), "the next recovery could not take the lock");
    lab.teardown().await;
}

#[tokio::test]
async fn many_finalizations_in_parallel_chunks_keep_shared_contexts_right() {
    // 900 jobs on three shared VM contexts: five chunks, finalized two at a time, each chunk
    // touching every context. Counters and current_job_id must come out as if done one by one.
    let lab = Fixture::new().await;
    let ids: Vec<String> = (0..900).map(|i| format!("job-fin-{i:05}")).collect();
    oma_test_support::seed_jobs_bulk(lab.pool(), &ids, 50.0, 1.0).await.unwrap();
    sqlx::query(
        "UPDATE replication_jobs SET vm_context_id = CONCAT('ctx-job-fin-0000', CAST(SUBSTRING_INDEX(id, '-', -1) AS UNSIGNED) % 3)",
    )
    .execute(lab.pool())
    .await
    .unwrap();
    let items: Vec<(String, oma::db::Finalization)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let fin = if i % 3 == 2 {
                oma::db::Finalization::failed(
                    oma::domain::JobStatus::Failed,
                    oma::domain::FailureClass::JobLost,
                    "lost".into(),
                    None,
                    None,
                )
            } else {
                oma::db::Finalization::completed(None, None)
            };
            (id.clone(), fin)
        })
        .collect();
    let results = oma::db::finalize_jobs(lab.pool(), &items).await;
    assert_eq!(results.len(), 900);
    assert!(results.iter().all(|r| matches!(r, Ok(oma::db::Finalized::Done { .. }))), "{results:?}");
    let contexts: Vec<(String, i32, i32, Option<String>)> = sqlx::query_as(
        "SELECT context_id, successful_jobs, failed_jobs, current_job_id FROM vm_replication_contexts \
         WHERE context_id IN ('ctx-job-fin-00000', 'ctx-job-fin-00001', 'ctx-job-fin-00002') ORDER BY context_id",
    )
    .fetch_all(lab.pool())
    .await
    .unwrap();
    // Job i is on context i % 3 and failed when i % 3 == 2.
    assert_eq!(
        contexts,
        vec![
            ("ctx-job-fin-00000".to_string(), 300, 0, None),
            ("ctx-job-fin-00001".to_string(), 300, 0, None),
            ("ctx-job-fin-00002".to_string(), 0, 300, None),
        ]
    );
    let unfinished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replication_jobs WHERE status = 'replicating'")
        .fetch_one(lab.pool())
        .await
        .unwrap();
    assert_eq!(unfinished, 0);
    lab.teardown().await;
}

/// Summed poll statistics (the poller's writer coalesces a job's polls while a write is in flight
/// or the database is away): every poll counted, the error streak carried across writes, the
/// newest error kept, and rows of another owner left alone.
#[tokio::test]
async fn summed_poll_statistics_count_every_poll() {
    use oma::db::{polling_state, write_poll_stats, PollStats};
    let lab = Fixture::new().await;
    lab.seed_job(&SeedJob::replicating("job-stats", 40.0, 1.0)).await;
    let pool = lab.pool();
    let ids = vec!["job-stats".to_string()];
    oma::db::claim_polling_many(pool, &ids, "oma-a", Duration::from_secs(60)).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let stats = |errors: &[Option<&str>]| {
        let mut s = PollStats::one("job-stats".into(), errors[0].map(str::to_string));
        for e in &errors[1..] {
            s.record(e.map(str::to_string));
        }
        s
    };
    // Three failures, then a success and two failures: 6 polls, 5 failed, 2 in a row now.
    write_poll_stats(&mut conn, "oma-a", &[stats(&[Some("a"), Some("b"), Some("c")])]).await.unwrap();
    write_poll_stats(&mut conn, "oma-a", &[stats(&[None, Some("d"), Some("e")])]).await.unwrap();
    let row = polling_state(pool, "job-stats").await.unwrap().unwrap();
    assert_eq!((row.polls_total, row.polls_failed, row.consecutive_errors), (6, 5, 2), "{row:?}");
    assert_eq!(row.last_error_message.as_deref(), Some("e"));
    assert!(row.last_success_at.is_some());
    // Failures only: the streak goes on from 2; a success afterwards keeps the last error text.
    write_poll_stats(&mut conn, "oma-a", &[stats(&[Some("f"), Some("g")])]).await.unwrap();
    write_poll_stats(&mut conn, "oma-a", &[stats(&[None])]).await.unwrap();
    let row = polling_state(pool, "job-stats").await.unwrap().unwrap();
    assert_eq!((row.polls_total, row.polls_failed, row.consecutive_errors), (9, 7, 0), "{row:?}");
    assert_eq!(row.last_error_message.as_deref(), Some("g"));
    // Another owner's write changes nothing.
    write_poll_stats(&mut conn, "oma-b", &[stats(&[Some("x")])]).await.unwrap();
    let after = polling_state(pool, "job-stats").await.unwrap().unwrap();
    assert_eq!((after.polls_total, after.last_error_message.as_deref()), (9, Some("g")));
    drop(conn);
    lab.teardown().await;
}

/// A lock wait timeout (1205, SQLSTATE HY000) counts as a lost lock race, worth running again;
/// a statement the database refuses for its content does not.
#[tokio::test]
async fn a_lock_wait_timeout_is_a_lost_lock_race() {
    let lab = Fixture::new().await;
    lab.seed_job(&SeedJob::replicating("job-locked", 40.0, 1.0)).await;
    let pool = lab.pool();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM replication_jobs WHERE id = 'job-locked' FOR UPDATE")
        .fetch_one(&mut *holder)
        .await
        .unwrap();
    let mut waiter = pool.acquire().await.unwrap();
    sqlx::query("SET SESSION innodb_lock_wait_timeout = 1").execute(&mut *waiter).await.unwrap();
    let timed_out = sqlx::query("UPDATE replication_jobs SET progress_percent = 41 WHERE id = 'job-locked'")
        .execute(&mut *waiter)
        .await
        .expect_err("the row is locked");
    assert!(oma::db::lost_a_lock_race(&timed_out), "{timed_out:?}");
    let refused =
        sqlx::query("UPDATE replication_jobs SET no_such_column = 1").execute(&mut *waiter).await.unwrap_err();
    assert!(!oma::db::lost_a_lock_race(&refused), "{refused:?}");
    holder.rollback().await.unwrap();
    drop(waiter);
    lab.teardown().await;
}

/// Recovery's lease claim runs beside finalizations and can lose a lock race to one; it is run
/// again rather than failing every job of the round (the suite once saw a health-monitor round
/// re-attach none of its orphans). Here the race is a lock wait timeout against a session that
/// holds the job's lease row for longer than one wait.
#[tokio::test]
async fn a_lease_claim_that_loses_a_lock_race_is_run_again() {
    let lab = Fixture::new().await;
    lab.seed_job(&SeedJob::replicating("job-claimed", 40.0, 1.0)).await;
    let url = lab.db.url.clone();
    let impatient = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(
                async move { sqlx::query("SET SESSION innodb_lock_wait_timeout = 1").execute(conn).await.map(|_| ()) },
            )
        })
        .connect(&url)
        .await
        .unwrap();
    let mut holder = lab.pool().begin().await.unwrap();
    sqlx::query("SELECT job_id FROM vma_polling_state WHERE job_id = 'job-claimed' FOR UPDATE")
        .fetch_one(&mut *holder)
        .await
        .expect("the seeded job has a lease row");
    let claim = tokio::spawn(async move {
        oma::db::claim_polling_many(&impatient, &["job-claimed".to_string()], "oma-a", Duration::from_secs(30)).await
    });
    // The premise, not a wait for a state: the row stays locked past the first 1 s lock wait.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    holder.rollback().await.unwrap();
    let claimed = claim.await.unwrap().expect("the claim is run again after losing the race");
    assert!(claimed.contains("job-claimed"), "{claimed:?}");
    lab.teardown().await;
}
