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

/// Reads one HTTP request from `stream`: its head and the body its `content-length`
/// announces (`None` when the connection ends or fails first).
pub(crate) fn read_request(stream: &mut impl std::io::Read) -> Option<(String, String)> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if seen.len() >= end + 4 + len {
                let body = String::from_utf8_lossy(&seen[end + 4..end + 4 + len]).to_string();
                return Some((text[..end].to_string(), body));
            }
        }
    }
}
