//! Tool names: program names (`Tool::method`) and the names providers accept.
//!
//! OpenAI and Anthropic both require tool names matching `^[A-Za-z0-9_-]{1,64}$`. A program
//! name maps to `Tool__method` (`::` becomes `__`, any other character outside the set
//! becomes `_`); over-long names lose characters from the tool part, never from the method
//! part, because test servers and logs match calls by the method name at the end.

use std::collections::HashMap;

use concerto_vm::host::{ChatRequest, ToolSpec};

use super::{AnthropicStructured, Provider};

/// Longest name a provider accepts.
pub(crate) const MAX_WIRE_NAME: usize = 64;

/// The two-way map between program tool names and wire tool names for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolNames {
    /// Program name → wire name.
    to_wire: HashMap<String, String>,
    /// Wire name → program name (the inverse of `to_wire`; every wire name is unique).
    from_wire: HashMap<String, String>,
    /// Wire name of the tool that carries structured output (Anthropic `Tool` mode). It is
    /// never one of the program's tools, so a call to it is the reply, not a tool call.
    output_tool: Option<String>,
}

impl ToolNames {
    /// The names for the tools offered in one request. A program name listed twice keeps
    /// its first mapping; names that would collide on the wire get a number before the
    /// method part (`Tool_2__method`).
    pub fn new(tools: &[ToolSpec]) -> ToolNames {
        let mut names = ToolNames::default();
        for spec in tools {
            names.insert(&spec.name);
        }
        names
    }

    /// The names for `request` on `provider`: its tools, plus the structured-output tool
    /// when the request has a schema and Anthropic receives it as a forced tool
    /// ([`AnthropicStructured::Tool`]). Use this rather than [`ToolNames::new`] whenever
    /// the request may carry a schema, so the reply can be recognised when parsed.
    pub fn for_request(
        request: &ChatRequest,
        provider: Provider,
        structured: AnthropicStructured,
    ) -> ToolNames {
        let mut names = ToolNames::new(&request.tools);
        if provider == Provider::Anthropic
            && structured == AnthropicStructured::Tool
            && let Some(schema) = &request.response_schema
        {
            let base = sanitize_schema_name(&schema.name);
            let mut candidate = base.clone();
            let mut n = 1usize;
            while names.from_wire.contains_key(&candidate) {
                n += 1;
                let suffix = format!("_{n}");
                candidate = format!(
                    "{}{suffix}",
                    take_chars(&base, MAX_WIRE_NAME.saturating_sub(suffix.len()))
                );
            }
            names.output_tool = Some(candidate);
        }
        names
    }

    /// The wire name of program tool `program`, if it is one of this request's tools.
    pub fn to_wire(&self, program: &str) -> Option<&str> {
        self.to_wire.get(program).map(String::as_str)
    }

    /// The program name of wire tool `wire`, if it is one of this request's tools.
    pub fn from_wire(&self, wire: &str) -> Option<&str> {
        self.from_wire.get(wire).map(String::as_str)
    }

    /// The wire name of the structured-output tool, when the request uses one.
    pub fn output_tool(&self) -> Option<&str> {
        self.output_tool.as_deref()
    }

    /// The wire name to send for a program tool name that may not be among this request's
    /// tools (an earlier turn of the conversation may name a tool no longer offered).
    pub(crate) fn wire_or_sanitized(&self, program: &str) -> String {
        match self.to_wire(program) {
            Some(wire) => wire.to_string(),
            None => wire_name(program, 1),
        }
    }

    /// The program name for a wire name; a name the request never offered is kept as it
    /// came, so the caller can report the unknown tool by the name the model used.
    pub(crate) fn program_or_wire(&self, wire: &str) -> String {
        self.from_wire(wire).unwrap_or(wire).to_string()
    }

    fn insert(&mut self, program: &str) {
        if self.to_wire.contains_key(program) {
            return;
        }
        let mut n = 1usize;
        let wire = loop {
            let candidate = wire_name(program, n);
            if !self.from_wire.contains_key(&candidate) {
                break candidate;
            }
            n += 1;
        };
        self.from_wire.insert(wire.clone(), program.to_string());
        self.to_wire.insert(program.to_string(), wire);
    }
}

/// Replaces every character outside `[A-Za-z0-9_-]` with `_` (`::` becomes `__`).
fn sanitize(part: &str) -> String {
    part.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The first `n` characters of `s`.
fn take_chars(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The last `n` characters of `s`.
fn last_chars(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

/// The `n`-th candidate wire name of `program` (1 = the plain mapping, 2.. = numbered
/// alternatives for collisions). The method part always ends the name.
fn wire_name(program: &str, n: usize) -> String {
    let number = if n > 1 {
        format!("_{n}")
    } else {
        String::new()
    };
    match program.rsplit_once("::") {
        Some((head, method)) => {
            let head = sanitize(head);
            let head = if head.is_empty() {
                "tool".to_string()
            } else {
                head
            };
            let method = sanitize(method);
            let method = if method.is_empty() {
                "call".to_string()
            } else {
                method
            };
            // `<head><number>__<method>`; shorten the head first, then the method's start.
            let fixed = number.len() + 2;
            let method_room = MAX_WIRE_NAME.saturating_sub(fixed + 1);
            let method = if method.len() > method_room {
                last_chars(&method, method_room)
            } else {
                method
            };
            let head_room = MAX_WIRE_NAME.saturating_sub(fixed + method.len());
            format!("{}{number}__{method}", take_chars(&head, head_room))
        }
        None => {
            let name = sanitize(program);
            let name = if name.is_empty() {
                "tool".to_string()
            } else {
                name
            };
            // A number goes in front, so the name still ends with the original text.
            let prefix = if n > 1 {
                format!("t{n}_")
            } else {
                String::new()
            };
            let room = MAX_WIRE_NAME.saturating_sub(prefix.len());
            format!("{prefix}{}", last_chars(&name, room))
        }
    }
}

/// A schema name as a provider accepts it for a response format or tool name.
pub(crate) fn sanitize_schema_name(name: &str) -> String {
    let clean = take_chars(&sanitize(name), MAX_WIRE_NAME);
    if clean.is_empty() {
        "response".to_string()
    } else {
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.to_string(),
            description: String::new(),
            parameters: json!({"type": "object"}),
        }
    }

    fn legal(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= MAX_WIRE_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }

    #[test]
    fn maps_double_colon_and_round_trips() {
        let names = ToolNames::new(&[spec("Tally::add"), spec("Tally::total"), spec("plain")]);
        assert_eq!(names.to_wire("Tally::add"), Some("Tally__add"));
        assert_eq!(names.to_wire("plain"), Some("plain"));
        for program in ["Tally::add", "Tally::total", "plain"] {
            let wire = names.to_wire(program).unwrap();
            assert!(legal(wire), "{wire}");
            assert_eq!(names.from_wire(wire), Some(program));
        }
        assert_eq!(names.from_wire("Tally::add"), None);
        assert_eq!(names.to_wire("Other::x"), None);
    }

    #[test]
    fn illegal_characters_become_underscores() {
        let names = ToolNames::new(&[spec("Web Search::fetch.page"), spec("Ünï::ça")]);
        assert_eq!(
            names.to_wire("Web Search::fetch.page"),
            Some("Web_Search__fetch_page")
        );
        let wire = names.to_wire("Ünï::ça").unwrap();
        assert!(legal(wire), "{wire}");
        assert!(wire.ends_with("___a"), "{wire}");
    }

    #[test]
    fn collisions_get_unique_names_that_keep_the_method_last() {
        let names = ToolNames::new(&[
            spec("A.b::run"),
            spec("A_b::run"),
            spec("A b::run"),
            spec("x.y"),
            spec("x_y"),
            spec("A.b::run"),
        ]);
        let wires: Vec<&str> = ["A.b::run", "A_b::run", "A b::run", "x.y", "x_y"]
            .iter()
            .map(|p| names.to_wire(p).unwrap())
            .collect();
        assert_eq!(wires[0], "A_b__run");
        assert_eq!(wires[1], "A_b_2__run");
        assert_eq!(wires[2], "A_b_3__run");
        assert_eq!(wires[3], "x_y");
        assert_eq!(wires[4], "t2_x_y");
        let mut unique = wires.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), wires.len());
        for (program, wire) in ["A.b::run", "A_b::run", "A b::run", "x.y", "x_y"]
            .iter()
            .zip(&wires)
        {
            assert!(legal(wire));
            assert_eq!(names.from_wire(wire), Some(*program));
        }
        for wire in &wires[..3] {
            assert!(wire.ends_with("__run"));
        }
    }

    #[test]
    fn long_names_are_cut_from_the_tool_part() {
        let long_tool = "T".repeat(100);
        let program = format!("{long_tool}::lookup_entry");
        let other = format!("{long_tool}X::lookup_entry");
        let names = ToolNames::new(&[spec(&program), spec(&other)]);
        let wire = names.to_wire(&program).unwrap();
        assert_eq!(wire.len(), MAX_WIRE_NAME);
        assert!(wire.ends_with("__lookup_entry"));
        assert!(legal(wire));
        let wire2 = names.to_wire(&other).unwrap();
        assert_ne!(wire, wire2);
        assert!(legal(wire2) && wire2.ends_with("__lookup_entry"));
        assert_eq!(names.from_wire(wire2), Some(other.as_str()));

        let long_method = format!("Tool::{}", "m".repeat(90));
        let names = ToolNames::new(&[spec(&long_method), spec(&"z".repeat(80))]);
        let wire = names.to_wire(&long_method).unwrap();
        assert!(legal(wire) && wire.starts_with('T') && wire.ends_with("mmm"));
        assert!(legal(names.to_wire(&"z".repeat(80)).unwrap()));
    }

    #[test]
    fn empty_names_still_map_to_legal_names() {
        let names = ToolNames::new(&[spec(""), spec("::"), spec("Tool::")]);
        for program in ["", "::", "Tool::"] {
            let wire = names.to_wire(program).unwrap();
            assert!(legal(wire), "{wire:?}");
            assert_eq!(names.from_wire(wire), Some(program));
        }
    }

    #[test]
    fn output_tool_is_registered_only_for_anthropic_tool_mode() {
        let mut request = ChatRequest::new("A", None, vec![]);
        request.tools = vec![spec("Ship")];
        request.response_schema = Some(concerto_vm::host::ResponseSchema {
            name: "Ship".into(),
            schema: json!({"type": "object"}),
        });
        let names =
            ToolNames::for_request(&request, Provider::Anthropic, AnthropicStructured::Tool);
        assert_eq!(names.to_wire("Ship"), Some("Ship"));
        assert_eq!(names.output_tool(), Some("Ship_2"));
        let names = ToolNames::for_request(
            &request,
            Provider::Anthropic,
            AnthropicStructured::OutputConfig,
        );
        assert_eq!(names.output_tool(), None);
        let names = ToolNames::for_request(&request, Provider::OpenAi, AnthropicStructured::Tool);
        assert_eq!(names.output_tool(), None);
    }

    #[test]
    fn unknown_names_pass_through_or_are_sanitized() {
        let names = ToolNames::new(&[spec("Tally::add")]);
        assert_eq!(names.wire_or_sanitized("Gone::away"), "Gone__away");
        assert_eq!(names.program_or_wire("mystery"), "mystery");
        assert_eq!(names.program_or_wire("Tally__add"), "Tally::add");
    }
}
