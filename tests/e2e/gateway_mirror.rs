//! A shadow fed by a Gateway API HTTPRoute's `RequestMirror` filter (`rollout shadow --mirror
//! gateway --route NAME`): on the devcluster's mirror gateway (`devcluster-gateway/
//! devcluster-mirror`, 127.0.0.1:18081) the shadow's pod receives copies of live requests while
//! every live answer comes from stable, and the route is given back byte for byte; on Traefik
//! (`devcluster-gateway/devcluster`), whose GatewayClass does not list `HTTPRouteRequestMirror`,
//! the shadow is refused before anything changes. Requests go to loopback only, bounded.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DynamicObject, PostParams};
use rollout::model::exit::ExitCode;
use serde_json::{json, Value};

use crate::shadow::{
    assert_shadow_removed, comparing, deploy_quiet, finish, start, visit_total, wait_record,
    SHADOW, SHADOW_POD,
};
use crate::support::gateway::routes;
use crate::support::{App, STS};

const GATEWAY_NS: &str = "devcluster-gateway";
const MIRROR_GATEWAY: &str = "devcluster-mirror";
const MIRROR_URL: &str = "http://127.0.0.1:18081";
const TRAEFIK_GATEWAY: &str = "devcluster";
const ROUTE: &str = "web";
const PREVIEW: &str = "time-app-preview";
/// Live requests sent through the gateway while the shadow is mirrored.
const LIVE: usize = 200;

fn host(app: &App) -> String {
    format!("{}.test", app.ns.name)
}

/// The user's route on `gateway`: every request for this test's host to the time app's
/// Service on port 80.
async fn create_route(app: &App, gateway: &str) -> anyhow::Result<Value> {
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE},
        "spec": {
            "parentRefs": [{"name": gateway, "namespace": GATEWAY_NS}],
            "hostnames": [host(app)],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": STS, "port": 80}],
            }],
        },
    }))?;
    routes(&app.ns)
        .create(&PostParams::default(), &route)
        .await?;
    route_spec(app).await
}

async fn route_spec(app: &App) -> anyhow::Result<Value> {
    let route = routes(&app.ns).get(ROUTE).await?;
    Ok(route.data.get("spec").cloned().unwrap_or(Value::Null))
}

/// The route's spec as the API server stores it, serialized: compared byte for byte.
async fn route_bytes(app: &App) -> String {
    serde_json::to_string(&route_spec(app).await.expect("route")).expect("json")
}

/// One GET of `path` through the mirror gateway: (status, pod that answered, version).
async fn get(http: &reqwest::Client, app: &App, path: &str) -> (u16, String, String) {
    let sent = http
        .get(format!("{MIRROR_URL}{path}"))
        .header("host", host(app))
        .send()
        .await;
    match sent {
        Ok(r) => match devcluster::testkit::answer(r).await {
            Ok(a) => (a.status, a.pod, a.version),
            Err(_) => (0, String::new(), String::new()),
        },
        Err(_) => (0, String::new(), String::new()),
    }
}

/// Waits until the gateway serves this test's host with the mirror in place (the route's
/// rule carries the filter and an answer came back): at most 120 tries, 0.5 s apart. The
/// probe uses `/healthz`, which the time app does not count as a visit.
async fn wait_mirrored(app: &App) -> anyhow::Result<()> {
    let http = devcluster::testkit::http();
    for _ in 0..120 {
        let spec = route_spec(app).await?;
        let filtered = spec.to_string().contains("RequestMirror");
        if filtered && get(&http, app, "/healthz").await.0 == 200 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    anyhow::bail!("the route never carried a served mirror")
}

async fn service_names(app: &App) -> Vec<String> {
    app.ns
        .api::<Service>()
        .list(&Default::default())
        .await
        .expect("services")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mirrored_shadow_gets_copies_of_live_requests_and_users_only_stable_answers() {
    let app = deploy_quiet("gw-mirror", 2).await.expect("deploy");
    let before = create_route(&app, MIRROR_GATEWAY).await.expect("route");
    let before_bytes = serde_json::to_string(&before).expect("json");
    // The replay asks /healthz only, which is no visit: every visit the shadow counts is a
    // mirrored copy of a live request.
    let requests = std::env::temp_dir().join(format!("{}-requests.txt", app.name()));
    std::fs::write(&requests, "GET /healthz\n").expect("requests file");
    let requests = requests.display().to_string();
    // The plan names the mirror and its undo; the mirror gateway's class lists both features.
    let plan = app
        .rollout(&[
            "plan",
            "shadow",
            STS,
            "--image",
            "time-app:v2",
            "--mirror",
            "gateway",
            "--route",
            ROUTE,
            "--mirror-percent",
            "50",
        ])
        .await
        .expect("plan");
    plan.expect(ExitCode::Done).expect("plan");
    for words in [
        "mirror 50% of the route's requests to the shadow's Service",
        "set the route's rules back exactly as they were",
        "HTTPRoute web copies 50% of its requests to Service time-app-preview",
    ] {
        assert!(plan.stdout.contains(words), "{words}: {}", plan.describe());
    }
    assert_eq!(
        route_bytes(&app).await,
        before_bytes,
        "plan changed the route"
    );
    let run = start(
        &app,
        &[
            "shadow",
            STS,
            "--image",
            "time-app:v2",
            "--mirror",
            "gateway",
            "--route",
            ROUTE,
            "--duration",
            "10m",
            "--requests",
            &requests,
        ],
    )
    .expect("start");
    wait_record(&app, Duration::from_secs(300), comparing)
        .await
        .expect("comparing");
    wait_mirrored(&app).await.expect("mirrored");
    let shadow_before = visit_total(&app.ns, SHADOW_POD).await.expect("visits");
    let http = devcluster::testkit::http();
    let mut answers: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..LIVE {
        let (status, pod, version) = get(&http, &app, "/").await;
        *answers
            .entry(format!("{status} {pod} {version}"))
            .or_insert(0) += 1;
    }
    eprintln!("{LIVE} live requests through the mirror gateway: {answers:?}");
    let from_stable: usize = answers
        .iter()
        .filter(|(k, _)| {
            k.starts_with("200 time-app-") && !k.contains(SHADOW) && k.ends_with(" v1")
        })
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        from_stable, LIVE,
        "every live answer from stable: {answers:?}"
    );
    // Copies are sent beside the live request, not awaited: give the last ones a moment.
    let mut copied = 0;
    for _ in 0..40 {
        copied = visit_total(&app.ns, SHADOW_POD).await.expect("visits") - shadow_before;
        if copied >= LIVE as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("the shadow's visits grew by {copied} during {LIVE} live requests");
    assert!(
        copied >= (LIVE as u64) * 9 / 10 && copied <= LIVE as u64,
        "the shadow received {copied} copies of {LIVE} live requests"
    );
    assert!(service_names(&app).await.contains(&PREVIEW.to_string()));

    // Abort: the mirror goes first, then the shadow and its Service; the route as it was.
    let abort = app.rollout(&["abort", STS]).await.expect("abort");
    assert!(
        abort.code == Some(0) || abort.code == Some(3),
        "{}",
        abort.describe()
    );
    let run = finish(run).await.expect("run ended");
    assert!(
        run.code == Some(0) || run.code == Some(3),
        "{}",
        run.describe()
    );
    assert_eq!(
        route_bytes(&app).await,
        before_bytes,
        "the route's spec after the rollback is not the spec before"
    );
    assert_shadow_removed(&app, false).await.expect("removed");
    assert!(!service_names(&app).await.contains(&PREVIEW.to_string()));
    app.assert_all_on("v1").await.expect("v1");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_mirrored_through_a_gateway_without_request_mirror_is_refused() {
    let app = App::deploy("gw-nomirror", 2, false).await.expect("deploy");
    let before = create_route(&app, TRAEFIK_GATEWAY).await.expect("route");
    let set = |s: &StatefulSet| (s.metadata.generation, s.metadata.annotations.clone());
    let set_before = set(&app.statefulset().await.expect("sts"));
    let services_before = service_names(&app).await;
    for extra in [&[][..], &["--mirror-percent", "10"][..]] {
        let mut args = vec![
            "shadow",
            STS,
            "--image",
            "time-app:v2",
            "--traffic",
            "gateway",
            "--route",
            ROUTE,
        ];
        args.extend_from_slice(extra);
        let run = app.rollout(&args).await.expect("run");
        run.expect(ExitCode::BadInput)
            .and_then(|r| {
                r.said(&[
                    "GatewayClass devcluster",
                    "does not list HTTPRouteRequestMirror",
                    "nothing was changed",
                ])
            })
            .expect("bad input, said why");
    }
    assert_eq!(set(&app.statefulset().await.expect("sts")), set_before);
    assert_eq!(service_names(&app).await, services_before);
    assert_eq!(route_spec(&app).await.expect("route"), before);
    let shadow = app
        .ns
        .api::<StatefulSet>()
        .get_opt(SHADOW)
        .await
        .expect("get");
    assert!(shadow.is_none(), "a shadow set was made");
    app.cleanup().await;
}
