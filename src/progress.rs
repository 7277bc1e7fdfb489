//! Progress on a terminal: a bar for the download (bytes, rate, ETA) and a
//! spinner with a count for extraction and sync. Drawn on stderr only when
//! stderr is a terminal and the log goes there (not under `serf query`):
//! handlers, journald and CI logs get the plain log lines and nothing else.
//! Log lines written while a display is up appear above it.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// The display on screen, if any: what [`count`] advances and [`suspend`]
/// clears around a log line.
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Whether [`CURRENT`] holds a display: lets [`count`] skip the lock when
/// nothing is drawn (always, off a terminal).
static SHOWN: AtomicBool = AtomicBool::new(false);

const BAR: &str =
    "downloading [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec} ETA {eta}";
const UNSIZED: &str = "{spinner} downloading {decimal_bytes} {decimal_bytes_per_sec}";
const SPINNER: &str = "{spinner} {msg}: {human_pos} entries ({elapsed})";

/// A progress display on stderr, a no-op off a terminal. When dropped, a
/// download bar is cleared (the log line after it gives the same numbers)
/// and a spinner stays with its final count.
pub struct Progress {
    bar: Option<ProgressBar>,
    keep: bool,
}

impl Progress {
    /// A download bar for `size` bytes, or a byte counter when the size is
    /// unknown. Advance it with [`Progress::add`].
    pub fn download(size: Option<u64>) -> Self {
        Self::show(false, || match size {
            Some(size) => ProgressBar::new(size).with_style(style(BAR).progress_chars("=> ")),
            None => ProgressBar::no_length().with_style(style(UNSIZED)),
        })
    }

    /// A spinner saying `what` is under way, with the count of entries
    /// handled so far (advanced by [`count`]).
    pub fn counting(what: impl Into<String>) -> Self {
        let what = what.into();
        Self::show(true, move || {
            ProgressBar::no_length()
                .with_style(style(SPINNER))
                .with_message(what)
        })
    }

    fn show(keep: bool, make: impl FnOnce() -> ProgressBar) -> Self {
        if !enabled() {
            return Progress { bar: None, keep };
        }
        crate::log::around_stderr_writes(|write| suspend(write));
        let bar = make();
        bar.enable_steady_tick(Duration::from_millis(100));
        *lock() = Some(bar.clone());
        SHOWN.store(true, Ordering::Relaxed);
        Progress {
            bar: Some(bar),
            keep,
        }
    }

    /// Advances the display by `n` (bytes downloaded).
    pub fn add(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        let Some(bar) = self.bar.take() else { return };
        SHOWN.store(false, Ordering::Relaxed);
        lock().take();
        if self.keep {
            bar.finish();
            // The finished line stays; what follows starts below it.
            let _ = std::io::stderr().write_all(b"\n");
        } else {
            bar.finish_and_clear();
        }
    }
}

/// Whether displays are drawn: stderr is a terminal that gets the log.
fn enabled() -> bool {
    !crate::log::is_quiet() && std::io::stderr().is_terminal()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn lock() -> std::sync::MutexGuard<'static, Option<ProgressBar>> {
    CURRENT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts `n` more entries on the display under way (extraction, sync).
/// Costs one atomic load when nothing is drawn.
pub fn count(n: u64) {
    if SHOWN.load(Ordering::Relaxed) {
        if let Some(bar) = lock().as_ref() {
            bar.inc(n);
        }
    }
}

/// Runs `write` (a log line going to stderr) with the display cleared, and
/// draws the display again below it. The log calls it for every line once
/// a display has been shown.
fn suspend<R>(write: impl FnOnce() -> R) -> R {
    let bar = if SHOWN.load(Ordering::Relaxed) {
        lock().clone()
    } else {
        None
    };
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// A reader that [`count`]s the lines passing through it: rsync's `-v`
/// output lists one entry a line.
pub struct CountLines<R>(pub R);

impl<R: Read> Read for CountLines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
        count(lines as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_valid() {
        for template in [BAR, UNSIZED, SPINNER] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn line_counting_passes_bytes_through() {
        let mut out = String::new();
        CountLines("a\nb\n".as_bytes())
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "a\nb\n");
    }
}
