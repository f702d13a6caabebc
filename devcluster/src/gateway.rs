//! The devcluster's Gateway API implementation: Traefik, unmodified, built from its published Go
//! module by `scripts/provision-gateway.sh`, running on the host as a tracked process beside the
//! control plane. `up` installs the Gateway API CRDs (standard channel, the release Traefik is
//! built against), a GatewayClass and one shared Gateway for every namespace, and Traefik's own
//! ServiceAccount with just the rights its Gateway provider needs; Traefik then serves the
//! Gateway's HTTP listener on 127.0.0.1 and routes to pod IPs from EndpointSlices (never to a
//! ClusterIP).
//!
//! Traefik supports weighted `backendRefs`, header and path matches and writes the routes'
//! `Accepted`/`ResolvedRefs` conditions; it has no `RequestMirror` filter.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use serde_json::{json, Value};

use crate::controlplane;
use crate::layout::{self, Layout};
use crate::procs::{self, ProcError};

/// The process name: `pids/gateway.pid`, `logs/gateway.log`.
pub const PROCESS: &str = "gateway";
/// The GatewayClass Traefik implements, and the controller name it claims classes by.
pub const GATEWAY_CLASS: &str = "devcluster";
pub const CONTROLLER_NAME: &str = "traefik.io/gateway-controller";
/// The shared Gateway every namespace's HTTPRoutes may attach to: `devcluster-gateway/devcluster`.
pub const NAMESPACE: &str = "devcluster-gateway";
pub const GATEWAY: &str = "devcluster";
/// The Gateway's one listener: HTTP on [`layout::GATEWAY_HTTP_PORT`].
pub const LISTENER: &str = "http";
/// The variable `devcluster env` sets to [`url`], for tests and scripts.
pub const URL_ENV: &str = "ROLLOUT_GATEWAY_URL";
const SERVICE_ACCOUNT: &str = "traefik";
const TOKEN_SECRET: &str = "traefik-token";
const CLUSTER_ROLE: &str = "devcluster-gateway-traefik";
const FIELD_MANAGER: &str = "devcluster";
const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// The longest Traefik may take, once started, to program the Gateway and listen.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest the CRDs may take to be established, and the token controller to issue a token.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("could not run {script}")]
    RunProvision {
        script: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("provisioning the gateway failed ({script}); see the messages above")]
    Provision { script: PathBuf },
    #[error("{script} printed no `traefik=` and `crds=` lines; it printed: {stdout}")]
    ProvisionOutput { script: PathBuf, stdout: String },
    #[error("could not read the Gateway API CRDs in {path}")]
    ReadCrds {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a CustomResourceDefinition manifest: {reason}")]
    BadCrd { path: PathBuf, reason: String },
    #[error("the devcluster does not know how to apply a {kind}")]
    UnknownKind { kind: String },
    #[error("could not apply {kind} {name}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the CRD {name} was not established within {waited:?}")]
    CrdNotEstablished { name: String, waited: Duration },
    #[error("the token controller issued no token into {namespace}/{secret} within {waited:?} (is kube-controller-manager running? see `devcluster status`)")]
    NoToken {
        namespace: String,
        secret: String,
        waited: Duration,
    },
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not make Traefik's kubeconfig")]
    Kubeconfig(#[source] controlplane::ControlPlaneError),
    #[error(transparent)]
    Start(#[from] ProcError),
    #[error("Traefik exited during start; its log is {log}:\n{tail}")]
    Exited { log: PathBuf, tail: String },
    #[error("Traefik did not program the Gateway {NAMESPACE}/{GATEWAY} and listen on {url} within {waited:?} (Gateway status: {status}); its log is {log}:\n{tail}")]
    NotServing {
        url: String,
        waited: Duration,
        status: String,
        log: PathBuf,
        tail: String,
    },
}

/// Where the gateway's URL points: the Gateway's HTTP listener on loopback.
pub fn url() -> String {
    format!("http://127.0.0.1:{}", layout::GATEWAY_HTTP_PORT)
}

/// What `provision-gateway.sh` made: the Traefik binary and the directory of CRD manifests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioned {
    pub traefik: PathBuf,
    pub crds: PathBuf,
}

/// Runs `scripts/provision-gateway.sh` (builds Traefik on first use, then finds it cached).
pub fn provision() -> Result<Provisioned, GatewayError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision-gateway.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| GatewayError::RunProvision {
            script: script.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(GatewayError::Provision { script });
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse_provisioned(&stdout).ok_or_else(|| GatewayError::ProvisionOutput {
        script,
        stdout: stdout.into_owned(),
    })
}

/// The `traefik=` and `crds=` lines of the provisioning script's output.
fn parse_provisioned(stdout: &str) -> Option<Provisioned> {
    let field = |key: &str| {
        stdout
            .lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .next_back()
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    Some(Provisioned {
        traefik: field("traefik=")?,
        crds: field("crds=")?,
    })
}

/// How to reach a Gateway API kind of the release Traefik implements.
fn gateway_api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GATEWAY_API_GROUP, "v1", kind),
        plural,
    )
}

pub fn gateway_resource() -> ApiResource {
    gateway_api_resource("Gateway", "gateways")
}

/// The objects the gateway needs besides the CRDs, in the order they are applied: its
/// namespace, Traefik's ServiceAccount, a token for it, the rights its Gateway provider uses
/// (reading routes, Services, EndpointSlices, Secrets for TLS, ConfigMaps for CA bundles, and
/// writing the status of what it implements), the GatewayClass and the shared Gateway.
pub fn objects() -> Vec<Value> {
    let read = json!(["get", "list", "watch"]);
    vec![
        json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE}
        }),
        json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
        }),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": TOKEN_SECRET, "namespace": NAMESPACE,
                "annotations": {"kubernetes.io/service-account.name": SERVICE_ACCOUNT}
            },
            "type": "kubernetes.io/service-account-token"
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": CLUSTER_ROLE},
            "rules": [
                {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": [""], "resources": ["services", "secrets", "configmaps"], "verbs": read},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
                {"apiGroups": [GATEWAY_API_GROUP], "resources": [
                    "gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants",
                    "backendtlspolicies"
                ], "verbs": read},
                {"apiGroups": [GATEWAY_API_GROUP], "resources": [
                    "gatewayclasses/status", "gateways/status", "httproutes/status",
                    "grpcroutes/status", "backendtlspolicies/status"
                ], "verbs": ["update"]}
            ]
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": CLUSTER_ROLE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}]
        }),
        json!({
            "apiVersion": format!("{GATEWAY_API_GROUP}/v1"), "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {
                "controllerName": CONTROLLER_NAME,
                "description": "Traefik on the devcluster's host (devcluster up)"
            }
        }),
        json!({
            "apiVersion": format!("{GATEWAY_API_GROUP}/v1"), "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [{
                    "name": LISTENER,
                    "protocol": "HTTP",
                    "port": layout::GATEWAY_HTTP_PORT,
                    "allowedRoutes": {"namespaces": {"from": "All"}}
                }]
            }
        }),
    ]
}

/// Traefik's static configuration: one entrypoint on loopback at the listener's port, the
/// Kubernetes Gateway provider with endpoints from EndpointSlices (never a ClusterIP), and no
/// calls home. Its credentials are not here: Traefik's provider prefers the kubeconfig that
/// `KUBECONFIG` names over any token in this file, so [`process_env`] always names its own.
pub fn static_config() -> String {
    format!(
        "# Written by `devcluster up`; Traefik reads it once at start.\n\
         global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\n\
         log:\n  level: INFO\n  noColor: true\n\
         entryPoints:\n  {LISTENER}:\n    address: \"127.0.0.1:{port}\"\n\
         providers:\n  kubernetesGateway:\n    nativeLBByDefault: false\n    \
         statusAddress:\n      ip: \"127.0.0.1\"\n",
        port = layout::GATEWAY_HTTP_PORT,
    )
}

/// The environment Traefik starts with: its own kubeconfig (its ServiceAccount's token, never
/// the admin's from the caller's `KUBECONFIG`), and no in-cluster address, which it would
/// otherwise prefer.
fn process_env(kubeconfig: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("KUBERNETES_SERVICE_HOST", String::new()),
        ("KUBERNETES_SERVICE_PORT", String::new()),
    ]
}

/// The kind, name and namespace of a manifest, and how to reach its kind.
fn resource_of(obj: &Value) -> Option<(ApiResource, String, Option<String>)> {
    let kind = obj["kind"].as_str()?;
    let (group, version) = match obj["apiVersion"].as_str()?.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", obj["apiVersion"].as_str()?),
    };
    let plural = match kind {
        "Namespace" => "namespaces",
        "ServiceAccount" => "serviceaccounts",
        "Secret" => "secrets",
        "ClusterRole" => "clusterroles",
        "ClusterRoleBinding" => "clusterrolebindings",
        "GatewayClass" => "gatewayclasses",
        "Gateway" => "gateways",
        _ => return None,
    };
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
    let name = obj["metadata"]["name"].as_str()?.to_string();
    let namespace = obj["metadata"]["namespace"].as_str().map(str::to_string);
    Some((ar, name, namespace))
}

/// Server-side apply of one of [`objects`]: creates it, or puts back what someone changed.
async fn apply(client: &kube::Client, obj: &Value) -> Result<(), GatewayError> {
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    let Some((ar, name, namespace)) = resource_of(obj) else {
        return Err(GatewayError::UnknownKind { kind });
    };
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| GatewayError::Apply { kind, name, source })?;
    Ok(())
}

/// The CRD manifests in `dir` (one or more YAML documents per file), sorted by file name.
fn read_crds(dir: &Path) -> Result<Vec<Value>, GatewayError> {
    let read_err = |source| GatewayError::ReadCrds {
        path: dir.into(),
        source,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = fs::read_to_string(&path).map_err(|source| GatewayError::ReadCrds {
            path: path.clone(),
            source,
        })?;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value: Value =
                serde::Deserialize::deserialize(doc).map_err(|e| GatewayError::BadCrd {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            if value.is_null() {
                continue;
            }
            if value["kind"] != "CustomResourceDefinition" || !value["metadata"]["name"].is_string()
            {
                return Err(GatewayError::BadCrd {
                    path,
                    reason: format!("kind {} with no name", value["kind"]),
                });
            }
            out.push(value);
        }
    }
    if out.is_empty() {
        return Err(GatewayError::BadCrd {
            path: dir.into(),
            reason: "no CRD manifests in it".into(),
        });
    }
    Ok(out)
}

/// Applies the CRDs (server-side, so an installed copy of the same release is adopted as is)
/// and waits until the API server serves every one.
async fn install_crds(client: &kube::Client, dir: &Path) -> Result<(), GatewayError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = read_crds(dir)?;
    for crd in &crds {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(crd),
        )
        .await
        .map_err(|source| GatewayError::Apply {
            kind: "CustomResourceDefinition".into(),
            name: name.clone(),
            source,
        })?;
    }
    for crd in &crds {
        let name = crd["metadata"]["name"].as_str().unwrap_or_default();
        let established = tokio::time::timeout(
            INSTALL_TIMEOUT,
            await_condition(api.clone(), name, conditions::is_crd_established()),
        )
        .await;
        if !matches!(established, Ok(Ok(_))) {
            return Err(GatewayError::CrdNotEstablished {
                name: name.into(),
                waited: INSTALL_TIMEOUT,
            });
        }
    }
    Ok(())
}

/// The ServiceAccount token the token controller put into the token Secret.
async fn wait_token(client: &kube::Client) -> Result<String, GatewayError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let has_token = |s: Option<&Secret>| {
        s.and_then(|s| s.data.as_ref())
            .and_then(|d| d.get("token"))
            .is_some_and(|t| !t.0.is_empty())
    };
    let no_token = || GatewayError::NoToken {
        namespace: NAMESPACE.into(),
        secret: TOKEN_SECRET.into(),
        waited: INSTALL_TIMEOUT,
    };
    let secret = tokio::time::timeout(
        INSTALL_TIMEOUT,
        await_condition(secrets, TOKEN_SECRET, has_token),
    )
    .await
    .map_err(|_| no_token())?
    .map_err(|_| no_token())?;
    secret
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove("token"))
        .and_then(|t| String::from_utf8(t.0).ok())
        .ok_or_else(no_token)
}

/// Writes `contents` to `path` with mode 0600, unless it already holds exactly that.
fn write_private(path: &Path, contents: &str) -> Result<(), GatewayError> {
    if fs::read_to_string(path).is_ok_and(|now| now == contents) {
        return Ok(());
    }
    let write_err = |source| GatewayError::Write {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents).map_err(write_err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)
}

/// Is the recorded gateway process alive?
pub fn running(layout: &Layout) -> Option<i32> {
    procs::recorded(&layout.pids_dir())
        .into_iter()
        .find(|p| p.name == PROCESS && procs::alive(p.pid))
        .map(|p| p.pid)
}

/// What [`ensure`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    /// Traefik was running already; only the objects were applied again.
    AlreadyRunning { pid: i32 },
    /// Traefik was started and serves the Gateway.
    Started { pid: i32, took: Duration },
}

/// Installs (or puts back) the CRDs and the gateway's objects, then starts Traefik unless it
/// runs, and waits until it has programmed the Gateway and listens. A running Traefik is left
/// alone.
pub async fn ensure(
    layout: &Layout,
    client: &kube::Client,
    provisioned: &Provisioned,
) -> Result<Ensured, GatewayError> {
    install_crds(client, &provisioned.crds).await?;
    for obj in objects() {
        apply(client, &obj).await?;
    }
    if let Some(pid) = running(layout) {
        return Ok(Ensured::AlreadyRunning { pid });
    }
    let token = wait_token(client).await?;
    let dir = layout.gateway_dir();
    fs::create_dir_all(&dir).map_err(|source| GatewayError::Write {
        path: dir.clone(),
        source,
    })?;
    let kubeconfig = dir.join("kubeconfig");
    let user = format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
    let kc = controlplane::kubeconfig(layout, &user, &token).map_err(GatewayError::Kubeconfig)?;
    write_private(&kubeconfig, &kc)?;
    let config = dir.join("traefik.yaml");
    write_private(&config, &static_config())?;
    let t0 = Instant::now();
    let started = procs::spawn(
        &layout.pids_dir(),
        &layout.logs_dir(),
        PROCESS,
        &provisioned.traefik,
        &[format!("--configFile={}", config.display())],
        &process_env(&kubeconfig),
    )?;
    wait_serving(layout, client, started.pid).await?;
    Ok(Ensured::Started {
        pid: started.pid,
        took: t0.elapsed(),
    })
}

/// The Gateway's `Programmed` condition is True for its current generation.
pub fn is_programmed(gateway: &DynamicObject) -> bool {
    let generation = gateway.metadata.generation;
    gateway.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| {
            c["type"] == "Programmed"
                && c["status"] == "True"
                && c["observedGeneration"].as_i64() == generation
        })
}

/// One line on the Gateway's conditions, for messages and `devcluster status`.
pub fn describe_conditions(gateway: Option<&DynamicObject>) -> String {
    let Some(gateway) = gateway else {
        return "no Gateway".into();
    };
    let list: Vec<String> = gateway.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{}={} ({})",
                c["type"].as_str().unwrap_or("?"),
                c["status"].as_str().unwrap_or("?"),
                c["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    if list.is_empty() {
        "no conditions yet".into()
    } else {
        list.join(", ")
    }
}

/// Waits until Traefik has programmed the Gateway and accepts connections on the listener,
/// failing early with its log if it exits.
async fn wait_serving(
    layout: &Layout,
    client: &kube::Client,
    pid: i32,
) -> Result<(), GatewayError> {
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &gateway_resource());
    let deadline = Instant::now() + START_TIMEOUT;
    let programmed = tokio::time::timeout(
        START_TIMEOUT,
        await_condition(gateways.clone(), GATEWAY, |g: Option<&DynamicObject>| {
            g.is_some_and(is_programmed)
        }),
    );
    let exited = async {
        while procs::alive(pid) {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let not_serving = |status: String| {
        let (log, tail) = controlplane::log_tail(layout, PROCESS, 20);
        GatewayError::NotServing {
            url: url(),
            waited: START_TIMEOUT,
            status,
            log,
            tail,
        }
    };
    tokio::select! {
        r = programmed => {
            if !matches!(r, Ok(Ok(_))) {
                let now = gateways.get_opt(GATEWAY).await.ok().flatten();
                return Err(not_serving(describe_conditions(now.as_ref())));
            }
        }
        _ = exited => {
            let (log, tail) = controlplane::log_tail(layout, PROCESS, 20);
            return Err(GatewayError::Exited { log, tail });
        }
    }
    // The status may be an earlier Traefik's; the new one serves once its entrypoint listens.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], layout::GATEWAY_HTTP_PORT));
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if !procs::alive(pid) {
            let (log, tail) = controlplane::log_tail(layout, PROCESS, 20);
            return Err(GatewayError::Exited { log, tail });
        }
        if Instant::now() > deadline {
            return Err(not_serving("Programmed, but nothing listens".into()));
        }
        // A listening socket has no watch to wait on; a short bounded poll it is.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The Gateway as Traefik reports it, for `devcluster status`.
pub async fn status_line(client: &kube::Client) -> String {
    let gateways: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), NAMESPACE, &gateway_resource());
    match gateways.get_opt(GATEWAY).await {
        Ok(g) => format!(
            "gateway Traefik at {} (GatewayClass {GATEWAY_CLASS}, Gateway {NAMESPACE}/{GATEWAY}, listener {LISTENER}): {}",
            url(),
            describe_conditions(g.as_ref())
        ),
        Err(e) => format!("gateway: cannot read Gateway {NAMESPACE}/{GATEWAY}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_output_names_the_binary_and_the_crds() {
        let cases = [
            (
                "traefik=/c/traefik-v3.6.12/bin/traefik\ncrds=/c/gateway-api-v1.4.0/crds/standard\n",
                Some(("/c/traefik-v3.6.12/bin/traefik", "/c/gateway-api-v1.4.0/crds/standard")),
            ),
            ("traefik=/t\n", None),
            ("crds=/c\n", None),
            ("traefik=\ncrds=/c\n", None),
            ("", None),
            ("noise\ncrds=/c\ntraefik=/t\n", Some(("/t", "/c"))),
        ];
        for (out, want) in cases {
            let want = want.map(|(t, c)| Provisioned {
                traefik: t.into(),
                crds: c.into(),
            });
            assert_eq!(parse_provisioned(out), want, "{out:?}");
        }
    }

    #[test]
    fn traefik_listens_on_loopback_at_the_listeners_port_and_never_calls_home() {
        let v: Value = serde_yaml_ng::from_str(&static_config()).unwrap();
        assert_eq!(
            v["entryPoints"][LISTENER]["address"],
            format!("127.0.0.1:{}", layout::GATEWAY_HTTP_PORT)
        );
        assert_eq!(v["global"]["checkNewVersion"], false);
        assert_eq!(v["global"]["sendAnonymousUsage"], false);
        let p = &v["providers"]["kubernetesGateway"];
        // Pod IPs from EndpointSlices: the devcluster never sends traffic to a ClusterIP.
        assert_eq!(p["nativeLBByDefault"], false);
        let providers: Vec<&String> = v["providers"].as_object().unwrap().keys().collect();
        assert_eq!(providers, ["kubernetesGateway"]);
    }

    #[test]
    fn traefik_talks_to_the_api_server_only_with_its_own_kubeconfig() {
        let env = process_env(Path::new("/r/gateway/kubeconfig"));
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("KUBECONFIG"), Some("/r/gateway/kubeconfig"));
        // Set empty, so an inherited in-cluster address cannot win over the kubeconfig.
        assert_eq!(get("KUBERNETES_SERVICE_HOST"), Some(""));
    }

    #[test]
    fn the_gateway_listens_where_traefik_does_for_routes_of_every_namespace() {
        let objs = objects();
        let gw = objs.iter().find(|o| o["kind"] == "Gateway").unwrap();
        assert_eq!(gw["metadata"]["namespace"], NAMESPACE);
        assert_eq!(gw["spec"]["gatewayClassName"], GATEWAY_CLASS);
        let l = &gw["spec"]["listeners"][0];
        assert_eq!(l["name"], LISTENER);
        assert_eq!(l["port"], layout::GATEWAY_HTTP_PORT);
        assert_eq!(l["allowedRoutes"]["namespaces"]["from"], "All");
        let class = objs.iter().find(|o| o["kind"] == "GatewayClass").unwrap();
        assert_eq!(class["spec"]["controllerName"], CONTROLLER_NAME);
        // Every object has a known resource, and namespaced ones sit in the gateway's namespace.
        for o in &objs {
            let (_, _, ns) = resource_of(o).unwrap_or_else(|| panic!("no resource for {o}"));
            if let Some(ns) = ns {
                assert_eq!(ns, NAMESPACE, "{o}");
            }
        }
    }

    #[test]
    fn traefik_may_write_only_status() {
        let objs = objects();
        let role = objs.iter().find(|o| o["kind"] == "ClusterRole").unwrap();
        for rule in role["rules"].as_array().unwrap() {
            let verbs: Vec<&str> = rule["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let status_only = rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r.as_str().unwrap().ends_with("/status"));
            for v in verbs {
                let reads = ["get", "list", "watch"].contains(&v);
                assert!(reads || (v == "update" && status_only), "{rule}");
            }
        }
    }

    fn gateway(generation: i64, conditions: Value) -> DynamicObject {
        let mut g = DynamicObject::new(GATEWAY, &gateway_resource());
        g.metadata.generation = Some(generation);
        g.data = json!({"status": {"conditions": conditions}});
        g
    }

    #[test]
    fn programmed_means_true_for_the_current_generation() {
        let cases = [
            (
                json!([{"type": "Programmed", "status": "True", "observedGeneration": 2}]),
                true,
            ),
            (
                json!([{"type": "Programmed", "status": "True", "observedGeneration": 1}]),
                false,
            ),
            (
                json!([{"type": "Programmed", "status": "False", "observedGeneration": 2}]),
                false,
            ),
            (
                json!([{"type": "Accepted", "status": "True", "observedGeneration": 2}]),
                false,
            ),
            (json!([]), false),
            (Value::Null, false),
        ];
        for (conds, want) in cases {
            assert_eq!(is_programmed(&gateway(2, conds.clone())), want, "{conds}");
        }
    }

    #[test]
    fn crd_manifests_are_read_from_every_yaml_file() {
        let dir = std::env::temp_dir().join(format!("gateway-crds-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let crd = |n: &str| {
            format!("---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {n}\n")
        };
        fs::write(dir.join("b.yaml"), crd("b.example")).unwrap();
        fs::write(dir.join("a.yaml"), crd("a.example")).unwrap();
        fs::write(dir.join("notes.txt"), "not a manifest").unwrap();
        let names: Vec<Value> = read_crds(&dir)
            .unwrap()
            .into_iter()
            .map(|c| c["metadata"]["name"].clone())
            .collect();
        assert_eq!(names, [json!("a.example"), json!("b.example")]);
        fs::write(
            dir.join("c.yaml"),
            "kind: ConfigMap\nmetadata:\n  name: x\n",
        )
        .unwrap();
        assert!(matches!(read_crds(&dir), Err(GatewayError::BadCrd { .. })));
        fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(
            read_crds(&dir),
            Err(GatewayError::ReadCrds { .. })
        ));
    }
}
