//! `oma-lab play scenarios/X.toml`: set up what the scenario describes (the OMA's rows as a
//! previous OMA left them, the VMA's jobs and faults), start a real `oma-api`, walk the timeline,
//! show what the OMA does, and check the scenario's expectations.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sim_vma::scenario::{Action, Scenario};

use crate::lab::Lab;
use oma_test_support::SeedJob;

/// Log phrases worth showing: while a scenario plays, and as evidence in the sign-off report.
pub const KEY_PHRASES: [&str; 15] = [
    "Starting intelligent job recovery",
    "No active jobs found",
    "active jobs requiring recovery",
    "Recovery decision",
    "still running on VMA",
    "Successfully restarted",
    "completed on VMA",
    "reports \"completed\" after each disk",
    "marked as",
    "VMA unreachable",
    "not found on VMA",
    "VMA reports job failed",
    "Found job not being polled",
    "stalled",
    "Total processed",
];

#[derive(Debug)]
pub struct PlayReport {
    pub name: String,
    pub met: bool,
    pub outcomes: Vec<String>,
}

pub async fn play_file(path: &Path, timeout: Duration) -> anyhow::Result<PlayReport> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let scenario = Scenario::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    play(&scenario, timeout).await
}

pub async fn play(scenario: &Scenario, timeout: Duration) -> anyhow::Result<PlayReport> {
    let say = |line: String| println!("[{}] {line}", scenario.name);
    let mut lab = Lab::new(&scenario.name).await?;
    let result = walk(&mut lab, scenario, timeout, &say).await;
    if result.is_err() {
        say(lab.diagnostics(scenario.expect.first().map(|e| e.job.as_str())).await);
    }
    lab.teardown().await;
    result
}

async fn walk(
    lab: &mut Lab,
    scenario: &Scenario,
    timeout: Duration,
    say: &dyn Fn(String),
) -> anyhow::Result<PlayReport> {
    if !scenario.description.is_empty() {
        say(scenario.description.trim().replace('\n', " "));
    }
    let mut names: HashMap<String, Vec<String>> = HashMap::new();
    for job in &scenario.oma_jobs {
        let mut seed = SeedJob::replicating(&job.id, job.progress_percent, job.updated_minutes_ago);
        seed.status = job.status.clone();
        seed.disk_bytes = scenario.disk_sizes(job);
        if job.never_polled {
            seed.last_poll_minutes_ago = None;
            seed.polling_started_minutes_ago = None;
        }
        let n = lab.seed_job(&seed).await?;
        say(format!(
            "OMA database: job {} {} at {}% (last update {} min ago), export names {:?}",
            job.id, job.status, job.progress_percent, job.updated_minutes_ago, n
        ));
        names.insert(job.id.clone(), n);
    }
    for spec in scenario.job_specs() {
        let id = spec.id.clone().expect("checked by the parser");
        let mut spec = spec.clone();
        spec.id = None;
        if spec.export_names.is_none() {
            spec.export_names = names.get(&id).cloned();
        }
        lab.control.put_job(&id, &spec).await?;
        say(format!("VMA: job {id} is {}", spec.mode));
    }
    if let Some(f) = &scenario.faults {
        lab.control.set_faults(f).await?;
        say(format!("VMA faults: {}", serde_json::to_string(f)?));
    }
    let mut config = lab.oma_config();
    config.extra_env = scenario.oma_settings.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let started = Instant::now();
    lab.start_oma_with(config).await?;
    say("OMA started".into());
    // Show new key lines only (the lab has one OMA process).
    let mut shown = 0usize;
    let show_logs = |lab: &Lab, shown: &mut usize| {
        let new = lab.oma().log.since(*shown);
        *shown += new.len();
        for line in new.iter().filter(|l| KEY_PHRASES.iter().any(|k| l.contains(k))) {
            say(format!("  oma: {}", line.trim()));
        }
    };
    for (at, action) in scenario.steps() {
        while started.elapsed() < at {
            show_logs(lab, &mut shown);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        say(format!("t={:.1}s timeline: {action:?}", started.elapsed().as_secs_f64()));
        match action {
            Action::SetJob(id, spec) => {
                lab.control.put_job(&id, &spec).await?;
            }
            Action::Faults(f) => {
                lab.control.set_faults(&f).await?;
            }
            Action::ClearFaults => {
                lab.control.clear_faults().await?;
            }
            Action::Restart(down) => {
                lab.control.restart(down.map(|d| format!("{}ms", d.as_millis())).as_deref()).await?;
            }
            Action::ForgetJob(id) => {
                lab.control.forget_job(&id).await?;
            }
            Action::Oma(what) => match what.as_str() {
                "oma_stop" => drop(lab.oma_mut().stop().await?),
                "oma_kill" => lab.oma_mut().kill().await?,
                "oma_start" => lab.oma_mut().start_again().await?,
                _ => {
                    lab.oma_mut().stop().await?;
                    lab.oma_mut().start_again().await?;
                }
            },
        }
    }
    let deadline = Instant::now() + timeout;
    let mut last: HashMap<String, String> = HashMap::new();
    loop {
        show_logs(lab, &mut shown);
        let mut all_met = true;
        let mut outcomes = Vec::new();
        for job in &scenario.oma_jobs {
            let row = lab.job(&job.id).await?;
            let state = format!(
                "{} {:.1}% class={}",
                row.status,
                row.progress_percent,
                row.vma_error_classification.as_deref().unwrap_or("-"),
            );
            if last.get(&job.id) != Some(&state) {
                say(format!("  job {}: {state}", job.id));
                last.insert(job.id.clone(), state.clone());
            }
            let polled =
                row.vma_last_poll_at.map(|t| t.format("%H:%M:%S%.3f").to_string()).unwrap_or_else(|| "never".into());
            outcomes.push(format!("{}: {state} last poll {polled}", job.id));
        }
        for e in &scenario.expect {
            let row = lab.job(&e.job).await?;
            let fresh = row.vma_last_poll_at.is_some_and(|t| (chrono::Utc::now() - t).num_seconds() < 3);
            let mut met = row.status.as_str() == e.status
                && e.classification.as_deref().is_none_or(|c| row.vma_error_classification.as_deref() == Some(c))
                && (!e.polled || fresh);
            if met && e.all_disks_copied {
                let disks = scenario.oma_jobs.iter().find(|j| j.id == e.job).map(|j| scenario.disk_sizes(j).len());
                let view = lab.control.get_job(&e.job).await?;
                met = view["status"] == "completed" && view["disk"].as_u64().map(|d| d as usize) == disks;
                if !met {
                    bail!(
                        "job {} is {} while the VMA was at disk {} ({}) of {:?}: finalized before every disk was copied",
                        e.job, row.status, view["disk"], view["status"], disks
                    );
                }
            }
            all_met &= met;
        }
        // Expectations of an unfinished status must also hold over a short window.
        let settled =
            scenario.expect.iter().all(|e| matches!(e.status.as_str(), "completed" | "failed" | "replication_failed"))
                || started.elapsed()
                    > Duration::from_secs(3) + scenario.steps().last().map(|s| s.0).unwrap_or_default();
        if all_met && settled {
            say(format!("✅ expectations met after {:.1}s", started.elapsed().as_secs_f64()));
            return Ok(PlayReport { name: scenario.name.clone(), met: true, outcomes });
        }
        if Instant::now() > deadline {
            for e in &scenario.expect {
                say(format!("❌ expected {} to be {} {:?}", e.job, e.status, e.classification));
            }
            bail!("scenario {} did not reach its expectations within {timeout:?}", scenario.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
