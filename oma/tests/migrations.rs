//! Reversible migrations (job sheet task 3.1.2): every migration has a down script, up -> down
//! -> up leaves the schema exactly as it was (columns, indexes, foreign keys), back to every
//! version and all at once, and `oma-api migrate --revert` does it from the command line.

mod common;

use common::Fixture;

/// The schema of the test database, one line per column, index part and foreign key.
async fn schema(pool: &sqlx::MySqlPool) -> Vec<String> {
    let mut out: Vec<String> = sqlx::query_scalar(
        "SELECT CONCAT_WS('|', 'column', table_name, ordinal_position, column_name, column_type, is_nullable, \
         IFNULL(column_default, 'NULL'), extra) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name <> '_sqlx_migrations'",
    )
    .fetch_all(pool)
    .await
    .expect("columns");
    out.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT CONCAT_WS('|', 'index', table_name, index_name, seq_in_index, column_name, non_unique) \
             FROM information_schema.statistics WHERE table_schema = DATABASE() AND table_name <> '_sqlx_migrations'",
        )
        .fetch_all(pool)
        .await
        .expect("indexes"),
    );
    out.extend(
        sqlx::query_scalar::<_, String>(
            "SELECT CONCAT_WS('|', 'foreign key', constraint_name, table_name, referenced_table_name, update_rule, \
             delete_rule) FROM information_schema.referential_constraints WHERE constraint_schema = DATABASE()",
        )
        .fetch_all(pool)
        .await
        .expect("foreign keys"),
    );
    out.sort();
    out
}

fn diff(a: &[String], b: &[String]) -> String {
    let only_a: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
    let only_b: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
    format!("before only: {only_a:#?}\nafter only: {only_b:#?}")
}

#[tokio::test]
async fn up_down_up_leaves_the_schema_identical() {
    let lab = Fixture::new().await;
    let pool = lab.pool();
    let full = schema(pool).await;
    assert!(full.len() > 50, "a schema was read: {full:?}");
    let versions = oma::db::migration_versions();
    assert_eq!(oma::db::applied_migrations(pool).await.unwrap(), versions);

    // Everything down: no table of ours is left.
    let reverted = oma::db::revert(pool, 0).await.expect("revert all");
    assert_eq!(reverted, versions.iter().rev().copied().collect::<Vec<_>>());
    assert!(schema(pool).await.is_empty(), "left after reverting everything: {:?}", schema(pool).await);
    assert!(oma::db::applied_migrations(pool).await.unwrap().is_empty());
    oma::db::migrate(pool).await.expect("up again");
    let again = schema(pool).await;
    assert_eq!(full, again, "{}", diff(&full, &again));

    // Back to each version in turn, then up again: every down script undoes its own up script
    // whatever is applied after it.
    for (i, v) in versions.iter().enumerate().rev() {
        let to = if i == 0 { 0 } else { versions[i - 1] };
        let reverted = oma::db::revert(pool, to).await.expect("revert");
        assert_eq!(reverted, versions[i..].iter().rev().copied().collect::<Vec<_>>());
        let down = schema(pool).await;
        assert_ne!(down, full, "reverting to {to} changed nothing");
        oma::db::migrate(pool).await.expect("up again");
        let up = schema(pool).await;
        assert_eq!(full, up, "after {v} down and up:\n{}", diff(&full, &up));
    }
    lab.teardown().await;
}

#[tokio::test]
async fn a_revert_to_an_unknown_version_is_refused_and_changes_nothing() {
    let lab = Fixture::new().await;
    let before = schema(lab.pool()).await;
    let e = oma::db::revert(lab.pool(), 12345).await.expect_err("refused");
    assert!(e.to_string().contains("--to 12345") && e.to_string().contains("20251003100000"), "{e}");
    assert_eq!(schema(lab.pool()).await, before);
    lab.teardown().await;
}

#[tokio::test]
async fn oma_api_migrate_revert_from_the_command_line() {
    let lab = Fixture::new().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_oma-api"))
            .args(args)
            .env("OMA_DATABASE_URL", &lab.db.url)
            .env("OMA_DB_WAIT", "2s")
            .output()
            .expect("oma-api runs");
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let newest = *oma::db::migration_versions().last().unwrap();
    let (code, out) = run(&["migrate", "--revert"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("reverted 1 migration(s): {newest}")), "{out}");
    assert!(!oma::db::applied_migrations(lab.pool()).await.unwrap().contains(&newest));
    let (code, out) = run(&["migrate", "--revert", "--to", "7"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("--to 7: not a migration of this build"), "{out}");
    let (code, out) = run(&["migrate", "--to", "0"]);
    assert_eq!(code, Some(2), "--to without --revert is a usage error: {out}");
    let (code, out) = run(&["migrate"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(oma::db::applied_migrations(lab.pool()).await.unwrap().contains(&newest));
    lab.teardown().await;
}

/// A rollback: the previous build starts on a database the newer build migrated further. The
/// newer changes are additive, so it runs, naming the versions it does not know (sqlx alone
/// refuses with "migration … was previously applied but is missing").
#[tokio::test]
async fn a_build_runs_on_a_schema_a_newer_build_migrated() {
    let lab = Fixture::new().await;
    let pool = lab.pool();
    let future = 29_991_231_000_000_i64;
    sqlx::query("ALTER TABLE replication_jobs ADD COLUMN future_column INT NOT NULL DEFAULT 0")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (?, 'a newer build', NOW(), 1, x'00', 1)",
    )
    .bind(future)
    .execute(pool)
    .await
    .unwrap();
    oma::db::migrate(pool).await.expect("a newer schema is used as it is");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oma-api"))
        .arg("migrate")
        .env("OMA_DATABASE_URL", &lab.db.url)
        .env("OMA_DB_WAIT", "2s")
        .output()
        .expect("oma-api runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("migrations this build does not know ({future})")), "{text}");
    // Reverting still needs the build that knows the newer migration.
    let e = oma::db::revert(pool, 0).await.expect_err("refused");
    assert!(e.to_string().contains(&future.to_string()), "{e}");
    lab.teardown().await;
}
