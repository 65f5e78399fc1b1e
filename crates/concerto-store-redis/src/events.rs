//! Change events across processes: the subscriber task (a pub/sub connection on the
//! store's runtime) and the dispatcher thread that calls the host's listeners.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use concerto_memory::{ChangeListener, HashMapChange, decode_value};
use concerto_vm::Str;
use concerto_vm::host::HostError;
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use serde_json::Value as J;

use crate::redact::Redactor;

/// Registered listeners: `Some(map)` for one hashmap, `None` for all.
pub(crate) type Listeners = Vec<(Option<u32>, ChangeListener)>;

/// The event side of a store: its listeners, and whether the subscriber runs.
pub(crate) struct Hub {
    pub(crate) listeners: Arc<RwLock<Listeners>>,
    /// Set once the subscriber is running.
    started: Mutex<bool>,
    /// Messages on the channel that could not be decoded.
    pub(crate) malformed: Arc<AtomicU64>,
}

/// What the subscriber needs to connect.
pub(crate) struct SubscriberConfig {
    pub(crate) client: redis::Client,
    pub(crate) channel: String,
    /// The store's hashmap names, by index (to resolve the `map` of a message).
    pub(crate) names: Vec<String>,
    pub(crate) connection_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) redactor: Redactor,
}

impl Hub {
    pub(crate) fn new() -> Hub {
        Hub {
            listeners: Arc::new(RwLock::new(Vec::new())),
            started: Mutex::new(false),
            malformed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Adds a listener; the first one starts the subscriber and waits until it is
    /// subscribed, so every change made after this returns is delivered (at most once).
    pub(crate) fn add(
        &self,
        filter: Option<u32>,
        listener: ChangeListener,
        runtime: &tokio::runtime::Handle,
        config: impl FnOnce() -> SubscriberConfig,
    ) -> Result<(), HostError> {
        let mut started = self.started.lock();
        if !*started {
            self.start(runtime, config())?;
            *started = true;
        }
        self.listeners.write().push((filter, listener));
        Ok(())
    }

    fn start(
        &self,
        runtime: &tokio::runtime::Handle,
        config: SubscriberConfig,
    ) -> Result<(), HostError> {
        let (changes_tx, changes_rx) = mpsc::channel::<Vec<HashMapChange>>();
        let listeners = self.listeners.clone();
        std::thread::Builder::new()
            .name("concerto-redis-events".into())
            .spawn(move || {
                // Ends when the subscriber task ends (the store was dropped).
                while let Ok(changes) = changes_rx.recv() {
                    let listeners = listeners.read().clone();
                    dispatch(&listeners, &changes);
                }
            })
            .map_err(|e| {
                HostError::failed(format!(
                    "redis store: cannot start the change-event thread: {e}"
                ))
            })?;
        let (ready_tx, ready_rx) = mpsc::sync_channel::<Result<(), String>>(1);
        let wait = config.connection_timeout + config.response_timeout + Duration::from_secs(1);
        let url = config.redactor.url().to_string();
        let channel = config.channel.clone();
        runtime.spawn(subscribe_loop(
            config,
            changes_tx,
            ready_tx,
            self.malformed.clone(),
        ));
        match ready_rx.recv_timeout(wait) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HostError::failed(format!(
                "redis store ({url}): cannot subscribe to change events on channel \
                 '{channel}': {e}"
            ))),
            Err(_) => Err(HostError {
                kind: concerto_vm::host::HostErrorKind::Timeout,
                message: format!(
                    "redis store ({url}): subscribing to change events on channel '{channel}' \
                     did not complete within {} ms",
                    wait.as_millis()
                ),
                provider: None,
            }),
        }
    }
}

/// Connects, subscribes (reporting the first outcome on `ready`), forwards every message to
/// the dispatcher, and reconnects (with growing delays) whenever the connection is lost,
/// until the store's runtime shuts down or the dispatcher is gone.
async fn subscribe_loop(
    config: SubscriberConfig,
    changes: mpsc::Sender<Vec<HashMapChange>>,
    ready: mpsc::SyncSender<Result<(), String>>,
    malformed: Arc<AtomicU64>,
) {
    let mut ready = Some(ready);
    let mut delay = Duration::from_millis(100);
    loop {
        match subscribe(&config).await {
            Ok(pubsub) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Ok(()));
                }
                delay = Duration::from_millis(100);
                let mut stream = pubsub.into_on_message();
                while let Some(msg) = stream.next().await {
                    match decode_message(msg.get_payload_bytes(), &config.names) {
                        Ok(batch) => {
                            if changes.send(batch).is_err() {
                                return;
                            }
                        }
                        Err(_) => {
                            malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(e) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(Err(e));
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn subscribe(config: &SubscriberConfig) -> Result<redis::aio::PubSub, String> {
    let scrub = |e: redis::RedisError| config.redactor.scrub(&e.to_string());
    let mut pubsub =
        tokio::time::timeout(config.connection_timeout, config.client.get_async_pubsub())
            .await
            .map_err(|_| {
                format!(
                    "no connection within {} ms",
                    config.connection_timeout.as_millis()
                )
            })?
            .map_err(scrub)?;
    tokio::time::timeout(
        config.response_timeout,
        pubsub.subscribe(config.channel.as_str()),
    )
    .await
    .map_err(|_| {
        format!(
            "no answer to SUBSCRIBE within {} ms",
            config.response_timeout.as_millis()
        )
    })?
    .map_err(scrub)?;
    Ok(pubsub)
}

/// Decodes one message: a JSON array of changes (see the crate documentation).
pub(crate) fn decode_message(
    payload: &[u8],
    names: &[String],
) -> Result<Vec<HashMapChange>, String> {
    let json: J = serde_json::from_slice(payload).map_err(|e| format!("invalid JSON: {e}"))?;
    let J::Array(items) = json else {
        return Err("not a JSON array".into());
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let J::Object(obj) = item else {
            return Err("a change is not a JSON object".into());
        };
        let name = obj
            .get("map")
            .and_then(J::as_str)
            .ok_or("a change has no map name")?;
        let index = obj
            .get("index")
            .and_then(J::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .ok_or("a change has no map index")?;
        let key = obj
            .get("key")
            .and_then(J::as_str)
            .ok_or("a change has no key")?;
        let value = |field: &str| {
            obj.get(field)
                .map(|v| decode_value(v).map_err(|e| e.message))
                .transpose()
        };
        let old = value("old")?;
        let new = value("new")?;
        let map = names
            .iter()
            .position(|n| n == name)
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(index);
        out.push(HashMapChange {
            map,
            name: name.to_string(),
            key: Str::from(key),
            old,
            new,
        });
    }
    Ok(out)
}

/// Calls every matching listener for every change, in order. A panicking listener is
/// caught; the others still run.
fn dispatch(listeners: &Listeners, changes: &[HashMapChange]) {
    for change in changes {
        for (filter, listener) in listeners {
            if filter.is_none_or(|m| m == change.map) {
                // Nothing is shared mutably with the listener.
                let _ = catch_unwind(AssertUnwindSafe(|| listener(change)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concerto_vm::Value;

    #[test]
    fn messages_decode_with_absent_and_nil_values_distinct() {
        let names = vec!["a".to_string(), "b".to_string()];
        let msg = br#"[{"map":"b","index":7,"key":"k\/1","new":null},
                      {"map":"zz","index":3,"key":"x","old":{"$some":1},"new":2}]"#;
        let changes = decode_message(msg, &names).unwrap();
        assert_eq!(changes.len(), 2);
        assert_eq!(changes[0].map, 1);
        assert_eq!(changes[0].key.as_str(), "k/1");
        assert!(changes[0].old.is_none());
        assert!(matches!(changes[0].new, Some(Value::Nil)));
        assert_eq!(changes[1].map, 3);
        assert!(matches!(changes[1].old, Some(Value::Some(_))));
        assert!(decode_message(b"{}", &names).is_err());
        assert!(decode_message(b"[{\"map\":\"a\"}]", &names).is_err());
    }
}
