//! The agent's answers to the fleet's two other Serf queries (SPEC 8.8),
//! each one line on stdout, which Serf hands back as this host's answer
//! (it drops answers over 1 KiB):
//! - `stretcher-status`: what this host runs, from its `--report-file`
//!   (the last run) and `--state-dir` (the checksum live in each dest), as
//!   one JSON object ([`HostStatus`]).
//! - `stretcher-rollback`: the payload is a manifest URL; each release
//!   dest whose last recorded deploy came from it, and still runs it, is
//!   switched back as `stretcher rollback` does (`ok rolled back <dest>
//!   from <release> to <release>`, or `failed rollback: <error>`).
//!
//! Any other query name deploys, as it always has.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cli::Config;
use crate::event::{self, Invocation};
use crate::releases::{self, Layout};
use crate::report::{Report, RunResult};
use crate::state::{self, StateDir};

/// The query answered with this host's status.
pub const STATUS: &str = "stretcher-status";
/// The query answered by rolling a release dest back.
pub const ROLLBACK: &str = "stretcher-rollback";

/// Room for the status object, under Serf's 1 KiB.
const MAX_STATUS: usize = 900;

/// The queries answered here instead of deploying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// `stretcher-status`.
    Status,
    /// `stretcher-rollback`.
    Rollback,
}

impl Answer {
    /// The answer a Serf query handler owes, when its query is not a deploy.
    pub fn for_query(how: &Invocation) -> Option<Answer> {
        if !how.is_serf_query() {
            return None;
        }
        match how.serf_name.as_deref() {
            Some(STATUS) => Some(Answer::Status),
            Some(ROLLBACK) => Some(Answer::Rollback),
            _ => None,
        }
    }

    /// The one answer line.
    pub async fn line(self, config: &Config, how: &Invocation) -> String {
        match self {
            Answer::Status => status(config).fit(),
            Answer::Rollback => match rollback(config, how).await {
                Ok(done) => crate::query::one_line(&format!("ok rolled back {done}")),
                Err(e) => crate::query::one_line(&format!("failed rollback: {e:#}")),
            },
        }
    }
}

/// A host's `stretcher-status` answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The last run, from `--report-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<LastRun>,
    /// What each dest runs now.
    #[serde(default)]
    pub dests: Vec<LiveDest>,
    /// Dests left out to keep the answer short.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_dests: usize,
    /// Why the agent could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The last run, in short.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LastRun {
    /// `success`, `failure` or `skipped`.
    pub result: String,
    /// When it started.
    pub at: String,
    /// The step it failed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The manifest URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
}

/// What one dest runs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveDest {
    /// The dest.
    pub dest: String,
    /// The live archive's checksum (only its first 8 digits after a
    /// rollback to a release whose deploy is no longer recorded).
    pub checksum: String,
    /// The live release (`sync_strategy: release`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl HostStatus {
    /// The JSON line, shortened to fit a Serf answer: the error first,
    /// then dests from the end.
    fn fit(mut self) -> String {
        let line = |s: &HostStatus| serde_json::to_string(s).unwrap_or_default();
        if let Some(error) = self.last_run.as_mut().and_then(|r| r.error.as_mut()) {
            if error.len() > 200 {
                *error = crate::query::truncate(error, 200);
            }
        }
        while line(&self).len() > MAX_STATUS && !self.dests.is_empty() {
            self.dests.pop();
            self.more_dests += 1;
        }
        if line(&self).len() > MAX_STATUS {
            if let Some(run) = self.last_run.as_mut() {
                run.error = None;
                run.manifest = None;
            }
        }
        line(&self)
    }
}

/// This host's status from the agent's report file and state dir.
fn status(config: &Config) -> HostStatus {
    let (report_file, state_dir) = (config.report_file.as_deref(), config.state_dir.as_deref());
    if report_file.is_none() && state_dir.is_none() {
        return HostStatus {
            error: Some("the agent runs without --report-file or --state-dir".into()),
            ..HostStatus::default()
        };
    }
    let mut status = HostStatus::default();
    let report = match report_file.map(Report::read).transpose() {
        Ok(report) => report.flatten(),
        Err(e) => {
            status.error = Some(format!("{e:#}"));
            None
        }
    };
    status.last_run = report.as_ref().map(|r| LastRun {
        result: r.result.name().to_string(),
        at: r.started_at.clone(),
        step: r.step.clone(),
        error: r.error.clone(),
        manifest: r.manifest.clone(),
    });
    match state_dir.map(state::read_dests) {
        Some(Ok(dests)) => {
            status.dests = dests
                .into_iter()
                .filter_map(|(dest, record)| live(&dest, &record.checksum))
                .collect();
        }
        Some(Err(e)) => status.error = Some(format!("{e:#}")),
        None => {
            // Without a state dir, only a successful last run tells.
            let last_ok = report.filter(|r| r.result == RunResult::Success);
            if let Some((dest, sum)) = last_ok.and_then(|r| r.dest.zip(r.checksum)) {
                status.dests.extend(live(&dest, &sum));
            }
        }
    }
    status
}

/// What `dest` runs, given the checksum last deployed there: for a release
/// dest, the live release says (it may have been rolled back).
fn live(dest: &str, deployed: &str) -> Option<LiveDest> {
    let release = Layout::of(Path::new(dest)).ok().and_then(|l| l.live());
    let checksum = match release.as_deref().and_then(releases::checksum_prefix) {
        Some(prefix) if !same_prefix(deployed, prefix) => prefix.to_string(),
        _ => deployed.to_string(),
    };
    (!checksum.is_empty()).then(|| LiveDest {
        dest: dest.to_string(),
        checksum,
        release,
    })
}

fn same_prefix(checksum: &str, prefix: &str) -> bool {
    checksum
        .get(..prefix.len())
        .is_some_and(|c| c.eq_ignore_ascii_case(prefix))
}

/// Rolls back each release dest deployed from the manifest URL on stdin;
/// returns what it switched.
async fn rollback(config: &Config, how: &Invocation) -> Result<String> {
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let url = event::read_event(stdin, how)
        .await
        .context("reading the manifest URL to roll back")?
        .url;
    let state = config
        .state_dir
        .as_deref()
        .map(StateDir::open)
        .transpose()?;
    let dests = deployed_from(config, &url)?;
    if dests.is_empty() {
        bail!("no deploy of {url} is recorded here (the agent's --state-dir or --report-file)");
    }
    let mut done = Vec::new();
    for (dest, checksum) in dests {
        let _lock = crate::lock::acquire_switched(&dest, config.lock_timeout).await?;
        let layout = Layout::of(Path::new(&dest))?;
        let from = layout
            .live()
            .ok_or_else(|| anyhow!("{dest} is not a sync_strategy: release dest"))?;
        if !releases::checksum_prefix(&from).is_some_and(|p| same_prefix(&checksum, p)) {
            bail!("{dest} no longer runs {url} (live: {from})");
        }
        releases::rollback(Path::new(&dest), None, state.as_ref())?;
        let to = layout.live().unwrap_or_default();
        done.push(format!("{dest} from {from} to {to}"));
    }
    Ok(done.join("; "))
}

/// The dests (and checksums) whose last recorded deploy came from `url`:
/// from the state dir, else from the report of a successful last run.
fn deployed_from(config: &Config, url: &str) -> Result<Vec<(String, String)>> {
    if let Some(dir) = config.state_dir.as_deref() {
        return Ok(state::read_dests(dir)?
            .into_iter()
            .filter(|(_, r)| r.manifest == url && !r.checksum.is_empty())
            .map(|(dest, r)| (dest, r.checksum))
            .collect());
    }
    let Some(path) = config.report_file.as_deref() else {
        return Ok(Vec::new());
    };
    let report = Report::read(path)?
        .filter(|r| r.result == RunResult::Success && r.manifest.as_deref() == Some(url));
    Ok(report
        .and_then(|r| r.dest.zip(r.checksum))
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_status_drops_dests_to_fit_a_serf_answer() {
        let status = HostStatus {
            last_run: Some(LastRun {
                result: "failure".into(),
                at: "2026-01-01T00:00:00Z".into(),
                step: Some("post".into()),
                error: Some("x".repeat(5000)),
                manifest: Some("http://deploy.internal/app.yml".into()),
            }),
            dests: (0..20)
                .map(|i| LiveDest {
                    dest: format!("/srv/app{i}"),
                    checksum: "a".repeat(64),
                    release: None,
                })
                .collect(),
            ..HostStatus::default()
        };
        let line = status.fit();
        assert!(line.len() <= MAX_STATUS, "{}", line.len());
        let back: HostStatus = serde_json::from_str(&line).unwrap();
        assert!(back.more_dests > 0);
        assert_eq!(back.dests.len() + back.more_dests, 20);
        assert_eq!(back.last_run.unwrap().step.as_deref(), Some("post"));
    }
}
