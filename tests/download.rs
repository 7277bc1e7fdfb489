//! SPEC 4 and 5.2–5.3: HTTP sources, checksum verification, retries,
//! timeout and bandwidth limit.

mod common;

use std::time::{Duration, Instant};

use common::http::{Route, Server};
use common::{app_tar, gzip, manifest_for, sha256, tree, Fixture};

struct Case {
    fx: Fixture,
    server: Server,
    data: Vec<u8>,
}

impl Case {
    fn new() -> Self {
        Case {
            fx: Fixture::new(),
            server: Server::start(),
            data: gzip(&app_tar()),
        }
    }

    /// Serves `route` at /app.tar.gz and deploys it with `args`.
    fn deploy(&self, route: Route, args: &[&str]) -> common::Run {
        self.deploy_sum(route, &sha256(&self.data), args)
    }

    fn deploy_sum(&self, route: Route, sum: &str, args: &[&str]) -> common::Run {
        let src = self.server.route("/app.tar.gz", route);
        let pre = self.fx.path("pre-ran");
        let extra = format!("commands:\n  pre:\n    - touch {}\n", pre.display());
        let url = self.fx.manifest(&manifest_for(&self.fx, &src, sum, &extra));
        self.fx.run(&url, args, &[])
    }

    fn pre_ran(&self) -> bool {
        self.fx.path("pre-ran").exists()
    }
}

#[test]
fn not_found_is_an_error_naming_status_and_url_and_is_retried() {
    let c = Case::new();
    let src = c.server.url("/missing.tar.gz");
    let url = c.fx.manifest(&manifest_for(&c.fx, &src, &sha256(b""), ""));
    let log =
        c.fx.run(&url, &["--retry", "3", "--retry-wait", "0"], &[])
            .failed();
    assert!(log.contains("src failed:"), "{log}");
    assert!(
        log.contains(&format!("HTTP status 404 from {src}")),
        "{log}"
    );
    assert_eq!(
        c.server.hits("/missing.tar.gz"),
        4,
        "a 404 is retried, as Go stretcher does"
    );
    c.fx.assert_no_temp_files();
}

#[test]
fn an_archive_that_appears_after_a_404_or_403_deploys_with_retry() {
    for status in [404, 403] {
        let c = Case::new();
        let mut route = Route::ok(c.data.clone());
        route.fail_first = 2;
        route.fail_status = status;
        let log = c
            .deploy(route, &["--retry", "2", "--retry-wait", "10ms"])
            .ok();
        assert!(log.contains(&format!("HTTP status {status}")), "{log}");
        assert_eq!(c.server.hits("/app.tar.gz"), 3, "{log}");
        assert!(c.fx.dest().join("index.html").exists());
    }
}

#[test]
fn a_malformed_src_url_fails_at_once_even_with_retry() {
    let c = Case::new();
    let url =
        c.fx.manifest(&manifest_for(&c.fx, "http://[::1", &sha256(b""), ""));
    let started = Instant::now();
    let log =
        c.fx.run(&url, &["--retry", "3", "--retry-wait", "2s"], &[])
            .failed();
    assert!(log.contains("invalid URL http://[::1"), "{log}");
    assert!(!log.contains("Try again"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn a_zero_timeout_means_no_timeout() {
    for flag in [["--timeout", "0"], ["-timeout", "0"]] {
        let c = Case::new();
        let mut route = Route::ok(c.data.clone());
        route.chunk_delay = Duration::from_millis(20);
        let log = c.deploy(route, &flag).ok();
        assert!(!log.contains("Set timeout"), "{log}");
        assert!(c.fx.dest().join("index.html").exists(), "{log}");
    }
}

#[test]
fn the_manifest_fetch_is_bounded_by_the_timeout() {
    let c = Case::new();
    let mut route = Route::ok(Vec::new());
    route.hang = true;
    let url = c.server.route("/m.yml", route);
    let started = Instant::now();
    let log = c.fx.run(&url, &["--timeout", "500ms"], &[]).failed();
    assert!(
        log.contains(&format!(
            "load manifest failed: timeout 500ms reached while fetching {url}"
        )),
        "{log}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn missing_manifest_is_an_error_naming_the_url() {
    let c = Case::new();
    let url = c.server.url("/nope.yml");
    let log = c.fx.run(&url, &[], &[]).failed();
    assert!(
        log.contains(&format!("load manifest failed: HTTP status 404 from {url}")),
        "{log}"
    );
    let missing = c.fx.url("nope.yml");
    let log = c.fx.run(&missing, &[], &[]).failed();
    assert!(log.contains("load manifest failed: open "), "{log}");
}

#[test]
fn checksum_mismatch_stops_before_pre_hooks() {
    let c = Case::new();
    let wrong = "0".repeat(64);
    let log = c
        .deploy_sum(Route::ok(c.data.clone()), &wrong, &[])
        .failed();
    let want = format!(
        "checksum mismatch. expected:{wrong} got:{}",
        sha256(&c.data)
    );
    assert!(log.contains(&want), "{log}");
    assert!(!c.pre_ran(), "pre hooks must not run after a mismatch");
    assert!(!c.fx.dest().exists());
    c.fx.assert_no_temp_files();
}

#[test]
fn uppercase_checksum_matches() {
    let c = Case::new();
    let sum = sha256(&c.data).to_uppercase();
    c.deploy_sum(Route::ok(c.data.clone()), &sum, &[]).ok();
    assert!(c.pre_ran());
}

#[test]
fn server_errors_are_retried() {
    for status in [503, 500, 429] {
        let c = Case::new();
        let mut route = Route::ok(c.data.clone());
        route.fail_first = 2;
        route.fail_status = status;
        let log = c
            .deploy(route, &["--retry", "2", "--retry-wait", "10ms"])
            .ok();
        assert_eq!(c.server.hits("/app.tar.gz"), 3, "{log}");
        assert!(log.contains("Try again. Waiting: 10ms"), "{log}");
        assert!(c.fx.dest().join("index.html").exists());
    }
}

#[test]
fn retries_are_bounded() {
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.fail_first = 10;
    let log = c
        .deploy(route, &["-retry", "1", "-retry-wait", "0"])
        .failed();
    assert_eq!(c.server.hits("/app.tar.gz"), 2);
    assert!(
        log.contains("src failed:") && log.contains("HTTP status 503"),
        "{log}"
    );
    c.fx.assert_no_temp_files();
}

#[test]
fn a_body_cut_off_mid_stream_is_retried() {
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.truncate_first = 1;
    let log = c
        .deploy(route, &["--retry", "1", "--retry-wait", "0s"])
        .ok();
    assert_eq!(c.server.hits("/app.tar.gz"), 2, "{log}");
    assert!(log.contains("Get src failed: reading"), "{log}");

    // Without retries, the cut-off body fails the deploy.
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.truncate_first = 1;
    let log = c.deploy(route, &[]).failed();
    assert!(log.contains("src failed:"), "{log}");
    assert!(!c.pre_ran());
    c.fx.assert_no_temp_files();
}

#[test]
fn timeout_bounds_the_download() {
    let c = Case::new();
    let mut route = Route::ok(vec![0u8; 256 * 1024]);
    route.chunk_delay = Duration::from_millis(200);
    let started = Instant::now();
    let log = c
        .deploy_sum(route, &"0".repeat(64), &["--timeout", "300ms"])
        .failed();
    assert!(
        log.contains("timeout 300ms reached while fetching src"),
        "{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the timeout did not stop the download"
    );
    assert!(!c.pre_ran());
    c.fx.assert_no_temp_files();
}

#[test]
fn bandwidth_limit_paces_the_download() {
    let c = Case::new();
    let data = vec![7u8; 300_000];
    let sum = sha256(&data);
    let started = Instant::now();
    // The archive is not a tar, so the deploy fails after the download.
    let log = c
        .deploy_sum(Route::ok(data), &sum, &["--max-bandwidth", "200kB"])
        .failed();
    let took = started.elapsed();
    assert!(log.contains("Set max bandwidth 200 kB/sec"), "{log}");
    assert!(log.contains("Wrote 300,000 bytes"), "{log}");
    assert!(
        took >= Duration::from_millis(1300),
        "300 kB at 200 kB/s took only {took:?}"
    );
}

#[test]
fn redirects_are_followed() {
    let c = Case::new();
    let real = c.server.route("/real.tar.gz", Route::ok(c.data.clone()));
    let mut redirect = Route::ok(Vec::new());
    redirect.location = Some(real);
    c.deploy(redirect, &[]).ok();
    assert_eq!(c.server.hits("/real.tar.gz"), 1);
    assert_eq!(tree(&c.fx.dest()), {
        let fx = Fixture::new();
        fx.write("a.tar.gz", &c.data);
        fx.deploy(&manifest_for(
            &fx,
            &fx.url("a.tar.gz"),
            &sha256(&c.data),
            "",
        ))
        .ok();
        tree(&fx.dest())
    });
}

#[test]
fn http_proxy_from_the_environment_is_used() {
    let c = Case::new();
    // The "proxy" is our server: it sees absolute URLs as request paths.
    let host = "http://deploy.example.invalid";
    c.server
        .route(&format!("{host}/app.tar.gz"), Route::ok(c.data.clone()));
    let manifest = manifest_for(&c.fx, &format!("{host}/app.tar.gz"), &sha256(&c.data), "");
    c.server
        .route(&format!("{host}/m.yml"), Route::ok(manifest));
    let proxy = format!("http://127.0.0.1:{}", c.server.port);
    c.fx.run(
        &format!("{host}/m.yml"),
        &[],
        &[("http_proxy", &proxy), ("NO_PROXY", "")],
    )
    .ok();
    assert_eq!(c.server.hits(&format!("{host}/app.tar.gz")), 1);
    assert!(c.fx.dest().join("index.html").exists());
}

#[test]
fn retry_wait_defaults_to_three_seconds_as_v1_1() {
    let c = Case::new();
    let mut route = Route::ok(c.data.clone());
    route.fail_first = 1;
    let started = Instant::now();
    let log = c.deploy(route, &["--retry", "1"]).ok();
    assert!(log.contains("Try again. Waiting: 3s"), "{log}");
    assert!(started.elapsed() >= Duration::from_secs(3));
}

/// A manifest is at most 1 MiB: a larger body is refused naming the URL,
/// over any scheme, before it is parsed (and nothing of it runs).
#[test]
fn a_manifest_over_1_mib_is_refused_naming_the_url() {
    let c = Case::new();
    let marker = c.fx.path("ran");
    let manifest = |size: usize| {
        let mut yaml = format!("commands:\n  pre:\n    - touch {}\n", marker.display());
        yaml.push_str(&"#".repeat(size - yaml.len() - 1));
        yaml.push('\n');
        yaml
    };
    let big = manifest((1 << 20) + 1);
    for url in [
        c.server.route("/big.yml", Route::ok(big.clone())),
        c.server.route("/huge.yml", Route::ok(manifest(16 << 20))),
        {
            c.fx.write("big.yml", &big);
            c.fx.url("big.yml")
        },
    ] {
        let log = c.fx.run(&url, &[], &[]).failed();
        assert!(
            log.contains(&format!(
                "load manifest failed: {url} is larger than 1 MiB: too large for a manifest"
            )),
            "{log}"
        );
        assert!(!marker.exists());
    }
    c.fx.write("max.yml", manifest(1 << 20));
    c.fx.run(&c.fx.url("max.yml"), &[], &[]).ok();
    assert!(marker.exists());
}

/// Reading stops at the limit: the rest of an endless manifest (a fifo
/// here) is never read, let alone held in memory.
#[test]
fn an_endless_manifest_is_not_read_past_the_limit() {
    let fx = Fixture::new();
    let fifo = fx.path("endless.yml");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut out = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let chunk = vec![b'#'; 64 << 10];
        let mut written = 0usize;
        while written < 64 << 20 && out.write_all(&chunk).is_ok() {
            written += chunk.len();
        }
        written
    });
    let url = fx.url("endless.yml");
    let log = fx.run(&url, &[], &[]).failed();
    assert!(
        log.contains(&format!("{url} is larger than 1 MiB")),
        "{log}"
    );
    let written = writer.join().unwrap();
    assert!(written < 8 << 20, "the agent read {written} bytes");
}
