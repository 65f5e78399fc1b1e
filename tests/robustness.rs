//! Robustness: truncated and byte-flipped versions of every fixture must give a typed load
//! error or run to a result or a typed runtime error; nothing may panic or hang.
#![allow(
    clippy::print_stderr,
    reason = "the test reports how many variants it tried"
)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::time::Duration;

fn fixtures() -> Vec<PathBuf> {
    let mut files = concerto_tests::ir_files(&concerto_tests::cases_dir());
    let shared = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    for folder in [
        "vm/cases",
        "head/vm",
        "head/llm",
        "head/agents",
        "head/test",
    ] {
        files.extend(concerto_tests::ir_files(&shared.join(folder)));
    }
    // 7ad10db programs with listen blocks, agent params and tests.
    for folder in ["stream", "agents/head"] {
        files.extend(concerto_tests::ir_files(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(folder),
        ));
    }
    files
}

/// Loads and (when it loads) runs the bytes with a short timeout and a step budget (which
/// ends any loop deterministically); returns whether it loaded.
fn exercise(bytes: &[u8], rt: &tokio::runtime::Runtime) -> bool {
    concerto_tests::exercise(
        bytes,
        rt,
        Duration::from_millis(300),
        concerto_runtime::Limits::default().with_max_steps(Some(200_000)),
    )
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn truncated_and_flipped_fixtures_never_panic() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let files = fixtures();
    assert!(!files.is_empty(), "no fixtures found");
    let mut attempts = 0usize;
    let mut loaded = 0usize;
    let mut rng = Lcg(0x5eed);
    const REPLACEMENTS: &[u8] = b"0123456789\"{}[],:-.aZ \\\x00\xff";
    for path in &files {
        let original = std::fs::read(path).unwrap();
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for step in 1..=12 {
            variants.push(original[..original.len() * step / 13].to_vec());
        }
        for _ in 0..24 {
            let mut bytes = original.clone();
            let pos = rng.next() as usize % bytes.len();
            bytes[pos] = REPLACEMENTS[rng.next() as usize % REPLACEMENTS.len()];
            variants.push(bytes);
        }
        for bytes in variants {
            attempts += 1;
            let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&bytes, &rt)));
            match outcome {
                Ok(true) => loaded += 1,
                Ok(false) => {}
                Err(_) => panic!(
                    "panic on a variant of {} ({} bytes)",
                    path.display(),
                    bytes.len()
                ),
            }
        }
    }
    eprintln!(
        "robustness: {attempts} variants of {} fixtures, {loaded} loaded and ran",
        files.len()
    );
}
