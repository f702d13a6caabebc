//! The devcluster's Prometheus: Debian's `prometheus` (installed by `scripts/provision.sh`), run
//! on the host at 127.0.0.1:19090 as a tracked process like the control plane. Debian builds it
//! without Kubernetes service discovery, so `devcluster prometheus-sd` ([`discover`], tracked
//! too) watches the pods with a read-only identity of its own (a ServiceAccount allowed to get,
//! list and watch pods, nothing else) and keeps a `file_sd` targets file of the pods that opt in
//! with the usual annotations: `prometheus.io/scrape: "true"`, `prometheus.io/port`,
//! `prometheus.io/path`.
//! Every series keeps the pod's `namespace`, `pod` and `controller_revision_hash` (the pod label
//! the StatefulSet controller sets), so a metric gate can tell a new revision from stable.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};

use crate::controlplane;
use crate::layout::{self, Layout};
use crate::procs;

/// The name of the process (its pid file and log) and of its identity in the cluster.
pub const NAME: &str = "prometheus";
/// The process that keeps Prometheus's targets file from a watch of the pods.
pub const SD_NAME: &str = "prometheus-sd";
const IDENTITY: &str = "devcluster-prometheus";
const IDENTITY_NAMESPACE: &str = "kube-system";
/// How often targets are scraped and rules evaluated: short, so gates see a release within
/// seconds.
pub const SCRAPE_INTERVAL: &str = "2s";

/// `http://127.0.0.1:19090`.
pub fn url() -> String {
    format!("http://127.0.0.1:{}", layout::PROMETHEUS_PORT)
}

fn dir(layout: &Layout) -> PathBuf {
    layout.root.join("prometheus")
}

/// The Prometheus binary: `ROLLOUT_PROMETHEUS_BIN`, else `prometheus` on PATH.
fn binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ROLLOUT_PROMETHEUS_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
        .context("Prometheus is not installed: `bash devcluster/scripts/provision.sh` installs Debian's `prometheus` package (or set ROLLOUT_PROMETHEUS_BIN to a prometheus binary)")
}

/// The scrape configuration: the targets file that `devcluster prometheus-sd` keeps from its
/// watch of the pods. (Debian's Prometheus is built without Kubernetes service discovery, so the
/// discovery is this crate's: the same watch, the same read-only identity, the same labels.)
pub fn config(targets: &Path) -> String {
    format!(
        r#"# Written by `devcluster up`; rewritten at each start.
global:
  scrape_interval: {SCRAPE_INTERVAL}
  scrape_timeout: {SCRAPE_INTERVAL}
  evaluation_interval: {SCRAPE_INTERVAL}
scrape_configs:
  - job_name: pods
    file_sd_configs:
      - files: [{targets}]
        refresh_interval: 5s
"#,
        targets = targets.display()
    )
}

/// One file_sd target group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The scrape targets among `pods`: those annotated `prometheus.io/scrape: "true"` with a pod
/// IP and a port (`prometheus.io/port`, else their first declared container port), labelled with
/// namespace, pod and `controller_revision_hash`, and the path of `prometheus.io/path`. Pure.
pub fn targets(pods: &[Pod]) -> Vec<TargetGroup> {
    let mut out = Vec::new();
    for pod in pods {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        if annotations.get("prometheus.io/scrape").map(String::as_str) != Some("true") {
            continue;
        }
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let declared = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find_map(|c| c.ports.as_ref()?.first()))
            .map(|p| p.container_port.to_string());
        let port = annotations
            .get("prometheus.io/port")
            .filter(|p| p.parse::<u16>().is_ok())
            .cloned()
            .or(declared);
        let (Some(ip), Some(port)) = (ip.filter(|i| !i.is_empty()), port) else {
            continue;
        };
        let mut labels = std::collections::BTreeMap::new();
        let meta = &pod.metadata;
        labels.insert(
            "namespace".to_string(),
            meta.namespace.clone().unwrap_or_default(),
        );
        labels.insert("pod".to_string(), meta.name.clone().unwrap_or_default());
        if let Some(rev) = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("controller-revision-hash"))
        {
            labels.insert("controller_revision_hash".to_string(), rev.clone());
        }
        if let Some(path) = annotations
            .get("prometheus.io/path")
            .filter(|p| p.starts_with('/'))
        {
            labels.insert("__metrics_path__".to_string(), path.clone());
        }
        out.push(TargetGroup {
            targets: vec![format!("{ip}:{port}")],
            labels,
        });
    }
    out.sort_by(|a, b| a.targets.cmp(&b.targets));
    out
}

/// `devcluster prometheus-sd`: watches every pod as the identity of `kubeconfig` and keeps
/// `out` (a file_sd targets file) in line, rewritten atomically at each change.
pub async fn discover(kubeconfig: &Path, out: &Path) -> anyhow::Result<()> {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let client = layout::client(kubeconfig).await?;
    let api: Api<Pod> = Api::all(client);
    let (store, writer) = reflector::store::<Pod>();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer));
    let mut last = String::new();
    while let Some(event) = events.next().await {
        if let Err(e) = event {
            tracing::warn!(error = %e, "pod watch hiccup");
            continue;
        }
        let pods: Vec<Pod> = store.state().iter().map(|p| (**p).clone()).collect();
        let text = serde_json::to_string_pretty(&targets(&pods))?;
        if text == last {
            continue;
        }
        let tmp = out.with_extension("json.tmp");
        fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
        last = text;
    }
    bail!("the pod watch ended")
}

/// Starts Prometheus unless it runs already; returns whether it started it. Its identity in the
/// cluster is made (or found) first.
pub async fn ensure(layout: &Layout, client: &kube::Client) -> anyhow::Result<bool> {
    let recorded = procs::recorded(&layout.pids_dir());
    let alive = |name: &str| {
        recorded
            .iter()
            .any(|p| p.name == name && procs::alive(p.pid))
    };
    if alive(NAME) && alive(SD_NAME) {
        return Ok(false);
    }
    let bin = binary()?;
    let dir = dir(layout);
    fs::create_dir_all(dir.join("data")).with_context(|| format!("creating {}", dir.display()))?;
    let token = identity(client)
        .await
        .context("making Prometheus's read-only identity (ServiceAccount devcluster-prometheus in kube-system)")?;
    let kubeconfig = dir.join("kubeconfig");
    fs::write(
        &kubeconfig,
        controlplane::kubeconfig(layout, IDENTITY, &token)?,
    )
    .with_context(|| format!("writing {}", kubeconfig.display()))?;
    let targets_file = dir.join("targets.json");
    if !targets_file.exists() {
        fs::write(&targets_file, "[]")
            .with_context(|| format!("writing {}", targets_file.display()))?;
    }
    let sd_running = procs::recorded(&layout.pids_dir())
        .iter()
        .any(|p| p.name == SD_NAME && procs::alive(p.pid));
    if !sd_running {
        let me = std::env::current_exe().context("finding the devcluster binary")?;
        procs::spawn(
            &layout.pids_dir(),
            &layout.logs_dir(),
            SD_NAME,
            &me,
            &[
                "prometheus-sd".to_string(),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--out={}", targets_file.display()),
            ],
            &[(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )],
        )?;
    }
    let config_file = dir.join("prometheus.yml");
    fs::write(&config_file, config(&targets_file))
        .with_context(|| format!("writing {}", config_file.display()))?;
    if alive(NAME) {
        return Ok(true);
    }
    let args = vec![
        format!("--config.file={}", config_file.display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        "--storage.tsdb.retention.time=6h".to_string(),
        format!("--web.listen-address=127.0.0.1:{}", layout::PROMETHEUS_PORT),
    ];
    let started = procs::spawn(
        &layout.pids_dir(),
        &layout.logs_dir(),
        NAME,
        &bin,
        &args,
        &[],
    )?;
    wait_ready(layout, started.pid).await?;
    Ok(true)
}

/// Waits until Prometheus answers `/-/ready`, failing early (naming its log) if it exits.
async fn wait_ready(layout: &Layout, pid: i32) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()?;
    let ready = format!("{}/-/ready", url());
    let log = layout.logs_dir().join(format!("{NAME}.log"));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(60) {
        if !procs::alive(pid) {
            bail!("Prometheus exited at its start; see {}", log.display());
        }
        if http
            .get(&ready)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "Prometheus did not become ready at {} within 60s; see {}",
        url(),
        log.display()
    )
}

/// The ServiceAccount, its ClusterRole (get, list and watch pods) and binding, and a token
/// Secret the controller-manager fills; returns the token.
async fn identity(client: &kube::Client) -> anyhow::Result<String> {
    let meta = |namespace: Option<&str>| ObjectMeta {
        name: Some(IDENTITY.to_string()),
        namespace: namespace.map(str::to_string),
        ..ObjectMeta::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), IDENTITY_NAMESPACE);
    create_if_missing(
        &accounts,
        &ServiceAccount {
            metadata: meta(Some(IDENTITY_NAMESPACE)),
            ..ServiceAccount::default()
        },
    )
    .await?;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    create_if_missing(
        &roles,
        &ClusterRole {
            metadata: meta(None),
            rules: Some(vec![PolicyRule {
                api_groups: Some(vec![String::new()]),
                resources: Some(vec!["pods".into()]),
                verbs: vec!["get".into(), "list".into(), "watch".into()],
                ..PolicyRule::default()
            }]),
            ..ClusterRole::default()
        },
    )
    .await?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    create_if_missing(
        &bindings,
        &ClusterRoleBinding {
            metadata: meta(None),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: IDENTITY.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: IDENTITY.into(),
                namespace: Some(IDENTITY_NAMESPACE.into()),
                ..Subject::default()
            }]),
        },
    )
    .await?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), IDENTITY_NAMESPACE);
    let mut secret_meta = meta(Some(IDENTITY_NAMESPACE));
    secret_meta.annotations = Some(
        [(
            "kubernetes.io/service-account.name".to_string(),
            IDENTITY.to_string(),
        )]
        .into(),
    );
    create_if_missing(
        &secrets,
        &Secret {
            metadata: secret_meta,
            type_: Some("kubernetes.io/service-account-token".into()),
            ..Secret::default()
        },
    )
    .await?;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        let secret = secrets.get(IDENTITY).await?;
        if let Some(token) = secret.data.as_ref().and_then(|d| d.get("token")) {
            if let Ok(text) = String::from_utf8(token.0.clone()) {
                if !text.is_empty() {
                    return Ok(text);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the controller-manager did not fill the token Secret {IDENTITY_NAMESPACE}/{IDENTITY} within 30s")
}

async fn create_if_missing<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotated_pods_become_targets_with_their_revision() {
        let pod = |name: &str, scrape: Option<&str>, ip: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {
                    "name": name, "namespace": "ns",
                    "labels": {"controller-revision-hash": "web-abc"},
                    "annotations": scrape.map(|s| serde_json::json!({
                        "prometheus.io/scrape": s,
                        "prometheus.io/path": "/metrics"
                    })).unwrap_or(serde_json::json!({}))
                },
                "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 8080}]}]},
                "status": {"podIP": ip}
            }))
            .unwrap_or_default()
        };
        let groups = targets(&[
            pod("web-0", Some("true"), Some("10.244.1.2")),
            pod("web-1", None, Some("10.244.1.3")),
            pod("web-2", Some("false"), Some("10.244.1.4")),
            pod("web-3", Some("true"), None),
        ]);
        assert_eq!(groups.len(), 1, "{groups:?}");
        assert_eq!(groups[0].targets, ["10.244.1.2:8080"]);
        let labels: Vec<(&str, &str)> = groups[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("__metrics_path__", "/metrics"),
                ("controller_revision_hash", "web-abc"),
                ("namespace", "ns"),
                ("pod", "web-0")
            ]
        );
        assert!(config(Path::new("/x/targets.json")).contains("files: [/x/targets.json]"));
    }
}
