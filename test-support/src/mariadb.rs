//! A MariaDB server for tests, in the order of SPEC §6: `OMA_TEST_DATABASE_URL` (an existing
//! server) → a Docker engine (testcontainers, `mariadb:11.4`) → a local `mariadbd` on a temporary
//! data directory and a free port → a clear error naming all three. One server per test process,
//! provisioned on first use; [`crate::TestDatabase`] makes a fresh database on it per test.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use sqlx::mysql::MySqlConnectOptions;
use sqlx::{Connection, MySqlConnection};
use tokio::sync::OnceCell;

/// Where the server came from, printed once so a reader knows what ran.
#[derive(Debug, Clone)]
pub enum Provenance {
    ExistingUrl,
    Docker,
    LocalMariadbd { datadir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Server {
    /// `mysql://user:pw@host:port` without a database.
    pub base_url: String,
    pub provenance: Provenance,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// The process-wide test server, provisioned on first use.
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
        return Ok(Server { base_url: base, provenance: Provenance::ExistingUrl });
    }
    let docker_error = match docker().await {
        Ok(base) => {
            eprintln!("[harness] MariaDB: Docker container mariadb:11.4 at {base}");
            return Ok(Server { base_url: base, provenance: Provenance::Docker });
        }
        Err(e) => e,
    };
    match local_mariadbd().await {
        Ok((base, datadir)) => {
            eprintln!("[harness] MariaDB: local mariadbd at {base} (data in {}; no Docker engine: {docker_error:#})", datadir.display());
            Ok(Server { base_url: base, provenance: Provenance::LocalMariadbd { datadir } })
        }
        Err(local_error) => bail!(
            "no MariaDB for the tests. Tried, in order:\n  1. OMA_TEST_DATABASE_URL: not set (e.g. mysql://root@127.0.0.1:3306)\n  \
             2. a Docker engine (testcontainers, mariadb:11.4): {docker_error:#}\n  \
             3. a local mariadbd on PATH or in /usr/sbin: {local_error:#}\n\
             Install MariaDB (apt-get install -y mariadb-server), start Docker, or set OMA_TEST_DATABASE_URL."
        ),
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

async fn docker() -> anyhow::Result<String> {
    use testcontainers_modules::mariadb::Mariadb;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::ImageExt;
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if host.is_empty() && !Path::new("/var/run/docker.sock").exists() {
        bail!("no Docker engine (DOCKER_HOST unset and /var/run/docker.sock absent)");
    }
    let container = tokio::time::timeout(Duration::from_secs(120), Mariadb::default().with_tag("11.4").start())
        .await
        .map_err(|_| anyhow!("starting the mariadb:11.4 container timed out"))??;
    let port = container.get_host_port_ipv4(3306).await?;
    let base = format!("mysql://root@127.0.0.1:{port}");
    // The container lives as long as the test process.
    Box::leak(Box::new(container));
    check_connect(&base).await?;
    Ok(base)
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Start `mariadbd` on a temporary data directory. A watchdog shell stops it and removes the
/// directory when this test process exits, however it exits.
async fn local_mariadbd() -> anyhow::Result<(String, PathBuf)> {
    let mariadbd =
        find_binary(&["mariadbd", "mysqld"]).ok_or_else(|| anyhow!("mariadbd not found on PATH or in /usr/sbin"))?;
    let install = find_binary(&["mariadb-install-db", "mysql_install_db"])
        .ok_or_else(|| anyhow!("mariadb-install-db not found"))?;
    let root = tempfile::Builder::new().prefix("oma-test-mariadb-").tempdir()?.keep();
    let datadir = root.join("data");
    std::fs::create_dir_all(&datadir)?;
    let as_root = nix::unistd::geteuid().is_root();
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
        bail!("{} failed: {}", install.display(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
    }
    let port = free_port();
    let socket = root.join("mysqld.sock");
    let mut args = vec![
        "--no-defaults".to_string(),
        format!("--datadir={}", datadir.display()),
        format!("--port={port}"),
        "--bind-address=127.0.0.1".to_string(),
        format!("--socket={}", socket.display()),
        format!("--pid-file={}", root.join("mysqld.pid").display()),
        "--skip-log-bin".to_string(),
        "--skip-name-resolve".to_string(),
        "--innodb-buffer-pool-size=128M".to_string(),
        "--innodb-log-file-size=48M".to_string(),
        "--innodb-flush-log-at-trx-commit=0".to_string(),
        "--innodb-doublewrite=0".to_string(),
        "--max-connections=1000".to_string(),
        "--log-error=".to_string() + &root.join("error.log").display().to_string(),
    ];
    if as_root {
        args.push("--user=root".into());
    }
    // The watchdog: runs mariadbd, and when our process is gone, stops it and cleans up.
    let quoted: Vec<String> = std::iter::once(mariadbd.display().to_string())
        .chain(args)
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let script = format!(
        "{} & db=$!; while kill -0 {parent} 2>/dev/null && kill -0 $db 2>/dev/null; do sleep 0.5; done; kill $db 2>/dev/null; wait $db; rm -rf '{root}'",
        quoted.join(" "),
        parent = std::process::id(),
        root = root.display()
    );
    std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mariadbd")?;
    let base = format!("mysql://root@127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        match check_connect(&base).await {
            Ok(()) => break,
            Err(e) if started.elapsed() > Duration::from_secs(30) => {
                let log = std::fs::read_to_string(root.join("error.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                bail!(
                    "mariadbd did not accept connections within 30s: {e:#}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok((base, datadir))
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_is_stripped_from_urls() {
        assert_eq!(super::strip_database("mysql://root@127.0.0.1:3306/migratekit_oma"), "mysql://root@127.0.0.1:3306");
        assert_eq!(super::strip_database("mysql://root@127.0.0.1:3306"), "mysql://root@127.0.0.1:3306");
    }
}
