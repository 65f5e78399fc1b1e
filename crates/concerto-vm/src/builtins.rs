//! The table of native functions: global built-ins (`print`, `len`, `Ok`, …) and the
//! in-process standard library (`std::math`, `std::string`, `std::json`, …).
//!
//! A built-in is reached as a global value [`Value::Builtin`] holding its index in
//! [`BUILTINS`]; names are resolved once when a program is prepared.

use crate::error::{ErrorKind, VmError};
use crate::exec::{Ctx, Flow};
use crate::stdlib;
use crate::value::Value;

/// A native function: gets the arguments (borrowed from the stack) and the execution context.
pub(crate) type BuiltinFn = fn(&mut Ctx, &[Value]) -> Result<Flow, VmError>;

/// One entry of the table.
pub(crate) struct Builtin {
    pub(crate) name: &'static str,
    pub(crate) func: BuiltinFn,
}

macro_rules! table {
    ($($name:literal => $func:path),* $(,)?) => {
        pub(crate) static BUILTINS: &[Builtin] = &[$(Builtin { name: $name, func: $func }),*];
    };
}

table! {
    "print" => stdlib::core::print,
    "println" => stdlib::core::println,
    "Ok" => stdlib::core::ok,
    "Err" => stdlib::core::err,
    "Some" => stdlib::core::some,
    "env" => stdlib::core::env,
    "len" => stdlib::core::len,
    "typeof" => stdlib::core::type_of,
    "panic" => stdlib::core::panic,
    "assert" => stdlib::core::assert,
    "assert_eq" => stdlib::core::assert_eq,
    "assert_ne" => stdlib::core::assert_ne,
    "test_emits" => stdlib::core::test_emits,
    "ToolError::new" => stdlib::core::tool_error_new,

    "std::math::abs" => stdlib::math::abs,
    "std::math::min" => stdlib::math::min,
    "std::math::max" => stdlib::math::max,
    "std::math::clamp" => stdlib::math::clamp,
    "std::math::round" => stdlib::math::round,
    "std::math::floor" => stdlib::math::floor,
    "std::math::ceil" => stdlib::math::ceil,
    "std::math::pow" => stdlib::math::pow,
    "std::math::sqrt" => stdlib::math::sqrt,
    "std::math::random" => stdlib::math::random,
    "std::math::random_int" => stdlib::math::random_int,

    "std::string::split" => stdlib::string::split,
    "std::string::join" => stdlib::string::join,
    "std::string::trim" => stdlib::string::trim,
    "std::string::trim_start" => stdlib::string::trim_start,
    "std::string::trim_end" => stdlib::string::trim_end,
    "std::string::replace" => stdlib::string::replace,
    "std::string::to_upper" => stdlib::string::to_upper,
    "std::string::to_lower" => stdlib::string::to_lower,
    "std::string::contains" => stdlib::string::contains,
    "std::string::starts_with" => stdlib::string::starts_with,
    "std::string::ends_with" => stdlib::string::ends_with,
    "std::string::substring" => stdlib::string::substring,
    "std::string::len" => stdlib::string::len,
    "std::string::repeat" => stdlib::string::repeat,
    "std::string::reverse" => stdlib::string::reverse,
    "std::string::parse_int" => stdlib::string::parse_int,
    "std::string::parse_float" => stdlib::string::parse_float,
    "std::string::chars" => stdlib::string::chars,
    "std::string::lines" => stdlib::string::lines,
    "std::string::is_empty" => stdlib::string::is_empty,

    "std::json::parse" => stdlib::json::parse,
    "std::json::parse_as" => stdlib::json::parse,
    "std::json::stringify" => stdlib::json::stringify,
    "std::json::stringify_pretty" => stdlib::json::stringify_pretty,
    "std::json::is_valid" => stdlib::json::is_valid,

    "std::env::get" => stdlib::env::get,
    "std::env::require" => stdlib::env::require,
    "std::env::all" => stdlib::env::all,
    "std::env::has" => stdlib::env::has,

    "std::time::now" => stdlib::time::now,
    "std::time::now_ms" => stdlib::time::now_ms,
    "std::time::sleep" => stdlib::time::sleep,
    "std::time::measure" => stdlib::time::measure,

    "std::fmt::format" => stdlib::fmt::format,
    "std::fmt::pad_left" => stdlib::fmt::pad_left,
    "std::fmt::pad_right" => stdlib::fmt::pad_right,
    "std::fmt::truncate" => stdlib::fmt::truncate,
    "std::fmt::indent" => stdlib::fmt::indent,

    "std::log::info" => stdlib::log::info,
    "std::log::warn" => stdlib::log::warn,
    "std::log::error" => stdlib::log::error,
    "std::log::debug" => stdlib::log::debug,

    "std::crypto::sha256" => stdlib::crypto::sha256,
    "std::crypto::md5" => stdlib::crypto::md5,
    "std::crypto::uuid" => stdlib::crypto::uuid,
    "std::crypto::random_bytes" => stdlib::crypto::random_bytes,

    "std::prompt::template" => stdlib::prompt::template,
    "std::prompt::from_file" => stdlib::prompt::from_file,
    "std::prompt::count_tokens" => stdlib::prompt::count_tokens,

    "std::collections::Set::new" => stdlib::collections::set_new,
    "std::collections::Set::from" => stdlib::collections::set_from,
    "std::collections::Queue::new" => stdlib::collections::queue_new,
    "std::collections::Stack::new" => stdlib::collections::stack_new,

    "std::fs::read_file" => stdlib::outside::read_file,
    "std::fs::write_file" => stdlib::outside::write_file,
    "std::fs::append_file" => stdlib::outside::append_file,
    "std::fs::exists" => stdlib::outside::exists,
    "std::fs::list_dir" => stdlib::outside::list_dir,
    "std::fs::remove_file" => stdlib::outside::remove_file,
    "std::fs::file_size" => stdlib::outside::file_size,

    "std::http::get" => stdlib::outside::get,
    "std::http::post" => stdlib::outside::post,
    "std::http::put" => stdlib::outside::put,
    "std::http::delete" => stdlib::outside::delete,
    "std::http::request" => stdlib::outside::generic,
}

/// Number of native functions; ids at or above it are enum constructors.
pub(crate) const BUILTIN_COUNT: usize = 90;

const _: () = assert!(BUILTINS.len() == BUILTIN_COUNT);

const STD_MODULES: &[&str] = &[
    "std::math",
    "std::string",
    "std::json",
    "std::env",
    "std::time",
    "std::fmt",
    "std::log",
    "std::crypto",
    "std::prompt",
    "std::collections",
    "std::fs",
    "std::http",
];

/// The value a global name denotes among the built-ins, if any.
pub(crate) fn lookup(name: &str) -> Option<Value> {
    if name == "None" {
        return Some(Value::None);
    }
    BUILTINS
        .iter()
        .position(|b| b.name == name)
        .map(|idx| Value::Builtin(idx as u32))
}

/// Whether `module` (e.g. `std::math`) is a standard-library module.
pub(crate) fn is_std_module(module: &str) -> bool {
    STD_MODULES.contains(&module) || module.starts_with("std::collections")
}

/// The name of built-in `id`.
/// The [`Value::Builtin`] id of the constructor of tuple variant `variant` of enum type `ty`:
/// past the table, with the type and variant in the id itself, so that a constructor
/// compared with a value of its variant can tell (7ad10db compiles the pattern
/// `Shape::Circle(r)` as `value == Shape::Circle`). `None` past 65 535 types or variants.
pub(crate) fn enum_ctor_id(ty: u32, variant: u32) -> Option<u32> {
    if ty >= 0xFFFF || variant > 0xFFFF {
        return None;
    }
    u32::try_from(BUILTIN_COUNT)
        .ok()?
        .checked_add((ty << 16) | variant)
}

/// The (type, variant) of an enum constructor id (see [`enum_ctor_id`]).
pub(crate) fn enum_ctor_of(id: u32) -> Option<(u32, u32)> {
    let rel = id.checked_sub(u32::try_from(BUILTIN_COUNT).ok()?)?;
    Some((rel >> 16, rel & 0xFFFF))
}

pub(crate) fn builtin_name(id: u32) -> &'static str {
    BUILTINS
        .get(id as usize)
        .map_or("<enum constructor>", |b| b.name)
}

/// Calls built-in `id`.
#[inline]
pub(crate) fn call(id: u32, ctx: &mut Ctx, args: &[Value]) -> Result<Flow, VmError> {
    (BUILTINS[id as usize].func)(ctx, args)
}

/// Calls a built-in by name.
pub(crate) fn call_by_name(ctx: &mut Ctx, name: &str, args: &[Value]) -> Result<Flow, VmError> {
    match BUILTINS.iter().find(|b| b.name == name) {
        Some(b) => (b.func)(ctx, args),
        None => Err(VmError::call_error(format!("unknown function: {name}"))),
    }
}

static NIL: Value = Value::Nil;

/// Argument `idx`, or `nil` when absent.
#[inline]
pub(crate) fn arg(args: &[Value], idx: usize) -> &Value {
    args.get(idx).unwrap_or(&NIL)
}

/// Argument `idx` of `func`, which must be present.
pub(crate) fn required<'a>(
    func: &str,
    args: &'a [Value],
    idx: usize,
) -> Result<&'a Value, VmError> {
    args.get(idx)
        .ok_or_else(|| VmError::type_error(format!("{func} missing argument {idx}")))
}

/// String argument `idx` of `func`.
pub(crate) fn str_arg<'a>(func: &str, args: &'a [Value], idx: usize) -> Result<&'a str, VmError> {
    match required(func, args, idx)? {
        Value::Str(s) => Ok(s.as_str()),
        other => Err(VmError::type_error(format!(
            "{func} expected String at arg {idx}, got {}",
            other.type_name()
        ))),
    }
}

/// The first argument of `func` as text (`<func> expected String, got T` otherwise).
pub(crate) fn text_arg<'a>(func: &str, args: &'a [Value]) -> Result<&'a str, VmError> {
    match args.first() {
        Some(Value::Str(s)) => Ok(s.as_str()),
        Some(other) => Err(VmError::type_error(format!(
            "{func} expected String, got {}",
            other.type_name()
        ))),
        None => Err(VmError::type_error(format!("{func} missing argument 0"))),
    }
}

/// Int argument `idx` of `func`.
pub(crate) fn int_arg(func: &str, args: &[Value], idx: usize) -> Result<i64, VmError> {
    match required(func, args, idx)? {
        Value::Int(i) => Ok(*i),
        other => Err(VmError::type_error(format!(
            "{func} expected Int at arg {idx}, got {}",
            other.type_name()
        ))),
    }
}

/// A numeric argument (`Int` or `Float`) of `func`.
pub(crate) fn num_arg<'a>(func: &str, args: &'a [Value], idx: usize) -> Result<&'a Value, VmError> {
    match required(func, args, idx)? {
        v @ (Value::Int(_) | Value::Float(_)) => Ok(v),
        other => Err(VmError::type_error(format!(
            "{func} expected numeric, got {}",
            other.type_name()
        ))),
    }
}

/// A plain value result.
#[inline]
pub(crate) fn ret(v: Value) -> Result<Flow, VmError> {
    Ok(Flow::Value(v))
}

/// Errors for a resource limit.
#[cold]
pub(crate) fn limit_error(what: impl std::fmt::Display) -> VmError {
    VmError::new(ErrorKind::Limit, format!("limit exceeded: {what}"))
}
