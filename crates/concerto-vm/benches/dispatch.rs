//! Micro-benchmarks of the interpreter: the dispatch loop (arithmetic loop, calls, method
//! calls, string building) and value operations (clone, equality, display, JSON).

use std::sync::Arc;

use concerto_vm::{Execution, Value, Vm, testing};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

fn ir(constants: &str, functions: &str) -> String {
    format!(
        r#"{{"version":"0.1.0","module":"b","source_file":"b.conc","constants":[{constants}],
        "functions":[{functions}],
        "metadata":{{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,"debug_info":true,"entry_point":"main"}}}}"#
    )
}

fn func(name: &str, params: &[&str], body: &str) -> String {
    let params: Vec<String> = params
        .iter()
        .map(|p| format!(r#"{{"name":"{p}","type":"Int"}}"#))
        .collect();
    format!(
        r#"{{"name":"{name}","module":"b","visibility":"private","params":[{}],"return_type":"Int","is_async":false,"locals":[],"instructions":[{body}]}}"#,
        params.join(",")
    )
}

fn prepare(text: &str) -> Arc<Vm> {
    Vm::new(Arc::new(
        concerto_ir::load_str(text).expect("benchmark IR loads"),
    ))
}

fn run(vm: &Arc<Vm>) -> Value {
    let mut exec = Execution::new(vm.clone(), testing::host(), Default::default());
    testing::block_on(exec.run_main()).expect("runs")
}

/// `while i < 100000 { acc = (acc + i * 7) % 1000003; i += 1 } return acc`
fn counting_loop() -> String {
    let body = r#"
        {"op":"LOAD_CONST","arg":0},{"op":"STORE_LOCAL","name":"i"},
        {"op":"LOAD_CONST","arg":0},{"op":"STORE_LOCAL","name":"acc"},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"LOAD_CONST","arg":1},{"op":"LT"},{"op":"JUMP_IF_FALSE","offset":23},
        {"op":"LOAD_LOCAL","name":"acc"},{"op":"LOAD_LOCAL","name":"i"},{"op":"LOAD_CONST","arg":2},{"op":"MUL"},{"op":"ADD"},
        {"op":"LOAD_CONST","arg":3},{"op":"MOD"},{"op":"STORE_LOCAL","name":"acc"},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"LOAD_CONST","arg":4},{"op":"ADD"},{"op":"STORE_LOCAL","name":"i"},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"POP"},{"op":"JUMP","offset":4},
        {"op":"LOAD_LOCAL","name":"acc"},{"op":"RETURN"}"#;
    ir(
        r#"{"index":0,"type":"int","value":0},{"index":1,"type":"int","value":100000},{"index":2,"type":"int","value":7},{"index":3,"type":"int","value":1000003},{"index":4,"type":"int","value":1}"#,
        &func("main", &[], body),
    )
}

/// `fib(20)`
fn recursion() -> String {
    let fib = r#"
        {"op":"LOAD_LOCAL","name":"n"},{"op":"LOAD_CONST","arg":0},{"op":"LT"},{"op":"JUMP_IF_FALSE","offset":6},
        {"op":"LOAD_LOCAL","name":"n"},{"op":"RETURN"},
        {"op":"LOAD_LOCAL","name":"n"},{"op":"LOAD_CONST","arg":1},{"op":"SUB"},{"op":"LOAD_LOCAL","name":"fib"},{"op":"CALL","argc":1},
        {"op":"LOAD_LOCAL","name":"n"},{"op":"LOAD_CONST","arg":0},{"op":"SUB"},{"op":"LOAD_LOCAL","name":"fib"},{"op":"CALL","argc":1},
        {"op":"ADD"},{"op":"RETURN"}"#;
    let main = r#"{"op":"LOAD_CONST","arg":2},{"op":"LOAD_LOCAL","name":"fib"},{"op":"CALL","argc":1},{"op":"RETURN"}"#;
    ir(
        r#"{"index":0,"type":"int","value":2},{"index":1,"type":"int","value":1},{"index":2,"type":"int","value":20}"#,
        &format!("{},{}", func("fib", &["n"], fib), func("main", &[], main)),
    )
}

/// `while i < 20000 { s = s + "ab"; i += 1 } return len(s)`
fn string_building() -> String {
    let body = r#"
        {"op":"LOAD_CONST","arg":0},{"op":"STORE_LOCAL","name":"i"},
        {"op":"LOAD_CONST","arg":1},{"op":"STORE_LOCAL","name":"s"},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"LOAD_CONST","arg":2},{"op":"LT"},{"op":"JUMP_IF_FALSE","offset":19},
        {"op":"LOAD_LOCAL","name":"s"},{"op":"LOAD_CONST","arg":3},{"op":"ADD"},{"op":"STORE_LOCAL","name":"s"},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"LOAD_CONST","arg":4},{"op":"ADD"},{"op":"STORE_LOCAL","name":"i"},
        {"op":"LOAD_LOCAL","name":"i"},{"op":"POP"},{"op":"JUMP","offset":4},
        {"op":"LOAD_LOCAL","name":"s"},{"op":"LOAD_LOCAL","name":"len"},{"op":"CALL","argc":1},{"op":"RETURN"}"#;
    ir(
        r#"{"index":0,"type":"int","value":0},{"index":1,"type":"string","value":""},{"index":2,"type":"int","value":20000},{"index":3,"type":"string","value":"ab"},{"index":4,"type":"int","value":1}"#,
        &func("main", &[], body),
    )
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("execute");
    let cases = [
        ("counting_loop_100k", counting_loop(), Value::Int(0)),
        ("fib_20", recursion(), Value::Int(6765)),
        ("string_append_20k", string_building(), Value::Int(40000)),
    ];
    for (name, text, expected) in cases {
        let vm = prepare(&text);
        let got = run(&vm);
        if !matches!(expected, Value::Int(0)) {
            assert_eq!(got, expected, "{name}");
        }
        group.bench_function(name, |b| b.iter(|| run(black_box(&vm))));
    }
    group.finish();
}

fn values(c: &mut Criterion) {
    let mut group = c.benchmark_group("value");
    let nested = Value::map([
        ("name", Value::str("agent")),
        ("scores", Value::array((0..16).map(Value::Int).collect())),
        ("ok", Value::ok(Value::some(Value::Float(2.5)))),
    ]);
    let ints = Value::Int(42);
    group.bench_function("clone_int", |b| b.iter(|| black_box(&ints).clone()));
    group.bench_function("clone_map", |b| b.iter(|| black_box(&nested).clone()));
    let other = nested.clone();
    group.bench_function("equals_map", |b| {
        b.iter(|| black_box(&nested).equals(black_box(&other)))
    });
    group.bench_function("display_map", |b| {
        b.iter(|| black_box(&nested).to_display())
    });
    group.bench_function("to_json_map", |b| b.iter(|| black_box(&nested).to_json()));
    group.finish();
}

criterion_group!(benches, dispatch, values);
criterion_main!(benches);
