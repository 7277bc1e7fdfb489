//! The one-line result a `serf query` handler prints on stdout: it becomes
//! this node's response, so `serf query deploy <url>` shows every host's
//! outcome. Serf drops responses over 1 KiB; the line stays well under.

use std::time::Duration;

/// Longest result line, in bytes.
const MAX_LINE: usize = 900;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The manifest deployed.
    Deployed {
        /// `dest` (empty for a commands-only manifest).
        dest: String,
        /// The archive checksum (empty for a commands-only manifest).
        checksum: String,
    },
    /// The replay guard skipped an event already deployed.
    Skipped(String),
    /// The run failed during `step`.
    Failed {
        /// `event`, `manifest`, `validate`, `lock`, `download`, `pre`,
        /// `extract`, `sync`, `post` or `verify`.
        step: &'static str,
        /// The error, on one line.
        error: String,
    },
}

impl Outcome {
    /// `ok <dest> <sha> <secs>s`, `skipped <event>` or `failed <step>: <error>`.
    pub fn line(&self, took: Duration) -> String {
        let dash = |s: &str| {
            if s.is_empty() {
                "-".to_string()
            } else {
                s.to_string()
            }
        };
        let line = match self {
            Outcome::Deployed { dest, checksum, .. } => format!(
                "ok {} {} {:.2}s",
                dash(dest),
                dash(checksum),
                took.as_secs_f64()
            ),
            Outcome::Skipped(label) => format!("skipped {label}: already deployed"),
            Outcome::Failed { step, error } => format!("failed {step}: {error}"),
        };
        one_line(&line)
    }
}

/// `text` as one answer line: line breaks become spaces, and it is cut
/// to stay under Serf's 1 KiB answer limit.
pub fn one_line(text: &str) -> String {
    truncate(&text.replace(['\n', '\r'], " "), MAX_LINE)
}

/// `text` cut to at most `max` bytes (on a character boundary), with `…`
/// when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_short_and_single() {
        let ok = Outcome::Deployed {
            dest: "/srv/app".into(),
            checksum: "abc".into(),
        };
        assert_eq!(
            ok.line(Duration::from_millis(1234)),
            "ok /srv/app abc 1.23s"
        );
        let failed = Outcome::Failed {
            step: "download",
            error: format!("a\nb{}", "x".repeat(5000)),
        };
        let line = failed.line(Duration::ZERO);
        assert!(line.starts_with("failed download: a b"));
        assert!(line.len() < 1024 && !line.contains('\n'));
    }
}
