//! examples/walkthrough/walkthrough.sh, run as a new user runs it (with the
//! test build's binary): what it prints at each step, that every host got
//! the app and reports it, and that it leaves no files, servers or agents
//! behind.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/walkthrough/walkthrough.sh")
}

/// Runs the walkthrough with `args`, its temp files under `tmpdir`.
fn walkthrough(args: &[&str], tmpdir: &Path) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(script())
        .args(args)
        .env("TMPDIR", tmpdir)
        .env_remove("WALKTHROUGH_DIR")
        .env_remove("STRETCHER");
    for var in [
        "CONSUL_INDEX",
        "SERF_EVENT",
        "SERF_USER_EVENT",
        "SERF_USER_LTIME",
        "SERF_QUERY_NAME",
        "SERF_QUERY_LTIME",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("sh runs the walkthrough")
}

/// The lines printed under `==== <title>` up to the next step.
fn section<'a>(out: &'a str, title: &str) -> &'a str {
    let head = format!("==== {title}");
    let start = out
        .find(&head)
        .unwrap_or_else(|| panic!("no step {head:?} in:\n{out}"));
    let body = &out[start + head.len()..];
    let end = body.find("\n==== ").unwrap_or(body.len());
    &body[..end]
}

/// `-- <name>` blocks of a section: name → the lines under it.
fn blocks(section: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in section.lines() {
        if let Some(name) = line.strip_prefix("-- ") {
            let name = name.split(':').next().unwrap_or(name).to_string();
            map.entry(name.clone()).or_default();
            current = Some(name);
        } else if let Some(name) = &current {
            if !line.trim().is_empty() {
                map.entry(name.clone()).or_default().push(line.to_string());
            }
        }
    }
    map
}

fn closed(addr: &str) -> bool {
    TcpStream::connect(addr).is_err()
}

#[test]
fn the_walkthrough_deploys_by_hand_by_serf_and_by_consul_event_and_shows_the_results() {
    let tmp = tempfile::tempdir().unwrap();
    let run = walkthrough(&[env!("CARGO_BIN_EXE_stretcher")], tmp.path());
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    let err = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(run.status.success(), "{}\n{out}\n{err}", run.status);
    // The agents' logs go to stderr, as when a user runs it in a terminal.
    let all = format!("{out}\n{err}");

    // 1: the archive's checksum, which every report must carry.
    let sum = section(&out, "1. Build the archive")
        .split("sha256 ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("step 1 prints the sha256")
        .to_string();
    assert_eq!(sum.len(), 64, "{sum}");

    // 2: the server, on 127.0.0.1 only.
    let served = section(&out, "2. Serve it over HTTP");
    let base = served
        .split(" at ")
        .nth(1)
        .map(str::trim)
        .expect("step 2 prints the URL");
    let http_addr = base
        .strip_prefix("http://127.0.0.1:")
        .map(|port| format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("not a loopback URL: {base}"));
    let work = served
        .split("serving ")
        .nth(1)
        .and_then(|s| s.split(" at ").next())
        .map(|www| Path::new(www.trim()).parent().unwrap().to_path_buf())
        .expect("step 2 prints the served dir");
    assert!(work.starts_with(tmp.path()), "{}", work.display());

    // 3, 4: the manifest pins the archive; it is signed.
    let manifest = section(&out, "3. Write the manifest");
    assert!(manifest.contains(&format!("checksum: {sum}")), "{manifest}");
    assert!(manifest.contains(&format!("src: {base}/app-1.tar.gz")));
    let signed = section(&out, "4. Sign it with minisign");
    assert!(signed.contains("minisign public key"), "{signed}");

    // 5: by hand, verified and deployed, post hook run.
    assert!(all.contains("Verified manifest signature (key "), "{all}");
    assert!(
        all.contains("post hook: deployed demo into ") && all.contains("/hosts/by-hand/app\n"),
        "{all}"
    );

    // 6: the tampered manifest is refused.
    assert!(
        all.contains("bad signature ") && all.contains("tampered.yml.minisig"),
        "{all}"
    );

    // 7: two Serf agents, both answer the query with their result.
    let serf = section(&out, "7. Deploy through Serf");
    let mut serf_addrs = Vec::new();
    for node in ["serf-1", "serf-2"] {
        let member = serf
            .lines()
            .find(|l| l.starts_with(node) && l.contains("alive"))
            .unwrap_or_else(|| panic!("{node} is not an alive member:\n{serf}"));
        serf_addrs.push(member.split_whitespace().nth(1).unwrap().to_string());
        let answer = format!(
            "Response from '{node}': ok {}/hosts/{node}/app {sum} ",
            work.display()
        );
        assert!(serf.contains(&answer), "no {answer:?} in:\n{serf}");
    }
    assert!(serf.contains("Total Responses: 2"), "{serf}");
    // The user event itself deployed on both agents, before the query.
    let event_reports: Vec<Value> = serf
        .lines()
        .filter(|l| l.contains(r#""event_id":"serf deploy@"#))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(event_reports.len(), 2, "{serf}");
    for r in &event_reports {
        assert_eq!(r["result"], "success", "{r}");
    }

    // 8: the Consul event deploys, and its replay is skipped.
    let consul = section(&out, "8. Deploy as consul watch does");
    assert!(
        consul.contains(r#""Name":"deploy","Payload":""#),
        "{consul}"
    );
    assert!(
        all.contains("Event 3f1c2b7e-walkthrough already deployed, skipping"),
        "{all}"
    );

    // 9: every host has the app (exclude.list is in the archive too).
    let files = blocks(section(&out, "9. What each host has"));
    for host in ["by-hand", "serf-1", "serf-2", "consul"] {
        assert_eq!(
            files.get(host).map(Vec::as_slice),
            Some(
                &[
                    "./VERSION",
                    "./bin/start",
                    "./exclude.list",
                    "./public/index.html"
                ]
                .map(String::from)[..]
            ),
            "{host}: {files:?}"
        );
    }

    // 10: the reports say what each host did.
    let reports: BTreeMap<String, Value> = blocks(section(&out, "10. Which host did what"))
        .into_iter()
        .map(|(host, lines)| {
            let json = serde_json::from_str(&lines.join("\n"))
                .unwrap_or_else(|e| panic!("{host}'s report: {e}: {lines:?}"));
            (host, json)
        })
        .collect();
    for host in ["by-hand", "serf-1", "serf-2"] {
        let r = &reports[host];
        assert_eq!(r["result"], "success", "{host}: {r}");
        assert_eq!(r["checksum"], sum.as_str(), "{host}: {r}");
        let dest = format!("{}/hosts/{host}/app", work.display());
        assert_eq!(r["dest"], dest.as_str(), "{host}: {r}");
        assert_eq!(r["bytes"].as_u64().map(|b| b > 0), Some(true), "{r}");
    }
    // The last run on each Serf host was the query's.
    for host in ["serf-1", "serf-2"] {
        let id = reports[host]["event_id"].as_str().unwrap_or_default();
        assert!(id.starts_with("serf query deploy@"), "{host}: {id}");
    }
    let consul = &reports["consul"];
    assert_eq!(consul["result"], "skipped", "{consul}");
    assert_eq!(consul["event_id"], "3f1c2b7e-walkthrough", "{consul}");
    let tampered = &reports["tampered"];
    assert_eq!(tampered["result"], "failure", "{tampered}");
    assert_eq!(tampered["step"], "manifest", "{tampered}");
    let error = tampered["error"].as_str().unwrap_or_default();
    assert!(error.starts_with("bad signature "), "{tampered}");

    // 11: stretcher status, per host.
    let status = section(&out, "11. stretcher status");
    assert!(status.contains("Last run: success at "), "{status}");
    assert!(status.contains("Last run: skipped at "), "{status}");
    assert!(status.contains("Last deploy to each dest ("), "{status}");
    assert!(status.contains(&format!("    checksum: {sum}")), "{status}");
    assert!(
        status.contains("    event:    3f1c2b7e-walkthrough"),
        "{status}"
    );
    assert!(out.contains("==== Walkthrough done"), "{out}");

    // Nothing is left: no files (its work dir, the agents' temp files), no
    // HTTP server, no Serf agent.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        closed(&http_addr),
        "the HTTP server still runs on {http_addr}"
    );
    for addr in &serf_addrs {
        assert!(closed(addr), "a Serf agent still runs on {addr}");
    }
}

#[test]
fn the_walkthrough_says_how_to_get_a_binary_when_there_is_none() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-stretcher");
    let run = walkthrough(&[missing.to_str().unwrap()], tmp.path());
    assert_eq!(run.status.code(), Some(1));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("no stretcher binary at ") && err.contains("make release"),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}
