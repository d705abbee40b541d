//! The benchmarks at a smoke size: they run end to end and produce figures. Timings are
//! reported by `oma-bench`, never asserted here.

use std::time::Duration;

use oma_bench::loadgen::{self, Placement};
use oma_bench::scale;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn benchmarks_run_at_a_smoke_size() {
    let r = scale::recovery(30).await.unwrap();
    assert_eq!(r.n, 30);
    assert!(r.start_to_summary > Duration::ZERO);
    let resume = scale::resume(20).await.unwrap();
    assert!(resume.all_polled_after_ready > Duration::ZERO);
    let steady = scale::steady(20, Duration::from_millis(200), Duration::from_secs(2)).await.unwrap();
    assert!(steady.polls_per_second > 0.0, "{steady:?}");
    let outage = scale::outage(20, Duration::from_millis(200), Duration::from_secs(1)).await.unwrap();
    assert!(outage.rss_peak_during_mib > 0.0 && outage.all_fresh_after_return > Duration::ZERO, "{outage:?}");
    let load = loadgen::sim_vs_wiremock(4, Duration::from_millis(500), Placement::SameProcess, 1).await.unwrap();
    assert_eq!(load.len(), 4);
    assert!(load.iter().all(|s| s.rounds.len() == 1 && s.median().requests > 0 && s.median().errors == 0), "{load:?}");
}
