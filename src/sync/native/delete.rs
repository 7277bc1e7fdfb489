//! The delete pass: what dest has and the archive lacks goes, but excluded
//! paths; and removing a directory that a non-directory replaces. The log
//! counts every path that goes, as rsync's `deleting` lines do (a
//! directory replaced by a file counts what it held).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tokio_util::sync::CancellationToken;

use super::Placer;
use crate::step::interrupted;

impl Placer<'_> {
    /// Removes a directory that a non-directory replaces, and forgets it
    /// and what it held. Excluded paths inside it are kept, and then it
    /// cannot go (rsync fails the same way).
    pub(super) fn remove_dir(&mut self, rel: &Path, path: &Path) -> Result<()> {
        let below = paths_below(rel, path);
        if self.excludes.is_empty() {
            self.give_back_below(&below);
            crate::scratch::remove_tree(path)
                .with_context(|| format!("replacing {}", path.display()))?;
            self.counts.deleted += below.len() as u64;
        } else if !self.delete_unprotected(rel, path)? {
            bail!(
                "cannot replace the directory {}: it holds excluded paths",
                path.display()
            );
        }
        self.forget_dir(rel, below);
        Ok(())
    }

    /// Forgets the directory at `rel` and what was below it (`below`): a
    /// non-directory replaced it.
    pub(super) fn forget_dir(&mut self, rel: &Path, below: Vec<PathBuf>) {
        self.dirs.remove(rel);
        self.made.remove(rel);
        self.fresh.remove(rel);
        for p in below {
            self.fresh.remove(&p);
            self.seen.remove(&p);
            self.dirs.remove(&p);
            self.made.remove(&p);
            self.written.remove(&p);
            self.symlinks.remove(&p);
        }
    }

    /// Deletes the entries of the directory `rel` that the archive lacks,
    /// and recurses into those it has; a directory the archive has as a
    /// non-directory (`as_files`) goes too, counting what it held.
    pub(super) fn delete_extra(&mut self, rel: &Path, cancel: &CancellationToken) -> Result<()> {
        interrupted(cancel)?;
        let dir = self.dest.join(rel);
        let entries = fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let child = rel.join(entry.file_name());
            let is_dir = entry.file_type()?.is_dir();
            if self.seen.contains(&child) {
                if is_dir && self.as_files.contains(&child) {
                    self.remove_dir(&child, &entry.path())?;
                } else if is_dir && !self.fresh.contains(&child) {
                    self.delete_extra(&child, cancel)?;
                }
                continue;
            }
            if self.excludes.excludes(&child, is_dir) {
                continue;
            }
            let path = entry.path();
            if !is_dir {
                let meta = entry.metadata();
                fs::remove_file(&path).with_context(|| format!("deleting {}", path.display()))?;
                if let Ok(meta) = meta {
                    self.room.give_back(&meta);
                }
                self.counts.deleted += 1;
            } else if self.excludes.is_empty() {
                let below = paths_below(&child, &path);
                self.give_back_below(&below);
                crate::scratch::remove_tree(&path)
                    .with_context(|| format!("deleting {}", path.display()))?;
                self.counts.deleted += below.len() as u64 + 1;
            } else if self.delete_unprotected(&child, &path)? {
                // What cannot go because it holds excluded paths stays,
                // as with rsync.
                self.counts.deleted += 1;
            }
        }
        Ok(())
    }

    /// Deletes the directory `path` (at `rel`) except excluded paths in it;
    /// whether it could go entirely. Counts what went below it.
    fn delete_unprotected(&mut self, rel: &Path, path: &Path) -> Result<bool> {
        let mut empty = true;
        let meta = fs::symlink_metadata(path)?;
        if !self.root && meta.mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() | 0o700))?;
        }
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            let entry = entry?;
            let child = rel.join(entry.file_name());
            let is_dir = entry.file_type()?.is_dir();
            if self.excludes.excludes(&child, is_dir) {
                empty = false;
            } else if is_dir {
                let gone = self.delete_unprotected(&child, &entry.path())?;
                self.counts.deleted += u64::from(gone);
                empty &= gone;
            } else {
                let meta = entry.metadata();
                fs::remove_file(entry.path())
                    .with_context(|| format!("deleting {}", entry.path().display()))?;
                if let Ok(meta) = meta {
                    self.room.give_back(&meta);
                }
                self.counts.deleted += 1;
            }
        }
        if empty {
            fs::remove_dir(path).with_context(|| format!("deleting {}", path.display()))?;
        }
        Ok(empty)
    }

    /// Credits the room of the entries at `below` (paths in dest), which
    /// are about to go.
    fn give_back_below(&mut self, below: &[PathBuf]) {
        for rel in below {
            if let Ok(meta) = fs::symlink_metadata(self.dest.join(rel)) {
                self.room.give_back(&meta);
            }
        }
    }
}

/// Every path below the directory `path` (at `rel`) in dest, as far as
/// it can be read.
pub(super) fn paths_below(rel: &Path, path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(rel.to_path_buf(), path.to_path_buf())];
    while let Some((rel, path)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&path) else {
            continue;
        };
        for entry in entries.flatten() {
            let child = rel.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((child.clone(), entry.path()));
            }
            out.push(child);
        }
    }
    out
}
