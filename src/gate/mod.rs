//! Health gates: after each step, the pods that step changed are judged before the rollout goes
//! on. [`verdict`] holds the pure judging; [`probe`] does the I/O that feeds it (HTTP to pod IPs
//! or through the pod proxy, watching readiness, running commands, calling webhooks).

pub mod compare;
pub mod probe;
pub mod prometheus;
pub mod replay;
pub mod route;
pub mod verdict;

pub use verdict::{GateFailure, PodSamples, ProbeOutcome, Verdict};
