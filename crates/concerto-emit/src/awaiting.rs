//! Emit-await: finding the handler, the timeout, and errors that name the channel.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use concerto_vm::Value;
use concerto_vm::host::{BoxFuture, HostError, HostErrorKind};

use crate::{AwaitHandler, Filter, panic_text};

/// Adds `handler` under `filter`, replacing a handler registered under the same filter.
pub(crate) fn register(
    handlers: &mut Vec<(Filter, AwaitHandler)>,
    filter: Filter,
    handler: AwaitHandler,
) {
    let same = handlers.iter_mut().find(|(f, _)| match (f, &filter) {
        (Filter::Channel(a), Filter::Channel(b)) | (Filter::Prefix(a), Filter::Prefix(b)) => a == b,
        _ => false,
    });
    match same {
        Some(slot) => slot.1 = handler,
        None => handlers.push((filter, handler)),
    }
}

/// The handler for `channel`: its own, else the one of the longest matching prefix.
pub(crate) fn find(handlers: &[(Filter, AwaitHandler)], channel: &str) -> Option<AwaitHandler> {
    let exact = handlers.iter().find_map(|(f, h)| match f {
        Filter::Channel(c) if c == channel => Some(h.clone()),
        _ => None,
    });
    exact.or_else(|| {
        handlers
            .iter()
            .filter_map(|(f, h)| match f {
                Filter::Prefix(p) if channel.starts_with(p.as_str()) => Some((p.len(), h)),
                _ => None,
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, h)| h.clone())
    })
}

/// Runs `handler` on `payload` within `timeout`.
pub(crate) fn call(
    channel: &str,
    handler: Option<AwaitHandler>,
    payload: Value,
    timeout: Option<Duration>,
) -> BoxFuture<Result<Value, HostError>> {
    let channel: Arc<str> = Arc::from(channel);
    let Some(handler) = handler else {
        let message = format!(
            "no handler is registered for emit-await on channel `{channel}`; register one \
             with Runtime::on_emit(\"{channel}\", handler) (or EmitHub::on_emit / \
             EmitHub::on_emit_prefix)"
        );
        return Box::pin(async move { Err(HostError::failed(message)) });
    };
    let started = std::panic::catch_unwind(AssertUnwindSafe(|| handler(payload)));
    let fut = match started {
        Ok(fut) => fut,
        Err(panic) => {
            let err = handler_panicked(&channel, &*panic);
            return Box::pin(async move { Err(err) });
        }
    };
    let guarded = Guarded {
        fut,
        channel: channel.clone(),
    };
    Box::pin(async move {
        let reply = match timeout {
            None => guarded.await,
            Some(limit) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(HostError::failed(format!(
                        "emit-await on channel `{channel}` has a {} timeout, which needs a \
                         Tokio runtime, and none is running; await it inside one or turn the \
                         timeout off with EmitHub::set_await_timeout(None)",
                        show_duration(limit)
                    )));
                }
                match tokio::time::timeout(limit, guarded).await {
                    Ok(reply) => reply,
                    Err(_) => {
                        return Err(HostError {
                            kind: HostErrorKind::Timeout,
                            message: format!(
                                "emit-await on channel `{channel}` got no reply within {} \
                                 (EmitHub::set_await_timeout)",
                                show_duration(limit)
                            ),
                            provider: None,
                        });
                    }
                }
            }
        };
        reply.map_err(|e| name_channel(e, &channel))
    })
}

/// The handler's error, naming the channel unless it already does.
fn name_channel(err: HostError, channel: &str) -> HostError {
    if err.message.contains(&format!("`{channel}`")) {
        return err;
    }
    HostError {
        kind: err.kind,
        message: format!(
            "emit-await handler for channel `{channel}` failed: {}",
            err.message
        ),
        provider: None,
    }
}

fn handler_panicked(channel: &str, panic: &(dyn std::any::Any + Send)) -> HostError {
    HostError::failed(format!(
        "emit-await handler for channel `{channel}` panicked: {}",
        panic_text(panic)
    ))
}

/// `30 s`, `1.5 s`, `250 ms`.
pub(crate) fn show_duration(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{} ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.3} s", d.as_secs_f64())
    }
}

/// The handler's future, with a panic while polling turned into an error.
struct Guarded {
    fut: BoxFuture<Result<Value, HostError>>,
    channel: Arc<str>,
}

impl Future for Guarded {
    type Output = Result<Value, HostError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match std::panic::catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(panic) => Poll::Ready(Err(handler_panicked(&this.channel, &*panic))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(show_duration(Duration::from_secs(30)), "30 s");
        assert_eq!(show_duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1.500 s");
    }

    #[test]
    fn errors_already_naming_the_channel_are_kept() {
        let e = HostError::failed("handler for `a:b` failed: no");
        assert_eq!(name_channel(e.clone(), "a:b"), e);
        let named = name_channel(HostError::limit("quota"), "a:b");
        assert_eq!(named.kind, HostErrorKind::Limit);
        assert_eq!(
            named.message,
            "emit-await handler for channel `a:b` failed: quota"
        );
    }
}
