//! `CALL_METHOD` on built-in receivers: strings, arrays, maps, `Result`/`Option`,
//! hashmaps, ledgers, memories, pipelines, std collections, agents.
//!
//! User methods (`Type::method` functions) are dispatched by the interpreter before it
//! gets here. Method names are resolved to [`Method`] once per program, so dispatch matches
//! on an enum, not on strings.

use std::sync::Arc;

use concerto_ir::HashmapOp;

use crate::builtins::{self, arg};
use crate::error::{ErrorKind, VmError};
use crate::exec::{Continuation, Ctx, Flow, Step};
use crate::host::{ChatMessage, LedgerEntry, LedgerQuery, MapId, Reply};
use crate::stdlib;
use crate::value::{Array, Map, RefKind, Str, StructObj, StructType, Value};

macro_rules! methods {
    ($($variant:ident = $name:literal),* $(,)?) => {
        /// A method name the runtime knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Method {
            $($variant,)*
            /// Any other name.
            Other,
        }

        impl Method {
            pub(crate) fn from_name(name: &str) -> Method {
                match name {
                    $($name => Method::$variant,)*
                    _ => Method::Other,
                }
            }
        }
    };
}

methods! {
    Len = "len", IsEmpty = "is_empty", Contains = "contains", Trim = "trim",
    TrimStart = "trim_start", TrimEnd = "trim_end", ToUppercase = "to_uppercase",
    ToLowercase = "to_lowercase", ToUpper = "to_upper", ToLower = "to_lower", Split = "split",
    StartsWith = "starts_with", EndsWith = "ends_with", Replace = "replace",
    Substring = "substring", Repeat = "repeat", Reverse = "reverse", ParseInt = "parse_int",
    ParseFloat = "parse_float", Chars = "chars", Lines = "lines", Join = "join", Push = "push",
    Pop = "pop", First = "first", Last = "last", Get = "get", Set = "set", Has = "has",
    Delete = "delete", Keys = "keys", Values = "values", Entries = "entries", Clear = "clear",
    Insert = "insert", Remove = "remove", Map = "map", Filter = "filter", Find = "find",
    Any = "any", All = "all", ForEach = "for_each", Reduce = "reduce", Fold = "fold",
    Sort = "sort", IndexOf = "index_of", Slice = "slice", Concat = "concat", Iter = "iter",
    Enumerate = "enumerate", ContainsKey = "contains_key", Unwrap = "unwrap",
    UnwrapOr = "unwrap_or", UnwrapErr = "unwrap_err", Expect = "expect", IsOk = "is_ok",
    IsErr = "is_err", IsSome = "is_some", IsNone = "is_none", Ok = "ok", Err = "err",
    MapErr = "map_err", AndThen = "and_then", OkOr = "ok_or", Execute = "execute",
    ExecuteWithSchema = "execute_with_schema", WithMemory = "with_memory",
    WithTools = "with_tools", WithoutTools = "without_tools", WithContext = "with_context",
    Stream = "stream", Chat = "chat", Run = "run", Query = "query", Update = "update",
    UpdateKeys = "update_keys", FromIdentifier = "from_identifier", FromKey = "from_key",
    FromAnyKeys = "from_any_keys", FromExactKeys = "from_exact_keys",
    Identifiers = "identifiers", Scope = "scope", Append = "append", Messages = "messages",
    Enqueue = "enqueue", Dequeue = "dequeue", Peek = "peek", Rest = "rest", Union = "union",
    Intersection = "intersection", Difference = "difference", ToString = "to_string",
    Sum = "sum", Min = "min", Max = "max", SetMany = "set_many", GetMany = "get_many",
    OnChange = "on_change", OnAnyChange = "on_any_change",
}

/// Calls a built-in method. `args[0]` is the receiver.
pub(crate) fn call_builtin_method(
    ctx: &mut Ctx,
    method: Method,
    name: &str,
    schema: Option<u32>,
    args: &[Value],
) -> Result<Flow, VmError> {
    let recv = &args[0];
    let rest = &args[1..];
    match recv {
        Value::Str(s) => string_method(ctx, method, name, s, args),
        Value::Array(a) => array_method(method, name, a, rest),
        Value::Map(m) => map_method(method, name, m, rest),
        Value::Ok(_) | Value::Err(_) => result_method(method, name, recv, rest),
        Value::Some(_) | Value::None => option_method(method, name, recv, rest),
        Value::Range(r) => range_method(method, name, r, rest),
        Value::Ref(r) => match r.kind {
            RefKind::Hashmap => {
                crate::hashmaps::method(ctx, method, name, MapId(r.index), &Str::from(""), rest)
            }
            RefKind::Ledger => {
                let ledger = ctx.program().ledgers[r.index as usize].name.clone();
                ledger_method(ctx, method, name, &ledger, rest)
            }
            RefKind::Memory => memory_method(ctx, method, name, r.index, rest),
            RefKind::Pipeline => match method {
                Method::Run => {
                    let input = arg(rest, 0).clone();
                    Ok(Flow::Start(Box::new(stdlib::pipeline::PipelineRun::new(
                        ctx, r.index, input,
                    ))))
                }
                _ => {
                    let pname = ctx.program().pipelines[r.index as usize].name.clone();
                    Err(VmError::type_error(format!(
                        "unknown pipeline method: {pname}.{name}"
                    )))
                }
            },
            RefKind::Agent => crate::agent::agent_method(ctx, r.index, method, name, schema, rest),
            RefKind::Host => crate::agent::host_method(ctx, r.index, method, name, schema, rest),
            RefKind::Mcp => mcp_method(ctx, r.index, name, rest),
            RefKind::Schema | RefKind::Tool => Err(no_method(recv, name)),
        },
        Value::Struct(s) => match &*s.ty.name {
            "Set" | "Queue" | "Stack" if s.ty.fields.len() == 1 => {
                stdlib::collections::method(method, name, s, rest)
            }
            _ => match method {
                Method::ToString => Ok(Flow::Value(Value::str(recv.to_display()))),
                _ => Err(no_method(recv, name)),
            },
        },
        Value::Object(obj) => {
            if let Some(view) = obj.downcast::<crate::hashmaps::HashMapScope>() {
                let (map, prefix) = (view.map, view.prefix.clone());
                return crate::hashmaps::method(ctx, method, name, map, &prefix, rest);
            }
            if let Some(scoped) = obj.downcast::<ScopedLedger>() {
                let ledger = scoped.0.clone();
                return ledger_method(ctx, method, name, &ledger, rest);
            }
            if let Some(builder) = obj.downcast::<crate::agent::AgentBuilder>() {
                return crate::agent::builder_method(ctx, builder, method, name, schema, rest);
            }
            Err(no_method(recv, name))
        }
        _ => match method {
            Method::ToString => Ok(Flow::Value(Value::str(recv.to_display()))),
            _ => Err(no_method(recv, name)),
        },
    }
}

/// `Server.tool(args…)` on an MCP server: the positional arguments are named by the tool's
/// signature in the `mcp` block and sent through the host, which checks that the server is
/// enabled, finds the server's tool, checks the signature against its schemas and converts
/// the result to the declared payload type. Here the payload becomes the declared shape (a
/// struct by its declared name, `Option`), and the call's value the declared return type:
/// `Ok(v)` / `Err(ToolError)` for `-> Result<_, ToolError>`, the bare value otherwise (a
/// failure the tool reported is then raised).
fn mcp_method(ctx: &mut Ctx, server: u32, name: &str, args: &[Value]) -> Result<Flow, VmError> {
    let program = ctx.program().clone();
    let conn = &program.connections[server as usize];
    let declared = conn
        .config
        .get("tools")
        .and_then(|t| t.as_array())
        .and_then(|tools| {
            tools
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
        });
    let Some(declared) = declared else {
        return Err(VmError::type_error(format!(
            "MCP server '{}' declares no tool '{name}'",
            conn.name
        )));
    };
    // A refusal is the program's to handle where the tool says it fails with a ToolError:
    // `-> Result<_, ToolError>` gets `Err(ToolError { message, kind: "not_enabled" })`;
    // other signatures raise the refusal (a catchable `not_enabled` error). The same holds
    // for a refusal that comes only with the call (an HTTP server's host or a redirect hop
    // the host did not allow), and for a declared signature the server's schemas contradict
    // or a result that does not convert to the declared type (`kind: "type"`).
    let returns = declared
        .get("return_type")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .replace(' ', "");
    let handles_refusal = returns.starts_with("Result<") && returns.ends_with(",ToolError>");
    let payload_type = if handles_refusal {
        returns["Result<".len()..returns.len() - ",ToolError>".len()].to_string()
    } else {
        returns
    };
    let refusal = move |refused: crate::host::HostError| -> Result<Value, VmError> {
        let err = VmError::from(refused);
        if handles_refusal
            && matches!(
                err.kind(),
                crate::ErrorKind::NotEnabled | crate::ErrorKind::Type
            )
        {
            return Ok(Value::err(Value::record(
                "ToolError",
                vec![
                    ("message", Value::str(err.message())),
                    ("kind", Value::str(err.kind().as_str())),
                ],
            )));
        }
        Err(err)
    };
    if let Err(refused) = ctx.host.tools.check(&program, &conn.name, name) {
        return refusal(refused).map(Flow::Value);
    }
    let params: Vec<(&str, bool)> = declared
        .get("params")
        .and_then(|p| p.as_array())
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let optional = p
                        .get("type")
                        .and_then(|t| t.as_str())
                        .is_some_and(|t| t.trim_start().starts_with("Option<"));
                    Some((p.get("name")?.as_str()?, optional))
                })
                .collect()
        })
        .unwrap_or_default();
    if args.len() > params.len() {
        return Err(VmError::new(
            crate::ErrorKind::Arity,
            format!(
                "MCP tool {}.{name} takes {} arguments, got {}",
                conn.name,
                params.len(),
                args.len()
            ),
        ));
    }
    // An `Option` parameter given `None` is left out (the server's default applies);
    // `Some(v)` sends `v`.
    let mut obj = serde_json::Map::new();
    for ((param, optional), arg) in params.iter().zip(args) {
        let json = match arg {
            Value::None if *optional => continue,
            Value::Some(v) if *optional => v.to_json(),
            other => other.to_json(),
        };
        obj.insert((*param).to_string(), json);
    }
    ctx.stats.tool_calls += 1;
    let fut = ctx
        .host
        .tools
        .call(&program, &conn.name, name, serde_json::Value::Object(obj));
    let tool = format!("{}.{name}", conn.name);
    // Not entered around the call: the MCP client may start the server's session inside
    // it, and a span made current there would stay open as long as the session does.
    let span = crate::spans::mcp_call(&conn.name, name);
    Ok(Flow::Suspend(Box::pin(async move {
        let result = fut.await;
        match &result {
            Ok(Value::Err(_)) => crate::spans::record_error(&span, "tool_error"),
            Err(e) => crate::spans::record_error(&span, crate::spans::host_error_type(e.kind)),
            Ok(_) => {}
        }
        drop(span);
        match result {
            Ok(Value::Ok(payload)) => {
                let value = mcp_payload(&program, &payload_type, (**payload).clone());
                Ok(if handles_refusal {
                    Value::ok(value)
                } else {
                    value
                })
            }
            Ok(Value::Err(e)) if !handles_refusal => {
                let message = match &**e {
                    Value::Struct(s) => s.get("message").map(|m| m.to_display()),
                    _ => None,
                }
                .unwrap_or_else(|| e.to_display());
                Err(VmError::new(
                    crate::ErrorKind::Host,
                    format!("MCP tool {tool} failed: {message}"),
                ))
            }
            Ok(other) => Ok(other),
            Err(failed) => refusal(failed),
        }
    })))
}

/// An MCP tool's converted result in its declared shape `ty` (spaces removed): `Option<T>`
/// is `None` for nil and `Some` otherwise, a map becomes the declared struct (its declared
/// fields first, in order, nil when absent, then any others); anything else as it is.
fn mcp_payload(program: &concerto_ir::Program, ty: &str, value: Value) -> Value {
    if let Some(inner) = ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        return match value {
            Value::Nil | Value::None => Value::None,
            other => Value::some(mcp_payload(program, inner, other)),
        };
    }
    let Value::Map(map) = &value else {
        return value;
    };
    let Some(concerto_ir::TypeDefKind::Struct { fields }) = program
        .type_id(ty)
        .and_then(|id| program.types.get(id as usize))
        .map(|t| &t.kind)
    else {
        return value;
    };
    let entries = map.entries();
    let declared: Vec<&str> = fields.iter().map(|f| &**program.name(*f)).collect();
    let mut out: Vec<(&str, Value)> = declared
        .iter()
        .map(|f| {
            let v = entries
                .iter()
                .find(|(k, _)| k.as_str() == *f)
                .map_or(Value::Nil, |(_, v)| v.clone());
            (*f, v)
        })
        .collect();
    for (k, v) in &entries {
        if !declared.contains(&k.as_str()) {
            out.push((k.as_str(), v.clone()));
        }
    }
    Value::record(ty, out)
}

#[cold]
/// Methods of a range: `len`, `is_empty`, `contains(i)`, `to_string`.
fn range_method(
    method: Method,
    name: &str,
    r: &crate::value::Range,
    args: &[Value],
) -> Result<Flow, VmError> {
    match method {
        Method::Len => value(Value::Int(crate::ops::range_len(r)?)),
        Method::IsEmpty => value(Value::Bool(r.is_empty())),
        Method::Contains => {
            let Value::Int(i) = arg(args, 0) else {
                return Err(VmError::type_error(format!(
                    "Range.contains expects an Int, got {}",
                    arg(args, 0).type_name()
                )));
            };
            let above = *i >= r.start;
            let below = match r.end {
                None => true,
                Some(end) if r.inclusive => *i <= end,
                Some(end) => *i < end,
            };
            value(Value::Bool(above && below))
        }
        Method::ToString => value(Value::str(r.to_string())),
        _ => Err(VmError::type_error(format!("no method '{name}' on Range"))),
    }
}

fn no_method(recv: &Value, name: &str) -> VmError {
    VmError::type_error(format!("no method '{name}' on {}", recv.type_name()))
}

fn value(v: Value) -> Result<Flow, VmError> {
    Ok(Flow::Value(v))
}

fn string_method(
    ctx: &mut Ctx,
    method: Method,
    name: &str,
    s: &Str,
    args: &[Value],
) -> Result<Flow, VmError> {
    let std_name = match method {
        Method::Len => return value(Value::Int(crate::ops::char_len(s))),
        Method::IsEmpty => return value(Value::Bool(s.is_empty())),
        Method::ToUppercase | Method::ToUpper => "to_upper",
        Method::ToLowercase | Method::ToLower => "to_lower",
        Method::Contains => "contains",
        Method::Trim => "trim",
        Method::TrimStart => "trim_start",
        Method::TrimEnd => "trim_end",
        Method::Split => "split",
        Method::StartsWith => "starts_with",
        Method::EndsWith => "ends_with",
        Method::Replace => "replace",
        Method::Substring => "substring",
        Method::Repeat => "repeat",
        Method::Reverse => "reverse",
        Method::ParseInt => "parse_int",
        Method::ParseFloat => "parse_float",
        Method::Chars => "chars",
        Method::Lines => "lines",
        Method::ToString => return value(Value::Str(s.clone())),
        _ => return Err(VmError::type_error(format!("no method '{name}' on String"))),
    };
    // The `contains` method takes any value and compares with its display form.
    if method == Method::Contains && !matches!(args.get(1), Some(Value::Str(_))) {
        let needle = Value::str(builtins::arg(args, 1).to_display());
        return builtins::call_by_name(ctx, "std::string::contains", &[args[0].clone(), needle]);
    }
    builtins::call_by_name(ctx, &format!("std::string::{std_name}"), args)
}

/// Higher-order operations over a sequence of values, run as a native continuation.
struct SeqOp {
    kind: SeqKind,
    items: Vec<Value>,
    f: Value,
    idx: usize,
    started: bool,
    out: Vec<Value>,
    acc: Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SeqKind {
    Map,
    Filter,
    Find,
    Any,
    All,
    ForEach,
    Reduce,
}

impl SeqOp {
    fn new(kind: SeqKind, items: Vec<Value>, f: Value, acc: Value) -> SeqOp {
        // `map` yields one value per item: its output is allocated once.
        let out = match kind {
            SeqKind::Map => Vec::with_capacity(items.len()),
            _ => Vec::new(),
        };
        SeqOp {
            kind,
            items,
            f,
            idx: 0,
            started: false,
            out,
            acc,
        }
    }

    fn call_next(&self) -> Step {
        let item = self.items[self.idx].clone();
        let args = match self.kind {
            SeqKind::Reduce => smallvec::smallvec![self.acc.clone(), item],
            _ => smallvec::smallvec![item],
        };
        Step::Call(self.f.clone(), args)
    }

    fn finish(&mut self) -> Value {
        match self.kind {
            SeqKind::Map | SeqKind::Filter => Value::array(std::mem::take(&mut self.out)),
            SeqKind::Find => Value::None,
            SeqKind::Any => Value::Bool(false),
            SeqKind::All => Value::Bool(true),
            SeqKind::ForEach => Value::Nil,
            SeqKind::Reduce => std::mem::take(&mut self.acc),
        }
    }
}

impl Continuation for SeqOp {
    fn resume(&mut self, _ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError> {
        let result = input?;
        if self.started {
            let item = &self.items[self.idx];
            match self.kind {
                SeqKind::Map => self.out.push(result),
                SeqKind::Filter => {
                    if result.is_truthy() {
                        if self.out.capacity() == 0 {
                            // At most the items left: one allocation, not a doubling series.
                            self.out.reserve_exact(self.items.len() - self.idx);
                        }
                        self.out.push(item.clone());
                    }
                }
                SeqKind::Find => {
                    if result.is_truthy() {
                        return Ok(Step::Return(Value::some(item.clone())));
                    }
                }
                SeqKind::Any => {
                    if result.is_truthy() {
                        return Ok(Step::Return(Value::Bool(true)));
                    }
                }
                SeqKind::All => {
                    if !result.is_truthy() {
                        return Ok(Step::Return(Value::Bool(false)));
                    }
                }
                SeqKind::ForEach => {}
                SeqKind::Reduce => self.acc = result,
            }
            self.idx += 1;
        }
        self.started = true;
        if self.idx >= self.items.len() {
            return Ok(Step::Return(self.finish()));
        }
        Ok(self.call_next())
    }

    fn frame_name(&self) -> &str {
        match self.kind {
            SeqKind::Map => "<array map>",
            SeqKind::Filter => "<array filter>",
            SeqKind::Find => "<array find>",
            SeqKind::Any => "<array any>",
            SeqKind::All => "<array all>",
            SeqKind::ForEach => "<array for_each>",
            SeqKind::Reduce => "<array reduce>",
        }
    }
}

fn int_arg(args: &[Value], idx: usize, what: &str) -> Result<i64, VmError> {
    match arg(args, idx) {
        Value::Int(i) => Ok(*i),
        other => Err(VmError::type_error(format!(
            "{what} expects an Int, got {}",
            other.type_name()
        ))),
    }
}

fn array_method(method: Method, name: &str, a: &Array, args: &[Value]) -> Result<Flow, VmError> {
    let seq = |kind: SeqKind, f: Value, acc: Value| -> Result<Flow, VmError> {
        Ok(Flow::Start(Box::new(SeqOp::new(kind, a.to_vec(), f, acc))))
    };
    match method {
        Method::Len => value(Value::Int(a.len() as i64)),
        Method::IsEmpty => value(Value::Bool(a.is_empty())),
        Method::Push => {
            a.0.lock().push(arg(args, 0).clone());
            value(Value::Nil)
        }
        Method::Pop => value(Value::option(a.0.lock().pop())),
        Method::First => value(Value::option(a.0.lock().first().cloned())),
        Method::Last => value(Value::option(a.0.lock().last().cloned())),
        Method::Get => {
            let idx = int_arg(args, 0, "Array.get")?;
            value(Value::option(
                usize::try_from(idx).ok().and_then(|i| a.get(i)),
            ))
        }
        // Compared on a snapshot: comparing may lock the needle, which may be this array.
        Method::Contains => {
            let needle = arg(args, 0);
            value(Value::Bool(a.to_vec().iter().any(|v| v.equals(needle))))
        }
        Method::IndexOf => {
            let needle = arg(args, 0);
            let pos = a.to_vec().iter().position(|v| v.equals(needle));
            value(Value::option(pos.map(|p| Value::Int(p as i64))))
        }
        Method::Join => {
            let sep = match arg(args, 0) {
                Value::Nil => String::new(),
                other => other.to_display(),
            };
            let items = a.to_vec();
            let parts: Vec<String> = items.iter().map(Value::to_display).collect();
            value(Value::str(parts.join(&sep)))
        }
        Method::Reverse => {
            let mut items = a.to_vec();
            items.reverse();
            value(Value::array(items))
        }
        Method::Slice => {
            let items = a.to_vec();
            let len = items.len() as i64;
            let start = int_arg(args, 0, "Array.slice")?.clamp(0, len) as usize;
            let end = match arg(args, 1) {
                Value::Nil => len,
                _ => int_arg(args, 1, "Array.slice")?.clamp(0, len),
            } as usize;
            value(Value::array(if start < end {
                items[start..end].to_vec()
            } else {
                Vec::new()
            }))
        }
        Method::Concat => match arg(args, 0) {
            Value::Array(other) => {
                let mut items = a.to_vec();
                items.extend(other.to_vec());
                value(Value::array(items))
            }
            other => Err(VmError::type_error(format!(
                "Array.concat expects an Array, got {}",
                other.type_name()
            ))),
        },
        Method::Insert => {
            let idx = int_arg(args, 0, "Array.insert")?;
            let mut items = a.0.lock();
            let len = items.len();
            match usize::try_from(idx).ok().filter(|&i| i <= len) {
                Some(i) => {
                    items.insert(i, arg(args, 1).clone());
                    value(Value::Nil)
                }
                None => Err(VmError::index_out_of_bounds(idx, len)),
            }
        }
        Method::Remove => {
            let idx = int_arg(args, 0, "Array.remove")?;
            let mut items = a.0.lock();
            let len = items.len();
            match usize::try_from(idx).ok().filter(|&i| i < len) {
                Some(i) => value(items.remove(i)),
                None => Err(VmError::index_out_of_bounds(idx, len)),
            }
        }
        Method::Clear => {
            a.0.lock().clear();
            value(Value::Nil)
        }
        Method::Sort => {
            let mut items = a.to_vec();
            let mut failure = None;
            items.sort_by(|x, y| match (x, y) {
                (Value::Int(p), Value::Int(q)) => p.cmp(q),
                (Value::Str(p), Value::Str(q)) => p.as_str().cmp(q.as_str()),
                _ => match (x.as_f64(), y.as_f64()) {
                    (Some(p), Some(q)) => p.total_cmp(&q),
                    _ => {
                        failure.get_or_insert_with(|| {
                            VmError::type_error(format!(
                                "cannot sort {} with {}",
                                x.type_name(),
                                y.type_name()
                            ))
                        });
                        std::cmp::Ordering::Equal
                    }
                },
            });
            if let Some(err) = failure {
                return Err(err);
            }
            *a.0.lock() = items.clone();
            value(Value::array(items))
        }
        Method::Sum => {
            let items = a.to_vec();
            let mut int_sum: i64 = 0;
            let mut float_sum: Option<f64> = None;
            for item in &items {
                match item {
                    Value::Int(i) => {
                        int_sum = int_sum.wrapping_add(*i);
                    }
                    Value::Float(f) => *float_sum.get_or_insert(0.0) += f,
                    other => {
                        return Err(VmError::type_error(format!(
                            "Array.sum needs numbers, found {}",
                            other.type_name()
                        )));
                    }
                }
            }
            value(match float_sum {
                Some(f) => Value::Float(f + int_sum as f64),
                None => Value::Int(int_sum),
            })
        }
        Method::Min | Method::Max => {
            let items = a.to_vec();
            let mut best: Option<Value> = None;
            for item in items {
                let better = match &best {
                    None => true,
                    Some(b) => {
                        let ord = crate::ops::compare(&item, b, concerto_ir::BinOp::Lt)?;
                        match (method, ord) {
                            (Method::Min, Some(o)) => o.is_lt(),
                            (Method::Max, Some(o)) => o.is_gt(),
                            _ => false,
                        }
                    }
                };
                if better {
                    best = Some(item);
                }
            }
            value(Value::option(best))
        }
        Method::Iter => value(Value::Array(a.clone())),
        Method::Enumerate => {
            let items = a.to_vec();
            value(Value::array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| Value::array(vec![Value::Int(i as i64), v]))
                    .collect(),
            ))
        }
        Method::Map => seq(SeqKind::Map, arg(args, 0).clone(), Value::Nil),
        Method::Filter => seq(SeqKind::Filter, arg(args, 0).clone(), Value::Nil),
        Method::Find => seq(SeqKind::Find, arg(args, 0).clone(), Value::Nil),
        Method::Any => seq(SeqKind::Any, arg(args, 0).clone(), Value::Nil),
        Method::All => seq(SeqKind::All, arg(args, 0).clone(), Value::Nil),
        Method::ForEach => seq(SeqKind::ForEach, arg(args, 0).clone(), Value::Nil),
        Method::Reduce | Method::Fold => {
            seq(SeqKind::Reduce, arg(args, 1).clone(), arg(args, 0).clone())
        }
        Method::ToString => value(Value::str(Value::Array(a.clone()).to_display())),
        _ => Err(VmError::type_error(format!("no method '{name}' on Array"))),
    }
}

fn map_key(v: &Value) -> Str {
    match v {
        Value::Str(s) => s.clone(),
        other => Str::from(other.to_display()),
    }
}

fn map_method(method: Method, name: &str, m: &Map, args: &[Value]) -> Result<Flow, VmError> {
    match method {
        Method::Len => value(Value::Int(m.len() as i64)),
        Method::IsEmpty => value(Value::Bool(m.is_empty())),
        Method::Get => value(Value::option(m.get(&map_key(arg(args, 0))))),
        // The key is worked out before the map is locked: it may be the map itself, whose
        // display would take the same lock.
        Method::Has | Method::ContainsKey => {
            let key = map_key(arg(args, 0));
            value(Value::Bool(m.0.lock().contains_key(key.as_str())))
        }
        Method::Set | Method::Insert => {
            let key = map_key(arg(args, 0));
            m.0.lock().insert(key, arg(args, 1).clone());
            value(Value::Nil)
        }
        Method::Delete | Method::Remove => {
            let key = map_key(arg(args, 0));
            let removed = m.0.lock().shift_remove(key.as_str());
            value(Value::Bool(removed.is_some()))
        }
        Method::Keys => value(Value::array(
            m.0.lock().keys().map(|k| Value::Str(k.clone())).collect(),
        )),
        Method::Values => value(Value::array(m.0.lock().values().cloned().collect())),
        Method::Entries => value(Value::array(
            m.entries()
                .into_iter()
                .map(|(k, v)| Value::array(vec![Value::Str(k), v]))
                .collect(),
        )),
        Method::Clear => {
            m.0.lock().clear();
            value(Value::Nil)
        }
        Method::ToString => value(Value::str(Value::Map(m.clone()).to_display())),
        _ => Err(VmError::type_error(format!("no method '{name}' on Map"))),
    }
}

/// A continuation that calls `f(payload)` once and post-processes the result.
struct Apply {
    f: Value,
    payload: Option<Value>,
    wrap: fn(Value) -> Value,
}

impl Continuation for Apply {
    fn resume(&mut self, _ctx: &mut Ctx, input: Result<Value, VmError>) -> Result<Step, VmError> {
        let result = input?;
        match self.payload.take() {
            Some(p) => Ok(Step::Call(self.f.clone(), smallvec::smallvec![p])),
            None => Ok(Step::Return((self.wrap)(result))),
        }
    }

    fn frame_name(&self) -> &str {
        "<callback>"
    }
}

fn apply(f: &Value, payload: Value, wrap: fn(Value) -> Value) -> Result<Flow, VmError> {
    Ok(Flow::Start(Box::new(Apply {
        f: f.clone(),
        payload: Some(payload),
        wrap,
    })))
}

fn unwrap_error(recv: &Value) -> VmError {
    match recv {
        Value::Err(e) => VmError::new(
            ErrorKind::Unwrap,
            format!("called unwrap() on Err({})", e.to_display()),
        ),
        _ => VmError::new(ErrorKind::Unwrap, "called unwrap() on None"),
    }
}

fn result_method(
    method: Method,
    name: &str,
    recv: &Value,
    args: &[Value],
) -> Result<Flow, VmError> {
    let (is_ok, payload) = match recv {
        Value::Ok(v) => (true, (**v).clone()),
        Value::Err(e) => (false, (**e).clone()),
        _ => return Err(no_method(recv, name)),
    };
    match method {
        Method::IsOk => value(Value::Bool(is_ok)),
        Method::IsErr => value(Value::Bool(!is_ok)),
        Method::Unwrap if is_ok => value(payload),
        Method::Unwrap => Err(unwrap_error(recv)),
        Method::Expect if is_ok => value(payload),
        Method::Expect => Err(VmError::new(
            ErrorKind::Unwrap,
            format!("{}: {}", arg(args, 0).to_display(), payload.to_display()),
        )),
        Method::UnwrapOr => value(if is_ok { payload } else { arg(args, 0).clone() }),
        Method::UnwrapErr if !is_ok => value(payload),
        Method::UnwrapErr => Err(VmError::new(
            ErrorKind::Unwrap,
            format!("called unwrap_err() on Ok({})", payload.to_display()),
        )),
        Method::Ok => value(if is_ok {
            Value::some(payload)
        } else {
            Value::None
        }),
        Method::Err => value(if is_ok {
            Value::None
        } else {
            Value::some(payload)
        }),
        Method::Map if is_ok => apply(arg(args, 0), payload, Value::ok),
        Method::MapErr if !is_ok => apply(arg(args, 0), payload, Value::err),
        Method::AndThen if is_ok => apply(arg(args, 0), payload, |v| v),
        Method::Map | Method::MapErr | Method::AndThen => value(recv.clone()),
        Method::ToString => value(Value::str(recv.to_display())),
        _ => Err(no_method(recv, name)),
    }
}

fn option_method(
    method: Method,
    name: &str,
    recv: &Value,
    args: &[Value],
) -> Result<Flow, VmError> {
    let payload = match recv {
        Value::Some(v) => Some((**v).clone()),
        _ => None,
    };
    match (method, payload) {
        (Method::IsSome, p) => value(Value::Bool(p.is_some())),
        (Method::IsNone, p) => value(Value::Bool(p.is_none())),
        (Method::Unwrap, Some(p)) => value(p),
        (Method::Unwrap, None) => Err(unwrap_error(recv)),
        (Method::Expect, Some(p)) => value(p),
        (Method::Expect, None) => Err(VmError::new(ErrorKind::Unwrap, arg(args, 0).to_display())),
        (Method::UnwrapOr, p) => value(p.unwrap_or_else(|| arg(args, 0).clone())),
        (Method::OkOr, Some(p)) => value(Value::ok(p)),
        (Method::OkOr, None) => value(Value::err(arg(args, 0).clone())),
        (Method::Map, Some(p)) => apply(arg(args, 0), p, Value::some),
        (Method::AndThen, Some(p)) => apply(arg(args, 0), p, |v| v),
        (Method::Filter, Some(p)) => {
            // `Some(p)` when the predicate holds: a one-element `find`.
            Ok(Flow::Start(Box::new(SeqOp::new(
                SeqKind::Find,
                vec![p],
                arg(args, 0).clone(),
                Value::Nil,
            ))))
        }
        (Method::Map | Method::AndThen | Method::Filter, None) => value(Value::None),
        (Method::ToString, _) => value(Value::str(recv.to_display())),
        _ => Err(no_method(recv, name)),
    }
}

/// Converts a store reply into a flow, mapping the result to a value.
fn reply<T: Send + 'static>(
    r: Reply<Result<T, crate::host::HostError>>,
    to_value: fn(T) -> Value,
) -> Result<Flow, VmError> {
    match r {
        Reply::Ready(Ok(v)) => Ok(Flow::Value(to_value(v))),
        Reply::Ready(Err(e)) => Err(e.into()),
        Reply::Pending(fut) => Ok(Flow::Suspend(Box::pin(async move {
            fut.await.map(to_value).map_err(VmError::from)
        }))),
    }
}

/// `HASH_MAP_*` opcodes (never emitted by concertoc 1a8ede9; hand-written IR may use them).
/// `args` are the operands: the key (and value for `SET`), or the predicate for `QUERY`.
pub(crate) fn hashmap_opcode(
    ctx: &mut Ctx,
    op: HashmapOp,
    map: u32,
    args: &[Value],
) -> Result<Flow, VmError> {
    let (method, name) = match op {
        HashmapOp::Set => (Method::Set, "set"),
        HashmapOp::Get => (Method::Get, "get"),
        HashmapOp::Has => (Method::Has, "has"),
        HashmapOp::Delete => (Method::Delete, "delete"),
        HashmapOp::Query => (Method::Query, "query"),
    };
    let flow = crate::hashmaps::method(ctx, method, name, MapId(map), &Str::from(""), args)?;
    // The reference's `HASH_MAP_DELETE` pushes nil.
    Ok(match (op, flow) {
        (HashmapOp::Delete, Flow::Value(_)) => Flow::Value(Value::Nil),
        (_, flow) => flow,
    })
}

#[cold]
fn arity(what: &str, expected: usize, got: usize) -> VmError {
    VmError::new(
        ErrorKind::Arity,
        format!(
            "call error: {what} takes {expected} argument{}, got {got}",
            if expected == 1 { "" } else { "s" }
        ),
    )
}

/// A ledger created by `scope(prefix)`: a separate store named `<ledger>::<prefix>`.
pub(crate) struct ScopedLedger(pub(crate) String);

impl crate::value::NativeObject for ScopedLedger {
    fn type_name(&self) -> &str {
        "LedgerRef"
    }
    fn display(&self) -> String {
        format!("<ledger {}>", self.0)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn keys_arg(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.to_vec().iter().map(Value::to_display).collect(),
        other => vec![other.to_display()],
    }
}

fn ledger_entry_type() -> Arc<StructType> {
    StructType::new(
        "LedgerEntry",
        vec![
            Arc::from("identifier"),
            Arc::from("keys"),
            Arc::from("value"),
        ],
    )
}

fn entries_value(entries: Vec<LedgerEntry>) -> Value {
    let ty = ledger_entry_type();
    Value::array(
        entries
            .into_iter()
            .map(|e| {
                Value::Struct(StructObj::new(
                    ty.clone(),
                    vec![
                        Value::str(e.identifier),
                        Value::array(e.keys.into_iter().map(Value::str).collect()),
                        e.value,
                    ],
                ))
            })
            .collect(),
    )
}

fn ledger_method(
    ctx: &mut Ctx,
    method: Method,
    name: &str,
    ledger: &str,
    args: &[Value],
) -> Result<Flow, VmError> {
    let store = ctx.host.memory.clone();
    let text = |i: usize| arg(args, i).to_display();
    match method {
        Method::Insert => {
            if args.len() < 3 {
                return Err(arity("Ledger.insert", 3, args.len()));
            }
            let entry = LedgerEntry {
                identifier: text(0),
                keys: keys_arg(&args[1]),
                // Ledger values are text (spec 21): arguments convert with display.
                value: Value::str(text(2)),
            };
            reply(store.ledger_insert(ledger, entry), |_| Value::Nil)
        }
        Method::Update => reply(
            store.ledger_update(ledger, &text(0), Value::str(text(1))),
            Value::Bool,
        ),
        Method::UpdateKeys => reply(
            store.ledger_update_keys(ledger, &text(0), keys_arg(arg(args, 1))),
            Value::Bool,
        ),
        Method::Delete | Method::Remove => {
            reply(store.ledger_delete(ledger, &text(0)), Value::Bool)
        }
        Method::Query => {
            // `query()` returns the ledger itself so `query().from_key(..)` chains.
            if ctx.program().ledgers.iter().any(|l| l.name == ledger) {
                let idx = ctx
                    .program()
                    .ledgers
                    .iter()
                    .position(|l| l.name == ledger)
                    .unwrap_or(0);
                value(Value::Ref(crate::value::RefValue {
                    kind: RefKind::Ledger,
                    program: ctx.vm.registry_id,
                    index: idx as u32,
                }))
            } else {
                value(Value::Object(crate::value::Object::new(ScopedLedger(
                    ledger.to_string(),
                ))))
            }
        }
        Method::FromIdentifier => reply(
            store.ledger_query(ledger, LedgerQuery::Identifier(text(0))),
            entries_value,
        ),
        Method::FromKey => reply(
            store.ledger_query(ledger, LedgerQuery::Key(text(0))),
            entries_value,
        ),
        Method::FromAnyKeys => reply(
            store.ledger_query(ledger, LedgerQuery::AnyKeys(keys_arg(arg(args, 0)))),
            entries_value,
        ),
        Method::FromExactKeys => reply(
            store.ledger_query(ledger, LedgerQuery::ExactKeys(keys_arg(arg(args, 0)))),
            entries_value,
        ),
        Method::Len => reply(store.ledger_entries(ledger), |e| Value::Int(e.len() as i64)),
        Method::IsEmpty => reply(store.ledger_entries(ledger), |e| Value::Bool(e.is_empty())),
        Method::Clear => reply(store.ledger_clear(ledger), |_| Value::Nil),
        Method::Entries => reply(store.ledger_entries(ledger), entries_value),
        Method::Identifiers => reply(store.ledger_entries(ledger), |e| {
            Value::array(e.into_iter().map(|e| Value::str(e.identifier)).collect())
        }),
        Method::Scope => {
            let scoped = format!("{ledger}::{}", text(0));
            value(Value::Object(crate::value::Object::new(ScopedLedger(
                scoped,
            ))))
        }
        _ => Err(VmError::type_error(format!(
            "no method '{name}' on Ledger `{ledger}`"
        ))),
    }
}

fn message_type() -> Arc<StructType> {
    StructType::new("Message", vec![Arc::from("role"), Arc::from("content")])
}

fn messages_value(messages: Vec<ChatMessage>) -> Value {
    let ty = message_type();
    Value::array(
        messages
            .into_iter()
            .map(|m| {
                Value::Struct(StructObj::new(
                    ty.clone(),
                    vec![Value::str(m.role), Value::str(m.content)],
                ))
            })
            .collect(),
    )
}

fn memory_method(
    ctx: &mut Ctx,
    method: Method,
    name: &str,
    memory: u32,
    args: &[Value],
) -> Result<Flow, VmError> {
    let store = ctx.host.memory.clone();
    let decl = ctx.program().memories[memory as usize].clone();
    match method {
        Method::Append => {
            if args.len() < 2 {
                return Err(arity("Memory.append", 2, args.len()));
            }
            let message = ChatMessage::new(args[0].to_display(), args[1].to_display());
            reply(
                store.memory_append(&decl.name, decl.max_messages, message),
                |_| Value::Nil,
            )
        }
        Method::Messages => reply(store.memory_messages(&decl.name), messages_value),
        Method::Last => {
            let n = match arg(args, 0) {
                Value::Int(n) => *n,
                other => {
                    return Err(VmError::type_error(format!(
                        "Memory.last expects an Int, got {}",
                        other.type_name()
                    )));
                }
            };
            let n = n.max(0) as usize;
            let r = store.memory_messages(&decl.name);
            match r {
                Reply::Ready(Ok(msgs)) => {
                    let skip = msgs.len().saturating_sub(n);
                    value(messages_value(msgs.into_iter().skip(skip).collect()))
                }
                Reply::Ready(Err(e)) => Err(e.into()),
                Reply::Pending(fut) => Ok(Flow::Suspend(Box::pin(async move {
                    let msgs = fut.await.map_err(VmError::from)?;
                    let skip = msgs.len().saturating_sub(n);
                    Ok(messages_value(msgs.into_iter().skip(skip).collect()))
                }))),
            }
        }
        Method::Len => reply(store.memory_messages(&decl.name), |m| {
            Value::Int(m.len() as i64)
        }),
        Method::IsEmpty => reply(store.memory_messages(&decl.name), |m| {
            Value::Bool(m.is_empty())
        }),
        Method::Clear => reply(store.memory_clear(&decl.name), |_| Value::Nil),
        _ => Err(VmError::type_error(format!(
            "no method '{name}' on Memory `{}`",
            decl.name
        ))),
    }
}
