//! Scale benchmarks (issue 5), on the real parts: MariaDB, sim-vma and the `oma-api` process.
//! Each returns figures; `oma-bench` prints them as a Markdown table. Not timed tests.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use crate::lab::{seed_jobs_bulk, Lab};
use crate::oma_process::OmaConfig;

fn job_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("job-bench-{i:06}")).collect()
}

/// CPU seconds (user + system) and peak RSS (KiB) of a process, from /proc.
pub fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields after the command: state(0) … utime(11) stime(12), in clock ticks (100 Hz on Linux).
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks / 100.0, hwm))
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
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

/// N running jobs, OMA restarted: time from ready until every job has a fresh `vma_last_poll_at`.
pub async fn resume(n: usize) -> anyhow::Result<ResumeFigures> {
    let (mut lab, _) = lab_with_jobs(&format!("bench-resume-{n}"), n, 30.0, 0.5, |_| {
        Some(json!({"mode": "running", "start_percent": 30}))
    })
    .await?;
    lab.start_oma_with(bench_config(&lab, Duration::from_secs(5))).await?;
    wait_all_polled_since(&lab, n, chrono::Utc::now() - chrono::Duration::seconds(20), Duration::from_secs(120))
        .await?;
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
    let (mut lab, _) = lab_with_jobs(&format!("bench-steady-{n}"), n, 30.0, 0.5, |_| {
        Some(json!({"mode": "running", "start_percent": 30, "rate_per_second": 0.001}))
    })
    .await?;
    lab.start_oma_with(bench_config(&lab, interval)).await?;
    wait_all_polled_since(&lab, n, chrono::Utc::now() - chrono::Duration::seconds(30), Duration::from_secs(120))
        .await?;
    // Let the first full round settle, then measure.
    tokio::time::sleep(interval).await;
    let pid = lab.oma().pid().context("oma pid")?;
    let (cpu0, _) = proc_usage(pid).context("/proc")?;
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
    let (cpu1, hwm) = proc_usage(pid).context("/proc")?;
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

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadFigures {
    pub server: String,
    pub requests: u64,
    pub requests_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub rss_growth_mib: f64,
    /// CPU seconds the server's process spent per 1,000 requests (separate-process client only).
    pub server_cpu_ms_per_1k: Option<f64>,
}

/// Latency histogram: 10 µs buckets up to 200 ms (fixed size, so measuring costs no memory).
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 20_000;

/// `connections` clients each with one keep-alive connection, GETting `url` for `duration` after
/// a one-second warm-up (RSS is read after the warm-up and at the end).
pub async fn load(server: &str, url: String, connections: usize, duration: Duration) -> anyhow::Result<LoadFigures> {
    let warmup = Duration::from_secs(1).min(duration);
    let start = Instant::now();
    let measure_from = start + warmup;
    let deadline = measure_from + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().expect("client");
                let mut histogram = vec![0u32; BUCKETS];
                loop {
                    let t = Instant::now();
                    if t >= deadline {
                        break;
                    }
                    let ok = match client.get(&url).send().await {
                        Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                        Err(_) => false,
                    };
                    if ok && t >= measure_from {
                        let us = t.elapsed().as_micros() as u64;
                        histogram[((us / BUCKET_US) as usize).min(BUCKETS - 1)] += 1;
                    }
                }
                histogram
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let rss0 = rss_kib();
    let mut histogram = vec![0u64; BUCKETS];
    for t in tasks {
        for (total, n) in histogram.iter_mut().zip(t.await?) {
            *total += n as u64;
        }
    }
    let rss_growth_mib = (rss_kib() as f64 - rss0 as f64) / 1024.0;
    let n: u64 = histogram.iter().sum();
    if n == 0 {
        bail!("{server}: no successful request");
    }
    let pick = |q: f64| {
        let target = (n as f64 * q) as u64;
        let mut seen = 0;
        for (i, count) in histogram.iter().enumerate() {
            seen += count;
            if seen > target {
                return Duration::from_micros(i as u64 * BUCKET_US + BUCKET_US / 2);
            }
        }
        Duration::from_micros(BUCKETS as u64 * BUCKET_US)
    };
    Ok(LoadFigures {
        server: server.to_string(),
        server_cpu_ms_per_1k: None,
        requests: n,
        requests_per_second: n as f64 / duration.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        rss_growth_mib,
    })
}

/// The same progress-poll load on sim-vma and on a wiremock `MockServer` answering the same JSON.
/// With `separate_client`, the load comes from another process (`oma-bench --load-client`), so
/// this process is only the server and its CPU per request is measured too.
pub async fn sim_vs_wiremock(
    connections: usize,
    duration: Duration,
    separate_client: bool,
) -> anyhow::Result<Vec<LoadFigures>> {
    let sim = sim_vma::SimVma::start(sim_vma::SimConfig::default()).await?;
    let spec: sim_vma::spec::JobSpec = serde_json::from_value(json!({"mode": "running", "start_percent": 42}))?;
    sim.state.put_job("job-load", &spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    let body = reqwest::get(format!("{}/api/v1/progress/job-load", sim.vma_url())).await?.text().await?;
    let run = |server: &'static str, url: String| async move {
        if separate_client {
            load_from_child(server, url, connections, duration).await
        } else {
            load(server, url, connections, duration).await
        }
    };
    let sim_figures = run("sim-vma", format!("{}/api/v1/progress/job-load", sim.vma_url())).await?;
    sim.shutdown().await;
    let mock = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/api/v1/progress/job-load"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&mock)
        .await;
    let mock_figures = run("wiremock", format!("{}/api/v1/progress/job-load", mock.uri())).await?;
    Ok(vec![sim_figures, mock_figures])
}

/// Run the load generator as a child process (`<this exe> --load-client URL`), measuring this
/// process's CPU and RSS while it serves.
async fn load_from_child(
    server: &str,
    url: String,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<LoadFigures> {
    let exe = std::env::current_exe()?;
    let child = tokio::process::Command::new(exe)
        .args([
            "--load-client",
            &url,
            "--connections",
            &connections.to_string(),
            "--load-duration",
            &format!("{}ms", duration.as_millis()),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let me = std::process::id();
    let (cpu0, _) = proc_usage(me).context("/proc")?;
    let rss0 = rss_kib();
    let out = child.wait_with_output().await?;
    let (cpu1, _) = proc_usage(me).context("/proc")?;
    let mut figures: LoadFigures = serde_json::from_slice(&out.stdout).context("load client output")?;
    figures.server = server.to_string();
    figures.rss_growth_mib = (rss_kib() as f64 - rss0 as f64) / 1024.0;
    figures.server_cpu_ms_per_1k = Some((cpu1 - cpu0) * 1000.0 / (figures.requests as f64 / 1000.0));
    Ok(figures)
}
