//! `rollout` run as a Kubernetes Job, with in-cluster configuration: the Job's pod signs in as a
//! ServiceAccount bound only to the project's Role, with the token, CA and namespace the node
//! agent mounts at `/var/run/secrets/kubernetes.io/serviceaccount`, and finds the API server in
//! `KUBERNETES_SERVICE_HOST`. The devcluster maps the image `rollout` to the built binary, as it
//! maps `time-app` to the example app. One Job runs a canary to completion; another rolls out a
//! release that fails its gate, exits 3, and the Job shows the failure.
//!
//! The pod runs with `hostNetwork: true`: the devcluster sends no traffic to ClusterIPs, so the
//! API server is reached at its own address on loopback, which only the host's network has.

use std::time::Duration;

use anyhow::{bail, ensure, Context};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{ListParams, PostParams};

use crate::rbac::{deploy_with_account, ACCOUNT};
use crate::support::{failing_release_manifest, statefulset_document, STS};

/// How long a Job may take before the test gives up (generous: it only keeps a broken run from
/// hanging the suite).
const JOB_LIMIT: Duration = Duration::from_secs(300);

/// A Job that runs `rollout ARGS` once as the test's ServiceAccount, with the failing release's
/// manifest (if any) mounted from a ConfigMap at `/manifest/sts.yaml`.
fn job(name: &str, args: &[&str], manifest: bool) -> serde_json::Value {
    let mut pod = serde_json::json!({
        "serviceAccountName": ACCOUNT,
        // devcluster only: the API server is reached on loopback (see the module docs).
        "hostNetwork": true,
        "restartPolicy": "Never",
        "containers": [{
            "name": "rollout",
            "image": "rollout:dev",
            "args": args,
        }],
    });
    if manifest {
        pod["volumes"] =
            serde_json::json!([{"name": "manifest", "configMap": {"name": "release"}}]);
        pod["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "manifest", "mountPath": "/manifest"}]);
    }
    serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": pod}},
    })
}

async fn create_job(
    ns: &devcluster::testkit::TestNs,
    job: serde_json::Value,
) -> anyhow::Result<()> {
    ns.api::<Job>()
        .create(&PostParams::default(), &serde_json::from_value(job)?)
        .await?;
    Ok(())
}

/// Waits until the Job has finished; returns whether it succeeded and its pod's exit code.
async fn finished(ns: &devcluster::testkit::TestNs, name: &str) -> anyhow::Result<(bool, i32)> {
    let jobs = ns.api::<Job>();
    let deadline = tokio::time::Instant::now() + JOB_LIMIT;
    let outcome = loop {
        let job = jobs.get(name).await?;
        let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
        let done = |kind: &str| {
            conditions
                .iter()
                .any(|c| c.type_ == kind && c.status == "True")
        };
        if done("Complete") {
            break true;
        }
        if done("Failed") {
            break false;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("Job {name} did not finish within {JOB_LIMIT:?}: {conditions:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(&format!("job-name={name}")))
        .await?;
    let code = pods
        .items
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .find_map(|c| Some(c.state.as_ref()?.terminated.as_ref()?.exit_code))
        .with_context(|| format!("no terminated container in Job {name}'s pods"))?;
    Ok((outcome, code))
}

#[tokio::test]
async fn rollout_runs_as_a_job_with_in_cluster_configuration() -> anyhow::Result<()> {
    let (app, _role, config) = deploy_with_account("incluster").await?;
    let _ = std::fs::remove_file(&config);

    // A canary to completion, from inside the cluster.
    let canary = job(
        "canary",
        &[
            "canary",
            STS,
            "--image",
            "time-app:v2",
            "--steps",
            "34,100",
            "--pause",
            "1s",
        ],
        false,
    );
    create_job(&app.ns, canary).await?;
    let (ok, code) = finished(&app.ns, "canary").await?;
    ensure!(ok && code == 0, "the canary Job failed: exit {code}");
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;

    // A release whose pods turn Ready but answer 500: the gate fails, the Job's rollout rolls
    // back and exits 3, and the Job is Failed.
    let manifest = statefulset_document(&failing_release_manifest(3, false, "time-app:v3"));
    let config_map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "release"},
        "data": {"sts.yaml": manifest},
    });
    app.ns
        .api::<ConfigMap>()
        .create(&PostParams::default(), &serde_json::from_value(config_map)?)
        .await?;
    let failing = job(
        "failing",
        &["rolling", STS, "-f", "/manifest/sts.yaml"],
        true,
    );
    create_job(&app.ns, failing).await?;
    let (ok, code) = finished(&app.ns, "failing").await?;
    ensure!(
        !ok && code == 3,
        "the failing release's Job: succeeded={ok}, exit {code} (expected Failed, exit 3)"
    );
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
