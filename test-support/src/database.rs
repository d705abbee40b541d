//! One fresh database per test: `oma_test_<host>_<pid>_<start>_<random>` on the test server, with
//! the given migrations applied; dropped afterwards. The name says which process made it, so a
//! database left by a process that was killed is dropped by the next one on the same host
//! ([`drop_abandoned_databases`]). Only databases this harness created are ever dropped.

use sqlx::migrate::Migrator;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool};

use crate::mariadb::{process_alive, process_start, server};

/// A fresh database for one test or scenario; dropped by [`TestDatabase::drop_database`].
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

/// This machine, as eight hex digits of its host name (databases of other hosts on a shared
/// server are never touched).
fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hash = host.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{:08x}", hash as u32)
}

/// The creator of a database named by [`TestDatabase::create`]: host tag, pid, start time.
fn creator(name: &str) -> Option<(&str, u32, &str)> {
    let mut parts = name.strip_prefix("oma_test_")?.split('_');
    let (host, pid, start, random) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || host.len() != 8 || random.len() != 12 || start.is_empty() {
        return None;
    }
    if !start.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((host, pid.parse().ok()?, start))
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

/// Drop the test databases that processes of this host created and did not drop because they
/// ended first (killed, or a test that panicked before its teardown). Errors are only reported:
/// a test server that refuses is the tests' business, not this clean-up's.
pub async fn drop_abandoned_databases(base_url: &str) {
    let result: anyhow::Result<usize> = async {
        let mut conn = MySqlConnection::connect(&format!("{base_url}/")).await?;
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'oma\\_test\\_%'",
        )
        .fetch_all(&mut conn)
        .await?;
        let mine = host_tag();
        let mut dropped = 0;
        for name in names {
            let Some((host, pid, start)) = creator(&name) else { continue };
            if host == mine && !process_alive(pid, start) {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                    .execute(&mut conn)
                    .await?;
                dropped += 1;
            }
        }
        Ok(dropped)
    }
    .await;
    match result {
        Ok(0) => {}
        Ok(n) => eprintln!("[harness] dropped {n} test databases left by processes that are gone"),
        Err(e) => eprintln!("[harness] could not look for abandoned test databases: {e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_this_harness_makes_have_a_creator() {
        assert_eq!(creator("oma_test_0a1b2c3d_4242_123456_abcdef012345"), Some(("0a1b2c3d", 4242, "123456")));
        for other in [
            "oma_test_5f2c9d0e4b6a4f1e9c7d3b2a1f0e9d8c",
            "migratekit_oma",
            "oma_test_0a1b2c3d_4242_123456",
            "oma_test_0a1b2c3d_x_123456_abcdef012345",
            "oma_test_0a1b2c3d_4242_12a456_abcdef012345",
            "oma_test_0a1b2c3d_4242_123456_abcdef012345_more",
        ] {
            assert_eq!(creator(other), None, "{other}");
        }
    }
}
