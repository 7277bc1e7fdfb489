//! SPEC 2: both generations of upstream flags.

mod common;

use common::{app_manifest, Fixture};

#[test]
fn version_flags_print_the_version() {
    let fx = Fixture::new();
    for flag in ["-v", "--version", "-version"] {
        let run = fx.run("", &[flag], &[]);
        assert_eq!(run.code(), 0);
        assert_eq!(
            run.stdout().trim(),
            format!("stretcher {}", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn invalid_values_are_one_line_errors_naming_the_flag_even_under_consul() {
    let fx = Fixture::new();
    for (args, flag) in [
        (vec!["--timeout", "10x"], "--timeout"),
        (vec!["-timeout", "soon"], "--timeout"),
        (vec!["--max-bandwidth", "fast"], "--max-band-width"),
        (vec!["--retry-wait", "-1s"], "--retry-wait"),
        (vec!["--rsync-verbose", "-vvvv"], "--rsync-verbose"),
        (vec!["--retry", "many"], "--retry"),
        (vec!["--no-such-flag"], "--no-such-flag"),
    ] {
        let run = fx.run("", &args, &[("CONSUL_INDEX", "1")]);
        assert_eq!(run.code(), 1, "{args:?}");
        let err = run.stderr();
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

/// Deploys the app archive over an earlier release with `args` and returns
/// the log.
fn deploy_with(args: &[&str]) -> String {
    let fx = Fixture::new();
    fx.write("dest/old-release.txt", "old");
    let url = fx.manifest(&app_manifest(&fx, ""));
    fx.run(&url, args, &[]).ok()
}

#[test]
fn both_flag_generations_are_accepted() {
    for args in [
        vec![
            "-max-bandwidth",
            "10M",
            "-timeout",
            "30",
            "-retry",
            "2",
            "-retry-wait",
            "1",
            "-random-delay",
            "0.01",
        ],
        vec![
            "--max-band-width",
            "10MiB",
            "--timeout",
            "1m30s",
            "--retry",
            "2",
            "--retry-wait",
            "1.5s",
        ],
        vec![
            "--max-bandwidth=1.5MB",
            "--timeout=300ms",
            "--random-delay=10ms",
        ],
    ] {
        let log = deploy_with(&args);
        assert!(
            log.contains("Deploy manifest succeeded."),
            "{args:?}: {log}"
        );
    }
    let log = deploy_with(&["-max-bandwidth", "10MiB", "-timeout", "90"]);
    assert!(log.contains("Set max bandwidth 10 MB/sec"), "{log}");
    assert!(log.contains("Set timeout 1m30s"), "{log}");
}

#[test]
fn rsync_verbose_is_passed_to_rsync() {
    let log = deploy_with(&[]);
    assert!(log.contains("rsync [-a --delete -v "), "{log}");
    assert!(log.contains("sending incremental file list"), "{log}");
    let log = deploy_with(&["--rsync-verbose", "-vv"]);
    assert!(log.contains("rsync [-a --delete -vv "), "{log}");
    let log = deploy_with(&["-rsync-verbose="]);
    assert!(log.contains("rsync [-a --delete /"), "{log}");
    assert!(!log.contains("sending incremental file list"), "{log}");
}
