//! A ledger: entries in insertion order, upserted by identifier, queried by identifier words
//! or keys.

use concerto_vm::Value;
use concerto_vm::host::{LedgerEntry, LedgerQuery};

/// One ledger's entries.
#[derive(Default)]
pub(crate) struct Ledger {
    entries: Vec<LedgerEntry>,
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
        let matcher = crate::query::Matcher::new(query);
        self.entries
            .iter()
            .filter(|e| matcher.matches(&e.identifier, &e.keys))
            .cloned()
            .collect()
    }
}
