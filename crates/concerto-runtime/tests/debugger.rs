//! The debugger facade: the specification's "Debugging" calls on real programs.

use std::sync::{Arc, Mutex};

use concerto_runtime::vm::ErrorKind;
use concerto_runtime::{DebugState, Debugger, Runtime, RuntimeConfig, RuntimeError, Value};

fn example(name: &str) -> String {
    format!(
        "{}/../../examples/{name}/{name}.conc-ir",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn local<'a>(state: &'a DebugState, name: &str) -> Option<&'a Value> {
    state.locals.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

fn frame_names(state: &DebugState) -> Vec<&str> {
    state.frames.iter().map(|f| f.function.as_str()).collect()
}

/// Records every emit as `(channel, payload)`.
fn record_emits(runtime: &mut Runtime) -> Arc<Mutex<Vec<(String, String)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    runtime.on_prefix("", move |channel, payload| {
        sink.lock()
            .unwrap()
            .push((channel.to_string(), payload.to_string()))
    });
    seen
}

async fn step_to_end(runtime: &mut Debugger) -> (Vec<DebugState>, DebugState) {
    let mut states = Vec::new();
    for _ in 0..100_000 {
        let state = runtime.step().await.expect("step");
        if state.halted {
            return (states, state);
        }
        states.push(state);
    }
    panic!("the program did not finish within 100000 steps");
}

/// `fn half(n) { let q = n / 0; return q }`, `fn main() { let x = 7; return half(x) }`
const FAILING: &str = r#"{"version":"0.1.0","module":"t","source_file":"t.conc",
  "constants":[{"index":0,"type":"int","value":7},{"index":1,"type":"int","value":0}],
  "functions":[
    {"name":"half","module":"t","visibility":"private","params":[{"name":"n","type":"Int"}],
     "return_type":"Int","is_async":false,"locals":[],"instructions":[
       {"op":"LOAD_LOCAL","name":"n","span":[1,20]},{"op":"LOAD_CONST","arg":1,"span":[1,24]},
       {"op":"DIV","span":[1,22]},{"op":"STORE_LOCAL","name":"q","span":[1,14]},
       {"op":"LOAD_LOCAL","name":"q","span":[1,34]},{"op":"RETURN","span":[1,27]}]},
    {"name":"main","module":"t","visibility":"private","params":[],
     "return_type":"Int","is_async":false,"locals":[],"instructions":[
       {"op":"LOAD_CONST","arg":0,"span":[2,23]},{"op":"STORE_LOCAL","name":"x","span":[2,15]},
       {"op":"LOAD_LOCAL","name":"x","span":[2,40]},{"op":"LOAD_LOCAL","name":"half","span":[2,35]},
       {"op":"CALL","argc":1,"span":[2,35]},{"op":"RETURN","span":[2,26]}]}],
  "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
    "debug_info":true,"entry_point":"main"}}"#;

#[tokio::test]
async fn the_specification_snippet_steps_hello_to_the_end() {
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir(example("hello")).expect("hello loads");
    let emits = record_emits(&mut runtime);
    runtime.set_breakpoint("main", 5);
    let mut states = Vec::new();
    loop {
        let state = runtime.step().await.expect("step");
        let halted = state.halted;
        states.push(state);
        if halted {
            break;
        }
    }
    let end = states.last().expect("states");
    assert!(end.error.is_none(), "error: {:?}", end.error);
    assert_eq!(end.value, Some(Value::Nil));
    assert!(states.len() > 100, "{} steps", states.len());
    // The first step stops before main's first instruction.
    assert_eq!((states[0].function.as_str(), states[0].pc), ("main", 0));
    // The step loop passes the breakpoint, and says so.
    let at_bp: Vec<&DebugState> = states.iter().filter(|s| s.at_breakpoint).collect();
    assert_eq!(at_bp.len(), 1);
    assert_eq!((at_bp[0].function.as_str(), at_bp[0].pc), ("main", 5));
    // The run did what a normal run does.
    let emits = emits.lock().unwrap().clone();
    let mut normal = Runtime::new(RuntimeConfig::default());
    normal.load_ir(example("hello")).expect("hello loads");
    let normal_emits = record_emits(&mut normal);
    normal.execute().await.expect("hello runs");
    // Pipeline timings differ between two runs: compare without them.
    let untimed = |list: &[(String, String)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(c, p)| {
                let p = match p.find(", \"duration_ms\": ") {
                    Some(at) => {
                        let rest = &p[at + 17..];
                        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                        format!("{}{}", &p[..at], &rest[digits..])
                    }
                    None => p.clone(),
                };
                (c.clone(), p)
            })
            .collect()
    };
    assert_eq!(untimed(&emits), untimed(&normal_emits.lock().unwrap()));
    assert!(emits.iter().any(|(c, _)| c == "receipt"));
    // After the end: the halted state again, and the metrics of the run.
    assert!(runtime.step().await.expect("step").halted);
    assert_eq!(runtime.metrics().emit_count, emits.len() as u64);
    assert!(runtime.inspect_stack().is_empty());
}

#[tokio::test]
async fn breakpoint_stops_inside_a_called_function_with_the_call_stack() {
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir(example("hello")).expect("hello loads");
    runtime.set_breakpoint("reserve", 9);
    let state = runtime.continue_execution().await.expect("continue");
    assert!(state.at_breakpoint);
    assert!(!state.halted);
    assert_eq!((state.function.as_str(), state.pc), ("reserve", 9));
    assert_eq!(state.span.line, 21, "`if available < order.qty`");
    assert_eq!(frame_names(&state), ["reserve", "main"]);
    // main is in the call of `reserve` (instruction 44 of main).
    assert_eq!(state.frames[1].pc, Some(44));
    assert_eq!(runtime.inspect_stack(), state.frames);
    // Locals by name: the parameter and the assignment before the breakpoint.
    let locals = runtime.inspect_locals();
    assert_eq!(locals, state.locals);
    assert_eq!(local(&state, "available"), Some(&Value::Int(3)));
    match local(&state, "order") {
        Some(Value::Struct { fields, .. }) => {
            assert_eq!(fields.get("item"), Some(&Value::String("lamp".into())))
        }
        other => panic!("order: {other:?}"),
    }
    // Each order reaches the breakpoint once.
    let second = runtime.continue_execution().await.expect("continue");
    assert_eq!((second.function.as_str(), second.pc), ("reserve", 9));
    assert_eq!(local(&second, "available"), Some(&Value::Int(1)));
    let third = runtime.continue_execution().await.expect("continue");
    assert_eq!(local(&third, "available"), Some(&Value::Int(1)));
    let end = runtime.continue_execution().await.expect("continue");
    assert!(end.halted);
    assert_eq!(end.value, Some(Value::Nil));
}

#[tokio::test]
async fn inspect_stack_shows_pipeline_and_method_frames() {
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir(example("hello")).expect("hello loads");
    runtime.set_breakpoint("Order::total", 0);
    let state = runtime.continue_execution().await.expect("continue");
    assert_eq!(state.function, "Order::total");
    let stack = runtime.inspect_stack();
    let names: Vec<&str> = stack.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(names.first(), Some(&"Order::total"));
    assert_eq!(names.last(), Some(&"main"));
    assert!(
        names.iter().any(|n| n.contains("price")),
        "the pipeline stage calls it: {names:?}"
    );
    assert!(
        stack.iter().any(|f| f.native),
        "the pipeline driver: {stack:?}"
    );
    assert!(matches!(local(&state, "self"), Some(Value::Struct { .. })));
}

#[tokio::test]
async fn locals_follow_assignments_step_by_step() {
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir_bytes(FAILING.as_bytes()).expect("loads");
    let first = runtime.step().await.expect("step");
    assert_eq!(local(&first, "x"), None);
    let second = runtime.step().await.expect("step");
    assert_eq!(local(&second, "x"), Some(&Value::Int(7)));
    assert_eq!(
        runtime.inspect_locals(),
        vec![("x".to_string(), Value::Int(7))]
    );
    // Into the call: `n` is the argument.
    let mut state = second;
    while state.function != "half" {
        state = runtime.step().await.expect("step");
    }
    assert_eq!(local(&state, "n"), Some(&Value::Int(7)));
    assert_eq!(frame_names(&state), ["half", "main"]);
}

/// `fn id(v) { return v }`, `fn main() { let s = "text"; let t = id(s); return t }`: `s` is
/// not read after the call, so lowering moves it into the call (`Take`).
const TAKEN: &str = r#"{"version":"0.1.0","module":"t","source_file":"t.conc",
  "constants":[{"index":0,"type":"string","value":"text"}],
  "functions":[
    {"name":"id","module":"t","visibility":"private","params":[{"name":"v","type":"String"}],
     "return_type":"String","is_async":false,"locals":[],"instructions":[
       {"op":"LOAD_LOCAL","name":"v","span":[1,20]},{"op":"RETURN","span":[1,13]}]},
    {"name":"main","module":"t","visibility":"private","params":[],
     "return_type":"String","is_async":false,"locals":[],"instructions":[
       {"op":"LOAD_CONST","arg":0,"span":[2,21]},{"op":"STORE_LOCAL","name":"s","span":[2,13]},
       {"op":"LOAD_LOCAL","name":"s","span":[2,40]},{"op":"LOAD_LOCAL","name":"id","span":[2,37]},
       {"op":"CALL","argc":1,"span":[2,37]},{"op":"STORE_LOCAL","name":"t","span":[2,29]},
       {"op":"LOAD_LOCAL","name":"t","span":[2,52]},{"op":"RETURN","span":[2,45]}]}],
  "metadata":{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
    "debug_info":true,"entry_point":"main"}}"#;

#[tokio::test]
async fn a_local_moved_into_its_last_call_stays_visible_while_debugging() {
    // The lowering takes `s` (moves it instead of copying it) in a normal run...
    let program = concerto_runtime::ir::load_str(TAKEN).expect("loads");
    let main = program
        .functions
        .iter()
        .find(|f| &*f.name == "main")
        .expect("main");
    assert!(
        main.disassemble().contains("Take"),
        "{}",
        main.disassemble()
    );
    let mut plain = Runtime::new(RuntimeConfig::default());
    plain.load_ir_bytes(TAKEN.as_bytes()).expect("loads");
    assert_eq!(
        plain.execute().await.expect("runs"),
        Value::String("text".into())
    );
    // ...and the debugger still shows it after the call, as the program wrote it.
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir_bytes(TAKEN.as_bytes()).expect("loads");
    let (states, end) = step_to_end(&mut runtime).await;
    let after_call = states
        .iter()
        .find(|st| st.function == "main" && local(st, "t").is_some())
        .expect("a step in main after the call");
    assert_eq!(
        local(after_call, "s"),
        Some(&Value::String("text".into())),
        "{after_call:?}"
    );
    assert_eq!(end.value, Some(Value::String("text".into())));
}

#[tokio::test]
async fn an_uncaught_error_halts_with_the_error() {
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir_bytes(FAILING.as_bytes()).expect("loads");
    let (states, end) = step_to_end(&mut runtime).await;
    assert!(!states.is_empty());
    assert!(end.halted);
    assert_eq!(end.value, None);
    let err = end.error.as_ref().expect("an error");
    assert_eq!(err.kind(), ErrorKind::DivisionByZero);
    assert_eq!(
        err.location().map(|l| l.function.to_string()),
        Some("half".to_string())
    );
    // Where it failed, with the frames and locals of that moment.
    assert_eq!((end.function.as_str(), end.pc), ("half", 2));
    assert_eq!(frame_names(&end), ["half", "main"]);
    assert_eq!(local(&end, "n"), Some(&Value::Int(7)));
    // run_to_end reports it as execute does.
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir_bytes(FAILING.as_bytes()).expect("loads");
    match runtime.run_to_end().await {
        Err(RuntimeError::Execution(e)) => assert_eq!(e.kind(), ErrorKind::DivisionByZero),
        other => panic!("expected the division error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_agent_program_steps_through_its_agent_calls() {
    let mut runtime = Runtime::builder()
        .mock_provider()
        .build()
        .expect("builds")
        .into_debugger();
    runtime.load_ir(example("harbour")).expect("harbour loads");
    let emits = record_emits(&mut runtime);
    // Before anything runs: the agents, unused.
    let agents = runtime.inspect_agents();
    let names: Vec<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["Clerk", "Planner"]);
    assert_eq!(agents[0].connection.as_deref(), Some("openai"));
    assert_eq!(agents[0].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(agents[1].connection.as_deref(), Some("anthropic"));
    assert_eq!(agents[1].model.as_deref(), Some("claude-haiku-4-5"));
    assert!(agents.iter().all(|a| a.usage.requests == 0));

    // Step until the first agent call has been made.
    let mut state = runtime.step().await.expect("step");
    let mut agent_ops = Vec::new();
    while local(&state, "greeting").is_none() {
        assert!(
            !state.halted,
            "halted before the first agent call: {state:?}"
        );
        agent_ops.push(state.op.clone());
        state = runtime.step().await.expect("step");
    }
    assert!(
        agent_ops
            .iter()
            .any(|op| op.as_deref().is_some_and(|o| o.starts_with("CALL"))),
        "{agent_ops:?}"
    );
    let agents = runtime.inspect_agents();
    assert_eq!(agents[0].usage.requests, 1, "Clerk answered once");
    assert_eq!(agents[1].usage.requests, 0, "Planner not yet");

    // On to the end, step by step.
    let (_, end) = step_to_end(&mut runtime).await;
    assert!(end.error.is_none(), "error: {:?}", end.error);
    let agents = runtime.inspect_agents();
    assert_eq!(agents[0].usage.requests, 2);
    assert!(agents[1].usage.requests >= 1);
    assert!(agents.iter().all(|a| a.usage.output_tokens > 0));
    assert_eq!(
        runtime.metrics().agent_calls,
        agents.iter().map(|a| a.usage.requests).sum::<u64>()
    );
    let channels: Vec<String> = emits
        .lock()
        .unwrap()
        .iter()
        .map(|(c, _)| c.clone())
        .collect();
    assert!(channels.contains(&"clerk".to_string()), "{channels:?}");
    assert!(
        channels.contains(&"logbook_entries".to_string()),
        "{channels:?}"
    );
}

#[tokio::test]
async fn bad_breakpoints_and_no_program_are_errors() {
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    assert!(matches!(runtime.step().await, Err(RuntimeError::NoProgram)));
    runtime.load_ir(example("hello")).expect("hello loads");
    runtime.set_breakpoint("nowhere", 3);
    let err = runtime.step().await.expect_err("unknown function");
    assert!(err.to_string().contains("nowhere"), "{err}");
    // Reported once, then dropped: stepping goes on.
    assert!(runtime.breakpoints().is_empty());
    let state = runtime.step().await.expect("step");
    assert_eq!(state.function, "main");
    runtime.set_breakpoint("main", 100_000);
    let err = runtime
        .continue_execution()
        .await
        .expect_err("past the end");
    assert!(err.to_string().contains("instruction 100000"), "{err}");
}

#[tokio::test]
async fn the_tracer_sees_every_op_of_a_run_to_the_end() {
    let mut runtime = Runtime::new_debugger(RuntimeConfig::default());
    runtime.load_ir_bytes(FAILING.as_bytes()).expect("loads");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    runtime.set_tracer(move |ev| {
        sink.lock().unwrap().push(format!(
            "{} {} {}",
            ev.function,
            ev.pc,
            concerto_runtime::vm::op_name(ev.op)
        ))
    });
    runtime.set_breakpoint("half", 2);
    // Breakpoints are ignored; the failing op is the last one traced.
    assert!(runtime.run_to_end().await.is_err());
    let lines = lines.lock().unwrap().clone();
    assert_eq!(lines.first().map(String::as_str), Some("main 0 LOAD_CONST"));
    assert_eq!(lines.last().map(String::as_str), Some("half 2 DIV"));
    // Restart: the same run again from the top.
    runtime.restart();
    let first = runtime.step().await.expect("step");
    assert_eq!((first.function.as_str(), first.pc), ("main", 0));
}

fn ir_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            ir_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "conc-ir") {
            out.push(path);
        }
    }
}

/// The outcome of a run, as text: the value, or the error message.
fn outcome(result: Result<Value, RuntimeError>) -> String {
    match result {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("err {e}"),
    }
}

/// Every end-to-end case gives the same value or error and the same emits when it is
/// stepped through instruction by instruction as when it runs normally.
#[tokio::test]
async fn stepping_any_case_matches_a_normal_run() {
    let mut files = Vec::new();
    ir_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/cases"),
        &mut files,
    );
    assert!(files.len() > 100, "{} cases", files.len());
    // The shared conformance corpus too, when it is there.
    ir_files(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/conformance/vm/cases"),
        &mut files,
    );
    let mut compared = 0;
    for file in &files {
        let mock = || Runtime::builder().mock_provider().build().expect("builds");
        let mut normal = mock();
        if normal.load_ir(file).is_err() {
            continue; // load-error cases: nothing to step
        }
        let normal_emits = record_emits(&mut normal);
        let expected = outcome(normal.execute().await);

        let mut runtime = mock().into_debugger();
        runtime.load_ir(file).expect("loads");
        let emits = record_emits(&mut runtime);
        // Step through the first few thousand instructions, then run on to the end.
        let mut end = runtime.step().await.expect("step");
        for _ in 0..5_000 {
            if end.halted {
                break;
            }
            assert!(!end.function.is_empty(), "{}", file.display());
            end = runtime.step().await.expect("step");
        }
        if !end.halted {
            end = runtime.continue_execution().await.expect("continue");
        }
        assert!(end.halted, "{}", file.display());
        let got = match (end.error, end.value) {
            (Some(e), _) => outcome(Err(RuntimeError::Execution(e))),
            (None, Some(v)) => outcome(Ok(v)),
            (None, None) => panic!("{}: halted without an outcome", file.display()),
        };
        let name = file.display();
        assert_eq!(got, expected, "{name}");
        // Timings differ between runs; compare the channels and the timing-free payloads.
        let strip = |emits: &[(String, String)]| -> Vec<String> {
            emits
                .iter()
                .map(|(c, p)| {
                    if p.contains("_ms") {
                        c.clone()
                    } else {
                        format!("{c} {p}")
                    }
                })
                .collect()
        };
        assert_eq!(
            strip(&emits.lock().unwrap()),
            strip(&normal_emits.lock().unwrap()),
            "{name}"
        );
        compared += 1;
    }
    assert!(compared > 100, "{compared} cases compared");
}
