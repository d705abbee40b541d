//! `oma-lab`: a local OMA lab on a fresh machine.
//!
//! - `oma-lab up` — MariaDB (same order as the tests) + sim-vma + a real `oma-api`; prints URLs, a
//!   `mariadb` command line and example curl commands; runs until Ctrl-C or SIGTERM, then cleans up.
//! - `oma-lab play scenarios/X.toml` — walk one scenario and show what the OMA does.
//! - `oma-lab start|stop|restart|kill oma`, `oma-lab status` — act on the OMA of the running `up`.
//! - `oma-lab chaos [--seed S] [--runs N] [--replay FILE] [--soak]` — seeded chaos runs.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use oma_acceptance::local_lab::{self, UpOptions};

#[derive(Parser)]
#[command(name = "oma-lab", version, about = "Run an OMA lab locally: MariaDB + sim-vma + oma-api")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start MariaDB, sim-vma and oma-api; print how to reach them; run until Ctrl-C
    Up {
        /// sim-vma seed
        #[arg(long)]
        seed: Option<u64>,
        /// OMA poll interval
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        poll_interval: std::time::Duration,
        /// OMA health monitor interval
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        health_interval: std::time::Duration,
        /// Load this scenario into sim-vma at start (its OMA jobs are not seeded: use `play`)
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Walk one scenario against a fresh lab and check its expectations (exit 1 if not met)
    Play {
        scenario: PathBuf,
        /// How long to wait for the expectations after the timeline
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Start the lab's OMA (if stopped)
    Start { what: Target },
    /// Stop the lab's OMA with SIGTERM
    Stop { what: Target },
    /// SIGTERM then start the lab's OMA
    Restart { what: Target },
    /// SIGKILL the lab's OMA
    Kill { what: Target },
    /// Show the running lab
    Status,
    /// Seeded chaos runs against real parts: faults, restarts, kills and outages drawn from a
    /// seed, every run judged against the system's invariants (reports in target/chaos/)
    Chaos {
        /// First seed (default: drawn at random and printed); runs use SEED, SEED+1, …
        #[arg(long)]
        seed: Option<u64>,
        /// How many runs
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        runs: u64,
        /// Jobs per run
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u64).range(1..=500))]
        jobs: u64,
        /// How long events happen in a run (then it heals and settles)
        #[arg(long, default_value = "6s", value_parser = parse_run_duration)]
        duration: std::time::Duration,
        /// OMA processes (default: 1 or 2, drawn from the seed)
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=2))]
        omas: Option<u64>,
        /// Events per second of a run, on average
        #[arg(long, default_value_t = 1.0)]
        event_rate: f64,
        /// Give half the completing jobs 2-4 disks copied one after another (defect 13)
        #[arg(long)]
        multi_disk: bool,
        /// Run this schedule file again exactly (written by a failing run)
        #[arg(long, conflicts_with_all = ["seed", "runs", "soak"])]
        replay: Option<PathBuf>,
        /// Do not shrink a failing schedule
        #[arg(long)]
        no_shrink: bool,
        /// One long run that tracks the OMA's memory, CPU, descriptors and poll ages (`--duration
        /// 1h` for the guide's "stable for 1+ hours"; 60 s by default)
        #[arg(long)]
        soak: bool,
        /// Where reports go
        #[arg(long, default_value = "target/chaos")]
        out: PathBuf,
        /// Runs at a time, each with its own MariaDB server (runs mostly wait: 2 fit on 2 cores)
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
        parallel: u64,
    },
}

fn parse_run_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (use e.g. 6s, 2m, 1h)"))?;
    if d < std::time::Duration::from_secs(1) || d > std::time::Duration::from_secs(24 * 3600) {
        return Err(format!("{s}: must be between 1s and 24h"));
    }
    Ok(d)
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Target {
    Oma,
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up { seed, poll_interval, health_interval, scenario } => {
            let options = UpOptions { seed, poll_interval, health_interval, scenario };
            local_lab::up(options, oma::startup::shutdown_signal()).await.map(|()| 0)
        }
        Command::Play { scenario, timeout } => {
            let report = oma_acceptance::play::play_file(&scenario, timeout)
                .await
                .with_context(|| format!("playing {}", scenario.display()))?;
            for o in &report.outcomes {
                println!("{o}");
            }
            Ok(if report.met { 0 } else { 1 })
        }
        Command::Start { what: Target::Oma } => local_lab::act_on_oma("start").await.map(|()| 0),
        Command::Stop { what: Target::Oma } => local_lab::act_on_oma("stop").await.map(|()| 0),
        Command::Restart { what: Target::Oma } => local_lab::act_on_oma("restart").await.map(|()| 0),
        Command::Kill { what: Target::Oma } => local_lab::act_on_oma("kill").await.map(|()| 0),
        Command::Status => local_lab::print_status().await.map(|()| 0),
        Command::Chaos {
            seed,
            runs,
            jobs,
            duration,
            omas,
            event_rate,
            multi_disk,
            replay,
            no_shrink,
            soak,
            out,
            parallel,
        } => {
            if !(0.0..=20.0).contains(&event_rate) || event_rate.is_nan() {
                anyhow::bail!("--event-rate {event_rate}: must be between 0 and 20 events a second");
            }
            let first = seed.unwrap_or_else(|| rand::random::<u32>() as u64);
            if soak {
                let duration = if duration == std::time::Duration::from_secs(6) {
                    std::time::Duration::from_secs(60)
                } else {
                    duration
                };
                let stable = oma_acceptance::chaos::soak(first, duration, &out).await?;
                return Ok(if stable { 0 } else { 1 });
            }
            if seed.is_none() && replay.is_none() {
                println!("[chaos] first seed {first} (rerun with --seed {first})");
            }
            let options = oma_acceptance::chaos::ChaosOptions {
                seeds: (first..first + runs).collect(),
                shape: oma_acceptance::chaos::schedule::Shape {
                    jobs: jobs as usize,
                    duration,
                    omas: omas.map(|n| n as usize),
                    db_kills: true,
                    event_rate,
                    multi_disk,
                },
                replay,
                shrink: !no_shrink,
                out,
                parallel: parallel as usize,
            };
            let passed = oma_acceptance::chaos::run(&options).await?;
            Ok(if passed { 0 } else { 1 })
        }
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("oma-lab: {e:#}");
            std::process::exit(1);
        }
    }
}
