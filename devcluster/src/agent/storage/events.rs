//! core/v1 Events on claims, so `kubectl describe pvc` tells a user why a volume is missing.
//! A repeated event (the same reason and message for the same claim) bumps the count of the one
//! already sent, as the kubelet's recorder does, instead of flooding the namespace.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, PersistentVolumeClaim};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};

use crate::layout::PROVISIONER_NAME;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    Warning,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "Normal",
            Kind::Warning => "Warning",
        }
    }
}

/// The reference an event hangs on; `None` for a claim the API server has not named yet.
pub fn claim_ref(claim: &PersistentVolumeClaim) -> Option<ObjectReference> {
    Some(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("PersistentVolumeClaim".into()),
        namespace: Some(claim.metadata.namespace.clone()?),
        name: Some(claim.metadata.name.clone()?),
        uid: claim.metadata.uid.clone(),
        resource_version: claim.metadata.resource_version.clone(),
        ..Default::default()
    })
}

/// A new event about `about`. Its name follows the client-go convention `<object>.<hex nanos>`.
pub fn new_event(
    about: &ObjectReference,
    kind: Kind,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Event {
    let object = about.name.as_deref().unwrap_or("unknown");
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: about.namespace.clone(),
            ..Default::default()
        },
        involved_object: about.clone(),
        type_: Some(kind.as_str().into()),
        reason: Some(reason.into()),
        message: Some(message.into()),
        source: Some(EventSource {
            component: Some(PROVISIONER_NAME.into()),
            host: None,
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    }
}

/// What makes two events the same: the object (by uid), the reason and the message.
type EventKey = (String, String, String);

/// An event already sent: its name and how often it happened.
#[derive(Debug, Clone)]
struct Sent {
    name: String,
    count: i32,
}

/// Sends events, remembering which it sent so repeats become count bumps.
pub struct Recorder {
    client: Client,
    sent: Mutex<HashMap<EventKey, Sent>>,
}

impl Recorder {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            sent: Mutex::new(HashMap::new()),
        }
    }

    pub async fn record(
        &self,
        about: &ObjectReference,
        kind: Kind,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let Some(ns) = about.namespace.clone() else {
            return Ok(());
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let key = (
            about.uid.clone().unwrap_or_default(),
            reason.to_string(),
            message.to_string(),
        );
        let now = Timestamp::now();
        let earlier = self.lock().get(&key).cloned();
        if let Some(Sent { name, count }) = earlier {
            let patch = serde_json::json!({ "count": count + 1, "lastTimestamp": Time(now) });
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.lock().insert(
                        key,
                        Sent {
                            name,
                            count: count + 1,
                        },
                    );
                    return Ok(());
                }
                // Events expire (one hour by default); start a new one.
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let event = new_event(about, kind, reason, message, now);
        let created = api.create(&PostParams::default(), &event).await?;
        if let Some(name) = created.metadata.name {
            self.lock().insert(key, Sent { name, count: 1 });
        }
        Ok(())
    }

    /// Forgets the events of an object that no longer needs them (its volume was made).
    pub fn forget(&self, uid: &str) {
        self.lock().retain(|(u, _, _), _| u != uid);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EventKey, Sent>> {
        // A panic while holding this lock cannot leave the map inconsistent (each update is one
        // insert), so a poisoned lock is still usable.
        self.sent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warning_event_on_a_claim() {
        let claim = PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("data-web-0".into()),
                namespace: Some("shop".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = claim_ref(&claim).unwrap();
        let now: Timestamp = "2024-01-01T00:00:00Z".parse().unwrap();
        let e = new_event(
            &r,
            Kind::Warning,
            "ProvisioningFailed",
            "source claim \"x\" does not exist",
            now,
        );
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert!(e
            .metadata
            .name
            .as_deref()
            .unwrap()
            .starts_with("data-web-0."));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.reason.as_deref(), Some("ProvisioningFailed"));
        assert_eq!(
            e.involved_object.kind.as_deref(),
            Some("PersistentVolumeClaim")
        );
        assert_eq!(e.involved_object.uid.as_deref(), Some("u-1"));
        assert_eq!(e.count, Some(1));
        assert_eq!(
            e.source.unwrap().component.as_deref(),
            Some(PROVISIONER_NAME)
        );
    }

    #[test]
    fn unnamed_claim_has_no_reference() {
        assert!(claim_ref(&PersistentVolumeClaim::default()).is_none());
    }
}
