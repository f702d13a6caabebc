//! The gate steps: `Gate` (every configured gate on the pods a step changed) and `GateService`
//! (the HTTP gate through a Service, by the API server's service proxy); in a rollout through
//! an HTTPRoute both also take its gateways' verdict on the route as it is now. A gate changes
//! nothing; its verdict moves the rollout on, rolls it back, or runs it again when it could
//! not decide, until the step's deadline.

use k8s_openapi::api::core::v1::Service;
use tokio::time::Instant;

use super::Runner;
use crate::exec::cluster::Cluster;
use crate::exec::gates::{gate_targets, GateRunner};
use crate::exec::ExecError;
use crate::gate::probe::GateContext;
use crate::gate::Verdict;
use crate::model::state::RollbackCause;

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// Step: every configured gate on the pods `ordinals` of `set` (the rollout's own set when
    /// `None`).
    pub(super) async fn gate(
        &mut self,
        ordinals: &[u32],
        set: Option<&str>,
    ) -> Result<(), ExecError> {
        let started = Instant::now();
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let step_text = self.step_text();
        let changed_container = self
            .record
            .target
            .images
            .first()
            .map(|i| i.container.clone());
        let set_name = set.map_or_else(|| self.name.clone(), str::to_string);
        let pods = self.pods_of(&set_name).await;
        let targets = gate_targets(
            &set_name,
            &pods,
            ordinals,
            &self.record.config.gates,
            changed_container.as_deref(),
        );
        let verdict = match targets {
            Err(problem) => Verdict::Inconclusive {
                message: format!("the gate could not run: {problem}"),
            },
            Ok(targets) => {
                let context = GateContext {
                    statefulset: Some(self.name.clone()),
                    rollout_id: Some(self.record.id.clone()),
                    step: Some(self.record.current_step),
                    description: Some(step_text),
                    revision: self.record.target.revision.clone(),
                    probes: Default::default(),
                };
                self.progress.live_probes(&context.probes);
                let gates = self.gates.clone();
                let spec = self.options.gates.over(&self.record.config.gates);
                let pods = targets.iter().map(|t| t.pod.clone()).collect();
                let metrics = self.metric_gates(&set_name, pods);
                // On the heap: the probes and the queries together make a large future, and the
                // run loop's own future holds every step's.
                let mut run = Box::pin(async move {
                    let (probes, metrics) =
                        tokio::join!(gates.run(&spec, &targets, &context), metrics);
                    Verdict::all([probes, metrics])
                });
                let (deadline, overall) = self.step_deadline();
                loop {
                    tokio::select! {
                        verdict = &mut run => break verdict,
                        _ = tokio::time::sleep_until(deadline) => {
                            let message = format!("{}: the gate did not finish", self.deadline_message(overall));
                            self.report(started, ": TIMED OUT");
                            return self.step_failed(RollbackCause::TimedOut, message);
                        }
                        changed = self.view.changed() => {
                            if self.changed_from_outside(changed).await? {
                                self.report(started, ": interrupted");
                                return Ok(());
                            }
                        }
                        _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
                    }
                }
            }
        };
        let verdict = Verdict::all([verdict, self.route_gate_now().await?]);
        self.conclude_gate(verdict, started).await
    }

    /// Step: the HTTP gate through a Service.
    pub(super) async fn gate_service(&mut self, service: &str) -> Result<(), ExecError> {
        let started = Instant::now();
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let services = self
            .list_all::<Service>("listing Services in namespace")
            .await?;
        let port = services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(service))
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.as_ref())
            .and_then(|p| p.first())
            .map(|p| {
                p.name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| p.port.to_string())
            });
        let verdict = match port {
            None => Verdict::Inconclusive {
                message: format!("Service {service} was not found or has no port to probe"),
            },
            Some(port) => {
                let gates = self.gates.clone();
                let spec = self.options.gates.over(&self.record.config.gates);
                let namespace = self.cluster.namespace().to_string();
                let service = service.to_string();
                let run =
                    async move { gates.run_service(&spec, &namespace, &service, &port).await };
                let (deadline, overall) = self.step_deadline();
                tokio::select! {
                    verdict = run => verdict,
                    _ = tokio::time::sleep_until(deadline) => {
                        let message = format!("{}: the gate did not finish", self.deadline_message(overall));
                        self.report(started, ": TIMED OUT");
                        return self.step_failed(RollbackCause::TimedOut, message);
                    }
                    _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
                }
            }
        };
        let verdict = Verdict::all([verdict, self.route_gate_now().await?]);
        self.conclude_gate(verdict, started).await
    }

    /// Acts on a gate's verdict: next step, rollback, or another run when it could not decide
    /// (until the step's deadline: then the step times out).
    async fn conclude_gate(&mut self, verdict: Verdict, started: Instant) -> Result<(), ExecError> {
        match verdict {
            Verdict::Pass => self.complete(started, ": passed"),
            Verdict::Fail { .. } => {
                let message = verdict.message();
                self.report(started, ": FAILED");
                for line in message.lines() {
                    self.progress.say(format!("        {line}"));
                }
                self.step_failed(RollbackCause::GateFailed, message)
            }
            Verdict::Inconclusive { message } => self.undecided(started, &message).await,
        }
    }
}
