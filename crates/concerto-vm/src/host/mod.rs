//! The traits the interpreter needs from the world outside it.
//!
//! The VM does no I/O of its own: it emits through an [`EmitSink`], calls LLMs through
//! [`Connections`], keeps hashmaps, ledgers and memories in a [`MemoryStore`], validates
//! output with a [`SchemaValidator`], reaches host tools through a [`ToolHost`], and reads
//! the clock, the environment and the console through [`System`]. Implementations live in
//! sibling crates (`concerto-conn`, `concerto-memory`, `concerto-schema`, `concerto-emit`)
//! and are wired together by `concerto-runtime`; a host can swap any of them.
//!
//! Operations that may take time return a [`BoxFuture`] (or a [`Reply`] that is usually
//! ready at once); the interpreter suspends at them without blocking a thread.
//!
//! # Source layout
//!
//! - `mod.rs`: this overview, [`BoxFuture`] and [`Reply`], and the re-exports that give
//!   every item below its path `concerto_vm::host::Name`.
//! - `error.rs`: [`HostError`], [`HostErrorKind`], [`ProviderFailure`] and its kind.
//! - `ids.rs`: [`ConnectionId`], [`SchemaId`].
//! - `emit.rs`: [`EmitSink`].
//! - `llm.rs`: [`Connections`] and the chat types ([`ChatRequest`], [`ChatResponse`],
//!   [`ChatMessage`], [`ToolSpec`], [`ToolCall`], [`Usage`], [`RetryPolicy`], …).
//! - `tools.rs`: [`ToolHost`], [`HostSession`], the `std::fs` and `std::http` types and
//!   [`OutsideError`].
//! - `store.rs`: [`MemoryStore`] and the four traits it is made of ([`HashmapStore`],
//!   [`LedgerStore`], [`ConversationStore`], [`JournalStore`]), [`LedgerEntry`],
//!   [`LedgerQuery`], and the write batches of [`JournalStore::apply`] ([`Write`],
//!   [`JournalRecord`]).
//! - `schema.rs`: [`SchemaValidator`], [`SchemaCheck`].
//! - `system.rs`: [`System`], [`LogLevel`], [`Spawned`].

use std::future::Future;
use std::pin::Pin;

pub use concerto_ir::model::Dialect;
pub use concerto_ir::{Program, TypeDefKind};

mod emit;
mod error;
mod ids;
mod llm;
mod schema;
mod store;
mod system;
mod tools;

pub use emit::EmitSink;
pub use error::{HostError, HostErrorKind, ProviderFailure, ProviderFailureKind};
pub use ids::{ConnectionId, MapId, SchemaId};
pub use llm::{
    Backoff, CallTiming, ChatMessage, ChatRequest, ChatResponse, Connections, ImagePart,
    ResponseSchema, RetryPolicy, ToolCall, ToolSpec, Usage,
};
pub use schema::{SchemaCheck, SchemaValidator};
pub use store::{
    ConversationStore, HashmapStore, JournalRecord, JournalStore, LedgerEntry, LedgerQuery,
    LedgerStore, MemoryStore, Write,
};
pub use system::{LogLevel, Spawned, System};
pub use tools::{
    FsReply, FsRequest, HostSession, HttpReply, HttpRequest, OutsideError, OutsideFailure,
    OutsideFailureKind, ToolHost, ToolOutput,
};

/// A boxed, sendable future.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The result of an operation that is usually immediate but may need to wait
/// (for example a remote store). `Ready` costs nothing extra on the hot path.
pub enum Reply<T> {
    /// The result is available now.
    Ready(T),
    /// The result arrives later.
    Pending(BoxFuture<T>),
}

impl<T> From<T> for Reply<T> {
    fn from(value: T) -> Reply<T> {
        Reply::Ready(value)
    }
}
