//! Scale benchmarks (issue 5), on the real parts: MariaDB, sim-vma and the `oma-api` process.
//! Each returns figures; `oma-bench` prints them as a Markdown table. Not timed tests.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use oma_acceptance::procfs::{rss_kib_of, ProcUsage};
use oma_acceptance::{Lab, OmaConfig};
use oma_test_support::seed_jobs_bulk;

fn job_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("job-bench-{i:06}")).collect()
}

fn bench_config(lab: &Lab, interval: Duration) -> OmaConfig {
    let mut c = lab.oma_config();
    c.poll_interval = interval;
    c.vma_timeout = Duration::from_secs(10);
    c.health_interval = Duration::from_secs(120);
    c.health_stale_after = Duration::from_secs(30);
    c.extra_env = vec![("OMA_DB_MAX_CONNECTIONS".into(), "16".into()), ("RUST_LOG".into(), "warn".into())];
    c
}

/// A lab with `n` replicating jobs in the database, and in sim-vma whatever `vma_spec(i)` says
/// (None: the VMA does not know job i).
async fn lab_with_jobs(
    name: &str,
    n: usize,
    progress: f64,
    updated_minutes_ago: f64,
    vma_spec: impl Fn(usize) -> Option<serde_json::Value>,
) -> anyhow::Result<(Lab, Vec<String>)> {
    let lab = Lab::new(name).await?;
    let ids = job_ids(n);
    let names = seed_jobs_bulk(lab.pool(), &ids, progress, updated_minutes_ago).await?;
    for (i, (id, export_name)) in ids.iter().zip(&names).enumerate() {
        let Some(mut spec) = vma_spec(i) else { continue };
        spec["export_names"] = json!([export_name]);
        let spec: sim_vma::spec::JobSpec = serde_json::from_value(spec)?;
        lab.sim().state.put_job(id, &spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok((lab, ids))
}

#[derive(Debug, Clone)]
pub struct RecoveryFigures {
    pub n: usize,
    pub start_to_summary: Duration,
    pub scan: Duration,
    pub jobs_per_second: f64,
}

/// N unfinished jobs, a mix of running, completed, failed, not found and HTTP-200 not found:
/// time from process start to the recovery summary.
pub async fn recovery(n: usize) -> anyhow::Result<RecoveryFigures> {
    let (mut lab, ids) = lab_with_jobs(&format!("bench-recovery-{n}"), n, 50.0, 2.0, |i| match i % 10 {
        0..=3 => Some(json!({"mode": "running", "start_percent": 50})),
        4 | 5 => Some(json!({"mode": "completed"})),
        6 => Some(json!({"mode": "failed", "message": "disk read error"})),
        7 | 8 => None,
        _ => Some(json!({"mode": "http200_not_found"})),
    })
    .await?;
    let mut config = bench_config(&lab, Duration::from_secs(5));
    // The summary line this measures up to is logged at info.
    config.extra_env.retain(|(k, _)| k != "RUST_LOG");
    let started = Instant::now();
    lab.start_oma_with(config).await?;
    lab.oma().wait_for_log("Job recovery completed successfully", Duration::from_secs(120)).await?;
    let start_to_summary = started.elapsed();
    if let (Some(phases), _) = lab.oma().log.find_from(0, "⏱️ Reconciled") {
        eprintln!("[bench] {n} jobs: {}", phases.trim());
    }
    let health: serde_json::Value = lab.http.get(format!("{}/health", lab.oma().url())).send().await?.json().await?;
    let scan = Duration::from_millis(health["recovery"]["last_run"]["duration_ms"].as_u64().unwrap_or(0));
    let unfinished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replication_jobs WHERE status = 'replicating'")
        .fetch_one(lab.pool())
        .await?;
    let expected = ids.iter().enumerate().filter(|(i, _)| i % 10 <= 3).count() as i64;
    lab.teardown().await;
    if unfinished != expected {
        bail!("after recovery {unfinished} jobs are replicating, expected {expected} (the running ones)");
    }
    Ok(RecoveryFigures { n, start_to_summary, scan, jobs_per_second: n as f64 / start_to_summary.as_secs_f64() })
}

#[derive(Debug, Clone)]
pub struct ResumeFigures {
    pub n: usize,
    pub ready_after_spawn: Duration,
    pub all_polled_after_ready: Duration,
}

/// N jobs running slowly on the VMA, seeded as last polled 30 s ago.
async fn lab_with_running_jobs(name: &str, n: usize) -> anyhow::Result<Lab> {
    let (lab, _) = lab_with_jobs(name, n, 30.0, 0.5, |_| {
        Some(json!({"mode": "running", "start_percent": 30, "rate_per_second": 0.001}))
    })
    .await?;
    Ok(lab)
}

/// Start the lab's OMA and wait until it has polled all `n` jobs.
async fn start_polling(lab: &mut Lab, n: usize, config: OmaConfig) -> anyhow::Result<()> {
    lab.start_oma_with(config).await?;
    wait_all_polled_since(lab, n, chrono::Utc::now() - chrono::Duration::seconds(20), Duration::from_secs(120)).await
}

/// N running jobs, OMA restarted: time from ready until every job has a fresh `vma_last_poll_at`.
pub async fn resume(n: usize) -> anyhow::Result<ResumeFigures> {
    let mut lab = lab_with_running_jobs(&format!("bench-resume-{n}"), n).await?;
    let config = bench_config(&lab, Duration::from_secs(5));
    start_polling(&mut lab, n, config).await?;
    lab.oma_mut().stop().await?;
    let restart_at: chrono::DateTime<chrono::Utc> = oma::db::db_now(lab.pool()).await?;
    let spawned = Instant::now();
    lab.oma_mut().start_again().await?;
    let ready = spawned.elapsed();
    let t_ready = Instant::now();
    wait_all_polled_since(&lab, n, restart_at, Duration::from_secs(120)).await?;
    let all = t_ready.elapsed();
    lab.teardown().await;
    Ok(ResumeFigures { n, ready_after_spawn: ready, all_polled_after_ready: all })
}

async fn wait_all_polled_since(
    lab: &Lab,
    n: usize,
    since: chrono::DateTime<chrono::Utc>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let polled: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM replication_jobs WHERE vma_last_poll_at > ?")
            .bind(since)
            .fetch_one(lab.pool())
            .await?;
        if polled as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {polled} of {n} jobs polled since {since} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug, Clone)]
pub struct SteadyFigures {
    pub n: usize,
    pub interval: Duration,
    pub duration: Duration,
    pub worst_poll_age: Duration,
    pub cpu_cores: f64,
    pub peak_rss_mib: f64,
    pub polls_per_second: f64,
}

/// N running jobs polled every `interval` for `duration`: worst `vma_last_poll_at` age, OMA CPU
/// (fraction of one core) and peak RSS.
pub async fn steady(n: usize, interval: Duration, duration: Duration) -> anyhow::Result<SteadyFigures> {
    let mut lab = lab_with_running_jobs(&format!("bench-steady-{n}"), n).await?;
    let config = bench_config(&lab, interval);
    start_polling(&mut lab, n, config).await?;
    // Measure from the second full round on: the first follows the start-up burst.
    let round = oma::db::db_now(lab.pool()).await?;
    wait_all_polled_since(&lab, n, round, Duration::from_secs(120)).await?;
    let pid = lab.oma().pid().context("oma pid")?;
    let cpu0 = ProcUsage::of(pid)?.cpu_s();
    let polls0 = lab.sim().state.list_jobs().iter().map(|j| j.polls).sum::<u64>();
    let t0 = Instant::now();
    let mut worst = Duration::ZERO;
    while t0.elapsed() < duration {
        let age_us: Option<i64> =
            sqlx::query_scalar("SELECT TIMESTAMPDIFF(MICROSECOND, MIN(vma_last_poll_at), NOW(3)) FROM replication_jobs WHERE status = 'replicating'")
                .fetch_one(lab.pool())
                .await?;
        worst = worst.max(Duration::from_micros(age_us.unwrap_or(0).max(0) as u64));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wall = t0.elapsed();
    let end = ProcUsage::of(pid)?;
    let (cpu1, hwm) = (end.cpu_s(), end.peak_rss_kib);
    let polls1 = lab.sim().state.list_jobs().iter().map(|j| j.polls).sum::<u64>();
    lab.teardown().await;
    Ok(SteadyFigures {
        n,
        interval,
        duration: wall,
        worst_poll_age: worst,
        cpu_cores: (cpu1 - cpu0) / wall.as_secs_f64(),
        peak_rss_mib: hwm as f64 / 1024.0,
        polls_per_second: (polls1 - polls0) as f64 / wall.as_secs_f64(),
    })
}

#[derive(Debug, Clone)]
pub struct OutageFigures {
    pub n: usize,
    pub outage: Duration,
    pub rss_before_mib: f64,
    pub rss_peak_during_mib: f64,
    pub all_fresh_after_return: Duration,
}

/// N running jobs polled every `interval`; the database goes away for `outage` (a gate in front
/// of it cuts every connection and refuses new ones) while the VMA keeps answering. The OMA's
/// memory meanwhile, and the time from the database's return until every job has a
/// `vma_last_poll_at` written after it.
pub async fn outage(n: usize, interval: Duration, outage: Duration) -> anyhow::Result<OutageFigures> {
    let mut lab = lab_with_running_jobs(&format!("bench-outage-{n}"), n).await?;
    let (mut gate, url) = oma_acceptance::gate::Gate::in_front_of(&lab.db().url)?;
    gate.open().await?;
    let mut config = bench_config(&lab, interval);
    config.database_url = url;
    start_polling(&mut lab, n, config).await?;
    let pid = lab.oma().pid().context("oma pid")?;
    let rss_before = rss_kib_of(pid);
    gate.close().await;
    let t0 = Instant::now();
    let mut peak = rss_before;
    while t0.elapsed() < outage {
        peak = peak.max(rss_kib_of(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let back_at = oma::db::db_now(lab.pool()).await?;
    gate.open().await?;
    let t_back = Instant::now();
    wait_all_polled_since(&lab, n, back_at, Duration::from_secs(600)).await?;
    let all_fresh = t_back.elapsed();
    lab.teardown().await;
    Ok(OutageFigures {
        n,
        outage,
        rss_before_mib: rss_before as f64 / 1024.0,
        rss_peak_during_mib: peak as f64 / 1024.0,
        all_fresh_after_return: all_fresh,
    })
}
