//! Coerce mode: converting reply values toward the declared types before validation.

use serde_json::{Map, Number, Value};

/// How deeply coercion follows the instance and `$ref`s.
const MAX_COERCE_DEPTH: usize = 256;

/// Converts the values of `instance` toward the types `schema` (a validation-form schema,
/// whose `$ref`s point into itself) declares, where the conversion is unambiguous:
///
/// - to `integer`: a numeric string (`"42"`, `" 7 "`, `"2.0"`) or a float with no fractional
///   part (`2.0`) that fits in 64 bits;
/// - to `number`: a numeric string in JSON number syntax (`"3.14"`, `"3"`, `"-1e3"`);
/// - to `boolean`: the strings `true` / `false` in any case;
/// - to `string`: a number or a boolean, as written in JSON.
///
/// Arrays, objects, map values and nested schemas are coerced recursively. A value that
/// already has an allowed type, or that cannot be converted, is left alone (validation then
/// reports it).
pub fn coerce(schema: &Value, instance: &mut Value) {
    coerce_node(schema, schema, instance, 0);
}

fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    if reference == "#" {
        return Some(root);
    }
    let key = reference.strip_prefix("#/$defs/")?;
    root.get("$defs")?.get(key)
}

fn coerce_node(root: &Value, schema: &Value, instance: &mut Value, depth: usize) {
    if depth > MAX_COERCE_DEPTH {
        return;
    }
    let Some(map) = schema.as_object() else {
        return;
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        if let Some(target) = resolve(root, reference) {
            coerce_node(root, target, instance, depth + 1);
        }
        return;
    }
    if let Some(branches) = map.get("anyOf").and_then(Value::as_array) {
        if instance.is_null() && branches.iter().any(is_null_only) {
            return;
        }
        if let Some(branch) = branches.iter().find(|b| !is_null_only(b)) {
            coerce_node(root, branch, instance, depth + 1);
        }
        return;
    }
    let types: Vec<&str> = match map.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty()
        && !types.iter().any(|t| has_type(instance, t))
        && let Some(converted) = types.iter().find_map(|t| convert(instance, t))
    {
        *instance = converted;
    }
    match instance {
        Value::Object(members) => coerce_members(root, map, members, depth),
        Value::Array(items) => {
            if let Some(item_schema) = map.get("items") {
                for item in items {
                    coerce_node(root, item_schema, item, depth + 1);
                }
            }
        }
        _ => {}
    }
}

fn coerce_members(
    root: &Value,
    schema: &Map<String, Value>,
    members: &mut Map<String, Value>,
    depth: usize,
) {
    let props = schema.get("properties").and_then(Value::as_object);
    let extra = schema.get("additionalProperties").filter(|s| s.is_object());
    for (name, value) in members.iter_mut() {
        match props.and_then(|p| p.get(name)) {
            Some(prop) => coerce_node(root, prop, value, depth + 1),
            None => {
                if let Some(extra) = extra {
                    coerce_node(root, extra, value, depth + 1);
                }
            }
        }
    }
}

fn is_null_only(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("null")
}

/// Whether `value` already has JSON Schema type `ty` (an integer must be written as one:
/// `2.0` is converted to `2`).
fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        _ => false,
    }
}

fn float_to_integer(f: f64) -> Option<Value> {
    // i64::MAX as f64 is 2^63, which does not fit: the upper bound is exclusive.
    if f.is_finite() && f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 {
        Some(Value::from(f as i64))
    } else {
        None
    }
}

fn parse_number(text: &str) -> Option<Number> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    serde_json::from_str::<Number>(text).ok()
}

fn convert(value: &Value, ty: &str) -> Option<Value> {
    match (ty, value) {
        ("integer", Value::Number(n)) => n.as_f64().and_then(float_to_integer),
        ("integer", Value::String(s)) => {
            let n = parse_number(s)?;
            if n.is_i64() || n.is_u64() {
                Some(Value::Number(n))
            } else {
                n.as_f64().and_then(float_to_integer)
            }
        }
        ("number", Value::String(s)) => parse_number(s).map(Value::Number),
        ("boolean", Value::String(s)) => {
            let s = s.trim();
            if s.eq_ignore_ascii_case("true") {
                Some(Value::Bool(true))
            } else if s.eq_ignore_ascii_case("false") {
                Some(Value::Bool(false))
            } else {
                None
            }
        }
        ("string", Value::Number(n)) => Some(Value::String(n.to_string())),
        ("string", Value::Bool(b)) => Some(Value::String(b.to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(schema: Value, mut instance: Value) -> Value {
        coerce(&schema, &mut instance);
        instance
    }

    #[test]
    fn scalars() {
        let s = json!({"type": "integer"});
        assert_eq!(run(s.clone(), json!("42")), json!(42));
        assert_eq!(run(s.clone(), json!(" -7 ")), json!(-7));
        assert_eq!(run(s.clone(), json!(2.0)), json!(2));
        assert_eq!(run(s.clone(), json!("2.0")), json!(2));
        assert_eq!(run(s.clone(), json!(2.5)), json!(2.5));
        assert_eq!(run(s.clone(), json!("2.5")), json!("2.5"));
        assert_eq!(run(s.clone(), json!("abc")), json!("abc"));
        assert_eq!(run(s.clone(), json!("")), json!(""));
        assert_eq!(run(s.clone(), json!(1e300)), json!(1e300));
        assert_eq!(run(s, json!(true)), json!(true));

        let s = json!({"type": "number"});
        assert_eq!(run(s.clone(), json!("2.75")), json!(2.75));
        assert_eq!(run(s.clone(), json!(3)), json!(3));
        assert_eq!(run(s.clone(), json!("NaN")), json!("NaN"));
        assert_eq!(run(s, json!("1e3")), json!(1000.0));

        let s = json!({"type": "boolean"});
        assert_eq!(run(s.clone(), json!("TRUE")), json!(true));
        assert_eq!(run(s.clone(), json!("False")), json!(false));
        assert_eq!(run(s.clone(), json!("yes")), json!("yes"));
        assert_eq!(run(s, json!(1)), json!(1));

        let s = json!({"type": "string"});
        assert_eq!(run(s.clone(), json!(42)), json!("42"));
        assert_eq!(run(s.clone(), json!(1.5)), json!("1.5"));
        assert_eq!(run(s.clone(), json!(false)), json!("false"));
        assert_eq!(run(s, json!(null)), json!(null));
    }

    #[test]
    fn nullable_and_refs() {
        let s = json!({"type": ["integer", "null"]});
        assert_eq!(run(s.clone(), json!("5")), json!(5));
        assert_eq!(run(s, json!(null)), json!(null));
        let s = json!({
            "type": "object",
            "properties": {
                "child": {"anyOf": [{"$ref": "#"}, {"type": "null"}]},
                "n": {"type": "integer"},
                "m": {"type": "object", "additionalProperties": {"type": "number"}},
                "d": {"$ref": "#/$defs/D"},
                "bad": {"$ref": "#/$defs/Missing"}
            },
            "$defs": {"D": {"type": "object", "properties": {"ok": {"type": "boolean"}}}}
        });
        let out = run(
            s,
            json!({
                "n": "1",
                "child": {"n": "2", "child": null},
                "m": {"a": "1.5", "b": 2},
                "d": {"ok": "true"},
                "bad": "x",
                "extra": "9"
            }),
        );
        assert_eq!(
            out,
            json!({
                "n": 1,
                "child": {"n": 2, "child": null},
                "m": {"a": 1.5, "b": 2},
                "d": {"ok": true},
                "bad": "x",
                "extra": "9"
            })
        );
    }

    #[test]
    fn self_referencing_ref_does_not_loop() {
        let s = json!({"$ref": "#"});
        assert_eq!(run(s, json!({"a": 1})), json!({"a": 1}));
    }
}
