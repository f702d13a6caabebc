//! Metric gates in the run: their part of every gate step, and continuous analysis: with
//! `--analysis-interval` they run again every interval while the rollout pauses or holds (and
//! during `--bake`, a pause after the last step), and a failure rolls back at once. The same
//! wait reads the route a rollout steers traffic through every few seconds, to stop on someone
//! else's rewrite of it while the pause lasts.

use std::future::Future;

use tokio::time::Instant;

use super::{Runner, Waited};
use crate::exec::cluster::Cluster;
use crate::exec::gates::GateRunner;
use crate::exec::metrics::pods_on;
use crate::exec::progress::format_elapsed;
use crate::exec::ExecError;
use crate::gate::prometheus::{run_metric_gates, Prometheus, StableBaseline};
use crate::gate::Verdict;
use crate::model::metric::Placeholders;
use crate::model::state::{RollbackCause, StableSeen};

/// How often a pause reads the route the rollout steers traffic through (one GET).
const ROUTE_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// How a wait with analysis ended.
pub(super) enum Analysed {
    /// The wait ended (its deadline, or a change to decide on again).
    Waited(Waited<()>),
    /// A metric gate failed: the rollout fails (and rolls back).
    Failed,
}

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// The metric gates of a gate step on `pods` (names) of `set`: a future that owns what it
    /// needs, so it runs beside the other gates. Passes when there are none.
    pub(super) fn metric_gates(
        &self,
        set: &str,
        pods: Vec<String>,
    ) -> impl Future<Output = Verdict> + Send + 'static {
        let gates = self.record.config.gates.prometheus.clone();
        let url = self.options.gates.prometheus_url.clone();
        let stable = self
            .record
            .stable
            .revision
            .revision
            .clone()
            .unwrap_or_default();
        let new = self.record.target.revision.clone().unwrap_or_default();
        // Stable pods are the rollout's own set's (blue, for a green being gated).
        let stable_pods = pods_on(&self.view.borrow().pods, &stable);
        let values = Placeholders {
            namespace: self.cluster.namespace().to_string(),
            set: set.to_string(),
            revision: new.clone(),
            new: new.clone(),
            stable: stable.clone(),
            pods,
        };
        // With no stable pod left (a bake), relative conditions compare with stable as it was
        // the last time a run saw its pods.
        let baseline = if stable_pods.is_empty() {
            self.stable_seen().map(|seen| (seen.pods, Some(seen.at)))
        } else {
            Some((stable_pods, None))
        };
        let stable_values = baseline.map(|(pods, at)| StableBaseline {
            values: Placeholders {
                set: self.name.clone(),
                revision: stable.clone(),
                pods,
                ..values.clone()
            },
            at,
        });
        async move {
            if gates.is_empty() {
                return Verdict::Pass;
            }
            let Some(url) = url else {
                return Verdict::Inconclusive {
                    message: "the rollout has metric gates but this run has no Prometheus to ask: give --prometheus-url (or ROLLOUT_PROMETHEUS_URL)".into(),
                };
            };
            match Prometheus::new(&url) {
                Ok(prometheus) => {
                    run_metric_gates(&prometheus, &gates, &values, stable_values.as_ref()).await
                }
                Err(e) => Verdict::Inconclusive {
                    message: e.to_string(),
                },
            }
        }
    }

    /// The stable pods the record says a run saw last, only those named as pods of this set
    /// (the record is anyone's to write; the names go into queries).
    fn stable_seen(&self) -> Option<StableSeen> {
        let seen = self.record.measured.stable_seen.clone()?;
        let pods: Vec<String> = seen
            .pods
            .into_iter()
            .filter(|p| crate::strategy::predicates::pod_ordinal(&self.name, p).is_some())
            .collect();
        Some(StableSeen { at: seen.at, pods })
    }

    /// Keeps in the record when this run last saw pods of the own set serving the stable
    /// revision, and which (only when a query names `{pods}`, so a large set's record stays
    /// small), for the relative metric conditions of a bake (every pod then runs the new
    /// revision). Only with such conditions; called before each step.
    pub(super) fn note_stable_seen(&mut self) {
        let relative: Vec<&crate::model::metric::MetricGate> = (self.record.config.gates)
            .prometheus
            .iter()
            .filter(|g| g.bound.is_relative())
            .collect();
        let Some(stable) =
            (self.record.stable.revision.revision.clone()).filter(|_| !relative.is_empty())
        else {
            return;
        };
        let by_pod = relative.iter().any(|g| g.query.contains("{pods}"));
        let pods: Vec<String> = {
            let view = self.view.borrow();
            view.pods
                .iter()
                .filter(|p| {
                    crate::exec::metrics::pod_revision(p) == Some(stable.as_str())
                        && crate::strategy::predicates::is_ready(p)
                })
                .filter_map(|p| p.metadata.name.clone())
                .collect()
        };
        if !pods.is_empty() {
            self.record.measured.stable_seen = Some(StableSeen {
                at: Self::now(),
                pods: if by_pod { pods } else { Vec::new() },
            });
        }
    }

    /// The pods of the rollout's own set on the new revision, by name (what a pause or hold
    /// exposes to users).
    fn new_pods(&self) -> Vec<String> {
        let new = self.record.target.revision.clone().unwrap_or_default();
        pods_on(&self.view.borrow().pods, &new)
    }

    /// Waits until `until` (or a change, or forever when `None`), running the metric gates
    /// every analysis interval meanwhile when continuous analysis is on; a failed gate fails
    /// the rollout there and then. A rollout steering traffic through a route reads it every
    /// [`ROUTE_CHECK`] meanwhile: someone else's rewrite stops the run at once (exit 4) instead
    /// of at the pause's end, while the canary's traffic is no longer what rollout set.
    pub(super) async fn wait_analysing(
        &mut self,
        until: Option<Instant>,
    ) -> Result<Analysed, ExecError> {
        let name = self.name.clone();
        let nothing = |_: &crate::exec::cluster::Snapshot| None::<()>;
        let analysis = self.record.config.gates.analysis();
        let route = crate::strategy::predicates::drift::route_watched(&self.record);
        if analysis.is_none() && !route {
            return Ok(Analysed::Waited(self.wait_on(&name, until, nothing).await?));
        }
        let mut next_analysis = analysis.map(|interval| Instant::now() + interval);
        let mut next_route = route.then(|| Instant::now() + ROUTE_CHECK);
        let mut checks = 0u32;
        let mut last_undecided: Option<String> = None;
        loop {
            let wake = [until, next_analysis, next_route]
                .into_iter()
                .flatten()
                .min();
            let waited = self.wait_on(&name, wake, nothing).await?;
            if !matches!(waited, Waited::Deadline) || until.is_some_and(|u| Instant::now() >= u) {
                return Ok(Analysed::Waited(waited));
            }
            if next_route.is_some_and(|at| Instant::now() >= at) {
                match self.check_latest_snapshot().await {
                    // The API server did not answer (after its retries): the pause goes on,
                    // and the check before the next step decides.
                    Err(e @ ExecError::Api { .. }) => {
                        tracing::warn!(error = %e, "the route could not be read during the pause");
                    }
                    checked => checked?,
                }
                next_route = Some(Instant::now() + ROUTE_CHECK);
            }
            let (Some(interval), Some(at)) = (analysis, next_analysis) else {
                continue;
            };
            if Instant::now() < at {
                continue;
            }
            next_analysis = Some(Instant::now() + interval);
            let started = Instant::now();
            let verdict = self.metric_gates(&name, self.new_pods()).await;
            checks += 1;
            match verdict {
                Verdict::Pass => {
                    last_undecided = None;
                    tracing::debug!(checks, "analysis passed");
                }
                Verdict::Inconclusive { message } => {
                    // Undecided while paused is not a failure (nothing moves meanwhile); said
                    // once per reason.
                    if last_undecided.as_deref() != Some(message.as_str()) {
                        self.progress
                            .say(format!("        analysis could not decide: {message}"));
                        last_undecided = Some(message);
                    }
                }
                Verdict::Fail { .. } => {
                    let message = verdict.message();
                    self.progress.say(format!(
                        "        analysis FAILED (check {checks}, {} after its start):",
                        format_elapsed(started.elapsed())
                    ));
                    for line in message.lines() {
                        self.progress.say(format!("        {line}"));
                    }
                    self.step_failed(
                        RollbackCause::GateFailed,
                        format!("continuous analysis: {message}"),
                    )?;
                    return Ok(Analysed::Failed);
                }
            }
        }
    }
}
