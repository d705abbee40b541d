//! The chaos runner's fixed seeds, in the test command: each run draws faults, restarts, kills
//! and outages from its seed, plays them against real parts and must break no invariant. A
//! failure prints the seed, the schedule (also written to `target/chaos-ci/failing-seed-*.toml`
//! for `oma-lab chaos --replay`) and the evidence. Then every schedule in
//! `features/chaos/regressions/` is replayed.

use std::path::Path;

use oma_acceptance::chaos::{self, schedule::Shape, ChaosOptions, CI_MULTI_DISK_SEEDS, CI_SEEDS};

/// Play `seeds` drawn with `shape`, one at a time (the test binaries of `cargo test` share the two
/// cores); whether every run passed, and the summary.
async fn run_seeds(seeds: &[u64], shape: Shape, out: &Path) -> (bool, String) {
    let options =
        ChaosOptions { seeds: seeds.to_vec(), shape, replay: None, shrink: false, out: out.to_path_buf(), parallel: 1 };
    let passed = chaos::run(&options).await.expect("the chaos runs ran");
    (passed, std::fs::read_to_string(out.join("summary.md")).expect("a summary"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_seeds_break_no_invariant() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-ci");
    let (passed, summary) = run_seeds(&CI_SEEDS, Shape::default(), &out).await;
    assert!(passed, "a chaos run broke an invariant (see above):\n{summary}");
    assert!(summary.contains(&format!("{} of {} runs passed", CI_SEEDS.len(), CI_SEEDS.len())), "{summary}");
    the_disturbances_took_effect(&out);
    the_multi_disk_seeds_break_no_invariant().await;
    the_regression_schedules_break_no_invariant().await;
}

/// A disturbance the runner could not apply leaves only a mark, and a run without it proves
/// nothing: `KILL` of the OMAs' connections once failed on every run (the processlist id's type
/// differs between MariaDB versions) and no run noticed. At least one fixed seed kills them.
fn the_disturbances_took_effect(out: &Path) {
    let marks: String = CI_SEEDS
        .iter()
        .map(|seed| std::fs::read_to_string(out.join(format!("seed-{seed}/marks.json"))).unwrap_or_default())
        .collect();
    assert!(marks.contains("database connections killed"), "no fixed seed killed a database connection");
    assert!(!marks.contains("error occurred while decoding"), "a disturbance failed in the runner itself");
}

/// Jobs of several disks, copied one after another while OMAs stop and start (reference §10,
/// defect 13): none may be completed before the VMA's last disk.
async fn the_multi_disk_seeds_break_no_invariant() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-ci/multi-disk");
    let (passed, summary) = run_seeds(&CI_MULTI_DISK_SEEDS, Shape { multi_disk: true, ..Shape::default() }, &out).await;
    assert!(passed, "a multi-disk chaos run broke an invariant (see above):\n{summary}");
    let report = std::fs::read_to_string(out.join(format!("seed-{}/report.json", CI_MULTI_DISK_SEEDS[0])))
        .expect("the run's report");
    assert!(report.contains("\"completed_after_the_last_disk\":"), "no multi-disk job in the run: {report}");
}

/// Every schedule that once broke an invariant (`features/chaos/regressions/`, each shrunk to a
/// minimal one and explained in its header) is replayed exactly and must break none now. Run after
/// the fixed seeds, in the same test: two chaos runs at once would share two cores.
async fn the_regression_schedules_break_no_invariant() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("chaos/regressions");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("features/chaos/regressions")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no regression schedule in {}", dir.display());
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-ci/regressions").join(&name);
        let options = ChaosOptions {
            seeds: Vec::new(),
            shape: Shape::default(),
            replay: Some(file.clone()),
            shrink: false,
            out,
            parallel: 1,
        };
        let passed = chaos::run(&options).await.expect("the replay ran");
        assert!(passed, "{} broke an invariant again (see above)", file.display());
    }
}
