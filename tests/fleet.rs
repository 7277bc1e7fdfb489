//! SPEC 8.3, 8.4 and the Consul protocol: the dest lock, the replay guard,
//! and `consul watch`'s replays, driven with the exact stdin and environment
//! `consul watch -type event` gives its handler.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{app_manifest, app_tar, gzip, manifest_for, sha256, Fixture};

/// `consul watch -type event` stdin for events `(id, ltime, url)`, oldest first.
fn consul_events(events: &[(&str, u64, &str)]) -> String {
    let items: Vec<String> = events
        .iter()
        .map(|(id, ltime, url)| {
            let payload = base64::engine::general_purpose::STANDARD.encode(url);
            format!(
                r#"{{"ID":"{id}","Name":"deploy","Payload":"{payload}","NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":{ltime}}}"#
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

/// A manifest whose post hook appends `tag` to the fixture's `deploys` file.
fn counting_manifest(fx: &Fixture, name: &str, tag: &str) -> String {
    let rel = format!("{name}.yml");
    fx.write(
        &rel,
        app_manifest(
            fx,
            &format!(
                "commands:\n  post:\n    - echo {tag} >> {}\n",
                fx.path("deploys").display()
            ),
        ),
    );
    fx.url(&rel)
}

fn deploys(fx: &Fixture) -> Vec<String> {
    std::fs::read_to_string(fx.path("deploys"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn consul_replay_after_restart_deploys_only_events_not_yet_deployed() {
    let fx = Fixture::new();
    let state = fx.path("state");
    let state_arg = state.to_str().unwrap();
    let v1 = counting_manifest(&fx, "v1", "v1");
    let v2 = counting_manifest(&fx, "v2", "v2");
    let env = [("CONSUL_INDEX", "17")];
    let args = ["--state-dir", state_arg];

    let first = consul_events(&[("e1", 1, &v1)]);
    fx.run(&first, &args, &env).ok();
    assert_eq!(deploys(&fx), ["v1"]);

    // consul watch restarts and hands over the same list again.
    let log = fx.run(&first, &args, &env).ok();
    assert!(log.contains("Event e1 already deployed, skipping"), "{log}");
    assert_eq!(deploys(&fx), ["v1"], "a replay must not deploy");

    // A new event arrives: the list now ends with it.
    let second = consul_events(&[("e1", 1, &v1), ("e2", 2, &v2)]);
    fx.run(&second, &args, &env).ok();
    assert_eq!(deploys(&fx), ["v1", "v2"]);
    fx.run(&second, &args, &env).ok();
    assert_eq!(deploys(&fx), ["v1", "v2"]);

    // --force deploys the replayed event again.
    fx.run(&second, &["--state-dir", state_arg, "--force"], &env)
        .ok();
    assert_eq!(deploys(&fx), ["v1", "v2", "v2"]);

    let recorded = std::fs::read_to_string(state.join("state.json")).unwrap();
    assert!(
        recorded.contains("\"consul:deploy\"") && recorded.contains("\"e2\""),
        "{recorded}"
    );
    assert!(
        recorded.contains(&fx.dest().display().to_string()),
        "{recorded}"
    );
}

#[test]
fn a_failed_event_is_not_recorded_and_is_retried_on_replay() {
    let fx = Fixture::new();
    let state = fx.path("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let missing = fx.url("missing.yml");
    let events = consul_events(&[("bad", 3, &missing)]);
    let run = fx.run(&events, &args, &[("CONSUL_INDEX", "1")]);
    assert_eq!(run.code(), 0, "always 0 under consul watch");
    let log = fx.run(&events, &args, &[("CONSUL_INDEX", "1")]).stderr();
    assert!(!log.contains("already deployed"), "{log}");
    assert!(log.contains("load manifest failed"), "{log}");
}

/// A `--state-dir` the agent's user may read but not write would let every
/// replay deploy again: the run fails before it deploys, and says why.
#[test]
fn an_unwritable_state_dir_fails_the_run_before_it_deploys() {
    if !common::is_root() {
        eprintln!("skipped: needs root to make a state dir the agent cannot write");
        return;
    }
    let fx = Fixture::new();
    let v1 = counting_manifest(&fx, "v1", "v1");
    // Root's, mode 0755: readable, not writable, by the agent's user.
    let state = tempfile::tempdir().unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state_arg = state.path().to_str().unwrap();
    let report = fx.path("report.json").display().to_string();
    let args = ["--state-dir", state_arg, "--report-file", &report];
    let events = consul_events(&[("e1", 1, &v1)]);
    for _ in 0..2 {
        let run = fx.run_unprivileged(&events, &args, &[("CONSUL_INDEX", "1")]);
        assert_eq!(run.code(), 0, "always 0 under consul watch");
        let log = run.stderr();
        assert!(
            log.contains(&format!("state dir {state_arg} is not writable")),
            "{log}"
        );
        assert!(!log.contains("Executing manifest"), "{log}");
        assert_eq!(deploys(&fx), Vec::<String>::new());
        assert!(!fx.dest().exists());
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(report["result"], "failure", "{report}");
    }
    let log = fx.run_unprivileged(&v1, &args, &[]).failed();
    assert!(log.contains("is not writable"), "{log}");
    assert!(!fx.dest().exists());
}

#[test]
fn without_state_dir_a_replay_deploys_again_as_upstream() {
    let fx = Fixture::new();
    let v1 = counting_manifest(&fx, "v1", "v1");
    let events = consul_events(&[("e1", 1, &v1)]);
    fx.run(&events, &[], &[("CONSUL_INDEX", "1")]).ok();
    fx.run(&events, &[], &[("CONSUL_INDEX", "1")]).ok();
    assert_eq!(deploys(&fx), ["v1", "v1"]);
}

#[test]
fn serf_ltime_guards_serf_user_events() {
    let fx = Fixture::new();
    let state = fx.path("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let v1 = counting_manifest(&fx, "v1", "v1");
    let serf = |ltime: &'static str| {
        [
            ("SERF_EVENT", "user"),
            ("SERF_USER_EVENT", "deploy"),
            ("SERF_USER_LTIME", ltime),
        ]
    };
    fx.run(&v1, &args, &serf("5")).ok();
    let log = fx.run(&v1, &args, &serf("5")).ok();
    assert!(
        log.contains("Event serf deploy@5 already deployed, skipping"),
        "{log}"
    );
    fx.run(&v1, &args, &serf("6")).ok();
    assert_eq!(deploys(&fx), ["v1", "v1"]);
}

#[test]
fn concurrent_runs_on_one_dest_take_turns() {
    let fx = Fixture::new();
    let order = fx.path("order");
    let release = fx.path("release");
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    let manifest = |name: &str, pre: &str| {
        let yaml = manifest_for(
            &fx,
            &fx.url("app.tar.gz"),
            &sha256(&data),
            &format!(
                "commands:\n  pre:\n    - '{pre}echo {name}-pre >> {o}'\n  post:\n    - 'echo {name}-post >> {o}'\n",
                o = order.display()
            ),
        );
        fx.write(&format!("{name}.yml"), yaml);
        fx.url(&format!("{name}.yml"))
    };
    // A holds the lock until the test creates `release` (bounded wait).
    let holding = fx.path("a-holding");
    let wait = format!(
        "touch {h}; i=0; while [ ! -e {r} ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done; ",
        h = holding.display(),
        r = release.display()
    );
    let a_url = manifest("a", &wait);
    let b_url = manifest("b", "");
    let a = fx.spawn(&a_url, &[], &[]);
    // Wait until A holds the lock (its pre hook is running).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holding.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(holding.exists(), "A's pre hook never ran");
    // Release A only once B says it is waiting for A's lock.
    let mut b = fx.spawn(&b_url, &[], &[]);
    let b_log = wait_for_line(b.stderr.take().unwrap(), "waiting for lock ");
    std::fs::write(&release, "").unwrap();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    let b_log = b_log.join().unwrap();
    assert!(a.status.success() && b.status.success(), "{b_log}");
    assert!(b_log.contains("waiting for lock "), "{b_log}");
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "a-pre\na-post\nb-pre\nb-post\n",
        "B's deploy must start only after A's finished"
    );
}

/// Reads `stderr` on a thread until a line contains `needle` (at most 10 s),
/// then returns; the thread keeps reading and its result is the whole log.
fn wait_for_line(
    stderr: std::process::ChildStderr,
    needle: &'static str,
) -> std::thread::JoinHandle<String> {
    let (seen, wait) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut log = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains(needle) {
                let _ = seen.send(());
            }
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    // A timeout here fails the test below, with the log.
    let _ = wait.recv_timeout(Duration::from_secs(10));
    reader
}

#[test]
fn serf_query_mode_prints_one_result_line_on_stdout() {
    let fx = Fixture::new();
    let url = fx.manifest(&app_manifest(
        &fx,
        "commands:\n  success:\n    - echo hook-output\n",
    ));
    let env = [
        ("SERF_EVENT", "query"),
        ("SERF_QUERY_NAME", "deploy"),
        ("SERF_QUERY_LTIME", "3"),
    ];
    let run = fx.run(&url, &[], &env);
    // Serf merges a query handler's stderr into its response: keep it empty.
    assert_eq!(run.code(), 0);
    assert_eq!(run.stderr(), "");
    let out = run.stdout();
    assert_eq!(out.lines().count(), 1, "{out:?}");
    let want = format!("ok {} {} ", fx.dest().display(), sha256(&gzip(&app_tar())));
    assert!(
        out.starts_with(&want) && out.trim_end().ends_with('s'),
        "{out:?}"
    );

    let bad = fx.manifest(&manifest_for(
        &fx,
        &fx.url("app.tar.gz"),
        &"0".repeat(64),
        "",
    ));
    let run = fx.run(&bad, &[], &env);
    assert_eq!(
        run.code(),
        0,
        "serf drops the answer of a handler that exits non-zero"
    );
    assert_eq!(run.stderr(), "");
    let out = run.stdout();
    assert!(
        out.starts_with("failed download: checksum mismatch."),
        "{out:?}"
    );
    assert_eq!(out.lines().count(), 1);
}

/// The environment `serf agent` gives a `user:deploy` handler.
fn serf_user(ltime: &str) -> [(&str, &str); 3] {
    [
        ("SERF_EVENT", "user"),
        ("SERF_USER_EVENT", "deploy"),
        ("SERF_USER_LTIME", ltime),
    ]
}

/// The environment `serf agent` gives a `query:deploy` handler.
fn serf_query(ltime: &str) -> [(&str, &str); 3] {
    [
        ("SERF_EVENT", "query"),
        ("SERF_QUERY_NAME", "deploy"),
        ("SERF_QUERY_LTIME", ltime),
    ]
}

#[test]
fn serf_queries_keep_a_clock_apart_from_serf_user_events() {
    let fx = Fixture::new();
    let state = fx.path("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let v1 = counting_manifest(&fx, "v1", "v1");

    fx.run(&v1, &args, &serf_user("10")).ok();
    // examples/serf/serf.json registers the same handler for `query:deploy`:
    // the query clock is its own, so LTime 2 is new.
    let out = fx.run(&v1, &args, &serf_query("2"));
    assert!(out.stdout().starts_with("ok "), "{:?}", out.stdout());
    assert_eq!(deploys(&fx), ["v1", "v1"]);

    let out = fx.run(&v1, &args, &serf_query("2"));
    assert_eq!(out.code(), 0);
    assert_eq!(
        out.stdout(),
        "skipped serf query deploy@2: already deployed\n"
    );
    let log = fx.run(&v1, &args, &serf_user("10")).ok();
    assert!(
        log.contains("Event serf deploy@10 already deployed, skipping"),
        "{log}"
    );
    fx.run(&v1, &args, &serf_user("3")).ok();
    assert_eq!(deploys(&fx), ["v1", "v1"]);
}

#[test]
fn a_rebuilt_consul_cluster_deploys_its_new_low_ltime_events() {
    let fx = Fixture::new();
    let state = fx.path("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let env = [("CONSUL_INDEX", "40")];
    let v1 = counting_manifest(&fx, "v1", "v1");
    let v2 = counting_manifest(&fx, "v2", "v2");

    fx.run(&consul_events(&[("old", 900, &v1)]), &args, &env)
        .ok();
    // The cluster is rebuilt: new IDs, Lamport clock back at 1.
    let log = fx
        .run(&consul_events(&[("new1", 1, &v2)]), &args, &env)
        .ok();
    assert!(!log.contains("already deployed"), "{log}");
    assert_eq!(deploys(&fx), ["v1", "v2"]);
    fx.run(
        &consul_events(&[("new1", 1, &v2), ("new2", 2, &v1)]),
        &args,
        &env,
    )
    .ok();
    assert_eq!(deploys(&fx), ["v1", "v2", "v1"]);

    // Replays of any recently deployed ID are skipped, not just the last.
    for (id, ltime, url) in [("new2", 2, &v1), ("new1", 1, &v2), ("old", 900, &v1)] {
        let log = fx
            .run(&consul_events(&[(id, ltime, url)]), &args, &env)
            .ok();
        assert!(
            log.contains(&format!("Event {id} already deployed, skipping")),
            "{log}"
        );
    }
    assert_eq!(deploys(&fx), ["v1", "v2", "v1"]);
}

#[test]
fn a_reset_serf_clock_deploys_and_says_so() {
    let fx = Fixture::new();
    let state = fx.path("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let v1 = counting_manifest(&fx, "v1", "v1");

    fx.run(&v1, &args, &serf_user("2000")).ok();
    // Within Serf's 512-event buffer: a replay.
    let log = fx.run(&v1, &args, &serf_user("1600")).ok();
    assert!(log.contains("already deployed, skipping"), "{log}");
    assert_eq!(deploys(&fx), ["v1"]);

    // Far below the recorded LTime: the cluster's clock was reset.
    let log = fx.run(&v1, &args, &serf_user("3")).ok();
    assert!(
        log.contains(
            "Serf LTime 3 is far below the recorded 2000 for deploy: \
             the cluster's clock was reset; deploying"
        ),
        "{log}"
    );
    assert_eq!(deploys(&fx), ["v1", "v1"]);
    let log = fx.run(&v1, &args, &serf_user("3")).ok();
    assert!(log.contains("already deployed, skipping"), "{log}");
    fx.run(&v1, &args, &serf_user("4")).ok();
    assert_eq!(deploys(&fx), ["v1", "v1", "v1"]);
}

#[test]
fn state_files_of_the_previous_format_keep_guarding() {
    let fx = Fixture::new();
    let state = fx.path("state");
    fx.write(
        "state/state.json",
        r#"{"events":{"consul:deploy":{"id":"e1","ltime":7},"serf:deploy":{"id":"","ltime":10}},"dests":{}}"#,
    );
    let args = ["--state-dir", state.to_str().unwrap()];
    let env = [("CONSUL_INDEX", "3")];
    let v1 = counting_manifest(&fx, "v1", "v1");

    let log = fx.run(&consul_events(&[("e1", 7, &v1)]), &args, &env).ok();
    assert!(log.contains("Event e1 already deployed"), "{log}");
    let log = fx.run(&v1, &args, &serf_user("10")).ok();
    assert!(log.contains("already deployed"), "{log}");
    assert!(deploys(&fx).is_empty());

    fx.run(&consul_events(&[("e2", 8, &v1)]), &args, &env).ok();
    fx.run(&v1, &args, &serf_user("11")).ok();
    assert_eq!(deploys(&fx), ["v1", "v1"]);
    let log = fx.run(&consul_events(&[("e1", 7, &v1)]), &args, &env).ok();
    assert!(log.contains("Event e1 already deployed"), "{log}");
}

#[test]
fn concurrent_runs_on_different_dests_lose_no_state_record() {
    const RUNS: usize = 8;
    let fx = Fixture::new();
    let state = fx.path("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    let env = [("CONSUL_INDEX", "9")];
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    let barrier = fx.path("barrier");
    std::fs::create_dir(&barrier).unwrap();
    // Every run's post hook waits for all the others', so all of them record
    // their deploy at about the same moment.
    // Dests that hold a release already: each run locks its own dest, so the
    // runs go side by side (first deploys would take turns on the parent).
    let dests: Vec<String> = (0..RUNS)
        .map(|i| {
            fx.write(&format!("dest{i}/old.txt"), "old");
            fx.path(&format!("dest{i}")).display().to_string()
        })
        .collect();
    let children: Vec<_> = (0..RUNS)
        .map(|i| {
            let post = format!(
                "touch {b}/{i}; n=0; while [ $(ls {b} | wc -l) -lt {RUNS} ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done",
                b = barrier.display()
            );
            let yaml = format!(
                "src: {}\nchecksum: {}\ndest: {}\ncommands:\n  post:\n    - '{post}'\n",
                fx.url("app.tar.gz"),
                sha256(&data),
                dests[i]
            );
            let name = format!("m{i}.yml");
            fx.write(&name, yaml);
            let events = consul_events(&[(&format!("c{i}"), i as u64 + 1, &fx.url(&name))]);
            fx.spawn(&events, &args, &env)
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && log.contains("Deploy manifest succeeded"),
            "{log}"
        );
    }

    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("state.json")).unwrap()).unwrap();
    let missing: Vec<&String> = dests
        .iter()
        .filter(|d| recorded["dests"].get(d.as_str()).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "dests not recorded: {missing:?}\n{recorded:#}"
    );
    for i in 0..RUNS {
        let events = consul_events(&[(&format!("c{i}"), i as u64 + 1, &fx.url("m0.yml"))]);
        let log = fx.run(&events, &args, &env).ok();
        assert!(
            log.contains(&format!("Event c{i} already deployed, skipping")),
            "{log}"
        );
    }
}
