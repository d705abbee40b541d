//! The `job-recovery` CLI (SPEC §4.8): `scan`, `recover [--dry-run]`, `status`, also spelled the
//! original way (`-action=scan -dry-run`). `recover` uses the service's VMA-validated reconcile.
//! Exit codes: 0 ok, 1 error, 2 usage.

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::config::{ConfigError, Settings};
use crate::db;
use crate::decision::minutes_since;
use crate::reconcile::Caller;
use crate::recovery::{scan, with_recovery_lock};
use crate::services::Services;

#[derive(Parser, Debug)]
#[command(name = "job-recovery", version, about = "Scan for, and recover, orphaned OMA replication jobs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// MariaDB URL
    #[arg(long, global = true, env = "OMA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// VMA API base URL (recover asks the VMA before deciding)
    #[arg(long, global = true, env = "VMA_API_URL", default_value = "http://localhost:9081")]
    pub vma_api_url: String,
    /// Jobs with no contact for longer than this are reported as stagnant (e.g. 30m; a bare number is minutes)
    #[arg(long, global = true, default_value = "30m", value_parser = parse_max_age)]
    pub max_age: Duration,
    /// Machine-readable output
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// List unfinished jobs that no live OMA poller is tracking
    Scan,
    /// Reconcile those jobs with the VMA and apply the decisions
    Recover {
        /// Show the decisions without changing anything
        #[arg(long)]
        dry_run: bool,
    },
    /// Summary of unfinished and orphaned jobs
    Status,
}

/// `--max-age`: a duration (`30m`, `45s`) or a bare number of minutes, within the range of
/// `OMA_RECOVERY_MAX_AGE`.
fn parse_max_age(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let age = match s.parse::<u64>() {
        Ok(minutes) => minutes.checked_mul(60).map(Duration::from_secs).ok_or_else(|| "too large".to_string())?,
        Err(_) => {
            humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 30m, 45s, or a number of minutes)"))?
        }
    };
    let (min, max) = crate::config::ranges::RECOVERY_MAX_AGE;
    if age < min || age > max {
        return Err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ));
    }
    Ok(age)
}

/// Rewrite the original Go flag spelling (`-action=scan -dry-run=true -max-age=30`) to ours.
pub fn normalize_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut iter = args.into_iter();
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut action: Option<String> = None;
    let mut rest = Vec::new();
    let mut pending_action = false;
    for arg in iter {
        if pending_action {
            action = Some(arg);
            pending_action = false;
            continue;
        }
        let trimmed = arg.trim_start_matches('-');
        let dashed = arg.starts_with('-');
        if dashed && (trimmed == "action") {
            pending_action = true;
        } else if dashed && trimmed.starts_with("action=") {
            action = Some(trimmed["action=".len()..].to_string());
        } else if dashed && (trimmed == "dry-run" || trimmed == "dry-run=true") {
            rest.push("--dry-run".to_string());
        } else if dashed && trimmed == "dry-run=false" {
        } else if dashed && !arg.starts_with("--") && trimmed.len() > 1 {
            // Single-dash long flags: -max-age=30 → --max-age=30, -json → --json.
            rest.push(format!("--{trimmed}"));
        } else {
            rest.push(arg);
        }
    }
    if let Some(a) = action {
        out.push(a);
    }
    // `--dry-run` belongs to `recover`; place flags after the subcommand.
    out.extend(rest);
    out
}

/// Run the CLI; returns the process exit code.
pub async fn main(args: Vec<String>) -> i32 {
    let cli = match Cli::try_parse_from(normalize_args(args)) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    match run(cli).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("job-recovery: {e:#}");
            if e.is::<ConfigError>() {
                2
            } else {
                1
            }
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Checked before anything is read or written; a ConfigError exits with 2 (usage).
    let mut settings = Settings::with_defaults(cli.database_url.as_deref().unwrap_or_default(), &cli.vma_api_url)?;
    settings.recovery_max_age = cli.max_age.max(Duration::from_millis(1));
    // A person is waiting: a few seconds for a database that is just starting, not the service's wait.
    let pool =
        db::connect(&settings.database_url, 8, Duration::from_secs(5), "job-recovery's wait", Duration::from_secs(10))
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to the database: {e}"))?;
    let services = Arc::new(Services::new(settings, pool, format!("job-recovery-cli-{}", std::process::id())));
    services.clock.sync_with_database(&services.pool).await?;
    match cli.command {
        Command::Scan => scan_cmd(&services, cli.max_age, cli.json).await,
        Command::Status => status_cmd(&services, cli.max_age, cli.json).await,
        Command::Recover { dry_run } => recover_cmd(&services, dry_run, cli.json).await,
    }
}

async fn scan_cmd(services: &Services, max_age: Duration, json_out: bool) -> anyhow::Result<()> {
    let now = services.clock.now();
    let jobs = db::load_unfinished(&services.pool, None).await?;
    let orphaned: Vec<_> = jobs.iter().filter(|j| !j.poll_lease_live).collect();
    let rows: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            let stagnant = minutes_since(now, j.facts().last_contact());
            json!({
                "job_id": j.id, "vm_name": j.source_vm_name, "status": j.status.as_str(),
                "progress_percent": j.progress_percent, "created_at": j.created_at, "updated_at": j.updated_at,
                "vma_last_poll_at": j.vma_last_poll_at, "stagnant_minutes": (stagnant * 10.0).round() / 10.0,
                "polled_by": if j.poll_lease_live { j.poll_owner.clone() } else { None },
                "orphaned": !j.poll_lease_live,
                "older_than_max_age": stagnant * 60.0 > max_age.as_secs_f64(),
                "vm_context_id": j.vm_context_id,
            })
        })
        .collect();
    if json_out {
        println!("{}", json!({"unfinished_count": jobs.len(), "orphaned_count": orphaned.len(), "jobs": rows}));
        return Ok(());
    }
    println!("🔍 Scanning for orphaned jobs...");
    if orphaned.is_empty() {
        println!("✅ No orphaned jobs found ({} unfinished jobs, all being polled)", jobs.len());
        return Ok(());
    }
    println!("Found {} potentially orphaned jobs:\n", orphaned.len());
    for j in orphaned {
        println!("Job ID: {}", j.id);
        println!("VM Name: {}", j.source_vm_name);
        println!("Status: {}", j.status);
        println!("Created: {}", j.created_at.format("%Y-%m-%d %H:%M:%S"));
        println!("Last Update: {}", j.updated_at.format("%Y-%m-%d %H:%M:%S"));
        println!("Stagnant: {:.1} min", minutes_since(now, j.facts().last_contact()));
        println!("Progress: {:.1}%", j.progress_percent);
        println!("VM Context: {}", j.vm_context_id.as_deref().unwrap_or("-"));
        println!("---");
    }
    Ok(())
}

async fn status_cmd(services: &Services, max_age: Duration, json_out: bool) -> anyhow::Result<()> {
    let counts = db::job_counts(&services.pool).await?;
    let now = services.clock.now();
    let jobs = db::load_unfinished(&services.pool, None).await?;
    let stagnant =
        jobs.iter().filter(|j| minutes_since(now, j.facts().last_contact()) * 60.0 > max_age.as_secs_f64()).count();
    let orphaned = counts.unfinished - counts.polled_by_live_owner;
    if json_out {
        println!(
            "{}",
            json!({"unfinished_jobs": counts.unfinished, "polled_by_live_poller": counts.polled_by_live_owner,
                   "orphaned_jobs": orphaned, "never_polled": counts.never_polled, "stagnant_jobs": stagnant,
                   "healthy": orphaned == 0})
        );
        return Ok(());
    }
    println!("📊 Job recovery status...");
    println!("Job Recovery Status Report");
    println!("=========================");
    println!("Total active replication jobs: {}", counts.unfinished);
    println!("Being polled by a live OMA: {}", counts.polled_by_live_owner);
    println!("Potentially orphaned jobs: {orphaned}");
    println!("Stagnant longer than {}: {stagnant}", humantime::format_duration(max_age));
    if orphaned > 0 {
        println!("Recommended action:");
        println!("  job-recovery recover --dry-run   (then without --dry-run)");
    } else {
        println!("✅ System is healthy - no orphaned jobs detected");
    }
    Ok(())
}

async fn recover_cmd(services: &Services, dry_run: bool, json_out: bool) -> anyhow::Result<()> {
    if !json_out {
        if dry_run {
            println!("🧪 DRY RUN: Would recover orphaned jobs (no changes made)");
        } else {
            println!("🔄 Recovering orphaned jobs...");
        }
    }
    let report =
        with_recovery_lock(&services.pool, Duration::from_secs(30), scan(services, None, Caller::Manual, dry_run))
            .await?
            .ok_or_else(|| anyhow::anyhow!("another recovery scan holds the recovery lock; try again shortly"))??;
    if json_out {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if report.jobs.is_empty() {
        println!("✅ No jobs need recovery");
    }
    for r in &report.jobs {
        println!(
            "Job {} ({}): VMA status={}, decision: {}{}",
            r.job_id,
            r.vm_name,
            r.vma_status,
            r.decision,
            if dry_run { String::new() } else { format!(" → {}", r.outcome.as_str()) }
        );
    }
    if !report.skipped_being_polled.is_empty() {
        println!("Skipped {} jobs being polled by a live OMA", report.skipped_being_polled.len());
    }
    println!("{}", report.summary.log_text());
    if report.summary.errors > 0 {
        anyhow::bail!("{} jobs could not be recovered (see above)", report.summary.errors);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_args(args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn original_spelling_is_accepted() {
        assert_eq!(norm(&["job-recovery", "-action=scan"]), vec!["job-recovery", "scan"]);
        assert_eq!(
            norm(&["job-recovery", "-action=recover", "-dry-run=true"]),
            vec!["job-recovery", "recover", "--dry-run"]
        );
        assert_eq!(
            norm(&["job-recovery", "-action", "status", "-max-age=45"]),
            vec!["job-recovery", "status", "--max-age=45"]
        );
        assert_eq!(
            norm(&["job-recovery", "recover", "--dry-run", "--json"]),
            vec!["job-recovery", "recover", "--dry-run", "--json"]
        );
    }

    #[test]
    fn both_spellings_parse_to_the_same_command() {
        let a = Cli::try_parse_from(norm(&["job-recovery", "-action=recover", "-dry-run"])).unwrap();
        let b = Cli::try_parse_from(norm(&["job-recovery", "recover", "--dry-run"])).unwrap();
        assert_eq!(a.command, b.command);
        assert_eq!(a.command, Command::Recover { dry_run: true });
        let c = Cli::try_parse_from(norm(&["job-recovery", "scan", "-max-age=45"])).unwrap();
        assert_eq!(c.max_age, Duration::from_secs(45 * 60));
        // Found by hand: a bare number of minutes overflowed (a panic); out-of-range ages are refused.
        for bad in ["999999999999999999", "300000000000y", "0", "31days"] {
            let e = Cli::try_parse_from(normalize_args(vec![
                "job-recovery".into(),
                format!("--max-age={bad}"),
                "scan".into(),
            ]));
            assert!(e.is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_action_is_a_usage_error() {
        let e = Cli::try_parse_from(norm(&["job-recovery", "-action=explode"])).unwrap_err();
        assert!(e.use_stderr());
    }
}
