//! The queue's Lua scripts. Each is one atomic step of a run's life; every step a worker
//! takes on a run it holds checks the run's lease epoch first, so a worker whose run was
//! claimed by another can no longer change it.

/// Submits a run. KEYS: run hash, runs stream, queued set. ARGV: run id, program hash,
/// env JSON, now (ms). Returns the stream entry id.
pub(crate) const SUBMIT: &str = r#"
local entry = redis.call('XADD', KEYS[2], '*', 'run', ARGV[1])
redis.call('HSET', KEYS[1], 'program', ARGV[2], 'env', ARGV[3], 'state', 'queued',
  'attempts', 0, 'epoch', 0, 'entry', entry, 'submitted_ms', ARGV[4])
redis.call('SADD', KEYS[3], ARGV[1])
return entry
"#;

/// A worker takes a run it got from the stream (new or claimed). KEYS: run hash, queued,
/// running, runs stream, dead zset, dead-letter stream, run's emits stream. ARGV: run id,
/// entry id, worker, now, max attempts, group, keep (ms: how long a dead run's record stays).
/// Returns `{}` (nothing to run: the run is gone or already over; the entry is acked),
/// `{'dead', attempts}` (dead-lettered now), or `{'run', epoch, attempts, program, env}`.
pub(crate) const ACQUIRE: &str = r#"
local run, entry, worker, now, max = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local state = redis.call('HGET', KEYS[1], 'state')
if (not state) or state == 'done' or state == 'failed' or state == 'dead' then
  redis.call('XACK', KEYS[4], ARGV[6], entry)
  return {}
end
if redis.call('HGET', KEYS[1], 'entry') ~= entry then
  -- An entry the run no longer uses (it was handed back under a new one).
  redis.call('XACK', KEYS[4], ARGV[6], entry)
  return {}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts > max then
  local why = 'lease lost ' .. (attempts - 1) .. ' times (max attempts ' .. max .. ')'
  redis.call('HSET', KEYS[1], 'state', 'dead', 'error', why, 'finished_ms', now, 'worker', '')
  redis.call('HINCRBY', KEYS[1], 'epoch', 1)
  redis.call('SREM', KEYS[2], run)
  redis.call('SREM', KEYS[3], run)
  redis.call('ZADD', KEYS[5], now, run)
  redis.call('XACK', KEYS[4], ARGV[6], entry)
  redis.call('XADD', KEYS[6], '*', 'run', run, 'error', why)
  redis.call('XADD', KEYS[7], '*', 'kind', 'end', 'state', 'dead', 'error', why)
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  redis.call('PEXPIRE', KEYS[7], ARGV[7])
  return {'dead', attempts}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'state', 'running', 'worker', worker, 'started_ms', now)
redis.call('SREM', KEYS[2], run)
redis.call('SADD', KEYS[3], run)
local fields = redis.call('HMGET', KEYS[1], 'program', 'env')
return {'run', epoch, attempts, fields[1], fields[2]}
"#;

/// Renews a lease: resets the entry's idle time. KEYS: run hash, runs stream. ARGV:
/// epoch, group, worker, entry. Returns 1, or 0 when the lease is no longer this one's.
pub(crate) const RENEW: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1]
  or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[3], 0, ARGV[4], 'JUSTID')
return 1
"#;

/// Records a run's end. KEYS: run hash, running set, the state's zset, runs stream, emits
/// stream, emitted-keys hash. ARGV: epoch, state (`done`/`failed`), result JSON or '',
/// error or '', now, group, entry, keep (ms), run id. Returns 1, or 0 when the lease is lost.
pub(crate) const FINISH: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1]
  or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'result', ARGV[3], 'error', ARGV[4],
  'finished_ms', ARGV[5])
redis.call('SREM', KEYS[2], ARGV[9])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[9])
redis.call('XACK', KEYS[4], ARGV[6], ARGV[7])
redis.call('XDEL', KEYS[4], ARGV[7])
redis.call('XADD', KEYS[5], '*', 'kind', 'end', 'state', ARGV[2], 'result', ARGV[3],
  'error', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
redis.call('PEXPIRE', KEYS[5], ARGV[8])
redis.call('DEL', KEYS[6])
return 1
"#;

/// Hands a run back (graceful shutdown): queued again under a new entry, the attempt not
/// counted. KEYS: run hash, running, queued, runs stream. ARGV: epoch, group, entry, run id.
/// Returns 1, or 0 when the lease is lost.
pub(crate) const HAND_BACK: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1]
  or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return 0
end
redis.call('XACK', KEYS[4], ARGV[2], ARGV[3])
redis.call('XDEL', KEYS[4], ARGV[3])
local entry = redis.call('XADD', KEYS[4], '*', 'run', ARGV[4])
redis.call('HSET', KEYS[1], 'state', 'queued', 'worker', '', 'entry', entry)
redis.call('HINCRBY', KEYS[1], 'attempts', -1)
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('SREM', KEYS[2], ARGV[4])
redis.call('SADD', KEYS[3], ARGV[4])
return 1
"#;

/// Appends an emit to a run's stream, once per key. KEYS: run hash, emits stream,
/// emitted-keys hash. ARGV: epoch, key ('' for none), channel, payload JSON.
/// Returns 1 (appended), 0 (that key was appended before); refused (`FENCED`) when the
/// lease is no longer this one's.
pub(crate) const EMIT: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1]
  or redis.call('HGET', KEYS[1], 'state') ~= 'running' then
  return redis.error_reply('FENCED')
end
if ARGV[2] ~= '' and redis.call('HSETNX', KEYS[3], ARGV[2], 1) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', 'kind', 'emit', 'channel', ARGV[3], 'payload', ARGV[4])
return 1
"#;
