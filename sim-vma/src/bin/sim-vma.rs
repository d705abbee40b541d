//! `sim-vma`: run the fake VMA. `sim-vma --listen 127.0.0.1:8081 --control 127.0.0.1:8091 --seed 42 --scenario scenarios/x.toml`

use std::net::SocketAddr;

use clap::Parser;
use sim_vma::scenario::Scenario;
use sim_vma::{SimConfig, SimVma};

#[derive(Parser)]
#[command(name = "sim-vma", version, about = "A scriptable fake VMA with fault injection (see sim-vma/README.md)")]
struct Cli {
    /// VMA API address
    #[arg(long, default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Control API address
    #[arg(long, default_value = "127.0.0.1:8091")]
    control: SocketAddr,
    /// Seed of every random choice (printed at start when omitted)
    #[arg(long)]
    seed: Option<u64>,
    /// Scenario file to play at start
    #[arg(long)]
    scenario: Option<std::path::PathBuf>,
    /// Requests kept in the journal
    #[arg(long, default_value_t = sim_vma::journal::DEFAULT_CAPACITY)]
    journal_capacity: usize,
    /// Serve every request through hyper, plain progress polls too (they are answered without it
    /// by default: the same bytes at about half the CPU)
    #[arg(long)]
    no_hot_path: bool,
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_target(false)
        .init();
    let scenario = match &cli.scenario {
        Some(path) => {
            let text = match std::fs::read_to_string(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("sim-vma: cannot read scenario {}: {e}", path.display());
                    std::process::exit(2);
                }
            };
            match Scenario::parse(&text) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("sim-vma: scenario {}: {e}", path.display());
                    std::process::exit(2);
                }
            }
        }
        None => None,
    };
    let seed = cli.seed.or(scenario.as_ref().and_then(|s| s.seed));
    let config = SimConfig {
        listen: cli.listen,
        control: cli.control,
        seed,
        journal_capacity: cli.journal_capacity,
        hot_path: !cli.no_hot_path,
    };
    let sim = match SimVma::start(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sim-vma: cannot listen: {e}");
            std::process::exit(1);
        }
    };
    println!("sim-vma seed {} (rerun with --seed {} to repeat)", sim.seed(), sim.seed());
    println!("VMA API:     {}", sim.vma_url());
    println!("control API: {}/sim/v1", sim.control_url());
    if let Some(s) = &scenario {
        let n = sim_vma::control::apply_scenario(&sim.state, s);
        println!("scenario {:?}: {n} jobs, {} timeline steps", s.name, s.timeline.len());
    }
    shutdown_signal().await;
    tracing::info!("sim-vma stopping");
    sim.shutdown().await;
}

/// SIGTERM or SIGINT (as PID 1 in a container, a process without a handler ignores SIGTERM).
/// sim-vma depends on no crate of ours, so this is its own copy of `oma::startup::shutdown_signal`.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
