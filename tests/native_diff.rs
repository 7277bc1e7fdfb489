//! `sync_strategy: native` against the real rsync strategy, on generated
//! cases: a random tree deployed with rsync (plus files only dest has),
//! then a random change of it deployed with `rsync` into one copy and with
//! `native` into another. The two dests must be identical: paths, types,
//! bytes, modes, owners, mtimes, symlink targets and link counts. When
//! rsync fails on a case, native must fail too.
//!
//! `DIFF_CASES=5000 cargo test --test native_diff` runs more cases;
//! `DIFF_SEED=N` starts elsewhere; `DIFF_KEEP=1` keeps the cases' files
//! (archives, starting dest, both results) and prints where.
//!
//! Every fourth case also packs v2's tree with `stretcher pack`: native
//! and release then place it by its index (inflating only what dest
//! lacks) and must still leave what rsync leaves.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use stretcher::archive::MaxSize;
use stretcher::sync::{self, Job, Settings};
use tokio_util::sync::CancellationToken;

const DIR_NAMES: &[&str] = &["a", "b", "c", "d.d", "e", "cache"];
const FILE_NAMES: &[&str] = &[
    "f1", "f2", "g.log", "h.tmp", "x", "extra", "s p", "fx", "a", "b",
];
const LINK_TARGETS: &[&str] = &["f1", "../x", "a/b", "/etc/passwd", "nowhere", ".", "b"];
const PATTERNS: &[&str] = &[
    "*.log",
    "/a",
    "b/",
    "a/*/f1",
    "**/x",
    "c/**",
    "[ab]",
    "f?",
    "- h.tmp",
    "/c/d.d/",
    "*.tmp",
    "e/",
    "d.d/**/f2",
    "extra",
    "/cache/",
    "**/b/f2",
    "*/f?",
    "[!f]*",
    "cache",
];
const OWNERS: &[(u64, u64)] = &[(0, 0), (1000, 1000), (65534, 65534), (1, 2)];

#[derive(Clone, Debug)]
enum Node {
    Dir {
        mode: u32,
        meta: Meta,
    },
    File {
        data: Vec<u8>,
        mode: u32,
        meta: Meta,
    },
    Symlink {
        target: String,
        meta: Meta,
    },
    /// A hard link to the file at this path.
    Link(String),
}

#[derive(Clone, Copy, Debug)]
struct Meta {
    mtime: (u64, u32),
    owner: (u64, u64),
}

/// A tree: path → node; every parent of a path is a `Dir`.
type Model = BTreeMap<String, Node>;

struct Gen {
    rng: StdRng,
    root: bool,
}

impl Gen {
    fn meta(&mut self) -> Meta {
        let secs = 1_600_000_000 + self.rng.random_range(0..1000);
        let nanos = if self.rng.random_bool(0.5) {
            self.rng.random_range(0..1_000_000_000)
        } else {
            0
        };
        let owner = if self.root {
            *OWNERS.choose(&mut self.rng).unwrap()
        } else {
            (0, 0)
        };
        Meta {
            mtime: (secs, nanos),
            owner,
        }
    }

    fn data(&mut self, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| self.rng.random_range(b'a'..=b'z'))
            .collect()
    }

    fn file(&mut self) -> Node {
        let len = self.rng.random_range(0..40);
        let modes: &[u32] = if self.root {
            &[0o644, 0o600, 0o755, 0o640, 0o444, 0o4755, 0o2750]
        } else {
            &[0o644, 0o600, 0o755, 0o640, 0o444]
        };
        Node::File {
            data: self.data(len),
            mode: *modes.choose(&mut self.rng).unwrap(),
            meta: self.meta(),
        }
    }

    fn dir(&mut self) -> Node {
        let modes: &[u32] = if self.root {
            &[0o755, 0o750, 0o700, 0o555, 0o2775, 0o1777]
        } else {
            &[0o755, 0o750, 0o700, 0o775]
        };
        Node::Dir {
            mode: *modes.choose(&mut self.rng).unwrap(),
            meta: self.meta(),
        }
    }

    fn symlink(&mut self) -> Node {
        Node::Symlink {
            target: LINK_TARGETS.choose(&mut self.rng).unwrap().to_string(),
            meta: self.meta(),
        }
    }

    /// A path for a new entry: under an existing dir (or the root), with a
    /// name not taken yet.
    fn free_path(&mut self, model: &Model, dir: bool) -> Option<String> {
        let dirs: Vec<String> = model
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir { .. }))
            .map(|(p, _)| p.clone())
            .collect();
        for _ in 0..10 {
            let parent = if dirs.is_empty() || self.rng.random_bool(0.3) {
                String::new()
            } else {
                dirs.choose(&mut self.rng).unwrap().clone()
            };
            let names = if dir { DIR_NAMES } else { FILE_NAMES };
            let name = names.choose(&mut self.rng).unwrap();
            let path = if parent.is_empty() {
                name.to_string()
            } else {
                format!("{parent}/{name}")
            };
            if !model.contains_key(&path) && path.matches('/').count() < 4 {
                return Some(path);
            }
        }
        None
    }

    fn add(&mut self, model: &mut Model) {
        let roll = self.rng.random_range(0..100);
        let files: Vec<String> = model
            .iter()
            .filter(|(_, n)| matches!(n, Node::File { .. }))
            .map(|(p, _)| p.clone())
            .collect();
        let is_dir = roll < 25;
        let Some(path) = self.free_path(model, is_dir) else {
            return;
        };
        let node = match roll {
            0..=24 => self.dir(),
            25..=74 => self.file(),
            75..=89 => self.symlink(),
            _ if !files.is_empty() => Node::Link(files.choose(&mut self.rng).unwrap().clone()),
            _ => self.file(),
        };
        model.insert(path, node);
    }

    fn tree(&mut self) -> Model {
        let mut model = Model::new();
        for _ in 0..self.rng.random_range(3..30) {
            self.add(&mut model);
        }
        model
    }

    /// One random change to `model`.
    fn change(&mut self, model: &mut Model) {
        let paths: Vec<String> = model.keys().cloned().collect();
        let Some(path) = paths.choose(&mut self.rng).cloned() else {
            return self.add(model);
        };
        let mtime_bump = self.rng.random_range(1..100);
        let new_meta = self.meta();
        let replacement = match self.rng.random_range(0..9) {
            0 | 1 => return self.add(model),
            2 => {
                remove(model, &path);
                return;
            }
            3 => self.file(),
            4 => self.dir(),
            5 => self.symlink(),
            _ => {
                let Some(node) = model.get_mut(&path) else {
                    return;
                };
                match node {
                    Node::File { data, mode, meta } => match self.rng.random_range(0..6) {
                        0 => {
                            // Same size, new content, mtime moved on.
                            let len = data.len();
                            *data = (0..len)
                                .map(|_| self.rng.random_range(b'A'..=b'Z'))
                                .collect();
                            meta.mtime.0 += mtime_bump;
                        }
                        1 => *mode ^= 0o044,
                        2 => meta.mtime.1 = (meta.mtime.1 + 1) % 1_000_000_000,
                        3 => meta.owner = new_meta.owner,
                        4 => {
                            // Same size and mtime, new content: the quick
                            // check leaves dest's bytes; links to it must
                            // still get the archive's.
                            let len = data.len();
                            *data = (0..len)
                                .map(|_| self.rng.random_range(b'0'..=b'9'))
                                .collect();
                        }
                        _ => {
                            data.push(b'!');
                        }
                    },
                    Node::Dir { mode, meta } => {
                        *mode ^= 0o005;
                        meta.mtime.0 += mtime_bump;
                    }
                    Node::Symlink { target, meta } => {
                        if self.rng.random_bool(0.5) {
                            target.push('2');
                        } else {
                            meta.mtime.0 += mtime_bump;
                        }
                    }
                    Node::Link(_) => {}
                }
                return;
            }
        };
        // A type swap (or a new node of the same type).
        remove(model, &path);
        model.insert(path, replacement);
    }
}

/// Removes `path` and everything below it; hard links to removed files
/// become files of their own.
fn remove(model: &mut Model, path: &str) {
    let prefix = format!("{path}/");
    model.retain(|p, _| p != path && !p.starts_with(&prefix));
    fix_links(model);
}

/// Makes every hard link point at a file that exists.
fn fix_links(model: &mut Model) {
    let files: BTreeSet<String> = model
        .iter()
        .filter(|(_, n)| matches!(n, Node::File { .. }))
        .map(|(p, _)| p.clone())
        .collect();
    for node in model.values_mut() {
        if let Node::Link(target) = node {
            if !files.contains(target) {
                *node = Node::File {
                    data: b"was a link".to_vec(),
                    mode: 0o644,
                    meta: Meta {
                        mtime: (1_600_000_000, 0),
                        owner: (0, 0),
                    },
                };
            }
        }
    }
}

/// A tar of `model` in random order: hard links after their targets,
/// some directories left implied, sometimes a `./` member, and sometimes
/// an earlier member at a path (a decoy) that the path's own member then
/// replaces; `decoy_dirs` puts decoys before directories too (whose
/// members may then be lost, as with tar).
fn archive(g: &mut Gen, model: &Model, decoy_dirs: bool) -> Archive {
    let mut members: Vec<(String, Node)> = Vec::new();
    let mut links = Vec::new();
    for (path, node) in model {
        match node {
            Node::Link(_) => links.push((path.clone(), node.clone())),
            Node::Dir { .. } if g.rng.random_bool(0.2) => {}
            _ => members.push((path.clone(), node.clone())),
        }
    }
    members.shuffle(&mut g.rng);
    links.shuffle(&mut g.rng);
    let mut ordered = Vec::new();
    let mut repeated = BTreeMap::new();
    for (path, node) in members {
        let is_dir = matches!(node, Node::Dir { .. });
        if (decoy_dirs || !is_dir) && g.rng.random_bool(0.1) {
            if let Node::File { data, .. } = &node {
                repeated.insert(path.clone(), data.clone());
            }
            let decoy = match g.rng.random_range(usize::from(is_dir)..3) {
                0 => g.dir(),
                1 => g.symlink(),
                _ => {
                    let mut f = g.file();
                    if let Node::File { meta, .. } = &mut f {
                        meta.mtime.0 = 1_500_000_000;
                    }
                    f
                }
            };
            ordered.push((path.clone(), decoy));
        }
        ordered.push((path, node));
    }
    ordered.extend(links);
    if g.rng.random_bool(0.5) {
        let root = g.dir();
        let at = g.rng.random_range(0..=ordered.len());
        ordered.insert(at, (String::new(), root));
    }
    let mut explicit = BTreeSet::new();
    for (path, node) in &ordered {
        if matches!(node, Node::Dir { .. }) {
            explicit.insert(path.clone());
        } else {
            // A non-directory takes the place of everything below it too.
            let below = format!("{path}/");
            explicit.retain(|p| p != path && !p.starts_with(&below));
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in &ordered {
        append(&mut b, path, node);
    }
    Archive {
        tar: b.into_inner().unwrap(),
        explicit,
        repeated,
    }
}

/// A generated archive.
struct Archive {
    tar: Vec<u8>,
    /// The paths whose last member is a directory ("" for `./`).
    explicit: BTreeSet<String>,
    /// The files with a decoy before them: their bytes.
    repeated: BTreeMap<String, Vec<u8>>,
}

fn append(b: &mut tar::Builder<Vec<u8>>, path: &str, node: &Node) {
    let mut h = tar::Header::new_ustar();
    let meta = match node {
        Node::Dir { meta, .. } | Node::File { meta, .. } | Node::Symlink { meta, .. } => *meta,
        Node::Link(_) => Meta {
            mtime: (1_600_000_000, 0),
            owner: (0, 0),
        },
    };
    h.set_mtime(meta.mtime.0);
    h.set_uid(meta.owner.0);
    h.set_gid(meta.owner.1);
    if meta.mtime.1 != 0 {
        let mtime = format!("{}.{:09}", meta.mtime.0, meta.mtime.1);
        b.append_pax_extensions([("mtime", mtime.as_bytes())])
            .unwrap();
    }
    let name = if path.is_empty() { "." } else { path };
    match node {
        Node::Dir { mode, .. } => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(*mode);
            h.set_size(0);
            b.append_data(&mut h, format!("{name}/"), &[][..]).unwrap();
        }
        Node::File { data, mode, .. } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        Node::Symlink { target, .. } => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
        Node::Link(target) => {
            h.set_entry_type(tar::EntryType::Link);
            h.set_mode(0o644);
            h.set_size(0);
            b.append_link(&mut h, name, target).unwrap();
        }
    }
}

/// What the comparison sees of one path.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    owner: (u32, u32),
    /// Seconds and nanoseconds; `None` for a directory the archive only
    /// implies (rsync copies the temp tree's fresh mtime there).
    mtime: Option<(i64, i64)>,
    bytes: Vec<u8>,
    nlink: u64,
}

fn snapshot(dir: &Path, explicit: &BTreeSet<String>) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let path = if rel.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(&rel)
        };
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mtime = Some((meta.mtime(), meta.mtime_nsec()));
        let (kind, mtime, bytes) = if meta.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let name = e.unwrap().file_name().into_string().unwrap();
                stack.push(if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                });
            }
            ("dir", mtime.filter(|_| explicit.contains(&rel)), vec![])
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).unwrap();
            ("symlink", mtime, target.display().to_string().into_bytes())
        } else {
            ("file", mtime, std::fs::read(&path).unwrap())
        };
        let seen = Seen {
            kind,
            mode: if kind == "symlink" {
                0
            } else {
                meta.mode() & 0o7777
            },
            owner: (meta.uid(), meta.gid()),
            mtime,
            bytes,
            nlink: if kind == "dir" { 0 } else { meta.nlink() },
        };
        out.insert(rel, seen);
    }
    out
}

fn place(
    strategy: &str,
    archive: &Path,
    dest: &Path,
    settings: &Settings,
    dest_mode: u32,
) -> Result<(), String> {
    let strategy = sync::from_name(strategy, settings.clone()).map_err(|e| format!("{e:#}"))?;
    let cancel = CancellationToken::new();
    // As a deploy holds it: in a temp file of its own.
    let mut temp = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    std::io::copy(
        &mut std::fs::File::open(archive).map_err(|e| e.to_string())?,
        &mut temp,
    )
    .map_err(|e| e.to_string())?;
    let archive = &stretcher::archive::Archive::new(temp).map_err(|e| e.to_string())?;
    let job = Job {
        archive,
        src: "file:///case.tar",
        checksum: "00000000",
        dest,
        dest_mode,
        max_size: MaxSize::Unlimited,
        cancel: &cancel,
    };
    strategy.place(&job).map(drop).map_err(|e| e.to_string())
}

fn cp_a(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Runs one case; `Err` describes a difference.
fn case(seed: u64, work: &Path) -> Result<(), String> {
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        root: common_is_root(),
    };
    let dir = work.join(format!("case{seed}"));
    std::fs::create_dir(&dir).unwrap();
    let dest_mode = *[0o755u32, 0o750, 0o700].choose(&mut g.rng).unwrap();

    // The starting dest: a tree deployed with rsync, plus files of its own.
    let v1 = g.tree();
    let Archive {
        tar: tar1,
        explicit: explicit1,
        ..
    } = archive(&mut g, &v1, false);
    let base = dir.join("base");
    std::fs::write(dir.join("v1.tar"), &tar1).unwrap();
    place(
        "rsync",
        &dir.join("v1.tar"),
        &base,
        &Settings::default(),
        dest_mode,
    )
    .map_err(|e| format!("deploying v1 failed: {e}"))?;
    for _ in 0..g.rng.random_range(0..4) {
        let d = DIR_NAMES.choose(&mut g.rng).unwrap();
        let f = FILE_NAMES.choose(&mut g.rng).unwrap();
        let at = base.join(d);
        let is_dir = std::fs::symlink_metadata(&at).map(|m| m.is_dir());
        if is_dir.as_ref().is_ok_and(|d| *d) && std::fs::symlink_metadata(at.join(f)).is_err() {
            std::fs::write(at.join(f), b"dest only").unwrap();
        } else if is_dir.is_err() {
            std::fs::create_dir(&at).unwrap();
            std::fs::write(at.join(f), b"dest only").unwrap();
        }
    }

    // The change, and what to exclude.
    let mut v2 = v1.clone();
    for _ in 0..g.rng.random_range(1..8) {
        g.change(&mut v2);
    }
    fix_links(&mut v2);
    let n = g.rng.random_range(0..4);
    let mut settings = Settings::default();
    for _ in 0..n {
        settings
            .excludes
            .push(PATTERNS.choose(&mut g.rng).unwrap().to_string());
    }
    if g.rng.random_bool(0.15) {
        let lines: Vec<&str> = (0..2)
            .map(|_| *PATTERNS.choose(&mut g.rng).unwrap())
            .collect();
        v2.insert(
            "exclude.txt".into(),
            Node::File {
                data: format!("# generated\n{}\n", lines.join("\n")).into_bytes(),
                mode: 0o644,
                meta: g.meta(),
            },
        );
        settings.exclude_from = "exclude.txt".into();
    }
    let Archive {
        tar: tar2,
        explicit,
        repeated,
    } = archive(&mut g, &v2, true);
    let tar2_path = dir.join("v2.tar");
    std::fs::write(&tar2_path, &tar2).unwrap();

    let (with_rsync, with_native) = (dir.join("rsync"), dir.join("native"));
    cp_a(&base, &with_rsync);
    cp_a(&base, &with_native);
    let by_rsync = place("rsync", &tar2_path, &with_rsync, &settings, dest_mode);
    let by_native = place("native", &tar2_path, &with_native, &settings, dest_mode);
    let describe = format!(
        "seed {seed}, excludes {:?} from {:?}",
        settings.excludes, settings.exclude_from
    );
    let excluding = !(settings.excludes.is_empty() && settings.exclude_from.is_empty());
    let outcome = Outcome {
        by_rsync,
        by_native,
        with_rsync,
        with_native,
        excluding,
        repeated,
    };
    outcome.compare(&explicit, &describe)?;

    // A first deploy into a missing dest: native renames its extraction
    // into place unless something is excluded or hard-linked; rsync is
    // made to copy (a pattern that matches nothing keeps it from renaming).
    let (with_rsync, with_native) = (dir.join("fresh-rsync"), dir.join("fresh-native"));
    let mut never = settings.clone();
    never.excludes.push("never\u{1}matches".into());
    let by_rsync = place("rsync", &tar2_path, &with_rsync, &never, dest_mode);
    let by_native = place("native", &tar2_path, &with_native, &settings, dest_mode);
    let fresh = (by_rsync.clone(), with_rsync.clone());
    let outcome = Outcome {
        by_rsync,
        by_native,
        with_rsync,
        with_native,
        excluding,
        repeated: BTreeMap::new(),
    };
    outcome.compare(&explicit, &format!("{describe}, into a missing dest"))?;
    release_case(
        &dir,
        &tar2_path,
        &settings,
        dest_mode,
        (&explicit1, &explicit),
        (fresh.0, &fresh.1),
    )
    .map_err(|e| format!("{describe}, release: {e}"))?;
    if seed.is_multiple_of(4) {
        packed_case(&mut g, &dir, &base, &settings, dest_mode, &explicit1)
            .map_err(|e| format!("{describe}, packed: {e}"))?;
    }
    if std::env::var_os("DIFF_KEEP").is_none() {
        crate_remove(&dir);
    }
    Ok(())
}

/// The same change as a packed archive: v2's tree (as extracted) packed by
/// `stretcher pack` with a random member size, then placed into copies
/// of the same dest by rsync, and by native and release, which read it by
/// its index and inflate only the members holding what dest lacks.
fn packed_case(
    g: &mut Gen,
    dir: &Path,
    base: &Path,
    settings: &Settings,
    dest_mode: u32,
    explicit1: &BTreeSet<String>,
) -> Result<(), String> {
    let dir = dir.join("packed");
    std::fs::create_dir(&dir).unwrap();
    std::fs::hard_link(dir.with_file_name("v1.tar"), dir.join("v1.tar")).unwrap();
    let tree = dir.join("tree");
    if place(
        "mv",
        &dir.with_file_name("v2.tar"),
        &tree,
        &Settings::default(),
        dest_mode,
    )
    .is_err()
    {
        return Ok(()); // no tree to pack
    }
    // Directories the archive only implied got the time of extraction:
    // an old one instead, so no deploy happens in the same second.
    for (rel, is_dir) in walk(&tree).into_iter().chain([(String::new(), true)]) {
        let path = tree.join(rel);
        if is_dir && std::fs::metadata(&path).unwrap().mtime() > 1_700_000_000 {
            let t = filetime::FileTime::from_unix_time(1_600_000_777, 0);
            filetime::set_file_mtime(&path, t).unwrap();
        }
    }
    let member_size = *[512usize, 4096, 64 << 10].choose(&mut g.rng).unwrap();
    let packed = dir.join("v2.tar.gz");
    let opts = stretcher::pack::Options {
        member_size,
        excludes: sync::Excludes::new(&[], "stretcher pack").unwrap(),
    };
    stretcher::pack::pack(&tree, &packed, &opts).map_err(|e| format!("pack: {e:#}"))?;
    let mut explicit = BTreeSet::from([String::new()]);
    for entry in walk(&tree) {
        if entry.1 {
            explicit.insert(entry.0);
        }
    }
    let (with_rsync, with_native) = (dir.join("rsync"), dir.join("native"));
    cp_a(base, &with_rsync);
    cp_a(base, &with_native);
    let excluding = !(settings.excludes.is_empty() && settings.exclude_from.is_empty());
    let outcome = Outcome {
        by_rsync: place("rsync", &packed, &with_rsync, settings, dest_mode),
        by_native: place("native", &packed, &with_native, settings, dest_mode),
        with_rsync,
        with_native,
        excluding,
        repeated: BTreeMap::new(),
    };
    outcome.compare(&explicit, &format!("member size {member_size}"))?;
    let fresh_dir = dir.join("fresh-rsync");
    let mut never = settings.clone();
    never.excludes.push("never\u{1}matches".into());
    let fresh = place("rsync", &packed, &fresh_dir, &never, dest_mode);
    release_case(
        &dir,
        &packed,
        settings,
        dest_mode,
        (explicit1, &explicit),
        (fresh, &fresh_dir),
    )
    .map_err(|e| format!("member size {member_size}, release: {e}"))?;
    PACKED_CASES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Packed cases that were compared (not skipped for want of a tree).
static PACKED_CASES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Every path below `root` (relative) and whether it is a directory.
fn walk(root: &Path) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let is_dir = e.file_type().unwrap().is_dir();
            if is_dir {
                stack.push(path.clone());
            }
            out.push((path, is_dir));
        }
    }
    out
}

/// `sync_strategy: release`: v1 then v2, each a new release beside
/// `current`. v2's release must be what real rsync makes of the extracted
/// tree in an empty dir with `--link-dest` at v1's release (so unchanged
/// files are shared, as rsync's quick check judges them), and building it
/// must change nothing in v1's release. `fresh` is rsync's result for v2
/// into a missing dest: the two fail on the same archives.
fn release_case(
    dir: &Path,
    v2: &Path,
    settings: &Settings,
    dest_mode: u32,
    explicit: (&BTreeSet<String>, &BTreeSet<String>),
    fresh: (Result<(), String>, &Path),
) -> Result<(), String> {
    let (fresh, fresh_dir) = fresh;
    let current = dir.join("rel").join("current");
    std::fs::create_dir(dir.join("rel")).unwrap();
    let v1 = dir.join("v1.tar");
    place("release", &v1, &current, &Settings::default(), dest_mode)
        .map_err(|e| format!("deploying v1 failed: {e}"))?;
    let v1_release = std::fs::canonicalize(&current).unwrap();
    let unlinked = |dir: &Path, explicit: &BTreeSet<String>| {
        let mut seen = snapshot(dir, explicit);
        seen.values_mut().for_each(|s| s.nlink = 0);
        seen
    };
    let before = unlinked(&v1_release, explicit.0);
    let reference = dir.join("link-dest");
    if fresh.is_ok() {
        link_dest(dir, v2, settings, dest_mode, &v1_release, &reference)?;
    }
    let by_release = place("release", v2, &current, settings, dest_mode);
    if unlinked(&v1_release, explicit.0) != before {
        return Err("building v2 changed v1's release".into());
    }
    let excluding = !(settings.excludes.is_empty() && settings.exclude_from.is_empty());
    if let Some(settled) = settled_by_errors(&fresh, &by_release, excluding, "release") {
        return settled;
    }
    let live = std::fs::canonicalize(&current).unwrap();
    if live == v1_release {
        return Err("dest still points to v1".into());
    }
    // rsync --link-dest hard links symlinks too; release makes new
    // ones. Where release writes a file rsync takes from the older
    // release (its mtime matches to the second only, or only its
    // mode or owner differ: rsync links or copies the older bytes),
    // the file must be the member, as rsync writes it into a
    // missing dest.
    let files_only = |dir: &Path| {
        let mut seen = snapshot(dir, explicit.1);
        for s in seen.values_mut().filter(|s| s.kind == "symlink") {
            s.nlink = 0;
        }
        seen
    };
    let (a, b) = (files_only(&reference), files_only(&live));
    let fresh = files_only(fresh_dir);
    let diffs = differences(&a, &b, "release", |k, seen| {
        (seen.nlink == 1 || seen.kind == "symlink") && fresh.get(k) == Some(seen)
    });
    if !diffs.is_empty() {
        return Err(format!("trees differ\n{}", diffs.join("\n")));
    }
    Ok(())
}

/// `Some` when the two deploys' results settle the comparison before their
/// trees do: both failed, or only rsync did, on a hard link to a member
/// that is excluded (which native never reads), or only one failed.
fn settled_by_errors(
    rsync: &Result<(), String>,
    other: &Result<(), String>,
    excluding: bool,
    name: &str,
) -> Option<Result<(), String>> {
    match (rsync, other) {
        (Ok(()), Ok(())) => None,
        (Err(_), Err(_)) => Some(Ok(())),
        (Err(e), Ok(())) if e.contains("hard link") && excluding => Some(Ok(())),
        (rsync, other) => Some(Err(format!("rsync {rsync:?}, {name} {other:?}"))),
    }
}

/// The paths where `b` (`name`'s tree) differs from rsync's `a`, described,
/// but those `excused` (given the path and `b`'s entry).
fn differences(
    a: &BTreeMap<String, Seen>,
    b: &BTreeMap<String, Seen>,
    name: &str,
    excused: impl Fn(&String, &Seen) -> bool,
) -> Vec<String> {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .filter(|k| !b.get(*k).is_some_and(|seen| excused(k, seen)))
        .map(|k| {
            format!(
                "  {k:?}\n    rsync: {:?}\n    {name}: {:?}",
                a.get(k),
                b.get(k)
            )
        })
        .collect()
}

/// `rsync -a --delete --link-dest=<link_dest>` of the archive `tar`,
/// extracted, into the new dir `to`, with the strategy's excludes.
fn link_dest(
    dir: &Path,
    tar: &Path,
    settings: &Settings,
    dest_mode: u32,
    link_dest: &Path,
    to: &Path,
) -> Result<(), String> {
    let tree = dir.join("v2-tree");
    place("mv", tar, &tree, &Settings::default(), dest_mode)
        .map_err(|e| format!("extracting v2 failed: {e}"))?;
    let mut rsync = Command::new("rsync");
    rsync.args(["-a", "--delete"]);
    rsync.arg(format!("--link-dest={}", link_dest.display()));
    if !settings.exclude_from.is_empty() {
        rsync.arg(format!(
            "--exclude-from={}",
            tree.join(&settings.exclude_from).display()
        ));
    }
    for x in &settings.excludes {
        rsync.arg(format!("--exclude={x}"));
    }
    let out = rsync
        .arg(format!("{}/", tree.display()))
        .arg(format!("{}/", to.display()))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(format!(
            "rsync --link-dest failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// Both strategies' results on one case.
struct Outcome {
    by_rsync: Result<(), String>,
    by_native: Result<(), String>,
    with_rsync: std::path::PathBuf,
    with_native: std::path::PathBuf,
    /// Whether anything was excluded.
    excluding: bool,
    /// The files the archive holds more than once: their last member's
    /// bytes.
    repeated: BTreeMap<String, Vec<u8>>,
}

impl Outcome {
    /// `Err` describes how native's result differs from rsync's.
    fn compare(&self, explicit: &BTreeSet<String>, describe: &str) -> Result<(), String> {
        let settled = settled_by_errors(&self.by_rsync, &self.by_native, self.excluding, "native");
        if let Some(settled) = settled {
            return settled.map_err(|e| format!("{describe}: {e}"));
        }
        let a = snapshot(&self.with_rsync, explicit);
        let b = snapshot(&self.with_native, explicit);
        // A file whose last member passes rsync's quick check against
        // dest's file, though an earlier member at its path already
        // replaced that: native kept no copy of dest's bytes (SPEC 8.1:
        // an old file goes as its replacement lands), so it has the
        // member's bytes where rsync keeps dest's; all else is the same.
        let excused = |k: &String, seen: &Seen| {
            let by_rsync = a.get(k);
            self.repeated.get(k) == Some(&seen.bytes)
                && by_rsync.is_some_and(|r| {
                    (r.kind, r.mode, r.owner, r.mtime, r.nlink)
                        == (seen.kind, seen.mode, seen.owner, seen.mtime, seen.nlink)
                })
        };
        let diffs = differences(&a, &b, "native", excused);
        if !diffs.is_empty() {
            return Err(format!("{describe}: dests differ\n{}", diffs.join("\n")));
        }
        if let Some(temp) = leftover_temp(&self.with_native) {
            return Err(format!("{describe}: temp name left behind: {temp}"));
        }
        let beside = self.with_native.parent().map(std::fs::read_dir);
        let scratch = beside.into_iter().flatten().flatten().flatten().find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".stretcher_src")
        });
        match scratch {
            Some(e) => Err(format!("{describe}: left {:?}", e.path())),
            None => Ok(()),
        }
    }
}

fn leftover_temp(dir: &Path) -> Option<String> {
    let out = Command::new("find")
        .arg(dir)
        .args(["-name", ".*.??????"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn crate_remove(dir: &Path) {
    let _ = Command::new("chmod")
        .arg("-R")
        .arg("u+rwx")
        .arg(dir)
        .status();
    let _ = std::fs::remove_dir_all(dir);
}

fn common_is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn native_leaves_what_rsync_leaves() {
    let cases: u64 = std::env::var("DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let work = tempfile::tempdir().unwrap();
    let work = if std::env::var_os("DIFF_KEEP").is_some() {
        let kept = work.keep();
        eprintln!("cases are kept in {}", kept.display());
        kept
    } else {
        work.path().to_path_buf()
    };
    let mut failures = Vec::new();
    for seed in first..first + cases {
        if let Err(e) = case(seed, &work) {
            failures.push(e);
            if failures.len() >= 5 {
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} case(s) differ:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    let packed = PACKED_CASES.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        cases < 8 || packed * 8 >= cases,
        "only {packed} packed cases of {cases} compared"
    );
}
