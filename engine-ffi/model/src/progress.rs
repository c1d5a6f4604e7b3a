//! Load progress: an indicatif bar when stderr is a terminal, `tracing` lines otherwise.
//!
//! This is the hook weight loaders (GGUF tensor mapping, safetensors reading) call:
//! `let p = LoadProgress::new("weights", total_bytes); p.inc(n); ...; p.finish();`

use std::io::IsTerminal;
use std::time::Instant;

/// Progress of one loading phase, counted in bytes.
pub struct LoadProgress {
    bar: Option<indicatif::ProgressBar>,
    label: String,
    total: u64,
    start: Instant,
}

impl LoadProgress {
    /// Starts a phase of `total_bytes`; logs a line when stderr is not a terminal.
    pub fn new(label: &str, total_bytes: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total_bytes);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_string());
            bar
        });
        if bar.is_none() {
            tracing::info!(phase = label, bytes = total_bytes, "loading");
        }
        Self {
            bar,
            label: label.to_string(),
            total: total_bytes,
            start: Instant::now(),
        }
    }

    /// Records `bytes` more done.
    pub fn inc(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    /// Ends the phase with a log line giving the time taken.
    pub fn finish(self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        tracing::info!(
            phase = %self.label,
            bytes = self.total,
            secs = self.start.elapsed().as_secs_f64(),
            "loaded"
        );
    }
}
