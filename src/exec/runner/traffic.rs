//! The steps that move live traffic between sets by Service selectors, and the preview Service:
//! `PinTraffic` (the live Services on blue only), `SwitchTraffic` (on green), and on the way
//! back `ReturnTraffic` (on blue as it runs now), `RestoreSelectors` (as they were) and
//! `RemovePreview`. `rollout` never deletes or changes a Service it did not make, except the
//! selectors of the live Services the rollout was told (or found) to move.

use crate::exec::cluster::ClusterExt;
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::time::Instant;

use super::Runner;
use crate::exec::cluster::{ApiError, Cluster};
use crate::exec::gates::GateRunner;
use crate::exec::ExecError;
use crate::model::twin::{render_selector, Twin, HOME_ANNOTATION, SET_LABEL};
use crate::strategy::trust::serves_one_of;
use crate::strategy::twin::rollout_preview_home;

/// Where a traffic step points the live Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum To {
    /// Blue, pinned to the revision it ran when the rollout began.
    PinnedBlue,
    /// Green.
    Green,
    /// Blue, pinned to the revision it runs now (its template may have moved on since).
    BlueNow,
    /// The selectors as they were before the rollout.
    Original,
}

/// Whether the Service `name` among `services` is the preview `rollout` made for `home`;
/// `None` when there is no Service of that name.
fn preview_owned(services: &[Service], name: &str, home: &str) -> Option<bool> {
    services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .map(|s| rollout_preview_home(&s.metadata).as_deref() == Some(home))
}

/// Why the preview Service `preview` cannot be used: a Service of that name exists that
/// `rollout` did not make for this home (planning refuses that; this catches one made since).
fn preview_taken(twin: &Twin, preview: &str) -> String {
    format!(
        "Service {preview} exists and was not created by rollout for {}; it is left as it is: rename or delete it, then run again",
        twin.home
    )
}

impl<C: Cluster, G: GateRunner> Runner<C, G> {
    /// Step: point every live Service `to` a set, one selector patch each.
    pub(super) async fn point_traffic(&mut self, to: To) -> Result<(), ExecError> {
        let started = Instant::now();
        let twin = self.twin()?;
        if to == To::Green && self.record.measured.switched_at.is_none() {
            // Recorded before the write: from here on green may have served, so its data is
            // never deleted by a later rollback.
            self.record.measured.switched_at = Some(Self::now());
        }
        if !self.begin_and_record().await? {
            return Ok(());
        }
        let blue_now = self
            .view
            .borrow()
            .statefulset
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .and_then(|s| s.update_revision.clone());
        let going_back = matches!(to, To::BlueNow | To::Original);
        let (services_now, serving_labels) = if going_back {
            (
                self.list_all::<Service>("listing Services in namespace")
                    .await?,
                self.pod_labels_of_sets(&twin).await?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let mut detail = Vec::new();
        for service in &twin.services {
            if going_back {
                let selector_now = services_now
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(&service.name))
                    .and_then(|s| s.spec.as_ref())
                    .and_then(|s| s.selector.clone())
                    .unwrap_or_default();
                let labels: Vec<_> = serving_labels.iter().collect();
                if !serves_one_of(&selector_now, &labels) {
                    // The record names it, but it serves neither set now: not ours to rewrite.
                    tracing::warn!(service = %service.name, "Service selects neither set; selector left alone");
                    detail.push(format!(
                        "{} selects neither {} nor {}, so its selector is left as it is",
                        service.name, self.name, twin.set
                    ));
                    continue;
                }
            }
            let selector = match to {
                To::PinnedBlue => service.blue.clone(),
                To::Green => service.green.clone(),
                To::BlueNow => service.blue_at(blue_now.as_deref()),
                To::Original => service.original.clone(),
            };
            self.cluster
                .set_service_selector(&service.name, &selector)
                .await
                .map_err(|e| ExecError::api("setting the selector of Service", &service.name, e))?;
            tracing::info!(service = %service.name, selector = %render_selector(&selector), "Service selector set");
            detail.push(format!(
                "{} selects {}",
                service.name,
                render_selector(&selector)
            ));
        }
        // Through a route, the route sends its requests to the preview until its own rules
        // are back (`RestoreRoute`); `RemovePreview` deletes it then.
        if to == To::Green && self.record.route.is_none() {
            self.delete_preview(&twin).await?;
        }
        self.complete(started, &format!(": {}", detail.join("; ")))
    }

    /// The pod template labels of the rollout's own set and of its twin (as they are in the
    /// cluster, not as the record says).
    async fn pod_labels_of_sets(
        &self,
        twin: &Twin,
    ) -> Result<Vec<BTreeMap<String, String>>, ExecError> {
        let labels_of = |sts: &StatefulSet| {
            sts.spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        if let Some(own) = self.view.borrow().statefulset.as_ref() {
            out.push(labels_of(own));
        }
        if let Some(found) = self
            .cluster
            .get::<StatefulSet>(&twin.set)
            .await
            .map_err(|e| ExecError::api("reading StatefulSet", &twin.set, e))?
        {
            out.push(labels_of(&found));
        }
        Ok(out)
    }

    /// Rollback step: delete the preview Service, if `rollout` made it.
    pub(super) async fn remove_preview_step(&mut self) -> Result<(), ExecError> {
        let started = Instant::now();
        let twin = self.twin()?;
        if !self.begin_and_record().await? {
            return Ok(());
        }
        self.delete_preview(&twin).await?;
        self.complete(started, ": done")
    }

    /// Whether the Service `name` is `rollout`'s preview for `home` (`None`: no such Service).
    async fn preview_owned_now(&self, name: &str, home: &str) -> Result<Option<bool>, ExecError> {
        let services = self
            .list_all::<Service>("listing Services in namespace")
            .await?;
        Ok(preview_owned(&services, name, home))
    }

    /// Deletes the twin's preview Service (if it has one) when `rollout` made it for this
    /// home; a Service of that name someone else made is left as it is.
    pub(super) async fn delete_preview(&self, twin: &Twin) -> Result<(), ExecError> {
        let Some(preview) = twin.preview.as_deref() else {
            return Ok(());
        };
        match self.preview_owned_now(preview, &twin.home).await? {
            None => Ok(()),
            Some(true) => match self.cluster.remove::<Service>(preview).await {
                Ok(()) | Err(ApiError::NotFound) => Ok(()),
                Err(e) => Err(ExecError::api("deleting preview Service", preview, e)),
            },
            Some(false) => {
                tracing::warn!(service = %preview, "preview Service not made by rollout for this set; left alone");
                self.progress.say(format!(
                    "        Service {preview} was not created by rollout for {}, so it is left as it is",
                    twin.home
                ));
                Ok(())
            }
        }
    }

    /// The preview Service: the first live Service's ports, selecting only green. Gives a
    /// problem when a Service of that name that `rollout` did not make is in the way.
    pub(super) async fn create_preview(
        &self,
        twin: &Twin,
        preview: &str,
    ) -> Result<Option<String>, ExecError> {
        let services = self
            .list_all::<Service>("listing Services in namespace")
            .await?;
        if preview_owned(&services, preview, &twin.home) == Some(false) {
            return Ok(Some(preview_taken(twin, preview)));
        }
        let live = twin.services.first();
        // The ports of the route's Service (a route sends to the preview on that Service's
        // port: blue/green's preview and switch, a shadow's mirror), or of the live Service.
        let ports_of = self
            .record
            .route
            .as_ref()
            .map(|r| r.service.clone())
            .or_else(|| live.map(|l| l.name.clone()));
        let ports: Vec<ServicePort> = ports_of
            .and_then(|name| {
                services
                    .iter()
                    .find(|s| s.metadata.name.as_deref() == Some(name.as_str()))
            })
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|p| ServicePort {
                node_port: None,
                ..p
            })
            .collect();
        let selector = live
            .map(|l| l.green.clone())
            .unwrap_or_else(|| BTreeMap::from([(SET_LABEL.to_string(), twin.set.clone())]));
        let service = Service {
            metadata: ObjectMeta {
                name: Some(preview.to_string()),
                labels: Some(BTreeMap::from([(SET_LABEL.to_string(), twin.set.clone())])),
                annotations: Some(BTreeMap::from([(
                    HOME_ANNOTATION.to_string(),
                    twin.home.clone(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector.clone()),
                ports: Some(ports),
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        match self.cluster.create(&service, false).await {
            Ok(_) => Ok(None),
            Err(ApiError::AlreadyExists(_)) => {
                // Ours from a run that died: point it at this green. Anyone else's (made since
                // the listing above) is not touched.
                if self.preview_owned_now(preview, &twin.home).await? == Some(false) {
                    return Ok(Some(preview_taken(twin, preview)));
                }
                self.cluster
                    .set_service_selector(preview, &selector)
                    .await
                    .map_err(|e| ExecError::api("setting the selector of Service", preview, e))?;
                Ok(None)
            }
            Err(e) => Err(ExecError::api("creating preview Service", preview, e)),
        }
    }
}
