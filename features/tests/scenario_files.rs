//! Every scenario file in `scenarios/` parses and, played by `oma-lab play` against a real OMA,
//! reaches its expectations.

use std::path::PathBuf;
use std::time::Duration;

fn scenario_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn there_is_a_scenario_file_for_every_guide_case() {
    let names: Vec<String> =
        scenario_files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for case in [
        "guide-1",
        "guide-2",
        "guide-3",
        "guide-4-vma-unreachable-recent",
        "guide-4-vma-unreachable-old",
        "guide-4-vma-returns",
        "guide-5",
        "guide-6a",
        "guide-6b",
    ] {
        assert!(names.iter().any(|n| n.starts_with(case)), "no scenario file for {case}: {names:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_file_plays_to_its_expectations() {
    let plays = scenario_files().into_iter().map(|path| async move {
        let result = oma_acceptance::play::play_file(&path, Duration::from_secs(20)).await;
        (path, result)
    });
    let mut failures = Vec::new();
    for (path, result) in futures::future::join_all(plays).await {
        match result {
            Ok(report) if report.met => {}
            Ok(report) => failures.push(format!("{}: expectations not met: {:?}", path.display(), report.outcomes)),
            Err(e) => failures.push(format!("{}: {e:#}", path.display())),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
