//! Where container environment variables and volume files come from besides the pod spec: the
//! downward API (the pod's own fields) and the keys of config maps and secrets.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;

use crate::layout::BRIDGE_IP;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("the downward API field {path:?} is not supported by the devcluster")]
    UnsupportedField { path: String },
    #[error("could not read {kind} {namespace}/{name}")]
    GetObject {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// A pod's field by its downward-API path, as `fieldRef` gives it to env vars and volume files.
pub fn field_ref(pod: &Pod, path: &str, pod_ip: Option<Ipv4Addr>) -> Result<String, SourceError> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let map_entry = |map: Option<&BTreeMap<String, String>>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = map_entry(meta.labels.as_ref(), "metadata.labels['") {
        return Ok(v);
    }
    if let Some(v) = map_entry(meta.annotations.as_ref(), "metadata.annotations['") {
        return Ok(v);
    }
    let all = |map: Option<&BTreeMap<String, String>>| {
        map.into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        // Whole maps are only valid in volume files: one `key="value"` line each.
        "metadata.labels" => all(meta.labels.as_ref()),
        "metadata.annotations" => all(meta.annotations.as_ref()),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| {
                s.service_account_name
                    .clone()
                    .or_else(|| s.service_account.clone())
            })
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => BRIDGE_IP.to_string(),
        _ => {
            return Err(SourceError::UnsupportedField {
                path: path.to_string(),
            })
        }
    })
}

pub type KeyData = BTreeMap<String, Vec<u8>>;

pub fn config_map_data(cm: &ConfigMap) -> KeyData {
    let mut out: KeyData = cm
        .binary_data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    out.extend(
        cm.data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    out
}

pub fn secret_data(s: &Secret) -> KeyData {
    let mut out: KeyData = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    out.extend(
        s.string_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
    );
    out
}

/// Config maps and secrets of one namespace, fetched once per container start; `None` records
/// that the object does not exist.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub config_maps: HashMap<String, Option<KeyData>>,
    pub secrets: HashMap<String, Option<KeyData>>,
}

impl Objects {
    pub async fn fetch<'a>(
        client: &kube::Client,
        namespace: &str,
        config_maps: impl IntoIterator<Item = &'a str>,
        secrets: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, SourceError> {
        let mut out = Objects::default();
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        for name in config_maps {
            if out.config_maps.contains_key(name) {
                continue;
            }
            let got = cms
                .get_opt(name)
                .await
                .map_err(|source| SourceError::GetObject {
                    kind: "config map",
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source: Box::new(source),
                })?;
            out.config_maps
                .insert(name.to_string(), got.as_ref().map(config_map_data));
        }
        let secs: Api<Secret> = Api::namespaced(client.clone(), namespace);
        for name in secrets {
            if out.secrets.contains_key(name) {
                continue;
            }
            let got = secs
                .get_opt(name)
                .await
                .map_err(|source| SourceError::GetObject {
                    kind: "secret",
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    source: Box::new(source),
                })?;
            out.secrets
                .insert(name.to_string(), got.as_ref().map(secret_data));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                labels: Some(
                    [
                        ("app".to_string(), "web".to_string()),
                        ("tier".to_string(), "front".to_string()),
                    ]
                    .into(),
                ),
                annotations: Some([("note".to_string(), "hi".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("node-2".into()),
                service_account_name: Some("sa".into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn field_refs() {
        let p = pod();
        let ip = Some(Ipv4Addr::new(10, 244, 2, 9));
        for (path, want) in [
            ("metadata.name", "web-0"),
            ("metadata.namespace", "shop"),
            ("metadata.uid", "u-1"),
            ("metadata.labels['app']", "web"),
            ("metadata.labels['missing']", ""),
            ("metadata.annotations['note']", "hi"),
            ("metadata.labels", "app=\"web\"\ntier=\"front\"\n"),
            ("spec.nodeName", "node-2"),
            ("spec.serviceAccountName", "sa"),
            ("status.podIP", "10.244.2.9"),
            ("status.hostIP", "10.244.0.1"),
        ] {
            assert_eq!(field_ref(&p, path, ip).expect(path), want, "{path}");
        }
        assert!(matches!(
            field_ref(&p, "spec.bogus", ip),
            Err(SourceError::UnsupportedField { .. })
        ));
    }

    #[test]
    fn object_data_merges_text_and_binary_keys() {
        let cm = ConfigMap {
            data: Some([("a".to_string(), "x".to_string())].into()),
            binary_data: Some([("b".to_string(), ByteString(vec![0, 1]))].into()),
            ..Default::default()
        };
        let d = config_map_data(&cm);
        assert_eq!(d.get("a"), Some(&b"x".to_vec()));
        assert_eq!(d.get("b"), Some(&vec![0u8, 1]));
        let s = Secret {
            data: Some([("p".to_string(), ByteString(b"pw".to_vec()))].into()),
            ..Default::default()
        };
        assert_eq!(secret_data(&s).get("p"), Some(&b"pw".to_vec()));
    }
}
