//! The shadow strategy on the time app: a second set on the new version that no live Service
//! selects, fed replayed requests beside stable and compared with it. A bad shadow is caught and
//! removed with its volumes; a good one is promoted into a rolling update of the real set; a
//! shadow nobody promotes is removed and leaves the real set as it was (`--keep-data` keeps its
//! volume); promote is refused while the comparison has too few answers, and a comparison that
//! still has too few at the end of its duration removes the shadow and exits 5. Throughout, live
//! traffic through the Service only ever reaches the real pods, and the shadow's own visits
//! account for nothing but the replayed requests.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Endpoints, PersistentVolumeClaim, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use rollout::model::exit::ExitCode;
use rollout::model::state::ANNOTATION_KEY;

use crate::strategies::phase;
use crate::support::{
    pod_data, pod_name, rollout_command, time_app_manifest, App, Run, RUN_LIMIT, SETTLE, STS,
};

pub(crate) const SHADOW: &str = "time-app-shadow";
pub(crate) const SHADOW_POD: &str = "time-app-shadow-0";
const SHADOW_CLAIM: &str = "data-time-app-shadow-0";
/// Longest a test waits for the shadow's objects to go once the run said they are removed
/// (a claim's protection finalizer lets go shortly after its pod is gone).
const GONE: Duration = Duration::from_secs(60);

/// The time app with its kubelet probes on `/healthz`, so that only requests to `/` are
/// visits: what a pod's volume holds is then exactly the requests it answered. Each pod gets
/// one visit first, so there is data to keep.
pub(crate) async fn deploy_quiet(prefix: &str, replicas: i32) -> anyhow::Result<App> {
    let ns = TestNs::new(prefix).await?;
    let manifest = time_app_manifest(replicas, false, &[], "time-app:v1")
        .replace("              path: /\n", "              path: /healthz\n");
    ensure!(
        !manifest.contains("path: /\n"),
        "the manifest still probes /"
    );
    ns.apply_yaml(&manifest).await?;
    testkit::wait_sts_ready(&ns, STS, replicas, SETTLE).await?;
    let http = testkit::http();
    for i in 0..replicas {
        let pod = pod_name(i);
        let ip = testkit::pod_ip(&ns, &pod).await?;
        let a = testkit::get(&http, &format!("http://{ip}:8080/")).await?;
        ensure!(a.status == 200 && a.pod == pod, "{pod} answered {a:?}");
    }
    let data = pod_data(&ns, replicas).await?;
    Ok(App { ns, replicas, data })
}

/// The real set's pods by name, with their UIDs: unchanged UIDs mean no pod was replaced.
async fn pod_uids(app: &App) -> anyhow::Result<BTreeMap<String, String>> {
    let pods = app
        .ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=time-app"))
        .await?;
    Ok(pods
        .items
        .into_iter()
        .filter_map(|p| Some((p.metadata.name?, p.metadata.uid?)))
        .collect())
}

/// The rollout record on the StatefulSet, as `rollout status -o json` shows it under `record`.
fn record_of(sts: &StatefulSet) -> Option<serde_json::Value> {
    let text = sts.metadata.annotations.as_ref()?.get(ANNOTATION_KEY)?;
    serde_json::from_str(text).ok()
}

/// Whether the record's current step is the shadow's comparison and it has begun.
pub(crate) fn comparing(record: &serde_json::Value) -> bool {
    let step = record["currentStep"].as_u64().unwrap_or(u64::MAX);
    let current = record
        .pointer("/plan/steps")
        .and_then(|s| s.as_array())
        .and_then(|steps| steps.get(usize::try_from(step).ok()?));
    record["phase"] == "Progressing"
        && current.is_some_and(|s| s["type"] == "compare")
        && record["stepStartedAt"].is_string()
}

/// Waits on a watch of the StatefulSet until its record satisfies `cond`; gives the record.
pub(crate) async fn wait_record(
    app: &App,
    timeout: Duration,
    cond: impl Fn(&serde_json::Value) -> bool + Send + 'static,
) -> anyhow::Result<serde_json::Value> {
    let sts = testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        timeout,
        move |s: Option<&StatefulSet>| s.and_then(record_of).is_some_and(|r| cond(&r)),
    )
    .await?;
    record_of(&sts).context("the record vanished")
}

/// `rollout status STS -o json`.
async fn status(app: &App) -> anyhow::Result<serde_json::Value> {
    let run = app.rollout(&["status", STS, "-o", "json"]).await?;
    run.expect(ExitCode::Done)?;
    run.json()
}

/// Starts `rollout ARGS` in the background (as from a second terminal).
pub(crate) fn start(app: &App, args: &[&str]) -> anyhow::Result<(tokio::process::Child, String)> {
    let child = rollout_command(app.name(), args)
        .spawn()
        .context("starting rollout")?;
    Ok((child, args.join(" ")))
}

/// Waits (at most [`RUN_LIMIT`]) for a background run to end.
pub(crate) async fn finish(started: (tokio::process::Child, String)) -> anyhow::Result<Run> {
    let (child, args) = started;
    crate::support::finish_within(child, &args, RUN_LIMIT).await
}

/// The shadow set, its pods and (unless `claim_kept`) its claim are gone; a kept claim is
/// still there and not being deleted.
pub(crate) async fn assert_shadow_removed(app: &App, claim_kept: bool) -> anyhow::Result<()> {
    let ns = &app.ns;
    if let Some(sts) = ns.api::<StatefulSet>().get_opt(SHADOW).await? {
        let uid = sts.metadata.uid.unwrap_or_default();
        testkit::wait_gone(ns.api::<StatefulSet>(), SHADOW, &uid, GONE).await?;
    }
    if let Some(pod) = ns.api::<Pod>().get_opt(SHADOW_POD).await? {
        let uid = pod.metadata.uid.unwrap_or_default();
        testkit::wait_gone(ns.api::<Pod>(), SHADOW_POD, &uid, GONE).await?;
    }
    let claim = ns
        .api::<PersistentVolumeClaim>()
        .get_opt(SHADOW_CLAIM)
        .await?;
    match (claim, claim_kept) {
        (Some(c), true) => ensure!(
            c.metadata.deletion_timestamp.is_none(),
            "{SHADOW_CLAIM} is being deleted despite --keep-data"
        ),
        (None, true) => anyhow::bail!("{SHADOW_CLAIM} was deleted despite --keep-data"),
        (Some(c), false) => {
            let uid = c.metadata.uid.unwrap_or_default();
            testkit::wait_gone(ns.api::<PersistentVolumeClaim>(), SHADOW_CLAIM, &uid, GONE).await?;
        }
        (None, false) => {}
    }
    Ok(())
}

/// The real set as it was: the same pods (UIDs), all on v1 with the v1 image, data kept.
async fn assert_real_set_untouched(
    app: &App,
    uids: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let now = pod_uids(app).await?;
    ensure!(
        &now == uids,
        "pods were replaced: before {uids:?}, now {now:?}"
    );
    app.assert_all_on("v1").await?;
    ensure!(
        app.image().await? == "time-app:v1",
        "the set's image changed"
    );
    app.assert_data_kept().await
}

/// `/visits` total of one pod, asked at its pod IP.
pub(crate) async fn visit_total(ns: &TestNs, pod: &str) -> anyhow::Result<u64> {
    let v = testkit::visits(ns, pod).await?;
    v["total"]
        .as_u64()
        .with_context(|| format!("/visits of {pod}: {v}"))
}

/// `count` requests to `/` through the live Service on 127.0.0.1: each must be a 200 from v1
/// on one of the real pods. Gives the answers per pod.
async fn live_requests(app: &App, count: usize) -> anyhow::Result<BTreeMap<String, u64>> {
    let port = testkit::node_port(&app.ns, STS).await?;
    let real: BTreeSet<String> = (0..app.replicas).map(pod_name).collect();
    let http = testkit::http();
    let url = format!("http://127.0.0.1:{port}/");
    let mut per_pod = BTreeMap::new();
    for n in 0..count {
        let a = testkit::get(&http, &url).await?;
        ensure!(
            a.status == 200 && a.version == "v1" && real.contains(&a.pod),
            "live request {n} through the Service was answered by {:?} ({}, status {}): {}",
            a.pod,
            a.version,
            a.status,
            a.body
        );
        *per_pod.entry(a.pod).or_insert(0) += 1;
    }
    Ok(per_pod)
}

/// The shadow pod carries only the shadow's labels (no `app`), and neither the live Service nor
/// the headless one has its address.
async fn assert_shadow_unselected(app: &App) -> anyhow::Result<String> {
    let pod = app.ns.api::<Pod>().get(SHADOW_POD).await?;
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    ensure!(
        labels.get("rollout.dev/set").map(String::as_str) == Some(SHADOW)
            && labels.get("rollout.dev/shadow-of").map(String::as_str) == Some(STS)
            && !labels.contains_key("app"),
        "the shadow pod's labels: {labels:?}"
    );
    let ip = testkit::pod_ip(&app.ns, SHADOW_POD).await?;
    for service in ["time-app", "time-app-pods"] {
        let ep = app.ns.api::<Endpoints>().get(service).await?;
        let all: Vec<String> = testkit::ready_addresses(&ep)
            .into_iter()
            .chain(testkit::not_ready_addresses(&ep))
            .collect();
        ensure!(
            !all.contains(&ip),
            "Service {service} has the shadow's address {ip}: {all:?}"
        );
    }
    Ok(ip)
}

#[tokio::test]
async fn a_bad_shadow_is_caught_and_removed_without_touching_the_real_set() -> anyhow::Result<()> {
    let app = App::deploy("shadow-bad", 3, false).await?;
    let uids = pod_uids(&app).await?;
    let manifest = testkit::repo_root().join("examples/time-app/k8s/time-app-v3-bad.yaml");
    let manifest = manifest.to_string_lossy().into_owned();
    let run = start(
        &app,
        &[
            "shadow",
            STS,
            "-f",
            &manifest,
            "--duration",
            "10s",
            "--no-probe",
        ],
    )?;

    // While the failing shadow is compared, the live Service still answers from v1 only.
    wait_record(&app, SETTLE, comparing).await?;
    assert_shadow_unselected(&app).await?;
    let live = live_requests(&app, 60).await?;
    eprintln!("60 live requests while the bad shadow ran: {live:?}");

    let run = finish(run).await?;
    run.expect(ExitCode::GateFailed)?;
    ensure!(
        run.stderr.contains("error rate 100.0% vs stable 0.0%"),
        "the message names the error rates: {}",
        run.describe()
    );
    assert_shadow_removed(&app, false).await?;
    assert_real_set_untouched(&app, &uids).await?;
    let status = status(&app).await?;
    assert_eq!(
        status.pointer("/record/measured/comparisonPassed"),
        Some(&false.into())
    );
    let shadow_errors = status.pointer("/record/measured/comparison/shadow/errorRate");
    assert_eq!(
        shadow_errors.and_then(|v| v.as_f64()),
        Some(1.0),
        "{status}"
    );
    assert_eq!(phase(&app).await?, "RolledBack");
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_good_shadow_gets_no_live_traffic_and_promote_rolls_the_real_set() -> anyhow::Result<()> {
    // Replayed at 2 a second, so live requests leaking to the shadow (a quarter of them if the
    // Service balanced over four pods) would stand out against the replay's own visits.
    const RATE: u64 = 2;
    const LIVE: usize = 200;
    let mut app = deploy_quiet("shadow-promote", 3).await?;
    let rate = RATE.to_string();
    let run = start(
        &app,
        &[
            "shadow",
            STS,
            "--image",
            "time-app:v2",
            "--duration",
            "2m",
            "--rate",
            &rate,
            "--probe-path",
            "/healthz",
        ],
    )?;
    let record = wait_record(&app, SETTLE, comparing).await?;
    let compare_started =
        Timestamp::from_str(record["stepStartedAt"].as_str().unwrap_or_default())?;
    let shadow_ip = assert_shadow_unselected(&app).await?;
    let a = testkit::get(
        &testkit::http(),
        &format!("http://{shadow_ip}:8080/healthz"),
    )
    .await?;
    assert_eq!((a.pod.as_str(), a.version.as_str()), (SHADOW_POD, "v2"));

    // Once the comparison passes so far (20 answers at least), live traffic through the
    // Service, with each pod's visits before and after.
    wait_record(&app, SETTLE, |r| {
        r.pointer("/measured/comparisonPassed") == Some(&true.into())
    })
    .await?;
    let real: Vec<String> = (0..app.replicas).map(pod_name).collect();
    let burst = Instant::now();
    let mut before = BTreeMap::new();
    for pod in real.iter().map(String::as_str).chain([SHADOW_POD]) {
        before.insert(pod.to_string(), visit_total(&app.ns, pod).await?);
    }
    let live = live_requests(&app, LIVE).await?;
    let mut after = BTreeMap::new();
    for pod in real.iter().map(String::as_str).chain([SHADOW_POD]) {
        after.insert(pod.to_string(), visit_total(&app.ns, pod).await?);
    }
    let elapsed = burst.elapsed().as_secs_f64();
    // The replay's own share of visits in that time, with one request of slack either side.
    let replayed_meanwhile = (RATE as f64 * elapsed).ceil() as u64 + 2;
    eprintln!(
        "{LIVE} live requests in {elapsed:.1}s: answers {live:?}; visits before {before:?}, after {after:?}"
    );
    let grew = |pod: &str| after[pod].checked_sub(before[pod]);
    for pod in &real {
        let mine = live.get(pod).copied().unwrap_or(0);
        let grew = grew(pod).with_context(|| format!("{pod} lost visits"))?;
        ensure!(
            grew >= mine && grew - mine <= replayed_meanwhile,
            "{pod} answered {mine} live requests but its visits grew by {grew}"
        );
    }
    let shadow_grew = grew(SHADOW_POD).context("the shadow lost visits")?;
    ensure!(
        shadow_grew <= replayed_meanwhile,
        "the shadow's visits grew by {shadow_grew} during {LIVE} live requests in {elapsed:.1}s; the replay alone sends at most {replayed_meanwhile}"
    );

    // Every visit the shadow has is a replayed request: no more than the replay could have
    // sent since the comparison began, no fewer than it reported answered.
    let reported = status(&app).await?;
    let answered = reported
        .pointer("/record/measured/comparison/shadow/answered")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let shadow_visits = visit_total(&app.ns, SHADOW_POD).await?;
    let since = Timestamp::now()
        .duration_since(compare_started)
        .as_secs_f64();
    let most = (RATE as f64 * since).ceil() as u64 + 2;
    eprintln!(
        "shadow: {shadow_visits} visits; replay answered {answered} (reported), at most {most} sent in {since:.1}s"
    );
    ensure!(
        20 <= answered && answered <= shadow_visits && shadow_visits <= most,
        "the shadow has {shadow_visits} visits; the replay reported {answered} answered and could have sent at most {most}"
    );

    let reported = status(&app).await?;
    assert_eq!(
        reported.pointer("/record/measured/comparisonPassed"),
        Some(&true.into())
    );
    assert_eq!(
        reported
            .pointer("/record/measured/comparison/shadow/errors")
            .and_then(|v| v.as_u64()),
        Some(0),
        "{reported}"
    );
    // The live traffic's visits are part of what every ordinal must keep.
    app.data = pod_data(&app.ns, app.replicas).await?;
    app.rollout(&["promote", STS, "--then", "rolling"])
        .await?
        .expect(ExitCode::Done)?;

    let run = finish(run).await?;
    run.expect(ExitCode::Done)?;
    eprintln!("{}", run.stderr);
    app.assert_all_on("v2").await?;
    assert_eq!(app.image().await?, "time-app:v2");
    assert_eq!(phase(&app).await?, "Succeeded");
    assert_shadow_removed(&app, false).await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_shadow_nobody_promotes_is_removed_and_the_real_set_stays() -> anyhow::Result<()> {
    let app = deploy_quiet("shadow-unpromoted", 3).await?;
    let uids = pod_uids(&app).await?;
    let shadow = [
        "shadow",
        STS,
        "--image",
        "time-app:v2",
        "--duration",
        "10s",
        "--probe-path",
        "/healthz",
    ];

    let run = app.rollout(&shadow).await?;
    run.expect(ExitCode::Done)?;
    ensure!(run.stderr.contains("was not changed"), "{}", run.describe());
    assert_shadow_removed(&app, false).await?;
    assert_real_set_untouched(&app, &uids).await?;
    assert_eq!(phase(&app).await?, "Succeeded");

    // --keep-data: the shadow goes, its volume stays, holding one visit per replayed request
    // the shadow answered and nothing else (probes and gate look at /healthz).
    let run = app
        .rollout(&[&shadow[..], &["--keep-data"]].concat())
        .await?;
    run.expect(ExitCode::Done)?;
    assert_shadow_removed(&app, true).await?;
    assert_real_set_untouched(&app, &uids).await?;
    let reported = status(&app).await?;
    let shadow_side = reported
        .pointer("/record/measured/comparison/shadow")
        .cloned()
        .unwrap_or_default();
    let (answered, requests) = (
        shadow_side["answered"].as_u64().unwrap_or(0),
        shadow_side["requests"].as_u64().unwrap_or(0),
    );
    let kept = kept_visits(&app.ns, SHADOW_CLAIM).await?;
    eprintln!(
        "kept volume {SHADOW_CLAIM}: {kept} visits; replay: {answered} answered of {requests}"
    );
    ensure!(
        answered >= 20,
        "the replay reported {answered} answers: {shadow_side}"
    );
    ensure!(
        answered <= kept && kept <= requests,
        "the kept volume holds {kept} visits; the replay sent {requests} and got {answered} answers"
    );
    app.cleanup().await;
    Ok(())
}

/// Complete visit records in the `visits.log` of a claim that no pod mounts any more, read
/// from its volume's directory on this machine.
async fn kept_visits(ns: &TestNs, claim: &str) -> anyhow::Result<u64> {
    let dir = testkit::claim_dir(ns, claim).await?;
    let path = dir.join("visits.log");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("Moscow time: "))
        .count() as u64)
}

#[tokio::test]
async fn promote_is_refused_while_the_comparison_has_too_few_answers() -> anyhow::Result<()> {
    let app = App::deploy("shadow-early", 3, false).await?;
    let uids = pod_uids(&app).await?;
    let run = start(
        &app,
        &[
            "shadow",
            STS,
            "--image",
            "time-app:v2",
            "--duration",
            "2m",
            "--min-samples",
            "1000",
            "--max-requests",
            "1000",
        ],
    )?;
    wait_record(&app, SETTLE, comparing).await?;

    for args in [
        vec!["promote", STS, "--then", "rolling"],
        vec!["promote", STS],
    ] {
        let promote = app.rollout(&args).await?;
        promote.expect(ExitCode::BadInput)?;
        ensure!(
            promote.stderr.contains("too few answers"),
            "promote names the reason: {}",
            promote.describe()
        );
    }
    let record = status(&app).await?;
    assert_eq!(
        record.pointer("/record/phase"),
        Some(&"Progressing".into()),
        "{record}"
    );
    assert_eq!(
        record.pointer("/record/measured/comparisonPassed"),
        None,
        "{record}"
    );

    let abort = app.rollout(&["abort", STS]).await?;
    abort.expect(ExitCode::Done)?;
    let run = finish(run).await?;
    // An aborted rollout ends with 3, as the README's exit codes say.
    run.expect(ExitCode::GateFailed)?;
    assert_shadow_removed(&app, false).await?;
    assert_real_set_untouched(&app, &uids).await?;
    assert_eq!(phase(&app).await?, "Aborted");
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_comparison_left_with_too_few_answers_removes_the_shadow_and_is_no_pass(
) -> anyhow::Result<()> {
    let app = deploy_quiet("shadow-undecided", 2).await?;
    let uids = pod_uids(&app).await?;
    // At 1 request a second for 5 s the replay sends about 5 requests per side, fewer than
    // the 20 (--min-samples) it needs to judge.
    let run = app
        .rollout(&[
            "shadow",
            STS,
            "--image",
            "time-app:v2",
            "--duration",
            "5s",
            "--rate",
            "1",
            "--probe-path",
            "/healthz",
        ])
        .await?;
    run.expect(ExitCode::TimedOut)?;
    ensure!(
        run.stderr.contains("could not decide") && run.stderr.contains("nothing was judged"),
        "the message says the comparison could not decide: {}",
        run.describe()
    );
    assert_shadow_removed(&app, false).await?;
    assert_real_set_untouched(&app, &uids).await?;
    let status = status(&app).await?;
    assert_eq!(
        status.pointer("/record/measured/comparisonPassed"),
        None,
        "{status}"
    );
    assert_eq!(phase(&app).await?, "RolledBack");
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_new_shadow_leaves_the_volume_a_kept_shadow_left_alone() -> anyhow::Result<()> {
    let app = deploy_quiet("shadow-rerun", 1).await?;
    let shadow = |duration: &'static str, extra: &[&'static str]| {
        let mut args = vec![
            "shadow",
            STS,
            "--image",
            "time-app:v2",
            "--probe-path",
            "/healthz",
            "--duration",
            duration,
        ];
        args.extend_from_slice(extra);
        args
    };
    app.rollout(&shadow("5s", &["--keep-data"]))
        .await?
        .expect(ExitCode::Done)?;
    let kept = kept_visits(&app.ns, SHADOW_CLAIM).await?;
    ensure!(kept > 0, "the kept volume has no visits");
    let old_id = app
        .statefulset()
        .await
        .ok()
        .as_ref()
        .and_then(record_of)
        .map(|r| r["id"].clone());

    // The next shadow either refuses to start beside the kept volume, naming it, or starts on
    // an empty one; either way the kept volume and its visits stay.
    let (mut child, args) = start(&app, &shadow("30s", &[]))?;
    let comparing_anew =
        move |r: &serde_json::Value| Some(&r["id"]) != old_id.as_ref() && comparing(r);
    tokio::select! {
        record = wait_record(&app, SETTLE, comparing_anew) => {
            let record = record?;
            // The new shadow may have another name than the kept one's.
            let set = record["twin"]["set"].as_str().unwrap_or("time-app-shadow").to_string();
            eprintln!("the second shadow is {set}");
            let visits = visit_total(&app.ns, &format!("{set}-0")).await?;
            ensure!(
                visits < kept,
                "the new shadow's pod started with the kept shadow's {kept} visits ({visits} now)"
            );
        }
        exited = child.wait() => eprintln!("the second shadow ended before comparing: {exited:?}"),
    }
    let run = finish((child, args)).await?;
    eprintln!("{}", run.describe());
    ensure!(
        run.code == Some(0) || (run.code == Some(2) && run.stderr.contains(SHADOW_CLAIM)),
        "the second shadow neither ran nor refused naming {SHADOW_CLAIM}: {}",
        run.describe()
    );
    let claim = app
        .ns
        .api::<PersistentVolumeClaim>()
        .get_opt(SHADOW_CLAIM)
        .await?;
    ensure!(
        claim.is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
        "the kept claim {SHADOW_CLAIM} was deleted by the next shadow: {}",
        run.describe()
    );
    let now = kept_visits(&app.ns, SHADOW_CLAIM).await?;
    ensure!(now == kept, "the kept volume held {kept} visits, now {now}");
    app.cleanup().await;
    Ok(())
}
