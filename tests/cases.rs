//! Data-driven end-to-end tests: every `tests/cases/<feature>/<name>.conc-ir` runs through
//! the facade and its emits are compared with `<name>.expected.jsonl` (plus
//! `<name>.meta.json` for expected errors). Each file is its own test.
//!
//! Programs compiled by both supported compilers (`NAME.conc-ir` by 1a8ede9,
//! `NAME.head.conc-ir` by 7ad10db) are also run against each other: both builds must give the
//! same emits, wherever the dialects mean the same (see `cases/README.md`).
//!
//! The same runner also covers the shared VM conformance corpora of both compilers in
//! `../shared` when it exists (so a plain `cargo test` notices regressions there too).

use concerto_tests::{cases_dir, check_case, compare_emits, ir_files, run_ir_bytes, seed_twin};
use libtest_mimic::{Arguments, Failed, Trial};

fn main() {
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    let root = cases_dir();
    for ir in ir_files(&root) {
        let name = ir
            .strip_prefix(&root)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| ir.display().to_string());
        trials.push(Trial::test(name, move || {
            check_case(&ir).map_err(Failed::from)
        }));
    }
    // The two front ends through one VM: a program compiled by concertoc 1a8ede9
    // (`NAME.conc-ir`) and by 7ad10db (`NAME.head.conc-ir`) gives the same emits and outcome,
    // wherever the dialects mean the same (no `NAME.head.expected.jsonl`).
    for head in ir_files(&root) {
        let Some(seed) = seed_twin(&head) else {
            continue;
        };
        let name = head
            .strip_prefix(&root)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| head.display().to_string());
        trials.push(Trial::test(
            format!("same-in-both-dialects/{name}"),
            move || same_in_both(&seed, &head).map_err(Failed::from),
        ));
    }
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    for (folder, label) in [("vm/cases", "shared"), ("head/vm", "shared-head")] {
        for ir in ir_files(&shared.join(folder)) {
            let name = format!(
                "{label}/{}",
                ir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
            );
            trials.push(Trial::test(name, move || {
                check_case(&ir).map_err(Failed::from)
            }));
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// Runs both builds of one program and compares their emits with each other.
fn same_in_both(seed: &std::path::Path, head: &std::path::Path) -> Result<(), String> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let a = run_ir_bytes(&read(seed)?);
    let b = run_ir_bytes(&read(head)?);
    let timings = ["duration_ms".to_string()];
    compare_emits(&b.emits, &a.emits, &timings)
        .map_err(|e| format!("7ad10db build vs 1a8ede9 build: {e}"))?;
    match (&a.error, &b.error) {
        (None, None) | (Some(_), Some(_)) => Ok(()),
        (x, y) => Err(format!(
            "1a8ede9 build error: {:?}; 7ad10db build error: {:?}",
            x.as_ref().map(ToString::to_string),
            y.as_ref().map(ToString::to_string)
        )),
    }
}
