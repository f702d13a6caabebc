//! Pure planning: strategy settings + what the cluster looks like -> a plan; predicates that
//! tell when a step is done; transitions of the rollout record. No client, no runtime, no I/O:
//! the executor feeds values in and sends the results.

pub mod observed;
pub mod planner;
pub mod predicates;
pub mod rollback;
pub mod transitions;
pub mod twin;

pub use observed::{stable_from_statefulset, ObserveError, Observed};
pub use planner::{plan, PlanError};
pub use predicates::{statefulset_rollout_progress, RolloutProgress};
pub use transitions::TransitionError;
