//! rollout: moves a Kubernetes StatefulSet to a new version with a rolling, ramped or canary
//! strategy, gating each step on the health of the pods it changed and rolling back by itself.
//!
//! Layers (see `design.md`):
//! - [`model`]: plain data (image references, strategy settings, gate specs, plans, the rollout
//!   record, exit codes);
//! - [`strategy`]: pure planners and predicates (strategy + flags + observed cluster -> plan;
//!   is the StatefulSet done; which pods a partition moves) and state transitions;
//! - [`gate`]: gate verdicts from probe results (the probing itself is I/O, kept apart).
//!
//! Nothing in these modules talks to the cluster or the network.

pub mod gate;
pub mod model;
pub mod strategy;
