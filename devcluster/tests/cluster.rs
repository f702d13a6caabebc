//! End to end against the running devcluster (`./scripts/test` brings it up): what a user of the
//! local cluster relies on. Each test works in a namespace of its own.

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Endpoints, PersistentVolume, PersistentVolumeClaim, Pod, Service,
};
use kube::api::{DeleteParams, Patch, PatchParams};

const READY: Duration = Duration::from_secs(180);

#[tokio::test]
async fn time_app_serves_every_pod_through_its_node_port() -> anyhow::Result<()> {
    let ns = TestNs::new("serve").await?;
    ns.deploy_time_app(3).await?;
    testkit::wait_sts_ready(&ns, "time-app", 3, READY).await?;

    let svc = ns.api::<Service>().get("time-app").await?;
    let ingress = svc
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .unwrap_or_default();
    assert_eq!(
        ingress.first().and_then(|i| i.ip.as_deref()),
        Some("127.0.0.1"),
        "LoadBalancer ingress"
    );

    let ips = pod_ips(&ns, &["time-app-0", "time-app-1", "time-app-2"]).await?;
    wait_endpoint_sets(&ns, "time-app", &ips, &[]).await?;
    let port = testkit::node_port(&ns, "time-app").await?;
    let spread = testkit::spread(port, "/", 300).await;
    let want: Vec<String> = (0..3).map(|i| format!("time-app-{i}")).collect();
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        want,
        "answers by pod: {spread:?}"
    );
    for (pod, n) in &spread {
        // A fair share of 300 over 3 is 100; a random pick stays well inside 50..150.
        assert!((50..=150).contains(n), "{pod} got {n} of 300: {spread:?}");
    }
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_pod_comes_back_with_its_claim_and_its_visits() -> anyhow::Result<()> {
    let ns = TestNs::new("revive").await?;
    ns.deploy_time_app(3).await?;
    testkit::wait_sts_ready(&ns, "time-app", 3, READY).await?;

    let before = testkit::visits(&ns, "time-app-1").await?;
    let other = testkit::visits(&ns, "time-app-0").await?;
    let claim_before = ns
        .api::<PersistentVolumeClaim>()
        .get("data-time-app-1")
        .await?;
    let volume = claim_before
        .spec
        .and_then(|s| s.volume_name)
        .expect("claim is bound");
    let old_uid = ns.api::<Pod>().get("time-app-1").await?.metadata.uid;

    ns.api::<Pod>()
        .delete("time-app-1", &DeleteParams::default())
        .await?;
    testkit::wait_for(
        ns.api::<Pod>(),
        "time-app-1",
        READY,
        move |p: Option<&Pod>| {
            p.is_some_and(|p| p.metadata.uid != old_uid && testkit::pod_ready(p))
        },
    )
    .await?;

    let after = testkit::visits(&ns, "time-app-1").await?;
    let claim_after = ns
        .api::<PersistentVolumeClaim>()
        .get("data-time-app-1")
        .await?;
    assert_eq!(
        claim_after.spec.and_then(|s| s.volume_name),
        Some(volume),
        "same volume"
    );
    let (b, a) = (
        before["total"].as_u64().unwrap_or(0),
        after["total"].as_u64().unwrap_or(0),
    );
    assert!(b > 0 && a >= b, "visits before {b}, after {a}");
    let old: Vec<_> = before["visits"].as_array().cloned().unwrap_or_default();
    let new: Vec<_> = after["visits"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        &new[..old.len()],
        &old[..],
        "the earlier visits are still there, in order"
    );
    assert_eq!(after["pod"], "time-app-1");
    assert_ne!(
        other["visits"], after["visits"],
        "each pod keeps its own visits"
    );
    ns.cleanup().await;
    Ok(())
}

fn revision_of(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("controller-revision-hash"))
        .cloned()
        .unwrap_or_default()
}

async fn kubectl_rollout_status(ns: &TestNs) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new("kubectl")
        .args([
            "rollout",
            "status",
            "statefulset/time-app",
            "-n",
            &ns.name,
            "--timeout=120s",
        ])
        .env("KUBECONFIG", devcluster::Layout::from_env().kubeconfig())
        .output()
        .await?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
    ))
}

#[tokio::test]
async fn a_partition_update_by_hand_moves_exactly_the_ordinals_at_or_above_it() -> anyhow::Result<()>
{
    let ns = TestNs::new("partition").await?;
    ns.deploy_time_app(3).await?;
    testkit::wait_sts_ready(&ns, "time-app", 3, READY).await?;
    let sts = ns.api::<StatefulSet>();

    let patch = serde_json::json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "app", "image": "time-app:v2"}]}}
    }});
    sts.patch(
        "time-app",
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await?;
    let done = testkit::wait_for(sts.clone(), "time-app", READY, |s: Option<&StatefulSet>| {
        s.and_then(|s| s.status.as_ref())
            .is_some_and(|st| st.updated_replicas == Some(1) && st.ready_replicas == Some(3))
    })
    .await?;
    let status = done.status.unwrap_or_default();
    let (update, current) = (
        status.update_revision.unwrap_or_default(),
        status.current_revision.unwrap_or_default(),
    );
    assert_ne!(update, current);
    for i in 0..3 {
        let name = format!("time-app-{i}");
        let pod = ns.api::<Pod>().get(&name).await?;
        let answer = testkit::get(
            &testkit::http(),
            &format!("http://{}:8080/", testkit::pod_ip(&ns, &name).await?),
        )
        .await?;
        let (want_rev, want_version) = if i >= 2 {
            (&update, "v2")
        } else {
            (&current, "v1")
        };
        assert_eq!(&revision_of(&pod), want_rev, "{name} revision");
        assert_eq!(answer.version, want_version, "{name} version");
    }
    let (ok, out) = kubectl_rollout_status(&ns).await?;
    assert!(
        ok && out.contains("partitioned roll out complete"),
        "kubectl rollout status: {out}"
    );

    sts.patch(
        "time-app",
        &PatchParams::default(),
        &Patch::Merge(
            serde_json::json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}),
        ),
    )
    .await?;
    testkit::wait_for(sts, "time-app", READY, |s: Option<&StatefulSet>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
            st.updated_replicas == Some(3)
                && st.ready_replicas == Some(3)
                && st.current_revision == st.update_revision
        })
    })
    .await?;
    let port = testkit::node_port(&ns, "time-app").await?;
    let http = testkit::http();
    for _ in 0..30 {
        let a = testkit::get(&http, &format!("http://127.0.0.1:{port}/")).await?;
        assert_eq!(a.version, "v2", "{} still answers {}", a.pod, a.version);
    }
    let (ok, out) = kubectl_rollout_status(&ns).await?;
    assert!(
        ok && out.contains("roll out complete"),
        "kubectl rollout status: {out}"
    );
    ns.cleanup().await;
    Ok(())
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test]
async fn an_unmapped_image_stays_in_image_pull_back_off() -> anyhow::Result<()> {
    let ns = TestNs::new("pull").await?;
    ns.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lost}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: app, image: 'example.org/nowhere/not-mapped:v9'}\n",
    )
    .await?;
    let pod = testkit::wait_for(ns.api::<Pod>(), "lost", READY, |p: Option<&Pod>| {
        p.and_then(waiting_reason).as_deref() == Some("ImagePullBackOff")
    })
    .await?;
    assert!(!testkit::pod_ready(&pod));
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    // It stays there: still backing off a little later, never running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pod = ns.api::<Pod>().get("lost").await?;
    assert!(
        matches!(
            waiting_reason(&pod).as_deref(),
            Some("ImagePullBackOff" | "ErrImagePull")
        ),
        "{:?}",
        pod.status
    );
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_readiness_probe_drops_the_pod_from_its_service() -> anyhow::Result<()> {
    let ns = TestNs::new("ready").await?;
    let flag = testkit::dir_shared_with_pods().join(format!("devcluster-ready-{}", ns.name));
    std::fs::write(&flag, "")?;
    ns.apply_yaml(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: probe}}\nspec:\n  selector: {{app: probe}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {{name: probe, labels: {{app: probe}}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: time-app:v1\n    env: [{{name: DATA_DIR, value: /tmp/{ns}-data}}]\n    \
         readinessProbe:\n      exec: {{command: [test, -e, {flag}]}}\n      periodSeconds: 1\n      failureThreshold: 1\n",
        ns = ns.name,
        flag = flag.display()
    ))
    .await?;
    let pod = testkit::wait_for(ns.api::<Pod>(), "probe", READY, testkit::is_pod_ready()).await?;
    let ip = pod.status.and_then(|s| s.pod_ip).unwrap_or_default();
    wait_endpoints(&ns, "probe", vec![ip.clone()]).await?;

    std::fs::remove_file(&flag)?;
    testkit::wait_for(ns.api::<Pod>(), "probe", READY, |p: Option<&Pod>| {
        p.is_some_and(|p| !testkit::pod_ready(p))
    })
    .await?;
    wait_endpoints(&ns, "probe", vec![]).await?;

    std::fs::write(&flag, "")?;
    testkit::wait_for(ns.api::<Pod>(), "probe", READY, testkit::is_pod_ready()).await?;
    wait_endpoints(&ns, "probe", vec![ip]).await?;
    let _ = std::fs::remove_file(&flag);
    ns.cleanup().await;
    Ok(())
}

/// Endpoints are written by the controller-manager a moment after the pod's condition changes.
async fn wait_endpoints(ns: &TestNs, service: &str, want: Vec<String>) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = testkit::ready_endpoints(ns, service).await?;
        if got == want {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "endpoints of {service}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map(|c| c.restart_count)
        .unwrap_or(0)
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_the_container() -> anyhow::Result<()> {
    let ns = TestNs::new("live").await?;
    ns.apply_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: sick}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: time-app:v1\n    \
         ports: [{{name: http, containerPort: 8080}}]\n    env: [{{name: FAIL_RATE, value: '1'}}, {{name: DATA_DIR, value: /tmp/{}-data}}]\n    \
         livenessProbe:\n      httpGet: {{path: /, port: http}}\n      periodSeconds: 1\n      failureThreshold: 2\n",
        ns.name
    ))
    .await?;
    let pod = testkit::wait_for(ns.api::<Pod>(), "sick", READY, |p: Option<&Pod>| {
        p.is_some_and(|p| restarts(p) >= 2)
    })
    .await?;
    let status = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .expect("a container status");
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .expect("the restarted container's last state is terminated");
    assert!(last.finished_at.is_some(), "{last:?}");
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_crashing_app_goes_into_crash_loop_back_off() -> anyhow::Result<()> {
    let ns = TestNs::new("crash").await?;
    ns.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: time-app:v1\n    env: [{name: CRASH_AT_START, value: '1'}]\n",
    )
    .await?;
    let pod = testkit::wait_for(ns.api::<Pod>(), "crash", READY, |p: Option<&Pod>| {
        p.is_some_and(|p| {
            restarts(p) >= 1 && waiting_reason(p).as_deref() == Some("CrashLoopBackOff")
        })
    })
    .await?;
    let status = pod
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|c| c.into_iter().next())
        .expect("a container status");
    let last = status
        .last_state
        .and_then(|s| s.terminated)
        .expect("last state terminated");
    assert_eq!(last.exit_code, 1);
    assert_eq!(last.reason.as_deref(), Some("Error"));
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn the_api_servers_pod_proxy_reaches_a_pod() -> anyhow::Result<()> {
    let ns = TestNs::new("proxy").await?;
    ns.deploy_time_app(1).await?;
    testkit::wait_sts_ready(&ns, "time-app", 1, READY).await?;
    let req = http::Request::get(format!(
        "/api/v1/namespaces/{}/pods/time-app-0:8080/proxy/",
        ns.name
    ))
    .body(Vec::new())?;
    let body = ns.client.request_text(req).await?;
    assert!(
        body.contains("Moscow time") && body.contains("time-app-0"),
        "{body}"
    );
    ns.cleanup().await;
    Ok(())
}

// ---- What rollout's blue/green, recreate and shadow strategies rely on ----

/// One GET through the API server's service proxy: `/api/v1/namespaces/NS/services/SERVICE/proxy/PATH`,
/// where SERVICE is `name:port`, `scheme:name:port`, ... (port by name or number).
async fn service_proxy_get(ns: &TestNs, service: &str, path: &str) -> anyhow::Result<String> {
    let uri = format!(
        "/api/v1/namespaces/{}/services/{service}/proxy/{}",
        ns.name,
        path.trim_start_matches('/')
    );
    let req = http::Request::get(&uri).body(Vec::new())?;
    Ok(ns.client.request_text(req).await?)
}

/// A claim of the default class; a clone of `source` when given.
fn claim(name: &str, source: Option<&str>) -> serde_json::Value {
    let mut c = serde_json::json!({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": "standard",
            "resources": {"requests": {"storage": "16Mi"}}
        }
    });
    if let Some(src) = source {
        c["spec"]["dataSource"] = serde_json::json!({"kind": "PersistentVolumeClaim", "name": src});
    }
    c
}

fn is_bound(c: &PersistentVolumeClaim) -> bool {
    c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound")
}

fn uid_of<K: kube::Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_default()
}

async fn pod_ips(ns: &TestNs, pods: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut ips = Vec::new();
    for p in pods {
        ips.push(testkit::pod_ip(ns, p).await?);
    }
    ips.sort();
    Ok(ips)
}

/// Waits until the Service's Endpoints list exactly `ready` as ready and `not_ready` as not ready,
/// and then its EndpointSlices too (what the node ports' proxy reads).
async fn wait_endpoint_sets(
    ns: &TestNs,
    service: &str,
    ready: &[String],
    not_ready: &[String],
) -> anyhow::Result<Endpoints> {
    let endpoints = endpoints_listing(ns, service, ready, not_ready).await?;
    testkit::wait_slice_sets(ns, service, ready, not_ready, Duration::from_secs(60)).await?;
    Ok(endpoints)
}

async fn endpoints_listing(
    ns: &TestNs,
    service: &str,
    ready: &[String],
    not_ready: &[String],
) -> anyhow::Result<Endpoints> {
    let (ready, not_ready) = (sorted(ready), sorted(not_ready));
    testkit::wait_for(
        ns.api::<Endpoints>(),
        service,
        Duration::from_secs(60),
        move |e: Option<&Endpoints>| {
            e.is_some_and(|e| {
                sorted(&testkit::ready_addresses(e)) == ready
                    && sorted(&testkit::not_ready_addresses(e)) == not_ready
            })
        },
    )
    .await
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn the_api_servers_service_proxy_reaches_the_ready_pods_of_a_cluster_ip_service(
) -> anyhow::Result<()> {
    let ns = TestNs::new("svcproxy").await?;
    ns.deploy_time_app(2).await?;
    ns.apply_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "plain"},
        "spec": {"selector": {"app": "time-app"}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}
    }))
    .await?;
    testkit::wait_sts_ready(&ns, "time-app", 2, READY).await?;
    let svc = ns.api::<Service>().get("plain").await?;
    assert_eq!(
        svc.spec.as_ref().and_then(|s| s.type_.as_deref()),
        Some("ClusterIP")
    );

    // The endpoints controller keeps the Service's Endpoints: each ready pod, pointing at its pod.
    let ips = pod_ips(&ns, &["time-app-0", "time-app-1"]).await?;
    let ep = wait_endpoint_sets(&ns, "plain", &ips, &[]).await?;
    let targets: BTreeSet<String> = ep
        .subsets
        .iter()
        .flatten()
        .flat_map(|s| s.addresses.iter().flatten())
        .filter_map(|a| {
            a.target_ref
                .as_ref()
                .filter(|t| t.kind.as_deref() == Some("Pod"))
                .and_then(|t| t.name.clone())
        })
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from(["time-app-0".to_string(), "time-app-1".to_string()])
    );

    // Every way of naming the port reaches a pod; within 90 requests both pods answer (the
    // proxy picks an endpoint at random; a pod whose probe timed out on a busy machine is left
    // out for a moment).
    let both = BTreeSet::from(["time-app-0".to_string(), "time-app-1".to_string()]);
    let mut seen = BTreeSet::new();
    for (i, form) in ["plain:web", "http:plain:80", "http:plain:web"]
        .iter()
        .cycle()
        .take(90)
        .enumerate()
    {
        let body = service_proxy_get(&ns, form, "").await?;
        assert!(body.contains("Moscow time"), "{form}: {body}");
        seen.insert(testkit::pod_in_body(&body).unwrap_or_default());
        if i >= 2 && seen == both {
            break;
        }
    }
    assert_eq!(
        seen,
        BTreeSet::from(["time-app-0".to_string(), "time-app-1".to_string()])
    );
    let visits: serde_json::Value =
        serde_json::from_str(&service_proxy_get(&ns, "plain:web", "visits").await?)?;
    assert!(visits["total"].as_u64().unwrap_or(0) > 0, "{visits}");

    // One pod fewer: the Endpoints follow, and so does the proxy.
    let gone_uid = uid_of(&ns.api::<Pod>().get("time-app-1").await?);
    let scale = serde_json::json!({"spec": {"replicas": 1}});
    ns.api::<StatefulSet>()
        .patch("time-app", &PatchParams::default(), &Patch::Merge(&scale))
        .await?;
    testkit::wait_gone(ns.api::<Pod>(), "time-app-1", &gone_uid, READY).await?;
    wait_endpoint_sets(
        &ns,
        "plain",
        &[testkit::pod_ip(&ns, "time-app-0").await?],
        &[],
    )
    .await?;
    for _ in 0..15 {
        let body = service_proxy_get(&ns, "http:plain:web", "").await?;
        assert_eq!(
            testkit::pod_in_body(&body).as_deref(),
            Some("time-app-0"),
            "{body}"
        );
    }
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_claim_cloned_from_a_running_pods_claim_is_adopted_by_a_new_set_with_that_data(
) -> anyhow::Result<()> {
    let ns = TestNs::new("clone").await?;
    ns.apply_value(testkit::time_app_set("blue", "time-app:v1", 1)?)
        .await?;
    testkit::wait_sts_ready(&ns, "blue", 1, READY).await?;
    let http = testkit::http();
    let blue_ip = testkit::pod_ip(&ns, "blue-0").await?;
    for _ in 0..5 {
        testkit::get(&http, &format!("http://{blue_ip}:8080/")).await?;
    }
    let before = testkit::visits(&ns, "blue-0").await?;
    let before: Vec<serde_json::Value> = before["visits"].as_array().cloned().unwrap_or_default();
    assert!(before.len() >= 5, "{before:?}");

    // blue-0 keeps running (its probes write a visit every 2 s) while its claim is cloned under
    // the name the green set's claim template will look for.
    ns.apply_value(claim("data-green-0", Some("data-blue-0")))
        .await?;
    let clone = testkit::wait_for(
        ns.api::<PersistentVolumeClaim>(),
        "data-green-0",
        READY,
        |c: Option<&PersistentVolumeClaim>| c.is_some_and(is_bound),
    )
    .await?;
    let (clone_uid, clone_volume) = (uid_of(&clone), clone.spec.and_then(|s| s.volume_name));
    assert_ne!(
        testkit::claim_dir(&ns, "data-green-0").await?,
        testkit::claim_dir(&ns, "data-blue-0").await?
    );

    ns.apply_value(testkit::time_app_set("green", "time-app:v2", 1)?)
        .await?;
    testkit::wait_sts_ready(&ns, "green", 1, READY).await?;
    let adopted = ns
        .api::<PersistentVolumeClaim>()
        .get("data-green-0")
        .await?;
    assert_eq!(
        uid_of(&adopted),
        clone_uid,
        "the set uses the claim made before it, not a new one"
    );
    assert_eq!(adopted.spec.and_then(|s| s.volume_name), clone_volume);
    let green_claims: Vec<String> = ns
        .api::<PersistentVolumeClaim>()
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .filter(|n| n.contains("green"))
        .collect();
    assert_eq!(green_claims, vec!["data-green-0".to_string()]);

    let green = testkit::visits(&ns, "green-0").await?;
    assert_eq!(green["pod"], "green-0");
    assert_eq!(green["version"], "v2");
    let copied: Vec<serde_json::Value> = green["visits"].as_array().cloned().unwrap_or_default();
    assert!(
        copied.len() >= before.len(),
        "green has {} visits, blue had {} before the clone",
        copied.len(),
        before.len()
    );
    assert_eq!(
        &copied[..before.len()],
        &before[..],
        "green starts with blue's visits, in order"
    );
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn deleting_a_statefulset_deletes_its_pods_and_keeps_their_claims() -> anyhow::Result<()> {
    let ns = TestNs::new("gc").await?;
    ns.deploy_time_app(2).await?;
    let sts = testkit::wait_sts_ready(&ns, "time-app", 2, READY).await?;
    let sts_uid = uid_of(&sts);
    let mut pods = Vec::new();
    for name in ["time-app-0", "time-app-1"] {
        let pod = ns.api::<Pod>().get(name).await?;
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .cloned();
        assert_eq!(
            owner.as_ref().map(|o| (o.kind.as_str(), o.uid.as_str())),
            Some(("StatefulSet", sts_uid.as_str())),
            "{name}"
        );
        pods.push((name, uid_of(&pod)));
    }

    // The default propagation (background): the set goes at once, the garbage collector takes
    // its pods after it.
    ns.api::<StatefulSet>()
        .delete("time-app", &DeleteParams::default())
        .await?;
    testkit::wait_gone(ns.api::<StatefulSet>(), "time-app", &sts_uid, READY).await?;
    for (name, uid) in &pods {
        testkit::wait_gone(ns.api::<Pod>(), name, uid, READY).await?;
    }
    for claim in ["data-time-app-0", "data-time-app-1"] {
        let c = ns.api::<PersistentVolumeClaim>().get(claim).await?;
        assert!(
            is_bound(&c) && c.metadata.deletion_timestamp.is_none(),
            "{claim}: {:?}",
            c.status
        );
    }
    ns.cleanup().await;
    Ok(())
}

/// A set whose pods note SIGTERM on their own volume (`/data/stopped`) before exiting, and are
/// Ready once the handler is in place.
const SIGNAL_NOTING_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: noter}
spec:
  serviceName: noter
  replicas: 2
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: noter}}
  template:
    metadata: {labels: {app: noter}}
    spec:
      terminationGracePeriodSeconds: 30
      containers:
      - name: sh
        image: busybox
        command: [sh, -c, "trap 'echo TERM >> /data/stopped; exit 0' TERM; echo up > /data/started; while true; do sleep 1; done"]
        readinessProbe:
          exec: {command: [test, -e, /data/started]}
          periodSeconds: 1
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: standard
      resources: {requests: {storage: 16Mi}}
"#;

#[tokio::test]
async fn scaling_a_statefulset_to_zero_stops_its_pods_gracefully_and_keeps_their_claims(
) -> anyhow::Result<()> {
    let ns = TestNs::new("scale0").await?;
    ns.apply_yaml(SIGNAL_NOTING_SET).await?;
    testkit::wait_sts_ready(&ns, "noter", 2, READY).await?;
    let claims = ["data-noter-0", "data-noter-1"];
    let mut before = Vec::new();
    for (i, c) in claims.iter().enumerate() {
        let pod = ns.api::<Pod>().get(&format!("noter-{i}")).await?;
        before.push((
            uid_of(&ns.api::<PersistentVolumeClaim>().get(c).await?),
            uid_of(&pod),
            testkit::claim_dir(&ns, c).await?,
        ));
    }

    let sts = ns.api::<StatefulSet>();
    sts.patch(
        "noter",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
    )
    .await?;
    for (i, (_, pod_uid, dir)) in before.iter().enumerate() {
        testkit::wait_gone(ns.api::<Pod>(), &format!("noter-{i}"), pod_uid, READY).await?;
        // Only a process that got SIGTERM and had time to handle it writes this.
        let stopped = std::fs::read_to_string(dir.join("stopped")).unwrap_or_default();
        assert_eq!(
            stopped,
            "TERM\n",
            "noter-{i} was not stopped with SIGTERM ({})",
            dir.display()
        );
    }
    for (c, (claim_uid, _, _)) in claims.iter().zip(&before) {
        let now = ns.api::<PersistentVolumeClaim>().get(c).await?;
        assert!(
            is_bound(&now)
                && now.metadata.deletion_timestamp.is_none()
                && &uid_of(&now) == claim_uid,
            "{c}"
        );
    }

    // Back to two (what the recreate strategy does next): the same claims, with their data.
    sts.patch(
        "noter",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})),
    )
    .await?;
    testkit::wait_sts_ready(&ns, "noter", 2, READY).await?;
    for (c, (claim_uid, _, dir)) in claims.iter().zip(&before) {
        assert_eq!(
            &uid_of(&ns.api::<PersistentVolumeClaim>().get(c).await?),
            claim_uid,
            "{c}"
        );
        assert_eq!(&testkit::claim_dir(&ns, c).await?, dir);
        assert_eq!(
            std::fs::read_to_string(dir.join("stopped")).unwrap_or_default(),
            "TERM\n"
        );
    }
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_deleted_claim_takes_its_volume_along_once_no_pod_uses_it() -> anyhow::Result<()> {
    let ns = TestNs::new("pvcdel").await?;
    let claims = ns.api::<PersistentVolumeClaim>();
    let volumes: kube::Api<PersistentVolume> = kube::Api::all(ns.client.clone());

    // A claim no pod uses: it goes at once, and its volume and data with it.
    ns.apply_value(claim("loose", None)).await?;
    let loose = testkit::wait_for(
        claims.clone(),
        "loose",
        READY,
        |c: Option<&PersistentVolumeClaim>| c.is_some_and(is_bound),
    )
    .await?;
    assert!(
        loose
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pvc-protection"),
        "{:?}",
        loose.metadata.finalizers
    );
    let pv_name = loose
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .unwrap_or_default();
    let pv = volumes.get(&pv_name).await?;
    assert_eq!(
        pv.spec
            .as_ref()
            .and_then(|s| s.persistent_volume_reclaim_policy.as_deref()),
        Some("Delete")
    );
    assert!(
        pv.metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pv-protection"),
        "{:?}",
        pv.metadata.finalizers
    );
    let dir = testkit::claim_dir(&ns, "loose").await?;
    std::fs::write(dir.join("kept?"), "no")?;
    claims.delete("loose", &DeleteParams::default()).await?;
    testkit::wait_gone(claims.clone(), "loose", &uid_of(&loose), READY).await?;
    testkit::wait_gone(volumes.clone(), &pv_name, &uid_of(&pv), READY).await?;
    assert!(!dir.exists(), "{} is still on the host", dir.display());

    // A claim a running pod uses: deleting it only marks it; it goes with the pod.
    ns.apply_value(claim("held", None)).await?;
    ns.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: holder}\nspec:\n  terminationGracePeriodSeconds: 1\n  \
         volumes: [{name: d, persistentVolumeClaim: {claimName: held}}]\n  containers:\n  \
         - {name: c, image: pause, volumeMounts: [{name: d, mountPath: /data}]}\n",
    )
    .await?;
    let holder =
        testkit::wait_for(ns.api::<Pod>(), "holder", READY, testkit::is_pod_ready()).await?;
    let held = claims.get("held").await?;
    let held_pv = volumes
        .get(
            held.spec
                .as_ref()
                .and_then(|s| s.volume_name.as_deref())
                .unwrap_or_default(),
        )
        .await?;
    let held_dir = testkit::claim_dir(&ns, "held").await?;
    claims.delete("held", &DeleteParams::default()).await?;
    testkit::wait_for(
        claims.clone(),
        "held",
        READY,
        |c: Option<&PersistentVolumeClaim>| {
            c.is_some_and(|c| c.metadata.deletion_timestamp.is_some())
        },
    )
    .await?;
    // Nothing to wait for on a watch here: the point is that nothing happens for a while.
    let early = testkit::wait_gone(
        claims.clone(),
        "held",
        &uid_of(&held),
        Duration::from_secs(5),
    )
    .await;
    assert!(early.is_err(), "the claim went while its pod still ran");
    let still = claims.get("held").await?;
    assert!(
        still
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == "kubernetes.io/pvc-protection"),
        "{:?}",
        still.metadata
    );
    assert!(is_bound(&still) && held_dir.exists());
    assert!(
        testkit::pod_ready(&ns.api::<Pod>().get("holder").await?),
        "the pod keeps running"
    );

    ns.api::<Pod>()
        .delete("holder", &DeleteParams::default())
        .await?;
    testkit::wait_gone(ns.api::<Pod>(), "holder", &uid_of(&holder), READY).await?;
    testkit::wait_gone(claims, "held", &uid_of(&held), READY).await?;
    let held_pv_name = held_pv.metadata.name.clone().unwrap_or_default();
    testkit::wait_gone(volumes, &held_pv_name, &uid_of(&held_pv), READY).await?;
    assert!(
        !held_dir.exists(),
        "{} is still on the host",
        held_dir.display()
    );
    ns.cleanup().await;
    Ok(())
}

/// One trial of a selector switch, as the client on 127.0.0.1 saw it.
#[derive(Debug)]
struct Switch {
    /// From the patch's answer to the first answer from a newly selected pod.
    delay: Duration,
    /// Answers from the old pods between the patch's answer and that first new one.
    old_answers: usize,
}

/// Patches the Service to select `to`, then asks through its node port (a new connection each
/// time) until a pod of `to` answers, and 30 times more to check that no old pod ever answers
/// again. At most 2000 requests or 30 s.
async fn switch_selector(
    ns: &TestNs,
    service: &str,
    port: u16,
    to: &str,
) -> anyhow::Result<Switch> {
    let http = testkit::http();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let patch = serde_json::json!({"spec": {"selector": {"app": to}}});
    ns.api::<Service>()
        .patch(service, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let start = tokio::time::Instant::now();
    let mut old_answers = 0;
    let mut delay = None;
    let mut after = 0;
    for _ in 0..2000 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "no pod of {to} answered within 30 s of the switch"
        );
        let a = match testkit::get(&http, &url).await {
            Ok(a) => a,
            Err(e) => anyhow::bail!("a request failed during the switch to {to}: {e:#}"),
        };
        let new = a.pod.starts_with(&format!("{to}-"));
        match (delay, new) {
            (None, true) => delay = Some(start.elapsed()),
            (None, false) => old_answers += 1,
            (Some(_), true) => after += 1,
            (Some(_), false) => anyhow::bail!("{} answered after {to} had taken over", a.pod),
        }
        if after == 30 {
            break;
        }
    }
    let delay = delay.context("no pod of the new selector answered")?;
    Ok(Switch { delay, old_answers })
}

fn percentile(sorted_ms: &[f64], p: f64) -> f64 {
    let i = ((sorted_ms.len() as f64 - 1.0) * p).round() as usize;
    sorted_ms.get(i).copied().unwrap_or(f64::NAN)
}

#[tokio::test]
async fn a_service_selector_switch_moves_node_port_traffic_to_the_new_pods_and_never_back(
) -> anyhow::Result<()> {
    let ns = TestNs::new("switch").await?;
    ns.apply_value(testkit::time_app_set("blue", "time-app:v1", 2)?)
        .await?;
    ns.apply_value(testkit::time_app_set("green", "time-app:v2", 2)?)
        .await?;
    ns.apply_value(testkit::service_for("front", "LoadBalancer", "blue"))
        .await?;
    testkit::wait_sts_ready(&ns, "blue", 2, READY).await?;
    testkit::wait_sts_ready(&ns, "green", 2, READY).await?;
    let blue = pod_ips(&ns, &["blue-0", "blue-1"]).await?;
    let green = pod_ips(&ns, &["green-0", "green-1"]).await?;
    wait_endpoint_sets(&ns, "front", &blue, &[]).await?;
    let port = testkit::node_port(&ns, "front").await?;
    let blues = vec!["blue-0".to_string(), "blue-1".to_string()];
    let spread = testkit::spread_until(port, "/healthz", &blues, 90).await;
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        blues,
        "{spread:?}"
    );

    let mut trials = Vec::new();
    for i in 0..20 {
        let (to, ips) = if i % 2 == 0 {
            ("green", &green)
        } else {
            ("blue", &blue)
        };
        let s = switch_selector(&ns, "front", port, to).await?;
        // The endpoints controller has written exactly the new set by now.
        wait_endpoint_sets(&ns, "front", ips, &[]).await?;
        trials.push(s);
    }
    let mut ms: Vec<f64> = trials
        .iter()
        .map(|t| t.delay.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let olds: Vec<usize> = trials.iter().map(|t| t.old_answers).collect();
    println!(
        "selector switch, {} trials: first answer from a new pod {:.1} ms median, {:.1} min, {:.1} p90, {:.1} max after the patch returned; \
         old-pod answers after the patch returned, per trial: {olds:?}",
        ms.len(),
        percentile(&ms, 0.5),
        percentile(&ms, 0.0),
        percentile(&ms, 0.9),
        percentile(&ms, 1.0),
    );
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_pod_that_stops_being_ready_leaves_the_endpoints_and_gets_no_new_connections(
) -> anyhow::Result<()> {
    let ns = TestNs::new("unready").await?;
    let flag = |pod: &str| {
        testkit::dir_shared_with_pods().join(format!("devcluster-{}-ready-{pod}", ns.name))
    };
    for p in ["web-0", "web-1"] {
        std::fs::write(flag(p), "")?;
    }
    let mut set = testkit::time_app_set("web", "time-app:v1", 2)?;
    // Ready while the pod's own flag file exists on the host.
    let probe = format!(
        "test -e {}/devcluster-{}-ready-$POD_NAME",
        testkit::dir_shared_with_pods().display(),
        ns.name
    );
    set["spec"]["template"]["spec"]["containers"][0]["readinessProbe"] = serde_json::json!({"exec": {"command": ["sh", "-c", probe]}, "periodSeconds": 1, "failureThreshold": 1});
    ns.apply_value(set).await?;
    ns.apply_value(testkit::service_for("web", "LoadBalancer", "web"))
        .await?;
    testkit::wait_sts_ready(&ns, "web", 2, READY).await?;
    let (ip0, ip1) = (
        testkit::pod_ip(&ns, "web-0").await?,
        testkit::pod_ip(&ns, "web-1").await?,
    );
    wait_endpoint_sets(&ns, "web", &[ip0.clone(), ip1.clone()], &[]).await?;
    let port = testkit::node_port(&ns, "web").await?;
    let both = vec!["web-0".to_string(), "web-1".to_string()];
    let spread = testkit::spread_until(port, "/healthz", &both, 90).await;
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        both,
        "{spread:?}"
    );

    std::fs::remove_file(flag("web-1"))?;
    testkit::wait_for(ns.api::<Pod>(), "web-1", READY, |p: Option<&Pod>| {
        p.is_some_and(|p| !testkit::pod_ready(p))
    })
    .await?;
    wait_endpoint_sets(
        &ns,
        "web",
        std::slice::from_ref(&ip0),
        std::slice::from_ref(&ip1),
    )
    .await?;
    let spread = testkit::spread(port, "/healthz", 60).await;
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        vec!["web-0".to_string()],
        "{spread:?}"
    );
    for _ in 0..15 {
        let body = service_proxy_get(&ns, "web:http", "").await?;
        assert_eq!(
            testkit::pod_in_body(&body).as_deref(),
            Some("web-0"),
            "{body}"
        );
    }
    assert_eq!(
        ns.api::<Pod>()
            .get("web-1")
            .await?
            .status
            .and_then(|s| s.phase)
            .as_deref(),
        Some("Running")
    );

    std::fs::write(flag("web-1"), "")?;
    testkit::wait_for(ns.api::<Pod>(), "web-1", READY, testkit::is_pod_ready()).await?;
    wait_endpoint_sets(&ns, "web", &[ip0, ip1], &[]).await?;
    let spread = testkit::spread_until(port, "/healthz", &both, 90).await;
    assert_eq!(
        spread.keys().cloned().collect::<Vec<_>>(),
        both,
        "{spread:?}"
    );
    for p in ["web-0", "web-1"] {
        let _ = std::fs::remove_file(flag(p));
    }
    ns.cleanup().await;
    Ok(())
}

/// Exec probes enter the container through its pid. Right after the start that pid is still
/// `pod-init` on the host, before it has entered the pod's namespaces and mounted its volumes;
/// a probe run then ran on the host, outside the pod's volumes (how a stray file can land on the
/// host). Many volumes make pod-init's setup long enough for that window to be hit.
#[tokio::test]
async fn exec_probes_run_inside_the_pods_mounts_from_the_very_first_one() -> anyhow::Result<()> {
    let ns = TestNs::new("execns").await?;
    let tmp = std::env::temp_dir();
    let mnt = tmp.join(format!("devcluster-{}-mnt", ns.name));
    let outside = tmp.join(format!("devcluster-{}-outside", ns.name));
    let last = mnt.join("v39");
    let check = format!(
        "grep -q ' {} ' /proc/self/mountinfo || {{ echo \"$(hostname)\" >> {}; exit 1; }}",
        last.display(),
        outside.display()
    );
    let pods: Vec<String> = (0..6).map(|i| format!("many-{i}")).collect();
    for name in &pods {
        let volumes: Vec<_> = (0..40)
            .map(|j| serde_json::json!({"name": format!("v{j}"), "emptyDir": {}}))
            .collect();
        let mounts: Vec<_> = (0..40)
            .map(|j| serde_json::json!({"name": format!("v{j}"), "mountPath": mnt.join(format!("v{j}")).display().to_string()}))
            .collect();
        ns.apply_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "volumes": volumes,
                "containers": [{
                    "name": "c", "image": "pause", "volumeMounts": mounts,
                    "readinessProbe": {"exec": {"command": ["sh", "-c", check]}, "periodSeconds": 1}
                }]
            }
        }))
        .await?;
    }
    let mut uids = Vec::new();
    for name in &pods {
        uids.push(uid_of(
            &testkit::wait_for(ns.api::<Pod>(), name, READY, testkit::is_pod_ready()).await?,
        ));
    }
    let seen = std::fs::read_to_string(&outside).unwrap_or_default();
    assert!(
        seen.is_empty(),
        "exec probes ran outside their pod's mounts, on: {seen:?}"
    );

    for (name, uid) in pods.iter().zip(&uids) {
        ns.api::<Pod>()
            .delete(name, &DeleteParams::default())
            .await?;
        testkit::wait_gone(ns.api::<Pod>(), name, uid, READY).await?;
    }
    // Only the empty mount points pod-init made on the host are left there.
    let _ = std::fs::remove_dir_all(&mnt);
    let _ = std::fs::remove_file(&outside);
    ns.cleanup().await;
    Ok(())
}

/// For a moment after a pod is gone (its network removed), the Endpoints may still list its
/// address; a connection through the node port that picks it must not hang until the kernel gives
/// up (~3 s of unanswered ARP) but be tried on another ready pod. Here the Endpoints of a
/// selector-less Service are written by hand: one real pod and one address in the pod network
/// that no pod holds.
#[tokio::test]
async fn a_stale_endpoint_address_costs_node_port_clients_a_retry_not_a_hang() -> anyhow::Result<()>
{
    let ns = TestNs::new("stale").await?;
    ns.apply_value(testkit::time_app_set("web", "time-app:v1", 1)?)
        .await?;
    testkit::wait_sts_ready(&ns, "web", 1, READY).await?;
    let live = testkit::pod_ip(&ns, "web-0").await?;
    anyhow::ensure!(
        live.starts_with("10.244."),
        "web-0 has IP {live}, outside the devcluster's pod network"
    );
    // Inside the pod network, and never handed to a pod: the devcluster allocates .2 to .254 of
    // each node's /24, so this address stays unanswered even while other tests run pods.
    let stale = "10.244.1.255";

    let endpoints: Endpoints = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "subsets": [{
            "addresses": [{"ip": live}, {"ip": stale}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }]
    }))?;
    ns.api::<Endpoints>()
        .create(&Default::default(), &endpoints)
        .await?;
    // No selector: the endpoints controller leaves the hand-written Endpoints alone.
    ns.apply_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .await?;
    // The proxy reports the ingress right after it has bound the node port.
    testkit::wait_for(ns.api::<Service>(), "web", READY, |s: Option<&Service>| {
        s.and_then(|s| {
            s.status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .first()?
                .ip
                .clone()
        })
        .as_deref()
            == Some("127.0.0.1")
    })
    .await?;
    let listed = testkit::ready_endpoints(&ns, "web").await?;
    assert_eq!(
        sorted(&listed),
        sorted(&[live.clone(), stale.to_string()]),
        "the Endpoints as written"
    );
    // The proxy reads EndpointSlices, which the mirroring controller writes from the Endpoints
    // a moment later; until its watch has them every connection is closed.
    testkit::wait_slice_sets(&ns, "web", &listed, &[], READY).await?;
    let port = testkit::node_port(&ns, "web").await?;

    let http = testkit::http();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let mut warmup = 0;
    while testkit::get(&http, &url).await.is_err() {
        warmup += 1;
        anyhow::ensure!(
            warmup < 100,
            "the node port never answered once its EndpointSlice listed {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ms = Vec::new();
    let mut failures = Vec::new();
    for _ in 0..40 {
        let start = tokio::time::Instant::now();
        let answer = testkit::get(&http, &url).await;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        match answer {
            Ok(a) if a.status == 200 && a.pod == "web-0" => {}
            Ok(a) => failures.push(format!("{} from {:?}", a.status, a.pod)),
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    let mut sorted_ms = ms.clone();
    sorted_ms.sort_by(f64::total_cmp);
    // A request whose first pick was the stale address waits for one connect timeout first.
    let retried = ms.iter().filter(|m| **m >= 250.0).count();
    println!(
        "40 requests through the node port, Endpoints = [{live}, {stale} (unanswered)]: {:.1} ms p50, {:.1} ms p90, \
         {:.1} ms max; {retried} took 250 ms or more (first pick was the stale address); failures: {}",
        percentile(&sorted_ms, 0.5),
        percentile(&sorted_ms, 0.9),
        percentile(&sorted_ms, 1.0),
        failures.len()
    );
    assert!(failures.is_empty(), "requests failed: {failures:?}");
    let max = percentile(&sorted_ms, 1.0);
    assert!(
        max < 2000.0,
        "slowest request took {max:.0} ms; the kernel's own give-up is ~3 s"
    );
    ns.cleanup().await;
    Ok(())
}

/// Each container has its own writable /tmp, /run and /var/log, as an image's layer gives it:
/// two pods writing the same pid file and log do not see each other's, nor leave them on the host.
#[tokio::test]
async fn each_pod_has_its_own_tmp_run_and_var_log() -> anyhow::Result<()> {
    let ns = TestNs::new("ownfs").await?;
    let marker = format!("devcluster-{}", ns.name);
    let mut files = vec![
        format!("/run/{marker}.pid"),
        format!("/var/log/{marker}.log"),
    ];
    // A checkout (its binaries, the runtime file) or a devcluster dir under /tmp keeps /tmp shared.
    let in_tmp = |p: &std::path::Path| p.starts_with("/tmp");
    if !in_tmp(testkit::repo_root()) && !in_tmp(&devcluster::Layout::from_env().root) {
        files.push(format!("/tmp/{marker}"));
    }
    let files = files.join(" ");
    // Ready once what it wrote reads back as its own: its name in /run, /var/log (and /tmp).
    let script = format!(
        "for f in {files}; do echo $POD_NAME > $f || exit 1; done; test -d /var/log/apt && exec sleep infinity"
    );
    let check = format!("for f in {files}; do grep -qx $POD_NAME $f || exit 1; done");
    for pod in ["a", "b"] {
        ns.apply_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod},
            "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{
                    "name": "app", "image": "busybox", "command": ["sh", "-c", script],
                    "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "readinessProbe": {"exec": {"command": ["sh", "-c", check]}, "periodSeconds": 1}
                }]
            }
        }))
        .await?;
    }
    for pod in ["a", "b"] {
        testkit::wait_for(ns.api::<Pod>(), pod, READY, testkit::is_pod_ready()).await?;
    }
    for host_path in files.split(' ') {
        assert!(
            !std::path::Path::new(host_path).exists(),
            "{host_path} landed on the host"
        );
    }
    ns.cleanup().await;
    Ok(())
}
