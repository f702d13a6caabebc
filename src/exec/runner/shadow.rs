//! The shadow's comparison step: requests replayed to stable and shadow pods side by side,
//! judged against each other.

use tokio::time::Instant;

use super::Runner;
use crate::exec::cluster::Cluster;
use crate::exec::gates::GateRunner;
use crate::exec::ExecError;

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// Step: replay and compare.
    pub(super) async fn compare(&mut self, set: &str) -> Result<(), ExecError> {
        let _ = (set, Instant::now());
        Err(ExecError::NotRollable {
            statefulset: self.name.clone(),
            reason: "the shadow comparison is being built".into(),
        })
    }
}
