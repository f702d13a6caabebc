//! The time web app that `rollout` updates in its examples and end-to-end tests.
//!
//! `GET /` shows the Moscow time and records the visit in `visits.log` on the pod's own data
//! volume; `GET /visits` lists this pod's visits. Fault knobs (`FAIL_RATE`, `LATENCY_MS`,
//! `NOT_READY_SECONDS`, `CRASH_AT_START`) turn a release into a bad one on demand, so rollouts
//! can be tested against failing pods.
//!
//! The pure parts (clock formatting, settings parsing, visit-file parsing, fault decisions) live
//! apart from the I/O so they can be tested with table cases.

pub mod clock;
pub mod metrics;
pub mod server;
pub mod settings;
pub mod visits;
