//! Watching a chaos run while it goes: every 200 ms the job rows (a terminal job must never
//! change, progress never go back), the OMAs' API (a well-formed request must never get a 5xx
//! other than the designed 503) and whether each OMA that should run still does; every second
//! each OMA's resident set. What it sees goes to the oracle.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, Row};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::world::OmaSlot;
use crate::procfs::rss_kib_of;

/// A job row as the observer read it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub status: String,
    pub progress: f64,
}

/// Something the observer saw that breaks an invariant while the run goes on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Seen {
    pub at: DateTime<Utc>,
    pub invariant: &'static str,
    pub job: Option<String>,
    pub detail: String,
}

#[derive(Debug, Default)]
pub struct Observations {
    /// Job id → its rows as read, oldest first (a row is kept only when it differs).
    pub samples: HashMap<String, Vec<Sample>>,
    pub seen: Vec<Seen>,
    /// Requests the probes made, and row reads.
    pub probes: usize,
    pub row_reads: usize,
    /// OMA index → highest resident set seen, KiB.
    pub peak_rss_kib: HashMap<usize, u64>,
}

/// Run the observer until `stop` is cancelled.
pub async fn observe(
    pool: MySqlPool,
    omas: Arc<Mutex<Vec<OmaSlot>>>,
    into: Arc<std::sync::Mutex<Observations>>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().expect("an HTTP client");
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                // The rows as the run ends: a job that ended after the last tick is not judged
                // on a stale "active" row.
                read_rows(&pool, &into).await;
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        tick += 1;
        read_rows(&pool, &into).await;
        let targets: Vec<(usize, String, Option<u32>, bool, bool)> = {
            let mut omas = omas.lock().await;
            omas.iter_mut()
                .enumerate()
                .map(|(i, s)| (i, s.process.url(), s.process.pid(), s.expected_up, s.process.is_running()))
                .collect()
        };
        for (i, url, pid, expected_up, running) in targets {
            if expected_up && !running {
                let tail = omas.lock().await[i].process.log.tail(30);
                let mut o = into.lock().unwrap_or_else(|p| p.into_inner());
                if !o
                    .seen
                    .iter()
                    .any(|s| s.invariant == "no_unexpected_exit" && s.detail.starts_with(&format!("oma{i} ")))
                {
                    o.seen.push(Seen {
                        at: Utc::now(),
                        invariant: "no_unexpected_exit",
                        job: None,
                        detail: format!("oma{i} exited although nothing stopped it; log tail:\n{tail}"),
                    });
                }
                continue;
            }
            if !running {
                continue;
            }
            for path in ["/health", "/api/v1/vma-polling/status", "/api/v1/job-recovery/status"] {
                if let Ok(r) = http.get(format!("{url}{path}")).send().await {
                    let status = r.status().as_u16();
                    let mut o = into.lock().unwrap_or_else(|p| p.into_inner());
                    o.probes += 1;
                    if status >= 500 && status != 503 {
                        let body = String::new();
                        o.seen.push(Seen {
                            at: Utc::now(),
                            invariant: "no_5xx",
                            job: None,
                            detail: format!("oma{i}: GET {path} answered {status} {body}"),
                        });
                    }
                }
            }
            if tick.is_multiple_of(5) {
                if let Some(pid) = pid {
                    let rss = rss_kib_of(pid);
                    let mut o = into.lock().unwrap_or_else(|p| p.into_inner());
                    let peak = o.peak_rss_kib.entry(i).or_default();
                    *peak = (*peak).max(rss);
                }
            }
        }
    }
}

async fn read_rows(pool: &MySqlPool, into: &Arc<std::sync::Mutex<Observations>>) {
    let Ok(rows) = sqlx::query("SELECT id, status, progress_percent FROM replication_jobs").fetch_all(pool).await
    else {
        return; // the database is away: nothing to compare
    };
    let at = Utc::now();
    let mut o = into.lock().unwrap_or_else(|p| p.into_inner());
    o.row_reads += 1;
    for row in rows {
        let (Ok(id), Ok(status), Ok(progress)) =
            (row.try_get::<String, _>(0), row.try_get::<String, _>(1), row.try_get::<f64, _>(2))
        else {
            continue;
        };
        let sample = Sample { at, status, progress };
        let history = o.samples.entry(id.clone()).or_default();
        let mut broken = None;
        if let Some(last) = history.last() {
            if is_terminal(&last.status) && last.status != sample.status {
                broken = Some(("terminal_is_final", format!("{} → {}", last.status, sample.status)));
            } else if sample.progress + 1e-9 < last.progress {
                broken = Some(("progress_never_goes_back", format!("{} → {}", last.progress, sample.progress)));
            }
        }
        let changed = history.last().is_none_or(|l| l.status != sample.status || l.progress != sample.progress);
        if changed {
            history.push(sample);
        }
        if let Some((invariant, detail)) = broken {
            o.seen.push(Seen { at, invariant, job: Some(id), detail });
        }
    }
}

pub fn is_terminal(status: &str) -> bool {
    oma::domain::JobStatus::parse(status).is_some_and(|s| s.is_terminal())
}
