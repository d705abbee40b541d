//! The MariaDB server of a chaos session and what the runner does to it: its own local
//! `mariadbd` on a temporary directory (killed with -9 and started again on the same data), or a
//! server it may not kill; `KILL` of the OMAs' connections.

use anyhow::Context;
use sqlx::MySqlPool;

use oma_test_support::mariadb::LocalMariadbd;

/// The MariaDB server of a chaos session: its own local `mariadbd` (killable), or a server it
/// may not kill (`OMA_TEST_DATABASE_URL`, or the harness's shared one when no `mariadbd` can be
/// started here).
pub enum ChaosServer {
    Local { server: Option<LocalMariadbd>, root: tempfile::TempDir, port: u16 },
    Shared { base_url: String },
}

impl ChaosServer {
    /// A local `mariadbd` on a temporary directory if one can run here, else the test server.
    pub async fn start() -> anyhow::Result<ChaosServer> {
        if std::env::var("OMA_TEST_DATABASE_URL").is_err() {
            let root = tempfile::Builder::new().prefix("oma-chaos-mariadb-").tempdir()?;
            let port = oma_test_support::free_port();
            match LocalMariadbd::start_durable(root.path(), port).await {
                Ok(server) => {
                    // Dies with this process however it ends; its directory goes with it.
                    oma_test_support::reaper::adopt_with_dir(server.pid(), root.path());
                    return Ok(ChaosServer::Local { server: Some(server), root, port });
                }
                Err(e) => eprintln!("[chaos] no local mariadbd ({e:#}): using the test server; no database kills"),
            }
        }
        let server = oma_test_support::mariadb::server().await?;
        Ok(ChaosServer::Shared { base_url: server.base_url.clone() })
    }

    pub fn can_kill(&self) -> bool {
        matches!(self, ChaosServer::Local { .. })
    }

    pub fn base_url(&self) -> String {
        match self {
            ChaosServer::Local { port, .. } => format!("mysql://root@127.0.0.1:{port}"),
            ChaosServer::Shared { base_url } => base_url.clone(),
        }
    }

    pub fn is_up(&self) -> bool {
        match self {
            ChaosServer::Local { server, .. } => server.as_ref().is_some_and(LocalMariadbd::is_running),
            ChaosServer::Shared { .. } => true,
        }
    }

    /// kill -9, as a crash would.
    pub fn kill(&mut self) {
        if let ChaosServer::Local { server, .. } = self {
            if let Some(s) = server.take() {
                s.kill();
            }
        }
    }

    /// Start the killed server again on its data directory and port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let ChaosServer::Local { server, root, port } = self {
            if server.is_none() {
                let started = LocalMariadbd::start_durable(root.path(), *port).await.context("restarting mariadbd")?;
                oma_test_support::reaper::adopt_with_dir(started.pid(), root.path());
                *server = Some(started);
            }
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        self.kill();
    }
}

/// `KILL` every connection to `database` but the one asking.
pub async fn kill_connections(pool: &MySqlPool, database: &str) -> anyhow::Result<usize> {
    let mut conn = pool.acquire().await?;
    // `id` is BIGINT on MariaDB 10.11 and BIGINT UNSIGNED on 11.x: one type for both.
    let ids: Vec<u64> = sqlx::query_scalar(
        "SELECT CAST(id AS UNSIGNED) FROM information_schema.processlist WHERE db = ? AND id <> CONNECTION_ID()",
    )
    .bind(database)
    .fetch_all(&mut *conn)
    .await?;
    for id in &ids {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("KILL {id}"))).execute(&mut *conn).await;
    }
    Ok(ids.len())
}
