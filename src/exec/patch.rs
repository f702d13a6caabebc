//! The writes a rollout makes to a StatefulSet, as values: [`StsPatch`] says what changes (the
//! rollout record, the pod template, the update strategy) and under which resourceVersion; one
//! function renders it as a strategic merge patch. Building a patch never sends it, so tests
//! assert on patches and the fake cluster applies them field by field.

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::{json, Map, Value};

use crate::model::image::ContainerImage;
use crate::model::state::ANNOTATION_KEY;

/// What happens to the rollout record annotation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RecordChange {
    #[default]
    Keep,
    Set(String),
    Remove,
}

/// A new pod template.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateChange {
    /// New images for named containers, the rest of the template untouched (like
    /// `kubectl set image`).
    Images {
        containers: Vec<ContainerImage>,
        init_containers: Vec<ContainerImage>,
    },
    /// A whole template (from a manifest or a ControllerRevision) replacing the current one.
    Replace(Value),
}

impl TemplateChange {
    /// An image change, split between containers and init containers of `spec`.
    pub fn images(spec: &PodSpec, images: &[ContainerImage]) -> TemplateChange {
        let is_init = |name: &str| {
            spec.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == name)
                && !spec.containers.iter().any(|c| c.name == name)
        };
        let (init_containers, containers) =
            images.iter().cloned().partition(|i| is_init(&i.container));
        TemplateChange::Images {
            containers,
            init_containers,
        }
    }
}

/// A change of `spec.updateStrategy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrategyChange {
    /// Only the partition (the strategy is already RollingUpdate).
    Partition(u32),
    /// The type and the partition (`None`: no partition); used to freeze a set that may be
    /// `OnDelete`, and to restore what the set had before the rollout.
    Set {
        type_: String,
        partition: Option<u32>,
    },
}

impl StrategyChange {
    /// RollingUpdate held at `partition`: no pod at or below it moves.
    pub fn freeze(partition: u32) -> StrategyChange {
        StrategyChange::Set {
            type_: "RollingUpdate".to_string(),
            partition: Some(partition),
        }
    }
}

/// One write to a StatefulSet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StsPatch {
    /// The resourceVersion the write is based on: the API server refuses it with a conflict when
    /// the object changed since.
    pub resource_version: Option<String>,
    pub record: RecordChange,
    pub template: Option<TemplateChange>,
    pub update_strategy: Option<StrategyChange>,
    /// `spec.replicas` (recreate and blue/green scale sets).
    pub replicas: Option<u32>,
    /// `spec.updateStrategy.rollingUpdate.maxUnavailable`: how many pods the StatefulSet
    /// controller may replace at once (a batch), or `Null` to remove it. Ignored with `OnDelete`.
    pub max_unavailable: Option<Value>,
}

impl StsPatch {
    /// A write based on `resource_version`.
    pub fn at(resource_version: Option<&str>) -> StsPatch {
        StsPatch {
            resource_version: resource_version.map(String::from),
            ..StsPatch::default()
        }
    }

    pub fn with_record(mut self, record: RecordChange) -> StsPatch {
        self.record = record;
        self
    }

    pub fn with_template(mut self, template: TemplateChange) -> StsPatch {
        self.template = Some(template);
        self
    }

    pub fn with_strategy(mut self, change: StrategyChange) -> StsPatch {
        self.update_strategy = Some(change);
        self
    }

    pub fn with_replicas(mut self, replicas: u32) -> StsPatch {
        self.replicas = Some(replicas);
        self
    }

    /// True when it changes more than the record (a mutation of what pods run).
    pub fn mutates_pods(&self) -> bool {
        self.template.is_some()
            || self.update_strategy.is_some()
            || self.replicas.is_some()
            || self.max_unavailable.is_some()
    }

    /// The strategic merge patch body.
    pub fn to_json(&self) -> Value {
        let mut metadata = Map::new();
        if let Some(rv) = &self.resource_version {
            metadata.insert("resourceVersion".into(), json!(rv));
        }
        match &self.record {
            RecordChange::Keep => {}
            RecordChange::Set(text) => {
                metadata.insert("annotations".into(), json!({ ANNOTATION_KEY: text }));
            }
            RecordChange::Remove => {
                metadata.insert("annotations".into(), json!({ ANNOTATION_KEY: null }));
            }
        }
        let mut spec = Map::new();
        match &self.template {
            None => {}
            Some(TemplateChange::Images {
                containers,
                init_containers,
            }) => {
                let list = |images: &[ContainerImage]| -> Value {
                    images
                        .iter()
                        .map(|i| json!({"name": i.container, "image": i.image}))
                        .collect()
                };
                let mut pod = Map::new();
                if !containers.is_empty() {
                    pod.insert("containers".into(), list(containers));
                }
                if !init_containers.is_empty() {
                    pod.insert("initContainers".into(), list(init_containers));
                }
                spec.insert("template".into(), json!({ "spec": pod }));
            }
            Some(TemplateChange::Replace(template)) => {
                let mut template = template.clone();
                if let Some(object) = template.as_object_mut() {
                    object.insert("$patch".into(), json!("replace"));
                }
                spec.insert("template".into(), template);
            }
        }
        match &self.update_strategy {
            None => {}
            Some(StrategyChange::Partition(p)) => {
                spec.insert(
                    "updateStrategy".into(),
                    json!({"rollingUpdate": {"partition": p}}),
                );
            }
            Some(StrategyChange::Set { type_, partition }) => {
                // OnDelete must not carry rollingUpdate; RollingUpdate keeps its other fields
                // (maxUnavailable on newer clusters) and only sets or clears the partition.
                let rolling = match (type_.as_str(), partition) {
                    ("RollingUpdate", Some(p)) => json!({"partition": p}),
                    ("RollingUpdate", None) => json!({"partition": null}),
                    _ => Value::Null,
                };
                spec.insert(
                    "updateStrategy".into(),
                    json!({"type": type_, "rollingUpdate": rolling}),
                );
            }
        }
        if let Some(max) = &self.max_unavailable {
            let strategy = spec.entry("updateStrategy").or_insert_with(|| json!({}));
            if let Some(strategy) = strategy.as_object_mut() {
                match strategy.entry("rollingUpdate").or_insert_with(|| json!({})) {
                    // OnDelete: no rollingUpdate at all, so nothing to limit.
                    Value::Null => {}
                    rolling => rolling["maxUnavailable"] = max.clone(),
                }
            }
        }
        if let Some(replicas) = self.replicas {
            spec.insert("replicas".into(), json!(replicas));
        }
        let mut body = Map::new();
        if !metadata.is_empty() {
            body.insert("metadata".into(), Value::Object(metadata));
        }
        if !spec.is_empty() {
            body.insert("spec".into(), Value::Object(spec));
        }
        Value::Object(body)
    }
}

/// The pod template a ControllerRevision holds (`data.spec.template`), without the
/// `$patch` directive the StatefulSet controller stores with it.
pub fn revision_template(data: &Value) -> Option<Value> {
    let mut template = data.get("spec")?.get("template")?.clone();
    template.as_object_mut()?.remove("$patch");
    Some(template)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Container;

    fn image(container: &str, image: &str) -> ContainerImage {
        ContainerImage {
            container: container.into(),
            image: image.into(),
        }
    }

    #[test]
    fn freeze_patch_sets_template_partition_and_record_under_a_precondition() {
        let spec = PodSpec {
            containers: vec![Container {
                name: "app".into(),
                ..Default::default()
            }],
            init_containers: Some(vec![Container {
                name: "migrate".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let patch = StsPatch::at(Some("42"))
            .with_record(RecordChange::Set("{\"version\":1}".into()))
            .with_template(TemplateChange::images(
                &spec,
                &[image("app", "app:v2"), image("migrate", "tool:v2")],
            ))
            .with_strategy(StrategyChange::freeze(3));
        assert!(patch.mutates_pods());
        assert_eq!(
            patch.to_json(),
            json!({
                "metadata": {
                    "resourceVersion": "42",
                    "annotations": {"rollout.dev/state": "{\"version\":1}"}
                },
                "spec": {
                    "template": {"spec": {
                        "containers": [{"name": "app", "image": "app:v2"}],
                        "initContainers": [{"name": "migrate", "image": "tool:v2"}]
                    }},
                    "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 3}}
                }
            })
        );
    }

    #[test]
    fn strategy_changes() {
        let cases = [
            (
                StrategyChange::Partition(1),
                json!({"rollingUpdate": {"partition": 1}}),
            ),
            (
                StrategyChange::Set {
                    type_: "OnDelete".into(),
                    partition: None,
                },
                json!({"type": "OnDelete", "rollingUpdate": null}),
            ),
            (
                StrategyChange::Set {
                    type_: "RollingUpdate".into(),
                    partition: None,
                },
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": null}}),
            ),
            (
                StrategyChange::Set {
                    type_: "RollingUpdate".into(),
                    partition: Some(2),
                },
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}}),
            ),
        ];
        for (change, expected) in cases {
            let body = StsPatch::at(None).with_strategy(change).to_json();
            assert_eq!(body, json!({"spec": {"updateStrategy": expected}}));
        }
    }

    #[test]
    fn max_unavailable_rides_on_the_rolling_update_it_belongs_to() {
        let on_delete = StrategyChange::Set {
            type_: "OnDelete".into(),
            partition: None,
        };
        let cases = [
            (
                Some(StrategyChange::Partition(3)),
                json!(3),
                json!({"rollingUpdate": {"partition": 3, "maxUnavailable": 3}}),
            ),
            (
                None,
                json!("25%"),
                json!({"rollingUpdate": {"maxUnavailable": "25%"}}),
            ),
            (
                StrategyChange::freeze(0).into(),
                Value::Null,
                json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0, "maxUnavailable": null}}),
            ),
            (
                Some(on_delete),
                json!(3),
                json!({"type": "OnDelete", "rollingUpdate": null}),
            ),
        ];
        for (strategy, max, expected) in cases {
            let mut patch = StsPatch::at(None);
            patch.update_strategy = strategy;
            patch.max_unavailable = Some(max);
            assert!(patch.mutates_pods());
            assert_eq!(
                patch.to_json(),
                json!({"spec": {"updateStrategy": expected}})
            );
        }
    }

    #[test]
    fn record_only_and_replace() {
        let keep = StsPatch::at(Some("7"));
        assert!(!keep.mutates_pods());
        assert_eq!(
            keep.to_json(),
            json!({"metadata": {"resourceVersion": "7"}})
        );
        let remove = StsPatch::at(None).with_record(RecordChange::Remove);
        assert_eq!(
            remove.to_json(),
            json!({"metadata": {"annotations": {"rollout.dev/state": null}}})
        );
        let replace = StsPatch::at(None).with_template(TemplateChange::Replace(
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}),
        ));
        assert_eq!(
            replace.to_json()["spec"]["template"],
            json!({"$patch": "replace", "metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}})
        );
    }

    #[test]
    fn revision_templates_lose_the_directive() {
        let data = json!({"spec": {"template": {"$patch": "replace", "spec": {"containers": []}}}});
        assert_eq!(
            revision_template(&data),
            Some(json!({"spec": {"containers": []}}))
        );
        assert_eq!(revision_template(&json!({})), None);
        assert_eq!(revision_template(&json!({"spec": {"template": 3}})), None);
    }
}
