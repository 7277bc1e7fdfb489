//! SPEC 5.5 and the bad-input rules: unsafe or unreadable archives fail the
//! deploy with one clear error, run the failure hooks, leave dest untouched
//! and leave no temp files.

mod common;

use common::{gzip, manifest_for, raw_tar, sha256, tar, tree, Fixture, Member};

/// Deploys `data` into a dest that already holds a release; returns the log
/// after asserting failure, untouched dest, failure hooks and no temp files.
fn deploy_bad(data: &[u8]) -> String {
    let fx = Fixture::new();
    std::fs::create_dir(fx.dest()).unwrap();
    fx.write("dest/index.html", "live");
    let before = tree(&fx.dest());
    fx.write("bad.tar", data);
    let failure = fx.path("failure.log");
    let extra = format!("commands:\n  failure:\n    - cat > {}\n", failure.display());
    let log = fx
        .deploy(&manifest_for(
            &fx,
            &fx.url("bad.tar"),
            &sha256(data),
            &extra,
        ))
        .failed();
    assert_eq!(tree(&fx.dest()), before, "dest changed: {log}");
    let hook_stdin = std::fs::read_to_string(&failure).expect("failure hook ran");
    assert!(
        hook_stdin.contains("Deploy manifest failed: "),
        "{hook_stdin}"
    );
    assert!(!log.contains("panicked"), "{log}");
    fx.assert_no_temp_files();
    log
}

#[test]
fn member_with_dotdot_fails() {
    let log = deploy_bad(&raw_tar(&[("ok.txt", b"x"), ("a/../../escape.txt", b"x")]));
    assert!(log.contains("contains '..'"), "{log}");
}

#[test]
fn absolute_member_is_stripped_not_written_to_root() {
    let fx = Fixture::new();
    let name = format!("{}/abs.txt", fx.path("outside").display());
    let data = raw_tar(&[(name.as_str(), b"x")]);
    fx.write("a.tar", &data);
    fx.deploy(&manifest_for(&fx, &fx.url("a.tar"), &sha256(&data), ""))
        .ok();
    assert!(!fx.path("outside/abs.txt").exists());
    let inside = fx.dest().join(name.trim_start_matches('/'));
    assert!(inside.exists(), "leading / stripped: {}", inside.display());
}

#[test]
fn write_through_symlink_outside_fails() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let data = tar(&[
        Member::Symlink("evil", &target),
        Member::File("evil/pwned.txt", b"x", 0o644),
    ]);
    let log = deploy_bad(&data);
    assert!(!outside.path().join("pwned.txt").exists(), "{log}");
}

#[test]
fn directory_through_symlink_outside_fails() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let data = tar(&[
        Member::Symlink("evil", &target),
        Member::Dir("evil/sub/", 0o755),
    ]);
    let log = deploy_bad(&data);
    assert!(log.contains("outside the extraction dir"), "{log}");
    assert!(!outside.path().join("sub").exists());
}

#[test]
fn hard_link_to_outside_fails() {
    let data = tar(&[Member::HardLink("passwd", "../../../../etc/passwd")]);
    let log = deploy_bad(&data);
    assert!(log.contains("contains '..'"), "{log}");
}

#[test]
fn unreadable_archive_fails() {
    let log = deploy_bad(&gzip(
        b"this is not a tar archive at all, just text that is long enough",
    ));
    assert!(log.contains("Deploy manifest failed: "), "{log}");
    let log = deploy_bad(&[0x1f, 0x8b, 0x08, 0, 1, 2, 3]);
    assert!(log.contains("Deploy manifest failed: "), "{log}");
}

/// A later directory member replaces a symlink at its path (the later member
/// wins, SPEC 5.5) with a real directory: nothing is done through the link,
/// so the directory it pointed to, outside, keeps its mode and stays empty.
#[test]
fn directory_member_naming_a_symlink_replaces_it_and_leaves_the_target_alone() {
    use std::os::unix::fs::PermissionsExt;
    let outside = tempfile::tempdir().unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let data = tar(&[
        Member::Symlink("evil", &target),
        Member::Dir("evil/", 0o777),
        Member::File("evil/inside.txt", b"x", 0o644),
    ]);
    let fx = Fixture::new();
    fx.write("a.tar", &data);
    fx.deploy(&manifest_for(&fx, &fx.url("a.tar"), &sha256(&data), ""))
        .ok();
    let evil = std::fs::symlink_metadata(fx.dest().join("evil")).unwrap();
    assert!(
        evil.is_dir(),
        "the symlink was replaced by a real directory"
    );
    assert!(fx.dest().join("evil/inside.txt").is_file());
    assert_eq!(
        common::mode(outside.path()),
        0o700,
        "chmod went through the symlink"
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// A symlink made through an in-tree directory symlink (`a/s`, with `a ->
/// b`) is really `b/s`; a later member through `b/s` must be checked too.
#[test]
fn symlink_made_through_an_in_tree_symlink_is_still_checked() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let data = tar(&[
        Member::Dir("b/", 0o755),
        Member::Symlink("a", "b"),
        Member::Symlink("a/s", &target),
        Member::File("b/s/pwned.txt", b"x", 0o644),
    ]);
    let log = deploy_bad(&data);
    assert!(log.contains("outside the extraction dir"), "{log}");
    assert!(!outside.path().join("pwned.txt").exists());
}

/// A hard link to a symlink is a symlink too: a member through it is
/// checked like one through the original.
#[test]
fn hard_link_to_a_symlink_is_checked_like_the_symlink() {
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().to_str().unwrap().to_string();
    let data = tar(&[
        Member::Symlink("s", &target),
        Member::HardLink("h", "s"),
        Member::File("h/pwned.txt", b"x", 0o644),
    ]);
    let log = deploy_bad(&data);
    assert!(log.contains("outside the extraction dir"), "{log}");
    assert!(!outside.path().join("pwned.txt").exists());
}

#[test]
fn file_member_replaces_a_symlink_instead_of_writing_through_it() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.txt");
    std::fs::write(&victim, "untouched").unwrap();
    let data = tar(&[
        Member::Symlink("x", victim.to_str().unwrap()),
        Member::File("x", b"replaced", 0o644),
    ]);
    let fx = Fixture::new();
    fx.write("a.tar", &data);
    fx.deploy(&manifest_for(&fx, &fx.url("a.tar"), &sha256(&data), ""))
        .ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    assert_eq!(
        std::fs::read_to_string(fx.dest().join("x")).unwrap(),
        "replaced"
    );
}
