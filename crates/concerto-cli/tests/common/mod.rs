//! Helpers shared by the CLI's test binaries.

use serde_json::{Value as Json, json};

/// Turns each `EMIT; LOAD_CONST nil; AWAIT` of `ir` (how concertoc 1a8ede9 lowers
/// `await emit(..)`, losing the answer) into `EMIT_AWAIT; AWAIT; AWAIT`, the IR a fixed
/// compiler produces (same length: jump targets stay valid). Returns how many it rewrote.
pub(crate) fn make_emit_awaits(ir: &mut Json) -> usize {
    let nils: Vec<u64> = ir["constants"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["type"] == "nil")
                .filter_map(|c| c["index"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    let mut rewritten = 0;
    for func in ir["functions"].as_array_mut().into_iter().flatten() {
        let Some(code) = func["instructions"].as_array_mut() else {
            continue;
        };
        for i in 0..code.len().saturating_sub(2) {
            let nil = code[i + 1]["op"] == "LOAD_CONST"
                && code[i + 1]["arg"]
                    .as_u64()
                    .is_some_and(|a| nils.contains(&a));
            if code[i]["op"] == "EMIT" && nil && code[i + 2]["op"] == "AWAIT" {
                code[i]["op"] = json!("EMIT_AWAIT");
                code[i + 1] = json!({"op": "AWAIT", "span": code[i + 1]["span"].clone()});
                rewritten += 1;
            }
        }
    }
    rewritten
}
