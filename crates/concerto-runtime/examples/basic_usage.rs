//! The runtime specification's "Basic Usage", run against the bundled example program.
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
            "/../../examples/hello/hello.conc-ir"
        )
        .to_string()
    });

    // Create runtime
    let mut runtime = Runtime::new(RuntimeConfig::default());

    // Load IR
    runtime.load_ir(&program)?;

    // Register emit handlers
    runtime.on("receipt", |payload: Value| {
        println!("Receipt: {:?}", payload);
    });

    runtime.on("rejected", |payload: Value| {
        eprintln!("Rejected: {:?}", payload);
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
    println!("Emits: {}", metrics.emit_count);

    Ok(())
}
