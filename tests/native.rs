//! SPEC 8.1: `sync_strategy: native` through the binary — what an operator
//! sees: files in dest, what was left alone, errors before the download,
//! failures part-way, signals, and an unprivileged deploy user. Equality
//! with rsync on generated cases is in `native_diff.rs`.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::{
    app_manifest, app_tar, manifest_for, many_files, mode, sha256, stops_within_a_second, tar,
    tree, wait_for, Fixture, Member,
};

const NATIVE: &str = "sync_strategy: native\n";

fn inode(p: &std::path::Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

/// Dest holds exactly the app, and a redeploy of a changed archive
/// rewrites only the changed file: the others keep their inodes.
#[test]
fn native_deploys_the_tree_and_rewrites_only_what_changed() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.dest()).unwrap();
    fx.write("dest/stale.txt", "old");
    let log = fx
        .deploy(&app_manifest(&fx, &format!("{NATIVE}dest_mode: 0751\n")))
        .ok();
    assert!(log.contains("(native)"), "{log}");
    let dest = fx.dest();
    assert_eq!(
        std::fs::read(dest.join("index.html")).unwrap(),
        b"<p>v1</p>\n"
    );
    assert!(!dest.join("stale.txt").exists(), "--delete semantics");
    assert_eq!(mode(&dest), 0o751, "dest_mode on dest's root");
    assert_eq!(mode(&dest.join("secret.conf")), 0o600);
    assert_eq!(mode(&dest.join("bin/start")), 0o755);
    // The same tree as the rsync strategy leaves.
    let by_rsync = Fixture::new();
    by_rsync
        .deploy(&app_manifest(&by_rsync, "dest_mode: 0751\n"))
        .ok();
    assert_eq!(tree(&dest), tree(&by_rsync.dest()));

    let kept = inode(&dest.join("bin/start"));
    let changed = inode(&dest.join("index.html"));
    let v2 = tar(&[
        Member::Dir("bin/", 0o755),
        Member::File("bin/start", b"#!/bin/sh\necho start\n", 0o755),
        Member::File("index.html", b"<p>v2!</p>\n", 0o644),
    ]);
    fx.write("v2.tar", &v2);
    let log = fx
        .deploy(&manifest_for(&fx, &fx.url("v2.tar"), &sha256(&v2), NATIVE))
        .ok();
    assert_eq!(
        std::fs::read(dest.join("index.html")).unwrap(),
        b"<p>v2!</p>\n"
    );
    assert_ne!(inode(&dest.join("index.html")), changed, "rewritten");
    assert_eq!(inode(&dest.join("bin/start")), kept, "left alone");
    assert!(!dest.join("secret.conf").exists());
    assert!(
        log.contains("native sync: 1 written, 1 unchanged, 4 deleted"),
        "{log}"
    );
    fx.assert_no_temp_files();
}

#[test]
fn excludes_keep_dest_files_and_an_unsupported_pattern_fails_before_the_download() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.dest()).unwrap();
    fx.write("dest/logs/today.log", "keep me");
    fx.write("dest/old.txt", "delete me");
    fx.deploy(&app_manifest(
        &fx,
        &format!("{NATIVE}excludes:\n  - '*.pid'\n  - /logs/\nexclude_from: exclude.list\n"),
    ))
    .ok();
    let dest = fx.dest();
    assert_eq!(
        std::fs::read(dest.join("logs/today.log")).unwrap(),
        b"keep me"
    );
    assert!(!dest.join("old.txt").exists());
    assert!(!dest.join("app.pid").exists(), "excluded by excludes");
    assert!(!dest.join("debug.log").exists(), "excluded by exclude_from");
    assert!(dest.join("index.html").exists());

    // A src that does not exist: reaching the download would fail with
    // "src failed".
    let yaml = format!(
        "src: {}\nchecksum: {}\ndest: {}\n{NATIVE}excludes:\n  - '+ keep/'\ncommands:\n  failure:\n    - 'cat > {}'\n",
        fx.url("missing.tar"),
        "0".repeat(64),
        dest.display(),
        fx.path("failure.log").display()
    );
    let log = fx.deploy(&yaml).failed();
    assert!(
        log.contains(r#"excludes: pattern "+ keep/" is not supported by sync_strategy native"#),
        "{log}"
    );
    assert!(!log.contains("src failed"), "{log}");
    let hook_saw = std::fs::read_to_string(fx.path("failure.log")).unwrap();
    assert!(hook_saw.contains("not supported"), "{hook_saw}");
}

/// A truncated archive fails part-way: each file in dest is wholly old or
/// wholly new, and no temp name is left.
#[test]
fn a_failure_part_way_leaves_whole_files_and_no_temp_names() {
    let fx = Fixture::new();
    let v1 = tar(&[
        Member::File("a.txt", b"old a", 0o644),
        Member::File("b.txt", b"old b", 0o644),
    ]);
    fx.write("v1.tar", &v1);
    fx.deploy(&manifest_for(&fx, &fx.url("v1.tar"), &sha256(&v1), NATIVE))
        .ok();
    let big = vec![b'x'; 200_000];
    let mut v2 = tar(&[
        Member::File("a.txt", b"new a, longer", 0o644),
        Member::File("b.txt", &big, 0o644),
    ]);
    v2.truncate(512 * 3 + 100_000);
    fx.write("v2.tar", &v2);
    let log = fx
        .deploy(&manifest_for(&fx, &fx.url("v2.tar"), &sha256(&v2), NATIVE))
        .failed();
    assert!(log.contains("truncated"), "{log}");
    let dest = fx.dest();
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), b"new a, longer");
    assert_eq!(std::fs::read(dest.join("b.txt")).unwrap(), b"old b");
    let names: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2, "temp names left: {names:?}");
    fx.assert_no_temp_files();
}

/// A directory in dest the deploy user cannot write (root's, mode 0555):
/// the run fails naming it and leaves its files alone.
#[test]
fn a_dest_dir_the_deploy_user_cannot_write_fails_naming_it() {
    if !common::is_root() {
        eprintln!("skipped: needs root to give dest a directory the deploy user cannot write");
        return;
    }
    let fx = Fixture::new();
    fx.write("dest/locked/old.txt", "old");
    let data = tar(&[Member::File("locked/new.txt", b"new", 0o644)]);
    fx.write("a.tar", &data);
    let url = fx.manifest(&manifest_for(&fx, &fx.url("a.tar"), &sha256(&data), NATIVE));
    fx.chown_to_nobody();
    let locked = fx.dest().join("locked");
    std::os::unix::fs::chown(&locked, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
    // As `run_unprivileged`, without handing `locked` back to nobody.
    let args = [
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        "--inh-caps=-all",
        "--",
        common::bin(),
    ];
    let log = fx.run_program("setpriv", &url, &args, &[]).failed();
    assert!(log.contains(&locked.display().to_string()), "{log}");
    assert_eq!(std::fs::read(locked.join("old.txt")).unwrap(), b"old");
    assert!(!locked.join("new.txt").exists());
}

/// As an unprivileged deploy user: the umask applies, and a read-only
/// directory in the archive can be redeployed over.
#[test]
fn an_unprivileged_user_deploys_and_redeploys_read_only_dirs() {
    let fx = Fixture::new();
    let v1 = tar(&[
        Member::Dir("ro/", 0o555),
        Member::File("ro/a.txt", b"v1", 0o666),
        Member::File("ro/gone.txt", b"v1", 0o644),
    ]);
    fx.write("v1.tar", &v1);
    let url = fx.manifest(&manifest_for(&fx, &fx.url("v1.tar"), &sha256(&v1), NATIVE));
    fx.run_unprivileged(&url, &[], &[]).ok();
    let dest = fx.dest();
    assert_eq!(mode(&dest.join("ro")), 0o555);
    assert_eq!(mode(&dest.join("ro/a.txt")), 0o644, "umask 022 applies");
    let v2 = tar(&[
        Member::Dir("ro/", 0o555),
        Member::File("ro/a.txt", b"v2!", 0o644),
    ]);
    fx.write("v2.tar", &v2);
    let url = fx.manifest(&manifest_for(&fx, &fx.url("v2.tar"), &sha256(&v2), NATIVE));
    fx.run_unprivileged(&url, &[], &[]).ok();
    assert_eq!(std::fs::read(dest.join("ro/a.txt")).unwrap(), b"v2!");
    assert!(!dest.join("ro/gone.txt").exists());
    assert_eq!(mode(&dest.join("ro")), 0o555);
}

#[test]
fn sigterm_during_a_native_sync_stops_it_promptly_with_whole_files() {
    let fx = Fixture::new();
    fx.write("dest/keep.txt", "the release before");
    let data = many_files(20_000);
    fx.write("big.tar", &data);
    let url = fx.manifest(&manifest_for(
        &fx,
        &fx.url("big.tar"),
        &sha256(&data),
        NATIVE,
    ));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "(native)");
    std::thread::sleep(Duration::from_millis(50));
    stops_within_a_second(&mut child, &[libc::SIGTERM]);
    wait_for(&rx, "Done");
    fx.assert_no_temp_files();
    let out = std::process::Command::new("find")
        .arg(fx.dest())
        .args(["-name", ".*"])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "temp names left in dest");
    assert_eq!(
        std::fs::read(fx.dest().join("keep.txt")).unwrap(),
        b"the release before",
        "not deleted: the sync stopped before its delete pass"
    );
}

/// A hard link to an excluded member waits for a second read of the
/// archive; a later symlink over its directory takes it away, as in the
/// extracted tree, and nothing is written through that symlink.
#[test]
fn a_pending_hard_link_never_writes_through_a_later_symlink() {
    let fx = Fixture::new();
    let outside = fx.path("outside");
    std::fs::create_dir(&outside).unwrap();
    fx.write("outside/victim", "ORIGINAL");
    let data = tar(&[
        Member::File("payload.log", b"PWNED", 0o644),
        Member::Dir("d/", 0o755),
        Member::HardLink("d/victim", "payload.log"),
        Member::Symlink("d", outside.to_str().unwrap()),
    ]);
    fx.write("a.tar", &data);
    let yaml = format!("{NATIVE}excludes:\n  - '*.log'\n");
    fx.deploy(&manifest_for(&fx, &fx.url("a.tar"), &sha256(&data), &yaml))
        .ok();
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"ORIGINAL");
    assert!(std::fs::symlink_metadata(fx.dest().join("d"))
        .unwrap()
        .file_type()
        .is_symlink());
}

/// As an unprivileged user: a `dest_mode` without owner write, a dir
/// the user may not read (0311: rsync's sender cannot list it, so only
/// native can deploy it) and names of 255 bytes, deployed and redeployed.
#[test]
fn an_unprivileged_user_redeploys_a_read_only_dest_unreadable_dirs_and_long_names() {
    let long = "n".repeat(255);
    let long_below = format!("x/{long}");
    let version = |v: &[u8]| {
        tar(&[
            Member::Dir("x/", 0o311),
            Member::File("x/f", v, 0o644),
            Member::File(&long, v, 0o644),
            Member::File(&long_below, v, 0o600),
        ])
    };
    let fx = Fixture::new();
    fx.write("v1.tar", version(b"v1"));
    fx.write("v2.tar", version(b"v2!"));
    let extra = format!("{NATIVE}dest_mode: 0555\n");
    for v in ["v1.tar", "v2.tar"] {
        let sum = sha256(&std::fs::read(fx.path(v)).unwrap());
        let url = fx.manifest(&manifest_for(&fx, &fx.url(v), &sum, &extra));
        fx.run_unprivileged(&url, &[], &[]).ok();
    }
    let dest = fx.dest();
    assert_eq!(mode(&dest), 0o555);
    assert_eq!(mode(&dest.join("x")), 0o311);
    assert_eq!(std::fs::read(dest.join(&long)).unwrap(), b"v2!");
    assert_eq!(std::fs::read(dest.join(&long_below)).unwrap(), b"v2!");
    assert_eq!(std::fs::read(dest.join("x/f")).unwrap(), b"v2!");
    // Let the fixture's cleanup into the dirs it may not write.
    let _ = std::process::Command::new("chmod")
        .args(["-R", "u+rwx"])
        .arg(&dest)
        .status();
}

/// A download that is not a tar leaves no dest behind.
#[test]
fn an_archive_that_is_not_a_tar_creates_no_dest() {
    let fx = Fixture::new();
    fx.write("not.tar", "<html>not found</html>\n");
    let yaml = manifest_for(
        &fx,
        &fx.url("not.tar"),
        &sha256(b"<html>not found</html>\n"),
        NATIVE,
    );
    let log = fx.deploy(&yaml).failed();
    assert!(log.contains("not a tar archive"), "{log}");
    assert!(!fx.dest().exists(), "dest was created");
    fx.assert_no_temp_files();
}

/// A first deploy into a missing dest renames the extracted tree into
/// place; with a pattern (even one that matches nothing) or hard links in
/// the archive, files are placed one by one. Each way leaves what real
/// rsync leaves, and nothing beside dest.
#[test]
fn a_first_deploy_renames_the_extraction_into_place_and_equals_rsync() {
    let never = "excludes: [\"never-matches\"]\n";
    let deploy = |strategy: &str, extra: &str, archive: &[u8]| {
        let fx = Fixture::new();
        fx.write("a.tar", archive);
        let yaml = manifest_for(
            &fx,
            &fx.url("a.tar"),
            &sha256(archive),
            &format!("sync_strategy: {strategy}\ndest_mode: 0750\n{extra}"),
        );
        let log = fx.deploy(&yaml).ok();
        let left: Vec<String> = std::fs::read_dir(fx.dest().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".stretcher"))
            .collect();
        assert!(left.is_empty(), "left beside dest: {left:?}");
        (log, tree(&fx.dest()), fx)
    };
    let plain = app_tar();
    let (log, renamed, _fx) = deploy("native", "", &plain);
    assert!(log.contains("moved the extracted tree into place"), "{log}");
    let (log, placed, _fx) = deploy("native", never, &plain);
    assert!(log.contains("native sync: "), "{log}");
    let (log, by_rsync, _fx) = deploy("rsync", never, &plain);
    assert!(log.contains("rsync ["), "{log}");
    assert_eq!(renamed, by_rsync);
    assert_eq!(placed, by_rsync);

    // An exclude_from file with no patterns excludes nothing: renamed too.
    let commented = tar(&[
        Member::File("index.html", b"<p>hi</p>\n", 0o644),
        Member::File("deploy.exclude", b"# nothing excluded yet\n\n", 0o644),
    ]);
    let from = "exclude_from: deploy.exclude\n";
    let (log, renamed, _fx) = deploy("native", from, &commented);
    assert!(log.contains("moved the extracted tree into place"), "{log}");
    let (_, by_rsync, _fx) = deploy("rsync", from, &commented);
    assert_eq!(renamed, by_rsync);

    let linked = tar(&[
        Member::File("a.txt", b"shared bytes\n", 0o640),
        Member::HardLink("b.txt", "a.txt"),
    ]);
    let (log, native, fx) = deploy("native", "", &linked);
    assert!(!log.contains("moved the extracted tree"), "{log}");
    assert!(log.contains("native sync: 2 written"), "{log}");
    let (_, by_rsync, _rsync_fx) = deploy("rsync", never, &linked);
    assert_eq!(native, by_rsync);
    let nlink = std::fs::metadata(fx.dest().join("b.txt")).unwrap().nlink();
    assert_eq!(nlink, 1, "copies, as rsync -a makes");
}

/// Writes `data` as `name` in the fixture and returns a manifest deploying
/// it into `dest` with `strategy`.
fn manifest_into(fx: &Fixture, dest: &Path, name: &str, data: &[u8], strategy: &str) -> String {
    fx.write(name, data);
    format!(
        "src: {}\nchecksum: {}\ndest: {}\nsync_strategy: {strategy}\n",
        fx.url(name),
        sha256(data),
        dest.display()
    )
}

/// The hidden names (temp files, old copies) anywhere below `dir`.
fn hidden_below(dir: &Path) -> Vec<String> {
    let out = std::process::Command::new("find")
        .arg(dir)
        .args(["-mindepth", "1", "-name", ".*"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// What a first deploy may leave beside `dest`: entries named `.stretcher…`.
fn beside(dest: &Path) -> Vec<String> {
    std::fs::read_dir(dest.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".stretcher"))
        .collect()
}

/// Native deploys wherever real rsync does (SPEC 8.1): a redeploy that
/// changes every file needs room for one more file, not for the old and
/// the new tree. A 2 MiB tmpfs holding three 500 kB files, and an ext4
/// filesystem with inodes for 15 files and a few more, each take a
/// redeploy that changes every file, with rsync and with native alike.
#[test]
fn a_redeploy_changing_every_file_fits_wherever_rsync_fits() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    let (big_v1, big_v2) = (vec![b'1'; 500_000], vec![b'2'; 499_000]);
    let big = |data: &[u8]| {
        tar(&[
            Member::File("a.bin", data, 0o644),
            Member::File("b.bin", data, 0o644),
            Member::File("c.bin", data, 0o644),
        ])
    };
    let fifteen = |data: &[u8]| {
        let names: Vec<String> = (0..15).map(|i| format!("f{i}")).collect();
        let members: Vec<Member> = names.iter().map(|n| Member::File(n, data, 0o644)).collect();
        tar(&members)
    };
    let tmpfs: fn(&Path) -> common::Mount = |dir| common::Mount::tmpfs(dir, "size=2m");
    let ext4: fn(&Path) -> common::Mount = |dir| common::Mount::ext4(dir, 32);
    let cases = [
        ("a 2 MiB tmpfs", tmpfs, big(&big_v1), big(&big_v2)),
        (
            "ext4 with 32 inodes",
            ext4,
            fifteen(b"v1\n"),
            fifteen(b"version 2\n"),
        ),
    ];
    for (place, mount, v1, v2) in &cases {
        let trees = ["rsync", "native"].map(|strategy| {
            let fx = Fixture::new();
            let small = fx.path("small");
            std::fs::create_dir(&small).unwrap();
            let _mounted = mount(&small);
            let dest = small.join("app");
            for (name, data) in [("v1.tar", v1), ("v2.tar", v2)] {
                let yaml = manifest_into(&fx, &dest, name, data, strategy);
                let run = fx.deploy(&yaml);
                assert_eq!(
                    run.code(),
                    0,
                    "{strategy} deploying {name} on {place}:\n{}",
                    run.stderr()
                );
            }
            assert_eq!(hidden_below(&small), Vec::<String>::new());
            tree(&dest)
        });
        assert_eq!(trees[0], trees[1], "{place}");
    }
}

/// A redeploy killed part-way leaves at most the file it was writing under
/// a temp name, not an old copy of every file it had replaced; the next
/// deploy leaves none.
#[test]
fn a_killed_redeploy_leaves_no_pile_of_old_copies() {
    let fx = Fixture::new();
    let v1 = many_files(5_000);
    let v2 = common::many_files_of(5_000, b"other bytes, a few more than before\n");
    let dest = fx.dest();
    fx.deploy(&manifest_into(&fx, &dest, "v1.tar", &v1, "native"))
        .ok();
    let url = fx.manifest(&manifest_into(&fx, &dest, "v2.tar", &v2, "native"));
    let (mut child, _rx) = fx.watch(Some(&url), &[]);
    // Members come in order: once f1000 is new, 1,000 files were replaced.
    let landmark = dest.join("d0/f1000");
    let started = std::time::Instant::now();
    while std::fs::metadata(&landmark).map(|m| m.len()).unwrap_or(0) != 36 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never got there"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let last = dest.join("d99/f4999");
    assert_eq!(
        std::fs::read(&last).unwrap(),
        b"some bytes of a file\n",
        "killed part-way"
    );
    let hidden = hidden_below(&dest);
    assert!(hidden.len() <= 1, "{} hidden names left", hidden.len());
    fx.deploy(&manifest_into(&fx, &dest, "v2.tar", &v2, "native"))
        .ok();
    assert_eq!(hidden_below(&dest), Vec::<String>::new());
    assert_eq!(
        std::fs::read(&last).unwrap(),
        b"other bytes, a few more than before\n"
    );
}

/// A first deploy into an empty dest that is a mount point, on a
/// filesystem with more room than the one holding it: native deploys it,
/// as rsync does, and leaves nothing beside dest.
#[test]
fn a_first_deploy_into_an_empty_mount_point_works_as_with_rsync() {
    if !common::is_root() {
        eprintln!("skipped: mounting tmpfs needs root");
        return;
    }
    let data = tar(&[
        Member::File("a.bin", &[b'a'; 800_000], 0o644),
        Member::File("b.bin", &[b'b'; 800_000], 0o640),
    ]);
    let trees = ["rsync", "native"].map(|strategy| {
        let fx = Fixture::new();
        let parent = fx.path("small");
        std::fs::create_dir(&parent).unwrap();
        let _outer = common::Mount::tmpfs(&parent, "size=1m");
        let dest = parent.join("app");
        std::fs::create_dir(&dest).unwrap();
        let _inner = common::Mount::tmpfs(&dest, "size=4m");
        let run = fx.deploy(&manifest_into(&fx, &dest, "a.tar", &data, strategy));
        assert_eq!(run.code(), 0, "{strategy}:\n{}", run.stderr());
        assert_eq!(beside(&dest), Vec::<String>::new(), "{strategy}");
        tree(&dest)
    });
    assert_eq!(trees[0], trees[1]);
}

/// A first deploy killed while it extracts beside dest leaves its
/// extraction dir; the next deploy removes it.
#[test]
fn the_next_deploy_removes_what_a_killed_first_deploy_left_beside_dest() {
    let fx = Fixture::new();
    let dest = fx.dest();
    let url = fx.manifest(&manifest_into(
        &fx,
        &dest,
        "big.tar",
        &many_files(20_000),
        "native",
    ));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "Extract archive");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!beside(&dest).is_empty(), "the killed run left nothing");
    let log = fx.run(&url, &[], &[]).ok();
    assert_eq!(beside(&dest), Vec::<String>::new(), "{log}");
    assert!(dest.join("d99/f19999").is_file());
}

/// The log counts every path that went, as rsync's `deleting` lines do:
/// the files of a directory that a file replaced, and a directory the
/// archive no longer has with what it held.
#[test]
fn the_deleted_count_includes_what_a_replaced_or_removed_directory_held() {
    let docs: Vec<String> = (0..50).map(|i| format!("docs/page{i}.html")).collect();
    let mut members: Vec<Member> = docs
        .iter()
        .map(|p| Member::File(p, b"a page\n", 0o644))
        .collect();
    members.extend([
        Member::File("old/a", b"a\n", 0o644),
        Member::File("old/b", b"b\n", 0o644),
        Member::File("old/sub/c", b"c\n", 0o644),
        Member::File("index.html", b"<p>hi</p>\n", 0o644),
    ]);
    let v1 = tar(&members);
    let v2 = tar(&[
        Member::File("docs", b"now a file\n", 0o644),
        Member::File("index.html", b"<p>hi</p>\n", 0o644),
    ]);
    // With an exclude (that matches nothing), directories go path by path.
    for excludes in ["", "excludes: [never-matches]\n"] {
        let deleted = ["rsync", "native"].map(|strategy| {
            let fx = Fixture::new();
            let deploy = |name: &str, data: &[u8]| {
                let yaml = manifest_into(&fx, &fx.dest(), name, data, strategy) + excludes;
                fx.deploy(&yaml).ok()
            };
            deploy("v1.tar", &v1);
            deploy("v2.tar", &v2)
        });
        // rsync's output is logged a line at a time, after the time stamp.
        let by_rsync = deleted[0]
            .lines()
            .filter(|l| l.get(20..).is_some_and(|l| l.starts_with("deleting ")));
        assert_eq!(by_rsync.count(), 55, "{}", deleted[0]);
        assert!(
            deleted[1].contains("native sync: 1 written, 1 unchanged, 55 deleted"),
            "{excludes}{}",
            deleted[1]
        );
    }
}

/// A renamed or moved tree (fingerprinted asset names) fits wherever rsync
/// fits (SPEC 8.1): when placing runs out of room, native first deletes
/// what the archive lacks, as rsync does. On a 2 MiB tmpfs mounted as
/// dest, holding `data/f1..f12` (1.2 MB), each of these redeploys leaves
/// what rsync leaves, with the default limit (the free space) and with
/// none (the disk fills): the files moved to `newdir/`, to the top, and
/// `data` become one file. The log says so, and counts what went as
/// rsync's `deleting` lines do.
#[test]
fn a_moved_tree_fits_wherever_rsync_fits() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    let files = |dir: &str| -> Vec<(String, Vec<u8>)> {
        (1..=12u8)
            .map(|i| (format!("{dir}f{i}"), vec![i; 100_000]))
            .collect()
    };
    // Directories are members, so that their mtimes are the archive's.
    let tar_of = |dir: &str, files: &[(String, Vec<u8>)]| {
        let mut members: Vec<Member> = files
            .iter()
            .map(|(name, data)| Member::File(name, data, 0o644))
            .collect();
        if !dir.is_empty() {
            members.insert(0, Member::Dir(dir, 0o755));
        }
        tar(&members)
    };
    let c1 = tar_of("data", &files("data/"));
    let cases = [
        ("moved to newdir/", tar_of("newdir", &files("newdir/"))),
        ("moved to the top", tar_of("", &files("g"))),
        (
            "data made one file",
            tar(&[Member::File("data", &vec![7; 1_200_000], 0o644)]),
        ),
    ];
    // With an exclude (that matches nothing), directories go path by path.
    let with_excludes = ["", "excludes: [never-matches]\n"];
    for ((case, next), excludes) in cases.iter().flat_map(|c| with_excludes.map(|e| (c, e))) {
        let runs = [("rsync", "0"), ("native", ""), ("native", "0")].map(|(strategy, limit)| {
            let fx = Fixture::new();
            let dest = fx.dest();
            std::fs::create_dir(&dest).unwrap();
            let _mounted = common::Mount::tmpfs(&dest, "size=2m");
            let mut log = String::new();
            for (name, data) in [("c1.tar", &c1), ("next.tar", next)] {
                let yaml = manifest_into(&fx, &dest, name, data, strategy) + excludes;
                let url = fx.manifest(&yaml);
                let args: &[&str] = match limit {
                    "" => &[],
                    _ => &["--max-extract-size", limit],
                };
                let run = fx.run(&url, args, &[]);
                assert_eq!(
                    run.code(),
                    0,
                    "{strategy} {limit} deploying {name} ({case}) {excludes}:\n{}",
                    run.stderr()
                );
                log = run.stderr();
            }
            assert_eq!(hidden_below(&dest), Vec::<String>::new(), "{case}");
            (tree(&dest), log)
        });
        let (by_rsync, rsync_log) = &runs[0];
        let deleting = rsync_log
            .lines()
            .filter(|l| l.get(20..).is_some_and(|l| l.starts_with("deleting ")))
            .count();
        assert!(deleting >= 12, "{case}: {rsync_log}");
        for (native, log) in &runs[1..] {
            assert_eq!(native, by_rsync, "{case}");
            assert!(
                log.contains("deleting what the archive lacks first"),
                "{case}: {log}"
            );
            assert!(
                log.contains(&format!(" {deleting} deleted")),
                "{case}: {log}"
            );
        }
    }
}

/// An archive that does not fit even with what it lacks gone fails as
/// before, naming the directory whose free space was measured: dest
/// itself when dest is a mount point, not its parent.
#[test]
fn too_big_for_a_dest_mount_point_names_dest() {
    if !common::is_root() {
        eprintln!("skipped: mounting a small filesystem needs root");
        return;
    }
    let fx = Fixture::new();
    let dest = fx.dest();
    std::fs::create_dir(&dest).unwrap();
    let _mounted = common::Mount::tmpfs(&dest, "size=1m");
    std::fs::write(dest.join("old"), vec![1; 300_000]).unwrap();
    let big = vec![2; 700_000];
    let data = tar(&[
        Member::File("a", &big, 0o644),
        Member::File("b", &big, 0o644),
    ]);
    let log = fx
        .deploy(&manifest_into(&fx, &dest, "big.tar", &data, "native"))
        .failed();
    let want = format!("free on {} (--max-extract-size)", dest.display());
    assert!(log.contains(&want), "{log}");
    assert!(
        log.contains("deleting what the archive lacks first"),
        "{log}"
    );
}
