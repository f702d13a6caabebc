//! The shadow's comparison step: requests replayed to stable and shadow pods side by side
//! (`crate::gate::replay`), judged against each other (`crate::gate::compare`). The figures so
//! far go into the record every few seconds, so `rollout status` shows them and `rollout
//! promote` can end the comparison early when it passes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{deadline_after, Committed, Runner};
use crate::exec::cluster::Cluster;
use crate::exec::gates::{gate_targets, GateRunner};
use crate::exec::ExecError;
use crate::gate::compare::{
    render_report, CompareReport, CompareSpec, CompareVerdict, ReplayRequest,
};
use crate::gate::probe::PodTarget;
use crate::gate::replay::{replay, ReplayLimits, TargetPair};
use crate::model::state::RollbackCause;
use crate::model::strategy::StrategyParams;
use crate::model::twin::ShadowParams;

/// How often interim figures are written to the record.
const PUBLISH_EVERY: Duration = Duration::from_secs(5);

/// The comparison limits of the replay core from the strategy's settings (percentage points
/// become a share).
pub fn compare_spec(params: &ShadowParams) -> CompareSpec {
    let c = &params.compare;
    CompareSpec {
        max_error_rate_increase: c.max_error_rate_increase / 100.0,
        max_p95_ratio: c.max_p95_ratio,
        min_samples: c.min_samples,
        compare_bodies: c.compare_bodies,
        ignore_lines: c.ignore_lines.clone(),
        ..CompareSpec::default()
    }
}

fn address(target: &PodTarget) -> Option<SocketAddr> {
    let ip: std::net::IpAddr = target.ip.as_deref()?.parse().ok()?;
    Some(SocketAddr::new(ip, target.port))
}

/// Stable and shadow pods paired so every pod of both sides gets requests.
fn pairs(stable: &[SocketAddr], shadow: &[SocketAddr]) -> Vec<TargetPair> {
    if stable.is_empty() || shadow.is_empty() {
        return Vec::new();
    }
    (0..stable.len().max(shadow.len()))
        .map(|i| TargetPair {
            stable: stable[i % stable.len()],
            shadow: shadow[i % shadow.len()],
        })
        .collect()
}

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// The addresses of `set`'s Ready pods, on the gate's port.
    async fn ready_addresses(&mut self, set: Option<&str>) -> Vec<SocketAddr> {
        let name = set.map_or_else(|| self.name.clone(), str::to_string);
        let pods = self.pods_of(&name).await;
        let ordinals: Vec<u32> = pods
            .iter()
            .filter(|p| crate::strategy::predicates::is_ready(p))
            .filter_map(|p| {
                p.metadata
                    .name
                    .as_deref()
                    .and_then(|n| crate::strategy::predicates::pod_ordinal(&name, n))
            })
            .collect();
        let container = self
            .record
            .target
            .images
            .first()
            .map(|i| i.container.clone());
        gate_targets(
            &name,
            &pods,
            &ordinals,
            &self.record.config.gates,
            container.as_deref(),
        )
        .unwrap_or_default()
        .iter()
        .filter_map(address)
        .collect()
    }

    /// Step: replay and compare for the shadow's duration (or until promoted or aborted).
    pub(super) async fn compare(&mut self, set: &str) -> Result<(), ExecError> {
        let started = Instant::now();
        let StrategyParams::Shadow(params) = self.record.config.params.clone() else {
            return Err(ExecError::NotRollable {
                statefulset: self.name.clone(),
                reason: "a compare step belongs to a shadow rollout".into(),
            });
        };
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let stable = self.ready_addresses(None).await;
        let shadow = self.ready_addresses(Some(set)).await;
        let pairs = pairs(&stable, &shadow);
        let requests: Vec<ReplayRequest> = params
            .requests
            .iter()
            .map(|r| ReplayRequest {
                method: r.method.clone(),
                path: r.path.clone(),
            })
            .collect();
        let limits = ReplayLimits {
            rate_per_second: params.compare.rate,
            max_requests: params.compare.max_requests,
            duration: params.duration.get(),
            timeout: self.record.config.gates.http.timeout.get(),
        };
        let spec = compare_spec(&params);
        let limits_max = limits.max_requests;
        self.progress.say(format!(
            "        replaying {} to {} stable and {} shadow pod(s), {} per second for up to {} ({} requests per side at most); `rollout promote {} --then rolling` ends it early once it passes",
            requests.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            stable.len(),
            shadow.len(),
            limits.rate_per_second,
            params.duration,
            limits.max_requests,
            self.record.twin.as_ref().map(|t| t.home.clone()).unwrap_or_else(|| self.name.clone())
        ));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (report_tx, mut report_rx) = watch::channel::<Option<CompareReport>>(None);
        let run = async move {
            replay(&pairs, &requests, &limits, &spec, stop_rx, |comparison| {
                report_tx.send_replace(Some(comparison.report()));
            })
            .await
        };
        tokio::pin!(run);
        // The replay ends by itself at its duration; the step deadline only guards against a
        // replay that cannot end.
        let deadline =
            deadline_after(params.duration.get() + self.record.config.timeouts.step.get());
        let mut last_publish = Instant::now();
        // The last write of the figures met a change of the set and did not land.
        let mut write_again = false;
        let result = loop {
            tokio::select! {
                result = &mut run => break result,
                changed = report_rx.changed() => {
                    if changed.is_err() || (!write_again && last_publish.elapsed() < PUBLISH_EVERY) {
                        continue;
                    }
                    write_again = false;
                    let report = report_rx.borrow_and_update().clone();
                    if let Some(report) = report {
                        last_publish = Instant::now();
                        self.record.measured.comparison = serde_json::to_value(&report).ok();
                        self.record.measured.comparison_passed = match &report.verdict {
                            CompareVerdict::Pass => Some(true),
                            CompareVerdict::Fail { .. } => Some(false),
                            CompareVerdict::TooFewSamples { .. } => None,
                        };
                        let sent = self.record.clone();
                        if let Committed::Changed = self.commit(None, None).await? {
                            if self.record != sent {
                                // Promoted or aborted from elsewhere: the loop decides again.
                                let _ = stop_tx.send(true);
                                return Ok(());
                            }
                            // Only the set moved on (its status, say): the replay goes on,
                            // and the figures are written again at the next report.
                            write_again = true;
                        }
                    }
                }
                changed = self.view.changed() => if self.changed_from_outside(changed).await? {
                    let _ = stop_tx.send(true);
                    self.report(started, ": ended by another command");
                    return Ok(());
                },
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = stop_tx.send(true);
                    let message = format!("{}: the replay did not end", self.deadline_message(false));
                    self.step_failed(RollbackCause::TimedOut, message)?;
                    return Ok(());
                }
                _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
            }
        };
        let comparison = match result {
            Ok(c) => c,
            Err(e) => {
                let message = format!("the shadow comparison could not run: {e}");
                return self.undecided(started, &message).await;
            }
        };
        let report = comparison.report();
        self.record.measured.comparison = serde_json::to_value(&report).ok();
        let text = render_report(&report);
        match report.verdict.clone() {
            CompareVerdict::Pass => {
                self.record.measured.comparison_passed = Some(true);
                self.complete(started, ": passed")?;
                for line in text.lines() {
                    self.progress.say(format!("        {line}"));
                }
            }
            CompareVerdict::Fail { reasons } => {
                self.record.measured.comparison_passed = Some(false);
                self.report(started, ": FAILED");
                for line in text.lines() {
                    self.progress.say(format!("        {line}"));
                }
                self.step_failed(
                    RollbackCause::GateFailed,
                    format!(
                        "the shadow compared badly with stable: {}",
                        reasons.join("; ")
                    ),
                )?;
            }
            CompareVerdict::TooFewSamples { reason } => {
                // The replay has ended (its duration or its request count): waiting for a
                // person would keep the shadow running for nothing, and passing would claim a
                // judgement that was never made. The shadow goes, the real set stays as it
                // was, and the run ends as timed out (exit 5), not as done.
                self.record.measured.comparison_passed = None;
                self.report(started, ": could not decide");
                for line in text.lines() {
                    self.progress.say(format!("        {line}"));
                }
                let home = self
                    .record
                    .twin
                    .as_ref()
                    .map_or_else(|| self.name.clone(), |t| t.home.clone());
                self.step_failed(
                    RollbackCause::TimedOut,
                    format!(
                        "the shadow comparison could not decide: {reason} when the replay ended (--duration {}, --max-requests {}); nothing was judged, so the shadow is removed and {home} is left as it was; check that the pods' IPs are reachable from where rollout runs, or replay for longer (--duration) or faster (--rate)",
                        params.duration, limits_max
                    ),
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 244, 0, last], 8080))
    }

    #[test]
    fn every_pod_of_both_sides_is_paired() {
        assert!(pairs(&[], &[addr(1)]).is_empty());
        let p = pairs(&[addr(1), addr(2), addr(3)], &[addr(9)]);
        assert_eq!(p.len(), 3);
        assert!(p.iter().all(|x| x.shadow == addr(9)));
        let p = pairs(&[addr(1)], &[addr(8), addr(9)]);
        assert_eq!(
            p.iter().map(|x| (x.stable, x.shadow)).collect::<Vec<_>>(),
            [(addr(1), addr(8)), (addr(1), addr(9))]
        );
    }

    #[test]
    fn points_become_a_share() {
        let params = ShadowParams {
            replicas: 1,
            duration: crate::model::HumanDuration::from_secs(60),
            requests: vec![],
            compare: crate::model::twin::ShadowCompare {
                max_error_rate_increase: 2.5,
                ..Default::default()
            },
            keep_data: false,
        };
        let spec = compare_spec(&params);
        assert!((spec.max_error_rate_increase - 0.025).abs() < 1e-9);
        assert_eq!(spec.min_samples, 20);
    }
}
