//! `oma-bench`: scale benchmarks on the real parts; prints Markdown tables (see docs/PERFORMANCE.md).
//!
//! `oma-bench --sizes 100,1000,10000 --only recovery,resume,steady,load`

use std::time::Duration;

use clap::Parser;
use oma_bench::loadgen::{self, Placement};
use oma_bench::scale;

#[derive(Parser)]
#[command(
    name = "oma-bench",
    about = "Scale benchmarks: recovery, time to resume, steady polling, sim-vma vs wiremock"
)]
struct Cli {
    /// Job counts
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    sizes: Vec<usize>,
    /// Which measurements: recovery, resume, steady, outage, load
    #[arg(long, value_delimiter = ',', default_value = "recovery,resume,steady,outage,load")]
    only: Vec<String>,
    /// Steady polling: interval and length of the measurement
    #[arg(long, default_value = "5s")]
    steady_interval: humantime::Duration,
    #[arg(long, default_value = "60s")]
    steady_duration: humantime::Duration,
    /// Database outage: how long the database is away (polling at --steady-interval)
    #[arg(long, default_value = "60s")]
    outage: humantime::Duration,
    /// sim-vma vs wiremock: connections and length
    #[arg(long, default_value_t = 50)]
    connections: usize,
    #[arg(long, default_value = "10s")]
    load_duration: humantime::Duration,
    /// sim-vma vs wiremock: the servers take turns this many times; the median round is reported
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where the load generator runs: pinned (servers and client process on CPUs of their own;
    /// the default with two or more CPUs), separate (client process, no pinning) or same (one
    /// process)
    #[arg(long, value_enum)]
    placement: Option<Placement>,
    /// Internal: act as the load-generating child for URL and print its figures as JSON
    #[arg(long, hide = true)]
    load_client: Option<String>,
    /// Internal: the CPUs the load-generating child pins itself to
    #[arg(long, hide = true, value_delimiter = ',')]
    client_cpus: Option<Vec<usize>>,
    /// Internal: act as a server child for the sim-vma vs wiremock load, serving until stdin closes
    #[arg(long, hide = true, value_enum)]
    serve: Option<loadgen::ServerKind>,
    /// Internal: the CPUs the server child pins itself to
    #[arg(long, hide = true, value_delimiter = ',')]
    server_cpus: Option<Vec<usize>>,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(kind) = cli.serve {
        return loadgen::serve_child(kind, cli.server_cpus.as_deref());
    }
    if let Some(url) = &cli.load_client {
        // Pin before the runtime exists, so its worker threads inherit the CPU.
        if let Some(cpus) = &cli.client_cpus {
            loadgen::pin_current_thread(cpus)?;
        }
        // One worker per CPU this process may use (the pinned ones): the runtime's default.
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        let announce = || {
            println!("{}", loadgen::MEASURING);
            let _ = std::io::Write::flush(&mut std::io::stdout());
        };
        let figures = runtime.block_on(loadgen::load("client", url, cli.connections, *cli.load_duration, announce))?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let want = |m: &str| cli.only.iter().any(|o| o == m);
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::env::consts::ARCH
    );
    if want("recovery") {
        println!(
            "\n### Startup recovery (mix: 40% running, 20% completed, 10% failed, 20% 404, 10% HTTP-200 not found)\n"
        );
        println!("| jobs | process start → summary | recovery scan | jobs/s |\n|---:|---:|---:|---:|");
        for &n in &cli.sizes {
            let f = scale::recovery(n).await?;
            println!("| {} | {} | {} | {:.0} |", f.n, ms(f.start_to_summary), ms(f.scan), f.jobs_per_second);
        }
    }
    if want("resume") {
        println!("\n### Time to resume (OMA restarted, N running jobs)\n");
        println!("| jobs | spawn → ready | ready → every job freshly polled |\n|---:|---:|---:|");
        for &n in &cli.sizes {
            let f = scale::resume(n).await?;
            println!("| {} | {} | {} |", f.n, ms(f.ready_after_spawn), ms(f.all_polled_after_ready));
        }
    }
    if want("steady") {
        println!("\n### Steady polling (interval {}, measured {})\n", cli.steady_interval, cli.steady_duration);
        println!("| jobs | worst vma_last_poll_at age | OMA CPU (cores) | OMA peak RSS | polls/s |\n|---:|---:|---:|---:|---:|");
        for &n in &cli.sizes {
            let f = scale::steady(n, *cli.steady_interval, *cli.steady_duration).await?;
            println!(
                "| {} | {} | {:.3} | {:.1} MiB | {:.0} |",
                f.n,
                ms(f.worst_poll_age),
                f.cpu_cores,
                f.peak_rss_mib,
                f.polls_per_second
            );
        }
    }
    if want("outage") {
        println!("\n### Database outage (polling every {}, database away {})\n", cli.steady_interval, cli.outage);
        println!("| jobs | OMA RSS before | OMA peak RSS during the outage | database back → every job freshly polled |\n|---:|---:|---:|---:|");
        for &n in &cli.sizes {
            let f = scale::outage(n, *cli.steady_interval, *cli.outage).await?;
            println!(
                "| {} | {:.1} MiB | {:.1} MiB | {} |",
                f.n,
                f.rss_before_mib,
                f.rss_peak_during_mib,
                ms(f.all_fresh_after_return)
            );
        }
    }
    if want("load") {
        let placement = cli.placement.unwrap_or_else(Placement::best_available);
        println!(
            "\n### sim-vma vs wiremock ({} connections, {}; {})\n",
            cli.connections,
            cli.load_duration,
            placement.describe()
        );
        println!(
            "| server | requests/s | errors | p50 | p99 | server CPU per 1k requests (user + kernel) | server cores busy | server RSS growth |\n|---|---:|---:|---:|---:|---:|---:|---:|"
        );
        let series = loadgen::sim_vs_wiremock(cli.connections, *cli.load_duration, placement, cli.rounds).await?;
        for f in series.iter().map(loadgen::LoadSeries::median) {
            let cpu =
                f.server_cpu_per_1k.map(|c| format!("{:.1} ms ({:.1} + {:.1})", c.total_ms(), c.user_ms, c.system_ms));
            // CPU seconds per second of load: wiremock's MockServer serves on one thread of its
            // own, so it stays at or under 1.0 whatever the machine has.
            let cores = f.server_cpu_per_1k.map(|c| format!("{:.2}", c.total_ms() * f.requests_per_second / 1e6));
            println!(
                "| {} | {:.0} | {} | {:.2} ms | {:.2} ms | {} | {} | {:.1} MiB |",
                f.server,
                f.requests_per_second,
                f.errors,
                f.p50.as_secs_f64() * 1000.0,
                f.p99.as_secs_f64() * 1000.0,
                cpu.unwrap_or_else(|| "-".into()),
                cores.unwrap_or_else(|| "-".into()),
                f.rss_growth_mib
            );
        }
        println!("\nMedian of {} rounds; requests/s of each round:", cli.rounds.max(1));
        for s in &series {
            let rates: Vec<String> = s.rounds.iter().map(|r| format!("{:.0}", r.requests_per_second)).collect();
            println!("- {}: {}", s.server, rates.join(", "));
        }
        if let [sim, mock, hyper_sim, floor] = series.as_slice() {
            let rate = |a: &loadgen::LoadSeries, b: &loadgen::LoadSeries| {
                a.median().requests_per_second / b.median().requests_per_second
            };
            let per_round = |a: &loadgen::LoadSeries, b: &loadgen::LoadSeries| {
                a.round_ratios(b).iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ")
            };
            println!(
                "\nsim-vma / wiremock throughput: {:.2}x paired (median of the rounds' ratios {}); {:.2}x of the medians",
                sim.paired_ratio(mock),
                per_round(sim, mock),
                rate(sim, mock)
            );
            println!(
                "sim-vma / sim-vma with its hot path off: {:.2}x paired; hot path off / wiremock: {:.2}x paired",
                sim.paired_ratio(hyper_sim),
                hyper_sim.paired_ratio(mock)
            );
            println!(
                "minimal server / wiremock throughput: {:.2}x paired (the most any server reaches here); sim-vma reaches {:.0} % of it",
                floor.paired_ratio(mock),
                100.0 * rate(sim, floor)
            );
            if let (Some(a), Some(b)) = (sim.median().server_cpu_per_1k, mock.median().server_cpu_per_1k) {
                println!(
                    "wiremock / sim-vma server CPU per request: {:.2}x in all, {:.2}x in user space",
                    b.total_ms() / a.total_ms(),
                    b.user_ms / a.user_ms
                );
            }
        }
    }
    Ok(())
}
