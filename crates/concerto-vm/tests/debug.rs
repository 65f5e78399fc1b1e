//! Debug mode of an execution: stepping, breakpoints, inspection, tracing.

use std::sync::{Arc, Mutex};

use concerto_vm::testing::{self, FakeSystem, RecordingEmits};
use concerto_vm::{
    BreakpointError, ErrorKind, Execution, StepState, StopReason, Value, Vm, op_name,
};

fn ir(constants: &str, functions: &[String]) -> String {
    format!(
        r#"{{"version":"0.1.0","module":"t","source_file":"t.conc","constants":[{constants}],
        "functions":[{}],
        "metadata":{{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,"debug_info":true,"entry_point":"main"}}}}"#,
        functions.join(",")
    )
}

fn func(name: &str, params: &[&str], body: &str) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|p| format!(r#"{{"name":"{p}","type":"Int"}}"#))
        .collect();
    format!(
        r#"{{"name":"{name}","module":"t","visibility":"private","params":[{}],"return_type":"Int","is_async":false,"locals":[],"instructions":[{body}]}}"#,
        params.join(",")
    )
}

/// `fn add(a, b) { s = a + b; return s }`
/// `fn main() { x = 2; y = add(x, 40); return y }`
fn add_program() -> String {
    let add = r#"
        {"op":"LOAD_LOCAL","name":"a"},{"op":"LOAD_LOCAL","name":"b"},{"op":"ADD"},
        {"op":"STORE_LOCAL","name":"s"},{"op":"LOAD_LOCAL","name":"s"},{"op":"RETURN"}"#;
    let main = r#"
        {"op":"LOAD_CONST","arg":0},{"op":"STORE_LOCAL","name":"x"},
        {"op":"LOAD_LOCAL","name":"x"},{"op":"LOAD_CONST","arg":1},
        {"op":"LOAD_LOCAL","name":"add"},{"op":"CALL","argc":2},
        {"op":"STORE_LOCAL","name":"y"},{"op":"LOAD_LOCAL","name":"y"},{"op":"RETURN"}"#;
    ir(
        r#"{"index":0,"type":"int","value":2},{"index":1,"type":"int","value":40}"#,
        &[func("add", &["a", "b"], add), func("main", &[], main)],
    )
}

fn execution(text: &str) -> Execution {
    let program = Arc::new(concerto_ir::load_str(text).expect("test IR loads"));
    Execution::new(Vm::new(program), testing::host(), Default::default())
}

fn local(state: &StepState, name: &str) -> Option<Value> {
    state
        .locals
        .iter()
        .find(|(n, _)| &**n == name)
        .map(|(_, v)| v.clone())
}

fn step_to_end(exec: &mut Execution) -> (Vec<StepState>, StepState) {
    let mut states = Vec::new();
    for _ in 0..10_000 {
        let state = testing::block_on(exec.step());
        if state.halted {
            return (states, state);
        }
        states.push(state);
    }
    panic!("the program did not finish within 10000 steps");
}

#[test]
fn first_step_stops_before_the_first_instruction() {
    let mut exec = execution(&add_program());
    assert_eq!(exec.debug_state().reason, StopReason::NotStarted);
    let state = testing::block_on(exec.step());
    assert_eq!(&*state.function, "main");
    assert_eq!(state.pc, 0);
    assert_eq!(state.reason, StopReason::Step);
    assert!(!state.halted);
    assert!(
        state.locals.is_empty(),
        "nothing assigned yet: {:?}",
        state.locals
    );
    assert_eq!(state.frames.len(), 1);
}

#[test]
fn stepping_to_completion_halts_with_mains_value() {
    let mut exec = execution(&add_program());
    let (states, end) = step_to_end(&mut exec);
    assert!(end.halted);
    assert_eq!(end.reason, StopReason::Halted);
    match end.outcome {
        Some(Ok(Value::Int(42))) => {}
        other => panic!("expected Ok(42), got {other:?}"),
    }
    // Every IR instruction visited belongs to main or add, and the step into `add` shows
    // both frames.
    assert!(
        states
            .iter()
            .all(|s| ["main", "add"].contains(&&*s.function))
    );
    let inside = states
        .iter()
        .find(|s| &*s.function == "add")
        .expect("stepping enters add");
    let names: Vec<&str> = inside.frames.iter().map(|f| &*f.function).collect();
    assert_eq!(names, ["add", "main"]);
    // Steps advance: consecutive states in one frame never repeat a location.
    for pair in states.windows(2) {
        assert!(
            (pair[0].function.clone(), pair[0].op_index)
                != (pair[1].function.clone(), pair[1].op_index),
            "a step did not move: {:?}",
            pair[1]
        );
    }
    // Stepping on after the end returns the halted state again.
    let again = testing::block_on(exec.step());
    assert!(again.halted);
}

#[test]
fn locals_by_name_reflect_assignments() {
    let mut exec = execution(&add_program());
    let (states, _) = step_to_end(&mut exec);
    let main_states: Vec<&StepState> = states.iter().filter(|s| &*s.function == "main").collect();
    assert_eq!(local(main_states[0], "x"), None);
    let after_x = main_states
        .iter()
        .find(|s| local(s, "x").is_some())
        .expect("x gets assigned");
    assert_eq!(local(after_x, "x"), Some(Value::Int(2)));
    let in_add = states
        .iter()
        .rfind(|s| &*s.function == "add")
        .expect("add runs");
    assert_eq!(local(in_add, "a"), Some(Value::Int(2)));
    assert_eq!(local(in_add, "b"), Some(Value::Int(40)));
    assert_eq!(local(in_add, "s"), Some(Value::Int(42)));
}

#[test]
fn breakpoint_in_a_called_function_stops_exactly_there() {
    let mut exec = execution(&add_program());
    // `ADD` (instruction 2) has an op of its own.
    let bp = exec.set_breakpoint("add", 2).expect("breakpoint");
    assert_eq!(bp.stops_at, 2);
    let state = testing::block_on(exec.continue_to_breakpoint());
    assert_eq!(state.reason, StopReason::Breakpoint);
    assert_eq!(&*state.function, "add");
    assert_eq!(state.pc, 2);
    let names: Vec<&str> = state.frames.iter().map(|f| &*f.function).collect();
    assert_eq!(names, ["add", "main"]);
    // The caller's frame shows the call in progress.
    assert_eq!(state.frames[1].pc, Some(5));
    assert_eq!(local(&state, "a"), Some(Value::Int(2)));
    assert_eq!(local(&state, "s"), None);
    let end = testing::block_on(exec.continue_to_breakpoint());
    assert!(end.halted);
    assert!(matches!(end.outcome, Some(Ok(Value::Int(42)))));
}

#[test]
fn breakpoint_on_a_merged_instruction_stops_at_the_next_one_with_code() {
    let mut exec = execution(&add_program());
    // `LOAD_LOCAL a` (0) is folded into the `ADD` (2).
    let bp = exec.set_breakpoint("add", 0).expect("breakpoint");
    assert_eq!(bp.instruction, 0);
    assert_eq!(bp.stops_at, 2);
    let state = testing::block_on(exec.continue_to_breakpoint());
    assert_eq!((&*state.function, state.pc), ("add", 2));
}

#[test]
fn breakpoint_in_main_and_repeated_hits_in_a_loop() {
    // `i = 0; while i < 3 { i = i + 1 }; return i`
    let main = r#"
        {"op":"LOAD_CONST","arg":0},{"op":"STORE_LOCAL","name":"i"},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"LOAD_CONST","arg":1},{"op":"LT"},{"op":"JUMP_IF_FALSE","offset":11},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"LOAD_CONST","arg":2},{"op":"ADD"},{"op":"STORE_LOCAL","name":"i"},
        {"op":"JUMP","offset":2},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"RETURN"}"#;
    let text = ir(
        r#"{"index":0,"type":"int","value":0},{"index":1,"type":"int","value":3},{"index":2,"type":"int","value":1}"#,
        &[func("main", &[], main)],
    );
    let mut exec = execution(&text);
    let bp = exec.set_breakpoint("main", 8).expect("breakpoint");
    assert_eq!(bp.stops_at, 8);
    let mut seen = Vec::new();
    loop {
        let state = testing::block_on(exec.continue_to_breakpoint());
        if state.halted {
            assert!(matches!(state.outcome, Some(Ok(Value::Int(3)))));
            break;
        }
        assert_eq!((&*state.function, state.pc), ("main", 8));
        seen.push(local(&state, "i"));
    }
    assert_eq!(
        seen,
        [
            Some(Value::Int(0)),
            Some(Value::Int(1)),
            Some(Value::Int(2))
        ]
    );
    // The loop test: lowering moves a copy of it to the loop's end; both copies stop.
    let mut exec = execution(&text);
    let bp = exec.set_breakpoint("main", 2).expect("breakpoint");
    let mut tests = Vec::new();
    loop {
        let state = testing::block_on(exec.continue_to_breakpoint());
        if state.halted {
            break;
        }
        assert_eq!(state.pc, bp.stops_at);
        tests.push(local(&state, "i"));
    }
    assert_eq!(
        tests,
        [
            Some(Value::Int(0)),
            Some(Value::Int(1)),
            Some(Value::Int(2)),
            Some(Value::Int(3))
        ]
    );
}

#[test]
fn bad_breakpoints_are_refused_with_a_reason() {
    let mut exec = execution(&add_program());
    assert_eq!(
        exec.set_breakpoint("nope", 0),
        Err(BreakpointError::UnknownFunction("nope".into()))
    );
    let err = exec.set_breakpoint("main", 99).unwrap_err();
    assert!(
        err.to_string().contains("`main` instruction 99"),
        "message: {err}"
    );
    assert!(exec.breakpoints().is_empty());
    exec.set_breakpoint("main", 5).expect("breakpoint");
    assert!(exec.remove_breakpoint("main", 5));
    assert!(!exec.remove_breakpoint("main", 5));
}

#[test]
fn an_uncaught_error_halts_with_the_error_and_keeps_the_frame() {
    // `x = 7; return x / 0`
    let main = r#"
        {"op":"LOAD_CONST","arg":0},{"op":"STORE_LOCAL","name":"x"},
        {"op":"LOAD_LOCAL","name":"x"},{"op":"LOAD_CONST","arg":1},{"op":"DIV"},{"op":"RETURN"}"#;
    let text = ir(
        r#"{"index":0,"type":"int","value":7},{"index":1,"type":"int","value":0}"#,
        &[func("main", &[], main)],
    );
    let mut exec = execution(&text);
    let end = testing::block_on(exec.continue_to_breakpoint());
    assert!(end.halted);
    match &end.outcome {
        Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::DivisionByZero),
        other => panic!("expected a division error, got {other:?}"),
    }
    // Post mortem: the failing instruction and the locals at that point.
    assert_eq!((&*end.function, end.pc), ("main", 4));
    assert_eq!(local(&end, "x"), Some(Value::Int(7)));
}

#[test]
fn a_step_ends_even_in_a_loop_that_never_ends() {
    // `while true {}`
    let main = r#"{"op":"JUMP","offset":0}"#;
    let mut exec = execution(&ir("", &[func("main", &[], main)]));
    for _ in 0..5 {
        let state = testing::block_on(exec.step());
        assert!(!state.halted);
        assert_eq!((&*state.function, state.pc), ("main", 0));
    }
}

#[test]
fn operands_show_the_live_registers() {
    let mut exec = execution(&add_program());
    // Stop before the call: its arguments are on the operand stack.
    let bp = exec.set_breakpoint("main", 5).expect("breakpoint");
    let state = testing::block_on(exec.continue_to_breakpoint());
    assert_eq!(state.pc, bp.stops_at);
    assert!(state.op.is_some_and(|op| op_name(&op).starts_with("CALL")));
    assert!(
        state.operands.starts_with(&[Value::Int(2), Value::Int(40)]),
        "operands: {:?}",
        state.operands
    );
    // At the start of main nothing is on the stack.
    let mut exec = execution(&add_program());
    let first = testing::block_on(exec.step());
    assert!(first.operands.is_empty(), "operands: {:?}", first.operands);
}

#[test]
fn the_tracer_sees_every_op_and_the_run_matches_a_normal_one() {
    let mut exec = execution(&add_program());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    exec.set_tracer(move |ev| {
        sink.lock().unwrap().push((
            ev.function.to_string(),
            ev.pc,
            op_name(ev.op),
            ev.depth,
            ev.top.cloned(),
        ))
    });
    exec.set_breakpoint("add", 2).expect("breakpoint");
    // Runs to the end ignoring the breakpoint.
    let end = testing::block_on(exec.run_to_end());
    assert!(matches!(end.outcome, Some(Ok(Value::Int(42)))));
    let seen = seen.lock().unwrap();
    let program = exec.program().clone();
    let total: usize = program.functions.iter().map(|f| f.code.len()).sum();
    assert_eq!(seen.len(), total, "straight-line code: every op runs once");
    assert!(
        seen.iter()
            .any(|(f, _, op, depth, _)| f == "add" && op == "ADD" && *depth == 1)
    );
    // Before the call, the top of the operand registers is its last argument.
    let call = seen
        .iter()
        .find(|(f, _, op, _, _)| f == "main" && op.starts_with("CALL"))
        .expect("main calls add");
    assert_eq!(call.4, Some(Value::Int(40)));
}

#[test]
fn hello_example_steps_like_a_normal_run() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/hello/hello.conc-ir"
    );
    let program = Arc::new(concerto_ir::load_path(path).expect("hello loads"));
    let vm = Vm::new(program);
    let run = |debug: bool| {
        let emits = Arc::new(RecordingEmits::default());
        let host = testing::host_with(emits.clone(), Arc::new(FakeSystem::default()));
        let mut exec = Execution::new(vm.clone(), host, Default::default());
        let (outcome, steps) = if debug {
            exec.set_breakpoint("reserve", 0).expect("breakpoint");
            let mut steps = 0;
            let mut reserve_hits = 0;
            let outcome = loop {
                let state = testing::block_on(exec.step());
                if state.halted {
                    break state.outcome.expect("halted with an outcome");
                }
                if state.reason == StopReason::Breakpoint {
                    reserve_hits += 1;
                    assert_eq!(&*state.function, "reserve");
                    assert!(state.frames.len() >= 2);
                }
                steps += 1;
            };
            assert_eq!(reserve_hits, 3, "reserve runs once per order");
            (outcome, steps)
        } else {
            (testing::block_on(exec.run_main()), 0)
        };
        let emits: Vec<(String, String)> = emits
            .emits
            .lock()
            .iter()
            // Pipeline durations are timings: a loaded machine makes them differ by a ms.
            .map(|(c, v)| {
                let text = v.to_display();
                let text = match text.find("\"duration_ms\": ") {
                    Some(at) => text[..at].to_string(),
                    None => text,
                };
                (c.clone(), text)
            })
            .collect();
        (
            outcome.map(|v| v.to_display()).map_err(|e| e.to_string()),
            emits,
            steps,
        )
    };
    let (normal, normal_emits, _) = run(false);
    let (debugged, debug_emits, steps) = run(true);
    assert_eq!(normal, debugged);
    assert_eq!(normal_emits, debug_emits);
    assert!(normal_emits.len() >= 5, "emits: {normal_emits:?}");
    assert!(steps > 50, "steps: {steps}");
}
