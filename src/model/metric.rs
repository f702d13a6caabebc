//! Metric gates as a user writes them: a PromQL query with placeholders and a condition on its
//! value, absolute (`< 0.01`) or relative to the stable revision (`<= 1.5 * stable`,
//! `<= stable + 0.01`). Written on the command line as one text, the condition last:
//!
//! ```text
//! --gate-prometheus 'sum(rate(http_requests_total{namespace="{namespace}",controller_revision_hash="{revision}",code=~"5.."}[30s])) / sum(rate(http_requests_total{namespace="{namespace}",controller_revision_hash="{revision}"}[30s])) <= stable + 0.01'
//! ```
//!
//! Placeholders, replaced before each query: `{namespace}`, `{set}` (the StatefulSet whose pods
//! are judged), `{revision}` (the revision measured: the new one, and for a relative condition
//! stable's too), `{new}` and `{stable}` (both revisions), `{pods}` (the pods measured, as a
//! regular expression: `web-2|web-1`). Judging the answers is `crate::gate::prometheus`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a metric gate was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricGateError {
    #[error("metric gate `{input}` has no condition at its end; write the query, then a comparison: `QUERY < 0.01`, `QUERY <= 1.5 * stable` or `QUERY <= stable + 0.01`")]
    NoCondition { input: String },
    #[error("metric gate `{input}`: `{condition}` is not a bound; write a number (`< 0.01`), `N * stable` (`<= 1.5 * stable`) or `stable + N` (`<= stable + 0.01`)")]
    BadBound { input: String, condition: String },
    #[error("metric gate `{input}` has no query before its condition")]
    EmptyQuery { input: String },
    #[error("metric gate query `{query}` names an unknown placeholder `{{{name}}}`; known: {{namespace}}, {{set}}, {{revision}}, {{new}}, {{stable}}, {{pods}}")]
    UnknownPlaceholder { query: String, name: String },
    #[error("metric gate `{query}` compares with stable, so its query must measure one revision: use {{revision}} (or {{pods}}) in it")]
    RelativeWithoutRevision { query: String },
}

/// The comparison a value must satisfy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

impl Op {
    pub fn holds(self, value: f64, bound: f64) -> bool {
        match self {
            Op::Lt => value < bound,
            Op::Le => value <= bound,
            Op::Gt => value > bound,
            Op::Ge => value >= bound,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// What the new revision's value is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Bound {
    /// A fixed number.
    Absolute { value: f64 },
    /// `factor * stable + offset`, where stable is the same query measured on the stable
    /// revision.
    Relative { factor: f64, offset: f64 },
}

impl Bound {
    /// The bound for a stable value (ignored when absolute).
    pub fn value(&self, stable: f64) -> f64 {
        match *self {
            Bound::Absolute { value } => value,
            Bound::Relative { factor, offset } => factor * stable + offset,
        }
    }

    /// Every number in it is finite (a record may say otherwise).
    pub fn is_finite(&self) -> bool {
        match *self {
            Bound::Absolute { value } => value.is_finite(),
            Bound::Relative { factor, offset } => factor.is_finite() && offset.is_finite(),
        }
    }

    pub fn is_relative(&self) -> bool {
        matches!(self, Bound::Relative { .. })
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bound::Absolute { value } => write!(f, "{value}"),
            Bound::Relative { factor, offset } => {
                if factor != 1.0 {
                    write!(f, "{factor} * ")?;
                }
                f.write_str("stable")?;
                if offset > 0.0 {
                    write!(f, " + {offset}")?;
                } else if offset < 0.0 {
                    write!(f, " - {}", -offset)?;
                }
                Ok(())
            }
        }
    }
}

/// One metric gate. In a strategy file either as written on the command line
/// (`- 'QUERY < 0.01'`) or as fields (`query`, `op`, `bound`, the form the record keeps).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricGate {
    /// PromQL, with placeholders.
    pub query: String,
    pub op: Op,
    pub bound: Bound,
}

impl fmt::Display for MetricGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.query, self.op.text(), self.bound)
    }
}

impl<'de> Deserialize<'de> for MetricGate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Fields {
            query: String,
            op: Op,
            bound: Bound,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Fields(Fields),
        }
        let gate = match Raw::deserialize(deserializer)? {
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom)?,
            Raw::Fields(f) => MetricGate {
                query: f.query,
                op: f.op,
                bound: f.bound,
            },
        };
        Ok(gate)
    }
}

/// The placeholders a query may use.
pub const PLACEHOLDERS: [&str; 6] = ["namespace", "set", "revision", "new", "stable", "pods"];

/// What the placeholders stand for in one query.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placeholders {
    pub namespace: String,
    pub set: String,
    pub revision: String,
    pub new: String,
    pub stable: String,
    /// Pod names; written as `a|b` (regular expression alternatives).
    pub pods: Vec<String>,
}

impl MetricGate {
    pub fn validate(&self) -> Result<(), MetricGateError> {
        if self.query.trim().is_empty() {
            return Err(MetricGateError::EmptyQuery {
                input: self.to_string(),
            });
        }
        for name in placeholder_names(&self.query) {
            if !PLACEHOLDERS.contains(&name.as_str()) {
                return Err(MetricGateError::UnknownPlaceholder {
                    query: self.query.clone(),
                    name,
                });
            }
        }
        if self.bound.is_relative()
            && !(self.query.contains("{revision}") || self.query.contains("{pods}"))
        {
            return Err(MetricGateError::RelativeWithoutRevision {
                query: self.query.clone(),
            });
        }
        Ok(())
    }

    /// The query with its placeholders replaced.
    pub fn render(&self, values: &Placeholders) -> String {
        let pods = values
            .pods
            .iter()
            .map(|p| p.replace('.', "\\\\."))
            .collect::<Vec<_>>()
            .join("|");
        let mut out = String::with_capacity(self.query.len());
        let mut rest = self.query.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let name_end = after.find('}');
            let value = name_end.and_then(|end| match &after[..end] {
                "namespace" => Some(values.namespace.as_str()),
                "set" => Some(values.set.as_str()),
                "revision" => Some(values.revision.as_str()),
                "new" => Some(values.new.as_str()),
                "stable" => Some(values.stable.as_str()),
                "pods" => Some(pods.as_str()),
                _ => None,
            });
            match (value, name_end) {
                (Some(v), Some(end)) => {
                    out.push_str(v);
                    rest = &after[end + 1..];
                }
                _ => {
                    // A label matcher's brace, not a placeholder.
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// `{word}` names in a query (label matchers like `{code="500"}` are not words).
fn placeholder_names(query: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = query;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        if let Some(end) = after.find('}') {
            let word = &after[..end];
            if !word.is_empty() && word.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                names.push(word.to_string());
            }
        }
        rest = after;
    }
    names
}

impl FromStr for MetricGate {
    type Err = MetricGateError;

    /// `QUERY OP BOUND`: the last comparison outside brackets, braces and quotes is the
    /// condition.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        let (at, op, len) =
            last_top_level_comparison(text).ok_or_else(|| MetricGateError::NoCondition {
                input: input.to_string(),
            })?;
        let query = text[..at].trim().to_string();
        let condition = text[at + len..].trim();
        let bound = parse_bound(condition).ok_or_else(|| MetricGateError::BadBound {
            input: input.to_string(),
            condition: condition.to_string(),
        })?;
        let gate = MetricGate { query, op, bound };
        gate.validate()?;
        Ok(gate)
    }
}

/// Where the last `<`, `<=`, `>`, `>=` outside `()`, `[]`, `{}` and quotes is: (byte index, op,
/// its length).
fn last_top_level_comparison(text: &str) -> Option<(usize, Op, usize)> {
    let bytes = text.as_bytes();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut found = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if let Some(q) = quote {
            if b == b'\\' {
                i += 2;
                continue;
            }
            if b == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' | b'\'' | b'`' => quote = Some(b),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'<' | b'>' if depth == 0 => {
                let eq = bytes.get(i + 1) == Some(&b'=');
                let op = match (b, eq) {
                    (b'<', false) => Op::Lt,
                    (b'<', true) => Op::Le,
                    (_, false) => Op::Gt,
                    (_, true) => Op::Ge,
                };
                let len = if eq { 2 } else { 1 };
                found = Some((i, op, len));
                i += len;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    found
}

/// `0.01`, `stable`, `1.5 * stable`, `stable * 1.5`, `stable + 0.01`, `stable - 5`,
/// `1.5 * stable + 0.01`.
fn parse_bound(text: &str) -> Option<Bound> {
    let text = text.trim();
    if let Ok(value) = text.parse::<f64>() {
        return value.is_finite().then_some(Bound::Absolute { value });
    }
    let number = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    // Split an offset off the end: the last + or - that is not an exponent's sign.
    let (product, offset) = match text
        .char_indices()
        .rev()
        .find(|&(i, c)| (c == '+' || c == '-') && i > 0 && !text[..i].ends_with(['e', 'E']))
    {
        Some((i, sign)) => {
            let value = number(&text[i + 1..])?;
            (text[..i].trim(), if sign == '-' { -value } else { value })
        }
        None => (text, 0.0),
    };
    let factor = if product == "stable" {
        1.0
    } else if let Some((a, b)) = product.split_once('*') {
        match (a.trim(), b.trim()) {
            ("stable", n) | (n, "stable") => number(n)?,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(Bound::Relative { factor, offset })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(text: &str) -> Result<MetricGate, MetricGateError> {
        text.parse()
    }

    #[test]
    fn conditions_parse_from_the_end() {
        let cases: &[(&str, &str, Op, Bound)] = &[
            ("up < 0.01", "up", Op::Lt, Bound::Absolute { value: 0.01 }),
            (
                r#"sum(rate(x{code=~"5..",pod=~"{pods}"}[1m])) >= 3"#,
                r#"sum(rate(x{code=~"5..",pod=~"{pods}"}[1m]))"#,
                Op::Ge,
                Bound::Absolute { value: 3.0 },
            ),
            (
                r#"q{controller_revision_hash="{revision}"} <= 1.5 * stable"#,
                r#"q{controller_revision_hash="{revision}"}"#,
                Op::Le,
                Bound::Relative {
                    factor: 1.5,
                    offset: 0.0,
                },
            ),
            (
                r#"q{pod=~"{pods}"} <= stable + 0.01"#,
                r#"q{pod=~"{pods}"}"#,
                Op::Le,
                Bound::Relative {
                    factor: 1.0,
                    offset: 0.01,
                },
            ),
            (
                r#"q{pod=~"{pods}"} > stable * 0.5 - 2"#,
                r#"q{pod=~"{pods}"}"#,
                Op::Gt,
                Bound::Relative {
                    factor: 0.5,
                    offset: -2.0,
                },
            ),
            // A comparison inside the query (a filter in brackets) is the query's own.
            (
                "count((up > 0) or vector(0)) > 1e-3",
                "count((up > 0) or vector(0))",
                Op::Gt,
                Bound::Absolute { value: 0.001 },
            ),
        ];
        for (text, query, op, bound) in cases {
            let parsed = gate(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                (parsed.query.as_str(), parsed.op, parsed.bound),
                (*query, *op, *bound),
                "{text}"
            );
        }
    }

    #[test]
    fn bad_gates_are_refused_with_a_reason() {
        let cases = [
            ("sum(up)", "has no condition"),
            ("up < lots", "is not a bound"),
            ("up < 2 * unstable", "is not a bound"),
            ("< 3", "has no query"),
            (r#"up{pod="{pod}"} < 1"#, "unknown placeholder `{pod}`"),
            ("sum(up) <= 1.5 * stable", "must measure one revision"),
            ("up < inf", "is not a bound"),
        ];
        for (text, fragment) in cases {
            let err = gate(text).map(|g| g.to_string()).expect_err(text);
            assert!(err.to_string().contains(fragment), "{text}: {err}");
        }
    }

    #[test]
    fn placeholders_are_replaced_and_matchers_kept() {
        let g = gate(r#"sum(x{namespace="{namespace}",pod=~"{pods}",h="{revision}"}) / sum(y{set="{set}",a="{new}",b="{stable}"}) < 1"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let values = Placeholders {
            namespace: "ns".into(),
            set: "web".into(),
            revision: "web-abc".into(),
            new: "web-abc".into(),
            stable: "web-old".into(),
            pods: vec!["web-2".into(), "web-1".into()],
        };
        assert_eq!(
            g.render(&values),
            r#"sum(x{namespace="ns",pod=~"web-2|web-1",h="web-abc"}) / sum(y{set="web",a="web-abc",b="web-old"})"#
        );
        assert_eq!(
            g.to_string(),
            format!("{} < 1", g.query),
            "prints back as written"
        );
    }

    #[test]
    fn gates_read_from_yaml_as_text_or_fields() {
        let yaml = "- 'sum(up{pod=~\"{pods}\"}) <= 2 * stable'\n- query: up\n  op: '<'\n  bound: {kind: absolute, value: 1}\n";
        let gates: Vec<MetricGate> =
            serde_yaml_ng::from_str(yaml).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gates[0].op, Op::Le);
        assert_eq!(gates[1].bound, Bound::Absolute { value: 1.0 });
        let back: Vec<MetricGate> =
            serde_json::from_str(&serde_json::to_string(&gates).unwrap_or_default())
                .unwrap_or_default();
        assert_eq!(back, gates, "the record's form reads back");
        assert!(serde_yaml_ng::from_str::<Vec<MetricGate>>("- 'up'").is_err());
    }

    #[test]
    fn bounds_print_back() {
        for text in [
            "0.01",
            "stable",
            "1.5 * stable",
            "stable + 0.01",
            "2 * stable - 1",
        ] {
            let bound = parse_bound(text).unwrap_or(Bound::Absolute { value: f64::NAN });
            assert_eq!(bound.to_string(), text);
        }
        assert_eq!(
            Bound::Relative {
                factor: 1.5,
                offset: 0.0
            }
            .value(0.2),
            0.30000000000000004
        );
    }
}
