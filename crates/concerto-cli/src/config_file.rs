//! `concerto run --config FILE`: the deployer's runtime configuration, a TOML file with
//! connection overrides (fallbacks included), permissions and limits, so that a long
//! command line becomes a file that can be reviewed.
//!
//! Every table refuses keys it does not know (a typo is an error naming the file, the line
//! and the key, never a setting silently ignored). The file holds no secrets: a connection
//! names the variable its key is read from (`api_key_env`), not the key.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use concerto_runtime::ConnectionOverride;
use concerto_runtime::conn::{Fallback, FallbackOn};
use concerto_runtime::vm::host::{Backoff, RetryPolicy};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// `[connections.NAME]`: overrides of the program's connections, or connections of the
    /// host's own (for fallbacks).
    #[serde(default)]
    connections: BTreeMap<String, ConnectionEntry>,
    /// `[permissions]`: what the command-line access flags say.
    #[serde(default)]
    pub(crate) permissions: Permissions,
    /// `[limits]`: what the command-line limit flags say, and the retry budget.
    #[serde(default)]
    pub(crate) limits: LimitsEntry,
}

/// `[connections.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionEntry {
    provider: Option<String>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    /// The model used when an agent names none.
    model: Option<String>,
    /// Seconds each attempt may take.
    timeout: Option<f64>,
    retry: Option<RetryEntry>,
    requests_per_minute: Option<u32>,
    tokens_per_minute: Option<u32>,
    max_concurrent: Option<u32>,
    stream: Option<bool>,
    #[serde(default)]
    fallbacks: Vec<FallbackEntry>,
    #[serde(default)]
    fallback_on: Vec<FallbackKind>,
}

/// `retry = { … }`: the same keys as a connection's `retry` in `Concerto.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryEntry {
    max_attempts: Option<u32>,
    backoff: Option<BackoffName>,
    initial_delay_ms: Option<u64>,
    max_delay_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum BackoffName {
    None,
    Linear,
    Exponential,
}

/// `fallbacks = [{ connection = "…", model = "…" }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FallbackEntry {
    connection: Option<String>,
    model: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum FallbackKind {
    RateLimited,
    ServerError,
    Timeout,
    ConnectionFailed,
}

/// `[permissions]`: each list adds to the same flag's values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Permissions {
    #[serde(default)]
    pub(crate) allow_tool: Vec<String>,
    #[serde(default)]
    pub(crate) disable_tool: Vec<String>,
    #[serde(default)]
    pub(crate) allow_fs: Vec<PathBuf>,
    #[serde(default)]
    pub(crate) allow_net: Vec<String>,
    #[serde(default)]
    pub(crate) allow_env: Vec<String>,
}

/// `[limits]`: each value is overridden by the same flag on the command line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsEntry {
    /// Seconds the whole run may take (`--timeout`).
    pub(crate) timeout: Option<f64>,
    /// `--max-steps`.
    pub(crate) max_steps: Option<u64>,
    /// `--max-call-depth`.
    pub(crate) max_call_depth: Option<usize>,
    /// `--max-hashmap-bytes`.
    pub(crate) max_hashmap_bytes: Option<usize>,
    /// Retries (and moves to a fallback) allowed across the run's agent calls.
    pub(crate) retry_budget: Option<u32>,
}

impl ConfigFile {
    /// Reads and checks the file at `path`. The error names the file and, for anything
    /// the TOML parser finds (syntax, an unknown key, a value of the wrong type), the line
    /// and column; otherwise the key.
    pub(crate) fn load(path: &Path) -> Result<ConfigFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file `{}`: {e}", path.display()))?;
        let mut file: ConfigFile = toml::from_str(&text).map_err(|e| {
            format!(
                "config file `{}`: {}",
                path.display(),
                e.to_string().trim_end()
            )
        })?;
        file.check()
            .map_err(|e| format!("config file `{}`: {e}", path.display()))?;
        // Relative directories are relative to the file, as a manifest's paths are.
        let base = path.parent().unwrap_or(Path::new("."));
        for dir in &mut file.permissions.allow_fs {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
        Ok(file)
    }

    /// The checks the types cannot express, naming the key.
    fn check(&self) -> Result<(), String> {
        for (name, c) in &self.connections {
            if let Some(t) = c.timeout
                && !(t.is_finite() && t > 0.0 && t <= 86_400.0)
            {
                return Err(format!(
                    "connections.{name}.timeout must be a number of seconds above 0 and at most 86400, not {t}"
                ));
            }
            if c.retry.as_ref().and_then(|r| r.max_attempts) == Some(0) {
                return Err(format!(
                    "connections.{name}.retry.max_attempts must be at least 1"
                ));
            }
            for (key, value) in [
                ("requests_per_minute", c.requests_per_minute),
                ("tokens_per_minute", c.tokens_per_minute),
                ("max_concurrent", c.max_concurrent),
            ] {
                if value == Some(0) {
                    return Err(format!("connections.{name}.{key} must be at least 1"));
                }
            }
            for (i, f) in c.fallbacks.iter().enumerate() {
                if f.connection.is_none() && f.model.is_none() {
                    return Err(format!(
                        "connections.{name}.fallbacks[{i}] names neither a connection nor a model"
                    ));
                }
                if let Some(other) = &f.connection
                    && other == name
                    && f.model.is_none()
                {
                    return Err(format!(
                        "connections.{name}.fallbacks[{i}] names the connection itself without another model"
                    ));
                }
            }
            if !c.fallback_on.is_empty() && c.fallbacks.is_empty() {
                return Err(format!(
                    "connections.{name}.fallback_on is set but the connection has no fallbacks"
                ));
            }
        }
        if let Some(t) = self.limits.timeout
            && !(t.is_finite() && t > 0.0)
        {
            return Err(format!(
                "limits.timeout must be a positive number of seconds, not {t}"
            ));
        }
        Ok(())
    }

    /// The file's connections that are neither among `program` (the program's connection
    /// names) nor named by a fallback: most likely a misspelt name, which would otherwise be
    /// ignored.
    pub(crate) fn unused_connections(&self, program: &[&str]) -> Vec<String> {
        let named: Vec<&str> = self
            .connections
            .values()
            .flat_map(|c| c.fallbacks.iter().filter_map(|f| f.connection.as_deref()))
            .collect();
        self.connections
            .keys()
            .filter(|name| !program.contains(&name.as_str()) && !named.contains(&name.as_str()))
            .cloned()
            .collect()
    }

    /// The connection overrides, by connection name.
    pub(crate) fn connection_overrides(&self) -> HashMap<String, ConnectionOverride> {
        self.connections
            .iter()
            .map(|(name, c)| (name.clone(), c.to_override()))
            .collect()
    }
}

impl ConnectionEntry {
    fn to_override(&self) -> ConnectionOverride {
        let retry = self.retry.as_ref().map(|r| {
            let default = RetryPolicy::default();
            RetryPolicy {
                max_attempts: r.max_attempts.unwrap_or(default.max_attempts),
                backoff: match r.backoff {
                    None => default.backoff,
                    Some(BackoffName::None) => Backoff::None,
                    Some(BackoffName::Linear) => Backoff::Linear,
                    Some(BackoffName::Exponential) => Backoff::Exponential,
                },
                initial_delay: r
                    .initial_delay_ms
                    .map_or(default.initial_delay, Duration::from_millis),
                max_delay: r
                    .max_delay_ms
                    .map_or(default.max_delay, Duration::from_millis),
            }
        });
        ConnectionOverride {
            provider: self.provider.clone(),
            base_url: self.base_url.clone(),
            api_key_env: self.api_key_env.clone(),
            default_model: self.model.clone(),
            timeout: self.timeout.map(Duration::from_secs_f64),
            retry,
            requests_per_minute: self.requests_per_minute,
            tokens_per_minute: self.tokens_per_minute,
            max_concurrent: self.max_concurrent,
            stream: self.stream,
            fallbacks: self
                .fallbacks
                .iter()
                .map(|f| Fallback {
                    connection: f.connection.clone(),
                    model: f.model.clone(),
                })
                .collect(),
            fallback_on: self
                .fallback_on
                .iter()
                .map(|k| match k {
                    FallbackKind::RateLimited => FallbackOn::RateLimited,
                    FallbackKind::ServerError => FallbackOn::ServerError,
                    FallbackKind::Timeout => FallbackOn::Timeout,
                    FallbackKind::ConnectionFailed => FallbackOn::ConnectionFailed,
                })
                .collect(),
            ..ConnectionOverride::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ConfigFile, String> {
        let dir = std::env::temp_dir().join(format!("concerto-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("c{}.toml", text.len()));
        std::fs::write(&path, text).map_err(|e| e.to_string())?;
        ConfigFile::load(&path)
    }

    #[test]
    fn every_section_becomes_settings() {
        let file = parse(
            r#"
[connections.openai]
base_url = "http://127.0.0.1:8080/v1"
api_key_env = "MY_KEY"
model = "gpt-4o-mini"
timeout = 12.5
retry = { max_attempts = 3, backoff = "linear", initial_delay_ms = 200 }
requests_per_minute = 60
fallbacks = [{ connection = "backup" }, { model = "gpt-4o-mini" }]
fallback_on = ["rate_limited", "server_error"]

[connections.backup]
provider = "anthropic"
model = "claude-sonnet-4-20250514"

[permissions]
allow_net = ["127.0.0.1"]
allow_fs = ["data"]

[limits]
timeout = 60
max_steps = 1000
retry_budget = 5
"#,
        )
        .expect("parses");
        let overrides = file.connection_overrides();
        let openai = &overrides["openai"];
        assert_eq!(openai.base_url.as_deref(), Some("http://127.0.0.1:8080/v1"));
        assert_eq!(openai.api_key_env.as_deref(), Some("MY_KEY"));
        assert_eq!(openai.api_key, None);
        assert_eq!(openai.default_model.as_deref(), Some("gpt-4o-mini"));
        assert_eq!(openai.timeout, Some(Duration::from_millis(12_500)));
        let retry = openai.retry.expect("retry");
        assert_eq!(
            (retry.max_attempts, retry.backoff, retry.initial_delay),
            (3, Backoff::Linear, Duration::from_millis(200))
        );
        assert_eq!(retry.max_delay, RetryPolicy::default().max_delay);
        assert_eq!(openai.requests_per_minute, Some(60));
        assert_eq!(
            openai.fallbacks,
            vec![
                Fallback {
                    connection: Some("backup".into()),
                    model: None
                },
                Fallback {
                    connection: None,
                    model: Some("gpt-4o-mini".into())
                }
            ]
        );
        assert_eq!(
            openai.fallback_on,
            vec![FallbackOn::RateLimited, FallbackOn::ServerError]
        );
        assert_eq!(overrides["backup"].provider.as_deref(), Some("anthropic"));
        assert_eq!(file.permissions.allow_net, vec!["127.0.0.1".to_string()]);
        // Relative to the file's folder.
        let dir = std::env::temp_dir().join(format!("concerto-config-{}", std::process::id()));
        assert_eq!(file.permissions.allow_fs, vec![dir.join("data")]);
        assert_eq!(
            (
                file.limits.timeout,
                file.limits.max_steps,
                file.limits.retry_budget
            ),
            (Some(60.0), Some(1000), Some(5))
        );
    }

    /// The example file in README.md is a valid configuration.
    #[test]
    fn the_readme_example_loads() {
        let readme = include_str!("../../../README.md");
        let section = readme
            .split("### A runtime configuration file")
            .nth(1)
            .expect("the README section");
        let example = section
            .split("```toml\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("the example");
        let file = parse(example).expect("the README example loads");
        let openai = &file.connection_overrides()["openai"];
        assert_eq!(openai.fallbacks.len(), 2);
        assert_eq!(openai.fallback_on.len(), 4);
        assert_eq!(file.limits.retry_budget, Some(20));
    }

    #[test]
    fn mistakes_name_the_file_the_line_and_the_key() {
        let unknown =
            parse("[connections.openai]\nbase_url = \"http://x\"\napi_key = \"sk-oops\"\n")
                .unwrap_err();
        assert!(unknown.contains("line 3"), "{unknown}");
        assert!(unknown.contains("unknown field `api_key`"), "{unknown}");
        assert!(unknown.contains("config file `"), "{unknown}");
        let kind =
            parse("[connections.a]\nfallbacks = [{ model = \"m\" }]\nfallback_on = [\"4xx\"]\n")
                .unwrap_err();
        assert!(
            kind.contains("line 3") && kind.contains("unknown variant `4xx`"),
            "{kind}"
        );
        let section = parse("[limit]\ntimeout = 3\n").unwrap_err();
        assert!(section.contains("unknown field `limit`"), "{section}");
        let empty = parse("[connections.a]\nfallbacks = [{}]\n").unwrap_err();
        assert!(
            empty.ends_with("connections.a.fallbacks[0] names neither a connection nor a model"),
            "{empty}"
        );
        let lonely = parse("[connections.a]\nfallback_on = [\"timeout\"]\n").unwrap_err();
        assert!(lonely.contains("has no fallbacks"), "{lonely}");
        let zero = parse("[connections.a]\ntimeout = 0\n").unwrap_err();
        assert!(zero.contains("connections.a.timeout"), "{zero}");
        let typed = parse("[limits]\nmax_steps = \"many\"\n").unwrap_err();
        assert!(typed.contains("line 2"), "{typed}");
        assert!(parse("not toml at all [").is_err());
    }
}
