//! The lock end to end: two runs started in the same instant (exactly one proceeds), runs
//! SIGKILLed mid-step that `abort` or `resume` take over at once, a run that stops renewing
//! half-way through the rollback `abort` follows, and Leases written by hand, by a holder that
//! renews (the run is refused) or by one that never does (taken over after one lease duration,
//! not before, whatever its renewTime says).

use std::time::{Duration, Instant};

use devcluster::testkit;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use rollout::model::exit::ExitCode;

use crate::strategies::phase;
use crate::support::{rollout_command, versions, App, Run, RUN_LIMIT, SETTLE, STS};

const LEASE: &str = "rollout-time-app";
/// The lease duration rollout writes, and the one the hand-written Leases carry.
const LEASE_SECONDS: u64 = 15;

/// Waits for a spawned `rollout` run to end, like [`crate::support::rollout`].
async fn finish(child: tokio::process::Child, args: &[&str]) -> anyhow::Result<Run> {
    crate::support::finish_within(child, &args.join(" "), RUN_LIMIT).await
}

/// Sends `signal` (`KILL`, `STOP`) to process `pid`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// Starts `rollout rolling` to v2 with a pause after each batch, and waits until the first pod
/// is being replaced: the set has the new revision and its highest pod is not Ready on it yet.
async fn start_until_mid_step(app: &App, pause: &str) -> anyhow::Result<tokio::process::Child> {
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
                st.update_revision != st.current_revision
                    && st.ready_replicas.unwrap_or(0) < replicas
            })
        },
    )
    .await?;
    Ok(child)
}

/// The holder the Lease names now.
async fn holder(app: &App) -> anyhow::Result<Option<String>> {
    let lease = app.ns.api::<Lease>().get_opt(LEASE).await?;
    Ok(lease.and_then(|l| l.spec).and_then(|s| s.holder_identity))
}

/// A Lease for the time app as another machine's run would write it, renewed "now" by its
/// clock.
fn hand_written_lease(holder: &str) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(LEASE_SECONDS as i32),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn of_two_runs_started_together_exactly_one_proceeds() -> anyhow::Result<()> {
    let app = App::deploy("lock-race", 3, false).await?;
    let args = ["rolling", STS, "--image", "time-app:v2"];
    let a = rollout_command(app.name(), &args).spawn()?;
    let b = rollout_command(app.name(), &args).spawn()?;
    let pids = [a.id().unwrap_or_default(), b.id().unwrap_or_default()];
    let started = Instant::now();
    let timed = |child, args| async move {
        let run = finish(child, args).await;
        (run, started.elapsed())
    };
    let ((a, a_took), (b, b_took)) = tokio::join!(timed(a, &args), timed(b, &args));
    eprintln!("the runs ended after {a_took:?} and {b_took:?}");
    let runs = [a?, b?];
    let winners: Vec<usize> = (0..2).filter(|&i| runs[i].code == Some(0)).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one run proceeds:\n{}\n{}",
        runs[0].describe(),
        runs[1].describe()
    );
    let (winner, loser) = (winners[0], 1 - winners[0]);
    eprintln!("{}", runs[loser].describe());
    runs[loser].expect(ExitCode::Locked)?;
    let named = format!("pid {} run ", pids[winner]);
    assert!(
        runs[loser].stderr.contains(&named),
        "the refused run names the holder ({named}…): {}",
        runs[loser].describe()
    );
    app.assert_all_on("v2").await?;
    assert_eq!(phase(&app).await?, "Succeeded");
    assert_eq!(
        holder(&app).await?,
        None,
        "the winner released the lease: {}",
        runs[winner].describe()
    );
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn abort_right_after_a_kill_mid_step_takes_over_and_returns_to_stable() -> anyhow::Result<()>
{
    let app = App::deploy("lock-kill-abort", 3, false).await?;
    let mut child = start_until_mid_step(&app, "5m").await?;
    let dead = holder(&app).await?.unwrap_or_default();
    child.kill().await?;

    let started = Instant::now();
    let abort = app.rollout(&["abort", STS]).await?;
    eprintln!("abort took {:?}", started.elapsed());
    abort.expect(ExitCode::Done)?;
    assert!(
        abort.stderr.contains(&format!(
            "took over Lease {LEASE} from {dead}, whose process is gone"
        )),
        "abort took the lease of the dead run over at once: {}",
        abort.describe()
    );
    app.assert_all_on("v1").await?;
    assert_eq!(app.image().await?, "time-app:v1");
    assert_eq!(phase(&app).await?, "Aborted");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn resume_right_after_a_kill_mid_step_takes_over_and_finishes() -> anyhow::Result<()> {
    let app = App::deploy("lock-kill-resume", 3, false).await?;
    let mut child = start_until_mid_step(&app, "2s").await?;
    let dead = holder(&app).await?.unwrap_or_default();
    child.kill().await?;

    let resume = app.rollout(&["resume", STS]).await?;
    resume.expect(ExitCode::Done)?;
    assert!(
        resume
            .stderr
            .contains(&format!("took over Lease {LEASE} from {dead}")),
        "{}",
        resume.describe()
    );
    app.assert_all_on("v2").await?;
    assert_eq!(phase(&app).await?, "Succeeded");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn abort_finishes_the_rollback_of_a_run_that_stops_renewing_half_way() -> anyhow::Result<()> {
    let app = App::deploy("lock-stall", 3, false).await?;
    let mut child = start_until_mid_step(&app, "5m").await?;
    let pid = child.id().unwrap_or_default();
    // The run is at its pause after the first batch; abort sees it renewing and hands over.
    let abort_args = ["abort", STS];
    let abort = rollout_command(app.name(), &abort_args).spawn()?;
    // As soon as the run has the abort on record, it freezes (SIGSTOP): still a process, never
    // renewing again.
    testkit::wait_for(
        app.ns.api::<StatefulSet>(),
        STS,
        SETTLE,
        |s: Option<&StatefulSet>| {
            s.and_then(|s| s.metadata.annotations.as_ref())
                .and_then(|a| a.get("rollout.dev/state"))
                .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
                .is_some_and(|record| record["phase"] == "RollingBack")
        },
    )
    .await?;
    signal(pid, "STOP")?;
    let abort = finish(abort, &abort_args).await?;
    child.kill().await?;
    abort.expect(ExitCode::Done)?;
    assert!(
        abort
            .stderr
            .contains("abort requested: the running rollout"),
        "abort first handed over to the live run: {}",
        abort.describe()
    );
    assert!(
        abort
            .stderr
            .contains("stopped before it was back on stable; this command finishes the rollback"),
        "{}",
        abort.describe()
    );
    assert!(
        abort.stderr.contains("which had not renewed it for"),
        "{}",
        abort.describe()
    );
    app.assert_all_on("v1").await?;
    assert_eq!(phase(&app).await?, "Aborted");
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_lease_never_renewed_is_taken_over_after_one_duration_not_before() -> anyhow::Result<()> {
    let app = App::deploy("lock-stale", 3, false).await?;
    // Another machine's run (its own process space), renewed "now" by its clock, then never.
    let stranger = "ops@build-7 pid 4242 run 0123456789ab on 00000000cafe-4026531836";
    app.ns
        .api::<Lease>()
        .create(&PostParams::default(), &hand_written_lease(stranger))
        .await?;
    let args = ["rolling", STS, "--image", "time-app:v2"];
    let started = Instant::now();
    let run = rollout_command(app.name(), &args).spawn()?;
    let stranger_text = stranger.to_string();
    testkit::wait_for(
        app.ns.api::<Lease>(),
        LEASE,
        SETTLE,
        move |l: Option<&Lease>| {
            l.and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.as_deref())
                .is_none_or(|h| h != stranger_text)
        },
    )
    .await?;
    let taken_after = started.elapsed();
    eprintln!("taken over after {taken_after:?}");
    let run = finish(run, &args).await?;
    run.expect(ExitCode::Done)?;
    // The run watched the lease a whole duration on its own clock before taking it.
    assert!(
        taken_after >= Duration::from_secs(LEASE_SECONDS),
        "taken over after {taken_after:?}, before a lease duration without renewal"
    );
    assert!(
        run.stderr
            .contains(&format!("Lease {LEASE} is held by {stranger}; watching it")),
        "{}",
        run.describe()
    );
    assert!(
        run.stderr.contains(&format!(
            "took over Lease {LEASE} from {stranger}, which had not renewed it for"
        )),
        "{}",
        run.describe()
    );
    app.assert_all_on("v2").await?;
    app.assert_data_kept().await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_lease_renewed_by_its_holder_refuses_a_run_that_changes_nothing() -> anyhow::Result<()> {
    let app = App::deploy("lock-live", 3, false).await?;
    // A holder written by an older release (`user@host pid N`), renewing every two seconds.
    let other = "ops@build-7 pid 4242";
    let api = app.ns.api::<Lease>();
    api.create(&PostParams::default(), &hand_written_lease(other))
        .await?;
    let renewer = tokio::spawn({
        let api = api.clone();
        async move {
            for _ in 0..60 {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Ok(mut lease) = api.get(LEASE).await else {
                    continue;
                };
                if let Some(spec) = lease.spec.as_mut() {
                    spec.renew_time = Some(MicroTime(Timestamp::now()));
                }
                let _ = api.replace(LEASE, &PostParams::default(), &lease).await;
            }
        }
    });
    let run = app
        .rollout(&["rolling", STS, "--image", "time-app:v2"])
        .await?;
    renewer.abort();
    run.expect(ExitCode::Locked)?;
    assert!(
        run.stderr.contains(&format!("{other} holds Lease {LEASE}")),
        "{}",
        run.describe()
    );
    let versions = versions(&app.ns, 3).await?;
    assert!(versions.values().all(|v| v == "v1"), "{versions:?}");
    assert_eq!(app.image().await?, "time-app:v1");
    assert_eq!(holder(&app).await?.as_deref(), Some(other));
    app.cleanup().await;
    Ok(())
}
