//! Schema re-asks: a structured reply that did not match its schema (or that the
//! schema's own `validate` method rejected) is asked for again with the errors, up to
//! [`SCHEMA_ATTEMPTS`] requests, then fails with a `SchemaError`.

use super::Kind;
use super::call::AgentCall;
use super::failure::FailureKind;
use crate::error::{ErrorKind, VmError};
use crate::exec::{Ctx, Step};
use crate::host::ChatMessage;
use crate::value::Value;

/// Requests per `execute_with_schema` call: the first and the re-asks after invalid replies.
const SCHEMA_ATTEMPTS: u32 = 3;

impl AgentCall {
    /// The reply did not match the schema: ask again with the errors, or give up.
    pub(super) fn invalid(&mut self, ctx: &mut Ctx, errors: Vec<String>) -> Result<Step, VmError> {
        let Kind::Schema(schema) = self.kind else {
            return Err(VmError::new(
                ErrorKind::Internal,
                "schema retry without a schema",
            ));
        };
        let joined = errors.join("; ");
        if self.schema_attempts < SCHEMA_ATTEMPTS {
            ctx.stats
                .llm
                .both(&self.agent_name, &self.connection_name, |c| {
                    c.schema_retries += 1
                });
            let schema_text = self
                .request
                .response_schema
                .as_ref()
                .and_then(|s| serde_json::to_string_pretty(&s.schema).ok())
                .unwrap_or_default();
            let original = if self.prompt.is_empty() {
                self.request
                    .messages
                    .get(self.user_index)
                    .map(|m| m.content.clone())
                    .unwrap_or_default()
            } else {
                self.prompt.clone()
            };
            let corrective = format!(
                "Your previous response did not match the required JSON schema.\n\
                 Error: {joined}\n\
                 Schema: {schema_text}\n\
                 Original request: {original}\n\
                 Reply with valid JSON only, matching the schema exactly."
            );
            // The re-ask replaces the user turn (and drops any tool turns after it), so the
            // failed answer is not carried along and memory is not touched.
            self.request.messages.truncate(self.user_index);
            self.request
                .messages
                .push(ChatMessage::new("user", corrective));
            self.rounds = 0;
            return self.send(ctx);
        }
        let schema_name = ctx.program().schemas[schema as usize].name.clone();
        let message = format!(
            "schema validation failed after {} attempts: {joined}",
            self.schema_attempts
        );
        let raw = self
            .reply
            .as_ref()
            .map(|r| r.text.clone())
            .unwrap_or_default();
        let value = Value::record(
            "SchemaError",
            vec![
                ("message", Value::str(message.as_str())),
                ("kind", Value::str(FailureKind::Schema.as_str())),
                ("agent_name", Value::str(self.agent_name.as_str())),
                ("connection", Value::str(self.connection_name.as_str())),
                ("schema_name", Value::str(schema_name.as_str())),
                ("raw_response", Value::str(raw.as_str())),
                (
                    "errors",
                    Value::array(errors.iter().map(|e| Value::str(e.as_str())).collect()),
                ),
            ],
        );
        // A failed call, like any other: counted, and its span says so.
        ctx.stats
            .llm
            .both(&self.agent_name, &self.connection_name, |c| c.failures += 1);
        crate::spans::record_error(&self.span, FailureKind::Schema.as_str());
        self.finish_err(ctx, value, message, ErrorKind::Schema)
    }
}
