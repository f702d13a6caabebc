//! The service proxy's decisions as plain functions: which node ports need a listener and where
//! each leads (and how that differs from the listeners running), which backends of a Service's
//! EndpointSlices a connection may go to, and the LoadBalancer status to report. No I/O here.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::layout::{BRIDGE_IP, POD_NETWORK_PREFIX_LEN};

/// Where LoadBalancer Services are reachable: the proxy listens on loopback only.
pub const LOAD_BALANCER_IP: &str = "127.0.0.1";

/// Where connections to one node port go: a port of a Service, matched by its name against the
/// ports of the Service's EndpointSlices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub namespace: String,
    pub service: String,
    /// The Service port's name; empty for an unnamed (single) port, as in EndpointSlices.
    pub port_name: String,
    /// The Service port number, for logs.
    pub port: i32,
}

/// Every TCP node port of every NodePort or LoadBalancer Service, with its route. Should two
/// Services claim one node port (the API server prevents it), the first by namespace/name wins.
pub fn desired_routes<'a>(services: impl IntoIterator<Item = &'a Service>) -> BTreeMap<u16, Route> {
    let mut services: Vec<&Service> = services.into_iter().collect();
    services.sort_by_key(|s| (s.metadata.namespace.clone(), s.metadata.name.clone()));
    let mut routes = BTreeMap::new();
    for svc in services {
        let (Some(ns), Some(name), Some(spec)) =
            (&svc.metadata.namespace, &svc.metadata.name, &svc.spec)
        else {
            continue;
        };
        if !matches!(
            spec.type_.as_deref(),
            Some("NodePort") | Some("LoadBalancer")
        ) {
            continue;
        }
        for p in spec.ports.iter().flatten() {
            if p.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                continue;
            }
            let Some(node_port) = p
                .node_port
                .and_then(|n| u16::try_from(n).ok())
                .filter(|n| *n != 0)
            else {
                continue;
            };
            routes.entry(node_port).or_insert_with(|| Route {
                namespace: ns.clone(),
                service: name.clone(),
                port_name: p.name.clone().unwrap_or_default(),
                port: p.port,
            });
        }
    }
    routes
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Bind a listener on the port.
    Start(u16, Route),
    /// Close the port's listener.
    Stop(u16),
    /// Keep the listener; new connections go to the new route.
    Retarget(u16, Route),
}

/// How to get from the running listeners to the desired ones, in port order.
pub fn diff(current: &BTreeMap<u16, Route>, desired: &BTreeMap<u16, Route>) -> Vec<Change> {
    let stops = current
        .keys()
        .filter(|p| !desired.contains_key(p))
        .map(|p| Change::Stop(*p));
    let rest = desired
        .iter()
        .filter_map(|(port, route)| match current.get(port) {
            None => Some(Change::Start(*port, route.clone())),
            Some(r) if r != route => Some(Change::Retarget(*port, route.clone())),
            Some(_) => None,
        });
    stops.chain(rest).collect()
}

/// Whether `ip` is a pod address: inside the pod network and not the bridge (which is the host
/// itself). The proxy sends traffic nowhere else, ClusterIPs included.
pub fn in_pod_network(ip: IpAddr) -> bool {
    let IpAddr::V4(v4) = ip else { return false };
    let Ok(bridge) = BRIDGE_IP.parse::<Ipv4Addr>() else {
        return false;
    };
    let mask = u32::MAX
        .checked_shl(32 - u32::from(POD_NETWORK_PREFIX_LEN))
        .unwrap_or(0);
    (u32::from(v4) & mask) == (u32::from(bridge) & mask) && v4 != bridge
}

/// The backends one connection may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends {
    /// Ready pod addresses with the port that matches the route.
    pub ready: Vec<SocketAddr>,
    /// Ready addresses the proxy will not send to (outside the pod network, or unparsable).
    pub refused: Vec<String>,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Is `slice` one of the slices of Service `namespace/service`?
pub fn slice_of(slice: &EndpointSlice, namespace: &str, service: &str) -> bool {
    slice.metadata.namespace.as_deref() == Some(namespace)
        && slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .map(String::as_str)
            == Some(service)
}

/// The ready backends for the Service port named `port_name`, over all the Service's slices. Each
/// slice carries its own port numbers (a named target port may differ per pod), so the port is
/// resolved per slice. An endpoint counts when its `ready` condition is true or unset (unknown
/// means ready, as kube-proxy reads it); terminating and not-ready endpoints are never used. An
/// address listed by two slices (while the controller moves it) is one backend.
pub fn ready_backends<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: &str,
) -> Backends {
    let mut out = Backends::default();
    for slice in slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let port = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == port_name
                && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
        });
        let Some(port) = port
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        let ready = slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true));
        for addr in ready.flat_map(|e| e.addresses.iter()) {
            match addr.parse::<IpAddr>() {
                Ok(ip) if in_pod_network(ip) => {
                    let backend = SocketAddr::new(ip, port);
                    if !out.ready.contains(&backend) {
                        out.ready.push(backend);
                    }
                }
                _ => out.refused.push(addr.clone()),
            }
        }
    }
    out
}

/// The next backend for one connection: one of the `ready` ones not in `tried`, chosen by
/// `index(n)` (a uniform random index below `n` in the proxy, fixed in tests); `None` when every
/// ready backend has been tried or there is none. Excluding the tried ones is what makes a retry
/// worth it: a backend that just failed to connect (a pod gone while Endpoints still list it) is
/// the one most likely to fail again.
pub fn pick_untried(
    ready: &[SocketAddr],
    tried: &[SocketAddr],
    index: impl FnOnce(usize) -> usize,
) -> Option<SocketAddr> {
    let untried: Vec<SocketAddr> = ready
        .iter()
        .filter(|b| !tried.contains(b))
        .copied()
        .collect();
    if untried.is_empty() {
        return None;
    }
    untried.get(index(untried.len())).copied()
}

/// The status merge patch a Service needs, if any: LoadBalancer Services get the loopback address
/// as their ingress; a Service that stopped being a LoadBalancer loses the address we gave it.
pub fn load_balancer_patch(svc: &Service) -> Option<serde_json::Value> {
    let is_lb = svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer");
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    let ips: Vec<Option<&str>> = ingress
        .into_iter()
        .flatten()
        .map(|i| i.ip.as_deref())
        .collect();
    let ours = ips == [Some(LOAD_BALANCER_IP)];
    match (is_lb, ours) {
        (true, false) => Some(serde_json::json!({
            "status": { "loadBalancer": { "ingress": [ { "ip": LOAD_BALANCER_IP } ] } }
        })),
        (false, true) => {
            Some(serde_json::json!({ "status": { "loadBalancer": { "ingress": null } } }))
        }
        _ => None,
    }
}

#[cfg(test)]
// Table cases are tuples of inputs and expectations; naming each tuple type would not help.
#[allow(clippy::type_complexity)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServicePort, ServiceSpec, ServiceStatus,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn port(
        name: Option<&str>,
        port: i32,
        node_port: Option<i32>,
        protocol: Option<&str>,
    ) -> ServicePort {
        ServicePort {
            name: name.map(str::to_string),
            port,
            node_port,
            protocol: protocol.map(str::to_string),
            ..Default::default()
        }
    }

    fn service(ns: &str, name: &str, type_: &str, ports: Vec<ServicePort>) -> Service {
        Service {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some(type_.into()),
                ports: Some(ports),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn route(ns: &str, svc: &str, port_name: &str, port: i32) -> Route {
        Route {
            namespace: ns.into(),
            service: svc.into(),
            port_name: port_name.into(),
            port,
        }
    }

    #[test]
    fn which_ports_get_listeners() {
        let cases: Vec<(&str, Vec<Service>, Vec<(u16, Route)>)> = vec![
            (
                "cluster ip only",
                vec![service(
                    "d",
                    "a",
                    "ClusterIP",
                    vec![port(None, 80, None, None)],
                )],
                vec![],
            ),
            (
                "node port",
                vec![service(
                    "d",
                    "a",
                    "NodePort",
                    vec![port(None, 80, Some(30080), None)],
                )],
                vec![(30080, route("d", "a", "", 80))],
            ),
            (
                "load balancer, named ports, udp skipped",
                vec![service(
                    "d",
                    "web",
                    "LoadBalancer",
                    vec![
                        port(Some("http"), 80, Some(30001), Some("TCP")),
                        port(Some("dns"), 53, Some(30002), Some("UDP")),
                        port(Some("admin"), 9000, Some(30003), None),
                    ],
                )],
                vec![
                    (30001, route("d", "web", "http", 80)),
                    (30003, route("d", "web", "admin", 9000)),
                ],
            ),
            (
                "node port not allocated yet",
                vec![service(
                    "d",
                    "a",
                    "NodePort",
                    vec![
                        port(None, 80, None, None),
                        port(Some("x"), 81, Some(0), None),
                    ],
                )],
                vec![],
            ),
            (
                "external name",
                vec![service(
                    "d",
                    "a",
                    "ExternalName",
                    vec![port(None, 80, Some(30080), None)],
                )],
                vec![],
            ),
            (
                "duplicate node port: first by name wins",
                vec![
                    service(
                        "d",
                        "b",
                        "NodePort",
                        vec![port(None, 80, Some(30080), None)],
                    ),
                    service(
                        "d",
                        "a",
                        "NodePort",
                        vec![port(None, 81, Some(30080), None)],
                    ),
                ],
                vec![(30080, route("d", "a", "", 81))],
            ),
        ];
        for (what, services, want) in cases {
            let got: Vec<(u16, Route)> = desired_routes(&services).into_iter().collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn listener_diff() {
        let a = route("d", "a", "", 80);
        let b = route("d", "b", "", 80);
        let map = |v: &[(u16, &Route)]| {
            v.iter()
                .map(|(p, r)| (*p, (*r).clone()))
                .collect::<BTreeMap<_, _>>()
        };
        let cases = [
            ("nothing", map(&[]), map(&[]), vec![]),
            (
                "new service",
                map(&[]),
                map(&[(30001, &a)]),
                vec![Change::Start(30001, a.clone())],
            ),
            (
                "deleted service",
                map(&[(30001, &a)]),
                map(&[]),
                vec![Change::Stop(30001)],
            ),
            (
                "unchanged",
                map(&[(30001, &a)]),
                map(&[(30001, &a)]),
                vec![],
            ),
            (
                "port now leads elsewhere",
                map(&[(30001, &a)]),
                map(&[(30001, &b)]),
                vec![Change::Retarget(30001, b.clone())],
            ),
            (
                "node port moved",
                map(&[(30001, &a)]),
                map(&[(30002, &a)]),
                vec![Change::Stop(30001), Change::Start(30002, a.clone())],
            ),
        ];
        for (what, current, desired, want) in cases {
            assert_eq!(diff(&current, &desired), want, "{what}");
        }
    }

    #[test]
    fn pod_network_guard() {
        let cases = [
            ("pod", "10.244.1.5", true),
            ("pod on another node", "10.244.3.200", true),
            ("bridge is the host", "10.244.0.1", false),
            ("cluster ip", "10.96.0.10", false),
            ("loopback", "127.0.0.1", false),
            ("neighbour network", "10.245.0.5", false),
            ("public", "8.8.8.8", false),
            ("v6", "::1", false),
        ];
        for (what, ip, want) in cases {
            assert_eq!(in_pod_network(ip.parse().unwrap()), want, "{what}");
        }
    }

    /// A slice of `ports` with ready and not-ready endpoints (one address each).
    fn slice(ready: &[&str], not_ready: &[&str], ports: &[(Option<&str>, i32)]) -> EndpointSlice {
        let endpoint = |ip: &&str, r: bool| Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(r),
                ..Default::default()
            }),
            ..Default::default()
        };
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: ready
                .iter()
                .map(|ip| endpoint(ip, true))
                .chain(not_ready.iter().map(|ip| endpoint(ip, false)))
                .collect(),
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: n.map(str::to_string),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn backends_from_endpoint_slices() {
        let unknown = {
            let mut s = slice(&["10.244.1.2"], &[], &[(None, 8080)]);
            s.endpoints[0].conditions = None;
            s
        };
        let ipv6 = EndpointSlice {
            address_type: "IPv6".into(),
            ..slice(&["10.244.1.9"], &[], &[(None, 80)])
        };
        let cases: Vec<(&str, Vec<EndpointSlice>, &str, Vec<SocketAddr>, Vec<&str>)> = vec![
            ("no slices", vec![], "", vec![], vec![]),
            (
                "an empty slice",
                vec![EndpointSlice::default()],
                "",
                vec![],
                vec![],
            ),
            (
                "unnamed port, not-ready ignored",
                vec![slice(
                    &["10.244.1.2", "10.244.2.2"],
                    &["10.244.1.3"],
                    &[(None, 8080)],
                )],
                "",
                vec![sa("10.244.1.2:8080"), sa("10.244.2.2:8080")],
                vec![],
            ),
            (
                "only not-ready",
                vec![slice(&[], &["10.244.1.3"], &[(None, 8080)])],
                "",
                vec![],
                vec![],
            ),
            (
                "ready unknown counts as ready",
                vec![unknown],
                "",
                vec![sa("10.244.1.2:8080")],
                vec![],
            ),
            ("IPv6 slices are not ours", vec![ipv6], "", vec![], vec![]),
            (
                "named port matched per slice",
                vec![
                    slice(
                        &["10.244.1.2"],
                        &[],
                        &[(Some("http"), 8080), (Some("admin"), 9000)],
                    ),
                    slice(&["10.244.2.2"], &[], &[(Some("http"), 8081)]),
                ],
                "http",
                vec![sa("10.244.1.2:8080"), sa("10.244.2.2:8081")],
                vec![],
            ),
            (
                "an address in two slices is one backend",
                vec![
                    slice(&["10.244.1.2"], &[], &[(None, 80)]),
                    slice(&["10.244.1.2"], &[], &[(None, 80)]),
                ],
                "",
                vec![sa("10.244.1.2:80")],
                vec![],
            ),
            (
                "port name not present",
                vec![slice(&["10.244.1.2"], &[], &[(Some("admin"), 9000)])],
                "http",
                vec![],
                vec![],
            ),
            (
                "addresses outside the pod network refused",
                vec![slice(
                    &["10.244.1.2", "10.96.0.1", "192.168.1.1", "bogus"],
                    &[],
                    &[(None, 80)],
                )],
                "",
                vec![sa("10.244.1.2:80")],
                vec!["10.96.0.1", "192.168.1.1", "bogus"],
            ),
        ];
        for (what, slices, port_name, ready, refused) in cases {
            let b = ready_backends(&slices, port_name);
            assert_eq!(b.ready, ready, "{what}");
            assert_eq!(b.refused, refused, "{what}");
        }
    }

    #[test]
    fn slices_belong_to_their_service_by_label_and_namespace() {
        let mut s = slice(&[], &[], &[]);
        s.metadata.namespace = Some("ns".into());
        s.metadata.labels = Some([(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into());
        assert!(slice_of(&s, "ns", "web"));
        assert!(!slice_of(&s, "other", "web"));
        assert!(!slice_of(&s, "ns", "web-preview"));
    }

    #[test]
    fn picking_skips_tried_backends() {
        let (a, b, c) = (
            sa("10.244.1.2:80"),
            sa("10.244.2.2:80"),
            sa("10.244.3.2:80"),
        );
        // (what, ready, tried, index to take among the untried, expected)
        let cases: Vec<(
            &str,
            Vec<SocketAddr>,
            Vec<SocketAddr>,
            usize,
            Option<SocketAddr>,
        )> = vec![
            (
                "nothing ready: the connection is closed",
                vec![],
                vec![],
                0,
                None,
            ),
            ("first try, first backend", vec![a, b], vec![], 0, Some(a)),
            ("first try, last backend", vec![a, b], vec![], 1, Some(b)),
            (
                "retry goes to the one not tried",
                vec![a, b],
                vec![a],
                0,
                Some(b),
            ),
            (
                "retry goes to the one not tried, other order",
                vec![a, b],
                vec![b],
                0,
                Some(a),
            ),
            (
                "retry among the rest, by index",
                vec![a, b, c],
                vec![b],
                1,
                Some(c),
            ),
            (
                "second retry: only one left",
                vec![a, b, c],
                vec![c, a],
                0,
                Some(b),
            ),
            ("all tried: give up", vec![a, b], vec![a, b], 0, None),
            (
                "the only backend failed: no other to try",
                vec![a],
                vec![a],
                0,
                None,
            ),
            // Endpoints changed between attempts: a tried backend that left them does not count.
            (
                "tried one has left the endpoints",
                vec![b, c],
                vec![a],
                1,
                Some(c),
            ),
            (
                "an out-of-range index picks nothing rather than panicking",
                vec![a, b],
                vec![],
                7,
                None,
            ),
        ];
        for (what, ready, tried, i, want) in cases {
            let mut asked = None;
            let got = pick_untried(&ready, &tried, |n| {
                asked = Some(n);
                i
            });
            assert_eq!(got, want, "{what}");
            if let Some(n) = asked {
                let untried = ready.iter().filter(|r| !tried.contains(r)).count();
                assert_eq!(
                    n, untried,
                    "{what}: the index is drawn among the untried only"
                );
            }
        }
        // With the real random source, every untried backend gets picked sooner or later and a
        // tried one never does.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(pick_untried(&[a, b, c], &[b], |n| fastrand::usize(..n)));
        }
        assert_eq!(seen, std::collections::BTreeSet::from([Some(a), Some(c)]));
    }

    #[test]
    fn load_balancer_status() {
        let with_ingress = |type_: &str, ips: &[&str]| {
            let mut s = service("d", "web", type_, vec![]);
            s.status = Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: Some(
                        ips.iter()
                            .map(|ip| LoadBalancerIngress {
                                ip: Some(ip.to_string()),
                                ..Default::default()
                            })
                            .collect(),
                    ),
                }),
                ..Default::default()
            });
            s
        };
        let set =
            serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}});
        let clear = serde_json::json!({"status": {"loadBalancer": {"ingress": null}}});
        let cases = [
            (
                "new load balancer",
                service("d", "web", "LoadBalancer", vec![]),
                Some(set.clone()),
            ),
            (
                "already reported",
                with_ingress("LoadBalancer", &["127.0.0.1"]),
                None,
            ),
            (
                "someone else's address",
                with_ingress("LoadBalancer", &["10.0.0.1"]),
                Some(set.clone()),
            ),
            ("node port", service("d", "web", "NodePort", vec![]), None),
            (
                "no longer a load balancer",
                with_ingress("NodePort", &["127.0.0.1"]),
                Some(clear),
            ),
        ];
        for (what, svc, want) in cases {
            assert_eq!(load_balancer_patch(&svc), want, "{what}");
        }
    }
}
