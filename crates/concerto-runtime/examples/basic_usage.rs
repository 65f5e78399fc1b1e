//! The runtime specification's "Basic Usage": load IR, listen to emits, answer an
//! emit-await channel, execute, read the metrics.
//!
//! It runs the bundled agent example (`examples/harbour`) offline: every agent call is
//! answered by the built-in mock provider, the one line that differs from the
//! specification. The `tool:read_file` handler answers programs that
//! `await emit("tool:read_file", {"path": …})`; the harbour program does not.
//!
//! `cargo run -p concerto-runtime --example basic_usage [FILE.conc-ir]`
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example prints its results"
)]

use concerto_runtime::{Runtime, RuntimeConfig, Value};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let program = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/harbour/harbour.conc-ir"
        )
        .to_string()
    });

    // Create runtime (answering agents offline: the one line that differs from the
    // specification's `Runtime::new(RuntimeConfig::default())`)
    let mut runtime = Runtime::builder()
        .config(RuntimeConfig::default())
        .mock_provider()
        .build()?;

    // Load IR
    runtime.load_ir(&program)?;

    // Register emit handlers
    runtime.on("berthing", |payload: Value| {
        println!("Result: {:?}", payload);
    });

    runtime.on("planner_error", |payload: Value| {
        eprintln!("Error: {:?}", payload);
    });

    // Register bidirectional emit handler
    runtime.on_emit("tool:read_file", |payload: Value| async move {
        let path = payload.get_string("path")?;
        let content = tokio::fs::read_to_string(path).await?;
        Ok(Value::String(content))
    });

    // Execute
    runtime.execute().await?;

    // Get metrics
    let metrics = runtime.metrics();
    println!("Total tokens: {}", metrics.total_tokens());
    println!("Estimated cost: ${:.4}", metrics.estimated_cost());

    Ok(())
}
