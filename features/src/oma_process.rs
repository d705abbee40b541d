//! The OMA under test as a real operating-system process: start, stop (SIGTERM), kill
//! (SIGKILL), captured logs. `OMA_UNDER_TEST="cmd …"` runs another OMA with the same
//! environment-variable configuration; the default is this workspace's `oma-api`.
//! `OMA_PREVIOUS_BUILD` is the build a rollback goes back to (default: the one under test).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

/// Configuration passed to the OMA through its environment variables (SPEC §4.1).
#[derive(Debug, Clone)]
pub struct OmaConfig {
    pub database_url: String,
    pub vma_url: String,
    pub poll_interval: Duration,
    pub poll_grace: Duration,
    pub vma_timeout: Duration,
    pub recovery_max_age: Duration,
    pub health_interval: Duration,
    pub health_stale_after: Duration,
    pub stall_after: Duration,
    pub instance_id: Option<String>,
    pub log_format: &'static str,
    pub extra_env: Vec<(String, String)>,
}

impl OmaConfig {
    /// Short intervals for tests; ages are made with past timestamps, not waiting.
    pub fn fast(database_url: &str, vma_url: &str) -> OmaConfig {
        OmaConfig {
            database_url: database_url.to_string(),
            vma_url: vma_url.to_string(),
            poll_interval: Duration::from_millis(100),
            poll_grace: Duration::from_secs(2),
            vma_timeout: Duration::from_millis(500),
            recovery_max_age: Duration::from_secs(30 * 60),
            health_interval: Duration::from_millis(500),
            health_stale_after: Duration::from_secs(2),
            stall_after: Duration::from_secs(30 * 60),
            instance_id: None,
            log_format: "text",
            extra_env: Vec::new(),
        }
    }

    fn env(&self, port: u16) -> Vec<(String, String)> {
        let d = |d: Duration| format!("{}ms", d.as_millis());
        let mut env = vec![
            ("OMA_DATABASE_URL".into(), self.database_url.clone()),
            ("VMA_API_URL".into(), self.vma_url.clone()),
            ("OMA_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("OMA_POLL_INTERVAL".into(), d(self.poll_interval)),
            ("OMA_POLL_GRACE".into(), d(self.poll_grace)),
            ("OMA_VMA_TIMEOUT".into(), d(self.vma_timeout)),
            ("OMA_RECOVERY_MAX_AGE".into(), d(self.recovery_max_age)),
            ("OMA_HEALTH_INTERVAL".into(), d(self.health_interval)),
            ("OMA_HEALTH_STALE_AFTER".into(), d(self.health_stale_after)),
            ("OMA_STALL_AFTER".into(), d(self.stall_after)),
            ("OMA_LOG_FORMAT".into(), self.log_format.into()),
            ("OMA_DB_MAX_CONNECTIONS".into(), "8".into()),
            ("RUST_LOG".into(), std::env::var("OMA_TEST_RUST_LOG").unwrap_or_else(|_| "info,sqlx=warn".into())),
        ];
        if let Some(id) = &self.instance_id {
            env.push(("OMA_INSTANCE_ID".into(), id.clone()));
        }
        env.extend(self.extra_env.iter().cloned());
        env
    }
}

static BUILT: OnceCell<PathBuf> = OnceCell::const_new();

/// Packages that link this harness and may run it.
const WORKSPACE_PACKAGES: [&str; 3] = ["oma-acceptance", "oma-bench", "oma"];

/// `target/<profile>/` of this test binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Newest modification time of the OMA's sources.
fn newest_source() -> Option<std::time::SystemTime> {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../oma"));
    let mut newest = None;
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// Path of the workspace's `oma-api` (or `OMA_API_BIN`). `cargo test --workspace` builds it; it is
/// built here only when missing or older than the OMA's sources. The nested build selects the
/// package whose binary is running (`CARGO_PKG_NAME`, which `cargo run` and `cargo test` set) as
/// well as `oma`: cargo unifies dependency features over the selected packages, so the same
/// selection plus `oma` (a dependency of it) reuses every dependency the running binary was built
/// with. Selecting `oma` alone would unify differently and compile tokio and the rest again.
pub async fn oma_api_binary() -> anyhow::Result<PathBuf> {
    BUILT
        .get_or_try_init(|| async {
            if let Ok(bin) = std::env::var("OMA_API_BIN") {
                return Ok(PathBuf::from(bin));
            }
            let bin = target_dir().join("oma-api");
            let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
            let fresh = matches!((built, newest_source()), (Some(b), Some(src)) if b >= src);
            if fresh {
                return Ok(bin);
            }
            eprintln!("[harness] building oma-api (missing or older than oma/)");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
            let running = std::env::var("CARGO_PKG_NAME").ok().filter(|p| WORKSPACE_PACKAGES.contains(&p.as_str()));
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "--quiet", "--manifest-path", manifest, "-p", "oma", "--bins"]);
            cmd.args(["-p", running.as_deref().unwrap_or("oma-acceptance")]);
            if !target_dir().ends_with("debug") {
                cmd.arg("--release");
            }
            match cmd.status().await {
                Ok(s) if s.success() => Ok(bin),
                _ if bin.is_file() => {
                    eprintln!("[harness] could not rebuild oma-api; using {}", bin.display());
                    Ok(bin)
                }
                other => bail!("building oma-api failed: {other:?}"),
            }
        })
        .await
        .cloned()
}

/// What a process printed. Its stdout and stderr go straight to a file — no pipe the harness must
/// keep draining, no reader task lagging behind under load — and are read back on demand, so a
/// question about the log ("was this logged?", "how many times?") is answered on everything the
/// process wrote up to the moment it is asked.
#[derive(Clone)]
pub struct LogBuffer(Arc<Mutex<LogFile>>);

struct LogFile {
    path: PathBuf,
    /// Bytes of the file already split into `lines`.
    read: u64,
    lines: Vec<String>,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

impl LogFile {
    /// Take in whatever the process wrote since the last call.
    fn refresh(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else { return };
        if file.seek(SeekFrom::Start(self.read)).is_err() {
            return;
        }
        let mut new = Vec::new();
        if file.read_to_end(&mut new).is_err() {
            return;
        }
        self.read += new.len() as u64;
        self.partial.extend_from_slice(&new);
        let mut start = 0;
        while let Some(end) = self.partial[start..].iter().position(|b| *b == b'\n') {
            let line = &self.partial[start..start + end];
            self.lines.push(String::from_utf8_lossy(line).trim_end_matches('\r').to_string());
            start += end + 1;
        }
        self.partial.drain(..start);
    }
}

impl LogBuffer {
    /// The log of a process that writes to `path` (created empty here).
    fn create(path: PathBuf) -> std::io::Result<LogBuffer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::create(&path)?;
        Ok(LogBuffer(Arc::new(Mutex::new(LogFile { path, read: 0, lines: Vec::new(), partial: Vec::new() }))))
    }

    fn read<T>(&self, f: impl FnOnce(&[String]) -> T) -> T {
        let mut file = self.0.lock().unwrap_or_else(|p| p.into_inner());
        file.refresh();
        f(&file.lines)
    }

    pub fn path(&self) -> PathBuf {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).path.clone()
    }

    pub fn lines(&self) -> Vec<String> {
        self.read(|lines| lines.to_vec())
    }

    pub fn len(&self) -> usize {
        self.read(|lines| lines.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn since(&self, mark: usize) -> Vec<String> {
        self.read(|lines| lines.iter().skip(mark).cloned().collect())
    }

    /// The first line at or after `from` containing `needle`, and the index to resume from.
    pub fn find_from(&self, from: usize, needle: &str) -> (Option<String>, usize) {
        self.read(|lines| (lines.iter().skip(from).find(|l| l.contains(needle)).cloned(), lines.len()))
    }

    pub fn count(&self, needle: &str) -> usize {
        self.read(|lines| lines.iter().filter(|l| l.contains(needle)).count())
    }

    pub fn tail(&self, n: usize) -> String {
        self.read(|lines| lines[lines.len().saturating_sub(n)..].join("\n"))
    }

    /// Append a line of the harness's own (a start marker) between the process's lines.
    fn note(&self, line: &str) -> std::io::Result<()> {
        let path = self.path();
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(file, "{line}")
    }
}

/// `needle` occurs in `line` with no digit glued to either end of it.
pub fn contains_whole(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + needle.len()..].chars().next();
        let glued = |c: Option<char>| c.is_some_and(|c| c.is_ascii_digit());
        let (figure_first, figure_last) =
            (needle.starts_with(|c: char| c.is_ascii_digit()), needle.ends_with(|c: char| c.is_ascii_digit()));
        (!figure_first || !glued(before)) && (!figure_last || !glued(after))
    })
}

/// `target/acceptance/logs/`, where each OMA's log file is `<name>-<pid>-<n>.log` (`pid` of the
/// test process). The first OMA of a test process removes the files of test processes that are
/// gone, so the directory holds the logs of the latest runs only.
fn log_path(name: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    static TIDIED: std::sync::Once = std::sync::Once::new();
    let dir = target_dir()
        .parent()
        .map(|p| p.join("acceptance/logs"))
        .unwrap_or_else(|| PathBuf::from("target/acceptance/logs"));
    TIDIED.call_once(|| {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let pid = file.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    });
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!("{}-{}-{n}.log", name.replace(['/', ' '], "_"), std::process::id()))
}

/// Which build a start runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `OMA_UNDER_TEST`, or this workspace's `oma-api`.
    UnderTest,
    /// `OMA_PREVIOUS_BUILD` (a command, like `OMA_UNDER_TEST`: QC points it at the last
    /// release's binary), or the build under test when it is not set.
    Previous,
}

impl Build {
    fn variable(self) -> &'static str {
        match self {
            Build::UnderTest => "OMA_UNDER_TEST",
            Build::Previous => "OMA_PREVIOUS_BUILD",
        }
    }

    /// The command this build runs (`None`: this workspace's `oma-api`).
    pub fn command(self) -> Option<String> {
        let own = |var: &str| std::env::var(var).ok().filter(|c| !c.trim().is_empty());
        match self {
            Build::UnderTest => own(Build::UnderTest.variable()),
            Build::Previous => own(Build::Previous.variable()).or_else(|| own(Build::UnderTest.variable())),
        }
    }
}

pub struct OmaProcess {
    pub name: String,
    pub config: OmaConfig,
    pub port: u16,
    /// What the next start runs.
    pub build: Build,
    child: Option<Child>,
    pub log: LogBuffer,
    pub log_path: PathBuf,
    pub starts: u32,
    pub last_start: Option<Instant>,
}

impl OmaProcess {
    /// Start a new OMA on a free port and wait until `/health` answers.
    pub async fn start(name: &str, config: OmaConfig) -> anyhow::Result<OmaProcess> {
        let mut process = OmaProcess::launch(name, config).await?;
        process.wait_ready(Duration::from_secs(30)).await?;
        Ok(process)
    }

    /// Start a new OMA on a free port without waiting for it to be ready; its log goes to
    /// `target/acceptance/logs/<name>.log` as well.
    pub async fn launch(name: &str, config: OmaConfig) -> anyhow::Result<OmaProcess> {
        let mut process = OmaProcess::new(name, config, oma_test_support::free_port(), log_path(name))?;
        process.spawn().await?;
        Ok(process)
    }

    /// An OMA that will listen on `port` and write its output to `log_path` (emptied now); not
    /// started yet ([`OmaProcess::start_again`] starts it).
    pub fn new(name: &str, config: OmaConfig, port: u16, log_path: PathBuf) -> anyhow::Result<OmaProcess> {
        let log = LogBuffer::create(log_path.clone()).with_context(|| format!("creating {}", log_path.display()))?;
        Ok(OmaProcess {
            name: name.to_string(),
            config,
            port,
            build: Build::UnderTest,
            child: None,
            log,
            log_path,
            starts: 0,
            last_start: None,
        })
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Spawn the process (same port, same configuration) without waiting for readiness.
    pub async fn spawn(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        let mut cmd = match self.build.command() {
            Some(command) => {
                let mut c = Command::new("sh");
                c.arg("-c").arg(format!("exec {command}"));
                c
            }
            None => Command::new(oma_api_binary().await?),
        };
        self.starts += 1;
        let build = match self.build {
            Build::UnderTest => String::new(),
            Build::Previous => format!(", {}", self.build.variable()),
        };
        self.log.note(&format!("===== {} start #{} (port {}{build}) =====", self.name, self.starts, self.port))?;
        let out = std::fs::OpenOptions::new().append(true).open(&self.log_path)?;
        cmd.envs(self.config.env(self.port))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {}", self.name))?;
        if let Some(pid) = child.id() {
            // Dies with this process even when it is killed (kill_on_drop needs an orderly end).
            oma_test_support::reaper::adopt(pid);
        }
        self.last_start = Some(Instant::now());
        self.child = Some(child);
        Ok(())
    }

    /// Spawn and wait until `/health` answers 200.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn().await?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http.get(format!("{}/health", self.url())).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if !self.is_running() {
                bail!("{} exited before it was ready. Log tail:\n{}", self.name, self.log.tail(30));
            }
            if Instant::now() > deadline {
                bail!("{} not ready after {:?}. Log tail:\n{}", self.name, timeout, self.log.tail(30));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn signal_and_wait(&mut self, signal: Signal, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut child) = self.child.take() else { return Ok(None) };
        let pid = child.id();
        if let Some(pid) = pid {
            kill(Pid::from_raw(pid as i32), signal).map_err(|e| anyhow!("sending {signal} to {}: {e}", self.name))?;
        }
        let _forget = ReleaseOnDrop(pid);
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => Ok(status?.code()),
            Err(_) => {
                let _ = child.kill().await;
                bail!(
                    "{} did not exit within {:?} after {signal}. Log tail:\n{}",
                    self.name,
                    timeout,
                    self.log.tail(20)
                )
            }
        }
    }

    /// Wait, without a signal, for the process to end by itself; returns its exit code (`None`
    /// when a signal ended it). Fails if it still runs after `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(child) = self.child.as_mut() else { bail!("{} is not running", self.name) };
        let pid = child.id();
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .map_err(|_| anyhow!("{} still runs after {timeout:?}. Log tail:\n{}", self.name, self.log.tail(20)))??;
        self.child = None;
        drop(ReleaseOnDrop(pid));
        Ok(status.code())
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub async fn stop(&mut self) -> anyhow::Result<Option<i32>> {
        self.signal_and_wait(Signal::SIGTERM, Duration::from_secs(20)).await
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.signal_and_wait(Signal::SIGKILL, Duration::from_secs(5)).await.map(|_| ())
    }

    /// Wait until a log line contains `needle`, printing the tail if it never does.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        let mut from = 0;
        loop {
            let (found, next) = self.log.find_from(from, needle);
            if let Some(line) = found {
                return Ok(line);
            }
            from = next;
            if Instant::now() > deadline {
                bail!(
                    "{}: no log line containing {needle:?} within {timeout:?}. Log tail:\n{}",
                    self.name,
                    self.log.tail(25)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Forgets a child in the reaper's registry once it has exited (or been killed on timeout).
struct ReleaseOnDrop(Option<u32>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            oma_test_support::reaper::release(pid);
        }
    }
}

impl Drop for OmaProcess {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_figures_match_whole_numbers() {
        assert!(contains_whole("  Total processed: 1", "Total processed: 1"));
        assert!(contains_whole("Total processed: 1 (of 1)", "Total processed: 1"));
        assert!(!contains_whole("  Total processed: 10", "Total processed: 1"));
        assert!(!contains_whole("Failed: 21", "1"));
    }
}
