//! LLM connections: the implementation of the VM's [`Connections`](concerto_vm::host::Connections) trait.
//!
//! [`HttpConnections`] sends an agent's [`ChatRequest`](concerto_vm::host::ChatRequest) to the provider its connection
//! names — OpenAI Chat Completions (also Ollama and any OpenAI-compatible server) or
//! Anthropic Messages — over one pooled HTTP client (rustls, HTTP/1.1 and HTTP/2). Each
//! connection's settings come from the program's connection entry (`Concerto.toml`),
//! overlaid by the host's [`ConnectionSettings`]. A call is retried on transient failures
//! by one retry loop, within the connection's rate and concurrency limits and the
//! instance's retry budget. [`MockConnections`] answers without a network, and
//! [`Recorder`]/[`Replayer`] record and replay calls.
//!
//! API keys never appear in errors, `Debug` output or logs: they are redacted from every
//! text that leaves this crate, the provider's own error bodies included.
//!
//! # Cargo features
//! - `http` (default): [`HttpConnections`] and the modules it needs (`client`, `config`,
//!   `retry`, `limits`), with hyper and rustls. Without it: the mock provider,
//!   record/replay, wire formats, prices and [`ConnectionSettings`], and no network code.
//!
//! # Source layout
//! - `settings`: [`ConnectionSettings`].
//! - `config`: the resolution of a connection's settings (program entry + host override).
//! - `client`: the shared HTTP client and one attempt of a call.
//! - `retry`: what is retried, backoff delays, `Retry-After`, the retry budget.
//! - `limits`: requests and tokens per minute, concurrent calls.
//! - `http_layer`: [`HttpConnections`], which ties them together.
//! - [`wire`]: provider wire formats and stream decoding; [`pricing`]: the price table;
//!   [`mock`]: the mock provider; [`record`]: record/replay; [`model`]: model names.
#![warn(missing_docs)]

#[cfg(feature = "http")]
mod client;
#[cfg(feature = "http")]
mod config;
#[cfg(feature = "http")]
mod http_layer;
#[cfg(feature = "http")]
mod limits;
pub mod mock;
pub mod model;
pub mod pricing;
pub mod record;
#[cfg(feature = "http")]
mod retry;
mod settings;
pub mod wire;

#[cfg(feature = "http")]
pub use http_layer::{
    DEFAULT_OUTPUT_RESERVE, DEFAULT_RETRY_BUDGET, DEFAULT_TIMEOUT, EnvLookup, HostApproval,
    HttpConnections, KeyApproval,
};
pub use mock::MockConnections;
pub use pricing::{Price, PriceTable};
pub use record::{Recorder, Replayer};
pub use settings::{ConnectionSettings, Fallback, FallbackOn};
