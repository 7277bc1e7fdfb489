//! `stretcher fleet rollout URL --batch N|P%`: the `deploy` query to one
//! batch of hosts at a time (Serf's node filter), each batch's answers
//! awaited before the next, stopping at the first batch with more failed or
//! missing answers than `--max-failed`. With `--rollback-on-failure` that
//! batch's hosts that did deploy get the `stretcher-rollback` query. The
//! first Ctrl-C stops before the next batch; a second stops waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::Result;
use tokio_util::sync::CancellationToken;

use super::ask::{ask, Answers, Request};
use super::table::{columns, hosts};
use super::{connect, deployed, pick, secs, DEPLOY, ROLLBACK};
use crate::cli::FleetRolloutArgs;
use crate::units::format_duration;

/// What happened to one host.
#[derive(Debug, Clone)]
struct Row {
    /// Its batch (1-based), none for a host that was not alive.
    batch: Option<usize>,
    /// `ok`, `failed`, `no answer`, `rolled back`, `not started`, `not alive`.
    result: &'static str,
    /// Its answer, or why there is none.
    detail: String,
}

impl Row {
    /// Whether this rollout changed the host: it answered `ok`, not
    /// `skipped` (its replay guard had deployed the URL before), so a
    /// rollback of its batch goes to it.
    fn deployed_now(&self) -> bool {
        self.result == "ok" && self.detail.split_whitespace().next() == Some("ok")
    }
}

/// Runs `fleet rollout`; `Ok(true)` when every host deployed.
pub async fn run(args: FleetRolloutArgs) -> Result<bool> {
    let client = connect(&args.rpc).await?;
    let picked = pick(&client, &args.rpc.tags, &[]).await?;
    let size = args.batch.size(picked.alive.len());
    let batches: Vec<&[String]> = picked.alive.chunks(size).collect();
    let (after_batch, now) = (CancellationToken::new(), CancellationToken::new());
    tokio::spawn(on_ctrl_c(after_batch.clone(), now.clone()));
    println!(
        "Rolling out {} to {} in {} of up to {size} (at most {} failed per batch)",
        args.url,
        hosts(picked.alive.len()),
        match batches.len() {
            1 => "1 batch".to_string(),
            n => format!("{n} batches"),
        },
        args.max_failed
    );
    let started = Instant::now();
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for (node, status) in &picked.down {
        let row = Row {
            batch: None,
            result: "not alive",
            detail: status.clone(),
        };
        rows.insert(node.clone(), row);
    }
    let width = picked.alive.iter().map(String::len).max().unwrap_or(0);
    let mut ending = "Done: every batch deployed".to_string();
    for (i, batch) in batches.iter().enumerate() {
        let number = i + 1;
        if after_batch.is_cancelled() {
            ending = format!("Interrupted before batch {number} of {}", batches.len());
            break;
        }
        println!("Batch {number}/{}: {}", batches.len(), batch.join(" "));
        let req = Request {
            name: DEPLOY,
            payload: args.url.as_bytes(),
            nodes: Some(batch),
            tags: Default::default(),
            timeout: args.timeout,
        };
        let expected: BTreeSet<String> = batch.iter().cloned().collect();
        let got = ask(&client, &req, &expected, &now, |a| {
            println!("{:>7}  {:<width$}  {}", secs(a.after), a.node, a.line);
        })
        .await?;
        let bad = record_batch(&mut rows, number, batch, &got);
        if got.interrupted || bad > args.max_failed {
            ending = match got.interrupted {
                true => format!("Interrupted during batch {number} of {}", batches.len()),
                false => format!(
                    "Stopped after batch {number} of {}: {bad} failed or without an answer (--max-failed {})",
                    batches.len(),
                    args.max_failed
                ),
            };
            if args.rollback_on_failure && !got.interrupted {
                roll_back(&client, &args, batch, &mut rows, &now, width).await?;
            }
            break;
        }
        if number < batches.len() && !args.pause.is_zero() {
            println!("Pausing {}", format_duration(args.pause));
            tokio::select! {
                () = tokio::time::sleep(args.pause) => {}
                () = after_batch.cancelled() => {}
            }
        }
    }
    for (i, batch) in batches.iter().enumerate() {
        for node in batch.iter() {
            rows.entry(node.clone()).or_insert_with(|| Row {
                batch: Some(i + 1),
                result: "not started",
                detail: String::new(),
            });
        }
    }
    print!("\n{}", table(&rows));
    let ok = rows.values().filter(|r| r.result == "ok").count();
    println!(
        "{ending}. {ok} of {} ok in {}.",
        hosts(rows.len()),
        secs(started.elapsed())
    );
    Ok(ok == rows.len())
}

/// Notes a batch's answers; returns how many failed or did not answer.
fn record_batch(
    rows: &mut BTreeMap<String, Row>,
    number: usize,
    batch: &[String],
    got: &Answers,
) -> usize {
    let mut bad = 0;
    for node in batch {
        let row = match got.answers.get(node) {
            Some(a) if deployed(&a.line) => Row {
                batch: Some(number),
                result: "ok",
                detail: a.line.clone(),
            },
            Some(a) => Row {
                batch: Some(number),
                result: "failed",
                detail: a.line.clone(),
            },
            None => Row {
                batch: Some(number),
                result: "no answer",
                detail: match got.interrupted {
                    true => "no answer before the interrupt".to_string(),
                    false => got.why_missing(node).to_string(),
                },
            },
        };
        if row.result != "ok" {
            bad += 1;
        }
        rows.insert(node.clone(), row);
    }
    bad
}

/// Sends `stretcher-rollback` to the hosts of `batch` that deployed.
async fn roll_back(
    client: &super::rpc::Client,
    args: &FleetRolloutArgs,
    batch: &[String],
    rows: &mut BTreeMap<String, Row>,
    stop: &CancellationToken,
    width: usize,
) -> Result<()> {
    let deployed: Vec<String> = batch
        .iter()
        .filter(|n| rows.get(*n).is_some_and(Row::deployed_now))
        .cloned()
        .collect();
    if deployed.is_empty() {
        return Ok(());
    }
    println!("Rolling back {}", deployed.join(" "));
    let req = Request {
        name: ROLLBACK,
        payload: args.url.as_bytes(),
        nodes: Some(&deployed),
        tags: Default::default(),
        timeout: args.timeout,
    };
    let expected: BTreeSet<String> = deployed.iter().cloned().collect();
    let got = ask(client, &req, &expected, stop, |a| {
        println!("{:>7}  {:<width$}  {}", secs(a.after), a.node, a.line);
    })
    .await?;
    for node in &deployed {
        let Some(row) = rows.get_mut(node) else {
            continue;
        };
        match got.answers.get(node) {
            Some(a) if a.line.starts_with("ok ") => {
                row.result = "rolled back";
                row.detail = a.line.clone();
            }
            Some(a) => row.detail = format!("deployed; rollback: {}", a.line),
            None => {
                row.detail = format!("deployed; rollback: {}", got.why_missing(node));
            }
        }
    }
    Ok(())
}

/// The final table, by batch then name.
fn table(rows: &BTreeMap<String, Row>) -> String {
    let mut sorted: Vec<(&String, &Row)> = rows.iter().collect();
    sorted.sort_by_key(|(node, row)| (row.batch.unwrap_or(usize::MAX), *node));
    let mut lines = vec![vec![
        "HOST".to_string(),
        "BATCH".into(),
        "RESULT".into(),
        "DETAIL".into(),
    ]];
    for (node, row) in sorted {
        lines.push(vec![
            node.clone(),
            row.batch.map_or("-".into(), |b| b.to_string()),
            row.result.to_string(),
            row.detail.clone(),
        ]);
    }
    columns(&lines)
}

/// The first Ctrl-C stops before the next batch, the second stops waiting
/// for the current one (its hosts go on deploying).
async fn on_ctrl_c(after_batch: CancellationToken, now: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    eprintln!("Interrupted: stopping before the next batch (Ctrl-C again to stop waiting)");
    after_batch.cancel();
    if tokio::signal::ctrl_c().await.is_ok() {
        now.cancel();
    }
}

#[cfg(test)]
mod rollback_tests {
    use super::Row;

    #[test]
    fn only_hosts_that_deployed_in_this_rollout_are_rolled_back() {
        let row = |result, detail: &str| Row {
            batch: Some(1),
            result,
            detail: detail.to_string(),
        };
        assert!(row("ok", "ok /srv/app/current 0123abcd 1.20s").deployed_now());
        assert!(!row("ok", "skipped serf query deploy@7: already deployed").deployed_now());
        assert!(!row("failed", "failed post: exit 1").deployed_now());
    }
}
