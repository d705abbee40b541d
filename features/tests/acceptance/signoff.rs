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

pub fn write(
    out_dir: &Path,
    evidence: &BTreeMap<String, Vec<String>>,
    durations: &BTreeMap<String, f64>,
    wall: Duration,
    expected: &ExpectedLines,
) -> anyhow::Result<PathBuf> {
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
    let path = out_dir.join("signoff.md");
    std::fs::write(&path, md)?;
    if !missing.is_empty() {
        anyhow::bail!("guide cases without a scenario: {}", missing.join(", "));
    }
    Ok(path)
}
