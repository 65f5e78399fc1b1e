//! A ledger: entries in insertion order, upserted by identifier, queried by identifier words
//! or keys.

use std::collections::HashSet;

use concerto_vm::Value;
use concerto_vm::host::{LedgerEntry, LedgerQuery};

/// One ledger's entries.
#[derive(Default)]
pub(crate) struct Ledger {
    entries: Vec<LedgerEntry>,
}

/// Identifier words: split on whitespace, characters other than alphanumerics, `_` and `-`
/// removed, lowercased, empty words dropped.
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

impl Ledger {
    pub(crate) fn insert(&mut self, entry: LedgerEntry) {
        match self
            .entries
            .iter_mut()
            .find(|e| e.identifier == entry.identifier)
        {
            Some(existing) => {
                existing.keys = entry.keys;
                existing.value = entry.value;
            }
            None => self.entries.push(entry),
        }
    }

    pub(crate) fn update(&mut self, identifier: &str, value: Value) -> bool {
        match self.entries.iter_mut().find(|e| e.identifier == identifier) {
            Some(e) => {
                e.value = value;
                true
            }
            None => false,
        }
    }

    pub(crate) fn update_keys(&mut self, identifier: &str, keys: Vec<String>) -> bool {
        match self.entries.iter_mut().find(|e| e.identifier == identifier) {
            Some(e) => {
                e.keys = keys;
                true
            }
            None => false,
        }
    }

    pub(crate) fn delete(&mut self, identifier: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.identifier != identifier);
        self.entries.len() != before
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    pub(crate) fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    pub(crate) fn query(&self, query: &LedgerQuery) -> Vec<LedgerEntry> {
        let matches: Box<dyn Fn(&LedgerEntry) -> bool> = match query {
            LedgerQuery::Identifier(text) => {
                let wanted = words(text);
                if wanted.is_empty() {
                    return Vec::new();
                }
                Box::new(move |e| {
                    let have = words(&e.identifier);
                    wanted.iter().all(|w| have.contains(w))
                })
            }
            LedgerQuery::Key(key) => {
                let key = key.clone();
                Box::new(move |e| has_key(e, &key))
            }
            LedgerQuery::AnyKeys(keys) => {
                let keys = keys.clone();
                Box::new(move |e| keys.iter().any(|k| has_key(e, k)))
            }
            LedgerQuery::ExactKeys(keys) => {
                let keys = keys.clone();
                Box::new(move |e| keys.iter().all(|k| has_key(e, k)))
            }
        };
        self.entries
            .iter()
            .filter(|e| matches(e))
            .cloned()
            .collect()
    }
}
