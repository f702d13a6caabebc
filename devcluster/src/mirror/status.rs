//! The statuses this gateway writes, computed as values: a route's `status.parents` entries for
//! our Gateway (`Accepted`, `ResolvedRefs`), merged with the entries of other controllers, and
//! the Gateway's and GatewayClass's conditions. A patch is `None` when nothing but the time
//! would change, so the gateway's own writes do not wake it into writing again.

use serde_json::{json, Value};

use super::api::HttpRoute;
use super::routing::{ParentCheck, Problem};

/// One condition, keeping the previous `lastTransitionTime` when the status did not change.
pub fn condition(
    type_: &str,
    outcome: &Result<(), Problem>,
    ok_reason: &str,
    ok_message: &str,
    generation: i64,
    previous: &[Value],
    now: &str,
) -> Value {
    let (status, reason, message) = match outcome {
        Ok(()) => ("True", ok_reason, ok_message.to_string()),
        Err(p) => ("False", p.reason, p.message.clone()),
    };
    let since = previous
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == status)
        .and_then(|c| c["lastTransitionTime"].as_str())
        .unwrap_or(now);
    json!({
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    })
}

/// Our `status.parents` entry for one parent reference.
pub fn parent_status(
    check: &ParentCheck,
    controller: &str,
    generation: i64,
    previous: &[Value],
    now: &str,
) -> Value {
    json!({
        "parentRef": check.parent,
        "controllerName": controller,
        "conditions": [
            condition("Accepted", &check.accepted, "Accepted", "served by the devcluster's mirror gateway", generation, previous, now),
            condition("ResolvedRefs", &check.resolved, "ResolvedRefs", "every backend reference resolved", generation, previous, now),
        ],
    })
}

/// A status (sub-resource) merge patch giving `route` exactly `checks` as our entries, beside the
/// entries of other controllers; `None` when the route already says that. The patch carries the
/// route's resourceVersion, so a write over a newer route fails and is redone from the newer one.
pub fn route_status_patch(
    route: &HttpRoute,
    checks: &[ParentCheck],
    controller: &str,
    now: &str,
) -> Option<Value> {
    let parents: &[Value] = route
        .status
        .as_ref()
        .map(|s| s.parents.as_slice())
        .unwrap_or(&[]);
    let is_ours = |p: &&Value| p["controllerName"] == controller;
    let generation = route.metadata.generation.unwrap_or(0);
    let ours: Vec<Value> = checks
        .iter()
        .map(|c| {
            let parent = serde_json::to_value(&c.parent).unwrap_or(Value::Null);
            let previous: Vec<Value> = parents
                .iter()
                .filter(is_ours)
                .find(|p| p["parentRef"] == parent)
                .and_then(|p| p["conditions"].as_array().cloned())
                .unwrap_or_default();
            parent_status(c, controller, generation, &previous, now)
        })
        .collect();
    let before: Vec<&Value> = parents.iter().filter(is_ours).collect();
    if before.len() == ours.len() && before.iter().zip(&ours).all(|(a, b)| same_but_time(a, b)) {
        return None;
    }
    let mut all: Vec<Value> = parents.iter().filter(|p| !is_ours(p)).cloned().collect();
    all.extend(ours);
    Some(json!({
        "metadata": {"resourceVersion": route.metadata.resource_version},
        "status": {"parents": all},
    }))
}

/// Equal once every `lastTransitionTime` is left out.
pub fn same_but_time(a: &Value, b: &Value) -> bool {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(k, _)| *k != "lastTransitionTime")
                    .map(|(k, v)| (k.clone(), strip(v)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            other => other.clone(),
        }
    }
    strip(a) == strip(b)
}

/// The Gateway's status: served on `address`, its listener with `attached` routes.
pub fn gateway_status(
    listener: &str,
    address: &str,
    attached: usize,
    generation: i64,
    previous: &Value,
    now: &str,
) -> Value {
    let empty = Vec::new();
    let previous_conditions = previous["conditions"].as_array().unwrap_or(&empty);
    let previous_listener = previous["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .and_then(|l| l["conditions"].as_array())
        .unwrap_or(&empty);
    let ok = Ok(());
    let cond =
        |t: &str, msg: &str, prev: &[Value]| condition(t, &ok, t, msg, generation, prev, now);
    json!({
        "addresses": [{"type": "IPAddress", "value": address}],
        "conditions": [
            cond("Accepted", "accepted by the devcluster's mirror gateway", previous_conditions),
            cond("Programmed", "serving HTTP on the address", previous_conditions),
        ],
        "listeners": [{
            "name": listener,
            "supportedKinds": [{"group": super::api::GROUP, "kind": "HTTPRoute"}],
            "attachedRoutes": attached,
            "conditions": [
                cond("Accepted", "HTTP listener", previous_listener),
                cond("Programmed", "serving", previous_listener),
                cond("ResolvedRefs", "nothing to resolve", previous_listener),
            ],
        }],
    })
}

/// The GatewayClass's status: accepted by this controller.
/// The Gateway API features this gateway implements, sorted as the spec asks.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "Gateway",
    "HTTPRoute",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestPercentageMirror",
];

pub fn class_status(generation: i64, previous: &Value, now: &str) -> Value {
    let empty = Vec::new();
    let previous = previous["conditions"].as_array().unwrap_or(&empty);
    // What it supports, as the Gateway API's feature names (GatewayClass `supportedFeatures`), so
    // a client can tell before using a feature whether this class has it.
    let features: Vec<Value> = SUPPORTED_FEATURES
        .iter()
        .map(|name| json!({ "name": name }))
        .collect();
    json!({
        "conditions": [condition("Accepted", &Ok(()), "Accepted", "handled by the devcluster's mirror gateway", generation, previous, now)],
        "supportedFeatures": features,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::api::ParentRef;
    use serde_json::json;

    const ME: &str = "devcluster.rollout.dev/gateway";

    fn parent() -> ParentRef {
        ParentRef {
            namespace: Some("devcluster-gateway".into()),
            name: "devcluster-mirror".into(),
            ..Default::default()
        }
    }

    fn check(accepted: Result<(), Problem>, resolved: Result<(), Problem>) -> ParentCheck {
        ParentCheck {
            parent: parent(),
            accepted,
            resolved,
        }
    }

    fn route(parents: serde_json::Value) -> HttpRoute {
        serde_json::from_value(json!({
            "metadata": {"namespace": "app", "name": "r", "generation": 3, "resourceVersion": "42"},
            "spec": {},
            "status": {"parents": parents},
        }))
        .unwrap()
    }

    fn missing() -> Problem {
        Problem {
            reason: "BackendNotFound",
            message: "Service app/gone not found".into(),
        }
    }

    fn ours(accepted: &str, resolved: (&str, &str), since: &str) -> serde_json::Value {
        json!({
            "parentRef": {"namespace": "devcluster-gateway", "name": "devcluster-mirror"},
            "controllerName": ME,
            "conditions": [
                {"type": "Accepted", "status": accepted, "reason": "Accepted", "message": "served by the devcluster's mirror gateway", "observedGeneration": 3, "lastTransitionTime": since},
                {"type": "ResolvedRefs", "status": resolved.0, "reason": resolved.1,
                 "message": if resolved.0 == "True" { "every backend reference resolved" } else { "Service app/gone not found" },
                 "observedGeneration": 3, "lastTransitionTime": since},
            ],
        })
    }

    #[test]
    fn route_status_patches() {
        let traefik = json!({"parentRef": {"name": "devcluster"}, "controllerName": "traefik.io/gateway-controller", "conditions": []});
        let now = "2026-12-03T17:00:00Z";
        let old = "2026-12-03T16:00:00Z";
        // (what, current parents, our checks, expected parents written; None: no write)
        let cases: Vec<(
            &str,
            serde_json::Value,
            Vec<ParentCheck>,
            Option<serde_json::Value>,
        )> = vec![
            (
                "first status of an accepted route",
                json!([]),
                vec![check(Ok(()), Ok(()))],
                Some(json!([ours("True", ("True", "ResolvedRefs"), now)])),
            ),
            (
                "unchanged: no write",
                json!([ours("True", ("True", "ResolvedRefs"), old)]),
                vec![check(Ok(()), Ok(()))],
                None,
            ),
            (
                "a backend went missing: ResolvedRefs moves, Accepted keeps its time",
                json!([ours("True", ("True", "ResolvedRefs"), old)]),
                vec![check(Ok(()), Err(missing()))],
                Some(json!([{
                    "parentRef": {"namespace": "devcluster-gateway", "name": "devcluster-mirror"},
                    "controllerName": ME,
                    "conditions": [
                        ours("True", ("True", "x"), old)["conditions"][0].clone(),
                        ours("True", ("False", "BackendNotFound"), now)["conditions"][1].clone(),
                    ],
                }])),
            ),
            (
                "other controllers' entries are kept",
                json!([traefik.clone()]),
                vec![check(Ok(()), Err(missing()))],
                Some(json!([
                    traefik.clone(),
                    ours("True", ("False", "BackendNotFound"), now)
                ])),
            ),
            (
                "no longer ours: our entry goes, theirs stays",
                json!([traefik.clone(), ours("True", ("True", "ResolvedRefs"), old)]),
                vec![],
                Some(json!([traefik.clone()])),
            ),
            (
                "never ours: no write",
                json!([traefik.clone()]),
                vec![],
                None,
            ),
        ];
        for (what, parents, checks, want) in cases {
            let patch = route_status_patch(&route(parents), &checks, ME, now);
            match (patch, want) {
                (None, None) => {}
                (Some(p), Some(w)) => {
                    assert_eq!(p["status"]["parents"], w, "{what}");
                    assert_eq!(
                        p["metadata"]["resourceVersion"], "42",
                        "{what}: written over the version read"
                    );
                }
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_refused_route_says_why() {
        let refused = check(
            Err(Problem {
                reason: "UnsupportedValue",
                message: "rules[0] filter URLRewrite is not supported".into(),
            }),
            Ok(()),
        );
        let patch = route_status_patch(&route(json!([])), &[refused], ME, "t").unwrap();
        let accepted = &patch["status"]["parents"][0]["conditions"][0];
        assert_eq!(accepted["status"], "False");
        assert_eq!(accepted["reason"], "UnsupportedValue");
        assert_eq!(accepted["observedGeneration"], 3);
        assert!(accepted["message"].as_str().unwrap().contains("URLRewrite"));
    }

    #[test]
    fn gateway_status_counts_routes_and_keeps_times() {
        let first = gateway_status("http", "127.0.0.1", 2, 1, &json!(null), "t1");
        assert_eq!(first["addresses"][0]["value"], "127.0.0.1");
        assert_eq!(first["listeners"][0]["attachedRoutes"], 2);
        assert_eq!(first["conditions"][1]["type"], "Programmed");
        assert_eq!(first["conditions"][1]["status"], "True");
        let again = gateway_status("http", "127.0.0.1", 2, 1, &first, "t2");
        assert_eq!(again, first, "same status: times kept");
        let more = gateway_status("http", "127.0.0.1", 3, 1, &first, "t2");
        assert!(!same_but_time(&more, &first));
        assert_eq!(
            more["listeners"][0]["conditions"][0]["lastTransitionTime"],
            "t1"
        );
        let class = class_status(1, &json!(null), "t1");
        assert_eq!(class["conditions"][0]["type"], "Accepted");
        assert_eq!(class["conditions"][0]["status"], "True");
    }
}
