//! `--metrics-file` (SPEC 8.6): the last run as Prometheus text for
//! node_exporter's textfile collector, with run counters that carry over
//! from the previous file. Written atomically through a temp file whose
//! name does not end in `.prom`, so the collector never reads half a file.

use std::fmt::Write as _;
use std::fs::File;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::report::{Report, RunResult};

const RUNS: &str = "stretcher_runs_total";

/// Runs counted so far, per result, in [`RunResult::ALL`] order.
type Counts = [u64; 3];

/// Replaces the metrics file at `path` with `report`'s run, its counter
/// incremented. Runs writing the same file take turns (an flock on its
/// directory), so none loses another's count.
pub fn update(path: &Path, report: &Report) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Best effort: a directory we cannot open for the lock is one we
    // cannot write into either, and that error names the path.
    let _turn = File::open(dir).and_then(|d| d.lock().map(|()| d));
    let mut counts = previous_counts(path);
    counts[index(report.result)] += 1;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    crate::state::write_atomic(path, render(report, &counts, now).as_bytes(), 0o644)
        .with_context(|| format!("writing metrics file {}", path.display()))
}

fn index(result: RunResult) -> usize {
    RunResult::ALL
        .iter()
        .position(|r| *r == result)
        .unwrap_or_default()
}

/// The counters in the file at `path`: zero when it does not exist yet,
/// and zero with a log line when it cannot be read as one of ours.
fn previous_counts(path: &Path) -> Counts {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Counts::default(),
        Err(e) => {
            log::info!(
                "cannot read metrics file {}: {e}; counting runs from zero",
                path.display()
            );
            return Counts::default();
        }
    };
    parse_counts(&text).unwrap_or_else(|| {
        log::info!(
            "metrics file {} has no readable {RUNS} counters; counting runs from zero",
            path.display()
        );
        Counts::default()
    })
}

/// Reads `stretcher_runs_total{result="…"} N` lines; `None` when there is
/// none, or one is malformed.
fn parse_counts(text: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    let mut found = false;
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix(RUNS) else {
            continue;
        };
        let (labels, value) = rest.strip_prefix("{result=\"")?.split_once("\"}")?;
        let result = RunResult::ALL.into_iter().find(|r| r.name() == labels)?;
        let value: f64 = value.trim().parse().ok()?;
        if !value.is_finite() || value < 0.0 || value.fract() != 0.0 {
            return None;
        }
        counts[index(result)] = value as u64;
        found = true;
    }
    found.then_some(counts)
}

/// The exposition text: gauges for the last run, a counter per result.
fn render(report: &Report, counts: &Counts, now: f64) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    let success = u8::from(report.result != RunResult::Failure);
    gauge(
        "stretcher_last_run_success",
        "1 if the last run deployed (or skipped an event already deployed), 0 if it failed.",
        success.to_string(),
    );
    gauge(
        "stretcher_last_run_timestamp_seconds",
        "When the last run ended, in seconds since the Unix epoch.",
        format!("{now:.3}"),
    );
    gauge(
        "stretcher_last_run_duration_seconds",
        "How long the last run took.",
        report.duration_seconds.to_string(),
    );
    gauge(
        "stretcher_last_run_rolled_back",
        "1 if the last run failed and switched dest back to the previous release, 0 otherwise.",
        u8::from(report.rolled_back).to_string(),
    );
    gauge(
        "stretcher_last_run_bytes",
        "Bytes the last run downloaded.",
        report.bytes.to_string(),
    );
    let _ = writeln!(
        out,
        "# HELP {RUNS} Runs by result: success, failure, or skipped (an event already deployed).\n\
         # TYPE {RUNS} counter"
    );
    for (result, count) in RunResult::ALL.iter().zip(counts) {
        let _ = writeln!(out, "{RUNS}{{result=\"{}\"}} {count}", result.name());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_read_back_what_render_writes() {
        let report = Report {
            result: RunResult::Failure,
            manifest: None,
            src: None,
            checksum: None,
            dest: None,
            release: None,
            rolled_back: true,
            started_at: String::new(),
            duration_seconds: 0.25,
            bytes: 7,
            error: None,
            step: None,
            event_id: None,
            host: String::new(),
            version: String::new(),
        };
        let text = render(&report, &[3, 1, 4], 1.5);
        assert!(text.contains("stretcher_last_run_success 0\n"), "{text}");
        assert!(text.contains("stretcher_last_run_duration_seconds 0.25\n"));
        assert!(
            text.contains("stretcher_last_run_rolled_back 1\n"),
            "{text}"
        );
        assert_eq!(parse_counts(&text), Some([3, 1, 4]));
    }

    #[test]
    fn foreign_or_broken_files_are_not_counters() {
        for text in [
            "",
            "garbage",
            "node_load1 0.5\n",
            "stretcher_runs_total{result=\"success\"} many\n",
            "stretcher_runs_total{result=\"other\"} 1\n",
            "stretcher_runs_total{result=\"success\"} -1\n",
        ] {
            assert_eq!(parse_counts(text), None, "{text:?}");
        }
        let partial = "# x\nstretcher_runs_total{result=\"skipped\"} 2\n";
        assert_eq!(parse_counts(partial), Some([0, 0, 2]));
    }
}
