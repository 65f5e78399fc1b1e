//! The JSON encoding of hashmap files.
//!
//! A hashmap file is one JSON object: each member is an entry, in insertion order, its name
//! the key and its value encoded as below. Plain JSON values stand for themselves, so a file
//! written by hand in plain JSON loads as expected:
//!
//! | value | encoding |
//! |---|---|
//! | `nil` | `null` |
//! | `Bool`, `String` | JSON boolean, string |
//! | `Int` | JSON integer (`3`) |
//! | `Float` | JSON number with a fraction or exponent (`3.0`, `1e300`), so it reads back as a `Float` |
//! | `Array` | JSON array |
//! | `Map` | JSON object, unless its first key starts with `$` (then `{"$map": {…}}`) |
//!
//! Values that plain JSON would lose the type of use a tagged object, recognised by its
//! **first** member:
//!
//! | value | encoding |
//! |---|---|
//! | `Some(x)` / `None` | `{"$some": x}` / `{"$none": null}` |
//! | `Ok(x)` / `Err(x)` | `{"$ok": x}` / `{"$err": x}` |
//! | NaN, ±infinity | `{"$float": "NaN"}`, `{"$float": "inf"}`, `{"$float": "-inf"}` |
//! | struct | `{"$struct": "Point", "fields": {"x": 1, "y": 2}}` |
//! | enum variant | `{"$enum": "Shape", "variant": "Circle", "type_id": 0, "variant_id": 1, …}` with `"payload": [..]` (tuple variant), `"fields": {..}` (struct-like variant) or neither (unit variant) |
//! | map whose first key starts with `$` | `{"$map": {…}}` |
//!
//! An object whose first member is not one of these tags is a plain map (so `{"$ref": 1}`
//! written by hand is a map). A tagged object with missing or extra members is an error.
//!
//! A loaded struct has its type name and field names but no program type key; the VM finds
//! its methods by type name. A loaded enum variant keeps the type and variant indices it was
//! saved with (the VM compares and dispatches on them), so files of enum values belong to
//! the program that wrote them.
//!
//! Functions, references to declared entities (agents, hashmaps, …) and native objects
//! have no meaning outside the process; saving one is an error naming the key and the place
//! in the value. So is a value nested deeper than [`MAX_JSON_DEPTH`] JSON levels (cyclic
//! values end up there) or one that expands to more than [`MAX_NODES`] JSON values (a value
//! that shares sub-values is written out in full at each use).

use std::sync::Arc;

use concerto_vm::host::HostError;
use concerto_vm::{EnumObj, MapInner, Str, StructObj, StructType, Value};
use rustc_hash::FxBuildHasher;
use serde_json::Value as J;

/// The deepest JSON nesting a saved value may reach (the file's top-level object included).
/// `serde_json` refuses to read deeper than 128 levels, so a deeper file could not be loaded.
pub const MAX_JSON_DEPTH: usize = 120;

/// The most JSON values one save may write.
pub const MAX_NODES: usize = 10_000_000;

const TAG_SOME: &str = "$some";
const TAG_NONE: &str = "$none";
const TAG_OK: &str = "$ok";
const TAG_ERR: &str = "$err";
const TAG_FLOAT: &str = "$float";
const TAG_STRUCT: &str = "$struct";
const TAG_ENUM: &str = "$enum";
const TAG_MAP: &str = "$map";

const TAGS: &[&str] = &[
    TAG_SOME, TAG_NONE, TAG_OK, TAG_ERR, TAG_FLOAT, TAG_STRUCT, TAG_ENUM, TAG_MAP,
];

/// Where in a value something went wrong, and what.
#[derive(Debug)]
pub(crate) struct CodecError {
    /// Path segments, innermost first (`[2]`, `.name`).
    path: Vec<String>,
    message: String,
}

impl CodecError {
    fn new(message: impl Into<String>) -> CodecError {
        CodecError {
            path: Vec::new(),
            message: message.into(),
        }
    }

    fn at(mut self, segment: String) -> CodecError {
        self.path.push(segment);
        self
    }

    /// `<message>` or `<message> (at <path>)`.
    pub(crate) fn describe(&self) -> String {
        if self.path.is_empty() {
            return self.message.clone();
        }
        let path: String = self.path.iter().rev().map(String::as_str).collect();
        format!("{} (at {path})", self.message)
    }
}

fn field_segment(name: &str) -> String {
    format!(".{name}")
}

fn index_segment(idx: usize) -> String {
    format!("[{idx}]")
}

/// Encodes one value as described in the module documentation.
pub fn encode_value(value: &Value) -> Result<J, HostError> {
    Encoder::default()
        .value(value, 0)
        .map_err(|e| HostError::failed(format!("cannot encode value: {}", e.describe())))
}

/// Decodes one value written by [`encode_value`] (or plain JSON).
pub fn decode_value(json: &J) -> Result<Value, HostError> {
    decode(json, 0).map_err(|e| HostError::failed(format!("cannot decode value: {}", e.describe())))
}

/// Encodes a hashmap's entries as the file's top-level object. The error names the key.
pub(crate) fn encode_entries(entries: &[(Str, Value)]) -> Result<J, String> {
    let mut enc = Encoder::default();
    let mut obj = serde_json::Map::with_capacity(entries.len());
    for (key, value) in entries {
        let json = enc
            .value(value, 1)
            .map_err(|e| format!("key '{}': {}", shorten(key), e.describe()))?;
        obj.insert(key.to_string(), json);
    }
    Ok(J::Object(obj))
}

/// Decodes a file's top-level object into entries, in file order.
pub(crate) fn decode_entries(json: &J) -> Result<Vec<(Str, Value)>, String> {
    let J::Object(obj) = json else {
        return Err(format!(
            "expected a JSON object of key → value, found {}",
            json_kind(json)
        ));
    };
    let mut out = Vec::with_capacity(obj.len());
    for (key, value) in obj {
        let value =
            decode(value, 1).map_err(|e| format!("key '{}': {}", shorten(key), e.describe()))?;
        out.push((Str::from(key.as_str()), value));
    }
    Ok(out)
}

/// A key for a message: at most 80 characters.
pub(crate) fn shorten(key: &str) -> String {
    const MAX: usize = 80;
    if key.chars().count() <= MAX {
        return key.to_string();
    }
    let mut s: String = key.chars().take(MAX).collect();
    s.push('…');
    s
}

fn json_kind(json: &J) -> &'static str {
    match json {
        J::Null => "null",
        J::Bool(_) => "a boolean",
        J::Number(_) => "a number",
        J::String(_) => "a string",
        J::Array(_) => "an array",
        J::Object(_) => "an object",
    }
}

struct Encoder {
    nodes: usize,
    max_nodes: usize,
}

impl Default for Encoder {
    fn default() -> Encoder {
        Encoder {
            nodes: 0,
            max_nodes: MAX_NODES,
        }
    }
}

impl Encoder {
    /// Encodes `v`, which sits inside `depth` levels of JSON containers.
    fn value(&mut self, v: &Value, depth: usize) -> Result<J, CodecError> {
        self.nodes += 1;
        if self.nodes > self.max_nodes {
            return Err(CodecError::new(format!(
                "the value expands to more than {} JSON values when written out \
                 (shared parts are written at each use)",
                self.max_nodes
            )));
        }
        Ok(match v {
            Value::Nil => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => match serde_json::Number::from_f64(*f) {
                Some(n) => J::Number(n),
                None => {
                    let text = if f.is_nan() {
                        "NaN"
                    } else if *f > 0.0 {
                        "inf"
                    } else {
                        "-inf"
                    };
                    tagged(TAG_FLOAT, J::String(text.into()), depth)?
                }
            },
            Value::Str(s) => J::String(s.to_string()),
            Value::Array(a) => {
                let depth = enter(depth)?;
                let items = a.to_vec();
                let mut out = Vec::with_capacity(items.len());
                for (idx, item) in items.iter().enumerate() {
                    out.push(
                        self.value(item, depth)
                            .map_err(|e| e.at(index_segment(idx)))?,
                    );
                }
                J::Array(out)
            }
            Value::Map(m) => {
                let entries = m.entries();
                let escape = entries.first().is_some_and(|(k, _)| k.starts_with('$'));
                let inner_depth = if escape {
                    enter(enter(depth)?)?
                } else {
                    enter(depth)?
                };
                let obj = self.members(&entries, inner_depth)?;
                if escape {
                    single(TAG_MAP, J::Object(obj))
                } else {
                    J::Object(obj)
                }
            }
            Value::Struct(s) => self.structure(s, depth)?,
            Value::Enum(e) => self.variant(e, depth)?,
            Value::Ok(p) => self.wrapped(TAG_OK, p, depth)?,
            Value::Err(p) => self.wrapped(TAG_ERR, p, depth)?,
            Value::Some(p) => self.wrapped(TAG_SOME, p, depth)?,
            Value::None => tagged(TAG_NONE, J::Null, depth)?,
            other => {
                return Err(CodecError::new(format!(
                    "a value of type {} ({}) cannot be saved to a file",
                    other.type_name(),
                    other.to_display()
                )));
            }
        })
    }

    fn members(
        &mut self,
        entries: &[(Str, Value)],
        depth: usize,
    ) -> Result<serde_json::Map<String, J>, CodecError> {
        let mut obj = serde_json::Map::with_capacity(entries.len());
        for (k, item) in entries {
            let json = self
                .value(item, depth)
                .map_err(|e| e.at(format!("[{:?}]", k.as_str())))?;
            obj.insert(k.to_string(), json);
        }
        Ok(obj)
    }

    fn wrapped(&mut self, tag: &str, inner: &Value, depth: usize) -> Result<J, CodecError> {
        let inner_depth = enter(depth)?;
        let json = self
            .value(inner, inner_depth)
            .map_err(|e| e.at(format!("<{tag}>")))?;
        Ok(single(tag, json))
    }

    fn structure(&mut self, s: &StructObj, depth: usize) -> Result<J, CodecError> {
        let fields_depth = enter(enter(depth)?)?;
        let values = s.fields.lock().clone();
        let mut fields = serde_json::Map::with_capacity(values.len());
        for (name, item) in s.ty.fields.iter().zip(&values) {
            let json = self
                .value(item, fields_depth)
                .map_err(|e| e.at(field_segment(name)))?;
            fields.insert(name.to_string(), json);
        }
        let mut obj = serde_json::Map::with_capacity(2);
        obj.insert(TAG_STRUCT.into(), J::String(s.ty.name.to_string()));
        obj.insert("fields".into(), J::Object(fields));
        Ok(J::Object(obj))
    }

    fn variant(&mut self, e: &EnumObj, depth: usize) -> Result<J, CodecError> {
        let outer = enter(depth)?;
        let mut obj = serde_json::Map::with_capacity(5);
        obj.insert(TAG_ENUM.into(), J::String(e.type_name.to_string()));
        obj.insert("variant".into(), J::String(e.variant.to_string()));
        obj.insert("type_id".into(), J::from(e.type_id));
        obj.insert("variant_id".into(), J::from(e.variant_id));
        match &e.field_names {
            Some(names) => {
                let inner = enter(outer)?;
                let mut fields = serde_json::Map::with_capacity(names.len());
                for (name, item) in names.iter().zip(&e.payload) {
                    let json = self
                        .value(item, inner)
                        .map_err(|err| err.at(field_segment(name)))?;
                    fields.insert(name.to_string(), json);
                }
                obj.insert("fields".into(), J::Object(fields));
            }
            None if e.payload.is_empty() => {}
            None => {
                let inner = enter(outer)?;
                let mut items = Vec::with_capacity(e.payload.len());
                for (idx, item) in e.payload.iter().enumerate() {
                    items.push(
                        self.value(item, inner)
                            .map_err(|err| err.at(index_segment(idx)))?,
                    );
                }
                obj.insert("payload".into(), J::Array(items));
            }
        }
        Ok(J::Object(obj))
    }
}

/// One more level of JSON nesting, refused past [`MAX_JSON_DEPTH`].
fn enter(depth: usize) -> Result<usize, CodecError> {
    let depth = depth + 1;
    if depth > MAX_JSON_DEPTH {
        return Err(CodecError::new(format!(
            "the value is nested more than {MAX_JSON_DEPTH} JSON levels deep (or is cyclic)"
        )));
    }
    Ok(depth)
}

fn single(tag: &str, json: J) -> J {
    let mut obj = serde_json::Map::with_capacity(1);
    obj.insert(tag.into(), json);
    J::Object(obj)
}

fn tagged(tag: &str, json: J, depth: usize) -> Result<J, CodecError> {
    enter(depth)?;
    Ok(single(tag, json))
}

/// Decoding refuses JSON deeper than this (a parsed file cannot be; a hand-built
/// `serde_json::Value` passed to [`decode_value`] could).
const MAX_DECODE_DEPTH: usize = 512;

fn decode(json: &J, depth: usize) -> Result<Value, CodecError> {
    if depth > MAX_DECODE_DEPTH {
        return Err(CodecError::new(format!(
            "JSON nested more than {MAX_DECODE_DEPTH} levels deep"
        )));
    }
    Ok(match json {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::str(s.as_str()),
        J::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (idx, item) in items.iter().enumerate() {
                out.push(decode(item, depth + 1).map_err(|e| e.at(index_segment(idx)))?);
            }
            Value::array(out)
        }
        J::Object(obj) => match obj.keys().next() {
            Some(first) if TAGS.contains(&first.as_str()) => decode_tagged(first, obj, depth)?,
            _ => decode_map(obj, depth)?,
        },
    })
}

fn decode_map(obj: &serde_json::Map<String, J>, depth: usize) -> Result<Value, CodecError> {
    let mut inner = MapInner::with_capacity_and_hasher(obj.len(), FxBuildHasher);
    for (k, v) in obj {
        let v = decode(v, depth + 1).map_err(|e| e.at(format!("[{k:?}]")))?;
        inner.insert(Str::from(k.as_str()), v);
    }
    Ok(Value::Map(concerto_vm::Map::new(inner)))
}

/// Checks that a tagged object has exactly the members `allowed` permits and those in
/// `required`.
fn check_members(
    tag: &str,
    obj: &serde_json::Map<String, J>,
    required: &[&str],
    allowed: &[&str],
) -> Result<(), CodecError> {
    for key in obj.keys() {
        if key != tag && !allowed.contains(&key.as_str()) {
            return Err(CodecError::new(format!(
                "a `{tag}` object has an unexpected member `{key}`"
            )));
        }
    }
    for key in required {
        if !obj.contains_key(*key) {
            return Err(CodecError::new(format!(
                "a `{tag}` object lacks the member `{key}`"
            )));
        }
    }
    Ok(())
}

fn string_member<'a>(
    tag: &str,
    obj: &'a serde_json::Map<String, J>,
    key: &str,
) -> Result<&'a str, CodecError> {
    match obj.get(key) {
        Some(J::String(s)) => Ok(s),
        Some(other) => Err(CodecError::new(format!(
            "member `{key}` of a `{tag}` object must be a string, not {}",
            json_kind(other)
        ))),
        None => Err(CodecError::new(format!(
            "a `{tag}` object lacks the member `{key}`"
        ))),
    }
}

fn index_member(tag: &str, obj: &serde_json::Map<String, J>, key: &str) -> Result<u32, CodecError> {
    obj.get(key)
        .and_then(J::as_u64)
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| {
            CodecError::new(format!(
                "member `{key}` of a `{tag}` object must be an integer from 0 to {}",
                u32::MAX
            ))
        })
}

fn decode_tagged(
    tag: &str,
    obj: &serde_json::Map<String, J>,
    depth: usize,
) -> Result<Value, CodecError> {
    let payload = obj.get(tag).unwrap_or(&J::Null);
    let inner = |json: &J| decode(json, depth + 1).map_err(|e| e.at(format!("<{tag}>")));
    match tag {
        TAG_SOME | TAG_OK | TAG_ERR | TAG_MAP | TAG_NONE | TAG_FLOAT => {
            check_members(tag, obj, &[], &[])?;
        }
        _ => {}
    }
    Ok(match tag {
        TAG_SOME => Value::some(inner(payload)?),
        TAG_OK => Value::ok(inner(payload)?),
        TAG_ERR => Value::err(inner(payload)?),
        TAG_NONE => match payload {
            J::Null => Value::None,
            other => {
                return Err(CodecError::new(format!(
                    "`{TAG_NONE}` takes null, not {}",
                    json_kind(other)
                )));
            }
        },
        TAG_FLOAT => match payload.as_str() {
            Some("NaN") => Value::Float(f64::NAN),
            Some("inf") => Value::Float(f64::INFINITY),
            Some("-inf") => Value::Float(f64::NEG_INFINITY),
            _ => {
                return Err(CodecError::new(format!(
                    "`{TAG_FLOAT}` takes \"NaN\", \"inf\" or \"-inf\""
                )));
            }
        },
        TAG_MAP => match payload {
            J::Object(members) => decode_map(members, depth + 1)?,
            other => {
                return Err(CodecError::new(format!(
                    "`{TAG_MAP}` takes an object, not {}",
                    json_kind(other)
                )));
            }
        },
        TAG_STRUCT => {
            check_members(tag, obj, &["fields"], &["fields"])?;
            let name = string_member(tag, obj, TAG_STRUCT)?;
            let Some(J::Object(fields)) = obj.get("fields") else {
                return Err(CodecError::new(format!(
                    "member `fields` of a `{TAG_STRUCT}` object must be an object"
                )));
            };
            let mut names = Vec::with_capacity(fields.len());
            let mut values = Vec::with_capacity(fields.len());
            for (k, v) in fields {
                names.push(Arc::<str>::from(k.as_str()));
                values.push(decode(v, depth + 2).map_err(|e| e.at(field_segment(k)))?);
            }
            Value::Struct(StructObj::new(StructType::new(name, names), values))
        }
        TAG_ENUM => {
            check_members(
                tag,
                obj,
                &["variant", "type_id", "variant_id"],
                &["variant", "type_id", "variant_id", "fields", "payload"],
            )?;
            let type_name = string_member(tag, obj, TAG_ENUM)?;
            let variant = string_member(tag, obj, "variant")?;
            let type_id = index_member(tag, obj, "type_id")?;
            let variant_id = index_member(tag, obj, "variant_id")?;
            let (field_names, payload) = match (obj.get("fields"), obj.get("payload")) {
                (Some(_), Some(_)) => {
                    return Err(CodecError::new(format!(
                        "a `{TAG_ENUM}` object has both `fields` and `payload`"
                    )));
                }
                (Some(J::Object(fields)), None) => {
                    let mut names = Vec::with_capacity(fields.len());
                    let mut values = Vec::with_capacity(fields.len());
                    for (k, v) in fields {
                        names.push(Arc::<str>::from(k.as_str()));
                        values.push(decode(v, depth + 2).map_err(|e| e.at(field_segment(k)))?);
                    }
                    (Some(names), values)
                }
                (Some(_), None) => {
                    return Err(CodecError::new(format!(
                        "member `fields` of a `{TAG_ENUM}` object must be an object"
                    )));
                }
                (None, Some(J::Array(items))) => {
                    let mut values = Vec::with_capacity(items.len());
                    for (idx, item) in items.iter().enumerate() {
                        values.push(decode(item, depth + 2).map_err(|e| e.at(index_segment(idx)))?);
                    }
                    (None, values)
                }
                (None, Some(_)) => {
                    return Err(CodecError::new(format!(
                        "member `payload` of a `{TAG_ENUM}` object must be an array"
                    )));
                }
                (None, None) => (None, Vec::new()),
            };
            Value::Enum(Arc::new(EnumObj {
                type_name: Arc::from(type_name),
                variant: Arc::from(variant),
                type_id,
                variant_id,
                field_names,
                payload,
            }))
        }
        other => {
            return Err(CodecError::new(format!("unknown tag `{other}`")));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(v: &Value) -> Value {
        let json = encode_value(v).unwrap();
        let text = serde_json::to_string(&json).unwrap();
        decode_value(&serde_json::from_str(&text).unwrap()).unwrap()
    }

    #[test]
    fn int_and_float_stay_apart() {
        assert!(matches!(round_trip(&Value::Float(2.0)), Value::Float(f) if f == 2.0));
        assert!(matches!(round_trip(&Value::Int(2)), Value::Int(2)));
        assert!(
            matches!(round_trip(&Value::Float(-0.0)), Value::Float(f) if f == 0.0 && f.is_sign_negative())
        );
        assert!(matches!(round_trip(&Value::Float(f64::NAN)), Value::Float(f) if f.is_nan()));
        assert!(
            matches!(round_trip(&Value::Float(f64::NEG_INFINITY)), Value::Float(f) if f == f64::NEG_INFINITY)
        );
        assert!(matches!(
            round_trip(&Value::Int(i64::MIN)),
            Value::Int(i64::MIN)
        ));
    }

    #[test]
    fn maps_that_look_tagged_are_escaped() {
        let v = Value::map([("$some", Value::Int(1)), ("b", Value::Int(2))]);
        let json = encode_value(&v).unwrap();
        assert_eq!(json, serde_json::json!({"$map": {"$some": 1, "b": 2}}));
        let back = round_trip(&v);
        assert!(matches!(back, Value::Map(_)));
        assert_eq!(back, v);
        // Not first: plain.
        let v = Value::map([("a", Value::Int(1)), ("$some", Value::Int(2))]);
        assert_eq!(
            encode_value(&v).unwrap(),
            serde_json::json!({"a": 1, "$some": 2})
        );
        assert_eq!(round_trip(&v), v);
    }

    #[test]
    fn functions_cannot_be_saved_and_the_error_says_where() {
        let v = Value::map([("list", Value::array(vec![Value::Int(1), Value::Builtin(0)]))]);
        let err = encode_value(&v).unwrap_err();
        assert!(err.message.contains("cannot be saved"), "{}", err.message);
        assert!(err.message.contains("[\"list\"][1]"), "{}", err.message);
    }

    #[test]
    fn cyclic_and_too_deep_values_fail_instead_of_writing_an_unreadable_file() {
        let arr = concerto_vm::Array::new(vec![]);
        arr.0.lock().push(Value::Array(arr.clone()));
        let err = encode_value(&Value::Array(arr.clone())).unwrap_err();
        assert!(err.message.contains("nested more than"), "{}", err.message);
        arr.0.lock().clear();

        // The deepest value that is accepted still parses back.
        let mut v = Value::Int(1);
        for _ in 0..MAX_JSON_DEPTH - 1 {
            v = Value::array(vec![v]);
        }
        let json = encode_entries(&[(Str::from("k"), v)]).unwrap();
        let text = serde_json::to_string(&json).unwrap();
        let parsed: J = serde_json::from_str(&text).unwrap();
        decode_entries(&parsed).unwrap();
    }

    #[test]
    fn exponential_expansion_is_refused() {
        let mut v = Value::Int(0);
        for _ in 0..60 {
            v = Value::array(vec![v.clone(), v]);
        }
        let mut enc = Encoder {
            nodes: 0,
            max_nodes: 100_000,
        };
        let err = enc.value(&v, 0).unwrap_err().describe();
        assert!(err.contains("expands to more than 100000"), "{err}");
    }

    #[test]
    fn malformed_tagged_objects_are_errors() {
        for bad in [
            serde_json::json!({"$some": 1, "x": 2}),
            serde_json::json!({"$none": 1}),
            serde_json::json!({"$float": "nan"}),
            serde_json::json!({"$struct": "P"}),
            serde_json::json!({"$struct": 1, "fields": {}}),
            serde_json::json!({"$enum": "E", "variant": "V", "type_id": -1, "variant_id": 0}),
            serde_json::json!({"$enum": "E", "variant": "V", "type_id": 0, "variant_id": 0, "payload": {}}),
            serde_json::json!({"$map": [1]}),
        ] {
            assert!(decode_value(&bad).is_err(), "{bad}");
        }
        // An unknown `$` key is a plain map.
        let v = decode_value(&serde_json::json!({"$ref": 1})).unwrap();
        assert_eq!(v, Value::map([("$ref", Value::Int(1))]));
    }
}
