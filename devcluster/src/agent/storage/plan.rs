//! The provisioner's decisions as plain functions over objects: which claims are ours to serve,
//! whether a claim is a clone and whether its source is ready, the PersistentVolume to create for
//! a claim, and whether a released volume is ours to delete. No I/O, so every branch is a table
//! case in the tests below.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{
    HostPathVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeSpec,
};
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::layout::{PROVISIONER_NAME, STORAGE_CLASS};

/// Set on every volume this provisioner made; it is how a released volume is recognised as ours.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
pub const DEFAULT_CLASS: &str = "storageclass.kubernetes.io/is-default-class";
/// The pre-`storageClassName` way of naming a claim's class, deprecated but still honoured by the PV controller (and so here).
const BETA_CLASS: &str = "volume.beta.kubernetes.io/storage-class";

/// The default class, like minikube's `standard`: volumes appear as soon as a claim does, and go
/// away with their claim.
pub fn standard_class() -> StorageClass {
    StorageClass {
        metadata: ObjectMeta {
            name: Some(STORAGE_CLASS.into()),
            annotations: Some(BTreeMap::from([(
                DEFAULT_CLASS.to_string(),
                "true".to_string(),
            )])),
            ..Default::default()
        },
        provisioner: PROVISIONER_NAME.into(),
        reclaim_policy: Some("Delete".into()),
        volume_binding_mode: Some("Immediate".into()),
        ..Default::default()
    }
}

pub fn is_our_class(class: &StorageClass) -> bool {
    class.provisioner == PROVISIONER_NAME
}

/// The volume made for a claim is named after the claim's uid, so a restarted agent finds the
/// volume it already made instead of making a second one.
pub fn volume_name(claim_uid: &str) -> String {
    format!("pvc-{claim_uid}")
}

/// The class a claim names, if any. An empty name means "no class" (static binding only).
pub fn claim_class(claim: &PersistentVolumeClaim) -> Option<&str> {
    let from_spec = claim
        .spec
        .as_ref()
        .and_then(|s| s.storage_class_name.as_deref());
    let from_annotation = claim
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BETA_CLASS))
        .map(String::as_str);
    from_annotation.or(from_spec).filter(|c| !c.is_empty())
}

/// A claim still waiting for a volume: Pending, not bound to one, not being deleted.
pub fn awaits_volume(claim: &PersistentVolumeClaim) -> bool {
    let phase = claim
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    let volume = claim
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.as_deref())
        .unwrap_or("");
    phase == "Pending" && volume.is_empty() && claim.metadata.deletion_timestamp.is_none()
}

/// What a claim asks to be filled from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneRequest {
    /// An empty volume.
    Empty,
    /// A copy of the claim of this name in the claim's own namespace.
    FromClaim(String),
    /// A data source this provisioner cannot fill from; the message says why.
    Unsupported(String),
}

pub fn clone_request(claim: &PersistentVolumeClaim) -> CloneRequest {
    let Some(spec) = claim.spec.as_ref() else {
        return CloneRequest::Empty;
    };
    // dataSourceRef is the newer field and wins when both are set (they must agree anyway).
    let (group, kind, name, namespace) = if let Some(r) = &spec.data_source_ref {
        (
            r.api_group.as_deref(),
            r.kind.as_str(),
            r.name.as_str(),
            r.namespace.as_deref(),
        )
    } else if let Some(r) = &spec.data_source {
        (
            r.api_group.as_deref(),
            r.kind.as_str(),
            r.name.as_str(),
            None,
        )
    } else {
        return CloneRequest::Empty;
    };
    let group = group.unwrap_or("");
    if kind != "PersistentVolumeClaim" || !group.is_empty() {
        let what = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        return CloneRequest::Unsupported(format!(
            "data source {what} {name:?} is not supported by {PROVISIONER_NAME}: only PersistentVolumeClaim clones are"
        ));
    }
    match namespace {
        Some(ns) if Some(ns) != claim.metadata.namespace.as_deref() => CloneRequest::Unsupported(format!(
            "cloning claim {name:?} from namespace {ns:?} is not supported: the source must be in the claim's own namespace"
        )),
        _ => CloneRequest::FromClaim(name.to_string()),
    }
}

/// The claims in `claims` that are clones of `source` (same namespace) and still wait for their
/// volume: when the source changes (say it becomes Bound) these are worth another look.
pub fn clones_waiting_on<'a>(
    claims: impl IntoIterator<Item = &'a PersistentVolumeClaim>,
    source: &PersistentVolumeClaim,
) -> Vec<(String, String)> {
    let (Some(ns), Some(name)) = (
        source.metadata.namespace.as_deref(),
        source.metadata.name.as_deref(),
    ) else {
        return Vec::new();
    };
    claims
        .into_iter()
        .filter(|c| c.metadata.namespace.as_deref() == Some(ns) && awaits_volume(c))
        .filter(|c| clone_request(c) == CloneRequest::FromClaim(name.to_string()))
        .filter_map(|c| Some((ns.to_string(), c.metadata.name.clone()?)))
        .collect()
}

/// What the I/O layer found for a clone's source claim.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    Missing,
    Found {
        claim: &'a PersistentVolumeClaim,
        volume: Option<&'a PersistentVolume>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClaimPlan {
    /// Make `dir` (a copy of `clone_from`, or empty), then create `volume`.
    Provision {
        volume: Box<PersistentVolume>,
        dir: PathBuf,
        clone_from: Option<PathBuf>,
    },
    /// The clone's source exists but has no volume yet; its next change will wake the claim.
    WaitForSource { source: String },
    /// This claim cannot be provisioned as it is; the message goes to the user as a Warning event.
    Fail { message: String },
}

/// The plan for a claim of our class that awaits a volume. `source` is what was found for
/// [`clone_request`]'s claim (ignored when the claim is not a clone).
pub fn plan_claim(
    claim: &PersistentVolumeClaim,
    class: &StorageClass,
    source: Option<Source<'_>>,
    volumes_dir: &Path,
) -> ClaimPlan {
    let fail = |message: String| ClaimPlan::Fail { message };
    let spec = claim.spec.clone().unwrap_or_default();
    let (Some(ns), Some(name), Some(uid)) = (
        claim.metadata.namespace.as_deref(),
        claim.metadata.name.as_deref(),
        claim.metadata.uid.as_deref(),
    ) else {
        return fail("the claim has no namespace, name or uid".into());
    };
    if spec.selector.is_some() {
        return fail(
            "claims with a selector cannot be dynamically provisioned; remove spec.selector".into(),
        );
    }
    if spec.volume_mode.as_deref() == Some("Block") {
        return fail(format!(
            "volumeMode Block is not supported by {PROVISIONER_NAME}: its volumes are directories"
        ));
    }
    let Some(size) = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
    else {
        return fail("the claim requests no storage (spec.resources.requests.storage)".into());
    };

    let clone_from = match clone_request(claim) {
        CloneRequest::Empty => None,
        CloneRequest::Unsupported(message) => return fail(message),
        CloneRequest::FromClaim(source_name) => match source {
            None | Some(Source::Missing) => {
                return fail(format!(
                    "cannot clone: source claim {source_name:?} does not exist in namespace {ns:?}; will retry"
                ))
            }
            Some(Source::Found { claim: src, volume }) => {
                let phase = src.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
                let bound_to = src.spec.as_ref().and_then(|s| s.volume_name.as_deref()).unwrap_or("");
                match (phase, volume) {
                    ("Pending", _) => return ClaimPlan::WaitForSource { source: source_name },
                    ("Bound", Some(pv)) if pv.metadata.name.as_deref() == Some(bound_to) => {
                        match owned_volume_dir(pv, volumes_dir) {
                            Some(dir) => Some(dir),
                            None => {
                                return fail(format!(
                                    "cannot clone: source claim {source_name:?} is bound to volume {bound_to:?}, which {PROVISIONER_NAME} did not make"
                                ))
                            }
                        }
                    }
                    ("Bound", _) => return ClaimPlan::WaitForSource { source: source_name },
                    (other, _) => {
                        return fail(format!("cannot clone: source claim {source_name:?} is {other}, not Bound; will retry"))
                    }
                }
            }
        },
    };

    let pv_name = volume_name(uid);
    let dir = volumes_dir.join(&pv_name);
    let volume = PersistentVolume {
        metadata: ObjectMeta {
            name: Some(pv_name),
            annotations: Some(BTreeMap::from([(
                PROVISIONED_BY.to_string(),
                PROVISIONER_NAME.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(PersistentVolumeSpec {
            capacity: Some(BTreeMap::from([("storage".to_string(), size.clone())])),
            access_modes: spec.access_modes.clone(),
            volume_mode: spec.volume_mode.clone(),
            claim_ref: Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("PersistentVolumeClaim".into()),
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
                uid: Some(uid.to_string()),
                ..Default::default()
            }),
            storage_class_name: claim_class(claim).map(str::to_string),
            persistent_volume_reclaim_policy: Some(
                class
                    .reclaim_policy
                    .clone()
                    .unwrap_or_else(|| "Delete".into()),
            ),
            mount_options: class.mount_options.clone(),
            host_path: Some(HostPathVolumeSource {
                path: dir.display().to_string(),
                type_: None,
            }),
            ..Default::default()
        }),
        status: None,
    };
    ClaimPlan::Provision {
        volume: Box::new(volume),
        dir,
        clone_from,
    }
}

/// The directory of a volume this provisioner made: exactly `volumes_dir/<pv name>`. Anything
/// else (a hand-made hostPath volume, a path outside the devcluster) is never copied from or
/// deleted.
pub fn owned_volume_dir(pv: &PersistentVolume, volumes_dir: &Path) -> Option<PathBuf> {
    let name = pv.metadata.name.as_deref()?;
    let path = Path::new(pv.spec.as_ref()?.host_path.as_ref()?.path.as_str());
    let expected = volumes_dir.join(name);
    (!name.is_empty() && !name.contains('/') && name != ".." && path == expected)
        .then_some(expected)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReclaimPlan {
    Keep,
    /// Remove `dir`, then delete the volume object.
    Delete {
        dir: PathBuf,
    },
    /// Looks like ours but its path is not where we put volumes: leave it and say so.
    Refuse {
        message: String,
    },
}

/// What to do with a volume: ours, Released and with reclaim policy Delete -> delete it.
pub fn reclaim_plan(pv: &PersistentVolume, volumes_dir: &Path) -> ReclaimPlan {
    let ours = pv
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PROVISIONED_BY))
        .map(String::as_str)
        == Some(PROVISIONER_NAME);
    let released = pv.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Released");
    let delete = pv
        .spec
        .as_ref()
        .and_then(|s| s.persistent_volume_reclaim_policy.as_deref())
        == Some("Delete");
    if !(ours && released && delete) {
        return ReclaimPlan::Keep;
    }
    match owned_volume_dir(pv, volumes_dir) {
        Some(dir) => ReclaimPlan::Delete { dir },
        None => ReclaimPlan::Refuse {
            message: format!(
                "volume {} is marked as made by {PROVISIONER_NAME} but its path is not under {}; leaving it alone",
                pv.metadata.name.as_deref().unwrap_or("?"),
                volumes_dir.display()
            ),
        },
    }
}

#[cfg(test)]
// Table cases are tuples of inputs and expectations; naming each tuple type would not help.
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeStatus,
        TypedLocalObjectReference, TypedObjectReference, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    const VOLS: &str = "/var/tmp/rdc/volumes";

    fn claim(name: &str, uid: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".into()]),
                storage_class_name: Some("standard".into()),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity("1Gi".into()),
                    )])),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            }),
        }
    }

    fn clone_of(name: &str, uid: &str, source: &str) -> PersistentVolumeClaim {
        let mut c = claim(name, uid);
        c.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            api_group: None,
            kind: "PersistentVolumeClaim".into(),
            name: source.into(),
        });
        c
    }

    fn bound(mut c: PersistentVolumeClaim, volume: &str) -> PersistentVolumeClaim {
        c.spec.as_mut().unwrap().volume_name = Some(volume.into());
        c.status.as_mut().unwrap().phase = Some("Bound".into());
        c
    }

    fn volume(name: &str, path: &str, phase: &str, policy: &str, ours: bool) -> PersistentVolume {
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: ours.then(|| {
                    BTreeMap::from([(PROVISIONED_BY.to_string(), PROVISIONER_NAME.to_string())])
                }),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                persistent_volume_reclaim_policy: Some(policy.into()),
                host_path: Some(HostPathVolumeSource {
                    path: path.into(),
                    type_: None,
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn standard_class_is_default_immediate_delete() {
        let c = standard_class();
        assert_eq!(c.metadata.name.as_deref(), Some("standard"));
        assert_eq!(
            c.metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(DEFAULT_CLASS)
                .map(String::as_str),
            Some("true")
        );
        assert_eq!(c.provisioner, PROVISIONER_NAME);
        assert_eq!(c.reclaim_policy.as_deref(), Some("Delete"));
        assert_eq!(c.volume_binding_mode.as_deref(), Some("Immediate"));
        assert!(is_our_class(&c));
    }

    #[test]
    fn which_claims_await_a_volume() {
        let mut deleting = claim("a", "1");
        deleting.metadata.deletion_timestamp = Some(Time("2024-01-01T00:00:00Z".parse().unwrap()));
        let mut no_status = claim("a", "1");
        no_status.status = None;
        let mut named_volume = claim("a", "1");
        named_volume.spec.as_mut().unwrap().volume_name = Some("static-pv".into());
        let cases = [
            ("pending", claim("a", "1"), true),
            ("no status yet", no_status, true),
            ("bound", bound(claim("a", "1"), "pvc-1"), false),
            ("pre-bound to a volume", named_volume, false),
            ("being deleted", deleting, false),
        ];
        for (what, c, want) in cases {
            assert_eq!(awaits_volume(&c), want, "{what}");
        }
    }

    #[test]
    fn claim_class_names() {
        let with = |spec: Option<&str>, beta: Option<&str>| {
            let mut c = claim("a", "1");
            c.spec.as_mut().unwrap().storage_class_name = spec.map(str::to_string);
            c.metadata.annotations =
                beta.map(|b| BTreeMap::from([(BETA_CLASS.to_string(), b.to_string())]));
            c
        };
        let cases = [
            ("spec", with(Some("standard"), None), Some("standard")),
            (
                "beta annotation wins, as in the PV controller",
                with(Some("fast"), Some("standard")),
                Some("standard"),
            ),
            ("empty means no class", with(Some(""), None), None),
            ("none", with(None, None), None),
        ];
        for (what, c, want) in cases {
            assert_eq!(claim_class(&c), want, "{what}");
        }
    }

    #[test]
    fn clone_requests() {
        let with_ref = |kind: &str, group: Option<&str>, ns: Option<&str>| {
            let mut c = claim("new", "2");
            c.spec.as_mut().unwrap().data_source_ref = Some(TypedObjectReference {
                api_group: group.map(str::to_string),
                kind: kind.into(),
                name: "src".into(),
                namespace: ns.map(str::to_string),
            });
            c
        };
        let mut snapshot = claim("new", "2");
        snapshot.spec.as_mut().unwrap().data_source = Some(TypedLocalObjectReference {
            api_group: Some("snapshot.storage.k8s.io".into()),
            kind: "VolumeSnapshot".into(),
            name: "snap".into(),
        });
        let cases: Vec<(&str, PersistentVolumeClaim, Result<Option<&str>, &str>)> = vec![
            ("no data source", claim("new", "2"), Ok(None)),
            (
                "dataSource claim",
                clone_of("new", "2", "src"),
                Ok(Some("src")),
            ),
            (
                "dataSourceRef claim",
                with_ref("PersistentVolumeClaim", None, None),
                Ok(Some("src")),
            ),
            (
                "dataSourceRef empty group",
                with_ref("PersistentVolumeClaim", Some(""), None),
                Ok(Some("src")),
            ),
            (
                "dataSourceRef same namespace",
                with_ref("PersistentVolumeClaim", None, Some("default")),
                Ok(Some("src")),
            ),
            (
                "cross-namespace",
                with_ref("PersistentVolumeClaim", None, Some("other")),
                Err("namespace"),
            ),
            (
                "snapshot",
                snapshot,
                Err("VolumeSnapshot.snapshot.storage.k8s.io"),
            ),
            (
                "claim kind in another group",
                with_ref("PersistentVolumeClaim", Some("example.com"), None),
                Err("only PersistentVolumeClaim"),
            ),
        ];
        for (what, c, want) in cases {
            match (clone_request(&c), want) {
                (CloneRequest::Empty, Ok(None)) => {}
                (CloneRequest::FromClaim(n), Ok(Some(w))) => assert_eq!(n, w, "{what}"),
                (CloneRequest::Unsupported(m), Err(w)) => assert!(m.contains(w), "{what}: {m}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn plain_claim_gets_a_volume_built_from_it() {
        let mut c = claim("data-web-0", "u-1");
        c.spec.as_mut().unwrap().volume_mode = Some("Filesystem".into());
        let mut class = standard_class();
        class.reclaim_policy = Some("Retain".into());
        let plan = plan_claim(&c, &class, None, Path::new(VOLS));
        let ClaimPlan::Provision {
            volume,
            dir,
            clone_from,
        } = plan
        else {
            panic!("{plan:?}")
        };
        assert_eq!(dir, Path::new(VOLS).join("pvc-u-1"));
        assert_eq!(clone_from, None);
        assert_eq!(volume.metadata.name.as_deref(), Some("pvc-u-1"));
        assert_eq!(
            volume
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(PROVISIONED_BY)
                .map(String::as_str),
            Some(PROVISIONER_NAME)
        );
        let spec = volume.spec.unwrap();
        assert_eq!(
            spec.capacity.unwrap().get("storage"),
            Some(&Quantity("1Gi".into()))
        );
        assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
        assert_eq!(spec.volume_mode.as_deref(), Some("Filesystem"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("standard"));
        assert_eq!(
            spec.persistent_volume_reclaim_policy.as_deref(),
            Some("Retain")
        );
        assert_eq!(spec.host_path.unwrap().path, format!("{VOLS}/pvc-u-1"));
        let r = spec.claim_ref.unwrap();
        assert_eq!(
            (
                r.kind.as_deref(),
                r.namespace.as_deref(),
                r.name.as_deref(),
                r.uid.as_deref()
            ),
            (
                Some("PersistentVolumeClaim"),
                Some("default"),
                Some("data-web-0"),
                Some("u-1")
            )
        );
    }

    #[test]
    fn claims_that_cannot_be_provisioned() {
        let edit = |f: fn(&mut PersistentVolumeClaimSpec)| {
            let mut c = claim("a", "1");
            f(c.spec.as_mut().unwrap());
            c
        };
        let cases = [
            (
                "selector",
                edit(|s| s.selector = Some(LabelSelector::default())),
                "selector",
            ),
            (
                "block",
                edit(|s| s.volume_mode = Some("Block".into())),
                "Block",
            ),
            (
                "no size",
                edit(|s| s.resources = None),
                "requests no storage",
            ),
        ];
        for (what, c, want) in cases {
            match plan_claim(&c, &standard_class(), None, Path::new(VOLS)) {
                ClaimPlan::Fail { message } => assert!(message.contains(want), "{what}: {message}"),
                other => panic!("{what}: {other:?}"),
            }
        }
    }

    #[test]
    fn clone_decisions() {
        let vols = Path::new(VOLS);
        let src_pending = claim("src", "s");
        let src_bound = bound(claim("src", "s"), "pvc-s");
        let src_lost = {
            let mut c = bound(claim("src", "s"), "pvc-s");
            c.status.as_mut().unwrap().phase = Some("Lost".into());
            c
        };
        let our_pv = volume("pvc-s", &format!("{VOLS}/pvc-s"), "Bound", "Delete", true);
        let foreign_pv = volume("pvc-s", "/srv/data", "Bound", "Delete", false);
        let other_pv = volume("pvc-x", &format!("{VOLS}/pvc-x"), "Bound", "Delete", true);
        enum Want {
            Clone(&'static str),
            Wait,
            Fail(&'static str),
        }
        let cases: Vec<(&str, Option<Source>, Want)> = vec![
            (
                "source missing",
                Some(Source::Missing),
                Want::Fail("does not exist"),
            ),
            ("source not looked up", None, Want::Fail("does not exist")),
            (
                "source pending",
                Some(Source::Found {
                    claim: &src_pending,
                    volume: None,
                }),
                Want::Wait,
            ),
            (
                "source bound, volume not seen yet",
                Some(Source::Found {
                    claim: &src_bound,
                    volume: None,
                }),
                Want::Wait,
            ),
            (
                "source bound to our volume",
                Some(Source::Found {
                    claim: &src_bound,
                    volume: Some(&our_pv),
                }),
                Want::Clone("pvc-s"),
            ),
            (
                "source on a foreign volume",
                Some(Source::Found {
                    claim: &src_bound,
                    volume: Some(&foreign_pv),
                }),
                Want::Fail("did not make"),
            ),
            (
                "volume is not the bound one",
                Some(Source::Found {
                    claim: &src_bound,
                    volume: Some(&other_pv),
                }),
                Want::Wait,
            ),
            (
                "source lost",
                Some(Source::Found {
                    claim: &src_lost,
                    volume: Some(&our_pv),
                }),
                Want::Fail("is Lost"),
            ),
        ];
        for (what, source, want) in cases {
            let plan = plan_claim(
                &clone_of("new", "n", "src"),
                &standard_class(),
                source,
                vols,
            );
            match (plan, want) {
                (
                    ClaimPlan::Provision {
                        clone_from: Some(from),
                        dir,
                        ..
                    },
                    Want::Clone(src),
                ) => {
                    assert_eq!(from, vols.join(src), "{what}");
                    assert_eq!(dir, vols.join("pvc-n"), "{what}");
                }
                (ClaimPlan::WaitForSource { source }, Want::Wait) => {
                    assert_eq!(source, "src", "{what}")
                }
                (ClaimPlan::Fail { message }, Want::Fail(w)) => {
                    assert!(message.contains(w), "{what}: {message}")
                }
                (got, _) => panic!("{what}: unexpected {got:?}"),
            }
        }
    }

    #[test]
    fn clones_waiting_on_a_source() {
        let src = claim("src", "s");
        let mut elsewhere = clone_of("c3", "3", "src");
        elsewhere.metadata.namespace = Some("other".into());
        let claims = [
            clone_of("c1", "1", "src"),
            clone_of("c2", "2", "another"),
            elsewhere,
            bound(clone_of("c4", "4", "src"), "pvc-4"),
            claim("plain", "5"),
        ];
        assert_eq!(
            clones_waiting_on(&claims, &src),
            vec![("default".to_string(), "c1".to_string())]
        );
    }

    #[test]
    fn reclaim_decisions() {
        let vols = Path::new(VOLS);
        let inside = format!("{VOLS}/pvc-1");
        let cases = [
            (
                "ours, released, delete",
                volume("pvc-1", &inside, "Released", "Delete", true),
                Some(true),
            ),
            (
                "still bound",
                volume("pvc-1", &inside, "Bound", "Delete", true),
                None,
            ),
            (
                "retain",
                volume("pvc-1", &inside, "Released", "Retain", true),
                None,
            ),
            (
                "not ours",
                volume("pvc-1", &inside, "Released", "Delete", false),
                None,
            ),
            (
                "ours but path elsewhere",
                volume("pvc-1", "/etc", "Released", "Delete", true),
                Some(false),
            ),
            (
                "path of another volume",
                volume(
                    "pvc-1",
                    &format!("{VOLS}/pvc-2"),
                    "Released",
                    "Delete",
                    true,
                ),
                Some(false),
            ),
            (
                "path escaping the dir",
                volume(
                    "pvc-1",
                    &format!("{VOLS}/../pvc-1"),
                    "Released",
                    "Delete",
                    true,
                ),
                Some(false),
            ),
        ];
        for (what, pv, want) in cases {
            match (reclaim_plan(&pv, vols), want) {
                (ReclaimPlan::Keep, None) => {}
                (ReclaimPlan::Delete { dir }, Some(true)) => {
                    assert_eq!(dir, vols.join("pvc-1"), "{what}")
                }
                (ReclaimPlan::Refuse { .. }, Some(false)) => {}
                (got, _) => panic!("{what}: {got:?}"),
            }
        }
    }
}
