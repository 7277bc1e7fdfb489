//! Sends one query to a set of hosts and collects their answers as they
//! arrive, until every expected host has answered, Serf's deadline has
//! passed, or the caller stops waiting. `serf query` always waits out its
//! whole timeout; this returns with the last expected answer.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rpc::{Client, QueryParams, Record};

/// Serf refuses a query whose encoded message is over 1 KiB.
const QUERY_LIMIT: usize = 1024;

/// What Serf's query message holds besides the name, payload and filters
/// (times, ids, the sender's address and name, field names), generously.
const QUERY_OVERHEAD: usize = 256;

/// Extra wait past Serf's deadline for its "done" record.
const GRACE: Duration = Duration::from_secs(2);

/// Serf spreads a query by gossip, which now and then misses a host (a
/// few queries in a hundred on a small cluster). A host that has not
/// acknowledged the query this long after it went out is asked again,
/// with a node filter naming only the hosts still silent; the wait doubles
/// after each round.
const ACK_WAIT: Duration = Duration::from_secs(2);

/// At most this many rounds of asking again.
const RESENDS: u32 = 3;

/// A query to send.
pub struct Request<'a> {
    /// The query name.
    pub name: &'a str,
    /// Its payload.
    pub payload: &'a [u8],
    /// Only these nodes (`None`: every node the tags match).
    pub nodes: Option<&'a [String]>,
    /// Tag filters, already anchored.
    pub tags: BTreeMap<String, String>,
    /// How long hosts have to answer.
    pub timeout: Duration,
}

/// One host's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The host's node name.
    pub node: String,
    /// What its handler printed, trimmed.
    pub line: String,
    /// When it arrived, from the moment the query was sent.
    pub after: Duration,
}

/// What came back.
#[derive(Debug, Default)]
pub struct Answers {
    /// By node name.
    pub answers: BTreeMap<String, Answer>,
    /// Nodes that received the query (answered or not).
    pub acked: BTreeSet<String>,
    /// The caller stopped waiting before every host answered.
    pub interrupted: bool,
    /// How long it took.
    pub took: Duration,
}

impl Answers {
    /// A short reason for a host's missing answer.
    pub fn why_missing(&self, node: &str) -> &'static str {
        match self.acked.contains(node) {
            true => "got the query, no answer in time",
            false => "did not get the query",
        }
    }
}

/// Sends `req` and collects answers until every node in `expected` has
/// answered (or the deadline, or `stop`). `on_answer` sees each answer as
/// it arrives. A node list too long for one Serf query goes out as several;
/// hosts that do not acknowledge are asked again (see [`ACK_WAIT`]).
pub async fn ask(
    client: &Client,
    req: &Request<'_>,
    expected: &BTreeSet<String>,
    stop: &CancellationToken,
    mut on_answer: impl FnMut(&Answer),
) -> Result<Answers> {
    let started = Instant::now();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sent = match req.nodes {
        Some(nodes) => send(client, req, nodes, req.timeout, &tx).await?,
        None => send_all(client, req, &tx).await?,
    };
    let deadline = started + req.timeout;
    let mut got = Answers::default();
    let (mut done, mut round, mut resend_at) = (0, 0, started + ACK_WAIT);
    while done < sent && !expected.iter().all(|n| got.answers.contains_key(n)) {
        let record = tokio::select! {
            r = rx.recv() => r,
            () = tokio::time::sleep_until((deadline + GRACE).into()) => break,
            () = tokio::time::sleep_until(resend_at.into()), if round < RESENDS => {
                round += 1;
                resend_at = Instant::now() + ACK_WAIT * 2u32.pow(round);
                let silent: Vec<String> = expected
                    .iter()
                    .filter(|n| !got.acked.contains(*n))
                    .cloned()
                    .collect();
                let left = deadline.saturating_duration_since(Instant::now());
                if !silent.is_empty() && left > ACK_WAIT {
                    eprintln!(
                        "No acknowledgement from {} after {}: asking again",
                        silent.join(" "),
                        super::secs(started.elapsed())
                    );
                    sent += send(client, req, &silent, left, &tx).await?;
                }
                continue;
            }
            () = stop.cancelled() => {
                got.interrupted = true;
                break;
            }
        };
        match record {
            Some(Record::Ack(node)) => {
                got.acked.insert(node);
            }
            Some(Record::Response { from, payload }) => {
                if got.answers.contains_key(&from) {
                    continue;
                }
                let answer = Answer {
                    line: String::from_utf8_lossy(&payload).trim().to_string(),
                    node: from.clone(),
                    after: started.elapsed(),
                };
                on_answer(&answer);
                got.acked.insert(from.clone());
                got.answers.insert(from, answer);
            }
            Some(Record::Done) => done += 1,
            None => break,
        }
    }
    got.took = started.elapsed();
    Ok(got)
}

/// Sends `req` to every node its tags match, as one query.
async fn send_all(
    client: &Client,
    req: &Request<'_>,
    tx: &mpsc::UnboundedSender<Record>,
) -> Result<usize> {
    client
        .query(&params(req, Vec::new(), req.timeout), tx.clone())
        .await?;
    Ok(1)
}

/// Sends `req` to `nodes`, in as many queries as their names need;
/// returns how many.
async fn send(
    client: &Client,
    req: &Request<'_>,
    nodes: &[String],
    timeout: Duration,
    tx: &mpsc::UnboundedSender<Record>,
) -> Result<usize> {
    let groups = node_groups(req, nodes)?;
    for group in &groups {
        client
            .query(&params(req, group.clone(), timeout), tx.clone())
            .await?;
    }
    Ok(groups.len())
}

fn params(req: &Request<'_>, nodes: Vec<String>, timeout: Duration) -> QueryParams {
    QueryParams {
        name: req.name.to_string(),
        payload: req.payload.to_vec(),
        nodes,
        tags: req.tags.clone(),
        timeout,
    }
}

/// Splits `nodes` into lists that each fit one Serf query with `req`'s
/// name, payload and tags.
fn node_groups(req: &Request<'_>, nodes: &[String]) -> Result<Vec<Vec<String>>> {
    let tags: usize = req.tags.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
    let fixed = QUERY_OVERHEAD + req.name.len() + req.payload.len() + tags;
    let Some(budget) = QUERY_LIMIT.checked_sub(fixed) else {
        bail!(
            "the {} query's payload ({} bytes) leaves no room under Serf's 1 KiB query limit",
            req.name,
            req.payload.len()
        );
    };
    let mut groups: Vec<Vec<String>> = Vec::new();
    let mut used = budget;
    for node in nodes {
        // A msgpack string header, at most 3 bytes for Serf's names.
        let cost = node.len() + 3;
        if cost > budget {
            bail!(
                "node name {node} does not fit in a Serf query with a {}-byte payload",
                req.payload.len()
            );
        }
        if used + cost > budget {
            groups.push(Vec::new());
            used = 0;
        }
        used += cost;
        if let Some(group) = groups.last_mut() {
            group.push(node.clone());
        }
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_node_lists_are_split_to_fit_serf_queries() {
        let nodes: Vec<String> = (0..300).map(|i| format!("app-server-{i:04}")).collect();
        let req = Request {
            name: "deploy",
            payload: &[b'x'; 200],
            nodes: Some(&nodes),
            tags: BTreeMap::new(),
            timeout: Duration::from_secs(1),
        };
        let groups = node_groups(&req, &nodes).unwrap();
        assert!(groups.len() > 1);
        assert_eq!(groups.concat(), nodes);
        for g in &groups {
            let bytes: usize = g.iter().map(|n| n.len() + 3).sum();
            assert!(bytes + QUERY_OVERHEAD + 206 <= QUERY_LIMIT, "{bytes}");
        }
        let few = node_groups(&req, &nodes[..3]).unwrap();
        assert_eq!(few, vec![nodes[..3].to_vec()]);
        let huge = Request {
            payload: &[b'x'; 900],
            ..req
        };
        assert!(node_groups(&huge, &nodes).is_err());
    }
}
