//! `oma-bench`: scale benchmarks on the real parts; prints Markdown tables (see docs/PERFORMANCE.md).
//!
//! `oma-bench --sizes 100,1000,10000 --only recovery,resume,steady,load`

use std::time::Duration;

use clap::Parser;
use oma_acceptance::bench;

#[derive(Parser)]
#[command(
    name = "oma-bench",
    about = "Scale benchmarks: recovery, time to resume, steady polling, sim-vma vs wiremock"
)]
struct Cli {
    /// Job counts
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    sizes: Vec<usize>,
    /// Which measurements: recovery, resume, steady, load
    #[arg(long, value_delimiter = ',', default_value = "recovery,resume,steady,load")]
    only: Vec<String>,
    /// Steady polling: interval and length of the measurement
    #[arg(long, default_value = "5s")]
    steady_interval: humantime::Duration,
    #[arg(long, default_value = "60s")]
    steady_duration: humantime::Duration,
    /// sim-vma vs wiremock: connections and length
    #[arg(long, default_value_t = 50)]
    connections: usize,
    #[arg(long, default_value = "10s")]
    load_duration: humantime::Duration,
    /// Run the load generator in the same process as the servers (default: a child process)
    #[arg(long)]
    same_process_client: bool,
    /// Internal: act as the load-generating child for URL and print its figures as JSON
    #[arg(long, hide = true)]
    load_client: Option<String>,
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(url) = cli.load_client {
        let figures = bench::load("client", url, cli.connections, *cli.load_duration).await?;
        println!("{}", serde_json::to_string(&figures)?);
        return Ok(());
    }
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
            let f = bench::recovery(n).await?;
            println!("| {} | {} | {} | {:.0} |", f.n, ms(f.start_to_summary), ms(f.scan), f.jobs_per_second);
        }
    }
    if want("resume") {
        println!("\n### Time to resume (OMA restarted, N running jobs)\n");
        println!("| jobs | spawn → ready | ready → every job freshly polled |\n|---:|---:|---:|");
        for &n in &cli.sizes {
            let f = bench::resume(n).await?;
            println!("| {} | {} | {} |", f.n, ms(f.ready_after_spawn), ms(f.all_polled_after_ready));
        }
    }
    if want("steady") {
        println!("\n### Steady polling (interval {}, measured {})\n", cli.steady_interval, cli.steady_duration);
        println!("| jobs | worst vma_last_poll_at age | OMA CPU (cores) | OMA peak RSS | polls/s |\n|---:|---:|---:|---:|---:|");
        for &n in &cli.sizes {
            let f = bench::steady(n, *cli.steady_interval, *cli.steady_duration).await?;
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
    if want("load") {
        let place = if cli.same_process_client { "client in the same process" } else { "client in a separate process" };
        println!("\n### sim-vma vs wiremock ({} connections, {}; {place})\n", cli.connections, cli.load_duration);
        println!(
            "| server | requests/s | p50 | p99 | server CPU per 1k requests | server RSS growth |\n|---|---:|---:|---:|---:|---:|"
        );
        let figures = bench::sim_vs_wiremock(cli.connections, *cli.load_duration, !cli.same_process_client).await?;
        for f in &figures {
            println!(
                "| {} | {:.0} | {:.2} ms | {:.2} ms | {} | {:.1} MiB |",
                f.server,
                f.requests_per_second,
                f.p50.as_secs_f64() * 1000.0,
                f.p99.as_secs_f64() * 1000.0,
                f.server_cpu_ms_per_1k.map(|c| format!("{c:.1} ms")).unwrap_or_else(|| "-".into()),
                f.rss_growth_mib
            );
        }
        if let [sim, mock] = figures.as_slice() {
            println!("\nsim-vma / wiremock throughput: {:.1}x", sim.requests_per_second / mock.requests_per_second);
            if let (Some(a), Some(b)) = (sim.server_cpu_ms_per_1k, mock.server_cpu_ms_per_1k) {
                println!("wiremock / sim-vma server CPU per request: {:.1}x", b / a);
            }
        }
    }
    Ok(())
}
