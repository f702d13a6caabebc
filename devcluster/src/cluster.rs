//! `up`, `down` and `status`: the whole devcluster's life cycle, built from the control plane,
//! the node agent and the host network pieces.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::WatchStreamExt;
use serde::{Deserialize, Serialize};

use crate::controlplane::{self, Binaries};
use crate::layout::{self, Layout};
use crate::{gateway, hostnet, mirror, procs, prometheus};

/// What `up` records about the running cluster, read by `status` and by an `up` that heals it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ClusterState {
    pub nodes: usize,
    pub kube_bin_dir: PathBuf,
    pub started_at: String,
    /// The Kubernetes release the control plane runs (absent in records of older devclusters).
    #[serde(default)]
    pub kubernetes_version: Option<String>,
}

/// Runs the provisioning script (installs packages, builds or finds the cached control plane of
/// `version`) and returns the directory of its binaries.
pub fn provision(version: &str) -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/provision.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(version)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "provisioning failed ({}); see the messages above",
            script.display()
        );
    }
    let dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_string();
    if dir.is_empty() {
        bail!("{} printed no binary directory", script.display());
    }
    Ok(PathBuf::from(dir))
}

pub fn require_root() -> anyhow::Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("the devcluster needs root (network namespaces, bridges, bind mounts); run it with sudo");
    }
    Ok(())
}

/// Is a cluster already serving from this layout, with every add-on?
pub async fn healthy(layout: &Layout) -> bool {
    let recorded = procs::recorded(&layout.pids_dir());
    healthy_without_addons(layout).await
        && recorded
            .iter()
            .filter(|p| p.name == prometheus::NAME || p.name == prometheus::SD_NAME)
            .count()
            == 2
        && recorded
            .iter()
            .filter(|p| p.name == prometheus::NAME || p.name == prometheus::SD_NAME)
            .all(|p| procs::alive(p.pid))
}

/// Is the cluster itself serving: the API server answers and every process it needs (the
/// control plane and the node agent) is alive? Add-ons are not counted.
async fn healthy_without_addons(layout: &Layout) -> bool {
    if !layout.kubeconfig().exists() {
        return false;
    }
    let Ok(client) = layout::client(&layout.kubeconfig()).await else {
        return false;
    };
    client.apiserver_version().await.is_ok()
        && procs::recorded(&layout.pids_dir())
            .iter()
            .filter(|p| !ADDONS.contains(&p.name.as_str()))
            .all(|p| procs::alive(p.pid))
}

/// The processes that serve beside the cluster (the gateways, Prometheus): an `up` on a cluster
/// that serves starts those that are missing without healing anything else.
const ADDONS: [&str; 4] = [
    gateway::PROCESS,
    mirror::process::PROCESS,
    prometheus::NAME,
    prometheus::SD_NAME,
];

/// The exports that point tools at this cluster (`devcluster env`, and the end of `up`).
pub fn print_env(layout: &Layout) {
    println!("export KUBECONFIG={}", layout.kubeconfig().display());
    println!("export {}={}", gateway::URL_ENV, gateway::url());
    println!("export ROLLOUT_PROMETHEUS_URL={}", prometheus::url());
}

fn read_state(layout: &Layout) -> anyhow::Result<ClusterState> {
    let path = layout.state_file();
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// `up`: start a cluster, or find it up, or heal it. A cluster that finished starting once (its
/// record exists) keeps its objects: processes that died are started again with the same flags
/// and data. Only what a killed `up` left half-made is cleaned away; wiping a cluster that holds
/// objects is `down`'s job alone.
pub async fn up(
    layout: &Layout,
    nodes: usize,
    version: &str,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    require_root()?;
    if nodes == 0 || nodes > 200 {
        bail!("--nodes must be between 1 and 200 (got {nodes})");
    }
    let recorded = read_state(layout).ok();
    if let Some(state) = &recorded {
        let running = state
            .kubernetes_version
            .as_deref()
            .unwrap_or("an older release");
        if running != version {
            bail!(
                "the devcluster in {} runs Kubernetes {running}, not {version}; `devcluster down` removes it (and every object in it), then `devcluster up --kubernetes {version}`",
                layout.root.display()
            );
        }
        if healthy_without_addons(layout).await {
            // The cluster serves. An add-on that is missing (a gateway or Prometheus, on a cluster
            // from before it was one, one that died, or gateway objects someone deleted) is
            // started; nothing that runs is restarted.
            let complete = healthy(layout).await;
            ensure_addons(layout).await?;
            if complete {
                println!("devcluster: already up ({}, Kubernetes {version}); run `devcluster down` first to start afresh", layout.root.display());
            }
            print_env(layout);
            return Ok(());
        }
        return heal(layout, state, nodes, bin_dir).await;
    }
    if layout.root.exists() || !hostnet::leftovers().is_empty() {
        eprintln!("devcluster: cleaning up what an earlier, unfinished `up` left behind");
        down(layout)?;
    }
    let t0 = Instant::now();
    let bins = Binaries {
        dir: provision(version)?,
    };
    let gateway_bins = gateway::provision()?;
    let t_provisioned = t0.elapsed();

    for d in [
        layout.root.clone(),
        layout.pids_dir(),
        layout.logs_dir(),
        layout.pods_dir(),
        layout.volumes_dir(),
    ] {
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let result = start(layout, nodes, &bins, &gateway_bins, bin_dir).await;
    if let Err(e) = result {
        eprintln!(
            "devcluster: up failed; cleaning up (logs kept in {})",
            layout.logs_dir().display()
        );
        let keep = std::env::temp_dir().join("rollout-devcluster-failed-logs");
        let _ = fs::remove_dir_all(&keep);
        let _ = Command::new("cp")
            .arg("-a")
            .arg(layout.logs_dir())
            .arg(&keep)
            .status();
        let _ = down(layout);
        return Err(e.context(format!(
            "devcluster up failed; logs copied to {}",
            keep.display()
        )));
    }
    let state = ClusterState {
        nodes,
        kube_bin_dir: bins.dir.clone(),
        started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        kubernetes_version: Some(version.to_string()),
    };
    fs::write(layout.state_file(), serde_json::to_string_pretty(&state)?)?;
    println!(
        "devcluster: up in {:.1}s (provision check {:.1}s) with {nodes} node(s), Kubernetes {version}",
        t0.elapsed().as_secs_f64(),
        t_provisioned.as_secs_f64()
    );
    print_env(layout);
    Ok(())
}

/// Starts the add-ons that do not run (the gateways, Prometheus) on a cluster that serves, and
/// puts back the gateway's objects; says what it started.
async fn ensure_addons(layout: &Layout) -> anyhow::Result<()> {
    let provisioned = gateway::provision()?;
    ensure_gateway(layout, &provisioned).await?;
    if let Some(g) = mirror::process::ensure_running(layout).await? {
        println!(
            "devcluster: started the mirror gateway on {}:{} (pid {})",
            mirror::ADDRESS,
            mirror::PORT,
            g.pid
        );
    }
    let client = layout::client(&layout.kubeconfig()).await?;
    if prometheus::ensure(layout, &client).await? {
        eprintln!("devcluster: Prometheus started at {}", prometheus::url());
    }
    Ok(())
}

/// Puts back the gateway's CRDs and objects and starts Traefik unless it runs; says when it
/// started it.
async fn ensure_gateway(
    layout: &Layout,
    provisioned: &gateway::Provisioned,
) -> anyhow::Result<gateway::Ensured> {
    let client = layout::client(&layout.kubeconfig()).await?;
    let ensured = gateway::ensure(layout, &client, provisioned)
        .await
        .context("starting the devcluster's gateway (Traefik)")?;
    if let gateway::Ensured::Started { pid, took } = ensured {
        eprintln!(
            "devcluster: gateway (Traefik) serving Gateway {}/{} at {} (pid {pid}, {:.1}s)",
            gateway::NAMESPACE,
            gateway::GATEWAY,
            gateway::url(),
            took.as_secs_f64()
        );
    }
    Ok(ensured)
}

/// Starts again, with the same flags and data, every control-plane process of a recorded cluster
/// that is no longer running, then the node agent and the gateway if they died; says which.
/// Objects, volumes, certificates and tokens are the cluster's own, untouched.
async fn heal(
    layout: &Layout,
    state: &ClusterState,
    nodes: usize,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    if nodes != state.nodes {
        eprintln!("devcluster: the cluster has {} node(s); keeping them (`devcluster down` first for {nodes})", state.nodes);
    }
    let bins = Binaries {
        dir: state.kube_bin_dir.clone(),
    };
    if !bins.dir.join("kube-apiserver").exists() {
        bail!(
            "the control-plane binaries of this cluster are gone from {}; `devcluster down`, then `devcluster up`",
            bins.dir.display()
        );
    }
    hostnet::ensure_bridge().context("creating the pod network bridge")?;
    let recorded = procs::recorded(&layout.pids_dir());
    let is_running = |name: &str| {
        recorded
            .iter()
            .any(|p| p.name == name && procs::alive(p.pid))
    };
    let gateway_down = !is_running(gateway::PROCESS);
    let http = controlplane::health_client(layout)?;
    let token = controlplane::admin_token(layout);
    let mut restarted = Vec::new();
    for c in controlplane::components(layout, &bins) {
        if is_running(c.name) {
            continue;
        }
        eprintln!(
            "devcluster: {} is not running; starting it again with the same flags and data",
            c.name
        );
        let (started, took) = controlplane::start_component(layout, &http, &c, token.as_deref())
            .await
            .with_context(|| {
                format!(
                    "restarting {}; `devcluster down` wipes the cluster if it cannot be healed",
                    c.name
                )
            })?;
        eprintln!(
            "devcluster: {} serving again (pid {}, {:.1}s)",
            c.name,
            started.pid,
            took.as_secs_f64()
        );
        restarted.push(c.name.to_string());
    }
    if !is_running("agent") {
        eprintln!(
            "devcluster: the node agent is not running; starting it again (its pods restart)"
        );
        let agent = spawn_agent(layout, state.nodes, bin_dir)?;
        let client = layout::client(&layout.kubeconfig()).await?;
        wait_agent_serving(layout, &client, agent.pid, state.nodes).await?;
        restarted.push("agent".into());
    }
    if mirror::process::ensure_running(layout).await?.is_some() {
        restarted.push(mirror::process::PROCESS.into());
    }
    let client = layout::client(&layout.kubeconfig()).await?;
    if prometheus::ensure(layout, &client).await? {
        restarted.push(prometheus::NAME.into());
    }
    if restarted.is_empty() && !gateway_down {
        // Every process runs but the API server did not answer a moment ago: say so rather than
        // restarting a process that may only be slow.
        bail!("every devcluster process is running but the API server does not answer; see `devcluster status` and {}", layout.logs_dir().display());
    }
    let provisioned = gateway::provision()?;
    if let gateway::Ensured::Started { .. } = ensure_gateway(layout, &provisioned).await? {
        restarted.push(gateway::PROCESS.into());
    }
    println!(
        "devcluster: healed in {:.1}s: restarted {}; every object kept",
        t0.elapsed().as_secs_f64(),
        restarted.join(", ")
    );
    print_env(layout);
    Ok(())
}

async fn start(
    layout: &Layout,
    nodes: usize,
    bins: &Binaries,
    gateway_bins: &gateway::Provisioned,
    bin_dir: &Path,
) -> anyhow::Result<()> {
    let step = |what: &str, since: Instant| {
        eprintln!("devcluster: {what} ({:.1}s)", since.elapsed().as_secs_f64())
    };
    let t = Instant::now();
    let tokens = controlplane::make_pki(layout)?;
    let admin_kc = controlplane::kubeconfig(layout, "admin", &tokens.admin)?;
    fs::write(layout.kubeconfig(), &admin_kc)?;
    let kcm_kc = layout.pki_dir().join("controller-manager.kubeconfig");
    fs::write(
        &kcm_kc,
        controlplane::kubeconfig(
            layout,
            "system:kube-controller-manager",
            &tokens.controller_manager,
        )?,
    )?;
    let sched_kc = layout.pki_dir().join("scheduler.kubeconfig");
    fs::write(
        &sched_kc,
        controlplane::kubeconfig(layout, "system:kube-scheduler", &tokens.scheduler)?,
    )?;
    let agent_kc = layout.pki_dir().join("agent.kubeconfig");
    fs::write(
        &agent_kc,
        controlplane::kubeconfig(layout, "devcluster-agent", &tokens.agent)?,
    )?;
    step("certificates and kubeconfigs written", t);

    hostnet::ensure_bridge().context("creating the pod network bridge")?;

    let http = controlplane::health_client(layout)?;
    for c in controlplane::components(layout, bins) {
        controlplane::start_component(layout, &http, &c, Some(&tokens.admin)).await?;
        step(&format!("{} serving", c.name), t);
    }

    let agent = spawn_agent(layout, nodes, bin_dir)?;
    let client = layout::client(&layout.kubeconfig()).await?;
    wait_agent_serving(layout, &client, agent.pid, nodes).await?;
    step(&format!("{nodes} node(s) Ready"), t);

    let sc: Api<StorageClass> = Api::all(client.clone());
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(sc, layout::STORAGE_CLASS, conditions::is_created()),
    )
    .await
    .context("the storage class did not appear within 60s")??;
    smoke_pod(&client).await?;
    step("a pod ran", t);
    ensure_gateway(layout, gateway_bins).await?;
    step("the gateway serves", t);
    mirror::process::ensure_running(layout).await?;
    step(
        &format!(
            "mirror gateway listening on {}:{}",
            mirror::ADDRESS,
            mirror::PORT
        ),
        t,
    );
    prometheus::ensure(layout, &client).await?;
    step(&format!("Prometheus ready at {}", prometheus::url()), t);
    Ok(())
}

/// Starts the node agent of this binary, tracked like the other processes.
fn spawn_agent(layout: &Layout, nodes: usize, bin_dir: &Path) -> anyhow::Result<procs::Started> {
    let me = std::env::current_exe().context("finding the devcluster binary")?;
    let agent_kc = layout.pki_dir().join("agent.kubeconfig");
    let agent_args = vec![
        "agent".to_string(),
        format!("--nodes={nodes}"),
        format!("--kubeconfig={}", agent_kc.display()),
        format!("--bin-dir={}", bin_dir.display()),
    ];
    let envs = [
        ("ROLLOUT_DEVCLUSTER_DIR", layout.root.display().to_string()),
        (
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        ),
    ];
    Ok(procs::spawn(
        &layout.pids_dir(),
        &layout.logs_dir(),
        "agent",
        &me,
        &agent_args,
        &envs,
    )?)
}

/// Waits for every node to be Ready, failing early (with the agent's log) if the agent exits.
async fn wait_agent_serving(
    layout: &Layout,
    client: &kube::Client,
    pid: i32,
    nodes: usize,
) -> anyhow::Result<()> {
    let ready = tokio::time::timeout(Duration::from_secs(120), wait_nodes_ready(client, nodes));
    tokio::select! {
        r = ready => r.context("nodes did not become Ready within 120s")??,
        _ = watch_alive(pid) => {
            let (log, tail) = controlplane::log_tail(layout, "agent", 30);
            bail!("the node agent exited; its log is {}:\n{tail}", log.display());
        }
    }
    Ok(())
}

/// Replaces the running node agent with this binary's, leaving the control plane, the Services,
/// volumes and every API object alone: for picking up a rebuilt agent without `down`. The old
/// agent stops its pods' processes as it exits; the new one starts them again (same pod objects,
/// same volumes, new containers), so tests running meanwhile see their pods restart.
pub async fn restart_agent(layout: &Layout) -> anyhow::Result<()> {
    require_root()?;
    if !healthy_control_plane(layout).await {
        bail!(
            "no devcluster control plane is running in {}; use `devcluster up`",
            layout.root.display()
        );
    }
    let state: ClusterState = serde_json::from_str(&fs::read_to_string(layout.state_file())?)
        .with_context(|| format!("reading {}", layout.state_file().display()))?;
    for p in procs::recorded(&layout.pids_dir())
        .into_iter()
        .filter(|p| p.name == "agent")
    {
        if procs::alive(p.pid) {
            eprintln!("devcluster: stopping the node agent (pid {})", p.pid);
            procs::stop(p.pid, Duration::from_secs(20));
        }
    }
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let agent = spawn_agent(layout, state.nodes, &bin_dir)?;
    let client = layout::client(&layout.kubeconfig()).await?;
    // Node Ready may still be True from the old agent; a few seconds alive is the real check.
    wait_agent_serving(layout, &client, agent.pid, state.nodes).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if !procs::alive(agent.pid) {
        let (log, tail) = controlplane::log_tail(layout, "agent", 30);
        bail!(
            "the new node agent exited; its log is {}:\n{tail}",
            log.display()
        );
    }
    eprintln!("devcluster: node agent restarted (pid {})", agent.pid);
    Ok(())
}

/// The API server answers and every recorded control-plane process is alive (the agent and the
/// gateway aside).
async fn healthy_control_plane(layout: &Layout) -> bool {
    if !layout.kubeconfig().exists() {
        return false;
    }
    let Ok(client) = layout::client(&layout.kubeconfig()).await else {
        return false;
    };
    client.apiserver_version().await.is_ok()
        && procs::recorded(&layout.pids_dir())
            .iter()
            .filter(|p| p.name != "agent" && !ADDONS.contains(&p.name.as_str()))
            .all(|p| procs::alive(p.pid))
}

async fn watch_alive(pid: i32) {
    while procs::alive(pid) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_nodes_ready(client: &kube::Client, want: usize) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let is_ready = |n: &Node| {
        n.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    };
    let stream = kube::runtime::watcher(nodes, Default::default()).default_backoff();
    let mut store = kube::runtime::reflector::store::Writer::<Node>::default();
    let reader = store.as_reader();
    let mut stream = std::pin::pin!(stream);
    while let Some(ev) = stream.try_next().await? {
        store.apply_watcher_event(&ev);
        if reader.state().iter().filter(|n| is_ready(n)).count() >= want {
            return Ok(());
        }
    }
    bail!("the node watch ended")
}

/// Proves the cluster runs pods: a pause pod scheduled, started by the agent, Ready, then gone.
async fn smoke_pod(client: &kube::Client) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "devcluster-smoke"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "pause", "image": "pause"}]}
    }))?;
    let _ = pods
        .delete("devcluster-smoke", &DeleteParams::default().grace_period(0))
        .await;
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(pods.clone(), "devcluster-smoke", conditions::is_deleted("")),
    )
    .await
    .ok();
    pods.create(&PostParams::default(), &pod)
        .await
        .context("creating the smoke-test pod")?;
    let ready = tokio::time::timeout(
        Duration::from_secs(90),
        await_condition(pods.clone(), "devcluster-smoke", is_pod_ready()),
    )
    .await;
    if ready.is_err() {
        let p = pods.get("devcluster-smoke").await.ok();
        bail!("the smoke-test pod kube-system/devcluster-smoke did not become Ready within 90s; it is {:?}", p.and_then(|p| p.status));
    }
    let uid = pods
        .get("devcluster-smoke")
        .await?
        .metadata
        .uid
        .unwrap_or_default();
    pods.delete("devcluster-smoke", &DeleteParams::default())
        .await?;
    tokio::time::timeout(
        Duration::from_secs(60),
        await_condition(pods, "devcluster-smoke", conditions::is_deleted(&uid)),
    )
    .await
    .context("the smoke-test pod was not removed within 60s")??;
    Ok(())
}

fn is_pod_ready() -> impl kube::runtime::wait::Condition<Pod> {
    |p: Option<&Pod>| {
        p.and_then(|p| p.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
    }
}

/// Stops everything `up` started and removes everything it made: processes (recorded or not),
/// network namespaces, veths, the bridge, mounts, created mount points and the state directory.
pub fn down(layout: &Layout) -> anyhow::Result<()> {
    require_root()?;
    for p in procs::recorded(&layout.pids_dir()) {
        if procs::alive(p.pid) {
            eprintln!("devcluster: stopping {} (pid {})", p.name, p.pid);
            procs::stop(
                p.pid,
                Duration::from_secs(if p.name == "agent" { 20 } else { 10 }),
            );
        }
    }
    for pid in procs::stragglers(&layout.root) {
        eprintln!("devcluster: stopping leftover process {pid}");
        procs::stop(pid, Duration::from_secs(3));
    }
    hostnet::teardown_all();
    unmount_under(&layout.root);
    remove_created_mountpoints(layout);
    if layout.root.exists() {
        fs::remove_dir_all(&layout.root)
            .with_context(|| format!("removing {}", layout.root.display()))?;
    }
    let left = hostnet::leftovers();
    if !left.is_empty() {
        bail!("devcluster down could not remove: {}", left.join(", "));
    }
    eprintln!("devcluster: down");
    Ok(())
}

fn unmount_under(root: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| Path::new(t).starts_with(root))
        .collect();
    // Deepest first.
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = Command::new("umount").arg("-l").arg(t).status();
    }
}

fn remove_created_mountpoints(layout: &Layout) {
    let list = fs::read_to_string(layout.created_mountpoints_file()).unwrap_or_default();
    let mut dirs: Vec<&str> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    dirs.dedup();
    for d in dirs {
        // Only empty ones: anything a user or an app put there stays. A file mount point
        // (a subPath of one file, a FileOrCreate hostPath) counts when it is empty.
        match fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => drop(fs::remove_dir(d)),
            Ok(m) if m.is_file() && m.len() == 0 => drop(fs::remove_file(d)),
            _ => {}
        }
    }
}

pub async fn status(layout: &Layout) -> anyhow::Result<bool> {
    let procs_list = procs::recorded(&layout.pids_dir());
    if procs_list.is_empty() {
        println!(
            "devcluster: down (nothing recorded in {})",
            layout.root.display()
        );
        return Ok(false);
    }
    let mut all_alive = true;
    for p in &procs_list {
        let alive = procs::alive(p.pid);
        all_alive &= alive;
        println!(
            "{:<26} pid {:<8} {}",
            p.name,
            p.pid,
            if alive { "running" } else { "NOT RUNNING" }
        );
    }
    let client = layout::client(&layout.kubeconfig()).await?;
    match client.apiserver_version().await {
        Ok(v) => println!(
            "api server {} at {}",
            v.git_version,
            controlplane::api_url()
        ),
        Err(e) => {
            println!("api server not answering: {e}");
            return Ok(false);
        }
    }
    let nodes: Api<Node> = Api::all(client.clone());
    for n in nodes.list(&ListParams::default()).await? {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into());
        println!(
            "node {:<12} Ready={ready}",
            n.metadata.name.unwrap_or_default()
        );
    }
    let pods: Api<Pod> = Api::all(client.clone());
    let count = pods.list(&ListParams::default()).await?.items.len();
    println!("pods: {count}");
    println!("{}", gateway::status_line(&client).await);
    if procs_list.iter().any(|p| p.name == prometheus::NAME) {
        println!("prometheus at {}", prometheus::url());
    }
    print_env(layout);
    Ok(all_alive)
}
