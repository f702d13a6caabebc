//! The command line, in one place: clap-derive definitions, resolved once into an
//! [`Invocation`] (flags over strategy file over defaults; files read and checked) before any
//! cluster work. Everything wrong with the input is reported here or by the checks against the
//! StatefulSet, always before the first write.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exec::commands::{Output, RunRequest, TemplateSource};
use crate::exec::manifest::{Manifest, ManifestError};
use crate::exec::{Action, Connection, Invocation};
use crate::model::duration::HumanDuration;
use crate::model::file::{StrategyFile, StrategyFileError};
use crate::model::gate::{
    CommandGate, GateSpec, GateSpecError, LocalGates, PortRef, ProbeVia, StatusRange, WebhookGate,
};
use crate::model::image::ImageChange;
use crate::model::metric::MetricGate;
use crate::model::steps::StepList;
use crate::model::strategy::{
    BatchSize, OnFailure, PauseSpec, StrategyConfig, StrategyError, StrategyFlags, StrategyKind,
    StrategyParams, Timeouts,
};
use crate::model::twin::{DataMode, ReplayLine, ShadowCompare};
use crate::model::weight::Percent;

const EXIT_CODES: &str = "\
Exit codes:
  0  done: the rollout finished, or stopped at the hold it was asked for (canary --weight), or
     stopped because of `rollout pause` (`rollout resume` continues)
  1  cluster error: the API server could not be reached or refused a request (after retries
     within the step's deadline), or a rollback could not be completed, or a run stopped
     part-way after it began to write (the message says how to go on)
  2  bad input: flags, names, image, strategy file, manifest, an unreadable kubeconfig, or a
     StatefulSet that does not exist or cannot be rolled now, e.g. at 0 replicas (nothing was
     changed)
  3  rolled back: a gate failed (or `abort` was run) and the set is back on the stable revision;
     also a failed gate held by --no-rollback
  4  locked: another run holds the StatefulSet's Lease (the message names it), or a rollout is
     already in progress on it
  5  timed out: a step or the whole rollout passed its deadline
130/143  interrupted by SIGINT/SIGTERM; `rollout resume` continues";

/// `rollout --version`: the version and the commit it was built from (see build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ROLLOUT_COMMIT"),
    ")"
);

/// Rolls a Kubernetes StatefulSet to a new version, step by step, gating every step on the
/// health of the pods it changed, and rolling back by itself when a gate fails.
#[derive(Debug, Parser)]
#[command(name = "rollout", version = VERSION, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Cluster and output")]
pub struct GlobalArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the in-cluster account)
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the StatefulSet (default: the context's namespace)
    #[arg(short = 'n', long, global = true, value_parser = crate::model::name::namespace_name)]
    pub namespace: Option<String>,
    /// Result format on stdout; progress always goes to stderr
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputArg::Text)]
    pub output: OutputArg,
    /// No progress lines on stderr (errors are still printed)
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputArg {
    Text,
    Json,
    /// One JSON object per line: the marks of the rollout's story as they happen (runs and
    /// `status --watch`), for CI systems
    Jsonl,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Run(RunCommand),
    /// Print the steps a rollout would take; nothing is changed
    Plan {
        #[command(subcommand)]
        run: RunCommand,
    },
    /// Where the rollout of a StatefulSet stands
    Status {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
        /// Follow changes until the rollout is finished (exits with the rollout's code)
        #[arg(short = 'w', long)]
        watch: bool,
        /// With --watch: give up after this long (exit 5)
        #[arg(long, value_name = "DURATION", requires = "watch")]
        timeout: Option<HumanDuration>,
        /// With --watch: `done` follows until the rollout is finished; `hold` also stops (exit
        /// 0) where it waits for a person (`rollout promote`, `rollout resume`)
        #[arg(long, value_enum, value_name = "hold|done", requires = "watch")]
        until: Option<Until>,
    },
    /// Continue a rollout waiting at a pause (--full: skip to the end); end a shadow's
    /// comparison and roll the real set (--then)
    Promote {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
        /// Skip the remaining steps and pauses: every pod moves in one step (then one gate)
        #[arg(long, conflicts_with = "then")]
        full: bool,
        /// If this process runs the rest: keep waiting at later holds
        #[arg(long)]
        wait: bool,
        /// Shadow: after the shadow is removed, roll the real set with this strategy
        #[arg(long, value_name = "rolling|ramped|canary")]
        then: Option<StrategyKind>,
        /// With --then: pods per step (rolling)
        #[arg(long, value_name = "N", requires = "then")]
        batch: Option<BatchSize>,
        /// With --then: steps (ramped: 1,2,4 or 10%,50%; canary: 20,50,100)
        #[arg(long, value_name = "LIST", requires = "then")]
        steps: Option<StepList>,
        /// With --then canary: hold at this weight until the next promote
        #[arg(long, value_name = "PERCENT", requires = "then")]
        weight: Option<Percent>,
        /// With --then: wait between steps
        #[arg(long, value_name = "DURATION|promote", requires = "then")]
        pause: Option<PauseSpec>,
        #[command(flatten)]
        gates: LocalGateArgs,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// Pause a rollout: the running rollout stops at a safe point and exits 0
    Pause {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
    },
    /// Continue after `pause`, or a run whose process died
    Resume {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
        /// Keep waiting at holds (canary --weight) instead of stopping there
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        gates: LocalGateArgs,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// Go back to the stable revision now
    Abort {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
        /// Longest wait for the pods to be back
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        timeout: HumanDuration,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// After someone else's deploy stopped the rollout: let it have the set. rollout gives back
    /// what it holds (partition, update strategy, Service selectors, a green or shadow) and
    /// leaves the pod template as it is now
    Release {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
        /// Longest wait for what rollout gives back (blue/green: blue Ready again)
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        timeout: HumanDuration,
        #[command(flatten)]
        notify: NotifyArgs,
    },
    /// Put an earlier revision's template back (like kubectl rollout undo); works on any StatefulSet
    Undo {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
        /// The revision to return to (see `rollout history`); default: the previous one
        #[arg(long, value_name = "N")]
        to_revision: Option<i64>,
        /// Longest wait for the pods to be back
        #[arg(long, value_name = "DURATION", default_value = "10m")]
        timeout: HumanDuration,
    },
    /// The revisions of a StatefulSet (ControllerRevisions) with their images
    History {
        #[arg(value_parser = crate::model::name::statefulset_name)]
        statefulset: String,
    },
    /// Print a shell completion script (e.g. `rollout completions bash > /etc/bash_completion.d/rollout`)
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff; e.g. `rollout man > /usr/local/share/man/man1/rollout.1`)
    Man,
}

/// Where `status --watch` stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Until {
    Hold,
    Done,
}

/// The shells `rollout completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Cli {
    /// What a command that needs no cluster prints (completions, the man page), from the clap
    /// definitions themselves; `None` for every other command.
    pub fn offline_output(&self) -> Option<Result<String, std::io::Error>> {
        use clap::CommandFactory;
        let mut command = Cli::command();
        match self.command {
            Command::Completions { shell } => {
                let shell = match shell {
                    Shell::Bash => clap_complete::Shell::Bash,
                    Shell::Zsh => clap_complete::Shell::Zsh,
                    Shell::Fish => clap_complete::Shell::Fish,
                };
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut command, "rollout", &mut out);
                Some(Ok(String::from_utf8_lossy(&out).into_owned()))
            }
            Command::Man => {
                let mut out = Vec::new();
                Some(
                    clap_mangen::Man::new(command)
                        .render(&mut out)
                        .map(|()| String::from_utf8_lossy(&out).into_owned()),
                )
            }
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum RunCommand {
    /// Update pods a batch at a time, highest ordinals first, gating each batch
    Rolling(RollingArgs),
    /// Update pods in growing batches (--steps 1,2,4 or 10%,50%,100%)
    Ramped(RampedArgs),
    /// Update a share of the pods and hold (--weight), or walk through weights (--steps)
    Canary(CanaryArgs),
    /// Start a second set (green) on the new version, gate it, then switch the live Services to it
    #[command(name = "bluegreen", alias = "blue-green")]
    BlueGreen(BlueGreenArgs),
    /// Scheduled downtime: scale to 0, update, scale back, gate (data stays on the same volumes)
    Recreate(RecreateArgs),
    /// Run the new version beside stable with no live traffic, replay requests to both, compare
    Shadow(ShadowArgs),
    /// Roll with a strategy file (see strategies/); flags override the file
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct BlueGreenArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// A live Service to switch (repeat for several) [default: every Service with a cluster IP
    /// that selects the set's pods]
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,
    /// Switch as soon as green passes its gates instead of waiting for `rollout promote`
    #[arg(long)]
    pub auto_promote: bool,
    /// How long the old set stays scaled after the switch, so abort and undo are instant [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub scale_down_delay: Option<HumanDuration>,
    /// Green's volumes: `fresh` (new and empty) or `clone` (each ordinal's copied from blue's) [default: fresh]
    #[arg(long, value_name = "fresh|clone")]
    pub data: Option<DataMode>,
    /// Keep green's volumes when green is removed after a failure or an abort
    #[arg(long)]
    pub keep_data: bool,
    #[command(flatten)]
    pub route: PreviewRouteArgs,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RecreateArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct ShadowArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Pods of the shadow set [default: 1]
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// How long requests are replayed and compared [default: 1m]
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<HumanDuration>,
    /// Requests to replay, one `METHOD /path` per line [default: GET /]
    #[arg(long, value_name = "FILE")]
    pub requests: Option<PathBuf>,
    /// Replayed requests per second, to each side [default: 10]
    #[arg(long, value_name = "N")]
    pub rate: Option<u32>,
    /// Most replayed requests, to each side [default: 600]
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u32>,
    /// Fewest answers per side before the comparison can pass [default: 20]
    #[arg(long, value_name = "N")]
    pub min_samples: Option<u32>,
    /// Highest error rate of the shadow above stable's, in percentage points [default: 1]
    #[arg(long, value_name = "POINTS")]
    pub max_error_rate_increase: Option<f64>,
    /// Highest ratio of the shadow's p95 latency to stable's, stable's counted as at least 5 ms [default: 2]
    #[arg(long, value_name = "FACTOR")]
    pub max_p95_ratio: Option<f64>,
    /// Compare response bodies too
    #[arg(long)]
    pub compare_bodies: bool,
    /// With --compare-bodies: leave out body lines that match this pattern (e.g. a clock)
    #[arg(long, value_name = "PATTERN", requires = "compare_bodies")]
    pub ignore_lines: Option<String>,
    /// Keep the shadow's volumes when it is removed
    #[arg(long)]
    pub keep_data: bool,
    #[command(flatten)]
    pub mirror: MirrorArgs,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

impl ShadowArgs {
    fn flags(&self) -> Result<StrategyFlags, SettingsError> {
        let mut compare = ShadowCompare::default();
        if let Some(v) = self.rate {
            compare.rate = v;
        }
        if let Some(v) = self.max_requests {
            compare.max_requests = v;
        }
        if let Some(v) = self.min_samples {
            compare.min_samples = v;
        }
        if let Some(v) = self.max_error_rate_increase {
            compare.max_error_rate_increase = v;
        }
        if let Some(v) = self.max_p95_ratio {
            compare.max_p95_ratio = v;
        }
        compare.compare_bodies = self.compare_bodies;
        compare.ignore_lines = self.ignore_lines.clone();
        let requests = match &self.requests {
            Some(path) => Some(read_requests(path)?),
            None => None,
        };
        Ok(StrategyFlags {
            replicas: self.replicas,
            duration: self.duration,
            requests,
            compare: Some(compare),
            keep_data: self.keep_data.then_some(true),
            traffic: self.mirror.traffic()?,
            ..StrategyFlags::default()
        })
    }
}

/// Where a shadow's copies of live requests come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MirrorVia {
    /// rollout replays requests to stable and the shadow side by side (the default)
    Replay,
    /// The gateway of an HTTPRoute (--route) copies live requests to the shadow
    Gateway,
}

/// A shadow fed by a Gateway API HTTPRoute's RequestMirror filter.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Mirrored traffic through a Gateway API HTTPRoute")]
pub struct MirrorArgs {
    /// `gateway`: the route's gateway copies live requests to the shadow (--route); same as --mirror gateway
    #[arg(long, value_name = "pods|gateway")]
    pub traffic: Option<TrafficVia>,
    /// `replay` (default) or `gateway` (--route): where the shadow's requests come from
    #[arg(long, value_name = "replay|gateway")]
    pub mirror: Option<MirrorVia>,
    /// The HTTPRoute whose rule sends live traffic to the set's Service
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// The share of the route's requests copied to the shadow [default: 100]
    #[arg(long, value_name = "PERCENT")]
    pub mirror_percent: Option<crate::model::weight::Percent>,
}

impl MirrorArgs {
    /// The route settings of a mirrored shadow, or none.
    pub fn traffic(&self) -> Result<Option<Box<crate::model::route::RouteTraffic>>, SettingsError> {
        let bad = |text: &str| Err(SettingsError::Traffic(text.to_string()));
        let gateway = match (self.traffic, self.mirror) {
            (Some(TrafficVia::Pods), Some(MirrorVia::Gateway))
            | (Some(TrafficVia::Gateway), Some(MirrorVia::Replay)) => {
                return bad("--traffic and --mirror disagree: give --mirror gateway (or --traffic gateway) with --route NAME, or neither");
            }
            (Some(TrafficVia::Gateway), _) | (_, Some(MirrorVia::Gateway)) => true,
            _ => false,
        };
        match (gateway, &self.route) {
            (true, Some(route)) => {
                let (namespace, route) = crate::model::route::RouteTraffic::parse_route(route)
                    .map_err(SettingsError::Traffic)?;
                Ok(Some(Box::new(crate::model::route::RouteTraffic {
                    route,
                    namespace,
                    canary_header: None,
                    mirror_percent: self.mirror_percent,
                })))
            }
            (true, None) => bad("--mirror gateway needs --route NAME: the HTTPRoute whose rule sends live traffic to the set's Service"),
            (false, Some(_)) => bad("--route needs --mirror gateway (or --traffic gateway)"),
            (false, None) if self.mirror_percent.is_some() => {
                bad("--mirror-percent needs --mirror gateway --route NAME")
            }
            _ => Ok(None),
        }
    }
}

/// Reads a requests file (`METHOD /path` per line).
fn read_requests(path: &PathBuf) -> Result<Vec<ReplayLine>, SettingsError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::ReadRequests {
        file: file.clone(),
        source,
    })?;
    let parsed = crate::gate::compare::parse_requests(&file, &text)?;
    Ok(parsed
        .into_iter()
        .map(|r| ReplayLine {
            method: r.method,
            path: r.path,
        })
        .collect())
}

/// The StatefulSet and its new template.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// The StatefulSet to update
    #[arg(value_parser = crate::model::name::statefulset_name)]
    pub statefulset: String,
    /// New image: IMAGE for the only container, or CONTAINER=IMAGE; repeat for several
    #[arg(
        long = "image",
        value_name = "[CONTAINER=]IMAGE",
        required_unless_present = "manifest"
    )]
    pub images: Vec<ImageChange>,
    /// A whole new StatefulSet (e.g. `helm template` output; `-` reads stdin); its pod template is rolled out
    #[arg(short = 'f', long, value_name = "FILE", conflicts_with = "images")]
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RollingArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Pods per step: a count (2) or a share of the replicas (25%)
    #[arg(long, value_name = "N")]
    pub batch: Option<BatchSize>,
    /// Wait between batches: a duration (30s), or `promote` to wait for `rollout promote`
    #[arg(long, value_name = "DURATION|promote")]
    pub pause: Option<PauseSpec>,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct RampedArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Pods on the new version after each step: counts (1,2,4) or shares (10%,50%,100%)
    #[arg(long, value_name = "LIST")]
    pub steps: Option<StepList>,
    /// Wait between steps: a duration, or `promote`
    #[arg(long, value_name = "DURATION|promote")]
    pub pause: Option<PauseSpec>,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Args)]
pub struct CanaryArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Move this share of pods (1-99 %) and hold until `rollout promote`
    #[arg(long, value_name = "PERCENT")]
    pub weight: Option<Percent>,
    /// Walk through these weights in percent (20,50,100)
    #[arg(long, value_name = "LIST")]
    pub steps: Option<StepList>,
    /// Wait between steps (a duration, or `promote`); with --weight: how long to hold
    #[arg(long, value_name = "DURATION|promote")]
    pub pause: Option<PauseSpec>,
    #[command(flatten)]
    pub route: RouteArgs,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What carries the canary's share of requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TrafficVia {
    /// The pods: the weight is the share of pods on the new version (the default)
    Pods,
    /// A Gateway API HTTPRoute (--route): the weight is the share of requests, exactly
    Gateway,
}

/// Traffic through a Gateway API HTTPRoute.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Traffic through a Gateway API HTTPRoute")]
pub struct RouteArgs {
    /// What splits the traffic: `pods` (default) or `gateway` (an HTTPRoute, --route)
    #[arg(long, value_name = "pods|gateway")]
    pub traffic: Option<TrafficVia>,
    /// The HTTPRoute whose rule sends traffic to the set's Service
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// Requests with this header go to the canary pods, before any weight moves
    #[arg(long, value_name = "NAME=VALUE")]
    pub canary_header: Option<crate::model::route::HeaderPin>,
}

impl RouteArgs {
    /// The route settings, or none; the flags only make sense together.
    pub fn traffic(&self) -> Result<Option<Box<crate::model::route::RouteTraffic>>, SettingsError> {
        route_traffic(
            self.traffic,
            self.route.as_deref(),
            (self.canary_header.as_ref(), "canary-header"),
        )
    }
}

/// Blue/green through a Gateway API HTTPRoute: a header previews green, the switch is one
/// write of the route.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Traffic through a Gateway API HTTPRoute")]
pub struct PreviewRouteArgs {
    /// What switches the traffic: `pods` (default: the live Services' selectors) or `gateway`
    /// (an HTTPRoute, --route: the switch is one write of the route)
    #[arg(long, value_name = "pods|gateway")]
    pub traffic: Option<TrafficVia>,
    /// The HTTPRoute whose rule sends traffic to the set's Service
    #[arg(long, value_name = "NAME")]
    pub route: Option<String>,
    /// Requests with this header go to green (the preview) before the switch
    #[arg(long, value_name = "NAME=VALUE")]
    pub preview_header: Option<crate::model::route::HeaderPin>,
}

impl PreviewRouteArgs {
    /// The route settings, or none; the flags only make sense together.
    pub fn traffic(&self) -> Result<Option<Box<crate::model::route::RouteTraffic>>, SettingsError> {
        route_traffic(
            self.traffic,
            self.route.as_deref(),
            (self.preview_header.as_ref(), "preview-header"),
        )
    }
}

/// The route settings of `--traffic`, `--route` and a header flag (`header.1` names it).
fn route_traffic(
    traffic: Option<TrafficVia>,
    route: Option<&str>,
    header: (Option<&crate::model::route::HeaderPin>, &str),
) -> Result<Option<Box<crate::model::route::RouteTraffic>>, SettingsError> {
    let bad = |text: String| Err(SettingsError::Traffic(text));
    match (traffic, route) {
        (Some(TrafficVia::Gateway), Some(route)) => {
            let (namespace, route) = crate::model::route::RouteTraffic::parse_route(route)
                .map_err(SettingsError::Traffic)?;
            Ok(Some(Box::new(crate::model::route::RouteTraffic {
                route,
                namespace,
                canary_header: header.0.cloned(),
                mirror_percent: None,
            })))
        }
        (Some(TrafficVia::Gateway), None) => bad("--traffic gateway needs --route NAME: the HTTPRoute whose rule sends traffic to the set's Service".to_string()),
        (_, Some(_)) => bad("--route needs --traffic gateway".to_string()),
        _ if header.0.is_some() => bad(format!(
            "--{} needs --traffic gateway --route NAME",
            header.1
        )),
        _ => Ok(None),
    }
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The StatefulSet to update
    #[arg(value_parser = crate::model::name::statefulset_name)]
    pub statefulset: String,
    /// The strategy file (strategies/*.yaml)
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// New image: IMAGE or CONTAINER=IMAGE; repeat for several
    #[arg(
        long = "image",
        value_name = "[CONTAINER=]IMAGE",
        required_unless_present = "manifest"
    )]
    pub images: Vec<ImageChange>,
    /// A whole new StatefulSet whose pod template is rolled out (`-` reads stdin)
    #[arg(long, value_name = "FILE", conflicts_with = "images")]
    pub manifest: Option<PathBuf>,
    /// Overrides the file's batch
    #[arg(long, value_name = "N")]
    pub batch: Option<BatchSize>,
    /// Overrides the file's steps (and weight)
    #[arg(long, value_name = "LIST")]
    pub steps: Option<StepList>,
    /// Overrides the file's weight (and steps)
    #[arg(long, value_name = "PERCENT")]
    pub weight: Option<Percent>,
    /// Overrides the file's pause
    #[arg(long, value_name = "DURATION|promote")]
    pub pause: Option<PauseSpec>,
    #[command(flatten)]
    pub gates: GateArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Health gate settings; each overrides the strategy file's value or the default.
#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Health gates (after every step, on the pods it changed)")]
pub struct GateArgs {
    /// Turn the HTTP gate off
    #[arg(long)]
    pub no_probe: bool,
    /// HTTP gate: path to GET [default: /]
    #[arg(long, value_name = "PATH")]
    pub probe_path: Option<String>,
    /// HTTP gate: container port number or name [default: first port of the changed container]
    #[arg(long, value_name = "PORT")]
    pub probe_port: Option<PortRef>,
    /// HTTP gate: expected status, 200, 200-299 or 2xx [default: 2xx]
    #[arg(long, value_name = "CODES")]
    pub probe_status: Option<StatusRange>,
    /// HTTP gate: how long each pod is probed [default: 10s]
    #[arg(long, value_name = "DURATION")]
    pub probe_window: Option<HumanDuration>,
    /// HTTP gate: time between probes of one pod [default: 1s]
    #[arg(long, value_name = "DURATION")]
    pub probe_interval: Option<HumanDuration>,
    /// HTTP gate: longest wait for one answer [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub probe_timeout: Option<HumanDuration>,
    /// HTTP gate: share of probes per pod that must succeed, 0 to 1 [default: 1.0]
    #[arg(long, value_name = "RATIO")]
    pub min_success_ratio: Option<f64>,
    /// HTTP gate: highest 95th percentile latency per pod
    #[arg(long, value_name = "DURATION")]
    pub max_p95_latency: Option<HumanDuration>,
    /// HTTP gate: connection errors in a row retried before they count [default: 4]
    #[arg(long, value_name = "N")]
    pub error_limit: Option<u32>,
    /// HTTP gate: reach pods directly at their IP, through the API server's pod proxy, or auto
    #[arg(long, value_name = "auto|direct|proxy")]
    pub probe_via: Option<ProbeVia>,
    /// Each changed pod must have been Ready at least this long
    #[arg(long, value_name = "DURATION")]
    pub min_ready: Option<HumanDuration>,
    /// Metric gate: a PromQL query, then its condition: `Q < 0.01`, `Q <= 1.5 * stable`,
    /// `Q <= stable + 0.01`; placeholders {namespace} {set} {revision} {new} {stable} {pods}.
    /// No data is undecided, never a pass. Repeat for several
    #[arg(long, value_name = "QUERY COND")]
    pub gate_prometheus: Vec<MetricGate>,
    /// Keep the metric gates running at this interval during pauses and holds (a hold then
    /// waits here instead of exiting) and during --bake; a failure rolls back at once
    #[arg(long, value_name = "DURATION")]
    pub analysis_interval: Option<HumanDuration>,
    /// After the last step, keep the metric gates running this long before success
    /// (partition strategies: rolling, ramped, canary)
    #[arg(long, value_name = "DURATION")]
    pub bake: Option<HumanDuration>,
    #[command(flatten)]
    pub local: LocalGateArgs,
}

/// The gates that run something (a command here, a webhook call): only a command line (or a
/// strategy file it names) gives them, never the record on the StatefulSet, so the commands that
/// continue a rollout (`promote`, `resume`) take them too.
#[derive(Debug, Args, Default)]
pub struct LocalGateArgs {
    /// Command gate: run with `sh -c`; exit 0 passes (sees ROLLOUT_PODS, ROLLOUT_ADDRESSES, ...)
    #[arg(long, value_name = "COMMAND")]
    pub gate_command: Option<String>,
    /// Command gate: longest run [default: 1m]
    #[arg(long, value_name = "DURATION", requires = "gate_command")]
    pub gate_command_timeout: Option<HumanDuration>,
    /// Webhook gate: POST the step's pods as JSON to this URL; 2xx passes
    #[arg(long, value_name = "URL")]
    pub gate_webhook: Option<String>,
    /// Webhook gate: longest wait for the answer [default: 10s]
    #[arg(long, value_name = "DURATION", requires = "gate_webhook")]
    pub gate_webhook_timeout: Option<HumanDuration>,
    /// Metric gates: the Prometheus that answers their queries (only this URL is ever queried)
    #[arg(long, value_name = "URL", env = "ROLLOUT_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
}

impl LocalGateArgs {
    /// The command and webhook gates these flags give.
    pub fn gates(&self) -> Result<LocalGates, SettingsError> {
        let mut spec = GateSpec::default();
        self.apply_to(&mut spec);
        spec.validate().map_err(StrategyError::from)?;
        Ok(LocalGates::of(&spec).with_prometheus(self.prometheus_url()?))
    }

    /// `--prometheus-url` (or `ROLLOUT_PROMETHEUS_URL`), checked.
    pub fn prometheus_url(&self) -> Result<Option<String>, SettingsError> {
        match &self.prometheus_url {
            Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => Err(
                StrategyError::from(GateSpecError::BadPrometheusUrl { url: url.clone() }).into(),
            ),
            Some(url) if url.trim().is_empty() => Ok(None),
            other => Ok(other.clone()),
        }
    }

    fn apply_to(&self, base: &mut GateSpec) {
        if let Some(line) = &self.gate_command {
            let mut gate = CommandGate::shell(line);
            if let Some(t) = self.gate_command_timeout {
                gate.timeout = t;
            }
            base.command = Some(gate);
        }
        if let Some(url) = &self.gate_webhook {
            let mut gate = WebhookGate::new(url);
            if let Some(t) = self.gate_webhook_timeout {
                gate.timeout = t;
            }
            base.webhook = Some(gate);
        }
    }
}

impl GateArgs {
    /// The gates with these flags laid over `base`.
    pub fn apply_to(&self, mut base: GateSpec) -> GateSpec {
        let http = &mut base.http;
        if self.no_probe {
            http.enabled = false;
        }
        if let Some(v) = &self.probe_path {
            http.path = v.clone();
        }
        if let Some(v) = &self.probe_port {
            http.port = Some(v.clone());
        }
        if let Some(v) = self.probe_status {
            http.status = v;
        }
        if let Some(v) = self.probe_window {
            http.window = v;
        }
        if let Some(v) = self.probe_interval {
            http.interval = v;
        }
        if let Some(v) = self.probe_timeout {
            http.timeout = v;
        }
        if let Some(v) = self.min_success_ratio {
            http.min_success_ratio = v;
        }
        if let Some(v) = self.max_p95_latency {
            http.max_p95_latency = Some(v);
        }
        if let Some(v) = self.error_limit {
            http.error_limit = v;
        }
        if let Some(v) = self.probe_via {
            http.via = v;
        }
        if let Some(v) = self.min_ready {
            base.min_ready = Some(v);
        }
        if !self.gate_prometheus.is_empty() {
            base.prometheus = self.gate_prometheus.clone();
        }
        if let Some(v) = self.analysis_interval {
            base.analysis_interval = Some(v);
        }
        if let Some(v) = self.bake {
            base.bake = Some(v);
        }
        self.local.apply_to(&mut base);
        base
    }
}

#[derive(Debug, Args, Default)]
#[command(next_help_heading = "Deadlines and failure")]
pub struct RunArgs {
    /// Longest time one step may take (pods updated, Ready and gated), pauses excluded [default: 10m]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<HumanDuration>,
    /// Longest time the whole rollout may take, pauses excluded
    #[arg(long, value_name = "DURATION")]
    pub total_timeout: Option<HumanDuration>,
    /// When a gate fails or a deadline passes, leave everything as it is instead of rolling back
    #[arg(long)]
    pub no_rollback: bool,
    /// At a hold (canary --weight, --pause promote) keep running and continue when promoted,
    /// instead of exiting 0 there
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub notify: NotifyArgs,
}

/// Where to tell what the rollout does (never taken from the record on the set).
#[derive(Debug, Clone, Default, Args)]
pub struct NotifyArgs {
    /// Post a JSON message ({"text": ...}, as Slack and Microsoft Teams incoming webhooks take)
    /// to this URL at the start, a hold, success, failure and rollback; repeat for several.
    /// Never blocks or fails the rollout
    #[arg(long = "notify", value_name = "URL")]
    pub urls: Vec<String>,
}

impl NotifyArgs {
    /// The checked URLs, these and `more` (a strategy file's).
    fn urls(&self, more: &[String]) -> Result<Vec<reqwest::Url>, SettingsError> {
        self.urls
            .iter()
            .chain(more)
            .map(|u| crate::exec::announce::notify_url(u).map_err(SettingsError::from))
            .collect()
    }
}

impl RunArgs {
    fn timeouts(&self, base: Timeouts) -> Timeouts {
        Timeouts {
            step: self.timeout.unwrap_or(base.step),
            total: self.total_timeout.or(base.total),
        }
    }

    fn on_failure(&self, base: OnFailure) -> OnFailure {
        if self.no_rollback {
            OnFailure::Hold
        } else {
            base
        }
    }
}

/// Why the command line could not be turned into an invocation (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    #[error(transparent)]
    StrategyFile(#[from] StrategyFileError),
    #[error("reading strategy file {file}: {source}")]
    ReadStrategyFile {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("reading requests file {file}: {source}")]
    ReadRequests {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Requests(#[from] crate::gate::compare::RequestsError),
    #[error("{0}")]
    Traffic(String),
    #[error(transparent)]
    Notify(#[from] crate::exec::announce::NotifyUrlError),
    /// `completions` and `man` print without a cluster (`Cli::offline_output`).
    #[error("this command needs no cluster; it is printed by `Cli::offline_output`")]
    Offline,
}

fn source(
    statefulset: &str,
    images: &[ImageChange],
    manifest: Option<&PathBuf>,
) -> Result<TemplateSource, SettingsError> {
    Ok(match manifest {
        Some(path) => TemplateSource::Manifest(Box::new(Manifest::read(path, statefulset)?)),
        None => TemplateSource::Images(images.to_vec()),
    })
}

impl RunCommand {
    /// The `--notify` URLs: the command line's, and a strategy file's.
    fn notify(&self) -> Result<Vec<reqwest::Url>, SettingsError> {
        let run = match self {
            RunCommand::Rolling(a) => &a.run,
            RunCommand::Ramped(a) => &a.run,
            RunCommand::Canary(a) => &a.run,
            RunCommand::BlueGreen(a) => &a.run,
            RunCommand::Recreate(a) => &a.run,
            RunCommand::Shadow(a) => &a.run,
            RunCommand::Apply(a) => &a.run,
        };
        let from_file = match self {
            RunCommand::Apply(a) => {
                let file = a.file.display().to_string();
                let text = std::fs::read_to_string(&a.file).map_err(|source| {
                    SettingsError::ReadStrategyFile {
                        file: file.clone(),
                        source,
                    }
                })?;
                StrategyFile::parse(&file, &text)?.notify
            }
            _ => Vec::new(),
        };
        run.notify.urls(&from_file)
    }

    /// Checks the flags (and reads the files) into a request.
    pub fn resolve(&self) -> Result<RunRequest, SettingsError> {
        let request = |kind: StrategyKind,
                       target: &TargetArgs,
                       flags: StrategyFlags,
                       gates: &GateArgs,
                       run: &RunArgs|
         -> Result<RunRequest, SettingsError> {
            let config = StrategyConfig::new(
                kind,
                &flags,
                gates.apply_to(GateSpec::default()),
                run.timeouts(Timeouts::default()),
                run.on_failure(OnFailure::default()),
            )?;
            Ok(RunRequest {
                statefulset: target.statefulset.clone(),
                config,
                source: source(
                    &target.statefulset,
                    &target.images,
                    target.manifest.as_ref(),
                )?,
                wait_at_holds: run.wait,
                prometheus_url: gates.local.prometheus_url()?,
            })
        };
        match self {
            RunCommand::Rolling(a) => request(
                StrategyKind::Rolling,
                &a.target,
                StrategyFlags {
                    batch: a.batch,
                    pause: a.pause,
                    ..StrategyFlags::default()
                },
                &a.gates,
                &a.run,
            ),
            RunCommand::Ramped(a) => request(
                StrategyKind::Ramped,
                &a.target,
                StrategyFlags {
                    steps: a.steps.clone(),
                    pause: a.pause,
                    ..StrategyFlags::default()
                },
                &a.gates,
                &a.run,
            ),
            RunCommand::Canary(a) => request(
                StrategyKind::Canary,
                &a.target,
                StrategyFlags {
                    weight: a.weight,
                    steps: a.steps.clone(),
                    pause: a.pause,
                    traffic: a.route.traffic()?,
                    ..StrategyFlags::default()
                },
                &a.gates,
                &a.run,
            ),
            RunCommand::BlueGreen(a) => request(
                StrategyKind::BlueGreen,
                &a.target,
                StrategyFlags {
                    services: a.services.clone(),
                    auto_promote: a.auto_promote.then_some(true),
                    scale_down_delay: a.scale_down_delay,
                    data: a.data,
                    keep_data: a.keep_data.then_some(true),
                    traffic: a.route.traffic()?,
                    ..StrategyFlags::default()
                },
                &a.gates,
                &a.run,
            ),
            RunCommand::Recreate(a) => request(
                StrategyKind::Recreate,
                &a.target,
                StrategyFlags::default(),
                &a.gates,
                &a.run,
            ),
            RunCommand::Shadow(a) => request(
                StrategyKind::Shadow,
                &a.target,
                a.flags()?,
                &a.gates,
                &a.run,
            ),
            RunCommand::Apply(a) => {
                let file = a.file.display().to_string();
                let text = std::fs::read_to_string(&a.file).map_err(|source| {
                    SettingsError::ReadStrategyFile {
                        file: file.clone(),
                        source,
                    }
                })?;
                let cli = StrategyFlags {
                    batch: a.batch,
                    steps: a.steps.clone(),
                    weight: a.weight,
                    pause: a.pause,
                    ..StrategyFlags::default()
                };
                let config = StrategyFile::parse(&file, &text)?.into_config(
                    &file,
                    cli,
                    |gates, timeouts, on_failure| {
                        (
                            a.gates.apply_to(gates),
                            a.run.timeouts(timeouts),
                            a.run.on_failure(on_failure),
                        )
                    },
                )?;
                Ok(RunRequest {
                    statefulset: a.statefulset.clone(),
                    config,
                    source: source(&a.statefulset, &a.images, a.manifest.as_ref())?,
                    wait_at_holds: a.run.wait,
                    prometheus_url: a.gates.local.prometheus_url()?,
                })
            }
        }
    }
}

fn duration(d: HumanDuration) -> Duration {
    d.get()
}

impl Cli {
    /// Resolves everything the command needs, once.
    pub fn resolve(self) -> Result<Invocation, SettingsError> {
        let mut notify = Vec::new();
        let action = match self.command {
            Command::Run(run) => {
                let request = run.resolve()?;
                notify = run.notify()?;
                Action::Run(request)
            }
            Command::Plan { run } => Action::Plan(run.resolve()?),
            Command::Status {
                statefulset,
                watch,
                timeout,
                until,
            } => Action::Status {
                statefulset,
                watch,
                timeout: timeout.map(duration),
                until_hold: until == Some(Until::Hold),
            },
            Command::Promote {
                statefulset,
                full,
                wait,
                then,
                batch,
                steps,
                weight,
                pause,
                gates,
                notify: urls,
            } => {
                notify = urls.urls(&[])?;
                let gates = gates.gates()?;
                let then = match then {
                    Some(kind) if kind.uses_partition() => Some(StrategyParams::from_flags(
                        kind,
                        &StrategyFlags {
                            batch,
                            steps,
                            weight,
                            pause,
                            ..StrategyFlags::default()
                        },
                    )?),
                    Some(kind) => {
                        return Err(SettingsError::Strategy(StrategyError::FlagNotApplicable {
                            flag: "then",
                            strategy: kind,
                            hint: "after a shadow the real set is rolled with rolling, ramped or canary",
                        }))
                    }
                    None => None,
                };
                Action::Promote {
                    statefulset,
                    full,
                    wait,
                    then,
                    gates,
                }
            }
            Command::Pause { statefulset } => Action::Pause { statefulset },
            Command::Resume {
                statefulset,
                wait,
                gates,
                notify: urls,
            } => {
                notify = urls.urls(&[])?;
                Action::Resume {
                    statefulset,
                    wait,
                    gates: gates.gates()?,
                }
            }
            Command::Abort {
                statefulset,
                timeout,
                notify: urls,
            } => {
                notify = urls.urls(&[])?;
                Action::Abort {
                    statefulset,
                    timeout: duration(timeout),
                }
            }
            Command::Release {
                statefulset,
                timeout,
                notify: urls,
            } => {
                notify = urls.urls(&[])?;
                Action::Release {
                    statefulset,
                    timeout: duration(timeout),
                }
            }
            Command::Undo {
                statefulset,
                to_revision,
                timeout,
            } => Action::Undo {
                statefulset,
                to_revision,
                timeout: duration(timeout),
            },
            Command::History { statefulset } => Action::History { statefulset },
            Command::Completions { .. } | Command::Man => {
                return Err(SettingsError::Offline);
            }
        };
        Ok(Invocation {
            connection: Connection {
                kubeconfig: self.global.kubeconfig,
                context: self.global.context,
                namespace: self.global.namespace,
            },
            output: match self.global.output {
                OutputArg::Text => Output::Text,
                OutputArg::Json => Output::Json,
                OutputArg::Jsonl => Output::Jsonl,
            },
            quiet: self.global.quiet,
            notify,
            // GitHub Actions names the file a step's summary is appended to.
            step_summary: std::env::var_os("GITHUB_STEP_SUMMARY")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            action,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::strategy::{CanaryParams, StrategyParams};

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rollout").chain(args.iter().copied()))
    }

    fn resolve(args: &[&str]) -> Result<Invocation, String> {
        parse(args)
            .map_err(|e| e.to_string())?
            .resolve()
            .map_err(|e| e.to_string())
    }

    fn run_request(args: &[&str]) -> RunRequest {
        match resolve(args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .action
        {
            Action::Run(r) | Action::Plan(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn canary_with_gates_and_deadlines() {
        let r = run_request(&[
            "canary",
            "web",
            "--image",
            "app=registry.local:5000/app:v2",
            "--steps",
            "20,50,100",
            "--pause",
            "2m",
            "--probe-path",
            "/healthz",
            "--probe-via",
            "proxy",
            "--min-ready",
            "10s",
            "--gate-webhook",
            "http://127.0.0.1:9000/check",
            "--timeout",
            "5m",
            "--total-timeout",
            "1h",
            "--no-rollback",
            "-n",
            "shop",
        ]);
        assert_eq!(r.statefulset, "web");
        assert!(matches!(
            r.config.params,
            StrategyParams::Canary(CanaryParams::Steps { ref weights, pause: Some(PauseSpec::For(_)) }) if weights.len() == 3
        ));
        assert_eq!(r.config.gates.http.path, "/healthz");
        assert_eq!(r.config.gates.http.via, ProbeVia::Proxy);
        assert_eq!(r.config.gates.min_ready, Some(HumanDuration::from_secs(10)));
        assert!(r.config.gates.webhook.is_some());
        assert_eq!(r.config.timeouts.step, HumanDuration::from_secs(300));
        assert_eq!(
            r.config.timeouts.total,
            Some(HumanDuration::from_secs(3600))
        );
        assert_eq!(r.config.on_failure, OnFailure::Hold);
        match r.source {
            TemplateSource::Images(images) => {
                assert_eq!(images[0].container.as_deref(), Some("app"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn globals_go_anywhere_and_plan_nests_a_strategy() {
        let inv = resolve(&[
            "-n", "shop", "-o", "json", "plan", "rolling", "web", "--image", "app:v2", "--batch",
            "2",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inv.connection.namespace.as_deref(), Some("shop"));
        assert_eq!(inv.output, Output::Json);
        assert!(matches!(inv.action, Action::Plan(_)));
        let inv = resolve(&[
            "status",
            "web",
            "--watch",
            "--context",
            "dev",
            "--timeout",
            "90s",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(inv.connection.context.as_deref(), Some("dev"));
        assert!(matches!(
            inv.action,
            Action::Status { watch: true, timeout: Some(t), .. } if t == Duration::from_secs(90)
        ));
    }

    #[test]
    fn blue_green_through_a_route_takes_a_preview_header() {
        let bluegreen = |extra: &[&str]| {
            let mut args = vec!["bluegreen", "web", "--image", "app:v2"];
            args.extend_from_slice(extra);
            resolve(&args).map(|inv| match inv.action {
                Action::Run(r) | Action::Plan(r) => r.config.traffic,
                other => panic!("{other:?}"),
            })
        };
        let traffic = bluegreen(&[
            "--traffic",
            "gateway",
            "--route",
            "web",
            "--preview-header",
            "X-Preview=1",
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no traffic"));
        assert_eq!(traffic.route, "web");
        assert_eq!(
            traffic.canary_header.map(|h| h.to_string()).as_deref(),
            Some("X-Preview=1")
        );
        assert_eq!(bluegreen(&[]), Ok(None));
        let refused = bluegreen(&["--preview-header", "X-Preview=1"])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("--preview-header needs --traffic gateway --route"),
            "{refused}"
        );
        // A canary's header flag is a canary's.
        assert!(resolve(&[
            "bluegreen",
            "web",
            "--image",
            "app:v2",
            "--canary-header",
            "X=1"
        ])
        .is_err());
    }

    #[test]
    fn traffic_through_a_route_takes_its_flags_together() {
        let canary = |extra: &[&str]| {
            let mut args = vec!["canary", "web", "--image", "app:v2", "--weight", "5"];
            args.extend_from_slice(extra);
            resolve(&args).map(|inv| match inv.action {
                Action::Run(r) | Action::Plan(r) => r.config.traffic,
                other => panic!("{other:?}"),
            })
        };
        let traffic = canary(&[
            "--traffic",
            "gateway",
            "--route",
            "shop/web",
            "--canary-header",
            "X-Canary=1",
        ])
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no traffic"));
        assert_eq!(
            (traffic.namespace.as_deref(), traffic.route.as_str()),
            (Some("shop"), "web")
        );
        assert_eq!(
            traffic.canary_header.map(|h| h.to_string()).as_deref(),
            Some("X-Canary=1")
        );
        assert_eq!(canary(&["--traffic", "pods"]), Ok(None));
        let cases: &[(&[&str], &str)] = &[
            (&["--traffic", "gateway"], "needs --route"),
            (&["--route", "web"], "needs --traffic gateway"),
            (
                &["--canary-header", "X-A=1"],
                "needs --traffic gateway --route",
            ),
            (
                &["--traffic", "gateway", "--route", "Web"],
                "not an HTTPRoute name",
            ),
            (
                &[
                    "--traffic",
                    "gateway",
                    "--route",
                    "web",
                    "--canary-header",
                    "X-A",
                ],
                "NAME=VALUE",
            ),
            (&["--traffic", "mesh"], "mesh"),
        ];
        for (extra, message) in cases {
            match canary(extra) {
                Err(e) => assert!(e.contains(message), "{extra:?}: {e}"),
                Ok(t) => panic!("{extra:?} went through: {t:?}"),
            }
        }
        let rolling = resolve(&[
            "rolling",
            "web",
            "--image",
            "app:v2",
            "--traffic",
            "gateway",
        ]);
        assert!(rolling.is_err(), "only canary takes --traffic");
    }

    #[test]
    fn a_shadow_mirrored_through_a_route_takes_its_flags_together() {
        let shadow = |extra: &[&str]| {
            let mut args = vec!["shadow", "web", "--image", "app:v2"];
            args.extend_from_slice(extra);
            resolve(&args).map(|inv| match inv.action {
                Action::Run(r) | Action::Plan(r) => r.config.traffic,
                other => panic!("{other:?}"),
            })
        };
        for flags in [
            &[
                "--mirror",
                "gateway",
                "--route",
                "web",
                "--mirror-percent",
                "10",
            ][..],
            &[
                "--traffic",
                "gateway",
                "--route",
                "web",
                "--mirror-percent",
                "10",
            ][..],
        ] {
            let traffic = shadow(flags)
                .unwrap_or_else(|e| panic!("{e}"))
                .unwrap_or_else(|| panic!("no traffic"));
            assert_eq!(traffic.route, "web");
            assert_eq!(traffic.mirror_percent.map(|p| p.get()), Some(10));
        }
        assert_eq!(shadow(&["--mirror", "replay"]), Ok(None));
        let cases: &[(&[&str], &str)] = &[
            (&["--mirror", "gateway"], "needs --route"),
            (&["--route", "web"], "needs --mirror gateway"),
            (&["--mirror-percent", "5"], "needs --mirror gateway --route"),
            (
                &[
                    "--mirror",
                    "replay",
                    "--traffic",
                    "gateway",
                    "--route",
                    "web",
                ],
                "disagree",
            ),
            (
                &[
                    "--mirror",
                    "gateway",
                    "--route",
                    "web",
                    "--mirror-percent",
                    "101",
                ],
                "101",
            ),
        ];
        for (extra, message) in cases {
            match shadow(extra) {
                Err(e) => assert!(e.contains(message), "{extra:?}: {e}"),
                Ok(t) => panic!("{extra:?} went through: {t:?}"),
            }
        }
    }

    #[test]
    fn bad_input_is_refused_before_anything_runs() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["canary", "web", "--image", "app:v2", "--weight", "0"],
                "no pod",
            ),
            (
                &["canary", "web", "--image", "app:v2", "--weight", "150"],
                "150",
            ),
            (&["canary", "web", "--image", "app:v2"], "--weight W"),
            (
                &[
                    "canary", "web", "--image", "app:v2", "--weight", "20", "--steps", "50,100",
                ],
                "cannot be used together",
            ),
            (
                &[
                    "rolling",
                    "web",
                    "--image",
                    "app:v2",
                    "--pause",
                    "5 parsecs",
                ],
                "5 parsecs",
            ),
            (
                &["rolling", "web", "--image", "app:v2", "--timeout", "30"],
                "30",
            ),
            (&["rolling", "web", "--image", "App:V2"], "lowercase"),
            (&["rolling", "web", "--image", "app:"], "no tag"),
            (&["rolling", "web"], "--image"),
            (
                &["rolling", "web", "--image", "a:1", "-f", "x.yaml"],
                "cannot be used with",
            ),
            (
                &["ramped", "web", "--image", "a:1", "--batch", "2"],
                "--batch",
            ),
            (
                &["rolling", "web", "--image", "a:1", "--probe-status", "700"],
                "700",
            ),
            (
                &[
                    "rolling",
                    "web",
                    "--image",
                    "a:1",
                    "--min-success-ratio",
                    "1.5",
                ],
                "1.5",
            ),
            (
                &[
                    "rolling",
                    "web",
                    "--image",
                    "a:1",
                    "--gate-webhook",
                    "ftp://x",
                ],
                "http://",
            ),
            (
                &["rolling", "web", "-f", "/nonexistent/sts.yaml"],
                "/nonexistent/sts.yaml",
            ),
            (
                &[
                    "apply",
                    "web",
                    "-f",
                    "/nonexistent/s.yaml",
                    "--image",
                    "a:1",
                ],
                "/nonexistent/s.yaml",
            ),
            (&["undo", "web", "--to-revision", "x"], "x"),
            (
                &["rolling", "", "--image", "a:1"],
                "StatefulSet name is empty",
            ),
            (
                &["rolling", "Web", "--image", "a:1"],
                "uppercase letter `W`",
            ),
            (&["status", "web_1"], "character `_`"),
            (
                &["rolling", "web", "--image", "a:1", "--notify", "ftp://x/y"],
                "--notify \"ftp://x/y\" is not an http(s) URL",
            ),
            (&["abort", "web", "--notify", "hooks"], "--notify \"hooks\""),
            (&["status", "web", "--until", "hold"], "--watch"),
            (&["abort", ""], "StatefulSet name is empty"),
            (&["release", "web_1"], "character `_`"),
            (
                &["rolling", "web", "--image", "a:1", "-n", ""],
                "namespace is empty",
            ),
            (&["status", "web", "-n", "my.ns"], "character `.`"),
            (
                &["rolling", "web", "--image", "a:1", "--gate-command", ""],
                "no command to run",
            ),
            (
                &["rolling", "web", "--image", "a:1", "--gate-command", "  "],
                "would pass every gate",
            ),
            (
                &["shadow", "web", "--image", "a:1", "--min-samples", "0"],
                "--min-samples 0",
            ),
            (
                &[
                    "shadow",
                    "web",
                    "--image",
                    "a:1",
                    "--compare-bodies",
                    "--ignore-lines",
                    "([",
                ],
                "--ignore-lines `([` is not a valid regular expression",
            ),
        ];
        for (args, needle) in cases {
            let err = resolve(args).expect_err(&format!("{args:?}"));
            assert!(err.contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn strategy_files_are_overridden_by_flags() {
        let dir = std::env::temp_dir().join(format!("rollout-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("canary.yaml");
        std::fs::write(
            &file,
            "strategy: canary\nsteps: [20, 50, 100]\npause: 2m\ngates:\n  http:\n    path: /ready\ntimeouts:\n  step: 3m\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let path = file.display().to_string();
        let r = run_request(&[
            "apply",
            "web",
            "-f",
            &path,
            "--image",
            "a:2",
            "--weight",
            "30",
            "--probe-window",
            "20s",
        ]);
        assert!(matches!(
            r.config.params,
            StrategyParams::Canary(CanaryParams::Hold { weight, .. }) if weight.get() == 30
        ));
        assert_eq!(r.config.gates.http.path, "/ready");
        assert_eq!(r.config.gates.http.window, HumanDuration::from_secs(20));
        assert_eq!(r.config.timeouts.step, HumanDuration::from_secs(180));
        // Notification URLs: the file's and the command line's, never in the record's config.
        std::fs::write(
            &file,
            "strategy: canary\nweight: 20\nnotify: [\"http://127.0.0.1:9/file\"]\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let inv = resolve(&[
            "apply",
            "web",
            "-f",
            &path,
            "--image",
            "a:2",
            "--notify",
            "https://hooks.test/cli",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let urls: Vec<String> = inv.notify.iter().map(|u| u.to_string()).collect();
        assert_eq!(urls, ["https://hooks.test/cli", "http://127.0.0.1:9/file"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn completions_and_the_man_page_come_from_the_definitions() {
        let bash = parse(&["completions", "bash"])
            .ok()
            .and_then(|c| c.offline_output())
            .and_then(Result::ok)
            .unwrap_or_default();
        for name in [
            "canary",
            "bluegreen",
            "promote",
            "status",
            "--notify",
            "--until",
        ] {
            assert!(bash.contains(name), "{name}");
        }
        let man = parse(&["man"])
            .ok()
            .and_then(|c| c.offline_output())
            .and_then(Result::ok)
            .unwrap_or_default();
        assert!(
            man.starts_with(".ie") || man.contains(".TH rollout"),
            "{man}"
        );
        assert!(man.contains("canary"), "{man}");
        assert!(parse(&["status", "web"])
            .ok()
            .and_then(|c| c.offline_output())
            .is_none());
        assert!(VERSION.starts_with(env!("CARGO_PKG_VERSION")) && VERSION.contains("(commit "));
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
