//! The live view of a run in a terminal: one status line under the finished step lines,
//! `[3/5]   12.4s  lower partition to 1: 2 of 3 pods on the new revision, 1 Ready`, redrawn in
//! place (`\r` and clear-line) at most [`REDRAW_EVERY`]. Only when stderr is a terminal: the
//! finished step lines are the plain lines, so the scrollback reads like the output of a run
//! in CI. Colour only then too, and never with `NO_COLOR` set (https://no-color.org).
//!
//! The rendering is pure ([`render_status`], [`paint_line`]); [`Terminal`] holds what the
//! runner last said about the current step and draws it; [`Ticker`] refreshes the elapsed time
//! while a run lasts.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::progress::format_elapsed;
use crate::cluster::Snapshot;
use crate::gate::probe::ProbeTally;
use crate::strategy::predicates;

/// How often the status line may be redrawn (four times a second).
pub const REDRAW_EVERY: Duration = Duration::from_millis(250);

const CLEAR_LINE: &str = "\r\x1b[2K";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RESET: &str = "\x1b[0m";

/// Colour is for a terminal, and only when `NO_COLOR` is unset or empty.
pub fn colour_wanted(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A finished line as a terminal shows it: red when something failed or timed out, green for
/// a step that ended well, as it is otherwise (or without colour).
pub fn paint_line(line: &str, colour: bool) -> String {
    if !colour {
        return line.to_string();
    }
    let failed = ["FAILED", "TIMED OUT", "failed"]
        .iter()
        .any(|w| line.contains(w));
    if failed {
        format!("{RED}{line}{RESET}")
    } else if line.starts_with('[') {
        format!("{GREEN}{line}{RESET}")
    } else {
        line.to_string()
    }
}

/// The step the status line is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    /// `[3/5]`, `[rollback 1/3]`.
    pub label: String,
    pub text: String,
    /// What the runner last saw while it waits (pods moving); may be empty.
    pub detail: String,
    pub started: Instant,
    /// The gate's HTTP probes, while it runs.
    pub probes: Option<ProbeTally>,
}

/// The status line for `current`, `elapsed` into its step with `probes` (ok, ended) of its gate
/// so far, cut to `width` characters so that it never wraps (a wrapped line cannot be redrawn in
/// place); yellow when `colour`.
pub fn render_status(
    current: &Current,
    elapsed: Duration,
    probes: Option<(u32, u32)>,
    width: usize,
    colour: bool,
) -> String {
    let mut line = format!(
        "{} {:>7}  {}",
        current.label,
        format_elapsed(elapsed),
        current.text
    );
    if !current.detail.is_empty() {
        line.push_str(": ");
        line.push_str(&current.detail);
    }
    if let Some((ok, ended)) = probes.filter(|&(_, ended)| ended > 0) {
        line.push_str(&format!(" · gate probes {ok}/{ended} ok"));
    }
    let keep = width.saturating_sub(1).max(1);
    if line.chars().count() > keep {
        line = line.chars().take(keep.saturating_sub(1)).collect();
        line.push('…');
    }
    if colour {
        format!("{YELLOW}{line}{RESET}")
    } else {
        line
    }
}

/// Pods moving, from the snapshot a wait looks at: `2 of 3 pods on the new revision, 1 Ready`
/// (Ready among those on it). Empty before the set has a new revision.
pub fn pods_moving(snapshot: &Snapshot) -> String {
    let Some(update) = snapshot
        .statefulset
        .as_ref()
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.update_revision.clone())
    else {
        return String::new();
    };
    let on_new: Vec<&Pod> = snapshot
        .pods
        .iter()
        .filter(|p| predicates::pod_revision(p) == Some(update.as_str()))
        .collect();
    let ready = on_new.iter().filter(|p| predicates::is_ready(p)).count();
    format!(
        "{} of {} pods on the new revision, {ready} Ready",
        on_new.len(),
        snapshot.pods.len()
    )
}

/// The terminal's width: `COLUMNS` when the shell exports it, else 80.
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse().ok())
        .filter(|&w: &usize| w >= 20)
        .unwrap_or(80)
}

#[derive(Default)]
struct State {
    current: Option<Current>,
    /// True while a status line is on the screen (the next line clears it first).
    shown: bool,
    last_draw: Option<Instant>,
}

/// The terminal the progress goes to (stderr), with its status line.
#[derive(Clone)]
pub struct Terminal {
    state: Arc<Mutex<State>>,
    colour: bool,
    width: usize,
}

impl Terminal {
    /// `Some` only when stderr is a terminal.
    pub fn stderr() -> Option<Terminal> {
        use std::io::IsTerminal;
        let terminal = std::io::stderr().is_terminal();
        terminal.then(|| Terminal {
            state: Arc::new(Mutex::new(State::default())),
            colour: colour_wanted(terminal, std::env::var_os("NO_COLOR").as_deref()),
            width: terminal_width(),
        })
    }

    /// A finished line: above the status line, which is drawn again under it.
    pub fn line(&self, text: &str) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let mut out = String::new();
        if state.shown {
            out.push_str(CLEAR_LINE);
        }
        for line in text.lines() {
            out.push_str(&paint_line(line, self.colour));
            out.push('\n');
        }
        state.shown = false;
        self.draw(&mut state, &mut out, true);
    }

    /// The step that began.
    pub fn begin(&self, label: String, text: String) {
        if let Ok(mut state) = self.state.lock() {
            state.current = Some(Current {
                label,
                text,
                detail: String::new(),
                started: Instant::now(),
                probes: None,
            });
            let mut out = String::new();
            self.draw(&mut state, &mut out, true);
        }
    }

    /// What the step waits on now.
    pub fn detail(&self, detail: String) {
        if let Ok(mut state) = self.state.lock() {
            match state.current.as_mut() {
                Some(current) if current.detail != detail => current.detail = detail,
                _ => return,
            }
            let mut out = String::new();
            self.draw(&mut state, &mut out, false);
        }
    }

    /// The gate of the current step counts its probes in `probes`.
    pub fn probes(&self, probes: ProbeTally) {
        if let Ok(mut state) = self.state.lock() {
            if let Some(current) = state.current.as_mut() {
                current.probes = Some(probes);
            }
        }
    }

    /// The step ended (its line comes next), or the run did: the status line goes away.
    pub fn end(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.current = None;
            if state.shown {
                state.shown = false;
                write_stderr(CLEAR_LINE);
            }
        }
    }

    /// The elapsed time moved on (the ticker keeps the pace itself).
    fn tick(&self) {
        if let Ok(mut state) = self.state.lock() {
            let mut out = String::new();
            self.draw(&mut state, &mut out, true);
        }
    }

    /// Writes `out` and, unless drawn within [`REDRAW_EVERY`] (or `now`), the status line.
    fn draw(&self, state: &mut State, out: &mut String, now: bool) {
        let due = now
            || state
                .last_draw
                .is_none_or(|at| at.elapsed() >= REDRAW_EVERY);
        if let (Some(current), true) = (state.current.as_ref(), due) {
            out.push_str(CLEAR_LINE);
            out.push_str(&render_status(
                current,
                current.started.elapsed(),
                current.probes.as_ref().map(ProbeTally::counts),
                self.width,
                self.colour,
            ));
            state.shown = true;
            state.last_draw = Some(Instant::now());
        }
        if !out.is_empty() {
            write_stderr(out);
        }
    }
}

fn write_stderr(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
    let _ = stderr.flush();
}

/// Redraws the status line while a run lasts; dropping it stops the task and clears the line.
pub struct Ticker {
    task: tokio::task::JoinHandle<()>,
    terminal: Terminal,
}

impl Ticker {
    pub fn start(terminal: &Terminal) -> Ticker {
        let ticking = terminal.clone();
        let task = tokio::spawn(async move {
            let mut every = tokio::time::interval(REDRAW_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                ticking.tick();
            }
        });
        Ticker {
            task,
            terminal: terminal.clone(),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.task.abort();
        self.terminal.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn current(detail: &str) -> Current {
        Current {
            label: "[3/5]".into(),
            text: "lower partition to 1".into(),
            detail: detail.into(),
            started: Instant::now(),
            probes: None,
        }
    }

    #[test]
    fn colour_only_in_a_terminal_without_no_color() {
        let cases = [
            (true, None, true),
            (true, Some(""), true),
            (true, Some("1"), false),
            (true, Some("0"), false),
            (false, None, false),
            (false, Some(""), false),
        ];
        for (terminal, no_color, want) in cases {
            assert_eq!(
                colour_wanted(terminal, no_color.map(OsStr::new)),
                want,
                "{terminal} {no_color:?}"
            );
        }
    }

    #[test]
    fn status_lines() {
        let twelve = Duration::from_millis(12_400);
        let cases = [
            (
                "2 of 3 pods on the new revision, 1 Ready",
                80,
                false,
                "[3/5]   12.4s  lower partition to 1: 2 of 3 pods on the new revision, 1 Ready",
            ),
            ("", 80, false, "[3/5]   12.4s  lower partition to 1"),
            ("", 20, false, "[3/5]   12.4s  low…"),
            (
                "",
                80,
                true,
                "\x1b[33m[3/5]   12.4s  lower partition to 1\x1b[0m",
            ),
        ];
        for (detail, width, colour, want) in cases {
            let line = render_status(&current(detail), twelve, None, width, colour);
            assert_eq!(line, want);
            if !colour {
                assert!(line.chars().count() < width, "{line}");
            }
        }
    }

    #[test]
    fn a_gate_shows_its_probes_once_one_ended() {
        let twelve = Duration::from_millis(12_400);
        let gate = Current {
            text: "gate web-2".into(),
            ..current("")
        };
        let cases = [
            (None, "[3/5]   12.4s  gate web-2"),
            (Some((0, 0)), "[3/5]   12.4s  gate web-2"),
            (
                Some((6, 9)),
                "[3/5]   12.4s  gate web-2 · gate probes 6/9 ok",
            ),
        ];
        for (probes, want) in cases {
            assert_eq!(render_status(&gate, twelve, probes, 80, false), want);
        }
    }

    #[test]
    fn finished_lines_keep_their_text() {
        let cases = [
            ("[2/5]    4.2s  gate web-2: passed", true, "\x1b[32m", true),
            ("[2/5]    4.2s  gate web-2: FAILED", true, "\x1b[31m", true),
            ("        a detail", true, "", false),
            ("[2/5]    4.2s  gate web-2: FAILED", false, "", false),
        ];
        for (line, colour, start, painted) in cases {
            let shown = paint_line(line, colour);
            assert!(shown.starts_with(start), "{shown:?}");
            assert_eq!(shown.contains(RESET), painted, "{shown:?}");
            assert_eq!(shown.replace(start, "").replace(RESET, ""), line);
        }
    }
}
