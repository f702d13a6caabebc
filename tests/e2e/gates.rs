//! The health gates against real pods: the HTTP gate straight to pod IPs and through the API
//! server's pod proxy, a bad release failing it by either route, and the minimum-Ready gate
//! waiting on a watch and failing when a pod leaves Ready.

use std::time::{Duration, Instant};

use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::core::v1::Pod;
use kube::api::DeleteParams;
use rollout::cluster::KubeCluster;
use rollout::gate::probe::{run_gates, PodTarget};
use rollout::gate::Verdict;
use rollout::model::duration::HumanDuration;
use rollout::model::gate::{GateSpec, HttpGate, PortRef, ProbeVia};

use crate::support::{pod_name, time_app_manifest, SETTLE, STS};

/// The seam the gates reach the API server through, in the test's namespace.
fn cluster(ns: &TestNs) -> KubeCluster {
    KubeCluster::new(ns.client.clone(), &ns.name)
}

/// A client made as `rollout` makes its own (the gates run on it).
async fn rollout_client() -> anyhow::Result<kube::Client> {
    let connection = rollout::exec::Connection {
        kubeconfig: Some(devcluster::Layout::from_env().kubeconfig()),
        context: None,
        namespace: None,
    };
    Ok(rollout::exec::connect(&connection).await?.0)
}

fn http_gate(via: ProbeVia, port: Option<PortRef>) -> GateSpec {
    GateSpec {
        http: HttpGate {
            via,
            port,
            window: HumanDuration::from_secs(2),
            interval: HumanDuration::from_millis(250),
            ..HttpGate::default()
        },
        ..GateSpec::default()
    }
}

async fn targets(ns: &TestNs, replicas: i32, port: &PortRef) -> anyhow::Result<Vec<PodTarget>> {
    let mut out = Vec::new();
    for i in 0..replicas {
        let pod = ns.api::<Pod>().get(&pod_name(i)).await?;
        out.push(PodTarget::from_pod(&pod, port)?);
    }
    Ok(out)
}

#[tokio::test]
async fn http_gate_probes_pods_directly_and_through_the_pod_proxy() -> anyhow::Result<()> {
    let ns = TestNs::new("gate-http").await?;
    let client = rollout_client().await?;
    ns.apply_yaml(&time_app_manifest(2, false, &[], "time-app:v1"))
        .await?;
    testkit::wait_sts_ready(&ns, STS, 2, SETTLE).await?;
    let http = PortRef::Name("http".into());
    let good = targets(&ns, 2, &http).await?;
    assert_eq!(good[0].port, 8080, "the named port resolves from the pod");

    for via in [ProbeVia::Auto, ProbeVia::Direct, ProbeVia::Proxy] {
        let verdict = run_gates(
            &KubeCluster::new(client.clone(), &ns.name),
            &http_gate(via, None),
            &good,
        )
        .await;
        assert!(verdict.is_pass(), "{via:?}: {}", verdict.message());
    }

    // Nothing listens on 9999: through the proxy that is a connection error (the API server's
    // own 503), not an answer from the pod.
    let closed: Vec<PodTarget> = good
        .iter()
        .map(|t| PodTarget {
            port: 9999,
            ..t.clone()
        })
        .collect();
    let spec = GateSpec {
        http: HttpGate {
            window: HumanDuration::from_secs(3),
            ..http_gate(ProbeVia::Proxy, None).http
        },
        ..GateSpec::default()
    };
    let verdict = run_gates(&KubeCluster::new(client.clone(), &ns.name), &spec, &closed).await;
    let message = verdict.message();
    assert!(matches!(verdict, Verdict::Fail { .. }), "{message}");
    assert!(
        message.contains("failed to connect beyond 4 errors in a row"),
        "{message}"
    );
    assert!(
        message.contains("pod proxy time-app-"),
        "the route is named: {message}"
    );
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_release_fails_the_http_gate_by_either_route() -> anyhow::Result<()> {
    let ns = TestNs::new("gate-fail").await?;
    // Every `/` answers 500; readiness is probed on `/healthz` here so the pods are Ready.
    let manifest = time_app_manifest(2, false, &[("FAIL_RATE", "1")], "time-app:v2")
        .replace("              path: /\n", "              path: /healthz\n");
    ns.apply_yaml(&manifest).await?;
    testkit::wait_sts_ready(&ns, STS, 2, SETTLE).await?;
    let bad = targets(&ns, 2, &PortRef::Number(8080)).await?;
    for (via, route) in [
        (ProbeVia::Direct, ":8080/"),
        (ProbeVia::Proxy, "pod proxy time-app-"),
    ] {
        let started = Instant::now();
        let spec = GateSpec {
            http: HttpGate {
                window: HumanDuration::from_secs(20),
                ..http_gate(via, None).http
            },
            ..GateSpec::default()
        };
        let verdict = run_gates(&cluster(&ns), &spec, &bad).await;
        let message = verdict.message();
        assert!(
            matches!(verdict, Verdict::Fail { .. }),
            "{via:?}: {message}"
        );
        assert!(
            message.contains("answered with a wrong status (last: 500)"),
            "{message}"
        );
        assert!(
            message.contains(route),
            "{via:?} names its route: {message}"
        );
        // The first 500 decides: no need to probe for the whole window.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{via:?} took {:?}",
            started.elapsed()
        );
    }
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn min_ready_gate_waits_on_the_pod_and_fails_when_it_leaves_ready() -> anyhow::Result<()> {
    let ns = TestNs::new("gate-ready").await?;
    ns.apply_yaml(&time_app_manifest(1, false, &[], "time-app:v1"))
        .await?;
    testkit::wait_sts_ready(&ns, STS, 1, SETTLE).await?;
    let target = targets(&ns, 1, &PortRef::Number(8080)).await?.remove(0);
    let since = target
        .ready_since
        .ok_or_else(|| anyhow::anyhow!("a Ready pod has a Ready time"))?;
    let ready_for = Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(since))?;

    let spec = |extra: Duration| GateSpec {
        http: HttpGate {
            enabled: false,
            ..HttpGate::default()
        },
        min_ready: Some(HumanDuration::from(ready_for + extra)),
        ..GateSpec::default()
    };
    let started = Instant::now();
    let verdict = run_gates(
        &cluster(&ns),
        &spec(Duration::from_secs(2)),
        std::slice::from_ref(&target),
    )
    .await;
    assert!(verdict.is_pass(), "{}", verdict.message());
    assert!(
        started.elapsed() >= Duration::from_millis(1_500),
        "it waited: {:?}",
        started.elapsed()
    );

    // Deleted half-way through a long wait: the gate fails as soon as the pod terminates.
    let api = ns.api::<Pod>();
    let deleter = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        api.delete(&target.pod, &DeleteParams::default()).await
    };
    let long = spec(Duration::from_secs(60));
    let started = Instant::now();
    let seam = cluster(&ns);
    let (verdict, deleted) = tokio::join!(
        run_gates(&seam, &long, std::slice::from_ref(&target)),
        deleter
    );
    deleted?;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        verdict.message(),
        format!(
            "minimum-Ready gate failed on pod {} (Ready for at least {}): the pod is not Ready",
            target.pod,
            HumanDuration::from(ready_for + Duration::from_secs(60))
        )
    );
    ns.cleanup().await;
    Ok(())
}
