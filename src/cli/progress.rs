//! Progress on stderr while apply runs.
//!
//! - On a terminal: one bar per running download plus a total bar, each with bytes, rate and
//!   ETA (`indicatif`), and a line per finished file or step.
//! - stderr not a terminal (CI logs): a plain summary line every [`LINE_INTERVAL`] (bytes done,
//!   total, rate, ETA) plus the per-file and step lines.
//! - `--quiet`: nothing.
//! - `--json`: nothing, unless `KMM_PROGRESS_JSON=1` asks for progress events, then one JSON
//!   object per line on stderr: `{"event":"download_started","model","path","size"}`,
//!   `{"event":"progress","bytes_done","bytes_total","bytes_per_sec"}` (at most every
//!   [`JSON_INTERVAL`]), `{"event":"download_finished","model","path"}`,
//!   `{"event":"step","message"}`. stdout keeps its single envelope.
//!
//! Edges: turns [`Reporter`] events into stderr output; decides nothing.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::apply::Reporter;
use crate::ops;

use super::output::Output;

/// Plain-text progress lines when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(5);
/// JSON progress events.
pub const JSON_INTERVAL: Duration = Duration::from_secs(1);

enum Mode {
    Off,
    Bars {
        multi: MultiProgress,
        total: ProgressBar,
        files: Mutex<HashMap<(String, String), ProgressBar>>,
    },
    Lines,
    Json,
}

/// Turns apply's events into terminal output.
pub struct ProgressReporter {
    mode: Mode,
    started: Instant,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    /// When the last periodic line / JSON event went out.
    last_report: Mutex<Instant>,
}

impl ProgressReporter {
    /// Bars or lines for humans; nothing with `--quiet`; with `--json`, JSON events on stderr
    /// only when `progress_json`.
    pub fn with_json(out: Output, progress_json: bool) -> Self {
        let mode = if out.json {
            if progress_json { Mode::Json } else { Mode::Off }
        } else if out.quiet {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(0));
            total.set_style(style(
                "total [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            ));
            Mode::Bars {
                multi,
                total,
                files: Mutex::new(HashMap::new()),
            }
        } else {
            Mode::Lines
        };
        ProgressReporter {
            mode,
            started: Instant::now(),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            last_report: Mutex::new(Instant::now()),
        }
    }

    /// Clears the bars.
    pub fn finish(&self) {
        if let Mode::Bars { multi, total, .. } = &self.mode {
            total.finish_and_clear();
            let _ = multi.clear();
        }
    }

    fn line(&self, text: &str) {
        match &self.mode {
            Mode::Bars { multi, .. } => {
                let _ = multi.println(text);
            }
            Mode::Lines => eprintln!("{text}"),
            Mode::Off | Mode::Json => {}
        }
    }

    fn json(&self, value: serde_json::Value) {
        eprintln!("{value}");
    }

    /// Whether `interval` has passed since the last periodic report (and if so, resets it).
    fn due(&self, interval: Duration) -> bool {
        let mut last = self.last_report.lock().expect("progress lock");
        if last.elapsed() >= interval {
            *last = Instant::now();
            true
        } else {
            false
        }
    }

    fn rate(&self, done: u64) -> f64 {
        done as f64 / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// `12.3 MB/s`-style text for plain lines.
fn human_bytes(bytes: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

/// The plain progress line: done, total, percent, rate, ETA.
fn progress_line(done: u64, total: u64, rate: f64) -> String {
    let percent = if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    };
    let eta = if rate > 0.0 && total > done {
        format!("{}s", ((total - done) as f64 / rate).ceil() as u64)
    } else {
        "-".to_string()
    };
    format!(
        "  downloading: {} of {} ({percent:.0}%) at {}/s, ETA {eta}",
        human_bytes(done as f64),
        human_bytes(total as f64),
        human_bytes(rate)
    )
}

/// The terminal side of [`ops::Reporter`]: status lines on stderr (not with `--quiet` or
/// `--json`), and a [`ProgressReporter`] for each apply run.
impl ops::Reporter for Output {
    fn status(&self, line: &str) {
        Output::status(self, line);
    }

    fn apply_progress(&self, progress_json: bool) -> Box<dyn ops::ApplyProgress + '_> {
        Box::new(ProgressReporter::with_json(*self, progress_json))
    }
}

impl ops::ApplyProgress for ProgressReporter {
    fn finish(&self) {
        ProgressReporter::finish(self);
    }
}

impl Reporter for ProgressReporter {
    fn download_started(&self, model: &str, path: &str, size: u64) {
        self.bytes_total.fetch_add(size, Ordering::Relaxed);
        match &self.mode {
            Mode::Bars {
                multi,
                total,
                files,
            } => {
                total.inc_length(size);
                let bar = multi.insert_before(total, ProgressBar::new(size));
                bar.set_style(style(
                    "{msg:30!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                ));
                bar.set_message(path.to_string());
                files
                    .lock()
                    .expect("progress lock")
                    .insert((model.to_string(), path.to_string()), bar);
            }
            Mode::Json => self.json(serde_json::json!({
                "event": "download_started", "model": model, "path": path, "size": size,
            })),
            Mode::Lines | Mode::Off => {}
        }
    }

    fn download_progress(&self, model: &str, path: &str, bytes: u64) {
        let done = self.bytes_done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        match &self.mode {
            Mode::Bars { total, files, .. } => {
                total.inc(bytes);
                if let Some(bar) = files
                    .lock()
                    .expect("progress lock")
                    .get(&(model.to_string(), path.to_string()))
                {
                    bar.inc(bytes);
                }
            }
            Mode::Lines if self.due(LINE_INTERVAL) => {
                let total = self.bytes_total.load(Ordering::Relaxed);
                eprintln!("{}", progress_line(done, total, self.rate(done)));
            }
            Mode::Json if self.due(JSON_INTERVAL) => self.json(serde_json::json!({
                "event": "progress",
                "bytes_done": done,
                "bytes_total": self.bytes_total.load(Ordering::Relaxed),
                "bytes_per_sec": self.rate(done).round() as u64,
            })),
            _ => {}
        }
    }

    fn download_finished(&self, model: &str, path: &str) {
        if let Mode::Bars { files, .. } = &self.mode
            && let Some(bar) = files
                .lock()
                .expect("progress lock")
                .remove(&(model.to_string(), path.to_string()))
        {
            bar.finish_and_clear();
        }
        if let Mode::Json = self.mode {
            self.json(serde_json::json!({
                "event": "download_finished", "model": model, "path": path,
            }));
        }
        self.line(&format!("  downloaded {model}/{path}"));
    }

    fn step(&self, message: &str) {
        if let Mode::Json = self.mode {
            self.json(serde_json::json!({ "event": "step", "message": message }));
        }
        self.line(&format!("  {message}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_say_done_total_rate_and_eta() {
        let line = progress_line(512 << 20, 1 << 30, (128 << 20) as f64);
        assert_eq!(
            line,
            "  downloading: 512.0 MiB of 1.0 GiB (50%) at 128.0 MiB/s, ETA 4s"
        );
        assert!(progress_line(0, 0, 0.0).contains("ETA -"));
    }
}
