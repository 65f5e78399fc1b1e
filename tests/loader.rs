//! Loader error tests: one or more per error kind, each checking the typed variant and
//! where it points.

use concerto_ir::{LoadError, load_str};

fn module(constants: &str, instructions: &str) -> String {
    format!(
        r#"{{"version":"0.1.0","module":"m","source_file":"m.conc",
        "constants":[{constants}],
        "functions":[{{"name":"main","module":"m","visibility":"private","params":[],
          "return_type":"nil","is_async":false,"locals":[],"instructions":[{instructions}]}}],
        "metadata":{{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
          "debug_info":true,"entry_point":"main"}}}}"#
    )
}

fn invalid(text: &str) -> concerto_ir::Invalid {
    match load_str(text) {
        Err(LoadError::Invalid(inv)) => *inv,
        Err(other) => panic!("expected Invalid, got {other:?}"),
        Ok(_) => panic!("expected Invalid, the module loaded"),
    }
}

#[test]
fn a_valid_module_loads() {
    let program = load_str(&module(
        r#"{"index":0,"type":"int","value":1}"#,
        r#"{"op":"LOAD_CONST","arg":0},{"op":"RETURN"}"#,
    ))
    .unwrap();
    assert_eq!(program.instruction_count(), 2);
    assert!(program.warnings.is_empty());
}

#[test]
fn malformed_json_is_a_parse_error_with_position() {
    match load_str("{\n  \"version\": \"0.1.0\",\n  oops\n}") {
        Err(LoadError::ParseError { line, column, .. }) => {
            assert_eq!(line, 3);
            assert!(column >= 3, "column {column}");
        }
        other => panic!("expected ParseError, got {other:?}"),
    }
}

#[test]
fn a_value_of_the_wrong_json_type_is_a_parse_error() {
    let text = module("", r#"{"op":"CALL","argc":"two"}"#);
    assert!(matches!(load_str(&text), Err(LoadError::ParseError { .. })));
}

#[test]
fn another_major_version_is_a_version_mismatch() {
    let text =
        module("", r#"{"op":"RETURN"}"#).replace("\"0.1.0\",\"module\"", "\"1.0.0\",\"module\"");
    match load_str(&text) {
        Err(LoadError::VersionMismatch { found, supported }) => {
            assert_eq!(found, "1.0.0");
            assert!(supported.starts_with('0'));
        }
        other => panic!("expected VersionMismatch, got {other:?}"),
    }
}

#[test]
fn a_malformed_version_is_a_version_mismatch() {
    let text =
        module("", r#"{"op":"RETURN"}"#).replace("\"0.1.0\",\"module\"", "\"zero\",\"module\"");
    assert!(matches!(
        load_str(&text),
        Err(LoadError::VersionMismatch { .. })
    ));
}

#[test]
fn another_minor_version_loads_with_a_warning() {
    let text =
        module("", r#"{"op":"RETURN"}"#).replace("\"0.1.0\",\"module\"", "\"0.2.3\",\"module\"");
    let program = load_str(&text).unwrap();
    assert_eq!(program.warnings.len(), 1, "{:?}", program.warnings);
}

#[test]
fn each_required_section_is_reported_when_missing() {
    let full = module("", r#"{"op":"RETURN"}"#);
    let mut value: serde_json::Value = serde_json::from_str(&full).unwrap();
    for section in ["version", "module", "source_file", "metadata"] {
        let mut v = value.clone();
        v.as_object_mut().unwrap().remove(section);
        match load_str(&serde_json::to_string_pretty(&v).unwrap()) {
            Err(LoadError::MissingSection { section: s }) => assert_eq!(s, section),
            other => panic!("{section}: expected MissingSection, got {other:?}"),
        }
    }
    // Optional sections may be absent.
    value.as_object_mut().unwrap().remove("constants");
    assert!(load_str(&value.to_string()).is_ok());
}

#[test]
fn constant_index_out_of_range() {
    let inv = invalid(&module(
        r#"{"index":0,"type":"int","value":1}"#,
        r#"{"op":"LOAD_CONST","arg":5},{"op":"RETURN"}"#,
    ));
    assert_eq!(inv.function, "main");
    assert_eq!(inv.instruction, Some(0));
    assert!(inv.reason.contains("constant index 5"), "{}", inv.reason);
}

#[test]
fn constant_of_the_wrong_kind_or_type() {
    let inv = invalid(&module(
        r#"{"index":0,"type":"int","value":"x"}"#,
        r#"{"op":"RETURN"}"#,
    ));
    assert_eq!(inv.function, "constants");
    let inv = invalid(&module(
        r#"{"index":0,"type":"decimal","value":1}"#,
        r#"{"op":"RETURN"}"#,
    ));
    assert!(
        inv.reason.contains("unknown constant type"),
        "{}",
        inv.reason
    );
    let inv = invalid(&module(
        r#"{"index":3,"type":"int","value":1}"#,
        r#"{"op":"RETURN"}"#,
    ));
    assert!(inv.reason.contains("index 3"), "{}", inv.reason);
    let inv = invalid(&module(
        r#"{"index":0,"type":"float","value":2}"#,
        r#"{"op":"RETURN"}"#,
    ));
    assert!(inv.reason.contains("wrong kind"), "{}", inv.reason);
}

#[test]
fn jump_target_out_of_range() {
    let inv = invalid(&module("", r#"{"op":"JUMP","offset":7},{"op":"RETURN"}"#));
    assert_eq!(inv.instruction, Some(0));
    assert!(inv.reason.contains("jump target 7"), "{}", inv.reason);
    let inv = invalid(&module("", r#"{"op":"JUMP","offset":-1},{"op":"RETURN"}"#));
    assert!(inv.reason.contains("out of range"), "{}", inv.reason);
}

#[test]
fn unknown_opcode() {
    let inv = invalid(&module("", r#"{"op":"RETURN"},{"op":"FROBNICATE"}"#));
    assert_eq!(inv.instruction, Some(1));
    assert!(
        inv.reason.contains("unknown opcode `FROBNICATE`"),
        "{}",
        inv.reason
    );
}

#[test]
fn missing_operands() {
    for (ins, field) in [
        (r#"{"op":"LOAD_LOCAL"}"#, "name"),
        (r#"{"op":"CALL"}"#, "argc"),
        (r#"{"op":"JUMP"}"#, "offset"),
        (r#"{"op":"BUILD_ARRAY"}"#, "count"),
        (r#"{"op":"LOAD_CONST"}"#, "arg"),
        (r#"{"op":"CAST"}"#, "type_name"),
        (
            r#"{"op":"BUILD_STRUCT","type_name":"ToolError","count":1}"#,
            "field names",
        ),
    ] {
        let inv = invalid(&module("", &format!("{ins},{{\"op\":\"RETURN\"}}")));
        assert_eq!(inv.instruction, Some(0), "{ins}");
        assert!(inv.reason.contains(field), "{ins}: {}", inv.reason);
    }
}

#[test]
fn unknown_entry_point() {
    let text = module("", r#"{"op":"RETURN"}"#)
        .replace("\"entry_point\":\"main\"", "\"entry_point\":\"start\"");
    let inv = invalid(&text);
    assert!(inv.reason.contains("entry point `start`"), "{}", inv.reason);
}

#[test]
fn unknown_type_in_a_struct_literal() {
    let inv = invalid(&module(
        r#"{"index":0,"type":"int","value":1}"#,
        r#"{"op":"LOAD_CONST","arg":0},{"op":"BUILD_STRUCT","type_name":"Ghost","count":1,"arg":["x"]},{"op":"RETURN"}"#,
    ));
    assert_eq!(inv.instruction, Some(1));
    assert!(
        inv.reason.contains("unknown type `Ghost`"),
        "{}",
        inv.reason
    );
}

#[test]
fn unknown_schema_agent_tool_and_hashmap_in_instructions() {
    let cases = [
        (
            r#"{"op":"LOAD_CONST","arg":0},{"op":"CALL_METHOD","name":"execute_with_schema","argc":0,"schema":"Nope"}"#,
            "unknown schema `Nope`",
        ),
        (
            r#"{"op":"LOAD_CONST","arg":0},{"op":"CALL_AGENT","agent":"Nobody","method":"execute","argc":1}"#,
            "unknown agent `Nobody`",
        ),
        (
            r#"{"op":"CALL_TOOL","tool":"Nope","name":"run","argc":0}"#,
            "unknown tool `Nope`",
        ),
        (
            r#"{"op":"LOAD_CONST","arg":0},{"op":"HASH_MAP_GET","hashmap_name":"nope"}"#,
            "unknown hashmap `nope`",
        ),
    ];
    for (ins, needle) in cases {
        let inv = invalid(&module(
            r#"{"index":0,"type":"string","value":"k"}"#,
            &format!("{ins},{{\"op\":\"RETURN\"}}"),
        ));
        assert!(inv.reason.contains(needle), "{ins}: {}", inv.reason);
    }
}

#[test]
fn unknown_connection_and_tool_on_an_agent() {
    let base = module("", r#"{"op":"RETURN"}"#);
    let with_agent = |agent: &str| {
        base.replacen(
            "\"functions\"",
            &format!("\"agents\":[{agent}],\"functions\""),
            1,
        )
    };
    let inv = invalid(&with_agent(
        r#"{"name":"A","connection":"nowhere","config":{}}"#,
    ));
    assert_eq!(inv.function, "agent A");
    assert!(
        inv.reason.contains("unknown connection `nowhere`"),
        "{}",
        inv.reason
    );
    let inv = invalid(&with_agent(
        r#"{"name":"A","connection":"","config":{},"tools":["Ghost"]}"#,
    ));
    assert!(
        inv.reason.contains("unknown tool or MCP server `Ghost`"),
        "{}",
        inv.reason
    );
}

#[test]
fn stack_discipline_is_verified() {
    let inv = invalid(&module("", r#"{"op":"POP"},{"op":"RETURN"}"#));
    assert!(inv.reason.contains("stack underflow"), "{}", inv.reason);
    // Two paths reach instruction 3 with different heights.
    let inv = invalid(&module(
        r#"{"index":0,"type":"bool","value":true}"#,
        r#"{"op":"LOAD_CONST","arg":0},{"op":"JUMP_IF_FALSE","offset":3},{"op":"LOAD_CONST","arg":0},{"op":"RETURN"}"#,
    ));
    assert!(
        inv.reason.contains("stack height mismatch"),
        "{}",
        inv.reason
    );
}

#[test]
fn handler_chains_are_verified() {
    let inv = invalid(&module(
        "",
        r#"{"op":"TRY_BEGIN","offset":1},{"op":"RETURN"}"#,
    ));
    assert!(inv.reason.contains("not a CATCH"), "{}", inv.reason);
    let inv = invalid(&module("", r#"{"op":"CATCH"},{"op":"RETURN"}"#));
    assert!(
        inv.reason.contains("outside any handler chain"),
        "{}",
        inv.reason
    );
}

#[test]
fn load_path_reports_io_errors() {
    match concerto_ir::load_path("/definitely/not/here.conc-ir") {
        Err(LoadError::Io { path, .. }) => assert!(path.ends_with("here.conc-ir")),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn parse_then_serialize_then_parse_is_stable() {
    for ir in concerto_tests::ir_files(&concerto_tests::cases_dir()) {
        let bytes = std::fs::read(&ir).unwrap();
        let first = concerto_ir::parse_bytes(&bytes).unwrap();
        let text = serde_json::to_string(&first).unwrap();
        let second = concerto_ir::parse_bytes(text.as_bytes()).unwrap();
        assert_eq!(first, second, "{}", ir.display());
    }
}

/// `module` with one tool `Calc` whose method `add(a, b)` has the function schema `schema`.
fn with_tool(schema: &str) -> String {
    module(r#"{"index":0,"type":"nil","value":null}"#, r#"{"op":"LOAD_CONST","arg":0},{"op":"RETURN"}"#)
        .replace(
            r#""metadata""#,
            &format!(
                r#""tools":[{{"name":"Calc","module":"m","methods":[{{"name":"add","module":"m",
                  "visibility":"public","params":[{{"name":"a","type":"Int"}},{{"name":"b","type":"Int"}}],
                  "return_type":"Int","is_async":false,"locals":["a","b"],
                  "instructions":[{{"op":"LOAD_CONST","arg":0}},{{"op":"RETURN"}}]}}],
                  "tool_schemas":[{schema}]}}],
                "metadata""#
            ),
        )
}

#[test]
fn tool_signatures_are_checked_against_their_function_schemas() {
    let good = r#"{"method_name":"Calc::add","description":"Add","parameters":{"type":"object",
        "properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]}}"#;
    load_str(&with_tool(good)).expect("a matching schema loads");
    let cases = [
        (good.replace("Calc::add", "Calc::sub"), "names no method"),
        (good.replace("Calc::add", "Other::add"), "names no method"),
        (
            good.replace(r#""b":{"type":"integer"}"#, r#""c":{"type":"integer"}"#),
            "`c`, which is not a parameter",
        ),
        (
            good.replace(r#"["a","b"]"#, r#"["a","z"]"#),
            "requires \"z\"",
        ),
        (
            good.replace(r#""type":"object""#, r#""type":"array""#),
            "not a JSON Schema of type object",
        ),
        (format!("{good},{good}"), "two function schemas"),
    ];
    for (schema, expected) in cases {
        let inv = invalid(&with_tool(&schema));
        assert!(inv.to_string().contains(expected), "{schema}: {inv}");
    }
    let twice = with_tool(good).replace(
        r#"{"name":"b","type":"Int"}"#,
        r#"{"name":"a","type":"Int"}"#,
    );
    let inv = invalid(&twice);
    assert_eq!(inv.function, "Calc::add");
    assert!(inv.reason.contains("listed twice"), "{inv}");
}

#[test]
fn a_name_is_a_tool_a_host_or_an_mcp_server_not_two_of_them() {
    let text = with_tool(r#"{"method_name":"Calc::add","parameters":{"type":"object"}}"#).replace(
        r#""metadata""#,
        r#""hosts":[{"name":"Calc","connector":"c","command":"true"}],"metadata""#,
    );
    let inv = invalid(&text);
    assert!(inv.reason.contains("also declared as a tool"), "{inv}");
}

/// A module with the given extra top-level sections (JSON members, comma-separated).
fn with_sections(sections: &str) -> String {
    format!(
        r#"{{"version":"0.1.0","module":"m","source_file":"m.conc",
        "constants":[{{"index":0,"type":"nil","value":null}}],
        "functions":[{{"name":"main","module":"m","visibility":"private","params":[],
          "return_type":"nil","is_async":false,"locals":[],
          "instructions":[{{"op":"LOAD_CONST","arg":0}},{{"op":"RETURN"}}]}}],
        {sections},
        "metadata":{{"compiler_version":"0.1.0","compiled_at":"","optimization_level":0,
          "debug_info":true,"entry_point":"main"}}}}"#
    )
}

#[test]
fn the_dialect_is_told_from_the_sections() {
    use concerto_ir::model::Dialect;
    let conn = r#""connections":[{"name":"llm","config":{"provider":"openai"}}]"#;
    let seed_agent = r#"{"name":"A","connection":"llm","config":{"model":"m1"}}"#;
    let head_model = r#"{"name":"A","connection":"llm","config":{"base":"m1"}}"#;
    let external = r#"{"name":"X","connector":"x","command":"true","params":{"k":1}}"#;
    let cases = [
        (format!(r#"{conn}, "agents":[{seed_agent}]"#), Dialect::Seed),
        (format!(r#""hosts":[{external}]"#), Dialect::Seed),
        (format!(r#"{conn}, "models":[{head_model}]"#), Dialect::Head),
        (format!(r#""agents":[{external}]"#), Dialect::Head),
        (r#""tests":[]"#.to_string(), Dialect::Head),
        (conn.to_string(), Dialect::Either),
    ];
    for (sections, dialect) in cases {
        let program = concerto_ir::load_str(&with_sections(&sections))
            .unwrap_or_else(|e| panic!("{sections}: {e}"));
        assert_eq!(program.dialect, dialect, "{sections}");
    }
    // Both shapes of LLM agent name their model the same way.
    for sections in [
        format!(r#"{conn}, "agents":[{seed_agent}]"#),
        format!(r#"{conn}, "models":[{head_model}]"#),
    ] {
        let program = concerto_ir::load_str(&with_sections(&sections)).unwrap();
        assert_eq!(program.agents[0].decl.config.model.as_deref(), Some("m1"));
    }
    // A 7ad10db external agent keeps its params.
    let program =
        concerto_ir::load_str(&with_sections(&format!(r#""agents":[{external}]"#))).unwrap();
    assert_eq!(program.hosts[0].name, "X");
    assert_eq!(program.hosts[0].params, Some(serde_json::json!({"k": 1})));
}

#[test]
fn a_file_mixing_the_two_shapes_is_refused_naming_the_sections() {
    let conn = r#""connections":[{"name":"llm","config":{"provider":"openai"}}]"#;
    let seed_agent = r#"{"name":"A","connection":"llm","config":{"model":"m1"}}"#;
    let external = r#"{"name":"X","connector":"x","command":"true"}"#;
    for (sections, names) in [
        (
            format!(r#"{conn}, "agents":[{seed_agent}, {external}]"#),
            [
                "`agents` entries without a `connector`",
                "`agents` entries with a `connector`",
            ],
        ),
        (
            format!(r#"{conn}, "models":[{seed_agent}], "hosts":[{external}]"#),
            ["`hosts`", "`models`"],
        ),
        (
            format!(r#"{conn}, "agents":[{seed_agent}], "listens":[]"#),
            ["`agents` entries without a `connector`", "`listens`"],
        ),
    ] {
        match concerto_ir::load_str(&with_sections(&sections)) {
            Err(LoadError::Invalid(inv)) => {
                for name in names {
                    assert!(inv.reason.contains(name), "{}: {}", sections, inv.reason);
                }
            }
            other => panic!("{sections}: expected an invalid-IR error, got {other:?}"),
        }
    }
}

#[test]
fn an_mcp_server_over_the_old_sse_transport_is_refused_naming_the_alternatives() {
    let text = with_sections(
        r#""connections":[{"name":"Legacy","config":{"type":"mcp","transport":"SSE",
            "url":"http://127.0.0.1:9/sse"}},
          {"name":"Web","config":{"type":"mcp","transport":"http","url":"http://127.0.0.1:9/mcp"}}]"#,
    );
    let inv = invalid(&text);
    assert_eq!(inv.function, "MCP server Legacy");
    for part in [
        "transport `sse`",
        "HTTP+SSE",
        "`transport: \"http\"`",
        "streamable HTTP",
    ] {
        assert!(inv.reason.contains(part), "{part}: {inv}");
    }
    let fine = with_sections(
        r#""connections":[{"name":"Web","config":{"type":"mcp","transport":"http","url":"http://127.0.0.1:9/mcp"}}]"#,
    );
    assert!(load_str(&fine).is_ok());
}
