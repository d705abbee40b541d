//! The acceptance suite: every testing-guide scenario, job-sheet criterion, plan and manifest
//! item and §10 regression as Cucumber features (`features/*.feature`), run against a real
//! MariaDB, an embedded sim-vma and real `oma-api` processes. Reports go to
//! `target/acceptance/` (JUnit XML, Cucumber JSON, QC sign-off Markdown).

mod signoff;
mod steps;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

use cucumber::writer::{self, Stats};
use cucumber::{World, WriterExt};
use oma_acceptance::expected_lines::ExpectedLines;
use oma_acceptance::{Lab, OmaConfig};

/// Evidence (job rows, key log lines) per scenario, for the sign-off report.
pub static EVIDENCE: Mutex<BTreeMap<String, Vec<String>>> = Mutex::new(BTreeMap::new());
/// Wall time per scenario.
pub static DURATIONS: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());
/// The seed documents' log lines, and which of them some scenario's OMA printed.
pub static EXPECTED: Mutex<Option<ExpectedLines>> = Mutex::new(None);
/// WARN and ERROR lines of the OMAs, by scenario, with whether the scenario expected them.
pub static WARNINGS: Mutex<Vec<signoff::Warning>> = Mutex::new(Vec::new());
/// The guide's performance baseline, sampled at the end of every scenario whose OMA runs.
pub static BASELINE: Mutex<signoff::Baseline> = Mutex::new(signoff::Baseline::new());

#[derive(World)]
#[world(init = Self::new)]
pub struct OmaWorld {
    pub lab: Option<Lab>,
    pub scenario: String,
    pub started: Instant,
    /// The job the scenario is about, by alias (`the job` is alias "").
    pub jobs: HashMap<String, String>,
    pub export_names: HashMap<String, Vec<String>>,
    /// Values remembered before a restart (progress, poll time).
    pub before_restart: Option<oma::db::JobRow>,
    pub oma_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub config: Option<OmaConfig>,
    pub response: Option<(u16, serde_json::Value)>,
    /// How long the last API request took to answer.
    pub response_took: Option<std::time::Duration>,
    pub command: Option<(i32, String)>,
    pub vm_counter: usize,
    /// A transaction of the harness holding row locks the OMA needs (a database stall).
    pub held_lock: Option<sqlx::Transaction<'static, sqlx::MySql>>,
    /// A port in front of the database that refuses connections until opened (a late database).
    pub db_gate: Option<oma_acceptance::gate::Gate>,
    /// When the database began refusing the job's poll statistics, and for how long it did.
    pub refused_since: Option<Instant>,
    pub refused_for: Option<std::time::Duration>,
    /// Figures a scenario measured (a rollback's time), for the sign-off report.
    pub notes: Vec<String>,
    pub rollback_took: Option<std::time::Duration>,
}

impl fmt::Debug for OmaWorld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OmaWorld").field("scenario", &self.scenario).field("jobs", &self.jobs).finish()
    }
}

impl OmaWorld {
    fn new() -> OmaWorld {
        OmaWorld {
            lab: None,
            scenario: String::new(),
            started: Instant::now(),
            jobs: HashMap::new(),
            export_names: HashMap::new(),
            before_restart: None,
            oma_started_at: None,
            config: None,
            response: None,
            response_took: None,
            command: None,
            vm_counter: 0,
            held_lock: None,
            db_gate: None,
            refused_since: None,
            refused_for: None,
            notes: Vec::new(),
            rollback_took: None,
        }
    }

    pub fn lab(&self) -> &Lab {
        self.lab.as_ref().expect("the lab is created before every scenario")
    }

    pub fn lab_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("the lab is created before every scenario")
    }

    /// The scenario's main job.
    pub fn job(&self) -> String {
        self.jobs.get("").cloned().expect("a step created a job first")
    }

    /// `{job}` in a step's text stands for the scenario's job id.
    /// The database address the scenario's OMA processes use (a gate, or a wrong user, when the
    /// scenario says so).
    pub fn database_url(&self) -> String {
        self.config.as_ref().map_or_else(|| self.lab().db().url.clone(), |c| c.database_url.clone())
    }

    pub fn expand(&self, text: &str) -> String {
        match self.jobs.get("") {
            Some(id) => text.replace("{job}", id),
            None => text.to_string(),
        }
    }

    async fn collect_evidence(&self) -> Vec<String> {
        let mut out = self.notes.clone();
        let Some(lab) = &self.lab else { return out };
        for (alias, id) in &self.jobs {
            if let Ok(row) = lab.job(id).await {
                out.push(format!(
                    "job{} `{}`: status={} progress={} current_operation={:?} completed_at={:?} classification={:?} recovery_method={:?} vma_last_poll_at={:?}",
                    if alias.is_empty() { String::new() } else { format!(" ({alias})") },
                    row.id, row.status, row.progress_percent, row.current_operation, row.completed_at.map(|t| t.to_rfc3339()),
                    row.vma_error_classification, row.recovery_method, row.vma_last_poll_at.map(|t| t.to_rfc3339())
                ));
            }
        }

        for oma in &lab.omas {
            for line in oma.log.lines() {
                if oma_acceptance::play::KEY_PHRASES.iter().any(|k| line.contains(k)) && out.len() < 40 {
                    out.push(format!("log ({}): {}", oma.name, line.trim()));
                }
            }
        }
        out
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let failed = runtime.block_on(run());
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    if failed {
        std::process::exit(1);
    }
}

async fn run() -> bool {
    let out_dir = oma_acceptance::oma_process::target_dir().parent().map(|p| p.join("acceptance")).expect("target dir");
    std::fs::create_dir_all(&out_dir).expect("target/acceptance");
    let junit = std::fs::File::create(out_dir.join("junit.xml")).expect("junit.xml");
    let json = std::fs::File::create(out_dir.join("cucumber.json")).expect("cucumber.json");
    let features = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    // Build the OMA once before scenarios start their processes; provision MariaDB once.
    if let Err(e) = oma_acceptance::oma_process::oma_api_binary().await {
        eprintln!("cannot build oma-api: {e:#}");
        return true;
    }
    if let Err(e) = oma_acceptance::mariadb::server().await {
        eprintln!("{e:#}");
        return true;
    }
    let concurrency = std::env::var("ACCEPTANCE_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    // Stop scheduling scenarios after the first failure (`-- --fail-fast` does the same); for
    // mutation testing, where a failing run only needs to fail, not to say everything.
    let fail_fast = std::env::var("ACCEPTANCE_FAIL_FAST").is_ok_and(|v| v == "1");
    let started = Instant::now();
    let cucumber = OmaWorld::cucumber().max_concurrent_scenarios(concurrency).fail_on_skipped();
    let writer = if fail_fast { cucumber.fail_fast() } else { cucumber }
        .before(|_feature, _rule, scenario, world| {
            Box::pin(async move {
                world.scenario = scenario.name.clone();
                world.started = Instant::now();
                match Lab::new(&slug(&scenario.name)).await {
                    Ok(lab) => world.lab = Some(lab),
                    Err(e) => panic!("cannot set up the lab: {e:#}"),
                }
            })
        })
        .after(|_feature, _rule, scenario, finished, world| {
            Box::pin(async move {
                let Some(world) = world else { return };
                // Before anything else queries: a held lock would stall the teardown.
                if let Some(tx) = world.held_lock.take() {
                    let _ = tx.rollback().await;
                }
                let failed = matches!(
                    finished,
                    cucumber::event::ScenarioFinished::StepFailed(..)
                        | cucumber::event::ScenarioFinished::BeforeHookFailed(..)
                );
                let evidence = world.collect_evidence().await;
                if failed {
                    if let Some(lab) = &world.lab {
                        let job = world.jobs.get("").cloned();
                        eprintln!(
                            "\n===== diagnostics for failed scenario {:?} =====\n{}",
                            scenario.name,
                            lab.diagnostics(job.as_deref()).await
                        );
                    }
                }
                EVIDENCE.lock().expect("evidence").insert(scenario.name.clone(), evidence);
                DURATIONS
                    .lock()
                    .expect("durations")
                    .insert(scenario.name.clone(), world.started.elapsed().as_secs_f64());
                if let Some(mut lab) = world.lab.take() {
                    let sample = signoff::sample_baseline(&mut lab).await;
                    BASELINE.lock().unwrap_or_else(|p| p.into_inner()).add(sample);
                    let checked = signoff::checked_log_texts(scenario, |t| world.expand(t));
                    // Each OMA's log read once: the seed documents' lines, then its warnings.
                    for oma in &lab.omas {
                        let lines = oma.log.lines();
                        let mut expected = EXPECTED.lock().unwrap_or_else(|p| p.into_inner());
                        let expected = expected.get_or_insert_with(ExpectedLines::shipped);
                        lines.iter().for_each(|line| expected.feed(line));
                        let mut warnings = WARNINGS.lock().unwrap_or_else(|p| p.into_inner());
                        for line in lines.into_iter().filter(|l| signoff::is_warning(l)) {
                            let expected = checked.iter().any(|c| line.contains(c.as_str()));
                            warnings.push(signoff::Warning { scenario: scenario.name.clone(), line, expected });
                        }
                    }
                    lab.teardown().await;
                }
            })
        })
        .with_writer(
            writer::Basic::stdout()
                .summarized()
                .tee::<OmaWorld, _>(writer::JUnit::for_tee(junit, 0))
                .tee::<OmaWorld, _>(writer::Json::for_tee(json))
                .normalized(),
        )
        .run(features)
        .await;
    let wall = started.elapsed();
    let failed = writer.execution_has_failed() || writer.skipped_steps() > 0;
    let durations = DURATIONS.lock().expect("durations").clone();
    if let Some((name, secs)) = durations.iter().max_by(|a, b| a.1.total_cmp(b.1)) {
        println!("\nSuite wall time {:.1} s; slowest scenario {:.1} s: {name}", wall.as_secs_f64(), secs);
    }
    let evidence = EVIDENCE.lock().expect("evidence").clone();
    if filtered_run() {
        // The sign-off covers every guide case; a run of a few scenarios cannot sign anything off.
        println!("Filtered run: no QC sign-off report (it needs the whole suite)");
    } else {
        let expected = EXPECTED.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(ExpectedLines::shipped);
        let run = signoff::RunFacts {
            evidence: &evidence,
            durations: &durations,
            wall,
            expected: &expected,
            warnings: &WARNINGS.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            baseline: &BASELINE.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        };
        match signoff::write(&out_dir, &run) {
            Ok(path) => println!("QC sign-off report: {}", path.display()),
            Err(e) => {
                eprintln!("could not write the sign-off report: {e:#}");
                return true;
            }
        }
        let missing = expected.missing();
        if !missing.is_empty() {
            eprintln!("\nLog lines the seed documents expect that no scenario made the OMA print (features/expected-lines.toml):");
            for line in &missing {
                eprintln!("  {:?} ({})", line.text, line.seed);
            }
            return true;
        }
        println!("Every log line the seed documents expect was printed verbatim ({} lines)", expected.lines.len());
    }
    println!("Reports: {}/junit.xml, {}/cucumber.json", out_dir.display(), out_dir.display());
    failed
}

/// Whether cucumber was asked for some scenarios only (`--name`, `--tags`, `--input`).
fn filtered_run() -> bool {
    std::env::args().skip(1).any(|a| {
        let flag = a.split('=').next().unwrap_or_default();
        matches!(flag, "-n" | "--name" | "-t" | "--tags" | "-i" | "--input")
    })
}

fn slug(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect::<String>()
        .chars()
        .take(40)
        .collect()
}
