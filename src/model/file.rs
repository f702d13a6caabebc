//! Strategy files (`strategies/*.yaml`): a strategy with its flags, gates, deadlines and failure
//! policy, in a file a user can copy, review and keep next to their chart.
//!
//! Schema (every key but `strategy` is optional; unknown keys are refused so a typo never passes
//! silently; durations are humantime: `90s`, `5m`, `1h30m`):
//!
//! ```yaml
//! apiVersion: rollout.dev/v1alpha1   # optional; this version if given
//! kind: RolloutStrategy              # optional; this value if given
//! strategy: canary                   # rolling | ramped | canary | bluegreen | recreate | shadow
//! batch: 2                           # rolling: pods per step, or a percentage ("25%")
//! steps: [20, 50, 100]               # ramped: pods (1,2,4) or "10%"...; canary: percent
//! weight: 20                         # canary: hold at this weight until promote
//! pause: 2m                          # between steps; "promote" waits for `rollout promote`
//! traffic:                           # canary: the weights go through a Gateway API HTTPRoute; bluegreen: its preview and switch; shadow: its mirror (mirrorPercent: P)
//!   gateway:
//!     route: web                     # the route whose rule sends traffic to the set's Service
//!     canaryHeader: X-Canary=always  # optional: requests with this header go to the canary (bluegreen: previewHeader, to green)
//! services: [web]                    # bluegreen: the live Services (default: those selecting the pods)
//! autoPromote: false                 # bluegreen: switch as soon as green passes its gates
//! scaleDownDelay: 30s                # bluegreen: how long blue stays scaled after the switch
//! data: fresh                        # bluegreen: fresh (empty volumes) | clone (copies of blue's)
//! keepData: false                    # bluegreen, shadow: keep the removed set's volumes
//! replicas: 1                        # shadow: pods of the shadow set
//! duration: 1m                       # shadow: how long requests are replayed and compared
//! compare:                           # shadow: how the shadow is judged against stable
//!   maxErrorRateIncrease: 1.0        # percentage points above stable's error rate
//!   maxP95Ratio: 2.0                 # shadow p95 latency / stable p95 latency
//!   minSamples: 20                   # requests per side before it can pass
//!   compareBodies: false
//!   ignoreLines: "^Time:"            # body lines matching this are not compared
//!   rate: 10                         # replayed requests per second, per side
//!   maxRequests: 600                 # per side
//! gates:
//!   http:                            # on by default: GET / expecting 2xx
//!     enabled: true
//!     path: /
//!     port: http                     # number or container port name; default: first port
//!     status: 2xx                    # 200, 200-299 or 2xx
//!     timeout: 2s                    # per probe
//!     interval: 1s                   # between probes of one pod
//!     window: 10s                    # probing time per pod
//!     minSuccessRatio: 1.0           # share of probes that must succeed
//!     maxP95Latency: 500ms           # optional
//!     errorLimit: 4                  # connection errors in a row retried before they count
//!     via: auto                      # auto | direct (pod IP) | proxy (API server pod proxy)
//!   minReady: 10s                    # each changed pod Ready at least this long
//!   command: {run: [sh, -c, "./smoke.sh"], timeout: 1m}   # exit 0 passes
//!   webhook: {url: "http://127.0.0.1:9000/check", timeout: 10s}   # 2xx passes
//!   prometheus:                      # metric gates: a query, then its condition (README)
//!     - 'sum(rate(http_requests_total{namespace="{namespace}",controller_revision_hash="{revision}",code=~"5.."}[1m])) or vector(0) < 0.1'
//!   analysisInterval: 10s            # metric gates also during pauses, holds and the bake
//!   bake: 2m                         # rolling, ramped, canary: analysed pause after the last step
//! timeouts:
//!   step: 10m                        # per step, pauses excluded
//!   total: 1h                        # whole rollout, optional
//! onFailure: rollback                # rollback | hold (same as --no-rollback)
//! ```

use serde::{Deserialize, Serialize};

use super::duration::HumanDuration;
use super::gate::GateSpec;
use super::steps::StepList;
use super::strategy::{BatchSize, PauseSpec};
use super::strategy::{
    OnFailure, StrategyConfig, StrategyError, StrategyFlags, StrategyKind, Timeouts,
};
use super::twin::{DataMode, ShadowCompare};
use super::weight::Percent;

pub const API_VERSION: &str = "rollout.dev/v1alpha1";
pub const KIND: &str = "RolloutStrategy";

/// Why a strategy file was refused. `file` is the path as the user gave it.
#[derive(Debug, thiserror::Error)]
pub enum StrategyFileError {
    #[error("reading strategy file {file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: serde_yaml_ng::Error,
    },
    #[error("strategy file {file}: apiVersion `{found}` is not supported (this version reads {API_VERSION})")]
    ApiVersion { file: String, found: String },
    #[error("strategy file {file}: kind `{found}` is not {KIND}")]
    Kind { file: String, found: String },
    #[error("strategy file {file}: {source}")]
    Invalid {
        file: String,
        #[source]
        source: StrategyError,
    },
}

/// A strategy file's `traffic:` block: what splits the canary's requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileTraffic {
    /// A Gateway API HTTPRoute.
    pub gateway: super::route::RouteTraffic,
}

/// A strategy file as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StrategyFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub strategy: StrategyKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<StepList>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<Percent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_data: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<ShadowCompare>,
    /// Canary: `traffic: {gateway: {route: NAME, canaryHeader: NAME=VALUE}}`; blue/green the
    /// same with `previewHeader`; shadow with `mirrorPercent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<FileTraffic>,
    #[serde(default)]
    pub gates: GateSpec,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub on_failure: OnFailure,
    /// URLs to post the rollout's start, holds, success, failure and rollback to (Slack or
    /// Microsoft Teams incoming webhooks); with `--notify` on the command line, both are used.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

impl StrategyFile {
    /// Parses and checks the file's header; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<StrategyFile, StrategyFileError> {
        let parsed: StrategyFile =
            serde_yaml_ng::from_str(text).map_err(|source| StrategyFileError::Parse {
                file: file.to_string(),
                source,
            })?;
        if let Some(found) = parsed.api_version.as_deref().filter(|v| *v != API_VERSION) {
            return Err(StrategyFileError::ApiVersion {
                file: file.to_string(),
                found: found.to_string(),
            });
        }
        if let Some(found) = parsed.kind.as_deref().filter(|k| *k != KIND) {
            return Err(StrategyFileError::Kind {
                file: file.to_string(),
                found: found.to_string(),
            });
        }
        Ok(parsed)
    }

    /// The strategy flags the file sets, to overlay command-line flags on.
    pub fn flags(&self) -> StrategyFlags {
        StrategyFlags {
            batch: self.batch,
            steps: self.steps.clone(),
            weight: self.weight,
            pause: self.pause,
            services: self.services.clone(),
            auto_promote: self.auto_promote,
            scale_down_delay: self.scale_down_delay,
            data: self.data,
            keep_data: self.keep_data,
            replicas: self.replicas,
            duration: self.duration,
            requests: None,
            compare: self.compare.clone(),
            traffic: self.traffic.clone().map(|t| Box::new(t.gateway)),
        }
    }

    /// The checked configuration, with `cli` flags taking precedence over the file's, and the
    /// file's gates, timeouts and failure handling as `overlay` leaves them (the command line
    /// overrides them field by field).
    pub fn into_config(
        self,
        file: &str,
        cli: StrategyFlags,
        overlay: impl FnOnce(GateSpec, Timeouts, OnFailure) -> (GateSpec, Timeouts, OnFailure),
    ) -> Result<StrategyConfig, StrategyFileError> {
        let flags = self.flags().overlaid_with(cli);
        let (gates, timeouts, on_failure) = overlay(self.gates, self.timeouts, self.on_failure);
        StrategyConfig::new(self.strategy, &flags, gates, timeouts, on_failure).map_err(|source| {
            StrategyFileError::Invalid {
                file: file.to_string(),
                source,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::duration::HumanDuration;
    use crate::model::strategy::{CanaryParams, StrategyParams};

    #[test]
    fn full_file_parses() {
        let text = "
apiVersion: rollout.dev/v1alpha1
kind: RolloutStrategy
strategy: canary
steps: [20, 50, 100]
pause: 2m
gates:
  http:
    path: /
    minSuccessRatio: 0.95
  minReady: 5s
timeouts:
  step: 5m
  total: 1h
onFailure: hold
";
        let file = StrategyFile::parse("canary.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        let config = file
            .into_config("canary.yaml", StrategyFlags::default(), |g, t, o| (g, t, o))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            matches!(config.params, StrategyParams::Canary(CanaryParams::Steps { ref weights, .. }) if weights.len() == 3)
        );
        assert_eq!(config.timeouts.step, HumanDuration::from_secs(300));
        assert_eq!(config.timeouts.total, Some(HumanDuration::from_secs(3600)));
        assert_eq!(config.on_failure, OnFailure::Hold);
        assert!((config.gates.http.min_success_ratio - 0.95).abs() < 1e-9);
    }

    #[test]
    fn metric_gates_come_from_the_file() {
        let text = "
strategy: canary
weight: 20
gates:
  prometheus:
    - 'sum(x{pod=~\"{pods}\"}) <= 1.5 * stable'
  analysisInterval: 5s
  bake: 1m
";
        let file = StrategyFile::parse("c.yaml", text).unwrap_or_else(|e| panic!("{e}"));
        let config = file
            .into_config("c.yaml", StrategyFlags::default(), |g, t, o| (g, t, o))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.gates.prometheus.len(), 1);
        assert_eq!(
            config.gates.analysis(),
            Some(std::time::Duration::from_secs(5))
        );
        assert_eq!(config.gates.bake, Some(HumanDuration::from_secs(60)));
        let lonely = "strategy: canary\nweight: 20\ngates:\n  analysisInterval: 5s\n";
        let file = StrategyFile::parse("c.yaml", lonely).unwrap_or_else(|e| panic!("{e}"));
        let refused = file.into_config("c.yaml", StrategyFlags::default(), |g, t, o| (g, t, o));
        assert!(
            refused.is_err(),
            "analysis without a metric gate is refused"
        );
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let file =
            StrategyFile::parse("r.yaml", "strategy: rolling\n").unwrap_or_else(|e| panic!("{e}"));
        let config = file
            .into_config("r.yaml", StrategyFlags::default(), |g, t, o| (g, t, o))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.gates, GateSpec::default());
        assert_eq!(config.timeouts, Timeouts::default());
        assert_eq!(config.on_failure, OnFailure::Rollback);
    }

    #[test]
    fn bad_files_name_the_file_and_the_problem() {
        let cases: &[(&str, &str)] = &[
            ("strategy: purple\n", "unknown variant `purple`"),
            (
                "strategy: recreate\nservices: [web]\n",
                "--service does not apply to a recreate rollout",
            ),
            (
                "strategy: shadow\nreplicas: 0\n",
                "a shadow needs at least one pod",
            ),
            (
                "strategy: shadow\ncompare:\n  maxP95Ratio: 0.5\n",
                "--max-p95-ratio 0.5",
            ),
            ("strategy: bluegreen\ndata: copy\n", "copy"),
            ("strategy: rolling\nbatchh: 2\n", "unknown field `batchh`"),
            (
                "strategy: rolling\nsteps: [1, 2]\n",
                "--steps does not apply to a rolling rollout",
            ),
            (
                "strategy: ramped\nsteps: [4, 2]\n",
                "step 2 (2) is lower than step 1 (4)",
            ),
            ("strategy: canary\n", "needs --weight"),
            ("strategy: canary\nweight: 20\npause: soon\n", "soon"),
            (
                "apiVersion: rollout.dev/v9\nstrategy: rolling\n",
                "apiVersion `rollout.dev/v9`",
            ),
            ("kind: Deployment\nstrategy: rolling\n", "kind `Deployment`"),
            (
                "strategy: rolling\ngates:\n  http:\n    status: 7xx\n",
                "7xx",
            ),
            ("strategy: rolling\ntimeouts:\n  step: 10\n", "no unit"),
        ];
        for (text, fragment) in cases {
            let result = StrategyFile::parse("my.yaml", text).and_then(|f| {
                f.into_config("my.yaml", StrategyFlags::default(), |g, t, o| (g, t, o))
            });
            let err = result.expect_err(text);
            let message = format!("{err}");
            assert!(
                message.contains("my.yaml"),
                "{text}: `{message}` does not name the file"
            );
            assert!(
                message.contains(fragment),
                "{text}: `{message}` lacks `{fragment}`"
            );
        }
    }

    #[test]
    fn command_line_wins_over_the_file() {
        let file = StrategyFile::parse("c.yaml", "strategy: canary\nsteps: 20,50,100\npause: 2m\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let cli = StrategyFlags {
            weight: Percent::new(10).ok(),
            ..StrategyFlags::default()
        };
        let config = file
            .into_config("c.yaml", cli, |g, t, o| (g, t, o))
            .unwrap_or_else(|e| panic!("{e}"));
        let expected = StrategyParams::Canary(CanaryParams::Hold {
            weight: Percent::new(10).unwrap_or(Percent::HUNDRED),
            pause: PauseSpec::For(HumanDuration::from_secs(120)),
        });
        assert_eq!(config.params, expected);
    }

    #[test]
    fn shipped_presets_parse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies");
        let mut seen = 0;
        for name in [
            "rolling.yaml",
            "ramped.yaml",
            "canary.yaml",
            "canary-hold.yaml",
            "canary-gateway.yaml",
            "bluegreen.yaml",
            "bluegreen-gateway.yaml",
            "recreate.yaml",
            "shadow.yaml",
        ] {
            let path = format!("{dir}/{name}");
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let file = StrategyFile::parse(name, &text).unwrap_or_else(|e| panic!("{e}"));
            file.into_config(name, StrategyFlags::default(), |g, t, o| (g, t, o))
                .unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
        assert_eq!(seen, 9);
    }

    #[test]
    fn a_traffic_block_names_the_route() {
        let text = "strategy: canary\nsteps: [5, 50]\ntraffic:\n  gateway:\n    route: web\n    canaryHeader: X-Canary=1\n";
        let config = StrategyFile::parse("f", text)
            .and_then(|f| f.into_config("f", StrategyFlags::default(), |g, t, o| (g, t, o)))
            .unwrap_or_else(|e| panic!("{e}"));
        let traffic = config.traffic.unwrap_or_else(|| panic!("no traffic"));
        assert_eq!(traffic.route, "web");
        assert_eq!(
            traffic.canary_header.map(|h| h.to_string()).as_deref(),
            Some("X-Canary=1")
        );
        for bad in [
            "strategy: canary\nweight: 5\ntraffic:\n  gateway:\n    route: web\n    canaryHeader: nope\n",
            "strategy: canary\nweight: 5\ntraffic:\n  mesh: {}\n",
            "strategy: rolling\ntraffic:\n  gateway:\n    route: web\n",
            "strategy: canary\nweight: 5\ntraffic:\n  gateway:\n    route: web\n    mirrorPercent: 10\n",
            "strategy: shadow\ntraffic:\n  gateway:\n    route: web\n    canaryHeader: X-Canary=1\n",
            "strategy: shadow\ntraffic:\n  gateway:\n    route: web\n    mirrorPercent: 101\n",
        ] {
            let result = StrategyFile::parse("f", bad)
                .and_then(|f| f.into_config("f", StrategyFlags::default(), |g, t, o| (g, t, o)));
            assert!(result.is_err(), "{bad}");
        }
        let text =
            "strategy: shadow\ntraffic:\n  gateway:\n    route: web\n    mirrorPercent: 10\n";
        let config = StrategyFile::parse("f", text)
            .and_then(|f| f.into_config("f", StrategyFlags::default(), |g, t, o| (g, t, o)))
            .unwrap_or_else(|e| panic!("{e}"));
        let traffic = config.traffic.unwrap_or_else(|| panic!("no traffic"));
        assert_eq!(traffic.mirror_percent.map(|p| p.get()), Some(10));
        let text =
            "strategy: bluegreen\ntraffic:\n  gateway:\n    route: web\n    previewHeader: X-Preview=1\n";
        let config = StrategyFile::parse("f", text)
            .and_then(|f| f.into_config("f", StrategyFlags::default(), |g, t, o| (g, t, o)))
            .unwrap_or_else(|e| panic!("{e}"));
        let traffic = config.traffic.unwrap_or_else(|| panic!("no traffic"));
        assert_eq!(
            traffic.canary_header.map(|h| h.to_string()).as_deref(),
            Some("X-Preview=1")
        );
    }
}
