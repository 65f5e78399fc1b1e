//! Ledger query rules, shared by every store (in memory, SQLite, Redis) so they match
//! exactly:
//!
//! - `Identifier(text)`: every word of `text` is a word of the identifier. Words are split on
//!   whitespace, stripped of characters other than alphanumerics, `_` and `-`, and lowercased;
//!   a query without words matches nothing.
//! - `Key(k)`: the entry has the key, compared case-insensitively.
//! - `AnyKeys(ks)` / `ExactKeys(ks)`: the entry has any / all of the keys.

use std::collections::HashSet;

use concerto_vm::host::{LedgerEntry, LedgerQuery};

/// The words of an identifier or an identifier query.
pub fn words(text: &str) -> HashSet<String> {
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

/// A ledger query prepared for matching many entries.
pub struct Matcher {
    kind: Kind,
}

enum Kind {
    /// No entry matches (an identifier query without words).
    Nothing,
    Words(HashSet<String>),
    Key(String),
    AnyKeys(Vec<String>),
    ExactKeys(Vec<String>),
}

impl Matcher {
    /// Prepares `query`.
    pub fn new(query: &LedgerQuery) -> Matcher {
        let lower = |keys: &[String]| keys.iter().map(|k| k.to_lowercase()).collect();
        let kind = match query {
            LedgerQuery::Identifier(text) => {
                let wanted = words(text);
                if wanted.is_empty() {
                    Kind::Nothing
                } else {
                    Kind::Words(wanted)
                }
            }
            LedgerQuery::Key(key) => Kind::Key(key.to_lowercase()),
            LedgerQuery::AnyKeys(keys) => Kind::AnyKeys(lower(keys)),
            LedgerQuery::ExactKeys(keys) => Kind::ExactKeys(lower(keys)),
        };
        Matcher { kind }
    }

    /// Whether nothing can match (no need to read any entry).
    pub fn matches_nothing(&self) -> bool {
        matches!(self.kind, Kind::Nothing)
    }

    /// Whether an entry with `identifier` and `keys` matches.
    pub fn matches(&self, identifier: &str, keys: &[String]) -> bool {
        let has = |key: &str| keys.iter().any(|k| k.to_lowercase() == key);
        match &self.kind {
            Kind::Nothing => false,
            Kind::Words(wanted) => {
                let have = words(identifier);
                wanted.iter().all(|w| have.contains(w))
            }
            Kind::Key(key) => has(key),
            Kind::AnyKeys(list) => list.iter().any(|k| has(k)),
            Kind::ExactKeys(list) => list.iter().all(|k| has(k)),
        }
    }
}

/// The entries matching `query`, in their order.
pub fn filter(entries: Vec<LedgerEntry>, query: &LedgerQuery) -> Vec<LedgerEntry> {
    let matcher = Matcher::new(query);
    entries
        .into_iter()
        .filter(|e| matcher.matches(&e.identifier, &e.keys))
        .collect()
}
