//! SPEC 8.8: `stretcher fleet query|status|rollout` against real Serf
//! agents on loopback, whose handlers are the built binary.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::serf::{serf, state_and_report, wait_until, Cluster, Options};
use common::{bin, free_port, gzip, sha256, signal, tar, wait_exit, Fixture, Member};

/// Six agents with `--state-dir` and `--report-file` in their homes.
fn six(fx: &Fixture) -> Cluster {
    Cluster::start_opts(
        fx,
        &Options {
            nodes: 6,
            handler_args: &state_and_report,
            rpc_auth: None,
        },
    )
}

/// `stretcher fleet <args…>` against the first agent; the output and how
/// long it took.
fn fleet(cluster: &Cluster, args: &[&str]) -> (Output, Duration) {
    let mut full = vec!["fleet", args[0], "--rpc-addr", &cluster.agents[0].rpc];
    full.extend(&args[1..]);
    let started = Instant::now();
    let out = Command::new(bin())
        .args(&full)
        .env_remove("SERF_RPC_ADDR")
        .env_remove("SERF_RPC_AUTH")
        .output()
        .unwrap();
    if !out.status.success() {
        for a in &cluster.agents {
            let log = std::fs::read_to_string(a.home.join("serf.log")).unwrap_or_default();
            eprintln!("== {} serf.log\n{log}", a.name);
        }
    }
    (out, started.elapsed())
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Version `v` of the app and a release manifest deploying it into each
/// agent's `$APP_DEST`, `extra` appended. Returns the manifest URL and the
/// archive's checksum.
fn release(fx: &Fixture, v: &str, extra: &str) -> (String, String) {
    let page = page(v);
    let data = gzip(&tar(&[Member::File("index.html", page.as_bytes(), 0o644)]));
    fx.write(&format!("app-{v}.tar.gz"), &data);
    let sum = sha256(&data);
    let yaml = format!(
        "src: {}\nchecksum: {sum}\ndest: {{{{ must_env \"APP_DEST\" }}}}\nsync_strategy: release\n{extra}",
        fx.url(&format!("app-{v}.tar.gz"))
    );
    fx.write(&format!("{v}.yml"), yaml);
    (fx.url(&format!("{v}.yml")), sum)
}

/// The version a dest serves.
fn serves(dest: &Path) -> String {
    std::fs::read_to_string(dest.join("index.html")).unwrap_or_default()
}

/// Version `v`'s index.html: its size differs from every other version's
/// (the archives' mtimes are the same), so no quick check takes one for
/// another.
fn page(v: &str) -> String {
    format!(
        "<p>version {v}</p>\n{}",
        "\n".repeat(v.len() * 10 + v.as_bytes()[0] as usize)
    )
}

/// A `pre` and a `post` hook noting when they ran (ns), in the node's home.
const STAMPS: &str =
    "commands:\n  pre: ['date +%s%N > pre_at']\n  post: ['date +%s%N > post_at']\n";

fn stamp(home: &Path, name: &str) -> u128 {
    std::fs::read_to_string(home.join(name))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn rollout_deploys_batch_by_batch_and_stops_and_rolls_back_at_a_failing_batch() {
    let fx = Fixture::new();
    let cluster = six(&fx);
    let (v1, sum1) = release(&fx, "1", STAMPS);

    let (out, _) = fleet(&cluster, &["rollout", &v1, "--batch", "2"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Batch 1/3: node1 node2"), "{text}");
    assert!(text.contains("Batch 3/3: node5 node6"), "{text}");
    assert!(text.contains("6 of 6 hosts ok"), "{text}");
    for a in &cluster.agents {
        assert_eq!(serves(&a.dest), page("1"), "{}", a.name);
    }
    // Each batch started after the one before had finished.
    for pair in cluster.agents.chunks(2).collect::<Vec<_>>().windows(2) {
        let done = pair[0].iter().map(|a| stamp(&a.home, "post_at")).max();
        let next = pair[1].iter().map(|a| stamp(&a.home, "pre_at")).min();
        assert!(
            done < next,
            "{} started before {} finished",
            pair[1][0].name,
            pair[0][0].name
        );
    }

    // Version 2's post hook fails on node3, in the second batch.
    let (v2, _) = release(&fx, "2", "commands:\n  post: ['test \"$NODE\" != node3']\n");
    let (out, _) = fleet(
        &cluster,
        &["rollout", &v2, "--batch", "2", "--rollback-on-failure"],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("Stopped after batch 2 of 3"), "{text}");
    let row = |node: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(node) && l.contains("  "))
            .unwrap_or_default()
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(row("node1").starts_with("ok ok "), "{text}");
    assert!(row("node3").starts_with("failed failed post: "), "{text}");
    assert!(
        row("node4").starts_with("rolled back ok rolled back "),
        "{text}"
    );
    assert_eq!(row("node5"), "not started", "{text}");
    // node3's own deploy rolled itself back when its post failed (SPEC 8.7).
    for (i, want) in [(0, "2"), (1, "2"), (2, "1"), (3, "1"), (4, "1"), (5, "1")] {
        let a = &cluster.agents[i];
        assert_eq!(serves(&a.dest), page(want), "{}", a.name);
    }
    // The batches after the failure were not touched: one release each.
    for a in &cluster.agents[4..] {
        let releases = std::fs::read_dir(a.home.join("releases"))
            .unwrap()
            .filter(|e| {
                !e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(releases, 1, "{}", a.name);
    }
    // Status tells by the live release: node3 (its own automatic
    // rollback) and node4 (the rollout's) are back on version 1.
    let (out, _) = fleet(&cluster, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let v1_hosts = &json["checksums"][&sum1[..8]];
    assert_eq!(
        v1_hosts,
        &serde_json::json!(["node3", "node4", "node5", "node6"])
    );
}

#[test]
fn query_returns_once_every_host_answered_and_a_stopped_agent_is_no_answer() {
    let fx = Fixture::new();
    let mut cluster = six(&fx);
    let (v1, sum) = release(&fx, "1", "");

    let (out, took) = fleet(&cluster, &["query", &v1, "--timeout", "60s"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        took < Duration::from_secs(20),
        "took {took:?} of a 60s timeout"
    );
    for a in &cluster.agents {
        let line = format!("{}  ok {} {sum} ", a.name, a.dest.display());
        assert!(text.contains(&line), "{line:?} in\n{text}");
        assert_eq!(serves(&a.dest), page("1"), "{}", a.name);
    }
    assert!(text.contains("6 hosts in "), "{text}");
    assert!(text.contains(": 6 ok, 0 failed, 0 no answer"), "{text}");

    // A failing post hook on one host is a failed answer.
    let (v2, _) = release(&fx, "2", "commands:\n  post: ['test \"$NODE\" != node2']\n");
    let (out, _) = fleet(&cluster, &["query", &v2, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failed"], serde_json::json!(["node2"]));
    assert_eq!(json["ok"].as_array().unwrap().len(), 5);
    let answer = json["answers"]["node2"]["answer"].as_str().unwrap();
    assert!(answer.starts_with("failed post: "), "{answer}");

    // A stopped agent: no answer, within the timeout, not a hang.
    cluster.stop(5);
    let (out, took) = fleet(&cluster, &["query", &v1, "--timeout", "15s"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(took < Duration::from_secs(25), "took {took:?}");
    let missing = text
        .lines()
        .find(|l| l.starts_with("no answer:"))
        .unwrap_or_default();
    assert!(missing.contains("node6"), "{text}");
    assert!(text.contains(": 5 ok, 0 failed, 1 no answer"), "{text}");
}

#[test]
fn status_shows_the_host_that_missed_the_event_on_the_old_checksum() {
    let fx = Fixture::new();
    let mut cluster = six(&fx);
    let (v1, sum1) = release(&fx, "1", "");
    let (out, _) = fleet(&cluster, &["query", &v1]);
    assert!(out.status.success(), "{}", stdout(&out));

    // node4 is down while the event goes out, and comes back after.
    cluster.stop(3);
    let (v2, sum2) = release(&fx, "2", "");
    let out = serf(&["event", &cluster.rpc(), "deploy", &v2]);
    assert!(out.status.success());
    wait_until(Duration::from_secs(60), || {
        [0, 1, 2, 4, 5]
            .iter()
            .all(|&i| serves(&cluster.agents[i].dest) == page("2"))
    });
    cluster.restart(3, 6);
    assert_eq!(serves(&cluster.agents[3].dest), page("1"));

    let (out, _) = fleet(&cluster, &["status"]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    let group = |sum: &str| {
        text.lines()
            .find(|l| l.starts_with(&sum[..8]))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(group(&sum2), "5 node1 node2 node3 node5 node6", "{text}");
    assert_eq!(group(&sum1), "1 node4", "{text}");
    // The larger group comes first.
    let first = text.lines().nth(1).unwrap_or_default();
    assert!(first.starts_with(&sum2[..8]), "{text}");

    let (out, _) = fleet(&cluster, &["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["checksums"][&sum1[..8]], serde_json::json!(["node4"]));
    let node4 = &json["hosts"]["node4"]["dests"][0];
    assert_eq!(node4["checksum"], sum1.as_str());
    assert_eq!(node4["dest"], cluster.agents[3].dest.display().to_string());
}

#[test]
fn ctrl_c_stops_a_rollout_before_the_next_batch() {
    let fx = Fixture::new();
    let cluster = Cluster::start_opts(
        &fx,
        &Options {
            nodes: 4,
            handler_args: &state_and_report,
            rpc_auth: None,
        },
    );
    let (url, _) = release(&fx, "1", "");
    let mut child = Command::new(bin())
        .args(["fleet", "rollout", &url, "--batch", "2", "--pause", "60s"])
        .args(["--rpc-addr", &cluster.agents[0].rpc])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.starts_with("Pausing") {
            break;
        }
    }
    let started = Instant::now();
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child), 1, "{seen:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let text = rest.join("\n");
    assert!(text.contains("Interrupted before batch 2 of 2"), "{text}");
    assert!(text.contains("2 of 4 hosts ok"), "{text}");
    for a in &cluster.agents[..2] {
        assert_eq!(serves(&a.dest), page("1"), "{}", a.name);
    }
    for a in &cluster.agents[2..] {
        assert!(!a.dest.exists(), "{} deployed", a.name);
    }
}

#[test]
fn bad_input_is_a_one_line_error_before_any_query() {
    let fx = Fixture::new();
    let cluster = Cluster::start_opts(
        &fx,
        &Options {
            nodes: 1,
            handler_args: &state_and_report,
            rpc_auth: Some("sesame"),
        },
    );
    let (url, _) = release(&fx, "1", "");
    let rpc = cluster.agents[0].rpc.clone();
    let closed = format!("127.0.0.1:{}", free_port());
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin())
            .arg("fleet")
            .args(args)
            .env_remove("SERF_RPC_ADDR")
            .env_remove("SERF_RPC_AUTH")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        (out.status.code(), err)
    };
    let auth = ["--rpc-addr", &rpc, "--rpc-auth", "sesame"];
    for (args, env, want) in [
        (vec!["rollout", &url, "--batch", "0"], vec![], "--batch"),
        (vec!["rollout", &url, "--batch", "120%"], vec![], "--batch"),
        (vec!["query", &url, "--tag", "role"], vec![], "--tag"),
        (
            vec!["query", &url, "--rpc-addr", &closed],
            vec![],
            closed.as_str(),
        ),
        (
            vec!["query", &url],
            vec![("SERF_RPC_ADDR", closed.as_str())],
            "SERF_RPC_ADDR",
        ),
        (
            vec!["query", &url, "--rpc-addr", &rpc, "--rpc-auth", "wrong"],
            vec![],
            "--rpc-auth",
        ),
        (
            vec!["status", "--rpc-addr", &rpc],
            vec![],
            "Authentication required",
        ),
    ] {
        let mut args = args.clone();
        if args[0] == "rollout" || args.contains(&"--tag") {
            args.extend(auth);
        }
        let (code, err) = run(&args, &env);
        assert_eq!(code, Some(1), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let report = cluster.agents[0].home.join("report.json");
    assert!(!report.exists(), "a query was sent");

    // The same agent, its key from SERF_RPC_AUTH: the deploy goes out.
    let (code, err) = run(
        &["query", &url, "--rpc-addr", &rpc],
        &[("SERF_RPC_AUTH", "sesame")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(report.exists());
}
