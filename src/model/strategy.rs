//! Strategies and their settings: what a user asks for (flags or a strategy file), checked and
//! resolved into [`StrategyConfig`], the value that planners read and the state record keeps so
//! that any later run (`resume`, `promote`) continues with the same settings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::duration::{DurationError, HumanDuration};
use super::gate::{GateSpec, GateSpecError};
use super::steps::{StepList, StepTarget, StepsError};
use super::twin::{
    BlueGreenParams, DataMode, ReplayLine, ShadowCompare, ShadowParams, DEFAULT_SCALE_DOWN_DELAY,
    DEFAULT_SHADOW_DURATION,
};
use super::weight::Percent;

/// The update strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    Rolling,
    Ramped,
    Canary,
    #[serde(rename = "bluegreen")]
    BlueGreen,
    Recreate,
    Shadow,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::Rolling => "rolling",
            StrategyKind::Ramped => "ramped",
            StrategyKind::Canary => "canary",
            StrategyKind::BlueGreen => "bluegreen",
            StrategyKind::Recreate => "recreate",
            StrategyKind::Shadow => "shadow",
        }
    }

    /// True for the strategies that move pods with the partition of one set.
    pub fn uses_partition(self) -> bool {
        matches!(
            self,
            StrategyKind::Rolling | StrategyKind::Ramped | StrategyKind::Canary
        )
    }
}

impl fmt::Display for StrategyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StrategyKind {
    type Err = StrategyError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.trim() {
            "rolling" => Ok(StrategyKind::Rolling),
            "ramped" => Ok(StrategyKind::Ramped),
            "canary" => Ok(StrategyKind::Canary),
            "bluegreen" | "blue-green" | "blue/green" => Ok(StrategyKind::BlueGreen),
            "recreate" => Ok(StrategyKind::Recreate),
            "shadow" => Ok(StrategyKind::Shadow),
            other => Err(StrategyError::UnknownStrategy {
                name: other.to_string(),
            }),
        }
    }
}

/// Why strategy settings were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StrategyError {
    #[error("unknown strategy `{name}`; the strategies are rolling, ramped, canary, bluegreen, recreate and shadow")]
    UnknownStrategy { name: String },
    #[error("--{flag} does not apply to a {strategy} rollout ({hint})")]
    FlagNotApplicable {
        flag: &'static str,
        strategy: StrategyKind,
        hint: &'static str,
    },
    #[error("a canary needs --weight W (hold until promote) or --steps 20,50,100")]
    CanaryNeedsWeightOrSteps,
    #[error("--weight and --steps cannot be used together: --weight holds at one weight, --steps walks through several")]
    WeightAndSteps,
    #[error("--weight {weight} moves {what}; use a weight from 1 to 99")]
    WeightOutOfRange { weight: Percent, what: &'static str },
    #[error("--{flag} `{pattern}` is not a valid regular expression ({message}); nothing was changed: fix the pattern (e.g. `^Date:`)")]
    BadPattern {
        flag: &'static str,
        pattern: String,
        message: String,
    },
    #[error("--batch {batch} is not valid: {reason}")]
    BadBatch { batch: String, reason: &'static str },
    #[error(transparent)]
    Steps(#[from] StepsError),
    #[error(transparent)]
    Gate(#[from] GateSpecError),
    #[error("--pause: {0}")]
    Pause(#[from] DurationError),
    #[error("--timeout must be more than 0s")]
    ZeroTimeout,
    #[error("--{flag} {value} is not valid: {reason}")]
    BadValue {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// `--batch N` or `--batch 25%`: pods updated per rolling step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Pods(u32),
    Percent(Percent),
}

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize::Pods(1)
    }
}

impl BatchSize {
    /// Pods per batch on `replicas` pods: a percentage rounds up so a batch is never empty.
    pub fn pods(self, replicas: u32) -> u32 {
        match self {
            BatchSize::Pods(n) => n.max(1),
            BatchSize::Percent(p) => {
                let pods = (u64::from(p.get()) * u64::from(replicas)).div_ceil(100);
                u32::try_from(pods).unwrap_or(replicas).max(1)
            }
        }
    }
}

impl FromStr for BatchSize {
    type Err = StrategyError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let bad = |reason| StrategyError::BadBatch {
            batch: input.to_string(),
            reason,
        };
        let text = input.trim();
        let batch = if let Some(digits) = text.strip_suffix('%') {
            let value: u32 = digits
                .trim()
                .parse()
                .map_err(|_| bad("write a pod count (2) or a percentage (25%)"))?;
            BatchSize::Percent(
                Percent::new(value).map_err(|_| bad("a percentage cannot exceed 100%"))?,
            )
        } else {
            BatchSize::Pods(
                text.parse()
                    .map_err(|_| bad("write a pod count (2) or a percentage (25%)"))?,
            )
        };
        if matches!(batch, BatchSize::Pods(0))
            || matches!(batch, BatchSize::Percent(p) if p.get() == 0)
        {
            return Err(bad("a batch must move at least one pod"));
        }
        Ok(batch)
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Pods(n) => write!(f, "{n}"),
            BatchSize::Percent(p) => write!(f, "{p}"),
        }
    }
}

impl Serialize for BatchSize {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    /// `2`, `"2"` or `"25%"`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::duration::text_or_number(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A pause between steps: until `rollout promote`, or for a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseSpec {
    UntilPromote,
    For(HumanDuration),
}

impl FromStr for PauseSpec {
    type Err = DurationError;

    /// `""` or `promote`: until promote; anything else is a duration.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input.trim() {
            "" | "promote" => Ok(PauseSpec::UntilPromote),
            other => Ok(PauseSpec::For(other.parse()?)),
        }
    }
}

impl fmt::Display for PauseSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseSpec::UntilPromote => f.write_str("promote"),
            PauseSpec::For(d) => write!(f, "{d}"),
        }
    }
}

impl Serialize for PauseSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PauseSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        super::duration::text_or_number(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Strategy flags as given, before they are checked against the strategy.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StrategyFlags {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<StepList>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<Percent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseSpec>,
    /// Blue/green: the live Services.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<HumanDuration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<DataMode>,
    /// Blue/green and shadow: keep the twin's volumes when it is removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_data: Option<bool>,
    /// Shadow: pods of the shadow set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Shadow: how long requests are replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    /// Shadow: the requests to replay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<Vec<ReplayLine>>,
    /// Shadow: how the comparison judges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare: Option<ShadowCompare>,
    /// The HTTPRoute that carries the traffic (`--traffic gateway --route NAME`): a canary's
    /// weights, blue/green's preview and switch, a shadow's mirror.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Box<super::route::RouteTraffic>>,
}

impl StrategyFlags {
    /// These flags with every value that `over` sets replaced (command line over file).
    /// `--weight` and `--steps` replace each other, since a canary takes one or the other.
    pub fn overlaid_with(self, over: StrategyFlags) -> StrategyFlags {
        let (steps, weight) = if over.weight.is_some() || over.steps.is_some() {
            (over.steps, over.weight)
        } else {
            (self.steps, self.weight)
        };
        StrategyFlags {
            batch: over.batch.or(self.batch),
            steps,
            weight,
            pause: over.pause.or(self.pause),
            services: if over.services.is_empty() {
                self.services
            } else {
                over.services
            },
            auto_promote: over.auto_promote.or(self.auto_promote),
            scale_down_delay: over.scale_down_delay.or(self.scale_down_delay),
            data: over.data.or(self.data),
            keep_data: over.keep_data.or(self.keep_data),
            replicas: over.replicas.or(self.replicas),
            duration: over.duration.or(self.duration),
            requests: over.requests.or(self.requests),
            compare: over.compare.or(self.compare),
            traffic: over.traffic.or(self.traffic),
        }
    }
}

/// How a canary moves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "mode")]
pub enum CanaryParams {
    /// Go to `weight`, then hold until promote (or for `pause` when given as a duration), then
    /// finish.
    Hold { weight: Percent, pause: PauseSpec },
    /// Walk through increasing weights, with an optional pause between them.
    Steps {
        weights: Vec<Percent>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pause: Option<PauseSpec>,
    },
}

/// Checked, strategy-specific settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum StrategyParams {
    Rolling {
        batch: BatchSize,
        #[serde(skip_serializing_if = "Option::is_none")]
        pause: Option<PauseSpec>,
    },
    Ramped {
        steps: Vec<StepTarget>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pause: Option<PauseSpec>,
    },
    Canary(CanaryParams),
    #[serde(rename = "bluegreen")]
    BlueGreen(BlueGreenParams),
    Recreate,
    Shadow(ShadowParams),
}

/// Ramped steps when none are given: a small first batch, then doubling.
pub const DEFAULT_RAMPED_STEPS: &str = "10%,25%,50%,100%";

impl StrategyParams {
    pub fn kind(&self) -> StrategyKind {
        match self {
            StrategyParams::Rolling { .. } => StrategyKind::Rolling,
            StrategyParams::Ramped { .. } => StrategyKind::Ramped,
            StrategyParams::Canary(_) => StrategyKind::Canary,
            StrategyParams::BlueGreen(_) => StrategyKind::BlueGreen,
            StrategyParams::Recreate => StrategyKind::Recreate,
            StrategyParams::Shadow(_) => StrategyKind::Shadow,
        }
    }

    /// Checks flags against a strategy: a flag that the strategy would ignore is an error, so
    /// that a user never believes a setting was applied when it was not.
    pub fn from_flags(
        kind: StrategyKind,
        flags: &StrategyFlags,
    ) -> Result<StrategyParams, StrategyError> {
        let not_for = |flag, hint| {
            Err(StrategyError::FlagNotApplicable {
                flag,
                strategy: kind,
                hint,
            })
        };
        if !matches!(
            kind,
            StrategyKind::Rolling | StrategyKind::Ramped | StrategyKind::Canary
        ) {
            if flags.batch.is_some() {
                return not_for("batch", "only rolling moves pods in batches");
            }
            if flags.steps.is_some() {
                return not_for("steps", "only ramped and canary walk through steps");
            }
            if flags.weight.is_some() {
                return not_for("weight", "use canary to hold at a weight");
            }
            if flags.pause.is_some() {
                return not_for("pause", "only the partition strategies pause between steps");
            }
        }
        if kind != StrategyKind::BlueGreen {
            if !flags.services.is_empty() {
                return not_for("service", "only blue/green switches Services");
            }
            if flags.auto_promote.is_some() {
                return not_for("auto-promote", "only blue/green switches by itself");
            }
            if flags.scale_down_delay.is_some() {
                return not_for(
                    "scale-down-delay",
                    "only blue/green keeps an old set scaled",
                );
            }
            if flags.data.is_some() {
                return not_for("data", "only blue/green can start its new set from copies");
            }
        }
        if !matches!(kind, StrategyKind::BlueGreen | StrategyKind::Shadow)
            && flags.keep_data.is_some()
        {
            return not_for(
                "keep-data",
                "only blue/green and shadow remove a set they created",
            );
        }
        if kind != StrategyKind::Shadow {
            if flags.replicas.is_some() {
                return not_for("replicas", "only shadow sizes its own set");
            }
            if flags.duration.is_some() {
                return not_for("duration", "only shadow replays for a time");
            }
            if flags.requests.is_some() {
                return not_for("requests", "only shadow replays requests");
            }
            if flags.compare.is_some() {
                return not_for("compare", "only shadow compares answers");
            }
        }
        match kind {
            StrategyKind::BlueGreen => {
                let delay = flags.scale_down_delay.unwrap_or(DEFAULT_SCALE_DOWN_DELAY);
                Ok(StrategyParams::BlueGreen(BlueGreenParams {
                    services: flags.services.clone(),
                    auto_promote: flags.auto_promote.unwrap_or(false),
                    scale_down_delay: delay,
                    data: flags.data.unwrap_or_default(),
                    keep_data: flags.keep_data.unwrap_or(false),
                }))
            }
            StrategyKind::Recreate => Ok(StrategyParams::Recreate),
            StrategyKind::Shadow => {
                let replicas = flags.replicas.unwrap_or(1);
                if replicas == 0 {
                    return Err(StrategyError::BadValue {
                        flag: "replicas",
                        value: "0".into(),
                        reason: "a shadow needs at least one pod",
                    });
                }
                let duration = flags.duration.unwrap_or(DEFAULT_SHADOW_DURATION);
                if duration.get().is_zero() {
                    return Err(StrategyError::BadValue {
                        flag: "duration",
                        value: duration.to_string(),
                        reason: "the replay needs some time",
                    });
                }
                let compare = flags.compare.clone().unwrap_or_default();
                check_compare(&compare)?;
                Ok(StrategyParams::Shadow(ShadowParams {
                    replicas,
                    duration,
                    requests: flags.requests.clone().unwrap_or_else(|| {
                        vec![ReplayLine {
                            method: "GET".into(),
                            path: "/".into(),
                        }]
                    }),
                    compare,
                    keep_data: flags.keep_data.unwrap_or(false),
                }))
            }
            StrategyKind::Rolling => {
                if flags.steps.is_some() {
                    return not_for("steps", "use ramped for growing batches, or --batch N");
                }
                if flags.weight.is_some() {
                    return not_for("weight", "use canary to hold at a weight");
                }
                Ok(StrategyParams::Rolling {
                    batch: flags.batch.unwrap_or_default(),
                    pause: flags.pause,
                })
            }
            StrategyKind::Ramped => {
                if flags.batch.is_some() {
                    return not_for("batch", "ramped batches come from --steps");
                }
                if flags.weight.is_some() {
                    return not_for("weight", "use canary to hold at a weight");
                }
                let steps = match &flags.steps {
                    Some(list) => list.as_targets()?,
                    None => DEFAULT_RAMPED_STEPS.parse::<StepList>()?.as_targets()?,
                };
                Ok(StrategyParams::Ramped {
                    steps,
                    pause: flags.pause,
                })
            }
            StrategyKind::Canary => {
                if flags.batch.is_some() {
                    return not_for("batch", "a canary moves by --weight or --steps");
                }
                match (&flags.weight, &flags.steps) {
                    (Some(_), Some(_)) => Err(StrategyError::WeightAndSteps),
                    (None, None) => Err(StrategyError::CanaryNeedsWeightOrSteps),
                    (Some(weight), None) => {
                        match weight.get() {
                            0 => {
                                return Err(StrategyError::WeightOutOfRange {
                                    weight: *weight,
                                    what: "no pod",
                                })
                            }
                            100 => {
                                return Err(StrategyError::WeightOutOfRange {
                                    weight: *weight,
                                    what: "every pod",
                                })
                            }
                            _ => {}
                        }
                        Ok(StrategyParams::Canary(CanaryParams::Hold {
                            weight: *weight,
                            pause: flags.pause.unwrap_or(PauseSpec::UntilPromote),
                        }))
                    }
                    (None, Some(list)) => Ok(StrategyParams::Canary(CanaryParams::Steps {
                        weights: list.as_percentages()?,
                        pause: flags.pause,
                    })),
                }
            }
        }
    }
}

/// Checks the comparison limits of a shadow.
fn check_compare(compare: &ShadowCompare) -> Result<(), StrategyError> {
    let bad = |flag, value: String, reason| {
        Err(StrategyError::BadValue {
            flag,
            value,
            reason,
        })
    };
    if !(0.0..=100.0).contains(&compare.max_error_rate_increase) {
        return bad(
            "max-error-rate-increase",
            compare.max_error_rate_increase.to_string(),
            "give percentage points from 0 to 100",
        );
    }
    if !(compare.max_p95_ratio >= 1.0 && compare.max_p95_ratio.is_finite()) {
        return bad(
            "max-p95-ratio",
            compare.max_p95_ratio.to_string(),
            "give a factor of 1 or more (2 = twice stable's p95)",
        );
    }
    if compare.rate == 0 || compare.rate > 1000 {
        return bad(
            "rate",
            compare.rate.to_string(),
            "give 1 to 1000 requests per second",
        );
    }
    if compare.min_samples == 0 {
        return bad(
            "min-samples",
            "0".into(),
            "the comparison needs at least one answer per side to judge by (e.g. 20)",
        );
    }
    if let Some(pattern) = &compare.ignore_lines {
        if let Err(e) = regex::Regex::new(pattern) {
            return Err(StrategyError::BadPattern {
                flag: "ignore-lines",
                pattern: pattern.clone(),
                message: e.to_string(),
            });
        }
    }
    if compare.max_requests == 0 || compare.max_requests < compare.min_samples {
        return bad(
            "max-requests",
            compare.max_requests.to_string(),
            "give at least as many requests as the comparison needs to pass (--min-samples)",
        );
    }
    Ok(())
}

/// Deadlines the executor enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Timeouts {
    /// Longest time one step may take (a partition step: until its pods are updated, Ready and
    /// gated). Pauses do not count.
    pub step: HumanDuration,
    /// Longest time the whole rollout may take, pauses excluded; `None`: no overall limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<HumanDuration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            step: HumanDuration::from_secs(600),
            total: None,
        }
    }
}

/// What happens when a gate fails or a step passes its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Template and partition back to the stable revision, stuck pods deleted.
    #[default]
    Rollback,
    /// Leave everything as it is (`--no-rollback`) for someone to look at.
    Hold,
}

/// Everything a rollout runs with, checked. Kept in the state record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StrategyConfig {
    pub params: StrategyParams,
    #[serde(default)]
    pub gates: GateSpec,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// `--traffic gateway --route NAME`: the weights go through an HTTPRoute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Box<super::route::RouteTraffic>>,
}

impl StrategyConfig {
    pub fn kind(&self) -> StrategyKind {
        self.params.kind()
    }

    /// Checks everything together.
    pub fn new(
        kind: StrategyKind,
        flags: &StrategyFlags,
        gates: GateSpec,
        timeouts: Timeouts,
        on_failure: OnFailure,
    ) -> Result<Self, StrategyError> {
        let params = StrategyParams::from_flags(kind, flags)?;
        gates.validate()?;
        if timeouts.step.get().is_zero() || timeouts.total.is_some_and(|t| t.get().is_zero()) {
            return Err(StrategyError::ZeroTimeout);
        }
        if flags.traffic.is_some()
            && !matches!(
                kind,
                StrategyKind::Canary | StrategyKind::BlueGreen | StrategyKind::Shadow
            )
        {
            return Err(StrategyError::FlagNotApplicable {
                flag: "traffic",
                strategy: kind,
                hint: "an HTTPRoute carries a canary's weights, blue/green's preview and switch, and a shadow's mirror",
            });
        }
        if let Some(t) = flags.traffic.as_deref() {
            if t.canary_header.is_some()
                && !matches!(kind, StrategyKind::Canary | StrategyKind::BlueGreen)
            {
                return Err(StrategyError::FlagNotApplicable {
                    flag: "canary-header",
                    strategy: kind,
                    hint: "a header pins requests to a canary (--canary-header) or to blue/green's preview (--preview-header)",
                });
            }
            if t.mirror_percent.is_some() && kind != StrategyKind::Shadow {
                return Err(StrategyError::FlagNotApplicable {
                    flag: "mirror-percent",
                    strategy: kind,
                    hint: "only a shadow gets mirrored requests",
                });
            }
        }
        Ok(StrategyConfig {
            params,
            gates,
            timeouts,
            on_failure,
            traffic: flags.traffic.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(
        batch: Option<&str>,
        steps: Option<&str>,
        weight: Option<u32>,
        pause: Option<&str>,
    ) -> StrategyFlags {
        StrategyFlags {
            batch: batch.map(|b| b.parse().unwrap_or_else(|e| panic!("{b}: {e}"))),
            steps: steps.map(|s| s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))),
            weight: weight.map(|w| Percent::new(w).unwrap_or_else(|e| panic!("{e}"))),
            pause: pause.map(|p| p.parse().unwrap_or_else(|e| panic!("{p}: {e}"))),
            ..StrategyFlags::default()
        }
    }

    fn pct(v: u32) -> Percent {
        Percent::new(v).unwrap_or(Percent::HUNDRED)
    }

    #[test]
    fn batch_sizes() {
        let cases = [
            ("1", 10, 1),
            ("3", 10, 3),
            ("25%", 10, 3),
            ("10%", 5, 1),
            ("100%", 7, 7),
            ("50%", 1, 1),
        ];
        for (input, replicas, pods) in cases {
            let batch: BatchSize = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(batch.pods(replicas), pods, "{input} of {replicas}");
        }
        for bad in ["0", "0%", "x", "150%", "-1", ""] {
            assert!(bad.parse::<BatchSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pauses() {
        assert_eq!("".parse::<PauseSpec>(), Ok(PauseSpec::UntilPromote));
        assert_eq!("promote".parse::<PauseSpec>(), Ok(PauseSpec::UntilPromote));
        assert_eq!(
            "2m".parse::<PauseSpec>(),
            Ok(PauseSpec::For(HumanDuration::from_secs(120)))
        );
        assert!("soon".parse::<PauseSpec>().is_err());
        assert_eq!(
            PauseSpec::For(HumanDuration::from_secs(90)).to_string(),
            "1m 30s"
        );
    }

    #[test]
    fn flags_resolve_per_strategy() {
        use StrategyKind::*;
        let cases: Vec<(StrategyKind, StrategyFlags, StrategyParams)> = vec![
            (
                Rolling,
                flags(None, None, None, None),
                StrategyParams::Rolling {
                    batch: BatchSize::Pods(1),
                    pause: None,
                },
            ),
            (
                Rolling,
                flags(Some("2"), None, None, Some("30s")),
                StrategyParams::Rolling {
                    batch: BatchSize::Pods(2),
                    pause: Some(PauseSpec::For(HumanDuration::from_secs(30))),
                },
            ),
            (
                Ramped,
                flags(None, Some("1,2,4"), None, Some("")),
                StrategyParams::Ramped {
                    steps: vec![
                        StepTarget::Pods(1),
                        StepTarget::Pods(2),
                        StepTarget::Pods(4),
                    ],
                    pause: Some(PauseSpec::UntilPromote),
                },
            ),
            (
                Ramped,
                flags(None, None, None, None),
                StrategyParams::Ramped {
                    steps: [10, 25, 50, 100]
                        .map(|p| StepTarget::Percent(pct(p)))
                        .to_vec(),
                    pause: None,
                },
            ),
            (
                Canary,
                flags(None, None, Some(20), None),
                StrategyParams::Canary(CanaryParams::Hold {
                    weight: pct(20),
                    pause: PauseSpec::UntilPromote,
                }),
            ),
            (
                Canary,
                flags(None, None, Some(20), Some("5m")),
                StrategyParams::Canary(CanaryParams::Hold {
                    weight: pct(20),
                    pause: PauseSpec::For(HumanDuration::from_secs(300)),
                }),
            ),
            (
                Canary,
                flags(None, Some("20,50,100"), None, Some("2m")),
                StrategyParams::Canary(CanaryParams::Steps {
                    weights: vec![pct(20), pct(50), pct(100)],
                    pause: Some(PauseSpec::For(HumanDuration::from_secs(120))),
                }),
            ),
        ];
        for (kind, flags, expected) in cases {
            let got = StrategyParams::from_flags(kind, &flags);
            assert_eq!(got.as_ref(), Ok(&expected), "{kind} {flags:?}");
            assert_eq!(expected.kind(), kind);
        }
    }

    #[test]
    fn flags_that_do_not_apply_are_refused() {
        use StrategyKind::*;
        let cases: Vec<(StrategyKind, StrategyFlags, &str)> = vec![
            (
                Rolling,
                flags(None, Some("1,2"), None, None),
                "--steps does not apply to a rolling rollout",
            ),
            (
                Rolling,
                flags(None, None, Some(20), None),
                "--weight does not apply to a rolling",
            ),
            (
                Ramped,
                flags(Some("2"), None, None, None),
                "--batch does not apply to a ramped",
            ),
            (
                Ramped,
                flags(None, None, Some(20), None),
                "--weight does not apply to a ramped",
            ),
            (
                Canary,
                flags(Some("2"), Some("20"), None, None),
                "--batch does not apply to a canary",
            ),
            (Canary, flags(None, None, None, None), "needs --weight W"),
            (
                Canary,
                flags(None, Some("20"), Some(20), None),
                "cannot be used together",
            ),
            (Canary, flags(None, None, Some(0), None), "moves no pod"),
            (
                Canary,
                flags(None, None, Some(100), None),
                "moves every pod",
            ),
            (
                Canary,
                flags(None, Some("20,50,150"), None, None),
                "step 3 is 150%",
            ),
        ];
        for (kind, flags, fragment) in cases {
            let err = StrategyParams::from_flags(kind, &flags).expect_err(fragment);
            assert!(
                err.to_string().contains(fragment),
                "{kind}: `{err}` lacks `{fragment}`"
            );
        }
    }

    #[test]
    fn command_line_flags_override_file_flags() {
        let file = flags(Some("2"), Some("20,50,100"), None, Some("2m"));
        let cli = flags(None, None, Some(10), None);
        let merged = file.clone().overlaid_with(cli);
        assert_eq!(merged.weight, Some(pct(10)));
        assert_eq!(
            merged.steps, None,
            "--weight on the command line replaces the file's steps"
        );
        assert_eq!(merged.pause, file.pause);
        assert_eq!(merged.batch, file.batch);
        let unchanged = file.clone().overlaid_with(StrategyFlags::default());
        assert_eq!(unchanged, file);
    }

    #[test]
    fn config_checks_gates_and_timeouts() {
        let mut gates = GateSpec::default();
        gates.http.path = "nope".into();
        let err = StrategyConfig::new(
            StrategyKind::Rolling,
            &StrategyFlags::default(),
            gates,
            Timeouts::default(),
            OnFailure::Rollback,
        );
        assert!(matches!(err, Err(StrategyError::Gate(_))));
        let zero = Timeouts {
            step: HumanDuration::from_secs(0),
            total: None,
        };
        let err = StrategyConfig::new(
            StrategyKind::Rolling,
            &StrategyFlags::default(),
            GateSpec::default(),
            zero,
            OnFailure::Rollback,
        );
        assert_eq!(err.err(), Some(StrategyError::ZeroTimeout));
    }

    #[test]
    fn params_serde_round_trip() {
        let params = StrategyParams::Canary(CanaryParams::Steps {
            weights: vec![pct(20), pct(100)],
            pause: Some(PauseSpec::UntilPromote),
        });
        let json = serde_json::to_string(&params).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"kind":"canary","mode":"steps","weights":[20,100],"pause":"promote"}"#
        );
        let back: StrategyParams = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, params);
    }
}
