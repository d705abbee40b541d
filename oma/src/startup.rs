//! Building and running an OMA: one supervisor owns the root cancellation token; SIGTERM/SIGINT
//! or any long-running task ending cancels everything, with a bounded wait.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::api::{router, AppState};
use crate::config::{redact_url, Settings};
use crate::db;
use crate::health_monitor::HealthMonitor;
use crate::poller::{Poller, SHUTDOWN_DB_WAIT};
use crate::recovery::{new_tracker, startup_recovery, RecoveryTracker};
use crate::services::Services;

/// How long a stop lets in-flight requests, polls and writes finish before it hands over the
/// leases (at most [`SHUTDOWN_DB_WAIT`]) and closes the pool (the same again).
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(15);

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
        // Every statement, writes included, gives up on the database after OMA_API_DB_TIMEOUT: an
        // API write answers 503 within the same bound as a read.
        let pool = db::connect(
            &settings.database_url,
            settings.db_max_connections,
            settings.db_wait,
            "OMA_DB_WAIT",
            settings.api_db_timeout,
        )
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
        for outcome in crate::reconcile::Outcome::ALL {
            services.metrics.declare_recovery(outcome.as_str());
        }
        for status in [crate::domain::JobStatus::Completed, crate::domain::JobStatus::Failed] {
            services.metrics.declare_finalization(status.as_str());
        }
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
        let mut shutdown = std::pin::pin!(shutdown);
        let cancel = CancellationToken::new();
        let state = AppState {
            services: self.services.clone(),
            poller: self.poller.clone(),
            recovery: self.recovery.clone(),
            health_monitor: self.health_monitor.clone(),
        };
        let mut tasks = JoinSet::new();
        // Task id → name, so a task that dies is named in the log and in the exit error.
        let mut names: HashMap<tokio::task::Id, &'static str> = HashMap::new();
        let http_cancel = cancel.clone();
        let app = router(state);
        let listener = self.listener;
        let limits = crate::api::limits(&self.services.settings);
        let http = tasks.spawn(async move {
            crate::api::serve::serve(listener, app, limits, http_cancel).await.map_err(anyhow::Error::from)
        });
        names.insert(http.id(), "http server");
        info!("OMA API server started successfully on {} (instance {})", self.addr, self.services.instance_id);
        let poller_cancel = cancel.clone();
        let poller = self.poller.clone();
        let polling = tasks.spawn(async move {
            poller.run(poller_cancel).await;
            Ok(())
        });
        names.insert(polling.id(), "poller");
        // Recovery runs while /health already answers; it is one-shot: its end is not a failure.
        let (services, poller, tracker) = (self.services.clone(), self.poller.clone(), self.recovery.clone());
        let recovery = tasks.spawn(async move {
            startup_recovery(services, poller, tracker).await;
            Ok(())
        });
        names.insert(recovery.id(), "startup recovery");
        let monitor_cancel = cancel.clone();
        let monitor = self.health_monitor.clone();
        let monitoring = tasks.spawn(async move {
            monitor.run(monitor_cancel).await;
            Ok(())
        });
        names.insert(monitoring.id(), "health monitor");

        let mut failure: Option<String> = None;
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    info!("Shutdown signal received - stopping");
                    break;
                }
                _ = panicked().notified() => {
                    failure = Some("a task panicked (see the panic above)".into());
                    error!("A task panicked - stopping everything");
                    break;
                }
                Some(ended) = tasks.join_next_with_id() => match ended {
                    Ok((id, Ok(()))) if names.get(&id) == Some(&"startup recovery") => continue,
                    Ok((id, result)) => {
                        let name = names.get(&id).copied().unwrap_or("a task");
                        let why = match result {
                            Ok(()) => "ended".to_string(),
                            Err(e) => format!("failed: {e:#}"),
                        };
                        error!("The {name} task {why} unexpectedly - stopping everything");
                        failure = Some(format!("the {name} task {why}"));
                        break;
                    }
                    Err(e) => {
                        let name = names.get(&e.id()).copied().unwrap_or("a task");
                        error!("The {name} task died: {e} - stopping everything");
                        failure = Some(format!("the {name} task died: {e}"));
                        break;
                    }
                },
            }
        }
        cancel.cancel();
        recovery.abort();
        let drained = tokio::time::timeout(SHUTDOWN_DRAIN, async {
            while let Some(result) = tasks.join_next_with_id().await {
                match result {
                    Ok((id, Err(e))) => {
                        warn!("the {} task ended with error: {e:#}", names.get(&id).copied().unwrap_or("a"))
                    }
                    Err(e) if e.is_panic() => {
                        let name = names.get(&e.id()).copied().unwrap_or("a task");
                        error!("The {name} task panicked while stopping: {e}");
                        failure.get_or_insert(format!("the {name} task panicked"));
                    }
                    _ => {}
                }
            }
        })
        .await;
        if drained.is_err() {
            warn!("Shutdown timed out waiting for tasks");
        }
        // Leave the polling claims for the next start but let any other OMA take them soon: after
        // half an interval, so its first poll of a job keeps that far from our last one.
        let settings = &self.services.settings;
        let handover =
            db::hand_over_leases(&self.services.pool, &self.services.instance_id, settings.poll_interval / 2);
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
        match failure {
            None => Ok(()),
            Some(why) => Err(anyhow::anyhow!("stopped because {why}")),
        }
    }
}

/// Woken by the panic hook: any panic, in any task or thread of the process, stops the service
/// (with exit status 1), rather than leaving it running with a part of it dead.
fn panicked() -> &'static tokio::sync::Notify {
    static PANICKED: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    PANICKED.get_or_init(tokio::sync::Notify::new)
}

/// Log every panic once, where it happened, and wake the supervisor of
/// [`Application::run_until_stopped`]. Called by `oma-api`'s main.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        error!("panic in thread {thread} at {location}: {message}");
        default(info);
        panicked().notify_one();
    }));
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
