//! External agents of concertoc 7ad10db end to end: `listen` sessions and the init handshake,
//! against real child processes — `tests/stream/stream_agent.py`, one small stdio agent with a
//! mode per behaviour (converses, reports an error, never answers, crashes mid-stream, writes
//! garbage, writes JSON without a type, answers or refuses or ignores its init). The programs
//! are `tests/stream/*.conc`, compiled by `tests/stream/compile.sh`. Each case must end with
//! its expected outcome within a bound, and no agent process may outlive the runtime.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use concerto_runtime::{RuntimeConfig, ToolPermission};
use concerto_tests::{RunResult, compare_emits, read_expected, run_ir_path_with};

const AGENTS: [&str; 13] = [
    "Trawler", "Netter", "Winch", "Mute", "Wreck", "Babbler", "Plain", "Crane", "Stubborn", "Deaf",
    "Parrot", "Flood", "Selfish",
];

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("stream")
}

/// Runs `tests/stream/NAME.head.conc-ir` with every agent enabled; the runtime is dropped
/// (its agent processes stopped) before this returns.
fn run(name: &str) -> (RunResult, Duration) {
    require_python();
    let started = Instant::now();
    let result = run_ir_path_with(&dir().join(format!("{name}.head.conc-ir")), |b| {
        let config = AGENTS
            .iter()
            .fold(RuntimeConfig::default(), |config, agent| {
                config.with_tool_permission(agent, ToolPermission::AllMethods)
            });
        b.config(config)
    });
    (result, started.elapsed())
}

fn require_python() {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "these tests run stdio agents written in Python: install python3"
    );
}

fn check(name: &str, result: &RunResult) {
    let expected = read_expected(&dir().join(format!("{name}.head.expected.jsonl"))).unwrap();
    let ignore = ["listen".to_string(), "error".to_string()];
    if let Err(e) = compare_emits(&result.emits, &expected, &ignore) {
        panic!(
            "{name}: {e}\ngot: {:#?}\nerror: {:?}",
            result.emits, result.error
        );
    }
    assert!(result.error.is_none(), "{name}: {:?}", result.error);
}

/// Processes whose command line carries `tag` (the agents' last argument).
fn processes_tagged(tag: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let is_zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| {
            s.split(") ")
                .nth(1)
                .is_some_and(|rest| rest.starts_with('Z'))
        });
        if !is_zombie && cmdline.split(|b| *b == 0).any(|arg| arg == tag.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// No process with any of `tags` is left (a killed process may take a moment to go).
fn assert_gone(tags: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: Vec<(&str, Vec<u32>)> = tags
            .iter()
            .map(|t| (*t, processes_tagged(t)))
            .filter(|(_, p)| !p.is_empty())
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent processes still running after the runtime stopped: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_conversation_dispatches_each_message_type_and_writes_replies_back() {
    let (result, took) = run("listen_converse");
    check("listen_converse", &result);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_gone(&["tag-converse"]);
}

#[test]
fn error_timeout_crash_and_garbage_each_end_the_listen_and_the_program_goes_on() {
    let (result, took) = run("listen_failures");
    check("listen_failures", &result);
    // The silent agent's timeout is 2 s: the whole file takes about that, never 20 s.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_gone(&[
        "tag-error",
        "tag-silent",
        "tag-crash",
        "tag-garbage",
        "tag-untyped",
    ]);
}

#[test]
fn an_error_in_a_handler_ends_the_listen_and_an_outer_try_catches_it() {
    let (result, took) = run("listen_handler_throws");
    check("listen_handler_throws", &result);
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_gone(&["tag-throws"]);
}

#[test]
fn text_prompts_stay_one_line_and_oversized_or_silent_answers_are_errors() {
    let (result, took) = run("agent_lines");
    check("agent_lines", &result);
    // The silent agent's timeout is 2 s; 33 MiB of output is read and refused.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_gone(&["tag-echo", "tag-huge", "tag-silent"]);
}

#[test]
fn a_handler_calling_its_own_agent_fails_instead_of_hanging() {
    let (result, took) = run("listen_busy");
    check("listen_busy", &result);
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_gone(&["tag-busy"]);
}

#[test]
fn params_are_sent_once_per_process_and_a_refused_or_silent_init_is_an_error() {
    let (result, took) = run("init_params");
    check("init_params", &result);
    // The silent init's timeout is 2 s.
    assert!(took < Duration::from_secs(12), "took {took:?}");
    assert_gone(&["tag-init", "tag-init-error", "tag-init-silent"]);
}

#[test]
fn a_listen_needs_the_agent_enabled() {
    require_python();
    let result = run_ir_path_with(&dir().join("listen_converse.head.conc-ir"), |b| b);
    let err = result.error.expect("a listen without permission must fail");
    let text = err.to_string();
    assert!(text.contains("Trawler"), "{text}");
    assert!(text.contains("--allow-tool"), "{text}");
    assert!(result.emits.is_empty(), "{:?}", result.emits);
    assert!(processes_tagged("tag-converse").is_empty());
}

#[test]
fn the_leftover_check_sees_a_running_agent() {
    require_python();
    let mut child = std::process::Command::new("python3")
        .arg(dir().join("stream_agent.py"))
        .args(["silent", "tag-probe"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Polled until it is seen as itself: a version manager's `python3` shim execs the real
    // interpreter in the same process, and its command line can read empty in between.
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_tagged("tag-probe") != vec![child.id()] {
        assert!(
            Instant::now() < deadline,
            "the running agent was not found: {:?}",
            processes_tagged("tag-probe")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_gone(&["tag-probe"]);
}
