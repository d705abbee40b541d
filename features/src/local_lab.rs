//! `oma-lab up` and the commands that act on it. `up` owns everything it starts — a fresh database
//! on the harness's MariaDB, sim-vma, and the OMA as an [`OmaProcess`] (so `OMA_UNDER_TEST` holds
//! here too) — and serves a small control endpoint on loopback. `oma-lab start|stop|restart|kill
//! oma` and `status` find that endpoint in `target/oma-lab/state.json` and ask it; they never
//! signal a process themselves. Ctrl-C or SIGTERM of `up` stops the OMA, sim-vma and drops the
//! database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sim_vma::{SimConfig, SimVma};
use tokio::sync::Mutex;

use crate::oma_process::{target_dir, OmaConfig, OmaProcess};
use oma_test_support::{free_port, TestDatabase};

/// What `up` leaves for the other subcommands.
#[derive(Debug, Serialize, Deserialize)]
pub struct LabState {
    /// The control endpoint of the running `up`.
    pub control: String,
    pub up_pid: u32,
    pub oma_url: String,
    pub oma_log: PathBuf,
    pub vma_url: String,
    pub sim_control_url: String,
    pub mariadb_command: String,
}

pub fn state_path() -> PathBuf {
    target_dir().parent().map(|p| p.join("oma-lab/state.json")).unwrap_or_else(|| PathBuf::from("oma-lab-state.json"))
}

fn load_state() -> anyhow::Result<LabState> {
    let path = state_path();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no running lab ({} missing): start one with `oma-lab up`", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a lab state file", path.display()))
}

/// Options of `oma-lab up`.
pub struct UpOptions {
    pub seed: Option<u64>,
    pub poll_interval: Duration,
    pub health_interval: Duration,
    /// A scenario file loaded into sim-vma at start.
    pub scenario: Option<PathBuf>,
}

fn port_or_free(preferred: u16) -> u16 {
    if std::net::TcpListener::bind(("127.0.0.1", preferred)).is_ok() {
        preferred
    } else {
        free_port()
    }
}

/// `mariadb -h … -P … -u … db` for a `mysql://` URL (no password: the harness's server has none).
fn mariadb_command(url: &str) -> String {
    match url.parse::<sqlx::mysql::MySqlConnectOptions>() {
        Ok(o) => format!(
            "mariadb -h {} -P {} -u {} {}",
            o.get_host(),
            o.get_port(),
            o.get_username(),
            o.get_database().unwrap_or_default()
        ),
        Err(_) => "mariadb".to_string(),
    }
}

/// Run a lab until `shutdown` resolves, then take it down. Prints URLs and examples once ready.
pub async fn up(
    options: UpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = TestDatabase::create(&oma::db::MIGRATOR).await?;
    let sim = match SimVma::start(SimConfig {
        listen: format!("127.0.0.1:{}", port_or_free(9081)).parse()?,
        control: format!("127.0.0.1:{}", port_or_free(8091)).parse()?,
        seed: options.seed,
        ..SimConfig::default()
    })
    .await
    {
        Ok(sim) => sim,
        Err(e) => {
            db.drop_database().await;
            return Err(e).context("starting sim-vma");
        }
    };
    let result = serve_lab(&db, &sim, options, shutdown).await;
    sim.shutdown().await;
    db.drop_database().await;
    let _ = std::fs::remove_file(state_path());
    result
}

async fn serve_lab(
    db: &TestDatabase,
    sim: &SimVma,
    options: UpOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(path) = &options.scenario {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        sim_vma::ControlClient::new(&sim.control_url())
            .load_scenario(&text)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let logs = target_dir().parent().map(|p| p.join("oma-lab")).context("the target directory")?;
    std::fs::create_dir_all(&logs)?;
    let mut config = OmaConfig::fast(&db.url, &sim.vma_url());
    config.poll_interval = options.poll_interval;
    config.health_interval = options.health_interval;
    config.health_stale_after = options.poll_interval * 6;
    config.vma_timeout = Duration::from_secs(5);
    config.poll_grace = Duration::from_secs(30);
    let mut oma = OmaProcess::new("oma-lab", config, port_or_free(8082), logs.join("oma-api.log"))?;
    oma.start_again().await?;
    let oma = Arc::new(Mutex::new(oma));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let control = format!("http://{}", listener.local_addr()?);
    let (oma_url, oma_log) = {
        let o = oma.lock().await;
        (o.url(), o.log_path.clone())
    };
    let state = LabState {
        control: control.clone(),
        up_pid: std::process::id(),
        oma_url: oma_url.clone(),
        oma_log: oma_log.clone(),
        vma_url: sim.vma_url(),
        sim_control_url: sim.control_url(),
        mariadb_command: mariadb_command(&db.url),
    };
    std::fs::create_dir_all(state_path().parent().context("state dir")?)?;
    std::fs::write(state_path(), serde_json::to_string_pretty(&state)?)?;
    println!(
        "\nOMA lab is up (sim-vma seed {seed}).\n\n  OMA API      {oma}\n  VMA (sim)    {vma}\n  sim control  {ctl}/sim/v1\n  database     {db}\n  OMA log      {log}\n\n\
         Try:\n  curl -s {oma}/health\n  curl -s -XPOST {oma}/api/v1/replications -H 'Content-Type: application/json' \\\n    \
         -d '{{\"source_vm\":{{\"id\":\"vm-1\",\"name\":\"QUAD-APP-01\",\"path\":\"/DC1/vm/QUAD-APP-01\"}},\"ossea_config_id\":1}}'\n  \
         curl -s -XPUT {ctl}/sim/v1/jobs/JOB_ID -d '{{\"mode\":\"running\",\"start_percent\":30,\"rate_per_poll\":1}}'\n  \
         oma-lab restart oma        # or: kill oma, stop oma, start oma, status\n  \
         curl -s -XPUT {ctl}/sim/v1/faults -d '{{\"unreachable\":{{\"mode\":\"refused\"}}}}'\n  \
         {mariadb} -e \"SELECT id, status, progress_percent, vma_last_poll_at FROM replication_jobs\"\n\nCtrl-C stops everything.",
        seed = sim.seed(),
        oma = oma_url,
        vma = state.vma_url,
        ctl = state.sim_control_url,
        db = oma_test_support::mariadb::without_password(&db.url),
        log = oma_log.display(),
        mariadb = state.mariadb_command,
    );
    let app = Router::new()
        .route("/lab/status", get(status))
        .route("/lab/oma/{action}", post(act))
        .with_state((oma.clone(), Arc::new(state)));
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    let result = served.await.context("the lab's control endpoint");
    println!("stopping the lab");
    let mut oma = oma.lock().await;
    if oma.is_running() {
        if let Err(e) = oma.stop().await {
            eprintln!("oma-lab: {e:#}");
        }
    }
    result
}

type LabShared = (Arc<Mutex<OmaProcess>>, Arc<LabState>);

async fn status(State((oma, state)): State<LabShared>) -> Json<Value> {
    let mut oma = oma.lock().await;
    Json(json!({
        "oma": {"url": oma.url(), "running": oma.is_running(), "pid": oma.pid(), "starts": oma.starts, "log": oma.log_path},
        "vma_url": state.vma_url,
        "sim_control_url": state.sim_control_url,
        "mariadb_command": state.mariadb_command,
    }))
}

/// `start`, `stop` (SIGTERM), `restart` (SIGTERM, then start) or `kill` (SIGKILL) the OMA.
async fn act(State((oma, _)): State<LabShared>, Path(action): Path<String>) -> (StatusCode, Json<Value>) {
    let mut oma = oma.lock().await;
    let result: anyhow::Result<String> = async {
        match action.as_str() {
            "start" if oma.is_running() => Ok("oma-api is already running".to_string()),
            "start" => oma.start_again().await.map(|()| format!("oma-api started (pid {:?})", oma.pid())),
            "stop" | "kill" if !oma.is_running() => Ok("oma-api is not running".to_string()),
            "stop" => oma.stop().await.map(|code| format!("oma-api stopped with SIGTERM (exit code {code:?})")),
            "kill" => oma.kill().await.map(|()| "oma-api killed with SIGKILL".to_string()),
            "restart" => {
                if oma.is_running() {
                    oma.stop().await?;
                }
                oma.start_again().await.map(|()| format!("oma-api restarted (pid {:?})", oma.pid()))
            }
            other => bail!("unknown action {other:?}: use start, stop, restart or kill"),
        }
    }
    .await;
    match result {
        Ok(message) => (StatusCode::OK, Json(json!({"ok": true, "message": message}))),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({"ok": false, "message": format!("{e:#}")}))),
    }
}

/// Ask the running `up` to act on its OMA (`action`: start, stop, restart, kill); prints its answer.
pub async fn act_on_oma(action: &str) -> anyhow::Result<()> {
    let state = load_state()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let answer: Value = http
        .post(format!("{}/lab/oma/{action}", state.control))
        .send()
        .await
        .with_context(|| {
            format!(
                "the lab (pid {}) does not answer at {}: is `oma-lab up` still running?",
                state.up_pid, state.control
            )
        })?
        .json()
        .await?;
    println!("{}", answer["message"].as_str().unwrap_or_default());
    if answer["ok"] != true {
        bail!("the lab refused: {}", answer["message"]);
    }
    Ok(())
}

/// Print the running lab's addresses and whether its OMA runs.
pub async fn print_status() -> anyhow::Result<()> {
    let state = load_state()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let s: Value = http
        .get(format!("{}/lab/status", state.control))
        .send()
        .await
        .with_context(|| {
            format!(
                "the lab (pid {}) does not answer at {}: is `oma-lab up` still running?",
                state.up_pid, state.control
            )
        })?
        .json()
        .await?;
    println!(
        "OMA {} (pid {}, {}, starts: {})\nOMA log {}\nVMA {}\ncontrol {}/sim/v1\n{}",
        s["oma"]["url"].as_str().unwrap_or_default(),
        s["oma"]["pid"],
        if s["oma"]["running"] == true { "running" } else { "stopped" },
        s["oma"]["starts"],
        s["oma"]["log"].as_str().unwrap_or_default(),
        s["vma_url"].as_str().unwrap_or_default(),
        s["sim_control_url"].as_str().unwrap_or_default(),
        s["mariadb_command"].as_str().unwrap_or_default(),
    );
    Ok(())
}
