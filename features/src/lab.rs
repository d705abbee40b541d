//! One scenario's world: a fresh database, its own sim-vma and its own `oma-api` processes on
//! free ports. Jobs are seeded as a previous OMA would have left them, with ages made by past
//! timestamps. `teardown` stops and removes everything, also after a failure.

use std::future::Future;
use std::time::Duration;

use serde_json::{json, Value};
use sim_vma::{ControlClient, SimConfig, SimVma};

use crate::oma_process::{OmaConfig, OmaProcess};
use oma_test_support::{SeedJob, TestDatabase};

pub struct Lab {
    pub name: String,
    pub db: Option<TestDatabase>,
    pub sim: Option<SimVma>,
    pub control: ControlClient,
    pub omas: Vec<OmaProcess>,
    pub http: reqwest::Client,
}

/// An HTTP client for talking to OMAs under test. An idle pooled connection is dropped before
/// the OMA's idle timeout (`OMA_HTTP_HEADER_TIMEOUT`, 10 s by default) can close it: reusing one
/// just as the OMA closes it fails the request (IncompleteMessage; seen once in 20 runs of the
/// hostile test).
pub fn http_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder().timeout(timeout).pool_idle_timeout(Duration::from_secs(4)).build()
}

impl Lab {
    pub async fn new(name: &str) -> anyhow::Result<Lab> {
        let db = TestDatabase::create(&oma::db::MIGRATOR).await?;
        let sim = SimVma::start(SimConfig::default()).await?;
        let control = ControlClient::new(&sim.control_url());
        let http = http_client(Duration::from_secs(10))?;
        Ok(Lab { name: name.to_string(), db: Some(db), sim: Some(sim), control, omas: Vec::new(), http })
    }

    pub fn db(&self) -> &TestDatabase {
        self.db.as_ref().expect("database present until teardown")
    }

    pub fn pool(&self) -> &sqlx::MySqlPool {
        &self.db().pool
    }

    pub fn sim(&self) -> &SimVma {
        self.sim.as_ref().expect("sim-vma present until teardown")
    }

    pub fn oma_config(&self) -> OmaConfig {
        OmaConfig::fast(&self.db().url, &self.sim().vma_url())
    }

    /// Start one more OMA process with `config` (see [`Lab::oma_config`]); returns its index.
    pub async fn start_oma_with(&mut self, config: OmaConfig) -> anyhow::Result<usize> {
        let name = format!("{}-oma{}", self.name, self.omas.len() + 1);
        let oma = OmaProcess::start(&name, config).await?;
        self.omas.push(oma);
        Ok(self.omas.len() - 1)
    }

    /// Like [`Lab::start_oma_with`], without waiting for the OMA to be ready.
    pub async fn launch_oma_with(&mut self, config: OmaConfig) -> anyhow::Result<usize> {
        let name = format!("{}-oma{}", self.name, self.omas.len() + 1);
        let oma = OmaProcess::launch(&name, config).await?;
        self.omas.push(oma);
        Ok(self.omas.len() - 1)
    }

    pub async fn start_oma(&mut self) -> anyhow::Result<usize> {
        let config = self.oma_config();
        self.start_oma_with(config).await
    }

    pub fn oma(&self) -> &OmaProcess {
        self.omas.first().expect("an OMA was started")
    }

    pub fn oma_mut(&mut self) -> &mut OmaProcess {
        self.omas.first_mut().expect("an OMA was started")
    }

    /// Insert a context, job, volumes and disks as a previous OMA left them. Returns export names.
    pub async fn seed_job(&self, job: &SeedJob) -> anyhow::Result<Vec<String>> {
        oma_test_support::seed_job(self.pool(), job).await
    }

    /// Tell sim-vma about a job (by its id and export names).
    pub async fn vma_job(&self, id: &str, export_names: &[String], spec: Value) -> anyhow::Result<()> {
        let mut spec = spec;
        spec["export_names"] = json!(export_names);
        self.control.put_job_json(id, &spec).await?;
        Ok(())
    }

    pub async fn job(&self, id: &str) -> anyhow::Result<oma::db::JobRow> {
        oma::db::get_job(self.pool(), id).await?.ok_or_else(|| anyhow::anyhow!("job {id} is not in the database"))
    }

    pub async fn context_of(&self, job_id: &str) -> anyhow::Result<oma::db::ContextRow> {
        let job = self.job(job_id).await?;
        let ctx = job.vm_context_id.ok_or_else(|| anyhow::anyhow!("job {job_id} has no context"))?;
        oma::db::get_context(self.pool(), &ctx).await?.ok_or_else(|| anyhow::anyhow!("context {ctx} missing"))
    }

    /// Everything useful when an expectation fails: job rows, sim-vma journal, OMA log tails.
    pub async fn diagnostics(&self, job: Option<&str>) -> String {
        let mut out = String::new();
        if let Some(id) = job {
            match self.job(id).await {
                Ok(row) => out.push_str(&format!(
                    "--- job row {id}:\n{}\n",
                    serde_json::to_string_pretty(&row).unwrap_or_default()
                )),
                Err(e) => out.push_str(&format!("--- job row {id}: {e}\n")),
            }
            if let Ok(Some(p)) = oma::db::polling_state(self.pool(), id).await {
                out.push_str(&format!(
                    "--- vma_polling_state {id}:\n{}\n",
                    serde_json::to_string(&p).unwrap_or_default()
                ));
            }
            if let Ok(stats) = self.control.stats(id).await {
                out.push_str(&format!(
                    "--- sim-vma stats {id}: {}\n",
                    serde_json::to_string(&stats).unwrap_or_default()
                ));
            }
        }
        if let Ok(j) = self.control.journal(job, 15).await {
            out.push_str("--- sim-vma journal (last 15):\n");
            for e in j["entries"].as_array().cloned().unwrap_or_default() {
                out.push_str(&format!(
                    "  {} {} {} → {} {}\n",
                    e["at"],
                    e["method"].as_str().unwrap_or(""),
                    e["path"].as_str().unwrap_or(""),
                    e["status"],
                    e["outcome"].as_str().unwrap_or("")
                ));
            }
        }
        for oma in &self.omas {
            out.push_str(&format!("--- {} log tail:\n{}\n", oma.name, oma.log.tail(100)));
        }
        out
    }

    /// Poll `check` until it holds; on timeout, fail with what it last saw
    /// ([`oma_test_support::wait_until`]).
    pub async fn wait_until<T, F, Fut>(&self, what: &str, timeout: Duration, check: F) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = anyhow::Result<Result<T, String>>>,
    {
        oma_test_support::wait_until(what, timeout, check).await
    }

    /// Wait until a job's status is `status`.
    pub async fn wait_for_status(
        &self,
        job_id: &str,
        status: &str,
        timeout: Duration,
    ) -> anyhow::Result<oma::db::JobRow> {
        self.wait_until(&format!("job {job_id} to be {status}"), timeout, || async {
            let row = self.job(job_id).await?;
            Ok(if row.status.as_str() == status {
                Ok(row)
            } else {
                Err(format!(
                    "status={} progress={} class={:?}",
                    row.status, row.progress_percent, row.vma_error_classification
                ))
            })
        })
        .await
    }

    /// Stop every process, the simulator, and drop the database.
    pub async fn teardown(mut self) {
        for oma in &mut self.omas {
            if oma.is_running() {
                let _ = oma.kill().await;
            }
        }
        if let Some(sim) = self.sim.take() {
            sim.shutdown().await;
        }
        if let Some(db) = self.db.take() {
            db.drop_database().await;
        }
    }
}
