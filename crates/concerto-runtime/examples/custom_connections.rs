//! Swapping a component: a connection layer of your own instead of the built-in HTTP one.
//!
//! `FnConnections` implements the VM's [`Connections`] trait over a closure that gets the
//! connection name and the request and returns the reply text. Here it echoes the last user
//! message, and answers structured calls (`execute_with_schema`) with an object that fits
//! the bundled example's `Berthing` schema. Plugged in with `RuntimeBuilder::connections`, it
//! runs the bundled agent example without a network or any other crate.
//!
//! `cargo run -p concerto-runtime --example custom_connections [FILE.conc-ir]`
#![allow(clippy::print_stdout, reason = "an example prints its results")]

use std::sync::Arc;

use concerto_runtime::vm::host::{
    BoxFuture, ChatRequest, ChatResponse, ConnectionId, Connections, HostError, Program, Usage,
};
use concerto_runtime::{Runtime, RuntimeConfig, Value};

/// A connection layer that answers every chat request with `reply(connection, request)`.
struct FnConnections<F>(F);

impl<F> Connections for FnConnections<F>
where
    F: Fn(&str, &ChatRequest) -> String + Send + Sync,
{
    fn chat(
        &self,
        program: &Arc<Program>,
        connection: ConnectionId,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let name = program
            .connections
            .get(connection.index())
            .map_or("(unknown)", |c| c.name.as_str());
        let text = (self.0)(name, &request);
        // No tokenizer here: count words, and say the counts are estimates.
        let words = |s: &str| s.split_whitespace().count() as u64;
        let usage = Usage {
            input_tokens: request.messages.iter().map(|m| words(&m.content)).sum(),
            output_tokens: words(&text),
            estimated: true,
            ..Usage::default()
        };
        let model = request.model.clone().unwrap_or_else(|| "echo".to_string());
        let mut response = ChatResponse::text(text, model, usage);
        response.provider = "echo".to_string();
        response.cost_usd = Some(0.0);
        Box::pin(async move { Ok(response) })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let program = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/harbour/harbour.conc-ir"
        )
        .to_string()
    });

    let echo = FnConnections(|connection: &str, request: &ChatRequest| {
        if request.response_schema.is_some() {
            return r#"{"ship": "Kestrel", "berth": 7, "cargo": ["timber", "salt"], "pilot_needed": true}"#
                .to_string();
        }
        let last = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map_or("", |m| m.content.as_str());
        format!("echo from {connection}: {last}")
    });

    let mut runtime = Runtime::builder()
        .config(RuntimeConfig::default())
        .connections(Arc::new(echo))
        .build()?;
    runtime.load_ir(&program)?;
    runtime.on_prefix("", |channel: &str, payload: Value| {
        println!("[{channel}] {}", payload.to_json());
    });
    runtime.execute().await?;

    let metrics = runtime.metrics();
    println!(
        "{} agent calls, {} tokens (estimated), cost ${:.4}",
        metrics.agent_calls,
        metrics.total_tokens(),
        metrics.estimated_cost()
    );
    Ok(())
}
