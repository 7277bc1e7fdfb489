//! SPEC 8.3, 8.4 and the Consul protocol: the dest lock, the replay guard,
//! and `consul watch`'s replays, driven with the exact stdin and environment
//! `consul watch -type event` gives its handler.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{app_manifest, app_tar, bin, gzip, manifest_for, sha256, Fixture};

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
fn consul_replay_after_restart_deploys_only_newer_events() {
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
    let spawn = |url: String| {
        let mut child = Command::new(bin())
            .current_dir(fx.root.path())
            .env("TMPDIR", fx.path("tmp"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(url.as_bytes())
            .unwrap();
        child
    };
    let a = spawn(a_url);
    // Wait until A holds the lock (its pre hook is running).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holding.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let b = spawn(b_url);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&release, "").unwrap();
    let a = a.wait_with_output().unwrap();
    let b = b.wait_with_output().unwrap();
    assert!(a.status.success() && b.status.success());
    let b_log = String::from_utf8_lossy(&b.stderr);
    assert!(b_log.contains("waiting for lock "), "{b_log}");
    assert_eq!(
        std::fs::read_to_string(&order).unwrap(),
        "a-pre\na-post\nb-pre\nb-post\n",
        "B's deploy must start only after A's finished"
    );
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
