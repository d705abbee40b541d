//! A MariaDB server for tests, in the order of SPEC §6: `OMA_TEST_DATABASE_URL` (an existing
//! server) → a Docker engine (testcontainers, `mariadb:11.4`) → a local `mariadbd` on a temporary
//! data directory and a free port → a clear error naming all three.
//!
//! A server the harness starts is shared by every test process of this user on the machine: the
//! first one starts it and records it in `$TMPDIR/oma-test-mariadb-<uid>/`, later ones use it
//! (one `cargo test` pays for one container or `mariadbd`, not one per test binary). Each user
//! registers its pid there; a watchdog started with the server removes it — the container, or the
//! process and its data directory — once no registered process has been alive for
//! [`IDLE_GRACE`], however those processes ended (exit, panic, Ctrl-C, SIGTERM, SIGKILL). The
//! watchdog and the server run in process groups of their own, so a Ctrl-C in the terminal
//! reaches only the test process. Provisioning is serialized by a lock file in that directory.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{Connection, MySqlConnection};
use tokio::sync::OnceCell;

use crate::owner::process_start;
use crate::ports::free_port;

/// How long a shared server outlives its last user: long enough for `cargo test` to start the
/// next test binary, short enough that a finished run leaves nothing behind for long.
pub const IDLE_GRACE: Duration = Duration::from_secs(5);

/// The label of every container the harness starts (`docker ps -a --filter label=oma-test-support`).
pub const CONTAINER_LABEL: &str = "oma-test-support";

/// Where the server came from, printed once so a reader knows what ran.
#[derive(Debug, Clone)]
pub enum Provenance {
    ExistingUrl,
    Docker { container: String },
    LocalMariadbd { datadir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Server {
    /// `mysql://user:pw@host:port` without a database.
    pub base_url: String,
    pub provenance: Provenance,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// The test server, provisioned (or joined) on first use in this process.
pub async fn server() -> anyhow::Result<&'static Server> {
    SERVER.get_or_try_init(provision).await
}

async fn provision() -> anyhow::Result<Server> {
    if let Ok(url) = std::env::var("OMA_TEST_DATABASE_URL") {
        let base = strip_database(url.trim());
        check_connect(&base)
            .await
            .with_context(|| format!("OMA_TEST_DATABASE_URL={} is not reachable", without_password(&base)))?;
        eprintln!("[harness] MariaDB: existing server from OMA_TEST_DATABASE_URL ({})", without_password(&base));
        crate::owner::drop_abandoned_databases(&base).await;
        return Ok(Server { base_url: base, provenance: Provenance::ExistingUrl });
    }
    let shared = SharedDir::new();
    let _lock = shared.lock().await?;
    if let Some(server) = shared.recorded_server() {
        if check_connect(&server.base_url).await.is_ok() {
            shared.register_this_process()?;
            eprintln!("[harness] MariaDB: shared server at {} ({})", server.base_url, describe(&server.provenance));
            crate::owner::drop_abandoned_databases(&server.base_url).await;
            return Ok(server);
        }
    }
    // Nothing usable recorded: start a server. This process counts as a user from here on, so the
    // watchdog never stops a server that is still starting.
    shared.reset()?;
    shared.register_this_process()?;
    let docker_error = match docker(&shared).await {
        Ok((server, id)) => {
            shared.record(&server, &id)?;
            eprintln!("[harness] MariaDB: Docker container mariadb:11.4 at {}", server.base_url);
            return Ok(server);
        }
        Err(e) => e,
    };
    match local_mariadbd(&shared).await {
        Ok((server, id)) => {
            shared.record(&server, &id)?;
            eprintln!(
                "[harness] MariaDB: local mariadbd at {} ({}; no Docker engine: {docker_error:#})",
                server.base_url,
                describe(&server.provenance)
            );
            Ok(server)
        }
        Err(local_error) => bail!(
            "no MariaDB for the tests. Tried, in order:\n  1. OMA_TEST_DATABASE_URL: not set (e.g. mysql://root@127.0.0.1:3306)\n  \
             2. a Docker engine (testcontainers, mariadb:11.4): {docker_error:#}\n  \
             3. a local mariadbd on PATH or in /usr/sbin: {local_error:#}\n\
             Install MariaDB (apt-get install -y mariadb-server), start Docker, or set OMA_TEST_DATABASE_URL."
        ),
    }
}

fn describe(provenance: &Provenance) -> String {
    match provenance {
        Provenance::ExistingUrl => "OMA_TEST_DATABASE_URL".into(),
        Provenance::Docker { container } => format!("container {container}"),
        Provenance::LocalMariadbd { datadir } => format!("data in {}", datadir.display()),
    }
}

/// `mysql://user@host:port` of a URL, its password left out (it is never printed).
pub fn without_password(url: &str) -> String {
    match url.parse::<MySqlConnectOptions>() {
        Ok(o) => format!("mysql://{}@{}:{}", o.get_username(), o.get_host(), o.get_port()),
        Err(_) => "(a URL that does not parse)".to_string(),
    }
}

fn strip_database(url: &str) -> String {
    let url = url.trim_end_matches('/');
    match url.find("://").map(|i| i + 3) {
        Some(start) => match url[start..].find('/') {
            Some(slash) => url[..start + slash].to_string(),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

pub(crate) async fn check_connect(base: &str) -> anyhow::Result<()> {
    let mut conn = tokio::time::timeout(Duration::from_secs(5), MySqlConnection::connect(&format!("{base}/")))
        .await
        .map_err(|_| anyhow!("connect timed out"))??;
    sqlx::query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// The rendezvous of the test processes sharing one server.
struct SharedDir {
    base: PathBuf,
}

/// What the recorded server is, one `key=value` a line.
const SERVER_FILE: &str = "server";

impl SharedDir {
    fn new() -> SharedDir {
        let uid = nix::unistd::geteuid();
        SharedDir { base: std::env::temp_dir().join(format!("oma-test-mariadb-{uid}")) }
    }

    /// Take the provisioning lock. The watchdog removes the whole directory (lock file included)
    /// while holding it, so after locking, the file must still be the one at the path.
    async fn lock(&self) -> anyhow::Result<std::fs::File> {
        let base = self.base.clone();
        tokio::task::spawn_blocking(move || loop {
            std::fs::create_dir_all(base.join("users")).with_context(|| format!("creating {}", base.display()))?;
            let path = base.join("lock");
            let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
            file.lock().with_context(|| format!("locking {}", path.display()))?;
            let same = std::fs::metadata(&path).map(|m| m.ino()).ok() == Some(file.metadata()?.ino());
            if same && base.join("users").is_dir() {
                return Ok(file);
            }
        })
        .await?
    }

    fn recorded_server(&self) -> Option<Server> {
        let text = std::fs::read_to_string(self.base.join(SERVER_FILE)).ok()?;
        let value = |key: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string));
        let base_url = value("url")?;
        let provenance = match value("kind")?.as_str() {
            "docker" => Provenance::Docker { container: value("container")? },
            "local" => Provenance::LocalMariadbd { datadir: PathBuf::from(value("datadir")?) },
            _ => return None,
        };
        Some(Server { base_url, provenance })
    }

    /// Forget a recorded server that no longer answers (its watchdog cleans up after it).
    fn reset(&self) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(self.base.join(SERVER_FILE));
        Ok(())
    }

    /// Record the server this process started; `id` is its watchdog's.
    fn record(&self, server: &Server, id: &str) -> anyhow::Result<()> {
        let mut text = format!("id={id}\nurl={}\n", server.base_url);
        match &server.provenance {
            Provenance::Docker { container } => text.push_str(&format!("kind=docker\ncontainer={container}\n")),
            Provenance::LocalMariadbd { datadir } => {
                text.push_str(&format!("kind=local\ndatadir={}\n", datadir.display()))
            }
            Provenance::ExistingUrl => bail!("an existing server is not shared"),
        }
        let tmp = self.base.join("server.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, self.base.join(SERVER_FILE))?;
        Ok(())
    }

    fn register_this_process(&self) -> anyhow::Result<()> {
        let pid = std::process::id();
        let start = process_start(pid).context("reading /proc/self/stat")?;
        let mut f = std::fs::File::create(self.base.join("users").join(pid.to_string()))?;
        writeln!(f, "{start}")?;
        Ok(())
    }

    /// Start the watchdog of a server, returning its id (recorded with the server): every half
    /// second it forgets users that are gone; once none has been alive for [`IDLE_GRACE`], or the
    /// server itself is gone, it takes the lock, runs `stop` and removes this directory. If
    /// another server has been recorded meanwhile (this one failed to start, or died and was
    /// replaced), it only runs `stop` and leaves the directory to that server's watchdog.
    /// `alive` is a shell test of the server.
    fn spawn_watchdog(&self, alive: &str, stop: &str) -> anyhow::Result<String> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let script = format!(
            r#"base={base}
id={id}
exec 9>>"$base/lock"
idle=0
while :; do
  sleep 0.5
  recorded=$(sed -n 's/^id=//p' "$base/{server_file}" 2>/dev/null)
  if [ -n "$recorded" ] && [ "$recorded" != "$id" ]; then {{ {stop} ; }} >/dev/null 2>&1; exit 0; fi
  users=0
  for u in "$base"/users/*; do
    [ -e "$u" ] || continue
    pid=${{u##*/}}
    stat=$(cat /proc/$pid/stat 2>/dev/null | sed 's/^.*) //')
    state=$(echo "$stat" | cut -d' ' -f1)
    start=$(echo "$stat" | cut -d' ' -f20)
    if [ -n "$stat" ] && [ "$state" != Z ] && [ "$start" = "$(cat "$u" 2>/dev/null)" ]; then users=$((users + 1)); else rm -f "$u"; fi
  done
  if [ "$recorded" = "$id" ] && ! {{ {alive} ; }} >/dev/null 2>&1; then gone=1; else gone=0; fi
  if [ $users -gt 0 ] && [ $gone = 0 ]; then idle=0; continue; fi
  idle=$((idle + 1))
  [ $gone = 0 ] && [ $idle -lt {ticks} ] && continue
  flock 9
  recorded=$(sed -n 's/^id=//p' "$base/{server_file}" 2>/dev/null)
  if [ -n "$recorded" ] && [ "$recorded" != "$id" ]; then {{ {stop} ; }} >/dev/null 2>&1; exit 0; fi
  if [ $gone = 1 ] || [ -z "$(ls -A "$base/users")" ]; then
    {{ {stop} ; }} >/dev/null 2>&1
    rm -rf "$base"
    exit 0
  fi
  flock -u 9
  idle=0
done"#,
            base = shell_quote(&self.base.display().to_string()),
            server_file = SERVER_FILE,
            ticks = IDLE_GRACE.as_millis() / 500,
        );
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the server's watchdog (sh)")?;
        Ok(id)
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn docker(shared: &SharedDir) -> anyhow::Result<(Server, String)> {
    use testcontainers_modules::mariadb::Mariadb;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::ImageExt;
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if host.is_empty() && !Path::new("/var/run/docker.sock").exists() {
        bail!("no Docker engine (DOCKER_HOST unset and /var/run/docker.sock absent)");
    }
    let name = format!("oma-test-mariadb-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
    // The watchdog comes first, so a process killed while the container starts leaves nothing.
    let api = "curl -fsS --unix-socket /var/run/docker.sock http://docker/containers";
    let stop = format!("docker rm -f -v {name} || {api}/{name}?force=true\\&v=true -X DELETE");
    let alive = format!(
        "docker inspect -f '{{{{.State.Running}}}}' {name} | grep -qx true || {api}/{name}/json | grep -q '\"Running\":true'"
    );
    let id = shared.spawn_watchdog(&alive, &stop)?;
    let request = Mariadb::default()
        .with_tag("11.4")
        .with_container_name(&name)
        .with_label(CONTAINER_LABEL, "1")
        .with_cmd(["--max-connections=1000", "--innodb-flush-log-at-trx-commit=0", "--skip-name-resolve"]);
    let container = tokio::time::timeout(Duration::from_secs(180), request.start())
        .await
        .map_err(|_| anyhow!("starting the mariadb:11.4 container timed out after 180 s"))??;
    let port = container.get_host_port_ipv4(3306).await?;
    let base = format!("mysql://root@127.0.0.1:{port}");
    // The container outlives this process (other test processes share it); the watchdog removes it.
    std::mem::forget(container);
    check_connect(&base).await?;
    Ok((Server { base_url: base, provenance: Provenance::Docker { container: name } }, id))
}

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/mysql/bin"].map(PathBuf::from));
    for name in names {
        for dir in &dirs {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// A local `mariadbd`: initialize a data directory, start it on a free port in a process group of
/// its own, and hand it to a watchdog.
pub struct LocalMariadbd {
    pub root: PathBuf,
    pub port: u16,
    child: std::sync::Mutex<std::process::Child>,
}

impl LocalMariadbd {
    pub fn datadir(&self) -> PathBuf {
        self.root.join("data")
    }

    pub fn base_url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}", self.port)
    }

    /// Initialize `root/data` (once) and start the server; wait until it accepts connections.
    /// Commits are not flushed to disk one by one (fast, and enough while the server is only
    /// ever stopped with the test process); see [`LocalMariadbd::start_durable`].
    pub async fn start(root: &Path, port: u16) -> anyhow::Result<LocalMariadbd> {
        LocalMariadbd::start_with(root, port, false).await
    }

    /// Like [`LocalMariadbd::start`], with every commit on disk before it is acknowledged, as in
    /// production: a server that is killed -9 loses no committed transaction.
    pub async fn start_durable(root: &Path, port: u16) -> anyhow::Result<LocalMariadbd> {
        LocalMariadbd::start_with(root, port, true).await
    }

    async fn start_with(root: &Path, port: u16, durable: bool) -> anyhow::Result<LocalMariadbd> {
        let mariadbd = find_binary(&["mariadbd", "mysqld"])
            .ok_or_else(|| anyhow!("mariadbd not found on PATH or in /usr/sbin"))?;
        let datadir = root.join("data");
        let as_root = nix::unistd::geteuid().is_root();
        if !datadir.join("mysql").is_dir() {
            let install = find_binary(&["mariadb-install-db", "mysql_install_db"])
                .ok_or_else(|| anyhow!("mariadb-install-db not found"))?;
            std::fs::create_dir_all(&datadir)?;
            let mut cmd = tokio::process::Command::new(&install);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", datadir.display()))
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db")
                .arg("--skip-name-resolve")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            if as_root {
                cmd.arg("--user=root");
            }
            let out = cmd.output().await.with_context(|| format!("running {}", install.display()))?;
            if !out.status.success() {
                bail!(
                    "{} failed: {}",
                    install.display(),
                    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
                );
            }
        }
        let error_log = root.join("error.log");
        let mut args = vec![
            "--no-defaults".to_string(),
            format!("--datadir={}", datadir.display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".to_string(),
            format!("--socket={}", root.join("mysqld.sock").display()),
            format!("--pid-file={}", root.join("mysqld.pid").display()),
            "--skip-log-bin".to_string(),
            "--skip-name-resolve".to_string(),
            "--innodb-buffer-pool-size=128M".to_string(),
            "--innodb-log-file-size=48M".to_string(),
            format!("--innodb-flush-log-at-trx-commit={}", if durable { 1 } else { 0 }),
            format!("--innodb-doublewrite={}", if durable { 1 } else { 0 }),
            "--max-connections=1000".to_string(),
            format!("--log-error={}", error_log.display()),
        ];
        if as_root {
            args.push("--user=root".into());
        }
        let child = std::process::Command::new(&mariadbd)
            .args(&args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", mariadbd.display()))?;
        let server = LocalMariadbd { root: root.to_path_buf(), port, child: std::sync::Mutex::new(child) };
        let started = Instant::now();
        loop {
            match check_connect(&server.base_url()).await {
                Ok(()) => return Ok(server),
                Err(e) if started.elapsed() > Duration::from_secs(30) || !server.is_running() => {
                    let log = std::fs::read_to_string(&error_log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    server.kill();
                    bail!(
                        "mariadbd did not accept connections within {:.0?}: {e:#}\n{}",
                        started.elapsed(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|p| p.into_inner()).id()
    }

    pub fn is_running(&self) -> bool {
        matches!(self.child.lock().unwrap_or_else(|p| p.into_inner()).try_wait(), Ok(None))
    }

    /// SIGKILL, as a crash would, and reap it; the data directory stays.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The shared local server: data in the shared directory, a watchdog that stops it and removes
/// the directory when it has no users.
async fn local_mariadbd(shared: &SharedDir) -> anyhow::Result<(Server, String)> {
    let root = shared.base.join("server-data");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let server = LocalMariadbd::start(&root, free_port()).await?;
    let pid = server.pid();
    // A zombie (it died while this process, its parent, lives) counts as gone.
    let alive = format!("[ \"$(cut -d' ' -f3 /proc/{pid}/stat)\" != Z ]");
    let stop = format!("kill {pid}; while {alive}; do sleep 0.1; done");
    let id = shared.spawn_watchdog(&alive, &stop)?;
    Ok((
        Server { base_url: server.base_url(), provenance: Provenance::LocalMariadbd { datadir: server.datadir() } },
        id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_stripped_from_urls() {
        assert_eq!(strip_database("mysql://root@127.0.0.1:3306/migratekit_oma"), "mysql://root@127.0.0.1:3306");
        assert_eq!(strip_database("mysql://root@127.0.0.1:3306"), "mysql://root@127.0.0.1:3306");
    }
}
