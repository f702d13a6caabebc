//! Gate verdicts: from what the probes saw to Pass, Fail or Inconclusive.
//!
//! HTTP rules (after Argo's analysis semantics, minus the single-blip rollbacks Flagger is known
//! for): a wrong status is a real answer from the new version and counts as a failure at once; a
//! connection error or timeout is retried, and only the errors beyond `error_limit` in a row
//! count as failures. Per pod, the success ratio over the counted probes must reach the minimum
//! and the 95th percentile latency of the answers must stay under the maximum. A pod with no
//! counted probe at all cannot be judged: Inconclusive, which pauses the rollout instead of
//! rolling it back on no evidence.
//!
//! The executor probes (directly or through the pod proxy), collects [`ProbeOutcome`]s per pod,
//! and asks [`judge_http`]; [`certain_http_failure`] lets it stop probing as soon as the outcome
//! can no longer be a pass.

use std::fmt;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::model::duration::{format_latency, HumanDuration};
use crate::model::gate::HttpGate;
use crate::model::weight::format_percent;

/// What one probe of one pod saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The pod answered.
    Answered { status: u16, latency: Duration },
    /// No connection (refused, reset, unreachable); `message` says which.
    ConnectError { message: String },
    /// No answer within the probe timeout.
    Timeout,
}

/// The probes of one pod, in the order they ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSamples {
    pub pod: String,
    /// Where the probes went, for messages: `10.244.0.7:8080` or `API server pod proxy`.
    pub target: String,
    pub outcomes: Vec<ProbeOutcome>,
}

/// The figures a verdict rests on, per pod.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodFigures {
    pub probes: u32,
    pub succeeded: u32,
    pub wrong_status: u32,
    /// Connection errors and timeouts within the retry limit: not counted.
    pub errors_retried: u32,
    /// Connection errors and timeouts beyond the limit: counted as failures.
    pub errors_counted: u32,
    pub longest_error_run: u32,
    pub last_error: Option<String>,
    pub last_wrong_status: Option<u16>,
    /// Answers (any status) and their latencies.
    pub answered: u32,
    pub p95_latency: Option<Duration>,
}

impl PodFigures {
    /// Probes that count toward the ratio.
    pub fn counted(&self) -> u32 {
        self.succeeded + self.wrong_status + self.errors_counted
    }

    pub fn success_ratio(&self) -> Option<f64> {
        match self.counted() {
            0 => None,
            counted => Some(f64::from(self.succeeded) / f64::from(counted)),
        }
    }
}

/// Which gate a failure comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateKind {
    Http,
    MinReady,
    Command,
    Webhook,
    Metric,
    /// The gateways' verdict on the route a rollout goes through.
    Route,
}

impl fmt::Display for GateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GateKind::Http => "HTTP gate",
            GateKind::MinReady => "minimum-Ready gate",
            GateKind::Command => "command gate",
            GateKind::Webhook => "webhook gate",
            GateKind::Metric => "metric gate",
            GateKind::Route => "route gate",
        })
    }
}

/// One thing that failed: the pod (when the gate is per pod), the probe and the figures.
#[derive(Debug, Clone, PartialEq)]
pub struct GateFailure {
    pub gate: GateKind,
    pub pod: Option<String>,
    /// What was checked: `GET 10.244.0.7:8080/ expecting 2xx`, the command line, the URL.
    pub probe: String,
    pub figures: Option<PodFigures>,
    /// Each bound that was broken, with the figures: `7 of 10 probes succeeded (70%, minimum 95%)`.
    pub reasons: Vec<String>,
}

impl fmt::Display for GateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed", self.gate)?;
        if let Some(pod) = &self.pod {
            write!(f, " on pod {pod}")?;
        }
        write!(f, " ({}): {}", self.probe, self.reasons.join("; "))
    }
}

/// A gate's outcome.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// Roll back (or hold with `--no-rollback`); every failing pod is listed.
    Fail {
        failures: Vec<GateFailure>,
    },
    /// Not enough to decide: pause.
    Inconclusive {
        message: String,
    },
}

impl Verdict {
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }

    /// The text a person reads: empty for a pass.
    pub fn message(&self) -> String {
        match self {
            Verdict::Pass => String::new(),
            Verdict::Fail { failures } => failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            Verdict::Inconclusive { message } => message.clone(),
        }
    }

    /// Combines the verdicts of several gates on the same step: any failure fails (all failures
    /// are kept), else any inconclusive is inconclusive, else pass.
    pub fn all(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        let mut failures = Vec::new();
        let mut unsure = Vec::new();
        for verdict in verdicts {
            match verdict {
                Verdict::Pass => {}
                Verdict::Fail { failures: f } => failures.extend(f),
                Verdict::Inconclusive { message } => unsure.push(message),
            }
        }
        if !failures.is_empty() {
            Verdict::Fail { failures }
        } else if !unsure.is_empty() {
            Verdict::Inconclusive {
                message: unsure.join("\n"),
            }
        } else {
            Verdict::Pass
        }
    }
}

/// Nearest-rank 95th percentile.
pub fn p95(latencies: &mut [Duration]) -> Option<Duration> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let n = latencies.len();
    let rank = (n * 95).div_ceil(100).max(1);
    latencies.get(rank - 1).copied()
}

/// Tallies one pod's probes under the gate's rules.
pub fn pod_figures(gate: &HttpGate, outcomes: &[ProbeOutcome]) -> PodFigures {
    let mut figures = PodFigures::default();
    let mut run = 0u32;
    let mut latencies = Vec::new();
    for outcome in outcomes {
        figures.probes += 1;
        match outcome {
            ProbeOutcome::Answered { status, latency } => {
                run = 0;
                figures.answered += 1;
                latencies.push(*latency);
                if gate.status.contains(*status) {
                    figures.succeeded += 1;
                } else {
                    figures.wrong_status += 1;
                    figures.last_wrong_status = Some(*status);
                }
            }
            ProbeOutcome::ConnectError { .. } | ProbeOutcome::Timeout => {
                run += 1;
                figures.longest_error_run = figures.longest_error_run.max(run);
                if run > gate.error_limit {
                    figures.errors_counted += 1;
                } else {
                    figures.errors_retried += 1;
                }
                figures.last_error = Some(match outcome {
                    ProbeOutcome::ConnectError { message } => message.clone(),
                    _ => format!("no answer within {}", gate.timeout),
                });
            }
        }
    }
    figures.p95_latency = p95(&mut latencies);
    figures
}

fn probe_description(gate: &HttpGate, target: &str) -> String {
    format!("GET {target}{} expecting {}", gate.path, gate.status)
}

/// Why a pod's figures break the gate's bounds; empty when they do not.
fn broken_bounds(gate: &HttpGate, figures: &PodFigures) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(ratio) = figures.success_ratio() {
        if ratio + 1e-9 < gate.min_success_ratio {
            let mut reason = format!(
                "{} of {} counted probes succeeded ({}, minimum {})",
                figures.succeeded,
                figures.counted(),
                format_percent(ratio * 100.0),
                format_percent(gate.min_success_ratio * 100.0)
            );
            if let Some(status) = figures.last_wrong_status {
                reason.push_str(&format!(
                    "; {} answered with a wrong status (last: {status})",
                    figures.wrong_status
                ));
            }
            if figures.errors_counted > 0 {
                reason.push_str(&format!(
                    "; {} failed to connect beyond {} errors in a row (last: {})",
                    figures.errors_counted,
                    gate.error_limit,
                    figures.last_error.as_deref().unwrap_or("unknown")
                ));
            }
            reasons.push(reason);
        }
    }
    if let (Some(max), Some(p95)) = (gate.max_p95_latency, figures.p95_latency) {
        if p95 > max.get() {
            reasons.push(format!(
                "p95 latency {} over {} answers (maximum {})",
                format_latency(p95),
                figures.answered,
                format_latency(max.get())
            ));
        }
    }
    reasons
}

/// Judges the HTTP gate on every pod the step changed. `pods` must hold every changed pod; a pod
/// with no counted probe makes the verdict Inconclusive unless another pod already failed.
pub fn judge_http(gate: &HttpGate, pods: &[PodSamples]) -> Verdict {
    if pods.is_empty() {
        return Verdict::Inconclusive {
            message: "HTTP gate: no pod was probed".to_string(),
        };
    }
    let mut failures = Vec::new();
    let mut unsure = Vec::new();
    for pod in pods {
        let figures = pod_figures(gate, &pod.outcomes);
        let probe = probe_description(gate, &pod.target);
        if figures.counted() == 0 {
            let detail = match &figures.last_error {
                Some(error) => format!(
                    "{} probes, all connection errors within the retry limit of {} (last: {error})",
                    figures.probes, gate.error_limit
                ),
                None => "no probe ran".to_string(),
            };
            unsure.push(format!(
                "HTTP gate could not judge pod {} ({probe}): {detail}",
                pod.pod
            ));
            continue;
        }
        let reasons = broken_bounds(gate, &figures);
        if !reasons.is_empty() {
            failures.push(GateFailure {
                gate: GateKind::Http,
                pod: Some(pod.pod.clone()),
                probe,
                figures: Some(figures),
                reasons,
            });
        }
    }
    if !failures.is_empty() {
        Verdict::Fail { failures }
    } else if !unsure.is_empty() {
        Verdict::Inconclusive {
            message: unsure.join("\n"),
        }
    } else {
        Verdict::Pass
    }
}

/// While probing: `Some` failure as soon as a pod can no longer pass the ratio even if all of
/// its `planned` probes still to come succeed (a wrong status with the default ratio of 1.0
/// fails at once). Latency is only judged at the end.
pub fn certain_http_failure(
    gate: &HttpGate,
    pod: &PodSamples,
    planned: u32,
) -> Option<GateFailure> {
    let figures = pod_figures(gate, &pod.outcomes);
    let remaining = planned.saturating_sub(figures.probes);
    let best_counted = figures.counted() + remaining;
    if best_counted == 0 {
        return None;
    }
    let best_ratio = f64::from(figures.succeeded + remaining) / f64::from(best_counted);
    if best_ratio + 1e-9 >= gate.min_success_ratio {
        return None;
    }
    let reasons = broken_bounds(gate, &figures);
    let reasons = if reasons.is_empty() {
        vec![format!(
            "{} of {} counted probes failed, so at most {} can succeed (minimum {})",
            figures.counted() - figures.succeeded,
            figures.counted(),
            format_percent(best_ratio * 100.0),
            format_percent(gate.min_success_ratio * 100.0)
        )]
    } else {
        reasons
    };
    Some(GateFailure {
        gate: GateKind::Http,
        pod: Some(pod.pod.clone()),
        probe: probe_description(gate, &pod.target),
        figures: Some(figures),
        reasons,
    })
}

/// The minimum-time-Ready gate for one pod.
#[derive(Debug, Clone, PartialEq)]
pub enum ReadyCheck {
    Pass,
    /// Ready, but not for long enough yet: check again at `until`.
    WaitUntil(Timestamp),
    Fail(GateFailure),
}

/// Has `pod` been Ready for `min` at `now`? `ready_since` is when it last became Ready, `None`
/// when it is not Ready.
pub fn judge_min_ready(
    pod: &str,
    ready_since: Option<Timestamp>,
    min: HumanDuration,
    now: Timestamp,
) -> ReadyCheck {
    let Some(since) = ready_since else {
        return ReadyCheck::Fail(GateFailure {
            gate: GateKind::MinReady,
            pod: Some(pod.to_string()),
            probe: format!("Ready for at least {min}"),
            figures: None,
            reasons: vec!["the pod is not Ready".to_string()],
        });
    };
    let until = since.checked_add(min.get()).unwrap_or(Timestamp::MAX);
    if now >= until {
        ReadyCheck::Pass
    } else {
        ReadyCheck::WaitUntil(until)
    }
}

/// How a gate command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    Exited {
        code: i32,
        output_tail: String,
    },
    /// Killed by a signal (no exit code).
    Killed {
        output_tail: String,
    },
    TimedOut {
        after: HumanDuration,
    },
    /// Could not be started (not found, not executable).
    SpawnFailed {
        message: String,
    },
}

/// Exit 0 passes; any other exit, a kill or a timeout fails; a command that cannot start is
/// Inconclusive (a setup problem, not evidence against the new version).
pub fn judge_command(command_line: &str, outcome: &CommandOutcome) -> Verdict {
    let fail = |reason: String| Verdict::Fail {
        failures: vec![GateFailure {
            gate: GateKind::Command,
            pod: None,
            probe: command_line.to_string(),
            figures: None,
            reasons: vec![reason],
        }],
    };
    let with_tail = |head: String, tail: &str| {
        let tail = tail.trim();
        if tail.is_empty() {
            head
        } else {
            format!("{head}; output ends with: {tail}")
        }
    };
    match outcome {
        CommandOutcome::Exited { code: 0, .. } => Verdict::Pass,
        CommandOutcome::Exited { code, output_tail } => {
            fail(with_tail(format!("exited with {code}"), output_tail))
        }
        CommandOutcome::Killed { output_tail } => {
            fail(with_tail("was killed by a signal".to_string(), output_tail))
        }
        CommandOutcome::TimedOut { after } => fail(format!("did not finish within {after}")),
        CommandOutcome::SpawnFailed { message } => Verdict::Inconclusive {
            message: format!("command gate could not start `{command_line}`: {message}"),
        },
    }
}

/// A 2xx answer passes, any other status fails; no answer is Inconclusive (the executor retries
/// before asking).
pub fn judge_webhook(url: &str, answer: Result<u16, String>) -> Verdict {
    match answer {
        Ok(status) if (200..300).contains(&status) => Verdict::Pass,
        Ok(status) => Verdict::Fail {
            failures: vec![GateFailure {
                gate: GateKind::Webhook,
                pod: None,
                probe: format!("POST {url} expecting 2xx"),
                figures: None,
                reasons: vec![format!("answered {status}")],
            }],
        },
        Err(error) => Verdict::Inconclusive {
            message: format!("webhook gate got no answer from {url}: {error}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(status: u16, ms: u64) -> ProbeOutcome {
        ProbeOutcome::Answered {
            status,
            latency: Duration::from_millis(ms),
        }
    }

    fn refused() -> ProbeOutcome {
        ProbeOutcome::ConnectError {
            message: "connection refused".into(),
        }
    }

    fn samples(pod: &str, outcomes: Vec<ProbeOutcome>) -> PodSamples {
        PodSamples {
            pod: pod.into(),
            target: "10.244.0.7:8080".into(),
            outcomes,
        }
    }

    fn gate(min_ratio: f64, max_p95_ms: Option<u64>) -> HttpGate {
        HttpGate {
            min_success_ratio: min_ratio,
            max_p95_latency: max_p95_ms.map(HumanDuration::from_millis),
            ..HttpGate::default()
        }
    }

    #[test]
    fn p95_nearest_rank() {
        let cases: Vec<(Vec<u64>, Option<u64>)> = vec![
            (vec![], None),
            (vec![7], Some(7)),
            (vec![1, 2], Some(2)),
            ((1..=20).collect(), Some(19)),
            ((1..=100).collect(), Some(95)),
            ((1..=10).rev().collect(), Some(10)),
            (vec![5; 40], Some(5)),
        ];
        for (input, expected) in cases {
            let mut latencies: Vec<Duration> =
                input.iter().map(|m| Duration::from_millis(*m)).collect();
            assert_eq!(
                p95(&mut latencies),
                expected.map(Duration::from_millis),
                "{input:?}"
            );
        }
    }

    #[test]
    fn figures_count_errors_beyond_the_limit_only() {
        let g = gate(1.0, None);
        // (succeeded, wrong status, errors retried, errors counted, longest error run)
        type Tally = (u32, u32, u32, u32, u32);
        let cases: Vec<(Vec<ProbeOutcome>, Tally)> = vec![
            (vec![ok(200, 5); 5], (5, 0, 0, 0, 0)),
            (vec![ok(200, 5), refused(), ok(200, 5)], (2, 0, 1, 0, 1)),
            (
                vec![refused(), refused(), refused(), refused(), ok(200, 5)],
                (1, 0, 4, 0, 4),
            ),
            (vec![refused(); 6], (0, 0, 4, 2, 6)),
            (
                vec![
                    refused(),
                    refused(),
                    ok(200, 1),
                    refused(),
                    refused(),
                    refused(),
                ],
                (1, 0, 5, 0, 3),
            ),
            (vec![ProbeOutcome::Timeout; 5], (0, 0, 4, 1, 5)),
            (vec![ok(500, 5), ok(200, 5)], (1, 1, 0, 0, 0)),
            (vec![ok(301, 5)], (0, 1, 0, 0, 0)),
        ];
        for (outcomes, (succeeded, wrong, retried, counted, run)) in cases {
            let f = pod_figures(&g, &outcomes);
            assert_eq!(
                (
                    f.succeeded,
                    f.wrong_status,
                    f.errors_retried,
                    f.errors_counted,
                    f.longest_error_run
                ),
                (succeeded, wrong, retried, counted, run),
                "{outcomes:?}"
            );
            assert_eq!(f.probes as usize, outcomes.len());
        }
    }

    #[test]
    fn http_verdicts() {
        enum Want {
            Pass,
            Fail(&'static str),
            Unsure(&'static str),
        }
        let cases: Vec<(HttpGate, Vec<ProbeOutcome>, Want)> = vec![
            (gate(1.0, None), vec![ok(200, 5); 10], Want::Pass),
            (gate(1.0, None), vec![ok(200, 5), ok(500, 5), ok(200, 5)], Want::Fail("2 of 3 counted probes succeeded (66.7%, minimum 100%); 1 answered with a wrong status (last: 500)")),
            (gate(0.9, None), [vec![ok(200, 5); 9], vec![ok(503, 5)]].concat(), Want::Pass),
            (gate(0.95, None), [vec![ok(200, 5); 9], vec![ok(503, 5)]].concat(), Want::Fail("9 of 10 counted probes succeeded (90%, minimum 95%)")),
            (gate(1.0, None), [vec![refused(); 3], vec![ok(200, 5); 7]].concat(), Want::Pass),
            (gate(1.0, None), vec![refused(); 10], Want::Fail("6 failed to connect beyond 4 errors in a row (last: connection refused)")),
            (gate(1.0, None), vec![refused(); 4], Want::Unsure("all connection errors within the retry limit of 4")),
            (gate(1.0, None), vec![], Want::Unsure("no probe ran")),
            (gate(1.0, Some(100)), vec![ok(200, 50); 20], Want::Pass),
            (gate(1.0, Some(100)), [vec![ok(200, 50); 18], vec![ok(200, 900); 2]].concat(), Want::Fail("p95 latency 900ms over 20 answers (maximum 100ms)")),
            (gate(1.0, Some(100)), [vec![ok(200, 50); 19], vec![ok(200, 900)]].concat(), Want::Pass),
            (gate(0.0, None), vec![ok(500, 5); 3], Want::Pass),
            (HttpGate { status: "200-399".parse().unwrap_or_default(), ..gate(1.0, None) }, vec![ok(302, 5)], Want::Pass),
        ];
        for (i, (g, outcomes, want)) in cases.into_iter().enumerate() {
            let verdict = judge_http(&g, &[samples("web-2", outcomes)]);
            match (want, &verdict) {
                (Want::Pass, Verdict::Pass) => {}
                (Want::Fail(fragment), Verdict::Fail { failures }) => {
                    assert_eq!(failures.len(), 1, "case {i}");
                    let message = verdict.message();
                    assert!(
                        message.contains(fragment),
                        "case {i}: `{message}` lacks `{fragment}`"
                    );
                    assert!(message.contains("pod web-2"), "case {i}: {message}");
                    assert!(
                        message.contains("GET 10.244.0.7:8080/ expecting 2xx")
                            || message.contains("200-399"),
                        "case {i}: {message}"
                    );
                }
                (Want::Unsure(fragment), Verdict::Inconclusive { message }) => {
                    assert!(
                        message.contains(fragment),
                        "case {i}: `{message}` lacks `{fragment}`"
                    );
                    assert!(message.contains("web-2"), "case {i}: {message}");
                }
                (_, other) => panic!("case {i}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn failure_message_names_pod_probe_and_figures() {
        let verdict = judge_http(
            &gate(1.0, None),
            &[samples("web-4", vec![ok(200, 3), ok(500, 4)])],
        );
        assert_eq!(
            verdict.message(),
            "HTTP gate failed on pod web-4 (GET 10.244.0.7:8080/ expecting 2xx): 1 of 2 counted probes succeeded (50%, minimum 100%); 1 answered with a wrong status (last: 500)"
        );
    }

    #[test]
    fn several_pods_every_failure_is_listed_and_failure_beats_inconclusive() {
        let g = gate(1.0, None);
        let pods = vec![
            samples("web-4", vec![ok(200, 3); 3]),
            samples("web-3", vec![ok(500, 3); 3]),
            samples("web-2", vec![refused(); 2]),
            samples("web-1", vec![ok(404, 3)]),
        ];
        let verdict = judge_http(&g, &pods);
        let Verdict::Fail { failures } = &verdict else {
            panic!("{verdict:?}")
        };
        let failed: Vec<_> = failures.iter().filter_map(|f| f.pod.as_deref()).collect();
        assert_eq!(failed, ["web-3", "web-1"]);
        let only_unsure = judge_http(
            &g,
            &pods[..1]
                .iter()
                .chain(&pods[2..3])
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert!(matches!(only_unsure, Verdict::Inconclusive { .. }));
        assert!(matches!(judge_http(&g, &[]), Verdict::Inconclusive { .. }));
    }

    #[test]
    fn early_failure_detection() {
        // (min ratio, outcomes so far, planned, certain failure?)
        let cases: Vec<(f64, Vec<ProbeOutcome>, u32, bool)> = vec![
            (1.0, vec![ok(500, 1)], 10, true),
            (1.0, vec![ok(200, 1); 5], 10, false),
            (0.8, vec![ok(500, 1), ok(500, 1)], 10, false),
            (0.8, vec![ok(500, 1), ok(500, 1), ok(500, 1)], 10, true),
            (1.0, vec![refused(); 4], 10, false),
            (1.0, vec![refused(); 5], 10, true),
            (0.5, vec![], 10, false),
            (1.0, vec![], 0, false),
        ];
        for (i, (ratio, outcomes, planned, certain)) in cases.into_iter().enumerate() {
            let found =
                certain_http_failure(&gate(ratio, None), &samples("web-1", outcomes), planned);
            assert_eq!(found.is_some(), certain, "case {i}: {found:?}");
            if let Some(failure) = found {
                assert_eq!(failure.pod.as_deref(), Some("web-1"));
                assert!(!failure.reasons.is_empty());
            }
        }
    }

    #[test]
    fn min_ready_gate() {
        let t = |s: i64| Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH);
        let min = HumanDuration::from_secs(10);
        assert_eq!(
            judge_min_ready("web-1", Some(t(100)), min, t(110)),
            ReadyCheck::Pass
        );
        assert_eq!(
            judge_min_ready("web-1", Some(t(100)), min, t(105)),
            ReadyCheck::WaitUntil(t(110))
        );
        let ReadyCheck::Fail(failure) = judge_min_ready("web-1", None, min, t(105)) else {
            panic!("not ready must fail")
        };
        assert_eq!(
            failure.to_string(),
            "minimum-Ready gate failed on pod web-1 (Ready for at least 10s): the pod is not Ready"
        );
    }

    #[test]
    fn command_gate() {
        let cases: Vec<(CommandOutcome, Result<(), &str>)> = vec![
            (
                CommandOutcome::Exited {
                    code: 0,
                    output_tail: "fine".into(),
                },
                Ok(()),
            ),
            (
                CommandOutcome::Exited {
                    code: 3,
                    output_tail: "smoke: /visits returned 500\n".into(),
                },
                Err("exited with 3; output ends with: smoke: /visits returned 500"),
            ),
            (
                CommandOutcome::Exited {
                    code: 1,
                    output_tail: "  ".into(),
                },
                Err("exited with 1)"),
            ),
            (
                CommandOutcome::Killed {
                    output_tail: String::new(),
                },
                Err("killed by a signal"),
            ),
            (
                CommandOutcome::TimedOut {
                    after: HumanDuration::from_secs(60),
                },
                Err("did not finish within 1m"),
            ),
        ];
        for (outcome, want) in cases {
            let verdict = judge_command("./smoke.sh", &outcome);
            match want {
                Ok(()) => assert!(verdict.is_pass(), "{outcome:?}"),
                Err(fragment) => {
                    let message = format!("{})", verdict.message());
                    assert!(matches!(verdict, Verdict::Fail { .. }), "{outcome:?}");
                    assert!(message.contains(fragment), "`{message}` lacks `{fragment}`");
                    assert!(
                        message.starts_with("command gate failed (./smoke.sh)"),
                        "{message}"
                    );
                }
            }
        }
        let spawn = judge_command(
            "./missing.sh",
            &CommandOutcome::SpawnFailed {
                message: "not found".into(),
            },
        );
        assert!(
            matches!(spawn, Verdict::Inconclusive { ref message } if message.contains("./missing.sh"))
        );
    }

    #[test]
    fn webhook_gate() {
        let url = "http://127.0.0.1:9000/check";
        assert!(judge_webhook(url, Ok(204)).is_pass());
        let fail = judge_webhook(url, Ok(409));
        assert_eq!(
            fail.message(),
            "webhook gate failed (POST http://127.0.0.1:9000/check expecting 2xx): answered 409"
        );
        assert!(matches!(
            judge_webhook(url, Err("connection refused".into())),
            Verdict::Inconclusive { .. }
        ));
    }

    #[test]
    fn combining_gates() {
        let fail = judge_webhook("http://127.0.0.1:1/", Ok(500));
        let unsure = Verdict::Inconclusive {
            message: "x".into(),
        };
        assert!(Verdict::all([Verdict::Pass, Verdict::Pass]).is_pass());
        assert!(Verdict::all([]).is_pass());
        assert!(matches!(
            Verdict::all([Verdict::Pass, unsure.clone()]),
            Verdict::Inconclusive { .. }
        ));
        assert!(
            matches!(Verdict::all([unsure, fail.clone(), fail]), Verdict::Fail { ref failures } if failures.len() == 2)
        );
    }
}
