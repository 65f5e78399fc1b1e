//! Fuzzing on stable Rust: IR generated from the opcode table and IR mutated from every
//! fixture and corpus file goes through load, validation and a run under a step budget, a
//! time limit and a memory bound. A panic or a hang is a failure; a panicking input is
//! shrunk (instructions removed while it still panics) and saved as
//! `tests/fuzz/crash-<hash>.ir.json` (an input that hangs, as `hang-<hash>.ir.json`), and
//! every saved input is replayed by `saved_inputs_never_panic` from then on.
//!
//! `cargo test` runs a bounded campaign (`CONCERTO_FUZZ_SECONDS`, 20 s by default);
//! `cargo xtask fuzz --minutes N` runs a long one with an optimised build.
#![allow(
    clippy::print_stderr,
    reason = "the fuzzer reports its rate and findings"
)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use concerto_runtime::Limits;
use parking_lot::Mutex;
use serde_json::{Value as Json, json};

/// How long one input may run before it counts as a hang.
const HANG: Duration = Duration::from_secs(20);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every IR file of the repository's tests and of the shared corpora: the seeds.
fn seeds() -> Vec<Vec<u8>> {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![
        here.join("cases"),
        here.join("stream"),
        here.join("agents"),
        here.join("limits"),
    ];
    let shared = here.join("../../shared/conformance");
    for folder in ["vm/cases", "llm/cases", "head"] {
        dirs.push(shared.join(folder));
    }
    let mut out = Vec::new();
    for dir in dirs {
        for file in concerto_tests::ir_files(&dir) {
            if let Ok(bytes) = std::fs::read(&file) {
                out.push(bytes);
            }
        }
    }
    out
}

/// Loads and (when it loads) runs `bytes` under a step budget and a short timeout; returns
/// whether it loaded. Nothing outside the process is enabled, so agents, tools and the
/// network are refused.
fn exercise(bytes: &[u8], rt: &tokio::runtime::Runtime) -> bool {
    concerto_tests::exercise(
        bytes,
        rt,
        Duration::from_millis(500),
        Limits::default()
            .with_max_steps(Some(20_000))
            .with_max_call_depth(200)
            .with_max_hashmap_bytes(Some(16 << 20)),
    )
}

/// A small, fast generator (SplitMix64): runs are reproducible from their seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const NAMES: &[&str] = &[
    "a",
    "b",
    "xs",
    "m",
    "self",
    "len",
    "Ok",
    "Err",
    "Some",
    "None",
    "typeof",
    "assert",
    "assert_eq",
    "test_emits",
    "print",
    "panic",
    "std::json::parse",
    "std::string::split",
    "std::math::max",
    "missing",
];
const METHODS: &[&str] = &[
    "len",
    "push",
    "pop",
    "get",
    "set",
    "contains",
    "keys",
    "values",
    "is_ok",
    "is_some",
    "unwrap",
    "unwrap_or",
    "map",
    "filter",
    "to_upper",
    "split",
    "join",
    "slice",
    "execute",
    "with_tools",
    "query",
    "remove",
    "insert",
    "is_empty",
    "run",
];
const TYPES: &[&str] = &[
    "Int", "Float", "String", "Bool", "Result", "Option", "Array", "Map", "Range", "Nope",
];

/// A random scalar constant.
fn constant(rng: &mut Rng, index: usize) -> Json {
    match rng.below(6) {
        0 => json!({"index": index, "type": "int", "value": rng.next() as i64 % 7 - 2}),
        1 => json!({"index": index, "type": "int", "value": rng.next() as i64}),
        2 => json!({"index": index, "type": "float", "value": (rng.below(2000) as f64) / 7.0}),
        3 => {
            json!({"index": index, "type": "string", "value": *rng.pick(&["", "a", "10", "x y", "é"])})
        }
        4 => json!({"index": index, "type": "bool", "value": rng.chance(50)}),
        _ => json!({"index": index, "type": "nil", "value": null}),
    }
}

/// A function body from the opcode table whose stack discipline is right by construction
/// (so most of them load and run): straight code, counted loops and try/catch blocks. It
/// leaves the operand stack as it found it.
fn body(rng: &mut Rng, n_consts: usize, depth: u32) -> Vec<Json> {
    let mut out: Vec<Json> = Vec::new();
    let mut height = 0usize;
    let k = |rng: &mut Rng| json!({"op": "LOAD_CONST", "arg": rng.below(n_consts)});
    let steps = 4 + rng.below(24);
    for _ in 0..steps {
        let choice = rng.below(22);
        match choice {
            0..=3 => {
                out.push(k(rng));
                height += 1;
            }
            4 => {
                out.push(json!({"op": "LOAD_LOCAL", "name": *rng.pick(NAMES)}));
                height += 1;
            }
            5 if height >= 1 => {
                out.push(json!({"op": "STORE_LOCAL", "name": *rng.pick(&["a", "b", "xs", "m"])}));
                height -= 1;
            }
            6 if height >= 2 => {
                let op = *rng.pick(&[
                    "ADD",
                    "SUB",
                    "MUL",
                    "DIV",
                    "MOD",
                    "EQ",
                    "NEQ",
                    "LT",
                    "GT",
                    "LTE",
                    "GTE",
                    "AND",
                    "OR",
                    "INDEX_GET",
                ]);
                out.push(json!({"op": op}));
                height -= 1;
            }
            7 if height >= 1 => {
                let op = *rng.pick(&["NEG", "NOT", "NIL_COALESCE_PREP", "PROPAGATE"]);
                out.push(json!({"op": op}));
            }
            8 if height >= 1 => {
                let op = *rng.pick(&["CAST", "CHECK_TYPE"]);
                out.push(json!({"op": op, "type_name": *rng.pick(TYPES)}));
            }
            9 => {
                let n = rng.below(height.min(4) + 1);
                out.push(json!({"op": "BUILD_ARRAY", "count": n}));
                height = height - n + 1;
            }
            10 if height >= 2 => {
                out.push(json!({"op": "BUILD_MAP", "count": 1}));
                height -= 1;
            }
            11 if height >= 3 => {
                out.push(json!({"op": "BUILD_RANGE"}));
                height -= 2;
            }
            12 if height >= 1 => {
                let argc = rng.below(height.min(3));
                out.push(json!({"op": "CALL_METHOD", "name": *rng.pick(METHODS), "argc": argc}));
                height -= argc;
            }
            13 if height >= 1 => {
                let argc = rng.below(height.min(3));
                // The arguments, then the callee: the call leaves one value for them all.
                out.push(json!({"op": "LOAD_LOCAL", "name": *rng.pick(NAMES)}));
                out.push(json!({"op": "CALL", "argc": argc}));
                height = height + 1 - argc;
            }
            14 if height >= 2 => {
                out.push(json!({"op": "EMIT"}));
                height -= 2;
            }
            15 if height >= 1 => {
                out.push(json!({"op": *rng.pick(&["POP", "DUP"])}));
                if out.last().is_some_and(|i| i["op"] == "DUP") {
                    height += 1;
                } else {
                    height -= 1;
                }
            }
            16 if height >= 3 => {
                out.push(json!({"op": "INDEX_SET"}));
                height -= 3;
            }
            17 if height >= 1 => {
                out.push(json!({"op": "FIELD_GET", "name": *rng.pick(&["text", "x", "len"])}));
            }
            18 | 19 if depth < 2 => {
                // A counted loop around a height-neutral body:
                // i = n; top: if !(i > 0) goto end; body; i = i - 1; goto top; end:
                out.push(json!({"op": "LOAD_CONST", "arg": rng.below(n_consts)}));
                out.push(json!({"op": "STORE_LOCAL", "name": "$i"}));
                let top = out.len();
                out.push(json!({"op": "LOAD_LOCAL", "name": "$i"}));
                out.push(json!({"op": "LOAD_CONST", "arg": rng.below(n_consts)}));
                out.push(json!({"op": "GT"}));
                let exit_jump = out.len();
                out.push(json!({"op": "JUMP_IF_FALSE", "offset": 0}));
                let inner = body(rng, n_consts, depth + 1);
                append(&mut out, inner);
                out.push(json!({"op": "LOAD_LOCAL", "name": "$i"}));
                out.push(json!({"op": "LOAD_CONST", "arg": rng.below(n_consts)}));
                out.push(json!({"op": "SUB"}));
                out.push(json!({"op": "STORE_LOCAL", "name": "$i"}));
                out.push(json!({"op": "JUMP", "offset": top}));
                let end = out.len();
                out[exit_jump]["offset"] = json!(end);
            }
            20 if depth < 2 => {
                // try { body } catch [Type] { pop the error }
                let try_at = out.len();
                out.push(json!({"op": "TRY_BEGIN", "offset": 0}));
                let inner = body(rng, n_consts, depth + 1);
                append(&mut out, inner);
                out.push(json!({"op": "TRY_END"}));
                let skip = out.len();
                out.push(json!({"op": "JUMP", "offset": 0}));
                let catch_at = out.len();
                out[try_at]["offset"] = json!(catch_at);
                let mut catch = json!({"op": "CATCH"});
                if rng.chance(30) {
                    catch["type_name"] = json!(*rng.pick(TYPES));
                }
                out.push(catch);
                out.push(json!({"op": "POP"}));
                let end = out.len();
                out[skip]["offset"] = json!(end);
            }
            _ => {}
        }
    }
    for _ in 0..height {
        out.push(json!({"op": "POP"}));
    }
    out
}

/// Appends a generated body, moving its jump targets to where it now starts.
fn append(out: &mut Vec<Json>, inner: Vec<Json>) {
    let base = out.len() as i64;
    for mut ins in inner {
        if let Some(offset) = ins.get("offset").and_then(Json::as_i64) {
            ins["offset"] = json!(offset + base);
        }
        out.push(ins);
    }
}

/// A generated module: constants, a `main` and sometimes a helper.
fn generate(rng: &mut Rng) -> Json {
    let n_consts = 2 + rng.below(8);
    let constants: Vec<Json> = (0..n_consts).map(|i| constant(rng, i)).collect();
    let mut main = body(rng, n_consts, 0);
    main.push(json!({"op": "LOAD_CONST", "arg": rng.below(n_consts)}));
    main.push(json!({"op": "RETURN"}));
    let mut module = json!({
        "version": "0.1.0", "module": "fuzz", "source_file": "fuzz.conc",
        "constants": constants,
        "functions": [{"name": "main", "module": "fuzz", "visibility": "private", "params": [],
                       "return_type": "any", "is_async": false, "locals": [],
                       "instructions": main}],
        "metadata": {"compiler_version": "fuzz", "compiled_at": "", "optimization_level": 0,
                     "debug_info": true, "entry_point": "main"}
    });
    if rng.chance(30) {
        let mut helper = body(rng, n_consts, 0);
        helper.push(json!({"op": "LOAD_LOCAL", "name": "a"}));
        helper.push(json!({"op": "RETURN"}));
        if let Some(functions) = module["functions"].as_array_mut() {
            functions.push(
                json!({"name": "a", "module": "fuzz", "visibility": "private",
                "params": [{"name": "x", "type": "any"}], "return_type": "any",
                "is_async": false, "locals": [], "instructions": helper}),
            );
        }
    }
    module
}

/// Every instruction list of a module (functions, tool methods, stages, listen handlers,
/// tests), for mutation and shrinking.
fn instruction_lists(module: &mut Json) -> Vec<&mut Vec<Json>> {
    let mut lists = Vec::new();
    let Some(root) = module.as_object_mut() else {
        return lists;
    };
    for (key, section) in root.iter_mut() {
        let Some(items) = section.as_array_mut() else {
            continue;
        };
        for item in items {
            match key.as_str() {
                "functions" | "tests" => {
                    if let Some(list) = item.get_mut("instructions").and_then(Json::as_array_mut) {
                        lists.push(list);
                    }
                }
                "pipelines" | "listens" | "tools" => {
                    let inner = match key.as_str() {
                        "pipelines" => "stages",
                        "listens" => "handlers",
                        _ => "methods",
                    };
                    if let Some(parts) = item.get_mut(inner).and_then(Json::as_array_mut) {
                        for part in parts {
                            if let Some(list) =
                                part.get_mut("instructions").and_then(Json::as_array_mut)
                            {
                                lists.push(list);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    lists
}

const OPS: &[&str] = &[
    "LOAD_CONST",
    "LOAD_LOCAL",
    "STORE_LOCAL",
    "LOAD_GLOBAL",
    "STORE_GLOBAL",
    "POP",
    "DUP",
    "SWAP",
    "ADD",
    "SUB",
    "MUL",
    "DIV",
    "MOD",
    "NEG",
    "EQ",
    "LT",
    "AND",
    "NOT",
    "JUMP",
    "JUMP_IF_TRUE",
    "JUMP_IF_FALSE",
    "RETURN",
    "CALL",
    "CALL_METHOD",
    "EMIT",
    "TRY_BEGIN",
    "TRY_END",
    "CATCH",
    "THROW",
    "PROPAGATE",
    "BUILD_ARRAY",
    "BUILD_MAP",
    "BUILD_STRUCT",
    "FIELD_GET",
    "FIELD_SET",
    "INDEX_GET",
    "INDEX_SET",
    "CAST",
    "CHECK_TYPE",
    "AWAIT",
    "AWAIT_ALL",
    "SPAWN_ASYNC",
    "NIL_COALESCE_PREP",
    "BUILD_RANGE",
    "LISTEN_BEGIN",
    "MOCK_MODEL",
    "CALL_MODEL",
    "CALL_TOOL",
    "HASH_MAP_GET",
];

/// One structural change to a module.
fn mutate(rng: &mut Rng, module: &mut Json) {
    let choice = rng.below(12);
    if choice == 11 {
        // A whole section goes or is emptied.
        if let Some(root) = module.as_object_mut() {
            let keys: Vec<String> = root.keys().cloned().collect();
            let key = rng.pick(&keys).clone();
            if rng.chance(50) {
                root.remove(&key);
            } else {
                root.insert(key, json!([]));
            }
        }
        return;
    }
    if choice == 10 {
        if let Some(constants) = module.get_mut("constants").and_then(Json::as_array_mut)
            && !constants.is_empty()
        {
            let i = rng.below(constants.len());
            constants[i] = constant(rng, i);
        }
        return;
    }
    let mut lists = instruction_lists(module);
    if lists.is_empty() {
        return;
    }
    let which = rng.below(lists.len());
    let list = &mut lists[which];
    if list.is_empty() {
        list.push(json!({"op": *rng.pick(OPS)}));
        return;
    }
    let at = rng.below(list.len());
    let len = list.len() as i64;
    match choice {
        0 => list[at]["op"] = json!(*rng.pick(OPS)),
        1 => {
            list.remove(at);
        }
        2 => {
            let copy = list[at].clone();
            list.insert(at, copy);
        }
        3 => {
            let other = rng.below(list.len());
            list.swap(at, other);
        }
        4 => {
            list[at]["arg"] = match rng.below(5) {
                0 => json!(rng.below(12)),
                1 => json!(-1),
                2 => json!("x"),
                3 => json!(null),
                _ => json!({"response": "hi"}),
            }
        }
        5 => list[at]["name"] = json!(*rng.pick(NAMES)),
        6 => list[at]["offset"] = json!(rng.next() as i64 % (len + 3) - 1),
        7 => list[at]["argc"] = json!(*rng.pick(&[0u64, 1, 2, 3, 7, 65_535, 1 << 40])),
        8 => list[at]["count"] = json!(*rng.pick(&[0u64, 1, 2, 3, 9, 1 << 31])),
        _ => list[at]["type_name"] = json!(*rng.pick(TYPES)),
    }
}

/// Byte-level damage: a truncation or a few replaced bytes.
fn damage(rng: &mut Rng, bytes: &mut Vec<u8>) {
    const REPLACEMENTS: &[u8] = b"0123456789\"{}[],:-.aZ \\\x00\xff";
    if bytes.is_empty() {
        return;
    }
    if rng.chance(30) {
        let keep = rng.below(bytes.len());
        bytes.truncate(keep);
        return;
    }
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(bytes.len());
        bytes[at] = *rng.pick(REPLACEMENTS);
    }
}

/// Whether `bytes` panics the runtime.
fn panics(bytes: &[u8], rt: &tokio::runtime::Runtime) -> bool {
    catch_unwind(AssertUnwindSafe(|| exercise(bytes, rt))).is_err()
}

/// What a campaign did.
struct Report {
    runs: u64,
    /// Inputs that loaded (and so ran), by kind: generated, mutated, damaged.
    loaded: [u64; 3],
    made: [u64; 3],
    found: Vec<PathBuf>,
}

/// Removes instructions and sections while the input still panics.
fn shrink(bytes: &[u8], rt: &tokio::runtime::Runtime) -> Vec<u8> {
    let Ok(mut module) = serde_json::from_slice::<Json>(bytes) else {
        return bytes.to_vec();
    };
    let mut progress = true;
    while progress {
        progress = false;
        let n_lists = instruction_lists(&mut module).len();
        for l in 0..n_lists {
            let mut i = 0;
            loop {
                let mut candidate = module.clone();
                let mut lists = instruction_lists(&mut candidate);
                let Some(list) = lists.get_mut(l) else { break };
                if i >= list.len() {
                    break;
                }
                list.remove(i);
                let text = candidate.to_string().into_bytes();
                if panics(&text, rt) {
                    module = candidate;
                    progress = true;
                } else {
                    i += 1;
                }
            }
        }
    }
    module.to_string().into_bytes()
}

/// Saves a panicking input under `tests/fuzz/` and returns its path.
fn save(bytes: &[u8], kind: &str) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    let dir = fuzz_dir();
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{kind}-{hash:016x}.ir.json"));
    let _ = std::fs::write(&path, bytes);
    path
}

/// Runs a campaign for `duration`.
fn campaign(duration: Duration, seed: u64) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seeds = seeds();
    let mut rng = Rng(seed);
    let mut found = Vec::new();
    let mut loaded = [0u64; 3];
    let mut made = [0u64; 3];
    let runs = Arc::new(AtomicU64::new(0));
    // The watchdog: an input that runs longer than HANG is saved and the process stops.
    let current: Arc<Mutex<(Instant, Vec<u8>)>> =
        Arc::new(Mutex::new((Instant::now(), Vec::new())));
    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let current = current.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let (started, bytes) = {
                    let guard = current.lock();
                    (guard.0, guard.1.clone())
                };
                if started.elapsed() > HANG && !done.load(Ordering::Relaxed) {
                    let path = save(&bytes, "hang");
                    eprintln!(
                        "fuzz: an input ran for over {HANG:?}: saved as {}",
                        path.display()
                    );
                    std::process::abort();
                }
            }
        })
    };
    // Panics on this thread are findings, reported below; other tests' panics print as usual.
    let fuzz_thread = std::thread::current().id();
    let previous_hook: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        Arc::from(std::panic::take_hook());
    let forward = previous_hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != fuzz_thread {
            forward(info);
        }
    }));
    let started = Instant::now();
    while started.elapsed() < duration {
        let roll = rng.below(10);
        let kind = match roll {
            0..=2 => 0,
            3..=7 => 1,
            _ => 2,
        };
        let bytes = match roll {
            0..=2 => generate(&mut rng).to_string().into_bytes(),
            3..=7 if !seeds.is_empty() => {
                let seed = rng.pick(&seeds);
                match serde_json::from_slice::<Json>(seed) {
                    Ok(mut module) => {
                        for _ in 0..1 + rng.below(3) {
                            mutate(&mut rng, &mut module);
                        }
                        module.to_string().into_bytes()
                    }
                    Err(_) => seed.clone(),
                }
            }
            _ if !seeds.is_empty() => {
                let mut bytes = rng.pick(&seeds).clone();
                damage(&mut rng, &mut bytes);
                bytes
            }
            _ => generate(&mut rng).to_string().into_bytes(),
        };
        *current.lock() = (Instant::now(), bytes.clone());
        runs.fetch_add(1, Ordering::Relaxed);
        made[kind] += 1;
        match catch_unwind(AssertUnwindSafe(|| exercise(&bytes, &rt))) {
            Ok(true) => loaded[kind] += 1,
            Ok(false) => {}
            Err(_) => {
                let small = shrink(&bytes, &rt);
                found.push(save(&small, "crash"));
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| previous_hook(info)));
    let _ = watchdog.join();
    Report {
        runs: runs.load(Ordering::Relaxed),
        loaded,
        made,
        found,
    }
}

#[test]
fn generated_and_mutated_ir_never_panics_or_hangs() {
    let seconds: u64 = std::env::var("CONCERTO_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CONCERTO_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c0_ffee);
    let started = Instant::now();
    let report = campaign(Duration::from_secs(seconds), seed);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz: {} inputs in {secs:.1} s ({:.0}/s), seed {seed}; loaded and ran: generated \
         {}/{}, mutated {}/{}, damaged {}/{}; {} panicking",
        report.runs,
        report.runs as f64 / secs,
        report.loaded[0],
        report.made[0],
        report.loaded[1],
        report.made[1],
        report.loaded[2],
        report.made[2],
        report.found.len()
    );
    assert!(report.runs > 0, "the fuzzer ran no input");
    assert!(
        report.found.is_empty(),
        "inputs that panic the runtime (shrunk and saved): {:?}",
        report.found
    );
}

#[test]
fn saved_inputs_never_panic() {
    let entries = std::fs::read_dir(fuzz_dir()).expect("tests/fuzz holds the saved inputs");
    for entry in entries.flatten() {
        let path = entry.path();
        if !path.to_string_lossy().ends_with(".ir.json") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        // On a thread of its own, so that an input that hangs again fails the test instead
        // of blocking it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let outcome = catch_unwind(AssertUnwindSafe(|| exercise(&bytes, &rt)));
            let _ = tx.send(outcome.is_ok());
        });
        match rx.recv_timeout(HANG) {
            Ok(true) => {}
            Ok(false) => panic!("{} panics again", path.display()),
            Err(_) => panic!("{} hangs again (no end within {HANG:?})", path.display()),
        }
    }
}
