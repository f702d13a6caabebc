//! Canary through a Gateway API HTTPRoute (`--traffic gateway --route`) on the devcluster's
//! gateway (Traefik, `devcluster-gateway/devcluster`, HTTP on 127.0.0.1:18080, or
//! `ROLLOUT_GATEWAY_URL`). Each test's route matches a host name of its own (`<ns>.test`), so
//! tests sharing the gateway never see each other's traffic; requests go to the gateway on
//! loopback only, a bounded number of them.

use std::collections::BTreeMap;

use anyhow::{ensure, Context};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DynamicObject, PostParams};
use rollout::model::exit::ExitCode;
use serde_json::{json, Value};

use crate::strategies::phase;
use crate::support::gateway::{gateway_url, routes};
use crate::support::{finish_within, rollout_command, App, STS};

const GATEWAY_NS: &str = "devcluster-gateway";
const GATEWAY: &str = "devcluster";
const ROUTE: &str = "web";
/// Requests measured at each weight.
const SAMPLE: usize = 1000;

fn host(app: &App) -> String {
    format!("{}.test", app.ns.name)
}

/// The user's route: the time app's Service on port 80 for this test's host name, with
/// `filters` on its rule.
async fn create_route(
    app: &App,
    name: &str,
    backend: &str,
    filters: Value,
) -> anyhow::Result<Value> {
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {
            "parentRefs": [{"name": GATEWAY, "namespace": GATEWAY_NS}],
            "hostnames": [host(app)],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "filters": filters,
                "backendRefs": [{"name": backend, "port": 80}],
            }],
        },
    }))?;
    routes(&app.ns)
        .create(&PostParams::default(), &route)
        .await?;
    route_spec(app, name).await
}

/// The time app of `prefix` (3 replicas) behind a route of its own to its Service, once the
/// gateway routes it; with the route's spec as created.
async fn routed_app(prefix: &str) -> (App, Value) {
    let app = App::deploy(prefix, 3, false).await.expect("deploy");
    let before = create_route(&app, ROUTE, STS, json!([]))
        .await
        .expect("route");
    wait_routed(&app).await.expect("routed");
    (app, before)
}

/// `rollout canary time-app --image time-app:v2 FLAGS --traffic gateway --route ROUTE`.
fn canary_args<'a>(flags: &[&'a str], route: &'a str) -> Vec<&'a str> {
    let mut args = vec!["canary", STS, "--image", "time-app:v2"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--traffic", "gateway", "--route", route]);
    args
}

async fn route_spec(app: &App, name: &str) -> anyhow::Result<Value> {
    let route = routes(&app.ns).get(name).await?;
    Ok(route.data.get("spec").cloned().unwrap_or(Value::Null))
}

/// Waits until the gateway routes this test's host to the time app (the route accepted and
/// programmed): at most 120 tries, 0.5 s apart.
async fn wait_routed(app: &App) -> anyhow::Result<()> {
    let http = devcluster::testkit::http();
    for _ in 0..120 {
        if let Ok(a) = get(&http, app, &[]).await {
            if a.0 == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    anyhow::bail!("the gateway never routed {} to the time app", host(app))
}

/// One request through the gateway: (status, version answered).
async fn get(
    http: &reqwest::Client,
    app: &App,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let mut request = http
        .get(format!("{}/healthz", gateway_url()))
        .header("host", host(app));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let r = request.send().await.context("GET through the gateway")?;
    let version = r
        .headers()
        .get("x-app-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((r.status().as_u16(), version))
}

/// A route write is accepted (its status written) before the gateway serves it: Traefik
/// applies its providers' changes at most every 2 s (`providersThrottleDuration`). Measuring
/// starts after that.
async fn let_the_gateway_apply() {
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
}

/// `count` requests through the gateway: answers per version (`<status>` or `<error>`).
async fn spread(app: &App, count: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let http = devcluster::testkit::http();
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let key = match get(&http, app, headers).await {
            Ok((200, v)) => v,
            Ok((s, _)) => format!("<{s}>"),
            Err(_) => "<error>".into(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// The share of `SAMPLE` answers from v2 is within the binomial bound of `percent`: for n
/// requests and weight p, |share - p| <= 4 * sqrt(p (1 - p) / n) (four standard deviations:
/// a correct split fails it about once in 16,000 measurements); every request answered.
fn assert_share(answers: &BTreeMap<String, usize>, percent: u32) -> anyhow::Result<f64> {
    let n: usize = answers.values().sum();
    let ok = answers.get("v1").copied().unwrap_or(0) + answers.get("v2").copied().unwrap_or(0);
    ensure!(
        ok == n,
        "not every request was answered by v1 or v2: {answers:?}"
    );
    let share = answers.get("v2").copied().unwrap_or(0) as f64 / n as f64;
    let p = f64::from(percent) / 100.0;
    let bound = 4.0 * (p * (1.0 - p) / n as f64).sqrt();
    ensure!(
        (share - p).abs() <= bound,
        "v2 answered {:.2}% of {n} requests, expected {percent}% within {:.2} points: {answers:?}",
        share * 100.0,
        bound * 100.0
    );
    Ok(share)
}

async fn services(app: &App) -> anyhow::Result<Vec<String>> {
    Ok(app
        .ns
        .api::<Service>()
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_through_the_route_moves_exact_shares_pins_testers_and_rolls_back_exactly() {
    let (app, before) = routed_app("gw-canary").await;
    let canary = |pause: &'static str| {
        canary_args(
            &[
                "--steps",
                "5,25,50",
                "--pause",
                pause,
                "--canary-header",
                "X-Canary=always",
            ],
            ROUTE,
        )
    };
    // The header pin comes first: testers reach the canary while no weight has moved.
    let run = app.rollout(&canary("promote")).await.expect("run");
    run.expect(ExitCode::Done).expect("holds at the header pin");
    let_the_gateway_apply().await;
    ensure_text(&run.stderr, "canary: 1/3 pods (33.3%), traffic 0%");
    let pinned = spread(&app, 200, &[("X-Canary", "always")]).await;
    assert_eq!(pinned.get("v2"), Some(&200), "with the header: {pinned:?}");
    let live = spread(&app, 200, &[]).await;
    assert_eq!(live.get("v1"), Some(&200), "without the header: {live:?}");
    let mut measured = Vec::new();
    for percent in [5, 25, 50] {
        let run = app.rollout(&["promote", STS]).await.expect("promote");
        run.expect(ExitCode::Done).expect("holds at the weight");
        let_the_gateway_apply().await;
        let answers = spread(&app, SAMPLE, &[]).await;
        let share = assert_share(&answers, percent).expect("share");
        measured.push((percent, share));
        let pods = if percent == 50 { "2/3" } else { "1/3" };
        ensure_text(&run.stderr, &format!("canary: {pods} pods"));
        ensure_text(&run.stderr, &format!("traffic {percent}%"));
    }
    eprintln!("measured v2 shares over {SAMPLE} requests each: {measured:?}");
    let pinned = spread(&app, 100, &[("X-Canary", "always")]).await;
    assert_eq!(
        pinned.get("v2"),
        Some(&100),
        "with the header at 50%: {pinned:?}"
    );
    let names = services(&app).await.expect("services");
    assert!(
        names.contains(&"time-app-stable".to_string())
            && names.contains(&"time-app-canary".to_string()),
        "{names:?}"
    );
    // Abort: every request back to stable, pods back, the route exactly as it was.
    let run = app.rollout(&["abort", STS]).await.expect("abort");
    assert!(
        run.code == Some(0) || run.code == Some(3),
        "{}",
        run.describe()
    );
    let after = route_spec(&app, ROUTE).await.expect("route after");
    assert_eq!(
        serde_json::to_string(&after).expect("json"),
        serde_json::to_string(&before).expect("json"),
        "the route's spec after the rollback is not the spec before"
    );
    let names = services(&app).await.expect("services");
    assert!(
        !names
            .iter()
            .any(|n| n == "time-app-stable" || n == "time-app-canary"),
        "{names:?}"
    );
    app.wait_settled().await.expect("settled");
    app.assert_all_on("v1").await.expect("v1");
    let_the_gateway_apply().await;
    let live = spread(&app, 100, &[]).await;
    assert_eq!(live.get("v1"), Some(&100), "after the abort: {live:?}");
    app.assert_data_kept().await.expect("data");
    app.cleanup().await;
}

fn ensure_text(text: &str, wanted: &str) {
    assert!(text.contains(wanted), "expected {wanted:?} in:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_through_the_route_ends_with_the_route_as_it_was() {
    let (app, before) = routed_app("gw-full").await;
    let run = app
        .rollout(&canary_args(&["--steps", "50"], ROUTE))
        .await
        .expect("run");
    run.expect(ExitCode::Done).expect("done");
    assert_eq!(route_spec(&app, ROUTE).await.expect("route"), before);
    let names = services(&app).await.expect("services");
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("-stable") || n.ends_with("-canary")),
        "{names:?}"
    );
    app.assert_all_on("v2").await.expect("v2");
    let_the_gateway_apply().await;
    let live = spread(&app, 100, &[]).await;
    assert_eq!(live.get("v2"), Some(&100), "after the end: {live:?}");
    app.cleanup().await;
}

/// A route its gateway rejects already (a second backend that does not exist: Traefik sets
/// ResolvedRefs=False, BackendNotFound) is refused before anything is written: exit 2 with the
/// gateway's words.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_the_gateway_rejects_already_is_refused_and_nothing_changes() {
    let app = App::deploy("gw-rejected", 3, false).await.expect("deploy");
    let route: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": ROUTE},
        "spec": {
            "parentRefs": [{"name": GATEWAY, "namespace": GATEWAY_NS}],
            "hostnames": [host(&app)],
            "rules": [{"backendRefs": [{"name": STS, "port": 80}, {"name": "gone", "port": 80}]}],
        },
    }))
    .expect("route");
    routes(&app.ns)
        .create(&PostParams::default(), &route)
        .await
        .expect("route");
    crate::support::gateway::wait_route_status(&app.ns, ROUTE)
        .await
        .expect("the gateway judged the route");
    let before = route_spec(&app, ROUTE).await.expect("route");
    let generation = app.statefulset().await.expect("sts").metadata.generation;
    let run = app
        .rollout(&canary_args(&["--weight", "20"], ROUTE))
        .await
        .expect("run");
    run.expect(ExitCode::BadInput)
        .and_then(|r| {
            r.said(&[
                "HTTPRoute web is not accepted by its gateways now",
                "gateway devcluster-gateway/devcluster (traefik.io/gateway-controller) set ResolvedRefs=False",
                "nothing was changed",
            ])
        })
        .expect("refused, saying why");
    assert_eq!(route_spec(&app, ROUTE).await.expect("route"), before);
    assert_eq!(
        app.statefulset().await.expect("sts").metadata.generation,
        generation
    );
    let names = services(&app).await.expect("services");
    assert!(!names.iter().any(|n| n.ends_with("-canary")), "{names:?}");
    app.cleanup().await;
}

/// When a canary through the route loses its canary Service (someone deletes it).
enum Loss {
    /// As soon as rollout made it: the first weight write names a Service that is gone.
    AtOnce,
    /// At the first pause, while the route sends requests to it.
    AtThePause,
}

/// Runs a canary to v2 through a route of this test's own on `prefix`'s app with `steps`
/// (extra flags), deletes the canary Service at `loss`, and checks that the run is rolled back
/// (exit 3) with the gateway's `words`, leaving the route as it was, no Service of rollout's
/// behind and every pod on v1.
async fn canary_losing_its_service(prefix: &str, steps: &[&str], loss: Loss, words: &[&str]) {
    let (app, before) = routed_app(prefix).await;
    let args = canary_args(steps, ROUTE);
    let child = crate::support::rollout_command(app.name(), &args)
        .spawn()
        .expect("spawn");
    let canary = format!("{STS}-canary");
    let services_api = app.ns.api::<Service>();
    let limit = std::time::Duration::from_secs(120);
    match loss {
        Loss::AtOnce => {
            devcluster::testkit::wait_for(
                services_api.clone(),
                &canary,
                limit,
                |s: Option<&Service>| s.is_some(),
            )
            .await
            .expect("rollout made the canary Service");
        }
        Loss::AtThePause => {
            devcluster::testkit::wait_for(
                app.ns.api::<StatefulSet>(),
                STS,
                limit,
                |s: Option<&StatefulSet>| {
                    s.and_then(|s| s.metadata.annotations.as_ref())
                        .is_some_and(|a| a.values().any(|v| v.contains("\"phase\":\"Paused\"")))
                },
            )
            .await
            .expect("the canary paused");
        }
    }
    services_api
        .delete(&canary, &Default::default())
        .await
        .expect("delete the canary Service");
    let run = crate::support::finish_within(child, &args.join(" "), crate::support::RUN_LIMIT)
        .await
        .expect("the run ended");
    run.expect(ExitCode::GateFailed).expect("rolled back");
    for wanted in words {
        ensure_text(&run.stderr, wanted);
    }
    assert_eq!(route_spec(&app, ROUTE).await.expect("route"), before);
    let names = services(&app).await.expect("services");
    assert!(
        !names
            .iter()
            .any(|n| n.ends_with("-stable") || n.ends_with("-canary")),
        "{names:?}"
    );
    app.wait_settled().await.expect("settled");
    app.assert_all_on("v1").await.expect("v1");
    app.cleanup().await;
}

/// A weight write the gateway does not accept fails its step with the gateway's words (exit
/// 3) and the route comes back as it was: the canary Service is deleted as soon as rollout made
/// it, so the route's first weights name a Service Traefik cannot find.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_write_the_gateway_rejects_fails_the_step_with_its_message_and_is_restored() {
    canary_losing_its_service(
        "gw-reject",
        &["--weight", "20"],
        Loss::AtOnce,
        &[
            "HTTPRoute web was not accepted",
            "gateway devcluster-gateway/devcluster (traefik.io/gateway-controller) set ResolvedRefs=False",
        ],
    )
    .await;
}

/// The route is part of every gate: a canary Service deleted during the rollout (at the first
/// pause, while the route sends 34 % to it) makes the gateway set ResolvedRefs=False, and the
/// next gate fails with its words.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_its_gateway_stops_accepting_fails_the_next_gate() {
    canary_losing_its_service(
        "gw-gate",
        &["--steps", "34,67", "--pause", "10s"],
        Loss::AtThePause,
        &["route gate failed (HTTPRoute web)", "ResolvedRefs=False"],
    )
    .await;
}

/// A GitOps sync of the route while the canary holds (its rules as the manifest has them,
/// written by another field manager): `promote` stops without writing over it (exit 4, naming
/// the route and the writer), and `abort` then takes the route back to its own rules.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_synced_by_someone_else_during_a_hold_stops_the_rollout() {
    let (app, before) = routed_app("gw-drift").await;
    let held = app
        .rollout(&canary_args(
            &["--steps", "34,67", "--pause", "promote"],
            ROUTE,
        ))
        .await
        .expect("run");
    held.expect(ExitCode::Done).expect("held at 34 %");
    let weighted = route_spec(&app, ROUTE).await.expect("route");
    assert_ne!(weighted, before, "the weights are on the route");
    gitops_sync(&app, &before).await;
    // Told while the canary holds, before any run reads the route.
    let status = app.rollout(&["status", STS]).await.expect("status");
    ensure_text(
        &status.stdout,
        "drift:     changed by someone else: the rules of HTTPRoute web",
    );
    ensure_text(&status.stdout, "traffic as someone else left the route");
    let promoted = app.rollout(&["promote", STS]).await.expect("promote");
    promoted
        .expect(ExitCode::Locked)
        .and_then(|r| {
            r.said(&[
                "the rules of HTTPRoute web, which rollout wrote last",
                "by field manager gitops-sync",
                "rollout abort time-app",
            ])
        })
        .expect("stopped, saying why");
    assert_eq!(
        route_spec(&app, ROUTE).await.expect("route"),
        before,
        "the sync's rules stay"
    );
    let status = app.rollout(&["status", STS]).await.expect("status");
    ensure_text(&status.stdout, "HTTPRoute web");
    ensure_text(&status.stdout, "traffic as someone else left the route");
    abort_to_the_route_before(app, &before).await;
}

/// A sync during a timed pause is seen while the run waits, not when the pause ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_synced_by_someone_else_during_a_timed_pause_stops_the_run_at_once() {
    let (app, before) = routed_app("gw-drift-pause").await;
    let args = canary_args(&["--steps", "34,67", "--pause", "10m"], ROUTE);
    let run = rollout_command(&app.ns.name, &args)
        .spawn()
        .expect("start the run");
    // Paused at 34 % (a run, not a person, is waiting).
    let mut paused = false;
    for _ in 0..240 {
        if phase(&app).await.expect("status") == "Paused" {
            paused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(paused, "the run never paused");
    assert_ne!(route_spec(&app, ROUTE).await.expect("route"), before);
    gitops_sync(&app, &before).await;
    let synced = std::time::Instant::now();
    let run = finish_within(run, &args.join(" "), std::time::Duration::from_secs(120))
        .await
        .expect("the run stopped within its 10 minute pause");
    println!(
        "route drift during a timed pause: the run stopped {:.1} s after the sync",
        synced.elapsed().as_secs_f64()
    );
    run.expect(ExitCode::Locked).expect("stopped");
    ensure_text(&run.stderr, "by field manager gitops-sync");
    assert_eq!(
        route_spec(&app, ROUTE).await.expect("route"),
        before,
        "the sync's rules stay"
    );
    abort_to_the_route_before(app, &before).await;
}

/// Writes `before`'s rules into the route as field manager `gitops-sync` would.
async fn gitops_sync(app: &App, before: &Value) {
    let sync = kube::api::PatchParams {
        field_manager: Some("gitops-sync".into()),
        ..Default::default()
    };
    routes(&app.ns)
        .patch(
            ROUTE,
            &sync,
            &kube::api::Patch::Merge(json!({"spec": {"rules": before["rules"]}})),
        )
        .await
        .expect("sync the route");
}

/// `rollout abort` after the route's drift: the route as it was before the rollout, the
/// canary Service gone, every pod on v1 with its data.
async fn abort_to_the_route_before(app: App, before: &Value) {
    app.rollout(&["abort", STS])
        .await
        .expect("abort")
        .expect(ExitCode::Done)
        .expect("aborted");
    assert_eq!(route_spec(&app, ROUTE).await.expect("route"), *before);
    let names = services(&app).await.expect("services");
    assert!(!names.iter().any(|n| n.ends_with("-canary")), "{names:?}");
    app.wait_settled().await.expect("settled");
    app.assert_all_on("v1").await.expect("v1");
    app.assert_data_kept().await.expect("data kept");
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_that_cannot_carry_the_canary_is_bad_input_and_nothing_changes() {
    let app = App::deploy("gw-bad", 2, false).await.expect("deploy");
    let other: Service = serde_json::from_value(json!({
        "metadata": {"name": "other"},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]},
    }))
    .expect("service");
    app.ns
        .api::<Service>()
        .create(&PostParams::default(), &other)
        .await
        .expect("other");
    let elsewhere = create_route(&app, "elsewhere", "other", json!([]))
        .await
        .expect("route");
    let generation = |s: &StatefulSet| (s.metadata.generation, s.metadata.annotations.clone());
    let set_before = generation(&app.statefulset().await.expect("sts"));
    let services_before = services(&app).await.expect("services");
    let cases: [(&str, &str); 3] = [
        ("missing", "HTTPRoute missing not found"),
        ("kube-system/web", "must be in the StatefulSet's namespace"),
        (
            "elsewhere",
            "send no traffic to a Service that selects the set's pods",
        ),
    ];
    for (route, message) in cases {
        let run = app
            .rollout(&canary_args(&["--weight", "20"], route))
            .await
            .expect("run");
        run.expect(ExitCode::BadInput).expect("bad input");
        assert!(
            run.stderr.contains(message),
            "--route {route}: {}",
            run.describe()
        );
        assert!(
            run.stderr.contains("nothing was changed"),
            "{}",
            run.describe()
        );
    }
    assert_eq!(
        generation(&app.statefulset().await.expect("sts")),
        set_before
    );
    assert_eq!(services(&app).await.expect("services"), services_before);
    assert_eq!(
        route_spec(&app, "elsewhere").await.expect("route"),
        elsewhere
    );
    app.cleanup().await;
}
