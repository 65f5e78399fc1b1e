//! `--answer-awaits`: emit-await questions on stdout, answers from stdin.
//!
//! Standard input is read by a thread of its own, started at the first question, so no
//! tokio worker ever blocks on it; the lines it reads wait in a channel for the questions.

use std::io::{BufRead, Write};
use std::sync::{Arc, Once};

use concerto_runtime::Value;
use tokio::sync::{Mutex, mpsc};

type Answer = Result<Value, Box<dyn std::error::Error + Send + Sync>>;

/// Answers read from standard input, one line of JSON per emit-await, in order.
#[derive(Clone)]
pub(crate) struct Stdin {
    inner: Arc<Inner>,
}

struct Inner {
    started: Once,
    sender: std::sync::Mutex<Option<mpsc::UnboundedSender<String>>>,
    lines: Mutex<mpsc::UnboundedReceiver<String>>,
}

impl Default for Stdin {
    fn default() -> Stdin {
        let (sender, lines) = mpsc::unbounded_channel();
        Stdin {
            inner: Arc::new(Inner {
                started: Once::new(),
                sender: std::sync::Mutex::new(Some(sender)),
                lines: Mutex::new(lines),
            }),
        }
    }
}

impl Stdin {
    /// Writes the question for `channel` to stdout and waits for the next line of stdin.
    pub(crate) fn ask(
        &self,
        channel: &str,
        payload: Value,
    ) -> impl Future<Output = Answer> + Send + use<> {
        self.start();
        let question = serde_json::json!({
            "channel": channel,
            "payload": payload.to_json(),
            "await": true,
        });
        let written = {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{question}").and_then(|()| out.flush())
        };
        let inner = self.inner.clone();
        let channel = channel.to_string();
        async move {
            written.map_err(|e| format!("cannot write the question to stdout: {e}"))?;
            let line = inner.lines.lock().await.recv().await.ok_or_else(|| {
                format!("standard input ended before an answer to the emit-await on `{channel}`")
            })?;
            let json: serde_json::Value = serde_json::from_str(line.trim()).map_err(|e| {
                format!("the answer to the emit-await on `{channel}` is not JSON ({e}): {line}")
            })?;
            Ok(Value::from(&concerto_runtime::vm::Value::from_json(&json)))
        }
    }

    /// Starts the reader thread once.
    fn start(&self) {
        self.inner.started.call_once(|| {
            let Some(sender) = self.inner.sender.lock().ok().and_then(|mut s| s.take()) else {
                return;
            };
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    let Ok(line) = line else { break };
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        });
    }
}
