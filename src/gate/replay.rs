//! Shadow replay: the I/O half of the shadow gate when there is no mesh or gateway to mirror
//! traffic. [`replay`] sends each listed request to a stable pod and a shadow pod at the same
//! time and feeds the two answers to a [`Comparison`] (see [`super::compare`] for how they are
//! judged).
//!
//! Bounds: requests start at most `rate_per_second` times a second (paced by a timer, not by the
//! answers, so a slow shadow does not slow stable's side of the comparison), at most
//! `max_requests` per side, none after `duration`, each answer waited for at most `timeout`, and
//! at most [`MAX_IN_FLIGHT`] pairs outstanding. Requests go only to the pod addresses given
//! (IP and port, never a name), redirects are not followed, and each carries
//! `X-Rollout-Replay: 1` so the app can tell replayed traffic from real users.

use std::net::SocketAddr;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cluster::error_chain;

use super::compare::{
    CompareSpec, CompareSpecError, Comparison, ReplayRequest, Sample, MAX_BODY_BYTES,
};

/// The header every replayed request carries.
pub const REPLAY_HEADER: &str = "x-rollout-replay";
/// Highest rate accepted: one request per millisecond per side.
pub const MAX_RATE_PER_SECOND: u32 = 1000;
/// Pairs waiting for answers at once; past it, pacing waits (targets that hang slow the replay
/// down instead of piling up connections).
pub const MAX_IN_FLIGHT: usize = 64;
/// A body is read to its end for the latency, but not past this (a stream that never ends
/// would otherwise be read until the timeout).
const MAX_READ_BYTES: usize = 16 * 1024 * 1024;
/// How often `on_progress` is called.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A stable pod and a shadow pod that get the same requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetPair {
    pub stable: SocketAddr,
    pub shadow: SocketAddr,
}

/// How much is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    pub rate_per_second: u32,
    /// Requests per side.
    pub max_requests: u32,
    /// No request starts after this.
    pub duration: Duration,
    /// Longest wait for one answer, body included.
    pub timeout: Duration,
}

impl Default for ReplayLimits {
    fn default() -> Self {
        ReplayLimits {
            rate_per_second: 10,
            max_requests: 600,
            duration: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
        }
    }
}

impl ReplayLimits {
    pub fn validate(&self) -> Result<(), ReplayError> {
        let refuse = |setting: &'static str, problem: String| {
            Err(ReplayError::CheckLimits { setting, problem })
        };
        if !(1..=MAX_RATE_PER_SECOND).contains(&self.rate_per_second) {
            return refuse(
                "rate",
                format!(
                    "{} requests a second is not between 1 and {MAX_RATE_PER_SECOND}",
                    self.rate_per_second
                ),
            );
        }
        if self.max_requests == 0 {
            return refuse(
                "max requests",
                "0 requests replays nothing; give at least 1".to_string(),
            );
        }
        if self.duration.is_zero() {
            return refuse(
                "duration",
                "a duration of 0 replays nothing; write e.g. 1m".to_string(),
            );
        }
        if self.timeout.is_zero() {
            return refuse(
                "timeout",
                "a timeout of 0 waits for no answer; write e.g. 2s".to_string(),
            );
        }
        Ok(())
    }
}

/// Why a replay could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("shadow replay has no stable and shadow pods to send requests to")]
    FindTargets,
    #[error("shadow replay has no requests to send; list at least one, e.g. `GET /`")]
    FindRequests,
    #[error("shadow replay {setting}: {problem}")]
    CheckLimits {
        setting: &'static str,
        problem: String,
    },
    #[error("shadow comparison settings: {source}")]
    CheckSpec {
        #[source]
        source: CompareSpecError,
    },
    #[error("building the HTTP client for shadow replay: {message}")]
    BuildClient { message: String },
}

/// Replays `requests` to the pairs until `max_requests` per side, `duration`, or `stop` turning
/// `true`, whichever comes first. Answers still outstanding at the end of the count or the
/// duration are waited for (each for at most the timeout); on `stop` they are dropped. A `stop`
/// whose sender is dropped no longer stops anything. `on_progress` sees the comparison about
/// once a second.
pub async fn replay(
    pairs: &[TargetPair],
    requests: &[ReplayRequest],
    limits: &ReplayLimits,
    spec: &CompareSpec,
    mut stop: watch::Receiver<bool>,
    mut on_progress: impl FnMut(&Comparison),
) -> Result<Comparison, ReplayError> {
    if pairs.is_empty() {
        return Err(ReplayError::FindTargets);
    }
    if requests.is_empty() {
        return Err(ReplayError::FindRequests);
    }
    limits.validate()?;
    let mut comparison =
        Comparison::new(spec).map_err(|source| ReplayError::CheckSpec { source })?;
    let client = replay_client(limits.timeout)?;
    let keep_bodies = spec.compare_bodies;

    let started = Instant::now();
    let deadline = tokio::time::sleep_until(started + limits.duration);
    tokio::pin!(deadline);
    let mut pace = tokio::time::interval(Duration::from_secs(1) / limits.rate_per_second);
    // After a stall (all slots busy), go on at the rate instead of sending a burst.
    pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut progress = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    let mut in_flight = FuturesUnordered::new();
    let mut sent: u32 = 0;
    let mut past_deadline = false;
    let mut stop_open = true;
    if *stop.borrow_and_update() {
        return Ok(comparison);
    }
    loop {
        let may_send = sent < limits.max_requests && !past_deadline;
        if !may_send && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            _ = pace.tick(), if may_send && in_flight.len() < MAX_IN_FLIGHT => {
                let (pair, request) = pick(sent as usize, pairs.len(), requests.len());
                let request = &requests[request];
                in_flight.push(exchange(&client, pairs[pair], request, limits.timeout, keep_bodies));
                sent += 1;
            }
            Some((request, stable, shadow)) = in_flight.next(), if !in_flight.is_empty() => {
                comparison.record(request, &stable, &shadow);
            }
            () = &mut deadline, if !past_deadline => {
                past_deadline = true;
            }
            changed = stop.changed(), if stop_open => match changed {
                Ok(()) => {
                    if *stop.borrow_and_update() {
                        return Ok(comparison);
                    }
                }
                Err(_) => stop_open = false,
            },
            _ = progress.tick() => on_progress(&comparison),
        }
    }
    Ok(comparison)
}

/// The pair and the request of the `n`th exchange: each request goes to every pair in turn
/// before the next request starts, so no request sticks to one pod whatever the two counts.
fn pick(n: usize, pairs: usize, requests: usize) -> (usize, usize) {
    (n % pairs, (n / pairs) % requests)
}

fn replay_client(timeout: Duration) -> Result<reqwest::Client, ReplayError> {
    reqwest::Client::builder()
        // A pod IP is never reached through an HTTP proxy from the environment.
        .no_proxy()
        // A redirect could lead away from the pods; the 3xx itself is the answer compared.
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
        .map_err(|e| ReplayError::BuildClient {
            message: error_chain(&e),
        })
}

/// Sends one request to both pods of a pair at once.
async fn exchange<'r>(
    client: &reqwest::Client,
    pair: TargetPair,
    request: &'r ReplayRequest,
    timeout: Duration,
    keep_body: bool,
) -> (&'r ReplayRequest, Sample, Sample) {
    let (stable, shadow) = tokio::join!(
        send(client, pair.stable, request, timeout, keep_body),
        send(client, pair.shadow, request, timeout, keep_body),
    );
    (request, stable, shadow)
}

/// `http://10.244.0.7:8080/visits`, checked to still point at `addr` once parsed (a path can
/// hold anything the user wrote).
fn replay_url(addr: SocketAddr, path: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(&format!("http://{addr}{path}"))
        .map_err(|e| format!("`{path}` does not make a URL: {e}"))?;
    let host = match addr {
        SocketAddr::V4(v4) => v4.ip().to_string(),
        SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
    };
    if url.host_str() != Some(host.as_str()) || url.port_or_known_default() != Some(addr.port()) {
        return Err(format!(
            "`{path}` would leave {addr}; write a path like `/visits`"
        ));
    }
    Ok(url)
}

/// One request to one pod: its answer (status, latency to the end of the body, the first
/// [`MAX_BODY_BYTES`] of the body when kept) or why there was none.
async fn send(
    client: &reqwest::Client,
    addr: SocketAddr,
    request: &ReplayRequest,
    timeout: Duration,
    keep_body: bool,
) -> Sample {
    let started = Instant::now();
    let url = match replay_url(addr, &request.path) {
        Ok(url) => url,
        Err(message) => return Sample::no_answer(started.elapsed(), message),
    };
    let method = match reqwest::Method::from_bytes(request.method.as_bytes()) {
        Ok(method) => method,
        Err(_) => {
            return Sample::no_answer(
                started.elapsed(),
                format!("`{}` is not an HTTP method", request.method),
            )
        }
    };
    let exchange = async {
        let mut response = client
            .request(method, url)
            .header(REPLAY_HEADER, "1")
            .send()
            .await?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        let mut read = 0usize;
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await? {
            read += chunk.len();
            if keep_body {
                let room = MAX_BODY_BYTES - body.len();
                truncated |= chunk.len() > room;
                body.extend_from_slice(&chunk[..room.min(chunk.len())]);
            }
            if read >= MAX_READ_BYTES {
                truncated = true;
                break;
            }
        }
        Ok::<_, reqwest::Error>((status, body, truncated))
    };
    let no_answer_in_time = || {
        format!(
            "{addr}: no answer within {}",
            humantime::format_duration(timeout)
        )
    };
    // The client's own timeout covers the body too; the outer one is a second guard.
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, body, truncated))) => {
            Sample::answered(status, started.elapsed(), body, truncated)
        }
        Ok(Err(e)) if e.is_timeout() => Sample::no_answer(started.elapsed(), no_answer_in_time()),
        Ok(Err(e)) => Sample::no_answer(started.elapsed(), format!("{addr}: {}", error_chain(&e))),
        Err(_) => Sample::no_answer(started.elapsed(), no_answer_in_time()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};
    use axum::Router;
    use tokio::net::TcpListener;

    use super::*;
    use crate::gate::compare::CompareVerdict;

    /// How a test server answers.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// 200 with a body that has a changing `Date:` line.
        Good,
        /// Every second request 500.
        FailsHalf,
        /// Good, after a delay.
        Slow(Duration),
        /// A redirect to `Location` (another local server).
        Redirect(u16),
        /// `visits: N` that counts up, so bodies differ beyond the date.
        Counting,
    }

    /// One request a test server got.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        path: String,
        /// The `X-Rollout-Replay` header.
        replay: Option<String>,
    }

    #[derive(Clone)]
    struct Server {
        behaviour: Behaviour,
        hits: Arc<AtomicU32>,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    async fn answer(
        State(server): State<Server>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
    ) -> Response {
        let n = server.hits.fetch_add(1, Ordering::SeqCst);
        let replay = headers
            .get(REPLAY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        server
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Seen {
                method: method.to_string(),
                path: uri.to_string(),
                replay,
            });
        let page = format!("<h1>time</h1>\nDate: {n}\nok\n");
        match server.behaviour {
            Behaviour::Good => page.into_response(),
            Behaviour::FailsHalf if n % 2 == 1 => {
                (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()
            }
            Behaviour::FailsHalf => page.into_response(),
            Behaviour::Slow(delay) => {
                tokio::time::sleep(delay).await;
                page.into_response()
            }
            Behaviour::Redirect(port) => (
                StatusCode::FOUND,
                [("location", format!("http://127.0.0.1:{port}/elsewhere"))],
            )
                .into_response(),
            Behaviour::Counting => {
                format!("<h1>time</h1>\nDate: {n}\nvisits: {n}\n").into_response()
            }
        }
    }

    struct Running {
        addr: SocketAddr,
        server: Server,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Running {
        fn hits(&self) -> u32 {
            self.server.hits.load(Ordering::SeqCst)
        }

        fn seen(&self) -> Vec<Seen> {
            self.server
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }

        /// Requests seen with this method and path.
        fn count(&self, method: &str, path: &str) -> usize {
            self.seen()
                .iter()
                .filter(|s| s.method == method && s.path == path)
                .count()
        }
    }

    async fn serve(behaviour: Behaviour) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address: {e}"));
        let server = Server {
            behaviour,
            hits: Arc::default(),
            seen: Arc::default(),
        };
        let app = Router::new().fallback(answer).with_state(server.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Running { addr, server, task }
    }

    /// An address on 127.0.0.1 where nothing listens (bound, then released).
    async fn closed_addr() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address: {e}"))
    }

    fn requests(lines: &str) -> Vec<ReplayRequest> {
        crate::gate::compare::parse_requests("test", lines).unwrap_or_else(|e| panic!("{e}"))
    }

    fn fast(max_requests: u32) -> ReplayLimits {
        ReplayLimits {
            rate_per_second: 200,
            max_requests,
            duration: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
        }
    }

    fn never_stop() -> watch::Receiver<bool> {
        // The sender is dropped: the receiver then never stops the replay.
        watch::channel(false).1
    }

    async fn run(
        pairs: &[TargetPair],
        requests: &[ReplayRequest],
        limits: &ReplayLimits,
        spec: &CompareSpec,
    ) -> Comparison {
        replay(pairs, requests, limits, spec, never_stop(), |_| {})
            .await
            .unwrap_or_else(|e| panic!("replay: {e}"))
    }

    #[test]
    fn each_request_goes_to_every_pair_in_turn() {
        // (pairs, requests): the (pair, request) of exchanges 0..6
        let cases = [
            (1, 3, [(0, 0), (0, 1), (0, 2), (0, 0), (0, 1), (0, 2)]),
            (2, 2, [(0, 0), (1, 0), (0, 1), (1, 1), (0, 0), (1, 0)]),
            (3, 1, [(0, 0), (1, 0), (2, 0), (0, 0), (1, 0), (2, 0)]),
        ];
        for (pairs, reqs, wanted) in cases {
            let got: Vec<_> = (0..6).map(|n| pick(n, pairs, reqs)).collect();
            assert_eq!(got, wanted, "{pairs} pairs, {reqs} requests");
        }
    }

    #[test]
    fn urls_stay_on_the_pod() {
        let addr: SocketAddr = "10.244.0.7:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        let cases = [
            ("/visits?x=1", Some("http://10.244.0.7:8080/visits?x=1")),
            (
                "//example.com/x",
                Some("http://10.244.0.7:8080//example.com/x"),
            ),
            ("/@example.com", Some("http://10.244.0.7:8080/@example.com")),
        ];
        for (path, wanted) in cases {
            assert_eq!(
                replay_url(addr, path).ok().map(String::from),
                wanted.map(str::to_string)
            );
        }
        assert!(replay_url(addr, "@example.com/").is_err());
        let v6: SocketAddr = "[::1]:8080".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            replay_url(v6, "/").ok().map(String::from).as_deref(),
            Some("http://[::1]:8080/")
        );
    }

    #[test]
    fn limits_are_checked() {
        assert!(ReplayLimits::default().validate().is_ok());
        let bad = [
            ReplayLimits {
                rate_per_second: 0,
                ..ReplayLimits::default()
            },
            ReplayLimits {
                rate_per_second: MAX_RATE_PER_SECOND + 1,
                ..ReplayLimits::default()
            },
            ReplayLimits {
                max_requests: 0,
                ..ReplayLimits::default()
            },
            ReplayLimits {
                duration: Duration::ZERO,
                ..ReplayLimits::default()
            },
            ReplayLimits {
                timeout: Duration::ZERO,
                ..ReplayLimits::default()
            },
        ];
        for limits in bad {
            assert!(
                matches!(limits.validate(), Err(ReplayError::CheckLimits { .. })),
                "{limits:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_good_shadow_passes_and_every_request_is_marked() {
        let stable = serve(Behaviour::Good).await;
        let shadow = serve(Behaviour::Good).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: shadow.addr,
        }];
        let spec = CompareSpec {
            compare_bodies: true,
            ignore_lines: Some("^Date:".to_string()),
            ..CompareSpec::default()
        };
        let comparison = run(&pairs, &requests("/\nHEAD /visits\n"), &fast(40), &spec).await;
        let report = comparison.report();
        assert_eq!(
            report.verdict,
            CompareVerdict::Pass,
            "{}",
            crate::gate::compare::render_report(&report)
        );
        assert_eq!(
            (
                report.requests,
                report.stable.requests,
                report.shadow.requests
            ),
            (40, 40, 40)
        );
        assert_eq!((report.stable.errors, report.shadow.errors), (0, 0));
        assert_eq!(report.status_mismatches, 0);
        assert_eq!(
            (report.bodies_compared, report.body_mismatches),
            (Some(40), Some(0))
        );
        assert_eq!((stable.hits(), shadow.hits()), (40, 40));
        for server in [&stable, &shadow] {
            assert_eq!(server.count("GET", "/"), 20);
            assert_eq!(server.count("HEAD", "/visits"), 20);
            let seen = server.seen();
            assert!(
                seen.iter().all(|s| s.replay.as_deref() == Some("1")),
                "{seen:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_shadow_failing_half_the_time_fails_on_its_error_rate() {
        let stable = serve(Behaviour::Good).await;
        let shadow = serve(Behaviour::FailsHalf).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: shadow.addr,
        }];
        let report = run(&pairs, &requests("/\n"), &fast(40), &CompareSpec::default())
            .await
            .report();
        assert_eq!(report.stable.errors, 0);
        assert_eq!(report.shadow.errors, 20);
        assert_eq!(report.status_mismatches, 20);
        match &report.verdict {
            CompareVerdict::Fail { reasons } => {
                assert_eq!(
                    reasons[0],
                    "error rate 50.0% vs stable 0.0% (limit +1.0 pts)"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            report.examples[0].starts_with("GET /: stable 200, shadow 500"),
            "{:?}",
            report.examples
        );
    }

    #[tokio::test]
    async fn a_slow_shadow_fails_on_p95() {
        let stable = serve(Behaviour::Good).await;
        let shadow = serve(Behaviour::Slow(Duration::from_millis(100))).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: shadow.addr,
        }];
        let report = run(&pairs, &requests("/\n"), &fast(30), &CompareSpec::default())
            .await
            .report();
        assert_eq!((report.stable.errors, report.shadow.errors), (0, 0));
        let shadow_p95 = report.shadow.p95_ms.unwrap_or_default();
        assert!(shadow_p95 >= 100.0, "{shadow_p95}");
        match &report.verdict {
            CompareVerdict::Fail { reasons } => {
                assert_eq!(reasons.len(), 1, "{reasons:?}");
                assert!(reasons[0].starts_with("p95 latency "), "{reasons:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_shadow_that_is_down_fails_and_says_why() {
        let stable = serve(Behaviour::Good).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: closed_addr().await,
        }];
        let report = run(&pairs, &requests("/\n"), &fast(20), &CompareSpec::default())
            .await
            .report();
        assert_eq!((report.shadow.errors, report.shadow.no_answer), (20, 20));
        let last = report.shadow.last_error.clone().unwrap_or_default();
        assert!(last.contains("refused"), "{last}");
        assert!(!report.verdict.is_pass());
    }

    #[tokio::test]
    async fn bodies_that_differ_beyond_ignored_lines_fail() {
        let stable = serve(Behaviour::Good).await;
        let shadow = serve(Behaviour::Counting).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: shadow.addr,
        }];
        let spec = CompareSpec {
            compare_bodies: true,
            ignore_lines: Some("^Date:".to_string()),
            ..CompareSpec::default()
        };
        let report = run(&pairs, &requests("/\n"), &fast(20), &spec)
            .await
            .report();
        assert_eq!(report.body_mismatches, Some(20));
        assert!(!report.verdict.is_pass());
    }

    #[tokio::test]
    async fn redirects_are_compared_not_followed() {
        let elsewhere = serve(Behaviour::Good).await;
        let stable = serve(Behaviour::Redirect(elsewhere.addr.port())).await;
        let shadow = serve(Behaviour::Redirect(elsewhere.addr.port())).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: shadow.addr,
        }];
        let report = run(&pairs, &requests("/\n"), &fast(20), &CompareSpec::default())
            .await
            .report();
        assert_eq!(report.verdict, CompareVerdict::Pass);
        assert_eq!(report.stable.answered, 20);
        assert_eq!(elsewhere.hits(), 0);
    }

    #[tokio::test]
    async fn requests_cycle_through_the_pairs() {
        let stables = [serve(Behaviour::Good).await, serve(Behaviour::Good).await];
        let shadow = serve(Behaviour::Good).await;
        let pairs: Vec<TargetPair> = stables
            .iter()
            .map(|s| TargetPair {
                stable: s.addr,
                shadow: shadow.addr,
            })
            .collect();
        let comparison = run(
            &pairs,
            &requests("/a\n/b\n"),
            &fast(20),
            &CompareSpec::default(),
        )
        .await;
        assert_eq!(comparison.requests(), 20);
        assert_eq!(
            (stables[0].hits(), stables[1].hits(), shadow.hits()),
            (10, 10, 20)
        );
        for stable in &stables {
            assert_eq!(
                (stable.count("GET", "/a"), stable.count("GET", "/b")),
                (5, 5)
            );
        }
        assert_eq!(
            (shadow.count("GET", "/a"), shadow.count("GET", "/b")),
            (10, 10)
        );
    }

    #[tokio::test]
    async fn pacing_duration_and_stop_bound_the_replay() {
        let stable = serve(Behaviour::Good).await;
        let shadow = serve(Behaviour::Good).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: shadow.addr,
        }];
        let reqs = requests("/\n");

        // 20 a second for 500ms: about 10 requests (the first goes at once), not 1000.
        let limits = ReplayLimits {
            rate_per_second: 20,
            max_requests: 1000,
            duration: Duration::from_millis(500),
            timeout: Duration::from_secs(1),
        };
        let started = std::time::Instant::now();
        let comparison = run(&pairs, &reqs, &limits, &CompareSpec::default()).await;
        let took = started.elapsed();
        assert!(
            (9..=12).contains(&comparison.requests()),
            "{}",
            comparison.requests()
        );
        assert!(took < Duration::from_millis(900), "{took:?}");

        // Stopped after about 300ms, with progress reported about once a second: none by then.
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let _ = stop_tx.send(true);
            stop_tx
        });
        let limits = ReplayLimits {
            duration: Duration::from_secs(30),
            ..limits
        };
        let mut progress_calls = 0;
        let started = std::time::Instant::now();
        let comparison = replay(
            &pairs,
            &reqs,
            &limits,
            &CompareSpec::default(),
            stop_rx,
            |_| progress_calls += 1,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            (4..=8).contains(&comparison.requests()),
            "{}",
            comparison.requests()
        );
        assert_eq!(progress_calls, 0);
        drop(stopper);

        // Already stopped: nothing is sent.
        let (_stop_tx, stop_rx) = watch::channel(true);
        let comparison = replay(
            &pairs,
            &reqs,
            &limits,
            &CompareSpec::default(),
            stop_rx,
            |_| {},
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(comparison.requests(), 0);
    }

    #[tokio::test]
    async fn progress_is_reported_about_once_a_second() {
        let stable = serve(Behaviour::Good).await;
        let shadow = serve(Behaviour::Good).await;
        let pairs = [TargetPair {
            stable: stable.addr,
            shadow: shadow.addr,
        }];
        let limits = ReplayLimits {
            rate_per_second: 20,
            max_requests: 1000,
            duration: Duration::from_millis(2300),
            timeout: Duration::from_secs(1),
        };
        let mut seen = Vec::new();
        let comparison = replay(
            &pairs,
            &requests("/\n"),
            &limits,
            &CompareSpec::default(),
            never_stop(),
            |c| seen.push(c.requests()),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(
            seen[0] >= 15 && seen[1] >= 35 && seen[1] < comparison.requests(),
            "{seen:?}"
        );
    }

    #[tokio::test]
    async fn bad_input_is_refused_before_sending() {
        let pairs = [TargetPair {
            stable: closed_addr().await,
            shadow: closed_addr().await,
        }];
        let reqs = requests("/\n");
        let spec = CompareSpec::default();
        let result = replay(&[], &reqs, &fast(1), &spec, never_stop(), |_| {}).await;
        assert!(
            matches!(result, Err(ReplayError::FindTargets)),
            "{result:?}"
        );
        let result = replay(&pairs, &[], &fast(1), &spec, never_stop(), |_| {}).await;
        assert!(
            matches!(result, Err(ReplayError::FindRequests)),
            "{result:?}"
        );
        let result = replay(&pairs, &reqs, &fast(0), &spec, never_stop(), |_| {}).await;
        assert!(
            matches!(result, Err(ReplayError::CheckLimits { .. })),
            "{result:?}"
        );
        let bad_spec = CompareSpec {
            ignore_lines: Some("(".to_string()),
            ..spec
        };
        let result = replay(&pairs, &reqs, &fast(1), &bad_spec, never_stop(), |_| {}).await;
        assert!(
            matches!(result, Err(ReplayError::CheckSpec { .. })),
            "{result:?}"
        );
    }
}
