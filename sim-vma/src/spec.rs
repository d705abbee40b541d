//! Inputs of the control API and of scenario files: job specs and fault specs, validated into
//! the typed model with errors that name the field.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::{Disks, MalformedKind, Mode, Ramp, Rate, Transition, Trigger};

/// A validation error naming the field that was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("field `{field}`: {message}")]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpecError {
    SpecError { field: field.into(), message: message.into() }
}

pub const MODES: &str =
    "running, completed, failed, not_found, http200_not_found, stale, slow, error, malformed, multi_disk";

/// A job's behaviour, as JSON (`PUT /sim/v1/jobs/{id}`) or TOML (`[[jobs]]`). Transitions use the
/// same shape with `after_polls` or `after`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Only in scenario files: the job id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub mode: String,
    #[serde(default)]
    pub export_names: Option<Vec<String>>,
    pub start_percent: Option<f64>,
    pub rate_per_poll: Option<f64>,
    pub rate_per_second: Option<f64>,
    pub phases: Option<Vec<String>>,
    pub total_bytes: Option<i64>,
    pub throughput_mbps: Option<f64>,
    pub sync_type: Option<String>,
    pub message: Option<String>,
    /// For `slow`: e.g. "2s".
    pub delay: Option<String>,
    pub status: Option<u16>,
    pub kind: Option<String>,
    #[serde(default)]
    pub transitions: Vec<JobSpec>,
    pub after_polls: Option<u64>,
    /// Time in the previous mode, e.g. "2s".
    pub after: Option<String>,
    /// `multi_disk`: each disk's size in bytes, in copy order (2 to 64 disks).
    pub disks: Option<Vec<i64>>,
    /// `multi_disk` with `rate_per_poll`: polls answered `completed` between one disk and the
    /// next (default 2).
    pub pause_polls: Option<u64>,
    /// `multi_disk` with `rate_per_second`: time answered `completed` between one disk and the
    /// next, e.g. "300ms" (default 500ms).
    pub pause: Option<String>,
    /// `multi_disk`: send `disk_progresses` (default false, as migratekit's VMA mostly does).
    pub disk_progresses: Option<bool>,
}

pub fn parse_duration(field: &str, value: &str) -> Result<Duration, SpecError> {
    humantime::parse_duration(value.trim()).map_err(|e| err(field, format!("{e} (use e.g. 250ms, 2s)")))
}

impl JobSpec {
    /// The typed mode of this spec.
    pub fn mode(&self, prefix: &str) -> Result<Mode, SpecError> {
        let f = |name: &str| format!("{prefix}{name}");
        let ramp = || -> Result<Ramp, SpecError> {
            if let Some(p) = self.start_percent {
                if !(0.0..=100.0).contains(&p) || p.is_nan() {
                    return Err(err(f("start_percent"), format!("must be between 0 and 100, got {p}")));
                }
            }
            let rate = match (self.rate_per_poll, self.rate_per_second) {
                (Some(_), Some(_)) => {
                    return Err(err(f("rate_per_poll"), "give rate_per_poll or rate_per_second, not both"))
                }
                (Some(r), None) if r < 0.0 || r.is_nan() => {
                    return Err(err(f("rate_per_poll"), format!("must not be negative, got {r}")))
                }
                (None, Some(r)) if r < 0.0 || r.is_nan() => {
                    return Err(err(f("rate_per_second"), format!("must not be negative, got {r}")))
                }
                (Some(r), None) => Rate::PerPoll(r),
                (None, Some(r)) => Rate::PerSecond(r),
                (None, None) => Rate::None,
            };
            let defaults = Ramp::default();
            let phases = match &self.phases {
                Some(p) if p.is_empty() || p.iter().any(|s| s.trim().is_empty()) => {
                    return Err(err(f("phases"), "must be a non-empty list of phase names"))
                }
                Some(p) => p.clone(),
                None => defaults.phases,
            };
            let total_bytes = match self.total_bytes {
                Some(t) if t < 0 => return Err(err(f("total_bytes"), format!("must not be negative, got {t}"))),
                Some(t) => t,
                None => defaults.total_bytes,
            };
            let throughput_mbps = match self.throughput_mbps {
                Some(t) if t < 0.0 || t.is_nan() => {
                    return Err(err(f("throughput_mbps"), format!("must not be negative, got {t}")))
                }
                Some(t) => t,
                None => defaults.throughput_mbps,
            };
            let sync_type = match self.sync_type.as_deref() {
                None => defaults.sync_type,
                Some(s @ ("full" | "incremental" | "")) => s.to_string(),
                Some("initial") => "full".to_string(),
                Some(other) => {
                    return Err(err(f("sync_type"), format!("must be full, incremental or initial, got {other:?}")))
                }
            };
            Ok(Ramp { start_percent: self.start_percent, rate, phases, total_bytes, throughput_mbps, sync_type })
        };
        Ok(match self.mode.as_str() {
            "running" => Mode::Running(ramp()?),
            "completed" => Mode::Completed,
            "failed" => Mode::Failed { message: self.message.clone().unwrap_or_else(|| "migration failed".into()) },
            "not_found" => Mode::NotFound,
            "http200_not_found" => Mode::Http200NotFound,
            "stale" => Mode::Stale,
            "slow" => {
                let delay =
                    self.delay.as_deref().ok_or_else(|| err(f("delay"), "is required for mode slow (e.g. \"2s\")"))?;
                Mode::Slow { delay_ms: parse_duration(&f("delay"), delay)?.as_millis() as u64, ramp: ramp()? }
            }
            "error" => {
                let status = self.status.unwrap_or(500);
                if !(400..=599).contains(&status) {
                    return Err(err(f("status"), format!("must be an HTTP error status 400-599, got {status}")));
                }
                Mode::Error { status }
            }
            "malformed" => {
                let kind = self.kind.as_deref().unwrap_or("truncated");
                Mode::Malformed {
                    kind: MalformedKind::parse(kind).ok_or_else(|| {
                        err(
                            f("kind"),
                            format!("unknown kind {kind:?}; use not_json, truncated, wrong_types or oversized"),
                        )
                    })?,
                }
            }
            "multi_disk" => {
                let sizes = self
                    .disks
                    .clone()
                    .ok_or_else(|| err(f("disks"), "is required for mode multi_disk: each disk's size in bytes"))?;
                if !(2..=64).contains(&sizes.len()) {
                    return Err(err(f("disks"), format!("must list 2 to 64 disks, got {}", sizes.len())));
                }
                if let Some(bad) = sizes.iter().find(|s| **s <= 0) {
                    return Err(err(f("disks"), format!("sizes must be more than 0 bytes, got {bad}")));
                }
                // Per poll at most a whole disk; per second at most 1000 disks (a disk in 0.1 s).
                let in_range = |field: &str, r: f64, max: f64| {
                    if r > 0.0 && r <= max {
                        Ok(r)
                    } else {
                        Err(err(f(field), format!("must be more than 0 and at most {max}, got {r}")))
                    }
                };
                let (rate, pause) = match (self.rate_per_poll, self.rate_per_second) {
                    (Some(r), None) => {
                        if self.pause.is_some() {
                            return Err(err(
                                f("pause"),
                                "goes with rate_per_second; with rate_per_poll use pause_polls",
                            ));
                        }
                        let pause_polls = self.pause_polls.unwrap_or(2);
                        if pause_polls > 1000 {
                            return Err(err(f("pause_polls"), format!("must be at most 1000, got {pause_polls}")));
                        }
                        (Rate::PerPoll(in_range("rate_per_poll", r, 100.0)?), Trigger::AfterPolls(pause_polls))
                    }
                    (None, Some(r)) => {
                        if self.pause_polls.is_some() {
                            return Err(err(
                                f("pause_polls"),
                                "goes with rate_per_poll; with rate_per_second use pause",
                            ));
                        }
                        let pause = match &self.pause {
                            Some(p) => parse_duration(&f("pause"), p)?,
                            None => Duration::from_millis(500),
                        };
                        if pause > Duration::from_secs(3600) {
                            return Err(err(f("pause"), format!("must be at most 1h, got {:?}", pause)));
                        }
                        (
                            Rate::PerSecond(in_range("rate_per_second", r, 1000.0)?),
                            Trigger::AfterMillis(pause.as_millis() as u64),
                        )
                    }
                    (Some(_), Some(_)) => {
                        return Err(err(f("rate_per_second"), "give rate_per_poll or rate_per_second, not both"))
                    }
                    (None, None) => {
                        return Err(err(
                            f("rate_per_poll"),
                            "is required for mode multi_disk (percent of a disk per poll), or rate_per_second",
                        ))
                    }
                };
                Mode::MultiDisk(Disks { sizes, rate, pause, disk_progresses: self.disk_progresses.unwrap_or(false) })
            }
            other => return Err(err(f("mode"), format!("unknown mode {other:?}; use one of {MODES}"))),
        })
    }

    /// Mode, transitions and export names of a job.
    pub fn compile(&self) -> Result<CompiledJob, SpecError> {
        if self.after_polls.is_some() || self.after.is_some() {
            return Err(err("after_polls", "only allowed inside transitions"));
        }
        if let Some(names) = &self.export_names {
            if names.iter().any(|n| n.trim().is_empty()) {
                return Err(err("export_names", "names must not be empty"));
            }
        }
        let mode = self.mode("")?;
        let mut transitions = Vec::with_capacity(self.transitions.len());
        for (i, t) in self.transitions.iter().enumerate() {
            let prefix = format!("transitions[{i}].");
            if t.export_names.is_some() || !t.transitions.is_empty() || t.id.is_some() {
                return Err(err(
                    format!("{prefix}export_names"),
                    "export_names, id and nested transitions belong to the job, not a transition",
                ));
            }
            let trigger = match (t.after_polls, t.after.as_deref()) {
                (Some(n), None) => Trigger::AfterPolls(n),
                (None, Some(d)) => {
                    Trigger::AfterMillis(parse_duration(&format!("{prefix}after"), d)?.as_millis() as u64)
                }
                _ => return Err(err(format!("{prefix}after_polls"), "give exactly one of after_polls or after")),
            };
            transitions.push(Transition { trigger, to: t.mode(&prefix)? });
        }
        Ok(CompiledJob { mode, transitions, export_names: self.export_names.clone() })
    }
}

/// A validated job spec.
#[derive(Debug, Clone, PartialEq)]
pub struct CompiledJob {
    pub mode: Mode,
    pub transitions: Vec<Transition>,
    /// `None`: keep the job's current names.
    pub export_names: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnreachableMode {
    /// The VMA listener is closed: connects are refused.
    Refused,
    /// Connections are accepted and never answered.
    Blackhole,
    /// Connections are reset.
    Reset,
    /// Status and headers are sent, then the body never completes.
    HangAfterHeaders,
}

/// Global faults (`PUT /sim/v1/faults`), each with a probability drawn from the seeded RNG.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    pub unreachable: Option<UnreachableSpec>,
    pub latency: Option<LatencySpec>,
    pub error_rate: Option<ErrorRateSpec>,
    /// Answer 200 with a body that is not the VMA's (a proxy's HTML error page).
    pub garbage: Option<GarbageSpec>,
    /// Clear these faults after this long (e.g. "5s").
    #[serde(rename = "for")]
    pub for_duration: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UnreachableSpec {
    pub mode: UnreachableMode,
    pub probability: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    pub base: String,
    pub jitter: Option<String>,
    pub probability: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ErrorRateSpec {
    pub status: Option<u16>,
    pub probability: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GarbageSpec {
    pub probability: Option<f64>,
}

/// Validated faults.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Faults {
    pub unreachable: Option<(UnreachableMode, f64)>,
    pub latency: Option<(Duration, Duration, f64)>,
    pub error_rate: Option<(u16, f64)>,
    /// Probability of a garbage answer.
    pub garbage: Option<f64>,
    pub clear_after: Option<Duration>,
}

impl Faults {
    /// No fault acts on connections or requests (a `clear_after` alone does nothing).
    pub fn is_none(&self) -> bool {
        self.unreachable.is_none() && self.latency.is_none() && self.error_rate.is_none() && self.garbage.is_none()
    }
}

fn probability(field: &str, p: Option<f64>) -> Result<f64, SpecError> {
    let p = p.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&p) || p.is_nan() {
        return Err(err(field, format!("must be between 0 and 1, got {p}")));
    }
    Ok(p)
}

impl FaultSpec {
    pub fn compile(&self) -> Result<Faults, SpecError> {
        let unreachable = match &self.unreachable {
            Some(u) => {
                let p = probability("unreachable.probability", u.probability)?;
                if u.mode == UnreachableMode::Refused && p < 1.0 {
                    return Err(err("unreachable.probability", "refused closes the listener: probability must be 1"));
                }
                Some((u.mode, p))
            }
            None => None,
        };
        let latency = match &self.latency {
            Some(l) => Some((
                parse_duration("latency.base", &l.base)?,
                l.jitter.as_deref().map(|j| parse_duration("latency.jitter", j)).transpose()?.unwrap_or_default(),
                probability("latency.probability", l.probability)?,
            )),
            None => None,
        };
        let error_rate = match &self.error_rate {
            Some(e) => {
                let status = e.status.unwrap_or(500);
                if !(400..=599).contains(&status) {
                    return Err(err("error_rate.status", format!("must be 400-599, got {status}")));
                }
                Some((status, probability("error_rate.probability", Some(e.probability))?))
            }
            None => None,
        };
        let garbage = self.garbage.as_ref().map(|g| probability("garbage.probability", g.probability)).transpose()?;
        let clear_after = self.for_duration.as_deref().map(|d| parse_duration("for", d)).transpose()?;
        Ok(Faults { unreachable, latency, error_rate, garbage, clear_after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<CompiledJob, String> {
        let s: JobSpec = serde_json::from_value(json).map_err(|e| e.to_string())?;
        s.compile().map_err(|e| e.to_string())
    }

    #[test]
    fn bad_input_names_the_field() {
        let e = spec(serde_json::json!({"mode": "exploding"})).unwrap_err();
        assert!(e.contains("`mode`") && e.contains("exploding"), "{e}");
        let e = spec(serde_json::json!({"mode": "running", "start_percent": -5})).unwrap_err();
        assert!(e.contains("start_percent"), "{e}");
        let e = spec(serde_json::json!({"mode": "running", "rate_per_poll": -1})).unwrap_err();
        assert!(e.contains("rate_per_poll"), "{e}");
        let e = spec(serde_json::json!({"mode": "running", "transitions": [{"mode": "completed"}]})).unwrap_err();
        assert!(e.contains("transitions[0].after_polls"), "{e}");
        let e = spec(serde_json::json!({"mode": "running", "transitions": [{"after_polls": 1, "mode": "malformed", "kind": "weird"}]})).unwrap_err();
        assert!(e.contains("transitions[0].kind"), "{e}");
        let e = spec(serde_json::json!({"mode": "running", "percnt": 3})).unwrap_err();
        assert!(e.contains("percnt"), "{e}");
        let e = spec(serde_json::json!({"mode": "slow"})).unwrap_err();
        assert!(e.contains("delay"), "{e}");
    }

    #[test]
    fn multi_disk_specs_are_checked_field_by_field() {
        let ok = spec(serde_json::json!({"mode": "multi_disk", "disks": [10, 20, 30], "rate_per_poll": 25}));
        let Ok(CompiledJob { mode: Mode::MultiDisk(d), .. }) = ok else { panic!("{ok:?}") };
        assert_eq!(
            (d.sizes, d.rate, d.pause, d.disk_progresses),
            (vec![10, 20, 30], Rate::PerPoll(25.0), Trigger::AfterPolls(2), false)
        );
        let timed =
            spec(serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_second": 40, "pause": "300ms"}));
        let Ok(CompiledJob { mode: Mode::MultiDisk(d), .. }) = timed else { panic!("{timed:?}") };
        assert_eq!((d.rate, d.pause), (Rate::PerSecond(40.0), Trigger::AfterMillis(300)));
        for (json, field) in [
            (serde_json::json!({"mode": "multi_disk", "rate_per_poll": 25}), "disks"),
            (serde_json::json!({"mode": "multi_disk", "disks": [10], "rate_per_poll": 25}), "disks"),
            (serde_json::json!({"mode": "multi_disk", "disks": [10, 0], "rate_per_poll": 25}), "disks"),
            (serde_json::json!({"mode": "multi_disk", "disks": [10, 20]}), "rate_per_poll"),
            (serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_poll": 0}), "rate_per_poll"),
            (
                serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_poll": 5, "pause_polls": 5000}),
                "pause_polls",
            ),
            (serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_second": 1001}), "rate_per_second"),
            (
                serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_second": 5, "rate_per_poll": 5}),
                "rate_per_second",
            ),
            (
                serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_second": 5, "pause_polls": 2}),
                "pause_polls",
            ),
            (serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_poll": 5, "pause": "1s"}), "pause"),
            (
                serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_second": 5, "pause": "soon"}),
                "pause",
            ),
            (
                serde_json::json!({"mode": "multi_disk", "disks": [10, 20], "rate_per_second": 5, "pause": "2h"}),
                "pause",
            ),
        ] {
            let e = spec(json.clone()).unwrap_err();
            assert!(e.contains(&format!("`{field}`")), "{json}: {e}");
        }
    }

    #[test]
    fn a_full_spec_compiles() {
        let CompiledJob { mode, transitions, export_names: names } = spec(serde_json::json!({
            "mode": "running", "start_percent": 30, "rate_per_poll": 2, "export_names": ["migration-vol-1"],
            "transitions": [{"after_polls": 3, "mode": "completed"}, {"after": "2s", "mode": "not_found"}]
        }))
        .unwrap();
        assert_eq!(mode.name(), "running");
        assert_eq!(transitions.len(), 2);
        assert_eq!(transitions[1].trigger, Trigger::AfterMillis(2000));
        assert_eq!(names.unwrap(), vec!["migration-vol-1"]);
    }

    #[test]
    fn faults_validate_probabilities() {
        let f: FaultSpec =
            serde_json::from_value(serde_json::json!({"unreachable": {"mode": "refused", "probability": 0.5}}))
                .unwrap();
        assert!(f.compile().unwrap_err().field.contains("probability"));
        let f: FaultSpec = serde_json::from_value(serde_json::json!({"error_rate": {"probability": 1.5}})).unwrap();
        assert!(f.compile().is_err());
        let e =
            serde_json::from_value::<FaultSpec>(serde_json::json!({"unreachable": {"mode": "sideways"}})).unwrap_err();
        assert!(e.to_string().contains("sideways"), "{e}");
        let f: FaultSpec =
            serde_json::from_value(serde_json::json!({"latency": {"base": "100ms", "jitter": "50ms"}, "for": "3s"}))
                .unwrap();
        let c = f.compile().unwrap();
        assert_eq!(c.latency, Some((Duration::from_millis(100), Duration::from_millis(50), 1.0)));
        assert_eq!(c.clear_after, Some(Duration::from_secs(3)));
    }
}
