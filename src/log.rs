//! Go-style log lines (`2016/03/22 12:34:56 message`, local time) on stderr,
//! teed into an in-memory run log that `success`/`failure` hooks read on stdin.
//!
//! One message is one line: control characters in it are escaped (`\n`,
//! `\r`, `\u{1b}`; tabs are kept), so nothing logged from input (an event
//! ID, a hook's output) can forge a line. Text that is many lines is logged
//! a line at a time.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

/// Everything logged during this run, in order, as written to stderr.
static RUN_LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// When set, lines go to the run log only, not to stderr.
static QUIET: AtomicBool = AtomicBool::new(false);

struct GoLogger;

impl log::Log for GoLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        write_line(&record.args().to_string());
    }

    fn flush(&self) {}
}

/// Formats one message as Go's `log.Println` does and writes it to stderr
/// and the run log. A message already ending in a newline gets no second
/// one; any other control character in it is escaped.
fn write_line(msg: &str) {
    let stamp = chrono::Local::now().format("%Y/%m/%d %H:%M:%S");
    let msg = escape(msg.strip_suffix('\n').unwrap_or(msg));
    let line = format!("{stamp} {msg}\n");
    let mut buf = RUN_LOG.lock().unwrap_or_else(|e| e.into_inner());
    buf.extend_from_slice(line.as_bytes());
    // Written under the lock so stderr and the run log keep the same order.
    if !QUIET.load(Ordering::Relaxed) {
        let mut write = || {
            let _ = std::io::stderr().write_all(line.as_bytes());
        };
        match AROUND_STDERR.get() {
            Some(around) => around(&mut write),
            None => write(),
        }
    }
}

/// `msg` with its control characters (but tabs) escaped as Rust escapes
/// them: `\n`, `\r`, `\u{1b}`.
fn escape(msg: &str) -> Cow<'_, str> {
    let escaped = |c: char| c.is_control() && c != '\t';
    if !msg.chars().any(escaped) {
        return Cow::Borrowed(msg);
    }
    let mut out = String::with_capacity(msg.len() + 8);
    for c in msg.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// What wraps each write to stderr, once something draws there too.
static AROUND_STDERR: OnceLock<fn(&mut dyn FnMut())> = OnceLock::new();

/// Has every later write of a line to stderr go through `around`, which
/// runs the write it is given: a display drawn on stderr (a progress bar)
/// clears itself around it and draws again below. The first call wins.
pub fn around_stderr_writes(around: fn(&mut dyn FnMut())) {
    let _ = AROUND_STDERR.set(around);
}

/// Installs the logger. With `quiet`, lines are kept for the hooks but not
/// written to stderr (a `serf query` handler's stderr is merged into its
/// response). Safe to call more than once.
pub fn init(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
    static LOGGER: GoLogger = GoLogger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Whether lines are kept from stderr (see [`init`]).
pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// A copy of the run log so far: what `success`/`failure` hooks get on stdin.
pub fn snapshot() -> Vec<u8> {
    RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped_but_tabs() {
        assert_eq!(escape("plain\ttext"), "plain\ttext");
        assert_eq!(
            escape("a\nb\rc\u{0}d\u{1b}[1m\u{85}"),
            "a\\nb\\rc\\u{0}d\\u{1b}[1m\\u{85}"
        );
    }
}
