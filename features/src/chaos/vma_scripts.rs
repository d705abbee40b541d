//! What sim-vma is told in a chaos run: a job's script as a job spec (a ramp with a timed
//! transition, or disks copied by the clock), a VMA-wide fault as a fault spec, and the VMA's
//! percentage of a job as the OMA counts it.

use serde_json::{json, Value};
use sim_vma::spec::{FaultSpec, JobSpec};

use super::schedule::{JobPlan, VmaFault, VmaScript, DISK_PAUSE_MS};

/// The VMA's percentage of a job as the OMA counts it: over all its disks for a multi-disk job
/// (sim-vma shows the current disk's).
pub fn job_wide_percent(plan: &JobPlan, view: &sim_vma::state::JobView) -> f64 {
    let (Some(sizes), Some(disk)) = (&plan.disks, view.disk) else { return view.percentage };
    let total: i64 = sizes.iter().sum();
    let done: i64 = sizes.iter().take(disk.saturating_sub(1)).sum();
    (done + view.bytes_transferred) as f64 * 100.0 / total.max(1) as f64
}

/// Tell sim-vma what to do with job `id` from now on; `run_ms`: how long the run's events last.
pub fn give_script(
    sim: &sim_vma::SimState,
    id: &str,
    names: &[String],
    plan: &JobPlan,
    run_ms: u64,
) -> anyhow::Result<()> {
    let value = match (&plan.disks, plan.disk_ms()) {
        (Some(sizes), Some(disk_ms)) => json!({"mode": "multi_disk", "disks": sizes, "export_names": names,
            "rate_per_second": 100_000.0 / disk_ms.max(1.0), "pause": format!("{DISK_PAUSE_MS}ms")}),
        _ => script_spec(&plan.vma, plan.start_percent, names, run_ms),
    };
    let spec: JobSpec = serde_json::from_value(value)?;
    sim.put_job(id, &spec).map_err(|e| anyhow::anyhow!("sim-vma refused the script of {id}: {e}"))?;
    Ok(())
}

/// How long after the events a run may still go on (healing and settling), for a ramp that must
/// not reach its end before the run does.
const AFTER_THE_EVENTS_MS: u64 = 60_000;

/// A ramp's rate: `usual` %/s, slowed so that from `start` it stays below `ceiling` for `ms`.
/// A ramp that reached 100 % would complete on its own: a script that fails, stalls, vanishes or
/// runs on would then end as "completed" in a long run (a soak), against its history.
fn rate_below(usual: f64, start: f64, ceiling: f64, ms: u64) -> f64 {
    let secs = (ms as f64 / 1000.0).max(0.001);
    usual.min((ceiling - start).max(0.1) / secs)
}

/// The sim-vma job spec of a script. Each ramp keeps moving (a frozen job would be a stall) and
/// stays short of 100 % until its transition (`run_ms` plus the settling for one that runs on).
/// The usual rates hold in a run of seconds; a long one slows them.
pub fn script_spec(script: &VmaScript, start: f64, names: &[String], run_ms: u64) -> Value {
    let ramp =
        |rate: f64| json!({"mode": "running", "start_percent": start, "rate_per_second": rate, "export_names": names});
    let after = |ms: u64| format!("{ms}ms");
    match script {
        VmaScript::Completes { after_ms } => {
            let mut s = ramp(rate_below(1.0, start, 99.0, *after_ms));
            s["transitions"] = json!([{"after": after(*after_ms), "mode": "completed"}]);
            s
        }
        VmaScript::Fails { after_ms } => {
            let mut s = ramp(rate_below(1.0, start, 99.0, *after_ms));
            s["transitions"] =
                json!([{"after": after(*after_ms), "mode": "failed", "message": "NBD export went away"}]);
            s
        }
        VmaScript::Vanishes { after_ms, http200, percent } => {
            // Slowly enough to stay on its side of 90 %: in a short run from 97 % it reaches at
            // most 98.8 % before it vanishes, from 80 % at most 84.5 %.
            let rate = if *percent > 90.0 {
                rate_below(0.2, start, 99.5, *after_ms)
            } else {
                rate_below(0.5, start, 89.0, *after_ms)
            };
            let mut s =
                json!({"mode": "running", "start_percent": start, "rate_per_second": rate, "export_names": names});
            let gone = if *http200 { "http200_not_found" } else { "not_found" };
            s["transitions"] = json!([{"after": after(*after_ms), "mode": gone}]);
            s
        }
        VmaScript::Stalls { after_ms } => {
            let mut s = ramp(rate_below(2.0, start, 99.0, *after_ms));
            s["transitions"] = json!([{"after": after(*after_ms), "mode": "stale"}]);
            s
        }
        VmaScript::RunsOn => ramp(rate_below(0.5, start, 99.0, run_ms + AFTER_THE_EVENTS_MS)),
    }
}

/// The sim-vma fault of a VMA-wide fault event, lasting `for_ms`.
pub fn fault_spec(fault: VmaFault, for_ms: u64) -> FaultSpec {
    let value = match fault {
        VmaFault::Refused => json!({"unreachable": {"mode": "refused"}}),
        VmaFault::Reset => json!({"unreachable": {"mode": "reset"}}),
        VmaFault::Blackhole => json!({"unreachable": {"mode": "blackhole"}}),
        VmaFault::HangAfterHeaders => json!({"unreachable": {"mode": "hang_after_headers"}}),
        VmaFault::ServerErrors => json!({"error_rate": {"status": 503, "probability": 1.0}}),
        VmaFault::Garbage => json!({"garbage": {"probability": 1.0}}),
        VmaFault::Slow => json!({"latency": {"base": "150ms", "jitter": "100ms"}}),
    };
    let mut value = value;
    value["for"] = json!(format!("{for_ms}ms"));
    serde_json::from_value(value).expect("a fault spec of ours")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(spec: &Value) -> f64 {
        spec["rate_per_second"].as_f64().expect("a ramp")
    }

    /// A short run keeps the usual rates (the fixed seeds' schedules play as they always did); in
    /// a long one no ramp reaches its end before its script says.
    #[test]
    fn a_ramp_ends_where_its_script_says_however_long_the_run() {
        let short = script_spec(&VmaScript::Fails { after_ms: 7_000 }, 60.0, &[], 6_000);
        assert_eq!(rate(&short), 1.0);
        assert_eq!(rate(&script_spec(&VmaScript::RunsOn, 60.0, &[], 6_000)), 0.5);
        let low = VmaScript::Vanishes { percent: 77.0, after_ms: 414_866, http200: false };
        let r = rate(&script_spec(&low, 77.0, &[], 1_800_000));
        assert!(r > 0.0 && 77.0 + r * 414.866 < 90.0, "{r} %/s reaches 90 % before it vanishes");
        for script in [
            VmaScript::Fails { after_ms: 900_000 },
            VmaScript::Stalls { after_ms: 900_000 },
            VmaScript::Completes { after_ms: 900_000 },
        ] {
            let r = rate(&script_spec(&script, 60.0, &[], 1_800_000));
            assert!(r > 0.0 && 60.0 + r * 900.0 < 100.0, "{script:?}: {r} %/s");
        }
        let r = rate(&script_spec(&VmaScript::RunsOn, 60.0, &[], 1_800_000));
        assert!(60.0 + r * (1_800.0 + 60.0) < 100.0, "runs on: {r} %/s");
    }
}
