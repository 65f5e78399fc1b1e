//! MCP servers in a build without the `mcp` feature: there is no MCP client, and every use
//! of a server fails with an error naming the feature (never silently).

use std::sync::Arc;

use concerto_vm::host::{HostError, Program, ToolSpec};
use serde_json::Value;

use crate::ToolFailure;

/// Stands in for the MCP client of builds with the `mcp` feature.
#[derive(Debug, Default)]
pub struct McpClients {
    _private: (),
}

fn feature_off(server: &str) -> HostError {
    HostError::unsupported(format!(
        "MCP server `{server}`: this runtime was built without the `mcp` feature of \
         concerto-tools / concerto-runtime"
    ))
}

impl McpClients {
    /// Clients that connect to nothing.
    pub fn new() -> McpClients {
        McpClients::default()
    }

    /// As [`McpClients::new`] (there are no server processes to start in a folder).
    pub fn with_base_dir(self, _dir: impl Into<std::path::PathBuf>) -> McpClients {
        self
    }

    /// As [`McpClients::new`] (there are no servers to reach).
    pub fn with_net_allowed(self, _allowed: Arc<crate::NetCheck>) -> McpClients {
        self
    }

    /// As [`McpClients::new`] (there are no server processes to give variables to).
    pub fn with_env_allowed(self, _patterns: Vec<String>) -> McpClients {
        self
    }

    /// Fails, naming the missing feature.
    ///
    /// # Errors
    /// Always.
    pub async fn specs(
        &self,
        _program: &Arc<Program>,
        server: &str,
    ) -> Result<Vec<ToolSpec>, HostError> {
        Err(feature_off(server))
    }

    /// Fails, naming the missing feature.
    ///
    /// # Errors
    /// Always.
    pub async fn call(
        &self,
        _program: &Arc<Program>,
        server: &str,
        _tool: &str,
        _args: Value,
    ) -> Result<Result<Value, ToolFailure>, HostError> {
        Err(feature_off(server))
    }

    /// Always fails: the `mcp` feature is off.
    pub async fn call_for_model(
        &self,
        _program: &Arc<Program>,
        server: &str,
        _tool: &str,
        _args: Value,
    ) -> Result<
        (
            Result<Value, ToolFailure>,
            Vec<concerto_vm::host::ImagePart>,
        ),
        HostError,
    > {
        Err(feature_off(server))
    }

    /// Nothing to close.
    pub async fn shutdown(&self) {}
}

/// Without the `mcp` feature nothing is started for a server: `None`.
pub fn launch(_program: &Program, _server: &str) -> Option<String> {
    None
}
