//! Health monitor (SPEC §4.5): every interval, finds unfinished jobs no live poller owns (also
//! never-polled ones) or whose last poll is stale, reconciles them and re-attaches polling.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock::every;
use crate::db;
use crate::decision::minutes_since;
use crate::poller::Poller;
use crate::reconcile::{reconcile_many, Apply, Caller, Outcome};
use crate::services::Services;

/// Jobs named one line each per round and kind (slow, orphaned); the rest are counted in one line,
/// so thousands of jobs (a takeover, a VMA outage) do not flood the log every round.
pub const NAMED_PER_ROUND: usize = 10;

#[derive(Debug, Clone, Default, Serialize)]
pub struct HealthTick {
    pub checked: usize,
    pub orphaned: usize,
    pub reattached: usize,
    pub finalized: usize,
    pub slow_but_polled: usize,
    pub checked_at: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone)]
pub struct HealthMonitor {
    services: Arc<Services>,
    poller: Poller,
    pub last: Arc<RwLock<HealthTick>>,
}

impl HealthMonitor {
    pub fn new(services: Arc<Services>, poller: Poller) -> HealthMonitor {
        HealthMonitor { services, poller, last: Arc::new(RwLock::new(HealthTick::default())) }
    }

    /// One check.
    pub async fn tick(&self) -> Result<HealthTick, sqlx::Error> {
        if crate::failpoint::active("health-monitor-panic") {
            panic!("failpoint health-monitor-panic");
        }
        let services = &self.services;
        if let Err(e) = services.clock.sync_with_database(&services.pool).await {
            warn!("Health monitor could not read the database clock: {e}");
        }
        let now = services.clock.now();
        let stale_after = chrono::Duration::from_std(services.settings.health_stale_after).unwrap_or_default();
        let jobs = db::load_unfinished(&services.pool, None).await?;
        let mut tick = HealthTick { checked: jobs.len(), checked_at: Some(now), ..HealthTick::default() };
        let mut orphans = Vec::new();
        for job in jobs {
            let stale = job.vma_last_poll_at.is_none_or(|t| now - t > stale_after);
            if self.poller.is_spoken_for(&job.id) {
                if stale {
                    tick.slow_but_polled += 1;
                    if tick.slow_but_polled <= NAMED_PER_ROUND {
                        info!("✅ Health monitor: Job {} is being polled (polling may be slow)", job.id);
                    }
                }
                continue;
            }
            if job.owned_elsewhere(&services.instance_id) {
                continue;
            }
            if orphans.len() < NAMED_PER_ROUND {
                warn!(
                    job_id = %job.id,
                    age_minutes = format!("{:.1}", minutes_since(now, job.updated_at)),
                    never_polled = job.vma_last_poll_at.is_none(),
                    "Found job not being polled - restarting"
                );
                info!("🚨 Health monitor: Job {} NOT being polled (orphaned) - investigating", job.id);
            }
            orphans.push(job);
        }
        if tick.slow_but_polled > NAMED_PER_ROUND {
            info!(
                "✅ Health monitor: {} more jobs are being polled (polling may be slow)",
                tick.slow_but_polled - NAMED_PER_ROUND
            );
        }
        if orphans.len() > NAMED_PER_ROUND {
            warn!("Found {} more jobs not being polled - restarting them", orphans.len() - NAMED_PER_ROUND);
        }
        db::attach_export_names(&services.pool, &mut orphans).await?;
        tick.orphaned = orphans.len();
        services.metrics.drift.set(orphans.len() as i64);
        let reconciled = reconcile_many(services, orphans, Caller::HealthMonitor, Apply::RecordAndClaim).await;
        self.poller.adopt(&reconciled);
        for outcome in reconciled.reports.iter().map(|r| r.outcome) {
            match outcome {
                Outcome::PollingRestarted | Outcome::NotFoundWithinGrace | Outcome::UnreachableLeftForRetry => {
                    tick.reattached += 1;
                    services.metrics.orphans_reattached.inc();
                }
                Outcome::Completed
                | Outcome::CompletedAssumed
                | Outcome::FailedOnVma
                | Outcome::Lost
                | Outcome::UnreachableTimedOut
                | Outcome::Stalled => tick.finalized += 1,
                _ => {}
            }
        }
        if tick.orphaned == 0 {
            info!("✅ Health monitor: No stale jobs detected - all polling active");
        } else {
            info!(
                "🏥 Health monitor: {} orphaned jobs, {} re-attached to polling, {} finalized",
                tick.orphaned, tick.reattached, tick.finalized
            );
        }
        *self.last.write().await = tick.clone();
        Ok(tick)
    }

    pub async fn run(self, cancel: CancellationToken) {
        let period = self.services.settings.health_interval;
        info!("🏥 Starting VMA polling health monitor for continuous job monitoring");
        info!("✅ Health monitor started - will check for orphaned jobs every {}", humantime::format_duration(period));
        let first = tokio::time::Instant::now() + period;
        every(first, period, &cancel, || async {
            if let Err(e) = self.tick().await {
                warn!("❌ Health monitor: Failed to query stale jobs: {e}");
            }
        })
        .await;
        info!("🏥 Health monitor stopped");
    }
}
