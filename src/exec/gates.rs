//! The executor's side of health gates: which pods a gate step checks and on which port, and a
//! seam ([`GateRunner`]) over the probing in `crate::gate::probe`, so unit tests of the run loop
//! decide verdicts without a network.

use std::future::Future;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use crate::cluster::Cluster;
use crate::gate::probe::{self, GateContext, PodTarget, TargetError};
use crate::gate::Verdict;
use crate::model::gate::{GateSpec, PortRef};
use crate::strategy::predicates::pod_ordinal;

/// Runs the configured gates on the pods a step changed.
pub trait GateRunner: Clone + Send + Sync + 'static {
    fn run(
        &self,
        spec: &GateSpec,
        targets: &[PodTarget],
        context: &GateContext,
    ) -> impl Future<Output = Verdict> + Send;

    /// The HTTP gate through a Service (by the API server's service proxy), on `port` (a port
    /// name or number of the Service).
    fn run_service(
        &self,
        spec: &GateSpec,
        namespace: &str,
        service: &str,
        port: &str,
    ) -> impl Future<Output = Verdict> + Send;
}

/// The real gates: HTTP probes, minimum Ready, command and webhook (`crate::gate::probe`),
/// reaching the API server through the same seam as the executor.
#[derive(Clone)]
pub struct ProbeGates<C> {
    cluster: C,
}

impl<C: Cluster> ProbeGates<C> {
    pub fn new(cluster: C) -> Self {
        ProbeGates { cluster }
    }
}

impl<C: Cluster> GateRunner for ProbeGates<C> {
    async fn run(&self, spec: &GateSpec, targets: &[PodTarget], context: &GateContext) -> Verdict {
        probe::run_gates_for(&self.cluster, spec, targets, context).await
    }

    /// The Service is in the cluster's namespace (the one the executor works in).
    async fn run_service(
        &self,
        spec: &GateSpec,
        _namespace: &str,
        service: &str,
        port: &str,
    ) -> Verdict {
        probe::run_service_gate(&self.cluster, &spec.http, service, port).await
    }
}

/// Why a gate cannot run with these settings on this template (checked before any write).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatePortError {
    #[error("the HTTP gate has no port to probe: the pod template of StatefulSet {statefulset} declares no container port; give one with --probe-port, or turn the HTTP gate off with --no-probe")]
    NoPort { statefulset: String },
    #[error("the HTTP gate port `{name}` is not a port name of the pod template of StatefulSet {statefulset} ({known}); use --probe-port with a number or one of those names")]
    UnknownName {
        statefulset: String,
        name: String,
        known: String,
    },
}

/// The port reference the HTTP gate uses for pods of `spec`: the configured one, else the first
/// port of the changed container (else of any container).
fn port_for(pod: &Pod, gates: &GateSpec, changed_container: Option<&str>) -> Option<PortRef> {
    gates
        .http
        .port
        .clone()
        .or_else(|| probe::default_port(pod, changed_container))
}

/// Checks that the HTTP gate can find its port on pods made from `template`.
pub fn check_gate_port(
    statefulset: &str,
    template: &PodSpec,
    gates: &GateSpec,
    changed_container: Option<&str>,
) -> Result<(), GatePortError> {
    if !gates.http.enabled {
        return Ok(());
    }
    let pod = Pod {
        spec: Some(template.clone()),
        ..Pod::default()
    };
    let port = port_for(&pod, gates, changed_container).ok_or_else(|| GatePortError::NoPort {
        statefulset: statefulset.to_string(),
    })?;
    probe::resolve_port(statefulset, Some(template), &port)
        .map(|_| ())
        .map_err(|e| match e {
            TargetError::ResolvePortName { name, known, .. } => GatePortError::UnknownName {
                statefulset: statefulset.to_string(),
                name,
                known,
            },
            _ => GatePortError::NoPort {
                statefulset: statefulset.to_string(),
            },
        })
}

/// The gate targets for `ordinals` among `pods`. A pod that is missing, or whose port cannot be
/// resolved, is reported instead (the step cannot be judged on it).
pub fn gate_targets(
    statefulset: &str,
    pods: &[Pod],
    ordinals: &[u32],
    gates: &GateSpec,
    changed_container: Option<&str>,
) -> Result<Vec<PodTarget>, String> {
    let mut targets = Vec::with_capacity(ordinals.len());
    for ordinal in ordinals {
        let pod = pods
            .iter()
            .find(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .and_then(|n| pod_ordinal(statefulset, n))
                    == Some(*ordinal)
            })
            .ok_or_else(|| format!("pod {statefulset}-{ordinal} does not exist"))?;
        let port = if gates.http.enabled {
            port_for(pod, gates, changed_container).ok_or_else(|| {
                format!("pod {statefulset}-{ordinal} declares no container port to probe")
            })?
        } else {
            // Only the HTTP gate uses the port; the others get whatever the pod declares.
            probe::default_port(pod, changed_container).unwrap_or(PortRef::Number(80))
        };
        targets.push(PodTarget::from_pod(pod, &port).map_err(|e| e.to_string())?);
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn spec(ports: &[(&str, &str, i32)]) -> PodSpec {
        let mut containers: Vec<Container> = Vec::new();
        for (container, name, number) in ports {
            let port = ContainerPort {
                name: (!name.is_empty()).then(|| name.to_string()),
                container_port: *number,
                ..Default::default()
            };
            match containers.iter_mut().find(|c| c.name == *container) {
                Some(c) => c.ports.get_or_insert_with(Vec::new).push(port),
                None => containers.push(Container {
                    name: container.to_string(),
                    ports: Some(vec![port]),
                    ..Default::default()
                }),
            }
        }
        PodSpec {
            containers,
            ..Default::default()
        }
    }

    fn pod(name: &str, spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: Some(PodStatus {
                pod_ip: Some("10.244.1.5".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn gate_ports_are_checked_against_the_template() {
        let two = spec(&[("sidecar", "metrics", 9090), ("app", "http", 8080)]);
        let mut gates = GateSpec::default();
        assert_eq!(check_gate_port("web", &two, &gates, Some("app")), Ok(()));
        gates.http.port = Some(PortRef::Name("grpc".into()));
        let err = check_gate_port("web", &two, &gates, Some("app"));
        assert!(
            matches!(&err, Err(GatePortError::UnknownName { known, .. }) if known.contains("metrics, http")),
            "{err:?}"
        );
        let none = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        gates.http.port = None;
        assert!(matches!(
            check_gate_port("web", &none, &gates, None),
            Err(GatePortError::NoPort { .. })
        ));
        gates.http.port = Some(PortRef::Number(8080));
        assert_eq!(check_gate_port("web", &none, &gates, None), Ok(()));
        gates.http.enabled = false;
        gates.http.port = None;
        assert_eq!(check_gate_port("web", &none, &gates, None), Ok(()));
    }

    #[test]
    fn targets_take_the_changed_containers_port() {
        let s = spec(&[("sidecar", "metrics", 9090), ("app", "http", 8080)]);
        let pods = vec![pod("web-0", s.clone()), pod("web-2", s.clone())];
        let gates = GateSpec::default();
        let targets = gate_targets("web", &pods, &[2, 0], &gates, Some("app"))
            .unwrap_or_else(|e| panic!("{e}"));
        let got: Vec<(String, u16)> = targets.iter().map(|t| (t.pod.clone(), t.port)).collect();
        assert_eq!(
            got,
            [("web-2".to_string(), 8080), ("web-0".to_string(), 8080)]
        );
        assert_eq!(targets[0].ip.as_deref(), Some("10.244.1.5"));
        let err = gate_targets("web", &pods, &[1], &gates, Some("app"));
        assert_eq!(err, Err("pod web-1 does not exist".to_string()));
    }
}
