//! The Debian and RPM packages, built the way `make deb` and `make rpm` build
//! them (scripts/deb.sh: cargo-deb and Cargo.toml's `[package.metadata.deb]`;
//! scripts/rpm.sh: cargo-generate-rpm and `[package.metadata.generate-rpm]`),
//! but from the test build's binary instead of `make dist`'s release build:
//! their fields, their file lists (`dpkg-deb -c`, `rpm -qlpv`), unpacked
//! copies (`dpkg -x`, `rpm2cpio | cpio`) that run, lintian for the .deb where
//! it is installed, and for the .rpm what CentOS 7's rpm 4.11 needs.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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

/// Cargo's scratch dir for this test run's packages (replaced on the next
/// run, never left in /tmp), holding `stretcher`, a stripped copy of the
/// binary under test: the packages take the binary as given, and a release
/// build comes stripped.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        run(Command::new("strip")
            .arg("-o")
            .arg(dir.join("stretcher"))
            .arg(bin()));
        dir
    })
}

/// The binary both packages are made from.
fn given() -> PathBuf {
    scratch().join("stretcher")
}

/// Runs a packaging script on the given binary, as `make deb` and `make rpm`
/// do. The debug build needs this machine's glibc, newer than the packages
/// promise: allowed here (see the refusal test below).
fn package(script: &str, out: &str, flags: &[&str]) -> PathBuf {
    let out = scratch().join(out);
    run(Command::new("sh")
        .arg(repo().join("scripts").join(script))
        .arg(given())
        .arg(&out)
        .args(flags)
        .env("TMPDIR", scratch())
        .env("STRETCHER_PKG_ANY_GLIBC", "1"));
    assert!(out.is_file(), "scripts/{script} wrote no {}", out.display());
    out
}

/// The Debian package, built once per test run.
fn deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    // --fast: lighter xz compression; the contents are the same.
    DEB.get_or_init(|| package("deb.sh", "stretcher.deb", &["--fast"]))
}

/// The RPM package, built once per test run, exactly as `make rpm` builds
/// it (its compressor is part of what is checked).
fn rpm() -> &'static Path {
    static RPM: OnceLock<PathBuf> = OnceLock::new();
    RPM.get_or_init(|| package("rpm.sh", "stretcher.rpm", &[]))
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
fn a_binary_needing_a_newer_glibc_than_the_packages_promise_is_refused() {
    // The test build links against this machine's glibc (2.34 or newer
    // here): checked first, so the refusal below is the scripts' doing.
    let need = run(Command::new("sh")
        .arg(repo().join("scripts/glibc-needed.sh"))
        .arg(bin()));
    let need: Vec<u32> = need.trim().split('.').map(|n| n.parse().unwrap()).collect();
    assert!(need > vec![2, 17], "the test build needs glibc {need:?}");

    for (script, out) in [("deb.sh", "refused.deb"), ("rpm.sh", "refused.rpm")] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(out);
        let res = Command::new("sh")
            .arg(repo().join("scripts").join(script))
            .arg(bin())
            .arg(&out)
            .env("TMPDIR", dir.path())
            .env_remove("STRETCHER_PKG_ANY_GLIBC")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&res.stderr);
        assert_eq!(res.status.code(), Some(1), "{script}: {err}");
        assert!(
            err.contains(
                "but the packages promise glibc >= 2.17: package make dist's binary (make deb, make rpm)"
            ),
            "{script}: {err}"
        );
        assert!(!out.exists(), "{script}");
        // Nothing staged is left behind.
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{script}"
        );
    }
}

/// Checks an unpacked package's `usr` tree: the binary runs and is the one
/// both packages were made from, byte for byte (as `make deb` and `make rpm`
/// package the tarball's binary); the man page and completions are what it
/// generates; the README and examples are the repository's files.
/// `zsh_completion` is where the package puts the zsh completion.
fn assert_unpacked(usr: &Path, zsh_completion: &str) {
    let packaged = usr.join("bin/stretcher");
    let version = run(Command::new(&packaged).arg("--version"));
    assert_eq!(
        version,
        format!("stretcher {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        std::fs::read(&packaged).unwrap() == std::fs::read(given()).unwrap(),
        "{} is not {}",
        packaged.display(),
        given().display()
    );

    let man = gunzip(&usr.join("share/man/man1/stretcher.1.gz"));
    assert_eq!(man, run(Command::new(bin()).arg("man")));
    assert!(man.contains(".TH stretcher 1"), "{man}");
    for (shell, path) in [
        ("bash", "share/bash-completion/completions/stretcher"),
        ("zsh", zsh_completion),
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
        // The configs run the binary wherever PATH has it: the packages
        // install /usr/bin/stretcher, a manual install /usr/local/bin.
        if packaged.starts_with("examples/") {
            assert!(!text.contains("bin/stretcher"), "{packaged}: {text}");
        }
    }
}

#[test]
fn the_unpacked_package_runs_and_carries_the_generated_and_example_files() {
    let root = tempfile::tempdir().unwrap();
    run(Command::new("dpkg").arg("-x").arg(deb()).arg(root.path()));
    let usr = root.path().join("usr");
    assert_unpacked(&usr, "share/zsh/vendor-completions/_stretcher");

    let doc = usr.join("share/doc/stretcher");
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

/// `rpm -qlpv`: each path with its mode string and `user/group`, e.g.
/// `/usr/bin/stretcher` → (`-rwxr-xr-x`, `root/root`).
fn rpm_contents(rpm: &Path) -> BTreeMap<String, (String, String)> {
    let listing = run(Command::new("rpm").arg("-qlpv").arg(rpm));
    listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 9, "unexpected rpm -qlpv line: {line}");
            let owner = format!("{}/{}", fields[2], fields[3]);
            (
                fields[fields.len() - 1].to_string(),
                (fields[0].to_string(), owner),
            )
        })
        .collect()
}

/// `rpm -qp --qf FORMAT`.
fn rpm_query(rpm: &Path, format: &str) -> String {
    run(Command::new("rpm").args(["-qp", "--qf", format]).arg(rpm))
}

#[test]
fn the_rpm_holds_the_debs_files_where_el_looks_for_them() {
    // The .deb's files (not its directories) with their modes, less what
    // only Debian reads, with the zsh completion where EL's zsh looks and
    // the license where EL's rpm puts it: [package.metadata.deb] and
    // [package.metadata.generate-rpm] kept in step.
    let mut want: BTreeMap<String, String> = contents(deb())
        .into_iter()
        .filter(|(_, (mode, _))| !mode.starts_with('d'))
        .map(|(path, (mode, _))| (path, mode))
        .collect();
    for debian_only in [
        "/usr/share/doc/stretcher/copyright",
        "/usr/share/doc/stretcher/changelog.Debian.gz",
        "/usr/share/lintian/overrides/stretcher",
    ] {
        assert!(want.remove(debian_only).is_some(), "{debian_only}");
    }
    let zsh = want
        .remove("/usr/share/zsh/vendor-completions/_stretcher")
        .expect("the .deb's zsh completion");
    want.insert("/usr/share/zsh/site-functions/_stretcher".into(), zsh);
    want.insert(
        "/usr/share/licenses/stretcher/LICENSE".into(),
        "-rw-r--r--".into(),
    );

    let files = rpm_contents(rpm());
    let modes: BTreeMap<String, String> = files
        .iter()
        .map(|(path, (mode, _))| (path.clone(), mode.clone()))
        .collect();
    assert_eq!(modes, want);
    for (path, (_, owner)) in &files {
        assert_eq!(owner, "root/root", "{path} owner");
    }
    // The documentation is marked so (`rpm --excludedocs` leaves it out).
    let flags = rpm_query(rpm(), "[%{FILEFLAGS:fflags} %{FILENAMES}\n]");
    for line in flags.lines() {
        let (flag, path) = line.split_once(' ').unwrap_or(("", line));
        let doc = path.starts_with("/usr/share/doc/") || path.starts_with("/usr/share/man/");
        assert_eq!(flag == "d", doc, "{line}");
    }

    let info = run(Command::new("rpm").arg("-qip").arg(rpm()));
    let info: BTreeMap<&str, &str> = info
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    for (field, want) in [
        ("Name", "stretcher"),
        ("Version", env!("CARGO_PKG_VERSION")),
        ("Release", "1"),
        ("Architecture", "x86_64"),
        ("License", "MIT"),
        ("Summary", env!("CARGO_PKG_DESCRIPTION")),
    ] {
        assert_eq!(info.get(field), Some(&want), "{field}: {info:?}");
    }

    // Its one requirement is the glibc the .deb's Depends names, the one
    // `make dist` builds for.
    let depends = run(Command::new("dpkg-deb")
        .args(["-f"])
        .arg(deb())
        .arg("Depends"));
    let glibc = depends
        .trim()
        .strip_prefix("libc6 (>= ")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("Depends: {depends}"));
    let requires = run(Command::new("rpm").args(["-qp", "--requires"]).arg(rpm()));
    let requires: Vec<&str> = requires
        .lines()
        .filter(|r| !r.starts_with("rpmlib("))
        .collect();
    assert_eq!(requires, [format!("glibc >= {glibc}")]);
}

/// The rpmlib() features CentOS 7's rpm 4.11 provides, with their versions
/// (rpmlibProvides in rpm 4.11's lib/rpmds.c). Newer ones, such as
/// rpmlib(PayloadIsZstd), rpmlib(LargeFiles) and rpmlib(RichDependencies),
/// make it refuse the package.
const RPM_4_11_FEATURES: [(&str, &str); 16] = [
    ("rpmlib(VersionedDependencies)", "3.0.3-1"),
    ("rpmlib(CompressedFileNames)", "3.0.4-1"),
    ("rpmlib(PayloadIsBzip2)", "3.0.5-1"),
    ("rpmlib(PayloadIsXz)", "5.2-1"),
    ("rpmlib(PayloadIsLzma)", "4.4.2-1"),
    ("rpmlib(PayloadFilesHavePrefix)", "4.0-1"),
    ("rpmlib(ExplicitPackageProvide)", "4.0-1"),
    ("rpmlib(HeaderLoadSortsTags)", "4.0.1-1"),
    ("rpmlib(ScriptletInterpreterArgs)", "4.0.3-1"),
    ("rpmlib(PartialHardlinkSets)", "4.0.4-1"),
    ("rpmlib(ConcurrentAccess)", "4.1-1"),
    ("rpmlib(BuiltinLuaScripts)", "4.2.2-1"),
    ("rpmlib(FileDigests)", "4.6.0-1"),
    ("rpmlib(FileCaps)", "4.6.1-1"),
    ("rpmlib(ScriptletExpansion)", "4.9.0-1"),
    ("rpmlib(TildeInVersions)", "4.10.0-1"),
];

#[test]
fn the_rpm_is_one_that_centos_7s_rpm_4_11_installs() {
    // No weak dependencies (rpm 4.12 and later): 4.11 has no such tags.
    let weak = run(Command::new("rpm")
        .args([
            "-qp",
            "--recommends",
            "--suggests",
            "--supplements",
            "--enhances",
        ])
        .arg(rpm()));
    assert_eq!(weak, "", "weak dependencies");

    // Every rpmlib() feature it requires is one 4.11 has.
    let requires = run(Command::new("rpm").args(["-qp", "--requires"]).arg(rpm()));
    let features: Vec<&str> = requires
        .lines()
        .filter(|r| r.starts_with("rpmlib("))
        .collect();
    assert!(!features.is_empty(), "{requires}");
    for feature in features {
        let (name, version) = match feature.split_whitespace().collect::<Vec<_>>()[..] {
            [name, "=" | "<=", version] => (name, version),
            _ => panic!("unexpected requirement {feature}"),
        };
        assert!(
            RPM_4_11_FEATURES.contains(&(name, version)),
            "rpm 4.11 has no {feature}"
        );
    }

    // A payload compressor 4.11 reads (gzip, bzip2, xz, lzma; not zstd),
    // and per-file digests it knows (md5 1, sha1 2, sha256 8, sha384 9,
    // sha512 10).
    assert_eq!(rpm_query(rpm(), "%{PAYLOADCOMPRESSOR}"), "xz");
    assert_eq!(rpm_query(rpm(), "%{PAYLOADFORMAT}"), "cpio");
    assert_eq!(rpm_query(rpm(), "%{FILEDIGESTALGO}"), "8");

    // The header SHA1 and header+payload MD5 digests, the ones 4.11 checks
    // (it knows no SHA256 header digest), are there and match.
    let check = run(Command::new("rpm")
        .args(["-Kv", "--nosignature"])
        .arg(rpm()));
    for digest in ["Header SHA1 digest: OK", "MD5 digest: OK"] {
        assert!(check.contains(digest), "{digest}:\n{check}");
    }
    assert!(!check.contains("NOT OK"), "{check}");
}

#[test]
fn the_unpacked_rpm_runs_and_carries_the_generated_and_example_files() {
    // rpm2cpio | cpio -idm, as one unpacks an .rpm without installing it.
    let root = tempfile::tempdir().unwrap();
    let mut rpm2cpio = Command::new("rpm2cpio")
        .arg(rpm())
        .stdout(Stdio::piped())
        .spawn()
        .expect("rpm2cpio (make deps installs it)");
    let cpio = Command::new("cpio")
        .args(["-idm", "--quiet"])
        .current_dir(root.path())
        .stdin(rpm2cpio.stdout.take().unwrap())
        .output()
        .expect("cpio (make deps installs it)");
    // rpm2cpio (rpm 4.14 and later) exits 1 when what it copied differs
    // from the header's archive size, and the header cargo-generate-rpm's
    // rpm library writes has none (installing uses it only for progress).
    // The payload is whole all the same: cpio reads up to its trailer and
    // `rpm -K` checks its digest (the test above).
    let status = rpm2cpio.wait().unwrap();
    let no_size = rpm_query(rpm(), "%{LONGARCHIVESIZE}") == "(none)";
    assert!(status.success() || no_size, "rpm2cpio: {status}");
    assert!(
        cpio.status.success(),
        "cpio: {}",
        String::from_utf8_lossy(&cpio.stderr)
    );
    let usr = root.path().join("usr");
    assert_unpacked(&usr, "share/zsh/site-functions/_stretcher");
    assert_eq!(
        std::fs::read_to_string(usr.join("share/licenses/stretcher/LICENSE")).unwrap(),
        std::fs::read_to_string(repo().join("LICENSE")).unwrap()
    );
}

#[test]
fn the_rpm_installs_verifies_and_erases_in_a_scratch_root() {
    // Debian's rpm (4.18, not 4.11) installing for real: each file's
    // digest, mode and owner checked by `rpm -V`, then all of them removed.
    // --nodeps: the scratch root has no glibc package.
    let root = tempfile::tempdir().unwrap();
    let rpm_in_root = |args: &[&str]| {
        let mut cmd = Command::new("rpm");
        cmd.arg("--root")
            .arg(root.path())
            .args(["--dbpath", "/rpmdb"])
            .args(args);
        cmd
    };
    run(&mut rpm_in_root(&["--initdb"]));
    run(rpm_in_root(&["-i", "--nodeps"]).arg(rpm()));
    let installed = run(&mut rpm_in_root(&["-qa"]));
    let nvra = format!("stretcher-{}-1.x86_64\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(installed, nvra);
    let binary = root.path().join("usr/bin/stretcher");
    assert!(
        std::fs::read(&binary).unwrap() == std::fs::read(given()).unwrap(),
        "{} is not {}",
        binary.display(),
        given().display()
    );
    assert_eq!(run(&mut rpm_in_root(&["-V", "--nodeps", "stretcher"])), "");

    run(&mut rpm_in_root(&["-e", "--nodeps", "stretcher"]));
    assert_eq!(run(&mut rpm_in_root(&["-qa"])), "");
    for path in rpm_contents(rpm()).keys() {
        let path = root.path().join(path.trim_start_matches('/'));
        assert!(!path.exists(), "{} is left after rpm -e", path.display());
    }
}
