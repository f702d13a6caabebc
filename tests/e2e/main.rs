//! End-to-end tests of `rollout` against the running devcluster (`./scripts/test` brings one up):
//! the built `rollout` binary is run the way a person or a CI job runs it, and the tests check
//! what they would check afterwards: the pods' revisions and versions, the Service's traffic,
//! each pod's claim and visits, the exit code and the message. Every test works in a namespace
//! of its own and deletes it when it passed.

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod bad_input;
mod bluegreen;
mod current;
mod drift;
mod failures;
mod gates;
mod gateway;
mod gateway_bluegreen;
mod gateway_devcluster;
mod gateway_mirror;
mod helm;
mod incluster;
mod kills;
mod lock;
mod metrics;
mod operator;
mod rbac;
mod recovery;
mod recreate;
mod shadow;
mod strategies;
mod support;
mod trust;
mod tty;
