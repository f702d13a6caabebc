//! Recreate on the time app, end to end: every pod on the new version on its own volume with its
//! visits, never two versions answering at once, and the downtime `rollout` reports set beside
//! the outage a client of the Service saw.

use std::time::Duration;

use rollout::model::exit::ExitCode;

use crate::bluegreen::{add_visits, run_under_traffic, switch_over, tally};
use crate::strategies::phase;
use crate::support::{App, STS};

#[tokio::test]
async fn recreate_moves_every_pod_with_its_data_and_reports_the_downtime() -> anyhow::Result<()> {
    let mut app = App::deploy("recreate", 3, false).await?;
    add_visits(&mut app).await?;
    // A client asking every 20 ms through the Service while the rollout runs.
    let (run, samples) = run_under_traffic(
        &app,
        Duration::from_millis(20),
        &["recreate", STS, "--image", "time-app:v2"],
    )
    .await?;
    run.expect(ExitCode::Done)?;

    app.assert_all_on("v2").await?;
    assert_eq!(app.image().await?, "time-app:v2");
    assert_eq!(phase(&app).await?, "Succeeded");
    app.assert_data_kept().await?;

    let scale_up = run
        .stderr
        .lines()
        .find(|l| l.contains("scale time-app to 3"))
        .unwrap_or_default();
    assert!(
        scale_up.contains("downtime ") && scale_up.contains("(no Ready pod behind the Service)"),
        "the scale-up step reports the downtime: {}",
        run.describe()
    );
    let status = app.rollout(&["status", STS, "-o", "json"]).await?;
    status.expect(ExitCode::Done)?;
    let reported = status
        .json()?
        .pointer("/record/measured/downtimeMs")
        .and_then(|m| m.as_u64())
        .unwrap_or(0);

    // The client: only v1, then (after failures) only v2; never both at once.
    let switch = switch_over(&samples, "v1", "v2").map_err(anyhow::Error::msg)?;
    let outage = switch
        .first_failure
        .map(|f| switch.first_to.saturating_sub(f))
        .unwrap_or_default();
    eprintln!(
        "recreate: {} requests {:?}; reported downtime {reported} ms; client: last v1 answer at {:?}, first v2 at {:?} ({:?} without an answer), {} failed requests between, first failure to first v2 answer {:?}",
        samples.len(),
        tally(samples.iter().map(|s| &s.outcome)),
        switch.last_from,
        switch.first_to,
        switch.gap(),
        switch.failed_between,
        outage
    );
    assert!(
        reported > 0,
        "the record holds the downtime: {}",
        status.describe()
    );
    // The client sees the outage as failed requests, or as one request the Service proxy held
    // until a new pod took it: either way as the time between its last v1 and first v2 answer.
    let reported = Duration::from_millis(reported);
    assert!(
        downtimes_agree(reported, switch.gap()),
        "rollout reported {reported:?} of downtime, a client of the Service went {:?} without an answer",
        switch.gap()
    );
    app.cleanup().await;
    Ok(())
}

/// Whether the downtime `rollout` reports (from the pods' Ready transitions) agrees with the time
/// a polling client went without an answer. The client's figure also holds its polling interval,
/// its request times and the Service proxy following the Endpoints, which a loaded machine
/// stretches; so they agree within 750 ms plus half the reported figure. That still catches a figure
/// taken from the wrong moments: a report of zero, or one counting the whole step or run.
fn downtimes_agree(reported: Duration, seen: Duration) -> bool {
    let slack = Duration::from_millis(750) + reported / 2;
    seen <= reported + slack && reported <= seen + slack
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downtimes_agree_cases() {
        let ms = Duration::from_millis;
        for (reported, seen, agree) in [
            (ms(250), ms(246), true),
            (ms(250), ms(600), true),
            (ms(250), ms(1125), true),
            (ms(250), ms(1150), false),
            (ms(2000), ms(3700), true),
            (ms(2000), ms(3800), false),
            (ms(0), ms(1000), false),
            (ms(1000), ms(20), true),
            (ms(3000), ms(20), false),
            (ms(10_000), ms(250), false),
            (ms(10_000), ms(5000), true),
        ] {
            assert_eq!(
                downtimes_agree(reported, seen),
                agree,
                "reported {reported:?}, seen {seen:?}"
            );
        }
    }
}
