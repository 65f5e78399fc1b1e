//! Host agents against a real process: `tests/fixtures/host_agent.py` (Python 3, stdlib
//! only), which answers one line per line in text or JSON.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concerto_tools::hosts::HostAgents;
use concerto_vm::host::{HostErrorKind, Program};
use serde_json::{Value, json};

fn agent_script() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/host_agent.py")
        .display()
        .to_string()
}

/// A program declaring `hosts` (a JSON array of IR host objects).
fn program(hosts: Value) -> Arc<Program> {
    let ir = json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "hosts": hosts,
        "constants": [{"index": 0, "type": "int", "value": 0}],
        "functions": [{"name": "main", "module": "m", "visibility": "private", "params": [],
                        "return_type": "nil", "is_async": false, "locals": [],
                        "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]}],
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
                     "debug_info": false, "entry_point": "main"}
    });
    Arc::new(concerto_ir::load_str(&ir.to_string()).unwrap())
}

/// A host running the test agent.
fn agent(name: &str, output_format: &str, timeout: Option<u64>) -> Value {
    let mut host = json!({
        "name": name, "connector": "test_agent",
        "input_format": "text", "output_format": output_format,
        "command": "python3", "args": [agent_script()],
    });
    if let Some(t) = timeout {
        host["timeout"] = json!(t);
    }
    host
}

fn one(host: Value) -> Arc<Program> {
    program(json!([host]))
}

/// `(pid, call number)` from a `count` reply.
fn count(reply: &str) -> (u32, u32) {
    let (pid, n) = reply.split_once(' ').unwrap();
    (pid.parse().unwrap(), n.parse().unwrap())
}

fn alive(pid: u32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn several_calls_reuse_one_process() {
    let hosts = HostAgents::new();
    let p = one(agent("Agent", "text", None));
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(count(&hosts.exchange(&p, 0, "count".into()).await.unwrap()));
    }
    let pid = seen[0].0;
    assert_eq!(seen, vec![(pid, 1), (pid, 2), (pid, 3)]);
    hosts.shutdown().await;
}

#[tokio::test]
async fn text_output_is_the_line_without_its_ending() {
    let hosts = HostAgents::new();
    let p = one(agent("Agent", "text", None));
    assert_eq!(
        hosts.exchange(&p, 0, "hello world".into()).await.unwrap(),
        "echo: hello world"
    );
    assert_eq!(
        hosts.exchange(&p, 0, "crlf".into()).await.unwrap(),
        "windows"
    );
    // Text mode returns JSON lines untouched.
    assert_eq!(
        hosts.exchange(&p, 0, "json hi".into()).await.unwrap(),
        r#"{"text": "hi", "n": 3}"#
    );
    hosts.shutdown().await;
}

#[tokio::test]
async fn json_output_takes_the_text_member_or_returns_the_raw_line() {
    let hosts = HostAgents::new();
    let p = one(agent("Agent", "json", None));
    assert_eq!(
        hosts.exchange(&p, 0, "json a reply".into()).await.unwrap(),
        "a reply"
    );
    assert_eq!(
        hosts.exchange(&p, 0, "json-notext".into()).await.unwrap(),
        r#"{"other": 1}"#
    );
    assert_eq!(
        hosts.exchange(&p, 0, "json-number".into()).await.unwrap(),
        r#"{"text": 5}"#
    );
    assert_eq!(
        hosts.exchange(&p, 0, "not json".into()).await.unwrap(),
        "echo: not json"
    );
    hosts.shutdown().await;
}

#[tokio::test]
async fn a_wrapping_agent_in_json_mode_round_trips_text_with_quotes() {
    let hosts = HostAgents::new();
    let mut host = agent("Wrapped", "json", None);
    host["args"] = json!([agent_script(), "--json"]);
    let p = one(host);
    assert_eq!(
        hosts
            .exchange(&p, 0, r#"say "hi" \ there"#.into())
            .await
            .unwrap(),
        r#"echo: say "hi" \ there"#
    );
    hosts.shutdown().await;
}

#[tokio::test]
async fn timeout_kills_the_process_and_the_next_call_starts_a_fresh_one() {
    let hosts = HostAgents::new();
    let p = one(agent("Slow", "text", Some(1)));
    let (first_pid, _) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    let started = Instant::now();
    let err = hosts.exchange(&p, 0, "sleep 30".into()).await.unwrap_err();
    let waited = started.elapsed();
    assert_eq!(err.kind, HostErrorKind::Timeout, "{}", err.message);
    assert_eq!(err.message, "Host 'Slow' timed out after 1 seconds");
    assert!(waited < Duration::from_secs(10), "took {waited:?}");
    assert!(
        !alive(first_pid),
        "the timed-out process {first_pid} still runs"
    );
    let (pid, n) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    assert_ne!(pid, first_pid);
    assert_eq!(n, 1, "a fresh process answers");
    hosts.shutdown().await;
}

#[tokio::test]
async fn an_exited_process_is_an_error_then_it_is_started_again() {
    let hosts = HostAgents::new();
    let p = one(agent("Quitter", "text", None));
    let (first_pid, _) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    assert_eq!(hosts.exchange(&p, 0, "exit".into()).await.unwrap(), "bye");
    let err = hosts.exchange(&p, 0, "count".into()).await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message
            .starts_with("Host 'Quitter' process exited unexpectedly"),
        "{}",
        err.message
    );
    assert!(err.message.contains("exit code 3"), "{}", err.message);
    let (pid, n) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    assert_ne!(pid, first_pid);
    assert_eq!(n, 1);
    hosts.shutdown().await;
}

#[tokio::test]
async fn a_process_dying_mid_call_reports_its_exit_code_and_stderr() {
    let hosts = HostAgents::new();
    let p = one(agent("Crasher", "text", None));
    let err = hosts.exchange(&p, 0, "die".into()).await.unwrap_err();
    assert!(
        err.message
            .starts_with("Host 'Crasher' process exited unexpectedly"),
        "{}",
        err.message
    );
    assert!(err.message.contains("exit code 7"), "{}", err.message);
    assert!(err.message.contains("dying on purpose"), "{}", err.message);
    assert_eq!(
        hosts.exchange(&p, 0, "again".into()).await.unwrap(),
        "echo: again"
    );
    hosts.shutdown().await;
}

#[tokio::test]
async fn a_process_closing_stdout_is_stopped_and_started_again() {
    let hosts = HostAgents::new();
    let p = one(agent("Mute", "text", None));
    let (first_pid, _) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    let err = hosts
        .exchange(&p, 0, "close-stdout".into())
        .await
        .unwrap_err();
    assert!(
        err.message
            .starts_with("Host 'Mute' process exited unexpectedly"),
        "{}",
        err.message
    );
    assert!(!alive(first_pid), "the mute process {first_pid} still runs");
    let (pid, _) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    assert_ne!(pid, first_pid);
    hosts.shutdown().await;
}

#[tokio::test]
async fn a_last_line_without_newline_is_still_a_reply() {
    let hosts = HostAgents::new();
    let p = one(agent("Partial", "text", None));
    assert_eq!(
        hosts.exchange(&p, 0, "partial".into()).await.unwrap(),
        "partial"
    );
    let err = hosts.exchange(&p, 0, "count".into()).await.unwrap_err();
    assert!(
        err.message.contains("exited unexpectedly"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_missing_command_is_a_clear_error() {
    let hosts = HostAgents::new();
    let mut host = agent("Ghost", "text", None);
    host["command"] = json!("concerto-no-such-command-xyz");
    let p = one(host);
    let err = hosts.exchange(&p, 0, "hi".into()).await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(
        err.message
            .starts_with("Host 'Ghost': command `concerto-no-such-command-xyz` not found"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_host_without_command_or_index_is_a_clear_error() {
    let hosts = HostAgents::new();
    let p = one(json!({"name": "Bare", "connector": "bare_agent"}));
    let err = hosts.exchange(&p, 0, "hi".into()).await.unwrap_err();
    assert!(
        err.message.contains("Host 'Bare' has no command")
            && err.message.contains("[hosts.bare_agent]"),
        "{}",
        err.message
    );
    let err = hosts.exchange(&p, 5, "hi".into()).await.unwrap_err();
    assert!(
        err.message.contains("host #5 does not exist"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn a_missing_working_directory_is_a_clear_error() {
    let hosts = HostAgents::new();
    let mut host = agent("Lost", "text", None);
    host["working_dir"] = json!("/definitely/not/here");
    let p = one(host);
    let err = hosts.exchange(&p, 0, "hi".into()).await.unwrap_err();
    assert!(
        err.message
            .contains("working directory `/definitely/not/here` does not exist"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn env_and_working_dir_reach_the_process() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("host-agent-cwd");
    std::fs::create_dir_all(&dir).unwrap();
    let dir = std::fs::canonicalize(&dir).unwrap();
    let hosts = HostAgents::new();
    let mut host = agent("Configured", "text", None);
    host["env"] = json!({"CONCERTO_TEST_VAR": "from the host", "CONCERTO_TEST_NUM": 42});
    host["working_dir"] = json!(dir.display().to_string());
    let p = one(host);
    assert_eq!(
        hosts
            .exchange(&p, 0, "env CONCERTO_TEST_VAR".into())
            .await
            .unwrap(),
        "from the host"
    );
    assert_eq!(
        hosts
            .exchange(&p, 0, "env CONCERTO_TEST_NUM".into())
            .await
            .unwrap(),
        "42"
    );
    // The runtime's own environment is inherited.
    assert_ne!(
        hosts.exchange(&p, 0, "env PATH".into()).await.unwrap(),
        "<unset>"
    );
    assert_eq!(
        hosts.exchange(&p, 0, "cwd".into()).await.unwrap(),
        dir.display().to_string()
    );
    hosts.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_to_one_host_are_serialised() {
    let hosts = Arc::new(HostAgents::new());
    let p = one(agent("Busy", "text", None));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let hosts = Arc::clone(&hosts);
        let p = Arc::clone(&p);
        tasks.push(tokio::spawn(async move {
            let reply = hosts.exchange(&p, 0, format!("call {i}")).await.unwrap();
            (i, reply)
        }));
    }
    for t in tasks {
        let (i, reply) = t.await.unwrap();
        assert_eq!(
            reply,
            format!("echo: call {i}"),
            "each call reads its own answer"
        );
    }
    // One process answered all of them.
    let (_, n) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    assert_eq!(n, 9);
    hosts.shutdown().await;
}

#[tokio::test]
async fn each_host_has_its_own_process_and_shutdown_kills_them_all() {
    let hosts = HostAgents::new();
    let p = program(json!([agent("A", "text", None), agent("B", "text", None)]));
    let (a, _) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    let (b, _) = count(&hosts.exchange(&p, 1, "count".into()).await.unwrap());
    assert_ne!(a, b);
    assert!(alive(a) && alive(b));
    hosts.shutdown().await;
    assert!(!alive(a), "process {a} survived shutdown");
    assert!(!alive(b), "process {b} survived shutdown");
    // A later call starts the host again.
    let (again, n) = count(&hosts.exchange(&p, 0, "count".into()).await.unwrap());
    assert_ne!(again, a);
    assert_eq!(n, 1);
    hosts.shutdown().await;
}

#[tokio::test]
async fn input_with_newlines_is_written_as_given() {
    let hosts = HostAgents::new();
    let p = one(agent("Lines", "text", None));
    // The caller formats the input; a text-mode prompt with context spans two lines and
    // this agent answers each line, so the second answer is read by the next call.
    assert_eq!(
        hosts.exchange(&p, 0, "first\nsecond".into()).await.unwrap(),
        "echo: first"
    );
    assert_eq!(
        hosts.exchange(&p, 0, "third".into()).await.unwrap(),
        "echo: second"
    );
    hosts.shutdown().await;
}

#[tokio::test]
async fn a_huge_timeout_is_cut_to_a_year_not_a_panic() {
    let hosts = HostAgents::new();
    let p = one(agent("Agent", "text", Some(u64::MAX)));
    assert_eq!(
        count(&hosts.exchange(&p, 0, "count".into()).await.unwrap()).1,
        1
    );
    let session = hosts.listen(&p, 0, "count".into()).await.unwrap();
    assert!(session.next_line().await.unwrap().is_some());
    session.finish(true);
    drop(session);
    hosts.shutdown().await;
}

/// A host process inherits PATH, HOME, LANG, TMPDIR and the variables the host allowed, not
/// the rest of the runtime's environment (cargo's `CARGO_*` variables stand for secrets here:
/// `cargo test` sets them in this process); its manifest's own variables are set on top.
#[tokio::test]
async fn a_host_process_gets_a_minimal_environment_plus_what_was_allowed() {
    assert!(
        std::env::var("CARGO_PKG_NAME").is_ok(),
        "run under cargo test"
    );
    let mut host = agent("Agent", "text", None);
    host["env"] = json!({"GREETING": "from the manifest"});
    let p = one(host);
    async fn ask_env(hosts: &HostAgents, p: &Arc<Program>, name: &str) -> String {
        hosts.exchange(p, 0, format!("env {name}")).await.unwrap()
    }
    let ask = |hosts, name| ask_env(hosts, &p, name);
    let minimal = HostAgents::new();
    assert_eq!(ask(&minimal, "CARGO_PKG_NAME").await, "<unset>");
    assert_eq!(ask(&minimal, "CARGO_MANIFEST_DIR").await, "<unset>");
    assert_eq!(ask(&minimal, "GREETING").await, "from the manifest");
    // PATH is passed (a version manager's `python3` wrapper may put its own folders first).
    let path = ask(&minimal, "PATH").await;
    assert!(
        path.ends_with(&std::env::var("PATH").unwrap_or_default()),
        "{path}"
    );
    minimal.shutdown().await;
    let allowed = HostAgents::new().with_env_allowed(vec!["CARGO_PKG_*".into()]);
    assert_eq!(ask(&allowed, "CARGO_PKG_NAME").await, "concerto-tools");
    assert_eq!(ask(&allowed, "CARGO_MANIFEST_DIR").await, "<unset>");
    allowed.shutdown().await;
}

/// A host that keeps a file of how it ended: `eof` when its stdin closed, nothing when it
/// was killed.
fn recording_host(name: &str, record: &std::path::Path, after_eof: &str) -> Value {
    json!({
        "name": name, "connector": "sh", "input_format": "text", "output_format": "text",
        "command": "sh",
        "args": ["-c", format!(
            "while read -r line; do echo \"got $line\"; done; echo eof > '{}'; {after_eof}",
            record.display()
        )],
    })
}

#[tokio::test]
async fn shutdown_closes_stdin_and_lets_the_process_exit_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("ended");
    let hosts = HostAgents::new();
    let p = one(recording_host("Polite", &record, ""));
    assert_eq!(hosts.exchange(&p, 0, "hi".into()).await.unwrap(), "got hi");
    let started = Instant::now();
    hosts.shutdown().await;
    assert_eq!(
        std::fs::read_to_string(&record).ok().as_deref(),
        Some("eof\n"),
        "the process did not see the end of its input"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn shutdown_kills_a_process_that_does_not_exit_after_its_stdin_closed() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("ended");
    let hosts = HostAgents::new();
    let p = one(recording_host("Stubborn", &record, "exec sleep 60"));
    assert_eq!(hosts.exchange(&p, 0, "hi".into()).await.unwrap(), "got hi");
    let started = Instant::now();
    hosts.shutdown().await;
    let took = started.elapsed();
    assert_eq!(
        std::fs::read_to_string(&record).ok().as_deref(),
        Some("eof\n")
    );
    assert!(
        took >= concerto_tools::hosts::CLOSE_GRACE && took < Duration::from_secs(8),
        "{took:?}"
    );
}
