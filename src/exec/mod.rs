//! The executor: the only code that talks to the cluster. It reads the StatefulSet, asks the
//! pure core (`crate::strategy`) for a plan, and runs it: writes the rollout record with each
//! mutation under a resourceVersion precondition, waits on watches (never sleep loops) for the
//! pods a step changed, gates them, and rolls back by itself when a gate fails or a deadline
//! passes. A Lease per StatefulSet keeps two runs apart.
//!
//! - [`cluster`]: the executor's side of the seam over the API server (`crate::cluster`);
//! - [`patch`]: the writes as values (strategic merge patches);
//! - [`lease`]: the lock;
//! - [`gates`]: gate targets and the seam over `crate::gate::probe`;
//! - [`runner`]: the run loop (steps, pauses, rollback);
//! - [`commands`]: one function per CLI command;
//! - [`report`]: `status` and `history` as data and text;
//! - [`progress`]: human progress lines on stderr ([`live`]: their live view in a terminal);
//! - [`announce`]: Kubernetes Events and `--notify` messages of the rollout's story.

pub mod announce;
pub mod cluster;
pub mod commands;
pub mod gates;
pub mod lease;
pub mod live;
pub mod manifest;
pub mod metrics;
pub mod patch;
pub mod progress;
pub mod report;
pub mod runner;
pub mod summary;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod route_tests;
#[cfg(test)]
mod run_tests;

use crate::model::exit::ExitCode;
use crate::model::image::ApplyImageError;
use crate::model::state::StateError;
use crate::strategy::{ObserveError, PlanError, TransitionError};

pub use cluster::{ApiError, Cluster, KubeCluster};
pub use commands::Context;
pub use gates::{GateRunner, ProbeGates};
pub use progress::Progress;

/// Everything that stops a command, each mapped to one of the documented exit codes.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("connecting to the cluster: {message}")]
    Connect { message: String },
    #[error("{message}; nothing was changed: give a readable kubeconfig with --kubeconfig FILE or KUBECONFIG, and a context it has with --context (`kubectl config get-contexts` lists them)")]
    Kubeconfig { message: String },
    #[error("StatefulSet {name} not found in namespace {namespace}{other}; check the name, and -n/--namespace or --context (`kubectl get statefulsets -n {namespace}` lists them)")]
    StatefulSetNotFound {
        namespace: String,
        name: String,
        /// `, but a Deployment named so exists: ...` when that explains the mistake.
        other: String,
    },
    #[error("StatefulSet {name} was deleted while rollout worked on it")]
    StatefulSetDeleted { name: String },
    #[error("{action} {object}: {source}")]
    Api {
        action: &'static str,
        object: String,
        #[source]
        source: ApiError,
    },
    #[error(transparent)]
    Images(#[from] ApplyImageError),
    #[error(transparent)]
    GatePort(#[from] gates::GatePortError),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error("the new pod template for StatefulSet {statefulset} was refused by the API server (nothing was changed): {message}")]
    TemplateRefused {
        statefulset: String,
        message: String,
    },
    #[error(
        "the metric gates of StatefulSet {statefulset} cannot run (nothing was changed): {message}"
    )]
    MetricGates {
        statefulset: String,
        message: String,
    },
    #[error("StatefulSet {statefulset} cannot be rolled now: {reason}")]
    NotRollable { statefulset: String, reason: String },
    #[error("StatefulSet {statefulset} has a rollout in progress ({description}); continue it with `rollout resume {statefulset}` or `rollout promote {statefulset}`, or stop it with `rollout abort {statefulset}`")]
    InProgress {
        statefulset: String,
        description: String,
    },
    #[error("StatefulSet {statefulset} has no rollout to {action}; `rollout status {statefulset}` shows what it runs")]
    NoRollout {
        statefulset: String,
        action: &'static str,
    },
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Record(#[from] StateError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error("stopped: this run lost the lock on StatefulSet {statefulset} ({reason}); nothing more was changed. `rollout status {statefulset}` shows where the rollout stands")]
    LeaseLost { statefulset: String, reason: String },
    #[error("the rollout record on StatefulSet {statefulset} was removed by someone else; stopped without changing anything more")]
    RecordRemoved { statefulset: String },
    #[error("the rollout of StatefulSet {statefulset} stopped, {what} (a `kubectl apply`, `helm upgrade`, GitOps sync or `kubectl patch`?); {advice}")]
    Drifted {
        statefulset: String,
        what: String,
        advice: String,
    },
    #[error("StatefulSet {statefulset} kept changing under this run ({attempts} conflicting writes in a row); stopped. `rollout resume {statefulset}` continues")]
    TooManyConflicts { statefulset: String, attempts: u32 },
    #[error("the watch on StatefulSet {statefulset} ended unexpectedly")]
    WatchEnded { statefulset: String },
    #[error("StatefulSet {statefulset} {what}")]
    Revision { statefulset: String, what: String },
    #[error("{what} did not finish within {timeout}")]
    Timeout { what: String, timeout: String },
    #[error("writing the result: {0}")]
    Output(String),
    #[error("{source}\nthe rollout of {statefulset} stopped there{during}; its record keeps where it stopped: once that is fixed, `rollout resume {statefulset}` {next}, and `rollout status {statefulset}` shows where it stands")]
    Stopped {
        statefulset: String,
        /// ` in the middle of its rollback`, or empty.
        during: &'static str,
        /// What `resume` would do.
        next: &'static str,
        #[source]
        source: Box<ExecError>,
    },
    #[error("the rollout of {statefulset} gates on {gates}, which only the command line that runs it may give (the record on the StatefulSet is data, not a command to run); nothing was changed. Give {them} again: `rollout {action} {statefulset} {flags}`, or go back with `rollout abort {statefulset}`")]
    GatesNotGiven {
        statefulset: String,
        gates: String,
        them: &'static str,
        action: &'static str,
        flags: String,
    },
    #[error("interrupted: the rollout of {statefulset} stays where it is; `rollout resume {statefulset}` continues it, `rollout abort {statefulset}` goes back")]
    Interrupted { statefulset: String, exit: u8 },
}

impl ExecError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            // A run that stopped after it began to write is never "bad input, nothing was
            // changed" (2), whatever stopped it.
            ExecError::Stopped { source, .. } => match source.exit_code() {
                ExitCode::BadInput => ExitCode::ClusterError,
                code => code,
            },
            ExecError::StatefulSetNotFound { .. }
            | ExecError::Kubeconfig { .. }
            | ExecError::Images(_)
            | ExecError::GatePort(_)
            | ExecError::MetricGates { .. }
            | ExecError::Manifest(_)
            | ExecError::TemplateRefused { .. }
            | ExecError::NotRollable { .. }
            | ExecError::NoRollout { .. }
            | ExecError::Transition(_)
            | ExecError::GatesNotGiven { .. }
            | ExecError::Plan(_)
            | ExecError::Revision { .. } => ExitCode::BadInput,
            ExecError::InProgress { .. } | ExecError::Drifted { .. } => ExitCode::Locked,
            ExecError::Lease(lease::LeaseError::Held { .. }) => ExitCode::Locked,
            ExecError::Timeout { .. } => ExitCode::TimedOut,
            ExecError::Connect { .. }
            | ExecError::StatefulSetDeleted { .. }
            | ExecError::Api { .. }
            | ExecError::Record(_)
            | ExecError::Observe(_)
            | ExecError::Lease(_)
            | ExecError::LeaseLost { .. }
            | ExecError::RecordRemoved { .. }
            | ExecError::TooManyConflicts { .. }
            | ExecError::WatchEnded { .. }
            | ExecError::Output(_)
            | ExecError::Interrupted { .. } => ExitCode::ClusterError,
        }
    }

    /// The process exit status: the documented code, or 130/143 after SIGINT/SIGTERM as shells
    /// report signals.
    pub fn process_exit(&self) -> u8 {
        match self {
            ExecError::Interrupted { exit, .. } => *exit,
            other => other.exit_code().code(),
        }
    }

    pub(crate) fn api(action: &'static str, object: impl Into<String>, source: ApiError) -> Self {
        ExecError::Api {
            action,
            object: object.into(),
            source,
        }
    }
}

/// Where the cluster is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Connection {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    pub namespace: Option<String>,
}

/// What a command does, with its settings resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Run(commands::RunRequest),
    Plan(commands::RunRequest),
    Status {
        statefulset: String,
        watch: bool,
        timeout: Option<std::time::Duration>,
        /// Also stop where the rollout waits for a person.
        until_hold: bool,
    },
    Promote {
        statefulset: String,
        full: bool,
        wait: bool,
        /// `--then`: the partition strategy that rolls the real set after a shadow.
        then: Option<crate::model::strategy::StrategyParams>,
        /// The command and webhook gates this command line gives for the rest of the run.
        gates: crate::model::gate::LocalGates,
    },
    Pause {
        statefulset: String,
    },
    Resume {
        statefulset: String,
        wait: bool,
        gates: crate::model::gate::LocalGates,
    },
    Abort {
        statefulset: String,
        timeout: std::time::Duration,
    },
    Release {
        statefulset: String,
        timeout: std::time::Duration,
    },
    Undo {
        statefulset: String,
        to_revision: Option<i64>,
        timeout: std::time::Duration,
    },
    History {
        statefulset: String,
    },
}

/// A whole command line, resolved (`crate::cli` builds it).
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub connection: Connection,
    pub output: commands::Output,
    pub quiet: bool,
    /// Where to post the rollout's start, holds, success, failure and rollback.
    pub notify: Vec<reqwest::Url>,
    /// A Markdown file to append a summary of the rollout to (GitHub Actions'
    /// `$GITHUB_STEP_SUMMARY`).
    pub step_summary: Option<std::path::PathBuf>,
    pub action: Action,
}

/// How long making a connection to the API server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a response may stay silent: above the API server's own 60 s limit for a request
/// and above the length of one watch request.
const READ_TIMEOUT: std::time::Duration =
    std::time::Duration::from_secs(crate::cluster::WATCH_TIMEOUT_SECS as u64 + 20);

/// A client and the namespace to work in, from the kubeconfig (or the in-cluster account).
pub async fn connect(connection: &Connection) -> Result<(kube::Client, String), ExecError> {
    use kube::config::{Config, KubeConfigOptions, Kubeconfig};
    let connect_error = |what: &str, e: &dyn std::fmt::Display| ExecError::Connect {
        message: format!("{what}: {e}"),
    };
    // A kubeconfig that cannot be read, parsed or has no such context is bad input (exit 2),
    // not a cluster that did not answer.
    let config_error = |what: &str, e: &dyn std::fmt::Display| ExecError::Kubeconfig {
        message: format!("{what}: {e}"),
    };
    let options = KubeConfigOptions {
        context: connection.context.clone(),
        cluster: None,
        user: None,
    };
    let mut config = match &connection.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| config_error(&format!("reading kubeconfig {}", path.display()), &e))?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| config_error(&format!("loading kubeconfig {}", path.display()), &e))?
        }
        None if connection.context.is_some() => Config::from_kubeconfig(&options)
            .await
            .map_err(|e| config_error("loading the kubeconfig", &e))?,
        None => Config::infer().await.map_err(|e| {
            config_error(
                "no kubeconfig found (give --kubeconfig or set KUBECONFIG) and not running in a cluster",
                &e,
            )
        })?,
    };
    // rollout retries API faults itself, within each step's deadline. The client's own retry of
    // 429/503/504 (up to 15 times, minutes of back-off) would wait past those deadlines unseen,
    // and would resend a gate's probe through the pod proxy, whose 503 is the API server saying
    // it could not reach the pod: an answer to judge, not a fault to hide.
    config.default_retry = false;
    // No request hangs: a connection is made within CONNECT_TIMEOUT, and a response that stops
    // arriving for READ_TIMEOUT is given up (and retried by the seam as a connection fault).
    // Watches end on the server's side before that (`cluster::WATCH_TIMEOUT_SECS`).
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(READ_TIMEOUT);
    config.reset_reader_on_write = true;
    let namespace = connection
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client =
        kube::Client::try_from(config).map_err(|e| connect_error("creating the client", &e))?;
    Ok((client, namespace))
}

/// Runs one command against the real cluster.
pub async fn execute(invocation: Invocation) -> Result<crate::model::ExitCode, ExecError> {
    let (client, namespace) = connect(&invocation.connection).await?;
    let cluster = KubeCluster::new(client, &namespace);
    let me = lease::Identity::current();
    let ctx = Context {
        announce: announce::Announcer::new(
            &cluster,
            &me.to_string(),
            invocation.notify,
            (invocation.output == commands::Output::Jsonl).then(progress::Out::stdout),
        ),
        step_summary: invocation.step_summary,
        cluster: cluster.clone(),
        gates: ProbeGates::new(cluster),
        progress: Progress::stderr(invocation.quiet),
        out: progress::Out::stdout(),
        output: invocation.output,
        me,
        lease_duration: lease::LEASE_DURATION,
    };
    let result = dispatch(&ctx, invocation.action).await;
    // What is still being told (Events, notifications) gets a short, bounded while.
    ctx.announce.drain(announce::DRAIN_TIMEOUT).await;
    result
}

/// Runs one command with a given context (real or fake cluster).
pub async fn dispatch<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    action: Action,
) -> Result<crate::model::ExitCode, ExecError> {
    match action {
        Action::Run(request) => commands::run(ctx, &request).await,
        Action::Plan(request) => commands::plan(ctx, &request).await,
        Action::Status {
            statefulset,
            watch,
            timeout,
            until_hold,
        } => commands::status(ctx, &statefulset, watch, timeout, until_hold).await,
        Action::Promote {
            statefulset,
            full,
            wait,
            then,
            gates,
        } => commands::promote(ctx, &statefulset, full, wait, then, &gates).await,
        Action::Pause { statefulset } => commands::pause(ctx, &statefulset).await,
        Action::Resume {
            statefulset,
            wait,
            gates,
        } => commands::resume(ctx, &statefulset, wait, &gates).await,
        Action::Abort {
            statefulset,
            timeout,
        } => commands::abort(ctx, &statefulset, timeout).await,
        Action::Release {
            statefulset,
            timeout,
        } => commands::release(ctx, &statefulset, timeout).await,
        Action::Undo {
            statefulset,
            to_revision,
            timeout,
        } => commands::undo(ctx, &statefulset, to_revision, timeout).await,
        Action::History { statefulset } => commands::show_history(ctx, &statefulset).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> ExecError {
        ExecError::api(
            "deleting StatefulSet",
            "web-bg1",
            ApiError::Refused {
                code: 403,
                reason: "Forbidden".into(),
                message: r#"statefulsets.apps "web-bg1" is forbidden: User "u" cannot delete resource "statefulsets" in API group "apps" in the namespace "shop""#.into(),
            },
        )
    }

    #[test]
    fn a_run_stopped_by_a_refusal_says_what_continues_it() {
        let stopped = ExecError::Stopped {
            statefulset: "web".into(),
            during: " in the middle of its rollback",
            next: "finishes the rollback",
            source: Box::new(refused()),
        };
        let text = stopped.to_string();
        for needle in [
            "grant verb `delete` on resource `statefulsets`",
            "stopped there in the middle of its rollback",
            "`rollout resume web` finishes the rollback",
            "`rollout status web`",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        assert_eq!(stopped.exit_code(), refused().exit_code());
        assert_eq!(stopped.exit_code(), ExitCode::ClusterError);
    }

    #[test]
    fn an_unreadable_kubeconfig_is_bad_input() {
        let e = ExecError::Kubeconfig {
            message: "reading kubeconfig /nope: No such file".into(),
        };
        assert_eq!(e.exit_code(), ExitCode::BadInput);
        assert!(e.to_string().contains("--kubeconfig FILE"), "{e}");
    }
}
