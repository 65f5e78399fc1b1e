//! The in-process standard library and the native parts of the language runtime.
//!
//! | module | contents |
//! |---|---|
//! | `core` | `print`, `println`, `Ok`, `Err`, `Some`, `env`, `len`, `typeof`, `panic`, `ToolError::new` |
//! | `math`, `string`, `json`, `env`, `time`, `fmt`, `log`, `crypto`, `prompt`, `collections` | `std::<module>::*` |
//! | `outside` | `std::fs`, `std::http`: refused until the tools issue's permission model exists |
//! | `pipeline` | `Pipeline.run(x)` with its lifecycle emits |

pub(crate) mod collections;
pub(crate) mod core;
pub(crate) mod crypto;
pub(crate) mod env;
pub(crate) mod fmt;
pub(crate) mod json;
pub(crate) mod log;
pub(crate) mod math;
pub(crate) mod outside;
pub(crate) mod pipeline;
pub(crate) mod prompt;
pub(crate) mod string;
pub(crate) mod time;
