//! [`ExecStats`]: the counters an execution keeps.

/// Counters an execution keeps.
#[derive(Debug, Clone, Default)]
pub struct ExecStats {
    /// LLM usage by agent and connection.
    pub llm: crate::agent::LlmStats,
    /// Emits delivered.
    pub emits: u64,
    /// Errors caught by `try`/`catch` (or by a pipeline stage).
    pub errors_caught: u64,
    /// Tool calls made directly from code: methods of the program's own tools and of MCP
    /// servers (those a model asks for are counted in `llm`).
    pub tool_calls: u64,
    /// Steps taken: backward jumps and calls executed (the fuel counter), counted each time
    /// a grant of fuel is used up.
    pub ticks: u64,
}

impl ExecStats {
    /// Adds `other`'s counters to these (a finished child execution's, a task's).
    pub fn merge(&mut self, other: &ExecStats) {
        self.llm.merge(&other.llm);
        self.emits += other.emits;
        self.errors_caught += other.errors_caught;
        self.tool_calls += other.tool_calls;
        self.ticks += other.ticks;
    }
}
