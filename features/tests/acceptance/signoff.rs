//! The QC sign-off report (`target/acceptance/signoff.md`): each testing-guide case with each of
//! its checklist steps, pass or fail, and the evidence (job rows, key log lines); then every
//! other feature's scenarios. Built from the Cucumber JSON of the same run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use oma_acceptance::expected_lines::ExpectedLines;
use serde_json::Value;

/// The nine cases of the testing guide, by tag.
pub const GUIDE_CASES: [(&str, &str); 9] = [
    ("guide-1", "Scenario 1: Normal startup with no active jobs"),
    ("guide-2", "Scenario 2: Job still running on VMA"),
    ("guide-3", "Scenario 3: Job completed during OMA downtime"),
    ("guide-4-recent", "Scenario 4: VMA unreachable - recent job (< 30 min)"),
    ("guide-4-old", "Scenario 4: VMA unreachable - old job (> 30 min)"),
    ("guide-4-return", "Scenario 4: System recovers when the VMA comes back online"),
    ("guide-5", "Scenario 5: Job failed on VMA"),
    ("guide-6A", "Scenario 6A: Job not found on VMA, high progress (> 90%)"),
    ("guide-6B", "Scenario 6B: Job not found on VMA, low progress (< 90%)"),
];

struct ScenarioResult {
    feature: String,
    name: String,
    tags: Vec<String>,
    steps: Vec<(String, String, Option<String>)>,
}

impl ScenarioResult {
    fn passed(&self) -> bool {
        !self.steps.is_empty() && self.steps.iter().all(|(_, status, _)| status == "passed")
    }
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "✅ pass"
    } else {
        "❌ FAIL"
    }
}

fn tag_name(t: &Value) -> String {
    t["name"].as_str().unwrap_or("").trim_start_matches('@').to_string()
}

/// A WARN or ERROR line an OMA logged, and whether its scenario expected it (a `the logs show`
/// step of the scenario names it).
#[derive(Debug, Clone)]
pub struct Warning {
    pub scenario: String,
    pub line: String,
    pub expected: bool,
}

pub fn is_warning(line: &str) -> bool {
    line.contains(" WARN ")
        || line.contains(" ERROR ")
        || line.contains("\"level\":\"WARN\"")
        || line.contains("\"level\":\"ERROR\"")
}

/// What a scenario's warnings may say, by what the scenario does: a disturbance it causes (a
/// Given or When step naming the VMA, the database, an orphan) or an outcome it asserts (a job
/// failed, lost, stalled). Any other WARN or ERROR line is unexpected, and the sign-off lists it.
type StepTest = fn(&cucumber::gherkin::Step) -> bool;

const EXPECTED_WARNINGS: [(StepTest, &[&str]); 4] = [
    (
        |s| s.ty != cucumber::gherkin::StepType::Then && s.value.contains("VMA"),
        &[
            "VMA unreachable",
            "VMA polling error",
            "VMA services not available",
            "not found on VMA",
            "VMA reports job failed",
            "VMA /replicate failed",
            // A recent job the VMA could not be asked about is left for the health monitor (4A).
            "Found job not being polled",
        ],
    ),
    (
        |s| s.ty != cucumber::gherkin::StepType::Then && s.value.contains("database"),
        &[
            "slow statement",
            "time to acquire exceeded",
            "testing the connection",
            "Failed to write polling results",
            "could not renew its leases",
            "paused: their leases could not be renewed",
            "Found job not being polled",
            "Failed to restart polling",
            "Failed to finalize",
            "Failed to recover",
            "could not read the database clock",
            "Failed to query stale jobs",
        ],
    ),
    (
        |s| s.value.contains("orphan") || s.value.contains("health monitor") || s.value.contains("killed"),
        &["Found job not being polled"],
    ),
    (
        |s| s.ty == cucumber::gherkin::StepType::Then && (s.value.contains("\"failed\"") || s.value.contains("lost")),
        &["marked as failed", "marking as", "VMA reports job failed", "stalled on VMA"],
    ),
];

/// What a scenario's WARN and ERROR lines may contain: the texts its `the logs show "…"` steps
/// look for (placeholders filled in), and what its disturbances and outcomes explain.
pub fn checked_log_texts(scenario: &cucumber::gherkin::Scenario, expand: impl Fn(&str) -> String) -> Vec<String> {
    let mut texts: Vec<String> = scenario
        .steps
        .iter()
        .filter(|step| step.value.starts_with("the logs show \""))
        .filter_map(|step| step.value.split('"').nth(1))
        .filter(|text| !text.is_empty())
        .map(expand)
        .collect();
    for (applies, explained) in EXPECTED_WARNINGS {
        if scenario.steps.iter().any(applies) {
            texts.extend(explained.iter().map(|t| t.to_string()));
        }
    }
    texts
}

/// The guide's PERFORMANCE BASELINE (`time curl /health`, the OMA's memory, active polling jobs)
/// across the run: one sample at the end of each scenario whose OMA still runs.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub health_ms: Vec<f64>,
    pub peak_rss_kib: u64,
    pub peak_active_jobs: u64,
    pub scenarios: usize,
}

impl Baseline {
    pub const fn new() -> Baseline {
        Baseline { health_ms: Vec::new(), peak_rss_kib: 0, peak_active_jobs: 0, scenarios: 0 }
    }

    pub fn add(&mut self, sample: Option<Baseline>) {
        let Some(sample) = sample else { return };
        self.health_ms.extend(sample.health_ms);
        self.peak_rss_kib = self.peak_rss_kib.max(sample.peak_rss_kib);
        self.peak_active_jobs = self.peak_active_jobs.max(sample.peak_active_jobs);
        self.scenarios += sample.scenarios;
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut v = self.health_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
    }
}

/// `/health` five times, timed; the OMA's resident set; its active polling jobs.
pub async fn sample_baseline(lab: &mut oma_acceptance::Lab) -> Option<Baseline> {
    let oma = lab.omas.first_mut()?;
    if !oma.is_running() {
        return None;
    }
    let pid = oma.pid()?;
    let url = format!("{}/health", oma.url());
    let mut sample = Baseline { scenarios: 1, ..Baseline::new() };
    for _ in 0..5 {
        let began = std::time::Instant::now();
        let Ok(resp) = lab.http.get(&url).send().await else { return None };
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        sample.health_ms.push(began.elapsed().as_secs_f64() * 1000.0);
        let active = body["polling"]["active_jobs"].as_u64().unwrap_or(0);
        sample.peak_active_jobs = sample.peak_active_jobs.max(active);
    }
    sample.peak_rss_kib = oma_acceptance::procfs::rss_kib_of(pid);
    Some(sample)
}

/// What one run of the suite gathered for the report.
pub struct RunFacts<'a> {
    pub evidence: &'a BTreeMap<String, Vec<String>>,
    pub durations: &'a BTreeMap<String, f64>,
    pub wall: Duration,
    pub expected: &'a ExpectedLines,
    pub warnings: &'a [Warning],
    pub baseline: &'a Baseline,
}

/// Limits of the baseline item: `/health` p99 and the OMA's peak resident set.
const HEALTH_P99_MS: f64 = 100.0;
const PEAK_RSS_MIB: f64 = 256.0;

pub fn write(out_dir: &Path, run: &RunFacts<'_>) -> anyhow::Result<PathBuf> {
    let (evidence, durations, wall, expected) = (run.evidence, run.durations, run.wall, run.expected);
    let json_path = out_dir.join("cucumber.json");
    let text = std::fs::read_to_string(&json_path).with_context(|| format!("reading {}", json_path.display()))?;
    let features: Vec<Value> = serde_json::from_str(&text).context("parsing cucumber.json")?;
    let mut scenarios = Vec::new();
    for feature in &features {
        let feature_name = feature["name"].as_str().unwrap_or("").to_string();
        let feature_tags: Vec<String> =
            feature["tags"].as_array().map(|a| a.iter().map(tag_name).collect()).unwrap_or_default();
        for element in feature["elements"].as_array().cloned().unwrap_or_default() {
            let mut tags = feature_tags.clone();
            tags.extend(
                element["tags"].as_array().map(|a| a.iter().map(tag_name).collect::<Vec<_>>()).unwrap_or_default(),
            );
            let steps = element["steps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|s| {
                    (
                        format!("{}{}", s["keyword"].as_str().unwrap_or(""), s["name"].as_str().unwrap_or("")),
                        s["result"]["status"].as_str().unwrap_or("unknown").to_string(),
                        s["result"]["error_message"].as_str().map(str::to_string),
                    )
                })
                .collect();
            scenarios.push(ScenarioResult {
                feature: feature_name.clone(),
                name: element["name"].as_str().unwrap_or("").to_string(),
                tags,
                steps,
            });
        }
    }
    let total = scenarios.len();
    let passed = scenarios.iter().filter(|s| s.passed()).count();
    let missing: Vec<&str> = GUIDE_CASES
        .iter()
        .filter(|(tag, _)| !scenarios.iter().any(|s| s.tags.iter().any(|t| t == tag)))
        .map(|(t, _)| *t)
        .collect();
    let overall = passed == total && missing.is_empty() && total > 0;

    let mut md = String::new();
    writeln!(md, "# QC sign-off: OMA job recovery (oma-api {})\n", env!("CARGO_PKG_VERSION"))?;
    writeln!(
        md,
        "Generated {} by the acceptance suite (`cargo test`), against real MariaDB, sim-vma and `oma-api` processes.\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    )?;
    writeln!(
        md,
        "**Overall: {}** — {passed} of {total} scenarios passed; suite wall time {:.1} s.\n",
        if overall { "PASS" } else { "FAIL" },
        wall.as_secs_f64()
    )?;
    if !missing.is_empty() {
        writeln!(md, "**Missing guide cases:** {}\n", missing.join(", "))?;
    }
    writeln!(md, "## Testing guide scenarios\n")?;
    writeln!(md, "| Guide case | Result | Scenario | Time |")?;
    writeln!(md, "|---|---|---|---|")?;
    for (tag, title) in GUIDE_CASES {
        match scenarios.iter().find(|s| s.tags.iter().any(|t| t == tag)) {
            Some(s) => writeln!(
                md,
                "| {title} | {} | {} | {:.1} s |",
                mark(s.passed()),
                s.name,
                durations.get(&s.name).copied().unwrap_or(0.0)
            )?,
            None => writeln!(md, "| {title} | ❌ MISSING | — | — |")?,
        }
    }
    for (tag, title) in GUIDE_CASES {
        let Some(s) = scenarios.iter().find(|s| s.tags.iter().any(|t| t == tag)) else { continue };
        writeln!(md, "\n### {title} — {}\n", mark(s.passed()))?;
        writeln!(md, "Checklist:\n")?;
        for (step, status, error) in &s.steps {
            let ok = status == "passed";
            writeln!(md, "- [{}] {step} — {status}", if ok { "x" } else { " " })?;
            if let Some(e) = error {
                writeln!(md, "  - error: `{}`", e.lines().next().unwrap_or("").replace('`', "'"))?;
            }
        }
        if let Some(ev) = evidence.get(&s.name) {
            writeln!(md, "\nEvidence:\n")?;
            writeln!(md, "```text")?;
            for line in ev {
                writeln!(md, "{line}")?;
            }
            writeln!(md, "```")?;
        }
    }
    let mut by_feature: BTreeMap<&str, Vec<&ScenarioResult>> = BTreeMap::new();
    for s in &scenarios {
        if !s.tags.iter().any(|t| t.starts_with("guide-")) {
            by_feature.entry(s.feature.as_str()).or_default().push(s);
        }
    }
    writeln!(md, "\n## Job sheet criteria, plan, manifest and regressions\n")?;
    for (feature, list) in by_feature {
        writeln!(md, "\n### {feature}\n")?;
        writeln!(md, "| Result | Scenario | Tags | Time |")?;
        writeln!(md, "|---|---|---|---|")?;
        for s in list {
            writeln!(
                md,
                "| {} | {} | {} | {:.1} s |",
                mark(s.passed()),
                s.name,
                s.tags.join(" "),
                durations.get(&s.name).copied().unwrap_or(0.0)
            )?;
        }
    }
    writeln!(md, "\n## The seed documents' log lines\n")?;
    writeln!(md, "Each line QC is told to look for, as the OMA printed it in some scenario of this run.\n")?;
    writeln!(md, "| Result | Line | Seed |")?;
    writeln!(md, "|---|---|---|")?;
    for (line, state) in expected.states() {
        let result = match (state, &line.not_verbatim) {
            (Some(true), _) => "✅ printed".to_string(),
            (Some(false), _) => "❌ NOT printed".to_string(),
            (None, why) => format!("➖ not verbatim: {}", why.as_deref().unwrap_or("")),
        };
        writeln!(md, "| {result} | `{}` | {} |", line.text, line.seed)?;
    }
    checklist(&mut md, out_dir, &scenarios, run)?;
    let path = out_dir.join("signoff.md");
    std::fs::write(&path, md)?;
    if !missing.is_empty() {
        anyhow::bail!("guide cases without a scenario: {}", missing.join(", "));
    }
    Ok(path)
}

/// The guide's SIGN-OFF CHECKLIST, each item ticked only by evidence this run (or a soak run)
/// gathered, else left open with what is missing or the command that would run it.
fn checklist(md: &mut String, out_dir: &Path, scenarios: &[ScenarioResult], run: &RunFacts<'_>) -> anyhow::Result<()> {
    writeln!(md, "\n## Sign-off checklist (testing guide)\n")?;
    let item = |md: &mut String, ok: bool, what: &str, evidence: String| {
        writeln!(md, "- [{}] **{what}** — {evidence}", if ok { "x" } else { " " })
    };
    let total = scenarios.len();
    let passed = scenarios.iter().filter(|s| s.passed()).count();
    item(
        md,
        passed == total && total > 0,
        "All test scenarios passed",
        format!("{passed} of {total} scenarios passed"),
    )?;

    let soak = out_dir.parent().map(|t| t.join("chaos/soak.json"));
    let soak: Option<serde_json::Value> =
        soak.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| serde_json::from_str(&t).ok());
    let command = "`cargo run --release -p oma-acceptance --bin oma-lab -- chaos --soak --duration 1h`";
    match soak {
        Some(v) => {
            let secs = v["verdict"]["duration_s"].as_f64().unwrap_or(0.0);
            let stable = v["verdict"]["stable"].as_bool() == Some(true) && v["passed"].as_bool() == Some(true);
            let figures = format!(
                "soak seed {}: {:.0} s, {}, oma0 RSS {:.1} → {:.1} MiB, worst poll age {:.1} s (target/chaos/soak.md)",
                v["seed"],
                secs,
                if stable { "stable" } else { "NOT stable" },
                v["verdict"]["rss_first_quarter_mib"].as_f64().unwrap_or(0.0),
                v["verdict"]["rss_last_quarter_mib"].as_f64().unwrap_or(0.0),
                v["verdict"]["worst_poll_age_s"].as_f64().unwrap_or(0.0)
            );
            let long = secs >= 3600.0;
            let why = if long { String::new() } else { format!("; shorter than an hour: run {command}") };
            item(md, stable && long, "Service stable for 1+ hours", format!("{figures}{why}"))?;
        }
        None => item(md, false, "Service stable for 1+ hours", format!("not run: {command}"))?,
    }

    let unexpected: Vec<&Warning> = run.warnings.iter().filter(|w| !w.expected).collect();
    let expected_n = run.warnings.len() - unexpected.len();
    item(
        md,
        unexpected.is_empty(),
        "No errors in logs",
        format!(
            "{} WARN/ERROR lines across the run, {expected_n} of them checked by the scenario that caused them, {} not",
            run.warnings.len(),
            unexpected.len()
        ),
    )?;

    let named = |pick: &dyn Fn(&ScenarioResult) -> bool| -> (bool, String) {
        let chosen: Vec<&ScenarioResult> = scenarios.iter().filter(|s| pick(s)).collect();
        let ok = !chosen.is_empty() && chosen.iter().all(|s| s.passed());
        let names: Vec<String> = chosen.iter().map(|s| format!("{} {}", mark(s.passed()), s.name)).collect();
        (ok, if names.is_empty() { "no scenario shows it".into() } else { names.join("; ") })
    };
    let tagged =
        |tags: &'static [&'static str]| move |s: &ScenarioResult| s.tags.iter().any(|t| tags.contains(&t.as_str()));
    let (ok, names) =
        named(&|s| tagged(&["guide-2", "guide-4-recent", "guide-4-return"])(s) || s.name.contains("orphaned"));
    item(md, ok, "Active jobs properly tracked", names)?;
    let (ok, names) = named(&|s| tagged(&["guide-3", "guide-6A"])(s) || s.name.contains("complete"));
    item(md, ok, "Job completion detected correctly", names)?;
    let (ok, names) = named(&|s| tagged(&["guide-2"])(s) || s.feature.starts_with("Job sheet - poller"));
    item(md, ok, "VMA polling working", names)?;

    let b = run.baseline;
    let (p50, p99) = (b.percentile(0.5), b.percentile(0.99));
    let rss = b.peak_rss_kib as f64 / 1024.0;
    let ok = b.scenarios > 0 && p99 <= HEALTH_P99_MS && rss <= PEAK_RSS_MIB;
    item(
        md,
        ok,
        "Performance metrics acceptable",
        format!(
            "`/health` p50 {p50:.1} ms, p99 {p99:.1} ms over {} requests (limit {HEALTH_P99_MS} ms); peak OMA RSS \
             {rss:.1} MiB (limit {PEAK_RSS_MIB} MiB); up to {} active polling jobs; sampled at the end of {} scenarios",
            b.health_ms.len(),
            b.peak_active_jobs,
            b.scenarios
        ),
    )?;

    let (ok, names) = named(&tagged(&["rollback"]));
    let timed: Vec<&String> = run.evidence.values().flatten().filter(|l| l.starts_with("rollback to ")).collect();
    let timed = timed.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("; ");
    item(md, ok, "Rollback procedure tested and works", format!("{names}; {timed}"))?;

    if !unexpected.is_empty() {
        writeln!(md, "\n### WARN/ERROR lines no scenario checked\n")?;
        writeln!(md, "```text")?;
        for w in unexpected.iter().take(200) {
            writeln!(md, "[{}] {}", w.scenario, w.line.trim())?;
        }
        if unexpected.len() > 200 {
            writeln!(md, "… and {} more", unexpected.len() - 200)?;
        }
        writeln!(md, "```")?;
    }
    Ok(())
}
