//! Pod volumes on the host: each volume of a pod becomes a host path, and each container's
//! `volumeMounts` become bind mounts that `pod-init` sets up inside the container's own mount
//! namespace.
//!
//! - `persistentVolumeClaim`: the bound PV's `hostPath.path` (or `local.path`); waits, bounded,
//!   for the claim to be bound. PV directories are never removed by the agent.
//! - `emptyDir`: a directory in the pod's scratch dir, removed with the pod.
//! - `hostPath`: the path itself, checked or created according to its `type`.
//! - `configMap`, `secret`, `downwardAPI`, `projected`: files written into the pod's scratch dir.
//!
//! Other kinds are refused with a message naming the volume and its kind.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod,
    Volume,
};
use kube::runtime::wait::await_condition;
use kube::Api;

use super::pods::sources::{field_ref, KeyData, Objects, SourceError};
use super::runtime::expand;
use crate::podinit::{missing_dirs, Bind};

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?} is of kind {kind}, which the devcluster does not support (it supports persistentVolumeClaim, emptyDir, hostPath, configMap, secret, downwardAPI and projected)")]
    Unsupported { volume: String, kind: &'static str },
    #[error("persistent volume claim {claim:?} (volume {volume:?}) is not bound after {}s", waited.as_secs())]
    ClaimNotBound {
        volume: String,
        claim: String,
        waited: Duration,
    },
    #[error("could not watch persistent volume claim {claim:?}")]
    WatchClaim {
        claim: String,
        #[source]
        source: Box<kube::runtime::wait::Error>,
    },
    #[error("could not read persistent volume {pv:?} (bound to claim {claim:?})")]
    GetVolume {
        pv: String,
        claim: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("persistent volume {pv:?} has neither hostPath nor local path, so the devcluster cannot mount it")]
    UnsupportedPersistentVolume { pv: String },
    #[error("{what} {name:?} (volume {volume:?}) not found")]
    MissingObject {
        what: &'static str,
        name: String,
        volume: String,
    },
    #[error("key {key:?} not found in {what} {name:?} (volume {volume:?})")]
    MissingKey {
        what: &'static str,
        name: String,
        key: String,
        volume: String,
    },
    #[error("volume {volume:?}: {path:?} must be a relative path without '..'")]
    BadPath { volume: String, path: String },
    #[error("volume {volume:?}: {source}")]
    Field {
        volume: String,
        #[source]
        source: SourceError,
    },
    #[error("volume {volume:?}: resourceFieldRef and serviceAccountToken/clusterTrustBundle projections are not supported by the devcluster")]
    UnsupportedProjection { volume: String },
    #[error("hostPath volume {volume:?}: {path} is not a {want}")]
    HostPathType {
        volume: String,
        path: String,
        want: String,
    },
    #[error("could not prepare {path} for volume {volume:?}")]
    Write {
        volume: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not read config maps or secrets for the pod's volumes")]
    Objects(#[source] SourceError),
    #[error("container {container:?} mounts volume {volume:?}, which the pod does not define")]
    UnknownVolume { container: String, volume: String },
    #[error("container {container:?}: mount path {path:?} must be absolute and free of ':'")]
    BadMountPath { container: String, path: String },
}

/// A volume resolved to a path on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVolume {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The name of the source field a volume uses, for messages.
pub fn kind_of(v: &Volume) -> &'static str {
    macro_rules! first_set {
        ($($field:ident => $name:literal),* $(,)?) => {
            $(if v.$field.is_some() { return $name; })*
        };
    }
    first_set!(
        persistent_volume_claim => "persistentVolumeClaim", empty_dir => "emptyDir", host_path => "hostPath",
        config_map => "configMap", secret => "secret", downward_api => "downwardAPI", projected => "projected",
        nfs => "nfs", csi => "csi", ephemeral => "ephemeral", iscsi => "iscsi", git_repo => "gitRepo",
        image => "image", rbd => "rbd", cephfs => "cephfs", glusterfs => "glusterfs", fc => "fc",
        azure_disk => "azureDisk", azure_file => "azureFile", aws_elastic_block_store => "awsElasticBlockStore",
        gce_persistent_disk => "gcePersistentDisk", cinder => "cinder", flex_volume => "flexVolume",
        flocker => "flocker", vsphere_volume => "vsphereVolume", quobyte => "quobyte",
        photon_persistent_disk => "photonPersistentDisk", portworx_volume => "portworxVolume",
        scale_io => "scaleIO", storageos => "storageos",
    );
    "emptyDir"
}

/// Volume file paths and subPaths stay inside their volume.
pub fn safe_relative(p: &str) -> bool {
    let path = Path::new(p);
    !p.is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// One file of a config map, secret or downward API volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub rel: PathBuf,
    pub content: Vec<u8>,
    pub mode: u32,
}

const DEFAULT_MODE: u32 = 0o644;

fn mode_of(m: Option<i32>, default: u32) -> u32 {
    m.map_or(default, |m| (m as u32) & 0o7777)
}

/// The files a config map or secret volume shows: every key, or the listed `items`.
pub fn key_files(
    volume: &str,
    what: &'static str,
    name: &str,
    data: Option<&KeyData>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: Option<i32>,
) -> Result<Vec<FileSpec>, VolumeError> {
    let default = mode_of(default_mode, DEFAULT_MODE);
    let Some(data) = data else {
        return if optional {
            Ok(Vec::new())
        } else {
            Err(VolumeError::MissingObject {
                what,
                name: name.to_string(),
                volume: volume.to_string(),
            })
        };
    };
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return Ok(data
            .iter()
            .map(|(k, v)| FileSpec {
                rel: k.into(),
                content: v.clone(),
                mode: default,
            })
            .collect());
    };
    let mut out = Vec::new();
    for item in items {
        if !safe_relative(&item.path) {
            return Err(VolumeError::BadPath {
                volume: volume.to_string(),
                path: item.path.clone(),
            });
        }
        match data.get(&item.key) {
            Some(v) => out.push(FileSpec {
                rel: (&item.path).into(),
                content: v.clone(),
                mode: mode_of(item.mode, default),
            }),
            None if optional => {}
            None => {
                return Err(VolumeError::MissingKey {
                    what,
                    name: name.to_string(),
                    key: item.key.clone(),
                    volume: volume.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// The files of a downward API volume (or projection).
pub fn downward_files(
    volume: &str,
    pod: &Pod,
    pod_ip: Option<Ipv4Addr>,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Vec<FileSpec>, VolumeError> {
    let default = mode_of(default_mode, DEFAULT_MODE);
    items
        .iter()
        .map(|item| {
            if !safe_relative(&item.path) {
                return Err(VolumeError::BadPath {
                    volume: volume.to_string(),
                    path: item.path.clone(),
                });
            }
            let Some(f) = &item.field_ref else {
                return Err(VolumeError::UnsupportedProjection {
                    volume: volume.to_string(),
                });
            };
            let value =
                field_ref(pod, &f.field_path, pod_ip).map_err(|source| VolumeError::Field {
                    volume: volume.to_string(),
                    source,
                })?;
            Ok(FileSpec {
                rel: (&item.path).into(),
                content: value.into_bytes(),
                mode: mode_of(item.mode, default),
            })
        })
        .collect()
}

/// A bind mount for one `volumeMount`, and the subPath directory to create first (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub bind: Bind,
    pub create_dir: Option<PathBuf>,
}

/// The bind mounts of a container, from its `volumeMounts` and the pod's resolved volumes.
/// `subPathExpr` expands `$(VAR)` from the container's environment.
pub fn mounts(
    c: &Container,
    volumes: &HashMap<String, HostVolume>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<Mount>, VolumeError> {
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let vol = volumes
            .get(&m.name)
            .ok_or_else(|| VolumeError::UnknownVolume {
                container: c.name.clone(),
                volume: m.name.clone(),
            })?;
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(e)) if !e.is_empty() => Some(expand(e, env)),
            _ => None,
        };
        let (src, create_dir) = match sub {
            Some(s) if !safe_relative(&s) => {
                return Err(VolumeError::BadPath {
                    volume: m.name.clone(),
                    path: s,
                })
            }
            Some(s) => {
                let p = vol.path.join(&s);
                // The kubelet creates a missing subPath as a directory in the volume.
                let create = (vol.path.is_dir() && !p.exists()).then(|| p.clone());
                (p, create)
            }
            None => (vol.path.clone(), None),
        };
        let bind = Bind {
            src,
            dst: PathBuf::from(&m.mount_path),
            read_only: vol.read_only || m.read_only.unwrap_or(false),
        };
        if !m.mount_path.starts_with('/') || !bind.is_representable() {
            return Err(VolumeError::BadMountPath {
                container: c.name.clone(),
                path: m.mount_path.clone(),
            });
        }
        out.push(Mount { bind, create_dir });
    }
    Ok(out)
}

/// What preparing volumes needs from the agent.
#[derive(Clone)]
pub struct VolumeContext<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub pod_dir: &'a Path,
    pub pod_ip: Option<Ipv4Addr>,
    /// How long to wait for a claim to be bound before reporting it (the caller retries).
    pub claim_wait: Duration,
    /// Where host directories created for hostPath volumes are recorded, for `down`.
    pub created_file: &'a Path,
}

fn write_err(volume: &str, path: &Path) -> impl FnOnce(std::io::Error) -> VolumeError {
    let (volume, path) = (volume.to_string(), path.to_path_buf());
    move |source| VolumeError::Write {
        volume,
        path,
        source,
    }
}

/// Writes a volume's files into a fresh directory.
fn write_files(volume: &str, dir: &Path, files: &[FileSpec]) -> Result<(), VolumeError> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(write_err(volume, dir))?;
    }
    std::fs::create_dir_all(dir).map_err(write_err(volume, dir))?;
    for f in files {
        let path = dir.join(&f.rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err(volume, parent))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(f.mode)
            .open(&path)
            .map_err(write_err(volume, &path))?;
        file.write_all(&f.content)
            .map_err(write_err(volume, &path))?;
        // The umask may have narrowed the mode at creation.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
            .map_err(write_err(volume, &path))?;
    }
    Ok(())
}

fn record_created(file: &Path, created: &[PathBuf]) {
    if created.is_empty() {
        return;
    }
    let lines: String = created
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    let r = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .and_then(|mut f| f.write_all(lines.as_bytes()));
    if let Err(e) = r {
        tracing::warn!(file = %file.display(), error = %e, "could not record created host directories");
    }
}

fn host_path(
    volume: &str,
    path: &str,
    type_: &str,
    created_file: &Path,
) -> Result<PathBuf, VolumeError> {
    let p = PathBuf::from(path);
    let wrong = |want: &str| VolumeError::HostPathType {
        volume: volume.to_string(),
        path: path.to_string(),
        want: want.to_string(),
    };
    let meta = std::fs::metadata(&p).ok();
    match type_ {
        "" | "DirectoryOrCreate" if meta.is_none() => {
            let created = missing_dirs(&p, Path::exists);
            std::fs::create_dir_all(&p).map_err(write_err(volume, &p))?;
            record_created(created_file, &created);
        }
        "FileOrCreate" if meta.is_none() => {
            let parent_missing = p
                .parent()
                .map(|d| missing_dirs(d, Path::exists))
                .unwrap_or_default();
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(write_err(volume, d))?;
            }
            std::fs::File::create(&p).map_err(write_err(volume, &p))?;
            let mut created = parent_missing;
            created.push(p.clone());
            record_created(created_file, &created);
        }
        "Directory" if !meta.as_ref().is_some_and(|m| m.is_dir()) => {
            return Err(wrong("directory"))
        }
        "File" if !meta.as_ref().is_some_and(|m| m.is_file()) => return Err(wrong("file")),
        "Socket" | "CharDevice" | "BlockDevice" if meta.is_none() => return Err(wrong(type_)),
        _ => {}
    }
    Ok(p)
}

async fn claim_path(
    ctx: &VolumeContext<'_>,
    volume: &str,
    claim: &str,
) -> Result<PathBuf, VolumeError> {
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
    let bound = |c: Option<&PersistentVolumeClaim>| {
        c.is_some_and(|c| {
            c.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .is_some_and(|v| !v.is_empty())
                && c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
        })
    };
    let pvc = tokio::time::timeout(ctx.claim_wait, await_condition(claims, claim, bound))
        .await
        .map_err(|_| VolumeError::ClaimNotBound {
            volume: volume.to_string(),
            claim: claim.to_string(),
            waited: ctx.claim_wait,
        })?
        .map_err(|source| VolumeError::WatchClaim {
            claim: claim.to_string(),
            source: Box::new(source),
        })?;
    let pv_name = pvc
        .and_then(|c| c.spec)
        .and_then(|s| s.volume_name)
        .unwrap_or_default();
    let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
    let pv = pvs
        .get(&pv_name)
        .await
        .map_err(|source| VolumeError::GetVolume {
            pv: pv_name.clone(),
            claim: claim.to_string(),
            source: Box::new(source),
        })?;
    let spec = pv.spec.unwrap_or_default();
    let path = spec
        .host_path
        .map(|h| h.path)
        .or_else(|| spec.local.map(|l| l.path))
        .ok_or(VolumeError::UnsupportedPersistentVolume { pv: pv_name })?;
    let path = PathBuf::from(path);
    if !path.exists() {
        std::fs::create_dir_all(&path).map_err(write_err(volume, &path))?;
    }
    Ok(path)
}

/// The config maps and secrets the pod's volumes read.
fn referenced(volumes: &[Volume]) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for v in volumes {
        cms.extend(v.config_map.as_ref().map(|c| c.name.clone()));
        secrets.extend(v.secret.as_ref().and_then(|s| s.secret_name.clone()));
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            cms.extend(src.config_map.as_ref().map(|c| c.name.clone()));
            secrets.extend(src.secret.as_ref().map(|s| s.name.clone()));
        }
    }
    (cms, secrets)
}

/// Resolves every volume of the pod to a host path, writing the files of config, secret and
/// downward API volumes. Safe to call again after a failure.
pub async fn prepare(ctx: &VolumeContext<'_>) -> Result<HashMap<String, HostVolume>, VolumeError> {
    let volumes: &[Volume] = ctx
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or(&[]);
    let ns = ctx.pod.metadata.namespace.clone().unwrap_or_default();
    let (cms, secrets) = referenced(volumes);
    let objects = Objects::fetch(
        ctx.client,
        &ns,
        cms.iter().map(String::as_str),
        secrets.iter().map(String::as_str),
    )
    .await
    .map_err(VolumeError::Objects)?;
    let scratch = |name: &str| ctx.pod_dir.join("volumes").join(name);
    let mut out = HashMap::new();
    for v in volumes {
        let name = v.name.as_str();
        let hv = if let Some(c) = &v.persistent_volume_claim {
            HostVolume {
                path: claim_path(ctx, name, &c.claim_name).await?,
                read_only: c.read_only.unwrap_or(false),
            }
        } else if v.empty_dir.is_some() {
            let dir = scratch(name);
            std::fs::create_dir_all(&dir).map_err(write_err(name, &dir))?;
            HostVolume {
                path: dir,
                read_only: false,
            }
        } else if let Some(h) = &v.host_path {
            HostVolume {
                path: host_path(
                    name,
                    &h.path,
                    h.type_.as_deref().unwrap_or(""),
                    ctx.created_file,
                )?,
                read_only: false,
            }
        } else if let Some(c) = &v.config_map {
            let data = objects.config_maps.get(&c.name).and_then(Option::as_ref);
            let files = key_files(
                name,
                "config map",
                &c.name,
                data,
                c.items.as_deref(),
                c.optional.unwrap_or(false),
                c.default_mode,
            )?;
            write_files(name, &scratch(name), &files)?;
            HostVolume {
                path: scratch(name),
                read_only: true,
            }
        } else if let Some(s) = &v.secret {
            let secret_name = s.secret_name.clone().unwrap_or_default();
            let data = objects.secrets.get(&secret_name).and_then(Option::as_ref);
            let files = key_files(
                name,
                "secret",
                &secret_name,
                data,
                s.items.as_deref(),
                s.optional.unwrap_or(false),
                s.default_mode,
            )?;
            write_files(name, &scratch(name), &files)?;
            HostVolume {
                path: scratch(name),
                read_only: true,
            }
        } else if let Some(d) = &v.downward_api {
            let files = downward_files(
                name,
                ctx.pod,
                ctx.pod_ip,
                d.items.as_deref().unwrap_or(&[]),
                d.default_mode,
            )?;
            write_files(name, &scratch(name), &files)?;
            HostVolume {
                path: scratch(name),
                read_only: true,
            }
        } else if let Some(p) = &v.projected {
            let mut files = Vec::new();
            for src in p.sources.iter().flatten() {
                if let Some(c) = &src.config_map {
                    let data = objects.config_maps.get(&c.name).and_then(Option::as_ref);
                    files.extend(key_files(
                        name,
                        "config map",
                        &c.name,
                        data,
                        c.items.as_deref(),
                        c.optional.unwrap_or(false),
                        p.default_mode,
                    )?);
                } else if let Some(s) = &src.secret {
                    let data = objects.secrets.get(&s.name).and_then(Option::as_ref);
                    files.extend(key_files(
                        name,
                        "secret",
                        &s.name,
                        data,
                        s.items.as_deref(),
                        s.optional.unwrap_or(false),
                        p.default_mode,
                    )?);
                } else if let Some(d) = &src.downward_api {
                    files.extend(downward_files(
                        name,
                        ctx.pod,
                        ctx.pod_ip,
                        d.items.as_deref().unwrap_or(&[]),
                        p.default_mode,
                    )?);
                } else {
                    return Err(VolumeError::UnsupportedProjection {
                        volume: name.to_string(),
                    });
                }
            }
            write_files(name, &scratch(name), &files)?;
            HostVolume {
                path: scratch(name),
                read_only: true,
            }
        } else {
            return Err(VolumeError::Unsupported {
                volume: name.to_string(),
                kind: kind_of(v),
            });
        };
        out.insert(name.to_string(), hv);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NFSVolumeSource, ObjectFieldSelector, VolumeMount};

    #[test]
    fn relative_paths() {
        for (p, ok) in [
            ("a", true),
            ("a/b.txt", true),
            ("./a", true),
            ("", false),
            ("/etc/x", false),
            ("../x", false),
            ("a/../../x", false),
        ] {
            assert_eq!(safe_relative(p), ok, "{p:?}");
        }
    }

    fn data() -> KeyData {
        [
            ("app.conf".to_string(), b"port=1".to_vec()),
            ("other".to_string(), b"x".to_vec()),
        ]
        .into()
    }

    #[test]
    fn key_files_take_all_keys_or_the_listed_items() {
        let all =
            key_files("cfg", "config map", "c", Some(&data()), None, false, None).expect("ok");
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|f| f.mode == 0o644));
        let items = vec![KeyToPath {
            key: "app.conf".into(),
            path: "conf/app.conf".into(),
            mode: Some(0o600),
        }];
        let some = key_files(
            "cfg",
            "config map",
            "c",
            Some(&data()),
            Some(&items),
            false,
            Some(0o400),
        )
        .expect("ok");
        assert_eq!(
            some,
            vec![FileSpec {
                rel: "conf/app.conf".into(),
                content: b"port=1".to_vec(),
                mode: 0o600
            }]
        );
    }

    #[test]
    fn key_file_errors_and_optional_sources() {
        assert!(matches!(
            key_files("v", "secret", "s", None, None, false, None),
            Err(VolumeError::MissingObject { .. })
        ));
        assert_eq!(
            key_files("v", "secret", "s", None, None, true, None)
                .expect("optional")
                .len(),
            0
        );
        let missing = vec![KeyToPath {
            key: "nope".into(),
            path: "x".into(),
            mode: None,
        }];
        assert!(matches!(
            key_files(
                "v",
                "config map",
                "c",
                Some(&data()),
                Some(&missing),
                false,
                None
            ),
            Err(VolumeError::MissingKey { .. })
        ));
        assert!(key_files(
            "v",
            "config map",
            "c",
            Some(&data()),
            Some(&missing),
            true,
            None
        )
        .expect("optional")
        .is_empty());
        let escape = vec![KeyToPath {
            key: "other".into(),
            path: "../x".into(),
            mode: None,
        }];
        assert!(matches!(
            key_files(
                "v",
                "config map",
                "c",
                Some(&data()),
                Some(&escape),
                false,
                None
            ),
            Err(VolumeError::BadPath { .. })
        ));
    }

    #[test]
    fn downward_volume_files() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("web-0".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let items = vec![DownwardAPIVolumeFile {
            path: "name".into(),
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                api_version: None,
            }),
            ..Default::default()
        }];
        let files = downward_files("info", &pod, None, &items, None).expect("ok");
        assert_eq!(files[0].content, b"web-0".to_vec());
        let resource = vec![DownwardAPIVolumeFile {
            path: "cpu".into(),
            ..Default::default()
        }];
        assert!(matches!(
            downward_files("info", &pod, None, &resource, None),
            Err(VolumeError::UnsupportedProjection { .. })
        ));
    }

    #[test]
    fn unsupported_kinds_are_named() {
        let v = Volume {
            name: "shared".into(),
            nfs: Some(NFSVolumeSource::default()),
            ..Default::default()
        };
        assert_eq!(kind_of(&v), "nfs");
        let msg = VolumeError::Unsupported {
            volume: "shared".into(),
            kind: kind_of(&v),
        }
        .to_string();
        assert!(msg.contains("\"shared\"") && msg.contains("nfs"), "{msg}");
    }

    fn mount(name: &str, path: &str) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn mounts_follow_volume_mounts() {
        let vols: HashMap<String, HostVolume> = [
            (
                "data".to_string(),
                HostVolume {
                    path: "/nonexistent/pv-1".into(),
                    read_only: false,
                },
            ),
            (
                "cfg".to_string(),
                HostVolume {
                    path: "/nonexistent/cfg".into(),
                    read_only: true,
                },
            ),
        ]
        .into();
        let env: std::collections::BTreeMap<String, String> =
            [("POD".to_string(), "web-0".to_string())].into();
        let c = Container {
            name: "app".into(),
            volume_mounts: Some(vec![
                mount("data", "/app/volume"),
                VolumeMount {
                    sub_path: Some("conf/app.conf".into()),
                    ..mount("cfg", "/etc/app.conf")
                },
                VolumeMount {
                    sub_path_expr: Some("logs/$(POD)".into()),
                    read_only: Some(true),
                    ..mount("data", "/logs")
                },
            ]),
            ..Default::default()
        };
        let got = mounts(&c, &vols, &env).expect("mounts");
        let binds: Vec<String> = got
            .iter()
            .map(|m| {
                format!(
                    "{}:{}:{}",
                    m.bind.src.display(),
                    m.bind.dst.display(),
                    m.bind.read_only
                )
            })
            .collect();
        assert_eq!(
            binds,
            vec![
                "/nonexistent/pv-1:/app/volume:false",
                "/nonexistent/cfg/conf/app.conf:/etc/app.conf:true",
                "/nonexistent/pv-1/logs/web-0:/logs:true",
            ]
        );
    }

    #[test]
    fn mount_errors() {
        let vols: HashMap<String, HostVolume> = [(
            "data".to_string(),
            HostVolume {
                path: "/x".into(),
                read_only: false,
            },
        )]
        .into();
        let env = Default::default();
        let with = |m: VolumeMount| Container {
            name: "app".into(),
            volume_mounts: Some(vec![m]),
            ..Default::default()
        };
        assert!(matches!(
            mounts(&with(mount("nope", "/a")), &vols, &env),
            Err(VolumeError::UnknownVolume { .. })
        ));
        assert!(matches!(
            mounts(&with(mount("data", "relative")), &vols, &env),
            Err(VolumeError::BadMountPath { .. })
        ));
        assert!(matches!(
            mounts(&with(mount("data", "/a:b")), &vols, &env),
            Err(VolumeError::BadMountPath { .. })
        ));
        let escape = VolumeMount {
            sub_path: Some("../../etc".into()),
            ..mount("data", "/a")
        };
        assert!(matches!(
            mounts(&with(escape), &vols, &env),
            Err(VolumeError::BadPath { .. })
        ));
    }

    #[test]
    fn files_are_written_with_their_modes() {
        let dir =
            std::env::temp_dir().join(format!("devcluster-volumes-test-{}", std::process::id()));
        let files = vec![
            FileSpec {
                rel: "a".into(),
                content: b"1".to_vec(),
                mode: 0o600,
            },
            FileSpec {
                rel: "sub/b".into(),
                content: b"2".to_vec(),
                mode: 0o644,
            },
        ];
        write_files("v", &dir, &files).expect("writes");
        // Written again from scratch: stale files go away.
        write_files("v", &dir, &files[1..]).expect("rewrites");
        assert!(!dir.join("a").exists());
        assert_eq!(std::fs::read(dir.join("sub/b")).expect("file"), b"2");
        let mode = std::fs::metadata(dir.join("sub/b"))
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o644);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
