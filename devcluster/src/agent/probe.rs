//! Container probes (startup, readiness, liveness) as the kubelet runs them.
//!
//! Three layers: [`Tracker`] and [`ProbeSet`] are the pure decision logic (consecutive results
//! against thresholds -> started / ready / restart), [`Action`] is a probe resolved against the
//! container's ports, and [`execute`] / [`run`] do the I/O: HTTP GET, TCP connect or a command in
//! the container's namespaces, on the probe's schedule. Probes only ever reach pod IPs and
//! loopback.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerPort, ExecAction, HTTPGetAction, LifecycleHandler, Probe, TCPSocketAction,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::sync::mpsc;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

impl ProbeKind {
    pub const ALL: [ProbeKind; 3] = [
        ProbeKind::Startup,
        ProbeKind::Readiness,
        ProbeKind::Liveness,
    ];

    /// As the kubelet words it in events ("Readiness probe failed: ...").
    pub fn title(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Readiness => "Readiness",
            ProbeKind::Liveness => "Liveness",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// When and how often a probe runs, and how many results in a row settle it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Timing {
    /// The probe's settings with the API defaults (period 10 s, timeout 1 s, thresholds 1 and 3).
    pub fn of(p: &Probe) -> Self {
        let secs = |v: Option<i32>, default: u64, min: u64| {
            Duration::from_secs(v.map_or(default, |s| (s.max(0) as u64).max(min)))
        };
        let count = |v: Option<i32>, default: u32| v.map_or(default, |n| n.max(1) as u32);
        Timing {
            initial_delay: secs(p.initial_delay_seconds, 0, 0),
            period: secs(p.period_seconds, 10, 1),
            timeout: secs(p.timeout_seconds, 1, 1),
            success_threshold: count(p.success_threshold, 1),
            failure_threshold: count(p.failure_threshold, 3),
        }
    }
}

/// Consecutive results of one probe, settled against its thresholds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
    /// The settled result; `None` until the first threshold is reached (startup probes).
    result: Option<bool>,
}

impl Tracker {
    pub fn new(timing: &Timing, initial: Option<bool>) -> Self {
        Tracker {
            success_threshold: timing.success_threshold,
            failure_threshold: timing.failure_threshold,
            last: None,
            run: 0,
            result: initial,
        }
    }

    pub fn result(&self) -> Option<bool> {
        self.result
    }

    /// Feeds one probe result; returns the new settled result when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold || self.result == Some(ok) {
            return None;
        }
        self.result = Some(ok);
        Some(ok)
    }
}

/// What the container's lifecycle must do after a probe result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The startup probe passed: readiness and liveness probes begin.
    Started,
    Ready(bool),
    /// Liveness or startup probe failed `failureThreshold` times: kill and restart.
    Restart(ProbeKind),
}

/// The probes of one container run (a restart starts a fresh set). Without a startup probe the
/// container counts as started at once; without a readiness probe it is ready once started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSet {
    trackers: [Option<Tracker>; 3],
    started: bool,
    ready: bool,
}

impl ProbeSet {
    pub fn new(
        startup: Option<&Timing>,
        readiness: Option<&Timing>,
        liveness: Option<&Timing>,
    ) -> Self {
        let started = startup.is_none();
        ProbeSet {
            // Startup results are unknown at first, readiness counts as failed, liveness as passed.
            trackers: [
                startup.map(|t| Tracker::new(t, None)),
                readiness.map(|t| Tracker::new(t, Some(false))),
                liveness.map(|t| Tracker::new(t, Some(true))),
            ],
            started,
            ready: started && readiness.is_none(),
        }
    }

    pub fn started(&self) -> bool {
        self.started
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Whether a probe of this kind runs now: the startup probe until it passed, the others only
    /// after that.
    pub fn is_active(&self, kind: ProbeKind) -> bool {
        self.trackers[kind.index()].is_some() && (kind == ProbeKind::Startup) != self.started
    }

    pub fn observe(&mut self, kind: ProbeKind, ok: bool) -> Vec<Decision> {
        if !self.is_active(kind) {
            return Vec::new();
        }
        let Some(changed) = self.trackers[kind.index()]
            .as_mut()
            .and_then(|t| t.record(ok))
        else {
            return Vec::new();
        };
        match (kind, changed) {
            (ProbeKind::Startup, true) => {
                self.started = true;
                let mut out = vec![Decision::Started];
                if self.trackers[ProbeKind::Readiness.index()].is_none() {
                    self.ready = true;
                    out.push(Decision::Ready(true));
                }
                out
            }
            (ProbeKind::Readiness, r) => {
                self.ready = r;
                vec![Decision::Ready(r)]
            }
            (ProbeKind::Startup | ProbeKind::Liveness, false) => {
                self.ready = false;
                vec![Decision::Restart(kind)]
            }
            (ProbeKind::Liveness, true) => Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    #[error("the probe names port {port:?}, which container {container} does not declare")]
    ResolvePort { container: String, port: String },
    #[error("port {port} is out of range")]
    PortRange { port: i32 },
    #[error("gRPC probes are not supported by the devcluster")]
    Grpc,
    #[error("the probe has no handler (exec, httpGet or tcpSocket)")]
    NoHandler,
}

/// A probe or lifecycle hook resolved against the container's ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Http {
        https: bool,
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
    Sleep(Duration),
    /// A probe that cannot run as written (unknown port name, gRPC): it fails every time with
    /// this message, as the kubelet's does.
    Invalid(String),
}

fn resolve_port(
    port: &IntOrString,
    container: &str,
    ports: &[ContainerPort],
) -> Result<u16, ProbeError> {
    let n = match port {
        IntOrString::Int(n) => *n,
        IntOrString::String(s) => match s.parse::<i32>() {
            Ok(n) => n,
            Err(_) => ports
                .iter()
                .find(|p| p.name.as_deref() == Some(s.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| ProbeError::ResolvePort {
                    container: container.to_string(),
                    port: s.clone(),
                })?,
        },
    };
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or(ProbeError::PortRange { port: n })
}

/// The handler parts a `Probe` and a `LifecycleHandler` share.
#[derive(Debug, Default, Clone, Copy)]
pub struct Handler<'a> {
    pub exec: Option<&'a ExecAction>,
    pub http_get: Option<&'a HTTPGetAction>,
    pub tcp_socket: Option<&'a TCPSocketAction>,
    pub grpc: bool,
    pub sleep_seconds: Option<i64>,
}

impl<'a> Handler<'a> {
    pub fn of_probe(p: &'a Probe) -> Self {
        Handler {
            exec: p.exec.as_ref(),
            http_get: p.http_get.as_ref(),
            tcp_socket: p.tcp_socket.as_ref(),
            grpc: p.grpc.is_some(),
            sleep_seconds: None,
        }
    }

    pub fn of_lifecycle(h: &'a LifecycleHandler) -> Self {
        Handler {
            exec: h.exec.as_ref(),
            http_get: h.http_get.as_ref(),
            tcp_socket: h.tcp_socket.as_ref(),
            grpc: false,
            sleep_seconds: h.sleep.as_ref().map(|s| s.seconds),
        }
    }

    pub fn resolve(&self, container: &str, ports: &[ContainerPort]) -> Result<Action, ProbeError> {
        if let Some(h) = self.http_get {
            return Ok(Action::Http {
                https: h
                    .scheme
                    .as_deref()
                    .is_some_and(|s| s.eq_ignore_ascii_case("https")),
                host: h.host.clone().filter(|s| !s.is_empty()),
                port: resolve_port(&h.port, container, ports)?,
                path: match h.path.as_deref() {
                    None | Some("") => "/".to_string(),
                    Some(p) if p.starts_with('/') => p.to_string(),
                    Some(p) => format!("/{p}"),
                },
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            });
        }
        if let Some(t) = self.tcp_socket {
            return Ok(Action::Tcp {
                host: t.host.clone().filter(|s| !s.is_empty()),
                port: resolve_port(&t.port, container, ports)?,
            });
        }
        if let Some(e) = self.exec {
            return Ok(Action::Exec {
                command: e.command.clone().unwrap_or_default(),
            });
        }
        if let Some(s) = self.sleep_seconds {
            return Ok(Action::Sleep(Duration::from_secs(s.max(0) as u64)));
        }
        if self.grpc {
            return Err(ProbeError::Grpc);
        }
        Err(ProbeError::NoHandler)
    }
}

/// The address a probe goes to: its `host` if set, else the pod IP. Only pod IPs and loopback
/// are allowed; the devcluster sends traffic nowhere else.
pub fn target_ip(host: Option<&str>, pod_ip: Ipv4Addr) -> Result<Ipv4Addr, String> {
    let ip = match host {
        None => pod_ip,
        Some("localhost") => Ipv4Addr::LOCALHOST,
        Some(h) => h
            .parse()
            .map_err(|_| format!("probe host {h:?} is not an IPv4 address"))?,
    };
    let o = ip.octets();
    if ip.is_loopback() || (o[0] == 10 && o[1] == 244) {
        Ok(ip)
    } else {
        Err(format!(
            "probe host {ip} is neither a pod IP nor loopback; the devcluster probes nothing else"
        ))
    }
}

/// Where a container's probes go and how to enter it.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    pub pod_ip: Ipv4Addr,
    /// The container's main process, for exec probes.
    pub pid: i32,
}

/// The HTTP client for probes: no proxy, no redirects followed (3xx passes), no connection reuse
/// (like the kubelet), any serving certificate accepted (like the kubelet).
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .danger_accept_invalid_certs(true)
        .user_agent("kube-probe/1.37")
        .build()
}

/// Runs one probe or hook; `Err` carries the failure message.
pub async fn execute(
    action: &Action,
    target: Target,
    http: &reqwest::Client,
    timeout: Duration,
) -> Result<(), String> {
    match action {
        Action::Http {
            https,
            host,
            port,
            path,
            headers,
        } => {
            let ip = target_ip(host.as_deref(), target.pod_ip)?;
            let scheme = if *https { "https" } else { "http" };
            let url = format!("{scheme}://{ip}:{port}{path}");
            let mut req = http.get(&url).timeout(timeout);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| format!("Get {url:?}: {}", http_failure(&e, timeout)))?;
            let code = resp.status().as_u16();
            if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {code}"))
            }
        }
        Action::Tcp { host, port } => {
            let ip = target_ip(host.as_deref(), target.pod_ip)?;
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, *port))).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("dial tcp {ip}:{port}: {e}")),
                Err(_) => Err(format!("dial tcp {ip}:{port}: i/o timeout")),
            }
        }
        Action::Exec { command } => exec_in_container(command, target.pid, timeout).await,
        Action::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Action::Invalid(msg) => Err(msg.clone()),
    }
}

/// The root cause of a failed request, worded briefly like the kubelet's ("Connection
/// refused", "timeout"), instead of reqwest's whole chain.
fn http_failure(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!(
            "timeout after {}s (Client.Timeout exceeded while awaiting headers)",
            timeout.as_secs()
        );
    }
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The environment of a running process, so exec probes see what the container sees.
fn process_env(pid: i32) -> Vec<(String, String)> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

async fn exec_in_container(command: &[String], pid: i32, timeout: Duration) -> Result<(), String> {
    if command.is_empty() {
        return Err("exec probe has no command".into());
    }
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--target={pid}"))
        .args(["--net", "--mount", "--uts", "--wd", "--"])
        .args(command)
        .env_clear()
        .envs(process_env(pid))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => Err(format!(
            "command {command:?} timed out after {}s",
            timeout.as_secs()
        )),
        Ok(Err(e)) => Err(format!("could not run nsenter: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let mut msg = String::from_utf8_lossy(&out.stdout).into_owned();
            msg.push_str(&String::from_utf8_lossy(&out.stderr));
            let msg = msg.trim();
            let code = out
                .status
                .code()
                .map_or("a signal".to_string(), |c| c.to_string());
            Err(if msg.is_empty() {
                format!("command {command:?} exited with {code}")
            } else {
                msg.to_string()
            })
        }
    }
}

/// One container's probes, resolved.
#[derive(Debug, Clone, Default)]
pub struct ContainerProbes {
    pub startup: Option<(Timing, Action)>,
    pub readiness: Option<(Timing, Action)>,
    pub liveness: Option<(Timing, Action)>,
}

impl ContainerProbes {
    fn get(&self, kind: ProbeKind) -> Option<&(Timing, Action)> {
        match kind {
            ProbeKind::Startup => self.startup.as_ref(),
            ProbeKind::Readiness => self.readiness.as_ref(),
            ProbeKind::Liveness => self.liveness.as_ref(),
        }
    }

    pub fn probe_set(&self) -> ProbeSet {
        ProbeSet::new(
            self.startup.as_ref().map(|p| &p.0),
            self.readiness.as_ref().map(|p| &p.0),
            self.liveness.as_ref().map(|p| &p.0),
        )
    }

    pub fn is_empty(&self) -> bool {
        ProbeKind::ALL.iter().all(|k| self.get(*k).is_none())
    }
}

/// What [`run`] reports to the container's lifecycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// A probe failed (for an `Unhealthy` event); `first` marks the first of a streak.
    Failed {
        kind: ProbeKind,
        message: String,
        first: bool,
    },
    Decided(Decision),
}

/// Runs a container's probes from its start until a restart decision, or until the receiver
/// goes away (the container stopped).
pub async fn run(
    probes: ContainerProbes,
    target: Target,
    started: Instant,
    http: reqwest::Client,
    tx: mpsc::Sender<ProbeEvent>,
) {
    let mut set = probes.probe_set();
    let mut due: [Option<Instant>; 3] = [None; 3];
    let mut failing = [false; 3];
    for k in ProbeKind::ALL {
        due[k.index()] = probes.get(k).map(|(t, _)| started + t.initial_delay);
    }
    loop {
        let next = ProbeKind::ALL
            .into_iter()
            .filter(|k| set.is_active(*k))
            .filter_map(|k| due[k.index()])
            .min();
        let Some(next) = next else {
            // Nothing left to probe (only a startup probe, and it passed).
            tx.closed().await;
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = tx.closed() => return,
        }
        let now = Instant::now();
        for kind in ProbeKind::ALL {
            let Some((timing, action)) = probes.get(kind) else {
                continue;
            };
            if !set.is_active(kind) || due[kind.index()].is_none_or(|d| d > now) {
                continue;
            }
            let result = execute(action, target, &http, timing.timeout).await;
            due[kind.index()] = Some(Instant::now() + timing.period);
            let ok = result.is_ok();
            if let Err(message) = result {
                let first = !failing[kind.index()];
                if tx
                    .send(ProbeEvent::Failed {
                        kind,
                        message,
                        first,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            failing[kind.index()] = !ok;
            for d in set.observe(kind, ok) {
                if d == Decision::Started {
                    // The kubelet probes readiness right after startup succeeds.
                    let ready_at = probes
                        .readiness
                        .as_ref()
                        .map(|(t, _)| (started + t.initial_delay).max(Instant::now()));
                    due[ProbeKind::Readiness.index()] = ready_at;
                }
                let restart = matches!(d, Decision::Restart(_));
                if tx.send(ProbeEvent::Decided(d)).await.is_err() || restart {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::HTTPHeader;

    fn timing(success: u32, failure: u32) -> Timing {
        Timing {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn defaults_follow_the_api() {
        let t = Timing::of(&Probe::default());
        assert_eq!(
            t,
            Timing {
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }
        );
        let t = Timing::of(&Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(0),
            timeout_seconds: Some(3),
            failure_threshold: Some(0),
            ..Default::default()
        });
        assert_eq!(
            (
                t.initial_delay.as_secs(),
                t.period.as_secs(),
                t.timeout.as_secs(),
                t.failure_threshold
            ),
            (5, 1, 3, 1)
        );
    }

    #[test]
    fn tracker_settles_only_after_consecutive_results() {
        // (success threshold, failure threshold, initial, results, settled changes reported)
        type Case = (u32, u32, Option<bool>, Vec<bool>, Vec<Option<bool>>);
        let cases: Vec<Case> = vec![
            (1, 3, Some(false), vec![true], vec![Some(true)]),
            (
                1,
                3,
                Some(true),
                vec![false, false, false],
                vec![None, None, Some(false)],
            ),
            (
                1,
                3,
                Some(true),
                vec![false, false, true, false, false],
                vec![None, None, None, None, None],
            ),
            (
                2,
                1,
                Some(false),
                vec![true, false, true, true],
                vec![None, None, None, Some(true)],
            ),
            (
                1,
                1,
                Some(false),
                vec![true, true, false, false],
                vec![Some(true), None, Some(false), None],
            ),
            (
                1,
                2,
                None,
                vec![false, false, true],
                vec![None, Some(false), Some(true)],
            ),
        ];
        for (s, f, initial, results, want) in cases {
            let mut t = Tracker::new(&timing(s, f), initial);
            let got: Vec<Option<bool>> = results.iter().map(|r| t.record(*r)).collect();
            assert_eq!(
                got, want,
                "s={s} f={f} initial={initial:?} results={results:?}"
            );
        }
    }

    #[test]
    fn no_probes_means_started_and_ready_at_once() {
        let set = ProbeSet::new(None, None, None);
        assert!(set.started() && set.ready());
        for k in ProbeKind::ALL {
            assert!(!set.is_active(k));
        }
    }

    #[test]
    fn readiness_probe_gates_ready() {
        let t = timing(1, 3);
        let mut set = ProbeSet::new(None, Some(&t), None);
        assert!(set.started() && !set.ready());
        assert_eq!(set.observe(ProbeKind::Readiness, false), vec![]);
        assert_eq!(
            set.observe(ProbeKind::Readiness, true),
            vec![Decision::Ready(true)]
        );
        assert_eq!(set.observe(ProbeKind::Readiness, false), vec![]);
        assert_eq!(set.observe(ProbeKind::Readiness, false), vec![]);
        assert_eq!(
            set.observe(ProbeKind::Readiness, false),
            vec![Decision::Ready(false)]
        );
        assert!(!set.ready());
    }

    #[test]
    fn startup_probe_gates_the_others_and_can_restart() {
        let t = timing(1, 2);
        let mut set = ProbeSet::new(Some(&t), Some(&t), Some(&t));
        assert!(!set.started());
        assert!(set.is_active(ProbeKind::Startup));
        assert!(!set.is_active(ProbeKind::Readiness) && !set.is_active(ProbeKind::Liveness));
        // Results of gated probes are ignored.
        assert_eq!(set.observe(ProbeKind::Liveness, false), vec![]);
        assert_eq!(
            set.observe(ProbeKind::Startup, true),
            vec![Decision::Started]
        );
        assert!(!set.is_active(ProbeKind::Startup));
        assert!(set.is_active(ProbeKind::Readiness) && set.is_active(ProbeKind::Liveness));
        assert!(!set.ready());
        assert_eq!(
            set.observe(ProbeKind::Readiness, true),
            vec![Decision::Ready(true)]
        );

        let mut failing = ProbeSet::new(Some(&t), None, None);
        assert_eq!(failing.observe(ProbeKind::Startup, false), vec![]);
        assert_eq!(
            failing.observe(ProbeKind::Startup, false),
            vec![Decision::Restart(ProbeKind::Startup)]
        );
    }

    #[test]
    fn startup_without_readiness_makes_ready() {
        let t = timing(1, 3);
        let mut set = ProbeSet::new(Some(&t), None, None);
        assert!(!set.ready());
        assert_eq!(
            set.observe(ProbeKind::Startup, true),
            vec![Decision::Started, Decision::Ready(true)]
        );
        assert!(set.ready());
    }

    #[test]
    fn liveness_failures_restart_after_the_threshold() {
        let t = timing(1, 3);
        let mut set = ProbeSet::new(None, None, Some(&t));
        assert!(set.ready());
        assert_eq!(set.observe(ProbeKind::Liveness, false), vec![]);
        assert_eq!(set.observe(ProbeKind::Liveness, true), vec![]);
        assert_eq!(set.observe(ProbeKind::Liveness, false), vec![]);
        assert_eq!(set.observe(ProbeKind::Liveness, false), vec![]);
        assert_eq!(
            set.observe(ProbeKind::Liveness, false),
            vec![Decision::Restart(ProbeKind::Liveness)]
        );
        assert!(!set.ready());
    }

    fn port(name: &str, n: i32) -> ContainerPort {
        ContainerPort {
            name: Some(name.into()),
            container_port: n,
            ..Default::default()
        }
    }

    #[test]
    fn http_probes_resolve_named_ports_and_defaults() {
        let ports = vec![port("http", 5000)];
        let get = HTTPGetAction {
            port: IntOrString::String("http".into()),
            path: Some("healthz".into()),
            http_headers: Some(vec![HTTPHeader {
                name: "X-A".into(),
                value: "1".into(),
            }]),
            ..Default::default()
        };
        let h = Handler {
            http_get: Some(&get),
            ..Default::default()
        };
        assert_eq!(
            h.resolve("app", &ports),
            Ok(Action::Http {
                https: false,
                host: None,
                port: 5000,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "1".into())]
            })
        );
        let numeric = HTTPGetAction {
            port: IntOrString::String("8080".into()),
            ..Default::default()
        };
        assert!(
            matches!(Handler { http_get: Some(&numeric), ..Default::default() }.resolve("app", &[]), Ok(Action::Http { port: 8080, ref path, .. }) if path == "/")
        );
        let unknown = HTTPGetAction {
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        };
        assert_eq!(
            Handler {
                http_get: Some(&unknown),
                ..Default::default()
            }
            .resolve("app", &ports),
            Err(ProbeError::ResolvePort {
                container: "app".into(),
                port: "metrics".into()
            })
        );
        let zero = TCPSocketAction {
            port: IntOrString::Int(0),
            ..Default::default()
        };
        assert_eq!(
            Handler {
                tcp_socket: Some(&zero),
                ..Default::default()
            }
            .resolve("app", &[]),
            Err(ProbeError::PortRange { port: 0 })
        );
        assert_eq!(
            Handler {
                grpc: true,
                ..Default::default()
            }
            .resolve("app", &[]),
            Err(ProbeError::Grpc)
        );
        assert_eq!(
            Handler::default().resolve("app", &[]),
            Err(ProbeError::NoHandler)
        );
    }

    #[test]
    fn probes_only_reach_pod_ips_and_loopback() {
        let pod = Ipv4Addr::new(10, 244, 1, 5);
        for (host, ok) in [
            (None, true),
            (Some("localhost"), true),
            (Some("127.0.0.1"), true),
            (Some("10.244.2.9"), true),
            (Some("10.96.0.1"), false),
            (Some("192.168.1.1"), false),
            (Some("example.com"), false),
        ] {
            assert_eq!(target_ip(host, pod).is_ok(), ok, "{host:?}");
        }
    }

    #[tokio::test]
    async fn tcp_and_http_probes_against_a_local_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Answers two requests: 200 then 503.
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in ["200 OK", "503 Service Unavailable"] {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let http = http_client().expect("client");
        let target = Target {
            pod_ip: Ipv4Addr::LOCALHOST,
            pid: 0,
        };
        let action = Action::Http {
            https: false,
            host: None,
            port,
            path: "/".into(),
            headers: vec![],
        };
        let t = Duration::from_secs(2);
        assert_eq!(execute(&action, target, &http, t).await, Ok(()));
        assert_eq!(
            execute(&action, target, &http, t).await,
            Err("HTTP probe failed with statuscode: 503".into())
        );
        server.await.expect("server task");
        // Nothing listens any more: both fail, naming the cause.
        let refused = execute(&action, target, &http, t)
            .await
            .expect_err("refused");
        assert!(
            refused.starts_with(&format!("Get \"http://127.0.0.1:{port}/\": "))
                && refused.contains("refused"),
            "{refused}"
        );
        let tcp = Action::Tcp { host: None, port };
        assert!(execute(&tcp, target, &http, t).await.is_err());
    }
}
