//! A container's environment, built as the kubelet and a container runtime would: a default
//! PATH, HOSTNAME and HOME (root's, as a runtime sets it for a root image), the image's env (from
//! the runtime file), then `envFrom`, then `env` with `$(VAR)` expansion, `fieldRef`,
//! `configMapKeyRef` and `secretKeyRef`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::sources::{field_ref, KeyData, Objects, SourceError};
use crate::agent::runtime::expand;

pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Worded like the kubelet's CreateContainerConfigError messages.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("configmap \"{name}\" not found")]
    MissingConfigMap { name: String },
    #[error("secret \"{name}\" not found")]
    MissingSecret { name: String },
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    MissingConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    MissingSecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("env var {var}: {source}")]
    Field {
        var: String,
        #[source]
        source: SourceError,
    },
    #[error("env var {var}: resourceFieldRef is not supported by the devcluster")]
    ResourceField { var: String },
}

/// The config maps and secrets a container's env refers to.
pub fn referenced(c: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for e in c.env_from.iter().flatten() {
        cms.extend(e.config_map_ref.as_ref().map(|r| r.name.clone()));
        secrets.extend(e.secret_ref.as_ref().map(|r| r.name.clone()));
    }
    for e in c.env.iter().flatten() {
        let Some(from) = &e.value_from else { continue };
        cms.extend(from.config_map_key_ref.as_ref().map(|r| r.name.clone()));
        secrets.extend(from.secret_key_ref.as_ref().map(|r| r.name.clone()));
    }
    (cms, secrets)
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// Looks up `name` in a fetched set; `Ok(None)` when it is missing but optional.
fn object<'a>(
    set: &'a std::collections::HashMap<String, Option<KeyData>>,
    name: &str,
    optional: bool,
    missing: impl FnOnce() -> EnvError,
) -> Result<Option<&'a KeyData>, EnvError> {
    match set.get(name).and_then(Option::as_ref) {
        Some(d) => Ok(Some(d)),
        None if optional => Ok(None),
        None => Err(missing()),
    }
}

pub fn container_env(
    pod: &Pod,
    c: &Container,
    pod_ip: Option<Ipv4Addr>,
    image_env: &BTreeMap<String, String>,
    objects: &Objects,
) -> Result<BTreeMap<String, String>, EnvError> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), DEFAULT_PATH.to_string());
    env.insert(
        "HOSTNAME".to_string(),
        pod.metadata.name.clone().unwrap_or_default(),
    );
    env.insert("HOME".to_string(), "/root".to_string());
    env.extend(image_env.iter().map(|(k, v)| (k.clone(), v.clone())));

    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(r) = &from.config_map_ref {
            object(
                &objects.config_maps,
                &r.name,
                r.optional.unwrap_or(false),
                || EnvError::MissingConfigMap {
                    name: r.name.clone(),
                },
            )?
        } else if let Some(r) = &from.secret_ref {
            object(
                &objects.secrets,
                &r.name,
                r.optional.unwrap_or(false),
                || EnvError::MissingSecret {
                    name: r.name.clone(),
                },
            )?
        } else {
            None
        };
        for (k, v) in data.into_iter().flatten() {
            // Keys that cannot be variable names are skipped, as the kubelet does.
            if !k.is_empty() && !k.contains('=') {
                env.insert(format!("{prefix}{k}"), text(v));
            }
        }
    }

    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or(""), &env),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field_ref(pod, &f.field_path, pod_ip).map_err(|source| EnvError::Field {
                        var: e.name.clone(),
                        source,
                    })?
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let data = object(&objects.config_maps, &r.name, optional, || {
                        EnvError::MissingConfigMap {
                            name: r.name.clone(),
                        }
                    })?;
                    match data.map(|d| d.get(&r.key)) {
                        Some(Some(v)) => text(v),
                        _ if optional => continue,
                        _ => {
                            return Err(EnvError::MissingConfigMapKey {
                                namespace,
                                name: r.name.clone(),
                                key: r.key.clone(),
                            })
                        }
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional.unwrap_or(false);
                    let data = object(&objects.secrets, &r.name, optional, || {
                        EnvError::MissingSecret {
                            name: r.name.clone(),
                        }
                    })?;
                    match data.map(|d| d.get(&r.key)) {
                        Some(Some(v)) => text(v),
                        _ if optional => continue,
                        _ => {
                            return Err(EnvError::MissingSecretKey {
                                namespace,
                                name: r.name.clone(),
                                key: r.key.clone(),
                            })
                        }
                    }
                } else if from.resource_field_ref.is_some() {
                    return Err(EnvError::ResourceField {
                        var: e.name.clone(),
                    });
                } else {
                    String::new()
                }
            }
        };
        env.insert(e.name.clone(), value);
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
        ObjectFieldSelector, PodSpec, SecretKeySelector,
    };
    use kube::api::ObjectMeta;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: None,
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            ..Default::default()
        }
    }

    fn from(name: &str, src: EnvVarSource) -> EnvVar {
        EnvVar {
            name: name.into(),
            value_from: Some(src),
            ..Default::default()
        }
    }

    fn objects() -> Objects {
        let mut o = Objects::default();
        o.config_maps.insert(
            "cfg".into(),
            Some(
                [
                    ("color".to_string(), b"blue".to_vec()),
                    ("bad=key".to_string(), b"x".to_vec()),
                ]
                .into(),
            ),
        );
        o.config_maps.insert("gone".into(), None);
        o.secrets.insert(
            "creds".into(),
            Some([("password".to_string(), b"s3cret".to_vec())].into()),
        );
        o
    }

    #[test]
    fn layers_apply_in_order_with_expansion() {
        let c = Container {
            name: "app".into(),
            env_from: Some(vec![EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: "cfg".into(),
                    optional: None,
                }),
                prefix: Some("CFG_".into()),
                ..Default::default()
            }]),
            env: Some(vec![
                var("PORT", "5000"),
                var("URL", "http://$(HOSTNAME):$(PORT)/$(NOPE)"),
                var("APP_VERSION", "override"),
                from(
                    "POD",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "metadata.name".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "PW",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "creds".into(),
                            key: "password".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                from(
                    "OPT",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "gone".into(),
                            key: "k".into(),
                            optional: Some(true),
                        }),
                        ..Default::default()
                    },
                ),
            ]),
            ..Default::default()
        };
        let image_env: BTreeMap<String, String> =
            [("APP_VERSION".to_string(), "v2".to_string())].into();
        let env = container_env(&pod(), &c, None, &image_env, &objects()).expect("resolves");
        let get = |k: &str| env.get(k).map(String::as_str);
        assert_eq!(get("PATH"), Some(DEFAULT_PATH));
        assert_eq!(get("HOSTNAME"), Some("web-1"));
        assert_eq!(get("CFG_color"), Some("blue"));
        assert_eq!(get("CFG_bad=key"), None);
        assert_eq!(get("URL"), Some("http://web-1:5000/$(NOPE)"));
        assert_eq!(get("APP_VERSION"), Some("override"));
        assert_eq!(get("POD"), Some("web-1"));
        assert_eq!(get("PW"), Some("s3cret"));
        assert_eq!(get("OPT"), None);
        assert_eq!(
            referenced(&c),
            (
                vec!["cfg".to_string(), "gone".to_string()],
                vec!["creds".to_string()]
            )
        );
    }

    #[test]
    fn missing_references_fail_like_the_kubelet() {
        let cases = vec![
            (
                from(
                    "A",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "gone".into(),
                            key: "k".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                "configmap \"gone\" not found",
            ),
            (
                from(
                    "A",
                    EnvVarSource {
                        config_map_key_ref: Some(ConfigMapKeySelector {
                            name: "cfg".into(),
                            key: "k".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                "couldn't find key k in ConfigMap default/cfg",
            ),
            (
                from(
                    "A",
                    EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "nope".into(),
                            key: "k".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    },
                ),
                "secret \"nope\" not found",
            ),
            (
                from(
                    "A",
                    EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            field_path: "spec.x".into(),
                            api_version: None,
                        }),
                        ..Default::default()
                    },
                ),
                "env var A: the downward API field \"spec.x\" is not supported by the devcluster",
            ),
        ];
        for (v, want) in cases {
            let c = Container {
                name: "app".into(),
                env: Some(vec![v]),
                ..Default::default()
            };
            let err =
                container_env(&pod(), &c, None, &BTreeMap::new(), &objects()).expect_err("fails");
            assert_eq!(err.to_string(), want);
        }
    }
}
