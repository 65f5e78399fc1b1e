//! Source hygiene, in the manner of rust-analyzer's tidy: every Rust file opens with a
//! `//!` doc comment; no ignored tests, no should-panic tests, no todo macros; no trailing
//! whitespace; every fixture `.conc-ir` (and 7ad10db's `.head.conc-ir`) sits next to its
//! `.conc` source; every Rust file in a test folder is compiled by some test binary (crates
//! that list their test binaries would otherwise skip a new file without a word).

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
    // Only the `concerto` binary chooses an allocator; the library crates leave it to the
    // program that embeds them.
    let global_allocator = ["#[", "global_allocator]"].concat();
    let allocator_home = Path::new("crates/concerto-cli/src/main.rs");
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
                if line.contains(&global_allocator)
                    && file.strip_prefix(root).ok() != Some(allocator_home)
                {
                    problems.push(format!(
                        "{rel}:{}: a global allocator outside the `concerto` binary",
                        idx + 1
                    ));
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
    problems.extend(unreachable_test_files(root));
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

/// Test files no test binary compiles. A package that lists its test binaries
/// (`autotests = false`, or the workspace's `tests` package, whose folder is its root) builds
/// only those `[[test]]` paths and the modules they declare; a file in the test folder that
/// is neither a binary, the library root, nor declared as a module (`mod name;` or
/// `#[path = "name.rs"]`) anywhere in that folder is reported.
fn unreachable_test_files(root: &Path) -> Vec<String> {
    let mut packages: Vec<(PathBuf, PathBuf)> = vec![(root.join("tests"), root.join("tests"))];
    if let Ok(entries) = std::fs::read_dir(root.join("crates")) {
        for entry in entries.flatten() {
            let dir = entry.path();
            packages.push((dir.clone(), dir.join("tests")));
        }
    }
    let mut problems = Vec::new();
    for (package, tests) in packages {
        let Ok(manifest) = std::fs::read_to_string(package.join("Cargo.toml")) else {
            continue;
        };
        let lists_its_tests = package == tests || manifest.contains("autotests = false");
        if !lists_its_tests {
            continue;
        }
        // The `path = "…"` of every [[test]] and [lib] target, relative to the package.
        let mut roots: Vec<PathBuf> = Vec::new();
        let mut in_target = false;
        for line in manifest.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_target = line == "[[test]]" || line == "[lib]";
            } else if in_target
                && let Some(value) = line.strip_prefix("path")
                && let Some(path) = value.trim_start().strip_prefix('=')
            {
                roots.push(package.join(path.trim().trim_matches('"')));
            }
        }
        let Ok(entries) = std::fs::read_dir(&tests) else {
            continue;
        };
        let files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        let mut declared: Vec<String> = Vec::new();
        for file in &files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            for line in text.lines() {
                let line = line.trim();
                let line = line.strip_prefix("pub ").unwrap_or(line);
                if let Some(name) = line.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) {
                    declared.push(format!("{}.rs", name.trim()));
                }
                if let Some(rest) = line.strip_prefix("#[path = \"")
                    && let Some(name) = rest.split('"').next()
                {
                    declared.push(name.to_string());
                }
            }
        }
        for file in files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let is_root = roots.contains(&file);
            if !is_root && !declared.contains(&name) {
                let rel = file
                    .strip_prefix(root)
                    .unwrap_or(&file)
                    .display()
                    .to_string();
                problems.push(format!(
                    "{rel}: no test binary compiles it (add it as a `mod` of one, or a [[test]])"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::{check, unreachable_test_files};

    #[test]
    fn a_global_allocator_outside_the_binary_is_refused() {
        let root = std::env::temp_dir().join(format!("xtask-tidy-alloc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let attr = ["#[", "global_allocator]"].concat();
        let binary = root.join("crates/concerto-cli/src");
        let library = root.join("crates/demo/src");
        std::fs::create_dir_all(&binary).unwrap();
        std::fs::create_dir_all(&library).unwrap();
        std::fs::write(
            binary.join("main.rs"),
            format!("//! b\n{attr}\nstatic A: X = X;\n"),
        )
        .unwrap();
        std::fs::write(library.join("lib.rs"), "//! l\n").unwrap();
        let in_binary = check(&root);
        std::fs::write(
            library.join("lib.rs"),
            format!("//! l\n{attr}\nstatic A: X = X;\n"),
        )
        .unwrap();
        let in_library = check(&root);
        let _ = std::fs::remove_dir_all(&root);
        assert!(in_binary.is_ok(), "{in_binary:?}");
        assert!(in_library.is_err(), "a library's allocator passed");
    }

    #[test]
    fn a_test_file_no_binary_compiles_is_reported() {
        let root = std::env::temp_dir().join(format!("xtask-tidy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let krate = root.join("crates/demo");
        std::fs::create_dir_all(krate.join("tests")).unwrap();
        std::fs::create_dir_all(root.join("tests")).unwrap();
        std::fs::write(
            krate.join("Cargo.toml"),
            "[package]\nname = \"demo\"\nautotests = false\n\n[[test]]\nname = \"integration\"\npath = \"tests/integration.rs\"\n",
        )
        .unwrap();
        std::fs::write(
            krate.join("tests/integration.rs"),
            "//! t\nmod used;\n#[path = \"other_name.rs\"]\nmod renamed;\n",
        )
        .unwrap();
        for file in ["used.rs", "other_name.rs", "forgotten.rs"] {
            std::fs::write(krate.join("tests").join(file), "//! m\n").unwrap();
        }
        std::fs::write(root.join("tests/Cargo.toml"), "[lib]\npath = \"lib.rs\"\n").unwrap();
        std::fs::write(root.join("tests/lib.rs"), "//! l\n").unwrap();
        let problems = unreachable_test_files(&root);
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("crates/demo/tests/forgotten.rs"),
            "{problems:?}"
        );
    }
}
