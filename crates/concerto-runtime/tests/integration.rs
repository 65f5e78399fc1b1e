//! This crate's integration tests, as modules of one test binary: each test binary links
//! the crate and all its dependencies, so one binary instead of several saves most of a test
//! build's disk and link time.

mod builder;
mod debugger;
mod otlp;
mod value_json;
