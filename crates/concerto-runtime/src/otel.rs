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
use parking_lot::Mutex;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The OTLP exporter of a process's run spans.
pub struct OtlpExport {
    provider: SdkTracerProvider,
    failures: Arc<Mutex<Failures>>,
}

/// The exports the collector did not take: how many spans they held, and the last error.
#[derive(Debug, Default)]
struct Failures {
    spans: usize,
    last: Option<String>,
}

/// The OTLP exporter, counting the spans of every export that fails (the SDK's batch
/// processor drops them and only says so in its own internal log).
#[derive(Debug)]
struct Watched {
    inner: opentelemetry_otlp::SpanExporter,
    failures: Arc<Mutex<Failures>>,
}

impl opentelemetry_sdk::trace::SpanExporter for Watched {
    fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> impl std::future::Future<Output = opentelemetry_sdk::error::OTelSdkResult> + Send {
        let spans = batch.len();
        let sent = self.inner.export(batch);
        async move {
            let result = sent.await;
            if let Err(e) = &result {
                let mut failures = self.failures.lock();
                failures.spans += spans;
                failures.last = Some(e.to_string());
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
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
        let failures = Arc::new(Mutex::new(Failures::default()));
        let exporter = Watched {
            inner: exporter,
            failures: failures.clone(),
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        Ok(OtlpExport { provider, failures })
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

    /// Sends the spans queued so far and waits until the collector took them (or the export
    /// failed). Call it outside an async context.
    ///
    /// # Errors
    /// The flush failed, or some spans were not delivered since the exporter was made.
    pub fn flush(&self) -> Result<(), String> {
        let flushed = self.provider.force_flush();
        self.undelivered()?;
        flushed.map_err(|e| format!("OTLP export: {e}"))
    }

    /// `Err` saying how many spans were not delivered and why, if any were not.
    fn undelivered(&self) -> Result<(), String> {
        let failures = self.failures.lock();
        if failures.spans > 0 {
            return Err(format!(
                "OTLP export: {} {} could not be sent: {}",
                failures.spans,
                if failures.spans == 1 { "span" } else { "spans" },
                failures.last.as_deref().unwrap_or("unknown error")
            ));
        }
        Ok(())
    }

    /// Sends the spans still queued and stops the exporter. Call it after the last run,
    /// outside an async context.
    ///
    /// # Errors
    /// Some spans were not delivered, at any time since the exporter was made (the
    /// collector could not be reached or refused them): the message says how many and the
    /// last error; or the exporter could not be shut down.
    pub fn shutdown(&self) -> Result<(), String> {
        let stopped = self.provider.shutdown();
        self.undelivered()?;
        stopped.map_err(|e| format!("OTLP export: spans may not have been delivered: {e}"))
    }
}

/// The exporter [`install`] set up, and its endpoint: one per process.
static INSTALLED: Mutex<Option<(String, Arc<OtlpExport>)>> = Mutex::new(None);

/// Exports the spans of every run in this process to the collector at `endpoint` (a base
/// URL, as for [`OtlpExport::new`]): makes the exporter and sets the process's global
/// `tracing` subscriber to one that sends the run spans to it. What
/// [`RuntimeConfig::otlp_endpoint`](crate::RuntimeConfig::otlp_endpoint) does on a runtime's
/// first run; a later call with the same endpoint returns the same exporter. Call it
/// outside an async context.
///
/// # Errors
/// The endpoint is not an http(s) URL; another endpoint was installed before (one per
/// process); the process already has a global subscriber (add [`OtlpExport::layer`] to it
/// instead).
pub fn install(endpoint: &str) -> Result<Arc<OtlpExport>, String> {
    use tracing_subscriber::layer::SubscriberExt;
    let mut installed = INSTALLED.lock();
    if let Some((at, export)) = &*installed {
        return if at == endpoint {
            Ok(export.clone())
        } else {
            Err(format!(
                "spans of this process already go to {at}; one OTLP endpoint per process"
            ))
        };
    }
    let export = Arc::new(OtlpExport::new(Some(endpoint))?);
    let subscriber = tracing_subscriber::registry().with(export.layer());
    tracing::subscriber::set_global_default(subscriber).map_err(|_| {
        "the process already has a global tracing subscriber: add \
         concerto_runtime::otel::OtlpExport::layer() to it instead"
            .to_string()
    })?;
    *installed = Some((endpoint.to_string(), export.clone()));
    Ok(export)
}

/// [`install`] on the blocking pool (it makes a blocking HTTP client).
pub(crate) async fn install_off_workers(
    endpoint: String,
) -> Result<Arc<OtlpExport>, crate::RuntimeError> {
    let installed = tokio::task::spawn_blocking(move || install(&endpoint))
        .await
        .map_err(|e| crate::SetupError::Otlp(e.to_string()))?;
    Ok(installed.map_err(crate::SetupError::Otlp)?)
}

/// After a run: its spans reach the collector before the run returns (a host may exit right
/// after). What is not delivered is dropped; the run's outcome stands.
pub(crate) async fn flush_after_run(export: Option<Arc<OtlpExport>>) {
    if let Some(export) = export {
        let _ = tokio::task::spawn_blocking(move || export.flush()).await;
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
