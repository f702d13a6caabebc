//! The node agent: one process that plays the kubelet for every devcluster node (node objects and
//! heartbeats, pods as local processes, probes, status) plus kube-proxy (Services on 127.0.0.1)
//! and a storage provisioner (a PV per pending PVC, clones by copy).

use std::path::PathBuf;
use std::sync::Arc;

use crate::Layout;

pub mod nodes;
pub mod pods;
pub mod probe;
pub mod proxy;
pub mod runtime;
pub mod storage;
pub mod volumes;

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub layout: Layout,
    /// Nodes this agent plays, in order; node `i` (1-based) owns pod CIDR `10.244.i.0/24`.
    pub nodes: Vec<String>,
    /// image -> command mapping, re-read at every container start so edits apply at once.
    pub runtime_file: PathBuf,
    /// Directory of the workspace's built binaries (`{bin}` in the runtime file).
    pub bin_dir: PathBuf,
    /// The agent's own credentials (a kubeconfig `up` writes for it).
    pub kubeconfig: PathBuf,
}

impl AgentConfig {
    /// The pod CIDR of a node this agent plays.
    pub fn pod_cidr(&self, node: &str) -> Option<String> {
        self.nodes
            .iter()
            .position(|n| n == node)
            .map(|i| crate::layout::node_pod_cidr(i + 1))
    }
}

pub async fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let client = crate::layout::client(&cfg.kubeconfig).await?;
    let cfg = Arc::new(cfg);
    tokio::try_join!(
        nodes::run(client.clone(), cfg.clone()),
        pods::run(client.clone(), cfg.clone()),
        proxy::run(client.clone(), cfg.clone()),
        storage::run(client.clone(), cfg.clone()),
    )?;
    Ok(())
}
