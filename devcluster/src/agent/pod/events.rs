//! Pod events (core/v1 Event) as the kubelet records them: Pulled, Failed, BackOff, Created,
//! Started, Killing, Unhealthy, FailedMount. Best-effort: a failed event write is logged, never
//! fails the pod.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::Api;

use super::status::time;

/// The pod an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

/// The Event object, kept apart from sending for tests.
pub fn event(
    pod: &PodRef,
    container: Option<&str>,
    kind: Kind,
    reason: &str,
    message: &str,
    now: std::time::SystemTime,
) -> Event {
    let stamp = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{}.{stamp:x}{:04x}", pod.name, fastrand::u16(..))),
            namespace: Some(pod.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            field_path: container.map(|c| format!("spec.containers{{{c}}}")),
            ..Default::default()
        },
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        type_: Some(match kind {
            Kind::Normal => "Normal".into(),
            Kind::Warning => "Warning".into(),
        }),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(pod.node.clone()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(pod.node.clone()),
        first_timestamp: Some(time(now)),
        last_timestamp: Some(time(now)),
        event_time: None::<MicroTime>,
        count: Some(1),
        ..Default::default()
    }
}

/// Records an event in the background.
pub fn record(
    client: &kube::Client,
    pod: &PodRef,
    container: Option<&str>,
    kind: Kind,
    reason: &str,
    message: &str,
) {
    let ev = event(
        pod,
        container,
        kind,
        reason,
        message,
        std::time::SystemTime::now(),
    );
    let api: Api<Event> = Api::namespaced(client.clone(), &pod.namespace);
    let pod_name = pod.name.clone();
    tokio::spawn(async move {
        if let Err(e) = api.create(&PostParams::default(), &ev).await {
            tracing::debug!(pod = %pod_name, error = %e, "could not record a pod event");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_point_at_the_pod_and_container() {
        let pod = PodRef {
            namespace: "default".into(),
            name: "web-0".into(),
            uid: "u".into(),
            node: "node-1".into(),
        };
        let e = event(
            &pod,
            Some("app"),
            Kind::Warning,
            "Unhealthy",
            "Readiness probe failed: x",
            std::time::UNIX_EPOCH,
        );
        assert_eq!(
            e.involved_object.field_path.as_deref(),
            Some("spec.containers{app}")
        );
        assert_eq!(e.involved_object.uid.as_deref(), Some("u"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.source.and_then(|s| s.host).as_deref(), Some("node-1"));
        assert!(e
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("web-0.")));
    }
}
