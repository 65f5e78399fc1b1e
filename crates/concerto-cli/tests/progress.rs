//! `concerto run`'s live status line (issue 20): on stderr, what the run is doing while it
//! waits. Runs of the binary against a loopback OpenAI-compatible server that answers
//! slowly, once after a 429; and on a terminal made by `script`.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod common;

use common::{answered, bin, fresh_dir, program_at, programs, rate_limited, scripted_server};

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A loopback OpenAI-compatible server: request number `n` (from 0) is answered 429 after
/// `refusal_delay` when `n < refused`, else after `delay` with a `gpt-4o` reply of 1000
/// input and 200 output tokens. Its base URL and the number of requests it answered.
fn slow_server(
    refused: usize,
    refusal_delay: Duration,
    delay: Duration,
) -> (String, Arc<AtomicUsize>) {
    scripted_server(move |n| {
        if n < refused {
            std::thread::sleep(refusal_delay);
            rate_limited()
        } else {
            std::thread::sleep(delay);
            answered("gpt-4o", "Teal", (1000, 200))
        }
    })
}

/// A config file letting the program reach the loopback server, with one retry.
fn config_in(dir: &Path) -> PathBuf {
    let config = dir.join("runtime.toml");
    std::fs::write(
        &config,
        "[connections.openai]\napi_key_env = \"CONCERTO_PROGRESS_KEY\"\n\
         retry = { max_attempts = 2, backoff = \"none\" }\n\n\
         [permissions]\nallow_net = [\"127.0.0.1\"]\n",
    )
    .unwrap();
    config
}

/// `concerto run ARGS… --config CONFIG PROGRAM` with stdout and stderr piped.
fn run(args: &[&str], config: &Path, program: &Path) -> Output {
    bin()
        .arg("run")
        .args(args)
        .arg("--config")
        .arg(config)
        .arg(program)
        .env("CONCERTO_PROGRESS_KEY", "sk-progress-test")
        .env_remove("OPENAI_API_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The status lines of a stderr, each as (seconds elapsed, the rest of the line).
fn status_lines(err: &str) -> Vec<(u64, String)> {
    err.lines()
        .filter(|l| l.contains(" · calls "))
        .map(|l| {
            let (clock, rest) = l.split_once(" · ").unwrap();
            let secs = clock
                .strip_suffix('s')
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("a clock under a minute: {l:?}"));
            (secs, rest.to_string())
        })
        .collect()
}

/// `--progress` with stderr piped, against a server that refuses the first request after
/// 0.6 s (429, retried) and answers each request after 1.5 s: the two agent calls of the
/// pipeline program are shown in flight one after the other, the retry is counted while
/// its call is in flight, the elapsed time moves while the server is slow, and the last
/// line shows both calls done with their tokens and cost. Stdout holds the emits only.
#[test]
fn progress_shows_calls_in_flight_and_done_retries_tokens_cost_and_elapsed_time() {
    let dir = fresh_dir("slow");
    let (url, count) = slow_server(1, Duration::from_millis(600), Duration::from_millis(1500));
    let program = program_at(
        &dir,
        "pipeline_calls.head.conc-ir",
        &url,
        "pipeline_calls.head.conc-ir",
    );
    let out = run(&["--progress"], &config_in(&dir), &program);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 3, "one 429, then two answers");
    assert!(
        stdout(&out).contains("[emit:done] true"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains(" · "), "{}", stdout(&out));

    let lines = status_lines(&err);
    let has = |secs: u64, text: &str| lines.iter().any(|(s, l)| *s >= secs && l == text);
    // The first call, before and after its 429 was retried; the elapsed time moves while
    // it waits on the slow answer (ticks, not events, redraw the line then).
    assert!(
        has(
            0,
            "calls 1 in flight, 0 done · retries 0 · tokens 0 · $0.0000"
        ),
        "{err}"
    );
    assert!(
        has(
            1,
            "calls 1 in flight, 0 done · retries 1 · tokens 0 · $0.0000"
        ),
        "{err}"
    );
    // The second call in flight after the first is done (1000 + 200 tokens of gpt-4o:
    // $0.0025 + $0.0020).
    assert!(
        has(
            1,
            "calls 1 in flight, 1 done · retries 1 · tokens 1200 · $0.0045"
        ),
        "{err}"
    );
    let (secs, last) = lines.last().unwrap();
    assert_eq!(
        last, "calls 0 in flight, 2 done · retries 1 · tokens 2400 · $0.0090",
        "{err}"
    );
    assert!(
        *secs >= 3,
        "a refusal of 0.6 s, two answers of 1.5 s: {err}"
    );
    // One line per change: no two equal lines in a row.
    for pair in err.lines().collect::<Vec<_>>().windows(2) {
        assert_ne!(pair[0], pair[1], "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without `--progress`, stderr not a terminal: the line is off, nothing of it on stderr.
#[test]
fn without_progress_a_piped_stderr_gets_no_status_line() {
    let dir = fresh_dir("off");
    let (url, count) = slow_server(1, Duration::ZERO, Duration::from_millis(300));
    let program = program_at(
        &dir,
        "pipeline_calls.head.conc-ir",
        &url,
        "pipeline_calls.head.conc-ir",
    );
    let out = run(&[], &config_in(&dir), &program);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(count.load(Ordering::SeqCst), 3);
    assert!(
        stdout(&out).contains("[emit:done] true"),
        "{}",
        stdout(&out)
    );
    for text in ["calls", "in flight", "retries", "tokens", " · "] {
        assert!(!err.contains(text), "{text:?} on stderr: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--progress` with `--emit-format jsonl` (where the line is off by default): the status
/// goes to stderr, and stdout is still exactly the emits as JSON lines.
#[test]
fn progress_with_jsonl_leaves_stdout_exactly_json_lines() {
    let dir = fresh_dir("jsonl");
    let (url, _) = slow_server(0, Duration::ZERO, Duration::from_millis(1500));
    let program = program_at(&dir, "fallback.conc-ir", &url, "fallback.conc-ir");
    let out = run(
        &["--progress", "--emit-format", "jsonl"],
        &config_in(&dir),
        &program,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    let text = stdout(&out);
    assert!(text.ends_with('\n'), "{text:?}");
    let emits: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?} in {text:?}")))
        .collect();
    let channels: Vec<&str> = emits
        .iter()
        .map(|e| {
            let obj = e.as_object().unwrap();
            assert_eq!(obj.len(), 2, "{e}");
            assert!(obj.contains_key("payload"), "{e}");
            obj["channel"].as_str().unwrap()
        })
        .collect();
    assert_eq!(channels, ["text", "connection", "model"], "{text}");
    assert_eq!(emits[0]["payload"], "Teal");
    let lines = status_lines(&err);
    assert!(
        lines
            .iter()
            .any(|(s, l)| *s >= 1 && l.starts_with("calls 1 in flight, 0 done")),
        "{err}"
    );
    assert_eq!(
        lines.last().unwrap().1,
        "calls 0 in flight, 1 done · retries 0 · tokens 1200 · $0.0045",
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--progress` wins over `--quiet`: no emits on stdout, the status on stderr.
#[test]
fn progress_wins_over_quiet() {
    let out = bin()
        .args(["run", "--mock", "--progress", "--quiet"])
        .arg(programs().join("pipeline_calls.head.conc-ir"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(stdout(&out), "");
    let last = status_lines(&err).pop().unwrap_or_else(|| panic!("{err}"));
    assert!(last.1.starts_with("calls 0 in flight, 2 done"), "{err}");
}

/// A terminal as the tests see it: the text the bytes written to it leave on its screen
/// (the control sequences indicatif and the status line use: carriage return, newline,
/// cursor up and down, erase line; others are ignored).
fn screen(bytes: &[u8], width: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut rows: Vec<Vec<char>> = vec![Vec::new()];
    let (mut row, mut col) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '\r' => col = 0,
            '\n' => row += 1,
            '\x1b' => {
                if chars.peek() != Some(&'[') {
                    continue;
                }
                chars.next();
                let mut param = String::new();
                let mut end = ' ';
                for c in chars.by_ref() {
                    if c.is_ascii_digit() || c == ';' || c == '?' {
                        param.push(c);
                    } else {
                        end = c;
                        break;
                    }
                }
                let n: usize = param.parse().unwrap_or(1);
                match end {
                    'A' => row = row.saturating_sub(n),
                    'B' => row += n,
                    'C' => col += n,
                    'D' => col = col.saturating_sub(n),
                    'K' if param == "2" => {
                        if let Some(r) = rows.get_mut(row) {
                            r.clear();
                        }
                    }
                    'K' => {
                        if let Some(r) = rows.get_mut(row) {
                            r.truncate(col);
                        }
                    }
                    _ => {}
                }
            }
            ch => {
                if col >= width {
                    row += 1;
                    col = 0;
                }
                while rows.len() <= row {
                    rows.push(Vec::new());
                }
                let r = &mut rows[row];
                while r.len() <= col {
                    r.push(' ');
                }
                r[col] = ch;
                col += 1;
            }
        }
        while rows.len() <= row {
            rows.push(Vec::new());
        }
    }
    let mut rows: Vec<String> = rows
        .iter()
        .map(|r| r.iter().collect::<String>().trim_end().to_string())
        .collect();
    while rows.last().is_some_and(String::is_empty) {
        rows.pop();
    }
    rows
}

/// `concerto run ARGS… pipeline_calls` on a terminal of 120 columns (`script` gives the
/// run one, for stdout and stderr alike): what the terminal received.
fn on_a_terminal(args: &str) -> Output {
    let program = programs().join("pipeline_calls.head.conc-ir");
    let command = format!(
        "stty cols 120 rows 40; exec '{}' run {args} '{}'",
        env!("CARGO_BIN_EXE_concerto"),
        program.display()
    );
    std::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env_remove("RUST_LOG")
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `script` (util-linux) for a terminal: {e}"))
}

/// On a terminal (`script` gives the run one, for stdout and stderr alike) the line is on
/// without `--progress`: it is drawn while the mock answers slowly, the emits written to
/// the same terminal meanwhile each stay whole on their own row, and when the run ends the
/// line is cleared: the screen holds the emits and nothing else.
#[test]
fn on_a_terminal_the_line_is_on_by_default_and_cleared_at_the_end() {
    let out = on_a_terminal("--mock --mock-latency-ms 1200");
    let raw = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{raw}");
    // The line was drawn, in flight and with its clock past a second.
    assert!(raw.contains("1s · calls 1 in flight"), "{raw:?}");
    // Durations vary by a few milliseconds: compared without their number.
    let rows: Vec<String> = screen(&out.stdout, 120)
        .iter()
        .map(|row| match row.split_once("\"duration_ms\": ") {
            Some((head, tail)) => {
                format!(
                    "{head}\"duration_ms\": N{}",
                    tail.trim_start_matches(|c: char| c.is_ascii_digit())
                )
            }
            None => row.clone(),
        })
        .collect();
    assert_eq!(
        rows,
        [
            r#"[emit:pipeline:start] {"name": Newsletter, "stages": 2}"#,
            r#"[emit:pipeline:stage_start] {"pipeline": Newsletter, "stage": draft}"#,
            r#"[emit:pipeline:stage_complete] {"pipeline": Newsletter, "stage": draft, "duration_ms": N}"#,
            r#"[emit:pipeline:stage_start] {"pipeline": Newsletter, "stage": edit}"#,
            r#"[emit:pipeline:stage_complete] {"pipeline": Newsletter, "stage": edit, "duration_ms": N}"#,
            r#"[emit:pipeline:complete] {"name": Newsletter, "duration_ms": N}"#,
            "[emit:done] true",
        ],
        "{raw:?}"
    );
}

/// On a terminal, `--quiet`, `--emit-format jsonl` and `--debug` each turn the line off;
/// `--progress` turns it back on.
#[test]
fn on_a_terminal_quiet_jsonl_and_debug_turn_the_line_off_and_progress_on() {
    for (args, shown) in [
        ("--quiet", false),
        ("--emit-format jsonl", false),
        ("--debug", false),
        ("--quiet --progress", true),
        ("--emit-format jsonl --progress", true),
        ("--debug --progress", true),
    ] {
        let out = on_a_terminal(&format!("--mock --mock-latency-ms 400 {args}"));
        let raw = stdout(&out);
        assert_eq!(out.status.code(), Some(0), "{args}: {raw}");
        assert_eq!(raw.contains(" · calls "), shown, "{args}: {raw:?}");
        if shown {
            assert!(raw.contains("calls 1 in flight, 0 done"), "{args}: {raw:?}");
        }
    }
}
