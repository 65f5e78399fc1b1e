//! `cargo xtask interop-setup`: the official MCP servers the interop suite
//! (`crates/concerto-tools/tests/interop.rs`) starts, installed from their package registries
//! into `<target>/interop/` at the versions the suite was tested with. Idempotent: a folder
//! that already holds these versions is left alone.

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

fn install_npm(dir: &Path) -> Result<()> {
    let (name, version) = EVERYTHING;
    let prefix = dir.join("npm");
    let manifest = prefix.join("node_modules").join(name).join("package.json");
    if installed_npm_version(&manifest).as_deref() == Some(version) {
        println!("{name}@{version}: already in {}", prefix.display());
        return Ok(());
    }
    crate::run(
        &format!("npm install {name}@{version} (needs Node.js and npm)"),
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--save-exact",
                "--prefix",
            ])
            .arg(&prefix)
            .arg(format!("{name}@{version}")),
    )?;
    if installed_npm_version(&manifest).as_deref() != Some(version) {
        bail!(
            "npm install did not leave {name}@{version} in {}",
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

fn install_pip(dir: &Path) -> Result<()> {
    let (name, version) = TIME;
    let venv = dir.join("venv");
    let stamp = venv.join(format!("{name}=={version}"));
    if stamp.is_file() && venv.join("bin").join(name).is_file() {
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
            ])
            .arg(format!("{name}=={version}")),
    )?;
    std::fs::write(&stamp, "").with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(())
}
