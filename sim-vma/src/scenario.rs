//! Scenario files (TOML): jobs with their behaviour, and a timeline of faults, restarts and mode
//! changes. Errors name the line and the field.

use std::time::Duration;

use serde::Deserialize;

use crate::spec::{parse_duration, FaultSpec, JobSpec, SpecError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Testing-guide scenario this file reproduces, e.g. "2".
    #[serde(default)]
    pub guide_scenario: Option<String>,
    pub seed: Option<u64>,
    #[serde(default)]
    pub jobs: Vec<toml::Spanned<JobSpec>>,
    #[serde(default)]
    pub faults: Option<FaultSpec>,
    #[serde(default)]
    pub timeline: Vec<toml::Spanned<TimelineStep>>,
    /// Environment for the OMA under test (`OMA_STALL_AFTER = "2s"` …), used by `oma-lab play`.
    #[serde(default)]
    pub oma_settings: std::collections::BTreeMap<String, String>,
    /// Jobs as a previous OMA left them in its database (used by `oma-lab play`; sim-vma ignores them).
    #[serde(default)]
    pub oma_jobs: Vec<OmaJob>,
    /// What the OMA should have done by the end, checked by `oma-lab play`.
    #[serde(default)]
    pub expect: Vec<Expectation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OmaJob {
    pub id: String,
    #[serde(default = "default_status")]
    pub status: String,
    #[serde(default)]
    pub progress_percent: f64,
    /// Minutes since the row was last updated (ages are past timestamps).
    #[serde(default)]
    pub updated_minutes_ago: f64,
    #[serde(default)]
    pub never_polled: bool,
    /// The VMA job's export names are this job's `migration-vol-…` names.
    #[serde(default = "default_disks")]
    pub disks: usize,
    /// Each disk's size in bytes, in unit order (instead of `disks` disks of 10 GiB); by default
    /// the sizes of the VMA job of the same id when it is a `multi_disk` one.
    #[serde(default)]
    pub disk_sizes: Option<Vec<i64>>,
}

fn default_status() -> String {
    "replicating".into()
}

fn default_disks() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub job: String,
    pub status: String,
    #[serde(default)]
    pub classification: Option<String>,
    /// Expect the job to be polled (vma_last_poll_at fresh) at the end.
    #[serde(default)]
    pub polled: bool,
    /// A `multi_disk` VMA job: expect the VMA to have copied every disk by then (the OMA stops
    /// asking once it finalizes, so this fails when it finalized after an earlier disk).
    #[serde(default)]
    pub all_disks_copied: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineStep {
    pub at: String,
    /// One of: set_job, faults, clear_faults, restart, forget_job.
    pub action: String,
    pub job: Option<JobSpec>,
    pub job_id: Option<String>,
    pub faults: Option<FaultSpec>,
    pub down_for: Option<String>,
}

/// A checked timeline step.
#[derive(Debug, Clone)]
pub enum Action {
    SetJob(String, Box<JobSpec>),
    Faults(FaultSpec),
    ClearFaults,
    Restart(Option<Duration>),
    ForgetJob(String),
    /// For `oma-lab play`: `oma_stop`, `oma_start`, `oma_restart`, `oma_kill` (sim-vma ignores them).
    Oma(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{0}")]
    Toml(String),
    #[error("line {line}: {source}")]
    Spec { line: usize, source: SpecError },
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

impl Scenario {
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Toml(e.to_string()))?;
        scenario.check(text)?;
        Ok(scenario)
    }

    fn check(&self, text: &str) -> Result<(), ScenarioError> {
        for (i, job) in self.jobs.iter().enumerate() {
            let line = line_of(text, job.span().start);
            let spec = job.get_ref();
            if spec.id.as_deref().is_none_or(|id| id.trim().is_empty()) {
                return Err(ScenarioError::Spec {
                    line,
                    source: SpecError { field: format!("jobs[{i}].id"), message: "is required".into() },
                });
            }
            spec.compile().map_err(|e| ScenarioError::Spec {
                line,
                source: SpecError { field: format!("jobs[{i}].{}", e.field), message: e.message },
            })?;
        }
        if let Some(f) = &self.faults {
            f.compile().map_err(|e| ScenarioError::Spec {
                line: 1,
                source: SpecError { field: format!("faults.{}", e.field), message: e.message },
            })?;
        }
        for (i, job) in self.oma_jobs.iter().enumerate() {
            let bad = |field: &str, message: &str| ScenarioError::Spec {
                line: 1,
                source: SpecError { field: format!("oma_jobs[{i}].{field}"), message: message.into() },
            };
            if !(1..=64).contains(&job.disks) {
                return Err(bad("disks", "must be 1 to 64"));
            }
            if let Some(sizes) = &job.disk_sizes {
                if !(1..=64).contains(&sizes.len()) || sizes.iter().any(|b| *b <= 0) {
                    return Err(bad("disk_sizes", "must list 1 to 64 sizes in bytes, each above 0"));
                }
            }
        }
        for (i, step) in self.timeline.iter().enumerate() {
            let line = line_of(text, step.span().start);
            step.get_ref().action().map_err(|e| ScenarioError::Spec {
                line,
                source: SpecError { field: format!("timeline[{i}].{}", e.field), message: e.message },
            })?;
        }
        Ok(())
    }

    pub fn job_specs(&self) -> impl Iterator<Item = &JobSpec> {
        self.jobs.iter().map(|j| j.get_ref())
    }

    /// The disk sizes of an OMA job: its own `disk_sizes`, else those of the `multi_disk` VMA job
    /// of the same id, else `disks` disks of 10 GiB.
    pub fn disk_sizes(&self, job: &OmaJob) -> Vec<i64> {
        if let Some(sizes) = &job.disk_sizes {
            return sizes.clone();
        }
        let vma = self.job_specs().find(|s| s.id.as_deref() == Some(job.id.as_str()) && s.mode == "multi_disk");
        match vma.and_then(|s| s.disks.clone()) {
            Some(sizes) => sizes,
            None => vec![10 * 1024 * 1024 * 1024; job.disks],
        }
    }

    /// Timeline steps in time order, each with its offset from the start.
    pub fn steps(&self) -> Vec<(Duration, Action)> {
        let mut steps: Vec<(Duration, Action)> = self
            .timeline
            .iter()
            .filter_map(|s| {
                let s = s.get_ref();
                Some((parse_duration("at", &s.at).ok()?, s.action().ok()?))
            })
            .collect();
        steps.sort_by_key(|(at, _)| *at);
        steps
    }
}

impl TimelineStep {
    pub fn action(&self) -> Result<Action, SpecError> {
        parse_duration("at", &self.at)?;
        let need_id = || {
            self.job_id
                .clone()
                .or_else(|| self.job.as_ref().and_then(|j| j.id.clone()))
                .ok_or_else(|| SpecError { field: "job_id".into(), message: "is required for this action".into() })
        };
        Ok(match self.action.as_str() {
            "set_job" => {
                let job = self
                    .job
                    .clone()
                    .ok_or_else(|| SpecError { field: "job".into(), message: "is required for set_job".into() })?;
                let id = need_id()?;
                job.compile().map_err(|e| SpecError { field: format!("job.{}", e.field), message: e.message })?;
                Action::SetJob(id, Box::new(job))
            }
            "faults" => {
                let f = self.faults.clone().ok_or_else(|| SpecError {
                    field: "faults".into(),
                    message: "is required for action faults".into(),
                })?;
                f.compile().map_err(|e| SpecError { field: format!("faults.{}", e.field), message: e.message })?;
                Action::Faults(f)
            }
            "clear_faults" => Action::ClearFaults,
            "restart" => Action::Restart(self.down_for.as_deref().map(|d| parse_duration("down_for", d)).transpose()?),
            "forget_job" => Action::ForgetJob(need_id()?),
            a @ ("oma_stop" | "oma_start" | "oma_restart" | "oma_kill") => Action::Oma(a.to_string()),
            other => {
                return Err(SpecError {
                    field: "action".into(),
                    message: format!(
                        "unknown action {other:?}; use set_job, faults, clear_faults, restart, forget_job, \
                         oma_stop, oma_start, oma_restart or oma_kill"
                    ),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scenario_parses() {
        let s = Scenario::parse(
            r#"
name = "x"
seed = 7
[[jobs]]
id = "job-1"
mode = "running"
start_percent = 30
rate_per_poll = 1
[[jobs.transitions]]
after_polls = 3
mode = "completed"
[[timeline]]
at = "2s"
action = "restart"
down_for = "1s"
"#,
        )
        .unwrap();
        assert_eq!(s.jobs.len(), 1);
        assert_eq!(s.steps().len(), 1);
    }

    #[test]
    fn errors_name_line_and_field() {
        let text = "name = \"x\"\n\n[[jobs]]\nid = \"j\"\nmode = \"running\"\nstart_percent = -4\n";
        let e = Scenario::parse(text).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("jobs[0].start_percent"), "{e}");
        let text = "name = \"x\"\n[[jobs]]\nid = \"j\"\nmdoe = \"running\"\n";
        let e = Scenario::parse(text).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("mdoe"), "{e}");
        let text = "name = \"x\"\n[[timeline]]\nat = \"1s\"\naction = \"explode\"\n";
        let e = Scenario::parse(text).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("timeline[0].action"), "{e}");
        let text = "name = \"x\"\n[[oma_jobs]]\nid = \"j\"\ndisk_sizes = [10, 0]\n";
        let e = Scenario::parse(text).unwrap_err().to_string();
        assert!(e.contains("oma_jobs[0].disk_sizes"), "{e}");
        let text = "name = \"x\"\n[[oma_jobs]]\nid = \"j\"\ndisks = 0\n";
        let e = Scenario::parse(text).unwrap_err().to_string();
        assert!(e.contains("oma_jobs[0].disks"), "{e}");
    }

    #[test]
    fn an_oma_job_takes_its_disk_sizes_from_the_multi_disk_vma_job() {
        let text = "name = \"x\"\n[[oma_jobs]]\nid = \"j\"\n[[oma_jobs]]\nid = \"k\"\ndisks = 2\n\
                    [[jobs]]\nid = \"j\"\nmode = \"multi_disk\"\ndisks = [5, 7]\nrate_per_poll = 10\n";
        let s = Scenario::parse(text).unwrap();
        assert_eq!(s.disk_sizes(&s.oma_jobs[0]), vec![5, 7]);
        assert_eq!(s.disk_sizes(&s.oma_jobs[1]), vec![10 << 30; 2]);
    }
}
