//! Progress on stderr while apply runs: one byte-counting bar on a terminal, plain lines
//! otherwise; nothing with `--quiet` or `--json`.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::apply::Reporter;

use super::output::Output;

/// Turns apply's events into terminal output.
pub struct ProgressReporter {
    enabled: bool,
    bar: Option<ProgressBar>,
}

impl ProgressReporter {
    pub fn new(out: Output) -> Self {
        let enabled = !out.quiet && !out.json;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar
        });
        ProgressReporter { enabled, bar }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.enabled => eprintln!("{text}"),
            None => {}
        }
    }
}

impl Reporter for ProgressReporter {
    fn download_started(&self, _model: &str, path: &str, size: u64) {
        if let Some(bar) = &self.bar {
            bar.inc_length(size);
            bar.set_message(path.to_string());
        }
    }

    fn download_progress(&self, _model: &str, _path: &str, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn download_finished(&self, model: &str, path: &str) {
        self.line(&format!("  downloaded {model}/{path}"));
    }

    fn step(&self, message: &str) {
        self.line(&format!("  {message}"));
    }
}
