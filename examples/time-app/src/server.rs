//! The HTTP side: routes, the fault knobs applied to `/`, and the identity headers.
//!
//! Every response, error pages included, says which version and pod answered, both in the
//! `X-App-Version` / `X-Pod-Name` headers and in the body, so a test or a person hitting the
//! Service can tell which replica they reached.

use std::error::Error;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::clock::{moscow_time_line, now_unix_secs};
use crate::metrics::{Metrics, METRICS_PATH};
use crate::settings::{Faults, Settings};
use crate::visits::VisitStore;

/// Header naming the app version (the image tag).
pub const VERSION_HEADER: &str = "x-app-version";
/// Header naming the pod that answered.
pub const POD_HEADER: &str = "x-pod-name";

/// What `/` does with one request, given the fault knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still inside `NOT_READY_SECONDS`: 503.
    NotReady,
    /// Picked by `FAIL_RATE`: 500.
    InjectedFailure,
    /// Answer normally and record the visit.
    Serve,
}

/// Decides a `/` request. `roll` is a uniform random number in `0.0..1.0`, so a rate of 1.0
/// fails every request and 0.0 none.
pub fn fault_verdict(faults: &Faults, since_start: Duration, roll: f64) -> Verdict {
    if since_start < faults.not_ready_for {
        Verdict::NotReady
    } else if roll < faults.fail_rate {
        Verdict::InjectedFailure
    } else {
        Verdict::Serve
    }
}

/// The body of every text response: a first line, then version and pod.
pub fn text_body(first_line: &str, version: &str, pod: &str) -> String {
    format!("{first_line}\nversion: {version}\npod: {pod}\n")
}

/// `error: cause: cause`, the whole chain on one line.
pub fn describe_error(err: &dyn Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A failure to set the server up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("build the {name} header from {value:?}")]
    BuildIdentityHeader {
        name: &'static str,
        value: String,
        #[source]
        source: axum::http::header::InvalidHeaderValue,
    },
}

/// Shared by all requests.
#[derive(Debug)]
pub struct AppState {
    settings: Settings,
    store: Arc<VisitStore>,
    started: Instant,
    version_header: HeaderValue,
    pod_header: HeaderValue,
    metrics: Arc<Metrics>,
}

impl AppState {
    /// `started` is when the process started; `NOT_READY_SECONDS` counts from it.
    pub fn new(
        settings: Settings,
        store: VisitStore,
        started: Instant,
    ) -> Result<Self, ServerError> {
        let header = |name: &'static str, value: &str| {
            HeaderValue::from_str(value).map_err(|source| ServerError::BuildIdentityHeader {
                name,
                value: value.to_string(),
                source,
            })
        };
        Ok(Self {
            version_header: header(VERSION_HEADER, &settings.version)?,
            pod_header: header(POD_HEADER, &settings.pod)?,
            metrics: Arc::new(Metrics::new(&settings.version)),
            settings,
            store: Arc::new(store),
            started,
        })
    }

    fn text(&self, status: StatusCode, first_line: &str) -> Response {
        let body = text_body(first_line, &self.settings.version, &self.settings.pod);
        (status, body).into_response()
    }
}

/// The app's routes, with the identity headers on every response, and `/metrics` counting
/// every other answer.
pub fn router(app: Arc<AppState>) -> Router {
    let metrics = app.metrics.clone();
    Router::new()
        .route("/", get(root))
        .route("/visits", get(visits))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .layer(axum::middleware::map_response_with_state(
            app.clone(),
            identity_headers,
        ))
        .with_state(app)
        .merge(
            Router::new()
                .route(METRICS_PATH, get(crate::metrics::serve))
                .with_state(metrics.clone()),
        )
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
}

/// Serves until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn identity_headers(State(app): State<Arc<AppState>>, mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static(VERSION_HEADER),
        app.version_header.clone(),
    );
    headers.insert(HeaderName::from_static(POD_HEADER), app.pod_header.clone());
    response
}

async fn root(State(app): State<Arc<AppState>>) -> Response {
    let faults = &app.settings.faults;
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    match fault_verdict(faults, app.started.elapsed(), fastrand::f64()) {
        Verdict::NotReady => {
            let line = format!(
                "not ready: starting up (NOT_READY_SECONDS={})",
                faults.not_ready_for.as_secs()
            );
            return app.text(StatusCode::SERVICE_UNAVAILABLE, &line);
        }
        Verdict::InjectedFailure => {
            let line = format!("injected failure (FAIL_RATE={})", faults.fail_rate);
            return app.text(StatusCode::INTERNAL_SERVER_ERROR, &line);
        }
        Verdict::Serve => {}
    }

    let line = moscow_time_line(now_unix_secs());
    let store = app.store.clone();
    let record = line.clone();
    // File writes and fsync block; keep them off the async workers.
    match tokio::task::spawn_blocking(move || store.append(&record)).await {
        Ok(Ok(())) => app.text(StatusCode::OK, &line),
        Ok(Err(err)) => {
            let message = format!("could not record the visit: {}", describe_error(&err));
            eprintln!("time-app: {message}");
            app.text(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
        Err(join) => {
            let message = format!("could not record the visit: {join}");
            eprintln!("time-app: {message}");
            app.text(StatusCode::INTERNAL_SERVER_ERROR, &message)
        }
    }
}

/// The `/visits` JSON body.
#[derive(Debug, Serialize)]
struct VisitsBody<'a> {
    pod: &'a str,
    version: &'a str,
    total: usize,
    visits: Vec<String>,
}

async fn visits(State(app): State<Arc<AppState>>) -> Response {
    let store = app.store.clone();
    let read = tokio::task::spawn_blocking(move || store.read()).await;
    let message = match read {
        Ok(Ok(log)) => {
            let body = VisitsBody {
                pod: &app.settings.pod,
                version: &app.settings.version,
                total: log.visits.len(),
                visits: log.visits,
            };
            return Json(body).into_response();
        }
        Ok(Err(err)) => format!("could not read the visits: {}", describe_error(&err)),
        Err(join) => format!("could not read the visits: {join}"),
    };
    eprintln!("time-app: {message}");
    app.text(StatusCode::INTERNAL_SERVER_ERROR, &message)
}

async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    app.text(StatusCode::OK, "ok")
}

async fn not_found(State(app): State<Arc<AppState>>) -> Response {
    app.text(
        StatusCode::NOT_FOUND,
        "not found (routes: /, /visits, /healthz, /metrics)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_verdict_cases() {
        let secs = Duration::from_secs;
        let faults = |fail_rate: f64, not_ready: u64| Faults {
            fail_rate,
            not_ready_for: secs(not_ready),
            ..Faults::default()
        };
        let cases: &[(Faults, Duration, f64, Verdict, &str)] = &[
            (Faults::default(), secs(0), 0.0, Verdict::Serve, "no knobs"),
            (
                faults(0.0, 0),
                secs(0),
                0.999,
                Verdict::Serve,
                "rate 0 never fails",
            ),
            (
                faults(1.0, 0),
                secs(0),
                0.0,
                Verdict::InjectedFailure,
                "rate 1, low roll",
            ),
            (
                faults(1.0, 0),
                secs(0),
                0.999_999,
                Verdict::InjectedFailure,
                "rate 1, high roll",
            ),
            (
                faults(0.3, 0),
                secs(0),
                0.29,
                Verdict::InjectedFailure,
                "roll under rate",
            ),
            (faults(0.3, 0), secs(0), 0.3, Verdict::Serve, "roll at rate"),
            (
                faults(0.0, 5),
                secs(4),
                0.5,
                Verdict::NotReady,
                "inside the not-ready window",
            ),
            (faults(0.0, 5), secs(5), 0.5, Verdict::Serve, "window over"),
            (
                faults(1.0, 5),
                secs(1),
                0.0,
                Verdict::NotReady,
                "not-ready wins over failure",
            ),
            (
                faults(1.0, 5),
                secs(6),
                0.0,
                Verdict::InjectedFailure,
                "then failures",
            ),
        ];
        for (faults, since_start, roll, want, why) in cases {
            assert_eq!(fault_verdict(faults, *since_start, *roll), *want, "{why}");
        }
    }

    #[test]
    fn text_body_names_version_and_pod() {
        assert_eq!(
            text_body("Moscow time: 16:46:01", "v2", "web-0"),
            "Moscow time: 16:46:01\nversion: v2\npod: web-0\n"
        );
    }

    #[test]
    fn describe_error_joins_the_chain() {
        let err = crate::visits::VisitStoreError::AppendVisit {
            path: "/data/visits.log".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(
            describe_error(&err),
            "append a visit to /data/visits.log: disk full"
        );
    }
}
