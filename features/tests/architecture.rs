//! ARCHITECTURE.md kept by a machine: its code map names every source file and only files that
//! exist, and the import rules it states hold — oma's and sim-vma's modules import only from
//! layers below them, and sim-vma and test-support depend on no crate of ours.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace").to_path_buf()
}

fn architecture() -> String {
    std::fs::read_to_string(workspace().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md")
}

/// Every `.rs` file under `dir`, as a path relative to the workspace.
fn rust_files(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(workspace()).expect("inside the workspace");
            out.insert(relative.to_string_lossy().into_owned());
        }
    }
}

const CRATES: [&str; 5] = ["oma", "sim-vma", "test-support", "features", "bench"];

#[test]
fn the_code_map_names_every_source_file() {
    let doc = architecture();
    let mut files = BTreeSet::new();
    for krate in CRATES {
        for part in ["src", "tests"] {
            rust_files(&workspace().join(krate).join(part), &mut files);
        }
    }
    assert!(files.len() > 60, "found only {} files: {files:?}", files.len());
    let missing: Vec<&String> = files.iter().filter(|f| !doc.contains(&format!("`{f}`"))).collect();
    assert!(missing.is_empty(), "ARCHITECTURE.md does not name these files: {missing:#?}");
}

#[test]
fn every_path_the_code_map_names_exists() {
    let doc = architecture();
    let mut named = Vec::new();
    for (i, piece) in doc.split('`').enumerate() {
        let looks_like_a_path = i % 2 == 1
            && !piece.contains(' ')
            && !piece.contains('*')
            && piece.contains('/')
            && (CRATES.iter().any(|c| piece.starts_with(&format!("{c}/")))
                || ["docs/", "ci/", "scenarios/", "docker/", ".ci/"].iter().any(|d| piece.starts_with(d)));
        if looks_like_a_path {
            named.push(piece.to_string());
        }
    }
    assert!(named.len() > 60, "found only {} paths in ARCHITECTURE.md", named.len());
    let absent: Vec<&String> = named.iter().filter(|p| !workspace().join(p).exists()).collect();
    assert!(absent.is_empty(), "ARCHITECTURE.md names paths that do not exist: {absent:#?}");
}

/// The modules `file` refers to as `crate::<module>` in code (comments left out).
fn crate_references(file: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(file).expect("a source file");
    let mut refs = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for (at, _) in line.match_indices("crate::") {
            let module: String =
                line[at + "crate::".len()..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !module.is_empty() {
                refs.insert(module);
            }
        }
    }
    refs
}

/// Check that each module of `src` refers only to modules in deeper layers (`layers[0]` is the
/// top). A module in a folder (`db/jobs.rs`) is its folder's module.
fn check_layers(src: &str, layers: &[&[&str]]) {
    let rank = |module: &str| layers.iter().position(|layer| layer.contains(&module));
    let mut files = BTreeSet::new();
    rust_files(&workspace().join(src), &mut files);
    let mut broken = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&format!("{src}/")).expect("under src");
        if relative.starts_with("bin/") || relative == "lib.rs" {
            continue;
        }
        let module = relative.split('/').next().expect("a path").trim_end_matches(".rs");
        let Some(own) = rank(module) else {
            broken.push(format!("{file}: module {module} is in no layer of this test"));
            continue;
        };
        for used in crate_references(&workspace().join(&file)) {
            match rank(&used) {
                _ if used == module => {}
                Some(r) if r > own => {}
                Some(_) => broken.push(format!("{file} ({module}) imports {used}, which is not below it")),
                None => broken.push(format!("{file} imports {used}, which is in no layer of this test")),
            }
        }
    }
    assert!(broken.is_empty(), "import rules of ARCHITECTURE.md broken:\n{}", broken.join("\n"));
}

#[test]
fn oma_modules_import_only_from_layers_below_them() {
    check_layers(
        "oma/src",
        &[
            &["startup"],
            &["api", "cli"],
            &["recovery", "health_monitor", "replications"],
            &["poller"],
            &["reconcile"],
            &["services"],
            &["clock"],
            &["db"],
            &["decision"],
            &["vma_client"],
            &["telemetry", "sanitize"],
            &["config", "domain", "metrics", "failpoint"],
        ],
    );
}

#[test]
fn sim_vma_modules_import_only_from_layers_below_them() {
    check_layers(
        "sim-vma/src",
        &[
            &["listener", "client"],
            &["hot"],
            &["control", "vma_routes"],
            &["state"],
            &["wire", "faults", "replies", "journal", "scenario"],
            &["spec"],
            &["model"],
        ],
    );
}

/// The `[dependencies]` table of a crate's manifest (dev-dependencies left out).
fn normal_dependencies(krate: &str) -> String {
    let manifest = std::fs::read_to_string(workspace().join(krate).join("Cargo.toml")).expect("Cargo.toml");
    let start = manifest.find("[dependencies]").expect("a [dependencies] table");
    let rest = &manifest[start + "[dependencies]".len()..];
    rest[..rest.find("\n[").unwrap_or(rest.len())].to_string()
}

#[test]
fn the_fake_and_the_test_support_depend_on_no_crate_of_ours() {
    for krate in ["sim-vma", "test-support"] {
        let deps = normal_dependencies(krate);
        for ours in ["oma", "sim-vma", "oma-test-support", "oma-acceptance", "oma-bench"] {
            assert!(!deps.lines().any(|l| l.split(['.', ' ', '=']).next() == Some(ours)), "{krate} depends on {ours}");
        }
    }
    let oma = normal_dependencies("oma");
    for only_for_tests in ["sim-vma", "oma-test-support"] {
        assert!(
            !oma.lines().any(|l| l.split(['.', ' ', '=']).next() == Some(only_for_tests)),
            "oma depends on {only_for_tests} outside its tests"
        );
    }
}
