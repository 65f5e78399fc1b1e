//! Which model a request goes to.

/// Resolves the model of a request on a connection whose IR `config` is `config`:
/// the requested name, or its alias in the connection's `models` map; without one the
/// override's default model, then the connection's `default_model`. `None` when nothing
/// names a model.
pub fn resolve_model(
    config: &serde_json::Value,
    requested: Option<&str>,
    default_override: Option<&str>,
) -> Option<String> {
    let aliases = config.get("models").and_then(|m| m.as_object());
    let dealias = |name: &str| -> String {
        aliases
            .and_then(|a| a.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or(name)
            .to_string()
    };
    if let Some(name) = requested.filter(|n| !n.is_empty()) {
        return Some(dealias(name));
    }
    default_override
        .filter(|n| !n.is_empty())
        .or_else(|| {
            config
                .get("default_model")
                .and_then(|m| m.as_str())
                .filter(|n| !n.is_empty())
        })
        .map(dealias)
}

#[cfg(test)]
mod tests {
    use super::resolve_model;
    use serde_json::json;

    #[test]
    fn requested_alias_default_and_none() {
        let config = json!({"default_model": "fast", "models": {"fast": "gpt-4o-mini"}});
        assert_eq!(
            resolve_model(&config, Some("gpt-4o"), None).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            resolve_model(&config, Some("fast"), None).as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            resolve_model(&config, None, None).as_deref(),
            Some("gpt-4o-mini")
        );
        assert_eq!(
            resolve_model(&config, None, Some("o3")).as_deref(),
            Some("o3")
        );
        assert_eq!(resolve_model(&json!({}), None, None), None);
    }
}
