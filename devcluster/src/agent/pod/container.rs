//! One container's lifecycle, as the kubelet drives it: find the image's command (re-reading the
//! runtime file each attempt; ErrImagePull / ImagePullBackOff while unmapped), build its
//! environment and mounts, start it through `pod-init`, run its probes, restart it per the
//! restart policy with the crash-loop back-off, and stop it gracefully when the pod goes away.
//! Every state change is written to the pod's shared [`PodView`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::account;
use super::env;
use super::events::{self, Kind, PodRef};
use super::process::{self, Exit, Process};
use super::scratch;
use super::sources::Objects;
use super::state::{
    should_restart, ContainerView, CrashBackoff, PodView, RestartPolicy, RetryBackoff, Role,
    Terminated,
};
use super::Ctx;
use crate::agent::probe::{
    self, Action, ContainerProbes, Decision, Handler, ProbeEvent, ProbeKind, Target, Timing,
};
use crate::agent::runtime::{self, RuntimeError, RuntimeMap};
use crate::agent::volumes::{self, HostVolume};
use crate::podinit::{Bind, PodInit};

/// The kubelet never gives a container less than this to stop.
const MIN_GRACE: Duration = Duration::from_secs(2);
/// How long ErrImagePull shows before it turns into ImagePullBackOff.
const PULL_ERROR_SHOWN: Duration = Duration::from_secs(2);

/// A request to stop the pod's containers: everything must be dead by `deadline` (SIGKILL then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop {
    pub deadline: Instant,
}

impl Stop {
    pub fn grace(&self) -> Duration {
        self.deadline
            .saturating_duration_since(Instant::now())
            .max(MIN_GRACE)
    }
}

/// Waits for a stop request. A dropped sender counts as an immediate stop.
pub async fn stop_requested(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    loop {
        if let Some(s) = *stop.borrow_and_update() {
            return s;
        }
        if stop.changed().await.is_err() {
            return Stop {
                deadline: Instant::now(),
            };
        }
    }
}

/// Sleeps until `until`, or returns `true` early when a stop is requested.
pub async fn sleep_or_stop(until: Instant, stop: &mut watch::Receiver<Option<Stop>>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep_until(until) => false,
        _ = stop_requested(stop) => true,
    }
}

/// How a container's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An init container exited 0.
    Succeeded,
    /// An init container failed and the policy forbids a restart.
    Failed,
    /// The pod is going away; the process is gone.
    Stopped,
}

/// Everything a container's lifecycle needs.
#[derive(Clone)]
pub struct ContainerTask {
    pub ctx: Arc<Ctx>,
    pub pod: Arc<Pod>,
    pub pod_ref: PodRef,
    pub role: Role,
    pub index: usize,
    pub spec: Container,
    pub policy: RestartPolicy,
    /// The pod's network namespace; `None` for a pod in the host's network.
    pub netns: Option<String>,
    pub pod_ip: Ipv4Addr,
    pub hostname: String,
    pub pod_dir: PathBuf,
    pub hosts_file: PathBuf,
    pub volumes: Arc<HashMap<String, HostVolume>>,
    /// The service account's token, CA and namespace files, mounted at [`account::MOUNT_PATH`].
    pub account_dir: Option<PathBuf>,
    pub view: watch::Sender<PodView>,
}

/// Why a start attempt did not get as far as a process.
enum StartProblem {
    /// The runtime file has no command for the image (or cannot be read).
    Image(String),
    /// Environment, mounts or command cannot be built (CreateContainerConfigError).
    Config(String),
}

struct Prepared {
    init: PodInit,
    env: Vec<(String, String)>,
    subpath_dirs: Vec<PathBuf>,
    image_id: String,
}

impl ContainerTask {
    fn update(&self, f: impl FnOnce(&mut ContainerView)) {
        let (role, index) = (self.role, self.index);
        self.view.send_modify(|v| {
            let list = match role {
                Role::Init => &mut v.init_containers,
                Role::Main => &mut v.containers,
            };
            if let Some(c) = list.get_mut(index) {
                f(c);
            }
        });
    }

    fn event(&self, kind: Kind, reason: &str, message: &str) {
        events::record(
            &self.ctx.client,
            &self.pod_ref,
            Some(&self.spec.name),
            kind,
            reason,
            message,
        );
    }

    fn image(&self) -> &str {
        self.spec.image.as_deref().unwrap_or("")
    }

    async fn prepare(&self) -> Result<Prepared, StartProblem> {
        let cfg = &self.ctx.cfg;
        let image = self.image();
        let mapped = RuntimeMap::load(&cfg.runtime_file)
            .and_then(|m| m.resolve(image, &cfg.bin_dir))
            .map_err(|e| StartProblem::Image(e.to_string()))?;
        let (cms, secrets) = env::referenced(&self.spec);
        let ns = self.pod_ref.namespace.as_str();
        let objects = Objects::fetch(
            &self.ctx.client,
            ns,
            cms.iter().map(String::as_str),
            secrets.iter().map(String::as_str),
        )
        .await
        .map_err(|e| StartProblem::Config(e.to_string()))?;
        // As a kubelet puts service variables before the container's own env, so its env wins.
        let mut base_env = account::api_server_env(&self.pod);
        base_env.extend(mapped.env.clone());
        let env = env::container_env(
            &self.pod,
            &self.spec,
            Some(self.pod_ip),
            &base_env,
            &objects,
        )
        .map_err(|e| StartProblem::Config(e.to_string()))?;
        let command = runtime::argv(
            &mapped,
            self.spec.command.as_deref(),
            self.spec.args.as_deref(),
            &env,
        );
        if command.is_empty() {
            let e = RuntimeError::NoCommand {
                image: image.to_string(),
                path: cfg.runtime_file.clone(),
            };
            return Err(StartProblem::Config(e.to_string()));
        }
        let mut mounts = volumes::mounts(&self.spec, &self.volumes, &env)
            .map_err(|e| StartProblem::Config(e.to_string()))?;
        let account_path = std::path::Path::new(account::MOUNT_PATH);
        if let Some(dir) = &self.account_dir {
            if !mounts.iter().any(|m| m.bind.dst == account_path) {
                mounts.push(volumes::Mount {
                    bind: Bind {
                        src: dir.clone(),
                        dst: account_path.to_path_buf(),
                        read_only: true,
                    },
                    create_dir: None,
                });
            }
        }
        // The container's own /tmp, /run and /var/log first, so volumes below them land on top.
        let rootfs = self.pod_dir.join("rootfs").join(&self.spec.name);
        let volume_dsts: Vec<&std::path::Path> =
            mounts.iter().map(|m| m.bind.dst.as_path()).collect();
        let must_see = [
            cfg.layout.root.as_path(),
            cfg.bin_dir.as_path(),
            cfg.runtime_file.as_path(),
        ];
        let mut binds = scratch::private_binds(&rootfs, &volume_dsts, &must_see);
        scratch::prepare(&binds).map_err(|e| {
            StartProblem::Config(format!(
                "making the container's /tmp, /run and /var/log under {}: {e}",
                rootfs.display()
            ))
        })?;
        // Like the kubelet: the pod's own /etc/hosts, unless the container mounts one itself.
        if !mounts
            .iter()
            .any(|m| m.bind.dst == std::path::Path::new("/etc/hosts"))
        {
            binds.push(Bind {
                src: self.hosts_file.clone(),
                dst: "/etc/hosts".into(),
                read_only: true,
            });
        }
        let subpath_dirs = mounts.iter().filter_map(|m| m.create_dir.clone()).collect();
        binds.extend(mounts.into_iter().map(|m| m.bind));
        let workdir = self
            .spec
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .or(mapped.working_dir.clone())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.pod_dir.join("containers").join(&self.spec.name));
        Ok(Prepared {
            init: PodInit {
                netns: self.netns.clone(),
                hostname: Some(self.hostname.clone()),
                binds,
                workdir: Some(workdir),
                mountpoints_file: Some(cfg.layout.created_mountpoints_file()),
                // Set by process::spawn, which makes the pipe.
                ready_fd: None,
                command,
            },
            env: env.into_iter().collect(),
            subpath_dirs,
            image_id: format!("devcluster://{image}"),
        })
    }

    fn probes(&self) -> ContainerProbes {
        let ports = self.spec.ports.as_deref().unwrap_or(&[]);
        let resolve = |p: Option<&k8s_openapi::api::core::v1::Probe>| {
            p.map(|p| {
                let action = Handler::of_probe(p)
                    .resolve(&self.spec.name, ports)
                    .unwrap_or_else(|e| Action::Invalid(e.to_string()));
                (Timing::of(p), action)
            })
        };
        if self.role == Role::Init {
            return ContainerProbes::default();
        }
        ContainerProbes {
            startup: resolve(self.spec.startup_probe.as_ref()),
            readiness: resolve(self.spec.readiness_probe.as_ref()),
            liveness: resolve(self.spec.liveness_probe.as_ref()),
        }
    }

    /// The pod's grace period, or a probe's own `terminationGracePeriodSeconds` for its kills.
    fn grace(&self, kind: Option<ProbeKind>) -> Duration {
        let probe = kind.and_then(|k| match k {
            ProbeKind::Liveness => self.spec.liveness_probe.as_ref(),
            ProbeKind::Startup => self.spec.startup_probe.as_ref(),
            ProbeKind::Readiness => None,
        });
        let secs = probe
            .and_then(|p| p.termination_grace_period_seconds)
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(secs.max(0) as u64).max(MIN_GRACE)
    }

    /// Runs the preStop hook (bounded by the grace period), then SIGTERM / SIGKILL.
    async fn kill(&self, proc: &mut Process, grace: Duration) -> Exit {
        let deadline = Instant::now() + grace;
        // A hook entering a process that has not reached its namespaces would run on the host.
        let hook = self
            .spec
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .filter(|_| proc.setup().is_done());
        if let Some(hook) = hook {
            let ports = self.spec.ports.as_deref().unwrap_or(&[]);
            let action = Handler::of_lifecycle(hook)
                .resolve(&self.spec.name, ports)
                .unwrap_or_else(|e| Action::Invalid(e.to_string()));
            let target = Target {
                pod_ip: self.pod_ip,
                pid: proc.pid,
            };
            if let Err(msg) = probe::execute(&action, target, &self.ctx.http, grace).await {
                self.event(
                    Kind::Warning,
                    "FailedPreStopHook",
                    &format!("PreStopHook failed: {msg}"),
                );
            }
        }
        proc.stop(
            deadline
                .saturating_duration_since(Instant::now())
                .max(MIN_GRACE),
        )
        .await
    }

    /// Waits out a retry delay, showing `reason` meanwhile. `true` when stopped.
    async fn back_off_retry(
        &self,
        retry: &mut RetryBackoff,
        stop: &mut watch::Receiver<Option<Stop>>,
        first_reason: &str,
        message: String,
    ) -> bool {
        let delay = retry.next_delay();
        let start = Instant::now();
        self.update(|c| c.set_waiting(first_reason, Some(message)));
        if first_reason == "ErrImagePull" {
            if sleep_or_stop(start + PULL_ERROR_SHOWN.min(delay), stop).await {
                return true;
            }
            let msg = format!("Back-off pulling image {:?}", self.image());
            self.update(|c| c.set_waiting("ImagePullBackOff", Some(msg.clone())));
            self.event(Kind::Normal, "BackOff", &msg);
        }
        sleep_or_stop(start + delay, stop).await
    }

    /// The container's whole life in this pod.
    pub async fn run(self, mut stop: watch::Receiver<Option<Stop>>) -> Outcome {
        let mut crash = CrashBackoff::default();
        let mut retry = RetryBackoff::default();
        loop {
            if stop.borrow().is_some() {
                return Outcome::Stopped;
            }
            let prepared = match self.prepare().await {
                Ok(p) => p,
                Err(StartProblem::Image(msg)) => {
                    let msg = format!("Failed to pull image {:?}: {msg}", self.image());
                    self.event(Kind::Warning, "Failed", &msg);
                    self.event(Kind::Warning, "Failed", "Error: ErrImagePull");
                    if self
                        .back_off_retry(&mut retry, &mut stop, "ErrImagePull", msg)
                        .await
                    {
                        return Outcome::Stopped;
                    }
                    continue;
                }
                Err(StartProblem::Config(msg)) => {
                    self.event(Kind::Warning, "Failed", &format!("Error: {msg}"));
                    if self
                        .back_off_retry(&mut retry, &mut stop, "CreateContainerConfigError", msg)
                        .await
                    {
                        return Outcome::Stopped;
                    }
                    continue;
                }
            };
            retry.reset();
            self.event(
                Kind::Normal,
                "Pulled",
                &format!(
                    "Container image {:?} already present on machine",
                    self.image()
                ),
            );
            for d in &prepared.subpath_dirs {
                let _ = std::fs::create_dir_all(d);
            }
            let log = self.pod_dir.join(format!("{}.log", self.spec.name));
            if let Some(w) = prepared
                .init
                .workdir
                .as_ref()
                .filter(|w| w.starts_with(&self.pod_dir))
            {
                let _ = std::fs::create_dir_all(w);
            }
            let mut proc = match process::spawn(
                &self.spec.name,
                &self.ctx.exe,
                &prepared.init,
                &prepared.env,
                &log,
            ) {
                Ok(p) => p,
                Err(e) => {
                    let msg = crate::agent::pods::error_chain(&e);
                    self.event(Kind::Warning, "Failed", &format!("Error: {msg}"));
                    if self
                        .back_off_retry(&mut retry, &mut stop, "RunContainerError", msg)
                        .await
                    {
                        return Outcome::Stopped;
                    }
                    continue;
                }
            };
            let container_id = format!("devcluster://{}", proc.pid);
            self.event(
                Kind::Normal,
                "Created",
                &format!("Created container {}", self.spec.name),
            );
            self.event(
                Kind::Normal,
                "Started",
                &format!("Started container {}", self.spec.name),
            );
            tracing::info!(pod = %self.pod_ref.name, namespace = %self.pod_ref.namespace, container = %self.spec.name, pid = proc.pid, "container started");

            let probes = self.probes();
            let set = probes.probe_set();
            let started_at = proc.started_at;
            let image_id = prepared.image_id.clone();
            self.update(|c| {
                c.set_running(started_at, container_id.clone(), image_id);
                c.started = set.started();
                c.ready = set.ready();
            });
            let (ptx, mut prx) = mpsc::channel(16);
            let probe_task = (!probes.is_empty()).then(|| {
                let target = Target {
                    pod_ip: self.pod_ip,
                    pid: proc.pid,
                };
                let (started, http, mut setup) =
                    (Instant::now(), self.ctx.http.clone(), proc.setup());
                // Exec probes enter the process's namespaces: not before pod-init is done with
                // them. If it never is, the process exits and no probe runs at all.
                tokio::spawn(async move {
                    if setup.done().await {
                        probe::run(probes, target, started, http, ptx).await;
                    }
                })
            });
            let mut probes_open = probe_task.is_some();

            enum End {
                Exited(Exit),
                Stopped(Exit),
            }
            let end = loop {
                tokio::select! {
                    exit = proc.wait() => break End::Exited(exit),
                    ev = prx.recv(), if probes_open => match ev {
                        None => probes_open = false,
                        Some(ProbeEvent::Failed { kind, message, first }) => {
                            if first {
                                self.event(Kind::Warning, "Unhealthy", &format!("{} probe failed: {message}", kind.title()));
                            }
                        }
                        Some(ProbeEvent::Decided(Decision::Started)) => self.update(|c| c.started = true),
                        Some(ProbeEvent::Decided(Decision::Ready(r))) => self.update(|c| c.ready = r),
                        Some(ProbeEvent::Decided(Decision::Restart(kind))) => {
                            let msg = format!("Container {} failed {} probe, will be restarted", self.spec.name, kind.title().to_lowercase());
                            self.event(Kind::Normal, "Killing", &msg);
                            self.update(|c| c.ready = false);
                            break End::Exited(self.kill(&mut proc, self.grace(Some(kind))).await);
                        }
                    },
                    s = stop_requested(&mut stop) => {
                        self.event(Kind::Normal, "Killing", &format!("Stopping container {}", self.spec.name));
                        self.update(|c| c.ready = false);
                        break End::Stopped(self.kill(&mut proc, s.grace()).await);
                    }
                }
            };
            if let Some(t) = probe_task {
                t.abort();
            }
            let (exit, stopped) = match end {
                End::Exited(e) => (e, false),
                End::Stopped(e) => (e, true),
            };
            let term =
                Terminated::from_exit(exit.code, exit.signal, started_at, exit.at, container_id);
            let code = term.exit_code;
            tracing::info!(pod = %self.pod_ref.name, container = %self.spec.name, exit_code = code, "container exited");
            self.update(|c| c.set_terminated(term));
            if stopped {
                return Outcome::Stopped;
            }
            if self.role == Role::Init && code == 0 {
                return Outcome::Succeeded;
            }
            if !should_restart(self.policy, self.role, code) {
                if self.role == Role::Init {
                    return Outcome::Failed;
                }
                stop_requested(&mut stop).await;
                return Outcome::Stopped;
            }
            if let Some(until) = crash.wait_until(Instant::now()) {
                let msg = format!(
                    "back-off {}s restarting failed container={} pod={}_{}({})",
                    crash.current().as_secs(),
                    self.spec.name,
                    self.pod_ref.name,
                    self.pod_ref.namespace,
                    self.pod_ref.uid
                );
                self.update(|c| c.set_back_off(msg));
                self.event(
                    Kind::Warning,
                    "BackOff",
                    "Back-off restarting failed container",
                );
                if sleep_or_stop(until, &mut stop).await {
                    return Outcome::Stopped;
                }
            }
            crash.restarted(Instant::now());
        }
    }
}
