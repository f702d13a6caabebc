//! Metric gates: PromQL queries sent to the Prometheus the user named (`--prometheus-url`), and
//! the pure judging of the answers. An answer with no samples, or only NaN ones, is "no data":
//! inconclusive, never a pass (the step runs its gates again until its deadline). A query
//! Prometheus refuses (a syntax error) fails the gate with Prometheus's own message; a
//! Prometheus that does not answer leaves the gate undecided.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use super::verdict::{GateFailure, GateKind, Verdict};
use crate::model::metric::{MetricGate, Placeholders};

/// Longest wait for one answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a query got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// Prometheus answered and refused the query (`bad_data`: a syntax error, say).
    #[error("Prometheus at {url} refused the query `{query}`: {message}")]
    Refused {
        url: String,
        query: String,
        message: String,
    },
    /// No answer, or one that is not Prometheus's API.
    #[error("could not query Prometheus at {url}: {message}")]
    Unreachable { url: String, message: String },
}

/// One series of an answer: its labels, in `{a="b"}` form, and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: String,
    pub value: f64,
}

#[derive(Deserialize)]
struct ApiAnswer {
    status: String,
    #[serde(default)]
    data: Option<ApiData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiData {
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct ApiSeries {
    #[serde(default)]
    metric: std::collections::BTreeMap<String, String>,
    value: (serde_json::Value, String),
}

/// Reads an answer of `/api/v1/query` (HTTP status `status`, body `body`): the samples, or why
/// there are none. Pure.
pub fn parse_answer(
    url: &str,
    query: &str,
    status: u16,
    body: &str,
) -> Result<Vec<Sample>, QueryError> {
    let unreachable = |message: String| QueryError::Unreachable {
        url: url.to_string(),
        message,
    };
    let answer: ApiAnswer = serde_json::from_str(body).map_err(|e| {
        let start: String = body.chars().take(200).collect();
        unreachable(format!(
            "HTTP {status} with a body that is not Prometheus's API answer ({e}): {start}"
        ))
    })?;
    if answer.status != "success" {
        let message = answer
            .error
            .unwrap_or_else(|| format!("HTTP {status}, no error message"));
        // bad_data (400) and execution errors (422) are the query's; anything else is the
        // server's (timeouts, unavailable) and may pass.
        return match answer.error_type.as_deref() {
            Some("bad_data" | "execution") => Err(QueryError::Refused {
                url: url.to_string(),
                query: query.to_string(),
                message,
            }),
            other => Err(unreachable(format!(
                "{} ({message})",
                other.unwrap_or("error")
            ))),
        };
    }
    let data = answer
        .data
        .ok_or_else(|| unreachable("a success answer without data".into()))?;
    let value = |v: &str| v.parse::<f64>().unwrap_or(f64::NAN);
    match data.result_type.as_str() {
        "vector" => {
            let series: Vec<ApiSeries> = serde_json::from_value(data.result)
                .map_err(|e| unreachable(format!("a vector answer that does not read: {e}")))?;
            Ok(series
                .into_iter()
                .map(|s| Sample {
                    labels: format!(
                        "{{{}}}",
                        s.metric
                            .iter()
                            .map(|(k, v)| format!("{k}=\"{v}\""))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    value: value(&s.value.1),
                })
                .collect())
        }
        "scalar" => {
            let (_, v): (serde_json::Value, String) = serde_json::from_value(data.result)
                .map_err(|e| unreachable(format!("a scalar answer that does not read: {e}")))?;
            Ok(vec![Sample {
                labels: String::new(),
                value: value(&v),
            }])
        }
        other => Err(QueryError::Refused {
            url: url.to_string(),
            query: query.to_string(),
            message: format!(
                "the answer is a {other}, not an instant vector or a scalar (a range selector needs a function around it, e.g. rate(...[1m]))"
            ),
        }),
    }
}

/// The samples that carry a number (NaN is what a ratio of no requests gives: no data).
fn with_data(samples: &[Sample]) -> Vec<&Sample> {
    samples.iter().filter(|s| !s.value.is_nan()).collect()
}

/// Judges one metric gate from its answers: `new` for the new revision, `stable` for the same
/// query on stable (relative conditions only). Pure.
pub fn judge(
    gate: &MetricGate,
    new_query: &str,
    new: &Result<Vec<Sample>, QueryError>,
    stable: Option<&Result<Vec<Sample>, QueryError>>,
) -> Verdict {
    let new = match new {
        Ok(samples) => samples,
        Err(e) => return query_error(gate, e),
    };
    let new = with_data(new);
    if new.is_empty() {
        return Verdict::Inconclusive {
            message: format!("metric gate `{gate}`: no data for the new revision yet (query `{new_query}` returned no samples)"),
        };
    }
    let stable_value = match (gate.bound.is_relative(), stable) {
        (false, _) => 0.0,
        (true, None) => {
            return Verdict::Inconclusive {
                message: format!(
                    "metric gate `{gate}`: no stable pods to compare with (every pod runs the new revision)"
                ),
            }
        }
        (true, Some(Err(e))) => return query_error(gate, e),
        (true, Some(Ok(samples))) => match with_data(samples).as_slice() {
            [] => {
                return Verdict::Inconclusive {
                    message: format!("metric gate `{gate}`: no data for the stable revision yet"),
                }
            }
            [one] => one.value,
            several => {
                return Verdict::Inconclusive {
                    message: format!(
                        "metric gate `{gate}`: the stable revision gives {} series, so there is no one value to compare with; aggregate the query (sum, max, histogram_quantile over sum by (le))",
                        several.len()
                    ),
                }
            }
        },
    };
    let bound = gate.bound.value(stable_value);
    let broken: Vec<String> = new
        .iter()
        .filter(|s| !gate.op.holds(s.value, bound))
        .map(|s| {
            let relative = if gate.bound.is_relative() {
                format!(" (stable: {})", figure(stable_value))
            } else {
                String::new()
            };
            format!(
                "{}{} is {}, bound {} {}{relative}",
                if s.labels.is_empty() || s.labels == "{}" {
                    "the value"
                } else {
                    "series "
                },
                if s.labels == "{}" { "" } else { &s.labels },
                figure(s.value),
                gate.op,
                figure(bound)
            )
        })
        .collect();
    if broken.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail {
            failures: vec![GateFailure {
                gate: GateKind::Metric,
                pod: None,
                probe: new_query.to_string(),
                figures: None,
                reasons: broken,
            }],
        }
    }
}

fn figure(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v}")
    } else {
        format!("{v:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn query_error(gate: &MetricGate, e: &QueryError) -> Verdict {
    match e {
        QueryError::Refused { .. } => Verdict::Fail {
            failures: vec![GateFailure {
                gate: GateKind::Metric,
                pod: None,
                probe: gate.query.clone(),
                figures: None,
                reasons: vec![e.to_string()],
            }],
        },
        QueryError::Unreachable { .. } => Verdict::Inconclusive {
            message: format!("metric gate `{gate}`: {e}"),
        },
    }
}

/// The Prometheus a run queries.
#[derive(Debug, Clone)]
pub struct Prometheus {
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    pub fn new(url: &str) -> Result<Self, QueryError> {
        let http = reqwest::Client::builder()
            .timeout(QUERY_TIMEOUT)
            .build()
            .map_err(|e| QueryError::Unreachable {
                url: url.to_string(),
                message: format!("no HTTP client: {e}"),
            })?;
        Ok(Prometheus {
            url: url.trim_end_matches('/').to_string(),
            http,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// One instant query, now.
    pub async fn query(&self, query: &str) -> Result<Vec<Sample>, QueryError> {
        self.query_at(query, None).await
    }

    /// One instant query, evaluated at `at` (now when `None`).
    pub async fn query_at(
        &self,
        query: &str,
        at: Option<Timestamp>,
    ) -> Result<Vec<Sample>, QueryError> {
        let endpoint = format!("{}/api/v1/query", self.url);
        let mut form = vec![("query", query.to_string())];
        if let Some(at) = at {
            // Seconds since the epoch, to the millisecond, as Prometheus takes `time`.
            let ms = at.as_millisecond();
            form.push((
                "time",
                format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000)),
            ));
        }
        let answer = self
            .http
            .post(&endpoint)
            .form(&form)
            .send()
            .await
            .map_err(|e| QueryError::Unreachable {
                url: self.url.clone(),
                message: error_chain(&e),
            })?;
        let status = answer.status().as_u16();
        let body = answer.text().await.map_err(|e| QueryError::Unreachable {
            url: self.url.clone(),
            message: format!("reading the answer: {e}"),
        })?;
        parse_answer(&self.url, query, status, &body)
    }
}

/// An error and its causes on one line (reqwest's own text is only "error sending request").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// What a relative condition compares with: the stable revision's pods, as they are now
/// (`at` is `None`), or as they were at `at` once none runs it any more (a bake), the query
/// then evaluated by Prometheus at that moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StableBaseline {
    pub values: Placeholders,
    pub at: Option<Timestamp>,
}

/// Runs every metric gate: for each, the query on the new revision (and on stable for a
/// relative condition), judged by [`judge`]. `stable` is `None` when no pod runs stable and
/// none was ever seen.
pub async fn run_metric_gates(
    prometheus: &Prometheus,
    gates: &[MetricGate],
    new: &Placeholders,
    stable: Option<&StableBaseline>,
) -> Verdict {
    let runs = gates.iter().map(|gate| async move {
        let new_query = gate.render(new);
        let new_answer = prometheus.query(&new_query).await;
        let stable_answer = match (gate.bound.is_relative(), stable) {
            (true, Some(stable)) => Some(
                prometheus
                    .query_at(&gate.render(&stable.values), stable.at)
                    .await,
            ),
            _ => None,
        };
        let verdict = judge(gate, &new_query, &new_answer, stable_answer.as_ref());
        match stable
            .and_then(|s| s.at)
            .filter(|_| gate.bound.is_relative())
        {
            Some(at) => said_when(verdict, at),
            None => verdict,
        }
    });
    Verdict::all(futures::future::join_all(runs).await)
}

/// `verdict` of a relative condition judged against stable as it was at `at`, saying so.
fn said_when(verdict: Verdict, at: Timestamp) -> Verdict {
    let when = format!(
        "stable as Prometheus had it at {}, the last time a run saw its pods",
        at.strftime("%Y-%m-%d %H:%M:%S UTC")
    );
    match verdict {
        Verdict::Fail { mut failures } => {
            for failure in &mut failures {
                failure.reasons.push(format!("({when})"));
            }
            Verdict::Fail { failures }
        }
        Verdict::Inconclusive { message } => Verdict::Inconclusive {
            message: format!("{message} ({when})"),
        },
        pass => pass,
    }
}

/// Checks, before any write, that Prometheus answers and accepts every query (with the
/// placeholders filled as they will be). A query with no data passes this check: data comes
/// once the new pods serve.
pub async fn check_up_front(
    prometheus: &Prometheus,
    gates: &[MetricGate],
    values: &Placeholders,
) -> Result<(), QueryError> {
    for gate in gates {
        prometheus.query(&gate.render(values)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::metric::{Bound, Op};

    const URL: &str = "http://127.0.0.1:19090";

    fn vector(values: &[(&str, &str)]) -> String {
        let series: Vec<String> = values
            .iter()
            .map(|(pod, v)| {
                format!(r#"{{"metric":{{"pod":"{pod}"}},"value":[1700000000.1,"{v}"]}}"#)
            })
            .collect();
        format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#,
            series.join(",")
        )
    }

    fn answer(body: &str) -> Result<Vec<Sample>, QueryError> {
        parse_answer(URL, "q", 200, body)
    }

    fn gate(op: Op, bound: Bound) -> MetricGate {
        MetricGate {
            query: r#"q{h="{revision}"}"#.into(),
            op,
            bound,
        }
    }

    #[test]
    fn answers_parse() {
        let samples = answer(&vector(&[("web-2", "0.25"), ("web-1", "NaN")]))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].value, 0.25);
        assert_eq!(samples[0].labels, r#"{pod="web-2"}"#);
        assert!(samples[1].value.is_nan());
        let scalar =
            answer(r#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"3"]}}"#);
        assert_eq!(scalar.map(|s| s[0].value), Ok(3.0));
        let bad = parse_answer(
            URL,
            "sum(",
            400,
            r#"{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed left parenthesis"}"#,
        );
        assert!(
            matches!(&bad, Err(QueryError::Refused { message, .. }) if message.contains("unclosed left parenthesis")),
            "{bad:?}"
        );
        let busy = parse_answer(
            URL,
            "q",
            503,
            r#"{"status":"error","errorType":"unavailable","error":"not ready"}"#,
        );
        assert!(matches!(busy, Err(QueryError::Unreachable { .. })));
        let html = parse_answer(URL, "q", 404, "<html>nope</html>");
        assert!(matches!(html, Err(QueryError::Unreachable { .. })));
        let matrix = answer(r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#);
        assert!(matches!(matrix, Err(QueryError::Refused { .. })));
    }

    #[test]
    fn verdicts() {
        let abs = gate(Op::Lt, Bound::Absolute { value: 0.01 });
        let rel = gate(
            Op::Le,
            Bound::Relative {
                factor: 1.5,
                offset: 0.0,
            },
        );
        let ok = |v: &[(&str, &str)]| answer(&vector(v));
        let pass = |v: &Verdict| v.is_pass();
        let fail = |v: &Verdict| matches!(v, Verdict::Fail { .. });
        let unsure = |v: &Verdict| matches!(v, Verdict::Inconclusive { .. });
        type Check = fn(&Verdict) -> bool;
        type Answer = Result<Vec<Sample>, QueryError>;
        let cases: Vec<(&MetricGate, Answer, Option<Answer>, Check, &str)> = vec![
            (&abs, ok(&[("a", "0.001")]), None, pass, "under the bound"),
            (&abs, ok(&[("a", "0.02")]), None, fail, "over the bound"),
            (
                &abs,
                ok(&[("a", "0.001"), ("b", "0.5")]),
                None,
                fail,
                "every series must hold",
            ),
            (&abs, ok(&[]), None, unsure, "no samples: no data"),
            (&abs, ok(&[("a", "NaN")]), None, unsure, "NaN: no data"),
            (
                &rel,
                ok(&[("a", "0.3")]),
                Some(ok(&[("s", "0.25")])),
                pass,
                "within 1.5x",
            ),
            (
                &rel,
                ok(&[("a", "0.31")]),
                Some(ok(&[("s", "0.2")])),
                fail,
                "over 1.5x",
            ),
            (
                &rel,
                ok(&[("a", "0.3")]),
                Some(ok(&[])),
                unsure,
                "stable has no data",
            ),
            (&rel, ok(&[("a", "0.3")]), None, unsure, "no stable pods"),
            (
                &rel,
                ok(&[("a", "0.3")]),
                Some(ok(&[("s", "1"), ("t", "2")])),
                unsure,
                "stable not one value",
            ),
            (
                &abs,
                Err(QueryError::Unreachable {
                    url: URL.into(),
                    message: "connection refused".into(),
                }),
                None,
                unsure,
                "Prometheus down: undecided",
            ),
            (
                &abs,
                Err(QueryError::Refused {
                    url: URL.into(),
                    query: "q".into(),
                    message: "parse error".into(),
                }),
                None,
                fail,
                "refused query: gate error",
            ),
        ];
        for (gate, new, stable, check, why) in cases {
            let verdict = judge(gate, "q", &new, stable.as_ref());
            assert!(check(&verdict), "{why}: {verdict:?}");
        }
        let failed = judge(&rel, "q", &ok(&[("a", "0.31")]), Some(&ok(&[("s", "0.2")])));
        assert_eq!(
            failed.message(),
            r#"metric gate failed (q): series {pod="a"} is 0.31, bound <= 0.3 (stable: 0.2)"#
        );
    }

    /// A Prometheus on loopback that knows stable's value only in the past (its pods are gone
    /// now): `q{h="web-stable"}` is 0.2 when asked with `time`, no data without; the new
    /// revision's is 0.5 now.
    async fn past_only_prometheus() -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let app = axum::Router::new().fallback(|body: String| async move {
            let stable = body.contains("web-stable");
            let past = body.contains("time=1700000000.250");
            match (stable, past) {
                (true, true) => vector(&[("s", "0.2")]),
                (true, false) => vector(&[]),
                (false, _) => vector(&[("a", "0.5")]),
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (url, server)
    }

    #[tokio::test]
    async fn a_relative_condition_with_no_stable_pod_left_asks_for_stable_as_it_was() {
        let (url, server) = past_only_prometheus().await;
        let prometheus = Prometheus::new(&url).unwrap_or_else(|e| panic!("{e}"));
        let gate = MetricGate {
            query: r#"q{h="{revision}"}"#.into(),
            op: Op::Le,
            bound: Bound::Relative {
                factor: 1.0,
                offset: 0.1,
            },
        };
        let new = Placeholders {
            revision: "web-new".into(),
            ..Placeholders::default()
        };
        let stable = |at| StableBaseline {
            values: Placeholders {
                revision: "web-stable".into(),
                ..Placeholders::default()
            },
            at,
        };
        let then = Timestamp::from_millisecond(1_700_000_000_250).unwrap_or_else(|e| panic!("{e}"));
        let gates = [gate];
        let verdict = run_metric_gates(&prometheus, &gates, &new, Some(&stable(Some(then)))).await;
        let text = verdict.message();
        assert!(
            text.contains("is 0.5, bound <= 0.3 (stable: 0.2)")
                && text.contains("(stable as Prometheus had it at 2023-11-14 22:13:20 UTC, the last time a run saw its pods)"),
            "{text}"
        );
        // Asked now, stable has no data: undecided, never a pass.
        let now = run_metric_gates(&prometheus, &gates, &new, Some(&stable(None))).await;
        assert!(matches!(now, Verdict::Inconclusive { .. }), "{now:?}");
        server.abort();
    }
}
