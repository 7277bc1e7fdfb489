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

use anyhow::{bail, Context, Result};

const READ_BUFFER: usize = 1 << 20;

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
    Ok(match Compression::sniff(&head[..n]) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(file)),
        Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(file)),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
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
    owner: Option<(u64, u64)>,
}

/// Extracts the archive at `archive` into the existing directory `dir`.
pub fn extract(archive: &Path, dir: &Path) -> Result<()> {
    let root = is_root();
    let mask = if root { 0 } else { umask() };
    let mut tar = tar::Archive::new(open(archive)?);
    tar.set_preserve_permissions(root);
    tar.set_preserve_ownerships(root);
    tar.set_preserve_mtime(true);
    tar.set_overwrite(true);
    tar.set_mask(mask);
    let mut dirs = Vec::new();
    let unreadable = || format!("unreadable archive {}", archive.display());
    for entry in tar.entries().with_context(unreadable)? {
        let mut entry = entry.with_context(unreadable)?;
        let raw = entry.path().with_context(unreadable)?.into_owned();
        let rel = sanitize(&raw)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            let path = dir.join(&rel);
            check_inside(dir, &path, &raw)?;
            std::fs::create_dir_all(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let header = entry.header();
            dirs.push(DirMeta {
                path,
                mode: header.mode().unwrap_or(0o755) & !mask & 0o7777,
                mtime: header.mtime().unwrap_or(0),
                owner: root
                    .then(|| Some((header.uid().ok()?, header.gid().ok()?)))
                    .flatten(),
            });
        } else if kind.is_hard_link() {
            let Some(target) = entry.link_name().with_context(unreadable)? else {
                bail!("hard link {} has no target", raw.display());
            };
            let target = dir.join(sanitize(&target)?);
            let link = dir.join(&rel);
            check_inside(dir, &target, &raw)?;
            check_inside(dir, &link, &raw)?;
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let _ = std::fs::remove_file(&link);
            std::fs::hard_link(&target, &link)
                .with_context(|| format!("hard link {} to {}", raw.display(), target.display()))?;
        } else if rel.as_os_str().is_empty() {
            bail!("archive member {:?} has an empty name", raw);
        } else {
            entry
                .unpack_in(dir)
                .with_context(|| format!("extracting {}", raw.display()))?;
        }
    }
    for meta in dirs.iter().rev() {
        apply_dir_meta(meta)?;
    }
    Ok(())
}

fn apply_dir_meta(meta: &DirMeta) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((uid, gid)) = meta.owner {
        std::os::unix::fs::lchown(&meta.path, Some(uid as u32), Some(gid as u32))
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

/// Fails when `path`, or its nearest existing ancestor, resolves (through
/// symlinks) outside `dir`.
fn check_inside(dir: &Path, path: &Path, raw: &Path) -> Result<()> {
    let dir = dir.canonicalize()?;
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(path);
    let real = existing
        .canonicalize()
        .with_context(|| format!("resolving {}", existing.display()))?;
    if !real.starts_with(&dir) {
        bail!(
            "archive member {:?} would land outside the extraction dir",
            raw
        );
    }
    Ok(())
}

fn is_root() -> bool {
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
