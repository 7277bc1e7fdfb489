//! SPEC 8.9: with `--state-dir`, a packed archive's redeploy fetches only
//! the members the kept archive lacks, plus the index, by single-range
//! requests (over HTTP, from S3 and from GCS); any miss falls back to the
//! whole download, and the result is what a full deploy gives.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::http::{Route, Server};
use common::{manifest_for, sha256, tree, Fixture};

/// Deterministic bytes: text-like when `text`, else incompressible.
fn bytes(len: usize, seed: u64, text: bool) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: [&str; 8] = [
        "deploy ", "agent ", "member ", "gzip ", "tar ", "index\n", "range ", "fetch ",
    ];
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        let r = next();
        if text {
            out.extend_from_slice(WORDS[(r % 8) as usize].as_bytes());
        } else {
            out.extend_from_slice(&r.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

/// An app tree of about 3 MB: 600 small text files in 30 dirs, a few
/// binary assets and a 1.5 MiB file (split over members).
fn write_v1(dir: &Path) {
    for i in 0..600u64 {
        let p = dir.join(format!("lib/d{:02}/f{i:03}.rb", i % 30));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes(1000 + (i as usize * 37) % 4000, i, true)).unwrap();
    }
    for i in 0..5u64 {
        let p = dir.join(format!("assets/a{i}.png"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes(50_000 + i as usize * 30_000, 1000 + i, false)).unwrap();
    }
    std::fs::write(dir.join("app.bin"), bytes(1_572_864 + 5, 77, false)).unwrap();
    fix_mtimes(dir);
}

/// v1 with a few files changed (one grows, one shrinks; all with a new
/// mtime, as a build leaves them), one added and one removed.
fn write_v2(dir: &Path) {
    write_v1(dir);
    let mut changed = Vec::new();
    for (i, len) in [(3u64, 1200), (150, 5000), (333, 800), (599, 2500)] {
        let p = dir.join(format!("lib/d{:02}/f{i:03}.rb", i % 30));
        std::fs::write(&p, bytes(len, 5000 + i, true)).unwrap();
        changed.push(p);
    }
    std::fs::write(dir.join("assets/a2.png"), bytes(110_000, 4242, false)).unwrap();
    std::fs::write(dir.join("lib/d07/new.rb"), bytes(3000, 9999, true)).unwrap();
    std::fs::remove_file(dir.join("lib/d10/f100.rb")).unwrap();
    changed.extend([dir.join("assets/a2.png"), dir.join("lib/d07/new.rb")]);
    fix_mtimes(dir);
    let t = filetime::FileTime::from_unix_time(common::MTIME as i64 + 1000, 0);
    for p in changed {
        filetime::set_file_times(p, t, t).unwrap();
    }
}

/// Every path's mtime fixed, so two packs of the same content match.
fn fix_mtimes(dir: &Path) {
    let t = filetime::FileTime::from_unix_time(common::MTIME as i64, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        filetime::set_file_times(&p, t, t).unwrap();
    }
}

/// `stretcher pack` of a tree made by `make`; returns the archive.
fn packed(fx: &Fixture, name: &str, make: fn(&Path)) -> Vec<u8> {
    let dir = fx.path(&format!("{name}-tree"));
    std::fs::create_dir_all(&dir).unwrap();
    make(&dir);
    let out = fx.path(&format!("{name}.tar.gz"));
    let (d, o) = (dir.display().to_string(), out.display().to_string());
    fx.run("", &["pack", &d, "-o", &o], &[]).ok();
    std::fs::read(out).unwrap()
}

/// The bytes a delta from `old` to `new` must move: the members `old`
/// lacks, the index and the footer.
fn delta_bytes(fx: &Fixture, old: &[u8], new: &[u8]) -> u64 {
    let index = |data: &[u8], name: &str| {
        let p = fx.write(name, data);
        stretcher::pack::read_index(&std::fs::File::open(p).unwrap()).unwrap()
    };
    let (old, new_index) = (index(old, "old.idx"), index(new, "new.idx"));
    let have: std::collections::HashSet<_> =
        old.members().iter().map(|m| (m.digest, m.len)).collect();
    let members: u64 = new_index
        .members()
        .iter()
        .filter(|m| !have.contains(&(m.digest, m.len)))
        .map(|m| u64::from(m.len))
        .sum();
    members + (new.len() as u64 - new_index.data_end())
}

/// One fixture with the two versions packed, the reference tree of v2 (a
/// full deploy) and a state dir.
struct Setup {
    fx: Fixture,
    v1: Vec<u8>,
    v2: Vec<u8>,
    reference: std::collections::BTreeMap<String, common::Node>,
}

fn setup() -> Setup {
    let fx = Fixture::new();
    let v1 = packed(&fx, "v1", write_v1);
    let v2 = packed(&fx, "v2", write_v2);
    let full = Fixture::new();
    full.write("v2.tar.gz", &v2);
    full.deploy(&manifest_for(
        &full,
        &full.url("v2.tar.gz"),
        &sha256(&v2),
        "",
    ))
    .ok();
    Setup {
        fx,
        v1,
        v2,
        reference: tree(&full.dest()),
    }
}

impl Setup {
    fn state(&self) -> String {
        self.fx.path("state").display().to_string()
    }

    /// Deploys `src` (checksum of `data`) with the state dir and `args`.
    fn deploy(&self, src: &str, data: &[u8], args: &[&str], env: &[(&str, &str)]) -> common::Run {
        let url = self.fx.manifest(&manifest_for(
            &self.fx,
            src,
            &sha256(data),
            "commands:\n  pre: [\"echo PRE-HOOK\"]\n",
        ));
        let state = self.state();
        let mut all = vec!["--state-dir", state.as_str()];
        all.extend_from_slice(args);
        self.fx.run(&url, &all, env)
    }

    /// The archive kept in the state dir, if any.
    fn kept(&self) -> Option<Vec<u8>> {
        let dir = self.fx.path("state/packed");
        let files: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "gz"))
            .collect();
        assert!(files.len() <= 1, "{files:?}");
        files.first().map(|p| std::fs::read(p).unwrap())
    }
}

/// Asserts dest holds the tree of a full deploy of v2, naming the paths
/// that differ.
fn assert_v2(s: &Setup) {
    let got = tree(&s.fx.dest());
    let keys: std::collections::BTreeSet<&String> = got.keys().chain(s.reference.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != s.reference.get(*k))
        .map(|k| {
            let show =
                |n: Option<&common::Node>| n.map(|(mode, mtime, data)| (*mode, *mtime, data.len()));
            format!(
                "{k}: {:?} vs {:?}",
                show(got.get(k)),
                show(s.reference.get(k))
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "dest differs from a full deploy:\n{}",
        differ.join("\n")
    );
}

/// The delta log line's numbers: bytes over the wire, requests, reused.
fn delta_numbers(log: &str) -> (u64, u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("Delta fetch: "))
        .unwrap_or_else(|| panic!("no delta fetch in:\n{log}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.replace(',', "").parse().ok())
        .collect();
    (nums[0], nums[1], nums[2])
}

/// The delta log line's bytes over the wire and reused.
fn delta_line(log: &str) -> (u64, u64) {
    let (wire, _, reused) = delta_numbers(log);
    (wire, reused)
}

#[test]
fn a_redeploy_over_http_moves_only_the_changed_members_and_the_index() {
    let s = setup();
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    let log = s.deploy(&src, &s.v1, &[], &[]).ok();
    assert!(
        log.contains("No delta fetch (no packed archive kept for"),
        "{log}"
    );
    assert_eq!(s.kept().as_deref(), Some(&s.v1[..]), "v1 is kept");

    server.route("/app.tar.gz", Route::ok(s.v2.clone()));
    server.reset_counts("/app.tar.gz");
    let log = s.deploy(&src, &s.v2, &[], &[]).ok();
    let expected = delta_bytes(&s.fx, &s.v1, &s.v2);
    let ranges = server.ranges("/app.tar.gz");
    let sent = server.sent("/app.tar.gz");
    // Only ranges (single ones), and only the expected bytes plus headers.
    assert!(ranges
        .iter()
        .all(|r| r.starts_with("bytes=") && !r.contains(',')));
    assert_eq!(
        server.hits("/app.tar.gz"),
        1 + ranges.len(),
        "every request a range"
    );
    assert!(sent >= expected, "sent {sent} < {expected}");
    assert!(
        sent <= expected + 200 * ranges.len() as u64,
        "sent {sent}, expected {expected} in {} requests",
        ranges.len()
    );
    assert!(
        expected * 5 < s.v2.len() as u64,
        "a few files changed: {expected} of {}",
        s.v2.len()
    );
    let (wire, reused) = delta_line(&log);
    assert_eq!(wire, expected);
    assert_eq!(wire + reused, s.v2.len() as u64);
    assert!(log.find("Checksum ok").unwrap() < log.find("PRE-HOOK").unwrap());
    assert_v2(&s);
    assert_eq!(s.kept().as_deref(), Some(&s.v2[..]), "v2 replaced v1");
    s.fx.assert_no_temp_files();

    // The same archive again: the footer and the index, nothing more.
    server.reset_counts("/app.tar.gz");
    let log = s.deploy(&src, &s.v2, &[], &[]).ok();
    let index = delta_bytes(&s.fx, &s.v2, &s.v2);
    assert_eq!(delta_line(&log), (index, s.v2.len() as u64 - index));
    assert_eq!(server.ranges("/app.tar.gz").len(), 2);
}

#[test]
fn without_a_state_dir_or_for_a_plain_archive_nothing_is_kept() {
    let s = setup();
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    let url =
        s.fx.manifest(&manifest_for(&s.fx, &src, &sha256(&s.v1), ""));
    let log = s.fx.run(&url, &[], &[]).ok();
    assert!(!log.contains("delta"), "{log}");
    assert!(!s.fx.path("state").exists());
    let plain = common::gzip(&common::app_tar());
    server.route("/plain.tar.gz", Route::ok(plain.clone()));
    s.deploy(&server.url("/plain.tar.gz"), &plain, &[], &[])
        .ok();
    assert_eq!(s.kept(), None, "a plain archive is not kept");
}

/// Deploys v1, then v2 served by `route` (checksum of `expected`); returns
/// the second run.
fn after_v1(s: &Setup, route: Route, expected: &[u8]) -> common::Run {
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    s.deploy(&src, &s.v1, &[], &[]).ok();
    server.route("/app.tar.gz", route);
    s.deploy(&src, expected, &[], &[])
}

/// The log line saying the delta missed and why.
fn fell_back(log: &str, why: &str) {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("No delta fetch"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once:\n{log}");
    assert!(lines[0].contains(why), "{}", lines[0]);
    assert!(
        lines[0].ends_with("downloading the whole archive"),
        "{}",
        lines[0]
    );
}

#[test]
fn a_server_without_range_support_gets_the_whole_download() {
    let s = setup();
    let route = Route {
        refuse_ranges: true,
        ..Route::ok(s.v2.clone())
    };
    let log = after_v1(&s, route, &s.v2).ok();
    fell_back(&log, "does not serve ranges");
    assert_v2(&s);
    assert_eq!(s.kept().as_deref(), Some(&s.v2[..]));
}

#[test]
fn a_tampered_member_on_the_server_fails_on_the_checksum() {
    let s = setup();
    let mut bad = s.v2.clone();
    // A byte inside a member v1 does not have: fetched, checked, refused.
    let fx = &s.fx;
    let p = fx.write("v2.check", &s.v2);
    let index = stretcher::pack::read_index(&std::fs::File::open(p).unwrap()).unwrap();
    let p = fx.write("v1.check", &s.v1);
    let old = stretcher::pack::read_index(&std::fs::File::open(p).unwrap()).unwrap();
    let changed = index
        .members()
        .iter()
        .find(|m| !old.members().iter().any(|o| o.digest == m.digest))
        .unwrap();
    bad[(changed.offset + u64::from(changed.len) / 2) as usize] ^= 0x55;
    let log = after_v1(&s, Route::ok(bad), &s.v2).failed();
    fell_back(&log, "does not match the index");
    assert!(log.contains("checksum mismatch"), "{log}");
    assert!(!log.contains("PRE-HOOK"), "{log}");
    assert_eq!(s.kept().as_deref(), Some(&s.v1[..]), "v1 stays kept");
}

#[test]
fn a_tampered_kept_archive_is_caught_by_the_checksum_and_refetched() {
    let s = setup();
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    s.deploy(&src, &s.v1, &[], &[]).ok();
    let kept = std::fs::read_dir(s.fx.path("state/packed"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gz"))
        .unwrap();
    let mut data = std::fs::read(&kept).unwrap();
    data[1000] ^= 0x55;
    std::fs::write(&kept, data).unwrap();
    server.route("/app.tar.gz", Route::ok(s.v2.clone()));
    let log = s.deploy(&src, &s.v2, &[], &[]).ok();
    fell_back(&log, "checksum mismatch");
    assert_v2(&s);
    assert_eq!(s.kept().as_deref(), Some(&s.v2[..]));
}

#[test]
fn a_damaged_or_truncated_index_gets_the_whole_download() {
    let s = setup();
    let p = s.fx.write("v2.check", &s.v2);
    let index = stretcher::pack::read_index(&std::fs::File::open(p).unwrap()).unwrap();
    let at = index.data_end() as usize;
    // The archive the manifest names has a damaged index (any tar still
    // extracts it): the footer's digest catches it.
    let mut damaged = s.v2.clone();
    damaged[at + 30] ^= 0x55;
    let log = after_v1(&s, Route::ok(damaged.clone()), &damaged).ok();
    fell_back(&log, "does not match its footer's digest");
    assert_v2(&s);
    // A truncated index: the footer no longer fits the archive.
    let s = setup();
    let mut truncated = s.v2[..at + 40].to_vec();
    truncated.extend_from_slice(&s.v2[s.v2.len() - stretcher::pack::Footer::LEN..]);
    let log = after_v1(&s, Route::ok(truncated.clone()), &truncated).ok();
    fell_back(&log, "footer does not fit");
    assert_v2(&s);
}

#[test]
fn a_lost_kept_archive_gets_the_whole_download() {
    let s = setup();
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    s.deploy(&src, &s.v1, &[], &[]).ok();
    std::fs::remove_dir_all(s.fx.path("state/packed")).unwrap();
    server.route("/app.tar.gz", Route::ok(s.v2.clone()));
    server.reset_counts("/app.tar.gz");
    let log = s.deploy(&src, &s.v2, &[], &[]).ok();
    fell_back(&log, "no packed archive kept");
    assert!(server.ranges("/app.tar.gz").is_empty(), "no ranged request");
    assert_v2(&s);
}

#[test]
fn an_archive_replaced_mid_fetch_gets_the_whole_download() {
    let s = setup();
    // The footer and index come from an upload in progress (v1 bytes with
    // another ETag would be the same: use a third archive), then the final
    // v2 replaces it.
    let v3 = packed(&s.fx, "v3", |d| {
        write_v2(d);
        std::fs::write(d.join("lib/d00/f000.rb"), b"v3\n").unwrap();
    });
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    s.deploy(&src, &s.v1, &[], &[]).ok();
    let hits = server.hits("/app.tar.gz");
    let route = Route {
        replaced: Some((hits + 3, s.v2.clone())),
        ..Route::ok(v3)
    };
    server.route("/app.tar.gz", route);
    let log = s.deploy(&src, &s.v2, &[], &[]).ok();
    fell_back(&log, "the archive changed on the server (ETag)");
    assert_v2(&s);
}

#[test]
fn the_bandwidth_limit_and_the_timeout_cover_the_ranged_requests() {
    let s = setup();
    let expected = delta_bytes(&s.fx, &s.v1, &s.v2);
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    s.deploy(&src, &s.v1, &[], &[]).ok();
    server.route("/app.tar.gz", Route::ok(s.v2.clone()));
    // At a quarter of the delta per second, it takes about 4 s.
    let rate = (expected / 4).to_string();
    let started = Instant::now();
    let log = s
        .deploy(&src, &s.v2, &["--max-band-width", &rate], &[])
        .ok();
    assert!(log.contains("Delta fetch: "), "{log}");
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Slow ranges past --timeout: the run fails on the timeout.
    server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    s.deploy(&src, &s.v1, &[], &[]).ok();
    let slow = Route {
        chunk_delay: Duration::from_secs(2),
        ..Route::ok(s.v2.clone())
    };
    server.route("/app.tar.gz", slow);
    let started = Instant::now();
    let log = s.deploy(&src, &s.v2, &["--timeout", "1s"], &[]).failed();
    assert!(log.contains("timeout 1s reached"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Deploys v1 then v2 from an object store (`put` uploads, `env` points
/// the agent at the store through `proxy`); checks that v2 moved the
/// changed members and the index, counted on the proxy, at most
/// `per_request` bytes of headers for each request.
#[cfg(all(feature = "s3", feature = "gcs"))]
fn object_store_delta(
    s: &Setup,
    src: &str,
    put: &dyn Fn(Vec<u8>),
    env: &[(&str, &str)],
    proxy: &common::objstore::Proxy,
    per_request: u64,
) {
    put(s.v1.clone());
    let log = s.deploy(src, &s.v1, &[], env).ok();
    assert!(
        log.contains("No delta fetch (no packed archive kept"),
        "{log}"
    );
    put(s.v2.clone());
    proxy.reset();
    let log = s.deploy(src, &s.v2, &[], env).ok();
    let expected = delta_bytes(&s.fx, &s.v1, &s.v2);
    let (wire, requests, reused) = delta_numbers(&log);
    assert_eq!(
        (wire, reused),
        (expected, s.v2.len() as u64 - expected),
        "{log}"
    );
    let down = proxy.down();
    assert!(
        (expected..=expected + per_request * requests).contains(&down),
        "{down} bytes came through the proxy for {expected} in {requests} requests"
    );
    assert_v2(s);
    assert_eq!(s.kept().as_deref(), Some(&s.v2[..]));
}

#[cfg(all(feature = "s3", feature = "gcs"))]
#[test]
fn a_redeploy_from_s3_moves_only_the_changed_members_and_the_index() {
    use common::objstore::{Moto, Proxy};
    let s = setup();
    let moto = Moto::start(None);
    moto.create_bucket("deploys");
    let proxy = Proxy::start(moto.port);
    let mut env = moto.env();
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push(("AWS_ENDPOINT_URL", proxy.endpoint()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let put = |data: Vec<u8>| moto.put("deploys", "app/app.tar.gz", data);
    object_store_delta(&s, "s3://deploys/app/app.tar.gz", &put, &env, &proxy, 1500);
}

#[cfg(all(feature = "s3", feature = "gcs"))]
#[test]
fn a_redeploy_from_gcs_moves_only_the_changed_members_and_the_index() {
    use common::objstore::{FakeGcs, Proxy};
    let s = setup();
    let port = common::free_port();
    let host = format!("127.0.0.1:{port}");
    let gcs = FakeGcs::start_as(Some(&host));
    gcs.create_bucket("deploys");
    let proxy = Proxy::start_on(port, gcs.port);
    let env = [("STORAGE_EMULATOR_HOST", host.as_str())];
    let put = |data: Vec<u8>| gcs.put("deploys", "app/app.tar.gz", data);
    object_store_delta(&s, "gs://deploys/app/app.tar.gz", &put, &env, &proxy, 1500);
}

#[test]
fn a_deploy_user_gets_the_delta_too() {
    let s = setup();
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    let state = s.state();
    let args = ["--state-dir", state.as_str()];
    for (data, delta) in [(&s.v1, false), (&s.v2, true)] {
        server.route("/app.tar.gz", Route::ok(data.clone()));
        let extra = "sync_strategy: native\n";
        let url =
            s.fx.manifest(&manifest_for(&s.fx, &src, &sha256(data), extra));
        let log = s.fx.run_unprivileged(&url, &args, &[]).ok();
        assert_eq!(log.contains("Delta fetch: "), delta, "{log}");
        if delta {
            // Placed by the index as the deploy user too.
            let (read, total) = inflated(&log);
            assert!(read * 4 < total, "inflated {read} of {total}");
        }
    }
    assert_v2(&s);
    assert_eq!(s.kept().as_deref(), Some(&s.v2[..]));
}

/// After a delta fetch only the fetched bytes (members, index, footer)
/// are written before the hooks; the members reused are read from the
/// kept archive where they are, and copied in after the post hook, when
/// the archive is kept. Every strategy places the same tree: rsync and
/// mv ask for the archive whole first, native and release read the
/// reused members by offset.
#[test]
fn every_strategy_places_a_delta_whose_reused_members_are_copied_in_after_post() {
    for strategy in ["rsync", "mv", "native", "release"] {
        let s = setup();
        let server = Server::start();
        let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
        let state = s.state();
        let deploy = |data: &Vec<u8>| {
            server.route("/app.tar.gz", Route::ok(data.clone()));
            let extra =
                format!("sync_strategy: {strategy}\ncommands:\n  post: [\"echo POST-HOOK\"]\n");
            let url =
                s.fx.manifest(&manifest_for(&s.fx, &src, &sha256(data), &extra));
            s.fx.run(&url, &["--state-dir", state.as_str()], &[]).ok()
        };
        deploy(&s.v1);
        if strategy == "mv" {
            // mv renames into a dest that is not there (as upstream's).
            std::fs::remove_dir_all(s.fx.dest()).unwrap();
        }
        let log = deploy(&s.v2);
        let (wire, reused) = delta_line(&log);
        assert!(reused > wire * 4, "{strategy}: {log}");
        let written = log
            .lines()
            .find_map(|l| l.split(" Wrote ").nth(1))
            .and_then(|w| w.split(' ').next())
            .map(|n| n.replace(',', "").parse::<u64>().unwrap());
        assert_eq!(
            written,
            Some(wire),
            "{strategy}: only the fetched bytes:\n{log}"
        );
        let post = log.find("POST-HOOK").unwrap();
        let kept = log.find("Kept the packed archive").unwrap();
        assert!(post < kept, "{strategy}: kept after post:\n{log}");
        assert_eq!(
            s.kept().as_deref(),
            Some(&s.v2[..]),
            "{strategy}: kept whole"
        );
        if matches!(strategy, "native" | "release") {
            let (read, total) = inflated(&log);
            assert!(read * 4 < total, "{strategy}: inflated {read} of {total}");
        }
        assert_v2(&s);
        s.fx.assert_no_temp_files();
    }
}

/// The reused members are read from the kept archive after the pre hook:
/// one changed on disk since it was hashed (here zeroed by the pre hook)
/// fails the deploy instead of placing bytes nobody verified.
#[test]
fn a_kept_archive_changed_after_the_checksum_fails_rather_than_being_placed() {
    for strategy in ["native", "rsync"] {
        let s = setup();
        let server = Server::start();
        let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
        let state = s.state();
        let deploy = |data: &Vec<u8>, pre: &str| {
            server.route("/app.tar.gz", Route::ok(data.clone()));
            let extra = format!("sync_strategy: {strategy}\ncommands:\n  pre: [{pre:?}]\n");
            let url =
                s.fx.manifest(&manifest_for(&s.fx, &src, &sha256(data), &extra));
            s.fx.run(&url, &["--state-dir", state.as_str()], &[])
        };
        deploy(&s.v1, "true").ok();
        // native must read this file's member (unchanged in v2) again.
        let touched = s.fx.dest().join("lib/d05/f005.rb");
        std::fs::write(&touched, b"changed by hand").unwrap();
        let kept = std::fs::read_dir(s.fx.path("state/packed"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "gz"))
            .unwrap();
        let blocks = s.v1.len() / 4096;
        let zero = format!(
            "dd if=/dev/zero of={} bs=4096 count={blocks} conv=notrunc",
            kept.display()
        );
        let log = deploy(&s.v2, &zero).failed();
        assert!(log.contains("Delta fetch: "), "{strategy}: {log}");
        assert!(
            log.contains("the kept archive changed since it was hashed"),
            "{strategy}: {log}"
        );
        let now = std::fs::read(&touched).unwrap();
        assert_eq!(
            now, b"changed by hand",
            "{strategy}: nothing unverified placed"
        );
        s.fx.assert_no_temp_files();
    }
}

/// TMPDIR on tmpfs, the state dir on disk: the archive is kept by a copy
/// (no hard link across filesystems), whole, and TMPDIR is left empty.
#[test]
fn a_delta_kept_across_filesystems_is_copied_whole() {
    let s = setup();
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let tmpdir = tmp.path().display().to_string();
    let server = Server::start();
    let src = server.route("/app.tar.gz", Route::ok(s.v1.clone()));
    let dev = |p: &std::path::Path| std::os::unix::fs::MetadataExt::dev(&p.metadata().unwrap());
    std::fs::create_dir_all(s.state()).unwrap();
    assert_ne!(
        dev(tmp.path()),
        dev(std::path::Path::new(&s.state())),
        "TMPDIR and the state dir on one filesystem: no copy to test"
    );
    for (data, delta) in [(&s.v1, false), (&s.v2, true)] {
        server.route("/app.tar.gz", Route::ok(data.clone()));
        let url = s.fx.manifest(&manifest_for(
            &s.fx,
            &src,
            &sha256(data),
            "sync_strategy: native\n",
        ));
        let state = s.state();
        let log =
            s.fx.run(
                &url,
                &["--state-dir", state.as_str()],
                &[("TMPDIR", &tmpdir)],
            )
            .ok();
        assert_eq!(log.contains("Delta fetch: "), delta, "{log}");
        assert!(log.contains("Kept the packed archive"), "{log}");
        assert!(log.contains(&format!(" bytes to {tmpdir}/")), "{log}");
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "{log}");
    }
    assert_v2(&s);
    assert_eq!(s.kept().as_deref(), Some(&s.v2[..]));
}

/// The placement log line's numbers: compressed bytes inflated and the
/// archive's data bytes.
fn inflated(log: &str) -> (u64, u64) {
    let line = log
        .lines()
        .find(|l| l.contains("packed archive: ") && l.contains(" inflated"))
        .unwrap_or_else(|| panic!("not placed from the index:\n{log}"));
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.replace(',', "").parse().ok())
        .collect();
    (nums[1], nums[2])
}

/// SPEC 8.9: native and release read a packed archive by its index and
/// inflate only the members holding what dest (or the live release)
/// lacks by rsync's quick check; the tree is a full deploy's.
#[test]
fn native_and_release_inflate_only_the_members_dest_lacks() {
    for strategy in ["native", "release"] {
        let s = setup();
        s.fx.write("v1.tar.gz", &s.v1);
        s.fx.write("v2.tar.gz", &s.v2);
        let extra = format!("sync_strategy: {strategy}\n");
        let deploy = |name: &str, data: &[u8]| {
            let url =
                s.fx.manifest(&manifest_for(&s.fx, &s.fx.url(name), &sha256(data), &extra));
            s.fx.run(&url, &[], &[]).ok()
        };
        deploy("v1.tar.gz", &s.v1);
        // A file changed in dest since (another size): written again.
        let touched = s.fx.dest().join("lib/d05/f005.rb");
        if strategy == "native" {
            std::fs::write(&touched, b"changed by hand").unwrap();
        }
        let log = deploy("v2.tar.gz", &s.v2);
        let (read, total) = inflated(&log);
        let changed = delta_bytes(&s.fx, &s.v1, &s.v2) - (s.v2.len() as u64 - total);
        assert!(read > 0, "{strategy}: {log}");
        assert!(
            read <= changed + 20 * (32 << 10),
            "{strategy}: inflated {read} of {total}, the changed members are {changed}"
        );
        assert!(read * 4 < total, "{strategy}: inflated {read} of {total}");
        assert_v2(&s);
        s.fx.assert_no_temp_files();

        // The same archive again: nothing to inflate.
        let log = deploy("v2.tar.gz", &s.v2);
        if strategy == "native" {
            assert_eq!(inflated(&log).0, 0, "{log}");
            // The 1.5 MiB file, split over members, cut short in dest:
            // written again from its members and no others.
            let big = s.fx.dest().join("app.bin");
            let len = std::fs::metadata(&big).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&big)
                .unwrap()
                .set_len(1000)
                .unwrap();
            let log = deploy("v2.tar.gz", &s.v2);
            let (read, _) = inflated(&log);
            assert!(
                read >= len && read <= len + (64 << 10),
                "inflated {read} for {len}"
            );
        }
        assert_v2(&s);
    }
}

/// A packed archive with a damaged data member (its checksum taken of the
/// damaged bytes) fails before anything is placed, whatever the strategy:
/// native would otherwise skip the member and never see the damage.
#[test]
fn a_damaged_member_fails_every_strategy_before_dest_is_touched() {
    let s = setup();
    let index =
        stretcher::pack::read_index(&std::fs::File::open(s.fx.write("v1.tar.gz", &s.v1)).unwrap())
            .unwrap();
    let m = index.members()[index.members().len() / 2];
    let mut bad = s.v1.clone();
    bad[(m.offset + u64::from(m.len) / 2) as usize] ^= 0x55;
    s.fx.write("bad.tar.gz", &bad);
    for strategy in ["native", "release", "rsync"] {
        let url = s.fx.manifest(&manifest_for(
            &s.fx,
            &s.fx.url("bad.tar.gz"),
            &sha256(&bad),
            &format!("sync_strategy: {strategy}\ncommands:\n  pre: [\"echo PRE-HOOK\"]\n"),
        ));
        let err = s.fx.run(&url, &[], &[]).failed();
        assert!(
            err.contains(&format!(
                "packed archive: gzip member {} (at byte {}) does not match its index",
                index.members().len() / 2,
                m.offset
            )),
            "{strategy}: {err}"
        );
        assert!(!err.contains("PRE-HOOK"), "{strategy}: {err}");
        assert!(!s.fx.dest().exists(), "{strategy}");
    }
}

/// A release redeploy links a hard link's file from the live release, as
/// the file itself: nothing is inflated for it.
#[test]
fn release_links_a_hard_link_from_the_live_release_without_inflating_it() {
    let fx = Fixture::new();
    let dir = fx.path("tree");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("asset"), bytes(600_000, 3, false)).unwrap();
    std::fs::hard_link(dir.join("asset"), dir.join("asset.link")).unwrap();
    std::fs::write(dir.join("small"), b"small\n").unwrap();
    fix_mtimes(&dir);
    let out = fx.path("app.tar.gz");
    let (d, o) = (dir.display().to_string(), out.display().to_string());
    fx.run("", &["pack", &d, "-o", &o], &[]).ok();
    let data = std::fs::read(&out).unwrap();
    let url = fx.manifest(&manifest_for(
        &fx,
        &fx.url("app.tar.gz"),
        &sha256(&data),
        "sync_strategy: release\n",
    ));
    fx.run(&url, &[], &[]).ok();
    let log = fx.run(&url, &[], &[]).ok();
    let passes: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("packed archive: "))
        .collect();
    assert!(!passes.is_empty(), "{log}");
    for line in passes {
        assert!(line.contains(" 0 of "), "{line}\n{log}");
    }
    let live = std::fs::canonicalize(fx.dest()).unwrap();
    let link = std::fs::metadata(live.join("asset.link")).unwrap();
    assert_eq!(link.len(), 600_000);
    assert!(link.nlink() >= 2, "linked from the live release");
}
