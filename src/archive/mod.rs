//! Format sniffing and safe extraction, in process: tar, optionally
//! compressed with gzip, bzip2, xz or zstd (chosen by magic bytes, as GNU
//! `tar xf` does; multi-member streams included).
//!
//! Safety, as GNU tar or stricter: a leading `/` is stripped; a member or a
//! hard link target with `..` fails the extraction, and so does a member that
//! would land outside the directory through a symlink. As root, owners and
//! modes are kept; otherwise the umask applies. Mtimes of files and
//! directories are kept, since rsync's quick check depends on them.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use std::collections::HashSet;

use anyhow::{bail, Context, Result};

mod writers;

use writers::{FileJob, Writers};

const READ_BUFFER: usize = 1 << 20;

/// Members up to this size are buffered and written by the writer threads;
/// larger ones are streamed to disk by the extracting thread.
const BUFFERED_MAX: u64 = 1 << 20;

/// Writer threads: creating files is latency-bound, so a few help even on
/// two cores.
const WRITER_THREADS: usize = 2;

/// Compression detected from the first bytes of an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A bare tar stream.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// bzip2 (`BZh`).
    Bzip2,
    /// xz (`fd 37 7a 58 5a 00`).
    Xz,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// Identifies the compression from an archive's leading bytes.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(b"BZh") {
            Self::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Self::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }
}

/// Opens `path` as a decompressed tar stream.
fn open(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut head = [0u8; 6];
    let n = read_head(&mut file, &mut head)?;
    file.seek(SeekFrom::Start(0))?;
    let file = BufReader::with_capacity(READ_BUFFER, file);
    // The tar reader asks for 512-byte headers and small members: buffer the
    // decompressed side too, so each small read is a copy, not a call into
    // the decompressor.
    let buffered =
        |r: Box<dyn Read>| -> Box<dyn Read> { Box::new(BufReader::with_capacity(READ_BUFFER, r)) };
    Ok(match Compression::sniff(&head[..n]) {
        Compression::None => Box::new(file),
        Compression::Gzip => buffered(Box::new(flate2::bufread::MultiGzDecoder::new(file))),
        Compression::Bzip2 => buffered(Box::new(bzip2::bufread::MultiBzDecoder::new(file))),
        Compression::Xz => buffered(Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(
            file,
        ))),
        Compression::Zstd => buffered(Box::new(zstd::stream::read::Decoder::with_buffer(file)?)),
    })
}

fn read_head(file: &mut File, head: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A directory's metadata, applied after all members are written so that
/// writing into it neither fails (read-only modes) nor bumps its mtime.
struct DirMeta {
    path: PathBuf,
    mode: u32,
    mtime: u64,
    owner: Option<(u32, u32)>,
}

/// Extracts the archive at `archive` into the existing directory `dir`.
pub fn extract(
    archive: &Path,
    dir: &Path,
    _name: &str,
    _cancel: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    let root = is_root();
    let mask = if root { 0 } else { umask() };
    let mut tar = tar::Archive::new(open(archive)?);
    tar.set_preserve_permissions(root);
    tar.set_preserve_ownerships(root);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(true);
    tar.set_mask(mask);
    let unreadable = || format!("unreadable archive {}", archive.display());
    let mut state = Extraction {
        dir,
        real_dir: dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?,
        mask,
        root,
        dirs: Vec::new(),
        made: HashSet::new(),
        symlinks: HashSet::new(),
        hard_links: Vec::new(),
    };
    let writers = Writers::new(WRITER_THREADS);
    let result = tar.entries().with_context(unreadable).and_then(|entries| {
        for entry in entries {
            state.member(entry.with_context(unreadable)?, &writers)?;
        }
        Ok(())
    });
    // Always wait for the writers, so nothing writes after we return.
    let written = writers.finish();
    result?;
    written?;
    for (raw, rel, target) in &state.hard_links {
        state.hard_link(raw, rel, target)?;
    }
    for meta in state.dirs.iter().rev() {
        apply_dir_meta(meta)?;
    }
    Ok(())
}

/// What one extraction has done so far.
struct Extraction<'a> {
    dir: &'a Path,
    /// `dir` with symlinks resolved, for [`Extraction::check_inside`].
    real_dir: PathBuf,
    mask: u32,
    root: bool,
    /// Directory metadata, applied last.
    dirs: Vec<DirMeta>,
    /// Directories known to exist (absolute paths).
    made: HashSet<PathBuf>,
    /// Symlinks extracted so far (relative paths).
    symlinks: HashSet<PathBuf>,
    /// Hard links `(member, link, target)`, made after every file is written.
    hard_links: Vec<(PathBuf, PathBuf, PathBuf)>,
}

impl Extraction<'_> {
    fn member<R: Read>(&mut self, mut entry: tar::Entry<R>, writers: &Writers) -> Result<()> {
        let raw = entry.path()?.into_owned();
        let rel = sanitize(&raw)?;
        let header = entry.header();
        let kind = header.entry_type();
        let owner = self
            .root
            .then(|| Some((header.uid().ok()? as u32, header.gid().ok()? as u32)))
            .flatten();
        let mode = header
            .mode()
            .unwrap_or(if kind.is_dir() { 0o755 } else { 0o644 });
        let mode = if self.root {
            mode & 0o7777
        } else {
            mode & 0o777 & !self.mask
        };
        let mtime = header.mtime().unwrap_or(0);
        if kind.is_dir() {
            let path = self.dir.join(&rel);
            if self.through_symlink(&rel) {
                self.check_inside(&path, &raw)?;
            }
            self.make_dir(&path)?;
            self.dirs.push(DirMeta {
                path,
                mode,
                mtime,
                owner,
            });
        } else if kind.is_hard_link() {
            let Some(target) = entry.link_name()? else {
                bail!("hard link {} has no target", raw.display());
            };
            let target = sanitize(&target)?;
            self.hard_links.push((raw, rel, target));
        } else if rel.as_os_str().is_empty() {
            bail!("archive member {:?} has an empty name", raw);
        } else if kind.is_file() && entry.size() <= BUFFERED_MAX && !self.through_symlink(&rel) {
            let path = self.dir.join(&rel);
            if let Some(parent) = path.parent() {
                self.make_dir(parent)?;
            }
            let mut data = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut data)
                .with_context(|| format!("reading {}", raw.display()))?;
            writers.submit(FileJob {
                path,
                data,
                mode,
                mtime: mtime as i64,
                owner,
            })?;
        } else {
            // Large files, symlinks and special files: the tar crate checks
            // that parents resolve inside `dir`.
            if kind.is_symlink() {
                self.symlinks.insert(rel.clone());
            }
            entry
                .unpack_in(self.dir)
                .with_context(|| format!("extracting {}", raw.display()))?;
        }
        Ok(())
    }

    /// Creates `path` and its parents once.
    fn make_dir(&mut self, path: &Path) -> Result<()> {
        if self.made.contains(path) {
            return Ok(());
        }
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        for p in path.ancestors().take_while(|p| p.starts_with(self.dir)) {
            if !self.made.insert(p.to_path_buf()) {
                break;
            }
        }
        Ok(())
    }

    /// Whether `rel`, or a directory on the way to it, is a symlink this
    /// archive created. The extraction dir is private and starts empty, so
    /// only those can lead outside it.
    fn through_symlink(&self, rel: &Path) -> bool {
        !self.symlinks.is_empty() && rel.ancestors().any(|p| self.symlinks.contains(p))
    }

    /// Fails when `path`, or its nearest existing ancestor, resolves (through
    /// symlinks) outside the extraction dir.
    fn check_inside(&self, path: &Path, raw: &Path) -> Result<()> {
        let existing = path.ancestors().find(|p| p.exists()).unwrap_or(path);
        let real = existing
            .canonicalize()
            .with_context(|| format!("resolving {}", existing.display()))?;
        if !real.starts_with(&self.real_dir) {
            bail!(
                "archive member {:?} would land outside the extraction dir",
                raw
            );
        }
        Ok(())
    }

    fn hard_link(&self, raw: &Path, rel: &Path, target: &Path) -> Result<()> {
        let (link, target) = (self.dir.join(rel), self.dir.join(target));
        self.check_inside(&target, raw)?;
        self.check_inside(&link, raw)?;
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&target, &link)
            .with_context(|| format!("hard link {} to {}", raw.display(), target.display()))
    }
}

fn apply_dir_meta(meta: &DirMeta) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((uid, gid)) = meta.owner {
        std::os::unix::fs::lchown(&meta.path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", meta.path.display()))?;
    }
    std::fs::set_permissions(&meta.path, std::fs::Permissions::from_mode(meta.mode))
        .with_context(|| format!("chmod {}", meta.path.display()))?;
    let mtime = filetime::FileTime::from_unix_time(meta.mtime as i64, 0);
    filetime::set_file_mtime(&meta.path, mtime)
        .with_context(|| format!("setting mtime of {}", meta.path.display()))
}

/// Strips a leading `/` and `./`; rejects `..` anywhere.
fn sanitize(raw: &Path) -> Result<PathBuf> {
    let mut rel = PathBuf::new();
    for comp in raw.components() {
        match comp {
            Component::Normal(c) => rel.push(c),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                bail!("archive member {:?} contains '..'", raw)
            }
            Component::Prefix(_) => bail!("archive member {:?} has a path prefix", raw),
        }
    }
    Ok(rel)
}

/// Whether we run as root (and so keep owners, as `tar xf` does).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The process umask, read without changing it (Linux `/proc/self/status`).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(b"BZh91AY"), Compression::Bzip2);
        assert_eq!(
            Compression::sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0]),
            Compression::Xz
        );
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"app/"), Compression::None);
    }

    #[test]
    fn sanitize_strips_root_and_rejects_parent() {
        assert_eq!(sanitize(Path::new("/a/./b")).unwrap(), PathBuf::from("a/b"));
        assert_eq!(sanitize(Path::new("./")).unwrap(), PathBuf::new());
        assert!(sanitize(Path::new("a/../../b")).is_err());
    }
}
