//! `stretcher fleet query URL`: the `deploy` query to every matching host
//! at once; each host's answer as it arrives, then who is ok, who failed and
//! who did not answer. Returns as soon as every alive host has answered.

use std::collections::BTreeSet;

use anyhow::Result;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::ask::{ask, Answers, Request};
use super::table::{hosts, names};
use super::{anchored, connect, deployed, pick, secs, Picked, DEPLOY};
use crate::cli::FleetQueryArgs;

/// Runs `fleet query`; `Ok(true)` when every host answered ok.
pub async fn run(args: FleetQueryArgs) -> Result<bool> {
    let client = connect(&args.rpc).await?;
    let picked = pick(&client, &args.rpc.tags, &args.nodes).await?;
    let expected: BTreeSet<String> = picked.alive.iter().cloned().collect();
    let width = expected.iter().map(String::len).max().unwrap_or(0);
    if !args.json {
        println!(
            "Sent {DEPLOY} {} to {} (timeout {})",
            args.url,
            hosts(expected.len()),
            crate::units::format_duration(args.timeout)
        );
    }
    let nodes = (!args.nodes.is_empty()).then_some(args.nodes.as_slice());
    let req = Request {
        name: DEPLOY,
        payload: args.url.as_bytes(),
        nodes,
        tags: anchored(&args.rpc.tags),
        timeout: args.timeout,
    };
    let never = CancellationToken::new();
    let got = ask(&client, &req, &expected, &never, |a| {
        if !args.json {
            println!("{:>7}  {:<width$}  {}", secs(a.after), a.node, a.line);
        }
    })
    .await?;
    let summary = Summary::of(&picked, &got);
    if args.json {
        println!("{}", summary.json(&args.url, &got));
    } else {
        print!("{}", summary.text(&got));
    }
    Ok(summary.failed.is_empty() && summary.missing.is_empty())
}

/// Hosts by outcome.
struct Summary {
    ok: Vec<String>,
    failed: Vec<String>,
    /// Each with why: did not get the query, or not alive.
    missing: Vec<(String, String)>,
}

impl Summary {
    fn of(picked: &Picked, got: &Answers) -> Self {
        let mut s = Summary {
            ok: Vec::new(),
            failed: Vec::new(),
            missing: Vec::new(),
        };
        // Answers from hosts that joined after the member list was read
        // count too.
        for (node, answer) in &got.answers {
            match deployed(&answer.line) {
                true => s.ok.push(node.clone()),
                false => s.failed.push(node.clone()),
            }
        }
        for node in &picked.alive {
            if !got.answers.contains_key(node) {
                s.missing
                    .push((node.clone(), got.why_missing(node).to_string()));
            }
        }
        s.missing.extend(picked.down.iter().cloned());
        s
    }

    fn text(&self, got: &Answers) -> String {
        let total = self.ok.len() + self.failed.len() + self.missing.len();
        let missing: Vec<String> = self
            .missing
            .iter()
            .map(|(n, why)| format!("{n} ({why})"))
            .collect();
        format!(
            "{} in {}: {} ok, {} failed, {} no answer\nok:        {}\nfailed:    {}\nno answer: {}\n",
            hosts(total),
            secs(got.took),
            self.ok.len(),
            self.failed.len(),
            self.missing.len(),
            names(&self.ok),
            names(&self.failed),
            names(&missing),
        )
    }

    fn json(&self, url: &str, got: &Answers) -> serde_json::Value {
        let answers: serde_json::Map<String, serde_json::Value> = got
            .answers
            .values()
            .map(|a| {
                let v = json!({"answer": a.line, "seconds": a.after.as_secs_f64()});
                (a.node.clone(), v)
            })
            .collect();
        json!({
            "query": DEPLOY,
            "url": url,
            "seconds": got.took.as_secs_f64(),
            "ok": self.ok,
            "failed": self.failed,
            "no_answer": super::table::json_object(&self.missing),
            "answers": answers,
        })
    }
}
