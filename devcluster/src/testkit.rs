//! What the end-to-end tests of this workspace share: a client for the running devcluster, a
//! namespace of their own, applying manifests, waiting on objects through watches, and bounded
//! HTTP to Services (127.0.0.1:<nodePort>) and pods (their pod IPs). Used by tests only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Endpoints, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Service,
};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, Condition};
use kube::Client;

use crate::Layout;

/// The repository's root (for manifests and binaries).
/// A host directory that pods see as the host does, for files a test and its pods share (a
/// pod's `/tmp`, `/run` and `/var/log` are its own).
pub fn dir_shared_with_pods() -> PathBuf {
    PathBuf::from("/var/tmp")
}

pub fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The workspace binary `name` built with the running test: beside the test binary's `deps`
/// folder (so wherever `CARGO_TARGET_DIR` puts it), else in the repository's `target/debug`.
pub fn built_binary(name: &str) -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| repo_root().join("target/debug").join(name))
}

/// A client for the running devcluster, or a message saying how to start one.
pub async fn client() -> anyhow::Result<Client> {
    let kc = Layout::from_env().kubeconfig();
    if !kc.exists() {
        bail!("no devcluster is running ({} is missing): run ./scripts/test, or `devcluster up` first", kc.display());
    }
    let client = crate::layout::client(&kc).await?;
    client
        .apiserver_version()
        .await
        .context("the devcluster's API server does not answer; run `devcluster status`")?;
    Ok(client)
}

/// A namespace only this test uses; `cleanup` deletes it (a failed test leaves it for a look).
pub struct TestNs {
    pub client: Client,
    pub name: String,
}

impl TestNs {
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let client = client().await?;
        let name = format!(
            "{prefix}-{}",
            (0..5).map(|_| fastrand::lowercase()).collect::<String>()
        );
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self { client, name })
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates every object of a multi-document YAML file in this namespace.
    pub async fn apply_file(&self, path: &Path) -> anyhow::Result<()> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        self.apply_yaml(&text).await
    }

    pub async fn apply_yaml(&self, text: &str) -> anyhow::Result<()> {
        for doc in serde_yaml_ng::Deserializer::from_str(text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
            if value.is_null() {
                continue;
            }
            self.apply_value(value).await?;
        }
        Ok(())
    }

    /// Creates one object given as JSON (kinds: StatefulSet, Service, Pod, PersistentVolumeClaim).
    pub async fn apply_value(&self, value: serde_json::Value) -> anyhow::Result<()> {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        let pp = PostParams::default();
        match kind.as_str() {
            "StatefulSet" => drop(
                self.api::<StatefulSet>()
                    .create(&pp, &serde_json::from_value(value)?)
                    .await?,
            ),
            "Service" => drop(
                self.api::<Service>()
                    .create(&pp, &serde_json::from_value(value)?)
                    .await?,
            ),
            "Pod" => drop(
                self.api::<Pod>()
                    .create(&pp, &serde_json::from_value(value)?)
                    .await?,
            ),
            "PersistentVolumeClaim" => drop(
                self.api::<PersistentVolumeClaim>()
                    .create(&pp, &serde_json::from_value(value)?)
                    .await?,
            ),
            other => bail!("testkit cannot apply kind {other:?}"),
        }
        Ok(())
    }

    /// The time app as the user deploys it (examples/time-app/k8s/time-app.yaml), optionally
    /// with another replica count.
    pub async fn deploy_time_app(&self, replicas: i32) -> anyhow::Result<()> {
        let path = repo_root().join("examples/time-app/k8s/time-app.yaml");
        let text = std::fs::read_to_string(&path)?;
        let text = text.replace("replicas: 3", &format!("replicas: {replicas}"));
        self.apply_yaml(&text).await
    }

    pub async fn cleanup(self) {
        let _ = Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

/// The objects of the time app's manifest (examples/time-app/k8s/time-app.yaml), as JSON.
pub fn time_app_documents() -> anyhow::Result<Vec<serde_json::Value>> {
    let path = repo_root().join("examples/time-app/k8s/time-app.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// The time app's StatefulSet as a second, independent set: named `name`, its pods labelled
/// `app: <name>` (so a Service can select one set or the other), running `image`, `replicas` of
/// them, each with its own `data` claim (`data-<name>-<ordinal>`).
pub fn time_app_set(name: &str, image: &str, replicas: i32) -> anyhow::Result<serde_json::Value> {
    let mut set = time_app_documents()?
        .into_iter()
        .find(|d| d["kind"] == "StatefulSet")
        .context("the time app's manifest has no StatefulSet")?;
    set["metadata"]["name"] = name.into();
    set["metadata"]["labels"] = serde_json::json!({ "app": name });
    set["spec"]["replicas"] = replicas.into();
    set["spec"]["selector"] = serde_json::json!({ "matchLabels": { "app": name } });
    set["spec"]["template"]["metadata"]["labels"] = serde_json::json!({ "app": name });
    set["spec"]["template"]["spec"]["containers"][0]["image"] = image.into();
    Ok(set)
}

/// A Service of `type_` in front of the pods labelled `app: <app>`, port `http` (80) to the
/// containers' `http` port.
pub fn service_for(name: &str, type_: &str, app: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name },
        "spec": {
            "type": type_,
            "selector": { "app": app },
            "ports": [{ "name": "http", "port": 80, "targetPort": "http" }]
        }
    })
}

/// The host directory behind a bound claim (its PersistentVolume's hostPath).
pub async fn claim_dir(ns: &TestNs, claim: &str) -> anyhow::Result<std::path::PathBuf> {
    let pvc = ns.api::<PersistentVolumeClaim>().get(claim).await?;
    let pv_name = pvc
        .spec
        .and_then(|s| s.volume_name)
        .with_context(|| format!("claim {claim} is not bound"))?;
    let pv = Api::<PersistentVolume>::all(ns.client.clone())
        .get(&pv_name)
        .await?;
    let path = pv.spec.and_then(|s| s.host_path).map(|h| h.path);
    Ok(path
        .with_context(|| format!("volume {pv_name} of claim {claim} has no hostPath"))?
        .into())
}

/// Waits until the object `name` with uid `uid` is gone (deleted, or replaced by a new uid).
pub async fn wait_gone<K>(
    api: Api<K>,
    name: &str,
    uid: &str,
    timeout: Duration,
) -> anyhow::Result<()>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    match tokio::time::timeout(
        timeout,
        await_condition(
            api.clone(),
            name,
            kube::runtime::conditions::is_deleted(uid),
        ),
    )
    .await
    {
        Ok(r) => Ok(r.map(drop)?),
        Err(_) => {
            let now = api.get_opt(name).await.ok().flatten();
            bail!(
                "{name} is still there after {timeout:?}: {}",
                describe(&now)
            )
        }
    }
}

/// Waits for `cond` on the named object, at most `timeout`.
pub async fn wait_for<K>(
    api: Api<K>,
    name: &str,
    timeout: Duration,
    cond: impl Condition<K>,
) -> anyhow::Result<K>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default,
{
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => bail!("{name} does not exist"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => {
            let now = api.get_opt(name).await.ok().flatten();
            bail!(
                "timed out after {timeout:?} waiting on {name}; it is now: {}",
                describe(&now)
            )
        }
    }
}

fn describe<K: serde::Serialize>(obj: &Option<K>) -> String {
    match obj {
        None => "gone".into(),
        Some(o) => {
            let v = serde_json::to_value(o).unwrap_or_default();
            serde_json::to_string(&v["status"]).unwrap_or_default()
        }
    }
}

pub fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn is_pod_ready() -> impl Condition<Pod> {
    |p: Option<&Pod>| p.is_some_and(pod_ready)
}

/// All `replicas` pods of the set exist, are Ready and the controller has seen it.
pub fn is_sts_ready(replicas: i32) -> impl Condition<StatefulSet> {
    move |s: Option<&StatefulSet>| {
        s.and_then(|s| s.status.as_ref().map(|st| (s, st)))
            .is_some_and(|(s, st)| {
                st.observed_generation >= s.metadata.generation
                    && st.replicas == replicas
                    && st.ready_replicas.unwrap_or(0) == replicas
            })
    }
}

pub async fn wait_sts_ready(
    ns: &TestNs,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> anyhow::Result<StatefulSet> {
    wait_for(
        ns.api::<StatefulSet>(),
        name,
        timeout,
        is_sts_ready(replicas),
    )
    .await
}

/// The node port the devcluster's service proxy listens on (127.0.0.1) for a Service's first port.
pub async fn node_port(ns: &TestNs, service: &str) -> anyhow::Result<u16> {
    let svc = ns.api::<Service>().get(service).await?;
    let port = svc
        .spec
        .and_then(|s| s.ports)
        .and_then(|ps| ps.into_iter().next())
        .and_then(|p| p.node_port)
        .with_context(|| format!("service {service} has no node port"))?;
    Ok(port as u16)
}

/// One answer from the app: status, the pod and version it names, the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub pod: String,
    pub version: String,
    pub body: String,
}

/// An HTTP client that opens a new connection per request (so the service proxy balances each one).
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .unwrap_or_default()
}

pub async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Answer> {
    let r = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    answer(r).await
}

/// The app's answer in a response: its status, the pod and version headers, the body.
pub async fn answer(r: reqwest::Response) -> anyhow::Result<Answer> {
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (status, pod, version) = (
        r.status().as_u16(),
        header("x-pod-name"),
        header("x-app-version"),
    );
    let body = r.text().await.unwrap_or_default();
    Ok(Answer {
        status,
        pod,
        version,
        body,
    })
}

/// `count` requests through the Service's node port on 127.0.0.1; answers per pod name
/// (connection errors are counted under "<error>").
pub async fn spread(service_port: u16, path: &str, count: usize) -> BTreeMap<String, usize> {
    let http = http();
    let url = format!("http://127.0.0.1:{service_port}{path}");
    let mut out = BTreeMap::new();
    for _ in 0..count {
        *out.entry(answered_by(&http, &url).await).or_insert(0) += 1;
    }
    out
}

/// Which pod answered a GET of `url`, or `<status>` / `<error>`.
async fn answered_by(http: &reqwest::Client, url: &str) -> String {
    match get(http, url).await {
        Ok(a) if a.status < 500 => a.pod,
        Ok(a) => format!("<{}>", a.status),
        Err(_) => "<error>".into(),
    }
}

/// Like [`spread`], but stops as soon as every pod of `want` has answered, after at most `max`
/// requests: on a busy machine a pod's probe may time out and leave it out for a moment.
pub async fn spread_until(
    service_port: u16,
    path: &str,
    want: &[String],
    max: usize,
) -> BTreeMap<String, usize> {
    let http = http();
    let url = format!("http://127.0.0.1:{service_port}{path}");
    let mut out = BTreeMap::new();
    for _ in 0..max {
        *out.entry(answered_by(&http, &url).await).or_insert(0) += 1;
        if want.iter().all(|w| out.contains_key(w)) {
            break;
        }
    }
    out
}

/// The pod's IP, which the host reaches over the devcluster's bridge.
pub async fn pod_ip(ns: &TestNs, pod: &str) -> anyhow::Result<String> {
    ns.api::<Pod>()
        .get(pod)
        .await?
        .status
        .and_then(|s| s.pod_ip)
        .with_context(|| format!("pod {pod} has no IP"))
}

/// `/visits` of one pod, asked at its pod IP.
pub async fn visits(ns: &TestNs, pod: &str) -> anyhow::Result<serde_json::Value> {
    let ip = pod_ip(ns, pod).await?;
    anyhow::ensure!(
        ip.starts_with("10.244."),
        "pod {pod} has IP {ip}, outside the devcluster's pod network"
    );
    let a = get(&http(), &format!("http://{ip}:8080/visits")).await?;
    anyhow::ensure!(a.status == 200, "/visits on {pod} answered {}", a.status);
    Ok(serde_json::from_str(&a.body)?)
}

/// Ready addresses of a Service's Endpoints.
pub async fn ready_endpoints(ns: &TestNs, service: &str) -> anyhow::Result<Vec<String>> {
    let ep = ns.api::<Endpoints>().get_opt(service).await?;
    Ok(ep
        .and_then(|e| e.subsets)
        .unwrap_or_default()
        .into_iter()
        .flat_map(|s| s.addresses.unwrap_or_default())
        .map(|a| a.ip)
        .collect())
}

/// Waits until the EndpointSlices of `service` (what the service proxy reads; the endpointslice
/// or the mirroring controller writes them a moment after the Endpoints) list exactly `ready` as
/// ready and `not_ready` as not ready, at most `timeout`.
pub async fn wait_slice_sets(
    ns: &TestNs,
    service: &str,
    ready: &[String],
    not_ready: &[String],
    timeout: Duration,
) -> anyhow::Result<()> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let want = (sorted(ready), sorted(not_ready));
    let api = ns.api::<EndpointSlice>();
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
        for e in api
            .list(&lp)
            .await?
            .items
            .into_iter()
            .flat_map(|s| s.endpoints)
        {
            match e.conditions.as_ref().and_then(|c| c.ready) {
                Some(false) => not_ready.extend(e.addresses),
                _ => ready.extend(e.addresses),
            }
        }
        let seen = (sorted(&ready), sorted(&not_ready));
        if seen == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "after {timeout:?} the EndpointSlices of {service} list (ready, not ready) {seen:?}, not {want:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Not-ready addresses of a Service's Endpoints.
pub fn not_ready_addresses(ep: &Endpoints) -> Vec<String> {
    ep.subsets
        .iter()
        .flatten()
        .flat_map(|s| s.not_ready_addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect()
}

/// Ready addresses of a Service's Endpoints.
pub fn ready_addresses(ep: &Endpoints) -> Vec<String> {
    ep.subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .map(|a| a.ip.clone())
        .collect()
}

/// The pod named in a time-app page (`pod: <name>` line of `/`, or `"pod":"<name>"` of `/visits`).
pub fn pod_in_body(body: &str) -> Option<String> {
    if let Some(line) = body.lines().find_map(|l| l.strip_prefix("pod: ")) {
        return Some(line.trim().to_string());
    }
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["pod"].as_str().map(str::to_string)
}

pub async fn pods_with_label(ns: &TestNs, selector: &str) -> anyhow::Result<Vec<Pod>> {
    Ok(ns
        .api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}
