//! `rollout` as the ServiceAccount of `deploy/rbac.yaml`, bound only to the Role there: the
//! devcluster's API server authorizes with `Node,RBAC`, so every request the tool makes is
//! checked against that Role (its Events too). A rolling and a blue/green rollout succeed; with one verb taken away, the rollback that
//! needs it stops with a message naming the verb, the resource and what to grant, and `rollout
//! resume` finishes it once the verb is back.

use std::path::PathBuf;

use anyhow::{ensure, Context};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use rollout::model::exit::ExitCode;

use crate::support::{
    failing_release_manifest, kubeconfig, rollout, versions_through_service, App, ManifestFile,
    Run, STS,
};

/// The ServiceAccount that `deploy/rbac.yaml` makes.
pub(crate) const ACCOUNT: &str = "rollout";

/// The ServiceAccount, Role and RoleBinding of `deploy/rbac.yaml`, as the file has them.
fn deploy_rbac() -> anyhow::Result<(ServiceAccount, Role, RoleBinding)> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(devcluster::testkit::repo_root().join("deploy/rbac.yaml"))?;
    let (mut account, mut role, mut binding) = (None, None, None);
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(document)?;
        match value["kind"].as_str() {
            Some("ServiceAccount") => account = Some(serde_json::from_value(value)?),
            Some("Role") => role = Some(serde_json::from_value(value)?),
            Some("RoleBinding") => binding = Some(serde_json::from_value(value)?),
            other => anyhow::bail!("deploy/rbac.yaml has a {other:?}"),
        }
    }
    Ok((
        account.context("deploy/rbac.yaml has no ServiceAccount")?,
        role.context("deploy/rbac.yaml has no Role")?,
        binding.context("deploy/rbac.yaml has no RoleBinding")?,
    ))
}

/// The Role without `verb` on `resource`.
fn without(role: &Role, resource: &str, verb: &str) -> Role {
    let mut role = role.clone();
    for rule in role.rules.iter_mut().flatten() {
        if rule.resources.iter().flatten().any(|r| r == resource) {
            rule.verbs.retain(|v| v != verb);
        }
    }
    role
}

/// A kubeconfig for the devcluster's API server that authenticates as the ServiceAccount, with
/// a token from the TokenRequest API; written to a file the caller removes.
async fn account_kubeconfig(app: &App) -> anyhow::Result<PathBuf> {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(3600),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = app
        .ns
        .api::<ServiceAccount>()
        .create_token_request(ACCOUNT, &PostParams::default(), &request)
        .await?
        .status
        .context("the TokenRequest has no status")?
        .token;
    let admin: serde_json::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(kubeconfig())?)?;
    let cluster = admin["clusters"][0].clone();
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": ACCOUNT, "context": {
            "cluster": cluster["name"], "user": ACCOUNT, "namespace": app.name()
        }}],
        "current-context": ACCOUNT,
    });
    let path = std::env::temp_dir().join(format!("{}-kubeconfig", app.name()));
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
    Ok(path)
}

async fn put_role(app: &App, role: &Role) -> anyhow::Result<()> {
    app.ns
        .api::<Role>()
        .patch(
            "rollout",
            &PatchParams::apply("rollout-e2e").force(),
            &Patch::Apply(role),
        )
        .await?;
    Ok(())
}

/// `rollout ARGS` as the ServiceAccount.
async fn as_account(app: &App, config: &std::path::Path, args: &[&str]) -> anyhow::Result<Run> {
    let config = config.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--kubeconfig", &config]);
    rollout(app.name(), &all).await
}

/// The time app in a namespace of its own, `deploy/rbac.yaml` applied there as it is, and a
/// kubeconfig that signs in as its ServiceAccount.
pub(crate) async fn deploy_with_account(prefix: &str) -> anyhow::Result<(App, Role, PathBuf)> {
    let app = App::deploy(prefix, 3, false).await?;
    let (account, role, binding) = deploy_rbac()?;
    ensure!(role.metadata.name.as_deref() == Some("rollout"));
    ensure!(account.metadata.name.as_deref() == Some(ACCOUNT));
    for namespaced in [
        account.metadata.namespace.as_ref(),
        role.metadata.namespace.as_ref(),
        binding.metadata.namespace.as_ref(),
    ] {
        ensure!(namespaced.is_none(), "deploy/rbac.yaml names a namespace");
    }
    app.ns
        .api::<ServiceAccount>()
        .create(&PostParams::default(), &account)
        .await?;
    put_role(&app, &role).await?;
    app.ns
        .api::<RoleBinding>()
        .create(&PostParams::default(), &binding)
        .await?;
    let config = account_kubeconfig(&app).await?;
    Ok((app, role, config))
}

#[tokio::test]
async fn rollouts_run_as_the_account_of_deploy_rbac() -> anyhow::Result<()> {
    let (app, role, config) = deploy_with_account("rbac").await?;

    // The account really is limited: it may not read anything outside the Role.
    let refused = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
        .args(["status", STS, "-n", "kube-system", "--kubeconfig"])
        .arg(&config)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        !refused.status.success() && stderr.contains("forbidden"),
        "{stderr}"
    );

    // A rolling rollout with the Role alone.
    as_account(&app, &config, &["rolling", STS, "--image", "time-app:v2"])
        .await?
        .expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;

    // Without `delete` on statefulsets, a blue/green whose green fails its gate cannot remove
    // green: the run stops and says which verb on which resource to grant.
    put_role(&app, &without(&role, "statefulsets", "delete")).await?;
    let bad = ManifestFile::write(&app, &failing_release_manifest(3, false, "time-app:v3"))?;
    let stopped = as_account(
        &app,
        &config,
        &["bluegreen", STS, "-f", &bad.arg(), "--auto-promote"],
    )
    .await?;
    stopped.expect(ExitCode::ClusterError)?;
    for needle in [
        "grant verb `delete` on resource `statefulsets` (API group apps)",
        &format!("system:serviceaccount:{}:{ACCOUNT}", app.name()),
        "`rollout resume time-app` finishes the rollback",
    ] {
        ensure!(
            stopped.stderr.contains(needle),
            "the message lacks `{needle}`: {}",
            stopped.describe()
        );
    }
    // Blue never stopped serving v2.
    let answers = versions_through_service(&app.ns, 20).await?;
    ensure!(answers.keys().all(|v| v == "v2"), "{answers:?}");

    // With the verb back, `resume` finishes the rollback: green gone, blue on v2.
    put_role(&app, &role).await?;
    as_account(&app, &config, &["resume", STS])
        .await?
        .expect(ExitCode::GateFailed)?;
    app.assert_all_on("v2").await?;
    let sets = app
        .ns
        .api::<k8s_openapi::api::apps::v1::StatefulSet>()
        .list(&Default::default())
        .await?;
    ensure!(
        sets.items.len() == 1,
        "green is removed: {:?}",
        sets.items
            .iter()
            .map(|s| &s.metadata.name)
            .collect::<Vec<_>>()
    );

    // A blue/green rollout with the Role alone.
    as_account(
        &app,
        &config,
        &[
            "bluegreen",
            STS,
            "--image",
            "time-app:v3",
            "--auto-promote",
            "--scale-down-delay",
            "1s",
            // Green's gates through the API server's proxies: `pods/proxy`, `services/proxy`.
            "--probe-via",
            "proxy",
        ],
    )
    .await?
    .expect(ExitCode::Done)?;
    let answers = versions_through_service(&app.ns, 20).await?;
    ensure!(answers.keys().all(|v| v == "v3"), "{answers:?}");
    let live = app.ns.api::<Service>().get(STS).await?;
    ensure!(
        live.spec
            .and_then(|s| s.selector)
            .is_some_and(|s| s.contains_key("rollout.dev/set")),
        "the live Service selects green"
    );
    crate::bluegreen::assert_blue_volumes_kept(&app).await?;
    let _ = std::fs::remove_file(&config);
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn every_strategy_runs_with_the_role_of_deploy_rbac() -> anyhow::Result<()> {
    let (app, _, config) = deploy_with_account("rbac-all").await?;
    let gates = ["--probe-window", "2s", "--probe-interval", "500ms"];
    let runs: [(&[&str], &str); 4] = [
        (
            // The HTTP gate through the API server's pod proxy: `pods/proxy` in the Role.
            &[
                "ramped",
                STS,
                "--steps",
                "1,2",
                "--probe-via",
                "proxy",
                "--image",
                "time-app:v2",
            ],
            "v2",
        ),
        (
            &["canary", STS, "--steps", "34,100", "--image", "time-app:v3"],
            "v3",
        ),
        (&["recreate", STS, "--image", "time-app:v2"], "v2"),
        (
            &[
                "shadow",
                STS,
                "--duration",
                "5s",
                "--min-samples",
                "5",
                "--image",
                "time-app:v3",
            ],
            "v2",
        ),
    ];
    for (args, version) in runs {
        let mut all = args.to_vec();
        all.extend(gates);
        as_account(&app, &config, &all)
            .await?
            .expect(ExitCode::Done)?;
        app.wait_settled().await?;
        app.assert_all_on(version).await?;
    }
    // `status`, `history` and `plan` as the account too.
    for args in [
        &["status", STS][..],
        &["history", STS],
        &["plan", "bluegreen", STS, "--image", "time-app:v3"],
    ] {
        as_account(&app, &config, args)
            .await?
            .expect(ExitCode::Done)?;
    }
    app.assert_data_kept().await?;
    // The Role lets the account tell each rollout's story as Events on the set.
    let events = app
        .ns
        .api::<k8s_openapi::api::events::v1::Event>()
        .list(&Default::default())
        .await?;
    let ours: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("rollout.dev/rollout"))
        .collect();
    ensure!(
        ours.iter()
            .filter(|e| e.reason.as_deref() == Some("RolloutSucceeded"))
            .count()
            >= 4,
        "Events written as the account: {:?}",
        ours.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_file(&config);
    app.cleanup().await;
    Ok(())
}
