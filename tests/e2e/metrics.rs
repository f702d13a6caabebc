//! Metric gates against the devcluster's Prometheus (`devcluster up` runs it; its URL is
//! `devcluster env`'s ROLLOUT_PROMETHEUS_URL): a slow release that answers every probe caught by
//! its p95 latency against stable's, a canary rolled back during its hold once its errors pile
//! up (with the delay from the bad figure to the rollback measured), a query with no data
//! timing out instead of passing, an unreachable Prometheus or a broken query refused
//! before anything is written, and a bake whose errors pile up once every pod runs the new
//! revision, judged against stable as Prometheus had it before the last pods moved.
//!
//! The pods run this workspace's own `time-app` (its `/metrics`), whichever agent runs them.

use std::time::{Duration, Instant};

use anyhow::ensure;
use devcluster::testkit::{self, TestNs};
use k8s_openapi::api::apps::v1::StatefulSet;
use rollout::model::exit::ExitCode;
use rollout::model::state::ANNOTATION_KEY;

use crate::strategies::phase;
use crate::support::{
    finish_within, pod_data, pod_name, rollout_command, time_app_manifest, App, ManifestFile,
    RUN_LIMIT, SETTLE, STS,
};

/// The devcluster's Prometheus.
fn prometheus_url() -> String {
    std::env::var("ROLLOUT_PROMETHEUS_URL")
        .unwrap_or_else(|_| format!("http://127.0.0.1:{}", devcluster::layout::PROMETHEUS_PORT))
}

/// p95 latency of one revision over the last 30 s, from the app's histogram.
const P95: &str = r#"histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{namespace="{namespace}",controller_revision_hash="{revision}"}[30s])))"#;

/// Server errors of one revision over the last minute (0 when there are none).
const ERRORS: &str = r#"(sum(increase(http_requests_total{namespace="{namespace}",controller_revision_hash="{revision}",code=~"5.."}[1m])) or vector(0))"#;

/// The time app's manifest, scraped, running this workspace's binary, with `env`.
fn scraped_manifest(replicas: i32, env: &[(&str, &str)], image: &str) -> String {
    let binary = testkit::built_binary("time-app");
    time_app_manifest(replicas, false, env, image).replace(
        &format!("          image: {image}\n"),
        &format!(
            "          image: {image}\n          command: [\"{}\"]\n",
            binary.display()
        ),
    )
}

/// Deploys the scraped time app (v1) and waits until Prometheus has latency figures of it.
async fn deploy(prefix: &str, replicas: i32) -> anyhow::Result<App> {
    let ns = TestNs::new(prefix).await?;
    ns.apply_yaml(&scraped_manifest(replicas, &[], "time-app:v1"))
        .await?;
    testkit::wait_sts_ready(&ns, STS, replicas, SETTLE).await?;
    let data = pod_data(&ns, replicas).await?;
    let app = App { ns, replicas, data };
    let query = format!(
        r#"sum(rate(http_request_duration_seconds_count{{namespace="{}"}}[30s])) > 0"#,
        app.name()
    );
    let t0 = Instant::now();
    while query_value(&query).await.is_none() {
        ensure!(
            t0.elapsed() < Duration::from_secs(90),
            "Prometheus at {} has no figures of namespace {} after 90s: is it up (`devcluster up`)?",
            prometheus_url(),
            app.name()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(app)
}

/// The first value of an instant query, `None` without one.
async fn query_value(query: &str) -> Option<f64> {
    let answer: serde_json::Value = testkit::http()
        .post(format!("{}/api/v1/query", prometheus_url()))
        .form(&[("query", query)])
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    answer
        .pointer("/data/result/0/value/1")?
        .as_str()?
        .parse()
        .ok()
}

async fn record(app: &App) -> anyhow::Result<serde_json::Value> {
    let sts = app.ns.api::<StatefulSet>().get(STS).await?;
    let text = sts
        .metadata
        .annotations
        .and_then(|a| a.get(ANNOTATION_KEY).cloned())
        .unwrap_or_default();
    Ok(serde_json::from_str(&text).unwrap_or_default())
}

async fn assert_back_on_v1(app: &App) -> anyhow::Result<()> {
    app.assert_all_on("v1").await?;
    assert_eq!(phase(app).await?, "RolledBack");
    app.assert_data_kept().await
}

/// `rollout STRATEGY time-app -f FILE FLAGS` with the metric gate `gate` on the devcluster's
/// Prometheus analysed every 2 s, and HTTP gates lenient enough for a release that fails a few
/// percent of its answers (3 s windows, half of the probes).
fn analysed(strategy: &str, file: &ManifestFile, gate: &str, flags: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [strategy, STS, "-f", &file.arg()]
        .iter()
        .chain(flags)
        .map(|a| a.to_string())
        .collect();
    args.extend(
        [
            "--probe-window",
            "3s",
            "--min-success-ratio",
            "0.5",
            "--gate-prometheus",
            gate,
            "--prometheus-url",
            &prometheus_url(),
            "--analysis-interval",
            "2s",
            "--timeout",
            "90s",
        ]
        .map(String::from),
    );
    args
}

/// Waits (at most [`SETTLE`]) until the run holds (`what`: the hold, the bake), with its
/// record in phase Paused; a rollback before that fails the test.
async fn wait_paused(app: &App, what: &str) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let r = record(app).await?;
        if r["phase"] == "Paused" {
            return Ok(());
        }
        ensure!(
            r["phase"] != "RollingBack" && r["phase"] != "RolledBack",
            "rolled back before {what}: {r}"
        );
        ensure!(t0.elapsed() < SETTLE, "no {what} after {SETTLE:?}: {r}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// GETs of `/` to the pods with these ordinals, in turn, `every` apart, at most `count` of
/// them: a background task the caller aborts.
async fn load(
    app: &App,
    ordinals: &[i32],
    count: usize,
    every: Duration,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let http = testkit::http();
    let mut urls = Vec::new();
    for ordinal in ordinals {
        let ip = testkit::pod_ip(&app.ns, &pod_name(*ordinal)).await?;
        urls.push(format!("http://{ip}:8080/"));
    }
    Ok(tokio::spawn(async move {
        for i in 0..count {
            let _ = http.get(&urls[i % urls.len()]).send().await;
            tokio::time::sleep(every).await;
        }
    }))
}

#[tokio::test]
async fn a_slow_release_that_answers_every_probe_fails_its_p95_against_stable() -> anyhow::Result<()>
{
    let app = deploy("metric-p95", 3).await?;
    let file = ManifestFile::write(
        &app,
        &scraped_manifest(3, &[("LATENCY_MS", "300")], "time-app:v2"),
    )?;
    let gate = format!("{P95} <= 1.5 * stable + 0.05");
    let url = prometheus_url();
    let run = app
        .rollout(&[
            "canary",
            STS,
            "-f",
            &file.arg(),
            "--steps",
            "34,100",
            "--probe-window",
            "3s",
            "--gate-prometheus",
            &gate,
            "--prometheus-url",
            &url,
            "--timeout",
            "90s",
        ])
        .await?;
    run.expect(ExitCode::GateFailed)?;
    // The HTTP gate passed every probe (300 ms is within its 2 s timeout); the metric gate did
    // not, and says by how much.
    assert!(
        run.stderr.contains("metric gate failed") && run.stderr.contains("stable:"),
        "{}",
        run.describe()
    );
    assert!(
        !run.stderr.contains("HTTP gate failed"),
        "{}",
        run.describe()
    );
    assert_back_on_v1(&app).await?;
    app.cleanup().await;
    Ok(())
}

/// `--bake` after a rolling update: every pod runs v2 (2 % of its answers are errors), the
/// run keeps analysing, and the relative condition (errors at most stable's plus 10) compares
/// with stable as Prometheus had it before the last pod moved, since no stable pod is left.
/// Traffic during the bake piles the errors up past that: rolled back during the bake.
#[tokio::test]
async fn a_bake_whose_errors_pile_up_against_stable_before_it_is_rolled_back() -> anyhow::Result<()>
{
    let app = deploy("metric-bake", 3).await?;
    let file = ManifestFile::write(
        &app,
        &scraped_manifest(3, &[("FAIL_RATE", "0.02")], "time-app:v2"),
    )?;
    let gate = format!("{ERRORS} <= stable + 10");
    let args = analysed("rolling", &file, &gate, &["--bake", "3m"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = rollout_command(app.name(), &args).spawn()?;
    wait_paused(&app, "the bake").await?;
    app.assert_all_on("v2").await?;
    // Traffic to every pod from here, bounded in count and time.
    let load = load(&app, &[0, 1, 2], 6000, Duration::from_millis(10)).await?;
    let run = finish_within(child, &args.join(" "), RUN_LIMIT).await;
    load.abort();
    let run = run?;
    run.expect(ExitCode::GateFailed)?;
    run.said(&[
        "analysis FAILED",
        "metric gate failed",
        "(stable: 0)",
        "stable as Prometheus had it at",
    ])?;
    let r = record(&app).await?;
    ensure!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("continuous analysis")),
        "the record says why: {r}"
    );
    assert_back_on_v1(&app).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_holding_canary_whose_errors_pile_up_is_rolled_back_during_the_hold() -> anyhow::Result<()>
{
    let app = deploy("metric-hold", 3).await?;
    let file = ManifestFile::write(
        &app,
        &scraped_manifest(3, &[("FAIL_RATE", "0.05")], "time-app:v2"),
    )?;
    let bound = 5.0;
    let gate = format!("{ERRORS} < {bound}");
    let args = analysed("canary", &file, &gate, &["--weight", "34"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = rollout_command(app.name(), &args).spawn()?;
    // The hold: the canary passed its step's gates and the run keeps analysing (it does not
    // exit at the hold as it would without --analysis-interval).
    wait_paused(&app, "the hold").await?;
    let errors_query = ERRORS.replace("{namespace}", app.name()).replace(
        "{revision}",
        record(&app).await?["target"]["revision"]
            .as_str()
            .unwrap_or(""),
    );
    // Traffic to the canary (pod 2) from here: its 5 % errors add up past the bound. Bounded
    // in count and time. The load runs on its own; this loop watches Prometheus and the record
    // every 250 ms, so the delay is measured to that precision.
    let load = load(&app, &[2], 3000, Duration::from_millis(20)).await?;
    let mut bad_seen: Option<Instant> = None;
    let mut rollback_seen: Option<Instant> = None;
    let load_start = Instant::now();
    while load_start.elapsed() < Duration::from_secs(120) {
        if bad_seen.is_none() && query_value(&errors_query).await.is_some_and(|v| v >= bound) {
            bad_seen = Some(Instant::now());
        }
        let phase = record(&app).await?["phase"].clone();
        if phase == "RollingBack" || phase == "RolledBack" {
            rollback_seen = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    load.abort();
    let run = finish_within(child, &args.join(" "), RUN_LIMIT).await?;
    println!("{}", run.stderr);
    run.expect(ExitCode::GateFailed)?;
    assert!(
        run.stderr.contains("analysis FAILED") && run.stderr.contains("metric gate failed"),
        "{}",
        run.describe()
    );
    let r = record(&app).await?;
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("continuous analysis")),
        "the record says why: {r}"
    );
    assert_back_on_v1(&app).await?;
    match (bad_seen, rollback_seen) {
        (Some(bad), Some(back)) => println!(
            "metric gate delay: the error count crossed {bound} (as this test saw it in Prometheus); the rollback began {:.1}s later",
            back.saturating_duration_since(bad).as_secs_f64()
        ),
        other => println!("metric gate delay not measured: {other:?}"),
    }
    if let Some(bad) = bad_seen {
        println!(
            "bad figure seen {:.1}s after the load began",
            bad.saturating_duration_since(load_start).as_secs_f64()
        );
    }
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_query_with_no_data_is_undecided_then_times_out_never_passes() -> anyhow::Result<()> {
    let app = deploy("metric-nodata", 2).await?;
    let url = prometheus_url();
    let run = app
        .rollout(&[
            "rolling",
            STS,
            "--image",
            "time-app:v2",
            "--probe-window",
            "2s",
            "--gate-prometheus",
            r#"sum(no_such_metric{namespace="{namespace}",pod=~"{pods}"}) < 1"#,
            "--prometheus-url",
            &url,
            "--timeout",
            "25s",
        ])
        .await?;
    run.expect(ExitCode::TimedOut)?;
    run.said(&["no data for the new revision", "stayed undecided"])?;
    assert_back_on_v1(&app).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_prometheus_or_a_broken_query_is_refused_before_any_write(
) -> anyhow::Result<()> {
    let app = deploy("metric-refused", 1).await?;
    let before = app.ns.api::<StatefulSet>().get(STS).await?;
    let url = prometheus_url();
    let cases: [(&str, &str, &[&str]); 2] = [
        (
            r#"sum(up{namespace="{namespace}"}) < 1"#,
            "http://127.0.0.1:9",
            &[
                "could not query Prometheus at http://127.0.0.1:9",
                "nothing was changed",
            ],
        ),
        (
            // rate() of an instant vector: Prometheus's parser refuses it.
            r#"sum(rate(up{namespace="{namespace}"})) < 1"#,
            &url,
            &["refused the query", "range vector", "nothing was changed"],
        ),
    ];
    for (gate, url, words) in cases {
        let run = app
            .rollout(&[
                "canary",
                STS,
                "--image",
                "time-app:v2",
                "--weight",
                "50",
                "--gate-prometheus",
                gate,
                "--prometheus-url",
                url,
            ])
            .await?;
        run.expect(ExitCode::BadInput)?;
        for w in words {
            assert!(run.stderr.contains(w), "{w}: {}", run.describe());
        }
    }
    let after = app.ns.api::<StatefulSet>().get(STS).await?;
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "nothing was written"
    );
    app.cleanup().await;
    Ok(())
}

/// A canary with a metric gate, held at 34 %: `rollout promote` from a shell without the
/// Prometheus URL is refused with nothing changed (its gates would stay undecided until the
/// step's deadline), and goes on once the URL is given.
#[tokio::test]
async fn a_promote_without_the_prometheus_url_is_refused_until_it_is_given() -> anyhow::Result<()> {
    let app = deploy("metric-promote", 3).await?;
    let file = ManifestFile::write(&app, &scraped_manifest(3, &[], "time-app:v2"))?;
    let gate = format!("{ERRORS} <= stable + 10");
    let url = prometheus_url();
    app.rollout(&[
        "canary",
        STS,
        "-f",
        &file.arg(),
        "--weight",
        "34",
        "--probe-window",
        "2s",
        "--gate-prometheus",
        &gate,
        "--prometheus-url",
        &url,
    ])
    .await?
    .expect(ExitCode::Done)?;
    let before = app.statefulset().await?.metadata.resource_version;
    let child = rollout_command(app.name(), &["promote", STS])
        .env_remove("ROLLOUT_PROMETHEUS_URL")
        .spawn()?;
    let refused = finish_within(child, "promote", RUN_LIMIT).await?;
    refused.expect(ExitCode::BadInput)?.said(&[
        "Prometheus queries",
        "--prometheus-url URL",
        "nothing was changed",
    ])?;
    ensure!(
        app.statefulset().await?.metadata.resource_version == before,
        "the refused promote wrote to the set"
    );
    app.rollout(&["promote", STS, "--prometheus-url", &url])
        .await?
        .expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
