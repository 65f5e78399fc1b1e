//! `std::http` in a build without the `http` feature: there is no HTTP client, and every
//! request fails with an error naming the feature (never silently).

use concerto_vm::host::{HostError, HttpReply, HttpRequest, OutsideError};

use crate::SandboxError;

/// Stands in for the sandboxed HTTP client of builds with the `http` feature.
#[derive(Debug, Default)]
pub struct HttpSandbox {
    _private: (),
}

impl HttpSandbox {
    /// A client that sends nothing: this build has no HTTP client (`domains` are ignored).
    pub fn new(_domains: &[String]) -> HttpSandbox {
        HttpSandbox::default()
    }

    /// As [`HttpSandbox::new`].
    ///
    /// # Errors
    /// None in this build.
    pub fn try_new(domains: &[String]) -> Result<HttpSandbox, SandboxError> {
        Ok(HttpSandbox::new(domains))
    }

    /// Whether a request to `host` on `port` would be allowed: never, in this build (so MCP
    /// servers over HTTP are refused too).
    pub fn allows(&self, _host: &str, _port: u16) -> bool {
        false
    }

    /// Fails every request, naming the missing feature.
    ///
    /// # Errors
    /// Always: [`OutsideError::Host`] with an unsupported-feature error.
    pub async fn request(&self, request: HttpRequest) -> Result<HttpReply, OutsideError> {
        Err(OutsideError::Host(HostError::unsupported(format!(
            "std::http ({} {}): this runtime was built without the `http` feature of \
             concerto-tools / concerto-runtime",
            request.method.to_ascii_uppercase(),
            request.url.split('?').next().unwrap_or_default()
        ))))
    }
}
