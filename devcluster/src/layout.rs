//! Where a devcluster keeps its files. Everything it makes on disk lives under one root
//! (`ROLLOUT_DEVCLUSTER_DIR`, default `/var/tmp/rollout-devcluster`), so `down` can remove it all.

use std::path::{Path, PathBuf};

/// Network names the devcluster owns; `down` removes anything carrying these prefixes.
pub const BRIDGE: &str = "rdc0";
/// The host side of the bridge: gateway for pods, and the nodes' InternalIP.
pub const BRIDGE_IP: &str = "10.244.0.1";
pub const POD_NETWORK_PREFIX_LEN: u8 = 16;
pub const NETNS_PREFIX: &str = "rdc-";
pub const VETH_PREFIX: &str = "rdcv";
pub const API_PORT: u16 = 6443;
pub const ETCD_CLIENT_PORT: u16 = 23790;
pub const ETCD_PEER_PORT: u16 = 23800;
/// The controller-manager's and the scheduler's secure ports (their defaults), on loopback.
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
pub const SCHEDULER_PORT: u16 = 10259;
/// The devcluster's gateway (Traefik) serves HTTP here, on 127.0.0.1; it is also the port of
/// the shared Gateway's listener, which Traefik matches to its entrypoint by number.
pub const GATEWAY_HTTP_PORT: u16 = 18080;
/// Prometheus, on loopback (`devcluster env` prints its URL).
pub const PROMETHEUS_PORT: u16 = 19090;
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const STORAGE_CLASS: &str = "standard";
pub const PROVISIONER_NAME: &str = "devcluster.rollout.dev/hostpath";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn from_env() -> Self {
        let root = std::env::var_os("ROLLOUT_DEVCLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/rollout-devcluster"));
        Self { root }
    }

    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Admin kubeconfig, written by `up`.
    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }
    pub fn etcd_dir(&self) -> PathBuf {
        self.root.join("etcd")
    }
    /// One `<name>.pid` file per long-lived process started by `up`.
    pub fn pids_dir(&self) -> PathBuf {
        self.root.join("pids")
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }
    /// Per-pod scratch: `pods/<namespace>_<name>_<uid>/` (container logs, emptyDirs, config files).
    pub fn pods_dir(&self) -> PathBuf {
        self.root.join("pods")
    }
    pub fn pod_dir(&self, namespace: &str, name: &str, uid: &str) -> PathBuf {
        self.pods_dir().join(format!("{namespace}_{name}_{uid}"))
    }
    /// Persistent volumes made by the provisioner: `volumes/<pv-name>/`. They outlive pods.
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// Mount points the agent had to create on the host because a pod's `mountPath` did not
    /// exist; `down` removes them again if they are empty.
    pub fn created_mountpoints_file(&self) -> PathBuf {
        self.root.join("created-mountpoints")
    }
    /// The gateway's static configuration and its ServiceAccount token (mode 0600).
    pub fn gateway_dir(&self) -> PathBuf {
        self.root.join("gateway")
    }
    /// The file recording how `up` was called (node count, binaries), read by `status`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("cluster.json")
    }
}

/// The image -> command file that ships with the repository (users edit it, or point
/// `ROLLOUT_DEVCLUSTER_RUNTIME` at their own).
pub fn default_runtime_file() -> PathBuf {
    std::env::var_os("ROLLOUT_DEVCLUSTER_RUNTIME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime.yaml"))
}

/// Node `i` (1-based) is named `node-i` and allocates pod IPs from `10.244.i.0/24`.
pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}
pub fn node_pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// A client for the cluster described by `kubeconfig`.
pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading kubeconfig {}", kubeconfig.display()))?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", kubeconfig.display()))?;
    Ok(kube::Client::try_from(cfg)?)
}
