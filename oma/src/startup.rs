//! Building and running an OMA: one supervisor owns the root cancellation token; SIGTERM/SIGINT
//! or any long-running task ending cancels everything, with a bounded wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{router, AppState};
use crate::config::{redact_url, Settings};
use crate::db;
use crate::health_monitor::HealthMonitor;
use crate::poller::{Poller, SHUTDOWN_DB_WAIT};
use crate::recovery::{new_tracker, startup_recovery, RecoveryTracker};
use crate::services::Services;

pub struct Application {
    listener: TcpListener,
    addr: SocketAddr,
    services: Arc<Services>,
    poller: Poller,
    recovery: RecoveryTracker,
    health_monitor: HealthMonitor,
}

/// Default identity: host name and listen port, so a restarted process resumes its own claims
/// at once and two processes on one host differ.
fn default_instance_id(addr: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "oma".to_string());
    format!("{host}:{}", addr.port())
}

impl Application {
    /// Connect, migrate, and bind (port 0 allowed). Nothing runs until [`Application::run_until_stopped`].
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        info!("Starting OMA Migration API server (version {})", env!("CARGO_PKG_VERSION"));
        info!(settings = ?settings, "Configuration");
        let pool = db::connect(&settings.database_url, settings.db_max_connections, settings.db_wait, "OMA_DB_WAIT")
            .await
            .with_context(|| format!("cannot connect to the database at {}", redact_url(&settings.database_url)))?;
        info!("Database connection established ({})", redact_url(&settings.database_url));
        db::migrate(&pool).await.context("applying database migrations")?;
        info!("Database migrations applied");
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {} (OMA_LISTEN)", settings.listen))?;
        let addr = listener.local_addr()?;
        let instance_id = settings.instance_id.clone().unwrap_or_else(|| default_instance_id(addr));
        let services = Arc::new(Services::new(settings, pool, instance_id));
        services.clock.sync_with_database(&services.pool).await?;
        let poller = Poller::new(services.clone());
        let health_monitor = HealthMonitor::new(services.clone(), poller.clone());
        Ok(Application { listener, addr, services, poller, recovery: new_tracker(), health_monitor })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn instance_id(&self) -> &str {
        &self.services.instance_id
    }

    /// Serve, poll, recover and monitor until `shutdown` resolves or a task ends.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let cancel = CancellationToken::new();
        let state = AppState {
            services: self.services.clone(),
            poller: self.poller.clone(),
            recovery: self.recovery.clone(),
            health_monitor: self.health_monitor.clone(),
        };
        let mut tasks = JoinSet::new();
        let http_cancel = cancel.clone();
        let app = router(state);
        let listener = self.listener;
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { http_cancel.cancelled().await })
                .await
                .map_err(anyhow::Error::from)
                .map(|_| "http server")
        });
        info!("OMA API server started successfully on {} (instance {})", self.addr, self.services.instance_id);
        let poller_cancel = cancel.clone();
        let poller = self.poller.clone();
        tasks.spawn(async move {
            poller.run(poller_cancel).await;
            Ok("poller")
        });
        // Recovery runs while /health already answers; it is one-shot, so not supervised.
        let recovery_task =
            tokio::spawn(startup_recovery(self.services.clone(), self.poller.clone(), self.recovery.clone()));
        let monitor_cancel = cancel.clone();
        let monitor = self.health_monitor.clone();
        tasks.spawn(async move {
            monitor.run(monitor_cancel).await;
            Ok("health monitor")
        });

        tokio::select! {
            _ = shutdown => info!("Shutdown signal received - stopping"),
            Some(ended) = tasks.join_next() => warn!("A service task ended unexpectedly ({ended:?}) - stopping"),
        }
        cancel.cancel();
        recovery_task.abort();
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(result) = tasks.join_next().await {
                if let Ok(Err(e)) = result {
                    warn!("task ended with error: {e:#}");
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!("Shutdown timed out waiting for tasks");
        }
        // Leave the polling claims for the next start but let any other OMA take them at once.
        let handover = db::hand_over_leases(&self.services.pool, &self.services.instance_id);
        let answered = match tokio::time::timeout(SHUTDOWN_DB_WAIT, handover).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                warn!("could not hand over polling leases: {e}");
                true
            }
            Err(_) => {
                warn!(
                    "could not hand over polling leases: the database did not answer within {} (they expire on their own)",
                    humantime::format_duration(SHUTDOWN_DB_WAIT)
                );
                false
            }
        };
        // Closing waits for busy connections; with a stalled database the process exit closes them.
        if answered && tokio::time::timeout(SHUTDOWN_DB_WAIT, self.services.pool.close()).await.is_err() {
            warn!("database connections still busy at exit - closed with the process");
        }
        info!("OMA API server stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
