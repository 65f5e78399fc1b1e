//! [`Metrics`] of an execution and the [`Cost`] estimate.

use concerto_vm::{LlmCounters, LlmStats};
use serde_json::{Map, Value as Json, json};

/// Counters of an execution, as the runtime specification lists them: `total_tokens()`,
/// `tokens_by_agent(name)`, `tokens_by_connection(name)`, `estimated_cost()`,
/// `execution_time_ms`, `agent_calls`, `tool_calls`, `emit_count`, `errors`, plus the
/// per-agent and per-connection breakdown in [`Metrics::llm`].
///
/// Metrics of several executions (concurrent ones, or a series) add up with
/// [`Metrics::merge`]; [`Metrics::to_json`] gives the machine-readable form.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// Wall time of the last `execute`, in milliseconds.
    pub execution_time_ms: u64,
    /// Emits produced.
    pub emit_count: u64,
    /// Errors caught by the program (`try`/`catch`, pipeline stages).
    pub errors: u64,
    /// LLM replies received.
    pub agent_calls: u64,
    /// Tool calls: those the models asked for (also counted per agent and connection in
    /// [`Metrics::llm`]) and those made directly from code (methods of the program's own
    /// tools and of MCP servers).
    pub tool_calls: u64,
    /// LLM usage by agent and by connection: requests, retries, schema re-asks, tool calls,
    /// input / cached / output tokens, cost.
    pub llm: LlmStats,
}

impl Metrics {
    /// Tokens used, input plus output.
    pub fn total_tokens(&self) -> u64 {
        self.llm.by_agent.values().map(tokens).sum()
    }

    /// Tokens (input plus output) used by agent `name`; 0 for an agent that made no call.
    pub fn tokens_by_agent(&self, name: &str) -> u64 {
        self.llm.by_agent.get(name).map_or(0, tokens)
    }

    /// Tokens (input plus output) that went through connection `name`; 0 for a connection
    /// that carried no call.
    pub fn tokens_by_connection(&self, name: &str) -> u64 {
        self.llm.by_connection.get(name).map_or(0, tokens)
    }

    /// Estimated cost of the calls made. Calls to models without a known price make the
    /// cost (partly) unknown; it is never reported as zero for them.
    pub fn estimated_cost(&self) -> Cost {
        self.llm
            .by_agent
            .values()
            .fold(Cost::default(), |sum, c| sum.plus(cost_of(c)))
    }

    /// The metrics as one JSON object:
    ///
    /// ```json
    /// {"total_tokens": 120, "execution_time_ms": 8, "agent_calls": 3, "tool_calls": 0,
    ///  "emit_count": 5, "errors": 0,
    ///  "estimated_cost_usd": null, "known_cost_usd": 0.0, "unpriced_calls": 3,
    ///  "agents": {"Clerk": {"requests": 2, "failures": 0, "retries": 0,
    ///                       "schema_retries": 0, "tool_calls": 0, "cache_hits": 0,
    ///                       "input_tokens": 60, "cached_tokens": 0, "output_tokens": 84,
    ///                       "total_tokens": 144, "estimated_usage": 0,
    ///                       "cost_usd": null, "known_cost_usd": 0.0, "unpriced_calls": 2,
    ///                       "timed_requests": 2, "llm_time_ms": 840, "queue_ms": 0,
    ///                       "connect_ms": 1, "ttfb_ms": 610, "overhead_us": 212}},
    ///  "connections": {"openai": {…the same fields…}}}
    /// ```
    ///
    /// `estimated_cost_usd` and each `cost_usd` are `null` when some call had no known
    /// price; `known_cost_usd` is then the cost of the priced calls and `unpriced_calls`
    /// how many had none. The time fields sum the [`CallTiming`](crate::vm::host::CallTiming)
    /// of the `timed_requests` (replies whose connection layer timed them): `llm_time_ms`
    /// their totals, `queue_ms` the waits for limits, `connect_ms` the connections made,
    /// `ttfb_ms` the waits for the response heads, `overhead_us` the layer's own time.
    pub fn to_json(&self) -> Json {
        let cost = self.estimated_cost();
        json!({
            "total_tokens": self.total_tokens(),
            "execution_time_ms": self.execution_time_ms,
            "agent_calls": self.agent_calls,
            "tool_calls": self.tool_calls,
            "emit_count": self.emit_count,
            "errors": self.errors,
            "estimated_cost_usd": cost.usd(),
            "known_cost_usd": cost.known_usd,
            "unpriced_calls": cost.unpriced_calls,
            "agents": breakdown_json(&self.llm.by_agent),
            "connections": breakdown_json(&self.llm.by_connection),
        })
    }

    /// Adds `other` into these metrics, to aggregate several executions: every counter and
    /// every per-agent and per-connection entry is summed, except `execution_time_ms`,
    /// which becomes the larger of the two (executions that ran concurrently overlap in
    /// time; the aggregate's wall time is the longest one).
    pub fn merge(&mut self, other: &Metrics) {
        self.execution_time_ms = self.execution_time_ms.max(other.execution_time_ms);
        self.emit_count += other.emit_count;
        self.errors += other.errors;
        self.agent_calls += other.agent_calls;
        self.tool_calls += other.tool_calls;
        self.llm.merge(&other.llm);
    }
}

/// Input plus output tokens of one set of counters.
fn tokens(c: &LlmCounters) -> u64 {
    c.input_tokens + c.output_tokens
}

/// The cost of one set of counters.
fn cost_of(c: &LlmCounters) -> Cost {
    Cost {
        known_usd: c.cost_usd,
        unpriced_calls: c.unpriced,
    }
}

/// A map of counters (by agent or by connection) as a JSON object.
fn breakdown_json(map: &std::collections::BTreeMap<String, LlmCounters>) -> Json {
    let entries = map.iter().map(|(name, c)| {
        let cost = cost_of(c);
        let entry = json!({
            "requests": c.requests,
            "failures": c.failures,
            "retries": c.retries,
            "schema_retries": c.schema_retries,
            "tool_calls": c.tool_calls,
            "cache_hits": c.cache_hits,
            "input_tokens": c.input_tokens,
            "cached_tokens": c.cached_tokens,
            "output_tokens": c.output_tokens,
            "total_tokens": tokens(c),
            "estimated_usage": c.estimated_usage,
            "cost_usd": cost.usd(),
            "known_cost_usd": cost.known_usd,
            "unpriced_calls": cost.unpriced_calls,
            "timed_requests": c.time.timed,
            "llm_time_ms": c.time.total_us / 1000,
            "queue_ms": c.time.queue_us / 1000,
            "connect_ms": c.time.connect_us / 1000,
            "ttfb_ms": c.time.ttfb_us / 1000,
            "overhead_us": c.time.overhead_us,
        });
        (name.clone(), entry)
    });
    Json::Object(entries.collect::<Map<String, Json>>())
}

/// An estimated cost in US dollars, which may be unknown for some calls.
///
/// Displays as the amount (honouring a precision, `{:.4}`), or `unknown`, or the known part
/// followed by how many calls have no price.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Cost {
    /// Cost of the calls whose model has a known price.
    pub known_usd: f64,
    /// Calls whose model has no known price.
    pub unpriced_calls: u64,
}

impl Cost {
    /// The cost, when every call's price is known.
    pub fn usd(&self) -> Option<f64> {
        (self.unpriced_calls == 0).then_some(self.known_usd)
    }

    /// The sum of two costs.
    fn plus(self, other: Cost) -> Cost {
        Cost {
            known_usd: self.known_usd + other.known_usd,
            unpriced_calls: self.unpriced_calls + other.unpriced_calls,
        }
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let precision = f.precision().unwrap_or(4);
        let calls = |n: u64| if n == 1 { "call" } else { "calls" };
        match (self.unpriced_calls, self.known_usd) {
            (0, usd) => write!(f, "{usd:.precision$}"),
            (n, 0.0) => write!(f, "unknown ({n} {} without a price)", calls(n)),
            (n, usd) => write!(
                f,
                "{usd:.precision$} + unknown ({n} {} without a price)",
                calls(n)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(requests: u64, input: u64, output: u64, cost: Option<f64>) -> LlmCounters {
        LlmCounters {
            requests,
            input_tokens: input,
            output_tokens: output,
            cost_usd: cost.unwrap_or(0.0),
            unpriced: if cost.is_some() { 0 } else { requests },
            ..LlmCounters::default()
        }
    }

    /// Two agents on two connections: `Clerk` (priced) on `openai`, `Planner` (unpriced)
    /// on `anthropic`.
    fn sample() -> Metrics {
        let clerk = LlmCounters {
            cached_tokens: 4,
            schema_retries: 1,
            ..counters(2, 30, 20, Some(0.25))
        };
        let planner = LlmCounters {
            tool_calls: 3,
            retries: 2,
            ..counters(1, 100, 7, None)
        };
        let mut llm = LlmStats::default();
        llm.by_agent.insert("Clerk".into(), clerk.clone());
        llm.by_agent.insert("Planner".into(), planner.clone());
        llm.by_connection.insert("openai".into(), clerk);
        llm.by_connection.insert("anthropic".into(), planner);
        Metrics {
            execution_time_ms: 40,
            emit_count: 5,
            errors: 1,
            agent_calls: 3,
            tool_calls: 3,
            llm,
        }
    }

    #[test]
    fn total_tokens_sums_input_and_output_of_every_agent() {
        assert_eq!(sample().total_tokens(), 30 + 20 + 100 + 7);
        assert_eq!(Metrics::default().total_tokens(), 0);
    }

    #[test]
    fn tokens_by_agent_and_by_connection() {
        let m = sample();
        assert_eq!(m.tokens_by_agent("Clerk"), 50);
        assert_eq!(m.tokens_by_agent("Planner"), 107);
        assert_eq!(m.tokens_by_agent("Nobody"), 0);
        assert_eq!(m.tokens_by_connection("openai"), 50);
        assert_eq!(m.tokens_by_connection("anthropic"), 107);
        assert_eq!(
            m.tokens_by_connection("Clerk"),
            0,
            "agents are not connections"
        );
    }

    #[test]
    fn estimated_cost_is_unknown_when_a_call_has_no_price() {
        let m = sample();
        let cost = m.estimated_cost();
        assert_eq!(cost.known_usd, 0.25);
        assert_eq!(cost.unpriced_calls, 1);
        assert_eq!(cost.usd(), None);
        assert_eq!(
            format!("{cost:.2}"),
            "0.25 + unknown (1 call without a price)"
        );

        let mut priced = sample();
        priced.llm.by_agent.remove("Planner");
        assert_eq!(priced.estimated_cost().usd(), Some(0.25));
        assert_eq!(format!("{:.4}", priced.estimated_cost()), "0.2500");

        let mut unpriced = sample();
        unpriced.llm.by_agent.remove("Clerk");
        assert_eq!(
            unpriced.estimated_cost().to_string(),
            "unknown (1 call without a price)"
        );
        assert_eq!(Metrics::default().estimated_cost().usd(), Some(0.0));
    }

    #[test]
    fn to_json_has_every_metric_and_the_breakdown() {
        let j = sample().to_json();
        assert_eq!(j["total_tokens"], 157);
        assert_eq!(j["execution_time_ms"], 40);
        assert_eq!(j["agent_calls"], 3);
        assert_eq!(j["tool_calls"], 3);
        assert_eq!(j["emit_count"], 5);
        assert_eq!(j["errors"], 1);
        assert_eq!(j["estimated_cost_usd"], Json::Null);
        assert_eq!(j["known_cost_usd"], 0.25);
        assert_eq!(j["unpriced_calls"], 1);

        let clerk = &j["agents"]["Clerk"];
        assert_eq!(clerk["requests"], 2);
        assert_eq!(clerk["schema_retries"], 1);
        assert_eq!(clerk["input_tokens"], 30);
        assert_eq!(clerk["cached_tokens"], 4);
        assert_eq!(clerk["output_tokens"], 20);
        assert_eq!(clerk["total_tokens"], 50);
        assert_eq!(clerk["cost_usd"], 0.25);
        let planner = &j["agents"]["Planner"];
        assert_eq!(planner["retries"], 2);
        assert_eq!(planner["tool_calls"], 3);
        assert_eq!(planner["cost_usd"], Json::Null, "unknown, not zero");
        assert_eq!(planner["unpriced_calls"], 1);
        assert_eq!(j["connections"]["openai"]["total_tokens"], 50);
        assert_eq!(j["connections"]["anthropic"]["requests"], 1);
        assert_eq!(j["agents"].as_object().unwrap().len(), 2);

        let empty = Metrics::default().to_json();
        assert_eq!(empty["total_tokens"], 0);
        assert_eq!(empty["estimated_cost_usd"], 0.0);
        assert_eq!(empty["agents"], json!({}));
        assert_eq!(empty["connections"], json!({}));
    }

    #[test]
    fn merge_sums_counters_and_keeps_the_longest_wall_time() {
        let mut total = sample();
        let mut other = sample();
        other.execution_time_ms = 25;
        other.llm.by_agent.insert(
            "Scout".into(),
            LlmCounters {
                failures: 1,
                cache_hits: 2,
                estimated_usage: 1,
                ..counters(1, 5, 6, Some(0.5))
            },
        );
        total.merge(&other);

        assert_eq!(total.execution_time_ms, 40, "max, not sum");
        assert_eq!(total.emit_count, 10);
        assert_eq!(total.errors, 2);
        assert_eq!(total.agent_calls, 6);
        assert_eq!(total.tool_calls, 6);
        assert_eq!(total.tokens_by_agent("Clerk"), 100);
        assert_eq!(total.tokens_by_agent("Scout"), 11);
        assert_eq!(total.tokens_by_connection("anthropic"), 214);
        let clerk = &total.llm.by_agent["Clerk"];
        assert_eq!(clerk.requests, 4);
        assert_eq!(clerk.schema_retries, 2);
        assert_eq!(clerk.cached_tokens, 8);
        assert_eq!(clerk.cost_usd, 0.5);
        let planner = &total.llm.by_agent["Planner"];
        assert_eq!(planner.retries, 4);
        assert_eq!(planner.tool_calls, 6);
        assert_eq!(planner.unpriced, 2);
        let scout = &total.llm.by_agent["Scout"];
        assert_eq!((scout.failures, scout.cache_hits), (1, 2));
        assert_eq!(scout.estimated_usage, 1);
        let cost = total.estimated_cost();
        assert_eq!((cost.known_usd, cost.unpriced_calls), (1.0, 2));
        assert_eq!(
            cost.to_string(),
            "1.0000 + unknown (2 calls without a price)"
        );

        let mut longer = Metrics {
            execution_time_ms: 10,
            ..Metrics::default()
        };
        longer.merge(&Metrics {
            execution_time_ms: 90,
            ..Metrics::default()
        });
        assert_eq!(longer.execution_time_ms, 90);
    }

    #[test]
    fn merging_into_empty_metrics_copies_them() {
        let mut empty = Metrics::default();
        empty.merge(&sample());
        assert_eq!(empty, sample());
    }
}
