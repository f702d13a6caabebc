//! Fakes for unit tests of the executor: the fake cluster ([`crate::cluster::fake`]) and gates
//! that answer from a script.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub use crate::cluster::fake::{statefulset, FakeCluster, State};

use super::gates::GateRunner;
use crate::gate::probe::{GateContext, PodTarget};
use crate::gate::Verdict;
use crate::model::gate::GateSpec;

/// Gates that answer from a script: each call takes the next verdict (pass when the script is
/// empty) and records the pods it was asked about.
#[derive(Clone, Default)]
pub struct FakeGates {
    pub script: Arc<Mutex<VecDeque<Verdict>>>,
    pub calls: Arc<Mutex<Vec<Vec<String>>>>,
}

impl FakeGates {
    pub fn failing_at(call: usize, verdict: Verdict) -> FakeGates {
        let mut script: VecDeque<Verdict> = (0..call).map(|_| Verdict::Pass).collect();
        script.push_back(verdict);
        FakeGates {
            script: Arc::new(Mutex::new(script)),
            calls: Arc::default(),
        }
    }

    pub fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Records a call about `targets` and answers with the next verdict of the script.
    fn answer(&self, targets: Vec<String>) -> Verdict {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(targets);
        }
        let next = self.script.lock().ok().and_then(|mut s| s.pop_front());
        next.unwrap_or(Verdict::Pass)
    }
}

impl GateRunner for FakeGates {
    async fn run(&self, _: &GateSpec, targets: &[PodTarget], _: &GateContext) -> Verdict {
        self.answer(targets.iter().map(|t| t.pod.clone()).collect())
    }

    async fn run_service(&self, _: &GateSpec, _: &str, service: &str, _: &str) -> Verdict {
        self.answer(vec![format!("service/{service}")])
    }
}
