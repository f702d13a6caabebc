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
}

impl GateRunner for FakeGates {
    async fn run(
        &self,
        _spec: &GateSpec,
        targets: &[PodTarget],
        _context: &GateContext,
    ) -> Verdict {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(targets.iter().map(|t| t.pod.clone()).collect());
        }
        self.script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or(Verdict::Pass)
    }

    async fn run_service(
        &self,
        _spec: &GateSpec,
        _namespace: &str,
        service: &str,
        _port: &str,
    ) -> Verdict {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(vec![format!("service/{service}")]);
        }
        self.script
            .lock()
            .ok()
            .and_then(|mut s| s.pop_front())
            .unwrap_or(Verdict::Pass)
    }
}
