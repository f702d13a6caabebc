//! Traffic through a Gateway API HTTPRoute, judged and computed as values: which of the route's
//! backends is the set's Service, the route's rules at a canary weight (and with the header
//! that pins testers to the canary), whether the gateways accepted a write, and the plan of a
//! canary whose weights the route carries.
//!
//! Every rules value is computed from the rules the route had before the rollout (kept in the
//! record), never from the route as it is: a write repeated after a kill gives the same route,
//! and the rollback writes the original rules back exactly.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::model::plan::{Plan, Step};
use crate::model::route::{HeaderPin, HttpRoute, RouteTraffic};
use crate::model::strategy::{CanaryParams, StrategyConfig, StrategyParams};
use crate::model::weight::{weight_to_pods, Percent};

use super::observed::Observed;
use super::planner::PlanError;
use super::predicates::ordinals_released;

/// A Service as the route check sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteService {
    pub name: String,
    pub selector: BTreeMap<String, String>,
    pub headless: bool,
}

/// The names of the Services the route's rules send traffic to in `namespace` (the route's).
pub fn backend_services(spec: &Value, namespace: &str) -> Vec<String> {
    let mut names: Vec<String> = rules_of(spec)
        .iter()
        .flat_map(|rule| refs_of(rule).iter())
        .filter(|r| is_service_in(r, namespace))
        .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn rules_of(spec: &Value) -> &[Value] {
    spec.get("rules")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn refs_of(rule: &Value) -> &[Value] {
    rule.get("backendRefs")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A backendRef to a core Service in `namespace` (group, kind and namespace as defaulted).
fn is_service_in(backend: &Value, namespace: &str) -> bool {
    let field = |k: &str| backend.get(k).and_then(Value::as_str);
    matches!(field("group"), None | Some(""))
        && matches!(field("kind"), None | Some("Service"))
        && field("namespace").is_none_or(|ns| ns == namespace)
}

fn refers_to(backend: &Value, service: &str, namespace: &str) -> bool {
    is_service_in(backend, namespace)
        && backend.get("name").and_then(Value::as_str) == Some(service)
}

/// The Service among the route's backends that selects the set's pods (`pod_labels`): the one
/// whose per-revision copies the rollout weighs. Refused when there is none, or more than one.
pub fn set_service(
    statefulset: &str,
    route: &str,
    spec: &Value,
    namespace: &str,
    services: &[RouteService],
    pod_labels: &BTreeMap<String, String>,
) -> Result<String, PlanError> {
    let backends = backend_services(spec, namespace);
    let selecting: Vec<&String> = backends
        .iter()
        .filter(|name| {
            services.iter().any(|s| {
                &&s.name == name
                    && !s.headless
                    && !s.selector.is_empty()
                    && s.selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
            })
        })
        .collect();
    match selecting.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(PlanError::RouteMissesSet {
            statefulset: statefulset.to_string(),
            route: route.to_string(),
            backends: if backends.is_empty() {
                "no Service in this namespace".to_string()
            } else {
                format!("only {}", backends.join(", "))
            },
        }),
        several => Err(PlanError::RouteAmbiguous {
            statefulset: statefulset.to_string(),
            route: route.to_string(),
            services: several
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What the route's rules are at one canary weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weights<'a> {
    /// The Service the original rules send the set's traffic to.
    pub service: &'a str,
    pub namespace: &'a str,
    pub stable: &'a str,
    pub canary: &'a str,
    pub canary_percent: u32,
    /// Requests with this header go to the canary alone.
    pub pin: Option<&'a HeaderPin>,
}

/// The route's `rules` at a weight, from the original `rules`: every backendRef to the set's
/// Service becomes two, the stable and the canary Service, whose weights split the original
/// one's in `canary_percent`; other backends keep their share (their weights times 100).
/// With a pin, each such rule gets a twin before it whose matches also require the header
/// and whose only backend is the canary.
pub fn weighted_rules(original: &Value, w: &Weights<'_>) -> Value {
    let Some(rules) = original.as_array() else {
        return original.clone();
    };
    let canary = u64::from(w.canary_percent.min(100));
    let mut out = Vec::with_capacity(rules.len() * 2);
    for rule in rules {
        let refs = refs_of(rule);
        if !refs.iter().any(|r| refers_to(r, w.service, w.namespace)) {
            out.push(rule.clone());
            continue;
        }
        let weight_of = |r: &Value| r.get("weight").and_then(Value::as_u64).unwrap_or(1);
        if let Some(pin) = w.pin {
            out.push(pinned_rule(
                rule,
                pin,
                (w.service, w.namespace),
                (w.canary, "canary"),
            ));
        }
        let mut weighted = rule.clone();
        let new_refs: Vec<Value> = refs
            .iter()
            .flat_map(|r| {
                let weight = weight_of(r);
                if refers_to(r, w.service, w.namespace) {
                    vec![
                        renamed(r, w.stable, Some(weight * (100 - canary))),
                        renamed(r, w.canary, Some(weight * canary)),
                    ]
                } else {
                    let mut other = r.clone();
                    if let Some(o) = other.as_object_mut() {
                        o.insert("weight".into(), json!(weight * 100));
                    }
                    vec![other]
                }
            })
            .collect();
        if let Some(o) = weighted.as_object_mut() {
            o.insert("backendRefs".into(), Value::Array(new_refs));
        }
        out.push(weighted);
    }
    Value::Array(out)
}

/// The copy of `rule` that pins requests with the header `pin` to the Service `to`: its matches
/// (or `/` when it has none) each also require the header, and its backends are those of
/// `rule` to the set's Service (`set`: name and namespace), renamed to `to.0`. A more specific
/// match than the rule's own, so a gateway picks it for those requests. A named rule's copy
/// gets a name of its own (`<name>-<to.1>-pin`, `to.1` saying what the Service is).
fn pinned_rule(rule: &Value, pin: &HeaderPin, set: (&str, &str), to: (&str, &str)) -> Value {
    let refs: Vec<Value> = refs_of(rule)
        .iter()
        .filter(|r| refers_to(r, set.0, set.1))
        .map(|r| renamed(r, to.0, Some(1)))
        .collect();
    let matches: Vec<Value> = match rule.get("matches").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m.clone(),
        _ => vec![json!({"path": {"type": "PathPrefix", "value": "/"}})],
    };
    let header = json!({"type": "Exact", "name": pin.name, "value": pin.value});
    let matches: Vec<Value> = matches
        .into_iter()
        .map(|mut m| {
            if let Some(o) = m.as_object_mut() {
                match o.get_mut("headers").and_then(Value::as_array_mut) {
                    Some(headers) => headers.push(header.clone()),
                    None => {
                        o.insert("headers".into(), json!([header.clone()]));
                    }
                }
            }
            m
        })
        .collect();
    let mut pinned = rule.clone();
    if let Some(o) = pinned.as_object_mut() {
        o.insert("matches".into(), Value::Array(matches));
        o.insert("backendRefs".into(), Value::Array(refs));
        if let Some(name) = o.get("name").and_then(Value::as_str) {
            let name = format!("{name}-{}-pin", to.1);
            o.insert("name".into(), json!(name));
        }
    }
    pinned
}

/// A backendRef with another Service name (and, when given, another weight).
fn renamed(backend: &Value, name: &str, weight: Option<u64>) -> Value {
    let mut backend = backend.clone();
    if let Some(o) = backend.as_object_mut() {
        o.insert("name".into(), json!(name));
        if let Some(weight) = weight {
            o.insert("weight".into(), json!(weight));
        }
    }
    backend
}

/// Blue/green's preview on the route, from the original `rules`: each rule that sends traffic
/// to the set's Service `service` gets a copy before it that sends the requests carrying the
/// header `pin` to green's preview Service `preview`; every other request goes as before.
pub fn preview_rules(
    original: &Value,
    service: &str,
    namespace: &str,
    preview: &str,
    pin: &HeaderPin,
) -> Value {
    let Some(rules) = original.as_array() else {
        return original.clone();
    };
    let mut out = Vec::with_capacity(rules.len() * 2);
    for rule in rules {
        if refs_of(rule)
            .iter()
            .any(|r| refers_to(r, service, namespace))
        {
            out.push(pinned_rule(
                rule,
                pin,
                (service, namespace),
                (preview, "preview"),
            ));
        }
        out.push(rule.clone());
    }
    Value::Array(out)
}

/// Blue/green's switch on the route, from the original `rules`: every backendRef to the set's
/// Service `service` names green's Service `to` instead, with its weight; nothing else moves.
/// One write of these rules moves all of the route's traffic at once.
pub fn switched_rules(original: &Value, service: &str, namespace: &str, to: &str) -> Value {
    let Some(rules) = original.as_array() else {
        return original.clone();
    };
    let out = rules
        .iter()
        .map(|rule| {
            let refs: Vec<Value> = refs_of(rule)
                .iter()
                .map(|r| {
                    if refers_to(r, service, namespace) {
                        renamed(r, to, None)
                    } else {
                        r.clone()
                    }
                })
                .collect();
            let mut rule = rule.clone();
            if let (Some(o), false) = (rule.as_object_mut(), refs.is_empty()) {
                o.insert("backendRefs".into(), Value::Array(refs));
            }
            rule
        })
        .collect();
    Value::Array(out)
}

/// The route's `rules` with a shadow's mirror, from the original `rules`: every rule that
/// sends traffic to the set's Service `service` gets a `RequestMirror` filter whose backend is
/// the shadow's Service `mirror` (on the port of the set's backendRef), copying `percent` of
/// its requests (all when `None`). Backends and weights stay as they were: users get stable's
/// answers only.
pub fn mirrored_rules(
    original: &Value,
    service: &str,
    namespace: &str,
    mirror: &str,
    percent: Option<Percent>,
) -> Value {
    let Some(rules) = original.as_array() else {
        return original.clone();
    };
    let out = rules
        .iter()
        .map(|rule| {
            let Some(set_ref) = refs_of(rule)
                .iter()
                .find(|r| refers_to(r, service, namespace))
            else {
                return rule.clone();
            };
            let mut backend = json!({"name": mirror});
            if let Some(port) = set_ref.get("port") {
                backend["port"] = port.clone();
            }
            let mut filter =
                json!({"type": "RequestMirror", "requestMirror": {"backendRef": backend}});
            if let Some(p) = percent {
                filter["requestMirror"]["percent"] = json!(p.get());
            }
            let mut rule = rule.clone();
            if let Some(o) = rule.as_object_mut() {
                match o.get_mut("filters").and_then(Value::as_array_mut) {
                    Some(filters) => filters.push(filter),
                    None => {
                        o.insert("filters".into(), json!([filter]));
                    }
                }
            }
            rule
        })
        .collect();
    Value::Array(out)
}

/// The Gateway API feature a GatewayClass lacks for a mirror (with a percent or not), judged
/// on its `status.supportedFeatures` (names, or `{name: ...}` objects in Gateway API 1.2 and
/// later). `None` when it lists the feature, or lists nothing (then its gateway's verdict on
/// the route is all there is to go by).
pub fn missing_mirror_feature(
    class_status: Option<&Value>,
    percent: Option<Percent>,
) -> Option<&'static str> {
    use crate::model::route::{MIRROR_FEATURE, PERCENT_MIRROR_FEATURE};
    let listed: Vec<&str> = class_status
        .and_then(|s| s.get("supportedFeatures"))
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|f| f.as_str().or_else(|| f.get("name").and_then(Value::as_str)))
        .collect();
    let needed = [
        Some(MIRROR_FEATURE),
        percent.map(|_| PERCENT_MIRROR_FEATURE),
    ];
    needed
        .into_iter()
        .flatten()
        .find(|feature| !listed.contains(feature))
}

/// The Gateways a route names in `spec.parentRefs` (namespace, name); other kinds of parent
/// are left out.
pub fn parent_gateways(spec: &Value, own_namespace: &str) -> Vec<(String, String)> {
    spec.get("parentRefs")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|p| {
            let field = |k: &str| p.get(k).and_then(Value::as_str);
            matches!(
                field("group"),
                None | Some(crate::model::route::GATEWAY_GROUP)
            ) && matches!(field("kind"), None | Some("Gateway"))
        })
        .filter_map(|p| {
            let name = p.get("name").and_then(Value::as_str)?;
            let ns = p
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or(own_namespace);
            Some((ns.to_string(), name.to_string()))
        })
        .collect()
}

/// What the gateways said about a route write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteVerdict {
    /// Every parent gateway has `Accepted` and `ResolvedRefs` True for this generation.
    Accepted,
    /// A gateway set one of them False: its words.
    Rejected(String),
    /// Not every gateway has answered for this generation yet: who is missing.
    Pending(String),
}

/// Judges `route`'s `status.parents` for the parents its spec names, at `generation` (the one
/// the write produced) or later.
pub fn route_verdict(route: &HttpRoute, generation: i64) -> RouteVerdict {
    let own_ns = route.metadata.namespace.as_deref().unwrap_or_default();
    let parents: &[Value] = route
        .spec
        .get("parentRefs")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let statuses: &[Value] = route
        .status
        .as_ref()
        .and_then(|s| s.get("parents"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    if parents.is_empty() {
        return RouteVerdict::Rejected(
            "the route names no parent gateway (spec.parentRefs is empty), so no gateway serves it"
                .to_string(),
        );
    }
    let key = |r: &Value| {
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let ns = r
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(own_ns)
            .to_string();
        (ns, s("name"), s("sectionName"))
    };
    let mut pending = Vec::new();
    for parent in parents {
        let wanted = key(parent);
        let label = format!("{}/{}", wanted.0, wanted.1);
        let entries: Vec<&Value> = statuses
            .iter()
            .filter(|p| p.get("parentRef").map(key).as_ref() == Some(&wanted))
            .collect();
        let mut accepted = false;
        for entry in &entries {
            let conditions: &[Value] = entry
                .get("conditions")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice);
            let current = |c: &&Value| {
                c.get("observedGeneration")
                    .and_then(Value::as_i64)
                    .is_some_and(|g| g >= generation)
            };
            let status_of = |kind: &str| {
                conditions
                    .iter()
                    .filter(current)
                    .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
            };
            for kind in ["Accepted", "ResolvedRefs"] {
                if let Some(c) = status_of(kind) {
                    if c.get("status").and_then(Value::as_str) == Some("False") {
                        let text = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default();
                        let controller = entry
                            .get("controllerName")
                            .and_then(Value::as_str)
                            .unwrap_or("the gateway");
                        return RouteVerdict::Rejected(format!(
                            "gateway {label} ({controller}) set {kind}=False, reason {}: {}",
                            text("reason"),
                            text("message")
                        ));
                    }
                }
            }
            let is_true = |kind: &str| {
                status_of(kind).and_then(|c| c.get("status").and_then(Value::as_str))
                    == Some("True")
            };
            accepted |= is_true("Accepted") && is_true("ResolvedRefs");
        }
        if !accepted {
            pending.push(label);
        }
    }
    if pending.is_empty() {
        RouteVerdict::Accepted
    } else {
        RouteVerdict::Pending(format!(
            "no Accepted and ResolvedRefs status for generation {generation} of the route from gateway(s) {}",
            pending.join(", ")
        ))
    }
}

/// The plan of a canary whose weights the route carries: the pods move as few as each weight
/// needs (the closest count, at least one, never all before the end), gated; then the route's
/// weight moves to exactly the asked share. At the end the route sends everything to the
/// canary while the last pods roll, then gets its own rules back (its Service now selects
/// only new pods) and the per-revision Services go.
pub fn plan_route_canary(
    config: &StrategyConfig,
    observed: &Observed,
    traffic: &RouteTraffic,
) -> Result<Plan, PlanError> {
    let replicas = observed.replicas;
    if replicas < 2 {
        return Err(PlanError::RouteNeedsTwoPods {
            statefulset: observed.name.clone(),
            replicas,
        });
    }
    let (weights, pause) = match &config.params {
        StrategyParams::Canary(CanaryParams::Hold { weight, pause }) => {
            (vec![*weight], Some(*pause))
        }
        StrategyParams::Canary(CanaryParams::Steps { weights, pause }) => (weights.clone(), *pause),
        _ => {
            return Err(PlanError::RouteOnlyCanary {
                statefulset: observed.name.clone(),
                strategy: config.kind().as_str(),
            })
        }
    };
    let gate = config.gates.any();
    let pin = traffic.canary_header.is_some();
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    let released = observed.released();
    if !observed.target_applied {
        steps.push(Step::SetTemplateAndFreeze {
            partition: replicas,
        });
    }
    steps.push(Step::CreateRevisionServices);
    let mut pods_now = released;
    let move_pods = |steps: &mut Vec<Step>, pods: u32, pods_now: &mut u32| {
        if pods <= *pods_now {
            return;
        }
        let partition = replicas - pods;
        let ordinals = ordinals_released(
            replicas,
            observed.ordinal_start,
            replicas - *pods_now,
            partition,
        );
        steps.push(Step::SetPartition {
            partition,
            ordinals: ordinals.clone(),
            updated: pods,
            weight: None,
        });
        if gate {
            steps.push(Step::gate(ordinals));
        }
        *pods_now = pods;
    };
    let mut pinned_yet = false;
    for weight in weights.iter().filter(|w| w.get() < 100) {
        let pods = weight_to_pods(*weight, replicas)
            .pods
            .clamp(1, replicas - 1);
        move_pods(&mut steps, pods, &mut pods_now);
        if pin && !pinned_yet {
            // Testers reach the canary by the header before any weight moves.
            steps.push(Step::SetRouteWeights {
                canary_percent: Percent::ZERO,
                pods: pods_now,
            });
            if let Some(wait) = pause {
                steps.push(Step::Pause { wait });
            }
            pinned_yet = true;
        }
        steps.push(Step::SetRouteWeights {
            canary_percent: *weight,
            pods: pods_now,
        });
        if let Some(wait) = pause {
            steps.push(Step::Pause { wait });
        }
    }
    if weights.iter().any(|w| w.get() == 100) && weights.len() > 1 {
        notes.push(
            "100% is the end: the route sends every request to the canary while the last pods move"
                .to_string(),
        );
    }
    if weights.iter().all(|w| w.get() == 100) {
        // No partial weight: the canary pods get what they need first.
        move_pods(&mut steps, replicas - 1, &mut pods_now);
    }
    steps.push(Step::SetRouteWeights {
        canary_percent: Percent::HUNDRED,
        pods: pods_now,
    });
    move_pods(&mut steps, replicas, &mut pods_now);
    steps.push(Step::RestoreRoute);
    steps.push(Step::RemoveRevisionServices);
    Ok(Plan {
        statefulset: observed.name.clone(),
        strategy: config.kind(),
        replicas,
        ordinal_start: observed.ordinal_start,
        pod_management_policy: observed.pod_management_policy,
        steps,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gate::GateSpec;
    use crate::model::plan::PodManagementPolicy;
    use crate::model::strategy::{OnFailure, StrategyFlags, StrategyKind, Timeouts};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn svc(name: &str, selector: &[(&str, &str)], headless: bool) -> RouteService {
        RouteService {
            name: name.into(),
            selector: labels(selector),
            headless,
        }
    }

    fn spec(backends: Value) -> Value {
        json!({
            "parentRefs": [{"name": "gw", "namespace": "infra"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backends}],
        })
    }

    #[test]
    fn the_set_service_is_the_backend_that_selects_its_pods() {
        let pods = labels(&[("app", "web"), ("tier", "front")]);
        let services = [
            svc("web", &[("app", "web")], false),
            svc("web-headless", &[("app", "web")], true),
            svc("db", &[("app", "db")], false),
            svc("web2", &[("tier", "front")], false),
        ];
        let one =
            |backends: Value| set_service("web", "r", &spec(backends), "shop", &services, &pods);
        let cases: Vec<(Value, Result<&str, &str>)> = vec![
            (json!([{"name": "web", "port": 80}]), Ok("web")),
            (
                json!([{"name": "db", "port": 80}, {"name": "web", "port": 80}]),
                Ok("web"),
            ),
            (
                json!([{"name": "web", "port": 80, "group": "", "kind": "Service", "namespace": "shop"}]),
                Ok("web"),
            ),
            (json!([{"name": "db", "port": 80}]), Err("only db")),
            (
                json!([{"name": "web-headless", "port": 80}]),
                Err("only web-headless"),
            ),
            (
                json!([{"name": "web", "port": 80, "namespace": "other"}]),
                Err("no Service in this namespace"),
            ),
            (
                json!([{"name": "web", "kind": "Backend", "group": "x.io"}]),
                Err("no Service in this namespace"),
            ),
            (
                json!([{"name": "web", "port": 80}, {"name": "web2", "port": 80}]),
                Err("several"),
            ),
        ];
        for (backends, want) in cases {
            let got = one(backends.clone());
            match (got, want) {
                (Ok(name), Ok(w)) => assert_eq!(name, w, "{backends}"),
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{backends}: {e}"),
                (got, want) => panic!("{backends}: {got:?}, wanted {want:?}"),
            }
        }
    }

    fn weights(percent: u32, pin: Option<&HeaderPin>) -> Weights<'_> {
        Weights {
            service: "web",
            namespace: "shop",
            stable: "web-stable",
            canary: "web-canary",
            canary_percent: percent,
            pin,
        }
    }

    #[test]
    fn weights_split_the_set_service_and_keep_everything_else() {
        let original = json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
             "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "a", "value": "b"}]}}],
             "backendRefs": [{"name": "web", "port": 8080, "weight": 3}, {"name": "legacy", "port": 80}]},
            {"backendRefs": [{"name": "other", "port": 80}]},
        ]);
        let at5 = weighted_rules(&original, &weights(5, None));
        assert_eq!(
            at5[0]["backendRefs"],
            json!([
                {"name": "web-stable", "port": 8080, "weight": 285},
                {"name": "web-canary", "port": 8080, "weight": 15},
                {"name": "legacy", "port": 80, "weight": 100},
            ])
        );
        assert_eq!(at5[0]["filters"], original[0]["filters"]);
        assert_eq!(at5[0]["matches"], original[0]["matches"]);
        assert_eq!(
            at5[1], original[1],
            "a rule without the set's Service is untouched"
        );
        let cases = [
            (0, 100, 0),
            (25, 75, 25),
            (50, 50, 50),
            (100, 0, 100),
            (150, 0, 100),
        ];
        for (percent, stable, canary) in cases {
            let rules = weighted_rules(
                &json!([{"backendRefs": [{"name": "web", "port": 80}]}]),
                &weights(percent, None),
            );
            let refs = &rules[0]["backendRefs"];
            assert_eq!(refs[0]["weight"], stable, "{percent}");
            assert_eq!(refs[1]["weight"], canary, "{percent}");
        }
        // Computed from the original every time: the same step twice gives the same rules.
        assert_eq!(weighted_rules(&original, &weights(5, None)), at5);
        assert_eq!(weighted_rules(&json!(null), &weights(5, None)), json!(null));
    }

    #[test]
    fn a_header_pin_adds_a_rule_to_the_canary_alone() {
        let pin: HeaderPin = "X-Canary=always".parse().unwrap_or_else(|e| panic!("{e}"));
        let original = json!([
            {"name": "main", "backendRefs": [{"name": "web", "port": 80}]},
            {"matches": [{"path": {"type": "Exact", "value": "/x"}, "headers": [{"name": "a", "value": "1"}]}],
             "backendRefs": [{"name": "web", "port": 80}]},
        ]);
        let rules = weighted_rules(&original, &weights(0, Some(&pin)));
        let rules = rules.as_array().cloned().unwrap_or_default();
        assert_eq!(rules.len(), 4);
        assert_eq!(
            rules[0],
            json!({"name": "main-canary-pin",
                   "matches": [{"path": {"type": "PathPrefix", "value": "/"},
                                "headers": [{"type": "Exact", "name": "X-Canary", "value": "always"}]}],
                   "backendRefs": [{"name": "web-canary", "port": 80, "weight": 1}]})
        );
        assert_eq!(rules[1]["backendRefs"][1]["weight"], 0);
        assert_eq!(
            rules[2]["matches"][0]["headers"],
            json!([{"name": "a", "value": "1"}, {"type": "Exact", "name": "X-Canary", "value": "always"}])
        );
        assert_eq!(
            rules[2]["matches"][0]["path"],
            json!({"type": "Exact", "value": "/x"})
        );
    }

    #[test]
    fn blue_greens_preview_adds_a_header_rule_to_green_and_leaves_the_rest() {
        let pin: HeaderPin = "X-Preview=yes".parse().unwrap_or_else(|e| panic!("{e}"));
        let original = json!([
            {"name": "main", "matches": [{"path": {"type": "PathPrefix", "value": "/app"}}],
             "backendRefs": [{"name": "web", "port": 80, "weight": 3}, {"name": "legacy", "port": 80}]},
            {"backendRefs": [{"name": "other", "port": 80}]},
            {"backendRefs": [{"name": "web", "namespace": "elsewhere", "port": 80}]},
        ]);
        let rules = preview_rules(&original, "web", "shop", "web-preview", &pin);
        assert_eq!(
            rules,
            json!([
                {"name": "main-preview-pin",
                 "matches": [{"path": {"type": "PathPrefix", "value": "/app"},
                              "headers": [{"type": "Exact", "name": "X-Preview", "value": "yes"}]}],
                 "backendRefs": [{"name": "web-preview", "port": 80, "weight": 1}]},
                original[0], original[1], original[2],
            ])
        );
        // From the original every time: the same step twice gives the same rules.
        assert_eq!(
            preview_rules(&original, "web", "shop", "web-preview", &pin),
            rules
        );
        assert_eq!(
            preview_rules(&json!(null), "web", "shop", "web-preview", &pin),
            json!(null)
        );
    }

    #[test]
    fn blue_greens_switch_renames_the_set_service_in_every_rule_and_nothing_else() {
        let original = json!([
            {"name": "main", "filters": [{"type": "RequestHeaderModifier"}],
             "backendRefs": [{"name": "web", "port": 80, "weight": 3}, {"name": "legacy", "port": 80}]},
            {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
             "backendRefs": [{"kind": "Service", "group": "", "name": "web", "port": 8080}]},
            {"backendRefs": [{"name": "web", "namespace": "elsewhere", "port": 80}]},
            {"backendRefs": [{"name": "web", "kind": "Other", "port": 80}]},
            {"matches": [{"path": {"type": "Exact", "value": "/none"}}]},
        ]);
        let rules = switched_rules(&original, "web", "shop", "web-preview");
        assert_eq!(
            rules,
            json!([
                {"name": "main", "filters": [{"type": "RequestHeaderModifier"}],
                 "backendRefs": [{"name": "web-preview", "port": 80, "weight": 3}, {"name": "legacy", "port": 80}]},
                {"matches": [{"path": {"type": "Exact", "value": "/x"}}],
                 "backendRefs": [{"kind": "Service", "group": "", "name": "web-preview", "port": 8080}]},
                original[2], original[3], original[4],
            ])
        );
        assert_eq!(
            switched_rules(&json!(null), "web", "shop", "web-preview"),
            json!(null)
        );
    }

    fn route(status: Value, generation: i64) -> HttpRoute {
        HttpRoute {
            metadata: ObjectMeta {
                name: Some("r".into()),
                namespace: Some("shop".into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: spec(json!([{"name": "web", "port": 80}])),
            status: Some(status),
        }
    }

    fn parent(conditions: Value) -> Value {
        json!({"parents": [{"parentRef": {"name": "gw", "namespace": "infra"},
                            "controllerName": "example.io/gw", "conditions": conditions}]})
    }

    fn cond(kind: &str, status: &str, generation: i64) -> Value {
        json!({"type": kind, "status": status, "observedGeneration": generation,
               "reason": if status == "True" { kind } else { "UnsupportedValue" },
               "message": if status == "True" { "ok" } else { "unsupported filter RequestMirror" }})
    }

    #[test]
    fn the_gateways_verdict_counts_only_for_the_generation_written() {
        let both = |g: i64, a: &str, r: &str| {
            parent(json!([cond("Accepted", a, g), cond("ResolvedRefs", r, g)]))
        };
        let cases: Vec<(Value, &str)> = vec![
            (both(3, "True", "True"), "accepted"),
            (both(4, "True", "True"), "accepted"),
            (both(2, "True", "True"), "pending"),
            (both(3, "False", "True"), "rejected"),
            (both(3, "True", "False"), "rejected"),
            (both(2, "False", "True"), "pending"),
            (parent(json!([cond("Accepted", "True", 3)])), "pending"),
            (both(3, "Unknown", "True"), "pending"),
            (json!({}), "pending"),
            (
                json!({"parents": [{"parentRef": {"name": "gw"}, "conditions": [cond("Accepted", "True", 3), cond("ResolvedRefs", "True", 3)]}]}),
                "pending",
            ),
        ];
        for (status, want) in cases {
            let verdict = route_verdict(&route(status.clone(), 3), 3);
            let got = match &verdict {
                RouteVerdict::Accepted => "accepted",
                RouteVerdict::Rejected(_) => "rejected",
                RouteVerdict::Pending(_) => "pending",
            };
            assert_eq!(got, want, "{status}: {verdict:?}");
        }
        let RouteVerdict::Rejected(words) = route_verdict(&route(both(3, "False", "True"), 3), 3)
        else {
            panic!("not rejected")
        };
        assert_eq!(
            words,
            "gateway infra/gw (example.io/gw) set Accepted=False, reason UnsupportedValue: unsupported filter RequestMirror"
        );
        let mut orphan = route(both(3, "True", "True"), 3);
        orphan.spec = json!({"rules": []});
        assert!(matches!(
            route_verdict(&orphan, 3),
            RouteVerdict::Rejected(_)
        ));
    }

    fn canary(
        steps: Option<&str>,
        weight: Option<u32>,
        pause: Option<&str>,
        header: bool,
    ) -> (StrategyConfig, RouteTraffic) {
        let traffic = RouteTraffic {
            route: "r".into(),
            namespace: None,
            canary_header: header.then(|| HeaderPin {
                name: "X-Canary".into(),
                value: "1".into(),
            }),
            mirror_percent: None,
        };
        let flags = StrategyFlags {
            steps: steps.map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))),
            weight: weight.and_then(|w| Percent::new(w).ok()),
            pause: pause.map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}"))),
            traffic: Some(Box::new(traffic.clone())),
            ..StrategyFlags::default()
        };
        let config = StrategyConfig::new(
            StrategyKind::Canary,
            &flags,
            GateSpec::default(),
            Timeouts::default(),
            OnFailure::Rollback,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        (config, traffic)
    }

    /// `F3` freeze, `S` revision Services, `P2` partition, `G` gate, `R5` route weight 5,
    /// `W` pause, `O` route restored, `X` revision Services removed.
    fn shape(plan: &Plan) -> String {
        plan.steps
            .iter()
            .map(|s| match s {
                Step::SetTemplateAndFreeze { partition } => format!("F{partition}"),
                Step::CreateRevisionServices => "S".into(),
                Step::SetPartition { partition, .. } => format!("P{partition}"),
                Step::Gate { .. } => "G".into(),
                Step::SetRouteWeights {
                    canary_percent,
                    pods,
                } => format!("R{}/{pods}", canary_percent.get()),
                Step::Pause { .. } => "W".into(),
                Step::RestoreRoute => "O".into(),
                Step::RemoveRevisionServices => "X".into(),
                other => other.name().to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn canary_plans_through_a_route() {
        let observed = |replicas| Observed {
            name: "web".into(),
            replicas,
            update_strategy: "RollingUpdate".into(),
            pod_management_policy: PodManagementPolicy::Parallel,
            ..Observed::default()
        };
        let cases = [
            // The pods move as the weights need (1 of 3 for 5 % and 25 %, 2 for 50 %), the
            // route carries the exact weights.
            (
                (Some("5,25,50"), None, Some("promote"), false),
                3,
                "F3 S P2 G R5/1 W R25/1 W P1 G R50/2 W R100/2 P0 G O X",
            ),
            (
                (Some("5,25,50"), None, None, false),
                3,
                "F3 S P2 G R5/1 R25/1 P1 G R50/2 R100/2 P0 G O X",
            ),
            (
                (None, Some(20), Some("promote"), false),
                3,
                "F3 S P2 G R20/1 W R100/1 P0 G O X",
            ),
            (
                (None, Some(5), Some("promote"), true),
                10,
                "F10 S P9 G R0/1 W R5/1 W R100/1 P0 G O X",
            ),
            (
                (Some("10,100"), None, None, false),
                4,
                "F4 S P3 G R10/1 R100/1 P0 G O X",
            ),
            (
                (Some("100"), None, None, false),
                4,
                "F4 S P1 G R100/3 P0 G O X",
            ),
        ];
        for ((steps, weight, pause, header), replicas, want) in cases {
            let (config, traffic) = canary(steps, weight, pause, header);
            let plan = plan_route_canary(&config, &observed(replicas), &traffic)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(shape(&plan), want, "{steps:?} {weight:?} on {replicas}");
        }
        let (config, traffic) = canary(Some("5"), None, None, false);
        assert!(matches!(
            plan_route_canary(&config, &observed(1), &traffic),
            Err(PlanError::RouteNeedsTwoPods { .. })
        ));
    }

    #[test]
    fn the_plan_says_both_shares() {
        let (config, traffic) = canary(Some("5,25,50"), None, Some("promote"), false);
        let observed = Observed {
            name: "web".into(),
            replicas: 3,
            ..Observed::default()
        };
        let plan =
            plan_route_canary(&config, &observed, &traffic).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plan.describe_step(&plan.steps[4]),
            "set the route's weights: canary: 1/3 pods (33.3%), traffic 5%"
        );
    }

    #[test]
    fn a_mirror_is_a_filter_on_the_rules_of_the_sets_service_only() {
        let original = json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
             "backendRefs": [{"name": "other", "port": 80}]},
            {"filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}],
             "backendRefs": [{"name": "web", "port": 8080, "weight": 3}]},
            {"backendRefs": [{"name": "web"}]},
        ]);
        let out = mirrored_rules(&original, "web", "shop", "web-preview", None);
        assert_eq!(out[0], original[0], "a rule of another Service is kept");
        assert_eq!(out[1]["backendRefs"], original[1]["backendRefs"]);
        assert_eq!(
            out[1]["filters"],
            json!([
                original[1]["filters"][0],
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "web-preview", "port": 8080}}}
            ])
        );
        assert_eq!(
            out[2]["filters"],
            json!([{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "web-preview"}}}])
        );
        let ten = Percent::new(10).ok();
        let out = mirrored_rules(&original, "web", "shop", "web-preview", ten);
        assert_eq!(out[2]["filters"][0]["requestMirror"]["percent"], json!(10));
        // Another namespace's `web` is not the set's Service.
        let elsewhere = json!([{"backendRefs": [{"name": "web", "namespace": "other"}]}]);
        assert_eq!(
            mirrored_rules(&elsewhere, "web", "shop", "web-preview", None),
            elsewhere
        );
    }

    #[test]
    fn the_mirror_needs_its_features_listed_when_the_class_lists_any() {
        let strings =
            json!({"supportedFeatures": ["Gateway", "HTTPRoute", "HTTPRouteRequestMirror"]});
        let objects = json!({"supportedFeatures": [{"name": "HTTPRoute"}, {"name": "HTTPRouteRequestMirror"}, {"name": "HTTPRouteRequestPercentageMirror"}]});
        let traefik = json!({"supportedFeatures": ["Gateway", "HTTPRoute", "HTTPRouteResponseHeaderModification"]});
        let ten = Percent::new(10).ok();
        let cases: &[(Option<&Value>, Option<Percent>, Option<&str>)] = &[
            (Some(&strings), None, None),
            (
                Some(&strings),
                ten,
                Some("HTTPRouteRequestPercentageMirror"),
            ),
            (Some(&objects), ten, None),
            (Some(&traefik), None, Some("HTTPRouteRequestMirror")),
            (Some(&traefik), ten, Some("HTTPRouteRequestMirror")),
            // Nothing listed: the gateway's verdict on the route decides.
            (Some(&json!({})), ten, None),
            (None, None, None),
        ];
        for (status, percent, missing) in cases {
            assert_eq!(
                missing_mirror_feature(*status, *percent),
                *missing,
                "{status:?} {percent:?}"
            );
        }
    }

    #[test]
    fn parent_gateways_default_to_the_routes_namespace() {
        let spec = json!({"parentRefs": [
            {"name": "a"},
            {"name": "b", "namespace": "gw", "sectionName": "http"},
            {"name": "svc", "kind": "Service", "group": ""},
        ]});
        assert_eq!(
            parent_gateways(&spec, "shop"),
            [
                ("shop".to_string(), "a".to_string()),
                ("gw".to_string(), "b".to_string())
            ]
        );
    }
}
