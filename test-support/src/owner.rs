//! Which process of which host made a test database: the name records it
//! (`oma_test_<host>_<pid>_<start>_<random>`), so a database left by a process that is gone is
//! dropped by the next test process on the same host ([`drop_abandoned_databases`]), and nothing
//! another host or a user made is ever touched. Also the `/proc` checks the reaper uses.

use sqlx::{Connection, MySqlConnection};

/// This machine, as eight hex digits of its host name (databases of other hosts on a shared
/// server are never touched).
pub(crate) fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let hash = host.trim().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("{:08x}", hash as u32)
}

/// The creator of a database named by [`crate::TestDatabase::create`]: host tag, pid, start time.
pub(crate) fn creator(name: &str) -> Option<(&str, u32, &str)> {
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

/// This process's start time in clock ticks since boot (`/proc/self/stat` field 22): with the pid,
/// it names a process even after the pid is reused.
pub fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which may hold spaces and parentheses: state is field 3.
    let after_name = &stat[stat.rfind(')')? + 2..];
    after_name.split(' ').nth(19).map(str::to_string)
}

/// Whether the process `pid` that started at `start` is still alive (and not a zombie).
pub fn process_alive(pid: u32, start: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let Some(close) = stat.rfind(')') else { return false };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    fields.first() != Some(&"Z") && fields.get(19) == Some(&start)
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

    #[test]
    fn a_process_is_named_by_its_pid_and_start_time() {
        let me = std::process::id();
        let start = process_start(me).expect("this process");
        assert!(process_alive(me, &start));
        assert!(!process_alive(me, "1"), "the same pid with another start time is another process");
        assert!(!process_alive(u32::MAX - 1, &start));
    }
}
