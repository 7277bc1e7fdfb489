//! SPEC 5.5 under hostile archives: a decompression bomb stops at
//! `--max-extract-size` (0 is no limit) with dest untouched and no temp
//! files; fifos and devices in an archive are skipped with a line in the
//! log, as root and as an unprivileged user, and the rest deploys.

mod common;

use common::{gzip, manifest_for, sha256, tar, Fixture, Member};

/// A gzipped tar of one file of 20 MiB of zeros, written to `bomb.tar.gz`;
/// returns the manifest URL. `pre` and `failure` hooks leave markers.
fn bomb(fx: &Fixture) -> String {
    let zeros = vec![0u8; 20 << 20];
    let data = gzip(&tar(&[
        Member::File("small.txt", b"small\n", 0o644),
        Member::File("zeros.bin", &zeros, 0o644),
    ]));
    fx.write("bomb.tar.gz", &data);
    fx.write("dest/keep.txt", "the release before");
    let hooks = format!(
        "commands:\n  failure:\n    - touch {}\n",
        fx.path("failure-ran").display()
    );
    fx.manifest(&manifest_for(
        fx,
        &fx.url("bomb.tar.gz"),
        &sha256(&data),
        &hooks,
    ))
}

fn dest_names(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fx.dest())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_bomb_stops_at_the_limit_and_leaves_dest_alone() {
    let fx = Fixture::new();
    let url = bomb(&fx);
    let log = fx.run(&url, &["--max-extract-size", "1MiB"], &[]).failed();
    assert!(
        log.contains("archive expands past 1 MiB (--max-extract-size): stopped at zeros.bin"),
        "{log}"
    );
    assert!(log.contains("Deploy manifest failed:"), "{log}");
    assert_eq!(dest_names(&fx), ["keep.txt"]);
    assert_eq!(
        std::fs::read_to_string(fx.path("dest/keep.txt")).unwrap(),
        "the release before"
    );
    assert!(fx.path("failure-ran").exists(), "failure hooks did not run");
    fx.assert_no_temp_files();
}

#[test]
fn the_same_archive_deploys_under_the_default_limit_and_with_none() {
    for args in [
        &[][..],
        &["--max-extract-size", "0"][..],
        &["--max-extract-size=30MiB"][..],
    ] {
        let fx = Fixture::new();
        let url = bomb(&fx);
        fx.run(&url, args, &[]).ok();
        assert_eq!(
            std::fs::metadata(fx.path("dest/zeros.bin")).unwrap().len(),
            20 << 20,
            "{args:?}"
        );
        assert!(!fx.path("failure-ran").exists(), "{args:?}");
        fx.assert_no_temp_files();
    }
}

#[test]
fn a_bad_limit_is_a_one_line_error_naming_the_flag() {
    let fx = Fixture::new();
    let run = fx.run("", &["--max-extract-size", "lots"], &[]);
    assert_eq!(run.code(), 1);
    let err = run.stderr();
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--max-extract-size"), "{err}");
}

/// A tar with a file, a fifo, a char device and another file.
fn with_specials() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_mtime(common::MTIME);
        h.set_size(data.len() as u64);
        if kind == tar::EntryType::Char {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        b.append_data(&mut h, name, data).unwrap();
    };
    add("a.txt", tar::EntryType::Regular, b"a\n");
    add("pipe", tar::EntryType::Fifo, b"");
    add("dev/null", tar::EntryType::Char, b"");
    add("z.txt", tar::EntryType::Regular, b"z\n");
    b.into_inner().unwrap()
}

#[test]
fn fifos_and_devices_are_skipped_as_root_and_not() {
    for unprivileged in [false, true] {
        let fx = Fixture::new();
        let data = gzip(&with_specials());
        fx.write("s.tar.gz", &data);
        fx.write("dest/keep.txt", "old");
        let url = fx.manifest(&manifest_for(&fx, &fx.url("s.tar.gz"), &sha256(&data), ""));
        let run = if unprivileged {
            fx.run_unprivileged(&url, &[], &[])
        } else {
            fx.run(&url, &[], &[])
        };
        let log = run.ok();
        assert!(log.contains("skipping fifo member pipe: "), "{log}");
        assert!(
            log.contains("skipping character device member dev/null: "),
            "{log}"
        );
        assert_eq!(dest_names(&fx), ["a.txt", "z.txt"], "{log}");
        assert_eq!(std::fs::read(fx.path("dest/z.txt")).unwrap(), b"z\n");
        fx.assert_no_temp_files();
    }
}

/// Without `--max-extract-size`, the limit is the free space of the
/// filesystem the archive is extracted on: a 16 MiB TMPDIR stops a 20 MiB
/// archive with a message naming it, as root and as a deploy user.
#[test]
fn the_default_limit_is_the_free_space_where_the_archive_is_extracted() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    for unprivileged in [false, true] {
        let fx = Fixture::new();
        let url = bomb(&fx);
        let tmp = fx.path("tmp");
        let _tmpfs = common::Mount::tmpfs(&tmp, "size=16m,mode=1777");
        let run = match unprivileged {
            true => fx.run_unprivileged(&url, &[], &[]),
            false => fx.run(&url, &[], &[]),
        };
        let log = run.failed();
        let want = format!(
            "free on {} (--max-extract-size): stopped at zeros.bin",
            tmp.display()
        );
        assert!(
            log.contains("archive expands past the ") && log.contains(&want),
            "{log}"
        );
        assert_eq!(dest_names(&fx), ["keep.txt"]);
        assert!(fx.path("failure-ran").exists(), "failure hooks did not run");
        fx.assert_no_temp_files();
    }
}
