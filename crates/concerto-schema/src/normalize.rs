//! Compiling a program schema (Concerto type names) into real JSON Schema, in two forms:
//! the validation form checked with `jsonschema`, and the provider form sent to LLM
//! providers for structured output (OpenAI strict subset).

use std::collections::{HashMap, HashSet};

use concerto_vm::host::HostError;
use concerto_vm::host::{Program, TypeDefKind};
use serde_json::{Map, Value, json};

use crate::types::{TypeExpr, parse_type};

/// How many schemas may be expanded inside one another before the next one is referenced
/// through `$defs` instead of inlined.
pub const MAX_INLINE_DEPTH: usize = 16;

/// How many schema expansions one normalisation may inline in total; past it every further
/// reference goes through `$defs` (keeps `A{b1: B, b2: B}` chains from growing exponentially).
pub const INLINE_BUDGET: usize = 256;

/// How deeply schema nodes may nest (counting inline object literals, generic arguments and
/// expanded schemas) before the rest is left unconstrained.
pub const MAX_NODE_DEPTH: usize = 96;

/// The two shapes a schema is compiled to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// For checking replies: extra members allowed, optional members may be absent.
    Validation,
    /// For providers: every object closed (`additionalProperties: false`) and listing all
    /// of its properties in `required`, optional ones nullable.
    Provider,
}

/// The JSON Schema type names that may appear in either form.
pub const JSON_TYPES: [&str; 7] = [
    "string", "integer", "number", "boolean", "object", "array", "null",
];

const SCALAR_TYPES: [&str; 5] = ["string", "integer", "number", "boolean", "null"];

/// The provider-form stand-in for `Any`: strict providers cannot express a free-form value,
/// so it is a scalar or an array of scalars.
fn provider_any() -> Value {
    json!({
        "anyOf": [
            {"type": ["string", "number", "boolean", "null"]},
            {"type": "array", "items": {"type": ["string", "number", "boolean", "null"]}}
        ]
    })
}

pub(crate) fn schema_out_of_range(program: &Program, schema: u32) -> HostError {
    HostError::failed(format!(
        "schema index {schema} is out of range (the program declares {} schema{})",
        program.schemas.len(),
        if program.schemas.len() == 1 { "" } else { "s" }
    ))
}

/// Compiles schema `schema` of `program`. With `partial`, the root object requires nothing
/// and accepts null for every property (nested schemas keep their own `required`).
pub(crate) fn compile(
    program: &Program,
    schema: u32,
    form: Form,
    partial: bool,
) -> Result<Value, HostError> {
    let root = schema as usize;
    let Some(root_schema) = program.schemas.get(root) else {
        return Err(schema_out_of_range(program, schema));
    };
    let mut names = HashMap::new();
    for (idx, s) in program.schemas.iter().enumerate() {
        names.entry(s.name.as_str()).or_insert(idx);
    }
    let mut n = Normalizer {
        program,
        form,
        names,
        root,
        root_by_hash: !partial,
        stack: vec![root],
        depth: 0,
        budget: INLINE_BUDGET,
        defs: Vec::new(),
        def_keys: HashMap::new(),
        used_keys: HashSet::new(),
    };
    let mut body = n.object_schema(&root_schema.json_schema);
    if partial {
        make_partial(&mut body);
    }
    let mut defs = Map::new();
    let mut next = 0;
    while let Some(&idx) = n.defs.get(next) {
        next += 1;
        let key = n.def_keys.get(&idx).cloned().unwrap_or_default();
        n.stack = vec![idx];
        n.depth = 0;
        let def_body = match program.schemas.get(idx) {
            Some(s) => n.object_schema(&s.json_schema),
            None => n.any(),
        };
        defs.insert(key, def_body);
    }
    if !defs.is_empty()
        && let Value::Object(map) = &mut body
    {
        map.insert("$defs".into(), Value::Object(defs));
    }
    Ok(body)
}

/// Drops the root's `required` and makes its properties nullable.
fn make_partial(body: &mut Value) {
    let Value::Object(map) = body else { return };
    map.remove("required");
    if let Some(Value::Object(props)) = map.get_mut("properties") {
        for value in props.values_mut() {
            let schema = std::mem::take(value);
            *value = nullable(schema);
        }
    }
}

struct Normalizer<'p> {
    program: &'p Program,
    form: Form,
    names: HashMap<&'p str, usize>,
    root: usize,
    /// Whether a reference back to the root may use `#` (not in partial mode, where the
    /// root differs from the schema it names).
    root_by_hash: bool,
    /// Schemas being expanded, innermost last.
    stack: Vec<usize>,
    depth: usize,
    budget: usize,
    /// Schemas that must appear in `$defs`, in order of first reference.
    defs: Vec<usize>,
    def_keys: HashMap<usize, String>,
    used_keys: HashSet<String>,
}

impl Normalizer<'_> {
    fn any(&self) -> Value {
        match self.form {
            Form::Validation => json!({}),
            Form::Provider => provider_any(),
        }
    }

    /// An object schema node: `{"type":"object","properties":{…},"required":[…]}` as written
    /// by the compiler. Anything that is not an object or lacks `properties` is an object
    /// with no declared properties.
    fn object_schema(&mut self, node: &Value) -> Value {
        self.depth += 1;
        let out = self.object_schema_inner(node);
        self.depth -= 1;
        out
    }

    fn object_schema_inner(&mut self, node: &Value) -> Value {
        let obj = node.as_object();
        let declared_required: HashSet<&str> = obj
            .and_then(|o| o.get("required"))
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut properties = Map::new();
        let mut required = Vec::new();
        if let Some(props) = obj
            .and_then(|o| o.get("properties"))
            .and_then(Value::as_object)
        {
            for (name, prop) in props {
                let (schema, is_option) = self.property(prop);
                let optional = is_option || !declared_required.contains(name.as_str());
                let schema = if optional && !is_option {
                    nullable(schema)
                } else {
                    schema
                };
                if !optional || self.form == Form::Provider {
                    required.push(Value::String(name.clone()));
                }
                properties.insert(name.clone(), schema);
            }
        }
        let mut out = Map::new();
        out.insert("type".into(), json!("object"));
        if let Some(desc) = obj
            .and_then(|o| o.get("description"))
            .and_then(Value::as_str)
        {
            out.insert("description".into(), json!(desc));
        }
        let has_props = !properties.is_empty();
        if has_props || self.form == Form::Provider {
            out.insert("properties".into(), Value::Object(properties));
        }
        if !required.is_empty() || self.form == Form::Provider {
            out.insert("required".into(), Value::Array(required));
        }
        if self.form == Form::Provider {
            out.insert("additionalProperties".into(), json!(false));
        }
        Value::Object(out)
    }

    /// One property node; also reports whether its type is `Option<…>` (never required).
    fn property(&mut self, node: &Value) -> (Value, bool) {
        if self.depth >= MAX_NODE_DEPTH {
            return (self.any(), false);
        }
        self.depth += 1;
        let out = self.property_inner(node);
        self.depth -= 1;
        out
    }

    fn property_inner(&mut self, node: &Value) -> (Value, bool) {
        let obj = match node {
            Value::String(text) => return self.type_string(text),
            Value::Object(obj) => obj,
            _ => return (self.any(), false),
        };
        let (mut schema, is_option) = if let Some(values) = obj.get("enum") {
            (self.enum_schema(values), false)
        } else {
            match obj.get("type") {
                Some(Value::String(t)) if t == "object" && obj.contains_key("properties") => {
                    (self.object_schema(node), false)
                }
                Some(Value::String(t)) if t == "array" && obj.contains_key("items") => {
                    let items = obj.get("items").unwrap_or(&Value::Null);
                    let (items, _) = self.property(items);
                    (array_of(items, self.form), false)
                }
                Some(Value::String(t)) => self.type_string(t),
                None if obj.contains_key("properties") => (self.object_schema(node), false),
                _ => (self.any(), false),
            }
        };
        if let (Some(desc), Value::Object(map)) =
            (obj.get("description").and_then(Value::as_str), &mut schema)
            && !map.contains_key("anyOf")
            && !map.contains_key("$ref")
        {
            map.insert("description".into(), json!(desc));
        }
        (schema, is_option)
    }

    /// A Concerto type string. Unparseable strings carry no constraint.
    fn type_string(&mut self, text: &str) -> (Value, bool) {
        match parse_type(text) {
            Ok(ty) => {
                let is_option = matches!(ty, TypeExpr::Option(_));
                (self.ty(&ty), is_option)
            }
            Err(_) => (self.any(), false),
        }
    }

    fn ty(&mut self, ty: &TypeExpr) -> Value {
        if self.depth >= MAX_NODE_DEPTH {
            return self.any();
        }
        self.depth += 1;
        let out = self.ty_inner(ty);
        self.depth -= 1;
        out
    }

    fn ty_inner(&mut self, ty: &TypeExpr) -> Value {
        match ty {
            TypeExpr::String => json!({"type": "string"}),
            TypeExpr::Int => json!({"type": "integer"}),
            TypeExpr::Float => json!({"type": "number"}),
            TypeExpr::Bool => json!({"type": "boolean"}),
            TypeExpr::Nil => json!({"type": "null"}),
            TypeExpr::Any | TypeExpr::Generic(..) => self.any(),
            TypeExpr::Array(item) => {
                let item = self.ty(item);
                array_of(item, self.form)
            }
            TypeExpr::Map(_, value) => {
                let any_value = matches!(**value, TypeExpr::Any);
                let value = self.ty(value);
                match self.form {
                    Form::Validation if any_value => json!({"type": "object"}),
                    _ => json!({"type": "object", "additionalProperties": value}),
                }
            }
            TypeExpr::Option(inner) => {
                let inner = self.ty(inner);
                nullable(inner)
            }
            TypeExpr::Named(name) => self.named(name),
        }
    }

    fn named(&mut self, name: &str) -> Value {
        let short = name.rsplit("::").next().unwrap_or(name);
        if let Some(&idx) = self.names.get(name).or_else(|| self.names.get(short)) {
            return self.schema_ref(idx);
        }
        let program = self.program;
        let decl = program
            .types
            .iter()
            .find(|t| t.name.as_ref() == name)
            .or_else(|| program.types.iter().find(|t| t.name.as_ref() == short));
        match decl.map(|t| &t.kind) {
            Some(TypeDefKind::Struct { fields }) => {
                let names: Vec<&str> = fields
                    .iter()
                    .filter_map(|id| program.names.get(id.index()))
                    .map(|n| n.as_ref())
                    .collect();
                self.struct_schema(&names)
            }
            // Enums and unknown names: no constraint.
            _ => self.any(),
        }
    }

    /// A user struct: the IR keeps only its field names, so the fields are unconstrained
    /// (and, in the validation form, not required).
    fn struct_schema(&self, fields: &[&str]) -> Value {
        let mut props = Map::new();
        for field in fields {
            props.insert((*field).to_string(), self.any());
        }
        match self.form {
            Form::Validation => json!({"type": "object", "properties": props}),
            Form::Provider => {
                let required: Vec<Value> = props.keys().map(|k| json!(k)).collect();
                json!({
                    "type": "object",
                    "properties": props,
                    "required": required,
                    "additionalProperties": false
                })
            }
        }
    }

    fn schema_ref(&mut self, idx: usize) -> Value {
        if idx == self.root && self.root_by_hash {
            return json!({"$ref": "#"});
        }
        let must_reference = self.stack.contains(&idx)
            || self.stack.len() > MAX_INLINE_DEPTH
            || self.depth >= MAX_NODE_DEPTH / 2
            || self.budget == 0;
        if must_reference {
            let key = self.def_key(idx);
            return json!({"$ref": format!("#/$defs/{key}")});
        }
        self.budget -= 1;
        self.stack.push(idx);
        let body = match self.program.schemas.get(idx) {
            Some(schema) => self.object_schema(&schema.json_schema),
            None => self.any(),
        };
        self.stack.pop();
        body
    }

    /// The `$defs` key of a schema (registering it for output): its name reduced to
    /// `[A-Za-z0-9_-]`, made unique, and never `type` (a key some schema walkers mistake for
    /// the keyword).
    fn def_key(&mut self, idx: usize) -> String {
        if let Some(key) = self.def_keys.get(&idx) {
            return key.clone();
        }
        let name = self
            .program
            .schemas
            .get(idx)
            .map_or("schema", |s| s.name.as_str());
        let mut key: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if key.is_empty() {
            key.push_str("schema");
        }
        if key == "type" || self.used_keys.contains(&key) {
            key = format!("{key}_{idx}");
        }
        self.used_keys.insert(key.clone());
        self.def_keys.insert(idx, key.clone());
        self.defs.push(idx);
        key
    }

    /// `{"type": …, "enum": […]}` from the enum values (scalars only); the type follows the
    /// values. An unusable enum carries no constraint.
    fn enum_schema(&self, values: &Value) -> Value {
        let values: Vec<Value> = values
            .as_array()
            .map(|list| {
                list.iter()
                    .filter(|v| !v.is_object() && !v.is_array())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if values.is_empty() {
            return self.any();
        }
        let mut types: Vec<&str> = Vec::new();
        for v in &values {
            let t = match v {
                Value::String(_) => "string",
                Value::Number(_) => "number",
                Value::Bool(_) => "boolean",
                _ => "null",
            };
            if !types.contains(&t) {
                types.push(t);
            }
        }
        let ty = match types.as_slice() {
            [one] => json!(one),
            many => json!(many),
        };
        json!({"type": ty, "enum": values})
    }
}

fn array_of(items: Value, form: Form) -> Value {
    if form == Form::Validation && items.as_object().is_some_and(Map::is_empty) {
        json!({"type": "array"})
    } else {
        json!({"type": "array", "items": items})
    }
}

/// Whether a schema node accepts `null` by its `type`, or is a bare `anyOf` with such a
/// branch.
fn accepts_null(map: &Map<String, Value>) -> bool {
    match map.get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "null"),
        _ => match map.get("anyOf") {
            Some(Value::Array(branches)) if map.len() == 1 => branches
                .iter()
                .any(|b| b.as_object().is_some_and(accepts_null)),
            _ => false,
        },
    }
}

/// The schema, also accepting `null`: scalar types gain `"null"` in a type list (and in
/// their `enum`), anything else is wrapped as `anyOf: [schema, {"type": "null"}]`.
pub(crate) fn nullable(schema: Value) -> Value {
    let Value::Object(mut map) = schema else {
        return schema;
    };
    if map.is_empty() || accepts_null(&map) {
        return Value::Object(map);
    }
    let scalar_types: Option<Vec<String>> = match map.get("type") {
        Some(Value::String(t)) => Some(vec![t.clone()]),
        Some(Value::Array(ts)) => ts.iter().map(|t| t.as_str().map(str::to_string)).collect(),
        _ => None,
    }
    .filter(|ts| {
        !ts.is_empty()
            && ts.iter().all(|t| SCALAR_TYPES.contains(&t.as_str()))
            && !map.contains_key("$ref")
    });
    if let Some(mut types) = scalar_types {
        types.push("null".into());
        map.insert("type".into(), json!(types));
        if let Some(Value::Array(values)) = map.get_mut("enum")
            && !values.iter().any(Value::is_null)
        {
            values.push(Value::Null);
        }
        return Value::Object(map);
    }
    if map.len() == 1
        && let Some(Value::Array(branches)) = map.get_mut("anyOf")
    {
        branches.push(json!({"type": "null"}));
        return Value::Object(map);
    }
    json!({"anyOf": [Value::Object(map), {"type": "null"}]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nullable_shapes() {
        assert_eq!(
            nullable(json!({"type": "string"})),
            json!({"type": ["string", "null"]})
        );
        assert_eq!(
            nullable(json!({"type": "string", "enum": ["a"]})),
            json!({"type": ["string", "null"], "enum": ["a", null]})
        );
        assert_eq!(nullable(json!({})), json!({}));
        assert_eq!(nullable(json!({"type": "null"})), json!({"type": "null"}));
        assert_eq!(
            nullable(json!({"type": "object"})),
            json!({"anyOf": [{"type": "object"}, {"type": "null"}]})
        );
        assert_eq!(
            nullable(json!({"$ref": "#"})),
            json!({"anyOf": [{"$ref": "#"}, {"type": "null"}]})
        );
        assert_eq!(
            nullable(json!({"anyOf": [{"type": "object"}]})),
            json!({"anyOf": [{"type": "object"}, {"type": "null"}]})
        );
        // Already nullable: unchanged.
        let once = nullable(json!({"type": "array", "items": {}}));
        assert_eq!(nullable(once.clone()), once);
        assert_eq!(nullable(provider_any()), provider_any());
    }
}
