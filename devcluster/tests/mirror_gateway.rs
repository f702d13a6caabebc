//! End to end against the running devcluster: the mirror gateway (`devcluster up` starts it on
//! 127.0.0.1:18081) serves HTTPRoutes that name Gateway devcluster-gateway/devcluster-mirror:
//! weighted backends, header matches, RequestMirror copies, and the route statuses rollout gates
//! on. Each test works in a namespace of its own; traffic goes only to 127.0.0.1:18081.

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use devcluster::mirror::{self, api::HttpRoute};
use devcluster::testkit::{self, TestNs};
use kube::api::{DynamicObject, PostParams};
use kube::Api;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(180);
const STATUS: Duration = Duration::from_secs(60);

fn gateway_url(path: &str) -> String {
    format!("http://{}:{}{path}", mirror::ADDRESS, mirror::PORT)
}

/// Fails with a clear message unless the mirror gateway serves and reports its Gateway Programmed.
async fn require_gateway(ns: &TestNs) -> anyhow::Result<()> {
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        ns.client.clone(),
        mirror::NAMESPACE,
        &mirror::api::resource("Gateway", "gateways"),
    );
    let gw = gateways.get_opt(mirror::NAME).await.ok().flatten().with_context(|| {
        format!("Gateway {}/{} not found: is the mirror gateway running (`devcluster up` starts it) and are the Gateway API CRDs installed?", mirror::NAMESPACE, mirror::NAME)
    })?;
    let programmed = gw.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Programmed" && c["status"] == "True");
    anyhow::ensure!(
        programmed,
        "Gateway {} is not Programmed: {}",
        mirror::NAME,
        gw.data["status"]
    );
    anyhow::ensure!(
        tokio::net::TcpStream::connect((mirror::ADDRESS, mirror::PORT))
            .await
            .is_ok(),
        "nothing listens on {}:{}; `devcluster up` starts the mirror gateway",
        mirror::ADDRESS,
        mirror::PORT
    );
    Ok(())
}

/// A one-replica time app set whose probes use `/healthz`, so its visits count only the
/// requests a test sends to `/`; and a ClusterIP Service of the same name in front of it.
async fn deploy(ns: &TestNs, name: &str) -> anyhow::Result<()> {
    let mut set = testkit::time_app_set(name, "time-app:v1", 1)?;
    for probe in ["readinessProbe", "livenessProbe"] {
        set["spec"]["template"]["spec"]["containers"][0][probe]["httpGet"]["path"] =
            "/healthz".into();
    }
    ns.apply_value(set).await?;
    ns.apply_value(testkit::service_for(name, "ClusterIP", name))
        .await
}

fn parent() -> Value {
    json!([{"namespace": mirror::NAMESPACE, "name": mirror::NAME}])
}

async fn create_route(ns: &TestNs, name: &str, spec: Value) -> anyhow::Result<()> {
    // Sent as written (the typed HttpRoute reads routes; it does not carry apiVersion and kind).
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name}, "spec": spec,
    }))?;
    Api::<DynamicObject>::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &mirror::api::resource("HTTPRoute", "httproutes"),
    )
    .create(&PostParams::default(), &route)
    .await
    .with_context(|| format!("creating HTTPRoute {name}"))?;
    Ok(())
}

/// Our condition `type_` on the route: (status, reason, observedGeneration == generation).
fn condition(route: &HttpRoute, type_: &str) -> Option<(String, String, bool)> {
    let entry = route
        .status
        .as_ref()?
        .parents
        .iter()
        .find(|p| p["controllerName"] == mirror::CONTROLLER)?;
    let c = entry["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["observedGeneration"].as_i64() == route.metadata.generation,
    ))
}

/// Waits until the route's `Accepted` and `ResolvedRefs` are as given (status, reason), for its
/// current generation.
async fn wait_conditions(
    ns: &TestNs,
    name: &str,
    accepted: (&str, &str),
    resolved: (&str, &str),
) -> anyhow::Result<HttpRoute> {
    let want = |c: Option<(String, String, bool)>, (s, r): (&str, &str)| {
        c.is_some_and(|(cs, cr, g)| cs == s && cr == r && g)
    };
    testkit::wait_for(
        ns.api::<HttpRoute>(),
        name,
        STATUS,
        move |r: Option<&HttpRoute>| {
            r.is_some_and(|r| {
                want(condition(r, "Accepted"), accepted)
                    && want(condition(r, "ResolvedRefs"), resolved)
            })
        },
    )
    .await
    .with_context(|| {
        format!("route {name} did not reach Accepted={accepted:?} ResolvedRefs={resolved:?}")
    })?;
    Ok(ns.api::<HttpRoute>().get(name).await?)
}

/// One request through the gateway: (status, answering pod).
async fn ask(
    http: &reqwest::Client,
    host: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut req = http.get(gateway_url("/")).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req
        .send()
        .await
        .with_context(|| format!("GET / with Host {host}"))?;
    let pod = r
        .headers()
        .get("x-pod-name")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((r.status().as_u16(), pod))
}

/// `count` requests; answers by pod (statuses other than 200 as `<status>`).
async fn tally(
    host: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let http = testkit::http();
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let (status, pod) = ask(&http, host, headers).await?;
        let key = if status == 200 {
            pod
        } else {
            format!("<{status}>")
        };
        *out.entry(key).or_insert(0) += 1;
    }
    Ok(out)
}

/// Waits (bounded) until the route for `host` answers 200: its pods are in the EndpointSlices.
async fn wait_served(host: &str) -> anyhow::Result<()> {
    let http = testkit::http();
    let deadline = Instant::now() + READY;
    loop {
        let last = ask(&http, host, &[]).await;
        if matches!(last, Ok((200, _))) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("Host {host} not served with 200 within {READY:?}: last {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn visit_count(ns: &TestNs, pod: &str) -> anyhow::Result<u64> {
    let v = testkit::visits(ns, pod).await?;
    v["total"]
        .as_u64()
        .with_context(|| format!("/visits of {pod} has no total: {v}"))
}

#[tokio::test]
async fn weights_header_matches_and_mirrored_copies() -> anyhow::Result<()> {
    let ns = TestNs::new("mirror-gw").await?;
    require_gateway(&ns).await?;
    for name in ["primary", "canary", "shadow"] {
        deploy(&ns, name).await?;
    }
    // A mirror with no pod at all: its copies can go nowhere, the answers must not care.
    ns.apply_value(testkit::service_for("nobody", "ClusterIP", "nobody"))
        .await?;
    let to = |svc: &str, weight: i32| json!({"name": svc, "port": 80, "weight": weight});
    create_route(&ns, "split", json!({
        "parentRefs": parent(), "hostnames": ["split.test"],
        "rules": [
            {"matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}], "backendRefs": [to("canary", 1)]},
            {"backendRefs": [to("primary", 70), to("canary", 30)]},
        ],
    })).await?;
    let mirror = |svc: &str| json!({"type": "RequestMirror", "requestMirror": {"backendRef": {"name": svc, "port": 80}}});
    create_route(
        &ns,
        "mirrored",
        json!({
            "parentRefs": parent(), "hostnames": ["mirror.test"],
            "rules": [{"filters": [mirror("shadow")], "backendRefs": [to("primary", 1)]}],
        }),
    )
    .await?;
    create_route(
        &ns,
        "mirrored-nowhere",
        json!({
            "parentRefs": parent(), "hostnames": ["nowhere.test"],
            "rules": [{"filters": [mirror("nobody")], "backendRefs": [to("primary", 1)]}],
        }),
    )
    .await?;
    for name in ["split", "mirrored", "mirrored-nowhere"] {
        wait_conditions(&ns, name, ("True", "Accepted"), ("True", "ResolvedRefs")).await?;
    }
    for name in ["primary", "canary", "shadow"] {
        testkit::wait_sts_ready(&ns, name, 1, READY).await?;
    }
    for host in ["split.test", "mirror.test", "nowhere.test"] {
        wait_served(host).await?;
    }

    // Weights 70/30 over 400 requests: canary's count is binomial (mean 120, sd 9.2); 5 sd
    // either side is 74..166, and a gateway ignoring weights (200) or one backend only (0, 400)
    // falls outside.
    let split = tally("split.test", &[], 400).await?;
    let canary = split.get("canary-0").copied().unwrap_or(0);
    let primary = split.get("primary-0").copied().unwrap_or(0);
    eprintln!("70/30 over 400 requests: {split:?}");
    assert_eq!(
        canary + primary,
        400,
        "every answer from primary or canary: {split:?}"
    );
    assert!(
        (74..=166).contains(&canary),
        "canary got {canary} of 400 at weight 30: {split:?}"
    );

    // The header match takes every request to canary.
    let pinned = tally("split.test", &[("x-canary", "yes")], 50).await?;
    assert_eq!(
        pinned,
        BTreeMap::from([("canary-0".to_string(), 50)]),
        "x-canary: yes"
    );

    // Mirroring: every answer comes from primary, and shadow receives a copy of each request.
    let (primary_before, shadow_before) = (
        visit_count(&ns, "primary-0").await?,
        visit_count(&ns, "shadow-0").await?,
    );
    let mirrored = tally("mirror.test", &[], 40).await?;
    assert_eq!(
        mirrored,
        BTreeMap::from([("primary-0".to_string(), 40)]),
        "answers of the mirrored route"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut shadow_after = visit_count(&ns, "shadow-0").await?;
    while shadow_after < shadow_before + 40 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        shadow_after = visit_count(&ns, "shadow-0").await?;
    }
    eprintln!("mirrored: answers {mirrored:?}; shadow visits {shadow_before} -> {shadow_after}");
    assert_eq!(
        shadow_after - shadow_before,
        40,
        "copies the shadow recorded"
    );
    assert_eq!(
        visit_count(&ns, "primary-0").await? - primary_before,
        40,
        "visits primary recorded"
    );

    // A mirror with no ready pod changes nothing for the client.
    let nowhere = tally("nowhere.test", &[], 20).await?;
    assert_eq!(
        nowhere,
        BTreeMap::from([("primary-0".to_string(), 20)]),
        "answers when the mirror has no pod"
    );
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn route_status_reports_accepted_missing_backends_and_unsupported_filters(
) -> anyhow::Result<()> {
    let ns = TestNs::new("mirror-gw-status").await?;
    require_gateway(&ns).await?;
    ns.apply_value(testkit::service_for("web", "ClusterIP", "web"))
        .await?;
    let to = |svc: &str| json!([{"name": svc, "port": 80}]);
    create_route(&ns, "fine", json!({"parentRefs": parent(), "hostnames": ["fine.test"], "rules": [{"backendRefs": to("web")}]})).await?;
    create_route(&ns, "missing", json!({"parentRefs": parent(), "hostnames": ["missing.test"], "rules": [{"backendRefs": to("later")}]})).await?;
    create_route(&ns, "rewrite", json!({"parentRefs": parent(), "hostnames": ["rewrite.test"], "rules": [{
        "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/x"}}}],
        "backendRefs": to("web")}]})).await?;
    create_route(&ns, "elsewhere", json!({"parentRefs": [{"namespace": mirror::NAMESPACE, "name": "devcluster"}], "hostnames": ["elsewhere.test"], "rules": [{"backendRefs": to("web")}]})).await?;

    let fine = wait_conditions(&ns, "fine", ("True", "Accepted"), ("True", "ResolvedRefs")).await?;
    wait_conditions(
        &ns,
        "missing",
        ("True", "Accepted"),
        ("False", "BackendNotFound"),
    )
    .await?;
    let rewrite = wait_conditions(
        &ns,
        "rewrite",
        ("False", "UnsupportedValue"),
        ("True", "ResolvedRefs"),
    )
    .await?;
    let ours = |r: &HttpRoute| {
        r.status
            .as_ref()
            .map(|s| s.parents.clone())
            .unwrap_or_default()
    };
    let named = &ours(&fine)[0]["parentRef"];
    assert_eq!(
        (&named["namespace"], &named["name"]),
        (&json!(mirror::NAMESPACE), &json!(mirror::NAME)),
        "the entry names its parent"
    );
    let message = ours(&rewrite)[0]["conditions"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("URLRewrite"),
        "the refusal names the filter: {message}"
    );

    let http = testkit::http();
    // No pod behind web: 503; the missing Service's share: 500; a refused route is not served: 404.
    assert_eq!(
        ask(&http, "fine.test", &[]).await?.0,
        503,
        "a Service without ready pods"
    );
    assert_eq!(
        ask(&http, "missing.test", &[]).await?.0,
        500,
        "a backend that does not resolve"
    );
    assert_eq!(
        ask(&http, "rewrite.test", &[]).await?.0,
        404,
        "a route that is not accepted"
    );
    assert_eq!(
        ask(&http, "elsewhere.test", &[]).await?.0,
        404,
        "another gateway's route"
    );

    // The Service appears: the status follows.
    ns.apply_value(testkit::service_for("later", "ClusterIP", "later"))
        .await?;
    wait_conditions(
        &ns,
        "missing",
        ("True", "Accepted"),
        ("True", "ResolvedRefs"),
    )
    .await?;
    let elsewhere = ns.api::<HttpRoute>().get("elsewhere").await?;
    assert_eq!(
        condition(&elsewhere, "Accepted"),
        None,
        "no status for another gateway's route"
    );
    ns.cleanup().await;
    Ok(())
}
