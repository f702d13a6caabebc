//! Plain data: image references, strategies and their settings, gate specs, plans, the rollout
//! record and exit codes. No I/O here; everything parses, validates and serializes.

pub mod drift;
pub mod duration;
pub mod exit;
pub mod file;
pub mod gate;
pub mod image;
pub mod metric;
pub mod name;
pub mod plan;
pub mod route;
pub mod state;
pub mod steps;
pub mod strategy;
pub mod timeline;
pub mod twin;
pub mod weight;

pub use duration::HumanDuration;
pub use exit::ExitCode;
pub use file::StrategyFile;
pub use gate::{CommandGate, GateSpec, HttpGate, PortRef, ProbeVia, StatusRange, WebhookGate};
pub use image::{ContainerImage, ImageChange, ImageRef};
pub use plan::{Plan, PodManagementPolicy, Step};
pub use state::{
    PauseReason, Phase, Revision, RollbackCause, RolloutState, Stable, ANNOTATION_KEY,
};
pub use steps::{StepList, StepTarget};
pub use strategy::{
    BatchSize, CanaryParams, OnFailure, PauseSpec, StrategyConfig, StrategyFlags, StrategyKind,
    StrategyParams, Timeouts,
};
pub use weight::{weight_to_pods, Percent, PodWeight};
