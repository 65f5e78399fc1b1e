//! [`Value`]: the plain-data value the host sees (emit payloads, emit-await replies, the
//! result of `execute`).
//!
//! The interpreter's own values share their storage (`Arc`) so that Concerto's aliasing
//! rules hold; at the boundary they are copied into this owned, serialisable form, the
//! shape the runtime specification shows.

use indexmap::IndexMap;

/// A Concerto value as the host sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    String(String),
    /// A boolean.
    Bool(bool),
    /// `nil`
    Nil,
    /// An array (tuples are arrays at run time).
    Array(Vec<Value>),
    /// A range of integers (`start..end`, `start..=end`; `end` is `None` when open).
    Range {
        /// The first integer.
        start: i64,
        /// The bound, or `None` for an open range.
        end: Option<i64>,
        /// Whether `end` belongs to the range.
        inclusive: bool,
    },
    /// A map with string keys, in insertion order.
    Map(IndexMap<String, Value>),
    /// A tuple (hosts may send one; Concerto code sees an array).
    Tuple(Vec<Value>),
    /// A struct (user structs, schema results, records such as `ToolError`).
    Struct {
        /// Type name.
        type_name: String,
        /// Fields in declaration order.
        fields: IndexMap<String, Value>,
    },
    /// A user enum variant.
    Enum {
        /// Enum type name.
        type_name: String,
        /// Variant name.
        variant: String,
        /// Payload: named fields for struct-like variants, `_0`, `_1`, … for tuple variants,
        /// empty for unit variants.
        fields: IndexMap<String, Value>,
    },
    /// `Some(v)` or `None`.
    Option(Option<Box<Value>>),
    /// `Ok(v)` or `Err(e)`.
    Result(Result<Box<Value>, Box<Value>>),
    /// An agent, by name.
    AgentRef(String),
    /// A hashmap, by name.
    HashMapRef(String),
    /// Another declared entity (schema, tool, ledger, memory, pipeline, host, MCP server).
    Ref {
        /// `schema`, `tool`, `ledger`, `memory`, `pipeline`, `host`, `mcp`.
        kind: String,
        /// Declared name.
        name: String,
    },
    /// A function, by name.
    Closure(String),
    /// Anything else the interpreter holds (builders, tasks), by its display form.
    Opaque(String),
}

/// A field lookup that found nothing of the wanted kind.
#[derive(Debug, Clone, thiserror::Error)]
#[error("value has no {expected} field `{field}`")]
pub struct ValueError {
    /// The field asked for.
    pub field: String,
    /// What kind of value was expected.
    pub expected: &'static str,
}

impl Value {
    /// Field `name` of a struct or map.
    pub fn get(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct { fields, .. } | Value::Map(fields) => fields.get(name),
            _ => None,
        }
    }

    /// The string field `name` of a struct or map.
    ///
    /// # Errors
    /// [`ValueError`] when the field is missing or not a string.
    pub fn get_string(&self, name: &str) -> Result<String, ValueError> {
        match self.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ValueError {
                field: name.to_string(),
                expected: "string",
            }),
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The JSON form emit sinks use: structs as objects of their fields, `Ok`/`Err`/`Some`
    /// as `{"Ok": v}` …, `None` and `Nil` as `null`, enum variants as `"Variant"` or
    /// `{"Variant": payload}`, references and functions by name, non-finite floats as `null`.
    pub fn to_json(&self) -> serde_json::Value {
        self.to_json_depth(0)
    }

    fn to_json_depth(&self, depth: usize) -> serde_json::Value {
        use serde_json::Value as J;
        if depth > 128 {
            return J::String("...".into());
        }
        let tagged = |tag: &str, v: &Value| {
            let mut obj = serde_json::Map::new();
            obj.insert(tag.to_string(), v.to_json_depth(depth + 1));
            J::Object(obj)
        };
        let object = |fields: &IndexMap<String, Value>| {
            J::Object(
                fields
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_json_depth(depth + 1)))
                    .collect(),
            )
        };
        match self {
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Bool(b) => J::Bool(*b),
            Value::Nil | Value::Option(None) => J::Null,
            Value::Array(items) | Value::Tuple(items) => {
                J::Array(items.iter().map(|v| v.to_json_depth(depth + 1)).collect())
            }
            Value::Map(fields) | Value::Struct { fields, .. } => object(fields),
            Value::Enum {
                variant, fields, ..
            } => {
                let tuple = fields.keys().all(|k| k.starts_with('_'));
                let payload = match (fields.len(), tuple) {
                    (0, _) => return J::String(variant.clone()),
                    (1, true) => fields[0].to_json_depth(depth + 1),
                    (_, true) => J::Array(
                        fields
                            .values()
                            .map(|v| v.to_json_depth(depth + 1))
                            .collect(),
                    ),
                    (_, false) => object(fields),
                };
                let mut obj = serde_json::Map::new();
                obj.insert(variant.clone(), payload);
                J::Object(obj)
            }
            Value::Option(Some(v)) => tagged("Some", v),
            Value::Result(Ok(v)) => tagged("Ok", v),
            Value::Result(Err(v)) => tagged("Err", v),
            // References serialise as their display form, as the interpreter does.
            Value::AgentRef(name) => J::String(format!("<agent {name}>")),
            Value::HashMapRef(name) => J::String(format!("<hashmap {name}>")),
            Value::Closure(name) => J::String(format!("<fn {name}>")),
            Value::Ref { kind, name } => J::String(format!("<{kind} {name}>")),
            Value::Opaque(text) => J::String(text.clone()),
            Value::Range {
                start,
                end,
                inclusive,
            } => serde_json::json!({"start": start, "end": end, "inclusive": inclusive}),
        }
    }
}

fn fields_of(
    type_fields: &[std::sync::Arc<str>],
    values: Vec<concerto_vm::Value>,
) -> IndexMap<String, Value> {
    type_fields
        .iter()
        .zip(values)
        .map(|(k, v)| (k.to_string(), Value::from(&v)))
        .collect()
}

impl From<&concerto_vm::Value> for Value {
    fn from(v: &concerto_vm::Value) -> Value {
        use concerto_vm::Value as V;
        match v {
            V::Nil | V::Unset => Value::Nil,
            V::Bool(b) => Value::Bool(*b),
            V::Int(i) => Value::Int(*i),
            V::Float(f) => Value::Float(*f),
            V::Str(s) => Value::String(s.to_string()),
            V::Array(a) => Value::Array(a.to_vec().iter().map(Value::from).collect()),
            V::Map(m) => Value::Map(
                m.entries()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), Value::from(&v)))
                    .collect(),
            ),
            V::Struct(s) => Value::Struct {
                type_name: s.ty.name.to_string(),
                fields: fields_of(&s.ty.fields, s.fields.lock().clone()),
            },
            V::Enum(e) => Value::Enum {
                type_name: e.type_name.to_string(),
                variant: e.variant.to_string(),
                fields: match &e.field_names {
                    Some(names) => fields_of(names, e.payload.clone()),
                    None => e
                        .payload
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (format!("_{i}"), Value::from(v)))
                        .collect(),
                },
            },
            V::Ok(x) => Value::Result(Ok(Box::new(Value::from(&***x)))),
            V::Err(x) => Value::Result(Err(Box::new(Value::from(&***x)))),
            V::Some(x) => Value::Option(Some(Box::new(Value::from(&***x)))),
            V::None => Value::Option(None),
            V::Ref(r) => {
                let name = r.name().unwrap_or_else(|| format!("#{}", r.index));
                match r.kind {
                    concerto_vm::RefKind::Agent => Value::AgentRef(name),
                    concerto_vm::RefKind::Hashmap => Value::HashMapRef(name),
                    kind => Value::Ref {
                        kind: format!("{kind:?}").to_lowercase(),
                        name,
                    },
                }
            }
            V::Func(_) | V::Builtin(_) | V::Path(_) => {
                let text = v.to_display();
                let name = text
                    .trim_start_matches("<fn ")
                    .trim_end_matches('>')
                    .to_string();
                Value::Closure(name)
            }
            V::Object(_) => Value::Opaque(v.to_display()),
            V::Range(r) => Value::Range {
                start: r.start,
                end: r.end,
                inclusive: r.inclusive,
            },
        }
    }
}

impl From<&Value> for concerto_vm::Value {
    fn from(v: &Value) -> concerto_vm::Value {
        use concerto_vm::Value as V;
        match v {
            Value::Int(i) => V::Int(*i),
            Value::Float(f) => V::Float(*f),
            Value::String(s) => V::str(s.as_str()),
            Value::Bool(b) => V::Bool(*b),
            Value::Nil => V::Nil,
            Value::Array(items) | Value::Tuple(items) => {
                V::array(items.iter().map(V::from).collect())
            }
            Value::Map(m) => V::map(m.iter().map(|(k, v)| (k.as_str(), V::from(v)))),
            Value::Struct { type_name, fields } => V::record(
                type_name,
                fields
                    .iter()
                    .map(|(k, v)| (k.as_str(), V::from(v)))
                    .collect(),
            ),
            Value::Enum {
                variant, fields, ..
            } => {
                // Enum values cannot be rebuilt without their program; pass the payload as
                // a map keyed by variant, like the JSON form.
                V::map([(
                    variant.as_str(),
                    V::map(fields.iter().map(|(k, v)| (k.as_str(), V::from(v)))),
                )])
            }
            Value::Option(Some(x)) => V::some(V::from(&**x)),
            Value::Option(None) => V::None,
            Value::Result(Ok(x)) => V::ok(V::from(&**x)),
            Value::Result(Err(x)) => V::err(V::from(&**x)),
            Value::AgentRef(name) | Value::HashMapRef(name) | Value::Closure(name) => {
                V::str(name.as_str())
            }
            Value::Ref { name, .. } => V::str(name.as_str()),
            Value::Opaque(text) => V::str(text.as_str()),
            Value::Range {
                start,
                end,
                inclusive,
            } => V::Range(std::sync::Arc::new(concerto_vm::Range {
                start: *start,
                end: *end,
                inclusive: *inclusive,
            })),
        }
    }
}

impl From<concerto_vm::Value> for Value {
    fn from(v: concerto_vm::Value) -> Value {
        Value::from(&v)
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&concerto_vm::Value::from(self).to_display())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_string())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
