//! End-to-end tests of the schema crate on programs loaded from hand-written IR.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use concerto_schema::normalize::JSON_TYPES;
use concerto_schema::{
    JsonSchemaValidator, Mode, is_strict_compatible, normalize, normalize_for_mode,
    to_provider_schema,
};
use concerto_vm::host::{HostErrorKind, Program, SchemaCheck, SchemaId, SchemaValidator};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// Building programs

fn program_with(schemas: Value, types: Value) -> Program {
    let ir = json!({
        "version": "0.1.0",
        "module": "m",
        "source_file": "m.conc",
        "constants": [{"index": 0, "type": "nil", "value": null}],
        "types": types,
        "schemas": schemas,
        "functions": [{
            "name": "main", "module": "m", "visibility": "private", "params": [],
            "return_type": "nil", "is_async": false, "locals": [],
            "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]
        }],
        "metadata": {
            "compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
            "debug_info": true, "entry_point": "main"
        }
    });
    concerto_ir::load_str(&ir.to_string()).unwrap()
}

fn program(schemas: Value) -> Program {
    program_with(schemas, json!([]))
}

fn schema(name: &str, props: Value, required: &[&str]) -> Value {
    json!({
        "name": name,
        "validation_mode": "strict",
        "json_schema": {"type": "object", "properties": props, "required": required}
    })
}

fn schema_mode(name: &str, props: Value, required: &[&str], mode: &str) -> Value {
    let mut s = schema(name, props, required);
    s["validation_mode"] = json!(mode);
    s
}

fn index_of(program: &Program, name: &str) -> u32 {
    program.schemas.iter().position(|s| s.name == name).unwrap() as u32
}

fn check(v: &JsonSchemaValidator, program: &Program, name: &str, reply: &str) -> SchemaCheck {
    v.check(program, SchemaId(index_of(program, name)), reply)
        .unwrap()
}

fn valid(v: &JsonSchemaValidator, program: &Program, name: &str, reply: &str) -> Value {
    match check(v, program, name, reply) {
        SchemaCheck::Valid(value) => value,
        SchemaCheck::Invalid(errors) => panic!("expected valid, got {errors:?}"),
    }
}

fn invalid(v: &JsonSchemaValidator, program: &Program, name: &str, reply: &str) -> Vec<String> {
    match check(v, program, name, reply) {
        SchemaCheck::Valid(value) => panic!("expected invalid, got {value}"),
        SchemaCheck::Invalid(errors) => errors,
    }
}

/// What `concertoc` wrote for a program with nested, recursive, optional, map, enum and
/// struct-typed fields (properties in the compiler's alphabetical order).
fn compiler_program() -> Program {
    program_with(
        json!([
            {"name": "Address", "validation_mode": "strict", "json_schema": {
                "properties": {"city": {"type": "String"}, "street": {"type": "String"}},
                "required": ["street"], "type": "object"}},
            {"name": "Node", "validation_mode": "strict", "json_schema": {
                "properties": {"children": {"type": "Array<Node>"}, "name": {"type": "String"},
                               "parent": {"type": "Option<Node>"}},
                "required": ["name", "children"], "type": "object"}},
            {"name": "Person", "validation_mode": "strict", "json_schema": {
                "properties": {
                    "address": {"type": "Address"}, "age": {"type": "Int"},
                    "counts": {"type": "Map<String, Int>"},
                    "label": {"enum": ["a", "b"], "type": "string"},
                    "maybe": {"type": "Option<Int>"}, "meta": {"type": "Map<String, Any>"},
                    "name": {"type": "String"}, "nothing": {"type": "Nil"},
                    "ok": {"type": "Bool"}, "p": {"type": "Point"},
                    "prev": {"type": "Array<Option<Address>>"}, "score": {"type": "Float"}},
                "required": ["name", "age", "ok", "address", "prev", "meta", "counts", "label",
                             "maybe", "p", "nothing"],
                "type": "object"}}
        ]),
        json!([{"name": "Point", "kind": "struct", "fields": [
            {"name": "x", "type": "Int", "required": true},
            {"name": "y", "type": "Int", "required": true}]}]),
    )
}

// ---------------------------------------------------------------------------------------
// Normalisation (validation form)

#[test]
fn normalises_scalars() {
    let p = program(json!([schema(
        "S",
        json!({
            "s": {"type": "String"}, "i": {"type": "Int"}, "f": {"type": "Float"},
            "b": {"type": "Bool"}, "n": {"type": "Nil"}, "a": {"type": "Any"}
        }),
        &["s", "i", "f", "b", "n", "a"]
    )]));
    assert_eq!(
        normalize(&p, 0).unwrap(),
        json!({
            "type": "object",
            "properties": {
                "s": {"type": "string"}, "i": {"type": "integer"}, "f": {"type": "number"},
                "b": {"type": "boolean"}, "n": {"type": "null"}, "a": {}
            },
            "required": ["s", "i", "f", "b", "n", "a"]
        })
    );
}

#[test]
fn normalises_generics_options_and_enums() {
    let p = program(json!([
        schema(
            "Address",
            json!({"street": {"type": "String"}}),
            &["street"]
        ),
        schema(
            "S",
            json!({
                "tags": {"type": "Array<String>"},
                "grid": {"type": "Array<Array<Int>>"},
                "anys": {"type": "Array<Any>"},
                "counts": {"type": "Map<String, Int>"},
                "meta": {"type": "Map<String,Any>"},
                "maybe": {"type": "Option<Int>"},
                "olds": {"type": "Array<Option<Address>>"},
                "note": {"type": "String"},
                "label": {"type": "string", "enum": ["yes", "no"]},
                "opt_label": {"type": "string", "enum": ["x"]}
            }),
            &[
                "tags", "grid", "anys", "counts", "meta", "maybe", "olds", "label"
            ]
        )
    ]));
    let n = normalize(&p, 1).unwrap();
    let address = json!({
        "type": "object",
        "properties": {"street": {"type": "string"}},
        "required": ["street"]
    });
    assert_eq!(
        n,
        json!({
            "type": "object",
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "grid": {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                "anys": {"type": "array"},
                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                "meta": {"type": "object"},
                "maybe": {"type": ["integer", "null"]},
                "olds": {"type": "array", "items": {"anyOf": [address, {"type": "null"}]}},
                "note": {"type": ["string", "null"]},
                "label": {"type": "string", "enum": ["yes", "no"]},
                "opt_label": {"type": ["string", "null"], "enum": ["x", null]}
            },
            // `maybe` is Option<…> and `note` / `opt_label` are not listed: not required.
            "required": ["tags", "grid", "anys", "counts", "meta", "olds", "label"]
        })
    );
}

#[test]
fn inlines_nested_schemas_and_resolves_structs() {
    let p = compiler_program();
    let n = normalize(&p, index_of(&p, "Person")).unwrap();
    assert_eq!(
        n["properties"]["address"],
        json!({
            "type": "object",
            "properties": {"city": {"type": ["string", "null"]}, "street": {"type": "string"}},
            "required": ["street"]
        })
    );
    assert_eq!(
        n["properties"]["p"],
        json!({"type": "object", "properties": {"x": {}, "y": {}}})
    );
    assert_eq!(n["properties"]["nothing"], json!({"type": "null"}));
    assert!(n.get("$defs").is_none(), "nothing recursive: {n}");
    let required: Vec<&str> = n["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(!required.contains(&"maybe"));
    assert!(!required.contains(&"score"));
    assert!(required.contains(&"address"));
}

#[test]
fn self_recursive_schema_uses_root_ref() {
    let p = compiler_program();
    let node = index_of(&p, "Node");
    let n = normalize(&p, node).unwrap();
    assert_eq!(
        n["properties"]["children"],
        json!({"type": "array", "items": {"$ref": "#"}})
    );
    assert_eq!(
        n["properties"]["parent"],
        json!({"anyOf": [{"$ref": "#"}, {"type": "null"}]})
    );
    // The recursive schema validates recursive data at any depth.
    let v = JsonSchemaValidator::new();
    let ok = r#"{"name": "a", "children": [{"name": "b", "children": [
        {"name": "c", "children": [], "parent": null}]}]}"#;
    valid(&v, &p, "Node", ok);
    let bad =
        r#"{"name": "a", "children": [{"name": "b", "children": [{"name": 3, "children": []}]}]}"#;
    assert_eq!(
        invalid(&v, &p, "Node", bad),
        vec!["3 is not of type \"string\" at /children/0/children/0/name".to_string()]
    );
}

#[test]
fn mutually_recursive_schemas_use_defs() {
    let p = program(json!([
        schema("Root", json!({"a": {"type": "A"}}), &["a"]),
        schema(
            "A",
            json!({"b": {"type": "Option<B>"}, "x": {"type": "Int"}}),
            &["x"]
        ),
        schema("B", json!({"a": {"type": "Array<A>"}}), &["a"]),
    ]));
    let n = normalize(&p, 0).unwrap();
    // Root → A → B → A: the second A is a reference into $defs.
    let b = &n["properties"]["a"]["properties"]["b"]["anyOf"][0];
    assert_eq!(b["properties"]["a"]["items"], json!({"$ref": "#/$defs/A"}));
    assert_eq!(
        n["$defs"]["A"]["properties"]["x"],
        json!({"type": "integer"})
    );
    // Inside the definition of A, its own recursion is a reference as well.
    assert_eq!(
        n["$defs"]["A"]["properties"]["b"]["anyOf"][0]["properties"]["a"]["items"],
        json!({"$ref": "#/$defs/A"})
    );
    let v = JsonSchemaValidator::new();
    valid(
        &v,
        &p,
        "Root",
        r#"{"a": {"x": 1, "b": {"a": [{"x": 2, "b": {"a": []}}]}}}"#,
    );
    let errors = invalid(
        &v,
        &p,
        "Root",
        r#"{"a": {"x": 1, "b": {"a": [{"x": "2"}]}}}"#,
    );
    assert_eq!(
        errors,
        vec!["\"2\" is not of type \"integer\" at /a/b/a/0/x"]
    );
}

#[test]
fn exponential_and_deep_chains_stay_bounded() {
    // S0 has two fields of S1, S1 two of S2, …: naive inlining would be 2^40 nodes.
    let n = 40;
    let schemas: Vec<Value> = (0..n)
        .map(|i| {
            if i + 1 < n {
                let next = format!("S{}", i + 1);
                schema(
                    &format!("S{i}"),
                    json!({"l": {"type": next}, "r": {"type": format!("Option<{next}>")}}),
                    &["l"],
                )
            } else {
                schema(
                    &format!("S{i}"),
                    json!({"leaf": {"type": "Int"}}),
                    &["leaf"],
                )
            }
        })
        .collect();
    let p = program(Value::Array(schemas));
    let norm = normalize(&p, 0).unwrap();
    let text = norm.to_string();
    assert!(text.len() < 2_000_000, "normalised size {}", text.len());
    assert!(norm.get("$defs").is_some());
    let provider = to_provider_schema(&p, 0).unwrap();
    assert!(provider.to_string().len() < 2_000_000);
    // Still a working validator.
    let v = JsonSchemaValidator::new();
    let mut instance = json!({"leaf": 1});
    for _ in 0..(n - 1) {
        instance = json!({"l": instance});
    }
    valid(&v, &p, "S0", &instance.to_string());
}

#[test]
fn garbage_schemas_degrade_without_panicking() {
    let p = program(json!([
        {"name": "NotObject", "json_schema": "Int", "validation_mode": "strict"},
        {"name": "Number", "json_schema": 42},
        {"name": "Null", "json_schema": null},
        {"name": "Arr", "json_schema": [1, 2]},
        {"name": "NoProps", "json_schema": {"type": "object"}},
        {"name": "PropsNotObject", "json_schema": {"properties": [1], "required": "x"}},
        {"name": "Weird", "json_schema": {
            "type": "object",
            "properties": {
                "num_type": {"type": 42},
                "null_type": {"type": null},
                "arr_type": {"type": ["String"]},
                "no_type": {},
                "scalar": 5,
                "bare": "Int",
                "unclosed": {"type": "Array<"},
                "angle": {"type": "<<>>"},
                "map1": {"type": "Map<String>"},
                "empty": {"type": ""},
                "unknown": {"type": "Mystery"},
                "generic": {"type": "Result<Int, String>"},
                "empty_enum": {"type": "string", "enum": []},
                "enum_not_array": {"type": "string", "enum": "abc"},
                "deep": {"type": format!("{}Int{}", "Array<".repeat(500), ">".repeat(500))},
                "inline": {"type": "object", "properties": {"q": {"type": "Int"}}, "required": ["q"]},
                "inline_arr": {"type": "array", "items": {"type": "Float"}}
            },
            "required": ["num_type", 3, null, "bare", "inline", "inline_arr", "not_a_property"]
        }},
    ]));
    // Every shape normalises, compiles and checks.
    let v = JsonSchemaValidator::new();
    for (idx, s) in p.schemas.iter().enumerate() {
        let idx = idx as u32;
        let n = normalize(&p, idx).unwrap();
        assert_eq!(n["type"], json!("object"), "{}: {n}", s.name);
        let provider = to_provider_schema(&p, idx).unwrap();
        assert_provider_invariants(&provider);
        let _ = v.check(&p, SchemaId(idx), r#"{"x": 1}"#).unwrap();
    }
    let weird = normalize(&p, index_of(&p, "Weird")).unwrap();
    let props = &weird["properties"];
    for unconstrained in [
        "num_type",
        "null_type",
        "arr_type",
        "no_type",
        "scalar",
        "unclosed",
        "angle",
        "map1",
        "empty",
        "unknown",
        "generic",
        "empty_enum",
        "enum_not_array",
        "deep",
    ] {
        assert_eq!(props[unconstrained], json!({}), "{unconstrained}");
    }
    assert_eq!(props["bare"], json!({"type": "integer"}));
    assert_eq!(
        props["inline"],
        json!({"type": "object", "properties": {"q": {"type": "integer"}}, "required": ["q"]})
    );
    assert_eq!(
        props["inline_arr"],
        json!({"type": "array", "items": {"type": "number"}})
    );
    // `required` keeps only declared properties.
    assert_eq!(
        weird["required"],
        json!(["num_type", "bare", "inline", "inline_arr"])
    );
    // A non-object json_schema is an object with no declared properties.
    let not_object = normalize(&p, index_of(&p, "NotObject")).unwrap();
    assert_eq!(not_object, json!({"type": "object"}));
    valid(&v, &p, "NotObject", r#"{"anything": [1]}"#);
    assert_eq!(
        invalid(&v, &p, "NotObject", "[1]"),
        vec!["[1] is not of type \"object\" at (root)"]
    );
}

#[test]
fn bad_schema_index_is_a_host_error() {
    let p = compiler_program();
    let v = JsonSchemaValidator::new();
    for err in [
        normalize(&p, 99).unwrap_err(),
        to_provider_schema(&p, 99).unwrap_err(),
        v.provider_schema(&p, SchemaId(99)).unwrap_err(),
        v.check(&p, SchemaId(99), "{}").unwrap_err(),
    ] {
        assert_eq!(err.kind, HostErrorKind::Failed);
        assert!(
            err.message.contains("schema index 99 is out of range"),
            "{err}"
        );
        assert!(err.message.contains("3 schemas"), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// Strict mode and error text

fn strict_program() -> Program {
    program(json!([
        schema(
            "StrictOutput",
            json!({"name": {"type": "String"}, "value": {"type": "Int"}, "note": {"type": "String"}}),
            &["name", "value"]
        ),
        schema(
            "Order",
            json!({"items": {"type": "Array<Item>"}, "score": {"type": "Float"}}),
            &["items", "score"]
        ),
        schema(
            "Item",
            json!({"name": {"type": "String"}, "qty": {"type": "Int"}}),
            &["name", "qty"]
        ),
    ]))
}

#[test]
fn strict_accepts_and_keeps_extra_fields() {
    let p = strict_program();
    let v = JsonSchemaValidator::new();
    let out = valid(
        &v,
        &p,
        "StrictOutput",
        r#"{"name": "test", "value": 42, "extra": true}"#,
    );
    // Extra kept, missing optional filled with null.
    assert_eq!(
        out,
        json!({"name": "test", "value": 42, "extra": true, "note": null})
    );
    let out = valid(
        &v,
        &p,
        "StrictOutput",
        r#"{"name": "t", "value": 1, "note": null}"#,
    );
    assert_eq!(out["note"], json!(null));
}

#[test]
fn strict_error_messages_name_the_path() {
    let p = strict_program();
    let v = JsonSchemaValidator::new();
    assert_eq!(
        invalid(&v, &p, "StrictOutput", r#"{"name": "test"}"#),
        vec!["\"value\" is a required property at (root)"]
    );
    assert_eq!(
        invalid(
            &v,
            &p,
            "StrictOutput",
            r#"{"name": "test", "value": "not_a_number"}"#
        ),
        vec!["\"not_a_number\" is not of type \"integer\" at /value"]
    );
    assert_eq!(
        invalid(&v, &p, "StrictOutput", r#"{"name": "test", "value": 1.5}"#),
        vec!["1.5 is not of type \"integer\" at /value"]
    );
    let mut errors = invalid(
        &v,
        &p,
        "Order",
        r#"{"score": "high", "items": [{"name": 5, "qty": 1}]}"#,
    );
    errors.sort();
    assert_eq!(
        errors,
        vec![
            "\"high\" is not of type \"number\" at /score",
            "5 is not of type \"string\" at /items/0/name",
        ]
    );
    // Top-level non-objects are validation errors.
    for reply in ["[1, 2]", "42", "\"text\"", "null", "true"] {
        let errors = invalid(&v, &p, "StrictOutput", reply);
        assert_eq!(errors.len(), 1, "{reply}: {errors:?}");
        assert!(
            errors[0].ends_with("is not of type \"object\" at (root)"),
            "{errors:?}"
        );
    }
}

#[test]
fn unparseable_reply_gives_one_invalid_json_error() {
    let p = strict_program();
    let v = JsonSchemaValidator::new();
    let errors = invalid(&v, &p, "StrictOutput", "Sorry, I can't do that.");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("invalid JSON: "), "{errors:?}");
    let errors = invalid(&v, &p, "StrictOutput", "");
    assert_eq!(errors, vec!["invalid JSON: the reply is empty"]);
}

#[test]
fn wrapped_replies_are_extracted() {
    let p = strict_program();
    let v = JsonSchemaValidator::new();
    let fenced = "Here you go:\n```json\n{\"name\": \"a\", \"value\": 1}\n```";
    assert_eq!(valid(&v, &p, "StrictOutput", fenced)["value"], json!(1));
    let prose = "Result: {\"name\": \"a {b}\", \"value\": 2}. Hope it helps!";
    assert_eq!(valid(&v, &p, "StrictOutput", prose)["name"], json!("a {b}"));
}

#[test]
fn many_errors_are_capped() {
    let props: serde_json::Map<String, Value> = (0..30)
        .map(|i| (format!("f{i:02}"), json!({"type": "Int"})))
        .collect();
    let names: Vec<String> = props.keys().cloned().collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let p = program(json!([schema("Many", Value::Object(props), &refs)]));
    let v = JsonSchemaValidator::new();
    let reply: serde_json::Map<String, Value> =
        names.iter().map(|n| (n.clone(), json!("x"))).collect();
    let errors = invalid(&v, &p, "Many", &Value::Object(reply).to_string());
    assert_eq!(errors.len(), concerto_schema::MAX_ERRORS + 1);
    assert_eq!(errors.last().unwrap(), "10 more errors not shown");
}

// ---------------------------------------------------------------------------------------
// Modes

#[test]
fn mode_parsing() {
    assert_eq!(Mode::from_ir("strict"), Mode::Strict);
    assert_eq!(Mode::from_ir(""), Mode::Strict);
    assert_eq!(Mode::from_ir("Partial"), Mode::Partial);
    assert_eq!(Mode::from_ir(" coerce "), Mode::Coerce);
    assert_eq!(Mode::from_ir("lenient"), Mode::Strict);
    assert_eq!(Mode::default(), Mode::Strict);
    assert_eq!(Mode::Coerce.to_string(), "coerce");
}

fn partial_program(mode: &str) -> Program {
    program(json!([
        schema_mode(
            "PartialOutput",
            json!({"name": {"type": "String"}, "value": {"type": "Int"},
                   "description": {"type": "String"}, "addr": {"type": "Addr"}}),
            &["name", "value", "description", "addr"],
            mode
        ),
        schema("Addr", json!({"city": {"type": "String"}}), &["city"]),
    ]))
}

#[test]
fn partial_mode_allows_missing_fields_and_fills_them() {
    let p = partial_program("partial");
    let v = JsonSchemaValidator::new();
    assert_eq!(v.mode_of(&p, 0).unwrap(), Mode::Partial);
    assert_eq!(
        valid(&v, &p, "PartialOutput", r#"{"name": "test"}"#),
        json!({"name": "test", "value": null, "description": null, "addr": null})
    );
    assert_eq!(
        valid(&v, &p, "PartialOutput", r#"{"value": null, "x": 1}"#),
        json!({"value": null, "x": 1, "name": null, "description": null, "addr": null})
    );
    // Present fields are still type-checked, nested schemas keep their own requirements.
    assert_eq!(
        invalid(&v, &p, "PartialOutput", r#"{"value": "many"}"#),
        vec!["\"many\" is not of types \"null\", \"integer\" at /value"]
    );
    let errors = invalid(&v, &p, "PartialOutput", r#"{"addr": {}}"#);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].ends_with("at /addr"), "{errors:?}");
    // The same schema in strict mode rejects the partial reply.
    let strict = partial_program("strict");
    let errors = invalid(&v, &strict, "PartialOutput", r#"{"name": "test"}"#);
    assert_eq!(errors.len(), 3, "{errors:?}");
    // The validation form of partial mode.
    let n = normalize_for_mode(&p, 0, Mode::Partial).unwrap();
    assert!(n.get("required").is_none(), "{n}");
    assert_eq!(n["properties"]["name"], json!({"type": ["string", "null"]}));
}

#[test]
fn partial_mode_of_a_recursive_schema_keeps_nested_levels_strict() {
    let p = program(json!([schema_mode(
        "Tree",
        json!({"v": {"type": "Int"}, "kids": {"type": "Array<Tree>"}}),
        &["v", "kids"],
        "partial"
    )]));
    let v = JsonSchemaValidator::new();
    assert_eq!(
        valid(&v, &p, "Tree", r#"{"v": 1}"#),
        json!({"v": 1, "kids": null})
    );
    let errors = invalid(&v, &p, "Tree", r#"{"kids": [{"v": 2}]}"#);
    assert_eq!(errors, vec!["\"kids\" is a required property at /kids/0"]);
}

#[test]
fn with_mode_overrides_the_ir() {
    let p = partial_program("strict");
    let v = JsonSchemaValidator::new().with_mode("PartialOutput", Mode::Partial);
    assert_eq!(v.mode_of(&p, 0).unwrap(), Mode::Partial);
    valid(&v, &p, "PartialOutput", "{}");
    let back = JsonSchemaValidator::new().with_mode("PartialOutput", Mode::Strict);
    invalid(&back, &partial_program("partial"), "PartialOutput", "{}");
}

fn coerce_program() -> Program {
    program(json!([
        schema_mode(
            "CoercedOutput",
            json!({
                "count": {"type": "Int"}, "ratio": {"type": "Float"}, "active": {"type": "Bool"},
                "label": {"type": "String"}, "maybe": {"type": "Option<Int>"},
                "scores": {"type": "Array<Float>"}, "inner": {"type": "Inner"},
                "by_name": {"type": "Map<String, Int>"},
                "kind": {"type": "string", "enum": ["1", "2"]}
            }),
            &["count", "ratio", "active"],
            "coerce"
        ),
        schema(
            "Inner",
            json!({"flag": {"type": "Bool"}, "n": {"type": "Int"}}),
            &["flag"]
        ),
    ]))
}

#[test]
fn coerce_mode_converts_unambiguous_values() {
    let p = coerce_program();
    let v = JsonSchemaValidator::new();
    let out = valid(
        &v,
        &p,
        "CoercedOutput",
        r#"{"count": "42", "ratio": "2.75", "active": "TRUE", "label": 7, "maybe": "5",
            "scores": ["1.5", 2, "3"], "inner": {"flag": "false", "n": 2.0},
            "by_name": {"a": "1", "b": 2.0}, "kind": 2, "extra": "7"}"#,
    );
    assert_eq!(
        out,
        json!({
            "count": 42, "ratio": 2.75, "active": true, "label": "7", "maybe": 5,
            "scores": [1.5, 2, 3], "inner": {"flag": false, "n": 2},
            "by_name": {"a": 1, "b": 2}, "kind": "2", "extra": "7"
        })
    );
    let out = valid(
        &v,
        &p,
        "CoercedOutput",
        r#"{"count": 3.0, "ratio": 3, "active": false}"#,
    );
    assert_eq!(out["count"], json!(3));
    assert_eq!(out["ratio"], json!(3));
    assert_eq!(out["maybe"], json!(null));
}

#[test]
fn coerce_mode_reports_what_cannot_be_coerced() {
    let p = coerce_program();
    let v = JsonSchemaValidator::new();
    assert_eq!(
        invalid(
            &v,
            &p,
            "CoercedOutput",
            r#"{"count": "not_a_number", "ratio": 1, "active": "yes"}"#
        ),
        vec![
            "\"not_a_number\" is not of type \"integer\" at /count",
            "\"yes\" is not of type \"boolean\" at /active",
        ]
    );
    assert_eq!(
        invalid(
            &v,
            &p,
            "CoercedOutput",
            r#"{"count": 2.5, "ratio": 1, "active": true}"#
        ),
        vec!["2.5 is not of type \"integer\" at /count"]
    );
    // Strict mode does not coerce.
    let strict = JsonSchemaValidator::new().with_mode("CoercedOutput", Mode::Strict);
    let errors = invalid(
        &strict,
        &p,
        "CoercedOutput",
        r#"{"count": "42", "ratio": 1, "active": true}"#,
    );
    assert_eq!(errors, vec!["\"42\" is not of type \"integer\" at /count"]);
}

// ---------------------------------------------------------------------------------------
// Host validators

#[test]
fn host_validator_passes_and_fails() {
    let p = program(json!([schema(
        "ValidatedOutput",
        json!({"score": {"type": "Float"}, "tags": {"type": "Array<String>"}}),
        &["score", "tags"]
    )]));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let v = JsonSchemaValidator::new().with_validator("ValidatedOutput", move |out| {
        counter.fetch_add(1, Ordering::SeqCst);
        let score = out["score"].as_f64().unwrap_or(-1.0);
        if !(0.0..=1.0).contains(&score) {
            Err("Score must be between 0.0 and 1.0".into())
        } else if out["tags"].as_array().is_none_or(Vec::is_empty) {
            Err("Must have at least one tag".into())
        } else {
            Ok(())
        }
    });
    valid(
        &v,
        &p,
        "ValidatedOutput",
        r#"{"score": 0.5, "tags": ["a"]}"#,
    );
    assert_eq!(
        invalid(
            &v,
            &p,
            "ValidatedOutput",
            r#"{"score": 1.5, "tags": ["a"]}"#
        ),
        vec!["custom validator of `ValidatedOutput`: Score must be between 0.0 and 1.0 at (root)"]
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Not run when the structure is already wrong.
    invalid(&v, &p, "ValidatedOutput", r#"{"score": "x", "tags": []}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Only for its own schema.
    let other = program(json!([schema(
        "Other",
        json!({"score": {"type": "Float"}}),
        &[]
    )]));
    valid(&v, &other, "Other", r#"{"score": 9}"#);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn several_host_validators_and_a_panicking_one() {
    let p = program(json!([schema("S", json!({"n": {"type": "Int"}}), &["n"])]));
    let v = JsonSchemaValidator::new()
        .with_validator("S", |out| {
            if out["n"] == json!(0) {
                Err("zero".into())
            } else {
                Ok(())
            }
        })
        .with_validator("S", |out| {
            if out["n"] == json!(13) {
                panic!("unlucky");
            }
            Ok(())
        });
    valid(&v, &p, "S", r#"{"n": 1}"#);
    assert_eq!(
        invalid(&v, &p, "S", r#"{"n": 0}"#),
        vec!["custom validator 1 of `S`: zero at (root)"]
    );
    assert_eq!(
        invalid(&v, &p, "S", r#"{"n": 13}"#),
        vec!["custom validator 2 of `S`: the validator panicked at (root)"]
    );
    let debug = format!("{v:?}");
    assert!(debug.contains("(\"S\", 2)"), "{debug}");
}

// ---------------------------------------------------------------------------------------
// Caching and sharing

#[test]
fn validators_are_compiled_once_and_shared() {
    let p = strict_program();
    let v: Arc<JsonSchemaValidator> = Arc::new(JsonSchemaValidator::new());
    let shared: Arc<dyn SchemaValidator> = v.clone();
    for _ in 0..3 {
        shared
            .check(&p, SchemaId(0), r#"{"name": "a", "value": 1}"#)
            .unwrap();
    }
    assert_eq!(v.cached_validators(), 1);
    // The same schema in another program shares the compiled validator.
    let again = strict_program();
    shared.check(&again, SchemaId(0), "{}").unwrap();
    assert_eq!(v.cached_validators(), 1);
    shared.check(&p, SchemaId(1), "{}").unwrap();
    assert_eq!(v.cached_validators(), 2);
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let shared = Arc::clone(&shared);
            let p = strict_program();
            std::thread::spawn(move || {
                let reply = format!(r#"{{"name": "t{i}", "value": {i}}}"#);
                matches!(
                    shared.check(&p, SchemaId(0), &reply).unwrap(),
                    SchemaCheck::Valid(_)
                )
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
}

// ---------------------------------------------------------------------------------------
// Provider form

/// Walks a provider schema like the shared conformance checker does and asserts OpenAI
/// strict-mode invariants.
fn assert_provider_invariants(schema: &Value) {
    const ALLOWED_KEYS: [&str; 10] = [
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "anyOf",
        "$ref",
        "$defs",
        "description",
    ];
    fn walk(node: &Value, path: &str) {
        let Some(map) = node.as_object() else {
            panic!("{path}: schema node is not an object: {node}");
        };
        for (key, value) in map {
            assert!(
                ALLOWED_KEYS.contains(&key.as_str()),
                "{path}: keyword {key}"
            );
            match key.as_str() {
                "type" => {
                    let types: Vec<&Value> = match value {
                        Value::Array(list) => list.iter().collect(),
                        one => vec![one],
                    };
                    for t in types {
                        let t = t.as_str().unwrap_or("<not a string>");
                        assert!(JSON_TYPES.contains(&t), "{path}: type {t}");
                    }
                }
                "properties" | "$defs" => {
                    for (name, sub) in value.as_object().unwrap() {
                        walk(sub, &format!("{path}/{key}/{name}"));
                    }
                }
                "items" => walk(value, &format!("{path}/items")),
                "additionalProperties" if value != &json!(false) => {
                    walk(value, &format!("{path}/additionalProperties"));
                }
                "anyOf" => {
                    for (i, sub) in value.as_array().unwrap().iter().enumerate() {
                        walk(sub, &format!("{path}/anyOf/{i}"));
                    }
                }
                _ => {}
            }
        }
        if map.get("type") == Some(&json!("object")) {
            match map.get("properties") {
                Some(props) => {
                    // A closed object listing every property in `required`.
                    assert_eq!(
                        map.get("additionalProperties"),
                        Some(&json!(false)),
                        "{path}: object not closed"
                    );
                    let props: Vec<&String> = props.as_object().unwrap().keys().collect();
                    let required: Vec<&str> = map["required"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap())
                        .collect();
                    assert_eq!(props.len(), required.len(), "{path}: required");
                    for p in props {
                        assert!(required.contains(&p.as_str()), "{path}: {p} not required");
                    }
                }
                // A Map: its values' schema, the documented exception.
                None => assert!(
                    map.get("additionalProperties")
                        .is_some_and(Value::is_object),
                    "{path}: object without properties must be a map"
                ),
            }
        }
        if let Some(Value::String(r)) = map.get("$ref") {
            assert!(r == "#" || r.starts_with("#/$defs/"), "{path}: $ref {r}");
        }
    }
    walk(schema, "#");
    assert_eq!(schema["type"], json!("object"), "root must be an object");
    // Every $ref resolves.
    fn refs(node: &Value, out: &mut Vec<String>) {
        match node {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.push(r.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(list) => list.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(schema, &mut found);
    for r in found {
        if let Some(key) = r.strip_prefix("#/$defs/") {
            assert!(schema["$defs"].get(key).is_some(), "dangling {r}");
            assert_ne!(key, "type");
        }
    }
}

#[test]
fn provider_schema_of_the_conformance_case() {
    let p = program(json!([{
        "name": "Verdict",
        "json_schema": {"properties": {"label": {"type": "String"}, "score": {"type": "Float"}},
                        "required": ["label", "score"], "type": "object"},
        "validation_mode": "strict"
    }]));
    let v = JsonSchemaValidator::new();
    let s = v.provider_schema(&p, SchemaId(0)).unwrap();
    assert_eq!(
        s,
        json!({
            "type": "object",
            "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
            "required": ["label", "score"],
            "additionalProperties": false
        })
    );
    assert_provider_invariants(&s);
    assert!(is_strict_compatible(&s));
}

#[test]
fn provider_schema_invariants_on_every_shape() {
    let p = compiler_program();
    for idx in 0..p.schemas.len() as u32 {
        let s = to_provider_schema(&p, idx).unwrap();
        assert_provider_invariants(&s);
    }
    let person = to_provider_schema(&p, index_of(&p, "Person")).unwrap();
    let props = &person["properties"];
    // Optional fields are required but nullable.
    assert_eq!(props["score"], json!({"type": ["number", "null"]}));
    assert_eq!(props["maybe"], json!({"type": ["integer", "null"]}));
    assert_eq!(
        props["address"]["properties"]["city"],
        json!({"type": ["string", "null"]})
    );
    assert_eq!(props["address"]["additionalProperties"], json!(false));
    assert_eq!(
        props["label"],
        json!({"type": "string", "enum": ["a", "b"]})
    );
    assert_eq!(
        props["prev"]["items"]["anyOf"][1],
        json!({"type": "null"}),
        "Array<Option<Address>> items are nullable objects"
    );
    assert_eq!(
        props["counts"],
        json!({"type": "object", "additionalProperties": {"type": "integer"}})
    );
    assert_eq!(props["p"]["required"], json!(["x", "y"]));
    // Maps make a schema strict-incompatible; the others are clean.
    assert!(!is_strict_compatible(&person));
    let node = to_provider_schema(&p, index_of(&p, "Node")).unwrap();
    assert!(is_strict_compatible(&node));
    assert_eq!(
        node["properties"]["children"],
        json!({"type": "array", "items": {"$ref": "#"}})
    );
    assert_eq!(
        node["properties"]["parent"],
        json!({"anyOf": [{"$ref": "#"}, {"type": "null"}]})
    );
    assert_eq!(node["required"], json!(["children", "name", "parent"]));
}

#[test]
fn provider_schema_with_defs_and_awkward_names() {
    let p = program(json!([
        schema(
            "Root",
            json!({"t": {"type": "type"}, "any": {"type": "Any"},
                              "anys": {"type": "Array<Any>"}, "garbage": {"type": "Array<"}}),
            &["t"]
        ),
        schema(
            "type",
            json!({"again": {"type": "Option<type>"}, "r": {"type": "Array<Root>"}}),
            &[]
        ),
    ]));
    let s = to_provider_schema(&p, 0).unwrap();
    assert_provider_invariants(&s);
    assert!(s["$defs"].get("type").is_none());
    assert!(s["$defs"].get("type_1").is_some(), "{s}");
    assert_eq!(
        s["properties"]["t"]["properties"]["r"],
        json!({"anyOf": [{"type": "array", "items": {"$ref": "#"}}, {"type": "null"}]})
    );
    // `Any` becomes a scalar-or-array union with JSON type names only.
    assert!(s["properties"]["any"]["anyOf"].is_array());
    assert!(is_strict_compatible(&s));
    // The validation form of the same schema compiles and validates.
    let v = JsonSchemaValidator::new();
    valid(
        &v,
        &p,
        "Root",
        r#"{"t": {"again": {"again": null, "r": []}, "r": [{"t": {}}]}, "any": {"x": 1}}"#,
    );
}

#[test]
fn provider_schema_ignores_the_mode() {
    let p = partial_program("partial");
    let s = to_provider_schema(&p, 0).unwrap();
    assert_provider_invariants(&s);
    assert_eq!(s["properties"]["name"], json!({"type": "string"}));
}
