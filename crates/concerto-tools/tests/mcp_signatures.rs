//! How an `mcp` block's declared tools are matched to the server's tools (names that are not
//! Concerto identifiers), checked against their schemas, and how results convert to the
//! declared return types; against the test server in `tests/fixtures/mcp/server.py`.

use std::sync::Arc;

use concerto_tools::ToolFailure;
use concerto_tools::mcp::McpClients;
use concerto_vm::host::{HostError, HostErrorKind, Program};
use serde_json::{Value, json};

/// A declared tool: name, parameters (name, type), return type.
type Decl<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);

/// A program with a struct `Weather { city, temp }` and one stdio MCP server `Calc` running
/// the fixture, declaring `tools`.
fn calc(tools: &[Decl]) -> Arc<Program> {
    let tools: Vec<Value> = tools
        .iter()
        .map(|(name, params, returns)| {
            let params: Vec<Value> = params
                .iter()
                .map(|(p, t)| json!({"name": p, "type": t}))
                .collect();
            json!({"name": name, "params": params, "return_type": returns})
        })
        .collect();
    let command = format!(
        "python3 '{}'",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mcp/server.py")
    );
    let ir = json!({
        "version": "0.1.0", "module": "m", "source_file": "m.conc",
        "constants": [{"index": 0, "type": "nil", "value": null}],
        "functions": [{"name": "main", "module": "m", "visibility": "private", "params": [],
            "return_type": "nil", "is_async": false, "locals": [],
            "instructions": [{"op": "LOAD_CONST", "arg": 0}, {"op": "RETURN"}]}],
        "types": [{"name": "Weather", "kind": "struct", "fields": [
            {"name": "city", "type": "String", "required": true},
            {"name": "temp", "type": "Float", "required": true}]}],
        "connections": [{"name": "Calc", "config": {
            "type": "mcp", "transport": "stdio", "command": command, "tools": tools}}],
        "metadata": {"compiler_version": "0.1.0", "compiled_at": "", "optimization_level": 0,
            "debug_info": true, "entry_point": "main"}
    });
    Arc::new(concerto_ir::load_str(&ir.to_string()).unwrap())
}

async fn call(
    clients: &McpClients,
    program: &Arc<Program>,
    tool: &str,
    args: Value,
) -> Result<Result<Value, ToolFailure>, HostError> {
    clients.call(program, "Calc", tool, args).await
}

fn type_error(result: Result<Result<Value, ToolFailure>, HostError>) -> String {
    match result {
        Err(e) if e.kind == HostErrorKind::Type => e.message,
        other => panic!("expected a type error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Names

#[tokio::test]
async fn a_tool_whose_name_is_no_identifier_is_called_by_its_identifier_form() {
    let clients = McpClients::new();
    let program = calc(&[(
        "get_sum",
        &[("a", "Int"), ("b", "Int")],
        "Result<Int, ToolError>",
    )]);
    // The request carries the server's own name: the server answers (an unknown name is a
    // JSON-RPC error from it).
    let sum = call(&clients, &program, "get_sum", json!({"a": 2, "b": 3})).await;
    assert_eq!(sum.unwrap(), Ok(json!(5)));
    // A model is offered the tool under the declared name, with the server's schema.
    let specs = clients.specs(&program, "Calc").await.unwrap();
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Calc::get_sum"]);
    assert_eq!(
        specs[0].description,
        "Adds two integers; answers with text only."
    );
    assert_eq!(specs[0].parameters["required"], json!(["a", "b"]));
    clients.shutdown().await;
}

#[tokio::test]
async fn without_declarations_the_same_rule_finds_the_tool() {
    let clients = McpClients::new();
    let program = calc(&[]);
    let sum = call(&clients, &program, "get_sum", json!({"a": 1, "b": 1})).await;
    assert_eq!(sum.unwrap(), Ok(json!("2")));
    // The exact name still works, and is what an undeclared server offers a model.
    let sum = call(&clients, &program, "get-sum", json!({"a": 2, "b": 2})).await;
    assert_eq!(sum.unwrap(), Ok(json!("4")));
    let specs = clients.specs(&program, "Calc").await.unwrap();
    assert!(specs.iter().any(|s| s.name == "Calc::get-sum"));
    clients.shutdown().await;
}

#[tokio::test]
async fn two_tools_with_the_same_identifier_form_are_an_error_naming_both() {
    let clients = McpClients::new();
    let program = calc(&[("a_b", &[], "Result<String, ToolError>")]);
    let err = call(&clients, &program, "a_b", json!({}))
        .await
        .unwrap_err();
    // (Not the error for a missing tool, whose list of offered tools names both too.)
    let ambiguous = "matches more than one of the server's tools";
    assert_eq!(err.kind, HostErrorKind::Failed);
    assert!(err.message.contains("`a_b`"), "{}", err.message);
    assert!(err.message.contains(ambiguous), "{}", err.message);
    assert!(err.message.contains("`a-b`, `a.b`;"), "{}", err.message);
    let err = clients.specs(&program, "Calc").await.unwrap_err();
    assert!(err.message.contains(ambiguous), "{}", err.message);
    assert!(err.message.contains("`a-b`, `a.b`;"), "{}", err.message);
    // Undeclared, the name is just as ambiguous.
    let undeclared = calc(&[]);
    let err = call(&clients, &undeclared, "a_b", json!({}))
        .await
        .unwrap_err();
    assert!(err.message.contains(ambiguous), "{}", err.message);
    // The exact names stay reachable.
    let exact = call(&clients, &undeclared, "a.b", json!({})).await;
    assert_eq!(exact.unwrap(), Ok(json!("a.b")));
    clients.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Signatures against the schemas

#[tokio::test]
async fn a_parameter_of_the_wrong_type_is_an_error_naming_tool_parameter_and_both_types() {
    let clients = McpClients::new();
    let program = calc(&[
        (
            "add",
            &[("a", "String"), ("b", "Int")],
            "Result<Int, ToolError>",
        ),
        ("echo", &[("text", "String")], "Result<String, ToolError>"),
    ]);
    let message = type_error(call(&clients, &program, "add", json!({"a": "1", "b": 2})).await);
    assert!(message.contains("tool `add`"), "{message}");
    assert!(message.contains("parameter `a`"), "{message}");
    assert!(message.contains("`String`"), "{message}");
    assert!(message.contains("`integer`"), "{message}");
    // Only that tool is refused; a model is offered none of them (the agent call fails).
    let echoed = call(&clients, &program, "echo", json!({"text": "hi"})).await;
    assert_eq!(echoed.unwrap(), Ok(json!("hi")));
    let err = clients.specs(&program, "Calc").await.unwrap_err();
    assert_eq!(err.kind, HostErrorKind::Type);
    assert!(err.message.contains("parameter `a`"), "{}", err.message);
    clients.shutdown().await;
}

#[tokio::test]
async fn unknown_and_missing_required_parameters_are_mismatches() {
    let clients = McpClients::new();
    let program = calc(&[
        (
            "add",
            &[("a", "Int"), ("c", "Int")],
            "Result<Int, ToolError>",
        ),
        (
            "get_sum",
            &[("a", "Option<Int>"), ("b", "Int")],
            "Result<Int, ToolError>",
        ),
    ]);
    let message = type_error(call(&clients, &program, "add", json!({"a": 1, "c": 2})).await);
    // `c` is not the server's; `b` is required and not declared.
    assert!(
        message.contains("parameter `c` is declared `Int`"),
        "{message}"
    );
    assert!(
        message.contains("`a`, `b`"),
        "lists the server's: {message}"
    );
    assert!(
        message.contains("requires parameter `b` (`integer`)"),
        "{message}"
    );
    // An Option parameter the server requires: the server's name is shown too.
    let message = type_error(call(&clients, &program, "get_sum", json!({"b": 2})).await);
    assert!(message.contains("the server's `get-sum`"), "{message}");
    assert!(message.contains("parameter `a`"), "{message}");
    assert!(message.contains("`Option<Int>`"), "{message}");
    clients.shutdown().await;
}

#[tokio::test]
async fn compatible_declarations_pass() {
    let clients = McpClients::new();
    let program = calc(&[
        // `number` takes an Int; an optional parameter may be an Option.
        (
            "sleep",
            &[("seconds", "Option<Int>")],
            "Result<String, ToolError>",
        ),
        ("echo", &[("text", "Any")], "Result<String, ToolError>"),
        (
            "weather",
            &[("city", "String")],
            "Result<Weather, ToolError>",
        ),
        (
            "add",
            &[("a", "Int"), ("b", "Int")],
            "Result<Map<String, Int>, ToolError>",
        ),
    ]);
    let slept = call(&clients, &program, "sleep", json!({"seconds": 0})).await;
    assert_eq!(slept.unwrap(), Ok(json!("slept")));
    let specs = clients.specs(&program, "Calc").await.unwrap();
    assert_eq!(specs.len(), 4);
    clients.shutdown().await;
}

#[tokio::test]
async fn a_return_type_the_output_schema_contradicts_is_a_mismatch() {
    let clients = McpClients::new();
    let program = calc(&[("weather", &[("city", "String")], "Result<Int, ToolError>")]);
    let message = type_error(call(&clients, &program, "weather", json!({"city": "Oslo"})).await);
    assert!(message.contains("tool `weather`"), "{message}");
    assert!(
        message.contains("return type is declared `Int`"),
        "{message}"
    );
    assert!(message.contains("outputSchema says `object`"), "{message}");
    clients.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Results in the declared type

#[tokio::test]
async fn results_convert_to_the_declared_type() {
    let clients = McpClients::new();
    let int = calc(&[("echo", &[("text", "String")], "Result<Int, ToolError>")]);
    let float = calc(&[("echo", &[("text", "String")], "Float")]);
    let boolean = calc(&[("echo", &[("text", "String")], "Bool")]);
    let map = calc(&[("echo", &[("text", "String")], "Map<String, Int>")]);
    let array = calc(&[("echo", &[("text", "String")], "Array<Int>")]);
    let text = calc(&[(
        "add",
        &[("a", "Int"), ("b", "Int")],
        "Result<String, ToolError>",
    )]);
    let structured = calc(&[("weather", &[("city", "String")], "Weather")]);
    let echo = |t: &str| json!({"text": t});

    assert_eq!(
        call(&clients, &int, "echo", echo("41")).await.unwrap(),
        Ok(json!(41))
    );
    assert_eq!(
        call(&clients, &float, "echo", echo("4.5")).await.unwrap(),
        Ok(json!(4.5))
    );
    // An integral text is a Float all the same.
    let four = call(&clients, &float, "echo", echo("4"))
        .await
        .unwrap()
        .unwrap();
    assert!(four.is_f64(), "{four}");
    assert_eq!(
        call(&clients, &boolean, "echo", echo("true"))
            .await
            .unwrap(),
        Ok(json!(true))
    );
    assert_eq!(
        call(&clients, &map, "echo", echo(r#"{"x": 1}"#))
            .await
            .unwrap(),
        Ok(json!({"x": 1}))
    );
    assert_eq!(
        call(&clients, &array, "echo", echo("[1, 2]"))
            .await
            .unwrap(),
        Ok(json!([1, 2]))
    );
    // `add` answers text "5" and structured {"sum": 5}: a String takes the text.
    assert_eq!(
        call(&clients, &text, "add", json!({"a": 2, "b": 3}))
            .await
            .unwrap(),
        Ok(json!("5"))
    );
    assert_eq!(
        call(&clients, &structured, "weather", json!({"city": "Oslo"}))
            .await
            .unwrap(),
        Ok(json!({"city": "Oslo", "temp": 21.5}))
    );
    clients.shutdown().await;
}

#[tokio::test]
async fn a_result_that_does_not_convert_is_a_clear_error() {
    let clients = McpClients::new();
    let int = calc(&[("echo", &[("text", "String")], "Result<Int, ToolError>")]);
    let message = type_error(call(&clients, &int, "echo", json!({"text": "Echo: hi"})).await);
    assert!(message.contains("tool `echo`"), "{message}");
    assert!(message.contains("\"Echo: hi\""), "{message}");
    assert!(
        message.contains("does not convert to the declared `Int`"),
        "{message}"
    );
    // Not exactly an integer: no rounding, no trimming.
    for almost in ["4.0", " 4", "4 apples"] {
        type_error(call(&clients, &int, "echo", json!({"text": almost})).await);
    }
    let map = calc(&[("echo", &[("text", "String")], "Map<String, Any>")]);
    let message = type_error(call(&clients, &map, "echo", json!({"text": "[1]"})).await);
    assert!(
        message.contains("the declared `Map<String, Any>`"),
        "{message}"
    );
    // A failure the tool reports stays a failure, whatever the declared type.
    let failing = calc(&[("fail", &[("message", "String")], "Result<Int, ToolError>")]);
    let failed = call(&clients, &failing, "fail", json!({"message": "disk full"})).await;
    assert_eq!(failed.unwrap(), Err(ToolFailure::from("disk full")));
    clients.shutdown().await;
}
