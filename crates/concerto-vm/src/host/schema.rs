//! Structured output: [`SchemaValidator`] and the outcome of a check ([`SchemaCheck`]).

use super::{HostError, Program, SchemaId};

/// The outcome of checking a reply against a schema.
#[derive(Debug, Clone, PartialEq)]
pub enum SchemaCheck {
    /// The reply holds a valid instance (after the schema's mode applied, e.g. coercion).
    Valid(serde_json::Value),
    /// What is wrong, one message per problem (`<error> at <path>`, `invalid JSON: …`).
    Invalid(Vec<String>),
}

/// Structured output: schemas compiled to JSON Schema, replies parsed and validated.
pub trait SchemaValidator: Send + Sync {
    /// The JSON Schema of schema `schema` in the form providers accept for structured
    /// output (JSON Schema type names, nested schemas resolved).
    fn provider_schema(
        &self,
        program: &Program,
        schema: SchemaId,
    ) -> Result<serde_json::Value, HostError>;

    /// Extracts the JSON instance from a model reply (which may wrap it in prose or a code
    /// fence) and validates it against schema `schema` in the schema's mode.
    fn check(
        &self,
        program: &Program,
        schema: SchemaId,
        reply: &str,
    ) -> Result<SchemaCheck, HostError>;
}
