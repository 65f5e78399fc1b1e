//! Sandboxed `std::http`: requests to the allowed domains only, redirects included.
//!
//! # Allowed domains
//! Each entry of the list given to [`HttpSandbox::new`] is one of:
//! - `example.com`: that host name exactly (any port), not its subdomains;
//! - `*.example.com`: every subdomain of `example.com` (`a.example.com`,
//!   `a.b.example.com`), not `example.com` itself (list both to allow both);
//! - `localhost` or any other single name, like a domain;
//! - an IP literal, `127.0.0.1`, `::1` or `[::1]`: that address only. An IP literal in a
//!   URL is allowed only when it is listed itself; no domain entry ever matches an address;
//! - any of the above with a port, `localhost:8080`, `[::1]:8080`, `*.example.com:8443`:
//!   that port only (the URL's explicit port, or 80/443 by its scheme).
//!
//! Names are compared without case and without a trailing dot. An empty list refuses every
//! request.
//!
//! # What is checked
//! Only `http` and `https` URLs are allowed. The host the connection goes to
//! (the URL's host, after any `user@` part, exactly as the connector will use it) must match
//! an entry, otherwise the request is refused with [`OutsideError::Refused`] naming the host
//! and the flag that allows it (`--allow-net HOST`, with that host). Redirects (301, 302, 303, 307, 308) are followed by
//! hand, at most [`MAX_REDIRECTS`], and every hop is checked the same way before anything is
//! sent to it: a redirect to a host that is not allowed is a refusal. A 303, and a 301 or
//! 302 answering a `POST`, continue as a `GET` without a body (as browsers do); 307 and 308
//! keep the method and body. When a redirect leaves the origin (scheme, host or port), the
//! `authorization`, `cookie`, `proxy-authorization` and `host` headers are dropped.
//!
//! Credentials in the URL (`http://user:pass@host/`) are not supported: such a request is
//! checked (its real host must be allowed) and then fails with a message that says to send
//! an `Authorization` header instead.
//!
//! The check is on the host *name*: a DNS answer that changes between requests (DNS
//! rebinding) or a name that resolves to a private address is not detected. Allow only
//! names you trust to resolve where you expect, or list IP literals.
//!
//! # Results
//! Any HTTP status is `Ok(reply)` (4xx and 5xx included); a request that could not be
//! completed (connection refused, TLS failure, time limit, body too large) is
//! [`OutsideError::Failed`], with an [`OutsideFailureKind`] saying which. Header names are
//! lower case; the body is decoded as lossy UTF-8 and is capped at [`DEFAULT_MAX_BODY`]
//! bytes by default. The time limit is the request's
//! `timeout`, else [`DEFAULT_TIMEOUT`], and covers the whole exchange (redirects and body).
//! Messages show URLs without their query string and credentials, which may hold secrets.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use concerto_vm::host::{HttpReply, HttpRequest, OutsideError, OutsideFailureKind};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::header::{HeaderName, HeaderValue, LOCATION};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::SandboxError;

/// Redirects followed at most in one request.
pub const MAX_REDIRECTS: usize = 10;
/// The time limit of a request that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest response body read by default (32 MiB).
pub const DEFAULT_MAX_BODY: usize = 32 * 1024 * 1024;
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Headers dropped when a redirect leaves the origin.
const ORIGIN_HEADERS: [&str; 4] = ["authorization", "cookie", "proxy-authorization", "host"];
/// Headers describing a body, dropped when a redirect drops the body.
const BODY_HEADERS: [&str; 4] = [
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
];

type Hyper = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The host part of an allowed-domain entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Exactly this name.
    Name(String),
    /// Every strict subdomain of this name.
    Subdomains(String),
    /// Exactly this address.
    Ip(IpAddr),
}

/// One allowed-domain entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    pattern: Pattern,
    port: Option<u16>,
}

impl Rule {
    /// Parses an entry (see the module documentation).
    fn parse(entry: &str) -> Result<Rule, SandboxError> {
        let text = entry.trim().to_ascii_lowercase();
        let invalid = |reason| SandboxError::InvalidDomain {
            entry: entry.to_string(),
            reason,
        };
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Rule {
                pattern: Pattern::Ip(ip),
                port: None,
            });
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let Some((inside, after)) = rest.split_once(']') else {
                return Err(invalid("`[` without `]`"));
            };
            let ip = inside
                .parse::<IpAddr>()
                .map_err(|_| invalid("not an IPv6 address between `[` and `]`"))?;
            let port = match after {
                "" => None,
                _ => {
                    let digits = after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("expected `:PORT` after `]`"))?;
                    Some(parse_port(digits).map_err(|()| invalid("the port is not a number"))?)
                }
            };
            return Ok(Rule {
                pattern: Pattern::Ip(ip),
                port,
            });
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (
                    host.to_string(),
                    Some(parse_port(port).map_err(|()| invalid("the port is not a number"))?),
                ),
                None => (text.clone(), None),
            }
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Rule {
                pattern: Pattern::Ip(ip),
                port,
            });
        }
        let (wild, name) = match host.strip_prefix("*.") {
            Some(name) => (true, name),
            None => (false, host.as_str()),
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() {
            return Err(invalid("no domain name"));
        }
        if name.contains('*') {
            return Err(invalid(
                "`*` is only allowed as the first label (`*.example.com`)",
            ));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
            || name.starts_with('.')
            || name.contains("..")
        {
            return Err(invalid("not a domain name"));
        }
        let pattern = if wild {
            Pattern::Subdomains(name.to_string())
        } else {
            Pattern::Name(name.to_string())
        };
        Ok(Rule { pattern, port })
    }

    /// Whether a URL host (lower case, no brackets, no trailing dot) and port match.
    fn matches(&self, host: &str, ip: Option<IpAddr>, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match (&self.pattern, ip) {
            (Pattern::Ip(allowed), Some(ip)) => *allowed == ip,
            (Pattern::Name(name), None) => host == name,
            (Pattern::Subdomains(name), None) => host
                .strip_suffix(name.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            _ => false,
        }
    }
}

/// Whether the last dot-separated label of `host` is a number in any base a resolver accepts
/// (decimal, `0x` hex, leading-zero octal), which makes the whole host an IPv4 address in
/// the WHATWG URL and `inet_aton` readings.
fn numeric_last_label(host: &str) -> bool {
    let last = host.rsplit('.').next().unwrap_or_default();
    let digits = last
        .strip_prefix("0x")
        .or_else(|| last.strip_prefix("0X"))
        .map_or((last, 10), |hex| (hex, 16));
    match digits {
        ("", 16) => true,
        ("", _) => false,
        (d, 16) => d.bytes().all(|b| b.is_ascii_hexdigit()),
        (d, _) => d.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn parse_port(text: &str) -> Result<u16, ()> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(());
    }
    text.parse().map_err(|_| ())
}

/// The sandboxed HTTP client behind `std::http` (see the [module documentation](self)).
pub struct HttpSandbox {
    rules: Vec<Rule>,
    /// The allowed entries as given, for messages.
    shown: Vec<String>,
    /// Built on the first request: a sandbox consulted only for its rules (the connection
    /// layer's host check, MCP URLs) sets up no TLS.
    client: std::sync::OnceLock<Result<Hyper, Arc<str>>>,
    max_body: usize,
}

impl fmt::Debug for HttpSandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSandbox")
            .field("allowed", &self.shown)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Default for HttpSandbox {
    fn default() -> HttpSandbox {
        HttpSandbox::new(&[])
    }
}

impl HttpSandbox {
    /// A client allowing `domains` (see the module documentation for the forms). An entry
    /// that cannot be parsed allows nothing and is reported with a warning; use
    /// [`HttpSandbox::try_new`] to reject it instead. An empty list refuses every request.
    pub fn new(domains: &[String]) -> HttpSandbox {
        let mut rules = Vec::new();
        let mut shown = Vec::new();
        for domain in domains {
            match Rule::parse(domain) {
                Ok(rule) => {
                    rules.push(rule);
                    shown.push(domain.trim().to_string());
                }
                Err(e) => tracing::warn!("std::http: {e}; it allows nothing"),
            }
        }
        HttpSandbox {
            rules,
            shown,
            client: std::sync::OnceLock::new(),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Like [`HttpSandbox::new`], but an entry that cannot be parsed is an error.
    ///
    /// # Errors
    /// [`SandboxError::InvalidDomain`] naming the first invalid entry and what is wrong with
    /// it.
    pub fn try_new(domains: &[String]) -> Result<HttpSandbox, SandboxError> {
        for domain in domains {
            Rule::parse(domain)?;
        }
        Ok(HttpSandbox::new(domains))
    }

    /// The same sandbox with another response body limit, in bytes.
    pub fn with_max_body(mut self, bytes: usize) -> HttpSandbox {
        self.max_body = bytes;
        self
    }

    /// Whether a request to `host` (as in a URL: a name, an IP literal, `[v6]`) on `port`
    /// would be allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = normal_host(host);
        let ip = host.parse::<IpAddr>().ok();
        // Resolvers read `127.1`, `0x7f.0.0.1`, `0177.0.0.1`… as IPv4 addresses: a host whose
        // last label is a number is an address, and only its canonical dotted-quad form (an
        // IP rule) may match it — never a name rule such as `*.0.1`.
        if ip.is_none() && numeric_last_label(&host) {
            return false;
        }
        self.rules.iter().any(|r| r.matches(&host, ip, port))
    }

    /// Sends one request, following redirects (see the module documentation).
    ///
    /// # Errors
    /// [`OutsideError::Refused`] when the URL, or a redirect, goes to a host that is not
    /// allowed or uses a scheme other than `http`/`https`; [`OutsideError::Failed`] when a
    /// request that is allowed fails. Any HTTP status is `Ok(reply)`.
    pub async fn request(&self, request: HttpRequest) -> Result<HttpReply, OutsideError> {
        let limit = request.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let what = format!(
            "{} {}",
            request.method.to_ascii_uppercase(),
            shown_url_text(&request.url)
        );
        match tokio::time::timeout(limit, self.exchange(request)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(OutsideError::failed(
                OutsideFailureKind::Timeout,
                format!(
                    "std::http: {what} timed out after {}",
                    human_duration(limit)
                ),
            )),
        }
    }

    async fn exchange(&self, request: HttpRequest) -> Result<HttpReply, OutsideError> {
        let upper = request.method.to_ascii_uppercase();
        let mut method = match upper.as_str() {
            "GET" => Method::GET,
            "POST" => Method::POST,
            "PUT" => Method::PUT,
            "DELETE" => Method::DELETE,
            "PATCH" => Method::PATCH,
            "HEAD" => Method::HEAD,
            _ => {
                return Err(invalid_request(format!(
                    "std::http: unsupported HTTP method: {}",
                    request.method
                )));
            }
        };
        let mut headers = request.headers;
        let mut body = request.body;
        let mut url = request.url;
        let mut uri = self.admit(&url)?;
        let client = self
            .client
            .get_or_init(build_client)
            .as_ref()
            .map_err(|e| connection(format!("std::http: the HTTP client is unavailable: {e}")))?;
        let mut hops = 0usize;
        loop {
            let outgoing = build_request(&method, &uri, &headers, body.as_deref())?;
            let response = client.request(outgoing).await.map_err(|e| {
                connection(format!(
                    "std::http: {method} {} failed: {}",
                    shown_url(&uri),
                    error_chain(&e)
                ))
            })?;
            let status = response.status();
            let location = response
                .headers()
                .get(LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            if let (true, Some(location)) = (is_redirect(status), location) {
                if hops >= MAX_REDIRECTS {
                    return Err(redirect(format!(
                        "std::http: {} {} redirected more than {MAX_REDIRECTS} times",
                        upper,
                        shown_url_text(&url)
                    )));
                }
                hops += 1;
                let next_url = resolve(&uri, &location).map_err(|why| {
                    redirect(format!(
                        "std::http: {method} {} answered a redirect with an invalid \
                         location: {why}",
                        shown_url(&uri)
                    ))
                })?;
                let next = self.admit(&next_url).map_err(|fail| match fail {
                    OutsideError::Refused(message) => OutsideError::Refused(format!(
                        "{message} (redirected from {})",
                        shown_url(&uri)
                    )),
                    other => other,
                })?;
                if !same_origin(&uri, &next) {
                    headers.retain(|(name, _)| {
                        !ORIGIN_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                    });
                }
                let to_get = status == StatusCode::SEE_OTHER
                    || (matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                        && method == Method::POST);
                if to_get && method != Method::HEAD {
                    method = Method::GET;
                    body = None;
                    headers.retain(|(name, _)| {
                        !BODY_HEADERS.contains(&name.to_ascii_lowercase().as_str())
                    });
                }
                drop(response);
                url = next_url;
                uri = next;
                continue;
            }
            let headers_out = response
                .headers()
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let collected = Limited::new(response.into_body(), self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        too_large(format!(
                            "std::http: the response of {method} {} is larger than the \
                             {} limit",
                            shown_url(&uri),
                            human_bytes(self.max_body)
                        ))
                    } else {
                        connection(format!(
                            "std::http: reading the response of {method} {} failed: {}",
                            shown_url(&uri),
                            error_chain(e.as_ref())
                        ))
                    }
                })?;
            let bytes = collected.to_bytes();
            return Ok(HttpReply {
                status: status.as_u16(),
                headers: headers_out,
                body: String::from_utf8_lossy(&bytes).into_owned(),
            });
        }
    }

    /// Checks a URL: scheme, host against the allowed domains, no credentials.
    fn admit(&self, url: &str) -> Result<Uri, OutsideError> {
        let url = url.trim();
        let Some(scheme) = scheme_of(url) else {
            return Err(invalid_request(format!(
                "std::http: `{}` is not an absolute http or https URL",
                shown_url_text(url)
            )));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(OutsideError::refused(format!(
                "std::http: `{scheme}:` URLs are not allowed, only http and https"
            )));
        }
        let uri: Uri = url.parse().map_err(|e| {
            invalid_request(format!(
                "std::http: invalid URL `{}`: {e}",
                shown_url_text(url)
            ))
        })?;
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            return Err(invalid_request(format!(
                "std::http: the URL `{}` has no host",
                shown_url_text(url)
            )));
        };
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if !self.allows(host, port) {
            let allowed = if self.shown.is_empty() {
                "no domain is allowed".to_string()
            } else {
                format!("allowed: {}", self.shown.join(", "))
            };
            let shown_host = match uri.port_u16() {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            };
            let flag_host = host.trim_start_matches('[').trim_end_matches(']');
            return Err(OutsideError::refused(format!(
                "std::http: host `{shown_host}` is not allowed ({allowed}); allow it with \
                 `--allow-net {flag_host}`"
            )));
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(invalid_request(format!(
                "std::http: credentials in the URL (`user@`) are not supported in `{}`; \
                 send an `authorization` header instead",
                shown_url(&uri)
            )));
        }
        Ok(uri)
    }
}

fn build_client() -> Result<Hyper, Arc<str>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match hyper_rustls::HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider) {
        Ok(builder) => {
            let https = builder
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            Ok(Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(POOL_IDLE)
                .build(https))
        }
        Err(e) => Err(Arc::from(format!("the TLS configuration failed: {e}"))),
    }
}

fn build_request(
    method: &Method,
    uri: &Uri,
    headers: &[(String, String)],
    body: Option<&str>,
) -> Result<Request<Full<Bytes>>, OutsideError> {
    let mut builder = Request::builder().method(method.clone()).uri(uri.clone());
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| invalid_request(format!("std::http: invalid header name `{name}`")))?;
        let value = HeaderValue::from_str(value).map_err(|_| {
            invalid_request(format!("std::http: invalid value for header `{name}`"))
        })?;
        builder = builder.header(header, value);
    }
    let body = Full::new(Bytes::from(body.unwrap_or_default().to_string()));
    builder
        .body(body)
        .map_err(|e| invalid_request(format!("std::http: invalid request: {e}")))
}

/// A failure of kind [`OutsideFailureKind::InvalidRequest`].
fn invalid_request(message: String) -> OutsideError {
    OutsideError::failed(OutsideFailureKind::InvalidRequest, message)
}

/// A failure of kind [`OutsideFailureKind::Connection`].
fn connection(message: String) -> OutsideError {
    OutsideError::failed(OutsideFailureKind::Connection, message)
}

/// A failure of kind [`OutsideFailureKind::Redirect`].
fn redirect(message: String) -> OutsideError {
    OutsideError::failed(OutsideFailureKind::Redirect, message)
}

/// A failure of kind [`OutsideFailureKind::TooLarge`].
fn too_large(message: String) -> OutsideError {
    OutsideError::failed(OutsideFailureKind::TooLarge, message)
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// A URL host for matching: lower case, no brackets, no trailing dot.
fn normal_host(host: &str) -> String {
    let host = host.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

/// The scheme of an absolute URL (`http` in `http://…`), if it has one.
fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(scheme)
}

fn default_port(uri: &Uri) -> u16 {
    uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    })
}

fn same_origin(a: &Uri, b: &Uri) -> bool {
    let scheme = |u: &Uri| u.scheme_str().map(str::to_ascii_lowercase);
    let host = |u: &Uri| u.host().map(normal_host);
    scheme(a) == scheme(b) && host(a) == host(b) && default_port(a) == default_port(b)
}

/// A URL for messages: no credentials, no query string.
fn shown_url(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let authority = uri
        .authority()
        .map(|a| {
            let a = a.as_str();
            a.rsplit_once('@').map_or(a, |(_, host)| host).to_string()
        })
        .unwrap_or_default();
    format!("{scheme}://{authority}{}", uri.path())
}

/// [`shown_url`] for text that may not parse.
fn shown_url_text(url: &str) -> String {
    match url.trim().parse::<Uri>() {
        Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => shown_url(&uri),
        _ => {
            let end = url.find(['?', '#']).unwrap_or(url.len());
            let head = url.get(..end).unwrap_or(url);
            match head.split_once("://") {
                Some((scheme, rest)) => {
                    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                    format!("{scheme}://{authority}{path}")
                }
                None => head.to_string(),
            }
        }
    }
}

/// Resolves a `Location` against the URL it came from (RFC 3986 §5.2, fragments dropped).
fn resolve(base: &Uri, location: &str) -> Result<String, String> {
    let location = location.trim();
    let location = location
        .split_once('#')
        .map_or(location, |(before, _)| before);
    if scheme_of(location).is_some() {
        return Ok(location.to_string());
    }
    let scheme = base.scheme_str().unwrap_or("http");
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    let authority = base
        .authority()
        .map(|a| a.as_str().to_string())
        .ok_or_else(|| "the request had no host".to_string())?;
    let origin = format!("{scheme}://{authority}");
    if location.is_empty() {
        let query = base.query().map(|q| format!("?{q}")).unwrap_or_default();
        return Ok(format!("{origin}{}{query}", base.path()));
    }
    if location.starts_with('?') {
        return Ok(format!("{origin}{}{location}", base.path()));
    }
    let (path, query) = match location.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (location, None),
    };
    let merged = if path.starts_with('/') {
        path.to_string()
    } else {
        let base_path = base.path();
        let dir = base_path.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{path}")
    };
    let mut out = format!("{origin}{}", remove_dot_segments(&merged));
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut text = format!("/{}", out.join("/"));
    if trailing && !text.ends_with('/') {
        text.push('/');
    }
    text
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MiB", n / (1024 * 1024))
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(domains: &[&str]) -> HttpSandbox {
        HttpSandbox::new(&domains.iter().map(|d| d.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn domain_rules() {
        let s = sandbox(&[
            "example.com",
            "*.api.test",
            "localhost:8080",
            "127.0.0.1",
            "[::1]",
        ]);
        assert!(s.allows("example.com", 443));
        assert!(s.allows("EXAMPLE.com.", 80));
        assert!(
            !s.allows("www.example.com", 443),
            "a plain entry is the exact host"
        );
        assert!(!s.allows("example.com.evil.net", 443));
        assert!(!s.allows("notexample.com", 443));
        assert!(s.allows("a.api.test", 443));
        assert!(s.allows("a.b.api.test", 443));
        assert!(!s.allows("api.test", 443), "a wildcard is subdomains only");
        assert!(!s.allows("evilapi.test", 443));
        assert!(s.allows("localhost", 8080));
        assert!(!s.allows("localhost", 8081));
        assert!(s.allows("127.0.0.1", 1));
        assert!(!s.allows("127.0.0.2", 1));
        assert!(s.allows("[::1]", 1));
        assert!(s.allows("::1", 1));
        assert!(!s.allows("[::ffff:127.0.0.1]", 1));
    }

    #[test]
    fn names_never_match_addresses() {
        let s = sandbox(&["*.0.0.1", "1"]);
        assert!(!s.allows("127.0.0.1", 80));
        assert!(!s.allows("0.0.0.1", 80));
    }

    #[test]
    fn invalid_entries_are_reported() {
        for bad in [
            "",
            "*",
            "a.*.com",
            "exa mple.com",
            "[::1",
            "host:port",
            "[::1]x",
            "..",
        ] {
            assert!(
                HttpSandbox::try_new(&[bad.to_string()]).is_err(),
                "`{bad}` should be invalid"
            );
        }
        assert!(HttpSandbox::try_new(&["*.example.com:8443".to_string()]).is_ok());
        let err =
            HttpSandbox::try_new(&["ok.test".to_string(), "a.*.com".to_string()]).unwrap_err();
        assert!(
            matches!(&err, SandboxError::InvalidDomain { entry, .. } if entry == "a.*.com"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "invalid allowed domain `a.*.com`: `*` is only allowed as the first label \
             (`*.example.com`)"
        );
    }

    #[test]
    fn relative_locations_resolve() {
        let base: Uri = "http://h:1/a/b/c?x=1".parse().unwrap();
        assert_eq!(resolve(&base, "/z").unwrap(), "http://h:1/z");
        assert_eq!(resolve(&base, "d").unwrap(), "http://h:1/a/b/d");
        assert_eq!(resolve(&base, "../d?q").unwrap(), "http://h:1/a/d?q");
        assert_eq!(resolve(&base, "?y=2").unwrap(), "http://h:1/a/b/c?y=2");
        assert_eq!(resolve(&base, "//other/p").unwrap(), "http://other/p");
        assert_eq!(resolve(&base, "https://x/y#f").unwrap(), "https://x/y");
        assert_eq!(resolve(&base, "../../../../d").unwrap(), "http://h:1/d");
        assert_eq!(resolve(&base, "./").unwrap(), "http://h:1/a/b/");
    }

    #[test]
    fn shown_urls_hide_credentials_and_queries() {
        assert_eq!(
            shown_url_text("http://user:secret@h/p?key=sk-123"),
            "http://h/p"
        );
        assert_eq!(shown_url_text("ftp://u:p@h/x?k"), "ftp://h/x");
    }
}
