//! SIGKILL at every step, for every strategy: one rollout per strategy is killed at each step
//! boundary (right after the record moves to a new step) and in the middle of each step, and
//! continued with `rollout resume` each time, to the end. After every kill `rollout status -o
//! json` must tell the truth (an active phase, the step the record is at) and the cluster must
//! agree with the steps the record counts as done. Before that, a first rollout per strategy is
//! killed part-way and `rollout abort` must bring it back to v1. At the end: the right version
//! everywhere and every pod's claim, volume and visits kept.
//!
//! (`recovery.rs` has single kills of a rolling run: at the first batch, and mid-rollback.)

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use devcluster::testkit;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use rollout::model::exit::ExitCode;

use crate::bluegreen::assert_blue_volumes_kept;
use crate::support::{rollout_command, versions_through_service, App, SETTLE, STS};

/// Fast gates: a short probe window, so a rollout of 3 pods has many short steps.
const FAST_GATES: &[&str] = &["--probe-window", "2s", "--probe-interval", "500ms"];
/// How long after a step began a mid-step kill lands.
const MID_STEP: Duration = Duration::from_millis(400);
/// More kills than this in one rollout means it is not getting anywhere.
const MAX_KILLS: u32 = 40;

fn record_of(sts: &StatefulSet) -> Option<serde_json::Value> {
    let text = sts
        .metadata
        .annotations
        .as_ref()?
        .get("rollout.dev/state")?;
    serde_json::from_str(text).ok()
}

fn step_of(record: &serde_json::Value) -> u64 {
    record["currentStep"].as_u64().unwrap_or(0)
}

fn finished(record: &serde_json::Value) -> bool {
    matches!(
        record["phase"].as_str(),
        Some("Succeeded" | "RolledBack" | "Aborted" | "Failed")
    )
}

/// Which rollout's record a wait is about.
#[derive(Clone)]
enum Which {
    /// This one.
    Id(String),
    /// A new one: any record but the one there before (`None`: there was none).
    Not(Option<String>),
}

impl Which {
    fn matches(&self, record: &serde_json::Value) -> bool {
        match self {
            Which::Id(id) => record["id"] == id.as_str(),
            Which::Not(old) => old.as_deref().is_none_or(|old| record["id"] != old),
        }
    }
}

/// Waits (on a watch) until the record of the rollout `which` is at step `step` or later, or
/// finished.
async fn wait_step(app: &App, which: Which, step: u64) -> anyhow::Result<serde_json::Value> {
    let sts = testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        SETTLE,
        move |s: Option<&StatefulSet>| {
            s.and_then(record_of)
                .is_some_and(|r| which.matches(&r) && (step_of(&r) >= step || finished(&r)))
        },
    )
    .await?;
    record_of(&sts).context("the record is gone")
}

/// What `status -o json` says right after a kill, checked against the record on the set and
/// against the cluster: the phase is active, the step is the record's, and every step the record
/// counts as done shows in the objects.
async fn assert_truth_after_kill(app: &App, id: &str) -> anyhow::Result<String> {
    let run = app.rollout(&["status", STS, "-o", "json"]).await?;
    run.expect(ExitCode::Done)?;
    let status = run.json()?;
    let record = record_of(&app.statefulset().await?).context("no record after the kill")?;
    ensure!(record["id"] == id, "another rollout's record: {record}");
    let phase = status["rollout"]["phase"].as_str().unwrap_or_default();
    ensure!(
        phase == record["phase"]
            && (finished(&record) || matches!(phase, "Progressing" | "Paused" | "RollingBack")),
        "status says phase {phase:?}, the record {}: {}",
        record["phase"],
        run.describe()
    );
    let step = step_of(&record);
    ensure!(
        status["rollout"]["step"].as_u64() == Some(step + 1),
        "status says step {}, the record is at step index {step}",
        status["rollout"]["step"]
    );
    if matches!(phase, "Progressing" | "Paused") {
        assert_cluster_has_done_steps(app, &record, &status).await?;
    }
    Ok(format!(
        "step {}/{} {}",
        step + 1,
        record["plan"]["steps"].as_array().map_or(0, Vec::len),
        record["plan"]["steps"][step as usize]["type"]
            .as_str()
            .unwrap_or("(end)")
    ))
}

/// Every step before the record's current one shows in the cluster.
async fn assert_cluster_has_done_steps(
    app: &App,
    record: &serde_json::Value,
    status: &serde_json::Value,
) -> anyhow::Result<()> {
    let steps = record["plan"]["steps"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current = step_of(record) as usize;
    let done = &steps[..current.min(steps.len())];
    let sets = app.ns.api::<StatefulSet>();
    let image = |s: &StatefulSet| {
        s.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone())
            .unwrap_or_default()
    };
    let sts = app.statefulset().await?;
    let target = record["target"]["images"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // The last partition written and the last size of each set, by the steps done.
    let mut partition = None;
    let mut scaled: BTreeMap<String, u64> = BTreeMap::new();
    let mut twins: BTreeMap<String, bool> = BTreeMap::new();
    let mut switched = false;
    let mut route_written: Option<String> = None;
    for step in done {
        match step["type"].as_str().unwrap_or_default() {
            "setTemplateAndFreeze" | "setTemplate" => ensure!(
                image(&sts) == target,
                "the template step is done but {STS} runs {}",
                image(&sts)
            ),
            "setPartition" => partition = step["partition"].as_u64(),
            "scale" => {
                scaled.insert(
                    step["set"].as_str().unwrap_or_default().to_string(),
                    step["replicas"].as_u64().unwrap_or_default(),
                );
            }
            "createTwin" => {
                twins.insert(step["set"].as_str().unwrap_or_default().to_string(), true);
            }
            "removeTwin" => {
                twins.insert(step["set"].as_str().unwrap_or_default().to_string(), false);
            }
            "switchTraffic" => switched = true,
            "switchRoute" | "previewRoute" | "restoreRoute" | "setRouteWeights" => {
                route_written = step["type"].as_str().map(str::to_string);
            }
            _ => {}
        }
    }
    if let Some(last) = route_written {
        // The route step under way may have written the route before the kill.
        let begun = record["stepStartedAt"].is_string();
        let under_way = steps
            .get(current)
            .and_then(|s| s["type"].as_str())
            .filter(|t| {
                begun
                    && matches!(
                        *t,
                        "switchRoute" | "previewRoute" | "restoreRoute" | "setRouteWeights"
                    )
            });
        let shown = route_shows(app, record, &last).await?;
        let shown_now = match (&shown, under_way) {
            (Err(_), Some(step)) => route_shows(app, record, step).await?,
            _ => Ok(()),
        };
        if let (Err(problem), Err(_)) = (shown, shown_now) {
            bail!("{problem}");
        }
    }
    if let Some(partition) = partition {
        let now = sts
            .spec
            .as_ref()
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .unwrap_or(0) as u64;
        ensure!(
            now <= partition,
            "a step lowering the partition to {partition} is done, but it is {now}"
        );
        let released = u64::from(u32::try_from(app.replicas)?) - partition;
        let updated = status["rollout"]["updatedPods"].as_u64().unwrap_or(0);
        ensure!(
            updated >= released,
            "{released} pods are released by the steps done, status counts {updated} on the new version"
        );
    }
    let touching = |set: &str| {
        steps.get(current).is_some_and(|s| {
            s["set"].as_str() == Some(set) || s["type"] == "removeTwin" || s["type"] == "createTwin"
        })
    };
    for (set, replicas) in &scaled {
        if touching(set) || twins.get(set) == Some(&false) {
            continue;
        }
        let now = sets
            .get_opt(set)
            .await?
            .and_then(|s| s.spec)
            .and_then(|s| s.replicas);
        ensure!(
            now.map(|r| r as u64) == Some(*replicas),
            "{set} was scaled to {replicas} by a step done, but has {now:?}"
        );
    }
    for (set, exists) in &twins {
        // The step under way may be creating or removing it.
        if steps
            .get(current)
            .is_some_and(|s| s["set"].as_str() == Some(set))
        {
            continue;
        }
        let now = sets.get_opt(set).await?;
        let alive = now.is_some_and(|s| s.metadata.deletion_timestamp.is_none());
        ensure!(
            alive == *exists,
            "by the steps done {set} should {}exist",
            if *exists { "" } else { "not " }
        );
    }
    if switched {
        let svc = app.ns.api::<Service>().get(STS).await?;
        let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
        ensure!(
            selector.contains_key("rollout.dev/set"),
            "the switch is done, but Service {STS} still selects {selector:?}"
        );
    }
    Ok(())
}

/// Whether the route is as the route step `last` left it: its own rules after `restoreRoute`;
/// after blue/green's `switchRoute` every backendRef to the set's Service names the preview;
/// after `previewRoute` a rule more, to the preview; after a canary's weights, the
/// per-revision Services.
async fn route_shows(
    app: &App,
    record: &serde_json::Value,
    last: &str,
) -> anyhow::Result<Result<(), String>> {
    let name = record["route"]["route"]
        .as_str()
        .context("no route in the record")?;
    let route = crate::support::gateway::routes(&app.ns).get(name).await?;
    let rules = &route.data["spec"]["rules"];
    let original = &record["route"]["originalRules"];
    let backends: Vec<&str> = rules
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["backendRefs"].as_array().into_iter().flatten())
        .filter_map(|b| b["name"].as_str())
        .collect();
    let preview = record["twin"]["preview"].as_str().unwrap_or_default();
    let service = record["route"]["service"].as_str().unwrap_or_default();
    let (shown, problem) = match last {
        "restoreRoute" => (
            rules == original,
            format!("restoreRoute is done, but the route's rules are {rules}, not {original}"),
        ),
        "switchRoute" => (
            backends.iter().all(|b| *b == preview),
            format!(
                "switchRoute is done, but the route sends to {backends:?}, not {preview} alone"
            ),
        ),
        "previewRoute" => (
            backends.contains(&preview) && backends.contains(&service),
            format!("previewRoute is done, but the route sends to {backends:?}"),
        ),
        _ => (
            backends.iter().any(|b| b.ends_with("-stable")),
            format!("the route's weights are written, but it sends to {backends:?}"),
        ),
    };
    Ok(if shown { Ok(()) } else { Err(problem) })
}

/// Runs `first` and SIGKILLs the process at every step boundary and in the middle of every
/// step, continuing with `rollout resume` each time, until the rollout ends by itself. Returns
/// the number of kills and where each landed.
async fn kill_at_every_step(app: &App, first: &[&str]) -> anyhow::Result<(u32, Vec<String>)> {
    let mut args: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    let before =
        record_of(&app.statefulset().await?).and_then(|r| r["id"].as_str().map(str::to_string));
    let mut id: Option<String> = None;
    // A kill right after the first record is written, then in the middle of that step, then
    // at each boundary (right after the record moved on) and in the middle of that step.
    let (mut target, mut mid) = (0u64, false);
    let mut kills = 0;
    let mut landed = Vec::new();
    let which = |id: &Option<String>| match id {
        Some(id) => Which::Id(id.clone()),
        None => Which::Not(before.clone()),
    };
    loop {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut child = rollout_command(app.name(), &argv).spawn()?;
        let reached = tokio::select! {
            r = wait_step(app, which(&id), target) => Some(r?),
            _ = child.wait() => None,
        };
        if let Some(record) = &reached {
            id.get_or_insert_with(|| record["id"].as_str().unwrap_or_default().to_string());
            if mid && !finished(record) {
                tokio::time::sleep(MID_STEP).await;
            }
        }
        // The run may have ended by itself (the last step done, or before the kill); once the
        // record is finished, it is left to exit.
        let ended = reached.as_ref().is_some_and(finished);
        let exited = if ended {
            Some(tokio::time::timeout(SETTLE, child.wait()).await??)
        } else {
            child.try_wait()?
        };
        if let Some(status) = exited {
            let output = child.wait_with_output().await?;
            let record = record_of(&app.statefulset().await?);
            let phase = record.as_ref().map(|r| r["phase"].clone());
            ensure!(
                status.success(),
                "`rollout {}` failed ({status}), record phase {phase:?}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            break;
        }
        child.kill().await?;
        kills += 1;
        let id_now = id
            .clone()
            .context("no record was written before the kill")?;
        let at = assert_truth_after_kill(app, &id_now)
            .await
            .with_context(|| {
                format!(
                    "after kill {kills} ({}mid-step {target})",
                    if mid { "" } else { "not " }
                )
            })?;
        landed.push(format!("{}{at}", if mid { "mid " } else { "at " }));
        let record = wait_step(app, Which::Id(id_now), 0).await?;
        if finished(&record) {
            // The kill came after the last write: nothing left to resume.
            break;
        }
        let step = step_of(&record);
        (target, mid) = if mid { (step + 1, false) } else { (step, true) };
        ensure!(
            kills < MAX_KILLS,
            "{kills} kills and still not done: {landed:?}"
        );
        args = vec!["resume".into(), STS.into()];
    }
    Ok((kills, landed))
}

/// Starts `args`, SIGKILLs it once the record is at `step`, checks `status`, then `rollout
/// abort` must end it with phase Aborted.
async fn kill_then_abort(app: &App, args: &[&str], step: u64) -> anyhow::Result<()> {
    let before =
        record_of(&app.statefulset().await?).and_then(|r| r["id"].as_str().map(str::to_string));
    let mut child = rollout_command(app.name(), args).spawn()?;
    let record = tokio::select! {
        r = wait_step(app, Which::Not(before), step) => r?,
        s = child.wait() => bail!("`rollout {}` ended ({:?}) before step {step}", args.join(" "), s?),
    };
    tokio::time::sleep(MID_STEP).await;
    child.kill().await?;
    let id = record["id"].as_str().unwrap_or_default().to_string();
    ensure!(!finished(&record), "the rollout already ended: {record}");
    assert_truth_after_kill(app, &id).await?;
    let abort = app.rollout(&["abort", STS]).await?;
    abort.expect(ExitCode::Done)?;
    let record = record_of(&app.statefulset().await?).context("no record after abort")?;
    ensure!(
        record["phase"] == "Aborted",
        "after abort: {}",
        record["phase"]
    );
    Ok(())
}

fn with_gates(args: &[&'static str]) -> Vec<&'static str> {
    args.iter().chain(FAST_GATES).copied().collect()
}

/// The partition strategies and recreate: abort after a kill at step `abort_at`, then the
/// rollout to v2 killed at every step; at the end every pod on v2 with its data. Through a
/// route (`route`, made first for the test's host), the route must be as it was after the
/// abort and at the end.
async fn kills_in_place(
    prefix: &str,
    strategy: &[&'static str],
    abort_at: u64,
    route: Option<&str>,
) -> anyhow::Result<()> {
    let app = App::deploy(prefix, 3, false).await?;
    let spec = |name: String| {
        let api = crate::support::gateway::routes(&app.ns);
        async move { Ok::<_, anyhow::Error>(api.get(&name).await?.data["spec"].clone()) }
    };
    let mut before = None;
    if let Some(name) = route {
        let host = format!("{}.test", app.ns.name);
        crate::support::gateway::make_route(&app.ns, name, &host, STS, 80).await?;
        crate::support::gateway::wait_route_status(&app.ns, name).await?;
        before = Some(spec(name.to_string()).await?);
    }
    let route_as_before = |when: &'static str| {
        let before = before.clone();
        let now = route.map(|name| spec(name.to_string()));
        async move {
            if let (Some(before), Some(now)) = (before, now) {
                let now = now.await?;
                ensure!(now == before, "{when} the route is {now}, not {before}");
            }
            anyhow::Ok(())
        }
    };
    let mut aborted = with_gates(strategy);
    aborted.extend(["--image", "time-app:v2"]);
    kill_then_abort(&app, &aborted, abort_at).await?;
    route_as_before("after the abort").await?;
    app.wait_settled().await?;
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;

    let mut args = with_gates(strategy);
    args.extend(["--image", "time-app:v3"]);
    let (kills, landed) = kill_at_every_step(&app, &args).await?;
    eprintln!("{prefix}: {kills} kills survived: {landed:?}");
    ensure!(kills >= 4, "only {kills} kills: {landed:?}");
    let record = record_of(&app.statefulset().await?).context("no record")?;
    ensure!(record["phase"] == "Succeeded", "{}", record["phase"]);
    route_as_before("at the end").await?;
    app.wait_settled().await?;
    app.assert_all_on("v3").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn rolling_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    kills_in_place("kill-rolling", &["rolling", STS], 2, None).await
}

#[tokio::test]
async fn ramped_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    kills_in_place("kill-ramped", &["ramped", STS, "--steps", "1,2"], 2, None).await
}

#[tokio::test]
async fn canary_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    kills_in_place(
        "kill-canary",
        &["canary", STS, "--steps", "34,67,100"],
        2,
        None,
    )
    .await
}

#[tokio::test]
async fn recreate_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    kills_in_place("kill-recreate", &["recreate", STS], 2, None).await
}

#[tokio::test]
async fn bluegreen_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    let app = App::deploy("kill-bluegreen", 3, false).await?;
    let mut aborted = with_gates(&["bluegreen", STS, "--auto-promote"]);
    aborted.extend(["--image", "time-app:v2"]);
    kill_then_abort(&app, &aborted, 1).await?;
    app.wait_settled().await?;
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;

    let mut args = with_gates(&[
        "bluegreen",
        STS,
        "--auto-promote",
        "--scale-down-delay",
        "2s",
    ]);
    args.extend(["--image", "time-app:v2"]);
    let (kills, landed) = kill_at_every_step(&app, &args).await?;
    eprintln!("bluegreen: {kills} kills survived: {landed:?}");
    ensure!(kills >= 4, "only {kills} kills: {landed:?}");
    let status = app.rollout(&["status", STS, "-o", "json"]).await?;
    status.expect(ExitCode::Done)?;
    ensure!(
        status.json()?["rollout"]["phase"] == "Succeeded",
        "{}",
        status.describe()
    );
    // Green alone serves: the live Service selects a set rollout made, whose 3 pods are Ready;
    // blue is at 0 replicas.
    let svc = app.ns.api::<Service>().get(STS).await?;
    let selector = svc.spec.and_then(|s| s.selector).unwrap_or_default();
    let green = selector
        .get("rollout.dev/set")
        .with_context(|| format!("Service {STS} selects {selector:?}"))?
        .clone();
    testkit::wait_sts_ready(&app.ns, &green, 3, SETTLE).await?;
    let blue = app.statefulset().await?;
    ensure!(
        blue.spec.and_then(|s| s.replicas) == Some(0),
        "blue is scaled to 0 after the switch"
    );
    let answers = versions_through_service(&app.ns, 20).await?;
    ensure!(
        answers.keys().all(|v| v == "v2"),
        "the live Service answers {answers:?}"
    );
    assert_blue_volumes_kept(&app).await?;
    app.cleanup().await;
    Ok(())
}

/// A canary whose weights an HTTPRoute carries, aborted after a kill with 34 % of the requests
/// on the canary (freeze, revision-services, partition, gate, route-weights: index 5 is the
/// next partition), then killed at every step; the route ends byte for byte as it was.
#[tokio::test]
async fn canary_through_a_route_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    let canary = [
        "canary",
        STS,
        "--steps",
        "34,67",
        "--traffic",
        "gateway",
        "--route",
        "web",
    ];
    kills_in_place("kill-canary-route", &canary, 5, Some("web")).await
}

/// Blue/green switched by an HTTPRoute: killed after the route's switch and aborted, the route
/// is back byte for byte; killed at every step to the end, green serves through the route,
/// whose rules are its own again.
#[tokio::test]
async fn bluegreen_through_a_route_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    use crate::support::gateway::{
        make_route, routes, spread_via_gateway, wait_route_status, wait_serving,
    };
    let app = App::deploy("kill-bg-route", 3, false).await?;
    let host = format!("{}.test", app.ns.name);
    make_route(&app.ns, "web", &host, STS, 80).await?;
    wait_route_status(&app.ns, "web").await?;
    let spec =
        || async { Ok::<_, anyhow::Error>(routes(&app.ns).get("web").await?.data["spec"].clone()) };
    let before = spec().await?;
    let route = [
        "--traffic",
        "gateway",
        "--route",
        "web",
        "--preview-header",
        "X-Preview=1",
    ];
    let mut aborted = with_gates(&["bluegreen", STS, "--auto-promote"]);
    aborted.extend(route);
    aborted.extend(["--image", "time-app:v2"]);
    // hold-revision, pin, create, gate, gate-service, route-preview, route-switch (index 6),
    // switch: killed while the route sends everything to green.
    kill_then_abort(&app, &aborted, 7).await?;
    ensure!(
        spec().await? == before,
        "after the abort the route is {}",
        spec().await?
    );
    app.wait_settled().await?;
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;

    let mut args = with_gates(&[
        "bluegreen",
        STS,
        "--auto-promote",
        "--scale-down-delay",
        "2s",
    ]);
    args.extend(route);
    args.extend(["--image", "time-app:v2"]);
    let (kills, landed) = kill_at_every_step(&app, &args).await?;
    eprintln!("bluegreen through a route: {kills} kills survived: {landed:?}");
    ensure!(kills >= 4, "only {kills} kills: {landed:?}");
    let record = record_of(&app.statefulset().await?).context("no record")?;
    ensure!(record["phase"] == "Succeeded", "{}", record["phase"]);
    ensure!(
        spec().await? == before,
        "at the end the route is {}",
        spec().await?
    );
    wait_serving(&host, "/healthz", &[], |seen| {
        seen.keys().any(|pod| pod.starts_with("time-app-bg"))
    })
    .await?;
    let answers = spread_via_gateway(&host, "/healthz", &[], 30).await;
    ensure!(
        answers.keys().all(|pod| pod.starts_with("time-app-bg")),
        "green alone answers at the end through the route: {answers:?}"
    );
    assert_blue_volumes_kept(&app).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn shadow_survives_a_kill_at_every_step() -> anyhow::Result<()> {
    let app = App::deploy("kill-shadow", 3, false).await?;
    let shadow = [
        "shadow",
        STS,
        "--duration",
        "6s",
        "--min-samples",
        "5",
        "--image",
        "time-app:v2",
    ];
    kill_then_abort(&app, &with_gates(&shadow), 1).await?;
    let (kills, landed) = kill_at_every_step(&app, &with_gates(&shadow)).await?;
    eprintln!("shadow: {kills} kills survived: {landed:?}");
    ensure!(kills >= 4, "only {kills} kills: {landed:?}");
    let record = record_of(&app.statefulset().await?).context("no record")?;
    ensure!(
        record["phase"] == "Succeeded",
        "{}: {}",
        record["phase"],
        record["message"]
    );
    // The shadow is gone with its claims; the real set never moved.
    let leftovers: Vec<String> = app
        .ns
        .api::<StatefulSet>()
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .filter(|n| n != STS)
        .collect();
    ensure!(leftovers.is_empty(), "sets left: {leftovers:?}");
    app.wait_settled().await?;
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
