//! Health gates: after each step, the pods that step changed are judged before the rollout goes
//! on. [`verdict`] holds the pure judging; the probing (HTTP to pod IPs or through the pod
//! proxy, running commands, calling webhooks) is I/O and lives beside it, in the executor's
//! files.

pub mod verdict;

pub use verdict::{GateFailure, PodSamples, ProbeOutcome, Verdict};
