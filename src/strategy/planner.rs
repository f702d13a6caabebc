//! The planners: strategy settings + the observed StatefulSet -> the steps of a rollout.
//!
//! Every strategy here reduces to a list of cumulative targets (pods on the new revision after
//! each step) and where pauses go; one routine turns that into partition steps, highest ordinals
//! first, each followed by a gate on the pods it released.

use crate::model::plan::{Plan, Step};
use crate::model::steps::StepTarget;
use crate::model::strategy::{
    BatchSize, CanaryParams, PauseSpec, StrategyConfig, StrategyKind, StrategyParams,
};
use crate::model::weight::{weight_to_pods, PodWeight};

use super::observed::Observed;
use super::predicates::ordinals_released;

/// More steps than this would not fit the rollout record.
pub const MAX_STEPS: usize = 1000;

/// Why no plan could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("--bake keeps metric gates running after the last step of a rolling, ramped or canary rollout; {strategy} of StatefulSet {statefulset} has no such last step (use --analysis-interval for its pauses)")]
    BakeNotSupported {
        statefulset: String,
        strategy: &'static str,
    },
    #[error("planning the rollout of StatefulSet {statefulset}: {steps} steps is more than {MAX_STEPS}; use a larger --batch or fewer --steps")]
    TooManySteps { statefulset: String, steps: usize },
    #[error("blue/green of StatefulSet {statefulset} needs a live Service to switch: {detail}")]
    NoLiveService { statefulset: String, detail: String },
    #[error("{strategy} of StatefulSet {statefulset} would create the StatefulSet {twin}, whose name is longer than the 52 characters a StatefulSet may have (its pods' controller-revision-hash label adds up to 11 more and may not pass 63); nothing was changed: give the set a name of at most {max_home} characters")]
    TwinNameTooLong {
        statefulset: String,
        strategy: &'static str,
        twin: String,
        max_home: usize,
    },
    #[error("blue/green of StatefulSet {statefulset} needs the preview Service name {service}, but a Service {service} that rollout did not create exists in this namespace; rollout would point it at the new pods and delete it, so nothing was changed: rename or delete that Service, then run again")]
    PreviewServiceTaken {
        statefulset: String,
        service: String,
    },
    #[error("blue/green of StatefulSet {statefulset} with --service {named}: {others} its pods and would send traffic to the new pods as soon as they are Ready, before the switch; nothing was changed: give every Service that selects these pods with --service ({flags}), or change the others' selectors so they do not select these pods")]
    UnlistedServices {
        statefulset: String,
        /// The Services named with `--service`, comma-separated.
        named: String,
        /// The other Services that select the pods, with the verb (`Service a also selects`).
        others: String,
        /// The `--service` flags that list every one of them.
        flags: String,
    },
    #[error("blue/green of StatefulSet {statefulset}: after the switch Service {service} would select {selector}, which no pod of the new version matches (its pods carry {labels}), so the Service would serve no pod; nothing was changed: keep the labels the Service selects in the new pod template, or change the Service's selector")]
    GreenUnselected {
        statefulset: String,
        service: String,
        selector: String,
        labels: String,
    },
    #[error("{strategy} of StatefulSet {statefulset} refused: its persistentVolumeClaimRetentionPolicy.whenScaled is Delete, so {why} would make the StatefulSet controller delete its pods' PVCs and their data; nothing was changed: set spec.persistentVolumeClaimRetentionPolicy.whenScaled to Retain first, or roll with rolling or canary, which keep every pod on its PVC")]
    ClaimsDeletedWhenScaled {
        statefulset: String,
        strategy: &'static str,
        /// The step that scales the set down.
        why: &'static str,
    },
    #[error("{strategy} of StatefulSet {statefulset} refused: it has 0 replicas, so {why}; nothing was changed: scale it up first (`kubectl scale statefulset/{statefulset} --replicas=N`), then run again")]
    NoReplicas {
        statefulset: String,
        strategy: &'static str,
        why: &'static str,
    },
    #[error("rolling of StatefulSet {statefulset} refused: --batch {batch} is more than its {replicas} replicas, so one batch would move every pod behind a single gate; nothing was changed: give --batch {replicas} or less, or --batch 100% to move every pod in one step on purpose")]
    BatchTooLarge {
        statefulset: String,
        batch: u32,
        replicas: u32,
    },
    #[error("StatefulSet {statefulset} through HTTPRoute {route}: the route's rules send no traffic to a Service that selects the set's pods (they name {backends}); nothing was changed: give the route of this set's Service, or add a backendRef to it in the route")]
    RouteMissesSet {
        statefulset: String,
        route: String,
        backends: String,
    },
    #[error("StatefulSet {statefulset} through HTTPRoute {route}: the route sends traffic to several Services that select the set's pods ({services}), so the rollout cannot tell which to split; nothing was changed: keep one of them in the route")]
    RouteAmbiguous {
        statefulset: String,
        route: String,
        services: String,
    },
    #[error("canary of StatefulSet {statefulset} through an HTTPRoute needs at least 2 replicas (it has {replicas}): the stable Service would have no pod to send the rest of the traffic to; nothing was changed: scale it up first, or roll without --traffic gateway")]
    RouteNeedsTwoPods { statefulset: String, replicas: u32 },
    #[error("{strategy} of StatefulSet {statefulset}: --traffic gateway carries a canary, a blue/green or a shadow, not a {strategy} rollout; nothing was changed: roll without --traffic gateway")]
    RouteOnlyCanary {
        statefulset: String,
        strategy: &'static str,
    },
    #[error("shadow through HTTPRoute {route}: its gateway {gateway} is of GatewayClass {class}, whose status.supportedFeatures does not list {feature}, so it cannot mirror requests to the shadow (it might accept the route and fail the requests); nothing was changed: attach the route to a gateway whose class supports {feature}, or run the shadow without --mirror gateway (rollout replays requests itself)")]
    MirrorUnsupported {
        route: String,
        gateway: String,
        class: String,
        feature: &'static str,
    },
    #[error("HTTPRoute {route} not found in namespace {namespace}; nothing was changed: `kubectl get httproutes -n {namespace}` lists the routes there, and --route names one of them")]
    RouteNotFound { route: String, namespace: String },
    #[error("--route {given}: the HTTPRoute must be in the StatefulSet's namespace {namespace} (rollout creates the per-revision Services there, and a route in another namespace would need a ReferenceGrant); nothing was changed: give a route in {namespace}")]
    RouteOtherNamespace { given: String, namespace: String },
    #[error("HTTPRoute {route} is not accepted by its gateways now: {words}; a rollout through it would fail at its first route write; nothing was changed: fix the route (or its Gateway) until `kubectl get httproute {route} -o yaml` shows Accepted and ResolvedRefs True, then run again")]
    RouteRejected { route: String, words: String },
    #[error("canary of StatefulSet {statefulset} through an HTTPRoute needs the Service name {service}, but a Service {service} that rollout did not create exists in this namespace; nothing was changed: rename or delete that Service, then run again")]
    RevisionServiceTaken {
        statefulset: String,
        service: String,
    },
    #[error("--traffic gateway: the cluster does not serve the Gateway API (no HTTPRoute resource in {group}/v1); nothing was changed: {install}")]
    NoGatewayApi {
        group: &'static str,
        install: &'static str,
    },
    #[error("planning the {strategy} rollout of StatefulSet {statefulset}: its Services and neighbours were not read")]
    SurroundingsMissing {
        statefulset: String,
        strategy: &'static str,
    },
}

/// Whether a rollout with `config` fits a set of `replicas` pods at all, judged before anything
/// is written: a set at 0 replicas has no pod to gate (the new template would reach every pod,
/// ungated, when it is scaled up), and a batch larger than the set is a typo, not a plan.
pub fn check_fits(
    config: &StrategyConfig,
    statefulset: &str,
    replicas: u32,
) -> Result<(), PlanError> {
    if replicas == 0 {
        let why = match config.kind() {
            StrategyKind::Shadow => {
                "there is no stable pod to compare the shadow with, and a promote would give the new template to every pod, ungated, when the set is scaled up"
            }
            _ => {
                "there is no pod to gate: the new template would reach every pod at once, ungated, when the set is scaled up again"
            }
        };
        return Err(PlanError::NoReplicas {
            statefulset: statefulset.to_string(),
            strategy: config.kind().as_str(),
            why,
        });
    }
    if let StrategyParams::Rolling {
        batch: BatchSize::Pods(batch),
        ..
    } = config.params
    {
        if batch > replicas {
            return Err(PlanError::BatchTooLarge {
                statefulset: statefulset.to_string(),
                batch,
                replicas,
            });
        }
    }
    Ok(())
}

/// One cumulative target: after this step `pods` run the new revision.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Target {
    pods: u32,
    weight: Option<PodWeight>,
    /// Pause after this step's gate.
    pause: Option<PauseSpec>,
}

/// Plans a partition rollout (rolling, ramped, canary) of `observed` with `config`.
///
/// When the target template is not applied yet, the plan starts with the freeze write. Targets
/// already reached (a re-run after the partition was lowered) are left out, with a note.
pub fn plan_partition(config: &StrategyConfig, observed: &Observed) -> Result<Plan, PlanError> {
    if !config.kind().uses_partition() {
        return Err(PlanError::SurroundingsMissing {
            statefulset: observed.name.clone(),
            strategy: config.kind().as_str(),
        });
    }
    if let Some(traffic) = &config.traffic {
        return super::route::plan_route_canary(config, observed, traffic);
    }
    let replicas = observed.replicas;
    let mut notes = Vec::new();
    let targets = targets_for(&config.params, replicas, &mut notes);

    let mut steps = Vec::new();
    let released = observed.released();
    if !observed.target_applied {
        steps.push(Step::SetTemplateAndFreeze {
            partition: replicas,
        });
        if observed.update_strategy == "OnDelete" {
            notes.push(format!(
                "{} uses updateStrategy OnDelete; the rollout switches it to RollingUpdate with a partition, and a rollback restores it",
                observed.name
            ));
        }
    } else if released > 0 {
        let skipped = targets.iter().filter(|t| t.pods <= released).count();
        if skipped > 0 {
            notes.push(format!(
                "{released} of {replicas} pods are already released to the new revision; {skipped} step(s) already done are left out"
            ));
        }
    }

    let gate = config.gates.any();
    let mut previous = released;
    for target in targets.iter().filter(|t| t.pods > released) {
        let partition = replicas - target.pods;
        let ordinals = ordinals_released(
            replicas,
            observed.ordinal_start,
            replicas - previous,
            partition,
        );
        steps.push(Step::SetPartition {
            partition,
            ordinals: ordinals.clone(),
            updated: target.pods,
            weight: target.weight,
        });
        if gate {
            steps.push(Step::gate(ordinals));
        }
        if let Some(wait) = target.pause {
            steps.push(Step::Pause { wait });
        }
        previous = target.pods;
    }
    if steps.len() > MAX_STEPS {
        return Err(PlanError::TooManySteps {
            statefulset: observed.name.clone(),
            steps: steps.len(),
        });
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

/// The cumulative targets of a strategy on `replicas` pods, ending at all pods (unless a
/// canary's only step already is all of them).
fn targets_for(params: &StrategyParams, replicas: u32, notes: &mut Vec<String>) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    match params {
        StrategyParams::Rolling { batch, pause } => {
            let size = batch.pods(replicas);
            let mut pods = 0;
            while pods < replicas {
                pods = pods.saturating_add(size).min(replicas);
                targets.push(Target {
                    pods,
                    weight: None,
                    pause: *pause,
                });
            }
        }
        StrategyParams::Ramped { steps, pause } => {
            for (i, step) in steps.iter().enumerate() {
                let pods = match step {
                    StepTarget::Pods(n) if *n > replicas => {
                        notes.push(format!(
                            "step {} asks for {n} pods but there are {replicas} replicas: it updates all of them",
                            i + 1
                        ));
                        replicas
                    }
                    StepTarget::Pods(n) => *n,
                    StepTarget::Percent(p) => weight_to_pods(*p, replicas).pods,
                };
                let weight = match step {
                    StepTarget::Percent(p) => Some(weight_to_pods(*p, replicas)),
                    StepTarget::Pods(_) => None,
                };
                targets.push(Target {
                    pods,
                    weight,
                    pause: *pause,
                });
            }
            finish_at_all_pods(&mut targets, replicas, *pause, notes, "the last step");
        }
        StrategyParams::Canary(CanaryParams::Hold { weight, pause }) => {
            let canary = weight_to_pods(*weight, replicas);
            if canary.pods == replicas && replicas > 0 {
                notes.push(format!(
                    "with {replicas} replica(s), a {weight} canary is every pod; the hold still waits before finishing"
                ));
            }
            targets.push(Target {
                pods: canary.pods,
                weight: Some(canary),
                pause: Some(*pause),
            });
            if canary.pods < replicas {
                targets.push(Target {
                    pods: replicas,
                    weight: None,
                    pause: None,
                });
            }
        }
        StrategyParams::Canary(CanaryParams::Steps { weights, pause }) => {
            for weight in weights {
                let placed = weight_to_pods(*weight, replicas);
                targets.push(Target {
                    pods: placed.pods,
                    weight: Some(placed),
                    pause: *pause,
                });
            }
            finish_at_all_pods(&mut targets, replicas, *pause, notes, "the last weight");
        }
        StrategyParams::BlueGreen(_) | StrategyParams::Recreate | StrategyParams::Shadow(_) => {}
    }
    merge_equal_targets(&mut targets, notes);
    // No pause after the last step: there is nothing left to wait for, except a canary hold that
    // asked for one.
    let hold = matches!(params, StrategyParams::Canary(CanaryParams::Hold { .. }));
    if let Some(last) = targets.last_mut() {
        if !hold || last.weight.is_none() {
            last.pause = None;
        }
    }
    targets
}

fn finish_at_all_pods(
    targets: &mut Vec<Target>,
    replicas: u32,
    pause: Option<PauseSpec>,
    notes: &mut Vec<String>,
    what: &str,
) {
    let last = targets.last().map_or(0, |t| t.pods);
    if last < replicas {
        notes.push(format!(
            "{what} leaves {} of {replicas} pods on the old version: a final step updates them",
            replicas - last
        ));
        targets.push(Target {
            pods: replicas,
            weight: None,
            pause,
        });
    }
}

/// Steps that round to the same pod count as the one before would do nothing: drop them, and
/// say so.
fn merge_equal_targets(targets: &mut Vec<Target>, notes: &mut Vec<String>) {
    let mut merged: Vec<Target> = Vec::with_capacity(targets.len());
    for (i, target) in targets.iter().enumerate() {
        match merged.last_mut() {
            Some(previous) if target.pods <= previous.pods => {
                let asked = target.weight.map_or_else(
                    || format!("{} pods", target.pods),
                    |w| w.requested.to_string(),
                );
                notes.push(format!(
                    "step {} ({asked}) gives {} pod(s), no more than the step before it: merged into it",
                    i + 1,
                    target.pods
                ));
            }
            _ => merged.push(*target),
        }
    }
    *targets = merged;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::duration::HumanDuration;
    use crate::model::gate::GateSpec;
    use crate::model::plan::PodManagementPolicy;
    use crate::model::strategy::{OnFailure, StrategyFlags, StrategyKind, Timeouts};

    fn config(
        kind: StrategyKind,
        batch: Option<&str>,
        steps: Option<&str>,
        weight: Option<u32>,
        pause: Option<&str>,
    ) -> StrategyConfig {
        let flags = StrategyFlags {
            batch: batch.map(|b| b.parse().unwrap_or_else(|e| panic!("{b}: {e}"))),
            steps: steps.map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))),
            weight: weight.and_then(|w| crate::model::weight::Percent::new(w).ok()),
            pause: pause.map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}"))),
            ..StrategyFlags::default()
        };
        StrategyConfig::new(
            kind,
            &flags,
            GateSpec::default(),
            Timeouts::default(),
            OnFailure::Rollback,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn fresh(replicas: u32) -> Observed {
        Observed {
            name: "web".into(),
            replicas,
            update_strategy: "RollingUpdate".into(),
            pod_management_policy: PodManagementPolicy::Parallel,
            ..Observed::default()
        }
    }

    /// A compact form of a plan: `F5` freeze, `P3[4,3]` partition, `G[4,3]` gate, `W` pause
    /// until promote, `W2m` timed pause.
    fn shape(plan: &Plan) -> String {
        let list = |o: &[u32]| {
            o.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        plan.steps
            .iter()
            .map(|s| match s {
                Step::SetTemplateAndFreeze { partition } => format!("F{partition}"),
                Step::SetPartition {
                    partition,
                    ordinals,
                    ..
                } => format!("P{partition}[{}]", list(ordinals)),
                Step::Gate {
                    ordinals,
                    set: None,
                } => format!("G[{}]", list(ordinals)),
                Step::Pause {
                    wait: PauseSpec::UntilPromote,
                } => "W".to_string(),
                Step::Pause {
                    wait: PauseSpec::For(d),
                } => format!("W{d}"),
                other => other.name().to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_bake_is_an_analysed_pause_after_the_last_step_of_partition_strategies() {
        let mut canary = config(StrategyKind::Canary, None, Some("50,100"), None, None);
        canary.gates.prometheus = vec!["up{pod=~\"{pods}\"} > 0"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))];
        canary.gates.bake = Some(HumanDuration::from_secs(120));
        let (plan, _) = crate::strategy::plan(&canary, &fresh(4), None, &serde_json::Value::Null)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(shape(&plan).ends_with("W2m"), "{}", shape(&plan));
        let mut recreate = canary.clone();
        recreate.params = config(StrategyKind::Recreate, None, None, None, None).params;
        let refused = crate::strategy::plan(&recreate, &fresh(4), None, &serde_json::Value::Null);
        assert!(
            matches!(refused, Err(PlanError::BakeNotSupported { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn rolling_plans() {
        use StrategyKind::Rolling;
        let cases = [
            (
                config(Rolling, None, None, None, None),
                3,
                "F3 P2[2] G[2] P1[1] G[1] P0[0] G[0]",
            ),
            (
                config(Rolling, Some("2"), None, None, None),
                5,
                "F5 P3[4,3] G[4,3] P1[2,1] G[2,1] P0[0] G[0]",
            ),
            (
                config(Rolling, Some("2"), None, None, Some("30s")),
                4,
                "F4 P2[3,2] G[3,2] W30s P0[1,0] G[1,0]",
            ),
            (
                config(Rolling, Some("10"), None, None, None),
                3,
                "F3 P0[2,1,0] G[2,1,0]",
            ),
            (
                config(Rolling, Some("50%"), None, None, Some("")),
                4,
                "F4 P2[3,2] G[3,2] W P0[1,0] G[1,0]",
            ),
            (config(Rolling, None, None, None, None), 1, "F1 P0[0] G[0]"),
            (config(Rolling, None, None, None, None), 0, "F0"),
        ];
        for (cfg, replicas, expected) in cases {
            let plan = plan_partition(&cfg, &fresh(replicas)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(shape(&plan), expected, "{:?} on {replicas}", cfg.params);
        }
    }

    #[test]
    fn ramped_plans() {
        use StrategyKind::Ramped;
        let cases = [
            (
                config(Ramped, None, Some("1,2,4"), None, Some("1m")),
                7,
                "F7 P6[6] G[6] W1m P5[5] G[5] W1m P3[4,3] G[4,3] W1m P0[2,1,0] G[2,1,0]",
            ),
            (
                config(Ramped, None, Some("1,2,4"), None, None),
                4,
                "F4 P3[3] G[3] P2[2] G[2] P0[1,0] G[1,0]",
            ),
            (
                config(Ramped, None, Some("10%,30%,100%"), None, None),
                10,
                "F10 P9[9] G[9] P7[8,7] G[8,7] P0[6,5,4,3,2,1,0] G[6,5,4,3,2,1,0]",
            ),
            (
                config(Ramped, None, Some("1,2,4"), None, None),
                3,
                "F3 P2[2] G[2] P1[1] G[1] P0[0] G[0]",
            ),
            (
                config(Ramped, None, None, None, None),
                4,
                "F4 P3[3] G[3] P2[2] G[2] P0[1,0] G[1,0]",
            ),
        ];
        for (cfg, replicas, expected) in cases {
            let plan = plan_partition(&cfg, &fresh(replicas)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(shape(&plan), expected, "{:?} on {replicas}", cfg.params);
        }
    }

    #[test]
    fn canary_plans() {
        use StrategyKind::Canary;
        let cases = [
            (
                config(Canary, None, None, Some(20), None),
                5,
                "F5 P4[4] G[4] W P0[3,2,1,0] G[3,2,1,0]",
            ),
            (
                config(Canary, None, None, Some(20), None),
                3,
                "F3 P2[2] G[2] W P0[1,0] G[1,0]",
            ),
            (
                config(Canary, None, None, Some(20), Some("10m")),
                3,
                "F3 P2[2] G[2] W10m P0[1,0] G[1,0]",
            ),
            (
                config(Canary, None, None, Some(50), None),
                1,
                "F1 P0[0] G[0] W",
            ),
            (
                config(Canary, None, Some("20,50,100"), None, Some("2m")),
                10,
                "F10 P8[9,8] G[9,8] W2m P5[7,6,5] G[7,6,5] W2m P0[4,3,2,1,0] G[4,3,2,1,0]",
            ),
            (
                config(Canary, None, Some("20,50,100"), None, None),
                10,
                "F10 P8[9,8] G[9,8] P5[7,6,5] G[7,6,5] P0[4,3,2,1,0] G[4,3,2,1,0]",
            ),
            (
                config(Canary, None, Some("20,50"), None, Some("")),
                4,
                "F4 P3[3] G[3] W P2[2] G[2] W P0[1,0] G[1,0]",
            ),
            (
                config(Canary, None, Some("20,30,100"), None, Some("1m")),
                3,
                "F3 P2[2] G[2] W1m P0[1,0] G[1,0]",
            ),
        ];
        for (cfg, replicas, expected) in cases {
            let plan = plan_partition(&cfg, &fresh(replicas)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(shape(&plan), expected, "{:?} on {replicas}", cfg.params);
        }
    }

    #[test]
    fn sets_at_zero_replicas_and_oversized_batches_are_refused() {
        use StrategyKind::*;
        let refused = [
            (
                config(Rolling, None, None, None, None),
                0,
                "it has 0 replicas",
            ),
            (
                config(Canary, None, None, Some(50), None),
                0,
                "no pod to gate",
            ),
            (
                config(Ramped, None, Some("1,2"), None, None),
                0,
                "--replicas=N",
            ),
            (
                config(Rolling, Some("5"), None, None, None),
                3,
                "--batch 5 is more than its 3 replicas",
            ),
            (
                config(Rolling, Some("4"), None, None, None),
                3,
                "--batch 3 or less",
            ),
        ];
        for (cfg, replicas, needle) in refused {
            let err = check_fits(&cfg, "web", replicas)
                .expect_err(&format!("{:?} on {replicas}", cfg.params))
                .to_string();
            assert!(
                err.contains(needle),
                "{:?} on {replicas}: {err}",
                cfg.params
            );
            assert!(err.contains("nothing was changed"), "{err}");
        }
        let fits = [
            (config(Rolling, Some("3"), None, None, None), 3),
            (config(Rolling, Some("100%"), None, None, None), 2),
            (config(Rolling, None, None, None, None), 1),
            (config(Ramped, None, Some("1,2,8"), None, None), 4),
            (config(Canary, None, None, Some(50), None), 1),
        ];
        for (cfg, replicas) in fits {
            assert_eq!(
                check_fits(&cfg, "web", replicas),
                Ok(()),
                "{:?}",
                cfg.params
            );
        }
    }

    #[test]
    fn notes_explain_merged_clamped_and_appended_steps() {
        use StrategyKind::*;
        let cases = [
            (
                config(Canary, None, Some("20,30,100"), None, None),
                3,
                "step 2 (30%) gives 1 pod(s), no more than the step before it: merged",
            ),
            (
                config(Ramped, None, Some("1,2,8"), None, None),
                4,
                "step 3 asks for 8 pods but there are 4 replicas",
            ),
            (
                config(Canary, None, Some("20,50"), None, None),
                4,
                "the last weight leaves 2 of 4 pods on the old version",
            ),
            (
                config(Ramped, None, Some("1,2"), None, None),
                4,
                "the last step leaves 2 of 4 pods",
            ),
            (
                config(Canary, None, None, Some(50), None),
                1,
                "a 50% canary is every pod",
            ),
        ];
        for (cfg, replicas, fragment) in cases {
            let plan = plan_partition(&cfg, &fresh(replicas)).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                plan.notes.iter().any(|n| n.contains(fragment)),
                "{:?}: notes {:?} lack `{fragment}`",
                cfg.params,
                plan.notes
            );
        }
        let clean = plan_partition(&config(Rolling, None, None, None, None), &fresh(3))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(clean.notes.is_empty(), "{:?}", clean.notes);
    }

    #[test]
    fn canary_steps_report_achieved_weights() {
        let cfg = config(StrategyKind::Canary, None, Some("20,50,100"), None, None);
        let plan = plan_partition(&cfg, &fresh(3)).unwrap_or_else(|e| panic!("{e}"));
        let weights: Vec<String> = plan
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::SetPartition {
                    weight: Some(w), ..
                } => Some(w.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(
            weights,
            [
                "1 of 3 pods (33.3%, asked 20%)",
                "2 of 3 pods (66.7%, asked 50%)",
                "3 of 3 pods (100%)"
            ]
        );
    }

    #[test]
    fn already_released_pods_are_not_planned_again() {
        let cfg = config(StrategyKind::Rolling, None, None, None, None);
        let cases = [
            (
                Some(5),
                true,
                "P4[4] G[4] P3[3] G[3] P2[2] G[2] P1[1] G[1] P0[0] G[0]",
            ),
            (Some(3), true, "P2[2] G[2] P1[1] G[1] P0[0] G[0]"),
            (Some(0), true, ""),
            (None, true, ""),
            (
                Some(3),
                false,
                "F5 P4[4] G[4] P3[3] G[3] P2[2] G[2] P1[1] G[1] P0[0] G[0]",
            ),
        ];
        for (partition, applied, expected) in cases {
            let observed = Observed {
                partition,
                target_applied: applied,
                ..fresh(5)
            };
            let p = plan_partition(&cfg, &observed).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                shape(&p),
                expected,
                "partition {partition:?} applied {applied}"
            );
        }
    }

    #[test]
    fn no_gates_means_no_gate_steps() {
        let mut cfg = config(StrategyKind::Rolling, Some("2"), None, None, None);
        cfg.gates.http.enabled = false;
        let p = plan_partition(&cfg, &fresh(4)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shape(&p), "F4 P2[3,2] P0[1,0]");
        cfg.gates.min_ready = Some(HumanDuration::from_secs(5));
        let p = plan_partition(&cfg, &fresh(4)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shape(&p), "F4 P2[3,2] G[3,2] P0[1,0] G[1,0]");
    }

    #[test]
    fn ordinal_start_shifts_pod_ordinals_not_partitions() {
        let cfg = config(StrategyKind::Rolling, Some("2"), None, None, None);
        let observed = Observed {
            ordinal_start: 10,
            ..fresh(3)
        };
        let p = plan_partition(&cfg, &observed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(shape(&p), "F3 P1[12,11] G[12,11] P0[10] G[10]");
    }

    #[test]
    fn on_delete_sets_get_a_note() {
        let cfg = config(StrategyKind::Rolling, None, None, None, None);
        let observed = Observed {
            update_strategy: "OnDelete".into(),
            ..fresh(2)
        };
        let p = plan_partition(&cfg, &observed).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            p.notes.iter().any(|n| n.contains("OnDelete")),
            "{:?}",
            p.notes
        );
    }

    #[test]
    fn huge_plans_are_refused() {
        let cfg = config(StrategyKind::Rolling, None, None, None, None);
        let err = plan_partition(&cfg, &fresh(2000)).expect_err("4001 steps");
        assert!(err.to_string().contains("use a larger --batch"), "{err}");
        assert!(plan_partition(
            &config(StrategyKind::Rolling, Some("10"), None, None, None),
            &fresh(2000)
        )
        .is_ok());
    }

    #[test]
    fn every_plan_moves_each_pod_exactly_once_highest_first() {
        use StrategyKind::*;
        let configs = [
            config(Rolling, None, None, None, None),
            config(Rolling, Some("3"), None, None, Some("1s")),
            config(Rolling, Some("33%"), None, None, None),
            config(Ramped, None, Some("1,2,4"), None, Some("")),
            config(Ramped, None, Some("5%,50%"), None, None),
            config(Canary, None, None, Some(1), None),
            config(Canary, None, None, Some(99), None),
            config(Canary, None, Some("10,20,30,60"), None, Some("1m")),
        ];
        for cfg in &configs {
            for replicas in 0..=25u32 {
                let p = plan_partition(cfg, &fresh(replicas)).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(
                    p.steps.first(),
                    Some(&Step::SetTemplateAndFreeze {
                        partition: replicas
                    })
                );
                let mut moved: Vec<u32> = Vec::new();
                let mut last_partition = replicas;
                let mut last_updated = 0;
                for (i, step) in p.steps.iter().enumerate() {
                    if let Step::SetPartition {
                        partition,
                        ordinals,
                        updated,
                        ..
                    } = step
                    {
                        assert!(
                            *partition < last_partition,
                            "{:?} on {replicas}: partition must go down",
                            cfg.params
                        );
                        assert_eq!(*updated, replicas - partition);
                        assert!(*updated > last_updated);
                        assert_eq!(
                            p.steps.get(i + 1),
                            Some(&Step::gate(ordinals.clone())),
                            "each partition step is gated"
                        );
                        moved.extend(ordinals);
                        last_partition = *partition;
                        last_updated = *updated;
                    }
                }
                let expected: Vec<u32> = (0..replicas).rev().collect();
                assert_eq!(moved, expected, "{:?} on {replicas}", cfg.params);
                assert!(
                    !matches!(p.steps.last(), Some(Step::Pause { .. }))
                        || matches!(
                            cfg.params,
                            StrategyParams::Canary(CanaryParams::Hold { .. })
                        )
                );
            }
        }
    }
}
