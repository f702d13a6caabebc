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
use crate::model::twin::{preview_name, Twin, REVISION_LABEL};

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

/// Most metric gates, and longest query, a record may hold.
const MAX_METRIC_GATES: usize = 20;
const MAX_QUERY_LEN: usize = 8192;

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
            record.current_step.saturating_add(1),
            plan.steps.len()
        ));
    }
    let twin = record.twin.as_ref();
    if let Some(twin) = twin {
        check_twin(twin, own, &mut problem);
    }
    check_route(record, own, &mut problem);
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
                rollback.current_step.saturating_add(1),
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
    // Metric gates' queries go only to this run's own Prometheus; still, bounded in number and
    // size, like every other field.
    let metric = &record.config.gates.prometheus;
    if metric.len() > MAX_METRIC_GATES {
        problem(format!(
            "it has {} metric gates, more than {MAX_METRIC_GATES}",
            metric.len()
        ));
    }
    if let Some(long) = metric.iter().find(|g| g.query.len() > MAX_QUERY_LEN) {
        problem(format!(
            "a metric gate query of {} characters is longer than {MAX_QUERY_LEN}",
            long.query.len()
        ));
    }
    if metric.iter().any(|g| !g.bound.is_finite()) {
        problem("a metric gate's bound is not a finite number".to_string());
    }
    for (what, d) in config_durations(record) {
        if d.get() > MAX_DURATION {
            problem(format!("its {what} of {d} is longer than a year"));
        }
    }
    if record.config.timeouts.step.get().is_zero() {
        problem("its step deadline is 0".to_string());
    }
    if record.new_template.as_ref().is_some_and(|t| !t.is_object()) {
        problem("its new pod template is not an object".to_string());
    }
    if let Some(text) = timeline_problem(record) {
        problem(format!("its timeline: {text}"));
    }
    problems
}

/// Problems of the record's route: the per-revision Services are exactly the own set's (so a
/// record cannot make rollout delete or repoint another Service), names are valid, the rules
/// kept are a list, the route is the one the settings name; and route steps need a route.
fn check_route(record: &RolloutState, own: &str, problem: &mut impl FnMut(String)) {
    let route_step = |s: &Step| {
        matches!(
            s,
            Step::CreateRevisionServices
                | Step::SetRouteWeights { .. }
                | Step::RestoreRoute
                | Step::RemoveRevisionServices
                | Step::MirrorRoute { .. }
                | Step::PreviewRoute
                | Step::SwitchRoute
        )
    };
    let rollback_steps = record.rollback.iter().flat_map(|r| r.steps.iter());
    let Some(route) = record.route.as_ref() else {
        if record
            .plan
            .steps
            .iter()
            .chain(rollback_steps)
            .any(route_step)
        {
            problem("it has HTTPRoute steps but names no route".to_string());
        }
        return;
    };
    let (stable, canary) = crate::model::route::revision_service_names(own);
    if route.stable_service != stable || route.canary_service != canary {
        problem(format!(
            "its per-revision Services {:?} and {:?} are not {stable} and {canary}",
            route.stable_service, route.canary_service
        ));
    }
    for (what, name) in [("HTTPRoute", &route.route), ("Service", &route.service)] {
        if !is_dns_subdomain(name) {
            problem(format!("its {what} name {name:?} is not valid"));
        }
    }
    let preview = record.twin.as_ref().and_then(|t| t.preview.as_ref());
    if [Some(&stable), Some(&canary), preview].contains(&Some(&route.service)) {
        problem(format!(
            "its route's Service {} is one of rollout's own",
            route.service
        ));
    }
    if !(route.original_rules.is_array() || route.original_rules.is_null()) {
        problem("its route's original rules are not a list".to_string());
    }
    if let Some(rev) = route.canary_revision.as_deref() {
        if !is_dns_subdomain(rev) || !rev.starts_with(&format!("{own}-")) {
            problem(format!(
                "its canary revision {rev:?} is not a revision of {own}"
            ));
        }
    }
    if record.config.traffic.as_ref().map(|t| &t.route) != Some(&route.route) {
        problem(format!(
            "its route {} is not the one its settings name",
            route.route
        ));
    }
}

/// What is wrong with the record's timeline: too many marks, a step it does not have, a message
/// too long. Events, notifications and pictures are told
/// from it, so a mark never names a step outside the plan.
fn timeline_problem(record: &RolloutState) -> Option<String> {
    use crate::model::timeline::{What, MAX_MARKS, MAX_MARK_MESSAGE};
    let marks = &record.timeline;
    if marks.len() > MAX_MARKS {
        return Some(format!("{} marks (at most {MAX_MARKS})", marks.len()));
    }
    let forward = record.plan.steps.len();
    let back = record.rollback.as_ref().map_or(0, |r| r.steps.len());
    for (i, mark) in marks.iter().enumerate() {
        let (step, steps) = match &mark.what {
            What::StepStarted { step }
            | What::StepDone { step }
            | What::GatePassed { step }
            | What::StepFailed { step, .. }
            | What::Paused { step, .. }
            | What::Resumed { step } => (Some(*step), forward),
            What::RollbackStepDone { step } => (Some(*step), back),
            What::Started | What::RollbackStarted { .. } | What::Finished { .. } => (None, 0),
        };
        if let Some(step) = step.filter(|s| *s >= steps) {
            return Some(format!(
                "mark {} names step {} of {steps}",
                i + 1,
                step.saturating_add(1)
            ));
        }
        let message = match &mark.what {
            What::StepFailed { message, .. }
            | What::RollbackStarted { message, .. }
            | What::Finished { message, .. } => message.len(),
            _ => 0,
        };
        if message > MAX_MARK_MESSAGE {
            return Some(format!("mark {} has a message of {message} bytes", i + 1));
        }
    }
    None
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
    // rollout names a second set `<home>-bgN` or `<home>-shadowN`, where home is the set the
    // user named first: the own set, or the set a former green replaced.
    let family = format!("{}-", twin.home);
    if own != twin.home && !own.starts_with(&family) {
        problem(format!(
            "its home set {} is neither {own} nor the set {own} replaced",
            twin.home
        ));
    }
    if !twin.set.starts_with(&family) {
        problem(format!(
            "its second set {} is not named after its home set {} as rollout names them",
            twin.set, twin.home
        ));
    }
    if let Some(preview) = twin.preview.as_deref() {
        if preview != preview_name(&twin.home) {
            problem(format!(
                "its preview Service {preview:?} is not {}",
                preview_name(&twin.home)
            ));
        }
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
        Step::SetTemplateAndFreeze { partition } | Step::HoldRevision { partition } => {
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
        Step::SetRouteWeights { pods, .. } => {
            (*pods > MAX_REPLICAS).then(|| format!("{pods} pods (at most {MAX_REPLICAS})"))
        }
        Step::CreateRevisionServices | Step::RestoreRoute | Step::RemoveRevisionServices => None,
        Step::MirrorRoute { .. } => twin
            .and_then(|t| t.preview.as_ref())
            .is_none()
            .then(|| "mirrors requests but the record names no shadow Service".to_string()),
        Step::PreviewRoute | Step::SwitchRoute => {
            twin.and_then(|t| t.preview.as_ref()).is_none().then(|| {
                "routes requests to green but the record names no preview Service".to_string()
            })
        }
        Step::Pause { .. }
        | Step::SetTemplate
        | Step::RestoreTemplate
        | Step::ReplaceStuckPods
        | Step::ReleaseRevision => None,
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
            .analysis_interval
            .map(|d| ("analysis interval", d)),
    );
    out.extend(config.gates.bake.map(|d| ("bake", d)));
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

/// A part of a gate that only the command line of a run gives, never the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalGate {
    /// The command of `--gate-command`.
    Command,
    /// The URL of `--gate-webhook`.
    Webhook,
    /// The Prometheus the metric gates (`--gate-prometheus`) query.
    Prometheus,
}

impl LocalGate {
    /// The flag that gives it, as a command line would.
    pub fn flag(self) -> &'static str {
        match self {
            LocalGate::Command => "--gate-command '...'",
            LocalGate::Webhook => "--gate-webhook '...'",
            LocalGate::Prometheus => "--prometheus-url URL",
        }
    }

    /// What it is, in words.
    pub fn what(self) -> &'static str {
        match self {
            LocalGate::Command => "a command",
            LocalGate::Webhook => "a webhook",
            LocalGate::Prometheus => {
                "Prometheus queries (the URL of their Prometheus: --prometheus-url or ROLLOUT_PROMETHEUS_URL)"
            }
        }
    }
}

/// The gates the record names that only a command line may give (a command, a webhook, the
/// Prometheus that metric gates query) and that the command line of this run does not give,
/// when the rest of the run could reach them. Empty: the run may go on. Rolling back runs no
/// gate, so it needs none.
pub fn gates_not_given(record: &RolloutState, local: &LocalGates) -> Vec<LocalGate> {
    let gates = &record.config.gates;
    let rolling_back = record.phase == crate::model::state::Phase::RollingBack;
    let remaining = record.remaining();
    let gate_ahead = remaining
        .iter()
        .any(|s| matches!(s, Step::Gate { .. } | Step::GateService { .. }));
    // Continuous analysis queries Prometheus at pauses (and the bake) too.
    let analysed_pause_ahead = gates.analysis().is_some()
        && (record.phase == crate::model::state::Phase::Paused
            || remaining.iter().any(|s| matches!(s, Step::Pause { .. })));
    if rolling_back {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if gate_ahead && gates.command.is_some() && local.command.is_none() {
        missing.push(LocalGate::Command);
    }
    if gate_ahead && gates.webhook.is_some() && local.webhook.is_none() {
        missing.push(LocalGate::Webhook);
    }
    if (gate_ahead || analysed_pause_ahead)
        && !gates.prometheus.is_empty()
        && local.prometheus_url.is_none()
    {
        missing.push(LocalGate::Prometheus);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gate::{CommandGate, WebhookGate};
    use crate::model::state::tests::{sample_state, ts};
    use crate::model::state::{PauseReason, Phase, Rollback};
    use crate::model::strategy::{BatchSize, OnFailure, StrategyConfig, Timeouts};
    use crate::model::twin::{DataMode, LiveService, TwinRole, SET_LABEL};
    use serde_json::{json, Value};

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A blue/green record that reached its switch, with a twin and a rollback under way.
    fn bluegreen_state() -> RolloutState {
        let mut state = sample_state();
        state.plan.strategy = crate::model::strategy::StrategyKind::BlueGreen;
        state.plan.steps = vec![
            Step::PinTraffic,
            Step::CreateTwin {
                set: "web-bg1".into(),
                replicas: 2,
            },
            Step::Gate {
                ordinals: vec![0, 1],
                set: Some("web-bg1".into()),
            },
            Step::GateService {
                service: "web-preview".into(),
            },
            Step::SwitchTraffic,
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
        ];
        state.twin = Some(Twin {
            role: TwinRole::Green,
            set: "web-bg1".into(),
            home: "web".into(),
            services: vec![LiveService {
                name: "web".into(),
                original: map(&[("app", "web")]),
                blue: map(&[("app", "web"), (REVISION_LABEL, "web-6c8f")]),
                green: map(&[("app", "web"), (SET_LABEL, "web-bg1")]),
            }],
            preview: Some("web-preview".into()),
            data: DataMode::Clone,
            keep_data: false,
            template: json!({"metadata": {}, "spec": {"containers": []}}),
        });
        state.phase = Phase::RollingBack;
        state.current_step = 5;
        state.rollback = Some(Rollback::new(vec![
            Step::Scale {
                set: "web".into(),
                replicas: 2,
            },
            Step::ReturnTraffic,
            Step::Scale {
                set: "web-bg1".into(),
                replicas: 0,
            },
            Step::RemovePreview,
            Step::RestoreSelectors,
        ]));
        state
    }

    type Change = Box<dyn FnOnce(&mut RolloutState)>;

    fn problems_of(change: impl FnOnce(&mut RolloutState)) -> String {
        let mut state = sample_state();
        change(&mut state);
        check_record(&state, "web").join("; ")
    }

    fn twin_problems_of(change: impl FnOnce(&mut RolloutState)) -> String {
        let mut state = bluegreen_state();
        change(&mut state);
        check_record(&state, "web").join("; ")
    }

    #[test]
    fn records_rollout_writes_hold_together() {
        assert_eq!(check_record(&sample_state(), "web"), Vec::<String>::new());
        assert_eq!(
            check_record(&bluegreen_state(), "web"),
            Vec::<String>::new()
        );
        let mut done = sample_state();
        done.current_step = done.plan.steps.len();
        assert_eq!(check_record(&done, "web"), Vec::<String>::new());
    }

    #[test]
    fn a_record_copied_from_another_set_is_refused() {
        let problems = check_record(&sample_state(), "db").join("; ");
        assert!(
            problems.contains("for StatefulSet \"web\", not db"),
            "{problems}"
        );
    }

    #[test]
    fn out_of_range_numbers_are_refused() {
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.version = 0), "version 0"),
            (Box::new(|s| s.version = 2), "version 2"),
            (
                Box::new(|s| s.current_step = 6),
                "current step 7 is past its 5 steps",
            ),
            (
                Box::new(|s| s.current_step = usize::MAX - 1),
                "is past its 5 steps",
            ),
            (
                Box::new(|s| s.plan.replicas = u32::MAX),
                "replicas (at most",
            ),
            (
                Box::new(|s| s.plan.ordinal_start = u32::MAX),
                "ordinal start",
            ),
            (
                Box::new(|s| s.plan.steps[1] = Step::gate(vec![u32::MAX])),
                "step 2: pod ordinals out of range",
            ),
            (
                Box::new(|s| {
                    s.plan.steps[0] = Step::SetTemplateAndFreeze {
                        partition: u32::MAX,
                    }
                }),
                "step 1: partition",
            ),
            (
                Box::new(|s| {
                    s.rollback = Some(Rollback {
                        steps: vec![Step::RestoreTemplate],
                        current_step: 3,
                        step_started_at: None,
                    })
                }),
                "rollback step 4 is past its 1 rollback steps",
            ),
            (
                Box::new(|s| s.stable.partition = Some(u32::MAX)),
                "stable partition",
            ),
            (
                Box::new(|s| s.stable.update_strategy = Some("Sideways".into())),
                "unknown update strategy",
            ),
            (
                Box::new(|s| s.stable.revision.revision = Some("../etc".into())),
                "stable revision",
            ),
            (
                Box::new(|s| s.config.timeouts.step = HumanDuration::from_secs(0)),
                "step deadline is 0",
            ),
            (
                Box::new(|s| {
                    s.config.timeouts.total = Some(HumanDuration::from_secs(u64::MAX / 4))
                }),
                "overall deadline",
            ),
            (
                Box::new(|s| {
                    s.plan.steps.push(Step::Pause {
                        wait: PauseSpec::For(HumanDuration::from_secs(400 * 24 * 3600)),
                    })
                }),
                "step 6: a pause",
            ),
            (
                Box::new(|s| s.config.gates.http.window = HumanDuration::from_secs(0)),
                "its gates",
            ),
            (Box::new(|s| s.id = String::new()), "its id"),
            (
                Box::new(|s| s.new_template = Some(json!("sh -c evil"))),
                "new pod template is not an object",
            ),
            (
                Box::new(|s| {
                    s.timeline.push(crate::model::timeline::Mark {
                        at: s.started_at,
                        what: crate::model::timeline::What::GatePassed { step: 5 },
                    })
                }),
                "its timeline: mark 1 names step 6 of 5",
            ),
            (
                Box::new(|s| {
                    s.timeline.push(crate::model::timeline::Mark {
                        at: s.started_at,
                        what: crate::model::timeline::What::RollbackStepDone { step: 0 },
                    })
                }),
                "its timeline: mark 1 names step 1 of 0",
            ),
            (
                Box::new(|s| {
                    s.timeline.push(crate::model::timeline::Mark {
                        at: s.started_at,
                        what: crate::model::timeline::What::Finished {
                            phase: crate::model::state::Phase::Failed,
                            message: "x".repeat(5000),
                        },
                    })
                }),
                "has a message of 5000 bytes",
            ),
            (
                Box::new(|s| {
                    let mark = crate::model::timeline::Mark {
                        at: s.started_at,
                        what: crate::model::timeline::What::Started,
                    };
                    s.timeline = vec![mark; 201];
                }),
                "201 marks (at most 200)",
            ),
        ];
        for (change, expected) in cases {
            let problems = problems_of(change);
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }

    #[test]
    fn steps_may_name_only_the_own_set_or_its_twin() {
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|s| {
                    s.plan.steps.push(Step::Scale {
                        set: "victim".into(),
                        replicas: 0,
                    })
                }),
                "names StatefulSet \"victim\", neither web nor",
            ),
            (
                Box::new(|s| {
                    s.plan.steps.push(Step::RemoveTwin {
                        set: "victim".into(),
                    })
                }),
                "not the record's second set",
            ),
            (
                Box::new(|s| s.plan.steps.push(Step::RemoveTwin { set: "web".into() })),
                "not the record's second set",
            ),
            (
                Box::new(|s| {
                    s.plan.steps.push(Step::Gate {
                        ordinals: vec![0],
                        set: Some("victim".into()),
                    })
                }),
                "neither web nor",
            ),
            (
                Box::new(|s| s.plan.steps.push(Step::SwitchTraffic)),
                "names no second set",
            ),
        ];
        for (change, expected) in cases {
            let problems = problems_of(change);
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }

    #[test]
    fn the_twin_is_a_valid_name_other_than_the_own_set() {
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.set = "web".into();
                    }
                }),
                "its second set is web itself",
            ),
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.set = "Web_BG".into();
                    }
                }),
                "is not a valid name",
            ),
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.preview = Some("web".into());
                    }
                }),
                "also one of its live Services",
            ),
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.preview = Some("payments".into());
                    }
                }),
                "preview Service \"payments\" is not web-preview",
            ),
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.set = "victim".into();
                    }
                }),
                "second set victim is not named after its home set web",
            ),
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.home = "db".into();
                        t.set = "db-bg1".into();
                        t.preview = Some("db-preview".into());
                    }
                }),
                "its home set db is neither web nor the set web replaced",
            ),
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.services[0].original.clear();
                    }
                }),
                "original selector of Service web is empty",
            ),
            (
                Box::new(|s| {
                    if let Some(t) = s.twin.as_mut() {
                        t.template = json!([]);
                    }
                }),
                "second set is not an object",
            ),
            (
                Box::new(|s| {
                    if let Some(r) = s.rollback.as_mut() {
                        r.steps.push(Step::Scale {
                            set: "victim".into(),
                            replicas: 0,
                        });
                    }
                }),
                "rollback step 6: names StatefulSet \"victim\"",
            ),
        ];
        for (change, expected) in cases {
            let problems = twin_problems_of(change);
            assert!(problems.contains(expected), "{expected}: {problems}");
        }
    }

    #[test]
    fn a_former_green_names_twins_after_the_home_set() {
        let mut state = bluegreen_state();
        state.plan.statefulset = "web-bg1".into();
        if let Some(t) = state.twin.as_mut() {
            t.set = "web-bg2".into();
        }
        for step in state.plan.steps.iter_mut() {
            match step {
                Step::CreateTwin { set, .. } | Step::Gate { set: Some(set), .. } => {
                    *set = "web-bg2".into()
                }
                Step::Scale { set, .. } => *set = "web-bg1".into(),
                _ => {}
            }
        }
        state.rollback = None;
        assert_eq!(check_record(&state, "web-bg1"), Vec::<String>::new());
    }

    #[test]
    fn names() {
        for good in ["web", "web-bg1", "a", "0a", &"a".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "-web",
            "web-",
            "Web",
            "web_1",
            "web.1",
            &"a".repeat(64),
            "wéb",
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("web-6c8f.x"));
        assert!(!is_dns_subdomain("web..x"));
        assert!(!is_dns_subdomain(&"a.".repeat(130)));
    }

    fn held_with_command() -> RolloutState {
        let mut state = sample_state();
        state.config.gates.command = Some(CommandGate::shell("touch /tmp/x"));
        state.current_step = 2;
        state.phase = Phase::Paused;
        state.pause = Some(PauseReason::Step { until: None });
        state
    }

    #[test]
    fn a_command_or_webhook_named_only_by_the_record_is_refused() {
        let none = LocalGates::default();
        let command = LocalGates {
            command: Some(CommandGate::shell("true")),
            webhook: None,
            prometheus_url: None,
        };
        let both = LocalGates {
            command: Some(CommandGate::shell("true")),
            webhook: Some(WebhookGate::new("http://127.0.0.1:1/")),
            prometheus_url: None,
        };
        let held = held_with_command();
        assert_eq!(gates_not_given(&held, &none), [LocalGate::Command]);
        assert_eq!(gates_not_given(&held, &command), Vec::<LocalGate>::new());
        let mut with_webhook = held.clone();
        with_webhook.config.gates.webhook = Some(WebhookGate::new("http://10.0.0.1/"));
        assert_eq!(
            gates_not_given(&with_webhook, &none),
            [LocalGate::Command, LocalGate::Webhook]
        );
        assert_eq!(
            gates_not_given(&with_webhook, &command),
            [LocalGate::Webhook]
        );
        assert_eq!(
            gates_not_given(&with_webhook, &both),
            Vec::<LocalGate>::new()
        );
        // Nothing ahead gates: nothing to give.
        let mut done = held.clone();
        done.current_step = done.plan.steps.len();
        assert_eq!(gates_not_given(&done, &none), Vec::<LocalGate>::new());
        // Rolling back runs no gate.
        let mut back = held.clone();
        back.phase = Phase::RollingBack;
        assert_eq!(gates_not_given(&back, &none), Vec::<LocalGate>::new());
        // A record without such gates needs none.
        assert_eq!(
            gates_not_given(&sample_state(), &none),
            Vec::<LocalGate>::new()
        );
    }

    #[test]
    fn metric_gates_ahead_need_this_command_lines_prometheus() {
        let none = LocalGates::default();
        let url = LocalGates::default().with_prometheus(Some("http://127.0.0.1:9090".into()));
        let mut held = sample_state();
        held.current_step = 2;
        held.phase = Phase::Paused;
        held.pause = Some(PauseReason::Step { until: None });
        held.config.gates.prometheus = vec!["rate(errors[1m]) < 1"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"))];
        assert_eq!(gates_not_given(&held, &none), [LocalGate::Prometheus]);
        assert_eq!(gates_not_given(&held, &url), Vec::<LocalGate>::new());
        // Past the last gate, only continuous analysis still asks Prometheus.
        let mut baking = held.clone();
        baking.plan.steps = vec![Step::Pause {
            wait: PauseSpec::For(HumanDuration::from_secs(60)),
        }];
        baking.current_step = 0;
        assert_eq!(gates_not_given(&baking, &none), Vec::<LocalGate>::new());
        baking.config.gates.analysis_interval = Some(HumanDuration::from_secs(5));
        assert_eq!(gates_not_given(&baking, &none), [LocalGate::Prometheus]);
        // Nothing ahead, or rolling back: no query is asked.
        let mut done = held.clone();
        done.current_step = done.plan.steps.len();
        done.phase = Phase::Progressing;
        assert_eq!(gates_not_given(&done, &none), Vec::<LocalGate>::new());
        let mut back = held;
        back.phase = Phase::RollingBack;
        assert_eq!(gates_not_given(&back, &none), Vec::<LocalGate>::new());
    }

    #[test]
    fn local_gates_replace_what_the_record_names() {
        let held = held_with_command();
        let spec = LocalGates::default().over(&held.config.gates);
        assert_eq!(spec.command, None);
        assert_eq!(spec.http, held.config.gates.http);
        let mine = LocalGates {
            command: Some(CommandGate::shell("./check")),
            webhook: None,
            prometheus_url: None,
        };
        assert_eq!(
            mine.over(&held.config.gates).command,
            Some(CommandGate::shell("./check"))
        );
    }

    #[test]
    fn selectors_are_restored_only_on_services_serving_a_set() {
        let blue = map(&[("app", "web"), ("tier", "db")]);
        let green = map(&[("app", "web"), ("tier", "db"), (SET_LABEL, "web-bg1")]);
        let sets = [&blue, &green];
        let cases = [
            (map(&[("app", "web")]), true),
            (map(&[("app", "web"), (REVISION_LABEL, "web-6c8f")]), true),
            (map(&[("app", "web"), (SET_LABEL, "web-bg1")]), true),
            (map(&[("app", "other")]), false),
            (map(&[("app", "web"), (SET_LABEL, "victim")]), false),
            (map(&[(REVISION_LABEL, "web-6c8f")]), false),
            (BTreeMap::new(), false),
        ];
        for (selector, want) in cases {
            assert_eq!(serves_one_of(&selector, &sets), want, "{selector:?}");
        }
        assert!(!serves_one_of(&map(&[("app", "web")]), &[]));
    }

    #[test]
    fn env_values_are_masked_names_and_references_kept() {
        let mut doc = json!({
            "record": {"newTemplate": {"spec": {
                "containers": [{"name": "app", "env": [
                    {"name": "PASSWORD", "value": "hunter2"},
                    {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    {"name": "EMPTY", "value": ""}
                ]}],
                "initContainers": [{"name": "init", "env": [{"name": "A", "value": "b"}]}]
            }}},
            "value": "kept",
            "env": "not a list"
        });
        mask_env_values(&mut doc);
        let text = doc.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        let env = &doc["record"]["newTemplate"]["spec"]["containers"][0]["env"];
        assert_eq!(env[0], json!({"name": "PASSWORD", "value": MASKED}));
        assert_eq!(
            env[1],
            json!({"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})
        );
        assert_eq!(env[2]["value"], MASKED);
        assert_eq!(
            doc["record"]["newTemplate"]["spec"]["initContainers"][0]["env"][0]["value"],
            MASKED
        );
        assert_eq!(doc["value"], "kept");
        assert_eq!(doc["env"], "not a list");
    }

    /// Every way to spoil one field of `json`: removed, numbers at the edges, other types,
    /// names of other objects.
    fn mutations(json: &Value) -> Vec<Value> {
        let replacements = [
            json!(null),
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(4_294_967_296_u64),
            json!(1e300),
            json!("victim"),
            json!(""),
            json!("a".repeat(300)),
            json!([]),
            json!({}),
            json!(true),
        ];
        let mut out = Vec::new();
        fn walk(
            value: &Value,
            path: &mut Vec<Value>,
            visit: &mut dyn FnMut(&[Value], Option<&Value>),
        ) {
            visit(path, Some(value));
            match value {
                Value::Object(map) => {
                    for (k, v) in map {
                        path.push(Value::String(k.clone()));
                        walk(v, path, visit);
                        path.pop();
                    }
                }
                Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        path.push(json!(i));
                        walk(v, path, visit);
                        path.pop();
                    }
                }
                _ => {}
            }
        }
        fn at<'a>(root: &'a mut Value, path: &[Value]) -> Option<&'a mut Value> {
            let mut here = root;
            for step in path {
                here = match step {
                    Value::String(k) => here.get_mut(k.as_str())?,
                    Value::Number(n) => here.get_mut(usize::try_from(n.as_u64()?).ok()?)?,
                    _ => return None,
                };
            }
            Some(here)
        }
        let mut paths = Vec::new();
        walk(json, &mut Vec::new(), &mut |p, _| paths.push(p.to_vec()));
        for path in paths.iter().filter(|p| !p.is_empty()) {
            for replacement in &replacements {
                let mut copy = json.clone();
                if let Some(slot) = at(&mut copy, path) {
                    *slot = replacement.clone();
                    out.push(copy);
                }
            }
            // Removed.
            let mut copy = json.clone();
            let (last, parent) = path.split_last().unwrap_or((&Value::Null, &[]));
            if let Some(parent) = at(&mut copy, parent) {
                match (parent, last) {
                    (Value::Object(map), Value::String(k)) => {
                        map.remove(k);
                    }
                    (Value::Array(items), Value::Number(n)) => {
                        if let Some(i) = n.as_u64().and_then(|i| usize::try_from(i).ok()) {
                            if i < items.len() {
                                items.remove(i);
                            }
                        }
                    }
                    _ => {}
                }
                out.push(copy);
            }
        }
        out
    }

    /// Everything a command does with a record read back, short of the cluster.
    fn use_record(text: &str) {
        use crate::exec::report::{render_status, render_status_line, status_report};
        use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetStatus};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let sts = StatefulSet {
            metadata: ObjectMeta {
                name: Some("web".into()),
                annotations: Some(BTreeMap::from([(
                    crate::model::state::ANNOTATION_KEY.to_string(),
                    text.to_string(),
                )])),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                current_revision: Some("web-6c8f".into()),
                update_revision: Some("web-7d9b".into()),
                ..Default::default()
            }),
        };
        if let Ok(report) = status_report("ns", &sts, "web", &[], None, ts(1_700_000_100)) {
            let _ = render_status(&report, ts(1_700_000_100));
            let _ = render_status_line(&report, ts(1_700_000_100));
        }
        let Ok(Some(record)) = read_record("web", sts.metadata.annotations.as_ref()) else {
            return;
        };
        let _ = crate::strategy::rollback::plan_rollback(&record);
        let _ = crate::strategy::rollback::rollback_by_step(&record);
        let _ = gates_not_given(&record, &LocalGates::default());
        for step in record.plan.steps.iter() {
            let _ = record.plan.describe_step(step);
        }
        let now = ts(1_700_000_100);
        let _ = record.clone().abort(now);
        let _ = record.clone().promote(now);
        let _ = record.clone().promote_full(now);
        let _ = record.clone().resume_by_user(now);
        let _ = record.clone().pause_by_user(now);
        let _ = record.clone().complete_step(now);
        let mut back = record.clone();
        let _ = back.rollback_steps().current().cloned();
        let _ = back.rollback_done(now);
        if let Ok(observed) = crate::strategy::Observed::from_statefulset(&sts) {
            let _ = record.clone().reconcile(&observed, now);
        }
    }

    #[test]
    fn no_record_makes_parsing_checking_planning_or_status_panic() {
        let mut canary = sample_state();
        canary.config = StrategyConfig {
            params: StrategyParams::Rolling {
                batch: BatchSize::Pods(1),
                pause: Some(PauseSpec::UntilPromote),
            },
            timeouts: Timeouts {
                total: Some(HumanDuration::from_secs(600)),
                ..Timeouts::default()
            },
            on_failure: OnFailure::Rollback,
            ..canary.config
        };
        canary.step_started_at = Some(ts(1_700_000_010));
        canary.current_step = 3;
        let mut tried = 0;
        for state in [
            sample_state(),
            canary,
            held_with_command(),
            bluegreen_state(),
        ] {
            let json = serde_json::to_value(&state).unwrap_or_default();
            let all = mutations(&json);
            assert!(all.len() > 100, "only {} mutations", all.len());
            for mutated in all {
                use_record(&mutated.to_string());
                tried += 1;
            }
        }
        // Texts that are not records at all.
        for text in [
            "",
            "{",
            "null",
            "[]",
            "{\"version\": 99}",
            "{\"version\": -1}",
            "\u{0}",
        ] {
            use_record(text);
        }
        assert!(tried > 1000, "{tried}");
    }
}
