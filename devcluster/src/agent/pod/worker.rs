//! One pod's worker: builds its sandbox (IP, network namespace, /etc/hosts) and volumes, runs its
//! init containers in order and then its containers, keeps its status up to date, and on
//! deletion stops everything within the grace period, cleans up and removes the pod object.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use kube::Api;
use tokio::sync::watch;
use tokio::time::Instant;

use super::account;
use super::container::{sleep_or_stop, stop_requested, ContainerTask, Outcome, Stop};
use super::events::{self, Kind, PodRef};
use super::state::{ContainerState, ContainerView, PodView, RestartPolicy, RetryBackoff, Role};
use super::status::{self, StatusInput};
use super::Ctx;
use crate::agent::volumes::{self, VolumeContext};
use crate::layout;
use crate::net::{self, Sandbox};

/// What the dispatcher tells a worker; only the latest matters.
#[derive(Debug, Clone)]
pub enum Update {
    Pod(Arc<Pod>),
    /// The object is gone from the API (force-deleted, or deleted while the agent was away).
    Gone(Arc<Pod>),
    /// The agent is shutting down: stop the processes, leave the object.
    AgentStopping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Deleted,
    Gone,
    AgentStopping,
}

/// On agent shutdown pods get at most this long, so `down` (which waits 20 s for the agent)
/// finds them stopped.
const AGENT_STOP_GRACE: Duration = Duration::from_secs(10);
const CLAIM_WAIT: Duration = Duration::from_secs(120);

/// The pod's grace period: the deletion's, else the spec's, else 30 s.
pub fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30);
    Duration::from_secs(secs.max(0) as u64)
}

pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

pub fn initial_view(pod: &Pod, now: SystemTime) -> PodView {
    let spec = pod.spec.as_ref();
    let view = |c: &k8s_openapi::api::core::v1::Container, reason: &str| {
        ContainerView::new(&c.name, c.image.as_deref().unwrap_or(""), reason)
    };
    let init: Vec<ContainerView> = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .map(|c| view(c, "PodInitializing"))
        .collect();
    let main_reason = if init.is_empty() {
        "ContainerCreating"
    } else {
        "PodInitializing"
    };
    let containers = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| view(c, main_reason))
        .collect();
    PodView {
        pod_ip: None,
        start_time: Some(now),
        initialized: init.is_empty(),
        init_containers: init,
        containers,
    }
}

/// The pod's hostname: `spec.hostname`, else its name, cut to 63 characters.
pub fn hostname(pod: &Pod) -> String {
    let h = pod
        .spec
        .as_ref()
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    h.chars().take(63).collect()
}

/// The pod's /etc/hosts, as the kubelet writes it (StatefulSet pods with a subdomain get their
/// stable DNS name too).
pub fn hosts_file(pod: &Pod, ip: Ipv4Addr) -> String {
    let host = hostname(pod);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let names = match pod
        .spec
        .as_ref()
        .and_then(|s| s.subdomain.as_deref())
        .filter(|s| !s.is_empty())
    {
        Some(sub) => format!("{host}.{sub}.{ns}.svc.cluster.local\t{host}"),
        None => host,
    };
    format!(
        "# Kubernetes-managed hosts file (written by the devcluster agent).\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         {ip}\t{names}\n"
    )
}

fn pod_ref(pod: &Pod) -> PodRef {
    PodRef {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
    }
}

/// Shows `reason`/`message` on containers that have not started yet.
fn set_unstarted_waiting(view: &watch::Sender<PodView>, reason: &str, message: Option<String>) {
    view.send_modify(|v| {
        for c in v.init_containers.iter_mut().chain(v.containers.iter_mut()) {
            if c.container_id.is_none() && matches!(c.state, ContainerState::Waiting { .. }) {
                c.set_waiting(reason, message.clone());
            }
        }
    });
}

/// Sends the pod status whenever the computed one differs from what was sent last.
struct Reporter {
    api: Api<Pod>,
    name: String,
    policy: RestartPolicy,
    gates: Vec<String>,
    last_sent: Option<PodStatus>,
    failing: bool,
}

impl Reporter {
    async fn report(&mut self, view: &PodView, observed: &Pod) {
        let desired = status::desired(StatusInput {
            view,
            policy: self.policy,
            readiness_gates: &self.gates,
            observed: observed.status.as_ref(),
            previous: self.last_sent.as_ref(),
            now: SystemTime::now(),
        });
        let Some(patch) = status::patch_if_changed(&desired, self.last_sent.as_ref()) else {
            return;
        };
        match self
            .api
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.last_sent = Some(desired);
                self.failing = false;
            }
            // The object is gone; the watch brings the Delete, nothing to retry.
            Err(kube::Error::Api(s)) if s.code == 404 => self.failing = false,
            Err(e) => {
                tracing::warn!(pod = %self.name, error = %e, "could not update the pod status; retrying");
                self.failing = true;
            }
        }
    }
}

/// Runs one pod until it is gone, deleted or the agent stops.
pub async fn run(ctx: Arc<Ctx>, pod: Arc<Pod>, mut updates: watch::Receiver<Update>) {
    let pref = pod_ref(&pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pref.namespace);
    // A pod that already finished, or is being deleted, before this worker started is not run
    // (again); its status is left as it is.
    let passive = is_terminal(&pod) || pod.metadata.deletion_timestamp.is_some();
    let (view_tx, mut view_rx) = watch::channel(initial_view(&pod, SystemTime::now()));
    let (stop_tx, stop_rx) = watch::channel(None::<Stop>);
    let mut life = tokio::spawn(life(ctx.clone(), pod.clone(), view_tx, stop_rx, passive));
    let mut reporter = Reporter {
        api: api.clone(),
        name: pref.name.clone(),
        policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
        gates: spec
            .readiness_gates
            .iter()
            .flatten()
            .map(|g| g.condition_type.clone())
            .collect(),
        last_sent: None,
        failing: false,
    };
    let mut latest = pod;
    let mut reason: Option<StopReason> = None;
    let mut report = !passive;
    // The first turn handles the pod as the worker got it: a pod already being deleted stops at
    // once, any other gets its first status.
    updates.mark_changed();
    // A closed channel answers at once forever; these keep the loop from spinning on one.
    let (mut updates_open, mut view_open) = (true, true);
    loop {
        let retry = tokio::time::sleep(Duration::from_secs(2));
        tokio::select! {
            changed = updates.changed(), if updates_open => {
                updates_open = changed.is_ok();
                let update = if changed.is_err() { Update::AgentStopping } else { updates.borrow_and_update().clone() };
                let (new_reason, grace) = match update {
                    Update::Pod(p) => {
                        latest = p;
                        match latest.metadata.deletion_timestamp {
                            Some(_) => (Some(StopReason::Deleted), grace_of(&latest)),
                            None => (None, Duration::ZERO),
                        }
                    }
                    Update::Gone(p) => {
                        report = false;
                        (Some(StopReason::Gone), grace_of(&p))
                    }
                    Update::AgentStopping => {
                        report = false;
                        (Some(StopReason::AgentStopping), grace_of(&latest).min(AGENT_STOP_GRACE))
                    }
                };
                if let Some(r) = new_reason {
                    // The first stop sets the deadline; a later reason only changes the ending
                    // (a pod force-deleted mid-termination has no object left to delete).
                    if reason.is_none() {
                        tracing::info!(pod = %pref.name, namespace = %pref.namespace, why = ?r, grace_s = grace.as_secs(), "stopping pod");
                        let _ = stop_tx.send(Some(Stop { deadline: Instant::now() + grace }));
                    }
                    if reason != Some(StopReason::Gone) {
                        reason = Some(r);
                    }
                }
                if report {
                    let v = view_rx.borrow().clone();
                    reporter.report(&v, &latest).await;
                }
            }
            changed = view_rx.changed(), if view_open => {
                view_open = changed.is_ok();
                if view_open && report {
                    let v = view_rx.borrow_and_update().clone();
                    reporter.report(&v, &latest).await;
                }
            }
            _ = retry, if reporter.failing && report => {
                let v = view_rx.borrow().clone();
                reporter.report(&v, &latest).await;
            }
            _ = &mut life => break,
        }
    }
    if reason == Some(StopReason::Deleted) {
        remove_object(&api, &pref).await;
    }
}

/// Removes the pod object once its processes are gone: grace 0, only this uid. Retried a few
/// times, since a pod left behind would stay Terminating for good.
async fn remove_object(api: &Api<Pod>, pref: &PodRef) {
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: Some(pref.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    let mut wait = Duration::from_millis(500);
    for attempt in 1..=6 {
        match api.delete(&pref.name, &dp).await {
            Ok(_) => {
                tracing::info!(pod = %pref.name, namespace = %pref.namespace, "pod deleted");
                return;
            }
            // Gone already, or a new pod of the same name (uid precondition): nothing to do.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
            Err(e) => {
                tracing::warn!(pod = %pref.name, attempt, error = %e, "could not remove the pod object");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
}

/// Builds the sandbox and volumes, runs the containers, and tears everything down once stopped.
async fn life(
    ctx: Arc<Ctx>,
    pod: Arc<Pod>,
    view: watch::Sender<PodView>,
    mut stop: watch::Receiver<Option<Stop>>,
    passive: bool,
) {
    let pref = pod_ref(&pod);
    let pod_dir = ctx
        .cfg
        .layout
        .pod_dir(&pref.namespace, &pref.name, &pref.uid);
    if passive {
        stop_requested(&mut stop).await;
        remove_dir(&pod_dir);
        return;
    }
    let sandbox = setup_and_run(&ctx, &pod, &pref, &pod_dir, &view, &mut stop).await;
    if let Some(sb) = sandbox {
        net::remove_sandbox(&sb).await;
    }
    if let Ok(mut ipam) = ctx.ipam.lock() {
        ipam.release(&pref.uid);
    }
    remove_dir(&pod_dir);
}

fn remove_dir(dir: &Path) {
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the pod's scratch directory");
        }
    }
}

/// Everything between sandbox creation and the containers' end. Returns the sandbox to remove.
async fn setup_and_run(
    ctx: &Arc<Ctx>,
    pod: &Arc<Pod>,
    pref: &PodRef,
    pod_dir: &Path,
    view: &watch::Sender<PodView>,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Option<Sandbox> {
    let event =
        |kind, reason: &str, msg: &str| events::record(&ctx.client, pref, None, kind, reason, msg);
    let host_network = account::host_network(pod);
    let (sb, ip) = if host_network {
        // In the host's network namespace, with the node's address, as the kubelet does.
        (
            None,
            layout::BRIDGE_IP.parse().unwrap_or(Ipv4Addr::LOCALHOST),
        )
    } else {
        match pod_sandbox(ctx, pod, pref, view, stop).await {
            Ok((sb, ip)) => (Some(sb), ip),
            Err(sb) => return sb,
        }
    };
    view.send_modify(|v| v.pod_ip = Some(ip));
    let hosts = pod_dir.join("etc-hosts");
    let written =
        std::fs::create_dir_all(pod_dir).and_then(|_| std::fs::write(&hosts, hosts_file(pod, ip)));
    if let Err(e) = written {
        let msg = format!("could not write {}: {e}", hosts.display());
        set_unstarted_waiting(view, "ContainerCreating", Some(msg.clone()));
        event(Kind::Warning, "FailedCreatePodSandBox", &msg);
        stop_requested(stop).await;
        return sb;
    }

    let created_file = ctx.cfg.layout.created_mountpoints_file();
    let vctx = VolumeContext {
        client: &ctx.client,
        pod,
        pod_dir,
        pod_ip: Some(ip),
        claim_wait: CLAIM_WAIT,
        created_file: &created_file,
    };
    let mut retry = RetryBackoff::default();
    let (host_volumes, account_dir) = loop {
        let prepared = tokio::select! {
            r = prepare_mounts(&vctx) => r,
            _ = stop_requested(stop) => return sb,
        };
        match prepared {
            Ok((v, account)) => break (Arc::new(v), account),
            Err(e) => {
                let msg = format!(
                    "Unable to attach or mount volumes: {}",
                    crate::agent::pods::error_chain(&e)
                );
                tracing::warn!(pod = %pref.name, "{msg}");
                set_unstarted_waiting(view, "ContainerCreating", Some(msg.clone()));
                event(Kind::Warning, "FailedMount", &msg);
                if sleep_or_stop(Instant::now() + retry.next_delay(), stop).await {
                    return sb;
                }
            }
        }
    };
    set_unstarted_waiting(view, "ContainerCreating", None);

    let spec = pod.spec.clone().unwrap_or_default();
    let task =
        |role: Role, index: usize, spec_c: &k8s_openapi::api::core::v1::Container| ContainerTask {
            ctx: ctx.clone(),
            pod: pod.clone(),
            pod_ref: pref.clone(),
            role,
            index,
            spec: spec_c.clone(),
            policy: RestartPolicy::parse(spec.restart_policy.as_deref()),
            netns: sb.as_ref().map(|sb| sb.netns.clone()),
            pod_ip: ip,
            hostname: hostname(pod),
            pod_dir: pod_dir.to_path_buf(),
            hosts_file: hosts.clone(),
            volumes: host_volumes.clone(),
            account_dir: account_dir.clone(),
            view: view.clone(),
        };
    for (i, c) in spec.init_containers.iter().flatten().enumerate() {
        match task(Role::Init, i, c).run(stop.clone()).await {
            Outcome::Succeeded => {}
            Outcome::Failed => {
                stop_requested(stop).await;
                return sb;
            }
            Outcome::Stopped => return sb,
        }
    }
    view.send_modify(|v| {
        v.initialized = true;
        for c in &mut v.containers {
            if c.container_id.is_none() {
                c.set_waiting("ContainerCreating", None);
            }
        }
    });
    let runs = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| task(Role::Main, i, c).run(stop.clone()));
    futures::future::join_all(runs).await;
    sb
}

#[derive(Debug, thiserror::Error)]
enum MountError {
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    #[error(transparent)]
    Account(#[from] account::AccountError),
}

/// The pod's volumes on the host, and its service account's files (see [`account`]).
async fn prepare_mounts(
    vctx: &VolumeContext<'_>,
) -> Result<
    (
        std::collections::HashMap<String, volumes::HostVolume>,
        Option<std::path::PathBuf>,
    ),
    MountError,
> {
    let host_volumes = volumes::prepare(vctx).await?;
    let account = account::prepare(vctx.client, vctx.pod, vctx.pod_dir).await?;
    Ok((host_volumes, account))
}

/// The pod's own network namespace and address. `Err` carries what `setup_and_run` returns when
/// it stops here (the sandbox to remove, if one was started).
async fn pod_sandbox(
    ctx: &Arc<Ctx>,
    pod: &Arc<Pod>,
    pref: &PodRef,
    view: &watch::Sender<PodView>,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Result<(Sandbox, Ipv4Addr), Option<Sandbox>> {
    let event =
        |kind, reason: &str, msg: &str| events::record(&ctx.client, pref, None, kind, reason, msg);
    let Some(cidr) = ctx.cfg.pod_cidr(&pref.node) else {
        stop_requested(stop).await;
        return Err(None);
    };
    let preferred = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .and_then(|ip| ip.parse().ok());
    let ip = ctx
        .ipam
        .lock()
        .ok()
        .and_then(|mut ipam| ipam.allocate(&cidr, &pref.uid, preferred));
    let Some(ip) = ip else {
        let e = net::NetError::AddressesExhausted {
            node: pref.node.clone(),
            cidr,
        };
        set_unstarted_waiting(view, "ContainerCreating", Some(e.to_string()));
        event(Kind::Warning, "FailedCreatePodSandBox", &e.to_string());
        stop_requested(stop).await;
        return Err(None);
    };
    let sb = Sandbox::for_pod(&pref.uid, ip);
    let mut retry = RetryBackoff::default();
    loop {
        let created = tokio::select! {
            r = net::create_sandbox(&sb) => r,
            _ = stop_requested(stop) => return Err(Some(sb)),
        };
        match created {
            Ok(()) => break,
            Err(e) => {
                let msg = format!(
                    "Failed to create pod sandbox: {}",
                    crate::agent::pods::error_chain(&e)
                );
                tracing::warn!(pod = %pref.name, "{msg}");
                set_unstarted_waiting(view, "ContainerCreating", Some(msg.clone()));
                event(Kind::Warning, "FailedCreatePodSandBox", &msg);
                if sleep_or_stop(Instant::now() + retry.next_delay(), stop).await {
                    return Err(Some(sb));
                }
            }
        }
    }
    Ok((sb, ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use kube::api::ObjectMeta;

    fn pod(spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("time-app:v1".into()),
            ..Default::default()
        }
    }

    #[test]
    fn grace_periods() {
        let mut p = pod(PodSpec::default());
        assert_eq!(grace_of(&p), Duration::from_secs(30));
        if let Some(s) = p.spec.as_mut() {
            s.termination_grace_period_seconds = Some(5);
        }
        assert_eq!(grace_of(&p), Duration::from_secs(5));
        p.metadata.deletion_grace_period_seconds = Some(0);
        assert_eq!(grace_of(&p), Duration::ZERO);
    }

    #[test]
    fn hosts_files() {
        let plain = hosts_file(&pod(PodSpec::default()), Ipv4Addr::new(10, 244, 1, 2));
        assert!(plain.contains("127.0.0.1\tlocalhost\n"));
        assert!(plain.ends_with("10.244.1.2\tweb-0\n"), "{plain}");
        let sts = hosts_file(
            &pod(PodSpec {
                hostname: Some("web-0".into()),
                subdomain: Some("web".into()),
                ..Default::default()
            }),
            Ipv4Addr::new(10, 244, 1, 2),
        );
        assert!(
            sts.ends_with("10.244.1.2\tweb-0.web.shop.svc.cluster.local\tweb-0\n"),
            "{sts}"
        );
    }

    #[test]
    fn initial_views_wait_in_the_kubelet_reasons() {
        let v = initial_view(
            &pod(PodSpec {
                containers: vec![container("app")],
                ..Default::default()
            }),
            SystemTime::UNIX_EPOCH,
        );
        assert!(v.initialized);
        assert!(
            matches!(&v.containers[0].state, ContainerState::Waiting { reason, .. } if reason == "ContainerCreating")
        );
        let with_init = initial_view(
            &pod(PodSpec {
                containers: vec![container("app")],
                init_containers: Some(vec![container("setup")]),
                ..Default::default()
            }),
            SystemTime::UNIX_EPOCH,
        );
        assert!(!with_init.initialized);
        assert!(
            matches!(&with_init.containers[0].state, ContainerState::Waiting { reason, .. } if reason == "PodInitializing")
        );
        assert_eq!(with_init.init_containers.len(), 1);
    }

    #[test]
    fn terminal_pods() {
        let mut p = pod(PodSpec::default());
        assert!(!is_terminal(&p));
        p.status = Some(PodStatus {
            phase: Some("Succeeded".into()),
            ..Default::default()
        });
        assert!(is_terminal(&p));
    }
}
