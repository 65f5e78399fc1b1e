//! The Lua scripts behind every multi-step operation. Redis runs a script atomically: no
//! other command runs between its first and its last step. Every script only does steps
//! that cannot fail once its arguments are checked (they are encoded and validated in Rust
//! first), so a script either makes all of its changes or none.
//!
//! Hashmap writes publish their change events (see the crate documentation for the format)
//! from inside the script, so the events of one program's writes are published in the order
//! the writes were made. Nothing is published when nobody listens on the program's channel
//! (`PUBSUB NUMSUB`) or on any pattern (`PUBSUB NUMPAT`).

use redis::Script;

/// `true` when someone is subscribed to the channel `ARGV[1]` or to any pattern.
const LISTENED: &str = r#"
local function listened(channel)
  local subs = redis.call('PUBSUB', 'NUMSUB', channel)
  return tonumber(subs[2]) > 0 or redis.call('PUBSUB', 'NUMPAT') > 0
end
"#;

/// Hashmap set / set_many / replace.
/// KEYS: data, order, seq. ARGV: channel, event prefix, want_old (`1`/`0`), then key, value
/// pairs (values already encoded). A new key gets the next insertion number; an existing
/// key keeps its place. Returns the previous values (nil: absent) when asked.
const HASHMAP_SET: &str = r#"
local data, order, seq = KEYS[1], KEYS[2], KEYS[3]
local channel, prefix, want_old = ARGV[1], ARGV[2], ARGV[3] == '1'
local notify = listened(channel)
local olds, events = {}, {}
for i = 4, #ARGV - 1, 2 do
  local key, new = ARGV[i], ARGV[i + 1]
  local old = redis.call('HGET', data, key)
  if not old then
    redis.call('ZADD', order, redis.call('INCR', seq), key)
  end
  redis.call('HSET', data, key, new)
  if want_old then olds[#olds + 1] = old end
  if notify then
    local event = prefix .. cjson.encode(key)
    if old then event = event .. ',"old":' .. old end
    events[#events + 1] = event .. ',"new":' .. new .. '}'
  end
end
if #events > 0 then
  redis.call('PUBLISH', channel, '[' .. table.concat(events, ',') .. ']')
end
return olds
"#;

/// Hashmap delete / remove. KEYS: data, order. ARGV: channel, event prefix, key.
/// Returns the removed value (nil: absent).
const HASHMAP_DELETE: &str = r#"
local data, order = KEYS[1], KEYS[2]
local channel, prefix, key = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', data, key)
if not old then return false end
redis.call('HDEL', data, key)
redis.call('ZREM', order, key)
if listened(channel) then
  redis.call('PUBLISH', channel, '[' .. prefix .. cjson.encode(key) .. ',"old":' .. old .. '}]')
end
return old
"#;

/// Reads the values of `keys` (in insertion order) in chunks (Lua's `unpack` has a limit)
/// and calls `each(key, value)` for every key that has a value.
const EACH_ENTRY: &str = r#"
local function each_entry(data, keys, each)
  for i = 1, #keys, 1000 do
    local j = math.min(i + 999, #keys)
    local values = redis.call('HMGET', data, unpack(keys, i, j))
    for x = 1, j - i + 1 do
      if values[x] then each(keys[i + x - 1], values[x]) end
    end
  end
end
"#;

/// Hashmap clear. KEYS: data, order. ARGV: channel, event prefix. One event per removed
/// key, in insertion order. Returns the number of removed keys.
const HASHMAP_CLEAR: &str = r#"
local data, order = KEYS[1], KEYS[2]
local channel, prefix = ARGV[1], ARGV[2]
local keys = redis.call('ZRANGE', order, 0, -1)
if #keys > 0 and listened(channel) then
  local events = {}
  each_entry(data, keys, function(key, old)
    events[#events + 1] = prefix .. cjson.encode(key) .. ',"old":' .. old .. '}'
  end)
  if #events > 0 then
    redis.call('PUBLISH', channel, '[' .. table.concat(events, ',') .. ']')
  end
end
redis.call('DEL', data, order)
return #keys
"#;

/// Hashmap entries. KEYS: data, order. Returns key, value, key, value, … in insertion
/// order.
const HASHMAP_ENTRIES: &str = r#"
local out = {}
each_entry(KEYS[1], redis.call('ZRANGE', KEYS[2], 0, -1), function(key, value)
  out[#out + 1] = key
  out[#out + 1] = value
end)
return out
"#;

/// Ledger insert (upsert by identifier). KEYS: value, keys, order, seq. ARGV: identifier,
/// keys (JSON array), value (encoded). A new identifier goes last; an existing one keeps
/// its place.
const LEDGER_INSERT: &str = r#"
local values, keys, order, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
if redis.call('HEXISTS', values, id) == 0 then
  redis.call('ZADD', order, redis.call('INCR', seq), id)
end
redis.call('HSET', values, id, ARGV[3])
redis.call('HSET', keys, id, ARGV[2])
return 1
"#;

/// Ledger update of the value or of the keys of an existing entry. KEYS: value (tells
/// whether the entry exists), target hash. ARGV: identifier, new text. Returns 1 when the
/// entry existed.
const LEDGER_UPDATE: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"#;

/// Ledger delete. KEYS: value, keys, order. ARGV: identifier. Returns 1 when it existed.
const LEDGER_DELETE: &str = r#"
local removed = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return removed
"#;

/// Ledger entries. KEYS: value, keys, order. Returns identifier, keys, value, … in
/// insertion order.
const LEDGER_ENTRIES: &str = r#"
local ids = redis.call('ZRANGE', KEYS[3], 0, -1)
local out = {}
for i = 1, #ids, 1000 do
  local j = math.min(i + 999, #ids)
  local values = redis.call('HMGET', KEYS[1], unpack(ids, i, j))
  local keys = redis.call('HMGET', KEYS[2], unpack(ids, i, j))
  for x = 1, j - i + 1 do
    if values[x] then
      out[#out + 1] = ids[i + x - 1]
      out[#out + 1] = keys[x] or '[]'
      out[#out + 1] = values[x]
    end
  end
end
return out
"#;

/// Memory append with its window. KEYS: list. ARGV: message (JSON), max messages (empty:
/// no limit).
const MEMORY_APPEND: &str = r#"
redis.call('RPUSH', KEYS[1], ARGV[1])
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
elseif ARGV[2] ~= '' then
  redis.call('LTRIM', KEYS[1], '-' .. ARGV[2], -1)
end
return 1
"#;

/// Put before a writing script's source for a fenced batch (a journal record with a lease
/// epoch): the batch's fence key is the last of `KEYS` and the epoch the last of `ARGV`,
/// both taken off before the script proper reads them. Every command of a fenced
/// transaction checks the fence, and nothing runs between them, so either all of them see
/// the epoch and write or none does.
pub(crate) const FENCE_PRELUDE: &str = r#"
local fence_key = table.remove(KEYS)
local fence_epoch = table.remove(ARGV)
local fence_stands = redis.call('GET', fence_key)
if fence_stands ~= fence_epoch then
  return redis.error_reply('FENCED ' .. (fence_stands or 'never'))
end
"#;

/// Fenced `DEL` of every key (after [`FENCE_PRELUDE`]).
pub(crate) const DELETE_KEYS: &str = r#"
for i = 1, #KEYS do redis.call('DEL', KEYS[i]) end
return 1
"#;

/// Fenced `RPUSH` of `ARGV[1]` onto `KEYS[1]` (after [`FENCE_PRELUDE`]).
pub(crate) const PUSH_RECORD: &str = r#"
return redis.call('RPUSH', KEYS[1], ARGV[1])
"#;

/// Raises the fence `KEYS[1]` to `ARGV[1]`; refused when it stands higher.
pub(crate) const RAISE_FENCE: &str = r#"
local stands = redis.call('GET', KEYS[1])
if stands and tonumber(stands) > tonumber(ARGV[1]) then
  return redis.error_reply('FENCED ' .. stands)
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"#;

/// Every script, compiled once (the SHA1 is computed here; the server learns the scripts
/// when the store connects, and again by itself after `SCRIPT FLUSH` or a restart).
pub(crate) struct Scripts {
    pub(crate) hashmap_set: Script,
    pub(crate) hashmap_delete: Script,
    pub(crate) hashmap_clear: Script,
    pub(crate) hashmap_entries: Script,
    pub(crate) ledger_insert: Script,
    pub(crate) ledger_update: Script,
    pub(crate) ledger_delete: Script,
    pub(crate) ledger_entries: Script,
    pub(crate) memory_append: Script,
    /// The source of the writing scripts, for `apply` (see [`Sources`]).
    pub(crate) sources: Sources,
}

/// The source of each writing script. `apply` sends them with `EVAL` inside `MULTI`/`EXEC`:
/// an `EVALSHA` of a script the server has forgotten (`SCRIPT FLUSH`, a restart) would fail
/// on its own while the rest of the transaction still ran.
pub(crate) struct Sources {
    pub(crate) hashmap_set: String,
    pub(crate) hashmap_delete: String,
    pub(crate) hashmap_clear: String,
    pub(crate) ledger_insert: String,
    pub(crate) ledger_update: String,
    pub(crate) ledger_delete: String,
    pub(crate) memory_append: String,
}

impl Scripts {
    pub(crate) fn new() -> Scripts {
        let with = |parts: &[&str]| Script::new(&parts.concat());
        let sources = Sources {
            hashmap_set: [LISTENED, HASHMAP_SET].concat(),
            hashmap_delete: [LISTENED, HASHMAP_DELETE].concat(),
            hashmap_clear: [LISTENED, EACH_ENTRY, HASHMAP_CLEAR].concat(),
            ledger_insert: LEDGER_INSERT.to_string(),
            ledger_update: LEDGER_UPDATE.to_string(),
            ledger_delete: LEDGER_DELETE.to_string(),
            memory_append: MEMORY_APPEND.to_string(),
        };
        Scripts {
            hashmap_set: with(&[LISTENED, HASHMAP_SET]),
            hashmap_delete: with(&[LISTENED, HASHMAP_DELETE]),
            hashmap_clear: with(&[LISTENED, EACH_ENTRY, HASHMAP_CLEAR]),
            hashmap_entries: with(&[EACH_ENTRY, HASHMAP_ENTRIES]),
            ledger_insert: with(&[LEDGER_INSERT]),
            ledger_update: with(&[LEDGER_UPDATE]),
            ledger_delete: with(&[LEDGER_DELETE]),
            ledger_entries: with(&[LEDGER_ENTRIES]),
            memory_append: with(&[MEMORY_APPEND]),
            sources,
        }
    }

    /// Every script with its name, for loading them at connection time.
    pub(crate) fn all(&self) -> [(&'static str, &Script); 9] {
        [
            ("hashmap set", &self.hashmap_set),
            ("hashmap delete", &self.hashmap_delete),
            ("hashmap clear", &self.hashmap_clear),
            ("hashmap entries", &self.hashmap_entries),
            ("ledger insert", &self.ledger_insert),
            ("ledger update", &self.ledger_update),
            ("ledger delete", &self.ledger_delete),
            ("ledger entries", &self.ledger_entries),
            ("memory append", &self.memory_append),
        ]
    }
}
