//! Lenient extraction of the JSON instance from a model reply.

use serde_json::Value;

/// How many fenced code blocks are looked at.
const MAX_FENCES: usize = 64;

/// Extracts the JSON value a model reply carries.
///
/// In order:
/// 1. the whole reply, trimmed (a JSON string whose content is itself a JSON object or
///    array, i.e. double-encoded output, is unwrapped);
/// 2. the first fenced code block (```` ```json ```` or any other ```` ``` ```` fence; an
///    unclosed fence runs to the end) whose content is a JSON object or array;
/// 3. the first JSON object embedded in prose, found by trying each `{` / `[` in turn and
///    parsing one value from there with serde_json's streaming deserializer (so braces
///    inside JSON strings are handled by the JSON parser itself);
/// 4. failing an object: the first array found in (3), then a scalar fenced block.
///
/// An object is preferred over an array, and either over a bare scalar. The prose scan does
/// a bounded amount of parsing work (a small multiple of the reply's length), so a huge or
/// hostile reply cannot take quadratic time.
///
/// # Errors
/// A message saying why nothing could be extracted; the checker reports it as
/// `invalid JSON: <message>`.
pub fn extract_json(reply: &str) -> Result<Value, String> {
    let text = reply.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err("the reply is empty".into());
    }
    let whole_error = match serde_json::from_str::<Value>(text) {
        Ok(value) => return Ok(unwrap_double_encoded(value)),
        Err(err) => err,
    };

    let mut scalar_fallback = None;
    for block in fenced_blocks(text) {
        match serde_json::from_str::<Value>(block.trim()) {
            Ok(value) if value.is_object() || value.is_array() => return Ok(value),
            Ok(value) => {
                let value = unwrap_double_encoded(value);
                if value.is_object() || value.is_array() {
                    return Ok(value);
                }
                scalar_fallback.get_or_insert(value);
            }
            Err(_) => {}
        }
    }

    match scan_prose(text) {
        Some(value) => Ok(value),
        None => scalar_fallback
            .ok_or_else(|| format!("no JSON object or array found in the reply ({whole_error})")),
    }
}

fn unwrap_double_encoded(value: Value) -> Value {
    if let Value::String(inner) = &value {
        let inner = inner.trim();
        if (inner.starts_with('{') || inner.starts_with('['))
            && let Ok(decoded) = serde_json::from_str::<Value>(inner)
            && (decoded.is_object() || decoded.is_array())
        {
            return decoded;
        }
    }
    value
}

/// The contents of the ```` ``` ```` fenced blocks of `text`, in order (the info string, e.g.
/// `json`, is skipped).
fn fenced_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while blocks.len() < MAX_FENCES {
        let Some((_, after_open)) = rest.split_once("```") else {
            break;
        };
        let body = match after_open.split_once('\n') {
            Some((_info, body)) => body,
            None => "",
        };
        match body.split_once("```") {
            Some((content, after_close)) => {
                blocks.push(content);
                rest = after_close;
            }
            None => {
                blocks.push(body);
                break;
            }
        }
    }
    blocks
}

/// The first object (else the first array) embedded in `text`.
fn scan_prose(text: &str) -> Option<Value> {
    let mut budget = text.len().saturating_mul(2).saturating_add(64 * 1024);
    let mut first_array = None;
    let mut pos = 0;
    while budget > 0 {
        let Some(offset) = text.get(pos..).and_then(|tail| tail.find(['{', '['])) else {
            break;
        };
        let start = pos + offset;
        let Some(candidate) = text.get(start..) else {
            break;
        };
        // Find where a value starting here ends without building it; build only a success.
        let mut stream =
            serde_json::Deserializer::from_str(candidate).into_iter::<serde::de::IgnoredAny>();
        let cost = match stream.next() {
            Some(Ok(_)) => {
                let end = stream.byte_offset().max(1);
                if let Some(Ok(value)) = candidate.get(..end).map(serde_json::from_str::<Value>) {
                    if value.is_object() {
                        return Some(value);
                    }
                    first_array.get_or_insert(value);
                }
                pos = start + end;
                end
            }
            Some(Err(err)) => {
                pos = start + 1;
                error_offset(candidate, err.line(), err.column())
            }
            None => break,
        };
        budget = budget.saturating_sub(cost.max(1));
    }
    first_array
}

/// The byte offset of serde_json's `line:column` error position in `text` (for accounting
/// the work a failed parse did).
fn error_offset(text: &str, line: usize, column: usize) -> usize {
    let mut offset = 0;
    for _ in 1..line {
        match text.get(offset..).and_then(|rest| rest.find('\n')) {
            Some(newline) => offset += newline + 1,
            None => return text.len(),
        }
    }
    (offset + column).min(text.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::{Duration, Instant};

    #[test]
    fn plain_and_whitespace() {
        assert_eq!(extract_json(r#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert_eq!(
            extract_json("\u{feff}  \n {\"a\": [1, 2]} \n").unwrap(),
            json!({"a": [1, 2]})
        );
        assert_eq!(extract_json("[1,2]").unwrap(), json!([1, 2]));
        assert_eq!(extract_json("42").unwrap(), json!(42));
        assert_eq!(
            extract_json(r#""{\"a\": 1}""#).unwrap(),
            json!({"a": 1}),
            "double-encoded object is unwrapped"
        );
        assert_eq!(extract_json(r#""hello""#).unwrap(), json!("hello"));
    }

    #[test]
    fn fenced() {
        let reply = "Sure! Here it is:\n```json\n{\"label\": \"yes\", \"score\": 0.5}\n```\nBye.";
        assert_eq!(
            extract_json(reply).unwrap(),
            json!({"label": "yes", "score": 0.5})
        );
        let reply = "```\n{\"a\": 1}\n```";
        assert_eq!(extract_json(reply).unwrap(), json!({"a": 1}));
        // The first fence that parses wins; a broken one is skipped.
        let reply = "```json\n{broken\n```\ntext\n```JSON\n{\"b\": 2}\n```";
        assert_eq!(extract_json(reply).unwrap(), json!({"b": 2}));
        // Unclosed fence (truncated reply).
        let reply = "```json\n{\"c\": 3}\n";
        assert_eq!(extract_json(reply).unwrap(), json!({"c": 3}));
        // A fence holding an array.
        let reply = "Result:\n```json\n[{\"a\": 1}]\n```";
        assert_eq!(extract_json(reply).unwrap(), json!([{"a": 1}]));
    }

    #[test]
    fn prose_wrapped() {
        let reply = r#"The answer is {"label": "no", "score": 1} as requested."#;
        assert_eq!(
            extract_json(reply).unwrap(),
            json!({"label": "no", "score": 1})
        );
        // Braces inside strings, in the prose and in the JSON.
        let reply =
            r#"Use {curly} braces like "{" then: {"text": "a } and { b", "n": {"x": [1, "]"]}} ok"#;
        assert_eq!(
            extract_json(reply).unwrap(),
            json!({"text": "a } and { b", "n": {"x": [1, "]"]}})
        );
        // An object is preferred over an array that comes first.
        let reply = r#"I looked at [2] sources. {"a": true}"#;
        assert_eq!(extract_json(reply).unwrap(), json!({"a": true}));
        // Only an array: it is returned.
        let reply = "Items: [1, 2, 3].";
        assert_eq!(extract_json(reply).unwrap(), json!([1, 2, 3]));
        // Numbers in prose are not picked as bare scalars.
        let reply = r#"There are 3 fields: {"n": 3}"#;
        assert_eq!(extract_json(reply).unwrap(), json!({"n": 3}));
    }

    #[test]
    fn nothing_parseable() {
        let err = extract_json("I cannot help with that.").unwrap_err();
        assert!(
            err.starts_with("no JSON object or array found in the reply"),
            "{err}"
        );
        assert_eq!(extract_json("   ").unwrap_err(), "the reply is empty");
        assert!(extract_json("{ not json }").is_err());
        assert!(extract_json("```json\n{oops\n```").is_err());
        assert!(extract_json("{\"a\": 1").is_err());
    }

    fn assert_fast(reply: &str) {
        let started = Instant::now();
        let _ = extract_json(reply);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "extraction of a {}-byte reply took {:?}",
            reply.len(),
            started.elapsed()
        );
    }

    #[test]
    fn huge_inputs_stay_bounded() {
        let n = 400_000;
        assert_fast(&"{".repeat(n));
        assert_fast(&"[".repeat(n));
        assert_fast(&"[1,".repeat(n));
        assert_fast(&"{\"a\":".repeat(n));
        assert_fast(&"x".repeat(n));
        assert_fast(&"```".repeat(n));
        // An unterminated array of arrays: every `[` starts a long parse.
        let nested: String = (0..n / 4).map(|_| "[0,").collect();
        assert_fast(&nested);
        let long_string = format!("{{\"a\": \"{}", "{[".repeat(n));
        assert_fast(&long_string);
        // A valid object after a lot of prose is still found.
        let reply = format!("{} {{\"ok\": true}}", "word ".repeat(n));
        assert_eq!(extract_json(&reply).unwrap(), json!({"ok": true}));
    }

    #[test]
    fn error_offset_counts_lines() {
        assert_eq!(error_offset("abc\ndef", 2, 2), 6);
        assert_eq!(error_offset("abc", 1, 3), 3);
        assert_eq!(error_offset("abc", 5, 1), 3);
    }
}
