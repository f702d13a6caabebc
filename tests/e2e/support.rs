//! What the end-to-end tests share: running the `rollout` binary against a test namespace,
//! deploying the time app, and reading back what a user would look at (revisions, versions,
//! claims, visits, traffic).

#![allow(dead_code)]

// A path relative to this file, so the tests that include it by `#[path]` find it too.
#[path = "support/gateway.rs"]
pub mod gateway;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::ListParams;
use rollout::model::exit::ExitCode;

/// The StatefulSet of the time app's manifest.
pub const STS: &str = "time-app";
/// Longest a test waits for pods to come up or settle.
pub const SETTLE: Duration = Duration::from_secs(180);
/// Longest one `rollout` run may take in a test before it is killed.
pub const RUN_LIMIT: Duration = Duration::from_secs(300);

pub fn kubeconfig() -> PathBuf {
    devcluster::Layout::from_env().kubeconfig()
}

/// A `rollout` command for namespace `ns`, with the devcluster's kubeconfig.
pub fn rollout_command(ns: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollout"));
    command
        .args(args)
        .args(["-n", ns])
        .env("KUBECONFIG", kubeconfig())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// How a `rollout` run ended.
#[derive(Debug, Clone)]
pub struct Run {
    pub args: String,
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn describe(&self) -> String {
        format!(
            "`rollout {}` exited with {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.args, self.code, self.stdout, self.stderr
        )
    }

    /// Fails unless the run ended with `code`.
    pub fn expect(&self, code: ExitCode) -> anyhow::Result<&Self> {
        ensure!(
            self.code == Some(i32::from(code.code())),
            "expected exit {} ({}), got: {}",
            code.code(),
            code.describe(),
            self.describe()
        );
        Ok(self)
    }

    /// Fails unless the run's stderr says each of `words`.
    pub fn said(&self, words: &[&str]) -> anyhow::Result<&Self> {
        for w in words {
            ensure!(self.stderr.contains(w), "{w:?} in {}", self.describe());
        }
        Ok(self)
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("stdout is not JSON: {}", self.describe()))
    }
}

/// Runs `rollout ARGS -n NS` to the end (at most [`RUN_LIMIT`]).
pub async fn rollout(ns: &str, args: &[&str]) -> anyhow::Result<Run> {
    let child = rollout_command(ns, args)
        .spawn()
        .context("starting rollout")?;
    finish_within(child, &args.join(" "), RUN_LIMIT).await
}

/// Waits (at most `limit`) for a `rollout` run started in the background to end, and keeps
/// what it said.
pub async fn finish_within(
    child: tokio::process::Child,
    args: &str,
    limit: std::time::Duration,
) -> anyhow::Result<Run> {
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .with_context(|| format!("`rollout {args}` still running after {limit:?}"))??;
    Ok(Run {
        args: args.to_string(),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The time app's manifest with `replicas` pods, its pod management policy and extra env.
pub fn time_app_manifest(
    replicas: i32,
    ordered: bool,
    env: &[(&str, &str)],
    image: &str,
) -> String {
    let path = testkit::repo_root().join("examples/time-app/k8s/time-app.yaml");
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text = text.replace("replicas: 3", &format!("replicas: {replicas}"));
    text = text.replace("image: time-app:v1", &format!("image: {image}"));
    if ordered {
        text = text.replace(
            "podManagementPolicy: Parallel",
            "podManagementPolicy: OrderedReady",
        );
    }
    let extra: String = env
        .iter()
        .map(|(k, v)| format!("            - name: {k}\n              value: \"{v}\"\n"))
        .collect();
    text.replace(
        "            - name: DATA_DIR\n              value: /data\n",
        &format!("            - name: DATA_DIR\n              value: /data\n{extra}"),
    )
}

/// The StatefulSet part of [`time_app_manifest`] (what `rollout -f` takes).
pub fn statefulset_document(manifest: &str) -> String {
    manifest
        .split("\n---\n")
        .find(|doc| doc.contains("kind: StatefulSet"))
        .unwrap_or_default()
        .to_string()
}

/// A release the HTTP gate fails and Kubernetes does not: `/` answers 500, while its readiness
/// probe only asks `/healthz`, so its pods turn Ready.
pub fn failing_release_manifest(replicas: i32, ordered: bool, image: &str) -> String {
    time_app_manifest(replicas, ordered, &[("FAIL_RATE", "1")], image)
        .replace("              path: /\n", "              path: /healthz\n")
}

/// The StatefulSet of a manifest written to a file for `rollout -f`, removed when dropped.
pub struct ManifestFile(PathBuf);

impl ManifestFile {
    /// Writes the StatefulSet document of `manifest` (see [`time_app_manifest`]) for `app`.
    pub fn write(app: &App, manifest: &str) -> anyhow::Result<ManifestFile> {
        let path = std::env::temp_dir().join(format!("{}-sts.yaml", app.name()));
        std::fs::write(&path, statefulset_document(manifest))?;
        Ok(ManifestFile(path))
    }

    /// The path, as `rollout -f` takes it.
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ManifestFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// One pod's data before a rollout: the volume its claim is bound to and its visits.
#[derive(Debug, Clone, PartialEq)]
pub struct PodData {
    pub volume: String,
    pub visits: Vec<serde_json::Value>,
}

/// A test namespace with the time app running and each pod's data on record.
pub struct App {
    pub ns: TestNs,
    pub replicas: i32,
    pub data: BTreeMap<String, PodData>,
}

impl App {
    /// Deploys the time app (`time-app:v1`), waits until every pod is Ready, records a visit on
    /// each pod and notes each pod's claim and visits.
    pub async fn deploy(prefix: &str, replicas: i32, ordered: bool) -> anyhow::Result<App> {
        let ns = TestNs::new(prefix).await?;
        ns.apply_yaml(&time_app_manifest(replicas, ordered, &[], "time-app:v1"))
            .await?;
        testkit::wait_sts_ready(&ns, STS, replicas, SETTLE).await?;
        let http = testkit::http();
        for i in 0..replicas {
            let pod = pod_name(i);
            let ip = testkit::pod_ip(&ns, &pod).await?;
            let a = testkit::get(&http, &format!("http://{ip}:8080/")).await?;
            ensure!(a.status == 200 && a.pod == pod, "{pod} answered {a:?}");
        }
        let data = pod_data(&ns, replicas).await?;
        Ok(App { ns, replicas, data })
    }

    pub fn name(&self) -> &str {
        &self.ns.name
    }

    pub async fn rollout(&self, args: &[&str]) -> anyhow::Result<Run> {
        rollout(&self.ns.name, args).await
    }

    /// Every ordinal still has its own claim, on the same volume, and its earlier visits, in
    /// order, served by the pod of that ordinal.
    pub async fn assert_data_kept(&self) -> anyhow::Result<()> {
        let now = pod_data(&self.ns, self.replicas).await?;
        for (pod, before) in &self.data {
            let after = now.get(pod).with_context(|| format!("{pod} is gone"))?;
            ensure!(
                after.volume == before.volume,
                "{pod}: claim moved from volume {} to {}",
                before.volume,
                after.volume
            );
            ensure!(
                after.visits.len() >= before.visits.len() && after.visits[..before.visits.len()] == before.visits[..],
                "{pod}: the visits on record before the rollout are not all there ({} before, {} after)",
                before.visits.len(),
                after.visits.len()
            );
        }
        Ok(())
    }

    /// Every pod runs the StatefulSet's current revision, which is also its update revision
    /// (nothing left half-way), is Ready, and answers with `version`.
    pub async fn assert_all_on(&self, version: &str) -> anyhow::Result<()> {
        let sts = self.ns.api::<StatefulSet>().get(STS).await?;
        let status = sts.status.clone().unwrap_or_default();
        ensure!(
            status.current_revision == status.update_revision,
            "current revision {:?} is not the update revision {:?}",
            status.current_revision,
            status.update_revision
        );
        let revision = status.update_revision.unwrap_or_default();
        let pods = revisions(&self.ns).await?;
        ensure!(pods.len() == self.replicas as usize, "pods: {pods:?}");
        for (pod, rev) in &pods {
            ensure!(
                rev == &revision,
                "{pod} runs revision {rev}, not {revision}: {pods:?}"
            );
        }
        let versions = versions(&self.ns, self.replicas).await?;
        for (pod, v) in &versions {
            ensure!(
                v == version,
                "{pod} answers version {v}, not {version}: {versions:?}"
            );
        }
        Ok(())
    }

    /// Waits (on a watch, at most [`SETTLE`]) until every pod is Ready on one revision.
    pub async fn wait_settled(&self) -> anyhow::Result<StatefulSet> {
        let replicas = self.replicas;
        testkit::wait_for(
            self.ns.api::<StatefulSet>(),
            STS,
            SETTLE,
            move |s: Option<&StatefulSet>| {
                s.and_then(|s| s.status.as_ref().map(|st| (s, st)))
                    .is_some_and(|(s, st)| {
                        st.observed_generation >= s.metadata.generation
                            && st.ready_replicas == Some(replicas)
                            && st.updated_replicas == Some(replicas)
                            && st.current_revision == st.update_revision
                    })
            },
        )
        .await
    }

    pub async fn statefulset(&self) -> anyhow::Result<StatefulSet> {
        Ok(self.ns.api::<StatefulSet>().get(STS).await?)
    }

    pub async fn image(&self) -> anyhow::Result<String> {
        let sts = self.statefulset().await?;
        Ok(sts
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .unwrap_or_default())
    }

    pub async fn cleanup(self) {
        self.ns.cleanup().await;
    }
}

pub fn pod_name(ordinal: i32) -> String {
    format!("{STS}-{ordinal}")
}

/// Each pod's claim volume and visits.
pub async fn pod_data(ns: &TestNs, replicas: i32) -> anyhow::Result<BTreeMap<String, PodData>> {
    let mut out = BTreeMap::new();
    for i in 0..replicas {
        let pod = pod_name(i);
        let claim = ns
            .api::<PersistentVolumeClaim>()
            .get(&format!("data-{pod}"))
            .await?;
        let volume = claim
            .spec
            .and_then(|s| s.volume_name)
            .with_context(|| format!("claim of {pod} is not bound"))?;
        let visits = testkit::visits(ns, &pod).await?;
        ensure!(
            visits["pod"] == pod.as_str(),
            "/visits of {pod} names {}",
            visits["pod"]
        );
        let visits = visits["visits"].as_array().cloned().unwrap_or_default();
        out.insert(pod, PodData { volume, visits });
    }
    Ok(out)
}

/// Each pod's `controller-revision-hash` (terminating pods left out).
pub async fn revisions(ns: &TestNs) -> anyhow::Result<BTreeMap<String, String>> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=time-app"))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let rev = p
                .metadata
                .labels
                .as_ref()?
                .get("controller-revision-hash")?
                .clone();
            Some((p.metadata.name?, rev))
        })
        .collect())
}

/// The version each pod answers with on `/healthz` (not a visit), asked at its pod IP.
pub async fn versions(ns: &TestNs, replicas: i32) -> anyhow::Result<BTreeMap<String, String>> {
    let http = testkit::http();
    let mut out = BTreeMap::new();
    for i in 0..replicas {
        let pod = pod_name(i);
        let ip = testkit::pod_ip(ns, &pod).await?;
        let a = testkit::get(&http, &format!("http://{ip}:8080/healthz")).await?;
        if a.status != 200 {
            bail!("{pod} /healthz answered {}", a.status);
        }
        out.insert(pod, a.version);
    }
    Ok(out)
}

/// `count` requests to `/healthz` through the Service's node port; answers per version.
pub async fn versions_through_service(
    ns: &TestNs,
    count: usize,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let port = testkit::node_port(ns, STS).await?;
    let http = testkit::http();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let key = match testkit::get(&http, &url).await {
            Ok(a) if a.status == 200 => a.version,
            Ok(a) => format!("<{}>", a.status),
            Err(_) => "<error>".into(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    Ok(out)
}
