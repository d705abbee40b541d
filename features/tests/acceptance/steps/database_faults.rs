//! The database misbehaving on purpose: triggers that refuse a job's writes (a lost lock race, a
//! refusal no retry cures), a session holding the job's polling row locked, every connection of
//! the OMA dropped.

use std::time::Duration;

use cucumber::{then, when};

use super::logs::lines_with;
use super::WAIT;
use crate::OmaWorld;

/// A write error the OMA cannot prevent (a deadlock victim, a full disk): a trigger makes MariaDB
/// refuse any status change of the job, with SQLSTATE 40001.
#[when(regex = r"^the database rejects every write that finalizes the job$")]
async fn database_rejects_final(world: &mut OmaWorld) {
    let refusal = "OLD.id = '{job}' AND NEW.status <> OLD.status";
    refuse_updates(world, "oma_test_reject_final", "replication_jobs", refusal, "40001", "status change refused").await;
}

#[when(regex = r"^the database accepts the job's writes again$")]
async fn database_accepts_again(world: &mut OmaWorld) {
    drop_trigger(world, "oma_test_reject_final").await;
}

/// The claim of the job's polling (the row of `vma_polling_state` a recovery inserts) fails with
/// SQLSTATE 45000, as a full disk or a broken constraint would make it.
#[when(regex = r"^the database refuses to record polling of the job$")]
async fn database_refuses_claim(world: &mut OmaWorld) {
    let refusal = "NEW.job_id = '{job}'";
    refuse(world, CLAIM_TRIGGER, "INSERT", "vma_polling_state", refusal, "45000", "polling claim refused").await;
}

#[when(regex = r"^the database records polling of the job again$")]
async fn database_records_claims_again(world: &mut OmaWorld) {
    drop_trigger(world, CLAIM_TRIGGER).await;
}

const CLAIM_TRIGGER: &str = "oma_test_refuse_claim";

/// A trigger named `name` makes MariaDB refuse, with `sqlstate`, every update of `table` for which
/// `condition` holds (`{job}` in it is the scenario's job id).
async fn refuse_updates(world: &OmaWorld, name: &str, table: &str, condition: &str, sqlstate: &str, what: &str) {
    refuse(world, name, "UPDATE", table, condition, sqlstate, what).await;
}

/// A trigger named `name` refuses, with `sqlstate`, every `event` (INSERT or UPDATE) of `table`
/// for which `condition` holds.
async fn refuse(world: &OmaWorld, name: &str, event: &str, table: &str, condition: &str, sqlstate: &str, what: &str) {
    let id = world.job();
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)), "unexpected job id {id}");
    let condition = condition.replace("{job}", &id);
    let sql = format!(
        "CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW IF {condition} THEN \
         SIGNAL SQLSTATE '{sqlstate}' SET MESSAGE_TEXT = 'injected by the test: {what}'; END IF"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(world.lab().pool()).await.expect("create the trigger");
}

async fn drop_trigger(world: &OmaWorld, name: &str) {
    let sql = format!("DROP TRIGGER IF EXISTS {name}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(world.lab().pool()).await.expect("drop the trigger");
}

/// A refusal no retry can cure (SQLSTATE 45000, as a constraint or a full disk would give): a
/// trigger makes MariaDB refuse every change of the job's poll count in `vma_polling_state`.
#[when(regex = r"^the database refuses every write of the job's poll statistics$")]
async fn database_refuses_stats(world: &mut OmaWorld) {
    refuse_stats(world, "45000", "poll statistics refused").await;
}

/// Every change of the job's poll count in `vma_polling_state` fails with `sqlstate`.
async fn refuse_stats(world: &OmaWorld, sqlstate: &str, what: &str) {
    let refusal = "OLD.job_id = '{job}' AND NEW.polls_total <> OLD.polls_total";
    refuse_updates(world, STATS_TRIGGER, "vma_polling_state", refusal, sqlstate, what).await;
}

const STATS_TRIGGER: &str = "oma_test_refuse_stats";

/// A write the database refuses as a lost lock race (SQLSTATE 40001) is one worth retrying: the
/// OMA keeps the statistics and tries again.
#[when(regex = r"^every write of the job's poll statistics loses a lock race$")]
async fn stats_lose_lock_race(world: &mut OmaWorld) {
    refuse_stats(world, "40001", "lock race lost").await;
    world.refused_since = Some(std::time::Instant::now());
}

#[when(regex = r"^the database takes the job's poll statistics again$")]
async fn database_takes_stats_again(world: &mut OmaWorld) {
    drop_trigger(world, STATS_TRIGGER).await;
    world.refused_for = world.refused_since.map(|t| t.elapsed());
}

/// The writer pauses between failed writes (100 ms): it does not hammer a database that fails
/// at once. Reads the count from "Polling results are written again after N failed writes".
#[then(regex = r"^the failed writes were retried no more than (\d+) times a second$")]
async fn retry_pace(world: &mut OmaWorld, per_second: f64) {
    let refused_for = world.refused_for.expect("the database refused the statistics for a while first");
    let line = lines_with(world, "Polling results are written again after").pop().expect("the recovery line");
    let failed: f64 = line
        .split("after ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count of failed writes in {line:?}"));
    // The first failure comes without a pause, and a write under way when the refusal ended may
    // still fail: two more than the pace allows.
    let most = per_second * refused_for.as_secs_f64() + 2.0;
    assert!(failed >= 1.0 && failed <= most, "{failed} failed writes in {refused_for:?}, more than {most:.0}: {line}");
}

/// `vma_polling_state.polls_total` grows: statistics are written again.
#[then(regex = r"^the database counts the job's polls again within (\d+) seconds?$")]
async fn polls_counted_again(world: &mut OmaWorld, secs: u64) {
    let id = world.job();
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT polls_total FROM vma_polling_state WHERE job_id = ?")
            .bind(&id)
            .fetch_one(world.lab().pool())
            .await
    };
    let before = stored().await.expect("the job's polling state");
    world
        .lab()
        .wait_until("polls_total to grow", Duration::from_secs(secs), || async {
            let now = stored().await?;
            Ok(if now > before { Ok(()) } else { Err(format!("polls_total still {now}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[when(regex = r"^another database session holds the job's polling state locked$")]
async fn hold_polling_state_lock(world: &mut OmaWorld) {
    let id = world.job();
    let mut tx = world.lab().pool().begin().await.expect("begin");
    let locked: Option<String> = sqlx::query_scalar("SELECT job_id FROM vma_polling_state WHERE job_id = ? FOR UPDATE")
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await
        .expect("lock the polling state");
    assert!(locked.is_some(), "no polling state row for {id} to lock");
    world.held_lock = Some(tx);
}

#[when(regex = r"^the other database session releases the lock$")]
async fn release_polling_state_lock(world: &mut OmaWorld) {
    let tx = world.held_lock.take().expect("a step took the lock first");
    tx.commit().await.expect("release the lock");
}

/// An OMA statement on the polling state has been held up for over half a second (a statement on
/// a table of a few rows takes milliseconds: it is waiting for the lock).
#[then(regex = r"^the OMA waits on that lock$")]
async fn oma_waits_on_lock(world: &mut OmaWorld) {
    world
        .lab()
        .wait_until("an OMA statement waiting on the lock", WAIT, || async {
            let waiting: Vec<String> = sqlx::query_scalar(
                "SELECT INFO FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID() \
                 AND COMMAND IN ('Query', 'Execute') AND TIME_MS > 500 AND INFO LIKE '%vma_polling_state%'",
            )
            .fetch_all(world.lab().pool())
            .await?;
            Ok(if waiting.is_empty() { Err("no statement held up".to_string()) } else { Ok(waiting) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Every other connection to the scenario's database is killed (the OMA's among them), as a
/// database failover or `wait_timeout` would.
#[when(regex = r"^the database drops every connection of the OMA$")]
async fn drop_oma_connections(world: &mut OmaWorld) {
    let mut conn = world.lab().pool().acquire().await.expect("connection");
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()",
    )
    .fetch_all(&mut *conn)
    .await
    .expect("processlist");
    // The harness's own other connections are among them; the OMA's must be too.
    let harness_others = world.lab().pool().size() as usize - 1;
    assert!(
        ids.len() > harness_others,
        "no OMA connection to drop: {} connections, {harness_others} the harness's",
        ids.len()
    );
    for id in ids {
        // A connection may end on its own meanwhile.
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}"))).execute(&mut *conn).await;
    }
}
