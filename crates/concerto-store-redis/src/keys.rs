//! The Redis key layout of one program.
//!
//! Every key starts with `concerto:<program>:`; each name is escaped (`%` → `%25`,
//! `:` → `%3A`) so no two programs, hashmaps, ledgers or memories can share a key:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `concerto:<program>:hm:<hashmap>:data` | hash | key → encoded value |
//! | `concerto:<program>:hm:<hashmap>:order` | sorted set | key → insertion number |
//! | `concerto:<program>:hm:<hashmap>:seq` | string | the last insertion number given |
//! | `concerto:<program>:lg:<ledger>:value` | hash | identifier → encoded value |
//! | `concerto:<program>:lg:<ledger>:keys` | hash | identifier → JSON array of keys |
//! | `concerto:<program>:lg:<ledger>:order` | sorted set | identifier → insertion number |
//! | `concerto:<program>:lg:<ledger>:seq` | string | the last insertion number given |
//! | `concerto:<program>:mem:<memory>` | list | JSON chat messages, oldest first |
//! | `concerto:<program>:journal:<run>` | list | a run's journal records, oldest first |
//! | `concerto:<program>:fence:<run>` | string | a leased run's newest lease epoch |
//! | `concerto:<program>:changes` | pub/sub channel | hashmap change events |
//!
//! Scoped views (`a:result`) are key prefixes inside a hashmap's keys, so they need no keys
//! of their own.

/// Escapes a name for use as one component of a key.
pub(crate) fn component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            _ => out.push(c),
        }
    }
    out
}

/// The keys of one program.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// `concerto:<program>`
    base: String,
    /// The change-event channel.
    pub(crate) channel: String,
}

impl Layout {
    pub(crate) fn new(program_key: &str) -> Layout {
        let base = format!("concerto:{}", component(program_key));
        let channel = format!("{base}:changes");
        Layout { base, channel }
    }

    /// The keys of a hashmap.
    pub(crate) fn hashmap(&self, name: &str) -> HashMapKeys {
        let prefix = format!("{}:hm:{}", self.base, component(name));
        HashMapKeys {
            data: format!("{prefix}:data"),
            order: format!("{prefix}:order"),
            seq: format!("{prefix}:seq"),
        }
    }

    /// The keys of a ledger.
    pub(crate) fn ledger(&self, name: &str) -> LedgerKeys {
        let prefix = format!("{}:lg:{}", self.base, component(name));
        LedgerKeys {
            value: format!("{prefix}:value"),
            keys: format!("{prefix}:keys"),
            order: format!("{prefix}:order"),
            seq: format!("{prefix}:seq"),
        }
    }

    /// The key of a conversation memory.
    pub(crate) fn memory(&self, name: &str) -> String {
        format!("{}:mem:{}", self.base, component(name))
    }

    /// The key of a run's journal (a list of records, oldest first).
    pub(crate) fn journal(&self, run: &str) -> String {
        format!("{}:journal:{}", self.base, component(run))
    }

    /// The key of a run's fence: the newest lease epoch (a decimal string).
    pub(crate) fn fence(&self, run: &str) -> String {
        format!("{}:fence:{}", self.base, component(run))
    }
}

/// The keys of one hashmap.
#[derive(Debug, Clone)]
pub(crate) struct HashMapKeys {
    pub(crate) data: String,
    pub(crate) order: String,
    pub(crate) seq: String,
}

/// The keys of one ledger.
#[derive(Debug, Clone)]
pub(crate) struct LedgerKeys {
    pub(crate) value: String,
    pub(crate) keys: String,
    pub(crate) order: String,
    pub(crate) seq: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_so_keys_cannot_collide() {
        let a = Layout::new("app:hm:x");
        let b = Layout::new("app");
        assert_ne!(a.hashmap("y").data, b.hashmap("x:data").data);
        assert_eq!(a.hashmap("y").data, "concerto:app%3Ahm%3Ax:hm:y:data");
        assert_eq!(component("50%:a"), "50%25%3Aa");
        assert_eq!(b.channel, "concerto:app:changes");
        assert_eq!(b.memory("chat"), "concerto:app:mem:chat");
        assert_eq!(b.ledger("facts").keys, "concerto:app:lg:facts:keys");
    }
}
