//! Pure planning: strategy settings + what the cluster looks like -> a plan; predicates that
//! tell when a step is done; transitions of the rollout record. No client, no runtime, no I/O:
//! the executor feeds values in and sends the results.

pub mod observed;
pub mod planner;
pub mod predicates;
pub mod rollback;
pub mod route;
pub mod timeline;
pub mod transitions;
pub mod trust;
pub mod twin;

pub use observed::{stable_from_statefulset, ObserveError, Observed};
pub use planner::PlanError;

use crate::model::plan::Plan;
use crate::model::strategy::StrategyConfig;
use crate::model::twin::Twin;

/// The one planning entry point, for all six strategies: the plan of a rollout of `observed`
/// with `config` to the pod template `template`, and for blue/green and shadow the record of
/// their second set. Those two need the set's `surroundings` (Services, sets, claims in the
/// namespace); the others plan from the set alone.
pub fn plan(
    config: &StrategyConfig,
    observed: &Observed,
    surroundings: Option<&twin::Surroundings>,
    template: &serde_json::Value,
) -> Result<(Plan, Option<Twin>), PlanError> {
    use crate::model::strategy::StrategyKind;
    planner::check_fits(config, &observed.name, observed.replicas)?;
    let partitioned = matches!(
        config.kind(),
        StrategyKind::Rolling | StrategyKind::Ramped | StrategyKind::Canary
    );
    if let (Some(_), false) = (config.gates.bake, partitioned) {
        return Err(PlanError::BakeNotSupported {
            statefulset: observed.name.clone(),
            strategy: config.kind().as_str(),
        });
    }
    match config.kind() {
        StrategyKind::Rolling | StrategyKind::Ramped | StrategyKind::Canary => {
            let mut plan = planner::plan_partition(config, observed)?;
            // The bake: a timed pause after the last step, during which continuous analysis
            // runs (the pause's analysis, like any other's).
            if let Some(bake) = config.gates.bake {
                plan.steps.push(crate::model::plan::Step::Pause {
                    wait: crate::model::strategy::PauseSpec::For(bake),
                });
            }
            Ok((plan, None))
        }
        StrategyKind::Recreate => Ok((twin::plan_recreate(config, observed)?, None)),
        StrategyKind::BlueGreen | StrategyKind::Shadow => {
            let around = surroundings.ok_or_else(|| PlanError::SurroundingsMissing {
                statefulset: observed.name.clone(),
                strategy: config.kind().as_str(),
            })?;
            let twin = twin::twin_for(config, observed, around, template)?.ok_or_else(|| {
                PlanError::SurroundingsMissing {
                    statefulset: observed.name.clone(),
                    strategy: config.kind().as_str(),
                }
            })?;
            Ok((twin::plan_twin(config, observed, &twin), Some(twin)))
        }
    }
}

pub use transitions::TransitionError;
