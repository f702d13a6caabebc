//! What only a current Kubernetes has (the devcluster runs v1.37), end to end through `rollout`:
//! a set whose ordinals start at 5 through every strategy; a PVC retention policy that deletes
//! claims on scale-down refused by the strategies that scale, and `Retain` let through;
//! `minReadySeconds` holding a step's gate until its pods are Available; `rolling --batch 3`
//! replacing three pods at once through `maxUnavailable`; and `kubectl apply --server-side` of
//! the set while a canary holds.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;

use anyhow::{ensure, Context};
use devcluster::testkit::{self, TestNs};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use rollout::model::exit::ExitCode;

use crate::strategies::phase;
use crate::support::{
    kubeconfig, rollout, rollout_command, statefulset_document, time_app_manifest, App, Run,
    RUN_LIMIT, SETTLE, STS,
};

/// The time app with `replicas` pods, readiness on `/healthz` (so only the gates and the test
/// visit `/`), and `extra` spliced into the StatefulSet's spec.
fn manifest(replicas: i32, env: &[(&str, &str)], extra: &str) -> String {
    time_app_manifest(replicas, false, env, "time-app:v1")
        .replace("              path: /\n", "              path: /healthz\n")
        .replace(
            "  podManagementPolicy: Parallel\n",
            &format!("  podManagementPolicy: Parallel\n{extra}"),
        )
}

async fn deploy(
    prefix: &str,
    replicas: i32,
    env: &[(&str, &str)],
    extra: &str,
) -> anyhow::Result<TestNs> {
    let ns = TestNs::new(prefix).await?;
    ns.apply_yaml(&manifest(replicas, env, extra)).await?;
    testkit::wait_sts_ready(&ns, STS, replicas, SETTLE).await?;
    Ok(ns)
}

/// The version each of `pods` answers with on `/healthz`, asked at its pod IP.
async fn versions_of(ns: &TestNs, pods: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let http = testkit::http();
    let mut out = BTreeMap::new();
    for pod in pods {
        let ip = testkit::pod_ip(ns, pod).await?;
        let a = testkit::get(&http, &format!("http://{ip}:8080/healthz")).await?;
        ensure!(a.status == 200 && &a.pod == pod, "{pod} answered {a:?}");
        out.insert(pod.clone(), a.version);
    }
    Ok(out)
}

/// Visits `/` once on each pod (a record on its volume) and returns each pod's visit count.
async fn visit_each(ns: &TestNs, pods: &[String]) -> anyhow::Result<BTreeMap<String, u64>> {
    let http = testkit::http();
    let mut out = BTreeMap::new();
    for pod in pods {
        let ip = testkit::pod_ip(ns, pod).await?;
        let a = testkit::get(&http, &format!("http://{ip}:8080/")).await?;
        ensure!(a.status == 200, "{pod} answered {a:?}");
        out.insert(
            pod.clone(),
            testkit::visits(ns, pod).await?["total"]
                .as_u64()
                .unwrap_or(0),
        );
    }
    Ok(out)
}

/// Names of the pods of `set` that exist now, sorted.
async fn pod_names(ns: &TestNs, selector: &str) -> anyhow::Result<BTreeSet<String>> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect())
}

async fn claim_names(ns: &TestNs) -> anyhow::Result<BTreeSet<String>> {
    let claims = ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?;
    Ok(claims
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect())
}

fn named(prefix: &str, ordinals: std::ops::Range<i32>) -> Vec<String> {
    ordinals.map(|i| format!("{prefix}-{i}")).collect()
}

async fn expect_done(ns: &TestNs, args: &[&str]) -> anyhow::Result<Run> {
    let run = rollout(&ns.name, args).await?;
    run.expect(ExitCode::Done)?;
    Ok(run)
}

#[tokio::test]
async fn a_set_whose_ordinals_start_at_5_goes_through_every_strategy() -> anyhow::Result<()> {
    let ns = deploy("ordinals", 3, &[], "  ordinals:\n    start: 5\n").await?;
    let pods = named(STS, 5..8);
    let claims: BTreeSet<String> = pods.iter().map(|p| format!("data-{p}")).collect();
    assert_eq!(
        pod_names(&ns, "app=time-app").await?,
        pods.iter().cloned().collect()
    );
    let mut visits = visit_each(&ns, &pods).await?;

    // Each strategy moves time-app-5..7 (never a time-app-0) to the next version, gated, with
    // every pod still on its own claim and its visits.
    let runs: [&[&str]; 4] = [
        &["rolling", STS, "--image", "time-app:v2"],
        &[
            "ramped",
            STS,
            "--image",
            "time-app:v3",
            "--steps",
            "1,3",
            "--pause",
            "1s",
        ],
        &[
            "canary",
            STS,
            "--image",
            "time-app:v4",
            "--steps",
            "34,100",
            "--pause",
            "1s",
        ],
        &["recreate", STS, "--image", "time-app:v5"],
    ];
    for (args, version) in runs.iter().zip(["v2", "v3", "v4", "v5"]) {
        let run = expect_done(&ns, args).await?;
        if args[0] == "canary" {
            ensure!(
                run.stderr.contains("time-app-7"),
                "the canary step names time-app-7: {}",
                run.describe()
            );
        }
        let now = versions_of(&ns, &pods).await?;
        ensure!(
            now.values().all(|v| v == version),
            "after {}: {now:?}",
            args[0]
        );
        assert_eq!(
            pod_names(&ns, "app=time-app").await?,
            pods.iter().cloned().collect(),
            "after {}",
            args[0]
        );
        assert_eq!(claim_names(&ns).await?, claims, "after {}", args[0]);
        let after = visit_each(&ns, &pods).await?;
        for (pod, n) in &visits {
            ensure!(
                after[pod] > *n,
                "{pod} lost visits in {}: {n} before, {} after",
                args[0],
                after[pod]
            );
        }
        visits = after;
    }

    // A shadow is a set of its own, numbered from 0 with fresh volumes, and leaves the set as
    // it was.
    let mut shadow = rollout_command(
        &ns.name,
        &[
            "shadow",
            STS,
            "--image",
            "time-app:v6",
            "--duration",
            "10s",
            "--rate",
            "5",
            "--probe-path",
            "/healthz",
        ],
    )
    .spawn()?;
    testkit::wait_for(
        ns.api::<Pod>(),
        "time-app-shadow-0",
        SETTLE,
        testkit::is_pod_ready(),
    )
    .await?;
    let status = tokio::time::timeout(RUN_LIMIT, shadow.wait()).await??;
    ensure!(status.success(), "the shadow run ended with {status}");
    let now = versions_of(&ns, &pods).await?;
    ensure!(now.values().all(|v| v == "v5"), "after shadow: {now:?}");

    // Blue/green with cloned data: green is a set of its own, numbered from 0; its claim of
    // ordinal i is a copy of blue's claim of ordinal 5 + i.
    expect_done(
        &ns,
        &[
            "bluegreen",
            STS,
            "--image",
            "time-app:v7",
            "--auto-promote",
            "--scale-down-delay",
            "0s",
            "--data",
            "clone",
        ],
    )
    .await?;
    let green = named("time-app-bg1", 0..3);
    assert_eq!(
        pod_names(&ns, "rollout.dev/set=time-app-bg1").await?,
        green.iter().cloned().collect()
    );
    let green_claims: BTreeSet<String> = green.iter().map(|p| format!("data-{p}")).collect();
    let all_claims = claim_names(&ns).await?;
    ensure!(
        all_claims.is_superset(&green_claims) && all_claims.is_superset(&claims),
        "claims: {all_claims:?}"
    );
    let green_versions = versions_of(&ns, &green).await?;
    ensure!(
        green_versions.values().all(|v| v == "v7"),
        "{green_versions:?}"
    );
    for (blue, green) in pods.iter().zip(&green) {
        let total = testkit::visits(&ns, green).await?["total"]
            .as_u64()
            .unwrap_or(0);
        ensure!(
            total >= visits[blue],
            "{green} holds {total} visits, fewer than the {} of {blue}",
            visits[blue]
        );
    }
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn claims_deleted_on_scale_down_are_refused_by_recreate_and_bluegreen_and_retain_goes_through(
) -> anyhow::Result<()> {
    let policy = "  persistentVolumeClaimRetentionPolicy:\n    whenScaled: Delete\n    whenDeleted: Retain\n";
    let ns = deploy("retention", 2, &[], policy).await?;
    let app = App {
        ns,
        replicas: 2,
        data: Default::default(),
    };
    let app = App {
        data: crate::support::pod_data(&app.ns, 2).await?,
        ..app
    };
    let before = app.statefulset().await?;
    for strategy in ["recreate", "bluegreen"] {
        let run = app
            .rollout(&[strategy, STS, "--image", "time-app:v2"])
            .await?;
        run.expect(ExitCode::BadInput)?;
        ensure!(
            run.stderr.contains("whenScaled is Delete")
                && run.stderr.contains("nothing was changed"),
            "{}",
            run.describe()
        );
        let now = app.statefulset().await?;
        assert_eq!(
            now.metadata.generation, before.metadata.generation,
            "{strategy} changed the set"
        );
        assert_eq!(
            now.metadata.annotations, before.metadata.annotations,
            "{strategy} left a record"
        );
        assert_eq!(
            pod_names(&app.ns, "app=time-app").await?.len(),
            2,
            "{strategy}"
        );
        app.assert_data_kept().await?;
    }
    let retain = serde_json::json!({"spec": {"persistentVolumeClaimRetentionPolicy": {"whenScaled": "Retain"}}});
    app.ns
        .api::<StatefulSet>()
        .patch(STS, &PatchParams::default(), &Patch::Merge(&retain))
        .await?;
    app.rollout(&["recreate", STS, "--image", "time-app:v2"])
        .await?
        .expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

/// v2 answers `/` with 503 for its first 8 seconds while its readiness (on `/healthz`) passes at
/// once; the set asks 12 seconds Ready before a pod counts as Available. A gate that probed the
/// new pods as soon as they were Ready would fail and roll back; gated once they are Available,
/// the rollout goes through.
#[tokio::test]
async fn min_ready_seconds_holds_each_gate_until_its_pods_are_available() -> anyhow::Result<()> {
    let ns = deploy(
        "min-ready",
        2,
        &[("NOT_READY_SECONDS", "8")],
        "  minReadySeconds: 12\n",
    )
    .await?;
    let app = App {
        data: crate::support::pod_data(&ns, 2).await?,
        ns,
        replicas: 2,
    };
    app.rollout(&["rolling", STS, "--image", "time-app:v2", "--batch", "1"])
        .await?
        .expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    assert_eq!(phase(&app).await?, "Succeeded");
    let sts = app.statefulset().await?;
    assert_eq!(sts.status.and_then(|s| s.available_replicas), Some(2));
    app.cleanup().await;
    Ok(())
}

/// The most pods of the set not Ready (or gone) at once while `run` runs, seen on a watch.
async fn most_unavailable_during(
    ns: &TestNs,
    replicas: usize,
    run: impl std::future::Future<Output = anyhow::Result<Run>>,
) -> anyhow::Result<(usize, Run)> {
    let most = std::sync::atomic::AtomicUsize::new(0);
    let watch = async {
        let mut store: BTreeMap<String, Pod> = BTreeMap::new();
        let mut listed = false;
        let stream = watcher(
            ns.api::<Pod>(),
            watcher::Config::default().labels("app=time-app"),
        );
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                    store.insert(p.metadata.name.clone().unwrap_or_default(), p);
                }
                Ok(watcher::Event::Delete(p)) => {
                    store.remove(p.metadata.name.as_deref().unwrap_or_default());
                }
                Ok(watcher::Event::InitDone) => listed = true,
                _ => {}
            }
            if !listed {
                continue;
            }
            let serving = store
                .values()
                .filter(|p| p.metadata.deletion_timestamp.is_none() && testkit::pod_ready(p))
                .count();
            most.fetch_max(
                replicas.saturating_sub(serving),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    };
    let run = tokio::select! {
        r = run => r?,
        () = watch => anyhow::bail!("the pod watch ended"),
    };
    Ok((most.load(std::sync::atomic::Ordering::Relaxed), run))
}

#[tokio::test]
async fn rolling_batches_of_3_replace_3_pods_at_once_and_give_back_max_unavailable(
) -> anyhow::Result<()> {
    let ns = deploy("batch3", 6, &[], "").await?;
    let app = App {
        data: crate::support::pod_data(&ns, 6).await?,
        ns,
        replicas: 6,
    };
    let max_unavailable = |sts: StatefulSet| {
        sts.spec
            .and_then(|s| s.update_strategy)
            .and_then(|s| s.rolling_update)
            .and_then(|r| r.max_unavailable)
    };
    // The API server defaults it to 1 where the feature is on.
    let own = max_unavailable(app.statefulset().await?);
    let (most, run) = most_unavailable_during(
        &app.ns,
        6,
        app.rollout(&["rolling", STS, "--image", "time-app:v2", "--batch", "3"]),
    )
    .await?;
    run.expect(ExitCode::Done)?;
    ensure!(
        run.stderr
            .contains("time-app-5, time-app-4, time-app-3 move"),
        "{}",
        run.describe()
    );
    ensure!(!run.stderr.contains("one at a time"), "{}", run.describe());
    assert_eq!(
        most, 3,
        "pods not Ready at once during `rolling --batch 3` of 6"
    );
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    assert_eq!(
        max_unavailable(app.statefulset().await?),
        own,
        "the set's own maxUnavailable is back"
    );
    app.cleanup().await;
    Ok(())
}

/// `kubectl` of the same release as the devcluster (provisioning puts it first on PATH).
pub(crate) async fn kubectl(
    ns: &str,
    args: &[&str],
    stdin: &str,
) -> anyhow::Result<(bool, String)> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .args(args)
        .args(["-n", ns, "--kubeconfig"])
        .arg(kubeconfig())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("running kubectl (provisioning puts the devcluster's kubectl on PATH)")?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).await?;
    }
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output()).await??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// While a canary holds, `kubectl apply --server-side` of the set as it was deployed meets a
/// conflict over the image (rollout's field manager owns it) and changes nothing; forced, it
/// takes the template back, and rollout reports that someone else changed the set instead of
/// fighting it.
#[tokio::test]
async fn server_side_apply_of_the_set_while_a_canary_holds() -> anyhow::Result<()> {
    let ns = TestNs::new("ssa-canary").await?;
    let text = time_app_manifest(3, false, &[], "time-app:v1");
    let (ok, out) = kubectl(&ns.name, &["apply", "--server-side", "-f", "-"], &text).await?;
    ensure!(ok, "{out}");
    testkit::wait_sts_ready(&ns, STS, 3, SETTLE).await?;
    let app = App {
        data: crate::support::pod_data(&ns, 3).await?,
        ns,
        replicas: 3,
    };
    app.rollout(&["canary", STS, "--image", "time-app:v2", "--weight", "34"])
        .await?
        .expect(ExitCode::Done)?;
    assert_eq!(phase(&app).await?, "Paused");
    let held = app.statefulset().await?;

    let sts = statefulset_document(&text);
    let (ok, out) = kubectl(&app.ns.name, &["apply", "--server-side", "-f", "-"], &sts).await?;
    ensure!(
        !ok && out.contains("conflict") && out.contains("\"rollout\""),
        "apply was not refused naming rollout: {out}"
    );
    let now = app.statefulset().await?;
    assert_eq!(
        now.metadata.generation, held.metadata.generation,
        "the refused apply changed the set"
    );
    assert_eq!(app.image().await?, "time-app:v2");
    assert_eq!(phase(&app).await?, "Paused");

    let (ok, out) = kubectl(
        &app.ns.name,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        &sts,
    )
    .await?;
    ensure!(ok, "{out}");
    assert_eq!(app.image().await?, "time-app:v1");
    let status = app.rollout(&["status", STS]).await?;
    eprintln!(
        "rollout status after a forced server-side apply:\n{}",
        status.describe()
    );
    let promote = app.rollout(&["promote", STS]).await?;
    promote.expect(ExitCode::Locked)?;
    ensure!(
        promote.stderr.contains("changed by someone else"),
        "{}",
        promote.describe()
    );
    assert_eq!(app.image().await?, "time-app:v1", "promote undid the apply");
    testkit::wait_sts_ready(&app.ns, STS, 3, SETTLE).await?;
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
