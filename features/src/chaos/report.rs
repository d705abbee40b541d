//! Chaos reports under `target/chaos/`: per run its seed, events by kind, the checks made and the
//! violations (Markdown and JSON beside the run's OMA logs and schedule), a summary of every run,
//! and, when a run fails, what helps explain it: the violating jobs' rows, their polls in the
//! journal, the run's timeline and the OMA log tails.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::oracle::{FinalRow, Poll, Violation};
use super::schedule::Schedule;
use super::soak::{SoakSample, Verdict};
use super::world::{Mark, World};
use super::RunReport;

/// Evidence beside a failed run's violations.
pub async fn diagnostics(
    world: &World,
    violations: &[Violation],
    polls: &[Poll],
    marks: &[Mark],
    rows: &HashMap<String, FinalRow>,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut timeline = String::from("timeline:");
    for m in marks {
        let _ = write!(timeline, "\n  {} {}", m.at.format("%H:%M:%S%.3f"), m.what);
    }
    out.push(timeline);
    let mut jobs: Vec<&str> = violations.iter().filter_map(|v| v.job.as_deref()).collect();
    jobs.sort();
    jobs.dedup();
    let records = world.job_records();
    for job in jobs.iter().take(3) {
        let record = records.iter().find(|r| r.id.as_deref() == Some(*job));
        let mut text = format!("job {job}: plan {:?}; final row {:?}", record.map(|r| &r.plan), rows.get(*job));
        let mine: Vec<&Poll> = polls.iter().filter(|p| p.job == *job).collect();
        let _ = write!(text, "\n  journal ({} polls, last 30):", mine.len());
        for p in mine.iter().rev().take(30).rev() {
            let _ = write!(
                text,
                "\n    {} {} ({} ms)",
                p.at.format("%H:%M:%S%.3f"),
                p.client.as_deref().unwrap_or("?"),
                p.latency.as_millis()
            );
        }
        out.push(text);
    }
    let omas = world.omas.lock().await;
    for (i, slot) in omas.iter().enumerate() {
        out.push(format!("oma{i} log tail ({}):\n{}", slot.process.log_path.display(), slot.process.log.tail(40)));
    }
    out
}

/// The seed, the schedule and the violations on the console.
pub fn print_failure(schedule: &Schedule, report: &RunReport) {
    println!("[chaos] seed {} broke {} invariant(s):", schedule.seed, report.violations.len());
    for v in &report.violations {
        println!("  - {} {}: {}", v.invariant, v.job.as_deref().unwrap_or(""), v.detail);
    }
    println!("[chaos] schedule of seed {}:\n{}", schedule.seed, schedule.to_toml());
    for d in &report.diagnostics {
        println!("{d}");
    }
}

fn markdown(schedule: &Schedule, report: &RunReport) -> String {
    let mut md = format!(
        "# Chaos run, seed {}\n\n{} — {} OMA(s), {} jobs, {:.1} s. Replay: `oma-lab chaos --replay {}`\n\n",
        report.seed,
        if report.passed() { "**passed**" } else { "**FAILED**" },
        report.omas,
        report.jobs,
        report.wall_ms as f64 / 1000.0,
        report.dir.join("schedule.toml").display()
    );
    md.push_str("## Events by kind\n\n| kind | events |\n|---|---:|\n");
    for (kind, n) in &report.events_by_kind {
        let _ = writeln!(md, "| {kind} | {n} |");
    }
    md.push_str("\n## Checks made\n\n| invariant | checks |\n|---|---:|\n");
    for (invariant, n) in &report.checks {
        let _ = writeln!(md, "| {invariant} | {n} |");
    }
    md.push_str("\n## Violations\n\n");
    if report.violations.is_empty() {
        md.push_str("None.\n");
    }
    for v in &report.violations {
        let _ = writeln!(md, "- **{}** {}: {}", v.invariant, v.job.as_deref().unwrap_or(""), v.detail);
    }
    if !report.diagnostics.is_empty() {
        md.push_str("\n## Diagnostics\n\n```\n");
        for d in &report.diagnostics {
            md.push_str(d);
            md.push('\n');
        }
        md.push_str("```\n");
    }
    let _ = write!(md, "\n## Schedule\n\n```toml\n{}```\n", schedule.to_toml());
    md
}

/// `report.md` and `report.json` in the run's directory.
pub fn write_run(dir: &Path, schedule: &Schedule, report: &RunReport) -> anyhow::Result<()> {
    std::fs::write(dir.join("report.md"), markdown(schedule, report))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(report)?)?;
    Ok(())
}

/// `summary.md` and `summary.json` over every run; returns the Markdown file's path.
pub fn write_summary(out: &Path, reports: &[RunReport]) -> anyhow::Result<PathBuf> {
    let passed = reports.iter().filter(|r| r.passed()).count();
    let mut md = format!("# Chaos runs\n\n{passed} of {} runs passed.\n\n", reports.len());
    md.push_str(
        "| seed | OMAs | jobs | events | checks | violations | seconds |\n|---:|---:|---:|---|---:|---|---:|\n",
    );
    for r in reports {
        let events: Vec<String> = r.events_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let violated: Vec<&str> = r.violations.iter().map(|v| v.invariant).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {:.1} |",
            r.seed,
            r.omas,
            r.jobs,
            events.join(", "),
            r.checks.values().sum::<usize>(),
            if violated.is_empty() { "none".to_string() } else { violated.join(", ") },
            r.wall_ms as f64 / 1000.0
        );
    }
    let mean = reports.iter().map(|r| r.wall_ms as f64).sum::<f64>() / reports.len().max(1) as f64 / 1000.0;
    let _ = writeln!(md, "\nMean run: {mean:.1} s.");
    let path = out.join("summary.md");
    std::fs::write(&path, md)?;
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(reports)?)?;
    Ok(path)
}

/// `soak.md` and `soak.json` in `out`: the verdict and the samples over time. The QC sign-off
/// report reads `soak.json` for the guide's "stable for 1+ hours" item.
pub fn write_soak(out: &Path, report: &RunReport, verdict: &Verdict, samples: &[SoakSample]) -> anyhow::Result<()> {
    let mut md = format!(
        "# Soak run, seed {}

{} over {:.0} s ({} samples): oma0 resident set {:.1} → {:.1} MiB (first and last quarter), \
         open descriptors {:.0} → {:.0}, worst poll age {:.1} s, mean CPU {:.3} cores; {} invariant violation(s).\n",
        report.seed,
        if verdict.stable && report.passed() { "**Stable**" } else { "**Not stable**" },
        verdict.duration_s,
        verdict.samples,
        verdict.rss_first_quarter_mib,
        verdict.rss_last_quarter_mib,
        verdict.fds_first_quarter,
        verdict.fds_last_quarter,
        verdict.worst_poll_age_s,
        verdict.mean_cpu_cores,
        report.violations.len()
    );
    for why in &verdict.why {
        let _ = writeln!(md, "- {why}");
    }
    for v in &report.violations {
        let _ = writeln!(md, "- violation: {} {}: {}", v.invariant, v.job.as_deref().unwrap_or(""), v.detail);
    }
    md.push_str(
        "\n| s | OMA: RSS MiB / CPU cores / fds | active jobs | poll age p50 / p99 / max (s) |\n|---:|---|---:|---|\n",
    );
    for s in samples {
        let omas: Vec<String> =
            s.omas.iter().map(|o| format!("oma{}: {:.1} / {:.3} / {}", o.oma, o.rss_mib, o.cpu_cores, o.fds)).collect();
        let _ = writeln!(
            md,
            "| {:.0} | {} | {} | {:.2} / {:.2} / {:.2} |",
            s.seconds,
            omas.join("; "),
            s.active_jobs,
            s.poll_age_p50,
            s.poll_age_p99,
            s.poll_age_max
        );
    }
    std::fs::write(out.join("soak.md"), md)?;
    let json = serde_json::json!({"seed": report.seed, "passed": report.passed(), "verdict": verdict,
                                  "violations": report.violations, "samples": samples});
    std::fs::write(out.join("soak.json"), serde_json::to_string_pretty(&json)?)?;
    Ok(())
}
