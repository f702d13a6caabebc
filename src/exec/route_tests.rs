//! The executor against the fake cluster for a canary through an HTTPRoute: the weights the
//! route carries step by step, its original rules written back at the end and after a gateway
//! rejects a write, the per-revision Services made and removed, and a missing route refused
//! before anything is written. A task plays the gateway: it answers every new generation of the
//! route with `Accepted` and `ResolvedRefs` (or rejects it).

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use serde_json::{json, Value};

use super::commands::{self, Context, Output, RunRequest, TemplateSource};
use super::fake::{statefulset, FakeCluster, FakeGates};
use super::lease::Identity;
use super::progress::{Out, Progress};
use crate::cluster::{Cluster, Select};
use crate::model::exit::ExitCode;
use crate::model::gate::GateSpec;
use crate::model::image::ImageChange;
use crate::model::route::{HttpRoute, RouteTraffic};
use crate::model::state::{Phase, RolloutState};
use crate::model::strategy::{
    OnFailure, PauseSpec, StrategyConfig, StrategyFlags, StrategyKind, Timeouts,
};
use crate::model::HumanDuration;

fn context(fake: &FakeCluster) -> Context<FakeCluster, FakeGates> {
    Context {
        cluster: fake.clone(),
        gates: FakeGates::default(),
        progress: Progress::memory(),
        out: Out::memory(),
        output: Output::Text,
        me: Identity {
            user: "dev".into(),
            host: "laptop".into(),
            pid: 1,
            run: Some("run1".into()),
            space: None,
        },
        lease_duration: Duration::from_secs(15),
        announce: crate::exec::announce::Announcer::default(),
        step_summary: None,
    }
}

fn request(steps: &str, route: &str) -> RunRequest {
    held_request(steps, route, None)
}

/// A canary through `route` in `steps`, holding for `pause` after each.
fn held_request(steps: &str, route: &str, pause: Option<PauseSpec>) -> RunRequest {
    let flags = StrategyFlags {
        steps: steps.parse().ok(),
        pause,
        traffic: Some(Box::new(RouteTraffic {
            route: route.into(),
            namespace: None,
            canary_header: None,
            mirror_percent: None,
        })),
        ..StrategyFlags::default()
    };
    let config = StrategyConfig::new(
        StrategyKind::Canary,
        &flags,
        GateSpec::default(),
        Timeouts {
            step: HumanDuration::from_secs(60),
            total: None,
        },
        OnFailure::Rollback,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    RunRequest {
        statefulset: "web".into(),
        config,
        source: TemplateSource::Images(vec!["app:v2"
            .parse::<ImageChange>()
            .unwrap_or_else(|e| panic!("{e}"))]),
        wait_at_holds: false,
        prometheus_url: None,
    }
}

fn original_rules() -> Value {
    json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
            "backendRefs": [{"name": "web", "port": 80}]}])
}

/// The set `web` (4 pods), its Service and a route to it.
fn cluster() -> FakeCluster {
    let fake = FakeCluster::new(statefulset("web", 4, "app:v1", true));
    let service: Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let route = HttpRoute {
        metadata: serde_json::from_value(json!({"name": "web", "generation": 1}))
            .unwrap_or_default(),
        spec: json!({"parentRefs": [{"name": "gw", "namespace": "infra"}], "hostnames": ["web.test"], "rules": original_rules()}),
        status: None,
    };
    fake.with(|s| {
        s.put(&service);
        s.put(&route);
    });
    fake
}

/// Plays the gateway: answers each new generation of the route (`reject`: with Accepted=False
/// for rules that send to the canary) and keeps the canary weights it saw.
fn gateway(fake: &FakeCluster, reject: bool) -> tokio::task::JoinHandle<Vec<u64>> {
    let fake = fake.clone();
    tokio::spawn(async move {
        let mut watch = fake.observe::<HttpRoute>(&Select::named("web"));
        let mut weights = Vec::new();
        loop {
            let route = watch.borrow_and_update().items.first().cloned();
            if let Some(mut route) = route {
                let generation = route.metadata.generation.unwrap_or(0);
                let answered = route
                    .status
                    .as_ref()
                    .and_then(|s| s.pointer("/parents/0/conditions/0/observedGeneration"))
                    .and_then(Value::as_i64)
                    == Some(generation);
                if !answered {
                    let canary = route.spec["rules"][0]["backendRefs"]
                        .as_array()
                        .and_then(|refs| refs.iter().find(|r| r["name"] == "web-canary"))
                        .and_then(|r| r["weight"].as_u64());
                    if let Some(w) = canary {
                        weights.push(w);
                    }
                    let accepted = if reject && canary.is_some() {
                        "False"
                    } else {
                        "True"
                    };
                    route.status = Some(json!({"parents": [{
                        "parentRef": {"name": "gw", "namespace": "infra"},
                        "controllerName": "example.io/gateway",
                        "conditions": [
                            {"type": "Accepted", "status": accepted, "observedGeneration": generation,
                             "reason": "UnsupportedValue", "message": "weights are not for this gateway"},
                            {"type": "ResolvedRefs", "status": "True", "observedGeneration": generation,
                             "reason": "ResolvedRefs", "message": ""},
                        ],
                    }]}));
                    route.metadata.resource_version = None;
                    fake.with(|s| s.put(&route));
                }
            }
            if watch.changed().await.is_err() {
                break;
            }
            if fake.with(|s| s.get::<HttpRoute>("web")).is_none() {
                break;
            }
            if weights.len() > 50 {
                break;
            }
        }
        weights
    })
}

fn route_rules(fake: &FakeCluster) -> Value {
    fake.with(|s| s.get::<HttpRoute>("web"))
        .map(|r| r.spec["rules"].clone())
        .unwrap_or_default()
}

fn revision_services(fake: &FakeCluster) -> Vec<String> {
    fake.with(|s| s.list::<Service>())
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n != "web")
        .collect()
}

#[tokio::test]
async fn a_route_canary_writes_each_weight_and_gives_the_route_back() {
    let fake = cluster();
    let seen = gateway(&fake, false);
    let ctx = context(&fake);
    let code = commands::run(&ctx, &request("10,50", "web"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done, "{:#?}", ctx.progress.lines());
    assert_eq!(fake.image(), "app:v2");
    assert_eq!(
        route_rules(&fake),
        original_rules(),
        "the route's own rules at the end"
    );
    assert!(
        revision_services(&fake).is_empty(),
        "{:?}",
        revision_services(&fake)
    );
    seen.abort();
    let lines = ctx.progress.lines().join("\n");
    assert!(
        lines.contains("canary: 1/4 pods (25%), traffic 10%"),
        "{lines}"
    );
    assert!(
        lines.contains("canary: 2/4 pods (50%), traffic 50%"),
        "{lines}"
    );
    assert!(lines.contains("accepted by its gateways"), "{lines}");
}

#[tokio::test]
async fn a_route_the_gateway_rejects_rolls_back_with_its_words_and_the_route_as_it_was() {
    let fake = cluster();
    let _gateway = gateway(&fake, true);
    let ctx = context(&fake);
    let code = commands::run(&ctx, &request("10,50", "web"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::GateFailed, "{:#?}", ctx.progress.lines());
    assert_eq!(fake.image(), "app:v1");
    assert_eq!(route_rules(&fake), original_rules());
    assert!(revision_services(&fake).is_empty());
    let lines = ctx.progress.lines().join("\n");
    assert!(
        lines.contains("gateway infra/gw (example.io/gateway) set Accepted=False, reason UnsupportedValue: weights are not for this gateway"),
        "{lines}"
    );
}

#[tokio::test]
async fn a_route_someone_else_rewrites_during_a_hold_stops_the_run_and_is_not_written_over() {
    let fake = cluster();
    let _gateway = gateway(&fake, false);
    let ctx = context(&fake);
    let held = held_request("10,50", "web", Some(PauseSpec::UntilPromote));
    let code = commands::run(&ctx, &held)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done, "{:#?}", ctx.progress.lines());
    // A GitOps sync puts the route as its manifest has it, while the canary holds at 10 %.
    let synced = json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                         "backendRefs": [{"name": "web", "port": 80, "weight": 7}]}]);
    fake.with(|s| {
        let mut route = s.get::<HttpRoute>("web").unwrap_or_default();
        route.spec["rules"] = synced.clone();
        route.metadata.resource_version = None;
        s.put(&route);
    });
    // `status` tells it before any run sees it.
    commands::status(&ctx, "web", false, None, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let shown = ctx.out.text();
    assert!(
        shown.contains("traffic as someone else left the route")
            && shown.contains("drift:     changed by someone else: the rules of HTTPRoute web")
            && shown.contains("a run stops without"),
        "{shown}"
    );
    let error = commands::promote(&ctx, "web", false, false, None, &Default::default())
        .await
        .err()
        .unwrap_or_else(|| panic!("promote went on over the route's new rules"));
    assert_eq!(error.exit_code(), ExitCode::Locked, "{error}");
    assert!(
        error
            .to_string()
            .contains("the rules of HTTPRoute web, which rollout wrote last (they now send to web:80 weight 7)"),
        "{error}"
    );
    assert_eq!(route_rules(&fake), synced, "the other change stays");
    assert_eq!(fake.image(), "app:v2", "nothing rolled back");
    commands::status(&ctx, "web", false, None, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let shown = ctx.out.text();
    assert!(
        shown.contains("traffic as someone else left the route (see message)")
            && shown.contains("by someone else: the rules of HTTPRoute web"),
        "{shown}"
    );
    // `abort` goes back over it: the route's rules from before the rollout.
    let code = commands::abort(&ctx, "web", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done, "{:#?}", ctx.progress.lines());
    assert_eq!(route_rules(&fake), original_rules());
    assert_eq!(fake.image(), "app:v1");
    assert!(revision_services(&fake).is_empty());
}

/// Rewrites the route's rules to `rules` (someone else's sync) once the rollout pauses with a
/// canary weight on the route.
fn sync_once_paused(fake: &FakeCluster, rules: Value) -> tokio::task::JoinHandle<()> {
    let fake = fake.clone();
    tokio::spawn(async move {
        loop {
            let set = fake.set();
            let paused = set
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::model::state::ANNOTATION_KEY))
                .and_then(|text| RolloutState::from_annotation("web", text).ok())
                .is_some_and(|r| r.phase == Phase::Paused);
            if paused && route_rules(&fake).to_string().contains("web-canary") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fake.with(|s| {
            let mut route = s.get::<HttpRoute>("web").unwrap_or_default();
            route.spec["rules"] = rules;
            route.metadata.resource_version = None;
            s.put(&route);
        });
    })
}

#[tokio::test]
async fn a_route_someone_else_rewrites_during_a_timed_pause_stops_the_run_before_the_pause_ends() {
    let fake = cluster();
    let _gateway = gateway(&fake, false);
    let ctx = context(&fake);
    let synced = json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                         "backendRefs": [{"name": "web", "port": 80}]}]);
    let sync = sync_once_paused(&fake, synced.clone());
    let pause = PauseSpec::For(HumanDuration::from_secs(600));
    let error = tokio::time::timeout(
        Duration::from_secs(60),
        commands::run(&ctx, &held_request("10,50", "web", Some(pause))),
    )
    .await
    .unwrap_or_else(|_| panic!("the run waited out its pause: {:#?}", ctx.progress.lines()))
    .err()
    .unwrap_or_else(|| panic!("the run went on over the route's new rules"));
    sync.abort();
    assert_eq!(error.exit_code(), ExitCode::Locked, "{error}");
    assert!(
        error.to_string().contains("the rules of HTTPRoute web"),
        "{error}"
    );
    assert_eq!(route_rules(&fake), synced, "the other change stays");
    assert_eq!(fake.image(), "app:v2", "nothing rolled back");
}

#[tokio::test]
async fn a_route_its_gateways_reject_already_is_refused_before_anything_is_written() {
    let fake = cluster();
    fake.with(|s| {
        let mut route = s.get::<HttpRoute>("web").unwrap_or_default();
        route.status = Some(json!({"parents": [{
            "parentRef": {"name": "gw", "namespace": "infra"},
            "controllerName": "example.io/gateway",
            "conditions": [
                {"type": "Accepted", "status": "True", "observedGeneration": 1, "reason": "Accepted"},
                {"type": "ResolvedRefs", "status": "False", "observedGeneration": 1,
                 "reason": "BackendNotFound", "message": "service shop/gone not found"},
            ],
        }]}));
        route.metadata.resource_version = None;
        s.put(&route);
    });
    let ctx = context(&fake);
    let error = commands::run(&ctx, &request("10", "web"))
        .await
        .err()
        .unwrap_or_else(|| panic!("a rejected route went through"));
    assert_eq!(error.exit_code(), ExitCode::BadInput);
    let text = error.to_string();
    assert!(
        text.contains("HTTPRoute web is not accepted by its gateways now")
            && text.contains(
                "ResolvedRefs=False, reason BackendNotFound: service shop/gone not found"
            )
            && text.contains("nothing was changed"),
        "{text}"
    );
    // Only the run's Lease was taken and given back.
    let kinds: Vec<String> = fake.with(|s| s.writes.iter().map(|w| w.kind.clone()).collect());
    assert!(kinds.iter().all(|k| k == "Lease"), "{kinds:?}");
    assert_eq!(fake.image(), "app:v1");
}

#[tokio::test]
async fn a_missing_route_is_refused_before_anything_is_written() {
    let fake = cluster();
    let ctx = context(&fake);
    let error = commands::run(&ctx, &request("10", "nope"))
        .await
        .err()
        .unwrap_or_else(|| panic!("a missing route went through"));
    assert_eq!(error.exit_code(), ExitCode::BadInput);
    assert!(
        error.to_string().contains("HTTPRoute nope not found"),
        "{error}"
    );
    assert_eq!(fake.image(), "app:v1");
    assert!(fake.set().metadata.annotations.is_none_or(|a| a.is_empty()));
    assert!(revision_services(&fake).is_empty());
}
