//! A real `redis-server` for tests, on a free loopback port, without persistence. Uses
//! only the standard library, so other test suites can include this file with
//! `#[path = ".../concerto-store-redis/tests/common/server.rs"] mod redis_server;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How to get the server, for the failure message.
const INSTALL: &str = "install it with `apt-get install redis-server` (Debian/Ubuntu; `.ci/run` \
                       does this when it is missing) or put a `redis-server` binary on PATH";

/// A `redis-server` started for one test, listening on 127.0.0.1 only, without
/// persistence. It is stopped when this is dropped — and also when the test process dies
/// (it runs under a shell that kills it when the test's end of its stdin pipe closes).
pub(crate) struct RedisServer {
    pub(crate) port: u16,
    /// Scratch directory (the server's working directory and log), removed on drop.
    dir: PathBuf,
    extra: Vec<String>,
    running: Option<(Child, ChildStdin)>,
}

impl RedisServer {
    /// Starts a server; the test fails (never passes silently) when none can be started.
    pub(crate) fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts a server with extra arguments (`--requirepass`, …).
    pub(crate) fn start_with(extra: &[&str]) -> RedisServer {
        match Command::new("redis-server").arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "redis-server is installed but `redis-server --version` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!(
                "redis-server is missing ({e}); the Redis store's tests need a real server: \
                 {INSTALL}"
            ),
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "concerto-redis-test-{}-{nanos}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("scratch directory for redis-server");
        let mut server = RedisServer {
            port: 0,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            running: None,
        };
        let mut failures = Vec::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.launch() {
                Ok(()) => return server,
                Err(e) => failures.push(e),
            }
        }
        panic!(
            "redis-server could not be started on a loopback port: {}",
            failures.join("; ")
        );
    }

    /// The server's URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server now (it can be started again on the same port with `restart`).
    pub(crate) fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.running.take() {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        // The port no longer answers once the server is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the server again on the same port (after `stop`).
    pub(crate) fn restart(&mut self) {
        let mut last = String::new();
        for _ in 0..50 {
            match self.launch() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "redis-server could not be restarted on port {}: {last}",
            self.port
        );
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = self.dir.as_path().join(format!("redis-{}.log", self.port));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"redis-server "$@" & pid=$!; read line; kill $pid 2>/dev/null; wait $pid"#)
            .arg("sh")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.as_path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!(
                    "redis-server on port {} exited ({status}): {}",
                    self.port,
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                ));
            }
            if ping(self.port) {
                self.running = Some((child, stdin));
                return Ok(());
            }
            if Instant::now() > deadline {
                drop(stdin);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {} did not answer PING within 10 s",
                    self.port
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a server answers `PING` on the port (a password-protected one answers NOAUTH).
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(n) => {
            let reply = String::from_utf8_lossy(&buf[..n]);
            reply.starts_with("+PONG") || reply.starts_with("-NOAUTH")
        }
        Err(_) => false,
    }
}

/// A loopback port nobody listens on now.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}
