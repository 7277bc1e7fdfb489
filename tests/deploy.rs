//! SPEC 5: the deploy pipeline end to end with real rsync, over HTTP and file://.

mod common;

use std::os::unix::fs::MetadataExt;

use common::http::{Route, Server};
use common::{
    app_manifest, app_tar, gzip, manifest_for, mode, sha256, tar, tree, Fixture, Member, MTIME,
};

#[test]
fn http_deploy_with_rsync_lands_files_modes_and_mtimes() {
    let fx = Fixture::new();
    let server = Server::start();
    let data = gzip(&app_tar());
    let src = server.route("/app.tar.gz", Route::ok(data.clone()));
    let manifest = server.route(
        "/manifest.yml",
        Route::ok(manifest_for(&fx, &src, &sha256(&data), "dest_mode: 0751\n")),
    );
    std::fs::create_dir(fx.dest()).unwrap();
    fx.write("dest/stale.txt", "old");
    let log = fx.run(&manifest, &[], &[]).ok();

    let dest = fx.dest();
    assert_eq!(
        std::fs::read(dest.join("index.html")).unwrap(),
        b"<p>v1</p>\n"
    );
    assert!(
        !dest.join("stale.txt").exists(),
        "rsync --delete removes stale files"
    );
    assert_eq!(
        mode(&dest),
        0o751,
        "dest_mode wins over the archive's ./ mode"
    );
    assert_eq!(mode(&dest.join("bin/start")), 0o755);
    assert_eq!(mode(&dest.join("secret.conf")), 0o600);
    let mtime = std::fs::metadata(dest.join("index.html")).unwrap().mtime();
    assert_eq!(mtime as u64, MTIME, "file mtimes are kept");
    let dir_mtime = std::fs::metadata(dest.join("bin")).unwrap().mtime();
    assert_eq!(dir_mtime as u64, MTIME, "directory mtimes are kept");

    let wrote = log.lines().find(|l| l.contains(" Wrote ")).unwrap();
    let size = stretcher::units::comma(data.len() as u64);
    assert!(
        wrote.contains(&format!("Wrote {size} bytes to ")),
        "{wrote}"
    );
    assert!(wrote.contains(" (in ") && wrote.ends_with("/s)"), "{wrote}");
    assert!(
        log.contains(&format!("Checksum ok: {}", sha256(&data))),
        "{log}"
    );
    assert!(server
        .user_agents()
        .iter()
        .all(|ua| ua == &format!("Stretcher/{}", env!("CARGO_PKG_VERSION"))));
    fx.assert_no_temp_files();
}

/// Deploys one member owned by 1234:2345 into the fixture's dest.
fn deploy_owned_member(fx: &Fixture) -> String {
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_gnu();
    h.set_mode(0o640);
    h.set_uid(1234);
    h.set_gid(2345);
    h.set_mtime(MTIME);
    h.set_size(2);
    b.append_data(&mut h, "owned.txt", &b"hi"[..]).unwrap();
    let data = b.into_inner().unwrap();
    fx.write("a.tar", &data);
    let log = fx
        .deploy(&manifest_for(fx, &fx.url("a.tar"), &sha256(&data), ""))
        .ok();
    let meta = std::fs::metadata(fx.dest().join("owned.txt")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (1234, 2345, 0o640)
    );
    log
}

#[test]
fn owners_are_kept_as_root_by_rsync_over_an_existing_tree() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let fx = Fixture::new();
    fx.write("dest/old.txt", "old");
    let log = deploy_owned_member(&fx);
    assert!(log.contains("rsync [-a --delete"), "{log}");
}

#[test]
fn owners_are_kept_as_root_by_the_rename_into_a_fresh_dest() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let fx = Fixture::new();
    let log = deploy_owned_member(&fx);
    assert!(log.contains("moved the extracted tree into place"), "{log}");
}

#[test]
fn excludes_and_exclude_from_protect_dest_files() {
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    std::fs::create_dir(fx.dest()).unwrap();
    fx.write("dest/app.pid", "999");
    fx.write("dest/old.log", "keep me");
    let extra = "excludes:\n  - \"*.pid\"\nexclude_from: exclude.list\n";
    fx.deploy(&manifest_for(
        &fx,
        &fx.url("app.tar.gz"),
        &sha256(&data),
        extra,
    ))
    .ok();
    let dest = fx.dest();
    assert_eq!(
        std::fs::read_to_string(dest.join("app.pid")).unwrap(),
        "999"
    );
    assert_eq!(
        std::fs::read_to_string(dest.join("old.log")).unwrap(),
        "keep me"
    );
    assert!(
        !dest.join("debug.log").exists(),
        "excluded via exclude_from"
    );
    assert!(dest.join("index.html").exists());
}

type Compressor = fn(&[u8]) -> Vec<u8>;

/// Each compressor's output for `data` split in two members (streams or
/// frames) back to back, as `cat a.gz b.gz` gives: GNU tar reads all of it.
fn multi_member(data: &[u8], compress: Compressor) -> Vec<u8> {
    let (a, b) = data.split_at(1024);
    [compress(a), compress(b)].concat()
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zst(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

#[test]
fn every_compression_format_is_sniffed() {
    let raw = app_tar();
    let reference = {
        let fx = Fixture::new();
        fx.write("dest/old.txt", "the release before");
        fx.write("a.tar", &raw);
        fx.deploy(&manifest_for(&fx, &fx.url("a.tar"), &sha256(&raw), ""))
            .ok();
        tree(&fx.dest())
    };
    let formats: [(&str, Compressor); 4] = [("gz", gzip), ("bz2", bzip2), ("xz", xz), ("zst", zst)];
    for (name, compress) in formats {
        for (kind, data) in [
            ("one", compress(&raw)),
            ("multi", multi_member(&raw, compress)),
        ] {
            let fx = Fixture::new();
            fx.write("dest/old.txt", "the release before");
            let file = format!("a.{name}");
            fx.write(&file, &data);
            let log = fx
                .deploy(&manifest_for(&fx, &fx.url(&file), &sha256(&data), ""))
                .ok();
            assert!(log.contains("rsync [-a --delete"), "{log}");
            assert_eq!(tree(&fx.dest()), reference, "{name} {kind}: {log}");
        }
    }
}

#[test]
fn mv_strategy_renames_into_a_new_dest_and_refuses_a_full_one() {
    let fx = Fixture::new();
    let manifest = app_manifest(&fx, "sync_strategy: mv\ndest_mode: 0750\n");
    let log = fx.deploy(&manifest).ok();
    assert!(log.contains("Rename srcdir"), "{log}");
    assert_eq!(mode(&fx.dest()), 0o750);
    assert!(fx.dest().join("bin/start").exists());
    fx.assert_no_temp_files();

    // dest now holds files: mv must fail and leave it as it was.
    let before = tree(&fx.dest());
    let log = fx.deploy(&manifest).failed();
    assert!(log.contains("Deploy manifest failed: rename"), "{log}");
    assert_eq!(tree(&fx.dest()), before);
    fx.assert_no_temp_files();
}

#[test]
fn mv_strategy_copies_across_filesystems() {
    let shm = std::path::Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("skipped: no /dev/shm");
        return;
    }
    let fx = Fixture::new();
    let tmp = tempfile::Builder::new()
        .prefix("stretcher-test")
        .tempdir_in(shm)
        .unwrap();
    let data = gzip(&app_tar());
    fx.write("app.tar.gz", &data);
    std::fs::create_dir(fx.dest()).unwrap(); // an empty dest is fine
    let url = fx.manifest(&manifest_for(
        &fx,
        &fx.url("app.tar.gz"),
        &sha256(&data),
        "sync_strategy: mv\n",
    ));
    let log = fx
        .run(&url, &[], &[("TMPDIR", tmp.path().to_str().unwrap())])
        .ok();
    assert!(log.contains("on another filesystem: copying"), "{log}");
    assert_eq!(mode(&fx.dest().join("secret.conf")), 0o600);
    let mtime = std::fs::metadata(fx.dest().join("index.html"))
        .unwrap()
        .mtime();
    assert_eq!(mtime as u64, MTIME);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "temp dir left in TMPDIR"
    );
    let siblings: Vec<_> = std::fs::read_dir(fx.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".stretcher"))
        .collect();
    assert!(
        siblings.is_empty(),
        "staging dir left next to dest: {siblings:?}"
    );
}

#[test]
fn commands_only_manifest_runs_pre_then_post_then_success() {
    let fx = Fixture::new();
    let out = fx.path("order");
    let o = out.display();
    fx.deploy(&format!(
        "commands:\n  pre:\n    - echo pre >> {o}\n  post:\n    - echo post >> {o}\n  success:\n    - echo success >> {o}\n  failure:\n    - echo failure >> {o}\n"
    ))
    .ok();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "pre\npost\nsuccess\n"
    );
}

#[test]
fn symlinks_and_hard_links_inside_the_tree_are_deployed() {
    let fx = Fixture::new();
    let data = tar(&[
        Member::File("real.txt", b"content", 0o644),
        Member::Symlink("link.txt", "real.txt"),
        Member::HardLink("hard.txt", "real.txt"),
    ]);
    fx.write("a.tar", &data);
    fx.write("dest/old.txt", "the release before");
    let log = fx
        .deploy(&manifest_for(&fx, &fx.url("a.tar"), &sha256(&data), ""))
        .ok();
    assert!(log.contains("rsync [-a --delete"), "{log}");
    let dest = fx.dest();
    assert!(!dest.join("old.txt").exists());
    assert_eq!(
        std::fs::read_link(dest.join("link.txt")).unwrap().to_str(),
        Some("real.txt")
    );
    assert_eq!(std::fs::read(dest.join("hard.txt")).unwrap(), b"content");
}

#[test]
fn percent_encoded_file_urls_are_decoded() {
    let fx = Fixture::new();
    let data = gzip(&app_tar());
    fx.write("my app/a b.tar.gz", &data);
    let src = format!("file://{}/my%20app/a%20b.tar.gz", fx.root.path().display());
    fx.write(
        "with space.yml",
        manifest_for(&fx, &src, &sha256(&data), ""),
    );
    let url = format!("file://{}/with%20space.yml", fx.root.path().display());
    fx.run(&url, &[], &[]).ok();
    assert!(fx.dest().join("index.html").exists());
}

/// An app-like archive: many small files, files over 1 MiB, nested and
/// implicit directories, odd modes, symlinks, a repeated path, and with
/// `hard_link` a hard link.
fn varied_tar(hard_link: bool) -> Vec<u8> {
    let mut seed: u64 = 42;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut b = ::tar::Builder::new(Vec::new());
    let mut add =
        |path: String, kind: ::tar::EntryType, mode: u32, data: Vec<u8>, link: Option<&str>| {
            let mut h = ::tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_mtime(MTIME + (path.len() as u64) * 7);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(data.len() as u64);
            match link {
                Some(target) => b.append_link(&mut h, &path, target).unwrap(),
                None => b.append_data(&mut h, &path, &data[..]).unwrap(),
            }
        };
    for d in 0..20 {
        add(
            format!("d{d}/"),
            ::tar::EntryType::Directory,
            [0o755, 0o750, 0o700][d % 3],
            vec![],
            None,
        );
        for f in 0..40 {
            let size = (next() % 6000) as usize;
            let data: Vec<u8> = (0..size).map(|i| (i as u64 ^ next()) as u8).collect();
            let mode = [0o644, 0o600, 0o755, 0o640][f % 4];
            add(
                format!("d{d}/sub{}/f{f}.txt", f % 3),
                ::tar::EntryType::Regular,
                mode,
                data,
                None,
            );
        }
    }
    for big in 0..3 {
        let data: Vec<u8> = (0..(3 << 20) + big).map(|i| (i % 251) as u8).collect();
        add(
            format!("big/b{big}.bin"),
            ::tar::EntryType::Regular,
            0o644,
            data,
            None,
        );
    }
    add(
        "d1/link".into(),
        ::tar::EntryType::Symlink,
        0o777,
        vec![],
        Some("sub0/f0.txt"),
    );
    if hard_link {
        add(
            "d2/hard".into(),
            ::tar::EntryType::Link,
            0o644,
            vec![],
            Some("d2/sub1/f1.txt"),
        );
    }
    add(
        "d3/sub0/f0.txt".into(),
        ::tar::EntryType::Regular,
        0o600,
        b"repeated: last wins".to_vec(),
        None,
    );
    b.into_inner().unwrap()
}

/// Deploys `archive` with stretcher and with the steps Go stretcher runs
/// (GNU tar, chmod 755, rsync -a --delete) into dests that start as
/// `populated` says; asserts the trees are the same and returns stretcher's
/// log.
fn assert_same_as_gnu_tar_and_rsync(archive: Vec<u8>, hard_link: bool, populated: bool) -> String {
    let data = gzip(&archive);
    let fx = Fixture::new();
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if populated {
        fx.write("dest/old.txt", "the release before");
        fx.write("expected/old.txt", "the release before");
    }
    fx.write("v.tar.gz", &data);
    let log = fx
        .deploy(&manifest_for(&fx, &fx.url("v.tar.gz"), &sha256(&data), ""))
        .ok();

    // What Go stretcher does: tar xf in a temp dir, chmod 755, rsync -a --delete.
    let extracted = fx.path("gnu");
    let expected = fx.path("expected");
    std::fs::create_dir(&extracted).unwrap();
    let ok = std::process::Command::new("tar")
        .arg("xf")
        .arg(fx.path("v.tar.gz"))
        .current_dir(&extracted)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::set_permissions(
        &extracted,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ok = std::process::Command::new("rsync")
        .args(["-a", "--delete"])
        .arg(format!("{}/", extracted.display()))
        .arg(format!("{}/", expected.display()))
        .status()
        .unwrap();
    assert!(ok.success());

    let (ours, gnu) = (tree(&fx.dest()), tree(&expected));
    // Directories the archive does not list (`dN/subM/`, `big/`) get the
    // time of extraction from both: each must be no older than this test.
    // GNU tar creates links after it sets directory times, so a directory
    // holding a link (`d1/` a symlink; `d2/` a hard link, when there is
    // one) gets the time of extraction there and the archive's time here.
    // Every other mtime must be equal.
    let strip = |t: std::collections::BTreeMap<String, common::Node>| -> Vec<String> {
        t.into_iter()
            .map(|(k, (mode, mtime, data))| {
                let implicit = k.ends_with('/') && k.contains("sub") || k == "big/";
                let gnu_touches = k == "d1/" || (hard_link && k == "d2/");
                let mtime = if implicit {
                    assert!(
                        mtime >= started,
                        "{k}: mtime {mtime} is not the extraction time"
                    );
                    0
                } else if gnu_touches {
                    0
                } else {
                    mtime
                };
                format!("{k} {mode:o} {mtime} {}", sha256(&data))
            })
            .collect()
    };
    let (ours, gnu) = (strip(ours), strip(gnu));
    let differ: Vec<_> = ours
        .iter()
        .zip(&gnu)
        .filter(|(a, b)| a != b)
        .take(5)
        .collect();
    assert!(ours.len() == gnu.len() && differ.is_empty(), "{differ:#?}");
    assert_eq!(mode(&fx.dest()), 0o755);
    log
}

#[test]
fn rsync_over_an_existing_tree_matches_gnu_tar_and_rsync_byte_for_byte() {
    for hard_link in [false, true] {
        let log = assert_same_as_gnu_tar_and_rsync(varied_tar(hard_link), hard_link, true);
        assert!(log.contains("rsync [-a --delete -v "), "{log}");
    }
}

#[test]
fn a_hard_link_keeps_rsync_for_a_fresh_dest_and_matches_gnu_tar_and_rsync() {
    // rsync -a copies hard links apart, so rsync runs.
    let log = assert_same_as_gnu_tar_and_rsync(varied_tar(true), true, false);
    assert!(log.contains("rsync [-a --delete -v "), "{log}");
}

#[test]
fn the_rename_into_a_fresh_dest_matches_gnu_tar_and_rsync_byte_for_byte() {
    let log = assert_same_as_gnu_tar_and_rsync(varied_tar(false), false, false);
    assert!(log.contains("moved the extracted tree into place"), "{log}");
    assert!(!log.contains("rsync ["), "{log}");
}

#[test]
fn an_empty_dest_behind_a_symlink_is_synced_through_the_link() {
    let fx = Fixture::new();
    std::fs::create_dir(fx.path("real")).unwrap();
    std::os::unix::fs::symlink(fx.path("real"), fx.dest()).unwrap();
    let log = fx.deploy(&app_manifest(&fx, "")).ok();
    assert!(log.contains("rsync [-a --delete"), "{log}");
    assert!(std::fs::symlink_metadata(fx.dest())
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(fx.path("real/index.html").exists());
}

#[test]
fn excludes_keep_rsync_even_for_an_empty_dest() {
    let fx = Fixture::new();
    let log = fx
        .deploy(&app_manifest(&fx, "excludes: [\"*.pid\"]\n"))
        .ok();
    assert!(log.contains("rsync [-a --delete"), "{log}");
    assert!(!fx.dest().join("app.pid").exists());
    assert!(fx.dest().join("index.html").exists());
}

#[test]
fn a_fresh_dest_on_another_filesystem_than_tmpdir_gets_rsync_and_the_same_tree() {
    let fx = Fixture::new();
    let shm = Fixture::on_tmpfs();
    let reference = {
        let fx = Fixture::new();
        fx.deploy(&app_manifest(&fx, "")).ok();
        tree(&fx.dest())
    };
    let url = fx.manifest(&app_manifest(&fx, ""));
    // The extracted tree cannot be renamed across filesystems: rsync copies.
    let log = fx
        .run(&url, &[], &[("TMPDIR", shm.path("tmp").to_str().unwrap())])
        .ok();
    assert!(log.contains("rsync [-a --delete"), "{log}");
    assert_eq!(tree(&fx.dest()), reference);
    shm.assert_no_temp_files();
}
