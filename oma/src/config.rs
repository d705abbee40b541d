//! Settings of `oma-api`: defaults in code, overridden by `OMA_*` environment variables and flags.
//! A bad value is a start-up error that names the variable. Secrets are never printed.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, FromArgMatches};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The typed settings tree. Tests build it directly.
#[derive(Clone)]
pub struct Settings {
    pub database_url: String,
    pub vma_api_url: String,
    pub listen: SocketAddr,
    pub poll_interval: Duration,
    pub poll_grace: Duration,
    pub vma_timeout: Duration,
    pub recovery_max_age: Duration,
    pub not_found_complete_above: f64,
    pub health_interval: Duration,
    pub health_stale_after: Duration,
    pub stall_after: Duration,
    pub log_format: LogFormat,
    pub instance_id: Option<String>,
    /// Concurrent VMA checks during a recovery scan.
    pub recovery_concurrency: usize,
    /// Concurrent progress requests of the poller (not a cap on the number of jobs).
    pub poll_concurrency: usize,
    pub db_max_connections: u32,
    /// How long a start waits for a database that does not accept connections yet.
    pub db_wait: Duration,
    /// How long an API request waits for the database before answering 503.
    pub api_db_timeout: Duration,
    /// HTTP connections served at once (more are answered 503 and closed).
    pub http_max_connections: usize,
    /// How long a request head may take to arrive (also ends an idle keep-alive connection).
    pub http_header_timeout: Duration,
    /// How long a request body may take to arrive.
    pub http_body_timeout: Duration,
}

impl Settings {
    /// The `oma-api` flags' own defaults (the environment is not read) with these two URLs,
    /// validated like the service's: for tools and tests that run OMA parts in-process.
    pub fn with_defaults(database_url: &str, vma_api_url: &str) -> Result<Settings, ConfigError> {
        let flags = ServeArgs::augment_args(clap::Command::new("defaults"));
        let without_env: Vec<clap::Arg> = flags.get_arguments().map(|a| a.clone().env(None)).collect();
        let matches = clap::Command::new("defaults")
            .args(without_env)
            .try_get_matches_from(["defaults"])
            .expect("every flag has a default or is optional");
        let mut args = ServeArgs::from_arg_matches(&matches).expect("matches of ServeArgs' own flags");
        args.database_url = Some(database_url.to_string());
        args.vma_api_url = vma_api_url.to_string();
        args.into_settings()
    }

    /// How long before a lease can expire (as the database sees it) its owner stops polling the
    /// job: one VMA timeout (a poll dispatched at the last moment has landed by then), half an
    /// interval (the gap the next owner's first poll keeps from it) and 100 ms of slack.
    pub fn lease_margin(&self) -> Duration {
        self.vma_timeout + self.poll_interval / 2 + Duration::from_millis(100)
    }

    /// How long a claim on a job lasts without renewal: the margin, plus three intervals (at least
    /// a second) of renewals that may fail before the owner has to pause.
    pub fn lease_ttl(&self) -> Duration {
        self.lease_margin() + (self.poll_interval * 3).max(Duration::from_secs(1))
    }

    /// How long after a claim or renewal began this process may go on polling the job: the lease
    /// less the margin, measured on this process's own clock from before the statement was sent
    /// (the database set the expiry later than that, so this ends first).
    pub fn lease_use(&self) -> Duration {
        self.lease_ttl() - self.lease_margin()
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &redact_url(&self.database_url))
            .field("vma_api_url", &self.vma_api_url)
            .field("listen", &self.listen)
            .field("poll_interval", &humantime::format_duration(self.poll_interval).to_string())
            .field("poll_grace", &humantime::format_duration(self.poll_grace).to_string())
            .field("vma_timeout", &humantime::format_duration(self.vma_timeout).to_string())
            .field("recovery_max_age", &humantime::format_duration(self.recovery_max_age).to_string())
            .field("not_found_complete_above", &self.not_found_complete_above)
            .field("health_interval", &humantime::format_duration(self.health_interval).to_string())
            .field("health_stale_after", &humantime::format_duration(self.health_stale_after).to_string())
            .field("stall_after", &humantime::format_duration(self.stall_after).to_string())
            .field("log_format", &self.log_format)
            .field("instance_id", &self.instance_id)
            .field("db_wait", &humantime::format_duration(self.db_wait).to_string())
            .field("api_db_timeout", &humantime::format_duration(self.api_db_timeout).to_string())
            .field("http_max_connections", &self.http_max_connections)
            .field("http_header_timeout", &humantime::format_duration(self.http_header_timeout).to_string())
            .field("http_body_timeout", &humantime::format_duration(self.http_body_timeout).to_string())
            .finish()
    }
}

/// `mysql://user:secret@host/db` → `mysql://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return url.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!("{}://{}:***{}", &url[..scheme_end], &userinfo[..colon], &rest[at..]),
        None => url.to_string(),
    }
}

/// Flags of `oma-api`, each also an environment variable. Values stay strings here and are
/// parsed by [`ServeArgs::into_settings`] so every error names its variable.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// MariaDB URL, e.g. mysql://oma_user:pw@127.0.0.1:3306/migratekit_oma
    #[arg(long, env = "OMA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Base URL of the VMA API
    #[arg(long, env = "VMA_API_URL", default_value = "http://localhost:9081")]
    pub vma_api_url: String,
    /// Address to listen on (port 0 picks a free port)
    #[arg(long, env = "OMA_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: String,
    #[arg(long, env = "OMA_POLL_INTERVAL", default_value = "5s")]
    pub poll_interval: String,
    #[arg(long, env = "OMA_POLL_GRACE", default_value = "30s")]
    pub poll_grace: String,
    #[arg(long, env = "OMA_VMA_TIMEOUT", default_value = "10s")]
    pub vma_timeout: String,
    #[arg(long, env = "OMA_RECOVERY_MAX_AGE", default_value = "30m")]
    pub recovery_max_age: String,
    /// Progress percent above which a job the VMA no longer knows is assumed completed
    #[arg(long, env = "OMA_NOT_FOUND_COMPLETE_ABOVE", default_value = "90")]
    pub not_found_complete_above: String,
    #[arg(long, env = "OMA_HEALTH_INTERVAL", default_value = "2m")]
    pub health_interval: String,
    #[arg(long, env = "OMA_HEALTH_STALE_AFTER", default_value = "30s")]
    pub health_stale_after: String,
    #[arg(long, env = "OMA_STALL_AFTER", default_value = "30m")]
    pub stall_after: String,
    /// text or json
    #[arg(long, env = "OMA_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Identity of this process in vma_polling_state (default: host name and listen port)
    #[arg(long, env = "OMA_INSTANCE_ID")]
    pub instance_id: Option<String>,
    #[arg(long, env = "OMA_RECOVERY_CONCURRENCY", default_value = "64")]
    pub recovery_concurrency: String,
    #[arg(long, env = "OMA_POLL_CONCURRENCY", default_value = "256")]
    pub poll_concurrency: String,
    #[arg(long, env = "OMA_DB_MAX_CONNECTIONS", default_value = "16")]
    pub db_max_connections: String,
    /// How long a start waits for the database to accept connections (it may come up after the
    /// OMA, e.g. after a reboot); each failed attempt is logged with its reason
    #[arg(long, env = "OMA_DB_WAIT", default_value = "30s")]
    pub db_wait: String,
    /// How long an API request that reads waits for the database before it answers 503
    /// "Database unavailable" with the reason
    #[arg(long, env = "OMA_API_DB_TIMEOUT", default_value = "5s")]
    pub api_db_timeout: String,
    /// HTTP connections served at once; more are answered 503 and closed
    #[arg(long, env = "OMA_HTTP_MAX_CONNECTIONS", default_value = "1024")]
    pub http_max_connections: String,
    /// How long a request head may take to arrive (also how long an idle keep-alive connection
    /// stays open)
    #[arg(long, env = "OMA_HTTP_HEADER_TIMEOUT", default_value = "10s")]
    pub http_header_timeout: String,
    /// How long a request body may take to arrive
    #[arg(long, env = "OMA_HTTP_BODY_TIMEOUT", default_value = "10s")]
    pub http_body_timeout: String,
}

/// A configuration error that names the variable and the flag.
#[derive(Debug, thiserror::Error)]
#[error("invalid {variable} (--{flag}) = {value:?}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

/// A duration between `min` and `max`: a value outside the range would overflow the lease
/// arithmetic or make the service useless, so it is refused at start with the range named.
fn duration(
    variable: &'static str,
    flag: &'static str,
    value: &str,
    (min, max): (Duration, Duration),
) -> Result<Duration, ConfigError> {
    let err = |reason: String| ConfigError { variable, flag, value: value.to_string(), reason };
    let d = humantime::parse_duration(value.trim())
        .map_err(|e| err(format!("{e} (use a duration such as 5s, 250ms, 30m)")))?;
    if d < min || d > max {
        return Err(err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        )));
    }
    Ok(d)
}

/// A whole number between `min` and `max`.
fn count<T>(variable: &'static str, flag: &'static str, value: &str, (min, max): (T, T)) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let err = |reason: String| ConfigError { variable, flag, value: value.to_string(), reason };
    let n: T = value.trim().parse().map_err(|_| err(format!("not a whole number (between {min} and {max})")))?;
    if n < min || n > max {
        return Err(err(format!("must be between {min} and {max}")));
    }
    Ok(n)
}

/// Ranges of the settings: wide enough for any deployment and for tests that shorten intervals
/// to milliseconds, narrow enough that no arithmetic on them overflows.
pub mod ranges {
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);
    const MIN: Duration = Duration::from_secs(60);
    const H: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(24 * 3600);

    pub const POLL_INTERVAL: (Duration, Duration) = (MS.saturating_mul(10), H);
    pub const POLL_GRACE: (Duration, Duration) = (MS.saturating_mul(10), DAY);
    pub const VMA_TIMEOUT: (Duration, Duration) = (MS.saturating_mul(10), MIN.saturating_mul(10));
    pub const RECOVERY_MAX_AGE: (Duration, Duration) = (S, DAY.saturating_mul(30));
    pub const HEALTH_INTERVAL: (Duration, Duration) = (MS.saturating_mul(10), DAY);
    pub const HEALTH_STALE_AFTER: (Duration, Duration) = (MS.saturating_mul(10), DAY);
    pub const STALL_AFTER: (Duration, Duration) = (MS.saturating_mul(100), DAY.saturating_mul(30));
    pub const DB_WAIT: (Duration, Duration) = (MS, DAY);
    pub const API_DB_TIMEOUT: (Duration, Duration) = (MS.saturating_mul(10), MIN.saturating_mul(10));
    pub const RECOVERY_CONCURRENCY: (usize, usize) = (1, 10_000);
    pub const POLL_CONCURRENCY: (usize, usize) = (1, 100_000);
    pub const DB_MAX_CONNECTIONS: (u32, u32) = (1, 1_000);
    pub const HTTP_MAX_CONNECTIONS: (usize, usize) = (1, 100_000);
    pub const HTTP_TIMEOUT: (Duration, Duration) = (MS.saturating_mul(10), MIN.saturating_mul(10));
}

/// Check a database URL without printing its password.
pub fn parse_database_url(value: Option<&str>) -> Result<String, ConfigError> {
    let err = |value: &str, reason: &str| ConfigError {
        variable: "OMA_DATABASE_URL",
        flag: "database-url",
        value: redact_url(value),
        reason: reason.into(),
    };
    let Some(url) = value.map(str::trim).filter(|s| !s.is_empty()) else {
        return Err(err("", "is required (e.g. mysql://oma_user:pw@127.0.0.1:3306/migratekit_oma)"));
    };
    if !(url.starts_with("mysql://") || url.starts_with("mariadb://")) {
        return Err(err(url, "must start with mysql:// or mariadb://"));
    }
    Ok(url.replacen("mariadb://", "mysql://", 1))
}

/// Check the VMA's base URL: http or https, a host, a valid port. A mistyped address must stop the
/// process, not make every job look unreachable (and old ones then failed).
pub fn parse_vma_url(value: &str) -> Result<String, ConfigError> {
    let trimmed = value.trim();
    let err = |reason: String| ConfigError {
        variable: "VMA_API_URL",
        flag: "vma-api-url",
        value: trimmed.to_string(),
        reason,
    };
    let url = reqwest::Url::parse(trimmed).map_err(|e| err(format!("{e} (use e.g. http://localhost:9081)")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(err("must be an http:// or https:// URL".into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(err("has no host (use e.g. http://localhost:9081)".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(err("must be a base URL, without ?query or #fragment".into()));
    }
    Ok(trimmed.to_string())
}

impl ServeArgs {
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let database_url = parse_database_url(self.database_url.as_deref())?;
        let vma = parse_vma_url(&self.vma_api_url)?;
        let listen: SocketAddr = self.listen.trim().parse().map_err(|e| ConfigError {
            variable: "OMA_LISTEN",
            flag: "listen",
            value: self.listen.clone(),
            reason: format!("{e} (use host:port, e.g. 127.0.0.1:8082)"),
        })?;
        let threshold: f64 =
            self.not_found_complete_above.trim().parse().ok().filter(|v: &f64| (0.0..=100.0).contains(v)).ok_or_else(
                || ConfigError {
                    variable: "OMA_NOT_FOUND_COMPLETE_ABOVE",
                    flag: "not-found-complete-above",
                    value: self.not_found_complete_above.clone(),
                    reason: "must be a percentage between 0 and 100".into(),
                },
            )?;
        let log_format = match self.log_format.trim().to_ascii_lowercase().as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            _ => {
                return Err(ConfigError {
                    variable: "OMA_LOG_FORMAT",
                    flag: "log-format",
                    value: self.log_format,
                    reason: "must be text or json".into(),
                })
            }
        };
        let instance_id = match self.instance_id.map(|s| s.trim().to_string()) {
            Some(id) if id.is_empty() || id.len() > 128 => {
                return Err(ConfigError {
                    variable: "OMA_INSTANCE_ID",
                    flag: "instance-id",
                    value: id,
                    reason: "must be 1 to 128 characters".into(),
                })
            }
            other => other,
        };
        Ok(Settings {
            database_url,
            vma_api_url: vma,
            listen,
            poll_interval: duration("OMA_POLL_INTERVAL", "poll-interval", &self.poll_interval, ranges::POLL_INTERVAL)?,
            poll_grace: duration("OMA_POLL_GRACE", "poll-grace", &self.poll_grace, ranges::POLL_GRACE)?,
            vma_timeout: duration("OMA_VMA_TIMEOUT", "vma-timeout", &self.vma_timeout, ranges::VMA_TIMEOUT)?,
            recovery_max_age: duration(
                "OMA_RECOVERY_MAX_AGE",
                "recovery-max-age",
                &self.recovery_max_age,
                ranges::RECOVERY_MAX_AGE,
            )?,
            not_found_complete_above: threshold,
            health_interval: duration(
                "OMA_HEALTH_INTERVAL",
                "health-interval",
                &self.health_interval,
                ranges::HEALTH_INTERVAL,
            )?,
            health_stale_after: duration(
                "OMA_HEALTH_STALE_AFTER",
                "health-stale-after",
                &self.health_stale_after,
                ranges::HEALTH_STALE_AFTER,
            )?,
            stall_after: duration("OMA_STALL_AFTER", "stall-after", &self.stall_after, ranges::STALL_AFTER)?,
            log_format,
            instance_id,
            recovery_concurrency: count(
                "OMA_RECOVERY_CONCURRENCY",
                "recovery-concurrency",
                &self.recovery_concurrency,
                ranges::RECOVERY_CONCURRENCY,
            )?,
            poll_concurrency: count(
                "OMA_POLL_CONCURRENCY",
                "poll-concurrency",
                &self.poll_concurrency,
                ranges::POLL_CONCURRENCY,
            )?,
            db_max_connections: count(
                "OMA_DB_MAX_CONNECTIONS",
                "db-max-connections",
                &self.db_max_connections,
                ranges::DB_MAX_CONNECTIONS,
            )?,
            db_wait: duration("OMA_DB_WAIT", "db-wait", &self.db_wait, ranges::DB_WAIT)?,
            api_db_timeout: duration(
                "OMA_API_DB_TIMEOUT",
                "api-db-timeout",
                &self.api_db_timeout,
                ranges::API_DB_TIMEOUT,
            )?,
            http_max_connections: count(
                "OMA_HTTP_MAX_CONNECTIONS",
                "http-max-connections",
                &self.http_max_connections,
                ranges::HTTP_MAX_CONNECTIONS,
            )?,
            http_header_timeout: duration(
                "OMA_HTTP_HEADER_TIMEOUT",
                "http-header-timeout",
                &self.http_header_timeout,
                ranges::HTTP_TIMEOUT,
            )?,
            http_body_timeout: duration(
                "OMA_HTTP_BODY_TIMEOUT",
                "http-body-timeout",
                &self.http_body_timeout,
                ranges::HTTP_TIMEOUT,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["oma-api", "--database-url", "mysql://u:secret@127.0.0.1/db"];
        argv.extend_from_slice(args);
        Cli::parse_from(argv).serve.into_settings()
    }

    #[test]
    fn in_process_defaults_are_the_flags_defaults_whatever_the_environment() {
        // Set in this test process only; with_defaults must not read it (parse() does).
        std::env::set_var("OMA_STALL_AFTER", "7m");
        let flags = parse(&[]).unwrap();
        let in_process = Settings::with_defaults("mysql://u:secret@127.0.0.1/db", "http://localhost:9081").unwrap();
        std::env::remove_var("OMA_STALL_AFTER");
        assert_eq!(flags.stall_after, Duration::from_secs(7 * 60));
        assert_eq!(in_process.stall_after, Duration::from_secs(30 * 60));
        // Every other value is the flags' default too (no other test reads OMA_STALL_AFTER).
        let flags_debug = format!("{flags:?}").replace("stall_after: \"7m\"", "stall_after: \"30m\"");
        assert_eq!(flags_debug, format!("{in_process:?}"));
        assert_eq!(
            (flags.recovery_concurrency, flags.poll_concurrency, flags.db_max_connections),
            (in_process.recovery_concurrency, in_process.poll_concurrency, in_process.db_max_connections)
        );
        let e = Settings::with_defaults("mysql://u@h/db", "localhost:9081").unwrap_err();
        assert_eq!(e.variable, "VMA_API_URL");
    }

    #[test]
    fn an_owner_stops_polling_a_margin_before_its_lease_can_expire() {
        let s = parse(&[]).unwrap();
        // 10 s VMA timeout + 2.5 s (half of 5 s) + 0.1 s; three intervals of renewals.
        assert_eq!(s.lease_margin(), Duration::from_millis(12_600));
        assert_eq!(s.lease_ttl(), Duration::from_millis(27_600));
        assert_eq!(s.lease_use(), Duration::from_secs(15));
        let fast = parse(&["--poll-interval", "100ms", "--vma-timeout", "300ms"]).unwrap();
        assert_eq!(fast.lease_margin(), Duration::from_millis(450));
        assert_eq!(fast.lease_use(), Duration::from_secs(1), "at least a second of renewals");
    }

    #[test]
    fn defaults_match_the_spec() {
        let s = parse(&[]).unwrap();
        assert_eq!(s.poll_interval, Duration::from_secs(5));
        assert_eq!(s.recovery_max_age, Duration::from_secs(1800));
        assert_eq!(s.health_interval, Duration::from_secs(120));
        assert_eq!(s.not_found_complete_above, 90.0);
        assert_eq!(s.vma_api_url, "http://localhost:9081");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = parse(&["--poll-interval", "5x"]).unwrap_err().to_string();
        assert!(e.contains("OMA_POLL_INTERVAL") && e.contains("5x"), "{e}");
        let e = parse(&["--poll-interval", "0s"]).unwrap_err().to_string();
        assert!(e.contains("must be between 10ms and 1h"), "{e}");
        let e = parse(&["--not-found-complete-above", "120"]).unwrap_err().to_string();
        assert!(e.contains("OMA_NOT_FOUND_COMPLETE_ABOVE"), "{e}");
        let e = parse(&["--listen", "nowhere"]).unwrap_err().to_string();
        assert!(e.contains("OMA_LISTEN"), "{e}");
        let e = parse(&["--log-format", "xml"]).unwrap_err().to_string();
        assert!(e.contains("OMA_LOG_FORMAT"), "{e}");
        for bad in ["localhost:9081", "http://", "http://vma:99999", "ftp://vma:9081", "http://vma:9081/?x=1", "vma"] {
            let e = parse(&["--vma-api-url", bad]).unwrap_err().to_string();
            assert!(e.contains("VMA_API_URL") && e.contains(bad), "{bad}: {e}");
        }
        for good in ["http://vma:9081", "https://10.0.0.5:9081/", "http://localhost:9081/vma"] {
            assert!(parse(&["--vma-api-url", good]).is_ok(), "{good}");
        }
    }

    /// Values that passed validation once and then overflowed or exhausted memory: each is refused
    /// at start, naming the variable and its range.
    #[test]
    fn extreme_values_are_refused_with_their_range() {
        for (flag, value, variable, range) in [
            ("--poll-interval", "300000000000y", "OMA_POLL_INTERVAL", "between 10ms and 1h"),
            ("--health-interval", "300000000000y", "OMA_HEALTH_INTERVAL", "between 10ms and 1day"),
            ("--vma-timeout", "11m", "OMA_VMA_TIMEOUT", "between 10ms and 10m"),
            ("--stall-after", "1ms", "OMA_STALL_AFTER", "between 100ms and 30days"),
            ("--poll-concurrency", "4611686018427387904", "OMA_POLL_CONCURRENCY", "between 1 and 100000"),
            ("--db-max-connections", "4294967295", "OMA_DB_MAX_CONNECTIONS", "between 1 and 1000"),
            ("--db-max-connections", "0", "OMA_DB_MAX_CONNECTIONS", "between 1 and 1000"),
            ("--recovery-concurrency=-3", "", "OMA_RECOVERY_CONCURRENCY", "between 1 and 10000"),
            ("--db-wait", "2days", "OMA_DB_WAIT", "between 1ms and 1day"),
        ] {
            // A negative value must be glued to its flag, or clap reads it as a flag of its own.
            let args: Vec<&str> = [flag, value].into_iter().filter(|a| !a.is_empty()).collect();
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(variable) && e.contains(range), "{flag} {value}: {e}");
        }
        let longest = parse(&["--poll-interval", "1h", "--vma-timeout", "10m", "--health-interval", "1day"]).unwrap();
        assert!(longest.lease_ttl() > longest.poll_interval, "the lease arithmetic of the largest values");
        assert_eq!(longest.lease_use(), Duration::from_secs(3 * 3600));
    }

    #[test]
    fn database_url_errors_never_show_the_password() {
        let e = parse_database_url(Some("postgres://u:hunter2@h/db")).unwrap_err().to_string();
        assert!(e.contains("OMA_DATABASE_URL") && !e.contains("hunter2"), "{e}");
        let e = parse_database_url(None).unwrap_err().to_string();
        assert!(e.contains("required"), "{e}");
        let s = parse(&[]).unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        assert_eq!(redact_url("mysql://u:secret@h:3306/db"), "mysql://u:***@h:3306/db");
        assert_eq!(redact_url("mysql://h/db"), "mysql://h/db");
    }
}
