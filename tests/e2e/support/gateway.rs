//! The devcluster's gateway for end-to-end tests: HTTPRoutes attached to the shared Gateway
//! (`devcluster-gateway/devcluster`, served by Traefik on 127.0.0.1), requests through it with a
//! `Host:` header, the route's status as the gateway wrote it, and bounded counts of who
//! answered. Generic: any Service of a test namespace can be a backend.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use devcluster::gateway;
use devcluster::testkit::{self, Answer, TestNs};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::await_condition;
use serde_json::{json, Value};

/// How long a test waits for the gateway to write a route's status or to serve it.
pub const ROUTE_SETTLE: Duration = Duration::from_secs(60);

/// The gateway's base URL: `ROLLOUT_GATEWAY_URL` (what `devcluster env` exports) when it names a
/// loopback address, else the devcluster's own (`http://127.0.0.1:18080`).
pub fn gateway_url() -> String {
    std::env::var(gateway::URL_ENV)
        .ok()
        .map(|u| u.trim_end_matches('/').to_string())
        .filter(|u| u.starts_with("http://127.") || u.starts_with("http://localhost"))
        .unwrap_or_else(gateway::url)
}

/// The HTTPRoute kind (gateway.networking.k8s.io/v1).
pub fn route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

pub fn routes(ns: &TestNs) -> Api<DynamicObject> {
    Api::namespaced_with(ns.client.clone(), &ns.name, &route_resource())
}

/// A backendRef to port `port` of Service `service`, with `weight`.
pub fn backend(service: &str, port: u16, weight: u32) -> Value {
    json!({"name": service, "port": port, "weight": weight})
}

/// A match on one request header's exact value.
pub fn header_match(name: &str, value: &str) -> Value {
    json!({"headers": [{"type": "Exact", "name": name, "value": value}]})
}

/// A rule: requests that meet any of `matches` (every request when empty) go to `backends`.
pub fn rule(matches: Vec<Value>, backends: Vec<Value>) -> Value {
    let mut r = json!({"backendRefs": backends});
    if !matches.is_empty() {
        r["matches"] = Value::Array(matches);
    }
    r
}

/// An HTTPRoute for `hostname` on the shared Gateway's listener, with `rules`.
pub fn http_route(name: &str, hostname: &str, rules: Vec<Value>) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{
                "group": "gateway.networking.k8s.io",
                "kind": "Gateway",
                "namespace": gateway::NAMESPACE,
                "name": gateway::GATEWAY,
                "sectionName": gateway::LISTENER
            }],
            "hostnames": [hostname],
            "rules": rules
        }
    })
}

/// Creates or updates (server-side apply) an HTTPRoute in the test's namespace.
pub async fn apply_route(ns: &TestNs, route: &Value) -> anyhow::Result<()> {
    let name = route["metadata"]["name"]
        .as_str()
        .context("the route has no name")?;
    routes(ns)
        .patch(
            name,
            &PatchParams::apply("rollout-e2e").force(),
            &Patch::Apply(route),
        )
        .await
        .with_context(|| format!("applying HTTPRoute {}/{name}", ns.name))?;
    Ok(())
}

/// An HTTPRoute sending every request for `hostname` to port `port` of `service`.
pub async fn make_route(
    ns: &TestNs,
    name: &str,
    hostname: &str,
    service: &str,
    port: u16,
) -> anyhow::Result<()> {
    let route = http_route(
        name,
        hostname,
        vec![rule(vec![], vec![backend(service, port, 1)])],
    );
    apply_route(ns, &route).await
}

/// The conditions the devcluster's gateway (Traefik) wrote for the shared Gateway on a route.
pub fn route_conditions(route: &DynamicObject) -> Vec<Value> {
    route.data["status"]["parents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["controllerName"] == gateway::CONTROLLER_NAME
                && p["parentRef"]["name"] == gateway::GATEWAY
                && p["parentRef"]["namespace"] == gateway::NAMESPACE
        })
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The condition of type `type_` among `conditions`.
pub fn condition<'a>(conditions: &'a [Value], type_: &str) -> Option<&'a Value> {
    conditions.iter().find(|c| c["type"] == type_)
}

/// Waits (on a watch, at most [`ROUTE_SETTLE`]) until the gateway has written conditions for
/// the route's current generation; gives them.
pub async fn wait_route_status(ns: &TestNs, name: &str) -> anyhow::Result<Vec<Value>> {
    let current = |r: &DynamicObject| {
        let conds = route_conditions(r);
        !conds.is_empty()
            && conds
                .iter()
                .all(|c| c["observedGeneration"].as_i64() == r.metadata.generation)
    };
    let api = routes(ns);
    let waited = tokio::time::timeout(
        ROUTE_SETTLE,
        await_condition(api.clone(), name, move |r: Option<&DynamicObject>| {
            r.is_some_and(current)
        }),
    )
    .await;
    match waited {
        Ok(Ok(Some(route))) => Ok(route_conditions(&route)),
        Ok(Ok(None)) => bail!("HTTPRoute {}/{name} does not exist", ns.name),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            let now = api.get_opt(name).await.ok().flatten();
            bail!(
                "the gateway wrote no status for HTTPRoute {}/{name} within {ROUTE_SETTLE:?}; its status: {}",
                ns.name,
                now.map(|r| r.data["status"].to_string()).unwrap_or_else(|| "gone".into())
            )
        }
    }
}

/// One request through the gateway for `hostname` (bounded by the client's timeout).
pub async fn get_via_gateway(
    hostname: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Answer> {
    let url = format!("{}{path}", gateway_url());
    let mut req = testkit::http().get(&url).header("host", hostname);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .with_context(|| format!("GET {url} (Host: {hostname})"))?;
    testkit::answer(r).await
}

/// `count` requests through the gateway; answers by the pod that gave them (`<status>` for an
/// answer of 500 or more, `<error>` for no answer).
pub async fn spread_via_gateway(
    hostname: &str,
    path: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> BTreeMap<String, usize> {
    spread_by(hostname, path, headers, count, |a| a.pod.clone()).await
}

/// `count` requests through the gateway, one at a time: answers per `key` of the answer
/// (`<status>` for a 5xx, `<error>` when none came).
pub async fn spread_by(
    hostname: &str,
    path: &str,
    headers: &[(&str, &str)],
    count: usize,
    key: impl Fn(&Answer) -> String,
) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let key = match get_via_gateway(hostname, path, headers).await {
            Ok(a) if a.status < 500 => key(&a),
            Ok(a) => format!("<{}>", a.status),
            Err(_) => "<error>".into(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// Of `spread`, how many answers came from pods whose name starts with `prefix`.
pub fn share_of(spread: &BTreeMap<String, usize>, prefix: &str) -> usize {
    spread
        .iter()
        .filter(|(pod, _)| pod.starts_with(prefix))
        .map(|(_, n)| n)
        .sum()
}

/// The range a count of `n` draws with probability `p` stays in but for about one run in a
/// million: the mean ± 5 standard deviations of the binomial distribution.
pub fn binomial_bound(n: usize, p: f64) -> std::ops::RangeInclusive<usize> {
    let mean = n as f64 * p;
    let spread = 5.0 * (n as f64 * p * (1.0 - p)).sqrt();
    let lo = (mean - spread).floor().max(0.0) as usize;
    let hi = (mean + spread).ceil().min(n as f64) as usize;
    lo..=hi
}

/// Asks through the gateway (every 200 ms, at most [`ROUTE_SETTLE`]) until `done` holds for
/// the answers seen so far: the gateway applies a route a moment after it writes its status.
/// Gives the answers by pod (as [`spread_via_gateway`]).
pub async fn wait_serving(
    hostname: &str,
    path: &str,
    headers: &[(&str, &str)],
    done: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let begin = Instant::now();
    let mut seen = BTreeMap::new();
    loop {
        for (k, n) in spread_via_gateway(hostname, path, headers, 1).await {
            *seen.entry(k).or_insert(0) += n;
        }
        if done(&seen) {
            return Ok(seen);
        }
        ensure!(
            begin.elapsed() < ROUTE_SETTLE,
            "the gateway did not serve {hostname}{path} as expected within {ROUTE_SETTLE:?}; answers so far: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
