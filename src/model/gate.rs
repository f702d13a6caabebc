//! What a health gate checks after each step, as a user configures it (flags or a strategy
//! file). Judging the results is `crate::gate`; probing is the executor's.
//!
//! Defaults follow the design: `GET /` expecting 2xx, one probe a second for 10 s per pod, every
//! answer must be right (a wrong status is a real answer from the new version), connection errors
//! retried up to 4 in a row before they count (Argo's consecutive error limit), each probe
//! answered within 2 s.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use super::metric::{MetricGate, MetricGateError};

/// Why a gate setting was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateSpecError {
    #[error(
        "expected status `{input}` is not valid; write 200, 200-299 or 2xx (codes 100 to 599)"
    )]
    BadStatus { input: String },
    #[error("probe port `{input}` is neither a port number (1-65535) nor a port name")]
    BadPort { input: String },
    #[error("probe path `{path}` must start with `/`")]
    BadPath { path: String },
    #[error("gate {setting} must be more than 0s")]
    ZeroDuration { setting: &'static str },
    #[error("gate window ({window}) is shorter than the probe interval ({interval}): no probe would run")]
    WindowShorterThanInterval {
        window: HumanDuration,
        interval: HumanDuration,
    },
    #[error("minimum success ratio {value} is outside 0..1 (write 0.95 for 95 %)")]
    BadRatio { value: f64 },
    #[error("the command gate has no command to run (an empty --gate-command would pass every gate without checking anything); give a command, e.g. --gate-command ./smoke-test.sh, or leave the flag out")]
    EmptyCommand,
    #[error("webhook URL `{url}` must start with http:// or https://")]
    BadWebhookUrl { url: String },
    #[error(transparent)]
    Metric(#[from] MetricGateError),
    #[error("--analysis-interval and --bake keep metric gates running; give at least one with --gate-prometheus 'QUERY < BOUND'")]
    AnalysisWithoutMetricGates,
    #[error("Prometheus URL `{url}` must start with http:// or https://")]
    BadPrometheusUrl { url: String },
}

/// An inclusive range of HTTP status codes that count as success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub min: u16,
    pub max: u16,
}

impl StatusRange {
    pub const SUCCESS: StatusRange = StatusRange { min: 200, max: 299 };

    pub fn contains(&self, status: u16) -> bool {
        (self.min..=self.max).contains(&status)
    }
}

impl Default for StatusRange {
    fn default() -> Self {
        StatusRange::SUCCESS
    }
}

impl FromStr for StatusRange {
    type Err = GateSpecError;

    /// `200`, `200-299`, `2xx`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = || GateSpecError::BadStatus {
            input: input.to_string(),
        };
        let text = input.trim();
        let code = |s: &str| -> Result<u16, GateSpecError> {
            match s.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(bad()),
            }
        };
        let range = if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX"))
        {
            let digit = code(&format!("{class}00"))?;
            StatusRange {
                min: digit,
                max: digit + 99,
            }
        } else if let Some((lo, hi)) = text.split_once('-') {
            StatusRange {
                min: code(lo)?,
                max: code(hi)?,
            }
        } else {
            let c = code(text)?;
            StatusRange { min: c, max: c }
        };
        if range.min > range.max {
            return Err(bad());
        }
        Ok(range)
    }
}

impl fmt::Display for StatusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.min == self.max {
            write!(f, "{}", self.min)
        } else if self.min.is_multiple_of(100) && self.max == self.min + 99 {
            write!(f, "{}xx", self.min / 100)
        } else {
            write!(f, "{}-{}", self.min, self.max)
        }
    }
}

impl Serialize for StatusRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    /// A string (`"2xx"`) or a bare number (`200`).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Which port of the pod to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    /// A named container port (`http`), looked up in the pod spec.
    Name(String),
}

impl FromStr for PortRef {
    type Err = GateSpecError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match text.parse::<u16>() {
                Ok(n) if n > 0 => Ok(PortRef::Number(n)),
                _ => Err(GateSpecError::BadPort {
                    input: input.to_string(),
                }),
            };
        }
        // Kubernetes port names: IANA_SVC_NAME, at most 15 lowercase letters, digits and `-`.
        let valid = text.len() <= 15
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && text.bytes().any(|b| b.is_ascii_lowercase())
            && !text.starts_with('-')
            && !text.ends_with('-')
            && !text.contains("--");
        if valid {
            Ok(PortRef::Name(text.to_string()))
        } else {
            Err(GateSpecError::BadPort {
                input: input.to_string(),
            })
        }
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(name) => f.write_str(name),
        }
    }
}

impl Serialize for PortRef {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PortRef::Number(n) => serializer.serialize_u16(*n),
            PortRef::Name(name) => serializer.serialize_str(name),
        }
    }
}

impl<'de> Deserialize<'de> for PortRef {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let text = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How probes reach a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ProbeVia {
    /// Directly when the pod IP answers, else through the API server's pod proxy.
    #[default]
    Auto,
    /// Pod IP and container port.
    Direct,
    /// `GET /api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH` (for runners outside the cluster).
    Proxy,
}

impl FromStr for ProbeVia {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.trim() {
            "auto" => Ok(ProbeVia::Auto),
            "direct" => Ok(ProbeVia::Direct),
            "proxy" => Ok(ProbeVia::Proxy),
            other => Err(format!(
                "probe route `{other}` is not one of auto, direct, proxy"
            )),
        }
    }
}

/// The HTTP gate: probes each changed pod for a window and judges the answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpGate {
    /// `false` turns the HTTP gate off.
    pub enabled: bool,
    pub path: String,
    /// `None`: the first port of the first container whose image the rollout changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// Expected status codes.
    pub status: StatusRange,
    /// Longest wait for one answer; a probe that takes longer is a timeout (an error, retried).
    pub timeout: HumanDuration,
    /// Time between probes of the same pod.
    pub interval: HumanDuration,
    /// How long each pod is probed.
    pub window: HumanDuration,
    /// Share of counted probes per pod that must succeed, 0..=1.
    pub min_success_ratio: f64,
    /// Highest acceptable 95th percentile latency per pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_p95_latency: Option<HumanDuration>,
    /// Connection errors and timeouts in a row that are retried before they count as failures.
    pub error_limit: u32,
    pub via: ProbeVia,
}

impl Default for HttpGate {
    fn default() -> Self {
        HttpGate {
            enabled: true,
            path: "/".to_string(),
            port: None,
            status: StatusRange::SUCCESS,
            timeout: HumanDuration::from_secs(2),
            interval: HumanDuration::from_secs(1),
            window: HumanDuration::from_secs(10),
            min_success_ratio: 1.0,
            max_p95_latency: None,
            error_limit: 4,
            via: ProbeVia::Auto,
        }
    }
}

impl HttpGate {
    /// Probes planned per pod over the window (the first one at the start of the window).
    pub fn probes_per_pod(&self) -> u32 {
        let interval = self.interval.get().as_millis().max(1);
        let count = self.window.get().as_millis() / interval;
        u32::try_from(count).unwrap_or(u32::MAX).max(1)
    }

    /// `GET :http/ expecting 2xx`: how a failure message names the probe.
    pub fn describe(&self) -> String {
        let port = self
            .port
            .as_ref()
            .map_or_else(String::new, |p| format!(":{p}"));
        format!("GET {port}{} expecting {}", self.path, self.status)
    }

    pub fn validate(&self) -> Result<(), GateSpecError> {
        if !self.path.starts_with('/') {
            return Err(GateSpecError::BadPath {
                path: self.path.clone(),
            });
        }
        for (setting, d) in [
            ("timeout", self.timeout),
            ("interval", self.interval),
            ("window", self.window),
        ] {
            if d.get().is_zero() {
                return Err(GateSpecError::ZeroDuration { setting });
            }
        }
        // No answer comes back in 0s: every pod would fail the gate and every rollout roll back.
        if self.max_p95_latency.is_some_and(|d| d.get().is_zero()) {
            return Err(GateSpecError::ZeroDuration {
                setting: "max p95 latency",
            });
        }
        if self.window < self.interval {
            return Err(GateSpecError::WindowShorterThanInterval {
                window: self.window,
                interval: self.interval,
            });
        }
        if !(0.0..=1.0).contains(&self.min_success_ratio) || self.min_success_ratio.is_nan() {
            return Err(GateSpecError::BadRatio {
                value: self.min_success_ratio,
            });
        }
        Ok(())
    }
}

/// A command gate: passes when the command exits 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommandGate {
    /// Program and arguments, run without a shell (use `["sh", "-c", "..."]` for one).
    pub run: Vec<String>,
    #[serde(default = "CommandGate::default_timeout")]
    pub timeout: HumanDuration,
}

impl CommandGate {
    fn default_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    /// A gate that runs `line` with `sh -c`.
    pub fn shell(line: &str) -> Self {
        CommandGate {
            run: vec!["sh".into(), "-c".into(), line.to_string()],
            timeout: Self::default_timeout(),
        }
    }

    pub fn validate(&self) -> Result<(), GateSpecError> {
        match self.run.first() {
            Some(program) if !program.trim().is_empty() => {}
            _ => return Err(GateSpecError::EmptyCommand),
        }
        // `sh -c ''` exits 0: a gate that would pass every step without checking anything.
        if let [shell, flag, script] = self.run.as_slice() {
            let is_shell = matches!(
                shell.rsplit('/').next(),
                Some("sh" | "bash" | "dash" | "zsh")
            );
            if is_shell && flag == "-c" && script.trim().is_empty() {
                return Err(GateSpecError::EmptyCommand);
            }
        }
        if self.timeout.get().is_zero() {
            return Err(GateSpecError::ZeroDuration {
                setting: "command timeout",
            });
        }
        Ok(())
    }
}

/// A webhook gate: passes when a POST to the URL answers 2xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookGate {
    pub url: String,
    #[serde(default = "WebhookGate::default_timeout")]
    pub timeout: HumanDuration,
}

impl WebhookGate {
    fn default_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    pub fn new(url: &str) -> Self {
        WebhookGate {
            url: url.to_string(),
            timeout: Self::default_timeout(),
        }
    }

    pub fn validate(&self) -> Result<(), GateSpecError> {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(GateSpecError::BadWebhookUrl {
                url: self.url.clone(),
            });
        }
        if self.timeout.get().is_zero() {
            return Err(GateSpecError::ZeroDuration {
                setting: "webhook timeout",
            });
        }
        Ok(())
    }
}

/// Every gate that runs after a step, on the pods that step changed. All configured gates must
/// pass.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct GateSpec {
    pub http: HttpGate,
    /// Each changed pod must have been Ready at least this long.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready: Option<HumanDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandGate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookGate>,
    /// Metric gates: Prometheus queries (sent to the run's own `--prometheus-url`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prometheus: Vec<MetricGate>,
    /// Keep the metric gates running every so often during pauses and holds (and the bake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis_interval: Option<HumanDuration>,
    /// After the last step, keep the metric gates running this long before the rollout counts
    /// as succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bake: Option<HumanDuration>,
}

impl GateSpec {
    pub fn validate(&self) -> Result<(), GateSpecError> {
        if self.http.enabled {
            self.http.validate()?;
        }
        for gate in &self.prometheus {
            gate.validate()?;
        }
        if self.analysis_interval.is_some_and(|d| d.get().is_zero()) {
            return Err(GateSpecError::ZeroDuration {
                setting: "analysis interval",
            });
        }
        if self.bake.is_some_and(|d| d.get().is_zero()) {
            return Err(GateSpecError::ZeroDuration { setting: "bake" });
        }
        if (self.analysis_interval.is_some() || self.bake.is_some()) && self.prometheus.is_empty() {
            return Err(GateSpecError::AnalysisWithoutMetricGates);
        }
        if let Some(command) = &self.command {
            command.validate()?;
        }
        if let Some(webhook) = &self.webhook {
            webhook.validate()?;
        }
        Ok(())
    }

    /// True when at least one gate would run.
    pub fn any(&self) -> bool {
        self.http.enabled
            || self.min_ready.is_some()
            || self.command.is_some()
            || self.webhook.is_some()
            || !self.prometheus.is_empty()
    }

    /// The interval of continuous analysis, when it runs (metric gates and an interval given).
    pub fn analysis(&self) -> Option<std::time::Duration> {
        if self.prometheus.is_empty() {
            return None;
        }
        self.analysis_interval.map(HumanDuration::get)
    }
}

/// The gates that execute something on this machine (a command) or call out (a webhook), as the
/// command line of this very run (or a strategy file it names) gives them. A record read back
/// from the cluster may name such gates too, but only these ever run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LocalGates {
    pub command: Option<CommandGate>,
    pub webhook: Option<WebhookGate>,
    /// Where metric gates send their queries: this run's `--prometheus-url` (or
    /// `ROLLOUT_PROMETHEUS_URL`), never a URL read from the record.
    pub prometheus_url: Option<String>,
}

impl LocalGates {
    /// The command and webhook of gates given on this run's command line.
    pub fn of(spec: &GateSpec) -> Self {
        LocalGates {
            command: spec.command.clone(),
            webhook: spec.webhook.clone(),
            prometheus_url: None,
        }
    }

    /// These gates, querying the Prometheus at `url`.
    pub fn with_prometheus(self, url: Option<String>) -> Self {
        LocalGates {
            prometheus_url: url,
            ..self
        }
    }

    /// `spec` (as a record has it) with its command and webhook replaced by these.
    pub fn over(&self, spec: &GateSpec) -> GateSpec {
        GateSpec {
            command: self.command.clone(),
            webhook: self.webhook.clone(),
            ..spec.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_ranges_parse() {
        let cases = [
            ("200", 200, 200),
            ("2xx", 200, 299),
            ("3XX", 300, 399),
            ("200-399", 200, 399),
            (" 204 ", 204, 204),
        ];
        for (input, min, max) in cases {
            assert_eq!(
                input.parse::<StatusRange>(),
                Ok(StatusRange { min, max }),
                "{input}"
            );
        }
        for bad in [
            "", "2x", "600", "99", "299-200", "abc", "6xx", "1-2", "20xx",
        ] {
            assert!(
                bad.parse::<StatusRange>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn status_ranges_print_back() {
        for text in ["200", "2xx", "200-399", "204-206"] {
            let range: StatusRange = text.parse().unwrap_or_default();
            assert_eq!(range.to_string(), text);
        }
        assert!(StatusRange::SUCCESS.contains(204));
        assert!(!StatusRange::SUCCESS.contains(301));
    }

    #[test]
    fn ports_parse() {
        assert_eq!("8080".parse::<PortRef>(), Ok(PortRef::Number(8080)));
        assert_eq!("http".parse::<PortRef>(), Ok(PortRef::Name("http".into())));
        assert_eq!(
            "metrics-2".parse::<PortRef>(),
            Ok(PortRef::Name("metrics-2".into()))
        );
        for bad in [
            "0",
            "70000",
            "HTTP",
            "-http",
            "a--b",
            "port_1",
            "",
            "averyveryverylongname",
        ] {
            assert!(bad.parse::<PortRef>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn probes_per_pod_follow_window_and_interval() {
        let cases = [
            (10_000, 1_000, 10),
            (5_000, 2_000, 2),
            (1_000, 1_000, 1),
            (500, 1_000, 1),
            (3_000, 250, 12),
        ];
        for (window, interval, expected) in cases {
            let gate = HttpGate {
                window: HumanDuration::from_millis(window),
                interval: HumanDuration::from_millis(interval),
                ..HttpGate::default()
            };
            assert_eq!(
                gate.probes_per_pod(),
                expected,
                "window {window} interval {interval}"
            );
        }
    }

    #[test]
    fn validation_catches_bad_settings() {
        let base = HttpGate::default();
        let cases: Vec<(HttpGate, &str)> = vec![
            (
                HttpGate {
                    path: "health".into(),
                    ..base.clone()
                },
                "must start with `/`",
            ),
            (
                HttpGate {
                    timeout: HumanDuration::from_secs(0),
                    ..base.clone()
                },
                "timeout must be more than 0s",
            ),
            (
                HttpGate {
                    interval: HumanDuration::from_secs(0),
                    ..base.clone()
                },
                "interval must be more than 0s",
            ),
            (
                HttpGate {
                    window: HumanDuration::from_secs(1),
                    interval: HumanDuration::from_secs(5),
                    ..base.clone()
                },
                "shorter than the probe interval",
            ),
            (
                HttpGate {
                    min_success_ratio: 1.5,
                    ..base.clone()
                },
                "outside 0..1",
            ),
            (
                HttpGate {
                    min_success_ratio: f64::NAN,
                    ..base.clone()
                },
                "outside 0..1",
            ),
            (
                HttpGate {
                    max_p95_latency: Some(HumanDuration::from_secs(0)),
                    ..base.clone()
                },
                "max p95 latency must be more than 0s",
            ),
        ];
        for (gate, fragment) in cases {
            let err = gate.validate().expect_err(fragment);
            assert!(err.to_string().contains(fragment), "{err}");
        }
        assert_eq!(base.validate(), Ok(()));
        let off = GateSpec {
            http: HttpGate {
                enabled: false,
                path: "bad".into(),
                ..base
            },
            ..GateSpec::default()
        };
        assert_eq!(off.validate(), Ok(()), "a disabled gate is not validated");
        assert!(!off.any());
    }

    #[test]
    fn command_and_webhook_validation() {
        assert_eq!(CommandGate::shell("exit 0").validate(), Ok(()));
        assert_eq!(
            CommandGate {
                run: vec![],
                timeout: HumanDuration::from_secs(1)
            }
            .validate(),
            Err(GateSpecError::EmptyCommand)
        );
        // A shell with nothing to run exits 0: it would pass every gate.
        for blank in ["", "   ", "\n"] {
            assert_eq!(
                CommandGate::shell(blank).validate(),
                Err(GateSpecError::EmptyCommand),
                "{blank:?}"
            );
        }
        let bash = CommandGate {
            run: vec!["/bin/bash".into(), "-c".into(), " ".into()],
            timeout: HumanDuration::from_secs(1),
        };
        assert_eq!(bash.validate(), Err(GateSpecError::EmptyCommand));
        let true_ = CommandGate {
            run: vec!["./check".into()],
            timeout: HumanDuration::from_secs(1),
        };
        assert_eq!(true_.validate(), Ok(()));
        assert_eq!(
            WebhookGate::new("http://127.0.0.1:9000/ok").validate(),
            Ok(())
        );
        assert!(WebhookGate::new("ftp://x").validate().is_err());
    }

    #[test]
    fn gate_spec_from_yaml_with_defaults() {
        let yaml = "
http:
  path: /healthz
  port: http
  status: 200
  window: 30s
  minSuccessRatio: 0.95
  maxP95Latency: 300ms
minReady: 10s
command:
  run: [sh, -c, 'exit 0']
webhook:
  url: http://127.0.0.1:9000/check
";
        let spec: GateSpec = serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.http.path, "/healthz");
        assert_eq!(spec.http.port, Some(PortRef::Name("http".into())));
        assert_eq!(spec.http.status, StatusRange { min: 200, max: 200 });
        assert_eq!(
            spec.http.interval,
            HumanDuration::from_secs(1),
            "default kept"
        );
        assert_eq!(
            spec.http.max_p95_latency,
            Some(HumanDuration::from_millis(300))
        );
        assert_eq!(spec.min_ready, Some(HumanDuration::from_secs(10)));
        assert_eq!(
            spec.command.as_ref().map(|c| c.timeout),
            Some(HumanDuration::from_secs(60))
        );
        assert_eq!(spec.validate(), Ok(()));
        assert_eq!(spec.http.describe(), "GET :http/healthz expecting 200");

        let typo = serde_yaml_ng::from_str::<GateSpec>("http:\n  pathh: /\n");
        assert!(typo.is_err_and(|e| e.to_string().contains("pathh")));
    }
}
