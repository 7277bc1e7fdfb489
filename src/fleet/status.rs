//! `stretcher fleet status`: asks every matching host what it runs (the
//! `stretcher-status` query) and prints the hosts grouped by the checksum
//! live in their dests, the largest group first, so a host on another
//! version (one that missed an event, or failed a deploy) stands out.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Result;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ask::{ask, Answers, Request};
use super::table::{columns, hosts, json_object, names};
use super::{anchored, connect, pick, Picked, STATUS};
use crate::answer::HostStatus;
use crate::cli::FleetStatusArgs;

/// Digits of a checksum that name a version (as in release names).
const SHORT: usize = 8;

/// Runs `fleet status`; `Ok(true)` when every host answered.
pub async fn run(args: FleetStatusArgs) -> Result<bool> {
    let client = connect(&args.rpc).await?;
    let picked = pick(&client, &args.rpc.tags, &[]).await?;
    let expected: BTreeSet<String> = picked.alive.iter().cloned().collect();
    let req = Request {
        name: STATUS,
        payload: b"",
        nodes: None,
        tags: anchored(&args.rpc.tags),
        timeout: args.timeout,
    };
    let got = ask(&client, &req, &expected, &CancellationToken::new(), |_| {}).await?;
    let view = View::of(&picked, &got);
    match args.json {
        true => println!("{}", view.json()),
        false => print!("{}", view.text()),
    }
    Ok(view.missing.is_empty())
}

/// The answers, sorted out.
struct View {
    /// Each host's answer: its status, or the line when it is not one.
    hosts: BTreeMap<String, Result<HostStatus, String>>,
    /// Short checksum (or `none`/`unknown`) → the hosts (or `host:dest`).
    groups: Vec<(String, Vec<String>)>,
    /// Hosts without an answer, and why.
    missing: Vec<(String, String)>,
}

impl View {
    fn of(picked: &Picked, got: &Answers) -> Self {
        let hosts: BTreeMap<String, Result<HostStatus, String>> = got
            .answers
            .iter()
            .map(|(node, a)| {
                let parsed = serde_json::from_str::<HostStatus>(&a.line);
                (node.clone(), parsed.map_err(|_| a.line.clone()))
            })
            .collect();
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (node, status) in &hosts {
            let mut add = |key: String, who: String| groups.entry(key).or_default().push(who);
            match status {
                Ok(s) if s.dests.len() == 1 => add(short(&s.dests[0].checksum), node.clone()),
                Ok(s) if !s.dests.is_empty() => {
                    for d in &s.dests {
                        add(short(&d.checksum), format!("{node}:{}", d.dest));
                    }
                }
                Ok(s) if s.error.is_none() => add("none".into(), node.clone()),
                _ => add("unknown".into(), node.clone()),
            }
        }
        let mut groups: Vec<(String, Vec<String>)> = groups.into_iter().collect();
        groups.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
        let mut missing: Vec<(String, String)> = picked
            .alive
            .iter()
            .filter(|n| !got.answers.contains_key(*n))
            .map(|n| (n.clone(), got.why_missing(n).to_string()))
            .collect();
        missing.extend(picked.down.iter().map(|(n, why)| (n.clone(), why.clone())));
        View {
            hosts,
            groups,
            missing,
        }
    }

    fn text(&self) -> String {
        let mut rows = vec![vec!["CHECKSUM".into(), "HOSTS".into(), "NODES".into()]];
        for (key, who) in &self.groups {
            rows.push(vec![key.clone(), who.len().to_string(), names(who)]);
        }
        if !self.missing.is_empty() {
            let who: Vec<String> = self
                .missing
                .iter()
                .map(|(n, why)| format!("{n} ({why})"))
                .collect();
            rows.push(vec!["no answer".into(), who.len().to_string(), names(&who)]);
        }
        let mut out = columns(&rows);
        let notes: Vec<Vec<String>> = self.hosts.iter().filter_map(note).collect();
        if !notes.is_empty() {
            out.push_str(&format!("\nNeeds a look ({}):\n", hosts(notes.len())));
            out.push_str(&columns(&notes));
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let hosts: serde_json::Map<String, serde_json::Value> = self
            .hosts
            .iter()
            .map(|(node, s)| {
                let v = match s {
                    Ok(status) => json!(status),
                    Err(line) => json!({"answer": line}),
                };
                (node.clone(), v)
            })
            .collect();
        json!({
            "checksums": json_object(&self.groups),
            "hosts": hosts,
            "no_answer": json_object(&self.missing),
        })
    }
}

/// A line about a host whose last run failed or that could not tell.
fn note((node, status): (&String, &Result<HostStatus, String>)) -> Option<Vec<String>> {
    let text = match status {
        Err(line) => format!(
            "answered {line:?} (is its handler stretcher with --report-file or --state-dir?)"
        ),
        Ok(HostStatus {
            error: Some(error), ..
        }) => error.clone(),
        Ok(HostStatus {
            last_run: Some(run),
            ..
        }) if run.result == "failure" => format!(
            "last run failed at {} ({}): {}",
            run.step.as_deref().unwrap_or("?"),
            run.at,
            run.error.as_deref().unwrap_or("")
        ),
        Ok(_) => return None,
    };
    Some(vec![format!("  {node}"), text])
}

/// The first digits of a checksum, lowercase.
fn short(checksum: &str) -> String {
    checksum
        .chars()
        .take(SHORT)
        .collect::<String>()
        .to_lowercase()
}
