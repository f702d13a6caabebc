//! The gateway's decisions as plain functions, no I/O: which HTTPRoutes are ours and what in them
//! this gateway supports (a [`RouteCheck`] per route, which the status reports), the routing
//! table made of the accepted ones, the rule a request takes (hostname, path and header matches,
//! in the Gateway API's order of precedence), the weighted choice of a backend, and whether a
//! request is mirrored.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::api::{HttpRoute, ObjectRef, ParentRef, RouteMatch, GROUP};

/// Where this gateway's one Gateway lives and what its one listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayId {
    pub namespace: String,
    pub name: String,
    pub listener: String,
    pub port: i32,
}

/// A reason and a message for a condition that is not True.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// What a route's status says for one of its parent references to our Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentCheck {
    pub parent: ParentRef,
    /// `Err` makes `Accepted` False; such a route is not served through this parent.
    pub accepted: Result<(), Problem>,
    /// `Err` makes `ResolvedRefs` False (requests for a bad backend get 500).
    pub resolved: Result<(), Problem>,
}

/// A Service port a request or a mirrored copy can go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub namespace: String,
    pub service: String,
    /// The Service port's name; empty for an unnamed port (as in EndpointSlices).
    pub port_name: String,
    pub port: i32,
}

/// A weighted backend of a rule; `None` is a reference that did not resolve (its share gets 500).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub target: Option<ServicePort>,
    pub weight: u32,
}

/// A `RequestMirror` filter: copies of `numerator / denominator` of the requests go to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub target: ServicePort,
    pub numerator: u32,
    pub denominator: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathRule {
    Exact(String),
    /// Kept without a trailing slash ("/" becomes ""), so matching is per path segment.
    Prefix(String),
}

/// One match of one rule of one accepted route: the unit the table orders and a request selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `namespace/name` of the route, for logs and headers.
    pub route: String,
    pub hostnames: Vec<String>,
    pub path: PathRule,
    /// Header names lower-cased; values compared exactly.
    pub headers: Vec<(String, String)>,
    pub backends: Vec<Backend>,
    pub mirrors: Vec<Mirror>,
}

/// The accepted routes' entries, in precedence order (hostname aside, which depends on the
/// request): exact paths first, then longer prefixes, more header matches, older routes, routes
/// by namespace/name, rules and matches in their order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub entries: Vec<Entry>,
}

/// The ports of every Service, by namespace and name: what backend references resolve against.
pub type ServiceIndex = BTreeMap<(String, String), Vec<(i32, String)>>;

pub fn service_index<'a>(services: impl IntoIterator<Item = &'a Service>) -> ServiceIndex {
    services
        .into_iter()
        .filter_map(|s| {
            let ns = s.metadata.namespace.clone()?;
            let name = s.metadata.name.clone()?;
            let ports = s
                .spec
                .iter()
                .flat_map(|sp| sp.ports.iter().flatten())
                .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
                .map(|p| (p.port, p.name.clone().unwrap_or_default()))
                .collect();
            Some(((ns, name), ports))
        })
        .collect()
}

/// Does `parent` (in a route of `route_ns`) name our Gateway?
pub fn names_gateway(parent: &ParentRef, route_ns: &str, gw: &GatewayId) -> bool {
    parent.group.as_deref().unwrap_or(GROUP) == GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
        && parent.namespace.as_deref().unwrap_or(route_ns) == gw.namespace
        && parent.name == gw.name
}

/// The checks of every parent reference of `route` to our Gateway (none: the route is not ours),
/// and the route's table entries when at least one of them is accepted.
pub fn check_route(
    route: &HttpRoute,
    gw: &GatewayId,
    services: &ServiceIndex,
) -> (Vec<ParentCheck>, Vec<Entry>) {
    let ns = route.metadata.namespace.clone().unwrap_or_default();
    let name = route.metadata.name.clone().unwrap_or_default();
    let ours: Vec<&ParentRef> = route
        .spec
        .parent_refs
        .iter()
        .filter(|p| names_gateway(p, &ns, gw))
        .collect();
    if ours.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let supported = supported(route);
    let mut resolve_problems = Vec::new();
    let mut entries = Vec::new();
    for rule in &route.spec.rules {
        let backends: Vec<Backend> = rule
            .backend_refs
            .iter()
            .map(|b| {
                let target = resolve(&ns, &b.object, services)
                    .map_err(|p| resolve_problems.push(p))
                    .ok();
                Backend {
                    target,
                    weight: u32::try_from(b.weight.unwrap_or(1)).unwrap_or(0),
                }
            })
            .collect();
        let mirrors: Vec<Mirror> = rule
            .filters
            .iter()
            .filter_map(|f| f.request_mirror.as_ref())
            .filter_map(|m| {
                let target = resolve(&ns, &m.backend_ref, services)
                    .map_err(|p| resolve_problems.push(p))
                    .ok()?;
                let (numerator, denominator) = mirror_share(m.percent, m.fraction.as_ref());
                Some(Mirror {
                    target,
                    numerator,
                    denominator,
                })
            })
            .collect();
        let default_match = [RouteMatch::default()];
        let matches: &[RouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        for m in matches {
            entries.push(Entry {
                route: format!("{ns}/{name}"),
                hostnames: route
                    .spec
                    .hostnames
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
                path: path_rule(m),
                headers: m
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
                    .collect(),
                backends: backends.clone(),
                mirrors: mirrors.clone(),
            });
        }
    }
    let resolved = match resolve_problems.first() {
        None => Ok(()),
        Some(first) => Err(Problem::new(
            first.reason,
            resolve_problems
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    };
    let checks: Vec<ParentCheck> = ours
        .into_iter()
        .map(|p| ParentCheck {
            parent: p.clone(),
            accepted: fits_listener(p, gw).and(supported.clone()),
            resolved: resolved.clone(),
        })
        .collect();
    if !checks.iter().any(|c| c.accepted.is_ok()) {
        entries.clear();
    }
    (checks, entries)
}

/// A parent reference may narrow itself to a listener (by name or port); ours has one.
fn fits_listener(p: &ParentRef, gw: &GatewayId) -> Result<(), Problem> {
    if let Some(section) = p.section_name.as_deref().filter(|s| *s != gw.listener) {
        return Err(Problem::new(
            "NoMatchingParent",
            format!(
                "Gateway {}/{} has no listener named {section:?} (its one listener is {:?})",
                gw.namespace, gw.name, gw.listener
            ),
        ));
    }
    if let Some(port) = p.port.filter(|port| *port != gw.port) {
        return Err(Problem::new(
            "NoMatchingParent",
            format!(
                "Gateway {}/{} has no listener on port {port} (its one listener is on {})",
                gw.namespace, gw.name, gw.port
            ),
        ));
    }
    Ok(())
}

/// `Err` names the first thing in the route this gateway does not implement.
fn supported(route: &HttpRoute) -> Result<(), Problem> {
    let unsupported = |what: String| {
        Err(Problem::new(
            "UnsupportedValue",
            format!("{what} is not supported by the devcluster's mirror gateway (it supports path Exact/PathPrefix and header Exact matches, backendRefs to Services, and the RequestMirror filter)"),
        ))
    };
    for (i, rule) in route.spec.rules.iter().enumerate() {
        if let Some(key) = rule.other.keys().find(|k| *k != "name") {
            return unsupported(format!("rules[{i}].{key}"));
        }
        for (j, m) in rule.matches.iter().enumerate() {
            if let Some(key) = m.other.keys().next() {
                return unsupported(format!("rules[{i}].matches[{j}].{key}"));
            }
            let path_type = m.path.as_ref().and_then(|p| p.type_.as_deref());
            if let Some(t) = path_type.filter(|t| !matches!(*t, "Exact" | "PathPrefix")) {
                return unsupported(format!("rules[{i}].matches[{j}].path type {t}"));
            }
            if let Some(t) = m
                .headers
                .iter()
                .filter_map(|h| h.type_.as_deref())
                .find(|t| *t != "Exact")
            {
                return unsupported(format!("rules[{i}].matches[{j}].headers type {t}"));
            }
        }
        for f in &rule.filters {
            if f.type_ != "RequestMirror" || f.request_mirror.is_none() {
                return unsupported(format!("rules[{i}] filter {}", f.type_));
            }
        }
        if let Some(b) = rule.backend_refs.iter().find(|b| !b.filters.is_empty()) {
            return unsupported(format!(
                "rules[{i}].backendRefs ({}) filters",
                b.object.name
            ));
        }
    }
    Ok(())
}

fn path_rule(m: &RouteMatch) -> PathRule {
    let value = m
        .path
        .as_ref()
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "/".into());
    match m.path.as_ref().and_then(|p| p.type_.as_deref()) {
        Some("Exact") => PathRule::Exact(value),
        _ => PathRule::Prefix(value.trim_end_matches('/').to_string()),
    }
}

/// A backend reference of a route in `route_ns` as a Service port, or why it is not one.
fn resolve(route_ns: &str, r: &ObjectRef, services: &ServiceIndex) -> Result<ServicePort, Problem> {
    let group = r.group.as_deref().unwrap_or("");
    let kind = r.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err(Problem::new(
            "InvalidKind",
            format!(
                "backend {} is a {kind} of group {group:?}; only Services are supported",
                r.name
            ),
        ));
    }
    if let Some(ns) = r.namespace.as_deref().filter(|ns| *ns != route_ns) {
        return Err(Problem::new(
            "RefNotPermitted",
            format!("backend Service {ns}/{} is in another namespace; ReferenceGrants are not supported", r.name),
        ));
    }
    let Some(ports) = services.get(&(route_ns.to_string(), r.name.clone())) else {
        return Err(Problem::new(
            "BackendNotFound",
            format!("Service {route_ns}/{} not found", r.name),
        ));
    };
    let Some(port) = r.port else {
        return Err(Problem::new(
            "BackendNotFound",
            format!("backend Service {route_ns}/{} has no port given", r.name),
        ));
    };
    match ports.iter().find(|(p, _)| *p == port) {
        Some((_, port_name)) => Ok(ServicePort {
            namespace: route_ns.to_string(),
            service: r.name.clone(),
            port_name: port_name.clone(),
            port,
        }),
        None => Err(Problem::new(
            "BackendNotFound",
            format!("Service {route_ns}/{} has no TCP port {port}", r.name),
        )),
    }
}

/// The share of requests a `RequestMirror` filter copies, as numerator and denominator: all of
/// them when neither `percent` nor `fraction` is given.
pub fn mirror_share(percent: Option<i32>, fraction: Option<&super::api::Fraction>) -> (u32, u32) {
    let clamp = |n: i32, d: u32| (u32::try_from(n).unwrap_or(0).min(d), d);
    match (percent, fraction) {
        (Some(p), _) => clamp(p, 100),
        (None, Some(f)) => {
            let d = f
                .denominator
                .and_then(|d| u32::try_from(d).ok())
                .filter(|d| *d > 0)
                .unwrap_or(100);
            clamp(f.numerator, d)
        }
        (None, None) => (1, 1),
    }
}

/// Is this request copied to the mirror? `draw(n)` is a uniform random number below `n`.
pub fn mirror_hit(m: &Mirror, draw: impl FnOnce(u32) -> u32) -> bool {
    if m.numerator == 0 {
        return false;
    }
    m.numerator >= m.denominator || draw(m.denominator) < m.numerator
}

/// Every accepted route's entries in precedence order, and every route's checks by
/// `namespace/name` (routes without a parent reference to our Gateway have none).
pub fn build_table(
    routes: &[&HttpRoute],
    gw: &GatewayId,
    services: &ServiceIndex,
) -> (Table, BTreeMap<String, Vec<ParentCheck>>) {
    type Key = (
        u8,
        std::cmp::Reverse<usize>,
        std::cmp::Reverse<usize>,
        Option<Time>,
        String,
        usize,
        usize,
    );
    let mut keyed: Vec<(Key, Entry)> = Vec::new();
    let mut checks = BTreeMap::new();
    for route in routes {
        let (route_checks, entries) = check_route(route, gw, services);
        let id = format!(
            "{}/{}",
            route.metadata.namespace.as_deref().unwrap_or_default(),
            route.metadata.name.as_deref().unwrap_or_default()
        );
        // Entries come rule by rule, match by match: their index is their order in the route.
        for (i, e) in entries.into_iter().enumerate() {
            let (exact, len) = match &e.path {
                PathRule::Exact(p) => (0, p.len()),
                PathRule::Prefix(p) => (1, p.len()),
            };
            let key = (
                exact,
                std::cmp::Reverse(len),
                std::cmp::Reverse(e.headers.len()),
                route.metadata.creation_timestamp.clone(),
                id.clone(),
                i,
                0,
            );
            keyed.push((key, e));
        }
        if !route_checks.is_empty() {
            checks.insert(id, route_checks);
        }
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let table = Table {
        entries: keyed.into_iter().map(|(_, e)| e).collect(),
    };
    (table, checks)
}

/// The request's host as routes name hosts: the `Host` header without its port, lower case.
pub fn request_host(host_header: &str) -> String {
    let host = host_header.trim();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => host.split(':').next().unwrap_or(host),
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// How well a route's hostnames fit `host`: `None` when they exclude it; an exact name beats a
/// wildcard, a longer wildcard a shorter one, and any name a route without hostnames.
fn host_fit(hostnames: &[String], host: &str) -> Option<(u8, usize)> {
    if hostnames.is_empty() {
        return Some((0, 0));
    }
    hostnames
        .iter()
        .filter_map(|h| match h.strip_prefix("*.") {
            Some(suffix) => {
                let matches = host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.';
                matches.then_some((1, suffix.len()))
            }
            None => (h == host).then_some((2, h.len())),
        })
        .max()
}

fn path_fits(rule: &PathRule, path: &str) -> bool {
    match rule {
        PathRule::Exact(p) => p == path,
        PathRule::Prefix(p) => {
            path == p.as_str()
                || (path.starts_with(p.as_str()) && path.as_bytes().get(p.len()) == Some(&b'/'))
        }
    }
}

/// The entry a request takes: among those whose hostname, path and headers fit, the one with the
/// best-fitting hostname, then the first in the table's order. `None`: no route (404).
pub fn select<'t>(
    table: &'t Table,
    host: &str,
    path: &str,
    headers: &HeaderMap,
) -> Option<&'t Entry> {
    let mut best: Option<((u8, usize), &Entry)> = None;
    for e in &table.entries {
        let Some(fit) = host_fit(&e.hostnames, host) else {
            continue;
        };
        if !path_fits(&e.path, path) {
            continue;
        }
        let headers_fit = e.headers.iter().all(|(name, value)| {
            headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == value)
        });
        if !headers_fit {
            continue;
        }
        if best.as_ref().is_none_or(|(f, _)| fit > *f) {
            best = Some((fit, e));
        }
    }
    best.map(|(_, e)| e)
}

/// The index of the backend a request goes to, by weight (weight 0 never); `draw(total)` is a
/// uniform random number below the total weight. `None` when every weight is 0 (500).
pub fn pick_weighted(backends: &[Backend], draw: impl FnOnce(u64) -> u64) -> Option<usize> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut at = draw(total);
    for (i, b) in backends.iter().enumerate() {
        let w = u64::from(b.weight);
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::api::{Fraction, HttpRoute};
    use serde_json::json;

    fn gw() -> GatewayId {
        GatewayId {
            namespace: "devcluster-gateway".into(),
            name: "devcluster-mirror".into(),
            listener: "http".into(),
            port: 18081,
        }
    }

    fn services() -> ServiceIndex {
        [
            (("app", "stable"), vec![(80, "http")]),
            (("app", "canary"), vec![(80, "http")]),
            (("app", "shadow"), vec![(8080, "")]),
        ]
        .into_iter()
        .map(|((ns, n), ports)| {
            (
                (ns.to_string(), n.to_string()),
                ports
                    .into_iter()
                    .map(|(p, name)| (p, name.to_string()))
                    .collect(),
            )
        })
        .collect()
    }

    fn route(name: &str, spec: serde_json::Value) -> HttpRoute {
        serde_json::from_value(json!({
            "metadata": {"namespace": "app", "name": name, "generation": 2},
            "spec": spec,
        }))
        .unwrap()
    }

    fn ours() -> serde_json::Value {
        json!([{"namespace": "devcluster-gateway", "name": "devcluster-mirror"}])
    }

    fn port(svc: &str, port: i32, name: &str) -> ServicePort {
        ServicePort {
            namespace: "app".into(),
            service: svc.into(),
            port_name: name.into(),
            port,
        }
    }

    #[test]
    fn route_checks() {
        let ok = Ok(());
        let unsupported = |what: &str| Err(("UnsupportedValue", what.to_string()));
        // (what, spec, expected Accepted per parent (Err: reason and a word of the message),
        //  expected ResolvedRefs)
        type Want = Result<(), (&'static str, String)>;
        let cases: Vec<(&str, serde_json::Value, Vec<Want>, Want)> = vec![
            (
                "weights to two Services",
                json!({"parentRefs": ours(), "rules": [{"backendRefs": [
                    {"name": "stable", "port": 80, "weight": 70}, {"name": "canary", "port": 80, "weight": 30}]}]}),
                vec![ok.clone()],
                ok.clone(),
            ),
            (
                "someone else's gateway: not ours, no status",
                json!({"parentRefs": [{"name": "devcluster", "namespace": "devcluster-gateway"}], "rules": []}),
                vec![],
                ok.clone(),
            ),
            (
                "same name in the route's namespace is another gateway",
                json!({"parentRefs": [{"name": "devcluster-mirror"}], "rules": []}),
                vec![],
                ok.clone(),
            ),
            (
                "a missing Service",
                json!({"parentRefs": ours(), "rules": [{"backendRefs": [{"name": "gone", "port": 80}]}]}),
                vec![ok.clone()],
                Err(("BackendNotFound", "app/gone not found".into())),
            ),
            (
                "a port the Service does not have",
                json!({"parentRefs": ours(), "rules": [{"backendRefs": [{"name": "stable", "port": 81}]}]}),
                vec![ok.clone()],
                Err(("BackendNotFound", "no TCP port 81".into())),
            ),
            (
                "a missing mirror Service",
                json!({"parentRefs": ours(), "rules": [{
                    "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone", "port": 80}}}],
                    "backendRefs": [{"name": "stable", "port": 80}]}]}),
                vec![ok.clone()],
                Err(("BackendNotFound", "app/gone not found".into())),
            ),
            (
                "another namespace's Service",
                json!({"parentRefs": ours(), "rules": [{"backendRefs": [{"name": "stable", "namespace": "other", "port": 80}]}]}),
                vec![ok.clone()],
                Err(("RefNotPermitted", "ReferenceGrant".into())),
            ),
            (
                "not a Service",
                json!({"parentRefs": ours(), "rules": [{"backendRefs": [{"group": "x.io", "kind": "Bucket", "name": "b", "port": 80}]}]}),
                vec![ok.clone()],
                Err(("InvalidKind", "only Services".into())),
            ),
            (
                "an unsupported filter",
                json!({"parentRefs": ours(), "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}],
                    "backendRefs": [{"name": "stable", "port": 80}]}]}),
                vec![unsupported("filter URLRewrite")],
                ok.clone(),
            ),
            (
                "a regular expression path",
                json!({"parentRefs": ours(), "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}]}]}),
                vec![unsupported("path type RegularExpression")],
                ok.clone(),
            ),
            (
                "a regular expression header",
                json!({"parentRefs": ours(), "rules": [{"matches": [{"headers": [{"type": "RegularExpression", "name": "a", "value": "b"}]}]}]}),
                vec![unsupported("headers type RegularExpression")],
                ok.clone(),
            ),
            (
                "a method match",
                json!({"parentRefs": ours(), "rules": [{"matches": [{"method": "GET"}]}]}),
                vec![unsupported("matches[0].method")],
                ok.clone(),
            ),
            (
                "rule timeouts",
                json!({"parentRefs": ours(), "rules": [{"name": "r", "timeouts": {"request": "1s"}}]}),
                vec![unsupported("rules[0].timeouts")],
                ok.clone(),
            ),
            (
                "backend filters",
                json!({"parentRefs": ours(), "rules": [{"backendRefs": [{"name": "stable", "port": 80,
                    "filters": [{"type": "RequestHeaderModifier"}]}]}]}),
                vec![unsupported("backendRefs (stable) filters")],
                ok.clone(),
            ),
            (
                "listener by name and port, one of each wrong",
                json!({"parentRefs": [
                    {"namespace": "devcluster-gateway", "name": "devcluster-mirror", "sectionName": "http"},
                    {"namespace": "devcluster-gateway", "name": "devcluster-mirror", "sectionName": "https"},
                    {"namespace": "devcluster-gateway", "name": "devcluster-mirror", "port": 80}],
                    "rules": []}),
                vec![
                    ok.clone(),
                    Err(("NoMatchingParent", "no listener named \"https\"".into())),
                    Err(("NoMatchingParent", "no listener on port 80".into())),
                ],
                ok.clone(),
            ),
        ];
        for (what, spec, accepted, resolved) in cases {
            let r = route("r", spec);
            let (checks, entries) = check_route(&r, &gw(), &services());
            assert_eq!(checks.len(), accepted.len(), "{what}: {checks:?}");
            let fits = |got: &Result<(), Problem>, want: &Want| match (got, want) {
                (Ok(()), Ok(())) => true,
                (Err(p), Err((reason, word))) => {
                    p.reason == *reason && p.message.contains(word.as_str())
                }
                _ => false,
            };
            for (c, want) in checks.iter().zip(&accepted) {
                assert!(
                    fits(&c.accepted, want),
                    "{what}: Accepted {:?}, want {want:?}",
                    c.accepted
                );
                assert!(
                    fits(&c.resolved, &resolved),
                    "{what}: ResolvedRefs {:?}, want {resolved:?}",
                    c.resolved
                );
            }
            if !checks.iter().any(|c| c.accepted.is_ok()) {
                assert!(
                    entries.is_empty(),
                    "{what}: a route accepted nowhere is not served"
                );
            }
        }
    }

    #[test]
    fn entries_carry_weights_mirrors_and_unresolved_shares() {
        let r = route(
            "r",
            json!({"parentRefs": ours(), "hostnames": ["Web.Example"], "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/api/"}, "headers": [{"name": "X-Canary", "value": "yes"}]}, {}],
                "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "shadow", "port": 8080}, "percent": 25}}],
                "backendRefs": [{"name": "stable", "port": 80, "weight": 0}, {"name": "gone", "port": 80}, {"name": "canary", "port": 80}]}]}),
        );
        let (_, entries) = check_route(&r, &gw(), &services());
        let backends = vec![
            Backend {
                target: Some(port("stable", 80, "http")),
                weight: 0,
            },
            Backend {
                target: None,
                weight: 1,
            },
            Backend {
                target: Some(port("canary", 80, "http")),
                weight: 1,
            },
        ];
        let mirrors = vec![Mirror {
            target: port("shadow", 8080, ""),
            numerator: 25,
            denominator: 100,
        }];
        let entry = |path: PathRule, headers: Vec<(String, String)>| Entry {
            route: "app/r".into(),
            hostnames: vec!["web.example".into()],
            path,
            headers,
            backends: backends.clone(),
            mirrors: mirrors.clone(),
        };
        assert_eq!(
            entries,
            vec![
                entry(
                    PathRule::Prefix("/api".into()),
                    vec![("x-canary".into(), "yes".into())]
                ),
                entry(PathRule::Prefix("".into()), vec![]),
            ]
        );
    }

    #[test]
    fn mirror_shares() {
        let f = |n, d| Fraction {
            numerator: n,
            denominator: d,
        };
        let cases = [
            ("neither: all", None, None, (1, 1)),
            ("percent", Some(30), None, (30, 100)),
            ("percent 0", Some(0), None, (0, 100)),
            ("percent over 100 clamped", Some(150), None, (100, 100)),
            ("fraction", None, Some(f(1, Some(3))), (1, 3)),
            (
                "fraction, default denominator",
                None,
                Some(f(5, None)),
                (5, 100),
            ),
            (
                "fraction, zero denominator is 100",
                None,
                Some(f(5, Some(0))),
                (5, 100),
            ),
            (
                "negative numerator is 0",
                None,
                Some(f(-1, Some(10))),
                (0, 10),
            ),
        ];
        for (what, p, fr, want) in cases {
            assert_eq!(mirror_share(p, fr.as_ref()), want, "{what}");
        }
        let m = |n, d| Mirror {
            target: port("shadow", 8080, ""),
            numerator: n,
            denominator: d,
        };
        // (what, mirror, the draw, hit) — the draw is below the denominator.
        let hits = [
            ("all", m(1, 1), 0, true),
            ("none", m(0, 100), 0, false),
            ("25 %, draw 24", m(25, 100), 24, true),
            ("25 %, draw 25", m(25, 100), 25, false),
            ("1 of 3, draw 0", m(1, 3), 0, true),
            ("1 of 3, draw 2", m(1, 3), 2, false),
        ];
        for (what, mirror, draw, want) in hits {
            assert_eq!(mirror_hit(&mirror, |_| draw), want, "{what}");
        }
    }

    #[test]
    fn weighted_choice() {
        let b = |w: u32| Backend {
            target: None,
            weight: w,
        };
        let cases = [
            ("nothing", vec![], 0, None),
            ("all weight 0", vec![b(0), b(0)], 0, None),
            ("70/30, draw 0", vec![b(70), b(30)], 0, Some(0)),
            ("70/30, draw 69", vec![b(70), b(30)], 69, Some(0)),
            ("70/30, draw 70", vec![b(70), b(30)], 70, Some(1)),
            ("70/30, draw 99", vec![b(70), b(30)], 99, Some(1)),
            ("weight 0 is skipped", vec![b(0), b(5)], 0, Some(1)),
            ("a draw out of range picks nothing", vec![b(1)], 5, None),
        ];
        for (what, backends, draw, want) in cases {
            assert_eq!(pick_weighted(&backends, |_| draw), want, "{what}");
        }
        // With the real random source, 70/30 lands within a wide binomial bound.
        let backends = [b(70), b(30)];
        let first = (0..10_000)
            .filter(|_| pick_weighted(&backends, |n| fastrand::u64(..n)) == Some(0))
            .count();
        assert!(
            (6_700..=7_300).contains(&first),
            "{first} of 10000 went to weight 70"
        );
    }

    #[test]
    fn hosts() {
        let cases = [
            ("web.example", "web.example"),
            ("Web.Example:18081", "web.example"),
            ("127.0.0.1:18081", "127.0.0.1"),
            ("[::1]:18081", "::1"),
            ("web.example.", "web.example"),
            ("", ""),
        ];
        for (header, want) in cases {
            assert_eq!(request_host(header), want, "{header}");
        }
    }

    #[test]
    fn selection_follows_gateway_api_precedence() {
        let spec = |hosts: serde_json::Value, rules: serde_json::Value| json!({"parentRefs": ours(), "hostnames": hosts, "rules": rules});
        let to =
            |svc: &str| json!([{"name": svc, "port": if svc == "shadow" { 8080 } else { 80 }}]);
        let mut old = route(
            "old",
            spec(
                json!([]),
                json!([
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": to("stable")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}, "headers": [{"name": "x-canary", "value": "yes"}]}], "backendRefs": to("canary")},
                    {"matches": [{"path": {"type": "Exact", "value": "/exact"}}], "backendRefs": to("canary")},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backendRefs": to("canary")},
                ]),
            ),
        );
        old.metadata.creation_timestamp = Some(Time("2026-01-01T00:00:00Z".parse().unwrap()));
        let mut new = route(
            "new",
            spec(
                json!([]),
                json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": to("shadow")}]),
            ),
        );
        new.metadata.creation_timestamp = Some(Time("2026-02-01T00:00:00Z".parse().unwrap()));
        let exact_host = route(
            "exact-host",
            spec(
                json!(["web.example"]),
                json!([{"backendRefs": to("shadow")}]),
            ),
        );
        let wildcard = route(
            "wildcard",
            spec(json!(["*.example"]), json!([{"backendRefs": to("canary")}])),
        );
        let elsewhere = route(
            "elsewhere",
            spec(
                json!(["other.test"]),
                json!([{"backendRefs": to("canary")}]),
            ),
        );
        let all = [&new, &old, &exact_host, &wildcard, &elsewhere];
        let (table, _) = build_table(&all, &gw(), &services());
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        // (what, host, path, headers, route and first backend's Service expected; None: 404)
        type Case = (
            &'static str,
            &'static str,
            &'static str,
            HeaderMap,
            Option<(&'static str, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            (
                "older route wins a tie",
                "127.0.0.1",
                "/",
                headers(&[]),
                Some(("app/old", "stable")),
            ),
            (
                "more headers win",
                "127.0.0.1",
                "/",
                headers(&[("x-canary", "yes")]),
                Some(("app/old", "canary")),
            ),
            (
                "header value must be exact",
                "127.0.0.1",
                "/",
                headers(&[("x-canary", "YES")]),
                Some(("app/old", "stable")),
            ),
            (
                "exact path wins",
                "127.0.0.1",
                "/exact",
                headers(&[("x-canary", "yes")]),
                Some(("app/old", "canary")),
            ),
            (
                "exact is exact",
                "127.0.0.1",
                "/exact/more",
                headers(&[]),
                Some(("app/old", "stable")),
            ),
            (
                "longer prefix wins",
                "127.0.0.1",
                "/api/v1",
                headers(&[]),
                Some(("app/old", "canary")),
            ),
            (
                "prefix is per segment",
                "127.0.0.1",
                "/apix",
                headers(&[]),
                Some(("app/old", "stable")),
            ),
            (
                "prefix matches itself",
                "127.0.0.1",
                "/api",
                headers(&[]),
                Some(("app/old", "canary")),
            ),
            (
                "exact hostname beats everything",
                "web.example",
                "/api",
                headers(&[]),
                Some(("app/exact-host", "shadow")),
            ),
            (
                "wildcard beats no hostnames",
                "a.b.example",
                "/",
                headers(&[]),
                Some(("app/wildcard", "canary")),
            ),
            (
                "wildcard needs a label",
                "example",
                "/",
                headers(&[]),
                Some(("app/old", "stable")),
            ),
            (
                "a route's other host",
                "other.test",
                "/",
                headers(&[]),
                Some(("app/elsewhere", "canary")),
            ),
        ];
        for (what, host, path, h, want) in cases {
            let got = select(&table, host, path, &h).map(|e| {
                (
                    e.route.as_str(),
                    e.backends[0].target.as_ref().unwrap().service.as_str(),
                )
            });
            assert_eq!(got, want, "{what}");
        }
        let only_hosts = [&exact_host];
        let (table, _) = build_table(&only_hosts, &gw(), &services());
        assert_eq!(
            select(&table, "other.test", "/", &headers(&[])),
            None,
            "no route for the host: 404"
        );
    }

    #[test]
    fn service_ports_are_indexed_by_name() {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"namespace": "app", "name": "web"},
            "spec": {"ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}, {"port": 9000}]}
        }))
        .unwrap();
        let index = service_index([&svc]);
        assert_eq!(
            index.get(&("app".into(), "web".into())),
            Some(&vec![(80, "http".to_string()), (9000, String::new())])
        );
    }
}
