//! The record on the StatefulSet is data, never authority, and secrets stay secret: records
//! edited by hand (not JSON, a newer version, a planted gate command, another set planted as the
//! twin) are reported by `status`, never run or deleted on, and `abort` still returns the set
//! to its stable revision with every pod's data; env values of pod templates never appear in
//! `status -o json` or `plan -o json`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{ListParams, Patch, PatchParams};
use rollout::model::exit::ExitCode;
use rollout::model::gate::CommandGate;
use rollout::model::plan::Step;
use rollout::model::state::{Phase, Rollback, RolloutState, ANNOTATION_KEY};
use rollout::model::twin::{DataMode, Twin, TwinRole};

use crate::support::{statefulset_document, time_app_manifest, App, ManifestFile, SETTLE, STS};

/// The time app with a canary held at half its pods on v2.
async fn held_canary(prefix: &str) -> anyhow::Result<App> {
    let app = App::deploy(prefix, 2, false).await?;
    app.rollout(&["canary", STS, "--image", "time-app:v2", "--weight", "50"])
        .await?
        .expect(ExitCode::Done)?;
    Ok(app)
}

async fn annotation(app: &App) -> anyhow::Result<Option<String>> {
    Ok(app
        .statefulset()
        .await?
        .metadata
        .annotations
        .unwrap_or_default()
        .get(ANNOTATION_KEY)
        .cloned())
}

/// Writes the record annotation by hand, as anyone who can patch the StatefulSet can.
async fn plant(app: &App, text: &str) -> anyhow::Result<()> {
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_KEY: text}}});
    app.ns
        .api::<StatefulSet>()
        .patch(STS, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn record(app: &App) -> anyhow::Result<RolloutState> {
    let text = annotation(app).await?.unwrap_or_default();
    Ok(RolloutState::from_annotation(STS, &text)?)
}

/// `status` reports the set and what is wrong with the record; `abort` brings every pod back to
/// v1 on its own data and leaves no bad record behind.
async fn status_reports_and_abort_returns(app: &App, problem: &str) -> anyhow::Result<()> {
    let status = app.rollout(&["status", STS]).await?;
    status.expect(ExitCode::Done)?;
    assert!(
        status.stdout.contains("NOT USED") && status.stdout.contains(problem),
        "{}",
        status.describe()
    );
    assert!(
        status.stdout.contains("2 replicas"),
        "{}",
        status.describe()
    );
    let json = app.rollout(&["status", STS, "-o", "json"]).await?;
    json.expect(ExitCode::Done)?;
    let json = json.json()?;
    assert_eq!(json["replicas"], 2, "{json}");
    assert!(
        json["recordProblem"]
            .as_str()
            .unwrap_or_default()
            .contains(problem),
        "{json}"
    );
    let abort = app.rollout(&["abort", STS]).await?;
    abort.expect(ExitCode::Done)?;
    assert!(
        abort.stderr.contains("back on revision"),
        "{}",
        abort.describe()
    );
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;
    assert_eq!(annotation(app).await?, None, "the bad record is removed");
    Ok(())
}

#[tokio::test]
async fn a_record_that_is_not_json_is_reported_and_abort_returns_to_stable() -> anyhow::Result<()> {
    let app = held_canary("trust-json").await?;
    plant(&app, "{not json").await?;
    let promote = app.rollout(&["promote", STS]).await?;
    assert_ne!(promote.code, Some(0), "{}", promote.describe());
    assert!(
        promote
            .stderr
            .contains("`rollout abort time-app` returns it"),
        "{}",
        promote.describe()
    );
    status_reports_and_abort_returns(&app, "reading the rollout record").await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_record_of_a_newer_version_is_reported_and_abort_returns_to_stable() -> anyhow::Result<()>
{
    let app = held_canary("trust-newer").await?;
    let mut json: serde_json::Value =
        serde_json::from_str(&annotation(&app).await?.unwrap_or_default())?;
    json["version"] = serde_json::json!(99);
    plant(&app, &json.to_string()).await?;
    status_reports_and_abort_returns(&app, "has version 99").await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_gate_command_planted_in_the_record_never_runs() -> anyhow::Result<()> {
    let app = held_canary("trust-gate").await?;
    let dir = tempfile_dir(&app)?;
    let marker = dir.join("planted-gate-ran");
    let mut planted = record(&app).await?;
    planted.config.gates.command = Some(CommandGate::shell(&format!("touch {}", marker.display())));
    plant(&app, &planted.to_annotation()?).await?;
    let before = app.statefulset().await?;

    for args in [&["promote", STS][..], &["resume", STS][..]] {
        let run = app.rollout(args).await?;
        run.expect(ExitCode::BadInput)?;
        assert!(
            run.stderr.contains("gates on a command")
                && run
                    .stderr
                    .contains("rollout promote time-app --gate-command '...'")
                && run.stderr.contains("rollout abort time-app"),
            "{}",
            run.describe()
        );
    }
    let after = app.statefulset().await?;
    assert!(!marker.exists(), "the planted command ran");
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(
        after
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_KEY)),
        before
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_KEY)),
        "the record was not written"
    );

    let status = app.rollout(&["status", STS]).await?;
    status.expect(ExitCode::Done)?;
    assert!(status.stdout.contains("Paused"), "{}", status.describe());
    app.rollout(&["abort", STS]).await?.expect(ExitCode::Done)?;
    assert!(!marker.exists(), "the planted command ran");
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;
    let _ = std::fs::remove_dir_all(&dir);
    app.cleanup().await;
    Ok(())
}

/// A held canary whose record names `victim` (another application's StatefulSet, with a claim)
/// as its second set, rolling back with steps that scale it to 0 and delete it. `abort` must
/// leave it with its replica and its claim, and bring the canary's own set back to v1; gives
/// what `abort` said.
async fn abort_with_a_planted_twin(prefix: &str, victim: &str) -> anyhow::Result<String> {
    let app = held_canary(prefix).await?;
    let manifest = statefulset_document(&time_app_manifest(1, false, &[], "time-app:v1"))
        .replace("time-app", victim)
        .replace(&format!("image: {victim}:v1"), "image: time-app:v1");
    app.ns.apply_yaml(&manifest).await?;
    devcluster::testkit::wait_sts_ready(&app.ns, victim, 1, SETTLE).await?;
    let claims_before = claims_of(&app, victim).await?;
    assert!(!claims_before.is_empty(), "{victim} has no claim");

    let mut planted = record(&app).await?;
    planted.twin = Some(Twin {
        role: TwinRole::Green,
        set: victim.into(),
        home: STS.into(),
        services: vec![],
        preview: None,
        data: DataMode::Fresh,
        keep_data: false,
        template: serde_json::json!({}),
    });
    planted.phase = Phase::RollingBack;
    planted.pause = None;
    planted.rollback = Some(Rollback::new(vec![
        Step::Scale {
            set: victim.into(),
            replicas: 0,
        },
        Step::RemoveTwin { set: victim.into() },
        Step::RestoreTemplate,
        Step::ReplaceStuckPods,
    ]));
    plant(&app, &planted.to_annotation()?).await?;

    let abort = app.rollout(&["abort", STS]).await?;
    abort.expect(ExitCode::Done)?;
    let set = app.ns.api::<StatefulSet>().get(victim).await?;
    assert_eq!(
        set.spec.and_then(|s| s.replicas),
        Some(1),
        "{}",
        abort.describe()
    );
    assert_eq!(claims_of(&app, victim).await?, claims_before);
    devcluster::testkit::wait_sts_ready(&app.ns, victim, 1, SETTLE).await?;
    app.assert_all_on("v1").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(abort.stderr)
}

#[tokio::test]
async fn a_set_planted_as_the_twin_keeps_its_replicas_and_claims() -> anyhow::Result<()> {
    // Not a name rollout gives a second set: the record is not used at all.
    let said = abort_with_a_planted_twin("trust-victim", "victim").await?;
    assert!(
        said.contains("second set victim is not named after its home set time-app")
            && said.contains("back on revision"),
        "{said}"
    );
    Ok(())
}

#[tokio::test]
async fn a_set_named_like_a_twin_but_not_made_by_rollout_is_left_alone() -> anyhow::Result<()> {
    // A name rollout could have given, on a set it did not make: the record passes its checks,
    // and the rollback leaves the set alone for want of rollout's mark on it.
    let said = abort_with_a_planted_twin("trust-lookalike", "time-app-bg1").await?;
    assert!(
        said.contains("StatefulSet time-app-bg1 was not created by this rollout, so it is left as it is")
            && said.contains("StatefulSet time-app-bg1 was not created by this rollout, so it and its volumes are left as they are"),
        "{said}"
    );
    Ok(())
}

#[tokio::test]
async fn env_values_never_appear_in_plan_or_status_output() -> anyhow::Result<()> {
    let app = App::deploy("trust-secret", 2, false).await?;
    let manifest = time_app_manifest(2, false, &[("PASSWORD", "hunter2")], "time-app:v2");
    let file = ManifestFile::write(&app, &manifest)?;
    let plan = app
        .rollout(&["plan", "recreate", STS, "-f", &file.arg(), "-o", "json"])
        .await?;
    plan.expect(ExitCode::Done)?;
    assert!(!plan.stdout.contains("hunter2"), "{}", plan.describe());
    assert!(!plan.stderr.contains("hunter2"), "{}", plan.describe());

    let run = app
        .rollout(&["recreate", STS, "-f", &file.arg(), "-o", "json"])
        .await?;
    run.expect(ExitCode::Done)?;
    assert!(!run.stdout.contains("hunter2"), "{}", run.describe());
    assert!(!run.stderr.contains("hunter2"), "{}", run.describe());
    // The record on the set keeps the real template (a later run writes it back)...
    assert!(
        annotation(&app)
            .await?
            .unwrap_or_default()
            .contains("hunter2"),
        "the record lost the template's env value"
    );
    // ...and status shows the name, never the value.
    let status = app.rollout(&["status", STS, "-o", "json"]).await?;
    status.expect(ExitCode::Done)?;
    assert!(!status.stdout.contains("hunter2"), "{}", status.describe());
    assert!(status.stdout.contains("PASSWORD"), "{}", status.describe());
    app.assert_all_on("v2").await?;
    app.cleanup().await;
    Ok(())
}

fn tempfile_dir(app: &App) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("{}-trust", app.name()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

async fn claims_of(app: &App, set: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let suffix = format!("-{set}-0");
    Ok(app
        .ns
        .api::<PersistentVolumeClaim>()
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| {
            let name = c.metadata.name?;
            let uid = c.metadata.uid.unwrap_or_default();
            name.ends_with(&suffix).then_some((name, uid))
        })
        .collect())
}

#[tokio::test]
async fn a_held_canary_is_promoted_with_its_gate_command_given_again() -> anyhow::Result<()> {
    // What a CI job that holds and an operator who promotes later both type.
    let app = App::deploy("trust-given", 2, false).await?;
    let dir = tempfile_dir(&app)?;
    let gate = |n: u32| format!("touch {}/gate-ran-{n}", dir.display());
    app.rollout(&[
        "canary",
        STS,
        "--image",
        "time-app:v2",
        "--weight",
        "50",
        "--gate-command",
        &gate(1),
    ])
    .await?
    .expect(ExitCode::Done)?;
    assert!(
        dir.join("gate-ran-1").exists(),
        "the command gate did not run"
    );

    let refused = app.rollout(&["promote", STS]).await?;
    refused.expect(ExitCode::BadInput)?;
    assert!(
        refused
            .stderr
            .contains("rollout promote time-app --gate-command '...'"),
        "{}",
        refused.describe()
    );
    assert!(!dir.join("gate-ran-2").exists());

    app.rollout(&["promote", STS, "--gate-command", &gate(2)])
        .await?
        .expect(ExitCode::Done)?;
    assert!(
        dir.join("gate-ran-2").exists(),
        "the given command gate did not run"
    );
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    let _ = std::fs::remove_dir_all(&dir);
    app.cleanup().await;
    Ok(())
}
