//! What every part of a running OMA shares: settings, pool, VMA client, identity, metrics, clock.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::reconcile::ReconcileConfig;
use crate::vma_client::VmaClient;

pub struct Shared {
    pub settings: Settings,
    pub reconcile: ReconcileConfig,
    pub pool: MySqlPool,
    pub vma: VmaClient,
    pub instance_id: String,
    pub metrics: Metrics,
    pub clock: Clock,
}

impl Shared {
    pub fn new(settings: Settings, pool: MySqlPool, instance_id: String) -> Shared {
        let vma = VmaClient::new(&settings.vma_api_url, settings.vma_timeout);
        Shared {
            reconcile: settings.reconcile_config(),
            settings,
            pool,
            vma,
            instance_id,
            metrics: Metrics::new(),
            clock: Clock::default(),
        }
    }
}

/// The one source of "now" for ages compared with database timestamps: local time corrected
/// by the database clock's offset, refreshed from `NOW(3)`.
#[derive(Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.offset_ms.load(Ordering::Relaxed))
    }

    pub async fn sync_with_database(&self, pool: &MySqlPool) -> Result<(), sqlx::Error> {
        let before = Utc::now();
        let db = crate::db::db_now(pool).await?;
        let after = Utc::now();
        let local_mid = before + (after - before) / 2;
        self.offset_ms.store((db - local_mid).num_milliseconds(), Ordering::Relaxed);
        Ok(())
    }
}

/// Run `work` every `period`, the first time at `first`, until `cancel`; work in progress when
/// `cancel` fires is abandoned, so a check stuck on the database never holds up shutdown.
/// Missed periods are not made up.
pub async fn every<F, Fut>(
    first: tokio::time::Instant,
    period: std::time::Duration,
    cancel: &CancellationToken,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut ticker = tokio::time::interval_at(first, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = async {
                ticker.tick().await;
                work().await
            } => {}
        }
    }
}
