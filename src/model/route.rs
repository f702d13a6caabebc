//! Traffic through a Gateway API HTTPRoute (`--traffic gateway --route NAME`): the settings a
//! user gives, the part of the rollout record that says what rollout changed on the route, and
//! the HTTPRoute type itself, kept as JSON so that writing it back never drops a field this
//! build does not know.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// The API group of the Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// How to install the Gateway API's CRDs, for the message of a cluster that has none.
pub const INSTALL_CRDS: &str = "install the Gateway API's standard-channel CRDs (`kubectl apply --server-side -f standard-install.yaml`, the file of a sigs.k8s.io/gateway-api release, v1.0 or later) and a gateway that implements them";
/// The label that marks a per-revision Service rollout created (`stable` or `canary`).
pub const ROUTE_BACKEND_LABEL: &str = "rollout.dev/route-backend";

/// A Gateway API HTTPRoute: metadata typed, spec and status as JSON as the API server gives
/// them, so a route written back keeps every field it had.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

impl kube::Resource for HttpRoute {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "HTTPRoute".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GATEWAY_GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "httproutes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Why a header pin was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderPinError {
    #[error("`{input}` is not NAME=VALUE (e.g. X-Canary=always)")]
    Shape { input: String },
    #[error("`{name}` is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~ only)")]
    Name { name: String },
    #[error("the value of header {name} must be 1 to 4096 visible characters")]
    Value { name: String },
}

/// `--canary-header NAME=VALUE`: requests with this header go to the canary, whatever the
/// weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HeaderPin {
    pub name: String,
    pub value: String,
}

impl HeaderPin {
    fn check(name: &str, value: &str) -> Result<(), HeaderPinError> {
        let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if name.is_empty() || name.len() > 256 || !name.chars().all(token) {
            return Err(HeaderPinError::Name {
                name: name.to_string(),
            });
        }
        if value.is_empty()
            || value.len() > 4096
            || !value.chars().all(|c| c.is_ascii_graphic() || c == ' ')
        {
            return Err(HeaderPinError::Value {
                name: name.to_string(),
            });
        }
        Ok(())
    }
}

impl FromStr for HeaderPin {
    type Err = HeaderPinError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (name, value) = input.split_once('=').ok_or_else(|| HeaderPinError::Shape {
            input: input.to_string(),
        })?;
        HeaderPin::check(name, value)?;
        Ok(HeaderPin {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

impl TryFrom<String> for HeaderPin {
    type Error = HeaderPinError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<HeaderPin> for String {
    fn from(pin: HeaderPin) -> String {
        pin.to_string()
    }
}

impl fmt::Display for HeaderPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.name, self.value)
    }
}

/// `--traffic gateway --route [NAMESPACE/]NAME [--canary-header NAME=VALUE]`, or a strategy
/// file's `traffic:` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteTraffic {
    /// The HTTPRoute's name.
    pub route: String,
    /// A namespace the user named (`--route ns/name`); only the set's own is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Requests with this header go to the new version: a canary's (`--canary-header`) or
    /// blue/green's preview (`--preview-header`, `previewHeader` in a strategy file).
    #[serde(
        default,
        alias = "previewHeader",
        skip_serializing_if = "Option::is_none"
    )]
    pub canary_header: Option<HeaderPin>,
    /// Shadow: the share of the route's requests copied to the shadow (all when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<crate::model::weight::Percent>,
}

/// The Gateway API feature a route needs for a RequestMirror filter.
pub const MIRROR_FEATURE: &str = "HTTPRouteRequestMirror";
/// The Gateway API feature a route needs for a RequestMirror filter with a percent.
pub const PERCENT_MIRROR_FEATURE: &str = "HTTPRouteRequestPercentageMirror";

impl RouteTraffic {
    /// `NAME` or `NAMESPACE/NAME`.
    pub fn parse_route(input: &str) -> Result<(Option<String>, String), String> {
        let (namespace, name) = match input.split_once('/') {
            Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
            None => (None, input.to_string()),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 253
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
                && !s.starts_with(['-', '.'])
                && !s.ends_with(['-', '.'])
        };
        if !valid(&name) || namespace.as_deref().is_some_and(|ns| !valid(ns)) {
            return Err(format!(
                "`{input}` is not an HTTPRoute name (NAME or NAMESPACE/NAME, lower-case letters, digits, '-' and '.')"
            ));
        }
        Ok((namespace, name))
    }
}

/// The record of what rollout does to the route: which route, which of its backends is the
/// set's Service, the per-revision Services it creates, and the route's rules as they were
/// before the rollout (written back exactly by the rollback and at the end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRecord {
    pub route: String,
    /// The Service the route's rules send the set's traffic to.
    pub service: String,
    /// The per-revision Services (`<set>-stable`, `<set>-canary`).
    pub stable_service: String,
    pub canary_service: String,
    /// The route's `spec.rules` before the rollout.
    pub original_rules: serde_json::Value,
    /// The canary's revision (`controller-revision-hash`), once its Service was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_header: Option<HeaderPin>,
    /// `rules_fingerprint` of the route's `spec.rules` as the API server stored them after
    /// rollout's last write (the original rules' before the first): rules that differ were
    /// written by someone else. Absent in records of older builds, which are then not checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_written: Option<String>,
}

/// A fingerprint of a route's `rules` (FNV-1a, 64 bits, of their JSON), the same in every
/// build: enough to tell whether they are still the ones rollout saw, without keeping a second
/// copy of them in the record.
pub fn rules_fingerprint(rules: &serde_json::Value) -> String {
    let text = rules.to_string();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The per-revision Service names of a set.
pub fn revision_service_names(set: &str) -> (String, String) {
    (format!("{set}-stable"), format!("{set}-canary"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_fingerprints_tell_rules_apart_and_stay_the_same() {
        let rules = serde_json::json!([{"backendRefs": [{"name": "web", "port": 80}]}]);
        // FNV-1a of `null`, fixed: a record written by one build is read the same by the next.
        assert_eq!(
            rules_fingerprint(&serde_json::Value::Null),
            "5b9bc4ba528108e4"
        );
        assert_eq!(rules_fingerprint(&rules), rules_fingerprint(&rules.clone()));
        let weighted =
            serde_json::json!([{"backendRefs": [{"name": "web", "port": 80, "weight": 1}]}]);
        assert_ne!(rules_fingerprint(&rules), rules_fingerprint(&weighted));
    }

    #[test]
    fn header_pins() {
        let pin: HeaderPin = "X-Canary=always".parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (pin.name.as_str(), pin.value.as_str()),
            ("X-Canary", "always")
        );
        assert_eq!(pin.to_string(), "X-Canary=always");
        for bad in ["X-Canary", "=v", "X Canary=v", "X-Canary=", "X:y=1"] {
            assert!(bad.parse::<HeaderPin>().is_err(), "{bad}");
        }
    }

    #[test]
    fn route_names() {
        assert_eq!(
            RouteTraffic::parse_route("web"),
            Ok((None, "web".to_string()))
        );
        assert_eq!(
            RouteTraffic::parse_route("shop/web"),
            Ok((Some("shop".to_string()), "web".to_string()))
        );
        for bad in ["", "Web", "a/b/c", "/web", "web-"] {
            assert!(RouteTraffic::parse_route(bad).is_err(), "{bad}");
        }
    }
}
