//! Registers the agent's nodes the way a kubelet does, then keeps them alive: every
//! [`HEARTBEAT`] each node's Lease in `kube-node-lease` is renewed and its status (with the Ready
//! condition's heartbeat) is reported again, so the node-lifecycle controller keeps the nodes
//! Ready and untainted. A failed heartbeat is logged and simply tried again at the next tick:
//! the API server may be restarting, or may not have created `kube-node-lease` yet.

pub mod status;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use tracing::{info, warn};

use self::status::{HostFacts, LEASE_NAMESPACE};
use super::AgentConfig;

/// How often a node renews its lease and reports its status (the kubelet's default).
pub const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("reading node {node}")]
    GetNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("registering node {node}")]
    CreateNode {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting the pod CIDR of node {node}")]
    PatchNodeSpec {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("reporting the status of node {node}")]
    PatchNodeStatus {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("encoding the status of node {node}")]
    EncodeStatus {
        node: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("renewing the lease of node {node}")]
    RenewLease {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating the lease of node {node} (namespace {LEASE_NAMESPACE} may not exist yet)")]
    CreateLease {
        node: String,
        #[source]
        source: kube::Error,
    },
}

pub async fn run(client: kube::Client, cfg: Arc<AgentConfig>) -> anyhow::Result<()> {
    let host = read_host_facts();
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let beats = cfg.nodes.iter().map(|name| {
            let cidr = cfg.pod_cidr(name);
            let (nodes, leases, host) = (&nodes, &leases, &host);
            async move {
                if let Err(e) = heartbeat(nodes, leases, name, cidr.as_deref(), host).await {
                    warn!(node = %name, error = &e as &dyn std::error::Error, "node heartbeat failed; retrying at the next tick");
                }
            }
        });
        futures::future::join_all(beats).await;
    }
}

/// One heartbeat of one node: register it if it is missing (someone may have deleted it), report
/// its status, renew its lease.
async fn heartbeat(
    nodes: &Api<Node>,
    leases: &Api<Lease>,
    name: &str,
    pod_cidr: Option<&str>,
    host: &HostFacts,
) -> Result<(), NodeError> {
    let node_err = |source| NodeError::GetNode {
        node: name.to_string(),
        source,
    };
    let existing = match nodes.get_opt(name).await.map_err(node_err)? {
        Some(n) => n,
        None => match nodes
            .create(
                &PostParams::default(),
                &status::node_object(name, pod_cidr, host, Timestamp::now()),
            )
            .await
        {
            Ok(n) => {
                info!(node = %name, pod_cidr = ?pod_cidr, "registered node");
                n
            }
            // Another agent run raced us; what matters is that it exists now.
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                nodes.get(name).await.map_err(node_err)?
            }
            Err(source) => {
                return Err(NodeError::CreateNode {
                    node: name.to_string(),
                    source,
                })
            }
        },
    };
    if let Some(patch) = status::pod_cidr_patch(&existing, pod_cidr) {
        nodes
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| NodeError::PatchNodeSpec {
                node: name.to_string(),
                source,
            })?;
    }

    let now = Timestamp::now();
    let st = status::node_status(name, host, existing.status.as_ref(), now);
    let patch = status::status_patch(&st).map_err(|source| NodeError::EncodeStatus {
        node: name.to_string(),
        source,
    })?;
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| NodeError::PatchNodeStatus {
            node: name.to_string(),
            source,
        })?;

    renew_lease(leases, name, existing.metadata.uid.as_deref(), now).await
}

async fn renew_lease(
    leases: &Api<Lease>,
    name: &str,
    node_uid: Option<&str>,
    now: Timestamp,
) -> Result<(), NodeError> {
    let patch =
        status::lease_renewal_patch(name, now).map_err(|source| NodeError::EncodeStatus {
            node: name.to_string(),
            source,
        })?;
    match leases
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            match leases
                .create(
                    &PostParams::default(),
                    &status::lease_object(name, node_uid, now),
                )
                .await
            {
                Ok(_) => {
                    info!(node = %name, "created node lease");
                    Ok(())
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
                Err(source) => Err(NodeError::CreateLease {
                    node: name.to_string(),
                    source,
                }),
            }
        }
        Err(source) => Err(NodeError::RenewLease {
            node: name.to_string(),
            source,
        }),
    }
}

/// What the host says about itself; anything unreadable is reported empty rather than failing
/// the node, as these fields are informational.
fn read_host_facts() -> HostFacts {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    HostFacts {
        os_image: status::os_image_from_os_release(&read("/etc/os-release"))
            .unwrap_or_else(|| "Linux".into()),
        kernel_version: read("/proc/sys/kernel/osrelease"),
        machine_id: read("/etc/machine-id"),
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        system_uuid: read("/sys/class/dmi/id/product_uuid"),
        internal_ip: crate::layout::BRIDGE_IP.to_string(),
    }
}
