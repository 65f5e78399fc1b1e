//! Helpers shared by the integration tests: the mock provider server, programs with
//! given connections, requests, and an environment for API keys.
#![allow(dead_code, unreachable_pub)]

pub mod server;

use std::collections::HashMap;
use std::sync::Arc;

use concerto_vm::host::{ChatMessage, ChatRequest, Program};
use serde_json::{Value, json};

/// A program whose `connections` are `connections` (a JSON array of `{name, config}`).
pub fn program(connections: Value) -> Arc<Program> {
    let ir = json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "connections": connections,
        "constants": [{"index": 0, "type": "int", "value": 0}],
        "functions": [{"name": "main", "module": "m", "visibility": "private", "params": [],
                        "return_type": "nil", "is_async": false, "locals": [],
                        "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]}],
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
                     "debug_info": false, "entry_point": "main"}
    });
    Arc::new(concerto_ir::load_str(&ir.to_string()).unwrap())
}

/// A program with one connection `name` of `config`.
pub fn one(name: &str, config: Value) -> Arc<Program> {
    program(json!([{"name": name, "config": config}]))
}

/// A request of agent `Agent` with a system prompt and one user message.
pub fn request(model: Option<&str>, user: &str) -> ChatRequest {
    ChatRequest::new(
        "Agent",
        model.map(str::to_string),
        vec![
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", user),
        ],
    )
}

/// An environment holding exactly `vars`.
pub fn env(vars: &[(&str, &str)]) -> Arc<concerto_conn::EnvLookup> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Arc::new(move |name: &str| map.get(name).cloned())
}
