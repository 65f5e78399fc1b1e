//! The exfiltration family of the adversarial sandbox suite (the other families, which drive
//! `concerto_tools::Tools` directly, are in `crates/concerto-tools/tests/sandbox.rs`; this one
//! needs the whole `concerto` binary: its flags, its environment, its children, its files).
//!
//! A hostile program, `tests/exfil/exfil.conc`, reads what it can of the environment and sends
//! it out through every door it has: emits, an error, an MCP tool's arguments, an external
//! agent, a prompt, its connection. Its connection's `base_url` and key, and its MCP server's
//! transport, are rewritten per attempt in a copy of its IR. Three canaries wait in the
//! runtime's environment: `EXFIL_CANARY` (a secret the program must never see),
//! `OPENAI_API_KEY` (a key that may go to an allowed LLM host, in its `authorization` header
//! only) and `FILE_CANARY` (from the user's `--env FILE`). Every run writes a cassette
//! (`--record`) and traces every op (`--debug`, `RUST_LOG=trace`), and these places are
//! searched for each canary: stdout, stderr, the cassette, the log of every child process
//! (`tests/exfil/probe.py` writes its whole environment and everything it is sent), and the
//! bytes received by loopback servers: a *forbidden* one on 127.0.0.1 that must receive
//! nothing at all, an *allowed* one on 127.0.0.2 (`--allow-net 127.0.0.2`) that answers
//! like a provider or echoes the key it got in its error, and a redirector on 127.0.0.2 that
//! sends every request on to the forbidden one.
//!
//! An attempt is one route out in one run, named by its family; it *escaped* when a canary
//! reached a place its run did not allow or the forbidden server received a byte. Positive
//! controls run the same routes with the permission given and must get through. Each family
//! prints `sandbox[exfil-<family>]: N attempts, M escaped (…)` (see it with `--nocapture`).
#![cfg(unix)]
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

const ENV_CANARY: &str = "canary-env-4c1f9e0b";
const KEY_CANARY: &str = "sk-canary-key-77ab31d5";
const FILE_CANARY: &str = "canary-file-d03e6a2c";
const OTHER_KEY_CANARY: &str = "sk-ant-canary-5e19f4";

fn exfil_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/exfil")
}

// ---------------------------------------------------------------------------------------
// Loopback servers that keep every byte they receive
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Answer {
    /// 200 with an OpenAI chat completion.
    Complete,
    /// 401 with an error message quoting the `authorization` header it received.
    EchoKey,
    /// 200 with a chat completion whose text quotes the `authorization` header.
    EchoKeyInReply,
    /// 307 to the given URL.
    Redirect(&'static str),
}

struct Server {
    url: String,
    seen: Arc<Mutex<Vec<u8>>>,
    answer: Arc<Mutex<Answer>>,
    redirect_to: Arc<Mutex<String>>,
}

impl Server {
    fn start(ip: &str, answer: Answer) -> Server {
        let listener = TcpListener::bind((ip, 0))
            .unwrap_or_else(|e| panic!("cannot listen on {ip} (loopback 127.0.0.0/8): {e}"));
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(Mutex::new(answer));
        let redirect_to = Arc::new(Mutex::new(String::new()));
        let (kept, how, to) = (seen.clone(), answer.clone(), redirect_to.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (kept, how, to) = (kept.clone(), how.clone(), to.clone());
                std::thread::spawn(move || serve(stream, &kept, *how.lock().unwrap(), &to));
            }
        });
        Server {
            url: format!("http://{addr}"),
            seen,
            answer,
            redirect_to,
        }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }
}

/// Reads one request (head and the body its content-length announces), keeps its bytes,
/// answers it and closes.
fn serve(
    mut stream: TcpStream,
    kept: &Mutex<Vec<u8>>,
    answer: Answer,
    redirect_to: &Mutex<String>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut request = Vec::new();
    let mut buf = [0u8; 16384];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        kept.lock().unwrap().extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = header(&text[..end], "content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&request).to_string();
    let (status, headers, body) = match answer {
        Answer::Complete => (
            "200 OK",
            String::new(),
            json!({"id": "c1", "object": "chat.completion", "created": 0,
                   "model": "gpt-4o-mini",
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": "noted"}}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
            .to_string(),
        ),
        Answer::EchoKeyInReply => {
            let key = header(&text, "authorization").unwrap_or_default();
            (
                "200 OK",
                String::new(),
                json!({"id": "c1", "object": "chat.completion", "created": 0,
                       "model": "gpt-4o-mini",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant",
                                                "content": format!("you sent {key}")}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
                .to_string(),
            )
        }
        Answer::EchoKey => {
            let key = header(&text, "authorization").unwrap_or_default();
            (
                "401 Unauthorized",
                String::new(),
                json!({"error": {"message": format!("Incorrect API key provided: {key}"),
                                 "type": "invalid_request_error"}})
                .to_string(),
            )
        }
        Answer::Redirect(path) => (
            "307 Temporary Redirect",
            format!("location: {}{path}\r\n", redirect_to.lock().unwrap()),
            String::new(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_string())
    })
}

// ---------------------------------------------------------------------------------------
// One run of the hostile program
// ---------------------------------------------------------------------------------------

/// How one run is set up.
#[derive(Clone, Default)]
struct Setup {
    /// The connection's `base_url`.
    base_url: String,
    /// Replaces the connection's `api_key_env` with this config entry (`api_key_env` or
    /// `api_key`), when set.
    key: Option<(&'static str, Value)>,
    /// Replaces the MCP server's transport (`url` over HTTP), when set.
    mcp_url: Option<String>,
    /// Extra flags.
    flags: Vec<String>,
    /// The variable (a canary's name) the run approved as the connection's key without
    /// giving it to the program: its value may go to the allowed server, as a key.
    sent_key: Option<&'static str>,
    /// Canaries the run gives the program (`--allow-env`): they may reach its emits, its
    /// children, its prompt and so its cassette and the allowed server.
    given: Vec<&'static str>,
}

/// Everything a run left behind.
struct Outcome {
    stdout: String,
    stderr: String,
    cassette: String,
    children: String,
    forbidden: Vec<u8>,
    allowed: String,
}

struct Lab {
    dir: PathBuf,
    forbidden: Server,
    allowed: Server,
    redirector: Server,
    env_file: PathBuf,
    runs: usize,
}

impl Lab {
    fn new() -> Lab {
        let dir = std::env::temp_dir().join(format!("concerto-exfil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let forbidden = Server::start("127.0.0.1", Answer::Complete);
        let allowed = Server::start("127.0.0.2", Answer::Complete);
        let redirector = Server::start("127.0.0.2", Answer::Redirect("/v1/chat/completions"));
        *redirector.redirect_to.lock().unwrap() = forbidden.url.clone();
        let env_file = dir.join("user.env");
        std::fs::write(&env_file, format!("FILE_CANARY={FILE_CANARY}\n")).unwrap();
        Lab {
            dir,
            forbidden,
            allowed,
            redirector,
            env_file,
            runs: 0,
        }
    }

    fn run(&mut self, setup: &Setup) -> Outcome {
        self.runs += 1;
        let n = self.runs;
        let log = self.dir.join(format!("children-{n}.jsonl"));
        let cassette = self.dir.join(format!("cassette-{n}.jsonl"));
        let source = std::fs::read_to_string(exfil_dir().join("exfil.head.conc-ir")).unwrap();
        let source = source
            .replace(
                "PROBE_SCRIPT",
                exfil_dir().join("probe.py").to_str().unwrap(),
            )
            .replace("PROBE_LOG", log.to_str().unwrap());
        let mut ir: Value = serde_json::from_str(&source).unwrap();
        for conn in ir["connections"].as_array_mut().unwrap() {
            let config = &mut conn["config"];
            if config["type"] == "mcp" {
                if let Some(url) = &setup.mcp_url {
                    *config = json!({"type": "mcp", "transport": "http", "url": url,
                                     "timeout": 5, "tools": config["tools"].clone()});
                }
                continue;
            }
            config["base_url"] = json!(setup.base_url);
            config["retry"] = json!({"max_attempts": 1, "backoff": "none"});
            if let Some((field, value)) = &setup.key {
                config.as_object_mut().unwrap().remove("api_key_env");
                config[*field] = value.clone();
            }
        }
        let path = self.dir.join(format!("exfil-{n}.conc-ir"));
        std::fs::write(&path, serde_json::to_string(&ir).unwrap()).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_concerto"))
            .args([
                "run",
                "--emit-format",
                "jsonl",
                "--debug",
                "--timeout",
                "60",
            ])
            .args(["--allow-tool", "Probe", "--allow-tool", "Spy"])
            .arg("--record")
            .arg(&cassette)
            .arg("--env")
            .arg(&self.env_file)
            .args(&setup.flags)
            .arg(&path)
            .env("EXFIL_CANARY", ENV_CANARY)
            .env("OPENAI_API_KEY", KEY_CANARY)
            .env("ANTHROPIC_API_KEY", OTHER_KEY_CANARY)
            .env("RUST_LOG", "trace")
            .env_remove("FILE_CANARY")
            .output()
            .unwrap();
        // A child may still be writing: the runtime has ended, so has each child's stdin.
        std::thread::sleep(Duration::from_millis(50));
        Outcome {
            stdout: String::from_utf8_lossy(&out.stdout).to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).to_string(),
            cassette: std::fs::read_to_string(&cassette).unwrap_or_default(),
            children: std::fs::read_to_string(&log).unwrap_or_default(),
            forbidden: self.forbidden.take(),
            allowed: String::from_utf8_lossy(&self.allowed.take()).to_string()
                + &String::from_utf8_lossy(&self.redirector.take()),
        }
    }
}

/// `text` with the key's `authorization` header lines removed (where it may legitimately
/// appear at an allowed provider).
fn without_auth_headers(text: &str) -> String {
    text.lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("authorization: bearer "))
        .collect::<Vec<_>>()
        .join("\n")
}

impl Outcome {
    fn output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// The emits of the run, by channel.
    fn emits(&self) -> BTreeMap<String, Value> {
        self.stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                (
                    v["channel"].as_str().unwrap_or("").to_string(),
                    v["payload"].clone(),
                )
            })
            .collect()
    }

    /// Where a canary arrived that its run did not allow, one line per place.
    fn leaks(&self, setup: &Setup) -> Vec<String> {
        let mut leaks = Vec::new();
        if !self.forbidden.is_empty() {
            leaks.push(format!(
                "the forbidden server received {} bytes: {}",
                self.forbidden.len(),
                shown(&String::from_utf8_lossy(&self.forbidden))
            ));
        }
        let key_allowed_at_provider = without_auth_headers(&self.allowed);
        for (canary, name) in [
            (ENV_CANARY, "EXFIL_CANARY"),
            (KEY_CANARY, "OPENAI_API_KEY"),
            (FILE_CANARY, "FILE_CANARY"),
            (OTHER_KEY_CANARY, "ANTHROPIC_API_KEY"),
        ] {
            let given = setup.given.contains(&name);
            let places: [(&str, &str, bool); 5] = [
                ("stdout", &self.stdout, given),
                ("stderr", &self.stderr, given),
                ("the cassette", &self.cassette, given),
                ("a child process", &self.children, given),
                ("the allowed server", &key_allowed_at_provider, given),
            ];
            for (place, text, may) in places {
                if !may && text.contains(canary) {
                    leaks.push(format!("{name}'s value reached {place}"));
                }
            }
            // The key header goes only where the run sent a key: never a canary in a header
            // of a run that did not approve it.
            if !given
                && name != "OPENAI_API_KEY"
                && setup.sent_key != Some(name)
                && self.allowed.contains(&format!("Bearer {canary}"))
            {
                leaks.push(format!("{name}'s value was sent as a key"));
            }
        }
        leaks
    }
}

fn shown(text: &str) -> String {
    text.chars()
        .take(300)
        .collect::<String>()
        .replace('\n', "\\n")
}

// ---------------------------------------------------------------------------------------
// Tallies
// ---------------------------------------------------------------------------------------

/// One family's attempts, escapes, positive controls and failed controls.
#[derive(Default)]
struct Family {
    attempts: usize,
    escapes: Vec<String>,
    controls: usize,
    failed: Vec<String>,
}

/// The families, kept in the order they first appear.
#[derive(Default)]
struct Families {
    order: Vec<&'static str>,
    counts: BTreeMap<&'static str, Family>,
}

impl Families {
    fn entry(&mut self, family: &'static str) -> &mut Family {
        if !self.counts.contains_key(family) {
            self.order.push(family);
        }
        self.counts.entry(family).or_default()
    }

    /// One attempt of `family`: `problems` lists its escapes (and a refusal that does not
    /// say how to allow what it refused).
    fn attempt(&mut self, family: &'static str, what: &str, problems: Vec<String>) {
        let entry = self.entry(family);
        entry.attempts += 1;
        entry
            .escapes
            .extend(problems.into_iter().map(|p| format!("{what}: {p}")));
    }

    /// One positive control of `family`.
    fn control(&mut self, family: &'static str, what: &str, ok: bool, detail: String) {
        let entry = self.entry(family);
        entry.controls += 1;
        if !ok {
            entry.failed.push(format!("{what}: {detail}"));
        }
    }

    fn finish(self, minimum: &[(&str, usize)]) {
        let mut failures = Vec::new();
        for family in &self.order {
            let Family {
                attempts,
                escapes,
                controls,
                failed,
            } = &self.counts[family];
            println!(
                "sandbox[exfil-{family}]: {attempts} attempts, {} escaped ({controls} positive \
                 controls, {} failed)",
                escapes.len(),
                failed.len()
            );
            failures.extend(escapes.iter().map(|e| format!("[{family}] escaped: {e}")));
            failures.extend(
                failed
                    .iter()
                    .map(|e| format!("[{family}] control failed: {e}")),
            );
        }
        for (family, at_least) in minimum {
            let attempts = self.counts.get(family).map_or(0, |c| c.attempts);
            if attempts < *at_least {
                failures.push(format!(
                    "[{family}] only {attempts} attempts, expected at least {at_least}"
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}

/// The run's escapes, plus `refusal` when given: text the output must contain (the refusal
/// names what it refused and the flag that allows it).
fn judged(out: &Outcome, setup: &Setup, refusal: &[&str]) -> Vec<String> {
    let mut problems = out.leaks(setup);
    for needle in refusal {
        if !out.output().contains(needle) {
            problems.push(format!(
                "the refusal does not say `{needle}`: {}",
                shown(&out.output())
            ));
        }
    }
    problems
}

fn flags(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// The family
// ---------------------------------------------------------------------------------------

#[test]
fn exfiltration_never_escapes_and_the_allowed_paths_still_work() {
    let mut lab = Lab::new();
    let mut f = Families::default();
    let allow_provider = flags(&["--allow-net", "127.0.0.2"]);
    let provider = format!("{}/v1", lab.allowed.url);
    let fport = lab.forbidden.port();

    // --- net: the connection's base_url names the forbidden host, in disguise or not ---
    // Each with what its refusal says: the flag that would allow it, or that the URL is
    // not one (the client would parse it otherwise than the check).
    let spellings = [
        (
            format!("http://127.0.0.1:{fport}/v1"),
            "--allow-net 127.0.0.1",
        ),
        (
            format!("http://localhost:{fport}/v1"),
            "--allow-net localhost",
        ),
        (format!("http://LocalHost:{fport}/v1"), "--allow-net"),
        (format!("http://LOCALHOST.:{fport}/v1"), "--allow-net"),
        (format!("http://2130706433:{fport}/v1"), "--allow-net"),
        (format!("http://0x7f000001:{fport}/v1"), "--allow-net"),
        (format!("http://0177.0.0.1:{fport}/v1"), "--allow-net"),
        (format!("http://127.1:{fport}/v1"), "--allow-net"),
        (
            format!("http://[::ffff:127.0.0.1]:{fport}/v1"),
            "--allow-net",
        ),
        (
            format!("http://127.0.0.2@127.0.0.1:{fport}/v1"),
            "--allow-net 127.0.0.1",
        ),
        (
            format!("http://127.0.0.2:{fport}@127.0.0.1:{fport}/v1"),
            "--allow-net 127.0.0.1",
        ),
        (
            format!("http://127.0.0.1:{fport}#@127.0.0.2/v1"),
            "--allow-net 127.0.0.1",
        ),
        (
            format!("http://127.0.0.1:{fport}?@127.0.0.2/v1"),
            "--allow-net 127.0.0.1",
        ),
        (
            format!("http://127.0.0.1:{fport}\\@127.0.0.2/v1"),
            "invalid base_url",
        ),
        (
            format!("HTTP://127.0.0.1:{fport}/v1"),
            "--allow-net 127.0.0.1",
        ),
    ];
    for (base, refusal) in &spellings {
        let setup = Setup {
            base_url: base.clone(),
            flags: allow_provider.clone(),
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let problems = judged(&out, &setup, &[refusal, "'openai'"]);
        f.attempt("net", base, problems);
    }
    // The allowed host on another port, and the same host under another name.
    for (base, allowed) in [
        (format!("http://127.0.0.1:{fport}/v1"), "127.0.0.1:1"),
        (format!("http://localhost:{fport}/v1"), "127.0.0.1"),
        (format!("http://127.0.0.1:{fport}/v1"), "localhost"),
    ] {
        let setup = Setup {
            base_url: base.clone(),
            flags: flags(&["--allow-net", allowed]),
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let problems = judged(&out, &setup, &["--allow-net"]);
        f.attempt(
            "net",
            &format!("{base} with --allow-net {allowed}"),
            problems,
        );
    }
    // An allowed host that redirects to the forbidden one: never followed.
    let setup = Setup {
        base_url: format!("{}/v1", lab.redirector.url),
        flags: allow_provider.clone(),
        ..Setup::default()
    };
    let out = lab.run(&setup);
    let problems = judged(&out, &setup, &["follows no redirect"]);
    f.attempt("net", "a redirect to the forbidden host", problems);
    // No flag at all: the provider's host is not allowed either.
    let setup = Setup {
        base_url: provider.clone(),
        ..Setup::default()
    };
    let out = lab.run(&setup);
    let mut problems = judged(&out, &setup, &["--allow-net 127.0.0.2", "'openai'"]);
    if !out.allowed.is_empty() {
        problems.push("the provider's host received a request without --allow-net".into());
    }
    // The agent call returns the refusal as its error, for the program to handle.
    let failed = out
        .emits()
        .get("writer_failed")
        .cloned()
        .unwrap_or(Value::Null);
    if failed["kind"] != "not_enabled" {
        problems.push(format!(
            "the refusal is not Err(AgentError {{ kind: not_enabled }}): {failed}"
        ));
    }
    f.attempt("net", "a base_url without --allow-net", problems);
    // Control: the allowed host receives the request and the conventional key.
    let setup = Setup {
        base_url: provider.clone(),
        flags: allow_provider.clone(),
        ..Setup::default()
    };
    let out = lab.run(&setup);
    let ok = out.allowed.contains(&format!("Bearer {KEY_CANARY}"))
        && out.emits().get("writer") == Some(&json!("noted"))
        && out.leaks(&setup).is_empty();
    f.control("net", "the allowed host", ok, shown(&out.output()));
    f.attempt(
        "keys",
        "the conventional key at the allowed host",
        out.leaks(&setup),
    );

    // --- mcp-net: the MCP server's URL names the forbidden host ---
    for (url, refusal) in [
        (
            format!("http://127.0.0.1:{fport}/mcp"),
            "--allow-net 127.0.0.1",
        ),
        (format!("http://LOCALHOST:{fport}/mcp"), "--allow-net"),
        (format!("http://2130706433:{fport}/mcp"), "--allow-net"),
        (
            format!("http://127.0.0.2@127.0.0.1:{fport}/mcp"),
            "--allow-net 127.0.0.1",
        ),
        (
            format!("{}/mcp", lab.redirector.url),
            "redirects to `127.0.0.1:",
        ),
    ] {
        let setup = Setup {
            base_url: provider.clone(),
            mcp_url: Some(url.clone()),
            flags: allow_provider.clone(),
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let mut problems = judged(&out, &setup, &[refusal, "`Probe`"]);
        if out.emits().contains_key("kept") {
            problems.push("the MCP call succeeded".into());
        }
        // The tool is declared `-> Result<_, ToolError>`: the refusal is an `Err` the
        // program handles, as the refusal of a server that is not enabled is.
        if !out
            .emits()
            .get("probe_failed")
            .is_some_and(|m| m.to_string().contains("not enabled"))
        {
            problems.push("the refusal did not reach the program as Err(ToolError)".into());
        }
        f.attempt("mcp-net", &url, problems);
    }
    let setup = Setup {
        base_url: provider.clone(),
        mcp_url: Some(format!("{}/mcp", lab.allowed.url)),
        flags: allow_provider.clone(),
        ..Setup::default()
    };
    let out = lab.run(&setup);
    let ok = out.allowed.contains("\"initialize\"") && out.leaks(&setup).is_empty();
    f.control(
        "mcp-net",
        "an MCP URL on the allowed host",
        ok,
        shown(&out.output()),
    );

    // --- keys: the connection names the secret as its key ---
    let named = [
        ("api_key_env", json!("EXFIL_CANARY"), vec![]),
        ("api_key", json!({"$env": "EXFIL_CANARY"}), vec![]),
        (
            "api_key_env",
            json!("EXFIL_CANARY"),
            vec!["--allow-env", "EXFIL_CANARYX"],
        ),
        (
            "api_key_env",
            json!("EXFIL_CANARY"),
            vec!["--allow-env", "exfil_canary"],
        ),
        (
            "api_key_env",
            json!("EXFIL_CANARY"),
            vec!["--allow-env", "EXFIL_CANARY_*"],
        ),
        (
            "api_key",
            json!({"$env": "EXFIL_CANARY"}),
            vec!["--allow-env", "OTHER_*"],
        ),
        ("api_key_env", json!("ANTHROPIC_API_KEY"), vec![]),
        ("api_key_env", json!("PATH"), vec![]),
        ("api_key_env", json!("HOME"), vec![]),
    ];
    for (field, value, extra) in named {
        let mut run_flags = allow_provider.clone();
        run_flags.extend(flags(&extra));
        let setup = Setup {
            base_url: provider.clone(),
            key: Some((field, value.clone())),
            flags: run_flags,
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let variable = value
            .as_str()
            .or_else(|| value["$env"].as_str())
            .unwrap_or_default()
            .to_string();
        let mut problems = judged(&out, &setup, &["--allow-env"]);
        if out.allowed.to_ascii_lowercase().contains("authorization") {
            problems.push(format!("a key read from {variable} was sent"));
        }
        f.attempt(
            "keys",
            &format!("{field} = {value} {}", extra.join(" ")),
            problems,
        );
    }
    // Controls: a key the host approved goes to the allowed host (and nowhere else).
    for (field, value) in [
        ("api_key_env", json!("EXFIL_CANARY")),
        ("api_key", json!({"$env": "EXFIL_CANARY"})),
    ] {
        let mut run_flags = allow_provider.clone();
        run_flags.extend(flags(&["--allow-env", "EXFIL_CANARY"]));
        let setup = Setup {
            base_url: provider.clone(),
            key: Some((field, value.clone())),
            flags: run_flags,
            given: vec!["EXFIL_CANARY"],
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let ok =
            out.allowed.contains(&format!("Bearer {ENV_CANARY}")) && out.leaks(&setup).is_empty();
        f.control(
            "keys",
            &format!("{field} = {value} approved"),
            ok,
            shown(&out.allowed),
        );
    }
    let setup = Setup {
        base_url: provider.clone(),
        key: Some(("api_key_env", json!("FILE_CANARY"))),
        flags: allow_provider.clone(),
        ..Setup::default()
    };
    let out = lab.run(&setup);
    // The key of the user's --env FILE goes to the provider, in its header only.
    let ok = out.allowed.contains(&format!("Bearer {FILE_CANARY}"))
        && !without_auth_headers(&out.allowed).contains(FILE_CANARY)
        && !out.stdout.contains(FILE_CANARY)
        && !out.stderr.contains(FILE_CANARY)
        && !out.cassette.contains(FILE_CANARY)
        && !out.children.contains(FILE_CANARY);
    f.control("keys", "a key from --env FILE", ok, shown(&out.allowed));

    // --- env, children, tool arguments, prompt: what the program reads and passes on ---
    let configurations: [(&str, Vec<&str>); 7] = [
        ("no --allow-env", vec![]),
        (
            "--allow-env EXFIL_CANARYX",
            vec!["--allow-env", "EXFIL_CANARYX"],
        ),
        (
            "--allow-env exfil_canary",
            vec!["--allow-env", "exfil_canary"],
        ),
        (
            "--allow-env 'EXFIL_CANARY_*'",
            vec!["--allow-env", "EXFIL_CANARY_*"],
        ),
        ("--allow-env 'EXFIL_'", vec!["--allow-env", "EXFIL_"]),
        (
            "--allow-env 'OPENAI_*' is not EXFIL",
            vec!["--allow-env", "XOPENAI_*"],
        ),
        ("--allow-env 'FILE'", vec!["--allow-env", "FILE"]),
    ];
    for (what, extra) in configurations {
        let mut run_flags = allow_provider.clone();
        run_flags.extend(flags(&extra));
        let setup = Setup {
            base_url: provider.clone(),
            flags: run_flags,
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let leaks = out.leaks(&setup);
        let only = |place: &str| -> Vec<String> {
            leaks
                .iter()
                .filter(|l| l.contains(place))
                .cloned()
                .collect()
        };
        let emits = out.emits();
        let mut env_problems = only("stdout");
        if emits.get("has") != Some(&json!(false)) || emits.get("all") != Some(&json!({})) {
            env_problems.push(format!(
                "std::env showed {:?} / {:?}",
                emits.get("has"),
                emits.get("all")
            ));
        }
        f.attempt("env", what, env_problems);
        let child_env: Vec<String> = out
            .children
            .lines()
            .filter(|l| l.contains("\"env\""))
            .map(str::to_string)
            .collect();
        let mut child_problems = only("a child process");
        if child_env.len() != 2 {
            child_problems.push(format!(
                "{} children reported their environment",
                child_env.len()
            ));
        }
        f.attempt(
            "child-env",
            &format!("MCP server and agent, {what}"),
            child_problems,
        );
        f.attempt(
            "tool-args",
            &format!("MCP and agent arguments, {what}"),
            only("a child process"),
        );
        f.attempt(
            "prompt",
            &format!("the model's prompt, {what}"),
            only("the allowed server"),
        );
        f.attempt(
            "errors",
            &format!("std::env::require, {what}"),
            only("stdout"),
        );
        f.attempt(
            "cassette",
            &format!("the cassette, {what}"),
            only("the cassette"),
        );
        f.attempt(
            "debug",
            &format!("--debug and RUST_LOG=trace, {what}"),
            only("stderr"),
        );
    }
    // Control: a variable the host allowed is seen by the program, its children and its
    // prompt; the manifest's own variable reaches the agent.
    let mut run_flags = allow_provider.clone();
    run_flags.extend(flags(&["--allow-env", "EXFIL_*"]));
    let setup = Setup {
        base_url: provider.clone(),
        flags: run_flags,
        given: vec!["EXFIL_CANARY"],
        ..Setup::default()
    };
    let out = lab.run(&setup);
    let emits = out.emits();
    f.control(
        "env",
        "--allow-env 'EXFIL_*'",
        emits.get("get") == Some(&json!({"Some": ENV_CANARY}))
            && emits.get("has") == Some(&json!(true)),
        shown(&out.stdout),
    );
    let env_lines = out
        .children
        .lines()
        .filter(|l| l.contains("\"env\""))
        .collect::<Vec<_>>();
    f.control(
        "child-env",
        "--allow-env 'EXFIL_*' reaches both children; the manifest's variable the agent",
        env_lines.len() == 2
            && env_lines.iter().all(|l| l.contains(ENV_CANARY))
            && env_lines
                .iter()
                .any(|l| l.contains("declared-by-the-manifest")),
        shown(&out.children),
    );
    f.control(
        "tool-args",
        "an allowed variable in the MCP tool's and the agent's input",
        out.children
            .lines()
            .filter(|l| l.contains("\"received\"") && l.contains(ENV_CANARY))
            .count()
            >= 2,
        shown(&out.children),
    );
    f.control(
        "prompt",
        "an allowed variable in the prompt",
        out.allowed.contains(ENV_CANARY),
        shown(&out.allowed),
    );
    f.control(
        "cassette",
        "the cassette records the call",
        out.cassette.contains("noted") && !out.cassette.contains(KEY_CANARY),
        shown(&out.cassette),
    );
    f.control(
        "debug",
        "--debug traces the run",
        out.stderr.contains("concerto::trace") || out.stderr.contains("pc="),
        shown(&out.stderr),
    );

    // Control: a variable of --env FILE the host allowed reaches the program and both
    // children with the file's value (the children see what the program sees).
    let mut run_flags = allow_provider.clone();
    run_flags.extend(flags(&["--allow-env", "FILE_CANARY"]));
    let setup = Setup {
        base_url: provider.clone(),
        flags: run_flags,
        given: vec!["FILE_CANARY"],
        ..Setup::default()
    };
    let out = lab.run(&setup);
    let env_lines = out
        .children
        .lines()
        .filter(|l| l.contains("\"env\""))
        .collect::<Vec<_>>();
    f.control(
        "child-env",
        "--allow-env FILE_CANARY from --env FILE reaches the program and both children",
        out.emits().get("file") == Some(&json!({"Some": FILE_CANARY}))
            && env_lines.len() == 2
            && env_lines.iter().all(|l| l.contains(FILE_CANARY)),
        shown(&out.children),
    );

    // --- errors: the runtime's own messages, when a provider echoes the key it got ---
    lab.allowed.answer(Answer::EchoKey);
    for (what, key, secret) in [
        ("the conventional key echoed back", None, KEY_CANARY),
        (
            "a key from --env FILE echoed back",
            Some(("api_key_env", json!("FILE_CANARY"))),
            FILE_CANARY,
        ),
    ] {
        let setup = Setup {
            base_url: provider.clone(),
            key,
            flags: allow_provider.clone(),
            sent_key: Some("FILE_CANARY"),
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let mut problems = out.leaks(&setup);
        let failure = out
            .emits()
            .get("writer_failed")
            .cloned()
            .unwrap_or(Value::Null);
        if failure.to_string().contains(secret) {
            problems.push("the error the program received quotes the key".into());
        }
        if !failure.to_string().contains("401") {
            problems.push(format!("the provider's error was not delivered: {failure}"));
        }
        if out.stderr.contains(secret) || out.cassette.contains(secret) {
            problems.push("the echoed key reached stderr or the cassette".into());
        }
        f.attempt("errors", what, problems);
    }
    // A provider that quotes the key in a successful answer: the program gets the answer,
    // never the key.
    lab.allowed.answer(Answer::EchoKeyInReply);
    for (what, key, secret, sent_key) in [
        (
            "the conventional key quoted in a reply",
            None,
            KEY_CANARY,
            None,
        ),
        (
            "a key from --env FILE quoted in a reply",
            Some(("api_key_env", json!("FILE_CANARY"))),
            FILE_CANARY,
            Some("FILE_CANARY"),
        ),
    ] {
        let setup = Setup {
            base_url: provider.clone(),
            key,
            flags: allow_provider.clone(),
            sent_key,
            ..Setup::default()
        };
        let out = lab.run(&setup);
        let mut problems = out.leaks(&setup);
        let reply = out.emits().get("writer").cloned().unwrap_or(Value::Null);
        if !reply.to_string().contains("you sent Bearer") {
            problems.push(format!("the reply did not reach the program: {reply}"));
        }
        if reply.to_string().contains(secret) {
            problems.push("the program received the key".into());
        }
        f.attempt("replies", what, problems);
    }
    lab.allowed.answer(Answer::Complete);

    let _ = std::fs::remove_dir_all(&lab.dir);
    f.finish(&[
        ("net", 19),
        ("mcp-net", 5),
        ("keys", 10),
        ("env", 7),
        ("child-env", 7),
        ("tool-args", 7),
        ("prompt", 7),
        ("errors", 9),
        ("replies", 2),
        ("cassette", 7),
        ("debug", 7),
    ]);
}
