//! [`ExecConfig`]: the limits and switches of one execution.

use std::time::Duration;

/// Limits and switches of one execution.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    /// Maximum number of nested calls.
    pub max_call_depth: usize,
    /// When set, the execution stops with
    /// [`ErrorKind::ExecutionTimeout`](crate::ErrorKind::ExecutionTimeout) this long after
    /// it was created.
    pub timeout: Option<Duration>,
    /// Maximum length of a string or array the program may build (elements/bytes).
    pub max_collection_len: usize,
    /// When set, the execution stops with [`ErrorKind::StepLimit`](crate::ErrorKind::StepLimit)
    /// once it has taken this many steps. A step is a loop iteration or a call (every
    /// backward jump and every call: the yield counter's unit), so the budget is
    /// deterministic — the same program and input stop at the same point — and bounds any
    /// program, since code without loops or calls ends by itself. Each spawned task has a
    /// budget of its own.
    pub max_steps: Option<u64>,
    /// Record the text of prompts and replies on the spans of model requests
    /// (`gen_ai.input.messages`, `gen_ai.output.messages`). Off by default: the spans
    /// carry no prompt or completion text unless the host opts in. Spawned tasks inherit it.
    pub trace_content: bool,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            max_call_depth: 1000,
            timeout: None,
            max_collection_len: 1 << 30,
            max_steps: None,
            trace_content: false,
        }
    }
}
