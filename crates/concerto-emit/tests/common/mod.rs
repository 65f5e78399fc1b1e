//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use concerto_emit::{EmitHub, Listener};
use concerto_vm::Value;
use parking_lot::Mutex;

/// Records every emit a listener sees, as (channel, payload as JSON).
#[derive(Clone, Default)]
pub(crate) struct Recorder(pub(crate) Arc<Mutex<Vec<(String, serde_json::Value)>>>);

impl Recorder {
    pub(crate) fn listener(&self) -> Listener {
        let seen = self.0.clone();
        Arc::new(move |channel: &str, payload: &Value| {
            seen.lock().push((channel.to_string(), payload.to_json()));
        })
    }

    pub(crate) fn channels(&self) -> Vec<String> {
        self.0.lock().iter().map(|(c, _)| c.clone()).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.0.lock().len()
    }
}

/// A hub with a recorder listening on every channel.
pub(crate) fn recorded_hub() -> (Arc<EmitHub>, Recorder) {
    let hub = Arc::new(EmitHub::new());
    let rec = Recorder::default();
    hub.on_prefix("", rec.listener());
    (hub, rec)
}

/// A writer into shared memory.
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(pub(crate) Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().clone()).unwrap()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs a future to completion on this thread, outside any Tokio runtime.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// `Value::Int`.
pub(crate) fn int(i: i64) -> Value {
    Value::Int(i)
}
