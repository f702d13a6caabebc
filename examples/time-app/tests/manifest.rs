//! Checks `k8s/time-app.yaml` against what the app and the end-to-end tests rely on: the
//! StatefulSet shape from the seeds, the probes on `/`, the per-pod volume at `DATA_DIR`, and
//! Services that select the pods by the same label.

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, Probe, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

const MANIFEST: &str = include_str!("../k8s/time-app.yaml");

struct Objects {
    statefulsets: Vec<StatefulSet>,
    services: Vec<Service>,
}

fn objects() -> Objects {
    let mut objects = Objects {
        statefulsets: Vec::new(),
        services: Vec::new(),
    };
    for document in serde_yaml_ng::Deserializer::from_str(MANIFEST) {
        let value = serde_yaml_ng::Value::deserialize(document).expect("valid YAML");
        match value["kind"].as_str() {
            Some("StatefulSet") => objects
                .statefulsets
                .push(serde_yaml_ng::from_value(value).expect("a StatefulSet")),
            Some("Service") => objects
                .services
                .push(serde_yaml_ng::from_value(value).expect("a Service")),
            other => panic!("unexpected object kind {other:?}"),
        }
    }
    objects
}

fn service<'a>(objects: &'a Objects, name: &str) -> &'a Service {
    objects
        .services
        .iter()
        .find(|svc| svc.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("Service {name}"))
}

fn app_container(sts: &StatefulSet) -> &Container {
    let pod = sts
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref());
    let containers = &pod.expect("pod spec").containers;
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].name, "app");
    &containers[0]
}

fn assert_http_get_root(probe: Option<&Probe>, period: i32, failures: i32) {
    let probe = probe.expect("probe");
    let get = probe.http_get.as_ref().expect("httpGet probe");
    assert_eq!(get.path.as_deref(), Some("/"));
    assert_eq!(get.port, IntOrString::String("http".into()));
    assert_eq!(probe.period_seconds, Some(period));
    assert_eq!(probe.failure_threshold, Some(failures));
}

#[test]
fn statefulset_matches_the_seeds_and_the_app() {
    let objects = objects();
    assert_eq!(objects.statefulsets.len(), 1);
    let sts = &objects.statefulsets[0];
    assert_eq!(sts.metadata.name.as_deref(), Some("time-app"));
    let spec = sts.spec.as_ref().expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
    assert_eq!(spec.service_name.as_deref(), Some("time-app-pods"));
    let selector = spec.selector.match_labels.as_ref().expect("matchLabels");
    assert_eq!(selector.get("app").map(String::as_str), Some("time-app"));
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    assert_eq!(
        labels.and_then(|l| l.get("app")).map(String::as_str),
        Some("time-app")
    );
    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(pod.termination_grace_period_seconds, Some(5));

    let app = app_container(sts);
    assert_eq!(app.image.as_deref(), Some("time-app:v1"));
    let ports = app.ports.as_ref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].container_port, 8080);
    assert_eq!(ports[0].name.as_deref(), Some("http"));
    assert_http_get_root(app.readiness_probe.as_ref(), 2, 2);
    assert_http_get_root(app.liveness_probe.as_ref(), 5, 3);

    let env = app.env.as_ref().expect("env");
    let field_path = |name: &str| {
        env.iter()
            .find(|var| var.name == name)
            .and_then(|var| var.value_from.as_ref())
            .and_then(|from| from.field_ref.as_ref())
            .map(|field| field.field_path.as_str())
    };
    assert_eq!(field_path("POD_NAME"), Some("metadata.name"));
    assert_eq!(field_path("POD_NAMESPACE"), Some("metadata.namespace"));
    assert_eq!(field_path("POD_IP"), Some("status.podIP"));
    let data_dir = env.iter().find(|var| var.name == "DATA_DIR");
    assert_eq!(data_dir.and_then(|var| var.value.as_deref()), Some("/data"));

    let mounts = app.volume_mounts.as_ref().expect("volumeMounts");
    assert!(mounts
        .iter()
        .any(|mount| mount.name == "data" && mount.mount_path == "/data"));
    let claims = spec.volume_claim_templates.as_ref().expect("claims");
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
    let claim = claims[0].spec.as_ref().expect("claim spec");
    assert_eq!(
        claim.access_modes.as_deref(),
        Some(&["ReadWriteOnce".to_string()][..])
    );
    assert_eq!(claim.storage_class_name.as_deref(), Some("standard"));
    let storage = claim
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"));
    assert_eq!(storage.map(|q| q.0.as_str()), Some("16Mi"));
}

#[test]
fn services_select_the_pods_on_the_http_port() {
    let objects = objects();
    assert_eq!(objects.services.len(), 2);

    let live = service(&objects, "time-app");
    let spec = live.spec.as_ref().expect("spec");
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports = spec.ports.as_ref().expect("ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].port, 80);
    assert_eq!(
        ports[0].target_port,
        Some(IntOrString::String("http".into()))
    );

    let headless = service(&objects, "time-app-pods");
    let headless_spec = headless.spec.as_ref().expect("spec");
    assert_eq!(headless_spec.cluster_ip.as_deref(), Some("None"));

    for svc in [live, headless] {
        let selector = svc.spec.as_ref().and_then(|s| s.selector.as_ref());
        assert_eq!(
            selector.and_then(|s| s.get("app")).map(String::as_str),
            Some("time-app"),
            "{:?}",
            svc.metadata.name
        );
    }
}
