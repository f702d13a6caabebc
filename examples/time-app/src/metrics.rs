//! `/metrics`: what the app has served, in the Prometheus text format, for metric gates.
//!
//! Two series families, both labelled with the app's `version` (the image tag) so a query can
//! compare a new release with the stable one even where pod labels are not kept:
//! - `http_requests_total{version, code}`: requests answered, by status code;
//! - `http_request_duration_seconds{version}`: how long each answer took (the `LATENCY_MS`
//!   delay included), as a histogram whose buckets resolve the delays the fault knobs make.
//!
//! `/metrics` itself is neither counted nor timed: scrapes would otherwise dilute the ratios.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The path the metrics are served on (and the scrape annotation names).
pub const METRICS_PATH: &str = "/metrics";

/// Latency buckets in seconds: fine below 100 ms (a healthy answer), then up to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    version: String,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: String,
}

/// The app's metrics and the registry that prints them.
#[derive(Debug)]
pub struct Metrics {
    version: String,
    requests: Family<RequestLabels, Counter>,
    latency: Family<VersionLabel, Histogram>,
    registry: Registry,
}

impl Metrics {
    pub fn new(version: &str) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<VersionLabel, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        let mut registry = Registry::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by status code",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        Metrics {
            version: version.to_string(),
            requests,
            latency,
            registry,
        }
    }

    /// Counts one answer.
    pub fn observe(&self, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                version: self.version.clone(),
                code,
            })
            .inc();
        self.latency
            .get_or_create(&VersionLabel {
                version: self.version.clone(),
            })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// Middleware: times and counts every request but the scrapes.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    if request.uri().path() == METRICS_PATH {
        return next.run(request).await;
    }
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.observe(response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
pub async fn serve(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("could not encode the metrics: {e}\n"),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_version_and_code() {
        let metrics = Metrics::new("v2");
        metrics.observe(200, 0.004);
        metrics.observe(200, 0.35);
        metrics.observe(500, 0.001);
        let text = metrics.render().unwrap_or_default();
        assert!(
            text.contains(r#"http_requests_total{version="v2",code="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_requests_total{version="v2",code="500"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_request_duration_seconds_bucket{le="0.3",version="v2"} 2"#)
                || text
                    .contains(r#"http_request_duration_seconds_bucket{version="v2",le="0.3"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"http_request_duration_seconds_count{version="v2"} 3"#),
            "{text}"
        );
    }
}
