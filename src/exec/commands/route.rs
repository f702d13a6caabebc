//! Before a rollout through a Gateway API HTTPRoute starts: the route is read and checked
//! (it exists in the set's namespace, the cluster serves the Gateway API, its gateways do not
//! reject it, one of its backends is the set's Service, the per-revision Service names are
//! free), and its rules as they are
//! now go into the record, to be written back exactly at the end or in a rollback.

use super::*;
use crate::exec::runner::revision_service_owned;
use crate::model::route::{
    revision_service_names, rules_fingerprint, HttpRoute, RouteRecord, GATEWAY_GROUP, INSTALL_CRDS,
};
use crate::strategy::route::{route_verdict, set_service, RouteService, RouteVerdict};
use crate::strategy::PlanError;

/// The route part of the record of a rollout with `config` on `sts`; `None` without
/// `--traffic gateway`. Bad input (exit 2) when the route cannot carry it.
pub(super) async fn route_for<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    config: &StrategyConfig,
    sts: &StatefulSet,
) -> Result<Option<RouteRecord>, ExecError> {
    let Some(traffic) = config.traffic.as_ref() else {
        return Ok(None);
    };
    let namespace = ctx.cluster.namespace().to_string();
    if let Some(given) = traffic.namespace.as_deref().filter(|ns| *ns != namespace) {
        return Err(ExecError::Plan(PlanError::RouteOtherNamespace {
            given: format!("{given}/{}", traffic.route),
            namespace,
        }));
    }
    let name = sts.metadata.name.clone().unwrap_or_default();
    let route = match ctx.cluster.get::<HttpRoute>(&traffic.route).await {
        Ok(Some(route)) => route,
        Ok(None) | Err(ApiError::NotFound) => {
            // A missing route, or no HTTPRoute resource at all: a list tells them apart.
            return Err(ExecError::Plan(
                match ctx.cluster.list::<HttpRoute>(&Select::all()).await {
                    Err(ApiError::NotFound) => PlanError::NoGatewayApi {
                        group: GATEWAY_GROUP,
                        install: INSTALL_CRDS,
                    },
                    _ => PlanError::RouteNotFound {
                        route: traffic.route.clone(),
                        namespace,
                    },
                },
            ));
        }
        Err(e) => return Err(ExecError::api("reading HTTPRoute", &traffic.route, e)),
    };
    if config.kind() == crate::model::strategy::StrategyKind::Shadow {
        check_mirror_support(ctx, &route, traffic.mirror_percent).await?;
    }
    let services = ctx
        .cluster
        .list::<Service>(&Select::all())
        .await
        .map_err(|e| ExecError::api("listing Services in namespace", &namespace, e))?;
    let pod_labels = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let observed: Vec<RouteService> = services
        .iter()
        .filter(|s| !revision_service_owned(&s.metadata, &name))
        .map(|s| RouteService {
            name: s.metadata.name.clone().unwrap_or_default(),
            selector: s
                .spec
                .as_ref()
                .and_then(|x| x.selector.clone())
                .unwrap_or_default(),
            headless: s.spec.as_ref().and_then(|x| x.cluster_ip.as_deref()) == Some("None"),
        })
        .collect();
    let service = set_service(
        &name,
        &traffic.route,
        &route.spec,
        &namespace,
        &observed,
        &pod_labels,
    )?;
    let (stable_service, canary_service) = revision_service_names(&name);
    // Only a canary makes the per-revision Services.
    let makes_services = config.kind() == crate::model::strategy::StrategyKind::Canary;
    for taken in [&stable_service, &canary_service]
        .into_iter()
        .filter(|_| makes_services)
    {
        let foreign = services.iter().any(|s| {
            s.metadata.name.as_deref() == Some(taken.as_str())
                && !revision_service_owned(&s.metadata, &name)
        });
        if foreign {
            return Err(ExecError::Plan(PlanError::RevisionServiceTaken {
                statefulset: name.clone(),
                service: taken.clone(),
            }));
        }
    }
    // Last, once the route is known to fit the set: a route its gateways reject already. The
    // first write would be rejected too, after the pods began to move. A route they have not
    // judged yet (just made) goes on; each write waits for their verdict.
    if let RouteVerdict::Rejected(words) =
        route_verdict(&route, route.metadata.generation.unwrap_or(0))
    {
        return Err(ExecError::Plan(PlanError::RouteRejected {
            route: traffic.route.clone(),
            words,
        }));
    }
    let original_rules = route
        .spec
        .get("rules")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    Ok(Some(RouteRecord {
        route: traffic.route.clone(),
        service,
        stable_service,
        canary_service,
        rules_written: Some(rules_fingerprint(&original_rules)),
        original_rules,
        canary_revision: None,
        canary_header: traffic.canary_header.clone(),
    }))
}

/// A shadow's mirror needs gateways that implement `RequestMirror`: a gateway that does not
/// may still accept the route and answer every request with an error. Each parent Gateway's
/// GatewayClass that lists its features (`status.supportedFeatures`) must list the mirror's;
/// refused (exit 2, nothing written) otherwise. A class that lists nothing is left to its
/// gateway's verdict on the route.
async fn check_mirror_support<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    route: &HttpRoute,
    percent: Option<crate::model::weight::Percent>,
) -> Result<(), ExecError> {
    let own = ctx.cluster.namespace().to_string();
    let route_name = route.metadata.name.clone().unwrap_or_default();
    let api = format!("/apis/{GATEWAY_GROUP}/v1");
    for (namespace, gateway) in crate::strategy::route::parent_gateways(&route.spec, &own) {
        let collection = format!("{api}/namespaces/{namespace}/gateways");
        let Some(found) =
            readable(ctx, &collection, &gateway, ("Gateway", "reading Gateway")).await?
        else {
            continue;
        };
        let Some(class) = found
            .pointer("/spec/gatewayClassName")
            .and_then(serde_json::Value::as_str)
        else {
            continue;
        };
        let classes = format!("{api}/gatewayclasses");
        let Some(class_object) = readable(
            ctx,
            &classes,
            class,
            ("GatewayClass", "reading GatewayClass"),
        )
        .await?
        else {
            continue;
        };
        if let Some(feature) =
            crate::strategy::route::missing_mirror_feature(class_object.get("status"), percent)
        {
            return Err(ExecError::Plan(PlanError::MirrorUnsupported {
                route: route_name,
                gateway: format!("{namespace}/{gateway}"),
                class: class.to_string(),
                feature,
            }));
        }
    }
    Ok(())
}

/// A Gateway or GatewayClass for the mirror check; `None` when it does not exist or this
/// identity may not read it (a namespaced Role cannot grant GatewayClasses): the check is then
/// left to the gateway's verdict on the route, and the user is told.
async fn readable<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    collection: &str,
    name: &str,
    (kind, reading): (&str, &'static str),
) -> Result<Option<serde_json::Value>, ExecError> {
    match ctx.cluster.get_at(collection, name).await {
        Ok(found) => Ok(found),
        Err(ApiError::Refused { code: 403, .. }) => {
            ctx.progress.say(format!(
                "note: {kind} {name} cannot be read (forbidden), so whether it supports RequestMirror is left to its verdict on the route; `get` on gateways and gatewayclasses lets rollout check before it writes"
            ));
            Ok(None)
        }
        Err(e) => Err(ExecError::api(reading, name, e)),
    }
}
