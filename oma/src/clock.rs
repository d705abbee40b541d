//! Time for a running OMA: the one wall clock that database ages are compared with ([`Clock`],
//! synced with the database's `NOW(3)`), and the periodic-loop helper ([`every`]). Everything else
//! uses tokio time, so tests can pause it.

use std::sync::atomic::{AtomicI64, Ordering};

use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn every_runs_on_its_period_and_stops_when_cancelled() {
        let runs = Arc::new(AtomicUsize::new(0));
        let cancel = CancellationToken::new();
        let start = tokio::time::Instant::now() + Duration::from_secs(1);
        let task = {
            let (runs, cancel) = (runs.clone(), cancel.clone());
            tokio::spawn(async move {
                every(start, Duration::from_secs(2), &cancel, || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 0, "not before `first`");
        tokio::time::sleep(Duration::from_millis(4_600)).await; // t = 5.1 s: runs at 1, 3 and 5 s
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        cancel.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3, "nothing after cancel");
    }
}
