//! What a chaos run must show, from what it did: each job's allowed outcomes follow from its VMA
//! script and the VMA restarts that cut it short; the invariants are checked on the job rows, the
//! observer's samples, sim-vma's journal (who polled what, when) and the OMAs' logs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::observe::{is_terminal, Observations};
use super::schedule::{Origin, VmaScript};
use super::world::{JobRecord, Mark};

/// A job's final state: status and failure class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub status: &'static str,
    pub class: Option<&'static str>,
}

const COMPLETED: Outcome = Outcome { status: "completed", class: None };
const FAILED_ON_VMA: Outcome = Outcome { status: "failed", class: Some("vma_reported_failure") };
const LOST: Outcome = Outcome { status: "failed", class: Some("job_lost") };
const STALLED: Outcome = Outcome { status: "failed", class: Some("vma_stalled") };
const ACTIVE: Outcome = Outcome { status: "replicating", class: None };
const REPLICATION_FAILED: Outcome = Outcome { status: "replication_failed", class: Some("replicate_rejected") };

/// The outcomes a job may end the run with, given its script and when the VMA restarted.
pub fn allowed_outcomes(record: &JobRecord, vma_restarts: &[DateTime<Utc>]) -> Vec<Outcome> {
    let Some(from) = record.script_from else {
        // Created but never given its script (the create's answer was lost, or the VMA restarted
        // in between): it runs on the VMA's defaults, or the VMA forgot it.
        return vec![ACTIVE, LOST, REPLICATION_FAILED];
    };
    let cut = vma_restarts.iter().copied().filter(|r| *r > from).min();
    let decided_at = |after_ms: u64| from + chrono::Duration::milliseconds(after_ms as i64);
    // Before the VMA cut it short, did the script reach its decisive state?
    let reached = |after_ms: u64| cut.is_none_or(|c| decided_at(after_ms) < c);
    let mut out = Vec::new();
    match record.plan.vma {
        VmaScript::Completes { after_ms } if reached(after_ms) => out.push(COMPLETED),
        VmaScript::Fails { after_ms } if reached(after_ms) => out.push(FAILED_ON_VMA),
        VmaScript::Stalls { after_ms } if reached(after_ms) => out.push(STALLED),
        VmaScript::Vanishes { percent, .. } => {
            // Gone from the VMA one way or the other; the OMA knows the job's progress from the
            // database (a seeded job) or only from the polls it made (an API job).
            if percent > 90.0 {
                out.push(COMPLETED);
                if record.plan.origin == Origin::Api {
                    out.push(LOST);
                }
            } else {
                out.push(LOST);
            }
        }
        _ => {}
    }
    if cut.is_some() && !out.contains(&LOST) {
        // The VMA forgot the job: not found, below 90 % as far as the OMA knows, or above it when
        // the VMA had passed 90 % by then and the OMA saw it.
        out.push(LOST);
        let high = matches!(record.plan.vma, VmaScript::Vanishes { percent, .. } if percent > 90.0)
            || record.vma_percent_when_forgotten.is_some_and(|p| p > 90.0);
        if high && !out.contains(&COMPLETED) {
            out.push(COMPLETED);
        }
    }
    if out.is_empty() {
        out.push(ACTIVE);
    }
    out
}

/// An invariant that did not hold.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub job: Option<String>,
    pub detail: String,
}

/// The checks made, by invariant (how many times each was evaluated).
pub type Checks = BTreeMap<&'static str, usize>;

/// The end state of a job row, for the final checks.
#[derive(Debug, Clone)]
pub struct FinalRow {
    pub status: String,
    pub class: Option<String>,
    pub context_current_job: Option<String>,
    /// When the OMA finalized it as completed (`replication_jobs.completed_at`).
    pub completed_at: Option<DateTime<Utc>>,
}

/// One poll as sim-vma's journal has it.
#[derive(Debug, Clone)]
pub struct Poll {
    pub job: String,
    pub at: DateTime<Utc>,
    pub client: Option<String>,
    pub latency: Duration,
}

pub struct Evidence<'a> {
    pub jobs: &'a [JobRecord],
    pub marks: &'a [Mark],
    pub observations: &'a Observations,
    pub rows: &'a HashMap<String, FinalRow>,
    pub polls: &'a [Poll],
    /// Every line every OMA of the run logged.
    pub log_lines: &'a [String],
    pub poll_interval: Duration,
    /// How soon after a disturbance ends every active job must have been polled again.
    pub repoll_bound: Duration,
}

/// Every invariant of the run.
pub fn check(e: &Evidence) -> (Vec<Violation>, Checks) {
    let mut violations = Vec::new();
    let mut checks = Checks::new();
    let restarts: Vec<DateTime<Utc>> =
        e.marks.iter().filter(|m| m.what.starts_with("VMA restarted")).map(|m| m.at).collect();

    // 1. Every job reaches the outcome its VMA history implies.
    for record in e.jobs {
        let Some(id) = &record.id else { continue };
        *checks.entry("reaches_its_outcome").or_default() += 1;
        let allowed = allowed_outcomes(record, &restarts);
        match e.rows.get(id) {
            None => violations.push(Violation {
                invariant: "reaches_its_outcome",
                job: Some(id.clone()),
                detail: "the job row is gone".into(),
            }),
            Some(row) => {
                let matches = |o: &Outcome| {
                    if o.status == "replicating" {
                        !is_terminal(&row.status)
                    } else {
                        row.status == o.status && row.class.as_deref() == o.class
                    }
                };
                if !allowed.iter().any(matches) {
                    violations.push(Violation {
                        invariant: "reaches_its_outcome",
                        job: Some(id.clone()),
                        detail: format!(
                            "ended {} ({:?}); its VMA history allows {allowed:?} ({:?}, script from {:?})",
                            row.status, row.class, record.plan.vma, record.script_from
                        ),
                    });
                }
            }
        }
    }

    // 2. What the observer saw while the run went on (terminal jobs changing, progress going
    //    back, unexpected exits, 5xx).
    *checks.entry("terminal_is_final").or_default() += e.observations.row_reads;
    *checks.entry("progress_never_goes_back").or_default() += e.observations.row_reads;
    *checks.entry("no_5xx").or_default() += e.observations.probes;
    for seen in &e.observations.seen {
        violations.push(Violation {
            invariant: seen.invariant,
            job: seen.job.clone(),
            detail: format!("at {}: {}", seen.at.format("%H:%M:%S%.3f"), seen.detail),
        });
    }

    // 3. One poller per job: polls of one job by two OMAs never overlap, and are at least half an
    //    interval apart; no job is finalized twice.
    let mut by_job: BTreeMap<&str, Vec<&Poll>> = BTreeMap::new();
    for p in e.polls {
        by_job.entry(p.job.as_str()).or_default().push(p);
    }
    let half = chrono::Duration::from_std(e.poll_interval / 2).expect("an interval");
    for (job, mut polls) in by_job {
        polls.sort_by_key(|p| p.at);
        let mut reported = false;
        for pair in polls.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (Some(ca), Some(cb)) = (&a.client, &b.client) else { continue };
            if ca == cb {
                continue;
            }
            *checks.entry("one_poller_per_job").or_default() += 1;
            let a_ends = a.at + chrono::Duration::from_std(a.latency).unwrap_or_default();
            let overlap = b.at < a_ends;
            if (overlap || b.at - a.at < half) && !reported {
                reported = true;
                violations.push(Violation {
                    invariant: "one_poller_per_job",
                    job: Some(job.to_string()),
                    detail: format!(
                        "polled by {ca} at {} and by {cb} at {} ({} ms apart{})",
                        a.at.format("%H:%M:%S%.3f"),
                        b.at.format("%H:%M:%S%.3f"),
                        (b.at - a.at).num_milliseconds(),
                        if overlap { ", overlapping" } else { "" }
                    ),
                });
            }
        }
    }
    for record in e.jobs {
        let Some(id) = &record.id else { continue };
        *checks.entry("finalized_once").or_default() += 1;
        let n = e
            .log_lines
            .iter()
            .filter(|l| {
                l.contains(&format!("Job {id} marked as completed"))
                    || l.contains(&format!("Job {id} marked as failed"))
            })
            .count();
        if n > 1 {
            violations.push(Violation {
                invariant: "finalized_once",
                job: Some(id.clone()),
                detail: format!("finalized {n} times (log lines \"Job {id} marked as …\")"),
            });
        }
    }

    // 4. A finalized job's VM context is released; an active job's is not.
    for record in e.jobs {
        let Some(id) = &record.id else { continue };
        let Some(row) = e.rows.get(id) else { continue };
        *checks.entry("context_follows_the_job").or_default() += 1;
        let holds = row.context_current_job.as_deref() == Some(id.as_str());
        if is_terminal(&row.status) == holds {
            violations.push(Violation {
                invariant: "context_follows_the_job",
                job: Some(id.clone()),
                detail: format!(
                    "job {} but its VM context's current_job_id is {:?}",
                    row.status, row.context_current_job
                ),
            });
        }
    }

    // 5. No recent job is failed because the VMA was merely unreachable (every job here is recent).
    for (id, row) in e.rows {
        *checks.entry("unreachable_never_fails_a_recent_job").or_default() += 1;
        if row.class.as_deref() == Some("vma_unreachable_timeout") {
            violations.push(Violation {
                invariant: "unreachable_never_fails_a_recent_job",
                job: Some(id.clone()),
                detail: "failed as vma_unreachable_timeout although its last contact was minutes ago at most".into(),
            });
        }
    }

    // 6. After every disturbance ends, with nothing else disturbing for the bound, every active job
    //    is polled again within it.
    let bound = chrono::Duration::from_std(e.repoll_bound).expect("a bound");
    for window_start in quiet_windows(e.marks, bound) {
        let window_end = window_start + bound;
        for record in e.jobs {
            let (Some(id), Some(from)) = (&record.id, record.script_from) else { continue };
            if from >= window_start || !active_at(e.observations, id, window_end) {
                continue;
            }
            *checks.entry("polled_after_every_disturbance").or_default() += 1;
            let polled = e.polls.iter().any(|p| &p.job == id && p.at >= window_start && p.at <= window_end);
            if !polled {
                violations.push(Violation {
                    invariant: "polled_after_every_disturbance",
                    job: Some(id.clone()),
                    detail: format!(
                        "active, and not polled between {} and {} (the disturbances had ended)",
                        window_start.format("%H:%M:%S%.3f"),
                        window_end.format("%H:%M:%S%.3f")
                    ),
                });
            }
        }
    }

    // 7. A multi-disk job is completed only after the VMA copied its last disk (the original
    //    completed it at the first disk's "completed", reference §10 defect 13).
    for record in e.jobs.iter().filter(|r| r.plan.disks.is_some()) {
        *checks.entry("completed_after_the_last_disk").or_default() += 1;
        violations.extend(completed_before_its_last_disk(record, e.rows, &restarts));
    }

    // 8. No OMA panics or grows without bound.
    *checks.entry("no_panic").or_default() += 1;
    if let Some(line) = e.log_lines.iter().find(|l| l.contains("panicked at")) {
        violations.push(Violation { invariant: "no_panic", job: None, detail: line.clone() });
    }
    for (oma, kib) in &e.observations.peak_rss_kib {
        *checks.entry("bounded_memory").or_default() += 1;
        if *kib > 250 * 1024 {
            violations.push(Violation {
                invariant: "bounded_memory",
                job: None,
                detail: format!("oma{oma} reached {} MiB resident", kib / 1024),
            });
        }
    }
    (violations, checks)
}

/// A multi-disk job the OMA finalized as completed before the VMA's last disk was done. The VMA
/// copies by the clock from no earlier than `script_sent`, so its last disk ends no sooner than
/// `script_sent + after_ms`; the OMA's `completed_at` (the database's clock, the same machine's)
/// must not be earlier. 5 ms are allowed for rounding; a premature completion is a whole disk early.
/// A job the VMA forgot before its end may be assumed completed above 90 % and is not judged here.
fn completed_before_its_last_disk(
    record: &JobRecord,
    rows: &HashMap<String, FinalRow>,
    vma_restarts: &[DateTime<Utc>],
) -> Option<Violation> {
    let (Some(id), Some(sent), Some(disks)) = (&record.id, record.script_sent, &record.plan.disks) else {
        return None;
    };
    let VmaScript::Completes { after_ms } = record.plan.vma else { return None };
    let row = rows.get(id)?;
    let completed_at = row.completed_at.filter(|_| row.status == "completed")?;
    let last_disk_done = sent + chrono::Duration::milliseconds(after_ms as i64);
    if vma_restarts.iter().any(|r| *r > sent && *r < last_disk_done) {
        return None;
    }
    let early = last_disk_done - completed_at;
    (early > chrono::Duration::milliseconds(5)).then(|| Violation {
        invariant: "completed_after_the_last_disk",
        job: Some(id.clone()),
        detail: format!(
            "completed at {} but the VMA's last disk (of {}) was done at {} at the earliest ({} ms later)",
            completed_at.format("%H:%M:%S%.3f"),
            disks.len(),
            last_disk_done.format("%H:%M:%S%.3f"),
            early.num_milliseconds()
        ),
    })
}

/// Ends of disturbances after which nothing disturbs for `bound`, with no disturbance still on.
fn quiet_windows(marks: &[Mark], bound: chrono::Duration) -> Vec<DateTime<Utc>> {
    let mut open: HashMap<&str, usize> = HashMap::new();
    let mut out = Vec::new();
    for (i, m) in marks.iter().enumerate() {
        let Some(what) = m.disturbs.as_deref() else { continue };
        if m.begins {
            *open.entry(what).or_default() += 1;
            continue;
        }
        if let Some(n) = open.get_mut(what) {
            *n = n.saturating_sub(1);
        }
        let all_ended = open.values().all(|n| *n == 0);
        let next_begin = marks[i + 1..].iter().find(|n| n.begins && n.disturbs.is_some()).map(|n| n.at);
        if all_ended && next_begin.is_none_or(|b| b > m.at + bound) {
            out.push(m.at);
        }
    }
    out
}

/// Whether the observer last saw `job` unfinished at or before `at`.
fn active_at(o: &Observations, job: &str, at: DateTime<Utc>) -> bool {
    // Rows are kept when they change: the last one at or before `at` is the state at `at`.
    o.samples.get(job).and_then(|s| s.iter().rev().find(|x| x.at <= at)).is_some_and(|s| !is_terminal(&s.status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::schedule::JobPlan;

    fn record(vma: VmaScript, origin: Origin) -> JobRecord {
        JobRecord {
            plan: JobPlan { name: "chaos-00".into(), origin, at_ms: 0, start_percent: 30.0, vma, disks: None },
            id: Some("job-1".into()),
            created_with: Some(201),
            script_from: Some(t(0)),
            script_sent: Some(t(0)),
            vma_percent_when_forgotten: None,
        }
    }

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-02T12:00:00Z").unwrap().with_timezone(&Utc)
            + chrono::Duration::milliseconds(ms)
    }

    #[test]
    fn a_job_may_end_as_its_script_says_or_lost_when_the_vma_forgot_it_first() {
        let completes = record(VmaScript::Completes { after_ms: 1000 }, Origin::Api);
        assert_eq!(allowed_outcomes(&completes, &[]), vec![COMPLETED]);
        assert_eq!(allowed_outcomes(&completes, &[t(500)]), vec![LOST], "forgotten before it completed");
        assert_eq!(allowed_outcomes(&completes, &[t(1500)]), vec![COMPLETED, LOST], "forgotten after");
        assert_eq!(allowed_outcomes(&completes, &[t(-500)]), vec![COMPLETED], "a restart before it began");
        let runs_on = record(VmaScript::RunsOn, Origin::Seeded);
        assert_eq!(allowed_outcomes(&runs_on, &[]), vec![ACTIVE]);
        assert_eq!(allowed_outcomes(&runs_on, &[t(10)]), vec![LOST]);
        let high = VmaScript::Vanishes { percent: 97.0, after_ms: 100, http200: false };
        assert_eq!(allowed_outcomes(&record(high.clone(), Origin::Seeded), &[]), vec![COMPLETED]);
        assert_eq!(allowed_outcomes(&record(high, Origin::Api), &[]), vec![COMPLETED, LOST]);
        let low = VmaScript::Vanishes { percent: 40.0, after_ms: 100, http200: true };
        assert_eq!(allowed_outcomes(&record(low, Origin::Seeded), &[t(50)]), vec![LOST]);
        assert_eq!(allowed_outcomes(&record(VmaScript::Stalls { after_ms: 100 }, Origin::Api), &[]), vec![STALLED]);
    }

    /// A long run (the soak): a ramp passes 90 % before the VMA restarts, so the OMA may assume the
    /// forgotten job completed; below 90 % it may not.
    #[test]
    fn a_job_forgotten_above_90_percent_may_be_assumed_completed() {
        let mut runs_on = record(VmaScript::RunsOn, Origin::Seeded);
        runs_on.vma_percent_when_forgotten = Some(93.5);
        assert_eq!(allowed_outcomes(&runs_on, &[t(10)]), vec![LOST, COMPLETED]);
        runs_on.vma_percent_when_forgotten = Some(90.0);
        assert_eq!(allowed_outcomes(&runs_on, &[t(10)]), vec![LOST]);
        let mut completes = record(VmaScript::Completes { after_ms: 1000 }, Origin::Api);
        completes.vma_percent_when_forgotten = Some(95.0);
        assert_eq!(allowed_outcomes(&completes, &[t(500)]), vec![LOST, COMPLETED]);
    }

    #[test]
    fn a_multi_disk_job_completed_before_its_last_disk_is_a_violation() {
        let mut job = record(VmaScript::Completes { after_ms: 2000 }, Origin::Api);
        job.plan.disks = Some(vec![1 << 30, 2 << 30, 3 << 30]);
        let rows = |status: &str, at_ms: i64| {
            let row = FinalRow {
                status: status.into(),
                class: None,
                context_current_job: None,
                completed_at: Some(t(at_ms)),
            };
            HashMap::from([("job-1".to_string(), row)])
        };
        let v = completed_before_its_last_disk(&job, &rows("completed", 700), &[]).expect("a violation");
        assert!(v.detail.contains("1300 ms later"), "{}", v.detail);
        assert!(completed_before_its_last_disk(&job, &rows("completed", 2000), &[]).is_none());
        assert!(completed_before_its_last_disk(&job, &rows("completed", 1997), &[]).is_none(), "rounding");
        assert!(completed_before_its_last_disk(&job, &rows("failed", 700), &[]).is_none());
        assert!(completed_before_its_last_disk(&job, &rows("completed", 700), &[t(500)]).is_none(), "forgotten");
        job.plan.disks = None;
        assert!(completed_before_its_last_disk(&job, &rows("completed", 700), &[]).is_none(), "one disk");
    }

    #[test]
    fn a_window_opens_when_every_disturbance_has_ended_and_stays_quiet() {
        let mark = |ms, what: &str, begins| Mark { at: t(ms), what: what.into(), disturbs: Some(what.into()), begins };
        let marks = vec![
            mark(0, "vma", true),
            mark(100, "db", true),
            mark(200, "vma", false), // the database is still away
            mark(300, "db", false),  // quiet from here: a window
            mark(5000, "vma", true),
            mark(5100, "vma", false), // followed by another disturbance too soon
            mark(5200, "db", true),
            mark(5300, "db", false),
        ];
        assert_eq!(quiet_windows(&marks, chrono::Duration::seconds(3)), vec![t(300), t(5300)]);
    }
}
