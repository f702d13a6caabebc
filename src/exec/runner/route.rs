//! The steps of traffic through a Gateway API HTTPRoute: `CreateRevisionServices` (a stable and
//! a canary Service selecting by `controller-revision-hash`), `SetRouteWeights` (the route's
//! rules at a weight, computed from its original rules by `crate::strategy::route`), and their
//! inverses `RestoreRoute` (the original rules, exactly) and `RemoveRevisionServices` (only
//! Services carrying rollout's mark); a shadow's `MirrorRoute`; blue/green's `PreviewRoute`
//! (a header to green's preview Service) and `SwitchRoute` (every request to it, in one
//! write). Every route write waits for its gateways' verdict on the generation it produced: a
//! route a gateway rejects fails the step with the gateway's words.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{Runner, Waited};
use crate::cluster::{ApiError, Cluster, PatchKind, Preconditions, Select};
use crate::exec::gates::GateRunner;
use crate::exec::ExecError;
use crate::model::plan::Step;
use crate::model::route::{rules_fingerprint, HttpRoute, RouteRecord, ROUTE_BACKEND_LABEL};
use crate::model::state::RollbackCause;
use crate::model::twin::{HOME_ANNOTATION, REVISION_LABEL, SET_LABEL};
use crate::strategy::predicates;
use crate::strategy::route::{route_verdict, weighted_rules, RouteVerdict, Weights};

/// Conflicting route writes in a row before the step gives up (someone else keeps writing it).
const MAX_ROUTE_CONFLICTS: u32 = 10;

/// Whether a Service is one rollout made for the set `home` through a route.
pub(crate) fn revision_service_owned(meta: &ObjectMeta, home: &str) -> bool {
    let label = |k: &str| meta.labels.as_ref().and_then(|l| l.get(k));
    label(ROUTE_BACKEND_LABEL).is_some()
        && label(SET_LABEL).map(String::as_str) == Some(home)
        && meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(HOME_ANNOTATION))
            .map(String::as_str)
            == Some(home)
}

/// A route step's future, made and boxed outside the caller's frame.
type StepFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ExecError>> + Send + 'a>>;

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// Runs a route step. The step's future is built and boxed here, not in `run_step`, so the
    /// frame that polls every kind of step does not grow by the route steps' (debug builds keep
    /// each arm's temporaries apart, and the run loop is polled deep in the stack).
    pub(super) fn route_step(&mut self, step: &Step) -> StepFuture<'_> {
        match step {
            Step::CreateRevisionServices => Box::pin(self.create_revision_services()),
            Step::SetRouteWeights { canary_percent, .. } => {
                Box::pin(self.set_route_weights(canary_percent.get()))
            }
            Step::RestoreRoute => Box::pin(self.restore_route()),
            Step::MirrorRoute { percent } => Box::pin(self.mirror_route(*percent)),
            Step::PreviewRoute => Box::pin(self.preview_route()),
            Step::SwitchRoute => Box::pin(self.switch_route()),
            _ => Box::pin(self.remove_revision_services()),
        }
    }

    fn route_record(&self) -> Result<RouteRecord, ExecError> {
        self.record
            .route
            .as_deref()
            .cloned()
            .ok_or_else(|| ExecError::NotRollable {
                statefulset: self.name.clone(),
                reason:
                    "its rollout record names no HTTPRoute; `rollout abort` returns it to stable"
                        .into(),
            })
    }

    /// The route record and the Service of the twin (green's preview, the shadow's) a route
    /// step sends requests to; `None` once the step was failed for a record that names no such
    /// Service (`to` says what the step would have done with it).
    fn with_twin_service(
        &mut self,
        started: Instant,
        to: &str,
    ) -> Result<Option<(RouteRecord, String)>, ExecError> {
        let route = self.route_record()?;
        match self.record.twin.as_ref().and_then(|t| t.preview.clone()) {
            Some(service) => Ok(Some((route, service))),
            None => self
                .step_cannot_finish(
                    started,
                    &format!("the record names no Service of the second set's to {to}"),
                )
                .map(|()| None),
        }
    }

    /// The route's part of every gate of a rollout through a route: its gateways' verdict on
    /// the route as it is now (`crate::gate::route`); a pass without a route.
    pub(super) async fn route_gate_now(&self) -> Result<crate::gate::Verdict, ExecError> {
        let Some(name) = self.record.route.as_ref().map(|r| r.route.clone()) else {
            return Ok(crate::gate::Verdict::Pass);
        };
        let found = self
            .cluster
            .get::<HttpRoute>(&name)
            .await
            .map_err(|e| ExecError::api("reading HTTPRoute", &name, e))?;
        Ok(crate::gate::route::route_gate(&name, found.as_ref()))
    }

    /// Step: the per-revision Services, `<set>-stable` on the stable revision and
    /// `<set>-canary` on the new one, with the ports of the route's Service.
    pub(super) async fn create_revision_services(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        let route = self.route_record()?;
        let (deadline, overall) = self.step_deadline();
        let name = self.name.clone();
        // The new revision is known once the controller has seen the new template.
        let revision = match self
            .wait_on(&name, Some(deadline), |snap| {
                let sts = snap.statefulset.as_ref()?;
                let generation = sts.metadata.generation.unwrap_or(0);
                predicates::revision_taken_up(sts, generation, None)
            })
            .await?
        {
            Waited::Ready(r) => r,
            Waited::Changed => return Ok(()),
            Waited::Deadline => {
                return self.step_timed_out(
                    started,
                    overall,
                    "the StatefulSet controller did not report the new revision",
                )
            }
        };
        let Some(stable) = self.record.stable.revision.revision.clone() else {
            return self.step_cannot_finish(
                started,
                "the record does not name the stable revision, so no Service can select its pods",
            );
        };
        if let Some(r) = self.record.route.as_mut() {
            r.canary_revision = Some(revision.clone());
        }
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let set_selector = self
            .view
            .borrow()
            .statefulset
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        let ports: Vec<ServicePort> = self
            .cluster
            .get::<Service>(&route.service)
            .await
            .map_err(|e| ExecError::api("reading Service", &route.service, e))?
            .and_then(|s| s.spec)
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .map(|p| ServicePort {
                node_port: None,
                ..p
            })
            .collect();
        for (service, role, rev) in [
            (&route.stable_service, "stable", &stable),
            (&route.canary_service, "canary", &revision),
        ] {
            let mut selector = set_selector.clone();
            selector.insert(REVISION_LABEL.to_string(), rev.clone());
            if let Some(problem) = self
                .ensure_revision_service(service, role, &selector, &ports)
                .await?
            {
                return self.step_cannot_finish(started, &problem);
            }
        }
        self.complete(
            started,
            &format!(
                ": {} selects revision {stable}, {} selects {revision}",
                route.stable_service, route.canary_service
            ),
        )
    }

    /// Creates one per-revision Service, or points one rollout made before (a run that died)
    /// at `selector`. A problem when a Service of that name is someone else's.
    async fn ensure_revision_service(
        &self,
        name: &str,
        role: &str,
        selector: &BTreeMap<String, String>,
        ports: &[ServicePort],
    ) -> Result<Option<String>, ExecError> {
        let service = Service {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([
                    (SET_LABEL.to_string(), self.name.clone()),
                    (ROUTE_BACKEND_LABEL.to_string(), role.to_string()),
                ])),
                annotations: Some(BTreeMap::from([(
                    HOME_ANNOTATION.to_string(),
                    self.name.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector.clone()),
                ports: Some(ports.to_vec()),
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        match self.cluster.create(&service, false).await {
            Ok(_) => Ok(None),
            Err(ApiError::AlreadyExists(_)) => {
                let found = self
                    .cluster
                    .get::<Service>(name)
                    .await
                    .map_err(|e| ExecError::api("reading Service", name, e))?;
                match found {
                    Some(s) if revision_service_owned(&s.metadata, &self.name) => {
                        use crate::exec::cluster::ClusterExt;
                        self.cluster
                            .set_service_selector(name, selector)
                            .await
                            .map_err(|e| {
                                ExecError::api("setting the selector of Service", name, e)
                            })?;
                        Ok(None)
                    }
                    _ => Ok(Some(format!(
                        "Service {name} exists and was not created by rollout for {}; it is left as it is: rename or delete it, then run again",
                        self.name
                    ))),
                }
            }
            Err(e) => Err(ExecError::api("creating Service", name, e)),
        }
    }

    /// Step: the route's weights (`canary_percent` to the canary Service); going back, with no
    /// header pin.
    pub(super) async fn set_route_weights(&mut self, canary_percent: u32) -> Result<(), ExecError> {
        let started = Instant::now();
        let route = self.route_record()?;
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let namespace = self.cluster.namespace().to_string();
        let pin = if self.backwards() {
            None
        } else {
            route.canary_header.as_ref()
        };
        let rules = weighted_rules(
            &route.original_rules,
            &Weights {
                service: &route.service,
                namespace: &namespace,
                stable: &route.stable_service,
                canary: &route.canary_service,
                canary_percent,
                pin,
            },
        );
        let pinned = pin.map_or_else(String::new, |p| {
            format!("; requests with {}: {} only", p, route.canary_service)
        });
        self.write_route(
            started,
            &route.route,
            rules,
            false,
            &format!(
                "{canary_percent}% to {}, {}% to {}{pinned}",
                route.canary_service,
                100 - canary_percent.min(100),
                route.stable_service
            ),
        )
        .await
    }

    /// Step: a shadow's mirror on the route: each rule to the set's Service copies requests to
    /// the shadow's Service (the twin's preview), users still get stable's answers.
    pub(super) async fn mirror_route(
        &mut self,
        percent: Option<crate::model::weight::Percent>,
    ) -> Result<(), ExecError> {
        let started = Instant::now();
        let Some((route, mirror)) = self.with_twin_service(started, "mirror requests to")? else {
            return Ok(());
        };
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let namespace = self.cluster.namespace().to_string();
        let rules = crate::strategy::route::mirrored_rules(
            &route.original_rules,
            &route.service,
            &namespace,
            &mirror,
            percent,
        );
        let share = percent.map_or_else(
            || "every request".to_string(),
            |p| format!("{p} of the requests"),
        );
        self.write_route(
            started,
            &route.route,
            rules,
            false,
            &format!(
                "{share} to {} mirrored to {mirror} (answers from {} only)",
                route.service, route.service
            ),
        )
        .await
    }

    /// Step (blue/green): requests with the preview header to green's preview Service, every
    /// other request as before.
    pub(super) async fn preview_route(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        let Some((route, preview)) = self.with_twin_service(started, "route requests to")? else {
            return Ok(());
        };
        let Some(pin) = route.canary_header.clone() else {
            return self.step_cannot_finish(started, "the record names no preview header");
        };
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let namespace = self.cluster.namespace().to_string();
        let rules = crate::strategy::route::preview_rules(
            &route.original_rules,
            &route.service,
            &namespace,
            &preview,
            &pin,
        );
        self.write_route(
            started,
            &route.route,
            rules,
            false,
            &format!(
                "requests with {pin} to {preview} (green), the rest to {}",
                route.service
            ),
        )
        .await
    }

    /// Step (blue/green): the switch, in one write of the route: every backendRef to the live
    /// Service names green's preview Service instead.
    pub(super) async fn switch_route(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        let Some((route, preview)) = self.with_twin_service(started, "switch the route to")? else {
            return Ok(());
        };
        if self.record.measured.switched_at.is_none() {
            // Recorded before the write: from here on green may have served, so its data is
            // never deleted by a later rollback.
            self.record.measured.switched_at = Some(Self::now());
        }
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let namespace = self.cluster.namespace().to_string();
        let rules = crate::strategy::route::switched_rules(
            &route.original_rules,
            &route.service,
            &namespace,
            &preview,
        );
        self.write_route(
            started,
            &route.route,
            rules,
            false,
            &format!("every request to {preview} (green), in one write"),
        )
        .await
    }

    /// Step: the route's rules as they were before the rollout. At the end of a blue/green,
    /// once the live Services send their traffic only to green's pods (their EndpointSlices
    /// say so), so that the gateway finds green behind them.
    pub(super) async fn restore_route(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        let route = self.route_record()?;
        if !self.backwards() {
            if let Some(twin) = self
                .record
                .twin
                .clone()
                .filter(|t| t.role == crate::model::twin::TwinRole::Green)
            {
                if !self.live_services_on(&twin, started).await? {
                    return self.step_timed_out(
                        started,
                        self.step_deadline().1,
                        &format!(
                            "the live Service(s) did not send their traffic to {} alone (their EndpointSlices)",
                            twin.set
                        ),
                    );
                }
            }
        }
        if !self.begin_and_record().await? {
            return Ok(());
        }
        self.write_route(
            started,
            &route.route,
            route.original_rules.clone(),
            true,
            &format!("its rules as before the rollout, to {}", route.service),
        )
        .await
    }

    /// Writes `rules` into the route (under its resourceVersion, read again on a conflict),
    /// then waits for its gateways' verdict on the generation written. A rejection fails the
    /// step, except for the route's own rules (`original`), which are the user's as they were.
    async fn write_route(
        &mut self,
        started: Instant,
        name: &str,
        rules: Value,
        original: bool,
        what: &str,
    ) -> Result<(), ExecError> {
        let mut conflicts = 0;
        let generation = loop {
            let Some(current) = self
                .cluster
                .get::<HttpRoute>(name)
                .await
                .map_err(|e| ExecError::api("reading HTTPRoute", name, e))?
            else {
                return self.step_cannot_finish(
                    started,
                    &format!("HTTPRoute {name} was deleted during the rollout"),
                );
            };
            if current.spec.get("rules") == Some(&rules) {
                self.saw_own_rules(&current);
                break current.metadata.generation.unwrap_or(0);
            }
            let patch = json!({
                "metadata": {"resourceVersion": current.metadata.resource_version},
                "spec": {"rules": rules},
            });
            match self
                .cluster
                .patch::<HttpRoute>(name, &patch, PatchKind::Merge, false)
                .await
            {
                Ok(written) => {
                    self.saw_own_rules(&written);
                    break written.metadata.generation.unwrap_or(0);
                }
                Err(ApiError::Conflict(_)) if conflicts < MAX_ROUTE_CONFLICTS => conflicts += 1,
                Err(ApiError::Refused { message, .. }) => {
                    return self.step_cannot_finish(
                        started,
                        &format!("the API server refused the write of HTTPRoute {name}: {message}"),
                    )
                }
                Err(e) => return Err(ExecError::api("writing HTTPRoute", name, e)),
            }
        };
        tracing::info!(route = %name, generation, "route written");
        let (deadline, overall) = self.step_deadline();
        match self.wait_route(name, generation, deadline).await? {
            Waited::Changed => Ok(()),
            Waited::Deadline => self.step_timed_out(
                started,
                overall,
                &format!("HTTPRoute {name} was written, but its gateways never answered"),
            ),
            Waited::Ready(RouteVerdict::Accepted) => {
                self.complete(started, &format!(": {what}; accepted by its gateways"))
            }
            Waited::Ready(RouteVerdict::Rejected(words)) if original => self.complete(
                started,
                &format!(
                    ": {what}; the gateway does not accept it as it was before either: {words}"
                ),
            ),
            // Going back, a route the gateway rejects is no reason to stop: the next steps
            // put the pods and then the route's own rules back.
            Waited::Ready(RouteVerdict::Rejected(words)) if self.backwards() => self.complete(
                started,
                &format!(": {what}; not accepted ({words}), going on"),
            ),
            Waited::Ready(RouteVerdict::Rejected(words)) => {
                let message = format!("HTTPRoute {name} was not accepted: {words}");
                self.report(started, &format!(": FAILED: {message}"));
                self.step_failed(RollbackCause::GateFailed, message)
            }
            Waited::Ready(RouteVerdict::Pending(_)) => Ok(()),
        }
    }

    /// Keeps the fingerprint of `route`'s rules as the API server stored rollout's write (with
    /// the defaults it filled in): rules that differ later are someone else's.
    fn saw_own_rules(&mut self, route: &HttpRoute) {
        let rules = route.spec.get("rules").cloned().unwrap_or(Value::Null);
        if let Some(kept) = self.record.route.as_mut() {
            kept.rules_written = Some(rules_fingerprint(&rules));
        }
    }

    /// Until the route's gateways decide on `generation`, the deadline, a record written by
    /// another command, or the loss of the lease.
    async fn wait_route(
        &mut self,
        name: &str,
        generation: i64,
        deadline: Instant,
    ) -> Result<Waited<RouteVerdict>, ExecError> {
        let mut watch = self.cluster.observe::<HttpRoute>(&Select::named(name));
        loop {
            let listing = watch.borrow_and_update().clone();
            if listing.synced {
                match listing.items.first() {
                    None => {
                        return Ok(Waited::Ready(RouteVerdict::Rejected(format!(
                            "HTTPRoute {name} was deleted"
                        ))))
                    }
                    Some(route) => match route_verdict(route, generation) {
                        RouteVerdict::Pending(why) => {
                            tracing::debug!(route = %name, %why, "waiting for the gateways")
                        }
                        decided => return Ok(Waited::Ready(decided)),
                    },
                }
            }
            tokio::select! {
                changed = watch.changed() => if changed.is_err() {
                    return Err(ExecError::WatchEnded { statefulset: name.to_string() });
                },
                changed = self.view.changed() => if self.changed_from_outside(changed).await? {
                    return Ok(Waited::Changed);
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(Waited::Deadline),
                _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
            }
        }
    }

    /// Waits (until the step's deadline) for the EndpointSlices of every live Service to list
    /// only pods of green. True when they do, or when this identity may not read
    /// EndpointSlices (then it says so and goes on: green's and blue's pods both serve, so the
    /// gateway can at worst send a few more requests to blue).
    async fn live_services_on(
        &mut self,
        twin: &crate::model::twin::Twin,
        started: Instant,
    ) -> Result<bool, ExecError> {
        use k8s_openapi::api::discovery::v1::EndpointSlice;
        let (deadline, _) = self.step_deadline();
        let select =
            |service: &str| Select::labels(&format!("kubernetes.io/service-name={service}"));
        // One list first: it tells a Role that may not read EndpointSlices (a watch would
        // retry that forever), and usually finds them on green already.
        let mut all = true;
        for service in &twin.services {
            match self
                .cluster
                .list::<EndpointSlice>(&select(&service.name))
                .await
            {
                Ok(slices) => all &= predicates::endpoints_only_of(&slices, &twin.set),
                Err(ApiError::Refused { code: 403, .. }) => {
                    self.progress.say(format!(
                        "        note: EndpointSlices cannot be read (forbidden), so the route goes back to {} without seeing it select {} alone; `list` on endpointslices lets rollout wait for it",
                        service.name, twin.set
                    ));
                    return Ok(true);
                }
                Err(e) => {
                    return Err(ExecError::api(
                        "listing EndpointSlices of",
                        &service.name,
                        e,
                    ))
                }
            }
        }
        // Then a watch of each Service's slices, until all list green's pods alone.
        let mut watches: Vec<crate::cluster::Watched<EndpointSlice>> = twin
            .services
            .iter()
            .map(|s| self.cluster.observe::<EndpointSlice>(&select(&s.name)))
            .collect();
        while !all {
            let changed =
                futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                (changed, _, _) = changed => if changed.is_err() {
                    return Err(ExecError::WatchEnded { statefulset: self.name.clone() });
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(false),
                _ = self.lease_lost.changed() => return Err(self.lease_lost_error()),
            }
            // Every watch marked seen, so that none wakes the next wait for nothing.
            let judged: Vec<bool> = watches
                .iter_mut()
                .map(|w| {
                    let listing = w.borrow_and_update();
                    listing.synced && predicates::endpoints_only_of(&listing.items, &twin.set)
                })
                .collect();
            all = judged.iter().all(|on_green| *on_green);
        }
        tracing::debug!(waited = ?started.elapsed(), "live Services on green");
        Ok(true)
    }

    /// Step: delete the per-revision Services that carry rollout's mark for this set.
    pub(super) async fn remove_revision_services(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        let route = self.route_record()?;
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let mut left = Vec::new();
        for name in [&route.stable_service, &route.canary_service] {
            let found = self
                .cluster
                .get::<Service>(name)
                .await
                .map_err(|e| ExecError::api("reading Service", name, e))?;
            let Some(service) = found else { continue };
            if !revision_service_owned(&service.metadata, &self.name) {
                left.push(format!(
                    "Service {name} was not created by rollout for {}, so it is left as it is",
                    self.name
                ));
                continue;
            }
            let preconditions = Preconditions {
                uid: service.metadata.uid.clone(),
                resource_version: None,
            };
            match self.cluster.delete::<Service>(name, &preconditions).await {
                Ok(()) | Err(ApiError::NotFound) | Err(ApiError::Conflict(_)) => {}
                Err(e) => return Err(ExecError::api("deleting Service", name, e)),
            }
        }
        let detail = if left.is_empty() {
            ": done".to_string()
        } else {
            format!(": {}", left.join("; "))
        };
        self.complete(started, &detail)
    }
}
