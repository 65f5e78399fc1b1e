//! JSON text straight to and from values, without a `serde_json::Value` tree in between:
//! `std::json::stringify` writes the text [`Value::to_json`] would give (same key order,
//! number format, depth and node limits), and `std::json::parse` builds the value
//! [`Value::from_json`] would give.

use std::cell::Cell;
use std::fmt;

use rustc_hash::FxBuildHasher;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::value::{MAX_DEPTH, MAX_NODES, Map, MapInner, Str, Value};

/// Compact JSON of `v`; equal to `v.to_json().to_string()`.
pub(crate) fn to_string(v: &Value) -> String {
    let budget = Cell::new(MAX_NODES);
    serde_json::to_string(&Out::new(v, 0, &budget)).unwrap_or_default()
}

/// Two-space indented JSON of `v`; equal to `serde_json::to_string_pretty(&v.to_json())`.
pub(crate) fn to_string_pretty(v: &Value) -> String {
    let budget = Cell::new(MAX_NODES);
    serde_json::to_string_pretty(&Out::new(v, 0, &budget)).unwrap_or_default()
}

/// Parses JSON text into a value (objects become maps in document order, integers that fit
/// an `i64` become `Int`, other numbers `Float`, `null` becomes `nil`).
pub(crate) fn parse(text: &str) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = In.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// A value being written at `depth`; every node written spends one of `budget`.
struct Out<'a> {
    v: &'a Value,
    depth: usize,
    budget: &'a Cell<usize>,
}

impl<'a> Out<'a> {
    fn new(v: &'a Value, depth: usize, budget: &'a Cell<usize>) -> Out<'a> {
        Out { v, depth, budget }
    }

    fn child<'b>(&'b self, v: &'b Value) -> Out<'b> {
        Out::new(v, self.depth + 1, self.budget)
    }

    fn entries<'b, S, I>(&'b self, s: S, len: usize, entries: I) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        I: IntoIterator<Item = (&'b str, &'b Value)>,
    {
        let mut map = s.serialize_map(Some(len))?;
        for (k, v) in entries {
            map.serialize_entry(k, &self.child(v))?;
        }
        map.end()
    }
}

impl Serialize for Out<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Past the depth limit or the node budget a value is written as "...", as by
        // `to_json`.
        if self.depth > MAX_DEPTH || self.budget.get() == 0 {
            return s.serialize_str("...");
        }
        self.budget.set(self.budget.get() - 1);
        match self.v {
            Value::Nil | Value::None | Value::Unset => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            // A non-finite float has no JSON number: `null`, as in `to_json`.
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(_) => s.serialize_unit(),
            Value::Str(t) => s.serialize_str(t),
            Value::Array(a) => {
                // A snapshot: an array that holds itself must not be locked twice.
                let items = a.to_vec();
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in &items {
                    seq.serialize_element(&self.child(v))?;
                }
                seq.end()
            }
            Value::Map(m) => {
                let entries = m.entries();
                self.entries(s, entries.len(), entries.iter().map(|(k, v)| (&**k, v)))
            }
            Value::Struct(obj) => {
                let fields = obj.fields.lock().clone();
                let names = obj.ty.fields.iter().map(|k| &**k);
                self.entries(s, fields.len(), names.zip(&fields))
            }
            Value::Enum(e) => match (&e.field_names, e.payload.len()) {
                (None, 0) => s.serialize_str(&e.variant),
                (None, 1) => self.entries(s, 1, [(&*e.variant, &e.payload[0])]),
                (names, _) => {
                    let payload = Payload {
                        out: self,
                        names: names.as_deref(),
                        values: &e.payload,
                    };
                    let mut map = s.serialize_map(Some(1))?;
                    map.serialize_entry(&*e.variant, &payload)?;
                    map.end()
                }
            },
            Value::Ok(p) => self.entries(s, 1, [("Ok", &***p)]),
            Value::Err(p) => self.entries(s, 1, [("Err", &***p)]),
            Value::Some(p) => self.entries(s, 1, [("Some", &***p)]),
            Value::Range(r) => {
                let mut map = s.serialize_map(Some(3))?;
                map.serialize_entry("start", &r.start)?;
                map.serialize_entry("end", &r.end)?;
                map.serialize_entry("inclusive", &r.inclusive)?;
                map.end()
            }
            other => s.serialize_str(&other.to_display()),
        }
    }
}

/// The payload of an enum variant with fields (an object) or with several values (an array).
struct Payload<'a> {
    out: &'a Out<'a>,
    names: Option<&'a [std::sync::Arc<str>]>,
    values: &'a [Value],
}

impl Serialize for Payload<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.names {
            Some(names) => {
                let names = names.iter().map(|k| &**k);
                self.out
                    .entries(s, self.values.len(), names.zip(self.values))
            }
            None => {
                let mut seq = s.serialize_seq(Some(self.values.len()))?;
                for v in self.values {
                    seq.serialize_element(&self.out.child(v))?;
                }
                seq.end()
            }
        }
    }
}

/// Reads one JSON value into a [`Value`].
#[derive(Clone, Copy)]
struct In;

impl<'de> DeserializeSeed<'de> for In {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for In {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
        Ok(Value::Int(i))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
        // Above `i64::MAX`: a float, as `serde_json::Number::as_i64` then `as_f64` give.
        Ok(i64::try_from(u).map_or(Value::Float(u as f64), Value::Int))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }

    fn visit_str<E>(self, t: &str) -> Result<Value, E> {
        Ok(Value::Str(Str::from(t)))
    }

    fn visit_string<E>(self, t: String) -> Result<Value, E> {
        Ok(Value::Str(Str::new(t)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(v) = seq.next_element_seed(In)? {
            items.push(v);
        }
        Ok(Value::array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut inner = MapInner::with_capacity_and_hasher(
            map.size_hint().unwrap_or(0).min(4096),
            FxBuildHasher,
        );
        while let Some(k) = map.next_key_seed(Key)? {
            let v = map.next_value_seed(In)?;
            // A repeated key keeps its first place and takes the last value, as a
            // `serde_json::Map` does.
            inner.insert(k, v);
        }
        Ok(Value::Map(Map::new(inner)))
    }
}

/// Reads an object key into a [`Str`].
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Str;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Str, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Key {
    type Value = Str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, t: &str) -> Result<Str, E> {
        Ok(Str::from(t))
    }

    fn visit_string<E>(self, t: String) -> Result<Str, E> {
        Ok(Str::new(t))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::value::{EnumObj, Range, StructObj, StructType};

    fn enum_value(variant: &str, names: Option<&[&str]>, payload: Vec<Value>) -> Value {
        Value::Enum(Arc::new(EnumObj {
            type_name: "Shape".into(),
            variant: variant.into(),
            type_id: 0,
            variant_id: 0,
            field_names: names.map(|n| n.iter().map(|k| Arc::<str>::from(*k)).collect()),
            payload,
        }))
    }

    /// A value with every kind the writer treats apart, nested.
    fn everything() -> Value {
        let point = StructType::new("Point", vec!["x".into(), "y".into()]);
        let map = Map::from_pairs([
            (Str::from("b"), Value::Int(-7)),
            (Str::from("a"), Value::Float(1.0)),
            (
                Str::from("q\"\\\n\u{1}é"),
                Value::str("tab\there \u{7f} \u{2028}"),
            ),
            (Str::from("nan"), Value::Float(f64::NAN)),
            (Str::from("inf"), Value::Float(f64::INFINITY)),
            (Str::from("tiny"), Value::Float(1e-300)),
            (Str::from("big"), Value::Float(1.5e300)),
        ]);
        Value::array(vec![
            Value::Nil,
            Value::None,
            Value::Bool(true),
            Value::Int(i64::MIN),
            Value::Map(map),
            Value::Struct(StructObj::new(point, vec![Value::Int(1), Value::str("y")])),
            enum_value("Dot", None, vec![]),
            enum_value("Circle", None, vec![Value::Float(2.5)]),
            enum_value("Rect", None, vec![Value::Int(1), Value::Int(2)]),
            enum_value("Named", Some(&["w", "h"]), vec![Value::Int(3), Value::Nil]),
            Value::ok(Value::some(Value::Int(1))),
            Value::err(Value::str("e")),
            Value::Range(Arc::new(Range {
                start: 1,
                end: None,
                inclusive: false,
            })),
            Value::Builtin(3),
        ])
    }

    #[test]
    fn the_writer_gives_the_text_of_the_json_tree() {
        let v = everything();
        assert_eq!(to_string(&v), v.to_json().to_string());
        assert_eq!(
            to_string_pretty(&v),
            serde_json::to_string_pretty(&v.to_json()).unwrap()
        );
    }

    #[test]
    fn the_writer_stops_at_the_depth_limit_as_the_tree_does() {
        let mut v = Value::Int(1);
        for _ in 0..(MAX_DEPTH + 20) {
            v = Value::array(vec![v, Value::str("x")]);
        }
        let text = to_string(&v);
        assert!(text.contains("\"...\""), "the depth limit shows");
        assert_eq!(text, v.to_json().to_string());
    }

    #[test]
    fn an_array_that_holds_itself_is_written_without_deadlock() {
        let arr = crate::value::Array::new(vec![Value::Int(1)]);
        arr.0.lock().push(Value::Array(arr.clone()));
        let v = Value::Array(arr.clone());
        assert_eq!(to_string(&v), v.to_json().to_string());
        // Break the cycle so the test does not leak it.
        arr.0.lock().pop();
    }

    #[test]
    fn the_reader_gives_the_value_of_the_json_tree() {
        let texts = [
            r#"{"b": [1, -2, 3.5, 18446744073709551615, 9223372036854775807, -9223372036854775808], "a": null, "b2": {"x": true, "y": "\u00e9\n\"q\""}}"#,
            r#"{"k": 1, "j": 2, "k": 3}"#,
            "[]",
            "{}",
            " \"s\" ",
            "-0.0",
            "123456789012345678901234567890",
        ];
        for text in texts {
            let ours = parse(text).unwrap();
            let tree = Value::from_json(&serde_json::from_str(text).unwrap());
            assert!(
                ours.equals(&tree),
                "{text}: {} vs {}",
                ours.to_display(),
                tree.to_display()
            );
            // Same kinds and key order, not only equal numbers.
            assert_eq!(ours.to_display(), tree.to_display(), "{text}");
            assert_eq!(to_string(&ours), to_string(&tree), "{text}");
        }
    }

    #[test]
    fn the_reader_refuses_what_serde_json_refuses_with_the_same_message() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        for text in [
            "",
            "1e400",
            "[1,",
            "{\"a\" 1}",
            "1 2",
            "tru",
            "\"\\x\"",
            deep.as_str(),
        ] {
            let ours = parse(text).unwrap_err().to_string();
            let theirs = serde_json::from_str::<serde_json::Value>(text)
                .unwrap_err()
                .to_string();
            assert_eq!(ours, theirs, "{text}");
        }
    }
}
