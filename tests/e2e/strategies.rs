//! Each strategy run to completion on the time app: every pod ends on the new revision, the
//! record says done, and every ordinal kept its claim and its visits. The canary holds at the
//! weight it was given, with about that share of the Service's traffic, until `promote`.

use rollout::model::exit::ExitCode;

use crate::support::{revisions, versions, versions_through_service, App, STS};

/// `rollout status STS -o json`, read back: the phase of the rollout record.
pub async fn phase(app: &App) -> anyhow::Result<String> {
    let run = app.rollout(&["status", STS, "-o", "json"]).await?;
    run.expect(ExitCode::Done)?;
    let json = run.json()?;
    Ok(json
        .pointer("/phase")
        .or_else(|| json.pointer("/rollout/phase"))
        .or_else(|| json.pointer("/state/phase"))
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_string())
}

/// Runs `args`, expects done, and checks the end state a user would check.
async fn run_to_completion(app: &App, args: &[&str]) -> anyhow::Result<()> {
    app.rollout(args).await?.expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    assert_eq!(app.image().await?, "time-app:v2");
    assert_eq!(phase(app).await?, "Succeeded");
    app.assert_data_kept().await
}

#[tokio::test]
async fn rolling_update_moves_every_pod_and_keeps_their_data() -> anyhow::Result<()> {
    let app = App::deploy("rolling", 3, false).await?;
    run_to_completion(&app, &["rolling", STS, "--image", "time-app:v2"]).await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn ramped_update_moves_every_pod_and_keeps_their_data() -> anyhow::Result<()> {
    let app = App::deploy("ramped", 4, false).await?;
    run_to_completion(
        &app,
        &[
            "ramped",
            STS,
            "--image",
            "time-app:v2",
            "--steps",
            "1,2,4",
            "--pause",
            "1s",
        ],
    )
    .await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn canary_steps_run_unattended_to_every_pod() -> anyhow::Result<()> {
    let app = App::deploy("canary-steps", 3, false).await?;
    run_to_completion(
        &app,
        &[
            "canary",
            STS,
            "--image",
            "time-app:v2",
            "--steps",
            "34,100",
            "--pause",
            "2s",
        ],
    )
    .await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn canary_weight_holds_one_pod_in_five_until_promote() -> anyhow::Result<()> {
    let app = App::deploy("canary-hold", 5, false).await?;
    app.rollout(&["canary", STS, "--image", "time-app:v2", "--weight", "20"])
        .await?
        .expect(ExitCode::Done)?;

    // One pod of five, the highest ordinal, runs the new version; the rest stay put.
    let versions_now = versions(&app.ns, 5).await?;
    let new: Vec<_> = versions_now
        .iter()
        .filter(|(_, v)| v.as_str() == "v2")
        .map(|(p, _)| p.clone())
        .collect();
    assert_eq!(new, ["time-app-4"], "{versions_now:?}");
    assert_eq!(phase(&app).await?, "Paused");
    let revs = revisions(&app.ns).await?;
    assert_ne!(revs["time-app-4"], revs["time-app-0"]);

    // Through the Service, about a fifth of the answers come from it: 300 requests, expected
    // 60, a binomial spread of about 7; 30..=100 leaves no room for flakiness but catches 0 %
    // or 40 %.
    let spread = versions_through_service(&app.ns, 300).await?;
    eprintln!("canary at 20 % of 5 pods, 300 requests through the Service: {spread:?}");
    let v2 = spread.get("v2").copied().unwrap_or(0);
    assert_eq!(spread.values().sum::<usize>(), 300);
    assert_eq!(
        spread.keys().filter(|k| k.starts_with('<')).count(),
        0,
        "errors: {spread:?}"
    );
    assert!(
        (30..=100).contains(&v2),
        "v2 answered {v2} of 300: {spread:?}"
    );

    app.rollout(&["promote", STS])
        .await?
        .expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    assert_eq!(phase(&app).await?, "Succeeded");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}
