//! One fresh database per test: `oma_test_<random>` on the test server, with the given migrations
//! applied; dropped afterwards. Only databases this harness created are ever dropped.

use sqlx::migrate::Migrator;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool};

use crate::mariadb::server;

/// A fresh database for one test or scenario; dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

impl TestDatabase {
    /// Create `oma_test_<random>` on the test server and apply `migrations` (the OMA's are
    /// `oma::db::MIGRATOR`).
    pub async fn create(migrations: &Migrator) -> anyhow::Result<TestDatabase> {
        let server = server().await?;
        let name = format!("oma_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = MySqlConnection::connect(&format!("{}/", server.base_url)).await?;
        sqlx::query(&format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4")).execute(&mut conn).await?;
        conn.close().await?;
        let url = format!("{}/{name}", server.base_url);
        let pool = MySqlPoolOptions::new().max_connections(4).connect(&url).await?;
        migrations.run(&pool).await?;
        Ok(TestDatabase { name, url, pool })
    }

    /// Drop the database this harness created (never any other).
    pub async fn drop_database(self) {
        self.pool.close().await;
        if !self.name.starts_with("oma_test_") {
            return;
        }
        if let Ok(server) = server().await {
            if let Ok(mut conn) = MySqlConnection::connect(&format!("{}/", server.base_url)).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", self.name)).execute(&mut conn).await;
            }
        }
    }
}
