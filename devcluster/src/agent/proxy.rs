//! The service proxy, playing kube-proxy for the devcluster: every TCP node port of a NodePort or
//! LoadBalancer Service is served on `127.0.0.1:<nodePort>`, and each connection goes to one ready
//! pod address of the Service's EndpointSlices, chosen at random when the connection arrives (so a
//! pod that stops being ready gets no new connections). A pod that does not accept within
//! [`CONNECT_TIMEOUT`] (gone while its slice still lists it for a moment) costs the client a
//! short delay, not the kernel's ~3 s: the connection is tried on another ready pod of the same
//! Service port, at most [`MAX_CONNECT_ATTEMPTS`] pods in all. LoadBalancer Services report
//! 127.0.0.1 as their ingress. Traffic only ever goes to pod addresses, never to ClusterIPs.
//!
//! Services and EndpointSlices (what kube-proxy reads; core/v1 Endpoints are deprecated since 1.33)
//! are followed with reflectors (watches), not polled.

pub mod routes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::routes::{Change, Route};
use super::AgentConfig;

/// How long one connect to a pod may take before another ready pod is tried. Pods sit on the
/// local bridge, where a live one answers a SYN in well under a millisecond; a pod whose network
/// is gone never answers, and the kernel would only give up after ~3 s of unanswered ARP.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Pods one client connection is tried on, each a different one: the first pick and up to two
/// retries. Bounded so that a Service whose Endpoints are all stale closes the client connection
/// within about a second instead of walking through every listed address.
pub const MAX_CONNECT_ATTEMPTS: usize = 3;
/// Open connections per node port; more are closed at once rather than exhausting file handles.
const MAX_CONNECTIONS_PER_PORT: usize = 512;
/// Delay before retrying a node port that could not be bound or a status that could not be set.
const RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("listening on 127.0.0.1:{port} for service {service}")]
    Bind {
        port: u16,
        service: String,
        #[source]
        source: std::io::Error,
    },
    #[error("setting the load balancer status of service {service}")]
    PatchStatus {
        service: String,
        #[source]
        source: kube::Error,
    },
    #[error("connecting to {backend} for service {service}")]
    Connect {
        backend: SocketAddr,
        service: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {backend} for service {service}: no answer within {}ms", CONNECT_TIMEOUT.as_millis())]
    ConnectTimeout {
        backend: SocketAddr,
        service: String,
    },
}

/// A running node-port listener.
struct Listener {
    route: Route,
    retarget: watch::Sender<Route>,
    task: JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Closing the listening socket; connections already forwarded carry on, as with kube-proxy.
        self.task.abort();
    }
}

pub async fn run(client: Client, _cfg: Arc<AgentConfig>) -> anyhow::Result<()> {
    let (endpoints, endpoints_writer) = reflector::store::<EndpointSlice>();
    let endpoints_api: Api<EndpointSlice> = Api::all(client.clone());
    tokio::spawn(
        watcher(endpoints_api, watcher::Config::default())
            .default_backoff()
            .reflect(endpoints_writer)
            .for_each(|ev| async move {
                if let Err(e) = ev {
                    debug!(
                        error = &e as &dyn std::error::Error,
                        "endpoint slices watch hiccup"
                    );
                }
            }),
    );

    let services_api: Api<Service> = Api::all(client.clone());
    let (services, services_writer) = reflector::store::<Service>();
    let mut events = pin!(watcher(services_api, watcher::Config::default())
        .default_backoff()
        .reflect(services_writer));

    let mut listeners: BTreeMap<u16, Listener> = BTreeMap::new();
    let mut synced = false;
    let mut needs_retry = false;
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => synced = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    debug!(error = &e as &dyn std::error::Error, "services watch hiccup");
                    continue;
                }
                None => return Ok(()),
            },
            _ = retry.tick(), if needs_retry => {}
        }
        // Until the first full list is in, the store may miss Services whose ports are in use.
        if synced {
            needs_retry = reconcile(&client, &services, &endpoints, &mut listeners).await;
        }
    }
}

/// Brings listeners and LoadBalancer statuses in line with the Services; true if something
/// failed and is worth another try.
async fn reconcile(
    client: &Client,
    services: &Store<Service>,
    endpoints: &Store<EndpointSlice>,
    listeners: &mut BTreeMap<u16, Listener>,
) -> bool {
    let all = services.state();
    let desired = routes::desired_routes(all.iter().map(|s| s.as_ref()));
    let current: BTreeMap<u16, Route> = listeners
        .iter()
        .map(|(p, l)| (*p, l.route.clone()))
        .collect();
    let mut failed = false;
    for change in routes::diff(&current, &desired) {
        match change {
            Change::Start(port, route) => match start(port, route.clone(), endpoints.clone()).await
            {
                Ok(l) => {
                    info!(port, service = %describe(&route), "serving node port on 127.0.0.1");
                    listeners.insert(port, l);
                }
                Err(e) => {
                    warn!(
                        error = &e as &dyn std::error::Error,
                        "node port not served; retrying in {}s",
                        RETRY.as_secs()
                    );
                    failed = true;
                }
            },
            Change::Stop(port) => {
                if let Some(l) = listeners.remove(&port) {
                    info!(port, service = %describe(&l.route), "closed node port");
                }
            }
            Change::Retarget(port, route) => {
                if let Some(l) = listeners.get_mut(&port) {
                    info!(port, service = %describe(&route), "node port now leads to another service port");
                    l.retarget.send_replace(route.clone());
                    l.route = route;
                }
            }
        }
    }
    for svc in &all {
        let Some(patch) = routes::load_balancer_patch(svc) else {
            continue;
        };
        let (ns, name) = (svc.namespace().unwrap_or_default(), svc.name_any());
        let api: Api<Service> = Api::namespaced(client.clone(), &ns);
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => info!(service = %format!("{ns}/{name}"), "load balancer status updated"),
            Err(source) => {
                let e = ProxyError::PatchStatus {
                    service: format!("{ns}/{name}"),
                    source,
                };
                warn!(
                    error = &e as &dyn std::error::Error,
                    "retrying in {}s",
                    RETRY.as_secs()
                );
                failed = true;
            }
        }
    }
    failed
}

fn describe(r: &Route) -> String {
    match r.port_name.as_str() {
        "" => format!("{}/{}:{}", r.namespace, r.service, r.port),
        name => format!("{}/{}:{} ({name})", r.namespace, r.service, r.port),
    }
}

async fn start(
    port: u16,
    route: Route,
    endpoints: Store<EndpointSlice>,
) -> Result<Listener, ProxyError> {
    let socket = TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|source| ProxyError::Bind {
            port,
            service: describe(&route),
            source,
        })?;
    let (retarget, targets) = watch::channel(route.clone());
    let task = tokio::spawn(serve(socket, port, targets, endpoints));
    Ok(Listener {
        route,
        retarget,
        task,
    })
}

async fn serve(
    socket: TcpListener,
    port: u16,
    targets: watch::Receiver<Route>,
    endpoints: Store<EndpointSlice>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS_PER_PORT));
    loop {
        let (conn, peer) = match socket.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Typically out of file handles: pause instead of spinning on the error.
                warn!(port, error = &e as &dyn std::error::Error, "accept failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(port, %peer, "too many open connections on this node port; closing the new one");
            continue;
        };
        let route = targets.borrow().clone();
        let endpoints = endpoints.clone();
        tokio::spawn(async move {
            let _slot = slot;
            forward(conn, port, route, &endpoints).await;
        });
    }
}

/// Sends one client connection to one ready pod, or closes it when none can be reached.
async fn forward(mut conn: TcpStream, port: u16, route: Route, endpoints: &Store<EndpointSlice>) {
    let Some((mut upstream, backend)) = connect_upstream(port, &route, endpoints).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = conn.set_nodelay(true);
    if let Err(e) = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await {
        debug!(port, %backend, error = &e as &dyn std::error::Error, "connection ended with an error");
    }
}

/// A connection to a ready pod of the route: a random one, and when it does not accept, another
/// one not tried yet, up to [`MAX_CONNECT_ATTEMPTS`]. `None` when no pod is ready or none of
/// those tried accepted.
async fn connect_upstream(
    port: u16,
    route: &Route,
    endpoints: &Store<EndpointSlice>,
) -> Option<(TcpStream, SocketAddr)> {
    let service = describe(route);
    let mut tried: Vec<SocketAddr> = Vec::with_capacity(MAX_CONNECT_ATTEMPTS);
    while tried.len() < MAX_CONNECT_ATTEMPTS {
        // Read afresh on every attempt: by a retry the slices may have dropped the pod that
        // failed, or gained one.
        let slices = endpoints.state();
        let of_service = slices
            .iter()
            .map(|s| s.as_ref())
            .filter(|s| routes::slice_of(s, &route.namespace, &route.service));
        let backends = routes::ready_backends(of_service, &route.port_name);
        if tried.is_empty() {
            for ip in &backends.refused {
                warn!(port, %service, address = %ip, "refusing to forward to an address outside the pod network");
            }
        }
        let Some(backend) = routes::pick_untried(&backends.ready, &tried, |n| fastrand::usize(..n))
        else {
            if tried.is_empty() {
                debug!(port, %service, "no ready endpoint; closing the connection");
            } else {
                info!(port, %service, ?tried, "no other ready endpoint to try; closing the client connection");
            }
            return None;
        };
        let failure = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await
        {
            Ok(Ok(upstream)) => return Some((upstream, backend)),
            Ok(Err(source)) => ProxyError::Connect {
                backend,
                service: service.clone(),
                source,
            },
            Err(_) => ProxyError::ConnectTimeout {
                backend,
                service: service.clone(),
            },
        };
        tried.push(backend);
        let next = if tried.len() < MAX_CONNECT_ATTEMPTS {
            "trying another ready endpoint"
        } else {
            "closing the client connection"
        };
        info!(
            port,
            attempt = tried.len(),
            error = &failure as &dyn std::error::Error,
            "{next}"
        );
    }
    None
}
