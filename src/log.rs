//! Go-style log lines (`2016/03/22 12:34:56 message`, local time) on stderr,
//! teed into an in-memory run log that `success`/`failure` hooks read on stdin.

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
/// and the run log. A message already ending in a newline gets no second one.
fn write_line(msg: &str) {
    let stamp = chrono::Local::now().format("%Y/%m/%d %H:%M:%S");
    let mut line = format!("{stamp} {msg}");
    if !line.ends_with('\n') {
        line.push('\n');
    }
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
