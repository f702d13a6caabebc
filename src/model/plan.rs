//! Plans: the list of steps a rollout takes, computed by `crate::strategy` and run by the
//! executor, stored in the state record, printed by `rollout plan` (text) and `-o json`.
//!
//! The partition strategies use the first four kinds of [`Step`]; blue/green, recreate and
//! shadow add steps that scale a set, create or remove a twin set, move Service selectors,
//! gate through a Service and compare a shadow with stable.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::strategy::{PauseSpec, StrategyKind};
use super::weight::{format_percent, Percent, PodWeight};

/// `spec.podManagementPolicy`: whether the StatefulSet controller waits for each pod to be Ready
/// before touching the next, which decides how a broken pod blocks a rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PodManagementPolicy {
    #[default]
    OrderedReady,
    Parallel,
}

impl PodManagementPolicy {
    /// Reads the field as the API gives it; absent means the Kubernetes default.
    pub fn from_field(value: Option<&str>) -> Self {
        match value {
            Some("Parallel") => PodManagementPolicy::Parallel,
            _ => PodManagementPolicy::OrderedReady,
        }
    }
}

impl fmt::Display for PodManagementPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PodManagementPolicy::OrderedReady => "OrderedReady",
            PodManagementPolicy::Parallel => "Parallel",
        })
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum Step {
    /// One write that sets the new pod template and `partition = replicas`, so that no pod moves
    /// before the next step says so.
    #[serde(rename_all = "camelCase")]
    SetTemplateAndFreeze { partition: u32 },
    /// Lower the partition. Done when `ordinals` (the pods it releases) run the target revision
    /// and are Ready; `updated` pods in all are then on the target revision.
    #[serde(rename_all = "camelCase")]
    SetPartition {
        partition: u32,
        ordinals: Vec<u32>,
        updated: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        weight: Option<PodWeight>,
    },
    /// Run every configured gate on these pods (of `set`, when it is not the rollout's own).
    Gate {
        ordinals: Vec<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        set: Option<String>,
    },
    /// Wait for `rollout promote`, or for a time.
    Pause { wait: PauseSpec },
    /// Write the new pod template, with no partition (recreate: no pod runs at that moment).
    SetTemplate,
    /// Set the replicas of a set; done when it has exactly that many pods, all Ready on its
    /// update revision (or none left, for 0).
    Scale { set: String, replicas: u32 },
    /// Point the live Services at blue only, so green never enters them before the switch.
    PinTraffic,
    /// Blue/green: hold the rollout's own set (blue) on the revision its pods run, with
    /// `RollingUpdate` and `partition` at its replicas: someone else's template change moves no
    /// pod and a deleted pod comes back on its revision, so the Services pinned to that revision
    /// keep their endpoints.
    #[serde(rename_all = "camelCase")]
    HoldRevision { partition: u32 },
    /// The update strategy and partition the rollout's own set had before the rollout, given
    /// back (the inverse of `HoldRevision`, and its end).
    ReleaseRevision,
    /// Create the twin set (green or shadow; its claims first when they are cloned, and the
    /// preview Service) and wait until all its pods are Ready.
    CreateTwin { set: String, replicas: u32 },
    /// Probe through a Service (the API server's service proxy), not pod by pod.
    GateService { service: String },
    /// Point the live Services at green, one patch each.
    SwitchTraffic,
    /// Replay requests to stable and shadow pods side by side and compare the answers.
    Compare { set: String },
    /// Delete the twin set and its preview Service (and its claims unless they are kept).
    RemoveTwin { set: String },
    /// Rollback: the stable pod template back on the rollout's own set, with partition 0, in
    /// one write; done when the StatefulSet controller has taken it up.
    RestoreTemplate,
    /// Rollback: pods of the rollout's own set that are not Ready on the stable revision are
    /// deleted, once each, so that the controller recreates them on stable (on their own
    /// volumes; an `OrderedReady` set waits on a broken pod forever otherwise, kubernetes
    /// #67250); done when every pod runs the stable revision and is Ready.
    ReplaceStuckPods,
    /// Rollback of a blue/green: the live Services back on blue, pinned to the revision blue
    /// runs now, so green leaves them before it is scaled down.
    ReturnTraffic,
    /// Rollback of a blue/green: the live Services' selectors as they were before the rollout.
    RestoreSelectors,
    /// Rollback of a blue/green: delete the preview Service (only one `rollout` made).
    RemovePreview,
    /// Traffic through an HTTPRoute: create the per-revision Services (`<set>-stable`,
    /// `<set>-canary`, selecting by `controller-revision-hash`, marked as rollout's).
    CreateRevisionServices,
    /// Write the route's weights: `canary_percent` of its requests to the canary Service,
    /// whose pods (`pods` of them) run the new version; done when its gateways accept it.
    #[serde(rename_all = "camelCase")]
    SetRouteWeights { canary_percent: Percent, pods: u32 },
    /// The route's rules back exactly as they were before the rollout.
    RestoreRoute,
    /// Delete the per-revision Services (only those carrying rollout's mark).
    RemoveRevisionServices,
    /// Shadow through an HTTPRoute: a `RequestMirror` filter on each rule that sends traffic
    /// to the set's Service copies `percent` (all when absent) of its requests to the
    /// shadow's Service; users still get only stable's answers. Done when its gateways
    /// accept it.
    #[serde(rename_all = "camelCase")]
    MirrorRoute {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        percent: Option<Percent>,
    },
    /// Blue/green through an HTTPRoute: requests with the preview header go to green's preview
    /// Service, all others as before (to blue). Done when its gateways accept it.
    PreviewRoute,
    /// Blue/green through an HTTPRoute: the switch, as one route write: every backendRef to the
    /// live Service now names green's preview Service. Done when its gateways accept it.
    SwitchRoute,
}

impl Step {
    /// A gate on pods of the rollout's own set.
    pub fn gate(ordinals: Vec<u32>) -> Step {
        Step::Gate {
            ordinals,
            set: None,
        }
    }

    /// True for the steps that write an HTTPRoute's rules.
    pub fn writes_route(&self) -> bool {
        matches!(
            self,
            Step::SetRouteWeights { .. }
                | Step::RestoreRoute
                | Step::MirrorRoute { .. }
                | Step::PreviewRoute
                | Step::SwitchRoute
        )
    }

    /// A short name for status output and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Step::SetTemplateAndFreeze { .. } => "freeze",
            Step::SetPartition { .. } => "partition",
            Step::Gate { .. } => "gate",
            Step::Pause { .. } => "pause",
            Step::SetTemplate => "template",
            Step::Scale { .. } => "scale",
            Step::PinTraffic => "pin",
            Step::HoldRevision { .. } => "hold-revision",
            Step::ReleaseRevision => "release-revision",
            Step::CreateTwin { .. } => "create",
            Step::GateService { .. } => "gate-service",
            Step::SwitchTraffic => "switch",
            Step::Compare { .. } => "compare",
            Step::RemoveTwin { .. } => "remove",
            Step::RestoreTemplate => "restore-template",
            Step::ReplaceStuckPods => "replace-stuck",
            Step::ReturnTraffic => "return-traffic",
            Step::RestoreSelectors => "restore-selectors",
            Step::RemovePreview => "remove-preview",
            Step::CreateRevisionServices => "revision-services",
            Step::SetRouteWeights { .. } => "route-weights",
            Step::RestoreRoute => "restore-route",
            Step::RemoveRevisionServices => "remove-revision-services",
            Step::MirrorRoute { .. } => "route-mirror",
            Step::PreviewRoute => "route-preview",
            Step::SwitchRoute => "route-switch",
        }
    }
}

/// A rollout plan for one StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub statefulset: String,
    pub strategy: StrategyKind,
    pub replicas: u32,
    /// `spec.ordinals.start`: the first pod's ordinal (0 unless set).
    #[serde(default)]
    pub ordinal_start: u32,
    pub pod_management_policy: PodManagementPolicy,
    pub steps: Vec<Step>,
    /// Things the user should know about how flags became steps (merged or clamped steps).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Pod lists longer than this print as a range.
const MAX_LISTED_PODS: usize = 6;

impl Plan {
    pub fn pod_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.statefulset)
    }

    pub fn pod_names(&self, ordinals: &[u32]) -> Vec<String> {
        ordinals.iter().map(|o| self.pod_name(*o)).collect()
    }

    /// `web-4, web-3` or `web-99 ... web-50 (50 pods)`.
    pub fn describe_pods(&self, ordinals: &[u32]) -> String {
        match ordinals {
            [] => "no pod".to_string(),
            [first, .., last] if ordinals.len() > MAX_LISTED_PODS => {
                format!(
                    "{} ... {} ({} pods)",
                    self.pod_name(*first),
                    self.pod_name(*last),
                    ordinals.len()
                )
            }
            _ => self.pod_names(ordinals).join(", "),
        }
    }

    /// One line for a step, as `rollout plan` and `rollout status` print it.
    pub fn describe_step(&self, step: &Step) -> String {
        match step {
            Step::SetTemplateAndFreeze { partition } => {
                format!("set the new pod template with partition {partition} (no pod moves yet)")
            }
            Step::SetPartition {
                partition,
                ordinals,
                updated,
                weight,
            } => {
                let share = match weight {
                    Some(w) => w.to_string(),
                    None => format!(
                        "{updated} of {} pods ({})",
                        self.replicas,
                        format_percent(percent_of(*updated, self.replicas))
                    ),
                };
                let verb = if ordinals.len() == 1 { "moves" } else { "move" };
                format!(
                    "lower partition to {partition}: {} {verb} to the new version; {share} on it",
                    self.describe_pods(ordinals)
                )
            }
            Step::Gate {
                ordinals,
                set: None,
            } => format!("gate {}", self.describe_pods(ordinals)),
            Step::Gate {
                ordinals,
                set: Some(set),
            } => format!("gate {}", describe_set_pods(set, ordinals)),
            Step::SetTemplate => "set the new pod template (no pod runs now)".to_string(),
            Step::Scale { set, replicas: 0 } => {
                format!("scale {set} to 0 and wait until every pod is gone (volumes stay)")
            }
            Step::Scale { set, replicas } => {
                format!("scale {set} to {replicas} and wait until every pod is Ready")
            }
            Step::PinTraffic => {
                "pin the live Services to the current pods (no pod restarts)".to_string()
            }
            Step::HoldRevision { partition } => format!(
                "hold {}'s pods on the revision they run (RollingUpdate, partition {partition}): a template change by someone else moves no pod",
                self.statefulset
            ),
            Step::ReleaseRevision => format!(
                "give {} back the update strategy and partition it had before the rollout",
                self.statefulset
            ),
            Step::CreateTwin { set, replicas } => {
                format!("create StatefulSet {set} with {replicas} pod(s) on the new version, and wait until they are Ready")
            }
            Step::GateService { service } => format!("gate through Service {service}"),
            Step::SwitchTraffic => {
                "switch the live Services to the new set (one patch each)".to_string()
            }
            Step::Compare { set } => format!(
                "replay requests to {} and {set} side by side and compare",
                self.statefulset
            ),
            Step::RemoveTwin { set } => format!("remove StatefulSet {set}"),
            Step::RestoreTemplate => format!(
                "set the stable pod template back on {} with partition 0",
                self.statefulset
            ),
            Step::ReplaceStuckPods => format!(
                "wait until every pod of {} is Ready on the stable revision, deleting pods stuck on another one (their volumes stay)",
                self.statefulset
            ),
            Step::ReturnTraffic => format!(
                "point the live Services back at {} (pinned to the revision it runs now)",
                self.statefulset
            ),
            Step::RestoreSelectors => {
                "set the live Services' selectors back as they were".to_string()
            }
            Step::RemovePreview => "remove the preview Service".to_string(),
            Step::CreateRevisionServices => format!(
                "create the Services {0}-stable and {0}-canary, selecting the pods of each revision",
                self.statefulset
            ),
            Step::SetRouteWeights {
                canary_percent,
                pods: 0,
            } if canary_percent.get() == 0 => {
                "set the route's weights: every request to the stable Service".to_string()
            }
            Step::SetRouteWeights {
                canary_percent,
                pods,
            } => format!(
                "set the route's weights: canary: {pods}/{} pods ({}), traffic {canary_percent}",
                self.replicas,
                format_percent(percent_of(*pods, self.replicas))
            ),
            Step::RestoreRoute => {
                "set the route's rules back exactly as they were before the rollout".to_string()
            }
            Step::RemoveRevisionServices => format!(
                "remove the Services {0}-stable and {0}-canary",
                self.statefulset
            ),
            Step::MirrorRoute { percent } => format!(
                "mirror {} of the route's requests to the shadow's Service (users get stable's answers only)",
                percent.map_or_else(|| "every one".to_string(), |p| p.to_string())
            ),
            Step::PreviewRoute => {
                "route requests with the preview header to green's preview Service (the rest still to blue)".to_string()
            }
            Step::SwitchRoute => {
                "switch the route to green's preview Service, in one write".to_string()
            }
            Step::Pause {
                wait: PauseSpec::UntilPromote,
            } => "pause until `rollout promote`".to_string(),
            Step::Pause {
                wait: PauseSpec::For(d),
            } => format!("pause for {d}"),
        }
    }

    /// Pods on the target revision once steps `..end` are done, as far as the plan knows.
    pub fn updated_after(&self, end: usize) -> Option<u32> {
        self.steps[..end.min(self.steps.len())]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::SetPartition { updated, .. } => Some(*updated),
                _ => None,
            })
    }

    /// The share of requests the route sends to the canary once steps `..end` are done, for a
    /// rollout through an HTTPRoute (`None` without one, or once the route has its own rules
    /// back).
    pub fn route_percent_after(&self, end: usize) -> Option<Percent> {
        self.steps[..end.min(self.steps.len())]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::SetRouteWeights { canary_percent, .. } => Some(Some(*canary_percent)),
                Step::RestoreRoute => Some(None),
                _ => None,
            })
            .flatten()
    }

    /// The pods released by steps `..end` whose gate has not run in those steps: a resumed run
    /// must gate them before going on.
    pub fn ungated_before(&self, end: usize) -> Vec<u32> {
        let mut pending: Vec<u32> = Vec::new();
        for step in &self.steps[..end.min(self.steps.len())] {
            match step {
                Step::SetPartition { ordinals, .. } => pending.extend(ordinals),
                Step::Gate {
                    ordinals,
                    set: None,
                } => pending.retain(|o| !ordinals.contains(o)),
                _ => {}
            }
        }
        pending
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} rollout of StatefulSet {} ({} replicas, {})",
            self.strategy, self.statefulset, self.replicas, self.pod_management_policy
        )?;
        let width = self.steps.len().to_string().len();
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "  {:>width$}. {}", i + 1, self.describe_step(step))?;
        }
        if self.steps.is_empty() {
            writeln!(f, "  nothing to do")?;
        }
        if !self.notes.is_empty() {
            writeln!(f, "notes:")?;
            for note in &self.notes {
                writeln!(f, "  - {note}")?;
            }
        }
        Ok(())
    }
}

/// `web-bg1-2, web-bg1-1, web-bg1-0` (or a range) for pods of another set.
fn describe_set_pods(set: &str, ordinals: &[u32]) -> String {
    match ordinals {
        [] => "no pod".to_string(),
        [first, .., last] if ordinals.len() > MAX_LISTED_PODS => {
            format!("{set}-{first} ... {set}-{last} ({} pods)", ordinals.len())
        }
        _ => ordinals
            .iter()
            .map(|o| format!("{set}-{o}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn percent_of(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    f64::from(part) * 100.0 / f64::from(whole)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::duration::HumanDuration;
    use crate::model::weight::{weight_to_pods, Percent};

    fn sample() -> Plan {
        Plan {
            statefulset: "web".into(),
            strategy: StrategyKind::Canary,
            replicas: 5,
            ordinal_start: 0,
            pod_management_policy: PodManagementPolicy::Parallel,
            steps: vec![
                Step::SetTemplateAndFreeze { partition: 5 },
                Step::SetPartition {
                    partition: 4,
                    ordinals: vec![4],
                    updated: 1,
                    weight: Some(weight_to_pods(
                        Percent::new(20).unwrap_or(Percent::HUNDRED),
                        5,
                    )),
                },
                Step::Gate {
                    ordinals: vec![4],
                    set: None,
                },
                Step::Pause {
                    wait: PauseSpec::UntilPromote,
                },
                Step::SetPartition {
                    partition: 0,
                    ordinals: vec![3, 2, 1, 0],
                    updated: 5,
                    weight: None,
                },
                Step::Gate {
                    ordinals: vec![3, 2, 1, 0],
                    set: None,
                },
                Step::Pause {
                    wait: PauseSpec::For(HumanDuration::from_secs(90)),
                },
            ],
            notes: vec!["a note".into()],
        }
    }

    #[test]
    fn text_rendering() {
        let text = sample().to_string();
        let expected = "\
canary rollout of StatefulSet web (5 replicas, Parallel)
  1. set the new pod template with partition 5 (no pod moves yet)
  2. lower partition to 4: web-4 moves to the new version; 1 of 5 pods (20%) on it
  3. gate web-4
  4. pause until `rollout promote`
  5. lower partition to 0: web-3, web-2, web-1, web-0 move to the new version; 5 of 5 pods (100%) on it
  6. gate web-3, web-2, web-1, web-0
  7. pause for 1m 30s
notes:
  - a note
";
        assert_eq!(text, expected);
    }

    #[test]
    fn long_pod_lists_are_shortened() {
        let plan = sample();
        let ordinals: Vec<u32> = (50..100).rev().collect();
        assert_eq!(plan.describe_pods(&ordinals), "web-99 ... web-50 (50 pods)");
        assert_eq!(plan.describe_pods(&[]), "no pod");
    }

    #[test]
    fn json_round_trip_and_shape() {
        let plan = sample();
        let json = serde_json::to_value(&plan).unwrap_or_default();
        assert_eq!(
            json["steps"][0],
            serde_json::json!({"type": "setTemplateAndFreeze", "partition": 5})
        );
        assert_eq!(
            json["steps"][3],
            serde_json::json!({"type": "pause", "wait": "promote"})
        );
        assert_eq!(json["steps"][1]["weight"]["pods"], 1);
        assert_eq!(json["podManagementPolicy"], "Parallel");
        let back: Plan = serde_json::from_value(json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, plan);
    }

    #[test]
    fn progress_queries() {
        let plan = sample();
        let cases = [
            (0, None, vec![]),
            (1, None, vec![]),
            (2, Some(1), vec![4]),
            (3, Some(1), vec![]),
            (5, Some(5), vec![3, 2, 1, 0]),
            (6, Some(5), vec![]),
            (99, Some(5), vec![]),
        ];
        for (end, updated, ungated) in cases {
            assert_eq!(plan.updated_after(end), updated, "updated after {end}");
            assert_eq!(plan.ungated_before(end), ungated, "ungated before {end}");
        }
    }

    #[test]
    fn policy_from_field() {
        assert_eq!(
            PodManagementPolicy::from_field(Some("Parallel")),
            PodManagementPolicy::Parallel
        );
        assert_eq!(
            PodManagementPolicy::from_field(Some("OrderedReady")),
            PodManagementPolicy::OrderedReady
        );
        assert_eq!(
            PodManagementPolicy::from_field(None),
            PodManagementPolicy::OrderedReady
        );
    }
}
