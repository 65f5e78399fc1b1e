//! Benchmarks of the IR crate.
//!
//! Load benchmark: a generated IR of about 20 MB (thousands of functions, pretty-printed like
//! `concertoc` output) parsed, validated and lowered; reports MB/s.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};

/// A module with `n` functions, each a loop of arithmetic and a call to the previous one.
pub fn generate(target_bytes: usize) -> Vec<u8> {
    let mut functions = Vec::new();
    let mut i = 0;
    let mut estimate = 0;
    while estimate < target_bytes {
        let mut ins: Vec<Value> = Vec::new();
        let mut push = |v: Value| ins.push(v);
        push(json!({"op": "LOAD_CONST", "arg": 0, "span": [1, 1]}));
        push(json!({"op": "STORE_LOCAL", "name": "acc", "span": [1, 1]}));
        push(json!({"op": "LOAD_CONST", "arg": 0, "span": [1, 1]}));
        push(json!({"op": "STORE_LOCAL", "name": "k", "span": [1, 1]}));
        let head = 4;
        push(json!({"op": "LOAD_LOCAL", "name": "k", "span": [2, 1]}));
        push(json!({"op": "LOAD_LOCAL", "name": "n", "span": [2, 1]}));
        push(json!({"op": "LT", "span": [2, 1]}));
        push(json!({"op": "JUMP_IF_FALSE", "offset": 0, "span": [2, 1]}));
        for j in 0..20 {
            push(json!({"op": "LOAD_LOCAL", "name": "acc", "span": [3, j]}));
            push(json!({"op": "LOAD_LOCAL", "name": "k", "span": [3, j]}));
            push(json!({"op": "LOAD_CONST", "arg": 1, "span": [3, j]}));
            push(json!({"op": "MUL", "span": [3, j]}));
            push(json!({"op": "ADD", "span": [3, j]}));
            push(json!({"op": "STORE_LOCAL", "name": "acc", "span": [3, j]}));
        }
        push(json!({"op": "LOAD_LOCAL", "name": "k", "span": [4, 1]}));
        push(json!({"op": "LOAD_CONST", "arg": 1, "span": [4, 1]}));
        push(json!({"op": "ADD", "span": [4, 1]}));
        push(json!({"op": "STORE_LOCAL", "name": "k", "span": [4, 1]}));
        push(json!({"op": "LOAD_LOCAL", "name": "k", "span": [4, 1]}));
        push(json!({"op": "POP", "span": [4, 1]}));
        push(json!({"op": "JUMP", "offset": head, "span": [4, 1]}));
        let end = ins.len();
        ins[7]["offset"] = json!(end);
        if i > 0 {
            ins.push(json!({"op": "LOAD_LOCAL", "name": "n", "span": [5, 1]}));
            ins.push(json!({"op": "LOAD_LOCAL", "name": format!("f{}", i - 1), "span": [5, 1]}));
            ins.push(json!({"op": "CALL", "argc": 1, "span": [5, 1]}));
            ins.push(json!({"op": "POP", "span": [5, 1]}));
        }
        ins.push(json!({"op": "LOAD_LOCAL", "name": "acc", "span": [6, 1]}));
        ins.push(json!({"op": "RETURN", "span": [6, 1]}));
        // About 62 bytes per pretty-printed instruction.
        estimate += ins.len() * 62 + 300;
        functions.push(json!({
            "name": format!("f{i}"), "module": "gen", "visibility": "private",
            "params": [{"name": "n", "type": "Int"}], "return_type": "Int", "is_async": false,
            "locals": ["n", "acc", "k"], "instructions": ins,
        }));
        i += 1;
    }
    functions.push(json!({
        "name": "main", "module": "gen", "visibility": "private", "params": [],
        "return_type": "nil", "is_async": false, "locals": [],
        "instructions": [
            {"op": "LOAD_CONST", "arg": 1}, {"op": "LOAD_LOCAL", "name": "f0"},
            {"op": "CALL", "argc": 1}, {"op": "RETURN"}
        ],
    }));
    let module = json!({
        "version": "0.1.0", "module": "gen", "source_file": "gen.conc",
        "constants": [{"index": 0, "type": "int", "value": 0}, {"index": 1, "type": "int", "value": 1}],
        "functions": functions,
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
                     "debug_info": true, "entry_point": "main"},
    });
    serde_json::to_vec_pretty(&module).expect("serialise")
}

fn load(c: &mut Criterion) {
    let bytes = generate(20_000_000);
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse_validate_lower_20MB", |b| {
        b.iter(|| concerto_ir::load_bytes(&bytes).expect("loads"))
    });
    group.bench_function("parse_only_20MB", |b| {
        b.iter(|| concerto_ir::parse_bytes(&bytes).expect("parses"))
    });
    group.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
