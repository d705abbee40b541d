//! `oma-lab`: a local OMA lab on a fresh machine.
//!
//! - `oma-lab up` — MariaDB (same order as the tests) + sim-vma + a real `oma-api`; prints URLs, a
//!   `mariadb` command line and example curl commands; runs until Ctrl-C or SIGTERM, then cleans up.
//! - `oma-lab play scenarios/X.toml` — walk one scenario and show what the OMA does.
//! - `oma-lab start|stop|restart|kill oma`, `oma-lab status` — act on the OMA of the running `up`.

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
