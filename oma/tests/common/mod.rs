//! What oma's database tests share: a fresh database with the OMA's migrations, an in-process
//! sim-vma, jobs seeded as a previous OMA left them, and waits that say what they last saw.

#![allow(dead_code)] // each test file uses its own part of it

use std::time::Duration;

use oma::db::{ContextRow, JobRow};
use oma_test_support::{SeedJob, TestDatabase};
use serde_json::{json, Value};
use sim_vma::{ControlClient, SimConfig, SimVma};

pub struct Fixture {
    pub db: TestDatabase,
    pub sim: SimVma,
    pub control: ControlClient,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let db = TestDatabase::create(&oma::db::MIGRATOR).await.expect("a test database");
        let sim = SimVma::start(SimConfig::default()).await.expect("sim-vma");
        let control = ControlClient::new(&sim.control_url());
        Fixture { db, sim, control }
    }

    pub fn pool(&self) -> &sqlx::MySqlPool {
        &self.db.pool
    }

    pub async fn seed_job(&self, job: &SeedJob) -> Vec<String> {
        oma_test_support::seed_job(self.pool(), job).await.expect("seeding a job")
    }

    /// Tell sim-vma about a job (by its id and export names).
    pub async fn vma_job(&self, id: &str, export_names: &[String], mut spec: Value) {
        spec["export_names"] = json!(export_names);
        self.control.put_job_json(id, &spec).await.expect("sim-vma job");
    }

    pub async fn job(&self, id: &str) -> JobRow {
        oma::db::get_job(self.pool(), id).await.expect("reading a job").unwrap_or_else(|| panic!("no job {id}"))
    }

    pub async fn context_of(&self, job_id: &str) -> ContextRow {
        let ctx = self.job(job_id).await.vm_context_id.expect("a job with a VM context");
        oma::db::get_context(self.pool(), &ctx).await.expect("reading a context").expect("the context")
    }

    pub async fn wait_for_status(&self, job_id: &str, status: &str, timeout: Duration) -> JobRow {
        oma_test_support::wait_until(&format!("job {job_id} to be {status}"), timeout, || async {
            let row = self.job(job_id).await;
            Ok(if row.status.as_str() == status { Ok(row) } else { Err(format!("{row:?}")) })
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub async fn teardown(self) {
        self.sim.shutdown().await;
        self.db.drop_database().await;
    }
}
