//! A picture and a table of a rollout for CI: a timeline (SVG) of the new version's share of the
//! pods (and the traffic weight asked for), the steps, gate verdicts, pauses and the rollback
//! over time, drawn from the record's marks (`crate::model::timeline`), and the Markdown that
//! GitHub Actions shows as a step's summary (`$GITHUB_STEP_SUMMARY`), the picture inline.
//!
//! Drawing is a pure function of the record: the same record always gives the same SVG.

use std::fmt::Write as _;
use std::io::Write as _;

use base64::Engine as _;
use k8s_openapi::jiff::Timestamp;

use super::commands::Context;
use super::progress::format_elapsed;
use super::{Cluster, ExecError, GateRunner};
use crate::model::plan::{Plan, Step};
use crate::model::state::{Phase, RolloutState};
use crate::model::timeline::What;
use crate::strategy::timeline::describe_mark;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 270.0;
const LEFT: f64 = 50.0;
const RIGHT: f64 = 740.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 220.0;

/// How a step ended, as the picture and the table say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEnd {
    Done,
    Passed,
    Failed,
    Paused,
    Running,
}

impl StepEnd {
    fn word(self) -> &'static str {
        match self {
            StepEnd::Done => "done",
            StepEnd::Passed => "gate passed",
            StepEnd::Failed => "failed",
            StepEnd::Paused => "paused",
            StepEnd::Running => "running",
        }
    }
}

/// One step as it ran: when it began and ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub step: usize,
    pub start: Timestamp,
    pub end: Timestamp,
    pub result: StepEnd,
}

/// The share of pods (percent) on the new version once `plan.steps[..end]` are done.
pub fn share_after(plan: &Plan, end: usize, own: &str) -> f64 {
    if let Some(updated) = plan.updated_after(end) {
        if plan.replicas == 0 {
            return 0.0;
        }
        return f64::from(updated) * 100.0 / f64::from(plan.replicas);
    }
    let done = &plan.steps[..end.min(plan.steps.len())];
    let switched = done.iter().any(|s| matches!(s, Step::SwitchTraffic));
    let recreated = done
        .iter()
        .position(|s| matches!(s, Step::SetTemplate))
        .is_some_and(|at| {
            done[at..]
                .iter()
                .any(|s| matches!(s, Step::Scale { set, replicas } if set == own && *replicas > 0))
        });
    if switched || recreated {
        100.0
    } else {
        0.0
    }
}

/// The weight asked for once `plan.steps[..end]` are done, where the plan asks for one.
fn weight_after(plan: &Plan, end: usize) -> Option<f64> {
    plan.steps[..end.min(plan.steps.len())]
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::SetPartition {
                weight: Some(w), ..
            } => Some(f64::from(w.requested.get())),
            _ => None,
        })
}

/// The steps that ran, from the marks.
pub fn spans(record: &RolloutState) -> Vec<Span> {
    let mut out = Vec::new();
    let mut open: Option<(usize, Timestamp)> = None;
    let mut last_end = record.started_at;
    for mark in &record.timeline {
        let (step, end) = match &mark.what {
            What::StepStarted { step } | What::Paused { step, .. } => {
                match open {
                    Some((i, _)) if i == *step => {}
                    Some((i, start)) => {
                        out.push(Span {
                            step: i,
                            start,
                            end: mark.at,
                            result: StepEnd::Done,
                        });
                        open = Some((*step, mark.at));
                    }
                    None => open = Some((*step, mark.at)),
                }
                continue;
            }
            What::StepDone { step } => (*step, StepEnd::Done),
            What::GatePassed { step } => (*step, StepEnd::Passed),
            What::StepFailed { step, .. } => (*step, StepEnd::Failed),
            What::Resumed { step }
                if record
                    .plan
                    .steps
                    .get(*step)
                    .is_some_and(|s| matches!(s, Step::Pause { .. })) =>
            {
                (*step, StepEnd::Paused)
            }
            _ => continue,
        };
        let start = match open.take() {
            Some((i, start)) if i == step => start,
            Some((i, start)) => {
                out.push(Span {
                    step: i,
                    start,
                    end: mark.at,
                    result: StepEnd::Done,
                });
                mark.at
            }
            None => last_end,
        };
        out.push(Span {
            step,
            start,
            end: mark.at,
            result: end,
        });
        last_end = mark.at;
    }
    if let Some((step, start)) = open {
        let end = end_of(record);
        let result = if record.phase == Phase::Paused {
            StepEnd::Paused
        } else {
            StepEnd::Running
        };
        out.push(Span {
            step,
            start,
            end,
            result,
        });
    }
    out
}

/// The last time the picture shows.
fn end_of(record: &RolloutState) -> Timestamp {
    let last = record
        .timeline
        .last()
        .map(|m| m.at)
        .unwrap_or(record.updated_at);
    last.max(record.updated_at).max(record.started_at)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The timeline of `record` as an SVG document.
pub fn timeline_svg(namespace: &str, record: &RolloutState) -> String {
    let t0 = record.started_at;
    let end = end_of(record);
    let total = (end.as_millisecond() - t0.as_millisecond()).max(1000) as f64;
    let x = |t: Timestamp| {
        LEFT + ((t.as_millisecond() - t0.as_millisecond()) as f64 / total) * (RIGHT - LEFT)
    };
    let y = |percent: f64| BOTTOM - percent.clamp(0.0, 100.0) / 100.0 * (BOTTOM - TOP);
    let plan = &record.plan;
    let own = plan.statefulset.as_str();
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11" role="img" aria-label="timeline of the {strategy} rollout of {ns}/{name}">"#,
        strategy = plan.strategy,
        ns = escape(namespace),
        name = escape(own),
    );
    let _ = write!(
        svg,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/><text id="title" x="{LEFT}" y="22" font-size="14" font-weight="bold">{} rollout of {}/{} ({})</text>"##,
        plan.strategy,
        escape(namespace),
        escape(own),
        escape(&record.id)
    );
    // Steps: alternating bands with their numbers.
    let spans = spans(record);
    svg.push_str(r#"<g id="steps">"#);
    for (n, span) in spans.iter().enumerate() {
        let (x0, x1) = (x(span.start), x(span.end));
        let fill = match (span.result, n % 2) {
            (StepEnd::Failed, _) => "#fde2e1",
            (StepEnd::Paused, _) => "#eeeeee",
            (_, 0) => "#eaf2fb",
            _ => "#f5f9fd",
        };
        let what = plan
            .steps
            .get(span.step)
            .map(|s| plan.describe_step(s))
            .unwrap_or_default();
        let _ = write!(
            svg,
            r##"<rect class="step {result}" data-step="{step}" x="{x0:.1}" y="{TOP}" width="{w:.1}" height="{h}" fill="{fill}"><title>step {step}: {what} ({took}, {word})</title></rect><text x="{tx:.1}" y="{ty}" text-anchor="middle" fill="#555555">{step}</text>"##,
            result = span.result.word().replace(' ', "-"),
            step = span.step + 1,
            w = (x1 - x0).max(1.0),
            h = BOTTOM - TOP,
            what = escape(&what),
            took = format_elapsed(std::time::Duration::from_millis(
                u64::try_from(span.end.as_millisecond() - span.start.as_millisecond()).unwrap_or(0)
            )),
            word = span.result.word(),
            tx = (x0 + x1) / 2.0,
            ty = BOTTOM + 14.0,
        );
    }
    svg.push_str("</g>");
    // Pauses and the rollback, over the bands.
    let mut paused_at: Option<Timestamp> = None;
    let mut rollback_at: Option<Timestamp> = None;
    for mark in &record.timeline {
        match &mark.what {
            What::Paused { .. } => {
                paused_at.get_or_insert(mark.at);
            }
            What::Resumed { .. } | What::RollbackStarted { .. } | What::Finished { .. } => {
                if let Some(from) = paused_at.take() {
                    pause_rect(&mut svg, x(from), x(mark.at));
                }
            }
            _ => {}
        }
        match &mark.what {
            What::RollbackStarted { .. } => rollback_at = Some(mark.at),
            What::Finished { .. } => {
                if let Some(from) = rollback_at.take() {
                    rollback_rect(&mut svg, x(from), x(mark.at));
                }
            }
            _ => {}
        }
    }
    if let Some(from) = paused_at {
        pause_rect(&mut svg, x(from), x(end));
    }
    if let Some(from) = rollback_at {
        rollback_rect(&mut svg, x(from), x(end));
    }
    // Axes.
    let _ = write!(
        svg,
        r##"<g id="axes" stroke="#999999"><line x1="{LEFT}" y1="{BOTTOM}" x2="{RIGHT}" y2="{BOTTOM}"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{BOTTOM}"/></g><g fill="#555555"><text x="{lx}" y="{y0}" text-anchor="end">0%</text><text x="{lx}" y="{y50}" text-anchor="end">50%</text><text x="{lx}" y="{y100}" text-anchor="end">100%</text><text x="{LEFT}" y="{ty}">{start}</text><text x="{RIGHT}" y="{ty}" text-anchor="end">+{length}</text></g>"##,
        lx = LEFT - 4.0,
        y0 = y(0.0) + 4.0,
        y50 = y(50.0) + 4.0,
        y100 = y(100.0) + 4.0,
        ty = BOTTOM + 30.0,
        start = t0.strftime("%H:%M:%S UTC"),
        length = format_elapsed(std::time::Duration::from_millis(total as u64)),
    );
    // The new version's share of pods (and the weight asked for), as steps over time.
    let mut share = vec![(t0, 0.0)];
    let mut weight: Vec<(Timestamp, f64)> = Vec::new();
    for mark in &record.timeline {
        match &mark.what {
            What::StepDone { step } | What::GatePassed { step } => {
                share.push((mark.at, share_after(plan, step + 1, own)));
                if let Some(w) = weight_after(plan, step + 1) {
                    if weight.is_empty() {
                        weight.push((t0, 0.0));
                    }
                    weight.push((mark.at, w));
                }
            }
            What::Finished {
                phase: Phase::RolledBack | Phase::Aborted,
                ..
            } => {
                share.push((mark.at, 0.0));
                if !weight.is_empty() {
                    weight.push((mark.at, 0.0));
                }
            }
            _ => {}
        }
    }
    let line = |points: &[(Timestamp, f64)]| {
        let mut text = String::new();
        let mut last: Option<f64> = None;
        for (t, v) in points {
            if let Some(before) = last {
                let _ = write!(text, "{:.1},{:.1} ", x(*t), y(before));
            }
            let _ = write!(text, "{:.1},{:.1} ", x(*t), y(*v));
            last = Some(*v);
        }
        if let Some(v) = last {
            let _ = write!(text, "{:.1},{:.1}", x(end), y(v));
        }
        text
    };
    if !weight.is_empty() {
        let _ = write!(
            svg,
            r##"<polyline id="weight" points="{}" fill="none" stroke="#9b59b6" stroke-width="2" stroke-dasharray="5,4"><title>traffic weight asked for</title></polyline>"##,
            line(&weight)
        );
    }
    let _ = write!(
        svg,
        r##"<polyline id="share" points="{}" fill="none" stroke="#1f6feb" stroke-width="2.5"><title>share of pods on the new version</title></polyline>"##,
        line(&share)
    );
    // Gate verdicts.
    svg.push_str(r#"<g id="verdicts">"#);
    let mut current = 0.0;
    for mark in &record.timeline {
        let (step, pass, text) = match &mark.what {
            What::StepDone { step } => {
                current = share_after(plan, step + 1, own);
                continue;
            }
            What::GatePassed { step } => {
                current = share_after(plan, step + 1, own);
                (*step, true, describe_mark(record, &mark.what))
            }
            What::StepFailed { step, .. } => (*step, false, describe_mark(record, &mark.what)),
            _ => continue,
        };
        let _ = write!(
            svg,
            r##"<circle class="verdict {class}" data-step="{n}" cx="{cx:.1}" cy="{cy:.1}" r="6" fill="{fill}" stroke="#ffffff"><title>{text}</title></circle>"##,
            class = if pass { "pass" } else { "fail" },
            n = step + 1,
            cx = x(mark.at),
            cy = y(current),
            fill = if pass { "#2da44e" } else { "#cf222e" },
            text = escape(&text),
        );
    }
    svg.push_str("</g>");
    let (class, color) = match record.phase {
        Phase::Succeeded => ("succeeded", "#2da44e"),
        Phase::RolledBack | Phase::Failed => ("failed", "#cf222e"),
        Phase::Aborted | Phase::Released => ("stopped", "#9a6700"),
        _ => ("active", "#1f6feb"),
    };
    let _ = write!(
        svg,
        r#"<text id="final" class="final {class}" x="{RIGHT}" y="22" text-anchor="end" font-size="14" font-weight="bold" fill="{color}">{}</text>"#,
        record.phase
    );
    let _ = write!(
        svg,
        r##"<g font-size="10" fill="#555555"><line x1="{LEFT}" y1="258" x2="{l2}" y2="258" stroke="#1f6feb" stroke-width="2.5"/><text x="{t1}" y="261">pods on the new version</text><circle cx="{c1}" cy="257" r="5" fill="#2da44e"/><text x="{t2}" y="261">gate passed</text><circle cx="{c2}" cy="257" r="5" fill="#cf222e"/><text x="{t3}" y="261">failed</text><rect x="{r1}" y="252" width="12" height="10" fill="#bbbbbb" opacity="0.5"/><text x="{t4}" y="261">pause</text><rect x="{r2}" y="252" width="12" height="10" fill="#cf222e" opacity="0.25"/><text x="{t5}" y="261">rollback</text></g>"##,
        l2 = LEFT + 20.0,
        t1 = LEFT + 24.0,
        c1 = LEFT + 160.0,
        t2 = LEFT + 168.0,
        c2 = LEFT + 240.0,
        t3 = LEFT + 248.0,
        r1 = LEFT + 290.0,
        t4 = LEFT + 306.0,
        r2 = LEFT + 350.0,
        t5 = LEFT + 366.0,
    );
    svg.push_str("</svg>\n");
    svg
}

fn pause_rect(svg: &mut String, x0: f64, x1: f64) {
    let _ = write!(
        svg,
        r##"<rect class="pause" x="{x0:.1}" y="{TOP}" width="{w:.1}" height="{h}" fill="#bbbbbb" opacity="0.5"/>"##,
        w = (x1 - x0).max(1.0),
        h = BOTTOM - TOP
    );
}

fn rollback_rect(svg: &mut String, x0: f64, x1: f64) {
    let _ = write!(
        svg,
        r##"<rect class="rollback" x="{x0:.1}" y="{TOP}" width="{w:.1}" height="{h}" fill="#cf222e" opacity="0.25"/>"##,
        w = (x1 - x0).max(1.0),
        h = BOTTOM - TOP
    );
}

/// The Markdown summary: a headline, the picture inline, a table of the steps.
pub fn markdown(namespace: &str, record: &RolloutState) -> String {
    let plan = &record.plan;
    let svg = timeline_svg(namespace, record);
    let picture = base64::engine::general_purpose::STANDARD.encode(svg.as_bytes());
    let mut text = String::new();
    let _ = writeln!(
        text,
        "### rollout: {} of {}/{}: {}\n",
        plan.strategy, namespace, plan.statefulset, record.phase
    );
    let _ = writeln!(
        text,
        "<img alt=\"timeline of the rollout: share of pods on the new version, steps, gate verdicts and pauses\" src=\"data:image/svg+xml;base64,{picture}\">\n"
    );
    let _ = writeln!(text, "| step | what | started | took | result |");
    let _ = writeln!(text, "|---:|---|---|---:|---|");
    for span in spans(record) {
        let what = plan
            .steps
            .get(span.step)
            .map(|s| plan.describe_step(s))
            .unwrap_or_default()
            .replace('|', "\\|");
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} | {} |",
            span.step + 1,
            what,
            span.start.strftime("%H:%M:%S"),
            format_elapsed(std::time::Duration::from_millis(
                u64::try_from(span.end.as_millisecond() - span.start.as_millisecond()).unwrap_or(0)
            )),
            span.result.word()
        );
    }
    let message = record.message.lines().next().unwrap_or_default();
    let _ = writeln!(
        text,
        "\n**{}**: {}\n",
        record.phase,
        message.replace('|', "\\|")
    );
    text
}

/// Appends the summary of `record` to the step-summary file, if the command has one.
pub fn append_if_asked<C: Cluster, G: GateRunner>(
    ctx: &Context<C, G>,
    record: &RolloutState,
) -> Result<(), ExecError> {
    let Some(path) = ctx.step_summary.as_ref() else {
        return Ok(());
    };
    let text = markdown(ctx.cluster.namespace(), record);
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| file.write_all(text.as_bytes()))
        .map_err(|e| {
            ExecError::Output(format!(
                "appending the summary to {} ($GITHUB_STEP_SUMMARY): {e}",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::state::tests::{sample_state, ts};
    use crate::model::state::RollbackCause;
    use crate::model::timeline::Mark;

    fn marked(marks: &[(i64, What)]) -> RolloutState {
        let mut r = sample_state();
        r.started_at = ts(1_700_000_000);
        r.timeline = marks
            .iter()
            .map(|(s, what)| Mark {
                at: ts(1_700_000_000 + s),
                what: what.clone(),
            })
            .collect();
        r
    }

    fn parse(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}: {svg}"))
    }

    /// The element with this id.
    fn by_id<'a>(doc: &'a roxmltree::Document<'_>, id: &str) -> Option<roxmltree::Node<'a, 'a>> {
        doc.descendants().find(|n| n.attribute("id") == Some(id))
    }

    fn count(doc: &roxmltree::Document<'_>, class: &str) -> usize {
        doc.descendants()
            .filter(|n| {
                n.attribute("class")
                    .is_some_and(|c| c.split(' ').any(|part| part == class))
            })
            .count()
    }

    #[test]
    fn a_successful_rollout_in_a_picture() {
        // freeze, partition 1, gate [1], partition 0, gate [0]
        let mut r = marked(&[
            (0, What::Started),
            (0, What::StepStarted { step: 0 }),
            (1, What::StepDone { step: 0 }),
            (1, What::StepStarted { step: 1 }),
            (5, What::StepDone { step: 1 }),
            (5, What::StepStarted { step: 2 }),
            (8, What::GatePassed { step: 2 }),
            (8, What::StepStarted { step: 3 }),
            (12, What::StepDone { step: 3 }),
            (12, What::StepStarted { step: 4 }),
            (15, What::GatePassed { step: 4 }),
            (
                15,
                What::Finished {
                    phase: Phase::Succeeded,
                    message: "done".into(),
                },
            ),
        ]);
        r.phase = Phase::Succeeded;
        let svg = timeline_svg("shop", &r);
        let doc = parse(&svg);
        assert_eq!(count(&doc, "step"), 5, "{svg}");
        assert_eq!(count(&doc, "pass"), 2);
        assert_eq!(count(&doc, "fail"), 0);
        let final_state = by_id(&doc, "final").and_then(|n| n.text());
        assert_eq!(final_state, Some("Succeeded"));
        let share = by_id(&doc, "share")
            .and_then(|n| n.attribute("points"))
            .unwrap_or_default();
        // Ends at 100 % (y = TOP).
        assert!(share.ends_with(&format!("{RIGHT:.1},{TOP:.1}")), "{share}");
        let md = markdown("shop", &r);
        assert!(
            md.starts_with("### rollout: rolling of shop/web: Succeeded"),
            "{md}"
        );
        assert!(md.contains("src=\"data:image/svg+xml;base64,"));
        assert_eq!(md.matches("\n| ").count(), 5 + 1, "{md}");
    }

    #[test]
    fn a_failed_gate_a_pause_and_the_rollback() {
        let mut r = marked(&[
            (0, What::Started),
            (0, What::StepStarted { step: 0 }),
            (1, What::StepDone { step: 0 }),
            (1, What::StepStarted { step: 1 }),
            (3, What::StepDone { step: 1 }),
            (
                3,
                What::Paused {
                    step: 2,
                    until: None,
                    by_user: true,
                },
            ),
            (9, What::Resumed { step: 2 }),
            (9, What::StepStarted { step: 2 }),
            (
                11,
                What::StepFailed {
                    step: 2,
                    cause: RollbackCause::GateFailed,
                    message: "web-1 answered <500>".into(),
                },
            ),
            (
                11,
                What::RollbackStarted {
                    cause: RollbackCause::GateFailed,
                    message: "x".into(),
                },
            ),
            (
                14,
                What::Finished {
                    phase: Phase::RolledBack,
                    message: "back".into(),
                },
            ),
        ]);
        r.phase = Phase::RolledBack;
        let svg = timeline_svg("shop", &r);
        let doc = parse(&svg);
        assert_eq!(count(&doc, "step"), 3, "{svg}");
        assert_eq!(count(&doc, "fail"), 1);
        assert_eq!(count(&doc, "pause"), 1);
        assert_eq!(count(&doc, "rollback"), 1);
        assert!(svg.contains("&lt;500&gt;"));
        let final_state = by_id(&doc, "final").and_then(|n| n.text());
        assert_eq!(final_state, Some("RolledBack"));
    }

    #[test]
    fn shares_of_each_kind_of_plan() {
        let r = sample_state();
        assert_eq!(share_after(&r.plan, 0, "web"), 0.0);
        assert_eq!(share_after(&r.plan, 2, "web"), 50.0);
        assert_eq!(share_after(&r.plan, 5, "web"), 100.0);
        let mut bg = r.plan.clone();
        bg.steps = vec![
            Step::CreateTwin {
                set: "web-bg1".into(),
                replicas: 2,
            },
            Step::SwitchTraffic,
        ];
        assert_eq!(share_after(&bg, 1, "web"), 0.0);
        assert_eq!(share_after(&bg, 2, "web"), 100.0);
        let mut recreate = r.plan.clone();
        recreate.steps = vec![
            Step::Scale {
                set: "web".into(),
                replicas: 0,
            },
            Step::SetTemplate,
            Step::Scale {
                set: "web".into(),
                replicas: 2,
            },
        ];
        assert_eq!(share_after(&recreate, 2, "web"), 0.0);
        assert_eq!(share_after(&recreate, 3, "web"), 100.0);
    }
}
