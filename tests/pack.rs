//! SPEC 8.9: `stretcher pack` writes a plain .tar.gz. GNU tar (as Go
//! stretcher runs it), bsdtar, Python's tarfile and Go's archive/tar +
//! compress/gzip extract it to the same tree as `tar -C DIR -czf - .`, and
//! the agent deploys it with every strategy as it deploys the plain one.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::{is_root, manifest_for, noise, sha256, Fixture, MTIME};

/// One path of a tree as a user sees it: type, mode, owner, mtime (not for
/// symlinks), contents or link target, and which paths share an inode.
#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    mtime: i64,
    data: Vec<u8>,
    /// The first path (in name order) with the same inode.
    same_as: String,
}

/// Everything under `dir` and `dir` itself (as `.`).
fn snapshot(dir: &Path) -> BTreeMap<String, Node> {
    let dir = dir.canonicalize().unwrap();
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut paths = vec![dir.clone()];
    let mut i = 0;
    while i < paths.len() {
        let p = paths[i].clone();
        i += 1;
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let rel = match p.strip_prefix(&dir).unwrap().display().to_string() {
            r if r.is_empty() => ".".to_string(),
            r => r,
        };
        let ft = meta.file_type();
        let (kind, data, mtime) = if ft.is_dir() {
            let mut children: Vec<PathBuf> = std::fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            children.sort();
            paths.extend(children);
            ("dir", Vec::new(), meta.mtime())
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&p).unwrap();
            ("symlink", target.display().to_string().into_bytes(), 0)
        } else if ft.is_file() {
            ("file", std::fs::read(&p).unwrap(), meta.mtime())
        } else {
            ("other", Vec::new(), meta.mtime())
        };
        let same_as = if ft.is_file() {
            inodes.entry(meta.ino()).or_insert(rel.clone()).clone()
        } else {
            rel.clone()
        };
        let node = Node {
            kind,
            mode: if ft.is_symlink() {
                0
            } else {
                meta.mode() & 0o7777
            },
            owner: (meta.uid(), meta.gid()),
            mtime,
            data,
            same_as,
        };
        out.insert(rel, node);
    }
    out
}

fn set_mtime(p: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 0);
    filetime::set_symlink_file_times(p, t, t).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A tree with what `tar czf` has to carry: modes (setuid, setgid),
/// owners with and without names (as root), mtimes, empty and large
/// files, symlinks (relative, absolute, dangling, long), hard links, long
/// names, a fifo, names that sort differently by path and by component.
fn make_tree(root: &Path) {
    let dirs = ["bin", "conf", "empty", "many", "a", "a/b", "a-b", "hard"];
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let long_dir = root.join(format!("deep/{}/{}", "d".repeat(60), "e".repeat(60)));
    std::fs::create_dir_all(&long_dir).unwrap();
    let files: &[(&str, &[u8], u32)] = &[
        ("bin/start", b"#!/bin/sh\necho start\n", 0o755),
        ("bin/setuid", b"#!/bin/sh\n", 0o4755),
        ("conf/app.yml", b"port: 8080\n", 0o640),
        ("conf/secret", b"key=1\n", 0o600),
        ("empty-file", b"", 0o644),
        ("a/b/c", b"abc\n", 0o644),
        ("a-b/x", b"x\n", 0o644),
        ("a.txt", b"a\n", 0o644),
        ("hard/one", b"linked twice\n", 0o644),
    ];
    for (name, data, mode) in files {
        std::fs::write(root.join(name), data).unwrap();
        chmod(&root.join(name), *mode);
    }
    std::fs::write(root.join("big.bin"), noise(2_621_440 + 17, 7)).unwrap();
    for i in 0..300 {
        let text = format!("file {i}\n").repeat(i % 40 + 1);
        std::fs::write(root.join(format!("many/f{i:03}.txt")), text).unwrap();
    }
    std::fs::write(long_dir.join(format!("{}.txt", "f".repeat(90))), b"long\n").unwrap();
    std::fs::hard_link(root.join("hard/one"), root.join("hard/two")).unwrap();
    std::os::unix::fs::symlink("bin/start", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("t".repeat(150), root.join("long-link")).unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe").display().to_string()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    chmod(&root.join("empty"), 0o700);
    chmod(&root.join("a"), 0o2775);
    if is_root() {
        chown(&root.join("conf"), 65534, 65534);
        chown(&root.join("conf/app.yml"), 65534, 65534);
        chown(&root.join("conf/secret"), 4242, 4243);
        chown(&root.join("link-rel"), 4242, 4243);
        // chown clears setuid: set it again.
        chmod(&root.join("bin/setuid"), 0o4755);
    }
    // Mtimes last, children before their directories.
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
        all.push(p);
    }
    for (i, p) in all.iter().rev().enumerate() {
        set_mtime(p, MTIME as i64 + i as i64 * 37);
    }
}

/// `stretcher pack DIR -o OUT` with `args`; returns the run.
fn pack(fx: &Fixture, dir: &Path, out: &Path, args: &[&str]) -> common::Run {
    let mut full = vec![
        "pack".to_string(),
        dir.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    full.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    fx.run("", &refs, &[])
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tree, its plain `tar -C DIR -czf` archive and its packed archive.
struct Archives {
    fx: Fixture,
    src: PathBuf,
    plain: PathBuf,
    packed: PathBuf,
}

fn archives() -> Archives {
    let fx = Fixture::new();
    let src = fx.path("src");
    std::fs::create_dir(&src).unwrap();
    make_tree(&src);
    let (plain, packed) = (fx.path("plain.tar.gz"), fx.path("packed.tar.gz"));
    run_ok(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-czf")
            .arg(&plain)
            .arg("."),
    );
    pack(&fx, &src, &packed, &[]).ok();
    Archives {
        fx,
        src,
        plain,
        packed,
    }
}

/// Extracts both archives with `extract(archive, dir)` and checks the
/// trees are the same.
fn same_tree_with(a: &Archives, tool: &str, extract: impl Fn(&Path, &Path)) {
    let mut trees = Vec::new();
    for (name, archive) in [("plain", &a.plain), ("packed", &a.packed)] {
        let dir = a.fx.path(&format!("{tool}-{name}"));
        std::fs::create_dir(&dir).unwrap();
        extract(archive, &dir);
        let mut tree = snapshot(&dir);
        // bsdtar leaves the extraction dir's own mtime alone: it is the
        // time of the run, for either archive.
        if let Some(root) = tree.get_mut(".") {
            root.mtime = 0;
        }
        trees.push(tree);
    }
    assert_eq!(trees[0].len(), snapshot(&a.src).len(), "{tool}");
    assert_eq!(trees[0], trees[1], "{tool}: packed and plain differ");
}

#[test]
fn gnu_tar_extracts_the_packed_archive_to_the_source_tree() {
    let a = archives();
    same_tree_with(&a, "gnu", |archive, dir| {
        // As Go stretcher runs it.
        run_ok(
            Command::new("tar")
                .arg("xf")
                .arg(archive)
                .arg("-C")
                .arg(dir),
        );
    });
    assert_eq!(snapshot(&a.fx.path("gnu-packed")), snapshot(&a.src));
    // `tar t` lists the tree and nothing else: no index file in the tar.
    let list = |archive: &Path| {
        let out = Command::new("tar")
            .arg("tzf")
            .arg(archive)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let mut plain: Vec<String> = list(&a.plain).lines().map(String::from).collect();
    let packed: Vec<String> = list(&a.packed).lines().map(String::from).collect();
    plain.sort();
    let mut sorted = packed.clone();
    sorted.sort();
    assert_eq!(sorted, plain);
    assert_eq!(packed[0], "./");
}

#[test]
fn bsdtar_extracts_the_packed_archive_as_the_plain_one() {
    let a = archives();
    same_tree_with(&a, "bsdtar", |archive, dir| {
        run_ok(
            Command::new("bsdtar")
                .arg("-xpf")
                .arg(archive)
                .arg("-C")
                .arg(dir),
        );
    });
}

#[test]
fn python_tarfile_extracts_the_packed_archive_as_the_plain_one() {
    let a = archives();
    let script = "import sys, tarfile\n\
                  t = tarfile.open(sys.argv[1], 'r:gz')\n\
                  kw = {'filter': 'fully_trusted'} if hasattr(tarfile, 'fully_trusted_filter') else {}\n\
                  t.extractall(sys.argv[2], **kw)\n";
    same_tree_with(&a, "python", |archive, dir| {
        run_ok(
            Command::new("python3")
                .args(["-c", script])
                .arg(archive)
                .arg(dir),
        );
    });
}

/// The stdlib-only Go extractor (tests/go/untar.go), built once.
fn go_untar() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-untar");
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("untar");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go/untar.go");
        run_ok(
            Command::new("go")
                .arg("build")
                .arg("-o")
                .arg(&bin)
                .arg(&src)
                .env("GOCACHE", dir.join("cache"))
                .env("GOPATH", dir.join("gopath")),
        );
        bin
    })
}

#[test]
fn go_archive_tar_and_compress_gzip_extract_the_packed_archive_as_the_plain_one() {
    let a = archives();
    let untar = go_untar();
    same_tree_with(&a, "go", |archive, dir| {
        run_ok(Command::new(untar).arg(archive).arg(dir));
    });
}

#[test]
fn the_agent_deploys_the_packed_archive_as_the_plain_one_with_every_strategy() {
    let a = archives();
    for strategy in ["rsync", "mv", "native", "release"] {
        let mut trees = Vec::new();
        for archive in [&a.plain, &a.packed] {
            let fx = Fixture::new();
            let data = std::fs::read(archive).unwrap();
            fx.write("app.tar.gz", &data);
            let extra = format!("sync_strategy: {strategy}\n");
            let yaml = manifest_for(&fx, &fx.url("app.tar.gz"), &sha256(&data), &extra);
            fx.deploy(&yaml).ok();
            trees.push(snapshot(&fx.dest()));
            fx.assert_no_temp_files();
        }
        assert_eq!(trees[0], trees[1], "{strategy}: packed and plain differ");
        assert!(trees[1].contains_key("big.bin"), "{strategy}");
    }
}

#[test]
fn packing_is_deterministic_whatever_the_directory_order() {
    let a = archives();
    let again = a.fx.path("again.tar.gz");
    pack(&a.fx, &a.src, &again, &[]).ok();
    assert_eq!(
        std::fs::read(&again).unwrap(),
        std::fs::read(&a.packed).unwrap()
    );
    // A copy made in another order (reversed names first) packs the same.
    let copy = a.fx.path("copy");
    run_ok(Command::new("cp").arg("-a").arg(&a.src).arg(&copy));
    let from_copy = a.fx.path("copy.tar.gz");
    pack(&a.fx, &copy, &from_copy, &[]).ok();
    assert_eq!(
        std::fs::read(&from_copy).unwrap(),
        std::fs::read(&a.packed).unwrap()
    );
}

#[test]
fn pack_prints_the_sha256_and_a_manifest_snippet() {
    let a = archives();
    let out = pack(&a.fx, &a.src, &a.fx.path("p.tar.gz"), &[]);
    out.ok();
    let sum = sha256(&std::fs::read(a.fx.path("p.tar.gz")).unwrap());
    let stdout = out.stdout();
    assert!(stdout.contains(&format!("sha256: {sum}")), "{stdout}");
    assert!(stdout.contains(&format!("\nchecksum: {sum}\n")), "{stdout}");
    assert!(stdout.contains("src: "), "{stdout}");
    let mode = std::fs::metadata(a.fx.path("p.tar.gz")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o644, "as tar czf leaves it under umask 022");
}

/// The archive's gzip stream, inflated: the tar and nothing else.
fn inflate(archive: &Path) -> Vec<u8> {
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(std::fs::File::open(archive).unwrap())
        .read_to_end(&mut raw)
        .unwrap();
    raw
}

#[test]
fn the_index_lists_every_entry_and_the_member_holding_its_header() {
    let a = archives();
    let file = std::fs::File::open(&a.packed).unwrap();
    let index = stretcher::pack::read_index(&file).unwrap();
    let raw = inflate(&a.packed);
    assert_eq!(raw.len() % 512, 0);
    assert!(raw.ends_with(&[0; 1024]));
    // Each member inflates on its own; their tar bytes start where the
    // previous member's end.
    let bytes = std::fs::read(&a.packed).unwrap();
    let mut starts = Vec::new();
    let mut at = 0usize;
    for m in index.members() {
        let part = &bytes[m.offset as usize..m.end() as usize];
        assert_eq!(stretcher::pack::digest(part), m.digest);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(part)
            .read_to_end(&mut out)
            .unwrap();
        starts.push(at);
        at += out.len();
    }
    assert_eq!(at, raw.len(), "the members hold the whole tar");
    // Then the index members and the footer locating them.
    let footer_at = bytes.len() - stretcher::pack::Footer::LEN;
    let footer = stretcher::pack::Footer::parse(&bytes[footer_at..], bytes.len() as u64).unwrap();
    assert_eq!(footer.index_offset, index.data_end());
    let src = snapshot(&a.src);
    let mut tar = tar::Archive::new(&raw[..]);
    let mut headers = BTreeMap::new();
    for e in tar.entries().unwrap() {
        let e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
        headers.insert(name, e.raw_header_position() as usize);
    }
    let entries: Vec<_> = index.entries().collect();
    assert_eq!(entries.len() as u64, index.entry_count());
    assert_eq!(entries.len(), src.len(), "every path is listed");
    for e in &entries {
        let rel = String::from_utf8(e.path.clone()).unwrap();
        let key = if rel.is_empty() {
            ".".into()
        } else {
            rel.clone()
        };
        let node = &src[&key];
        let mut name = format!("./{rel}");
        if e.kind == stretcher::pack::EntryType::Dir && !rel.is_empty() {
            name.push('/');
        }
        let at = headers[&name];
        let member = starts.partition_point(|&s| s <= at) - 1;
        assert_eq!(member, e.member as usize, "{name}");
        assert_eq!((e.uid as u32, e.gid as u32), node.owner, "{name}");
        if node.kind != "symlink" {
            assert_eq!((e.mode, e.mtime), (node.mode, node.mtime), "{name}");
        }
        if node.kind == "file" && node.same_as == key {
            assert_eq!(e.size, node.data.len() as u64, "{name}");
        }
    }
    // The large file spans several members, starting a member of its own.
    let big = entries.iter().position(|e| e.path == b"big.bin").unwrap();
    let first = entries[big].member as usize;
    assert_eq!(starts[first], headers["./big.bin"]);
    assert!(entries[big + 1].member as usize >= first + 3);
}

#[test]
fn excluded_paths_are_left_out() {
    let a = archives();
    let out = a.fx.path("ex.tar.gz");
    pack(
        &a.fx,
        &a.src,
        &out,
        &[
            "--exclude",
            "*.txt",
            "--exclude",
            "/conf/",
            "--exclude",
            "a/b",
        ],
    )
    .ok();
    let dir = a.fx.path("ex");
    std::fs::create_dir(&dir).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&out).arg("-C").arg(&dir));
    let tree = snapshot(&dir);
    for gone in [
        "a.txt",
        "many/f001.txt",
        "conf",
        "conf/secret",
        "a/b",
        "a/b/c",
    ] {
        assert!(!tree.contains_key(gone), "{gone} packed");
    }
    for kept in ["a", "a-b/x", "bin/start", "many"] {
        assert!(tree.contains_key(kept), "{kept} left out");
    }
}

#[test]
fn pack_errors_name_the_path_and_leave_no_archive() {
    let fx = Fixture::new();
    let out = fx.path("out.tar.gz");
    let log = pack(&fx, &fx.path("missing"), &out, &[]).failed();
    assert!(
        log.contains(&fx.path("missing").display().to_string()),
        "{log}"
    );
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(!out.exists());
    let log = pack(&fx, &fx.path("tmp"), &out, &["--member-size", "10"]).failed();
    assert!(log.contains("--member-size"), "{log}");
    // Unreadable to the deploy user: the error names the file.
    let src = fx.path("src");
    std::fs::create_dir(&src).unwrap();
    fx.write("src/ok", "ok");
    fx.write("src/locked", "secret");
    chmod(&fx.path("src/locked"), 0o000);
    fx.chown_to_nobody();
    let run = fx.run_program(
        if is_root() { "setpriv" } else { common::bin() },
        "",
        &if is_root() {
            vec![
                "--reuid=nobody",
                "--regid=nogroup",
                "--clear-groups",
                "--",
                common::bin(),
                "pack",
            ]
        } else {
            vec!["pack"]
        }
        .into_iter()
        .chain([src.to_str().unwrap(), "-o", out.to_str().unwrap()])
        .collect::<Vec<_>>(),
        &[],
    );
    let log = run.failed();
    assert!(log.contains("src/locked"), "{log}");
    let left: Vec<_> = std::fs::read_dir(fx.root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("out.tar.gz"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_tree_packed_as_nobody_extracts_as_the_plain_tar() {
    let fx = Fixture::new();
    let src = fx.path("src");
    std::fs::create_dir(&src).unwrap();
    fx.write("src/bin/run", "#!/bin/sh\n");
    fx.write("src/index.html", "<p>hi</p>\n");
    fx.chown_to_nobody();
    let out = fx.path("app.tar.gz");
    fx.run_unprivileged(
        "",
        &["pack", src.to_str().unwrap(), "-o", out.to_str().unwrap()],
        &[],
    )
    .ok();
    let (a, b) = (fx.path("a"), fx.path("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    run_ok(Command::new("tar").arg("xf").arg(&out).arg("-C").arg(&a));
    run_ok(
        Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&b),
    );
    assert_eq!(snapshot(&a), snapshot(&b));
}
