//! The tree to pack, in the order `tar --sort=name -C DIR -cf - .` lists
//! it: the directory, then each entry by name (byte order), a directory's
//! contents right after it. As GNU tar: a file seen again through another
//! hard link becomes a link to the first path; sockets are skipped (with a
//! line on stderr); the archive being written is never packed into itself.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::Metadata;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::index::EntryType;
use crate::sync::Excludes;

/// One thing to pack.
pub struct Node {
    /// Path relative to the packed directory (empty: the directory).
    pub rel: Vec<u8>,
    /// Where it is on disk.
    pub path: PathBuf,
    /// Its `lstat`.
    pub meta: Metadata,
    /// What the tar entry is.
    pub kind: EntryType,
    /// A symlink's target, or the earlier path a hard link points to.
    pub link: Vec<u8>,
}

/// Walks `root` depth-first, calling `visit` on each node.
pub struct Walk<'a> {
    excludes: &'a Excludes,
    /// `(dev, ino)` of files never packed (the archive being written).
    skip: Vec<(u64, u64)>,
    /// First path of each multiply-linked file, by `(dev, ino)`.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl<'a> Walk<'a> {
    /// A walk leaving out what `excludes` matches and the files `skip`
    /// names by `(dev, ino)`.
    pub fn new(excludes: &'a Excludes, skip: Vec<(u64, u64)>) -> Self {
        Walk {
            excludes,
            skip,
            links: HashMap::new(),
        }
    }

    /// Visits `root` and everything under it.
    pub fn run(&mut self, root: &Path, visit: &mut dyn FnMut(Node) -> Result<()>) -> Result<()> {
        let meta = std::fs::metadata(root).with_context(|| format!("stat {}", root.display()))?;
        anyhow::ensure!(meta.is_dir(), "{} is not a directory", root.display());
        visit(Node {
            rel: Vec::new(),
            path: root.to_path_buf(),
            meta,
            kind: EntryType::Dir,
            link: Vec::new(),
        })?;
        self.dir(root, &[], visit)
    }

    fn dir(
        &mut self,
        dir: &Path,
        rel: &[u8],
        visit: &mut dyn FnMut(Node) -> Result<()>,
    ) -> Result<()> {
        let mut names: Vec<OsString> = std::fs::read_dir(dir)
            .with_context(|| format!("reading directory {}", dir.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()
            .with_context(|| format!("reading directory {}", dir.display()))?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let mut child = rel.to_vec();
            if !child.is_empty() {
                child.push(b'/');
            }
            child.extend_from_slice(name.as_bytes());
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("stat {}", path.display()))?;
            let ft = meta.file_type();
            if self
                .excludes
                .excludes(Path::new(&name_of(&child)), ft.is_dir())
            {
                continue;
            }
            if self.skip.contains(&(meta.dev(), meta.ino())) {
                eprintln!(
                    "stretcher pack: {}: file is the archive; not dumped",
                    path.display()
                );
                continue;
            }
            let (kind, link) = if ft.is_dir() {
                (EntryType::Dir, Vec::new())
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path)
                    .with_context(|| format!("readlink {}", path.display()))?;
                (EntryType::Symlink, target.into_os_string().into_vec())
            } else if ft.is_socket() {
                eprintln!("stretcher pack: {}: socket ignored", path.display());
                continue;
            } else {
                let kind = if ft.is_fifo() {
                    EntryType::Fifo
                } else if ft.is_char_device() {
                    EntryType::CharDevice
                } else if ft.is_block_device() {
                    EntryType::BlockDevice
                } else {
                    EntryType::File
                };
                match self.first_link(&meta, &child) {
                    Some(first) => (EntryType::HardLink, first),
                    None => (kind, Vec::new()),
                }
            };
            let is_dir = kind == EntryType::Dir;
            visit(Node {
                rel: child.clone(),
                path: path.clone(),
                meta,
                kind,
                link,
            })?;
            if is_dir {
                self.dir(&path, &child, visit)?;
            }
        }
        Ok(())
    }

    /// The path this file was first packed under, when it has other hard
    /// links and one was packed already; otherwise notes this path.
    fn first_link(&mut self, meta: &Metadata, rel: &[u8]) -> Option<Vec<u8>> {
        if meta.nlink() < 2 {
            return None;
        }
        let key = (meta.dev(), meta.ino());
        if let Some(first) = self.links.get(&key) {
            return Some(first.clone());
        }
        self.links.insert(key, rel.to_vec());
        None
    }
}

fn name_of(rel: &[u8]) -> OsString {
    OsString::from_vec(rel.to_vec())
}
