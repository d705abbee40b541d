//! The poller's database writer. Poll results are coalesced per job — the newest progress, the sum
//! of the polls — and written in multi-row statements, one write at a time. While a write is in
//! flight, or the database is away, new results fold into what is pending, so memory is bounded by
//! the number of jobs (not by the length of an outage), a failed write is kept and retried rather
//! than lost, and the first write after the database returns carries every job's newest state
//! instead of a backlog of stale ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::db::{self, PollStats, ProgressWrite};
use crate::services::Services;

/// Start a write before the channel is drained once this many jobs are pending.
const START_AT_JOBS: usize = 500;

/// After a failed write, the next one starts no sooner than this (a database that fails at once
/// must not be asked in a busy loop).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// How long one write waits for a connection. The pool alone would wait its 10 s acquire timeout,
/// retrying a refused connect with a backoff that grows to 2 s, so the first write after the
/// database returns could start up to 2 s late; a fresh acquire every second keeps that gap short.
const ACQUIRE_WAIT: Duration = Duration::from_secs(1);

pub(super) enum WriteMsg {
    /// A successful poll's progress.
    Progress(Box<ProgressWrite>),
    /// A poll's outcome for `vma_polling_state` (`error` is `None` for a successful one).
    Polled { job_id: String, error: Option<String> },
    /// Write what is pending and stop (shutdown).
    Close,
}

/// What waits to be written, per job.
#[derive(Default)]
pub(super) struct Pending {
    progress: HashMap<String, ProgressWrite>,
    stats: HashMap<String, PollStats>,
}

impl Pending {
    /// Fold one message in; false for `Close`.
    pub(super) fn add(&mut self, msg: WriteMsg) -> bool {
        match msg {
            WriteMsg::Progress(p) => {
                self.progress.insert(p.job_id.clone(), *p);
            }
            WriteMsg::Polled { job_id, error } => match self.stats.get_mut(&job_id) {
                Some(s) => s.record(error),
                None => {
                    self.stats.insert(job_id.clone(), PollStats::one(job_id, error));
                }
            },
            WriteMsg::Close => return false,
        }
        true
    }

    pub(super) fn is_empty(&self) -> bool {
        self.progress.is_empty() && self.stats.is_empty()
    }

    /// Jobs with something to write.
    pub(super) fn jobs(&self) -> usize {
        self.progress.len().max(self.stats.len())
    }

    /// Take back what a failed write did not write, beneath what came in since.
    pub(super) fn restore(&mut self, progress: Vec<ProgressWrite>, stats: Vec<PollStats>) {
        for p in progress {
            self.progress.entry(p.job_id.clone()).or_insert(p);
        }
        for older in stats {
            let merged = match self.stats.remove(&older.job_id) {
                Some(newer) => older.then(newer),
                None => older,
            };
            self.stats.insert(merged.job_id.clone(), merged);
        }
    }
}

/// What a write did not get into the database, and why.
struct Unwritten {
    progress: Vec<ProgressWrite>,
    stats: Vec<PollStats>,
    jobs: usize,
    error: sqlx::Error,
}

async fn write(services: Arc<Services>, pending: Pending) -> Result<(), Unwritten> {
    let jobs = pending.jobs();
    let progress: Vec<ProgressWrite> = pending.progress.into_values().collect();
    let mut stats: Vec<PollStats> = pending.stats.into_values().collect();
    // A connection is waited for at most ACQUIRE_WAIT, then the write is retried with what came in
    // meanwhile (nothing was sent, so nothing can be counted twice).
    let mut conn = match tokio::time::timeout(ACQUIRE_WAIT, services.pool.acquire()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return Err(Unwritten { progress, stats, jobs, error }),
        Err(_) => return Err(Unwritten { progress, stats, jobs, error: sqlx::Error::PoolTimedOut }),
    };
    // Progress rows are idempotent: on failure all of them are kept. Statistics are sums: only the
    // statements that failed are kept, or polls would be counted twice.
    if let Err(error) = db::write_progress_batch(&mut conn, &progress).await {
        return Err(Unwritten { progress, stats, jobs, error });
    }
    let mut written = 0;
    while written < stats.len() {
        let chunk = &stats[written..(written + db::BATCH_ROWS).min(stats.len())];
        if let Err(error) = db::write_poll_stats(&mut conn, &services.instance_id, chunk).await {
            stats.drain(..written);
            return Err(Unwritten { progress: Vec::new(), stats, jobs, error });
        }
        written += chunk.len();
    }
    Ok(())
}

/// A write that failed for want of the database (or lost a lock race) is kept for the next one;
/// one the database refused outright is not, or it would fail every write after it.
fn worth_retrying(e: &sqlx::Error) -> bool {
    db::out_of_reach(e) || db::lost_a_lock_race(e)
}

/// Receive poll results until `Close`, writing them as described in the module header.
pub(super) async fn write_loop(services: Arc<Services>, mut rx: mpsc::UnboundedReceiver<WriteMsg>) {
    let mut pending = Pending::default();
    let mut buffer = Vec::with_capacity(1024);
    // At most one write in flight; dropping the set (the task aborted at shutdown) cancels it.
    let mut in_flight: JoinSet<Result<(), Unwritten>> = JoinSet::new();
    let mut open = true;
    let mut last_write_started = false;
    let mut failed_writes = 0u32;
    let mut retry_at = tokio::time::Instant::now();
    loop {
        let paused = open && tokio::time::Instant::now() < retry_at;
        if in_flight.is_empty() {
            let start = !pending.is_empty()
                && if open {
                    !paused && (rx.is_empty() || pending.jobs() >= START_AT_JOBS)
                } else {
                    !last_write_started
                };
            if start {
                last_write_started = !open;
                in_flight.spawn(write(services.clone(), std::mem::take(&mut pending)));
            } else if !open {
                break;
            }
        }
        tokio::select! {
            n = rx.recv_many(&mut buffer, 1024), if open => open = n > 0,
            _ = tokio::time::sleep_until(retry_at), if paused && in_flight.is_empty() => {}
            Some(done) = in_flight.join_next() => match done {
                Ok(Ok(())) => {
                    if failed_writes > 0 {
                        info!("✅ Polling results are written again after {failed_writes} failed writes");
                        failed_writes = 0;
                    }
                }
                Ok(Err(unwritten)) => {
                    failed_writes += 1;
                    let keep = worth_retrying(&unwritten.error);
                    if failed_writes == 1 || !keep {
                        let fate = if keep {
                            "they are kept and written when the database answers"
                        } else {
                            "the database refused them, so they are dropped (the next polls write afresh)"
                        };
                        warn!("⚠️ Failed to write polling results for {} jobs: {} - {fate}", unwritten.jobs, unwritten.error);
                    }
                    if keep {
                        pending.restore(unwritten.progress, unwritten.stats);
                    }
                    retry_at = tokio::time::Instant::now() + RETRY_PAUSE;
                }
                Err(e) => warn!("⚠️ A polling-results write stopped: {e}"),
            },
        }
        for msg in buffer.drain(..) {
            open &= pending.add(msg);
        }
    }
    if !pending.is_empty() {
        warn!(
            "⚠️ Polling results of {} jobs were not written: the database did not take them before shutdown",
            pending.jobs()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polled(job: &str, error: Option<&str>) -> WriteMsg {
        WriteMsg::Polled { job_id: job.into(), error: error.map(str::to_string) }
    }

    #[test]
    fn polls_of_one_job_are_summed() {
        let mut p = Pending::default();
        for m in [polled("a", Some("x")), polled("a", None), polled("a", Some("y")), polled("a", Some("z"))] {
            p.add(m);
        }
        p.add(polled("b", None));
        let a = &p.stats["a"];
        assert_eq!((a.polls, a.failed, a.trailing_failures, a.any_ok), (4, 3, 2, true));
        assert_eq!(a.last_error.as_deref(), Some("z"));
        assert_eq!(p.jobs(), 2);
    }

    #[test]
    fn pending_knows_when_it_is_empty_and_close_stops_the_loop() {
        let mut p = Pending::default();
        assert!(p.is_empty());
        assert_eq!(p.jobs(), 0);
        let progress = |job: &str| ProgressWrite {
            job_id: job.into(),
            progress: crate::vma_client::VmaProgress::default(),
            progress_changed: false,
            disks: None,
        };
        assert!(p.add(WriteMsg::Progress(Box::new(progress("a")))));
        assert!(!p.is_empty());
        assert!(p.add(WriteMsg::Progress(Box::new(progress("b")))));
        assert!(p.add(polled("a", None)));
        assert_eq!(p.jobs(), 2, "two jobs with progress, one of them with statistics");
        assert!(!p.add(WriteMsg::Close));
    }

    #[test]
    fn a_failed_write_goes_back_beneath_newer_results() {
        let mut older = Pending::default();
        older.add(polled("a", Some("old")));
        older.add(polled("a", Some("old2")));
        let mut p = Pending::default();
        p.add(polled("a", Some("new")));
        p.add(polled("b", None));
        p.restore(Vec::new(), older.stats.into_values().collect());
        let a = &p.stats["a"];
        assert_eq!((a.polls, a.failed, a.trailing_failures, a.any_ok), (3, 3, 3, false));
        assert_eq!(a.last_error.as_deref(), Some("new"));
        assert_eq!(p.stats["b"].polls, 1);
    }
}
