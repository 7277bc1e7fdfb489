//! `stretcher status`: what an operator types when paged. The last run
//! (from the agent's `--report-file`) and the last deploy to each dest
//! (from its `--state-dir`), as a short text or as JSON for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::report::{Report, RunResult};
use crate::state::{self, DestRecord};

/// What `status --json` prints: `null` for what was not asked for (or,
/// for `last_run`, not recorded yet).
#[derive(Serialize)]
struct Status {
    last_run: Option<Report>,
    dests: Option<BTreeMap<String, DestRecord>>,
}

/// The status text for the agent's `report_file` and `state_dir`; at least
/// one must be given.
pub fn show(report_file: Option<&Path>, state_dir: Option<&Path>, json: bool) -> Result<String> {
    if report_file.is_none() && state_dir.is_none() {
        bail!("status needs --report-file or --state-dir (the paths the agent writes)");
    }
    let status = Status {
        last_run: report_file.map(Report::read).transpose()?.flatten(),
        dests: state_dir.map(state::read_dests).transpose()?,
    };
    if json {
        return Ok(serde_json::to_string_pretty(&status)? + "\n");
    }
    let mut out = String::new();
    if let Some(path) = report_file {
        match &status.last_run {
            Some(report) => last_run(&mut out, report),
            None => {
                let _ = writeln!(out, "No run recorded yet in {}", path.display());
            }
        }
    }
    if let (Some(dir), Some(dests)) = (state_dir, &status.dests) {
        if !out.is_empty() {
            out.push('\n');
        }
        if dests.is_empty() {
            let _ = writeln!(out, "No deploy recorded yet in {}", dir.display());
        } else {
            let _ = writeln!(out, "Last deploy to each dest ({}):", dir.display());
        }
        for (dest, record) in dests {
            let _ = writeln!(out, "  {dest}");
            field(&mut out, "deployed", Some(&record.deployed_at));
            field(&mut out, "checksum", Some(&record.checksum));
            field(&mut out, "manifest", Some(&record.manifest));
            field(&mut out, "event", record.event.as_ref());
            for rb in &record.rolled_back {
                let line = format!("{} from {} to {}", rb.at, rb.from, rb.to);
                field(&mut out, "rollback", Some(&line));
            }
        }
    }
    Ok(out)
}

fn last_run(out: &mut String, r: &Report) {
    let took = std::time::Duration::try_from_secs_f64(r.duration_seconds).unwrap_or_default();
    let _ = writeln!(
        out,
        "Last run: {} at {}, took {}, on {} (stretcher {})",
        r.result.name(),
        r.started_at,
        crate::units::format_duration(took),
        r.host,
        r.version
    );
    if r.result == RunResult::Failure {
        field(out, "step", r.step.as_ref());
        field(out, "error", r.error.as_ref());
    }
    if r.rolled_back {
        let live = r.release.clone().unwrap_or_default();
        field(
            out,
            "rollback",
            Some(&format!("dest switched back to {live}")),
        );
    }
    field(out, "manifest", r.manifest.as_ref());
    field(out, "event", r.event_id.as_ref());
    field(out, "src", r.src.as_ref());
    field(out, "checksum", r.checksum.as_ref());
    field(out, "dest", r.dest.as_ref());
    field(out, "release", r.release.as_ref());
    if r.bytes > 0 {
        field(out, "bytes", Some(&crate::units::comma(r.bytes)));
    }
}

/// An indented `name: value` line, for values that are there.
fn field(out: &mut String, name: &str, value: Option<&String>) {
    if let Some(value) = value.filter(|v| !v.is_empty()) {
        let _ = writeln!(out, "    {:<9} {value}", format!("{name}:"));
    }
}
