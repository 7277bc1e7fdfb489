//! A real Serf cluster on loopback: three agents whose event and query
//! handlers are the built binary, each deploying into its own dest.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{app_tar, bin, free_port, gzip, sha256, Fixture};

struct Agent {
    child: Child,
    rpc: String,
    dest: PathBuf,
}

/// Three agents; stopped by PID when dropped.
struct Cluster {
    agents: Vec<Agent>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for a in &mut self.agents {
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
    }
}

fn serf(args: &[&str]) -> Output {
    Command::new("serf")
        .args(args)
        .output()
        .expect("serf is installed (make deps)")
}

impl Cluster {
    fn start(fx: &Fixture) -> Cluster {
        Self::start_with(fx, false)
    }

    /// Like [`Cluster::start`]; with `state_dir`, each node's handler runs
    /// with `--state-dir <node home>/state`, as examples/serf/serf.json does.
    fn start_with(fx: &Fixture, state_dir: bool) -> Cluster {
        let mut cluster = Cluster { agents: Vec::new() };
        let mut first_bind = String::new();
        for i in 1..=3 {
            let home = fx.path(&format!("node{i}"));
            std::fs::create_dir_all(home.join("tmp")).unwrap();
            let bind = format!("127.0.0.1:{}", free_port());
            let rpc = format!("127.0.0.1:{}", free_port());
            let handler = if state_dir {
                format!("{} --state-dir {}", bin(), home.join("state").display())
            } else {
                bin().to_string()
            };
            let mut cmd = Command::new("serf");
            cmd.arg("agent")
                .arg(format!("-node=node{i}"))
                .arg(format!("-bind={bind}"))
                .arg(format!("-rpc-addr={rpc}"))
                .arg(format!("-event-handler=user:deploy={handler}"))
                .arg(format!("-event-handler=query:deploy={handler}"))
                .arg("-log-level=warn")
                .current_dir(&home)
                .env("APP_DEST", home.join("dest"))
                .env("TMPDIR", home.join("tmp"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if i == 1 {
                first_bind = bind.clone();
            } else {
                cmd.arg(format!("-join={first_bind}"));
            }
            let child = cmd.spawn().expect("serf is installed (make deps)");
            cluster.agents.push(Agent {
                child,
                rpc: rpc.clone(),
                dest: home.join("dest"),
            });
            // Let the first agent open its ports before the others join it.
            wait_until(Duration::from_secs(15), || {
                serf(&["members", &format!("-rpc-addr={rpc}")])
                    .status
                    .success()
            });
        }
        let rpc = cluster.agents[0].rpc.clone();
        wait_until(Duration::from_secs(20), || {
            let out = serf(&["members", &format!("-rpc-addr={rpc}"), "-status=alive"]);
            String::from_utf8_lossy(&out.stdout).lines().count() == 3
        });
        cluster
    }

    fn rpc(&self) -> String {
        format!("-rpc-addr={}", self.agents[0].rpc)
    }
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("condition not met within {limit:?}");
}

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
