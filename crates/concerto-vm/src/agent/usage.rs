//! Usage accounting: [`LlmCounters`] per agent and per connection, gathered in an
//! execution's [`LlmStats`].

use std::collections::BTreeMap;

use crate::host::ChatResponse;

/// LLM usage counters of one agent or one connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmCounters {
    /// Model replies received.
    pub requests: u64,
    /// Calls that failed (after the connection layer's retries).
    pub failures: u64,
    /// Extra HTTP attempts the connection layer made (retries).
    pub retries: u64,
    /// Re-asks after a reply that did not match the schema.
    pub schema_retries: u64,
    /// Tool calls the model asked for and the runtime ran.
    pub tool_calls: u64,
    /// Replies served from an agent's `@cache`.
    pub cache_hits: u64,
    /// Input tokens (cached ones included).
    pub input_tokens: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cached_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Replies whose token counts are estimates.
    pub estimated_usage: u64,
    /// Cost in US dollars of the replies whose model has a known price.
    pub cost_usd: f64,
    /// Replies whose cost is unknown (model not in the price table).
    pub unpriced: u64,
    /// Where the time of the replies the connection layer timed went, summed (see
    /// [`crate::host::CallTiming`]).
    pub time: TimeTotals,
}

/// Timings summed over replies, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimeTotals {
    /// Replies with a timing.
    pub timed: u64,
    /// Their `total_us`.
    pub total_us: u64,
    /// Their `queue_us`.
    pub queue_us: u64,
    /// Their `connect_us` (over the replies that made a connection).
    pub connect_us: u64,
    /// Their `ttfb_us`.
    pub ttfb_us: u64,
    /// Their `overhead_us`.
    pub overhead_us: u64,
}

impl TimeTotals {
    /// Adds `other`'s sums to these.
    pub fn merge(&mut self, other: &TimeTotals) {
        self.timed += other.timed;
        self.total_us += other.total_us;
        self.queue_us += other.queue_us;
        self.connect_us += other.connect_us;
        self.ttfb_us += other.ttfb_us;
        self.overhead_us += other.overhead_us;
    }

    fn add(&mut self, t: &crate::host::CallTiming) {
        self.timed += 1;
        self.total_us += t.total_us;
        self.queue_us += t.queue_us;
        self.connect_us += t.connect_us.unwrap_or(0);
        self.ttfb_us += t.ttfb_us.unwrap_or(0);
        self.overhead_us += t.overhead_us;
    }
}

impl LlmCounters {
    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &LlmCounters) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.retries += other.retries;
        self.schema_retries += other.schema_retries;
        self.tool_calls += other.tool_calls;
        self.cache_hits += other.cache_hits;
        self.input_tokens += other.input_tokens;
        self.cached_tokens += other.cached_tokens;
        self.output_tokens += other.output_tokens;
        self.estimated_usage += other.estimated_usage;
        self.cost_usd += other.cost_usd;
        self.unpriced += other.unpriced;
        self.time.merge(&other.time);
    }

    pub(super) fn add_response(&mut self, response: &ChatResponse) {
        self.requests += 1;
        self.retries += u64::from(response.attempts.saturating_sub(1));
        self.input_tokens += response.usage.input_tokens;
        self.cached_tokens += response.usage.cached_tokens;
        self.output_tokens += response.usage.output_tokens;
        if response.usage.estimated {
            self.estimated_usage += 1;
        }
        match response.cost_usd {
            Some(cost) => self.cost_usd += cost,
            None => self.unpriced += 1,
        }
        if let Some(timing) = &response.timing {
            self.time.add(timing);
        }
    }
}

/// LLM usage of one execution, by agent and by connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmStats {
    /// By agent name.
    pub by_agent: BTreeMap<String, LlmCounters>,
    /// By connection name.
    pub by_connection: BTreeMap<String, LlmCounters>,
}

impl LlmStats {
    /// Adds `other`'s counters to these, agent by agent and connection by connection.
    pub fn merge(&mut self, other: &LlmStats) {
        for (name, c) in &other.by_agent {
            self.by_agent.entry(name.clone()).or_default().merge(c);
        }
        for (name, c) in &other.by_connection {
            self.by_connection.entry(name.clone()).or_default().merge(c);
        }
    }

    pub(super) fn both(&mut self, agent: &str, connection: &str, f: impl Fn(&mut LlmCounters)) {
        f(self.by_agent.entry(agent.to_string()).or_default());
        f(self
            .by_connection
            .entry(connection.to_string())
            .or_default());
    }
}
