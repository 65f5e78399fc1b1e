//! The runtime specification's "Configuration": a [`RuntimeConfig`] built field by field
//! (connection overrides, tool permissions, emit mode, timeout, debug), then a run of the
//! bundled agent example with it.
//!
//! Both of the example's connections are overridden to the built-in mock provider, so it
//! runs offline; against a test server you would set `api_key` and `base_url` instead, as
//! the specification does.
//!
//! `cargo run -p concerto-runtime --example configuration [FILE.conc-ir]`
#![allow(clippy::print_stdout, reason = "an example prints its results")]

use std::collections::HashMap;
use std::time::Duration;

use concerto_runtime::{
    ConnectionOverride, EmitMode, Runtime, RuntimeConfig, ToolPermission, Value,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let program = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/harbour/harbour.conc-ir"
        )
        .to_string()
    });

    let config = RuntimeConfig {
        // Override connections for testing
        connection_overrides: HashMap::from([
            (
                "openai".to_string(),
                ConnectionOverride {
                    api_key: Some("sk-test-key".to_string()),
                    provider: Some("mock".to_string()),
                    ..Default::default()
                },
            ),
            (
                "anthropic".to_string(),
                ConnectionOverride {
                    provider: Some("mock".to_string()),
                    ..Default::default()
                },
            ),
        ]),

        // Tool permissions
        tool_permissions: HashMap::from([
            ("ShellTool".to_string(), ToolPermission::Disabled),
            (
                "FileConnector".to_string(),
                ToolPermission::Methods(vec!["read_file".to_string()]),
            ),
        ]),

        // Emit mode
        emit_mode: EmitMode::Immediate,

        // Global timeout
        execution_timeout: Duration::from_secs(300),

        // Debug mode
        debug: false,

        // Prompt and reply text on the request spans (off: traces carry none)
        trace_content: false,

        // No export of the run's spans to an OTLP collector
        otlp_endpoint: None,
    };

    let mut runtime = Runtime::new(config);
    runtime.load_ir(&program)?;
    runtime.on_prefix("", |channel: &str, payload: Value| {
        println!("[{channel}] {}", payload.to_json());
    });
    runtime.execute().await?;

    let metrics = runtime.metrics();
    for connection in ["openai", "anthropic"] {
        println!(
            "{connection}: {} tokens",
            metrics.tokens_by_connection(connection)
        );
    }
    println!(
        "{} agent calls in {} ms",
        metrics.agent_calls, metrics.execution_time_ms
    );
    Ok(())
}
