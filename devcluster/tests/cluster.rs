//! End to end against the running devcluster (`./scripts/test` brings it up): what a user of the
//! local cluster relies on. Each test works in a namespace of its own.

use std::time::Duration;

use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use kube::api::{DeleteParams, Patch, PatchParams};

const READY: Duration = Duration::from_secs(180);

#[tokio::test]
async fn time_app_serves_every_pod_through_its_node_port() -> anyhow::Result<()> {
    let ns = TestNs::new("serve").await?;
    ns.deploy_time_app(3).await?;
    testkit::wait_sts_ready(&ns, "time-app", 3, READY).await?;

    let svc = ns.api::<Service>().get("time-app").await?;
    let ingress = svc.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress).unwrap_or_default();
    assert_eq!(ingress.first().and_then(|i| i.ip.as_deref()), Some("127.0.0.1"), "LoadBalancer ingress");

    let port = testkit::node_port(&ns, "time-app").await?;
    let spread = testkit::spread(port, "/", 300).await;
    let want: Vec<String> = (0..3).map(|i| format!("time-app-{i}")).collect();
    assert_eq!(spread.keys().cloned().collect::<Vec<_>>(), want, "answers by pod: {spread:?}");
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
    let claim_before = ns.api::<PersistentVolumeClaim>().get("data-time-app-1").await?;
    let volume = claim_before.spec.and_then(|s| s.volume_name).expect("claim is bound");
    let old_uid = ns.api::<Pod>().get("time-app-1").await?.metadata.uid;

    ns.api::<Pod>().delete("time-app-1", &DeleteParams::default()).await?;
    testkit::wait_for(ns.api::<Pod>(), "time-app-1", READY, move |p: Option<&Pod>| {
        p.is_some_and(|p| p.metadata.uid != old_uid && testkit::pod_ready(p))
    })
    .await?;

    let after = testkit::visits(&ns, "time-app-1").await?;
    let claim_after = ns.api::<PersistentVolumeClaim>().get("data-time-app-1").await?;
    assert_eq!(claim_after.spec.and_then(|s| s.volume_name), Some(volume), "same volume");
    let (b, a) = (before["total"].as_u64().unwrap_or(0), after["total"].as_u64().unwrap_or(0));
    assert!(b > 0 && a >= b, "visits before {b}, after {a}");
    let old: Vec<_> = before["visits"].as_array().cloned().unwrap_or_default();
    let new: Vec<_> = after["visits"].as_array().cloned().unwrap_or_default();
    assert_eq!(&new[..old.len()], &old[..], "the earlier visits are still there, in order");
    assert_eq!(after["pod"], "time-app-1");
    assert_ne!(other["visits"], after["visits"], "each pod keeps its own visits");
    ns.cleanup().await;
    Ok(())
}

fn revision_of(p: &Pod) -> String {
    p.metadata.labels.as_ref().and_then(|l| l.get("controller-revision-hash")).cloned().unwrap_or_default()
}

async fn kubectl_rollout_status(ns: &TestNs) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new("kubectl")
        .args(["rollout", "status", "statefulset/time-app", "-n", &ns.name, "--timeout=120s"])
        .env("KUBECONFIG", devcluster::Layout::from_env().kubeconfig())
        .output()
        .await?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into()))
}

#[tokio::test]
async fn a_partition_update_by_hand_moves_exactly_the_ordinals_at_or_above_it() -> anyhow::Result<()> {
    let ns = TestNs::new("partition").await?;
    ns.deploy_time_app(3).await?;
    testkit::wait_sts_ready(&ns, "time-app", 3, READY).await?;
    let sts = ns.api::<StatefulSet>();

    let patch = serde_json::json!({"spec": {
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
        "template": {"spec": {"containers": [{"name": "app", "image": "time-app:v2"}]}}
    }});
    sts.patch("time-app", &PatchParams::default(), &Patch::Strategic(&patch)).await?;
    let done = testkit::wait_for(sts.clone(), "time-app", READY, |s: Option<&StatefulSet>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| st.updated_replicas == Some(1) && st.ready_replicas == Some(3))
    })
    .await?;
    let status = done.status.unwrap_or_default();
    let (update, current) = (status.update_revision.unwrap_or_default(), status.current_revision.unwrap_or_default());
    assert_ne!(update, current);
    for i in 0..3 {
        let name = format!("time-app-{i}");
        let pod = ns.api::<Pod>().get(&name).await?;
        let answer = testkit::get(&testkit::http(), &format!("http://{}:8080/", testkit::pod_ip(&ns, &name).await?)).await?;
        let (want_rev, want_version) = if i >= 2 { (&update, "v2") } else { (&current, "v1") };
        assert_eq!(&revision_of(&pod), want_rev, "{name} revision");
        assert_eq!(answer.version, want_version, "{name} version");
    }
    let (ok, out) = kubectl_rollout_status(&ns).await?;
    assert!(ok && out.contains("partitioned roll out complete"), "kubectl rollout status: {out}");

    sts.patch("time-app", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}}))).await?;
    testkit::wait_for(sts, "time-app", READY, |s: Option<&StatefulSet>| {
        s.and_then(|s| s.status.as_ref()).is_some_and(|st| st.updated_replicas == Some(3) && st.ready_replicas == Some(3) && st.current_revision == st.update_revision)
    })
    .await?;
    let port = testkit::node_port(&ns, "time-app").await?;
    let http = testkit::http();
    for _ in 0..30 {
        let a = testkit::get(&http, &format!("http://127.0.0.1:{port}/")).await?;
        assert_eq!(a.version, "v2", "{} still answers {}", a.pod, a.version);
    }
    let (ok, out) = kubectl_rollout_status(&ns).await?;
    assert!(ok && out.contains("roll out complete"), "kubectl rollout status: {out}");
    ns.cleanup().await;
    Ok(())
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status.as_ref()?.container_statuses.as_ref()?.first()?.state.as_ref()?.waiting.as_ref()?.reason.clone()
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
    assert!(matches!(waiting_reason(&pod).as_deref(), Some("ImagePullBackOff" | "ErrImagePull")), "{:?}", pod.status);
    ns.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_failing_readiness_probe_drops_the_pod_from_its_service() -> anyhow::Result<()> {
    let ns = TestNs::new("ready").await?;
    let flag = std::env::temp_dir().join(format!("devcluster-ready-{}", ns.name));
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
    testkit::wait_for(ns.api::<Pod>(), "probe", READY, |p: Option<&Pod>| p.is_some_and(|p| !testkit::pod_ready(p))).await?;
    wait_endpoints(&ns, "probe", vec![]).await?;

    std::fs::write(&flag, "")?;
    testkit::wait_for(ns.api::<Pod>(), "probe", READY, testkit::is_pod_ready()).await?;
    wait_endpoints(&ns, "probe", vec![ip]).await?;
    let _ = std::fs::remove_file(&flag);
    let _ = std::fs::remove_dir_all(format!("/tmp/{}-data", ns.name));
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
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "endpoints of {service}: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn restarts(p: &Pod) -> i32 {
    p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first()).map(|c| c.restart_count).unwrap_or(0)
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
    let pod = testkit::wait_for(ns.api::<Pod>(), "sick", READY, |p: Option<&Pod>| p.is_some_and(|p| restarts(p) >= 2)).await?;
    let status = pod.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next()).expect("a container status");
    let last = status.last_state.and_then(|s| s.terminated).expect("the restarted container's last state is terminated");
    assert!(last.finished_at.is_some(), "{last:?}");
    let _ = std::fs::remove_dir_all(format!("/tmp/{}-data", ns.name));
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
        p.is_some_and(|p| restarts(p) >= 1 && waiting_reason(p).as_deref() == Some("CrashLoopBackOff"))
    })
    .await?;
    let status = pod.status.and_then(|s| s.container_statuses).and_then(|c| c.into_iter().next()).expect("a container status");
    let last = status.last_state.and_then(|s| s.terminated).expect("last state terminated");
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
    let req = http::Request::get(format!("/api/v1/namespaces/{}/pods/time-app-0:8080/proxy/", ns.name)).body(Vec::new())?;
    let body = ns.client.request_text(req).await?;
    assert!(body.contains("Moscow time") && body.contains("time-app-0"), "{body}");
    ns.cleanup().await;
    Ok(())
}
