//! One fresh database per test: `oma_test_<host>_<pid>_<start>_<random>` on the test server, with
//! the given migrations applied; dropped afterwards. The name says which process made it, so a
//! database left by a process that was killed is dropped by the next one on the same host
//! ([`crate::owner::drop_abandoned_databases`]). Only databases this harness created are ever dropped.

use sqlx::migrate::Migrator;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool};

use crate::mariadb::server;
use crate::owner::{creator, host_tag, process_start};

/// A fresh database for one test or scenario; dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

impl TestDatabase {
    /// Create a database on the test server and apply `migrations` (the OMA's are
    /// `oma::db::MIGRATOR`).
    pub async fn create(migrations: &Migrator) -> anyhow::Result<TestDatabase> {
        let server = server().await?;
        let pid = std::process::id();
        let start = process_start(pid).unwrap_or_else(|| "0".into());
        let random = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let name = format!("oma_test_{}_{pid}_{start}_{random}", host_tag());
        let mut conn = MySqlConnection::connect(&format!("{}/", server.base_url)).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = format!("{}/{name}", server.base_url);
        let pool = MySqlPoolOptions::new().max_connections(4).connect(&url).await?;
        migrations.run(&pool).await?;
        Ok(TestDatabase { name, url, pool })
    }

    /// Drop the database this harness created (never any other). A connection a test still holds
    /// does not hold this up: the pool's close waits a second for it at most.
    pub async fn drop_database(self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), self.pool.close()).await;
        if creator(&self.name).is_none() {
            return;
        }
        if let Ok(server) = server().await {
            if let Ok(mut conn) = MySqlConnection::connect(&format!("{}/", server.base_url)).await {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{}`", self.name)))
                    .execute(&mut conn)
                    .await;
            }
        }
    }
}
