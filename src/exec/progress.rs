//! Progress for people, on stderr: one line per step with its timing, the failure figures when
//! a gate fails, what to run next when the run stops at a hold. Separate from the `tracing`
//! logs (RUST_LOG) and from stdout, which carries only command results (`-o json`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `850ms`, `4.2s`, `2m 5s`, `1h 3m`.
pub fn format_elapsed(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if secs < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    if secs < 3600 {
        return format!("{}m {}s", secs / 60, secs % 60);
    }
    format!("{}h {}m", secs / 3600, (secs % 3600) / 60)
}

/// Where progress lines go.
#[derive(Clone, Default)]
pub struct Progress {
    /// `None`: stderr. Tests read lines from the buffer instead.
    buffer: Option<Arc<Mutex<Vec<String>>>>,
    quiet: bool,
    /// Set when stderr is a terminal: the live status line ([`super::live`]).
    terminal: Option<super::live::Terminal>,
}

impl Progress {
    pub fn stderr(quiet: bool) -> Progress {
        Progress {
            buffer: None,
            quiet,
            terminal: if quiet {
                None
            } else {
                super::live::Terminal::stderr()
            },
        }
    }

    /// Collects lines in memory (tests).
    pub fn memory() -> Progress {
        Progress {
            buffer: Some(Arc::new(Mutex::new(Vec::new()))),
            quiet: false,
            terminal: None,
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.buffer
            .as_ref()
            .and_then(|b| b.lock().ok().map(|l| l.clone()))
            .unwrap_or_default()
    }

    /// Prints one line (or several, for a multi-line message).
    pub fn say(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        match &self.buffer {
            Some(buffer) => {
                if let Ok(mut lines) = buffer.lock() {
                    lines.extend(text.lines().map(String::from));
                }
            }
            None if self.quiet => {}
            None => match &self.terminal {
                Some(terminal) => terminal.line(text),
                None => eprintln!("{text}"),
            },
        }
    }

    /// A step's line: `[2/7] 4.2s  lower partition to 2: ...`.
    pub fn step(&self, index: usize, total: usize, elapsed: Duration, text: &str) {
        let width = total.to_string().len();
        self.say(format!(
            "[{:>width$}/{total}] {:>7}  {text}",
            index + 1,
            format_elapsed(elapsed)
        ));
    }
}

/// The live view, in a terminal only (elsewhere these do nothing).
impl Progress {
    /// A step began: `label` is `[3/5]` or `[rollback 1/3]`.
    pub fn live_begin(&self, label: impl FnOnce() -> String, text: impl FnOnce() -> String) {
        if let Some(terminal) = &self.terminal {
            terminal.begin(label(), text());
        }
    }

    /// What the current step waits on now (computed only for a terminal).
    pub fn live_detail(&self, detail: impl FnOnce() -> String) {
        if let Some(terminal) = &self.terminal {
            terminal.detail(detail());
        }
    }

    /// The HTTP probes of the current step's gate, counted as they end.
    pub fn live_probes(&self, probes: &crate::gate::probe::ProbeTally) {
        if let Some(terminal) = &self.terminal {
            terminal.probes(probes.clone());
        }
    }

    /// The current step ended.
    pub fn live_end(&self) {
        if let Some(terminal) = &self.terminal {
            terminal.end();
        }
    }

    /// Keeps the elapsed time of the status line moving until the value is dropped.
    pub fn live_ticker(&self) -> Option<super::live::Ticker> {
        self.terminal.as_ref().map(super::live::Ticker::start)
    }
}

/// Where command results go: stdout, or memory in tests.
#[derive(Clone, Default)]
pub struct Out {
    buffer: Option<Arc<Mutex<String>>>,
}

impl Out {
    pub fn stdout() -> Out {
        Out { buffer: None }
    }

    pub fn memory() -> Out {
        Out {
            buffer: Some(Arc::new(Mutex::new(String::new()))),
        }
    }

    pub fn text(&self) -> String {
        self.buffer
            .as_ref()
            .and_then(|b| b.lock().ok().map(|t| t.clone()))
            .unwrap_or_default()
    }

    /// Prints `text` as it is (add the newline yourself).
    pub fn print(&self, text: &str) {
        use std::io::Write;
        match &self.buffer {
            Some(buffer) => {
                if let Ok(mut t) = buffer.lock() {
                    t.push_str(text);
                }
            }
            None => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elapsed_times() {
        let cases = [
            (Duration::from_millis(0), "0ms"),
            (Duration::from_millis(850), "850ms"),
            (Duration::from_millis(4230), "4.2s"),
            (Duration::from_secs(125), "2m 5s"),
            (Duration::from_secs(3780), "1h 3m"),
        ];
        for (d, text) in cases {
            assert_eq!(format_elapsed(d), text);
        }
    }

    #[test]
    fn step_lines_align() {
        let p = Progress::memory();
        p.step(1, 12, Duration::from_millis(4200), "gate web-2: passed");
        p.say("two\nlines");
        assert_eq!(
            p.lines(),
            ["[ 2/12]    4.2s  gate web-2: passed", "two", "lines"]
        );
    }
}
