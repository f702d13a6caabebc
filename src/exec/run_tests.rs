//! The executor against the fake cluster: whole commands (run, promote, resume, abort, undo)
//! and the error paths a real cluster only shows by chance: a write that meets a conflict, a
//! lease held by another run or left expired, a gate that fails, a step past its deadline, a
//! run killed half way.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;

use super::commands::{self, Context, Output, RunRequest, TemplateSource};
use super::fake::{statefulset, FakeCluster, FakeGates, State};
use super::lease::{lease_name, Identity};
use super::patch::{StrategyChange, StsPatch};
use super::progress::{Out, Progress};
use super::ExecError;
use crate::gate::verdict::{GateFailure, GateKind};
use crate::gate::Verdict;
use crate::model::exit::ExitCode;
use crate::model::gate::GateSpec;
use crate::model::image::ImageChange;
use crate::model::state::{Phase, RolloutState};
use crate::model::strategy::{OnFailure, StrategyConfig, StrategyFlags, StrategyKind, Timeouts};
use crate::model::HumanDuration;

fn me(pid: u32) -> Identity {
    Identity {
        user: "dev".into(),
        host: "laptop".into(),
        pid,
        run: Some(format!("run{pid}")),
        space: None,
    }
}

fn context(fake: &FakeCluster, gates: FakeGates, pid: u32) -> Context<FakeCluster, FakeGates> {
    Context {
        cluster: fake.clone(),
        gates,
        progress: Progress::memory(),
        out: Out::memory(),
        output: Output::Text,
        me: me(pid),
        lease_duration: Duration::from_secs(15),
        announce: crate::exec::announce::Announcer::default(),
        step_summary: None,
    }
}

fn request(kind: StrategyKind, flags: &str, image: &str) -> RunRequest {
    let mut f = StrategyFlags::default();
    for part in flags.split_whitespace() {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        match key {
            "batch" => f.batch = value.parse().ok(),
            "steps" => f.steps = value.parse().ok(),
            "weight" => f.weight = value.parse().ok(),
            "pause" => f.pause = value.parse().ok(),
            other => panic!("unknown flag {other}"),
        }
    }
    let config = StrategyConfig::new(
        kind,
        &f,
        GateSpec::default(),
        Timeouts {
            step: HumanDuration::from_secs(60),
            total: None,
        },
        OnFailure::Rollback,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    RunRequest {
        statefulset: "web".into(),
        config,
        source: TemplateSource::Images(vec![image
            .parse::<ImageChange>()
            .unwrap_or_else(|e| panic!("{e}"))]),
        wait_at_holds: false,
        prometheus_url: None,
    }
}

fn record(fake: &FakeCluster) -> RolloutState {
    let sts = fake.set();
    RolloutState::from_annotations("web", sts.metadata.annotations.as_ref())
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("no rollout record on the set"))
}

fn failure(pod: &str) -> Verdict {
    Verdict::Fail {
        failures: vec![GateFailure {
            gate: GateKind::Http,
            pod: Some(pod.into()),
            probe: "GET 10.244.0.12:8080/ expecting 2xx".into(),
            figures: None,
            reasons: vec!["3 of 10 counted probes succeeded (30%, minimum 100%)".into()],
        }],
    }
}

/// The update strategy writes, in order: `P2` for a partition alone, `Type:Some(n)` for a
/// type and a partition.
fn partitions(fake: &FakeCluster) -> Vec<String> {
    fake.with(|s| {
        s.patches()
            .iter()
            .filter_map(|p| {
                let strategy = p.pointer("/spec/updateStrategy")?;
                let partition = strategy
                    .pointer("/rollingUpdate/partition")
                    .and_then(|n| n.as_u64());
                Some(match strategy["type"].as_str() {
                    Some(type_) => format!("{type_}:{partition:?}"),
                    None => format!("P{}", partition.unwrap_or_default()),
                })
            })
            .collect()
    })
}

/// True when a patch body writes the rollout record (sets the annotation).
fn sets_record(patch: &serde_json::Value) -> bool {
    patch["metadata"]["annotations"][crate::model::state::ANNOTATION_KEY].is_string()
}

#[tokio::test]
async fn a_rolling_run_freezes_then_lowers_the_partition_writing_the_record_with_each_step() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let gates = FakeGates::default();
    let ctx = context(&fake, gates.clone(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(fake.image(), "app:v2");
    let record = record(&fake);
    assert_eq!(record.phase, Phase::Succeeded);
    let target = record.target.revision.clone().unwrap_or_default();
    assert!(fake
        .pod_revisions()
        .iter()
        .all(|(_, rev, ready)| *rev == target && *ready));
    // The freeze is one write: template, partition = replicas, record, under a precondition.
    let first = fake.with(|s| s.patches()[0].clone());
    assert!(first["metadata"]["resourceVersion"].is_string());
    // The template change sets images; it does not replace the whole template.
    let template = &first["spec"]["template"];
    assert!(template["spec"]["containers"].is_array() && template.get("$patch").is_none());
    let freeze = StsPatch::at(None).with_strategy(StrategyChange::freeze(3));
    assert_eq!(
        first["spec"]["updateStrategy"],
        freeze.to_json()["spec"]["updateStrategy"]
    );
    assert!(sets_record(&first));
    assert_eq!(
        partitions(&fake),
        ["RollingUpdate:Some(3)", "P2", "P1", "P0"]
    );
    // Every write carries the record and a resourceVersion.
    assert!(fake.with(|s| s
        .patches()
        .iter()
        .all(|p| p["metadata"]["resourceVersion"].is_string() && sets_record(p))));
    assert_eq!(gates.calls(), [["web-2"], ["web-1"], ["web-0"]]);
    assert!(
        fake.with(|s| s.list::<Lease>().is_empty()),
        "the lease is released"
    );
    let lines = ctx.progress.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("[7/7]") && l.contains("gate web-0: passed")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_failed_gate_rolls_template_and_partition_back() {
    let fake = FakeCluster::new(statefulset("web", 4, "app:v1", true));
    let stable = fake.set().status.and_then(|s| s.current_revision);
    let gates = FakeGates::failing_at(1, failure("web-2"));
    let ctx = context(&fake, gates.clone(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::GateFailed);
    assert_eq!(fake.image(), "app:v1", "template back to stable");
    let record = record(&fake);
    assert_eq!(record.phase, Phase::RolledBack);
    assert!(record.message.contains("web-2"), "{}", record.message);
    assert!(fake
        .pod_revisions()
        .iter()
        .all(|(_, rev, ready)| Some(rev) == stable.as_ref() && *ready));
    let set = fake.set();
    let strategy = set.spec.and_then(|s| s.update_strategy).unwrap_or_default();
    assert_eq!(
        strategy.rolling_update.and_then(|r| r.partition),
        Some(0),
        "partition as it was"
    );
    assert_eq!(gates.calls().len(), 2, "no gate after the failure");
    let lines = ctx.progress.lines().join("\n");
    assert!(lines.contains("gate web-2: FAILED"), "{lines}");
    assert!(
        lines.contains("3 of 10 counted probes succeeded"),
        "{lines}"
    );
}

#[tokio::test]
async fn a_step_past_its_deadline_rolls_back_and_deletes_pods_stuck_on_the_broken_revision() {
    // OrderedReady: the controller would wait on the broken pod forever (kubernetes #67250).
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", false));
    let ctx = context(&fake, FakeGates::default(), 1);
    // Every pod of the new template stays not Ready.
    let mut request = request(StrategyKind::Rolling, "", "app:v2");
    request.config.timeouts.step = HumanDuration::from_millis(1500);
    let trial = fake.with(|s| {
        let mut t = s.get::<StatefulSet>("web").unwrap_or_default();
        if let Some(pod) = t.spec.as_mut().and_then(|x| x.template.spec.as_mut()) {
            pod.containers[0].image = Some("app:v2".into());
        }
        t
    });
    let broken = {
        let template = trial.spec.map(|s| s.template).unwrap_or_default();
        fake.with(|s| s.revision_name_for(&template))
    };
    fake.with(|s| {
        s.broken.insert(broken.clone());
    });
    let code = commands::run(&ctx, &request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::TimedOut);
    assert_eq!(fake.image(), "app:v1");
    assert_eq!(fake.with(|s| s.deleted_pods()), ["web-2"]);
    assert!(fake
        .pod_revisions()
        .iter()
        .all(|(_, rev, ready)| *rev != broken && *ready));
    let r = record(&fake);
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(
        r.message.contains("passed its deadline of 1s 500ms"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn a_conflicting_write_is_read_again_and_the_plan_follows_the_cluster() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    // Just before the first partition write, someone scales the set to 5: the write, based on
    // the old resourceVersion, must be refused, re-read and re-planned, never forced through.
    fake.with(|s| {
        s.before_patch.push_back(Box::new(|_| {}));
        s.before_patch.push_back(Box::new(|s| {
            s.touch_set(|sts| {
                if let Some(spec) = sts.spec.as_mut() {
                    spec.replicas = Some(5);
                }
            })
        }));
    });
    let gates = FakeGates::default();
    let ctx = context(&fake, gates.clone(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert!(fake.with(|s| s.conflicts) >= 1);
    let r = record(&fake);
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(r.plan.replicas, 5);
    assert!(
        r.plan
            .notes
            .iter()
            .any(|n| n.contains("scaled from 3 to 5")),
        "{:?}",
        r.plan.notes
    );
    // The pods created above the partition by the scale-up were gated before going on.
    assert_eq!(gates.calls()[0], ["web-4", "web-3"]);
    assert_eq!(fake.pod_revisions().len(), 5);
    assert!(fake.pod_revisions().iter().all(|(_, _, ready)| *ready));
}

/// A lease held by `holder`, renewed `renewed_secs_ago` by its clock; it lasts `seconds`.
fn held_lease(holder: &str, renewed_secs_ago: i64) -> Lease {
    lease_lasting(holder, renewed_secs_ago, 15)
}

fn lease_lasting(holder: &str, renewed_secs_ago: i64, seconds: i32) -> Lease {
    let at = Timestamp::from_second(Timestamp::now().as_second() - renewed_secs_ago)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    Lease {
        metadata: ObjectMeta {
            name: Some(lease_name("web")),
            resource_version: Some("7".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(seconds),
            renew_time: Some(MicroTime(at)),
            lease_transitions: Some(2),
            ..Default::default()
        }),
    }
}

#[tokio::test]
async fn a_second_run_fails_fast_naming_the_holder_and_changes_nothing() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    fake.with(|s| s.put(&held_lease("ci@runner-9 pid 77 run 1f", 2)));
    // The holder is alive: it renews its lease (on another machine, every 200ms here).
    let renewer = tokio::spawn({
        let fake = fake.clone();
        async move {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                fake.with(|s| {
                    let mut lease = held_lease("ci@runner-9 pid 77 run 1f", 0);
                    lease.metadata.resource_version = None;
                    s.put(&lease)
                });
            }
        }
    });
    let ctx = context(&fake, FakeGates::default(), 1);
    let err = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .expect_err("locked");
    renewer.abort();
    assert_eq!(err.exit_code(), ExitCode::Locked);
    assert!(
        err.to_string().contains("ci@runner-9 pid 77 run 1f"),
        "{err}"
    );
    assert!(fake.with(|s| s.patches().is_empty()), "nothing written");
    assert_eq!(fake.image(), "app:v1");
}

#[tokio::test]
async fn an_expired_lease_is_taken_over() {
    let fake = FakeCluster::new(statefulset("web", 2, "app:v1", true));
    // Never renewed while this run watches (one second, the lease's own duration), whatever its
    // renewTime says.
    fake.with(|s| s.put(&lease_lasting("ci@runner-9 pid 77", 0, 1)));
    // Look at the lease while the run holds it (just before its first write).
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = seen.clone();
    fake.with(|s| {
        s.before_patch.push_back(Box::new(move |s| {
            if let Ok(mut slot) = slot.lock() {
                *slot = s.get::<Lease>(&lease_name("web"));
            }
        }))
    });
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let lease = seen.lock().ok().and_then(|l| l.clone()).unwrap_or_default();
    let spec = lease.spec.unwrap_or_default();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some("dev@laptop pid 1 run run1")
    );
    assert_eq!(spec.lease_transitions, Some(3));
    assert!(ctx
        .progress
        .lines()
        .iter()
        .any(|l| l.contains("took over Lease rollout-web from ci@runner-9 pid 77")));
}

#[tokio::test]
async fn bad_input_is_refused_before_any_write() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = context(&fake, FakeGates::default(), 1);
    let cases: Vec<(RunRequest, &str)> = vec![
        (
            request(StrategyKind::Rolling, "", "sidecar=app:v2"),
            "no container `sidecar`",
        ),
        (
            RunRequest {
                statefulset: "nope".into(),
                ..request(StrategyKind::Rolling, "", "app:v2")
            },
            "StatefulSet nope not found in namespace test",
        ),
        (
            {
                let mut r = request(StrategyKind::Rolling, "", "app:v2");
                r.config.gates.http.port = Some("grpc".parse().unwrap_or_else(|e| panic!("{e}")));
                r
            },
            "port `grpc`",
        ),
        (
            request(StrategyKind::Rolling, "batch=5", "app:v2"),
            "--batch 5 is more than its 3 replicas",
        ),
        (
            RunRequest {
                statefulset: "zero".into(),
                ..request(StrategyKind::Rolling, "", "app:v2")
            },
            "it has 0 replicas",
        ),
        (
            RunRequest {
                statefulset: "frontend".into(),
                ..request(StrategyKind::Rolling, "", "app:v2")
            },
            "but a Deployment frontend is there",
        ),
    ];
    fake.with(|s| {
        s.put(&statefulset("zero", 0, "app:v1", true));
        let deployment: k8s_openapi::api::apps::v1::Deployment =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "frontend"}}))
                .unwrap_or_default();
        s.put(&deployment);
    });
    let patches_before = fake.with(|s| s.patches().len());
    for (req, needle) in cases {
        let err = commands::run(&ctx, &req).await.expect_err(needle);
        assert_eq!(err.exit_code(), ExitCode::BadInput, "{err}");
        assert!(err.to_string().contains(needle), "{err}");
    }
    assert!(fake.with(|s| s.patches().len() == patches_before && s.list::<Lease>().is_empty()));
}

#[tokio::test]
async fn nothing_to_do_when_the_set_already_runs_the_image() {
    let fake = FakeCluster::new(statefulset("web", 2, "app:v1", true));
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v1"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert!(fake.with(|s| s.patches().is_empty()));
    assert!(ctx.progress.lines()[0].contains("nothing to do"));
}

#[tokio::test]
async fn a_held_canary_is_promoted_by_another_command_and_finishes() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Canary, "weight=34", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done, "stops at the hold");
    let held = record(&fake);
    assert_eq!(held.phase, Phase::Paused);
    assert_eq!(held.plan.updated_after(held.current_step), Some(1));
    // A second run over the held canary is refused.
    let err = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v3"))
        .await
        .expect_err("in progress");
    assert_eq!(err.exit_code(), ExitCode::Locked);
    // No run is live: promote runs the rest itself.
    let other = context(&fake, FakeGates::default(), 2);
    let code = commands::promote(&other, "web", false, false, None, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(record(&fake).phase, Phase::Succeeded);
}

#[tokio::test]
async fn a_running_rollout_reacts_to_promote_and_abort_written_by_other_processes() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let mut req = request(StrategyKind::Canary, "weight=34", "app:v2");
    req.wait_at_holds = true;
    let ctx = context(&fake, FakeGates::default(), 1);
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { commands::run(&ctx, &req).await }
    });
    // Wait (on the fake's watch) until the run holds.
    until_record(&fake, |r| r.phase == Phase::Paused).await;
    let other = context(&fake, FakeGates::default(), 2);
    commands::pause(&other, "web")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The live run holds the lease: abort only writes the record and waits for that run.
    let code = commands::abort(&other, "web", Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let outcome = run.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.ok(),
        Some(ExitCode::GateFailed),
        "an aborted run exits 3"
    );
    assert_eq!(record(&fake).phase, Phase::Aborted);
    assert_eq!(fake.image(), "app:v1");
    let lines = ctx.progress.lines().join("\n");
    assert!(
        lines.contains("changed by another command: RollingBack"),
        "{lines}"
    );
}

#[tokio::test]
async fn a_killed_run_is_resumed_from_its_record() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let mut req = request(StrategyKind::Rolling, "pause=1h", "app:v2");
    req.wait_at_holds = false;
    let ctx = context(&fake, FakeGates::default(), 1);
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { commands::run(&ctx, &req).await }
    });
    until_record(&fake, |r| r.phase == Phase::Paused).await;
    // SIGKILL: the task is gone, its lease stays (on another host, renewed long ago).
    run.abort();
    let _ = run.await;
    fake.with(|s| {
        let old = s.get::<Lease>(&lease_name("web"));
        let mut stale = lease_lasting("dev@other-host pid 1", 60, 1);
        stale.metadata.resource_version = old.and_then(|l| l.metadata.resource_version);
        s.put(&stale);
    });
    let at_kill = record(&fake);
    assert_eq!(at_kill.current_step, 3, "paused after web-2 was gated");
    let other = context(&fake, FakeGates::default(), 2);
    // The 1h pause is still running: promote --full skips it and the later ones, and this
    // process finishes the rest.
    let code = tokio::time::timeout(
        Duration::from_secs(20),
        commands::promote(&other, "web", true, false, None, &Default::default()),
    )
    .await
    .unwrap_or_else(|_| panic!("promote hangs: {:#?}", other.progress.lines()))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let done = record(&fake);
    assert_eq!(done.phase, Phase::Succeeded);
    assert_eq!(done.id, at_kill.id, "the same rollout, continued");
    assert_eq!(fake.image(), "app:v2");
}

#[tokio::test]
async fn pause_takes_the_lease_of_a_dead_run_while_it_writes_the_record() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let mut req = request(StrategyKind::Rolling, "pause=1h", "app:v2");
    req.wait_at_holds = false;
    let ctx = context(&fake, FakeGates::default(), 1);
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { commands::run(&ctx, &req).await }
    });
    until_record(&fake, |r| r.phase == Phase::Paused).await;
    // SIGKILL on another machine: its lease stays, never renewed again (it lasts a second).
    run.abort();
    let _ = run.await;
    fake.with(|s| {
        let old = s.get::<Lease>(&lease_name("web"));
        let mut stale = lease_lasting("dev@other-host pid 1 run 9", 0, 1);
        stale.metadata.resource_version = old.and_then(|l| l.metadata.resource_version);
        s.put(&stale);
    });
    let other = context(&fake, FakeGates::default(), 2);
    let code = commands::pause(&other, "web")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let paused = record(&fake);
    assert_eq!(paused.phase, Phase::Paused);
    assert_eq!(paused.pause, Some(crate::model::state::PauseReason::User));
    let lines = other.progress.lines().join("\n");
    assert!(
        lines.contains("took over Lease rollout-web from dev@other-host pid 1 run 9"),
        "{lines}"
    );
    assert!(lines.contains("(no run is live)"), "{lines}");
    assert!(
        fake.with(|s| s.list::<Lease>().is_empty()),
        "pause gives the lease back once the record is written"
    );
}

#[tokio::test]
async fn undo_returns_to_the_previous_revision_of_a_set_rollout_never_touched() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", false));
    // kubectl set image: a new revision whose pods never get Ready, wedging the set.
    let broken = fake.with(|s| {
        let mut template = s
            .get::<StatefulSet>("web")
            .unwrap_or_default()
            .spec
            .unwrap_or_default()
            .template;
        if let Some(pod) = template.spec.as_mut() {
            pod.containers[0].image = Some("app:bad".into());
        }
        let name = s.revision_name_for(&template);
        s.broken.insert(name.clone());
        s.touch_set(|sts| {
            if let Some(spec) = sts.spec.as_mut() {
                spec.template = template;
            }
        });
        name
    });
    assert!(fake
        .pod_revisions()
        .iter()
        .any(|(_, rev, ready)| *rev == broken && !ready));
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::undo(&ctx, "web", None, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(fake.image(), "app:v1");
    assert_eq!(fake.with(|s| s.deleted_pods()), ["web-2"]);
    assert!(fake
        .pod_revisions()
        .iter()
        .all(|(_, rev, ready)| *rev != broken && *ready));
    // --to-revision that does not exist: bad input, nothing changed.
    let err = commands::undo(&ctx, "web", Some(42), Duration::from_secs(60))
        .await
        .expect_err("no revision 42");
    assert_eq!(err.exit_code(), ExitCode::BadInput);
}

#[tokio::test]
async fn undo_right_after_a_write_the_controller_has_not_seen_goes_back_before_it() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", false));
    // `kubectl set image` lands, and `rollout undo` runs before the controller has caught up:
    // the set's status still names v1's revision as its template.
    fake.with(|s| {
        s.asleep = true;
        s.touch_set(|sts| {
            if let Some(pod) = sts.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
                pod.containers[0].image = Some("app:bad".into());
            }
        });
    });
    let waker = fake.clone();
    let wake = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        waker.with(|s| s.wake());
    });
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::undo(&ctx, "web", None, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    wake.await.expect("the controller woke");
    assert_eq!(code, ExitCode::Done);
    assert_eq!(fake.image(), "app:v1");
    assert!(fake.pod_revisions().iter().all(|(_, _, ready)| *ready));
}

#[tokio::test]
async fn commands_without_a_rollout_say_so() {
    let fake = FakeCluster::new(statefulset("web", 2, "app:v1", true));
    let ctx = context(&fake, FakeGates::default(), 1);
    for result in [
        commands::promote(&ctx, "web", false, false, None, &Default::default()).await,
        commands::resume(&ctx, "web", false, &Default::default()).await,
        commands::abort(&ctx, "web", Duration::from_secs(5)).await,
    ] {
        let err = result.expect_err("no rollout");
        assert!(matches!(err, ExecError::NoRollout { .. }), "{err}");
        assert_eq!(err.exit_code(), ExitCode::BadInput);
    }
    let code = commands::status(&ctx, "web", false, None, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert!(ctx.out.text().contains("rollout:   none recorded"));
}

#[tokio::test]
async fn an_on_delete_set_is_rolled_with_a_partition_and_given_back_its_strategy() {
    let mut set = statefulset("web", 2, "app:v1", true);
    if let Some(spec) = set.spec.as_mut() {
        spec.update_strategy = Some(k8s_openapi::api::apps::v1::StatefulSetUpdateStrategy {
            type_: Some("OnDelete".into()),
            rolling_update: None,
        });
    }
    let fake = FakeCluster::new(set);
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let r = record(&fake);
    assert_eq!(r.stable.update_strategy.as_deref(), Some("OnDelete"));
    assert!(
        r.plan.notes.iter().any(|n| n.contains("OnDelete")),
        "{:?}",
        r.plan.notes
    );
    let strategy = fake
        .set()
        .spec
        .and_then(|s| s.update_strategy)
        .unwrap_or_default();
    assert_eq!(strategy.type_.as_deref(), Some("OnDelete"));
    assert_eq!(
        partitions(&fake),
        ["RollingUpdate:Some(2)", "P1", "P0", "OnDelete:None"]
    );
}

#[tokio::test]
async fn the_overall_deadline_stops_a_rollout_whose_steps_each_have_time_left() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let mut req = request(StrategyKind::Rolling, "", "app:v2");
    req.config.timeouts.total = Some(HumanDuration::from_millis(800));
    let template = {
        let mut t = fake.set().spec.map(|s| s.template).unwrap_or_default();
        if let Some(pod) = t.spec.as_mut() {
            pod.containers[0].image = Some("app:v2".into());
        }
        t
    };
    fake.with(|s| {
        let broken = s.revision_name_for(&template);
        s.broken.insert(broken);
    });
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::TimedOut);
    let r = record(&fake);
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(
        r.message.contains("overall deadline of 800ms"),
        "{}",
        r.message
    );
    assert_eq!(fake.image(), "app:v1");
}

#[tokio::test]
async fn a_resumed_run_keeps_the_overall_deadline_of_the_rollout() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let mut req = request(StrategyKind::Rolling, "pause=1h", "app:v2");
    req.config.timeouts.total = Some(HumanDuration::from_secs(60));
    let ctx = context(&fake, FakeGates::default(), 1);
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { commands::run(&ctx, &req).await }
    });
    until_record(&fake, |r| r.phase == Phase::Paused).await;
    run.abort();
    let _ = run.await;
    // The rollout started two minutes ago and was paused for 30 s of it: 90 s of its 60 s
    // deadline are used, whatever a new run's own clock says.
    let template = fake.set().spec.map(|s| s.template).unwrap_or_default();
    fake.with(|s| {
        // The remaining pods would never be Ready: only a deadline ends the wait.
        let broken = s.revision_name_for(&template);
        s.broken.insert(broken);
        s.remove::<Lease>(&lease_name("web"));
        s.touch_set(|sts| {
            let annotations = sts
                .metadata
                .annotations
                .get_or_insert_with(Default::default);
            let text = annotations
                .get(crate::model::state::ANNOTATION_KEY)
                .cloned()
                .unwrap_or_default();
            let mut r =
                RolloutState::from_annotation("web", &text).unwrap_or_else(|e| panic!("{e}"));
            r.started_at = Timestamp::now()
                .checked_sub(Duration::from_secs(120))
                .unwrap_or(r.started_at);
            r.measured.paused_ms = Some(30_000);
            annotations.insert(
                crate::model::state::ANNOTATION_KEY.into(),
                r.to_annotation().unwrap_or_default(),
            );
        });
    });
    let other = context(&fake, FakeGates::default(), 2);
    let code = tokio::time::timeout(
        Duration::from_secs(20),
        commands::promote(&other, "web", true, false, None, &Default::default()),
    )
    .await
    .unwrap_or_else(|_| panic!("promote hangs: {:#?}", other.progress.lines()))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::TimedOut);
    let r = record(&fake);
    assert_eq!(r.phase, Phase::RolledBack);
    assert!(
        r.message.contains("overall deadline of 1m"),
        "{}",
        r.message
    );
    assert_eq!(fake.image(), "app:v1");
}

/// Waits on the fake's watch until the record satisfies `check`.
async fn until_record(fake: &FakeCluster, check: impl Fn(&RolloutState) -> bool) {
    let mut view = crate::cluster::Cluster::watch(fake, "web", "");
    loop {
        let done = view
            .borrow_and_update()
            .statefulset
            .as_ref()
            .and_then(|s| {
                RolloutState::from_annotations("web", s.metadata.annotations.as_ref())
                    .ok()
                    .flatten()
            })
            .is_some_and(|r| check(&r));
        if done {
            return;
        }
        if view.changed().await.is_err() {
            panic!("watch ended");
        }
    }
}

fn undecided(pod: &str) -> Verdict {
    Verdict::Inconclusive {
        message: format!("HTTP gate could not judge pod {pod}"),
    }
}

#[tokio::test]
async fn a_gate_that_cannot_decide_runs_again_and_the_rollout_goes_on_once_it_passes() {
    let fake = FakeCluster::new(statefulset("web", 2, "app:v1", true));
    let gates = FakeGates::failing_at(0, undecided("web-1"));
    let ctx = context(&fake, gates.clone(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(record(&fake).phase, Phase::Succeeded);
    assert_eq!(
        gates.calls(),
        [vec!["web-1"], vec!["web-1"], vec!["web-0"]],
        "the gate on web-1 ran again"
    );
    // It never paused to wait for a person.
    let paused = fake.with(|s| {
        s.patches()
            .iter()
            .filter_map(record_in)
            .any(|r| r.phase == Phase::Paused)
    });
    assert!(!paused);
    // While it ran again, the record said why, for `rollout status`; the next step cleared it.
    let said = fake.with(|s| {
        s.patches()
            .iter()
            .filter_map(record_in)
            .filter_map(|r| r.undecided)
            .collect::<Vec<_>>()
    });
    assert!(
        said.iter().any(|why| why.contains("web-1")),
        "the undecided gate was written: {said:?}"
    );
    assert_eq!(record(&fake).undecided, None);
}

#[tokio::test]
async fn a_gate_that_never_decides_times_out_at_the_step_deadline_and_rolls_back() {
    let fake = FakeCluster::new(statefulset("web", 2, "app:v1", true));
    let gates = FakeGates::default();
    gates
        .script
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(std::iter::repeat_n(undecided("web-1"), 50));
    let ctx = context(&fake, gates.clone(), 1);
    let mut req = request(StrategyKind::Rolling, "", "app:v2");
    req.config.timeouts.step = HumanDuration::from_secs(3);
    let code = commands::run(&ctx, &req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::TimedOut);
    assert_eq!(fake.image(), "app:v1", "rolled back");
    let r = record(&fake);
    assert_eq!(r.phase, Phase::RolledBack);
    assert_eq!(
        r.rollback_cause,
        Some(crate::model::state::RollbackCause::TimedOut)
    );
    assert!(
        r.message
            .contains("stayed undecided: HTTP gate could not judge pod web-1"),
        "{}",
        r.message
    );
    let runs = gates.calls().len();
    assert!(runs >= 2, "the gate ran again before the deadline: {runs}");
    assert!(runs < 50, "with back-off, not in a tight loop: {runs}");
}

#[tokio::test]
async fn a_pause_from_another_terminal_stops_the_run_with_exit_0_and_resume_continues_it() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    // The pause arrives while the gate on web-2 runs: the run stops at that safe point.
    let gates = FakeGates::default();
    gates
        .script
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .extend(std::iter::repeat_n(undecided("web-2"), 20));
    let ctx = context(&fake, gates.clone(), 1);
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2")).await }
    });
    let trying_again = async {
        while !ctx
            .progress
            .lines()
            .iter()
            .any(|l| l.contains("trying again"))
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), trying_again)
        .await
        .unwrap_or_else(|_| panic!("the gate was not undecided"));
    let other = context(&fake, FakeGates::default(), 2);
    let code = commands::pause(&other, "web")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let outcome = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap_or_else(|_| panic!("the paused run did not stop"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        outcome.ok(),
        Some(ExitCode::Done),
        "a pause ends the run with 0"
    );
    let said = ctx.progress.lines().join("\n");
    assert!(
        said.contains("is paused by `rollout pause`") && said.contains("`rollout resume web`"),
        "{said}"
    );
    let r = record(&fake);
    assert_eq!(
        (r.phase, r.pause.clone()),
        (Phase::Paused, Some(crate::model::state::PauseReason::User))
    );
    // Nobody holds the lock any more: resume runs the rest in its own process.
    gates
        .script
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clear();
    let code = commands::resume(&other, "web", false, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(record(&fake).phase, Phase::Succeeded);
    assert_eq!(fake.image(), "app:v2");
}

#[tokio::test]
async fn api_faults_on_every_kind_of_call_are_retried_and_the_rollout_finishes() {
    use crate::cluster::fake::Injected;
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    fake.with(|s| {
        s.fail_next("get", 2, Injected::Reset);
        s.fail_next("list", 1, Injected::Unavailable);
        s.fail_next("create", 1, Injected::Throttled { retry_after: 1 });
        s.fail_next("replace", 1, Injected::Unavailable);
        s.fail_next("patch", 1, Injected::Throttled { retry_after: 1 });
        s.fail_next("patch", 2, Injected::Unavailable);
        s.fail_next("patch", 1, Injected::Reset);
        // A write that lands but whose answer is lost: the retry meets a conflict (its own
        // write moved the resourceVersion on) and the run reads again, without adopting its
        // own record as someone else's.
        s.fail_next("patch", 1, Injected::AnswerLost);
        s.fail_next("delete", 1, Injected::Reset);
    });
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(record(&fake).phase, Phase::Succeeded);
    assert_eq!(fake.image(), "app:v2");
    assert!(fake.pod_revisions().iter().all(|(_, _, ready)| *ready));
    let (faulted, left) =
        fake.with(|s| (s.faulted, s.faults.values().map(|q| q.len()).sum::<usize>()));
    assert!(faulted >= 6, "faults were met: {faulted}");
    let said = ctx.progress.lines().join("\n");
    assert!(!said.contains("changed by another command"), "{said}");
    // The faults of calls the run made were all met (create/delete may not be made).
    assert!(left <= 2, "{left} faults left");
}

#[tokio::test]
async fn an_api_server_that_stays_away_ends_the_run_within_its_deadline_with_exit_1() {
    use crate::cluster::fake::Injected;
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = context(&fake, FakeGates::default(), 1);
    let mut req = request(StrategyKind::Rolling, "", "app:v2");
    req.config.timeouts.step = HumanDuration::from_secs(2);
    // The first two writes of the run work; then every write is refused with 503.
    fake.with(|s| {
        s.before_patch.push_back(Box::new(|_| {}));
        s.before_patch.push_back(Box::new(|s: &mut State| {
            s.fail_next("patch", 10_000, Injected::Unavailable)
        }));
    });
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { commands::run(&ctx, &req).await }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the run did not end"))
        .unwrap_or_else(|e| panic!("{e}"));
    let error = outcome
        .err()
        .unwrap_or_else(|| panic!("the run ended well"));
    assert_eq!(error.exit_code(), ExitCode::ClusterError);
    let text = error.to_string();
    for words in ["HTTP 503", "stopped there", "`rollout resume web`"] {
        assert!(text.contains(words), "{words}: {text}");
    }
}

#[test]
fn an_error_after_writes_is_not_reported_as_bad_input() {
    let bad_input = ExecError::NotRollable {
        statefulset: "web".into(),
        reason: "its rollout record names no second StatefulSet".into(),
    };
    assert_eq!(bad_input.exit_code(), ExitCode::BadInput);
    let after = ExecError::Stopped {
        statefulset: "web".into(),
        during: "",
        next: "continues it (`rollout abort` goes back to the stable revision)",
        source: Box::new(bad_input),
    };
    assert_eq!(after.exit_code(), ExitCode::ClusterError);
    let text = after.to_string();
    for words in [
        "names no second StatefulSet",
        "stopped there",
        "`rollout status web`",
        "`rollout resume web`",
        "`rollout abort`",
    ] {
        assert!(text.contains(words), "{words}: {text}");
    }
}

#[tokio::test]
async fn no_rollback_holds_a_failure_until_abort() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let mut req = request(StrategyKind::Rolling, "", "app:v2");
    req.config.on_failure = OnFailure::Hold;
    let ctx = context(&fake, FakeGates::failing_at(0, failure("web-2")), 1);
    let code = commands::run(&ctx, &req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::GateFailed);
    let held = record(&fake);
    assert_eq!(held.phase, Phase::Failed);
    assert_eq!(fake.image(), "app:v2", "left as it is");
    // Starting again over it is refused with a hint to abort.
    let err = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v3"))
        .await
        .expect_err("held failure");
    assert!(err.to_string().contains("rollout abort web"), "{err}");
    let code = commands::abort(&ctx, "web", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(record(&fake).phase, Phase::Aborted);
    assert_eq!(fake.image(), "app:v1");
}

#[tokio::test]
async fn a_recreate_whose_pods_do_not_stop_scales_back_up_on_its_unchanged_template() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let stable = fake.set().status.and_then(|s| s.current_revision);
    fake.with(|s| s.stuck.insert("web-2".into()));
    let mut req = request(StrategyKind::Recreate, "", "app:v2");
    req.config.timeouts.step = HumanDuration::from_millis(500);
    // The stuck pod finishes terminating once the rollback has scaled the set up again (before
    // the fix, the rollback scaled to 0 once more and waited on it until its own deadline).
    let watcher = fake.clone();
    let release = tokio::spawn(async move {
        let mut seen_zero = false;
        for _ in 0..1000 {
            let replicas = watcher.set().spec.and_then(|s| s.replicas);
            seen_zero |= replicas == Some(0);
            if seen_zero && replicas == Some(3) {
                watcher.with(|s| s.release_stuck());
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    });
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        release.await.unwrap_or(false),
        "the set never came back to 3 replicas"
    );
    assert_eq!(code, ExitCode::TimedOut);
    let r = record(&fake);
    assert_eq!(r.phase, Phase::RolledBack, "{}", r.message);
    assert_eq!(fake.image(), "app:v1");
    assert_eq!(fake.set().spec.and_then(|s| s.replicas), Some(3));
    assert!(
        fake.with(|s| s
            .patches()
            .iter()
            .all(|p| p.pointer("/spec/template").is_none())),
        "the template was never written"
    );
    let pods = fake.pod_revisions();
    assert_eq!(pods.len(), 3, "{pods:?}");
    assert!(pods
        .iter()
        .all(|(_, rev, ready)| Some(rev) == stable.as_ref() && *ready));
    let lines = ctx.progress.lines().join("\n");
    assert!(lines.contains("its pod template never changed"), "{lines}");
}

/// A server on 127.0.0.1 that answers every request with 200; gives its port.
async fn answering_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("address: {e}"))
        .port();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

/// A fake set of 2 pods whose pods (and a shadow's) are all at 127.0.0.1, and a shadow rollout
/// to app:v2 replaying at 10 a second for `duration` to `port`.
fn shadow_on_localhost(duration: HumanDuration, port: u16) -> (FakeCluster, RunRequest) {
    let fake = FakeCluster::new(statefulset("web", 2, "app:v1", true));
    fake.with(|s| {
        s.pod_ip = Some("127.0.0.1".into());
        for mut pod in s.list::<Pod>() {
            if let Some(status) = pod.status.as_mut() {
                status.pod_ip = Some("127.0.0.1".into());
            }
            s.put(&pod);
        }
    });
    let flags = StrategyFlags {
        duration: Some(duration),
        compare: Some(crate::model::twin::ShadowCompare {
            rate: 10,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut gates = GateSpec::default();
    gates.http.port = Some(crate::model::gate::PortRef::Number(port));
    let config = StrategyConfig::new(
        StrategyKind::Shadow,
        &flags,
        gates,
        Timeouts {
            step: HumanDuration::from_secs(60),
            total: None,
        },
        OnFailure::Rollback,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let req = RunRequest {
        statefulset: "web".into(),
        config,
        source: TemplateSource::Images(vec!["app:v2"
            .parse::<ImageChange>()
            .unwrap_or_else(|e| panic!("{e}"))]),
        wait_at_holds: false,
        prometheus_url: None,
    };
    (fake, req)
}

#[tokio::test]
async fn a_shadow_comparison_with_too_few_answers_removes_the_shadow_and_times_out() {
    // Nothing listens on the port: no pod answers, so there is nothing to judge by.
    let port = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("address: {e}"))
            .port()
    };
    let (fake, req) = shadow_on_localhost(HumanDuration::from_secs(2), port);
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = tokio::time::timeout(Duration::from_secs(40), commands::run(&ctx, &req))
        .await
        .unwrap_or_else(|_| panic!("the shadow run hangs: {:#?}", ctx.progress.lines()))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = ctx.progress.lines();
    assert_eq!(code, ExitCode::TimedOut, "{lines:#?}");
    let r = record(&fake);
    assert_eq!(r.phase, Phase::RolledBack, "{lines:#?}");
    assert_eq!(r.measured.comparison_passed, None);
    assert!(r.message.contains("could not decide"), "{}", r.message);
    assert!(r.message.contains("nothing was judged"), "{}", r.message);
    assert!(
        fake.with(|s| s.list::<StatefulSet>().len() == 1),
        "the shadow is removed"
    );
    assert_eq!(fake.image(), "app:v1", "the real set is untouched");
    assert!(
        fake.pod_revisions().iter().all(|(_, _, ready)| *ready),
        "{:?}",
        fake.pod_revisions()
    );
}

#[tokio::test]
async fn a_status_change_of_the_set_does_not_restart_the_shadow_comparison() {
    // Stable and shadow pods all answer at one local server, so the replay gets answers.
    let port = answering_server().await;
    let (fake, req) = shadow_on_localhost(HumanDuration::from_secs(11), port);
    let ctx = context(&fake, FakeGates::default(), 1);
    let run = tokio::spawn({
        let ctx = ctx.clone();
        async move { commands::run(&ctx, &req).await }
    });
    let comparing = |r: &RolloutState| {
        matches!(r.current(), Some(crate::model::plan::Step::Compare { .. }))
            && r.step_started_at.is_some()
    };
    until_record(&fake, comparing).await;
    // A stable pod restarts: the controller writes the set's status. The first figures
    // (after 5 s) are written on top of it, not refused.
    fake.with(State::touch_status);
    until_record(&fake, |r| comparing(r) && r.measured.comparison.is_some()).await;
    assert_eq!(fake.with(|s| s.conflicts), 0, "{:#?}", ctx.progress.lines());
    // The same just before the next figures are written: the write meets a conflict, the
    // record has not changed, and the replay goes on.
    fake.with(|s| s.before_patch.push_back(Box::new(State::touch_status)));

    let code = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .unwrap_or_else(|_| panic!("the shadow run hangs: {:#?}", ctx.progress.lines()))
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let lines = ctx.progress.lines();
    assert_eq!(code, ExitCode::Done, "{lines:#?}");
    assert_eq!(fake.with(|s| s.conflicts), 1, "{lines:#?}");
    let replays = lines.iter().filter(|l| l.contains("replaying")).count();
    assert_eq!(replays, 1, "the comparison started again: {lines:#?}");
    let r = record(&fake);
    assert_eq!(r.phase, Phase::Succeeded, "{lines:#?}");
    assert_eq!(r.measured.comparison_passed, Some(true));
    // All 11 s of the replay count (about 110 requests), not only those after a restart.
    let requests = r
        .measured
        .comparison
        .as_ref()
        .and_then(|c| c["requests"].as_u64())
        .unwrap_or(0);
    assert!(
        requests >= 80,
        "{requests} requests: {:?}",
        r.measured.comparison
    );
    assert!(
        fake.with(|s| s.list::<StatefulSet>().len() == 1),
        "the shadow is removed"
    );
    assert_eq!(fake.image(), "app:v1", "the real set is untouched");
}

/// The revision name the fake's controller gives `web`'s template with `image`.
fn revision_with_image(fake: &FakeCluster, image: &str) -> String {
    let mut sts = fake.set();
    if let Some(pod) = sts.spec.as_mut().and_then(|x| x.template.spec.as_mut()) {
        pod.containers[0].image = Some(image.into());
    }
    let template = sts.spec.map(|s| s.template).unwrap_or_default();
    fake.with(|s| s.revision_name_for(&template))
}

/// The record a patch of the set writes, if it writes one.
fn record_in(patch: &serde_json::Value) -> Option<RolloutState> {
    let text = patch["metadata"]["annotations"][crate::model::state::ANNOTATION_KEY].as_str()?;
    RolloutState::from_annotation("web", text).ok()
}

#[tokio::test]
async fn a_gate_failure_is_written_before_the_rollback_writes_anything() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = context(&fake, FakeGates::failing_at(0, failure("web-2")), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::GateFailed);
    let patches = fake.with(|s| s.patches());
    let first_back = patches
        .iter()
        .position(|p| record_in(p).is_some_and(|r| r.phase == Phase::RollingBack))
        .unwrap_or_else(|| panic!("no write of the rollback"));
    // A run killed right after the failure finds it recorded, with the way back planned, and
    // no change of the set yet: `resume` goes back instead of gating the failed release again.
    let written = &patches[first_back];
    assert!(written.get("spec").is_none(), "{written}");
    let r = record_in(written).unwrap_or_else(|| panic!("no record"));
    assert!(r.message.contains("web-2"), "{}", r.message);
    let rollback = r.rollback.unwrap_or_default();
    assert_eq!(rollback.current_step, 0);
    assert_eq!(
        rollback.steps,
        [
            crate::model::plan::Step::RestoreTemplate,
            crate::model::plan::Step::ReplaceStuckPods
        ]
    );
    assert!(patches[first_back + 1..]
        .iter()
        .any(|p| p["spec"].get("template").is_some()));
}

#[tokio::test]
async fn a_rollback_that_cannot_finish_ends_failed_with_exit_1() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    // Pods made anew on the stable revision never become Ready (those running stay Ready).
    let stable = revision_with_image(&fake, "app:v1");
    fake.with(|s| {
        s.broken.insert(stable.clone());
    });
    let mut req = request(StrategyKind::Rolling, "", "app:v2");
    req.config.timeouts.step = HumanDuration::from_millis(800);
    let ctx = context(&fake, FakeGates::failing_at(0, failure("web-2")), 1);
    let code = tokio::time::timeout(Duration::from_secs(30), commands::run(&ctx, &req))
        .await
        .unwrap_or_else(|_| panic!("the run hangs: {:#?}", ctx.progress.lines()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::ClusterError, "{:#?}", ctx.progress.lines());
    let r = record(&fake);
    assert_eq!(r.phase, Phase::Failed);
    assert!(
        r.message.contains("rollback of web did not finish"),
        "{}",
        r.message
    );
    assert!(r.message.contains("web-2"), "{}", r.message);
}

/// A rolling rollout of `web` to app:v2 whose first gate failed, held by `--no-rollback`.
async fn held_failure(fake: &FakeCluster) -> Context<FakeCluster, FakeGates> {
    let mut req = request(StrategyKind::Rolling, "", "app:v2");
    req.config.on_failure = OnFailure::Hold;
    let ctx = context(fake, FakeGates::failing_at(0, failure("web-2")), 1);
    let code = commands::run(&ctx, &req)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::GateFailed);
    assert_eq!(record(fake).phase, Phase::Failed);
    ctx
}

#[tokio::test]
async fn abort_timeout_bounds_the_rollback_it_runs() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let stable = revision_with_image(&fake, "app:v1");
    let ctx = held_failure(&fake).await;
    fake.with(|s| {
        s.broken.insert(stable.clone());
    });
    // Each step may take a minute; the abort was given 500ms.
    let started = std::time::Instant::now();
    let code = tokio::time::timeout(
        Duration::from_secs(20),
        commands::abort(&ctx, "web", Duration::from_millis(500)),
    )
    .await
    .unwrap_or_else(|_| panic!("abort waits out the step deadline instead of its --timeout"))
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(code, ExitCode::ClusterError);
    let r = record(&fake);
    assert_eq!(r.phase, Phase::Failed);
    assert!(
        r.message.contains("the time it was given (500ms)"),
        "{}",
        r.message
    );
}

#[tokio::test]
async fn undo_of_a_held_failure_returns_to_stable_and_keeps_the_record() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = held_failure(&fake).await;
    // --to-revision cannot know what the failed rollout left: refused, saying what to run.
    let err = commands::undo(&ctx, "web", Some(1), Duration::from_secs(30))
        .await
        .expect_err("undo --to-revision over a held failure");
    assert!(err.to_string().contains("rollout abort web"), "{err}");
    assert_eq!(fake.image(), "app:v2", "nothing changed");
    let code = commands::undo(&ctx, "web", None, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(fake.image(), "app:v1");
    let r = record(&fake);
    assert_eq!(
        r.phase,
        Phase::Aborted,
        "the record stays, and says what happened"
    );
    let set = fake.set();
    let strategy = set.spec.and_then(|s| s.update_strategy).unwrap_or_default();
    assert_eq!(strategy.rolling_update.and_then(|r| r.partition), Some(0));
}

#[tokio::test]
async fn plan_shows_both_ways_and_changes_nothing() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::plan(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let text = ctx.out.text();
    assert!(
        text.contains("1. set the new pod template with partition 3"),
        "{text}"
    );
    assert!(
        text.contains("if a step fails (or `rollout abort` runs during it):\n  steps 1-7:\n    1. set the stable pod template back on web with partition 0\n    2. wait until every pod of web is Ready on the stable revision"),
        "{text}"
    );
    assert!(fake.with(|s| s.patches().is_empty()), "nothing written");
    assert_eq!(fake.image(), "app:v1");
}

#[tokio::test]
async fn plan_and_history_as_json_lines_give_a_line_per_step_and_per_revision() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let mut ctx = context(&fake, FakeGates::default(), 1);
    ctx.output = Output::Jsonl;
    commands::plan(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let json_lines = |text: String| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let lines = json_lines(ctx.out.text());
    assert_eq!(lines.len(), 7, "{lines:#?}");
    assert_eq!(lines[0]["step"], 1);
    assert_eq!(lines[0]["of"], 7);
    assert_eq!(lines[0]["do"]["type"], "setTemplateAndFreeze");
    assert_eq!(lines[6]["rollback"][0]["type"], "restoreTemplate");
    // Two revisions once the set was rolled: a line each, oldest first.
    let code = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    let ctx = Context {
        out: crate::exec::progress::Out::memory(),
        ..ctx
    };
    commands::show_history(&ctx, "web")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let history = json_lines(ctx.out.text());
    assert_eq!(history.len(), 2, "{history:#?}");
    assert_eq!(history[1]["revision"], 2);
}

#[tokio::test]
async fn a_record_removed_just_before_a_write_is_not_written_again() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    // Just before the first partition write, someone removes the record: the write, based on
    // the old resourceVersion, meets a conflict; the set read again has no record, and the run
    // stops there instead of writing it back.
    fake.with(|s| {
        s.before_patch.push_back(Box::new(|_| {}));
        s.before_patch.push_back(Box::new(|s| {
            s.touch_set(|sts| {
                if let Some(a) = sts.metadata.annotations.as_mut() {
                    a.remove(crate::model::state::ANNOTATION_KEY);
                }
            })
        }));
    });
    let ctx = context(&fake, FakeGates::default(), 1);
    let result = commands::run(&ctx, &request(StrategyKind::Rolling, "", "app:v2")).await;
    let Err(error) = result else {
        panic!("the run went on: {result:?}");
    };
    assert!(matches!(error, ExecError::Drifted { .. }), "{error}");
    assert_eq!(error.exit_code(), ExitCode::Locked);
    assert!(
        error
            .to_string()
            .contains("the rollout record annotation was removed"),
        "{error}"
    );
    let sts = fake.set();
    assert!(
        sts.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key(crate::model::state::ANNOTATION_KEY)),
        "the record was written again"
    );
    assert_eq!(
        partitions(&fake),
        ["RollingUpdate:Some(3)"],
        "nothing after the freeze"
    );
}

/// A canary of `web` to app:v2 held at its pause, then a helm upgrade to app:v3 over it.
async fn canary_overridden(fake: &FakeCluster) -> Context<FakeCluster, FakeGates> {
    let ctx = context(fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Canary, "weight=34", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done, "stops at the hold");
    fake.with(|s| {
        s.touch_set(|sts| {
            if let Some(c) = sts
                .spec
                .as_mut()
                .and_then(|s| s.template.spec.as_mut())
                .and_then(|s| s.containers.first_mut())
            {
                c.image = Some("app:v3".into());
            }
            sts.metadata.managed_fields = Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
                    manager: Some("helm".into()),
                    operation: Some("Apply".into()),
                    fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
                        serde_json::json!({"f:spec": {"f:template": {}}}),
                    )),
                    ..Default::default()
                },
            ]);
        })
    });
    let result = commands::promote(&ctx, "web", false, false, None, &Default::default()).await;
    let Err(error) = result else {
        panic!("promote went on over the other deploy: {result:?}");
    };
    assert_eq!(error.exit_code(), ExitCode::Locked, "{error}");
    assert!(
        error.to_string().contains("`rollout release web`"),
        "{error}"
    );
    let stopped = record(fake);
    assert_eq!(stopped.phase, Phase::Failed);
    assert!(stopped.drift.is_some());
    ctx
}

#[tokio::test]
async fn release_after_someone_elses_deploy_gives_back_the_partition_and_keeps_their_template() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = canary_overridden(&fake).await;
    let before = partitions(&fake).len();
    let other = context(&fake, FakeGates::default(), 2);
    let code = commands::release(&other, "web", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(fake.image(), "app:v3", "the other deploy's template stays");
    let r = record(&fake);
    assert_eq!(r.phase, Phase::Released);
    assert!(
        r.message
            .contains("the pod template of web is now the other deploy (field manager helm)'s"),
        "{}",
        r.message
    );
    assert!(
        r.message
            .contains("rollout gave back what it held: give web back the update strategy"),
        "{}",
        r.message
    );
    // The partition as before the rollout (0), by the step and again with the final record:
    // the controller moves every pod to v3.
    assert_eq!(
        partitions(&fake)[before..],
        ["RollingUpdate:Some(0)", "RollingUpdate:Some(0)"]
    );
    let v3 = revision_with_image(&fake, "app:v3");
    assert!(
        fake.pod_revisions().iter().all(|(_, rev, _)| *rev == v3),
        "{:?}",
        fake.pod_revisions()
    );
    let lines = other.progress.lines().join("\n");
    assert!(lines.contains("[release 1/1]"), "{lines}");
    drop(ctx);
    // Released is over: a new rollout starts.
    let code = commands::run(&other, &request(StrategyKind::Rolling, "", "app:v4"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(record(&fake).phase, Phase::Succeeded);
}

#[tokio::test]
async fn release_without_drift_is_refused_before_any_write() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let ctx = context(&fake, FakeGates::default(), 1);
    let code = commands::run(&ctx, &request(StrategyKind::Canary, "weight=34", "app:v2"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done, "stops at the hold");
    let writes = fake.with(|s| s.patches().len());
    let result = commands::release(&ctx, "web", Duration::from_secs(30)).await;
    let Err(error) = result else {
        panic!("release went on: {result:?}");
    };
    assert_eq!(error.exit_code(), ExitCode::BadInput);
    let text = error.to_string();
    assert!(text.contains("`rollout abort web`"), "{text}");
    assert!(text.contains("`rollout promote web --full`"), "{text}");
    assert_eq!(fake.with(|s| s.patches().len()), writes, "nothing written");
    assert_eq!(record(&fake).phase, Phase::Paused);
}

#[tokio::test]
async fn a_killed_release_is_continued_by_running_it_again() {
    let fake = FakeCluster::new(statefulset("web", 3, "app:v1", true));
    let _ctx = canary_overridden(&fake).await;
    // A release whose process died after writing its start: the record says RollingBack,
    // cause Released, at its first step.
    let mut r = record(&fake);
    r.release(Timestamp::now())
        .unwrap_or_else(|e| panic!("{e}"));
    let text = r.to_annotation().unwrap_or_default();
    fake.with(|s| {
        s.touch_set(|sts| {
            sts.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(crate::model::state::ANNOTATION_KEY.to_string(), text);
        })
    });
    let other = context(&fake, FakeGates::default(), 3);
    let code = commands::release(&other, "web", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(code, ExitCode::Done);
    assert_eq!(record(&fake).phase, Phase::Released);
    assert_eq!(fake.image(), "app:v3");
}
