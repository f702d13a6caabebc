//! Planning the strategies that do not move a partition: blue/green, recreate and shadow.
//!
//! Besides the set itself they need to know its surroundings ([`Surroundings`]: the Services
//! that select its pods, the names already taken), which the executor reads before planning.
//! Everything here is pure: plans, the twin record with the Service selectors a blue/green
//! rollout moves between, and the twin StatefulSet object as a value.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, TypedLocalObjectReference,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::model::plan::{Plan, Step};
use crate::model::strategy::{PauseSpec, StrategyConfig, StrategyParams};
use crate::model::twin::{
    free_twin_name, preview_name, render_selector, selector_for_set, shadow_name, DataMode,
    LiveService, Twin, TwinRole, CREATED_BY_LABEL, HOME_ANNOTATION, REPLACES_ANNOTATION, SET_LABEL,
    SHADOW_OF_LABEL,
};

use super::observed::Observed;
use super::planner::PlanError;
use super::predicates;
use super::predicates::ordinals_released;

/// A Service in the set's namespace, as far as planning cares.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedService {
    pub name: String,
    /// `spec.selector` (empty: selects nothing by itself).
    pub selector: BTreeMap<String, String>,
    /// `clusterIP: None`: a headless Service, the set's DNS, never switched.
    pub headless: bool,
    /// The home set named by the marker on a preview Service `rollout` created
    /// ([`rollout_preview_home`]); `None` on anyone else's Service.
    pub rollout_home: Option<String>,
}

/// The home set a Service was created for by `rollout` (a preview Service carries the set label
/// and the home annotation); `None` for a Service someone else made, which `rollout` must never
/// take over or delete.
pub fn rollout_preview_home(meta: &ObjectMeta) -> Option<String> {
    meta.labels.as_ref()?.get(SET_LABEL)?;
    meta.annotations.as_ref()?.get(HOME_ANNOTATION).cloned()
}

/// What around a set a blue/green or shadow plan depends on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Surroundings {
    /// The set the user names in commands (the set itself unless `rollout` created it).
    pub home: String,
    /// Labels of the set's pod template.
    pub template_labels: BTreeMap<String, String>,
    /// `spec.selector.matchLabels` of the set (green's selector starts from it).
    pub set_selector: BTreeMap<String, String>,
    /// `spec.serviceName` of the set.
    pub service_name: Option<String>,
    /// Every Service of the namespace.
    pub services: Vec<ObservedService>,
    /// Names of the namespace's StatefulSets and PVCs, so a new set reuses none.
    pub sets: Vec<String>,
    pub claims: Vec<String>,
}

impl Surroundings {
    /// The Services whose selector matches the set's pods (empty selectors match nothing).
    fn selecting(&self) -> impl Iterator<Item = &ObservedService> {
        self.services.iter().filter(|s| {
            !s.selector.is_empty()
                && s.selector
                    .iter()
                    .all(|(k, v)| self.template_labels.get(k) == Some(v))
        })
    }
}

/// The live Services of a blue/green rollout: the ones named, or every non-headless Service
/// selecting the pods, each with the selectors it moves between.
fn live_services(
    config_services: &[String],
    observed: &Observed,
    around: &Surroundings,
    green: &str,
) -> Result<Vec<LiveService>, PlanError> {
    let name = &observed.name;
    let selecting: Vec<&ObservedService> = around.selecting().collect();
    let chosen: Vec<&ObservedService> = if config_services.is_empty() {
        let found: Vec<&ObservedService> = selecting
            .iter()
            .copied()
            .filter(|s| !s.headless && Some(&s.name) != around.service_name.as_ref())
            .collect();
        if found.is_empty() {
            return Err(PlanError::NoLiveService {
                statefulset: name.clone(),
                detail: "no Service with a cluster IP selects its pods; give the live Service with --service".into(),
            });
        }
        found
    } else {
        let mut chosen = Vec::new();
        for wanted in config_services {
            let Some(service) = around.services.iter().find(|s| &s.name == wanted) else {
                let candidates: Vec<&str> = selecting
                    .iter()
                    .filter(|s| !s.headless)
                    .map(|s| s.name.as_str())
                    .collect();
                let hint = if candidates.is_empty() {
                    "no Service with a cluster IP selects its pods".to_string()
                } else {
                    format!("Services selecting its pods: {}", candidates.join(", "))
                };
                return Err(PlanError::NoLiveService {
                    statefulset: name.clone(),
                    detail: format!(
                        "--service {wanted}: no such Service in this namespace ({hint})"
                    ),
                });
            };
            if !selecting.iter().any(|s| s.name == service.name) {
                return Err(PlanError::NoLiveService {
                    statefulset: name.clone(),
                    detail: format!(
                        "--service {wanted} selects {}, which does not match the pods of {name}",
                        if service.selector.is_empty() {
                            "nothing".to_string()
                        } else {
                            render_selector(&service.selector)
                        }
                    ),
                });
            }
            chosen.push(service);
        }
        // A Service that selects the pods but is neither pinned nor switched would take green's
        // pods as soon as they are Ready, before any gate or promote. The governing headless
        // Service is left out: green's pods need it for their DNS names.
        let preview = preview_name(&around.home);
        let unlisted: Vec<&str> = selecting
            .iter()
            .filter(|s| !s.headless && Some(&s.name) != around.service_name.as_ref())
            .filter(|s| !(s.name == preview && s.rollout_home.as_ref() == Some(&around.home)))
            .filter(|s| !config_services.contains(&s.name))
            .map(|s| s.name.as_str())
            .collect();
        if !unlisted.is_empty() {
            let all: Vec<&str> = config_services
                .iter()
                .map(String::as_str)
                .chain(unlisted.iter().copied())
                .collect();
            return Err(PlanError::UnlistedServices {
                statefulset: name.clone(),
                named: config_services.join(", "),
                others: match unlisted.as_slice() {
                    [one] => format!("Service {one} also selects"),
                    many => format!("Services {} also select", many.join(", ")),
                },
                flags: all
                    .iter()
                    .map(|s| format!("--service {s}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            });
        }
        chosen
    };
    let labelled = around.template_labels.get(SET_LABEL) == Some(name);
    let revision = observed
        .current_revision
        .as_deref()
        .or(observed.update_revision.as_deref());
    Ok(chosen
        .into_iter()
        .map(|s| LiveService {
            name: s.name.clone(),
            original: s.selector.clone(),
            blue: selector_for_set(&s.selector, name, labelled, revision),
            green: selector_for_set(&s.selector, green, true, None),
        })
        .collect())
}

/// The twin record of a blue/green or shadow rollout (`None` for the other strategies).
pub fn twin_for(
    config: &StrategyConfig,
    observed: &Observed,
    around: &Surroundings,
    template: &serde_json::Value,
) -> Result<Option<Twin>, PlanError> {
    match &config.params {
        StrategyParams::BlueGreen(p) => {
            let preview = preview_name(&around.home);
            if let Some(taken) = around.services.iter().find(|s| s.name == preview) {
                if taken.rollout_home.as_ref() != Some(&around.home) {
                    return Err(PlanError::PreviewServiceTaken {
                        statefulset: observed.name.clone(),
                        service: preview,
                    });
                }
            }
            refuse_claim_deletion(
                config,
                observed,
                "scaling it to 0 after the switch (blue/green's last step)",
            )?;
            let green = free_twin_name(&around.home, &around.sets, &around.claims);
            check_twin_name(config, observed, &around.home, &green)?;
            let services = live_services(&p.services, observed, around, &green)?;
            let green_labels = twin_pod_labels(
                template_labels(template),
                &twin_selector(&around.set_selector, &green),
                &green,
            );
            for service in &services {
                let matches = service
                    .green
                    .iter()
                    .all(|(k, v)| green_labels.get(k) == Some(v));
                if !matches {
                    return Err(PlanError::GreenUnselected {
                        statefulset: observed.name.clone(),
                        service: service.name.clone(),
                        selector: render_selector(&service.green),
                        labels: render_selector(&green_labels),
                    });
                }
            }
            Ok(Some(Twin {
                role: TwinRole::Green,
                preview: Some(preview),
                set: green,
                home: around.home.clone(),
                services,
                data: p.data,
                keep_data: p.keep_data,
                template: template.clone(),
            }))
        }
        StrategyParams::Shadow(p) => {
            let shadow = shadow_name(&around.home, &around.sets, &around.claims);
            check_twin_name(config, observed, &around.home, &shadow)?;
            // Mirrored through a route: the gateway copies requests to a Service of the
            // shadow's own, made and removed with it as blue/green's preview is.
            let preview = config.traffic.as_ref().map(|_| preview_name(&around.home));
            if let Some(preview) = &preview {
                if let Some(taken) = around.services.iter().find(|s| &s.name == preview) {
                    if taken.rollout_home.as_ref() != Some(&around.home) {
                        return Err(PlanError::PreviewServiceTaken {
                            statefulset: observed.name.clone(),
                            service: preview.clone(),
                        });
                    }
                }
            }
            Ok(Some(Twin {
                role: TwinRole::Shadow,
                set: shadow,
                home: around.home.clone(),
                services: Vec::new(),
                preview,
                data: DataMode::Fresh,
                keep_data: p.keep_data,
                template: template.clone(),
            }))
        }
        _ => Ok(None),
    }
}

/// The longest StatefulSet name whose pods' `controller-revision-hash` label (the name, a dash
/// and a hash of up to 10 characters) stays within a label value's 63 characters.
pub const MAX_SET_NAME: usize = 52;

/// Refuses a twin name the StatefulSet controller could not work with: the set would be
/// created, and then no pod of it, leaving a rollout to time out.
fn check_twin_name(
    config: &StrategyConfig,
    observed: &Observed,
    home: &str,
    twin: &str,
) -> Result<(), PlanError> {
    if twin.len() <= MAX_SET_NAME {
        return Ok(());
    }
    let suffix = twin.len().saturating_sub(home.len());
    Err(PlanError::TwinNameTooLong {
        statefulset: observed.name.clone(),
        strategy: config.kind().as_str(),
        twin: twin.to_string(),
        max_home: MAX_SET_NAME.saturating_sub(suffix),
    })
}

/// Refuses a strategy that scales the set to 0 when the StatefulSet controller would then
/// delete the set's PVCs (`whenScaled: Delete`): the data of every pod would be lost.
fn refuse_claim_deletion(
    config: &StrategyConfig,
    observed: &Observed,
    why: &'static str,
) -> Result<(), PlanError> {
    if observed.claims_deleted_when_scaled {
        return Err(PlanError::ClaimsDeletedWhenScaled {
            statefulset: observed.name.clone(),
            strategy: config.kind().as_str(),
            why,
        });
    }
    Ok(())
}

/// The labels of a pod template given as JSON (none when it has none or they cannot be read).
fn template_labels(template: &serde_json::Value) -> BTreeMap<String, String> {
    template
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

/// A twin's selector: `base` (blue's for green, nothing for a shadow) with the set label.
fn twin_selector(base: &BTreeMap<String, String>, set: &str) -> BTreeMap<String, String> {
    let mut selector = base.clone();
    selector.insert(SET_LABEL.to_string(), set.to_string());
    selector
}

/// A twin's pod labels: `base` (the new template's for green) with the set label and the
/// selector's labels, which win (a StatefulSet's selector must match its pods).
fn twin_pod_labels(
    mut base: BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
    set: &str,
) -> BTreeMap<String, String> {
    base.insert(SET_LABEL.to_string(), set.to_string());
    for (k, v) in selector {
        base.insert(k.clone(), v.clone());
    }
    base
}

/// Every ordinal of a set of `replicas` pods, highest first.
fn all_ordinals(replicas: u32, start: u32) -> Vec<u32> {
    ordinals_released(replicas, start, replicas, 0)
}

/// The plan of a recreate rollout: down to 0, the new template, back up, one gate on all.
pub fn plan_recreate(config: &StrategyConfig, observed: &Observed) -> Result<Plan, PlanError> {
    refuse_claim_deletion(
        config,
        observed,
        "scaling it to 0 (recreate's first step, and its rollback)",
    )?;
    let replicas = observed.replicas;
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    if replicas > 0 {
        steps.push(Step::Scale {
            set: observed.name.clone(),
            replicas: 0,
        });
    }
    steps.push(Step::SetTemplate);
    if replicas > 0 {
        steps.push(Step::Scale {
            set: observed.name.clone(),
            replicas,
        });
        if config.gates.any() {
            steps.push(Step::gate(all_ordinals(replicas, observed.ordinal_start)));
        }
        notes.push(format!(
            "{} is down from the first step until its first new pod is Ready: this is scheduled downtime, and the output reports how long it was",
            observed.name
        ));
    } else {
        notes.push(format!(
            "{} has 0 replicas: only the template changes",
            observed.name
        ));
    }
    Ok(Plan {
        statefulset: observed.name.clone(),
        strategy: config.kind(),
        replicas,
        ordinal_start: observed.ordinal_start,
        pod_management_policy: observed.pod_management_policy,
        steps,
        notes,
    })
}

/// The plan of a blue/green or shadow rollout with its twin.
pub fn plan_twin(config: &StrategyConfig, observed: &Observed, twin: &Twin) -> Plan {
    let replicas = observed.replicas;
    let mut steps = Vec::new();
    let mut notes = Vec::new();
    let http = config.gates.http.enabled;
    match &config.params {
        StrategyParams::BlueGreen(p) => {
            // Pinned by blue's revision, the live Services would lose their endpoints if
            // someone else's template change (a `kubectl rollout restart`) moved blue's pods:
            // blue's partition holds them on that revision until the rollout ends.
            let pinned = twin.services.iter().any(|s| s.blue != s.original);
            if pinned {
                steps.push(Step::HoldRevision {
                    partition: replicas,
                });
                steps.push(Step::PinTraffic);
            }
            steps.push(Step::CreateTwin {
                set: twin.set.clone(),
                replicas,
            });
            if config.gates.any() {
                steps.push(Step::Gate {
                    ordinals: all_ordinals(replicas, 0),
                    set: Some(twin.set.clone()),
                });
            }
            if let (true, Some(preview)) = (http, twin.preview.as_ref()) {
                steps.push(Step::GateService {
                    service: preview.clone(),
                });
            }
            let route = config.traffic.as_ref();
            if route.is_some_and(|t| t.canary_header.is_some()) {
                // Testers reach green by the header while every other request stays on blue.
                steps.push(Step::PreviewRoute);
            }
            if !p.auto_promote {
                steps.push(Step::Pause {
                    wait: PauseSpec::UntilPromote,
                });
            }
            if route.is_some() {
                // The gateway moves every request at once, on one write of the route; the
                // live Services follow (for clients that do not go through the gateway), and
                // once they select green the route gets its own rules back, to the live
                // Service, and green's preview Service goes.
                steps.push(Step::SwitchRoute);
                steps.push(Step::SwitchTraffic);
                steps.push(Step::RestoreRoute);
                steps.push(Step::RemovePreview);
            } else {
                steps.push(Step::SwitchTraffic);
            }
            if http {
                for service in &twin.services {
                    steps.push(Step::GateService {
                        service: service.name.clone(),
                    });
                }
            }
            if !p.scale_down_delay.get().is_zero() {
                steps.push(Step::Pause {
                    wait: PauseSpec::For(p.scale_down_delay),
                });
            }
            steps.push(Step::Scale {
                set: observed.name.clone(),
                replicas: 0,
            });
            if pinned {
                steps.push(Step::ReleaseRevision);
            }
            notes.push(match twin.data {
                DataMode::Fresh => format!(
                    "{} starts with new, empty volumes (--data fresh); --data clone copies each ordinal's volumes from {}",
                    twin.set, observed.name
                ),
                DataMode::Clone => format!(
                    "{}'s volumes are created first as clones of {}'s, ordinal by ordinal (--data clone)",
                    twin.set, observed.name
                ),
            });
            notes.push(format!(
                "live Service(s): {}; preview Service {} selects only {}",
                twin.services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                twin.preview.as_deref().unwrap_or("-"),
                twin.set
            ));
            notes.push(format!(
                "after the switch {} serves and {} goes to 0 replicas (its volumes stay); commands keep using the name {}",
                twin.set, observed.name, twin.home
            ));
            if let Some(traffic) = route {
                let preview = twin.preview.as_deref().unwrap_or("-");
                notes.push(format!(
                    "HTTPRoute {}: {}the switch is one write of the route to {preview}; the route gets its own rules back once the live Service(s) select {}",
                    traffic.route,
                    traffic.canary_header.as_ref().map_or_else(String::new, |pin| format!(
                        "requests with {pin} go to {preview} (green) before the switch; "
                    )),
                    twin.set
                ));
            }
        }
        StrategyParams::Shadow(p) => {
            steps.push(Step::CreateTwin {
                set: twin.set.clone(),
                replicas: p.replicas,
            });
            if config.gates.any() {
                steps.push(Step::Gate {
                    ordinals: all_ordinals(p.replicas, 0),
                    set: Some(twin.set.clone()),
                });
            }
            let mirrored = config.traffic.as_ref();
            if let Some(traffic) = mirrored {
                steps.push(Step::MirrorRoute {
                    percent: traffic.mirror_percent,
                });
            }
            steps.push(Step::Compare {
                set: twin.set.clone(),
            });
            if mirrored.is_some() {
                steps.push(Step::RestoreRoute);
            }
            steps.push(Step::RemoveTwin {
                set: twin.set.clone(),
            });
            notes.push(format!(
                "no live Service selects {}; `rollout promote {} --then rolling|canary ...` while it compares rolls the real set, otherwise it is removed after {}{}",
                twin.set,
                twin.home,
                p.duration,
                if p.keep_data { " (its volumes are kept)" } else { " with its volumes" }
            ));
            if let (Some(traffic), Some(preview)) = (mirrored, twin.preview.as_ref()) {
                notes.push(format!(
                    "HTTPRoute {} copies {} of its requests to Service {preview} (the shadow's pods) while users get stable's answers; the comparison itself still replays its requests to both sides",
                    traffic.route,
                    traffic
                        .mirror_percent
                        .map_or_else(|| "every one".to_string(), |p| p.to_string())
                ));
            }
        }
        _ => {}
    }
    Plan {
        statefulset: observed.name.clone(),
        strategy: config.kind(),
        replicas,
        ordinal_start: observed.ordinal_start,
        pod_management_policy: observed.pod_management_policy,
        steps,
        notes,
    }
}

/// The twin StatefulSet: `blue`'s spec with the new template, its own name, selector and set
/// label, `replicas` pods and no partition. A shadow's pods keep none of blue's labels, so no
/// Service or NetworkPolicy written for blue picks them up.
pub fn twin_statefulset(
    blue: &StatefulSet,
    twin: &Twin,
    replicas: u32,
    rollout_id: &str,
) -> Option<StatefulSet> {
    let blue_name = blue.metadata.name.clone()?;
    let blue_spec = blue.spec.as_ref()?;
    let mut template: PodTemplateSpec = serde_json::from_value(twin.template.clone()).ok()?;
    let base_labels: BTreeMap<String, String> = match twin.role {
        TwinRole::Green => template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default(),
        TwinRole::Shadow => BTreeMap::from([(SHADOW_OF_LABEL.to_string(), twin.home.clone())]),
    };
    let selector = match twin.role {
        TwinRole::Green => twin_selector(
            &blue_spec.selector.match_labels.clone().unwrap_or_default(),
            &twin.set,
        ),
        TwinRole::Shadow => twin_selector(&BTreeMap::new(), &twin.set),
    };
    let pod_labels = twin_pod_labels(base_labels, &selector, &twin.set);
    let meta = template.metadata.get_or_insert_with(ObjectMeta::default);
    meta.labels = Some(pod_labels.clone());
    let mut annotations = BTreeMap::from([(HOME_ANNOTATION.to_string(), twin.home.clone())]);
    if twin.role == TwinRole::Green {
        annotations.insert(REPLACES_ANNOTATION.to_string(), blue_name.clone());
    }
    let mut set_labels = blue.metadata.labels.clone().unwrap_or_default();
    if twin.role == TwinRole::Shadow {
        set_labels = BTreeMap::from([(SHADOW_OF_LABEL.to_string(), twin.home.clone())]);
    }
    set_labels.insert(SET_LABEL.to_string(), twin.set.clone());
    set_labels.insert(CREATED_BY_LABEL.to_string(), label_value(rollout_id));
    let claims = blue_spec.volume_claim_templates.clone().map(|list| {
        list.into_iter()
            .map(|mut c| {
                c.status = None;
                let labels = c.metadata.labels.get_or_insert_with(BTreeMap::new);
                labels.insert(CREATED_BY_LABEL.to_string(), label_value(rollout_id));
                labels.insert(SET_LABEL.to_string(), twin.set.clone());
                c
            })
            .collect()
    });
    Some(StatefulSet {
        metadata: ObjectMeta {
            name: Some(twin.set.clone()),
            namespace: blue.metadata.namespace.clone(),
            labels: Some(set_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector),
                match_expressions: None,
            },
            template,
            service_name: blue_spec.service_name.clone(),
            pod_management_policy: blue_spec.pod_management_policy.clone(),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: None,
            }),
            volume_claim_templates: claims,
            min_ready_seconds: blue_spec.min_ready_seconds,
            revision_history_limit: blue_spec.revision_history_limit,
            persistent_volume_claim_retention_policy: None,
            ordinals: None,
        }),
        status: None,
    })
}

/// Whether an object (a twin set, or one of its claims) carries the mark `rollout` puts on what
/// it creates for the rollout `rollout_id`'s set `set`. The record names the set, but anyone who
/// can patch the StatefulSet can write the record: only the mark lets a run delete an object.
pub fn made_by_rollout(meta: &ObjectMeta, set: &str, rollout_id: &str) -> bool {
    let labels = meta.labels.as_ref();
    labels.and_then(|l| l.get(SET_LABEL)).map(String::as_str) == Some(set)
        && labels.and_then(|l| l.get(CREATED_BY_LABEL)) == Some(&label_value(rollout_id))
}

/// A label value from any text: at most 63 characters of `[A-Za-z0-9._-]`.
fn label_value(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The claims to clone before a green set starts (`--data clone`): for each ordinal and claim
/// template, `<claim>-<green>-<ordinal>` with blue's claim of the same ordinal as `dataSource`.
/// Claims that exist already (in `existing`, the namespace's claims) are left out. A clone asks
/// for at least its source's size (its request or its capacity, when the source was expanded
/// beyond the claim template), since a clone smaller than its source is refused.
pub fn clone_claims(
    blue: &StatefulSet,
    green: &StatefulSet,
    replicas: u32,
    existing: &[PersistentVolumeClaim],
) -> Vec<PersistentVolumeClaim> {
    let (Some(blue_name), Some(green_name)) = (
        blue.metadata.name.as_deref(),
        green.metadata.name.as_deref(),
    ) else {
        return Vec::new();
    };
    let start = predicates::ordinal_start(blue);
    let templates = green
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    let mut claims = Vec::new();
    for i in 0..replicas {
        for template in &templates {
            let Some(claim) = template.metadata.name.as_deref() else {
                continue;
            };
            let name = format!("{claim}-{green_name}-{i}");
            if existing
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some(name.as_str()))
            {
                continue;
            }
            let source = format!("{claim}-{blue_name}-{}", start + i);
            let mut spec = template.spec.clone().unwrap_or_default();
            let source_claim = existing
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(source.as_str()));
            if let Some(size) = clone_size(&spec, source_claim) {
                spec.resources
                    .get_or_insert_with(Default::default)
                    .requests
                    .get_or_insert_with(BTreeMap::new)
                    .insert(STORAGE.to_string(), size);
            }
            spec.data_source = Some(TypedLocalObjectReference {
                api_group: None,
                kind: "PersistentVolumeClaim".into(),
                name: source,
            });
            spec.data_source_ref = None;
            let mut labels = template.metadata.labels.clone().unwrap_or_default();
            for (k, v) in green
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone())
                .unwrap_or_default()
            {
                labels.insert(k, v);
            }
            claims.push(PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(name),
                    labels: Some(labels),
                    ..ObjectMeta::default()
                },
                spec: Some(spec),
                status: None,
            });
        }
    }
    claims
}

const STORAGE: &str = "storage";

/// The storage a clone asks for: the largest of the claim template's request and the source's
/// request and capacity (`None`: keep the template's as it is). Sizes that cannot be read are
/// left out of the comparison.
fn clone_size(
    template: &PersistentVolumeClaimSpec,
    source: Option<&PersistentVolumeClaim>,
) -> Option<Quantity> {
    let requested = |spec: Option<&PersistentVolumeClaimSpec>| {
        spec.and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(STORAGE))
            .cloned()
    };
    let own = requested(Some(template));
    let candidates = [
        own.clone(),
        requested(source.and_then(|c| c.spec.as_ref())),
        source
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.capacity.as_ref())
            .and_then(|c| c.get(STORAGE))
            .cloned(),
    ];
    let largest = candidates
        .into_iter()
        .flatten()
        .filter_map(|q| quantity_value(&q.0).map(|v| (v, q)))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, q)| q);
    match (own, largest) {
        (Some(own), Some(largest)) if quantity_value(&own.0) >= quantity_value(&largest.0) => None,
        (_, largest) => largest,
    }
}

/// The value of a Kubernetes quantity (`10Gi`, `500M`, `1.5e9`, `100m`), for comparing sizes.
fn quantity_value(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => {
            let power: i32 = exponent
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse().ok())?;
            10f64.powi(power)
        }
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::duration::HumanDuration;
    use crate::model::gate::GateSpec;
    use crate::model::strategy::{OnFailure, StrategyFlags, StrategyKind, Timeouts};
    use crate::model::twin::{REVISION_LABEL, SHADOW_OF_LABEL};
    use k8s_openapi::api::apps::v1::StatefulSetSpec;
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config(kind: StrategyKind, flags: StrategyFlags, gates: GateSpec) -> StrategyConfig {
        StrategyConfig::new(
            kind,
            &flags,
            gates,
            Timeouts::default(),
            OnFailure::Rollback,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn observed(replicas: u32) -> Observed {
        Observed {
            name: "web".into(),
            replicas,
            current_revision: Some("web-6c8f".into()),
            update_revision: Some("web-6c8f".into()),
            ..Observed::default()
        }
    }

    fn around(services: Vec<ObservedService>) -> Surroundings {
        Surroundings {
            home: "web".into(),
            template_labels: map(&[("app", "web")]),
            set_selector: map(&[("app", "web")]),
            service_name: Some("web-pods".into()),
            services,
            sets: vec!["web".into()],
            claims: vec!["data-web-0".into()],
        }
    }

    fn service(name: &str, selector: &[(&str, &str)], headless: bool) -> ObservedService {
        ObservedService {
            name: name.into(),
            selector: map(selector),
            headless,
            rollout_home: None,
        }
    }

    fn shape(plan: &Plan) -> Vec<&'static str> {
        plan.steps.iter().map(Step::name).collect()
    }

    #[test]
    fn live_services_are_found_or_named() {
        let services = vec![
            service("web", &[("app", "web")], false),
            service("web-pods", &[("app", "web")], true),
            service("other", &[("app", "other")], false),
            service("empty", &[], false),
        ];
        let bg = config(
            StrategyKind::BlueGreen,
            StrategyFlags::default(),
            GateSpec::default(),
        );
        let twin = twin_for(
            &bg,
            &observed(3),
            &around(services.clone()),
            &serde_json::json!({}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("a twin"));
        assert_eq!(twin.set, "web-bg1");
        assert_eq!(twin.preview.as_deref(), Some("web-preview"));
        let names: Vec<&str> = twin.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["web"],
            "headless, unrelated and empty selectors are left out"
        );
        let live = &twin.services[0];
        assert_eq!(live.original, map(&[("app", "web")]));
        assert_eq!(
            live.blue,
            map(&[("app", "web"), (REVISION_LABEL, "web-6c8f")])
        );
        assert_eq!(live.green, map(&[("app", "web"), (SET_LABEL, "web-bg1")]));

        let cases: Vec<(Vec<String>, Vec<ObservedService>, &str)> = vec![
            (
                vec![],
                vec![service("web-pods", &[("app", "web")], true)],
                "no Service with a cluster IP",
            ),
            (
                vec!["nope".into()],
                services.clone(),
                "--service nope: no such Service in this namespace (Services selecting its pods: web)",
            ),
            (
                vec!["other".into()],
                services.clone(),
                "does not match the pods of web",
            ),
        ];
        for (named, services, fragment) in cases {
            let flags = StrategyFlags {
                services: named,
                ..StrategyFlags::default()
            };
            let bg = config(StrategyKind::BlueGreen, flags, GateSpec::default());
            let err = twin_for(&bg, &observed(3), &around(services), &serde_json::json!({}))
                .expect_err(fragment);
            assert!(err.to_string().contains(fragment), "{err}");
        }
    }

    fn route_traffic(header: Option<&str>) -> Box<crate::model::route::RouteTraffic> {
        Box::new(crate::model::route::RouteTraffic {
            route: "web".into(),
            namespace: None,
            canary_header: header.map(|h| h.parse().unwrap_or_else(|e| panic!("{e}"))),
            mirror_percent: None,
        })
    }

    #[test]
    fn blue_green_plans() {
        let services = vec![service("web", &[("app", "web")], false)];
        let cases: Vec<(StrategyFlags, bool, Vec<&str>)> = vec![
            (
                StrategyFlags::default(),
                true,
                vec![
                    "pin",
                    "create",
                    "gate",
                    "gate-service",
                    "pause",
                    "switch",
                    "gate-service",
                    "pause",
                    "scale",
                ],
            ),
            (
                StrategyFlags {
                    auto_promote: Some(true),
                    scale_down_delay: Some(HumanDuration::from_secs(0)),
                    ..StrategyFlags::default()
                },
                true,
                vec![
                    "pin",
                    "create",
                    "gate",
                    "gate-service",
                    "switch",
                    "gate-service",
                    "scale",
                ],
            ),
            (
                StrategyFlags {
                    auto_promote: Some(true),
                    ..StrategyFlags::default()
                },
                false,
                vec!["pin", "create", "switch", "pause", "scale"],
            ),
            // Through a route: the switch is the route's, the Services follow, the route
            // gets its own rules back and the preview goes; a header previews green first.
            (
                StrategyFlags {
                    traffic: Some(route_traffic(None)),
                    ..StrategyFlags::default()
                },
                true,
                vec![
                    "pin",
                    "create",
                    "gate",
                    "gate-service",
                    "pause",
                    "route-switch",
                    "switch",
                    "restore-route",
                    "remove-preview",
                    "gate-service",
                    "pause",
                    "scale",
                ],
            ),
            (
                StrategyFlags {
                    traffic: Some(route_traffic(Some("X-Preview=1"))),
                    auto_promote: Some(true),
                    ..StrategyFlags::default()
                },
                false,
                vec![
                    "pin",
                    "create",
                    "route-preview",
                    "route-switch",
                    "switch",
                    "restore-route",
                    "remove-preview",
                    "pause",
                    "scale",
                ],
            ),
        ];
        for (flags, gated, expected) in cases {
            let mut gates = GateSpec::default();
            gates.http.enabled = gated;
            let bg = config(StrategyKind::BlueGreen, flags, gates);
            let twin = twin_for(
                &bg,
                &observed(3),
                &around(services.clone()),
                &serde_json::json!({}),
            )
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a twin"));
            let plan = plan_twin(&bg, &observed(3), &twin);
            // Pinned Services: blue is held on its revision first and released last.
            let mut expected = expected;
            expected.insert(0, "hold-revision");
            expected.push("release-revision");
            assert_eq!(shape(&plan), expected);
            assert_eq!(plan.steps[0], Step::HoldRevision { partition: 3 });
            assert_eq!(
                plan.steps.iter().rev().nth(1),
                Some(&Step::Scale {
                    set: "web".into(),
                    replicas: 0
                })
            );
        }
    }

    #[test]
    fn twin_names_stay_within_what_a_statefulset_may_be_called() {
        // (home name length, strategy, refused): green adds "-bg1" (4), a shadow "-shadow" (7).
        for (len, kind, refused) in [
            (48, StrategyKind::BlueGreen, false),
            (49, StrategyKind::BlueGreen, true),
            (45, StrategyKind::Shadow, false),
            (46, StrategyKind::Shadow, true),
        ] {
            let home = "w".repeat(len);
            let mut around = around(vec![service(&home, &[("app", "web")], false)]);
            around.home = home.clone();
            around.sets = vec![home.clone()];
            let mut seen = observed(3);
            seen.name = home.clone();
            let cfg = config(kind, StrategyFlags::default(), GateSpec::default());
            let result = twin_for(&cfg, &seen, &around, &serde_json::json!({}));
            match (result, refused) {
                (Err(PlanError::TwinNameTooLong { twin, max_home, .. }), true) => {
                    assert!(twin.len() > MAX_SET_NAME, "{twin}");
                    assert_eq!(max_home, MAX_SET_NAME - (twin.len() - len), "{twin}");
                }
                (Ok(Some(t)), false) => assert!(t.set.len() <= MAX_SET_NAME, "{}", t.set),
                (other, _) => panic!("{kind} with a {len}-character name: {other:?}"),
            }
        }
    }

    #[test]
    fn an_earlier_green_is_pinned_by_its_set_label() {
        // The set serving now came from an earlier blue/green: its pods carry the set label and
        // the live selector already names it, so nothing needs pinning.
        let mut around = around(vec![service(
            "web",
            &[("app", "web"), (SET_LABEL, "web-bg1")],
            false,
        )]);
        around.home = "web".into();
        around.template_labels = map(&[("app", "web"), (SET_LABEL, "web-bg1")]);
        around.sets = vec!["web".into(), "web-bg1".into()];
        let mut seen = observed(3);
        seen.name = "web-bg1".into();
        let bg = config(
            StrategyKind::BlueGreen,
            StrategyFlags::default(),
            GateSpec::default(),
        );
        let twin = twin_for(&bg, &seen, &around, &serde_json::json!({}))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a twin"));
        assert_eq!(twin.set, "web-bg2");
        assert_eq!(twin.services[0].blue, twin.services[0].original);
        assert_eq!(
            twin.services[0].green,
            map(&[("app", "web"), (SET_LABEL, "web-bg2")])
        );
        assert_eq!(shape(&plan_twin(&bg, &seen, &twin))[0], "create");
    }

    #[test]
    fn recreate_and_shadow_plans() {
        let rc = config(
            StrategyKind::Recreate,
            StrategyFlags::default(),
            GateSpec::default(),
        );
        let recreate = |o: Observed| {
            plan_recreate(&rc, &o)
                .map(|p| shape(&p).join(" "))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        assert_eq!(recreate(observed(3)), "scale template scale gate");
        assert_eq!(recreate(observed(0)), "template");
        let sh = config(
            StrategyKind::Shadow,
            StrategyFlags::default(),
            GateSpec::default(),
        );
        let twin = twin_for(&sh, &observed(3), &around(vec![]), &serde_json::json!({}))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("a twin"));
        assert_eq!(twin.set, "web-shadow");
        let plan = plan_twin(&sh, &observed(3), &twin);
        assert_eq!(shape(&plan), ["create", "gate", "compare", "remove"]);
        assert_eq!(
            plan.steps[0],
            Step::CreateTwin {
                set: "web-shadow".into(),
                replicas: 1
            }
        );
        let mut taken = around(vec![]);
        taken.claims.push("data-web-shadow-0".into());
        let kept = twin_for(&sh, &observed(3), &taken, &serde_json::json!({}))
            .ok()
            .flatten()
            .map(|t| t.set);
        assert_eq!(
            kept.as_deref(),
            Some("web-shadow2"),
            "kept volumes are left alone"
        );
    }

    fn blue() -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                labels: Some(map(&[("team", "a")])),
                ..ObjectMeta::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(3),
                selector: LabelSelector {
                    match_labels: Some(map(&[("app", "web")])),
                    match_expressions: None,
                },
                service_name: Some("web-pods".into()),
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec::default()),
                    status: None,
                }]),
                ..StatefulSetSpec::default()
            }),
            status: None,
        }
    }

    fn twin(role: TwinRole, set: &str) -> Twin {
        Twin {
            role,
            set: set.into(),
            home: "web".into(),
            services: vec![],
            preview: None,
            data: DataMode::Clone,
            keep_data: false,
            template: serde_json::json!({
                "metadata": {"labels": {"app": "web", "tier": "front"}},
                "spec": {"containers": [{"name": "app", "image": "app:v2"}]}
            }),
        }
    }

    #[test]
    fn green_keeps_the_labels_and_adds_its_own() {
        let green = twin_statefulset(&blue(), &twin(TwinRole::Green, "web-bg1"), 3, "bluegreen-1")
            .unwrap_or_else(|| panic!("a set"));
        let spec = green.spec.clone().unwrap_or_default();
        assert_eq!(green.metadata.name.as_deref(), Some("web-bg1"));
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(
            spec.selector.match_labels,
            Some(map(&[("app", "web"), (SET_LABEL, "web-bg1")]))
        );
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        assert_eq!(
            labels,
            map(&[("app", "web"), ("tier", "front"), (SET_LABEL, "web-bg1")])
        );
        assert_eq!(spec.service_name.as_deref(), Some("web-pods"));
        let annotations = green.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations.get(REPLACES_ANNOTATION).map(String::as_str),
            Some("web")
        );
        assert_eq!(
            annotations.get(HOME_ANNOTATION).map(String::as_str),
            Some("web")
        );
    }

    #[test]
    fn a_shadow_carries_none_of_blues_labels() {
        let shadow = twin_statefulset(
            &blue(),
            &twin(TwinRole::Shadow, "web-shadow"),
            1,
            "shadow-1",
        )
        .unwrap_or_else(|| panic!("a set"));
        let spec = shadow.spec.unwrap_or_default();
        let labels = spec
            .template
            .metadata
            .and_then(|m| m.labels)
            .unwrap_or_default();
        assert_eq!(
            labels,
            map(&[(SET_LABEL, "web-shadow"), (SHADOW_OF_LABEL, "web")]),
            "no Service written for blue (app=web) selects the shadow"
        );
        assert_eq!(spec.replicas, Some(1));
    }

    #[test]
    fn clones_pair_ordinals_and_skip_existing_claims() {
        let green = twin_statefulset(&blue(), &twin(TwinRole::Green, "web-bg1"), 3, "bluegreen-1")
            .unwrap_or_else(|| panic!("a set"));
        let claims = clone_claims(&blue(), &green, 3, &[claim("data-web-bg1-1", None, None)]);
        let pairs: Vec<(String, String)> = claims
            .iter()
            .map(|c| {
                (
                    c.metadata.name.clone().unwrap_or_default(),
                    c.spec
                        .as_ref()
                        .and_then(|s| s.data_source.as_ref())
                        .map(|d| format!("{}/{}", d.kind, d.name))
                        .unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                (
                    "data-web-bg1-0".to_string(),
                    "PersistentVolumeClaim/data-web-0".to_string()
                ),
                (
                    "data-web-bg1-2".to_string(),
                    "PersistentVolumeClaim/data-web-2".to_string()
                ),
            ]
        );
        assert!(claims.iter().all(|c| c
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SET_LABEL))
            .map(String::as_str)
            == Some("web-bg1")));
    }

    fn bluegreen_with(flags: StrategyFlags) -> StrategyConfig {
        config(StrategyKind::BlueGreen, flags, GateSpec::default())
    }

    fn plan_error(
        config: &StrategyConfig,
        seen: &Observed,
        around: &Surroundings,
        template: serde_json::Value,
    ) -> Option<String> {
        twin_for(config, seen, around, &template)
            .err()
            .map(|e| e.to_string())
    }

    #[test]
    fn rollout_marks_the_preview_services_it_makes() {
        let meta = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| ObjectMeta {
            labels: (!labels.is_empty()).then(|| map(labels)),
            annotations: (!annotations.is_empty()).then(|| map(annotations)),
            ..ObjectMeta::default()
        };
        let cases = [
            (
                meta(&[(SET_LABEL, "web-bg1")], &[(HOME_ANNOTATION, "web")]),
                Some("web"),
            ),
            (meta(&[], &[(HOME_ANNOTATION, "web")]), None),
            (meta(&[(SET_LABEL, "web-bg1")], &[]), None),
            (meta(&[("app", "web")], &[("owner", "me")]), None),
            (meta(&[], &[]), None),
        ];
        for (meta, home) in cases {
            assert_eq!(rollout_preview_home(&meta).as_deref(), home, "{meta:?}");
        }
    }

    #[test]
    fn a_preview_name_held_by_someone_elses_service_is_refused() {
        let live = service("web", &[("app", "web")], false);
        let preview = |home: Option<&str>| ObservedService {
            rollout_home: home.map(String::from),
            ..service("web-preview", &[("app", "mine")], false)
        };
        // (the Service named web-preview, refused)
        let cases = [
            (None, false),
            (Some(preview(None)), true),
            (Some(preview(Some("other"))), true),
            (Some(preview(Some("web"))), false),
        ];
        for (taken, refused) in cases {
            let services: Vec<ObservedService> =
                std::iter::once(live.clone()).chain(taken.clone()).collect();
            let err = plan_error(
                &bluegreen_with(StrategyFlags::default()),
                &observed(3),
                &around(services),
                serde_json::json!({}),
            );
            assert_eq!(err.is_some(), refused, "{taken:?}: {err:?}");
            if let Some(err) = err {
                assert!(
                    err.contains("web-preview") && err.contains("rename or delete"),
                    "{err}"
                );
            }
        }
        // A shadow makes no preview Service.
        let shadow = config(
            StrategyKind::Shadow,
            StrategyFlags::default(),
            GateSpec::default(),
        );
        let services = vec![live, preview(None)];
        assert_eq!(
            plan_error(
                &shadow,
                &observed(3),
                &around(services),
                serde_json::json!({})
            ),
            None
        );
    }

    #[test]
    fn a_shadow_mirrored_through_a_route_has_a_service_and_the_route_around_its_comparison() {
        let flags = StrategyFlags {
            traffic: Some(Box::new(crate::model::route::RouteTraffic {
                route: "web".into(),
                namespace: None,
                canary_header: None,
                mirror_percent: crate::model::weight::Percent::new(10).ok(),
            })),
            ..StrategyFlags::default()
        };
        let shadow = config(StrategyKind::Shadow, flags, GateSpec::default());
        let live = service("web", &[("app", "web")], false);
        let twin = twin_for(
            &shadow,
            &observed(3),
            &around(vec![live.clone()]),
            &serde_json::json!({}),
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no twin"));
        assert_eq!(twin.preview.as_deref(), Some("web-preview"));
        let plan = plan_twin(&shadow, &observed(3), &twin);
        assert_eq!(
            shape(&plan),
            [
                "create",
                "gate",
                "route-mirror",
                "compare",
                "restore-route",
                "remove"
            ]
        );
        assert_eq!(
            plan.steps[2],
            Step::MirrorRoute {
                percent: crate::model::weight::Percent::new(10).ok()
            }
        );
        // Someone else's Service of that name is refused, as blue/green's preview is.
        let taken = service("web-preview", &[("app", "other")], false);
        let err = plan_error(
            &shadow,
            &observed(3),
            &around(vec![live, taken]),
            serde_json::json!({}),
        );
        assert!(err.is_some_and(|e| e.contains("web-preview")));
    }

    #[test]
    fn services_selecting_the_pods_must_all_be_named() {
        let named = |names: &[&str]| {
            bluegreen_with(StrategyFlags {
                services: names.iter().map(|n| n.to_string()).collect(),
                ..StrategyFlags::default()
            })
        };
        let web = service("web", &[("app", "web")], false);
        let own_preview = ObservedService {
            rollout_home: Some("web".into()),
            ..service("web-preview", &[("app", "web")], false)
        };
        // (Services besides `web`, the --service flags, a fragment of the error or None)
        let cases: Vec<(Vec<ObservedService>, Vec<&str>, Option<&str>)> = vec![
            (vec![], vec!["web"], None),
            (
                vec![service("web-extra", &[("app", "web")], false)],
                vec!["web"],
                Some("Service web-extra also selects its pods"),
            ),
            (
                vec![
                    service("web-extra", &[("app", "web")], false),
                    service("web-lb", &[], false),
                    service("web-admin", &[("app", "web")], false),
                ],
                vec!["web"],
                Some("Services web-extra, web-admin also select"),
            ),
            (
                vec![service("web-extra", &[("app", "web")], false)],
                vec!["web"],
                Some("--service web --service web-extra"),
            ),
            (
                vec![service("web-extra", &[("app", "web")], false)],
                vec!["web", "web-extra"],
                None,
            ),
            // The governing headless Service and any other headless one give pods DNS names and
            // are left alone.
            (
                vec![service("web-pods", &[("app", "web")], true)],
                vec!["web"],
                None,
            ),
            (
                vec![service("web-dns", &[("app", "web")], true)],
                vec!["web"],
                None,
            ),
            (
                vec![service("other", &[("app", "other")], false)],
                vec!["web"],
                None,
            ),
            (vec![own_preview], vec!["web"], None),
        ];
        for (others, flags, fragment) in cases {
            let services: Vec<ObservedService> =
                std::iter::once(web.clone()).chain(others.clone()).collect();
            let err = plan_error(
                &named(&flags),
                &observed(3),
                &around(services),
                serde_json::json!({}),
            );
            match (fragment, err) {
                (None, None) => {}
                (Some(fragment), Some(err)) => assert!(err.contains(fragment), "{err}"),
                (fragment, err) => {
                    panic!("{others:?} {flags:?}: expected {fragment:?}, got {err:?}")
                }
            }
        }
    }

    #[test]
    fn every_live_service_must_select_green_pods_after_the_switch() {
        let template =
            |labels: serde_json::Value| serde_json::json!({"metadata": {"labels": labels}});
        // (the live Service's selector, the new template's labels, a fragment of the error)
        type Case = (
            Vec<(&'static str, &'static str)>,
            serde_json::Value,
            Option<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                vec![("app", "web")],
                serde_json::json!({"app": "web"}),
                None,
            ),
            (
                vec![("app", "web"), ("version", "v1")],
                serde_json::json!({"app": "web", "version": "v1"}),
                None,
            ),
            (
                vec![("app", "web"), ("version", "v1")],
                serde_json::json!({"app": "web", "version": "v2"}),
                Some("Service web would select app=web,rollout.dev/set=web-bg1,version=v1"),
            ),
            (
                vec![("app", "web"), ("tier", "front")],
                serde_json::json!({"app": "web"}),
                Some("its pods carry app=web,rollout.dev/set=web-bg1"),
            ),
            // Labels of the set's selector are put on green's pods whatever the template says.
            (
                vec![("app", "web")],
                serde_json::json!({"version": "v2"}),
                None,
            ),
            (vec![("app", "web")], serde_json::json!(null), None),
        ];
        for (selector, labels, fragment) in cases {
            let mut around = around(vec![service("web", &selector, false)]);
            around.template_labels = map(&selector);
            let err = plan_error(
                &bluegreen_with(StrategyFlags::default()),
                &observed(3),
                &around,
                template(labels.clone()),
            );
            match (fragment, err) {
                (None, None) => {}
                (Some(fragment), Some(err)) => {
                    assert!(err.contains(fragment), "{err}");
                    assert!(err.contains("serve no pod"), "{err}");
                }
                (fragment, err) => {
                    panic!("{selector:?} {labels}: expected {fragment:?}, got {err:?}")
                }
            }
        }
    }

    #[test]
    fn strategies_that_scale_to_zero_refuse_sets_whose_claims_go_with_their_pods() {
        let deleting = Observed {
            claims_deleted_when_scaled: true,
            ..observed(3)
        };
        let around = around(vec![service("web", &[("app", "web")], false)]);
        let rc = config(
            StrategyKind::Recreate,
            StrategyFlags::default(),
            GateSpec::default(),
        );
        let recreate = plan_recreate(&rc, &deleting)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let bg = plan_error(
            &bluegreen_with(StrategyFlags::default()),
            &deleting,
            &around,
            serde_json::json!({}),
        );
        for err in [recreate.err(), bg] {
            let err = err.unwrap_or_else(|| panic!("refused"));
            assert!(
                err.contains("whenScaled is Delete")
                    && err.contains("delete its pods' PVCs")
                    && err.contains("to Retain"),
                "{err}"
            );
        }
        assert!(plan_recreate(&rc, &observed(3)).is_ok());
        // A shadow never scales the set down.
        let sh = config(
            StrategyKind::Shadow,
            StrategyFlags::default(),
            GateSpec::default(),
        );
        assert_eq!(
            plan_error(&sh, &deleting, &around, serde_json::json!({})),
            None
        );
    }

    /// A claim named `name` asking for `request` with `capacity` in its status.
    fn claim(name: &str, request: Option<&str>, capacity: Option<&str>) -> PersistentVolumeClaim {
        let storage = |q: Option<&str>| {
            q.map(|q| BTreeMap::from([(STORAGE.to_string(), Quantity(q.to_string()))]))
        };
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(k8s_openapi::api::core::v1::VolumeResourceRequirements {
                    requests: storage(request),
                    ..Default::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: capacity.map(
                |_| k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
                    capacity: storage(capacity),
                    ..Default::default()
                },
            ),
        }
    }

    #[test]
    fn quantities_compare_by_value() {
        let cases = [
            ("1Gi", Some(1073741824.0)),
            ("500Mi", Some(524288000.0)),
            ("2G", Some(2e9)),
            ("1.5Gi", Some(1.5 * 1073741824.0)),
            ("1e9", Some(1e9)),
            ("100m", Some(0.1)),
            ("123", Some(123.0)),
            ("1Zi", None),
            ("", None),
            ("Gi", None),
        ];
        for (text, value) in cases {
            assert_eq!(quantity_value(text), value, "{text}");
        }
    }

    #[test]
    fn a_clone_is_never_smaller_than_its_source() {
        let template = |size: Option<&str>| claim("data", size, None).spec.unwrap_or_default();
        // (template request, source request, source capacity, the clone's request)
        let cases = [
            (Some("1Gi"), None, None, "1Gi"),
            (Some("1Gi"), Some("1Gi"), Some("1Gi"), "1Gi"),
            (Some("1Gi"), Some("5Gi"), Some("5Gi"), "5Gi"),
            (Some("1Gi"), Some("5Gi"), None, "5Gi"),
            // The provisioner gave more than was asked.
            (Some("1Gi"), Some("1Gi"), Some("2Gi"), "2Gi"),
            (Some("1Gi"), Some("2000Mi"), Some("1Gi"), "2000Mi"),
            // The template is larger than the source: the template's size stays.
            (Some("10Gi"), Some("5Gi"), Some("5Gi"), "10Gi"),
            (None, Some("3Gi"), None, "3Gi"),
            // An unreadable size is left out of the comparison.
            (Some("1Gi"), Some("lots"), Some("2Gi"), "2Gi"),
        ];
        for (own, request, capacity, want) in cases {
            let source = claim("data-web-0", request, capacity);
            let got = clone_size(&template(own), Some(&source))
                .or_else(|| own.map(|o| Quantity(o.to_string())));
            assert_eq!(
                got.map(|q| q.0).as_deref(),
                Some(want),
                "{own:?} {request:?} {capacity:?}"
            );
        }
        assert_eq!(clone_size(&template(Some("1Gi")), None), None);

        // Through clone_claims: blue's data-web-1 was expanded to 8Gi.
        let mut blue = blue();
        if let Some(t) = blue
            .spec
            .as_mut()
            .and_then(|s| s.volume_claim_templates.as_mut())
            .and_then(|t| t.first_mut())
        {
            t.spec = claim("data", Some("1Gi"), None).spec;
        }
        let green = twin_statefulset(&blue, &twin(TwinRole::Green, "web-bg1"), 3, "bluegreen-1")
            .unwrap_or_else(|| panic!("a set"));
        let existing = [
            claim("data-web-0", Some("1Gi"), Some("1Gi")),
            claim("data-web-1", Some("8Gi"), Some("8Gi")),
        ];
        let sizes: Vec<(String, String)> = clone_claims(&blue, &green, 3, &existing)
            .into_iter()
            .map(|c| {
                let size = c
                    .spec
                    .and_then(|s| s.resources)
                    .and_then(|r| r.requests)
                    .and_then(|r| r.get(STORAGE).map(|q| q.0.clone()))
                    .unwrap_or_default();
                (c.metadata.name.unwrap_or_default(), size)
            })
            .collect();
        assert_eq!(
            sizes,
            [
                ("data-web-bg1-0".to_string(), "1Gi".to_string()),
                ("data-web-bg1-1".to_string(), "8Gi".to_string()),
                ("data-web-bg1-2".to_string(), "1Gi".to_string()),
            ]
        );
    }

    #[test]
    fn only_objects_marked_for_this_rollout_count_as_made_by_it() {
        let meta = |labels: &[(&str, &str)]| ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        };
        let id = "bluegreen-20261203-7";
        let cases = [
            (
                meta(&[(SET_LABEL, "web-bg1"), (CREATED_BY_LABEL, id)]),
                true,
            ),
            // A set the record names but rollout never made (planted in a record).
            (meta(&[("app", "db")]), false),
            (meta(&[(SET_LABEL, "web-bg1")]), false),
            (
                meta(&[(SET_LABEL, "web-bg1"), (CREATED_BY_LABEL, "shadow-1-2")]),
                false,
            ),
            (
                meta(&[(SET_LABEL, "web-bg2"), (CREATED_BY_LABEL, id)]),
                false,
            ),
            (ObjectMeta::default(), false),
        ];
        for (m, want) in cases {
            assert_eq!(made_by_rollout(&m, "web-bg1", id), want, "{:?}", m.labels);
        }
    }
}
