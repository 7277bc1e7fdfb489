//! SPEC 5.5, extraction: archives made by real tools (GNU tar in its gnu,
//! ustar and posix formats, bsdtar, Python's tarfile, `tar -r` appends,
//! sparse files) deploy exactly what GNU tar extracts from them: paths,
//! types, bytes, modes, owners, mtimes (with nanoseconds where the format
//! keeps them), symlink targets and hard-link sharing. Input that is not a
//! tar fails the deploy, naming the URL, and leaves dest alone.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::{gzip, is_root, manifest_for, sha256, Fixture};

/// Mtime of every source path (plus a per-path offset), with nanoseconds.
const SECS: i64 = 1_600_000_000;
const NANOS: u32 = 123_456_789;

/// Who runs the agent (and GNU tar, for the reference tree).
#[derive(Clone, Copy, PartialEq)]
enum Who {
    Root,
    Nobody,
}

/// Where the deploy goes.
#[derive(Clone, Copy, PartialEq)]
enum Dest {
    /// An existing dest with other files: rsync really runs.
    Populated,
    /// No dest yet, `sync_strategy: mv`: dest is the extracted tree itself,
    /// so hard links and holes are as extracted.
    Fresh,
}

/// Runs `cmd`, asserting it succeeds.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SHA-256 of a file, by `sha256sum` (fast even in a debug build).
fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

/// Gives every path under `dir` (and `dir`) a fixed mtime with nanoseconds,
/// each a second apart in name order.
fn set_times(dir: &Path) {
    let mut paths = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < paths.len() {
        let p = paths[i].clone();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            let mut children: Vec<_> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            paths.extend(children);
        }
        i += 1;
    }
    for (n, p) in paths.iter().enumerate().rev() {
        let t = filetime::FileTime::from_unix_time(SECS + n as i64, NANOS);
        filetime::set_symlink_file_times(p, t, t).unwrap();
    }
}

fn write(path: &Path, data: &[u8], mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, data).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A varied app tree in `src`: odd modes (0444 files, a 0555 directory with
/// a file in it), empty and 2 MiB files, a unicode name, a name with a
/// newline, symlinks, a hard link, an empty directory, a file owned by
/// 1234:5678 (as root). With `long`: a name over 100 bytes, a path over 255,
/// a symlink target over 100, and a long name holding a newline.
fn make_tree(src: &Path, long: bool) {
    write(&src.join("app/index.html"), b"<p>v1</p>\n", 0o644);
    write(
        &src.join("app/bin/start"),
        b"#!/bin/sh\necho start\n",
        0o755,
    );
    write(&src.join("app/secret"), b"key=1\n", 0o600);
    write(&src.join("app/readonly"), b"read only\n", 0o444);
    write(&src.join("app/empty.txt"), b"", 0o644);
    let big: Vec<u8> = (0..(2 << 20) + 3).map(|i| (i % 251) as u8).collect();
    write(&src.join("app/big.bin"), &big, 0o644);
    write(&src.join("app/ro/file"), b"in a read-only dir\n", 0o444);
    write(&src.join("héllo-世界.txt"), "unicode\n".as_bytes(), 0o644);
    write(&src.join("new\nline.txt"), b"newline\n", 0o644);
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::os::unix::fs::symlink("index.html", src.join("app/link")).unwrap();
    std::os::unix::fs::symlink("missing/target", src.join("app/dangling")).unwrap();
    std::fs::hard_link(src.join("app/index.html"), src.join("app/hard")).unwrap();
    if long {
        let dir = src.join("long").join("d".repeat(150));
        write(
            &dir.join(format!("{}.txt", "f".repeat(120))),
            b"long\n",
            0o644,
        );
        let target = format!("{}t", "a/".repeat(60));
        std::os::unix::fs::symlink(target, src.join("long/target-link")).unwrap();
        let name = format!("{}\nline.txt", "n".repeat(110));
        write(&src.join("long").join(name), b"long newline\n", 0o644);
    }
    if is_root() {
        std::os::unix::fs::lchown(src.join("app/secret"), Some(1234), Some(5678)).unwrap();
    }
    std::fs::set_permissions(src.join("empty"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(src.join("app/ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
    set_times(src);
}

/// One path of a [`snapshot`]: a line of metadata, and a file's contents.
#[derive(Debug, PartialEq)]
struct Node {
    line: String,
    data: Vec<u8>,
}

/// Everything under `dir`, comparable: type, mode, owner, mtime with
/// nanoseconds, link target or contents; with `links`, the first path of
/// the inode each multiply-linked file shares.
fn snapshot(dir: &Path, links: bool) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = format!("{:?}", p.strip_prefix(dir).unwrap());
            let base = format!(
                "{:o} {}:{} {}.{:09}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec()
            );
            let mut data = Vec::new();
            let line = if m.is_dir() {
                stack.push(p.clone());
                format!("dir {base}")
            } else if m.file_type().is_symlink() {
                format!("symlink {base} -> {:?}", std::fs::read_link(&p).unwrap())
            } else if m.is_file() {
                if m.nlink() > 1 {
                    let first = inodes.entry((m.dev(), m.ino())).or_insert(rel.clone());
                    if *first > rel {
                        *first = rel.clone();
                    }
                    files.push((rel.clone(), (m.dev(), m.ino())));
                }
                data = std::fs::read(&p).unwrap();
                format!("file {base} {} bytes", data.len())
            } else {
                format!("other {base}")
            };
            out.insert(rel, Node { line, data });
        }
    }
    if links {
        for (rel, inode) in files {
            let node = out.get_mut(&rel).unwrap();
            node.line
                .push_str(&format!(" linked with {}", inodes[&inode]));
        }
    }
    out
}

/// Asserts two snapshots are equal, listing the paths that differ.
fn assert_same(ours: &BTreeMap<String, Node>, gnu: &BTreeMap<String, Node>, log: &str) {
    let keys: std::collections::BTreeSet<_> = ours.keys().chain(gnu.keys()).collect();
    fn show(n: Option<&Node>) -> Option<&str> {
        n.map(|n| n.line.as_str())
    }
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| ours.get(*k) != gnu.get(*k))
        .map(|k| {
            format!(
                "{k}\n  ours: {:?}\n  gnu:  {:?}",
                show(ours.get(k)),
                show(gnu.get(k))
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "dest differs from GNU tar's extraction:\n{}\nlog:\n{log}",
        differ.join("\n")
    );
}

/// Deploys the fixture's file `archive` as `who` into `dest`, extracts it
/// with GNU tar (plus `tar_args`) as the same user, and asserts the trees
/// are the same. Returns the log.
fn deploy_matches_gnu_tar(
    fx: &Fixture,
    archive: &str,
    who: Who,
    dest: Dest,
    tar_args: &[&str],
) -> String {
    deploy_matches(fx, archive, who, dest, tar_args, Reference::GnuTar)
}

/// What the deployed tree is compared with.
#[derive(Clone, Copy, PartialEq)]
enum Reference {
    /// GNU tar's extraction.
    GnuTar,
    /// GNU tar's, but directories as bsdtar extracts them. bsdtar does not
    /// write a directory's members together, and GNU tar, which sets a
    /// directory's metadata when it leaves it, leaves such a directory with
    /// the time of extraction (and, not as root, fails to write into one it
    /// has made read-only); bsdtar and we set directories at the end, as
    /// the archive says.
    GnuTarWithBsdtarDirs,
    /// bsdtar's extraction.
    Bsdtar,
}

/// [`deploy_matches_gnu_tar`] against `reference`.
fn deploy_matches(
    fx: &Fixture,
    archive: &str,
    who: Who,
    dest: Dest,
    tar_args: &[&str],
    reference_by: Reference,
) -> String {
    let _ = std::fs::remove_dir_all(fx.dest());
    let reference = fx.path("reference");
    let _ = std::fs::remove_dir_all(&reference);
    std::fs::create_dir(&reference).unwrap();
    let mut extra = String::new();
    match dest {
        Dest::Populated => {
            fx.write("dest/old.txt", "stale");
            fx.write("dest/app/index.html", "<p>v0</p>\n");
        }
        Dest::Fresh => extra.push_str("sync_strategy: mv\n"),
    }
    let url = fx.manifest(&manifest_for(
        fx,
        &fx.url(archive),
        &sha256_of(&fx.path(archive)),
        &extra,
    ));
    let log = match who {
        Who::Root => fx.run(&url, &[], &[]),
        Who::Nobody => fx.run_unprivileged(&url, &[], &[]),
    }
    .ok();
    if dest == Dest::Populated {
        assert!(log.contains("rsync [-a --delete"), "{log}");
    }

    let extract = |tool: &str, into: &Path, args: &[&str]| {
        let mut c = if who == Who::Nobody && is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
                .args(["--inh-caps=-all", tool]);
            c
        } else {
            Command::new(tool)
        };
        // As root, -p is GNU tar's default; otherwise the umask applies, as
        // it does to the agent.
        c.arg(if who == Who::Root { "-xpf" } else { "-xf" })
            .arg(fx.path(archive))
            .arg("-C")
            .arg(into)
            .args(args);
        run(&mut c);
    };
    let links = dest == Dest::Fresh;
    if reference_by == Reference::Bsdtar {
        extract("bsdtar", &reference, tar_args);
        assert_same(
            &snapshot(&fx.dest(), links),
            &snapshot(&reference, links),
            &log,
        );
        return log;
    }
    extract("tar", &reference, tar_args);
    let mut expected = snapshot(&reference, links);
    if reference_by == Reference::GnuTarWithBsdtarDirs {
        let by_bsdtar = fx.path("reference-bsdtar");
        let _ = std::fs::remove_dir_all(&by_bsdtar);
        std::fs::create_dir(&by_bsdtar).unwrap();
        extract("bsdtar", &by_bsdtar, &[]);
        for (path, node) in snapshot(&by_bsdtar, links) {
            if node.line.starts_with("dir ") {
                expected.insert(path, node);
            }
        }
    }
    assert_same(&snapshot(&fx.dest(), links), &expected, &log);
    log
}

/// A fixture with the varied tree in `src`, archived by `archive_cmd`
/// (given the archive path and `src`) as `a.tar`.
fn fixture_with(fx: Fixture, long: bool, archive_cmd: impl Fn(&Path, &Path) -> Command) -> Fixture {
    let src = fx.path("src");
    make_tree(&src, long);
    run(&mut archive_cmd(&fx.path("a.tar"), &src));
    fx
}

fn gnu_tar(format: &'static str) -> impl Fn(&Path, &Path) -> Command {
    move |archive, src| {
        let mut c = Command::new("tar");
        c.arg(format!("--format={format}"))
            .arg("-cf")
            .arg(archive)
            .arg("-C")
            .arg(src)
            .arg(".");
        c
    }
}

#[test]
fn gnu_format_deploys_what_gnu_tar_extracts() {
    let fx = fixture_with(Fixture::new(), true, gnu_tar("gnu"));
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Root, Dest::Populated, &[]);
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Root, Dest::Fresh, &[]);
}

#[test]
fn ustar_format_deploys_what_gnu_tar_extracts_as_nobody() {
    let fx = fixture_with(Fixture::new(), false, gnu_tar("ustar"));
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Nobody, Dest::Populated, &[]);
}

/// PAX: nanosecond mtimes, and a long name holding a newline (a PAX record
/// whose value spans lines).
#[test]
fn posix_format_keeps_nanosecond_mtimes_and_newlines_in_long_names() {
    let fx = fixture_with(Fixture::on_tmpfs(), true, gnu_tar("posix"));
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Root, Dest::Populated, &[]);
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Root, Dest::Fresh, &[]);
    let meta = std::fs::metadata(fx.dest().join("app/index.html")).unwrap();
    assert_eq!(meta.mtime_nsec(), i64::from(NANOS));
    let name = format!("long/{}\nline.txt", "n".repeat(110));
    assert!(fx.dest().join(name).is_file());
}

#[test]
fn posix_format_as_nobody_on_disk() {
    let fx = fixture_with(Fixture::new(), true, gnu_tar("posix"));
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Nobody, Dest::Fresh, &[]);
}

#[test]
fn bsdtar_archives_deploy_what_gnu_tar_extracts() {
    let bsdtar = |archive: &Path, src: &Path| {
        let mut c = Command::new("bsdtar");
        c.arg("-cf").arg(archive).arg("-C").arg(src).arg(".");
        c
    };
    let fx = fixture_with(Fixture::new(), true, bsdtar);
    deploy_matches(
        &fx,
        "a.tar",
        Who::Root,
        Dest::Populated,
        &[],
        Reference::GnuTarWithBsdtarDirs,
    );
    // Not as root, GNU tar fails on this archive (see Reference).
    let fx = fixture_with(Fixture::on_tmpfs(), true, bsdtar);
    deploy_matches(
        &fx,
        "a.tar",
        Who::Nobody,
        Dest::Populated,
        &[],
        Reference::Bsdtar,
    );
}

#[test]
fn python_tarfile_archives_deploy_what_gnu_tar_extracts() {
    let python = |format: &'static str| {
        move |archive: &Path, src: &Path| {
            let mut c = Command::new("python3");
            c.arg("-c")
                .arg(format!(
                    "import sys, tarfile\n\
                     with tarfile.open(sys.argv[1], 'w', format=tarfile.{format}) as t:\n\
                     \x20   t.add(sys.argv[2], arcname='.')\n"
                ))
                .arg(archive)
                .arg(src);
            c
        }
    };
    let fx = fixture_with(Fixture::new(), true, python("PAX_FORMAT"));
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Root, Dest::Populated, &[]);
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Root, Dest::Fresh, &[]);
    let fx = fixture_with(Fixture::on_tmpfs(), true, python("GNU_FORMAT"));
    deploy_matches_gnu_tar(&fx, "a.tar", Who::Nobody, Dest::Fresh, &[]);
}

/// An archive grown with `tar -r`: each path appended again with another
/// size or type. The later member wins, whatever the types, and a hard
/// link keeps the inode it was made to.
fn appended_archive(fx: &Fixture) {
    let src = fx.path("src");
    // Many small files first, so writes are still queued when the
    // duplicates arrive.
    for i in 0..400 {
        write(&src.join(format!("bulk/f{i:03}")), &[b'x'; 1000], 0o644);
    }
    let large = |tag: u8| -> Vec<u8> { (0..(2 << 20) + 1).map(|i| (i % 13) as u8 ^ tag).collect() };
    write(&src.join("small-then-large"), b"small v1", 0o644);
    write(&src.join("large-then-small"), &large(1), 0o644);
    write(&src.join("file-then-symlink"), b"file v1", 0o644);
    std::os::unix::fs::symlink("bulk/f000", src.join("symlink-then-file")).unwrap();
    write(&src.join("dir-then-file/inner"), b"inner v1", 0o644);
    std::fs::create_dir(src.join("empty-dir-then-file")).unwrap();
    write(&src.join("file-then-dir"), b"file v1", 0o644);
    write(&src.join("orig"), b"orig v1", 0o644);
    std::fs::hard_link(src.join("orig"), src.join("hard")).unwrap();
    set_times(&src);
    run(Command::new("tar")
        .args(["--format=gnu", "-cf"])
        .arg(fx.path("a.tar"))
        .arg("-C")
        .arg(&src)
        .arg("."));

    write(&src.join("small-then-large"), &large(2), 0o600);
    write(&src.join("large-then-small"), b"small v2", 0o600);
    std::fs::remove_file(src.join("file-then-symlink")).unwrap();
    std::os::unix::fs::symlink("bulk/f001", src.join("file-then-symlink")).unwrap();
    std::fs::remove_file(src.join("symlink-then-file")).unwrap();
    write(&src.join("symlink-then-file"), b"now a file", 0o644);
    std::fs::remove_dir_all(src.join("dir-then-file")).unwrap();
    write(&src.join("dir-then-file"), b"now a file", 0o644);
    std::fs::remove_dir(src.join("empty-dir-then-file")).unwrap();
    write(&src.join("empty-dir-then-file"), b"now a file", 0o644);
    std::fs::remove_file(src.join("file-then-dir")).unwrap();
    write(&src.join("file-then-dir/inner"), b"now a dir", 0o644);
    std::fs::remove_file(src.join("orig")).unwrap();
    write(&src.join("orig"), b"orig v2", 0o644);
    set_times(&src);
    let appended = [
        "./small-then-large",
        "./large-then-small",
        "./file-then-symlink",
        "./symlink-then-file",
        "./dir-then-file",
        "./empty-dir-then-file",
        "./file-then-dir",
        "./orig",
    ];
    run(Command::new("tar")
        .args(["--format=gnu", "-rf"])
        .arg(fx.path("a.tar"))
        .arg("-C")
        .arg(&src)
        .args(appended));
}

fn assert_last_ones_won(dest: &Path) {
    let read = |p: &str| std::fs::read(dest.join(p)).unwrap();
    assert_eq!(read("small-then-large").len(), (2 << 20) + 1);
    assert_eq!(read("large-then-small"), b"small v2");
    assert_eq!(
        std::fs::read_link(dest.join("file-then-symlink")).unwrap(),
        Path::new("bulk/f001")
    );
    assert_eq!(read("symlink-then-file"), b"now a file");
    assert_eq!(read("dir-then-file"), b"now a file");
    assert_eq!(read("empty-dir-then-file"), b"now a file");
    assert_eq!(read("file-then-dir/inner"), b"now a dir");
    assert_eq!(read("orig"), b"orig v2");
    assert_eq!(read("hard"), b"orig v1", "the hard link keeps its inode");
}

/// GNU tar needs `--recursive-unlink` to replace a non-empty directory
/// with a file (without it, it fails on that member); with it, its tree is
/// the last-wins tree.
#[test]
fn appended_duplicates_the_last_member_wins_whatever_the_types() {
    let fx = Fixture::new();
    appended_archive(&fx);
    deploy_matches_gnu_tar(
        &fx,
        "a.tar",
        Who::Root,
        Dest::Fresh,
        &["--recursive-unlink"],
    );
    assert_last_ones_won(&fx.dest());
    let fx = Fixture::on_tmpfs();
    appended_archive(&fx);
    deploy_matches_gnu_tar(
        &fx,
        "a.tar",
        Who::Nobody,
        Dest::Populated,
        &["--recursive-unlink"],
    );
    assert_last_ones_won(&fx.dest());
}

/// Sparse source files: data between holes, ending in a hole or in data,
/// all hole, and more regions than an old GNU header holds (4 + 21 per
/// extension block).
fn make_sparse(src: &Path) {
    let sparse = |name: &str, len: u64, writes: &[(u64, &[u8])]| {
        let f = std::fs::File::create(src.join(name)).unwrap();
        f.set_len(len).unwrap();
        for (at, data) in writes {
            f.write_all_at(data, *at).unwrap();
        }
    };
    std::fs::create_dir_all(src).unwrap();
    sparse(
        "ends-in-hole",
        3 << 20,
        &[(1 << 20, b"hello"), (2_000_000, b"world")],
    );
    sparse(
        "ends-in-data",
        2 << 20,
        &[(0, &[7u8; 4096]), ((2 << 20) - 4, b"tail")],
    );
    sparse("all-hole", 1 << 20, &[]);
    let chunk = [9u8; 4096];
    let many: Vec<(u64, &[u8])> = (0..40).map(|i| (i * (64 << 10), &chunk[..])).collect();
    sparse("many-regions", 40 * (64 << 10) + 100, &many);
    write(&src.join("after.txt"), b"after the sparse files\n", 0o644);
    set_times(src);
}

/// Deploys a sparse archive into a fresh dest and checks the files against
/// the sources and GNU tar, and that holes stayed holes.
fn assert_sparse_deploy(fx: &Fixture, archive: &str, who: Who) {
    let log = deploy_matches_gnu_tar(fx, archive, who, Dest::Fresh, &[]);
    for name in [
        "ends-in-hole",
        "ends-in-data",
        "all-hole",
        "many-regions",
        "after.txt",
    ] {
        let ours = std::fs::read(fx.dest().join(name)).unwrap();
        let source = std::fs::read(fx.path("src").join(name)).unwrap();
        assert!(
            ours == source,
            "{archive}: {name} differs from its source\n{log}"
        );
    }
    for name in ["ends-in-hole", "all-hole"] {
        let meta = std::fs::metadata(fx.dest().join(name)).unwrap();
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "{archive}: {name} has no holes ({} blocks)",
            meta.blocks()
        );
    }
}

#[test]
fn sparse_files_in_every_gnu_format_are_restored_with_their_holes() {
    let fx = Fixture::new();
    let src = fx.path("src");
    make_sparse(&src);
    let formats: [(&str, &[&str]); 4] = [
        ("gnu.tar", &["--format=gnu"]),
        ("pax-0.0.tar", &["--format=posix", "--sparse-version=0.0"]),
        ("pax-0.1.tar", &["--format=posix", "--sparse-version=0.1"]),
        ("pax-1.0.tar", &["--format=posix", "--sparse-version=1.0"]),
    ];
    for (archive, args) in formats {
        run(Command::new("tar")
            .args(args)
            .arg("-S")
            .arg("-cf")
            .arg(fx.path(archive))
            .arg("-C")
            .arg(&src)
            .arg("."));
        assert_sparse_deploy(&fx, archive, Who::Root);
    }
    deploy_matches_gnu_tar(&fx, "pax-1.0.tar", Who::Root, Dest::Populated, &[]);
}

#[test]
fn bsdtar_sparse_files_are_restored_as_nobody_on_tmpfs() {
    let fx = Fixture::on_tmpfs();
    let src = fx.path("src");
    make_sparse(&src);
    run(Command::new("bsdtar")
        .arg("-cf")
        .arg(fx.path("b.tar"))
        .arg("-C")
        .arg(&src)
        .arg("."));
    assert_sparse_deploy(&fx, "b.tar", Who::Nobody);
}

/// Deploys `data` as the archive into a dest that holds a release; asserts
/// the deploy fails naming the URL, dest is untouched and no temp files are
/// left. Returns the log.
fn deploy_not_a_tar(data: &[u8]) -> String {
    let fx = Fixture::new();
    fx.write("dest/index.html", "live");
    let before = snapshot(&fx.dest(), false);
    fx.write("bad.bin", data);
    let url = fx.url("bad.bin");
    let log = fx
        .deploy(&manifest_for(&fx, &url, &sha256(data), ""))
        .failed();
    assert!(
        log.contains(&format!(
            "Deploy manifest failed: {url}: not a tar archive ("
        )),
        "{log}"
    );
    assert_eq!(snapshot(&fx.dest(), false), before, "dest changed: {log}");
    fx.assert_no_temp_files();
    log
}

#[test]
fn input_that_is_not_a_tar_fails_naming_the_url_and_leaves_dest_alone() {
    deploy_not_a_tar(b"");
    let page = "<!DOCTYPE html>\n<html><body><h1>404 Not Found</h1></body></html>\n";
    deploy_not_a_tar(page.as_bytes());
    deploy_not_a_tar(page.repeat(40).as_bytes());
    let mut seed: u32 = 7;
    let garbage: Vec<u8> = (0..4096)
        .map(|i| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if i == 0 {
                b'G'
            } else {
                (seed >> 16) as u8
            }
        })
        .collect();
    deploy_not_a_tar(&garbage);
    let log = deploy_not_a_tar(&gzip(&garbage));
    assert!(log.contains("after gzip decompression"), "{log}");
    deploy_not_a_tar(&gzip(b""));
}

/// A tar with no members (what `tar cf x.tar -T /dev/null` writes) is a
/// valid archive: the deploy succeeds with an empty tree, as upstream.
#[test]
fn an_empty_tar_deploys_an_empty_tree() {
    let fx = Fixture::new();
    run(Command::new("tar")
        .arg("cf")
        .arg(fx.path("empty.tar"))
        .args(["-T", "/dev/null"]));
    fx.write("zeros.tar", [0u8; 1024]);
    for archive in ["empty.tar", "zeros.tar"] {
        let _ = std::fs::remove_dir_all(fx.dest());
        let data = std::fs::read(fx.path(archive)).unwrap();
        fx.deploy(&manifest_for(&fx, &fx.url(archive), &sha256(&data), ""))
            .ok();
        assert_eq!(std::fs::read_dir(fx.dest()).unwrap().count(), 0);
        fx.assert_no_temp_files();
    }
}

/// Owner and group of every path under `dir` (not `dir` itself).
fn owners(dir: &Path) -> BTreeMap<String, (u32, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            out.insert(
                p.strip_prefix(dir).unwrap().display().to_string(),
                (m.uid(), m.gid()),
            );
        }
    }
    out
}

/// Writes `owners.tar` with Python's tarfile in `format`: members owned by
/// names this host knows (under other ids than stored), by unknown names,
/// by no names, and a mix; a uid too large for the header (a PAX `uid`
/// record in the PAX format, which GNU tar lets win over the name).
fn owners_by_python(fx: &Fixture, format: &str) {
    let script = "import io, sys, tarfile\n\
        fmt = getattr(tarfile, sys.argv[2])\n\
        def add(t, name, kind, uname, uid, gname, gid):\n\
        \x20   i = tarfile.TarInfo(name)\n\
        \x20   i.uname, i.uid, i.gname, i.gid = uname, uid, gname, gid\n\
        \x20   i.mtime, i.mode = 1600000000, 0o644\n\
        \x20   if kind == 'dir':\n\
        \x20       i.type, i.mode = tarfile.DIRTYPE, 0o755\n\
        \x20   elif kind == 'symlink':\n\
        \x20       i.type, i.linkname = tarfile.SYMTYPE, 'known'\n\
        \x20   else:\n\
        \x20       i.size = 1\n\
        \x20   t.addfile(i, io.BytesIO(b'x'))\n\
        with tarfile.open(sys.argv[1], 'w', format=fmt) as t:\n\
        \x20   add(t, 'd', 'dir', 'daemon', 4321, 'bin', 8765)\n\
        \x20   add(t, 'd/known', 'file', 'daemon', 4321, 'bin', 8765)\n\
        \x20   add(t, 'd/unknown', 'file', 'no-such-user-x9', 4321, 'no-such-group-x9', 8765)\n\
        \x20   add(t, 'd/nameless', 'file', '', 4321, '', 8765)\n\
        \x20   add(t, 'd/mixed', 'file', 'bin', 4321, 'no-such-group-x9', 8765)\n\
        \x20   add(t, 'd/link', 'symlink', 'daemon', 4321, 'bin', 8765)\n\
        \x20   add(t, 'd/big', 'file', 'daemon', 3000000, 'bin', 3000001)\n";
    run(Command::new("python3")
        .args(["-c", script])
        .arg(fx.path("owners.tar"))
        .arg(format));
}

/// Writes `owners.tar` with GNU tar, every member owned by `daemon:bin`
/// under ids this host gives other users (`--owner=NAME:ID`).
fn owners_by_gnu_tar(fx: &Fixture) {
    fx.write("src/d/file", "x");
    std::os::unix::fs::symlink("file", fx.path("src/d/link")).unwrap();
    run(Command::new("tar")
        .args(["--format=gnu", "--owner=daemon:4321", "--group=bin:8765"])
        .arg("-cf")
        .arg(fx.path("owners.tar"))
        .arg("-C")
        .arg(fx.path("src"))
        .arg("."));
}

/// As root, every strategy gives a member the owner and group GNU `tar xf`
/// gives it: by name when the name exists on this host, else by the stored
/// id. `rsync` and `native` also restore them on a dest whose owners were
/// changed since (rsync's and native's fix in place).
#[test]
fn owners_follow_names_as_gnu_tar_does() {
    if !is_root() {
        return;
    }
    for made_by in ["GNU_FORMAT", "PAX_FORMAT", "gnu tar --owner"] {
        for strategy in ["rsync", "mv", "native", "release"] {
            let fx = Fixture::new();
            match made_by {
                "gnu tar --owner" => owners_by_gnu_tar(&fx),
                python_format => owners_by_python(&fx, python_format),
            }
            let reference = fx.path("reference");
            std::fs::create_dir(&reference).unwrap();
            run(Command::new("tar")
                .arg("-xf")
                .arg(fx.path("owners.tar"))
                .arg("-C")
                .arg(&reference));
            let expected = owners(&reference);
            assert!(expected.values().any(|&o| o == (1, 2)), "{expected:?}");
            let url = fx.manifest(&manifest_for(
                &fx,
                &fx.url("owners.tar"),
                &sha256_of(&fx.path("owners.tar")),
                &format!("sync_strategy: {strategy}\n"),
            ));
            let log = fx.run(&url, &[], &[]).ok();
            let what = format!("{made_by}, {strategy}");
            assert_eq!(owners(&fx.dest()), expected, "{what}:\n{log}");
            if strategy == "rsync" || strategy == "native" {
                run(Command::new("chown").arg("-Rh").arg("0:0").arg(fx.dest()));
                let log = fx.run(&url, &[], &[]).ok();
                assert_eq!(owners(&fx.dest()), expected, "{what}, again:\n{log}");
            }
        }
    }
}
