//! Ledger queries, with the same matching rules as `concerto-memory`'s ledgers (the tests
//! compare the two stores on the same entries):
//!
//! - `Identifier(text)`: every word of `text` is a word of the identifier. Words are split
//!   on whitespace, stripped of characters other than alphanumerics, `_` and `-`, and
//!   lowercased; a query without words matches nothing.
//! - `Key(k)`: the entry has the key, compared case-insensitively.
//! - `AnyKeys(ks)` / `ExactKeys(ks)`: the entry has any / all of the keys.

use std::collections::HashSet;

use concerto_vm::host::{LedgerEntry, LedgerQuery};

fn words(text: &str) -> HashSet<String> {
    text.split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric() || *c == '_' || *c == '-')
                .collect::<String>()
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn has_key(entry: &LedgerEntry, key: &str) -> bool {
    let key = key.to_lowercase();
    entry.keys.iter().any(|k| k.to_lowercase() == key)
}

/// The entries matching `query`, in their order.
pub(crate) fn filter(entries: Vec<LedgerEntry>, query: &LedgerQuery) -> Vec<LedgerEntry> {
    match query {
        LedgerQuery::Identifier(text) => {
            let wanted = words(text);
            if wanted.is_empty() {
                return Vec::new();
            }
            entries
                .into_iter()
                .filter(|e| {
                    let have = words(&e.identifier);
                    wanted.iter().all(|w| have.contains(w))
                })
                .collect()
        }
        LedgerQuery::Key(key) => entries.into_iter().filter(|e| has_key(e, key)).collect(),
        LedgerQuery::AnyKeys(keys) => entries
            .into_iter()
            .filter(|e| keys.iter().any(|k| has_key(e, k)))
            .collect(),
        LedgerQuery::ExactKeys(keys) => entries
            .into_iter()
            .filter(|e| keys.iter().all(|k| has_key(e, k)))
            .collect(),
    }
}
