//! LLM connections: the implementation of the VM's [`Connections`] trait.
//!
//! **Status:** not implemented yet. [`HttpConnections`] answers every request with an
//! "unsupported" error that names the connection and provider, so a program that calls an
//! LLM fails loudly instead of receiving invented text. The HTTP layer (hyper, rustls,
//! retries, rate limits, streaming) arrives with the LLM-connections work.
//!
//! # Source layout
//! - `lib.rs`: [`HttpConnections`].
#![warn(missing_docs)]

use std::sync::Arc;

use concerto_vm::host::{BoxFuture, ChatRequest, ChatResponse, Connections, HostError};

/// The connection layer for real providers (not implemented yet: every call is refused).
#[derive(Debug, Default)]
pub struct HttpConnections;

impl HttpConnections {
    /// A connection layer.
    pub fn new() -> HttpConnections {
        HttpConnections
    }
}

impl Connections for HttpConnections {
    fn chat(
        &self,
        program: &Arc<concerto_vm::host::Program>,
        connection: u32,
        request: ChatRequest,
    ) -> BoxFuture<Result<ChatResponse, HostError>> {
        let (name, provider) = match program.connections.get(connection as usize) {
            Some(c) => (
                c.name.clone(),
                c.config
                    .get("provider")
                    .and_then(|p| p.as_str())
                    .unwrap_or("unknown")
                    .to_string(),
            ),
            None => (format!("#{connection}"), "unknown".to_string()),
        };
        let message = format!(
            "LLM requests (agent `{}`, connection `{name}`, provider `{provider}`) are not implemented in this runtime yet",
            request.agent
        );
        Box::pin(async move { Err(HostError::unsupported(message)) })
    }
}
