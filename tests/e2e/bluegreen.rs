//! Blue/green on the time app, end to end: what a client of the live Service sees while green is
//! held and while the Services switch (only blue, then only green, never a mix), the preview
//! Service in front of green alone, blue scaled to 0 with its volumes kept, `undo` back to blue,
//! `abort` and a failed green leaving blue's pods and the Service as they were, green's volumes
//! cloned from blue or fresh, and runs killed at each step that moves traffic or creates green,
//! then resumed or aborted.
//!
//! The client side (a bounded request loop through 127.0.0.1:<nodePort> and the reading of its
//! answers) is shared with the recreate tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Endpoints, PersistentVolumeClaim, Pod, Service};
use kube::api::ListParams;
use rollout::model::exit::ExitCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support::{pod_data, pod_name, rollout_command, App, Run, RUN_LIMIT, SETTLE, STS};

/// The green set of the first blue/green rollout of `time-app`.
const GREEN: &str = "time-app-bg1";
const PREVIEW: &str = "time-app-preview";
/// Blue's pods: the time app's, without the set label `rollout` puts on the sets it creates.
const BLUE_PODS: &str = "app=time-app,!rollout.dev/set";
const GREEN_PODS: &str = "rollout.dev/set=time-app-bg1";

// ---------------------------------------------------------------------------------------------
// The client's view: a bounded request loop through the live Service, and what its answers say.

/// What one request through the Service got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer, with the version and pod it named.
    Ok { version: String, pod: String },
    /// An answer with another status.
    Status(u16),
    /// No answer: the connection was refused or closed, or the request timed out.
    Error,
}

/// One request of the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// When the answer (or the error) came, counted from the loop's start.
    pub at: Duration,
    pub outcome: Outcome,
}

impl Sample {
    fn version(&self) -> Option<&str> {
        match &self.outcome {
            Outcome::Ok { version, .. } => Some(version),
            _ => None,
        }
    }
}

/// `GET url` once, as an outcome.
async fn ask(http: &reqwest::Client, url: &str) -> Outcome {
    match testkit::get(http, url).await {
        Ok(a) if (200..300).contains(&a.status) => Outcome::Ok {
            version: a.version,
            pod: a.pod,
        },
        Ok(a) => Outcome::Status(a.status),
        Err(_) => Outcome::Error,
    }
}

/// A request loop in the background: `GET /` through the Service's node port on 127.0.0.1, one
/// request at a time (a new connection each, so every request follows the proxy's current
/// endpoints), one per `interval` at most, until stopped, `max_requests` were sent or `max_time`
/// passed.
pub struct Traffic {
    stop: watch::Sender<bool>,
    sent: watch::Receiver<usize>,
    task: JoinHandle<Vec<Sample>>,
}

impl Traffic {
    pub fn start(
        port: u16,
        interval: Duration,
        max_requests: usize,
        max_time: Duration,
    ) -> Traffic {
        let (stop, stopped) = watch::channel(false);
        let (count, sent) = watch::channel(0usize);
        let task = tokio::spawn(async move {
            let http = testkit::http();
            let url = format!("http://127.0.0.1:{port}/");
            let started = Instant::now();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut samples = Vec::new();
            while samples.len() < max_requests && started.elapsed() < max_time && !*stopped.borrow()
            {
                tick.tick().await;
                let outcome = ask(&http, &url).await;
                samples.push(Sample {
                    at: started.elapsed(),
                    outcome,
                });
                count.send_replace(samples.len());
            }
            samples
        });
        Traffic { stop, sent, task }
    }

    /// Waits until `n` requests were answered (or failed), so the loop is known to be running.
    pub async fn wait_for(&mut self, n: usize) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(60), self.sent.wait_for(|c| *c >= n))
            .await
            .context("the request loop did not get going")?
            .context("the request loop ended early")?;
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<Vec<Sample>> {
        self.stop.send_replace(true);
        Ok(self.task.await?)
    }
}

/// Runs `rollout ARGS` while a client asks through the live Service every `interval` (at most
/// 20 000 requests or 4 minutes); gives the run and what the client got.
pub async fn run_under_traffic(
    app: &App,
    interval: Duration,
    args: &[&str],
) -> anyhow::Result<(Run, Vec<Sample>)> {
    let port = testkit::node_port(&app.ns, STS).await?;
    let mut traffic = Traffic::start(port, interval, 20_000, Duration::from_secs(240));
    traffic.wait_for(5).await?;
    let run = app.rollout(args).await?;
    let samples = traffic.stop().await?;
    eprintln!("{}", run.stderr);
    Ok((run, samples))
}

/// `count` requests to `/` through the Service's node port, one after the other.
pub async fn ask_service(ns: &TestNs, service: &str, count: usize) -> anyhow::Result<Vec<Outcome>> {
    let port = testkit::node_port(ns, service).await?;
    let http = testkit::http();
    let url = format!("http://127.0.0.1:{port}/");
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(ask(&http, &url).await);
    }
    Ok(out)
}

/// Answers per kind: the version of each 2xx answer, `<status>` or `<error>` for the others.
pub fn tally<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for outcome in outcomes {
        let key = match outcome {
            Outcome::Ok { version, .. } => version.clone(),
            Outcome::Status(s) => format!("<{s}>"),
            Outcome::Error => "<error>".to_string(),
        };
        *out.entry(key).or_insert(0) += 1;
    }
    out
}

/// How the answers moved from one version to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    /// The last answer from the old version.
    pub last_from: Duration,
    /// The first answer from the new version.
    pub first_to: Duration,
    /// Requests with no 2xx answer between those two.
    pub failed_between: usize,
    /// The first of them.
    pub first_failure: Option<Duration>,
    /// Requests with no 2xx answer in the whole loop.
    pub failed: usize,
}

impl Switch {
    /// How long the client got no answer from either version.
    pub fn gap(&self) -> Duration {
        self.first_to.saturating_sub(self.last_from)
    }
}

/// Reads a loop's answers as a move from version `from` to `to`: some answers from `from`, then
/// only answers from `to` (failures aside). Fails naming what broke that: no answer from one of
/// them, an answer from `from` after the first from `to`, or a third version.
pub fn switch_over(samples: &[Sample], from: &str, to: &str) -> Result<Switch, String> {
    if let Some(other) = samples
        .iter()
        .find_map(|s| s.version().filter(|v| *v != from && *v != to))
    {
        return Err(format!(
            "an answer from version {other}, neither {from} nor {to}"
        ));
    }
    let first_to = samples
        .iter()
        .position(|s| s.version() == Some(to))
        .ok_or_else(|| format!("no answer from {to} among {} requests", samples.len()))?;
    if let Some(late) = samples[first_to..]
        .iter()
        .position(|s| s.version() == Some(from))
    {
        let late = &samples[first_to + late];
        return Err(format!(
            "{from} answered at {:?}, after the first answer from {to} at {:?}",
            late.at, samples[first_to].at
        ));
    }
    let last_from = samples[..first_to]
        .iter()
        .rposition(|s| s.version() == Some(from))
        .ok_or_else(|| format!("no answer from {from} before the first from {to}"))?;
    let between = &samples[last_from + 1..first_to];
    Ok(Switch {
        last_from: samples[last_from].at,
        first_to: samples[first_to].at,
        failed_between: between.len(),
        first_failure: between.first().map(|s| s.at),
        failed: samples.iter().filter(|s| s.version().is_none()).count(),
    })
}

/// The step number of a progress line `[N/M] <time>  <step text>...` that reports `text` done
/// (not failed, not timed out).
pub fn completed_step(line: &str, text: &str) -> Option<usize> {
    let rest = line.strip_prefix('[')?;
    let (n, rest) = rest.split_once('/')?;
    let (_, rest) = rest.split_once(']')?;
    if !rest.contains(text) || rest.contains("FAILED") || rest.contains("TIMED OUT") {
        return None;
    }
    n.trim().parse().ok()
}

/// Complete visit records of a `visits.log` (the time app skips a torn last line too).
fn parse_visits(contents: &str) -> Vec<String> {
    contents
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .filter(|l| l.starts_with("Moscow time: "))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// What a user looks at in the cluster.

/// Adds visits on each pod of the time app (`3 + 2 * ordinal` of them, so no two pods hold the
/// same list), straight at its pod IP, and notes every pod's data again.
pub async fn add_visits(app: &mut App) -> anyhow::Result<()> {
    let http = testkit::http();
    for i in 0..app.replicas {
        let pod = pod_name(i);
        let ip = testkit::pod_ip(&app.ns, &pod).await?;
        ensure!(
            ip.starts_with("10.244."),
            "{pod} has IP {ip}, outside the pod network"
        );
        for _ in 0..3 + 2 * i {
            let a = testkit::get(&http, &format!("http://{ip}:8080/")).await?;
            ensure!(a.status == 200 && a.pod == pod, "{pod} answered {a:?}");
        }
    }
    app.data = pod_data(&app.ns, app.replicas).await?;
    Ok(())
}

fn visit_list(values: &[serde_json::Value]) -> Vec<String> {
    values
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// `/visits` of a running pod, as a list.
async fn pod_visits(ns: &TestNs, pod: &str) -> anyhow::Result<Vec<String>> {
    let v = testkit::visits(ns, pod).await?;
    ensure!(v["pod"] == pod, "/visits of {pod} names {}", v["pod"]);
    Ok(visit_list(
        v["visits"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default(),
    ))
}

/// The visits kept on a claim whose pod is not running, read from its volume's directory.
async fn claim_visits(ns: &TestNs, claim: &str) -> anyhow::Result<Vec<String>> {
    let dir = testkit::claim_dir(ns, claim).await?;
    let path = dir.join("visits.log");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (claim {claim})", path.display()))?;
    Ok(parse_visits(&text))
}

/// Blue's visits noted before the rollout are all still on its claims, in order, on the same
/// volumes (read from the volumes, since blue may be at 0 replicas).
pub async fn assert_blue_volumes_kept(app: &App) -> anyhow::Result<()> {
    let claims = claims_of(&app.ns, STS).await?;
    for (pod, before) in &app.data {
        let claim = format!("data-{pod}");
        let volume = claims
            .get(&claim)
            .with_context(|| format!("claim {claim} is gone: {claims:?}"))?;
        ensure!(
            volume == &before.volume,
            "{claim} moved from volume {} to {volume}",
            before.volume
        );
        let now = claim_visits(&app.ns, &claim).await?;
        let then = visit_list(&before.visits);
        ensure!(
            now.starts_with(&then),
            "{claim}: the {} visits on record before the rollout are not all there ({} now)",
            then.len(),
            now.len()
        );
    }
    Ok(())
}

async fn selector(ns: &TestNs, service: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let svc = ns.api::<Service>().get(service).await?;
    Ok(svc.spec.and_then(|s| s.selector).unwrap_or_default())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The selector of the time app's live Service as the manifest has it.
fn original_selector() -> BTreeMap<String, String> {
    labels(&[("app", "time-app")])
}

/// The live Service's selector once green serves.
fn green_selector() -> BTreeMap<String, String> {
    labels(&[("app", "time-app"), ("rollout.dev/set", GREEN)])
}

/// Pods matching `selector` that are not terminating: name to pod.
async fn pods(ns: &TestNs, selector: &str) -> anyhow::Result<BTreeMap<String, Pod>> {
    Ok(ns
        .api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name.clone()?, p)))
        .collect())
}

/// Each pod's uid and container restarts: if either changes, the pod was restarted.
async fn identities(
    ns: &TestNs,
    selector: &str,
) -> anyhow::Result<BTreeMap<String, (String, i32)>> {
    Ok(pods(ns, selector)
        .await?
        .into_iter()
        .map(|(name, p)| {
            let uid = p.metadata.uid.clone().unwrap_or_default();
            let restarts = p
                .status
                .and_then(|s| s.container_statuses)
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            (name, (uid, restarts))
        })
        .collect())
}

/// The IPs of the Ready pods matching `selector`.
async fn ready_ips(ns: &TestNs, selector: &str) -> anyhow::Result<BTreeSet<String>> {
    Ok(pods(ns, selector)
        .await?
        .into_values()
        .filter(testkit::pod_ready)
        .filter_map(|p| p.status.and_then(|s| s.pod_ip))
        .collect())
}

/// Waits (on a watch) until a Service's Endpoints hold exactly `ips`, all ready.
async fn wait_endpoints(ns: &TestNs, service: &str, ips: &BTreeSet<String>) -> anyhow::Result<()> {
    let want = ips.clone();
    let waited = testkit::wait_for(
        ns.api::<Endpoints>(),
        service,
        Duration::from_secs(60),
        move |e: Option<&Endpoints>| {
            e.is_some_and(|e| {
                testkit::ready_addresses(e)
                    .into_iter()
                    .collect::<BTreeSet<_>>()
                    == want
                    && testkit::not_ready_addresses(e).is_empty()
            })
        },
    )
    .await;
    if let Err(e) = waited {
        let now = ns.api::<Endpoints>().get_opt(service).await?;
        let ready = now.as_ref().map(testkit::ready_addresses);
        let not_ready = now.as_ref().map(testkit::not_ready_addresses);
        bail!("Endpoints {service} hold ready {ready:?}, not ready {not_ready:?}, expected only {ips:?}: {e}");
    }
    Ok(())
}

/// A set's `spec.replicas` (`None` when the set does not exist).
async fn replicas(ns: &TestNs, set: &str) -> anyhow::Result<Option<i32>> {
    Ok(ns
        .api::<StatefulSet>()
        .get_opt(set)
        .await?
        .map(|s| s.spec.and_then(|s| s.replicas).unwrap_or(1)))
}

/// The claims of a set (`data-<set>-<ordinal>`), not being deleted, with their volumes.
async fn claims_of(ns: &TestNs, set: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let prefix = format!("data-{set}-");
    Ok(ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| {
            let name = c.metadata.name?;
            let ordinal = name.strip_prefix(&prefix)?;
            if ordinal.is_empty() || !ordinal.chars().all(|ch| ch.is_ascii_digit()) {
                return None;
            }
            Some((name, c.spec.and_then(|s| s.volume_name).unwrap_or_default()))
        })
        .collect())
}

/// Waits until no claim of `set` exists any more (not even one being deleted).
async fn wait_claims_gone(ns: &TestNs, set: &str) -> anyhow::Result<()> {
    let prefix = format!("data-{set}-");
    let all = ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?;
    for claim in all.items {
        let (Some(name), Some(uid)) = (claim.metadata.name, claim.metadata.uid) else {
            continue;
        };
        if name.starts_with(&prefix) {
            testkit::wait_gone(
                ns.api::<PersistentVolumeClaim>(),
                &name,
                &uid,
                Duration::from_secs(60),
            )
            .await?;
        }
    }
    Ok(())
}

/// `rollout status STS -o json`, read back.
async fn status_json(app: &App) -> anyhow::Result<serde_json::Value> {
    let run = app.rollout(&["status", STS, "-o", "json"]).await?;
    run.expect(ExitCode::Done)?;
    run.json()
}

/// Blue as the rollout found it: its pods, same uids, no restarts, still behind the live
/// Service with its original selector; green, its preview Service and its claims gone.
async fn assert_back_on_untouched_blue(
    app: &App,
    blue_before: &BTreeMap<String, (String, i32)>,
) -> anyhow::Result<()> {
    assert_eq!(selector(&app.ns, STS).await?, original_selector());
    assert_eq!(
        &identities(&app.ns, BLUE_PODS).await?,
        blue_before,
        "no blue pod was replaced or restarted"
    );
    assert_eq!(replicas(&app.ns, STS).await?, Some(3));
    wait_endpoints(&app.ns, STS, &ready_ips(&app.ns, BLUE_PODS).await?).await?;
    assert_eq!(replicas(&app.ns, GREEN).await?, None, "{GREEN} is removed");
    assert!(
        pods(&app.ns, GREEN_PODS).await?.is_empty(),
        "{GREEN} has no pods left"
    );
    assert!(
        app.ns.api::<Service>().get_opt(PREVIEW).await?.is_none(),
        "the preview Service is removed"
    );
    wait_claims_gone(&app.ns, GREEN).await?;
    app.assert_data_kept().await
}

/// Green alone serves: the live Service selects green's set label, its Endpoints are green's
/// Ready pods, blue is at 0 replicas with no pods and keeps its volumes and visits.
async fn assert_green_alone_serves(app: &App) -> anyhow::Result<()> {
    assert_eq!(selector(&app.ns, STS).await?, green_selector());
    assert_eq!(replicas(&app.ns, STS).await?, Some(0));
    assert!(
        pods(&app.ns, BLUE_PODS).await?.is_empty(),
        "blue has no pods left"
    );
    assert_eq!(replicas(&app.ns, GREEN).await?, Some(3));
    testkit::wait_sts_ready(&app.ns, GREEN, 3, SETTLE).await?;
    let green = ready_ips(&app.ns, GREEN_PODS).await?;
    assert_eq!(green.len(), 3, "{green:?}");
    wait_endpoints(&app.ns, STS, &green).await?;
    assert!(
        app.ns.api::<Service>().get_opt(PREVIEW).await?.is_none(),
        "the preview Service is gone once green serves"
    );
    assert_blue_volumes_kept(app).await
}

/// Back on blue after green served: the live Service's original selector, blue's 3 pods Ready
/// behind it, `count` answers all from v1, green at 0 replicas with no pods and the volumes it
/// had (`green_claims`), every blue pod's data kept.
async fn assert_blue_back_green_kept(
    app: &App,
    green_claims: &BTreeMap<String, String>,
    count: usize,
) -> anyhow::Result<()> {
    assert_eq!(selector(&app.ns, STS).await?, original_selector());
    testkit::wait_sts_ready(&app.ns, STS, 3, SETTLE).await?;
    let blue_ips = ready_ips(&app.ns, BLUE_PODS).await?;
    assert_eq!(blue_ips.len(), 3, "{blue_ips:?}");
    wait_endpoints(&app.ns, STS, &blue_ips).await?;
    let seen = tally(&ask_service(&app.ns, STS, count).await?);
    eprintln!("back on blue, {count} requests through the live Service: {seen:?}");
    assert_eq!(
        seen,
        BTreeMap::from([("v1".to_string(), count)]),
        "blue alone serves"
    );
    assert_eq!(replicas(&app.ns, GREEN).await?, Some(0));
    assert!(
        pods(&app.ns, GREEN_PODS).await?.is_empty(),
        "green has no pods left"
    );
    assert_eq!(
        &claims_of(&app.ns, GREEN).await?,
        green_claims,
        "green served: its volumes stay"
    );
    app.assert_data_kept().await
}

/// Starts a blue/green to v2 that holds before the switch, and checks it stopped there.
async fn hold_green(app: &App) -> anyhow::Result<Run> {
    let run = app
        .rollout(&[
            "bluegreen",
            STS,
            "--image",
            "time-app:v2",
            "--scale-down-delay",
            "5s",
        ])
        .await?;
    run.expect(ExitCode::Done)?;
    let json = status_json(app).await?;
    assert_eq!(
        json.pointer("/rollout/phase"),
        Some(&"Paused".into()),
        "{json}"
    );
    testkit::wait_sts_ready(&app.ns, GREEN, 3, SETTLE).await?;
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn blue_green_switches_all_traffic_at_once_and_undo_brings_blue_back() -> anyhow::Result<()> {
    let mut app = App::deploy("bg-switch", 3, false).await?;
    add_visits(&mut app).await?;

    let run = hold_green(&app).await?;
    eprintln!("{}", run.stderr);

    // Held: the live Service is all blue, the preview Service all green.
    let held = ask_service(&app.ns, STS, 300).await?;
    let seen = tally(&held);
    eprintln!("held at the switch, 300 requests through the live Service: {seen:?}");
    assert_eq!(seen, BTreeMap::from([("v1".to_string(), 300)]));
    assert!(held.iter().all(|o| matches!(o, Outcome::Ok { pod, .. } if pod.starts_with("time-app-") && !pod.starts_with(GREEN))));
    let blue_ips = ready_ips(&app.ns, BLUE_PODS).await?;
    let green_ips = ready_ips(&app.ns, GREEN_PODS).await?;
    assert_eq!((blue_ips.len(), green_ips.len()), (3, 3));
    wait_endpoints(&app.ns, STS, &blue_ips).await?;
    let preview = selector(&app.ns, PREVIEW).await?;
    assert_eq!(
        preview.get("rollout.dev/set").map(String::as_str),
        Some(GREEN),
        "{preview:?}"
    );
    wait_endpoints(&app.ns, PREVIEW, &green_ips).await?;

    // The switch, with a client asking all the time.
    let (promote, samples) =
        run_under_traffic(&app, Duration::from_millis(5), &["promote", STS]).await?;
    promote.expect(ExitCode::Done)?;
    let switch = switch_over(&samples, "v1", "v2").map_err(anyhow::Error::msg)?;
    eprintln!(
        "switch seen by a client: {} requests {:?}; last v1 answer at {:?}, first v2 at {:?}: {:?} between, {} failed requests in all",
        samples.len(),
        tally(samples.iter().map(|s| &s.outcome)),
        switch.last_from,
        switch.first_to,
        switch.gap(),
        switch.failed
    );
    assert_eq!(switch.failed, 0, "no request failed during the switch");
    for s in &samples {
        if let Outcome::Ok { version, pod } = &s.outcome {
            assert_eq!(
                version == "v2",
                pod.starts_with(GREEN),
                "{version} from {pod}"
            );
        }
    }
    assert_green_alone_serves(&app).await?;
    let status = app.rollout(&["status", STS]).await?;
    status.expect(ExitCode::Done)?;
    assert!(
        status.stdout.contains(GREEN),
        "status of {STS} names {GREEN}: {}",
        status.describe()
    );
    let json = status_json(&app).await?;
    assert_eq!(json["statefulset"], GREEN, "{json}");
    let green_claims = claims_of(&app.ns, GREEN).await?;
    assert_eq!(green_claims.len(), 3, "{green_claims:?}");

    // Undo: blue serves again, green is kept at 0 with its volumes.
    let undo = app.rollout(&["undo", STS]).await?;
    eprintln!("{}", undo.stderr);
    undo.expect(ExitCode::Done)?;
    assert_blue_back_green_kept(&app, &green_claims, 300).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn abort_before_the_switch_removes_green_and_leaves_blue_untouched() -> anyhow::Result<()> {
    let app = App::deploy("bg-abort", 3, false).await?;
    let blue = identities(&app.ns, BLUE_PODS).await?;
    assert_eq!(blue.len(), 3);
    hold_green(&app).await?;
    assert_ne!(
        selector(&app.ns, STS).await?,
        original_selector(),
        "blue is pinned while green runs"
    );
    assert_eq!(claims_of(&app.ns, GREEN).await?.len(), 3);

    let abort = app.rollout(&["abort", STS]).await?;
    eprintln!("{}", abort.stderr);
    abort.expect(ExitCode::Done)?;
    assert_back_on_untouched_blue(&app, &blue).await?;
    assert_eq!(crate::strategies::phase(&app).await?, "Aborted");
    let seen = tally(&ask_service(&app.ns, STS, 100).await?);
    assert_eq!(seen, BTreeMap::from([("v1".to_string(), 100)]));
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_green_that_fails_its_gate_never_serves_and_is_removed() -> anyhow::Result<()> {
    let app = App::deploy("bg-bad", 3, false).await?;
    let blue = identities(&app.ns, BLUE_PODS).await?;
    let manifest = testkit::repo_root().join("examples/time-app/k8s/time-app-v3-bad.yaml");
    let manifest = manifest.display().to_string();

    let (run, samples) = run_under_traffic(
        &app,
        Duration::from_millis(20),
        &["bluegreen", STS, "-f", &manifest, "--auto-promote"],
    )
    .await?;
    let seen = tally(samples.iter().map(|s| &s.outcome));
    eprintln!("through the live Service during the run: {seen:?}");
    run.expect(ExitCode::GateFailed)?;
    assert!(
        run.stderr.contains("time-app-bg1-") && run.stderr.contains("500"),
        "the failure names green's pod and the status: {}",
        run.describe()
    );
    assert_eq!(
        seen,
        BTreeMap::from([("v1".to_string(), samples.len())]),
        "the live Service answered from blue only, without a failure"
    );
    assert_back_on_untouched_blue(&app, &blue).await?;
    assert_eq!(crate::strategies::phase(&app).await?, "RolledBack");
    app.cleanup().await;
    Ok(())
}

/// Waits past the current second of the wall clock, so that any visit recorded from now on has
/// a later time (the app records visits to the second) than every visit noted before.
async fn next_second() {
    let into = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(u64::from(1000 - into) + 50)).await;
}

/// Blue/green to v2 with `--data MODE` (`None`: the default), unattended, blue down at once
/// after the switch. Gives each green pod's visits by ordinal.
async fn bluegreen_with_data(
    app: &App,
    mode: Option<&str>,
) -> anyhow::Result<BTreeMap<i32, Vec<String>>> {
    let data = mode.map(|m| vec!["--data", m]).unwrap_or_default();
    unattended_bluegreen(app, "time-app:v2", &data).await?;
    assert_green_alone_serves(app).await?;
    let mut out = BTreeMap::new();
    for i in 0..app.replicas {
        out.insert(i, pod_visits(&app.ns, &format!("{GREEN}-{i}")).await?);
    }
    Ok(out)
}

#[tokio::test]
async fn cloned_green_volumes_start_with_each_blue_ordinals_visits() -> anyhow::Result<()> {
    let mut app = App::deploy("bg-clone", 3, false).await?;
    add_visits(&mut app).await?;
    let green = bluegreen_with_data(&app, Some("clone")).await?;
    for (i, visits) in &green {
        let noted = app
            .data
            .get(&pod_name(*i))
            .with_context(|| format!("no data noted for {}", pod_name(*i)))?;
        let blue = visit_list(&noted.visits);
        // Blue kept recording probe visits until its volume was cloned, and so green holds blue's
        // visits up to the clone, then its own: blue's full log and green's share a prefix at
        // least as long as what was noted before the rollout.
        let blue_now = claim_visits(&app.ns, &format!("data-{}", pod_name(*i))).await?;
        let shared = blue_now
            .iter()
            .zip(visits)
            .take_while(|(a, b)| a == b)
            .count();
        eprintln!(
            "{GREEN}-{i}: {} visits, the first {shared} copied from {} ({} noted before the rollout, {} on blue's volume now)",
            visits.len(),
            pod_name(*i),
            blue.len(),
            blue_now.len()
        );
        assert!(
            visits.starts_with(&blue),
            "{GREEN}-{i} does not start with the {} visits of {}: {visits:?}",
            blue.len(),
            pod_name(*i)
        );
        assert!(
            shared >= blue.len(),
            "{}'s own volume lost visits: {blue_now:?}",
            pod_name(*i)
        );
    }
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn green_volumes_start_empty_by_default() -> anyhow::Result<()> {
    let mut app = App::deploy("bg-fresh", 3, false).await?;
    add_visits(&mut app).await?;
    next_second().await;
    let green = bluegreen_with_data(&app, None).await?;
    let blue: BTreeSet<String> = app
        .data
        .values()
        .flat_map(|d| visit_list(&d.visits))
        .collect();
    for (i, visits) in &green {
        eprintln!("{GREEN}-{i}: {} visits of its own", visits.len());
        assert!(!visits.is_empty(), "its probes are visits too");
        let copied: Vec<&String> = visits.iter().filter(|v| blue.contains(*v)).collect();
        assert!(
            copied.is_empty(),
            "{GREEN}-{i} holds blue's visits {copied:?}"
        );
    }
    app.cleanup().await;
    Ok(())
}

/// A ClusterIP Service `name` selecting `selector`, port 80 to the app's port.
fn cluster_ip_service(name: &str, selector: &[(&str, &str)]) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": "ClusterIP",
            "selector": labels(selector),
            "ports": [{"port": 80, "targetPort": 8080}]
        }
    })
}

/// A Service as a user would compare it: uid, resourceVersion and selector.
async fn service_identity(
    ns: &TestNs,
    name: &str,
) -> anyhow::Result<(String, String, BTreeMap<String, String>)> {
    let svc = ns.api::<Service>().get(name).await?;
    Ok((
        svc.metadata.uid.unwrap_or_default(),
        svc.metadata.resource_version.unwrap_or_default(),
        svc.spec.and_then(|s| s.selector).unwrap_or_default(),
    ))
}

/// Nothing of a blue/green was made: no green set or claims, blue's pods as they were and the
/// live Service on its original selector.
async fn assert_nothing_changed(
    app: &App,
    blue_before: &BTreeMap<String, (String, i32)>,
) -> anyhow::Result<()> {
    assert_eq!(
        replicas(&app.ns, GREEN).await?,
        None,
        "no {GREEN} was created"
    );
    assert!(
        claims_of(&app.ns, GREEN).await?.is_empty(),
        "no claim of {GREEN}"
    );
    assert_eq!(selector(&app.ns, STS).await?, original_selector());
    assert_eq!(&identities(&app.ns, BLUE_PODS).await?, blue_before);
    assert_eq!(replicas(&app.ns, STS).await?, Some(3));
    Ok(())
}

#[tokio::test]
async fn a_users_own_preview_service_is_refused_and_left_alone() -> anyhow::Result<()> {
    let app = App::deploy("bg-own-preview", 3, false).await?;
    let blue = identities(&app.ns, BLUE_PODS).await?;
    app.ns
        .apply_value(cluster_ip_service(PREVIEW, &[("app", "reports")]))
        .await?;
    let before = service_identity(&app.ns, PREVIEW).await?;

    let run = app
        .rollout(&["bluegreen", STS, "--image", "time-app:v2", "--auto-promote"])
        .await?;
    eprintln!("{}", run.stderr);
    run.expect(ExitCode::BadInput)?;
    assert!(
        run.stderr.contains(PREVIEW) && run.stderr.contains("rename or delete"),
        "the error names the Service and what to do: {}",
        run.describe()
    );
    assert_eq!(
        service_identity(&app.ns, PREVIEW).await?,
        before,
        "the user's {PREVIEW} is still there, unchanged"
    );
    assert_nothing_changed(&app, &blue).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_second_service_selecting_the_pods_must_be_listed_with_service() -> anyhow::Result<()> {
    let app = App::deploy("bg-unlisted", 3, false).await?;
    let blue = identities(&app.ns, BLUE_PODS).await?;
    let extra = "time-app-internal";
    app.ns
        .apply_value(cluster_ip_service(extra, &[("app", "time-app")]))
        .await?;
    let before = service_identity(&app.ns, extra).await?;

    let run = app
        .rollout(&[
            "bluegreen",
            STS,
            "--image",
            "time-app:v2",
            "--service",
            STS,
            "--auto-promote",
        ])
        .await?;
    eprintln!("{}", run.stderr);
    run.expect(ExitCode::BadInput)?;
    assert!(
        run.stderr.contains(extra)
            && run
                .stderr
                .contains(&format!("--service {STS} --service {extra}")),
        "the error names the other Service and the flags to give: {}",
        run.describe()
    );
    assert_eq!(service_identity(&app.ns, extra).await?, before);
    assert_nothing_changed(&app, &blue).await?;
    app.cleanup().await;
    Ok(())
}

/// Runs `rollout ARGS` and checks it finished (exit 0).
async fn done(app: &App, args: &[&str]) -> anyhow::Result<Run> {
    let run = app.rollout(args).await?;
    eprintln!("{}", run.stderr);
    run.expect(ExitCode::Done)?;
    Ok(run)
}

/// An unattended blue/green to `image` (`--auto-promote`, blue down at once after the switch)
/// with `extra` flags, checked to have finished (exit 0).
async fn unattended_bluegreen(app: &App, image: &str, extra: &[&str]) -> anyhow::Result<Run> {
    let mut args = vec![
        "bluegreen",
        STS,
        "--image",
        image,
        "--auto-promote",
        "--scale-down-delay",
        "0s",
    ];
    args.extend_from_slice(extra);
    done(app, &args).await
}

/// The live Service selects `set` alone: its Endpoints are that set's Ready pods, and `count`
/// answers through it all come from those pods on `version`.
async fn assert_serving(app: &App, set: &str, version: &str, count: usize) -> anyhow::Result<()> {
    assert_eq!(
        selector(&app.ns, STS).await?,
        labels(&[("app", "time-app"), ("rollout.dev/set", set)]),
        "the live Service selects {set}"
    );
    testkit::wait_sts_ready(&app.ns, set, 3, SETTLE).await?;
    let ips = ready_ips(&app.ns, &format!("rollout.dev/set={set}")).await?;
    assert_eq!(ips.len(), 3, "{set}: {ips:?}");
    wait_endpoints(&app.ns, STS, &ips).await?;
    let answers = ask_service(&app.ns, STS, count).await?;
    eprintln!("{count} requests with {set} serving: {:?}", tally(&answers));
    for answer in &answers {
        match answer {
            Outcome::Ok { version: v, pod } => assert!(
                v == version && pod.starts_with(&format!("{set}-")),
                "{v} from {pod}, expected {version} from {set}"
            ),
            other => bail!("a request through the live Service got {other:?}"),
        }
    }
    assert_eq!(status_json(app).await?["statefulset"], set);
    Ok(())
}

#[tokio::test]
async fn repeated_blue_green_rollouts_take_new_names_and_undo_steps_back_one_set(
) -> anyhow::Result<()> {
    const SECOND: &str = "time-app-bg2";
    let mut app = App::deploy("bg-again", 3, false).await?;
    add_visits(&mut app).await?;
    let clone = ["--data", "clone"];
    unattended_bluegreen(&app, "time-app:v2", &clone).await?;
    assert_green_alone_serves(&app).await?;
    let mut first_visits = BTreeMap::new();
    for i in 0..app.replicas {
        let pod = format!("{GREEN}-{i}");
        first_visits.insert(i, pod_visits(&app.ns, &pod).await?);
    }

    // The user still names the home set; the second blue/green starts from the set serving now.
    let run = unattended_bluegreen(&app, "time-app:v3", &clone).await?;
    assert!(
        run.stderr.contains(&format!("working on {GREEN}"))
            && run
                .stderr
                .contains(&format!("{SECOND} serves the new version")),
        "the run says which set it works on and which serves after it: {}",
        run.describe()
    );
    assert_serving(&app, SECOND, "v3", 100).await?;
    assert_eq!(replicas(&app.ns, STS).await?, Some(0));
    assert_eq!(replicas(&app.ns, GREEN).await?, Some(0));
    assert!(pods(&app.ns, "app=time-app,!rollout.dev/set")
        .await?
        .is_empty());
    assert!(pods(&app.ns, GREEN_PODS).await?.is_empty());
    let first_claims = claims_of(&app.ns, GREEN).await?;
    assert_eq!(
        first_claims.len(),
        3,
        "{GREEN} keeps its volumes: {first_claims:?}"
    );
    assert_blue_volumes_kept(&app).await?;
    for (i, before) in &first_visits {
        let visits = pod_visits(&app.ns, &format!("{SECOND}-{i}")).await?;
        assert!(
            visits.starts_with(before),
            "{SECOND}-{i} was cloned from {GREEN}-{i} and starts with its {} visits ({} now)",
            before.len(),
            visits.len()
        );
    }

    // Undo steps back one set: the one that served before the second blue/green.
    done(&app, &["undo", STS]).await?;
    assert_serving(&app, GREEN, "v2", 100).await?;
    assert_eq!(replicas(&app.ns, SECOND).await?, Some(0));
    assert_eq!(
        claims_of(&app.ns, SECOND).await?.len(),
        3,
        "{SECOND} served, so its volumes stay"
    );
    assert_eq!(claims_of(&app.ns, GREEN).await?, first_claims);

    // A partition strategy through the home name, with the user's own manifest (which knows
    // nothing of the set label), moves the serving set on its own volumes.
    let manifest = crate::support::time_app_manifest(3, false, &[], "time-app:v4");
    let file = crate::support::ManifestFile::write(&app, &manifest)?;
    let canary = app
        .rollout(&["canary", STS, "-f", &file.arg(), "--steps", "100"])
        .await?;
    eprintln!("{}", canary.stderr);
    canary.expect(ExitCode::Done)?;
    assert!(
        canary
            .stderr
            .contains(&format!("selects its pods by rollout.dev/set={GREEN}")),
        "the run says it added the set label to the manifest's template: {}",
        canary.describe()
    );
    assert_serving(&app, GREEN, "v4", 100).await?;
    assert_eq!(claims_of(&app.ns, GREEN).await?, first_claims);
    for (i, before) in &first_visits {
        let visits = pod_visits(&app.ns, &format!("{GREEN}-{i}")).await?;
        assert!(
            visits.starts_with(before),
            "{GREEN}-{i} lost visits across the rollouts ({} before, {} now)",
            before.len(),
            visits.len()
        );
    }
    assert_eq!(replicas(&app.ns, STS).await?, Some(0));
    assert_blue_volumes_kept(&app).await?;
    app.cleanup().await;
    Ok(())
}

/// Starts an unattended blue/green and SIGKILLs it as soon as it reports the step whose line
/// contains `step` done. Gives that step's number (from 1) and the steps in the plan.
async fn kill_after(app: &App, step: &str) -> anyhow::Result<(usize, usize)> {
    let mut child = rollout_command(
        app.name(),
        &[
            "bluegreen",
            STS,
            "--image",
            "time-app:v2",
            "--auto-promote",
            "--scale-down-delay",
            "5s",
        ],
    )
    .spawn()?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(RUN_LIMIT, async {
        while let Some(line) = lines.next_line().await? {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(n) = completed_step(&line, step) {
                let total = line
                    .split_once('/')
                    .and_then(|(_, r)| r.split_once(']'))
                    .and_then(|(t, _)| t.parse().ok())
                    .unwrap_or(0);
                return Ok::<_, anyhow::Error>(Some((n, total)));
            }
        }
        Ok(None)
    })
    .await;
    // tokio's kill is SIGKILL and reaps the process, so its Lease names a pid that is gone.
    child.kill().await?;
    match found {
        Ok(Ok(Some(step))) => {
            eprintln!("killed after:\n{seen}");
            Ok(step)
        }
        Ok(Ok(None)) => bail!("the run ended before step `{step}` was done:\n{seen}"),
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("step `{step}` was not done after {RUN_LIMIT:?}:\n{seen}"),
    }
}

/// After the kill, `status` says the rollout is under way, at the step it was killed after or the
/// next one (the run may have recorded the next step's start before the signal came).
async fn assert_status_after_kill(app: &App, step: usize, total: usize) -> anyhow::Result<()> {
    let json = status_json(app).await?;
    assert_eq!(
        json.pointer("/rollout/phase"),
        Some(&"Progressing".into()),
        "{json}"
    );
    let current = json
        .pointer("/record/currentStep")
        .and_then(|c| c.as_u64())
        .context("no currentStep in the record")? as usize;
    eprintln!(
        "status after the kill: at step {}/{total} of the record",
        current + 1
    );
    assert!(
        current + 1 == step || current + 1 == step + 1,
        "killed after step {step}, the record is at step {}",
        current + 1
    );
    let text = app.rollout(&["status", STS]).await?;
    text.expect(ExitCode::Done)?;
    assert!(
        text.stdout.contains("Progressing"),
        "status says the rollout is under way: {}",
        text.describe()
    );
    Ok(())
}

async fn killed_then_resumed(prefix: &str, step: &str) -> anyhow::Result<()> {
    let mut app = App::deploy(prefix, 3, false).await?;
    add_visits(&mut app).await?;
    let (n, total) = kill_after(&app, step).await?;
    assert_status_after_kill(&app, n, total).await?;
    let resume = app.rollout(&["resume", STS]).await?;
    eprintln!("{}", resume.stderr);
    resume.expect(ExitCode::Done)?;
    assert_green_alone_serves(&app).await?;
    let seen = tally(&ask_service(&app.ns, STS, 100).await?);
    assert_eq!(seen, BTreeMap::from([("v2".to_string(), 100)]));
    app.cleanup().await;
    Ok(())
}

/// Runs `rollout ARGS` until it reports a step after step `after` done (or a pause begun), then
/// SIGKILLs it. Gives that step's number (from 1), or `None` when the run ended by itself first.
/// (A resumed run first repeats the step it was killed after when the record had not yet moved
/// on: every step is safe to run again.)
async fn kill_at_next_step(
    app: &App,
    args: &[&str],
    after: usize,
) -> anyhow::Result<Option<usize>> {
    let mut child = rollout_command(app.name(), args).spawn()?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let mut lines = BufReader::new(stderr).lines();
    let mut seen = String::new();
    let found = tokio::time::timeout(RUN_LIMIT, async {
        while let Some(line) = lines.next_line().await? {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(n) = completed_step(&line, "").filter(|n| *n > after) {
                return Ok::<_, anyhow::Error>(Some(n));
            }
        }
        Ok(None)
    })
    .await;
    child.kill().await?;
    match found {
        Ok(Ok(step)) => {
            eprintln!("{}", seen.trim_end());
            Ok(step)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => bail!("no step was done after {RUN_LIMIT:?}:\n{seen}"),
    }
}

/// Exactly one set behind the live Service: its Endpoints are all blue's pods or all green's.
async fn assert_one_set_serving(app: &App) -> anyhow::Result<&'static str> {
    let endpoints = app.ns.api::<Endpoints>().get_opt(STS).await?;
    let serving: BTreeSet<String> = endpoints
        .as_ref()
        .map(testkit::ready_addresses)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let blue = ready_ips(&app.ns, BLUE_PODS).await?;
    let green = ready_ips(&app.ns, GREEN_PODS).await?;
    let side = if !serving.is_empty() && serving.is_subset(&blue) {
        "blue"
    } else if !serving.is_empty() && serving.is_subset(&green) {
        "green"
    } else {
        bail!("the live Service has {serving:?} behind it: blue is {blue:?}, green {green:?}")
    };
    Ok(side)
}

#[tokio::test]
async fn killed_at_every_step_boundary_and_resumed_each_time() -> anyhow::Result<()> {
    let mut app = App::deploy("bg-kill-each", 3, false).await?;
    add_visits(&mut app).await?;
    let start = [
        "bluegreen",
        STS,
        "--image",
        "time-app:v2",
        "--auto-promote",
        "--scale-down-delay",
        "3s",
    ];
    let mut args: &[&str] = &start;
    let mut killed_after = Vec::new();
    // Bounded: the plan has 8 steps; a resume that reports no step before ending stops it.
    for _ in 0..12 {
        let after = killed_after.last().copied().unwrap_or(0);
        let Some(step) = kill_at_next_step(&app, args, after).await? else {
            break;
        };
        killed_after.push(step);
        let json = status_json(&app).await?;
        let phase = json.pointer("/rollout/phase").and_then(|p| p.as_str());
        if phase == Some("Succeeded") {
            break;
        }
        assert!(
            matches!(phase, Some("Progressing" | "Paused")),
            "after a kill at step {step}, status says {phase:?}: {json}"
        );
        let side = assert_one_set_serving(&app).await?;
        eprintln!("killed after step {step}: {phase:?}, {side} serving");
        args = &["resume", STS];
    }
    eprintln!("killed after steps {killed_after:?}");
    // Each kill came at the next boundary: after steps 1, 2, ... up to the last but one (after
    // the last step the rollout has succeeded).
    let expected: Vec<usize> = (1..killed_after.len() + 1).collect();
    assert_eq!(killed_after, expected, "a kill at every step boundary");
    assert!(
        killed_after.len() >= 7,
        "the run was killed after every step but the last: {killed_after:?}"
    );
    let last = app.rollout(&["resume", STS]).await?;
    let json = status_json(&app).await?;
    if json.pointer("/rollout/phase") != Some(&"Succeeded".into()) {
        last.expect(ExitCode::Done)?;
    }
    assert_green_alone_serves(&app).await?;
    let seen = tally(&ask_service(&app.ns, STS, 100).await?);
    assert_eq!(seen, BTreeMap::from([("v2".to_string(), 100)]));
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn killed_after_pinning_blue_then_resumed() -> anyhow::Result<()> {
    killed_then_resumed("bg-kill-pin", "pin the live Services").await
}

#[tokio::test]
async fn killed_after_creating_green_then_resumed() -> anyhow::Result<()> {
    killed_then_resumed("bg-kill-create", "create StatefulSet").await
}

#[tokio::test]
async fn killed_after_the_switch_then_resumed() -> anyhow::Result<()> {
    killed_then_resumed("bg-kill-switch", "switch the live Services").await
}

#[tokio::test]
async fn killed_after_the_switch_then_aborted_back_to_blue() -> anyhow::Result<()> {
    let mut app = App::deploy("bg-kill-abort", 3, false).await?;
    add_visits(&mut app).await?;
    let blue = identities(&app.ns, BLUE_PODS).await?;
    let (n, total) = kill_after(&app, "switch the live Services").await?;
    assert_status_after_kill(&app, n, total).await?;
    assert_eq!(
        selector(&app.ns, STS).await?,
        green_selector(),
        "green served before the kill"
    );

    let abort = app.rollout(&["abort", STS]).await?;
    eprintln!("{}", abort.stderr);
    abort.expect(ExitCode::Done)?;
    assert_eq!(selector(&app.ns, STS).await?, original_selector());
    assert_eq!(
        identities(&app.ns, BLUE_PODS).await?,
        blue,
        "blue's pods ran on through the kill and the abort"
    );
    wait_endpoints(&app.ns, STS, &ready_ips(&app.ns, BLUE_PODS).await?).await?;
    let seen = tally(&ask_service(&app.ns, STS, 100).await?);
    assert_eq!(seen, BTreeMap::from([("v1".to_string(), 100)]));
    // Green served, so it is kept at 0 with its volumes.
    assert_eq!(replicas(&app.ns, GREEN).await?, Some(0));
    assert!(pods(&app.ns, GREEN_PODS).await?.is_empty());
    assert_eq!(claims_of(&app.ns, GREEN).await?.len(), 3);
    assert_eq!(crate::strategies::phase(&app).await?, "Aborted");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn an_undo_killed_half_way_is_finished_by_abort_with_blue_alone_serving() -> anyhow::Result<()>
{
    let mut app = App::deploy("bg-kill-undo", 3, false).await?;
    add_visits(&mut app).await?;
    unattended_bluegreen(&app, "time-app:v2", &[]).await?;
    assert_green_alone_serves(&app).await?;
    let green_claims = claims_of(&app.ns, GREEN).await?;

    // The undo writes RollingBack, then brings blue up (its pods take a moment to be Ready),
    // switches and scales green down: it is killed right after that first write.
    crate::recovery::kill_at_phase(&app, STS, &["undo", STS], "RollingBack").await?;
    let json = status_json(&app).await?;
    assert_eq!(
        json.pointer("/rollout/phase"),
        Some(&"RollingBack".into()),
        "{json}"
    );
    let abort = done(&app, &["abort", STS]).await?;
    assert!(
        abort.stderr.contains("serves again"),
        "abort says blue serves again: {}",
        abort.describe()
    );
    assert_blue_back_green_kept(&app, &green_claims, 100).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn undo_after_the_home_set_was_upgraded_serves_without_a_gap() -> anyhow::Result<()> {
    let app = App::deploy("bg-undo-upgraded", 3, false).await?;
    unattended_bluegreen(&app, "time-app:v2", &[]).await?;
    assert_green_alone_serves(&app).await?;
    // What a `helm upgrade` of the chart does to the home set, which no longer serves: a new
    // template, and the chart's replica count again.
    let patch = serde_json::json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [
        {"name": "app", "image": "time-app:v3"}]}}}});
    app.ns
        .api::<StatefulSet>()
        .patch(
            STS,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(&patch),
        )
        .await?;
    testkit::wait_sts_ready(&app.ns, STS, 3, SETTLE).await?;
    let (undo, samples) = run_under_traffic(&app, Duration::from_millis(5), &["undo", STS]).await?;
    undo.expect(ExitCode::Done)?;
    // Blue came back on the upgraded template: the Services follow the pods it runs now.
    let switch = switch_over(&samples, "v2", "v3").map_err(anyhow::Error::msg)?;
    eprintln!(
        "undo onto the upgraded home set: {} requests {:?}; {:?} between the last v2 and the first v3 answer",
        samples.len(),
        tally(samples.iter().map(|s| &s.outcome)),
        switch.gap()
    );
    assert_eq!(
        switch.failed, 0,
        "no request failed during the undo: {switch:?}"
    );
    assert_eq!(selector(&app.ns, STS).await?, original_selector());
    let seen = tally(&ask_service(&app.ns, STS, 100).await?);
    assert_eq!(seen, BTreeMap::from([("v3".to_string(), 100)]));
    assert_eq!(replicas(&app.ns, GREEN).await?, Some(0));
    app.cleanup().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client-side readings, without a cluster.

#[cfg(test)]
mod reading {
    use super::*;

    fn ok(at_ms: u64, version: &str) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            outcome: Outcome::Ok {
                version: version.into(),
                pod: "p".into(),
            },
        }
    }

    fn failed(at_ms: u64) -> Sample {
        Sample {
            at: Duration::from_millis(at_ms),
            outcome: Outcome::Error,
        }
    }

    /// Last `from`, first `to` (ms), failed between, failed in all; or a part of the error.
    type Want = Result<(u64, u64, usize, usize), &'static str>;

    #[test]
    fn switch_over_cases() {
        let ms = Duration::from_millis;
        let cases: Vec<(&str, Vec<Sample>, Want)> = vec![
            (
                "clean",
                vec![ok(1, "v1"), ok(2, "v1"), ok(3, "v2"), ok(4, "v2")],
                Ok((2, 3, 0, 0)),
            ),
            (
                "a gap with failures",
                vec![ok(1, "v1"), failed(2), failed(3), ok(9, "v2"), failed(10)],
                Ok((1, 9, 2, 3)),
            ),
            (
                "back to v1",
                vec![ok(1, "v1"), ok(2, "v2"), ok(3, "v1")],
                Err("after the first"),
            ),
            (
                "never v2",
                vec![ok(1, "v1"), failed(2)],
                Err("no answer from v2"),
            ),
            (
                "never v1",
                vec![failed(1), ok(2, "v2")],
                Err("no answer from v1"),
            ),
            (
                "a third version",
                vec![ok(1, "v1"), ok(2, "v3"), ok(3, "v2")],
                Err("v3"),
            ),
        ];
        for (what, samples, want) in cases {
            let got = switch_over(&samples, "v1", "v2");
            match (got, want) {
                (Ok(s), Ok((last, first, between, failed))) => {
                    assert_eq!(
                        (s.last_from, s.first_to, s.failed_between, s.failed),
                        (ms(last), ms(first), between, failed),
                        "{what}"
                    );
                    assert_eq!(s.gap(), ms(first - last), "{what}");
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn completed_step_cases() {
        let cases = [
            (
                "[5/8]    77ms  switch the live Services to the new set: time-app selects x",
                "switch the live",
                Some(5),
            ),
            (
                "[2/8]    4.8s  create StatefulSet time-app-bg1 with 3 pods: Ready",
                "create StatefulSet",
                Some(2),
            ),
            (
                "[2/8]    4.8s  create StatefulSet time-app-bg1: FAILED: pod crashed",
                "create StatefulSet",
                None,
            ),
            (
                "[2/8]    10m  create StatefulSet time-app-bg1: TIMED OUT",
                "create StatefulSet",
                None,
            ),
            (
                "[1/8]    13ms  pin the live Services",
                "switch the live",
                None,
            ),
            (
                "note: switch the live Services later",
                "switch the live",
                None,
            ),
        ];
        for (line, text, want) in cases {
            assert_eq!(completed_step(line, text), want, "{line}");
        }
    }

    #[test]
    fn visits_files_are_read_like_the_app_reads_them() {
        let text = "Moscow time: 10:00:00\nMoscow time: 10:00:01\ngarbage\nMoscow time: 10:0";
        assert_eq!(
            parse_visits(text),
            ["Moscow time: 10:00:00", "Moscow time: 10:00:01"]
        );
        assert!(parse_visits("").is_empty());
    }

    #[test]
    fn tally_counts_versions_statuses_and_errors() {
        let outcomes = [
            ok(1, "v1").outcome,
            ok(2, "v1").outcome,
            Outcome::Status(503),
            Outcome::Error,
        ];
        assert_eq!(
            tally(&outcomes),
            BTreeMap::from([
                ("v1".to_string(), 2),
                ("<503>".to_string(), 1),
                ("<error>".to_string(), 1)
            ])
        );
    }
}
