//! sim-vma against wiremock (issue 5, measurement 4): the same progress-poll load on both servers,
//! side by side in one run, with sim-vma's hot path off and a minimal constant-answer server beside
//! them for reference.
//!
//! The load generator works like `wrk`: each connection is one keep-alive HTTP/1.1 socket that
//! writes a pre-built GET, reads the whole response (head parsed by `httparse`, body by its
//! `Content-Length`), checks the status and sends the next request. No pipelining: one request in
//! flight per connection, as the OMA polls. By default each round starts each server in a fresh
//! process on CPU 0 and the generator, a child process, on CPU 1, so each server is measured on
//! one core of its own (wiremock serves on a single thread anyway) from a clean start;
//! `Placement` lists the other arrangements.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use oma_acceptance::procfs::{rss_kib, rss_kib_of, ProcUsage};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LoadFigures {
    pub server: String,
    /// Successful (HTTP 200, complete body) requests in the measured window.
    pub requests: u64,
    /// Answers other than 200 in the measured window (the run fails on a broken connection).
    pub errors: u64,
    pub requests_per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub rss_growth_mib: f64,
    /// CPU the server's process spent per 1,000 requests (client in a child process only).
    pub server_cpu_per_1k: Option<CpuPer1k>,
}

/// Milliseconds of CPU per 1,000 requests, split into the server's own code and the kernel.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct CpuPer1k {
    pub user_ms: f64,
    pub system_ms: f64,
}

impl CpuPer1k {
    pub fn total_ms(&self) -> f64 {
        self.user_ms + self.system_ms
    }
}

/// Where the servers and the load generator run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// The servers on the first half of the CPUs, the generator (a child process) on the rest:
    /// each side has cores of its own. Needs two CPUs.
    Pinned,
    /// Servers and generator in processes of their own, free to use every CPU.
    #[value(name = "separate")]
    SeparateProcess,
    /// Generator in the servers' process (the smoke test uses this).
    #[value(name = "same")]
    SameProcess,
}

impl Placement {
    /// Pinned where the machine has two CPUs to give, else a separate process.
    pub fn best_available() -> Placement {
        if allowed_cpus().len() >= 2 {
            Placement::Pinned
        } else {
            Placement::SeparateProcess
        }
    }

    pub fn describe(self) -> String {
        match self {
            Placement::Pinned => {
                let (servers, client) = split_cpus();
                format!("each server in a fresh process on CPUs {servers:?}, client process on CPUs {client:?}")
            }
            Placement::SeparateProcess => "client in a separate process, no pinning".into(),
            Placement::SameProcess => "client in the servers' process".into(),
        }
    }
}

/// The CPUs this process may run on.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect(),
        Err(_) => vec![0],
    }
}

/// Servers get the first half of the allowed CPUs (at least one), the client the rest.
fn split_cpus() -> (Vec<usize>, Vec<usize>) {
    let cpus = allowed_cpus();
    let servers = (cpus.len() / 2).max(1).min(cpus.len());
    (cpus[..servers].to_vec(), cpus[servers..].to_vec())
}

/// Restrict the calling thread (and the threads it creates afterwards) to these CPUs.
pub fn pin_current_thread(cpus: &[usize]) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pin to CPUs {cpus:?}"))?;
    Ok(())
}

/// Latency histogram: 10 µs buckets up to 200 ms (fixed size, so measuring costs no memory).
const BUCKET_US: u64 = 10;
const BUCKETS: usize = 20_000;
/// Responses larger than this are an error (the progress JSON is well under 1 KiB).
const MAX_RESPONSE: usize = 64 * 1024;

/// The line the load-generating child prints when its measured window starts.
pub const MEASURING: &str = "measuring";

/// `connections` keep-alive connections GETting `url` for `duration` after a one-second warm-up;
/// `on_measuring` is called when the measured window starts.
pub async fn load(
    server: &str,
    url: &str,
    connections: usize,
    duration: Duration,
    on_measuring: impl FnOnce(),
) -> anyhow::Result<LoadFigures> {
    let (addr, request) = prepare_request(url)?;
    let warmup = Duration::from_secs(1).min(duration);
    let measure_from = Instant::now() + warmup;
    let deadline = measure_from + duration;
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let request = request.clone();
        tasks.push(tokio::spawn(drive_connection(addr, request, measure_from, deadline)));
    }
    tokio::time::sleep_until(measure_from.into()).await;
    on_measuring();
    let rss0 = rss_kib();
    let mut histogram = vec![0u64; BUCKETS];
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?.with_context(|| format!("{server} at {addr}"))?;
        for (total, n) in histogram.iter_mut().zip(h) {
            *total += n as u64;
        }
        errors += e;
    }
    let rss_growth_mib = (rss_kib() as f64 - rss0 as f64) / 1024.0;
    let n: u64 = histogram.iter().sum();
    if n == 0 {
        bail!("{server}: no successful request ({errors} errors)");
    }
    let pick = |q: f64| {
        let target = (n as f64 * q) as u64;
        let mut seen = 0;
        for (i, count) in histogram.iter().enumerate() {
            seen += count;
            if seen > target {
                return Duration::from_micros(i as u64 * BUCKET_US + BUCKET_US / 2);
            }
        }
        Duration::from_micros(BUCKETS as u64 * BUCKET_US)
    };
    Ok(LoadFigures {
        server: server.to_string(),
        requests: n,
        errors,
        requests_per_second: n as f64 / duration.as_secs_f64(),
        p50: pick(0.5),
        p99: pick(0.99),
        rss_growth_mib,
        server_cpu_per_1k: None,
    })
}

/// The socket address and the request bytes for an `http://host:port/path` URL.
fn prepare_request(url: &str) -> anyhow::Result<(SocketAddr, Arc<[u8]>)> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("load URL {url:?}"))?;
    if parsed.scheme() != "http" {
        bail!("load URL {url:?}: only http:// is supported");
    }
    let addr = parsed
        .socket_addrs(|| Some(80))
        .with_context(|| format!("load URL {url:?}"))?
        .into_iter()
        .next()
        .with_context(|| format!("load URL {url:?} resolves to no address"))?;
    let host = parsed.host_str().unwrap_or("localhost");
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_string(),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}:{}\r\nAccept: application/json\r\n\r\n", addr.port());
    Ok((addr, request.into_bytes().into()))
}

/// One connection's loop: its latency histogram and the number of non-200 answers.
async fn drive_connection(
    addr: SocketAddr,
    request: Arc<[u8]>,
    measure_from: Instant,
    deadline: Instant,
) -> anyhow::Result<(Vec<u32>, u64)> {
    let mut sock = TcpStream::connect(addr).await.context("connect")?;
    sock.set_nodelay(true)?;
    let mut buf = vec![0u8; MAX_RESPONSE];
    let mut histogram = vec![0u32; BUCKETS];
    let mut errors = 0;
    loop {
        let t = Instant::now();
        if t >= deadline {
            break;
        }
        sock.write_all(&request).await.context("send request")?;
        let status = read_response(&mut sock, &mut buf).await?;
        if t < measure_from {
            continue;
        }
        if status == 200 {
            let us = t.elapsed().as_micros() as u64;
            histogram[((us / BUCKET_US) as usize).min(BUCKETS - 1)] += 1;
        } else {
            errors += 1;
        }
    }
    Ok((histogram, errors))
}

/// Read exactly one response (head and `Content-Length` body); its status code.
async fn read_response(sock: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<u16> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            bail!("response larger than {MAX_RESPONSE} bytes");
        }
        let n = sock.read(&mut buf[filled..]).await.context("read response")?;
        if n == 0 {
            bail!("server closed the connection mid-response ({filled} bytes read)");
        }
        filled += n;
        let mut headers = [httparse::EMPTY_HEADER; 24];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(&buf[..filled]).context("malformed response head")? {
            httparse::Status::Complete(head) => head,
            httparse::Status::Partial => continue,
        };
        let mut length = None;
        for h in response.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                length = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<usize>().ok());
            } else if h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close") {
                bail!("server asked to close the connection");
            }
        }
        let length = length.context("response without a valid Content-Length")?;
        let total = head + length;
        if filled > total {
            bail!("{} bytes after the response: the server answered more than was asked", filled - total);
        }
        if filled == total {
            return Ok(response.code.unwrap_or(0));
        }
    }
}

/// The servers compared, in the order they take turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServerKind {
    /// sim-vma as the suite runs it.
    SimVma,
    /// A wiremock `MockServer` answering the same JSON.
    Wiremock,
    /// sim-vma with its hot path off: hyper answers every poll, as before the hot path.
    SimVmaHyperOnly,
    /// Calibration: the least an HTTP/1.1 server can do ([`minimal_server`]).
    MinimalFloor,
}

impl ServerKind {
    pub const ALL: [ServerKind; 4] =
        [ServerKind::SimVma, ServerKind::Wiremock, ServerKind::SimVmaHyperOnly, ServerKind::MinimalFloor];

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::SimVma => "sim-vma",
            ServerKind::Wiremock => "wiremock",
            ServerKind::SimVmaHyperOnly => "sim-vma, hot path off",
            ServerKind::MinimalFloor => "minimal server (constant answer)",
        }
    }
}

/// A server answering the progress poll at `url` until it is dropped.
pub struct RunningServer {
    pub url: String,
    _serving: Box<dyn std::any::Any + Send>,
}

const PROGRESS_PATH: &str = "/api/v1/progress/job-load";

async fn started_sim(hot_path: bool) -> anyhow::Result<sim_vma::SimVma> {
    let sim = sim_vma::SimVma::start(sim_vma::SimConfig { hot_path, ..Default::default() }).await?;
    let spec: sim_vma::spec::JobSpec = serde_json::from_value(json!({"mode": "running", "start_percent": 42}))?;
    sim.state.put_job("job-load", &spec).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(sim)
}

/// The JSON the servers without a simulation answer: sim-vma's for the same job.
async fn progress_json() -> anyhow::Result<String> {
    let sim = started_sim(true).await?;
    let body = reqwest::get(format!("{}{PROGRESS_PATH}", sim.vma_url())).await?.error_for_status()?.text().await?;
    sim.shutdown().await;
    Ok(body)
}

/// Start `kind` on the current runtime.
pub async fn start_server(kind: ServerKind) -> anyhow::Result<RunningServer> {
    let (url, serving): (String, Box<dyn std::any::Any + Send>) = match kind {
        ServerKind::SimVma | ServerKind::SimVmaHyperOnly => {
            let sim = started_sim(kind == ServerKind::SimVma).await?;
            (sim.vma_url(), Box::new(sim))
        }
        ServerKind::Wiremock => {
            let body = progress_json().await?;
            let mock = wiremock::MockServer::start().await;
            wiremock::Mock::given(wiremock::matchers::method("GET"))
                .and(wiremock::matchers::path(PROGRESS_PATH))
                .respond_with(wiremock::ResponseTemplate::new(200).set_body_raw(body, "application/json"))
                .mount(&mock)
                .await;
            (mock.uri(), Box::new(mock))
        }
        ServerKind::MinimalFloor => {
            let (addr, task) = minimal_server(progress_json().await?).await?;
            (format!("http://{addr}"), Box::new(tokio_util::task::AbortOnDropHandle::new(task)))
        }
    };
    Ok(RunningServer { url: format!("{url}{PROGRESS_PATH}"), _serving: serving })
}

/// The server child (`<this exe> --serve KIND`): pinned to `cpus`, it starts `kind` on a runtime
/// with a worker per CPU it may use (one thread when pinned to one, as wiremock serves anyway),
/// prints the URL to load and serves until its standard input closes.
pub fn serve_child(kind: ServerKind, cpus: Option<&[usize]>) -> anyhow::Result<()> {
    if let Some(cpus) = cpus {
        pin_current_thread(cpus)?;
    }
    let workers = allowed_cpus().len();
    let runtime = if workers > 1 {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    };
    runtime.block_on(async {
        let server = start_server(kind).await?;
        println!("{}", server.url);
        std::io::Write::flush(&mut std::io::stdout())?;
        let mut rest = Vec::new();
        tokio::io::stdin().read_to_end(&mut rest).await?;
        drop(server);
        anyhow::Ok(())
    })
}

/// A child of this bench (`<this exe> ARGS`, pinned with `CPU_FLAG LIST` when `cpus` is given),
/// with its standard input and output piped: the child, and its output with the first line read.
async fn bench_child(
    what: &str,
    args: &[&str],
    cpus: Option<(&str, &[usize])>,
) -> anyhow::Result<(tokio::process::Child, BufReader<tokio::process::ChildStdout>, String)> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(args);
    if let Some((flag, cpus)) = cpus {
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        cmd.args([flag, &list.join(",")]);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start the {what} process"))?;
    let mut stdout = BufReader::new(child.stdout.take().context("child stdout")?);
    let mut first = String::new();
    stdout.read_line(&mut first).await.with_context(|| format!("{what} output"))?;
    Ok((child, stdout, first.trim_end().to_string()))
}

/// Start `kind` in a child process of its own; the child and the URL it serves.
async fn spawn_server(kind: ServerKind, cpus: Option<&[usize]>) -> anyhow::Result<(tokio::process::Child, String)> {
    let name = clap::ValueEnum::to_possible_value(&kind).expect("not skipped");
    let what = format!("{} server", kind.name());
    let (child, _, url) = bench_child(&what, &["--serve", name.get_name()], cpus.map(|c| ("--server-cpus", c))).await?;
    if !url.starts_with("http://") {
        bail!("the {what} process did not start (it printed {url:?})");
    }
    Ok((child, url))
}

/// The calibration server: the least an HTTP/1.1 server can do for this load. Each complete
/// request head (httparse) gets one prebuilt response in one write; reads are tokio's, as in
/// sim-vma's hot path; no routing, state, journal or clock. sim-vma's distance to it is the cost of
/// being a simulator, and its ratio to wiremock is the most any server reaches on this machine.
async fn minimal_server(body: String) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let date = chrono::Utc::now().format("%a, %d %b %Y %H:%M:%S GMT");
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ndate: {date}\r\n\r\n",
        body.len()
    );
    let response: Arc<[u8]> = [head.as_bytes(), body.as_bytes()].concat().into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(answer_every_request(sock, response.clone()));
        }
    });
    Ok((addr, task))
}

/// [`minimal_server`]'s connection: `response` for every request, until the client hangs up or
/// sends a head that does not parse or fit 8 KiB.
async fn answer_every_request(mut sock: TcpStream, response: Arc<[u8]>) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = vec![0u8; 8 * 1024];
    let mut filled = 0;
    loop {
        let n = sock.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            match httparse::Request::new(&mut headers).parse(&buf[start..filled]) {
                Ok(httparse::Status::Complete(len)) => {
                    start += len;
                    sock.write_all(&response).await?;
                }
                Ok(httparse::Status::Partial) if filled - start < buf.len() => break,
                _ => return Ok(()),
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
    }
}

/// One server's rounds.
#[derive(Debug, Clone)]
pub struct LoadSeries {
    pub server: &'static str,
    pub rounds: Vec<LoadFigures>,
}

impl LoadSeries {
    /// The median of this series' throughput over `other`'s, round by round. Each round of the
    /// two ran back to back, so a ratio compares them on one state of the machine; the median of
    /// those ratios is steadier than the ratio of two medians taken at different moments.
    pub fn paired_ratio(&self, other: &LoadSeries) -> f64 {
        let mut ratios = self.round_ratios(other);
        ratios.sort_by(f64::total_cmp);
        match ratios.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => ratios[n / 2],
            n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
        }
    }

    /// This series' throughput over `other`'s in each round, in the order the rounds ran.
    pub fn round_ratios(&self, other: &LoadSeries) -> Vec<f64> {
        self.rounds.iter().zip(&other.rounds).map(|(a, b)| a.requests_per_second / b.requests_per_second).collect()
    }

    /// The round with the median throughput (the lower middle one for an even count).
    pub fn median(&self) -> &LoadFigures {
        let mut by_rate: Vec<&LoadFigures> = self.rounds.iter().collect();
        by_rate.sort_by(|a, b| a.requests_per_second.total_cmp(&b.requests_per_second));
        by_rate[(by_rate.len() - 1) / 2]
    }
}

/// The same progress-poll load on every [`ServerKind`]. The servers take turns, `rounds` times,
/// so a drift of the machine's speed (shared virtual CPUs drift by tens of percent) touches all
/// of them alike. Outside the same-process placement each round starts each server in a fresh
/// process and measures that process: wiremock keeps every request it is sent (over a GiB a
/// round), and in a process whose heap an earlier round had grown it ran up to twice as fast as
/// a wiremock started anew, as a test starts one.
pub async fn sim_vs_wiremock(
    connections: usize,
    duration: Duration,
    placement: Placement,
    rounds: usize,
) -> anyhow::Result<Vec<LoadSeries>> {
    let (server_cpus, client_cpus) = split_cpus();
    let all_cpus = allowed_cpus().len();
    if placement == Placement::Pinned && client_cpus.is_empty() {
        bail!("pinned placement needs two CPUs and this process may use {all_cpus}; use separate or same");
    }
    let pinned = placement == Placement::Pinned;
    let mut series = ServerKind::ALL.map(|kind| LoadSeries { server: kind.name(), rounds: vec![] });
    for _ in 0..rounds.max(1) {
        for (kind, series) in ServerKind::ALL.into_iter().zip(series.iter_mut()) {
            let figures = match placement {
                Placement::SameProcess => {
                    let server = start_server(kind).await?;
                    load(kind.name(), &server.url, connections, duration, || {}).await?
                }
                _ => {
                    let (mut server, url) = spawn_server(kind, pinned.then_some(&server_cpus[..])).await?;
                    let pid = server.id().context("server process id")?;
                    let figures = load_from_child(
                        kind.name(),
                        &url,
                        connections,
                        duration,
                        pid,
                        pinned.then_some(&client_cpus[..]),
                    )
                    .await;
                    drop(server.stdin.take());
                    if tokio::time::timeout(Duration::from_secs(5), server.wait()).await.is_err() {
                        server.kill().await?;
                    }
                    figures?
                }
            };
            series.rounds.push(figures);
        }
    }
    Ok(series.into())
}

/// Run the load generator as a child process (`<this exe> --load-client URL`), measuring the
/// server process `server_pid`'s CPU and RSS while it serves.
async fn load_from_child(
    server: &str,
    url: &str,
    connections: usize,
    duration: Duration,
    server_pid: u32,
    cpus: Option<&[usize]>,
) -> anyhow::Result<LoadFigures> {
    let (connections, duration) = (connections.to_string(), format!("{}ms", duration.as_millis()));
    let args = ["--load-client", url, "--connections", &connections, "--load-duration", &duration];
    let what = format!("load client for {server}");
    // The first line announces the measured window, after the warm-up: the server is sampled over it.
    let (mut child, mut stdout, line) = bench_child(&what, &args, cpus.map(|c| ("--client-cpus", c))).await?;
    if line != MEASURING {
        bail!("{what} did not start measuring (it printed {line:?})");
    }
    let cpu0 = ProcUsage::of(server_pid)?;
    let rss0 = rss_kib_of(server_pid);
    let mut report = String::new();
    stdout.read_to_string(&mut report).await.context("load client output")?;
    let status = child.wait().await?;
    let cpu1 = ProcUsage::of(server_pid)?;
    if !status.success() {
        bail!("load client for {server} failed ({status})");
    }
    let mut figures: LoadFigures = serde_json::from_str(&report).context("load client output")?;
    figures.server = server.to_string();
    figures.rss_growth_mib = (rss_kib_of(server_pid) as f64 - rss0 as f64) / 1024.0;
    let per_1k = |seconds: f64| seconds * 1000.0 / (figures.requests as f64 / 1000.0);
    figures.server_cpu_per_1k =
        Some(CpuPer1k { user_ms: per_1k(cpu1.user_s - cpu0.user_s), system_ms: per_1k(cpu1.system_s - cpu0.system_s) });
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-connection server that answers each request with `pieces`, written one by one.
    async fn answering(pieces: Vec<&'static [u8]>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            while sock.read(&mut buf).await.unwrap_or(0) > 0 {
                for piece in &pieces {
                    sock.write_all(piece).await.unwrap();
                    sock.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        });
        addr
    }

    async fn one_response(pieces: Vec<&'static [u8]>) -> anyhow::Result<u16> {
        let addr = answering(pieces).await;
        let (_, request) = prepare_request(&format!("http://{addr}/api/v1/progress/x")).unwrap();
        let mut sock = TcpStream::connect(addr).await.unwrap();
        sock.write_all(&request).await.unwrap();
        read_response(&mut sock, &mut vec![0u8; MAX_RESPONSE]).await
    }

    #[tokio::test]
    async fn responses_split_across_reads_are_read_whole() {
        let status = one_response(vec![b"HTTP/1.1 200 OK\r\nContent-Le", b"ngth: 5\r\n\r\nab", b"cde"]).await.unwrap();
        assert_eq!(status, 200);
        let status = one_response(vec![b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"]).await.unwrap();
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn broken_responses_are_errors_that_say_why() {
        let err = one_response(vec![b"HTTP/1.1 200 OK\r\n\r\nabc"]).await.unwrap_err();
        assert!(err.to_string().contains("Content-Length"), "{err:#}");
        let err = one_response(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\na"])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("close"), "{err:#}");
        let err = one_response(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab"]).await.unwrap_err();
        assert!(err.to_string().contains("more than was asked"), "{err:#}");
        let err = one_response(vec![b"garbage\r\n\r\n"]).await.unwrap_err();
        assert!(format!("{err:#}").contains("malformed"), "{err:#}");
    }

    #[test]
    fn only_plain_http_urls_are_accepted() {
        assert!(prepare_request("https://127.0.0.1:1/x").is_err());
        assert!(prepare_request("not a url").is_err());
        let (addr, request) = prepare_request("http://127.0.0.1:8081/api/v1/progress/j?x=1").unwrap();
        assert_eq!(addr.port(), 8081);
        assert!(request.starts_with(b"GET /api/v1/progress/j?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n"));
    }

    #[test]
    fn the_median_round_is_the_middle_throughput() {
        let round = |rps: f64| LoadFigures {
            server: "s".into(),
            requests: 1,
            errors: 0,
            requests_per_second: rps,
            p50: Duration::ZERO,
            p99: Duration::ZERO,
            rss_growth_mib: 0.0,
            server_cpu_per_1k: None,
        };
        let series = LoadSeries { server: "s", rounds: vec![round(3.0), round(1.0), round(2.0)] };
        assert_eq!(series.median().requests_per_second, 2.0);
        // Round by round: 3/1, 1/2, 2/4.
        let other = LoadSeries { server: "o", rounds: vec![round(1.0), round(2.0), round(4.0)] };
        assert_eq!(series.paired_ratio(&other), 0.5);
        let even = LoadSeries { server: "e", rounds: vec![round(2.0), round(6.0)] };
        let base = LoadSeries { server: "b", rounds: vec![round(1.0), round(2.0)] };
        assert_eq!(even.paired_ratio(&base), 2.5);
    }
}
