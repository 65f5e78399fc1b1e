//! Change events for the host.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use concerto_vm::{Str, Value};

/// One change of one hashmap entry, as listeners registered with
/// [`crate::InMemoryStore::on_change`] and [`crate::InMemoryStore::on_any_change`] see it.
#[derive(Debug, Clone)]
pub struct HashMapChange {
    /// Index of the hashmap in the program.
    pub map: u32,
    /// The hashmap's name (`#<index>` when the store was not given names).
    pub name: String,
    /// The key.
    pub key: Str,
    /// The value before the change (`None`: the key was absent).
    pub old: Option<Value>,
    /// The value after the change (`None`: the key was deleted).
    pub new: Option<Value>,
}

/// A change listener.
pub type ChangeListener = Arc<dyn Fn(&HashMapChange) + Send + Sync>;

/// Registered listeners: `Some(map)` for one hashmap, `None` for all.
pub(crate) type Listeners = Vec<(Option<u32>, ChangeListener)>;

/// Calls every matching listener for every change, in order. A panicking listener is
/// caught; the others still run.
pub(crate) fn dispatch(listeners: &Listeners, changes: &[HashMapChange]) {
    for change in changes {
        for (filter, listener) in listeners {
            if filter.is_none_or(|m| m == change.map) {
                // Nothing is shared mutably with the listener, so unwinding out of it cannot
                // leave the store inconsistent.
                let _ = catch_unwind(AssertUnwindSafe(|| listener(change)));
            }
        }
    }
}
