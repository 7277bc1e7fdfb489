//! SPEC 5 and 6: signals stop the run at any step, and cleanup always runs,
//! even when a second signal arrives.

mod common;

use std::time::{Duration, Instant};

use common::{
    alive, app_manifest, manifest_for, many_files, read_pid, sha256, signal, stops_within_a_second,
    wait_exit, wait_for, Fixture,
};

#[test]
fn a_second_signal_stops_the_failure_hooks_and_still_cleans_up() {
    let fx = Fixture::new();
    let pid_file = fx.path("failure-sleep.pid");
    let url = fx.manifest(&app_manifest(
        &fx,
        &format!(
            "commands:\n  pre:\n    - 'echo pre-$((1+1))-up; sleep 30'\n  failure:\n    - 'sleep 30 & echo $! > {p}; echo failure-$((1+1))-up; wait'\n",
            p = fx.path("failure-sleep.pid").display()
        ),
    ));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "pre-2-up");
    signal(&child, libc::SIGTERM);
    // Failure hook output passes through to stdout: wait for its pid file.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&pid_file).map_or(true, |s| s.trim().is_empty()) {
        assert!(Instant::now() < deadline, "the failure hook never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    signal(&child, libc::SIGINT);
    assert_eq!(wait_exit(&mut child), 1);
    assert!(started.elapsed() < Duration::from_secs(5));
    let lines = wait_for(&rx, "Done");
    assert!(
        lines.iter().any(|l| l.contains("Second signal")),
        "{lines:?}"
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(pid), "the failure hook's process group survived");
    fx.assert_no_temp_files();
}

#[test]
fn two_quick_signals_during_extraction_stop_it_and_remove_every_temp_file() {
    let fx = Fixture::new();
    fx.write("dest/keep.txt", "the release before");
    let data = many_files(10_000);
    fx.write("big.tar", &data);
    let url = fx.manifest(&manifest_for(&fx, &fx.url("big.tar"), &sha256(&data), ""));
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "Extract archive");
    stops_within_a_second(&mut child, &[libc::SIGTERM, libc::SIGTERM]);
    wait_for(&rx, "Done");
    fx.assert_no_temp_files();
    let dest: Vec<_> = std::fs::read_dir(fx.dest()).unwrap().collect();
    assert_eq!(dest.len(), 1, "dest untouched");
}

#[test]
fn sigterm_during_rsync_stops_it_promptly() {
    let fx = Fixture::new();
    fx.write("dest/keep.txt", "the release before");
    let data = many_files(10_000);
    fx.write("big.tar", &data);
    let url = fx.manifest(&manifest_for(&fx, &fx.url("big.tar"), &sha256(&data), ""));
    let (mut child, rx) = fx.watch(Some(&url), &["--rsync-verbose", "-vv"]);
    wait_for(&rx, "rsync [");
    std::thread::sleep(Duration::from_millis(100));
    stops_within_a_second(&mut child, &[libc::SIGTERM]);
    let lines = wait_for(&rx, "Done");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("rsync stopped: interrupted by signal")),
        "{lines:?}"
    );
    fx.assert_no_temp_files();
}

#[test]
fn a_signal_while_the_manifest_server_hangs_cancels_the_fetch() {
    let fx = Fixture::new();
    let server = common::http::Server::start();
    let mut route = common::http::Route::ok(Vec::new());
    route.hang = true;
    let url = server.route("/m.yml", route);
    let (mut child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "Loading URL");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 1);
    assert!(started.elapsed() < Duration::from_secs(2));
    let lines = wait_for(&rx, "interrupted by signal");
    assert!(
        lines.iter().any(|l| l.contains("load manifest failed")),
        "{lines:?}"
    );
}

/// Starts a deploy whose `pre` hook ignores SIGTERM (and so does its
/// child); returns the agent, its log and the child's pid file.
fn stubborn_hook(
    fx: &Fixture,
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    std::path::PathBuf,
) {
    let pid_file = fx.path("stubborn.pid");
    let url = fx.manifest(&app_manifest(
        fx,
        &format!(
            "commands:\n  pre:\n    - \"trap '' TERM; sleep 60 & echo $! > {}; echo pre-$((1+1))-up; wait\"\n",
            pid_file.display()
        ),
    ));
    let (child, rx) = fx.watch(Some(&url), &[]);
    wait_for(&rx, "pre-2-up");
    (child, rx, pid_file)
}

#[test]
fn a_hook_that_ignores_sigterm_is_killed_after_a_grace() {
    let fx = Fixture::new();
    let (mut child, rx, pid_file) = stubborn_hook(&fx);
    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child), 1);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
    wait_for(&rx, "Done");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(read_pid(&pid_file)), "the hook's group survived");
    fx.assert_no_temp_files();
}

#[test]
fn a_second_signal_kills_a_hook_that_ignores_sigterm_at_once() {
    let fx = Fixture::new();
    let (mut child, rx, pid_file) = stubborn_hook(&fx);
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    stops_within_a_second(&mut child, &[libc::SIGINT]);
    wait_for(&rx, "Done");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!alive(read_pid(&pid_file)), "the hook's group survived");
    fx.assert_no_temp_files();
}
