//! The tool signatures an `mcp` block declares, matched to the server's tools and checked
//! against their schemas, and a tool's result converted to the declared return type.
//!
//! Matching ([`resolve`]): a server tool with exactly the declared name; when there is none,
//! the one whose name becomes the declared name once every character that cannot appear in
//! a Concerto identifier (anything but ASCII letters, digits and `_`) is replaced with `_`
//! (`get-sum` for `get_sum`); two such tools make the name ambiguous.
//!
//! Checking ([`check`]): each declared parameter must be in the `inputSchema`'s
//! `properties` with a compatible type, each parameter the schema requires must be
//! declared and not as an `Option`, and when the tool has an `outputSchema` the declared
//! return type must be compatible with it. Compatible: `Int` with `integer` or `number`,
//! `Float` with `number`, `String` with `string`, `Bool` with `boolean`, `Array<…>` with
//! `array`, `Map<…>` and structs with `object`; `Option<T>` as `T`; `Any`, enums and
//! other types accept anything, as does a schema that names no type.

use rmcp::model::{CallToolResult, Tool};
use serde_json::Value;

use concerto_vm::host::{Program, TypeDefKind};

/// A declared type, as far as matching it against JSON goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ty {
    Int,
    Float,
    Str,
    Bool,
    Array,
    /// `Map<…>` or a struct: a JSON object.
    Object,
    Option(Box<Ty>),
    /// `Any`, an enum, or a type this check does not know: anything goes.
    Any,
}

/// One declared parameter.
#[derive(Debug, Clone)]
pub(super) struct Param {
    pub(super) name: String,
    pub(super) ty: Ty,
    /// The type as written (`Option<Int>`), for messages.
    pub(super) text: String,
}

/// One declared tool signature.
#[derive(Debug, Clone)]
pub(super) struct Declared {
    pub(super) name: String,
    pub(super) params: Vec<Param>,
    /// The payload type: `T` of `Result<T, ToolError>`, or the return type itself.
    pub(super) returns: Ty,
    /// The payload type as written, for messages.
    pub(super) returns_text: String,
}

/// The signatures `config.tools` of an `mcp` block declares (entries without a name are
/// skipped; a parameter without a type is `Any`).
pub(super) fn declared(program: &Program, tools: Option<&Value>) -> Vec<Declared> {
    let Some(Value::Array(tools)) = tools else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|tool| {
            let name = tool.get("name")?.as_str()?.to_string();
            let params = tool
                .get("params")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| {
                    let name = p.get("name")?.as_str()?.to_string();
                    let text = p.get("type").and_then(Value::as_str).unwrap_or("Any");
                    Some(Param {
                        name,
                        ty: parse(program, text),
                        text: text.trim().to_string(),
                    })
                })
                .collect();
            let returns = tool
                .get("return_type")
                .and_then(Value::as_str)
                .unwrap_or("Any");
            let returns = payload(returns);
            Some(Declared {
                name,
                params,
                returns: parse(program, returns),
                returns_text: returns.trim().to_string(),
            })
        })
        .collect()
}

/// `T` of `Result<T, E>`; any other type as it is.
pub(super) fn payload(text: &str) -> &str {
    let text = text.trim();
    match generic(text, "Result").and_then(|inner| split_top(inner).map(|(t, _)| t)) {
        Some(t) => t.trim(),
        None => text,
    }
}

/// The inside of `Name<…>`.
fn generic<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    text.strip_prefix(name)?
        .trim_start()
        .strip_prefix('<')?
        .strip_suffix('>')
}

/// `A, B` split at its first top-level comma.
fn split_top(text: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, c) in text.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            '>' | ')' | ']' => depth -= 1,
            ',' if depth == 0 => return Some((&text[..i], &text[i + 1..])),
            _ => {}
        }
    }
    None
}

/// A declared type as written by the compilers (`Int`, `Option<Int>`, `Array<String>`,
/// `Map<String, Int>`, a struct's name, …).
pub(super) fn parse(program: &Program, text: &str) -> Ty {
    let text = text.trim();
    if let Some(inner) = generic(text, "Option") {
        return Ty::Option(Box::new(parse(program, inner)));
    }
    let head = text.split('<').next().unwrap_or(text).trim();
    match head {
        "Int" => Ty::Int,
        "Float" => Ty::Float,
        "String" => Ty::Str,
        "Bool" => Ty::Bool,
        "Array" | "List" => Ty::Array,
        "Map" | "HashMap" => Ty::Object,
        _ if text.starts_with('[') => Ty::Array,
        _ => match program.type_id(head) {
            Some(id) if is_struct(program, id) => Ty::Object,
            _ => Ty::Any,
        },
    }
}

fn is_struct(program: &Program, id: u32) -> bool {
    program
        .types
        .get(id as usize)
        .is_some_and(|t| matches!(t.kind, TypeDefKind::Struct { .. }))
}

/// `name` with every character that cannot appear in a Concerto identifier replaced
/// with `_`.
pub(super) fn identifier_form(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Which server tool a name the program uses stands for.
#[derive(Debug)]
pub(super) enum Resolved<'t> {
    /// The index of the server tool.
    Found(usize),
    Missing,
    /// Several server tools have the name in identifier form (their names).
    Ambiguous(Vec<&'t str>),
}

/// The server tool `name` stands for (see the module docs).
pub(super) fn resolve<'t>(tools: &'t [Tool], name: &str) -> Resolved<'t> {
    if let Some(i) = tools.iter().position(|t| t.name == name) {
        return Resolved::Found(i);
    }
    let matches: Vec<usize> = (0..tools.len())
        .filter(|&i| identifier_form(&tools[i].name) == name)
        .collect();
    match matches.as_slice() {
        [] => Resolved::Missing,
        [one] => Resolved::Found(*one),
        many => Resolved::Ambiguous(many.iter().map(|&i| tools[i].name.as_ref()).collect()),
    }
}

/// The JSON types a schema allows (`type`, or the union of `anyOf` / `oneOf` branches);
/// `None` when it does not say.
fn schema_types(schema: &Value) -> Option<Vec<String>> {
    match schema.get("type") {
        Some(Value::String(t)) => return Some(vec![t.clone()]),
        Some(Value::Array(ts)) => {
            return Some(
                ts.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
            );
        }
        _ => {}
    }
    let branches = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))?
        .as_array()?;
    let mut all = Vec::new();
    for branch in branches {
        all.extend(schema_types(branch)?);
    }
    Some(all)
}

/// Whether a value of declared type `ty` fits a schema allowing `types`.
fn compatible(ty: &Ty, types: &[String]) -> bool {
    let has = |t: &str| types.iter().any(|s| s == t);
    match ty {
        Ty::Any => true,
        Ty::Option(inner) => compatible(inner, types),
        Ty::Int => has("integer") || has("number"),
        Ty::Float => has("number"),
        Ty::Str => has("string"),
        Ty::Bool => has("boolean"),
        Ty::Array => has("array"),
        Ty::Object => has("object"),
    }
}

fn types_text(types: &[String]) -> String {
    if types.is_empty() {
        "no type".to_string()
    } else {
        types.join(" or ")
    }
}

/// How `decl` disagrees with the server's `tool`: one sentence per mismatch, each naming
/// the parameter (or the return type) and both types; empty when they agree.
pub(super) fn check(decl: &Declared, tool: &Tool) -> Vec<String> {
    let mut problems = Vec::new();
    let schema = &tool.input_schema;
    let empty = serde_json::Map::new();
    let properties = schema
        .get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for param in &decl.params {
        let Some(prop) = properties.get(&param.name) else {
            let known: Vec<String> = properties.keys().map(|k| format!("`{k}`")).collect();
            problems.push(format!(
                "parameter `{}` is declared `{}` but the server's inputSchema has no such parameter (it has {})",
                param.name,
                param.text,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ));
            continue;
        };
        let types = schema_types(prop);
        if let Some(types) = &types
            && !compatible(&param.ty, types)
        {
            problems.push(format!(
                "parameter `{}` is declared `{}` but the server's inputSchema says `{}`",
                param.name,
                param.text,
                types_text(types)
            ));
        }
        if matches!(param.ty, Ty::Option(_)) && required.contains(&param.name.as_str()) {
            problems.push(format!(
                "parameter `{}` is declared `{}` (optional) but the server's inputSchema requires it (`{}`)",
                param.name,
                param.text,
                types.as_deref().map_or_else(|| "any type".to_string(), types_text)
            ));
        }
    }
    for name in required {
        if !decl.params.iter().any(|p| p.name == name) {
            let types = properties
                .get(name)
                .and_then(schema_types)
                .map_or_else(|| "any type".to_string(), |t| types_text(&t));
            problems.push(format!(
                "the server's inputSchema requires parameter `{name}` (`{types}`), which the declaration lacks"
            ));
        }
    }
    if let Some(output) = &tool.output_schema
        && let Some(types) = schema_types(&Value::Object((**output).clone()))
        && !compatible(&decl.returns, &types)
    {
        problems.push(format!(
            "the return type is declared `{}` but the server's outputSchema says `{}`",
            decl.returns_text,
            types_text(&types)
        ));
    }
    problems
}

/// The successful result of a call as a value of declared type `ty`: structured content
/// for an object, array or `Any` (text parsed as JSON when there is none, `Any` then takes
/// the text), text for `String`, text that parses exactly for `Int`, `Float` and `Bool`
/// (or structured content that is such a value). `Option<T>` is `null` for a result with
/// neither content nor structured content, else `T`. `Err` says why it does not convert.
pub(super) fn convert(result: &CallToolResult, ty: &Ty, declared: &str) -> Result<Value, String> {
    let structured = result.structured_content.as_ref().filter(|v| !v.is_null());
    let has_text = !result.content.is_empty();
    let text = || super::content_text(&result.content);
    let not = |what: String| {
        Err(format!(
            "the result is {what}, which does not convert to the declared `{declared}`"
        ))
    };
    match ty {
        Ty::Any => Ok(structured.cloned().unwrap_or_else(|| Value::String(text()))),
        Ty::Option(inner) => {
            if structured.is_none() && !has_text {
                Ok(Value::Null)
            } else {
                convert(result, inner, declared)
            }
        }
        Ty::Str => match structured {
            Some(Value::String(s)) => Ok(Value::String(s.clone())),
            _ if has_text => Ok(Value::String(text())),
            Some(other) => not(format!("structured content ({}) without text", kind(other))),
            None => not("empty".to_string()),
        },
        Ty::Int => match structured {
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Value::from(i)),
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Value::from(f as i64)),
                    _ => not(format!("the number {n}")),
                },
            },
            _ => {
                let text = text();
                match text.parse::<i64>() {
                    Ok(i) if has_text => Ok(Value::from(i)),
                    _ => not(described(&text, has_text)),
                }
            }
        },
        Ty::Float => match structured {
            Some(Value::Number(n)) => match n.as_f64().and_then(serde_json::Number::from_f64) {
                Some(f) => Ok(Value::Number(f)),
                None => not(format!("the number {n}")),
            },
            _ => {
                let text = text();
                match text.parse::<f64>().ok().filter(|f| f.is_finite()) {
                    Some(f) if has_text => {
                        Ok(serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number))
                    }
                    _ => not(described(&text, has_text)),
                }
            }
        },
        Ty::Bool => match structured {
            Some(Value::Bool(b)) => Ok(Value::Bool(*b)),
            _ => {
                let text = text();
                match text.as_str() {
                    "true" if has_text => Ok(Value::Bool(true)),
                    "false" if has_text => Ok(Value::Bool(false)),
                    _ => not(described(&text, has_text)),
                }
            }
        },
        Ty::Array | Ty::Object => {
            let wanted = |v: &Value| {
                if *ty == Ty::Array {
                    v.is_array()
                } else {
                    v.is_object()
                }
            };
            if let Some(value) = structured {
                return if wanted(value) {
                    Ok(value.clone())
                } else {
                    not(format!("structured content that is {}", kind(value)))
                };
            }
            let text = text();
            match serde_json::from_str::<Value>(&text) {
                Ok(value) if wanted(&value) => Ok(value),
                _ => not(described(&text, has_text)),
            }
        }
    }
}

/// `the text "…"` (shortened) or `empty`.
fn described(text: &str, has_text: bool) -> String {
    if !has_text {
        return "empty".to_string();
    }
    const MAX: usize = 80;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("the text {:?}…", &text[..cut]),
        None => format!("the text {text:?}"),
    }
}

fn kind(value: &Value) -> &'static str {
    super::config::kind(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(name: &str) -> Tool {
        Tool::new(
            name.to_string(),
            "",
            std::sync::Arc::new(serde_json::Map::new()),
        )
    }

    #[test]
    fn exact_names_win_then_the_identifier_form_matches_once() {
        let tools = vec![tool("get-sum"), tool("get_sum"), tool("a-b"), tool("a.b")];
        assert!(matches!(resolve(&tools, "get_sum"), Resolved::Found(1)));
        assert!(matches!(
            resolve(&tools[..1], "get_sum"),
            Resolved::Found(0)
        ));
        assert!(
            matches!(resolve(&tools, "a_b"), Resolved::Ambiguous(ref names) if names == &["a-b", "a.b"])
        );
        assert!(matches!(
            resolve(&tools, "get_tiny_image"),
            Resolved::Missing
        ));
        assert_eq!(identifier_form("héllo wörld!"), "h_llo_w_rld_");
    }

    /// `check` of `params` (name, type) and `returns` against a tool with `input` and
    /// `output` schemas, in a program with a struct `Point` and an enum `Colour`.
    fn problems(
        params: &[(&str, &str)],
        returns: &str,
        input: Value,
        output: Option<Value>,
    ) -> Vec<String> {
        let program = crate::test_program(serde_json::json!({"types": [
            {"name": "Point", "kind": "struct", "fields": [{"name": "x", "type": "Int", "required": true}]},
            {"name": "Colour", "kind": "enum", "variants": [{"name": "Red"}]}
        ]}));
        let tools = serde_json::json!([{"name": "t",
            "params": params.iter().map(|(n, t)| serde_json::json!({"name": n, "type": t})).collect::<Vec<_>>(),
            "return_type": returns}]);
        let decl = &declared(&program, Some(&tools))[0];
        let mut tool = Tool::new(
            "t",
            "",
            std::sync::Arc::new(input.as_object().cloned().unwrap_or_default()),
        );
        tool.output_schema = output
            .and_then(|o| o.as_object().cloned())
            .map(std::sync::Arc::new);
        check(decl, &tool)
    }

    fn props(properties: Value) -> Value {
        serde_json::json!({"type": "object", "properties": properties})
    }

    #[test]
    fn types_are_compatible_as_the_table_says() {
        let input = props(serde_json::json!({
            "i": {"type": "integer"}, "n": {"type": "number"}, "s": {"type": "string"},
            "b": {"type": "boolean"}, "a": {"type": "array"}, "o": {"type": "object"},
            "u": {}, "either": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "nullable": {"type": ["integer", "null"]}
        }));
        let fine = [
            ("i", "Int"),
            ("n", "Int"),
            ("n", "Float"),
            ("s", "String"),
            ("b", "Bool"),
            ("a", "Array<Int>"),
            ("o", "Map<String, Int>"),
            ("o", "Point"),
            ("u", "Int"),
            ("s", "Any"),
            ("i", "Colour"),
            ("either", "String"),
            ("nullable", "Option<Int>"),
            ("s", "Option<String>"),
        ];
        for (name, ty) in fine {
            let p = problems(&[(name, ty)], "Any", input.clone(), None);
            assert!(p.is_empty(), "{name}: {ty}: {p:?}");
        }
        let wrong = [
            ("i", "Float", "integer"),
            ("n", "String", "number"),
            ("s", "Int", "string"),
            ("b", "String", "boolean"),
            ("a", "Map<String, Int>", "array"),
            ("o", "Array<Point>", "object"),
            ("o", "Int", "object"),
            ("either", "Int", "string or null"),
        ];
        for (name, ty, schema) in wrong {
            let p = problems(&[(name, ty)], "Any", input.clone(), None);
            assert_eq!(
                p,
                [format!(
                    "parameter `{name}` is declared `{ty}` but the server's inputSchema says `{schema}`"
                )]
            );
        }
    }

    #[test]
    fn return_types_are_checked_only_against_an_output_schema() {
        let input = props(serde_json::json!({}));
        let object = Some(props(serde_json::json!({"x": {"type": "integer"}})));
        assert!(problems(&[], "Result<Int, ToolError>", input.clone(), None).is_empty());
        for fine in [
            "Point",
            "Result<Map<String, Any>, ToolError>",
            "Any",
            "Option<Point>",
        ] {
            assert!(
                problems(&[], fine, input.clone(), object.clone()).is_empty(),
                "{fine}"
            );
        }
        // Only the top level: a struct's fields are not compared with the properties.
        let other_fields = Some(props(serde_json::json!({"y": {"type": "string"}})));
        assert!(problems(&[], "Point", input.clone(), other_fields).is_empty());
        assert_eq!(
            problems(&[], "Result<String, ToolError>", input, object),
            ["the return type is declared `String` but the server's outputSchema says `object`"]
        );
    }

    #[test]
    fn payload_types_come_out_of_results() {
        assert_eq!(payload("Result<Int, ToolError>"), "Int");
        assert_eq!(
            payload("Result<Map<String, Int>, ToolError>"),
            "Map<String, Int>"
        );
        assert_eq!(payload("Option<Int>"), "Option<Int>");
        assert_eq!(payload(""), "");
    }
}
