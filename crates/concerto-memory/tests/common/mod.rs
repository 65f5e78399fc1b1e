//! Helpers shared by the integration tests.
#![allow(dead_code)]

use concerto_vm::host::Reply;

/// The result of an operation that the in-memory store always answers at once.
pub(crate) fn ready<T>(reply: Reply<T>) -> T {
    match reply {
        Reply::Ready(v) => v,
        Reply::Pending(_) => panic!("InMemoryStore answered later"),
    }
}
