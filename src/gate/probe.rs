//! Gate probing: the I/O that feeds the pure verdicts of [`super::verdict`]. After each step the
//! executor calls [`run_gates`] with the pods that step changed; every configured gate runs at
//! once and their verdicts are combined with [`Verdict::all`].
//!
//! Everything that reaches the API server (the pod and service proxies, the watch of the
//! minimum-Ready gate) goes through the same seam as the executor, [`crate::cluster::Cluster`].
//!
//! - **HTTP**: each pod is probed concurrently, one `GET` per interval for the gate's window (at
//!   most [`HttpGate::probes_per_pod`] probes, none started after the window, each bounded by the
//!   probe timeout), and probing stops for every pod as soon as one pod can no longer pass.
//!   Probes go straight to the pod IP (never to a Service or ClusterIP) or through the API
//!   server's pod proxy (`/api/v1/namespaces/NS/pods/POD:PORT/proxy/PATH`), for a `rollout` that
//!   runs outside the cluster network. [`ProbeVia::Auto`] decides once per gate: direct when a
//!   pod IP takes (or refuses) a TCP connection from here, else the proxy; the choice is logged
//!   and named in every message about a pod.
//! - **minimum Ready**: each pod must stay Ready for the given time; a watch on the pod fails the
//!   gate the moment it leaves Ready.
//! - **command**: run without a shell (unless the command is `sh -c ...`), in its own process
//!   group, with stdin closed; exit 0 passes; past its timeout the whole group is killed. It sees:
//!
//!   | variable | value |
//!   |---|---|
//!   | `ROLLOUT_NAMESPACE` | the pods' namespace |
//!   | `ROLLOUT_PODS` | the gated pods' names, space-separated |
//!   | `ROLLOUT_ADDRESSES` | their `IP:PORT`, space-separated (pods without an IP left out) |
//!   | `ROLLOUT_PORT` | the probed container port |
//!   | `ROLLOUT_STATEFULSET`, `ROLLOUT_STEP`, `ROLLOUT_ID` | when the executor knows them |
//!   | `ROLLOUT_GATE_JSON` | the same JSON the webhook gate posts |
//!
//! - **webhook**: `POST` of that JSON ([`GatePayload`]) to the URL; any 2xx passes, another
//!   status fails, no answer is retried twice and then Inconclusive.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

use super::verdict::{
    certain_http_failure, judge_command, judge_http, judge_min_ready, judge_webhook,
    CommandOutcome, GateFailure, GateKind, PodSamples, ProbeOutcome, ReadyCheck, Verdict,
};
use crate::cluster::{error_chain, ApiError, Cluster, ProxyTo, Select};
use crate::model::duration::HumanDuration;
use crate::model::gate::{CommandGate, GateSpec, HttpGate, PortRef, ProbeVia, WebhookGate};
use crate::strategy::predicates;

/// How much of a gate command's output a failure message quotes.
const OUTPUT_TAIL_BYTES: usize = 400;
/// Webhook attempts when no answer comes back (an answer of any status is final).
const WEBHOOK_ATTEMPTS: u32 = 3;
const WEBHOOK_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Longest wait for the TCP handshake that decides the route of an `auto` gate.
const ROUTE_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// A minimum-Ready wait that is pushed back (the pod became Ready anew) stops after this many
/// times the minimum: a pod that keeps flapping fails.
const MIN_READY_ROUNDS: u32 = 3;

/// One pod a gate checks, as the executor saw it after the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    pub namespace: String,
    pub pod: String,
    /// `status.podIP`; `None` while the pod has none.
    pub ip: Option<String>,
    /// The container port the HTTP gate probes.
    pub port: u16,
    /// When the pod last became Ready; `None` when it is not Ready.
    pub ready_since: Option<Timestamp>,
}

/// Why a pod could not be turned into a gate target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("a pod has no name, so it cannot be gated")]
    ReadPodName,
    #[error("pod {pod} has no namespace, so it cannot be gated")]
    ReadPodNamespace { pod: String },
    #[error("pod {pod} has no container port named `{name}` ({known}); set the gate's port to a number or one of the pod's port names")]
    ResolvePortName {
        pod: String,
        name: String,
        /// `its named ports: http, metrics` or `it has no named ports`.
        known: String,
    },
}

impl PodTarget {
    /// The gate target for `pod`, with `port` resolved against the pod's container ports (a
    /// number is taken as it is: apps do not always declare the ports they listen on).
    pub fn from_pod(pod: &Pod, port: &PortRef) -> Result<PodTarget, TargetError> {
        let name = pod.metadata.name.clone().ok_or(TargetError::ReadPodName)?;
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .ok_or_else(|| TargetError::ReadPodNamespace { pod: name.clone() })?;
        let port = resolve_port(&name, pod.spec.as_ref(), port)?;
        Ok(PodTarget {
            namespace,
            ip: pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
            port,
            ready_since: predicates::ready_since(pod),
            pod: name,
        })
    }

    /// `10.244.0.7:8080`, or `web-1 (no IP):8080` for messages about a pod without one.
    fn direct_address(&self) -> String {
        match self.socket_addr() {
            Ok(addr) => addr.to_string(),
            Err(_) => format!("{} (no IP):{}", self.pod, self.port),
        }
    }

    /// The pod's IP and port. Only an IP address is accepted: probes never go to a name that
    /// could resolve to a Service.
    fn socket_addr(&self) -> Result<SocketAddr, String> {
        let ip = self
            .ip
            .as_deref()
            .ok_or_else(|| format!("pod {} has no IP yet", self.pod))?;
        let ip: IpAddr = ip.parse().map_err(|_| {
            format!(
                "pod {} reports `{ip}` as its IP, which is not an IP address",
                self.pod
            )
        })?;
        Ok(SocketAddr::new(ip, self.port))
    }
}

/// The container port `port` names in `spec`: a number as it is, a name looked up across all
/// containers (names are unique within a pod).
pub fn resolve_port(pod: &str, spec: Option<&PodSpec>, port: &PortRef) -> Result<u16, TargetError> {
    let name = match port {
        PortRef::Number(n) => return Ok(*n),
        PortRef::Name(name) => name,
    };
    let ports: Vec<_> = spec
        .map(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .collect()
        })
        .unwrap_or_default();
    if let Some(found) = ports
        .iter()
        .find(|p| p.name.as_deref() == Some(name.as_str()))
    {
        if let Ok(number) = u16::try_from(found.container_port) {
            return Ok(number);
        }
    }
    let named: Vec<&str> = ports.iter().filter_map(|p| p.name.as_deref()).collect();
    Err(TargetError::ResolvePortName {
        pod: pod.to_string(),
        name: name.clone(),
        known: if named.is_empty() {
            "it has no named ports".to_string()
        } else {
            format!("its named ports: {}", named.join(", "))
        },
    })
}

/// The port an HTTP gate probes when none is configured: the first port of `container` (the
/// container whose image the rollout changes), else the first port of any container.
pub fn default_port(pod: &Pod, container: Option<&str>) -> Option<PortRef> {
    let containers = &pod.spec.as_ref()?.containers;
    let first_port = |c: &k8s_openapi::api::core::v1::Container| {
        c.ports
            .iter()
            .flatten()
            .find_map(|p| u16::try_from(p.container_port).ok().filter(|n| *n > 0))
    };
    container
        .and_then(|name| containers.iter().find(|c| c.name == name))
        .and_then(first_port)
        .or_else(|| containers.iter().find_map(first_port))
        .map(PortRef::Number)
}

/// What the executor knows about the step being gated; it goes into the webhook's JSON and the
/// command's environment. Every field is optional: [`run_gates`] passes none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GateContext {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statefulset: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout_id: Option<String>,
    /// Index of the step in the plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    /// The step as `rollout status` prints it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The revision the gated pods run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Counts the HTTP probes as they end, for the live view in a terminal (never sent).
    #[serde(skip)]
    pub probes: ProbeTally,
}

/// HTTP probes ended so far and how many answered as the gate wants, shared with whoever shows
/// them while the gate runs.
#[derive(Debug, Clone, Default)]
pub struct ProbeTally(std::sync::Arc<[std::sync::atomic::AtomicU32; 2]>);

impl ProbeTally {
    fn add(&self, ok: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0[0].fetch_add(1, Relaxed);
        if ok {
            self.0[1].fetch_add(1, Relaxed);
        }
    }

    /// (ok, ended).
    pub fn counts(&self) -> (u32, u32) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.0[1].load(Relaxed), self.0[0].load(Relaxed))
    }
}

/// A tally is a view of a gate in progress, not part of what its context says.
impl PartialEq for ProbeTally {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for ProbeTally {}

/// The JSON a webhook gate receives (and a command gate finds in `ROLLOUT_GATE_JSON`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatePayload {
    pub namespace: String,
    #[serde(flatten)]
    pub context: GateContext,
    pub pods: Vec<PayloadPod>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PayloadPod {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    pub port: u16,
}

impl GatePayload {
    pub fn new(targets: &[PodTarget], context: &GateContext) -> Self {
        GatePayload {
            namespace: targets
                .first()
                .map(|t| t.namespace.clone())
                .unwrap_or_default(),
            context: context.clone(),
            pods: targets
                .iter()
                .map(|t| PayloadPod {
                    name: t.pod.clone(),
                    ip: t.ip.clone(),
                    port: t.port,
                })
                .collect(),
        }
    }
}

/// Runs every gate `spec` configures on `targets` and combines the verdicts.
pub async fn run_gates<C: Cluster>(cluster: &C, spec: &GateSpec, targets: &[PodTarget]) -> Verdict {
    run_gates_for(cluster, spec, targets, &GateContext::default()).await
}

/// [`run_gates`] with what the executor knows about the step, for the webhook and command gates.
pub async fn run_gates_for<C: Cluster>(
    cluster: &C,
    spec: &GateSpec,
    targets: &[PodTarget],
    context: &GateContext,
) -> Verdict {
    let payload = GatePayload::new(targets, context);
    let http = async {
        if spec.http.enabled {
            run_http_gate(cluster, &spec.http, targets, &context.probes).await
        } else {
            Verdict::Pass
        }
    };
    let min_ready = async {
        match spec.min_ready {
            Some(min) => run_min_ready_gate(cluster, targets, min).await,
            None => Verdict::Pass,
        }
    };
    let command = async {
        match &spec.command {
            Some(command) => run_command_gate(command, &payload).await,
            None => Verdict::Pass,
        }
    };
    let webhook = async {
        match &spec.webhook {
            Some(webhook) => run_webhook_gate(webhook, &payload).await,
            None => Verdict::Pass,
        }
    };
    let (http, min_ready, command, webhook) = tokio::join!(http, min_ready, command, webhook);
    Verdict::all([http, min_ready, command, webhook])
}

// ---------------------------------------------------------------------------------------------
// HTTP gate

/// Where the HTTP probes of one gate go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    Proxy,
}

/// What one TCP handshake to a pod IP told about reaching pods from here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reach {
    Connected,
    /// The pod's host answered with a reset: the network reaches it, the app is not listening.
    Refused,
    /// Timeout, no route, no IP: the pod network is not reachable from here (or this pod not).
    Unreachable {
        pod: String,
        why: String,
    },
}

/// The route for `via`, and why, in words for the log.
fn choose_route(via: ProbeVia, reach: &[Reach]) -> (Route, String) {
    match via {
        ProbeVia::Direct => (
            Route::Direct,
            "probing pod IPs directly, as configured".into(),
        ),
        ProbeVia::Proxy => (
            Route::Proxy,
            "probing through the API server's pod proxy, as configured".into(),
        ),
        ProbeVia::Auto => {
            if reach
                .iter()
                .any(|r| matches!(r, Reach::Connected | Reach::Refused))
            {
                return (
                    Route::Direct,
                    "probing pod IPs directly: the pod network is reachable from here".into(),
                );
            }
            let why = reach
                .iter()
                .find_map(|r| match r {
                    Reach::Unreachable { pod, why } => Some(format!("{pod}: {why}")),
                    _ => None,
                })
                .unwrap_or_else(|| "no pod to try".into());
            (
                Route::Proxy,
                format!("probing through the API server's pod proxy: no pod IP connects from here ({why})"),
            )
        }
    }
}

async fn check_reach(target: &PodTarget) -> Reach {
    let unreachable = |why: String| Reach::Unreachable {
        pod: target.pod.clone(),
        why,
    };
    let addr = match target.socket_addr() {
        Ok(addr) => addr,
        Err(why) => return unreachable(why),
    };
    match tokio::time::timeout(ROUTE_CHECK_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Reach::Connected,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        Ok(Err(e)) => unreachable(format!("{addr}: {e}")),
        Err(_) => unreachable(format!(
            "{addr}: no TCP handshake within {}",
            HumanDuration::from(ROUTE_CHECK_TIMEOUT)
        )),
    }
}

/// `http://10.244.0.7:8080/healthz`: the pod IP, never a host name.
pub fn direct_url(target: &PodTarget, path: &str) -> Result<String, String> {
    Ok(format!("http://{}{path}", target.socket_addr()?))
}

/// Reads an answer that came through the pod proxy. The API server reports its own failure to
/// reach the pod (connection refused, no IP, pod not found) as an error status with a
/// `kind: Status` body; that is a connection error, not the pod's answer.
fn proxied_outcome(status: u16, body: &[u8], latency: Duration) -> ProbeOutcome {
    if status >= 400 {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
            if value["kind"] == "Status" && value["apiVersion"] == "v1" {
                let message = value["message"].as_str().unwrap_or("no message");
                return ProbeOutcome::ConnectError {
                    message: format!("pod proxy answered {status}: {message}"),
                };
            }
        }
    }
    ProbeOutcome::Answered { status, latency }
}

/// Sends one probe to one pod.
trait Prober {
    /// Where the probes of `target` go, for messages.
    fn describe(&self, target: &PodTarget) -> String;
    /// One probe, its answer or why there was none; never longer than the gate's timeout.
    async fn probe(&self, target: &PodTarget) -> ProbeOutcome;
}

struct DirectProber {
    http: reqwest::Client,
    path: String,
    timeout: Duration,
}

impl DirectProber {
    fn new(gate: &HttpGate) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            // A pod IP is never reached through an HTTP proxy from the environment.
            .no_proxy()
            // A fresh connection per probe, so that a restarted pod shows as one.
            .pool_max_idle_per_host(0)
            .timeout(gate.timeout.get())
            .build()
            .map_err(|e| error_chain(&e))?;
        Ok(DirectProber {
            http,
            path: gate.path.clone(),
            timeout: gate.timeout.get(),
        })
    }
}

impl Prober for DirectProber {
    fn describe(&self, target: &PodTarget) -> String {
        target.direct_address()
    }

    async fn probe(&self, target: &PodTarget) -> ProbeOutcome {
        let url = match direct_url(target, &self.path) {
            Ok(url) => url,
            Err(message) => return ProbeOutcome::ConnectError { message },
        };
        let started = Instant::now();
        let exchange = async {
            let response = self.http.get(&url).send().await?;
            let status = response.status().as_u16();
            // The whole answer counts toward latency; the body itself is not judged.
            response.bytes().await?;
            Ok::<u16, reqwest::Error>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) => ProbeOutcome::Answered {
                status,
                latency: started.elapsed(),
            },
            Ok(Err(e)) if e.is_timeout() => ProbeOutcome::Timeout,
            Ok(Err(e)) => ProbeOutcome::ConnectError {
                message: error_chain(&e),
            },
            Err(_) => ProbeOutcome::Timeout,
        }
    }
}

/// Probes through the API server's proxy: of each pod, or (`service_port` set) of the Service
/// whose name the target carries (`/api/v1/namespaces/NS/services/SVC:PORT/proxy/PATH`): the
/// API server picks a ready endpoint of the Service, so this checks what the Service serves
/// without ever dialing a ClusterIP.
struct ProxyProber<'a, C> {
    cluster: &'a C,
    path: String,
    timeout: Duration,
    /// The Service port, by name or number.
    service_port: Option<String>,
}

impl<C: Cluster> ProxyProber<'_, C> {
    fn to(&self, target: &PodTarget) -> ProxyTo {
        match &self.service_port {
            None => ProxyTo::Pod {
                name: target.pod.clone(),
                port: target.port,
            },
            Some(port) => ProxyTo::Service {
                name: target.pod.clone(),
                port: port.clone(),
            },
        }
    }
}

impl<C: Cluster> Prober for ProxyProber<'_, C> {
    fn describe(&self, target: &PodTarget) -> String {
        match &self.service_port {
            None => format!("pod proxy {}:{}", target.pod, target.port),
            Some(port) => format!("service proxy {}:{port}", target.pod),
        }
    }

    async fn probe(&self, target: &PodTarget) -> ProbeOutcome {
        let started = Instant::now();
        let to = self.to(target);
        let exchange = self.cluster.proxy_get(&to, &self.path);
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => proxied_outcome(answer.status, &answer.body, started.elapsed()),
            Ok(Err(e)) => {
                let why = match e {
                    ApiError::Unreachable(why) => why,
                    other => other.to_string(),
                };
                let proxy = if self.service_port.is_some() {
                    "service"
                } else {
                    "pod"
                };
                ProbeOutcome::ConnectError {
                    message: format!("{proxy} proxy: {why}"),
                }
            }
            Err(_) => ProbeOutcome::Timeout,
        }
    }
}

/// Probes every target concurrently for the gate's window. Probing stops for all pods as soon as
/// one of them can no longer pass: the verdict is decided.
async fn probe_all(
    prober: &impl Prober,
    gate: &HttpGate,
    targets: &[PodTarget],
) -> Vec<PodSamples> {
    probe_all_counted(prober, gate, targets, &ProbeTally::default()).await
}

/// [`probe_all`], counting each probe in `tally` as it ends.
async fn probe_all_counted(
    prober: &impl Prober,
    gate: &HttpGate,
    targets: &[PodTarget],
    tally: &ProbeTally,
) -> Vec<PodSamples> {
    let planned = gate.probes_per_pod();
    let (decided, _) = watch::channel(false);
    let decided = &decided;
    join_all(targets.iter().map(|target| async move {
        let mut stop = decided.subscribe();
        let mut samples = PodSamples {
            pod: target.pod.clone(),
            target: prober.describe(target),
            outcomes: Vec::new(),
        };
        let start = tokio::time::Instant::now();
        let window_end = start + gate.window.get();
        for i in 0..planned {
            let at = start + gate.interval.get() * i;
            // A slow probe can push the next past the window; none starts after it.
            if i > 0 && tokio::time::Instant::now() >= window_end {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = stop.wait_for(|decided| *decided) => break,
            }
            let outcome = tokio::select! {
                outcome = prober.probe(target) => outcome,
                _ = stop.wait_for(|decided| *decided) => break,
            };
            tally.add(matches!(outcome, ProbeOutcome::Answered { status, .. } if gate.status.contains(status)));
            samples.outcomes.push(outcome);
            if certain_http_failure(gate, &samples, planned).is_some() {
                decided.send_replace(true);
                break;
            }
        }
        samples
    }))
    .await
}

/// The HTTP gate on every target: decide the route, probe, judge.
pub async fn run_http_gate<C: Cluster>(
    cluster: &C,
    gate: &HttpGate,
    targets: &[PodTarget],
    tally: &ProbeTally,
) -> Verdict {
    let reach = if gate.via == ProbeVia::Auto {
        join_all(targets.iter().map(check_reach)).await
    } else {
        Vec::new()
    };
    let (route, why) = choose_route(gate.via, &reach);
    tracing::info!(
        ?route,
        pods = targets.len(),
        "HTTP gate {}: {why}",
        gate.describe()
    );
    let samples = match route {
        Route::Direct => match DirectProber::new(gate) {
            Ok(prober) => probe_all_counted(&prober, gate, targets, tally).await,
            Err(e) => {
                return Verdict::Inconclusive {
                    message: format!("HTTP gate could not set up its HTTP client: {e}"),
                }
            }
        },
        Route::Proxy => {
            let prober = ProxyProber {
                cluster,
                path: gate.path.clone(),
                timeout: gate.timeout.get(),
                service_port: None,
            };
            probe_all_counted(&prober, gate, targets, tally).await
        }
    };
    judge_http(gate, &samples)
}

/// The HTTP gate through a Service (its port by name or number), judged like one pod: every
/// probe of the window must meet the gate's bounds.
pub async fn run_service_gate<C: Cluster>(
    cluster: &C,
    gate: &HttpGate,
    service: &str,
    port: &str,
) -> Verdict {
    let prober = ProxyProber {
        cluster,
        path: gate.path.clone(),
        timeout: gate.timeout.get(),
        service_port: Some(port.to_string()),
    };
    let target = PodTarget {
        namespace: cluster.namespace().to_string(),
        pod: service.to_string(),
        ip: None,
        port: port.parse().unwrap_or(0),
        ready_since: None,
    };
    tracing::info!(
        service,
        port,
        "HTTP gate {} through the service proxy",
        gate.describe()
    );
    let samples = probe_all(&prober, gate, std::slice::from_ref(&target)).await;
    judge_http(gate, &samples)
}

// ---------------------------------------------------------------------------------------------
// Minimum-Ready gate

/// Every target stays Ready for `min` (counted from when it became Ready).
pub async fn run_min_ready_gate<C: Cluster>(
    cluster: &C,
    targets: &[PodTarget],
    min: HumanDuration,
) -> Verdict {
    Verdict::all(join_all(targets.iter().map(|t| min_ready_of_pod(cluster, t, min))).await)
}

fn duration_until(until: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(until.duration_since(now)).unwrap_or_default()
}

async fn min_ready_of_pod<C: Cluster>(
    cluster: &C,
    target: &PodTarget,
    min: HumanDuration,
) -> Verdict {
    let until = match judge_min_ready(&target.pod, target.ready_since, min, Timestamp::now()) {
        ReadyCheck::Pass => return Verdict::Pass,
        ReadyCheck::Fail(failure) => {
            return Verdict::Fail {
                failures: vec![failure],
            }
        }
        ReadyCheck::WaitUntil(until) => until,
    };
    // Waiting is watching: the pod leaving Ready fails the gate at once.
    let mut pod = cluster.observe::<Pod>(&Select::named(&target.pod));
    let give_up = tokio::time::Instant::now() + min.get() * MIN_READY_ROUNDS;
    let mut deadline = tokio::time::Instant::now() + duration_until(until, Timestamp::now());
    let mut since = target.ready_since;
    let mut watching = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.min(give_up)) => {}
            // The watch retries by itself with backoff; the deadline still bounds the wait.
            changed = pod.changed(), if watching => match changed {
                Ok(()) => {
                    let listing = pod.borrow_and_update().clone();
                    if listing.synced {
                        // A pod that is gone, or going, is not Ready.
                        since = listing
                            .items
                            .first()
                            .filter(|p| !predicates::is_terminating(p))
                            .and_then(predicates::ready_since);
                    }
                }
                Err(_) => watching = false,
            },
        }
        match judge_min_ready(&target.pod, since, min, Timestamp::now()) {
            ReadyCheck::Pass => return Verdict::Pass,
            ReadyCheck::Fail(failure) => {
                return Verdict::Fail {
                    failures: vec![failure],
                }
            }
            ReadyCheck::WaitUntil(until) => {
                if tokio::time::Instant::now() >= give_up {
                    return Verdict::Fail {
                        failures: vec![GateFailure {
                            gate: GateKind::MinReady,
                            pod: Some(target.pod.clone()),
                            probe: format!("Ready for at least {min}"),
                            figures: None,
                            reasons: vec![format!(
                                "the pod kept becoming Ready anew for {}",
                                HumanDuration::from(min.get() * MIN_READY_ROUNDS)
                            )],
                        }],
                    };
                }
                deadline = tokio::time::Instant::now() + duration_until(until, Timestamp::now());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command gate

/// The command line as a person would type it, for messages.
fn command_line(run: &[String]) -> String {
    run.iter()
        .map(|arg| {
            if !arg.is_empty()
                && arg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
            {
                arg.clone()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The environment a gate command sees (see the module docs).
fn command_env(payload: &GatePayload) -> BTreeMap<&'static str, String> {
    let mut env = BTreeMap::new();
    env.insert("ROLLOUT_NAMESPACE", payload.namespace.clone());
    env.insert(
        "ROLLOUT_PODS",
        payload
            .pods
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );
    env.insert(
        "ROLLOUT_ADDRESSES",
        payload
            .pods
            .iter()
            .filter_map(|p| {
                let ip: IpAddr = p.ip.as_deref()?.parse().ok()?;
                Some(SocketAddr::new(ip, p.port).to_string())
            })
            .collect::<Vec<_>>()
            .join(" "),
    );
    if let Some(pod) = payload.pods.first() {
        env.insert("ROLLOUT_PORT", pod.port.to_string());
    }
    let context = &payload.context;
    if let Some(sts) = &context.statefulset {
        env.insert("ROLLOUT_STATEFULSET", sts.clone());
    }
    if let Some(step) = context.step {
        env.insert("ROLLOUT_STEP", step.to_string());
    }
    if let Some(id) = &context.rollout_id {
        env.insert("ROLLOUT_ID", id.clone());
    }
    env.insert(
        "ROLLOUT_GATE_JSON",
        serde_json::to_string(payload).unwrap_or_default(),
    );
    env
}

/// The last `OUTPUT_TAIL_BYTES` of stdout then stderr, as text.
fn output_tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut all = stdout.to_vec();
    if !stdout.is_empty() && !stderr.is_empty() && !stdout.ends_with(b"\n") {
        all.push(b'\n');
    }
    all.extend_from_slice(stderr);
    let start = all.len().saturating_sub(OUTPUT_TAIL_BYTES);
    String::from_utf8_lossy(&all[start..]).into_owned()
}

async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        // A read error only shortens the quoted output.
        let _ = pipe.read_to_end(&mut out).await;
    }
    out
}

/// Runs the command; its exit decides.
pub async fn run_command_gate(gate: &CommandGate, payload: &GatePayload) -> Verdict {
    let line = command_line(&gate.run);
    judge_command(&line, &run_command(gate, payload).await)
}

async fn run_command(gate: &CommandGate, payload: &GatePayload) -> CommandOutcome {
    let Some((program, args)) = gate.run.split_first() else {
        return CommandOutcome::SpawnFailed {
            message: "the command is empty".into(),
        };
    };
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(command_env(payload))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so that a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return CommandOutcome::SpawnFailed {
                message: e.to_string(),
            }
        }
    };
    let pid = child.id();
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = tokio::time::timeout(gate.timeout.get(), async {
        tokio::join!(child.wait(), read_all(stdout), read_all(stderr))
    })
    .await;
    match finished {
        Ok((Ok(status), out, err)) => {
            let output_tail = output_tail(&out, &err);
            match status.code() {
                Some(code) => CommandOutcome::Exited { code, output_tail },
                None => CommandOutcome::Killed { output_tail },
            }
        }
        Ok((Err(e), _, _)) => CommandOutcome::SpawnFailed {
            message: format!("waiting for it: {e}"),
        },
        Err(_) => {
            if let Some(pid) = pid {
                kill_process_group(pid).await;
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            CommandOutcome::TimedOut {
                after: gate.timeout,
            }
        }
    }
}

/// SIGKILL to the command's whole process group (the command and whatever it started). The
/// standard library has no call for it, so kill(1) does it.
async fn kill_process_group(pgid: u32) {
    let killed = tokio::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    if let Err(e) = killed {
        tracing::warn!("could not kill the gate command's process group {pgid}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook gate

/// POSTs the payload; the answer's status decides.
pub async fn run_webhook_gate(gate: &WebhookGate, payload: &GatePayload) -> Verdict {
    let http = match reqwest::Client::builder()
        .timeout(gate.timeout.get())
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            return Verdict::Inconclusive {
                message: format!(
                    "webhook gate could not set up its HTTP client: {}",
                    error_chain(&e)
                ),
            }
        }
    };
    let mut answer = Err(String::new());
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let sent = tokio::time::timeout(
            gate.timeout.get(),
            http.post(&gate.url).json(payload).send(),
        )
        .await;
        answer = match sent {
            Ok(Ok(response)) => Ok(response.status().as_u16()),
            Ok(Err(e)) => Err(error_chain(&e)),
            Err(_) => Err(format!("no answer within {}", gate.timeout)),
        };
        if answer.is_ok() {
            break;
        }
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(WEBHOOK_RETRY_DELAY).await;
        }
    }
    let answer = answer.map_err(|e| format!("{e} ({WEBHOOK_ATTEMPTS} attempts)"));
    judge_webhook(&gate.url, answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodCondition, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    use crate::cluster::fake::{statefulset, FakeCluster};

    fn container(name: &str, ports: &[(Option<&str>, i32)]) -> Container {
        Container {
            name: name.into(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| ContainerPort {
                        name: n.map(String::from),
                        container_port: *p,
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn pod(containers: Vec<Container>, ip: Option<&str>, ready_at: Option<i64>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers,
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(String::from),
                conditions: ready_at.map(|s| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(
                            Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH),
                        )),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    fn target(pod: &str, ip: Option<&str>, port: u16) -> PodTarget {
        PodTarget {
            namespace: "shop".into(),
            pod: pod.into(),
            ip: ip.map(String::from),
            port,
            ready_since: None,
        }
    }

    #[test]
    fn ports_resolve_from_the_pods_containers() {
        let spec = PodSpec {
            containers: vec![
                container("sidecar", &[(Some("metrics"), 9090)]),
                container("app", &[(Some("http"), 8080), (None, 7000)]),
            ],
            ..Default::default()
        };
        let cases: Vec<(PortRef, Result<u16, &str>)> = vec![
            (PortRef::Number(8080), Ok(8080)),
            (PortRef::Number(1234), Ok(1234)),
            (PortRef::Name("http".into()), Ok(8080)),
            (PortRef::Name("metrics".into()), Ok(9090)),
            (
                PortRef::Name("admin".into()),
                Err("pod web-1 has no container port named `admin` (its named ports: metrics, http)"),
            ),
        ];
        for (port, want) in cases {
            let got = resolve_port("web-1", Some(&spec), &port).map_err(|e| e.to_string());
            match want {
                Ok(n) => assert_eq!(got, Ok(n), "{port}"),
                Err(fragment) => {
                    let message = got.expect_err("must fail");
                    assert!(message.contains(fragment), "{message}");
                }
            }
        }
        let none = resolve_port("web-1", None, &PortRef::Name("http".into()));
        assert!(none.is_err_and(|e| e.to_string().contains("it has no named ports")));
    }

    #[test]
    fn default_port_prefers_the_changed_container() {
        let p = pod(
            vec![
                container("sidecar", &[(Some("metrics"), 9090)]),
                container("app", &[(Some("http"), 8080)]),
                container("bare", &[]),
            ],
            None,
            None,
        );
        assert_eq!(default_port(&p, Some("app")), Some(PortRef::Number(8080)));
        assert_eq!(default_port(&p, None), Some(PortRef::Number(9090)));
        assert_eq!(default_port(&p, Some("bare")), Some(PortRef::Number(9090)));
        assert_eq!(
            default_port(&pod(vec![container("x", &[])], None, None), None),
            None
        );
    }

    #[test]
    fn targets_from_pods() {
        let p = pod(
            vec![container("app", &[(Some("http"), 8080)])],
            Some("10.244.0.7"),
            Some(100),
        );
        let t = PodTarget::from_pod(&p, &PortRef::Name("http".into()));
        assert_eq!(
            t,
            Ok(PodTarget {
                namespace: "shop".into(),
                pod: "web-1".into(),
                ip: Some("10.244.0.7".into()),
                port: 8080,
                ready_since: Timestamp::from_second(100).ok(),
            })
        );
        let pending = pod(vec![container("app", &[])], Some(""), None);
        let t = PodTarget::from_pod(&pending, &PortRef::Number(80));
        assert_eq!(
            t.as_ref().map(|t| (t.ip.clone(), t.ready_since)),
            Ok((None, None))
        );
        let mut nameless = pending.clone();
        nameless.metadata.name = None;
        assert_eq!(
            PodTarget::from_pod(&nameless, &PortRef::Number(80)),
            Err(TargetError::ReadPodName)
        );
    }

    #[test]
    fn urls_go_to_pod_ips_only() {
        let cases: Vec<(Option<&str>, &str, Result<&str, &str>)> = vec![
            (Some("10.244.0.7"), "/", Ok("http://10.244.0.7:8080/")),
            (
                Some("10.244.0.7"),
                "/healthz?full=1",
                Ok("http://10.244.0.7:8080/healthz?full=1"),
            ),
            (Some("fd00::7"), "/", Ok("http://[fd00::7]:8080/")),
            (None, "/", Err("has no IP yet")),
            (Some("time-app.shop.svc"), "/", Err("is not an IP address")),
        ];
        for (ip, path, want) in cases {
            let got = direct_url(&target("web-1", ip, 8080), path);
            match want {
                Ok(url) => assert_eq!(got.as_deref(), Ok(url)),
                Err(fragment) => {
                    assert!(got.as_ref().is_err_and(|e| e.contains(fragment)), "{got:?}")
                }
            }
        }
    }

    #[test]
    fn proxy_errors_are_told_apart_from_the_pods_answers() {
        let status_body = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"error trying to reach service: dial tcp 10.244.0.7:8080: connect: connection refused","reason":"ServiceUnavailable","code":503}"#;
        let ms = Duration::from_millis(3);
        let cases: Vec<(u16, &[u8], Result<u16, &str>)> = vec![
            (200, b"Moscow time", Ok(200)),
            (503, b"not ready yet", Ok(503)),
            (500, br#"{"error":"boom"}"#, Ok(500)),
            (200, status_body, Ok(200)),
            (503, status_body, Err("pod proxy answered 503: error trying to reach service")),
            (
                404,
                br#"{"kind":"Status","apiVersion":"v1","message":"pods \"web-9\" not found","code":404}"#,
                Err("not found"),
            ),
        ];
        for (status, body, want) in cases {
            let got = proxied_outcome(status, body, ms);
            match want {
                Ok(code) => assert_eq!(
                    got,
                    ProbeOutcome::Answered {
                        status: code,
                        latency: ms
                    }
                ),
                Err(fragment) => assert!(
                    matches!(&got, ProbeOutcome::ConnectError { message } if message.contains(fragment)),
                    "{got:?}"
                ),
            }
        }
    }

    #[test]
    fn auto_route_falls_back_to_the_proxy_only_when_nothing_connects() {
        let away = |pod: &str| Reach::Unreachable {
            pod: pod.into(),
            why: "no TCP handshake within 2s".into(),
        };
        let cases: Vec<(ProbeVia, Vec<Reach>, Route)> = vec![
            (ProbeVia::Auto, vec![Reach::Connected], Route::Direct),
            (
                ProbeVia::Auto,
                vec![away("web-1"), Reach::Refused],
                Route::Direct,
            ),
            (
                ProbeVia::Auto,
                vec![away("web-1"), away("web-2")],
                Route::Proxy,
            ),
            (ProbeVia::Auto, vec![], Route::Proxy),
            (ProbeVia::Direct, vec![away("web-1")], Route::Direct),
            (ProbeVia::Proxy, vec![Reach::Connected], Route::Proxy),
        ];
        for (via, reach, want) in cases {
            let (route, why) = choose_route(via, &reach);
            assert_eq!(route, want, "{via:?} {reach:?}: {why}");
        }
        let (_, why) = choose_route(ProbeVia::Auto, &[away("web-1")]);
        assert!(
            why.contains("pod proxy") && why.contains("web-1: no TCP handshake"),
            "{why}"
        );
    }

    #[test]
    fn command_lines_and_environment() {
        assert_eq!(
            command_line(&["sh".into(), "-c".into(), "curl -f $X".into()]),
            "sh -c 'curl -f $X'"
        );
        assert_eq!(
            command_line(&["./smoke.sh".into(), "--fast".into()]),
            "./smoke.sh --fast"
        );
        assert_eq!(
            command_line(&["echo".into(), "it's".into()]),
            r"echo 'it'\''s'"
        );

        let targets = [
            target("web-4", Some("10.244.0.9"), 8080),
            target("web-3", None, 8080),
        ];
        let context = GateContext {
            statefulset: Some("web".into()),
            step: Some(2),
            ..GateContext::default()
        };
        let payload = GatePayload::new(&targets, &context);
        let env = command_env(&payload);
        assert_eq!(env["ROLLOUT_NAMESPACE"], "shop");
        assert_eq!(env["ROLLOUT_PODS"], "web-4 web-3");
        assert_eq!(env["ROLLOUT_ADDRESSES"], "10.244.0.9:8080");
        assert_eq!(env["ROLLOUT_PORT"], "8080");
        assert_eq!(env["ROLLOUT_STATEFULSET"], "web");
        assert_eq!(env["ROLLOUT_STEP"], "2");
        assert!(!env.contains_key("ROLLOUT_ID"));
        let json: serde_json::Value =
            serde_json::from_str(&env["ROLLOUT_GATE_JSON"]).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({
                "namespace": "shop", "statefulset": "web", "step": 2,
                "pods": [{"name": "web-4", "ip": "10.244.0.9", "port": 8080}, {"name": "web-3", "port": 8080}]
            })
        );
        assert_eq!(output_tail(b"out", b"err\n"), "out\nerr\n");
        let long = vec![b'x'; 1000];
        assert_eq!(output_tail(&long, b"").len(), OUTPUT_TAIL_BYTES);
    }

    /// Answers each probe from a script per pod (the last entry repeats), counting probes.
    struct Scripted {
        scripts: BTreeMap<String, Vec<ProbeOutcome>>,
        sent: Mutex<BTreeMap<String, usize>>,
    }

    impl Prober for Scripted {
        fn describe(&self, target: &PodTarget) -> String {
            format!("script {}", target.pod)
        }

        async fn probe(&self, target: &PodTarget) -> ProbeOutcome {
            let n = {
                let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
                let n = sent.entry(target.pod.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let script = &self.scripts[&target.pod];
            script[(n - 1).min(script.len() - 1)].clone()
        }
    }

    fn fast_gate(window_ms: u64, interval_ms: u64) -> HttpGate {
        HttpGate {
            window: HumanDuration::from_millis(window_ms),
            interval: HumanDuration::from_millis(interval_ms),
            timeout: HumanDuration::from_millis(200),
            via: ProbeVia::Direct,
            ..HttpGate::default()
        }
    }

    #[tokio::test]
    async fn probing_stops_for_every_pod_once_one_cannot_pass() {
        let ok = ProbeOutcome::Answered {
            status: 200,
            latency: Duration::from_millis(1),
        };
        let bad = ProbeOutcome::Answered {
            status: 500,
            latency: Duration::from_millis(1),
        };
        let prober = Scripted {
            scripts: [
                ("web-2".to_string(), vec![ok.clone(), ok.clone(), bad]),
                ("web-1".to_string(), vec![ok]),
            ]
            .into(),
            sent: Mutex::default(),
        };
        let gate = fast_gate(10_000, 20);
        let targets = [target("web-2", None, 80), target("web-1", None, 80)];
        let started = Instant::now();
        let samples = probe_all(&prober, &gate, &targets).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            samples[0].outcomes.len(),
            3,
            "web-2 stops at its first wrong status"
        );
        assert!(
            samples[1].outcomes.len() <= 4,
            "web-1 stops with it: {:?}",
            samples[1].outcomes.len()
        );
        let verdict = judge_http(&gate, &samples);
        assert!(
            verdict
                .message()
                .starts_with("HTTP gate failed on pod web-2 (GET script web-2/ expecting 2xx)"),
            "{}",
            verdict.message()
        );
    }

    #[tokio::test]
    async fn probing_runs_the_planned_count_over_the_window() {
        let ok = ProbeOutcome::Answered {
            status: 200,
            latency: Duration::from_millis(1),
        };
        let prober = Scripted {
            scripts: [("web-0".to_string(), vec![ok])].into(),
            sent: Mutex::default(),
        };
        let gate = fast_gate(300, 50);
        let started = Instant::now();
        let samples = probe_all(&prober, &gate, &[target("web-0", None, 80)]).await;
        let elapsed = started.elapsed();
        assert_eq!(samples[0].outcomes.len(), 6);
        assert!(
            elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(3),
            "{elapsed:?}"
        );
        assert!(judge_http(&gate, &samples).is_pass());
    }

    /// A tiny HTTP/1.1 server on 127.0.0.1 for the probes: `/ok` 200, `/fail` 500, `/slow`
    /// answers after 3 s, `/hook-ok` 204, `/hook-no` 409; it keeps each request's line and body.
    struct TestServer {
        port: u16,
        seen: Arc<Mutex<Vec<(String, String)>>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve_one(mut stream: tokio::net::TcpStream, seen: Arc<Mutex<Vec<(String, String)>>>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() > 64 * 1024 {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let line = head.lines().next().unwrap_or_default().to_string();
        let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
        seen.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((line.clone(), body));
        let path = line.split(' ').nth(1).unwrap_or("/");
        let code = match path {
            "/ok" => 200,
            "/fail" => 500,
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                200
            }
            "/hook-ok" => 204,
            "/hook-no" => 409,
            _ => 404,
        };
        let answer =
            format!("HTTP/1.1 {code} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi");
        let _ = stream.write_all(answer.as_bytes()).await;
    }

    async fn test_server() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_one(stream, shared.clone()));
            }
        });
        TestServer { port, seen, task }
    }

    /// A port on 127.0.0.1 where nothing listens (bound, then released).
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        listener.local_addr().map(|a| a.port()).unwrap_or_default()
    }

    /// A fake cluster with the Ready pods web-0 and web-1 (serving through its proxy).
    fn fake_cluster() -> FakeCluster {
        FakeCluster::new(statefulset("web", 2, "app:v1", true))
    }

    fn http_spec(path: &str, via: ProbeVia, window_ms: u64, interval_ms: u64) -> GateSpec {
        GateSpec {
            http: HttpGate {
                path: path.into(),
                via,
                ..fast_gate(window_ms, interval_ms)
            },
            ..GateSpec::default()
        }
    }

    #[tokio::test]
    async fn http_gate_against_a_local_server() {
        let server = test_server().await;
        let cluster = fake_cluster();
        let pod = |name: &str| target(name, Some("127.0.0.1"), server.port);

        // A healthy pod passes after the whole window.
        let started = Instant::now();
        let verdict = run_gates(
            &cluster,
            &http_spec("/ok", ProbeVia::Auto, 500, 100),
            &[pod("web-1"), pod("web-2")],
        )
        .await;
        assert!(verdict.is_pass(), "{}", verdict.message());
        assert!(
            started.elapsed() >= Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        let probes = server.seen.lock().map(|s| s.len()).unwrap_or_default();
        assert_eq!(probes, 10, "5 probes for each of 2 pods");

        // A 500 fails at the first answer, long before the window ends.
        let started = Instant::now();
        let verdict = run_gates(
            &cluster,
            &http_spec("/fail", ProbeVia::Direct, 10_000, 100),
            &[pod("web-1")],
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            verdict.message(),
            format!("HTTP gate failed on pod web-1 (GET 127.0.0.1:{}/fail expecting 2xx): 0 of 1 counted probes succeeded (0%, minimum 100%); 1 answered with a wrong status (last: 500)", server.port)
        );

        // Slow answers are timeouts: retried up to the error limit, then counted, within
        // window + timeout (the server would take 3 s per answer).
        let started = Instant::now();
        let verdict = run_gates(
            &cluster,
            &http_spec("/slow", ProbeVia::Direct, 1_000, 100),
            &[pod("web-1")],
        )
        .await;
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        let message = verdict.message();
        assert!(matches!(verdict, Verdict::Fail { .. }), "{message}");
        assert!(message.contains("no answer within 200ms"), "{message}");
    }

    #[tokio::test]
    async fn http_gate_tells_connection_errors_from_answers() {
        let port = closed_port().await;
        let cluster = fake_cluster();
        let refused = [target("web-3", Some("127.0.0.1"), port)];
        // Four refusals in a row are retried: no evidence either way.
        let verdict = run_gates(
            &cluster,
            &http_spec("/", ProbeVia::Direct, 400, 100),
            &refused,
        )
        .await;
        let message = verdict.message();
        assert!(matches!(verdict, Verdict::Inconclusive { .. }), "{message}");
        assert!(
            message.contains("connection errors within the retry limit of 4"),
            "{message}"
        );
        // Beyond the limit they count, and the message says it could not connect.
        let verdict = run_gates(
            &cluster,
            &http_spec("/", ProbeVia::Direct, 1_000, 50),
            &refused,
        )
        .await;
        let message = verdict.message();
        assert!(matches!(verdict, Verdict::Fail { .. }), "{message}");
        assert!(
            message.contains("failed to connect") && message.contains("refused"),
            "{message}"
        );
        // A pod without an IP cannot be probed directly.
        let verdict = run_gates(
            &cluster,
            &http_spec("/", ProbeVia::Direct, 300, 100),
            &[target("web-4", None, 80)],
        )
        .await;
        assert!(
            verdict.message().contains("web-4 has no IP yet"),
            "{}",
            verdict.message()
        );
    }

    #[tokio::test]
    async fn command_gate_runs_with_the_pods_in_its_environment() {
        let targets = [
            target("web-0", Some("10.244.0.3"), 8080),
            target("web-1", Some("10.244.0.4"), 8080),
        ];
        let payload = GatePayload::new(&targets, &GateContext::default());
        let shell = |line: &str, timeout_ms: u64| CommandGate {
            timeout: HumanDuration::from_millis(timeout_ms),
            ..CommandGate::shell(line)
        };
        let pass = run_command_gate(
            &shell(r#"test "$ROLLOUT_PODS" = "web-0 web-1" && test "$ROLLOUT_ADDRESSES" = "10.244.0.3:8080 10.244.0.4:8080""#, 5_000),
            &payload,
        )
        .await;
        assert!(pass.is_pass(), "{}", pass.message());

        let fail = run_command_gate(
            &shell("echo checking; echo visits lost >&2; exit 3", 5_000),
            &payload,
        )
        .await;
        assert_eq!(
            fail.message(),
            "command gate failed (sh -c 'echo checking; echo visits lost >&2; exit 3'): exited with 3; output ends with: checking\nvisits lost"
        );

        // A command that outlives its timeout is killed with what it started.
        let pid_file =
            std::env::temp_dir().join(format!("rollout-gate-{}.pid", std::process::id()));
        let line = format!("sleep 30 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let slow = run_command_gate(&shell(&line, 500), &payload).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(
            slow.message().contains("did not finish within 500ms"),
            "{}",
            slow.message()
        );
        let background = std::fs::read_to_string(&pid_file).unwrap_or_default();
        let _ = std::fs::remove_file(&pid_file);
        let stat = format!("/proc/{}/stat", background.trim());
        assert!(
            !background.trim().is_empty(),
            "the command started its sleep"
        );
        // Killed: gone, or a zombie until its new parent reaps it.
        let mut alive = true;
        for _ in 0..40 {
            let state = std::fs::read_to_string(&stat).unwrap_or_default();
            alive = state.contains(") S ") || state.contains(") R ");
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !alive,
            "the background sleep {} outlived the gate",
            background.trim()
        );

        let missing = run_command_gate(
            &CommandGate {
                run: vec!["/nonexistent/smoke".into()],
                timeout: HumanDuration::from_secs(1),
            },
            &payload,
        )
        .await;
        assert!(
            matches!(missing, Verdict::Inconclusive { .. }),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn webhook_gate_posts_the_step() {
        let server = test_server().await;
        let targets = [target("web-4", Some("10.244.0.9"), 8080)];
        let context = GateContext {
            statefulset: Some("web".into()),
            ..GateContext::default()
        };
        let payload = GatePayload::new(&targets, &context);
        let hook =
            |path: &str| WebhookGate::new(&format!("http://127.0.0.1:{}{path}", server.port));

        assert!(run_webhook_gate(&hook("/hook-ok"), &payload)
            .await
            .is_pass());
        let (line, body) = server.seen.lock().map(|s| s[0].clone()).unwrap_or_default();
        assert_eq!(line, "POST /hook-ok HTTP/1.1");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        assert_eq!(body["statefulset"], "web");
        assert_eq!(body["pods"][0]["ip"], "10.244.0.9");

        let no = run_webhook_gate(&hook("/hook-no"), &payload).await;
        assert!(no.message().ends_with("answered 409"), "{}", no.message());

        let port = closed_port().await;
        let gone = WebhookGate::new(&format!("http://127.0.0.1:{port}/"));
        let started = Instant::now();
        let verdict = run_webhook_gate(&gone, &payload).await;
        assert!(
            matches!(verdict, Verdict::Inconclusive { .. }),
            "{verdict:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn the_gate_future_can_run_on_a_spawned_task() {
        fn assert_send<T: Send>(_: &T) {}
        let cluster = fake_cluster();
        let spec = GateSpec::default();
        let future = run_gates(&cluster, &spec, &[]);
        assert_send(&future);
    }

    #[tokio::test]
    async fn gates_combine_and_min_ready_judges_without_waiting_when_it_can() {
        let cluster = fake_cluster();
        let long_ready = PodTarget {
            ready_since: Timestamp::from_second(100).ok(),
            ..target("web-0", None, 80)
        };
        let spec = GateSpec {
            http: HttpGate {
                enabled: false,
                ..HttpGate::default()
            },
            min_ready: Some(HumanDuration::from_secs(10)),
            command: Some(CommandGate::shell("exit 0")),
            ..GateSpec::default()
        };
        assert!(
            run_gates(&cluster, &spec, std::slice::from_ref(&long_ready))
                .await
                .is_pass()
        );

        let not_ready = target("web-1", None, 80);
        let spec = GateSpec {
            command: Some(CommandGate::shell("exit 4")),
            ..spec
        };
        let verdict = run_gates(&cluster, &spec, &[long_ready, not_ready]).await;
        let Verdict::Fail { failures } = &verdict else {
            panic!("{verdict:?}")
        };
        let kinds: Vec<_> = failures.iter().map(|f| (f.gate, f.pod.clone())).collect();
        assert_eq!(
            kinds,
            [
                (GateKind::MinReady, Some("web-1".to_string())),
                (GateKind::Command, None)
            ]
        );
    }

    #[tokio::test]
    async fn proxied_probes_go_through_the_seam() {
        let cluster = fake_cluster();
        let spec = http_spec("/healthz", ProbeVia::Proxy, 300, 100);
        let verdict = run_gates(&cluster, &spec, &[target("web-0", None, 8080)]).await;
        assert!(verdict.is_pass(), "{}", verdict.message());
        // The API server's own failure to reach a pod is no answer of the pod.
        let verdict = run_gates(&cluster, &spec, &[target("web-7", None, 8080)]).await;
        let message = verdict.message();
        assert!(matches!(verdict, Verdict::Inconclusive { .. }), "{message}");
        assert!(message.contains("pod proxy web-7:8080"), "{message}");

        let gate = fast_gate(300, 100);
        let service = |selector: &[(&str, &str)]| k8s_openapi::api::core::v1::Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        };
        cluster.with(|s| s.put(&service(&[("app", "web")])));
        let verdict = run_service_gate(&cluster, &gate, "web", "http").await;
        assert!(verdict.is_pass(), "{}", verdict.message());
        cluster.with(|s| s.put(&service(&[("app", "nothing")])));
        let verdict = run_service_gate(&cluster, &gate, "web", "http").await;
        let message = verdict.message();
        assert!(message.contains("service proxy web:http"), "{message}");
    }

    #[tokio::test]
    async fn min_ready_fails_the_moment_the_pod_leaves_ready() {
        let cluster = fake_cluster();
        let just_ready = PodTarget {
            ready_since: Some(Timestamp::now()),
            ..target("web-0", None, 8080)
        };
        let spec = GateSpec {
            http: HttpGate {
                enabled: false,
                ..HttpGate::default()
            },
            min_ready: Some(HumanDuration::from_secs(20)),
            ..GateSpec::default()
        };
        let flip = cluster.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            flip.with(|s| {
                if let Some(mut pod) = s.get::<Pod>("web-0") {
                    if let Some(ready) = pod
                        .status
                        .as_mut()
                        .and_then(|st| st.conditions.as_mut())
                        .and_then(|c| c.iter_mut().find(|c| c.type_ == "Ready"))
                    {
                        ready.status = "False".into();
                    }
                    pod.metadata.resource_version = None;
                    s.put(&pod);
                }
            });
        });
        let started = Instant::now();
        let verdict = run_gates(&cluster, &spec, &[just_ready]).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let Verdict::Fail { failures } = &verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(failures[0].gate, GateKind::MinReady);
    }
}
