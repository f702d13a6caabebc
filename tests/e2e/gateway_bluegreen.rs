//! Blue/green switched by a Gateway API HTTPRoute (`bluegreen --traffic gateway --route`) on the
//! devcluster's gateway (Traefik on 127.0.0.1): a header previews green while everyone else
//! stays on blue, the switch is one route write under a client asking every 5 ms (every failed
//! request counted), and the route ends byte for byte as it was, after the switch and after a
//! rollback. Each test's route matches a host name of its own; requests go to the gateway on
//! loopback only, a bounded number of them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use rollout::model::exit::ExitCode;
use serde_json::Value;

use crate::support::gateway::{
    get_via_gateway, make_route, routes, spread_by, spread_via_gateway, wait_route_status,
    wait_serving,
};
use crate::support::{App, STS};

const ROUTE: &str = "web";
const PREVIEW_HEADER: (&str, &str) = ("X-Preview", "yes");
/// The client's pace, and the most requests it sends (120 s at that pace).
const PACE: Duration = Duration::from_millis(5);
const MAX_REQUESTS: usize = 24_000;

fn host(app: &App) -> String {
    format!("{}.test", app.ns.name)
}

async fn route_spec(app: &App) -> anyhow::Result<Value> {
    let route = routes(&app.ns).get(ROUTE).await?;
    Ok(route.data.get("spec").cloned().unwrap_or(Value::Null))
}

/// The time app's route (every request for the test's host to its Service on port 80), served.
async fn routed_app(prefix: &str) -> anyhow::Result<(App, Value)> {
    let app = App::deploy(prefix, 3, false).await?;
    make_route(&app.ns, ROUTE, &host(&app), STS, 80).await?;
    wait_route_status(&app.ns, ROUTE).await?;
    wait_serving(&host(&app), "/healthz", &[], |seen| {
        seen.get("time-app-0").is_some()
    })
    .await?;
    let before = route_spec(&app).await?;
    Ok((app, before))
}

/// Versions answered by `count` requests through the gateway (`<status>`, `<error>` for
/// failures).
async fn versions(app: &App, headers: &[(&str, &str)], count: usize) -> BTreeMap<String, usize> {
    spread_by(&host(app), "/healthz", headers, count, |a| {
        a.version.clone()
    })
    .await
}

/// What a client asking every [`PACE`] saw: the version of each answer in order (`<status>` or
/// `<error>` for a failure).
struct Client {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Client {
    fn start(hostname: String) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut tick = tokio::time::interval(PACE);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::Relaxed) && seen.len() < MAX_REQUESTS {
                tick.tick().await;
                seen.push(match get_via_gateway(&hostname, "/healthz", &[]).await {
                    Ok(a) if a.status < 400 => a.version,
                    Ok(a) => format!("<{}>", a.status),
                    Err(_) => "<error>".into(),
                });
            }
            seen
        });
        Client { stop, task }
    }

    async fn stop(self) -> anyhow::Result<Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blue_green_through_the_route_previews_by_header_and_switches_in_one_write() {
    let (app, before) = routed_app("gw-bg").await.expect("app and route");
    let hostname = host(&app);
    let run = app
        .rollout(&[
            "bluegreen",
            STS,
            "--image",
            "time-app:v2",
            "--traffic",
            "gateway",
            "--route",
            ROUTE,
            "--preview-header",
            &format!("{}={}", PREVIEW_HEADER.0, PREVIEW_HEADER.1),
            "--scale-down-delay",
            "5s",
        ])
        .await
        .expect("run");
    run.expect(ExitCode::Done).expect("held for promote");
    assert!(
        run.stderr
            .contains("requests with X-Preview=yes to time-app-preview (green)"),
        "{}",
        run.describe()
    );
    // Testers reach green by the header; everyone else is on blue.
    wait_serving(&hostname, "/healthz", &[PREVIEW_HEADER], |seen| {
        seen.keys().any(|pod| pod.starts_with("time-app-bg"))
    })
    .await
    .expect("the preview header reaches green");
    let previewed = versions(&app, &[PREVIEW_HEADER], 200).await;
    let others = versions(&app, &[], 200).await;
    assert_eq!(
        previewed,
        BTreeMap::from([("v2".to_string(), 200)]),
        "with the header"
    );
    assert_eq!(
        others,
        BTreeMap::from([("v1".to_string(), 200)]),
        "without it"
    );

    // The switch under a client asking every 5 ms.
    let client = Client::start(hostname.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let promote = app.rollout(&["promote", STS]).await.expect("promote");
    let took = started.elapsed();
    promote.expect(ExitCode::Done).expect("promoted");
    // Traefik applies a route change within its 2 s throttle: the client keeps asking a little.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = client.stop().await.expect("client");
    let failed: Vec<&String> = seen.iter().filter(|v| v.starts_with('<')).collect();
    let first_v2 = seen.iter().position(|v| v == "v2");
    let blue_after = first_v2.map_or(0, |i| seen[i..].iter().filter(|v| *v == "v1").count());
    eprintln!(
        "switch through the route: {} requests in {:.1} s of promote, {} failed, {} answered by blue after green's first answer",
        seen.len(),
        took.as_secs_f64(),
        failed.len(),
        blue_after
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed during the switch: {:?}",
        failed.len(),
        seen.len(),
        failed.iter().take(10).collect::<Vec<_>>()
    );
    assert!(first_v2.is_some(), "green never answered: {seen:?}");
    assert!(
        seen.iter().rev().take(100).all(|v| v == "v2"),
        "after the switch: {:?}",
        &seen[seen.len().saturating_sub(100)..]
    );
    assert!(
        promote
            .stderr
            .contains("every request to time-app-preview (green), in one write"),
        "{}",
        promote.describe()
    );

    // The route ends as it was, the preview Service is gone, and every request goes to green
    // through the live Service.
    assert_eq!(route_spec(&app).await.expect("route"), before);
    let services: Vec<String> = app
        .ns
        .api::<Service>()
        .list(&Default::default())
        .await
        .expect("services")
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert!(
        !services.contains(&"time-app-preview".to_string()),
        "{services:?}"
    );
    let after = spread_via_gateway(&hostname, "/healthz", &[], 50).await;
    assert!(
        after.keys().all(|pod| pod.starts_with("time-app-bg")),
        "{after:?}"
    );
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blue_green_through_the_route_rolled_back_leaves_the_route_as_it_was() {
    let (app, before) = routed_app("gw-bg-back").await.expect("app and route");
    let bluegreen = |extra: &'static [&'static str]| {
        let mut args = vec![
            "bluegreen",
            STS,
            "--image",
            "time-app:v2",
            "--traffic",
            "gateway",
            "--route",
            ROUTE,
            "--preview-header",
            "X-Preview=yes",
        ];
        args.extend_from_slice(extra);
        args
    };
    // Aborted at the hold, with the preview rule on the route: the rule goes, green goes.
    let held = app.rollout(&bluegreen(&[])).await.expect("run");
    held.expect(ExitCode::Done).expect("held");
    assert_ne!(route_spec(&app).await.expect("route"), before, "previewing");
    let abort = app.rollout(&["abort", STS]).await.expect("abort");
    abort.expect(ExitCode::Done).expect("aborted");
    assert_eq!(route_spec(&app).await.expect("route"), before);

    // Switched to the end, then undone: blue serves through the route again.
    let run = app
        .rollout(&bluegreen(&["--auto-promote", "--scale-down-delay", "0s"]))
        .await
        .expect("run");
    run.expect(ExitCode::Done).expect("switched");
    assert_eq!(route_spec(&app).await.expect("route"), before);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        versions(&app, &[], 20).await,
        BTreeMap::from([("v2".to_string(), 20)]),
        "green serves after the switch"
    );
    let undo = app.rollout(&["undo", STS]).await.expect("undo");
    undo.expect(ExitCode::Done).expect("undone");
    assert_eq!(route_spec(&app).await.expect("route"), before);
    wait_serving(&host(&app), "/healthz", &[], |seen| {
        seen.get("time-app-0").is_some()
    })
    .await
    .expect("blue serves again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        versions(&app, &[], 50).await,
        BTreeMap::from([("v1".to_string(), 50)]),
        "after the undo"
    );
    app.assert_data_kept().await.expect("blue's data");
    app.cleanup().await;
}

/// A route whose rules send to no Service of the set is refused before anything changes, for
/// blue/green as for a canary.
#[tokio::test(flavor = "multi_thread")]
async fn a_blue_green_through_a_route_that_misses_the_set_is_bad_input() {
    let app = App::deploy("gw-bg-bad", 2, false).await.expect("deploy");
    make_route(&app.ns, ROUTE, &host(&app), "elsewhere", 80)
        .await
        .expect("route");
    let before = app.statefulset().await.expect("sts").metadata.generation;
    let run = app
        .rollout(&[
            "bluegreen",
            STS,
            "--image",
            "time-app:v2",
            "--traffic",
            "gateway",
            "--route",
            ROUTE,
        ])
        .await
        .expect("run");
    run.expect(ExitCode::BadInput).expect("bad input");
    assert!(
        run.stderr
            .contains("send no traffic to a Service that selects the set's pods"),
        "{}",
        run.describe()
    );
    assert_eq!(
        app.statefulset().await.expect("sts").metadata.generation,
        before
    );
    let sets = app
        .ns
        .api::<k8s_openapi::api::apps::v1::StatefulSet>()
        .list(&Default::default())
        .await
        .context("sets")
        .expect("sets");
    assert_eq!(sets.items.len(), 1, "no green was made");
    app.cleanup().await;
}
