//! Data-driven end-to-end tests: every `tests/cases/<feature>/<name>.conc-ir` runs through
//! the facade and its emits are compared with `<name>.expected.jsonl` (plus
//! `<name>.meta.json` for expected errors). Each file is its own test.
//!
//! The same runner also covers the shared conformance corpus in `../shared` when it exists
//! (so a plain `cargo test` notices regressions there too).

use concerto_tests::{cases_dir, check_case, ir_files};
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
    let shared =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/vm/cases");
    for ir in ir_files(&shared) {
        let name = format!(
            "shared/{}",
            ir.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
        trials.push(Trial::test(name, move || {
            check_case(&ir).map_err(Failed::from)
        }));
    }
    libtest_mimic::run(&args, trials).exit();
}
