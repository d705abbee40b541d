//! `oma-lab`: a local OMA lab on a fresh machine.
//!
//! - `oma-lab up` — MariaDB (same order as the tests) + sim-vma + a real `oma-api`; prints URLs, a
//!   `mariadb` command line and example curl commands; runs until Ctrl-C, then cleans up.
//! - `oma-lab play scenarios/X.toml` — walk one scenario and show what the OMA does.
//! - `oma-lab start|stop|restart|kill oma` — act on the OMA of the running `up`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use oma_acceptance::oma_process::{oma_api_binary, target_dir};
use oma_acceptance::{mariadb::free_port, TestDatabase};
use serde::{Deserialize, Serialize};
use sim_vma::{SimConfig, SimVma};

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
        #[arg(long, default_value = "1s")]
        poll_interval: String,
        /// Load this scenario into sim-vma at start (its OMA jobs are not seeded: use `play`)
        #[arg(long)]
        scenario: Option<PathBuf>,
    },
    /// Walk one scenario against a fresh lab and check its expectations (exit 1 if not met)
    Play {
        scenario: PathBuf,
        /// How long to wait for the expectations after the timeline
        #[arg(long, default_value = "20s")]
        timeout: String,
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

/// What `up` leaves for the other subcommands.
#[derive(Serialize, Deserialize)]
struct LabState {
    oma_pid: Option<u32>,
    oma_env: Vec<(String, String)>,
    oma_url: String,
    oma_log: PathBuf,
    vma_url: String,
    control_url: String,
    mariadb_command: String,
}

fn state_path() -> PathBuf {
    target_dir().parent().map(|p| p.join("oma-lab/state.json")).unwrap_or_else(|| PathBuf::from("oma-lab-state.json"))
}

fn load_state() -> anyhow::Result<LabState> {
    let path = state_path();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no running lab ({} missing): start one with `oma-lab up`", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn save_state(state: &LabState) -> anyhow::Result<()> {
    let path = state_path();
    std::fs::create_dir_all(path.parent().expect("state dir"))?;
    std::fs::write(path, serde_json::to_string_pretty(state)?)?;
    Ok(())
}

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// Start oma-api detached (it outlives this command), logging to the lab's log file.
async fn spawn_oma(state: &mut LabState) -> anyhow::Result<()> {
    let bin = oma_api_binary().await?;
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&state.oma_log)?;
    let child = std::process::Command::new(bin)
        .envs(state.oma_env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    state.oma_pid = Some(child.id());
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{}/health", state.oma_url)).send().await.is_ok_and(|r| r.status().is_success()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("oma-api did not become healthy; see {}", state.oma_log.display())
}

async fn stop_oma(state: &mut LabState, signal: Signal) -> anyhow::Result<()> {
    let Some(pid) = state.oma_pid.filter(|p| alive(*p)) else {
        println!("oma-api is not running");
        state.oma_pid = None;
        return Ok(());
    };
    kill(Pid::from_raw(pid as i32), signal)?;
    for _ in 0..400 {
        if !alive(pid) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("oma-api (pid {pid}) stopped with {signal}");
    state.oma_pid = None;
    Ok(())
}

fn port_or_free(preferred: u16) -> u16 {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        preferred
    } else {
        free_port()
    }
}

async fn up(seed: Option<u64>, poll_interval: String, scenario: Option<PathBuf>) -> anyhow::Result<()> {
    let db = TestDatabase::create(&oma::db::MIGRATOR).await?;
    let sim = SimVma::start(SimConfig {
        listen: format!("127.0.0.1:{}", port_or_free(9081)).parse()?,
        control: format!("127.0.0.1:{}", port_or_free(8091)).parse()?,
        seed,
        ..SimConfig::default()
    })
    .await?;
    if let Some(path) = &scenario {
        let text = std::fs::read_to_string(path)?;
        let client = sim_vma::ControlClient::new(&sim.control_url());
        client.load_scenario(&text).await.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let oma_port = port_or_free(8082);
    let url = db.url.clone();
    let parsed = url.trim_start_matches("mysql://");
    let (userinfo, hostpart) = parsed.split_once('@').unwrap_or(("root", parsed));
    let (hostport, database) = hostpart.split_once('/').unwrap_or((hostpart, ""));
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
    let user = userinfo.split(':').next().unwrap_or("root");
    let logs = target_dir().parent().map(|p| p.join("oma-lab")).expect("target");
    std::fs::create_dir_all(&logs)?;
    let mut state = LabState {
        oma_pid: None,
        oma_env: vec![
            ("OMA_DATABASE_URL".into(), db.url.clone()),
            ("VMA_API_URL".into(), sim.vma_url()),
            ("OMA_LISTEN".into(), format!("127.0.0.1:{oma_port}")),
            ("OMA_POLL_INTERVAL".into(), poll_interval),
            ("OMA_HEALTH_INTERVAL".into(), "10s".into()),
        ],
        oma_url: format!("http://127.0.0.1:{oma_port}"),
        oma_log: logs.join("oma-api.log"),
        vma_url: sim.vma_url(),
        control_url: sim.control_url(),
        mariadb_command: format!("mariadb -h {host} -P {port} -u {user} {database}"),
    };
    spawn_oma(&mut state).await?;
    save_state(&state)?;
    println!(
        "\nOMA lab is up (sim-vma seed {seed}).\n\n  OMA API      {oma}\n  VMA (sim)    {vma}\n  sim control  {ctl}/sim/v1\n  database     {db}\n  OMA log      {log}\n\n\
         Try:\n  curl -s {oma}/health\n  curl -s -XPOST {oma}/api/v1/replications -H 'Content-Type: application/json' \\\n    \
         -d '{{\"source_vm\":{{\"id\":\"vm-1\",\"name\":\"QUAD-APP-01\",\"path\":\"/DC1/vm/QUAD-APP-01\"}},\"ossea_config_id\":1}}'\n  \
         curl -s -XPUT {ctl}/sim/v1/jobs/JOB_ID -d '{{\"mode\":\"running\",\"start_percent\":30,\"rate_per_poll\":1}}'\n  \
         oma-lab restart oma        # or: kill oma, stop oma, start oma\n  \
         curl -s -XPUT {ctl}/sim/v1/faults -d '{{\"unreachable\":{{\"mode\":\"refused\"}}}}'\n  \
         {mariadb} -e \"SELECT id, status, progress_percent, vma_last_poll_at FROM replication_jobs\"\n\nCtrl-C stops everything.",
        seed = sim.seed(),
        oma = state.oma_url,
        vma = state.vma_url,
        ctl = state.control_url,
        db = oma::config::redact_url(&db.url),
        log = state.oma_log.display(),
        mariadb = state.mariadb_command,
    );
    tokio::signal::ctrl_c().await?;
    println!("stopping the lab");
    let mut state = load_state().unwrap_or(state);
    stop_oma(&mut state, Signal::SIGTERM).await?;
    let _ = std::fs::remove_file(state_path());
    sim.shutdown().await;
    db.drop_database().await;
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Up { seed, poll_interval, scenario } => up(seed, poll_interval, scenario).await.map(|_| 0),
        Command::Play { scenario, timeout } => {
            let timeout = humantime::parse_duration(&timeout).context("--timeout")?;
            let report = oma_acceptance::play::play_file(&scenario, timeout).await?;
            for o in &report.outcomes {
                println!("{o}");
            }
            Ok(if report.met { 0 } else { 1 })
        }
        Command::Start { what: Target::Oma } => {
            let mut state = load_state()?;
            if state.oma_pid.is_some_and(alive) {
                println!("oma-api is already running");
            } else {
                spawn_oma(&mut state).await?;
                println!("oma-api started (pid {:?}) at {}", state.oma_pid, state.oma_url);
            }
            save_state(&state)?;
            Ok(0)
        }
        Command::Stop { what: Target::Oma } => {
            let mut state = load_state()?;
            stop_oma(&mut state, Signal::SIGTERM).await?;
            save_state(&state)?;
            Ok(0)
        }
        Command::Kill { what: Target::Oma } => {
            let mut state = load_state()?;
            stop_oma(&mut state, Signal::SIGKILL).await?;
            save_state(&state)?;
            Ok(0)
        }
        Command::Restart { what: Target::Oma } => {
            let mut state = load_state()?;
            stop_oma(&mut state, Signal::SIGTERM).await?;
            spawn_oma(&mut state).await?;
            println!("oma-api restarted (pid {:?}) at {}", state.oma_pid, state.oma_url);
            save_state(&state)?;
            Ok(0)
        }
        Command::Status => {
            let state = load_state()?;
            println!(
                "OMA {} (pid {:?}, {})\nVMA {}\ncontrol {}/sim/v1\n{}",
                state.oma_url,
                state.oma_pid,
                if state.oma_pid.is_some_and(alive) { "running" } else { "stopped" },
                state.vma_url,
                state.control_url,
                state.mariadb_command
            );
            Ok(0)
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
