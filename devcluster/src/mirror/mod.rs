//! The devcluster's mirror gateway: a small Gateway API implementation of the subset rollout
//! uses, built into the devcluster because no gateway that implements `RequestMirror` can be
//! built here (the devcluster's Traefik gateway refuses that filter; envoy- and nginx-based
//! implementations need a data plane the package registries do not offer).
//!
//! It owns GatewayClass `devcluster-mirror` (controller `devcluster.rollout.dev/gateway`) and
//! Gateway `devcluster-gateway/devcluster-mirror`, one HTTP listener on 127.0.0.1:18081 that
//! takes HTTPRoutes from every namespace. For each route that names that Gateway it reports
//! `Accepted` and `ResolvedRefs` in `status.parents`, and serves it: hostnames, path
//! (Exact, PathPrefix) and header (Exact) matches, weighted `backendRefs` to Services, and
//! `RequestMirror` (`percent` / `fraction`). Anything else in a route is refused with
//! `Accepted: False, UnsupportedValue`, never silently ignored.
//!
//! `devcluster up` runs it as its own tracked process (`gateway-serve`, pid file and log named
//! [`process::PROCESS`]), beside the node agent rather than inside it: it can be started on a
//! running cluster without restarting the agent (and its pods), and a fault in it cannot take
//! pods down.

pub mod api;
pub mod process;
pub mod routing;
pub mod serve;
pub mod status;

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use self::api::HttpRoute;
use self::routing::{GatewayId, Table};

pub const CONTROLLER: &str = "devcluster.rollout.dev/gateway";
pub const CLASS: &str = "devcluster-mirror";
pub const NAMESPACE: &str = "devcluster-gateway";
pub const NAME: &str = "devcluster-mirror";
pub const LISTENER: &str = "http";
pub const ADDRESS: &str = "127.0.0.1";
pub const PORT: u16 = 18081;
const FIELD_MANAGER: &str = "devcluster-mirror-gateway";
/// The Gateway API CRDs it needs (standard channel); it waits for them when absent.
pub const CRDS: [&str; 3] = [
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
];
/// Delay before statuses that could not be written are tried again.
const RETRY: Duration = Duration::from_secs(5);

pub fn gateway_id() -> GatewayId {
    GatewayId {
        namespace: NAMESPACE.into(),
        name: NAME.into(),
        listener: LISTENER.into(),
        port: i32::from(PORT),
    }
}

/// An error and its causes on one line.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Serves on `listen` at once (404 for everything until routes are known), then waits for the
/// Gateway API CRDs, makes its GatewayClass and Gateway, and follows HTTPRoutes for ever.
pub async fn run(client: Client, listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("listening on {listen} for the mirror gateway (is another one running?)")
        })?;
    info!(%listen, "mirror gateway listening");
    let (endpoints, endpoints_writer) = reflector::store::<EndpointSlice>();
    tokio::spawn(
        watcher(
            Api::<EndpointSlice>::all(client.clone()),
            watcher::Config::default(),
        )
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
    let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
    let shared = Arc::new(serve::Shared::new(table_rx, endpoints)?);
    let control = async move {
        // The listener keeps serving the last table while the control side starts over.
        loop {
            if let Err(e) = control(client.clone(), &table_tx).await {
                warn!(error = %format!("{e:#}"), "mirror gateway control loop failed; starting it again in {}s", RETRY.as_secs());
            }
            tokio::time::sleep(RETRY).await;
        }
    };
    tokio::select! {
        r = serve::serve(listener, shared) => r.context("serving HTTP"),
        () = control => Ok(()),
    }
}

async fn control(client: Client, table: &watch::Sender<Arc<Table>>) -> anyhow::Result<()> {
    wait_for_crds(&client).await?;
    ensure_objects(&client).await?;
    let (routes, routes_writer) = reflector::store::<HttpRoute>();
    let mut route_events = pin!(watcher(
        Api::<HttpRoute>::all(client.clone()),
        watcher::Config::default()
    )
    .default_backoff()
    .reflect(routes_writer));
    let (services, services_writer) = reflector::store::<Service>();
    let mut service_events = pin!(watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default()
    )
    .default_backoff()
    .reflect(services_writer));
    let (mut routes_synced, mut services_synced) = (false, false);
    let mut state = Written::default();
    let mut needs_retry = false;
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = route_events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => routes_synced = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => { debug!(error = &e as &dyn std::error::Error, "routes watch hiccup"); continue; }
                None => anyhow::bail!("the HTTPRoute watch ended"),
            },
            ev = service_events.next() => match ev {
                Some(Ok(watcher::Event::InitDone)) => services_synced = true,
                Some(Ok(_)) => {}
                Some(Err(e)) => { debug!(error = &e as &dyn std::error::Error, "services watch hiccup"); continue; }
                None => anyhow::bail!("the Service watch ended"),
            },
            _ = retry.tick(), if needs_retry => {}
        }
        if routes_synced && services_synced {
            needs_retry = reconcile(&client, &routes, &services, table, &mut state).await;
        }
    }
}

async fn wait_for_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in CRDS {
        if crds.get_opt(name).await?.is_none() {
            info!(crd = name, "waiting for the Gateway API CRDs to be installed; every request gets 404 until then");
        }
        await_condition(crds.clone(), name, conditions::is_crd_established())
            .await
            .with_context(|| format!("waiting for CRD {name}"))?;
    }
    info!("Gateway API CRDs installed");
    Ok(())
}

/// Namespace, GatewayClass and Gateway, applied server-side as this gateway's own fields.
async fn ensure_objects(client: &Client) -> anyhow::Result<()> {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    Api::<Namespace>::all(client.clone())
        .patch(
            NAMESPACE,
            &apply,
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
            ),
        )
        .await
        .with_context(|| format!("applying namespace {NAMESPACE}"))?;
    let classes: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &api::resource("GatewayClass", "gatewayclasses"),
    );
    let class = classes
        .patch(CLASS, &apply, &Patch::Apply(json!({
            "apiVersion": format!("{}/{}", api::GROUP, api::VERSION), "kind": "GatewayClass",
            "metadata": {"name": CLASS},
            "spec": {"controllerName": CONTROLLER, "description": "devcluster: weighted backendRefs and RequestMirror"},
        })))
        .await
        .with_context(|| format!("applying GatewayClass {CLASS}"))?;
    let status = status::class_status(
        class.metadata.generation.unwrap_or(0),
        &class.data["status"],
        &now(),
    );
    if !status::same_but_time(&status, &class.data["status"]) {
        classes
            .patch_status(
                CLASS,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .with_context(|| format!("writing the status of GatewayClass {CLASS}"))?;
    }
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NAMESPACE,
        &api::resource("Gateway", "gateways"),
    );
    gateways
        .patch(NAME, &apply, &Patch::Apply(json!({
            "apiVersion": format!("{}/{}", api::GROUP, api::VERSION), "kind": "Gateway",
            "metadata": {"name": NAME, "namespace": NAMESPACE},
            "spec": {
                "gatewayClassName": CLASS,
                "listeners": [{"name": LISTENER, "protocol": "HTTP", "port": PORT, "allowedRoutes": {"namespaces": {"from": "All"}}}],
            },
        })))
        .await
        .with_context(|| format!("applying Gateway {NAMESPACE}/{NAME}"))?;
    info!(class = CLASS, gateway = %format!("{NAMESPACE}/{NAME}"), "GatewayClass and Gateway applied");
    Ok(())
}

/// What the last reconcile wrote to the Gateway.
#[derive(Default)]
struct Written {
    attached: Option<usize>,
}

/// Brings the routing table and the statuses in line with the routes and Services; true if a
/// write failed and is worth another try.
async fn reconcile(
    client: &Client,
    routes: &Store<HttpRoute>,
    services: &Store<Service>,
    table: &watch::Sender<Arc<Table>>,
    written: &mut Written,
) -> bool {
    let gw = gateway_id();
    let services = services.state();
    let index = routing::service_index(services.iter().map(|s| s.as_ref()));
    let routes = routes.state();
    let refs: Vec<&HttpRoute> = routes.iter().map(|r| r.as_ref()).collect();
    let (new_table, checks) = routing::build_table(&refs, &gw, &index);
    if **table.borrow() != new_table {
        info!(
            entries = new_table.entries.len(),
            routes = checks.len(),
            "routing table updated"
        );
        table.send_replace(Arc::new(new_table));
    }
    let now = now();
    let mut failed = false;
    for route in &refs {
        let id = format!(
            "{}/{}",
            route.namespace().unwrap_or_default(),
            route.name_any()
        );
        let route_checks = checks.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let Some(patch) = status::route_status_patch(route, route_checks, CONTROLLER, &now) else {
            continue;
        };
        let api: Api<HttpRoute> =
            Api::namespaced(client.clone(), &route.namespace().unwrap_or_default());
        match api
            .patch_status(
                &route.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => info!(route = %id, "route status written"),
            Err(kube::Error::Api(e)) if e.code == 404 => {
                debug!(route = %id, "route deleted meanwhile");
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                debug!(route = %id, "route changed meanwhile; its status is written from the newer one");
            }
            Err(e) => {
                warn!(route = %id, error = %chain(&e), "could not write the route's status; retrying in {}s", RETRY.as_secs());
                failed = true;
            }
        }
    }
    let attached = checks
        .values()
        .filter(|cs| cs.iter().any(|c| c.accepted.is_ok()))
        .count();
    if written.attached != Some(attached) {
        match write_gateway_status(client, attached, &now).await {
            Ok(()) => written.attached = Some(attached),
            Err(e) => {
                warn!(error = %format!("{e:#}"), "could not write the Gateway's status; retrying in {}s", RETRY.as_secs());
                failed = true;
            }
        }
    }
    failed
}

async fn write_gateway_status(client: &Client, attached: usize, now: &str) -> anyhow::Result<()> {
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        NAMESPACE,
        &api::resource("Gateway", "gateways"),
    );
    let gw = gateways
        .get(NAME)
        .await
        .with_context(|| format!("reading Gateway {NAMESPACE}/{NAME}"))?;
    let status = status::gateway_status(
        LISTENER,
        ADDRESS,
        attached,
        gw.metadata.generation.unwrap_or(0),
        &gw.data["status"],
        now,
    );
    if !status::same_but_time(&status, &gw.data["status"]) {
        gateways
            .patch_status(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
            .with_context(|| format!("writing the status of Gateway {NAMESPACE}/{NAME}"))?;
        info!(attached, "Gateway status written");
    }
    Ok(())
}
