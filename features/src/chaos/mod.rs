//! `oma-lab chaos`: seeded chaos runs that look for what no scripted scenario finds. Each run
//! draws a schedule from its seed ([`schedule`]) — jobs with what the VMA will do with them,
//! faults, restarts, kills, outages — plays it against real parts ([`world`]: the run's own
//! MariaDB, sim-vma, one or two `oma-api` processes), watches it ([`observe`]) and judges it
//! ([`oracle`]). A run that breaks an invariant is written to a file that `--replay` runs again
//! exactly, and shrunk to the fewest events that still break it; reports go to `target/chaos/`
//! ([`report`]). [`soak`] runs one long schedule and tracks the OMA's resources over time.

pub mod observe;
pub mod oracle;
pub mod report;
pub mod schedule;
pub mod server;
pub mod soak;
pub mod vma_scripts;
pub mod world;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use oracle::{Checks, Evidence, FinalRow, Poll, Violation};
use schedule::{Origin, Schedule, Shape};
use server::ChaosServer;
use world::{Timing, World};

/// Seeds the test command runs: each was seen to pass with the fixed code and to kill or cut
/// off the database (11, 23 and 42 with two OMAs).
pub const CI_SEEDS: [u64; 4] = [11, 23, 42, 77];
/// Seeds the test command runs with `--multi-disk`: 103 has two OMAs stopped and started while
/// jobs of 3 and 4 disks copy; with the OMA's multi-disk rule removed it breaks
/// `completed_after_the_last_disk` for both.
pub const CI_MULTI_DISK_SEEDS: [u64; 1] = [103];

/// How long after the last disturbance every job must have reached its outcome.
const SETTLE: Duration = Duration::from_secs(15);
/// How soon after a disturbance ends every active job must be polled again.
const REPOLL_BOUND: Duration = Duration::from_secs(4);

/// What one run found.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub omas: usize,
    pub jobs: usize,
    pub events_by_kind: BTreeMap<&'static str, usize>,
    pub checks: Checks,
    pub violations: Vec<Violation>,
    pub wall_ms: u128,
    /// Where the run's files are (OMA logs, the schedule, the run's own report).
    pub dir: PathBuf,
    /// Last lines of each OMA log, journal excerpts and rows of the jobs a violation names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub diagnostics: Vec<String>,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Play `schedule` once and judge it.
pub async fn run_once(schedule: &Schedule, server: &mut ChaosServer, dir: &Path) -> anyhow::Result<RunReport> {
    Ok(run_sampled(schedule, server, dir, None).await?.0)
}

/// [`run_once`], sampling the OMAs' resources every `soak_every` if given.
async fn run_sampled(
    schedule: &Schedule,
    server: &mut ChaosServer,
    dir: &Path,
    soak_every: Option<Duration>,
) -> anyhow::Result<(RunReport, Vec<soak::SoakSample>)> {
    let began = Instant::now();
    let timing = Timing::default();
    let mut schedule = schedule.clone();
    if !server.can_kill() {
        schedule.events.retain(|e| !matches!(e.event, schedule::Event::DbKill { .. }));
        schedule.db_kills = false;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("schedule.toml"), schedule.to_toml())?;
    let mut world = World::set_up(schedule.clone(), timing.clone(), server, dir).await?;
    let observations = Arc::new(std::sync::Mutex::new(observe::Observations::default()));
    let stop = CancellationToken::new();
    let observer =
        tokio::spawn(observe::observe(world.pool.clone(), world.omas.clone(), observations.clone(), stop.clone()));
    let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sampler = soak_every.map(|every| {
        tokio::spawn(soak::sample(world.pool.clone(), world.omas.clone(), every, samples.clone(), stop.clone()))
    });

    // The timeline: job creations and event beginnings at their times, endings when they are due.
    let mut pending: Vec<(u64, Step)> = Vec::new();
    for (i, job) in schedule.jobs.iter().enumerate() {
        if job.origin == Origin::Api {
            pending.push((job.at_ms, Step::Create(i)));
        }
    }
    for e in &schedule.events {
        pending.push((e.at_ms, Step::Begin(e.event.clone())));
    }
    let mut creating = Vec::new();
    while !pending.is_empty() {
        pending.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
        let (at, step) = pending.pop().expect("not empty");
        let now = world.now_ms();
        if at > now {
            tokio::time::sleep(Duration::from_millis(at - now)).await;
        }
        match step {
            Step::Create(i) => creating.extend(world.create_job(i).await),
            Step::Begin(event) => {
                let lasts = event.lasts().as_millis() as u64;
                if let Some(ending) = world.begin(&event, server).await {
                    pending.push((world.now_ms() + lasts, Step::End(ending)));
                }
            }
            Step::End(ending) => world.end(ending, server).await,
        }
    }
    let events_over = world.now_ms().max(schedule.duration_ms);
    if events_over > world.now_ms() {
        tokio::time::sleep(Duration::from_millis(events_over - world.now_ms())).await;
    }
    for create in creating {
        // An OMA cut off from its database answers within its database timeout.
        let _ = tokio::time::timeout(Duration::from_secs(10), create).await;
    }
    world.heal(server).await;
    let healed = Instant::now();
    let healed_at = chrono::Utc::now();
    settle(&world).await;
    // The last quiet window (from the heal) is watched until every job still active has been
    // polled in it (what invariant 6 asks of it), or for the whole bound.
    while healed.elapsed() < REPOLL_BOUND && !every_active_job_polled_since(&world, healed_at).await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let _ = observer.await;
    if let Some(sampler) = sampler {
        let _ = sampler.await;
    }

    let rows = final_rows(&world).await?;
    let polls: Vec<Poll> = world
        .sim
        .state
        .journal_entries(None, usize::MAX)
        .into_iter()
        .filter(|e| e.method == "GET" && e.path.starts_with("/api/v1/progress/"))
        .filter_map(|e| {
            Some(Poll {
                job: e.job?,
                at: e.at,
                client: e.client.map(|c| c.to_string()),
                latency: Duration::from_micros((e.latency_ms * 1000.0) as u64),
            })
        })
        .collect();
    let log_lines: Vec<String> = {
        let omas = world.omas.lock().await;
        let mut lines = Vec::new();
        for i in 0..omas.len() {
            // Every process of the slot, older generations included: their files stay in the run dir.
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(&format!("oma{i}-")) && name.ends_with(".log") {
                    lines.extend(std::fs::read_to_string(entry.path()).unwrap_or_default().lines().map(str::to_string));
                }
            }
        }
        lines
    };
    let marks = world.marks.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let observations = std::mem::take(&mut *observations.lock().unwrap_or_else(|p| p.into_inner()));
    let jobs = world.job_records();
    let (violations, checks) = oracle::check(&Evidence {
        jobs: &jobs,
        marks: &marks,
        observations: &observations,
        rows: &rows,
        polls: &polls,
        log_lines: &log_lines,
        poll_interval: timing.poll_interval,
        repoll_bound: REPOLL_BOUND,
    });
    let diagnostics = if violations.is_empty() {
        Vec::new()
    } else {
        report::diagnostics(&world, &violations, &polls, &marks, &rows).await
    };
    let report = RunReport {
        seed: schedule.seed,
        omas: schedule.omas,
        jobs: schedule.jobs.len(),
        events_by_kind: schedule.events_by_kind(),
        checks,
        violations,
        wall_ms: began.elapsed().as_millis(),
        dir: dir.to_path_buf(),
        diagnostics,
    };
    std::fs::write(dir.join("marks.json"), serde_json::to_string_pretty(&marks)?)?;
    world.tear_down(server).await;
    let samples = std::mem::take(&mut *samples.lock().unwrap_or_else(|p| p.into_inner()));
    Ok((report, samples))
}

/// Soak: one long run at a low event rate, resources sampled; writes `soak.md` and `soak.json`.
/// Returns whether the run passed and the OMA stayed stable.
pub async fn soak(seed: u64, duration: Duration, out: &Path) -> anyhow::Result<bool> {
    let mut server = ChaosServer::start().await?;
    let shape = Shape { jobs: 30, duration, omas: Some(2), db_kills: true, event_rate: 0.1, multi_disk: false };
    let mut schedule = Schedule::generate(seed, &shape);
    // Jobs run for the whole soak: their scripts end within it, spread over it.
    for job in &mut schedule.jobs {
        if job.origin == Origin::Api {
            job.at_ms = job.at_ms.min(schedule.duration_ms.saturating_sub(1000));
        }
    }
    let every = (duration / 40).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let dir = out.join(format!("soak-{seed}"));
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "[chaos] soak: seed {seed}, {} of events, sampling every {}",
        humantime::format_duration(duration),
        humantime::format_duration(every)
    );
    let (report, samples) = run_sampled(&schedule, &mut server, &dir, Some(every)).await?;
    let verdict = soak::verdict(&samples, Timing::default().poll_interval);
    report::write_run(&dir, &schedule, &report)?;
    report::write_soak(out, &report, &verdict, &samples)?;
    println!(
        "[chaos] soak {}: {} samples over {:.0} s; oma0 RSS {:.1} → {:.1} MiB, descriptors {:.0} → {:.0}, worst poll age {:.1} s, {} violation(s){}",
        if verdict.stable && report.passed() { "stable" } else { "NOT stable" },
        verdict.samples,
        verdict.duration_s,
        verdict.rss_first_quarter_mib,
        verdict.rss_last_quarter_mib,
        verdict.fds_first_quarter,
        verdict.fds_last_quarter,
        verdict.worst_poll_age_s,
        report.violations.len(),
        if verdict.why.is_empty() { String::new() } else { format!(": {}", verdict.why.join("; ")) }
    );
    if !report.passed() {
        report::print_failure(&schedule, &report);
    }
    Ok(verdict.stable && report.passed())
}

enum Step {
    Create(usize),
    Begin(schedule::Event),
    End(world::Ending),
}

/// Wait until every job that must end has ended (or [`SETTLE`] is over).
async fn settle(world: &World) {
    let restarts: Vec<_> = world
        .marks
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|m| m.what.starts_with("VMA restarted"))
        .map(|m| m.at)
        .collect();
    let jobs = world.job_records();
    let must_end: Vec<&str> = jobs
        .iter()
        .filter(|r| !oracle::allowed_outcomes(r, &restarts).iter().any(|o| o.status == "replicating"))
        .filter_map(|r| r.id.as_deref())
        .collect();
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        // A database that does not answer has not shown the jobs ended: keep waiting.
        if let Ok(unfinished) = active_job_ids(world).await {
            if !must_end.iter().any(|id| unfinished.iter().any(|u| u == id)) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ids of the jobs in an active status.
async fn active_job_ids(world: &World) -> Result<Vec<String>, sqlx::Error> {
    let sql = format!("SELECT id FROM replication_jobs WHERE status IN ({})", oma::domain::active_status_sql_list());
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&world.pool).await
}

/// Whether every job of the run that is still active, and known to the VMA, has been polled
/// since `since`.
async fn every_active_job_polled_since(world: &World, since: chrono::DateTime<chrono::Utc>) -> bool {
    let Ok(active) = active_job_ids(world).await else { return false };
    let polled: std::collections::HashSet<String> = world
        .sim
        .state
        .journal_entries(None, usize::MAX)
        .into_iter()
        .filter(|e| e.at >= since && e.method == "GET" && e.path.starts_with("/api/v1/progress/"))
        .filter_map(|e| e.job)
        .collect();
    // As invariant 6 counts them: jobs the VMA was given a script for (a job whose /replicate
    // never reached the VMA is unknown to it, and its polls name no job).
    let scripted: std::collections::HashSet<String> =
        world.job_records().into_iter().filter(|r| r.script_from.is_some()).filter_map(|r| r.id).collect();
    active.iter().filter(|id| scripted.contains(*id)).all(|id| polled.contains(id))
}

async fn final_rows(world: &World) -> anyhow::Result<HashMap<String, FinalRow>> {
    let rows = sqlx::query(
        "SELECT j.id, j.status, j.vma_error_classification, c.current_job_id, j.completed_at FROM replication_jobs j \
         LEFT JOIN vm_replication_contexts c ON c.context_id = j.vm_context_id",
    )
    .fetch_all(&world.pool)
    .await?;
    let mut out = HashMap::new();
    for row in rows {
        out.insert(
            row.try_get::<String, _>(0)?,
            FinalRow {
                status: row.try_get(1)?,
                class: row.try_get(2)?,
                context_current_job: row.try_get(3)?,
                completed_at: row.try_get(4)?,
            },
        );
    }
    Ok(out)
}

/// Options of `oma-lab chaos`.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub seeds: Vec<u64>,
    pub shape: Shape,
    pub replay: Option<PathBuf>,
    pub shrink: bool,
    /// Where reports go (`target/chaos/` by default).
    pub out: PathBuf,
    /// Runs at a time, each worker with its own MariaDB server.
    pub parallel: usize,
}

/// Play every seed (or the replay file), `options.parallel` runs at a time, each worker on its
/// own MariaDB server (a database kill in one run must not touch another); then shrink each
/// failing schedule and write the reports. Returns whether every run passed.
pub async fn run(options: &ChaosOptions) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&options.out)?;
    let schedules: Vec<Schedule> = match &options.replay {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
            vec![Schedule::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?]
        }
        None => options.seeds.iter().map(|seed| Schedule::generate(*seed, &options.shape)).collect(),
    };
    let total = schedules.len();
    let workers = options.parallel.clamp(1, total.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let worker = |_: usize| async {
        let mut server = ChaosServer::start().await?;
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(schedule) = schedules.get(i) else { break };
            let dir = options.out.join(format!("seed-{}", schedule.seed));
            let _ = std::fs::remove_dir_all(&dir);
            let report = run_once(schedule, &mut server, &dir).await?;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            println!(
                "[chaos] run {n}/{total} seed {}: {} in {:.1} s ({} OMA(s), {} jobs, events {:?})",
                schedule.seed,
                if report.passed() {
                    "passed".to_string()
                } else {
                    format!("{} violation(s)", report.violations.len())
                },
                report.wall_ms as f64 / 1000.0,
                report.omas,
                report.jobs,
                report.events_by_kind
            );
            report::write_run(&dir, schedule, &report)?;
            mine.push((i, report));
        }
        anyhow::Ok(mine)
    };
    let mut reports: Vec<(usize, RunReport)> = Vec::with_capacity(total);
    for result in futures::future::join_all((0..workers).map(worker)).await {
        reports.extend(result?);
    }
    reports.sort_by_key(|(i, _)| *i);
    let mut server = None;
    for (i, report) in reports.iter().filter(|(_, r)| !r.passed()) {
        let schedule = &schedules[*i];
        report::print_failure(schedule, report);
        let replay = options.out.join(format!("failing-seed-{}.toml", schedule.seed));
        std::fs::write(&replay, schedule.to_toml())?;
        println!(
            "[chaos] schedule written to {} (replay: oma-lab chaos --replay {})",
            replay.display(),
            replay.display()
        );
        if options.shrink {
            if server.is_none() {
                server = Some(ChaosServer::start().await?);
            }
            let server = server.as_mut().expect("started above");
            let minimal = shrink(schedule, report, server, &options.out).await?;
            let file = options.out.join(format!("minimal-seed-{}.toml", schedule.seed));
            std::fs::write(&file, minimal.to_toml())?;
            println!(
                "[chaos] shrunk to {} event(s), still breaking {}: {}\n{}",
                minimal.events.len(),
                report.violations[0].invariant,
                file.display(),
                minimal.to_toml()
            );
        }
    }
    let reports: Vec<RunReport> = reports.into_iter().map(|(_, r)| r).collect();
    let summary = report::write_summary(&options.out, &reports)?;
    println!("[chaos] report: {}", summary.display());
    Ok(reports.iter().all(RunReport::passed))
}

/// Drop events while the first violation's invariant still breaks: the schedule that is left is
/// one where every event matters.
async fn shrink(
    schedule: &Schedule,
    report: &RunReport,
    server: &mut ChaosServer,
    out: &Path,
) -> anyhow::Result<Schedule> {
    let invariant = report.violations[0].invariant;
    let mut current = schedule.clone();
    let mut i = 0;
    while i < current.events.len() {
        let mut candidate = current.clone();
        candidate.events.remove(i);
        let dir = out.join(format!("shrink-{}", schedule.seed));
        let _ = std::fs::remove_dir_all(&dir);
        let again = run_once(&candidate, server, &dir).await?;
        let still = again.violations.iter().any(|v| v.invariant == invariant);
        println!(
            "[chaos] shrinking seed {}: without event {} of {} ({}): {}",
            schedule.seed,
            i + 1,
            current.events.len(),
            current.events[i].event.kind(),
            if still { "still breaks it, dropped" } else { "passes, kept" }
        );
        if still {
            current = candidate;
        } else {
            i += 1;
        }
    }
    Ok(current)
}
