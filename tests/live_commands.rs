//! End-to-end tests of the commands that steer a rollout while it runs or after it stopped,
//! against the devcluster: `promote`, `pause`/`resume` and `abort` from another terminal act on
//! a live run at once; `status --watch` follows a run to its end and exits with its code; `plan`
//! changes nothing; `undo` recovers an OrderedReady set wedged by a release rollout never saw
//! (kubernetes #67250).

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "e2e/support.rs"]
mod support;

use std::time::Duration;

use anyhow::{ensure, Context};
use devcluster::testkit;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use rollout::model::exit::ExitCode;
use rollout::model::state::{PauseReason, Phase, RolloutState};
use support::{rollout_command, App, Run, STS};

/// Longest wait for a live run to reach a state.
const REACH: Duration = Duration::from_secs(120);

fn record_of(sts: Option<&StatefulSet>) -> Option<RolloutState> {
    let sts = sts?;
    RolloutState::from_annotations(STS, sts.metadata.annotations.as_ref())
        .ok()
        .flatten()
}

/// Waits (on a watch) until the rollout record satisfies `check`.
async fn wait_record(
    app: &App,
    check: impl Fn(&RolloutState) -> bool + Send + 'static,
) -> anyhow::Result<RolloutState> {
    let sts = testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        REACH,
        move |s: Option<&StatefulSet>| record_of(s).is_some_and(|r| check(&r)),
    )
    .await?;
    record_of(Some(&sts)).context("no record")
}

/// Starts `rollout ARGS` in the background (as another terminal would).
fn start(app: &App, args: &[&str]) -> anyhow::Result<tokio::process::Child> {
    rollout_command(app.name(), args)
        .spawn()
        .context("starting rollout")
}

async fn finish(child: tokio::process::Child, args: &str) -> anyhow::Result<Run> {
    support::finish_within(child, args, support::RUN_LIMIT).await
}

fn held(r: &RolloutState) -> bool {
    r.phase == Phase::Paused && matches!(r.pause, Some(PauseReason::Step { until: None }))
}

#[tokio::test]
async fn a_waiting_canary_is_promoted_from_another_terminal() -> anyhow::Result<()> {
    let app = App::deploy("live-promote", 3, false).await?;
    let args = [
        "canary",
        STS,
        "--image",
        "time-app:v2",
        "--weight",
        "34",
        "--wait",
        "--probe-window",
        "2s",
    ];
    let run = start(&app, &args)?;
    let at_hold = wait_record(&app, held).await?;
    ensure!(
        at_hold.plan.updated_after(at_hold.current_step) == Some(1),
        "one pod of three at the hold: {at_hold:?}"
    );
    let promoted = app.rollout(&["promote", STS]).await?;
    promoted.expect(ExitCode::Done)?;
    ensure!(
        promoted.stderr.contains("the running rollout"),
        "promote should leave the work to the live run: {}",
        promoted.describe()
    );
    let first = finish(run, &args.join(" ")).await?;
    first.expect(ExitCode::Done)?;
    ensure!(
        first.stderr.contains("changed by another command"),
        "{}",
        first.describe()
    );
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn pause_and_resume_steer_a_live_run() -> anyhow::Result<()> {
    let app = App::deploy("live-pause", 3, false).await?;
    let args = [
        "rolling",
        STS,
        "--image",
        "time-app:v2",
        "--pause",
        "2m",
        "--probe-window",
        "2s",
    ];
    let run = start(&app, &args)?;
    // After the first batch the run waits two minutes; `pause` makes that a pause only
    // `resume` ends.
    wait_record(&app, |r| {
        matches!(r.pause, Some(PauseReason::Step { until: Some(_) }))
    })
    .await?;
    app.rollout(&["pause", STS]).await?.expect(ExitCode::Done)?;
    // The run stops at that safe point and exits 0, saying how to go on: a CI job never hangs
    // on a pause.
    let first = finish(run, &args.join(" ")).await?;
    first.expect(ExitCode::Done)?;
    ensure!(
        first.stderr.contains("is paused by `rollout pause`")
            && first
                .stderr
                .contains(&format!("`rollout resume {STS}` continues")),
        "{}",
        first.describe()
    );
    let paused = wait_record(&app, |r| matches!(r.pause, Some(PauseReason::User))).await?;
    let status = app.rollout(&["status", STS, "-o", "json"]).await?;
    status.expect(ExitCode::Done)?;
    let json = status.json()?;
    ensure!(
        json["rollout"]["phase"] == "Paused" && !json["lock"]["holder"].is_string(),
        "paused, and no run holds the lock: {json}"
    );
    // `resume` runs the rest in its own process; it takes the pause again from its start, and
    // promote --full from another terminal skips the rest.
    let resumed = start(&app, &["resume", STS])?;
    wait_record(&app, move |r| {
        r.current_step >= paused.current_step
            && matches!(r.pause, Some(PauseReason::Step { until: Some(_) }))
    })
    .await?;
    app.rollout(&["promote", STS, "--full"])
        .await?
        .expect(ExitCode::Done)?;
    finish(resumed, "resume").await?.expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn abort_returns_a_live_run_to_stable_and_status_watch_reports_it() -> anyhow::Result<()> {
    let app = App::deploy("live-abort", 3, false).await?;
    let args = [
        "canary",
        STS,
        "--image",
        "time-app:v2",
        "--weight",
        "34",
        "--wait",
        "--probe-window",
        "2s",
    ];
    let run = start(&app, &args)?;
    wait_record(&app, held).await?;
    let watch = start(&app, &["status", STS, "--watch", "--timeout", "3m"])?;
    let aborted = app.rollout(&["abort", STS]).await?;
    aborted.expect(ExitCode::Done)?;
    let first = finish(run, &args.join(" ")).await?;
    first.expect(ExitCode::GateFailed)?;
    let watched = finish(watch, "status --watch").await?;
    watched.expect(ExitCode::GateFailed)?;
    ensure!(
        watched.stdout.contains("phase:     Aborted"),
        "{}",
        watched.describe()
    );
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;
    ensure!(
        app.ns
            .api::<Lease>()
            .get_opt(&format!("rollout-{STS}"))
            .await?
            .is_none(),
        "the lease is released"
    );
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn plan_prints_the_steps_and_changes_nothing() -> anyhow::Result<()> {
    let app = App::deploy("live-plan", 3, false).await?;
    let before = app.statefulset().await?;
    let plan = app
        .rollout(&[
            "plan",
            "canary",
            STS,
            "--image",
            "time-app:v2",
            "--steps",
            "34,100",
            "-o",
            "json",
        ])
        .await?;
    plan.expect(ExitCode::Done)?;
    let json = plan.json()?;
    let steps: Vec<&str> = json["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .filter_map(|s| s["type"].as_str())
        .collect();
    ensure!(
        steps
            == [
                "setTemplateAndFreeze",
                "setPartition",
                "gate",
                "setPartition",
                "gate"
            ],
        "{steps:?}"
    );
    let after = app.statefulset().await?;
    ensure!(
        after.metadata.generation == before.metadata.generation
            && after.metadata.annotations == before.metadata.annotations,
        "plan changed the StatefulSet"
    );
    app.assert_all_on("v1").await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn undo_recovers_an_ordered_set_wedged_by_a_release_rollout_never_saw() -> anyhow::Result<()>
{
    let app = App::deploy("live-undo", 3, true).await?;
    let good = app
        .ns
        .api::<StatefulSet>()
        .get(STS)
        .await?
        .status
        .and_then(|s| s.current_revision)
        .unwrap_or_default();
    // A bad release applied by hand (as `kubectl apply` would): its first pod never gets Ready,
    // and an OrderedReady set waits on it forever.
    let bad = serde_json::json!({"spec": {"template": {"spec": {"containers": [{
        "name": "app",
        "image": "time-app:v3",
        "env": [{"name": "FAIL_RATE", "value": "1"}],
    }]}}}});
    app.ns
        .api::<StatefulSet>()
        .patch(STS, &PatchParams::default(), &Patch::Strategic(&bad))
        .await?;
    testkit::wait_for(
        app.ns.api::<Pod>(),
        &support::pod_name(2),
        REACH,
        |p: Option<&Pod>| {
            p.is_some_and(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("controller-revision-hash"))
                    .is_some_and(|r| *r != good)
                    && p.status
                        .as_ref()
                        .and_then(|s| s.container_statuses.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.restart_count > 0 || !c.ready))
                    && !testkit::pod_ready(p)
            })
        },
    )
    .await?;
    let history = app.rollout(&["history", STS, "-o", "json"]).await?;
    history.expect(ExitCode::Done)?;
    ensure!(
        history.json()?.as_array().map(Vec::len) == Some(2),
        "{}",
        history.describe()
    );
    let lines = app.rollout(&["history", STS, "-o", "jsonl"]).await?;
    lines.expect(ExitCode::Done)?;
    let revisions: Vec<serde_json::Value> = lines
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        revisions.len() == 2 && revisions[1]["update"] == true,
        "a line per revision, the bad one the template: {}",
        lines.describe()
    );
    let undone = app.rollout(&["undo", STS, "--timeout", "2m"]).await?;
    undone.expect(ExitCode::Done)?;
    ensure!(
        undone.stderr.contains("deleted pod time-app-2"),
        "{}",
        undone.describe()
    );
    app.wait_settled().await?;
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
