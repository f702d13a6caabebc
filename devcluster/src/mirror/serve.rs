//! The data plane: HTTP/1.1 on the Gateway's address. Each request takes the rule
//! [`routing::select`] finds, goes to one ready pod of one backend chosen by weight, and its
//! answer streams back. Rules with `RequestMirror` filters send a copy of (a share of) the
//! requests to a ready pod of the mirror's Service, fire and forget: the copy's answer is
//! dropped, it never delays or changes the client's, and copies are bounded in time
//! ([`MIRROR_TIMEOUT`]) and number in flight ([`MAX_MIRRORS_IN_FLIGHT`], more are skipped).
//! Traffic only ever goes to pod addresses (the service proxy's guard), never to ClusterIPs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, request::Parts, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::Store;
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info};

use super::routing::{self, ServicePort, Table};
use crate::agent::proxy::routes as endpoints;

/// The largest request body forwarded (it is held in memory, to be sent to a mirror as well).
pub const MAX_BODY: usize = 8 << 20;
/// Requests served at once; more get 503 at once instead of queueing without bound.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 512;
/// Mirrored copies in flight; a copy that finds them all taken is skipped (and logged).
pub const MAX_MIRRORS_IN_FLIGHT: usize = 64;
/// How long a mirrored copy may take, answer included, before it is dropped.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a forwarded request may take, answer included.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(60);
/// Pods one request is tried on when connecting fails (nothing was sent yet, so it is safe).
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// What every request handler reads: the routing table (swapped whole when routes change) and
/// the EndpointSlices.
pub struct Shared {
    pub table: watch::Receiver<Arc<Table>>,
    pub endpoints: Store<EndpointSlice>,
    pub http: reqwest::Client,
    pub requests: Arc<Semaphore>,
    pub mirrors: Arc<Semaphore>,
}

impl Shared {
    pub fn new(
        table: watch::Receiver<Arc<Table>>,
        endpoints: Store<EndpointSlice>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // Never through a proxy from the environment: only pod addresses are reached.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(crate::agent::proxy::CONNECT_TIMEOUT)
            .http1_only()
            .build()?;
        Ok(Self {
            table,
            endpoints,
            http,
            requests: Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT)),
            mirrors: Arc::new(Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
        })
    }
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let app = Router::new().fallback(handle).with_state(shared);
    axum::serve(listener, app).await
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let Ok(_slot) = s.requests.clone().try_acquire_owned() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the mirror gateway has too many requests in flight",
        );
    };
    let (parts, body) = req.into_parts();
    let host_header = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(parts.uri.host())
        .unwrap_or_default();
    let host = routing::request_host(host_header);
    let table = s.table.borrow().clone();
    let Some(entry) = routing::select(&table, &host, parts.uri.path(), &parts.headers) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no HTTPRoute of this gateway matches host {host:?}, path {:?} and these headers",
                parts.uri.path()
            ),
        );
    };
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body not read (at most {MAX_BODY} bytes): {e}"),
            )
        }
    };
    for m in &entry.mirrors {
        if routing::mirror_hit(m, |n| fastrand::u32(..n)) {
            mirror(&s, &m.target, &parts, body.clone(), &entry.route);
        }
    }
    let Some(i) = routing::pick_weighted(&entry.backends, |n| fastrand::u64(..n)) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "route {} has no backend with a weight above 0 for this request",
                entry.route
            ),
        );
    };
    let Some(target) = entry.backends.get(i).and_then(|b| b.target.as_ref()) else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "a backend of route {} does not resolve; see the route's ResolvedRefs condition",
                entry.route
            ),
        );
    };
    forward(&s, target, &parts, body).await
}

/// The ready pod addresses of a Service port.
fn ready(s: &Shared, target: &ServicePort) -> Vec<SocketAddr> {
    let slices = s.endpoints.state();
    let of_service = slices
        .iter()
        .map(|sl| sl.as_ref())
        .filter(|sl| endpoints::slice_of(sl, &target.namespace, &target.service));
    endpoints::ready_backends(of_service, &target.port_name).ready
}

fn describe(t: &ServicePort) -> String {
    format!("{}/{}:{}", t.namespace, t.service, t.port)
}

/// Headers that describe one connection, not the request: never passed on (RFC 9110 7.6.1),
/// with those the `Connection` header names.
fn end_to_end(headers: &HeaderMap) -> HeaderMap {
    const HOP: [&str; 9] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    let named: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        let n = name.as_str();
        if !HOP.contains(&n) && !named.iter().any(|x| x == n) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

fn request(
    s: &Shared,
    to: SocketAddr,
    parts: &Parts,
    body: Bytes,
    timeout: Duration,
) -> reqwest::RequestBuilder {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut headers = end_to_end(&parts.headers);
    // The body was read whole; its length is set again from it.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        header::HeaderValue::from_static("http"),
    );
    s.http
        .request(parts.method.clone(), format!("http://{to}{path}"))
        .headers(headers)
        .body(body)
        .timeout(timeout)
}

/// Sends a copy and forgets it; skipped when no pod of the mirror is ready or too many copies
/// are in flight.
fn mirror(s: &Arc<Shared>, target: &ServicePort, parts: &Parts, body: Bytes, route: &str) {
    let Ok(slot) = s.mirrors.clone().try_acquire_owned() else {
        info!(route, mirror = %describe(target), "mirror copy skipped: {MAX_MIRRORS_IN_FLIGHT} copies already in flight");
        return;
    };
    let pods = ready(s, target);
    let Some(to) = pods.get(fastrand::usize(..pods.len().max(1))).copied() else {
        debug!(route, mirror = %describe(target), "mirror copy skipped: no ready pod");
        return;
    };
    let copy = request(s, to, parts, body, MIRROR_TIMEOUT);
    let (route, target) = (route.to_string(), describe(target));
    tokio::spawn(async move {
        let _slot = slot;
        let sent = async {
            let mut answer = copy.send().await?;
            while answer.chunk().await?.is_some() {}
            Ok::<_, reqwest::Error>(answer.status())
        };
        match sent.await {
            Ok(status) => debug!(route, mirror = target, %to, %status, "mirror copy answered"),
            Err(e) => {
                debug!(route, mirror = target, %to, error = &e as &dyn std::error::Error, "mirror copy failed")
            }
        }
    });
}

async fn forward(s: &Shared, target: &ServicePort, parts: &Parts, body: Bytes) -> Response {
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let pods = ready(s, target);
        let Some(to) = endpoints::pick_untried(&pods, &tried, |n| fastrand::usize(..n)) else {
            return match tried.is_empty() {
                true => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Service {} has no ready endpoint", describe(target)),
                ),
                false => text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "no ready pod of Service {} accepted a connection (tried {tried:?})",
                        describe(target)
                    ),
                ),
            };
        };
        match request(s, to, parts, body.clone(), FORWARD_TIMEOUT)
            .send()
            .await
        {
            Ok(answer) => return respond(answer),
            Err(e) if e.is_connect() && tried.len() + 1 < MAX_CONNECT_ATTEMPTS => {
                info!(service = %describe(target), %to, error = &e as &dyn std::error::Error, "trying another ready pod");
                tried.push(to);
            }
            Err(e) => {
                return text(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "forwarding to {to} (Service {}): {}",
                        describe(target),
                        crate::mirror::chain(&e)
                    ),
                )
            }
        }
    }
}

/// The pod's answer, streamed back as it arrives.
fn respond(answer: reqwest::Response) -> Response {
    let status = answer.status();
    let headers = end_to_end(answer.headers());
    let chunks = futures::stream::unfold(Some(answer), |answer| async move {
        let mut answer = answer?;
        match answer.chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(answer))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    let mut response = Response::new(Body::from_stream(chunks));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_headers_are_not_passed_on() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "web.test"),
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "hop"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-canary", "yes"),
            ("accept", "*/*"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        let kept = end_to_end(&h);
        let kept: Vec<&str> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(kept, vec!["host", "x-canary", "accept"]);
    }
}
