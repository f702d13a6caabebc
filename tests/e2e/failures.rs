//! Rollouts that must not go through: a release that fails its gate, an image that never runs on
//! an `OrderedReady` set, a gate that never decides, and bad input. Each leaves the StatefulSet
//! on its stable revision with every pod's data, and exits with the code a CI job branches on.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use rollout::model::exit::ExitCode;

use crate::strategies::phase;
use crate::support::{failing_release_manifest, time_app_manifest, App, ManifestFile, STS};

/// No pod of the set waits on an image or sits not Ready.
async fn assert_no_pod_stuck(app: &App) -> anyhow::Result<()> {
    let pods = app
        .ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=time-app"))
        .await?;
    for pod in pods.items {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let waiting = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.clone());
        anyhow::ensure!(waiting.is_none(), "{name} is waiting: {waiting:?}");
        anyhow::ensure!(devcluster::testkit::pod_ready(&pod), "{name} is not Ready");
    }
    Ok(())
}

#[tokio::test]
async fn a_release_that_fails_its_gate_is_rolled_back() -> anyhow::Result<()> {
    let app = App::deploy("bad-release", 3, false).await?;
    // The new release answers 500 on `/`, and its readiness probe only asks `/healthz`, so
    // Kubernetes calls its pods Ready: only the gate can catch it.
    let file = ManifestFile::write(&app, &failing_release_manifest(3, false, "time-app:v2"))?;
    let run = app.rollout(&["rolling", STS, "-f", &file.arg()]).await?;
    run.expect(ExitCode::GateFailed)?;
    assert!(
        run.stderr.contains("time-app-2") && run.stderr.contains("500"),
        "the failure names the pod and the status: {}",
        run.describe()
    );

    app.assert_all_on("v1").await?;
    assert_eq!(app.image().await?, "time-app:v1");
    let env = app
        .statefulset()
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].env.clone());
    assert!(
        !format!("{env:?}").contains("FAIL_RATE"),
        "the template is the stable one: {env:?}"
    );
    assert_eq!(phase(&app).await?, "RolledBack");
    assert_no_pod_stuck(&app).await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

/// After a failed rollout on an `OrderedReady` set: back on v1 everywhere, nothing stuck, the
/// record says rolled back, every pod kept its data. Kubernetes alone would leave the broken pod
/// waiting forever and the pods below it never updated (kubernetes #67250).
async fn assert_rolled_back(app: &App) -> anyhow::Result<()> {
    assert_no_pod_stuck(app).await?;
    app.assert_all_on("v1").await?;
    assert_eq!(app.image().await?, "time-app:v1");
    assert_eq!(phase(app).await?, "RolledBack");
    app.assert_data_kept().await
}

#[tokio::test]
async fn an_image_that_cannot_be_pulled_on_an_ordered_set_is_rolled_back_at_once(
) -> anyhow::Result<()> {
    let app = App::deploy("unmapped", 3, true).await?;
    let started = std::time::Instant::now();
    let run = app
        .rollout(&[
            "rolling",
            STS,
            "--image",
            "example.org/nowhere/not-mapped:v9",
            "--timeout",
            "2m",
        ])
        .await?;
    // A pull that backs off cannot succeed by waiting: the rollout fails without spending its
    // step deadline.
    run.expect(ExitCode::GateFailed)?;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
    assert!(
        run.stderr.contains("time-app-2") && run.stderr.contains("ImagePullBackOff"),
        "the message names the stuck pod and why: {}",
        run.describe()
    );
    assert_rolled_back(&app).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_release_that_never_gets_ready_on_an_ordered_set_times_out_and_is_rolled_back(
) -> anyhow::Result<()> {
    let app = App::deploy("never-ready", 3, true).await?;
    // Runs, but answers 503 for ten minutes: its pod never turns Ready.
    let manifest = time_app_manifest(3, true, &[("NOT_READY_SECONDS", "600")], "time-app:v2");
    let file = ManifestFile::write(&app, &manifest)?;
    let run = app
        .rollout(&["rolling", STS, "-f", &file.arg(), "--timeout", "20s"])
        .await?;
    run.expect(ExitCode::TimedOut)?;
    assert!(
        run.stderr.contains("time-app-2"),
        "the message names the pod it waited on: {}",
        run.describe()
    );
    assert_rolled_back(&app).await?;
    let env = app
        .statefulset()
        .await?
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers[0].env.clone());
    assert!(!format!("{env:?}").contains("NOT_READY_SECONDS"), "{env:?}");
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_with_a_clear_message_and_changes_nothing() -> anyhow::Result<()> {
    let app = App::deploy("bad-input", 1, false).await?;
    let before = app.statefulset().await?;
    let missing_file = format!("/nonexistent/{}/sts.yaml", app.name());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["rolling", "no-such-set", "--image", "time-app:v2"],
            "no-such-set",
        ),
        (
            vec!["canary", STS, "--image", "time-app:v2", "--weight", "0"],
            "0",
        ),
        (
            vec!["canary", STS, "--image", "time-app:v2", "--weight", "150"],
            "150",
        ),
        (
            vec!["rolling", STS, "--image", "time-app:v2", "--pause", "soon"],
            "soon",
        ),
        (
            vec!["rolling", STS, "--image", "time-app:v2", "--pause", "5"],
            "5s",
        ),
        (vec!["rolling", STS, "--image", "Time App:v2"], "Time App"),
        (
            vec!["rolling", STS, "--image", "sidecar=time-app:v2"],
            "sidecar",
        ),
        (vec!["rolling", STS, "-f", &missing_file], &missing_file),
        (vec!["rolling", STS], "--image"),
    ];
    for (args, fragment) in cases {
        let run = app.rollout(&args).await?;
        run.expect(ExitCode::BadInput)?;
        let message = run.stderr.trim();
        assert!(
            message.contains(fragment),
            "`{fragment}` is not named: {}",
            run.describe()
        );
        for noise in ["panicked", "Api(", "Error {", "RUST_BACKTRACE"] {
            assert!(!message.contains(noise), "{}", run.describe());
        }
    }
    let after = app.statefulset().await?;
    // Status updates by the controller change the resourceVersion; the spec and annotations are
    // what a rollout would write.
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "the spec was not written"
    );
    assert_eq!(
        after.metadata.annotations, before.metadata.annotations,
        "no record was written"
    );
    let leases = app.ns.api::<Lease>().list(&ListParams::default()).await?;
    assert!(
        leases.items.is_empty(),
        "no lock was taken: {:?}",
        leases
            .items
            .iter()
            .map(|l| &l.metadata.name)
            .collect::<Vec<_>>()
    );
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_gate_that_never_decides_times_out_at_the_step_deadline_and_is_rolled_back(
) -> anyhow::Result<()> {
    let app = App::deploy("undecided", 2, false).await?;
    // Nothing listens there: the webhook gate gets no answer, so it can never decide. The run
    // tries again until the step's deadline instead of waiting for a person.
    let run = app
        .rollout(&[
            "rolling",
            STS,
            "--image",
            "time-app:v2",
            "--probe-window",
            "2s",
            "--gate-webhook",
            "http://127.0.0.1:9/decide",
            "--timeout",
            "25s",
        ])
        .await?;
    run.expect(ExitCode::TimedOut)?;
    run.said(&["could not decide", "trying again", "stayed undecided"])?;
    assert_rolled_back(&app).await?;
    app.cleanup().await;
    Ok(())
}
