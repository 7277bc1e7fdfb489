//! The Debian package, built the way `make deb` builds it (scripts/deb.sh:
//! cargo-deb and Cargo.toml's `[package.metadata.deb]`), but from the test
//! build's binary instead of `make dist`'s release build: its fields, its
//! file list (`dpkg-deb -c`), an unpacked copy (`dpkg -x`) that runs, and
//! lintian where it is installed.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The binary under test: the debug build cargo made for this test run.
fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_stretcher")
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd`, requires success, returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package, built once per test run into cargo's scratch dir for
/// integration tests (replaced on the next run, never left in /tmp), from
/// a stripped copy of the binary under test, `<dir>/stretcher`.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let deb = dir.join("stretcher.deb");
        // The package takes the binary as given; a release build comes
        // stripped, the test build is stripped here.
        run(Command::new("strip")
            .arg("-o")
            .arg(dir.join("stretcher"))
            .arg(bin()));
        // --fast: lighter xz compression; the contents are the same. The
        // debug build needs this machine's glibc, newer than the package's
        // Depends: allowed here (see the refusal test below).
        run(Command::new("sh")
            .arg(repo().join("scripts/deb.sh"))
            .arg(dir.join("stretcher"))
            .arg(&deb)
            .arg("--fast")
            .env("TMPDIR", &dir)
            .env("STRETCHER_DEB_ANY_GLIBC", "1"));
        assert!(deb.is_file(), "scripts/deb.sh wrote no {}", deb.display());
        deb
    })
}

/// `dpkg-deb -c`: each path (without the leading `.`) with its mode string
/// and owner, e.g. `/usr/bin/stretcher` → (`-rwxr-xr-x`, `0/0`).
fn contents(deb: &Path) -> BTreeMap<String, (String, String)> {
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(deb));
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 6, "unexpected dpkg-deb -c line: {line}");
            let path = fields[5].trim_start_matches('.').to_string();
            (path, (fields[0].to_string(), fields[1].to_string()))
        })
        .collect()
}

#[test]
fn the_package_holds_the_binary_man_page_completions_examples_and_copyright() {
    let files = contents(deb());
    let want = [
        ("/usr/bin/stretcher", "-rwxr-xr-x"),
        ("/usr/share/man/man1/stretcher.1.gz", "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/stretcher",
            "-rw-r--r--",
        ),
        ("/usr/share/zsh/vendor-completions/_stretcher", "-rw-r--r--"),
        (
            "/usr/share/fish/vendor_completions.d/stretcher.fish",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/stretcher/copyright", "-rw-r--r--"),
        ("/usr/share/doc/stretcher/changelog.Debian.gz", "-rw-r--r--"),
        ("/usr/share/lintian/overrides/stretcher", "-rw-r--r--"),
        ("/usr/share/doc/stretcher/README.md", "-rw-r--r--"),
        (
            "/usr/share/doc/stretcher/examples/systemd/stretcher-watch.service",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/stretcher/examples/serf/serf.json",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/stretcher/examples/consul/deploy-watch.json",
            "-rw-r--r--",
        ),
    ];
    for (path, mode) in want {
        let Some((got, _)) = files.get(path) else {
            panic!("{path} is not in the package: {files:#?}");
        };
        assert_eq!(got, mode, "{path}");
    }
    for (path, (mode, owner)) in &files {
        assert_eq!(owner, "0/0", "{path} owner");
        assert!(path.starts_with("/usr/"), "{path} outside /usr");
        // Only what the list names, and the directories holding it.
        if !mode.starts_with('d') {
            assert!(want.iter().any(|(p, _)| p == path), "unexpected {path}");
        }
    }

    let fields = run(Command::new("dpkg-deb").args(["-f"]).arg(deb()).args([
        "Package",
        "Version",
        "Architecture",
        "Depends",
        "Section",
    ]));
    let fields: BTreeMap<&str, &str> = fields.lines().filter_map(|l| l.split_once(": ")).collect();
    assert_eq!(fields.get("Package"), Some(&"stretcher"), "{fields:?}");
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    assert_eq!(fields.get("Version"), Some(&version.as_str()), "{fields:?}");
    assert_eq!(fields.get("Architecture"), Some(&"amd64"), "{fields:?}");
    assert_eq!(fields.get("Section"), Some(&"admin"), "{fields:?}");
    // The glibc `make dist` builds for, which scripts/dist.sh checks.
    assert_eq!(
        fields.get("Depends"),
        Some(&"libc6 (>= 2.17)"),
        "{fields:?}"
    );
}

#[test]
fn a_binary_needing_a_newer_glibc_than_the_package_promises_is_refused() {
    // The test build links against this machine's glibc (2.34 or newer
    // here): checked first, so the refusal below is the script's doing.
    let need = run(Command::new("sh")
        .arg(repo().join("scripts/glibc-needed.sh"))
        .arg(bin()));
    let need: Vec<u32> = need.trim().split('.').map(|n| n.parse().unwrap()).collect();
    assert!(need > vec![2, 17], "the test build needs glibc {need:?}");

    let dir = tempfile::tempdir().unwrap();
    let deb = dir.path().join("refused.deb");
    let out = Command::new("sh")
        .arg(repo().join("scripts/deb.sh"))
        .arg(bin())
        .arg(&deb)
        .env("TMPDIR", dir.path())
        .env_remove("STRETCHER_DEB_ANY_GLIBC")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("but the package depends on libc6 (>= 2.17): package make dist's binary"),
        "{err}"
    );
    assert!(!deb.exists());
    // Nothing staged is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn the_unpacked_package_runs_and_carries_the_generated_and_example_files() {
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg").arg("-x").arg(deb()).arg(root.path()));
    let usr = root.path().join("usr");

    let packaged = usr.join("bin/stretcher");
    let version = run(Command::new(&packaged).arg("--version"));
    assert_eq!(
        version,
        format!("stretcher {}\n", env!("CARGO_PKG_VERSION"))
    );
    // It is the binary it was given, byte for byte (as `make deb` packages
    // the tarball's binary): the stripped copy of the binary under test.
    let given = deb().with_file_name("stretcher");
    assert!(
        std::fs::read(&packaged).unwrap() == std::fs::read(&given).unwrap(),
        "{} is not {}",
        packaged.display(),
        given.display()
    );

    // The man page and completions are what the binary generates.
    let man = gunzip(&usr.join("share/man/man1/stretcher.1.gz"));
    assert_eq!(man, run(Command::new(bin()).arg("man")));
    assert!(man.contains(".TH stretcher 1"), "{man}");
    for (shell, path) in [
        ("bash", "share/bash-completion/completions/stretcher"),
        ("zsh", "share/zsh/vendor-completions/_stretcher"),
        ("fish", "share/fish/vendor_completions.d/stretcher.fish"),
    ] {
        let got = std::fs::read_to_string(usr.join(path)).unwrap();
        assert_eq!(
            got,
            run(Command::new(bin()).args(["completions", shell])),
            "{path}"
        );
        assert!(got.contains("verify-key-file"), "{path}: {got}");
    }

    // The examples and README are the repository's files.
    let doc = usr.join("share/doc/stretcher");
    for (packaged, source) in [
        ("README.md", "README.md"),
        (
            "examples/systemd/stretcher-watch.service",
            "examples/systemd/stretcher-watch.service",
        ),
        ("examples/serf/serf.json", "examples/serf/serf.json"),
        (
            "examples/consul/deploy-watch.json",
            "examples/consul/deploy-watch.json",
        ),
    ] {
        let text = std::fs::read_to_string(doc.join(packaged)).unwrap();
        assert_eq!(
            text,
            std::fs::read_to_string(repo().join(source)).unwrap(),
            "{packaged}"
        );
        // The configs run the binary wherever PATH has it: the package
        // installs /usr/bin/stretcher, a manual install /usr/local/bin.
        if packaged.starts_with("examples/") {
            assert!(!text.contains("bin/stretcher"), "{packaged}: {text}");
        }
    }
    // The Debian changelog's newest entry is this version: bumping the
    // crate's version without a changelog entry fails here.
    let changelog = gunzip(&doc.join("changelog.Debian.gz"));
    let top = changelog.lines().next().unwrap_or_default();
    let want = format!("stretcher ({}-1) ", env!("CARGO_PKG_VERSION"));
    assert!(
        top.starts_with(&want),
        "changelog starts {top:?}, not {want:?}"
    );
    let copyright = std::fs::read_to_string(doc.join("copyright")).unwrap();
    assert!(copyright.contains("MIT"), "{copyright}");
    assert!(
        copyright.contains("Permission is hereby granted"),
        "{copyright}"
    );
}

fn gunzip(path: &Path) -> String {
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn lintian_finds_no_errors_or_warnings() {
    let Ok(version) = Command::new("lintian").arg("--version").output() else {
        eprintln!(
            "NOTE: lintian is not installed (make deps installs it): the package is not linted"
        );
        return;
    };
    assert!(version.status.success());
    // lintian leaves a scratch file in TMPDIR: give it one that goes away.
    let scratch = tempfile::tempdir().unwrap();
    let out = Command::new("lintian")
        .env("TMPDIR", scratch.path())
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(deb())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lintian: {}\n{report}", out.status);
}
