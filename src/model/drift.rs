//! Drift: someone else's change to a StatefulSet in the middle of a rollout (a `kubectl apply`,
//! a `helm upgrade`, a GitOps sync, a `kubectl patch`), as plain data: what changed, and which
//! field manager wrote it when. Detected by `crate::strategy::predicates::drift`, kept in the
//! record once a run stopped for it, shown by `rollout status`.

use std::fmt;

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The field manager `rollout` writes with (`metadata.managedFields[].manager`): every other
/// manager is someone else.
pub const FIELD_MANAGER: &str = "rollout";

/// One image that differs from what the rollout expects at its step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDrift {
    pub container: String,
    /// What the rollout expects (empty when the container is new).
    pub expected: String,
    /// What the set's template has now (empty when the container is gone).
    pub found: String,
}

/// One field someone else changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "field")]
pub enum Change {
    /// The pod template of `set`: its images, or (when they are the same) something else in it,
    /// seen as another revision.
    #[serde(rename_all = "camelCase")]
    Template {
        set: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_revision: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        found_revision: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        images: Vec<ImageDrift>,
    },
    /// `spec.updateStrategy.rollingUpdate.partition` (0 when unset).
    #[serde(rename_all = "camelCase")]
    Partition {
        set: String,
        expected: u32,
        found: u32,
    },
    /// `spec.replicas`, where the plan depends on it.
    #[serde(rename_all = "camelCase")]
    Replicas {
        set: String,
        expected: u32,
        found: u32,
    },
    /// The `spec.rules` of the HTTPRoute a rollout steers traffic through: not those rollout
    /// wrote last. `found` says where they send requests now.
    #[serde(rename_all = "camelCase")]
    Route { route: String, found: String },
    /// The rollout record annotation was removed.
    RecordRemoved,
    /// The rollout record annotation now holds another rollout's record.
    #[serde(rename_all = "camelCase")]
    RecordReplaced { id: String },
}

/// Who wrote a field: an entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Writer {
    pub manager: String,
    /// `Update` or `Apply` (server-side apply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

/// Someone else's changes, and who made them (when `metadata.managedFields` tells).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    pub changes: Vec<Change>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Writer>,
}

impl Drift {
    /// True when the other deploy changed the pod template (so it now owns what the pods run).
    pub fn changes_template(&self) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c, Change::Template { .. }))
    }

    /// True when the record itself is gone or someone else's: nothing may be written back.
    pub fn record_lost(&self) -> bool {
        self.changes
            .iter()
            .any(|c| matches!(c, Change::RecordRemoved | Change::RecordReplaced { .. }))
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Template {
                set,
                expected_revision,
                found_revision,
                images,
            } if images.is_empty() => write!(
                f,
                "the pod template of {set} (revision {} -> {})",
                expected_revision.as_deref().unwrap_or("?"),
                found_revision.as_deref().unwrap_or("not yet computed")
            ),
            Change::Template { set, images, .. } => {
                let list = images
                    .iter()
                    .map(|i| {
                        format!(
                            "image {} -> {} (container {})",
                            or_none(&i.expected),
                            or_none(&i.found),
                            i.container
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                write!(f, "the pod template of {set}: {list}")
            }
            Change::Partition {
                set,
                expected,
                found,
            } => write!(f, "the partition of {set}: {expected} -> {found}"),
            Change::Replicas {
                set,
                expected,
                found,
            } => write!(f, "the replicas of {set}: {expected} -> {found}"),
            Change::Route { route, found } => write!(
                f,
                "the rules of HTTPRoute {route}, which rollout wrote last (they now send to {found})"
            ),
            Change::RecordRemoved => write!(f, "the rollout record annotation was removed"),
            Change::RecordReplaced { id } => {
                write!(
                    f,
                    "the rollout record now belongs to another rollout ({id})"
                )
            }
        }
    }
}

impl fmt::Display for Writer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field manager {}", self.manager)?;
        if let Some(op) = &self.operation {
            write!(f, " ({op})")?;
        }
        if let Some(at) = self.time {
            write!(f, " at {}", at.strftime("%Y-%m-%d %H:%M:%S UTC"))?;
        }
        Ok(())
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let changes = self
            .changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        write!(f, "changed by someone else: {changes}")?;
        match &self.by {
            Some(by) if self.record_lost() => write!(f, " (last written by {by})"),
            Some(by) => write!(f, ", by {by}"),
            None => write!(f, " (no field manager other than rollout's is recorded)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_reads_as_what_changed_and_who() {
        let drift = Drift {
            changes: vec![
                Change::Template {
                    set: "web".into(),
                    expected_revision: Some("web-b".into()),
                    found_revision: Some("web-c".into()),
                    images: vec![ImageDrift {
                        container: "app".into(),
                        expected: "time-app:v2".into(),
                        found: "time-app:v3".into(),
                    }],
                },
                Change::Partition {
                    set: "web".into(),
                    expected: 2,
                    found: 0,
                },
            ],
            by: Some(Writer {
                manager: "helm".into(),
                operation: Some("Apply".into()),
                time: Timestamp::from_second(0).ok(),
            }),
        };
        assert_eq!(
            drift.to_string(),
            "changed by someone else: the pod template of web: image time-app:v2 -> time-app:v3 (container app); the partition of web: 2 -> 0, by field manager helm (Apply) at 1970-01-01 00:00:00 UTC"
        );
        assert!(drift.changes_template());
        assert!(!drift.record_lost());
    }

    #[test]
    fn template_without_image_change_names_revisions() {
        let change = Change::Template {
            set: "web".into(),
            expected_revision: Some("web-a".into()),
            found_revision: None,
            images: vec![],
        };
        assert_eq!(
            change.to_string(),
            "the pod template of web (revision web-a -> not yet computed)"
        );
    }

    #[test]
    fn a_lost_record_names_the_last_writer_as_a_hint() {
        let drift = Drift {
            changes: vec![Change::RecordRemoved],
            by: Some(Writer {
                manager: "kubectl-annotate".into(),
                operation: Some("Update".into()),
                time: None,
            }),
        };
        assert!(drift.record_lost());
        assert_eq!(
            drift.to_string(),
            "changed by someone else: the rollout record annotation was removed (last written by field manager kubectl-annotate (Update))"
        );
    }

    #[test]
    fn drift_round_trips_through_json() {
        let drift = Drift {
            changes: vec![
                Change::Replicas {
                    set: "web".into(),
                    expected: 3,
                    found: 5,
                },
                Change::RecordReplaced { id: "x".into() },
            ],
            by: None,
        };
        let text = serde_json::to_string(&drift).unwrap_or_default();
        let back: Drift = serde_json::from_str(&text).unwrap_or(Drift {
            changes: vec![],
            by: None,
        });
        assert_eq!(back, drift);
    }
}
