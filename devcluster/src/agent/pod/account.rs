//! What a pod needs to talk to the API server from inside, as a kubelet gives it: the service
//! account's token, the cluster's CA and the namespace in
//! `/var/run/secrets/kubernetes.io/serviceaccount`, and (for `hostNetwork` pods) the API server's
//! address in `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`.
//!
//! A real cluster injects the files through the ServiceAccount admission plugin (a projected
//! `kube-api-access-*` volume); the devcluster's API server runs without that plugin, so the agent
//! writes the same three files itself: a TokenRequest bound to the pod (one hour), the
//! `kube-root-ca.crt` ConfigMap the controller-manager publishes in every namespace, and the
//! namespace. A pod that sets `automountServiceAccountToken: false`, or that mounts something at
//! that path itself, gets nothing. A pod of a namespace whose `default` account does not exist
//! yet runs without a token, as one would before the account controller made it; a pod naming
//! another account that does not exist waits (`FailedMount`), as admission would refuse it.
//!
//! Where the devcluster differs from a cluster: it never sends traffic to ClusterIPs, so
//! `KUBERNETES_SERVICE_HOST` is the API server's own address on loopback (127.0.0.1), which only a
//! pod in the host's network (`hostNetwork: true`) can reach. Other pods get no such variables.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::PostParams;
use kube::Api;

use crate::layout;

/// Where a container finds its account's files.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap holding the cluster's CA in every namespace.
const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// A bound token's life; a kubelet refreshes it at 80 %, the devcluster does not (Jobs and test
/// pods live far less than this).
const TOKEN_SECONDS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("serviceaccount \"{name}\" not found")]
    NoAccount { name: String },
    #[error("configmap \"{ROOT_CA_CONFIG_MAP}\" has no ca.crt yet (the controller-manager publishes it)")]
    NoRootCa,
    #[error("requesting a token for serviceaccount \"{name}\": {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The account whose token the pod gets, or `None` when it asked for none.
pub fn account_of(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if spec.automount_service_account_token == Some(false) {
        return None;
    }
    let name = spec
        .service_account_name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| spec.service_account.clone().filter(|n| !n.is_empty()))
        .unwrap_or_else(|| "default".to_string());
    Some(name)
}

/// Whether the pod runs in the host's network namespace.
pub fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The variables a container gets to find the API server: only in the host's network, where the
/// API server's loopback address is reachable.
pub fn api_server_env(pod: &Pod) -> BTreeMap<String, String> {
    if !host_network(pod) {
        return BTreeMap::new();
    }
    let port = layout::API_PORT.to_string();
    BTreeMap::from([
        (
            "KUBERNETES_SERVICE_HOST".to_string(),
            "127.0.0.1".to_string(),
        ),
        ("KUBERNETES_SERVICE_PORT".to_string(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".to_string(), port),
    ])
}

/// Writes the token, CA and namespace files under `pod_dir` and returns their directory, or
/// `None` when the pod gets none.
pub async fn prepare(
    client: &kube::Client,
    pod: &Pod,
    pod_dir: &Path,
) -> Result<Option<PathBuf>, AccountError> {
    let Some(name) = account_of(pod) else {
        return Ok(None);
    };
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api = |source| AccountError::Api {
        name: name.clone(),
        source,
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    if accounts.get_opt(&name).await.map_err(api)?.is_none() {
        return if name == "default" {
            Ok(None)
        } else {
            Err(AccountError::NoAccount { name })
        };
    }
    // The API server binds a token to a pod only when the pod names that account; without the
    // admission plugin a pod that names none is not defaulted to `default`, so its token is
    // unbound (it still expires).
    let named = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        == Some(name.as_str());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(TOKEN_SECONDS),
            bound_object_ref: named.then(|| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let token = match accounts
        .create_token_request(&name, &PostParams::default(), &request)
        .await
    {
        Ok(answer) => answer.status.map(|s| s.token).unwrap_or_default(),
        // A pod that named no account never waits for a token it did not ask for.
        Err(e) if !named => {
            tracing::warn!(pod = ?pod.metadata.name, "no service account token: {e}");
            return Ok(None);
        }
        Err(e) => return Err(api(e)),
    };
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let ca = maps
        .get_opt(ROOT_CA_CONFIG_MAP)
        .await
        .map_err(api)?
        .and_then(|m| m.data)
        .and_then(|mut d| d.remove("ca.crt"))
        .ok_or(AccountError::NoRootCa)?;
    let dir = pod_dir.join("serviceaccount");
    for (file, text) in [("token", &token), ("ca.crt", &ca), ("namespace", &ns)] {
        write_file(&dir, file, text)?;
    }
    Ok(Some(dir))
}

fn write_file(dir: &Path, file: &str, text: &str) -> Result<(), AccountError> {
    let path = dir.join(file);
    let err = |source| AccountError::Write {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            spec: Some(spec),
            ..Pod::default()
        }
    }

    #[test]
    fn the_account_is_the_named_one_else_default_unless_the_pod_opts_out() {
        assert_eq!(
            account_of(&pod(PodSpec::default())).as_deref(),
            Some("default")
        );
        let named = PodSpec {
            service_account_name: Some("rollout".into()),
            ..PodSpec::default()
        };
        assert_eq!(account_of(&pod(named)).as_deref(), Some("rollout"));
        let legacy = PodSpec {
            service_account: Some("old".into()),
            ..PodSpec::default()
        };
        assert_eq!(account_of(&pod(legacy)).as_deref(), Some("old"));
        let off = PodSpec {
            service_account_name: Some("rollout".into()),
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        };
        assert_eq!(account_of(&pod(off)), None);
    }

    #[test]
    fn only_host_network_pods_learn_the_api_server_address() {
        assert!(api_server_env(&pod(PodSpec::default())).is_empty());
        let host = PodSpec {
            host_network: Some(true),
            ..PodSpec::default()
        };
        let env = api_server_env(&pod(host));
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "127.0.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], layout::API_PORT.to_string());
    }
}
