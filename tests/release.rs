//! SPEC 8.2: `sync_strategy: release` through the binary — release dirs
//! beside dest, the atomic switch, hard links to unchanged files, pruning,
//! `stretcher releases` and `stretcher rollback`, failures before and after
//! the switch, and a reader that must never see a mixed tree.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    manifest_for, many_files, mode, sha256, stops_within_a_second, tar, tree, wait_exit, wait_for,
    Fixture, Member,
};

/// An app at version `v`: `a` and `b` carry the version (one byte longer
/// each time: the quick check compares size and mtime, and every member has
/// the same mtime), `same/*`, `bin/run` and `link` never change.
fn app(v: u32) -> Vec<u8> {
    let a = format!("version {v}\n{}", ".".repeat(v as usize)).into_bytes();
    tar(&[
        Member::Dir("./", 0o755),
        Member::File("a", &a, 0o644),
        Member::File("b", &a, 0o644),
        Member::Dir("same/", 0o755),
        Member::File("same/one", b"unchanged one\n", 0o644),
        Member::File("same/two", b"unchanged two\n", 0o600),
        Member::File("bin/run", b"#!/bin/sh\n", 0o755),
        Member::Symlink("link", "same/one"),
    ])
}

/// Writes version `v` and returns a release manifest for it (`extra`
/// appended).
fn manifest(fx: &Fixture, v: u32, extra: &str) -> String {
    let data = app(v);
    let name = format!("v{v}.tar");
    fx.write(&name, &data);
    manifest_for(
        fx,
        &fx.url(&name),
        &sha256(&data),
        &format!("sync_strategy: release\n{extra}"),
    )
}

fn releases_dir(fx: &Fixture) -> PathBuf {
    fx.path("releases")
}

/// Entries of `releases/` but the switch history: release names, and any
/// half-built or half-removed dir left. Sorted by name (several deploys in one second sort by
/// checksum: `stretcher releases` orders those by creation).
fn releases(fx: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(releases_dir(fx))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name != ".history")
        .collect();
    names.sort();
    names
}

/// The release dest points to.
fn live(fx: &Fixture) -> String {
    let target = std::fs::read_link(fx.dest()).unwrap();
    assert_eq!(target.parent(), Some(Path::new("releases")), "{target:?}");
    target.file_name().unwrap().to_string_lossy().into_owned()
}

/// Deploys versions `vs` in turn; the live release after each.
fn deploy_versions(fx: &Fixture, vs: std::ops::RangeInclusive<u32>) -> Vec<String> {
    vs.map(|v| {
        fx.deploy(&manifest(fx, v, "")).ok();
        live(fx)
    })
    .collect()
}

fn ino(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn stretcher(fx: &Fixture, args: &[&str]) -> common::Run {
    fx.run("", args, &[])
}

#[test]
fn four_deploys_with_keep_2_leave_the_live_and_previous_releases_sharing_unchanged_files() {
    let fx = Fixture::new();
    let post = format!(
        "keep_releases: 2\ndest_mode: 0750\ncommands:\n  post:\n    - echo \"$STRETCHER_RELEASE_DIR\" > {}\n",
        fx.path("post.txt").display()
    );
    let mut lives = Vec::new();
    for v in 1..=4 {
        let log = fx.deploy(&manifest(&fx, v, &post)).ok();
        lives.push(live(&fx));
        assert!(log.contains("Switched "), "{log}");
        let said = std::fs::read_to_string(fx.path("post.txt")).unwrap();
        assert_eq!(
            Path::new(said.trim()),
            releases_dir(&fx).join(&lives[v as usize - 1]),
            "post sees STRETCHER_RELEASE_DIR"
        );
        assert_eq!(
            std::fs::read(fx.dest().join("a")).unwrap(),
            format!("version {v}\n{}", ".".repeat(v as usize)).as_bytes()
        );
        if v > 2 {
            assert!(log.contains("Removed old release"), "{log}");
        }
    }
    // Exactly the live release and the one before it.
    let mut kept = vec![lives[2].clone(), lives[3].clone()];
    kept.sort();
    assert_eq!(releases(&fx), kept);
    assert_eq!(live(&fx), lives[3]);
    let (new, old) = (
        releases_dir(&fx).join(&lives[3]),
        releases_dir(&fx).join(&lives[2]),
    );
    for f in ["same/one", "same/two", "bin/run"] {
        assert_eq!(ino(&new.join(f)), ino(&old.join(f)), "{f} shared");
    }
    for f in ["a", "b"] {
        assert_ne!(ino(&new.join(f)), ino(&old.join(f)), "{f} changed");
    }
    assert_eq!(mode(&new), 0o750, "dest_mode on the release root");
    // A release is what rsync makes of the archive in an empty dest.
    let by_rsync = Fixture::new();
    let data = app(4);
    by_rsync.write("v4.tar", &data);
    by_rsync
        .deploy(&manifest_for(
            &by_rsync,
            &by_rsync.url("v4.tar"),
            &sha256(&data),
            "dest_mode: 0750\n",
        ))
        .ok();
    assert_eq!(tree(&new), tree(&by_rsync.dest()));
    assert_eq!(mode(&new), mode(&by_rsync.dest()));
    fx.assert_no_temp_files();
}

#[test]
fn releases_lists_and_rollback_switches_back_and_to_a_named_release() {
    let fx = Fixture::new();
    let names = deploy_versions(&fx, 1..=3);
    let dest = fx.dest().display().to_string();
    let out = stretcher(&fx, &["releases", "--dest", &dest]).stdout();
    let marked: Vec<&str> = out.lines().filter(|l| l.starts_with('*')).collect();
    assert_eq!(marked.len(), 1, "{out}");
    assert!(marked[0].contains(&names[2]), "{out}");
    for name in &names {
        assert!(out.contains(name.as_str()), "{out}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&stretcher(&fx, &["releases", "--dest", &dest, "--json"]).stdout())
            .unwrap();
    let rows = json["releases"].as_array().unwrap();
    let listed: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        listed,
        vec![&names[2], &names[1], &names[0]],
        "newest first"
    );
    assert_eq!(rows[0]["live"], true);
    assert_eq!(rows[1]["live"], false);
    assert!(rows[0]["bytes"].as_u64().unwrap() > 0);
    // The date comes from the name: yyyymmddHHMMSS, UTC.
    let at = rows[0]["deployed_at"].as_str().unwrap();
    let n = &names[2];
    let want = format!(
        "{}-{}-{}T{}:{}:{}+00:00",
        &n[..4],
        &n[4..6],
        &n[6..8],
        &n[8..10],
        &n[10..12],
        &n[12..14]
    );
    assert_eq!(at, want);
    assert!(marked[0].ends_with(" UTC"), "{out}");
    assert_eq!(json["live"], names[2].as_str());

    let log = stretcher(&fx, &["rollback", "--dest", &dest]).ok();
    assert!(
        log.contains(&format!("from {} to {}", names[2], names[1])),
        "{log}"
    );
    assert_eq!(live(&fx), names[1]);
    assert_eq!(
        std::fs::read(fx.dest().join("a")).unwrap(),
        b"version 2\n.."
    );
    stretcher(&fx, &["rollback", "--dest", &dest]).ok();
    assert_eq!(live(&fx), names[0]);
    let err = stretcher(&fx, &["rollback", "--dest", &dest]).failed();
    assert!(err.contains("nothing to roll back to"), "{err}");
    assert_eq!(live(&fx), names[0]);

    stretcher(&fx, &["rollback", "--dest", &dest, "--to", &names[2]]).ok();
    assert_eq!(live(&fx), names[2]);
    let err = stretcher(
        &fx,
        &[
            "rollback",
            "--dest",
            &dest,
            "--to",
            "20200101000000-deadbeef",
        ],
    )
    .failed();
    assert!(err.contains("no release 20200101000000-deadbeef"), "{err}");
    assert_eq!(releases(&fx).len(), 3, "a rollback removes nothing");
}

#[test]
fn a_rollback_recorded_in_the_state_dir_stops_a_repeated_event_rolling_forward() {
    let fx = Fixture::new();
    let state = fx.path("state").display().to_string();
    let flags = ["--state-dir", state.as_str()];
    fx.run(&fx.manifest(&manifest(&fx, 1, "")), &flags, &[])
        .ok();
    let v2 = fx.manifest(&manifest(&fx, 2, ""));
    fx.run(&v2, &flags, &[]).ok();
    let dest = fx.dest().display().to_string();
    stretcher(&fx, &["rollback", "--dest", &dest, "--state-dir", &state]).ok();
    let before = live(&fx);

    let log = fx.run(&v2, &flags, &[]).failed();
    assert!(log.contains("was rolled back from release"), "{log}");
    assert!(log.contains("--force"), "{log}");
    assert_eq!(live(&fx), before, "not rolled forward");

    fx.run(&v2, &["--state-dir", &state, "--force"], &[]).ok();
    assert_eq!(
        std::fs::read(fx.dest().join("a")).unwrap(),
        b"version 2\n.."
    );
    // Another archive deploys as usual.
    fx.run(&fx.manifest(&manifest(&fx, 3, "")), &flags, &[])
        .ok();
}

#[test]
fn a_failure_before_the_switch_leaves_dest_where_it_was_and_no_half_release() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "")).ok();
    let before = live(&fx);

    // A member below a file the archive made.
    let bad = tar(&[
        Member::File("a", b"x", 0o644),
        Member::File("a/b", b"y", 0o644),
    ]);
    fx.write("bad.tar", &bad);
    let log = fx
        .deploy(&manifest_for(
            &fx,
            &fx.url("bad.tar"),
            &sha256(&bad),
            "sync_strategy: release\n",
        ))
        .failed();
    assert!(log.contains("which the archive made a file"), "{log}");
    assert_eq!(live(&fx), before);
    assert_eq!(releases(&fx), vec![before.clone()]);

    // A failing pre hook.
    let log = fx
        .deploy(&manifest(&fx, 2, "commands:\n  pre:\n    - exit 3\n"))
        .failed();
    assert!(log.contains("failed: exit 3"), "{log}");
    assert_eq!(live(&fx), before);
    assert_eq!(releases(&fx), vec![before.clone()]);
    fx.assert_no_temp_files();
}

#[test]
fn sigterm_while_a_release_is_built_removes_it_and_leaves_dest() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "")).ok();
    let before = live(&fx);
    let data = many_files(20_000);
    fx.write("big.tar", &data);
    let url = fx.manifest(&manifest_for(
        &fx,
        &fx.url("big.tar"),
        &sha256(&data),
        "sync_strategy: release\n",
    ));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "Build release");
    std::thread::sleep(Duration::from_millis(50));
    stops_within_a_second(&mut child, &[libc::SIGTERM]);
    wait_for(&rx, "Done");
    assert_eq!(live(&fx), before);
    assert_eq!(
        releases(&fx),
        vec![before],
        "the half-built release is gone"
    );
    fx.assert_no_temp_files();
}

#[test]
fn a_failing_post_after_the_switch_is_a_failure_with_the_new_release_live() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "")).ok();
    let hooks = format!(
        "commands:\n  post:\n    - exit 4\n  failure:\n    - echo \"$STRETCHER_RELEASE_DIR\" > {}\n",
        fx.path("failure.txt").display()
    );
    let url = fx.manifest(&manifest(&fx, 2, &hooks));
    let report = fx.path("report.json").display().to_string();
    // Without --no-auto-rollback, dest would be switched back (tests/verify.rs).
    let args = ["--report-file", &report, "--no-auto-rollback"];
    let log = fx.run(&url, &args, &[]).failed();
    assert!(log.contains("Deploy manifest failed"), "{log}");
    assert_eq!(
        std::fs::read(fx.dest().join("a")).unwrap(),
        b"version 2\n.."
    );
    assert_eq!(releases(&fx).len(), 2);
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["result"], "failure");
    assert_eq!(report["step"], "post");
    let live_dir = releases_dir(&fx).join(live(&fx));
    assert_eq!(report["release"], live_dir.display().to_string().as_str());
    let said = std::fs::read_to_string(fx.path("failure.txt")).unwrap();
    assert_eq!(Path::new(said.trim()), live_dir, "failure hooks see it too");
}

#[test]
fn a_real_directory_at_dest_is_refused_before_the_download_and_left_alone() {
    let fx = Fixture::new();
    fx.write("dest/user-data.txt", "precious");
    let server = common::http::Server::start();
    let data = app(1);
    let src = server.route("/v1.tar", common::http::Route::ok(data.clone()));
    let log = fx
        .deploy(&manifest_for(
            &fx,
            &src,
            &sha256(&data),
            "sync_strategy: release\n",
        ))
        .failed();
    assert!(log.contains("is a directory"), "{log}");
    assert!(log.contains("mv "), "says how to migrate: {log}");
    assert_eq!(server.hits("/v1.tar"), 0, "nothing downloaded");
    assert_eq!(
        std::fs::read(fx.dest().join("user-data.txt")).unwrap(),
        b"precious"
    );
    assert!(!releases_dir(&fx).exists());
}

#[test]
fn keep_releases_is_checked_before_the_download() {
    let fx = Fixture::new();
    let log = fx.deploy(&manifest(&fx, 1, "keep_releases: 0\n")).failed();
    assert!(log.contains("keep_releases must be at least 1"), "{log}");
    let data = app(1);
    fx.write("v.tar", &data);
    let log = fx
        .deploy(&manifest_for(
            &fx,
            &fx.url("v.tar"),
            &sha256(&data),
            "keep_releases: 3\n",
        ))
        .failed();
    assert!(
        log.contains("keep_releases is only used with sync_strategy: release"),
        "{log}"
    );
    assert!(!fx.dest().exists());
}

#[test]
fn excluded_members_are_not_in_the_release() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "excludes:\n  - same/\n  - b\n"))
        .ok();
    let rel = releases_dir(&fx).join(live(&fx));
    assert!(rel.join("a").exists());
    assert!(!rel.join("b").exists());
    assert!(!rel.join("same").exists());
}

#[test]
fn a_deploy_user_builds_and_shares_releases() {
    let fx = Fixture::new();
    let mut names = Vec::new();
    for v in 1..=2 {
        let url = fx.manifest(&manifest(&fx, v, ""));
        fx.run_unprivileged(&url, &[], &[]).ok();
        names.push(live(&fx));
    }
    assert_eq!(releases(&fx).len(), 2);
    let (old, new) = (
        releases_dir(&fx).join(&names[0]),
        releases_dir(&fx).join(&names[1]),
    );
    assert_eq!(ino(&old.join("same/one")), ino(&new.join("same/one")));
    assert_ne!(ino(&old.join("a")), ino(&new.join("a")));
}

/// A 1%-changed deploy writes only the changed files: the bytes in files
/// not shared with the previous release are at most 2% of the archive's.
#[test]
fn a_one_percent_change_writes_under_two_percent_of_the_bytes() {
    let fx = Fixture::new();
    let names: Vec<String> = (0..200).map(|i| format!("lib/f{i:03}")).collect();
    // A changed file is one byte longer (every member has the same mtime).
    let body = |n: &str, v: u32| {
        let mut b = format!("{n} v{v}\n").into_bytes();
        b.resize(16 * 1024 + v as usize, b'x');
        b
    };
    let build = |v: u32| {
        let bodies: Vec<Vec<u8>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| body(n, if i < 2 { v } else { 1 }))
            .collect();
        let members: Vec<Member> = names
            .iter()
            .zip(&bodies)
            .map(|(n, b)| Member::File(n, b, 0o644))
            .collect();
        tar(&members)
    };
    for v in 1..=2 {
        let data = build(v);
        fx.write("app.tar", &data);
        fx.deploy(&manifest_for(
            &fx,
            &fx.url("app.tar"),
            &sha256(&data),
            "sync_strategy: release\n",
        ))
        .ok();
    }
    let rel = releases_dir(&fx).join(live(&fx));
    let (mut total, mut fresh) = (0u64, 0u64);
    for n in &names {
        let meta = std::fs::metadata(rel.join(n)).unwrap();
        total += meta.len();
        if meta.nlink() == 1 {
            fresh += meta.len();
        }
    }
    let ratio = fresh as f64 / total as f64;
    eprintln!("new bytes: {fresh} of {total} ({:.2}%)", ratio * 100.0);
    assert!(ratio <= 0.02, "{ratio}");
    assert!(fresh > 0, "the changed files are new");
}

/// A reader that opens dest and reads two files through that one handle,
/// over and over while releases deploy and roll back, always finds both
/// and always the same version in both.
#[test]
fn a_reader_never_sees_a_missing_or_mixed_tree() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "keep_releases: 3\n")).ok();
    let stop = Arc::new(AtomicBool::new(false));
    let dest = fx.dest();
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let dir = std::fs::File::open(&dest).expect("dest always opens");
                let at = |f: &str| {
                    let p = format!("/proc/self/fd/{}/{f}", dir.as_raw_fd());
                    std::fs::read(p).unwrap_or_else(|e| panic!("{f}: {e}"))
                };
                let (a, b) = (at("a"), at("b"));
                assert_eq!(a, b, "a and b from one release");
                reads += 1;
            }
            reads
        })
    };
    let dest_s = fx.dest().display().to_string();
    for v in 2..=6 {
        fx.deploy(&manifest(&fx, v, "keep_releases: 3\n")).ok();
        if v % 2 == 0 {
            stretcher(&fx, &["rollback", "--dest", &dest_s]).ok();
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.join().expect("reader saw a whole tree every time");
    assert!(reads > 10, "{reads} reads");
}

#[test]
fn a_rollback_waits_for_a_deploy_to_the_same_dest() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "")).ok();
    let url = fx.manifest(&manifest(&fx, 2, "commands:\n  post:\n    - sleep 2\n"));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "Switched ");
    let dest = fx.dest().display().to_string();
    let err = stretcher(
        &fx,
        &["rollback", "--dest", &dest, "--lock-timeout", "200ms"],
    )
    .failed();
    assert!(err.contains("still held"), "{err}");
    let args = ["releases", "--dest", &dest, "--lock-timeout", "200ms"];
    let err = stretcher(&fx, &args).failed();
    assert!(err.contains("still held"), "releases takes it too: {err}");
    assert_eq!(wait_exit(&mut child), 0);
    stretcher(&fx, &["rollback", "--dest", &dest]).ok();
    assert_eq!(std::fs::read(fx.dest().join("a")).unwrap(), b"version 1\n.");
}

/// Two release dests in one directory would share `releases/`: the second
/// is refused before its download, and the first keeps working.
#[test]
fn a_second_release_dest_in_the_same_directory_is_refused() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "")).ok();
    let data = app(2);
    fx.write("v2.tar", &data);
    let other = fx.path("other");
    let log = fx
        .deploy(&format!(
            "src: {}\nchecksum: {}\ndest: {}\nsync_strategy: release\n",
            fx.url("v2.tar"),
            sha256(&data),
            other.display()
        ))
        .failed();
    assert!(log.contains("a directory of its own"), "{log}");
    let download = format!("Loading URL {}", fx.url("v2.tar"));
    assert!(
        !log.contains(&download),
        "refused before the download: {log}"
    );
    assert!(!other.exists());
    assert_eq!(releases(&fx).len(), 1);
    fx.deploy(&manifest(&fx, 3, "")).ok();
}

/// A later duplicate member with another mode in a new release is written
/// anew; the file the live release shares is never changed.
#[test]
fn building_a_release_never_changes_a_file_the_live_release_has() {
    let fx = Fixture::new();
    let v1 = tar(&[Member::File("x", b"same", 0o644)]);
    fx.write("v1.tar", &v1);
    let rel = "sync_strategy: release\n";
    fx.deploy(&manifest_for(&fx, &fx.url("v1.tar"), &sha256(&v1), rel))
        .ok();
    let old = releases_dir(&fx).join(live(&fx));
    let v2 = tar(&[
        Member::File("x", b"same", 0o644),
        Member::Dir("d/", 0o755),
        Member::File("d", b"now a file", 0o644),
        Member::File("x", b"same", 0o600),
    ]);
    fx.write("v2.tar", &v2);
    fx.deploy(&manifest_for(&fx, &fx.url("v2.tar"), &sha256(&v2), rel))
        .ok();
    let new = releases_dir(&fx).join(live(&fx));
    assert_eq!(mode(&old.join("x")), 0o644, "the old release is untouched");
    assert_eq!(mode(&new.join("x")), 0o600);
    assert_ne!(ino(&old.join("x")), ino(&new.join("x")));
}

/// After a rollback to an older release and a new deploy, a rollback goes
/// back to the release that deploy replaced, not to the next older name.
#[test]
fn rollback_returns_to_the_release_the_live_one_replaced() {
    let fx = Fixture::new();
    let names = deploy_versions(&fx, 1..=3);
    let dest = fx.dest().display().to_string();
    stretcher(&fx, &["rollback", "--dest", &dest, "--to", &names[0]]).ok();
    fx.deploy(&manifest(&fx, 4, "")).ok();
    stretcher(&fx, &["rollback", "--dest", &dest]).ok();
    assert_eq!(live(&fx), names[0], "back to v1, which v4 replaced");
    // And from there, to what v1 replaced: nothing (it was first).
    let err = stretcher(&fx, &["rollback", "--dest", &dest]).failed();
    assert!(err.contains("nothing to roll back to"), "{err}");
}

/// Every release rolled back from stays refused, whichever spelling of
/// dest the rollback was given; `stretcher status` shows the rollbacks.
#[test]
fn each_rollback_is_recorded_under_the_manifests_dest() {
    let fx = Fixture::new();
    let state = fx.path("state").display().to_string();
    let flags = ["--state-dir", state.as_str()];
    let mut urls = Vec::new();
    for v in 1..=3 {
        let url = fx.manifest(&manifest(&fx, v, ""));
        fx.write(
            &format!("m{v}.yml"),
            std::fs::read(fx.path("manifest.yml")).unwrap(),
        );
        fx.run(&url, &flags, &[]).ok();
        urls.push(fx.url(&format!("m{v}.yml")));
    }
    // Relative to the fixture (the agent's cwd), with a trailing slash.
    stretcher(&fx, &["rollback", "--dest", "dest/", "--state-dir", &state]).ok();
    stretcher(
        &fx,
        &["rollback", "--dest", "./dest", "--state-dir", &state],
    )
    .ok();
    for url in &urls[1..] {
        let log = fx.run(url, &flags, &[]).failed();
        assert!(log.contains("was rolled back from release"), "{log}");
    }
    let status = stretcher(&fx, &["status", "--state-dir", &state]).stdout();
    assert_eq!(status.matches("rollback:").count(), 2, "{status}");
    assert_eq!(status.matches("  /").count(), 1, "one dest: {status}");
    assert_eq!(std::fs::read(fx.dest().join("a")).unwrap(), b"version 1\n.");
}

#[test]
fn a_dest_named_releases_is_refused_and_keep_releases_may_be_quoted() {
    let fx = Fixture::new();
    let data = app(1);
    fx.write("v1.tar", &data);
    let log = fx
        .deploy(&format!(
            "src: {}\nchecksum: {}\ndest: {}\nsync_strategy: release\n",
            fx.url("v1.tar"),
            sha256(&data),
            fx.path("releases").display()
        ))
        .failed();
    assert!(log.contains("name dest otherwise"), "{log}");
    assert!(!fx.path("releases").exists());
    fx.deploy(&manifest(&fx, 1, "keep_releases: \"1\"\n")).ok();
    let log = fx
        .deploy(&manifest(&fx, 2, "keep_releases: many\n"))
        .failed();
    assert!(
        log.contains("expected a whole number, got \"many\""),
        "{log}"
    );
}

/// A switch's temp symlink left by a killed run, and an alias of dest
/// beside it, neither block a deploy or a rollback; the temp link goes.
#[test]
fn a_leftover_switch_link_and_an_alias_beside_dest_are_not_other_dests() {
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "")).ok();
    let live_name = live(&fx);
    let leftover = fx.path(".dest.switch.abc123");
    std::os::unix::fs::symlink(format!("releases/{live_name}"), &leftover).unwrap();
    std::os::unix::fs::symlink("dest", fx.path("app")).unwrap();
    fx.deploy(&manifest(&fx, 2, "")).ok();
    assert!(std::fs::symlink_metadata(&leftover).is_err(), "removed");
    let dest = fx.dest().display().to_string();
    stretcher(&fx, &["rollback", "--dest", &dest]).ok();
    assert_eq!(std::fs::read(fx.path("app/a")).unwrap(), b"version 1\n.");
}

/// Manifests that spell dest differently (a trailing `/`) are one dest to
/// the rollback record.
#[test]
fn a_rollback_guards_every_spelling_of_dest() {
    let fx = Fixture::new();
    let state = fx.path("state").display().to_string();
    let flags = ["--state-dir", state.as_str()];
    fx.run(&fx.manifest(&manifest(&fx, 1, "")), &flags, &[])
        .ok();
    let data = app(2);
    fx.write("v2.tar", &data);
    let v2 = format!(
        "src: {}\nchecksum: {}\ndest: {}/\nsync_strategy: release\n",
        fx.url("v2.tar"),
        sha256(&data),
        fx.dest().display()
    );
    let v2 = fx.manifest(&v2);
    fx.run(&v2, &flags, &[]).ok();
    let dest = fx.dest().display().to_string();
    stretcher(&fx, &["rollback", "--dest", &dest, "--state-dir", &state]).ok();
    let log = fx.run(&v2, &flags, &[]).failed();
    assert!(log.contains("was rolled back from release"), "{log}");
}

/// A hard link to a file linked from the live release copies the member's
/// bytes from the archive, not the live file's: the quick check (size and
/// mtime) may pass on a file whose bytes changed, as rsync's does.
#[test]
fn a_hard_link_to_a_linked_file_gets_the_members_bytes() {
    let fx = Fixture::new();
    let rel = "sync_strategy: release\n";
    let v1 = tar(&[Member::File("t", b"AAAA", 0o644)]);
    fx.write("v1.tar", &v1);
    fx.deploy(&manifest_for(&fx, &fx.url("v1.tar"), &sha256(&v1), rel))
        .ok();
    let v2 = tar(&[
        Member::File("t", b"BBBB", 0o644),
        Member::HardLink("h", "t"),
    ]);
    fx.write("v2.tar", &v2);
    fx.deploy(&manifest_for(&fx, &fx.url("v2.tar"), &sha256(&v2), rel))
        .ok();
    assert_eq!(std::fs::read(fx.dest().join("h")).unwrap(), b"BBBB");
    // Same size and mtime: taken as unchanged and linked, as rsync would.
    assert_eq!(std::fs::read(fx.dest().join("t")).unwrap(), b"AAAA");
}

/// Members that are not simply placed in order still share the live
/// release's file when it matches: a later duplicate of the path (the
/// earlier one replaced), and a file held back because an earlier member
/// made its path a directory.
#[test]
fn a_duplicate_or_held_back_member_is_linked_from_the_live_release() {
    let fx = Fixture::new();
    let rel = "sync_strategy: release\n";
    let v1 = tar(&[
        Member::File("dup", b"same", 0o644),
        Member::File("held", b"same", 0o644),
    ]);
    fx.write("v1.tar", &v1);
    fx.deploy(&manifest_for(&fx, &fx.url("v1.tar"), &sha256(&v1), rel))
        .ok();
    let old = releases_dir(&fx).join(live(&fx));
    let v2 = tar(&[
        Member::File("dup", b"an earlier copy", 0o644),
        Member::File("dup", b"same", 0o644),
        Member::Dir("held/", 0o755),
        Member::File("held", b"same", 0o644),
    ]);
    fx.write("v2.tar", &v2);
    let log = fx
        .deploy(&manifest_for(&fx, &fx.url("v2.tar"), &sha256(&v2), rel))
        .ok();
    assert!(log.contains("2 hard linked from the live release"), "{log}");
    let new = releases_dir(&fx).join(live(&fx));
    for f in ["dup", "held"] {
        assert_eq!(ino(&new.join(f)), ino(&old.join(f)), "{f}");
        assert_eq!(std::fs::read(new.join(f)).unwrap(), b"same");
    }
    fx.assert_no_temp_files();
}

/// A live file that cannot be hard linked (immutable, here) is written
/// instead, with the same bytes and metadata.
#[test]
fn a_file_that_cannot_be_linked_is_written() {
    if !common::is_root() {
        eprintln!("skipped: chattr +i needs root");
        return;
    }
    /// Clears the immutable flag even when the test fails.
    struct Immutable(PathBuf);
    impl Drop for Immutable {
        fn drop(&mut self) {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.0)
                .status();
        }
    }
    let fx = Fixture::new();
    fx.deploy(&manifest(&fx, 1, "")).ok();
    let old = releases_dir(&fx).join(live(&fx));
    let locked = Immutable(old.join("same/one"));
    let chattr = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&locked.0)
        .status()
        .unwrap();
    assert!(chattr.success(), "chattr +i");
    let log = fx.deploy(&manifest(&fx, 2, "")).ok();
    assert!(log.contains("2 hard linked"), "same/two and bin/run: {log}");
    let new = releases_dir(&fx).join(live(&fx));
    assert_ne!(ino(&new.join("same/one")), ino(&old.join("same/one")));
    assert_eq!(ino(&new.join("same/two")), ino(&old.join("same/two")));
    let by_rsync = Fixture::new();
    let data = app(2);
    by_rsync.write("v2.tar", &data);
    by_rsync
        .deploy(&manifest_for(
            &by_rsync,
            &by_rsync.url("v2.tar"),
            &sha256(&data),
            "",
        ))
        .ok();
    assert_eq!(tree(&new), tree(&by_rsync.dest()));
    drop(locked);
}

/// Before a migration, dest may point at a tree the agent did not make
/// (`current -> /opt/app-old`): nothing is hard linked from it, so a later
/// write there in place leaves the new release alone.
#[test]
fn nothing_is_linked_from_a_tree_outside_releases() {
    let fx = Fixture::new();
    let old = fx.path("app-old");
    // app-old holds v1's files as an rsync deploy left them.
    let data = app(1);
    fx.write("v1.tar", &data);
    fx.deploy(&format!(
        "src: {}\nchecksum: {}\ndest: {}\n",
        fx.url("v1.tar"),
        sha256(&data),
        old.display()
    ))
    .ok();
    std::os::unix::fs::symlink(&old, fx.dest()).unwrap();
    let log = fx.deploy(&manifest(&fx, 1, "")).ok();
    let release = releases_dir(&fx).join(live(&fx));
    assert!(!log.contains("linking unchanged files"), "{log}");
    for file in ["a", "same/one", "bin/run"] {
        assert_ne!(ino(&release.join(file)), ino(&old.join(file)), "{file}");
    }
    std::fs::write(old.join("same/one"), b"changed in place\n").unwrap();
    assert_eq!(
        std::fs::read(release.join("same/one")).unwrap(),
        b"unchanged one\n"
    );
}

/// A release deploy's errors name `sync_strategy: release`.
#[test]
fn release_errors_name_the_release_strategy() {
    let fx = Fixture::new();
    let data = tar(&[
        Member::Dir("d/", 0o755),
        Member::Symlink("link", "d"),
        Member::File("link/f", b"through the link\n", 0o644),
    ]);
    fx.write("a.tar", &data);
    let release = "sync_strategy: release\n";
    let log = fx
        .deploy(&manifest_for(
            &fx,
            &fx.url("a.tar"),
            &sha256(&data),
            release,
        ))
        .failed();
    assert!(
        log.contains("sync_strategy release never writes through links"),
        "{log}"
    );
    let excluding = format!("{release}excludes:\n  - '+ keep/'\n");
    let log = fx
        .deploy(&manifest_for(
            &fx,
            &fx.url("a.tar"),
            &sha256(&data),
            &excluding,
        ))
        .failed();
    assert!(
        log.contains(r#"pattern "+ keep/" is not supported by sync_strategy release"#),
        "{log}"
    );
    assert!(!log.contains("sync_strategy native"), "{log}");
}
