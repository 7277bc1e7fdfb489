//! SPEC 5.2 and 5.9 under faults: wrong `Content-Length` headers, a server
//! that stalls mid-body, a redirect loop, a temp filesystem that fills up, a
//! dest the agent may not write, and SIGTERM mid-download. Each ends in a
//! clear error naming the URL or path, `failure` hooks run, dest as it was
//! and no temp files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::http::{Route, Server};
use common::{app_tar, gzip, noise, sha256, tar, tree, wait_for, Fixture, Member};

/// A fixture with a deployed-before dest, an HTTP server, and a manifest
/// whose `pre` and `failure` hooks leave marker files.
struct Case {
    fx: Fixture,
    server: Server,
    data: Vec<u8>,
}

impl Case {
    fn new() -> Self {
        let fx = Fixture::new();
        fx.write("dest/keep.txt", "the release before");
        Case {
            fx,
            server: Server::start(),
            data: gzip(&app_tar()),
        }
    }

    /// The manifest for `src` with checksum `sum`, written to the fixture;
    /// returns its URL.
    fn manifest(&self, src: &str, sum: &str) -> String {
        let hooks = format!(
            "commands:\n  pre:\n    - touch {}\n  failure:\n    - touch {}\n",
            self.fx.path("pre-ran").display(),
            self.fx.path("failure-ran").display()
        );
        self.fx
            .manifest(&common::manifest_for(&self.fx, src, sum, &hooks))
    }

    /// Serves `route` at /app.tar.gz and deploys it (checksum of
    /// `self.data`) with `args`.
    fn deploy(&self, route: Route, args: &[&str]) -> common::Run {
        let src = self.server.route("/app.tar.gz", route);
        let url = self.manifest(&src, &sha256(&self.data));
        self.fx.run(&url, args, &[])
    }

    fn src(&self) -> String {
        self.server.url("/app.tar.gz")
    }

    /// The failed run left everything as it was: no `pre` hook, `failure`
    /// hooks ran, dest holds only the release before, no temp files.
    fn assert_failed_cleanly(&self) {
        assert!(!self.fx.path("pre-ran").exists(), "pre hooks ran");
        assert!(self.fx.path("failure-ran").exists(), "no failure hooks");
        assert_dest_untouched(&self.fx);
        self.fx.assert_no_temp_files();
    }
}

fn assert_dest_untouched(fx: &Fixture) {
    let dest = tree(&fx.dest());
    assert_eq!(
        dest.keys().collect::<Vec<_>>(),
        ["keep.txt"],
        "dest changed: {dest:?}"
    );
    assert_eq!(dest["keep.txt"].2, b"the release before");
}

#[test]
fn a_content_length_longer_than_the_body_is_a_failed_fetch_that_retry_repeats() {
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.content_length = Some(c.data.len() + 1000);
    let log = c.deploy(route.clone(), &[]).failed();
    assert!(
        log.contains(&format!("src failed: reading {}", c.src())),
        "{log}"
    );
    c.assert_failed_cleanly();

    let c = Case::new();
    let log = c
        .deploy(route, &["--retry", "2", "--retry-wait", "0"])
        .failed();
    assert_eq!(c.server.hits("/app.tar.gz"), 3, "{log}");
    assert_eq!(log.matches("Try again.").count(), 2, "{log}");
    assert!(
        log.contains(&format!("src failed: reading {}", c.src())),
        "{log}"
    );
    c.assert_failed_cleanly();
}

#[test]
fn a_content_length_shorter_than_the_body_reads_only_that_many_bytes() {
    // The prefix is not the archive: a checksum mismatch, not retried (the
    // server answered the same bytes every time as far as HTTP can tell).
    let c = Case::new();
    let short = c.data.len() / 2;
    let mut route = Route::ok(c.data.clone());
    route.content_length = Some(short);
    let log = c
        .deploy(route, &["--retry", "2", "--retry-wait", "0"])
        .failed();
    assert!(
        log.contains(&format!("Wrote {short} bytes")),
        "only Content-Length bytes are read: {log}"
    );
    let want = format!(
        "checksum mismatch. expected:{} got:{}",
        sha256(&c.data),
        sha256(&c.data[..short])
    );
    assert!(log.contains(&want), "{log}");
    assert_eq!(c.server.hits("/app.tar.gz"), 1, "{log}");
    c.assert_failed_cleanly();

    // The prefix is the archive (trailing junk after it): it deploys.
    let c = Case::new();
    let mut body = c.data.clone();
    body.extend_from_slice(b"trailing junk the header does not count");
    let mut route = Route::ok(body);
    route.content_length = Some(c.data.len());
    c.deploy(route, &[]).ok();
    assert!(c.fx.dest().join("index.html").exists());
    c.fx.assert_no_temp_files();
}

#[test]
fn a_stalled_attempt_is_abandoned_and_the_retry_succeeds() {
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.stall_first = 1;
    let started = Instant::now();
    // --timeout 4s over two attempts: an attempt that gets nothing for 2s
    // is abandoned, leaving the second attempt time to finish.
    let log = c
        .deploy(
            route,
            &["--timeout", "4s", "--retry", "1", "--retry-wait", "0"],
        )
        .ok();
    assert!(
        log.contains(&format!(
            "Get src failed: stalled: no data from {} for 2s",
            c.src()
        )),
        "{log}"
    );
    assert_eq!(c.server.hits("/app.tar.gz"), 2, "{log}");
    assert!(started.elapsed() < Duration::from_secs(4), "{log}");
    assert!(c.fx.dest().join("index.html").exists());
    c.fx.assert_no_temp_files();
}

#[test]
fn a_server_that_never_answers_is_abandoned_per_attempt() {
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.hang = true;
    let started = Instant::now();
    let log = c
        .deploy(
            route,
            &["--timeout", "1s", "--retry", "3", "--retry-wait", "0"],
        )
        .failed();
    assert!(
        log.contains(&format!(
            "Get src failed: stalled: no data from {} for 250ms",
            c.src()
        )),
        "{log}"
    );
    assert!(c.server.hits("/app.tar.gz") >= 2, "{log}");
    assert!(started.elapsed() < Duration::from_secs(3), "{log}");
    c.assert_failed_cleanly();
}

#[test]
fn without_retry_a_stall_runs_into_the_whole_download_timeout() {
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.stall_first = 1;
    let log = c.deploy(route, &["--timeout", "500ms"]).failed();
    assert!(
        log.contains(&format!(
            "timeout 500ms reached while fetching src {}",
            c.src()
        )),
        "{log}"
    );
    assert!(!log.contains("stalled"), "{log}");
    c.assert_failed_cleanly();
}

#[test]
fn a_redirect_loop_is_an_error_naming_the_url() {
    let c = Case::new();
    let mut route = Route::ok(Vec::new());
    route.location = Some(c.src());
    let started = Instant::now();
    let log = c.deploy(route, &[]).failed();
    assert!(started.elapsed() < Duration::from_secs(5), "{log}");
    assert!(
        log.contains(&format!("src failed: GET {}", c.src())),
        "{log}"
    );
    assert!(log.contains("too many redirects"), "{log}");
    c.assert_failed_cleanly();
}

#[test]
fn a_full_temp_filesystem_fails_the_download_naming_the_temp_file() {
    // RLIMIT_FSIZE stands in for a full disk: writes past it fail with
    // EFBIG (the agent does not die of SIGXFSZ).
    let c = Case::new();
    let data = gzip(&tar(&[Member::File(
        "big.bin",
        &noise(1 << 20, 0x2545_f491_4f6c_dd1d),
        0o644,
    )]));
    c.fx.write("big.tar.gz", &data);
    let url = c.manifest(&c.fx.url("big.tar.gz"), &sha256(&data));
    let run = c.fx.run_program(
        "prlimit",
        &url,
        &["--fsize=262144", "--", common::bin()],
        &[],
    );
    let log = run.failed();
    let temp = c.fx.path("tmp").join("stretcher");
    assert!(
        log.contains(&format!(
            "Deploy manifest failed: get src failed: writing {}",
            temp.display()
        )),
        "{log}"
    );
    assert!(log.contains("File too large"), "{log}");
    c.assert_failed_cleanly();
}

#[test]
fn a_temp_filesystem_that_fills_up_during_extraction_leaves_dest_alone() {
    // A small archive (1 MiB of zeros, compressed) that does not fit once
    // extracted under the same limit.
    let c = Case::new();
    let zeros = vec![0u8; 1 << 20];
    let data = gzip(&tar(&[Member::File("zeros.bin", &zeros, 0o644)]));
    c.fx.write("zeros.tar.gz", &data);
    let url = c.manifest(&c.fx.url("zeros.tar.gz"), &sha256(&data));
    let run = c.fx.run_program(
        "prlimit",
        &url,
        &["--fsize=262144", "--", common::bin()],
        &[],
    );
    let log = run.failed();
    let failed = log
        .lines()
        .find(|l| l.contains("Deploy manifest failed:"))
        .unwrap_or_default();
    assert!(
        failed.contains(&c.fx.path("tmp").display().to_string())
            && failed.contains("File too large"),
        "the error names the file being written: {log}"
    );
    assert!(
        c.fx.path("pre-ran").exists(),
        "pre hooks run before extraction"
    );
    assert!(c.fx.path("failure-ran").exists(), "{log}");
    assert_dest_untouched(&c.fx);
    c.fx.assert_no_temp_files();
}

#[test]
fn a_dest_the_agent_may_not_write_fails_and_stays_as_it_was() {
    if !common::is_root() {
        return; // needs root to own dest while the agent runs as nobody
    }
    let c = Case::new();
    let data = gzip(&app_tar());
    c.fx.write("app.tar.gz", &data);
    // A root-owned dest (0755, one file in it) outside the fixture, which
    // the unprivileged run hands to `nobody`.
    let outside = tempfile::Builder::new()
        .prefix("stretcher-test-root")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dest = outside.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep.txt"), "the release before").unwrap();
    let before = tree(&dest);
    for strategy in ["rsync", "mv"] {
        let _ = std::fs::remove_file(c.fx.path("failure-ran"));
        let manifest = format!(
            "src: {}\nchecksum: {}\ndest: {}\nsync_strategy: {strategy}\ncommands:\n  failure:\n    - touch {}\n",
            c.fx.url("app.tar.gz"),
            sha256(&data),
            dest.display(),
            c.fx.path("failure-ran").display()
        );
        let url = c.fx.manifest(&manifest);
        let log = c.fx.run_unprivileged(&url, &[], &[]).failed();
        let failed = log
            .lines()
            .find(|l| l.contains("Deploy manifest failed:"))
            .unwrap_or_default();
        assert!(
            failed.contains(&dest.display().to_string()),
            "{strategy}: the error names dest: {log}"
        );
        assert!(c.fx.path("failure-ran").exists(), "{strategy}: {log}");
        assert_eq!(tree(&dest), before, "{strategy}: dest changed");
        c.fx.assert_no_temp_files();
    }
}

#[test]
fn sigterm_during_the_download_stops_it_promptly_and_cleans_up() {
    let c = Case::new();
    let mut route = Route::ok(noise(1 << 20, 0x2545_f491_4f6c_dd1d));
    route.chunk_delay = Duration::from_millis(100);
    let src = c.server.route("/slow.tar.gz", route);
    let url = c.manifest(&src, &"0".repeat(64));
    let (mut child, rx) = c.fx.watch(Some(&url), &[]);
    wait_for(&rx, &format!("Loading URL {src}"));
    std::thread::sleep(Duration::from_millis(300));
    let temps = std::fs::read_dir(c.fx.path("tmp")).unwrap().count();
    assert_eq!(temps, 1, "the download is under way into a temp file");
    common::stops_within_a_second(&mut child, &[libc::SIGTERM]);
    let lines = wait_for(&rx, "Done");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Deploy manifest failed: interrupted by signal")),
        "{lines:?}"
    );
    c.assert_failed_cleanly();
}
