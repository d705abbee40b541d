//! Soak mode (`oma-lab chaos --soak`): one long run at a low event rate, for the testing guide's
//! "service stable for 1+ hours" sign-off item. Besides the usual invariants it samples each OMA's
//! resident set, CPU and open descriptors, and the age of the last poll of every active job, over
//! time; the report says whether memory and descriptors stayed flat and polls stayed fresh.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::MySqlPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::world::OmaSlot;
use crate::procfs::{rss_kib_of, ProcUsage};

#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    pub at: DateTime<Utc>,
    pub seconds: f64,
    /// Per running OMA: resident set (MiB), CPU over the last interval (cores), open descriptors.
    pub omas: Vec<OmaSample>,
    pub active_jobs: usize,
    /// Seconds since the last poll of each active job: 50th, 99th percentile and the worst.
    pub poll_age_p50: f64,
    pub poll_age_p99: f64,
    pub poll_age_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OmaSample {
    pub oma: usize,
    pub pid: u32,
    pub rss_mib: f64,
    pub cpu_cores: f64,
    pub fds: usize,
}

/// Sample every `every` until `stop`.
pub async fn sample(
    pool: MySqlPool,
    omas: Arc<Mutex<Vec<OmaSlot>>>,
    every: Duration,
    into: Arc<std::sync::Mutex<Vec<SoakSample>>>,
    stop: CancellationToken,
) {
    let began = Instant::now();
    let mut last_cpu: std::collections::HashMap<u32, (f64, Instant)> = Default::default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let pids: Vec<(usize, u32)> = {
            let mut omas = omas.lock().await;
            let mut out = Vec::new();
            for (i, slot) in omas.iter_mut().enumerate() {
                if let (true, Some(pid)) = (slot.process.is_running(), slot.process.pid()) {
                    out.push((i, pid));
                }
            }
            out
        };
        let mut oma_samples = Vec::new();
        for (oma, pid) in pids {
            let cpu_s = ProcUsage::of(pid).map(|u| u.cpu_s()).unwrap_or(0.0);
            let now = Instant::now();
            let cores = match last_cpu.insert(pid, (cpu_s, now)) {
                Some((before, then)) => (cpu_s - before) / now.duration_since(then).as_secs_f64().max(1e-3),
                None => 0.0,
            };
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
            oma_samples.push(OmaSample { oma, pid, rss_mib: rss_kib_of(pid) as f64 / 1024.0, cpu_cores: cores, fds });
        }
        let sql = format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, vma_last_poll_at, NOW(3)) / 1e6 FROM replication_jobs \
             WHERE status IN ({}) AND vma_last_poll_at IS NOT NULL",
            oma::domain::active_status_sql_list()
        );
        let mut ages: Vec<f64> = sqlx::query_scalar::<_, Option<f64>>(sqlx::AssertSqlSafe(sql))
            .fetch_all(&pool)
            .await
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        ages.sort_by(f64::total_cmp);
        let pct = |p: f64| if ages.is_empty() { 0.0 } else { ages[((ages.len() - 1) as f64 * p).round() as usize] };
        into.lock().unwrap_or_else(|p| p.into_inner()).push(SoakSample {
            at: Utc::now(),
            seconds: began.elapsed().as_secs_f64(),
            omas: oma_samples,
            active_jobs: ages.len(),
            poll_age_p50: pct(0.5),
            poll_age_p99: pct(0.99),
            poll_age_max: ages.last().copied().unwrap_or(0.0),
        });
    }
}

/// The oldest last poll of an active job while an OMA ran: no job is polled while every OMA is
/// stopped or killed (the soak's own events), so a sample counts only when an OMA ran at it and at
/// the sample before.
fn worst_poll_age(samples: &[SoakSample]) -> f64 {
    let first = samples.first().filter(|s| !s.omas.is_empty()).map(|s| s.poll_age_max).unwrap_or(0.0);
    samples
        .windows(2)
        .filter(|w| !w[0].omas.is_empty() && !w[1].omas.is_empty())
        .map(|w| w[1].poll_age_max)
        .fold(first, f64::max)
}

/// What the samples say about stability.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub duration_s: f64,
    pub samples: usize,
    /// Mean resident set of OMA 0 over the first and the last quarter of the run.
    pub rss_first_quarter_mib: f64,
    pub rss_last_quarter_mib: f64,
    pub fds_first_quarter: f64,
    pub fds_last_quarter: f64,
    pub worst_poll_age_s: f64,
    pub mean_cpu_cores: f64,
    pub stable: bool,
    pub why: Vec<String>,
}

pub fn verdict(samples: &[SoakSample], poll_interval: Duration) -> Verdict {
    let of_oma0 = |s: &SoakSample| s.omas.iter().find(|o| o.oma == 0).cloned();
    let series: Vec<OmaSample> = samples.iter().filter_map(of_oma0).collect();
    let quarter = (series.len() / 4).max(1);
    let mean = |xs: &[OmaSample], f: fn(&OmaSample) -> f64| xs.iter().map(f).sum::<f64>() / xs.len().max(1) as f64;
    let first = &series[..quarter.min(series.len())];
    let last = &series[series.len().saturating_sub(quarter)..];
    let rss = (mean(first, |o| o.rss_mib), mean(last, |o| o.rss_mib));
    let fds = (mean(first, |o| o.fds as f64), mean(last, |o| o.fds as f64));
    let worst = worst_poll_age(samples);
    let mut why = Vec::new();
    if rss.1 > rss.0 * 1.5 + 10.0 {
        why.push(format!("resident set grew from {:.1} to {:.1} MiB", rss.0, rss.1));
    }
    if fds.1 > fds.0 + 20.0 {
        why.push(format!("open descriptors grew from {:.0} to {:.0}", fds.0, fds.1));
    }
    // Outages and takeovers make polls late for a while; a poll older than a minute is not late.
    if worst > (poll_interval.as_secs_f64() * 600.0).max(60.0) {
        why.push(format!("a job went {worst:.0} s without a poll"));
    }
    if series.len() < 4 {
        why.push(format!("only {} samples of oma0", series.len()));
    }
    Verdict {
        duration_s: samples.last().map(|s| s.seconds).unwrap_or(0.0),
        samples: samples.len(),
        rss_first_quarter_mib: rss.0,
        rss_last_quarter_mib: rss.1,
        fds_first_quarter: fds.0,
        fds_last_quarter: fds.1,
        worst_poll_age_s: worst,
        mean_cpu_cores: mean(&series, |o| o.cpu_cores),
        stable: why.is_empty(),
        why,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seconds: f64, oma_up: bool, poll_age_max: f64) -> SoakSample {
        let omas =
            if oma_up { vec![OmaSample { oma: 0, pid: 1, rss_mib: 16.0, cpu_cores: 0.0, fds: 18 }] } else { vec![] };
        SoakSample {
            at: Utc::now(),
            seconds,
            omas,
            active_jobs: 15,
            poll_age_p50: poll_age_max,
            poll_age_p99: poll_age_max,
            poll_age_max,
        }
    }

    /// Seed 7's soak: both OMAs stopped by its events for two minutes, the jobs' last polls ageing
    /// meanwhile; that is not an OMA that stopped polling. One that runs and does not poll is.
    #[test]
    fn polls_are_late_only_while_an_oma_runs() {
        let outage = [sample(45.0, true, 0.1), sample(90.0, false, 44.0), sample(135.0, false, 89.0)];
        let back = [sample(180.0, true, 0.1), sample(225.0, true, 0.1), sample(270.0, true, 0.1)];
        let samples: Vec<SoakSample> = outage.into_iter().chain(back).collect();
        assert!(
            verdict(&samples, Duration::from_millis(100)).stable,
            "{:?}",
            verdict(&samples, Duration::from_millis(100))
        );
        let mut stuck = samples.clone();
        stuck.push(sample(315.0, true, 90.0));
        let v = verdict(&stuck, Duration::from_millis(100));
        assert!(!v.stable && v.why.iter().any(|w| w.contains("90 s without a poll")), "{v:?}");
    }
}
