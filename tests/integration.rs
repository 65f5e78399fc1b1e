//! The workspace's integration tests, in one test binary: every test binary links the whole
//! runtime (tokio, hyper, rustls, jsonschema, rmcp, SQLite, Redis), so one binary instead of
//! nine saves most of a test build's disk and link time. `cases` stays a binary of its own
//! (its harness is libtest-mimic, one test per fixture file).

mod agents;
#[path = "async.rs"]
mod async_tasks;
mod emit;
mod env;
mod fencing;
mod fuzz;
mod limits;
mod loader;
mod memory;
mod queue_api;
mod robustness;
mod stores;
mod stream;
mod tools;
