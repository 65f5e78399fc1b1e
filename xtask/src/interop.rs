//! `cargo xtask interop-setup`: the official MCP servers the interop suite
//! (`crates/concerto-tools/tests/interop.rs`, `crates/concerto-cli/tests/interop/`) starts,
//! installed from their package registries into `<target>/interop/` at the versions they were
//! tested with: the servers below, and every package they depend on as
//! `xtask/interop/package-lock.json` and `xtask/interop/constraints.txt` record. Idempotent:
//! a folder that already holds these versions is left alone.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// npm `@modelcontextprotocol/server-everything`, the reference server (stdio and
/// streamable HTTP).
pub(crate) const EVERYTHING: (&str, &str) =
    ("@modelcontextprotocol/server-everything", "2026.8.31");
/// PyPI `mcp-server-time` (stdio).
pub(crate) const TIME: (&str, &str) = ("mcp-server-time", "2026.10.19");

/// The folder the servers go to: `$CONCERTO_INTEROP_DIR`, else `interop/` in the target
/// directory (`$CARGO_TARGET_DIR` or `target/`), which is where the tests look.
pub(crate) fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONCERTO_INTEROP_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| crate::root().join("target"), PathBuf::from);
    target.join("interop")
}

/// Installs both servers into [`dir`]; each failure names what is missing.
pub(crate) fn setup() -> Result<()> {
    let dir = dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let npm = install_npm(&dir);
    let pip = install_pip(&dir);
    match (npm, pip) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => bail!("{a:#}; {b:#}"),
    }
}

/// npm: `xtask/interop/package.json` and its lock (every package at the version tested)
/// copied into `<dir>/npm`, then `npm ci` there.
fn install_npm(dir: &Path) -> Result<()> {
    let (name, version) = EVERYTHING;
    let prefix = dir.join("npm");
    let manifest = prefix.join("node_modules").join(name).join("package.json");
    let pinned = crate::root().join("xtask/interop");
    let lock = std::fs::read(pinned.join("package-lock.json"))
        .with_context(|| format!("cannot read {}", pinned.display()))?;
    let installed_lock = std::fs::read(prefix.join("package-lock.json")).unwrap_or_default();
    if installed_npm_version(&manifest).as_deref() == Some(version) && installed_lock == lock {
        println!("{name}@{version}: already in {}", prefix.display());
        return Ok(());
    }
    std::fs::create_dir_all(&prefix)
        .with_context(|| format!("cannot create {}", prefix.display()))?;
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(pinned.join(file), prefix.join(file))
            .with_context(|| format!("cannot copy {file} to {}", prefix.display()))?;
    }
    crate::run(
        &format!("npm ci ({name}@{version}; needs Node.js and npm)"),
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix"])
            .arg(&prefix),
    )?;
    if installed_npm_version(&manifest).as_deref() != Some(version) {
        bail!(
            "npm ci did not leave {name}@{version} in {}",
            prefix.display()
        );
    }
    Ok(())
}

fn installed_npm_version(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json.get("version")?.as_str().map(str::to_string)
}

/// PyPI: a virtualenv in `<dir>/venv`, and `pip install` of the server with every
/// dependency held to the version tested (`xtask/interop/constraints.txt`).
fn install_pip(dir: &Path) -> Result<()> {
    let (name, version) = TIME;
    let venv = dir.join("venv");
    let constraints = crate::root().join("xtask/interop/constraints.txt");
    let pinned = std::fs::read(&constraints)
        .with_context(|| format!("cannot read {}", constraints.display()))?;
    let stamp = venv.join("installed-constraints.txt");
    let installed = std::fs::read(&stamp).unwrap_or_default();
    if installed == pinned && venv.join("bin").join(name).is_file() {
        println!("{name}=={version}: already in {}", venv.display());
        return Ok(());
    }
    if !venv.join("bin/python").is_file() {
        crate::run(
            "python3 -m venv (needs Python 3 with the venv module)",
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        )?;
    }
    crate::run(
        &format!("pip install {name}=={version}"),
        Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-c",
            ])
            .arg(&constraints)
            .arg(format!("{name}=={version}")),
    )?;
    std::fs::write(&stamp, pinned).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(())
}
