//! The parts of one chaos run and the events acting on them: a fresh database on the run's
//! MariaDB ([`super::server`]), sim-vma in process, one or two real `oma-api` processes each
//! behind a gate to the database (a partition closes one gate), and the record of what happened
//! when, for the oracle.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sim_vma::spec::JobSpec;
use sim_vma::{SimConfig, SimVma};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{Connection, MySqlConnection, MySqlPool};
use tokio::sync::Mutex;

use super::schedule::{Event, JobPlan, Origin, Schedule};
use super::server::{kill_connections, ChaosServer};
use super::vma_scripts::{fault_spec, give_script, job_wide_percent};
use crate::gate::Gate;
use crate::oma_process::{OmaConfig, OmaProcess};
use oma_test_support::SeedJob;

/// Intervals of a run: short, so a run takes seconds.
#[derive(Debug, Clone)]
pub struct Timing {
    pub poll_interval: Duration,
    pub vma_timeout: Duration,
    pub poll_grace: Duration,
    pub health_interval: Duration,
    pub health_stale_after: Duration,
    pub stall_after: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll_interval: Duration::from_millis(100),
            vma_timeout: Duration::from_millis(300),
            poll_grace: Duration::from_secs(1),
            health_interval: Duration::from_millis(500),
            health_stale_after: Duration::from_secs(1),
            stall_after: Duration::from_secs(2),
        }
    }
}

/// One OMA process of the run, behind its own gate to the database.
pub struct OmaSlot {
    pub process: OmaProcess,
    pub gate: Gate,
    /// The run believes it runs (started by the run and not stopped or killed since).
    pub expected_up: bool,
    /// Starts of this slot (a start on a new port makes a new process).
    pub generation: u32,
    /// Partitions of this OMA from the database under way (they may overlap).
    pub partitions: u32,
}

/// What happened when, in wall-clock time (sim-vma's journal is in wall-clock time too).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mark {
    pub at: DateTime<Utc>,
    pub what: String,
    /// The disturbance this begins or ends, if any (`vma`, `db`, `oma0`, `oma1`, `gate0`, …).
    pub disturbs: Option<String>,
    pub begins: bool,
}

/// A job of the run as it turned out.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRecord {
    pub plan: JobPlan,
    /// The job id once known (seeded: the plan's name; API: from the 201).
    pub id: Option<String>,
    /// The HTTP status `POST /api/v1/replications` answered (API jobs).
    pub created_with: Option<u16>,
    /// When sim-vma was given the job's script.
    pub script_from: Option<DateTime<Utc>>,
    /// Just before the script was sent: its times count from no earlier (a multi-disk job's last
    /// disk ends no sooner than this plus its `after_ms`).
    pub script_sent: Option<DateTime<Utc>>,
    /// The VMA's percentage for the job when a VMA restart forgot it: above 90 % the OMA may
    /// assume it completed (its scripted ramp can pass 90 % in a long run).
    pub vma_percent_when_forgotten: Option<f64>,
}

pub struct World {
    pub schedule: Schedule,
    pub timing: Timing,
    pub dir: PathBuf,
    pub database: String,
    pub db_url: String,
    pub sim: SimVma,
    pub omas: Arc<Mutex<Vec<OmaSlot>>>,
    pub pool: MySqlPool,
    pub http: reqwest::Client,
    pub marks: Arc<std::sync::Mutex<Vec<Mark>>>,
    /// Tasks waiting for a started OMA to be ready.
    pub waiters: Vec<tokio::task::JoinHandle<()>>,
    /// The run's jobs; an API job's record is filled in when its create answers.
    pub jobs: Arc<std::sync::Mutex<Vec<JobRecord>>>,
    pub started: Instant,
    pub started_at: DateTime<Utc>,
}

impl World {
    /// Set up the run: a fresh database with the OMA's migrations, sim-vma, the seeded jobs, and
    /// the run's OMAs started and ready.
    pub async fn set_up(schedule: Schedule, timing: Timing, server: &ChaosServer, dir: &Path) -> anyhow::Result<World> {
        std::fs::create_dir_all(dir)?;
        let database = format!("oma_chaos_{}_{}", schedule.seed, &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let base = server.base_url();
        let mut admin = MySqlConnection::connect(&format!("{base}/")).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{database}` CHARACTER SET utf8mb4")))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let db_url = format!("{base}/{database}");
        let pool =
            MySqlPoolOptions::new().max_connections(4).acquire_timeout(Duration::from_secs(2)).connect(&db_url).await?;
        oma::db::MIGRATOR.run(&pool).await?;
        let sim =
            SimVma::start(SimConfig { seed: Some(schedule.seed), journal_capacity: 200_000, ..SimConfig::default() })
                .await?;
        let defaults: JobSpec =
            serde_json::from_value(json!({"mode": "running", "start_percent": 0, "rate_per_second": 0.5}))?;
        sim.state.set_replicate_defaults(defaults).map_err(|e| anyhow::anyhow!("{e}"))?;
        let http = crate::lab::http_client(Duration::from_secs(5))?;
        let mut world = World {
            schedule,
            timing,
            dir: dir.to_path_buf(),
            database,
            db_url,
            sim,
            omas: Arc::new(Mutex::new(Vec::new())),
            pool,
            http,
            marks: Arc::new(std::sync::Mutex::new(Vec::new())),
            jobs: Arc::new(std::sync::Mutex::new(Vec::new())),
            waiters: Vec::new(),
            started: Instant::now(),
            started_at: Utc::now(),
        };
        for plan in world.schedule.jobs.clone() {
            let mut record = JobRecord {
                plan: plan.clone(),
                id: None,
                created_with: None,
                script_from: None,
                script_sent: None,
                vma_percent_when_forgotten: None,
            };
            if plan.origin == Origin::Seeded {
                let mut seed = SeedJob::replicating(&plan.name, plan.start_percent, 0.5);
                seed.bytes_transferred = (plan.start_percent * 1e8) as i64;
                if let Some(disks) = &plan.disks {
                    seed.disk_bytes = disks.clone();
                }
                let names = oma_test_support::seed_job(&world.pool, &seed).await?;
                record.script_sent = Some(Utc::now());
                give_script(&world.sim.state, &plan.name, &names, &plan, world.schedule.duration_ms)?;
                record.id = Some(plan.name.clone());
                record.script_from = Some(Utc::now());
            }
            world.jobs.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        }
        for i in 0..world.schedule.omas {
            let slot = world.new_slot(i, 0).await?;
            world.omas.lock().await.push(slot);
        }
        {
            let mut omas = world.omas.lock().await;
            for slot in omas.iter_mut() {
                slot.process.spawn().await?;
                slot.expected_up = true;
            }
            for slot in omas.iter_mut() {
                slot.process.wait_ready(Duration::from_secs(30)).await?;
            }
        }
        world.started = Instant::now();
        world.started_at = Utc::now();
        world.mark("run started", None, false);
        Ok(world)
    }

    fn oma_config(&self, gate_url: &str) -> OmaConfig {
        let mut config = OmaConfig::fast(gate_url, &self.sim.vma_url());
        config.poll_interval = self.timing.poll_interval;
        config.vma_timeout = self.timing.vma_timeout;
        config.poll_grace = self.timing.poll_grace;
        config.health_interval = self.timing.health_interval;
        config.health_stale_after = self.timing.health_stale_after;
        config.stall_after = self.timing.stall_after;
        config.extra_env.push(("OMA_DB_WAIT".into(), "60s".into()));
        config.extra_env.push(("OMA_API_DB_TIMEOUT".into(), "1s".into()));
        config
    }

    /// A slot for OMA `index` (not started), with a gate of its own in front of the database.
    async fn new_slot(&self, index: usize, generation: u32) -> anyhow::Result<OmaSlot> {
        let (mut gate, gate_url) = Gate::in_front_of(&self.db_url)?;
        gate.open().await?;
        let config = self.oma_config(&gate_url);
        let log = self.dir.join(format!("oma{index}-{generation}.log"));
        let process = OmaProcess::new(&format!("oma{index}"), config, oma_test_support::free_port(), log)?;
        Ok(OmaSlot { process, gate, expected_up: false, generation, partitions: 0 })
    }

    /// Milliseconds since the run started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The run's jobs as they are now.
    pub fn job_records(&self) -> Vec<JobRecord> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn mark(&self, what: &str, disturbs: Option<&str>, begins: bool) {
        let mark = Mark { at: Utc::now(), what: what.to_string(), disturbs: disturbs.map(str::to_string), begins };
        self.marks.lock().unwrap_or_else(|p| p.into_inner()).push(mark);
    }

    /// Create job `index` of the plan through the API of a running OMA, in a task of its own (an
    /// OMA cut off from its database answers only after its database timeout, and the timeline
    /// must not wait for it). The job's record is filled in when the answer comes.
    pub async fn create_job(&mut self, index: usize) -> Option<tokio::task::JoinHandle<()>> {
        let plan = self.jobs.lock().unwrap_or_else(|p| p.into_inner())[index].plan.clone();
        let urls: Vec<String> = {
            let mut omas = self.omas.lock().await;
            let mut urls = Vec::new();
            for slot in omas.iter_mut() {
                if slot.expected_up && slot.process.is_running() {
                    urls.push(slot.process.url());
                }
            }
            urls
        };
        if urls.is_empty() {
            self.mark(&format!("{}: no OMA runs to create it", plan.name), None, false);
            return None;
        }
        let url = urls[index % urls.len()].clone();
        let (http, sim, jobs, marks) =
            (self.http.clone(), self.sim.state.clone(), self.jobs.clone(), self.marks.clone());
        let run_ms = self.schedule.duration_ms;
        Some(tokio::spawn(async move {
            let mark = |what: String| {
                let m = Mark { at: Utc::now(), what, disturbs: None, begins: false };
                marks.lock().unwrap_or_else(|p| p.into_inner()).push(m);
            };
            let disks: Vec<Value> = match &plan.disks {
                Some(sizes) => sizes
                    .iter()
                    .enumerate()
                    .map(|(i, b)| json!({"id": format!("disk-{}", 2000 + i), "size_gb": b >> 30, "capacity_bytes": b}))
                    .collect(),
                None => vec![json!({"id": "disk-2000", "size_gb": 10, "capacity_bytes": 10737418240u64})],
            };
            let body = json!({"source_vm": {"id": format!("vmware-{}", plan.name), "name": plan.name,
                              "path": format!("/DC1/vm/{}", plan.name), "disks": disks},
                              "ossea_config_id": 1, "vcenter_host": "vcenter.local", "start_replication": true});
            let answer = http.post(format!("{url}/api/v1/replications")).json(&body).send().await;
            let (status, value) = match answer {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (Some(status), r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(e) => {
                    mark(format!("{}: create failed without an answer: {e}", plan.name));
                    (None, Value::Null)
                }
            };
            let mut script_from = None;
            let mut script_sent = None;
            let mut id = None;
            if status == Some(201) {
                let job_id = value["job_id"].as_str().unwrap_or_default().to_string();
                let names: Vec<String> = value["created_volumes"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|x| x["nbd_export_name"].as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                script_sent = Some(Utc::now());
                match give_script(&sim, &job_id, &names, &plan, run_ms) {
                    Ok(()) => script_from = Some(Utc::now()),
                    // The VMA restarted between /replicate and now: the job is gone there already.
                    Err(e) => mark(format!("{}: {e}", plan.name)),
                }
                id = Some(job_id);
            }
            {
                let mut jobs = jobs.lock().unwrap_or_else(|p| p.into_inner());
                let record = &mut jobs[index];
                record.created_with = status;
                record.id = id;
                record.script_from = script_from;
                record.script_sent = script_sent;
            }
            mark(format!("{}: POST /api/v1/replications answered {status:?}", plan.name));
        }))
    }

    /// Begin `event`; returns what must happen when it ends (if it lasts).
    pub async fn begin(&mut self, event: &Event, server: &mut ChaosServer) -> Option<Ending> {
        match *event {
            Event::VmaFault { fault, for_ms } => {
                let spec = fault_spec(fault, for_ms);
                match self.sim.state.set_faults(&spec) {
                    Ok(_) => self.mark(&format!("VMA fault {fault:?} for {for_ms} ms"), Some("vma"), true),
                    Err(e) => self.mark(&format!("VMA fault {fault:?} refused: {e}"), None, false),
                }
                Some(Ending::VmaFault)
            }
            Event::VmaRestart { down_ms } => {
                let before = self.sim.state.list_jobs();
                {
                    let mut records = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
                    for view in before {
                        let record = records.iter_mut().find(|r| r.id.as_deref() == Some(view.job_id.as_str()));
                        if let Some(r) = record.filter(|r| r.vma_percent_when_forgotten.is_none()) {
                            r.vma_percent_when_forgotten = Some(job_wide_percent(&r.plan, &view));
                        }
                    }
                }
                self.sim.state.restart(Some(Duration::from_millis(down_ms)).filter(|d| !d.is_zero()));
                self.mark(&format!("VMA restarted, every job forgotten, down {down_ms} ms"), Some("vma"), true);
                Some(Ending::VmaBack)
            }
            Event::OmaStop { oma } | Event::OmaKill { oma } => {
                let kill = matches!(event, Event::OmaKill { .. });
                let mut omas = self.omas.lock().await;
                let slot = &mut omas[oma];
                if slot.process.is_running() {
                    slot.expected_up = false;
                    let result = if kill { slot.process.kill().await } else { slot.process.stop().await.map(|_| ()) };
                    let how = if kill { "SIGKILL" } else { "SIGTERM" };
                    drop(omas);
                    match result {
                        Ok(()) => self.mark(&format!("oma{oma}: {how}"), Some(&format!("oma{oma}")), true),
                        Err(e) => {
                            self.mark(&format!("oma{oma}: {how} failed: {e:#}"), Some(&format!("oma{oma}")), true)
                        }
                    }
                }
                None
            }
            Event::OmaStart { oma, new_port } => {
                let running = self.omas.lock().await[oma].process.is_running();
                if running {
                    return None;
                }
                if new_port {
                    let generation = self.omas.lock().await[oma].generation + 1;
                    match self.new_slot(oma, generation).await {
                        Ok(slot) => self.omas.lock().await[oma] = slot,
                        Err(e) => {
                            self.mark(&format!("oma{oma}: no new slot: {e:#}"), None, false);
                            return None;
                        }
                    }
                }
                let mut omas = self.omas.lock().await;
                let slot = &mut omas[oma];
                let spawned = slot.process.spawn().await;
                slot.expected_up = spawned.is_ok();
                let port = slot.process.port;
                drop(omas);
                match spawned {
                    Ok(()) => self.mark(&format!("oma{oma}: started on port {port}"), None, false),
                    Err(e) => self.mark(&format!("oma{oma}: start failed: {e:#}"), None, false),
                }
                Some(Ending::OmaReady(oma))
            }
            Event::DbKill { .. } => {
                if !server.can_kill() || !server.is_up() {
                    return None;
                }
                server.kill();
                self.mark("MariaDB killed (-9)", Some("db"), true);
                Some(Ending::DbBack)
            }
            Event::DbKillConnections => {
                match kill_connections(&self.pool, &self.database).await {
                    Ok(n) => self.mark(&format!("{n} database connections killed"), None, false),
                    Err(e) => self.mark(&format!("killing connections failed: {e:#}"), None, false),
                }
                None
            }
            Event::DbPartition { oma, .. } => {
                let mut omas = self.omas.lock().await;
                let slot = &mut omas[oma];
                slot.partitions += 1;
                slot.gate.close().await;
                drop(omas);
                self.mark(&format!("oma{oma} cut off from the database"), Some(&format!("gate{oma}")), true);
                Some(Ending::GateOpen(oma))
            }
        }
    }

    /// End a disturbance that lasted.
    pub async fn end(&mut self, ending: Ending, server: &mut ChaosServer) {
        match ending {
            Ending::VmaFault => {
                self.sim.state.clear_faults();
                self.mark("VMA faults cleared", Some("vma"), false);
            }
            Ending::VmaBack => {
                // sim-vma reopens its listener by itself after `down_for`; wait for it.
                let deadline = Instant::now() + Duration::from_secs(5);
                while !self.sim.state.listener_up() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.mark("VMA back", Some("vma"), false);
            }
            Ending::DbBack => match server.restart().await {
                Ok(()) => self.mark("MariaDB started again on its data directory", Some("db"), false),
                Err(e) => self.mark(&format!("MariaDB did not start again: {e:#}"), Some("db"), false),
            },
            Ending::GateOpen(oma) => {
                let opened = {
                    let mut omas = self.omas.lock().await;
                    let slot = &mut omas[oma];
                    slot.partitions = slot.partitions.saturating_sub(1);
                    // Overlapping partitions: the gate opens when the last one ends.
                    if slot.partitions > 0 {
                        drop(omas);
                        self.mark(
                            &format!("oma{oma}: one of its partitions ended"),
                            Some(&format!("gate{oma}")),
                            false,
                        );
                        return;
                    }
                    slot.gate.open().await
                };
                match opened {
                    Ok(()) => {
                        self.mark(&format!("oma{oma} reaches the database again"), Some(&format!("gate{oma}")), false)
                    }
                    Err(e) => {
                        self.mark(&format!("oma{oma}'s gate did not open: {e:#}"), Some(&format!("gate{oma}")), false)
                    }
                }
            }
            Ending::OmaReady(oma) => {
                // Ready when /health answers (the database may be away: then when it returns);
                // waited for in a task of its own, so the timeline goes on meanwhile.
                let url = format!("{}/health", self.omas.lock().await[oma].process.url());
                let (http, omas, marks) = (self.http.clone(), self.omas.clone(), self.marks.clone());
                self.waiters.push(tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    let mut ready = false;
                    while Instant::now() < deadline {
                        if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                            ready = true;
                            break;
                        }
                        if !omas.lock().await[oma].process.is_running() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(25)).await;
                    }
                    let what = if ready { format!("oma{oma} ready") } else { format!("oma{oma} not ready") };
                    let mark = Mark { at: Utc::now(), what, disturbs: Some(format!("oma{oma}")), begins: false };
                    marks.lock().unwrap_or_else(|p| p.into_inner()).push(mark);
                }));
            }
        }
    }

    /// Everything back to normal: faults cleared, database up, gates open, OMA 0 running.
    pub async fn heal(&mut self, server: &mut ChaosServer) {
        self.sim.state.clear_faults();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.sim.state.listener_up() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !server.is_up() {
            self.end(Ending::DbBack, server).await;
        }
        let n = self.omas.lock().await.len();
        for oma in 0..n {
            let mut omas = self.omas.lock().await;
            omas[oma].partitions = 0;
            let _ = omas[oma].gate.open().await;
        }
        let any_up = {
            let mut omas = self.omas.lock().await;
            let mut any = false;
            for slot in omas.iter_mut() {
                any |= slot.expected_up && slot.process.is_running();
            }
            any
        };
        if !any_up {
            if let Some(ending) = self.begin(&Event::OmaStart { oma: 0, new_port: false }, server).await {
                self.end(ending, server).await;
            }
        }
        for waiter in std::mem::take(&mut self.waiters) {
            let _ = waiter.await;
        }
        // OMAs left stopped: the running one takes their jobs over from here.
        let down: Vec<usize> =
            self.omas.lock().await.iter().enumerate().filter(|(_, s)| !s.expected_up).map(|(i, _)| i).collect();
        for oma in down {
            self.mark(&format!("oma{oma} stays down"), Some(&format!("oma{oma}")), false);
        }
        self.mark("healed: VMA, database and gates normal, an OMA running", Some("heal"), false);
    }

    /// Stop every OMA (SIGTERM), sim-vma, and drop the run's database.
    pub async fn tear_down(self, server: &ChaosServer) {
        let mut omas = self.omas.lock().await;
        // The run is judged: the OMAs stop at once, side by side.
        let mut running = Vec::new();
        for slot in omas.iter_mut() {
            if slot.process.is_running() {
                running.push(slot.process.stop());
            }
        }
        futures::future::join_all(running).await;
        drop(omas);
        self.sim.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.pool.close()).await;
        if let Ok(mut admin) = MySqlConnection::connect(&format!("{}/", server.base_url())).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{}`", self.database)))
                .execute(&mut admin)
                .await;
        }
    }
}

/// What must happen when a lasting disturbance ends.
#[derive(Debug, Clone, Copy)]
pub enum Ending {
    VmaFault,
    VmaBack,
    DbBack,
    GateOpen(usize),
    OmaReady(usize),
}
