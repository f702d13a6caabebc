//! What `status` and `history` show, as plain data built by pure functions from the objects
//! (the StatefulSet, its pods, its ControllerRevisions, the Lease), printed as text for people
//! or as JSON for scripts. `undo`'s choice of revision lives here too, since it reads the same
//! history.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::patch::revision_template;
use super::progress::format_elapsed;
use crate::model::image::{container_images, ContainerImage};
use crate::model::state::{PauseReason, Phase, RolloutState, StateError};
use crate::model::strategy::StrategyKind;
use crate::model::weight::format_percent;
use crate::strategy::predicates::{is_ready, pod_revision};

/// Pods on one revision.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionPods {
    pub revision: String,
    /// `stable`, `target`, or empty for a revision the rollout does not know.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub role: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ContainerImage>,
    pub pods: Vec<String>,
    pub ready: u32,
}

/// The rollout as its record tells it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSummary {
    pub id: String,
    pub strategy: String,
    pub phase: Phase,
    /// 1-based; `steps + 1` once all are done.
    pub step: usize,
    pub steps: usize,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub step_description: String,
    /// Pods on the target revision now, and their share of the replicas.
    pub updated_pods: u32,
    pub achieved_weight: String,
    /// Through an HTTPRoute: the share of requests the route sends to the canary now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_percent: Option<u32>,
    pub message: String,
    /// Why the current step's gate could not decide yet (it runs again until the deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecided: Option<String>,
    pub started_by: String,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Who holds the lock.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LockInfo {
    pub holder: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<Timestamp>,
    /// The renewTime is older than the lease's duration by this machine's clock: a hint that
    /// the holder may be gone (clocks differ; a run judges by watching the Lease instead).
    pub expired: bool,
}

/// `rollout status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub namespace: String,
    pub statefulset: String,
    pub replicas: u32,
    pub ready_replicas: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    pub revisions: Vec<RevisionPods>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lock: Option<LockInfo>,
    /// The whole record, for scripts that want more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<RolloutState>,
    /// Why the rollout record on the set is not used (unreadable, newer, or not holding
    /// together); the rest of the report is the set as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_problem: Option<String>,
    /// The set the user named, when this set serves in its place since a blue/green rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving_for: Option<String>,
    /// Someone else's change to the set during the rollout: seen now (a rollout under way), or
    /// recorded by the run it stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::model::drift::Drift>,
}

impl StatusReport {
    /// Judges the route the rollout steers traffic through, as read now (`route`), when the
    /// set itself shows no drift: someone else's rewrite during a hold shows now, not only once
    /// a run stops on it.
    pub fn judge_route(&mut self, route: Option<&crate::model::route::HttpRoute>) {
        if self.drift.is_some() || self.serving_for.is_some() {
            return;
        }
        let Some(record) = self.record.as_ref() else {
            return;
        };
        if record.plan.statefulset == self.statefulset {
            self.drift = crate::strategy::predicates::drift::route_drift(record, route);
        }
    }

    /// True when someone else rewrote the rollout's route: seen now, or recorded by the run
    /// it stopped.
    fn route_drifted(&self) -> bool {
        let is_route = |d: &crate::model::drift::Drift| {
            d.changes
                .iter()
                .any(|c| matches!(c, crate::model::drift::Change::Route { .. }))
        };
        self.drift.as_ref().is_some_and(is_route)
            || self
                .record
                .as_ref()
                .and_then(|r| r.drift.as_ref())
                .is_some_and(is_route)
    }

    /// True when nothing more will happen by itself: no rollout, or a finished one, and the set
    /// at rest.
    pub fn is_settled(&self) -> bool {
        let rollout_done = self.rollout.as_ref().is_none_or(|r| r.phase.is_finished());
        let set_done = self.ready_replicas >= self.replicas
            && self.revisions.len() <= 1
            && self.current_revision == self.update_revision;
        rollout_done && set_done
    }

    /// What `status --watch` compares to decide whether to print again.
    pub fn fingerprint(&self) -> String {
        let mut copy = self.clone();
        copy.lock = None;
        if let Some(r) = copy.rollout.as_mut() {
            r.updated_at = Timestamp::UNIX_EPOCH;
        }
        copy.record = None;
        serde_json::to_string(&copy).unwrap_or_default()
    }
}

fn lock_info(lease: &Lease, now: Timestamp) -> Option<LockInfo> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed_at = spec.renew_time.as_ref().map(|t| t.0);
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    let expired = renewed_at.is_none_or(|at| now.as_second() - at.as_second() >= duration);
    Some(LockInfo {
        holder,
        renewed_at,
        expired,
    })
}

/// Builds the status of `sts` from its pods, record and lease. The record it carries was on the
/// set `record_on` (its own name, or the set a serving green replaced, whose record shows the
/// blue/green that put it in service) and is checked against that set.
pub fn status_report(
    namespace: &str,
    sts: &StatefulSet,
    record_on: &str,
    pods: &[Pod],
    lease: Option<&Lease>,
    now: Timestamp,
) -> Result<StatusReport, StateError> {
    let name = sts.metadata.name.clone().unwrap_or_default();
    let spec = sts.spec.as_ref();
    let status = sts.status.as_ref();
    let replicas = spec
        .and_then(|s| s.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(1);
    let (record, record_problem) =
        match crate::strategy::trust::read_record(record_on, sts.metadata.annotations.as_ref()) {
            Ok(record) => (record, None),
            Err(problem) => (None, Some(problem.to_string())),
        };
    let stable = record
        .as_ref()
        .and_then(|r| r.stable.revision.revision.clone());
    let target = record.as_ref().and_then(|r| r.target.revision.clone());

    let mut by_revision: BTreeMap<String, RevisionPods> = BTreeMap::new();
    for pod in pods {
        let revision = pod_revision(pod).unwrap_or("?").to_string();
        let entry = by_revision
            .entry(revision.clone())
            .or_insert_with(|| RevisionPods {
                role: if Some(&revision) == stable.as_ref() {
                    "stable".into()
                } else if Some(&revision) == target.as_ref() {
                    "target".into()
                } else {
                    String::new()
                },
                images: match (&record, revision.as_str()) {
                    (Some(r), rev) if Some(rev) == stable.as_deref() => {
                        r.stable.revision.images.clone()
                    }
                    (Some(r), rev) if Some(rev) == target.as_deref() => r.target.images.clone(),
                    _ => Vec::new(),
                },
                revision,
                pods: Vec::new(),
                ready: 0,
            });
        entry
            .pods
            .push(pod.metadata.name.clone().unwrap_or_default());
        if is_ready(pod) {
            entry.ready += 1;
        }
    }
    let mut revisions: Vec<RevisionPods> = by_revision.into_values().collect();
    // Stable first, then target, then the rest.
    revisions.sort_by_key(|r| match r.role.as_str() {
        "stable" => 0,
        "target" => 1,
        _ => 2,
    });

    let rollout = record.as_ref().map(|r| {
        let updated = target
            .as_ref()
            .and_then(|t| revisions.iter().find(|x| &x.revision == t))
            .map(|x| u32::try_from(x.pods.len()).unwrap_or(u32::MAX))
            .unwrap_or(0);
        let share = if replicas == 0 {
            0.0
        } else {
            f64::from(updated) * 100.0 / f64::from(replicas)
        };
        RolloutSummary {
            id: r.id.clone(),
            strategy: r.plan.strategy.to_string(),
            phase: r.phase,
            step: r.current_step + 1,
            steps: r.plan.steps.len(),
            step_description: r
                .current()
                .map(|s| r.plan.describe_step(s))
                .unwrap_or_default(),
            updated_pods: updated,
            achieved_weight: format!("{updated} of {replicas} pods ({})", format_percent(share)),
            traffic_percent: r.plan.route_percent_after(r.current_step).map(|p| p.get()),
            message: r.message.clone(),
            undecided: r.undecided.clone(),
            started_by: r.started_by.clone(),
            started_at: r.started_at,
            updated_at: r.updated_at,
        }
    });

    // Judged live only on the set the record was written for (not a serving green showing
    // its home's record).
    let drift = record.as_ref().and_then(|r| {
        let own = r.plan.statefulset == name;
        own.then(|| crate::strategy::predicates::drift::detect(r, sts))
            .flatten()
            .or_else(|| {
                r.drift
                    .clone()
                    .filter(|_| r.phase == crate::model::state::Phase::Failed)
            })
    });
    Ok(StatusReport {
        serving_for: None,
        record_problem,
        drift,
        namespace: namespace.to_string(),
        statefulset: name,
        replicas,
        ready_replicas: status
            .and_then(|s| s.ready_replicas)
            .and_then(|r| u32::try_from(r).ok())
            .unwrap_or(0),
        current_revision: status.and_then(|s| s.current_revision.clone()),
        update_revision: status.and_then(|s| s.update_revision.clone()),
        partition: spec
            .and_then(|s| s.update_strategy.as_ref())
            .and_then(|u| u.rolling_update.as_ref())
            .and_then(|r| r.partition)
            .and_then(|p| u32::try_from(p).ok()),
        revisions,
        rollout,
        lock: lease.and_then(|l| lock_info(l, now)),
        record,
    })
}

fn images_text(images: &[ContainerImage]) -> String {
    images
        .iter()
        .map(|i| format!("{}={}", i.container, i.image))
        .collect::<Vec<_>>()
        .join(", ")
}

fn ago(at: Timestamp, now: Timestamp) -> String {
    let d = now
        .duration_since(at)
        .try_into()
        .unwrap_or(std::time::Duration::ZERO);
    format!("{} ago", format_elapsed(d))
}

/// The text `rollout status` prints.
/// The rollback's steps, with where it stands, while it runs or once it stopped short.
fn render_rollback(out: &mut String, record: &RolloutState) {
    let Some(rollback) = record.rollback.as_ref() else {
        return;
    };
    let going = matches!(record.phase, Phase::RollingBack | Phase::Failed);
    if !going || rollback.steps.is_empty() {
        return;
    }
    let label = if record.rollback_cause == Some(crate::model::state::RollbackCause::Released) {
        "release:  "
    } else {
        "rollback: "
    };
    let _ = writeln!(
        out,
        "{label}step {}/{}",
        (rollback.current_step + 1).min(rollback.steps.len()),
        rollback.steps.len()
    );
    for (i, step) in rollback.steps.iter().enumerate() {
        let mark = match i.cmp(&rollback.current_step) {
            std::cmp::Ordering::Less => "done",
            std::cmp::Ordering::Equal if record.phase == Phase::Failed => "FAILED",
            std::cmp::Ordering::Equal => "running",
            std::cmp::Ordering::Greater => "to do",
        };
        let _ = writeln!(
            out,
            "           {}. {} ({mark})",
            i + 1,
            record.plan.describe_step(step)
        );
    }
}

pub fn render_status(report: &StatusReport, now: Timestamp) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "StatefulSet {}/{}: {} replicas, {} Ready{}",
        report.namespace,
        report.statefulset,
        report.replicas,
        report.ready_replicas,
        report
            .partition
            .filter(|p| *p > 0)
            .map(|p| format!(", partition {p}"))
            .unwrap_or_default()
    );
    if let Some(problem) = &report.record_problem {
        let _ = writeln!(out, "record:    NOT USED: {problem}");
    }
    if let Some(home) = &report.serving_for {
        // `undo` goes back to the set that served before only while the blue/green is the last
        // rollout here; after a later canary on this set it undoes that canary instead.
        let undo = match &report.rollout {
            Some(r) if r.strategy == StrategyKind::BlueGreen.as_str() => {
                format!(" (`rollout undo {home}` goes back)")
            }
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "home:      {home}, in whose place {} serves since a blue/green rollout{undo}",
            report.statefulset
        );
    }
    match &report.rollout {
        None => {
            let _ = writeln!(out, "rollout:   none recorded");
        }
        Some(r) => {
            let _ = writeln!(
                out,
                "rollout:   {} ({}), started by {} {}",
                r.strategy,
                r.id,
                r.started_by,
                ago(r.started_at, now)
            );
            let step = if r.step > r.steps {
                format!(", all {} steps done", r.steps)
            } else if r.phase.is_finished() {
                format!(
                    " (stopped at step {}/{}: {})",
                    r.step, r.steps, r.step_description
                )
            } else {
                format!(" at step {}/{}: {}", r.step, r.steps, r.step_description)
            };
            let pause = match report.record.as_ref().and_then(|x| x.pause.clone()) {
                Some(PauseReason::User) => " (paused by `rollout pause`)".to_string(),
                Some(PauseReason::GateInconclusive { .. }) => {
                    " (a gate could not decide)".to_string()
                }
                Some(PauseReason::Step { until: Some(at) }) => {
                    format!(" (until {})", at.strftime("%H:%M:%S UTC"))
                }
                _ => String::new(),
            };
            let _ = writeln!(out, "phase:     {}{step}{pause}", r.phase);
            if let Some(record) = report.record.as_ref() {
                render_rollback(&mut out, record);
            }
            match report.record.as_ref() {
                Some(record) if !record.plan.strategy.uses_partition() => {
                    render_beyond_partition(&mut out, record);
                }
                _ => {
                    // Someone else rewrote the route: its weights are no longer rollout's.
                    let route_drifted = report.route_drifted();
                    let _ = match r.traffic_percent {
                        Some(_) if route_drifted => writeln!(
                            out,
                            "weight:    {} on the new version, traffic as someone else left the route (see message)",
                            r.achieved_weight
                        ),
                        Some(p) => writeln!(
                            out,
                            "weight:    {} on the new version, traffic {p}% through the route",
                            r.achieved_weight
                        ),
                        None => {
                            writeln!(out, "weight:    {} on the new version", r.achieved_weight)
                        }
                    };
                }
            }
        }
    }
    for rev in &report.revisions {
        let label = if rev.role.is_empty() {
            "revision:".to_string()
        } else {
            format!("{}:", rev.role)
        };
        let images = if rev.images.is_empty() {
            String::new()
        } else {
            format!(" ({})", images_text(&rev.images))
        };
        let _ = writeln!(
            out,
            "{label:<10} {}{images}: {} ({} of {} Ready)",
            rev.revision,
            rev.pods.join(", "),
            rev.ready,
            rev.pods.len()
        );
    }
    if let Some(r) = &report.rollout {
        if !r.message.is_empty() {
            let mut lines = r.message.lines();
            let _ = writeln!(out, "message:   {}", lines.next().unwrap_or_default());
            for line in lines {
                let _ = writeln!(out, "           {line}");
            }
        }
        if let Some(why) = &r.undecided {
            let _ = writeln!(
                out,
                "undecided: {} (the gate runs again until the step's deadline)",
                why.lines().next().unwrap_or_default()
            );
        }
    }
    if let Some(drift) = &report.drift {
        let recorded = report
            .rollout
            .as_ref()
            .is_some_and(|r| r.message.starts_with(&drift.to_string()));
        if !recorded {
            let _ = writeln!(out, "drift:     {drift}");
            let _ =
                writeln!(
                    out,
                    "           {}",
                    crate::strategy::predicates::drift::advice(&report.statefulset, drift)
                        .replacen("stopped without", "a run stops without", 1)
                );
        }
    }
    if let Some(lock) = &report.lock {
        let renewed = lock
            .renewed_at
            .map(|t| format!(", renewed {}", ago(t, now)))
            .unwrap_or_default();
        let state = if lock.expired {
            " (stale by this machine's clock: that run may be gone; a run takes the lease over once it sees no renewal for the lease's duration)"
        } else {
            ""
        };
        let _ = writeln!(out, "lock:      held by {}{renewed}{state}", lock.holder);
    }
    out
}

/// The lines of a blue/green, recreate or shadow record: which set serves, the downtime, the
/// comparison.
fn render_beyond_partition(out: &mut String, record: &RolloutState) {
    use crate::model::twin::TwinRole;
    if let Some(twin) = &record.twin {
        match twin.role {
            TwinRole::Green => {
                let switched = record.measured.switched_at.is_some();
                let back = matches!(
                    record.phase,
                    Phase::RolledBack | Phase::Aborted | Phase::Released
                );
                let serving = if switched && !back {
                    &twin.set
                } else {
                    &record.plan.statefulset
                };
                let _ = writeln!(
                    out,
                    "serving:   {serving} (blue {}, green {}; live Service(s): {})",
                    record.plan.statefulset,
                    twin.set,
                    twin.services
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if let Some(at) = record.measured.switched_at {
                    let _ = writeln!(out, "switched:  {}", at.strftime("%H:%M:%S UTC"));
                }
            }
            TwinRole::Shadow => {
                let _ = writeln!(out, "shadow:    {} (no live Service selects it)", twin.set);
            }
        }
    }
    if let Some(ms) = record.measured.downtime_ms {
        let _ = writeln!(
            out,
            "downtime:  {} (no Ready pod behind the Service)",
            crate::exec::progress::format_elapsed(std::time::Duration::from_millis(ms))
        );
    }
    if let Some(report) = record
        .measured
        .comparison
        .clone()
        .and_then(|v| serde_json::from_value::<crate::gate::compare::CompareReport>(v).ok())
    {
        let text = crate::gate::compare::render_report(&report);
        let mut lines = text.lines();
        let _ = writeln!(out, "compare:   {}", lines.next().unwrap_or_default());
        for line in lines {
            let _ = writeln!(out, "           {line}");
        }
    }
}

/// One line for `status --watch` after the first full report: the time, the phase and step, the
/// pods on the new version and Ready, and the first line of the message.
pub fn render_status_line(report: &StatusReport, now: Timestamp) -> String {
    let time = now.strftime("%H:%M:%S");
    let ready = format!("{} of {} Ready", report.ready_replicas, report.replicas);
    match &report.rollout {
        None => {
            let revisions = report
                .revisions
                .iter()
                .map(|r| format!("{} on {}", r.pods.len(), r.revision))
                .collect::<Vec<_>>()
                .join(", ");
            format!("{time}  {ready}; {revisions}\n")
        }
        Some(r) => {
            let step = if r.step > r.steps {
                format!("{}/{}", r.steps, r.steps)
            } else {
                format!("{}/{}", r.step, r.steps)
            };
            let message = r.message.lines().next().unwrap_or_default();
            format!(
                "{time}  {:<11} step {step:<7} new version on {}, {ready}  {message}\n",
                r.phase.to_string(),
                r.achieved_weight
            )
        }
    }
}

/// One ControllerRevision of a StatefulSet.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: i64,
    pub name: String,
    pub images: Vec<ContainerImage>,
    /// `status.currentRevision` (what the old pods run).
    pub current: bool,
    /// `status.updateRevision` (what the template is now).
    pub update: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(skip)]
    pub template: Option<serde_json::Value>,
}

/// The revisions owned by `sts`, oldest first.
pub fn history(sts: &StatefulSet, revisions: &[ControllerRevision]) -> Vec<HistoryEntry> {
    let uid = sts.metadata.uid.as_deref();
    let status = sts.status.as_ref();
    let mut entries: Vec<HistoryEntry> = revisions
        .iter()
        .filter(|r| {
            let owner = r
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true));
            match (owner, uid) {
                (Some(o), Some(uid)) => o.uid == uid,
                _ => true,
            }
        })
        .map(|r| {
            let name = r.metadata.name.clone().unwrap_or_default();
            let template = r.data.as_ref().and_then(|d| revision_template(&d.0));
            let images = template
                .clone()
                .and_then(|t| serde_json::from_value::<PodTemplateSpec>(t).ok())
                .and_then(|t| t.spec)
                .map(|s| container_images(&s))
                .unwrap_or_default();
            HistoryEntry {
                revision: r.revision,
                current: status.and_then(|s| s.current_revision.as_deref()) == Some(name.as_str()),
                update: status.and_then(|s| s.update_revision.as_deref()) == Some(name.as_str()),
                created_at: r.metadata.creation_timestamp.as_ref().map(|t| t.0),
                images,
                template,
                name,
            }
        })
        .collect();
    entries.sort_by_key(|e| e.revision);
    entries
}

/// The text `rollout history` prints.
pub fn render_history(statefulset: &str, entries: &[HistoryEntry]) -> String {
    let mut out = format!("StatefulSet {statefulset}\n");
    if entries.is_empty() {
        out.push_str("  no revisions recorded\n");
        return out;
    }
    let width = entries
        .iter()
        .map(|e| e.name.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(out, "REVISION  {:<width$}  IMAGES", "NAME");
    for e in entries {
        let mut marks = Vec::new();
        if e.update {
            marks.push("template");
        }
        if e.current {
            marks.push("current");
        }
        let marks = if marks.is_empty() {
            String::new()
        } else {
            format!("  ({})", marks.join(", "))
        };
        let _ = writeln!(
            out,
            "{:<8}  {:<width$}  {}{marks}",
            e.revision,
            e.name,
            images_text(&e.images)
        );
    }
    out
}

/// The revision `undo` returns to: `to_revision` when given (and not 0), else the newest one
/// that is not the current template.
pub fn pick_undo_revision(
    statefulset: &str,
    entries: &[HistoryEntry],
    to_revision: Option<i64>,
) -> Result<HistoryEntry, String> {
    let known = || {
        entries
            .iter()
            .map(|e| e.revision.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match to_revision.filter(|n| *n != 0) {
        Some(n) => entries
            .iter()
            .find(|e| e.revision == n)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "has no revision {n} (its revisions: {}); see `rollout history {statefulset}`",
                    known()
                )
            }),
        None => entries
            .iter()
            .rev()
            .find(|e| !e.update)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "has no previous revision to go back to (its revisions: {})",
                    known()
                )
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::tests::sample_state;
    use crate::strategy::predicates::tests::pod;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetStatus,
        StatefulSetUpdateStrategy,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
    use serde_json::json;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn sts(record: Option<&RolloutState>) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                uid: Some("u1".into()),
                annotations: record.map(|r| {
                    [(
                        "rollout.dev/state".to_string(),
                        r.to_annotation().unwrap_or_default(),
                    )]
                    .into()
                }),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(2),
                // Where the sample record's step 3 left it: no drift.
                update_strategy: Some(StatefulSetUpdateStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateStatefulSetStrategy {
                        partition: Some(1),
                        max_unavailable: None,
                    }),
                }),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                ready_replicas: Some(2),
                current_revision: Some("web-6c8f".into()),
                update_revision: Some("web-7d9b".into()),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn status_shows_someone_elses_change_live_and_as_recorded() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
        let mut record = sample_state();
        record.target.revision = Some("web-7d9b".into());
        record.current_step = 2;
        let mut set = sts(Some(&record));
        if let Some(r) = set
            .spec
            .as_mut()
            .and_then(|s| s.update_strategy.as_mut())
            .and_then(|u| u.rolling_update.as_mut())
        {
            r.partition = Some(0);
        }
        set.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some("kubectl-patch".into()),
            operation: Some("Update".into()),
            time: Some(Time(ts(1_700_000_050))),
            fields_v1: Some(FieldsV1(
                json!({"f:spec": {"f:updateStrategy": {"f:rollingUpdate": {"f:partition": {}}}}}),
            )),
            ..Default::default()
        }]);
        let report = status_report("shop", &set, "web", &[], None, ts(1_700_000_060))
            .unwrap_or_else(|e| panic!("{e}"));
        let text = render_status(&report, ts(1_700_000_060));
        assert!(
            text.contains("drift:     changed by someone else: the partition of web: 1 -> 0, by field manager kubectl-patch (Update) at 2023-11-14 22:14:10 UTC\n"),
            "{text}"
        );
        assert!(text.contains("`rollout abort web`"), "{text}");
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["drift"]["by"]["manager"], "kubectl-patch");
        assert_eq!(json["drift"]["changes"][0]["field"], "partition");

        // The run that saw it stopped the rollout and recorded it: the message says it once.
        let drift = report.drift.clone().unwrap_or_else(|| panic!("no drift"));
        record.drifted(drift.clone(), format!("{drift}; advice"), ts(1_700_000_055));
        let stopped = sts(Some(&record));
        let report = status_report("shop", &stopped, "web", &[], None, ts(1_700_000_060))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.drift.as_ref(), Some(&drift));
        let text = render_status(&report, ts(1_700_000_060));
        assert!(text.contains("phase:     Failed"), "{text}");
        assert!(
            text.contains("message:   changed by someone else"),
            "{text}"
        );
        assert!(!text.contains("drift:"), "{text}");
    }

    #[test]
    fn status_of_a_release_names_the_other_deploy_and_what_was_given_back() {
        use crate::model::drift::{Change, Drift, Writer};
        let mut record = sample_state();
        record.target.revision = Some("web-7d9b".into());
        record.current_step = 2;
        let drift = Drift {
            changes: vec![Change::Template {
                set: "web".into(),
                expected_revision: Some("web-7d9b".into()),
                found_revision: Some("web-8e0c".into()),
                images: vec![],
            }],
            by: Some(Writer {
                manager: "helm".into(),
                operation: Some("Apply".into()),
                time: None,
            }),
        };
        record.drifted(drift, "stopped".into(), ts(1_700_000_050));
        record
            .release(ts(1_700_000_055))
            .unwrap_or_else(|e| panic!("{e}"));
        let report = status_report(
            "shop",
            &sts(Some(&record)),
            "web",
            &[],
            None,
            ts(1_700_000_056),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = render_status(&report, ts(1_700_000_056));
        assert!(text.contains("phase:     RollingBack"), "{text}");
        assert!(text.contains("release:  step 1/1\n"), "{text}");
        assert!(
            text.contains("1. give web back the update strategy and partition it had before the rollout (running)"),
            "{text}"
        );
        record
            .begin_rollback_step(ts(1_700_000_056))
            .and_then(|()| record.complete_rollback_step(ts(1_700_000_057)))
            .and_then(|()| record.rollback_done(ts(1_700_000_058)))
            .unwrap_or_else(|e| panic!("{e}"));
        let report = status_report(
            "shop",
            &sts(Some(&record)),
            "web",
            &[],
            None,
            ts(1_700_000_060),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = render_status(&report, ts(1_700_000_060));
        assert!(text.contains("phase:     Released"), "{text}");
        assert!(
            text.contains("message:   released: the pod template of web is now the other deploy (field manager helm)'s; rollout gave back what it held: give web back the update strategy and partition it had before the rollout\n"),
            "{text}"
        );
        assert!(!text.contains("release:  step"), "{text}");
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["rollout"]["phase"], "Released", "{json}");
        assert!(
            json["rollout"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("field manager helm")),
            "{json}"
        );
    }

    #[test]
    fn status_says_why_a_gate_is_running_again() {
        let mut record = sample_state();
        record.current_step = 2;
        record.message = "gate running".into();
        record.undecided = Some("HTTP gate could not judge pod web-1: no answer\nmore".into());
        let report = status_report(
            "shop",
            &sts(Some(&record)),
            "web",
            &[],
            None,
            ts(1_700_000_060),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = render_status(&report, ts(1_700_000_060));
        assert!(
            text.ends_with("message:   gate running\nundecided: HTTP gate could not judge pod web-1: no answer (the gate runs again until the step's deadline)\n"),
            "{text}"
        );
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(
            json["rollout"]["undecided"],
            "HTTP gate could not judge pod web-1: no answer\nmore"
        );
    }

    #[test]
    fn status_shows_revisions_weight_and_record() {
        let mut record = sample_state();
        record.target.revision = Some("web-7d9b".into());
        record.current_step = 2;
        record.message = "gate running".into();
        let pods = vec![
            pod("web-0", "web-6c8f", true, false),
            pod("web-1", "web-7d9b", true, false),
        ];
        let report = status_report(
            "shop",
            &sts(Some(&record)),
            "web",
            &pods,
            None,
            ts(1_700_000_060),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let rollout = report
            .rollout
            .clone()
            .unwrap_or_else(|| panic!("no rollout"));
        assert_eq!(rollout.updated_pods, 1);
        assert_eq!(rollout.achieved_weight, "1 of 2 pods (50%)");
        assert_eq!((rollout.step, rollout.steps), (3, 5));
        assert_eq!(report.revisions[0].role, "stable");
        assert_eq!(report.revisions[1].role, "target");
        assert!(!report.is_settled());
        let text = render_status(&report, ts(1_700_000_060));
        let expected = "\
StatefulSet shop/web: 2 replicas, 2 Ready, partition 1
rollout:   rolling (r-1), started by ci@runner-7 1m 0s ago
phase:     Progressing at step 3/5: gate web-1
weight:    1 of 2 pods (50%) on the new version
stable:    web-6c8f (app=time-app:v1): web-0 (1 of 1 Ready)
target:    web-7d9b (app=time-app:v2): web-1 (1 of 1 Ready)
message:   gate running
";
        assert_eq!(text, expected);
        assert_eq!(
            render_status_line(&report, ts(1_700_000_060)),
            "22:14:20  Progressing step 3/5     new version on 1 of 2 pods (50%), 2 of 2 Ready  gate running\n"
        );
        let json = serde_json::to_value(&report).unwrap_or_default();
        assert_eq!(json["rollout"]["phase"], "Progressing");
        assert_eq!(json["record"]["id"], "r-1");
    }

    #[test]
    fn a_set_serving_for_its_home_offers_undo_only_after_the_blue_green() {
        let pods = vec![
            pod("web-0", "web-7d9b", true, false),
            pod("web-1", "web-7d9b", true, false),
        ];
        let mut record = sample_state();
        record.target.revision = Some("web-7d9b".into());
        for (strategy, hint) in [
            (StrategyKind::BlueGreen, true),
            (StrategyKind::Canary, false),
            (StrategyKind::Rolling, false),
        ] {
            record.plan.strategy = strategy;
            let mut report = status_report("shop", &sts(Some(&record)), "web", &pods, None, ts(0))
                .unwrap_or_else(|e| panic!("{e}"));
            report.serving_for = Some("app".into());
            let text = render_status(&report, ts(0));
            let home = text.lines().nth(1).unwrap_or_default();
            assert!(
                home.starts_with(
                    "home:      app, in whose place web serves since a blue/green rollout"
                ),
                "{strategy}: {text}"
            );
            assert_eq!(
                home.contains("`rollout undo app` goes back"),
                hint,
                "{strategy}: {home}"
            );
        }
    }

    #[test]
    fn status_without_a_record_and_with_a_lock() {
        let mut set = sts(None);
        if let Some(s) = set.status.as_mut() {
            s.update_revision = s.current_revision.clone();
        }
        let pods = vec![
            pod("web-0", "web-6c8f", true, false),
            pod("web-1", "web-6c8f", true, false),
        ];
        let lease = Lease {
            metadata: ObjectMeta::default(),
            spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                holder_identity: Some("me@host pid 4".into()),
                renew_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
                    ts(100),
                )),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
        };
        let report = status_report("shop", &set, "web", &pods, Some(&lease), ts(130))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.is_settled());
        assert_eq!(
            render_status_line(&report, ts(130)),
            "00:02:10  2 of 2 Ready; 2 on web-6c8f\n"
        );
        let text = render_status(&report, ts(130));
        assert!(text.contains("rollout:   none recorded"), "{text}");
        assert!(
            text.contains("revision:  web-6c8f: web-0, web-1 (2 of 2 Ready)"),
            "{text}"
        );
        assert!(
            text.contains("lock:      held by me@host pid 4, renewed 30.0s ago (stale by this machine's clock"),
            "{text}"
        );
    }

    fn revision(name: &str, number: i64, image: &str, owner: &str) -> ControllerRevision {
        ControllerRevision {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: Some(vec![OwnerReference {
                    uid: owner.into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            revision: number,
            data: Some(RawExtension(json!({"spec": {"template": {
                "$patch": "replace",
                "spec": {"containers": [{"name": "app", "image": image}]}
            }}}))),
        }
    }

    #[test]
    fn history_lists_owned_revisions_in_order() {
        let revisions = vec![
            revision("web-7d9b", 2, "app:v2", "u1"),
            revision("web-6c8f", 1, "app:v1", "u1"),
            revision("other-1", 1, "x:1", "u2"),
        ];
        let entries = history(&sts(None), &revisions);
        let names: Vec<_> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["web-6c8f", "web-7d9b"]);
        assert!(entries[0].current && entries[1].update);
        let text = render_history("web", &entries);
        assert_eq!(
            text,
            "StatefulSet web\nREVISION  NAME      IMAGES\n1         web-6c8f  app=app:v1  (current)\n2         web-7d9b  app=app:v2  (template)\n"
        );
    }

    #[test]
    fn undo_picks_the_previous_or_the_asked_revision() {
        let revisions = vec![
            revision("web-a", 1, "app:v1", "u1"),
            revision("web-6c8f", 2, "app:v2", "u1"),
            revision("web-7d9b", 3, "app:v3", "u1"),
        ];
        let entries = history(&sts(None), &revisions);
        let pick = |n| pick_undo_revision("web", &entries, n).map(|e| e.name);
        assert_eq!(pick(None), Ok("web-6c8f".to_string()));
        assert_eq!(pick(Some(0)), Ok("web-6c8f".to_string()));
        assert_eq!(pick(Some(1)), Ok("web-a".to_string()));
        let err = pick(Some(9)).expect_err("no revision 9");
        assert!(
            err.contains("no revision 9") && err.contains("1, 2, 3"),
            "{err}"
        );
        let only = history(&sts(None), &[revision("web-7d9b", 1, "app:v3", "u1")]);
        assert!(pick_undo_revision("web", &only, None).is_err());
    }
}
