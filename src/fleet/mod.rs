//! `stretcher fleet`: deploy to a Serf cluster and see what runs where, as a
//! client of the local Serf agent's RPC (SPEC 8.8). It only asks and
//! prints: each host's agent deploys (the `deploy` query) and answers
//! (`stretcher-status`, `stretcher-rollback`) in its own query handler.

mod ask;
mod query;
mod rollout;
pub mod rpc;
mod status;
mod table;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cli::{FleetCommand, RpcArgs};
use rpc::Client;

pub use crate::answer::{ROLLBACK, STATUS};

/// The query that deploys (the name `examples/serf/serf.json` registers).
pub const DEPLOY: &str = "deploy";

/// Runs a `stretcher fleet` command. `Ok(false)` when it ran but not
/// every host ended well (the exit status is then non-zero).
pub async fn run(command: FleetCommand) -> Result<bool> {
    match command {
        FleetCommand::Query(args) => query::run(args).await,
        FleetCommand::Status(args) => status::run(args).await,
        FleetCommand::Rollout(args) => rollout::run(args).await,
    }
}

/// Connects to the Serf agent as the serf CLI does: `--rpc-addr`, else
/// `SERF_RPC_ADDR`, else 127.0.0.1:7373; `--rpc-auth`, else
/// `SERF_RPC_AUTH`. Errors name the address and where it came from.
async fn connect(args: &RpcArgs) -> Result<Client> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let (addr, from) = match (&args.rpc_addr, env("SERF_RPC_ADDR")) {
        (Some(addr), _) => (addr.clone(), "--rpc-addr"),
        (None, Some(addr)) => (addr, "SERF_RPC_ADDR"),
        (None, None) => ("127.0.0.1:7373".to_string(), "the default"),
    };
    let auth = match (&args.rpc_auth, env("SERF_RPC_AUTH")) {
        (Some(key), _) => Some((key.clone(), "--rpc-auth")),
        (None, Some(key)) => Some((key, "SERF_RPC_AUTH")),
        (None, None) => None,
    };
    let shown = format!("{addr} ({from})");
    let auth = auth.as_ref().map(|(key, from)| (key.as_str(), *from));
    Client::connect(&addr, &shown, auth).await
}

/// The members the filters pick, by name.
#[derive(Debug, Default)]
struct Picked {
    /// Alive members: they are asked.
    alive: Vec<String>,
    /// Members Serf marks failed (or named by `--node` and not members),
    /// with why: they cannot answer, and count as no answer. Members that
    /// left the cluster on purpose are not listed.
    down: Vec<(String, String)>,
}

/// The members whose tags match `tags` and, when `nodes` is not empty,
/// whose name is one of `nodes`. Fails when none is alive.
async fn pick(client: &Client, tags: &[(String, String)], nodes: &[String]) -> Result<Picked> {
    let members = client
        .members(&anchored(tags))
        .await
        .with_context(|| match tags.is_empty() {
            true => "listing the cluster's members".to_string(),
            false => format!(
                "listing the members that {} matches (is each a valid regular expression?)",
                flags(tags, &[])
            ),
        })?;
    let mut picked = Picked::default();
    for m in members {
        if !nodes.is_empty() && !nodes.contains(&m.name) {
            continue;
        }
        match m.status.as_str() {
            "alive" => picked.alive.push(m.name),
            "left" | "leaving" => {}
            other => picked.down.push((m.name, format!("not alive: {other}"))),
        }
    }
    for node in nodes {
        let known = picked.alive.contains(node) || picked.down.iter().any(|(n, _)| n == node);
        if !known {
            picked.down.push((node.clone(), "not a member".to_string()));
        }
    }
    picked.alive.sort();
    picked.alive.dedup();
    picked.down.sort();
    picked.down.dedup();
    if picked.alive.is_empty() {
        match tags.is_empty() && nodes.is_empty() {
            true => bail!("the Serf cluster has no alive member"),
            false => bail!("no alive member matches {}", flags(tags, nodes)),
        }
    }
    Ok(picked)
}

/// The filters as they were typed: `--tag k=v --node n`.
fn flags(tags: &[(String, String)], nodes: &[String]) -> String {
    let tags = tags.iter().map(|(k, v)| format!("--tag {k}={v}"));
    let nodes = nodes.iter().map(|n| format!("--node {n}"));
    tags.chain(nodes).collect::<Vec<_>>().join(" ")
}

/// The tag filters as Serf gets them: each value anchored, so that the
/// query (which Serf matches unanchored) and the member list (which Serf
/// anchors) pick the same hosts: the value matches the whole tag.
fn anchored(tags: &[(String, String)]) -> BTreeMap<String, String> {
    tags.iter()
        .map(|(k, v)| (k.clone(), format!("^(?:{v})$")))
        .collect()
}

/// `--tag`'s value: `KEY=VALUE`, VALUE a regular expression for the whole
/// tag value (as `serf members -tag`).
pub fn parse_tag(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!(
            "{s:?} is not KEY=VALUE (a Serf tag and a regular expression for its value)"
        )),
    }
}

/// A fleet command's `--timeout`: a duration above zero.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    match crate::units::parse_duration(s)? {
        d if d.is_zero() => Err("hosts need more than no time to answer".to_string()),
        d => Ok(d),
    }
}

/// `--batch`: a number of hosts, or a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// This many hosts per batch.
    Hosts(usize),
    /// This percentage of the hosts per batch (rounded up, at least one).
    Percent(u32),
}

impl Batch {
    /// Parses `10%` or `10`.
    pub fn parse(s: &str) -> Result<Batch, String> {
        let bad = || format!("{s:?} is not a number of hosts (3) or a percentage of them (10%)");
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u32>().map_err(|_| bad())? {
                0 => Err("0% is no host: give at least 1%".to_string()),
                p if p > 100 => Err(format!("{p}% is more than all the hosts (100%)")),
                p => Ok(Batch::Percent(p)),
            },
            None => match s.trim().parse::<usize>().map_err(|_| bad())? {
                0 => Err("0 is no host: give at least 1".to_string()),
                n => Ok(Batch::Hosts(n)),
            },
        }
    }

    /// Hosts per batch out of `total`.
    fn size(self, total: usize) -> usize {
        match self {
            Batch::Hosts(n) => n,
            Batch::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .clamp(1, total.max(1))
    }
}

/// Whether a `deploy` answer says the host runs the manifest: `ok …`, or
/// `skipped …` (already deployed). `failed <step>: …` at any step (the
/// download, a hook, `verify`), an empty answer or anything else is a
/// failure.
fn deployed(line: &str) -> bool {
    let word = line.split_whitespace().next().unwrap_or_default();
    matches!(word, "ok" | "skipped")
}

/// `1.23s` for an answer's time.
fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_counts_or_shares_and_never_empty() {
        assert_eq!(Batch::parse("10%"), Ok(Batch::Percent(10)));
        assert_eq!(Batch::parse("3"), Ok(Batch::Hosts(3)));
        for bad in ["0", "0%", "120%", "-1", "x", "%", "1.5"] {
            assert!(Batch::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Batch::Percent(10).size(100), 10);
        assert_eq!(Batch::Percent(10).size(6), 1);
        assert_eq!(Batch::Percent(50).size(5), 3);
        assert_eq!(Batch::Percent(100).size(7), 7);
        assert_eq!(Batch::Hosts(10).size(4), 4);
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_timeout("0").is_err());
    }

    #[test]
    fn only_ok_and_skipped_answers_count_as_deployed() {
        assert!(deployed("ok /srv/app 5891b5b5 3.42s"));
        assert!(deployed("skipped serf query deploy@4: already deployed"));
        for bad in [
            "failed post: failed: false exit status 1",
            "failed verify: http http://127.0.0.1:8080/up: status 503 after 60s",
            "",
            "okay",
            "Starting up stretcher agent",
        ] {
            assert!(!deployed(bad), "{bad}");
        }
    }

    #[test]
    fn tags_are_key_value_and_anchored_for_serf() {
        assert_eq!(parse_tag("role=web"), Ok(("role".into(), "web".into())));
        assert_eq!(parse_tag("role=a=b"), Ok(("role".into(), "a=b".into())));
        assert_eq!(parse_tag("role="), Ok(("role".into(), String::new())));
        for bad in ["role", "=web", ""] {
            assert!(parse_tag(bad).is_err(), "{bad}");
        }
        let tags = anchored(&[("role".into(), "web|api".into())]);
        assert_eq!(tags["role"], "^(?:web|api)$");
    }
}
