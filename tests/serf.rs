//! A real Serf cluster on loopback: three agents whose event and query
//! handlers are the built binary, each deploying into its own dest.

mod common;

use std::time::Duration;

use common::serf::{serf, wait_until, Cluster};
use common::{app_tar, gzip, sha256, Fixture};

/// The app archive and a manifest deploying it into each agent's `$APP_DEST`.
fn cluster_manifest(fx: &Fixture, name: &str, checksum: Option<&str>) -> String {
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    let sum = checksum.map_or_else(|| sha256(&data), str::to_string);
    let yaml = format!(
        "src: {}\nchecksum: {sum}\ndest: {{{{ must_env \"APP_DEST\" }}}}\n",
        fx.url("app.tar.gz")
    );
    fx.write(name, yaml);
    fx.url(name)
}

#[test]
fn serf_event_deploys_on_every_node_and_query_reports_each_result() {
    let fx = Fixture::new();
    let cluster = Cluster::start(&fx);
    let url = cluster_manifest(&fx, "app.yml", None);

    let out = serf(&["event", &cluster.rpc(), "-coalesce=false", "deploy", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(30), || {
        cluster
            .agents
            .iter()
            .all(|a| a.dest.join("index.html").exists())
    });
    for a in &cluster.agents {
        assert_eq!(
            std::fs::read(a.dest.join("index.html")).unwrap(),
            b"<p>v1</p>\n"
        );
    }

    let responses = query(&cluster, &url);
    assert_eq!(responses.len(), 3, "{responses:?}");
    for (node, answer) in &responses {
        let agent = &cluster.agents[node.trim_start_matches("node").parse::<usize>().unwrap() - 1];
        let want = format!("ok {} ", agent.dest.display());
        assert!(answer.starts_with(&want), "{node}: {answer:?}");
    }

    let broken = cluster_manifest(&fx, "broken.yml", Some(&"0".repeat(64)));
    let responses = query(&cluster, &broken);
    assert_eq!(responses.len(), 3, "{responses:?}");
    for (node, answer) in &responses {
        assert!(
            answer.starts_with("failed download: checksum mismatch."),
            "{node}: {answer:?}"
        );
    }
}

/// Runs `serf query deploy <url>` and returns each node's response.
fn query(cluster: &Cluster, url: &str) -> Vec<(String, String)> {
    let out = serf(&[
        "query",
        &cluster.rpc(),
        "-timeout=5s",
        "-format=json",
        "deploy",
        url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut responses: Vec<(String, String)> = json["Responses"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(node, v)| {
            (
                node.clone(),
                v.as_str().unwrap_or_default().trim().to_string(),
            )
        })
        .collect();
    responses.sort();
    responses
}

#[test]
fn with_a_state_dir_a_query_after_user_events_still_deploys() {
    let fx = Fixture::new();
    let cluster = Cluster::start_with(&fx, true);
    let url = cluster_manifest(&fx, "app.yml", None);

    // A few user events move the user-event clock past the query clock.
    for _ in 0..3 {
        let out = serf(&["event", &cluster.rpc(), "-coalesce=false", "deploy", &url]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until(Duration::from_secs(30), || {
        cluster
            .agents
            .iter()
            .all(|a| a.dest.join("index.html").exists())
    });

    let responses = query(&cluster, &url);
    assert_eq!(responses.len(), 3, "{responses:?}");
    for (node, answer) in &responses {
        assert!(answer.starts_with("ok "), "{node}: {answer:?}");
    }
}
