//! SPEC 8.3: runs on one dest take turns, and the lock needs no more access
//! than the deploy itself.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{app_manifest, is_root, Fixture};

/// `/…/srv/app` writable by the deploy user, `/…/srv` not: an agent that may
/// write its app dir but not the dir holding it.
fn app_dir_in_a_root_owned_parent(fx: &Fixture) -> String {
    let yaml = app_manifest(fx, "").replace(
        &format!("dest: {}", fx.dest().display()),
        &format!("dest: {}", fx.path("srv/app").display()),
    );
    fx.write("srv/app/old.txt", "the release before");
    let url = fx.manifest(&yaml);
    fx.chown_to_nobody();
    let srv = fx.path("srv");
    assert!(Command::new("chown")
        .arg("root:root")
        .arg(&srv)
        .status()
        .unwrap()
        .success());
    std::fs::set_permissions(&srv, std::fs::Permissions::from_mode(0o755)).unwrap();
    url
}

#[test]
fn an_agent_that_cannot_write_dests_parent_still_deploys() {
    if !is_root() {
        eprintln!("skipped: needs root to set up a parent the agent cannot write");
        return;
    }
    let fx = Fixture::new();
    let url = app_dir_in_a_root_owned_parent(&fx);
    let log = fx.run_unprivileged(&url, &[], &[]).ok();
    assert!(fx.path("srv/app/index.html").exists(), "{log}");
    assert!(!fx.path("srv/app/old.txt").exists(), "{log}");
    let left: Vec<_> = std::fs::read_dir(fx.path("srv"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["app"], "nothing but the app beside it");
    fx.assert_no_temp_files();
}

#[test]
fn read_only_directories_in_the_archive_leave_no_temp_tree() {
    let fx = Fixture::new();
    let data = common::gzip(&common::tar(&[
        common::Member::Dir("ro/", 0o555),
        common::Member::File("ro/inner.txt", b"read-only dir content\n", 0o444),
        common::Member::File("index.html", b"v2\n", 0o644),
    ]));
    fx.write("ro.tar.gz", &data);
    // A populated dest, so rsync runs (a fresh one takes the extracted tree
    // by rename).
    fx.write("dest/old.txt", "old");
    let url = fx.manifest(&common::manifest_for(
        &fx,
        &fx.url("ro.tar.gz"),
        &common::sha256(&data),
        "",
    ));
    let log = fx.run_unprivileged(&url, &[], &[]).ok();
    assert!(log.contains("rsync ["), "{log}");
    assert_eq!(
        std::fs::read_to_string(fx.dest().join("ro/inner.txt")).unwrap(),
        "read-only dir content\n"
    );
    fx.assert_no_temp_files();
}

/// Holds an exclusive flock on `dir`, as a run deploying into a fresh dest
/// there does.
fn hold(dir: &std::path::Path) -> std::fs::File {
    let held = std::fs::File::open(dir).unwrap();
    held.lock().unwrap();
    held
}

#[test]
fn lock_timeout_fails_the_waiting_run() {
    let fx = Fixture::new();
    let url = fx.manifest(&app_manifest(&fx, ""));
    let held = hold(fx.root.path());
    let started = Instant::now();
    let log = fx.run(&url, &["--lock-timeout", "300ms"], &[]).failed();
    assert!(log.contains("waiting for lock"), "{log}");
    assert!(log.contains("still held after 300ms"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!fx.dest().exists());
    drop(held);
    fx.run(&url, &[], &[]).ok();
}

#[test]
fn a_populated_dest_is_locked_by_itself_so_sibling_dests_deploy_side_by_side() {
    let fx = Fixture::new();
    fx.write("dest/old.txt", "old");
    let url = fx.manifest(&app_manifest(&fx, ""));
    let held = hold(&fx.dest());
    let log = fx.run(&url, &["--lock-timeout", "300ms"], &[]).failed();
    assert!(log.contains("still held after 300ms"), "{log}");
    drop(held);
    // Another run holding only a shared lock on the parent (a sibling's
    // deploy) does not stop this one.
    let sibling = std::fs::File::open(fx.root.path()).unwrap();
    sibling.lock_shared().unwrap();
    let log = fx.run(&url, &["--lock-timeout", "300ms"], &[]).ok();
    assert!(!log.contains("waiting for lock"), "{log}");
}

#[test]
fn commands_only_manifests_take_no_lock() {
    let fx = Fixture::new();
    let _held = hold(fx.root.path());
    let yaml = format!(
        "dest: {}\ncommands:\n  post:\n    - 'true'\n",
        fx.dest().display()
    );
    let log = fx
        .run(&fx.manifest(&yaml), &["--lock-timeout", "100ms"], &[])
        .ok();
    assert!(!log.contains("waiting for lock"), "{log}");
}

#[test]
fn a_parent_the_agent_may_only_pass_through_still_locks_dest_itself() {
    if !is_root() {
        eprintln!("skipped: needs root to set up a parent the agent cannot read");
        return;
    }
    let fx = Fixture::new();
    let url = app_dir_in_a_root_owned_parent(&fx);
    // Mode --x: the agent reaches srv/app but cannot open srv to lock it.
    std::fs::set_permissions(fx.path("srv"), std::fs::Permissions::from_mode(0o711)).unwrap();
    let log = fx.run_unprivileged(&url, &[], &[]).ok();
    assert!(!log.contains("deploying without the lock"), "{log}");
    assert!(fx.path("srv/app/index.html").exists(), "{log}");
    // The dest dir itself is the lock: a run holding it makes the next wait.
    let held = hold(&fx.path("srv/app"));
    let log = fx
        .run_unprivileged(&url, &["--lock-timeout", "300ms"], &[])
        .failed();
    assert!(log.contains("still held after 300ms"), "{log}");
    drop(held);
}
