//! End-to-end tests of a rollout whose control plane fails under it, against the devcluster:
//! the API server SIGKILLed in the middle of a rolling rollout and brought back by `devcluster
//! up` (which restarts dead control-plane processes, keeping every object), and etcd frozen
//! (SIGSTOP) for ten seconds. Either way the rollout finishes (or, if the outage outlasts a
//! deadline, rolls back cleanly), every pod ends on one version and no data is lost. Meanwhile
//! the test plays the supervisor that restarts control-plane processes (`devcluster up` every
//! few seconds): the controller-manager and the scheduler may exit after an outage, as they
//! lose their leader election, and without them no pod would move.
//!
//! These tests stop the cluster everyone's tests share, so they are `#[ignore]`d: `cargo test
//! --test '*'` (the other end-to-end tests, run side by side) never runs them, and
//! `scripts/test` runs this binary on its own afterwards with `--ignored --test-threads=1`.
//! By hand: `cargo test --test control_plane_faults -- --ignored --test-threads=1`, when no one
//! else's tests run on the cluster.

// Helpers outside #[test] functions fail the test with a message instead of returning errors.
#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "e2e/support.rs"]
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use devcluster::testkit;
use k8s_openapi::api::apps::v1::StatefulSet;
use rollout::model::exit::ExitCode;
use rollout::model::state::{Phase, RolloutState};
use support::{rollout_command, App, Run, STS};

/// Longest wait for the run to reach the step where the fault is made.
const REACH: Duration = Duration::from_secs(120);

fn record_of(sts: Option<&StatefulSet>) -> Option<RolloutState> {
    RolloutState::from_annotations(STS, sts?.metadata.annotations.as_ref())
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

/// The pid of a devcluster process, from the pid file `devcluster up` wrote.
fn pid_of(process: &str) -> anyhow::Result<i32> {
    let file = devcluster::Layout::from_env()
        .pids_dir()
        .join(format!("{process}.pid"));
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{}: not a pid: {text:?}", file.display()))
}

fn alive(pid: i32) -> bool {
    PathBuf::from(format!("/proc/{pid}")).exists()
}

/// Sends `signal` (`KILL`, `STOP`, `CONT`) to `pid` with kill(1).
fn signal(pid: i32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// The devcluster binary built with this test.
fn devcluster_binary() -> PathBuf {
    devcluster::testkit::built_binary("devcluster")
}

/// `devcluster up`: restarts the control-plane processes that died, keeping every object.
async fn heal() -> anyhow::Result<String> {
    let output = tokio::process::Command::new(devcluster_binary())
        .arg("up")
        .output()
        .await
        .context("running devcluster up")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(output.status.success(), "devcluster up failed: {said}");
    Ok(said)
}

/// Runs `work` while calling `devcluster up` every few seconds, as a supervisor (systemd, the
/// kubelet) would restart control-plane processes: the controller-manager and the scheduler may
/// exit some seconds after an outage (they lose their leader election), and without them no pod
/// would move. Gives what the heals said they restarted.
async fn supervised<T>(work: impl std::future::Future<Output = T>) -> (T, Vec<String>) {
    let mut restarted = Vec::new();
    let mut note = |said: anyhow::Result<String>| match said {
        Ok(said) => restarted.extend(
            said.lines()
                .filter(|l| l.contains("restarted"))
                .map(str::to_string),
        ),
        Err(e) => restarted.push(format!("heal failed: {e}")),
    };
    let mut work = std::pin::pin!(work);
    // Bounded: the work itself ends within the run limit.
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            _ = tokio::time::sleep(Duration::from_secs(3)) => note(heal().await),
        }
    };
    // One last heal: the cluster is left whole for the tests that come after.
    note(heal().await);
    (result, restarted)
}

/// Sends SIGCONT when dropped, so a failing test never leaves etcd frozen.
struct Thaw(i32);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

/// Starts a rolling rollout to v2 of a three-pod app in the background.
fn start_rolling(app: &App) -> anyhow::Result<(tokio::process::Child, String)> {
    let args = [
        "rolling",
        STS,
        "--image",
        "time-app:v2",
        "--probe-window",
        "2s",
        "--timeout",
        "3m",
    ];
    let child = rollout_command(app.name(), &args)
        .spawn()
        .context("starting rollout")?;
    Ok((child, args.join(" ")))
}

async fn finish(child: tokio::process::Child, args: String) -> anyhow::Result<Run> {
    support::finish_within(child, &args, support::RUN_LIMIT).await
}

/// The run finished (exit 0, all pods on v2) or, when the outage outlasted its deadline, rolled
/// back cleanly (exit 5, all pods on v1); either way every pod kept its data.
async fn assert_finished_or_rolled_back(app: &App, run: &Run) -> anyhow::Result<()> {
    match run.code {
        Some(0) => app.assert_all_on("v2").await?,
        Some(5) => {
            let record = record_of(Some(&app.statefulset().await?)).context("no record")?;
            ensure!(
                record.phase == Phase::RolledBack,
                "timed out but not rolled back: {record:?}\n{}",
                run.describe()
            );
            app.assert_all_on("v1").await?;
        }
        _ => anyhow::bail!(
            "the rollout neither finished nor rolled back: {}",
            run.describe()
        ),
    }
    app.assert_data_kept().await
}

#[tokio::test]
#[ignore = "kills the shared devcluster's API server: run alone, with --ignored (scripts/test does)"]
async fn a_rollout_survives_the_api_server_killed_and_healed() -> anyhow::Result<()> {
    let app = App::deploy("cp-apiserver", 3, false).await?;
    let (run, args) = start_rolling(&app)?;
    // In the middle: the template is written and the first pod is being moved.
    wait_record(&app, |r| {
        r.phase == Phase::Progressing && r.current_step >= 1
    })
    .await?;
    let apiserver = pid_of("kube-apiserver")?;
    let down = Instant::now();
    signal(apiserver, "KILL")?;
    while alive(apiserver) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healed = heal().await?;
    let outage = down.elapsed();
    ensure!(
        healed.contains("kube-apiserver"),
        "devcluster up did not restart the API server: {healed}"
    );
    eprintln!("API server down for {:.1}s", outage.as_secs_f64());
    let (ended, restarted) = supervised(finish(run, args)).await;
    let ended = ended?;
    eprintln!("{}\nrestarted meanwhile: {restarted:?}", ended.describe());
    assert_finished_or_rolled_back(&app, &ended).await?;
    ensure!(
        ended.code == Some(ExitCode::Done.code() as i32),
        "a short outage should not end the rollout: {}",
        ended.describe()
    );
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
#[ignore = "freezes the shared devcluster's etcd: run alone, with --ignored (scripts/test does)"]
async fn a_rollout_survives_etcd_frozen_for_ten_seconds() -> anyhow::Result<()> {
    let app = App::deploy("cp-etcd", 3, false).await?;
    let (run, args) = start_rolling(&app)?;
    wait_record(&app, |r| {
        r.phase == Phase::Progressing && r.current_step >= 1
    })
    .await?;
    let etcd = pid_of("etcd")?;
    {
        let _thaw = Thaw(etcd);
        signal(etcd, "STOP")?;
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let (ended, restarted) = supervised(finish(run, args)).await;
    let ended = ended?;
    eprintln!("{}\nrestarted meanwhile: {restarted:?}", ended.describe());
    assert_finished_or_rolled_back(&app, &ended).await?;
    ensure!(
        ended.code == Some(ExitCode::Done.code() as i32),
        "ten seconds without etcd should not end the rollout: {}",
        ended.describe()
    );
    app.cleanup().await;
    Ok(())
}
