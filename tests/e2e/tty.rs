//! The live view in a terminal: the same rolling rollout of the time app run under a
//! pseudo-terminal (`script` from util-linux) redraws a status line in place with the step's
//! elapsed time, colours its lines unless `NO_COLOR` is set, and leaves in the scrollback the
//! same step lines a run without a terminal prints, which has no `\r` and no escape codes.

use std::process::Stdio;

use anyhow::{ensure, Context};
use rollout::model::exit::ExitCode;

use crate::support::{kubeconfig, App, RUN_LIMIT, STS};

/// `rollout ARGS -n NS` under a pseudo-terminal: everything it wrote there, and its exit code.
async fn rollout_in_terminal(
    app: &App,
    args: &[&str],
    no_color: bool,
) -> anyhow::Result<(String, Option<i32>)> {
    let mut words = vec![env!("CARGO_BIN_EXE_rollout").to_string()];
    words.extend(args.iter().map(|a| a.to_string()));
    words.extend(["-n".to_string(), app.name().to_string()]);
    let line = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = tokio::process::Command::new("script");
    command
        .args(["-qfec", &line, "/dev/null"])
        .env("KUBECONFIG", kubeconfig())
        .env("COLUMNS", "200")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if no_color {
        command.env("NO_COLOR", "1");
    }
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .context("rollout under script did not end")?
        .context("starting script (util-linux)")?;
    // The terminal turns each `\n` into `\r\n`.
    let text = String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n");
    Ok((text, output.status.code()))
}

/// What stays on the screen: the finished lines, without the status lines drawn over and
/// without colour.
fn scrollback(terminal: &str) -> String {
    let plain = regex::Regex::new(r"\x1b\[[0-9;]*m")
        .unwrap()
        .replace_all(terminal, "");
    plain
        .split("\r\x1b[2K")
        .filter(|piece| piece.ends_with('\n') || piece.contains('\n'))
        .map(|piece| &piece[..=piece.rfind('\n').unwrap()])
        .collect()
}

/// The step lines and the last line, with their elapsed times (`4.2s`, `850ms`, `2m 5s`) taken out, to compare two runs.
fn without_times(text: &str) -> Vec<String> {
    // Right-aligned times: the padding goes with them.
    let times = regex::Regex::new(r" +(\d+(\.\d+)?(ms|s)|\d+m \d+s|\d+h \d+m)\b").unwrap();
    // The step lines and the last one: other lines (a retry, a note) depend on the moment.
    let last = text.lines().last().unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with('[') || *l == last)
        .map(|l| times.replace_all(l, " T").into_owned())
        .collect()
}

#[tokio::test]
async fn a_terminal_shows_a_live_status_line_and_plain_output_stays_plain() -> anyhow::Result<()> {
    let app = App::deploy("tty", 3, false).await?;

    // In a terminal, with colour.
    let (shown, code) =
        rollout_in_terminal(&app, &["rolling", STS, "--image", "time-app:v2"], false).await?;
    eprintln!("--- in a terminal:\n{shown:?}");
    ensure!(code == Some(0), "exit {code:?}: {shown}");
    app.assert_all_on("v2").await?;
    let status =
        regex::Regex::new(r"\r\x1b\[2K(\x1b\[33m)?\[\d+/\d+\] +\d+(\.\d+)?(ms|s)  [^\n\r]*")?;
    let redraws = status.find_iter(&shown).count();
    eprintln!("status lines drawn: {redraws}");
    ensure!(redraws >= 2, "no live status line redrawn: {shown:?}");
    ensure!(
        regex::Regex::new(r"pods on the new revision, \d Ready")?.is_match(&shown),
        "the status line does not show pods moving: {shown:?}"
    );
    ensure!(
        regex::Regex::new(r"gate time-app-\d · gate probes \d+/\d+ ok")?.is_match(&shown),
        "the status line does not count the gate's probes: {shown:?}"
    );
    ensure!(
        shown.contains("\x1b[3"),
        "no colour in a terminal: {shown:?}"
    );
    let finished = scrollback(&shown);
    let last = finished.lines().last().unwrap_or_default();
    ensure!(!last.is_empty(), "no final line: {shown:?}");
    // The status line is gone at the end: nothing drawn after the last finished line.
    ensure!(
        shown.trim_end_matches("\r\x1b[2K").ends_with('\n'),
        "the status line stays after the run: {shown:?}"
    );

    // NO_COLOR: the live line still, but no colour.
    let (shown_nc, code) =
        rollout_in_terminal(&app, &["rolling", STS, "--image", "time-app:v1"], true).await?;
    ensure!(code == Some(0), "exit {code:?}: {shown_nc}");
    app.assert_all_on("v1").await?;
    ensure!(shown_nc.contains("\r\x1b[2K"), "no live line: {shown_nc:?}");
    ensure!(
        !shown_nc.contains("\x1b[3"),
        "colour despite NO_COLOR: {shown_nc:?}"
    );

    // Without a terminal: the same lines as the terminal's scrollback, plain.
    let plain = app
        .rollout(&["rolling", STS, "--image", "time-app:v2"])
        .await?;
    plain.expect(ExitCode::Done)?;
    app.assert_all_on("v2").await?;
    let written = format!("{}{}", plain.stderr, plain.stdout);
    ensure!(
        !written.contains('\r') && !written.contains('\x1b'),
        "a redraw or escape code without a terminal: {written:?}"
    );
    let mut in_terminal = without_times(&finished);
    let mut without = without_times(&written);
    in_terminal.sort();
    without.sort();
    assert_eq!(
        in_terminal, without,
        "terminal:\n{finished}\nplain:\n{written}"
    );
    app.cleanup().await;
    Ok(())
}
