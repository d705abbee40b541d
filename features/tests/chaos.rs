//! The chaos runner's fixed seeds, in the test command: each run draws faults, restarts, kills
//! and outages from its seed, plays them against real parts and must break no invariant. A
//! failure prints the seed, the schedule (also written to `target/chaos-ci/failing-seed-*.toml`
//! for `oma-lab chaos --replay`) and the evidence.

use std::path::Path;

use oma_acceptance::chaos::{self, schedule::Shape, ChaosOptions, CI_SEEDS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_seeds_break_no_invariant() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/chaos-ci");
    let options = ChaosOptions {
        seeds: CI_SEEDS.to_vec(),
        shape: Shape::default(),
        replay: None,
        shrink: false,
        out: out.clone(),
    };
    let passed = chaos::run(&options).await.expect("the chaos runs ran");
    let summary = std::fs::read_to_string(out.join("summary.md")).expect("a summary");
    assert!(passed, "a chaos run broke an invariant (see above):\n{summary}");
    assert!(summary.contains(&format!("{} of {} runs passed", CI_SEEDS.len(), CI_SEEDS.len())), "{summary}");
}
