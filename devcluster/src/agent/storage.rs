//! The storage provisioner, playing the part of minikube's `standard` class: it keeps the default
//! StorageClass in place, gives every pending claim of that class a hostPath PersistentVolume
//! (a directory under the devcluster's `volumes/`), fills clones (`spec.dataSource` naming another
//! claim) by copying the source's directory, and deletes released volumes whose policy says so.
//! Binding claims to volumes stays the job of the real PV controller.
//!
//! Both loops are kube-runtime controllers: they wake on watch events, run one reconcile per
//! object at a time, and retry failed ones with a delay.

pub mod copy;
pub mod events;
pub mod plan;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tracing::{debug, error, info, warn};

use self::events::{claim_ref, Kind, Recorder};
use self::plan::{ClaimPlan, CloneRequest, ReclaimPlan, Source};
use super::AgentConfig;

/// Delay before a claim that could not be provisioned (or a failed reconcile) is tried again.
const RETRY: Duration = Duration::from_secs(15);
/// Safety net for clones whose source's volume was not visible yet.
const RECHECK_WAITING: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("creating the volumes directory {}", path.display())]
    CreateVolumesDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating storage class {name}")]
    CreateStorageClass {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading storage class {name} of claim {claim}")]
    GetStorageClass {
        name: String,
        claim: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading claim {claim}, the clone source of {clone}")]
    GetSourceClaim {
        claim: String,
        clone: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading volume {name}")]
    GetVolume {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("making the directory {} for volume {volume}", dir.display())]
    MakeVolumeDir {
        volume: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("copying {} into {} to clone claim {clone}", from.display(), dir.display())]
    CloneVolume {
        clone: String,
        from: PathBuf,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating volume {name}")]
    CreateVolume {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("removing the directory {} of volume {volume}", dir.display())]
    RemoveVolumeDir {
        volume: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("deleting volume {name}")]
    DeleteVolume {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("the disk worker for volume {volume} stopped")]
    DiskWorker {
        volume: String,
        #[source]
        source: tokio::task::JoinError,
    },
}

struct Ctx {
    client: Client,
    volumes_dir: PathBuf,
    events: Recorder,
}

pub async fn run(client: Client, cfg: Arc<AgentConfig>) -> anyhow::Result<()> {
    let volumes_dir = cfg.layout.volumes_dir();
    std::fs::create_dir_all(&volumes_dir).map_err(|source| StorageError::CreateVolumesDir {
        path: volumes_dir.clone(),
        source,
    })?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        volumes_dir,
        events: Recorder::new(client),
    });
    tokio::join!(
        ensure_class(&ctx.client),
        claims_controller(ctx.clone()),
        volumes_controller(ctx.clone())
    );
    Ok(())
}

/// Creates the default class once; a class of that name that is already there is left as the
/// user has it.
async fn ensure_class(client: &Client) {
    let api: Api<StorageClass> = Api::all(client.clone());
    let class = plan::standard_class();
    let name = class.name_any();
    loop {
        match api.create(&PostParams::default(), &class).await {
            Ok(_) => {
                info!(class = %name, "created the default storage class");
                return;
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => return,
            Err(source) => {
                let e = StorageError::CreateStorageClass {
                    name: name.clone(),
                    source,
                };
                warn!(error = &e as &dyn std::error::Error, "retrying shortly");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

async fn claims_controller(ctx: Arc<Ctx>) {
    let claims: Api<PersistentVolumeClaim> = Api::all(ctx.client.clone());
    let controller = Controller::new(claims.clone(), watcher::Config::default());
    let store = controller.store();
    controller
        // A clone waits for its source claim: any change of a claim wakes the clones of it.
        .watches(
            claims,
            watcher::Config::default(),
            move |changed: PersistentVolumeClaim| {
                let all = store.state();
                plan::clones_waiting_on(all.iter().map(|c| c.as_ref()), &changed)
                    .into_iter()
                    .map(|(ns, name)| ObjectRef::new(&name).within(&ns))
                    .collect::<Vec<_>>()
            },
        )
        .run(reconcile_claim, |_, e, _| retry_after(e), ctx)
        .for_each(|r| async move { log_controller_result(r) })
        .await;
}

async fn volumes_controller(ctx: Arc<Ctx>) {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    Controller::new(volumes, watcher::Config::default())
        .run(reconcile_volume, |_, e, _| retry_after(e), ctx)
        .for_each(|r| async move { log_controller_result(r) })
        .await;
}

fn retry_after(e: &StorageError) -> Action {
    warn!(
        error = e as &dyn std::error::Error,
        "storage step failed; retrying in {}s",
        RETRY.as_secs()
    );
    Action::requeue(RETRY)
}

fn log_controller_result<K: kube::Resource, E: std::error::Error + 'static>(
    r: Result<(ObjectRef<K>, Action), kube::runtime::controller::Error<E, watcher::Error>>,
) {
    use kube::runtime::controller::Error as CE;
    match r {
        Ok(_) | Err(CE::ReconcilerFailed(..)) => {} // reported by retry_after
        Err(CE::ObjectNotFound(_)) => {}            // deleted while queued
        Err(e) => debug!(error = &e as &dyn std::error::Error, "storage watch hiccup"),
    }
}

fn qualified(claim: &PersistentVolumeClaim) -> String {
    format!(
        "{}/{}",
        claim.namespace().unwrap_or_default(),
        claim.name_any()
    )
}

async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Ctx>,
) -> Result<Action, StorageError> {
    if !plan::awaits_volume(&claim) {
        return Ok(Action::await_change());
    }
    let Some(class_name) = plan::claim_class(&claim) else {
        return Ok(Action::await_change());
    };
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let class =
        classes
            .get_opt(class_name)
            .await
            .map_err(|source| StorageError::GetStorageClass {
                name: class_name.to_string(),
                claim: qualified(&claim),
                source,
            })?;
    // A claim of a class that does not exist (yet) is woken again when the claim changes; the
    // PV controller already tells the user about the missing class.
    let Some(class) = class.filter(plan::is_our_class) else {
        return Ok(Action::await_change());
    };

    let ns = claim.namespace().unwrap_or_default();
    let source_claim;
    let source_volume;
    let source = match plan::clone_request(&claim) {
        CloneRequest::FromClaim(name) => {
            let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            source_claim =
                api.get_opt(&name)
                    .await
                    .map_err(|source| StorageError::GetSourceClaim {
                        claim: format!("{ns}/{name}"),
                        clone: qualified(&claim),
                        source,
                    })?;
            let bound_to = source_claim
                .as_ref()
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.volume_name.clone());
            source_volume = match bound_to.filter(|v| !v.is_empty()) {
                Some(v) => get_volume(&ctx, &v).await?,
                None => None,
            };
            Some(match &source_claim {
                None => Source::Missing,
                Some(c) => Source::Found {
                    claim: c,
                    volume: source_volume.as_ref(),
                },
            })
        }
        _ => None,
    };

    match plan::plan_claim(&claim, &class, source, &ctx.volumes_dir) {
        ClaimPlan::WaitForSource { source } => {
            debug!(claim = %qualified(&claim), source = %source, "clone waits for its source to be bound");
            let message =
                format!("waiting for source claim {source:?} to be bound before copying its data");
            record(&ctx, &claim, Kind::Normal, "WaitingForSource", &message).await;
            Ok(Action::requeue(RECHECK_WAITING))
        }
        ClaimPlan::Fail { message } => {
            warn!(claim = %qualified(&claim), "cannot provision: {message}");
            record(&ctx, &claim, Kind::Warning, "ProvisioningFailed", &message).await;
            Ok(Action::requeue(RETRY))
        }
        ClaimPlan::Provision {
            volume,
            dir,
            clone_from,
        } => {
            let name = volume.name_any();
            if get_volume(&ctx, &name).await?.is_some() {
                // Made by an earlier run; the PV controller binds it.
                return Ok(Action::await_change());
            }
            if let Err(e) = make_dir(&claim, &name, &dir, clone_from.clone()).await {
                let message = format!("{}: {}", e, source_text(&e));
                record(&ctx, &claim, Kind::Warning, "ProvisioningFailed", &message).await;
                return Err(e);
            }
            let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
            match volumes.create(&PostParams::default(), &volume).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                Err(source) => return Err(StorageError::CreateVolume { name, source }),
            }
            let how = match &clone_from {
                Some(from) => format!("as a copy of {}", from.display()),
                None => "empty".to_string(),
            };
            info!(claim = %qualified(&claim), volume = %name, "provisioned volume {how}");
            if let Some(uid) = claim.uid() {
                ctx.events.forget(&uid);
            }
            record(
                &ctx,
                &claim,
                Kind::Normal,
                "ProvisioningSucceeded",
                &format!("Successfully provisioned volume {name} ({how})"),
            )
            .await;
            Ok(Action::await_change())
        }
    }
}

async fn get_volume(ctx: &Ctx, name: &str) -> Result<Option<PersistentVolume>, StorageError> {
    let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
    volumes
        .get_opt(name)
        .await
        .map_err(|source| StorageError::GetVolume {
            name: name.to_string(),
            source,
        })
}

/// Creates the volume's directory (copying the clone source) off the async threads: a clone of
/// a big volume takes a while.
async fn make_dir(
    claim: &PersistentVolumeClaim,
    volume: &str,
    dir: &std::path::Path,
    clone_from: Option<PathBuf>,
) -> Result<(), StorageError> {
    let dir = dir.to_path_buf();
    let clone = qualified(claim);
    let volume = volume.to_string();
    let work = {
        let dir = dir.clone();
        let from = clone_from.clone();
        tokio::task::spawn_blocking(move || match from {
            Some(from) => copy::make_clone(&from, &dir),
            None => copy::make_empty(&dir),
        })
    };
    let result = work.await.map_err(|source| StorageError::DiskWorker {
        volume: volume.clone(),
        source,
    })?;
    result.map_err(|source| match clone_from {
        Some(from) => StorageError::CloneVolume {
            clone,
            from,
            dir,
            source,
        },
        None => StorageError::MakeVolumeDir {
            volume,
            dir,
            source,
        },
    })
}

async fn reconcile_volume(
    pv: Arc<PersistentVolume>,
    ctx: Arc<Ctx>,
) -> Result<Action, StorageError> {
    let name = pv.name_any();
    match plan::reclaim_plan(&pv, &ctx.volumes_dir) {
        ReclaimPlan::Keep => Ok(Action::await_change()),
        ReclaimPlan::Refuse { message } => {
            error!(volume = %name, "{message}");
            Ok(Action::await_change())
        }
        ReclaimPlan::Delete { dir } => {
            // The data goes first: a volume object that is gone never leaves a directory behind.
            let remove = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || copy::remove(&dir))
            };
            let removed = remove
                .await
                .map_err(|source| StorageError::DiskWorker {
                    volume: name.clone(),
                    source,
                })?
                .map_err(|source| StorageError::RemoveVolumeDir {
                    volume: name.clone(),
                    dir: dir.clone(),
                    source,
                })?;
            if removed {
                info!(volume = %name, dir = %dir.display(), "removed the data of released volume");
            }
            // Already being deleted (waiting on its protection finalizer): nothing more to ask.
            if pv.metadata.deletion_timestamp.is_some() {
                return Ok(Action::await_change());
            }
            let volumes: Api<PersistentVolume> = Api::all(ctx.client.clone());
            match volumes.delete(&name, &DeleteParams::default()).await {
                Ok(_) => info!(volume = %name, "deleted released volume"),
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(source) => return Err(StorageError::DeleteVolume { name, source }),
            }
            Ok(Action::await_change())
        }
    }
}

/// Events are for the user's benefit; failing to send one must not stop provisioning.
async fn record(ctx: &Ctx, claim: &PersistentVolumeClaim, kind: Kind, reason: &str, message: &str) {
    let Some(r) = claim_ref(claim) else { return };
    if let Err(e) = ctx.events.record(&r, kind, reason, message).await {
        warn!(claim = %qualified(claim), error = &e as &dyn std::error::Error, "could not record event {reason}");
    }
}

/// The innermost cause of an error, for event messages a user reads without the agent's log.
fn source_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
