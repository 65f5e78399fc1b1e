//! Source hygiene, in the manner of rust-analyzer's tidy: every Rust file opens with a
//! `//!` doc comment; no ignored tests, no should-panic tests, no todo macros; no trailing
//! whitespace; every fixture `.conc-ir` (and 7ad10db's `.head.conc-ir`) sits next to its
//! `.conc` source.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                walk(&path, out);
            }
        } else {
            out.push(path);
        }
    }
}

pub(crate) fn check(root: &Path) -> Result<()> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests", "examples"] {
        walk(&root.join(dir), &mut files);
    }
    let mut problems = Vec::new();
    let ignore_attr = ["#[", "ignore]"].concat();
    let should_panic = ["#[", "should_panic"].concat();
    let todo = ["todo", "!("].concat();
    for file in &files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "rs" {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            if !text.trim_start().starts_with("//!") {
                problems.push(format!("{rel}: does not start with a `//!` module doc"));
            }
            for (idx, line) in text.lines().enumerate() {
                if line.ends_with(' ') || line.ends_with('\t') {
                    problems.push(format!("{rel}:{}: trailing whitespace", idx + 1));
                }
                if line.contains(&ignore_attr)
                    || line.contains(&should_panic)
                    || line.contains(&todo)
                {
                    problems.push(format!(
                        "{rel}:{}: ignored test, should_panic or todo",
                        idx + 1
                    ));
                }
            }
        }
        if file.to_string_lossy().ends_with(".conc-ir") {
            // `NAME.conc-ir` (1a8ede9) and `NAME.head.conc-ir` (7ad10db) both come from
            // `NAME.conc`.
            let name = file.to_string_lossy();
            let stem = name.trim_end_matches(".conc-ir").trim_end_matches(".head");
            let source = PathBuf::from(format!("{stem}.conc"));
            if !source.exists() {
                problems.push(format!("{rel}: has no `.conc` source next to it"));
            }
        }
    }
    if problems.is_empty() {
        println!("tidy: ok ({} files)", files.len());
        Ok(())
    } else {
        for p in &problems {
            eprintln!("  {p}");
        }
        bail!("tidy found {} problems", problems.len())
    }
}
