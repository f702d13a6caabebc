//! The kubelet part of the node agent: watches every pod, keeps those bound to one of the
//! agent's nodes, and runs one worker per pod uid ([`pod::worker`]) that runs the pod as local
//! processes. On SIGTERM/SIGINT it stops every pod's processes (bounded), then lets the signal
//! end the agent as it would have without being caught.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::AgentConfig;
use crate::net::Ipam;

#[path = "pod/mod.rs"]
pub mod pod;

pub use pod::sources;
use pod::worker::{self, Update};
use pod::Ctx;

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    #[error("could not find the devcluster binary (needed to start containers through pod-init)")]
    FindExe(#[source] std::io::Error),
    #[error("could not build the HTTP client for probes")]
    HttpClient(#[source] reqwest::Error),
    #[error("could not listen for the agent's stop signals")]
    Signals(#[source] std::io::Error),
    #[error("the pod watch ended")]
    WatchEnded,
}

/// How long the agent waits for its pods to stop on shutdown (each has at most 10 s grace).
const SHUTDOWN_WAIT: Duration = Duration::from_secs(15);

/// An error and its causes on one line, for messages users read.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn uid(p: &Pod) -> Option<&str> {
    p.metadata.uid.as_deref()
}

/// Pods this agent runs: bound to one of its nodes.
fn is_ours(p: &Pod, cfg: &AgentConfig) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_some_and(|n| cfg.nodes.contains(n))
}

struct Dispatcher {
    ctx: Arc<Ctx>,
    workers: HashMap<String, watch::Sender<Update>>,
    tasks: JoinSet<String>,
    /// Uids whose worker finished (the pod was deleted); late events must not start them again.
    finished: HashSet<String>,
    /// Uids listed since the watch (re)started, to find pods deleted while it was down.
    listing: Option<HashSet<String>>,
}

impl Dispatcher {
    fn apply(&mut self, p: Pod) {
        if !is_ours(&p, &self.ctx.cfg) {
            return;
        }
        let Some(id) = uid(&p).map(String::from) else {
            return;
        };
        if let Some(l) = self.listing.as_mut() {
            l.insert(id.clone());
        }
        let p = Arc::new(p);
        if let Some(tx) = self.workers.get(&id) {
            let _ = tx.send(Update::Pod(p));
            return;
        }
        if self.finished.contains(&id) {
            return;
        }
        tracing::info!(pod = ?p.metadata.name, namespace = ?p.metadata.namespace, node = ?p.spec.as_ref().and_then(|s| s.node_name.as_ref()), "running pod");
        let (tx, rx) = watch::channel(Update::Pod(p.clone()));
        self.workers.insert(id.clone(), tx);
        let ctx = self.ctx.clone();
        self.tasks.spawn(async move {
            worker::run(ctx, p, rx).await;
            id
        });
    }

    fn gone(&mut self, p: Pod) {
        let Some(id) = uid(&p).map(String::from) else {
            return;
        };
        self.finished.remove(&id);
        if let Some(tx) = self.workers.get(&id) {
            let _ = tx.send(Update::Gone(Arc::new(p)));
        }
    }

    fn handle(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Apply(p) => self.apply(p),
            Event::Delete(p) => self.gone(p),
            Event::Init => self.listing = Some(HashSet::new()),
            Event::InitApply(p) => self.apply(p),
            Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let vanished: Vec<String> = self
                    .workers
                    .keys()
                    .filter(|u| !listed.contains(*u))
                    .cloned()
                    .collect();
                for id in vanished {
                    if let Some(tx) = self.workers.get(&id) {
                        let last = match &*tx.borrow() {
                            Update::Pod(p) | Update::Gone(p) => Some(p.clone()),
                            Update::AgentStopping => None,
                        };
                        if let Some(p) = last {
                            let _ = tx.send(Update::Gone(p));
                        }
                    }
                }
                // Deleted uids not relisted will not come back.
                self.finished.retain(|u| listed.contains(u));
            }
        }
    }

    fn worker_done(&mut self, id: String) {
        self.workers.remove(&id);
        self.finished.insert(id);
    }

    async fn shutdown(mut self) {
        tracing::info!(
            pods = self.workers.len(),
            "agent stopping: stopping its pods"
        );
        for tx in self.workers.values() {
            let _ = tx.send(Update::AgentStopping);
        }
        let all_done = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(SHUTDOWN_WAIT, all_done).await.is_err() {
            tracing::warn!("some pods did not stop in time; `devcluster down` kills what is left");
        }
    }
}

pub async fn run(client: kube::Client, cfg: Arc<AgentConfig>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().map_err(PodsError::FindExe)?;
    let http = super::probe::http_client().map_err(PodsError::HttpClient)?;
    let mut term = signal(SignalKind::terminate()).map_err(PodsError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(PodsError::Signals)?;
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        cfg,
        ipam: Mutex::new(Ipam::default()),
        http,
        exe,
    });
    let mut d = Dispatcher {
        ctx,
        workers: HashMap::new(),
        tasks: JoinSet::new(),
        finished: HashSet::new(),
        listing: None,
    };
    let pods: Api<Pod> = Api::all(client);
    let mut stream =
        std::pin::pin!(watcher::watcher(pods, watcher::Config::default()).default_backoff());
    let stopped_by = loop {
        tokio::select! {
            ev = stream.next() => match ev {
                Some(Ok(ev)) => d.handle(ev),
                Some(Err(e)) => tracing::warn!(error = %error_chain(&e), "pod watch error; retrying"),
                None => {
                    d.shutdown().await;
                    return Err(PodsError::WatchEnded.into());
                }
            },
            Some(done) = d.tasks.join_next() => match done {
                Ok(id) => d.worker_done(id),
                Err(e) => tracing::error!(error = %e, "a pod worker panicked"),
            },
            _ = term.recv() => break libc::SIGTERM,
            _ = int.recv() => break libc::SIGINT,
        }
    };
    d.shutdown().await;
    end_by_signal(stopped_by);
    Ok(())
}

/// Catching the stop signal was only to stop the pods first; the rest of the agent (node
/// heartbeats, service proxy, provisioner) ends the way the signal asks, so `down` does not wait
/// for a process that no longer runs pods.
fn end_by_signal(sig: i32) {
    tracing::info!(signal = sig, "pods stopped; the agent exits");
    // SAFETY: restoring the default action and signalling ourselves; no memory is involved.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::kill(libc::getpid(), sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodSpec;

    #[test]
    fn only_pods_on_the_agents_nodes_are_ours() {
        let cfg = AgentConfig {
            layout: crate::Layout::new("/tmp/x"),
            nodes: vec!["node-1".into(), "node-2".into()],
            runtime_file: "/r".into(),
            bin_dir: "/b".into(),
            kubeconfig: "/k".into(),
        };
        let on = |n: Option<&str>| Pod {
            spec: Some(PodSpec {
                node_name: n.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_ours(&on(Some("node-2")), &cfg));
        assert!(!is_ours(&on(Some("node-9")), &cfg));
        assert!(!is_ours(&on(None), &cfg));
    }
}
