//! Steps about polling: when the VMA is asked about a job (sim-vma's journal), what the OMA and
//! the database count, exactly one poller per job, and stopping or losing a job's polling.

use std::time::Duration;

use chrono::{DateTime, Utc};
use cucumber::{then, when};
use serde_json::Value;

use super::WAIT;
use crate::OmaWorld;

/// The OMA's view of the scenario's job's polling: `/api/v1/vma-polling/jobs/{id}`.
async fn polling_view(world: &OmaWorld) -> anyhow::Result<Value> {
    let url = format!("{}/api/v1/vma-polling/jobs/{}", world.lab().oma().url(), world.job());
    Ok(world.lab().http.get(url).send().await?.json().await?)
}

/// Waits for the OMA's own count: the original failed a job after 5 polling errors in a row.
#[then(regex = r"^the OMA has failed to poll the job (\d+) times in a row$")]
async fn failed_polls_in_a_row(world: &mut OmaWorld, n: u64) {
    world
        .lab()
        .wait_until(&format!("{n} failed polls in a row"), WAIT, || async {
            let body = polling_view(world).await?;
            let errors = body["polled_by_this_instance"]["consecutive_errors"].as_u64().unwrap_or(0);
            Ok(if errors >= n { Ok(()) } else { Err(format!("{errors} so far: {body}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Waits for `vma_polling_state` itself: the poll writer must write a job's failures even when no
/// poll of any job succeeds.
#[then(regex = r"^the database records (\d+) failed polls in a row for the job$")]
async fn failed_polls_written(world: &mut OmaWorld, n: i32) {
    let id = world.job();
    world
        .lab()
        .wait_until(&format!("{n} failed polls in a row in vma_polling_state"), WAIT, || async {
            let row = oma::db::polling_state(world.lab().pool(), &id).await?;
            Ok(match row {
                Some(r) if r.consecutive_errors >= n && r.last_error_message.is_some() => Ok(()),
                other => Err(format!("{other:?}")),
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Start times of GET polls of the scenario's job that sim-vma saw after `since`.
pub async fn poll_times(world: &OmaWorld, since: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let journal = world.lab().control.journal(Some(&world.job()), 10_000).await.expect("journal");
    journal["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["method"] == "GET")
        .filter_map(|e| {
            e["at"].as_str().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc))
        })
        .filter(|t| *t > since)
        .collect()
}

/// Counted once the recovery scan is over (its check of the job is the only request allowed),
/// then again five intervals later.
#[then(regex = r"^no polling was started for the job$")]
async fn no_polling(world: &mut OmaWorld) {
    let since = world.oma_started_at.expect("OMA started");
    super::job_state::wait_recovery_state(world, &["completed", "failed"]).await;
    let interval = world.lab().oma().config.poll_interval;
    let first = poll_times(world, since).await.len();
    tokio::time::sleep(interval * 5).await;
    let later = poll_times(world, since).await.len();
    assert_eq!(first, later, "the finished job was polled again");
    let names = world.export_names.get("").map(|n| n.len()).unwrap_or(0);
    assert!(later <= names + 1, "more requests than one recovery check: {later}");
    let state = oma::db::polling_state(world.lab().pool(), &world.job()).await.expect("query");
    assert!(state.is_none_or(|s| !s.is_active), "polling state still active");
}

#[then(regex = r"^the job is polled again within (\d+) seconds?$")]
#[when(regex = r"^the job is polled again within (\d+) seconds?$")]
async fn polled_again(world: &mut OmaWorld, secs: u64) {
    let since = Utc::now();
    let label = format!("a poll of {} after {since}", world.job());
    world
        .lab()
        .wait_until(&label, Duration::from_secs(secs), || async {
            Ok(if poll_times(world, since).await.is_empty() { Err("no poll".to_string()) } else { Ok(()) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^the job's progress is written again within (\d+) seconds?$")]
async fn written_again(world: &mut OmaWorld, secs: u64) {
    let id = world.job();
    let since = Utc::now();
    world
        .lab()
        .wait_until("vma_last_poll_at to move", Duration::from_secs(secs), || async {
            let row = world.lab().job(&id).await?;
            Ok(match row.vma_last_poll_at {
                Some(t) if t > since - chrono::Duration::milliseconds(50) => Ok(()),
                other => Err(format!("vma_last_poll_at={other:?}")),
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `vma_polling_state.polls_total` catches up with the polls the OMA made (its API's in-memory
/// count, taken a moment apart from the row: one poll may be written but not yet counted in
/// memory, or the other way round), those made while the database was away included: a write
/// that failed is kept, not dropped, and polls are summed, not counted once per statement.
#[then(regex = r"^the database counts every poll of the job within (\d+) seconds?$")]
async fn every_poll_counted(world: &mut OmaWorld, secs: u64) {
    world
        .lab()
        .wait_until("the stored poll count to match the OMA's", Duration::from_secs(secs), || async {
            let body = polling_view(world).await?;
            let made = body["polled_by_this_instance"]["polls_total"].as_i64();
            let stored = body["persisted_state"]["polls_total"].as_i64();
            Ok(match (made, stored) {
                (Some(m), Some(s)) if m >= 8 && (m - 1..=m + 1).contains(&s) => Ok(()),
                _ => Err(format!("made {made:?}, stored {stored:?}")),
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^vma_last_poll_at updates every poll interval$")]
async fn last_poll_updates(world: &mut OmaWorld) {
    let id = world.job();
    let interval = world.lab().oma().config.poll_interval;
    let mut seen = Vec::new();
    for _ in 0..12 {
        if let Some(t) = world.lab().job(&id).await.expect("row").vma_last_poll_at {
            if seen.last() != Some(&t) {
                seen.push(t);
            }
        }
        tokio::time::sleep(interval).await;
    }
    assert!(seen.len() >= 5, "vma_last_poll_at changed only {} times in 12 intervals: {seen:?}", seen.len());
    let age = (Utc::now() - *seen.last().expect("one value")).to_std().unwrap_or_default();
    assert!(age < interval * 3 + Duration::from_millis(300), "last poll {age:?} ago");
}

#[then(regex = r"^progress continues from where it left off$")]
async fn progress_continues(world: &mut OmaWorld) {
    let id = world.job();
    let before = world.before_restart.clone().expect("a snapshot taken when the OMA stopped");
    world
        .lab()
        .wait_until("progress to move past the value before the restart", WAIT, || async {
            let row = world.lab().job(&id).await?;
            Ok(if row.progress_percent > before.progress_percent {
                Ok(())
            } else {
                Err(format!("{}% (before: {}%)", row.progress_percent, before.progress_percent))
            })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[then(regex = r"^polling restarted within (\d+) seconds of the OMA start$")]
async fn restarted_within(world: &mut OmaWorld, secs: i64) {
    let started = world.oma_started_at.expect("OMA started");
    let row = world.lab().job(&world.job()).await.expect("row");
    let restarted = row.polling_restarted_at.expect("polling_restarted_at");
    let took = restarted - started;
    assert!(took < chrono::Duration::seconds(secs), "polling restarted {took} after the start");
}

#[when(regex = r"^polling of the job is stopped through the API$")]
async fn stop_polling(world: &mut OmaWorld) {
    let url = format!("{}/api/v1/vma-polling/jobs/{}", world.lab().oma().url(), world.job());
    let resp = world.lab().http.delete(url).send().await.expect("DELETE");
    assert_eq!(resp.status(), 200);
}

#[then(regex = r"^every one of them is polled again within (\d+) seconds$")]
async fn orphans_polled(world: &mut OmaWorld, secs: u64) {
    let ids: Vec<String> =
        world.jobs.iter().filter(|(a, _)| a.starts_with("orphan-")).map(|(_, id)| id.clone()).collect();
    let since = Utc::now() - chrono::Duration::seconds(5);
    world
        .lab()
        .wait_until("every orphan to be polled", Duration::from_secs(secs), || async {
            let mut waiting = Vec::new();
            for id in &ids {
                if world.lab().job(id).await?.vma_last_poll_at.is_none_or(|t| t < since) {
                    waiting.push(id.clone());
                }
            }
            Ok(if waiting.is_empty() { Ok(()) } else { Err(format!("not yet polled: {waiting:?}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Exactly once is counted when nothing can finalize the job any more: its status is final, its
/// "marked as completed" line has been logged (the status is committed before the line is
/// written), every OMA's recovery scan is over and no OMA tracks the job.
#[then(regex = r"^every completed job is finalized exactly once$")]
async fn finalized_once(world: &mut OmaWorld) {
    let completed: Vec<String> =
        world.jobs.iter().filter(|(a, _)| a.starts_with("completed-")).map(|(_, id)| id.clone()).collect();
    for oma in &world.lab().omas {
        super::job_state::wait_recovery_state_of(world, &oma.url(), &["completed", "failed"]).await;
    }
    for id in &completed {
        world.lab().wait_for_status(id, "completed", WAIT).await.unwrap_or_else(|e| panic!("{e:#}"));
        let line = format!("Job {id} marked as completed");
        let logged = || world.lab().omas.iter().map(|o| o.log.count(&line)).sum::<usize>();
        world
            .lab()
            .wait_until(&format!("{line:?} in a log"), WAIT, || async {
                let untracked = {
                    let mut all = true;
                    for oma in &world.lab().omas {
                        all &= !tracked_by(world, &oma.url(), id).await?;
                    }
                    all
                };
                Ok(if logged() >= 1 && untracked { Ok(()) } else { Err(format!("logged {} times", logged())) })
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(logged(), 1, "{id} finalized {} times", logged());
    }
}

/// Whether the OMA at `url` polls `job` (`/api/v1/vma-polling/jobs/{id}`: 404 when it never did).
async fn tracked_by(world: &OmaWorld, url: &str, job: &str) -> anyhow::Result<bool> {
    let response = world.lab().http.get(format!("{url}/api/v1/vma-polling/jobs/{job}")).send().await?;
    if response.status().as_u16() == 404 {
        return Ok(false);
    }
    let body: Value = response.error_for_status()?.json().await?;
    Ok(body["is_polling"] == true)
}

#[then(regex = r"^every running job is polled by exactly one process$")]
async fn running_polled_once(world: &mut OmaWorld) {
    let running: Vec<String> =
        world.jobs.iter().filter(|(a, _)| a.starts_with("running-")).map(|(_, id)| id.clone()).collect();
    for id in &running {
        let stats = world
            .lab()
            .wait_until(&format!("four polls of {id}"), WAIT, || async {
                let stats = world.lab().control.stats(id).await?;
                Ok(if stats.polls > 3 { Ok(stats) } else { Err(format!("{stats:?}")) })
            })
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(stats.max_in_flight, 1, "{id}: {stats:?}");
        let state = oma::db::polling_state(world.lab().pool(), id).await.expect("q").expect("polling state");
        assert!(state.is_active);
    }
}

/// Another component (an operator, the GUI's cancel) ends the job behind the OMA's back.
#[when(regex = r"^another component marks the job (cancelled|completed) in the database$")]
async fn marked_elsewhere(world: &mut OmaWorld, status: String) {
    let done = sqlx::query("UPDATE replication_jobs SET status = ?, completed_at = NOW(3) WHERE id = ?")
        .bind(&status)
        .bind(world.job())
        .execute(world.lab().pool())
        .await
        .expect("update the job");
    assert_eq!(done.rows_affected(), 1, "no row for {}", world.job());
}

/// No request for the job reaches the VMA over five poll intervals, counted from when no OMA
/// tracks the job plus one VMA timeout (a poll dispatched before may still land until then).
#[then(regex = r"^the VMA is no longer asked about the job$")]
async fn no_longer_polled(world: &mut OmaWorld) {
    let job = world.job();
    world
        .lab()
        .wait_until(&format!("no OMA to track {job}"), WAIT, || async {
            for oma in &world.lab().omas {
                if tracked_by(world, &oma.url(), &job).await? {
                    return Ok(Err(format!("{} still polls it", oma.name)));
                }
            }
            Ok(Ok(()))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let first = world.lab().omas.first().expect("an OMA");
    let (interval, timeout) = (first.config.poll_interval, first.config.vma_timeout);
    let from = Utc::now() + chrono::Duration::from_std(timeout).expect("timeout");
    tokio::time::sleep(timeout + interval * 5).await;
    let polls = poll_times(world, from).await;
    assert!(polls.is_empty(), "the VMA was still asked about {} at {polls:?}", world.job());
}

/// Polls of the scenario's job (GET requests sim-vma saw), oldest first: start time, latency and
/// the asking client (`oma/<version> (<instance id>)`).
async fn polls_with_clients(world: &OmaWorld) -> Vec<(DateTime<Utc>, f64, String)> {
    let journal = world.lab().control.journal(Some(&world.job()), 10_000).await.expect("journal");
    let mut polls: Vec<(DateTime<Utc>, f64, String)> = journal["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|e| e["method"] == "GET")
        .filter_map(|e| {
            let at = DateTime::parse_from_rfc3339(e["at"].as_str()?).ok()?.with_timezone(&Utc);
            Some((at, e["latency_ms"].as_f64().unwrap_or(0.0), e["client"].as_str().unwrap_or("").to_string()))
        })
        .collect();
    polls.sort_by_key(|p| p.0);
    polls
}

/// A second OMA on the same database, reaching it directly (not through the first OMA's gate),
/// with its own instance id `oma-b`.
#[when(regex = r"^a second OMA API starts with its own way to the database$")]
async fn second_oma(world: &mut OmaWorld) {
    let mut config = world.lab().oma_config();
    config.instance_id = Some("oma-b".into());
    let name = format!("{}-b", world.lab().name);
    let oma = oma_acceptance::OmaProcess::start(&name, config).await.unwrap_or_else(|e| panic!("{e:#}"));
    world.lab_mut().omas.push(oma);
}

#[then(regex = r"^the second OMA polls the job within (\d+) seconds$")]
async fn second_oma_polls(world: &mut OmaWorld, secs: u64) {
    world
        .lab()
        .wait_until("a poll of the job by oma-b", Duration::from_secs(secs), || async {
            let polls = polls_with_clients(world).await;
            let by_b = polls.iter().filter(|p| p.2.contains("(oma-b)")).count();
            Ok(if by_b > 0 { Ok(()) } else { Err(format!("{} polls, none by oma-b", polls.len())) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The core promise, checked on every poll sim-vma saw: when the asking OMA changes, the new one's
/// poll starts after the old one's last poll ended, and at least half an interval after it began.
#[then(regex = r"^no two OMAs ever polled the job within half an interval of each other$")]
async fn never_two_pollers(world: &mut OmaWorld) {
    let half_ms = world.lab().omas[0].config.poll_interval.as_secs_f64() * 500.0;
    let polls = polls_with_clients(world).await;
    let clients: std::collections::BTreeSet<&str> = polls.iter().map(|p| p.2.as_str()).collect();
    assert!(clients.len() >= 2, "the job was polled by {clients:?} only: nothing to compare");
    for pair in polls.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        if a.2 == b.2 {
            continue;
        }
        let apart_ms = (b.0 - a.0).num_microseconds().unwrap_or(0) as f64 / 1000.0;
        assert!(
            apart_ms >= half_ms && apart_ms >= a.1,
            "polled by {} at {} and by {} at {}: {apart_ms:.1} ms apart (the first took {:.1} ms; half an interval is {half_ms} ms)",
            a.2,
            a.0.format("%H:%M:%S%.3f"),
            b.2,
            b.0.format("%H:%M:%S%.3f"),
            a.1
        );
    }
}

/// After the first OMA is back, only one OMA polls the job: in the last ten polls a single client.
#[then(regex = r"^only the second OMA polls the job from now on$")]
async fn only_second_polls(world: &mut OmaWorld) {
    let since = Utc::now();
    let recent = world
        .lab()
        .wait_until("ten polls from now on", WAIT, || async {
            let polls: Vec<_> = polls_with_clients(world).await.into_iter().filter(|p| p.0 > since).collect();
            Ok(if polls.len() >= 10 { Ok(polls) } else { Err(format!("{} polls", polls.len())) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let others: Vec<_> = recent.iter().filter(|p| !p.2.contains("(oma-b)")).collect();
    assert!(others.is_empty(), "polled by another OMA again: {others:?}");
}
