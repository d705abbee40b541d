//! The files that deploy the lab outside the harness: `docker-compose.yml` publishes every port on
//! loopback, overridable, with defaults that do not collide with a local MariaDB or OMA; the
//! compose tool accepts the file and resolves the overrides (when a compose tool is installed).
//! The README's test command is the one `.ci/run` and `ci/flake-loop.sh` run.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

/// Ports a developer's machine is likely to use already: MariaDB, the OMA, the VMA and sim-vma.
const TAKEN: [u16; 5] = [3306, 8081, 8082, 8091, 9081];

/// The `"host:port:container"` mappings of the compose file, as written.
fn published_ports(compose: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in compose.lines().map(str::trim) {
        let mappings: Vec<&str> = if let Some(list) = line.strip_prefix("ports:") {
            list.trim().trim_start_matches('[').trim_end_matches(']').split(',').collect()
        } else if let Some(item) = line.strip_prefix("- \"127.0.0.1:") {
            vec![item]
        } else {
            continue;
        };
        out.extend(
            mappings.into_iter().map(|m| m.trim().trim_matches('"').trim_start_matches("127.0.0.1:").to_string()),
        );
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn compose_ports_are_overridable_and_their_defaults_do_not_collide() {
    let compose = std::fs::read_to_string(workspace().join("docker-compose.yml")).expect("docker-compose.yml");
    let ports = published_ports(&compose);
    assert_eq!(ports.len(), 4, "mariadb, sim-vma (two) and oma publish ports: {ports:?}");
    for mapping in &ports {
        // ${OMA_COMPOSE_X_PORT:-N}:container
        let (host, _container) = mapping.rsplit_once(':').expect("host:container");
        let default = host
            .strip_prefix("${OMA_COMPOSE_")
            .and_then(|rest| rest.split_once(":-"))
            .and_then(|(_, n)| n.strip_suffix('}'))
            .unwrap_or_else(|| panic!("{mapping}: the host port must be ${{OMA_COMPOSE_…_PORT:-N}}"));
        let default: u16 = default.parse().unwrap_or_else(|_| panic!("{mapping}: default {default}"));
        assert!(!TAKEN.contains(&default), "{mapping}: default {default} collides with a usual local port");
    }
    let published = compose.matches("\"127.0.0.1:${OMA_COMPOSE_").count();
    assert_eq!(published, 4, "every port is published on loopback only");
}

/// `docker compose` (the plugin) or `docker-compose`, whichever answers.
fn compose_tool() -> Option<Vec<&'static str>> {
    for tool in [vec!["docker", "compose"], vec!["docker-compose"]] {
        let mut cmd = Command::new(tool[0]);
        cmd.args(&tool[1..]).arg("version");
        if cmd.output().is_ok_and(|o| o.status.success()) {
            return Some(tool);
        }
    }
    None
}

#[test]
fn the_compose_tool_accepts_the_file_and_its_port_overrides() {
    let Some(tool) = compose_tool() else {
        eprintln!("no compose tool installed (docker compose, docker-compose): only the text checks ran");
        return;
    };
    let resolve = |overrides: &[(&str, &str)]| {
        let mut cmd = Command::new(tool[0]);
        cmd.args(&tool[1..]).args(["-f", "docker-compose.yml", "config"]).current_dir(workspace());
        for var in
            ["OMA_COMPOSE_MARIADB_PORT", "OMA_COMPOSE_OMA_PORT", "OMA_COMPOSE_VMA_PORT", "OMA_COMPOSE_SIM_CONTROL_PORT"]
        {
            cmd.env_remove(var);
        }
        cmd.envs(overrides.iter().copied());
        let out = cmd.output().expect("running the compose tool");
        assert!(out.status.success(), "{tool:?} config: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let defaults = resolve(&[]);
    for port in ["13306", "18082", "19081", "18091"] {
        assert!(defaults.contains(port), "default port {port} missing from the resolved file:\n{defaults}");
    }
    let overridden = resolve(&[("OMA_COMPOSE_MARIADB_PORT", "23306"), ("OMA_COMPOSE_OMA_PORT", "28082")]);
    assert!(overridden.contains("23306") && overridden.contains("28082"), "{overridden}");
    assert!(!overridden.contains("13306"), "{overridden}");
}

/// CI and the flake loop run exactly the README's test command; a change to one is a change to all.
#[test]
fn ci_and_the_flake_loop_run_the_readme_test_command() {
    let readme = std::fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let command = readme
        .lines()
        .find(|l| l.starts_with("cargo fmt") && l.contains("cargo test"))
        .expect("the README's test command (a line starting `cargo fmt`)");
    for file in [".ci/run", "ci/flake-loop.sh"] {
        let text = std::fs::read_to_string(workspace().join(file)).expect(file);
        let runs: Vec<&str> = text.lines().map(str::trim).filter(|l| l.contains("cargo test")).collect();
        assert!(
            runs.iter().any(|l| l.contains(command)),
            "{file} does not run the README's test command `{command}`; it has {runs:?}"
        );
    }
}
