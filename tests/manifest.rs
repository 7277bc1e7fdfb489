//! SPEC 3: manifest templates, YAML 1.1 quirks, validation before download.

mod common;

use common::http::{Route, Server};
use common::{app_tar, gzip, manifest_for, mode, sha256, Fixture};

#[test]
fn env_template_fills_dest_and_octal_dest_mode_applies() {
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    let yaml = format!(
        "src: {}\nchecksum: {}\ndest: {{{{ env \"APP_DEST\" \"/nonexistent\" }}}}\ndest_mode: 0711\n",
        fx.url("app.tar.gz"),
        sha256(&data)
    );
    let url = fx.manifest(&yaml);
    let dest = fx.dest();
    fx.run(&url, &[], &[("APP_DEST", dest.to_str().unwrap())])
        .ok();
    assert_eq!(mode(&dest), 0o711, "0711 is octal, as YAML 1.1 reads it");
}

#[test]
fn env_falls_back_to_its_last_argument_and_must_env_reads_the_environment() {
    let fx = Fixture::new();
    let out = fx.path("out");
    let yaml = format!(
        "dest: '{{{{ env \"NOT_SET_1\" \"fallback\" }}}} {{{{ must_env \"GREETING\" }}}} {{{{ env \"GREETING\" | json_escape }}}}'\n\
         commands:\n  post:\n    - printf %s \"$STRETCHER_DEST\" > {}\n",
        out.display()
    );
    let url = fx.manifest(&yaml);
    fx.run(&url, &[], &[("GREETING", "hi <you>")]).ok();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "fallback hi <you> hi \\u003cyou\\u003e"
    );
}

#[test]
fn unknown_keys_are_warned_about_and_ignored() {
    let fx = Fixture::new();
    let log = fx
        .deploy("srcc: typo\ncommands:\n  pre: []\n  postt: [\"true\"]\n")
        .ok();
    assert!(log.contains("manifest: ignoring unknown key srcc"), "{log}");
    assert!(
        log.contains("manifest: ignoring unknown key commands.postt"),
        "{log}"
    );
}

/// A manifest error found before any hook can run: exit 1, one error line,
/// no failure hook (there is no manifest to take it from).
fn load_error(yaml: &str, want: &str) {
    let fx = Fixture::new();
    let url = fx.manifest(yaml);
    let log = fx.run(&url, &[], &[]).failed();
    let line = log
        .lines()
        .find(|l| l.contains("load manifest failed:"))
        .unwrap_or_else(|| panic!("no error line for {yaml:?}: {log}"));
    assert!(line.contains(want), "{yaml:?}: {line}");
    assert!(!log.contains("invoking command"), "{log}");
    fx.assert_no_temp_files();
}

#[test]
fn broken_manifests_fail_with_a_clear_error() {
    load_error("src: [unclosed\n", "invalid manifest YAML");
    load_error(
        "commands:\n  pre:\n    - echo a: b\n",
        "invalid manifest YAML: commands",
    );
    load_error("dest: {{ env \"X\"\n", "manifest:1: unclosed action");
    load_error(
        "a: 1\ndest: {{ must_env \"STRETCHER_TEST_UNSET\" }}\n",
        "manifest:2: environment variable STRETCHER_TEST_UNSET",
    );
    load_error("dest: {{ nope }}\n", "function \"nope\" not defined");
    load_error("dest_mode: 0999\n", "dest_mode");
    load_error("dest_mode: 017777\n", "larger than 0o7777");
    load_error("src: file:///x.tar\nchecksum: abc\n", "dest is required");
}

/// A manifest that parses but fails validation: failure hooks run, and
/// nothing is downloaded.
fn validation_error(extra: &str, sum: &str, want: &str) {
    let fx = Fixture::new();
    let server = Server::start();
    let src = server.route("/a.tar.gz", Route::ok(gzip(&app_tar())));
    let failure = fx.path("failure.log");
    let extra = format!(
        "{extra}commands:\n  failure:\n    - cat > {}\n",
        failure.display()
    );
    let log = fx.deploy(&manifest_for(&fx, &src, sum, &extra)).failed();
    assert!(
        log.contains(&format!("Deploy manifest failed: {want}")),
        "{log}"
    );
    assert_eq!(server.hits("/a.tar.gz"), 0, "downloaded before validating");
    let stdin = std::fs::read_to_string(failure).unwrap();
    assert!(stdin.contains(want), "{stdin}");
    assert!(!fx.dest().exists());
}

#[test]
fn a_commands_env_that_is_not_a_map_of_names_fails_naming_the_field() {
    for yaml in [
        "commands:\n  env: [A, B]\n",
        "commands:\n  env: A=B\n",
        "commands:\n  env:\n    A=B: x\n",
        "commands:\n  env:\n    '': x\n",
        "commands:\n  env:\n    A: \"a\\0b\"\n",
        "commands:\n  env:\n    A: {b: c}\n",
    ] {
        load_error(yaml, "commands.env");
    }
}

#[test]
fn an_unparsable_commands_timeout_fails_naming_the_field_before_the_download() {
    for bad in ["soon", "-1s", "1x", "[1]"] {
        let fx = Fixture::new();
        let server = Server::start();
        let src = server.route("/a.tar.gz", Route::ok(gzip(&app_tar())));
        let yaml = manifest_for(
            &fx,
            &src,
            &"a".repeat(64),
            &format!("commands:\n  timeout: {bad}\n  pre: ['true']\n"),
        );
        let log = fx.deploy(&yaml).failed();
        assert!(log.contains("load manifest failed"), "{bad}: {log}");
        assert!(log.contains("commands.timeout"), "{bad}: {log}");
        assert_eq!(server.hits("/a.tar.gz"), 0, "{bad}: downloaded");
        assert!(!log.contains("invoking command"), "{log}");
    }
}

#[test]
fn invalid_strategy_and_checksum_length_fail_before_download() {
    let sum = "a".repeat(64);
    validation_error("sync_strategy: scp\n", &sum, "invalid strategy name: scp");
    validation_error(
        "",
        "abc123",
        "checksum must be an md5, sha1, sha256 or sha512 hex string",
    );
}

#[test]
fn an_all_digit_checksum_is_read_as_written_not_as_a_number() {
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    // Leading zeros and more digits than any integer: only the text is right.
    let digits = format!("0{}", "1234567890".repeat(7))
        .chars()
        .take(64)
        .collect::<String>();
    let log = fx
        .deploy(&manifest_for(&fx, &fx.url("app.tar.gz"), &digits, ""))
        .failed();
    assert!(
        log.contains(&format!(
            "checksum mismatch. expected:{digits} got:{}",
            sha256(&data)
        )),
        "{log}"
    );
}
