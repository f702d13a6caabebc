//! Someone else's deploy in the middle of a rollout: a `kubectl apply` (client-side, and
//! server-side as `helm`) of a new image, a `kubectl patch` of the partition, the record
//! annotation removed, while a rolling or canary run waits in a timed pause: the run stops at
//! once with exit 4 (long before its pause or deadline would end), names the field manager and
//! the change, leaves the other deploy's change in place and keeps every pod's data; `status`
//! says so. And a blue/green held at its promote: `kubectl rollout restart` of blue moves no blue
//! pod (blue is held on its revision), so the live Service keeps all its endpoints on v1, and
//! `promote` then refuses to switch, naming the change. Then `rollout release` lets the other
//! deploy have the set: a canary's partition is given back (every pod takes the other deploy's
//! v3), a blue/green's live Service selects blue as before, its unserved green goes with its
//! claims and blue takes the restarted template; a new rollout starts afterwards.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use devcluster::testkit;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use rollout::model::exit::ExitCode;

use crate::current::kubectl;
use crate::strategies::phase;
use crate::support::{
    rollout_command, statefulset_document, time_app_manifest, App, Run, SETTLE, STS,
};

/// Far longer than any test waits: a run that ends is stopped by the drift, not by its pause.
const LONG_PAUSE: &str = "30m";
/// Generous bound on a run that should stop promptly (only to avoid hanging).
const STOP_LIMIT: Duration = Duration::from_secs(240);

/// Starts `rollout ARGS` and waits until the record on the set says `phase` at a step past
/// the first (the run is waiting in its pause).
async fn start_until(
    app: &App,
    args: &[&str],
    phase: &str,
) -> anyhow::Result<tokio::process::Child> {
    let child = rollout_command(app.name(), args).spawn()?;
    let want = phase.to_string();
    testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        SETTLE,
        move |s: Option<&StatefulSet>| {
            s.and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get("rollout.dev/state"))
                .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                .is_some_and(|r| r["phase"] == want.as_str() && r["currentStep"].as_u64() > Some(0))
        },
    )
    .await
    .context("the run did not reach its pause")?;
    Ok(child)
}

/// Waits for the run to end on its own (within [`STOP_LIMIT`]) and says how long it took.
async fn ended(child: tokio::process::Child, args: &str) -> anyhow::Result<Run> {
    let started = Instant::now();
    let run = crate::support::finish_within(child, args, STOP_LIMIT)
        .await
        .context("the run did not stop after someone else's change")?;
    eprintln!("the run stopped {:?} after the change", started.elapsed());
    Ok(run)
}

fn ensure_says(run: &Run, words: &[&str]) -> anyhow::Result<()> {
    for w in words {
        ensure!(
            run.stderr.contains(w),
            "the message lacks {w:?}: {}",
            run.describe()
        );
    }
    Ok(())
}

/// Waits until every pod is Ready and the controller has seen the latest spec.
async fn wait_pods_ready(app: &App) -> anyhow::Result<StatefulSet> {
    wait_updated(app, None).await
}

/// As [`wait_pods_ready`], with `updated` pods on the update revision when given.
async fn wait_updated(app: &App, updated: Option<i32>) -> anyhow::Result<StatefulSet> {
    let replicas = app.replicas;
    testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        SETTLE,
        move |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref().map(|st| (s, st)))
                .is_some_and(|(s, st)| {
                    st.observed_generation >= s.metadata.generation
                        && st.ready_replicas == Some(replicas)
                        && updated.is_none_or(|n| st.updated_replicas == Some(n))
                })
        },
    )
    .await
}

/// `rollout status STS` in text and JSON, checked to report the drift by `manager`.
async fn assert_status_reports(
    app: &App,
    manager: &str,
    words: &[&str],
) -> anyhow::Result<serde_json::Value> {
    let text = app.rollout(&["status", STS]).await?;
    text.expect(ExitCode::Done)?;
    eprintln!("rollout status:\n{}", text.stdout);
    for w in words.iter().chain([&"changed by someone else", &manager]) {
        ensure!(
            text.stdout.contains(w),
            "status lacks {w:?}:\n{}",
            text.stdout
        );
    }
    let json = app.rollout(&["status", STS, "-o", "json"]).await?;
    json.expect(ExitCode::Done)?;
    let json = json.json()?;
    ensure!(
        json.pointer("/drift/by/manager") == Some(&manager.into()),
        "status -o json names no drift by {manager}: {json}"
    );
    Ok(json)
}

fn partition_of(sts: &StatefulSet) -> Option<i32> {
    sts.spec
        .as_ref()?
        .update_strategy
        .as_ref()?
        .rolling_update
        .as_ref()?
        .partition
}

/// A rollout waiting in a timed pause meets an apply of `time-app:v3` made by `apply` (the
/// kubectl arguments): exit 4 naming `manager`, v3 stays, the data too.
async fn apply_during_pause(
    prefix: &str,
    strategy: &[&str],
    apply: &[&str],
    manager: &str,
) -> anyhow::Result<()> {
    let app = App::deploy(prefix, 3, false).await?;
    let mut args = strategy.to_vec();
    args.extend(["--pause", LONG_PAUSE]);
    let child = start_until(&app, &args, "Paused").await?;

    let v3 = statefulset_document(&time_app_manifest(3, false, &[], "time-app:v3"));
    let (ok, out) = kubectl(app.name(), apply, &v3).await?;
    ensure!(ok, "kubectl {apply:?}: {out}");

    let run = ended(child, &args.join(" ")).await?;
    eprintln!("{}", run.describe());
    run.expect(ExitCode::Locked)?;
    ensure_says(
        &run,
        &[
            "changed by someone else",
            "time-app:v2 -> time-app:v3",
            &format!("field manager {manager}"),
            "rollout status time-app",
            "rollout abort time-app",
        ],
    )?;
    // Not rolled back: the other deploy's template stays, and its revision takes the pods
    // above the partition the rollout had reached.
    assert_eq!(app.image().await?, "time-app:v3");
    let sts = wait_updated(&app, Some(1)).await?;
    let status = sts.status.clone().unwrap_or_default();
    ensure!(
        status.update_revision != status.current_revision,
        "{status:?}"
    );
    let json = assert_status_reports(&app, manager, &["time-app:v3"]).await?;
    assert_eq!(
        json.pointer("/rollout/phase"),
        Some(&"Failed".into()),
        "{json}"
    );
    assert_eq!(app.image().await?, "time-app:v3", "status changed nothing");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_client_side_apply_during_a_canary_pause_stops_the_run_and_stays() -> anyhow::Result<()> {
    apply_during_pause(
        "drift-csa",
        &["canary", STS, "--image", "time-app:v2", "--steps", "34,100"],
        &["apply", "-f", "-"],
        "kubectl-client-side-apply",
    )
    .await
}

#[tokio::test]
async fn a_forced_server_side_apply_as_helm_during_a_rolling_pause_stops_the_run(
) -> anyhow::Result<()> {
    apply_during_pause(
        "drift-ssa",
        &["rolling", STS, "--image", "time-app:v2"],
        &[
            "apply",
            "--server-side",
            "--field-manager=helm",
            "--force-conflicts",
            "-f",
            "-",
        ],
        "helm",
    )
    .await
}

#[tokio::test]
async fn a_partition_patched_mid_rollout_stops_the_run_and_stays() -> anyhow::Result<()> {
    let app = App::deploy("drift-part", 3, false).await?;
    let args = [
        "canary",
        STS,
        "--image",
        "time-app:v2",
        "--steps",
        "34,100",
        "--pause",
        LONG_PAUSE,
    ];
    let child = start_until(&app, &args, "Paused").await?;
    assert_eq!(partition_of(&app.statefulset().await?), Some(2));

    let patch = r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#;
    let (ok, out) = kubectl(app.name(), &["patch", "statefulset", STS, "-p", patch], "").await?;
    ensure!(ok, "kubectl patch: {out}");

    let run = ended(child, &args.join(" ")).await?;
    run.expect(ExitCode::Locked)?;
    ensure_says(
        &run,
        &[
            "the partition of time-app: 2 -> 0",
            "field manager kubectl-patch",
            "rollout abort time-app",
        ],
    )?;
    // The patch stands: every pod goes to v2, as the person who patched asked.
    wait_pods_ready(&app).await?;
    app.wait_settled().await?;
    assert_eq!(partition_of(&app.statefulset().await?), Some(0));
    app.assert_all_on("v2").await?;
    assert_status_reports(&app, "kubectl-patch", &["2 -> 0"]).await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_record_removed_mid_rollout_stops_the_run_and_is_not_written_again() -> anyhow::Result<()>
{
    let app = App::deploy("drift-rec", 3, false).await?;
    let args = [
        "canary",
        STS,
        "--image",
        "time-app:v2",
        "--steps",
        "34,100",
        "--pause",
        LONG_PAUSE,
    ];
    let child = start_until(&app, &args, "Paused").await?;

    let (ok, out) = kubectl(
        app.name(),
        &["annotate", "statefulset", STS, "rollout.dev/state-"],
        "",
    )
    .await?;
    ensure!(ok, "kubectl annotate: {out}");

    let run = ended(child, &args.join(" ")).await?;
    run.expect(ExitCode::Locked)?;
    ensure_says(
        &run,
        &[
            "the rollout record annotation was removed",
            "without writing the record back",
        ],
    )?;
    let sts = app.statefulset().await?;
    ensure!(
        sts.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("rollout.dev/state")),
        "the record was written again: {:?}",
        sts.metadata.annotations
    );
    // Nothing more moved: the canary pod and the partition stay as they were.
    assert_eq!(partition_of(&sts), Some(2));
    assert_eq!(app.image().await?, "time-app:v2");
    let status = app.rollout(&["status", STS]).await?;
    status.expect(ExitCode::Done)?;
    eprintln!("rollout status:\n{}", status.stdout);
    ensure!(
        status.stdout.contains("none recorded") && status.stdout.contains("partition 2"),
        "status tells the set as it is: {}",
        status.stdout
    );
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

/// Blue's pods: the time app's, without the set label `rollout` puts on the sets it creates.
const BLUE_PODS: &str = "app=time-app,!rollout.dev/set";

/// The ready addresses of the Service's EndpointSlices.
async fn slice_addresses(app: &App, service: &str) -> anyhow::Result<BTreeSet<String>> {
    let slices = app
        .ns
        .api::<EndpointSlice>()
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await?;
    Ok(slices
        .items
        .into_iter()
        .flat_map(|s| s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses)
        .collect())
}

/// Blue's Ready pods with their IPs and revisions.
async fn blue_pods(app: &App) -> anyhow::Result<Vec<(String, String, String)>> {
    let pods = app
        .ns
        .api::<Pod>()
        .list(&ListParams::default().labels(BLUE_PODS))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && testkit::pod_ready(p))
        .filter_map(|p| {
            let rev = p
                .metadata
                .labels
                .as_ref()?
                .get("controller-revision-hash")?
                .clone();
            Some((p.metadata.name?, p.status?.pod_ip?, rev))
        })
        .collect())
}

/// The live Service's EndpointSlices hold exactly blue's three Ready pods, each on `revision`
/// and answering v1 at its own address.
async fn assert_blue_serves(app: &App, revision: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let blue = blue_pods(app).await?;
        let ips: BTreeSet<String> = blue.iter().map(|(_, ip, _)| ip.clone()).collect();
        let slices = slice_addresses(app, STS).await?;
        if blue.len() == 3 && slices == ips {
            for (pod, _, rev) in &blue {
                ensure!(rev == revision, "{pod} runs {rev}, not blue's {revision}");
            }
            let versions = crate::support::versions(&app.ns, 3).await?;
            ensure!(versions.values().all(|v| v == "v1"), "{versions:?}");
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the live Service's EndpointSlices hold {slices:?}, blue's Ready pods are {blue:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn a_restart_of_blue_while_green_waits_keeps_the_live_service_on_blue() -> anyhow::Result<()>
{
    let app = App::deploy("drift-bg", 3, false).await?;
    let hold = app
        .rollout(&["bluegreen", STS, "--image", "time-app:v2"])
        .await?;
    hold.expect(ExitCode::Done)?;
    assert_eq!(phase(&app).await?, "Paused");
    let held = app.statefulset().await?;
    let stable = held
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone())
        .context("no current revision")?;
    assert_eq!(partition_of(&held), Some(3), "blue is held on its revision");
    assert_blue_serves(&app, &stable).await?;

    let (ok, out) = kubectl(
        app.name(),
        &["rollout", "restart", &format!("statefulset/{STS}")],
        "",
    )
    .await?;
    ensure!(ok, "kubectl rollout restart: {out}");
    // A pod that goes away meanwhile (a node drain, a crash) comes back on blue's revision.
    let (ok, out) = kubectl(app.name(), &["delete", "pod", "time-app-0"], "").await?;
    ensure!(ok, "kubectl delete pod: {out}");
    let sts = wait_pods_ready(&app).await?;
    let status = sts.status.clone().unwrap_or_default();
    ensure!(
        status.update_revision.as_deref() != Some(stable.as_str()),
        "the restart changed the template: {status:?}"
    );
    assert_blue_serves(&app, &stable).await?;

    let json =
        assert_status_reports(&app, "kubectl-rollout", &["pod template of time-app"]).await?;
    assert_eq!(json.pointer("/rollout/phase"), Some(&"Paused".into()));

    let promote = app.rollout(&["promote", STS]).await?;
    promote.expect(ExitCode::Locked)?;
    ensure_says(
        &promote,
        &["pod template of time-app", "field manager kubectl-rollout"],
    )?;
    let service = app.ns.api::<Service>().get(STS).await?;
    let selector = service.spec.and_then(|s| s.selector).unwrap_or_default();
    ensure!(
        !selector.contains_key("rollout.dev/set"),
        "promote switched the live Service: {selector:?}"
    );
    assert_blue_serves(&app, &stable).await?;
    assert_eq!(phase(&app).await?, "Failed");

    // Taking it back: the stable template returns to blue, then its partition is given back.
    let abort = app.rollout(&["abort", STS]).await?;
    eprintln!("{}", abort.stderr);
    abort.expect(ExitCode::Done)?;
    let sts = app.wait_settled().await?;
    assert_eq!(
        sts.status.as_ref().and_then(|s| s.update_revision.clone()),
        Some(stable.clone())
    );
    assert_eq!(partition_of(&sts).unwrap_or(0), 0);
    assert_blue_serves(&app, &stable).await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

/// The rollout record on the set, as JSON.
async fn record_json(app: &App) -> anyhow::Result<serde_json::Value> {
    let sts = app.statefulset().await?;
    let text = sts
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("rollout.dev/state"))
        .context("no rollout record on the set")?;
    Ok(serde_json::from_str(text)?)
}

/// `rollout status` (text and JSON) says Released, naming `manager` as the template's owner.
async fn assert_status_released(app: &App, manager: &str) -> anyhow::Result<()> {
    let text = app.rollout(&["status", STS]).await?;
    text.expect(ExitCode::Done)?;
    eprintln!("rollout status:\n{}", text.stdout);
    for w in [
        "phase:     Released",
        "the pod template of time-app is now the other deploy",
        &format!("field manager {manager}"),
        "rollout gave back what it held",
    ] {
        ensure!(
            text.stdout.contains(w),
            "status lacks {w:?}:\n{}",
            text.stdout
        );
    }
    let json = app.rollout(&["status", STS, "-o", "json"]).await?;
    json.expect(ExitCode::Done)?;
    let json = json.json()?;
    ensure!(
        json.pointer("/rollout/phase") == Some(&"Released".into()),
        "{json}"
    );
    ensure!(
        json.pointer("/rollout/message")
            .and_then(|m| m.as_str())
            .is_some_and(|m| m.contains(&format!("field manager {manager}"))),
        "{json}"
    );
    Ok(())
}

#[tokio::test]
async fn release_after_a_helm_apply_over_a_held_canary_lets_every_pod_take_v3() -> anyhow::Result<()>
{
    let app = App::deploy("drift-rel", 3, false).await?;
    let partition_before = partition_of(&app.statefulset().await?);
    let args = [
        "canary",
        STS,
        "--image",
        "time-app:v2",
        "--steps",
        "34,100",
        "--pause",
        LONG_PAUSE,
    ];
    let child = start_until(&app, &args, "Paused").await?;
    // Refused while nothing drifted: nothing written.
    let early = app.rollout(&["release", STS]).await?;
    early.expect(ExitCode::BadInput)?;
    ensure_says(
        &early,
        &["rollout abort time-app", "rollout promote time-app --full"],
    )?;
    assert_eq!(partition_of(&app.statefulset().await?), Some(2));

    let v3 = statefulset_document(&time_app_manifest(3, false, &[], "time-app:v3"));
    let apply = [
        "apply",
        "--server-side",
        "--field-manager=helm",
        "--force-conflicts",
        "-f",
        "-",
    ];
    let (ok, out) = kubectl(app.name(), &apply, &v3).await?;
    ensure!(ok, "kubectl apply: {out}");
    let run = ended(child, &args.join(" ")).await?;
    run.expect(ExitCode::Locked)?;
    ensure_says(
        &run,
        &["rollout release time-app", "rollout abort time-app"],
    )?;
    // The set stays frozen by the canary's partition: only the pod above it takes v3.
    assert_eq!(partition_of(&app.statefulset().await?), Some(2));

    let release = app.rollout(&["release", STS]).await?;
    eprintln!("{}", release.describe());
    release.expect(ExitCode::Done)?;
    assert_eq!(
        app.image().await?,
        "time-app:v3",
        "the template stays helm's"
    );
    assert_eq!(
        partition_of(&app.statefulset().await?),
        partition_before,
        "the partition as before the rollout"
    );
    // The controller rolls every pod to v3 once the partition is given back.
    app.wait_settled().await?;
    app.assert_all_on("v3").await?;
    assert_status_released(&app, "helm").await?;
    app.assert_data_kept().await?;

    // Over: a new rollout starts and finishes.
    let next = app
        .rollout(&["rolling", STS, "--image", "time-app:v2"])
        .await?;
    eprintln!("{}", next.describe());
    next.expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

/// The claims of `set` (`data-<set>-<ordinal>`) that exist and are not being deleted.
async fn claims_of(app: &App, set: &str) -> anyhow::Result<Vec<String>> {
    let prefix = format!("data-{set}-");
    Ok(app
        .ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.starts_with(&prefix))
        .collect())
}

/// The live Service's EndpointSlices hold exactly blue's three Ready pods, all on the set's
/// update revision (not `stable`), each answering v1 at its own address.
async fn assert_blue_serves_restarted(app: &App, stable: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let sts = app.statefulset().await?;
        let update = sts
            .status
            .as_ref()
            .and_then(|s| s.update_revision.clone())
            .unwrap_or_default();
        let blue = blue_pods(app).await?;
        let ips: BTreeSet<String> = blue.iter().map(|(_, ip, _)| ip.clone()).collect();
        let slices = slice_addresses(app, STS).await?;
        let on_update = blue.iter().all(|(_, _, rev)| *rev == update);
        if blue.len() == 3 && slices == ips && on_update && update != stable {
            let versions = crate::support::versions(&app.ns, 3).await?;
            ensure!(versions.values().all(|v| v == "v1"), "{versions:?}");
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the live Service's EndpointSlices hold {slices:?}; blue's Ready pods are {blue:?}, its update revision {update} (stable {stable})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn release_after_a_restart_of_held_blue_unpins_the_service_and_removes_green(
) -> anyhow::Result<()> {
    let app = App::deploy("drift-bgrel", 3, false).await?;
    let selector_of = |s: Service| s.spec.and_then(|s| s.selector).unwrap_or_default();
    let original = selector_of(app.ns.api::<Service>().get(STS).await?);
    let partition_before = partition_of(&app.statefulset().await?);
    let hold = app
        .rollout(&["bluegreen", STS, "--image", "time-app:v2"])
        .await?;
    hold.expect(ExitCode::Done)?;
    assert_eq!(phase(&app).await?, "Paused");
    let green = record_json(&app).await?["twin"]["set"]
        .as_str()
        .context("no green in the record")?
        .to_string();
    ensure!(
        !claims_of(&app, &green).await?.is_empty(),
        "green {green} has no claims"
    );
    let stable = app
        .statefulset()
        .await?
        .status
        .and_then(|s| s.current_revision)
        .context("no current revision")?;

    let (ok, out) = kubectl(
        app.name(),
        &["rollout", "restart", &format!("statefulset/{STS}")],
        "",
    )
    .await?;
    ensure!(ok, "kubectl rollout restart: {out}");
    let promote = app.rollout(&["promote", STS]).await?;
    promote.expect(ExitCode::Locked)?;
    ensure_says(
        &promote,
        &["rollout release time-app", "rollout abort time-app"],
    )?;
    assert_eq!(phase(&app).await?, "Failed");

    let release = app.rollout(&["release", STS]).await?;
    eprintln!("{}", release.describe());
    release.expect(ExitCode::Done)?;
    // The live Service selects as before the rollout.
    let selector = selector_of(app.ns.api::<Service>().get(STS).await?);
    assert_eq!(selector, original, "the live Service's selector");
    // Green never served: gone, with its claims; the preview Service too.
    ensure!(
        app.ns.api::<StatefulSet>().get_opt(&green).await?.is_none(),
        "green {green} is still there"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !claims_of(&app, &green).await?.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "green's claims stay: {:?}",
            claims_of(&app, &green).await?
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(
        app.ns
            .api::<Service>()
            .get_opt(&format!("{STS}-preview"))
            .await?
            .is_none(),
        "the preview Service stays"
    );
    // Blue is no longer held: its pods take the restarted template and keep serving.
    assert_eq!(partition_of(&app.statefulset().await?), partition_before);
    app.wait_settled().await?;
    assert_blue_serves_restarted(&app, &stable).await?;
    assert_status_released(&app, "kubectl-rollout").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
