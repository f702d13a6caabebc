//! What a node says about itself, as plain values: the Node object to register, the status a
//! kubelet would report, and the heartbeat Lease. No I/O here, so every field the control plane
//! depends on (conditions, capacity, addresses, lease timing) is checked by unit tests.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, NodeSystemInfo,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

/// The Kubernetes release the node claims to run: the control plane's (the devcluster runs one).
pub const KUBELET_VERSION: &str = crate::controlplane::KUBERNETES_VERSIONS[0];
pub const CONTAINER_RUNTIME_VERSION: &str = "devcluster://0.1";
/// Namespace the API server creates for node heartbeats.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// Same as the kubelet's default: the node-lifecycle controller's grace period is 40 s too.
pub const LEASE_DURATION_SECONDS: i32 = 40;

/// Facts about the host that every node this agent plays shares (they all run on one machine).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostFacts {
    pub os_image: String,
    pub kernel_version: String,
    pub machine_id: String,
    pub boot_id: String,
    pub system_uuid: String,
    /// The node's InternalIP: the host side of the pod bridge.
    pub internal_ip: String,
}

/// `PRETTY_NAME` from an os-release file, which is what the kubelet reports as `osImage`.
pub fn os_image_from_os_release(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// The node as first registered: labels the scheduler and users select on, and its pod CIDR.
/// The status goes along so the node is Ready from its first moment (the kubelet does the same).
pub fn node_object(name: &str, pod_cidr: Option<&str>, host: &HostFacts, now: Timestamp) -> Node {
    let labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        // The beta labels are still what some v1.20-era manifests select on.
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: pod_cidr.map(str::to_string),
            pod_cidrs: pod_cidr.map(|c| vec![c.to_string()]),
            ..Default::default()
        }),
        status: Some(node_status(name, host, None, now)),
    }
}

/// The spec fields to add to an existing node that lacks its pod CIDR (`podCIDR` can be set
/// once, never changed), or `None` when nothing needs patching.
pub fn pod_cidr_patch(existing: &Node, pod_cidr: Option<&str>) -> Option<serde_json::Value> {
    let want = pod_cidr?;
    let has = existing.spec.as_ref().and_then(|s| s.pod_cidr.as_deref());
    match has {
        None | Some("") => Some(serde_json::json!({
            "spec": { "podCIDR": want, "podCIDRs": [want] }
        })),
        Some(_) => None,
    }
}

/// The full status a kubelet reports for a healthy node. Conditions keep their
/// `lastTransitionTime` when their status did not change, so `kubectl describe node` shows how
/// long the node has been Ready rather than the last heartbeat.
pub fn node_status(
    name: &str,
    host: &HostFacts,
    previous: Option<&NodeStatus>,
    now: Timestamp,
) -> NodeStatus {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity("4".into())),
        ("memory".to_string(), Quantity("8Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
        ("ephemeral-storage".to_string(), Quantity("20Gi".into())),
    ]);
    let pressure = |type_: &str, reason: &str, message: &str| {
        condition(previous, type_, "False", reason, message, now)
    };
    let conditions = vec![
        pressure(
            "MemoryPressure",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        pressure(
            "DiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        pressure(
            "PIDPressure",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        condition(
            previous,
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
            now,
        ),
    ];
    NodeStatus {
        capacity: Some(resources.clone()),
        allocatable: Some(resources),
        conditions: Some(conditions),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: host.internal_ip.clone(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.to_string(),
            },
        ]),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            operating_system: "linux".into(),
            os_image: host.os_image.clone(),
            kernel_version: host.kernel_version.clone(),
            machine_id: host.machine_id.clone(),
            boot_id: host.boot_id.clone(),
            system_uuid: host.system_uuid.clone(),
            kubelet_version: KUBELET_VERSION.into(),
            // Deprecated since 1.31; kubelets leave it empty.
            kube_proxy_version: String::new(),
            container_runtime_version: CONTAINER_RUNTIME_VERSION.into(),
            swap: None,
        }),
        ..Default::default()
    }
}

/// The JSON merge patch that reports `status` on the status subresource. The agent owns the
/// whole of conditions/addresses/capacity, so replacing those lists is what it wants.
pub fn status_patch(status: &NodeStatus) -> Result<serde_json::Value, serde_json::Error> {
    Ok(serde_json::json!({ "status": serde_json::to_value(status)? }))
}

fn condition(
    previous: Option<&NodeStatus>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> NodeCondition {
    let earlier = previous
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .filter(|c| c.status == status)
        .and_then(|c| c.last_transition_time.clone());
    NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(earlier.unwrap_or(Time(now))),
    }
}

/// The node's heartbeat Lease as first created. It is owned by the Node, so deleting the node
/// lets the garbage collector remove the lease, as with a real kubelet.
pub fn lease_object(node: &str, node_uid: Option<&str>, now: Timestamp) -> Lease {
    let owner = node_uid.map(|uid| {
        vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: node.to_string(),
            uid: uid.to_string(),
            ..Default::default()
        }]
    });
    Lease {
        metadata: ObjectMeta {
            name: Some(node.to_string()),
            namespace: Some(LEASE_NAMESPACE.into()),
            owner_references: owner,
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// The merge patch that renews an existing lease: only the fields a holder owns.
pub fn lease_renewal_patch(
    node: &str,
    now: Timestamp,
) -> Result<serde_json::Value, serde_json::Error> {
    let spec = LeaseSpec {
        holder_identity: Some(node.to_string()),
        lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
        renew_time: Some(MicroTime(now)),
        ..Default::default()
    };
    Ok(serde_json::json!({ "spec": serde_json::to_value(spec)? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn host() -> HostFacts {
        HostFacts {
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel_version: "6.1.0".into(),
            machine_id: "m".into(),
            boot_id: "b".into(),
            system_uuid: "u".into(),
            internal_ip: "10.244.0.1".into(),
        }
    }

    fn cond<'a>(s: &'a NodeStatus, t: &str) -> &'a NodeCondition {
        s.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == t)
            .unwrap()
    }

    #[test]
    fn os_image_is_the_pretty_name() {
        let cases = [
            (
                "quoted",
                "ID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
                Some("Debian GNU/Linux 12 (bookworm)"),
            ),
            ("bare", "PRETTY_NAME=Alpine\n", Some("Alpine")),
            ("missing", "ID=debian\n", None),
            ("empty", "PRETTY_NAME=\"\"\n", None),
        ];
        for (what, text, want) in cases {
            assert_eq!(os_image_from_os_release(text).as_deref(), want, "{what}");
        }
    }

    #[test]
    fn node_object_carries_labels_cidr_and_ready_status() {
        let now = ts("2024-01-01T00:00:00Z");
        let n = node_object("node-2", Some("10.244.2.0/24"), &host(), now);
        let labels = n.metadata.labels.as_ref().unwrap();
        for (k, v) in [
            ("kubernetes.io/hostname", "node-2"),
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ] {
            assert_eq!(labels.get(k).map(String::as_str), Some(v), "label {k}");
        }
        let spec = n.spec.as_ref().unwrap();
        assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.2.0/24"));
        assert_eq!(
            spec.pod_cidrs.as_deref(),
            Some(&["10.244.2.0/24".to_string()][..])
        );
        assert!(
            spec.taints.is_none(),
            "a registering node carries no taints of its own"
        );
        assert_eq!(cond(n.status.as_ref().unwrap(), "Ready").status, "True");
    }

    #[test]
    fn status_reports_capacity_addresses_and_node_info() {
        let s = node_status("node-1", &host(), None, ts("2024-01-01T00:00:00Z"));
        for res in [&s.capacity, &s.allocatable] {
            let res = res.as_ref().unwrap();
            for (k, v) in [
                ("cpu", "4"),
                ("memory", "8Gi"),
                ("pods", "110"),
                ("ephemeral-storage", "20Gi"),
            ] {
                assert_eq!(res.get(k).map(|q| q.0.as_str()), Some(v), "resource {k}");
            }
        }
        let addrs: Vec<_> = s
            .addresses
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| (a.type_.as_str(), a.address.as_str()))
            .collect();
        assert_eq!(
            addrs,
            vec![("InternalIP", "10.244.0.1"), ("Hostname", "node-1")]
        );
        let info = s.node_info.as_ref().unwrap();
        assert_eq!(
            info.kubelet_version,
            crate::controlplane::KUBERNETES_VERSIONS[0]
        );
        assert_eq!(info.container_runtime_version, "devcluster://0.1");
        assert_eq!(
            (info.operating_system.as_str(), info.architecture.as_str()),
            ("linux", "amd64")
        );
        assert_eq!(info.os_image, "Debian GNU/Linux 12 (bookworm)");
    }

    #[test]
    fn conditions_are_healthy() {
        let s = node_status("node-1", &host(), None, ts("2024-01-01T00:00:00Z"));
        for (t, status, reason) in [
            ("Ready", "True", "KubeletReady"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ] {
            let c = cond(&s, t);
            assert_eq!(
                (c.status.as_str(), c.reason.as_deref()),
                (status, Some(reason)),
                "condition {t}"
            );
        }
    }

    #[test]
    fn transition_time_kept_only_while_status_unchanged() {
        let t0 = ts("2024-01-01T00:00:00Z");
        let t1 = ts("2024-01-01T00:00:10Z");
        let ready_since_t0 = node_status("node-1", &host(), None, t0);
        // The node-lifecycle controller marks a silent node Unknown; coming back is a transition.
        let mut unknown = ready_since_t0.clone();
        for c in unknown.conditions.as_mut().unwrap() {
            c.status = "Unknown".into();
        }
        let cases: [(&str, Option<&NodeStatus>, Timestamp); 3] = [
            ("first report", None, t1),
            ("heartbeat while Ready", Some(&ready_since_t0), t0),
            ("back from Unknown", Some(&unknown), t1),
        ];
        for (what, previous, want) in cases {
            let s = node_status("node-1", &host(), previous, t1);
            let ready = cond(&s, "Ready");
            assert_eq!(ready.last_transition_time, Some(Time(want)), "{what}");
            assert_eq!(
                ready.last_heartbeat_time,
                Some(Time(t1)),
                "{what}: heartbeat is always now"
            );
        }
    }

    #[test]
    fn status_patch_wraps_status_and_omits_unset_fields() {
        let s = node_status("node-1", &host(), None, ts("2024-01-01T00:00:00Z"));
        let p = status_patch(&s).unwrap();
        assert_eq!(p["status"]["conditions"][3]["type"], "Ready");
        assert_eq!(
            p["status"]["conditions"][3]["lastHeartbeatTime"],
            "2024-01-01T00:00:00Z"
        );
        assert!(
            p["status"].get("runtimeHandlers").is_none(),
            "fields the agent does not set are not sent"
        );
        assert!(p["status"]["nodeInfo"].get("swap").is_none());
    }

    #[test]
    fn pod_cidr_patch_only_fills_a_missing_cidr() {
        let with = |cidr: Option<&str>| Node {
            spec: Some(NodeSpec {
                pod_cidr: cidr.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            ("missing", with(None), Some("10.244.1.0/24"), true),
            ("empty", with(Some("")), Some("10.244.1.0/24"), true),
            (
                "already set",
                with(Some("10.244.1.0/24")),
                Some("10.244.1.0/24"),
                false,
            ),
            (
                "set differently: immutable, leave it",
                with(Some("10.244.9.0/24")),
                Some("10.244.1.0/24"),
                false,
            ),
            ("no cidr for this node", with(None), None, false),
        ];
        for (what, node, want, patched) in cases {
            let p = pod_cidr_patch(&node, want);
            assert_eq!(p.is_some(), patched, "{what}");
            if let Some(p) = p {
                assert_eq!(p["spec"]["podCIDR"], "10.244.1.0/24", "{what}");
            }
        }
    }

    #[test]
    fn lease_objects() {
        let now = ts("2024-01-01T00:00:00.123456Z");
        let cases = [
            ("with owner", Some("uid-1"), 1),
            ("node uid unknown", None, 0),
        ];
        for (what, uid, owners) in cases {
            let l = lease_object("node-1", uid, now);
            assert_eq!(
                l.metadata.namespace.as_deref(),
                Some("kube-node-lease"),
                "{what}"
            );
            assert_eq!(l.metadata.name.as_deref(), Some("node-1"), "{what}");
            assert_eq!(
                l.metadata.owner_references.as_ref().map_or(0, Vec::len),
                owners,
                "{what}"
            );
            let spec = l.spec.as_ref().unwrap();
            assert_eq!(spec.holder_identity.as_deref(), Some("node-1"));
            assert_eq!(spec.lease_duration_seconds, Some(40));
            assert_eq!(spec.renew_time, Some(MicroTime(now)));
        }
        let p = lease_renewal_patch("node-1", now).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"spec": {
                "holderIdentity": "node-1",
                "leaseDurationSeconds": 40,
                "renewTime": "2024-01-01T00:00:00.123456Z"
            }})
        );
    }
}
