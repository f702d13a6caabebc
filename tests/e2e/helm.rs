//! The time app as the user's reports deploy it, a Helm chart (`examples/time-app/chart`), with a
//! real `helm`: `helm install`, then `rollout ... -f <(helm template ...)` (a pipe given as a path)
//! and `helm template ... | rollout ... -f -`, each run to the end with every pod's data kept;
//! afterwards `helm` still knows its release, a `helm upgrade` with the old values is refused
//! (a conflict with rollout's field manager, nothing changed), and one with the values rolled out
//! restarts no pod. `helm` is `$ROLLOUT_HELM` (set by `scripts/lib.sh` from
//! `scripts/provision-helm.sh`), else the `helm` on PATH.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{ensure, Context};
use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use rollout::model::exit::ExitCode;
use rollout::model::state::ANNOTATION_KEY;

use crate::support::{kubeconfig, pod_data, versions, App, Run, RUN_LIMIT, SETTLE, STS};

/// The release name; the chart names its StatefulSet after it (`time-app`, as [`STS`]).
const RELEASE: &str = "time-app";
/// The labels the chart selects its pods by.
const SELECTOR: &str = "app.kubernetes.io/name=time-app,app.kubernetes.io/instance=time-app";

fn chart() -> String {
    testkit::repo_root()
        .join("examples/time-app/chart")
        .display()
        .to_string()
}

/// The `helm` the tests run: `$ROLLOUT_HELM`, else `helm` on PATH.
fn helm_program() -> PathBuf {
    std::env::var_os("ROLLOUT_HELM")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("helm"))
}

/// Helm's own directories (config, cache, data) for one test, so a user's repositories and
/// plugins take no part; removed when dropped.
struct HelmHome(PathBuf);

impl HelmHome {
    fn new(name: &str) -> HelmHome {
        HelmHome(std::env::temp_dir().join(format!("{name}-helm-home")))
    }

    fn command(&self, program: &std::path::Path) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(program);
        command
            .env("KUBECONFIG", kubeconfig())
            .env("HELM_CONFIG_HOME", self.0.join("config"))
            .env("HELM_CACHE_HOME", self.0.join("cache"))
            .env("HELM_DATA_HOME", self.0.join("data"))
            .env_remove("HELM_DRIVER")
            .env_remove("HELM_NAMESPACE")
            .env_remove("HELM_KUBECONTEXT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `helm ARGS` to the end.
    async fn helm(&self, args: &[&str]) -> anyhow::Result<Run> {
        let program = helm_program();
        let child = self.command(&program).args(args).spawn().with_context(|| {
            format!(
                "running {}: build it with scripts/provision-helm.sh and export ROLLOUT_HELM=<the path it prints>, or put a helm on PATH",
                program.display()
            )
        })?;
        let mut run = crate::support::finish_within(child, &args.join(" "), RUN_LIMIT).await?;
        run.args = format!("helm {}", run.args);
        Ok(run)
    }

    /// `helm ARGS`, which must succeed.
    async fn helm_ok(&self, args: &[&str]) -> anyhow::Result<Run> {
        let run = self.helm(args).await?;
        ensure!(run.code == Some(0), "{}", run.describe());
        Ok(run)
    }

    /// `script` run by bash with `$HELM`, `$ROLLOUT`, `$CHART`, `$NS` and the kubeconfig set, as a
    /// user types `rollout ... -f <(helm template ...)` in a shell.
    async fn shell(&self, ns: &str, script: &str) -> anyhow::Result<Run> {
        let child = self
            .command(std::path::Path::new("bash"))
            .args(["-euo", "pipefail", "-c", script])
            .env("HELM", helm_program())
            .env("ROLLOUT", env!("CARGO_BIN_EXE_rollout"))
            .env("CHART", chart())
            .env("NS", ns)
            .env_remove("RUST_LOG")
            .spawn()
            .context("starting bash")?;
        crate::support::finish_within(child, script, RUN_LIMIT).await
    }
}

impl Drop for HelmHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `helm status RELEASE -o json`: the release's status and revision.
async fn release_status(home: &HelmHome, ns: &str) -> anyhow::Result<(String, i64)> {
    let run = home
        .helm_ok(&["status", RELEASE, "-n", ns, "-o", "json"])
        .await?;
    let json = run.json()?;
    let status = json
        .pointer("/info/status")
        .and_then(|s| s.as_str())
        .unwrap_or_default()
        .to_string();
    let version = json
        .pointer("/version")
        .and_then(|v| v.as_i64())
        .unwrap_or(0);
    Ok((status, version))
}

/// The chart's pods (by its selector labels): name -> (uid, controller revision, version label).
async fn chart_pods(ns: &TestNs) -> anyhow::Result<BTreeMap<String, (String, String, String)>> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(SELECTOR))
        .await?;
    let mut out = BTreeMap::new();
    for pod in pods.items {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let label = |key: &str| labels.get(key).cloned().unwrap_or_default();
        out.insert(
            pod.metadata.name.clone().unwrap_or_default(),
            (
                pod.metadata.uid.clone().unwrap_or_default(),
                label("controller-revision-hash"),
                label("app.kubernetes.io/version"),
            ),
        );
    }
    Ok(out)
}

/// Every pod of the chart runs the set's update revision (which is also its current one), is
/// labelled and answers with `version`, and keeps its claim and visits.
async fn assert_all_on(app: &App, version: &str) -> anyhow::Result<()> {
    let sts = app.statefulset().await?;
    let status = sts.status.clone().unwrap_or_default();
    ensure!(
        status.current_revision == status.update_revision,
        "current revision {:?} is not the update revision {:?}",
        status.current_revision,
        status.update_revision
    );
    let revision = status.update_revision.unwrap_or_default();
    let pods = chart_pods(&app.ns).await?;
    ensure!(pods.len() == app.replicas as usize, "pods: {pods:?}");
    for (pod, (_, rev, label)) in &pods {
        ensure!(
            rev == &revision && label == version,
            "{pod} runs revision {rev} labelled {label}, not {revision} and {version}: {pods:?}"
        );
    }
    let answers = versions(&app.ns, app.replicas).await?;
    ensure!(
        answers.values().all(|v| v == version),
        "the pods answer {answers:?}, not {version}"
    );
    ensure!(app.image().await? == format!("time-app:{version}"));
    app.assert_data_kept().await
}

/// `helm upgrade` with the values a finished rollout rolled out: the release takes the new
/// revision and no pod is replaced (the template is the one the pods already run).
async fn upgrade_is_a_no_op_for_the_pods(
    home: &HelmHome,
    app: &App,
    tag: &str,
    revision: i64,
) -> anyhow::Result<()> {
    let before = chart_pods(&app.ns).await?;
    let set = app.statefulset().await?;
    let update_revision = set.status.and_then(|s| s.update_revision);
    home.helm_ok(&[
        "upgrade",
        RELEASE,
        &chart(),
        "-n",
        app.name(),
        "--set",
        &format!("image.tag={tag}"),
    ])
    .await?;
    // Once the controller has seen the upgraded set, its update revision says whether the pod
    // template changed.
    let seen = testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        SETTLE,
        |s: Option<&StatefulSet>| {
            s.is_some_and(|s| {
                s.status.as_ref().and_then(|st| st.observed_generation) >= s.metadata.generation
            })
        },
    )
    .await?;
    let after_revision = seen.status.and_then(|s| s.update_revision);
    ensure!(
        after_revision == update_revision,
        "helm upgrade with image.tag={tag} changed the pod template: revision {update_revision:?} -> {after_revision:?}"
    );
    let after = chart_pods(&app.ns).await?;
    ensure!(
        after == before,
        "helm upgrade with image.tag={tag} replaced pods: {before:?} -> {after:?}"
    );
    ensure!(
        release_status(home, app.name()).await? == ("deployed".to_string(), revision),
        "after the upgrade, helm status says {:?}",
        release_status(home, app.name()).await?
    );
    Ok(())
}

/// A rollout from `helm template` output, through process substitution and through stdin, on a
/// release `helm install` made; `helm` keeps its release throughout.
#[tokio::test]
async fn rollout_from_helm_template_on_a_helm_release() -> anyhow::Result<()> {
    let ns = TestNs::new("helm").await?;
    let home = HelmHome::new(&ns.name);
    let name = ns.name.clone();
    home.helm_ok(&["install", RELEASE, &chart(), "-n", &name])
        .await?;
    testkit::wait_sts_ready(&ns, STS, 3, SETTLE).await?;
    // One visit on each pod, to find again after each rollout.
    let http = testkit::http();
    for i in 0..3 {
        let pod = format!("{STS}-{i}");
        let ip = testkit::pod_ip(&ns, &pod).await?;
        let answer = testkit::get(&http, &format!("http://{ip}:8080/")).await?;
        ensure!(
            answer.status == 200 && answer.pod == pod && answer.version == "v1",
            "{pod} answered {answer:?}"
        );
    }
    let data = pod_data(&ns, 3).await?;
    let app = App {
        ns,
        replicas: 3,
        data,
    };
    assert_all_on(&app, "v1").await?;
    assert_eq!(release_status(&home, &name).await?, ("deployed".into(), 1));

    // A `helm template` that fails leaves the pipe empty: refused, nothing changed.
    let generation = app.statefulset().await?.metadata.generation;
    let refused = home
        .shell(
            &name,
            r#""$ROLLOUT" canary time-app -n "$NS" --steps 34,100 -f <("$HELM" template time-app "$CHART" -n "$NS" -f /nonexistent/values.yaml)"#,
        )
        .await?;
    refused.expect(ExitCode::BadInput)?;
    assert!(
        refused.stderr.contains("is empty") && refused.stderr.contains("/nonexistent/values.yaml"),
        "rollout says the manifest is empty, after helm's own error: {}",
        refused.describe()
    );
    let set = app.statefulset().await?;
    assert_eq!(set.metadata.generation, generation, "the set was changed");
    assert!(
        !set.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(ANNOTATION_KEY),
        "a record was written"
    );

    // The workflow of the README: rollout from the chart with the new values...
    let canary = home
        .shell(
            &name,
            r#""$ROLLOUT" canary time-app -n "$NS" --steps 34,100 --pause 1s -f <("$HELM" template time-app "$CHART" -n "$NS" --set image.tag=v2)"#,
        )
        .await?;
    canary.expect(ExitCode::Done)?;
    assert_all_on(&app, "v2").await?;
    assert_eq!(crate::strategies::phase(&app).await?, "Succeeded");
    // ...helm still has its release (at the values it installed)...
    assert_eq!(release_status(&home, &name).await?, ("deployed".into(), 1));
    // ...refuses an upgrade with the old values (server-side apply: rollout owns the image
    // now), changing nothing...
    let pods = chart_pods(&app.ns).await?;
    let generation = app.statefulset().await?.metadata.generation;
    let stale = home
        .helm(&["upgrade", RELEASE, &chart(), "-n", &name])
        .await?;
    assert!(
        stale.code != Some(0) && stale.stderr.contains(r#"conflicts with "rollout""#),
        "{}",
        stale.describe()
    );
    assert_eq!(app.statefulset().await?.metadata.generation, generation);
    assert_eq!(chart_pods(&app.ns).await?, pods);
    assert_all_on(&app, "v2").await?;
    // ...and takes the new values without touching a pod (revision 2 is the failed upgrade).
    upgrade_is_a_no_op_for_the_pods(&home, &app, "v2", 3).await?;
    assert_eq!(crate::strategies::phase(&app).await?, "Succeeded");

    // The same through a pipe into `-f -`.
    let rolling = home
        .shell(
            &name,
            r#""$HELM" template time-app "$CHART" -n "$NS" --set image.tag=v3 | "$ROLLOUT" rolling time-app -n "$NS" -f -"#,
        )
        .await?;
    rolling.expect(ExitCode::Done)?;
    assert_all_on(&app, "v3").await?;
    assert_eq!(crate::strategies::phase(&app).await?, "Succeeded");
    upgrade_is_a_no_op_for_the_pods(&home, &app, "v3", 4).await?;

    let history = home
        .helm_ok(&["history", RELEASE, "-n", &name, "-o", "json"])
        .await?
        .json()?;
    assert_eq!(
        history.as_array().map(Vec::len),
        Some(4),
        "install, the refused upgrade and two upgrades: {history}"
    );
    app.cleanup().await;
    Ok(())
}

/// The objects of a multi-document YAML text, by kind and name.
fn objects(text: &str) -> BTreeMap<(String, String), serde_json::Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("valid YAML"))
        .filter(|v: &serde_json::Value| !v.is_null())
        .map(|v| {
            let key = (
                v["kind"].as_str().unwrap_or_default().to_string(),
                v["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            (key, v)
        })
        .collect()
}

/// `helm lint --strict` passes, and the chart renders the deployment of `k8s/time-app.yaml` (the
/// seeds' shape): the same set, probes, env, volume and Services, under the chart's labels.
#[tokio::test]
async fn the_chart_lints_clean_and_renders_the_seeds_deployment() -> anyhow::Result<()> {
    let home = HelmHome::new(&format!("helm-lint-{}", std::process::id()));
    let lint = home.helm_ok(&["lint", "--strict", &chart()]).await?;
    assert!(
        lint.stdout.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{}",
        lint.describe()
    );
    let rendered = home.helm_ok(&["template", RELEASE, &chart()]).await?;
    let from_chart = objects(&rendered.stdout);
    let manifest = objects(&std::fs::read_to_string(
        testkit::repo_root().join("examples/time-app/k8s/time-app.yaml"),
    )?);
    let keys =
        |m: &BTreeMap<(String, String), serde_json::Value>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&from_chart), keys(&manifest), "the same objects");

    let key = |kind: &str, name: &str| (kind.to_string(), name.to_string());
    let (set, want) = (
        &from_chart[&key("StatefulSet", STS)]["spec"],
        &manifest[&key("StatefulSet", STS)]["spec"],
    );
    for field in [
        "/replicas",
        "/podManagementPolicy",
        "/serviceName",
        "/volumeClaimTemplates",
        "/template/spec/terminationGracePeriodSeconds",
    ] {
        assert_eq!(set.pointer(field), want.pointer(field), "{field}");
    }
    let (app, want_app) = (
        &set["template"]["spec"]["containers"][0],
        &want["template"]["spec"]["containers"][0],
    );
    for field in [
        "name",
        "image",
        "ports",
        "readinessProbe",
        "livenessProbe",
        "volumeMounts",
    ] {
        assert_eq!(app[field], want_app[field], "container {field}");
    }
    // The chart also sets PORT from its containerPort value (the manifest relies on the default).
    let mut env = app["env"].as_array().cloned().unwrap_or_default();
    let port = env.remove(0);
    assert_eq!(port, serde_json::json!({"name": "PORT", "value": "8080"}));
    assert_eq!(
        serde_json::Value::Array(env),
        want_app["env"],
        "container env"
    );

    // Each Service selects exactly the pods of the set, with the manifest's ports and type.
    let selector = &set["selector"]["matchLabels"];
    assert_eq!(
        selector,
        &serde_json::json!({"app.kubernetes.io/name": "time-app", "app.kubernetes.io/instance": RELEASE})
    );
    for (label, value) in selector.as_object().into_iter().flatten() {
        assert_eq!(&set["template"]["metadata"]["labels"][label], value);
    }
    assert_eq!(
        set["template"]["metadata"]["labels"]["app.kubernetes.io/version"],
        "v1"
    );
    for name in ["time-app", "time-app-pods"] {
        let (svc, want_svc) = (
            &from_chart[&key("Service", name)]["spec"],
            &manifest[&key("Service", name)]["spec"],
        );
        assert_eq!(&svc["selector"], selector, "Service {name}");
        for field in ["type", "clusterIP", "ports"] {
            assert_eq!(svc[field], want_svc[field], "Service {name}: {field}");
        }
    }

    // Another release name prefixes the chart's; the tag and the replicas follow the values.
    let other = home
        .helm_ok(&[
            "template",
            "shop",
            &chart(),
            "--set",
            "image.tag=v2",
            "--set",
            "replicaCount=5",
        ])
        .await?;
    let other = objects(&other.stdout);
    let set = &other[&key("StatefulSet", "shop-time-app")]["spec"];
    assert_eq!(set["serviceName"], "shop-time-app-pods");
    assert_eq!(set["replicas"], 5);
    assert_eq!(
        set["template"]["spec"]["containers"][0]["image"],
        "time-app:v2"
    );
    assert!(other.contains_key(&key("Service", "shop-time-app")));
    Ok(())
}
