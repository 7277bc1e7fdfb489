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

#[test]
fn help_explains_that_the_url_comes_on_stdin() {
    let fx = Fixture::new();
    for flag in ["--help", "-help"] {
        let run = fx.run("", &[flag], &[]);
        assert_eq!(run.code(), 0);
        let help = run.stdout();
        assert!(
            help.contains("The manifest URL is read from stdin"),
            "{help}"
        );
        assert!(
            help.contains("echo s3://bucket/app/manifest.yml | stretcher"),
            "{help}"
        );
        for sub in ["status", "completions"] {
            assert!(help.contains(sub), "{sub}: {help}");
        }
    }
}

#[test]
fn a_subcommand_counts_only_as_the_first_argument() {
    let fx = Fixture::new();
    let run = fx.run("", &["--timeout", "30", "status"], &[]);
    assert_eq!(run.code(), 1);
    assert_eq!(run.stderr().trim().lines().count(), 1, "{}", run.stderr());
    // Without a subcommand the agent reads stdin, as it always has: even
    // the word `status` there is taken as a manifest URL.
    let run = fx.run("status\n", &["-timeout", "30"], &[]);
    assert!(
        run.failed().contains("Loading manifest: status"),
        "{}",
        run.stderr()
    );
}

/// Runs the binary with `args` and returns its stdout, asserting exit 0.
fn output_of(args: &[&str]) -> String {
    let out = std::process::Command::new(common::bin())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Whether `program` can be run.
fn installed(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_for_each_shell_know_the_flags_and_subcommands() {
    let fx = Fixture::new();
    for (shell, file, check) in [
        ("bash", "stretcher.bash", Some("bash")),
        ("zsh", "_stretcher", Some("zsh")),
        ("fish", "stretcher.fish", Some("fish")),
        ("elvish", "stretcher.elv", None),
        ("powershell", "stretcher.ps1", None),
    ] {
        let script = output_of(&["completions", shell]);
        assert!(script.contains("report-file"), "{shell}: {script}");
        assert!(script.contains("status"), "{shell}: {script}");
        let path = fx.write(file, &script);
        // A syntax check by the shell itself, where it is installed (bash
        // always is).
        if let Some(sh) = check.filter(|sh| *sh == "bash" || installed(sh)) {
            let ok = std::process::Command::new(sh)
                .arg("-n")
                .arg(&path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "{sh} -n {file}");
        }
    }
    let run = fx.run("", &["completions", "tcsh"], &[]);
    assert_eq!(run.code(), 1, "an unknown shell is an error");
}

#[test]
fn the_man_page_documents_the_flags_and_renders() {
    let fx = Fixture::new();
    let page = output_of(&["man"]);
    assert!(page.contains(".TH stretcher 1"), "{page}");
    for flag in [
        "report\\-file",
        "metrics\\-file",
        "max\\-band\\-width",
        "status",
    ] {
        assert!(page.contains(flag), "{flag}: {page}");
    }
    let path = fx.write("stretcher.1", &page);
    // Rendered as `man` shows it, where man (or groff) is installed.
    let rendered = if installed("man") {
        std::process::Command::new("man")
            .args(["-l", "-P", "cat"])
            .arg(&path)
            .env("MANWIDTH", "100")
            .output()
            .unwrap()
    } else if installed("groff") {
        std::process::Command::new("groff")
            .args(["-man", "-Tutf8"])
            .arg(&path)
            .output()
            .unwrap()
    } else {
        return;
    };
    assert!(rendered.status.success(), "{rendered:?}");
    let text = String::from_utf8_lossy(&rendered.stdout);
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "--report-file",
        "--metrics-file",
        "read from stdin",
        "status",
    ] {
        assert!(text.contains(want), "{want} in the rendered page:\n{text}");
    }
}
