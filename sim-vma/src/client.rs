//! A typed client of the control API, used by the acceptance harness and `oma-lab`.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::journal::JobStats;
use crate::spec::{FaultSpec, JobSpec};

#[derive(Clone)]
pub struct ControlClient {
    base: String,
    http: reqwest::Client,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("sim-vma control API unreachable: {0}")]
    Transport(#[from] reqwest::Error),
    #[error("sim-vma rejected the request ({status}): {body}")]
    Rejected { status: u16, body: String },
}

impl ControlClient {
    pub fn new(control_url: &str) -> ControlClient {
        ControlClient { base: control_url.trim_end_matches('/').to_string(), http: reqwest::Client::new() }
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        if status >= 400 {
            return Err(ClientError::Rejected { status, body: resp.text().await.unwrap_or_default() });
        }
        Ok(resp.json().await?)
    }

    pub async fn put_job(&self, id: &str, spec: &JobSpec) -> Result<Value, ClientError> {
        self.send(self.http.put(format!("{}/sim/v1/jobs/{id}", self.base)).json(spec)).await
    }

    /// Set a job from raw JSON (handy in tests: `json!({"mode": "completed"})`).
    pub async fn put_job_json(&self, id: &str, spec: &Value) -> Result<Value, ClientError> {
        self.send(self.http.put(format!("{}/sim/v1/jobs/{id}", self.base)).json(spec)).await
    }

    pub async fn get_job(&self, id: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(format!("{}/sim/v1/jobs/{id}", self.base))).await
    }

    pub async fn forget_job(&self, id: &str) -> Result<Value, ClientError> {
        self.send(self.http.delete(format!("{}/sim/v1/jobs/{id}", self.base))).await
    }

    pub async fn stats(&self, id: &str) -> Result<JobStats, ClientError> {
        self.send(self.http.get(format!("{}/sim/v1/jobs/{id}/stats", self.base))).await
    }

    pub async fn set_faults(&self, faults: &FaultSpec) -> Result<Value, ClientError> {
        self.send(self.http.put(format!("{}/sim/v1/faults", self.base)).json(faults)).await
    }

    pub async fn set_faults_json(&self, faults: &Value) -> Result<Value, ClientError> {
        self.send(self.http.put(format!("{}/sim/v1/faults", self.base)).json(faults)).await
    }

    pub async fn clear_faults(&self) -> Result<Value, ClientError> {
        self.send(self.http.delete(format!("{}/sim/v1/faults", self.base))).await
    }

    pub async fn restart(&self, down_for: Option<&str>) -> Result<Value, ClientError> {
        let body = match down_for {
            Some(d) => serde_json::json!({"down_for": d}),
            None => serde_json::json!({}),
        };
        self.send(self.http.post(format!("{}/sim/v1/restart", self.base)).json(&body)).await
    }

    pub async fn reset(&self) -> Result<Value, ClientError> {
        self.send(self.http.post(format!("{}/sim/v1/reset", self.base))).await
    }

    pub async fn journal(&self, job: Option<&str>, limit: usize) -> Result<Value, ClientError> {
        let mut url = format!("{}/sim/v1/journal?limit={limit}", self.base);
        if let Some(j) = job {
            url.push_str(&format!("&job={j}"));
        }
        self.send(self.http.get(url)).await
    }

    pub async fn load_scenario(&self, toml_text: &str) -> Result<Value, ClientError> {
        self.send(self.http.post(format!("{}/sim/v1/scenario", self.base)).body(toml_text.to_string())).await
    }

    pub async fn health(&self) -> Result<Value, ClientError> {
        self.send(self.http.get(format!("{}/sim/v1/health", self.base))).await
    }
}
