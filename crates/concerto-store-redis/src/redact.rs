//! Keeping credentials out of messages: the URL is shown with its user and password
//! replaced by `***`, and every text that leaves the store has them scrubbed.

/// What the URL of a store must never show.
#[derive(Clone)]
pub(crate) struct Redactor {
    /// The URL with its credentials replaced.
    shown: String,
    /// Credential texts (raw and percent-decoded), longest first.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Query parameters that carry credentials (`redis+unix:///path?user=..&pass=..`).
const SECRET_PARAMS: &[&str] = &["pass", "password", "user", "username"];

impl Redactor {
    pub(crate) fn new(url: &str) -> Redactor {
        let mut secrets = Vec::new();
        let mut shown = url.to_string();
        if let Some(scheme_end) = url.find("://") {
            let rest_start = scheme_end + 3;
            let rest = url.get(rest_start..).unwrap_or_default();
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let authority = rest.get(..authority_end).unwrap_or_default();
            if let Some(at) = authority.rfind('@') {
                let userinfo = authority.get(..at).unwrap_or_default();
                let host = authority.get(at + 1..).unwrap_or_default();
                for part in userinfo.split(':') {
                    add_secret(&mut secrets, part);
                }
                add_secret(&mut secrets, userinfo);
                let tail = rest.get(authority_end..).unwrap_or_default();
                shown = format!(
                    "{}***@{host}{tail}",
                    url.get(..rest_start).unwrap_or_default()
                );
            }
        }
        // Credentials in the query string.
        if let Some(q) = shown.find('?') {
            let (head, query) = shown.split_at(q);
            let query = query.get(1..).unwrap_or_default();
            let (query, fragment) = match query.find('#') {
                Some(h) => query.split_at(h),
                None => (query, ""),
            };
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((name, value)) if SECRET_PARAMS.contains(&name) => {
                        add_secret(&mut secrets, value);
                        format!("{name}=***")
                    }
                    _ => param.to_string(),
                })
                .collect();
            shown = format!("{head}?{}{fragment}", params.join("&"));
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { shown, secrets }
    }

    /// The URL without credentials.
    pub(crate) fn url(&self) -> &str {
        &self.shown
    }

    /// `text` with every credential replaced by `***`.
    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

fn add_secret(secrets: &mut Vec<String>, raw: &str) {
    if raw.is_empty() {
        return;
    }
    secrets.push(raw.to_string());
    let decoded = percent_decode(raw);
    if decoded != raw && !decoded.is_empty() {
        secrets.push(decoded);
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|b| char::from(*b).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match (bytes.get(i), hex(i + 1), hex(i + 2)) {
            (Some(b'%'), Some(hi), Some(lo)) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (Some(b), _, _) => {
                out.push(*b);
                i += 1;
            }
            (None, _, _) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_hidden_and_scrubbed() {
        let r = Redactor::new("redis://alice:s%40cret@db.example:6380/2");
        assert_eq!(r.url(), "redis://***@db.example:6380/2");
        let text = r.scrub("auth failed for alice with s@cret (s%40cret)");
        assert!(!text.contains("alice") && !text.contains("s@cret") && !text.contains("s%40"));

        let r = Redactor::new("redis://:pw123@127.0.0.1:7/0");
        assert_eq!(r.url(), "redis://***@127.0.0.1:7/0");
        assert_eq!(r.scrub("x pw123 y"), "x *** y");

        let r = Redactor::new("redis+unix:///tmp/r.sock?db=1&pass=hunter2&user=bob");
        assert_eq!(r.url(), "redis+unix:///tmp/r.sock?db=1&pass=***&user=***");
        assert_eq!(r.scrub("hunter2 bob"), "*** ***");

        let r = Redactor::new("redis://127.0.0.1:6379/0");
        assert_eq!(r.url(), "redis://127.0.0.1:6379/0");
        assert_eq!(r.scrub("plain"), "plain");
    }
}
