//! Helpers shared by the CLI's test binaries.

use std::io::{Read, Write};
use std::path::PathBuf;
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
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&seen[end + 4..end + 4 + len]).to_string();
                return Some((text[..end].to_string(), body));
            }
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
