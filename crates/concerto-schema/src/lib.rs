//! Schema validation: the implementation of the VM's [`SchemaValidator`] trait.
//!
//! **Status:** not implemented yet. [`JsonSchemaValidator`] refuses every validation with an
//! "unsupported" error naming the schema. Compiling Concerto schemas to JSON Schema and
//! checking them with `jsonschema` arrives with the structured-output work.
//!
//! # Source layout
//! - `lib.rs`: [`JsonSchemaValidator`].
#![warn(missing_docs)]

use concerto_vm::host::{HostError, Program, SchemaCheck, SchemaValidator};

/// Validates LLM output against program schemas (not implemented yet: every call is refused).
#[derive(Debug, Default)]
pub struct JsonSchemaValidator;

impl JsonSchemaValidator {
    /// A validator.
    pub fn new() -> JsonSchemaValidator {
        JsonSchemaValidator
    }
}

impl JsonSchemaValidator {
    fn refuse<T>(program: &Program, schema: u32) -> Result<T, HostError> {
        let name = program
            .schemas
            .get(schema as usize)
            .map_or("?", |s| s.name.as_str());
        Err(HostError::unsupported(format!(
            "schema validation (schema `{name}`) is not implemented in this runtime yet"
        )))
    }
}

impl SchemaValidator for JsonSchemaValidator {
    fn provider_schema(
        &self,
        program: &Program,
        schema: u32,
    ) -> Result<serde_json::Value, HostError> {
        Self::refuse(program, schema)
    }

    fn check(
        &self,
        program: &Program,
        schema: u32,
        _reply: &str,
    ) -> Result<SchemaCheck, HostError> {
        Self::refuse(program, schema)
    }
}
