//! The route's part of every gate of a rollout through a Gateway API HTTPRoute: what its
//! gateways say about the route as it is now. Pure; the executor reads the route.

use crate::model::route::HttpRoute;
use crate::strategy::route::{route_verdict, RouteVerdict};

use super::verdict::{GateFailure, GateKind, Verdict};

/// The gateways' verdict on the route `name` (`None`: it is gone) at its current generation:
/// both `Accepted` and `ResolvedRefs` True passes; one of them False fails the gate with the
/// gateway's reason and message; no verdict yet for this generation (someone just wrote the
/// route) leaves the gate undecided, to be asked again.
pub fn route_gate(name: &str, route: Option<&HttpRoute>) -> Verdict {
    let fail = |reason: String| Verdict::Fail {
        failures: vec![GateFailure {
            gate: GateKind::Route,
            pod: None,
            probe: format!("HTTPRoute {name}"),
            figures: None,
            reasons: vec![reason],
        }],
    };
    let Some(route) = route else {
        return fail(format!("HTTPRoute {name} was deleted during the rollout"));
    };
    match route_verdict(route, route.metadata.generation.unwrap_or(0)) {
        RouteVerdict::Accepted => Verdict::Pass,
        RouteVerdict::Rejected(words) => fail(words),
        RouteVerdict::Pending(why) => Verdict::Inconclusive {
            message: format!("HTTPRoute {name}: {why}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn route(generation: i64, conditions: serde_json::Value) -> HttpRoute {
        HttpRoute {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                generation: Some(generation),
                ..ObjectMeta::default()
            },
            spec: json!({"parentRefs": [{"name": "gw"}], "rules": []}),
            status: Some(json!({"parents": [{
                "parentRef": {"name": "gw"},
                "controllerName": "example.io/gw",
                "conditions": conditions,
            }]})),
        }
    }

    fn cond(kind: &str, status: &str, generation: i64) -> serde_json::Value {
        json!({"type": kind, "status": status, "observedGeneration": generation,
               "reason": "Because", "message": format!("{kind} is {status}")})
    }

    #[test]
    fn the_gate_follows_the_gateways_verdict_on_the_route_as_it_is() {
        let accepted = route(
            3,
            json!([cond("Accepted", "True", 3), cond("ResolvedRefs", "True", 3)]),
        );
        assert_eq!(route_gate("web", Some(&accepted)), Verdict::Pass);

        // A backend Service deleted since: the gateway says so, the gate fails with its words.
        let broken = route(
            3,
            json!([
                cond("Accepted", "True", 3),
                cond("ResolvedRefs", "False", 3)
            ]),
        );
        let verdict = route_gate("web", Some(&broken));
        assert!(!verdict.is_pass());
        let message = verdict.message();
        assert!(
            message.contains("route gate failed (HTTPRoute web)")
                && message.contains("ResolvedRefs=False")
                && message.contains("ResolvedRefs is False"),
            "{message}"
        );

        // Someone wrote the route a moment ago: not decided yet.
        let stale = route(
            4,
            json!([cond("Accepted", "True", 3), cond("ResolvedRefs", "True", 3)]),
        );
        assert!(matches!(
            route_gate("web", Some(&stale)),
            Verdict::Inconclusive { message } if message.contains("generation 4")
        ));

        assert!(route_gate("web", None)
            .message()
            .contains("HTTPRoute web was deleted"));
    }
}
