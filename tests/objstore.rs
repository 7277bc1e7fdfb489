//! SPEC 4: `s3://` and `gs://` against real servers (moto, fake-gcs-server).
#![cfg(all(feature = "s3", feature = "gcs"))]

mod common;

use common::http::{Route, Server};
use common::objstore::{FakeGcs, Moto};
use common::{app_tar, gzip, sha256, tar, tree, Fixture, Member};

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The tree the app archive deploys to, for comparisons.
fn reference_tree() -> std::collections::BTreeMap<String, common::Node> {
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    fx.write("a.tar.gz", &data);
    fx.deploy(&common::manifest_for(
        &fx,
        &fx.url("a.tar.gz"),
        &sha256(&data),
        "",
    ))
    .ok();
    tree(&fx.dest())
}

fn manifest(fx: &Fixture, src: &str, sum: &str) -> String {
    common::manifest_for(fx, src, sum, "")
}

#[test]
fn manifest_and_archive_on_s3() {
    let moto = Moto::start(None);
    moto.create_bucket("deploys");
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    moto.put("deploys", "app/app.tar.gz", data.clone());
    let yaml = manifest(&fx, "s3://deploys/app/app.tar.gz", &sha256(&data));
    moto.put("deploys", "app/manifest.yml", yaml.into_bytes());
    let env = moto.env();
    let log = fx
        .run("s3://deploys/app/manifest.yml", &[], &env_refs(&env))
        .ok();
    assert!(log.contains("region: us-east-1"), "{log}");
    assert_eq!(tree(&fx.dest()), reference_tree());
    fx.assert_no_temp_files();
}

#[test]
fn manifest_on_http_archive_on_s3() {
    let moto = Moto::start(None);
    moto.create_bucket("mixed-bucket");
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    moto.put("mixed-bucket", "app.tar.gz", data.clone());
    let server = Server::start();
    let url = server.route(
        "/manifest.yml",
        Route::ok(manifest(
            &fx,
            "s3://mixed-bucket/app.tar.gz",
            &sha256(&data),
        )),
    );
    let env = moto.env();
    fx.run(&url, &[], &env_refs(&env)).ok();
    assert_eq!(tree(&fx.dest()), reference_tree());
}

#[test]
fn s3_keys_with_spaces_and_unicode() {
    let moto = Moto::start(None);
    moto.create_bucket("odd-keys");
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    moto.put("odd-keys", "releases/v 1/äpp ü.tar.gz", data.clone());
    let url = fx.manifest(&manifest(
        &fx,
        "s3://odd-keys/releases/v%201/%C3%A4pp%20%C3%BC.tar.gz",
        &sha256(&data),
    ));
    let env = moto.env();
    fx.run(&url, &[], &env_refs(&env)).ok();
    assert!(fx.dest().join("index.html").exists());
}

#[test]
fn s3_errors_name_bucket_key_and_cause() {
    let moto = Moto::start(None);
    moto.create_bucket("present");
    let fx = Fixture::new();
    let env = moto.env();
    let sum = "a".repeat(64);
    for (src, want) in [
        (
            "s3://present/missing.tar.gz",
            "s3://present/missing.tar.gz: no such key",
        ),
        (
            "s3://absent-bucket/a.tar.gz",
            "s3://absent-bucket/a.tar.gz: no such bucket",
        ),
    ] {
        let url = fx.manifest(&manifest(&fx, src, &sum));
        let log = fx
            .run(
                &url,
                &["--retry", "2", "--retry-wait", "0"],
                &env_refs(&env),
            )
            .failed();
        let line = log
            .lines()
            .find(|l| l.contains("Deploy manifest failed:"))
            .unwrap();
        assert!(
            line.contains("src failed:") && line.contains(want),
            "{line}"
        );
        assert_eq!(
            log.matches("Try again").count(),
            2,
            "a missing key or bucket is retried, as Go stretcher does: {log}"
        );
        fx.assert_no_temp_files();
    }
    // The manifest itself missing.
    let log = fx
        .run("s3://present/nope.yml", &[], &env_refs(&env))
        .failed();
    assert!(
        log.contains("load manifest failed: s3://present/nope.yml: no such key"),
        "{log}"
    );
}

#[test]
fn s3_without_a_region_says_so() {
    let moto = Moto::start(None);
    let fx = Fixture::new();
    let env: Vec<_> = moto
        .env()
        .into_iter()
        .filter(|(k, _)| *k != "AWS_REGION")
        .collect();
    let mut refs = env_refs(&env);
    refs.push(("AWS_REGION", ""));
    refs.push(("AWS_DEFAULT_REGION", ""));
    let log = fx.run("s3://any-bucket/m.yml", &[], &refs).failed();
    assert!(log.contains("no AWS region configured"), "{log}");
}

#[test]
fn s3_wrong_credentials_are_reported() {
    // moto checks credentials after the two set-up requests.
    let moto = Moto::start(Some(2));
    moto.create_bucket("locked");
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    moto.put("locked", "app.tar.gz", data.clone());
    let url = fx.manifest(&manifest(&fx, "s3://locked/app.tar.gz", &sha256(&data)));
    let env = moto.env();
    let log = fx.run(&url, &[], &env_refs(&env)).failed();
    assert!(
        log.contains("s3://locked/app.tar.gz: credentials rejected (InvalidAccessKeyId)"),
        "{log}"
    );
    assert!(!fx.dest().exists());
}

#[test]
fn a_100_mib_object_streams_from_s3() {
    let moto = Moto::start(None);
    moto.create_bucket("big");
    let fx = Fixture::new();
    // Incompressible-ish content so sizes are real.
    let mut content = vec![0u8; 100 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in content.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let data = tar(&[Member::File("big.bin", &content, 0o644)]);
    let sum = sha256(&data);
    let wrote = format!("Wrote {} bytes", stretcher::units::comma(data.len() as u64));
    moto.put("big", "big.tar", data);
    let url = fx.manifest(&manifest(&fx, "s3://big/big.tar", &sum));
    let env = moto.env();
    let log = fx.run(&url, &[], &env_refs(&env)).ok();
    assert!(log.contains(&wrote), "{log}");
    assert_eq!(std::fs::read(fx.dest().join("big.bin")).unwrap(), content);
}

#[test]
fn manifest_and_archive_on_gcs() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("gcs-deploys");
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    gcs.put("gcs-deploys", "app/app v1.tar.gz", data.clone());
    let yaml = manifest(&fx, "gs://gcs-deploys/app/app%20v1.tar.gz", &sha256(&data));
    gcs.put("gcs-deploys", "app/manifest.yml", yaml.into_bytes());
    let env = gcs.env();
    fx.run("gs://gcs-deploys/app/manifest.yml", &[], &env_refs(&env))
        .ok();
    assert_eq!(tree(&fx.dest()), reference_tree());
}

#[test]
fn gcs_missing_object_and_bucket_are_errors() {
    let gcs = FakeGcs::start();
    gcs.create_bucket("gcs-present");
    let fx = Fixture::new();
    let env = gcs.env();
    for url in ["gs://gcs-present/missing.yml", "gs://gcs-absent/m.yml"] {
        let log = fx.run(url, &[], &env_refs(&env)).failed();
        assert!(
            log.contains(&format!("load manifest failed: {url}: not found")),
            "{log}"
        );
    }
}

#[test]
fn s3_key_uploaded_while_the_agent_retries_deploys() {
    let moto = Moto::start(None);
    moto.create_bucket("racing");
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    let url = fx.manifest(&manifest(&fx, "s3://racing/app.tar.gz", &sha256(&data)));
    let env = moto.env();
    let log = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            moto.put("racing", "app.tar.gz", data.clone());
        });
        fx.run(
            &url,
            &["--retry", "10", "--retry-wait", "500ms"],
            &env_refs(&env),
        )
        .ok()
    });
    assert!(log.contains("s3://racing/app.tar.gz: no such key"), "{log}");
    assert!(log.contains("Try again"), "{log}");
    assert!(fx.dest().join("index.html").exists());
}
