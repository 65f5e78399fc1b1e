//! A run queue on Redis Streams: programs submitted as runs, taken by a pool of workers
//! through one consumer group, each run held under a renewed lease with an epoch (a fencing
//! token), claimed by another worker (`XAUTOCLAIM`) when its worker stops renewing, and
//! dead-lettered after too many lost leases.
//!
//! # Keys
//! Every key starts with `concerto-queue:<name>:` (the name escaped as store key components):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `runs` | stream, consumer group `workers` | one entry per run waiting or held (`run` = id) |
//! | `program:<sha256>` | string | a program's IR, shared by every run of it |
//! | `run:<id>` | hash | `program`, `env` (JSON), `state`, `attempts`, `epoch`, `worker`, `entry`, `result`, `error`, times |
//! | `run:<id>:emits` | stream | the run's emits (`kind=emit`, `channel`, `payload`) and its end (`kind=end`, `state`, `result`, `error`) |
//! | `run:<id>:emitted` | hash | the keys of the emits appended (each emit once) |
//! | `queued`, `running` | sets | run ids by state |
//! | `done`, `failed`, `dead` | sorted sets | finished run ids by finishing time (ms) |
//! | `dead-letter` | stream | one entry per dead-lettered run (`run`, `error`) |
//!
//! # A run's life
//! `submit` adds the run (`queued`). A worker reads the entry (`XREADGROUP`) or claims it
//! from a worker that stopped renewing (`XAUTOCLAIM` with the lease time as minimum idle
//! time), then `acquire`s it: the run's `attempts` and `epoch` go up by one and it is
//! `running` under that worker — unless it has been taken more often than the attempts
//! allowed, when it is `dead` and goes to the dead-letter stream. Its worker renews the lease
//! (resets the entry's idle time) while the epoch is still its own, appends emits under the
//! epoch, and `finish`es it (`done` or `failed`, result kept for a while) or hands it back
//! (`queued` again, the attempt not counted). Every one of these steps is one script that
//! first checks the epoch, so a worker that was only paused cannot change a run another
//! worker took over; the state store's fence ([`JournalStore::journal_fence`]) does the same
//! for the run's journal and store writes.
//!
//! [`JournalStore::journal_fence`]: concerto_vm::host::JournalStore::journal_fence

mod scripts;

use std::collections::BTreeMap;
use std::time::Duration;

use concerto_vm::host::HostError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisError};
use sha2::Digest;

use crate::keys::component;
use crate::redact::Redactor;

/// An `XREAD`/`XREADGROUP` reply: per stream, its entries (id, flat field/value list).
type StreamsReply = Option<Vec<(String, Vec<(String, Vec<String>)>)>>;

/// The consumer group every worker reads through.
pub const GROUP: &str = "workers";

/// Where a queue lives: a Redis server (and database) and the queue's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueAddress {
    /// The server's URL, without the queue name (`redis://host:port/db`).
    pub url: String,
    /// The queue's name (`default` when the address names none).
    pub name: String,
}

impl QueueAddress {
    /// `redis://HOST:PORT[/DB[/NAME]]` (also `rediss://`): a path of two parts names the
    /// database and the queue.
    ///
    /// ```
    /// use concerto_store_redis::queue::QueueAddress;
    /// let a = QueueAddress::parse("redis://127.0.0.1:6379/2/mail").unwrap();
    /// assert_eq!((a.url.as_str(), a.name.as_str()), ("redis://127.0.0.1:6379/2", "mail"));
    /// let b = QueueAddress::parse("redis://127.0.0.1:6379/0").unwrap();
    /// assert_eq!(b.name, "default");
    /// assert!(QueueAddress::parse("postgres://x").is_err());
    /// ```
    ///
    /// # Errors
    /// Not a `redis://` or `rediss://` URL, or a path of more than two parts.
    pub fn parse(text: &str) -> Result<QueueAddress, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err("a queue is a redis://HOST:PORT/DB[/NAME] URL".into());
        };
        if scheme != "redis" && scheme != "rediss" {
            return Err(format!(
                "a queue is a redis://HOST:PORT/DB[/NAME] URL, not a `{scheme}://` one"
            ));
        }
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let (db, name) = match parts.as_slice() {
            [] => ("0", "default"),
            [db] => (*db, "default"),
            [db, name] => (*db, *name),
            _ => return Err("a queue URL's path is /DB or /DB/NAME".into()),
        };
        if db.parse::<u32>().is_err() {
            return Err(format!(
                "a queue URL's path is /DB or /DB/NAME, with DB a number (not `{db}`)"
            ));
        }
        Ok(QueueAddress {
            url: format!("{scheme}://{authority}/{db}"),
            name: name.to_string(),
        })
    }
}

/// A run's state in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RunState {
    /// Waiting for a worker (or handed back).
    Queued,
    /// Held by a worker.
    Running,
    /// Ended: `main` returned.
    Done,
    /// Ended with an uncaught program error (not retried: it would fail again).
    Failed,
    /// Dead-lettered: its lease was lost more often than the attempts allowed.
    Dead,
}

impl RunState {
    /// The state's name as stored.
    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Option<RunState> {
        Some(match text {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "done" => RunState::Done,
            "failed" => RunState::Failed,
            "dead" => RunState::Dead,
            _ => return None,
        })
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(self, RunState::Done | RunState::Failed | RunState::Dead)
    }
}

/// What the queue records of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunInfo {
    /// Its state.
    pub state: RunState,
    /// How many times a worker took it (a hand-back is not counted).
    pub attempts: u64,
    /// The worker holding it (running) or that held it last.
    pub worker: String,
    /// `main`'s value as JSON (done).
    pub result: Option<serde_json::Value>,
    /// The error (failed, dead).
    pub error: Option<String>,
}

/// One event of a run's stream ([`Queue::events`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// An emit.
    Emit {
        /// Its channel.
        channel: String,
        /// Its payload.
        payload: serde_json::Value,
    },
    /// The run's end; nothing follows.
    End {
        /// Done, failed or dead.
        state: RunState,
        /// `main`'s value (done).
        result: Option<serde_json::Value>,
        /// The error (failed, dead).
        error: Option<String>,
    },
}

/// A run a worker took: hold it by renewing ([`Queue::renew`]) and end it with
/// [`Queue::finish`] or [`Queue::hand_back`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// The run's id.
    pub run: String,
    /// Its stream entry.
    pub entry: String,
    /// The lease epoch (the fencing token of every write of this holder).
    pub epoch: u64,
    /// Which attempt this is (1 for the first).
    pub attempt: u64,
    /// The program's hash ([`Queue::program`]).
    pub program: String,
    /// The variables the submitter gave the run.
    pub env: Vec<(String, String)>,
}

/// How a run ended, for [`Queue::finish`].
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `main` returned this value.
    Done(serde_json::Value),
    /// An uncaught program error.
    Failed(String),
}

/// Counts of a queue ([`Queue::stats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Runs waiting for a worker.
    pub queued: u64,
    /// Runs held by a worker.
    pub running: u64,
    /// Runs done (within the time results are kept).
    pub done: u64,
    /// Runs failed (within the time results are kept).
    pub failed: u64,
    /// Runs dead-lettered (within the time results are kept).
    pub dead: u64,
    /// Running runs by worker.
    pub by_worker: BTreeMap<String, u64>,
}

/// The keys of one queue.
#[derive(Debug, Clone)]
struct Keys {
    base: String,
}

impl Keys {
    fn key(&self, part: &str) -> String {
        format!("{}:{part}", self.base)
    }
    fn run(&self, run: &str) -> String {
        format!("{}:run:{}", self.base, component(run))
    }
    fn emits(&self, run: &str) -> String {
        format!("{}:emits", self.run(run))
    }
    fn emitted(&self, run: &str) -> String {
        format!("{}:emitted", self.run(run))
    }
    fn program(&self, hash: &str) -> String {
        format!("{}:program:{hash}", self.base)
    }
}

/// A client of one queue: submits and watches runs, and is what workers take runs with.
/// Its operations run on the caller's tokio runtime.
#[derive(Clone)]
pub struct Queue {
    conn: ConnectionManager,
    /// The connection [`Queue::take`] blocks on (one per client, kept between calls).
    taking: std::sync::Arc<tokio::sync::Mutex<Option<MultiplexedConnection>>>,
    client: redis::Client,
    keys: Keys,
    redactor: Redactor,
    name: String,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("url", &self.redactor.url())
            .field("name", &self.name)
            .finish()
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Queue {
    /// Connects to the queue at `address` (see [`QueueAddress::parse`]) and makes sure its
    /// stream and consumer group exist.
    ///
    /// # Errors
    /// A bad address, or a server that cannot be reached.
    pub async fn connect(address: &str) -> Result<Queue, HostError> {
        let address = QueueAddress::parse(address).map_err(HostError::failed)?;
        let redactor = Redactor::new(&address.url);
        let client = redis::Client::open(address.url.as_str()).map_err(|e| {
            HostError::failed(format!(
                "queue at {}: {}",
                redactor.url(),
                redactor.scrub(&e.to_string())
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(30)))
            .set_number_of_retries(6);
        let conn = tokio::time::timeout(
            Duration::from_secs(15),
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| {
            HostError::failed(format!(
                "queue at {}: no connection within 15 s",
                redactor.url()
            ))
        })?
        .map_err(|e| {
            HostError::failed(format!(
                "queue at {}: cannot connect: {}",
                redactor.url(),
                redactor.scrub(&e.to_string())
            ))
        })?;
        let queue = Queue {
            conn,
            taking: std::sync::Arc::default(),
            client,
            keys: Keys {
                base: format!("concerto-queue:{}", component(&address.name)),
            },
            redactor,
            name: address.name,
        };
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(queue.keys.key("runs"))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut queue.conn.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => {
                return Err(queue.fail("creating the consumer group", &e));
            }
            _ => {}
        }
        Ok(queue)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fail(&self, what: &str, err: &RedisError) -> HostError {
        let kind = if err.is_timeout() {
            concerto_vm::host::HostErrorKind::Timeout
        } else {
            concerto_vm::host::HostErrorKind::Failed
        };
        HostError {
            kind,
            message: format!(
                "queue `{}` at {}: {what}: {}",
                self.name,
                self.redactor.url(),
                self.redactor.scrub(&err.to_string())
            ),
            provider: None,
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, HostError> {
        cmd.query_async(&mut self.conn.clone())
            .await
            .map_err(|e| self.fail(what, &e))
    }

    /// `EVAL script keys… args…`
    fn eval(script: &str, keys: &[String]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for key in keys {
            cmd.arg(key);
        }
        cmd
    }

    /// Enqueues a run of the program `ir` with the variables `env` (the worker's sandbox
    /// decides which the program may read) and returns its id. The program is stored once
    /// by its SHA-256, however many runs use it.
    ///
    /// # Errors
    /// The server's.
    pub async fn submit(&self, ir: &[u8], env: &[(String, String)]) -> Result<String, HostError> {
        let hash: String = sha2::Sha256::digest(ir)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let program_key = self.keys.program(&hash);
        let exists: bool = self
            .query(
                "storing the program",
                redis::cmd("EXISTS").arg(&program_key),
            )
            .await?;
        if !exists {
            let _: () = self
                .query(
                    "storing the program",
                    redis::cmd("SET").arg(&program_key).arg(ir).arg("NX"),
                )
                .await?;
        }
        let mut id_bytes = [0u8; 8];
        getrandom::fill(&mut id_bytes)
            .map_err(|e| HostError::failed(format!("no randomness for a run id: {e}")))?;
        let run: String = id_bytes.iter().map(|b| format!("{b:02x}")).collect();
        let env: serde_json::Map<String, serde_json::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut cmd = Self::eval(
            scripts::SUBMIT,
            &[
                self.keys.run(&run),
                self.keys.key("runs"),
                self.keys.key("queued"),
            ],
        );
        cmd.arg(&run)
            .arg(&hash)
            .arg(serde_json::Value::Object(env).to_string())
            .arg(now_ms());
        let _: String = self.query("submitting a run", &cmd).await?;
        Ok(run)
    }

    /// A program's IR by its hash.
    ///
    /// # Errors
    /// The server's, or no such program.
    pub async fn program(&self, hash: &str) -> Result<Vec<u8>, HostError> {
        let ir: Option<Vec<u8>> = self
            .query(
                "reading a program",
                redis::cmd("GET").arg(self.keys.program(hash)),
            )
            .await?;
        ir.ok_or_else(|| HostError::failed(format!("queue `{}`: no program {hash}", self.name)))
    }

    /// What the queue records of run `run` (`None`: unknown, or its result has expired).
    ///
    /// # Errors
    /// The server's.
    pub async fn run_info(&self, run: &str) -> Result<Option<RunInfo>, HostError> {
        let fields: Vec<Option<String>> = self
            .query(
                "reading a run",
                redis::cmd("HMGET")
                    .arg(self.keys.run(run))
                    .arg("state")
                    .arg("attempts")
                    .arg("worker")
                    .arg("result")
                    .arg("error"),
            )
            .await?;
        let Some(state) = fields
            .first()
            .cloned()
            .flatten()
            .and_then(|s| RunState::parse(&s))
        else {
            return Ok(None);
        };
        let text = |i: usize| fields.get(i).cloned().flatten().filter(|s| !s.is_empty());
        Ok(Some(RunInfo {
            state,
            attempts: text(1).and_then(|a| a.parse().ok()).unwrap_or(0),
            worker: text(2).unwrap_or_default(),
            result: text(3).and_then(|r| serde_json::from_str(&r).ok()),
            error: text(4),
        }))
    }

    /// The events of run `run`'s stream after the event id `after` (`0` for all), waiting
    /// up to `block` for the first when there is none yet. Returns them with their ids.
    ///
    /// # Errors
    /// The server's.
    pub async fn events(
        &self,
        run: &str,
        after: &str,
        block: Duration,
    ) -> Result<Vec<(String, RunEvent)>, HostError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(500);
        if !block.is_zero() {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(self.keys.emits(run)).arg(after);
        // A blocking read gets a connection of its own (it would hold up every other
        // command on the shared one).
        let reply: StreamsReply = if block.is_zero() {
            self.query("reading a run's events", &cmd).await?
        } else {
            let mut conn = self.blocking_connection(block).await?;
            cmd.query_async(&mut conn)
                .await
                .map_err(|e| self.fail("reading a run's events", &e))?
        };
        let mut events = Vec::new();
        for (_, entries) in reply.unwrap_or_default() {
            for (id, flat) in entries {
                let fields: BTreeMap<&str, &str> = flat
                    .chunks(2)
                    .filter_map(|kv| Some((kv.first()?.as_str(), kv.get(1)?.as_str())))
                    .collect();
                let get = |k: &str| fields.get(k).copied().unwrap_or_default();
                let event = match get("kind") {
                    "emit" => RunEvent::Emit {
                        channel: get("channel").to_string(),
                        payload: serde_json::from_str(get("payload"))
                            .unwrap_or(serde_json::Value::Null),
                    },
                    _ => RunEvent::End {
                        state: RunState::parse(get("state")).unwrap_or(RunState::Failed),
                        result: Some(get("result"))
                            .filter(|r| !r.is_empty())
                            .and_then(|r| serde_json::from_str(r).ok()),
                        error: Some(get("error"))
                            .filter(|e| !e.is_empty())
                            .map(str::to_string),
                    },
                };
                events.push((id, event));
            }
        }
        Ok(events)
    }

    /// A connection of its own for one blocking command.
    async fn blocking_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, HostError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(block + Duration::from_secs(10)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.fail("connecting", &e))
    }

    /// The queue's counts; finished runs older than `keep` are dropped from the counts (and
    /// their records have expired).
    ///
    /// # Errors
    /// The server's.
    pub async fn stats(&self, keep: Duration) -> Result<QueueStats, HostError> {
        let cutoff = now_ms().saturating_sub(keep.as_millis() as u64);
        let mut stats = QueueStats::default();
        for (zset, slot) in [
            ("done", &mut stats.done),
            ("failed", &mut stats.failed),
            ("dead", &mut stats.dead),
        ] {
            let key = self.keys.key(zset);
            let _: i64 = self
                .query(
                    "pruning finished runs",
                    redis::cmd("ZREMRANGEBYSCORE")
                        .arg(&key)
                        .arg("-inf")
                        .arg(format!("({cutoff}")),
                )
                .await?;
            *slot = self
                .query("counting runs", redis::cmd("ZCARD").arg(&key))
                .await?;
        }
        stats.queued = self
            .query(
                "counting runs",
                redis::cmd("SCARD").arg(self.keys.key("queued")),
            )
            .await?;
        let running: Vec<String> = self
            .query(
                "counting runs",
                redis::cmd("SMEMBERS").arg(self.keys.key("running")),
            )
            .await?;
        stats.running = running.len() as u64;
        for run in running {
            let worker: Option<String> = self
                .query(
                    "counting runs",
                    redis::cmd("HGET").arg(self.keys.run(&run)).arg("worker"),
                )
                .await?;
            *stats
                .by_worker
                .entry(worker.unwrap_or_default())
                .or_default() += 1;
        }
        Ok(stats)
    }

    /// Takes up to `max` runs for `worker`: first runs whose worker has not renewed its
    /// lease for `lease` (claimed from it), then new ones, waiting up to `block` for them.
    /// A run taken more than `max_attempts` times is dead-lettered instead (its record kept
    /// for `keep`).
    ///
    /// # Errors
    /// The server's.
    pub async fn take(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
        max_attempts: u64,
        block: Duration,
        keep: Duration,
    ) -> Result<Vec<Taken>, HostError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let stream = self.keys.key("runs");
        let claimed: (String, Vec<(String, Vec<String>)>, redis::Value) = self
            .query(
                "claiming stale runs",
                redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(worker)
                    .arg(lease.as_millis() as u64)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(max),
            )
            .await?;
        let mut entries = claimed.1;
        if entries.len() < max {
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(worker)
                .arg("COUNT")
                .arg(max - entries.len());
            if !block.is_zero() {
                cmd.arg("BLOCK").arg(block.as_millis() as u64);
            }
            cmd.arg("STREAMS").arg(&stream).arg(">");
            let mut taking = self.taking.lock().await;
            let mut conn = match taking.take() {
                Some(conn) => conn,
                None => self.blocking_connection(block).await?,
            };
            let fresh: StreamsReply = cmd
                .query_async(&mut conn)
                .await
                .map_err(|e| self.fail("reading new runs", &e))?;
            // Kept for the next call only after it answered (a broken one is replaced).
            *taking = Some(conn);
            for (_, got) in fresh.unwrap_or_default() {
                entries.extend(got);
            }
        }
        let mut taken = Vec::new();
        for (entry, fields) in entries {
            let run = fields
                .chunks(2)
                .find(|kv| kv.first().map(String::as_str) == Some("run"))
                .and_then(|kv| kv.get(1).cloned())
                .unwrap_or_default();
            if let Some(t) = self
                .acquire(&run, &entry, worker, (max_attempts, keep), &stream)
                .await?
            {
                taken.push(t);
            }
        }
        Ok(taken)
    }

    async fn acquire(
        &self,
        run: &str,
        entry: &str,
        worker: &str,
        (max_attempts, keep): (u64, Duration),
        stream: &str,
    ) -> Result<Option<Taken>, HostError> {
        let mut cmd = Self::eval(
            scripts::ACQUIRE,
            &[
                self.keys.run(run),
                self.keys.key("queued"),
                self.keys.key("running"),
                stream.to_string(),
                self.keys.key("dead"),
                self.keys.key("dead-letter"),
                self.keys.emits(run),
            ],
        );
        cmd.arg(run)
            .arg(entry)
            .arg(worker)
            .arg(now_ms())
            .arg(max_attempts)
            .arg(GROUP)
            .arg(keep.as_millis().max(1) as u64);
        let reply: Vec<redis::Value> = self.query("taking a run", &cmd).await?;
        let text = |i: usize| -> String {
            reply
                .get(i)
                .and_then(|v| redis::from_redis_value::<String>(v.clone()).ok())
                .unwrap_or_default()
        };
        if text(0) != "run" {
            return Ok(None);
        }
        let number = |i: usize| text(i).parse::<u64>().unwrap_or(0);
        let env: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text(4)).unwrap_or_default();
        Ok(Some(Taken {
            run: run.to_string(),
            entry: entry.to_string(),
            epoch: number(1),
            attempt: number(2),
            program: text(3),
            env: env
                .into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                .collect(),
        }))
    }

    /// Renews the lease on `taken`; `false` when it is no longer this holder's.
    ///
    /// # Errors
    /// The server's.
    pub async fn renew(&self, taken: &Taken, worker: &str) -> Result<bool, HostError> {
        let mut cmd = Self::eval(
            scripts::RENEW,
            &[self.keys.run(&taken.run), self.keys.key("runs")],
        );
        cmd.arg(taken.epoch)
            .arg(GROUP)
            .arg(worker)
            .arg(&taken.entry);
        let renewed: i64 = self.query("renewing a lease", &cmd).await?;
        Ok(renewed == 1)
    }

    /// Records how `taken` ended, keeping the record for `keep`; `false` (nothing recorded)
    /// when the run is no longer this holder's.
    ///
    /// # Errors
    /// The server's.
    pub async fn finish(
        &self,
        taken: &Taken,
        outcome: &Outcome,
        keep: Duration,
    ) -> Result<bool, HostError> {
        let (state, result, error) = match outcome {
            Outcome::Done(value) => ("done", value.to_string(), String::new()),
            Outcome::Failed(error) => ("failed", String::new(), error.clone()),
        };
        let mut cmd = Self::eval(
            scripts::FINISH,
            &[
                self.keys.run(&taken.run),
                self.keys.key("running"),
                self.keys.key(state),
                self.keys.key("runs"),
                self.keys.emits(&taken.run),
                self.keys.emitted(&taken.run),
            ],
        );
        cmd.arg(taken.epoch)
            .arg(state)
            .arg(result)
            .arg(error)
            .arg(now_ms())
            .arg(GROUP)
            .arg(&taken.entry)
            .arg(keep.as_millis().max(1) as u64)
            .arg(&taken.run);
        let finished: i64 = self.query("recording a run's end", &cmd).await?;
        Ok(finished == 1)
    }

    /// Hands `taken` back to the queue (another worker takes it and resumes it from its
    /// journal); the attempt is not counted. `false` when it was no longer this holder's.
    ///
    /// # Errors
    /// The server's.
    pub async fn hand_back(&self, taken: &Taken) -> Result<bool, HostError> {
        let mut cmd = Self::eval(
            scripts::HAND_BACK,
            &[
                self.keys.run(&taken.run),
                self.keys.key("running"),
                self.keys.key("queued"),
                self.keys.key("runs"),
            ],
        );
        cmd.arg(taken.epoch)
            .arg(GROUP)
            .arg(&taken.entry)
            .arg(&taken.run);
        let handed: i64 = self.query("handing a run back", &cmd).await?;
        Ok(handed == 1)
    }

    /// Appends an emit of `taken` to the run's stream (once per `key`, when given).
    ///
    /// # Errors
    /// [`HostErrorKind::Fenced`](concerto_vm::host::HostErrorKind::Fenced) when the run is
    /// no longer this holder's; the server's.
    pub async fn emit(
        &self,
        run: &str,
        epoch: u64,
        key: Option<&str>,
        channel: &str,
        payload: &str,
    ) -> Result<(), HostError> {
        let mut cmd = Self::eval(
            scripts::EMIT,
            &[
                self.keys.run(run),
                self.keys.emits(run),
                self.keys.emitted(run),
            ],
        );
        cmd.arg(epoch)
            .arg(key.unwrap_or_default())
            .arg(channel)
            .arg(payload);
        let appended: Result<i64, RedisError> = cmd.query_async(&mut self.conn.clone()).await;
        match appended {
            Ok(_) => Ok(()),
            Err(e) if e.to_string().contains("FENCED") => Err(HostError::fenced(format!(
                "run '{run}': an emit of lease epoch {epoch} was refused: another worker holds \
                 the run"
            ))),
            Err(e) => Err(self.fail("appending an emit", &e)),
        }
    }
}
