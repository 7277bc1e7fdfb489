//! SPEC 1: the manifest URL on stdin (Consul event JSON, Serf/plain line).

mod common;

use base64::Engine;
use common::Fixture;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A commands-only manifest whose post hook records which manifest ran.
fn marker_manifest(fx: &Fixture, name: &str) -> String {
    let rel = format!("{name}.yml");
    fx.write(
        &rel,
        format!(
            "commands:\n  post:\n    - echo {name} > {}\n",
            fx.path("ran").display()
        ),
    );
    fx.url(&rel)
}

fn ran(fx: &Fixture) -> String {
    std::fs::read_to_string(fx.path("ran"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
fn plain_line_without_trailing_newline_deploys() {
    let fx = Fixture::new();
    let url = marker_manifest(&fx, "plain");
    let log = fx.run(&format!("  {url}"), &[], &[]).ok();
    assert_eq!(ran(&fx), "plain");
    assert!(log.contains(&format!("Loading manifest: {url}")), "{log}");
    assert!(log.contains("Deploy manifest succeeded."), "{log}");
}

#[test]
fn serf_user_event_is_logged() {
    let fx = Fixture::new();
    let url = marker_manifest(&fx, "serf");
    let log = fx
        .run(&format!("{url}\n"), &[], &[("SERF_USER_EVENT", "deploy")])
        .ok();
    assert!(log.contains("Reading Serf user event: deploy"), "{log}");
    assert_eq!(ran(&fx), "serf");
}

#[test]
fn consul_event_list_deploys_the_last_event() {
    let fx = Fixture::new();
    let old = marker_manifest(&fx, "old");
    let new = marker_manifest(&fx, "new");
    let json = format!(
        r#"[{{"ID":"id-1","Name":"deploy","Payload":"{}","NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":1}},
            {{"ID":"id-2","Name":"deploy","Payload":"{}","NodeFilter":"","ServiceFilter":"","TagFilter":"","Version":1,"LTime":2}}]"#,
        b64(&old),
        b64(&new)
    );
    let log = fx.run(&json, &[], &[("CONSUL_INDEX", "42")]).ok();
    assert!(log.contains("Consul event ID: id-2"), "{log}");
    assert_eq!(ran(&fx), "new");
}

#[test]
fn bracket_selects_consul_format_without_consul_index() {
    let fx = Fixture::new();
    let url = marker_manifest(&fx, "bracket");
    let json = format!(
        r#"[{{"ID":"x","Name":"deploy","Payload":"{}","LTime":9}}]"#,
        b64(&url)
    );
    fx.run(&json, &[], &[]).ok();
    assert_eq!(ran(&fx), "bracket");
}

#[test]
fn bad_input_is_one_clear_error_and_exit_1() {
    let fx = Fixture::new();
    for (stdin, want) in [
        ("", "no input on stdin"),
        ("\n", "empty manifest URL"),
        ("[]", "no Consul events found"),
        (
            r#"[{"ID":"e1","Payload":null}]"#,
            "Consul event e1 has no Payload",
        ),
        (r#"[{"ID":"e2"}]"#, "Consul event e2 has no Payload"),
        (
            r#"[{"ID":"e3","Payload":"%%%"}]"#,
            "Payload is not valid base64",
        ),
        ("[{\"ID\":", "invalid Consul event JSON"),
        (
            "ftp://example.com/m.yml",
            "manifest URL scheme must be s3, gs, http(s) or file: ftp://example.com/m.yml",
        ),
    ] {
        let log = fx.run(stdin, &[], &[]).failed();
        assert!(log.contains(want), "{stdin:?}: {log}");
        assert!(!log.contains("panicked"), "{log}");
    }
    fx.assert_no_temp_files();
}

#[test]
fn consul_watch_always_gets_exit_0() {
    let fx = Fixture::new();
    let run = fx.run("[]", &[], &[("CONSUL_INDEX", "7")]);
    assert_eq!(run.code(), 0);
    assert!(run.stderr().contains("no Consul events found"));
    // Non-JSON under CONSUL_INDEX is read as JSON, and fails.
    let run = fx.run("file:///nope", &[], &[("CONSUL_INDEX", "7")]);
    assert_eq!(run.code(), 0);
    assert!(
        run.stderr().contains("invalid Consul event JSON"),
        "{}",
        run.stderr()
    );
}

#[test]
fn first_log_line_is_the_startup_banner_in_go_format() {
    let fx = Fixture::new();
    let url = marker_manifest(&fx, "banner");
    let log = fx.run(&url, &[], &[]).ok();
    let first = log.lines().next().unwrap();
    // 2016/03/22 12:34:56 message
    let (stamp, msg) = first.split_at(20);
    assert!(
        stamp.len() == 20
            && stamp.as_bytes()[4] == b'/'
            && stamp.as_bytes()[7] == b'/'
            && stamp.as_bytes()[13] == b':'
            && stamp.ends_with(' '),
        "{first}"
    );
    assert_eq!(
        msg,
        format!("Starting up stretcher agent {}", env!("CARGO_PKG_VERSION"))
    );
    assert!(log.trim_end().ends_with("Done"), "{log}");
}
