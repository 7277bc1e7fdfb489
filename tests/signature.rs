//! SPEC 8.5: signed manifests. Keys and signatures are made by the real
//! `minisign` tool; the agent verifies `<manifest URL>.minisig` over file://,
//! HTTP and S3, refuses without running any hook of what it refused, and
//! guards against downgrades and stale signatures.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::http::{Route, Server};
use common::{app_manifest, app_tar, gzip, manifest_for, sha256, tar, Fixture, Member};

/// A minisign key pair without a password, made by `minisign -G -W`.
struct Signer {
    dir: tempfile::TempDir,
    /// The public key's base64 line, as `--verify-key` takes it.
    key: String,
    /// The key ID minisign prints in the `.pub` file's comment.
    id: String,
}

impl Signer {
    fn new() -> Signer {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(dir.path().join("key.pub"))
            .arg("-s")
            .arg(dir.path().join("key.sec"))
            .output()
            .expect("minisign is installed");
        assert!(out.status.success(), "minisign -G: {out:?}");
        let text = std::fs::read_to_string(dir.path().join("key.pub")).unwrap();
        let mut lines = text.lines();
        let comment = lines.next().unwrap();
        let id = comment.rsplit(' ').next().unwrap().to_string();
        let key = lines.next().unwrap().to_string();
        Signer { dir, key, id }
    }

    fn pub_file(&self) -> PathBuf {
        self.dir.path().join("key.pub")
    }

    /// Signs `file` into `<file>.minisig`, with minisign's default trusted
    /// comment (`timestamp:<now>\tfile:…\thashed`) or `comment`.
    fn sign(&self, file: &Path, comment: Option<&str>) {
        let mut cmd = Command::new("minisign");
        cmd.arg("-S")
            .arg("-s")
            .arg(self.dir.path().join("key.sec"))
            .arg("-m")
            .arg(file);
        if let Some(comment) = comment {
            cmd.args(["-t", comment]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "minisign -S: {out:?}");
    }

    /// The signature of `data`, as `.minisig` text.
    fn signature(&self, data: &[u8], comment: Option<&str>) -> Vec<u8> {
        let file = self.dir.path().join("blob");
        std::fs::write(&file, data).unwrap();
        self.sign(&file, comment);
        std::fs::read(self.dir.path().join("blob.minisig")).unwrap()
    }
}

/// A trusted comment signed at `unix`.
fn at(unix: u64) -> String {
    format!("timestamp:{unix}\tfile:manifest.yml\thashed")
}

/// `commands` that leave marker files if any hook runs.
fn marker_hooks(fx: &Fixture) -> String {
    let [pre, failure, success] =
        ["pre-ran", "failure-ran", "success-ran"].map(|m| fx.path(m).display().to_string());
    format!(
        "commands:\n  pre: [\"touch {pre}\"]\n  failure: [\"touch {failure}\"]\n  \
         success: [\"touch {success}\"]\n"
    )
}

fn hooks_ran(fx: &Fixture) -> Vec<&'static str> {
    ["pre-ran", "failure-ran", "success-ran"]
        .into_iter()
        .filter(|m| fx.path(m).exists())
        .collect()
}

/// Writes `yaml` as the fixture's manifest, signs it and returns its URL.
fn signed_manifest(fx: &Fixture, signer: &Signer, yaml: &str, comment: Option<&str>) -> String {
    let url = fx.manifest(yaml);
    signer.sign(&fx.path("manifest.yml"), comment);
    url
}

/// The one log line that says why the run was refused.
fn refusal(log: &str, want: &str) -> String {
    let line = log
        .lines()
        .find(|l| l.contains(want))
        .unwrap_or_else(|| panic!("no line with {want:?} in:\n{log}"));
    assert!(
        !log.contains("Executing manifest") && !log.contains("Deploy manifest"),
        "an unverified manifest went on:\n{log}"
    );
    line.to_string()
}

/// Asserts a refused run touched nothing: no hook, no dest, no temp file.
fn assert_untouched(fx: &Fixture) {
    assert_eq!(hooks_ran(fx), Vec::<&str>::new());
    assert!(!fx.dest().exists(), "dest was created");
    fx.assert_no_temp_files();
}

#[test]
fn a_signed_manifest_over_file_deploys_and_logs_its_trusted_comment() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let url = signed_manifest(&fx, &signer, &app_manifest(&fx, &marker_hooks(&fx)), None);
    let log = fx.run(&url, &["--verify-key", &signer.key], &[]).ok();
    let line = log
        .lines()
        .find(|l| l.contains("Verified manifest signature"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(&format!(
            "Verified manifest signature (key {}): timestamp:",
            signer.id
        )) && line.contains("file:manifest.yml"),
        "{line}"
    );
    let verified = log.find("Verified manifest signature").unwrap();
    assert!(verified < log.find("Executing manifest").unwrap(), "{log}");
    assert!(fx.dest().join("index.html").exists());
    assert_eq!(hooks_ran(&fx), ["pre-ran", "success-ran"]);
    fx.assert_no_temp_files();
}

#[test]
fn a_signed_manifest_over_http_deploys() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let server = Server::start();
    let data = gzip(&app_tar());
    let src = server.route("/app.tar.gz", Route::ok(data.clone()));
    let yaml = manifest_for(&fx, &src, &sha256(&data), "");
    server.route(
        "/m.yml.minisig",
        Route::ok(signer.signature(yaml.as_bytes(), None)),
    );
    let url = server.route("/m.yml", Route::ok(yaml));
    let log = fx.run(&url, &["--verify-key", &signer.key], &[]).ok();
    assert!(log.contains("Verified manifest signature"), "{log}");
    assert!(fx.dest().join("index.html").exists());
    assert_eq!(server.hits("/m.yml.minisig"), 1);
}

#[cfg(all(feature = "s3", feature = "gcs"))]
#[test]
fn a_signed_manifest_on_s3_deploys_and_an_unsigned_one_is_refused() {
    let moto = common::objstore::Moto::start(None);
    moto.create_bucket("signed");
    let fx = Fixture::new();
    let signer = Signer::new();
    let data = gzip(&app_tar());
    moto.put("signed", "app.tar.gz", data.clone());
    let yaml = manifest_for(&fx, "s3://signed/app.tar.gz", &sha256(&data), "");
    moto.put("signed", "app/manifest.yml", yaml.clone().into_bytes());
    moto.put("signed", "unsigned/manifest.yml", yaml.clone().into_bytes());
    moto.put(
        "signed",
        "app/manifest.yml.minisig",
        signer.signature(yaml.as_bytes(), None),
    );
    let env = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = ["--verify-key", &signer.key];

    let log = fx
        .run("s3://signed/unsigned/manifest.yml", &args, &env)
        .failed();
    let line = refusal(&log, "missing signature");
    assert!(
        line.contains("missing signature s3://signed/unsigned/manifest.yml.minisig"),
        "{line}"
    );
    assert!(!fx.dest().exists());

    let log = fx.run("s3://signed/app/manifest.yml", &args, &env).ok();
    assert!(log.contains("Verified manifest signature"), "{log}");
    assert!(fx.dest().join("index.html").exists());
}

#[test]
fn a_missing_signature_is_refused_naming_its_url_without_running_hooks() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let url = fx.manifest(&app_manifest(&fx, &marker_hooks(&fx)));
    let log = fx.run(&url, &["--verify-key", &signer.key], &[]).failed();
    let line = refusal(&log, "missing signature");
    assert!(
        line.contains(&format!("missing signature {url}.minisig: ")),
        "{line}"
    );
    assert_untouched(&fx);

    // Under consul watch the agent still exits 0.
    let payload = base64::engine::general_purpose::STANDARD.encode(&url);
    let events = format!(r#"[{{"ID":"e1","Name":"deploy","Payload":"{payload}","LTime":1}}]"#);
    let run = fx.run(
        &events,
        &["--verify-key", &signer.key],
        &[("CONSUL_INDEX", "5")],
    );
    assert_eq!(run.code(), 0, "{}", run.stderr());
    refusal(&run.stderr(), "missing signature");
    assert_untouched(&fx);
}

#[test]
fn a_tampered_manifest_is_refused_before_its_template_is_rendered() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let yaml = app_manifest(&fx, &marker_hooks(&fx));
    let url = signed_manifest(&fx, &signer, &yaml, None);
    // The attacker's version would fail in the template if it were rendered.
    fx.write(
        "manifest.yml",
        format!("{yaml}  post: ['{{{{ must_env \"NOT_SET_ANYWHERE\" }}}}']\n"),
    );
    let log = fx.run(&url, &["--verify-key", &signer.key], &[]).failed();
    let line = refusal(&log, "bad signature");
    assert!(
        line.contains(&format!("bad signature {url}.minisig (key {})", signer.id)),
        "{line}"
    );
    assert!(!log.contains("NOT_SET_ANYWHERE"), "{log}");
    assert_untouched(&fx);
}

#[test]
fn a_signature_by_an_unknown_key_names_its_id_and_answers_a_serf_query() {
    let fx = Fixture::new();
    let (trusted, other) = (Signer::new(), Signer::new());
    let url = signed_manifest(&fx, &other, &app_manifest(&fx, &marker_hooks(&fx)), None);
    let args = ["--verify-key", &trusted.key];
    let log = fx.run(&url, &args, &[]).failed();
    let line = refusal(&log, "unknown key id");
    assert!(
        line.contains(&format!(
            "is by unknown key id {} (trusted: {})",
            other.id, trusted.id
        )),
        "{line}"
    );
    assert_untouched(&fx);

    let env = [
        ("SERF_EVENT", "query"),
        ("SERF_QUERY_NAME", "deploy"),
        ("SERF_QUERY_LTIME", "3"),
    ];
    let run = fx.run(&url, &args, &env);
    assert_eq!(run.code(), 0);
    let out = run.stdout();
    assert!(
        out.starts_with("failed manifest: signature ")
            && out.contains(&format!("unknown key id {}", other.id))
            && out.lines().count() == 1,
        "{out:?}"
    );
    assert_untouched(&fx);
}

#[test]
fn a_malformed_signature_file_is_refused() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let url = fx.manifest(&app_manifest(&fx, &marker_hooks(&fx)));
    fx.write("manifest.yml.minisig", "<html>404 page of a CDN</html>\n");
    let log = fx.run(&url, &["--verify-key", &signer.key], &[]).failed();
    let line = refusal(&log, "malformed signature file");
    assert!(line.contains(&format!("{url}.minisig")), "{line}");
    assert_untouched(&fx);
}

#[test]
fn during_a_key_rollover_either_key_verifies() {
    let fx = Fixture::new();
    let (old, new) = (Signer::new(), Signer::new());
    let url = signed_manifest(&fx, &new, &app_manifest(&fx, ""), None);
    let log = fx
        .run(
            &url,
            &["--verify-key", &old.key, "--verify-key", &new.key],
            &[],
        )
        .ok();
    assert!(
        log.contains(&format!("Verified manifest signature (key {})", new.id)),
        "{log}"
    );
}

#[test]
fn a_key_file_verifies_like_a_key() {
    let fx = Fixture::new();
    let (other, signer) = (Signer::new(), Signer::new());
    let url = signed_manifest(&fx, &signer, &app_manifest(&fx, ""), None);
    let (other_file, signer_file) = (other.pub_file(), signer.pub_file());
    let args = [
        "--verify-key-file",
        other_file.to_str().unwrap(),
        "--verify-key-file",
        signer_file.to_str().unwrap(),
    ];
    let log = fx.run(&url, &args, &[]).ok();
    assert!(
        log.contains(&format!("Verified manifest signature (key {})", signer.id)),
        "{log}"
    );

    let run = fx.run(&url, &["--verify-key-file", "/nonexistent/key.pub"], &[]);
    let err = run.failed();
    assert!(
        err.lines().count() == 1
            && err.contains("--verify-key-file")
            && err.contains("/nonexistent/key.pub"),
        "{err}"
    );
}

/// A manifest deploying `<name>.tar.gz`, an archive of one file,
/// `version.txt`, holding `text`, into `dest`; `extra` appended.
fn versioned_to(fx: &Fixture, name: &str, text: &str, dest: &str, extra: &str) -> String {
    let data = gzip(&tar(&[Member::File("version.txt", text.as_bytes(), 0o644)]));
    fx.write(&format!("{name}.tar.gz"), &data);
    format!(
        "src: {}\nchecksum: {}\ndest: {dest}\n{extra}",
        fx.url(&format!("{name}.tar.gz")),
        sha256(&data)
    )
}

/// [`versioned_to`] the fixture's dest.
fn versioned(fx: &Fixture, name: &str, text: &str, extra: &str) -> String {
    versioned_to(fx, name, text, &fx.dest().display().to_string(), extra)
}

/// Writes `yaml` as `<name>.yml`, signs it with `comment` (minisign's
/// default when `None`) and returns its URL.
fn signed_as(
    fx: &Fixture,
    signer: &Signer,
    name: &str,
    yaml: &str,
    comment: Option<&str>,
) -> String {
    let rel = format!("{name}.yml");
    fx.write(&rel, yaml);
    signer.sign(&fx.path(&rel), comment);
    fx.url(&rel)
}

/// [`versioned`] `name` holding `text`, signed with the time `unix`.
fn signed_version(
    fx: &Fixture,
    signer: &Signer,
    name: &str,
    text: &str,
    extra: &str,
    unix: u64,
) -> String {
    let yaml = versioned(fx, name, text, extra);
    signed_as(fx, signer, name, &yaml, Some(&at(unix)))
}

/// What dest's `version.txt` holds.
fn deployed(fx: &Fixture) -> String {
    std::fs::read_to_string(fx.dest().join("version.txt")).unwrap()
}

/// `--verify-key` and `--state-dir` in the fixture.
fn guarded(fx: &Fixture, signer: &Signer) -> Vec<String> {
    vec![
        "--verify-key".into(),
        signer.key.clone(),
        "--state-dir".into(),
        fx.path("state").display().to_string(),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The signature time recorded for each dest in the state file.
fn recorded_times(fx: &Fixture) -> serde_json::Map<String, serde_json::Value> {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx.path("state/state.json")).unwrap()).unwrap();
    state["dests"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(dest, record)| (dest.clone(), record["signed_at"].clone()))
        .collect()
}

const T1: u64 = 1_700_000_000;
const T2: u64 = 1_700_000_100;
const T3: u64 = 1_700_000_200;

/// The log line refusing a manifest signed at [`T1`] over one at [`T2`].
fn downgrade_refused(log: &str) {
    let line = log
        .lines()
        .find(|l| l.contains("refusing a downgrade"))
        .unwrap_or_else(|| panic!("not refused as a downgrade:\n{log}"));
    assert!(
        line.contains("manifest signed at 2023-11-14T22:13:20Z is older than the one deployed to ")
            && line.contains("(signed at 2023-11-14T22:15:00Z)"),
        "{line}"
    );
}

#[test]
fn an_older_signed_manifest_is_a_downgrade_unless_allowed() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let args = guarded(&fx, &signer);
    let key_args = strs(&args);
    let (v1, v2) = (
        versioned(&fx, "v1", "v1\n", ""),
        versioned(&fx, "v2", "v2, newer\n", ""),
    );

    let url = signed_manifest(&fx, &signer, &v2, Some(&at(T2)));
    fx.run(&url, &key_args, &[]).ok();
    assert_eq!(deployed(&fx), "v2, newer\n");
    let dest = fx.dest().display().to_string();
    assert_eq!(recorded_times(&fx)[&dest], T2);

    // The same signature again is no downgrade.
    fx.run(&url, &key_args, &[]).ok();

    signed_manifest(&fx, &signer, &v1, Some(&at(T1)));
    let log = fx.run(&url, &key_args, &[]).failed();
    let line = refusal(&log, "downgrade");
    assert!(
        line.ends_with(&format!(
            "manifest signed at 2023-11-14T22:13:20Z is older than the one deployed to {dest} \
             (signed at 2023-11-14T22:15:00Z): refusing a downgrade; use --allow-downgrade"
        )),
        "{line}"
    );
    assert_eq!(deployed(&fx), "v2, newer\n");

    let mut allow = key_args.to_vec();
    allow.push("--allow-downgrade");
    fx.run(&url, &allow, &[]).ok();
    assert_eq!(deployed(&fx), "v1\n");
    // --allow-downgrade lowered the recorded time: a manifest signed
    // between the two deploys again.
    assert_eq!(recorded_times(&fx)[&dest], T1);
    let between = signed_as(&fx, &signer, "between", &v2, Some(&at(T1 + 50)));
    fx.run(&between, &key_args, &[]).ok();
    assert_eq!(deployed(&fx), "v2, newer\n");
}

/// An older signed manifest that passed the check while a newer deploy held
/// the dest lock is checked again once it has the lock.
#[test]
fn a_run_that_waited_behind_a_newer_deploy_is_refused_as_a_downgrade() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let args = guarded(&fx, &signer);
    let args = strs(&args);
    let (started, go) = (fx.path("started"), fx.path("go"));
    // The newer deploy holds the lock in its `pre` hook until told to go on.
    let hold = format!(
        "commands:\n  pre:\n    - 'touch {}; while [ ! -e {} ]; do sleep 0.05; done'\n",
        started.display(),
        go.display()
    );
    let newer = signed_version(&fx, &signer, "v2", "v2, newer\n", &hold, T2);
    let older = signed_version(&fx, &signer, "v1", "v1\n", "", T1);

    let mut first = fx.spawn(&newer, &args, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !started.exists() {
        assert!(Instant::now() < deadline, "the newer deploy never ran pre");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut second, lines) = fx.watch(Some(&older), &args);
    common::wait_for(&lines, "waiting for lock");
    fx.write("go", "");
    assert_eq!(common::wait_exit(&mut first), 0);
    let code = common::wait_exit(&mut second);
    let log: Vec<String> = lines.iter().collect();
    let log = log.join("\n");
    assert_eq!(code, 1, "{log}");
    downgrade_refused(&log);
    assert_eq!(deployed(&fx), "v2, newer\n");
    fx.assert_no_temp_files();
}

/// `dest/`, `x/../dest`, a relative or a symlinked-parent spelling of dest
/// are the dest the newer manifest was deployed to.
#[test]
fn every_spelling_of_dest_is_one_dest_to_the_downgrade_guard() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let args = guarded(&fx, &signer);
    let args = strs(&args);
    let newer = signed_version(&fx, &signer, "v2", "v2, newer\n", "", T2);
    fx.run(&newer, &args, &[]).ok();

    std::fs::create_dir(fx.path("x")).unwrap();
    std::os::unix::fs::symlink(fx.root.path(), fx.path("link")).unwrap();
    let (dest, root) = (fx.dest().display().to_string(), fx.root.path().display());
    for spelling in [
        format!("{dest}/"),
        format!("{dest}//"),
        format!("{root}/x/../dest"),
        format!("{root}/./dest"),
        format!("{root}/link/dest"),
        "dest".to_string(),
        "./dest/".to_string(),
    ] {
        let yaml = versioned_to(&fx, "v1", "v1\n", &spelling, "");
        let older = signed_as(&fx, &signer, "v1", &yaml, Some(&at(T1)));
        let log = fx.run(&older, &args, &[]).failed();
        downgrade_refused(&log);
        assert_eq!(deployed(&fx), "v2, newer\n", "{spelling}");
    }
}

/// Earlier versions keyed the record by dest as its manifest spelled it;
/// such a record still guards the dest, and is moved to the resolved key
/// by the next deploy.
#[test]
fn a_state_file_keyed_by_another_spelling_of_dest_still_guards_it() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let args = guarded(&fx, &signer);
    let args = strs(&args);
    let dest = fx.dest().display().to_string();
    fx.write(
        "state/state.json",
        format!(
            r#"{{"events":{{}},"dests":{{"{dest}/":{{"manifest":"file:///v2.yml","checksum":"ab",
                "event":null,"deployed_at":"2024-01-01T00:00:00+00:00","signed_at":{T2}}}}}}}"#
        ),
    );
    let older = signed_version(&fx, &signer, "v1", "v1\n", "", T1);
    downgrade_refused(&fx.run(&older, &args, &[]).failed());
    assert!(!fx.dest().exists());

    let newer = signed_version(&fx, &signer, "v3", "v3, the newest\n", "", T3);
    fx.run(&newer, &args, &[]).ok();
    let times = recorded_times(&fx);
    assert_eq!(times.len(), 1, "{times:?}");
    assert_eq!(times[&dest], T3);
}

/// A deploy whose `post` fails has changed dest: the signature time of what
/// is live there is recorded, while the event stays unrecorded (SPEC 8.4).
#[test]
fn a_deploy_that_failed_after_changing_dest_still_guards_it() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let args = guarded(&fx, &signer);
    let args = strs(&args);
    let post = format!(
        "commands:\n  post: ['test -e {}']\n",
        fx.path("ok").display()
    );
    let newer = signed_version(&fx, &signer, "v2", "v2, newer\n", &post, T2);
    let event = common::consul_event("e2", 2, &newer);
    let consul = [("CONSUL_INDEX", "2")];
    let log = fx.run(&event, &args, &consul).ok();
    assert!(
        log.contains("Deploy manifest failed: failed: test -e"),
        "{log}"
    );
    assert_eq!(deployed(&fx), "v2, newer\n");

    let older = signed_version(&fx, &signer, "v1", "v1\n", "", T1);
    downgrade_refused(&fx.run(&older, &args, &[]).failed());
    assert_eq!(deployed(&fx), "v2, newer\n");

    // The failed event was not recorded as deployed: it deploys again.
    fx.write("ok", "");
    let log = fx.run(&event, &args, &consul).ok();
    assert!(log.contains("Deploy manifest succeeded."), "{log}");
}

/// Neither a hand deploy without `--verify-key` on the same `--state-dir`
/// nor a signature without `timestamp:` lowers the recorded time.
#[test]
fn a_deploy_without_a_signature_time_leaves_the_recorded_one() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let args = guarded(&fx, &signer);
    let args = strs(&args);
    let newer = signed_version(&fx, &signer, "v2", "v2, newer\n", "", T2);
    fx.run(&newer, &args, &[]).ok();
    let older = signed_version(&fx, &signer, "v1", "v1\n", "", T1);
    let v3 = versioned(&fx, "v3", "v3, the newest\n", "");

    let by_hand = fx.manifest(&v3);
    fx.run(&by_hand, &args[2..], &[]).ok();
    assert_eq!(deployed(&fx), "v3, the newest\n");
    downgrade_refused(&fx.run(&older, &args, &[]).failed());

    let no_time = signed_as(&fx, &signer, "v3", &v3, Some("release 3"));
    fx.run(&no_time, &args, &[]).ok();
    downgrade_refused(&fx.run(&older, &args, &[]).failed());
    assert_eq!(deployed(&fx), "v3, the newest\n");
    assert_eq!(recorded_times(&fx)[&fx.dest().display().to_string()], T2);
}

/// md5 and sha1 collisions are practical: a signature over a manifest
/// pinning the archive by one of them is worth no more than a collision.
#[test]
fn md5_and_sha1_checksums_are_refused_under_verify_key_unless_allowed() {
    use sha2::Digest;
    let fx = Fixture::new();
    let signer = Signer::new();
    let server = Server::start();
    let data = gzip(&app_tar());
    let src = server.route("/app.tar.gz", Route::ok(data.clone()));
    let key = ["--verify-key", signer.key.as_str()];
    for (algorithm, sum) in [
        ("md5", hex::encode(md5::Md5::digest(&data))),
        ("sha1", hex::encode(sha1::Sha1::digest(&data))),
    ] {
        let yaml = manifest_for(&fx, &src, &sum, &marker_hooks(&fx));
        let url = signed_manifest(&fx, &signer, &yaml, None);
        let downloads = server.hits("/app.tar.gz");
        let log = fx.run(&url, &key, &[]).failed();
        let line = log
            .lines()
            .find(|l| l.contains("Deploy manifest failed"))
            .unwrap_or_else(|| panic!("{log}"));
        assert!(
            line.contains(&format!("checksum is {algorithm}"))
                && line.contains("--allow-weak-checksum"),
            "{line}"
        );
        // A failed deploy of a verified manifest: its failure hooks run,
        // nothing is downloaded.
        assert_eq!(hooks_ran(&fx), ["failure-ran"]);
        assert_eq!(server.hits("/app.tar.gz"), downloads);
        assert!(!fx.dest().exists());
        std::fs::remove_file(fx.path("failure-ran")).unwrap();

        let run = fx.run(
            &common::consul_event("e1", 1, &url),
            &key,
            &[("CONSUL_INDEX", "1")],
        );
        assert_eq!(run.code(), 0, "{}", run.stderr());
        assert!(run.stderr().contains(&format!("checksum is {algorithm}")));
        assert!(!fx.dest().exists());
        std::fs::remove_file(fx.path("failure-ran")).unwrap();

        let mut allow = key.to_vec();
        allow.push("--allow-weak-checksum");
        fx.run(&url, &allow, &[]).ok();
        assert!(fx.dest().join("index.html").exists());
        assert_eq!(hooks_ran(&fx), ["pre-ran", "success-ran"]);
        for marker in ["pre-ran", "success-ran"] {
            std::fs::remove_file(fx.path(marker)).unwrap();
        }
        std::fs::remove_dir_all(fx.dest()).unwrap();
    }
    // Unsigned, an md5 checksum deploys as with Go stretcher.
    let md5 = hex::encode(md5::Md5::digest(&data));
    fx.run(&fx.manifest(&manifest_for(&fx, &src, &md5, "")), &[], &[])
        .ok();
}

#[test]
fn max_signature_age_refuses_old_and_timestampless_signatures() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let yaml = app_manifest(&fx, &marker_hooks(&fx));
    let args = ["--verify-key", &signer.key, "--max-signature-age", "24h"];

    let url = signed_manifest(&fx, &signer, &yaml, Some(&at(1_000_000_000)));
    let log = fx.run(&url, &args, &[]).failed();
    let line = refusal(&log, "--max-signature-age");
    assert!(
        line.contains("was made at 2001-09-09T01:46:40Z")
            && line.contains("older than --max-signature-age 24h0m0s"),
        "{line}"
    );
    assert_untouched(&fx);

    signed_manifest(&fx, &signer, &yaml, Some("release 42"));
    let log = fx.run(&url, &args, &[]).failed();
    let line = refusal(&log, "no timestamp");
    assert!(
        line.contains("--max-signature-age 24h0m0s cannot apply"),
        "{line}"
    );
    assert_untouched(&fx);

    // Without the flag, a comment without a timestamp is accepted, saying so.
    let log = fx.run(&url, &args[..2], &[]).ok();
    assert!(
        log.contains("has no timestamp in its trusted comment: no downgrade or age check applies"),
        "{log}"
    );

    // minisign's default comment carries the current time.
    std::fs::remove_dir_all(fx.dest()).unwrap();
    signed_manifest(&fx, &signer, &yaml, None);
    fx.run(&url, &args, &[]).ok();
}

#[test]
fn a_hanging_signature_fetch_times_out() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let server = Server::start();
    let yaml = app_manifest(&fx, &marker_hooks(&fx));
    let url = server.route("/m.yml", Route::ok(yaml));
    server.route(
        "/m.yml.minisig",
        Route {
            hang: true,
            ..Route::ok("")
        },
    );
    let started = Instant::now();
    let log = fx
        .run(&url, &["--verify-key", &signer.key, "--timeout", "1s"], &[])
        .failed();
    assert!(started.elapsed() < Duration::from_secs(10));
    let line = refusal(&log, "timeout");
    assert!(
        line.contains(&format!("timeout 1s reached while fetching {url}.minisig")),
        "{line}"
    );
    assert_untouched(&fx);
}

#[test]
fn the_signature_fetch_is_retried_like_the_download() {
    let fx = Fixture::new();
    let signer = Signer::new();
    let yaml = app_manifest(&fx, "");
    let signature = signer.signature(yaml.as_bytes(), None);
    // A server whose signature is not there for the first two requests, as
    // when the manifest was uploaded a moment before its signature.
    let lagging = || {
        let server = Server::start();
        server.route(
            "/m.yml.minisig",
            Route {
                fail_first: 2,
                fail_status: 404,
                ..Route::ok(signature.clone())
            },
        );
        let url = server.route("/m.yml", Route::ok(yaml.clone()));
        (server, url)
    };
    let args = |retry| {
        [
            "--verify-key",
            signer.key.as_str(),
            "--retry-wait",
            "0",
            "--retry",
            retry,
        ]
    };

    let (server, url) = lagging();
    let log = fx.run(&url, &args("1"), &[]).failed();
    let line = refusal(&log, "missing signature");
    assert!(line.contains("HTTP status 404"), "{line}");
    assert_eq!(server.hits("/m.yml.minisig"), 2);
    assert_untouched(&fx);

    let (server, url) = lagging();
    let log = fx.run(&url, &args("2"), &[]).ok();
    assert!(log.contains("Get signature failed"), "{log}");
    assert!(log.contains("Verified manifest signature"), "{log}");
    assert_eq!(server.hits("/m.yml.minisig"), 3);
}
