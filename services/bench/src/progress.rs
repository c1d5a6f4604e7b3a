//! Progress: an indicatif bar on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

const LOG_EVERY: Duration = Duration::from_secs(5);

/// Counts finished requests and shows them.
pub struct Progress {
    bar: Option<ProgressBar>,
    /// `None`: silent, or drawing a bar.
    log: Option<Mutex<Instant>>,
    total: Option<u64>,
    done: AtomicU64,
    failed: AtomicU64,
    start: Instant,
}

impl Progress {
    /// `show`: report at all; `total`: requests expected, when known.
    pub fn new(show: bool, total: Option<u64>) -> Self {
        let start = Instant::now();
        let (bar, log) = if !show {
            (None, None)
        } else if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let template = if total.is_some() {
                "{elapsed_precise} [{bar:40}] {pos}/{len} requests ({per_sec}) {msg}"
            } else {
                "{elapsed_precise} {spinner} {pos} requests ({per_sec}) {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            (Some(bar), None)
        } else {
            (None, Some(Mutex::new(start)))
        };
        Self {
            bar,
            log,
            total,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            start,
        }
    }

    /// One request finished.
    pub fn inc(&self, ok: bool) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let failed = if ok {
            self.failed.load(Ordering::Relaxed)
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed) + 1
        };
        if let Some(bar) = &self.bar {
            bar.inc(1);
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
        }
        if let Some(log) = &self.log {
            let mut last = log.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= LOG_EVERY {
                *last = Instant::now();
                let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
                eprintln!(
                    "bench: {done}{of} requests done, {failed} failed, {:.0} s",
                    self.start.elapsed().as_secs_f64()
                );
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}
