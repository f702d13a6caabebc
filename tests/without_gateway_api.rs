//! `--traffic gateway` on a cluster that does not serve the Gateway API: bad input (exit 2), a
//! message that says how to install it, nothing changed. The devcluster serves the Gateway API,
//! so the test stops serving it for a moment: every version of the HTTPRoute CRD is set to
//! `served: false` (the API server then answers 404 for HTTPRoutes, as a cluster without the CRD
//! does; the objects stay in etcd), and back to what they were afterwards, whatever the test
//! found. That changes the cluster every test shares, so the test is `#[ignore]`d: `cargo test
//! --test '*'` never runs it, and `scripts/test` runs it on its own after the other end-to-end
//! tests, with `--ignored --test-threads=1`.

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "e2e/support.rs"]
mod support;

use std::time::Duration;

use anyhow::{ensure, Context};
use devcluster::testkit::TestNs;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use rollout::model::exit::ExitCode;
use serde_json::json;
use support::{App, STS};

const CRD: &str = "httproutes.gateway.networking.k8s.io";
/// How long the API server may take to stop (or start again) serving a version.
const SETTLE: Duration = Duration::from_secs(60);

/// Sets `served` of every version of the HTTPRoute CRD (`served` per version, in order);
/// gives what they were.
async fn set_served(
    crds: &Api<CustomResourceDefinition>,
    served: &[bool],
) -> anyhow::Result<Vec<bool>> {
    let crd = crds.get(CRD).await?;
    let before: Vec<bool> = crd.spec.versions.iter().map(|v| v.served).collect();
    ensure!(
        before.len() == served.len(),
        "{CRD} has versions {before:?}"
    );
    let patch: Vec<serde_json::Value> = served
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"op": "replace", "path": format!("/spec/versions/{i}/served"), "value": s}))
        .collect();
    crds.patch(
        CRD,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(json!(patch))?),
    )
    .await
    .with_context(|| format!("patching {CRD}"))?;
    Ok(before)
}

/// Waits until listing HTTPRoutes in `ns` works (`true`) or is answered 404 (`false`).
async fn wait_served(ns: &TestNs, want: bool) -> anyhow::Result<()> {
    let routes = support::gateway::routes(ns);
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let now = match routes.list(&ListParams::default()).await {
            Ok(_) => true,
            Err(kube::Error::Api(e)) if e.code == 404 => false,
            Err(e) => return Err(e.into()),
        };
        if now == want {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "HTTPRoutes are {}served after {SETTLE:?}",
            if now { "still " } else { "not " }
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "stops serving HTTPRoutes on the shared cluster: run alone, with --ignored"]
async fn traffic_gateway_without_the_gateway_api_says_how_to_install_it() {
    let app = App::deploy("gw-nocrd", 2, false).await.expect("deploy");
    let crds: Api<CustomResourceDefinition> = Api::all(app.ns.client.clone());
    let versions = crds.get(CRD).await.expect("the CRD").spec.versions.len();
    let before = set_served(&crds, &vec![false; versions])
        .await
        .expect("stop serving");
    let result = async {
        wait_served(&app.ns, false).await?;
        let generation = app.statefulset().await?.metadata.generation;
        let run = app
            .rollout(&[
                "canary",
                STS,
                "--image",
                "time-app:v2",
                "--weight",
                "50",
                "--traffic",
                "gateway",
                "--route",
                "web",
            ])
            .await?;
        run.expect(ExitCode::BadInput)?;
        ensure!(
            run.stderr.contains("does not serve the Gateway API")
                && run
                    .stderr
                    .contains("kubectl apply --server-side -f standard-install.yaml"),
            "{}",
            run.describe()
        );
        ensure!(
            app.statefulset().await?.metadata.generation == generation,
            "the StatefulSet was written"
        );
        anyhow::Ok(())
    }
    .await;
    // Served again as it was, whatever the test found.
    set_served(&crds, &before).await.expect("serve again");
    wait_served(&app.ns, true).await.expect("served again");
    result.expect("refused as bad input");
    app.cleanup().await;
}
