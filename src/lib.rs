//! rollout: moves a Kubernetes StatefulSet to a new version with a rolling, ramped or canary
//! strategy, gating each step on the health of the pods it changed and rolling back by itself.
//!
//! Layers (see `design.md`):
//! - [`model`]: plain data (image references, strategy settings, gate specs, plans, the rollout
//!   record, exit codes);
//! - [`strategy`]: pure planners and predicates (strategy + flags + observed cluster -> plan;
//!   is the StatefulSet done; which pods a partition moves) and state transitions;
//! - [`cluster`]: the one seam to the API server (generic get / list / create / replace / patch
//!   / delete / observe, and proxied GETs), used by the executor and the gates alike;
//! - [`gate`]: gate verdicts from probe results, and the probing itself (`gate::probe`);
//! - [`exec`]: the executor, the only code that talks to the cluster: the run loop, the lock,
//!   the rollout record on the StatefulSet, one function per command;
//! - [`cli`]: the command line, resolved once into an [`exec::Invocation`].
//!
//! `model` and `strategy` never talk to the cluster or the network.

pub mod cli;
pub mod cluster;
pub mod exec;
pub mod gate;
pub mod model;
pub mod strategy;
