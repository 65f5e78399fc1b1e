//! Export of a run's spans over OTLP/HTTP with protobuf bodies (feature `otel`, on by
//! default): the format Jaeger, Grafana Tempo, Honeycomb, Arize Phoenix and Langfuse
//! accept. [`OtlpExport`] holds an OpenTelemetry tracer provider with a batch span
//! processor (its own thread, a blocking HTTP client) and hands out a `tracing_subscriber`
//! layer for the spans of [`vm::SPAN_TARGET`](crate::vm::SPAN_TARGET); the host adds that
//! layer to its subscriber (the CLI does, for `--otlp URL` or `OTEL_EXPORTER_OTLP_ENDPOINT`)
//! and calls [`OtlpExport::shutdown`] before it exits, which sends what is still queued.
//!
//! Each `tracing` span becomes one OpenTelemetry span: its `otel.name` field is the span's
//! name (`invoke_agent <Agent>`, `chat <model>`, `execute_tool <Tool::method>`), its other
//! fields are attributes, and its parent is the span it was made under.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The OTLP exporter of a process's run spans.
pub struct OtlpExport {
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExport").finish_non_exhaustive()
    }
}

/// Whether the standard variables ask for an OTLP export of traces
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`, not empty).
pub fn endpoint_in_env() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

impl OtlpExport {
    /// An exporter to the collector at `endpoint`, a base URL as in
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (`http://localhost:4318`: spans go to its
    /// `/v1/traces`); `None` takes the endpoint from the standard variables
    /// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as it is, else `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// plus `/v1/traces`). The service is named by `OTEL_SERVICE_NAME`, else
    /// `concerto`. Make it outside an async context (its HTTP client is a blocking one).
    ///
    /// # Errors
    /// The endpoint is not a URL, or the exporter cannot be built.
    pub fn new(endpoint: Option<&str>) -> Result<OtlpExport, String> {
        let mut builder = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(http_client()?);
        if let Some(base) = endpoint {
            let url = format!("{}/v1/traces", base.trim_end_matches('/'));
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "OTLP endpoint `{base}` is not an http:// or https:// URL"
                ));
            }
            builder = builder.with_endpoint(url);
        }
        let exporter = builder
            .build()
            .map_err(|e| format!("cannot set up the OTLP exporter: {e}"))?;
        let service = std::env::var("OTEL_SERVICE_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "concerto".to_string());
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service)
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(OtlpExport { provider })
    }

    /// The layer that turns the run's spans (target
    /// [`vm::SPAN_TARGET`](crate::vm::SPAN_TARGET) only) into OpenTelemetry spans.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
    {
        let tracer = self.provider.tracer("concerto");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(crate::vm::SPAN_TARGET, tracing::Level::INFO),
            )
    }

    /// Sends the spans still queued and stops the exporter. Call it after the last run,
    /// outside an async context.
    ///
    /// # Errors
    /// The collector could not be reached or refused the spans.
    pub fn shutdown(&self) -> Result<(), String> {
        self.provider
            .shutdown()
            .map_err(|e| format!("OTLP export: {e}"))
    }
}

/// The exporter's HTTP client: rustls on ring with the webpki roots (the TLS stack of the
/// LLM connections and MCP), no proxy, a 10 s limit per export.
fn http_client() -> Result<reqwest::blocking::Client, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("OTLP export: cannot set up TLS: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| format!("OTLP export: cannot build the HTTP client: {e}"))
}
