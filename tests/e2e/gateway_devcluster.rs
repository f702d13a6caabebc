//! The devcluster's gateway, end to end: Traefik serves HTTPRoutes attached to the shared
//! Gateway `devcluster-gateway/devcluster` on 127.0.0.1, splits traffic by the routes' weights,
//! honours header matches, and writes the routes' status; a filter it does not implement
//! (RequestMirror) shows in what it writes and serves. What `--traffic gateway` builds on.

use std::collections::BTreeMap;

use devcluster::testkit::{self, TestNs};

use crate::support::gateway::{
    apply_route, backend, binomial_bound, condition, get_via_gateway, header_match, http_route,
    rule, share_of, spread_via_gateway, wait_route_status, wait_serving,
};
use crate::support::SETTLE;

/// Two one-pod sets of the time app, `stable` (v1) and `canary` (v2), each behind its own
/// ClusterIP Service on port 80 (the gateway routes to their pod IPs, never to the ClusterIP).
async fn two_backends(prefix: &str) -> anyhow::Result<TestNs> {
    let ns = TestNs::new(prefix).await?;
    for (name, image) in [("stable", "time-app:v1"), ("canary", "time-app:v2")] {
        ns.apply_value(testkit::time_app_set(name, image, 1)?)
            .await?;
        ns.apply_value(testkit::service_for(name, "ClusterIP", name))
            .await?;
    }
    for name in ["stable", "canary"] {
        testkit::wait_sts_ready(&ns, name, 1, SETTLE).await?;
    }
    Ok(ns)
}

fn summary(conditions: &[serde_json::Value]) -> Vec<(String, String, String)> {
    conditions
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn only_pods(spread: &BTreeMap<String, usize>, pods: &[&str]) -> bool {
    spread.keys().all(|k| pods.contains(&k.as_str()))
}

#[tokio::test]
async fn the_gateway_splits_by_weight_routes_a_header_to_one_backend_and_accepts_the_route(
) -> anyhow::Result<()> {
    let ns = two_backends("gw-split").await?;
    let host = format!("{}.test", ns.name);
    let route = http_route(
        "split",
        &host,
        vec![
            rule(
                vec![header_match("x-canary", "always")],
                vec![backend("canary", 80, 1)],
            ),
            rule(
                vec![],
                vec![backend("stable", 80, 80), backend("canary", 80, 20)],
            ),
        ],
    );
    apply_route(&ns, &route).await?;

    let conditions = wait_route_status(&ns, "split").await?;
    let accepted = condition(&conditions, "Accepted")
        .cloned()
        .unwrap_or_default();
    let resolved = condition(&conditions, "ResolvedRefs")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&accepted["status"], &accepted["reason"]),
        (&"True".into(), &"Accepted".into()),
        "Accepted: {conditions:?}"
    );
    assert_eq!(
        (&resolved["status"], &resolved["reason"]),
        (&"True".into(), &"ResolvedRefs".into()),
        "ResolvedRefs: {conditions:?}"
    );

    // Traefik applies a route a moment after it writes its status: wait until both backends
    // have answered once, then count.
    let pods = ["stable-0", "canary-0"];
    wait_serving(&host, "/healthz", &[], |seen| {
        pods.iter().all(|p| seen.contains_key(*p))
    })
    .await?;
    let n = 200;
    let spread = spread_via_gateway(&host, "/healthz", &[], n).await;
    assert!(only_pods(&spread, &pods), "answers by pod: {spread:?}");
    println!("{n} requests through the gateway, by pod: {spread:?}");
    let canary = share_of(&spread, "canary-");
    // 20 % of 200 is 40, a binomial spread of about 6; Traefik's weighted round robin is
    // tighter still, but a 50/50 or an all-stable split lands far outside.
    let bound = binomial_bound(n, 0.2);
    assert!(
        bound.contains(&canary),
        "canary answered {canary} of {n}, outside {bound:?}: {spread:?}"
    );

    let with_header = spread_via_gateway(&host, "/healthz", &[("x-canary", "always")], 40).await;
    assert_eq!(
        with_header,
        BTreeMap::from([("canary-0".to_string(), 40)]),
        "requests with the header go to the canary only"
    );

    // A host no route names is not served by any of them.
    let other = get_via_gateway(&format!("{}-other.test", ns.name), "/healthz", &[]).await?;
    assert_eq!(other.status, 404, "an unrouted host: {other:?}");
    ns.cleanup().await;
    Ok(())
}

/// Traefik has no RequestMirror filter, and it does not say so in the route's status: it
/// accepts the route (Accepted=True, ResolvedRefs=True, reason as the type, no message), answers
/// every request on it with an empty 500, and logs `unsupported filter RequestMirror`. A caller
/// that needs mirroring must not rely on this gateway's status to find out.
#[tokio::test]
async fn a_request_mirror_route_is_accepted_by_traefik_but_answered_with_500() -> anyhow::Result<()>
{
    let ns = two_backends("gw-mirror").await?;
    let host = format!("{}.test", ns.name);
    let mut mirrored = rule(vec![], vec![backend("stable", 80, 1)]);
    mirrored["filters"] = serde_json::json!([{
        "type": "RequestMirror",
        "requestMirror": {"backendRef": {"name": "canary", "port": 80}}
    }]);
    apply_route(&ns, &http_route("mirror", &host, vec![mirrored])).await?;

    let conditions = wait_route_status(&ns, "mirror").await?;
    assert_eq!(
        summary(&conditions),
        [
            ("Accepted".into(), "True".into(), "Accepted".into()),
            ("ResolvedRefs".into(), "True".into(), "ResolvedRefs".into())
        ],
        "conditions: {conditions:#?}"
    );
    let seen = wait_serving(&host, "/healthz", &[], |seen| seen.contains_key("<500>")).await?;
    let spread = spread_via_gateway(&host, "/healthz", &[], 20).await;
    assert_eq!(
        spread,
        BTreeMap::from([("<500>".to_string(), 20)]),
        "no backend answers a route with a filter Traefik lacks (before: {seen:?})"
    );
    let log = std::fs::read_to_string(
        devcluster::Layout::from_env()
            .logs_dir()
            .join(format!("{}.log", devcluster::gateway::PROCESS)),
    )?;
    let said = format!("http_route=mirror namespace={}", ns.name);
    assert!(
        log.lines()
            .any(|l| l.contains("unsupported filter RequestMirror") && l.contains(&said)),
        "the gateway's log does not name the unsupported filter for {said}"
    );
    ns.cleanup().await;
    Ok(())
}
