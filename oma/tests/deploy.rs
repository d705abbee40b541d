//! The systemd unit the guide's commands assume (`deploy/oma-api.service`): `systemd-analyze
//! verify` must accept it without a word (where systemd is installed), its stop timeout must cover
//! the graceful drain, and its environment file may only set variables `oma-api` knows.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `systemd-analyze verify` on `unit` (its binary paths pointed at the built `oma-api`): its
/// complaints, or `None` where systemd is not installed.
fn verify(unit: &str) -> Option<String> {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        return None;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let unit = unit.replace("/opt/migratekit/bin/oma-api", env!("CARGO_BIN_EXE_oma-api"));
    let path = dir.path().join("oma-api.service");
    std::fs::write(&path, unit).expect("write the unit");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("run verify");
    let mut said = String::from_utf8_lossy(&out.stderr).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        said.push_str(&format!("\nexit status {}", out.status));
    }
    Some(said.trim().to_string())
}

fn setting<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(deploy_dir().join("oma-api.service")).expect("deploy/oma-api.service");
    match verify(&unit) {
        None => eprintln!("systemd-analyze is not installed: the unit was not verified"),
        Some(said) => assert!(said.is_empty(), "systemd-analyze verify complained:\n{said}"),
    }
}

/// The check above can fail: a unit with a mistake is reported.
#[test]
fn a_broken_unit_is_reported() {
    let unit = "[Service]\nExecStart=/opt/migratekit/bin/oma-api serve\nTimeoutStopSec=soon\n";
    if let Some(said) = verify(unit) {
        assert!(said.contains("TimeoutStopSec") || said.contains("time value"), "{said}");
    }
}

#[test]
fn the_stop_timeout_covers_the_drain_and_bad_settings_do_not_loop() {
    let unit = std::fs::read_to_string(deploy_dir().join("oma-api.service")).expect("deploy/oma-api.service");
    let stop = humantime::parse_duration(setting(&unit, "TimeoutStopSec").expect("TimeoutStopSec"))
        .or_else(|_| setting(&unit, "TimeoutStopSec").unwrap().parse::<u64>().map(std::time::Duration::from_secs))
        .expect("a duration");
    // Requests drain, then leases are handed over and the pool closed.
    let drain = oma::startup::SHUTDOWN_DRAIN + oma::poller::SHUTDOWN_DB_WAIT * 2;
    assert!(stop > drain, "TimeoutStopSec {stop:?} does not cover the drain ({drain:?})");
    assert_eq!(setting(&unit, "RestartPreventExitStatus"), Some("2"), "a configuration error exits 2");
    assert_eq!(setting(&unit, "KillSignal"), Some("SIGTERM"));
}

#[test]
fn the_environment_file_sets_only_variables_oma_api_knows() {
    let help = Command::new(env!("CARGO_BIN_EXE_oma-api")).arg("--help").output().expect("oma-api --help");
    // Help text wraps where the terminal is narrow ("[env:" at the end of a line): one line of it.
    let help = String::from_utf8_lossy(&help.stdout).split_whitespace().collect::<Vec<_>>().join(" ");
    let env = std::fs::read_to_string(deploy_dir().join("oma-api.env")).expect("deploy/oma-api.env");
    let mut keys = 0;
    for line in env.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, _) = line.split_once('=').unwrap_or_else(|| panic!("not KEY=value: {line}"));
        let named = help.contains(&format!("env: {key}=")) || help.contains(&format!("env: {key}]"));
        assert!(named, "oma-api --help names no {key}");
        keys += 1;
    }
    assert!(keys >= 2, "the file sets the database and the VMA at least");
}
