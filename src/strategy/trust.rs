//! What rollout believes of what it reads back from the cluster. The rollout record lives in an
//! annotation anyone who can patch the StatefulSet can write, so it is data, never authority:
//! [`check_record`] judges a parsed record against the set it sits on before any command acts on
//! it, [`gates_not_given`] keeps a command or webhook named only by the record from running, and
//! [`serves_one_of`] keeps a rollback from rewriting the selector of a Service that serves
//! neither of the rollout's sets. [`mask_env_values`] keeps literal env values of pod templates
//! (passwords, tokens) out of everything printed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::model::duration::HumanDuration;
use crate::model::gate::LocalGates;
use crate::model::plan::Step;
use crate::model::state::{RolloutState, StateError, STATE_VERSION};
use crate::model::strategy::{CanaryParams, PauseSpec, StrategyParams};
use crate::model::twin::{Twin, REVISION_LABEL};

/// Most replicas (and pods per step) a record may speak of; far above any real StatefulSet, low
/// enough that a loop over them ends quickly.
pub const MAX_REPLICAS: u32 = 100_000;
/// Most steps a plan (or a rollback) may have.
pub const MAX_STEPS: usize = 10_000;
/// Longest duration a record may carry (pauses, deadlines, gate settings): a year.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The highest pod ordinal Kubernetes allows (`spec.ordinals.start` + replicas is an int32).
const MAX_ORDINAL: u32 = i32::MAX as u32;

/// The record on a set named `statefulset`, from its annotations: parsed, then checked with
/// [`check_record`]. Every command reads records through here.
pub fn read_record(
    statefulset: &str,
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<RolloutState>, StateError> {
    let Some(record) = RolloutState::from_annotations(statefulset, annotations)? else {
        return Ok(None);
    };
    let problems = check_record(&record, statefulset);
    if problems.is_empty() {
        Ok(Some(record))
    } else {
        Err(StateError::Untrusted {
            statefulset: statefulset.to_string(),
            problems: problems.join("; "),
        })
    }
}

/// Why a record is not used, one line per problem, for a person to read. Empty: the record
/// holds together and names only the set it sits on and its own twin.
pub fn check_record(record: &RolloutState, own: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |text: String| problems.push(text);
    if record.version == 0 || record.version > STATE_VERSION {
        problem(format!(
            "version {} (this rollout reads {STATE_VERSION})",
            record.version
        ));
    }
    if record.plan.statefulset != own {
        problem(format!(
            "its plan is for StatefulSet {:?}, not {own}",
            record.plan.statefulset
        ));
    }
    if record.id.is_empty() || record.id.len() > 253 {
        problem(format!("its id {:?} is empty or too long", record.id));
    }
    let plan = &record.plan;
    if plan.replicas > MAX_REPLICAS {
        problem(format!(
            "{} replicas (at most {MAX_REPLICAS})",
            plan.replicas
        ));
    }
    if u64::from(plan.ordinal_start) + u64::from(plan.replicas) > u64::from(MAX_ORDINAL) {
        problem(format!(
            "ordinal start {} is out of range",
            plan.ordinal_start
        ));
    }
    if plan.steps.len() > MAX_STEPS {
        problem(format!("{} steps (at most {MAX_STEPS})", plan.steps.len()));
    }
    if record.current_step > plan.steps.len() {
        problem(format!(
            "its current step {} is past its {} steps",
            record.current_step + 1,
            plan.steps.len()
        ));
    }
    let twin = record.twin.as_ref();
    if let Some(twin) = twin {
        check_twin(twin, own, &mut problem);
    }
    for (i, step) in plan.steps.iter().enumerate() {
        if let Some(text) = step_problem(step, own, twin) {
            problem(format!("step {}: {text}", i + 1));
        }
    }
    if let Some(rollback) = &record.rollback {
        if rollback.steps.len() > MAX_STEPS {
            problem(format!(
                "{} rollback steps (at most {MAX_STEPS})",
                rollback.steps.len()
            ));
        }
        if rollback.current_step > rollback.steps.len() {
            problem(format!(
                "its rollback step {} is past its {} rollback steps",
                rollback.current_step + 1,
                rollback.steps.len()
            ));
        }
        for (i, step) in rollback.steps.iter().enumerate() {
            if let Some(text) = step_problem(step, own, twin) {
                problem(format!("rollback step {}: {text}", i + 1));
            }
        }
    }
    let stable = &record.stable;
    if stable.partition.is_some_and(|p| p > MAX_ORDINAL) {
        problem("its stable partition is out of range".to_string());
    }
    if let Some(kind) = stable
        .update_strategy
        .as_deref()
        .filter(|k| !matches!(*k, "RollingUpdate" | "OnDelete"))
    {
        problem(format!("unknown update strategy {kind:?}"));
    }
    for (what, revision) in [
        ("stable", &stable.revision.revision),
        ("target", &record.target.revision),
    ] {
        if let Some(name) = revision.as_deref().filter(|n| !is_dns_subdomain(n)) {
            problem(format!("its {what} revision {name:?} is not a valid name"));
        }
    }
    if let Err(e) = record.config.gates.validate() {
        problem(format!("its gates: {e}"));
    }
    for (what, d) in config_durations(record) {
        if d.get() > MAX_DURATION {
            problem(format!("its {what} of {d} is longer than a year"));
        }
    }
    if record.config.timeouts.step.get().is_zero() {
        problem("its step deadline is 0".to_string());
    }
    if record.config.kind() != plan.strategy {
        problem(format!(
            "its settings are for {} but its plan is for {}",
            record.config.kind(),
            plan.strategy
        ));
    }
    if record.new_template.as_ref().is_some_and(|t| !t.is_object()) {
        problem("its new pod template is not an object".to_string());
    }
    problems
}

/// Problems of the record's second set: a valid name, never the set the record sits on.
fn check_twin(twin: &Twin, own: &str, problem: &mut impl FnMut(String)) {
    if !is_dns_label(&twin.set) {
        problem(format!("its second set {:?} is not a valid name", twin.set));
    }
    if twin.set == own {
        problem(format!(
            "its second set is {own} itself, the set the record is on"
        ));
    }
    if !is_dns_label(&twin.home) {
        problem(format!("its home set {:?} is not a valid name", twin.home));
    }
    if let Some(preview) = twin.preview.as_deref() {
        if !is_dns_label(preview) {
            problem(format!(
                "its preview Service {preview:?} is not a valid name"
            ));
        }
        if twin.services.iter().any(|s| s.name == preview) {
            problem(format!(
                "its preview Service {preview} is also one of its live Services"
            ));
        }
    }
    for service in &twin.services {
        if !is_dns_label(&service.name) {
            problem(format!("Service name {:?} is not valid", service.name));
        }
        for (which, selector) in [
            ("original", &service.original),
            ("blue", &service.blue),
            ("green", &service.green),
        ] {
            if !is_selector(selector) {
                problem(format!(
                    "the {which} selector of Service {} is empty or not a label selector",
                    service.name
                ));
            }
        }
    }
    if !twin.template.is_object() {
        problem("the pod template of its second set is not an object".to_string());
    }
}

/// What is wrong with one step, if anything: a set that is neither the own one nor the twin,
/// numbers out of range.
fn step_problem(step: &Step, own: &str, twin: Option<&Twin>) -> Option<String> {
    let twin_set = twin.map(|t| t.set.as_str());
    let own_or_twin = |set: &str| {
        (set != own && Some(set) != twin_set).then(|| {
            format!("names StatefulSet {set:?}, neither {own} nor the record's second set")
        })
    };
    let only_twin = |set: &str| {
        (Some(set) != twin_set || set == own)
            .then(|| format!("names StatefulSet {set:?}, not the record's second set"))
    };
    let ordinals_ok = |ordinals: &[u32]| {
        ordinals.len() <= MAX_REPLICAS as usize && ordinals.iter().all(|o| *o <= MAX_ORDINAL)
    };
    match step {
        Step::SetTemplateAndFreeze { partition } => {
            (*partition > MAX_ORDINAL).then(|| format!("partition {partition} is out of range"))
        }
        Step::SetPartition {
            partition,
            ordinals,
            updated,
            ..
        } => (*partition > MAX_ORDINAL || *updated > MAX_REPLICAS || !ordinals_ok(ordinals))
            .then(|| "partition, pods or count out of range".to_string()),
        Step::Gate { ordinals, set } => {
            if !ordinals_ok(ordinals) {
                return Some("pod ordinals out of range".to_string());
            }
            set.as_deref().and_then(own_or_twin)
        }
        Step::Pause {
            wait: PauseSpec::For(d),
        } if d.get() > MAX_DURATION => Some(format!("a pause of {d} is longer than a year")),
        Step::Scale { set, replicas } => {
            if *replicas > MAX_REPLICAS {
                return Some(format!("{replicas} replicas (at most {MAX_REPLICAS})"));
            }
            own_or_twin(set)
        }
        Step::CreateTwin { set, replicas } => {
            if *replicas > MAX_REPLICAS {
                return Some(format!("{replicas} replicas (at most {MAX_REPLICAS})"));
            }
            only_twin(set)
        }
        Step::RemoveTwin { set } | Step::Compare { set } => only_twin(set),
        Step::GateService { service } => {
            (!is_dns_label(service)).then(|| format!("Service name {service:?} is not valid"))
        }
        Step::PinTraffic
        | Step::SwitchTraffic
        | Step::ReturnTraffic
        | Step::RestoreSelectors
        | Step::RemovePreview => twin
            .is_none()
            .then(|| "moves traffic but the record names no second set".to_string()),
        Step::Pause { .. } | Step::SetTemplate | Step::RestoreTemplate | Step::ReplaceStuckPods => {
            None
        }
    }
}

/// Every duration of the record's settings, named.
fn config_durations(record: &RolloutState) -> Vec<(&'static str, HumanDuration)> {
    let config = &record.config;
    let http = &config.gates.http;
    let mut out = vec![
        ("step deadline", config.timeouts.step),
        ("probe timeout", http.timeout),
        ("probe interval", http.interval),
        ("probe window", http.window),
    ];
    out.extend(config.timeouts.total.map(|d| ("overall deadline", d)));
    out.extend(http.max_p95_latency.map(|d| ("latency limit", d)));
    out.extend(config.gates.min_ready.map(|d| ("minimum Ready time", d)));
    out.extend(
        config
            .gates
            .command
            .as_ref()
            .map(|c| ("command timeout", c.timeout)),
    );
    out.extend(
        config
            .gates
            .webhook
            .as_ref()
            .map(|w| ("webhook timeout", w.timeout)),
    );
    let pause = match &config.params {
        StrategyParams::Rolling { pause, .. } | StrategyParams::Ramped { pause, .. } => *pause,
        StrategyParams::Canary(CanaryParams::Hold { pause, .. }) => Some(*pause),
        StrategyParams::Canary(CanaryParams::Steps { pause, .. }) => *pause,
        StrategyParams::BlueGreen(p) => {
            out.push(("scale-down delay", p.scale_down_delay));
            None
        }
        StrategyParams::Shadow(p) => {
            out.push(("shadow duration", p.duration));
            None
        }
        StrategyParams::Recreate => None,
    };
    if let Some(PauseSpec::For(d)) = pause {
        out.push(("pause", d));
    }
    out
}

/// A DNS-1123 label: 1 to 63 of `[a-z0-9-]`, starting and ending alphanumeric (the names of
/// StatefulSets whose pods get hostnames, and of Services).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A DNS-1123 subdomain: labels joined by dots, at most 253 characters (ControllerRevisions).
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A non-empty selector of label-like keys and values.
fn is_selector(selector: &BTreeMap<String, String>) -> bool {
    let key_ok = |k: &str| {
        let name = k.rsplit('/').next().unwrap_or(k);
        !name.is_empty() && name.len() <= 63 && k.len() <= 317 && label_chars(name)
    };
    let value_ok = |v: &str| v.len() <= 63 && label_chars(v);
    !selector.is_empty() && selector.iter().all(|(k, v)| key_ok(k) && value_ok(v))
}

fn label_chars(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The gates the record names that only a command line may run (a command, a webhook) and that
/// the command line of this run does not give, when the rest of the run could reach a gate.
/// Empty: the run may go on. Rolling back runs no gate, so it needs none.
pub fn gates_not_given(record: &RolloutState, local: &LocalGates) -> Vec<&'static str> {
    let gates = &record.config.gates;
    let rolling_back = record.phase == crate::model::state::Phase::RollingBack;
    let gate_ahead = record
        .remaining()
        .iter()
        .any(|s| matches!(s, Step::Gate { .. } | Step::GateService { .. }));
    if rolling_back || !gate_ahead {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if gates.command.is_some() && local.command.is_none() {
        missing.push("command");
    }
    if gates.webhook.is_some() && local.webhook.is_none() {
        missing.push("webhook");
    }
    missing
}

/// Whether a Service whose selector is `selector` selects the pods of one of the sets whose pod
/// template labels are given: a rollback writes a selector back only to such a Service. The
/// revision label is left out (templates do not carry it; the controller adds it).
pub fn serves_one_of(
    selector: &BTreeMap<String, String>,
    pod_labels: &[&BTreeMap<String, String>],
) -> bool {
    let wanted: Vec<_> = selector
        .iter()
        .filter(|(k, _)| k.as_str() != REVISION_LABEL)
        .collect();
    !wanted.is_empty()
        && pod_labels
            .iter()
            .any(|labels| wanted.iter().all(|(k, v)| labels.get(*k) == Some(*v)))
}

/// What a masked env value reads as.
pub const MASKED: &str = "(masked)";

/// Replaces the literal `value` of every env entry (`env: [{name, value}]`) anywhere in `json`
/// by [`MASKED`]: names stay, `valueFrom` references stay (they hold no secret). For everything
/// printed: plans, status, records.
pub fn mask_env_values(json: &mut serde_json::Value) {
    use serde_json::Value;
    match json {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "env" {
                    if let Value::Array(entries) = value {
                        for entry in entries.iter_mut() {
                            if let Some(v) = entry.as_object_mut().and_then(|e| e.get_mut("value"))
                            {
                                *v = Value::String(MASKED.to_string());
                            }
                        }
                    }
                }
                mask_env_values(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mask_env_values),
        _ => {}
    }
}
