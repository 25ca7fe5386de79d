//! Tidy checks over the source tree and its manifests: every Rust file says what it is for in a
//! `//!` header, and the layer rules of ARCHITECTURE.md hold in every Cargo manifest.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_doc_comment() {
    // crates/<layer>/<crate>: two levels up is the crates folder.
    let crates = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap();
    let mut files = Vec::new();
    rust_files(crates, &mut files);
    assert!(files.len() > 20, "the walk must find the workspace's files");
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` header: {missing:#?}"
    );
}

/// A workspace crate as its manifest declares it: its layer (the folder under `crates/`), its
/// name, and the names of its normal dependencies and of its integration-test files.
struct Crate {
    layer: String,
    name: String,
    deps: Vec<String>,
    test_files: Vec<String>,
}

/// The integration-test binaries of the crate in `dir`: its `[[test]]` targets when it turns
/// cargo's discovery off, otherwise what cargo discovers (`tests/*.rs`, `tests/*/main.rs`).
fn test_targets(dir: &Path, manifest: &toml::Table) -> Vec<String> {
    let autotests = manifest["package"]
        .get("autotests")
        .and_then(toml::Value::as_bool)
        .unwrap_or(true);
    if !autotests {
        return manifest
            .get("test")
            .and_then(|t| t.as_array())
            .map(|tests| {
                tests
                    .iter()
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
    }
    let Ok(entries) = std::fs::read_dir(dir.join("tests")) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs") || p.join("main.rs").exists())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn workspace_crates() -> Vec<Crate> {
    let crates_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap();
    let mut out = Vec::new();
    for layer in std::fs::read_dir(crates_dir).unwrap() {
        let layer = layer.unwrap().path();
        if !layer.is_dir() {
            continue;
        }
        for krate in std::fs::read_dir(&layer).unwrap() {
            let dir = krate.unwrap().path();
            let manifest = dir.join("Cargo.toml");
            if !manifest.exists() {
                continue;
            }
            let doc: toml::Table = std::fs::read_to_string(&manifest).unwrap().parse().unwrap();
            let name = doc["package"]["name"].as_str().unwrap().to_owned();
            let deps = doc
                .get("dependencies")
                .and_then(|d| d.as_table())
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default();
            let test_files = test_targets(&dir, &doc);
            out.push(Crate {
                layer: layer.file_name().unwrap().to_string_lossy().into_owned(),
                name,
                deps,
                test_files,
            });
        }
    }
    assert!(out.len() > 15, "the walk must find the workspace's crates");
    out
}

/// Every `(crate, dependency)` pair of crates in `layers` that depends on one of `banned`.
fn offenders(layers: &[&str], banned: &[&str]) -> Vec<String> {
    workspace_crates()
        .iter()
        .filter(|c| layers.contains(&c.layer.as_str()))
        .flat_map(|c| {
            c.deps
                .iter()
                .filter(|d| banned.contains(&d.as_str()))
                .map(move |d| format!("{} -> {d}", c.name))
        })
        .collect()
}

const LAYERS: [&str; 6] = ["core", "app", "adapters", "edges", "compose", "dev"];

#[test]
fn every_crate_lives_in_a_layer_folder() {
    for c in workspace_crates() {
        assert!(
            LAYERS.contains(&c.layer.as_str()),
            "{} is in crates/{}, not a layer",
            c.name,
            c.layer
        );
    }
}

/// Dependencies point inwards: core on nothing of ours, the application on core, adapters
/// on the ports (core, app), edges on core and app but never on an engine's adapter, and only
/// composition (the binary and its configuration) and dev tools see every layer.
#[test]
fn dependencies_point_inwards() {
    let crates = workspace_crates();
    let layer_of = |name: &str| {
        crates
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.layer.clone())
    };
    let allowed = |from: &str| -> &[&str] {
        match from {
            "core" => &["core"],
            "app" => &["core", "app"],
            "adapters" => &["core", "app", "adapters"],
            "edges" => &["core", "app", "edges"],
            _ => &LAYERS,
        }
    };
    let mut wrong = Vec::new();
    for c in &crates {
        for dep in &c.deps {
            if let Some(layer) = layer_of(dep)
                && !allowed(&c.layer).contains(&layer.as_str())
            {
                wrong.push(format!("{} ({}) -> {dep} ({layer})", c.name, c.layer));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies pointing outwards: {wrong:#?}"
    );
}

/// The engines' client crates, which only adapters (and dev tools) may name.
const ENGINE_CLIENTS: [&str; 5] = ["sqlx", "lapin", "async-nats", "redis", "hyper"];

#[test]
fn only_the_sql_crates_speak_sql() {
    let wrong: Vec<_> = workspace_crates()
        .iter()
        .filter(|c| c.layer != "dev" && !c.name.starts_with("keel-sql"))
        .filter(|c| c.deps.iter().any(|d| d == "sqlx"))
        .map(|c| c.name.clone())
        .collect();
    assert!(
        wrong.is_empty(),
        "sqlx outside the keel-sql crates: {wrong:?}"
    );
}

#[test]
fn the_core_and_the_application_never_name_an_engine() {
    let wrong = offenders(&["core", "app"], &ENGINE_CLIENTS);
    assert!(
        wrong.is_empty(),
        "engine clients in core or app: {wrong:#?}"
    );
}

/// Status codes, routers and servers are the edges' (and the binary that serves them).
#[test]
fn only_the_http_crates_know_status_codes() {
    let wrong = offenders(
        &["core", "app", "adapters"],
        &["http", "axum", "hyper", "tower-http"],
    );
    assert!(wrong.is_empty(), "HTTP servers below the edges: {wrong:#?}");
}

/// The gateway verifies tokens with the credentials primitives; it neither runs the identity
/// provider nor reads keel's configuration tree (its own settings are its own).
#[test]
fn the_gateway_depends_on_neither_the_idp_nor_the_configuration() {
    let gateway = workspace_crates()
        .into_iter()
        .find(|c| c.name == "keel-gateway")
        .unwrap();
    for banned in ["keel-identity", "keel-config"] {
        assert!(
            !gateway.deps.iter().any(|d| d == banned),
            "keel-gateway depends on {banned}"
        );
    }
}

/// Command-line parsing is the binary's.
#[test]
fn only_the_binary_and_dev_tools_parse_command_lines() {
    let wrong = offenders(&["core", "app", "adapters", "edges"], &["clap"]);
    assert!(wrong.is_empty(), "clap outside the binary: {wrong:#?}");
}

/// One integration-test binary per crate: each is linked separately, and on two cores linking
/// dominates the gate.
#[test]
fn every_crate_has_at_most_one_integration_test_binary() {
    let wrong: Vec<_> = workspace_crates()
        .iter()
        .filter(|c| c.test_files.len() > 1)
        .map(|c| format!("{}: {:?}", c.name, c.test_files))
        .collect();
    assert!(
        wrong.is_empty(),
        "crates with several test binaries: {wrong:#?}"
    );
}
