//! Helpers shared by the CLI's test binaries.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

/// The `concerto` binary under test.
pub(crate) fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_concerto"))
}

/// An empty temp directory for test `name` of this test binary
/// (`concerto-<binary>-<name>-<pid>`), by its canonical path.
pub(crate) fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "concerto-{}-{name}-{}",
        env!("CARGO_CRATE_NAME"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::canonicalize(&dir).unwrap()
}

/// Turns each `EMIT; LOAD_CONST nil; AWAIT` of `ir` (how concertoc 1a8ede9 lowers
/// `await emit(..)`, losing the answer) into `EMIT_AWAIT; AWAIT; AWAIT`, the IR a fixed
/// compiler produces (same length: jump targets stay valid). Returns how many it rewrote.
#[allow(dead_code, reason = "not every test binary rewrites emit-awaits")]
pub(crate) fn make_emit_awaits(ir: &mut Json) -> usize {
    let nils: Vec<u64> = ir["constants"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["type"] == "nil")
                .filter_map(|c| c["index"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    let mut rewritten = 0;
    for func in ir["functions"].as_array_mut().into_iter().flatten() {
        let Some(code) = func["instructions"].as_array_mut() else {
            continue;
        };
        for i in 0..code.len().saturating_sub(2) {
            let nil = code[i + 1]["op"] == "LOAD_CONST"
                && code[i + 1]["arg"]
                    .as_u64()
                    .is_some_and(|a| nils.contains(&a));
            if code[i]["op"] == "EMIT" && nil && code[i + 2]["op"] == "AWAIT" {
                code[i]["op"] = json!("EMIT_AWAIT");
                code[i + 1] = json!({"op": "AWAIT", "span": code[i + 1]["span"].clone()});
                rewritten += 1;
            }
        }
    }
    rewritten
}

/// Reads one HTTP request from `stream`: its head and the body its `content-length`
/// announces (`None` when the connection ends or fails first).
pub(crate) fn read_request(stream: &mut impl std::io::Read) -> Option<(String, String)> {
    let (head, body) = read_request_bytes(stream)?;
    Some((head, String::from_utf8_lossy(&body).to_string()))
}

/// [`read_request`] with the body as bytes (a binary body: OTLP protobuf).
#[allow(dead_code, reason = "not every test binary reads binary bodies")]
pub(crate) fn read_request_bytes(stream: &mut impl std::io::Read) -> Option<(String, Vec<u8>)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&seen[..end]).to_string();
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        if seen.len() >= end + 4 + len {
            return Some((head, seen[end + 4..end + 4 + len].to_vec()));
        }
    }
}

/// A real `redis-server` on a free loopback port, without persistence, stopped on drop.
#[allow(dead_code, reason = "not every test binary starts a Redis server")]
pub(crate) struct Redis {
    child: Child,
    pub(crate) port: u16,
}

#[allow(dead_code, reason = "not every test binary starts a Redis server")]
impl Redis {
    pub(crate) fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need a real one; \
                     install it with `apt-get install redis-server` (.ci/run does)"
                )
            });
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        redis
    }

    /// Empties the server (a fresh store for the next case).
    pub(crate) fn flush(&self) {
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        conn.write_all(b"*1\r\n$8\r\nFLUSHALL\r\n").unwrap();
        let mut reply = [0u8; 5];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"+OK\r\n");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(dead_code, reason = "not every test binary starts a Redis server")]
impl Redis {
    /// `redis://127.0.0.1:PORT/0`
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `redis-cli --raw` with `args` against this server: its output lines.
    pub(crate) fn cli(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run redis-cli ({e}): install redis-tools"));
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The test programs' folder.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub(crate) fn programs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs")
}

/// A loopback server answering request number `n` (from 0) with `respond(n)`'s status,
/// extra header lines and JSON body; its base URL and the number of requests it answered.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub(crate) fn scripted_server(
    respond: impl Fn(usize) -> (u16, &'static str, String) + Send + 'static,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let answered = count.clone();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
            let _ = read_request(&mut stream);
            let (status, headers, body) = respond(answered.fetch_add(1, Ordering::SeqCst));
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    (format!("http://{addr}"), count)
}

#[allow(dead_code, reason = "not every test binary uses every helper")]
pub(crate) fn rate_limited() -> (u16, &'static str, String) {
    (
        429,
        "retry-after-ms: 30\r\n",
        r#"{"error": {"message": "Slow down", "type": "rate_limit"}}"#.to_string(),
    )
}

/// A 200 chat completion from `model` answering `content`, with its usage.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub(crate) fn answered(
    model: &str,
    content: &str,
    (prompt, completion): (u64, u64),
) -> (u16, &'static str, String) {
    let body = serde_json::json!({
        "id": "c", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion}
    });
    (200, "", body.to_string())
}

/// The IR of the test program `programs/<name>`.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub(crate) fn program_ir(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(programs().join(name)).unwrap()).unwrap()
}

/// Writes `ir` into `dir` as `name`; its path.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub(crate) fn save_program(dir: &Path, name: &str, ir: &serde_json::Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string(ir).unwrap()).unwrap();
    path
}

/// The test program `programs/<name>` with its connection's `base_url` (a program's
/// choice) at `url`, written into `dir` as `saved_as`.
#[allow(dead_code, reason = "not every test binary uses every helper")]
pub(crate) fn program_at(dir: &Path, name: &str, url: &str, saved_as: &str) -> PathBuf {
    let mut ir = program_ir(name);
    ir["connections"][0]["config"]["base_url"] = serde_json::json!(url);
    save_program(dir, saved_as, &ir)
}
