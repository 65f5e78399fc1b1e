//! Schema validation: the implementation of the VM's [`SchemaValidator`] trait.
//!
//! A program's schemas (IR `schemas`, see `ir-format.md` §9) describe their properties with
//! *Concerto* type names (`String`, `Array<Option<Address>>`, `Map<String, Any>`, other
//! schema names). This crate compiles them into real JSON Schema in two forms:
//!
//! - the **validation form** ([`normalize()`], [`normalize_for_mode`]), checked with the
//!   [`jsonschema`] crate against the JSON extracted from a model reply;
//! - the **provider form** ([`to_provider_schema`]), the subset OpenAI's strict structured
//!   outputs accept, sent with the request.
//!
//! # Type mapping
//!
//! | Concerto | validation form | provider form |
//! |---|---|---|
//! | `String` / `Int` / `Float` / `Bool` / `Nil` | `string` / `integer` / `number` / `boolean` / `null` | same |
//! | `Any` | `{}` (no constraint) | a scalar or an array of scalars (see below) |
//! | `Array<T>` | `{type: array, items: T}` | same |
//! | `Map<K, V>` | `{type: object, additionalProperties: V}` (no constraint for `Any`) | `{type: object, additionalProperties: V}` (see below) |
//! | `Option<T>` | `T` or `null`, not required | `T` or `null`, listed in `required` |
//! | string-literal union (`{"type":"string","enum":[…]}`) | kept | kept |
//! | another schema's name | that schema's object, inlined | same |
//! | a user `struct` name | an object with its field names, unconstrained (the IR keeps no field types) | same, closed |
//! | a user `enum`, an unknown name, `Result<…>` or other generics, an unparseable type string | no constraint | as `Any` |
//!
//! A field missing from the schema's `required` list is optional like an `Option<T>` field:
//! it may be absent *or null* (a strict provider sends null for it).
//!
//! Nested schemas are inlined. A schema that refers to itself (directly or through others)
//! is referenced instead: the root as `{"$ref": "#"}`, any other schema through
//! `{"$ref": "#/$defs/<Name>"}`; the same happens past [`normalize::MAX_INLINE_DEPTH`]
//! nested schemas or [`normalize::INLINE_BUDGET`] expansions, so odd or hostile schemas can
//! neither loop nor grow without bound. The normaliser never panics: a `json_schema` that is
//! not an object, lacks `properties` or has non-string types degrades to "no constraint"
//! for what it cannot read.
//!
//! **Provider-form limits.** Strict structured outputs have no free-form values: `Any` is
//! sent as `anyOf: [scalar, array of scalars]` (so a model under strict decoding cannot
//! produce an object there), and a `Map<K, V>` keeps `additionalProperties: <V>`, which
//! strict providers reject. [`is_strict_compatible`] tells whether a provider-form schema
//! is strict-clean, so the connection layer can send such a schema with `strict: false`.
//!
//! # Checking a reply ([`SchemaValidator::check`])
//!
//! 1. [`extract_json`] finds the JSON in the reply (whole text, a fenced block, or an object
//!    embedded in prose). Nothing found: one error, `invalid JSON: <reason>`.
//! 2. The schema's [`Mode`] applies: [`Mode::Coerce`] converts values toward the declared
//!    types first ([`coerce::coerce`]); [`Mode::Partial`] lets every top-level property be
//!    absent or null.
//! 3. The validation form is checked (validators are compiled once and cached). Each problem
//!    is reported as `<message> at <instance path>`, the path as a JSON pointer such as
//!    `/score` or `/items/0/name`, or `(root)`. A non-object reply fails at `(root)`.
//! 4. Every top-level property the schema declares is present in the returned instance:
//!    missing optional ones (and, in partial mode, any missing one) are filled with `null`.
//!    Extra members are kept.
//! 5. Host validators registered with [`JsonSchemaValidator::with_validator`] run on that
//!    instance; an `Err` is reported like any validation error.
//!
//! [`HostError`] is returned only for a schema index out of range or an internal failure
//! (a normalised schema the `jsonschema` crate refuses to compile, naming the schema).
//!
//! # Source layout
//! - `lib.rs`: [`JsonSchemaValidator`], [`Mode`], the public functions.
//! - `types.rs`: the Concerto type-string parser ([`types::parse_type`]).
//! - `normalize.rs`: compilation to the validation and provider forms.
//! - `coerce.rs`: coerce mode.
//! - `extract.rs`: [`extract_json`].
#![warn(missing_docs)]

pub mod coerce;
mod extract;
pub mod normalize;
pub mod types;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use concerto_vm::host::{HostError, Program, SchemaCheck, SchemaId, SchemaValidator};
use parking_lot::RwLock;
use serde_json::Value;

pub use extract::extract_json;
use normalize::Form;

/// At most this many validation errors are reported for one reply (the rest are counted in
/// a final note).
pub const MAX_ERRORS: usize = 20;

/// Longest message text kept for one error (longer ones, which usually quote a large part
/// of the reply, are cut with `…`).
pub const MAX_ERROR_LEN: usize = 400;

/// How many compiled validators the cache keeps before it starts over.
const CACHE_CAPACITY: usize = 256;

/// How a schema treats a reply (spec chapter 12, "Validation Modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Required fields must be present with the right types; extra fields are kept.
    #[default]
    Strict,
    /// Any field may be missing (filled with `null`); present fields are still type-checked.
    Partial,
    /// Values are converted toward the declared types (`"42"` → `42`, `"true"` → `true`,
    /// `3` → `"3"`, …) before a strict check.
    Coerce,
}

impl Mode {
    /// The mode named by an IR `validation_mode` string: `strict`, `partial` or `coerce`
    /// (case-insensitive); anything else, the empty string included, is [`Mode::Strict`].
    pub fn from_ir(text: &str) -> Mode {
        let text = text.trim();
        if text.eq_ignore_ascii_case("partial") {
            Mode::Partial
        } else if text.eq_ignore_ascii_case("coerce") {
            Mode::Coerce
        } else {
            Mode::Strict
        }
    }

    /// The mode's IR name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Strict => "strict",
            Mode::Partial => "partial",
            Mode::Coerce => "coerce",
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The validation-form JSON Schema of schema `schema` of `program`, as checked in strict
/// mode (see the crate documentation for the mapping).
///
/// # Errors
/// A [`HostError`] when `schema` is not an index into `program.schemas`.
pub fn normalize(program: &Program, schema: u32) -> Result<Value, HostError> {
    normalize::compile(program, schema, Form::Validation, false)
}

/// The validation-form JSON Schema of schema `schema` as checked in `mode`: in
/// [`Mode::Partial`] the root requires nothing and accepts `null` for every property; the
/// other modes check the [`normalize()`] form.
///
/// # Errors
/// A [`HostError`] when `schema` is not an index into `program.schemas`.
pub fn normalize_for_mode(program: &Program, schema: u32, mode: Mode) -> Result<Value, HostError> {
    normalize::compile(program, schema, Form::Validation, mode == Mode::Partial)
}

/// The provider-form JSON Schema of schema `schema`: JSON Schema type names only, every
/// object closed with `additionalProperties: false` and listing all its properties in
/// `required` (optional ones nullable), nested schemas inlined, recursive ones through
/// `$ref`. `Map` fields are the exception described in the crate documentation. The
/// schema's mode does not change this form.
///
/// # Errors
/// A [`HostError`] when `schema` is not an index into `program.schemas`.
pub fn to_provider_schema(program: &Program, schema: u32) -> Result<Value, HostError> {
    normalize::compile(program, schema, Form::Provider, false)
}

/// Whether a provider-form schema fits OpenAI's strict structured outputs: every object
/// node has `additionalProperties: false`. False when the schema has a `Map` field; the
/// connection layer may then send it with `strict: false`.
pub fn is_strict_compatible(schema: &Value) -> bool {
    fn walk(node: &Value, depth: usize) -> bool {
        if depth > 512 {
            return false;
        }
        match node {
            Value::Object(map) => {
                let is_object = match map.get("type") {
                    Some(Value::String(t)) => t == "object",
                    Some(Value::Array(ts)) => ts.iter().any(|t| t == "object"),
                    _ => false,
                };
                if is_object && map.get("additionalProperties") != Some(&Value::Bool(false)) {
                    return false;
                }
                map.values().all(|v| walk(v, depth + 1))
            }
            Value::Array(items) => items.iter().all(|v| walk(v, depth + 1)),
            _ => true,
        }
    }
    walk(schema, 0)
}

type HostCheck = Arc<dyn Fn(&Value) -> Result<(), String> + Send + Sync>;

/// Validates LLM output against program schemas with the `jsonschema` crate.
///
/// Configure it with the builder methods before sharing it as
/// `Arc<dyn SchemaValidator>`; compiled validators are cached inside (keyed by the
/// normalised schema text, so one validator serves any number of programs).
pub struct JsonSchemaValidator {
    modes: HashMap<String, Mode>,
    host_checks: HashMap<String, Vec<HostCheck>>,
    cache: RwLock<HashMap<String, Arc<jsonschema::Validator>>>,
}

impl std::fmt::Debug for JsonSchemaValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut validators: Vec<(&str, usize)> = self
            .host_checks
            .iter()
            .map(|(name, checks)| (name.as_str(), checks.len()))
            .collect();
        validators.sort_unstable();
        f.debug_struct("JsonSchemaValidator")
            .field("modes", &self.modes)
            .field("host_validators", &validators)
            .field("cached", &self.cache.read().len())
            .finish()
    }
}

impl Default for JsonSchemaValidator {
    fn default() -> JsonSchemaValidator {
        JsonSchemaValidator::new()
    }
}

impl JsonSchemaValidator {
    /// A validator using each schema's IR `validation_mode` and no host validators.
    pub fn new() -> JsonSchemaValidator {
        JsonSchemaValidator {
            modes: HashMap::new(),
            host_checks: HashMap::new(),
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Checks schema `schema_name` in `mode`, whatever its IR `validation_mode` says.
    pub fn with_mode(mut self, schema_name: &str, mode: Mode) -> Self {
        self.modes.insert(schema_name.to_string(), mode);
        self
    }

    /// Adds a host validator for schema `schema_name`, run on the instance (after coercion
    /// and null-filling) once structural validation passed. Its `Err(message)` is a
    /// validation failure reported as ``custom validator of `<schema>`: <message> at (root)``
    /// (numbered when the schema has several); a panic in it is reported the same way.
    /// Several validators of one schema all run, in the order they were added.
    pub fn with_validator(
        mut self,
        schema_name: &str,
        f: impl Fn(&Value) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.host_checks
            .entry(schema_name.to_string())
            .or_default()
            .push(Arc::new(f));
        self
    }

    /// The mode schema `schema` is checked in: the override from [`Self::with_mode`], else
    /// the IR's `validation_mode`.
    ///
    /// # Errors
    /// A [`HostError`] when `schema` is not an index into `program.schemas`.
    pub fn mode_of(&self, program: &Program, schema: u32) -> Result<Mode, HostError> {
        let decl = program
            .schemas
            .get(schema as usize)
            .ok_or_else(|| normalize::schema_out_of_range(program, schema))?;
        Ok(self
            .modes
            .get(&decl.name)
            .copied()
            .unwrap_or_else(|| Mode::from_ir(&decl.validation_mode)))
    }

    /// How many compiled validators are cached.
    pub fn cached_validators(&self) -> usize {
        self.cache.read().len()
    }

    fn compiled(
        &self,
        name: &str,
        schema: &Value,
    ) -> Result<Arc<jsonschema::Validator>, HostError> {
        let key = schema.to_string();
        if let Some(found) = self.cache.read().get(&key) {
            return Ok(Arc::clone(found));
        }
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(schema)
            .map_err(|err| {
                HostError::failed(format!(
                    "schema `{name}` cannot be compiled to a JSON Schema validator: {err}"
                ))
            })?;
        let validator = Arc::new(validator);
        let mut cache = self.cache.write();
        if cache.len() >= CACHE_CAPACITY {
            cache.clear();
        }
        Ok(Arc::clone(cache.entry(key).or_insert(validator)))
    }

    fn run_host_checks(&self, name: &str, instance: &Value) -> Vec<String> {
        let Some(checks) = self.host_checks.get(name) else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        for (index, check) in checks.iter().enumerate() {
            let label = if checks.len() == 1 {
                format!("custom validator of `{name}`")
            } else {
                format!("custom validator {} of `{name}`", index + 1)
            };
            match catch_unwind(AssertUnwindSafe(|| check(instance))) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    errors.push(format!("{label}: {} at (root)", truncate(&message)));
                }
                Err(_) => errors.push(format!("{label}: the validator panicked at (root)")),
            }
        }
        errors
    }
}

fn truncate(message: &str) -> String {
    if message.chars().count() <= MAX_ERROR_LEN {
        return message.to_string();
    }
    let mut out: String = message.chars().take(MAX_ERROR_LEN).collect();
    out.push('…');
    out
}

/// `<message> at <path>` for a `jsonschema` error.
fn describe(err: &jsonschema::ValidationError<'_>) -> String {
    let path = err.instance_path().as_str();
    let path = if path.is_empty() { "(root)" } else { path };
    format!("{} at {path}", truncate(&err.to_string()))
}

/// Whether one `anyOf` branch failed only because the value is not `null`.
fn is_null_branch(branch: &[jsonschema::ValidationError<'_>]) -> bool {
    use jsonschema::error::{TypeKind, ValidationErrorKind};
    match branch {
        [only] => matches!(
            only.kind(),
            ValidationErrorKind::Type {
                kind: TypeKind::Single(jsonschema::JsonType::Null)
            }
        ),
        _ => false,
    }
}

/// The errors of one validation error: a failed nullable wrapper (`anyOf: [X, null]`) on
/// a non-null value is replaced by what is wrong against `X`, so the message points at the
/// real problem (`"2" is not of type "integer" at /a/0/x`) rather than at the wrapper.
fn explain(err: &jsonschema::ValidationError<'_>, out: &mut Vec<String>, depth: usize) {
    if let jsonschema::error::ValidationErrorKind::AnyOf { context } = err.kind() {
        let mut others = context.iter().filter(|b| !is_null_branch(b));
        if let (Some(branch), None) = (others.next(), others.next())
            && depth < 32
            && !branch.is_empty()
            && !err.instance().is_null()
        {
            for inner in branch {
                explain(inner, out, depth + 1);
            }
            return;
        }
    }
    out.push(describe(err));
}

/// Adds `null` for each property `schema`'s root declares that `instance` lacks.
fn fill_missing(schema: &Value, instance: &mut Value) {
    let (Some(props), Value::Object(members)) = (
        schema.get("properties").and_then(Value::as_object),
        instance,
    ) else {
        return;
    };
    for name in props.keys() {
        if !members.contains_key(name) {
            members.insert(name.clone(), Value::Null);
        }
    }
}

impl SchemaValidator for JsonSchemaValidator {
    fn provider_schema(&self, program: &Program, schema: SchemaId) -> Result<Value, HostError> {
        to_provider_schema(program, schema.0)
    }

    fn check(
        &self,
        program: &Program,
        schema: SchemaId,
        reply: &str,
    ) -> Result<SchemaCheck, HostError> {
        let schema = schema.0;
        let mode = self.mode_of(program, schema)?;
        let name = program
            .schemas
            .get(schema as usize)
            .map_or("", |s| s.name.as_str());
        let normalized = normalize_for_mode(program, schema, mode)?;
        let validator = self.compiled(name, &normalized)?;

        let mut instance = match extract_json(reply) {
            Ok(value) => value,
            Err(reason) => {
                return Ok(SchemaCheck::Invalid(vec![format!(
                    "invalid JSON: {reason}"
                )]));
            }
        };
        if mode == Mode::Coerce {
            coerce::coerce(&normalized, &mut instance);
        }

        let mut errors = Vec::new();
        for err in validator.iter_errors(&instance) {
            explain(&err, &mut errors, 0);
        }
        let total = errors.len();
        errors.truncate(MAX_ERRORS);
        if total > errors.len() {
            errors.push(format!(
                "{} more error{} not shown",
                total - errors.len(),
                if total - errors.len() == 1 { "" } else { "s" }
            ));
        }
        if !errors.is_empty() {
            return Ok(SchemaCheck::Invalid(errors));
        }

        fill_missing(&normalized, &mut instance);
        let errors = self.run_host_checks(name, &instance);
        if !errors.is_empty() {
            return Ok(SchemaCheck::Invalid(errors));
        }
        Ok(SchemaCheck::Valid(instance))
    }
}
