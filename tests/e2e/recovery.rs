//! Runs that die, collide or are taken back: a SIGKILLed run leaves a record that `status`
//! reports truthfully and that `resume` finishes or `abort` reverts; a second run at the same
//! time is refused naming the first; a run killed in the middle of its rollback is finished by
//! `resume`; `undo` returns to the previous image and `history` lists the revisions.

use std::time::Duration;

use devcluster::testkit;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use rollout::model::exit::ExitCode;

use crate::strategies::phase;
use crate::support::{
    failing_release_manifest, revisions, rollout_command, versions, App, ManifestFile, SETTLE, STS,
};

/// Starts `rollout rolling` to v2 with `pause` between batches, and waits until its first batch
/// is out: the highest pod runs the new revision and is Ready (its gate is running), the others
/// have not moved.
async fn start_until_first_batch(app: &App, pause: &str) -> anyhow::Result<tokio::process::Child> {
    let child = rollout_command(
        app.name(),
        &["rolling", STS, "--image", "time-app:v2", "--pause", pause],
    )
    .spawn()?;
    let replicas = app.replicas;
    testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        SETTLE,
        move |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref()).is_some_and(|st| {
                st.updated_replicas == Some(1)
                    && st.ready_replicas == Some(replicas)
                    && st.update_revision != st.current_revision
            })
        },
    )
    .await?;
    Ok(child)
}

/// Starts `rollout ARGS` and SIGKILLs it as soon as the record on StatefulSet `set` is in
/// `phase` (read from the watch, so the kill lands right after that write).
pub async fn kill_at_phase(app: &App, set: &str, args: &[&str], phase: &str) -> anyhow::Result<()> {
    let child = rollout_command(app.name(), args).spawn()?;
    let want = phase.to_string();
    let reached = testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        set,
        SETTLE,
        move |s: Option<&StatefulSet>| {
            s.and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get("rollout.dev/state"))
                .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                .is_some_and(|record| record["phase"] == want.as_str())
        },
    )
    .await;
    kill(child).await?;
    reached?;
    Ok(())
}

async fn kill(mut child: tokio::process::Child) -> anyhow::Result<()> {
    // tokio's kill is SIGKILL: the run gets no chance to tidy up.
    child.kill().await?;
    Ok(())
}

/// What `status` says after the kill: an active rollout to v2, part-way through.
async fn assert_status_tells_the_truth(app: &App) -> anyhow::Result<()> {
    let phase = phase(app).await?;
    assert!(
        phase == "Progressing" || phase == "Paused",
        "a killed run's rollout is still under way, not {phase}"
    );
    let run = app.rollout(&["status", STS, "-o", "json"]).await?;
    assert!(
        run.stdout.contains("time-app:v2"),
        "status names the target: {}",
        run.describe()
    );
    let text = app.rollout(&["status", STS]).await?;
    text.expect(ExitCode::Done)?;
    assert!(!text.stdout.trim().is_empty() || !text.stderr.trim().is_empty());
    let versions = versions(&app.ns, app.replicas).await?;
    let new = versions.values().filter(|v| v.as_str() == "v2").count();
    assert_eq!(new, 1, "only the first batch moved: {versions:?}");
    Ok(())
}

#[tokio::test]
async fn a_killed_run_is_reported_truthfully_and_resume_finishes_it() -> anyhow::Result<()> {
    let app = App::deploy("kill-resume", 3, false).await?;
    // Short pauses: `resume` continues the plan, pauses included.
    let child = start_until_first_batch(&app, "5s").await?;
    kill(child).await?;
    assert_status_tells_the_truth(&app).await?;

    app.rollout(&["resume", STS])
        .await?
        .expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    assert_eq!(phase(&app).await?, "Succeeded");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_run_is_aborted_back_to_stable() -> anyhow::Result<()> {
    let app = App::deploy("kill-abort", 3, false).await?;
    let child = start_until_first_batch(&app, "5m").await?;
    kill(child).await?;
    assert_status_tells_the_truth(&app).await?;

    app.rollout(&["abort", STS]).await?.expect(ExitCode::Done)?;
    app.assert_all_on("v1").await?;
    assert_eq!(app.image().await?, "time-app:v1");
    assert_eq!(phase(&app).await?, "Aborted");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_run_killed_in_its_rollback_is_finished_by_resume() -> anyhow::Result<()> {
    let app = App::deploy("kill-rollback", 3, false).await?;
    // A release the gate fails (500 on `/`, Ready by its `/healthz` probe), so the run rolls
    // back; it is killed once the record says so, while the pod is still being replaced.
    let file = ManifestFile::write(&app, &failing_release_manifest(3, false, "time-app:v2"))?;
    kill_at_phase(
        &app,
        STS,
        &["rolling", STS, "-f", &file.arg()],
        "RollingBack",
    )
    .await?;
    assert_eq!(
        phase(&app).await?,
        "RollingBack",
        "the kill came mid-rollback"
    );

    // No run holds the Lease any more; resume carries the rollback to its end.
    let resume = app.rollout(&["resume", STS]).await?;
    eprintln!("{}", resume.stderr);
    resume.expect(ExitCode::GateFailed)?;
    app.assert_all_on("v1").await?;
    assert_eq!(app.image().await?, "time-app:v1");
    assert_eq!(phase(&app).await?, "RolledBack");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_second_run_at_the_same_time_is_refused_naming_the_first() -> anyhow::Result<()> {
    let app = App::deploy("locked", 3, false).await?;
    let first = start_until_first_batch(&app, "5m").await?;
    let pid = first.id().unwrap_or_default();
    let lease = testkit::wait_for(
        app.ns.api::<Lease>(),
        "rollout-time-app",
        Duration::from_secs(30),
        |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_ref())
                .is_some()
        },
    )
    .await?;
    let holder = lease
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(
        holder.contains(&format!(" pid {pid} run ")),
        "the lease names the first run: {holder}"
    );

    let second = app
        .rollout(&["rolling", STS, "--image", "time-app:v3"])
        .await?;
    second.expect(ExitCode::Locked)?;
    // The lease holder is `user@host pid N run R on S`; the message names at least who and where.
    let who = holder.split(" pid ").next().unwrap_or_default();
    assert!(
        !who.is_empty() && second.stderr.contains(who),
        "the message names the holder `{holder}`: {}",
        second.describe()
    );
    // The second run changed nothing: still one pod on v2, none on v3.
    let versions = versions(&app.ns, 3).await?;
    assert_eq!(
        versions.values().filter(|v| v.as_str() == "v2").count(),
        1,
        "{versions:?}"
    );
    assert!(!versions.values().any(|v| v == "v3"), "{versions:?}");
    kill(first).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn undo_after_a_finished_rollout_restores_the_previous_image() -> anyhow::Result<()> {
    let app = App::deploy("undo", 3, false).await?;
    app.rollout(&["rolling", STS, "--image", "time-app:v2"])
        .await?
        .expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    let v2_revision = revisions(&app.ns)
        .await?
        .into_values()
        .next()
        .unwrap_or_default();

    let history = app.rollout(&["history", STS]).await?;
    history.expect(ExitCode::Done)?;
    for image in ["time-app:v1", "time-app:v2"] {
        assert!(
            history.stdout.contains(image),
            "history lists {image}: {}",
            history.describe()
        );
    }

    app.rollout(&["undo", STS]).await?.expect(ExitCode::Done)?;
    app.assert_all_on("v1").await?;
    assert_eq!(app.image().await?, "time-app:v1");
    let now = revisions(&app.ns).await?;
    assert!(now.values().all(|r| r != &v2_revision), "{now:?}");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
