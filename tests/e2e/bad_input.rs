//! Bad invocations, end to end: each runs the built `rollout` against a namespace with the time
//! app, a Deployment, an `OnDelete` StatefulSet and a set scaled to 0, and must exit 2 with a
//! message that names what was wrong, and leave the cluster exactly as it was: every
//! StatefulSet's generation and `rollout.dev/state` annotation unchanged, and no new
//! StatefulSet, PVC, Service or Lease.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Service};
use kube::api::{ListParams, PostParams};
use rollout::model::exit::ExitCode;

use crate::support::{kubeconfig, rollout_command, App, Run, RUN_LIMIT, STS};

/// What must not change: each StatefulSet's generation and record, and the names of the
/// StatefulSets, PVCs, Services and Leases in the namespace.
#[derive(Debug, PartialEq)]
struct Snapshot {
    sets: BTreeMap<String, (Option<i64>, Option<String>)>,
    claims: Vec<String>,
    services: Vec<String>,
    leases: Vec<String>,
}

async fn snapshot(app: &App) -> anyhow::Result<Snapshot> {
    let lp = ListParams::default();
    let sets = app
        .ns
        .api::<StatefulSet>()
        .list(&lp)
        .await?
        .items
        .into_iter()
        .map(|s| {
            let record = s
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("rollout.dev/state"))
                .cloned();
            (
                s.metadata.name.unwrap_or_default(),
                (s.metadata.generation, record),
            )
        })
        .collect();
    let names = |items: Vec<kube::api::ObjectMeta>| {
        let mut names: Vec<String> = items.into_iter().filter_map(|m| m.name).collect();
        names.sort();
        names
    };
    Ok(Snapshot {
        sets,
        claims: names(
            app.ns
                .api::<PersistentVolumeClaim>()
                .list(&lp)
                .await?
                .items
                .into_iter()
                .map(|o| o.metadata)
                .collect(),
        ),
        services: names(
            app.ns
                .api::<Service>()
                .list(&lp)
                .await?
                .items
                .into_iter()
                .map(|o| o.metadata)
                .collect(),
        ),
        leases: names(
            app.ns
                .api::<Lease>()
                .list(&lp)
                .await?
                .items
                .into_iter()
                .map(|o| o.metadata)
                .collect(),
        ),
    })
}

/// How a case runs `rollout`.
enum How {
    /// `rollout ARGS -n NS` with the devcluster's kubeconfig.
    InNamespace,
    /// `rollout ARGS` as given (the case sets -n or the kubeconfig itself).
    Raw,
    /// `rollout ARGS -n NS` with KUBECONFIG set to this file.
    KubeconfigEnv(PathBuf),
}

struct Case {
    args: Vec<String>,
    how: How,
    /// A part of the message on stderr that names what was wrong.
    needle: String,
}

fn case(args: &[&str], needle: &str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        how: How::InNamespace,
        needle: needle.to_string(),
    }
}

fn raw(args: &[&str], needle: &str) -> Case {
    Case {
        how: How::Raw,
        ..case(args, needle)
    }
}

async fn run_case(app: &App, case: &Case) -> anyhow::Result<Run> {
    let args: Vec<&str> = case.args.iter().map(String::as_str).collect();
    let mut command = match &case.how {
        How::InNamespace => rollout_command(app.name(), &args),
        How::KubeconfigEnv(file) => {
            let mut c = rollout_command(app.name(), &args);
            c.env("KUBECONFIG", file);
            c
        }
        How::Raw => {
            let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollout"));
            c.args(&args)
                .env("KUBECONFIG", kubeconfig())
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            c
        }
    };
    let output = tokio::time::timeout(RUN_LIMIT, command.output()).await??;
    Ok(Run {
        args: args.join(" "),
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// A file in the test's own directory.
fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 0
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers: [{name: app, image: 'time-app:v1'}]
";

/// A StatefulSet at 0 replicas named `name`, with `strategy` as its update strategy.
fn empty_set(name: &str, strategy: &str) -> String {
    format!(
        "\
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {name}
spec:
  serviceName: {name}
  replicas: 0
  updateStrategy: {{type: {strategy}}}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: app
          image: time-app:v1
          ports: [{{name: http, containerPort: 8080}}]
"
    )
}

#[tokio::test]
async fn bad_invocations_exit_2_name_the_problem_and_change_nothing() -> anyhow::Result<()> {
    let app = App::deploy("bad-input", 2, false).await?;
    let ns = app.name().to_string();
    let deployment: Deployment = serde_yaml_ng::from_str(DEPLOYMENT)?;
    app.ns
        .api::<Deployment>()
        .create(&PostParams::default(), &deployment)
        .await?;
    app.ns.apply_yaml(&empty_set("ondel", "OnDelete")).await?;
    app.ns
        .apply_yaml(&empty_set("zero", "RollingUpdate"))
        .await?;

    let dir = std::env::temp_dir().join(format!("{ns}-files"));
    std::fs::create_dir_all(&dir)?;
    let d = dir.as_path();
    let deploy_yaml = write(d, "deploy.yaml", DEPLOYMENT);
    let other_set = write(d, "other.yaml", &empty_set("other", "RollingUpdate"));
    let broken = write(d, "broken.yaml", "spec: [unclosed\n  - : :\n");
    let missing = d.join("missing.yaml").display().to_string();
    let unknown_field = write(d, "unknown.yaml", "strategy: rolling\nbogus: 1\n");
    let unknown_strategy = write(d, "teleport.yaml", "strategy: teleport\n");
    let rolling_file = write(d, "rolling.yaml", "strategy: rolling\nbatch: 1\n");
    let bad_gate_file = write(
        d,
        "badgate.yaml",
        "strategy: rolling\ngates:\n  command:\n    run: []\n",
    );
    let requests_no_path = write(d, "noreq.txt", "GET /\nFETCH\n");
    let requests_empty = write(d, "empty.txt", "# only a comment\n");
    let broken_kubeconfig = write(d, "kubeconfig-broken", "apiVersion: [v1\n  clusters: :\n");
    let missing_kubeconfig = d.join("no-kubeconfig").display().to_string();
    let v2 = "time-app:v2";

    let mut cases = vec![
        // Flags: unknown, conflicting, missing values.
        case(&["rolling", STS, "--image", v2, "--bogus"], "'--bogus'"),
        case(
            &["rolling", STS, "--image"],
            "a value is required for '--image",
        ),
        case(
            &["rolling", STS, "--image", v2, "--timeout"],
            "a value is required for '--timeout",
        ),
        case(&["rolling", STS], "--image"),
        case(&["rolling"], "<STATEFULSET>"),
        case(&["teleport", STS], "unrecognized subcommand 'teleport'"),
        case(
            &["rolling", STS, "--image", v2, "-f", &rolling_file],
            "cannot be used with",
        ),
        case(
            &[
                "canary", STS, "--image", v2, "--weight", "20", "--steps", "50,100",
            ],
            "cannot be used together",
        ),
        case(&["canary", STS, "--image", v2], "--weight W"),
        case(&["ramped", STS, "--image", v2, "--batch", "1"], "--batch"),
        case(
            &["bluegreen", STS, "--image", v2, "--batch", "1"],
            "'--batch'",
        ),
        case(&["status", STS, "--timeout", "5m"], "--watch"),
        case(
            &["promote", STS, "--full", "--then", "rolling"],
            "cannot be used with",
        ),
        case(&["promote", STS, "--then", "recreate"], "--then"),
        case(&["promote", STS, "--batch", "2"], "--then"),
        case(
            &[
                "rolling",
                STS,
                "--image",
                v2,
                "--gate-command-timeout",
                "5s",
            ],
            "--gate-command",
        ),
        // Durations.
        case(
            &["rolling", STS, "--image", v2, "--timeout", "0s"],
            "more than 0s",
        ),
        case(&["rolling", STS, "--image", v2, "--timeout", "30"], "'30'"),
        case(
            &["rolling", STS, "--image", v2, "--pause", "5 parsecs"],
            "5 parsecs",
        ),
        case(
            &["rolling", STS, "--image", v2, "--total-timeout", "0s"],
            "0s",
        ),
        case(
            &["rolling", STS, "--image", v2, "--probe-window", "0s"],
            "window must be more than 0s",
        ),
        case(
            &[
                "rolling",
                STS,
                "--image",
                v2,
                "--probe-interval",
                "20s",
                "--probe-window",
                "5s",
            ],
            "shorter than the probe interval",
        ),
        case(&["abort", STS, "--timeout", "soon"], "soon"),
        case(
            &["bluegreen", STS, "--image", v2, "--scale-down-delay", "abc"],
            "abc",
        ),
        // Weights and steps.
        case(&["canary", STS, "--image", v2, "--weight", "0"], "no pod"),
        case(
            &["canary", STS, "--image", v2, "--weight", "100"],
            "every pod",
        ),
        case(
            &["canary", STS, "--image", v2, "--weight", "101"],
            "more than 100%",
        ),
        case(
            &["canary", STS, "--image", v2, "--weight", "abc"],
            "not a percentage",
        ),
        case(
            &["canary", STS, "--image", v2, "--steps", "50,20,100"],
            "must increase",
        ),
        case(
            &["canary", STS, "--image", v2, "--steps", "50,50"],
            "repeats 50",
        ),
        case(
            &["canary", STS, "--image", v2, "--steps", "0,50"],
            "at least one pod",
        ),
        case(
            &["ramped", STS, "--image", v2, "--steps", "150%"],
            "above 100%",
        ),
        // Batches.
        case(
            &["rolling", STS, "--image", v2, "--batch", "0"],
            "at least one pod",
        ),
        case(
            &["rolling", STS, "--image", v2, "--batch", "150%"],
            "cannot exceed 100%",
        ),
        case(
            &["rolling", STS, "--image", v2, "--batch", "3"],
            "--batch 3 is more than its 2 replicas",
        ),
        case(
            &["plan", "rolling", STS, "--image", v2, "--batch", "5"],
            "--batch 5 is more than its 2 replicas",
        ),
        // Images.
        case(&["rolling", STS, "--image", ""], "image reference is empty"),
        case(
            &["rolling", STS, "--image", "time app:v2"],
            "contains whitespace",
        ),
        case(&["rolling", STS, "--image", "Time-App:V2"], "lowercase"),
        case(&["rolling", STS, "--image", "time-app:"], "no tag"),
        case(
            &["rolling", STS, "--image", "nosuch=time-app:v2"],
            "no container `nosuch`",
        ),
        // Manifests.
        case(&["rolling", STS, "-f", &deploy_yaml], "found: Deployment"),
        case(
            &["rolling", STS, "-f", &other_set],
            "no StatefulSet named time-app",
        ),
        case(&["rolling", STS, "-f", &broken], "not valid YAML"),
        case(&["rolling", STS, "-f", &missing], &missing),
        // Names.
        case(&["rolling", "", "--image", v2], "StatefulSet name is empty"),
        case(
            &["rolling", "Time-App", "--image", v2],
            "uppercase letter `T`",
        ),
        case(&["rolling", "time_app", "--image", v2], "character `_`"),
        case(&["status", ""], "StatefulSet name is empty"),
        case(
            &["rolling", "nosuch", "--image", v2],
            &format!("StatefulSet nosuch not found in namespace {ns}"),
        ),
        case(
            &["rolling", "web", "--image", v2],
            "a Deployment web is there",
        ),
        case(&["abort", "nosuch"], "StatefulSet nosuch not found"),
        // Namespaces.
        raw(
            &["rolling", STS, "--image", v2, "-n", ""],
            "namespace is empty",
        ),
        raw(
            &["rolling", STS, "--image", v2, "-n", "Bad_NS"],
            "uppercase letter `B`",
        ),
        raw(&["status", STS, "-n", "a.b"], "character `.`"),
        raw(
            &["rolling", STS, "--image", v2, "-n", "no-such-ns-h5"],
            "not found in namespace no-such-ns-h5",
        ),
        // Strategy files and request files.
        case(
            &["apply", STS, "-f", &missing, "--image", v2],
            "reading strategy file",
        ),
        case(&["apply", STS, "-f", &broken, "--image", v2], &broken),
        case(
            &["apply", STS, "-f", &unknown_field, "--image", v2],
            "unknown field `bogus`",
        ),
        case(
            &["apply", STS, "-f", &unknown_strategy, "--image", v2],
            "unknown variant `teleport`",
        ),
        case(
            &["apply", STS, "-f", &deploy_yaml, "--image", v2],
            "unknown field",
        ),
        case(
            &["apply", STS, "-f", &bad_gate_file, "--image", v2],
            "no command to run",
        ),
        case(
            &[
                "apply",
                STS,
                "-f",
                &rolling_file,
                "--manifest",
                &deploy_yaml,
            ],
            "found: Deployment",
        ),
        case(
            &["shadow", STS, "--image", v2, "--requests", &missing],
            "reading requests file",
        ),
        case(
            &[
                "shadow",
                STS,
                "--image",
                v2,
                "--requests",
                &requests_no_path,
            ],
            "has no path",
        ),
        case(
            &["shadow", STS, "--image", v2, "--requests", &requests_empty],
            &requests_empty,
        ),
        // Kubeconfig.
        case(
            &[
                "rolling",
                STS,
                "--image",
                v2,
                "--kubeconfig",
                &missing_kubeconfig,
            ],
            "reading kubeconfig",
        ),
        case(
            &[
                "rolling",
                STS,
                "--image",
                v2,
                "--kubeconfig",
                &broken_kubeconfig,
            ],
            "reading kubeconfig",
        ),
        case(
            &["status", STS, "--context", "no-such-context"],
            "no-such-context",
        ),
        Case {
            how: How::KubeconfigEnv(PathBuf::from(&missing_kubeconfig)),
            ..case(&["status", STS], "--kubeconfig")
        },
        // Sets that cannot take a rollout: at 0 replicas (OnDelete or not).
        case(&["rolling", "zero", "--image", v2], "it has 0 replicas"),
        case(&["rolling", "ondel", "--image", v2], "it has 0 replicas"),
        case(
            &["canary", "zero", "--image", v2, "--weight", "50"],
            "no pod to gate",
        ),
        case(&["recreate", "zero", "--image", v2], "it has 0 replicas"),
        case(&["bluegreen", "zero", "--image", v2], "it has 0 replicas"),
        case(
            &["shadow", "zero", "--image", v2],
            "no stable pod to compare",
        ),
        // Gates and the shadow's comparison.
        case(
            &["rolling", STS, "--image", v2, "--gate-command", ""],
            "no command to run",
        ),
        case(
            &["rolling", STS, "--image", v2, "--gate-command", "  "],
            "would pass every gate",
        ),
        case(
            &["rolling", STS, "--image", v2, "--gate-webhook", "ftp://x"],
            "http://",
        ),
        case(
            &["rolling", STS, "--image", v2, "--probe-status", "700"],
            "700",
        ),
        case(
            &["rolling", STS, "--image", v2, "--min-success-ratio", "1.5"],
            "1.5",
        ),
        case(
            &["rolling", STS, "--image", v2, "--probe-path", "healthz"],
            "must start with `/`",
        ),
        case(
            &["shadow", STS, "--image", v2, "--min-samples", "0"],
            "--min-samples 0",
        ),
        case(
            &[
                "shadow",
                STS,
                "--image",
                v2,
                "--compare-bodies",
                "--ignore-lines",
                "([",
            ],
            "not a valid regular expression",
        ),
        case(
            &["shadow", STS, "--image", v2, "--ignore-lines", "^Date"],
            "--compare-bodies",
        ),
        case(&["shadow", STS, "--image", v2, "--rate", "0"], "--rate 0"),
        case(
            &[
                "shadow",
                STS,
                "--image",
                v2,
                "--max-requests",
                "3",
                "--min-samples",
                "5",
            ],
            "--max-requests 3",
        ),
        case(
            &["shadow", STS, "--image", v2, "--max-p95-ratio", "0.5"],
            "--max-p95-ratio 0.5",
        ),
        case(
            &[
                "shadow",
                STS,
                "--image",
                v2,
                "--max-error-rate-increase",
                "150",
            ],
            "--max-error-rate-increase 150",
        ),
        case(
            &["rolling", STS, "--image", v2, "--max-p95-latency", "0s"],
            "max p95 latency must be more than 0s",
        ),
        case(
            &["rolling", STS, "--image", v2, "--probe-via", "pigeon"],
            "pigeon",
        ),
        case(
            &["rolling", STS, "--image", v2, "--probe-port", "70000"],
            "70000",
        ),
        case(
            &[
                "rolling",
                STS,
                "--image",
                v2,
                "--gate-webhook",
                "http://127.0.0.1:1/x",
                "--gate-webhook-timeout",
                "0s",
            ],
            "webhook timeout must be more than 0s",
        ),
        case(
            &["shadow", STS, "--image", v2, "--replicas", "0"],
            "at least one pod",
        ),
        // Steering a set with no rollout.
        case(&["promote", STS], "no rollout to promote"),
        case(&["resume", STS], "no rollout to resume"),
        case(&["pause", STS], "has no rollout"),
        case(&["abort", STS], "no rollout to abort"),
        case(&["promote", "ondel"], "no rollout to promote"),
        case(&["undo", STS], "no previous revision"),
        case(&["undo", STS, "--to-revision", "99"], "99"),
    ];
    assert!(cases.len() >= 60, "{} cases", cases.len());

    let mut before = snapshot(&app).await?;
    let mut failures = Vec::new();
    for case in cases.drain(..) {
        let run = run_case(&app, &case).await?;
        let code = run.expect(ExitCode::BadInput).map(|_| ());
        // The message names the problem, in words: no panic, no client library's debug dump.
        let named = run.stderr.contains(&case.needle)
            && !["panicked", "Api(", "Error {", "RUST_BACKTRACE"]
                .iter()
                .any(|noise| run.stderr.contains(noise));
        let now = snapshot(&app).await?;
        if code.is_err() || !named || now != before {
            failures.push(format!(
                "{}{}{}",
                run.describe(),
                if named {
                    String::new()
                } else {
                    format!("\n--- the message does not contain `{}`", case.needle)
                },
                if now == before {
                    String::new()
                } else {
                    format!("\n--- the cluster changed: {before:?}\n  became {now:?}")
                }
            ));
            // Judge the next case against the cluster as this one left it.
            before = now;
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad invocation(s) handled badly:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    app.assert_data_kept().await?;
    let _ = std::fs::remove_dir_all(&dir);
    app.cleanup().await;
    Ok(())
}
