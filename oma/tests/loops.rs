//! The background loops driven one step at a time, as `run` drives them: `Poller::tick` dispatches
//! what is due and nothing else; `HealthMonitor::tick` re-attaches an orphan and finalizes one the
//! VMA finished. Real MariaDB and an in-process sim-vma; nothing waits for time to pass.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Fixture;
use oma::config::Settings;
use oma::health_monitor::HealthMonitor;
use oma::poller::{Poller, TickOutcome};
use oma::services::Services;
use oma_test_support::SeedJob;
use serde_json::json;

async fn services(fx: &Fixture, poll_interval: Duration) -> Arc<Services> {
    let mut settings = Settings::with_defaults(&fx.db.url, &fx.sim.vma_url()).unwrap();
    settings.poll_interval = poll_interval;
    settings.vma_timeout = Duration::from_secs(2);
    let services = Services::new(settings, fx.db.pool.clone(), "oma-under-test".into());
    services.clock.sync_with_database(&services.pool).await.unwrap();
    Arc::new(services)
}

#[tokio::test]
async fn a_poller_tick_dispatches_due_jobs_once_and_then_is_idle() {
    let fx = Fixture::new().await;
    let names = fx.seed_job(&SeedJob::replicating("job-tick", 30.0, 0.1)).await;
    fx.vma_job("job-tick", &names, json!({"mode": "running", "start_percent": 30})).await;
    // An hour between polls: after the first dispatch nothing is due again in this test.
    let services = services(&fx, Duration::from_secs(3600)).await;
    let poller = Poller::new(services.clone());
    assert_eq!(poller.tick(), TickOutcome::Idle, "nothing tracked yet");
    let ids = vec!["job-tick".to_string()];
    let claimed_at = tokio::time::Instant::now();
    oma::db::claim_polling_many(&fx.db.pool, &ids, &services.instance_id, services.settings.lease_ttl()).await.unwrap();
    let job = oma::db::load_unfinished(&fx.db.pool, Some("job-tick")).await.unwrap().remove(0);
    poller.track(&job, None, false, claimed_at);
    assert_eq!(poller.tick(), TickOutcome::Polled(1), "a job tracked without a recent answer is due at once");
    assert_eq!(poller.tick(), TickOutcome::Idle, "in flight or polled: not dispatched twice");
    let polled = oma_test_support::wait_until("the poll to finish", Duration::from_secs(5), || async {
        Ok(match poller.job_status("job-tick") {
            Some(s) if s.polls_total == 1 && !s.in_flight => Ok(s),
            other => Err(format!("{other:?}")),
        })
    })
    .await
    .unwrap();
    assert_eq!(polled.last_result, "running");
    assert_eq!(poller.tick(), TickOutcome::Idle, "the next poll is an interval away");
    assert_eq!(fx.control.stats("job-tick").await.unwrap().polls, 1);
    fx.teardown().await;
}

#[tokio::test]
async fn a_health_monitor_tick_reattaches_an_orphan_and_finalizes_a_finished_one() {
    let fx = Fixture::new().await;
    let mut running = SeedJob::replicating("job-orphan-running", 40.0, 5.0);
    running.last_poll_minutes_ago = None;
    running.polling_started_minutes_ago = None;
    let names = fx.seed_job(&running).await;
    fx.vma_job("job-orphan-running", &names, json!({"mode": "running", "start_percent": 40})).await;
    let names = fx.seed_job(&SeedJob::replicating("job-orphan-done", 70.0, 5.0)).await;
    fx.vma_job("job-orphan-done", &names, json!({"mode": "completed"})).await;
    let services = services(&fx, Duration::from_secs(3600)).await;
    let poller = Poller::new(services.clone());
    let monitor = HealthMonitor::new(services, poller.clone());

    let tick = monitor.tick().await.unwrap();
    assert_eq!(
        (tick.checked, tick.orphaned, tick.reattached, tick.finalized, tick.slow_but_polled),
        (2, 2, 1, 1, 0),
        "{tick:?}"
    );
    assert!(poller.is_polling("job-orphan-running"));
    assert!(!poller.is_polling("job-orphan-done"));
    assert_eq!(fx.job("job-orphan-done").await.status, oma::domain::JobStatus::Completed);
    assert_eq!(monitor.last.read().await.reattached, 1, "the round is what /api/v1/job-recovery/status shows");

    // The next round finds the running job polled here, and nothing orphaned.
    let tick = monitor.tick().await.unwrap();
    assert_eq!((tick.checked, tick.orphaned, tick.reattached, tick.finalized), (1, 0, 0, 0), "{tick:?}");
    fx.teardown().await;
}

#[test]
fn the_harness_seeds_export_names_as_the_oma_names_them() {
    assert_eq!(oma_test_support::seed::export_name("v-1"), oma::domain::nbd_export_name("v-1"));
}
