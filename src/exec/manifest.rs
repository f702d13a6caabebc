//! `-f/--manifest FILE`: a whole new StatefulSet (e.g. the output of `helm template`), of which
//! the rollout takes the pod template. The file may hold many documents; the StatefulSet named
//! on the command line is picked. `-` reads standard input (`helm template ... | rollout ... -f -`),
//! and a pipe given as a path (`-f <(helm template ...)`) is read like a file. Parsing is pure;
//! reading happens once, when the CLI settings are resolved.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde::Deserialize;
use serde_json::Value;

/// Why a manifest was refused. `file` is the path as the user gave it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading manifest {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("manifest {file}: document {document} is not valid YAML: {message}")]
    Parse {
        file: String,
        document: usize,
        message: String,
    },
    #[error("manifest {file} is empty: if a command writes it (`-f <(helm template ...)`, `helm template ... | rollout ... -f -`), that command failed or printed nothing; its own error is above")]
    Empty { file: String },
    #[error("manifest {file} holds no StatefulSet (found: {found}); give the file with the StatefulSet, e.g. the output of `helm template`")]
    NoStatefulSet { file: String, found: String },
    #[error("manifest {file} has no StatefulSet named {wanted} (its StatefulSets: {found}); name one of those, or check the file")]
    NameMismatch {
        file: String,
        wanted: String,
        found: String,
    },
    #[error("manifest {file}: StatefulSet {name} is not valid: {message}")]
    Invalid {
        file: String,
        name: String,
        message: String,
    },
    #[error("manifest {file}: StatefulSet {name} has no spec.template.spec.containers")]
    NoContainers { file: String, name: String },
}

/// The path that stands for standard input, and how messages name it.
const STDIN_PATH: &str = "-";
const STDIN_NAME: &str = "<stdin>";

/// The StatefulSet a manifest brings.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub file: String,
    /// The pod template as written (plain JSON, so fields this build does not know survive).
    pub template: Value,
    /// The same template, typed, for checks (containers, ports, images).
    pub typed: PodTemplateSpec,
    /// `spec.replicas` in the file, if set.
    pub replicas: Option<i32>,
}

impl Manifest {
    /// Picks the StatefulSet `name` from the documents in `text`.
    pub fn parse(file: &str, text: &str, name: &str) -> Result<Manifest, ManifestError> {
        if text.trim().is_empty() {
            return Err(ManifestError::Empty {
                file: file.to_string(),
            });
        }
        let mut kinds = Vec::new();
        let mut sets: Vec<(String, Value)> = Vec::new();
        for (index, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let value = Value::deserialize(doc).map_err(|e| ManifestError::Parse {
                file: file.to_string(),
                document: index + 1,
                message: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            // `kind: List` (kubectl get -o yaml) holds its objects in `items`.
            let objects = match value.get("items").and_then(Value::as_array) {
                Some(items) if value["kind"] == "List" => items.clone(),
                _ => vec![value],
            };
            for object in objects {
                let kind = object["kind"].as_str().unwrap_or("?").to_string();
                if kind == "StatefulSet" {
                    let set_name = object["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    sets.push((set_name, object));
                } else {
                    kinds.push(kind);
                }
            }
        }
        if sets.is_empty() {
            return Err(ManifestError::NoStatefulSet {
                file: file.to_string(),
                found: if kinds.is_empty() {
                    "nothing".to_string()
                } else {
                    kinds.join(", ")
                },
            });
        }
        let names = sets
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let Some((_, object)) = sets.into_iter().find(|(n, _)| n == name) else {
            return Err(ManifestError::NameMismatch {
                file: file.to_string(),
                wanted: name.to_string(),
                found: names,
            });
        };
        let invalid = |message: String| ManifestError::Invalid {
            file: file.to_string(),
            name: name.to_string(),
            message,
        };
        let set: StatefulSet =
            serde_json::from_value(object.clone()).map_err(|e| invalid(e.to_string()))?;
        let spec = set
            .spec
            .ok_or_else(|| invalid("it has no spec".to_string()))?;
        let has_containers = spec
            .template
            .spec
            .as_ref()
            .is_some_and(|s| !s.containers.is_empty());
        if !has_containers {
            return Err(ManifestError::NoContainers {
                file: file.to_string(),
                name: name.to_string(),
            });
        }
        Ok(Manifest {
            file: file.to_string(),
            template: object["spec"]["template"].clone(),
            typed: spec.template,
            replicas: spec.replicas,
        })
    }

    /// The manifest's pod template with every label of `selector` that it lacks, and the
    /// labels added. A set `rollout` created for a blue/green selects its pods by a label of
    /// its own (`rollout.dev/set`) that the user's chart does not write; without it the API
    /// server refuses the template. A label the template sets to another value is left as
    /// written: that is a real mismatch, and the API server says so.
    pub fn template_for(&self, selector: &BTreeMap<String, String>) -> (Value, Vec<String>) {
        let mut template = self.template.clone();
        let mut added = Vec::new();
        let Some(root) = template.as_object_mut() else {
            return (template, added);
        };
        let metadata = root
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if !metadata.is_object() {
            *metadata = Value::Object(Default::default());
        }
        let Some(labels) = metadata.as_object_mut().map(|m| {
            m.entry("labels")
                .or_insert_with(|| Value::Object(Default::default()))
        }) else {
            return (template, added);
        };
        if !labels.is_object() {
            *labels = Value::Object(Default::default());
        }
        if let Some(labels) = labels.as_object_mut() {
            for (key, value) in selector {
                if !labels.contains_key(key) {
                    labels.insert(key.clone(), Value::String(value.clone()));
                    added.push(format!("{key}={value}"));
                }
            }
        }
        (template, added)
    }

    /// Reads and parses the file, or standard input for `-`.
    pub fn read(path: &std::path::Path, name: &str) -> Result<Manifest, ManifestError> {
        let stdin = path.as_os_str() == STDIN_PATH;
        let file = if stdin {
            STDIN_NAME.to_string()
        } else {
            path.display().to_string()
        };
        let text = if stdin {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(path)
        }
        .map_err(|source| ManifestError::Read {
            file: file.clone(),
            source,
        })?;
        Manifest::parse(&file, &text, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_gets_the_selector_labels_it_lacks() {
        let selector: BTreeMap<String, String> = [
            ("app".to_string(), "web".to_string()),
            ("rollout.dev/set".to_string(), "web-bg1".to_string()),
        ]
        .into();
        let manifest = |template: Value| Manifest {
            file: "f.yaml".into(),
            template,
            typed: PodTemplateSpec::default(),
            replicas: None,
        };
        let cases = [
            (
                serde_json::json!({"metadata": {"labels": {"app": "web", "tier": "front"}}, "spec": {}}),
                serde_json::json!({"metadata": {"labels": {"app": "web", "tier": "front", "rollout.dev/set": "web-bg1"}}, "spec": {}}),
                vec!["rollout.dev/set=web-bg1"],
            ),
            (
                serde_json::json!({"spec": {}}),
                serde_json::json!({"metadata": {"labels": {"app": "web", "rollout.dev/set": "web-bg1"}}, "spec": {}}),
                vec!["app=web", "rollout.dev/set=web-bg1"],
            ),
            (
                serde_json::json!({"metadata": {"labels": {"app": "other", "rollout.dev/set": "web-bg1"}}}),
                serde_json::json!({"metadata": {"labels": {"app": "other", "rollout.dev/set": "web-bg1"}}}),
                vec![],
            ),
        ];
        for (given, want, added) in cases {
            let (got, got_added) = manifest(given.clone()).template_for(&selector);
            assert_eq!(got, want, "{given}");
            assert_eq!(got_added, added, "{given}");
        }
        let (same, none) = manifest(serde_json::json!({"spec": {}})).template_for(&BTreeMap::new());
        assert_eq!(same["spec"], serde_json::json!({}));
        assert!(none.is_empty());
    }

    const HELM: &str = "
---
# Source: app/templates/service.yaml
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  replicas: 5
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: app
          image: app:v2
          futureField: kept
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: db:1}]}
";

    #[test]
    fn picks_the_named_statefulset_and_keeps_unknown_fields() {
        let m = Manifest::parse("out.yaml", HELM, "web").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.replicas, Some(5));
        assert_eq!(m.template["spec"]["containers"][0]["futureField"], "kept");
        let spec = m.typed.spec.unwrap_or_default();
        assert_eq!(spec.containers[0].image.as_deref(), Some("app:v2"));
        let db = Manifest::parse("out.yaml", HELM, "db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(db.replicas, None);
    }

    #[test]
    fn lists_are_read() {
        let text = "kind: List\nitems:\n- kind: StatefulSet\n  metadata: {name: web}\n  spec:\n    selector: {}\n    serviceName: web\n    template: {spec: {containers: [{name: a, image: a:1}]}}\n";
        assert!(Manifest::parse("l.yaml", text, "web").is_ok());
    }

    #[test]
    fn bad_manifests_say_what_and_where() {
        type Case = (
            &'static str,
            &'static str,
            fn(&ManifestError) -> bool,
            &'static str,
        );
        let cases: Vec<Case> = vec![
            (HELM, "api", |e| matches!(e, ManifestError::NameMismatch { .. }), "web, db"),
            ("kind: Service\nmetadata: {name: x}\n", "web", |e| matches!(e, ManifestError::NoStatefulSet { .. }), "Service"),
            ("", "web", |e| matches!(e, ManifestError::Empty { .. }), "failed or printed nothing"),
            ("\n  \n", "web", |e| matches!(e, ManifestError::Empty { .. }), "is empty"),
            ("---\n", "web", |e| matches!(e, ManifestError::NoStatefulSet { .. }), "nothing"),
            ("a: [\n", "web", |e| matches!(e, ManifestError::Parse { document: 1, .. }), "not valid YAML"),
            (
                "kind: StatefulSet\nmetadata: {name: web}\nspec: {selector: {}, serviceName: web, template: {spec: {containers: []}}}\n",
                "web",
                |e| matches!(e, ManifestError::NoContainers { .. }),
                "containers",
            ),
            (
                "kind: StatefulSet\nmetadata: {name: web}\nspec: {replicas: many}\n",
                "web",
                |e| matches!(e, ManifestError::Invalid { .. }),
                "not valid",
            ),
        ];
        for (text, name, check, needle) in cases {
            let err = Manifest::parse("m.yaml", text, name).expect_err(needle);
            assert!(check(&err), "{err:?}");
            let message = err.to_string();
            assert!(message.contains("m.yaml"), "{message}");
            assert!(message.contains(needle), "{message}");
        }
    }
}
