//! The dependency-direction check: ir ← vm ← {conn, memory, schema, emit, tools} ← runtime ← cli
//! (the SQLite store sits on vm and memory, below runtime),
//! and the interpreter core names no I/O library, even transitively.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Workspace crates each crate may depend on (normal dependencies only).
const ALLOWED: &[(&str, &[&str])] = &[
    ("concerto-ir", &[]),
    ("concerto-vm", &["concerto-ir"]),
    ("concerto-conn", &["concerto-vm"]),
    ("concerto-memory", &["concerto-vm"]),
    ("concerto-schema", &["concerto-vm"]),
    ("concerto-emit", &["concerto-vm"]),
    ("concerto-tools", &["concerto-vm"]),
    ("concerto-store-sqlite", &["concerto-vm", "concerto-memory"]),
    ("concerto-store-redis", &["concerto-vm", "concerto-memory"]),
    (
        "concerto-runtime",
        &[
            "concerto-ir",
            "concerto-vm",
            "concerto-conn",
            "concerto-memory",
            "concerto-schema",
            "concerto-emit",
            "concerto-tools",
            "concerto-store-redis",
            "concerto-store-sqlite",
        ],
    ),
    ("concerto-cli", &["concerto-runtime"]),
];

/// Libraries that do I/O; the core crates must not reach them.
const IO_CRATES: &[&str] = &[
    "tokio",
    "hyper",
    "hyper-util",
    "rustls",
    "reqwest",
    "jsonschema",
    "governor",
    "mio",
    "socket2",
    "async-std",
    "rmcp",
    "rusqlite",
    "redis",
];

/// Crates that must stay free of I/O libraries.
const CORE: &[&str] = &["concerto-ir", "concerto-vm"];

pub(crate) fn check(root: &Path) -> Result<()> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .or_else(|_| {
            Command::new("cargo")
                .current_dir(root)
                .args(["metadata", "--format-version", "1"])
                .output()
        })
        .context("cannot run cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let meta: Value = serde_json::from_slice(&output.stdout).context("cargo metadata output")?;
    let mut problems = Vec::new();

    // Package id → name, and direct normal dependencies from the resolve graph.
    let names: BTreeMap<String, String> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_str()?.to_string(),
                p["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    let mut graph: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().into_iter().flatten() {
        let Some(id) = node["id"].as_str() else {
            continue;
        };
        let deps = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null()))
            })
            .filter_map(|d| d["pkg"].as_str().map(String::from))
            .collect();
        graph.insert(id.to_string(), deps);
    }
    let id_of = |name: &str| {
        names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(id, _)| id.clone())
    };

    let workspace: BTreeSet<&str> = ALLOWED.iter().map(|(n, _)| *n).collect();
    for (krate, allowed) in ALLOWED {
        let Some(id) = id_of(krate) else {
            problems.push(format!("workspace crate `{krate}` is missing"));
            continue;
        };
        for dep in graph.get(&id).into_iter().flatten() {
            let dep_name = names.get(dep).map(String::as_str).unwrap_or("?");
            if workspace.contains(dep_name) && !allowed.contains(&dep_name) {
                problems.push(format!("`{krate}` must not depend on `{dep_name}`"));
            }
        }
    }
    for krate in CORE {
        let Some(id) = id_of(krate) else { continue };
        let mut seen = BTreeSet::new();
        let mut stack = vec![(id, vec![krate.to_string()])];
        while let Some((node, path)) = stack.pop() {
            for dep in graph.get(&node).into_iter().flatten() {
                if !seen.insert(dep.clone()) {
                    continue;
                }
                let dep_name = names.get(dep).cloned().unwrap_or_default();
                let mut next = path.clone();
                next.push(dep_name.clone());
                if IO_CRATES.contains(&dep_name.as_str()) {
                    problems.push(format!(
                        "`{krate}` reaches the I/O crate `{dep_name}` via {}",
                        next.join(" → ")
                    ));
                }
                stack.push((dep.clone(), next));
            }
        }
    }
    if problems.is_empty() {
        println!(
            "dependency direction: ok ({} crates checked)",
            ALLOWED.len()
        );
        Ok(())
    } else {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!(
            "dependency direction is broken ({} problems)",
            problems.len()
        )
    }
}

/// Crates an embedder who builds `concerto-runtime` without its default features (the VM
/// and a connection layer of their own) must not get: HTTP and TLS, MCP, SQLite, Redis,
/// the OpenTelemetry exporter.
const OPTIONAL_CRATES: &[&str] = &[
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry-otlp",
    "tracing-opentelemetry",
    "hyper",
    "hyper-util",
    "hyper-rustls",
    "rustls",
    "reqwest",
    "rmcp",
    "rusqlite",
    "libsqlite3-sys",
    "redis",
];

/// `concerto-runtime --no-default-features` reaches none of [`OPTIONAL_CRATES`] (its normal
/// dependency tree, as cargo resolves it for that package alone).
pub(crate) fn check_minimal(root: &Path) -> Result<()> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root)
        .args([
            "tree",
            "-p",
            "concerto-runtime",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .output()
        .context("cannot run cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo tree failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let names: BTreeSet<&str> = text
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    if !names.contains("concerto-vm") {
        bail!("cargo tree printed no dependency tree for concerto-runtime:\n{text}");
    }
    let found: Vec<&str> = OPTIONAL_CRATES
        .iter()
        .copied()
        .filter(|c| names.contains(c))
        .collect();
    if found.is_empty() {
        println!(
            "minimal build: ok (concerto-runtime without default features: {} crates, none of {})",
            names.len(),
            OPTIONAL_CRATES.join(", ")
        );
        Ok(())
    } else {
        bail!(
            "concerto-runtime without default features still depends on {}",
            found.join(", ")
        )
    }
}
