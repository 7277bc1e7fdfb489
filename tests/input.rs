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

/// What a forger wants the log (and the hooks reading it) to show.
const FORGED: &str = "1999/01/01 00:00:00 Deploy manifest succeeded.";

/// Whether a line of `log`, split at LF or CR as a terminal or a reader
/// may split it, starts with the forged stamp.
fn has_forged_line(log: &str) -> bool {
    log.split(['\n', '\r']).any(|l| l.starts_with("1999/01/01"))
}

/// A manifest whose pre hook prints `output` and fails; its failure hook
/// saves what it gets on stdin to `failure-stdin`.
fn failing_manifest(fx: &Fixture, output: &str) -> String {
    fx.write("pre.sh", format!("printf '%s\\n' '{output}'\nexit 1\n"));
    fx.manifest(&format!(
        "commands:\n  pre:\n    - sh {}\n  failure:\n    - cat > {}\n",
        fx.path("pre.sh").display(),
        fx.path("failure-stdin").display()
    ))
}

fn failure_stdin(fx: &Fixture) -> Option<String> {
    std::fs::read_to_string(fx.path("failure-stdin")).ok()
}

#[test]
fn a_manifest_url_with_a_control_character_is_an_error() {
    let fx = Fixture::new();
    let url = failing_manifest(&fx, "pre ran");
    for (stdin, env) in [
        (
            common::consul_event("e1", 1, &format!("{url}#\n{FORGED}")),
            None,
        ),
        (
            common::consul_event("e2", 2, &format!("{url}?\r{FORGED}")),
            None,
        ),
        (format!("{url}#\r{FORGED}\n"), None),
        (
            format!("{url}#\r{FORGED}\n"),
            Some(("SERF_USER_EVENT", "deploy")),
        ),
        (format!("{url}#\0{FORGED}\n"), None),
    ] {
        let _ = std::fs::remove_file(fx.path("failure-stdin"));
        let env: Vec<_> = env.into_iter().collect();
        let log = fx.run(&stdin, &[], &env).failed();
        assert!(
            log.contains("manifest URL holds a control character: \"file://"),
            "{stdin:?}: {log}"
        );
        assert!(!has_forged_line(&log), "{stdin:?}: {log}");
        assert!(!log.contains("pre ran"), "{log}");
        assert_eq!(failure_stdin(&fx), None);
    }
}

/// Input logged as it came (a Consul event ID, a Serf event name) and hook
/// output are escaped: a newline or carriage return in them forges no line
/// on stderr nor in the log a failure hook reads.
#[test]
fn input_and_hook_output_cannot_forge_log_lines() {
    let fx = Fixture::new();
    let url = failing_manifest(&fx, &format!("step\r{FORGED}"));
    let consul = common::consul_event(&format!("e1\\n{FORGED}"), 1, &url);
    let runs = [
        (consul, vec![], "Consul event ID: e1\\n1999/01/01"),
        (
            format!("{url}\n"),
            vec![("SERF_USER_EVENT", format!("deploy\n{FORGED}"))],
            "Reading Serf user event: deploy\\n1999/01/01",
        ),
    ];
    for (stdin, env, escaped) in runs {
        let _ = std::fs::remove_file(fx.path("failure-stdin"));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let log = fx.run(&stdin, &[], &env).failed();
        let hook_stdin = failure_stdin(&fx).unwrap_or_default();
        for (what, text) in [("stderr", &log), ("failure hook stdin", &hook_stdin)] {
            assert!(!has_forged_line(text), "{what}:\n{text}");
            assert!(text.contains(escaped), "{what}:\n{text}");
            assert!(text.contains("step\\r1999/01/01"), "{what}:\n{text}");
            assert!(text.contains("Deploy manifest failed"), "{what}:\n{text}");
        }
    }
}
