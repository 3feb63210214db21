//! The terminal progress bar behind the library's [`Progress`] reports:
//! drawn on stderr only when it is a terminal and the output is not
//! `--json`; otherwise every report is a cheap no-op.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use strata::progress::Progress;

pub struct TerminalProgress {
    bar: ProgressBar,
}

impl TerminalProgress {
    fn hidden() -> Self {
        TerminalProgress {
            bar: ProgressBar::hidden(),
        }
    }

    /// A byte-counting bar with throughput and ETA, shown if `wanted` and
    /// stderr is a terminal.
    pub fn bytes(label: &str, wanted: bool) -> Self {
        if !wanted || !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        TerminalProgress { bar }
    }
}

impl Progress for TerminalProgress {
    fn is_visible(&self) -> bool {
        !self.bar.is_hidden()
    }

    fn add_total(&self, amount: u64) {
        self.bar.inc_length(amount);
    }

    fn advance(&self, amount: u64) {
        self.bar.inc(amount);
    }

    fn message(&self, text: String) {
        if self.is_visible() {
            self.bar.set_message(text);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
