//! Shadow comparison: the pure half of the shadow gate when `rollout` replays requests itself.
//!
//! The user lists requests in a file ([`parse_requests`]); [`super::replay`] sends each one to a
//! stable pod and a shadow pod at the same time and hands every pair of answers to a
//! [`Comparison`], which keeps the counts and the latencies. [`Comparison::verdict`] judges the
//! shadow against stable under a [`CompareSpec`]:
//!
//! - **errors**: a server error (status 500 and up) or no answer at all (connection error,
//!   timeout) is an error. The shadow's error rate may exceed stable's by at most
//!   `maxErrorRateIncrease` (absolute: `0.01` is one percentage point).
//! - **latency**: the shadow's p95 over its answers may be at most `maxP95Ratio` times stable's.
//!   Stable's p95 counts as at least 5 ms: below that a factor measures the scheduling noise of
//!   the machine `rollout` runs on (a 1 ms stable and a 3 ms shadow on a busy runner), not the
//!   app, and would fail good shadows of fast apps.
//! - **status mismatches**: both answered, stable without a server error, and the shadow with
//!   another status (a 4xx is an answer, but a 404 where stable said 200 is a difference).
//!   Stable's own server errors are not held against the shadow: its error rate tells that story.
//! - **body mismatches** (only with `compareBodies`): both answered with the same status and the
//!   bodies differ, line by line, after dropping the lines that match `ignoreLines` (a regular
//!   expression, e.g. `^Date:|"time":`). Only the first 64 KiB of each body is kept and compared.
//! - Status and body mismatches may each be at most `maxMismatchRate` of the pairs compared.
//!
//! No verdict passes or fails before `minSamples` requests per side, of which stable answered at
//! least `minSamples`: without a baseline the shadow cannot be judged
//! ([`CompareVerdict::TooFewSamples`]: when the replay has ended, the shadow is removed and the run
//! ends as timed out, since nothing was judged).

use std::fmt;
use std::time::Duration;

use regex::bytes::Regex;
use serde::{Deserialize, Serialize};

use crate::model::duration::format_latency;

/// Longest request file read, in lines (comments and blank lines included).
pub const MAX_REQUEST_LINES: usize = 10_000;
/// Longest line of a request file; a longer one is almost surely not a request.
pub const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;
/// How much of each answer's body is kept for comparison.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Latencies kept per side for the percentiles; later answers still count, their latency does not.
pub const MAX_KEPT_LATENCIES: usize = 100_000;
/// Differences quoted in the report.
const MAX_EXAMPLES: usize = 5;
/// Longest body line quoted in an example.
const MAX_QUOTED_LINE: usize = 80;
/// The least p95 that stable is taken to have when the factor is applied.
pub const P95_FLOOR: Duration = Duration::from_millis(5);
/// The highest p95 (ms) the shadow may have beside a stable p95 of `stable_ms`.
fn allowed_p95(stable_ms: f64, ratio: f64) -> f64 {
    stable_ms.max(P95_FLOOR.as_secs_f64() * 1000.0) * ratio
}

/// Slack for rates that sit exactly on a limit (2 of 200 against 1 %).
const EPSILON: f64 = 1e-9;
/// Longest method name accepted in a request file.
const MAX_METHOD_LEN: usize = 20;

/// One request to replay: `GET /visits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayRequest {
    /// Upper-case method token, e.g. `GET`.
    pub method: String,
    /// Starts with `/`; may carry a query.
    pub path: String,
}

impl fmt::Display for ReplayRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Why a request file was refused. Every message names the file and says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestsError {
    #[error("{file} line {line}: {problem}")]
    ParseLine {
        file: String,
        line: usize,
        problem: String,
    },
    #[error("{file} has more than {limit} lines; keep the requests to replay under {limit} lines")]
    ReadTooManyLines { file: String, limit: usize },
    #[error("{file} lists no requests; write one request per line, e.g. `GET /` or `/visits`")]
    FindRequests { file: String },
}

/// Reads a request file: one `METHOD /path` per line, or a bare `/path` for `GET`; blank lines
/// and `#` comments (at the start of a line or after a space) are skipped.
pub fn parse_requests(file_label: &str, text: &str) -> Result<Vec<ReplayRequest>, RequestsError> {
    let mut requests = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if line > MAX_REQUEST_LINES {
            return Err(RequestsError::ReadTooManyLines {
                file: file_label.to_string(),
                limit: MAX_REQUEST_LINES,
            });
        }
        let parse_error = |problem: String| RequestsError::ParseLine {
            file: file_label.to_string(),
            line,
            problem,
        };
        if raw.len() > MAX_REQUEST_LINE_BYTES {
            return Err(parse_error(format!(
                "the line is longer than {MAX_REQUEST_LINE_BYTES} bytes; write one `METHOD /path` per line"
            )));
        }
        let words: Vec<&str> = raw
            .split_whitespace()
            .take_while(|w| !w.starts_with('#'))
            .collect();
        if words.is_empty() {
            continue;
        }
        requests.push(parse_request_words(&words).map_err(parse_error)?);
    }
    if requests.is_empty() {
        return Err(RequestsError::FindRequests {
            file: file_label.to_string(),
        });
    }
    Ok(requests)
}

/// One request from the words of a line (comments already dropped); the error says what to
/// write instead.
fn parse_request_words(words: &[&str]) -> Result<ReplayRequest, String> {
    match words {
        [path] => {
            if is_method(path) {
                return Err(format!("`{path}` has no path; write `{path} /path`"));
            }
            check_path(path)?;
            Ok(ReplayRequest {
                method: "GET".to_string(),
                path: path.to_string(),
            })
        }
        [method, path] => {
            check_method(method)?;
            check_path(path)?;
            Ok(ReplayRequest {
                method: method.to_string(),
                path: path.to_string(),
            })
        }
        [method, path, version, ..] if version.starts_with("HTTP/") => Err(format!(
            "drop the protocol version: write `{method} {path}`"
        )),
        _ => Err(format!(
            "expected `METHOD /path`, found {} words; write a space inside a path as %20",
            words.len()
        )),
    }
}

fn is_method(word: &str) -> bool {
    !word.is_empty() && word.len() <= MAX_METHOD_LEN && word.bytes().all(|b| b.is_ascii_uppercase())
}

fn check_method(word: &str) -> Result<(), String> {
    if is_method(word) {
        return Ok(());
    }
    let upper = word.to_ascii_uppercase();
    if is_method(&upper) {
        Err(format!("write the method in capitals: `{upper}`"))
    } else {
        Err(format!(
            "`{word}` is not an HTTP method; write e.g. `GET /path` or just `/path`"
        ))
    }
}

fn check_path(word: &str) -> Result<(), String> {
    if word.contains("://") {
        return Err(format!(
            "`{word}` is a URL; write only its path (e.g. `/visits`): requests go to the stable and shadow pods"
        ));
    }
    if !word.starts_with('/') {
        return Err(format!(
            "`{word}` is not a path; a path starts with `/`: write `/{word}`"
        ));
    }
    if word.chars().any(char::is_control) {
        return Err("the path holds a control character; percent-encode it".to_string());
    }
    Ok(())
}

/// The bounds the shadow is judged by (strategy file `shadow.compare`, camelCase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CompareSpec {
    /// How much higher the shadow's error rate may be than stable's, absolute (`0.01`: one
    /// percentage point).
    pub max_error_rate_increase: f64,
    /// Highest shadow p95 as a multiple of stable's (stable's taken as at least 1 ms).
    pub max_p95_ratio: f64,
    /// Highest share of compared pairs whose status (or body) may differ.
    pub max_mismatch_rate: f64,
    /// Requests per side before a verdict can pass (or fail).
    pub min_samples: u32,
    /// Compare the bodies too (the first 64 KiB of each).
    pub compare_bodies: bool,
    /// Regular expression: body lines that match are left out of the comparison.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignore_lines: Option<String>,
}

impl Default for CompareSpec {
    fn default() -> Self {
        CompareSpec {
            max_error_rate_increase: 0.01,
            max_p95_ratio: 2.0,
            max_mismatch_rate: 0.01,
            min_samples: 20,
            compare_bodies: false,
            ignore_lines: None,
        }
    }
}

/// Why a [`CompareSpec`] was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CompareSpecError {
    #[error("maxErrorRateIncrease {value} is not between 0 and 1; write e.g. 0.01 for one percentage point")]
    CheckErrorRateIncrease { value: f64 },
    #[error(
        "maxP95Ratio {value} is not a positive factor; write e.g. 2 to allow twice stable's p95"
    )]
    CheckP95Ratio { value: f64 },
    #[error(
        "maxMismatchRate {value} is not between 0 and 1; write e.g. 0.01 for 1 % of the requests"
    )]
    CheckMismatchRate { value: f64 },
    #[error("minSamples is 0; a verdict needs at least one request per side (e.g. 20)")]
    CheckMinSamples,
    #[error("ignoreLines `{pattern}` is not a valid regular expression: {message}")]
    CompileIgnoreLines { pattern: String, message: String },
}

impl CompareSpec {
    /// Checks the bounds and compiles the pattern, so a bad spec is refused before any pod is made.
    pub fn validate(&self) -> Result<(), CompareSpecError> {
        self.line_filter().map(|_| ())
    }

    fn line_filter(&self) -> Result<Option<Regex>, CompareSpecError> {
        let rate = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        if !rate(self.max_error_rate_increase) {
            return Err(CompareSpecError::CheckErrorRateIncrease {
                value: self.max_error_rate_increase,
            });
        }
        if !(self.max_p95_ratio.is_finite() && self.max_p95_ratio > 0.0) {
            return Err(CompareSpecError::CheckP95Ratio {
                value: self.max_p95_ratio,
            });
        }
        if !rate(self.max_mismatch_rate) {
            return Err(CompareSpecError::CheckMismatchRate {
                value: self.max_mismatch_rate,
            });
        }
        if self.min_samples == 0 {
            return Err(CompareSpecError::CheckMinSamples);
        }
        self.ignore_lines
            .as_deref()
            .map(|pattern| {
                Regex::new(pattern).map_err(|e| CompareSpecError::CompileIgnoreLines {
                    pattern: pattern.to_string(),
                    message: e.to_string(),
                })
            })
            .transpose()
    }
}

/// Which deployment an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Side {
    Stable,
    Shadow,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Stable => "stable",
            Side::Shadow => "shadow",
        })
    }
}

/// One side's answer to one replayed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// `None`: no answer (connection error or timeout).
    pub status: Option<u16>,
    pub latency: Duration,
    /// The first [`MAX_BODY_BYTES`] of the body (empty when bodies are not compared).
    pub body: Vec<u8>,
    /// The body was longer than what is kept.
    pub body_truncated: bool,
    /// Why there was no answer: `10.244.0.7:8080: connection refused`.
    pub error: Option<String>,
}

impl Sample {
    /// An answer; the body is cut to [`MAX_BODY_BYTES`].
    pub fn answered(status: u16, latency: Duration, mut body: Vec<u8>, truncated: bool) -> Sample {
        let cut = body.len() > MAX_BODY_BYTES;
        body.truncate(MAX_BODY_BYTES);
        Sample {
            status: Some(status),
            latency,
            body,
            body_truncated: truncated || cut,
            error: None,
        }
    }

    /// No answer, and why.
    pub fn no_answer(latency: Duration, error: impl Into<String>) -> Sample {
        Sample {
            status: None,
            latency,
            body: Vec::new(),
            body_truncated: false,
            error: Some(error.into()),
        }
    }

    /// A server error or no answer at all.
    pub fn is_error(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }

    fn describe(&self) -> String {
        match (self.status, &self.error) {
            (Some(status), _) => status.to_string(),
            (None, Some(error)) => format!("no answer ({error})"),
            (None, None) => "no answer".to_string(),
        }
    }
}

/// What one side did so far.
#[derive(Debug, Clone, Default)]
struct Tally {
    requests: u32,
    answered: u32,
    errors: u32,
    latencies: Vec<Duration>,
    last_error: Option<String>,
}

impl Tally {
    fn add(&mut self, sample: &Sample) {
        self.requests += 1;
        if sample.is_error() {
            self.errors += 1;
        }
        if sample.status.is_some() {
            self.answered += 1;
            if self.latencies.len() < MAX_KEPT_LATENCIES {
                self.latencies.push(sample.latency);
            }
        }
        if let Some(error) = &sample.error {
            self.last_error = Some(error.clone());
        }
    }

    fn figures(&self) -> SideFigures {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        // From whole nanoseconds, so that whole milliseconds stay whole in the report.
        let ms = |d: Duration| d.as_nanos() as f64 / 1_000_000.0;
        SideFigures {
            requests: self.requests,
            answered: self.answered,
            errors: self.errors,
            no_answer: self.requests - self.answered,
            error_rate: if self.requests == 0 {
                0.0
            } else {
                f64::from(self.errors) / f64::from(self.requests)
            },
            p50_ms: percentile(&sorted, 50).map(ms),
            p95_ms: percentile(&sorted, 95).map(ms),
            last_error: self.last_error.clone(),
        }
    }
}

/// Nearest-rank percentile of sorted latencies.
fn percentile(sorted: &[Duration], percent: usize) -> Option<Duration> {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// The running comparison of stable and shadow answers, pair by pair.
#[derive(Debug, Clone)]
pub struct Comparison {
    spec: CompareSpec,
    ignore: Option<Regex>,
    stable: Tally,
    shadow: Tally,
    answered_by_both: u32,
    status_mismatches: u32,
    bodies_compared: u32,
    body_mismatches: u32,
    examples: Vec<String>,
}

impl Comparison {
    pub fn new(spec: &CompareSpec) -> Result<Comparison, CompareSpecError> {
        Ok(Comparison {
            ignore: spec.line_filter()?,
            spec: spec.clone(),
            stable: Tally::default(),
            shadow: Tally::default(),
            answered_by_both: 0,
            status_mismatches: 0,
            bodies_compared: 0,
            body_mismatches: 0,
            examples: Vec::new(),
        })
    }

    pub fn spec(&self) -> &CompareSpec {
        &self.spec
    }

    /// Requests sent to each side so far.
    pub fn requests(&self) -> u32 {
        self.stable.requests
    }

    /// Counts stable's and the shadow's answers to the same request.
    pub fn record(&mut self, request: &ReplayRequest, stable: &Sample, shadow: &Sample) {
        self.stable.add(stable);
        self.shadow.add(shadow);
        let mut difference = None;
        if shadow.is_error() && !stable.is_error() {
            difference = Some(format!(
                "stable {}, shadow {}",
                stable.describe(),
                shadow.describe()
            ));
        }
        if let (Some(stable_status), Some(shadow_status)) = (stable.status, shadow.status) {
            self.answered_by_both += 1;
            if stable_status < 500 && shadow_status != stable_status {
                self.status_mismatches += 1;
                difference = Some(format!("stable {stable_status}, shadow {shadow_status}"));
            }
            if self.spec.compare_bodies && stable_status == shadow_status {
                self.bodies_compared += 1;
                if let Some(lines) = first_body_difference(stable, shadow, self.ignore.as_ref()) {
                    self.body_mismatches += 1;
                    difference = Some(format!("both {stable_status}, bodies differ: {lines}"));
                }
            }
        }
        if let Some(difference) = difference {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(format!("{request}: {difference}"));
            }
        }
    }

    /// The figures, the limits and the verdict, for the report and the state record.
    pub fn report(&self) -> CompareReport {
        let stable = self.stable.figures();
        let shadow = self.shadow.figures();
        let (bodies_compared, body_mismatches) = if self.spec.compare_bodies {
            (Some(self.bodies_compared), Some(self.body_mismatches))
        } else {
            (None, None)
        };
        let mut report = CompareReport {
            requests: self.stable.requests,
            stable,
            shadow,
            answered_by_both: self.answered_by_both,
            status_mismatches: self.status_mismatches,
            bodies_compared,
            body_mismatches,
            limits: self.spec.clone(),
            examples: self.examples.clone(),
            verdict: CompareVerdict::Pass,
        };
        report.verdict = judge(&report);
        report
    }

    /// Whether the shadow holds up against stable (see the module doc for the rules).
    pub fn verdict(&self) -> CompareVerdict {
        self.report().verdict
    }
}

/// Where two bodies first differ once ignored lines are dropped, quoted for a person; `None`
/// when they agree. The cut last line of a truncated body is not compared.
fn first_body_difference(
    stable: &Sample,
    shadow: &Sample,
    ignore: Option<&Regex>,
) -> Option<String> {
    let kept = |sample: &Sample| -> Vec<(usize, Vec<u8>)> {
        let mut lines: Vec<&[u8]> = sample.body.split(|b| *b == b'\n').collect();
        if sample.body_truncated {
            lines.pop();
        }
        lines
            .into_iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .enumerate()
            .filter(|(_, l)| !ignore.is_some_and(|re| re.is_match(l)))
            .map(|(i, l)| (i + 1, l.to_vec()))
            .collect()
    };
    let (a, b) = (kept(stable), kept(shadow));
    let quote = |line: Option<&(usize, Vec<u8>)>| match line {
        Some((number, text)) => {
            let text = String::from_utf8_lossy(text);
            let short: String = text.chars().take(MAX_QUOTED_LINE).collect();
            let more = if short.len() < text.len() { "..." } else { "" };
            format!("line {number} `{short}{more}`")
        }
        None => "nothing more".to_string(),
    };
    (0..a.len().max(b.len()))
        .find(|&i| a.get(i).map(|l| &l.1) != b.get(i).map(|l| &l.1))
        .map(|i| format!("stable {}, shadow {}", quote(a.get(i)), quote(b.get(i))))
}

/// One side's figures in a report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SideFigures {
    pub requests: u32,
    /// Answers of any status.
    pub answered: u32,
    /// Server errors plus requests with no answer.
    pub errors: u32,
    /// Connection errors and timeouts.
    pub no_answer: u32,
    /// `errors / requests`, 0..=1.
    pub error_rate: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Everything the comparison found, with the limits it was judged by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompareReport {
    /// Requests per side (every request goes to both).
    pub requests: u32,
    pub stable: SideFigures,
    pub shadow: SideFigures,
    pub answered_by_both: u32,
    pub status_mismatches: u32,
    /// `None` when bodies are not compared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bodies_compared: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_mismatches: Option<u32>,
    pub limits: CompareSpec,
    /// The first few differences: `GET /visits: stable 200, shadow 500`.
    pub examples: Vec<String>,
    pub verdict: CompareVerdict,
}

/// The shadow gate's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum CompareVerdict {
    Pass,
    /// Each broken bound, with the shadow's figure, stable's and the limit.
    Fail {
        reasons: Vec<String>,
    },
    /// Not enough to judge yet (or stable gave no baseline): inconclusive.
    TooFewSamples {
        reason: String,
    },
}

impl CompareVerdict {
    pub fn is_pass(&self) -> bool {
        matches!(self, CompareVerdict::Pass)
    }
}

impl fmt::Display for CompareVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompareVerdict::Pass => f.write_str("pass"),
            CompareVerdict::Fail { reasons } => write!(f, "fail: {}", reasons.join("; ")),
            CompareVerdict::TooFewSamples { reason } => write!(f, "too few samples: {reason}"),
        }
    }
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

fn latency_ms(ms: f64) -> String {
    format_latency(Duration::from_secs_f64(ms.max(0.0) / 1000.0))
}

/// The verdict for a report's figures under its limits.
pub fn judge(report: &CompareReport) -> CompareVerdict {
    let limits = &report.limits;
    if report.requests < limits.min_samples {
        return CompareVerdict::TooFewSamples {
            reason: format!(
                "{} of {} requests per side so far",
                report.requests, limits.min_samples
            ),
        };
    }
    if report.stable.answered < limits.min_samples {
        let last = report
            .stable
            .last_error
            .as_deref()
            .map_or_else(String::new, |e| format!(" (last: {e})"));
        return CompareVerdict::TooFewSamples {
            reason: format!(
                "stable answered {} of {} requests, fewer than the {} needed to compare against{last}",
                report.stable.answered, report.requests, limits.min_samples
            ),
        };
    }
    let mut reasons = Vec::new();
    let (stable, shadow) = (&report.stable, &report.shadow);
    if shadow.error_rate - stable.error_rate > limits.max_error_rate_increase + EPSILON {
        reasons.push(format!(
            "error rate {} vs stable {} (limit +{:.1} pts)",
            percent(shadow.error_rate),
            percent(stable.error_rate),
            limits.max_error_rate_increase * 100.0
        ));
    }
    if let (Some(shadow_p95), Some(stable_p95)) = (shadow.p95_ms, stable.p95_ms) {
        let allowed = allowed_p95(stable_p95, limits.max_p95_ratio);
        if shadow_p95 > allowed + EPSILON {
            reasons.push(format!(
                "p95 latency {} vs stable {} (limit x{:.1} = {})",
                latency_ms(shadow_p95),
                latency_ms(stable_p95),
                limits.max_p95_ratio,
                latency_ms(allowed)
            ));
        }
    }
    let mismatch = |what: &str, count: u32, of: u32| {
        let rate = f64::from(count) / f64::from(of.max(1));
        (rate > limits.max_mismatch_rate + EPSILON).then(|| {
            format!(
                "{what} differs on {count} of {of} requests ({}, limit {})",
                percent(rate),
                percent(limits.max_mismatch_rate)
            )
        })
    };
    reasons.extend(mismatch(
        "status",
        report.status_mismatches,
        report.answered_by_both,
    ));
    if let (Some(compared), Some(mismatches)) = (report.bodies_compared, report.body_mismatches) {
        reasons.extend(mismatch("body", mismatches, compared));
    }
    if reasons.is_empty() {
        CompareVerdict::Pass
    } else {
        CompareVerdict::Fail { reasons }
    }
}

/// A few lines for a person: the figures side by side with their limits, the verdict, the first
/// differences.
pub fn render_report(report: &CompareReport) -> String {
    let limits = &report.limits;
    let (stable, shadow) = (&report.stable, &report.shadow);
    let p95 = |figures: &SideFigures| figures.p95_ms.map_or_else(|| "n/a".to_string(), latency_ms);
    let bodies = match (report.bodies_compared, report.body_mismatches) {
        (Some(compared), Some(mismatches)) => {
            let ignoring = limits
                .ignore_lines
                .as_deref()
                .map_or_else(String::new, |p| format!(", ignoring lines matching `{p}`"));
            format!("body mismatches {mismatches} of {compared}{ignoring}")
        }
        _ => "bodies not compared".to_string(),
    };
    let p95_limit = stable.p95_ms.map_or_else(String::new, |ms| {
        format!(" = {}", latency_ms(allowed_p95(ms, limits.max_p95_ratio)))
    });
    let mut lines = vec![
        format!(
            "shadow vs stable: {} requests each; errors {} vs {} (limit +{:.1} pts); p95 {} vs {} (limit x{:.1}{p95_limit})",
            report.requests,
            percent(shadow.error_rate),
            percent(stable.error_rate),
            limits.max_error_rate_increase * 100.0,
            p95(shadow),
            p95(stable),
            limits.max_p95_ratio,
        ),
        format!(
            "status mismatches {} of {} (limit {}); {bodies}",
            report.status_mismatches,
            report.answered_by_both,
            percent(limits.max_mismatch_rate)
        ),
    ];
    for (side, figures) in [(Side::Shadow, shadow), (Side::Stable, stable)] {
        if figures.no_answer > 0 {
            let last = figures
                .last_error
                .as_deref()
                .map_or_else(String::new, |e| format!(" (last: {e})"));
            lines.push(format!(
                "{side}: no answer to {} of {} requests{last}",
                figures.no_answer, figures.requests
            ));
        }
    }
    lines.push(format!("verdict: {}", report.verdict));
    if !report.examples.is_empty() {
        lines.push(format!("first differences: {}", report.examples.join("; ")));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> ReplayRequest {
        ReplayRequest {
            method: "GET".to_string(),
            path: path.to_string(),
        }
    }

    fn ok(status: u16, ms: u64) -> Sample {
        Sample::answered(status, Duration::from_millis(ms), Vec::new(), false)
    }

    fn body(text: &str) -> Sample {
        Sample::answered(
            200,
            Duration::from_millis(1),
            text.as_bytes().to_vec(),
            false,
        )
    }

    fn refused() -> Sample {
        Sample::no_answer(Duration::from_millis(1), "127.0.0.1:9: connection refused")
    }

    fn spec() -> CompareSpec {
        CompareSpec::default()
    }

    /// `n` pairs made by `pair(i)`.
    fn compare(spec: &CompareSpec, n: u32, pair: impl Fn(u32) -> (Sample, Sample)) -> Comparison {
        let mut comparison = Comparison::new(spec).unwrap_or_else(|e| panic!("spec: {e}"));
        for i in 0..n {
            let (stable, shadow) = pair(i);
            comparison.record(&get("/"), &stable, &shadow);
        }
        comparison
    }

    fn reasons(verdict: &CompareVerdict) -> Vec<String> {
        match verdict {
            CompareVerdict::Fail { reasons } => reasons.clone(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn request_files_parse() {
        let text = "# smoke requests\n\n/\nGET /visits?limit=5   # the list\nHEAD /healthz\n  OPTIONS  /  \nDELETE /x\n";
        let requests = parse_requests("requests.txt", text).unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<String> = requests.iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "GET /",
                "GET /visits?limit=5",
                "HEAD /healthz",
                "OPTIONS /",
                "DELETE /x"
            ]
        );
    }

    #[test]
    fn request_file_errors_name_the_line_and_what_to_write() {
        let cases = [
            ("/\nget /x\n", 2, "write the method in capitals: `GET`"),
            ("GET\n", 1, "`GET` has no path; write `GET /path`"),
            ("visits\n", 1, "write `/visits`"),
            ("# c\n\nGET visits\n", 3, "write `/visits`"),
            ("GET http://10.0.0.1/x\n", 1, "write only its path"),
            (
                "GET /x HTTP/1.1\n",
                1,
                "drop the protocol version: write `GET /x`",
            ),
            ("GET /a b\n", 1, "found 3 words"),
            ("G3T /x\n", 1, "`G3T` is not an HTTP method"),
            ("/ok\n/ok\nPOST /a\x07\n", 3, "control character"),
        ];
        for (text, line, wanted) in cases {
            match parse_requests("reqs.txt", text) {
                Err(e @ RequestsError::ParseLine { line: got, .. }) => {
                    assert_eq!(got, line, "{text:?}: {e}");
                    let message = e.to_string();
                    assert!(
                        message.starts_with(&format!("reqs.txt line {line}: ")),
                        "{message}"
                    );
                    assert!(message.contains(wanted), "{text:?}: {message}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn request_files_need_requests_and_stay_bounded() {
        for text in ["", "\n\n", "# only a comment\n   # another\n"] {
            assert_eq!(
                parse_requests("r.txt", text),
                Err(RequestsError::FindRequests {
                    file: "r.txt".to_string()
                })
            );
        }
        let at_limit = "/\n".repeat(MAX_REQUEST_LINES);
        assert_eq!(
            parse_requests("r.txt", &at_limit).map(|r| r.len()),
            Ok(MAX_REQUEST_LINES)
        );
        let over = "/\n".repeat(MAX_REQUEST_LINES + 1);
        assert!(matches!(
            parse_requests("r.txt", &over),
            Err(RequestsError::ReadTooManyLines { .. })
        ));
        let long = format!("/{}", "a".repeat(MAX_REQUEST_LINE_BYTES));
        assert!(matches!(
            parse_requests("r.txt", &long),
            Err(RequestsError::ParseLine { line: 1, .. })
        ));
    }

    #[test]
    fn specs_are_checked() {
        let with = |f: fn(&mut CompareSpec)| {
            let mut s = spec();
            f(&mut s);
            s.validate()
        };
        assert_eq!(spec().validate(), Ok(()));
        assert!(matches!(
            with(|s| s.max_error_rate_increase = -0.1),
            Err(CompareSpecError::CheckErrorRateIncrease { .. })
        ));
        assert!(matches!(
            with(|s| s.max_error_rate_increase = f64::NAN),
            Err(CompareSpecError::CheckErrorRateIncrease { .. })
        ));
        assert!(matches!(
            with(|s| s.max_p95_ratio = 0.0),
            Err(CompareSpecError::CheckP95Ratio { .. })
        ));
        assert!(matches!(
            with(|s| s.max_p95_ratio = f64::INFINITY),
            Err(CompareSpecError::CheckP95Ratio { .. })
        ));
        assert!(matches!(
            with(|s| s.max_mismatch_rate = 1.5),
            Err(CompareSpecError::CheckMismatchRate { .. })
        ));
        assert_eq!(
            with(|s| s.min_samples = 0),
            Err(CompareSpecError::CheckMinSamples)
        );
        assert!(matches!(
            with(|s| s.ignore_lines = Some("(unclosed".to_string())),
            Err(CompareSpecError::CompileIgnoreLines { .. })
        ));
        assert_eq!(
            with(|s| s.ignore_lines = Some("^Date:".to_string())),
            Ok(())
        );
    }

    #[test]
    fn spec_reads_from_camel_case_with_defaults() {
        let spec: CompareSpec =
            serde_yaml_ng::from_str("maxP95Ratio: 3\ncompareBodies: true\nignoreLines: '^Date:'\n")
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            spec,
            CompareSpec {
                max_p95_ratio: 3.0,
                compare_bodies: true,
                ignore_lines: Some("^Date:".to_string()),
                ..CompareSpec::default()
            }
        );
        assert!(serde_yaml_ng::from_str::<CompareSpec>("maxP95: 3\n").is_err());
    }

    #[test]
    fn error_rate_tolerance_edges() {
        // 200 pairs; stable fails on `stable_errors` of them, the shadow on `shadow_errors`.
        let cases = [
            (0, 0, 0.01, true),
            (0, 2, 0.01, true),  // +1.0 pts: on the limit
            (0, 3, 0.01, false), // +1.5 pts
            (10, 12, 0.01, true),
            (10, 13, 0.01, false),
            (10, 0, 0.0, true), // better than stable
            (0, 1, 0.0, false), // no tolerance at all
            (0, 200, 1.0, true),
        ];
        for (stable_errors, shadow_errors, limit, pass) in cases {
            let spec = CompareSpec {
                max_error_rate_increase: limit,
                max_mismatch_rate: 1.0,
                ..spec()
            };
            let comparison = compare(&spec, 200, |i| {
                let stable = if i < stable_errors {
                    ok(503, 5)
                } else {
                    ok(200, 5)
                };
                let shadow = if i < shadow_errors {
                    ok(500, 5)
                } else {
                    ok(200, 5)
                };
                (stable, shadow)
            });
            let verdict = comparison.verdict();
            assert_eq!(
                verdict.is_pass(),
                pass,
                "{stable_errors} vs {shadow_errors} (limit {limit}): {verdict}"
            );
            if !pass {
                assert!(reasons(&verdict)[0].starts_with("error rate "), "{verdict}");
            }
        }
        let verdict = compare(&spec(), 200, |i| {
            (ok(200, 5), if i % 2 == 0 { ok(500, 5) } else { ok(200, 5) })
        })
        .verdict();
        assert_eq!(
            reasons(&verdict)[0],
            "error rate 50.0% vs stable 0.0% (limit +1.0 pts)"
        );
    }

    #[test]
    fn connection_errors_count_as_errors() {
        let comparison = compare(&spec(), 40, |i| {
            (ok(200, 5), if i % 4 == 0 { refused() } else { ok(200, 5) })
        });
        let report = comparison.report();
        assert_eq!(report.shadow.errors, 10);
        assert_eq!(report.shadow.no_answer, 10);
        assert_eq!(report.shadow.answered, 30);
        assert_eq!(report.answered_by_both, 30);
        assert_eq!(report.status_mismatches, 0);
        assert_eq!(
            report.shadow.last_error.as_deref(),
            Some("127.0.0.1:9: connection refused")
        );
        assert_eq!(
            reasons(&report.verdict),
            ["error rate 25.0% vs stable 0.0% (limit +1.0 pts)"]
        );
        assert_eq!(
            report.examples[0],
            "GET /: stable 200, shadow no answer (127.0.0.1:9: connection refused)"
        );
    }

    #[test]
    fn p95_factor_edges() {
        // (stable ms, shadow ms, ratio, pass): every answer of a side takes the same time.
        let cases = [
            (10, 20, 2.0, true),
            (10, 21, 2.0, false),
            (10, 10, 1.0, true),
            (10, 5, 0.5, true),
            (10, 6, 0.5, false),
            // a stable faster than 5 ms counts as 5 ms: the factor judges the app, not the
            // machine's scheduling noise
            (0, 10, 2.0, true),
            (0, 11, 2.0, false),
            (0, 0, 2.0, true),
            (1, 3, 2.0, true),
            (1, 9, 2.0, true),
            (4, 11, 2.0, false),
            (6, 12, 2.0, true),
            (6, 13, 2.0, false),
        ];
        for (stable_ms, shadow_ms, ratio, pass) in cases {
            let spec = CompareSpec {
                max_p95_ratio: ratio,
                ..spec()
            };
            let verdict =
                compare(&spec, 40, |_| (ok(200, stable_ms), ok(200, shadow_ms))).verdict();
            assert_eq!(
                verdict.is_pass(),
                pass,
                "{stable_ms}ms vs {shadow_ms}ms (x{ratio}): {verdict}"
            );
        }
        let verdict = compare(&spec(), 40, |_| (ok(200, 0), ok(200, 30))).verdict();
        assert_eq!(
            reasons(&verdict),
            ["p95 latency 30ms vs stable 0ms (limit x2.0 = 10ms)"]
        );
    }

    #[test]
    fn p95_is_the_nearest_rank_so_a_few_slow_answers_do_not_count() {
        // 100 pairs, the shadow slow on 5 of them (p95 is the 95th of 100), then on 6.
        for (slow, pass) in [(5, true), (6, false)] {
            let verdict = compare(&spec(), 100, |i| {
                (ok(200, 10), ok(200, if i < slow { 500 } else { 10 }))
            })
            .verdict();
            assert_eq!(verdict.is_pass(), pass, "{slow} slow: {verdict}");
        }
        let report = compare(&spec(), 100, |i| (ok(200, u64::from(i) + 1), ok(200, 1))).report();
        assert_eq!(report.stable.p50_ms, Some(50.0));
        assert_eq!(report.stable.p95_ms, Some(95.0));
    }

    /// Makes the stable and shadow answers of pair `i`.
    type MakePair = fn(u32) -> (Sample, Sample);

    #[test]
    fn too_few_samples() {
        let cases: [(u32, u32, MakePair, &str); 4] = [
            (20, 19, |_| (ok(200, 1), ok(200, 1)), "19 of 20 requests per side so far"),
            (20, 0, |_| (ok(200, 1), ok(200, 1)), "0 of 20 requests per side so far"),
            // a failing shadow is not failed before the minimum either
            (20, 10, |_| (ok(200, 1), ok(500, 1)), "10 of 20 requests per side so far"),
            // stable gave no baseline: the shadow cannot be judged, however it did
            (
                20,
                30,
                |i| (if i < 15 { refused() } else { ok(200, 1) }, ok(500, 1)),
                "stable answered 15 of 30 requests, fewer than the 20 needed to compare against (last: 127.0.0.1:9: connection refused)",
            ),
        ];
        for (min, n, pair, wanted) in cases {
            let spec = CompareSpec {
                min_samples: min,
                ..spec()
            };
            assert_eq!(
                compare(&spec, n, pair).verdict(),
                CompareVerdict::TooFewSamples {
                    reason: wanted.to_string()
                }
            );
        }
        let spec = CompareSpec {
            min_samples: 20,
            ..spec()
        };
        assert!(compare(&spec, 20, |_| (ok(200, 1), ok(200, 1)))
            .verdict()
            .is_pass());
    }

    #[test]
    fn status_mismatches() {
        // (stable, shadow) answers on 1 pair in `every`; the rest agree on 200. 200 pairs.
        let cases = [
            // 404 where stable said 200: an answer, not an error, but a difference
            (ok(200, 1), ok(404, 1), 100, 2, true),
            (ok(200, 1), ok(404, 1), 50, 4, false),
            // stable's own server errors are not held against the shadow
            (ok(500, 1), ok(200, 1), 2, 0, true),
            (ok(404, 1), ok(404, 1), 1, 0, true),
            // a connection error is an error, not a mismatch
            (ok(200, 1), refused(), 100, 0, true),
        ];
        for (stable, shadow, every, mismatches, pass) in cases {
            let comparison = compare(&spec(), 200, |i| {
                if i % every == 0 {
                    (stable.clone(), shadow.clone())
                } else {
                    (ok(200, 1), ok(200, 1))
                }
            });
            let report = comparison.report();
            assert_eq!(
                report.status_mismatches, mismatches,
                "{stable:?} {shadow:?}"
            );
            assert_eq!(report.verdict.is_pass(), pass, "{}", report.verdict);
        }
        let verdict = compare(&spec(), 200, |i| {
            (
                ok(200, 1),
                if i % 50 == 0 { ok(404, 1) } else { ok(200, 1) },
            )
        })
        .verdict();
        assert_eq!(
            reasons(&verdict),
            ["status differs on 4 of 200 requests (2.0%, limit 1.0%)"]
        );
    }

    #[test]
    fn bodies_compare_without_the_ignored_lines() {
        let stable = "<h1>Time</h1>\nDate: 12:00:01\r\nvisits: 3\n";
        let cases = [
            // (shadow body, ignore pattern, differs)
            (stable, None, false),
            ("<h1>Time</h1>\nDate: 12:00:02\r\nvisits: 3\n", None, true),
            (
                "<h1>Time</h1>\nDate: 12:00:02\r\nvisits: 3\n",
                Some("^Date:"),
                false,
            ),
            (
                "<h1>Time</h1>\nDate: 12:00:02\nvisits: 3\n",
                Some("^Date:"),
                false,
            ),
            (
                "<h1>Time</h1>\nDate: 12:00:02\nvisits: 4\n",
                Some("^Date:"),
                true,
            ),
            ("<h1>Time</h1>\nvisits: 3\n", Some("^Date:"), false),
            (
                "<h1>Time</h1>\nDate: x\nvisits: 3\nextra\n",
                Some("^Date:"),
                true,
            ),
            (
                "<h1>Time</h1>\nDate: 1\n\"time\": 5\nvisits: 3\n",
                Some(r#"^Date:|"time":"#),
                false,
            ),
        ];
        for (shadow, ignore, differs) in cases {
            let spec = CompareSpec {
                compare_bodies: true,
                ignore_lines: ignore.map(str::to_string),
                ..spec()
            };
            let mut comparison = Comparison::new(&spec).unwrap_or_else(|e| panic!("{e}"));
            comparison.record(&get("/"), &body(stable), &body(shadow));
            let report = comparison.report();
            assert_eq!(report.bodies_compared, Some(1));
            assert_eq!(
                report.body_mismatches,
                Some(u32::from(differs)),
                "{shadow:?} ignoring {ignore:?}"
            );
        }
    }

    #[test]
    fn body_mismatches_are_judged_and_quoted() {
        let spec = CompareSpec {
            compare_bodies: true,
            ignore_lines: Some("^Date:".to_string()),
            ..spec()
        };
        let comparison = compare(&spec, 40, |i| {
            let shadow = if i % 4 == 0 {
                "Date: 2\nvisits: 9\n"
            } else {
                "Date: 3\nvisits: 1\n"
            };
            (body("Date: 1\nvisits: 1\n"), body(shadow))
        });
        let report = comparison.report();
        assert_eq!(report.body_mismatches, Some(10));
        assert_eq!(
            reasons(&report.verdict),
            ["body differs on 10 of 40 requests (25.0%, limit 1.0%)"]
        );
        assert_eq!(
            report.examples[0],
            "GET /: both 200, bodies differ: stable line 2 `visits: 1`, shadow line 2 `visits: 9`"
        );
        assert_eq!(report.examples.len(), MAX_EXAMPLES);
        // Bodies of different statuses are not compared: the status already differs.
        let report = compare(&spec, 1, |_| {
            (
                body("a"),
                Sample::answered(404, Duration::ZERO, b"b".to_vec(), false),
            )
        })
        .report();
        assert_eq!(
            (report.bodies_compared, report.body_mismatches),
            (Some(0), Some(0))
        );
        // Without compareBodies, bodies are neither compared nor reported.
        let report = compare(&CompareSpec::default(), 1, |_| (body("a"), body("b"))).report();
        assert_eq!(
            (report.bodies_compared, report.body_mismatches),
            (None, None)
        );
    }

    #[test]
    fn bodies_are_kept_bounded_and_the_cut_line_is_not_compared() {
        let long = |last: u8| {
            let mut text = vec![b'x'; MAX_BODY_BYTES - 10];
            text.extend_from_slice(b"\nend ");
            text.extend(std::iter::repeat_n(last, 100));
            text
        };
        let (a, b) = (
            Sample::answered(200, Duration::ZERO, long(b'a'), false),
            Sample::answered(200, Duration::ZERO, long(b'b'), false),
        );
        assert_eq!(a.body.len(), MAX_BODY_BYTES);
        assert!(a.body_truncated);
        assert_eq!(first_body_difference(&a, &b, None), None);
        let short = Sample::answered(200, Duration::ZERO, b"x\ny".to_vec(), false);
        assert!(first_body_difference(&a, &short, None).is_some());
    }

    #[test]
    fn latencies_are_kept_up_to_the_cap() {
        let mut tally = Tally::default();
        for _ in 0..MAX_KEPT_LATENCIES + 10 {
            tally.add(&ok(200, 1));
        }
        assert_eq!(tally.latencies.len(), MAX_KEPT_LATENCIES);
        assert_eq!(tally.figures().answered as usize, MAX_KEPT_LATENCIES + 10);
    }

    #[test]
    fn reports_render_for_a_person() {
        let spec = CompareSpec {
            compare_bodies: true,
            ignore_lines: Some("^Date:".to_string()),
            ..spec()
        };
        let passing = compare(&spec, 200, |_| (body("Date: 1\nok"), body("Date: 2\nok")));
        assert_eq!(
            render_report(&passing.report()),
            "shadow vs stable: 200 requests each; errors 0.0% vs 0.0% (limit +1.0 pts); p95 1ms vs 1ms (limit x2.0 = 10ms)\n\
             status mismatches 0 of 200 (limit 1.0%); body mismatches 0 of 200, ignoring lines matching `^Date:`\n\
             verdict: pass"
        );
        let failing = compare(&CompareSpec::default(), 20, |i| {
            (
                ok(200, 10),
                if i % 2 == 0 { refused() } else { ok(500, 25) },
            )
        });
        assert_eq!(
            render_report(&failing.report()),
            "shadow vs stable: 20 requests each; errors 100.0% vs 0.0% (limit +1.0 pts); p95 25ms vs 10ms (limit x2.0 = 20ms)\n\
             status mismatches 10 of 10 (limit 1.0%); bodies not compared\n\
             shadow: no answer to 10 of 20 requests (last: 127.0.0.1:9: connection refused)\n\
             verdict: fail: error rate 100.0% vs stable 0.0% (limit +1.0 pts); p95 latency 25ms vs stable 10ms (limit x2.0 = 20ms); status differs on 10 of 10 requests (100.0%, limit 1.0%)\n\
             first differences: GET /: stable 200, shadow no answer (127.0.0.1:9: connection refused); GET /: stable 200, shadow 500; GET /: stable 200, shadow no answer (127.0.0.1:9: connection refused); GET /: stable 200, shadow 500; GET /: stable 200, shadow no answer (127.0.0.1:9: connection refused)"
        );
    }

    #[test]
    fn reports_serialize_in_camel_case() {
        let report = compare(&spec(), 1, |_| (ok(200, 1), ok(200, 1))).report();
        let json = serde_json::to_value(&report).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json["answeredByBoth"], 1);
        assert_eq!(json["stable"]["errorRate"], 0.0);
        assert_eq!(json["shadow"]["p95Ms"], 1.0);
        assert_eq!(json["limits"]["maxP95Ratio"], 2.0);
        assert_eq!(json["verdict"]["result"], "tooFewSamples");
        let back: CompareReport = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, report);
    }
}
