//! What an operator and a CI job see besides the rollout itself: Kubernetes Events on the
//! StatefulSet for every step, gate verdict, pause, rollback and finish; `--notify` messages to
//! webhooks (one that answers, one that hangs, one that refuses: the rollout never waits on
//! them); `status --watch --until hold|done` with `--output jsonl`; the Markdown summary with its
//! timeline picture in `$GITHUB_STEP_SUMMARY`; completions, the man page and `--version`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{ensure, Context};
use k8s_openapi::api::events::v1::Event;
use rollout::model::exit::ExitCode;

use crate::support::{
    failing_release_manifest, finish_within, rollout_command, App, ManifestFile, RUN_LIMIT, STS,
};

/// What a webhook received: the `X-Rollout-Event` header and the `text` of the body.
type Posts = Arc<Mutex<Vec<(String, String)>>>;

/// A webhook on 127.0.0.1 that keeps every post.
async fn collector() -> anyhow::Result<(SocketAddr, Posts)> {
    use axum::http::HeaderMap;
    let posts: Posts = Arc::default();
    let kept = posts.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: HeaderMap, body: axum::Json<serde_json::Value>| {
                let kept = kept.clone();
                async move {
                    let kind = headers
                        .get("x-rollout-event")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let text = body["text"].as_str().unwrap_or_default().to_string();
                    kept.lock().unwrap().push((kind, text));
                    "ok"
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, posts))
}

/// A URL that accepts connections and never answers, and one where nothing listens.
async fn bad_urls() -> anyhow::Result<(String, String, tokio::task::JoinHandle<()>)> {
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hang_addr = hanging.local_addr()?;
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            held.push(socket);
        }
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let refused_addr = closed.local_addr()?;
    drop(closed);
    Ok((
        format!("http://{hang_addr}/hook"),
        format!("http://{refused_addr}/hook"),
        holder,
    ))
}

/// Runs `rollout ARGS` in the app's namespace with `$GITHUB_STEP_SUMMARY` set to `summary`.
async fn run_with_summary(
    app: &App,
    summary: &std::path::Path,
    args: &[&str],
) -> anyhow::Result<crate::support::Run> {
    let child = rollout_command(app.name(), args)
        .env("GITHUB_STEP_SUMMARY", summary)
        .spawn()?;
    finish_within(child, &args.join(" "), RUN_LIMIT).await
}

/// rollout's Events in the namespace, oldest first.
async fn events(app: &App) -> anyhow::Result<Vec<Event>> {
    let mut list: Vec<Event> = app
        .ns
        .api::<Event>()
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reporting_controller.as_deref() == Some("rollout.dev/rollout"))
        .collect();
    list.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
    Ok(list)
}

/// The timeline picture of the last summary in `markdown`, parsed: (steps drawn, gates passed,
/// gates failed, final state).
fn picture(markdown: &str) -> anyhow::Result<(usize, usize, usize, String)> {
    use base64::Engine as _;
    let encoded = markdown
        .rsplit("data:image/svg+xml;base64,")
        .next()
        .and_then(|rest| rest.split('"').next())
        .context("no inline SVG in the summary")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded)?;
    let svg = String::from_utf8(bytes)?;
    let doc = roxmltree::Document::parse(&svg).with_context(|| svg.clone())?;
    let has = |n: &roxmltree::Node<'_, '_>, class: &str| {
        n.attribute("class")
            .is_some_and(|c| c.split(' ').any(|p| p == class))
    };
    let steps = doc.descendants().filter(|n| has(n, "step")).count();
    let passed = doc
        .descendants()
        .filter(|n| has(n, "verdict") && has(n, "pass"))
        .count();
    let failed = doc
        .descendants()
        .filter(|n| has(n, "verdict") && has(n, "fail"))
        .count();
    let last = doc
        .descendants()
        .find(|n| n.attribute("id") == Some("final"))
        .and_then(|n| n.text())
        .unwrap_or_default()
        .to_string();
    Ok((steps, passed, failed, last))
}

#[tokio::test]
async fn events_notifications_and_the_ci_summary_tell_the_rollout() -> anyhow::Result<()> {
    let app = App::deploy("operator", 3, false).await?;
    let (addr, posts) = collector().await?;
    let (hanging, refused, holder) = bad_urls().await?;
    let good = format!("http://{addr}/hook");
    let summary = std::env::temp_dir().join(format!("{}-summary.md", app.name()));
    let _ = std::fs::remove_file(&summary);

    // A canary in two steps, told to three webhooks, two of which never answer.
    let run = run_with_summary(
        &app,
        &summary,
        &[
            "canary",
            STS,
            "--image",
            "time-app:v2",
            "--steps",
            "34,100",
            "--probe-window",
            "2s",
            "--notify",
            &good,
            "--notify",
            &hanging,
            "--notify",
            &refused,
        ],
    )
    .await?;
    run.expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    let kinds: Vec<String> = posts.lock().unwrap().iter().map(|p| p.0.clone()).collect();
    ensure!(kinds == ["start", "success"], "posts: {kinds:?}");
    let texts: Vec<String> = posts.lock().unwrap().iter().map(|p| p.1.clone()).collect();
    ensure!(
        texts[1].contains(&format!("StatefulSet {}/{STS}", app.name()))
            && texts[1].contains("succeeded"),
        "{texts:?}"
    );

    // The story as Events on the set: the start, each step, each gate, the end.
    let story = events(&app).await?;
    let reasons: Vec<&str> = story.iter().filter_map(|e| e.reason.as_deref()).collect();
    for reason in [
        "RolloutStarted",
        "StepStarted",
        "StepDone",
        "GatePassed",
        "RolloutSucceeded",
    ] {
        ensure!(reasons.contains(&reason), "no {reason} in {reasons:?}");
    }
    ensure!(
        reasons.iter().filter(|r| **r == "GatePassed").count() == 2,
        "{reasons:?}"
    );
    let set = app.statefulset().await?;
    for e in &story {
        let regarding = e.regarding.as_ref().context("an Event regards nothing")?;
        ensure!(
            regarding.name.as_deref() == Some(STS)
                && regarding.kind.as_deref() == Some("StatefulSet")
        );
        ensure!(regarding.uid == set.metadata.uid, "{e:?}");
        ensure!(e.note.as_deref().is_some_and(|n| !n.is_empty()));
    }
    // `kubectl describe sts` lists them.
    // kubectl from PATH: the cluster's own release (scripts/test puts it first).
    let described = tokio::process::Command::new("kubectl")
        .args(["describe", "statefulset", STS, "-n", app.name()])
        .env("KUBECONFIG", crate::support::kubeconfig())
        .output()
        .await?;
    let described = String::from_utf8_lossy(&described.stdout);
    ensure!(
        described.contains("RolloutSucceeded") && described.contains("GatePassed"),
        "{described}"
    );

    // The CI summary: a picture with the steps that ran, the gates' verdicts and the end.
    let markdown = std::fs::read_to_string(&summary)?;
    ensure!(
        markdown.starts_with(&format!(
            "### rollout: canary of {}/{STS}: Succeeded",
            app.name()
        )),
        "{markdown}"
    );
    let record = set
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("rollout.dev/state"))
        .context("no record")?;
    let record: serde_json::Value = serde_json::from_str(record)?;
    let steps = record["plan"]["steps"].as_array().map_or(0, Vec::len);
    let (drawn, passed, failed, last) = picture(&markdown)?;
    ensure!(
        (drawn, passed, failed, last.as_str()) == (steps, 2, 0, "Succeeded"),
        "picture: {drawn} steps of {steps}, {passed} passed, {failed} failed, {last}"
    );
    ensure!(
        markdown.matches("| done |").count() + markdown.matches("| gate passed |").count() == steps
    );

    // A release the gate fails: failure and rollback are posted, told and drawn.
    posts.lock().unwrap().clear();
    let bad = ManifestFile::write(&app, &failing_release_manifest(3, false, "time-app:v3"))?;
    let run = run_with_summary(
        &app,
        &summary,
        &[
            "canary",
            STS,
            "-f",
            &bad.arg(),
            "--steps",
            "34,100",
            "--probe-window",
            "2s",
            "--notify",
            &good,
            "--notify",
            &hanging,
        ],
    )
    .await?;
    run.expect(ExitCode::GateFailed)?;
    app.assert_all_on("v2").await?;
    let kinds: Vec<String> = posts.lock().unwrap().iter().map(|p| p.0.clone()).collect();
    // In the order they happened: each URL's posts go one after the other.
    ensure!(
        kinds == ["start", "failure", "rollback", "rollback"],
        "posts: {kinds:?}"
    );
    let reasons: Vec<String> = events(&app)
        .await?
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    for reason in ["GateFailed", "RollbackStarted", "RolledBack"] {
        ensure!(
            reasons.iter().any(|r| r == reason),
            "no {reason} in {reasons:?}"
        );
    }
    let warning = events(&app)
        .await?
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("GateFailed"))
        .context("no GateFailed Event")?;
    ensure!(warning.type_.as_deref() == Some("Warning"));
    ensure!(
        warning
            .note
            .as_deref()
            .is_some_and(|n| n.contains("failed")),
        "{warning:?}"
    );
    let markdown = std::fs::read_to_string(&summary)?;
    let (_, passed, failed, last) = picture(&markdown)?;
    ensure!(
        failed == 1 && last == "RolledBack" && passed == 0,
        "picture: {passed} passed, {failed} failed, {last}"
    );
    holder.abort();
    let _ = std::fs::remove_file(&summary);
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn status_watches_until_a_hold_or_the_end_in_json_lines() -> anyhow::Result<()> {
    let app = App::deploy("operator-watch", 3, false).await?;
    app.rollout(&[
        "canary",
        STS,
        "--image",
        "time-app:v2",
        "--weight",
        "34",
        "--probe-window",
        "2s",
    ])
    .await?
    .expect(ExitCode::Done)?;

    // At the hold, `--until hold` stops at once; the lines are the story so far.
    let held = app
        .rollout(&["status", STS, "--watch", "--until", "hold", "-o", "jsonl"])
        .await?;
    held.expect(ExitCode::Done)?;
    let lines: Vec<serde_json::Value> = held
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| held.describe())?;
    let marks: Vec<&str> = lines.iter().filter_map(|l| l["mark"].as_str()).collect();
    ensure!(marks.first() == Some(&"started"), "{marks:?}");
    ensure!(marks.last() == Some(&"paused"), "{marks:?}");
    ensure!(marks.contains(&"gatePassed"), "{marks:?}");
    ensure!(lines
        .iter()
        .all(|l| l["statefulset"] == STS && l["text"].is_string()));

    // Promoted, it runs to the end; `--until done` then tells it finished, and a run with
    // `-o jsonl` streams its own marks.
    let promoted = app.rollout(&["promote", STS, "-o", "jsonl"]).await?;
    promoted.expect(ExitCode::Done)?;
    let streamed: Vec<serde_json::Value> = promoted
        .stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| promoted.describe())?;
    ensure!(
        streamed.first().and_then(|l| l["mark"].as_str()) == Some("resumed")
            && streamed.last().and_then(|l| l["mark"].as_str()) == Some("finished"),
        "{}",
        promoted.describe()
    );
    let done = app
        .rollout(&["status", STS, "--watch", "--until", "done", "-o", "jsonl"])
        .await?;
    done.expect(ExitCode::Done)?;
    let last: serde_json::Value =
        serde_json::from_str(done.stdout.lines().last().unwrap_or_default())?;
    ensure!(
        last["mark"] == "finished" && last["phase"] == "Succeeded",
        "{last}"
    );
    app.assert_all_on("v2").await?;
    app.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn completions_the_man_page_and_the_version() -> anyhow::Result<()> {
    let run = |args: &'static [&'static str]| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollout"))
            .args(args)
            .output()
            .await?;
        ensure!(out.status.success(), "{args:?}: {out:?}");
        Ok::<_, anyhow::Error>(String::from_utf8(out.stdout)?)
    };
    let bash = run(&["completions", "bash"]).await?;
    for name in [
        "canary",
        "bluegreen",
        "promote",
        "abort",
        "status",
        "--notify",
        "--until",
    ] {
        ensure!(bash.contains(name), "bash completions lack {name}");
    }
    let zsh = run(&["completions", "zsh"]).await?;
    ensure!(zsh.starts_with("#compdef rollout"), "{zsh}");
    let fish = run(&["completions", "fish"]).await?;
    ensure!(fish.contains("complete -c rollout"), "{fish}");
    let man = run(&["man"]).await?;
    ensure!(man.contains(".TH rollout 1"), "{man}");
    ensure!(man.contains("canary") && man.contains(".SH"), "{man}");
    let version = run(&["--version"]).await?;
    // Built in a git checkout: the commit is named (the short hash, as `git rev-parse` gives it).
    let commit = version
        .trim()
        .strip_prefix(&format!("rollout {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .with_context(|| version.clone())?;
    ensure!(
        commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
        "{version}"
    );
    Ok(())
}
