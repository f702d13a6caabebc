//! The lock: a `coordination.k8s.io/v1` Lease `rollout-<statefulset>` in the set's namespace,
//! held and renewed while a run changes the set, so a second run fails fast naming the holder,
//! and a run that died (killed CI job) leaves a lock that expires by itself instead of one a
//! person must clean up (Helm's lesson, helm #4558).
//!
//! [`assess`] is the pure decision (free, ours, held, expired); [`acquire`] and
//! [`LeaseGuard`] do the I/O: create or take over, renew in the background, release.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{ApiError, Cluster, Preconditions};

/// How long a lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often a holder renews it (a third of the duration, as Kubernetes leader election does).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(5);

/// Why the lock could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("StatefulSet {statefulset} is locked by another run: {holder} holds Lease {lease} (renewed {renewed_ago} ago; it expires {expires_in} after its last renewal if that run is gone). Wait for it, or check `rollout status {statefulset}`")]
    Held {
        statefulset: String,
        lease: String,
        holder: String,
        renewed_ago: String,
        expires_in: String,
    },
    #[error("{action} Lease {lease}: {source}")]
    Api {
        action: &'static str,
        lease: String,
        #[source]
        source: ApiError,
    },
    #[error("Lease {lease} kept changing while this run tried to take it; try again")]
    Contended { lease: String },
}

/// Who holds a lease: `user@host pid N`, enough for a person to find the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub host: String,
    pub pid: u32,
}

impl Identity {
    /// This process.
    pub fn current() -> Identity {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(user_from_uid);
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "unknown-host".to_string());
        Identity {
            user,
            host,
            pid: std::process::id(),
        }
    }

    /// `user@host`, for the record's "started by".
    pub fn user_at_host(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    pub fn parse(text: &str) -> Option<Identity> {
        let (who, pid) = text.rsplit_once(" pid ")?;
        let (user, host) = who.split_once('@')?;
        Some(Identity {
            user: user.to_string(),
            host: host.to_string(),
            pid: pid.trim().parse().ok()?,
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{} pid {}", self.user, self.host, self.pid)
    }
}

/// The user name of this process's uid from `/etc/passwd` (or `uid-N`), for when neither
/// `USER` nor `LOGNAME` is set (CI containers, systemd units).
fn user_from_uid() -> String {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next().map(String::from))
        });
    let Some(uid) = uid else {
        return "unknown".to_string();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.get(2) == Some(&uid.as_str())).then(|| fields[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid-{uid}"))
}

/// The Lease that locks `statefulset`.
pub fn lease_name(statefulset: &str) -> String {
    format!("rollout-{statefulset}")
}

/// What a lease means for a run that wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// No holder: take it.
    Free,
    /// This process holds it already.
    Ours,
    /// Held by a run whose renewals stopped (or whose process is gone from this host): take it
    /// over.
    Expired { holder: String },
    /// Held by a live run.
    Held {
        holder: String,
        renewed: Option<Timestamp>,
        duration: Duration,
    },
}

/// Decides whether `me` may take `lease` at `now`. `process_gone` answers for holders on this
/// host, so a run killed a second ago on the same machine does not block `resume` for the whole
/// lease duration.
pub fn assess(
    lease: &Lease,
    me: &Identity,
    now: Timestamp,
    process_gone: impl Fn(u32) -> bool,
) -> LeaseState {
    let spec = lease.spec.as_ref();
    let Some(holder) = spec
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
    else {
        return LeaseState::Free;
    };
    if holder == me.to_string() {
        return LeaseState::Ours;
    }
    let duration = Duration::from_secs(
        spec.and_then(|s| s.lease_duration_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(LEASE_DURATION.as_secs()),
    );
    let renewed = spec
        .and_then(|s| s.renew_time.as_ref().or(s.acquire_time.as_ref()))
        .map(|t| t.0);
    let expired = match renewed {
        Some(at) => at
            .checked_add(duration)
            .map(|end| end <= now)
            .unwrap_or(false),
        None => true,
    };
    let gone_here = Identity::parse(&holder)
        .is_some_and(|h| h.host == me.host && h.pid != me.pid && process_gone(h.pid));
    if expired || gone_here {
        LeaseState::Expired { holder }
    } else {
        LeaseState::Held {
            holder,
            renewed,
            duration,
        }
    }
}

/// True when no process `pid` runs on this machine (Linux `/proc`); false when that cannot be
/// told.
pub fn local_process_gone(pid: u32) -> bool {
    std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The lease `me` writes to hold the lock from `now`, built on `existing` when there is one.
pub fn claimed(
    existing: Option<&Lease>,
    statefulset: &StatefulSet,
    me: &Identity,
    now: Timestamp,
    duration: Duration,
) -> Lease {
    let name = statefulset.metadata.name.clone().unwrap_or_default();
    let mut lease = existing.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(lease_name(&name)),
            namespace: statefulset.metadata.namespace.clone(),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "rollout".to_string(),
                )]
                .into(),
            ),
            // Deleted with the StatefulSet, so a removed set leaves no lock behind.
            owner_references: statefulset.metadata.uid.clone().map(|uid| {
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "StatefulSet".into(),
                    name: name.clone(),
                    uid,
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: None,
    });
    let previous = lease.spec.take().unwrap_or_default();
    let me_text = me.to_string();
    let changed_hands = previous.holder_identity.as_deref() != Some(me_text.as_str());
    let transitions = previous.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(me_text),
        lease_duration_seconds: Some(i32::try_from(duration.as_secs()).unwrap_or(i32::MAX)),
        acquire_time: if changed_hands {
            Some(MicroTime(now))
        } else {
            previous.acquire_time.clone()
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if changed_hands && existing.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..previous
    });
    lease
}

fn ago(from: Option<Timestamp>, now: Timestamp) -> String {
    match from {
        Some(t) => super::progress::format_elapsed(
            now.duration_since(t).try_into().unwrap_or(Duration::ZERO),
        ),
        None => "never".to_string(),
    }
}

/// Takes the lock on `statefulset` for `me`: creates the lease, or takes over a free or expired
/// one, with resourceVersion preconditions so two runs never both win.
pub async fn acquire<C: Cluster>(
    cluster: &C,
    statefulset: &StatefulSet,
    me: &Identity,
    duration: Duration,
) -> Result<LeaseGuard<C>, LeaseError> {
    let set_name = statefulset.metadata.name.clone().unwrap_or_default();
    let name = lease_name(&set_name);
    let api = |action, source| LeaseError::Api {
        action,
        lease: name.clone(),
        source,
    };
    for _ in 0..5 {
        let now = Timestamp::now();
        let existing = cluster
            .get::<Lease>(&name)
            .await
            .map_err(|e| api("reading", e))?;
        let written = match &existing {
            None => {
                let lease = claimed(None, statefulset, me, now, duration);
                cluster.create(&lease, false).await
            }
            Some(current) => match assess(current, me, now, local_process_gone) {
                LeaseState::Held {
                    holder,
                    renewed,
                    duration,
                } => {
                    return Err(LeaseError::Held {
                        statefulset: set_name,
                        lease: name.clone(),
                        holder,
                        renewed_ago: ago(renewed, now),
                        expires_in: super::progress::format_elapsed(duration),
                    })
                }
                LeaseState::Expired { holder } => {
                    tracing::info!(lease = %name, %holder, "taking over an expired lease");
                    let lease = claimed(Some(current), statefulset, me, now, duration);
                    cluster.replace(&lease).await
                }
                LeaseState::Free | LeaseState::Ours => {
                    let lease = claimed(Some(current), statefulset, me, now, duration);
                    cluster.replace(&lease).await
                }
            },
        };
        match written {
            Ok(lease) => {
                let taken_over =
                    existing
                        .as_ref()
                        .and_then(|l| match assess(l, me, now, local_process_gone) {
                            LeaseState::Expired { holder } => Some(holder),
                            _ => None,
                        });
                return Ok(LeaseGuard::start(
                    cluster.clone(),
                    name.clone(),
                    me.clone(),
                    lease,
                    duration,
                    taken_over,
                ));
            }
            // Someone else wrote between our read and write: read again and decide again.
            Err(ApiError::Conflict(_) | ApiError::AlreadyExists(_)) => continue,
            Err(e) => return Err(api("writing", e)),
        }
    }
    Err(LeaseError::Contended { lease: name })
}

/// A held lock. Renews itself in the background until [`LeaseGuard::release`]; when renewal
/// fails for longer than the lease lasts, or someone else took the lease, [`LeaseGuard::lost`]
/// says so and the run must stop writing.
pub struct LeaseGuard<C: Cluster> {
    cluster: C,
    name: String,
    current: Arc<Mutex<Lease>>,
    lost: watch::Receiver<Option<String>>,
    task: Option<JoinHandle<()>>,
    /// The holder whose expired lease this run took over, if any.
    pub taken_over_from: Option<String>,
}

impl<C: Cluster> LeaseGuard<C> {
    fn start(
        cluster: C,
        name: String,
        me: Identity,
        lease: Lease,
        duration: Duration,
        taken_over_from: Option<String>,
    ) -> Self {
        let current = Arc::new(Mutex::new(lease));
        let (lost_tx, lost) = watch::channel(None);
        let interval = (duration / 3).max(Duration::from_millis(100));
        let task = tokio::spawn(renew_loop(
            cluster.clone(),
            me,
            Arc::clone(&current),
            lost_tx,
            interval,
            duration,
        ));
        LeaseGuard {
            cluster,
            name,
            current,
            lost,
            task: Some(task),
            taken_over_from,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Becomes `Some(reason)` when the lock is lost.
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    /// Stops renewing and deletes the lease (only if it still is the version this run wrote).
    pub async fn release(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
        let rv = self
            .current
            .lock()
            .ok()
            .and_then(|l| l.metadata.resource_version.clone());
        if self.lost.borrow().is_some() {
            return;
        }
        if let Some(rv) = rv {
            let preconditions = Preconditions {
                resource_version: Some(rv),
                uid: None,
            };
            let deleted = self.cluster.delete::<Lease>(&self.name, &preconditions);
            match deleted.await {
                Ok(()) | Err(ApiError::NotFound) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "could not release the lease; it expires by itself")
                }
            }
        }
    }
}

impl<C: Cluster> Drop for LeaseGuard<C> {
    /// A run that ends without `release` (cancelled) stops renewing, so its lease expires.
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn renew_loop<C: Cluster>(
    cluster: C,
    me: Identity,
    current: Arc<Mutex<Lease>>,
    lost: watch::Sender<Option<String>>,
    interval: Duration,
    duration: Duration,
) {
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(interval).await;
        let Ok(lease) = current.lock().map(|l| l.clone()) else {
            return;
        };
        let name = lease.metadata.name.clone().unwrap_or_default();
        let mut renewed = lease.clone();
        if let Some(spec) = renewed.spec.as_mut() {
            spec.renew_time = Some(MicroTime(Timestamp::now()));
        }
        let result = match cluster.replace(&renewed).await {
            Err(ApiError::Conflict(_)) => {
                // Changed under us: still ours (a stale resourceVersion), or taken?
                match cluster.get::<Lease>(&name).await {
                    Ok(Some(fresh)) if holder(&fresh) == Some(me.to_string()) => {
                        let mut again = fresh;
                        if let Some(spec) = again.spec.as_mut() {
                            spec.renew_time = Some(MicroTime(Timestamp::now()));
                        }
                        cluster.replace(&again).await
                    }
                    Ok(Some(fresh)) => {
                        let who = holder(&fresh).unwrap_or_else(|| "nobody".to_string());
                        let _ = lost.send(Some(format!("Lease {name} is now held by {who}")));
                        return;
                    }
                    Ok(None) => {
                        let _ = lost.send(Some(format!("Lease {name} was deleted")));
                        return;
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        match result {
            Ok(fresh) => {
                last_renewed = tokio::time::Instant::now();
                if let Ok(mut slot) = current.lock() {
                    *slot = fresh;
                }
            }
            Err(e) => {
                tracing::warn!(lease = %name, error = %e, "renewing the lease failed; retrying");
                if last_renewed.elapsed() >= duration {
                    let _ = lost.send(Some(format!(
                        "Lease {name} could not be renewed for {} ({e})",
                        super::progress::format_elapsed(duration)
                    )));
                    return;
                }
            }
        }
    }
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref()?.holder_identity.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn me() -> Identity {
        Identity {
            user: "ci".into(),
            host: "runner-1".into(),
            pid: 100,
        }
    }

    fn lease(holder: Option<&str>, renewed: Option<i64>, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: renewed.map(|s| MicroTime(ts(s))),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn identities_print_and_parse() {
        let id = me();
        assert_eq!(id.to_string(), "ci@runner-1 pid 100");
        assert_eq!(Identity::parse("ci@runner-1 pid 100"), Some(id.clone()));
        assert_eq!(id.user_at_host(), "ci@runner-1");
        for bad in ["", "ci@runner-1", "runner pid 3", "a@b pid x"] {
            assert_eq!(Identity::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn lease_states() {
        let alive = |_| false;
        let gone = |_| true;
        let cases: Vec<(Lease, i64, bool, &str)> = vec![
            (lease(None, None, 15), 100, false, "free"),
            (lease(Some(""), Some(90), 15), 100, false, "free"),
            (
                lease(Some("ci@runner-1 pid 100"), Some(90), 15),
                100,
                false,
                "ours",
            ),
            (
                lease(Some("dev@laptop pid 7"), Some(90), 15),
                100,
                false,
                "held",
            ),
            (
                lease(Some("dev@laptop pid 7"), Some(85), 15),
                100,
                false,
                "expired",
            ),
            (
                lease(Some("dev@laptop pid 7"), Some(84), 15),
                100,
                false,
                "expired",
            ),
            (
                lease(Some("dev@laptop pid 7"), None, 15),
                100,
                false,
                "expired",
            ),
            // Same host, its process is gone: no need to wait for the expiry.
            (
                lease(Some("ci@runner-1 pid 55"), Some(99), 15),
                100,
                true,
                "expired",
            ),
            // Another host's pid says nothing about this machine.
            (
                lease(Some("ci@runner-2 pid 55"), Some(99), 15),
                100,
                true,
                "held",
            ),
        ];
        for (l, now, process_gone, expected) in cases {
            let state = if process_gone {
                assess(&l, &me(), ts(now), gone)
            } else {
                assess(&l, &me(), ts(now), alive)
            };
            let got = match state {
                LeaseState::Free => "free",
                LeaseState::Ours => "ours",
                LeaseState::Expired { .. } => "expired",
                LeaseState::Held { .. } => "held",
            };
            assert_eq!(got, expected, "{:?} at {now}", l.spec);
        }
    }

    #[test]
    fn claims_count_transitions_only_when_hands_change() {
        let set = StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("shop".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let fresh = claimed(None, &set, &me(), ts(10), LEASE_DURATION);
        assert_eq!(fresh.metadata.name.as_deref(), Some("rollout-web"));
        assert_eq!(fresh.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(
            fresh
                .metadata
                .owner_references
                .as_ref()
                .map(|o| o[0].uid.clone()),
            Some("u1".to_string())
        );
        let spec = fresh.spec.clone().unwrap_or_default();
        assert_eq!(spec.holder_identity.as_deref(), Some("ci@runner-1 pid 100"));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.lease_duration_seconds, Some(15));

        let mut other = lease(Some("dev@laptop pid 7"), Some(1), 15);
        if let Some(s) = other.spec.as_mut() {
            s.lease_transitions = Some(2);
        }
        let taken = claimed(Some(&other), &set, &me(), ts(50), LEASE_DURATION);
        let spec = taken.spec.clone().unwrap_or_default();
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(50))));

        let renewed = claimed(Some(&taken), &set, &me(), ts(60), LEASE_DURATION);
        let spec = renewed.spec.unwrap_or_default();
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.acquire_time, Some(MicroTime(ts(50))));
        assert_eq!(spec.renew_time, Some(MicroTime(ts(60))));
    }
}
