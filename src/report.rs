//! `--report-file` (SPEC 8.6): one JSON object saying how the last run
//! ended, on one line, for monitoring and for `stretcher status`. Written
//! atomically (a temp file in the same directory renamed over the old one),
//! so a reader sees the previous run's report or this one's, never half.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::manifest::Manifest;
use crate::query::Outcome;

/// What a run learns as it goes, for its report: filled in step by step,
/// read once at the end.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The manifest URL, once the event is read.
    pub manifest: Option<String>,
    /// The event's label (a Consul ID, `serf deploy@LTime`), when the URL
    /// came from an event.
    pub event_id: Option<String>,
    /// The manifest's `src`, once it is loaded (and verified).
    pub src: Option<String>,
    /// The manifest's `checksum`.
    pub checksum: Option<String>,
    /// The manifest's `dest`.
    pub dest: Option<String>,
    /// The release directory, when a release strategy deployed into one.
    pub release: Option<String>,
    /// Bytes of `src` downloaded.
    pub bytes: u64,
    /// A failed release deploy switched `dest` back (SPEC 8.7); `release`
    /// is then the release switched back to.
    pub rolled_back: bool,
}

impl Facts {
    /// Notes the event read from stdin.
    pub fn event(&mut self, event: &Event) {
        self.manifest = Some(event.url.clone());
        self.event_id = event.source.as_ref().map(|s| s.label());
    }

    /// Notes the manifest about to be deployed.
    pub fn manifest(&mut self, m: &Manifest) {
        let given = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
        self.src = given(&m.src);
        self.checksum = given(&m.checksum);
        self.dest = given(&m.dest);
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunResult {
    /// Deployed (or ran a commands-only manifest).
    Success,
    /// Failed at some step.
    Failure,
    /// The replay guard skipped an event already deployed.
    Skipped,
}

impl RunResult {
    /// Every result, in the order metrics list them.
    pub const ALL: [RunResult; 3] = [Self::Success, Self::Failure, Self::Skipped];

    /// `success`, `failure` or `skipped`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Skipped => "skipped",
        }
    }
}

/// One run's report: the file's JSON object. Fields not known (the run
/// failed before reaching them, or they do not apply) are `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `success`, `failure` or `skipped`.
    pub result: RunResult,
    /// The manifest URL.
    pub manifest: Option<String>,
    /// The manifest's `src`.
    pub src: Option<String>,
    /// The manifest's `checksum`.
    pub checksum: Option<String>,
    /// The manifest's `dest`.
    pub dest: Option<String>,
    /// The release directory `dest` points to after the run (release
    /// strategies only): the new one, or after an automatic rollback the
    /// one switched back to.
    pub release: Option<String>,
    /// Whether a failed deploy switched `dest` back to the previous
    /// release (SPEC 8.7).
    #[serde(default)]
    pub rolled_back: bool,
    /// When the run started, RFC 3339 in UTC.
    pub started_at: String,
    /// How long the run took.
    pub duration_seconds: f64,
    /// Bytes of `src` downloaded.
    pub bytes: u64,
    /// Why the run failed.
    pub error: Option<String>,
    /// The step it failed in (`download`, `pre`, …).
    pub step: Option<String>,
    /// The event's label, when the URL came from an event.
    pub event_id: Option<String>,
    /// This host's name.
    pub host: String,
    /// The agent's version.
    pub version: String,
}

impl Report {
    /// The report of a run that started at `started_at`, took `took` and
    /// ended with `outcome`.
    pub fn new(facts: Facts, outcome: &Outcome, started_at: DateTime<Utc>, took: Duration) -> Self {
        let (result, step, error) = match outcome {
            Outcome::Deployed { .. } => (RunResult::Success, None, None),
            Outcome::Skipped(_) => (RunResult::Skipped, None, None),
            Outcome::Failed { step, error } => (
                RunResult::Failure,
                Some(step.to_string()),
                Some(error.clone()),
            ),
        };
        Report {
            result,
            manifest: facts.manifest,
            src: facts.src,
            checksum: facts.checksum,
            dest: facts.dest,
            release: facts.release,
            rolled_back: facts.rolled_back,
            started_at: started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            duration_seconds: (took.as_secs_f64() * 1000.0).round() / 1000.0,
            bytes: facts.bytes,
            error,
            step,
            event_id: facts.event_id,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            version: crate::VERSION.to_string(),
        }
    }

    /// Replaces the file at `path` with this report (mode 0644 less the
    /// umask, so monitoring agents can read it).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut line = serde_json::to_vec(self)?;
        line.push(b'\n');
        crate::state::write_atomic(path, &line, 0o644)
            .with_context(|| format!("writing report file {}", path.display()))
    }

    /// The report at `path`; `None` when there is no such file yet.
    pub fn read(path: &Path) -> Result<Option<Self>> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e).with_context(|| format!("reading report file {}", path.display()))
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .with_context(|| format!("reading report file {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_its_step_and_error_and_keeps_every_field() {
        let facts = Facts {
            manifest: Some("file:///m.yml".into()),
            bytes: 42,
            ..Facts::default()
        };
        let outcome = Outcome::Failed {
            step: "download",
            error: "get src failed: nope".into(),
        };
        let started = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let report = Report::new(facts, &outcome, started, Duration::from_millis(1500));
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["result"], "failure");
        assert_eq!(json["step"], "download");
        assert_eq!(json["error"], "get src failed: nope");
        assert_eq!(json["started_at"], "2023-11-14T22:13:20Z");
        assert_eq!(json["duration_seconds"], 1.5);
        assert_eq!(json["bytes"], 42);
        for field in ["release", "src", "event_id"] {
            assert!(json[field].is_null(), "{field}");
        }
        assert_eq!(json["rolled_back"], false);
        assert_eq!(json.as_object().unwrap().len(), 15);
    }

    #[test]
    fn a_report_written_before_rolled_back_existed_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("report.json");
        let mut old = serde_json::to_value(Report::new(
            Facts::default(),
            &Outcome::Skipped("ev".into()),
            DateTime::from_timestamp(0, 0).unwrap(),
            Duration::ZERO,
        ))
        .unwrap();
        old.as_object_mut().unwrap().remove("rolled_back");
        std::fs::write(&path, old.to_string()).unwrap();
        let read = Report::read(&path).unwrap().unwrap();
        assert!(!read.rolled_back);
    }
}
