//! `concerto test`: the program's `@test` functions (7ad10db's `tests` section), each run in
//! an execution of its own.

use std::sync::Arc;

use concerto_vm::Execution;
use concerto_vm::host::MemoryStore;

use crate::{Runtime, RuntimeError, StateStore};

/// What one test did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// The test's description (its function name unless `@test("…")` gave one).
    pub description: String,
    /// Whether it passed (for an `@expect_fail` test: whether it failed as expected).
    pub passed: bool,
    /// Whether the test is marked `@expect_fail`.
    pub expect_fail: bool,
    /// Why it failed, or the error an `@expect_fail` test failed with.
    pub message: Option<String>,
}

/// The outcomes of a test run, in the order of the program's `tests` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestReport {
    /// One entry per test that matched the filter.
    pub outcomes: Vec<TestOutcome>,
    /// Tests left out by the filter.
    pub filtered_out: usize,
}

impl TestReport {
    /// Tests that passed.
    pub fn passed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.passed).count()
    }

    /// Tests that failed.
    pub fn failed(&self) -> usize {
        self.outcomes.len() - self.passed()
    }
}

impl Runtime {
    /// Runs the loaded program's tests whose description contains `filter` (all of them
    /// without one), never `main`. Each test runs in a fresh execution — globals as at start,
    /// no emits captured yet, no mocks — with a fresh in-memory store, under the runtime's
    /// configuration (permissions, connections, limits; the execution timeout applies to
    /// each test). A test passes when its body finishes without an error; an `@expect_fail`
    /// test passes only when it fails (with `expect_fail_message`: with an error whose text
    /// contains it).
    ///
    /// # Errors
    /// [`RuntimeError::NoProgram`] before `load_ir`; [`RuntimeError::Setup`] when a durable or
    /// shared state store is configured (tests never touch one) or a component cannot be set
    /// up.
    ///
    /// ```
    /// use concerto_runtime::{Runtime, RuntimeConfig};
    /// // One test, `assert_eq(2, 2)`, and no `main` (as concertoc 7ad10db writes a file of
    /// // tests only).
    /// let ir = r#"{"version":"0.1.0","module":"m","source_file":"m.conc",
    ///   "constants":[{"index":0,"type":"int","value":2},{"index":1,"type":"nil","value":null}],
    ///   "tests":[{"description":"two is two","instructions":[
    ///     {"op":"LOAD_CONST","arg":0},{"op":"LOAD_CONST","arg":0},
    ///     {"op":"LOAD_LOCAL","name":"assert_eq"},{"op":"CALL","argc":2},{"op":"POP"},
    ///     {"op":"LOAD_CONST","arg":1},{"op":"RETURN"}]}],
    ///   "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
    ///     "debug_info":true,"entry_point":"main"}}"#;
    /// let mut runtime = Runtime::new(RuntimeConfig::default());
    /// runtime.load_ir_bytes(ir.as_bytes())?;
    /// let report = tokio::runtime::Builder::new_current_thread()
    ///     .enable_all()
    ///     .build()?
    ///     .block_on(runtime.run_tests(None))?;
    /// assert_eq!((report.passed(), report.failed()), (1, 0));
    /// assert_eq!(report.outcomes[0].description, "two is two");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn run_tests(&mut self, filter: Option<&str>) -> Result<TestReport, RuntimeError> {
        if self.state != StateStore::Memory {
            return Err(crate::SetupError::TestsNeedMemoryStore.into());
        }
        let (vm, host, config, timeout) = self.prepare()?;
        let program = vm.program().clone();
        let names: Vec<String> = program.hashmaps.iter().map(|h| h.name.clone()).collect();
        let mut report = TestReport::default();
        for (idx, test) in program.tests.iter().enumerate() {
            if let Some(filter) = filter
                && !test.description.contains(filter)
            {
                report.filtered_out += 1;
                continue;
            }
            let mut host = host.clone();
            let store: Arc<dyn MemoryStore> =
                Arc::new(concerto_memory::InMemoryStore::with_names(names.clone()));
            host.memory = store;
            let mut exec = Execution::new(vm.clone(), host, config.clone());
            let outcome = tokio::time::timeout(timeout, exec.run_test(idx)).await;
            let error = match outcome {
                Ok(Ok(_)) => None,
                Ok(Err(err)) => Some(err.message().to_string()),
                Err(_) => Some(format!(
                    "the test timed out after {:.3} s",
                    timeout.as_secs_f64()
                )),
            };
            let (passed, message) = match (test.expect_fail, error) {
                (false, None) => (true, None),
                (false, Some(err)) => (false, Some(err)),
                (true, None) => (false, Some("expected failure but test passed".into())),
                (true, Some(err)) => match &test.expect_fail_message {
                    Some(wanted) if !err.contains(wanted.as_str()) => (
                        false,
                        Some(format!(
                            "expected a failure containing {wanted:?}, got: {err}"
                        )),
                    ),
                    _ => (true, Some(err)),
                },
            };
            report.outcomes.push(TestOutcome {
                description: test.description.to_string(),
                passed,
                expect_fail: test.expect_fail,
                message,
            });
        }
        self.hub.flush()?;
        Ok(report)
    }
}
